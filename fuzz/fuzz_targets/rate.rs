//! Rates ("100/s", "5/m"): never a panic, and every accepted rate is finite,
//! positive and has a usable interval.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::core::Rate;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(rate) = Rate::parse(text) {
        let per_second = rate.as_per_second();
        assert!(per_second.is_finite() && per_second > 0.0, "{text:?}");
        assert!(rate.interval_ns() > 0, "{text:?}");
    }
});
