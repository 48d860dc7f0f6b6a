//! A gate: the throughput limit in front of one endpoint.
//!
//! It owns the rate limiter (GCRA), the concurrency count, the operator pause, the
//! circuit breaker, 429/503 throttling and the recovery ramp. It decides *whether*
//! an attempt may start at `now`; which task starts is the scheduler's business.
//!
//! Past 600 lines with its unit tests, which sit beside the state machine they
//! drive.

use std::time::Duration;

use super::adaptive::{Adaptive, AdaptiveRange};
use super::quota::{Quota, QuotaPace, QuotaView};
use super::time::{Rate, Timestamp, duration_ms};

/// The limits of a gate, as the core needs them. Hosts, timeouts and default
/// retry policies live in the shell: they do not decide when attempts start.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GateLimits {
    pub rate: Rate,
    /// Bucket size: how many attempts may start back to back. At least 1.
    pub burst: u32,
    /// Attempts in flight at once. At least 1. With `adaptive`, where the
    /// search starts.
    pub concurrency: u32,
    /// Search for the endpoint's safe concurrency in this range (SPEC §1).
    pub adaptive: Option<AdaptiveRange>,
    pub recovery: Recovery,
    pub circuit: Option<CircuitPolicy>,
    /// Pace by the quota the endpoint states in its responses (SPEC §1,
    /// `quota_headers`).
    pub quota_headers: bool,
    /// A waiting task gains one priority level per this much time past its
    /// due time, so low priority is delayed, never starved.
    pub priority_aging: Duration,
}

/// After a start, a resume or a closed circuit, the effective rate begins at
/// `start × rate` and rises linearly to `rate` over `over`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Recovery {
    /// In (0, 1]; 1 switches the ramp off.
    pub start: f64,
    pub over: Duration,
}

impl Default for Recovery {
    fn default() -> Self {
        Recovery {
            start: 0.1,
            over: Duration::from_secs(60),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CircuitPolicy {
    /// Consecutive failed attempts that trip the circuit. At least 1.
    pub failures: u32,
    pub cooldown: Duration,
    pub max_cooldown: Duration,
}

impl Default for CircuitPolicy {
    fn default() -> Self {
        CircuitPolicy {
            failures: 5,
            cooldown: Duration::from_secs(30),
            max_cooldown: Duration::from_secs(600),
        }
    }
}

/// What an operator and the API see.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GateState {
    Open,
    Paused,
    Tripped,
    Probing,
    Recovering,
    Throttled,
}

impl GateState {
    pub fn as_str(self) -> &'static str {
        match self {
            GateState::Open => "open",
            GateState::Paused => "paused",
            GateState::Tripped => "tripped",
            GateState::Probing => "probing",
            GateState::Recovering => "recovering",
            GateState::Throttled => "throttled",
        }
    }
}

/// A token bucket counted in billionths of a token, so the arithmetic is exact
/// integers and every rounding goes the safe way (refills round down).
///
/// It holds at most `burst` tokens; an attempt takes one. Between two calls it
/// refills at the lower of the rates in force at either end, which never exceeds
/// the effective rate over that span. So in any window of length T at most
/// `burst + ∫ rate` attempts start, whatever the ramp and throttling did.
///
/// A token may be taken a little before it is there (`ahead`): the balance goes
/// below zero and the start gets the instant at which its token will have
/// arrived, its release instant. Those instants are GCRA's slot times: the
/// bound holds over them, and a decision made late (a slow commit before the
/// turn) loses no token, since the slots were chosen before they came.
#[derive(Clone, Copy, Debug)]
pub struct Limiter {
    /// Below zero while tokens are promised ahead of their arrival.
    tokens_nano: i64,
    updated: Timestamp,
    /// Tokens per second at `updated`.
    rate: f64,
}

const TOKEN: i64 = 1_000_000_000;

impl Limiter {
    pub fn full(now: Timestamp, burst: u32, rate: f64) -> Limiter {
        Limiter {
            tokens_nano: i64::from(burst) * TOKEN,
            updated: now,
            rate,
        }
    }

    fn refill(&mut self, now: Timestamp, rate: f64, burst: u32) {
        let cap = i64::from(burst.max(1)) * TOKEN;
        if now > self.updated {
            let per_ms = self.rate.min(rate) * 1e6;
            let add = (per_ms * (now.as_ms() - self.updated.as_ms()) as f64).floor();
            let room = cap.saturating_sub(self.tokens_nano).max(0);
            self.tokens_nano += if add >= room as f64 { room } else { add as i64 };
            self.updated = now;
        }
        self.tokens_nano = self.tokens_nano.min(cap);
        // Slots promised ahead keep their instants at the new rate.
        self.rescale_debt(self.rate, rate);
        self.rate = rate;
    }

    /// Takes a token that is there by `now + ahead_ms`, answering when it is
    /// (the start's release instant, never before `now`); or says when asking
    /// again may succeed.
    pub fn admit(
        &mut self,
        now: Timestamp,
        rate: f64,
        burst: u32,
        ahead_ms: u64,
    ) -> Result<Timestamp, Timestamp> {
        self.refill(now, rate, burst);
        // The balance is as of `updated`, which a start admitted ahead of its
        // due time may have put after `now`: its tokens are there from then.
        let lead_ms = self.updated.as_ms().saturating_sub(now.as_ms());
        let wait_ms = lead_ms
            + if self.tokens_nano >= TOKEN {
                0
            } else {
                let missing = (TOKEN - self.tokens_nano) as f64;
                (missing / (rate * 1e6)).ceil().clamp(1.0, 86_400_000.0) as u64
            };
        if wait_ms <= ahead_ms {
            self.tokens_nano -= TOKEN;
            return Ok(Timestamp(now.as_ms() + wait_ms));
        }
        let retry_ms = wait_ms.saturating_sub(ahead_ms).max(1);
        Err(Timestamp(now.as_ms() + retry_ms))
    }

