//! Storage in one redb file: gates, tasks, attempts, idempotency keys, counters.
//!
//! The interface is deliberately narrow (open, one write closure, one reader) so a
//! PostgreSQL backend can sit behind the same calls later. It decides nothing: the
//! shell says what to write. Pending tasks are indexed by (gate, due, id), so the
//! next due tasks of a gate are a range read, never a scan.

pub mod records;

use std::collections::HashMap;
use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

pub use records::{
    AttemptRecord, BackoffRecord, BodyRecord, CircuitRecord, Counts, GateRecord, LogRecord,
    LogSource, OccurrenceRecord, PluginCallRecord, PluginRecord, RecoveryRecord, RetryRecord,
    RunRecord, ScheduleRecord, Target, TaskRecord, TaskState, TemplateRecord, WebhookRecord,
    plugin_key,
};

/// 2 added `due_minutes` and `finished`; 3 added the plugin tables; 4 added
/// `lineage`. Older files are brought up to date on open.
const SCHEMA_VERSION: u64 = 4;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const GATES: TableDefinition<&str, &[u8]> = TableDefinition::new("gates");
const TASKS: TableDefinition<u64, &[u8]> = TableDefinition::new("tasks");
/// (gate id, due ms, task id): the order in which a gate starts its tasks.
const PENDING: TableDefinition<(u32, u64, u64), ()> = TableDefinition::new("pending");
/// Tasks with an attempt in flight, to retry after a crash.
const RUNNING: TableDefinition<u64, ()> = TableDefinition::new("running");
const ATTEMPTS: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("attempts");
/// (gate id, key) → task id.
const IDEMPOTENCY: TableDefinition<(u32, &str), u64> = TableDefinition::new("idempotency");
/// (gate id, task id): a gate's tasks, newest last, for listing.
const GATE_TASKS: TableDefinition<(u32, u64), ()> = TableDefinition::new("gate_tasks");
const COUNTS: TableDefinition<u32, &[u8]> = TableDefinition::new("counts");
const SCHEDULES: TableDefinition<&str, &[u8]> = TableDefinition::new("schedules");
/// (gate id, minute since the epoch) → pending tasks due in that minute: the
/// forecast and the due count without a scan of `pending`.
const DUE_MINUTES: TableDefinition<(u32, u64), u64> = TableDefinition::new("due_minutes");

/// (finished at, first task id) → the ids (8 bytes each, little-endian) of the
/// tasks that finished at that instant: the order retention removes them in.
/// One entry per commit and instant rather than one per task, so indexing a
/// finish costs a few bytes, not a B-tree insert.
const FINISHED: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("finished");

/// `name@version` → [`PluginRecord`].
const PLUGINS: TableDefinition<&str, &[u8]> = TableDefinition::new("plugins");
/// `name@version` → the component as uploaded.
const PLUGIN_WASM: TableDefinition<&str, &[u8]> = TableDefinition::new("plugin_wasm");
/// (`name@version`, engine compatibility hash) → the compiled artifact, so a
/// restart on the same engine never compiles again, and a new engine compiles
/// once from `plugin_wasm`.
const PLUGIN_COMPILED: TableDefinition<(&str, u64), &[u8]> =
    TableDefinition::new("plugin_compiled");
/// Root task id → how many tasks its `next` chains created, all generations:
/// the lineage budget. Kept apart from the root's record so a chain that
/// outlives its root's retention still counts; removed with the root.
const LINEAGE: TableDefinition<u64, u32> = TableDefinition::new("lineage");

const MINUTE_MS: u64 = 60_000;
/// Most rows `due_now` reads one by one.
const DUE_SCAN_LIMIT: u64 = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage: {0}")]
    Redb(#[from] redb::Error),
    #[error("corrupt record in {table}: {detail}")]
    Corrupt { table: &'static str, detail: String },
    #[error("data file has schema version {found}, this build reads {SCHEMA_VERSION}")]
    Schema { found: u64 },
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self { StoreError::Redb(e.into()) }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

fn decode<T: serde::de::DeserializeOwned>(table: &'static str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        table,
        detail: e.to_string(),
    })
}

fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("records always serialize")
}

pub struct Store {
    db: Database,
    /// Off for the in-memory store, which has no crash to recover from.
    quick_repair: bool,
}

