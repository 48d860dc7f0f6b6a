//! The store seam: what the engine writes and the API reads, as traits a
//! second store can implement (PostgreSQL, SPEC §9, is the next). redb's
//! `Store` is the first implementation; `tests/all/store.rs` is the
//! conformance suite every implementation passes.
//!
//! A write transaction (`Writes`) is all or nothing and durable when
//! `Backend::write` returns; a reader (`Reads`) sees one consistent snapshot
//! and never blocks the writer. Neither decides anything.

use std::path::Path;

use crate::core::units::Units;

use super::*;

/// A pending entry: a task's place in its gate's (and key's) due order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingEntry {
    pub gate: GateId,
    pub key: Option<String>,
    pub due: Timestamp,
    pub task: TaskId,
}

/// A task committed into a gate another engine runs (a "foreign create"),
/// for that engine to hear of: its gate, key and place in the order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    /// The gate's unit (`core::units`), whose engine listens for it.
    pub unit: u32,
    pub gate: GateId,
    pub key: Option<String>,
    pub order: (Timestamp, TaskId),
}

/// What an engine hears of other writers' creates into the units it runs
/// (their [`Notice`]s), where a store has several writers.
pub trait Heard: Send {
    /// The next notices; `Ready(None)` once the feed is gone, after which
    /// notices may have been lost: the engine then reads its gates again
    /// and listens anew.
    fn poll_notices(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Vec<Notice>>>;

    /// Listens also for `units`' notices, on this same feed, from when
    /// this returns: a change of units opens no new connection.
    fn listen_also(&self, units: Units) -> Result<()>;

    /// Stops listening for `units`' notices (a node that handed them over
    /// is told no more of their creates).
    fn listen_no_more(&self, units: Units) -> Result<()>;
}

/// A store: one write transaction at a time, any number of readers. The
/// engine, the API and the plugin host hold it as `Arc<dyn Backend>`, so they
/// never name an implementation; `write` (on `dyn Backend`) is the typed way
/// to run a transaction.
pub trait Backend: Send + Sync {
    /// Runs `f` once in one durable write transaction: all of it is stored
    /// when this returns `Ok`, none of it when it returns `Err`.
    fn transact(&self, f: &mut dyn FnMut(&mut dyn Writes) -> Result<()>) -> Result<()>;

    /// A consistent snapshot.
    fn snapshot(&self) -> Result<Box<dyn Reads>>;

    /// Copies everything, as of one snapshot, into a new store file at
    /// `path` while writes go on.
    fn backup_to(&self, path: &Path) -> Result<Copied>;

    /// Whether several engines may write this store at once (PostgreSQL):
    /// task ids then come in blocks from `reserve_task_ids`. A store with
    /// one writer (redb) leaves ids to its engine.
    fn shares_writers(&self) -> bool {
        false
    }

    /// `n` task ids no other writer will ever get, each at least `floor`
    /// and above every id reserved before, committed on their own (outside
    /// any write transaction, so creates on several nodes do not queue
    /// behind one row lock).
    fn reserve_task_ids(&self, n: u64, floor: u64) -> Result<std::ops::Range<u64>> {
        let _ = (n, floor);
        Err(StoreError::Unsupported(
            "this store has one writer, whose engine counts task ids itself".into(),
        ))
    }

    /// Starts hearing of other writers' creates into `units`' gates, from
    /// when this returns. `None` where no one else writes (redb).
    fn listen(&self, units: Units) -> Result<Option<Box<dyn Heard>>> {
        let _ = units;
        Ok(None)
    }
}

impl dyn Backend + '_ {
    /// Runs `f` in one durable write transaction and returns what it returns.
    pub fn write<R>(&self, f: impl FnOnce(&mut dyn Writes) -> Result<R>) -> Result<R> {
        let mut f = Some(f);
        let mut out = None;
        self.transact(&mut |tx| {
            if let Some(f) = f.take() {
                out = Some(f(tx)?);
            }
            Ok(())
        })?;
        out.ok_or_else(|| StoreError::Corrupt {
            table: "-",
            detail: "a write transaction ended without running".into(),
        })
    }

    /// A consistent snapshot.
    pub fn read(&self) -> Result<Box<dyn Reads>> {
        self.snapshot()
    }
}

