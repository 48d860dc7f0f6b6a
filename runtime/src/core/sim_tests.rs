//! Property tests of the scheduler on simulated time: random arrivals, gate
//! config changes, pauses, restarts and handovers of one gate to another
//! node (`Input::DropGate`, then taken up empty with the ramp, its attempts
//! held or retried), against a simulated endpoint with random
//! latency and failures. A third of the attempts are plugins that ask for one to
//! four HTTP requests at once; a third of those end their attempt as soon as a
//! request is out, leaving it in flight (it keeps its slot until it ends).
//! After every step: the window bound (attempt starts and plugin requests
//! together) and the concurrency cap (attempts plus the requests beyond each
//! attempt's first, plus requests whose attempt has ended) hold for every gate,
//! and every task is in exactly one place. In two cases of three a third of
//! the tasks are created "on another node": on disk without an `Enqueue`,
//! heard of by `Input::Appeared` notices that come late or twice, or are
//! lost and followed by an `Input::Reload`; each still starts exactly once
//! (a start of a task not pending fails the case). With keys on (half the cases),
//! tasks name one of a few keys and each gate sets per-key limits: the bound
//! and the cap hold for every key too.
//!
//! A test module: its length is its cases.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::{ProptestConfig, proptest};

use super::*;
use crate::core::gate::{GateLimits, Recovery};
use crate::core::keys::{KeyLimits, KeyPolicy};
use crate::core::time::Rate;

#[derive(Clone, Debug, PartialEq)]
enum Place {
    Pending,
    Running,
    Done,
}

struct SimTask {
    queued: QueuedTask,
    place: Place,
    /// The slot time of its last start.
    slot: Timestamp,
}

struct World {
    now: Timestamp,
    rng: Rng,
    sched: Scheduler,
    tuning: Tuning,
    gates: BTreeMap<GateId, GateLimits>,
    paused: BTreeSet<GateId>,
    /// The "disk": pending orders per gate and key, and every task.
    pending: BTreeSet<(GateId, TaskKey, Order)>,
    /// Per gate, its fixed key policy (when keys are on).
    policies: BTreeMap<GateId, Arc<KeyPolicy>>,
    /// Per gate and key, every start's slot time.
    key_starts: BTreeMap<(GateId, TaskKey), Vec<Timestamp>>,
    /// Starts that never left (withdrawn at a pause, or unsent at a
    /// handover): each comes back as a requeue that is not a retry.
    unsent: BTreeSet<TaskId>,
    /// Keys drawn from this many names instead of `KEYS`, when not zero.
    key_names: u64,
    tasks: BTreeMap<TaskId, SimTask>,
    /// Attempts at the endpoint: task → (gate, ends at, outcome).
    in_flight: BTreeMap<TaskId, (GateId, Timestamp, Outcome)>,
    /// Plugin attempts: they end when all their requests have, or (those
    /// that abandon their requests) as soon as one is out.
    plugins: BTreeMap<TaskId, PluginRun>,
    /// Requests of attempts that ended before them: (task, attempt, gate,
    /// ends at). Each holds a slot until it ends.
    orphans: Vec<(TaskId, u32, GateId, Timestamp)>,
    /// Per gate, every start: (time, config epoch).
    starts: BTreeMap<GateId, Vec<(Timestamp, u32)>>,
    epoch: BTreeMap<GateId, u32>,
    /// Per gate and epoch, the limits in force.
    epochs: BTreeMap<(GateId, u32), GateLimits>,
    next_id: u64,
    /// Creates on other nodes (in two cases of three): a third of the
    /// tasks reach the disk without an `Enqueue`, and the scheduler hears
    /// of them by notices that come late, twice, or are lost (and then the
    /// gate is reloaded, as after a reconnect).
    foreign: bool,
    notices: BTreeMap<(Timestamp, u64), Notice>,
    seq: u64,
}

#[derive(Clone, Debug)]
enum Notice {
    Appeared(GateId, TaskKey, Order),
    Reload(GateId),
}

struct PluginRun {
    gate: GateId,
    attempt: u32,
    /// Requests asked for and not yet allowed.
    waiting: u32,
    /// When each allowed request ends.
    requests: Vec<Timestamp>,
    outcome: Outcome,
    /// Ends the attempt as soon as a request is out, leaving it in flight.
    abandon: bool,
}

fn key_policy(rng: &mut Rng) -> KeyPolicy {
    let rates = [1.0, 5.0, 20.0, 100.0];
    let mut limits = || KeyLimits {
        rate: (rng.below(4) > 0)
            .then(|| Rate::per_second(rates[rng.below(4) as usize]).expect("rate")),
        burst: 1 + rng.below(3) as u32,
        concurrency: (rng.below(4) > 0).then(|| 1 + rng.below(3) as u32),
        weight: 1 + rng.below(3) as u32,
    };
    let default = limits();
    let overrides = [(Arc::from("a"), limits())].into_iter().collect();
    KeyPolicy {
        default,
        overrides,
        isolate: rng.below(2) == 0,
    }
}

const KEYS: [&str; 4] = ["a", "b", "c", "d"];

