//! The scheduler: which task starts when, and what happens to it after an attempt.
//!
//! Pure: time comes in as an argument, work goes out as [`Effect`]s that the shell
//! executes in order. It keeps only a window of each gate's pending tasks in memory
//! (those due soonest); the rest stay on disk and come in through [`Effect::Load`].
//!
//! The window invariant, per gate: every pending task whose key `(due, id)` is below
//! `disk_next` is in memory, and none at or above it is. `disk_next` is a lower bound
//! of what may still be on disk; `None` means nothing is.
//!
//! Longer than most files, on purpose: the windows, the running set, the asks
//! and the orphan requests change together on every input, and the invariants
//! above are read off one `handle_input`. Split, each would be half a proof.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use super::gate::{Gate, GateLimits, GateState, RETRY_AFTER_MAX, Signal};
use super::ids::{GateId, TaskId};
use super::quota::{Quota, QuotaView};
use super::retry::RetryPolicy;
use super::rng::Rng;
use super::time::Timestamp;

/// A pending task's place in its gate's order.
pub type Key = (Timestamp, TaskId);

/// What the core keeps of a task: enough to order it and decide its retries.
#[derive(Clone, Debug, PartialEq)]
pub struct QueuedTask {
    pub id: TaskId,
    pub gate: GateId,
    pub due: Timestamp,
    /// Attempts already made.
    pub attempts: u32,
    pub first_attempt_at: Option<Timestamp>,
    /// If the task has not started by then, it ends as expired.
    pub expires_at: Option<Timestamp>,
    pub policy: RetryPolicy,
}

impl QueuedTask {
    pub fn key(&self) -> Key {
        (self.due, self.id)
    }
}

/// How an attempt ended, as far as the core cares.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Outcome {
    /// 2xx.
    Succeeded,
    /// A 4xx that blames the request: failed at once.
    Rejected,
    /// Refused by our own policy before it left (host not allowed): failed at once.
    Denied,
    /// 408, 5xx, timeout, connection error: retried with backoff.
    Failed { retry_after: Option<Duration> },
    /// 429 or 503: retried, and the whole gate slows down.
    Throttled { retry_after: Option<Duration> },
    /// The server stopped while the attempt was in flight: retried; the attempt counts.
    Interrupted,
}

