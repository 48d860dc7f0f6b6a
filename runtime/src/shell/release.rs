//! What leaves, and when: the release pacer and the plugin permit path.
//!
//! Both are decisions, so they live in the engine beside the core and take
//! their time as an argument; the runner only sleeps until the instants
//! chosen here and answers the waiting requests. The simulation drives this
//! code the same way, with a commit that runs late as often as it likes.

use super::*;

/// A plugin request the gate let out: its waiter is answered at its release.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grant {
    pub task: TaskId,
    pub attempt: u32,
    pub ask: u64,
}

/// What a turn let out, each with how long after `done` (the instant passed
/// to [`Engine::release`]) it leaves.
#[derive(Debug, Default)]
pub struct Released {
    pub attempts: Vec<(Duration, Plan)>,
    pub grants: Vec<(Duration, Grant)>,
}

/// A gate's release pacer: tokens (negative: releases reserved ahead) as of
/// `at` (ms since the epoch, fractional).
#[derive(Clone, Copy, Debug)]
pub(super) struct Pacer {
    tokens: f64,
    at: f64,
    /// The rate (per ms) it last paced at.
    rate: f64,
}

impl Engine {
    /// The plugin running attempt `attempt` of `task` asks to send request
    /// `ask`; the gate answers it through a later [`Released::grants`].
    /// False (refused) when the task's attempt is no longer running: its
    /// report came first.
    pub fn ask(&mut self, now: Timestamp, task: TaskId, attempt: u32, ask: u64) -> bool {
        if !self.core.is_running(task) {
            return false;
        }
        self.waiting.entry(task).or_default().push((attempt, ask));
        self.core
            .handle_input(now, Input::Ask { task, attempt, ask });
        true
    }

    /// A request that had its permit is over; `answered` is how long the
    /// endpoint took and the quota it stated, when it answered.
    pub fn request_ended(
        &mut self,
        now: Timestamp,
        task: TaskId,
        attempt: u32,
        signal: crate::core::Signal,
        answered: Option<(Duration, Option<crate::core::Quota>)>,
    ) {
        if let Some((latency, quota)) = answered {
            let answered = Input::Answered {
                task,
                attempt,
                latency,
                quota,
            };
            self.core.handle_input(now, answered);
        }
        let ended = Input::RequestEnded {
            task,
            attempt,
            signal,
        };
        self.core.handle_input(now, ended);
    }

    /// The attempts of a committed turn and the plugin requests the gates
    /// allowed, each with its release: not before its slot time (which the
    /// core chose, ahead of the commit), and not before a second bucket at
    /// the gate's rate and burst, counted from `done` (when the commit was
    /// done), has a token. The slot times conform to the gate, so when the
    /// commit is done in time the pacer never holds a release back; when a
    /// commit runs late, it keeps the releases that waited for it from
    /// bunching at the endpoint. It only ever delays: what may start at all
    /// is the core's decision.
    ///
    /// A permit whose request nobody waits for any more (its attempt
    /// ended) is handed back at once.
    pub fn release(&mut self, done: Timestamp, plans: Vec<Plan>) -> Released {
        if let Some(began) = self.turn_began.take() {
            self.was_busy(began, done);
        }
        let mut released = Released::default();
        for plan in plans {
            let after = self.pace(done, plan.gate_id, plan.release_at);
            released.attempts.push((after, plan));
        }
        while let Some(permit) = self.core.poll_permit() {
            let (task, attempt, ask) = (permit.task, permit.attempt, permit.ask);
            let waiting = self.waiting.get_mut(&task).and_then(|waiting| {
                let i = waiting.iter().position(|&w| w == (attempt, ask))?;
                waiting.swap_remove(i);
                Some(waiting.is_empty())
            });
            match waiting {
                None => {
                    // The attempt ended while its request waited: nothing
                    // will be sent, so the slot the permit took is free again.
                    let neutral = crate::core::Signal::Neutral;
                    self.request_ended(done, task, attempt, neutral, None);
                    continue;
                }
                Some(true) => {
                    self.waiting.remove(&task);
                }
                Some(false) => {}
            }
            let after = self.pace(done, permit.gate, permit.at);
            released.grants.push((after, Grant { task, attempt, ask }));
        }
        released
    }

