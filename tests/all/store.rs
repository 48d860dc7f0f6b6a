//! The store conformance suite: what every implementation of the store seam
//! (`Backend`, `Writes`, `Reads`) must do, written once over `dyn Backend`.
//! redb runs it on a file and in memory; a PostgreSQL store will run the same
//! functions.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use sluice::core::units::Units;
use sluice::core::{GateId, TaskId, Timestamp};
use sluice::store::{
    AttemptRecord, Backend, Counts, CountsDelta, GateRecord, PendingEntry, PgStore, PluginRecord,
    ReplayEnd, ReplayRecord, ScheduleRecord, Store, StoreError, TaskFilter, TaskRecord, TaskState,
    Writes,
};

const MIN: u64 = 60_000;

/// Every check, on one fresh store each.
fn conformance(fresh: impl Fn() -> Box<dyn Backend>) {
    writes_are_all_or_nothing_and_readers_see_snapshots(fresh().as_ref());
    gates_and_their_ids(fresh().as_ref());
    tasks_attempts_and_the_running_set(fresh().as_ref());
    a_start_reads_back_until_its_task_is_written_again(fresh().as_ref());
    pending_keys_in_due_order(fresh().as_ref());
    pending_tasks_by_key(fresh().as_ref());
    minute_counts_follow_pending(fresh().as_ref());
    pending_entries_removed_at_once(fresh().as_ref());
    a_transaction_sees_its_own_pending_changes(fresh().as_ref());
    idempotency_keys_belong_to_a_gate(fresh().as_ref());
    coalesce_keys_name_the_last_task(fresh().as_ref());
    counters_round_trip(fresh().as_ref());
    listings_newest_first(fresh().as_ref());
    retention_spares_a_task_that_runs_again(fresh().as_ref());
    plugins_and_their_artifacts(fresh().as_ref());
    schedules_and_lineage(fresh().as_ref());
    replay_jobs(fresh().as_ref());
}

#[test]
fn redb_file_conforms() {
    let dir = tempfile::tempdir().expect("temp dir");
    let n = std::sync::atomic::AtomicU32::new(0);
    conformance(|| {
        let i = n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Box::new(Store::open(&dir.path().join(format!("store-{i}.redb"))).expect("open"))
    });
}

/// The PostgreSQL store, each check in a schema of its own on a server this
/// test starts.
#[test]
fn postgres_conforms() {
    let Some(server) = crate::pg::PgServer::start() else {
        return;
    };
    let n = std::sync::atomic::AtomicU32::new(0);
    conformance(|| {
        let i = n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Box::new(PgStore::open_in(&server.url(), &format!("conformance_{i}")).expect("open"))
    });
}

#[test]
fn redb_in_memory_conforms() {
    conformance(|| Box::new(Store::in_memory().expect("store")));
}

fn gate(id: u32, name: &str) -> GateRecord {
    serde_json::from_value(json!({
        "id": id, "name": name, "rate_per_s": 10.0, "burst": 1, "concurrency": 10,
        "allowed_hosts": [], "timeout_ms": 30_000,
        "retry": { "max_attempts": 3, "initial_ms": 1_000, "max_ms": 60_000,
                   "multiplier": 2.0, "jitter": true, "max_retry_duration_ms": null },
        "recovery": { "start": 0.1, "over_ms": 60_000 },
        "circuit": null, "paused": false, "created_at": 1, "updated_at": 1,
    }))
    .expect("gate record")
}

fn task(id: u64, gate_id: u32, state: &str, finished_at: Option<u64>) -> TaskRecord {
    serde_json::from_value(json!({
        "id": id, "gate": format!("g{gate_id}"), "gate_id": gate_id, "state": state,
        "webhook": { "url": "https://a.example/", "method": "POST", "headers": {}, "body": null },
        "created_at": 1, "scheduled_at": 1, "due_at": 1, "timeout_ms": 1000,
        "retry": { "max_attempts": 3, "initial_ms": 1, "max_ms": 1, "multiplier": 2.0,
                   "jitter": false, "max_retry_duration_ms": null },
        "expires_at": null, "idempotency_key": format!("key{id}"),
        "labels": { "n": id.to_string() },
        "attempts": 1, "first_attempt_at": 1, "last_error": null, "finished_at": finished_at,
    }))
    .expect("task record")
}

fn attempt(n: u32) -> AttemptRecord {
    serde_json::from_value(json!({
        "attempt": n, "started_at": 10 * u64::from(n), "ended_at": null, "outcome": null,
        "status": null, "latency_ms": null, "error": null, "response": null,
    }))
    .expect("attempt record")
}

/// Puts a task and its pending entry: a task is pending in one place at a
/// time, and its record is written no later than its entry (PostgreSQL
/// keeps the entry in the task's row).
fn pend(
    tx: &mut dyn Writes,
    gate: GateId,
    key: Option<&str>,
    due: u64,
    id: u64,
) -> Result<(), StoreError> {
    tx.put_task(&task(id, gate.0, "scheduled", None))?;
    tx.insert_pending(gate, key, Timestamp(due), TaskId(id))
}

fn ok<T>(result: Result<T, StoreError>) -> T {
    result.expect("the store answers")
}

fn writes_are_all_or_nothing_and_readers_see_snapshots(store: &dyn Backend) {
    let before = ok(store.read());
    ok(store.write(|tx| tx.put_gate(&gate(1, "kept"))));
    // A write that fails part way leaves nothing behind.
    let failed: Result<(), _> = store.write(|tx| {
        tx.put_gate(&gate(2, "dropped"))?;
        Err(StoreError::Corrupt {
            table: "test",
            detail: "abort".into(),
        })
    });
    assert!(failed.is_err());
    let after = ok(store.read());
    let names: Vec<_> = ok(after.gates()).into_iter().map(|g| g.name).collect();
    assert_eq!(names, ["kept"], "a failed write left something");
    // A reader taken before the commit still sees the store as it was.
    assert!(
        ok(before.gates()).is_empty(),
        "a snapshot saw a later commit"
    );
}

fn gates_and_their_ids(store: &dyn Backend) {
    let (a, b) = ok(store.write(|tx| Ok((tx.next_gate_id()?, tx.next_gate_id()?))));
    assert!(a >= 1 && b > a, "gate ids {a}, {b}");
    ok(store.write(|tx| {
        tx.put_gate(&gate(a, "alpha"))?;
        tx.put_gate(&gate(b, "beta"))
    }));
    let mut changed = gate(a, "alpha");
    changed.paused = true;
    ok(store.write(|tx| tx.put_gate(&changed)));
    let r = ok(store.read());
    assert_eq!(ok(r.gate("alpha")), Some(changed.clone()));
    assert_eq!(ok(r.gates()).len(), 2);
    drop(r);
    // An engine adopting units reads their gates; a renamed gate moves.
    ok(store.write(|tx| {
        let names = |gates: Vec<GateRecord>| -> Vec<String> {
            let mut names: Vec<String> = gates.into_iter().map(|g| g.name).collect();
            names.sort();
            names
        };
        assert_eq!(names(tx.gates_in(Units::of("alpha"))?), ["alpha"]);
        assert_eq!(names(tx.gates_in(Units::of("beta"))?), ["beta"]);
        let both = Units::of("alpha").with(Units::of("beta"));
        assert_eq!(names(tx.gates_in(both)?), ["alpha", "beta"]);
        assert_eq!(names(tx.gates_in(Units::ALL)?), ["alpha", "beta"]);
        let elsewhere = Units::ALL.without(both);
        assert!(tx.gates_in(elsewhere)?.is_empty());
        Ok(())
    }));
    ok(store.write(|tx| tx.delete_gate("beta")));
    let r = ok(store.read());
    assert_eq!(ok(r.gate("beta")), None);
    // An id is never handed out twice, deletions or not.
    let c = ok(store.write(|tx| tx.next_gate_id()));
    assert!(c > b);
}