/// The tables of one write transaction, opened once for the whole batch.
pub struct Tx<'t> {
    meta: redb::Table<'t, &'static str, u64>,
    gates: redb::Table<'t, &'static str, &'static [u8]>,
    tasks: redb::Table<'t, u64, &'static [u8]>,
    pending: redb::Table<'t, (u32, u64, u64), ()>,
    running: redb::Table<'t, u64, ()>,
    attempts: redb::Table<'t, (u64, u32), &'static [u8]>,
    idempotency: redb::Table<'t, (u32, &'static str), u64>,
    gate_tasks: redb::Table<'t, (u32, u64), ()>,
    counts: redb::Table<'t, u32, &'static [u8]>,
    schedules: redb::Table<'t, &'static str, &'static [u8]>,
    due_minutes: redb::Table<'t, (u32, u64), u64>,
    finished: redb::Table<'t, (u64, u64), &'static [u8]>,
    plugins: redb::Table<'t, &'static str, &'static [u8]>,
    /// For the tables only uploads and deletions touch, opened when they do,
    /// so an ordinary commit does not pay for them.
    txn: &'t redb::WriteTransaction,
    /// Tasks finished in this transaction, indexed once at its end.
    finished_ids: Vec<(u64, u64)>,
    /// Changes to `due_minutes` in this transaction, written once at its end.
    due_deltas: HashMap<(u32, u64), i64>,
}

impl Store {
    /// Opens or creates the data file. A file left by a crash opens cleanly: redb
    /// repairs it on open.
    pub fn open(path: &Path) -> Result<Store> {
        let db = Database::builder().set_cache_size(64 << 20).create(path)?;
        let store = Store {
            db,
            quick_repair: true,
        };
        store.write(|tx| {
            tx.create_lazy_tables()?;
            let found = tx.meta.get("schema_version")?.map(|v| v.value());
            match found {
                None => {
                    tx.meta.insert("schema_version", SCHEMA_VERSION)?;
                }
                Some(1) => {
                    tx.count_due_minutes()?;
                    tx.index_finished()?;
                    tx.meta.insert("schema_version", SCHEMA_VERSION)?;
                }
                // The plugin and lineage tables are created empty by opening
                // them; tasks without a `root` are their own.
                Some(2 | 3) => {
                    tx.meta.insert("schema_version", SCHEMA_VERSION)?;
                }
                Some(SCHEMA_VERSION) => {}
                Some(found) => return Err(StoreError::Schema { found }),
            }
            Ok(())
        })?;
        Ok(store)
    }

    /// A store on redb's in-memory backend: the same code, no file. The
    /// simulation tests use it to run hours of traffic in well under a second.
    pub fn in_memory() -> Result<Store> {
        let db = Database::builder().create_with_backend(redb::backends::InMemoryBackend::new())?;
        let store = Store {
            db,
            quick_repair: false,
        };
        store.write(|tx| {
            tx.create_lazy_tables()?;
            tx.meta.insert("schema_version", SCHEMA_VERSION)?;
            Ok(())
        })?;
        Ok(store)
    }

    /// Runs `f` in one durable write transaction: all of it is on disk when this
    /// returns `Ok`, none of it when it returns `Err`.
    pub fn write<R>(&self, f: impl FnOnce(&mut Tx<'_>) -> Result<R>) -> Result<R> {
        let mut txn = self.db.begin_write()?;
        // Each commit also saves the allocator state (with a two-phase commit), so
        // opening the file after a crash is near instant instead of a walk of the
        // whole file: restart time must not grow with the backlog.
        txn.set_quick_repair(self.quick_repair);
        let result = {
            let mut tx = Tx {
                meta: txn.open_table(META)?,
                gates: txn.open_table(GATES)?,
                tasks: txn.open_table(TASKS)?,
                pending: txn.open_table(PENDING)?,
                running: txn.open_table(RUNNING)?,
                attempts: txn.open_table(ATTEMPTS)?,
                idempotency: txn.open_table(IDEMPOTENCY)?,
                gate_tasks: txn.open_table(GATE_TASKS)?,
                counts: txn.open_table(COUNTS)?,
                schedules: txn.open_table(SCHEDULES)?,
                due_minutes: txn.open_table(DUE_MINUTES)?,
                finished: txn.open_table(FINISHED)?,
                plugins: txn.open_table(PLUGINS)?,
                txn: &txn,
                finished_ids: Vec::new(),
                due_deltas: HashMap::new(),
            };
            let result = f(&mut tx)?;
            tx.flush_due_minutes()?;
            tx.flush_finished()?;
            result
        };
        txn.commit()?;
        Ok(result)
    }

    pub fn read(&self) -> Result<Reader> {
        Ok(Reader {
            txn: self.db.begin_read()?,
        })
    }
}

impl Tx<'_> {
    pub fn next_gate_id(&mut self) -> Result<u32> {
        let next = self.meta.get("next_gate_id")?.map_or(1, |v| v.value());
        self.meta.insert("next_gate_id", next + 1)?;
        u32::try_from(next).map_err(|_| StoreError::Corrupt {
            table: "meta",
            detail: "gate ids exhausted".into(),
        })
    }

