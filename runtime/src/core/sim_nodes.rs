//! What the two cluster simulations (`lease_sim_tests.rs`, one lease on the
//! gates; `units_sim_tests.rs`, a lease per unit) share: a node's drifting
//! clock with its pauses and cuts from the database, the gate each owner
//! runs (started empty, with the ramp), and the window check over the slot
//! times of every node's sends.

use std::time::Duration;

use crate::core::Timestamp;
use crate::core::gate::{Gate, GateLimits, Recovery};
use crate::core::rng::Rng;
use crate::core::time::Rate;

/// A node's clock and what it is going through: its local time is
/// `offset + rate × true time` (the rate within ±10 %), it does nothing
/// while paused and cannot reach the database while cut.
pub(super) struct Clock {
    offset: f64,
    rate: f64,
    /// When it next beats, on its own clock.
    pub(super) next_beat: u64,
    pub(super) paused_until: u64,
    pub(super) cut_until: u64,
}

impl Clock {
    /// A node that starts at true time `t` (paused until then).
    pub(super) fn new(rng: &mut Rng, t: u64) -> Clock {
        Clock {
            offset: rng.below(1_000_000) as f64,
            rate: 0.9 + 0.2 * rng.next_f64(),
            next_beat: 0,
            paused_until: t,
            cut_until: t,
        }
    }

    pub(super) fn local(&self, t: u64) -> u64 {
        (self.offset + self.rate * t as f64) as u64
    }

    pub(super) fn awake(&self, t: u64) -> bool {
        t >= self.paused_until
    }

    pub(super) fn cut(&self, t: u64) -> bool {
        t < self.cut_until
    }
}

/// The gates' limits in both simulations: 20/s, burst 3, concurrency 5, a
/// ramp from 10 % over 2 s.
pub(super) fn limits() -> GateLimits {
    GateLimits {
        rate: Rate::per_second(20.0).expect("rate"),
        burst: 3,
        concurrency: 5,
        recovery: Recovery {
            start: 0.1,
            over: Duration::from_secs(2),
        },
        circuit: None,
        quota_headers: true,
        priority_aging: Duration::from_secs(60),
        adaptive: None,
    }
}

/// A gate as a new owner starts it at `t`: empty, ramping.
pub(super) fn fresh_gate(t: u64, limits: GateLimits) -> Gate {
    let mut gate = Gate::new(Timestamp(t), limits).with_lookahead(Duration::from_millis(20));
    gate.start_empty(Timestamp(t));
    gate.start_ramp(Timestamp(t));
    gate
}

/// The window bound `burst + rate × T` over slot times (ms), every window
/// up to 5 s. `what` names the gate in a failure.
pub(super) fn assert_window(mut times: Vec<u64>, limits: &GateLimits, what: &str) {
    let rate = limits.rate.as_per_second();
    let burst = f64::from(limits.burst);
    times.sort_unstable();
    for i in 0..times.len() {
        for k in i..times.len() {
            let span = times[k] - times[i];
            if span > 5_000 {
                break;
            }
            let count = (k - i + 1) as f64;
            let allowed = burst + rate * (span as f64 + 1.0) / 1_000.0;
            assert!(
                count <= allowed + 1e-9,
                "{what}: {count} sends in {span} ms, bound {allowed}"
            );
        }
    }
}
