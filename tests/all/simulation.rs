//! Deterministic simulation: the real shell engine, the real core and the real
//! store (on redb's in-memory backend), driven on a simulated clock against a
//! simulated endpoint that fails, throttles with `Retry-After`, slows down and
//! goes down for long stretches, while the server crashes and restarts
//! and gates are handed over to another node's engine (stopped, drained
//! for a while, dropped, then taken up empty as a takeover does, with what
//! was still out held until its timeout).
//!
//! Each turn's releases go through the engine's pacer (`Engine::release`)
//! with a commit that is sometimes done late, and a third of the tasks are
//! plugin runs whose requests ask the engine for permits, some ending their
//! attempt while requests still wait or are still out. After every turn it
//! checks the gate invariant over the paced release times of attempts and
//! requests together (every window, including the ramp after each restart)
//! and the concurrency cap; at the end, that no
//! acknowledged task was lost, that no schedule occurrence ran twice or
//! overlapped another, that the misfire policies held, and that the circuit
//! kept a dead endpoint nearly untouched (by attempts and plugin requests
//! alike).
//!
//! Replay a failure with the seed it prints: `SIM_SEED=<seed> cargo test --test all simulation`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use sluice::attempt::{Plan, Report};
use sluice::core::rng::Rng;
use sluice::core::schedule::{Misfire, jitter_offset};
use sluice::core::units::Units;
use sluice::core::{
    Backoff, CircuitPolicy, Outcome, Rate, Recovery, RetryPolicy, TaskId, Timestamp, Tuning,
};
use sluice::model::{GateSpec, NewTask, PluginCall, ScheduleSpec, Target};
use sluice::shell::{Callback, Command, Engine, Released, ShellError, Start};
use sluice::store::{PluginRecord, Reads, Store, TaskState};
use tokio::sync::oneshot;

const GATES: usize = 3;

#[derive(Clone, Copy, Debug)]
struct GateConf {
    rate: f64,
    burst: u32,
    concurrency: u32,
    start: f64,
    over_ms: u64,
    failures: u32,
    cooldown_ms: u64,
}

/// A stretch during which a gate's endpoint answers 503.
#[derive(Clone, Copy, Debug)]
struct Outage {
    gate: usize,
    from: u64,
    until: u64,
}

