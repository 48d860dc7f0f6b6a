//! The store on PostgreSQL (SPEC §9): the same seam as redb, for servers that
//! outgrow one machine's file. Every table of the redb store is a table in
//! the schema `sluice` (or one the caller names), but for three indexes of
//! tasks (its gate's listing, the running set, retention) that are columns
//! of the task's row, so a turn writes a task it changed once; records are
//! the same bytes, so a record means the same in both stores.
//!
//! The seam is synchronous (the engine runs one transaction per turn on its
//! own thread), tokio-postgres is not: the store owns a small runtime that
//! drives its connections, and each call waits for its answer with
//! `futures_executor::block_on`, which needs no runtime of its own. One
//! connection writes (the engine's transactions, one at a time); readers take
//! a connection from a small pool, each snapshot one `REPEATABLE READ`
//! transaction.
//!
//! Integers: PostgreSQL has no unsigned types; ids, times and counts are
//! stored as `bigint` (`int` for gate ids and attempt numbers), all far below
//! 2^63.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::core::units::{UNITS, Units, unit_of};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row, Statement};

use super::*;

/// The condition that leaves out of a read of `tasks` (unaliased) the
/// tasks of gate `$gate` whose start is kept apart (`starts`, schema 9) and
/// still counts (its row is at the version the start was made on): they
/// are running, whatever their rows say. The starts are found through the
/// gate's index and read once per statement, so the read keeps to its own.
macro_rules! unstarted {
    ($gate:literal) => {
        concat!(
            " AND ROW(id, coalesce(v, 0)) <> ALL(ARRAY(SELECT ROW(e.id, e.v) FROM starts s, ",
            "unnest(s.ids, s.vs, s.gates) AS e(id, v, gate_id) WHERE s.gates @> ARRAY[",
            $gate,
            "::int] AND e.gate_id = ",
            $gate,
            "))"
        )
    };
}

mod check;
mod listen;
mod read;
mod tls;
mod write;

pub use listen::Listener;
pub use tls::Target;

use read::PgReader;
use write::PgTx;

