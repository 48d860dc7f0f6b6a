//! Scripted tests of the scheduler: one path each (leases, heartbeats,
//! Retry-After, expiry, plugin asks), a few inputs at chosen instants, and the
//! exact effects and permits that must come out. The property tests in
//! `sim_tests.rs` check the invariants over random runs; these pin down what
//! each path does.

use std::time::Duration;

use super::*;
use crate::core::gate::{CircuitPolicy, GateLimits, Recovery};
use crate::core::retry::{Backoff, RetryPolicy};
use crate::core::time::Rate;

const G: GateId = GateId(1);

fn ms(n: u64) -> Timestamp {
    Timestamp(n)
}

fn limits(per_s: f64, concurrency: u32) -> GateLimits {
    GateLimits {
        rate: Rate::per_second(per_s).expect("rate"),
        burst: 1,
        concurrency,
        recovery: Recovery {
            start: 1.0,
            over: Duration::ZERO,
        },
        circuit: None::<CircuitPolicy>,
        quota_headers: true,
        priority_aging: Duration::from_secs(60),
        adaptive: None,
    }
}

fn task(id: u64, due: u64) -> QueuedTask {
    QueuedTask {
        id: TaskId(id),
        gate: G,
        key: None,
        priority: DEFAULT_PRIORITY,
        due: ms(due),
        ahead_ms: 0,
        attempts: 0,
        first_attempt_at: None,
        expires_at: None,
        policy: RetryPolicy {
            max_attempts: 3,
            backoff: Backoff {
                initial: Duration::from_secs(1),
                max: Duration::from_secs(60),
                multiplier: 2.0,
                jitter: false,
            },
            max_retry_duration: None,
        },
    }
}

/// The scheduler as a turn of the shell drives it: inputs, then the timers
/// due, then every effect drained. Loads are answered at once with an empty
/// disk: every task here came in through `Enqueue`.
struct Script {
    core: Scheduler,
}

impl Script {
    fn new(limits: GateLimits) -> Script {
        Script::with_keys(limits, None)
    }

    fn with_keys(limits: GateLimits, keys: Option<std::sync::Arc<KeyPolicy>>) -> Script {
        Script::tuned(limits, keys, Duration::ZERO)
    }

    fn tuned(
        limits: GateLimits,
        keys: Option<std::sync::Arc<KeyPolicy>>,
        lookahead: Duration,
    ) -> Script {
        let tuning = Tuning {
            window: 64,
            key_budget: 64,
            horizon: Duration::from_secs(3_600),
            lookahead,
            lookahead_max: lookahead,
        };
        let mut script = Script {
            core: Scheduler::new(1, tuning),
        };
        let ready = script.input(
            0,
            Input::UpsertGate {
                gate: G,
                limits,
                keys,
                paused: false,
                ramp: false,
            },
        );
        assert!(ready.is_empty(), "{ready:?}");
        script
    }

    fn input(&mut self, now: u64, input: Input) -> Vec<Effect> {
        self.core.handle_input(ms(now), input);
        self.at(now)
    }

    fn at(&mut self, now: u64) -> Vec<Effect> {
        self.core.handle_timeout(ms(now));
        let mut out = Vec::new();
        while let Some(effect) = self.core.poll_effect() {
            match effect {
                Effect::Load { gate, key, .. } => self.core.handle_input(
                    ms(now),
                    Input::Loaded {
                        gate,
                        key,
                        tasks: Vec::new(),
                        next: None,
                    },
                ),
                Effect::LoadKeys { gate } => self.core.handle_input(
                    ms(now),
                    Input::KeysLoaded {
                        gate,
                        keys: Vec::new(),
                    },
                ),
                other => out.push(other),
            }
        }
        out
    }

    fn permits(&mut self) -> Vec<(u64, u64)> {
        std::iter::from_fn(|| self.core.poll_permit())
            .map(|p| (p.ask, p.at.as_ms()))
            .collect()
    }
}

fn start(id: u64, attempt: u32, at: u64) -> Effect {
    Effect::Start {
        task: TaskId(id),
        gate: G,
        attempt,
        at: ms(at),
    }
}

