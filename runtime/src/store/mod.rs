//! Storage in one redb file: gates, tasks, attempts, idempotency keys, counters.
//!
//! The interface is deliberately narrow (open, one write closure, one reader) so a
//! PostgreSQL backend can sit behind the same calls later. It decides nothing: the
//! shell says what to write. Pending tasks are indexed by (gate, due, id), so the
//! next due tasks of a gate are a range read, never a scan.

mod backup;
mod check;
mod compact;
mod postgres;
mod read;
pub mod records;
mod seam;
mod write;

pub use backup::{Copied, Offline, in_use, needs_repair};
pub use check::Findings;
pub use postgres::{
    Fence, Listener as PgListener, PG_SCHEMA_VERSION, PgStore, Target as PgTarget,
    describe as pg_describe,
};
pub use read::{KeyBacklog, TaskFilter};
use read::{LIST_SCAN_LIMIT, cut_range, keyed_firsts};
pub use seam::{Backend, Heard, Notice, PendingEntry, Reads, Writes};

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::core::{GateId, TaskId, Timestamp};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

pub use records::{
    AdaptiveRecord, AttemptRecord, BackoffRecord, BodyRecord, CircuitRecord, Counts, CountsDelta,
    DEFAULT_PRIORITY_AGING_MS, GateRecord, JsonText, KeyLimitsRecord, KeysRecord, LogRecord,
    LogSource, OccurrenceRecord, PluginCallRecord, PluginRecord, RecoveryRecord, ReplayEnd,
    ReplayRecord, RetryRecord, RunRecord, ScheduleRecord, TaskRecord, TaskState, TemplateRecord,
    WebhookRecord, plugin_key,
};

/// 2 added `due_minutes` and `finished`; 3 added the plugin tables; 4 added
/// `lineage`; 5 added `pending_keyed` and `coalesce`; 6 writes task records
/// in the binary encoding (`compact.rs`; JSON ones still read, so an older
/// file needs no rewrite, but an older build cannot read a newer file). Older
/// files are brought up to date on open.
pub const SCHEMA_VERSION: u64 = 6;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const GATES: TableDefinition<&str, &[u8]> = TableDefinition::new("gates");
const TASKS: TableDefinition<u64, &[u8]> = TableDefinition::new("tasks");
/// (gate id, due ms, task id): the order in which a gate starts its tasks.
const PENDING: TableDefinition<(u32, u64, u64), ()> = TableDefinition::new("pending");
/// (gate id, key, due ms, task id): the pending tasks that name a key, each
/// key in the order it starts them.
const PENDING_KEYED: TableDefinition<(u32, &str, u64, u64), ()> =
    TableDefinition::new("pending_keyed");
/// Tasks with an attempt in flight, to retry after a crash.
const RUNNING: TableDefinition<u64, ()> = TableDefinition::new("running");
const ATTEMPTS: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("attempts");
/// (gate id, key) → task id.
const IDEMPOTENCY: TableDefinition<(u32, &str), u64> = TableDefinition::new("idempotency");
/// (gate id, coalesce key) → the task a create with that key last made:
/// the one a later create replaces while it has not started.
const COALESCE: TableDefinition<(u32, &str), u64> = TableDefinition::new("coalesce");
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
/// Replay jobs by id (JSON `ReplayRecord`). Added without a schema change:
/// a file without it gets it empty on open.
const REPLAYS: TableDefinition<&str, &[u8]> = TableDefinition::new("replays");

const MINUTE_MS: u64 = 60_000;
/// Most rows `due_now` reads one by one.
const DUE_SCAN_LIMIT: u64 = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage: {0}")]
    Redb(#[from] redb::Error),
    #[error("corrupt record in {table}: {detail}")]
    Corrupt { table: &'static str, detail: String },
    #[error(
        "the data file has schema version {found}, newer than this build reads ({SCHEMA_VERSION}): \
         it was written by a later Sluice; run that version, or restore a backup taken before the upgrade"
    )]
    Schema { found: u64 },
    #[error("PostgreSQL: {0}")]
    Postgres(String),
    /// Something this store does not do (a file backup of PostgreSQL).
    #[error("{0}")]
    Unsupported(String),
    /// A write of a node fenced off (SPEC §9): another node took one of its
    /// units over after a lapse, so it changed nothing.
    #[error(
        "this node was fenced off (fence {epoch} was superseded: another node took over a unit of its); nothing was written"
    )]
    Fenced { epoch: u64 },
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

