//! An endpoint's own quota, as its responses state it, and the pace that
//! makes what remains of it last until the reset.
//!
//! Every answer that states a quota gives an upper bound on what the gate may
//! still send before the reset: the remaining count, less the attempts still
//! in flight (they may reach the endpoint before it counts them, or after;
//! either way they are charged). The gate keeps the lowest bound of the
//! window, takes one for every start, and spreads what is left evenly over
//! the time to the reset. With nothing left it waits for the reset. So the
//! endpoint's count never passes its stated limit, and no 429 is needed to
//! learn it.
//!
//! Delays only make the pace more careful: a reset stated relative to the
//! answer is placed relative to the turn that reads it, which is later.

use std::time::Duration;

use super::time::Timestamp;

/// A quota as one response stated it: `remaining` requests until `reset_in`
/// from the response; `limit` per `window` when the endpoint said so.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    pub remaining: u64,
    pub reset_in: Duration,
    pub limit: Option<u64>,
    pub window: Option<Duration>,
}

/// Responses of one window may place its end this far apart when they state
/// the reset in whole seconds (read at different instants, rounded up); a
/// reset later than that is a new window. So with whole seconds, windows
/// shorter than 2 s are not told apart: the gate stays within their limit,
/// but spends less of it.
const SAME_WINDOW_MS: u64 = 1_500;
/// The same, for a reset stated to the millisecond: only the time the
/// answers took tells them apart.
const SAME_WINDOW_EXACT_MS: u64 = 250;

/// What a gate holds of its endpoint's quota.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QuotaPace {
    /// Starts the gate may still make before `until`.
    budget: u64,
    until: Timestamp,
    /// The next start not before this: the budget spread over the time left.
    next: Timestamp,
    limit: Option<u64>,
    window: Option<Duration>,
}

/// The quota as the API shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuotaView {
    pub remaining: u64,
    pub reset_at: Timestamp,
    pub limit: Option<u64>,
    pub window: Option<Duration>,
}

impl QuotaPace {
    /// Folds in a response's quota. `others`: attempts in flight besides the
    /// one that answered, charged against what remains.
    pub fn seen(held: Option<QuotaPace>, now: Timestamp, quota: Quota, others: u64) -> QuotaPace {
        let mut reset_in = quota.reset_in;
        if reset_in.is_zero() {
            // "Resets now" from an endpoint that just answered: a second at
            // most, in whole seconds; never a reason to send more at once.
            reset_in = Duration::from_secs(1);
        }
        let until = now.plus(reset_in);
        let budget = quota.remaining.saturating_sub(others);
        let same = if reset_in.subsec_millis() == 0 {
            SAME_WINDOW_MS
        } else {
            SAME_WINDOW_EXACT_MS
        };
        match held {
            // A later reset is a new window. An earlier one is this window's
            // (or, from an answer that came back late, the one before): the
            // later end is kept, so the bound always covers this window.
            Some(held) if now < held.until && until.as_ms() <= held.until.as_ms() + same => {
                QuotaPace {
                    budget: held.budget.min(budget),
                    until: held.until.max(until),
                    next: held.next,
                    limit: quota.limit.or(held.limit),
                    window: quota.window.or(held.window),
                }
            }
            _ => QuotaPace {
                budget,
                until,
                next: now,
                limit: quota.limit,
                window: quota.window,
            },
        }
    }

    /// Moves past a reset: into the next window when the endpoint stated
    /// its limit and window, with the whole limit to spend; `None` when it
    /// did not (the next answer says what the new window holds).
    pub fn at(mut self, now: Timestamp) -> Option<QuotaPace> {
        if now < self.until {
            return Some(self);
        }
        let (Some(limit), Some(window)) = (self.limit, self.window) else {
            return None;
        };
        let window_ms = window.as_millis() as u64;
        if window_ms == 0 {
            return None;
        }
        let behind = (now.as_ms() - self.until.as_ms()) / window_ms + 1;
        self.until = Timestamp(self.until.as_ms() + behind * window_ms);
        self.budget = limit;
        self.next = now;
        Some(self)
    }