#[test]
fn a_delayed_task_starts_at_its_due_time_not_before() {
    let mut s = Script::new(limits(100.0, 10));
    assert!(s.input(0, Input::Enqueue(task(1, 1_000))).is_empty());
    assert_eq!(
        s.core.poll_timeout(),
        Some(ms(1_000)),
        "the shell sleeps until the due time"
    );
    assert!(s.at(999).is_empty(), "a millisecond early");
    assert_eq!(s.at(1_000), [start(1, 1, 1_000)]);
    // A timer that fires late starts the task at once, not at its slot in the past.
    let mut s = Script::new(limits(100.0, 10));
    s.input(0, Input::Enqueue(task(2, 1_000)));
    assert_eq!(s.at(3_200), [start(2, 1, 3_200)]);
}

/// With a lookahead, a task starts that long before its due time (so its
/// start is on disk by then) and leaves at its due time; the gate is asked
/// at that instant, so a task due sooner that comes in later gets a slot
/// after it, never between the slots already handed out.
#[test]
fn a_task_due_within_the_lookahead_starts_ahead_and_leaves_when_due() {
    let mut s = Script::tuned(limits(100.0, 10), None, Duration::from_millis(20));
    assert!(s.input(0, Input::Enqueue(task(1, 1_000))).is_empty());
    assert_eq!(
        s.core.poll_timeout(),
        Some(ms(980)),
        "woken a lookahead early"
    );
    assert!(s.at(979).is_empty());
    assert_eq!(s.at(980), [start(1, 1, 1_000)], "leaves at its due time");
    // Due 5 ms after the first, at 100/s: its slot is 10 ms after it.
    assert!(s.input(981, Input::Enqueue(task(2, 1_005))).is_empty());
    assert_eq!(s.at(985), [start(2, 1, 1_010)]);
    // Due at once, but the slots up to 1,010 are taken: the next is 1,020,
    // beyond the lookahead from 986, so it waits until 1,000 and gets it.
    assert!(s.input(986, Input::Enqueue(task(3, 0))).is_empty());
    assert_eq!(s.core.poll_timeout(), Some(ms(1_000)));
    assert_eq!(s.at(1_000), [start(3, 1, 1_020)]);
}

/// A start the last owner of a gate admitted but never sent (its slot
/// time after that owner's deadline) goes back to the queue as it was: no
/// retry, no backoff, the same attempt number when it starts again.
#[test]
fn a_start_that_never_left_is_queued_again_uncounted() {
    let mut s = Script::new(limits(100.0, 10));
    let mut unsent = task(1, 500);
    unsent.attempts = 1;
    assert_eq!(
        s.input(2_000, Input::Unsent(unsent)),
        [
            Effect::Requeue {
                task: TaskId(1),
                gate: G,
                due: ms(500),
                retry: false,
            },
            start(1, 1, 2_000),
        ],
        "due as before, started again as attempt 1"
    );
}

#[test]
fn a_lease_holds_its_slot_until_it_runs_out() {
    let mut s = Script::new(limits(1_000.0, 1));
    s.input(0, Input::Enqueue(task(1, 0)));
    let second = s.input(0, Input::Enqueue(task(2, 0)));
    assert!(second.is_empty(), "concurrency 1: {second:?}");
    let leased = s.input(
        5,
        Input::Leased {
            task: TaskId(1),
            until: ms(10_000),
        },
    );
    assert!(leased.is_empty(), "{leased:?}");
    assert_eq!(s.core.poll_timeout(), Some(ms(10_000)));
    assert!(s.at(9_999).is_empty(), "the lease still holds the slot");
    assert_eq!(
        s.at(10_000),
        [
            Effect::LeaseExpired {
                task: TaskId(1),
                gate: G,
                attempt: 1
            },
            Effect::Requeue {
                task: TaskId(1),
                gate: G,
                due: ms(11_000),
                retry: true,
            },
            start(2, 1, 10_000),
        ],
        "a lease that runs out is a failed attempt: retried after its backoff, slot freed"
    );
}