    /// The driver was busy from `from` to `to` (a turn and its commit, or
    /// retention's): the gates look at least that far ahead for a while,
    /// so the next stall as long finds their starts already on disk.
    pub fn was_busy(&mut self, from: Timestamp, to: Timestamp) {
        self.lookahead.busy(from, to);
    }

    /// Forgets the requests of `task` still waiting: its attempt ended.
    pub(super) fn forget_asks(&mut self, task: TaskId) {
        self.waiting.remove(&task);
    }

    /// How long after `done` a release with slot time `at` in `gate` leaves.
    fn pace(&mut self, done: Timestamp, gate: GateId, at: Timestamp) -> Duration {
        let base = done.as_ms() as f64;
        let due = at.as_ms().max(done.as_ms()) as f64;
        let Some((rate, burst)) = self.core.pace(done, gate) else {
            return at.since(done);
        };
        // A hair under the gate's rate (per ms), so a millisecond of jitter
        // between here and the endpoint cannot push a window over the bound.
        let rate = (rate * PACER_MARGIN / 1_000.0).max(1e-9);
        let cap = f64::from(burst.max(1));
        let pacer = self.pacers.entry(gate.0).or_insert(Pacer {
            tokens: cap,
            at: due,
            rate,
        });
        let leave = pacer.take(due, rate, cap);
        Duration::from_secs_f64((leave - base).max(0.0) / 1_000.0)
    }
}

/// The last check of a gate's releases, as each one wakes, on the real
/// clock. The engine's pacer spaced them from the instant their commit was
/// done; a wake that runs late (both cores busy) would still send a late
/// release in a bunch with the next ones, so each waits here for its token
/// at the pacer's rate. The bucket is smaller than the gate's burst by
/// [`ARRIVAL_JITTER`] of tokens (keeping at least one): what is sent within
/// `burst + rate × T` arrives within it too, as long as the arrivals lag
/// each other by no more than that (the first requests of a burst each
/// open a connection).
#[derive(Debug)]
pub(super) struct Spacer {
    base: std::time::Instant,
    pacer: std::sync::Mutex<Option<Pacer>>,
}

impl Spacer {
    pub(super) fn new() -> Spacer {
        Spacer {
            base: clock::instant(),
            pacer: std::sync::Mutex::new(None),
        }
    }

    /// How long a release that wakes now waits, at `rate` per second and
    /// `burst`.
    pub(super) fn wait(&self, rate: f64, burst: u32) -> Duration {
        self.wait_at(self.base.elapsed().as_secs_f64() * 1_000.0, rate, burst)
    }

    /// [`Spacer::wait`] at `now` (ms since `base`). A wait shorter than the
    /// timer's tick (1 ms) is not slept: the token is taken all the same,
    /// so the debt grows until a release waits, and what leaves within a
    /// tick is never more than a tick's worth of tokens.
    fn wait_at(&self, now: f64, rate: f64, burst: u32) -> Duration {
        let rate = (rate * PACER_MARGIN / 1_000.0).max(1e-9);
        let cap = spacer_cap(rate, burst);
        let Ok(mut pacer) = self.pacer.lock() else {
            return Duration::ZERO;
        };
        let pacer = pacer.get_or_insert(Pacer {
            tokens: cap,
            at: now,
            rate,
        });
        let wait = pacer.take(now, rate, cap) - now;
        if wait < 1.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(wait / 1_000.0)
        }
    }
}

/// The spacer's bucket at `rate` (per ms): the burst less the tokens of
/// [`ARRIVAL_JITTER`] (a fraction of one at a slow rate: the last of a
/// burst then waits that long), at least one.
fn spacer_cap(rate: f64, burst: u32) -> f64 {
    let jitter = rate * ARRIVAL_JITTER.as_secs_f64() * 1_000.0;
    (f64::from(burst) - jitter).max(1.0)
}