/// Long-running work held by the simulated endpoint.
#[derive(Clone, Debug)]
struct Lease {
    gate: usize,
    task: TaskId,
    token: String,
    /// When the lease runs out, as granted.
    until: u64,
    lease_ms: u64,
    action: LeaseAction,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum LeaseAction {
    Complete,
    Fail,
    Heartbeat,
}

/// A plugin attempt at work: its requests ask for permits one by one.
#[derive(Clone, Debug)]
struct Run {
    gate: usize,
    attempt: u32,
    /// Requests asked for and not yet let out.
    waiting: u32,
    /// Requests let out and not yet answered.
    out: u32,
    /// The attempt ends as soon as its requests are asked for, whatever
    /// becomes of them (a plugin that gives up, or one that times out).
    abandon: bool,
    /// The engine has the attempt's report.
    reported: bool,
    /// The report is on its way.
    ending: bool,
}

#[derive(Clone, Debug)]
enum PluginEvent {
    /// The plugin, released, asks for `count` requests.
    Asks { task: TaskId, count: u32 },
    /// One of its requests is answered.
    Answered { task: TaskId, throttled: bool },
    /// Its attempt ends.
    Ends { task: TaskId },
}

struct World {
    seed: u64,
    rng: Rng,
    now: Timestamp,
    store: Arc<Store>,
    engine: Option<Engine>,
    tuning: Tuning,
    gates: Vec<GateConf>,
    outages: Vec<Outage>,
    /// Attempts at the endpoint, by when they end.
    in_flight: BTreeMap<(u64, u64), (usize, Report)>,
    /// Leased attempts the endpoint holds: when it acts, and how.
    leased: BTreeMap<(u64, u64), Lease>,
    /// Reports on leased work the engine accepted, and refused (late ones).
    lease_reports: (u64, u64),
    seq: u64,
    /// Per gate: every start time.
    starts: Vec<Vec<u64>>,
    boots: Vec<u64>,
    /// Per gate: when its bucket last started empty (a boot, or taken up
    /// after a handover), and how many starts came before.
    fresh: Vec<Option<u64>>,
    before_boot: Vec<usize>,
    /// Per gate: how often it was handed over.
    handovers: Vec<u64>,
    /// Attempts still out when their gate was handed over: their answers
    /// go to the old owner, which has let the gate go.
    ghosts: BTreeSet<(TaskId, u32)>,
    /// How many attempts were out at a handover, all told.
    ghosted: u64,
    acked: BTreeSet<u64>,
    /// Occurrence key → task ids that ran under it.
    occurrences: BTreeMap<String, BTreeSet<u64>>,
    /// Task → the schedule it is an occurrence of.
    occurrence_of: BTreeMap<u64, String>,
    /// Per gate: attempts and plugin requests that reached the endpoint
    /// while it was down.
    dead_hits: Vec<u64>,
    turns: u64,
    /// Plugin attempts at work, by task.
    runs: BTreeMap<TaskId, Run>,
    /// What the plugins do next, by when.
    plugin_events: BTreeMap<(u64, u64), PluginEvent>,
    /// Plugin requests let out, per gate.
    requests: Vec<u64>,
    /// Turns whose commit was done late.
    late_commits: u64,
    /// Most task records the engine kept from one turn to the next (all
    /// checked against the store every sixteenth turn).
    kept_most: usize,
}

fn url(gate: usize) -> String {
    format!("http://127.0.0.1:9/g{gate}")
}

/// When a release `after` the commit done at `done` leaves, in whole
/// milliseconds rounded up (the window check allows that millisecond).
fn leaves(done: Timestamp, after: Duration) -> u64 {
    done.as_ms() + after.as_micros().div_ceil(1_000) as u64
}

fn gate_index(plan: &Plan) -> usize {
    plan.gate.trim_start_matches('g').parse().unwrap_or(0)
}

/// A webhook task of gate `g{gate}`, due at `due`, with every default.
fn webhook_task(gate: usize, due: Timestamp) -> NewTask {
    crate::support::engine_task(&format!("g{gate}"), &url(gate), due)
}

/// The report of an attempt that succeeded at `at`, `latency_ms` after it
/// left.
fn succeeded(task: TaskId, attempt: u32, at: Timestamp, latency_ms: u64) -> Report {
    Report {
        task,
        attempt,
        outcome: Outcome::Succeeded,
        ended_at: at,
        status: Some(200),
        latency_ms,
        error: None,
        timed_out: false,
        response: None,
        lease: None,
        quota: None,
        logs: Vec::new(),
        next: Vec::new(),
    }
}

/// A simulated gate's spec; `keyed`: each key limited to two at once.
fn gate_spec(c: GateConf, keyed: bool) -> GateSpec {
    GateSpec {
        rate: Rate::per_second(c.rate).expect("rate"),
        burst: c.burst,
        concurrency: c.concurrency,
        allowed_hosts: vec!["127.0.0.1:9".into()],
        accept_next_from: Vec::new(),
        quota_headers: true,
        adaptive: None,
        priority_aging: None,
        keys: keyed.then(|| sluice::store::KeysRecord {
            limits: sluice::store::KeyLimitsRecord {
                concurrency: Some(2),
                ..Default::default()
            },
            ..Default::default()
        }),
        timeout: Duration::from_secs(5),
        retry: RetryPolicy {
            max_attempts: 50,
            backoff: Backoff {
                initial: Duration::from_millis(500),
                max: Duration::from_secs(60),
                multiplier: 2.0,
                jitter: true,
            },
            max_retry_duration: None,
        },
        recovery: Recovery {
            start: c.start,
            over: Duration::from_millis(c.over_ms),
        },
        signing_secrets: None,
        circuit: Some(CircuitPolicy {
            failures: c.failures,
            cooldown: Duration::from_millis(c.cooldown_ms),
            max_cooldown: Duration::from_millis(c.cooldown_ms * 4),
        }),
    }
}

impl World {
    fn new(seed: u64) -> World {
        let mut rng = Rng::new(seed);
        let tuning = Tuning {
            window: 2 + rng.below(64) as usize,
            key_budget: 2 + rng.below(64) as usize,
            horizon: Duration::from_millis(500 + rng.below(30_000)),
            lookahead: Duration::from_millis(rng.below(50)),
            lookahead_max: Duration::from_millis(50 + rng.below(300)),
        };
        let gates = (0..GATES)
            .map(|_| GateConf {
                rate: [0.5, 2.0, 5.0, 20.0, 50.0][rng.below(5) as usize],
                burst: 1 + rng.below(5) as u32,
                concurrency: 1 + rng.below(10) as u32,
                start: [0.1, 0.5, 1.0][rng.below(3) as usize],
                over_ms: 1_000 + rng.below(60_000),
                failures: 2 + rng.below(4) as u32,
                cooldown_ms: 2_000 + rng.below(20_000),
            })
            .collect();
        let now = Timestamp(1_767_225_600_000); // 2026-01-01T00:00:00Z
        let store = Arc::new(Store::in_memory().expect("store"));
        let engine = Engine::boot(store.clone(), tuning, now, rng.next_u64()).expect("boot");
        let mut w = World {
            seed,
            rng,
            now,
            store,
            engine: Some(engine),
            tuning,
            gates,
            outages: Vec::new(),
            in_flight: BTreeMap::new(),
            leased: BTreeMap::new(),
            lease_reports: (0, 0),
            seq: 0,
            starts: vec![Vec::new(); GATES],
            boots: Vec::new(),
            fresh: vec![None; GATES],
            before_boot: vec![0; GATES],
            handovers: vec![0; GATES],
            ghosts: BTreeSet::new(),
            ghosted: 0,
            acked: BTreeSet::new(),
            occurrences: BTreeMap::new(),
            occurrence_of: BTreeMap::new(),
            dead_hits: vec![0; GATES],
            turns: 0,
            runs: BTreeMap::new(),
            plugin_events: BTreeMap::new(),
            requests: vec![0; GATES],
            late_commits: 0,
            kept_most: 0,
        };
        let (tx, rx) = oneshot::channel();
        w.turn(
            vec![Command::PutPlugin {
                upload: Box::new(sluice::shell::plugins::Upload {
                    record: PluginRecord {
                        name: "sim".into(),
                        version: "1.0.0".into(),
                        size: 1,
                        sha256: "00".into(),
                        uploaded_at: 0,
                        imports: Vec::new(),
                        unfinished: 0,
                        memory_mib: None,
                    },
                    wasm: vec![0],
                    artifact: vec![0],
                    engine: 0,
                }),
                reply: tx,
            }],
            Vec::new(),
        );
        rx.blocking_recv().expect("reply").expect("plugin stored");
        for g in 0..GATES {
            // Half the gates limit each key; all share by key.
            let spec = gate_spec(w.gates[g], g % 2 == 0);
            let (tx, rx) = oneshot::channel();
            w.turn(
                vec![Command::PutGate {
                    name: format!("g{g}"),
                    spec: Box::new(spec),
                    reply: tx,
                }],
                Vec::new(),
            );
            rx.blocking_recv().expect("reply").expect("gate created");
        }
        let every = |secs| Some(Duration::from_secs(secs));
        let schedules = [
            ("every-all", None, every(10), Misfire::All, 0),
            ("cron-skip", Some("*/7 * * * * *"), None, Misfire::Skip, 0),
            ("every-once", None, every(30), Misfire::Once, 0),
            // Its offset (11 s of the 25) is longer than its period: each
            // occurrence runs after the next one's time, which is not missed
            // until its own run's time has passed.
            ("jitter-skip", None, every(10), Misfire::Skip, 25),
        ];
        for (i, (name, cron, every, misfire, jitter)) in schedules.into_iter().enumerate() {
            let spec = ScheduleSpec {
                cron: cron.map(String::from),
                timezone: "UTC".into(),
                every,
                misfire,
                catchup_limit: 10_000,
                jitter: Duration::from_secs(jitter),
                template: w.new_task(i % GATES, Timestamp(0)),
            };
            let (tx, rx) = oneshot::channel();
            w.turn(
                vec![Command::PutSchedule {
                    name: name.into(),
                    spec: Box::new(spec),
                    reply: tx,
                }],
                Vec::new(),
            );
            rx.blocking_recv()
                .expect("reply")
                .expect("schedule created");
        }
        w
    }

    fn new_task(&self, gate: usize, due: Timestamp) -> NewTask {
        let mut task = webhook_task(gate, due);
        // A third of the tasks (none of the schedules' templates) run a plugin.
        if due.as_ms() != 0 && (due.as_ms() / 7).is_multiple_of(3) {
            task.target = Target::Plugin(PluginCall {
                name: "sim".into(),
                version: "1.0.0".into(),
                input: serde_json::Value::Null,
            });
        }
        // Tasks of a few keys, and some without.
        task.key = ["a", "b", "c"]
            .get((due.as_ms() % 4) as usize)
            .map(|k| (*k).to_owned());
        task.priority = Some((due.as_ms() % 10) as u8);
        task
    }

    fn engine(&mut self) -> &mut Engine {
        self.engine.as_mut().expect("engine running")
    }

