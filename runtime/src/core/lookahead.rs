//! How far ahead of their tokens the gates admit starts: the base lookahead
//! (`Tuning::lookahead`, longer than a commit), grown to cover the longest
//! the driver decided nothing (a slow turn, or a wake that came late) in
//! the last ten to twenty seconds, up to `Tuning::lookahead_max`.
//!
//! A start is released only once its commit is done, and while a commit
//! runs the driver decides nothing. A gate with a small burst has nowhere to
//! keep the tokens that come meanwhile, so a commit longer than the
//! lookahead loses them: a disk that stalls for 150 ms (a journal commit
//! behind another process's writes) takes 150 ms of every smooth gate's
//! rate. Starts admitted that far ahead are on disk before their slots
//! come, and leave on time while the next commit stalls.
//!
//! The cost of looking further ahead is paid only after slow turns: the
//! starts admitted ahead hold their concurrency slots until they leave,
//! and a pause, or the first failure of an endpoint, stops what starts
//! next but not what was already admitted (at most `lookahead_max` of the
//! gate's rate). A healthy disk keeps the base.

use std::time::Duration;

use super::time::{Timestamp, duration_ms};

/// The slowest turns seen, in two periods of this length: what is
/// remembered is between one and two of them old.
const PERIOD_MS: u64 = 10_000;

#[derive(Clone, Copy, Debug)]
pub struct Lookahead {
    base: u64,
    max: u64,
    /// When the current period began (ms), once a turn was seen.
    since: Option<u64>,
    /// The slowest turn of the current period, and of the one before (ms).
    slowest: u64,
    before: u64,
}

impl Lookahead {
    pub fn new(base: Duration, max: Duration) -> Lookahead {
        let base = duration_ms(base);
        Lookahead {
            base,
            max: duration_ms(max).max(base),
            since: None,
            slowest: 0,
            before: 0,
        }
    }

    /// The driver decided nothing from `from` to `to`: a turn and its
    /// commit, or a wake it asked for and got late.
    pub fn busy(&mut self, from: Timestamp, to: Timestamp) {
        self.roll(to);
        let took = to.as_ms().saturating_sub(from.as_ms());
        self.slowest = self.slowest.max(took);
    }

    /// How far ahead the gates admit at `now`: the base plus the slowest
    /// recent turn (the base covers the commit after it), at most the max.
    pub fn at(&mut self, now: Timestamp) -> Duration {
        self.roll(now);
        let slowest = self.slowest.max(self.before);
        Duration::from_millis(self.base.saturating_add(slowest).min(self.max))
    }

    fn roll(&mut self, now: Timestamp) {
        let now = now.as_ms();
        let since = *self.since.get_or_insert(now);
        if now < since + PERIOD_MS {
            return;
        }
        self.before = if now < since + 2 * PERIOD_MS {
            self.slowest
        } else {
            0
        };
        self.slowest = 0;
        self.since = Some(now - (now - since) % PERIOD_MS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(d: Duration) -> u64 {
        d.as_millis() as u64
    }

    #[test]
    fn quick_turns_keep_the_base() {
        let mut l = Lookahead::new(Duration::from_millis(20), Duration::from_millis(250));
        for t in 0..1_000 {
            l.busy(Timestamp(t * 5), Timestamp(t * 5));
            assert_eq!(ms(l.at(Timestamp(t * 5))), 20);
        }
    }

    /// A slow turn grows it at once, for between one and two periods; then
    /// it is back to the base.
    #[test]
    fn a_slow_turn_grows_it_for_a_while() {
        let mut l = Lookahead::new(Duration::from_millis(20), Duration::from_millis(250));
        l.busy(Timestamp(0), Timestamp(0));
        l.busy(Timestamp(3_000), Timestamp(3_150));
        assert_eq!(ms(l.at(Timestamp(3_150))), 170);
        assert_eq!(
            ms(l.at(Timestamp(19_999))),
            170,
            "still in the period after"
        );
        assert_eq!(ms(l.at(Timestamp(20_000))), 20, "two periods on");
        // A long silence forgets it too.
        l.busy(Timestamp(20_000), Timestamp(20_100));
        assert_eq!(ms(l.at(Timestamp(20_100))), 120);
        assert_eq!(ms(l.at(Timestamp(95_000))), 20);
    }

    /// Never beyond the max, nor under the base (a max below it is the base).
    #[test]
    fn it_stays_within_its_bounds() {
        let mut l = Lookahead::new(Duration::from_millis(20), Duration::from_millis(250));
        l.busy(Timestamp(0), Timestamp(5_000));
        assert_eq!(ms(l.at(Timestamp(5_000))), 250);
        let mut fixed = Lookahead::new(Duration::from_millis(60), Duration::from_millis(20));
        fixed.busy(Timestamp(0), Timestamp(500));
        assert_eq!(ms(fixed.at(Timestamp(500))), 60);
    }
}
