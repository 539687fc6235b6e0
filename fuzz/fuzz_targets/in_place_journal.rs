#![no_main]
//! cargo fuzz target: see `fwdelta_fuzz_targets::in_place_journal`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| fwdelta_fuzz_targets::in_place_journal(data));