    pub fn gates(&self) -> Result<Vec<GateRecord>> {
        let mut out = Vec::new();
        for entry in self.gates.iter()? {
            let (_, v) = entry?;
            out.push(decode("gates", v.value())?);
        }
        Ok(out)
    }

    pub fn put_gate(&mut self, gate: &GateRecord) -> Result<()> {
        self.gates
            .insert(gate.name.as_str(), encode(gate).as_slice())?;
        Ok(())
    }

    pub fn delete_gate(&mut self, name: &str) -> Result<()> {
        self.gates.remove(name)?;
        Ok(())
    }

    pub fn last_task_id(&self) -> Result<Option<u64>> {
        Ok(self.tasks.last()?.map(|(k, _)| k.value()))
    }

    pub fn task(&self, id: u64) -> Result<Option<TaskRecord>> {
        self.tasks
            .get(id)?
            .map(|v| decode("tasks", v.value()))
            .transpose()
    }

    /// Writes a task; a finished one also enters the retention index.
    pub fn put_task(&mut self, task: &TaskRecord) -> Result<()> {
        self.tasks.insert(task.id, encode(task).as_slice())?;
        if let (true, Some(at)) = (task.state.is_final(), task.finished_at) {
            self.finished_ids.push((at, task.id));
        }
        Ok(())
    }

    /// Writes this transaction's finished tasks to the retention index.
    fn flush_finished(&mut self) -> Result<()> {
        let mut ids = std::mem::take(&mut self.finished_ids);
        ids.sort_unstable();
        ids.dedup();
        for group in ids.chunk_by(|a, b| a.0 == b.0) {
            let key = (group[0].0, group[0].1);
            // A task written again in a later commit at the same instant (it is
            // rewritten whenever a turn touches it) must not drop the others.
            let mut bytes = self
                .finished
                .get(key)?
                .map(|v| v.value().to_vec())
                .unwrap_or_default();
            for (_, id) in group {
                let id = id.to_le_bytes();
                if !bytes.chunks_exact(8).any(|b| b == id) {
                    bytes.extend_from_slice(&id);
                }
            }
            self.finished.insert(key, bytes.as_slice())?;
        }
        Ok(())
    }

    /// Removes up to `limit` tasks that finished before `before`, with their
    /// attempts, listing entries and idempotency keys. An index entry whose task
    /// has run again since (an operator retry) is dropped, the task kept.
    /// Returns how many tasks went and whether more are waiting.
    pub fn prune(&mut self, before: u64, limit: usize) -> Result<(usize, bool)> {
        let mut entries: Vec<((u64, u64), Vec<u64>)> = Vec::new();
        let mut taken = 0;
        let mut more = false;
        for entry in self.finished.range((0, 0)..(before, 0))? {
            if taken >= limit {
                more = true;
                break;
            }
            let (key, value) = entry?;
            let ids: Vec<u64> = value
                .value()
                .chunks_exact(8)
                .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
                .collect();
            taken += ids.len();
            entries.push((key.value(), ids));
        }
        let mut removed = 0;
        for ((at, first), ids) in entries {
            self.finished.remove((at, first))?;
            for id in ids {
                if self.prune_task(id, at)? {
                    removed += 1;
                }
            }
        }
        Ok((removed, more))
    }

    /// Removes one finished task and what hangs off it, if it still is the task
    /// that finished at `at`.
    fn prune_task(&mut self, id: u64, at: u64) -> Result<bool> {
        let Some(task) = self.task(id)? else {
            return Ok(false);
        };
        if !task.state.is_final() || task.finished_at != Some(at) {
            return Ok(false);
        }
        self.tasks.remove(id)?;
        let attempts: Vec<(u64, u32)> = self
            .attempts
            .range((id, 0)..=(id, u32::MAX))?
            .map(|e| e.map(|(k, _)| k.value()))
            .collect::<std::result::Result<_, _>>()?;
        for key in attempts {
            self.attempts.remove(key)?;
        }
        self.gate_tasks.remove((task.gate_id, id))?;
        if task.root.is_none_or(|root| root == id) {
            self.txn.open_table(LINEAGE)?.remove(id)?;
        }
        if let Some(key) = &task.idempotency_key
            && self.idempotent(task.gate_id, key)? == Some(id)
        {
            self.idempotency.remove((task.gate_id, key.as_str()))?;
        }
        Ok(true)
    }