#[test]
fn a_heartbeat_moves_the_lease_and_a_report_ends_it() {
    let mut s = Script::new(limits(1_000.0, 1));
    assert_eq!(s.input(0, Input::Enqueue(task(1, 0))), [start(1, 1, 0)]);
    let until = |t| Input::Leased {
        task: TaskId(1),
        until: ms(t),
    };
    s.input(5, until(10_000));
    let beat = Input::Heartbeat {
        task: TaskId(1),
        until: ms(20_000),
    };
    assert!(s.input(9_000, beat).is_empty());
    assert!(s.at(10_000).is_empty(), "the heartbeat moved the deadline");
    assert_eq!(s.core.poll_timeout(), Some(ms(20_000)));
    let done = s.input(
        15_000,
        Input::AttemptEnded {
            task: TaskId(1),
            outcome: Outcome::Succeeded,
        },
    );
    assert_eq!(
        done,
        [Effect::Finish {
            task: TaskId(1),
            gate: G,
            end: End::Succeeded
        }]
    );
    assert!(s.at(20_000).is_empty(), "an ended lease never expires");
    assert_eq!(s.core.running(), 0);
}

#[test]
fn retry_after_sets_the_next_due_and_throttling_holds_the_gate() {
    let mut s = Script::new(limits(1_000.0, 10));
    s.input(0, Input::Enqueue(task(1, 0)));
    // A 503 with Retry-After: 30 s outweighs the 1 s backoff.
    let failed = s.input(
        100,
        Input::AttemptEnded {
            task: TaskId(1),
            outcome: Outcome::Failed {
                retry_after: Some(Duration::from_secs(30)),
            },
        },
    );
    let requeue = |id, due| Effect::Requeue {
        task: TaskId(id),
        gate: G,
        due: ms(due),
        retry: true,
    };
    assert_eq!(failed, [requeue(1, 30_100)]);
    // A 429 with Retry-After throttles the whole gate: a task due now waits.
    assert_eq!(
        s.input(200, Input::Enqueue(task(2, 200))),
        [start(2, 1, 200)]
    );
    let throttled = s.input(
        300,
        Input::AttemptEnded {
            task: TaskId(2),
            outcome: Outcome::Throttled {
                retry_after: Some(Duration::from_secs(5)),
            },
        },
    );
    assert_eq!(throttled, [requeue(2, 5_300)]);
    assert!(s.input(400, Input::Enqueue(task(3, 400))).is_empty());
    assert!(s.at(5_299).is_empty(), "the gate is held until Retry-After");
    let resumed = s.at(5_300);
    assert!(
        resumed.first() == Some(&start(3, 1, 5_300))
            || resumed.first() == Some(&start(2, 2, 5_300)),
        "{resumed:?}"
    );
}

#[test]
fn a_task_that_cannot_start_in_time_expires() {
    // One start a minute: the second task's turn comes after its deadline.
    let mut s = Script::new(limits(1.0 / 60.0, 10));
    assert_eq!(s.input(0, Input::Enqueue(task(1, 0))), [start(1, 1, 0)]);
    let late = QueuedTask {
        expires_at: Some(ms(5_000)),
        ..task(2, 0)
    };
    assert!(s.input(0, Input::Enqueue(late)).is_empty());
    assert_eq!(s.core.poll_timeout(), Some(ms(60_000)));
    assert_eq!(
        s.at(60_000),
        [Effect::Expire {
            task: TaskId(2),
            gate: G,
            due: ms(0)
        }]
    );
    // A retry due after the deadline ends the task as expired instead.
    let mut s = Script::new(limits(1_000.0, 10));
    let short = QueuedTask {
        expires_at: Some(ms(500)),
        ..task(3, 0)
    };
    s.input(0, Input::Enqueue(short));
    let failed = s.input(
        10,
        Input::AttemptEnded {
            task: TaskId(3),
            outcome: Outcome::Failed { retry_after: None },
        },
    );
    assert_eq!(
        failed,
        [Effect::Finish {
            task: TaskId(3),
            gate: G,
            end: End::Expired
        }]
    );
}

