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
///
/// It also carries the same deadline on this node's wall clock, the one
/// attempts' slot times are on: an attempt leaves only if its slot time is
/// `covered`. The cluster writes that mark to the database with the
/// renewal before it moves it here, so a node that takes the lease over
/// knows that an attempt on record with a later slot time never left.
#[derive(Debug, Default)]
pub struct Deadline {
    /// `Uptime` nanoseconds; 0 means never valid.
    until: std::sync::atomic::AtomicU64,
    /// Wall-clock milliseconds: the latest slot time that may leave.
    slots_until: std::sync::atomic::AtomicU64,
    revoked: std::sync::atomic::AtomicBool,
}

impl Deadline {
    /// Moves the deadline to `at`, and the latest slot time that may leave
    /// to `slots`, each if later (and it is not revoked).
    pub fn extend_to(&self, at: Uptime, slots: Timestamp) {
        self.slots_until
            .fetch_max(slots.as_ms(), std::sync::atomic::Ordering::AcqRel);
        self.until
            .fetch_max(at.0, std::sync::atomic::Ordering::AcqRel);
    }

    /// Whether an attempt with slot time `slot` may leave as far as the
    /// wall-clock mark goes (`valid` says whether anything may).
    pub fn covers(&self, slot: Timestamp) -> bool {
        slot.as_ms() <= self.slots_until.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The latest slot time that may leave, on this node's wall clock.
    pub fn slots_until(&self) -> Timestamp {
        Timestamp(self.slots_until.load(std::sync::atomic::Ordering::Acquire))
    }

    /// Waits until an attempt with slot time `slot` may leave: `true` once
    /// it is covered while the deadline holds, `false` if the deadline
    /// passes first. The two marks move together, so the wait is long only
    /// when this node's wall clock stepped forward since the last renewal
    /// (the next one catches up).
    pub async fn admits(&self, slot: Timestamp) -> bool {
        loop {
            if !self.valid() {
                return false;
            }
            if self.covers(slot) {
                return true;
            }
            let step = std::time::Duration::from_millis(10);
            tokio::time::sleep(self.left().min(step)).await;
        }
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
        deadline.extend_to(uptime().plus(std::time::Duration::from_secs(60)), now());
        assert!(deadline.valid());
        deadline.revoke();
        assert!(!deadline.valid());
        deadline.extend_to(uptime().plus(std::time::Duration::from_secs(120)), now());
        assert!(!deadline.valid(), "a late renewal brought it back");
    }

    #[tokio::test]
    async fn a_slot_leaves_only_once_the_wall_clock_mark_covers_it() {
        let deadline = std::sync::Arc::new(Deadline::default());
        let soon = std::time::Duration::from_millis(300);
        deadline.extend_to(uptime().plus(soon), Timestamp(1_000));
        assert!(deadline.covers(Timestamp(1_000)));
        assert!(!deadline.covers(Timestamp(1_001)));
        assert!(deadline.admits(Timestamp(900)).await);
        // A slot past the mark waits for a renewal that covers it...
        let waiting = tokio::spawn({
            let deadline = deadline.clone();
            async move { deadline.admits(Timestamp(2_000)).await }
        });
        deadline.extend_to(uptime().plus(soon), Timestamp(2_000));
        assert!(waiting.await.expect("joined"));
        // ...and gives up when the deadline passes first.
        assert!(!deadline.admits(Timestamp(3_000)).await);
        assert!(!deadline.valid());
    }
}