    /// Builds `finished` from the tasks (upgrading a version 1 file).
    fn index_finished(&mut self) -> Result<()> {
        for entry in self.tasks.iter()? {
            let (_, bytes) = entry?;
            let task: TaskRecord = decode("tasks", bytes.value())?;
            if let (true, Some(at)) = (task.state.is_final(), task.finished_at) {
                self.finished_ids.push((at, task.id));
            }
        }
        self.flush_finished()
    }

    /// Records a new task in its gate's listing index.
    pub fn index_task(&mut self, gate_id: u32, task_id: u64) -> Result<()> {
        self.gate_tasks.insert((gate_id, task_id), ())?;
        Ok(())
    }

    pub fn insert_pending(&mut self, gate_id: u32, due: u64, task_id: u64) -> Result<()> {
        if self.pending.insert((gate_id, due, task_id), ())?.is_none() {
            *self
                .due_deltas
                .entry((gate_id, due / MINUTE_MS))
                .or_default() += 1;
        }
        Ok(())
    }

    pub fn remove_pending(&mut self, gate_id: u32, due: u64, task_id: u64) -> Result<bool> {
        let removed = self.pending.remove((gate_id, due, task_id))?.is_some();
        if removed {
            *self
                .due_deltas
                .entry((gate_id, due / MINUTE_MS))
                .or_default() -= 1;
        }
        Ok(removed)
    }

    /// Writes this transaction's changes to the per-minute counts.
    fn flush_due_minutes(&mut self) -> Result<()> {
        for ((gate_id, minute), delta) in self.due_deltas.drain() {
            if delta == 0 {
                continue;
            }
            let old = self
                .due_minutes
                .get((gate_id, minute))?
                .map_or(0, |v| v.value());
            let new = old.saturating_add_signed(delta);
            if new == 0 {
                self.due_minutes.remove((gate_id, minute))?;
            } else {
                self.due_minutes.insert((gate_id, minute), new)?;
            }
        }
        Ok(())
    }

    /// Builds `due_minutes` from `pending` (upgrading a version 1 file).
    fn count_due_minutes(&mut self) -> Result<()> {
        let mut counts: HashMap<(u32, u64), u64> = HashMap::new();
        for entry in self.pending.iter()? {
            let (gate_id, due, _) = entry?.0.value();
            *counts.entry((gate_id, due / MINUTE_MS)).or_default() += 1;
        }
        for (key, n) in counts {
            self.due_minutes.insert(key, n)?;
        }
        Ok(())
    }

    /// Pending keys of a gate from `from` on: at most `limit`, none due after
    /// `until`. Returns them and the first key not returned.
    #[allow(clippy::type_complexity, reason = "a plain pair of key lists")]
    pub fn pending_range(
        &self,
        gate_id: u32,
        from: (u64, u64),
        until: u64,
        limit: usize,
    ) -> Result<(Vec<(u64, u64)>, Option<(u64, u64)>)> {
        let mut keys = Vec::new();
        let range = self
            .pending
            .range((gate_id, from.0, from.1)..=(gate_id, u64::MAX, u64::MAX))?;
        for entry in range {
            let (k, _) = entry?;
            let (_, due, id) = k.value();
            if keys.len() >= limit || due > until {
                return Ok((keys, Some((due, id))));
            }
            keys.push((due, id));
        }
        Ok((keys, None))
    }

    /// Every pending key of a gate, for deleting it.
    pub fn all_pending(&self, gate_id: u32) -> Result<Vec<(u64, u64)>> {
        let mut keys = Vec::new();
        for entry in self
            .pending
            .range((gate_id, 0, 0)..=(gate_id, u64::MAX, u64::MAX))?
        {
            let (k, _) = entry?;
            let (_, due, id) = k.value();
            keys.push((due, id));
        }
        Ok(keys)
    }

    pub fn set_running(&mut self, task_id: u64, running: bool) -> Result<()> {
        if running {
            self.running.insert(task_id, ())?;
        } else {
            self.running.remove(task_id)?;
        }
        Ok(())
    }

