#![no_main]
//! cargo fuzz target: see `fwdelta_fuzz_targets::apply_parallel`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| fwdelta_fuzz_targets::apply_parallel(data));