    /// The rate changes (a new config, a ramp, a throttle): tokens promised
    /// ahead keep their instants. The debt is kept in time, not in tokens, so the
    /// balance is back at zero when the last promised slot comes, whatever
    /// the new rate; otherwise a higher rate would hand out slots before
    /// those already promised.
    fn rescale_debt(&mut self, from: f64, to: f64) {
        if self.tokens_nano < 0 && from > 0.0 && to > 0.0 {
            self.tokens_nano = (self.tokens_nano as f64 * (to / from)).floor() as i64;
        }
    }

    fn empty(&mut self, now: Timestamp, rate: f64) {
        self.tokens_nano = self.tokens_nano.min(0);
        self.updated = now;
        self.rate = rate;
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Circuit {
    Closed {
        consecutive_failures: u32,
    },
    Open {
        until: Timestamp,
        cooldown: Duration,
    },
    /// One probe may go out; `probe_started` once it has.
    HalfOpen {
        cooldown: Duration,
        probe_started: bool,
    },
}

/// How an attempt's outcome bears on the gate (not on the task).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// The endpoint answered and was healthy (2xx, or a 4xx that blames the request).
    Healthy,
    /// The endpoint failed: 5xx other than 503, timeout, connection error.
    Failed,
    /// The endpoint asked us to slow down (429, 503), maybe with a `Retry-After`.
    Throttled { retry_after: Option<Duration> },
    /// The attempt never reached the endpoint through any fault of it (refused by
    /// policy, or interrupted by our own restart).
    Neutral,
}

/// A multiplicative cut on each throttling answer, at most one per this period, so a
/// volley of 429s from attempts already in flight counts once.
const THROTTLE_CUT_EVERY_MS: u64 = 1_000;
const THROTTLE_FLOOR: f64 = 1.0 / 64.0;
/// Additive increase after a cut: this fraction of the configured rate per second.
const THROTTLE_RECOVERY_PER_S: f64 = 0.05;
/// `Retry-After` is capped.
pub const RETRY_AFTER_MAX: Duration = Duration::from_secs(3_600);

#[derive(Clone, Debug)]
pub struct Gate {
    limits: GateLimits,
    limiter: Limiter,
    in_flight: u32,
    paused: bool,
    /// Handing over to another node: nothing new starts, while the attempts
    /// in flight finish (their plugin requests still get their permits).
    stopping: bool,
    circuit: Circuit,
    /// When the ramp began; `None` when none is running.
    ramp_since: Option<Timestamp>,
    throttled_until: Option<Timestamp>,
    /// The AIMD factor right after the last cut, and when that was.
    cut: Option<(f64, Timestamp)>,
    /// How far ahead of its token a start may be admitted (see [`Limiter`]).
    lookahead_ms: u64,
    /// The endpoint's quota, as its last answers stated it.
    quota: Option<QuotaPace>,
    /// The concurrency found so far, with `limits.adaptive`.
    adaptive: Option<Adaptive>,
}

impl Gate {
    pub fn new(now: Timestamp, limits: GateLimits) -> Gate {
        Gate {
            limits,
            limiter: Limiter::full(now, limits.burst, limits.rate.as_per_second()),
            in_flight: 0,
            paused: false,
            stopping: false,
            circuit: Circuit::Closed {
                consecutive_failures: 0,
            },
            ramp_since: None,
            throttled_until: None,
            cut: None,
            lookahead_ms: 0,
            quota: None,
            adaptive: limits
                .adaptive
                .map(|range| Adaptive::new(range, limits.concurrency)),
        }
    }

    /// Admits starts and requests up to `lookahead` before their token is
    /// there, each with its release instant: enough to cover a commit, so a
    /// turn that runs late still releases on the gate's own schedule.
    pub fn with_lookahead(mut self, lookahead: Duration) -> Gate {
        self.set_lookahead(lookahead);
        self
    }

    /// Changes the lookahead. Starts already admitted keep their slot
    /// times; the next are admitted within the new one.
    pub fn set_lookahead(&mut self, lookahead: Duration) {
        self.lookahead_ms = duration_ms(lookahead);
    }

    pub fn limits(&self) -> &GateLimits {
        &self.limits
    }

    /// A start admitted ahead of its token or its due time is on record as
    /// running before it leaves, and a node that takes the gate over after
    /// a crash cannot tell it from one at the endpoint, so it holds each
    /// until its timeout: admitted ahead, they could fill every slot of the
    /// gate for that long. So they take at most half the slots: ahead of
    /// their tokens, no further than half the concurrency's worth of them
    /// at `rate`; ahead of their due times, only while fewer than half the
    /// slots are taken.
    fn ahead_ms(&self, rate: f64) -> u64 {
        let half = f64::from(self.concurrency()) / 2.0;
        let spare_ms = (half * 1_000.0 / rate).floor();
        if spare_ms.is_finite() && spare_ms >= 0.0 {
            self.lookahead_ms.min(spare_ms as u64)
        } else {
            self.lookahead_ms
        }
    }

    /// See `ahead_ms`.
    fn slots_to_spare(&self) -> bool {
        self.in_flight.saturating_mul(2) < self.concurrency()
    }