fn limits(rng: &mut Rng) -> GateLimits {
    let rates = [0.5, 2.0, 10.0, 50.0, 200.0];
    GateLimits {
        rate: Rate::per_second(rates[rng.below(rates.len() as u64) as usize]).expect("rate"),
        burst: 1 + rng.below(5) as u32,
        concurrency: 1 + rng.below(8) as u32,
        recovery: if rng.below(2) == 0 {
            Recovery {
                start: 1.0,
                over: Duration::ZERO,
            }
        } else {
            Recovery {
                start: 0.2,
                over: Duration::from_secs(5),
            }
        },
        // Half the gates trip on failures (the endpoint's, and a plugin's
        // requests'): every task still ends, whatever the probes say.
        circuit: (rng.below(2) == 0).then(|| crate::core::CircuitPolicy {
            failures: 1 + rng.below(4) as u32,
            cooldown: Duration::from_millis(200 + rng.below(2_000)),
            max_cooldown: Duration::from_secs(5),
        }),
        quota_headers: true,
        priority_aging: Duration::from_secs(60),
        adaptive: None,
    }
}

impl World {
    fn new(seed: u64, tuning: Tuning) -> World {
        World::with_keys(seed, tuning, false)
    }

    fn with_keys(seed: u64, tuning: Tuning, keys: bool) -> World {
        let mut rng = Rng::new(seed);
        let mut world = World {
            now: Timestamp(1_700_000_000_000),
            sched: Scheduler::new(rng.next_u64(), tuning),
            tuning,
            gates: BTreeMap::new(),
            paused: BTreeSet::new(),
            pending: BTreeSet::new(),
            policies: BTreeMap::new(),
            key_starts: BTreeMap::new(),
            unsent: BTreeSet::new(),
            key_names: 0,
            tasks: BTreeMap::new(),
            in_flight: BTreeMap::new(),
            plugins: BTreeMap::new(),
            orphans: Vec::new(),
            starts: BTreeMap::new(),
            epoch: BTreeMap::new(),
            epochs: BTreeMap::new(),
            next_id: 1,
            rng: Rng::new(0),
            foreign: !seed.is_multiple_of(3),
            notices: BTreeMap::new(),
            seq: 0,
        };
        for g in 0..3 {
            if keys {
                world
                    .policies
                    .insert(GateId(g), Arc::new(key_policy(&mut rng)));
            }
            let l = limits(&mut rng);
            world.set_gate(GateId(g), l);
        }
        world.rng = rng;
        world
    }

    fn set_gate(&mut self, gate: GateId, l: GateLimits) {
        self.gates.insert(gate, l);
        let e = self.epoch.entry(gate).or_insert(0);
        *e += 1;
        self.epochs.insert((gate, *e), l);
        let paused = self.paused.contains(&gate);
        self.sched.handle_input(
            self.now,
            Input::UpsertGate {
                gate,
                limits: l,
                keys: self.policies.get(&gate).cloned(),
                paused,
                ramp: false,
            },
        );
        self.run_effects();
    }

    fn create(&mut self) {
        let gate = GateId(self.rng.below(3) as u32);
        let due = self.now.plus(Duration::from_millis(self.rng.below(5_000)));
        let id = TaskId(self.next_id);
        self.next_id += 1;
        let key = if self.policies.is_empty() {
            None
        } else {
            match self.rng.below(5) {
                4 => None,
                _ if self.key_names > 0 => {
                    Some(Arc::from(format!("k{}", self.rng.below(self.key_names))))
                }
                k => Some(Arc::from(KEYS[k as usize])),
            }
        };
        // With keys on, priorities too (due order is checked apart).
        let priority = if self.policies.is_empty() {
            DEFAULT_PRIORITY
        } else {
            self.rng.below(10) as u8
        };
        let queued = QueuedTask {
            id,
            gate,
            key,
            priority,
            due,
            ahead_ms: 0,
            attempts: 0,
            first_attempt_at: None,
            expires_at: (self.rng.below(4) == 0).then(|| due.plus(Duration::from_secs(2))),
            policy: RetryPolicy {
                max_attempts: 1 + self.rng.below(4) as u32,
                backoff: super::super::retry::Backoff {
                    initial: Duration::from_millis(100),
                    max: Duration::from_secs(2),
                    multiplier: 2.0,
                    jitter: true,
                },
                max_retry_duration: None,
            },
        };
        self.pending
            .insert((gate, queued.key.clone(), queued.order()));
        self.tasks.insert(
            id,
            SimTask {
                queued: queued.clone(),
                place: Place::Pending,
                slot: Timestamp::ZERO,
            },
        );
        if self.foreign && self.rng.below(3) == 0 {
            // Created on another node: the scheduler hears of it later.
            let appeared = Notice::Appeared(gate, queued.key.clone(), queued.order());
            let (a, b) = (self.rng.below(300), self.rng.below(300));
            let (a, b) = (Duration::from_millis(a), Duration::from_millis(b));
            match self.rng.below(6) {
                0 => {
                    self.notice(a, appeared.clone());
                    self.notice(b, appeared);
                }
                1 => {
                    let reload = Duration::from_millis(self.rng.below(3_000));
                    self.notice(reload, Notice::Reload(gate));
                }
                _ => self.notice(a, appeared),
            }
            return;
        }
        self.sched.handle_input(self.now, Input::Enqueue(queued));
        self.run_effects();
    }

    fn notice(&mut self, after: Duration, notice: Notice) {
        self.seq += 1;
        self.notices
            .insert((self.now.plus(after), self.seq), notice);
    }