impl Outcome {
    fn signal(self) -> Signal {
        match self {
            Outcome::Succeeded | Outcome::Rejected => Signal::Healthy,
            Outcome::Denied | Outcome::Interrupted => Signal::Neutral,
            Outcome::Failed { .. } => Signal::Failed,
            Outcome::Throttled { retry_after } => Signal::Throttled { retry_after },
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailReason {
    /// The endpoint rejected the request (a 4xx other than 408 and 429).
    Rejected,
    /// Our own policy refused the request.
    Denied,
    AttemptsExhausted,
    /// The next retry would fall after `max_retry_duration`.
    RetryWindowExceeded,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    Succeeded,
    Failed(FailReason),
    Expired,
    /// Its gate was deleted under it.
    Cancelled,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    /// Creates or reconfigures a gate. `ramp` starts the recovery ramp with an
    /// empty bucket (the shell sets it for every gate at startup).
    UpsertGate {
        gate: GateId,
        limits: GateLimits,
        paused: bool,
        ramp: bool,
    },
    RemoveGate(GateId),
    Pause(GateId),
    Resume(GateId),
    /// A task became pending (created, or re-run by an operator). The shell has put
    /// it in the store's pending index.
    Enqueue(QueuedTask),
    /// A pending task was taken out (cancelled). The shell removed it from the store.
    Dequeue {
        gate: GateId,
        key: Key,
    },
    /// The answer to [`Effect::Load`]: pending tasks with keys in `[from, next)`.
    Loaded {
        gate: GateId,
        tasks: Vec<QueuedTask>,
        next: Option<Key>,
    },
    AttemptEnded {
        task: TaskId,
        outcome: Outcome,
    },
    /// At startup: a task whose attempt number `task.attempts` was in flight when the
    /// server stopped.
    Interrupted(QueuedTask),
    /// The endpoint accepted the attempt as long-running work: it stays in flight,
    /// holding its concurrency slot, until a report or until the lease runs out.
    Leased {
        task: TaskId,
        until: Timestamp,
    },
    /// A heartbeat moved the lease.
    Heartbeat {
        task: TaskId,
        until: Timestamp,
    },
    /// At startup: a task whose attempt holds a lease; it keeps its slot.
    RestoreLease {
        task: QueuedTask,
        until: Timestamp,
    },
    /// At a takeover: an attempt another node sent, which may still be at
    /// its endpoint. It keeps its slot until `until` (its start plus its
    /// timeout), then ends as interrupted: neither a failure for the
    /// circuit nor one of the task's attempts lost to the endpoint.
    HoldInterrupted {
        task: QueuedTask,
        until: Timestamp,
    },
    /// The plugin running attempt `attempt` of `task` wants to send an HTTP
    /// request. Answered by a permit (see [`Scheduler::poll_permit`]) when the
    /// gate allows it; dropped if the attempt ends first.
    Ask {
        task: TaskId,
        attempt: u32,
        ask: u64,
    },
    /// The endpoint answered attempt `attempt` of `task` (or one of its
    /// plugin's requests) after `latency`, stating `quota` if it did. Comes
    /// before the attempt's (or request's) end, while it is still counted
    /// in flight.
    Answered {
        task: TaskId,
        attempt: u32,
        latency: Duration,
        quota: Option<Quota>,
    },
    /// A request that had its permit is done; `signal` says whether the endpoint
    /// asked the gate to slow down (only `Throttled` changes the gate).
    RequestEnded {
        task: TaskId,
        attempt: u32,
        signal: Signal,
    },
}

/// A plugin request the gate allowed out, at its slot time `at`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Permit {
    pub task: TaskId,
    pub attempt: u32,
    pub ask: u64,
    pub gate: GateId,
    pub at: Timestamp,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// Read the gate's pending tasks from `from` on, in key order: at most `limit`,
    /// none due after `until`. Answer with [`Input::Loaded`] before anything else.
    Load {
        gate: GateId,
        from: Key,
        until: Timestamp,
        limit: usize,
    },
    /// Persist that attempt `attempt` of the task is running, then dispatch it
    /// at `at` (its slot time: the turn's `now` or a little after). Releases of
    /// one gate must keep at least the spacing of their `at`s.
    Start {
        task: TaskId,
        gate: GateId,
        attempt: u32,
        at: Timestamp,
    },
    /// The task goes back to pending, due at `due`.
    Requeue {
        task: TaskId,
        gate: GateId,
        due: Timestamp,
    },
    /// A task that was running (or interrupted) is done.
    Finish {
        task: TaskId,
        gate: GateId,
        end: End,
    },
    /// A pending task could not start in time. The shell removes it from the index.
    Expire {
        task: TaskId,
        gate: GateId,
        due: Timestamp,
    },
    /// A lease ran out: the attempt counts as timed out. A `Requeue` or `Finish`
    /// of the task follows.
    LeaseExpired {
        task: TaskId,
        gate: GateId,
        attempt: u32,
    },
}

impl Effect {
    /// The task it acts on; `None` for a load.
    pub fn task(&self) -> Option<TaskId> {
        match self {
            Effect::Load { .. } => None,
            Effect::Start { task, .. }
            | Effect::Requeue { task, .. }
            | Effect::Finish { task, .. }
            | Effect::Expire { task, .. }
            | Effect::LeaseExpired { task, .. } => Some(*task),
        }
    }
}

/// Memory bounds. Tests shrink them to exercise loading.
#[derive(Clone, Copy, Debug)]
pub struct Tuning {
    /// Most pending tasks held in memory per gate.
    pub window: usize,
    /// Tasks due further out than this stay on disk.
    pub horizon: Duration,
    /// How far ahead of their tokens starts and requests are admitted, with
    /// their slot times: longer than a commit, so the gate's pace does not
    /// depend on the disk's.
    pub lookahead: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            window: 2_048,
            horizon: Duration::from_secs(30),
            lookahead: Duration::from_millis(20),
        }
    }
}