#[test]
fn plugin_asks_get_permits_within_the_gate() {
    let mut s = Script::new(limits(1_000.0, 2));
    assert_eq!(s.input(0, Input::Enqueue(task(1, 0))), [start(1, 1, 0)]);
    let ask = |n| Input::Ask {
        task: TaskId(1),
        attempt: 1,
        ask: n,
    };
    // The attempt's own slot covers its first request.
    s.input(100, ask(1));
    assert_eq!(s.permits(), [(1, 100)]);
    // A second at once takes the gate's other slot, a third waits for one.
    s.input(200, ask(2));
    assert_eq!(s.permits(), [(2, 200)]);
    s.input(300, ask(3));
    assert!(s.permits().is_empty(), "concurrency 2 is taken");
    let ended = Input::RequestEnded {
        task: TaskId(1),
        attempt: 1,
        signal: Signal::Healthy,
    };
    s.input(400, ended);
    assert_eq!(s.permits(), [(3, 400)], "an ended request frees its slot");
    // An ask of an attempt that has ended gets nothing.
    s.input(
        500,
        Input::AttemptEnded {
            task: TaskId(1),
            outcome: Outcome::Succeeded,
        },
    );
    s.input(600, ask(4));
    assert!(s.permits().is_empty(), "a permit for an ended attempt");
}

/// Key limits that arrive while a plugin attempt has two requests out
/// count both of their slots: the requests, then the attempt, end within
/// the new limiter's books (it once held one slot for them and came up
/// short when the second ended).
#[test]
fn key_limits_arriving_mid_flight_count_every_slot_held() {
    let mut s = Script::new(limits(1_000.0, 4));
    assert_eq!(s.input(0, Input::Enqueue(task(1, 0))), [start(1, 1, 0)]);
    let ask = |n| Input::Ask {
        task: TaskId(1),
        attempt: 1,
        ask: n,
    };
    s.input(100, ask(1));
    s.input(110, ask(2));
    assert_eq!(s.permits(), [(1, 100), (2, 110)]);
    let limited = KeyPolicy {
        default: crate::core::keys::KeyLimits {
            rate: None,
            burst: 1,
            concurrency: Some(3),
            weight: 1,
        },
        overrides: Default::default(),
        isolate: false,
    };
    s.input(
        200,
        Input::UpsertGate {
            gate: G,
            limits: limits(1_000.0, 4),
            keys: Some(std::sync::Arc::new(limited)),
            paused: false,
            ramp: false,
        },
    );
    let ended = Input::RequestEnded {
        task: TaskId(1),
        attempt: 1,
        signal: Signal::Healthy,
    };
    s.input(300, ended.clone());
    s.input(300, ended);
    s.input(
        400,
        Input::PluginEnded {
            task: TaskId(1),
            outcome: Outcome::Succeeded,
        },
    );
    // The key's slots are all free again: three tasks run at once (one
    // token a millisecond).
    let mut started = Vec::new();
    for id in 2..=4 {
        started.extend(s.input(500, Input::Enqueue(task(id, 500))));
    }
    started.extend(s.at(501));
    started.extend(s.at(502));
    assert_eq!(
        started,
        [start(2, 1, 500), start(3, 1, 501), start(4, 1, 502)]
    );
}

#[test]
fn another_nodes_attempt_holds_its_slot_then_counts_as_interrupted() {
    let mut gate = limits(1_000.0, 1);
    gate.circuit = Some(CircuitPolicy {
        failures: 1,
        ..CircuitPolicy::default()
    });
    let mut s = Script::new(gate);
    let mut theirs = task(1, 0);
    theirs.attempts = 1;
    s.input(
        0,
        Input::HoldInterrupted {
            task: theirs,
            until: ms(2_000),
        },
    );
    let waiting = s.input(0, Input::Enqueue(task(2, 0)));
    assert!(
        waiting.is_empty(),
        "the held attempt has the slot: {waiting:?}"
    );
    assert_eq!(
        s.at(2_000),
        [
            Effect::LeaseExpired {
                task: TaskId(1),
                gate: G,
                attempt: 1
            },
            Effect::Requeue {
                task: TaskId(1),
                gate: G,
                due: ms(2_000),
                retry: true,
            },
            start(2, 1, 2_000),
        ],
        "no backoff, and the circuit (tripped by one failure) stays closed"
    );
}