/// The tables, created on first open. A schema version in `meta` guards
/// against an older build on a newer schema, as the redb file's does.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key text PRIMARY KEY, value bigint NOT NULL);
CREATE TABLE IF NOT EXISTS gates (name text PRIMARY KEY, record bytea NOT NULL, unit int);
CREATE TABLE IF NOT EXISTS tasks (
    id bigint PRIMARY KEY, record bytea NOT NULL,
    gate_id int, finished_at bigint, running bool NOT NULL DEFAULT false,
    due bigint, pkey text COLLATE \"C\", attempts bytea[], v int);
CREATE TABLE IF NOT EXISTS starts (
    ids bigint[] NOT NULL, vs int[] NOT NULL, gates int[] NOT NULL, ns int[] NOT NULL,
    records bytea[] NOT NULL, attempts bytea[] NOT NULL);
CREATE TABLE IF NOT EXISTS idempotency (
    gate_id int NOT NULL, key text NOT NULL, task_id bigint NOT NULL,
    PRIMARY KEY (gate_id, key));
CREATE TABLE IF NOT EXISTS coalesce (
    gate_id int NOT NULL, key text NOT NULL, task_id bigint NOT NULL,
    PRIMARY KEY (gate_id, key));
CREATE TABLE IF NOT EXISTS counts (gate_id int PRIMARY KEY, record bytea NOT NULL);
CREATE TABLE IF NOT EXISTS schedules (name text PRIMARY KEY, record bytea NOT NULL);
CREATE TABLE IF NOT EXISTS due_minutes (
    gate_id int NOT NULL, minute bigint NOT NULL, n bigint NOT NULL,
    PRIMARY KEY (gate_id, minute));
CREATE TABLE IF NOT EXISTS plugins (key text PRIMARY KEY, record bytea NOT NULL);
CREATE TABLE IF NOT EXISTS plugin_wasm (key text PRIMARY KEY, wasm bytea NOT NULL);
CREATE TABLE IF NOT EXISTS plugin_compiled (
    key text NOT NULL, engine bigint NOT NULL, artifact bytea NOT NULL,
    PRIMARY KEY (key, engine));
CREATE TABLE IF NOT EXISTS lineage (root bigint PRIMARY KEY, n int NOT NULL);
CREATE TABLE IF NOT EXISTS replays (id text PRIMARY KEY, record bytea NOT NULL);
CREATE TABLE IF NOT EXISTS nodes (
    id text PRIMARY KEY, address text NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    heartbeat timestamptz NOT NULL DEFAULT now(),
    fence bigint NOT NULL DEFAULT 0, leaving bool NOT NULL DEFAULT false,
    slots_until bigint);
CREATE TABLE IF NOT EXISTS units (
    unit int PRIMARY KEY, owner text, epoch bigint NOT NULL DEFAULT 0,
    expires_at timestamptz NOT NULL DEFAULT '-infinity');
INSERT INTO meta VALUES ('next_gate_id', 1) ON CONFLICT DO NOTHING;
";

/// Schema 5 keeps a task's gate, its place in the running set and its
/// retention time in columns of its row (they were the tables `gate_tasks`,
/// `running` and `finished`), so a turn writes each task it changed once.
const UPGRADE_TO_5: &str = "
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS gate_id int,
    ADD COLUMN IF NOT EXISTS finished_at bigint,
    ADD COLUMN IF NOT EXISTS running bool NOT NULL DEFAULT false;
UPDATE tasks t SET gate_id = g.gate_id FROM gate_tasks g WHERE g.task_id = t.id;
UPDATE tasks t SET running = true FROM running r WHERE r.task_id = t.id;
UPDATE tasks t SET finished_at = f.at
    FROM (SELECT task_id, max(at) AS at FROM finished GROUP BY task_id) f
    WHERE f.task_id = t.id;
DROP TABLE gate_tasks, running, finished;
";

/// Schema 6 spreads the gates over the cluster's units (`core::units`): each
/// unit is leased on its own (the table `units`, created above), every gate
/// row names its unit (so a node adopting units reads only their gates), and
/// the fence moves to the node (`nodes.fence`, `cluster::units`). The units
/// of gate rows already there are filled in by `fill_gate_units`.
const UPGRADE_TO_6: &str = "
ALTER TABLE nodes ADD COLUMN IF NOT EXISTS fence bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS leaving bool NOT NULL DEFAULT false;
ALTER TABLE gates ADD COLUMN IF NOT EXISTS unit int;
";

/// Schema 7 records, with each renewal, the latest slot time a node may
/// still send an attempt at, on its own wall clock (`nodes.slots_until`,
/// `cluster::units`): a node taking its units over after a lapse puts the
/// attempts on record with later slot times straight back in the queue,
/// since they never left. The single lease's `ownership`, unused since the
/// units, goes.
const UPGRADE_TO_7: &str = "
ALTER TABLE nodes ADD COLUMN IF NOT EXISTS slots_until bigint;
DROP TABLE IF EXISTS ownership;
";

/// Schema 8 keeps a pending task's place in its gate's due order (the
/// tables `pending` and `pending_keyed`) and its attempts (the table
/// `attempts`, element `n` of the array holding attempt `n`) in its row, so
/// a task's creation, start and end each write one row. (The old tables
/// are made first where missing, `pending_keyed` before schema 3, so every
/// upgrade runs the same statements.)
const UPGRADE_TO_8: &str = "
CREATE TABLE IF NOT EXISTS pending (
    gate_id int NOT NULL, due bigint NOT NULL, task_id bigint NOT NULL);
CREATE TABLE IF NOT EXISTS pending_keyed (
    gate_id int NOT NULL, key text NOT NULL, due bigint NOT NULL, task_id bigint NOT NULL);
CREATE TABLE IF NOT EXISTS attempts (
    task_id bigint NOT NULL, attempt int NOT NULL, record bytea NOT NULL);
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS due bigint,
    ADD COLUMN IF NOT EXISTS pkey text COLLATE \"C\",
    ADD COLUMN IF NOT EXISTS attempts bytea[];
UPDATE tasks t SET gate_id = p.gate_id, due = p.due FROM pending p WHERE p.task_id = t.id;
UPDATE tasks t SET gate_id = p.gate_id, due = p.due, pkey = p.key
    FROM pending_keyed p WHERE p.task_id = t.id;
UPDATE tasks t SET attempts = a.list
    FROM (SELECT task_id, array_agg(record ORDER BY attempt) AS list FROM attempts
          GROUP BY task_id HAVING min(attempt) = 1 AND max(attempt) = count(*)) a
    WHERE a.task_id = t.id;
DO $$ DECLARE a record; BEGIN
    FOR a IN SELECT x.task_id, x.attempt, x.record FROM attempts x JOIN tasks t
             ON t.id = x.task_id AND t.attempts IS NULL LOOP
        UPDATE tasks SET attempts[a.attempt] = a.record WHERE id = a.task_id;
    END LOOP;
END $$;
DROP TABLE pending, pending_keyed, attempts;
";

/// Schema 9 writes a turn's starts of pending tasks in one row of its own
/// (`starts`) rather than in each task's row, so a task's row is written
/// at its creation and its end only: each write of a row counts up its
/// version (`tasks.v`), and a start counts while its task's row is at the
/// version the start was made on (`write.rs`).
const UPGRADE_TO_9: &str = "
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS v int;
";

/// The views over the starts (schema 9), made where missing (a view made
/// again would wait for every query on it), for the reads of every task at
/// once (the check, a takeover's running set): `started`, each start in
/// `starts` that still counts; `live`, each task row with its start laid
/// over it (the start's record, running, out of the due order, and its
/// attempt `n` in `attempt`). Reads of some tasks lay the starts over the
/// rows themselves (`StartsOf`), through the index on `starts.ids`.
const VIEWS: &str = "
DO $$ BEGIN
IF to_regclass('started') IS NULL THEN
    CREATE VIEW started AS
        SELECT e.id, t.gate_id, e.n, e.record, e.attempt FROM starts s,
            unnest(s.ids, s.vs, s.ns, s.records, s.attempts) AS e(id, v, n, record, attempt)
            JOIN tasks t ON t.id = e.id AND coalesce(t.v, 0) = e.v;
END IF;
IF to_regclass('live') IS NULL THEN
    CREATE VIEW live AS
        SELECT t.id, coalesce(s.record, t.record) AS record, t.gate_id,
            t.running OR s.id IS NOT NULL AS running,
            CASE WHEN s.id IS NULL THEN t.due END AS due,
            CASE WHEN s.id IS NULL THEN t.pkey END AS pkey,
            t.attempts, s.n, s.attempt
        FROM tasks t LEFT JOIN started s ON s.id = t.id;
END IF;
END $$;
";

/// The indexes on those columns (after an upgrade has added them). The
/// indexes on `starts` take each insert in at once (`fastupdate = off`):
/// nearly every row of `starts` is recent, and a lookup would read through
/// the index's list of pending inserts rather than the index. Those a
/// build before this one made are changed here, unless a running node
/// holds them: the change, which locks them, gives up after 500 ms, before
/// PostgreSQL looks for deadlocks (after 1 s; this transaction holds
/// `starts` against inserts since its `CREATE INDEX`, and a running
/// node's turn could be waiting on it), and the next start tries again.
const INDEXES: &str = "
CREATE INDEX IF NOT EXISTS tasks_by_gate ON tasks (gate_id, id);
CREATE INDEX IF NOT EXISTS tasks_pending ON tasks (gate_id, due, id)
    WHERE due IS NOT NULL AND pkey IS NULL;
CREATE INDEX IF NOT EXISTS tasks_pending_keyed ON tasks (gate_id, pkey, due, id)
    WHERE due IS NOT NULL AND pkey IS NOT NULL;
CREATE INDEX IF NOT EXISTS tasks_running ON tasks (id) WHERE running;
CREATE INDEX IF NOT EXISTS tasks_finished ON tasks (finished_at, id)
    WHERE finished_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS gates_by_unit ON gates (unit);
CREATE INDEX IF NOT EXISTS starts_by_task ON starts USING gin (ids) WITH (fastupdate = off);
CREATE INDEX IF NOT EXISTS starts_by_gate ON starts USING gin (gates) WITH (fastupdate = off);
DO $$ DECLARE before text := current_setting('lock_timeout'); BEGIN
IF NOT EXISTS (SELECT 1 FROM pg_class WHERE oid = 'starts_by_task'::regclass
               AND reloptions @> '{fastupdate=off}') THEN
    BEGIN
        PERFORM set_config('lock_timeout', '500ms', true);
        ALTER INDEX starts_by_task SET (fastupdate = off);
        ALTER INDEX starts_by_gate SET (fastupdate = off);
        PERFORM set_config('lock_timeout', before, true);
    EXCEPTION WHEN lock_not_available OR deadlock_detected THEN NULL;
    END;
END IF;
END $$;
";

/// The PostgreSQL schema version this build writes. 2 added `nodes` and
/// `ownership` (the cluster's single lease), 3 `pending_keyed` and
/// `coalesce`, 4 writes task records in the binary encoding (JSON ones
/// still read), 5 moved three index tables into columns of `tasks`
/// (`UPGRADE_TO_5`), 6 added the units (`UPGRADE_TO_6`), 7 the nodes' slot
/// marks (`UPGRADE_TO_7`), 8 moved pending entries and attempts into the
/// task rows (`UPGRADE_TO_8`), 9 keeps starts apart (`UPGRADE_TO_9`);
/// older schemas are upgraded in place.
pub const PG_SCHEMA_VERSION: u64 = 9;

/// A transaction left idle this long (its node paused, or cut off from
/// the database) is ended by PostgreSQL, so the locks it holds (the share
/// lock on the node's row among them) do not hold up the next owner.
const IDLE_IN_TRANSACTION: &str = "3s";

/// Read connections kept for reuse.
const POOL: usize = 8;

/// The store in a PostgreSQL database.
pub struct PgStore {
    /// Drives the connections; shut down in the background on drop, which
    /// may happen inside another runtime.
    runtime: Option<tokio::runtime::Runtime>,
    target: Target,
    schema: String,
    writer: Mutex<Conn>,
    readers: Arc<Mutex<Vec<Conn>>>,
    /// When set, under whose authority this store may write: every write
    /// transaction first checks (and share-locks) the fence's row, so a node
    /// whose lease was taken over writes nothing.
    fence: Mutex<Option<Fence>>,
    /// Write transactions begun: every `SWEEP_EVERY`th clears the starts
    /// kept apart whose rows have all been written since.
    transactions: AtomicU64,
}

/// How many write transactions go by between sweeps of `starts`.
const SWEEP_EVERY: u64 = 16;

/// What a node's writes carry, so that once another node has taken over
/// from it, none of them commits (`cluster`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fence {
    /// The node's own fence (`nodes.fence`, schema 6), which a node taking
    /// over any of its units after a lapse raises: one row to check per
    /// transaction, however many units the node holds.
    Node { node: String, generation: u64 },
}