/// Live figures of one gate, cheap to read.
#[derive(Clone, Debug, PartialEq)]
pub struct GateStatus {
    pub state: GateState,
    pub effective_rate: f64,
    pub in_flight: u32,
    /// Pending tasks in memory that are due now; exact when `due_exact`.
    pub due_in_memory: u64,
    /// True when no due task can be on disk only.
    pub due_exact: bool,
    pub circuit_open_until: Option<Timestamp>,
    pub throttled_until: Option<Timestamp>,
    pub quota: Option<QuotaView>,
    /// Attempts allowed in flight now (the adaptive search's limit, when
    /// it runs).
    pub concurrency: u32,
    /// The adaptive search's baseline and recent latency (ms), if it runs.
    pub latencies: Option<(Option<f64>, Option<f64>)>,
}

#[derive(Debug)]
struct Lane {
    gate: Gate,
    /// Plugin requests waiting for the gate, first come first served, ahead of
    /// tasks waiting to start: (task, attempt, ask).
    asks: VecDeque<(TaskId, u32, u64)>,
    queue: BTreeMap<Key, QueuedTask>,
    disk_next: Option<Key>,
    loading: bool,
    wake: Option<Timestamp>,
}

#[derive(Debug)]
struct Running {
    task: QueuedTask,
    lease: Option<Timestamp>,
    /// Plugin requests in flight. The first rides the attempt's own concurrency
    /// slot; each one beyond it holds a slot of its own.
    requests: u32,
    /// Held for another node's attempt (`Input::HoldInterrupted`): its
    /// lease running out is an interruption, not a failure.
    interrupted: bool,
}

impl Running {
    fn new(task: QueuedTask, lease: Option<Timestamp>) -> Running {
        Running {
            task,
            lease,
            requests: 0,
            interrupted: false,
        }
    }
}

pub struct Scheduler {
    tuning: Tuning,
    lanes: BTreeMap<GateId, Lane>,
    /// Each lane's `wake`, ordered, so `poll_timeout` is a lookup.
    timers: BTreeSet<(Timestamp, GateId)>,
    running: BTreeMap<TaskId, Running>,
    /// Leased attempts by deadline.
    leases: BTreeSet<(Timestamp, TaskId)>,
    /// Plugin requests still in flight after their attempt ended, by
    /// (task, attempt): (gate, count). Each holds a concurrency slot until it
    /// ends, since the endpoint is still working on it.
    orphans: BTreeMap<(TaskId, u32), (GateId, u32)>,
    effects: VecDeque<Effect>,
    /// Plugin requests allowed out: (task, ask).
    permits: VecDeque<Permit>,
    rng: Rng,
}

impl Scheduler {
    pub fn new(seed: u64, tuning: Tuning) -> Scheduler {
        assert!(tuning.window >= 2, "window too small");
        Scheduler {
            tuning,
            lanes: BTreeMap::new(),
            timers: BTreeSet::new(),
            running: BTreeMap::new(),
            leases: BTreeSet::new(),
            orphans: BTreeMap::new(),
            effects: VecDeque::new(),
            permits: VecDeque::new(),
            rng: Rng::new(seed),
        }
    }

    /// Takes in an attempt already in flight (a restored lease, or another
    /// node's attempt) with its slot, until `until`.
    fn hold(&mut self, task: QueuedTask, until: Timestamp, interrupted: bool) {
        let id = task.id;
        if let Some(lane) = self.lanes.get_mut(&task.gate) {
            lane.gate.hold();
        }
        self.leases.insert((until, id));
        let mut running = Running::new(task, Some(until));
        running.interrupted = interrupted;
        let previous = self.running.insert(id, running);
        assert!(previous.is_none(), "lease restored twice");
    }