/// What one write transaction can do. Pending tasks are keyed (gate, due,
/// task); every change to them keeps the per-minute due counts in step.
pub trait Writes {
    fn next_gate_id(&mut self) -> Result<u32>;

    fn gates(&self) -> Result<Vec<GateRecord>>;

    /// The gates of `units`, for an engine adopting them. PostgreSQL reads
    /// only theirs (each row names its unit); redb has one engine, which
    /// adopts every unit at once.
    fn gates_in(&self, units: Units) -> Result<Vec<GateRecord>> {
        let mut gates = self.gates()?;
        gates.retain(|gate| units.has_gate(&gate.name));
        Ok(gates)
    }

    /// One gate's record, share-locked to the commit where several engines
    /// write (so a delete of it waits for a create into it, and the other
    /// way round), for a create into a gate another engine runs.
    fn gate(&self, name: &str) -> Result<Option<GateRecord>>;

    fn put_gate(&mut self, gate: &GateRecord) -> Result<()>;

    fn delete_gate(&mut self, name: &str) -> Result<()>;

    fn last_task_id(&self) -> Result<Option<u64>>;

    fn task(&self, id: u64) -> Result<Option<TaskRecord>>;

    /// The records of those of `ids` that exist, in no particular order: a
    /// turn reads what it is about to touch at once (one query where a
    /// store pays a round trip per read).
    fn tasks(&self, ids: &[u64]) -> Result<Vec<TaskRecord>> {
        ids.iter()
            .filter_map(|&id| self.task(id).transpose())
            .collect()
    }

    /// Writes a task; a finished one also enters the retention index.
    fn put_task(&mut self, task: &TaskRecord) -> Result<()>;

    /// Removes up to `limit` tasks that finished before `before`, with their
    /// attempts, listing entries and idempotency keys. An index entry whose task
    /// has run again since (an operator retry) is dropped, the task kept.
    /// Returns how many tasks went and whether more are waiting.
    fn prune(&mut self, before: u64, limit: usize) -> Result<(usize, bool)>;

    /// Records a new task in its gate's listing index. The task's record is
    /// written in the same transaction or was before (on PostgreSQL the
    /// index is a column of the task's row).
    fn index_task(&mut self, gate_id: u32, task_id: u64) -> Result<()>;

    /// Indexes a pending task under its gate and key (`None`: the unnamed key).
    fn insert_pending(
        &mut self,
        gate: GateId,
        key: Option<&str>,
        due: Timestamp,
        task: TaskId,
    ) -> Result<()>;

    /// Removes a pending entry; false when there was none.
    fn remove_pending(
        &mut self,
        gate: GateId,
        key: Option<&str>,
        due: Timestamp,
        task: TaskId,
    ) -> Result<bool>;

    /// Removes several pending entries (each task once), answering for
    /// each whether it was there: one round trip on a store that has them.
    fn remove_pending_many(&mut self, entries: &[PendingEntry]) -> Result<Vec<bool>> {
        entries
            .iter()
            .map(|e| self.remove_pending(e.gate, e.key.as_deref(), e.due, e.task))
            .collect()
    }

    /// Pending orders of a gate's key from `from` on: at most `limit`, none
    /// due after `until`. Returns them and the first order not returned.
    #[allow(clippy::type_complexity, reason = "a plain pair of key lists")]
    fn pending_range(
        &self,
        gate: GateId,
        key: Option<&str>,
        from: (Timestamp, TaskId),
        until: Timestamp,
        limit: usize,
    ) -> Result<(Vec<(Timestamp, TaskId)>, Option<(Timestamp, TaskId)>)>;

    /// Every key of a gate with pending tasks (the unnamed one as `None`)
    /// and its first task's order.
    #[allow(clippy::type_complexity, reason = "a plain list of pairs")]
    fn pending_keys(&self, gate: GateId) -> Result<Vec<(Option<String>, (Timestamp, TaskId))>>;

    /// Every pending task of a gate (its key, due time and id), for deleting it.
    #[allow(clippy::type_complexity, reason = "a plain list of triples")]
    fn all_pending(&self, gate: GateId) -> Result<Vec<(Option<String>, Timestamp, TaskId)>>;

    /// Puts a task in the running set or takes it out. As for
    /// [`Writes::index_task`], its record is written in the same
    /// transaction or was before.
    fn set_running(&mut self, task_id: u64, running: bool) -> Result<()>;

    fn running_tasks(&self) -> Result<Vec<u64>>;