    /// The bucket keeps its tokens (capped at the new burst), so a change neither
    /// releases a flood nor stalls the gate.
    pub fn set_limits(&mut self, now: Timestamp, limits: GateLimits) {
        let before = self.effective_rate(now);
        self.limiter.refill(now, before, self.limits.burst);
        self.limits = limits;
        self.adaptive = match (limits.adaptive, self.adaptive) {
            (None, _) => None,
            (Some(range), Some(held)) => Some(held.with_range(range, limits.concurrency)),
            (Some(range), None) => Some(Adaptive::new(range, limits.concurrency)),
        };
        if !limits.quota_headers {
            self.quota = None;
        }
        if limits.circuit.is_none() {
            self.circuit = Circuit::Closed {
                consecutive_failures: 0,
            };
        }
        let rate = self.effective_rate(now);
        self.limiter.refill(now, rate, limits.burst);
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight
    }

    /// Attempts allowed in flight now: the configured concurrency, or the
    /// one the adaptive search has found.
    pub fn concurrency(&self) -> u32 {
        self.adaptive
            .as_ref()
            .map_or(self.limits.concurrency, Adaptive::limit)
    }

    /// The adaptive search's baseline and recent latency (ms), if it runs.
    pub fn latencies(&self) -> Option<(Option<f64>, Option<f64>)> {
        self.adaptive.as_ref().map(Adaptive::latencies)
    }

    pub fn is_paused(&self) -> bool {
        self.paused
    }

    pub fn pause(&mut self) {
        self.paused = true;
    }

    /// Starts nothing more, for good: the gate is being handed over (see
    /// `Input::Stop`). Requests of attempts in flight still go out.
    pub fn stop(&mut self) {
        self.stopping = true;
    }

    /// Resuming ramps up again: whatever piled up while paused must not flood out.
    pub fn resume(&mut self, now: Timestamp) {
        if self.paused {
            self.paused = false;
            self.start_ramp(now);
        }
    }

    /// Empties the bucket: after a restart nothing is known of what the last run
    /// just sent, so no burst may go out before tokens accumulate again.
    pub fn start_empty(&mut self, now: Timestamp) {
        let rate = self.effective_rate(now);
        self.limiter.empty(now, rate);
    }

    pub fn start_ramp(&mut self, now: Timestamp) {
        if self.limits.recovery.start < 1.0 {
            self.ramp_since = Some(now);
        }
    }

    fn ramp_factor(&self, now: Timestamp) -> f64 {
        let Some(since) = self.ramp_since else {
            return 1.0;
        };
        let Recovery { start, over } = self.limits.recovery;
        let over_ms = duration_ms(over);
        if over_ms == 0 {
            return 1.0;
        }
        let progress = (now.since(since).as_millis() as f64 / over_ms as f64).min(1.0);
        start + (1.0 - start) * progress
    }

    fn throttle_factor(&self, now: Timestamp) -> f64 {
        match self.cut {
            None => 1.0,
            Some((factor, at)) => {
                (factor + now.since(at).as_secs_f64() * THROTTLE_RECOVERY_PER_S).min(1.0)
            }
        }
    }

    /// The rate the gate allows right now, per second.
    pub fn effective_rate(&self, now: Timestamp) -> f64 {
        let factor = self.ramp_factor(now).min(self.throttle_factor(now));
        self.limits.rate.as_per_second() * factor
    }

    /// How long before its due time a task may be started now (and
    /// released at its due time, so the start's commit is done by then):
    /// the lookahead while the endpoint looks healthy (circuit closed, no
    /// failure since, no throttle, not paused), else nothing. The gate is
    /// then asked at the due time, so its bound holds over release instants.
    pub fn due_ahead(&self, now: Timestamp) -> Duration {
        let healthy = !self.paused
            && matches!(
                self.circuit,
                Circuit::Closed {
                    consecutive_failures: 0
                }
            )
            && self.throttled_until.is_none_or(|t| t <= now);
        if healthy && self.slots_to_spare() {
            Duration::from_millis(self.lookahead_ms)
        } else {
            Duration::ZERO
        }
    }

    pub fn state(&self, now: Timestamp) -> GateState {
        if self.paused {
            return GateState::Paused;
        }
        match self.circuit {
            Circuit::Open { until, .. } if now < until => return GateState::Tripped,
            Circuit::Open { .. } | Circuit::HalfOpen { .. } => return GateState::Probing,
            Circuit::Closed { .. } => {}
        }
        if self.throttled_until.is_some_and(|t| now < t) {
            return GateState::Throttled;
        }
        if self.ramp_factor(now) < 1.0 || self.throttle_factor(now) < 1.0 {
            return GateState::Recovering;
        }
        GateState::Open
    }

