//! The shell: one driver loop that owns the scheduler core and every write to the
//! store, and runs attempts around them.
//!
//! Each turn takes what arrived (API commands, attempt reports, a timer), feeds it
//! to the core inside one write transaction, executes the core's effects into that
//! transaction, commits once (group commit: concurrent creates share one fsync),
//! and only then answers the API and starts attempts. So an acknowledged create is
//! on disk, and an attempt never starts before its start is on disk: a crash can
//! repeat an attempt, never lose a task.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};

use crate::attempt::{Action, Plan, PluginCall, Report, Request};
use crate::clock;
use crate::core::lookahead::Lookahead;
use crate::core::units::{UNITS, Units, unit_of};
use crate::core::{
    Effect, End, FailReason, GateId, GateStatus, Input, Outcome, QueuedTask, Scheduler, TaskId,
    Timestamp, Tuning,
};
use crate::dispatch::{Dispatcher, guard};
use crate::model::{GateSpec, NewTask, ScheduleSpec, Target};
use crate::plugin::{self, PermitMessage};
use crate::store::{
    AdaptiveRecord, AttemptRecord, Backend, BodyRecord, CircuitRecord, Counts, CountsDelta,
    GateRecord, Heard, PendingEntry, PluginRecord, RecoveryRecord, ReplayRecord, RetryRecord,
    ScheduleRecord, StoreError, TaskRecord, TaskState, Writes,
};

mod boot;
mod commands;
mod effects;
mod handle;
mod kept;
mod leases;
pub mod plugins;
mod release;
mod runner;
mod schedules;
pub mod stats;
mod targets;
mod turn;
mod units;

pub use crate::store::Notice;
use commands::queued_of;
use handle::Reply;
pub use handle::{Command, Handle, UnitsOrder};
use kept::Kept;
pub use leases::Callback;
use release::Spacer;
pub use release::{Grant, Released};

/// Why the shell refused a command. The API maps each to its HTTP status.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ShellError {
    #[error("{what} not found")]
    NotFound { what: String },
    #[error("{0}")]
    Conflict(String),
    /// A `next` task that its source may not create (another gate's).
    #[error("{message}")]
    Forbidden { at: At, message: String },
    /// A `next` task beyond its chain's budget.
    #[error("{message}")]
    Exhausted { at: At, message: String },
    /// A task names a gate that does not exist.
    #[error("gate {gate:?} does not exist")]
    NoGate { at: At, gate: String },
    /// A task names a plugin version that is not in the registry.
    #[error("plugin {key} is not in the registry")]
    NoPlugin { at: At, key: String },
    #[error("{message}")]
    Invalid { at: Option<At>, message: String },
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The gate's unit is not this engine's (any more, or yet): it is being
    /// handed over. A 503 to retry.
    #[error("gate {gate:?} is moving to another node")]
    Moved { gate: String },
}

/// Where in a command the shell found a fault: a field, of one of the
/// command's tasks (`item`, its index) or of the whole (`item: None`). The
/// shell knows nothing of the wire, so the API spells it for its route
/// (`gate`, `tasks[2].gate`, `task.gate`); history spells `next[i].field`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct At {
    pub item: Option<usize>,
    pub field: &'static str,
}

impl At {
    pub fn item(index: usize, field: &'static str) -> At {
        At {
            item: Some(index),
            field,
        }
    }

    pub fn whole(field: &'static str) -> At {
        At { item: None, field }
    }

    /// `list[item].field`, or `field` for the whole.
    pub fn in_list(self, list: &str) -> String {
        match self.item {
            Some(i) => format!("{list}[{i}].{}", self.field),
            None => self.field.to_string(),
        }
    }
}

impl ShellError {
    /// Where the fault is, if it is in one field.
    pub fn at(&self) -> Option<At> {
        match self {
            ShellError::Forbidden { at, .. }
            | ShellError::Exhausted { at, .. }
            | ShellError::NoGate { at, .. }
            | ShellError::NoPlugin { at, .. } => Some(*at),
            ShellError::Invalid { at, .. } => *at,
            ShellError::NotFound { .. }
            | ShellError::Conflict(_)
            | ShellError::ShuttingDown
            | ShellError::Moved { .. } => None,
        }
    }

