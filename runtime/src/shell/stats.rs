//! Live figures per gate, kept as counters as things happen, never computed by
//! scans: attempts started and ended in 10-second buckets over the last ten
//! minutes (with the backlog at each), and the Prometheus metrics (dispatches by
//! outcome, lateness histogram). Memory only: a restart starts them afresh,
//! while the durable counters live in the store.

use std::collections::VecDeque;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;

use crate::core::Timestamp;

/// Width of one bucket of the recent series.
pub const STEP_MS: u64 = 10_000;
/// Buckets kept: ten minutes.
pub const STEPS: usize = 60;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    /// Start of the bucket, a multiple of `STEP_MS`.
    pub start_ms: u64,
    pub started: u64,
    pub succeeded: u64,
    pub failed: u64,
    /// The backlog when the bucket was last touched.
    pub backlog: Option<u64>,
    /// An adaptive gate's concurrency limit when the bucket was last touched.
    pub concurrency: Option<u32>,
}

/// The recent series of one gate.
#[derive(Clone, Debug, Default)]
pub struct Series {
    buckets: VecDeque<Bucket>,
}

impl Series {
    /// The bucket for `now`, creating empty ones for any steps skipped.
    fn at(&mut self, now: Timestamp) -> &mut Bucket {
        let start = now.as_ms() - now.as_ms() % STEP_MS;
        let last = self.buckets.back().map(|b| b.start_ms);
        match last {
            Some(last) if last >= start => {}
            _ => {
                // Fill the gap (at most the whole window) with empty buckets.
                let first = match last {
                    Some(last) => {
                        (last + STEP_MS).max(start.saturating_sub(STEP_MS * (STEPS as u64 - 1)))
                    }
                    None => start,
                };
                let mut t = first;
                while t <= start {
                    self.buckets.push_back(Bucket {
                        start_ms: t,
                        ..Bucket::default()
                    });
                    t += STEP_MS;
                }
                while self.buckets.len() > STEPS {
                    self.buckets.pop_front();
                }
            }
        }
        // `now` never goes back in the driver; if it ever did, the newest
        // bucket takes the event.
        let index = self.buckets.len() - 1;
        &mut self.buckets[index]
    }

    pub fn started(&mut self, now: Timestamp, backlog: u64) {
        let b = self.at(now);
        b.started += 1;
        b.backlog = Some(backlog);
    }

    pub fn ended(&mut self, now: Timestamp, success: bool, backlog: u64) {
        let b = self.at(now);
        if success {
            b.succeeded += 1;
        } else {
            b.failed += 1;
        }
        b.backlog = Some(backlog);
    }

    pub fn touch(&mut self, now: Timestamp, backlog: u64) {
        self.at(now).backlog = Some(backlog);
    }

    /// An adaptive gate's limit now.
    pub fn limit(&mut self, now: Timestamp, concurrency: u32) {
        self.at(now).concurrency = Some(concurrency);
    }

    /// The window up to `now`, oldest first, with every step present and the
    /// backlog carried forward over steps in which nothing happened.
    pub fn snapshot(&self, now: Timestamp, backlog: u64) -> Vec<Bucket> {
        let mut copy = self.clone();
        copy.touch(now, backlog);
        let (mut carried, mut limit) = (None, None);
        copy.buckets
            .into_iter()
            .map(|mut b| {
                if b.backlog.is_none() {
                    b.backlog = carried;
                }
                if b.concurrency.is_none() {
                    b.concurrency = limit;
                }
                (carried, limit) = (b.backlog, b.concurrency);
                b
            })
            .collect()
    }
}

