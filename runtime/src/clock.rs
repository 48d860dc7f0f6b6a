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

/// A reading of a clock that counts every moment since the machine
/// started, a suspend of the whole machine included (Linux's
/// `CLOCK_BOOTTIME`; elsewhere the monotonic clock): what the cluster
/// lease's deadline is measured on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Uptime(u64);

impl Uptime {
    pub fn plus(self, d: std::time::Duration) -> Uptime {
        Uptime(
            self.0
                .saturating_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
        )
    }
}

#[cfg(target_os = "linux")]
pub fn uptime() -> Uptime {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    let secs = u64::try_from(t.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(t.tv_nsec).unwrap_or(0);
    Uptime(secs.saturating_mul(1_000_000_000).saturating_add(nanos))
}

#[cfg(not(target_os = "linux"))]
pub fn uptime() -> Uptime {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let start = *START.get_or_init(instant);
    Uptime(u64::try_from(instant().duration_since(start).as_nanos()).unwrap_or(u64::MAX))
}

/// How long this node may still act for a cluster lease, on the `uptime`
/// clock, moved later by each renewal. A paused process (`SIGSTOP`, a long
/// stall) or a suspended machine wakes up past it, because that clock ran
/// on. Everything that sends on the lease's behalf asks `valid` right
/// before it sends, and gives up at `lapsed`. A revoked deadline stays
/// revoked: a renewal that lands after a handover cannot bring it back.
#[derive(Debug, Default)]
pub struct Deadline {
    /// `Uptime` nanoseconds; 0 means never valid.
    until: std::sync::atomic::AtomicU64,
    revoked: std::sync::atomic::AtomicBool,
}

impl Deadline {
    /// Moves the deadline to `at`, if that is later (and it is not revoked).
    pub fn extend_to(&self, at: Uptime) {
        self.until
            .fetch_max(at.0, std::sync::atomic::Ordering::AcqRel);
    }

    /// From now on nothing is valid, for good (the lease was handed over
    /// or dropped).
    pub fn revoke(&self) {
        self.revoked
            .store(true, std::sync::atomic::Ordering::Release);
    }

    fn left(&self) -> std::time::Duration {
        if self.revoked.load(std::sync::atomic::Ordering::Acquire) {
            return std::time::Duration::ZERO;
        }
        let until = self.until.load(std::sync::atomic::Ordering::Acquire);
        std::time::Duration::from_nanos(until.saturating_sub(uptime().0))
    }

    /// When it passes, as an instant of the monotonic clock (for timers).
    pub fn at(&self) -> Instant {
        instant() + self.left()
    }

    /// Whether the lease still holds on this node's clock.
    pub fn valid(&self) -> bool {
        !self.left().is_zero()
    }

    /// Waits until the deadline has passed for good (renewals move it
    /// while this waits).
    pub async fn lapsed(&self) {
        loop {
            let left = self.left();
            if left.is_zero() {
                return;
            }
            tokio::time::sleep(left).await;
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
        deadline.extend_to(uptime().plus(std::time::Duration::from_secs(60)));
        assert!(deadline.valid());
        deadline.revoke();
        assert!(!deadline.valid());
        deadline.extend_to(uptime().plus(std::time::Duration::from_secs(120)));
        assert!(!deadline.valid(), "a late renewal brought it back");
    }
}