    /// The message with the field at fault in front, its tasks being `list`:
    /// history text for a plugin's `next` tasks.
    pub fn in_list(&self, list: &str) -> String {
        match self.at() {
            Some(at) => format!("{}: {self}", at.in_list(list)),
            None => self.to_string(),
        }
    }
}

/// A created (or replayed) task.
#[derive(Debug, Clone)]
pub struct Created {
    pub id: TaskId,
    /// Its record, for a lone task (the API shows it); a batch's records
    /// stay in the turn, uncopied, and its answer is the ids.
    pub task: Option<TaskRecord>,
    /// True when an idempotency key matched an existing task.
    pub replayed: bool,
}

#[derive(Debug, Clone)]
pub struct GateLive {
    pub record: GateRecord,
    pub view: GateStatus,
    /// Its busiest keys (in a view of one gate; empty in a listing).
    pub keys: Vec<crate::core::KeyStatus>,
    pub counts: Counts,
    /// The last ten minutes in 10 s steps, oldest first.
    pub series: Vec<stats::Bucket>,
}

#[derive(Clone, Debug)]
pub struct Options {
    pub tuning: Tuning,
    /// How long a shutdown waits for attempts in flight.
    pub grace: Duration,
    /// Server-wide Standard Webhooks secrets.
    pub signing_secrets: Vec<String>,
    /// When not empty, the only hosts outgoing requests may reach.
    pub outbound_hosts: Vec<String>,
    /// Finished tasks and their history are kept this long.
    pub retention: Duration,
    /// Most tasks one root's `next` chains may create.
    pub max_descendants: u32,
    /// Runs plugin tasks; without one they fail as denied.
    pub plugins: Option<Arc<plugin::Host>>,
    /// Reads what a plugin's success asks to create next.
    pub next_reader: NextReader,
    /// In a cluster: until when this node may dispatch (its lease on the
    /// gates). Nothing leaves after it, and the driver stops there.
    pub deadline: Option<Arc<clock::Deadline>>,
    /// How the last dispatcher stopped.
    pub start: Start,
    /// The units whose gates this engine runs at its start: every one
    /// alone, those the node holds in a cluster (it adopts and drops more
    /// as they move, `UnitsOrder`).
    pub units: Units,
}

/// How the engine's last run ended, which decides what becomes of the
/// attempts it left in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Start {
    /// This process ran the gates before and stopped (or died): its
    /// attempts died with it and are retried at once.
    #[default]
    Restart,
    /// Another node ran the gates and lost them (cluster): its attempts may
    /// still be at their endpoints, so each keeps its slot until its
    /// timeout; but one whose slot time is after `unsent_after` (the last
    /// owner's slot mark, `cluster::Acquired`) never left, and goes back
    /// to the queue at once as if it had never started.
    Takeover { unsent_after: Option<Timestamp> },
}

impl Start {
    /// A takeover that knows nothing of what the last owner sent.
    pub const TAKEOVER: Start = Start::Takeover { unsent_after: None };
}

/// Why an attempt of a node that lost the gates before its slot time ended.
pub(super) const NEVER_SENT: &str = "never sent: the node that started this attempt lost the gates before its slot time; queued again";

/// Why an attempt of a node that lost the gates ended.
pub(super) const HANDED_OVER: &str =
    "the node running this attempt lost the gates; held until its timeout, then retried";

impl std::fmt::Debug for plugin::Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("plugin::Host").finish_non_exhaustive()
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            tuning: Tuning::default(),
            grace: Duration::from_secs(10),
            signing_secrets: Vec::new(),
            outbound_hosts: Vec::new(),
            retention: DEFAULT_RETENTION,
            max_descendants: DEFAULT_MAX_DESCENDANTS,
            plugins: None,
            next_reader: no_next_reader,
            deadline: None,
            start: Start::Restart,
            units: Units::ALL,
        }
    }
}

pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3_600);

/// Default of `max_descendants`.
pub const DEFAULT_MAX_DESCENDANTS: u32 = 1_000;

/// Reads a plugin's next tasks (`POST /v1/tasks` JSON texts) into validated
/// tasks, or says what is wrong with them. The API's wire format lives above
/// the shell, so the server hands its reader in (`api::wire::parse_next`).
pub type NextReader = fn(&[String]) -> Result<Vec<NewTask>, String>;