    /// Whether an attempt may start at `now`. `Ok(at)` takes the slot: the
    /// caller must start exactly one attempt, released at `at` (`now`, or a
    /// little later when its token is still on its way). `Err(Some(t))`: not
    /// before `t`. `Err(None)`: not until something else happens (an attempt
    /// ends, a resume).
    pub fn try_start(&mut self, now: Timestamp) -> Result<Timestamp, Option<Timestamp>> {
        if self.paused || self.stopping {
            return Err(None);
        }
        let mut probe = false;
        match self.circuit {
            Circuit::Open { until, cooldown } => {
                if now < until {
                    return Err(Some(until));
                }
                self.circuit = Circuit::HalfOpen {
                    cooldown,
                    probe_started: false,
                };
                probe = true;
            }
            Circuit::HalfOpen { probe_started, .. } => {
                if probe_started {
                    return Err(None);
                }
                probe = true;
            }
            Circuit::Closed { .. } => {}
        }
        if let Some(until) = self.throttled_until {
            if now < until {
                return Err(Some(until));
            }
            self.throttled_until = None;
        }
        if self.in_flight >= self.concurrency() {
            return Err(None);
        }
        self.quota_allows(now).map_err(Some)?;
        if self.ramp_since.is_some() && self.ramp_factor(now) >= 1.0 {
            self.ramp_since = None;
        }
        if self.cut.is_some() && self.throttle_factor(now) >= 1.0 {
            self.cut = None;
        }
        let rate = self.effective_rate(now);
        // Ahead of the token only while the endpoint looks healthy: after a
        // failure, each start waits to hear how the ones before it went, and
        // a probe goes alone, when its token is there.
        let healthy = matches!(
            self.circuit,
            Circuit::Closed {
                consecutive_failures: 0
            }
        );
        let ahead = if healthy { self.ahead_ms(rate) } else { 0 };
        let at = self
            .limiter
            .admit(now, rate, self.limits.burst, ahead)
            .map_err(Some)?;
        self.quota_taken(now);
        if probe && let Circuit::HalfOpen { cooldown, .. } = self.circuit {
            self.circuit = Circuit::HalfOpen {
                cooldown,
                probe_started: true,
            };
        }
        self.in_flight += 1;
        Ok(at)
    }

    /// Whether an HTTP request of a running plugin attempt may go out at `now`.
    /// Like [`Gate::try_start`] it waits for a pause, an open circuit, a
    /// throttle and the bucket; `extra_slot` asks for a concurrency slot of its
    /// own (the attempt's slot already covers one request at a time). `Ok` takes
    /// the token (and the slot). A half-open circuit lets requests through: they
    /// belong to attempts already admitted, the probe among them.
    pub fn try_request(
        &mut self,
        now: Timestamp,
        extra_slot: bool,
    ) -> Result<Timestamp, Option<Timestamp>> {
        if self.paused {
            return Err(None);
        }
        if let Circuit::Open { until, .. } = self.circuit
            && now < until
        {
            return Err(Some(until));
        }
        if let Some(until) = self.throttled_until
            && now < until
        {
            return Err(Some(until));
        }
        if extra_slot && self.in_flight >= self.concurrency() {
            return Err(None);
        }
        self.quota_allows(now).map_err(Some)?;
        let rate = self.effective_rate(now);
        let at = self
            .limiter
            .admit(now, rate, self.limits.burst, self.lookahead_ms)
            .map_err(Some)?;
        self.quota_taken(now);
        if extra_slot {
            self.in_flight += 1;
        }
        Ok(at)
    }

    /// A request admitted by [`Gate::try_request`] has ended. `extra_slot`
    /// gives back the slot it took. What the endpoint answered bears on the
    /// gate as a webhook's answer does (a 429 or 503 throttles, failures
    /// count towards the circuit): for a plugin's attempt, its requests
    /// speak for the endpoint, its own outcome does not.
    pub fn request_ended(&mut self, now: Timestamp, extra_slot: bool, signal: Signal) {
        if extra_slot {
            self.release_slot();
        }
        self.heard(now, signal);
    }

    /// The endpoint answered an attempt (or a plugin's request) after
    /// `latency`: a sample for the adaptive search. Comes before the
    /// attempt's end, while it is still counted in flight.
    pub fn answered(&mut self, now: Timestamp, latency: Duration) {
        let in_flight = self.in_flight;
        if let Some(adaptive) = &mut self.adaptive {
            adaptive.answered(now, latency, in_flight);
        }
    }

    /// A response stated the endpoint's quota: from now on the gate spends
    /// what remains of it evenly until the reset (see [`QuotaPace`]). The
    /// attempts in flight besides the one that answered are charged to it.
    pub fn quota_seen(&mut self, now: Timestamp, quota: Quota) {
        if !self.limits.quota_headers {
            return;
        }
        let others = u64::from(self.in_flight.saturating_sub(1));
        self.quota = Some(QuotaPace::seen(self.quota, now, quota, others));
    }

    /// The quota as last stated, less what the gate spent since.
    pub fn quota(&self, now: Timestamp) -> Option<QuotaView> {
        self.quota.and_then(|q| q.at(now)).map(|q| q.view())
    }

    fn quota_allows(&mut self, now: Timestamp) -> Result<(), Timestamp> {
        self.quota = self.quota.and_then(|q| q.at(now));
        self.quota.as_ref().map_or(Ok(()), |q| q.check(now))
    }

    fn quota_taken(&mut self, now: Timestamp) {
        if let Some(quota) = &mut self.quota {
            quota.take(now);
        }
    }

    /// Gives back a start that [`Gate::try_start`] has just admitted but
    /// that never began: its slot, and the probe's turn if it was the probe
    /// (in a half-open circuit nothing else is admitted; called any later,
    /// it could free the turn of a probe in flight). Its token stays spent,
    /// so the bound never loosens.
    pub fn unstart(&mut self) {
        self.release_slot();
        self.free_probe();
    }

    /// Lets the next probe of a half-open circuit go.
    fn free_probe(&mut self) {
        if let Circuit::HalfOpen {
            cooldown,
            probe_started: true,
        } = self.circuit
        {
            self.circuit = Circuit::HalfOpen {
                cooldown,
                probe_started: false,
            };
        }
    }

    /// Gives back a slot taken for a request, when its attempt ended first.
    pub fn release_slot(&mut self) {
        assert!(
            self.in_flight > 0,
            "slot released on a gate with none taken"
        );
        self.in_flight -= 1;
    }