    /// Delivers the notices whose time has come.
    fn notices_due(&mut self) {
        while let Some(entry) = self.notices.first_entry()
            && entry.key().0 <= self.now
        {
            let input = match entry.remove() {
                Notice::Appeared(gate, key, order) => Input::Appeared { gate, key, order },
                Notice::Reload(gate) => Input::Reload(gate),
            };
            self.sched.handle_input(self.now, input);
            self.run_effects();
        }
    }

    /// A crash: memory is gone, attempts in flight die with the process.
    fn restart(&mut self) {
        self.in_flight.clear();
        self.plugins.clear();
        self.orphans.clear();
        // Attempts admitted ahead of their slot time died with the process
        // before they left.
        let now = self.now;
        for starts in self.starts.values_mut() {
            starts.retain(|&(at, _)| at <= now);
        }
        for starts in self.key_starts.values_mut() {
            starts.retain(|&at| at <= now);
        }
        self.sched = Scheduler::new(self.rng.next_u64(), self.tuning);
        for (&gate, &l) in &self.gates {
            let paused = self.paused.contains(&gate);
            self.sched.handle_input(
                self.now,
                Input::UpsertGate {
                    gate,
                    limits: l,
                    keys: self.policies.get(&gate).cloned(),
                    paused,
                    ramp: true,
                },
            );
        }
        let running: Vec<TaskId> = self
            .tasks
            .iter()
            .filter(|(_, t)| t.place == Place::Running)
            .map(|(&id, _)| id)
            .collect();
        for id in running {
            let q = self.tasks[&id].queued.clone();
            self.sched.handle_input(self.now, Input::Interrupted(q));
        }
        self.run_effects();
    }

    /// The gate's unit moves to another node: dropped here
    /// (`Input::DropGate`) and taken up as a new owner does, for this gate
    /// alone. Its attempts die with the old owner's hold on it (as in a
    /// restart; starts admitted ahead never left), and the new owner
    /// starts it empty with the ramp, holding each of them
    /// (`HoldInterrupted`) for a while or retrying it at once; one admitted
    /// ahead it may also put back in the queue uncounted (`Unsent`).
    fn hand_over(&mut self, gate: GateId) {
        let now = self.now;
        self.sched.handle_input(now, Input::DropGate(gate));
        assert!(!self.sched.has_effects(), "dropping a gate made effects");
        self.in_flight.retain(|_, v| v.0 != gate);
        self.plugins.retain(|_, r| r.gate != gate);
        self.orphans.retain(|o| o.2 != gate);
        if let Some(starts) = self.starts.get_mut(&gate) {
            starts.retain(|&(at, _)| at <= now);
        }
        for ((g, _), starts) in self.key_starts.iter_mut() {
            if *g == gate {
                starts.retain(|&at| at <= now);
            }
        }
        let adopt = Input::UpsertGate {
            gate,
            limits: self.gates[&gate],
            keys: self.policies.get(&gate).cloned(),
            paused: self.paused.contains(&gate),
            ramp: true,
        };
        self.sched.handle_input(now, adopt);
        let running: Vec<TaskId> = self
            .tasks
            .iter()
            .filter(|(_, t)| t.place == Place::Running && t.queued.gate == gate)
            .map(|(&id, _)| id)
            .collect();
        for id in running {
            let task = self.tasks[&id].queued.clone();
            if self.tasks[&id].slot > now && self.rng.below(2) == 0 {
                // Its slot time is after the old owner's last moment, so
                // it never left: the new owner knows (`Start::Takeover`'s
                // mark) and queues it again at once, the attempt uncounted.
                self.unsent.insert(id);
                self.sched.handle_input(now, Input::Unsent(task));
            } else if self.rng.below(2) == 0 {
                let until = now.plus(Duration::from_millis(self.rng.below(500)));
                self.sched
                    .handle_input(now, Input::HoldInterrupted { task, until });
            } else {
                self.sched.handle_input(now, Input::Interrupted(task));
            }
        }
        self.run_effects();
    }

    fn run_effects(&mut self) {
        loop {
            self.run_core_effects();
            let Some(permit) = self.sched.poll_permit() else {
                break;
            };
            let task = permit.task;
            assert!(permit.at >= self.now, "a request released in the past");
            let run = self
                .plugins
                .get_mut(&task)
                .expect("permit for a plugin run");
            assert!(run.waiting > 0, "permit nobody asked for");
            run.waiting -= 1;
            let latency = Duration::from_millis(1 + self.rng.below(300));
            run.requests.push(permit.at.plus(latency));
            let gate = run.gate;
            assert_eq!(gate, permit.gate);
            let e = self.epoch[&gate];
            self.starts.entry(gate).or_default().push((permit.at, e));
            let key = self.tasks[&task].queued.key.clone();
            self.key_starts
                .entry((gate, key))
                .or_default()
                .push(permit.at);
        }
    }