/// A connection with the statements it has prepared: each SQL text is
/// parsed once per connection, not once per call.
pub(super) struct Conn {
    client: Client,
    statements: Mutex<HashMap<&'static str, Statement>>,
}

impl Conn {
    fn new(client: Client) -> Conn {
        Conn {
            client,
            statements: Mutex::default(),
        }
    }

    fn statement(&self, sql: &'static str) -> Result<Statement> {
        let cached = self
            .statements
            .lock()
            .ok()
            .and_then(|s| s.get(sql).cloned());
        if let Some(statement) = cached {
            return Ok(statement);
        }
        let statement = wait(self.client.prepare(sql))?;
        if let Ok(mut statements) = self.statements.lock() {
            statements.insert(sql, statement.clone());
        }
        Ok(statement)
    }
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

fn pg(e: tokio_postgres::Error) -> StoreError {
    StoreError::Postgres(describe(&e))
}

/// An error with its cause: tokio-postgres says only "db error" or "error
/// performing TLS handshake" and keeps the server's message, or the
/// certificate's fault, in the source.
pub fn describe(e: &tokio_postgres::Error) -> String {
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

/// Waits for a future that needs no runtime of its own (a query on a
/// connection that the store's runtime drives).
fn wait<T>(
    future: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T> {
    futures_executor::block_on(future).map_err(pg)
}

/// `u64` as `bigint`: every value stored is far below 2^63; larger ones (a
/// range's open end) clamp.
fn big(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn unbig(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

fn int(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

fn unint(n: i32) -> u32 {
    u32::try_from(n).unwrap_or(0)
}

/// A database that stops answering (a cut network, a frozen host) is
/// noticed within seconds, not when TCP gives up after minutes: keepalive
/// probes after 5 s of silence, and sent data unacknowledged for 10 s ends
/// the connection. The writer then fails its transaction, the driver stops,
/// and the node stands by until it can take the gates again.
fn detect_lost_peers(config: &mut tokio_postgres::Config) {
    config
        .keepalives(true)
        .keepalives_idle(std::time::Duration::from_secs(5))
        .keepalives_interval(std::time::Duration::from_secs(1))
        .keepalives_retries(3)
        .tcp_user_timeout(std::time::Duration::from_secs(10));
}

/// Refuses a connection that would carry the password and the data in the
/// clear beyond this machine: a server elsewhere is reached over TLS
/// (`sslmode=require` or `verify-full`, the certificate verified, see
/// `tls.rs`), or without only when the URL says `sslmode=disable` (a private
/// network, a TLS tunnel); loopback and Unix sockets always.
fn check_transport(config: &tokio_postgres::Config) -> Result<()> {
    use tokio_postgres::config::{Host, SslMode};
    let loopback = |name: &str| {
        name == "localhost"
            || name
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    };
    let remote = config.get_hosts().iter().any(|host| match host {
        Host::Tcp(name) => !loopback(name),
        Host::Unix(_) => false,
    }) || config.get_hostaddrs().iter().any(|ip| !ip.is_loopback());
    if remote && matches!(config.get_ssl_mode(), SslMode::Prefer) {
        return Err(StoreError::Postgres(
            "a PostgreSQL server beyond loopback needs TLS or an explicit opt-out: add \
             sslmode=verify-full to the URL (with sslrootcert=/path/ca.pem unless its \
             certificate is signed by a public CA), or sslmode=disable if the network \
             between is trusted (or tunnelled)"
                .into(),
        ));
    }
    Ok(())
}

fn valid_schema(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

impl PgStore {
    /// Connects to `url` (`postgres://user@host:port/db`) and creates the
    /// tables in schema `sluice` if they are not there.
    pub fn open(url: &str) -> Result<PgStore> {
        PgStore::open_in(url, "sluice")
    }

    /// Like `open`, in schema `schema` (lowercase letters, digits, `_`).
    pub fn open_in(url: &str, schema: &str) -> Result<PgStore> {
        if !valid_schema(schema) {
            return Err(StoreError::Postgres(format!(
                "invalid schema name {schema:?}: use lowercase letters, digits and '_'"
            )));
        }
        let mut target = Target::parse(url)?;
        check_transport(&target.config)?;
        detect_lost_peers(&mut target.config);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("sluice-postgres")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Postgres(format!("starting the PostgreSQL runtime: {e}")))?;
        let writer = Conn::new(connect(&runtime, &target, schema)?);
        let store = PgStore {
            runtime: Some(runtime),
            target,
            schema: schema.to_string(),
            writer: Mutex::new(writer),
            readers: Arc::default(),
            fence: Mutex::default(),
            transactions: AtomicU64::new(0),
        };
        store.create_schema()?;
        store.refuse_older_servers()?;
        Ok(store)
    }

    /// Servers from before clusters held this lock exclusively to be alone
    /// on a schema; every node now holds it shared for its life (its
    /// writer connection's session). So a node will not start beside such
    /// a server, which knows no lease and no fence, nor it beside a node.
    fn refuse_older_servers(&self) -> Result<()> {
        let client = self
            .writer
            .lock()
            .map_err(|_| StoreError::Postgres("the writer connection was poisoned".into()))?;
        self.share_the_schema(&client)
    }

    /// Takes the shared lock on `conn`'s session (see `refuse_older_servers`).
    fn share_the_schema(&self, conn: &Conn) -> Result<()> {
        let held: bool = wait(conn.client.query_one(
            "SELECT pg_try_advisory_lock_shared(7206317, hashtext(current_schema()))",
            &[],
        ))?
        .get(0);
        if held {
            Ok(())
        } else {
            Err(StoreError::Postgres(format!(
                "a Sluice server from before clusters is using schema {:?} of this database: \
                 stop it before starting this one (upgrade every node)",
                self.schema
            )))
        }
    }

    /// From now on every write transaction runs only while `fence` holds
    /// (see `cluster`); `None` lifts the check.
    pub fn set_fence(&self, fence: Option<Fence>) {
        if let Ok(mut held) = self.fence.lock() {
            *held = fence;
        }
    }

    /// The URL's connection settings and the schema, for the cluster's own
    /// connections.
    pub fn settings(&self) -> (Target, String) {
        (self.target.clone(), self.schema.clone())
    }

    /// A new connection, its `search_path` set to the store's schema.
    fn connect(&self) -> Result<Client> {
        let runtime = self
            .runtime
            .as_ref()
            .ok_or_else(|| StoreError::Postgres("the PostgreSQL runtime has stopped".into()))?;
        connect(runtime, &self.target, &self.schema)
    }

    fn create_schema(&self) -> Result<()> {
        self.write_client(|conn| {
            let client = &conn.client;
            // Nodes starting together create the schema and the tables one
            // at a time (`CREATE SCHEMA IF NOT EXISTS` alone races: both
            // see none, and the second fails on the catalog's unique key).
            wait(client.execute("SELECT pg_advisory_xact_lock(7206316)", &[]))?;
            wait(client.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {}", self.schema)))?;
            wait(client.batch_execute(SCHEMA))?;
            let found: Option<i64> =
                wait(client.query_opt("SELECT value FROM meta WHERE key = 'schema_version'", &[]))?
                    .map(|row| row.get(0));
            match found.map(unbig) {
                None => {
                    wait(client.execute(
                        "INSERT INTO meta VALUES ('schema_version', $1)",
                        &[&big(PG_SCHEMA_VERSION)],
                    ))?;
                }
                Some(PG_SCHEMA_VERSION) => {}
                Some(found) if found < PG_SCHEMA_VERSION => {
                    // The tables above were created if missing: the upgrade.
                    refuse_live_nodes(client, found)?;
                    if found < 5 {
                        wait(client.batch_execute(UPGRADE_TO_5))?;
                    }
                    if found < 6 {
                        wait(client.batch_execute(UPGRADE_TO_6))?;
                    }
                    if found < 7 {
                        wait(client.batch_execute(UPGRADE_TO_7))?;
                    }
                    if found < 8 {
                        wait(client.batch_execute(UPGRADE_TO_8))?;
                    }
                    if found < 9 {
                        wait(client.batch_execute(UPGRADE_TO_9))?;
                    }
                    wait(client.execute(
                        "UPDATE meta SET value = $1 WHERE key = 'schema_version'",
                        &[&big(PG_SCHEMA_VERSION)],
                    ))?;
                }
                Some(found) => {
                    return Err(StoreError::Postgres(format!(
                        "the database has Sluice schema version {found}, newer than this \
                         build reads ({PG_SCHEMA_VERSION}): run the later Sluice"
                    )));
                }
            }
            wait(client.batch_execute(INDEXES))?;
            wait(client.batch_execute(VIEWS))?;
            seed_units(client)?;
            seed_cluster_key(client)?;
            fill_gate_units(client)
        })
    }

    /// Runs `f` inside one transaction on the writer connection (a new one
    /// if the last was lost: PostgreSQL restarted, say).
    fn write_client<R>(&self, f: impl FnOnce(&Conn) -> Result<R>) -> Result<R> {
        let mut client = self
            .writer
            .lock()
            .map_err(|_| StoreError::Postgres("the writer connection was poisoned".into()))?;
        if client.client.is_closed() {
            let fresh = Conn::new(self.connect()?);
            self.share_the_schema(&fresh)?;
            *client = fresh;
        }
        wait(client.client.batch_execute("BEGIN"))?;
        match f(&client) {
            Ok(value) => {
                wait(client.client.batch_execute("COMMIT"))?;
                Ok(value)
            }
            Err(e) => {
                let _ = wait(client.client.batch_execute("ROLLBACK"));
                Err(e)
            }
        }
    }

    /// A reader connection: one from the pool, or a new one.
    fn reader_client(&self) -> Result<Conn> {
        let pooled = self.readers.lock().ok().and_then(|mut pool| pool.pop());
        match pooled {
            Some(conn) if !conn.client.is_closed() => Ok(conn),
            _ => self.connect().map(Conn::new),
        }
    }
}

/// A new connection driven by `runtime`, its `search_path` set to `schema`.
fn connect(runtime: &tokio::runtime::Runtime, target: &Target, schema: &str) -> Result<Client> {
    let target = target.clone();
    let schema = schema.to_string();
    let connecting = runtime.spawn(async move {
        let client = target
            .connect(|e| tracing::warn!("PostgreSQL connection ended: {e}"))
            .await?;
        // No JIT compiling: it pays for long analytic queries, and a
        // statement of ours whose plan looks costly (on the statistics of a
        // table that was small) spent 200 ms compiling, inside a turn.
        client
            .batch_execute(&format!(
                "SET search_path TO {schema}; \
                 SET idle_in_transaction_session_timeout = '{IDLE_IN_TRANSACTION}'; \
                 SET jit = off"
            ))
            .await?;
        Ok::<_, tokio_postgres::Error>(client)
    });
    match futures_executor::block_on(connecting) {
        Ok(result) => result.map_err(pg),
        Err(e) => Err(StoreError::Postgres(format!("connecting: {e}"))),
    }
}

/// An upgrade to schema 6 changes who may write (the fence moves from the
/// single lease to the node), and one to 7 what a takeover may assume (a
/// node of the older build writes no slot mark), one to 8 where pending
/// entries and attempts live: nodes of the older build must be stopped
/// first, so none runs beside this one under the old rules.
fn refuse_live_nodes(client: &Client, found: u64) -> Result<()> {
    let live: i64 = wait(client.query_one(
        "SELECT count(*) FROM nodes WHERE heartbeat > now() - interval '10 seconds'",
        &[],
    ))?
    .get(0);
    if live == 0 {
        return Ok(());
    }
    Err(StoreError::Postgres(format!(
        "{live} node(s) of schema {found} beat in the last 10 s: stop every node before \
         upgrading the schema to {PG_SCHEMA_VERSION}, then start the new build"
    )))
}

/// The cluster's key, four random 64-bit words in `meta` (`cluster_key_0`
/// to `_3`), written once: the nodes' requests to each other
/// (`/v1/internal/…`) carry it, since they act for no API token. Whoever
/// can read the database could act as a node anyway.
fn seed_cluster_key(client: &Client) -> Result<()> {
    for word in 0..4 {
        let mut bytes = [0u8; 8];
        getrandom::fill(&mut bytes)
            .map_err(|e| StoreError::Postgres(format!("no randomness for the cluster key: {e}")))?;
        wait(client.execute(
            "INSERT INTO meta VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
            &[&format!("cluster_key_{word}"), &i64::from_le_bytes(bytes)],
        ))?;
    }
    Ok(())
}

/// One row per unit, vacant, and the number of units written down: a build
/// with another number would spread the gates differently, so it is refused.
fn seed_units(client: &Client) -> Result<()> {
    let units = i64::from(UNITS);
    let stored: i64 = wait(client.query_one(
        "INSERT INTO meta VALUES ('units', $1) ON CONFLICT (key) \
         DO UPDATE SET value = meta.value RETURNING value",
        &[&units],
    ))?
    .get(0);
    if stored != units {
        return Err(StoreError::Postgres(format!(
            "the database spreads the gates over {stored} units, this build over {units}"
        )));
    }
    wait(client.execute(
        "INSERT INTO units (unit) SELECT generate_series(0, $1 - 1) ON CONFLICT DO NOTHING",
        &[&(UNITS as i32)],
    ))?;
    Ok(())
}

/// Names the unit of every gate row that has none (written before schema 6).
fn fill_gate_units(client: &Client) -> Result<()> {
    let unnamed = wait(client.query("SELECT name FROM gates WHERE unit IS NULL", &[]))?;
    for row in unnamed {
        let name: &str = row.get(0);
        wait(client.execute(
            "UPDATE gates SET unit = $2 WHERE name = $1",
            &[&name, &unit_column(name)],
        ))?;
    }
    Ok(())
}

/// The `unit` column of the gate named `name`.
fn unit_column(name: &str) -> i32 {
    unit_of(name, UNITS) as i32
}

impl Backend for PgStore {
    fn transact(&self, f: &mut dyn FnMut(&mut dyn Writes) -> Result<()>) -> Result<()> {
        let fence = self.fence.lock().ok().and_then(|f| f.clone());
        self.write_client(|conn| {
            if let Some(fence) = &fence {
                check_fence(conn, fence)?;
            }
            let sweep =
                (self.transactions.fetch_add(1, Ordering::Relaxed)).is_multiple_of(SWEEP_EVERY);
            let mut tx = PgTx::new(conn, sweep);
            f(&mut tx)?;
            tx.commit()
        })
    }

    fn snapshot(&self) -> Result<Box<dyn Reads>> {
        let client = self.reader_client()?;
        wait(
            client
                .client
                .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SELECT 1"),
        )?;
        Ok(Box::new(PgReader {
            client: Some(client),
            pool: self.readers.clone(),
        }))
    }

    fn shares_writers(&self) -> bool {
        true
    }

    fn reserve_task_ids(&self, n: u64, floor: u64) -> Result<std::ops::Range<u64>> {
        // On a connection of its own, in autocommit: the row is locked for
        // the statement only. The first block starts above every task
        // already stored (ids an engine counted itself before this existed).
        const RESERVE: &str = "INSERT INTO meta (key, value)              VALUES ('next_task_id', greatest($2, (SELECT coalesce(max(id), 0) + 1 FROM tasks)) + $1)              ON CONFLICT (key) DO UPDATE SET value = greatest(meta.value, $2) + $1              RETURNING value - $1";
        let conn = self.reader_client()?;
        let start: i64 = wait(
            conn.client
                .query_one(&conn.statement(RESERVE)?, &[&big(n), &big(floor)]),
        )?
        .get(0);
        if let Ok(mut pool) = self.readers.lock()
            && pool.len() < POOL
        {
            pool.push(conn);
        }
        let start = unbig(start);
        Ok(start..start.saturating_add(n))
    }

    fn listen(&self, units: Units) -> Result<Option<Box<dyn Heard>>> {
        let listener = self.listener()?;
        listener.listen(units)?;
        Ok(Some(Box::new(listener)))
    }

    fn backup_to(&self, _path: &Path) -> Result<Copied> {
        Err(StoreError::Unsupported(
            "this server keeps its data in PostgreSQL: back it up with PostgreSQL's own \
             tools (pg_dump, or base backups with WAL archiving)"
                .into(),
        ))
    }
}

/// Whether `fence` still holds: the node's own fence is still at
/// `generation`. The row stays key-share-locked to the end of the
/// transaction, so a takeover (which locks it for update first) waits for
/// this commit: either the commit lands before the takeover, whose owner
/// then reads it, or it never lands. A heartbeat (a plain update of other
/// columns) does not wait for it.
fn check_fence(conn: &Conn, fence: &Fence) -> Result<()> {
    let Fence::Node { node, generation } = fence;
    let (sql, expected) = (
        "SELECT fence FROM nodes WHERE id = $1 FOR KEY SHARE",
        *generation,
    );
    let held: Option<i64> = one(conn, sql, &[node])?.map(|row| row.get(0));
    if held.map(unbig) == Some(expected) {
        Ok(())
    } else {
        Err(StoreError::Fenced { epoch: expected })
    }
}

fn rows(conn: &Conn, sql: &'static str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>> {
    wait(conn.client.query(&conn.statement(sql)?, params))
}

fn one(conn: &Conn, sql: &'static str, params: &[&(dyn ToSql + Sync)]) -> Result<Option<Row>> {
    wait(conn.client.query_opt(&conn.statement(sql)?, params))
}

/// A start kept apart (`starts`, schema 9) as stored.
pub(super) struct Kept {
    pub(super) n: u32,
    pub(super) attempt: Vec<u8>,
    pub(super) record: Vec<u8>,
}

/// The starts kept apart of some tasks, by task and the version of its row
/// each was made on: a start counts while its task's row is at that version.
pub(super) struct StartsOf(HashMap<(u64, i32), Kept>);

impl StartsOf {
    /// Takes the start of task `id` that counts against its row at version
    /// `v`, if there is one.
    pub(super) fn take(&mut self, id: u64, v: i32) -> Option<Kept> {
        self.0.remove(&(id, v))
    }

    /// Takes the start of task `id` that counts against its row at version
    /// `v`, if it is of attempt `n` (one read may ask for several attempts
    /// of a task: the start stays for the one it is of).
    pub(super) fn take_attempt(&mut self, id: u64, v: i32, n: u32) -> Option<Kept> {
        if self.0.get(&(id, v)).is_some_and(|k| k.n == n) {
            self.take(id, v)
        } else {
            None
        }
    }

    /// Task `id`'s record: its start's, if one counts against its row at
    /// version `v`, else the row's `stored` one.
    pub(super) fn task(&mut self, id: u64, v: i32, stored: &[u8]) -> Result<TaskRecord> {
        match self.take(id, v) {
            Some(start) => decode_task(&start.record),
            None => decode_task(stored),
        }
    }

    fn from_rows(rows: &[Row]) -> StartsOf {
        let kept = rows.iter().map(|row| {
            let key = (unbig(row.get(0)), row.get::<_, i32>(1));
            let kept = Kept {
                n: unint(row.get(2)),
                attempt: row.get(3),
                record: row.get(4),
            };
            (key, kept)
        });
        StartsOf(kept.collect())
    }
}

/// The starts kept apart of tasks `$1`, found through the index on
/// `starts.ids` (the ids in a hashed set, not `= ANY($1)`: a comparison
/// with each).
const STARTS_OF: &str = "SELECT e.id, e.v, e.n, e.attempt, e.record FROM starts s, \
    unnest(s.ids, s.vs, s.ns, s.attempts, s.records) AS e(id, v, n, attempt, record) \
    WHERE s.ids && $1 AND e.id IN (SELECT unnest($1::bigint[]))";

/// The starts kept apart of tasks `ids`.
pub(super) fn starts_of(conn: &Conn, ids: &[i64]) -> Result<StartsOf> {
    Ok(StartsOf::from_rows(&rows(conn, STARTS_OF, &[&ids])?))
}

/// The rows of `sql` and the starts kept apart of tasks `ids`, in one
/// round trip.
pub(super) fn rows_and_starts(
    conn: &Conn,
    sql: &'static str,
    params: &[&(dyn ToSql + Sync)],
    ids: &[i64],
) -> Result<(Vec<Row>, StartsOf)> {
    let (main, starts) = (conn.statement(sql)?, conn.statement(STARTS_OF)?);
    let (found, kept) = wait(futures_util::future::try_join(
        conn.client.query(&main, params),
        conn.client.query(&starts, &[&ids]),
    ))?;
    Ok((found, StartsOf::from_rows(&kept)))
}

fn records<T: serde::de::DeserializeOwned>(table: &'static str, rows: Vec<Row>) -> Result<Vec<T>> {
    rows.iter()
        .map(|row| decode(table, row.get::<_, &[u8]>(0)))
        .collect()
}

fn record<T: serde::de::DeserializeOwned>(
    table: &'static str,
    row: Option<Row>,
) -> Result<Option<T>> {
    row.map(|row| decode(table, row.get::<_, &[u8]>(0)))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transport(url: &str) -> Result<()> {
        check_transport(&url.parse().expect("a PostgreSQL URL"))
    }

    #[test]
    fn plaintext_leaves_this_machine_only_when_the_url_says_so() {
        for allowed in [
            "postgres://sluice@127.0.0.1:5432/sluice",
            "postgres://sluice@localhost/sluice",
            "postgres://sluice@[::1]:5432/sluice",
            "host=/var/run/postgresql user=sluice",
            "postgres://sluice@db.internal/sluice?sslmode=disable",
            // Over TLS, verified.
            "postgres://sluice@10.0.0.5/sluice?sslmode=require",
        ] {
            assert!(transport(allowed).is_ok(), "{allowed}");
        }
        for remote in [
            "postgres://sluice@db.internal/sluice",
            "host=localhost hostaddr=10.0.0.5 user=sluice",
        ] {
            let refused = transport(remote).expect_err(remote).to_string();
            assert!(refused.contains("sslmode=disable"), "{refused}");
        }
    }

    #[test]
    fn schema_names_are_plain_identifiers() {
        for good in ["sluice", "tenant_7", "_x"] {
            assert!(valid_schema(good), "{good}");
        }
        for bad in [
            "",
            "Sluice",
            "a-b",
            "x; DROP TABLE t",
            "7days",
            &"s".repeat(64),
        ] {
            assert!(!valid_schema(bad), "{bad}");
        }
    }
}
