//! The one clock. Everything else gets time from here or as an argument.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::core::Timestamp;

/// Wall-clock time as the core understands it.
#[expect(
    clippy::disallowed_methods,
    reason = "the one place that reads the clock"
)]
pub fn now() -> Timestamp {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    Timestamp(ms)
}

/// A monotonic instant, for measuring latency.
#[expect(
    clippy::disallowed_methods,
    reason = "the one place that reads the clock"
)]
pub fn instant() -> Instant {
    Instant::now()
}

/// The tokio instant at which wall-clock `at` arrives, as seen from now.
pub fn deadline(at: Timestamp) -> tokio::time::Instant {
    let wait = at.since(now());
    tokio::time::Instant::from_std(instant() + wait)
}

/// How long this node may still act for a cluster lease: an instant on the
/// monotonic clock, moved later by each renewal and never by anything else.
/// A paused process (`SIGSTOP`, a long stall) wakes up past it, because the
/// monotonic clock runs on while the process does not; everything that
/// sends on the lease's behalf asks `valid` right before it sends.
#[derive(Debug)]
pub struct Deadline {
    base: Instant,
    /// Nanoseconds after `base`; 0 means never valid.
    until: std::sync::atomic::AtomicU64,
}

impl Default for Deadline {
    fn default() -> Self {
        Deadline {
            base: instant(),
            until: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

impl Deadline {
    /// Moves the deadline to `at`, if that is later.
    pub fn extend_to(&self, at: Instant) {
        let nanos = at.saturating_duration_since(self.base).as_nanos();
        let nanos = u64::try_from(nanos).unwrap_or(u64::MAX);
        self.until
            .fetch_max(nanos, std::sync::atomic::Ordering::AcqRel);
    }

    /// From now on nothing is valid (the lease was handed over).
    pub fn revoke(&self) {
        self.until.store(0, std::sync::atomic::Ordering::Release);
    }

    pub fn at(&self) -> Instant {
        let nanos = self.until.load(std::sync::atomic::Ordering::Acquire);
        self.base + std::time::Duration::from_nanos(nanos)
    }

    /// Whether the lease still holds on this node's clock.
    pub fn valid(&self) -> bool {
        instant() < self.at()
    }
}
