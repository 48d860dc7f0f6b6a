//! The scheduler: which task starts when, and what happens to it after an attempt.
//!
//! Pure: time comes in as an argument, work goes out as [`Effect`]s that the shell
//! executes in order. It keeps only a window of each key's pending tasks in memory
//! (those due soonest); the rest stay on disk and come in through [`Effect::Load`].
//!
//! A gate's tasks are split by their `key` (the tenant, see [`super::keys`]) into
//! parts, which share the gate in weighted round robin. The window invariant, per
//! gate and key: every pending task whose order `(due, id)` is below the part's
//! `disk_next` is in memory, and none at or above it is. `disk_next` is a lower
//! bound of what may still be on disk; `None` means nothing is. Which keys have
//! anything on disk the store says once per gate ([`Effect::LoadKeys`]); until it
//! has, tasks of the gate stay on disk.
//!
//! Longer than most files, on purpose: the windows, the running set, the asks
//! and the orphan requests change together on every input, and the invariants
//! above are read off one `handle_input`. Split, each would be half a proof.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use super::gate::{Gate, GateLimits, GateState, RETRY_AFTER_MAX, Signal};
use super::ids::{GateId, TaskId};
use super::keys::{KeyPolicy, Part, Place, TaskKey};
use super::quota::{Quota, QuotaView};
use super::retry::RetryPolicy;
use super::rng::Rng;
use super::time::Timestamp;

/// A pending task's place in its key's order.
pub type Order = (Timestamp, TaskId);

/// Keys whose windows one pump loads at most.
const KEY_LOADS_PER_PUMP: usize = 256;

/// A task's priority when it names none (0–9, higher first).
pub const DEFAULT_PRIORITY: u8 = 5;

/// What the core keeps of a task: enough to order it and decide its retries.
#[derive(Clone, Debug, PartialEq)]
pub struct QueuedTask {
    pub id: TaskId,
    pub gate: GateId,
    /// The tenant it acts for: its share of the gate.
    pub key: TaskKey,
    /// 0–9: among its key's due tasks, higher starts first.
    pub priority: u8,
    /// Its place in the order: its due time, or earlier by `ahead_ms`.
    pub due: Timestamp,
    /// How far its order is ahead of its due time: a task of raised
    /// priority made due goes ahead (the store's `TaskRecord::set_due`);
    /// its aging counts from its due time all the same.
    pub ahead_ms: u64,
    /// Attempts already made.
    pub attempts: u32,
    pub first_attempt_at: Option<Timestamp>,
    /// If the task has not started by then, it ends as expired.
    pub expires_at: Option<Timestamp>,
    pub policy: RetryPolicy,
}

