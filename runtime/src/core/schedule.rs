//! Schedules: when periodic tasks fall due, and what happens to occurrences
//! missed while the previous one ran or the server was down.
//!
//! Pure: cron rules are evaluated with croner on jiff time zones, with no clock
//! read. DST follows croner (the Open Cron Pattern Specification): a fixed-time
//! rule whose wall time falls in a spring-forward gap runs at the first instant
//! after the gap; in a fall-back overlap it runs once, at the earlier instant;
//! interval rules (`*/15 * * * *`) run on both instants of an overlap.

use std::time::Duration;

use super::time::{Timestamp, duration_ms};

#[derive(Clone, Debug)]
pub enum Rule {
    Cron {
        cron: Box<croner::Cron>,
        zone: jiff::tz::TimeZone,
    },
    /// Every `period`, counted from `anchor`.
    Every { period: Duration, anchor: Timestamp },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Misfire {
    /// Drop missed occurrences; wait for the next future one.
    Skip,
    /// Run one catch-up now (the latest missed), then resume.
    Once,
    /// Run each missed occurrence, one after another, at most `catchup_limit`.
    All,
}

impl Misfire {
    pub fn parse(s: &str) -> Option<Misfire> {
        match s {
            "skip" => Some(Misfire::Skip),
            "once" => Some(Misfire::Once),
            "all" => Some(Misfire::All),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Misfire::Skip => "skip",
            Misfire::Once => "once",
            Misfire::All => "all",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("invalid cron expression {expr:?}: {reason}")]
    Cron { expr: String, reason: String },
    #[error("unknown time zone {0:?}: use an IANA name like \"Europe/Berlin\"")]
    Zone(String),
    #[error("every must be at least 1s and at most 3650d")]
    Period,
}

/// Where the check that a cron rule ever fires starts: 2000-01-01 UTC.
const NEVER_CHECK_FROM: Timestamp = Timestamp(946_684_800_000);

/// Missed occurrences are counted up to this many per decision.
const COUNT_CAP: u64 = 100_000;

impl Rule {
    /// A cron rule of 5 fields (minute first) or 6 (second first), in an IANA zone.
    pub fn cron(expr: &str, zone: &str) -> Result<Rule, RuleError> {
        let fields = expr.split_whitespace().count();
        let macro_form = expr.trim_start().starts_with('@');
        if !macro_form && !(5..=6).contains(&fields) {
            return Err(RuleError::Cron {
                expr: expr.into(),
                reason: format!("expected 5 fields (or 6 with seconds first), found {fields}"),
            });
        }
        // croner takes an empty list item ("1,,2", ",") for a field that
        // matches nothing, and then searches for seconds before giving up.
        if let Some(field) = expr
            .split_whitespace()
            .find(|f| !macro_form && f.split(',').any(str::is_empty))
        {
            return Err(RuleError::Cron {
                expr: expr.into(),
                reason: format!("the field {field:?} has an empty item in its list"),
            });
        }
        let cron = croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Optional)
            .year(croner::parser::Year::Disallowed)
            .build()
            .parse(expr)
            .map_err(|e| RuleError::Cron {
                expr: expr.into(),
                reason: e.to_string(),
            })?;
        let zone = jiff::tz::TimeZone::get(zone).map_err(|_| RuleError::Zone(zone.into()))?;
        let rule = Rule::Cron {
            cron: Box::new(cron),
            zone,
        };
        // Calendars repeat within 28 years, so a rule with no occurrence after
        // a fixed instant never has one (the 31st of February, say).
        if rule.next_after(NEVER_CHECK_FROM).is_none() {
            return Err(RuleError::Cron {
                expr: expr.into(),
                reason: "the rule matches no date".into(),
            });
        }
        Ok(rule)
    }

    pub fn every(period: Duration, anchor: Timestamp) -> Result<Rule, RuleError> {
        // Ten years at most: its times stay within the years a timestamp
        // can show (a longer one ran past 9999 and showed as "").
        if period < Duration::from_secs(1) || period > Duration::from_secs(3_650 * 86_400) {
            return Err(RuleError::Period);
        }
        Ok(Rule::Every { period, anchor })
    }