    fn run_core_effects(&mut self) {
        while let Some(effect) = self.sched.poll_effect() {
            match effect {
                Effect::Load {
                    gate,
                    key,
                    from,
                    until,
                    limit,
                } => {
                    let mut tasks = Vec::new();
                    let mut next = None;
                    for (g, k, order) in self.pending.range((gate, key.clone(), from)..) {
                        if *g != gate || *k != key {
                            break;
                        }
                        if tasks.len() >= limit || order.0 > until {
                            next = Some(*order);
                            break;
                        }
                        let mut q = self.tasks[&order.1].queued.clone();
                        q.due = order.0;
                        tasks.push(q);
                    }
                    let loaded = Input::Loaded {
                        gate,
                        key,
                        tasks,
                        next,
                    };
                    self.sched.handle_input(self.now, loaded);
                }
                Effect::LoadKeys { gate } => {
                    let mut keys: Vec<(TaskKey, Order)> = Vec::new();
                    for (g, k, order) in &self.pending {
                        if *g == gate && keys.last().is_none_or(|(last, _)| last != k) {
                            keys.push((k.clone(), *order));
                        }
                    }
                    self.sched
                        .handle_input(self.now, Input::KeysLoaded { gate, keys });
                }
                Effect::Start {
                    task,
                    gate,
                    attempt,
                    at,
                } => {
                    assert!(at >= self.now, "an attempt released in the past");
                    let t = self.tasks.get_mut(&task).expect("task exists");
                    assert_eq!(
                        t.place,
                        Place::Pending,
                        "started a task that was not pending"
                    );
                    assert!(
                        self.pending
                            .remove(&(gate, t.queued.key.clone(), t.queued.order())),
                        "pending key missing"
                    );
                    assert!(t.queued.due <= at, "released before due");
                    t.place = Place::Running;
                    t.slot = at;
                    t.queued.attempts = attempt;
                    t.queued.first_attempt_at.get_or_insert(self.now);
                    let latency = Duration::from_millis(1 + self.rng.below(400));
                    let outcome = match self.rng.below(10) {
                        0..=5 => Outcome::Succeeded,
                        6 => Outcome::Rejected,
                        7 => Outcome::Throttled {
                            retry_after: Some(Duration::from_millis(self.rng.below(1_000))),
                        },
                        8 => Outcome::Failed { retry_after: None },
                        // Refused by our own policy: neutral to the circuit.
                        _ if self.rng.below(2) == 0 => Outcome::Denied,
                        _ => Outcome::Failed { retry_after: None },
                    };
                    let e = self.epoch[&gate];
                    if self.rng.below(3) == 0 {
                        let asks = 1 + self.rng.below(4) as u32;
                        self.plugins.insert(
                            task,
                            PluginRun {
                                gate,
                                attempt,
                                waiting: asks,
                                requests: Vec::new(),
                                outcome,
                                abandon: self.rng.below(3) == 0,
                            },
                        );
                        for ask in 0..u64::from(asks) {
                            self.sched
                                .handle_input(self.now, Input::Ask { task, attempt, ask });
                        }
                    } else {
                        self.in_flight
                            .insert(task, (gate, at.plus(latency), outcome));
                    }
                    self.starts.entry(gate).or_default().push((at, e));
                    let key = self.tasks[&task].queued.key.clone();
                    self.key_starts.entry((gate, key)).or_default().push(at);
                }
                Effect::Requeue {
                    task,
                    gate,
                    due,
                    retry,
                } => {
                    assert_eq!(
                        retry,
                        !self.unsent.remove(&task),
                        "a start that never left is no retry, and only it"
                    );
                    let t = self.tasks.get_mut(&task).expect("task exists");
                    assert_eq!(t.place, Place::Running);
                    t.place = Place::Pending;
                    t.queued.due = due;
                    self.pending
                        .insert((gate, t.queued.key.clone(), (due, task)));
                }
                Effect::Finish { task, .. } => {
                    let t = self.tasks.get_mut(&task).expect("task exists");
                    assert_eq!(
                        t.place,
                        Place::Running,
                        "finished a task that was not running"
                    );
                    t.place = Place::Done;
                }
                Effect::LeaseExpired { .. } => {}
                Effect::Expire { task, gate, due } => {
                    let t = self.tasks.get_mut(&task).expect("task exists");
                    assert_eq!(t.place, Place::Pending);
                    assert!(
                        self.pending
                            .remove(&(gate, t.queued.key.clone(), (due, task)))
                    );
                    t.place = Place::Done;
                }
            }
        }
    }

    /// A pause keeps what the gate admitted ahead of its slot time (the
    /// runner reports it `Withdrawn`): those starts never leave, and their
    /// tasks go back to the queue.
    fn withdraw_ahead(&mut self, gate: GateId) {
        let now = self.now;
        let ahead: Vec<TaskId> = (self.in_flight.iter())
            .filter(|(id, v)| v.0 == gate && self.tasks[*id].slot > now)
            .map(|(&id, _)| id)
            .collect();
        for task in ahead {
            self.in_flight.remove(&task);
            let slot = self.tasks[&task].slot;
            let starts = self.starts.get_mut(&gate).expect("its start");
            let i = (starts.iter().rposition(|&(at, _)| at == slot)).expect("its start");
            starts.remove(i);
            let key = self.tasks[&task].queued.key.clone();
            let starts = (self.key_starts.get_mut(&(gate, key))).expect("its key's start");
            let i = starts
                .iter()
                .rposition(|&at| at == slot)
                .expect("its start");
            starts.remove(i);
            self.unsent.insert(task);
            let outcome = Outcome::Withdrawn;
            self.sched
                .handle_input(now, Input::AttemptEnded { task, outcome });
        }
        self.run_effects();
    }