    /// Whether a start may go at `now`, or when to ask again.
    pub fn check(&self, now: Timestamp) -> Result<(), Timestamp> {
        if self.budget == 0 {
            return Err(self.until);
        }
        if now < self.next {
            return Err(self.next);
        }
        Ok(())
    }

    /// A start that [`QuotaPace::check`] allowed: one less, and the rest
    /// spread over the time left.
    pub fn take(&mut self, now: Timestamp) {
        let left_ms = self.until.as_ms().saturating_sub(now.as_ms());
        let spacing = left_ms / self.budget.max(1);
        self.budget = self.budget.saturating_sub(1);
        self.next = Timestamp(now.as_ms() + spacing);
    }

    pub fn view(&self) -> QuotaView {
        QuotaView {
            remaining: self.budget,
            reset_at: self.until,
            limit: self.limit,
            window: self.window,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota(remaining: u64, reset_s: u64) -> Quota {
        Quota {
            remaining,
            reset_in: Duration::from_secs(reset_s),
            limit: None,
            window: None,
        }
    }

    #[test]
    fn what_remains_is_spread_until_the_reset() {
        let t0 = Timestamp(1_000_000);
        let mut pace = QuotaPace::seen(None, t0, quota(10, 10), 0);
        let mut starts = Vec::new();
        let mut now = t0;
        while now.as_ms() < t0.as_ms() + 20_000 {
            if pace.check(now).is_ok() {
                pace.take(now);
                starts.push(now.as_ms() - t0.as_ms());
            }
            now = Timestamp(now.as_ms() + 1);
        }
        assert_eq!(
            starts,
            vec![
                0, 1_000, 2_000, 3_000, 4_000, 5_000, 6_000, 7_000, 8_000, 9_000
            ]
        );
        assert_eq!(
            pace.check(now.plus(Duration::ZERO)),
            Err(Timestamp(t0.as_ms() + 10_000))
        );
        assert!(
            pace.at(Timestamp(t0.as_ms() + 10_000)).is_none(),
            "no window stated"
        );
    }

    #[test]
    fn attempts_in_flight_are_charged_and_the_lowest_bound_holds() {
        let t0 = Timestamp(1_000_000);
        let pace = QuotaPace::seen(None, t0, quota(5, 10), 3);
        assert_eq!(pace.view().remaining, 2);
        // An older answer, read later, says more remains: the lower bound stays.
        let pace = QuotaPace::seen(Some(pace), Timestamp(t0.as_ms() + 100), quota(8, 10), 0);
        assert_eq!(pace.view().remaining, 2);
        assert_eq!(pace.view().reset_at, Timestamp(t0.as_ms() + 10_100));
        // An answer from the next window starts afresh.
        let pace = QuotaPace::seen(Some(pace), Timestamp(t0.as_ms() + 10_200), quota(99, 10), 0);
        assert_eq!(pace.view().remaining, 99);
    }

    #[test]
    fn a_stated_window_rolls_over_with_its_whole_limit() {
        let t0 = Timestamp(1_000_000);
        let stated = Quota {
            limit: Some(100),
            window: Some(Duration::from_secs(60)),
            ..quota(0, 30)
        };
        let pace = QuotaPace::seen(None, t0, stated, 0);
        assert_eq!(pace.check(t0), Err(Timestamp(t0.as_ms() + 30_000)));
        let later = Timestamp(t0.as_ms() + 30_000 + 60_000 * 2 + 5);
        let rolled = pace.at(later).expect("rolled");
        assert_eq!(rolled.view().remaining, 100);
        assert_eq!(
            rolled.view().reset_at,
            Timestamp(t0.as_ms() + 30_000 + 60_000 * 3)
        );
        assert_eq!(rolled.check(later), Ok(()));
    }
}

#[cfg(test)]
#[path = "quota_sim_tests.rs"]
mod sim_tests;