/// An answer that says no quota remains holds the gate until the reset; an
/// answer for an attempt that is not running (a stale report) changes
/// nothing; the adaptive search hears the latency of the attempt's answer.
#[test]
fn an_answer_routes_its_quota_and_latency_to_the_attempts_gate() {
    let mut s = Script::new(limits(100.0, 10));
    assert_eq!(s.input(0, Input::Enqueue(task(1, 0))), [start(1, 1, 0)]);
    assert!(
        s.input(0, Input::Enqueue(task(2, 0))).is_empty(),
        "its token comes at 10 ms"
    );
    let exhausted = super::Quota {
        remaining: 0,
        reset_in: Duration::from_secs(5),
        limit: Some(10),
        window: None,
    };
    // The wrong attempt's answer is ignored: task 2 starts on time.
    let stale = Input::Answered {
        task: TaskId(1),
        attempt: 7,
        latency: Duration::from_millis(3),
        quota: Some(exhausted),
    };
    assert!(s.input(1, stale).is_empty());
    let answered = Input::Answered {
        task: TaskId(1),
        attempt: 1,
        latency: Duration::from_millis(3),
        quota: Some(exhausted),
    };
    s.input(5, answered);
    let ended = Input::AttemptEnded {
        task: TaskId(1),
        outcome: Outcome::Succeeded,
    };
    let after = s.input(5, ended);
    assert!(
        !after.iter().any(|e| matches!(e, Effect::Start { .. })),
        "the quota is spent: task 2 waits: {after:?}"
    );
    let view = s.core.view(ms(5), G).expect("gate");
    assert_eq!(
        view.quota.map(|q| (q.remaining, q.reset_at)),
        Some((0, ms(5_005)))
    );
    assert!(s.at(5_004).is_empty());
    assert_eq!(s.at(5_005), [start(2, 1, 5_005)], "started at the reset");

    let mut adaptive = limits(1_000.0, 4);
    adaptive.adaptive = Some(crate::core::AdaptiveRange { min: 1, max: 8 });
    let mut s = Script::new(adaptive);
    assert_eq!(s.input(0, Input::Enqueue(task(3, 0))), [start(3, 1, 0)]);
    assert_eq!(s.core.adaptive_limit(G), Some(4));
    let slow = Input::Answered {
        task: TaskId(3),
        attempt: 1,
        latency: Duration::from_millis(40),
        quota: None,
    };
    s.input(40, slow);
    let failed = Input::AttemptEnded {
        task: TaskId(3),
        outcome: Outcome::Failed { retry_after: None },
    };
    s.input(40, failed);
    assert_eq!(
        s.core.adaptive_limit(G),
        Some(3),
        "an error cuts the limit by a quarter"
    );
}

/// The tasks `effects` start, in order.
fn started(effects: Vec<Effect>) -> Vec<u64> {
    effects
        .into_iter()
        .filter_map(|e| match e {
            Effect::Start { task, .. } => Some(task.0),
            _ => None,
        })
        .collect()
}

fn prioritized(id: u64, due: u64, priority: u8) -> QueuedTask {
    QueuedTask {
        priority,
        ..task(id, due)
    }
}

/// Among due tasks the higher priority starts first; a waiting task gains a
/// level per `priority_aging`, so a low one is delayed, never starved.
#[test]
fn priority_orders_due_tasks_and_aging_lifts_the_low() {
    let mut limits = limits(10.0, 100);
    limits.priority_aging = Duration::from_secs(1);
    let mut s = Script::new(limits);
    for (id, p) in [(1, 5), (2, 9), (3, 1)] {
        s.core
            .handle_input(ms(0), Input::Enqueue(prioritized(id, 0, p)));
    }
    // One token: the highest priority goes, whatever the order of creation.
    assert_eq!(started(s.at(0)), [2]);
    assert_eq!(started(s.at(100)), [1]);
    // Task 3 (priority 1) has waited 8 s by then: 1 + 8 levels, level with
    // a fresh priority 9 task, and the older of equals goes first.
    s.core
        .handle_input(ms(7_900), Input::Enqueue(prioritized(4, 7_900, 9)));
    let first = started(s.at(8_000));
    assert_eq!(first, [3], "the aged task first");
    assert_eq!(started(s.at(8_100)), [4]);
}

