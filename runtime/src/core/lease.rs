//! A lease (each unit's, `core::units`), as pure rules: the database's
//! side (`Row`, what the SQL of `cluster/units.rs` does to a `units` row)
//! and the owner's
//! (`Terms::hold`: how long after it sent a successful renewal it may act,
//! on its own clock). `lease_sim_tests.rs` runs nodes with drifting clocks,
//! pauses, partitions and crashes against them and checks that owners never
//! overlap and that the gate's window bound holds across every handover.

use std::time::Duration;

use super::Timestamp;
use super::time::duration_ms;

/// The lease's timings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Terms {
    /// How long a lease lasts after each renewal, on the database's clock.
    pub lease: Duration,
    /// How often the owner renews, nodes beat, and others look for a
    /// lapsed lease.
    pub renew_every: Duration,
    /// How much sooner than the lease the owner stops: room for its clock
    /// running up to `margin / lease` slower than the database's.
    pub margin: Duration,
}

impl Default for Terms {
    fn default() -> Self {
        Terms {
            lease: Duration::from_secs(5),
            renew_every: Duration::from_secs(1),
            margin: Duration::from_secs(1),
        }
    }
}

impl Terms {
    /// How long after sending a renewal (or takeover) that succeeded the
    /// owner may act, on its own clock. The database set the expiry to its
    /// `now()`, which is later than the send, plus the lease: so this ends
    /// before the expiry, by `margin` at least.
    pub fn hold(&self) -> Duration {
        self.lease.saturating_sub(self.margin)
    }
}

/// A lease's row: who owns it, under which epoch, until when by the
/// database's clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Row<N> {
    pub owner: Option<N>,
    pub epoch: u64,
    pub expires: Timestamp,
}

impl<N: Copy + PartialEq> Row<N> {
    pub fn vacant() -> Row<N> {
        Row {
            owner: None,
            epoch: 0,
            expires: Timestamp(0),
        }
    }

    /// A takeover at `now` (the database's clock): granted when the lease
    /// has lapsed, was handed over, or is `node`'s own from an engine that
    /// stopped. Returns the new epoch.
    pub fn acquire(&mut self, node: N, now: Timestamp, terms: &Terms) -> Option<u64> {
        if self.expires < now || self.owner == Some(node) {
            self.owner = Some(node);
            self.epoch += 1;
            self.expires = now.plus(terms.lease);
            Some(self.epoch)
        } else {
            None
        }
    }

    /// A renewal: granted only to the owner under its epoch.
    pub fn renew(&mut self, node: N, epoch: u64, now: Timestamp, terms: &Terms) -> bool {
        if self.owner == Some(node) && self.epoch == epoch {
            self.expires = now.plus(terms.lease);
            true
        } else {
            false
        }
    }

    /// A handover on a clean stop: the next node need not wait.
    pub fn release(&mut self, node: N, epoch: u64) {
        if self.owner == Some(node) && self.epoch == epoch {
            self.owner = None;
            self.expires = Timestamp(0);
        }
    }

    /// Whether a write of `node` under `epoch` would pass the fence.
    pub fn fences_in(&self, node: N, epoch: u64) -> bool {
        self.owner == Some(node) && self.epoch == epoch
    }
}

/// The lease in milliseconds, for SQL.
pub fn lease_ms(terms: &Terms) -> u64 {
    duration_ms(terms.lease)
}

#[cfg(test)]
#[path = "lease_sim_tests.rs"]
mod sim_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_lease_is_not_taken_and_a_lapsed_one_is() {
        let terms = Terms::default();
        let mut row = Row::vacant();
        assert_eq!(row.acquire(1, Timestamp(1_000), &terms), Some(1));
        assert_eq!(row.acquire(2, Timestamp(5_999), &terms), None);
        assert!(row.renew(1, 1, Timestamp(5_000), &terms));
        assert_eq!(row.acquire(2, Timestamp(9_999), &terms), None);
        assert_eq!(row.acquire(2, Timestamp(10_001), &terms), Some(2));
        // The old owner's renewal and writes change nothing now.
        assert!(!row.renew(1, 1, Timestamp(10_002), &terms));
        assert!(!row.fences_in(1, 1));
        assert!(row.fences_in(2, 2));
        // Its own lease back after a stop: a new epoch fences the old one.
        assert_eq!(row.acquire(2, Timestamp(10_003), &terms), Some(3));
        assert!(!row.fences_in(2, 2));
        row.release(2, 3);
        assert_eq!(row.acquire(1, Timestamp(10_004), &terms), Some(4));
    }

    #[test]
    fn the_owner_stops_a_margin_before_the_lease_runs_out() {
        let terms = Terms::default();
        assert_eq!(terms.hold(), Duration::from_secs(4));
        assert!(terms.hold() < terms.lease);
    }
}