    fn turn(&mut self, commands: Vec<Command>, reports: Vec<Report>) {
        let now = self.now;
        let plans = self
            .engine()
            .turn(now, commands, reports)
            .expect("turn commits");
        self.turns += 1;
        // A record kept wrongly stays wrong until a turn takes it: looking
        // every few turns finds it, at a sixteenth of the reads.
        if self.turns.is_multiple_of(16) {
            let kept = self.engine().kept_as_committed().unwrap_or_else(|e| {
                panic!("seed {}: a kept record is not the store's: {e}", self.seed)
            });
            self.kept_most = self.kept_most.max(kept);
        }
        // Most commits are done within the millisecond; some take long
        // enough that slot times pass while they run.
        let late = match self.rng.below(10) {
            0..=6 => 0,
            7 | 8 => self.rng.below(5),
            _ => self.rng.below(60),
        };
        self.late_commits += u64::from(late > 0);
        let done = Timestamp(now.as_ms() + late);
        let Released { attempts, grants } = self.engine().release(done, plans);
        for (after, plan) in attempts {
            let at = leaves(done, after);
            assert!(
                at >= plan.release_at.as_ms(),
                "seed {}: released before its slot time",
                self.seed
            );
            self.start(plan, at);
        }
        for (after, grant) in grants {
            let at = leaves(done, after);
            self.grant(grant, at);
        }
        self.check_gates();
    }

    /// Starts of attempts and requests, per gate, in order.
    fn started(&mut self, g: usize, at: u64) {
        let pos = self.starts[g].partition_point(|&t| t <= at);
        self.starts[g].insert(pos, at);
    }

    /// Slots a gate's plugin runs hold: an attempt its own until the engine
    /// has its report, and each request out one (the first in the
    /// attempt's).
    fn plugin_slots(&self, g: usize) -> u32 {
        self.runs
            .values()
            .filter(|r| r.gate == g)
            .map(|r| if r.reported { r.out } else { r.out.max(1) })
            .sum()
    }

    /// A plugin request let out at `at`.
    fn grant(&mut self, grant: sluice::shell::Grant, at: u64) {
        let seed = self.seed;
        assert!(
            at >= self.now.as_ms(),
            "seed {seed}: a request let out in the past"
        );
        let run = self
            .runs
            .get_mut(&grant.task)
            .unwrap_or_else(|| panic!("seed {seed}: a permit for no plugin run"));
        assert_eq!(
            run.attempt, grant.attempt,
            "seed {seed}: a permit for another attempt"
        );
        assert!(
            !run.reported,
            "seed {seed}: a permit for an attempt that ended"
        );
        assert!(run.waiting > 0, "seed {seed}: a permit nobody asked for");
        run.waiting -= 1;
        run.out += 1;
        let g = run.gate;
        self.requests[g] += 1;
        self.started(g, at);
        let latency = 1 + self.rng.below(300);
        let down = self.down(g, at);
        if down {
            self.dead_hits[g] += 1;
        }
        let throttled = down || self.rng.below(20) == 0;
        self.seq += 1;
        self.plugin_events.insert(
            (at + latency, self.seq),
            PluginEvent::Answered {
                task: grant.task,
                throttled,
            },
        );
        self.check_slots(g, at);
    }

    /// A lease holds a slot once its 202 has reached the engine (until then
    /// the attempt is counted as in flight).
    fn check_slots(&self, g: usize, now: u64) {
        let held = self
            .leased
            .values()
            .filter(|l| {
                l.gate == g
                    && l.until > now
                    && !self.in_flight.values().any(|(_, r)| r.task == l.task)
            })
            .count() as u32;
        let in_flight = self
            .in_flight
            .values()
            .filter(|(gate, _)| *gate == g)
            .count() as u32
            + held
            + self.plugin_slots(g);
        assert!(
            in_flight <= self.gates[g].concurrency,
            "seed {}: gate g{g} has {in_flight} in flight, cap {}",
            self.seed,
            self.gates[g].concurrency
        );
    }

    /// What a plugin does at its time: asks, is answered, ends.
    fn plugin_event(&mut self, event: PluginEvent, reports: &mut Vec<Report>) {
        let now = self.now;
        let task = match event {
            PluginEvent::Asks { task, .. }
            | PluginEvent::Answered { task, .. }
            | PluginEvent::Ends { task } => task,
        };
        match event {
            PluginEvent::Asks { count, .. } => {
                let Some(run) = self.runs.get(&task) else {
                    return;
                };
                let attempt = run.attempt;
                for ask in 0..u64::from(count) {
                    let asked = self.engine().ask(now, task, attempt, ask);
                    assert!(
                        asked,
                        "seed {}: a running attempt's request refused",
                        self.seed
                    );
                }
                if let Some(run) = self.runs.get_mut(&task) {
                    run.waiting += count;
                    if run.abandon {
                        let end = now.as_ms() + self.rng.below(200);
                        self.seq += 1;
                        self.plugin_events
                            .insert((end, self.seq), PluginEvent::Ends { task });
                        run.ending = true;
                    }
                }
            }
            PluginEvent::Answered { throttled, .. } => {
                let Some(run) = self.runs.get_mut(&task) else {
                    return;
                };
                run.out -= 1;
                let attempt = run.attempt;
                let signal = if throttled {
                    sluice::core::Signal::Throttled { retry_after: None }
                } else {
                    sluice::core::Signal::Healthy
                };
                self.engine().request_ended(
                    now,
                    task,
                    attempt,
                    signal,
                    Some((Duration::from_millis(5), None)),
                );
            }
            PluginEvent::Ends { .. } => {
                let Some(run) = self.runs.get_mut(&task) else {
                    return;
                };
                run.reported = true;
                reports.push(Report {
                    status: None,
                    ..succeeded(task, run.attempt, now, 1)
                });
            }
        }
        // A run that asked for everything and had it answered ends; one
        // whose attempt ended is forgotten once its last request is back.
        let Some(run) = self.runs.get_mut(&task) else {
            return;
        };
        if run.reported && run.out == 0 {
            self.runs.remove(&task);
        } else if !run.ending && run.waiting == 0 && run.out == 0 {
            run.ending = true;
            self.seq += 1;
            self.plugin_events.insert(
                (now.as_ms() + self.rng.below(3), self.seq),
                PluginEvent::Ends { task },
            );
        }
    }

    fn down(&self, gate: usize, at: u64) -> bool {
        self.outages
            .iter()
            .any(|o| o.gate == gate && o.from <= at && at < o.until)
    }