/// A task of raised priority made due is ordered ahead of its due time
/// (the store's `order_at`), but ages from its due time: a priority-6 task
/// moved a level ahead does not tie with a priority-7 task due with it.
#[test]
fn a_task_ordered_ahead_ages_from_its_due_time() {
    let mut limits = limits(10.0, 100);
    limits.priority_aging = Duration::from_secs(1);
    let mut s = Script::new(limits);
    let ahead = QueuedTask {
        due: ms(0),
        ahead_ms: 1_000,
        ..prioritized(1, 0, 6)
    };
    s.core.handle_input(ms(1_000), Input::Enqueue(ahead));
    s.core
        .handle_input(ms(1_000), Input::Enqueue(prioritized(2, 1_000, 7)));
    assert_eq!(
        started(s.at(1_000)),
        [2],
        "priority 7 before priority 6, both just due"
    );
}

/// With `isolate: key`, the quota an answer states paces the key whose
/// request drew it: a tenant whose own quota is spent waits for its reset,
/// the other keys go on, and the gate itself is not paced.
#[test]
fn an_isolated_keys_quota_holds_back_only_that_key() {
    let policy = KeyPolicy {
        isolate: true,
        ..KeyPolicy::default()
    };
    let mut s = Script::with_keys(limits(1_000.0, 10), Some(std::sync::Arc::new(policy)));
    let keyed = |id, key: &str| QueuedTask {
        key: Some(std::sync::Arc::from(key)),
        ..task(id, 0)
    };
    assert_eq!(s.input(0, Input::Enqueue(keyed(1, "a"))), [start(1, 1, 0)]);
    let spent = super::Quota {
        remaining: 0,
        reset_in: Duration::from_secs(5),
        limit: Some(10),
        window: None,
    };
    let answered = Input::Answered {
        task: TaskId(1),
        attempt: 1,
        latency: Duration::from_millis(3),
        quota: Some(spent),
    };
    s.input(5, answered);
    let ended = Input::AttemptEnded {
        task: TaskId(1),
        outcome: Outcome::Succeeded,
    };
    s.input(5, ended);
    s.core.handle_input(ms(10), Input::Enqueue(keyed(2, "a")));
    s.core.handle_input(ms(10), Input::Enqueue(keyed(3, "b")));
    assert_eq!(s.at(10), [start(3, 1, 10)], "key a waits for its reset");
    let view = s.core.view(ms(10), G).expect("gate");
    assert!(view.quota.is_none(), "the gate is not paced: {view:?}");
    let a = s.core.busiest_keys(ms(10), G, 10);
    assert!(
        a.iter()
            .any(|k| k.key.as_deref() == Some("a") && k.due_in_memory == 1)
    );
    // At the reset (5 s after the answer) key a goes again.
    assert_eq!(s.at(5_005), [start(2, 1, 5_005)]);
}

