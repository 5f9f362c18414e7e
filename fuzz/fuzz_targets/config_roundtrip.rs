//! Structure-aware: a valid typed config (from `Config: Arbitrary`) must
//! serialise to YAML and validate back, at every level, to an equal config.
#![no_main]

use orchestrator::config::Config;

libfuzzer_sys::fuzz_target!(|config: Config| {
    orchestrator::config::check::config_roundtrip(&config);
});