fn tasks_attempts_and_the_running_set(store: &dyn Backend) {
    ok(store.write(|tx| {
        assert_eq!(tx.last_task_id()?, None);
        for id in [5, 9, 7] {
            tx.put_task(&task(id, 1, "scheduled", None))?;
        }
        assert_eq!(
            tx.task(9)?.map(|t| t.id),
            Some(9),
            "a write sees its own task"
        );
        for n in [2, 1, 3] {
            tx.put_attempt(9, &attempt(n))?;
        }
        tx.set_running(9, true)?;
        tx.set_running(7, true)?;
        tx.set_running(7, false)
    }));
    let r = ok(store.read());
    assert_eq!(ok(r.task_count()), 3);
    assert_eq!(ok(r.task(7)).map(|t| t.state), Some(TaskState::Scheduled));
    assert_eq!(ok(r.task(8)), None);
    let numbers: Vec<u32> = ok(r.attempts(9)).iter().map(|a| a.attempt).collect();
    assert_eq!(numbers, [1, 2, 3], "attempts in order");
    drop(r);
    ok(store.write(|tx| {
        assert_eq!(tx.last_task_id()?, Some(9));
        assert_eq!(tx.running_tasks()?, [9]);
        // At least the gate's own: PostgreSQL gives only those.
        assert!(tx.running_tasks_in(&[1])?.contains(&9));
        assert!(tx.running_tasks_in(&[1, 2])?.contains(&9));
        assert_eq!(tx.attempt(9, 2)?.map(|a| a.started_at), Some(20));
        assert_eq!(tx.attempt(9, 4)?, None);
        tx.put_attempt(5, &attempt(1))?;
        let found = tx.attempts_of(&[(9, 3), (9, 4), (5, 1), (7, 1), (8, 1)])?;
        let mut found: Vec<(u64, u32)> = found.iter().map(|(id, a)| (*id, a.attempt)).collect();
        found.sort_unstable();
        assert_eq!(
            found,
            [(5, 1), (9, 3)],
            "the attempts that exist, one written in this transaction, read at once"
        );
        let mut read: Vec<u64> = tx.tasks(&[9, 8, 5])?.iter().map(|t| t.id).collect();
        read.sort_unstable();
        assert_eq!(read, [5, 9], "the records that exist, read at once");
        tx.put_task(&task(8, 1, "scheduled", None))?;
        assert_eq!(
            tx.tasks(&[8])?.len(),
            1,
            "and one written in the same transaction"
        );
        Ok(())
    }));
}

/// What the engine does to start a pending task: reads it, takes it out
/// of its gate's due order, marks it running and puts its attempt.
fn start(tx: &mut dyn Writes, key: Option<&str>, due: u64, id: u64) -> Result<(), StoreError> {
    let mut task = tx.task(id)?.expect("the task to start");
    assert!(tx.remove_pending(GateId(1), key, Timestamp(due), TaskId(id))?);
    task.state = TaskState::Running;
    task.attempts = 1;
    tx.put_task(&task)?;
    tx.set_running(id, true)?;
    tx.put_attempt(id, &attempt(1))
}

/// A start reads back as written through every read, before and after
/// later writes of its task: its end, and a write that did not read the
/// task first. (PostgreSQL keeps starts apart from their task rows,
/// schema 9.)
fn a_start_reads_back_until_its_task_is_written_again(store: &dyn Backend) {
    let g = GateId(1);
    ok(store.write(|tx| {
        for (id, key, due) in [(1, None, 10), (2, None, 20), (3, None, 30)]
            .into_iter()
            .chain([(4, Some("k"), 40), (5, Some("k"), 50)])
        {
            pend(tx, g, key, due, id)?;
        }
        Ok(())
    }));
    ok(store.write(|tx| {
        start(tx, None, 10, 1)?;
        start(tx, None, 20, 2)?;
        start(tx, Some("k"), 40, 4)
    }));
    let started = |store: &dyn Backend| {
        let r = ok(store.read());
        assert_eq!(ok(r.task(2)).map(|t| t.state), Some(TaskState::Running));
        assert_eq!(ok(r.oldest_pending(1)), Some(30));
        let keys = ok(r.gate_keys(1, None, 10, 100));
        assert_eq!(
            keys.iter()
                .map(|k| (k.key.as_str(), k.pending, k.oldest_due_ms))
                .collect::<Vec<_>>(),
            [("k", 1, 50)]
        );
        let listed = ok(r.list_tasks(&TaskFilter::default(), None, 10)).0;
        let running: Vec<u64> = listed
            .iter()
            .filter(|t| t.state == TaskState::Running)
            .map(|t| t.id)
            .collect();
        running
    };
    assert_eq!(started(store), [4, 2, 1]);
    assert_eq!(ok(ok(store.read()).attempts(1)), [attempt(1)]);
    ok(store.write(|tx| {
        assert_eq!(tx.running_tasks()?, [1, 2, 4]);
        assert_eq!(tx.running_tasks_in(&[1])?, [1, 2, 4]);
        let all = (Timestamp(0), TaskId(0));
        let (found, _) = tx.pending_range(g, None, all, Timestamp(u64::MAX), 9)?;
        assert_eq!(found, [(Timestamp(30), TaskId(3))]);
        assert_eq!(
            tx.pending_keys(g)?,
            [
                (None, (Timestamp(30), TaskId(3))),
                (Some("k".to_string()), (Timestamp(50), TaskId(5)))
            ]
        );
        assert_eq!(tx.all_pending(g)?.len(), 2);
        assert_eq!(tx.attempt(1, 1)?, Some(attempt(1)));
        assert_eq!(tx.attempts_of(&[(2, 1)])?.get(&2), Some(&attempt(1)));
        assert_eq!(
            tx.attempts_of(&[(2, 7), (2, 1)])?.get(&2),
            Some(&attempt(1)),
            "the start's attempt, whatever else is asked of its task"
        );
        assert!(
            !tx.remove_pending(g, None, Timestamp(10), TaskId(1))?,
            "a started task is in no due order"
        );
        Ok(())
    }));
    // Task 1 ends; task 2's attempt is written without a read of the task.
    let mut ended = attempt(1);
    ended.ended_at = Some(15);
    ended.outcome = Some("succeeded".into());
    let mut leased = attempt(1);
    leased.lease_until = Some(99);
    ok(store.write(|tx| {
        let mut task = tx.task(1)?.expect("task 1");
        task.state = TaskState::Succeeded;
        task.finished_at = Some(15);
        tx.put_task(&task)?;
        tx.set_running(1, false)?;
        tx.put_attempt(1, &ended)?;
        tx.put_attempt(2, &leased)
    }));
    let r = ok(store.read());
    assert_eq!(ok(r.task(1)).map(|t| t.state), Some(TaskState::Succeeded));
    assert_eq!(ok(r.attempts(1)), [ended]);
    assert_eq!(ok(r.attempts(2)), [leased]);
    assert_eq!(started(store), [4, 2], "task 2 still runs");
    ok(store.write(|tx| {
        assert_eq!(tx.running_tasks()?, [2, 4]);
        let all = (Timestamp(0), TaskId(0));
        let (found, _) = tx.pending_range(g, None, all, Timestamp(u64::MAX), 9)?;
        assert_eq!(found, [(Timestamp(30), TaskId(3))]);
        Ok(())
    }));
    // The minute counts followed: one pending task in minute 0 unkeyed and
    // one keyed.
    assert_eq!(ok(ok(store.read()).forecast(1, 0, 1)), [2]);
}