/// The task ids of one `finished` row: little-endian u64s, back to back.
fn finished_ids(bytes: &[u8]) -> impl Iterator<Item = u64> + '_ {
    bytes
        .chunks_exact(8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
}

/// A task record in either encoding: binary (written since schema 6) or
/// JSON (before).
fn decode_task(bytes: &[u8]) -> Result<TaskRecord> {
    if compact::is_compact(bytes) {
        compact::decode_task(bytes).map_err(|detail| StoreError::Corrupt {
            table: "tasks",
            detail,
        })
    } else {
        decode("tasks", bytes)
    }
}

fn encode_task(task: &TaskRecord) -> Vec<u8> {
    compact::encode_task(task)
}

fn decode_attempt(bytes: &[u8]) -> Result<AttemptRecord> {
    if compact::attempt::is_compact(bytes) {
        compact::attempt::decode(bytes).map_err(|detail| StoreError::Corrupt {
            table: "attempts",
            detail,
        })
    } else {
        decode("attempts", bytes)
    }
}

fn encode_attempt(attempt: &AttemptRecord) -> Vec<u8> {
    compact::attempt::encode(attempt)
}

fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("records always serialize")
}

pub struct Store {
    db: Database,
    /// How commits prepare for a crash (`QuickRepair`).
    repair: QuickRepair,
}

/// Whether a commit saves what a quick repair needs. After a crash, redb
/// repairs the file on the next open: a full repair reads the whole file
/// (about 0.8 ms per MiB here: 0.05 s at 64 MiB, 0.2 s at 256 MiB), a quick
/// one only what the last commit saved, which costs every commit the
/// allocator's state (4.4 % of the engine's time at W1 with concurrency 100)
/// and a two-phase commit (two `fdatasync`s, together as long as the one
/// of a one-phase commit on this disk). So a file saves it
/// from `QUICK_REPAIR_FROM` bytes on, where a full repair would make the
/// restart slow; a smaller one is repaired in full, in well under a second.
/// The in-memory store has no crash to recover from.
struct QuickRepair {
    /// The file, for its size; `None` in memory.
    path: Option<std::path::PathBuf>,
    /// Set for good once the file is large enough.
    on: AtomicBool,
    /// Commits since the size was last looked at.
    commits: AtomicU64,
}

const QUICK_REPAIR_FROM: u64 = 256 << 20;
/// The file's size is looked at every this many commits (a few seconds at
/// most under load; the file cannot grow by much in between).
const SIZE_EVERY: u64 = 1_024;

impl QuickRepair {
    fn new(path: Option<&Path>) -> QuickRepair {
        let repair = QuickRepair {
            path: path.map(Path::to_path_buf),
            on: AtomicBool::new(false),
            commits: AtomicU64::new(0),
        };
        repair.look();
        repair
    }

    fn look(&self) {
        let len = self
            .path
            .as_ref()
            .and_then(|p| std::fs::metadata(p).ok())
            .map(|m| m.len());
        if len.is_some_and(quick_repair_for) {
            self.on.store(true, Ordering::Relaxed);
        }
    }

    /// Whether this commit saves the quick repair's state.
    fn next_commit(&self) -> bool {
        if !self.on.load(Ordering::Relaxed)
            && self.commits.fetch_add(1, Ordering::Relaxed) % SIZE_EVERY == SIZE_EVERY - 1
        {
            self.look();
        }
        self.on.load(Ordering::Relaxed)
    }
}

/// Whether a data file of `len` bytes saves a quick repair's state with
/// each commit.
fn quick_repair_for(len: u64) -> bool {
    len >= QUICK_REPAIR_FROM
}

/// The tables of one write transaction, opened once for the whole batch.
pub struct Tx<'t> {
    meta: redb::Table<'t, &'static str, u64>,
    gates: redb::Table<'t, &'static str, &'static [u8]>,
    tasks: redb::Table<'t, u64, &'static [u8]>,
    pending: redb::Table<'t, (u32, u64, u64), ()>,
    pending_keyed: redb::Table<'t, (u32, &'static str, u64, u64), ()>,
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
    /// Changes to the running index in this transaction (a task's last
    /// word: running or not), written once at its end (`flush_running`).
    running_changes: BTreeMap<u64, bool>,
}

