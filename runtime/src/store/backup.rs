//! Backups: a consistent copy of a live store, and what the offline tools
//! (`sluice restore`, `sluice check`) open without a server.
//!
//! redb holds its file exclusively, so a backup cannot be a copy of the file.
//! It is one read transaction (a snapshot: the writer goes on) copied table by
//! table into a new file, which the API then streams.

use std::path::Path;

use redb::{Key, ReadOnlyDatabase, ReadTransaction, Value, WriteTransaction};

use super::*;

/// What a backup holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Copied {
    pub schema_version: u64,
    pub rows: u64,
    pub gates: u64,
    pub tasks: u64,
    pub schedules: u64,
    pub plugins: u64,
}

impl Store {
    /// Writes a consistent snapshot of the store to a new file at `dest`
    /// (which must not exist). Writers are not held up: the copy reads one
    /// snapshot while commits go on.
    pub fn backup_to(&self, dest: &Path) -> Result<Copied> {
        let snapshot = self.db.begin_read()?;
        // A small cache: the copy streams through it once, and a backup must
        // not take the memory the server needs.
        let target = Database::builder().set_cache_size(64 << 20).create(dest)?;
        let txn = target.begin_write()?;
        let copied = copy_all(&snapshot, &txn)?;
        txn.commit()?;
        Ok(copied)
    }
}

impl Store {
    /// The schema version and what the store holds.
    pub fn summary(&self) -> Result<Copied> {
        summarize(&self.db.begin_read()?)
    }
}

/// A data file opened without a server and without changing it: a backup
/// being checked, or a stopped server's store.
pub struct Offline {
    db: ReadOnlyDatabase,
}

impl Offline {
    /// Opens `path` read-only. A file a running server holds is refused by
    /// redb's lock, which is the point: the offline tools never race a server.
    pub fn open(path: &Path) -> Result<Offline> {
        Ok(Offline {
            db: ReadOnlyDatabase::open(path)?,
        })
    }

    fn begin(&self) -> Result<ReadTransaction> {
        Ok(self.db.begin_read()?)
    }

    /// Checks the file; see [`super::check::check`].
    pub fn check(&self) -> Result<super::Findings> {
        super::check::check(&self.begin()?)
    }

    /// The schema version the file was written with, and what it holds.
    pub fn summary(&self) -> Result<Copied> {
        summarize(&self.begin()?)
    }
}

/// Whether opening `path` failed because another process holds it.
pub fn in_use(e: &StoreError) -> bool {
    matches!(e, StoreError::Redb(redb::Error::DatabaseAlreadyOpen))
}

/// Whether opening `path` read-only failed because the file was not closed
/// cleanly (a crash): only a writer may repair it.
pub fn needs_repair(e: &StoreError) -> bool {
    matches!(e, StoreError::Redb(redb::Error::RepairAborted))
}

fn summarize(txn: &ReadTransaction) -> Result<Copied> {
    fn rows<K: Key + 'static, V: Value + 'static>(
        txn: &ReadTransaction,
        table: TableDefinition<K, V>,
    ) -> Result<u64> {
        match txn.open_table(table) {
            Ok(t) => Ok(t.len()?),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
            Err(e) => Err(e.into()),
        }
    }
    let schema_version = match txn.open_table(META) {
        Ok(meta) => meta.get("schema_version")?.map_or(0, |v| v.value()),
        Err(redb::TableError::TableDoesNotExist(_)) => 0,
        Err(e) => return Err(e.into()),
    };
    Ok(Copied {
        schema_version,
        rows: 0,
        gates: rows(txn, GATES)?,
        tasks: rows(txn, TASKS)?,
        schedules: rows(txn, SCHEDULES)?,
        plugins: rows(txn, PLUGINS)?,
    })
}

/// Copies every table the schema knows, whole.
fn copy_all(from: &ReadTransaction, to: &WriteTransaction) -> Result<Copied> {
    let mut rows = 0;
    rows += copy(from, to, META)?;
    rows += copy(from, to, GATES)?;
    rows += copy(from, to, TASKS)?;
    rows += copy(from, to, PENDING)?;
    rows += copy(from, to, PENDING_KEYED)?;
    rows += copy(from, to, COALESCE)?;
    rows += copy(from, to, RUNNING)?;
    rows += copy(from, to, ATTEMPTS)?;
    rows += copy(from, to, IDEMPOTENCY)?;
    rows += copy(from, to, GATE_TASKS)?;
    rows += copy(from, to, COUNTS)?;
    rows += copy(from, to, SCHEDULES)?;
    rows += copy(from, to, DUE_MINUTES)?;
    rows += copy(from, to, FINISHED)?;
    rows += copy(from, to, PLUGINS)?;
    rows += copy(from, to, PLUGIN_WASM)?;
    rows += copy(from, to, PLUGIN_COMPILED)?;
    rows += copy(from, to, LINEAGE)?;
    rows += copy(from, to, REPLAYS)?;
    Ok(Copied {
        rows,
        ..summarize(from)?
    })
}

fn copy<K: Key + 'static, V: Value + 'static>(
    from: &ReadTransaction,
    to: &WriteTransaction,
    table: TableDefinition<K, V>,
) -> Result<u64> {
    let source = match from.open_table(table) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    let mut target = to.open_table(table)?;
    let mut rows = 0;
    for entry in source.iter()? {
        let (k, v) = entry?;
        target.insert(k.value(), v.value())?;
        rows += 1;
    }
    Ok(rows)
}