    fn throttle(&mut self, now: Timestamp, retry_after: Option<std::time::Duration>) {
        if let Some(after) = retry_after {
            let until = now.plus(after.min(RETRY_AFTER_MAX));
            self.throttled_until = Some(self.throttled_until.map_or(until, |t| t.max(until)));
        }
        let recent = self
            .cut
            .is_some_and(|(_, at)| now.since(at).as_millis() < u128::from(THROTTLE_CUT_EVERY_MS));
        if !recent {
            let factor = (self.throttle_factor(now) * 0.5).max(THROTTLE_FLOOR);
            self.cut = Some((factor, now));
        }
    }

    /// Takes a concurrency slot without the limiter: for a leased attempt that was
    /// already admitted before a restart.
    pub fn hold(&mut self) {
        self.in_flight += 1;
    }

    /// An attempt that `try_start` admitted has ended. `release` gives its slot
    /// back; without it the slot stays taken (by a request of the attempt that
    /// is still in flight) until [`Gate::request_ended`] frees it.
    pub fn attempt_ended(&mut self, now: Timestamp, signal: Signal, release: bool) {
        assert!(
            self.in_flight > 0,
            "attempt ended on a gate with none in flight"
        );
        if release {
            self.in_flight -= 1;
        }
        self.heard(now, signal);
    }

    /// What an attempt or a request said of the endpoint. When the probe
    /// and all else in flight have ended saying nothing (`Neutral`: refused
    /// by our own policy, interrupted, a plugin that sent no request), the
    /// next probe may go: otherwise the circuit would wait for a verdict
    /// that never comes. Not before: the gate does not know which of those
    /// in flight is the probe, and there is only ever one.
    fn heard(&mut self, now: Timestamp, signal: Signal) {
        if let Signal::Throttled { retry_after } = signal {
            self.throttle(now, retry_after);
        }
        if matches!(signal, Signal::Failed | Signal::Throttled { .. })
            && let Some(adaptive) = &mut self.adaptive
        {
            adaptive.failed(now);
        }
        let Some(policy) = self.limits.circuit else {
            return;
        };
        let failed = match signal {
            Signal::Healthy => false,
            Signal::Failed => true,
            // A 503 means the endpoint is down as much as it means "slow down".
            Signal::Throttled { .. } => true,
            Signal::Neutral => {
                if self.in_flight == 0 {
                    self.free_probe();
                }
                return;
            }
        };
        self.circuit = match (self.circuit, failed) {
            (Circuit::Closed { .. }, false) => Circuit::Closed {
                consecutive_failures: 0,
            },
            (
                Circuit::Closed {
                    consecutive_failures,
                },
                true,
            ) => {
                let n = consecutive_failures + 1;
                if n >= policy.failures {
                    Circuit::Open {
                        until: now.plus(policy.cooldown),
                        cooldown: policy.cooldown,
                    }
                } else {
                    Circuit::Closed {
                        consecutive_failures: n,
                    }
                }
            }
            // Attempts that were already in flight when the circuit tripped say
            // nothing new; only the probe decides.
            (open @ Circuit::Open { .. }, _) => open,
            (
                Circuit::HalfOpen {
                    probe_started: false,
                    cooldown,
                },
                _,
            ) => Circuit::HalfOpen {
                cooldown,
                probe_started: false,
            },
            (
                Circuit::HalfOpen {
                    probe_started: true,
                    ..
                },
                false,
            ) => {
                self.start_ramp(now);
                Circuit::Closed {
                    consecutive_failures: 0,
                }
            }
            (
                Circuit::HalfOpen {
                    probe_started: true,
                    cooldown,
                },
                true,
            ) => {
                let next = (cooldown * 2).min(policy.max_cooldown.max(policy.cooldown));
                Circuit::Open {
                    until: now.plus(next),
                    cooldown: next,
                }
            }
        };
    }

    /// When the gate will be as good as a new one: nothing in flight, the
    /// circuit closed and clear, no throttle, ramp or pause in force, and the
    /// bucket full. `None` while that is not in sight.
    pub fn rested_at(&self, now: Timestamp) -> Option<Timestamp> {
        let clear = self.in_flight == 0
            && !self.paused
            && self.circuit
                == Circuit::Closed {
                    consecutive_failures: 0,
                }
            && self.throttled_until.is_none_or(|t| t <= now)
            && self.ramp_factor(now) >= 1.0
            && self.throttle_factor(now) >= 1.0
            && self.quota(now).is_none();
        if !clear {
            return None;
        }
        let mut limiter = self.limiter;
        let rate = self.effective_rate(now);
        limiter.refill(now, rate, self.limits.burst);
        let missing = (i64::from(self.limits.burst.max(1)) * TOKEN - limiter.tokens_nano).max(0);
        let wait_ms = (missing as f64 / (rate * 1e6)).ceil().min(86_400_000.0) as u64;
        // A key's limiter is charged at release instants, which may be ahead.
        Some(Timestamp(now.max(limiter.updated).as_ms() + wait_ms))
    }

    /// When the circuit next lets a probe out, if it is open.
    pub fn circuit_open_until(&self) -> Option<Timestamp> {
        match self.circuit {
            Circuit::Open { until, .. } => Some(until),
            _ => None,
        }
    }

