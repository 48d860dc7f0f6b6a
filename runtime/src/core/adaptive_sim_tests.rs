//! An adaptive gate against simulated endpoints whose latency depends on how
//! many requests they hold: one with a knee (latency doubles past it, errors
//! further on), and one that turns slow for a while. On simulated time, over
//! many seeds.

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::{ProptestConfig, proptest};

use crate::core::adaptive::AdaptiveRange;
use crate::core::gate::{Gate, GateLimits, Recovery, Signal};
use crate::core::rng::Rng;
use crate::core::time::{Rate, Timestamp};

/// How the endpoint answers a request that arrives while it holds `held`
/// (this one included), at `ms` into the run: after how long, and whether
/// it failed.
type Endpoint = dyn Fn(u32, u64, &mut Rng) -> (u64, bool);

struct Run {
    /// The gate's limit at each second.
    limits: Vec<u32>,
    errors_after: Vec<u64>,
    answered: u64,
    most_in_flight: u32,
    /// Slot times of every start.
    slots: Vec<u64>,
}

fn run(seed: u64, seconds: u64, range: AdaptiveRange, rate: f64, endpoint: &Endpoint) -> Run {
    let mut rng = Rng::new(seed);
    let t0 = Timestamp(1_000_000);
    let limits = GateLimits {
        rate: Rate::per_second(rate).expect("rate"),
        burst: 10,
        concurrency: 10,
        adaptive: Some(range),
        recovery: Recovery {
            start: 1.0,
            over: Duration::ZERO,
        },
        circuit: None,
        quota_headers: true,
        priority_aging: Duration::from_secs(60),
    };
    let mut gate = Gate::new(t0, limits).with_lookahead(Duration::from_millis(20));
    let mut answers: BTreeMap<(u64, u64), (u64, bool)> = BTreeMap::new();
    let mut out = Run {
        limits: Vec::new(),
        errors_after: vec![0; seconds as usize],
        answered: 0,
        most_in_flight: 0,
        slots: Vec::new(),
    };
    let mut n = 0u64;
    for ms in t0.as_ms()..t0.as_ms() + seconds * 1_000 {
        let now = Timestamp(ms);
        let into = ms - t0.as_ms();
        if into.is_multiple_of(1_000) {
            out.limits.push(gate.concurrency());
        }
        while let Some((&(at, id), &(sent, failed))) = answers.first_key_value() {
            if at > ms {
                break;
            }
            answers.remove(&(at, id));
            gate.answered(now, Duration::from_millis(at - sent));
            let signal = if failed {
                out.errors_after[(into / 1_000) as usize] += 1;
                Signal::Failed
            } else {
                Signal::Healthy
            };
            out.answered += 1;
            gate.attempt_ended(now, signal, true);
        }
        while let Ok(at) = gate.try_start(now) {
            n += 1;
            out.slots.push(at.as_ms());
            out.most_in_flight = out.most_in_flight.max(gate.in_flight());
            let (took, failed) = endpoint(gate.in_flight(), into, &mut rng);
            answers.insert((at.as_ms() + took, n), (at.as_ms(), failed));
        }
    }
    out
}

/// 20 ms up to 40 held, 40 ms up to 60, and past 60 a quick 500.
fn knee(held: u32, _: u64, rng: &mut Rng) -> (u64, bool) {
    let jitter = rng.below(5);
    match held {
        0..=40 => (20 + jitter, false),
        41..=60 => (40 + jitter, false),
        _ => (5, true),
    }
}

fn mean(values: &[u32]) -> f64 {
    values.iter().map(|&v| f64::from(v)).sum::<f64>() / values.len().max(1) as f64
}

/// Settles near the knee (within 25 %) and stays clear of the errors.
#[test]
fn settles_near_the_knee() {
    let range = AdaptiveRange { min: 1, max: 200 };
    let run = run(1, 60, range, 100_000.0, &knee);
    let settled = mean(&run.limits[20..]);
    assert!(
        (30.0..=50.0).contains(&settled),
        "settled at {settled:.1}: {:?}",
        run.limits
    );
    let late_errors: u64 = run.errors_after[20..].iter().sum();
    assert!(
        late_errors * 100 <= run.answered,
        "{late_errors} errors of {} after settling",
        run.answered
    );
}

/// Backs off within seconds when the endpoint turns slow, and comes back
/// when it is healthy again.
#[test]
fn backs_off_from_a_slowdown_and_recovers() {
    let range = AdaptiveRange { min: 2, max: 100 };
    let flips = |held: u32, ms: u64, rng: &mut Rng| {
        let (took, failed) = knee(held, ms, rng);
        if (40_000..60_000).contains(&ms) {
            (took * 5, failed)
        } else {
            (took, failed)
        }
    };
    let run = run(2, 100, range, 100_000.0, &flips);
    let before = mean(&run.limits[30..40]);
    let slow = mean(&run.limits[43..60]);
    assert!(
        slow <= before * 0.6,
        "before {before:.1}, within 3 s of the slowdown {slow:.1}: {:?}",
        run.limits
    );
    let after = mean(&run.limits[85..]);
    assert!(
        after >= before * 0.75,
        "before {before:.1}, well after the recovery {after:.1}: {:?}",
        run.limits
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// Whatever the range, the rate and the endpoint: the limit stays in
    /// the range, no more than it are ever in flight, and the starts keep
    /// the gate's rate (burst + rate × T over their slot times, per second).
    #[test]
    fn the_limit_stays_in_range_and_the_rate_holds(
        seed in 0u64..u64::MAX,
        min in 1u32..20,
        span in 0u32..80,
        rate in 10u32..3_000,
        knee_at in 1u32..100,
    ) {
        let range = AdaptiveRange { min, max: min + span };
        let endpoint = move |held: u32, _: u64, rng: &mut Rng| {
            if held > knee_at * 2 {
                (1 + rng.below(5), true)
            } else if held > knee_at {
                (30 + rng.below(30), rng.below(10) == 0)
            } else {
                (5 + rng.below(10), false)
            }
        };
        let run = run(seed, 20, range, f64::from(rate), &endpoint);
        for &limit in &run.limits {
            proptest::prop_assert!((range.min..=range.max).contains(&limit), "{limit} outside {range:?}");
        }
        proptest::prop_assert!(run.most_in_flight <= range.max);
        let mut slots = run.slots.clone();
        slots.sort_unstable();
        let bound = 10 + rate as usize;
        let mut start = 0;
        for end in 0..slots.len() {
            while slots[end] - slots[start] >= 1_000 {
                start += 1;
            }
            proptest::prop_assert!(end - start < bound, "{} starts in a second (bound {bound})", end - start + 1);
        }
    }
}