    /// The simulated endpoint decides how the attempt ends, and when.
    fn start(&mut self, plan: Plan, now: u64) {
        let g = gate_index(&plan);
        // The attempt leaves at `now`: its slot time (the turn's `now`, or a
        // little after when admitted ahead of its token), or later when the
        // pacer holds it back after a late commit.
        assert!(now >= self.now.as_ms(), "released in the past");
        // Started ahead of its due time (within the lookahead), it still
        // leaves no earlier than that.
        let due = self.store.read().and_then(|r| r.task(plan.task.0));
        let due = due.ok().flatten().map(|t| t.due_at);
        assert!(
            due.is_some_and(|due| now >= due),
            "seed {}: task {} released at {now}, before it was due ({due:?})",
            self.seed,
            plan.task.0
        );
        self.started(g, now);
        if matches!(plan.action, sluice::attempt::Action::Plugin(_)) {
            let run = Run {
                gate: g,
                attempt: plan.attempt,
                waiting: 0,
                out: 0,
                abandon: self.rng.below(4) == 0,
                reported: false,
                ending: false,
            };
            self.runs.insert(plan.task, run);
            let count = 1 + self.rng.below(4) as u32;
            self.seq += 1;
            self.plugin_events.insert(
                (now + self.rng.below(5), self.seq),
                PluginEvent::Asks {
                    task: plan.task,
                    count,
                },
            );
            self.check_slots(g, now);
            return;
        }
        if let Some(schedule) = &plan.schedule {
            // One occurrence at a time: no other occurrence of this schedule may
            // be at the endpoint now.
            let busy = self.in_flight.values().any(|(_, r)| {
                r.task != plan.task && self.occurrence_of.get(&r.task.0) == Some(schedule)
            });
            assert!(
                !busy,
                "seed {}: two occurrences of {schedule} overlap",
                self.seed
            );
            self.occurrence_of.insert(plan.task.0, schedule.clone());
            self.occurrences
                .entry(plan.idempotency_key.clone())
                .or_default()
                .insert(plan.task.0);
        }
        let slow = self.rng.below(10) == 0;
        let latency = 1 + self.rng.below(if slow { 4_000 } else { 300 });
        let mut lease = None;
        let (outcome, status) = if self.down(g, now) {
            self.dead_hits[g] += 1;
            (Outcome::Throttled { retry_after: None }, 503)
        } else {
            match self.rng.below(20) {
                0 => (Outcome::Failed { retry_after: None }, 500),
                1 => (
                    Outcome::Throttled {
                        retry_after: Some(Duration::from_millis(self.rng.below(5_000))),
                    },
                    429,
                ),
                2 => (Outcome::Rejected, 404),
                3..=4 => {
                    lease = Some(Duration::from_millis(1_000 + self.rng.below(60_000)));
                    (Outcome::Succeeded, 202)
                }
                _ => (Outcome::Succeeded, 200),
            }
        };
        if let Some(l) = lease {
            // The endpoint acts on its own time, sometimes after the lease ran out.
            let until = now + latency + l.as_millis() as u64;
            let act_at = now + latency + self.rng.below(l.as_millis() as u64 * 3 / 2);
            let action = [
                LeaseAction::Complete,
                LeaseAction::Fail,
                LeaseAction::Heartbeat,
            ][self.rng.below(3) as usize];
            self.seq += 1;
            self.leased.insert(
                (act_at.max(now + latency + 1), self.seq),
                Lease {
                    gate: g,
                    task: plan.task,
                    token: plan.completion_token.clone(),
                    until,
                    lease_ms: l.as_millis() as u64,
                    action,
                },
            );
        }
        let report = Report {
            task: plan.task,
            attempt: plan.attempt,
            outcome,
            ended_at: Timestamp(now + latency),
            status: Some(status),
            latency_ms: latency,
            error: None,
            timed_out: false,
            response: None,
            lease,
            quota: None,
            logs: Vec::new(),
            next: Vec::new(),
        };
        self.seq += 1;
        self.in_flight
            .insert((now + latency, self.seq), (g, report));
        self.check_slots(g, now);
    }

