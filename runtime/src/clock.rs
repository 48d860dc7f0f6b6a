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
/// monotonic clock, moved later by each renewal. A paused process
/// (`SIGSTOP`, a long stall) wakes up past it, because the monotonic clock
/// runs on while the process does not (not across a suspend of the whole
/// machine, which `CLOCK_MONOTONIC` does not count). Everything that sends
/// on the lease's behalf asks `valid` right before it sends, and gives up
/// at `lapsed`. A revoked deadline stays revoked: a renewal that lands
/// after a handover cannot bring it back.
#[derive(Debug)]
pub struct Deadline {
    base: Instant,
    /// Nanoseconds after `base`; 0 means never valid.
    until: std::sync::atomic::AtomicU64,
    revoked: std::sync::atomic::AtomicBool,
}

impl Default for Deadline {
    fn default() -> Self {
        Deadline {
            base: instant(),
            until: std::sync::atomic::AtomicU64::new(0),
            revoked: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

impl Deadline {
    /// Moves the deadline to `at`, if that is later (and it is not revoked).
    pub fn extend_to(&self, at: Instant) {
        let nanos = at.saturating_duration_since(self.base).as_nanos();
        let nanos = u64::try_from(nanos).unwrap_or(u64::MAX);
        self.until
            .fetch_max(nanos, std::sync::atomic::Ordering::AcqRel);
    }

    /// From now on nothing is valid, for good (the lease was handed over
    /// or dropped).
    pub fn revoke(&self) {
        self.revoked
            .store(true, std::sync::atomic::Ordering::Release);
    }

    pub fn at(&self) -> Instant {
        if self.revoked.load(std::sync::atomic::Ordering::Acquire) {
            return self.base;
        }
        let nanos = self.until.load(std::sync::atomic::Ordering::Acquire);
        self.base + std::time::Duration::from_nanos(nanos)
    }

    /// Whether the lease still holds on this node's clock.
    pub fn valid(&self) -> bool {
        instant() < self.at()
    }

    /// Waits until the deadline has passed for good (renewals move it
    /// while this waits).
    pub async fn lapsed(&self) {
        loop {
            let at = self.at();
            if instant() >= at {
                return;
            }
            tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revoked_deadline_stays_revoked() {
        let deadline = Deadline::default();
        assert!(!deadline.valid(), "never valid before a renewal");
        deadline.extend_to(instant() + std::time::Duration::from_secs(60));
        assert!(deadline.valid());
        deadline.revoke();
        assert!(!deadline.valid());
        deadline.extend_to(instant() + std::time::Duration::from_secs(120));
        assert!(!deadline.valid(), "a late renewal brought it back");
    }
}