    /// The running tasks, at least those of the gates `gates`: PostgreSQL
    /// gives only theirs (each task's row names its gate); redb, whose
    /// running set names no gate, gives them all. The caller reads each
    /// task's record anyway.
    fn running_tasks_in(&self, gates: &[u32]) -> Result<Vec<u64>> {
        let _ = gates;
        self.running_tasks()
    }

    fn attempt(&self, task_id: u64, attempt: u32) -> Result<Option<AttemptRecord>>;

    /// Attempt `n` of each task `(id, n)` of `wanted` that has it, by task
    /// id: one query where a store pays a round trip per read.
    fn attempts_of(&self, wanted: &[(u64, u32)]) -> Result<HashMap<u64, AttemptRecord>> {
        let mut found = HashMap::with_capacity(wanted.len());
        for &(id, n) in wanted {
            if let Some(record) = self.attempt(id, n)? {
                found.insert(id, record);
            }
        }
        Ok(found)
    }

    fn put_attempt(&mut self, task_id: u64, attempt: &AttemptRecord) -> Result<()>;

    fn idempotent(&self, gate_id: u32, key: &str) -> Result<Option<u64>>;

    fn put_idempotent(&mut self, gate_id: u32, key: &str, task_id: u64) -> Result<()>;

    /// Frees the gate's idempotency key if it still names `task_id`.
    fn forget_idempotent(&mut self, gate_id: u32, key: &str, task_id: u64) -> Result<()>;

    /// Names `task_id` as the task of the gate's idempotency key, unless a
    /// task holds the key already: then its id. Where several engines write
    /// (PostgreSQL), one claiming the key at the same time waits for the
    /// first one's commit and gets its task, so a key never makes two.
    fn claim_idempotent(&mut self, gate_id: u32, key: &str, task_id: u64) -> Result<Option<u64>>;

    /// The task a coalesce key of the gate last named. It may have started
    /// or ended since: the caller looks.
    fn coalesced(&self, gate_id: u32, key: &str) -> Result<Option<u64>>;

    fn put_coalesced(&mut self, gate_id: u32, key: &str, task_id: u64) -> Result<()>;

    /// Locks the gate's record to the commit against every other writer,
    /// creates included (they read it with a shared lock, `gate`): a
    /// delete locks it first, so a create on another node either commits
    /// before it (and the delete sees its task) or finds no gate. A store
    /// with one writer needs no lock.
    fn lock_gate(&mut self, name: &str) -> Result<()> {
        let _ = name;
        Ok(())
    }

    fn all_counts(&self) -> Result<Vec<(u32, Counts)>>;

    fn put_counts(&mut self, gate_id: u32, counts: &Counts) -> Result<()>;

    /// Adds each gate's change to its counters, in gate order: the rows are
    /// locked to the commit, so engines on several nodes that count into
    /// one gate add up instead of overwriting each other.
    fn add_counts(&mut self, deltas: &[(u32, CountsDelta)]) -> Result<()>;

    /// Tells the engines that run the gates of `notices` about them, once
    /// this transaction commits (PostgreSQL: `NOTIFY` on each unit's
    /// channel, delivered at commit). A store with one writer has no one
    /// to tell.
    fn notify(&mut self, notices: &[Notice]) -> Result<()> {
        let _ = notices;
        Ok(())
    }

    fn plugins(&self) -> Result<Vec<PluginRecord>>;

    /// A plugin's record, share-locked to the commit where several engines
    /// write (a delete of it waits for this commit): for a create of a task
    /// that runs it.
    fn plugin(&self, key: &str) -> Result<Option<PluginRecord>> {
        Ok(self
            .plugins()?
            .into_iter()
            .find(|p| plugin_key(&p.name, &p.version) == key))
    }

    /// A plugin's record, locked to the commit against every other writer:
    /// a delete counts what creates on other nodes committed before it,
    /// and later ones find it gone.
    fn lock_plugin(&mut self, key: &str) -> Result<Option<PluginRecord>> {
        self.plugin(key)
    }

    fn put_plugin(&mut self, plugin: &PluginRecord) -> Result<()>;

    /// Adds to each plugin's count of unfinished tasks, in key order, its
    /// record locked to the commit (engines on several nodes count into
    /// one plugin). A plugin not in the registry is passed over.
    fn add_plugin_refs(&mut self, refs: &[(String, i64)]) -> Result<()>;

