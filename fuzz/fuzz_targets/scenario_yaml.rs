//! Any bytes as a scenario file: never a panic, every diagnostic located, and
//! a scenario exactly when nothing is an error.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    gauntlet::scenario::check::scenario_bytes(data);
});