    pub fn handle_input(&mut self, now: Timestamp, input: Input) {
        match input {
            Input::UpsertGate {
                gate,
                limits,
                paused,
                ramp,
            } => {
                let lane = self.lanes.entry(gate).or_insert_with(|| Lane {
                    gate: Gate::new(now, limits).with_lookahead(self.tuning.lookahead),
                    asks: VecDeque::new(),
                    queue: BTreeMap::new(),
                    // Unknown until loaded: anything may be on disk.
                    disk_next: Some((Timestamp::ZERO, TaskId(0))),
                    loading: false,
                    wake: None,
                });
                lane.gate.set_limits(now, limits);
                if paused {
                    lane.gate.pause();
                } else {
                    lane.gate.resume(now);
                }
                if ramp {
                    lane.gate.start_ramp(now);
                    lane.gate.start_empty(now);
                }
                self.poke(gate);
            }
            Input::RemoveGate(gate) => {
                if let Some(lane) = self.lanes.remove(&gate)
                    && let Some(w) = lane.wake
                {
                    self.timers.remove(&(w, gate));
                }
            }
            Input::Pause(gate) => {
                if let Some(lane) = self.lanes.get_mut(&gate) {
                    lane.gate.pause();
                }
            }
            Input::Resume(gate) => {
                if let Some(lane) = self.lanes.get_mut(&gate) {
                    lane.gate.resume(now);
                }
                self.poke(gate);
            }
            Input::Enqueue(task) => {
                let gate = task.gate;
                self.enqueue(now, task);
                self.poke(gate);
            }
            Input::Dequeue { gate, key } => {
                if let Some(lane) = self.lanes.get_mut(&gate) {
                    lane.queue.remove(&key);
                }
                self.poke(gate);
            }
            Input::Loaded { gate, tasks, next } => {
                let Some(lane) = self.lanes.get_mut(&gate) else {
                    return;
                };
                assert!(lane.loading, "loaded without a load");
                lane.loading = false;
                for task in tasks {
                    let key = task.key();
                    assert!(
                        lane.disk_next.is_some_and(|d| key >= d),
                        "loaded a task already in memory"
                    );
                    assert!(next.is_none_or(|n| key < n), "loaded past next");
                    lane.queue.insert(key, task);
                }
                lane.disk_next = next;
                self.trim(gate);
                self.poke(gate);
            }
            Input::AttemptEnded { task, outcome } => {
                let Some(running) = self.running.remove(&task) else {
                    // Already settled (a duplicate report): nothing to do.
                    return;
                };
                if let Some(until) = running.lease {
                    self.leases.remove(&(until, task));
                }
                let gate = running.task.gate;
                self.attempt_over(now, &running, outcome.signal());
                self.poke(gate);
                self.settle(now, running.task, outcome);
            }
            Input::Interrupted(task) => {
                assert!(task.attempts >= 1, "interrupted before any attempt");
                let gate = task.gate;
                self.poke(gate);
                self.settle(now, task, Outcome::Interrupted);
            }
            Input::Leased { task, until } | Input::Heartbeat { task, until } => {
                let Some(running) = self.running.get_mut(&task) else {
                    return;
                };
                if let Some(old) = running.lease.replace(until) {
                    self.leases.remove(&(old, task));
                }
                self.leases.insert((until, task));
            }
            Input::RestoreLease { task, until } => self.hold(task, until, false),
            Input::HoldInterrupted { task, until } => self.hold(task, until, true),
            Input::Ask { task, attempt, ask } => {
                let Some(gate) = self
                    .running
                    .get(&task)
                    .filter(|r| r.task.attempts == attempt)
                    .map(|r| r.task.gate)
                else {
                    return;
                };
                if let Some(lane) = self.lanes.get_mut(&gate) {
                    lane.asks.push_back((task, attempt, ask));
                    self.poke(gate);
                }
            }
            Input::Answered {
                task,
                attempt,
                latency,
                quota,
            } => {
                let gate = match self.running.get(&task) {
                    Some(r) if r.task.attempts == attempt => Some(r.task.gate),
                    _ => self.orphans.get(&(task, attempt)).map(|&(gate, _)| gate),
                };
                if let Some(lane) = gate.and_then(|g| self.lanes.get_mut(&g)) {
                    lane.gate.answered(now, latency);
                    if let Some(quota) = quota {
                        lane.gate.quota_seen(now, quota);
                    }
                }
            }
            Input::RequestEnded {
                task,
                attempt,
                signal,
            } => {
                let Some(running) = self
                    .running
                    .get_mut(&task)
                    .filter(|r| r.task.attempts == attempt && r.requests > 0)
                else {
                    // The attempt ended first; its requests kept their slots.
                    self.orphan_ended(now, task, attempt, signal);
                    return;
                };
                let extra = running.requests > 1;
                running.requests -= 1;
                let gate = running.task.gate;
                if let Some(lane) = self.lanes.get_mut(&gate) {
                    lane.gate.request_ended(now, extra, signal);
                }
                self.poke(gate);
            }
        }
    }