fn no_next_reader(_: &[String]) -> Result<Vec<NewTask>, String> {
    Err("this server reads no next tasks".into())
}

/// Generations a `next` chain may have below its root.
pub const MAX_DEPTH: u32 = 10;

/// Finished tasks removed per retention commit: small, so dispatch turns
/// interleave with a large clean-up instead of waiting for it.
const PRUNE_BATCH: usize = 1_000;

/// The release pacer runs this fraction of the gate's rate.
const PACER_MARGIN: f64 = 0.997;

/// How far a release's arrival at the endpoint may lag behind its neighbours'
/// (a connection opened for it, a busy core) without a window there going
/// over the gate's bound: the spacer keeps this much of the burst in hand.
const ARRIVAL_JITTER: Duration = Duration::from_millis(8);

/// Task ids reserved at a time where several engines write one store, and
/// how long a block is used: ids sort by creation across nodes to within it.
const ID_BLOCK: u64 = 1_024;
const ID_BLOCK_AGE_MS: u64 = 250;

/// Most commands and reports taken into one turn, so a turn stays short.
const TURN_COMMANDS: usize = 512;
const TURN_REPORTS: usize = 8_192;

/// Starts the driver on its own thread. It stops when `shutdown` turns true, after
/// attempts in flight end or the grace period runs out. The returned join handle
/// yields once everything is committed.
pub fn spawn(
    store: Arc<dyn Backend>,
    options: Options,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<(Handle, std::thread::JoinHandle<Result<(), StoreError>>)> {
    let (handle, link) = Handle::linked();
    let driver = spawn_linked(store, options, shutdown, &link)?;
    Ok((handle, driver))
}

/// The receiving end of a `Handle`: one driver after another may serve it
/// (a cluster node starts a new one when the last was fenced or stopped on
/// an error, and the API keeps its handle throughout).
#[derive(Clone)]
pub struct Link {
    commands: Arc<tokio::sync::Mutex<mpsc::Receiver<Command>>>,
    ready: Arc<AtomicBool>,
    metrics: stats::Metrics,
}

impl Link {
    /// Refuses the commands waiting for a driver that will not come (this
    /// node lost the gates): each caller gets "shutting down" (a 503 to
    /// retry) instead of waiting for ever.
    pub fn refuse_waiting(&self) {
        if let Ok(mut commands) = self.commands.try_lock() {
            while let Ok(command) = commands.try_recv() {
                drop(command);
            }
        }
    }
}

/// `spawn` for a handle made before: the driver serves `link` until it stops.
pub fn spawn_linked(
    store: Arc<dyn Backend>,
    options: Options,
    mut shutdown: watch::Receiver<bool>,
    link: &Link,
) -> std::io::Result<std::thread::JoinHandle<Result<(), StoreError>>> {
    let Link {
        commands,
        ready,
        metrics,
    } = link.clone();
    let dispatcher =
        Dispatcher::new(options.outbound_hosts.clone()).map_err(std::io::Error::other)?;
    let runtime = tokio::runtime::Handle::current();
    let (booted_tx, booted_rx) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("sluice-driver".into())
        .spawn(move || {
            let local = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .map_err(|e| StoreError::Corrupt {
                    table: "-",
                    detail: format!("driver runtime: {e}"),
                })?;
            local.block_on(async move {
                let mut commands_rx = commands.lock().await;
                let (reports_tx, reports_rx) = mpsc::unbounded_channel();
                let now = clock::now();
                let seed = now.as_ms() ^ u64::from(std::process::id()).rotate_left(32);
                // Listening first: a create another node commits after
                // this is heard of, one before it is read by the boot.
                let heard = if options.units.is_empty() {
                    Ok(None)
                } else {
                    store.listen(options.units)
                };
                let booted = heard.and_then(|heard| {
                    let mut engine = Engine::empty(store, options.tuning, seed)?;
                    engine.adopt(now, options.units, options.start)?;
                    tracing::info!(gates = engine.gates.len(), "scheduler ready");
                    Ok((engine, heard))
                });
                let (mut engine, heard) = match booted {
                    Ok(d) => d,
                    Err(e) => {
                        let _ = booted_tx.send(Err(e.to_string()));
                        return Err(e);
                    }
                };
                engine.set_default_secrets(options.signing_secrets.clone());
                engine.set_max_descendants(options.max_descendants);
                engine.set_next_reader(options.next_reader);
                engine.metrics = metrics;
                ready.store(true, Ordering::Release);
                let _ = booted_tx.send(Ok(()));
                let (permits_tx, permits_rx) = mpsc::unbounded_channel();
                let mut runner = Runner {
                    engine,
                    dispatcher,
                    runtime,
                    reports: reports_tx,
                    grace: options.grace,
                    retention: options.retention,
                    plugins: options.plugins.clone(),
                    asks: HashMap::new(),
                    spacers: HashMap::new(),
                    permits: permits_tx,
                    ready: ready.clone(),
                    deadline: options.deadline.clone(),
                    heard,
                    drops: Arc::new(
                        [const { std::sync::atomic::AtomicU64::new(0) }; UNITS as usize],
                    ),
                    pauses: Arc::default(),
                };
                let result = runner
                    .run(&mut commands_rx, reports_rx, permits_rx, &mut shutdown)
                    .await;
                ready.store(false, Ordering::Release);
                result
            })
        })?;
    // Answer requests only once recovery from the last stop is done.
    match booted_rx.recv() {
        Ok(Ok(())) => Ok(thread),
        Ok(Err(e)) => Err(std::io::Error::other(e)),
        Err(_) => Err(std::io::Error::other(
            "the scheduler stopped while starting",
        )),
    }
}

/// The async loop around the engine: channels, timers, releasing attempts.
struct Runner {
    engine: Engine,
    /// `/readyz`: false from the moment a stop begins, while the API still
    /// answers, so a load balancer stops sending before the listener closes.
    ready: Arc<AtomicBool>,
    dispatcher: Dispatcher,
    runtime: tokio::runtime::Handle,
    reports: mpsc::UnboundedSender<Report>,
    grace: Duration,
    retention: Duration,
    plugins: Option<Arc<plugin::Host>>,
    /// Plugin requests waiting for their gate, by task: (ask, attempt, reply).
    asks: HashMap<TaskId, Vec<(u64, u32, tokio::sync::oneshot::Sender<()>)>>,
    /// Each gate's last check of its releases' spacing, when they wake.
    spacers: HashMap<u32, Arc<Spacer>>,
    permits: mpsc::UnboundedSender<PermitMessage>,
    /// In a cluster, the lease's deadline: checked right before anything is
    /// sent, and the loop ends when it passes.
    deadline: Option<Arc<clock::Deadline>>,
    /// Where other nodes' creates into this engine's gates are heard of
    /// (a store with several writers; `None` with redb, or while lost).
    heard: Option<Box<dyn Heard>>,
    /// How often each unit was dropped: what was admitted before a drop
    /// never leaves after it (`Runner::may_leave`).
    drops: Arc<[std::sync::atomic::AtomicU64; UNITS as usize]>,
    /// The gates paused since each attempt was admitted: one admitted
    /// ahead of its slot time does not leave after its gate's pause.
    pauses: Arc<Pauses>,
}

/// Pauses of gates, numbered in order, for the releases waiting on their
/// slot times to check without a lock while no gate was paused.
#[derive(Default)]
struct Pauses {
    last: AtomicU64,
    of: std::sync::Mutex<HashMap<u32, u64>>,
}

impl Pauses {
    fn pause(&self, gate: u32) {
        let n = self.last.fetch_add(1, Ordering::AcqRel) + 1;
        self.of
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(gate, n);
    }

    /// The number of the last pause so far.
    fn seen(&self) -> u64 {
        self.last.load(Ordering::Acquire)
    }

    /// Whether `gate` was paused after pause number `seen`.
    fn since(&self, gate: u32, seen: u64) -> bool {
        self.seen() != seen
            && (self.of.lock())
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(&gate)
                .is_some_and(|&n| n > seen)
    }
}

/// The shell's logic without its I/O loop: it owns the core and every write to
/// the store. The server drives it from `Runner`; the simulation tests drive it
/// directly, on a simulated clock.
pub struct Engine {
    store: Arc<dyn Backend>,
    core: Scheduler,
    gates: BTreeMap<String, GateRecord>,
    gate_names: HashMap<u32, String>,
    counts: HashMap<u32, Counts>,
    last_task_id: u64,
    shutting_down: bool,
    schedules: BTreeMap<String, ScheduleRecord>,
    /// Gates whose config changed since the runner last asked.
    /// The server-wide signing secrets, for gates without their own.
    default_secrets: Vec<String>,
    /// Recent attempts and metrics per gate.
    stats: HashMap<u32, stats::GateStats>,
    metrics: stats::Metrics,
    /// The plugin registry's records, by `name@version`.
    plugins: BTreeMap<String, PluginRecord>,
    /// Most tasks one root's `next` chains may create.
    max_descendants: u32,
    next_reader: NextReader,
    /// Per gate, the release pacer (see `release.rs`).
    pacers: HashMap<u32, release::Pacer>,
    /// How far ahead the gates admit, grown after slow turns; when the
    /// turn whose commit `release` waits for began, and when the last turn
    /// did.
    lookahead: Lookahead,
    turn_began: Option<Timestamp>,
    last_turn: Option<Timestamp>,
    /// Plugin requests waiting for their gate, by task: (attempt, ask).
    waiting: HashMap<TaskId, Vec<(u32, u64)>>,
    /// How long the last turn took before its commit (for the slow-turn
    /// warning: the rest was the commit).
    last_work: Duration,
    /// The units whose gates this engine runs (see `units.rs`), and those
    /// of them it takes commands for: a unit being handed over is run
    /// (its attempts finish) but takes no commands.
    loaded: Units,
    held: Units,
    /// Task ids from the store's blocks, when several engines write it
    /// (`next_task_id`), and when the block was taken (ms).
    shares_writers: bool,
    ids: std::ops::Range<u64>,
    ids_at: u64,
    /// Committed creates into other engines' gates, not yet handed out.
    notices: Vec<Notice>,
    /// Gates whose counters other engines changed (their creates): read
    /// again at the next turn.
    recount: HashSet<u32>,
    /// Completion tokens for the attempts it starts.
    tokens: leases::Tokens,
    /// Records of its unfinished webhook tasks, as committed (`kept.rs`).
    kept: Kept,
}

/// One turn's view of the store: task records touched in this turn are cached so
/// each is decoded and encoded once per commit.
struct Turn<'a> {
    tx: &'a mut dyn Writes,
    now: Timestamp,
    /// Records taken for change (`task`), written back at the turn's end.
    tasks: HashMap<u64, TaskRecord>,
    /// Records read ahead or only looked at (`prefetch`, `peek`: a load's),
    /// written back only if taken for change: a load of a thousand pending
    /// tasks writes none of them.
    clean: HashMap<u64, TaskRecord>,
    /// What this turn changed in each gate's counters.
    counted: HashMap<u32, CountsDelta>,
    plans: Vec<Plan>,
    /// Occurrences of schedules that ended in this turn: (task, final state, schedule).
    ended: Vec<(u64, TaskState, String)>,
    /// What this turn changed in each plugin's count of unfinished tasks.
    plugin_refs: HashMap<String, i64>,
    /// Tasks created into gates another engine runs (`units::Notice`).
    notices: Vec<Notice>,
    /// Tasks about to start whose pending entries were taken out ahead, in
    /// one go with the starts queued beside them: whether each was there.
    unpended: HashMap<u64, bool>,
    /// Attempt records by task and number, as this turn read ahead
    /// (`prefetch_attempts`) or last wrote them: every write of an attempt
    /// in a turn goes through [`Turn::put_attempt`].
    attempts: HashMap<(u64, u32), AttemptRecord>,
    /// The engine's kept records, lent to this turn (`kept.rs`): a record
    /// taken from here is as committed; `flush` puts back the unfinished ones.
    kept: Kept,
}

