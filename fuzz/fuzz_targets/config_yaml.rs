//! Any bytes through YAML parsing and config validation at all three levels:
//! no panic, no hang, bounded memory (the parser's limits; see ARCHITECTURE.md).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    orchestrator::config::check::config_bytes(data);
});
