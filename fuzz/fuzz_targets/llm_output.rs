//! Any bytes through action-plan validation as a model's output: no panic, no
//! hang, and an accepted plan obeys the rules and validates again unchanged.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    orchestrator::plan::check::llm_output(data);
});
