//! Adaptive concurrency: the gate searches for the endpoint's safe
//! concurrency between `min` and `max` from latency and errors.
//!
//! AIMD with a latency signal, the shape of TCP Vegas and of Netflix's
//! concurrency-limits "Vegas" limiter, chosen over their gradient limiter
//! for being simple to reason about and to bound (ARCHITECTURE.md says why):
//! - the **baseline** is the lowest latency seen, drifting slowly up towards
//!   what the endpoint answers in now, so a lasting change of the endpoint is
//!   learned and a one-off fast answer is not a standard for ever;
//! - the **recent** latency is a moving average of the last answers;
//! - while recent stays within 1.3 × baseline and the gate is using its
//!   limit, each answer adds `1 / limit` (one more slot per round of answers);
//! - when recent passes 1.6 × baseline the limit shrinks by 10 %, and on an
//!   error (a 5xx, a timeout, a 429 or 503) by 25 %, at most once per recent
//!   latency, so a volley of answers to requests sent before the cut counts
//!   once.
//!
//! The limit never leaves `[min, max]`; the rate is the limiter's business
//! and is not touched.

use std::time::Duration;

use super::time::Timestamp;

/// The range an adaptive gate searches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdaptiveRange {
    /// At least 1.
    pub min: u32,
    /// At least `min`.
    pub max: u32,
}

/// Recent latency within this many times the baseline: healthy, may grow.
const GROW_WITHIN: f64 = 1.3;
/// Recent latency past this many times the baseline: shrink.
const SHRINK_PAST: f64 = 1.6;
const LATENCY_CUT: f64 = 0.9;
const ERROR_CUT: f64 = 0.75;
/// Weight of each answer in the recent latency.
const RECENT_WEIGHT: f64 = 0.2;
/// How far each answer pulls a baseline below it up towards itself.
const BASELINE_DRIFT: f64 = 0.002;
/// Latencies below this are this (a loopback answer in microseconds says
/// nothing more about load than one in a tenth of a millisecond).
const FLOOR_MS: f64 = 0.1;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Adaptive {
    range: AdaptiveRange,
    limit: f64,
    baseline_ms: Option<f64>,
    recent_ms: Option<f64>,
    last_cut: Option<Timestamp>,
}

impl Adaptive {
    /// Starts at `start`, within the range.
    pub fn new(range: AdaptiveRange, start: u32) -> Adaptive {
        let range = AdaptiveRange {
            min: range.min.max(1),
            max: range.max.max(range.min.max(1)),
        };
        Adaptive {
            range,
            limit: f64::from(start.clamp(range.min, range.max)),
            baseline_ms: None,
            recent_ms: None,
            last_cut: None,
        }
    }

    /// A new range keeps what was learned, the limit moved into it.
    pub fn with_range(self, range: AdaptiveRange, start: u32) -> Adaptive {
        let current = self.limit();
        Adaptive {
            baseline_ms: self.baseline_ms,
            recent_ms: self.recent_ms,
            last_cut: self.last_cut,
            ..Adaptive::new(range, if current > 0 { current } else { start })
        }
    }

    pub fn range(&self) -> AdaptiveRange {
        self.range
    }

    /// The concurrency allowed now.
    pub fn limit(&self) -> u32 {
        (self.limit.floor() as u32).clamp(self.range.min, self.range.max)
    }

    /// The learned baseline and recent latency, in milliseconds.
    pub fn latencies(&self) -> (Option<f64>, Option<f64>) {
        (self.baseline_ms, self.recent_ms)
    }

    /// The endpoint answered after `latency`, with `in_flight` attempts out
    /// (this one among them).
    pub fn answered(&mut self, now: Timestamp, latency: Duration, in_flight: u32) {
        let ms = (latency.as_secs_f64() * 1_000.0).max(FLOOR_MS);
        let baseline = match self.baseline_ms {
            Some(b) if ms >= b => b + (ms - b) * BASELINE_DRIFT,
            _ => ms,
        };
        let recent = self.recent_ms.map_or(ms, |r| r + (ms - r) * RECENT_WEIGHT);
        self.baseline_ms = Some(baseline);
        self.recent_ms = Some(recent);
        if recent > SHRINK_PAST * baseline {
            self.cut(now, LATENCY_CUT);
        } else if recent <= GROW_WITHIN * baseline && in_flight >= self.limit() {
            self.limit = (self.limit + 1.0 / self.limit.max(1.0)).min(f64::from(self.range.max));
        }
    }

    /// The endpoint failed or asked to slow down.
    pub fn failed(&mut self, now: Timestamp) {
        self.cut(now, ERROR_CUT);
    }

    fn cut(&mut self, now: Timestamp, factor: f64) {
        let round_ms = self.recent_ms.unwrap_or(0.0).max(1.0) as u64;
        if self
            .last_cut
            .is_some_and(|at| now.as_ms() < at.as_ms() + round_ms)
        {
            return;
        }
        self.limit = (self.limit * factor).max(f64::from(self.range.min));
        self.last_cut = Some(now);
    }
}

#[cfg(test)]
#[path = "adaptive_sim_tests.rs"]
mod sim_tests;