    /// Jumps to the next event: an attempt ending or the scheduler's timer.
    fn advance(&mut self) {
        let next_end = self
            .in_flight
            .values()
            .map(|&(_, end, _)| end)
            .chain(
                self.plugins
                    .values()
                    .flat_map(|r| r.requests.iter().copied()),
            )
            .chain(self.orphans.iter().map(|o| o.3))
            .chain(self.notices.keys().next().map(|k| k.0))
            .min();
        let next = match (self.sched.poll_timeout(), next_end) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b).unwrap_or(self.now.plus(Duration::from_secs(1))),
        };
        self.now = self.now.max(next);
        self.notices_due();
        let ended: Vec<TaskId> = self
            .in_flight
            .iter()
            .filter(|(_, v)| v.1 <= self.now)
            .map(|(&k, _)| k)
            .collect();
        for task in ended {
            let (_, _, outcome) = self.in_flight.remove(&task).expect("in flight");
            self.sched
                .handle_input(self.now, Input::AttemptEnded { task, outcome });
            self.run_effects();
        }
        let plugins: Vec<TaskId> = self.plugins.keys().copied().collect();
        for task in plugins {
            let Some(run) = self.plugins.get_mut(&task) else {
                continue;
            };
            let (attempt, before) = (run.attempt, run.requests.len());
            let now = self.now;
            run.requests.retain(|&end| end > now);
            let ended = before - run.requests.len();
            let done = run.waiting == 0 && run.requests.is_empty();
            for _ in 0..ended {
                let signal = match self.rng.below(8) {
                    0 => Signal::Throttled {
                        retry_after: Some(Duration::from_millis(self.rng.below(500))),
                    },
                    1 => Signal::Failed,
                    2 => Signal::Neutral,
                    _ => Signal::Healthy,
                };
                self.sched.handle_input(
                    self.now,
                    Input::RequestEnded {
                        task,
                        attempt,
                        signal,
                    },
                );
            }
            let abandoned = !done && run.abandon && !run.requests.is_empty();
            if abandoned {
                let run = self.plugins.remove(&task).expect("plugin run");
                for end in run.requests {
                    self.orphans.push((task, run.attempt, run.gate, end));
                }
                self.sched.handle_input(
                    self.now,
                    Input::PluginEnded {
                        task,
                        outcome: run.outcome,
                    },
                );
            } else if done {
                let run = self.plugins.remove(&task).expect("plugin run");
                self.sched.handle_input(
                    self.now,
                    Input::PluginEnded {
                        task,
                        outcome: run.outcome,
                    },
                );
            }
            self.run_effects();
        }
        let now = self.now;
        let (ended, left) = std::mem::take(&mut self.orphans)
            .into_iter()
            .partition(|o| o.3 <= now);
        self.orphans = left;
        for (task, attempt, _, _) in ended {
            self.sched.handle_input(
                now,
                Input::RequestEnded {
                    task,
                    attempt,
                    signal: Signal::Healthy,
                },
            );
            self.run_effects();
        }
        self.sched.handle_timeout(self.now);
        self.run_effects();
    }

    fn check(&self) {
        for (&gate, &l) in &self.gates {
            let attempts = self.in_flight.values().filter(|v| v.0 == gate).count()
                + self.plugins.values().filter(|r| r.gate == gate).count();
            let extra: usize = self
                .plugins
                .values()
                .filter(|r| r.gate == gate)
                .map(|r| r.requests.len().saturating_sub(1))
                .sum();
            let orphans = self.orphans.iter().filter(|o| o.2 == gate).count();
            let n = attempts + extra + orphans;
            assert!(
                n as u32 <= l.concurrency.max(self.max_concurrency(gate)),
                "gate {gate:?}: {n} in flight"
            );
        }
        for (&gate, starts) in &self.starts {
            // Slot times, in order: admitted ahead, a start can precede one
            // admitted before it (the rate rose in between).
            let mut starts = starts.clone();
            starts.sort_unstable();
            // Every window between two starts, sliding: count ≤ burst + rate × T.
            for i in 0..starts.len() {
                let (mut e0, mut e1) = (starts[i].1, starts[i].1);
                for k in i..starts.len() {
                    let (t0, _) = starts[i];
                    let (t1, e) = starts[k];
                    // The epochs of every start in the window.
                    (e0, e1) = (e0.min(e), e1.max(e));
                    let (burst, rate) = self.bound(gate, e0, e1);
                    let span_s = t1.since(t0).as_secs_f64();
                    let count = (k - i + 1) as f64;
                    // Time is in whole milliseconds: allow one millisecond of rounding.
                    let allowed = f64::from(burst) + rate * (span_s + 0.001);
                    assert!(
                        count <= allowed + 1e-9,
                        "gate {gate:?}: {count} starts in {span_s}s, bound {allowed} (burst {burst}, rate {rate})"
                    );
                    if span_s > 3.0 {
                        break;
                    }
                }
            }
        }
        self.check_keys();
        for (id, t) in &self.tasks {
            let q = &t.queued;
            let pending = self
                .pending
                .contains(&(q.gate, q.key.clone(), (q.due, *id)));
            match t.place {
                Place::Pending => assert!(pending, "task {id:?} lost from pending"),
                Place::Running => assert!(!pending),
                Place::Done => assert!(!pending),
            }
        }
    }

    /// Each key's cap and window bound, under its gate's fixed policy.
    fn check_keys(&self) {
        let key_of = |task: &TaskId| self.tasks[task].queued.key.clone();
        let mut held: BTreeMap<(GateId, TaskKey), usize> = BTreeMap::new();
        for (task, v) in &self.in_flight {
            *held.entry((v.0, key_of(task))).or_default() += 1;
        }
        for (task, r) in &self.plugins {
            *held.entry((r.gate, key_of(task))).or_default() += r.requests.len().max(1);
        }
        for o in &self.orphans {
            *held.entry((o.2, key_of(&o.0))).or_default() += 1;
        }
        for ((gate, key), n) in held {
            let Some(policy) = self.policies.get(&gate) else {
                continue;
            };
            if let Some(cap) = policy.limits(&key).concurrency {
                assert!(
                    n as u32 <= cap,
                    "gate {gate:?} key {key:?}: {n} in flight, cap {cap}"
                );
            }
        }
        for ((gate, key), starts) in &self.key_starts {
            let Some(policy) = self.policies.get(gate) else {
                continue;
            };
            let limits = policy.limits(key);
            let Some(rate) = limits.rate else {
                continue;
            };
            let mut starts = starts.clone();
            starts.sort_unstable();
            for i in 0..starts.len() {
                for k in i..starts.len() {
                    let span_s = starts[k].since(starts[i]).as_secs_f64();
                    let allowed = f64::from(limits.burst) + rate.as_per_second() * (span_s + 0.001);
                    let count = (k - i + 1) as f64;
                    assert!(
                        count <= allowed + 1e-9,
                        "gate {gate:?} key {key:?}: {count} starts in {span_s}s, bound {allowed}"
                    );
                    if span_s > 3.0 {
                        break;
                    }
                }
            }
        }
    }

    fn max_concurrency(&self, gate: GateId) -> u32 {
        self.epochs
            .iter()
            .filter(|((g, _), _)| *g == gate)
            .map(|(_, l)| l.concurrency)
            .max()
            .unwrap_or(1)
    }

    /// Windows inside one config epoch use its limits; windows across a change use
    /// the largest burst and rate involved.
    fn bound(&self, gate: GateId, e0: u32, e1: u32) -> (u32, f64) {
        let mut burst = 0;
        let mut rate: f64 = 0.0;
        for e in e0..=e1 {
            let l = self.epochs[&(gate, e)];
            burst = burst.max(l.burst);
            rate = rate.max(l.rate.as_per_second());
        }
        if e1 > e0 {
            // A change keeps the debt owed, but a larger bucket may fill at once.
            burst *= 2;
        }
        (burst, rate)
    }
}