    fn put_plugin_wasm(&mut self, key: &str, wasm: &[u8]) -> Result<()>;

    fn put_compiled(&mut self, key: &str, engine: u64, artifact: &[u8]) -> Result<()>;

    /// Removes a plugin version with its component and every compiled artifact.
    fn delete_plugin(&mut self, key: &str) -> Result<()>;

    /// Tasks created so far by the `next` chains of root task `root`.
    fn descendants(&self, root: u64) -> Result<u32>;

    fn set_descendants(&mut self, root: u64, count: u32) -> Result<()>;

    /// Adds `n` (which may be negative: a give-back) to a root's count of
    /// descendants and answers the new count, unless it would pass `max`:
    /// then nothing changes and the answer is `None`. The row stays locked
    /// to the commit, so engines on several nodes share one budget.
    fn add_descendants(&mut self, root: u64, n: i64, max: u32) -> Result<Option<u32>>;

    fn schedules(&self) -> Result<Vec<ScheduleRecord>>;

    fn put_schedule(&mut self, schedule: &ScheduleRecord) -> Result<()>;

    fn delete_schedule(&mut self, name: &str) -> Result<()>;

    fn delete_counts(&mut self, gate_id: u32) -> Result<()>;
    fn put_replay(&mut self, replay: &ReplayRecord) -> Result<()>;
    fn delete_replay(&mut self, id: &str) -> Result<()>;
}

/// What a snapshot can answer.
pub trait Reads {
    fn plugins(&self) -> Result<Vec<PluginRecord>>;

    fn plugin(&self, key: &str) -> Result<Option<PluginRecord>>;

    fn plugin_wasm(&self, key: &str) -> Result<Option<Vec<u8>>>;

    fn compiled(&self, key: &str, engine: u64) -> Result<Option<Vec<u8>>>;

    fn gates(&self) -> Result<Vec<GateRecord>>;

    fn gate(&self, name: &str) -> Result<Option<GateRecord>>;

    /// A page of the gate's keys with pending tasks, in key order after
    /// `after`: each key, its pending tasks (counted up to `count_cap`) and
    /// its first due time.
    fn gate_keys(
        &self,
        gate_id: u32,
        after: Option<&str>,
        limit: usize,
        count_cap: u64,
    ) -> Result<Vec<KeyBacklog>>;

    fn task(&self, id: u64) -> Result<Option<TaskRecord>>;

    fn attempts(&self, task_id: u64) -> Result<Vec<AttemptRecord>>;

    fn counts(&self, gate_id: u32) -> Result<Counts>;

    /// The earliest pending due time of a gate.
    fn oldest_pending(&self, gate_id: u32) -> Result<Option<u64>>;

    /// Pending tasks of a gate due in each of the `n` minutes from the one
    /// holding `from` (ms): read from the per-minute counters, not a scan.
    fn forecast(&self, gate_id: u32, from: u64, n: usize) -> Result<Vec<u64>>;

    /// Pending tasks of a gate due at or before `now`: whole minutes from the
    /// counters, and the current minute's own rows up to `now`.
    fn due_now(&self, gate_id: u32, now: u64) -> Result<u64>;

    /// Tasks newest first, starting below `before` (a task id), with the cursor to
    /// continue from when more may follow.
    fn list_tasks(
        &self,
        filter: &TaskFilter,
        before: Option<u64>,
        limit: usize,
    ) -> Result<(Vec<TaskRecord>, Option<u64>)>;

    fn schedules(&self) -> Result<Vec<ScheduleRecord>>;

    fn schedule(&self, name: &str) -> Result<Option<ScheduleRecord>>;

    fn task_count(&self) -> Result<u64>;
    fn replay(&self, id: &str) -> Result<Option<ReplayRecord>>;
    /// Every replay job kept, running or ended.
    fn replays(&self) -> Result<Vec<ReplayRecord>>;
}

impl Backend for Store {
    fn transact(&self, f: &mut dyn FnMut(&mut dyn Writes) -> Result<()>) -> Result<()> {
        Store::write(self, |tx| f(tx))
    }

    fn snapshot(&self) -> Result<Box<dyn Reads>> {
        Ok(Box::new(Store::read(self)?))
    }

    fn backup_to(&self, path: &Path) -> Result<Copied> {
        Store::backup_to(self, path)
    }
}