    /// The first occurrence strictly after `after`.
    pub fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        match self {
            Rule::Every { period, anchor } => {
                let p = duration_ms(*period).max(1);
                if after < *anchor {
                    return Some(*anchor);
                }
                let k = (after.as_ms() - anchor.as_ms()) / p + 1;
                Some(Timestamp(anchor.as_ms().checked_add(k.checked_mul(p)?)?))
            }
            Rule::Cron { cron, zone } => {
                // croner works in whole seconds: search from the second `after`
                // falls in, exclusive, and make sure the answer is later still.
                let secs = i64::try_from(after.as_ms() / 1_000).ok()?;
                let start = jiff::Timestamp::from_second(secs)
                    .ok()?
                    .to_zoned(zone.clone());
                let mut next = cron.find_next_occurrence(&start, false).ok()?;
                for _ in 0..4 {
                    let ms = u64::try_from(next.timestamp().as_millisecond()).ok()?;
                    if ms > after.as_ms() {
                        return Some(Timestamp(ms));
                    }
                    next = cron.find_next_occurrence(&next, false).ok()?;
                }
                None
            }
        }
    }

    /// The next `n` occurrences strictly after `after`.
    pub fn upcoming(&self, after: Timestamp, n: usize) -> Vec<Timestamp> {
        let mut out = Vec::with_capacity(n);
        let mut t = after;
        while out.len() < n {
            match self.next_after(t) {
                Some(next) => {
                    out.push(next);
                    t = next;
                }
                None => break,
            }
        }
        out
    }
}

/// What to run after an occurrence ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Next {
    /// The scheduled time of the next occurrence (before jitter). In the past
    /// when it is a catch-up: it is due at once and goes through the gate.
    pub scheduled: Timestamp,
    /// Occurrences dropped by this decision.
    pub skipped: u64,
    /// Occurrences that passed without starting, counted once each: those after
    /// `counted_through` and not after `now`.
    pub missed: u64,
}

/// Decides the next occurrence once the one scheduled at `prev` has ended, at
/// `now`. Occurrences after `prev` that are not in the future are missed; the
/// misfire policy says which of them still run.
pub fn next_occurrence(
    rule: &Rule,
    prev: Timestamp,
    now: Timestamp,
    counted_through: Timestamp,
    misfire: Misfire,
    catchup_limit: u32,
) -> Option<Next> {
    let mut missed_times = Vec::new();
    let mut newly_missed = 0u64;
    let mut total = 0u64;
    let mut t = prev;
    let future = loop {
        let next = rule.next_after(t)?;
        if next > now {
            break next;
        }
        total += 1;
        if next > counted_through {
            newly_missed += 1;
        }
        // Keep only what a policy could still run.
        missed_times.push(next);
        if missed_times.len() > catchup_limit.max(1) as usize {
            missed_times.remove(0);
        }
        t = next;
        if total >= COUNT_CAP {
            // Too many to walk: jump ahead; they are all skipped.
            t = Timestamp(now.as_ms().saturating_sub(1));
            missed_times.clear();
        }
    };
    // Past the cap none is left to run: `future`, as for `skip`.
    let caught_up = match misfire {
        Misfire::Skip => None,
        Misfire::Once => missed_times.last().map(|&t| (t, 1)),
        Misfire::All => (missed_times.first()).map(|&t| (t, missed_times.len() as u64)),
    };
    let (scheduled, runs_missed) = caught_up.unwrap_or((future, 0));
    // With `all`, occurrences still waiting their turn are not skipped: the
    // following decisions run them.
    let skipped = match misfire {
        Misfire::All => total.saturating_sub(runs_missed),
        _ => total.saturating_sub(runs_missed.min(1)),
    };
    Some(Next {
        scheduled,
        skipped,
        missed: newly_missed,
    })
}