    /// Jumps to the next event and runs a turn with whatever ended by then.
    fn advance(&mut self, limit: u64) {
        let next_end = [
            self.in_flight.keys().next().map(|k| k.0),
            self.leased.keys().next().map(|k| k.0),
            self.plugin_events.keys().next().map(|k| k.0),
        ]
        .into_iter()
        .flatten()
        .min();
        let next = [
            self.engine().poll_timeout().map(|t| t.as_ms()),
            next_end,
            Some(limit),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(limit);
        self.now = Timestamp(self.now.as_ms().max(next));
        let mut reports = Vec::new();
        while let Some(entry) = self.in_flight.first_entry() {
            if entry.key().0 > self.now.as_ms() {
                break;
            }
            let (_, report) = entry.remove();
            if !self.ghosts.remove(&(report.task, report.attempt)) {
                reports.push(report);
            }
        }
        while let Some(entry) = self.plugin_events.first_entry() {
            if entry.key().0 > self.now.as_ms() {
                break;
            }
            let event = entry.remove();
            self.plugin_event(event, &mut reports);
        }
        let mut commands = Vec::new();
        let mut replies = Vec::new();
        while let Some(entry) = self.leased.first_entry() {
            if entry.key().0 > self.now.as_ms() {
                break;
            }
            let lease = entry.remove();
            let callback = match lease.action {
                LeaseAction::Complete => Callback::Complete {
                    token: lease.token.clone(),
                    output: None,
                    next: Vec::new(),
                },
                LeaseAction::Fail => Callback::Fail {
                    token: lease.token.clone(),
                    reason: None,
                    retry: true,
                    retry_after: None,
                },
                LeaseAction::Heartbeat => Callback::Heartbeat {
                    token: lease.token.clone(),
                    progress: None,
                    lease: None,
                },
            };
            let (tx, rx) = oneshot::channel();
            commands.push(Command::Report {
                id: lease.task,
                callback: Box::new(callback),
                reply: tx,
            });
            replies.push((lease, rx));
        }
        self.turn(commands, reports);
        for (lease, mut rx) in replies {
            match rx.try_recv().expect("answered") {
                Ok(_) => {
                    self.lease_reports.0 += 1;
                    if lease.action == LeaseAction::Heartbeat {
                        // A heartbeat renews the lease from now; complete later.
                        let until = self.now.as_ms() + lease.lease_ms;
                        self.seq += 1;
                        self.leased.insert(
                            (
                                self.now.as_ms() + 1 + self.rng.below(lease.lease_ms),
                                self.seq,
                            ),
                            Lease {
                                until,
                                action: LeaseAction::Complete,
                                ..lease
                            },
                        );
                    }
                }
                Err(sluice::shell::ShellError::Conflict(_)) => {
                    // Too late: the lease ran out and the task moved on.
                    assert!(
                        self.now.as_ms() >= lease.until,
                        "seed {}: a report inside its lease was refused",
                        self.seed
                    );
                    self.lease_reports.1 += 1;
                }
                Err(e) => panic!("seed {}: report refused: {e}", self.seed),
            }
        }
    }

    /// A crash: memory is gone, the attempts in flight die with the process, the
    /// store keeps what was committed.
    fn crash(&mut self) {
        self.engine = None;
        // Releases still waiting for their slot times (admitted ahead) die
        // with the process: they are never sent.
        let crashed_at = self.now.as_ms();
        for starts in &mut self.starts {
            starts.retain(|&at| at <= crashed_at);
        }
        self.lose_answers(|_| true);
        self.in_flight.clear();
        self.ghosts.clear();
        // Plugin runs die with the process too.
        self.runs.clear();
        self.plugin_events.clear();
        self.now = Timestamp(self.now.as_ms() + self.rng.below(120_000));
        let engine = Engine::boot(
            self.store.clone(),
            self.tuning,
            self.now,
            self.rng.next_u64(),
        )
        .expect("reboot");
        self.engine = Some(engine);
        self.boots.push(self.now.as_ms());
        self.fresh = vec![Some(self.now.as_ms()); GATES];
        self.before_boot = self.starts.iter().map(Vec::len).collect();
    }

    /// The answers of the attempts in flight at `lost` gates reach no engine:
    /// a 202 among them granted no lease, so the endpoint's lease on it
    /// goes too.
    fn lose_answers(&mut self, lost: impl Fn(usize) -> bool) {
        let lost: BTreeSet<TaskId> = self
            .in_flight
            .values()
            .filter(|(g, r)| lost(*g) && r.lease.is_some())
            .map(|(_, r)| r.task)
            .collect();
        self.leased.retain(|_, l| !lost.contains(&l.task));
    }

    /// The unit of a gate moves to another node, and (here) back as a new
    /// owner: stopped, drained for a while (sometimes not at all), dropped,
    /// and taken up as a takeover does. What is still out at the drop is
    /// the next owner's to hold until its timeout; its answer is lost.
    fn hand_over(&mut self) {
        let g = self.rng.below(GATES as u64) as usize;
        let units = Units::of(&format!("g{g}"));
        let moving: Vec<usize> = (0..GATES)
            .filter(|h| units.has_gate(&format!("g{h}")))
            .collect();
        let now = self.now;
        self.engine().stop_units(now, units);
        // Commands for the unit are refused while it moves, to retry.
        let (tx, mut rx) = oneshot::channel();
        let task = self.new_task(g, now);
        self.turn(
            vec![Command::CreateTasks {
                tasks: vec![task],
                reply: tx,
            }],
            Vec::new(),
        );
        let answer = rx.try_recv().expect("answered");
        assert!(
            matches!(answer, Err(ShellError::Moved { .. })),
            "seed {}: a create for a moving gate: {answer:?}",
            self.seed
        );
        // Drain up to a bound, and in any case until the gate's plugin runs
        // are over: a plugin's requests beyond its first are not on record,
        // so the next owner could not hold their slots.
        let bound = now.as_ms() + [0, 500, 3_000, 30_000][self.rng.below(4) as usize];
        for _ in 0..100_000 {
            let plugins = self.runs.values().any(|r| moving.contains(&r.gate));
            let busy = self.engine().busy(units);
            if busy == 0 || (self.now.as_ms() >= bound && !plugins) {
                break;
            }
            let limit = self.now.as_ms() + 1_000;
            self.advance(limit);
        }
        assert!(
            !self.runs.values().any(|r| moving.contains(&r.gate)),
            "seed {}: a plugin run outlived the drain",
            self.seed
        );
        self.lose_answers(|h| moving.contains(&h));
        let out: Vec<(TaskId, u32)> = self
            .in_flight
            .values()
            .filter(|(h, _)| moving.contains(h))
            .map(|(_, r)| (r.task, r.attempt))
            .collect();
        self.ghosted += out.len() as u64;
        self.ghosts.extend(out);
        let dropped_at = self.now;
        self.engine().drop_units(dropped_at, units);
        // The next owner takes the unit up after the release and its own
        // acquire: at least the longest lookahead later, so the last starts
        // admitted ahead of their tokens have left.
        let lookahead = self.tuning.lookahead_max.as_millis() as u64;
        self.now = Timestamp(dropped_at.as_ms() + lookahead + self.rng.below(2_000));
        let at = self.now;
        self.engine()
            .adopt(at, units, Start::TAKEOVER)
            .expect("taken up");
        for h in moving {
            self.fresh[h] = Some(at.as_ms());
            self.before_boot[h] = self.starts[h].len();
            self.handovers[h] += 1;
        }
    }

    fn create(&mut self) {
        let n = 1 + self.rng.below(40);
        let tasks: Vec<NewTask> = (0..n)
            .map(|_| {
                let g = self.rng.below(GATES as u64) as usize;
                let due = Timestamp(self.now.as_ms() + self.rng.below(60_000));
                self.new_task(g, due)
            })
            .collect();
        let (tx, mut rx) = oneshot::channel();
        self.turn(vec![Command::CreateTasks { tasks, reply: tx }], Vec::new());
        let created = rx
            .try_recv()
            .expect("answered after the commit")
            .expect("created");
        self.acked.extend(created.iter().map(|c| c.id.0));
    }

    /// The window bound for every window that ends at a gate's latest start, and
    /// the ramp bound for windows that begin at a boot.
    fn check_gates(&self) {
        for (g, starts) in self.starts.iter().enumerate() {
            let Some(&last) = starts.last() else { continue };
            let c = self.gates[g];
            let n = starts.len();
            for i in (0..n).rev() {
                let span = last - starts[i];
                if span > 10_000 {
                    break;
                }
                let count = (n - i) as f64;
                let allowed = f64::from(c.burst) + c.rate * (span as f64 + 1.0) / 1000.0;
                assert!(
                    count <= allowed + 1e-9,
                    "seed {}: gate g{g} started {count} in {span} ms (burst {}, rate {}/s)",
                    self.seed,
                    c.burst,
                    c.rate
                );
            }
            // After a restart the bucket starts empty and refills along the ramp.
            // (Gates created after the first boot start full, with no ramp.)
            let Some(boot) = self.fresh[g] else {
                continue;
            };
            let since_boot = (n - self.before_boot[g]) as f64;
            if since_boot > 0.0 && last >= boot && last - boot <= c.over_ms + 10_000 {
                let ramp = ramp_integral(c, (last - boot) as f64 / 1000.0);
                assert!(
                    since_boot <= ramp + 1.0 + 1e-6,
                    "seed {}: gate g{g} started {since_boot} in the {} ms after boot; the ramp allows {ramp:.2} ({c:?}, starts {:?}, boot {boot})",
                    self.seed,
                    last - boot,
                    &starts[self.before_boot[g]..]
                );
            }
        }
    }
}

/// Attempts the ramp allows in the first `t` seconds after a boot.
fn ramp_integral(c: GateConf, t: f64) -> f64 {
    let over = c.over_ms as f64 / 1000.0;
    if c.start >= 1.0 || over == 0.0 {
        return c.rate * (t + 0.001);
    }
    let ramp_t = t.min(over);
    let during = c.rate * (c.start * ramp_t + (1.0 - c.start) * ramp_t * ramp_t / (2.0 * over));
    during + c.rate * ((t - over).max(0.0) + 0.001)
}

/// `busy` is the percentage of steps that create tasks.
fn simulate(seed: u64, minutes: u64, busy: u64) -> World {
    let mut w = World::new(seed);
    let end = w.now.as_ms() + minutes * 60_000;
    while w.now.as_ms() < end {
        let roll = w.rng.below(100);
        match roll {
            _ if roll < busy => w.create(),
            89 => w.hand_over(),
            90 => w.crash(),
            91..=92 => {
                let gate = w.rng.below(GATES as u64) as usize;
                let from = w.now.as_ms();
                let until = from + 10_000 + w.rng.below(20 * 60_000);
                w.outages.push(Outage { gate, from, until });
            }
            _ => {
                let limit = w.now.as_ms() + 1 + w.rng.below(30_000);
                w.advance(limit);
            }
        }
    }
    // Heal everything and drain.
    let healed = w.now.as_ms();
    for o in &mut w.outages {
        o.until = o.until.min(healed);
    }
    for round in 0..1_000_000u64 {
        let idle = w.in_flight.is_empty()
            && w.plugin_events.is_empty()
            && w.engine().poll_timeout().is_none();
        if round % 500 != 0 && !idle {
            let limit = w.now.as_ms() + 60_000;
            w.advance(limit);
            continue;
        }
        let unfinished = {
            let reader = w.store.read().expect("read");
            w.acked
                .iter()
                .filter(|&&id| {
                    reader
                        .task(id)
                        .expect("task")
                        .is_none_or(|t| !t.state.is_final())
                })
                .count()
        };
        if unfinished == 0 {
            break;
        }
        let limit = w.now.as_ms() + 60_000;
        w.advance(limit);
    }
    w.check_end();
    w
}

impl World {
    fn check_end(&self) {
        let seed = self.seed;
        let reader = self.store.read().expect("read");
        // Nothing acknowledged is lost: every task is on disk and finished.
        for &id in &self.acked {
            let task = reader
                .task(id)
                .expect("read")
                .unwrap_or_else(|| panic!("seed {seed}: task {} lost", TaskId(id)));
            assert!(
                task.state.is_final(),
                "seed {seed}: task {} stuck in {:?}",
                TaskId(id),
                task.state
            );
        }
        // No occurrence ran as two tasks.
        for (key, tasks) in &self.occurrences {
            assert_eq!(
                tasks.len(),
                1,
                "seed {seed}: occurrence {key} ran as {tasks:?}"
            );
        }
        // Occurrences never overlap, and the misfire policies hold.
        for schedule in reader.schedules().expect("schedules") {
            let mut occurrences: Vec<(u64, u64, u64, TaskState)> = Vec::new(); // (id, scheduled, created, state)
            for (key, tasks) in &self.occurrences {
                let Some(time) = key.strip_prefix(&format!("schedule:{}:", schedule.name)) else {
                    continue;
                };
                let scheduled: jiff::Timestamp = time.parse().expect("key time");
                let id = *tasks.iter().next().expect("one task");
                let t = reader.task(id).expect("read").expect("occurrence task");
                occurrences.push((id, scheduled.as_millisecond() as u64, t.created_at, t.state));
            }
            occurrences.sort_by_key(|o| o.0);
            for pair in occurrences.windows(2) {
                assert!(
                    pair[1].1 > pair[0].1,
                    "seed {seed}: {} scheduled out of order: {pair:?}",
                    schedule.name
                );
            }
            // Each occurrence is exactly what the policy picks at the moment the
            // previous one ended (when the next was created).
            // An occurrence runs its offset after its time: it is missed once
            // that has passed.
            let rule = schedule.rule().expect("rule");
            let offset = jitter_offset(&schedule.name, Duration::from_millis(schedule.jitter_ms));
            for pair in occurrences.windows(2) {
                let (prev, created) = (pair[0].1, pair[1].2);
                let run_by = created.saturating_sub(offset.as_millis() as u64);
                let mut missed = Vec::new();
                let mut t = Timestamp(prev);
                while let Some(next) = rule.next_after(t) {
                    if next.as_ms() > run_by || missed.len() > 100_000 {
                        break;
                    }
                    missed.push(next.as_ms());
                    t = next;
                }
                let future = rule
                    .next_after(Timestamp(run_by.max(prev)))
                    .expect("next")
                    .as_ms();
                let expected = match (schedule.misfire(), missed.first(), missed.last()) {
                    (Misfire::Skip, _, _) | (_, None, _) => future,
                    (Misfire::Once, _, Some(&last)) => last,
                    (Misfire::All, Some(&first), _) => first,
                    (Misfire::Once, _, None) => future,
                };
                assert_eq!(
                    pair[1].1,
                    expected,
                    "seed {seed}: {} ({:?}) ran {} after {prev}, created at {created}; the policy picks {expected}",
                    schedule.name,
                    schedule.misfire(),
                    pair[1].1
                );
            }
        }
        // The circuit keeps a dead endpoint nearly untouched: the trip threshold
        // and what was in flight, then at most one probe per cooldown.
        for (g, c) in self.gates.iter().enumerate() {
            let down_ms: u64 = self
                .outages
                .iter()
                .filter(|o| o.gate == g)
                .map(|o| o.until.saturating_sub(o.from))
                .sum();
            let outages = self.outages.iter().filter(|o| o.gate == g).count() as u64;
            let restarts = self.boots.len() as u64 + 1 + self.handovers[g];
            let allowed = (outages + restarts) * u64::from(c.failures + c.concurrency)
                + down_ms / c.cooldown_ms
                + outages
                + restarts;
            assert!(
                self.dead_hits[g] <= allowed,
                "seed {seed}: gate g{g} hit its dead endpoint {} times in {down_ms} ms down (allowed {allowed})",
                self.dead_hits[g]
            );
        }
    }
}

fn base_seed() -> (u64, bool) {
    match std::env::var("SIM_SEED") {
        Ok(s) => (s.parse().expect("SIM_SEED is a number"), true),
        Err(_) => (sluice::clock::now().as_ms(), false),
    }
}

/// Eighty seeds, six simulated minutes each (`SIM_SEED` replays one). With
/// plugin runs and late commits each seed does about half as much again as
/// before they were added, so 160 seeds cost what 200 did.
#[test]
fn simulation_many_seeds() {
    many_seeds(0..80);
}

/// The second half of the seeds, apart so the two halves run side by side.
#[test]
fn simulation_many_more_seeds() {
    many_seeds(80..160);
}

fn many_seeds(range: std::ops::Range<u64>) {
    let (base, fixed) = base_seed();
    let range = if fixed {
        0..u64::from(range.start == 0)
    } else {
        range
    };
    for i in range {
        let seed = base.wrapping_add(i);
        let result = std::panic::catch_unwind(|| simulate(seed, 6, 10));
        if let Err(e) = result {
            eprintln!("replay with: SIM_SEED={seed} cargo test --test all simulation");
            std::panic::resume_unwind(e);
        }
    }
}

/// Several simulated hours in well under a second of real time (printed).
#[test]
fn simulation_hours() {
    let (seed, _) = base_seed();
    let started = sluice::clock::instant();
    let result = std::panic::catch_unwind(|| simulate(seed, 180, 1));
    if let Err(e) = result {
        eprintln!("replay with: SIM_SEED={seed} cargo test --test all simulation_hours");
        std::panic::resume_unwind(e);
    }
    let w = result.unwrap_or_else(|_| unreachable!());
    let requests: u64 = w.requests.iter().sum();
    let handovers: u64 = w.handovers.iter().sum();
    eprintln!(
        "simulated 3 h: {} turns ({} committed late), {} tasks, {requests} plugin requests, {} restarts, {handovers} handovers ({} attempts out at them), {} lease reports ({} too late) in {:?}",
        w.turns,
        w.late_commits,
        w.acked.len(),
        w.boots.len(),
        w.ghosted,
        w.lease_reports.0,
        w.lease_reports.1,
        started.elapsed()
    );
    // The paths this simulation exists for were taken.
    assert!(requests > 100, "seed {seed}: {requests} plugin requests");
    assert!(handovers > 20, "seed {seed}: {handovers} handovers");
    assert!(
        w.late_commits > 100,
        "seed {seed}: {} late commits",
        w.late_commits
    );
    assert!(
        w.kept_most >= 10,
        "seed {seed}: at most {} records kept",
        w.kept_most
    );
}

/// `task` created and run until its attempt is out; taken out of the
/// world's flight (the test answers it): its id and the attempt's report.
fn sent(w: &mut World, task: NewTask) -> (TaskId, Report) {
    let (tx, mut rx) = oneshot::channel();
    w.turn(
        vec![Command::CreateTasks {
            tasks: vec![task],
            reply: tx,
        }],
        Vec::new(),
    );
    let id = rx.try_recv().expect("answered").expect("created")[0].id;
    for _ in 0..1_000 {
        if w.in_flight.values().any(|(_, r)| r.task == id) {
            break;
        }
        let limit = w.now.as_ms() + 100;
        w.advance(limit);
    }
    let key = *(w.in_flight.iter())
        .find(|(_, (_, r))| r.task == id)
        .expect("the task went out")
        .0;
    let (_, report) = w.in_flight.remove(&key).expect("in flight");
    (id, report)
}

/// A plugin's next steps, one with a coalesce key in a gate (its own)
/// that is being handed over.
fn next_coalescing(_: &[String]) -> Result<Vec<NewTask>, String> {
    let mut task = webhook_task(0, Timestamp(0));
    task.coalesce_key = Some("next".into());
    Ok(vec![task])
}

/// A plugin's success heard while its gate's unit is being handed over
/// (stopped, not yet dropped), whose next steps name a coalesce key of
/// that gate, which only its next owner may apply: the task goes back to
/// run again, not to a permanent failure (the plugin did nothing wrong).
#[test]
fn a_success_whose_next_steps_wait_for_a_handover_runs_again() {
    let mut w = World::new(7);
    w.engine().set_next_reader(next_coalescing);
    let now = w.now;
    let (id, out) = sent(&mut w, webhook_task(0, now));
    let at = w.now;
    let mut report = succeeded(id, out.attempt, at, 5);
    report.next = vec!["{}".into()];
    w.engine().stop_units(at, Units::of("g0"));
    w.engine()
        .turn(at, Vec::new(), vec![report])
        .expect("a turn");
    let reader = w.store.read().expect("read");
    let task = reader.task(id.0).expect("read").expect("task");
    assert_eq!(task.state, TaskState::Scheduled, "{:?}", task.last_error);
}

/// A command refused because its task's gate is moving leaves alone what
/// the turn did to the task before it: here the report that ends the task
/// (taken while its unit is stopped, not yet dropped) and, in the same
/// turn, a cancel of it, refused as `Moved`. (The refusal used to drop the
/// task's record from the turn, report and all: the task stayed running
/// on record, and the next owner would have run it again.)
#[test]
fn a_command_refused_as_moved_keeps_what_the_turn_wrote_before() {
    let mut w = World::new(7);
    let now = w.now;
    let (id, out) = sent(&mut w, webhook_task(0, now));
    let at = w.now;
    w.engine().stop_units(at, Units::of("g0"));
    let (reply, answer) = oneshot::channel();
    let cancel = Command::CancelTask { id, reply };
    let report = succeeded(id, out.attempt, at, 5);
    w.engine()
        .turn(at, vec![cancel], vec![report])
        .expect("a turn");
    let refused = answer.blocking_recv().expect("an answer");
    assert!(
        matches!(refused, Err(ShellError::Moved { .. })),
        "{refused:?}"
    );
    let reader = w.store.read().expect("read");
    let task = reader.task(id.0).expect("read").expect("task");
    assert_eq!(task.state, TaskState::Succeeded, "{:?}", task.last_error);
}

/// A unit let go writes nothing more: the late answer of an attempt that
/// was out when its gate was dropped leaves the task and its attempt as
/// they were, for the next owner, which holds the attempt in its slot
/// until its timeout and then runs the task again.
#[test]
fn a_dropped_unit_writes_nothing_for_a_late_answer_and_its_taker_holds_the_attempt() {
    let mut w = World::new(7);
    let now = w.now;
    let mut task = w.new_task(0, now);
    task.target = webhook_task(0, now).target;
    let (id, report) = sent(&mut w, task);
    let attempt = report.attempt;
    let stored = |w: &World| {
        let reader = w.store.read().expect("read");
        let task = reader.task(id.0).expect("read").expect("task");
        let attempts = reader.attempts(id.0).expect("read");
        let record = attempts
            .into_iter()
            .find(|a| a.attempt == attempt)
            .expect("attempt");
        (task, record)
    };
    let before = stored(&w);
    assert_eq!(before.0.state, TaskState::Running);

    let units = Units::of("g0");
    let at = w.now;
    w.engine().stop_units(at, units);
    assert_eq!(w.engine().busy(units), 1, "the attempt is out");
    w.engine().drop_units(at, units);
    let plans = w
        .engine()
        .turn(at, Vec::new(), vec![report])
        .expect("a turn");
    assert!(plans.is_empty());
    assert_eq!(stored(&w), before, "a dropped gate's task was written");

    w.engine()
        .adopt(at, units, Start::TAKEOVER)
        .expect("taken up");
    assert_eq!(w.engine().busy(units), 0, "a held attempt is on record");
    let timeout = before.0.timeout_ms;
    let held_until = at.as_ms() + timeout;
    w.engine().turn(at, Vec::new(), Vec::new()).expect("a turn");
    assert_eq!(stored(&w), before, "the held attempt was settled early");
    for _ in 0..10_000 {
        let reader = w.store.read().expect("read");
        let task = reader.task(id.0).expect("read").expect("task");
        if task.attempts > attempt || task.state != TaskState::Running {
            break;
        }
        drop(reader);
        let limit = w.now.as_ms() + 100;
        w.advance(limit);
    }
    assert!(
        w.now.as_ms() >= held_until,
        "retried at {}, before the hold ran out at {held_until}",
        w.now.as_ms()
    );
    let (task, record) = stored(&w);
    assert!(
        task.attempts > attempt || task.state == TaskState::Scheduled,
        "the held attempt was not retried: {task:?}"
    );
    assert_eq!(record.outcome.as_deref(), Some("interrupted"));
}

/// Release times of 2,000 tasks through one smooth gate (200/s, burst 1,
/// 100 at once) on an endpoint that answers in 2 ms, while one commit in 40
/// takes 150 ms (a disk that stalls behind another process's writes). (The
/// starts admitted ahead take at most half the slots, `Gate::ahead_ms`: at
/// 200/s, 50 slots cover 250 ms; with 50 at once, 125 ms, and each stall
/// would lose its last 25 ms of tokens.) The
/// driver decides nothing while a commit runs, as the runner's does not.
/// With `late_wakes`, the commits are quick and the driver instead wakes
/// 150 ms after the instant it asked for, once in 40 turns (busy elsewhere,
/// or short of CPU).
fn releases_through_stalls(tuning: Tuning, late_wakes: bool) -> Vec<u64> {
    let store = Arc::new(Store::in_memory().expect("store"));
    let mut now = Timestamp(1_767_225_600_000);
    let mut engine = Engine::boot(store, tuning, now, 1).expect("boot");
    let conf = GateConf {
        rate: 200.0,
        burst: 1,
        concurrency: 100,
        start: 1.0,
        over_ms: 1_000,
        failures: 5,
        cooldown_ms: 5_000,
    };
    let (tx, _rx) = oneshot::channel();
    let put = Command::PutGate {
        name: "g0".into(),
        spec: Box::new(gate_spec(conf, false)),
        reply: tx,
    };
    let tasks = (0..2_000).map(|_| webhook_task(0, now)).collect();
    let (tx, _created) = oneshot::channel();
    let mut commands = vec![put, Command::CreateTasks { tasks, reply: tx }];
    let mut answers: BTreeMap<(u64, u64), Report> = BTreeMap::new();
    let mut releases = Vec::new();
    for turn in 1..100_000u64 {
        if releases.len() == 2_000 {
            break;
        }
        let mut reports = Vec::new();
        while let Some(entry) = answers.first_entry() {
            if entry.key().0 > now.as_ms() {
                break;
            }
            reports.push(entry.remove());
        }
        let plans = engine
            .turn(now, std::mem::take(&mut commands), reports)
            .expect("turn commits");
        let stalls = turn % 40 == 0;
        let took = if stalls && !late_wakes { 150 } else { 1 };
        let done = Timestamp(now.as_ms() + took);
        for (after, plan) in engine.release(done, plans).attempts {
            let at = leaves(done, after);
            releases.push(at);
            let report = succeeded(plan.task, plan.attempt, Timestamp(at + 2), 2);
            answers.insert((at + 2, plan.task.0), report);
        }
        // The next turn: when the engine or an answer wants one, and not
        // before this commit is done.
        let next = [
            engine.poll_timeout(),
            answers.keys().next().map(|k| Timestamp(k.0)),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(done);
        now = next.max(done);
        if stalls && late_wakes {
            now = Timestamp(now.as_ms() + 150);
        }
    }
    releases.sort_unstable();
    releases
}

/// A disk that stalls (or a driver that wakes late) costs a smooth gate its
/// rate when the gates look only 20 ms ahead: every stall's tokens are lost
/// (a burst of 1 has nowhere to keep them). Grown to cover the slowest recent turn, the
/// lookahead loses the first stall's, and has each later stall's starts on
/// disk before it comes: the gate keeps its rate within 1 % (its pacer runs
/// 0.3 % under), with every release still an interval after the one
/// before.
#[test]
fn a_smooth_gate_keeps_its_rate_through_stalled_commits() {
    let rate = |releases: &[u64]| {
        let span = releases[releases.len() - 1] - releases[0];
        (releases.len() - 1) as f64 * 1_000.0 / span as f64
    };
    // Gaps longer than an interval (5 ms, 6 once rounded up): lost tokens.
    let losses = |releases: &[u64]| {
        let gaps = releases.windows(2).enumerate();
        gaps.filter(|(_, pair)| pair[1] - pair[0] > 6)
            .map(|(i, _)| i + 1)
            .collect::<Vec<usize>>()
    };
    let fixed = Tuning {
        lookahead_max: Duration::from_millis(20),
        ..Tuning::default()
    };
    for late_wakes in [false, true] {
        let slow = releases_through_stalls(fixed, late_wakes);
        assert_eq!(slow.len(), 2_000);
        assert!(losses(&slow).len() > 40, "{:?}", losses(&slow));
        assert!(rate(&slow) < 150.0, "{:.1}/s", rate(&slow));

        let releases = releases_through_stalls(Tuning::default(), late_wakes);
        assert_eq!(releases.len(), 2_000);
        let lost = losses(&releases);
        assert!(
            lost.len() <= 1,
            "tokens lost after the first stall: {lost:?}"
        );
        let after = &releases[lost.first().copied().unwrap_or(0)..];
        assert!(after.len() > 1_900, "the first stall came late: {lost:?}");
        let measured = rate(after);
        assert!(measured > 198.0, "{measured:.1}/s");
        // Burst 1: each release an interval (5 ms, less the millisecond
        // the release times are rounded up to) after the one before.
        for pair in releases.windows(2) {
            assert!(pair[1] - pair[0] >= 4, "{pair:?}");
        }
    }
}
