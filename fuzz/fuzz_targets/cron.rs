//! Cron rules with a time zone: the input is `expr \n zone`. Never a panic, and
//! the occurrences of an accepted rule go strictly forward.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::core::Timestamp;
use sluice::core::schedule::Rule;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (expr, zone) = text.split_once('\n').unwrap_or((text, "UTC"));
    let Ok(rule) = Rule::cron(expr, zone) else {
        return;
    };
    // 2026-03-29 00:00 UTC, a night with a DST change in Europe.
    let start = Timestamp::from_ms(1_774_742_400_000);
    let upcoming = rule.upcoming(start, 5);
    let mut last = start;
    for t in upcoming {
        assert!(
            t > last,
            "{expr:?} in {zone:?} went back: {t:?} after {last:?}"
        );
        last = t;
    }
});