fn pending_keys_in_due_order(store: &dyn Backend) {
    let (g, other) = (GateId(1), GateId(2));
    ok(store.write(|tx| {
        for (due, id) in [(30, 3), (10, 1), (20, 5), (20, 2), (40, 4)] {
            pend(tx, g, None, due, id)?;
        }
        pend(tx, other, None, 5, 99)
    }));
    let key = |due, id| (Timestamp(due), TaskId(id));
    ok(store.write(|tx| {
        let (keys, next) = tx.pending_range(g, None, key(0, 0), Timestamp(u64::MAX), 3)?;
        assert_eq!(
            keys,
            [key(10, 1), key(20, 2), key(20, 5)],
            "by due, then id"
        );
        assert_eq!(next, Some(key(30, 3)));
        // From a key on, and not past `until`.
        let (keys, next) = tx.pending_range(g, None, key(20, 2), Timestamp(30), 10)?;
        assert_eq!(keys, [key(20, 2), key(20, 5), key(30, 3)]);
        assert_eq!(next, Some(key(40, 4)));
        let (keys, next) = tx.pending_range(g, None, key(41, 0), Timestamp(u64::MAX), 10)?;
        assert!(keys.is_empty() && next.is_none());
        assert!(tx.remove_pending(g, None, Timestamp(20), TaskId(5))?);
        assert!(
            !tx.remove_pending(g, None, Timestamp(20), TaskId(5))?,
            "removed twice"
        );
        assert!(
            !tx.remove_pending(g, None, Timestamp(99), TaskId(3))?,
            "wrong due"
        );
        assert_eq!(tx.all_pending(other)?, [(None, Timestamp(5), TaskId(99))]);
        Ok(())
    }));
    let r = ok(store.read());
    assert_eq!(ok(r.oldest_pending(1)), Some(10));
    assert_eq!(ok(r.oldest_pending(3)), None);
}

fn pending_tasks_by_key(store: &dyn Backend) {
    let (g, other) = (GateId(5), GateId(6));
    ok(store.write(|tx| {
        pend(tx, g, None, 50, 1)?;
        for (key, due, id) in [
            ("b", 30, 2),
            ("a", 40, 3),
            ("a", 10, 4),
            ("b", 20, 5),
            ("a", 10, 6),
            ("ab", 5, 7),
        ] {
            pend(tx, g, Some(key), due, id)?;
        }
        pend(tx, other, Some("a"), 1, 8)
    }));
    let order = |due, id| (Timestamp(due), TaskId(id));
    ok(store.write(|tx| {
        // Each key in its own order, the unnamed one apart.
        let (a, next) = tx.pending_range(g, Some("a"), order(0, 0), Timestamp(u64::MAX), 2)?;
        assert_eq!(a, [order(10, 4), order(10, 6)]);
        assert_eq!(next, Some(order(40, 3)));
        let (b, next) = tx.pending_range(g, Some("b"), order(0, 0), Timestamp(25), 10)?;
        assert_eq!(b, [order(20, 5)]);
        assert_eq!(next, Some(order(30, 2)));
        let (unnamed, _) = tx.pending_range(g, None, order(0, 0), Timestamp(u64::MAX), 10)?;
        assert_eq!(unnamed, [order(50, 1)]);
        // Every key with its first task, the unnamed one as `None`.
        let mut keys = tx.pending_keys(g)?;
        keys.sort();
        assert_eq!(
            keys,
            [
                (None, order(50, 1)),
                (Some("a".into()), order(10, 4)),
                (Some("ab".into()), order(5, 7)),
                (Some("b".into()), order(20, 5)),
            ]
        );
        assert_eq!(tx.pending_keys(other)?, [(Some("a".into()), order(1, 8))]);
        assert!(tx.remove_pending(g, Some("a"), Timestamp(10), TaskId(4))?);
        assert!(
            !tx.remove_pending(g, Some("b"), Timestamp(10), TaskId(6))?,
            "under another key"
        );
        assert_eq!(tx.all_pending(g)?.len(), 6);
        Ok(())
    }));
    let r = ok(store.read());
    assert_eq!(ok(r.oldest_pending(5)), Some(5), "the keyed tasks count");
}

fn minute_counts_follow_pending(store: &dyn Backend) {
    let now = 1_000 * MIN + 30_000;
    let add = |gate: u32, dues: &[u64], first: u64| {
        ok(store.write(|tx| {
            for (i, &due) in dues.iter().enumerate() {
                pend(tx, GateId(gate), None, due, first + i as u64)?;
            }
            Ok(())
        }))
    };
    // Overdue (two minutes back, and earlier this minute), due later this
    // minute, in five minutes, and in an hour and a half (past the forecast).
    add(1, &[998 * MIN, 998 * MIN + 1, now - 10_000], 1);
    add(1, &[now + 5_000, now + 5 * MIN, now + 5 * MIN + 1], 10);
    add(1, &[now + 90 * MIN], 20);
    add(2, &[now - 1], 30);
    let r = ok(store.read());
    assert_eq!(ok(r.due_now(1, now)), 3);
    assert_eq!(ok(r.due_now(2, now)), 1);
    let forecast = ok(r.forecast(1, now, 60));
    assert_eq!(forecast.len(), 60);
    assert_eq!((forecast[0], forecast[5]), (2, 2), "{forecast:?}");
    assert_eq!(forecast.iter().sum::<u64>(), 4);
    drop(r);
    // Starting (removing) tasks takes them out; a key removed twice counts once.
    ok(store.write(|tx| {
        let (g, t) = (GateId(1), Timestamp);
        assert!(tx.remove_pending(g, None, t(998 * MIN), TaskId(1))?);
        assert!(!tx.remove_pending(g, None, t(998 * MIN), TaskId(1))?);
        assert!(tx.remove_pending(g, None, t(now + 5_000), TaskId(10))?);
        Ok(())
    }));
    let r = ok(store.read());
    assert_eq!(ok(r.due_now(1, now)), 2);
    assert_eq!(ok(r.forecast(1, now, 60))[0], 1);
    drop(r);
    // A key inserted twice counts once.
    add(1, &[now + 5 * MIN], 11);
    assert_eq!(ok(ok(store.read()).forecast(1, now, 60))[5], 2);
}

/// Several pending entries taken out in one call (the starts of a turn):
/// each answered for, keyed and unkeyed alike, and the minute counts follow.
fn pending_entries_removed_at_once(store: &dyn Backend) {
    let now = 1_000 * MIN;
    let (g, other) = (GateId(1), GateId(2));
    ok(store.write(|tx| {
        pend(tx, g, None, now - 5, 1)?;
        pend(tx, g, None, now - 4, 2)?;
        pend(tx, g, Some("a"), now - 3, 3)?;
        pend(tx, other, Some("a"), now - 2, 4)
    }));
    let entry = |gate, key: Option<&str>, due, task| PendingEntry {
        gate,
        key: key.map(String::from),
        due: Timestamp(due),
        task: TaskId(task),
    };
    let answers = ok(store.write(|tx| {
        tx.remove_pending_many(&[
            entry(g, None, now - 5, 1),
            entry(g, Some("a"), now - 3, 3),
            entry(g, None, now - 9, 2),
            entry(g, Some("b"), now - 2, 6),
            entry(other, Some("a"), now - 2, 4),
            entry(g, None, now, 7),
        ])
    }));
    assert_eq!(
        answers,
        [true, true, false, false, true, false],
        "wrong due, wrong key and no entry answer false"
    );
    let r = ok(store.read());
    assert_eq!(ok(r.due_now(1, now)), 1, "only task 2 is left");
    assert_eq!(ok(r.due_now(2, now)), 0);
    drop(r);
    ok(store.write(|tx| {
        assert_eq!(tx.all_pending(g)?, [(None, Timestamp(now - 4), TaskId(2))]);
        assert_eq!(tx.remove_pending_many(&[])?, Vec::<bool>::new());
        Ok(())
    }));
}