/// Sums over the last `span_ms` of a snapshot (the current bucket counts in full).
pub fn window(buckets: &[Bucket], now: Timestamp, span_ms: u64) -> (u64, u64, u64) {
    let from = now.as_ms().saturating_sub(span_ms);
    buckets
        .iter()
        .filter(|b| b.start_ms + STEP_MS > from)
        .fold((0, 0, 0), |(s, ok, err), b| {
            (s + b.started, ok + b.succeeded, err + b.failed)
        })
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GateLabel {
    pub gate: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub gate: String,
    pub outcome: String,
}

/// Lateness buckets, in seconds: start minus due.
const LATENESS_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

fn lateness_histogram() -> Histogram {
    Histogram::new(LATENESS_BUCKETS)
}

/// The metrics the driver updates and `/metrics` reads. Cloning shares them.
#[derive(Clone)]
pub struct Metrics {
    pub dispatches: Family<OutcomeLabel, Counter>,
    pub lateness: Family<GateLabel, Histogram, fn() -> Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            dispatches: Family::default(),
            lateness: Family::new_with_constructor(lateness_histogram),
        }
    }
}

/// Outcomes a gate's dispatch counter can have, for removing a deleted gate's.
pub const OUTCOMES: [&str; 8] = [
    "succeeded",
    "failed",
    "timeout",
    "rejected",
    "denied",
    "throttled",
    "interrupted",
    "leased",
];

/// One gate's figures: its recent series and handles on its metrics, looked up
/// once so that an attempt costs a few atomic adds, not label lookups.
pub struct GateStats {
    pub series: Series,
    lateness: Histogram,
    dispatches: [Counter; OUTCOMES.len()],
}

impl GateStats {
    pub fn started(&mut self, now: Timestamp, lateness_ms: u64, backlog: u64) {
        self.lateness.observe(lateness_ms as f64 / 1_000.0);
        self.series.started(now, backlog);
    }

    /// `outcome` is one of [`OUTCOMES`]; `success` is `None` for an end that
    /// is not a verdict on the endpoint (interrupted, or leased).
    pub fn ended(&mut self, now: Timestamp, outcome: &str, success: Option<bool>, backlog: u64) {
        if let Some(i) = OUTCOMES.iter().position(|o| *o == outcome) {
            self.dispatches[i].inc();
        }
        if let Some(success) = success {
            self.series.ended(now, success, backlog);
        }
    }
}

impl Metrics {
    /// The figures of a gate, registered under its name.
    pub fn gate(&self, gate: &str) -> GateStats {
        let label = GateLabel {
            gate: gate.to_string(),
        };
        GateStats {
            series: Series::default(),
            lateness: self.lateness.get_or_create(&label).clone(),
            dispatches: OUTCOMES.map(|outcome| {
                self.dispatches
                    .get_or_create(&OutcomeLabel {
                        gate: gate.to_string(),
                        outcome: outcome.to_string(),
                    })
                    .clone()
            }),
        }
    }

    pub fn forget(&self, gate: &str) {
        self.lateness.remove(&GateLabel {
            gate: gate.to_string(),
        });
        for outcome in OUTCOMES {
            self.dispatches.remove(&OutcomeLabel {
                gate: gate.to_string(),
                outcome: outcome.to_string(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_roll_and_carry_the_backlog() {
        let mut s = Series::default();
        let t0 = Timestamp(1_000_000);
        s.started(t0, 10);
        s.ended(Timestamp(1_004_000), true, 9);
        s.ended(Timestamp(1_012_000), false, 9);
        // Nothing for a minute, then a snapshot.
        let now = Timestamp(1_075_000);
        let snap = s.snapshot(now, 7);
        assert_eq!(snap.first().map(|b| b.start_ms), Some(1_000_000));
        assert_eq!(snap.last().map(|b| b.start_ms), Some(1_070_000));
        assert_eq!(snap.len(), 8, "every step present");
        assert_eq!(snap[0].started, 1);
        assert_eq!(snap[0].succeeded, 1);
        assert_eq!(snap[1].failed, 1);
        assert_eq!(snap[3].backlog, Some(9), "carried forward");
        assert_eq!(snap[7].backlog, Some(7));
        assert_eq!(window(&snap, now, 60_000), (0, 0, 1));
        assert_eq!(window(&snap, now, 300_000), (1, 1, 1));
        // An hour later only the window is kept.
        let later = Timestamp(1_000_000 + 3_600_000);
        let snap = s.snapshot(later, 0);
        assert_eq!(snap.len(), STEPS);
        assert_eq!(window(&snap, later, 600_000), (0, 0, 0));
    }
}