fn missing_task(id: u64) -> StoreError {
    StoreError::Corrupt {
        table: "tasks",
        detail: format!("task {} referenced but missing", TaskId(id)),
    }
}

impl<'a> Turn<'a> {
    fn new(tx: &'a mut dyn Writes, now: Timestamp, kept: Kept) -> Turn<'a> {
        Turn {
            tx,
            now,
            tasks: HashMap::new(),
            clean: HashMap::new(),
            counted: HashMap::new(),
            plans: Vec::new(),
            ended: Vec::new(),
            plugin_refs: HashMap::new(),
            notices: Vec::new(),
            unpended: HashMap::new(),
            attempts: HashMap::new(),
            kept,
        }
    }

    /// Attempt `n` of task `id`, as this turn last read or wrote it.
    fn attempt(&mut self, id: u64, n: u32) -> Result<Option<AttemptRecord>, StoreError> {
        if let Some(record) = self.attempts.get(&(id, n)) {
            return Ok(Some(record.clone()));
        }
        let found = self.tx.attempt(id, n)?;
        if let Some(record) = &found {
            self.attempts.insert((id, n), record.clone());
        }
        Ok(found)
    }

    fn put_attempt(&mut self, id: u64, record: &AttemptRecord) -> Result<(), StoreError> {
        self.tx.put_attempt(id, record)?;
        self.attempts.insert((id, record.attempt), record.clone());
        Ok(())
    }

    /// Reads the attempts `(task, n)` of `wanted` not yet in this turn's
    /// cache, at once: a turn's reports each read their attempt, which on
    /// PostgreSQL would be a round trip each.
    fn prefetch_attempts(
        &mut self,
        wanted: impl IntoIterator<Item = (u64, u32)>,
    ) -> Result<(), StoreError> {
        let mut missing: Vec<(u64, u32)> = (wanted.into_iter())
            .filter(|key| !self.attempts.contains_key(key))
            .collect();
        missing.sort_unstable();
        missing.dedup();
        if missing.len() > 1 {
            for (id, record) in self.tx.attempts_of(&missing)? {
                self.attempts.insert((id, record.attempt), record);
            }
        }
        Ok(())
    }

    fn task(&mut self, id: u64) -> Result<Option<&mut TaskRecord>, StoreError> {
        if !self.tasks.contains_key(&id) {
            let record = match self.clean.remove(&id).or_else(|| self.kept.take(id)) {
                Some(record) => record,
                None => match self.tx.task(id)? {
                    Some(record) => record,
                    None => return Ok(None),
                },
            };
            self.tasks.insert(id, record);
        }
        Ok(self.tasks.get_mut(&id))
    }

    /// Whether this turn holds task `id`'s record already.
    fn holds(&self, id: u64) -> bool {
        self.tasks.contains_key(&id) || self.clean.contains_key(&id) || self.kept.contains(id)
    }

    /// A record to look at, not to change: not written back for this.
    fn peek(&mut self, id: u64) -> Result<&TaskRecord, StoreError> {
        if let Some(record) = self.tasks.get(&id) {
            return Ok(record);
        }
        if !self.clean.contains_key(&id) {
            let record = match self.kept.take(id) {
                Some(record) => record,
                None => self.tx.task(id)?.ok_or_else(|| missing_task(id))?,
            };
            self.clean.insert(id, record);
        }
        self.clean.get(&id).ok_or_else(|| missing_task(id))
    }

    /// Task `id`'s record to look at, if it exists: as this turn changed it
    /// so far, or read and held as only looked at (not written back for
    /// this).
    fn look(&mut self, id: u64) -> Result<Option<&TaskRecord>, StoreError> {
        if !self.holds(id) {
            let Some(record) = self.tx.task(id)? else {
                return Ok(None);
            };
            self.clean.insert(id, record);
        }
        self.peek(id).map(Some)
    }

    /// Reads the records of `ids` not yet in this turn's cache, at once.
    fn prefetch(&mut self, ids: impl IntoIterator<Item = u64>) -> Result<(), StoreError> {
        let mut missing: Vec<u64> = ids.into_iter().filter(|&id| !self.holds(id)).collect();
        missing.sort_unstable();
        missing.dedup();
        if missing.len() > 1 {
            for record in self.tx.tasks(&missing)? {
                self.clean.insert(record.id, record);
            }
        }
        Ok(())
    }

    fn must_task(&mut self, id: u64) -> Result<&mut TaskRecord, StoreError> {
        self.task(id)?.ok_or_else(|| missing_task(id))
    }

    /// Writes back the records taken for change; keeps the unfinished ones,
    /// as now written, for later turns (with those only looked at).
    fn flush(&mut self) -> Result<(), StoreError> {
        for (_, task) in self.tasks.drain() {
            self.tx.put_task(&task)?;
            self.kept.put(task);
        }
        for (_, task) in self.clean.drain() {
            self.kept.put(task);
        }
        Ok(())
    }
}