/// Within one transaction, as a turn goes: records read, some entries taken
/// out, others put in; a range read next sees just that (PostgreSQL lays
/// the task rows it has not sent yet over the database's), and so do the
/// minute counts once it commits.
fn a_transaction_sees_its_own_pending_changes(store: &dyn Backend) {
    let now = 1_000 * MIN;
    let g = GateId(1);
    let order = |due: u64, id: u64| (Timestamp(due), TaskId(id));
    ok(store.write(|tx| {
        for id in 1..=6 {
            pend(tx, g, None, now - 10 + id, id)?;
        }
        Ok(())
    }));
    ok(store.write(|tx| {
        assert_eq!(tx.tasks(&[1, 2, 3])?.len(), 3);
        let entries: Vec<PendingEntry> = [1, 2]
            .map(|id| PendingEntry {
                gate: g,
                key: None,
                due: Timestamp(now - 10 + id),
                task: TaskId(id),
            })
            .into();
        assert_eq!(tx.remove_pending_many(&entries)?, [true, true]);
        let (found, next) = tx.pending_range(g, None, order(0, 0), Timestamp(u64::MAX), 2)?;
        assert_eq!(found, [order(now - 7, 3), order(now - 6, 4)]);
        assert_eq!(next, Some(order(now - 5, 5)));
        // A new task, and task 1 back (a retry), both ahead of the others.
        pend(tx, g, None, now - 20, 7)?;
        tx.insert_pending(g, None, Timestamp(now - 15), TaskId(1))?;
        let (found, next) = tx.pending_range(g, None, order(0, 0), Timestamp(u64::MAX), 3)?;
        assert_eq!(
            found,
            [order(now - 20, 7), order(now - 15, 1), order(now - 7, 3)]
        );
        assert_eq!(next, Some(order(now - 6, 4)));
        let (found, _) = tx.pending_range(g, None, order(now - 15, 2), Timestamp(now - 6), 9)?;
        assert_eq!(
            found,
            [order(now - 7, 3), order(now - 6, 4)],
            "from an order on"
        );
        Ok(())
    }));
    // A create's order of writes: its entry, a read of another task, and
    // only then its record (the turn writes records at its end).
    ok(store.write(|tx| {
        tx.index_task(1, 8)?;
        tx.insert_pending(g, None, Timestamp(now - 30), TaskId(8))?;
        assert!(tx.task(3)?.is_some());
        tx.put_task(&task(8, 1, "scheduled", None))
    }));
    // The same, read as a gate's first orders and its whole queue (a
    // gate's keys loaded, or its tasks ended, in the turn of a create).
    ok(store.write(|tx| {
        tx.index_task(1, 9)?;
        tx.insert_pending(g, None, Timestamp(now - 40), TaskId(9))?;
        tx.index_task(1, 10)?;
        tx.insert_pending(g, Some("k"), Timestamp(now - 35), TaskId(10))?;
        assert_eq!(
            tx.pending_keys(g)?,
            [
                (None, order(now - 40, 9)),
                (Some("k".into()), order(now - 35, 10))
            ],
            "the first orders"
        );
        let all: Vec<u64> = tx.all_pending(g)?.iter().map(|(_, _, id)| id.0).collect();
        assert_eq!(all, [9, 8, 7, 1, 3, 4, 5, 6, 10], "the whole queue");
        tx.put_task(&task(9, 1, "scheduled", None))?;
        tx.put_task(&task(10, 1, "scheduled", None))?;
        tx.remove_pending(g, None, Timestamp(now - 40), TaskId(9))?;
        tx.remove_pending(g, Some("k"), Timestamp(now - 35), TaskId(10))?;
        tx.put_task(&task(9, 1, "cancelled", Some(now)))?;
        tx.put_task(&task(10, 1, "cancelled", Some(now)))
    }));
    let r = ok(store.read());
    assert_eq!(ok(r.due_now(1, now)), 7, "tasks 1, 3 to 8");
    assert_eq!(ok(r.oldest_pending(1)), Some(now - 30));
    drop(r);
    ok(store.write(|tx| {
        let (found, _) = tx.pending_range(g, None, order(0, 0), Timestamp(u64::MAX), 9)?;
        let ids: Vec<u64> = found.iter().map(|(_, id)| id.0).collect();
        assert_eq!(ids, [8, 7, 1, 3, 4, 5, 6], "as committed");
        let (all, next) =
            tx.pending_range(g, None, order(0, 0), Timestamp(u64::MAX), usize::MAX)?;
        assert_eq!((all.len(), next), (7, None), "no limit");
        Ok(())
    }));
}

fn idempotency_keys_belong_to_a_gate(store: &dyn Backend) {
    ok(store.write(|tx| tx.put_idempotent(1, "order-42", 7)));
    ok(store.write(|tx| {
        assert_eq!(tx.idempotent(1, "order-42")?, Some(7));
        assert_eq!(tx.idempotent(2, "order-42")?, None, "keys are per gate");
        assert_eq!(tx.idempotent(1, "order-43")?, None);
        // A claim names the key's task only if none holds it.
        assert_eq!(tx.claim_idempotent(1, "order-42", 8)?, Some(7));
        assert_eq!(tx.claim_idempotent(1, "order-43", 9)?, None);
        assert_eq!(tx.claim_idempotent(1, "order-43", 10)?, Some(9));
        Ok(())
    }));
    let reader = ok(store.write(|tx| tx.idempotent(1, "order-43")));
    assert_eq!(reader, Some(9), "a claim is stored");
    // A key is freed only for the task it still names; then a claim takes it.
    ok(store.write(|tx| {
        tx.forget_idempotent(1, "order-43", 10)?;
        assert_eq!(tx.idempotent(1, "order-43")?, Some(9), "named another task");
        tx.forget_idempotent(1, "order-43", 9)?;
        assert_eq!(tx.idempotent(1, "order-43")?, None);
        assert_eq!(tx.claim_idempotent(1, "order-43", 11)?, None);
        Ok(())
    }));
    let reader = ok(store.write(|tx| tx.idempotent(1, "order-43")));
    assert_eq!(reader, Some(11), "freed and claimed again");
}

fn coalesce_keys_name_the_last_task(store: &dyn Backend) {
    ok(store.write(|tx| {
        tx.put_coalesced(1, "order-42", 7)?;
        tx.put_coalesced(1, "order-42", 8)?;
        assert_eq!(
            tx.coalesced(1, "order-42")?,
            Some(8),
            "in the same transaction"
        );
        Ok(())
    }));
    ok(store.write(|tx| {
        assert_eq!(tx.coalesced(1, "order-42")?, Some(8), "the last one wins");
        assert_eq!(tx.coalesced(2, "order-42")?, None, "keys are per gate");
        Ok(())
    }));
}

fn counters_round_trip(store: &dyn Backend) {
    let counts = Counts {
        pending: 3,
        running: 1,
        succeeded: 10,
        superseded: 2,
        attempts: 12,
        ..Counts::default()
    };
    ok(store.write(|tx| {
        tx.put_counts(1, &counts)?;
        tx.put_counts(2, &Counts::default())
    }));
    assert_eq!(ok(ok(store.read()).counts(1)), counts);
    ok(store.write(|tx| {
        assert_eq!(tx.all_counts()?.len(), 2);
        tx.delete_counts(2)?;
        assert_eq!(tx.all_counts()?, [(1, counts)]);
        Ok(())
    }));
    assert_eq!(ok(ok(store.read()).counts(9)), Counts::default());
    // Changes add up, to a gate counted before and to a new one; a counter
    // never goes below zero.
    let before = Counts {
        pending: 1,
        ..Counts::default()
    };
    let after = Counts {
        pending: 0,
        running: 1,
        attempts: 1,
        ..Counts::default()
    };
    let started = CountsDelta::between(&before, &after);
    ok(store.write(|tx| tx.add_counts(&[(1, started), (7, started)])));
    let reader = ok(store.read());
    let expect = Counts {
        pending: 2,
        running: 2,
        attempts: 13,
        ..counts
    };
    assert_eq!(ok(reader.counts(1)), expect);
    assert_eq!(
        ok(reader.counts(7)),
        Counts {
            running: 1,
            attempts: 1,
            ..Counts::default()
        }
    );
}