fn simulate(seed: u64, steps: usize, tuning: Tuning) -> World {
    let mut w = World::with_keys(seed, tuning, seed.is_multiple_of(2));
    for _ in 0..steps {
        match w.rng.below(100) {
            0..=39 => w.create(),
            40..=41 => {
                let gate = GateId(w.rng.below(3) as u32);
                let l = limits(&mut w.rng);
                w.set_gate(gate, l);
            }
            42 => {
                let gate = GateId(w.rng.below(3) as u32);
                if w.paused.insert(gate) {
                    w.sched.handle_input(w.now, Input::Pause(gate));
                    w.withdraw_ahead(gate);
                } else {
                    w.paused.remove(&gate);
                    w.sched.handle_input(w.now, Input::Resume(gate));
                }
                w.run_effects();
            }
            43 => w.restart(),
            44 => {
                let gate = GateId(w.rng.below(3) as u32);
                w.hand_over(gate);
            }
            // The engine grows and shrinks the lookahead with its turns'
            // times (`core::lookahead`): starts admitted under one keep
            // their slots under the next.
            45 => {
                let lookahead = Duration::from_millis(w.rng.below(300));
                w.sched.set_lookahead(lookahead);
            }
            _ => w.advance(),
        }
        w.check();
    }
    // Drain: resume everything and run until nothing is left to do.
    for gate in w.paused.clone() {
        w.sched.handle_input(w.now, Input::Resume(gate));
    }
    w.paused.clear();
    for _ in 0..100_000 {
        if w.tasks.values().all(|t| t.place == Place::Done) {
            break;
        }
        w.advance();
    }
    w.check();
    assert!(
        w.tasks.values().all(|t| t.place == Place::Done),
        "some tasks never finished"
    );
    w
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn gate_invariant_holds_under_random_workloads(seed: u64) {
        let lookahead = Duration::from_millis(seed % 60);
        simulate(seed, 600, Tuning { lookahead, ..Tuning::default() });
    }

    /// A tiny memory window forces constant loading from "disk": the order and
    /// completeness must not suffer.
    #[test]
    fn small_windows_lose_nothing(seed: u64) {
        simulate(
            seed,
            400,
            Tuning {
                window: 4,
                key_budget: 4,
                horizon: Duration::from_millis(500),
                lookahead: Duration::from_millis(seed % 60),
                lookahead_max: Duration::from_millis(seed % 60),
            },
        );
    }
}

