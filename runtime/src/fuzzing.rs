//! The properties the fuzz targets check, one function per target.
//!
//! `fuzz/fuzz_targets/` hands these libFuzzer's inputs (`scripts/fuzz`); the
//! test suite hands them every seed in `fuzz/seeds/`, so a seed that once
//! found a fault keeps guarding it on every run. Each panics when its
//! property fails and returns otherwise.

use crate::api::wire::{BatchBody, GateBody, ScheduleBody, TaskBody};
use crate::core::schedule::Rule;
use crate::core::{Rate, Timestamp, format_duration, parse_duration};

/// A target's check: panics when its property fails.
pub type Check = fn(&[u8]);

/// The targets by name, as in `fuzz/Cargo.toml` and `fuzz/seeds/`.
pub const TARGETS: [(&str, Check); 4] = [
    ("cron", cron),
    ("duration", duration),
    ("rate", rate),
    ("task_json", task_json),
];

/// 2026-03-29 00:00 UTC, a night with a DST change in Europe.
fn start() -> Timestamp {
    Timestamp::from_ms(1_774_742_400_000)
}

/// Cron rules with a time zone, `expr \n zone`: never a panic, and the
/// occurrences of an accepted rule go strictly forward.
pub fn cron(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (expr, zone) = text.split_once('\n').unwrap_or((text, "UTC"));
    let Ok(rule) = Rule::cron(expr, zone) else {
        return;
    };
    let mut last = start();
    for t in rule.upcoming(last, 5) {
        assert!(
            t > last,
            "{expr:?} in {zone:?} went back: {t:?} after {last:?}"
        );
        last = t;
    }
}

/// Durations ("1h30m", "250ms"): never a panic, and what parses prints back
/// to text that parses to the same value.
pub fn duration(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(d) = parse_duration(text) {
        let printed = format_duration(d);
        assert_eq!(
            parse_duration(&printed),
            Ok(d),
            "{text:?} printed as {printed:?}"
        );
    }
}

/// Rates ("100/s", "5/m"): never a panic, and every accepted rate is finite,
/// positive and has a usable interval.
pub fn rate(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(rate) = Rate::parse(text) {
        let per_second = rate.as_per_second();
        assert!(per_second.is_finite() && per_second > 0.0, "{text:?}");
        assert!(rate.interval_ns() > 0, "{text:?}");
    }
}

/// The API's JSON bodies: the same bytes as a task, a batch, a gate and a
/// schedule. Whatever comes in, the answer is a value or an error, never a
/// panic.
pub fn task_json(data: &[u8]) {
    if let Ok(task) = serde_json::from_slice::<TaskBody>(data) {
        let _ = task.validate("");
    }
    if let Ok(batch) = serde_json::from_slice::<BatchBody>(data) {
        for task in batch.tasks {
            let _ = task.validate("");
        }
    }
    if let Ok(gate) = serde_json::from_slice::<GateBody>(data) {
        let _ = gate.validate();
    }
    if let Ok(schedule) = serde_json::from_slice::<ScheduleBody>(data) {
        let _ = schedule.validate(start());
    }
}