impl Pacer {
    /// Takes a token for a release due at `due` (ms) at `rate` (per ms) and
    /// burst `cap`: when it leaves.
    fn take(&mut self, due: f64, rate: f64, cap: f64) -> f64 {
        if due > self.at {
            // At the lower of the rates at either end of the span, as the
            // gate's own bucket refills: a rate that rose since (a ramp, a
            // throttle lifted) must not refill time paced at the old one.
            let refill = rate.min(self.rate);
            self.tokens = (self.tokens + refill * (due - self.at)).min(cap);
            self.at = due;
        }
        if self.tokens < 0.0 {
            // Releases reserved ahead keep their instants at the new rate: a
            // debt paid back faster would let the next one out among them.
            self.tokens *= rate / self.rate;
        }
        self.rate = rate;
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            due
        } else {
            self.at + (-self.tokens / rate).min(3_600_000.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Pacer, Spacer, spacer_cap};
    use std::time::Duration;

    /// The spacer keeps 8 ms of tokens of the burst in hand, never the last.
    #[test]
    fn the_spacer_keeps_the_arrival_jitter_of_the_burst_in_hand() {
        let cap = |per_s: f64, burst| spacer_cap(per_s / 1_000.0, burst);
        let near = |a: f64, b: f64| (a - b).abs() < 1e-9;
        assert!(near(cap(500.0, 10), 6.0));
        assert!(near(cap(50.0, 50), 49.6));
        assert!(near(cap(1.0, 10), 9.992));
        assert!(near(cap(1_000.0, 1), 1.0));
        assert!(near(cap(5_000.0, 50), 10.0));
        assert!(near(cap(1e9, 1_000), 1.0));
    }

    /// At 1/s and burst 10, the whole burst leaves at once but the last,
    /// which waits the 8 ms kept in hand, not a second.
    #[test]
    fn a_slow_gate_loses_no_token_of_its_burst() {
        let spacer = Spacer::new();
        let waits: Vec<Duration> = (0..10).map(|_| spacer.wait_at(0.0, 1.0, 10)).collect();
        assert!(waits[..9].iter().all(Duration::is_zero), "{waits:?}");
        let last = waits[9].as_secs_f64() * 1_000.0;
        assert!((7.9..8.1).contains(&last), "{waits:?}");
    }

    /// At 500/s and burst 10, six leave at once and the rest one interval
    /// apart; a late wake does not send the ones behind it in a bunch.
    #[test]
    fn the_spacer_spaces_releases_that_wake_together() {
        let spacer = Spacer::new();
        let rate = 500.0 * super::PACER_MARGIN / 1_000.0;
        let (interval, cap) = (1.0 / rate, spacer_cap(rate, 10));
        let ms = |d: Duration| d.as_secs_f64() * 1_000.0;
        let waits: Vec<Duration> = (0..9).map(|_| spacer.wait_at(100.0, 500.0, 10)).collect();
        assert!(waits[..6].iter().all(Duration::is_zero), "{waits:?}");
        for (k, wait) in waits.iter().enumerate().skip(6) {
            let want = (k as f64 + 1.0 - cap) * interval;
            assert!((ms(*wait) - want).abs() < 1e-6, "{waits:?}");
        }
        // One that wakes as the last of those leaves waits (about) an
        // interval behind it.
        let late = ms(spacer.wait_at(100.0 + ms(waits[8]), 500.0, 10));
        assert!((late - interval).abs() < 0.05 * interval, "{late}");
    }

    /// With no effective limit, nothing sleeps for less than a tick.
    #[test]
    fn the_spacer_does_not_sleep_under_a_tick() {
        let spacer = Spacer::new();
        assert!((0..10_000).all(|_| spacer.wait_at(5.0, 1e9, 1_000).is_zero()));
    }

    /// Releases reserved ahead at one rate keep their instants when the
    /// rate rises (a ramp): the next leaves one new interval after the
    /// last of them, never among them.
    #[test]
    fn a_rising_rate_keeps_the_releases_reserved_ahead() {
        let mut pacer = Pacer {
            tokens: 1.0,
            at: 0.0,
            rate: 0.01,
        };
        let at_10_per_s: Vec<f64> = (0..3).map(|_| pacer.take(0.0, 0.01, 1.0)).collect();
        assert_eq!(at_10_per_s, [0.0, 100.0, 200.0]);
        let doubled = pacer.take(0.0, 0.02, 1.0);
        assert!(
            (doubled - 250.0).abs() < 1e-6,
            "50 ms after the last reserved, not among them: {doubled}"
        );
    }
}