#[test]
fn a_dropped_gate_is_forgotten_whole_and_taken_back_with_its_attempts_held() {
    let mut s = Script::new(limits(1_000.0, 2));
    assert_eq!(s.input(0, Input::Enqueue(task(1, 0))), [start(1, 1, 0)]);
    assert!(s.input(0, Input::Enqueue(task(2, 0))).is_empty());
    assert_eq!(s.at(1), [start(2, 1, 1)]);
    let leased = Input::Leased {
        task: TaskId(1),
        until: ms(10_000),
    };
    assert!(s.input(2, leased).is_empty());
    let ask = Input::Ask {
        task: TaskId(2),
        attempt: 1,
        ask: 0,
    };
    s.input(3, ask);
    // The unit moves: nothing of the gate is left, not even a timer.
    assert!(s.input(5, Input::DropGate(G)).is_empty());
    assert!(
        s.permits().is_empty(),
        "a permit of a dropped gate went out"
    );
    assert_eq!(
        s.core.poll_timeout(),
        None,
        "the lease's timer outlived its gate"
    );
    assert_eq!(s.core.running(), 0);
    let late = Input::AttemptEnded {
        task: TaskId(1),
        outcome: Outcome::Succeeded,
    };
    assert!(
        s.input(6, late).is_empty(),
        "a late report wrote for a dropped gate"
    );
    // Taken back, as a new owner would: an empty bucket, and the attempt
    // that was in flight held in its slot until its timeout.
    let adopt = Input::UpsertGate {
        gate: G,
        limits: limits(1_000.0, 2),
        keys: None,
        paused: false,
        ramp: true,
    };
    assert!(s.input(10, adopt).is_empty());
    let mut held = task(2, 0);
    held.attempts = 1;
    let hold = Input::HoldInterrupted {
        task: held,
        until: ms(500),
    };
    assert!(s.input(10, hold).is_empty());
    assert_eq!(s.core.running(), 1);
    s.input(10, Input::Enqueue(task(3, 10)));
    s.input(10, Input::Enqueue(task(4, 10)));
    let mut before = Vec::new();
    for t in 11..500 {
        before.extend(s.at(t));
    }
    let starts: Vec<_> = before
        .iter()
        .filter(|e| matches!(e, Effect::Start { .. }))
        .collect();
    assert_eq!(starts.len(), 1, "one slot was held: {before:?}");
    assert_eq!(starts[0].task(), Some(TaskId(3)));
    let at_hold_end = s.at(500);
    assert!(
        at_hold_end
            .iter()
            .any(|e| matches!(e, Effect::Requeue { task, .. } if *task == TaskId(2))),
        "the held attempt counts as interrupted and is retried: {at_hold_end:?}"
    );
    assert!(
        at_hold_end
            .iter()
            .any(|e| e.task() == Some(TaskId(4)) && matches!(e, Effect::Start { .. })),
        "its slot goes to the next task: {at_hold_end:?}"
    );
}

#[test]
fn a_stopping_gate_starts_nothing_but_lets_its_attempts_finish() {
    let mut s = Script::new(limits(1_000.0, 3));
    assert_eq!(s.input(0, Input::Enqueue(task(1, 0))), [start(1, 1, 0)]);
    assert_eq!(s.input(1, Input::Enqueue(task(2, 1))), [start(2, 1, 1)]);
    let leased = Input::Leased {
        task: TaskId(2),
        until: ms(60_000),
    };
    s.input(2, leased);
    assert_eq!(s.core.busy(G), 1, "a lease goes over on record");
    assert!(s.input(3, Input::Stop(G)).is_empty());
    assert!(
        s.input(4, Input::Enqueue(task(3, 4))).is_empty(),
        "a stopping gate started a task"
    );
    // The running attempt's plugin asks for two requests: both get permits
    // (the second takes a slot of its own), then the attempt ends with
    // the second still out.
    let ask = |n| Input::Ask {
        task: TaskId(1),
        attempt: 1,
        ask: n,
    };
    s.input(5, ask(1));
    s.input(10, ask(2));
    s.at(20);
    assert_eq!(s.permits().len(), 2, "a running attempt's requests wait");
    let ended = Input::AttemptEnded {
        task: TaskId(1),
        outcome: Outcome::Succeeded,
    };
    s.input(21, ended);
    assert_eq!(s.core.busy(G), 2, "its two requests are still out");
    let answered = Input::RequestEnded {
        task: TaskId(1),
        attempt: 1,
        signal: Signal::Healthy,
    };
    s.input(22, answered.clone());
    s.input(23, answered);
    assert_eq!(s.core.busy(G), 0);
    for t in 24..1_000 {
        assert!(
            !s.at(t).iter().any(|e| matches!(e, Effect::Start { .. })),
            "a stopping gate started a task at {t}"
        );
    }
}