    pub fn running_tasks(&self) -> Result<Vec<u64>> {
        let mut out = Vec::new();
        for entry in self.running.iter()? {
            out.push(entry?.0.value());
        }
        Ok(out)
    }

    pub fn attempt(&self, task_id: u64, attempt: u32) -> Result<Option<AttemptRecord>> {
        self.attempts
            .get((task_id, attempt))?
            .map(|v| decode("attempts", v.value()))
            .transpose()
    }

    pub fn put_attempt(&mut self, task_id: u64, attempt: &AttemptRecord) -> Result<()> {
        self.attempts
            .insert((task_id, attempt.attempt), encode(attempt).as_slice())?;
        Ok(())
    }

    pub fn idempotent(&self, gate_id: u32, key: &str) -> Result<Option<u64>> {
        Ok(self.idempotency.get((gate_id, key))?.map(|v| v.value()))
    }

    pub fn put_idempotent(&mut self, gate_id: u32, key: &str, task_id: u64) -> Result<()> {
        self.idempotency.insert((gate_id, key), task_id)?;
        Ok(())
    }

    pub fn all_counts(&self) -> Result<Vec<(u32, Counts)>> {
        let mut out = Vec::new();
        for entry in self.counts.iter()? {
            let (k, v) = entry?;
            out.push((k.value(), Counts::decode(v.value())));
        }
        Ok(out)
    }

    pub fn put_counts(&mut self, gate_id: u32, counts: &Counts) -> Result<()> {
        self.counts.insert(gate_id, counts.encode().as_slice())?;
        Ok(())
    }

    pub fn plugins(&self) -> Result<Vec<PluginRecord>> {
        let mut out = Vec::new();
        for entry in self.plugins.iter()? {
            let (_, v) = entry?;
            out.push(decode("plugins", v.value())?);
        }
        Ok(out)
    }

    pub fn put_plugin(&mut self, plugin: &PluginRecord) -> Result<()> {
        let key = plugin_key(&plugin.name, &plugin.version);
        self.plugins
            .insert(key.as_str(), encode(plugin).as_slice())?;
        Ok(())
    }

    pub fn put_plugin_wasm(&mut self, key: &str, wasm: &[u8]) -> Result<()> {
        self.txn.open_table(PLUGIN_WASM)?.insert(key, wasm)?;
        Ok(())
    }

    pub fn put_compiled(&mut self, key: &str, engine: u64, artifact: &[u8]) -> Result<()> {
        self.txn
            .open_table(PLUGIN_COMPILED)?
            .insert((key, engine), artifact)?;
        Ok(())
    }

    /// Removes a plugin version with its component and every compiled artifact.
    pub fn delete_plugin(&mut self, key: &str) -> Result<()> {
        self.plugins.remove(key)?;
        self.txn.open_table(PLUGIN_WASM)?.remove(key)?;
        let mut compiled = self.txn.open_table(PLUGIN_COMPILED)?;
        let engines: Vec<u64> = compiled
            .range((key, 0)..=(key, u64::MAX))?
            .map(|e| e.map(|(k, _)| k.value().1))
            .collect::<Result<_, _>>()?;
        for engine in engines {
            compiled.remove((key, engine))?;
        }
        Ok(())
    }

    /// Creates the tables opened only on demand, so readers always find them.
    fn create_lazy_tables(&mut self) -> Result<()> {
        self.txn.open_table(PLUGIN_WASM)?;
        self.txn.open_table(PLUGIN_COMPILED)?;
        self.txn.open_table(LINEAGE)?;
        Ok(())
    }

    /// Tasks created so far by the `next` chains of root task `root`.
    pub fn descendants(&self, root: u64) -> Result<u32> {
        Ok(self
            .txn
            .open_table(LINEAGE)?
            .get(root)?
            .map_or(0, |v| v.value()))
    }

    pub fn set_descendants(&mut self, root: u64, count: u32) -> Result<()> {
        self.txn.open_table(LINEAGE)?.insert(root, count)?;
        Ok(())
    }

    pub fn schedules(&self) -> Result<Vec<ScheduleRecord>> {
        let mut out = Vec::new();
        for entry in self.schedules.iter()? {
            let (_, v) = entry?;
            out.push(decode("schedules", v.value())?);
        }
        Ok(out)
    }

    pub fn put_schedule(&mut self, schedule: &ScheduleRecord) -> Result<()> {
        self.schedules
            .insert(schedule.name.as_str(), encode(schedule).as_slice())?;
        Ok(())
    }