/// Due order within a gate: with one slot, tasks start strictly by due time.
#[test]
fn a_gate_starts_tasks_in_due_order() {
    let mut w = World::new(
        7,
        Tuning {
            window: 4,
            key_budget: 4,
            horizon: Duration::from_secs(1),
            lookahead: Duration::ZERO,
            lookahead_max: Duration::ZERO,
        },
    );
    let l = GateLimits {
        rate: Rate::per_second(1000.0).expect("rate"),
        burst: 1,
        concurrency: 1,
        recovery: Recovery {
            start: 1.0,
            over: Duration::ZERO,
        },
        circuit: None,
        quota_headers: true,
        priority_aging: Duration::from_secs(60),
        adaptive: None,
    };
    w.set_gate(GateId(0), l);
    for _ in 0..50 {
        w.create();
    }
    let mut order = Vec::new();
    for _ in 0..10_000 {
        let before: BTreeSet<TaskId> = w.in_flight.keys().copied().collect();
        w.advance();
        for (id, v) in &w.in_flight {
            if v.0 == GateId(0) && !before.contains(id) {
                order.push(w.tasks[id].queued.clone());
            }
        }
        if w.tasks.values().all(|t| t.place == Place::Done) {
            break;
        }
    }
    let firsts: Vec<Timestamp> = order
        .iter()
        .filter(|q| q.attempts == 1)
        .map(|q| q.due)
        .collect();
    assert!(
        firsts.windows(2).all(|p| p[0] <= p[1]),
        "first attempts out of due order"
    );
}

type Disk = BTreeSet<(TaskKey, Order)>;

/// Enqueues `n` tasks of `key` due `now`, on the "disk" first.
fn add_tasks(
    core: &mut Scheduler,
    (disk, tasks): (&mut Disk, &mut BTreeMap<TaskId, QueuedTask>),
    next_id: &mut u64,
    key: &str,
    n: usize,
    now: Timestamp,
) {
    for _ in 0..n {
        let task = QueuedTask {
            id: TaskId(*next_id),
            gate: GateId(0),
            key: Some(Arc::from(key)),
            priority: DEFAULT_PRIORITY,
            due: now,
            ahead_ms: 0,
            attempts: 0,
            first_attempt_at: None,
            expires_at: None,
            policy: RetryPolicy {
                max_attempts: 1,
                backoff: super::super::retry::Backoff::default(),
                max_retry_duration: None,
            },
        };
        *next_id += 1;
        disk.insert((task.key.clone(), task.order()));
        tasks.insert(task.id, task.clone());
        core.handle_input(now, Input::Enqueue(task));
    }
}