fn listings_newest_first(store: &dyn Backend) {
    ok(store.write(|tx| {
        for id in 1..=6u64 {
            let gate_id = if id % 2 == 0 { 2 } else { 1 };
            let state = if id == 5 { "failed" } else { "scheduled" };
            tx.put_task(&task(id, gate_id, state, None))?;
            tx.index_task(gate_id, id)?;
        }
        Ok(())
    }));
    let r = ok(store.read());
    let ids = |filter: TaskFilter, before, limit| {
        let (tasks, cursor) = ok(r.list_tasks(&filter, before, limit));
        (tasks.iter().map(|t| t.id).collect::<Vec<_>>(), cursor)
    };
    let all = TaskFilter::default();
    assert_eq!(ids(all.clone(), None, 10), (vec![6, 5, 4, 3, 2, 1], None));
    let (page, cursor) = ids(all.clone(), None, 2);
    assert_eq!(page, [6, 5]);
    assert_eq!(ids(all, cursor, 10).0, [4, 3, 2, 1], "the cursor continues");
    let gate_1 = TaskFilter {
        gate_id: Some(1),
        ..TaskFilter::default()
    };
    assert_eq!(ids(gate_1.clone(), None, 10).0, [5, 3, 1]);
    let failed = TaskFilter {
        state: Some(TaskState::Failed),
        ..gate_1
    };
    assert_eq!(ids(failed, None, 10).0, [5]);
    let labelled = TaskFilter {
        label: Some(("n".into(), "4".into())),
        ..TaskFilter::default()
    };
    assert_eq!(ids(labelled, None, 10).0, [4]);
}

fn retention_spares_a_task_that_runs_again(store: &dyn Backend) {
    ok(store.write(|tx| {
        for id in [1, 2] {
            tx.put_task(&task(id, 1, "failed", Some(100)))?;
            tx.put_idempotent(1, &format!("key{id}"), id)?;
            tx.index_task(1, id)?;
            tx.put_attempt(id, &attempt(1))?;
        }
        // Task 2 is retried by an operator: scheduled again.
        tx.put_task(&task(2, 1, "scheduled", None))
    }));
    let (removed, more) = ok(store.write(|tx| tx.prune(1_000, 10)));
    assert_eq!((removed, more), (1, false));
    let r = ok(store.read());
    assert!(ok(r.task(1)).is_none());
    assert!(ok(r.attempts(1)).is_empty(), "attempts go with their task");
    assert!(ok(r.task(2)).is_some(), "a live task was pruned");
    drop(r);
    ok(store.write(|tx| {
        assert_eq!(tx.idempotent(1, "key1")?, None);
        assert_eq!(tx.idempotent(1, "key2")?, Some(2));
        Ok(())
    }));
    // A finished task rewritten later at the same instant keeps the others of
    // its entry indexed; a limit leaves the rest for the next call.
    ok(store.write(|tx| {
        for id in [3, 4, 5] {
            tx.put_task(&task(id, 1, "succeeded", Some(200)))?;
        }
        Ok(())
    }));
    ok(store.write(|tx| tx.put_task(&task(3, 1, "succeeded", Some(200)))));
    assert_eq!(
        ok(store.write(|tx| tx.prune(150, 10))),
        (0, false),
        "too young"
    );
    // A limit may leave some for the next call; all three of the instant are
    // found in the end, and nothing else.
    let mut total = 0;
    for _ in 0..4 {
        let (removed, more) = ok(store.write(|tx| tx.prune(1_000, 1)));
        total += removed;
        if !more {
            break;
        }
    }
    assert_eq!(total, 3, "all three of the instant are found");
    assert_eq!(
        ok(store.write(|tx| tx.prune(1_000, usize::MAX))),
        (0, false)
    );
}

/// Retention on one node spares a task that another node runs again
/// between retention's read of it and its commit: the task, its pending
/// place and its idempotency key stay.
#[test]
fn postgres_retention_spares_a_task_another_node_runs_again() {
    let Some(server) = crate::pg::PgServer::start() else {
        return;
    };
    let open = || -> Box<dyn Backend> {
        Box::new(PgStore::open_in(&server.url(), "retention_race").expect("open"))
    };
    let (retention, owner) = (open(), open());
    let g = GateId(1);
    ok(owner.write(|tx| {
        tx.index_task(1, 3)?;
        tx.put_task(&task(3, 1, "succeeded", Some(10)))?;
        tx.put_idempotent(1, "key3", 3)
    }));
    ok(retention.write(|tx| {
        tx.prune(11, 10)?;
        // Retried by the gate's owner before retention commits.
        ok(owner.write(|tx| {
            tx.put_task(&task(3, 1, "scheduled", None))?;
            tx.insert_pending(g, None, Timestamp(50), TaskId(3))
        }));
        Ok(())
    }));
    let r = ok(retention.read());
    let kept = ok(r.task(3)).expect("the task run again was pruned");
    assert_eq!(kept.state.as_str(), "scheduled");
    drop(r);
    ok(owner.write(|tx| {
        assert_eq!(tx.idempotent(1, "key3")?, Some(3), "its key");
        let (found, _) =
            tx.pending_range(g, None, (Timestamp(0), TaskId(0)), Timestamp(u64::MAX), 9)?;
        assert_eq!(found, [(Timestamp(50), TaskId(3))], "its place");
        Ok(())
    }));
}

fn plugins_and_their_artifacts(store: &dyn Backend) {
    let record: PluginRecord = serde_json::from_value(json!({
        "name": "resize", "version": "1.0.0", "size": 4, "sha256": "00",
        "uploaded_at": 1, "imports": ["sluice:task/log@0.1.0"], "unfinished": 0,
    }))
    .expect("plugin record");
    let key = "resize@1.0.0";
    ok(store.write(|tx| {
        tx.put_plugin(&record)?;
        tx.put_plugin_wasm(key, b"\0asm")?;
        tx.put_compiled(key, 7, b"artifact")?;
        assert_eq!(tx.plugins()?, std::slice::from_ref(&record));
        Ok(())
    }));
    let r = ok(store.read());
    assert_eq!(ok(r.plugin(key)), Some(record.clone()));
    assert_eq!(ok(r.plugin_wasm(key)).as_deref(), Some(&b"\0asm"[..]));
    assert_eq!(ok(r.compiled(key, 7)).as_deref(), Some(&b"artifact"[..]));
    assert_eq!(ok(r.compiled(key, 8)), None, "another engine's artifact");
    drop(r);
    // Tasks that use it are counted by adding; an unknown plugin is passed over.
    ok(store.write(|tx| {
        tx.add_plugin_refs(&[("other@1.0.0".into(), 1), (key.into(), 3)])?;
        tx.add_plugin_refs(&[(key.into(), -1)])
    }));
    let counted = ok(ok(store.read()).plugin(key)).map(|p| p.unfinished);
    assert_eq!(counted, Some(2));
    assert_eq!(ok(ok(store.read()).plugin("other@1.0.0")), None);
    ok(store.write(|tx| tx.delete_plugin(key)));
    let r = ok(store.read());
    assert!(ok(r.plugins()).is_empty());
    assert_eq!(
        ok(r.plugin_wasm(key)),
        None,
        "the component goes with its record"
    );
    assert_eq!(ok(r.compiled(key, 7)), None, "and every compiled artifact");
}

