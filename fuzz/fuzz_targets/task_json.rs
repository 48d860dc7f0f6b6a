//! The property of `sluice::fuzzing::task_json`, under libFuzzer.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sluice::fuzzing::task_json(data));