/// A gate with one heavy key and ten light ones, driven to the end with
/// attempts that succeed at once: returns each task's key and release
/// instant, in order.
fn fair_run(policy: Option<KeyPolicy>, heavy: usize, light: usize) -> Vec<(TaskKey, Timestamp)> {
    let gate = GateId(0);
    let mut core = Scheduler::new(1, Tuning::default());
    let t0 = Timestamp(1_700_000_000_000);
    let limits = GateLimits {
        rate: Rate::per_second(100.0).expect("rate"),
        burst: 1,
        concurrency: 10_000,
        recovery: Recovery {
            start: 1.0,
            over: Duration::ZERO,
        },
        circuit: None,
        quota_headers: false,
        priority_aging: Duration::from_secs(60),
        adaptive: None,
    };
    let mut disk: Disk = BTreeSet::new();
    let mut tasks: BTreeMap<TaskId, QueuedTask> = BTreeMap::new();
    let mut starts = Vec::new();
    let mut next_id = 1;
    let mut now = t0;
    core.handle_input(
        now,
        Input::UpsertGate {
            gate,
            limits,
            keys: policy.map(Arc::new),
            paused: false,
            ramp: false,
        },
    );
    let lights: Vec<String> = (0..10).map(|k| format!("light-{k}")).collect();
    let mut added_lights = false;
    for _ in 0..1_000_000 {
        if !added_lights && now >= t0.plus(Duration::from_secs(1)) {
            for key in &lights {
                add_tasks(
                    &mut core,
                    (&mut disk, &mut tasks),
                    &mut next_id,
                    key,
                    light,
                    now,
                );
            }
            added_lights = true;
        }
        if now == t0 {
            add_tasks(
                &mut core,
                (&mut disk, &mut tasks),
                &mut next_id,
                "heavy",
                heavy,
                now,
            );
        }
        core.handle_timeout(now);
        while let Some(effect) = core.poll_effect() {
            match effect {
                Effect::LoadKeys { gate } => {
                    let mut keys: Vec<(TaskKey, Order)> = Vec::new();
                    for (k, order) in &disk {
                        if keys.last().is_none_or(|(last, _)| last != k) {
                            keys.push((k.clone(), *order));
                        }
                    }
                    core.handle_input(now, Input::KeysLoaded { gate, keys });
                }
                Effect::Load {
                    gate,
                    key,
                    from,
                    until,
                    limit,
                } => {
                    let mut loaded = Vec::new();
                    let mut next = None;
                    for (k, order) in disk.range((key.clone(), from)..) {
                        if *k != key {
                            break;
                        }
                        if loaded.len() >= limit || order.0 > until {
                            next = Some(*order);
                            break;
                        }
                        loaded.push(tasks[&order.1].clone());
                    }
                    core.handle_input(
                        now,
                        Input::Loaded {
                            gate,
                            key,
                            tasks: loaded,
                            next,
                        },
                    );
                }
                Effect::Start { task, at, .. } => {
                    let q = &tasks[&task];
                    assert!(disk.remove(&(q.key.clone(), q.order())));
                    starts.push((q.key.clone(), at));
                    core.handle_input(
                        now,
                        Input::AttemptEnded {
                            task,
                            outcome: Outcome::Succeeded,
                        },
                    );
                }
                Effect::Finish { .. } => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        if starts.len() == heavy + 10 * light {
            break;
        }
        let next = core
            .poll_timeout()
            .unwrap_or(now.plus(Duration::from_millis(1)));
        now = next
            .max(now.plus(Duration::from_millis(1)))
            .min(if added_lights {
                Timestamp(u64::MAX)
            } else {
                t0.plus(Duration::from_secs(1))
            });
    }
    assert_eq!(starts.len(), heavy + 10 * light, "every task started");
    starts
}

/// Fair share: a key with 5,000 overdue tasks delays another key's first
/// task by about (active keys ÷ gate rate), not by its backlog, and the
/// light keys are done in about their share of the gate.
#[test]
fn a_backlog_of_one_key_does_not_hold_up_the_others() {
    let starts = fair_run(None, 5_000, 10);
    let t_lights = starts
        .iter()
        .find(|(k, _)| k.as_deref() != Some("heavy"))
        .map(|&(_, at)| at)
        .expect("a light key started");
    let lights: Vec<Timestamp> = starts
        .iter()
        .filter(|(k, _)| k.as_deref() != Some("heavy"))
        .map(|&(_, at)| at)
        .collect();
    let first_heavy = starts[0].1;
    // The light keys came at 1 s; eleven keys at 100/s: each key's first
    // start within 11 slots of 10 ms (and the lookahead).
    let came = first_heavy.plus(Duration::from_secs(1));
    for key in 0..10 {
        let name = format!("light-{key}");
        let first = starts
            .iter()
            .find(|(k, _)| k.as_deref() == Some(name.as_str()))
            .map(|&(_, at)| at)
            .expect("every light key started");
        let wait = first.since(came);
        assert!(wait <= Duration::from_millis(140), "{name} waited {wait:?}");
    }
    // 100 light tasks share the gate with the heavy key: 11 starts per
    // round, ten rounds, about 1.1 s.
    let last = *lights.last().expect("light tasks");
    assert!(
        last.since(came) <= Duration::from_millis(1_250),
        "the light keys took {:?}",
        last.since(came)
    );
    assert!(t_lights >= came);
    // The gate's own bound held throughout: 100/s, burst 1.
    let mut all: Vec<Timestamp> = starts.iter().map(|&(_, at)| at).collect();
    all.sort_unstable();
    for pair in all.windows(2) {
        assert!(pair[1].since(pair[0]) >= Duration::from_millis(10));
    }
}

/// Weights split the gate: a key of weight 4 gets four starts to each one of
/// a key of weight 1 while both have work.
#[test]
fn weights_split_the_gate() {
    let mut policy = KeyPolicy::default();
    policy.overrides.insert(
        Arc::from("heavy"),
        KeyLimits {
            weight: 4,
            ..KeyLimits::default()
        },
    );
    let starts = fair_run(Some(policy), 2_000, 40);
    let came = starts[0].1.plus(Duration::from_secs(1));
    // While the light keys have work, count what the heavy key got.
    let last_light = starts
        .iter()
        .filter(|(k, _)| k.as_deref() != Some("heavy"))
        .map(|&(_, at)| at)
        .max()
        .expect("light tasks");
    let (mut heavy, mut light) = (0, 0);
    for (k, at) in &starts {
        if *at >= came && *at <= last_light {
            if k.as_deref() == Some("heavy") {
                heavy += 1;
            } else {
                light += 1;
            }
        }
    }
    // Ten light keys of weight 1, one heavy of weight 4: 4 of every 14.
    let share = f64::from(heavy) / f64::from(heavy + light);
    assert!((share - 4.0 / 14.0).abs() < 0.03, "heavy share {share}");
}

/// Thousands of keys at once, with crashes: 3,000 tasks over 2,000 keys in
/// three gates with per-key limits, the windows shrunk to their floor. Every
/// task ends, and the bound and cap hold for every gate and every key.
#[test]
fn thousands_of_keys_keep_their_bounds_across_crashes() {
    let tuning = Tuning {
        key_budget: 64,
        ..Tuning::default()
    };
    let mut w = World::with_keys(17, tuning, true);
    w.key_names = 2_000;
    for round in 0..30 {
        for _ in 0..100 {
            w.create();
        }
        for _ in 0..200 {
            w.advance();
        }
        if round % 10 == 9 {
            w.restart();
        }
        w.check();
    }
    for _ in 0..200_000 {
        if w.tasks.values().all(|t| t.place == Place::Done) {
            break;
        }
        w.advance();
    }
    w.check();
    assert!(
        w.tasks.values().all(|t| t.place == Place::Done),
        "some tasks never finished"
    );
    let keys: BTreeSet<&TaskKey> = w.key_starts.keys().map(|(_, k)| k).collect();
    assert!(keys.len() > 1_000, "{} keys started", keys.len());
}