fn schedules_and_lineage(store: &dyn Backend) {
    let schedule: ScheduleRecord = serde_json::from_value(json!({
        "name": "nightly", "cron": "0 3 * * *", "timezone": "UTC", "every_ms": null,
        "anchor": 0, "misfire": "skip", "catchup_limit": 0, "jitter_ms": 0,
        "template": { "gate": "g", "webhook": { "url": "https://a.example/",
            "method": "POST", "headers": {}, "body": null },
            "max_attempts": null, "timeout_ms": null, "backoff": null,
            "max_retry_duration_ms": null, "expires_after_ms": null, "labels": {} },
        "paused": false, "current": null, "last_scheduled": null, "counted_through": 0,
        "missed": 0, "skipped": 0, "last_runs": [], "last_error": null,
        "created_at": 1, "updated_at": 1,
    }))
    .expect("schedule record");
    ok(store.write(|tx| {
        tx.put_schedule(&schedule)?;
        assert_eq!(tx.descendants(1)?, 0);
        tx.set_descendants(1, 12)
    }));
    let r = ok(store.read());
    assert_eq!(ok(r.schedule("nightly")), Some(schedule.clone()));
    assert_eq!(ok(r.schedules()).len(), 1);
    drop(r);
    ok(store.write(|tx| {
        assert_eq!(tx.schedules()?, std::slice::from_ref(&schedule));
        assert_eq!(tx.descendants(1)?, 12);
        tx.delete_schedule("nightly")
    }));
    assert_eq!(ok(ok(store.read()).schedule("nightly")), None);
    // A root's budget: added to up to its max, never past it, given back.
    ok(store.write(|tx| {
        assert_eq!(tx.add_descendants(1, 3, 15)?, Some(15));
        assert_eq!(tx.add_descendants(1, 1, 15)?, None, "past the max");
        assert_eq!(tx.descendants(1)?, 15);
        assert_eq!(tx.add_descendants(1, -2, 15)?, Some(13));
        assert_eq!(
            tx.add_descendants(2, 16, 15)?,
            None,
            "a new root past the max"
        );
        assert_eq!(tx.add_descendants(2, 4, 15)?, Some(4));
        Ok(())
    }));
    assert_eq!(ok(store.write(|tx| tx.descendants(2))), 4);
}

/// Replay jobs: written whole, overwritten by id, listed, forgotten.
fn replay_jobs(store: &dyn Backend) {
    let running = ReplayRecord {
        id: "rp_a".into(),
        filter: TaskFilter {
            gate_id: Some(3),
            state: Some(TaskState::Failed),
            label: Some(("team".into(), "a".into())),
            finished: Some((5, 9)),
            key: Some("acme".into()),
        },
        cursor: Some(42),
        matched: 250,
        replayed: 249,
        started_at: 7,
        cancelled: false,
        ended: None,
    };
    let ended = ReplayRecord {
        id: "rp_b".into(),
        cursor: Some(0),
        ended: Some(ReplayEnd {
            at: 8,
            state: "done".into(),
            error: None,
        }),
        ..running.clone()
    };
    assert_eq!(ok(ok(store.read()).replays()), []);
    ok(store.write(|tx| {
        tx.put_replay(&running)?;
        tx.put_replay(&ended)
    }));
    let r = ok(store.read());
    assert_eq!(ok(r.replay("rp_a")), Some(running.clone()));
    assert_eq!(ok(r.replays()), [running.clone(), ended.clone()]);
    drop(r);
    let moved = ReplayRecord {
        cursor: Some(17),
        matched: 500,
        ..running.clone()
    };
    ok(store.write(|tx| {
        tx.put_replay(&moved)?;
        tx.delete_replay("rp_b")
    }));
    let r = ok(store.read());
    assert_eq!(ok(r.replays()), [moved]);
    assert_eq!(ok(r.replay("rp_b")), None);
}

/// Runs `sql` (statements naming their own schema) on the test's
/// PostgreSQL server.
fn pg_sql(url: &str, sql: &str) {
    pg_rows(url, "public", sql);
}

/// The rows of `sql` on the test's PostgreSQL server, in schema `schema`,
/// each value as text.
fn pg_rows(url: &str, schema: &str, sql: &str) -> Vec<Vec<String>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .expect("connect");
        let driver = tokio::spawn(connection);
        let set = format!("SET search_path TO {schema}");
        client.batch_execute(&set).await.expect("search_path");
        let found = client.simple_query(sql).await.expect("sql");
        drop(client);
        let _ = driver.await;
        found
            .iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(row) => Some(
                    (0..row.len())
                        .map(|i| row.get(i).unwrap_or("null").to_string())
                        .collect(),
                ),
                _ => None,
            })
            .collect()
    })
}

/// PostgreSQL keeps a transaction's starts (three or more) in one row of
/// `starts` and leaves the task rows as they were, so a task's row is written at its
/// creation and its end only; the end takes the start into the row, and
/// a later sweep removes the row of starts once none of them counts. The
/// check finds the minute counts and the running set as the reads see them.
#[test]
fn postgres_keeps_starts_apart_from_task_rows() {
    let Some(server) = crate::pg::PgServer::start() else {
        return;
    };
    let url = server.url();
    let schema = "starts_apart";
    let pg = PgStore::open_in(&url, schema).expect("open");
    let store: &dyn Backend = &pg;
    ok(store.write(|tx| {
        tx.put_gate(&gate(1, "g1"))?;
        for (id, due) in [(1, 10), (2, 20), (3, 30), (4, 40)] {
            let mut task = task(id, 1, "scheduled", None);
            task.due_at = due;
            tx.put_task(&task)?;
            tx.insert_pending(GateId(1), None, Timestamp(due), TaskId(id))?;
        }
        Ok(())
    }));
    let counts = |pending, running, failed| Counts {
        pending,
        running,
        failed,
        attempts: 3,
        ..Counts::default()
    };
    ok(store.write(|tx| {
        start(tx, None, 10, 1)?;
        start(tx, None, 20, 2)?;
        start(tx, None, 30, 3)?;
        tx.put_counts(1, &counts(1, 3, 0))
    }));
    let sql = |q: &str| pg_rows(&url, schema, q);
    assert_eq!(
        sql("SELECT id, due, running, v FROM tasks ORDER BY id"),
        [
            ["1", "10", "f", "0"],
            ["2", "20", "f", "0"],
            ["3", "30", "f", "0"],
            ["4", "40", "f", "0"]
        ],
        "the rows as their creation wrote them"
    );
    assert_eq!(sql("SELECT ids FROM starts"), [["{1,2,3}"]]);
    assert_eq!(ok(ok(store.read()).due_now(1, 45)), 1, "due by 45: task 4");
    let found = ok(pg.check());
    assert!(found.problems.is_empty(), "{:?}", found.problems);
    assert_eq!(found.attempts, 3);

    let mut ended = attempt(1);
    ended.ended_at = Some(15);
    ok(store.write(|tx| {
        for id in [1, 2, 3] {
            let mut task = tx.task(id)?.expect("task");
            task.state = TaskState::Failed;
            task.finished_at = Some(15);
            tx.put_task(&task)?;
            tx.set_running(id, false)?;
            tx.put_attempt(id, &ended)?;
        }
        tx.put_counts(1, &counts(1, 0, 3))
    }));
    assert_eq!(
        sql("SELECT id, due, running, array_length(attempts, 1) FROM tasks ORDER BY id"),
        [
            ["1", "null", "f", "1"],
            ["2", "null", "f", "1"],
            ["3", "null", "f", "1"],
            ["4", "40", "f", "null"]
        ],
        "the ends took the starts in"
    );
    let found = ok(pg.check());
    assert!(found.problems.is_empty(), "{:?}", found.problems);
    // Task 1's row removed (by retention, say) and made again while the
    // row of starts still holds its start: the new row starts past the
    // version that start was made on, so the start does not count again.
    sql("DELETE FROM tasks WHERE id = 1");
    ok(store.write(|tx| pend(tx, GateId(1), None, 50, 1)));
    assert_eq!(
        ok(ok(store.read()).task(1)).map(|t| t.state),
        Some(TaskState::Scheduled)
    );
    assert_eq!(sql("SELECT v FROM tasks WHERE id = 1"), [["1"]]);
    ok(store.write(|tx| {
        let all = (Timestamp(0), TaskId(0));
        let (found, _) = tx.pending_range(GateId(1), None, all, Timestamp(u64::MAX), 9)?;
        assert_eq!(
            found,
            [(Timestamp(40), TaskId(4)), (Timestamp(50), TaskId(1))]
        );
        Ok(())
    }));
    for _ in 0..16 {
        ok(store.write(|_| Ok(())));
    }
    assert_eq!(sql("SELECT count(*) FROM starts"), [["0"]], "swept");
}