impl Store {
    /// Opens or creates the data file. A file left by a crash opens cleanly: redb
    /// repairs it on open.
    pub fn open(path: &Path) -> Result<Store> {
        let db = Database::builder().set_cache_size(64 << 20).create(path)?;
        let store = Store {
            db,
            repair: QuickRepair::new(Some(path)),
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
                // The plugin, lineage and keyed tables are created empty by
                // opening them; tasks without a `root` are their own.
                Some(2..=5) => {
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
            repair: QuickRepair::new(None),
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
        // A large file's commits also save the allocator state (with a
        // two-phase commit), so opening it after a crash is near instant
        // instead of a walk of the whole file: restart time must not grow
        // with the backlog (`QuickRepair`).
        txn.set_quick_repair(self.repair.next_commit());
        let result = {
            let mut tx = Tx {
                meta: txn.open_table(META)?,
                gates: txn.open_table(GATES)?,
                tasks: txn.open_table(TASKS)?,
                pending: txn.open_table(PENDING)?,
                pending_keyed: txn.open_table(PENDING_KEYED)?,
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
                running_changes: BTreeMap::new(),
            };
            let result = f(&mut tx)?;
            tx.flush_running()?;
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

/// A consistent snapshot for the API. Readers never block the writer.
pub struct Reader {
    txn: redb::ReadTransaction,
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = MINUTE_MS;

    fn add(store: &Store, gate: u32, dues: &[u64], first_id: u64) {
        store
            .write(|tx| {
                for (i, &due) in dues.iter().enumerate() {
                    let id = TaskId(first_id + i as u64);
                    tx.insert_pending(GateId(gate), None, Timestamp(due), id)?;
                }
                Ok(())
            })
            .expect("write");
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

    fn running(store: &Store) -> BTreeSet<u64> {
        let txn = store.db.begin_read().expect("read");
        let table = txn.open_table(RUNNING).expect("running");
        let keys = table
            .iter()
            .expect("iter")
            .map(|e| e.expect("entry").0.value());
        keys.collect()
    }

    #[test]
    fn the_running_index_takes_a_large_set_one_by_one_and_a_small_one_in_a_pass() {
        let store = Store::in_memory().expect("store");
        let mut model = BTreeSet::new();
        // A large set (500) with two ends: removed one by one; then most of
        // it ends in one transaction: removed in one pass over their span.
        for ends in [vec![7, 400], (0..450).filter(|i| i % 10 != 3).collect()] {
            store
                .write(|tx| {
                    for id in 0..500 {
                        tx.set_running(id, true)?;
                    }
                    Ok(())
                })
                .expect("start");
            model.extend(0..500);
            store
                .write(|tx| {
                    for &id in &ends {
                        tx.set_running(id, false)?;
                    }
                    // Started again after its end, in the same transaction.
                    tx.set_running(ends[0], true)?;
                    assert_eq!(tx.running_tasks()?, {
                        let mut m = model.clone();
                        m.retain(|id| !ends.contains(id) || *id == ends[0]);
                        m.into_iter().collect::<Vec<_>>()
                    });
                    Ok(())
                })
                .expect("end");
            model.retain(|id| !ends.contains(id) || *id == ends[0]);
            assert_eq!(running(&store), model);
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// Over transactions of random starts and ends, the running index
        /// (read inside the transaction and committed) is what they say.
        #[test]
        fn the_running_index_is_its_changes(
            txns in proptest::collection::vec(
                proptest::collection::vec((0u64..200, proptest::bool::ANY), 0..120), 1..12),
        ) {
            let store = Store::in_memory().expect("store");
            let mut model = BTreeSet::new();
            for changes in &txns {
                for &(id, on) in changes {
                    if on { model.insert(id); } else { model.remove(&id); }
                }
                let seen = store
                    .write(|tx| {
                        for &(id, on) in changes {
                            tx.set_running(id, on)?;
                        }
                        tx.running_tasks()
                    })
                    .expect("write");
                proptest::prop_assert_eq!(seen, model.iter().copied().collect::<Vec<_>>());
                proptest::prop_assert_eq!(running(&store), model.clone());
            }
        }

        /// Removing many pending entries at once (in one pass where they sit
        /// close together) answers and leaves the tables and the per-minute
        /// counts exactly as removing them one by one: entries missing,
        /// named twice, keyed, in other gates.
        #[test]
        fn removing_many_pending_entries_is_removing_each(
            entries in proptest::collection::btree_set((0u32..3, 0u64..40, proptest::bool::ANY), 0..150),
            picks in proptest::collection::vec((0usize..200, proptest::bool::ANY), 0..80),
        ) {
            let entries: Vec<PendingEntry> = entries
                .into_iter()
                .enumerate()
                .map(|(id, (gate, due, keyed))| PendingEntry {
                    gate: GateId(gate),
                    key: keyed.then(|| "k".to_string()),
                    due: Timestamp(due * MIN / 7),
                    task: TaskId(id as u64),
                })
                .collect();
            // Some entries named, some twice, some never written (`missing`).
            let mut named = Vec::new();
            for &(pick, missing) in &picks {
                if let Some(e) = entries.get(pick % entries.len().max(1)) {
                    let mut e = e.clone();
                    if missing {
                        e.task = TaskId(e.task.0 + 1_000);
                    }
                    named.push(e);
                }
            }
            let stores = [Store::in_memory().expect("a"), Store::in_memory().expect("b")];
            let mut answers = Vec::new();
            for (i, store) in stores.iter().enumerate() {
                store
                    .write(|tx| {
                        for e in &entries {
                            tx.insert_pending(e.gate, e.key.as_deref(), e.due, e.task)?;
                        }
                        Ok(())
                    })
                    .expect("insert");
                answers.push(
                    store
                        .write(|tx| match i {
                            0 => tx.remove_pending_many(&named),
                            _ => named
                                .iter()
                                .map(|e| tx.remove_pending(e.gate, e.key.as_deref(), e.due, e.task))
                                .collect(),
                        })
                        .expect("remove"),
                );
            }
            proptest::prop_assert_eq!(&answers[0], &answers[1]);
            let left = |store: &Store| {
                let txn = store.db.begin_read().expect("read");
                let plain: Vec<_> = txn.open_table(PENDING).expect("pending").iter().expect("iter")
                    .map(|e| e.expect("entry").0.value()).collect();
                let keyed: Vec<_> = txn.open_table(PENDING_KEYED).expect("keyed").iter().expect("iter")
                    .map(|e| { let e = e.expect("entry"); let k = e.0.value(); (k.0, k.1.to_string(), k.2, k.3) }).collect();
                let minutes: Vec<_> = txn.open_table(DUE_MINUTES).expect("minutes").iter().expect("iter")
                    .map(|e| { let e = e.expect("entry"); (e.0.value(), e.1.value()) }).collect();
                (plain, keyed, minutes)
            };
            proptest::prop_assert_eq!(left(&stores[0]), left(&stores[1]));
        }
    }

    #[test]
    fn only_a_large_file_pays_for_a_quick_repair() {
        assert!(!quick_repair_for(0));
        assert!(!quick_repair_for(QUICK_REPAIR_FROM - 1));
        assert!(quick_repair_for(QUICK_REPAIR_FROM));
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(&dir.path().join("small.redb")).expect("open");
        assert!(
            !store.repair.next_commit(),
            "a new file is repaired in full"
        );
        // A file grown past the size (as a backlog grows one): seen within
        // `SIZE_EVERY` commits, and for good.
        let path = dir.path().join("growing");
        let file = std::fs::File::create(&path).expect("file");
        let repair = QuickRepair::new(Some(&path));
        assert!(!repair.next_commit());
        file.set_len(QUICK_REPAIR_FROM).expect("grow");
        let seen = (0..SIZE_EVERY).position(|_| repair.next_commit());
        assert!(seen.is_some(), "the size is looked at again");
        file.set_len(0).expect("shrink");
        assert!(repair.next_commit(), "for good");
        assert!(!Store::in_memory().expect("memory").repair.next_commit());
    }

    #[test]
    fn a_newer_file_is_refused_with_both_versions_named() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("next.redb");
        {
            let store = Store::open(&path).expect("open");
            let txn = store.db.begin_write().expect("txn");
            txn.open_table(META)
                .expect("meta")
                .insert("schema_version", SCHEMA_VERSION + 1)
                .expect("version");
            txn.commit().expect("commit");
        }
        let err = match Store::open(&path) {
            Ok(_) => panic!("a newer file opened"),
            Err(e) => e.to_string(),
        };
        let (newer, ours) = (SCHEMA_VERSION + 1, SCHEMA_VERSION);
        assert!(
            err.contains(&format!("schema version {newer}")) && err.contains(&format!("({ours})")),
            "{err}"
        );
    }
}