    pub fn delete_schedule(&mut self, name: &str) -> Result<()> {
        self.schedules.remove(name)?;
        Ok(())
    }

    pub fn delete_counts(&mut self, gate_id: u32) -> Result<()> {
        self.counts.remove(gate_id)?;
        Ok(())
    }
}

/// A consistent snapshot for the API. Readers never block the writer.
pub struct Reader {
    txn: redb::ReadTransaction,
}

/// Which tasks a listing wants.
#[derive(Clone, Debug, Default)]
pub struct TaskFilter {
    pub gate_id: Option<u32>,
    pub state: Option<TaskState>,
    pub label: Option<(String, String)>,
}

/// At most this many rows are looked at per listing call; a sparse filter answers
/// with fewer rows and a cursor to continue from.
const LIST_SCAN_LIMIT: usize = 20_000;

impl Reader {
    pub fn plugins(&self) -> Result<Vec<PluginRecord>> {
        let table = self.txn.open_table(PLUGINS)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (_, v) = entry?;
            out.push(decode("plugins", v.value())?);
        }
        Ok(out)
    }

    pub fn plugin(&self, key: &str) -> Result<Option<PluginRecord>> {
        let table = self.txn.open_table(PLUGINS)?;
        table
            .get(key)?
            .map(|v| decode("plugins", v.value()))
            .transpose()
    }

    pub fn plugin_wasm(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let table = self.txn.open_table(PLUGIN_WASM)?;
        Ok(table.get(key)?.map(|v| v.value().to_vec()))
    }

    pub fn compiled(&self, key: &str, engine: u64) -> Result<Option<Vec<u8>>> {
        let table = self.txn.open_table(PLUGIN_COMPILED)?;
        Ok(table.get((key, engine))?.map(|v| v.value().to_vec()))
    }

    pub fn gates(&self) -> Result<Vec<GateRecord>> {
        let table = self.txn.open_table(GATES)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (_, v) = entry?;
            out.push(decode("gates", v.value())?);
        }
        Ok(out)
    }

    pub fn gate(&self, name: &str) -> Result<Option<GateRecord>> {
        let table = self.txn.open_table(GATES)?;
        table
            .get(name)?
            .map(|v| decode("gates", v.value()))
            .transpose()
    }

    pub fn task(&self, id: u64) -> Result<Option<TaskRecord>> {
        let table = self.txn.open_table(TASKS)?;
        table
            .get(id)?
            .map(|v| decode("tasks", v.value()))
            .transpose()
    }

    pub fn attempts(&self, task_id: u64) -> Result<Vec<AttemptRecord>> {
        let table = self.txn.open_table(ATTEMPTS)?;
        let mut out = Vec::new();
        for entry in table.range((task_id, 0)..=(task_id, u32::MAX))? {
            let (_, v) = entry?;
            out.push(decode("attempts", v.value())?);
        }
        Ok(out)
    }

    pub fn counts(&self, gate_id: u32) -> Result<Counts> {
        let table = self.txn.open_table(COUNTS)?;
        Ok(table
            .get(gate_id)?
            .map_or_else(Counts::default, |v| Counts::decode(v.value())))
    }

    /// The earliest pending due time of a gate.
    pub fn oldest_pending(&self, gate_id: u32) -> Result<Option<u64>> {
        let table = self.txn.open_table(PENDING)?;
        let mut range = table.range((gate_id, 0, 0)..=(gate_id, u64::MAX, u64::MAX))?;
        Ok(match range.next() {
            Some(entry) => Some(entry?.0.value().1),
            None => None,
        })
    }

    /// Pending tasks of a gate due in each of the `n` minutes from the one
    /// holding `from` (ms): read from the per-minute counters, not a scan.
    pub fn forecast(&self, gate_id: u32, from: u64, n: usize) -> Result<Vec<u64>> {
        let table = self.txn.open_table(DUE_MINUTES)?;
        let first = from / MINUTE_MS;
        let mut out = vec![0; n];
        for entry in table.range((gate_id, first)..(gate_id, first + n as u64))? {
            let (key, count) = entry?;
            let index = (key.value().1 - first) as usize;
            out[index] = count.value();
        }
        Ok(out)
    }

    /// Pending tasks of a gate due at or before `now`: whole minutes from the
    /// counters, and the current minute's own rows up to `now`.
    pub fn due_now(&self, gate_id: u32, now: u64) -> Result<u64> {
        let table = self.txn.open_table(DUE_MINUTES)?;
        let minute = now / MINUTE_MS;
        let mut n = 0;
        for entry in table.range((gate_id, 0)..(gate_id, minute))? {
            n += entry?.1.value();
        }
        // The current minute row by row, up to a bound: past it (a herd of
        // tasks due in the same minute) the whole minute counts as due.
        let pending = self.txn.open_table(PENDING)?;
        let mut in_minute = 0;
        for entry in pending.range((gate_id, minute * MINUTE_MS, 0)..=(gate_id, now, u64::MAX))? {
            entry?;
            in_minute += 1;
            if in_minute == DUE_SCAN_LIMIT {
                let whole = table.get((gate_id, minute))?.map_or(0, |v| v.value());
                return Ok(n + whole.max(in_minute));
            }
        }
        Ok(n + in_minute)
    }

    /// Tasks newest first, starting below `before` (a task id), with the cursor to
    /// continue from when more may follow.
    pub fn list_tasks(
        &self,
        filter: &TaskFilter,
        before: Option<u64>,
        limit: usize,
    ) -> Result<(Vec<TaskRecord>, Option<u64>)> {
        let tasks = self.txn.open_table(TASKS)?;
        let upper = before.unwrap_or(u64::MAX);
        let ids: Box<dyn Iterator<Item = Result<u64>>> = match filter.gate_id {
            Some(gate_id) => {
                let index = self.txn.open_table(GATE_TASKS)?;
                let range = index.range((gate_id, 0)..(gate_id, upper))?.rev();
                Box::new(range.map(|e| Ok(e?.0.value().1)))
            }
            None => {
                let range = tasks.range(0..upper)?.rev();
                Box::new(range.map(|e| Ok(e?.0.value())))
            }
        };
        let mut out = Vec::new();
        let mut scanned = 0;
        for id in ids {
            let id = id?;
            scanned += 1;
            let last = Some(id);
            let Some(task) = tasks
                .get(id)?
                .map(|v| decode::<TaskRecord>("tasks", v.value()))
                .transpose()?
            else {
                continue;
            };
            let keep = filter.state.is_none_or(|s| task.state == s)
                && filter
                    .label
                    .as_ref()
                    .is_none_or(|(k, v)| task.labels.get(k) == Some(v));
            if keep {
                out.push(task);
                if out.len() >= limit {
                    return Ok((out, last));
                }
            }
            if scanned >= LIST_SCAN_LIMIT {
                return Ok((out, last));
            }
        }
        Ok((out, None))
    }

    pub fn schedules(&self) -> Result<Vec<ScheduleRecord>> {
        let table = self.txn.open_table(SCHEDULES)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (_, v) = entry?;
            out.push(decode("schedules", v.value())?);
        }
        Ok(out)
    }

    pub fn schedule(&self, name: &str) -> Result<Option<ScheduleRecord>> {
        let table = self.txn.open_table(SCHEDULES)?;
        table
            .get(name)?
            .map(|v| decode("schedules", v.value()))
            .transpose()
    }

    pub fn task_count(&self) -> Result<u64> {
        Ok(self.txn.open_table(TASKS)?.len()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = MINUTE_MS;

    fn add(store: &Store, gate: u32, dues: &[u64], first_id: u64) {
        store
            .write(|tx| {
                for (i, &due) in dues.iter().enumerate() {
                    tx.insert_pending(gate, due, first_id + i as u64)?;
                }
                Ok(())
            })
            .expect("write");
    }

    #[test]
    fn minute_counters_follow_pending() {
        let store = Store::in_memory().expect("store");
        let now = 1_000 * MIN + 30_000;
        // Overdue (two minutes back, and earlier this minute), due later this
        // minute, in five minutes, and in an hour and a half (past the forecast).
        add(&store, 1, &[998 * MIN, 998 * MIN + 1, now - 10_000], 1);
        add(
            &store,
            1,
            &[now + 5_000, now + 5 * MIN, now + 5 * MIN + 1],
            10,
        );
        add(&store, 1, &[now + 90 * MIN], 20);
        add(&store, 2, &[now - 1], 30);
        let r = store.read().expect("read");
        assert_eq!(r.due_now(1, now).expect("due"), 3);
        assert_eq!(r.due_now(2, now).expect("due"), 1);
        let f = r.forecast(1, now, 60).expect("forecast");
        assert_eq!(f.len(), 60);
        assert_eq!((f[0], f[5]), (2, 2), "{f:?}");
        assert_eq!(f.iter().sum::<u64>(), 4);
        drop(r);
        // Starting (removing) tasks takes them out; a key removed twice counts once.
        store
            .write(|tx| {
                assert!(tx.remove_pending(1, 998 * MIN, 1)?);
                assert!(!tx.remove_pending(1, 998 * MIN, 1)?);
                assert!(tx.remove_pending(1, now + 5_000, 10)?);
                Ok(())
            })
            .expect("write");
        let r = store.read().expect("read");
        assert_eq!(r.due_now(1, now).expect("due"), 2);
        assert_eq!(r.forecast(1, now, 60).expect("forecast")[0], 1);
        // A key inserted twice counts once.
        drop(r);
        add(&store, 1, &[now + 5 * MIN], 11);
        let r = store.read().expect("read");
        assert_eq!(r.forecast(1, now, 60).expect("forecast")[5], 2);
    }

    #[test]
    fn a_version_1_file_gets_its_counters_on_open() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("v1.redb");
        let now = 500 * MIN;
        {
            let store = Store::open(&path).expect("open");
            add(&store, 7, &[now - MIN, now + 3 * MIN, now + 3 * MIN + 5], 1);
            // Make it a version 1 file: no counters table.
            let txn = store.db.begin_write().expect("txn");
            txn.delete_table(DUE_MINUTES).expect("delete");
            txn.open_table(META)
                .expect("meta")
                .insert("schema_version", 1)
                .expect("version");
            txn.commit().expect("commit");
        }
        let store = Store::open(&path).expect("reopen");
        let r = store.read().expect("read");
        assert_eq!(r.due_now(7, now).expect("due"), 1);
        assert_eq!(r.forecast(7, now, 60).expect("forecast")[3], 2);
    }

    fn task(id: u64, state: &str, finished_at: Option<u64>) -> TaskRecord {
        serde_json::from_value(serde_json::json!({
            "id": id, "gate": "g", "gate_id": 1, "state": state,
            "webhook": { "url": "https://a.example/", "method": "POST", "headers": {}, "body": null },
            "created_at": 1, "scheduled_at": 1, "due_at": 1, "timeout_ms": 1000,
            "retry": { "max_attempts": 3, "initial_ms": 1, "max_ms": 1, "multiplier": 2.0,
                       "jitter": false, "max_retry_duration_ms": null },
            "expires_at": null, "idempotency_key": format!("key{id}"), "labels": {},
            "attempts": 1, "first_attempt_at": 1, "last_error": null, "finished_at": finished_at,
        }))
        .expect("record")
    }

    #[test]
    fn retention_spares_a_task_that_runs_again() {
        let store = Store::in_memory().expect("store");
        store
            .write(|tx| {
                for id in [1, 2] {
                    tx.put_task(&task(id, "failed", Some(100)))?;
                    tx.put_idempotent(1, &format!("key{id}"), id)?;
                    tx.index_task(1, id)?;
                }
                // Task 2 is retried by an operator: scheduled again.
                tx.put_task(&task(2, "scheduled", None))?;
                Ok(())
            })
            .expect("write");
        let (removed, more) = store.write(|tx| tx.prune(1_000, 10)).expect("prune");
        assert_eq!((removed, more), (1, false));
        let r = store.read().expect("read");
        assert!(r.task(1).expect("read").is_none());
        assert!(r.task(2).expect("read").is_some(), "a live task was pruned");
        drop(r);
        store
            .write(|tx| {
                assert_eq!(tx.idempotent(1, "key1")?, None);
                assert_eq!(tx.idempotent(1, "key2")?, Some(2));
                Ok(())
            })
            .expect("read keys");
        // A finished task rewritten later at the same instant keeps the
        // others of its entry indexed.
        store
            .write(|tx| {
                for id in [3, 4] {
                    tx.put_task(&task(id, "succeeded", Some(200)))?;
                }
                Ok(())
            })
            .expect("write");
        store
            .write(|tx| tx.put_task(&task(3, "succeeded", Some(200))))
            .expect("rewrite");
        let (removed, _) = store.write(|tx| tx.prune(1_000, 10)).expect("prune");
        assert_eq!(removed, 2, "both tasks of the instant are found");
        // Nothing older is left to do.
        let again = store.write(|tx| tx.prune(1_000, 10)).expect("prune");
        assert_eq!(again, (0, false));
    }
}