/// A schema-4 database, which kept the running set, the gate listing, the
/// retention index, the pending entries and the attempts in tables of
/// their own, is upgraded in place by the next open (schemas 5 and 8 keep
/// them in the task rows): the same task is running, the gates list the
/// same tasks, the same tasks are pending in the same order, each task has
/// its attempts (a gap in their numbers kept), retention finds the finished
/// one (a stale retention entry of an earlier finish left behind does not
/// count), and the check finds what it found before.
#[test]
fn postgres_schema_4_upgrades_in_place() {
    let Some(server) = crate::pg::PgServer::start() else {
        return;
    };
    let url = server.url();
    let before = {
        let pg = PgStore::open_in(&url, "upgrade_4").expect("open");
        let store: &dyn Backend = &pg;
        ok(store.write(|tx| {
            for id in 1..=4u64 {
                let (gate, finished) = (1 + (id % 2) as u32, (id == 3).then_some(1_000));
                let state = if id == 3 { "succeeded" } else { "scheduled" };
                tx.put_task(&task(id, gate, state, finished))?;
                tx.index_task(gate, id)?;
            }
            tx.insert_pending(GateId(2), None, Timestamp(70), TaskId(1))?;
            tx.insert_pending(GateId(1), Some("k"), Timestamp(60), TaskId(4))?;
            for n in [1, 2] {
                tx.put_attempt(2, &attempt(n))?;
            }
            tx.put_attempt(3, &attempt(2))?;
            tx.set_running(2, true)
        }));
        ok(pg.check()).problems
    };
    pg_sql(
        &url,
        "SET search_path TO upgrade_4;
         CREATE TABLE running (task_id bigint PRIMARY KEY);
         CREATE TABLE gate_tasks (
             gate_id int NOT NULL, task_id bigint NOT NULL, PRIMARY KEY (gate_id, task_id));
         CREATE TABLE finished (
             at bigint NOT NULL, task_id bigint NOT NULL, PRIMARY KEY (at, task_id));
         INSERT INTO running SELECT id FROM tasks WHERE running;
         INSERT INTO gate_tasks SELECT gate_id, id FROM tasks;
         INSERT INTO finished SELECT finished_at, id FROM tasks WHERE finished_at IS NOT NULL;
         INSERT INTO finished VALUES (500, 3);
         CREATE TABLE pending (gate_id int NOT NULL, due bigint NOT NULL, task_id bigint NOT NULL,
             PRIMARY KEY (gate_id, due, task_id));
         CREATE TABLE pending_keyed (gate_id int NOT NULL, key text COLLATE \"C\" NOT NULL,
             due bigint NOT NULL, task_id bigint NOT NULL, PRIMARY KEY (gate_id, key, due, task_id));
         CREATE TABLE attempts (task_id bigint NOT NULL, attempt int NOT NULL,
             record bytea NOT NULL, PRIMARY KEY (task_id, attempt));
         INSERT INTO pending SELECT gate_id, due, id FROM tasks WHERE due IS NOT NULL AND pkey IS NULL;
         INSERT INTO pending_keyed SELECT gate_id, pkey, due, id FROM tasks WHERE pkey IS NOT NULL;
         INSERT INTO attempts SELECT t.id, i, t.attempts[i]
             FROM tasks t, generate_subscripts(t.attempts, 1) i WHERE t.attempts[i] IS NOT NULL;
         DROP INDEX tasks_by_gate, tasks_running, tasks_finished, tasks_pending, tasks_pending_keyed;
         DROP VIEW live, started;
         DROP TABLE starts;
         ALTER TABLE tasks DROP COLUMN gate_id, DROP COLUMN finished_at, DROP COLUMN running,
             DROP COLUMN due, DROP COLUMN pkey, DROP COLUMN attempts, DROP COLUMN v;
         UPDATE meta SET value = 4 WHERE key = 'schema_version';",
    );
    let pg = PgStore::open_in(&url, "upgrade_4").expect("upgraded");
    let store: &dyn Backend = &pg;
    ok(store.write(|tx| {
        assert_eq!(tx.running_tasks()?, [2], "the running set");
        let all = (Timestamp(0), TaskId(0));
        let (found, _) = tx.pending_range(GateId(2), None, all, Timestamp(u64::MAX), 9)?;
        assert_eq!(found, [(Timestamp(70), TaskId(1))], "pending");
        assert_eq!(
            tx.pending_keys(GateId(1))?,
            [(Some("k".to_string()), (Timestamp(60), TaskId(4)))],
            "pending under a key"
        );
        assert_eq!(tx.attempt(3, 2)?.map(|a| a.started_at), Some(20));
        assert_eq!(tx.attempt(3, 1)?, None);
        Ok(())
    }));
    let r = ok(store.read());
    for (id, numbers) in [(2, vec![1, 2]), (3, vec![2]), (1, vec![])] {
        let found: Vec<u32> = ok(r.attempts(id)).iter().map(|a| a.attempt).collect();
        assert_eq!(found, numbers, "task {id}'s attempts");
    }
    assert_eq!(ok(r.due_now(2, 100)), 1);
    for (gate, ids) in [(1, vec![4, 2]), (2, vec![3, 1])] {
        let filter = TaskFilter {
            gate_id: Some(gate),
            ..TaskFilter::default()
        };
        let listed: Vec<u64> = ok(r.list_tasks(&filter, None, 10))
            .0
            .iter()
            .map(|t| t.id)
            .collect();
        assert_eq!(listed, ids, "gate {gate}");
    }
    drop(r);
    assert_eq!(
        ok(pg.check()).problems,
        before,
        "the check, before and after"
    );
    assert_eq!(
        ok(store.write(|tx| tx.prune(999, 10))),
        (0, false),
        "not yet"
    );
    assert_eq!(
        ok(store.write(|tx| tx.prune(1_001, 10))),
        (1, false),
        "task 3 goes"
    );
    assert_eq!(ok(ok(store.read()).task(3)), None);
}

/// A schema-5 database (one lease for every gate) is upgraded to schema 7
/// (a lease per unit, the fence on the node, each gate's unit in its row,
/// the nodes' slot marks),
/// but only once no node of it beats: the old nodes would go on writing
/// under the old rules beside the new one.
#[test]
fn postgres_schema_5_upgrades_once_its_nodes_are_stopped() {
    let Some(server) = crate::pg::PgServer::start() else {
        return;
    };
    let url = server.url();
    let names: Vec<String> = (0..40).map(|i| format!("gate-{i}")).collect();
    {
        let pg = PgStore::open_in(&url, "upgrade_5").expect("open");
        let store: &dyn Backend = &pg;
        ok(store.write(|tx| {
            for (id, name) in (1..).zip(&names) {
                tx.put_gate(&gate(id, name))?;
            }
            Ok(())
        }));
    }
    pg_sql(
        &url,
        "SET search_path TO upgrade_5;
         DROP TABLE units;
         DROP INDEX gates_by_unit;
         ALTER TABLE gates DROP COLUMN unit;
         ALTER TABLE nodes DROP COLUMN fence, DROP COLUMN leaving, DROP COLUMN slots_until;
         CREATE TABLE ownership (scope text PRIMARY KEY, owner text, epoch bigint NOT NULL,
             expires_at timestamptz NOT NULL);
         DELETE FROM meta WHERE key = 'units';
         UPDATE meta SET value = 5 WHERE key = 'schema_version';
         INSERT INTO nodes (id, address) VALUES ('n-old', 'http://127.0.0.1:1');",
    );
    let Err(refused) = PgStore::open_in(&url, "upgrade_5").map(drop) else {
        panic!("upgraded beside a live node");
    };
    let refused = refused.to_string();
    assert!(refused.contains("stop every node"), "{refused}");
    pg_sql(&url, "SET search_path TO upgrade_5; DELETE FROM nodes;");
    let pg = PgStore::open_in(&url, "upgrade_5").expect("upgraded");
    let store: &dyn Backend = &pg;
    ok(store.write(|tx| {
        for name in &names {
            let found: Vec<String> = tx
                .gates_in(Units::of(name))?
                .into_iter()
                .map(|g| g.name)
                .collect();
            assert!(found.contains(name), "{name} in its unit: {found:?}");
            assert!(
                found.iter().all(|n| Units::of(n) == Units::of(name)),
                "{found:?}"
            );
        }
        Ok(())
    }));
    assert!(ok(pg.check()).problems.is_empty());
    // Schema 7: the slot marks are there, the single lease's table gone.
    pg_sql(
        &url,
        "SET search_path TO upgrade_5; SELECT slots_until FROM nodes; \
         DO $$ BEGIN IF to_regclass('ownership') IS NOT NULL THEN \
         RAISE 'ownership is still there'; END IF; END $$;",
    );
    pg_sql(
        &url,
        "SET search_path TO upgrade_5; UPDATE gates SET unit = (unit + 1) % 64 WHERE name = 'gate-3';",
    );
    let problems = ok(pg.check()).problems;
    assert!(
        problems.len() == 1 && problems[0].contains("\"gate-3\" is stored in unit"),
        "{problems:?}"
    );
    drop(pg);
    let again = PgStore::open_in(&url, "upgrade_5").expect("opened again");
    drop(again);
    // A build that spread the gates over another number of units would
    // put them in other units: refused.
    pg_sql(
        &url,
        "SET search_path TO upgrade_5; UPDATE meta SET value = 32 WHERE key = 'units';",
    );
    let Err(refused) = PgStore::open_in(&url, "upgrade_5").map(drop) else {
        panic!("opened with another number of units");
    };
    let refused = refused.to_string();
    assert!(refused.contains("over 32 units"), "{refused}");
}