    pub fn throttled_until(&self) -> Option<Timestamp> {
        self.throttled_until
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(rate: &str, burst: u32, concurrency: u32) -> GateLimits {
        GateLimits {
            rate: Rate::parse(rate).unwrap(),
            burst,
            concurrency,
            recovery: Recovery {
                start: 1.0,
                over: Duration::ZERO,
            },
            circuit: Some(CircuitPolicy {
                failures: 3,
                cooldown: Duration::from_secs(10),
                max_cooldown: Duration::from_secs(30),
            }),
            quota_headers: true,
            priority_aging: Duration::from_secs(60),
            adaptive: None,
        }
    }

    /// Slots promised ahead at one rate keep their instants when the rate
    /// rises (a ramp, a throttle lifted): the next comes one new interval
    /// after the last of them.
    #[test]
    fn a_rising_rate_keeps_the_slots_promised_ahead() {
        let t0 = Timestamp(1_000_000);
        let mut limiter = Limiter::full(t0, 1, 10.0);
        let slots: Vec<u64> = (0..3)
            .map(|_| {
                limiter
                    .admit(t0, 10.0, 1, 1_000)
                    .map(|t| t.as_ms() - t0.as_ms())
            })
            .collect::<Result<_, _>>()
            .expect("within the lookahead");
        assert_eq!(slots, [0, 100, 200]);
        let next = limiter
            .admit(t0, 20.0, 1, 1_000)
            .map(|t| t.as_ms() - t0.as_ms());
        assert_eq!(next, Ok(250), "not among the promised slots");
    }

    /// A slot handed out from a later instant (a start ahead of its due
    /// time) counts for a start asked for earlier: it comes after it.
    #[test]
    fn a_slot_handed_out_from_a_later_instant_comes_first() {
        let t0 = Timestamp(1_000_000);
        let mut limiter = Limiter::full(t0, 1, 10.0);
        assert_eq!(
            limiter.admit(t0.plus(Duration::from_millis(50)), 10.0, 1, 0),
            Ok(t0.plus(Duration::from_millis(50)))
        );
        assert_eq!(
            limiter.admit(t0, 10.0, 1, 1_000),
            Ok(t0.plus(Duration::from_millis(150)))
        );
        assert_eq!(
            limiter.admit(t0, 10.0, 1, 100),
            Err(t0.plus(Duration::from_millis(150))),
            "beyond the lookahead from t0: ask again when it is within it"
        );
    }

    #[test]
    fn smooth_gate_spaces_attempts() {
        let mut gate = Gate::new(Timestamp(1_000_000), limits("10/s", 1, 100));
        let t0 = Timestamp(1_000_000);
        assert_eq!(gate.try_start(t0), Ok(t0));
        assert_eq!(gate.try_start(t0), Err(Some(Timestamp(1_000_100))));
        let t1 = Timestamp(1_000_100);
        assert_eq!(gate.try_start(t1), Ok(t1));
    }

    /// Ahead of its token a start gets the instant the token arrives: the slot
    /// times of a smooth gate, as many as fit in the lookahead.
    #[test]
    fn lookahead_hands_out_slot_times() {
        let t0 = Timestamp(1_000_000);
        let mut gate =
            Gate::new(t0, limits("200/s", 1, 100)).with_lookahead(Duration::from_millis(20));
        let slots: Vec<Timestamp> = (0..5).map(|_| gate.try_start(t0).unwrap()).collect();
        let expected: Vec<Timestamp> = (0..5).map(|i| Timestamp(t0.as_ms() + 5 * i)).collect();
        assert_eq!(slots, expected);
        assert_eq!(gate.try_start(t0), Err(Some(Timestamp(t0.as_ms() + 5))));
    }

    /// Starts admitted ahead take at most half the slots: at 200/s and
    /// concurrency 8, four tokens' worth (20 ms) of a 250 ms lookahead;
    /// and no task starts ahead of its due time while half the slots are
    /// taken. So a takeover that holds every start on record still finds
    /// half the gate free.
    #[test]
    fn the_lookahead_takes_at_most_half_the_slots() {
        let t0 = Timestamp(1_000_000);
        let mut gate =
            Gate::new(t0, limits("200/s", 1, 8)).with_lookahead(Duration::from_millis(250));
        let slots: Vec<Timestamp> = (0..5).map(|_| gate.try_start(t0).unwrap()).collect();
        let expected: Vec<Timestamp> = (0..5).map(|i| Timestamp(t0.as_ms() + 5 * i)).collect();
        assert_eq!(slots, expected, "one at once, four ahead");
        assert_eq!(
            gate.try_start(t0),
            Err(Some(Timestamp(t0.as_ms() + 5))),
            "a fifth ahead would take more than half the slots"
        );
        assert_eq!(gate.due_ahead(t0), Duration::ZERO, "five of eight taken");
        let t1 = Timestamp(t0.as_ms() + 5);
        assert_eq!(gate.try_start(t1), Ok(Timestamp(t0.as_ms() + 25)));
        for _ in 0..3 {
            gate.attempt_ended(t1, Signal::Healthy, true);
        }
        assert_eq!(gate.due_ahead(t1), Duration::from_millis(250));
    }

    /// A rate raised while slots are promised ahead keeps those slots: the
    /// next slot comes after the last promised one at the new spacing, never
    /// before it (found by the simulation: a slot handed out before one
    /// already promised put two starts in one slot's window).
    #[test]
    fn a_raised_rate_keeps_the_slots_promised() {
        let t0 = Timestamp(1_000_000);
        let mut gate =
            Gate::new(t0, limits("50/s", 1, 100)).with_lookahead(Duration::from_millis(30));
        assert_eq!(gate.try_start(t0), Ok(t0));
        let promised = gate.try_start(t0).unwrap();
        assert_eq!(promised, Timestamp(t0.as_ms() + 20));
        let t1 = Timestamp(t0.as_ms() + 8);
        gate.set_limits(t1, limits("200/s", 1, 100));
        let next = gate.try_start(t1).unwrap();
        assert_eq!(next, Timestamp(promised.as_ms() + 5), "after the promise");
    }

    /// After a failure nothing more is admitted ahead of its token: the next
    /// start waits for its token, and for how the ones before it went.
    #[test]
    fn no_lookahead_after_a_failure() {
        let t0 = Timestamp(1_000_000);
        let mut gate =
            Gate::new(t0, limits("200/s", 1, 100)).with_lookahead(Duration::from_millis(20));
        assert_eq!(gate.try_start(t0), Ok(t0));
        gate.attempt_ended(t0, Signal::Failed, true);
        assert_eq!(gate.try_start(t0), Err(Some(Timestamp(t0.as_ms() + 5))));
        let t1 = Timestamp(t0.as_ms() + 5);
        assert_eq!(gate.try_start(t1), Ok(t1));
        gate.attempt_ended(t1, Signal::Healthy, true);
        assert_eq!(
            gate.try_start(t1),
            Ok(Timestamp(t1.as_ms() + 5)),
            "healthy again"
        );
    }

    /// Decisions made at uneven, late instants still fill every slot: a second
    /// of a 200/s smooth gate holds 200 starts, exactly 5 ms apart, whether
    /// the turns come every 3 ms or every 7.
    #[test]
    fn late_turns_lose_no_tokens() {
        for every in [1, 3, 7, 13] {
            let t0 = Timestamp(1_000_000);
            let mut gate =
                Gate::new(t0, limits("200/s", 1, 1_000)).with_lookahead(Duration::from_millis(15));
            let mut slots = Vec::new();
            let mut now = t0;
            while now.as_ms() < t0.as_ms() + 1_000 {
                while let Ok(at) = gate.try_start(now) {
                    slots.push(at);
                }
                now = Timestamp(now.as_ms() + every);
            }
            let in_second = slots
                .iter()
                .filter(|t| t.as_ms() < t0.as_ms() + 1_000)
                .count();
            assert_eq!(in_second, 200, "turns every {every} ms");
            assert!(
                slots.windows(2).all(|w| w[1].as_ms() - w[0].as_ms() == 5),
                "turns every {every} ms: {slots:?}"
            );
        }
    }

    #[test]
    fn burst_then_rate() {
        let mut gate = Gate::new(Timestamp(1_000_000), limits("10/s", 5, 100));
        let t0 = Timestamp(1_000_000);
        for _ in 0..5 {
            assert_eq!(gate.try_start(t0), Ok(t0));
        }
        assert!(gate.try_start(t0).is_err());
    }

    #[test]
    fn concurrency_caps_in_flight() {
        let mut gate = Gate::new(Timestamp(1_000_000), limits("1000/s", 100, 2));
        let t0 = Timestamp(1_000_000);
        assert!(gate.try_start(t0).is_ok());
        assert!(gate.try_start(t0).is_ok());
        assert_eq!(gate.try_start(t0), Err(None));
        gate.attempt_ended(t0, Signal::Healthy, true);
        assert!(gate.try_start(t0).is_ok());
    }

    /// Three failures trip the circuit; after the cooldown exactly one probe goes
    /// out; a failed probe doubles the cooldown; a good one closes and ramps.
    #[test]
    fn circuit_trips_probes_and_closes() {
        let mut l = limits("1000/s", 100, 10);
        l.recovery = Recovery {
            start: 0.1,
            over: Duration::from_secs(10),
        };
        let mut gate = Gate::new(Timestamp(0), l);
        let mut now = Timestamp(1_000_000);
        trip(&mut gate, now);
        assert_eq!(gate.state(now), GateState::Tripped);
        assert_eq!(
            gate.try_start(now),
            Err(Some(now.plus(Duration::from_secs(10))))
        );
        now = now.plus(Duration::from_secs(10));
        assert_eq!(gate.try_start(now), Ok(now), "the probe");
        assert_eq!(gate.try_start(now), Err(None), "only one probe");
        gate.attempt_ended(now, Signal::Failed, true);
        assert_eq!(
            gate.circuit_open_until(),
            Some(now.plus(Duration::from_secs(20)))
        );
        now = now.plus(Duration::from_secs(20));
        gate.try_start(now).unwrap();
        gate.attempt_ended(now, Signal::Failed, true);
        assert_eq!(
            gate.circuit_open_until(),
            Some(now.plus(Duration::from_secs(30))),
            "capped at max_cooldown"
        );
        now = now.plus(Duration::from_secs(30));
        gate.try_start(now).unwrap();
        gate.attempt_ended(now, Signal::Healthy, true);
        assert_eq!(gate.state(now), GateState::Recovering);
        assert!((gate.effective_rate(now) - 100.0).abs() < 1e-6);
        now = now.plus(Duration::from_secs(5));
        assert!((gate.effective_rate(now) - 550.0).abs() < 1e-6);
        now = now.plus(Duration::from_secs(5));
        assert_eq!(gate.effective_rate(now), 1000.0);
    }

    /// Three failed attempts in a row: the circuit of `limits` trips.
    fn trip(gate: &mut Gate, now: Timestamp) {
        for _ in 0..3 {
            gate.try_start(now).unwrap();
            gate.attempt_ended(now, Signal::Failed, true);
        }
    }

    /// A probe that says nothing of the endpoint (refused by our own policy,
    /// interrupted, a plugin that sent no request) lets the next one go: the
    /// gate never waits for a verdict that cannot come.
    #[test]
    fn a_probe_without_a_verdict_lets_another_go() {
        let mut gate = Gate::new(Timestamp(0), limits("1000/s", 100, 10));
        let mut now = Timestamp(1_000_000);
        trip(&mut gate, now);
        now = now.plus(Duration::from_secs(10));
        assert_eq!(gate.try_start(now), Ok(now), "the probe");
        gate.attempt_ended(now, Signal::Neutral, true);
        assert_eq!(gate.state(now), GateState::Probing);
        now = now.plus(Duration::from_millis(1));
        assert_eq!(gate.try_start(now), Ok(now), "another probe");
        assert_eq!(gate.try_start(now), Err(None), "one at a time");
        gate.attempt_ended(now, Signal::Healthy, true);
        assert_eq!(gate.state(now), GateState::Open, "closed");
    }

    /// A probe admitted and given back before it began (its key refused it)
    /// leaves the next probe free to go: the circuit never waits for it.
    #[test]
    fn a_probe_given_back_lets_the_next_go() {
        let mut gate = Gate::new(Timestamp(0), limits("1000/s", 100, 10));
        let mut now = Timestamp(1_000_000);
        trip(&mut gate, now);
        now = now.plus(Duration::from_secs(10));
        assert_eq!(gate.try_start(now), Ok(now), "the probe");
        gate.unstart();
        now = now.plus(Duration::from_millis(1));
        assert_eq!(gate.try_start(now), Ok(now), "the next probe");
        assert_eq!(gate.try_start(now), Err(None), "one at a time");
        gate.attempt_ended(now, Signal::Healthy, true);
        assert_eq!(gate.state(now), GateState::Open, "closed");
    }

    /// While anything else is in flight (an attempt from before the trip, a
    /// request of the probe that outlived it), a neutral end lets no second
    /// probe go: the gate cannot tell the probe from the rest.
    #[test]
    fn one_probe_at_a_time_whatever_ends_neutral() {
        let mut gate = Gate::new(Timestamp(0), limits("1000/s", 100, 10));
        let mut now = Timestamp(1_000_000);
        gate.try_start(now).unwrap(); // slow, from before the trip
        trip(&mut gate, now);
        now = now.plus(Duration::from_secs(10));
        assert_eq!(gate.try_start(now), Ok(now), "the probe");
        gate.attempt_ended(now, Signal::Neutral, true);
        assert_eq!(gate.try_start(now), Err(None), "the slow one is still out");
        gate.attempt_ended(now, Signal::Neutral, true);
        assert_eq!(gate.try_start(now), Ok(now), "the next probe");
        // A probe whose request outlives it (a plugin's): its slot is the
        // request's until the request ends.
        gate.try_request(now, false).unwrap();
        gate.attempt_ended(now, Signal::Neutral, false);
        assert_eq!(gate.try_start(now), Err(None), "its request is still out");
        gate.request_ended(now, true, Signal::Neutral);
        assert_eq!(gate.try_start(now), Ok(now), "the next probe");
    }

    /// A plugin's requests speak for the endpoint: their failures trip the
    /// circuit and a good answer closes it, as webhooks' answers do, while
    /// the request's own slot is given back either way.
    #[test]
    fn requests_count_towards_the_circuit() {
        let mut gate = Gate::new(Timestamp(0), limits("1000/s", 100, 10));
        let mut now = Timestamp(1_000_000);
        gate.try_start(now).unwrap();
        for _ in 0..3 {
            gate.try_request(now, true).unwrap();
            gate.request_ended(now, true, Signal::Failed);
        }
        assert_eq!(gate.state(now), GateState::Tripped);
        // The attempt's own end (a plugin's outcome) says nothing.
        gate.attempt_ended(now, Signal::Neutral, true);
        assert_eq!(gate.state(now), GateState::Tripped);
        now = now.plus(Duration::from_secs(10));
        assert_eq!(gate.try_start(now), Ok(now), "the probe: a plugin attempt");
        gate.try_request(now, false).unwrap();
        gate.request_ended(now, false, Signal::Healthy);
        assert_eq!(gate.state(now), GateState::Open, "closed");
        gate.attempt_ended(now, Signal::Neutral, true);
        assert_eq!(gate.state(now), GateState::Open);
    }

    #[test]
    fn retry_after_throttles_and_cuts_rate() {
        let mut gate = Gate::new(Timestamp(1_000_000), limits("100/s", 1, 10));
        let now = Timestamp(1_000_000);
        gate.try_start(now).unwrap();
        gate.attempt_ended(
            now,
            Signal::Throttled {
                retry_after: Some(Duration::from_secs(3)),
            },
            true,
        );
        assert_eq!(gate.state(now), GateState::Throttled);
        assert_eq!(gate.try_start(now), Err(Some(Timestamp(1_003_000))));
        assert!((gate.effective_rate(now) - 50.0).abs() < 1e-9);
        let later = Timestamp(1_003_000);
        assert!(gate.try_start(later).is_ok());
        assert_eq!(gate.state(later), GateState::Recovering);
        assert!(gate.effective_rate(Timestamp(1_020_000)) >= 100.0 - 1e-9);
    }

    #[test]
    fn paused_gate_starts_nothing_and_ramps_on_resume() {
        let mut l = limits("100/s", 1, 10);
        l.recovery = Recovery::default();
        let mut gate = Gate::new(Timestamp(0), l);
        let now = Timestamp(5_000);
        gate.pause();
        assert_eq!(gate.try_start(now), Err(None));
        gate.resume(now);
        assert!((gate.effective_rate(now) - 10.0).abs() < 1e-9);
        assert!(gate.try_start(now).is_ok());
    }
}