impl QueuedTask {
    pub fn order(&self) -> Order {
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
    /// It never left: its gate was paused before its slot time (or, at a
    /// takeover, its slot time was after the last owner's mark). Back to
    /// the queue, due as before; the attempt does not count.
    Withdrawn,
}

impl Outcome {
    fn signal(self) -> Signal {
        match self {
            Outcome::Succeeded | Outcome::Rejected => Signal::Healthy,
            Outcome::Denied | Outcome::Interrupted | Outcome::Withdrawn => Signal::Neutral,
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
        /// Per-key limits, weights and isolation; `None`: keys share the gate
        /// in plain round robin.
        keys: Option<Arc<KeyPolicy>>,
        paused: bool,
        ramp: bool,
    },
    RemoveGate(GateId),
    /// This node stops dispatching the gate: its unit moved to another node
    /// (`core::units`). Everything of it is forgotten, with no effect: its
    /// lane, its attempts in flight with their leases, its plugin requests
    /// still out, asks and permits, effects not yet taken. What was in
    /// flight is the next owner's to hold (`HoldInterrupted`); reports that
    /// come here for it later are ignored, as duplicates are. The shell
    /// takes the turn's effects before it sends this, and writes nothing
    /// more for the gate.
    DropGate(GateId),
    /// This node is handing the gate over: it starts nothing more, while
    /// what is in flight finishes (plugin requests of running attempts
    /// still get permits) until `busy` says it is done or the shell gives
    /// up waiting, and then `DropGate`. In memory only.
    Stop(GateId),
    Pause(GateId),
    Resume(GateId),
    /// A task became pending (created, or re-run by an operator). The shell has put
    /// it in the store's pending index.
    Enqueue(QueuedTask),
    /// Another node created a pending task in this gate, and the shell
    /// heard of it after the commit (a notification): its row is on disk,
    /// but no `Enqueue` came. The key's window is cut back to below it, so
    /// the next `Load` reads it with what follows; a doubled or late notice
    /// changes nothing but that (what is on disk is read once).
    Appeared {
        gate: GateId,
        key: TaskKey,
        order: Order,
    },
    /// What the shell heard of the gate's disk may have gaps (notices lost
    /// with a connection): every key is read again. Queued tasks go back to
    /// disk; running attempts and the limiters stay.
    Reload(GateId),
    /// A pending task was taken out (cancelled). The shell removed it from the store.
    Dequeue {
        gate: GateId,
        key: TaskKey,
        order: Order,
    },
    /// The answer to [`Effect::Load`]: the key's pending tasks with orders in
    /// `[from, next)`.
    Loaded {
        gate: GateId,
        key: TaskKey,
        tasks: Vec<QueuedTask>,
        next: Option<Order>,
    },
    /// The answer to [`Effect::LoadKeys`]: every key of the gate with pending
    /// tasks on disk (the unnamed one included), and its first task's order.
    KeysLoaded {
        gate: GateId,
        keys: Vec<(TaskKey, Order)>,
    },
    AttemptEnded {
        task: TaskId,
        outcome: Outcome,
    },
    /// A plugin's attempt is over. Its outcome settles the task as an
    /// `AttemptEnded` would, but it is the plugin's, not the endpoint's (a
    /// trap, a retry it asked for): the gate hears of the endpoint from the
    /// attempt's requests (`RequestEnded`), so a faulty plugin never trips a
    /// circuit that webhooks of its gate depend on.
    PluginEnded {
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
    /// At a takeover: a task on record as running whose attempt never left
    /// (its slot time was after the last owner's slot mark). It goes back
    /// to the queue at once, due as before, and that attempt does not
    /// count.
    Unsent(QueuedTask),
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
    /// Read the key's pending tasks from `from` on, in order: at most `limit`,
    /// none due after `until`. Answer with [`Input::Loaded`] before anything else.
    Load {
        gate: GateId,
        key: TaskKey,
        from: Order,
        until: Timestamp,
        limit: usize,
    },
    /// Say which keys of the gate have pending tasks. Answer with
    /// [`Input::KeysLoaded`] before anything else.
    LoadKeys { gate: GateId },
    /// Persist that attempt `attempt` of the task is running, then dispatch it
    /// at `at` (its slot time: the turn's `now` or a little after). Releases of
    /// one gate must keep at least the spacing of their `at`s.
    Start {
        task: TaskId,
        gate: GateId,
        attempt: u32,
        at: Timestamp,
    },
    /// The task goes back to pending, due at `due`: a retry, or (`retry`
    /// false) a start that never left, its attempt not counted.
    Requeue {
        task: TaskId,
        gate: GateId,
        due: Timestamp,
        retry: bool,
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
    /// The gate it acts in.
    pub fn gate(&self) -> GateId {
        match self {
            Effect::Load { gate, .. }
            | Effect::LoadKeys { gate }
            | Effect::Start { gate, .. }
            | Effect::Requeue { gate, .. }
            | Effect::Finish { gate, .. }
            | Effect::Expire { gate, .. }
            | Effect::LeaseExpired { gate, .. } => *gate,
        }
    }

    /// The task it acts on; `None` for a load.
    pub fn task(&self) -> Option<TaskId> {
        match self {
            Effect::Load { .. } | Effect::LoadKeys { .. } => None,
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
    /// Most pending tasks held in memory per key.
    pub window: usize,
    /// Pending tasks held in memory per gate across its keys: with many keys
    /// each holds fewer (never under two).
    pub key_budget: usize,
    /// Tasks due further out than this stay on disk.
    pub horizon: Duration,
    /// How far ahead of their tokens starts and requests are admitted, with
    /// their slot times, and how far ahead of its due time a task starts (it
    /// leaves when due): longer than a commit, so neither the gate's pace nor
    /// a task's lateness depends on the disk's.
    pub lookahead: Duration,
    /// The most the lookahead grows to, to cover the slowest recent turn
    /// (`core::lookahead`).
    pub lookahead_max: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            window: 2_048,
            key_budget: 65_536,
            horizon: Duration::from_secs(30),
            lookahead: Duration::from_millis(20),
            lookahead_max: Duration::from_millis(250),
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
    /// Keys with pending or running work.
    pub keys: usize,
}

/// Live figures of one key of a gate.
#[derive(Clone, Debug, PartialEq)]
pub struct KeyStatus {
    pub key: TaskKey,
    /// Pending tasks in memory that are due now (a key's window is short:
    /// the store counts its whole backlog).
    pub due_in_memory: u64,
    pub in_flight: u32,
    /// Its first pending task's due time, if it has one in memory.
    pub oldest_due: Option<Timestamp>,
    /// Its own limiter's state, when it has one.
    pub state: Option<GateState>,
    pub weight: u32,
}

#[derive(Debug)]
struct Lane {
    gate: Gate,
    /// Plugin requests waiting for the gate, first come first served, ahead of
    /// tasks waiting to start: (task, attempt, ask).
    asks: VecDeque<(TaskId, u32, u64)>,
    policy: Option<Arc<KeyPolicy>>,
    /// Keys with pending or running work (or a limiter still refilling).
    parts: BTreeMap<TaskKey, Part>,
    /// Keys with a due task, in round-robin order; each once.
    ready: VecDeque<TaskKey>,
    /// Keys waiting for an instant: (instant, key).
    waits: BTreeSet<(Timestamp, TaskKey)>,
    /// Whether the store has said which keys have pending tasks.
    keys_known: bool,
    loading_keys: bool,
    /// Key limiters made before then start with an empty bucket: after a
    /// restart nothing is known of what the last run sent for each key.
    fresh_until: Option<Timestamp>,
    wake: Option<Timestamp>,
}

impl Lane {
    fn new(now: Timestamp, limits: GateLimits, lookahead: Duration) -> Lane {
        Lane {
            gate: Gate::new(now, limits).with_lookahead(lookahead),
            asks: VecDeque::new(),
            policy: None,
            parts: BTreeMap::new(),
            ready: VecDeque::new(),
            waits: BTreeSet::new(),
            keys_known: false,
            loading_keys: false,
            fresh_until: None,
            wake: None,
        }
    }

    /// The key's part, made if it has none.
    fn part(&mut self, now: Timestamp, key: &TaskKey) -> &mut Part {
        if !self.parts.contains_key(key) {
            let part = self.new_part(now, key);
            self.parts.insert(key.clone(), part);
        }
        self.parts.get_mut(key).expect("just made")
    }

    fn new_part(&self, now: Timestamp, key: &TaskKey) -> Part {
        let Some(policy) = &self.policy else {
            return Part::new(None, 1);
        };
        let limiter = policy.gate_limits(key, self.gate.limits()).map(|l| {
            let mut limiter = Gate::new(now, l);
            if self.fresh_until.is_some_and(|t| now < t) {
                limiter.start_empty(now);
            }
            limiter
        });
        Part::new(limiter, policy.limits(key).weight)
    }

    /// Puts the key in the ready ring (out of any wait), if it has a part.
    fn wake_key(&mut self, key: &TaskKey) {
        let Some(part) = self.parts.get_mut(key) else {
            return;
        };
        match part.place {
            Place::Ready => {}
            Place::Waiting(at) => {
                self.waits.remove(&(at, key.clone()));
                part.place = Place::Ready;
                self.ready.push_back(key.clone());
            }
            Place::Idle => {
                part.place = Place::Ready;
                self.ready.push_back(key.clone());
            }
        }
    }

    /// Takes the key at the front of the ring out, to wait for `at` (or for
    /// an event, with `None`).
    fn park_front(&mut self, at: Option<Timestamp>) {
        let Some(key) = self.ready.pop_front() else {
            return;
        };
        let Some(part) = self.parts.get_mut(&key) else {
            return;
        };
        part.place = match at {
            Some(at) => {
                self.waits.insert((at, key));
                Place::Waiting(at)
            }
            None => Place::Idle,
        };
    }

    /// Pending tasks a key keeps in memory: fewer each as keys multiply.
    fn window(&self, tuning: &Tuning) -> usize {
        (tuning.key_budget / self.parts.len().max(1)).clamp(2, tuning.window.max(2))
    }
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
    /// (task, attempt): (gate, key, count). Each holds a concurrency slot of
    /// gate and key until it ends, since the endpoint is still working on it.
    orphans: BTreeMap<(TaskId, u32), (GateId, TaskKey, u32)>,
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

    /// How far ahead of their tokens (and of their due times) the gates
    /// admit starts from now on (`core::lookahead` decides it).
    pub fn set_lookahead(&mut self, lookahead: Duration) {
        if lookahead == self.tuning.lookahead {
            return;
        }
        self.tuning.lookahead = lookahead;
        for lane in self.lanes.values_mut() {
            lane.gate.set_lookahead(lookahead);
        }
    }

    /// Takes in an attempt already in flight (a restored lease, or another
    /// node's attempt) with its slot, until `until`.
    fn hold(&mut self, now: Timestamp, task: QueuedTask, until: Timestamp, interrupted: bool) {
        let id = task.id;
        if let Some(lane) = self.lanes.get_mut(&task.gate) {
            lane.gate.hold();
            let part = lane.part(now, &task.key);
            part.held += 1;
            if let Some(limiter) = &mut part.limiter {
                limiter.hold();
            }
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
                keys,
                paused,
                ramp,
            } => {
                let lookahead = self.tuning.lookahead;
                // The slots each key of the gate holds: an attempt's own (or
                // its requests', the first riding it), and those of requests
                // that outlived their attempt. A key limited from now on
                // starts out holding them.
                let mut slots: BTreeMap<TaskKey, u32> = BTreeMap::new();
                for running in self.running.values().filter(|r| r.task.gate == gate) {
                    *slots.entry(running.task.key.clone()).or_default() += running.requests.max(1);
                }
                for (g, key, left) in self.orphans.values() {
                    if *g == gate {
                        *slots.entry(key.clone()).or_default() += left;
                    }
                }
                let lane = self
                    .lanes
                    .entry(gate)
                    .or_insert_with(|| Lane::new(now, limits, lookahead));
                lane.gate.set_limits(now, limits);
                if paused {
                    lane.gate.pause();
                } else {
                    lane.gate.resume(now);
                }
                if ramp {
                    lane.gate.start_ramp(now);
                    lane.gate.start_empty(now);
                    let refill = keys.as_ref().map_or(Duration::ZERO, |p| p.refill());
                    lane.fresh_until = Some(now.plus(refill));
                }
                lane.policy = keys;
                let keys: Vec<TaskKey> = lane.parts.keys().cloned().collect();
                for key in keys {
                    let fresh = lane.new_part(now, &key);
                    let Some(part) = lane.parts.get_mut(&key) else {
                        continue;
                    };
                    part.weight = fresh.weight;
                    part.limiter = match (part.limiter.take(), fresh.limiter) {
                        (Some(mut held), Some(new)) => {
                            held.set_limits(now, *new.limits());
                            if ramp {
                                held.start_empty(now);
                            }
                            Some(held)
                        }
                        // A key limited from now on starts empty: what it
                        // sent just before is not counted anywhere.
                        (None, Some(mut new)) => {
                            new.start_empty(now);
                            for _ in 0..slots.get(&key).copied().unwrap_or(0) {
                                new.hold();
                            }
                            Some(new)
                        }
                        (_, None) => None,
                    };
                    lane.wake_key(&key);
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
            Input::DropGate(gate) => {
                if let Some(lane) = self.lanes.remove(&gate)
                    && let Some(w) = lane.wake
                {
                    self.timers.remove(&(w, gate));
                }
                let gone: BTreeSet<TaskId> = self
                    .running
                    .iter()
                    .filter(|(_, r)| r.task.gate == gate)
                    .map(|(id, _)| *id)
                    .collect();
                self.running.retain(|id, _| !gone.contains(id));
                self.leases.retain(|(_, id)| !gone.contains(id));
                self.orphans.retain(|_, (g, _, _)| *g != gate);
                self.permits.retain(|p| p.gate != gate);
                self.effects.retain(|e| e.gate() != gate);
            }
            Input::Stop(gate) => {
                if let Some(lane) = self.lanes.get_mut(&gate) {
                    lane.gate.stop();
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
            Input::Appeared { gate, key, order } => {
                let Some(lane) = self.lanes.get_mut(&gate) else {
                    return;
                };
                if !lane.keys_known {
                    // The load of the gate's keys will find it.
                    return;
                }
                let part = lane.part(now, &key);
                part.disk_next = Some(part.disk_next.map_or(order, |d| d.min(order)));
                part.drop_from(order);
                lane.wake_key(&key);
                self.poke(gate);
            }
            Input::Reload(gate) => {
                let Some(lane) = self.lanes.get_mut(&gate) else {
                    return;
                };
                for part in lane.parts.values_mut() {
                    part.drop_from((Timestamp::ZERO, TaskId(0)));
                    part.disk_next = None;
                }
                lane.keys_known = false;
                self.poke(gate);
            }
            Input::Dequeue { gate, key, order } => {
                if let Some(part) = self
                    .lanes
                    .get_mut(&gate)
                    .and_then(|lane| lane.parts.get_mut(&key))
                {
                    part.remove(&order);
                }
                self.poke(gate);
            }
            Input::Loaded {
                gate,
                key,
                tasks,
                next,
            } => {
                let tuning = self.tuning;
                let Some(lane) = self.lanes.get_mut(&gate) else {
                    return;
                };
                let window = lane.window(&tuning);
                let Some(part) = lane.parts.get_mut(&key) else {
                    return;
                };
                assert!(part.loading, "loaded without a load");
                part.loading = false;
                for task in tasks {
                    let order = task.order();
                    assert!(
                        part.disk_next.is_some_and(|d| order >= d),
                        "loaded a task already in memory"
                    );
                    assert!(next.is_none_or(|n| order < n), "loaded past next");
                    part.insert(task);
                }
                part.disk_next = next;
                part.trim(window);
                lane.wake_key(&key);
                self.poke(gate);
            }
            Input::KeysLoaded { gate, keys } => {
                let Some(lane) = self.lanes.get_mut(&gate) else {
                    return;
                };
                assert!(lane.loading_keys, "keys loaded without a load");
                lane.loading_keys = false;
                lane.keys_known = true;
                for (key, first) in keys {
                    let part = lane.part(now, &key);
                    assert!(part.queue.is_empty(), "a key's tasks came before its keys");
                    part.disk_next = Some(part.disk_next.map_or(first, |d| d.min(first)));
                    lane.wake_key(&key);
                }
                self.poke(gate);
            }
            Input::AttemptEnded { task, outcome } => {
                self.ended(now, task, outcome, outcome.signal());
            }
            Input::PluginEnded { task, outcome } => {
                self.ended(now, task, outcome, Signal::Neutral);
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
            Input::RestoreLease { task, until } => self.hold(now, task, until, false),
            Input::HoldInterrupted { task, until } => self.hold(now, task, until, true),
            Input::Unsent(task) => {
                assert!(task.attempts >= 1, "unsent before any attempt");
                self.settle(now, task, Outcome::Withdrawn);
            }
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
                let found = match self.running.get(&task) {
                    Some(r) if r.task.attempts == attempt => {
                        Some((r.task.gate, r.task.key.clone()))
                    }
                    _ => self
                        .orphans
                        .get(&(task, attempt))
                        .map(|(gate, key, _)| (*gate, key.clone())),
                };
                if let Some((gate, key)) = found
                    && let Some(lane) = self.lanes.get_mut(&gate)
                {
                    lane.gate.answered(now, latency);
                    if let Some(quota) = quota {
                        // With isolation, the quota an answer states is its
                        // key's (a tenant's API key, say), not the gate's.
                        let isolated = lane.policy.as_ref().is_some_and(|p| p.isolate);
                        match lane.parts.get_mut(&key).and_then(|p| p.limiter.as_mut()) {
                            Some(limiter) if isolated => limiter.quota_seen(now, quota),
                            _ => lane.gate.quota_seen(now, quota),
                        }
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
                let (gate, key) = (running.task.gate, running.task.key.clone());
                if let Some(lane) = self.lanes.get_mut(&gate) {
                    request_ended(lane, now, &key, extra, signal);
                }
                self.poke(gate);
            }
        }
    }

    /// An attempt's report: the gate hears `signal`, the task is settled.
    fn ended(&mut self, now: Timestamp, task: TaskId, outcome: Outcome, signal: Signal) {
        let Some(running) = self.running.remove(&task) else {
            // Already settled (a duplicate report): nothing to do.
            return;
        };
        if let Some(until) = running.lease {
            self.leases.remove(&(until, task));
        }
        let gate = running.task.gate;
        self.attempt_over(now, &running, signal);
        self.poke(gate);
        self.settle(now, running.task, outcome);
    }

    /// An attempt is over: gate and key hear how it went and forget its
    /// requests still waiting. Its slots stay taken by requests still in
    /// flight (the endpoint is still working on them: one slot each, the
    /// attempt's own covering the first) until each one ends.
    fn attempt_over(&mut self, now: Timestamp, running: &Running, signal: Signal) {
        let Some(lane) = self.lanes.get_mut(&running.task.gate) else {
            return;
        };
        let id = running.task.id;
        let key = &running.task.key;
        let release = running.requests == 0;
        lane.asks.retain(|&(task, _, _)| task != id);
        let (to_gate, to_key) = match &lane.policy {
            Some(policy) => policy.split(signal),
            None => (signal, Signal::Neutral),
        };
        lane.gate.attempt_ended(now, to_gate, release);
        if let Some(part) = lane.parts.get_mut(key) {
            if let Some(limiter) = &mut part.limiter {
                limiter.attempt_ended(now, to_key, release);
            }
            if release {
                part.held -= 1;
            }
        }
        lane.wake_key(key);
        if running.requests > 0 {
            self.orphans.insert(
                (id, running.task.attempts),
                (running.task.gate, key.clone(), running.requests),
            );
        }
    }

    /// A request of an attempt that already ended is over: its slot is free.
    fn orphan_ended(&mut self, now: Timestamp, task: TaskId, attempt: u32, signal: Signal) {
        let Some((gate, key, left)) = self.orphans.get_mut(&(task, attempt)) else {
            return;
        };
        let (gate, key) = (*gate, key.clone());
        *left -= 1;
        let last = *left == 0;
        if last {
            self.orphans.remove(&(task, attempt));
        }
        if let Some(lane) = self.lanes.get_mut(&gate) {
            request_ended(lane, now, &key, true, signal);
            if last && let Some(part) = lane.parts.get_mut(&key) {
                part.held -= 1;
                lane.wake_key(&key);
            }
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

    /// The tasks of the starts queued next, up to the first effect of
    /// another kind (which may put a task back in pending first): a store
    /// with round trips takes their pending entries out at once.
    pub fn next_starts(&self) -> impl Iterator<Item = (TaskId, GateId)> + '_ {
        self.effects.iter().map_while(|e| match e {
            Effect::Start { task, gate, .. } => Some((*task, *gate)),
            _ => None,
        })
    }

    pub fn view(&self, now: Timestamp, gate: GateId) -> Option<GateStatus> {
        let lane = self.lanes.get(&gate)?;
        let due_now = ..=(now, TaskId(u64::MAX));
        let due_in_memory = lane
            .parts
            .values()
            .map(|p| p.queue.range(due_now).count() as u64)
            .sum();
        let due_exact = lane.keys_known
            && lane
                .parts
                .values()
                .all(|p| p.disk_next.is_none_or(|(due, _)| due > now));
        Some(GateStatus {
            state: lane.gate.state(now),
            effective_rate: lane.gate.effective_rate(now),
            in_flight: lane.gate.in_flight(),
            due_in_memory,
            due_exact,
            circuit_open_until: lane.gate.circuit_open_until(),
            throttled_until: lane.gate.throttled_until(),
            quota: lane.gate.quota(now),
            concurrency: lane.gate.concurrency(),
            latencies: lane.gate.latencies(),
            keys: lane
                .parts
                .values()
                .filter(|p| p.held > 0 || !p.queue.is_empty() || p.disk_next.is_some())
                .count(),
        })
    }

    /// The gate's busiest keys now: the most attempts in flight, then the
    /// most due in memory, at most `limit`.
    pub fn busiest_keys(&self, now: Timestamp, gate: GateId, limit: usize) -> Vec<KeyStatus> {
        let Some(lane) = self.lanes.get(&gate) else {
            return Vec::new();
        };
        let mut keys: Vec<KeyStatus> = lane
            .parts
            .iter()
            .map(|(key, p)| KeyStatus {
                key: key.clone(),
                due_in_memory: p.queue.range(..=(now, TaskId(u64::MAX))).count() as u64,
                in_flight: p.held,
                oldest_due: p.queue.first_key_value().map(|(&(due, _), _)| due),
                state: p.limiter.as_ref().map(|l| l.state(now)),
                weight: p.weight,
            })
            .filter(|k| k.in_flight > 0 || k.oldest_due.is_some())
            .collect();
        keys.sort_by(|a, b| {
            (b.in_flight, b.due_in_memory)
                .cmp(&(a.in_flight, a.due_in_memory))
                .then_with(|| a.key.cmp(&b.key))
        });
        keys.truncate(limit);
        keys
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

    /// What of the gate is still out and has to be answered here: attempts
    /// in flight without a lease (a lease, or a hold for another node's
    /// attempt, is on record and goes over to the next owner as it is) and
    /// plugin requests whose attempt has ended.
    pub fn busy(&self, gate: GateId) -> usize {
        let attempts = self
            .running
            .values()
            .filter(|r| r.task.gate == gate && r.lease.is_none())
            .count();
        let requests: u32 = self
            .orphans
            .values()
            .filter(|(g, _, _)| *g == gate)
            .map(|(_, _, n)| *n)
            .sum();
        attempts + requests as usize
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
        let horizon = now.plus(self.tuning.horizon);
        let tuning = self.tuning;
        let Some(lane) = self.lanes.get_mut(&task.gate) else {
            // The gate is gone: the task stays on disk until the gate comes back.
            return;
        };
        if !lane.keys_known {
            // On disk, where the load of the gate's keys will find it.
            return;
        }
        let key = task.key.clone();
        let window = lane.window(&tuning);
        let part = lane.part(now, &key);
        let order = task.order();
        let fits = part.disk_next.is_none_or(|d| order < d) && task.due <= horizon;
        if fits {
            part.insert(task);
            part.trim(window);
        } else {
            part.disk_next = Some(part.disk_next.map_or(order, |d| d.min(order)));
            part.drop_from(order);
        }
        lane.wake_key(&key);
    }

    fn pump(&mut self, now: Timestamp, gate: GateId) {
        let tuning = self.tuning;
        let horizon = now.plus(tuning.horizon);
        let not_before = match self.serve_asks(now, gate) {
            // Requests of running attempts go first; new starts wait behind them.
            Err(not_before) => {
                self.set_wake(gate, not_before);
                return;
            }
            Ok(not_before) => not_before,
        };
        let Some(lane) = self.lanes.get_mut(&gate) else {
            return;
        };
        if !lane.keys_known {
            if !lane.loading_keys {
                lane.loading_keys = true;
                self.effects.push_back(Effect::LoadKeys { gate });
            }
            self.set_wake(gate, None);
            return;
        }
        // Keys whose instant has come join the round.
        while let Some((at, key)) = lane.waits.first().cloned()
            && at <= now
        {
            lane.waits.remove(&(at, key.clone()));
            lane.wake_key(&key);
        }
        let window = lane.window(&tuning);
        let low = (window / 2).max(1);
        let aging = lane.gate.limits().priority_aging;
        let mut gate_wake = not_before;
        let mut loads = 0;
        while let Some(key) = lane.ready.front().cloned() {
            let Some(part) = lane.parts.get_mut(&key) else {
                lane.ready.pop_front();
                continue;
            };
            if part.loading {
                lane.park_front(None);
                continue;
            }
            // When the window runs low, the key's next tasks on disk are loaded
            // once they come within the horizon.
            let load_at = part
                .disk_next
                .filter(|_| part.queue.len() < low)
                .map(|(due, _)| {
                    Timestamp(
                        due.as_ms()
                            .saturating_sub(super::time::duration_ms(tuning.horizon)),
                    )
                });
            if let Some(from) = part.disk_next
                && part.queue.len() < low
                && from.0 <= horizon
            {
                if loads == KEY_LOADS_PER_PUMP {
                    // The loads asked for poke the gate when answered: the
                    // rest of the ring is served then, so one turn never
                    // reads the windows of a hundred thousand keys.
                    break;
                }
                loads += 1;
                part.loading = true;
                self.effects.push_back(Effect::Load {
                    gate,
                    key,
                    from,
                    until: horizon,
                    limit: window.saturating_sub(part.queue.len()).max(1),
                });
                lane.park_front(None);
                continue;
            }
            let Some((order, head)) = part
                .pick(now, aging)
                .and_then(|o| part.queue.get(&o).map(|t| (o, t)))
            else {
                if load_at.is_some() {
                    lane.park_front(load_at);
                    continue;
                }
                let (rested, held) = (part.rested_at(now), part.held);
                match rested {
                    Some(at) if at <= now => {
                        lane.ready.pop_front();
                        lane.parts.remove(&key);
                    }
                    // Its limiter still refills: forgetting it now would
                    // hand it a fresh burst.
                    Some(at) => lane.park_front(Some(at)),
                    None if held > 0 => lane.park_front(None),
                    None => lane.park_front(Some(now.plus(Duration::from_secs(1)))),
                }
                continue;
            };
            // A task due within the gate's lookahead starts now and leaves
            // at its due time: its start's commit is done by then. The gate
            // and the key are asked at that instant.
            let ahead = lane.gate.due_ahead(now);
            if head.due > now.plus(ahead) {
                let wake = Timestamp(head.due.as_ms() - super::time::duration_ms(ahead));
                let at = load_at.map_or(wake, |l| l.min(wake));
                lane.park_front(Some(at));
                continue;
            }
            let when = now.max(head.due);
            if head.expires_at.is_some_and(|exp| when > exp) {
                part.remove(&order);
                self.effects.push_back(Effect::Expire {
                    task: order.1,
                    gate,
                    due: order.0,
                });
                continue;
            }
            // The key's own limiter is asked first, on a copy, so that a
            // refusal by the gate costs the key nothing.
            if let Some(limiter) = &part.limiter {
                let mut trial = limiter.clone();
                if let Err(at) = trial.try_start(when) {
                    lane.park_front(at);
                    continue;
                }
            }
            let at = match lane.gate.try_start(when) {
                Ok(at) => at,
                Err(at) => {
                    // Blocked on concurrency or a pause (`None`), the lane wakes
                    // on an event rather than a timer, unless a key waits.
                    gate_wake = earliest(gate_wake, at);
                    break;
                }
            };
            if let Some(limiter) = &mut part.limiter
                && limiter.try_start(at).is_err()
            {
                // Unreachable: a key's bucket only fills between `now` and
                // `at`. Should it happen, the gate's token is lost, never
                // the key's bound (nor the probe's turn).
                lane.gate.unstart();
                lane.park_front(Some(now.plus(Duration::from_millis(1))));
                continue;
            }
            let Some(mut task) = part.remove(&order) else {
                // Unreachable too (`head` is the part's): both give back.
                lane.gate.unstart();
                if let Some(limiter) = &mut part.limiter {
                    limiter.unstart();
                }
                break;
            };
            part.held += 1;
            part.credit += 1;
            if part.credit >= part.weight {
                part.credit = 0;
                lane.ready.rotate_left(1);
            }
            task.attempts += 1;
            task.first_attempt_at.get_or_insert(at);
            self.effects.push_back(Effect::Start {
                task: task.id,
                gate,
                attempt: task.attempts,
                at,
            });
            let previous = self.running.insert(task.id, Running::new(task, None));
            assert!(previous.is_none(), "task started twice");
        }
        let wake = earliest(gate_wake, lane.waits.first().map(|&(at, _)| at));
        assert!(
            wake.is_none_or(|w| w > now),
            "a lane must not wake in the past"
        );
        self.set_wake(gate, wake);
    }

    /// Lets waiting plugin requests out while gate and key allow, in order.
    /// A request its key holds back waits without holding back the others;
    /// `Ok` says when such a request may go. One the gate holds back stops
    /// the line (`Err`, with when to try again).
    fn serve_asks(
        &mut self,
        now: Timestamp,
        gate: GateId,
    ) -> Result<Option<Timestamp>, Option<Timestamp>> {
        let Some(lane) = self.lanes.get_mut(&gate) else {
            return Ok(None);
        };
        let mut held_back = VecDeque::new();
        let mut key_wake = None;
        let mut result = Ok(());
        while let Some((task, attempt, ask)) = lane.asks.pop_front() {
            let Some(running) = self
                .running
                .get_mut(&task)
                .filter(|r| r.task.attempts == attempt)
            else {
                continue;
            };
            let extra = running.requests > 0;
            let part = lane.parts.get_mut(&running.task.key);
            if let Some(limiter) = part.as_ref().and_then(|p| p.limiter.as_ref()) {
                let mut trial = limiter.clone();
                if let Err(at) = trial.try_request(now, extra) {
                    key_wake = earliest(key_wake, at);
                    held_back.push_back((task, attempt, ask));
                    continue;
                }
            }
            let at = match lane.gate.try_request(now, extra) {
                Ok(at) => at,
                Err(at) => {
                    lane.asks.push_front((task, attempt, ask));
                    result = Err(at);
                    break;
                }
            };
            if let Some(limiter) = part.and_then(|p| p.limiter.as_mut())
                && limiter.try_request(at, extra).is_err()
            {
                // Unreachable, as for starts: the gate's token is lost.
                if extra {
                    lane.gate.release_slot();
                }
                held_back.push_back((task, attempt, ask));
                continue;
            }
            running.requests += 1;
            self.permits.push_back(Permit {
                task,
                attempt,
                ask,
                gate,
                at,
            });
        }
        // Those their keys held back keep their places, ahead of the rest.
        while let Some(ask) = held_back.pop_back() {
            lane.asks.push_front(ask);
        }
        result.map(|()| key_wake)
    }

    /// Decides what follows an attempt.
    fn settle(&mut self, now: Timestamp, mut task: QueuedTask, outcome: Outcome) {
        if outcome == Outcome::Withdrawn {
            task.attempts = task.attempts.saturating_sub(1);
            if task.attempts == 0 {
                task.first_attempt_at = None;
            }
            let due = task.due;
            self.requeue(now, task, due, false);
            return;
        }
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
            Outcome::Interrupted | Outcome::Withdrawn => None,
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
        self.requeue(now, task, due, true);
    }

    /// Puts `task` back in its gate's queue, due at `due` (cancelled if
    /// its gate is gone): a retry, or a start that never left.
    fn requeue(&mut self, now: Timestamp, mut task: QueuedTask, due: Timestamp, retry: bool) {
        let gate = task.gate;
        if !self.lanes.contains_key(&gate) {
            let end = End::Cancelled;
            self.effects.push_back(Effect::Finish {
                task: task.id,
                gate,
                end,
            });
            return;
        }
        task.due = due;
        task.ahead_ms = 0;
        self.effects.push_back(Effect::Requeue {
            task: task.id,
            gate,
            due,
            retry,
        });
        self.enqueue(now, task);
        self.poke(gate);
    }
}

/// The sooner of two wake-ups, `None` being never.
fn earliest(a: Option<Timestamp>, b: Option<Timestamp>) -> Option<Timestamp> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// A plugin request is over: gate and key hear of it, and `extra` gives
/// back the slot it held of each.
fn request_ended(lane: &mut Lane, now: Timestamp, key: &TaskKey, extra: bool, signal: Signal) {
    let (to_gate, to_key) = match &lane.policy {
        Some(policy) => policy.split(signal),
        None => (signal, Signal::Neutral),
    };
    lane.gate.request_ended(now, extra, to_gate);
    if let Some(limiter) = lane.parts.get_mut(key).and_then(|p| p.limiter.as_mut()) {
        limiter.request_ended(now, extra, to_key);
    }
    lane.wake_key(key);
}

#[cfg(test)]
#[path = "sim_tests.rs"]
mod sim_tests;

#[cfg(test)]
#[path = "scripted_tests.rs"]
mod scripted_tests;