    /// An attempt is over: the gate hears how it went and forgets its requests
    /// still waiting. Its slots stay taken by requests still in flight (the
    /// endpoint is still working on them: one slot each, the attempt's own
    /// covering the first) until each one ends.
    fn attempt_over(&mut self, now: Timestamp, running: &Running, signal: Signal) {
        let Some(lane) = self.lanes.get_mut(&running.task.gate) else {
            return;
        };
        let id = running.task.id;
        lane.asks.retain(|&(task, _, _)| task != id);
        lane.gate.attempt_ended(now, signal, running.requests == 0);
        if running.requests > 0 {
            self.orphans.insert(
                (id, running.task.attempts),
                (running.task.gate, running.requests),
            );
        }
    }

    /// A request of an attempt that already ended is over: its slot is free.
    fn orphan_ended(&mut self, now: Timestamp, task: TaskId, attempt: u32, signal: Signal) {
        let Some((gate, left)) = self.orphans.get_mut(&(task, attempt)) else {
            return;
        };
        let gate = *gate;
        *left -= 1;
        if *left == 0 {
            self.orphans.remove(&(task, attempt));
        }
        if let Some(lane) = self.lanes.get_mut(&gate) {
            lane.gate.request_ended(now, true, signal);
        }
        self.poke(gate);
    }

    /// A plugin request allowed out. Drain after every turn. The request holds
    /// its slot until its `RequestEnded`, also when nobody waits for the
    /// permit any more.
    pub fn poll_permit(&mut self) -> Option<Permit> {
        self.permits.pop_front()
    }