/// A stable offset in [0, jitter) derived from the schedule's name, so schedules
/// on the same rule do not fire in the same instant.
pub fn jitter_offset(name: &str, jitter: Duration) -> Duration {
    let ms = duration_ms(jitter);
    if ms == 0 {
        return Duration::ZERO;
    }
    // FNV-1a: stable across builds and platforms, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    Duration::from_millis(h % ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        let ts: jiff::Timestamp = text.parse().expect("timestamp");
        Timestamp(ts.as_millisecond() as u64)
    }

    fn show(t: Timestamp, zone: &str) -> String {
        jiff::Timestamp::from_millisecond(t.as_ms() as i64)
            .expect("ts")
            .to_zoned(jiff::tz::TimeZone::get(zone).expect("zone"))
            .strftime("%Y-%m-%dT%H:%M:%S%:z")
            .to_string()
    }

    #[test]
    fn cron_rules_that_never_fire_are_refused() {
        for (expr, why) in [
            ("0 , * * * MON", "empty item"),
            (", * * * *", "empty item"),
            ("1,,2 * * * *", "empty item"),
            ("0 0 31 2 *", "matches no date"),
            ("0 0 31 4,6,9,11 *", "matches no date"),
        ] {
            let e = Rule::cron(expr, "UTC").expect_err(expr).to_string();
            assert!(e.contains(why), "{expr}: {e}");
        }
        assert!(Rule::cron("0 0 29 2 *", "UTC").is_ok(), "leap days exist");
    }

    #[test]
    fn cron_with_and_without_seconds() {
        let r = Rule::cron("*/15 * * * *", "UTC").expect("rule");
        assert_eq!(
            r.next_after(at("2026-01-01T10:07:30Z")),
            Some(at("2026-01-01T10:15:00Z"))
        );
        assert_eq!(
            r.next_after(at("2026-01-01T10:15:00Z")),
            Some(at("2026-01-01T10:30:00Z"))
        );
        let s = Rule::cron("*/10 * * * * *", "UTC").expect("rule");
        assert_eq!(
            s.next_after(at("2026-01-01T10:00:00.500Z")),
            Some(at("2026-01-01T10:00:10Z"))
        );
        assert!(Rule::cron("* * *", "UTC").is_err());
        assert!(Rule::cron("61 * * * *", "UTC").is_err());
        assert!(Rule::cron("* * * * * * *", "UTC").is_err());
        assert!(Rule::cron("0 9 * * *", "Mars/Olympus").is_err());
    }

    /// Spring forward in Berlin (2026-03-29, 02:00 → 03:00): a daily 02:30 job runs
    /// at the first instant after the gap, once.
    #[test]
    fn dst_gap_runs_once_after_the_gap() {
        let r = Rule::cron("30 2 * * *", "Europe/Berlin").expect("rule");
        let runs: Vec<String> = r
            .upcoming(at("2026-03-27T12:00:00Z"), 4)
            .into_iter()
            .map(|t| show(t, "Europe/Berlin"))
            .collect();
        assert_eq!(
            runs,
            [
                "2026-03-28T02:30:00+01:00",
                "2026-03-29T03:00:00+02:00",
                "2026-03-30T02:30:00+02:00",
                "2026-03-31T02:30:00+02:00"
            ]
        );
    }

    /// Fall back in Berlin (2026-10-25, 03:00 → 02:00): a daily 02:30 job runs once,
    /// at the earlier instant; a 15-minute interval job runs on both passes.
    #[test]
    fn dst_overlap_runs_fixed_jobs_once() {
        let daily = Rule::cron("30 2 * * *", "Europe/Berlin").expect("rule");
        let runs: Vec<String> = daily
            .upcoming(at("2026-10-24T12:00:00Z"), 2)
            .into_iter()
            .map(|t| show(t, "Europe/Berlin"))
            .collect();
        assert_eq!(
            runs,
            ["2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"]
        );
        let interval = Rule::cron("*/30 2 * * *", "Europe/Berlin").expect("rule");
        let runs: Vec<String> = interval
            .upcoming(at("2026-10-24T23:00:00Z"), 4)
            .into_iter()
            .map(|t| show(t, "Europe/Berlin"))
            .collect();
        assert_eq!(
            runs,
            [
                "2026-10-25T02:00:00+02:00",
                "2026-10-25T02:30:00+02:00",
                "2026-10-25T02:00:00+01:00",
                "2026-10-25T02:30:00+01:00"
            ]
        );
    }

    #[test]
    fn every_counts_from_its_anchor() {
        let r = Rule::every(Duration::from_secs(600), at("2026-01-01T00:00:00Z")).expect("rule");
        assert_eq!(
            r.next_after(at("2026-01-01T00:00:00Z")),
            Some(at("2026-01-01T00:10:00Z"))
        );
        assert_eq!(
            r.next_after(at("2026-01-01T00:25:00Z")),
            Some(at("2026-01-01T00:30:00Z"))
        );
        assert!(Rule::every(Duration::from_millis(10), Timestamp(0)).is_err());
        assert!(Rule::every(Duration::from_secs(3_650 * 86_400), Timestamp(0)).is_ok());
        assert!(Rule::every(Duration::from_secs(3_651 * 86_400), Timestamp(0)).is_err());
    }

    /// Past the cap of occurrences walked, every policy plans the next one
    /// to come; `once` and `all` once found none and the schedule stalled.
    #[test]
    fn a_backlog_past_the_cap_plans_the_next_occurrence_for_every_policy() {
        let r = Rule::every(Duration::from_secs(1), at("2026-01-01T00:00:00Z")).expect("rule");
        let prev = at("2026-01-01T00:00:00Z");
        let now = at("2026-01-03T00:00:00.500Z"); // two days of seconds missed
        for misfire in [Misfire::Skip, Misfire::Once, Misfire::All] {
            let next = next_occurrence(&r, prev, now, prev, misfire, 100)
                .unwrap_or_else(|| panic!("{misfire:?} stalled"));
            assert_eq!(next.scheduled, at("2026-01-03T00:00:01Z"), "{misfire:?}");
            assert!(next.skipped >= COUNT_CAP, "{misfire:?}: {next:?}");
        }
    }

    #[test]
    fn misfire_policies() {
        let r = Rule::every(Duration::from_secs(60), at("2026-01-01T00:00:00Z")).expect("rule");
        let prev = at("2026-01-01T00:01:00Z");
        let now = at("2026-01-01T00:05:30Z"); // 00:02, :03, :04, :05 were missed
        let skip = next_occurrence(&r, prev, now, prev, Misfire::Skip, 100).expect("next");
        assert_eq!(
            skip,
            Next {
                scheduled: at("2026-01-01T00:06:00Z"),
                skipped: 4,
                missed: 4
            }
        );
        let once = next_occurrence(&r, prev, now, prev, Misfire::Once, 100).expect("next");
        assert_eq!(
            once,
            Next {
                scheduled: at("2026-01-01T00:05:00Z"),
                skipped: 3,
                missed: 4
            }
        );
        let all = next_occurrence(&r, prev, now, prev, Misfire::All, 100).expect("next");
        assert_eq!(
            all,
            Next {
                scheduled: at("2026-01-01T00:02:00Z"),
                skipped: 0,
                missed: 4
            }
        );
        // The catch-up at 00:02 ends at 00:05:40: 00:03 runs next, nothing is
        // counted as missed twice.
        let later = next_occurrence(
            &r,
            at("2026-01-01T00:02:00Z"),
            at("2026-01-01T00:05:40Z"),
            now,
            Misfire::All,
            100,
        )
        .expect("next");
        assert_eq!(
            later,
            Next {
                scheduled: at("2026-01-01T00:03:00Z"),
                skipped: 0,
                missed: 0
            }
        );
        let capped = next_occurrence(&r, prev, now, prev, Misfire::All, 2).expect("next");
        assert_eq!(
            capped,
            Next {
                scheduled: at("2026-01-01T00:04:00Z"),
                skipped: 2,
                missed: 4
            }
        );
        let on_time = next_occurrence(
            &r,
            prev,
            at("2026-01-01T00:01:30Z"),
            prev,
            Misfire::All,
            100,
        )
        .expect("next");
        assert_eq!(
            on_time,
            Next {
                scheduled: at("2026-01-01T00:02:00Z"),
                skipped: 0,
                missed: 0
            }
        );
    }

    #[test]
    fn jitter_is_stable_and_bounded() {
        let j = Duration::from_secs(30);
        assert_eq!(jitter_offset("nightly", j), jitter_offset("nightly", j));
        assert_ne!(jitter_offset("nightly", j), jitter_offset("hourly", j));
        for name in ["a", "b", "report", "x".repeat(200).as_str()] {
            assert!(jitter_offset(name, j) < j);
        }
        assert_eq!(jitter_offset("a", Duration::ZERO), Duration::ZERO);
    }
}