/// redb, saying it has several writers as PostgreSQL does, so an engine
/// takes its task ids in blocks from `reserve_task_ids`; it counts where
/// each block was asked for: inside a write transaction or outside.
struct SharedWriters {
    inner: Store,
    in_transaction: std::sync::atomic::AtomicBool,
    inside: std::sync::atomic::AtomicUsize,
    outside: std::sync::atomic::AtomicUsize,
    next: std::sync::Mutex<u64>,
}

impl Backend for SharedWriters {
    fn transact(
        &self,
        f: &mut dyn FnMut(&mut dyn Writes) -> sluice::store::Result<()>,
    ) -> sluice::store::Result<()> {
        use std::sync::atomic::Ordering::SeqCst;
        self.in_transaction.store(true, SeqCst);
        let done = self.inner.transact(f);
        self.in_transaction.store(false, SeqCst);
        done
    }

    fn snapshot(&self) -> sluice::store::Result<Box<dyn sluice::store::Reads>> {
        self.inner.snapshot()
    }

    fn backup_to(&self, path: &std::path::Path) -> sluice::store::Result<sluice::store::Copied> {
        self.inner.backup_to(path)
    }

    fn shares_writers(&self) -> bool {
        true
    }

    fn reserve_task_ids(&self, n: u64, floor: u64) -> sluice::store::Result<std::ops::Range<u64>> {
        use std::sync::atomic::Ordering::SeqCst;
        let counter = if self.in_transaction.load(SeqCst) {
            &self.inside
        } else {
            &self.outside
        };
        counter.fetch_add(1, SeqCst);
        let mut next = self.next.lock().expect("not poisoned");
        let start = (*next).max(floor);
        *next = start + n;
        Ok(start..start + n)
    }
}

/// Where the store has several writers (PostgreSQL), task ids come in
/// blocks the store reserves on a connection of its own: a turn takes the
/// block its creates need before its transaction begins, never inside it,
/// where the round trip would hold the transaction (and its locks) open.
/// A first create, one after the block aged (250 ms), and a batch larger
/// than a block: each reserved outside, and the ids all distinct.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_ids_are_reserved_outside_the_write_transaction() {
    use std::sync::atomic::Ordering::SeqCst;
    let store = Arc::new(SharedWriters {
        inner: Store::in_memory().expect("store"),
        in_transaction: Default::default(),
        inside: Default::default(),
        outside: Default::default(),
        next: Default::default(),
    });
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let (engine, thread) = tokio::task::block_in_place(|| {
        sluice::shell::spawn(store.clone(), Default::default(), stop_rx)
    })
    .expect("the engine starts");
    let gate = crate::support::engine_gate(10.0, 1, 5, "127.0.0.1".into());
    engine.put_gate("g".into(), gate).await.expect("gate");
    // Due in an hour: nothing leaves.
    let due = Timestamp(sluice::clock::now().as_ms() + 3_600_000);
    let task = || crate::support::engine_task("g", "http://127.0.0.1:9/x", due);
    let mut ids = BTreeSet::new();
    for (i, batch) in [1, 1, 1_500].into_iter().enumerate() {
        if i > 0 {
            // The block ages past 250 ms.
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let created = (engine.create_tasks((0..batch).map(|_| task()).collect()))
            .await
            .expect("created");
        ids.extend(created.into_iter().map(|c| c.id));
    }
    assert_eq!(ids.len(), 1_502, "every id distinct");
    assert_eq!(store.inside.load(SeqCst), 0, "a block asked for inside");
    assert!(store.outside.load(SeqCst) >= 3, "{:?}", store.outside);
    let _ = stop.send(true);
    tokio::task::block_in_place(|| thread.join())
        .expect("joined")
        .expect("the engine stops cleanly");
}

/// A store whose commits fail from a moment the test chooses, as a
/// PostgreSQL connection reset would.
struct FailingCommits {
    inner: Store,
    fail: std::sync::atomic::AtomicBool,
}

impl Backend for FailingCommits {
    fn transact(
        &self,
        f: &mut dyn FnMut(&mut dyn Writes) -> sluice::store::Result<()>,
    ) -> sluice::store::Result<()> {
        if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(StoreError::Postgres("the connection was reset".into()));
        }
        self.inner.transact(f)
    }

    fn snapshot(&self) -> sluice::store::Result<Box<dyn sluice::store::Reads>> {
        self.inner.snapshot()
    }

    fn backup_to(&self, path: &std::path::Path) -> sluice::store::Result<sluice::store::Copied> {
        self.inner.backup_to(path)
    }
}

/// An engine that stops on a failed commit sends nothing it admitted
/// ahead of its slot: its start is on record, and the engine after it
/// holds it, then runs the task again (sent by both, it would pass the
/// gate's bound, its report heard by neither).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_stopped_by_a_failed_commit_sends_nothing_it_admitted_ahead() {
    let store = Arc::new(FailingCommits {
        inner: Store::in_memory().expect("store"),
        fail: Default::default(),
    });
    let sink = crate::support::Sink::start().await;
    let (_stop, stop_rx) = tokio::sync::watch::channel(false);
    let options = sluice::shell::Options {
        tuning: sluice::core::Tuning {
            lookahead: Duration::from_secs(5),
            lookahead_max: Duration::from_secs(5),
            ..Default::default()
        },
        ..Default::default()
    };
    let (engine, thread) =
        tokio::task::block_in_place(|| sluice::shell::spawn(store.clone(), options, stop_rx))
            .expect("the engine starts");
    let gate = crate::support::engine_gate(10.0, 1, 10, sink.host());
    engine.put_gate("g".into(), gate).await.expect("gate");
    // Far enough ahead that a slow machine stops the engine before then.
    let due = Timestamp(sluice::clock::now().as_ms() + 3_000);
    let task = || crate::support::engine_task("g", &sink.url("/ahead"), due);
    let created = engine.create_tasks(vec![task()]).await.expect("created");
    let state = (store.snapshot().expect("read").task(created[0].id.0))
        .expect("read")
        .expect("the task");
    assert_eq!(
        state.state.as_str(),
        "running",
        "not started ahead of its due time, so this shows nothing"
    );
    store.fail.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(engine.create_tasks(vec![task()]).await.is_err());
    let ended = tokio::task::block_in_place(|| thread.join()).expect("joined");
    assert!(ended.is_err(), "the engine went on after a failed commit");
    // Past the due time, and its slot.
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    assert!(
        sink.hits().is_empty(),
        "sent by a stopped engine: {:?}",
        sink.hits()
    );
}