    /// Starts whatever may start at `now`. A spurious call is a no-op.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        while let Some(&(until, task)) = self.leases.first() {
            if until > now {
                break;
            }
            self.leases.remove(&(until, task));
            let Some(running) = self.running.remove(&task) else {
                continue;
            };
            let gate = running.task.gate;
            let (signal, outcome) = if running.interrupted {
                (Signal::Neutral, Outcome::Interrupted)
            } else {
                (Signal::Failed, Outcome::Failed { retry_after: None })
            };
            self.attempt_over(now, &running, signal);
            self.effects.push_back(Effect::LeaseExpired {
                task,
                gate,
                attempt: running.task.attempts,
            });
            self.poke(gate);
            self.settle(now, running.task, outcome);
        }
        while let Some(&(at, gate)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.remove(&(at, gate));
            if let Some(lane) = self.lanes.get_mut(&gate) {
                lane.wake = None;
            }
            self.pump(now, gate);
        }
    }

    /// When `handle_timeout` is next due. May change after any `handle_*` call.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        let timer = self.timers.first().map(|&(at, _)| at);
        let lease = self.leases.first().map(|&(at, _)| at);
        match (timer, lease) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether effects are waiting to be drained.
    pub fn has_effects(&self) -> bool {
        !self.effects.is_empty()
    }

    /// Drain after every `handle_*` call; execute in order.
    pub fn poll_effect(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    /// The tasks the queued effects act on, in order: a store with round
    /// trips reads their records at once instead of one by one.
    pub fn effect_tasks(&self) -> impl Iterator<Item = TaskId> + '_ {
        self.effects.iter().filter_map(Effect::task)
    }

    pub fn view(&self, now: Timestamp, gate: GateId) -> Option<GateStatus> {
        let lane = self.lanes.get(&gate)?;
        let due_in_memory = lane.queue.range(..=(now, TaskId(u64::MAX))).count() as u64;
        Some(GateStatus {
            state: lane.gate.state(now),
            effective_rate: lane.gate.effective_rate(now),
            in_flight: lane.gate.in_flight(),
            due_in_memory,
            due_exact: lane.disk_next.is_none_or(|(due, _)| due > now),
            circuit_open_until: lane.gate.circuit_open_until(),
            throttled_until: lane.gate.throttled_until(),
            quota: lane.gate.quota(now),
            concurrency: lane.gate.concurrency(),
            latencies: lane.gate.latencies(),
        })
    }

    /// An adaptive gate's concurrency limit now (`None` for a gate without
    /// the search).
    pub fn adaptive_limit(&self, gate: GateId) -> Option<u32> {
        let lane = self.lanes.get(&gate)?;
        lane.gate.latencies().map(|_| lane.gate.concurrency())
    }

    /// The gate's rate right now and its burst, per second.
    pub fn pace(&self, now: Timestamp, gate: GateId) -> Option<(f64, u32)> {
        let lane = self.lanes.get(&gate)?;
        Some((lane.gate.effective_rate(now), lane.gate.limits().burst))
    }

    /// Attempts in flight across all gates.
    pub fn running(&self) -> usize {
        self.running.len()
    }

    /// The gate of a running task.
    pub fn gate_of(&self, task: TaskId) -> Option<GateId> {
        self.running.get(&task).map(|r| r.task.gate)
    }

    pub fn is_running(&self, task: TaskId) -> bool {
        self.running.contains_key(&task)
    }

    /// Makes the gate's lane run at the next `handle_timeout`.
    fn poke(&mut self, gate: GateId) {
        self.set_wake(gate, Some(Timestamp::ZERO));
    }

    fn set_wake(&mut self, gate: GateId, at: Option<Timestamp>) {
        let Some(lane) = self.lanes.get_mut(&gate) else {
            return;
        };
        if let Some(old) = lane.wake {
            self.timers.remove(&(old, gate));
        }
        lane.wake = at;
        if let Some(at) = at {
            self.timers.insert((at, gate));
        }
    }

    fn enqueue(&mut self, now: Timestamp, task: QueuedTask) {
        let gate = task.gate;
        let horizon = now.plus(self.tuning.horizon);
        let Some(lane) = self.lanes.get_mut(&gate) else {
            // The gate is gone: the task stays on disk until the gate comes back.
            return;
        };
        let key = task.key();
        let fits = lane.disk_next.is_none_or(|d| key < d) && task.due <= horizon;
        if fits {
            lane.queue.insert(key, task);
            self.trim(gate);
        } else {
            lane.disk_next = Some(lane.disk_next.map_or(key, |d| d.min(key)));
            self.drop_from(gate, key);
        }
    }

    /// Restores the window invariant after `disk_next` moved down to `key`.
    fn drop_from(&mut self, gate: GateId, key: Key) {
        if let Some(lane) = self.lanes.get_mut(&gate) {
            let _ = lane.queue.split_off(&key);
        }
    }

    /// Keeps the window within its size, spilling the latest keys back to disk.
    fn trim(&mut self, gate: GateId) {
        let window = self.tuning.window;
        let Some(lane) = self.lanes.get_mut(&gate) else {
            return;
        };
        while lane.queue.len() > window {
            let Some((key, _)) = lane.queue.pop_last() else {
                break;
            };
            lane.disk_next = Some(lane.disk_next.map_or(key, |d| d.min(key)));
        }
    }

    fn pump(&mut self, now: Timestamp, gate: GateId) {
        let tuning = self.tuning;
        let horizon = now.plus(tuning.horizon);
        let low = tuning.window / 2;
        let mut wake = None;
        if let Err(not_before) = self.serve_asks(now, gate) {
            // Requests of running attempts go first; new starts wait behind them.
            self.set_wake(gate, not_before);
            return;
        }
        loop {
            let Some(lane) = self.lanes.get_mut(&gate) else {
                return;
            };
            if lane.loading {
                break;
            }
            // When the window runs low, the next tasks on disk are loaded once they
            // come within the horizon.
            let load_at = lane
                .disk_next
                .filter(|_| lane.queue.len() < low)
                .map(|(due, _)| {
                    Timestamp(
                        due.as_ms()
                            .saturating_sub(super::time::duration_ms(tuning.horizon)),
                    )
                });
            if let Some(from) = lane.disk_next
                && lane.queue.len() < low
                && from.0 <= horizon
            {
                lane.loading = true;
                self.effects.push_back(Effect::Load {
                    gate,
                    from,
                    until: horizon,
                    limit: tuning.window - lane.queue.len(),
                });
                break;
            }
            let Some((&key, head)) = lane.queue.first_key_value() else {
                wake = load_at;
                break;
            };
            if head.due > now {
                wake = Some(load_at.map_or(head.due, |l| l.min(head.due)));
                break;
            }
            if head.expires_at.is_some_and(|exp| now > exp) {
                lane.queue.remove(&key);
                self.effects.push_back(Effect::Expire {
                    task: key.1,
                    gate,
                    due: key.0,
                });
                continue;
            }
            match lane.gate.try_start(now) {
                Ok(at) => {
                    let Some(mut task) = lane.queue.remove(&key) else {
                        break;
                    };
                    task.attempts += 1;
                    task.first_attempt_at.get_or_insert(now);
                    self.effects.push_back(Effect::Start {
                        task: task.id,
                        gate,
                        attempt: task.attempts,
                        at,
                    });
                    let previous = self.running.insert(task.id, Running::new(task, None));
                    assert!(previous.is_none(), "task started twice");
                }
                Err(not_before) => {
                    // Blocked on concurrency or a pause (`None`), the lane wakes on
                    // an event rather than a timer, unless a load falls due.
                    wake = match (not_before, load_at) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                    break;
                }
            }
        }
        assert!(
            wake.is_none_or(|w| w > now),
            "a lane must not wake in the past"
        );
        self.set_wake(gate, wake);
    }

    /// Lets waiting plugin requests out while the gate allows, in order.
    fn serve_asks(&mut self, now: Timestamp, gate: GateId) -> Result<(), Option<Timestamp>> {
        let Some(lane) = self.lanes.get_mut(&gate) else {
            return Ok(());
        };
        while let Some(&(task, attempt, ask)) = lane.asks.front() {
            let Some(running) = self
                .running
                .get_mut(&task)
                .filter(|r| r.task.attempts == attempt)
            else {
                lane.asks.pop_front();
                continue;
            };
            let at = lane.gate.try_request(now, running.requests > 0)?;
            running.requests += 1;
            lane.asks.pop_front();
            self.permits.push_back(Permit {
                task,
                attempt,
                ask,
                gate,
                at,
            });
        }
        Ok(())
    }

    /// Decides what follows an attempt.
    fn settle(&mut self, now: Timestamp, mut task: QueuedTask, outcome: Outcome) {
        let gate = task.gate;
        let finish = |end| Effect::Finish {
            task: task.id,
            gate,
            end,
        };
        let retry_after = match outcome {
            Outcome::Succeeded => {
                self.effects.push_back(finish(End::Succeeded));
                return;
            }
            Outcome::Rejected => {
                self.effects
                    .push_back(finish(End::Failed(FailReason::Rejected)));
                return;
            }
            Outcome::Denied => {
                self.effects
                    .push_back(finish(End::Failed(FailReason::Denied)));
                return;
            }
            Outcome::Failed { retry_after } | Outcome::Throttled { retry_after } => retry_after,
            Outcome::Interrupted => None,
        };
        if task.attempts >= task.policy.max_attempts {
            self.effects
                .push_back(finish(End::Failed(FailReason::AttemptsExhausted)));
            return;
        }
        let delay = if outcome == Outcome::Interrupted {
            Duration::ZERO
        } else {
            let backoff = task.policy.backoff.delay(task.attempts, &mut self.rng);
            retry_after.map_or(backoff, |r| backoff.max(r.min(RETRY_AFTER_MAX)))
        };
        let due = now.plus(delay);
        if let (Some(limit), Some(first)) = (task.policy.max_retry_duration, task.first_attempt_at)
            && due > first.plus(limit)
        {
            self.effects
                .push_back(finish(End::Failed(FailReason::RetryWindowExceeded)));
            return;
        }
        if task.expires_at.is_some_and(|exp| due > exp) {
            self.effects.push_back(finish(End::Expired));
            return;
        }
        if !self.lanes.contains_key(&gate) {
            self.effects.push_back(finish(End::Cancelled));
            return;
        }
        task.due = due;
        self.effects.push_back(Effect::Requeue {
            task: task.id,
            gate,
            due,
        });
        self.enqueue(now, task);
        self.poke(gate);
    }
}

#[cfg(test)]
#[path = "sim_tests.rs"]
mod sim_tests;

#[cfg(test)]
#[path = "scripted_tests.rs"]
mod scripted_tests;
