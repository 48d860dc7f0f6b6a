//! The shell: one driver loop that owns the scheduler core and every write to the
//! store, and runs attempts around them.
//!
//! Each turn takes what arrived (API commands, attempt reports, a timer), feeds it
//! to the core inside one write transaction, executes the core's effects into that
//! transaction, commits once (group commit: concurrent creates share one fsync),
//! and only then answers the API and starts attempts. So an acknowledged create is
//! on disk, and an attempt never starts before its start is on disk: a crash can
//! repeat an attempt, never lose a task.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};

use crate::clock;
use crate::core::{
    Effect, End, FailReason, GateId, GateView, Input, Outcome, QueuedTask, Scheduler, TaskId,
    Timestamp, Tuning,
};
use crate::dispatch::{self, Dispatcher, Plan, Report, guard};
use crate::model::{GateSpec, NewTask, ScheduleSpec};
use crate::plugin::{self, PermitMessage};
use crate::store::{
    AttemptRecord, BodyRecord, CircuitRecord, Counts, GateRecord, PluginRecord, RecoveryRecord,
    RetryRecord, ScheduleRecord, Store, StoreError, Target, TaskRecord, TaskState, Tx,
};

mod leases;
pub mod plugins;
mod schedules;
pub mod stats;

pub use leases::Callback;

/// Why the shell refused a command. The API maps each to its HTTP status.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ShellError {
    #[error("{what} not found")]
    NotFound { what: String },
    #[error("{0}")]
    Conflict(String),
    /// A `next` task that its source may not create (another gate's).
    #[error("{message}")]
    Forbidden { field: String, message: String },
    /// A `next` task beyond its chain's budget.
    #[error("{message}")]
    Exhausted { field: String, message: String },
    #[error("{message}")]
    Invalid {
        field: Option<String>,
        message: String,
    },
    #[error("the server is shutting down")]
    ShuttingDown,
}

impl ShellError {
    /// The message with the field at fault in front, for history text.
    pub fn with_field(&self) -> String {
        match self {
            ShellError::Invalid {
                field: Some(field),
                message,
            }
            | ShellError::Forbidden { field, message }
            | ShellError::Exhausted { field, message } => format!("{field}: {message}"),
            other => other.to_string(),
        }
    }
}

type Reply<T> = oneshot::Sender<Result<T, ShellError>>;

/// A created (or replayed) task.
#[derive(Debug, Clone)]
pub struct Created {
    pub task: TaskRecord,
    /// True when an idempotency key matched an existing task.
    pub replayed: bool,
}

#[derive(Debug, Clone)]
pub struct GateLive {
    pub record: GateRecord,
    pub view: GateView,
    pub counts: Counts,
    /// The last ten minutes in 10 s steps, oldest first.
    pub series: Vec<stats::Bucket>,
}

pub enum Command {
    PutGate {
        name: String,
        spec: Box<GateSpec>,
        reply: Reply<(GateRecord, bool)>,
    },
    DeleteGate {
        name: String,
        force: bool,
        reply: Reply<()>,
    },
    SetPaused {
        name: String,
        paused: bool,
        reply: Reply<GateRecord>,
    },
    /// All or none.
    CreateTasks {
        tasks: Vec<NewTask>,
        reply: Reply<Vec<Created>>,
    },
    CancelTask {
        id: TaskId,
        reply: Reply<TaskRecord>,
    },
    RetryTask {
        id: TaskId,
        reply: Reply<TaskRecord>,
    },
    Live {
        gate: Option<String>,
        reply: oneshot::Sender<Vec<GateLive>>,
    },
    PutSchedule {
        name: String,
        spec: Box<ScheduleSpec>,
        reply: Reply<(ScheduleRecord, bool)>,
    },
    /// A report on long-running work: complete, fail or heartbeat.
    Report {
        id: TaskId,
        callback: Box<Callback>,
        reply: Reply<TaskRecord>,
    },
    DeleteSchedule {
        name: String,
        reply: Reply<()>,
    },
    SetSchedulePaused {
        name: String,
        paused: bool,
        reply: Reply<ScheduleRecord>,
    },
    /// Stores an audited, compiled upload.
    PutPlugin {
        upload: Box<plugins::Upload>,
        reply: Reply<(PluginRecord, bool)>,
    },
    DeletePlugin {
        key: String,
        reply: Reply<()>,
    },
}

/// How the API talks to the driver.
#[derive(Clone)]
pub struct Handle {
    commands: mpsc::Sender<Command>,
    ready: Arc<AtomicBool>,
    metrics: stats::Metrics,
}

impl Handle {
    /// The Prometheus metrics the driver keeps (dispatches, lateness).
    pub fn metrics(&self) -> &stats::Metrics {
        &self.metrics
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, ShellError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| ShellError::ShuttingDown)?;
        rx.await.map_err(|_| ShellError::ShuttingDown)?
    }

    pub async fn put_gate(
        &self,
        name: String,
        spec: GateSpec,
    ) -> Result<(GateRecord, bool), ShellError> {
        self.ask(|reply| Command::PutGate {
            name,
            spec: Box::new(spec),
            reply,
        })
        .await
    }

    pub async fn delete_gate(&self, name: String, force: bool) -> Result<(), ShellError> {
        self.ask(|reply| Command::DeleteGate { name, force, reply })
            .await
    }

    pub async fn set_paused(&self, name: String, paused: bool) -> Result<GateRecord, ShellError> {
        self.ask(|reply| Command::SetPaused {
            name,
            paused,
            reply,
        })
        .await
    }

    pub async fn create_tasks(&self, tasks: Vec<NewTask>) -> Result<Vec<Created>, ShellError> {
        self.ask(|reply| Command::CreateTasks { tasks, reply })
            .await
    }

    pub async fn cancel_task(&self, id: TaskId) -> Result<TaskRecord, ShellError> {
        self.ask(|reply| Command::CancelTask { id, reply }).await
    }

    pub async fn retry_task(&self, id: TaskId) -> Result<TaskRecord, ShellError> {
        self.ask(|reply| Command::RetryTask { id, reply }).await
    }

    pub async fn put_schedule(
        &self,
        name: String,
        spec: ScheduleSpec,
    ) -> Result<(ScheduleRecord, bool), ShellError> {
        self.ask(|reply| Command::PutSchedule {
            name,
            spec: Box::new(spec),
            reply,
        })
        .await
    }

    pub async fn report(&self, id: TaskId, callback: Callback) -> Result<TaskRecord, ShellError> {
        self.ask(|reply| Command::Report {
            id,
            callback: Box::new(callback),
            reply,
        })
        .await
    }

    pub async fn delete_schedule(&self, name: String) -> Result<(), ShellError> {
        self.ask(|reply| Command::DeleteSchedule { name, reply })
            .await
    }

    pub async fn set_schedule_paused(
        &self,
        name: String,
        paused: bool,
    ) -> Result<ScheduleRecord, ShellError> {
        self.ask(|reply| Command::SetSchedulePaused {
            name,
            paused,
            reply,
        })
        .await
    }

    /// Stores an upload; `true` when it is new, `false` when the same bytes
    /// were already there under that version.
    pub async fn put_plugin(
        &self,
        upload: plugins::Upload,
    ) -> Result<(PluginRecord, bool), ShellError> {
        self.ask(|reply| Command::PutPlugin {
            upload: Box::new(upload),
            reply,
        })
        .await
    }

    pub async fn delete_plugin(&self, key: String) -> Result<(), ShellError> {
        self.ask(|reply| Command::DeletePlugin { key, reply }).await
    }

    pub async fn live(&self, gate: Option<String>) -> Result<Vec<GateLive>, ShellError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Live { gate, reply: tx })
            .await
            .map_err(|_| ShellError::ShuttingDown)?;
        rx.await.map_err(|_| ShellError::ShuttingDown)
    }
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
}

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
            max_descendants: crate::config::DEFAULT_MAX_DESCENDANTS,
            plugins: None,
        }
    }
}

pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3_600);

/// Generations a `next` chain may have below its root.
pub const MAX_DEPTH: u32 = 10;

/// Finished tasks removed per retention commit: small, so dispatch turns
/// interleave with a large clean-up instead of waiting for it.
const PRUNE_BATCH: usize = 1_000;

/// The release pacer runs this fraction of the gate's rate.
const PACER_MARGIN: f64 = 0.997;

/// Most commands and reports taken into one turn, so a turn stays short.
const TURN_COMMANDS: usize = 512;
const TURN_REPORTS: usize = 8_192;

/// Starts the driver on its own thread. It stops when `shutdown` turns true, after
/// attempts in flight end or the grace period runs out. The returned join handle
/// yields once everything is committed.
pub fn spawn(
    store: Arc<Store>,
    options: Options,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<(Handle, std::thread::JoinHandle<Result<(), StoreError>>)> {
    let (commands_tx, commands_rx) = mpsc::channel(4_096);
    let ready = Arc::new(AtomicBool::new(false));
    let metrics = stats::Metrics::default();
    let handle = Handle {
        commands: commands_tx,
        ready: ready.clone(),
        metrics: metrics.clone(),
    };
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
                let (reports_tx, reports_rx) = mpsc::unbounded_channel();
                let now = clock::now();
                let seed = now.as_ms() ^ u64::from(std::process::id()).rotate_left(32);
                let booted = Engine::boot(store, options.tuning, now, seed);
                let mut engine = match booted {
                    Ok(d) => d,
                    Err(e) => {
                        let _ = booted_tx.send(Err(e.to_string()));
                        return Err(e);
                    }
                };
                engine.set_default_secrets(options.signing_secrets.clone());
                engine.set_max_descendants(options.max_descendants);
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
                    pacers: HashMap::new(),
                    retention: options.retention,
                    plugins: options.plugins.clone(),
                    asks: HashMap::new(),
                    permits: permits_tx,
                };
                let result = runner
                    .run(commands_rx, reports_rx, permits_rx, &mut shutdown)
                    .await;
                ready.store(false, Ordering::Release);
                result
            })
        })?;
    // Answer requests only once recovery from the last stop is done.
    match booted_rx.recv() {
        Ok(Ok(())) => Ok((handle, thread)),
        Ok(Err(e)) => Err(std::io::Error::other(e)),
        Err(_) => Err(std::io::Error::other(
            "the scheduler stopped while starting",
        )),
    }
}

/// The async loop around the engine: channels, timers, releasing attempts.
struct Runner {
    engine: Engine,
    dispatcher: Dispatcher,
    runtime: tokio::runtime::Handle,
    reports: mpsc::UnboundedSender<Report>,
    grace: Duration,
    /// Per gate, release tokens (negative: releases reserved ahead) and when
    /// they were counted; see `release_at`.
    pacers: HashMap<u32, (f64, std::time::Instant)>,
    retention: Duration,
    plugins: Option<Arc<plugin::Host>>,
    /// Plugin requests waiting for their gate, by task: (ask, attempt, reply).
    asks: HashMap<TaskId, Vec<(u64, u32, tokio::sync::oneshot::Sender<()>)>>,
    permits: mpsc::UnboundedSender<PermitMessage>,
}

/// The shell's logic without its I/O loop: it owns the core and every write to
/// the store. The server drives it from `Runner`; the simulation tests drive it
/// directly, on a simulated clock.
pub struct Engine {
    store: Arc<Store>,
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
}

/// One turn's view of the store: task records touched in this turn are cached so
/// each is decoded and encoded once per commit.
struct Turn<'a, 't> {
    tx: &'a mut Tx<'t>,
    now: Timestamp,
    tasks: HashMap<u64, TaskRecord>,
    dirty_counts: Vec<u32>,
    plans: Vec<Plan>,
    /// Occurrences of schedules that ended in this turn: (task, final state, schedule).
    ended: Vec<(u64, TaskState, String)>,
    /// Plugin records whose reference counts changed in this turn.
    dirty_plugins: Vec<String>,
}

impl Turn<'_, '_> {
    fn task(&mut self, id: u64) -> Result<Option<&mut TaskRecord>, StoreError> {
        if !self.tasks.contains_key(&id) {
            match self.tx.task(id)? {
                Some(record) => {
                    self.tasks.insert(id, record);
                }
                None => return Ok(None),
            }
        }
        Ok(self.tasks.get_mut(&id))
    }

    fn must_task(&mut self, id: u64) -> Result<&mut TaskRecord, StoreError> {
        self.task(id)?.ok_or_else(|| StoreError::Corrupt {
            table: "tasks",
            detail: format!("task {} referenced but missing", TaskId(id)),
        })
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        for task in self.tasks.values() {
            self.tx.put_task(task)?;
        }
        self.tasks.clear();
        Ok(())
    }
}

impl Engine {
    /// Loads what is on disk and recovers attempts the last run left in flight.
    /// `seed` feeds the retry jitter.
    pub fn boot(
        store: Arc<Store>,
        tuning: Tuning,
        now: Timestamp,
        seed: u64,
    ) -> Result<Engine, StoreError> {
        let mut driver = Engine {
            core: Scheduler::new(seed, tuning),
            store: store.clone(),
            gates: BTreeMap::new(),
            gate_names: HashMap::new(),
            counts: HashMap::new(),
            last_task_id: 0,
            shutting_down: false,
            schedules: BTreeMap::new(),
            default_secrets: Vec::new(),
            stats: HashMap::new(),
            metrics: stats::Metrics::default(),
            plugins: BTreeMap::new(),
            max_descendants: crate::config::DEFAULT_MAX_DESCENDANTS,
        };
        store.write(|tx| {
            driver.last_task_id = tx.last_task_id()?.unwrap_or(0);
            for plugin in tx.plugins()? {
                driver.plugins.insert(
                    crate::store::plugin_key(&plugin.name, &plugin.version),
                    plugin,
                );
            }
            for (gate_id, counts) in tx.all_counts()? {
                driver.counts.insert(gate_id, counts);
            }
            for schedule in tx.schedules()? {
                driver.schedules.insert(schedule.name.clone(), schedule);
            }
            for gate in tx.gates()? {
                // Every gate ramps after a start: the backlog of the outage must
                // not come out as a flood.
                driver.core.handle_input(
                    now,
                    Input::UpsertGate {
                        gate: GateId(gate.id),
                        limits: gate.limits(),
                        paused: gate.paused,
                        ramp: true,
                    },
                );
                driver.gate_names.insert(gate.id, gate.name.clone());
                driver.gates.insert(gate.name.clone(), gate);
            }
            let mut turn = Turn {
                tx,
                now,
                tasks: HashMap::new(),
                dirty_counts: Vec::new(),
                plans: Vec::new(),
                ended: Vec::new(),
                dirty_plugins: Vec::new(),
            };
            let interrupted = turn.tx.running_tasks()?;
            for id in &interrupted {
                let Some(task) = turn.task(*id)? else {
                    turn.tx.set_running(*id, false)?;
                    continue;
                };
                if task.state != TaskState::Running {
                    turn.tx.set_running(*id, false)?;
                    continue;
                }
                let attempt = task.attempts;
                let queued = queued_of(task);
                let record = turn.tx.attempt(*id, attempt)?;
                if let Some(until) = record
                    .as_ref()
                    .and_then(|r| r.lease_until.filter(|_| r.ended_at.is_none()))
                {
                    // Long-running work goes on without us: keep its slot and its
                    // lease; a lease that ran out meanwhile expires at once.
                    driver.core.handle_input(
                        now,
                        Input::RestoreLease {
                            task: queued,
                            until: Timestamp(until),
                        },
                    );
                    continue;
                }
                if let Some(task) = turn.task(*id)? {
                    task.last_error = Some("the server stopped during this attempt".into());
                }
                if let Some(mut record) = record {
                    record.ended_at = Some(now.as_ms());
                    record.outcome = Some("interrupted".into());
                    record.error = Some("the server stopped during this attempt".into());
                    turn.tx.put_attempt(*id, &record)?;
                }
                driver.core.handle_input(now, Input::Interrupted(queued));
            }
            if !interrupted.is_empty() {
                tracing::info!(
                    count = interrupted.len(),
                    "retrying attempts interrupted by the last stop"
                );
            }
            driver.apply_effects(&mut turn)?;
            driver.finish_turn(&mut turn)
        })?;
        tracing::info!(gates = driver.gates.len(), "scheduler ready");
        Ok(driver)
    }

    /// When `turn` should next run without new input.
    /// Removes one batch of tasks that finished more than `retention` ago.
    /// Returns whether more are waiting.
    pub fn prune(&mut self, now: Timestamp, retention: Duration) -> Result<bool, StoreError> {
        let before = now
            .as_ms()
            .saturating_sub(crate::core::time::duration_ms(retention));
        let (removed, more) = self.store.write(|tx| tx.prune(before, PRUNE_BATCH))?;
        if removed > 0 {
            tracing::debug!(removed, "retention: removed finished tasks");
        }
        Ok(more)
    }

    pub fn poll_timeout(&self) -> Option<Timestamp> {
        if self.shutting_down {
            None
        } else {
            self.core.poll_timeout()
        }
    }

    /// Attempts in flight.
    pub fn running(&self) -> usize {
        self.core.running()
    }

    /// Sets the server-wide signing secrets (validated by the caller).
    pub fn set_default_secrets(&mut self, secrets: Vec<String>) {
        self.default_secrets = secrets;
    }

    /// Sets the lineage budget: most tasks one root's `next` chains create.
    pub fn set_max_descendants(&mut self, max: u32) {
        self.max_descendants = max;
    }

    /// From now on no attempt starts; reports are still taken.
    pub fn begin_shutdown(&mut self) {
        self.shutting_down = true;
    }
}

impl Runner {
    async fn run(
        &mut self,
        mut commands: mpsc::Receiver<Command>,
        mut reports: mpsc::UnboundedReceiver<Report>,
        mut permits: mpsc::UnboundedReceiver<PermitMessage>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), StoreError> {
        let mut grace_until: Option<tokio::time::Instant> = None;
        // Retention runs a tenth of its period apart (at most a minute), in
        // small commits back to back while there is a backlog of old tasks.
        let prune_every =
            (self.retention / 10).clamp(Duration::from_millis(100), Duration::from_secs(60));
        let mut next_prune = tokio::time::Instant::from_std(clock::instant() + prune_every);
        loop {
            let mut batch_commands = Vec::new();
            let mut batch_reports = Vec::new();
            let wake = self.engine.poll_timeout();
            tokio::select! {
                biased;
                changed = shutdown.changed(), if grace_until.is_none() => {
                    if changed.is_err() || *shutdown.borrow() {
                        self.engine.begin_shutdown();
                        grace_until = Some(tokio::time::Instant::from_std(clock::instant() + self.grace));
                        tracing::info!(in_flight = self.engine.running(), "shutting down: no new attempts start");
                    }
                }
                Some(report) = reports.recv() => batch_reports.push(report),
                Some(message) = permits.recv() => {
                    self.permit_message(message);
                    while let Ok(message) = permits.try_recv() {
                        self.permit_message(message);
                    }
                }
                Some(command) = commands.recv() => batch_commands.push(command),
                () = sleep_until(wake), if wake.is_some() => {}
                () = tokio::time::sleep_until(next_prune), if grace_until.is_none() => {
                    let more = self.engine.prune(clock::now(), self.retention)?;
                    let pause = if more { Duration::from_millis(10) } else { prune_every };
                    next_prune = tokio::time::Instant::from_std(clock::instant() + pause);
                    continue;
                }
                () = sleep_until_instant(grace_until), if grace_until.is_some() => {
                    tracing::warn!(in_flight = self.engine.running(), "grace period over; unfinished attempts will be retried after restart");
                    return Ok(());
                }
            }
            while batch_reports.len() < TURN_REPORTS {
                match reports.try_recv() {
                    Ok(r) => batch_reports.push(r),
                    Err(_) => break,
                }
            }
            while batch_commands.len() < TURN_COMMANDS {
                match commands.try_recv() {
                    Ok(c) => batch_commands.push(c),
                    Err(_) => break,
                }
            }
            for report in &batch_reports {
                // Whatever the attempt still waited for, it waits no more.
                self.asks.remove(&report.task);
            }
            let plans = self
                .engine
                .turn(clock::now(), batch_commands, batch_reports)?;
            self.release(plans);
            self.grant();
            if grace_until.is_some() && self.engine.running() == 0 {
                tracing::info!("all attempts settled; driver stopped");
                return Ok(());
            }
        }
    }

    /// When an admitted attempt (or a plugin request) may leave: not before
    /// its slot time `at`, chosen by the core ahead of the commit, and not
    /// before a second bucket on the real clock, at the gate's rate and burst,
    /// has a token. The slot times conform to the gate, so when the commit is
    /// done in time the second bucket never holds a release back; when a
    /// commit runs late, it keeps the releases that were waiting for it from
    /// bunching at the endpoint. It only ever delays: what may start at all is
    /// the core's decision.
    fn release_at(
        &mut self,
        now: std::time::Instant,
        wall: Timestamp,
        gate: GateId,
        at: Timestamp,
    ) -> std::time::Instant {
        let due = now + at.since(wall);
        let Some((rate, burst)) = self.engine.core.pace(wall, gate) else {
            return due;
        };
        // A hair under the gate's rate, so a millisecond or two of jitter between
        // here and the endpoint cannot push a window over the bound.
        let rate = (rate * PACER_MARGIN).max(1e-6);
        let cap = f64::from(burst.max(1));
        let pacer = self.pacers.entry(gate.0).or_insert((cap, due));
        if due > pacer.1 {
            pacer.0 = (pacer.0 + rate * due.duration_since(pacer.1).as_secs_f64()).min(cap);
            pacer.1 = due;
        }
        pacer.0 -= 1.0;
        if pacer.0 >= 0.0 {
            due
        } else {
            pacer.1 + Duration::from_secs_f64((-pacer.0 / rate).min(3_600.0))
        }
    }

    /// Starts the attempts of a committed turn on the runtime.
    fn release(&mut self, plans: Vec<Plan>) {
        let released = clock::instant();
        let wall = clock::now();
        for plan in plans {
            let release = self.release_at(released, wall, plan.gate_id, plan.release_at);
            let dispatcher = self.dispatcher.clone();
            let reports = self.reports.clone();
            let plugins = plan.plugin.as_ref().map(|_| self.plugins.clone());
            let permits = self.permits.clone();
            self.runtime.spawn(async move {
                if release > released {
                    tokio::time::sleep_until(tokio::time::Instant::from_std(release)).await;
                }
                let report = match plugins {
                    None => dispatcher.run(plan).await,
                    Some(Some(host)) => host.run(plan, dispatcher, permits).await,
                    Some(None) => plugin::unavailable(plan),
                };
                let _ = reports.send(report);
            });
        }
    }

    /// Takes a message of a plugin's request into the core.
    fn permit_message(&mut self, message: PermitMessage) {
        let now = clock::now();
        match message {
            PermitMessage::Ask {
                task,
                attempt,
                ask,
                reply,
            } => {
                self.asks
                    .entry(task)
                    .or_default()
                    .push((ask, attempt, reply));
                self.engine
                    .core
                    .handle_input(now, Input::Ask { task, attempt, ask });
            }
            PermitMessage::Ended {
                task,
                attempt,
                signal,
            } => self.engine.core.handle_input(
                now,
                Input::RequestEnded {
                    task,
                    attempt,
                    signal,
                },
            ),
        }
    }

    /// Answers the plugin requests the gates allowed in this turn, spaced on the
    /// real clock like attempt releases. A permit nobody waits for any more is
    /// handed back at once.
    fn grant(&mut self) {
        let released = clock::instant();
        let wall = clock::now();
        while let Some(permit) = self.engine.core.poll_permit() {
            let (task, attempt, ask) = (permit.task, permit.attempt, permit.ask);
            let waiter = self.asks.get_mut(&task).and_then(|waiting| {
                let i = waiting.iter().position(|w| w.0 == ask && w.1 == attempt)?;
                Some(waiting.swap_remove(i))
            });
            let Some((_, _, reply)) = waiter else {
                // The attempt ended while its request waited: nothing will be
                // sent, so the slot the permit took is free again.
                self.engine.core.handle_input(
                    wall,
                    Input::RequestEnded {
                        task,
                        attempt,
                        signal: crate::core::Signal::Neutral,
                    },
                );
                continue;
            };
            if self.asks.get(&task).is_some_and(Vec::is_empty) {
                self.asks.remove(&task);
            }
            let release = self.release_at(released, wall, permit.gate, permit.at);
            let permits = self.permits.clone();
            let answer = move || {
                if reply.send(()).is_err() {
                    let _ = permits.send(PermitMessage::Ended {
                        task,
                        attempt,
                        signal: crate::core::Signal::Neutral,
                    });
                }
            };
            if release > released {
                self.runtime.spawn(async move {
                    tokio::time::sleep_until(tokio::time::Instant::from_std(release)).await;
                    answer();
                });
            } else {
                answer();
            }
        }
    }
}

impl Engine {
    /// One turn: applies reports and commands, starts what may start at `now`,
    /// commits once, then answers the commands. Returns the attempts to release,
    /// whose starts are now on disk.
    pub fn turn(
        &mut self,
        now: Timestamp,
        commands: Vec<Command>,
        reports: Vec<Report>,
    ) -> Result<Vec<Plan>, StoreError> {
        // A timer that starts nothing (a rate-limited wake, say) needs no commit.
        if commands.is_empty() && reports.is_empty() {
            if !self.shutting_down {
                self.core.handle_timeout(now);
            }
            if !self.core.has_effects() {
                return Ok(Vec::new());
            }
        }
        let store = self.store.clone();
        let mut replies: Vec<Box<dyn FnOnce() + Send>> = Vec::new();
        let plans = store.write(|tx| {
            let mut turn = Turn {
                tx,
                now,
                tasks: HashMap::new(),
                dirty_counts: Vec::new(),
                plans: Vec::new(),
                ended: Vec::new(),
                dirty_plugins: Vec::new(),
            };
            for report in reports {
                self.apply_report(&mut turn, report)?;
            }
            for command in commands {
                replies.push(self.apply_command(&mut turn, command)?);
            }
            if !self.shutting_down {
                self.core.handle_timeout(now);
            }
            self.apply_effects(&mut turn)?;
            self.finish_turn(&mut turn)?;
            Ok(std::mem::take(&mut turn.plans))
        });
        let plans = match plans {
            Ok(plans) => plans,
            Err(e) => {
                // The core has already moved on; memory and disk would disagree.
                // Stop here and let the restart recover from what is on disk.
                tracing::error!(error = %e, "commit failed; stopping so a restart recovers from disk");
                return Err(e);
            }
        };
        for reply in replies {
            reply();
        }
        Ok(plans)
    }

    fn finish_turn(&mut self, turn: &mut Turn<'_, '_>) -> Result<(), StoreError> {
        turn.flush()?;
        turn.dirty_plugins.sort_unstable();
        turn.dirty_plugins.dedup();
        for key in turn.dirty_plugins.drain(..) {
            if let Some(plugin) = self.plugins.get(&key) {
                turn.tx.put_plugin(plugin)?;
            }
        }
        turn.dirty_counts.sort_unstable();
        turn.dirty_counts.dedup();
        for gate_id in turn.dirty_counts.drain(..) {
            if let Some(counts) = self.counts.get(&gate_id) {
                turn.tx.put_counts(gate_id, counts)?;
            }
        }
        Ok(())
    }

    /// Counts a plugin task becoming unfinished (`+1`) or finished (`-1`), so a
    /// plugin still in use cannot be deleted.
    fn plugin_ref(&mut self, turn: &mut Turn<'_, '_>, key: Option<String>, delta: i64) {
        let Some(key) = key else {
            return;
        };
        if let Some(plugin) = self.plugins.get_mut(&key) {
            plugin.unfinished = plugin.unfinished.saturating_add_signed(delta);
            turn.dirty_plugins.push(key);
        }
    }

    fn count(&mut self, turn: &mut Turn<'_, '_>, gate_id: u32, f: impl FnOnce(&mut Counts)) {
        if self.gate_names.contains_key(&gate_id) {
            f(self.counts.entry(gate_id).or_default());
            turn.dirty_counts.push(gate_id);
        }
    }

    fn apply_report(
        &mut self,
        turn: &mut Turn<'_, '_>,
        mut report: Report,
    ) -> Result<(), StoreError> {
        let id = report.task.0;
        // A report that is not about the task's open attempt (a callback settled
        // it first, or it is from before a restart) changes nothing.
        let current = turn.task(id)?.map(|t| (t.attempts, t.state));
        if current != Some((report.attempt, TaskState::Running)) {
            return Ok(());
        }
        let Some(mut record) = turn.tx.attempt(id, report.attempt)? else {
            return Ok(());
        };
        if record.ended_at.is_some() {
            return Ok(());
        }
        if report.outcome == Outcome::Succeeded && !report.next.is_empty() {
            // A plugin's next steps: created with the success, or the attempt
            // fails (all or nothing, like a completion's).
            let created = match crate::api::wire::parse_next(&report.next, turn.now) {
                Ok(tasks) => {
                    let parent = turn.must_task(id)?.clone();
                    self.create_next(turn, &parent, tasks)?
                        .map(|_| ())
                        .map_err(|e| e.with_field())
                }
                Err(e) => Err(e),
            };
            if let Err(why) = created {
                report.outcome = Outcome::Rejected;
                report.error = Some(format!("the plugin's next tasks were refused: {why}"));
            }
        }
        self.observe(turn, id, &report)?;
        if let (Some(lease), Outcome::Succeeded) = (report.lease, report.outcome) {
            let until = turn.now.plus(lease);
            record.status = report.status;
            record.latency_ms = Some(report.latency_ms);
            record.response = report.response.clone();
            record.lease_until = Some(until.as_ms());
            record.lease_ms = Some(lease.as_millis() as u64);
            turn.tx.put_attempt(id, &record)?;
            self.core.handle_input(
                turn.now,
                Input::Leased {
                    task: report.task,
                    until,
                },
            );
            return self.apply_effects(turn);
        }
        record.ended_at = Some(report.ended_at.as_ms());
        record.outcome = Some(report.outcome_name().to_string());
        record.status = report.status;
        record.latency_ms = Some(report.latency_ms);
        record.error = report.error.clone();
        record.response = report.response.clone();
        record.logs = std::mem::take(&mut report.logs);
        turn.tx.put_attempt(id, &record)?;
        if let Some(task) = turn.task(id)?
            && report.outcome != Outcome::Succeeded
        {
            task.last_error = report.error.clone();
        }
        self.core.handle_input(
            turn.now,
            Input::AttemptEnded {
                task: report.task,
                outcome: report.outcome,
            },
        );
        self.apply_effects(turn)
    }

    /// Counts an attempt's end in the gate's recent series and metrics.
    fn observe(
        &mut self,
        turn: &mut Turn<'_, '_>,
        id: u64,
        report: &Report,
    ) -> Result<(), StoreError> {
        let Some(gate_id) = turn.task(id)?.map(|t| t.gate_id) else {
            return Ok(());
        };
        let Some(name) = self.gate_names.get(&gate_id) else {
            return Ok(());
        };
        let leased = report.lease.is_some() && report.outcome == Outcome::Succeeded;
        let outcome = if leased {
            "leased"
        } else {
            report.outcome_name()
        };
        let verdict = (report.outcome != Outcome::Interrupted && !leased)
            .then_some(report.outcome == Outcome::Succeeded);
        let backlog = self.counts.get(&gate_id).map_or(0, |c| c.pending);
        let metrics = &self.metrics;
        self.stats
            .entry(gate_id)
            .or_insert_with(|| metrics.gate(name))
            .ended(turn.now, outcome, verdict, backlog);
        Ok(())
    }

    /// Executes the core's effects into the transaction, in order, and moves
    /// schedules on whose occurrences ended, until nothing is left to do.
    fn apply_effects(&mut self, turn: &mut Turn<'_, '_>) -> Result<(), StoreError> {
        loop {
            self.drain_effects(turn)?;
            if turn.ended.is_empty() {
                return Ok(());
            }
            for (task, state, schedule) in std::mem::take(&mut turn.ended) {
                self.occurrence_ended(turn, &schedule, task, state)?;
            }
        }
    }

    fn drain_effects(&mut self, turn: &mut Turn<'_, '_>) -> Result<(), StoreError> {
        while let Some(effect) = self.core.poll_effect() {
            match effect {
                Effect::Load {
                    gate,
                    from,
                    until,
                    limit,
                } => {
                    let (keys, next) = turn.tx.pending_range(
                        gate.0,
                        (from.0.as_ms(), from.1.0),
                        until.as_ms(),
                        limit,
                    )?;
                    let mut tasks = Vec::with_capacity(keys.len());
                    for (_, id) in keys {
                        tasks.push(queued_of(turn.must_task(id)?));
                    }
                    let next = next.map(|(due, id)| (Timestamp(due), TaskId(id)));
                    self.core
                        .handle_input(turn.now, Input::Loaded { gate, tasks, next });
                }
                Effect::Start {
                    task,
                    gate,
                    attempt,
                    at,
                } => {
                    let now = turn.now;
                    let due = turn.must_task(task.0)?.due_at;
                    let removed = turn.tx.remove_pending(gate.0, due, task.0)?;
                    assert!(removed, "started a task that was not pending");
                    let record = turn.must_task(task.0)?;
                    record.state = TaskState::Running;
                    record.attempts = record.attempt_offset + attempt;
                    record.first_attempt_at.get_or_insert(now.as_ms());
                    let number = record.attempts;
                    let (token, token_hash) = leases::new_token();
                    let mut plan = self.plan(record, number);
                    plan.completion_token = token;
                    plan.release_at = at;
                    turn.tx.set_running(task.0, true)?;
                    turn.tx.put_attempt(
                        task.0,
                        &AttemptRecord {
                            attempt: number,
                            started_at: now.as_ms(),
                            ended_at: None,
                            outcome: None,
                            status: None,
                            latency_ms: None,
                            error: None,
                            response: None,
                            token_hash: Some(token_hash),
                            lease_until: None,
                            lease_ms: None,
                            progress: None,
                            heartbeat_at: None,
                            logs: Vec::new(),
                        },
                    )?;
                    self.count(turn, gate.0, |c| {
                        c.pending = c.pending.saturating_sub(1);
                        c.running += 1;
                        c.attempts += 1;
                    });
                    let backlog = self.counts.get(&gate.0).map_or(0, |c| c.pending);
                    if let Some(name) = self.gate_names.get(&gate.0) {
                        let metrics = &self.metrics;
                        self.stats
                            .entry(gate.0)
                            .or_insert_with(|| metrics.gate(name))
                            .started(now, now.as_ms().saturating_sub(due), backlog);
                    }
                    turn.plans.push(plan);
                }
                Effect::Requeue { task, gate, due } => {
                    let record = turn.must_task(task.0)?;
                    record.state = TaskState::Scheduled;
                    record.due_at = due.as_ms();
                    turn.tx.insert_pending(gate.0, due.as_ms(), task.0)?;
                    turn.tx.set_running(task.0, false)?;
                    self.count(turn, gate.0, |c| {
                        c.running = c.running.saturating_sub(1);
                        c.pending += 1;
                        c.retried += 1;
                    });
                }
                Effect::Finish { task, gate, end } => {
                    let now = turn.now;
                    let record = turn.must_task(task.0)?;
                    record.state = match end {
                        End::Succeeded => TaskState::Succeeded,
                        End::Failed(_) => TaskState::Failed,
                        End::Expired => TaskState::Expired,
                        End::Cancelled => TaskState::Cancelled,
                    };
                    match end {
                        End::Succeeded => record.last_error = None,
                        End::Failed(FailReason::AttemptsExhausted) => {
                            let last = record.last_error.take().unwrap_or_default();
                            record.last_error = Some(format!("attempts exhausted: {last}"));
                        }
                        End::Failed(FailReason::RetryWindowExceeded) => {
                            let last = record.last_error.take().unwrap_or_default();
                            record.last_error =
                                Some(format!("max_retry_duration exceeded: {last}"));
                        }
                        End::Expired => {
                            record.last_error = Some("expired before it could retry".into());
                        }
                        _ => {}
                    }
                    record.finished_at = Some(now.as_ms());
                    let ended = record.schedule.clone().map(|s| (task.0, record.state, s));
                    let plugin = record.plugin.as_ref().map(|p| p.key());
                    turn.ended.extend(ended);
                    self.plugin_ref(turn, plugin, -1);
                    turn.tx.set_running(task.0, false)?;
                    self.count(turn, gate.0, |c| {
                        c.running = c.running.saturating_sub(1);
                        match end {
                            End::Succeeded => c.succeeded += 1,
                            End::Failed(_) => c.failed += 1,
                            End::Expired => c.expired += 1,
                            End::Cancelled => c.cancelled += 1,
                        }
                    });
                }
                Effect::LeaseExpired { task, attempt, .. } => {
                    let now = turn.now;
                    let number = turn.must_task(task.0)?.attempt_offset + attempt;
                    if let Some(mut record) = turn.tx.attempt(task.0, number)? {
                        record.ended_at = Some(now.as_ms());
                        record.outcome = Some("lease_expired".into());
                        record.error =
                            Some("the lease ran out before the endpoint reported back".into());
                        turn.tx.put_attempt(task.0, &record)?;
                    }
                    turn.must_task(task.0)?.last_error =
                        Some("the lease ran out before the endpoint reported back".into());
                }
                Effect::Expire { task, gate, due } => {
                    let now = turn.now;
                    turn.tx.remove_pending(gate.0, due.as_ms(), task.0)?;
                    let record = turn.must_task(task.0)?;
                    record.state = TaskState::Expired;
                    record.finished_at = Some(now.as_ms());
                    record.last_error =
                        Some("expired: could not start before expires_after ran out".into());
                    let ended = record
                        .schedule
                        .clone()
                        .map(|s| (task.0, TaskState::Expired, s));
                    let plugin = record.plugin.as_ref().map(|p| p.key());
                    turn.ended.extend(ended);
                    self.plugin_ref(turn, plugin, -1);
                    self.count(turn, gate.0, |c| {
                        c.pending = c.pending.saturating_sub(1);
                        c.expired += 1;
                    });
                }
            }
        }
        Ok(())
    }

    fn plan(&self, record: &TaskRecord, attempt: u32) -> Plan {
        let gate = self.gates.get(&record.gate);
        let target = record.target();
        let (webhook, plugin) = match target {
            Target::Webhook(w) => (w, None),
            Target::Plugin(p) => (
                crate::store::WebhookRecord {
                    url: String::new(),
                    method: String::new(),
                    headers: Default::default(),
                    body: None,
                    secret_headers: Default::default(),
                },
                Some(dispatch::PluginCall {
                    input: p.input.to_string(),
                    name: p.name,
                    version: p.version,
                }),
            ),
        };
        let (body, json) = match &webhook.body {
            None => (Bytes::new(), false),
            Some(BodyRecord::Json(v)) => {
                (Bytes::from(serde_json::to_vec(v).unwrap_or_default()), true)
            }
            Some(BodyRecord::Text(t)) => (Bytes::from(t.clone()), false),
        };
        Plan {
            task: TaskId(record.id),
            attempt,
            gate: record.gate.clone(),
            gate_id: GateId(record.gate_id),
            url: webhook.url,
            method: webhook.method,
            headers: webhook.headers,
            secret_headers: webhook.secret_headers,
            body,
            json,
            timeout: Duration::from_millis(record.timeout_ms),
            scheduled_at: Timestamp(record.scheduled_at),
            release_at: Timestamp::ZERO,
            schedule: record.schedule.clone(),
            completion_token: String::new(),
            signing_keys: {
                let secrets = gate
                    .map(|g| &g.signing_secrets)
                    .filter(|s| !s.is_empty())
                    .unwrap_or(&self.default_secrets);
                secrets
                    .iter()
                    .filter_map(|s| crate::dispatch::sign::SigningKey::parse(s).ok())
                    .collect()
            },
            idempotency_key: match (&record.schedule, &record.idempotency_key) {
                (Some(_), Some(key)) => key.clone(),
                _ => TaskId(record.id).to_string(),
            },
            allowed_hosts: gate.map(|g| g.allowed_hosts.clone()).unwrap_or_default(),
            plugin,
        }
    }

    fn apply_command(
        &mut self,
        turn: &mut Turn<'_, '_>,
        command: Command,
    ) -> Result<Box<dyn FnOnce() + Send>, StoreError> {
        fn reply<T: Send + 'static>(
            to: Reply<T>,
            value: Result<T, ShellError>,
        ) -> Box<dyn FnOnce() + Send> {
            Box::new(move || {
                let _ = to.send(value);
            })
        }
        if self.shutting_down {
            return Ok(match command {
                Command::Live { gate, reply: to } => {
                    let live = self.live(turn.now, gate.as_deref());
                    Box::new(move || {
                        let _ = to.send(live);
                    })
                }
                Command::PutGate { reply: to, .. } => reply(to, Err(ShellError::ShuttingDown)),
                Command::DeleteGate { reply: to, .. } => reply(to, Err(ShellError::ShuttingDown)),
                Command::SetPaused { reply: to, .. } => reply(to, Err(ShellError::ShuttingDown)),
                Command::CreateTasks { reply: to, .. } => reply(to, Err(ShellError::ShuttingDown)),
                Command::CancelTask { reply: to, .. } => reply(to, Err(ShellError::ShuttingDown)),
                Command::RetryTask { reply: to, .. } => reply(to, Err(ShellError::ShuttingDown)),
                Command::PutSchedule { reply: to, .. } => reply(to, Err(ShellError::ShuttingDown)),
                Command::Report { reply: to, .. } => reply(to, Err(ShellError::ShuttingDown)),
                Command::DeleteSchedule { reply: to, .. } => {
                    reply(to, Err(ShellError::ShuttingDown))
                }
                Command::SetSchedulePaused { reply: to, .. } => {
                    reply(to, Err(ShellError::ShuttingDown))
                }
                Command::PutPlugin { reply: to, .. } => reply(to, Err(ShellError::ShuttingDown)),
                Command::DeletePlugin { reply: to, .. } => reply(to, Err(ShellError::ShuttingDown)),
            });
        }
        Ok(match command {
            Command::PutGate {
                name,
                spec,
                reply: to,
            } => {
                let result = self.put_gate(turn, name, *spec)?;
                reply(to, Ok(result))
            }
            Command::DeleteGate {
                name,
                force,
                reply: to,
            } => {
                let result = self.delete_gate(turn, &name, force)?;
                reply(to, result)
            }
            Command::SetPaused {
                name,
                paused,
                reply: to,
            } => {
                let result = match self.gates.get_mut(&name) {
                    None => Err(ShellError::NotFound {
                        what: format!("gate {name:?}"),
                    }),
                    Some(gate) => {
                        gate.paused = paused;
                        gate.updated_at = turn.now.as_ms();
                        turn.tx.put_gate(gate)?;
                        let id = GateId(gate.id);
                        let record = gate.clone();
                        self.core.handle_input(
                            turn.now,
                            if paused {
                                Input::Pause(id)
                            } else {
                                Input::Resume(id)
                            },
                        );
                        Ok(record)
                    }
                };
                reply(to, result)
            }
            Command::CreateTasks { tasks, reply: to } => {
                let list = (tasks.len() > 1).then_some("tasks");
                let result = self.create_tasks(turn, tasks, list)?;
                reply(to, result)
            }
            Command::CancelTask { id, reply: to } => {
                let result = self.cancel_task(turn, id)?;
                reply(to, result)
            }
            Command::RetryTask { id, reply: to } => {
                let result = self.retry_task(turn, id)?;
                reply(to, result)
            }
            Command::Live { gate, reply: to } => {
                let live = self.live(turn.now, gate.as_deref());
                Box::new(move || {
                    let _ = to.send(live);
                })
            }
            Command::Report {
                id,
                callback,
                reply: to,
            } => {
                let result = self.callback(turn, id, *callback)?;
                reply(to, result)
            }
            Command::PutSchedule {
                name,
                spec,
                reply: to,
            } => {
                let result = self.put_schedule(turn, name, *spec)?;
                reply(to, result)
            }
            Command::DeleteSchedule { name, reply: to } => {
                let result = self.delete_schedule(turn, &name)?;
                reply(to, result)
            }
            Command::SetSchedulePaused {
                name,
                paused,
                reply: to,
            } => {
                let result = self.set_schedule_paused(turn, &name, paused)?;
                reply(to, result)
            }
            Command::PutPlugin { upload, reply: to } => {
                let result = self.put_plugin(turn, *upload)?;
                reply(to, result)
            }
            Command::DeletePlugin { key, reply: to } => {
                let result = self.delete_plugin(turn, &key)?;
                reply(to, result)
            }
        })
    }

    fn live(&self, now: Timestamp, only: Option<&str>) -> Vec<GateLive> {
        self.gates
            .values()
            .filter(|g| only.is_none_or(|name| g.name == name))
            .filter_map(|g| {
                let counts = self.counts.get(&g.id).copied().unwrap_or_default();
                Some(GateLive {
                    record: g.clone(),
                    view: self.core.view(now, GateId(g.id))?,
                    counts,
                    series: self
                        .stats
                        .get(&g.id)
                        .map(|s| s.series.clone())
                        .unwrap_or_default()
                        .snapshot(now, counts.pending),
                })
            })
            .collect()
    }

    fn put_gate(
        &mut self,
        turn: &mut Turn<'_, '_>,
        name: String,
        spec: GateSpec,
    ) -> Result<(GateRecord, bool), StoreError> {
        let now = turn.now.as_ms();
        let existing = self.gates.get(&name);
        let created = existing.is_none();
        let (id, paused, created_at, secrets) = match existing {
            Some(g) => (g.id, g.paused, g.created_at, g.signing_secrets.clone()),
            None => (turn.tx.next_gate_id()?, false, now, Vec::new()),
        };
        let record = GateRecord {
            id,
            name: name.clone(),
            rate_per_s: spec.rate.as_per_second(),
            burst: spec.burst,
            concurrency: spec.concurrency,
            allowed_hosts: spec.allowed_hosts,
            timeout_ms: crate::core::time::duration_ms(spec.timeout),
            retry: retry_record(&spec.retry),
            recovery: RecoveryRecord {
                start: spec.recovery.start,
                over_ms: crate::core::time::duration_ms(spec.recovery.over),
            },
            circuit: spec.circuit.map(|c| CircuitRecord {
                failures: c.failures,
                cooldown_ms: crate::core::time::duration_ms(c.cooldown),
                max_cooldown_ms: crate::core::time::duration_ms(c.max_cooldown),
            }),
            accept_next_from: spec.accept_next_from,
            signing_secrets: spec.signing_secrets.unwrap_or(secrets),
            paused,
            created_at,
            updated_at: now,
        };
        turn.tx.put_gate(&record)?;
        if created {
            self.counts.insert(id, Counts::default());
            turn.dirty_counts.push(id);
        }
        self.core.handle_input(
            turn.now,
            Input::UpsertGate {
                gate: GateId(id),
                limits: record.limits(),
                paused,
                ramp: false,
            },
        );
        self.gate_names.insert(id, name.clone());
        self.gates.insert(name, record.clone());
        Ok((record, created))
    }

    fn delete_gate(
        &mut self,
        turn: &mut Turn<'_, '_>,
        name: &str,
        force: bool,
    ) -> Result<Result<(), ShellError>, StoreError> {
        let Some(gate) = self.gates.get(name).cloned() else {
            return Ok(Err(ShellError::NotFound {
                what: format!("gate {name:?}"),
            }));
        };
        let counts = self.counts.get(&gate.id).copied().unwrap_or_default();
        if counts.unfinished() > 0 && !force {
            return Ok(Err(ShellError::Conflict(format!(
                "gate {name:?} holds {} unfinished tasks; delete with ?force=true to cancel them",
                counts.unfinished()
            ))));
        }
        for (due, id) in turn.tx.all_pending(gate.id)? {
            turn.tx.remove_pending(gate.id, due, id)?;
            let now = turn.now.as_ms();
            let mut plugin = None;
            if let Some(task) = turn.task(id)? {
                task.state = TaskState::Cancelled;
                task.finished_at = Some(now);
                task.last_error = Some(format!("cancelled: gate {name:?} was deleted"));
                plugin = task.plugin.as_ref().map(|p| p.key());
                if let Some(schedule) = task.schedule.clone() {
                    turn.ended.push((id, TaskState::Cancelled, schedule));
                }
            }
            self.plugin_ref(turn, plugin, -1);
        }
        turn.tx.delete_gate(name)?;
        turn.tx.delete_counts(gate.id)?;
        self.core
            .handle_input(turn.now, Input::RemoveGate(GateId(gate.id)));
        self.gates.remove(name);
        self.gate_names.remove(&gate.id);
        self.counts.remove(&gate.id);
        self.stats.remove(&gate.id);
        self.metrics.forget(&gate.name);
        Ok(Ok(()))
    }

    /// Creates tasks, all or none. Fields at fault are named `list[i].field`
    /// (`tasks`, `next`), or plainly for a single task.
    fn create_tasks(
        &mut self,
        turn: &mut Turn<'_, '_>,
        tasks: Vec<NewTask>,
        list: Option<&str>,
    ) -> Result<Result<Vec<Created>, ShellError>, StoreError> {
        let field = |i: usize, name: &str| match list {
            Some(list) => format!("{list}[{i}].{name}"),
            None => name.to_string(),
        };
        // Check everything first: a batch is all or none.
        for (i, task) in tasks.iter().enumerate() {
            let Some(gate) = self.gates.get(&task.gate) else {
                return Ok(Err(ShellError::Invalid {
                    field: Some(field(i, "gate")),
                    message: format!(
                        "gate {:?} does not exist; create it with PUT /v1/gates/{}",
                        task.gate, task.gate
                    ),
                }));
            };
            if let Err((at, message)) = self.check_target(&task.target, gate) {
                return Ok(Err(ShellError::Invalid {
                    field: Some(field(i, at)),
                    message,
                }));
            }
        }
        let mut out = Vec::with_capacity(tasks.len());
        for task in tasks {
            let id_candidate = self.next_task_id(turn.now);
            let gate = &self.gates[&task.gate];
            let gate_id = gate.id;
            if let Some(key) = &task.idempotency_key
                && let Some(existing) = turn.tx.idempotent(gate_id, key)?
                && let Some(record) = turn.task(existing)?
            {
                out.push(Created {
                    task: record.clone(),
                    replayed: true,
                });
                continue;
            }
            let id = id_candidate;
            let retry = RetryRecord {
                max_attempts: task.max_attempts.unwrap_or(gate.retry.max_attempts),
                initial_ms: task
                    .backoff
                    .map_or(gate.retry.initial_ms, |b| b.initial.as_millis() as u64),
                max_ms: task
                    .backoff
                    .map_or(gate.retry.max_ms, |b| b.max.as_millis() as u64),
                multiplier: task.backoff.map_or(gate.retry.multiplier, |b| b.multiplier),
                jitter: task.backoff.map_or(gate.retry.jitter, |b| b.jitter),
                max_retry_duration_ms: task
                    .max_retry_duration
                    .map(|d| d.as_millis() as u64)
                    .or(gate.retry.max_retry_duration_ms),
            };
            let plugin = task.target.plugin().map(|p| p.key());
            let mut record = TaskRecord {
                id,
                gate: task.gate.clone(),
                gate_id,
                state: TaskState::Scheduled,
                webhook: None,
                plugin: None,
                created_at: turn.now.as_ms(),
                scheduled_at: task.due.as_ms(),
                due_at: task.due.as_ms(),
                timeout_ms: task
                    .timeout
                    .map_or(gate.timeout_ms, |d| d.as_millis() as u64),
                retry,
                expires_at: task.expires_after.map(|d| task.due.plus(d).as_ms()),
                idempotency_key: task.idempotency_key.clone(),
                labels: task.labels,
                attempts: 0,
                attempt_offset: 0,
                first_attempt_at: None,
                last_error: None,
                finished_at: None,
                schedule: task.schedule.clone(),
                parent: task.parent.map(|p| p.0),
                root: task.lineage.map(|(root, _)| root.0),
                depth: task.lineage.map_or(0, |(_, depth)| depth),
            };
            record.set_target(task.target);
            self.plugin_ref(turn, plugin, 1);
            if let Some(key) = &task.idempotency_key {
                turn.tx.put_idempotent(gate_id, key, id)?;
            }
            turn.tx.index_task(gate_id, id)?;
            turn.tx.insert_pending(gate_id, record.due_at, id)?;
            self.count(turn, gate_id, |c| c.pending += 1);
            self.core
                .handle_input(turn.now, Input::Enqueue(queued_of(&record)));
            out.push(Created {
                task: record.clone(),
                replayed: false,
            });
            turn.tasks.insert(id, record);
        }
        Ok(Ok(out))
    }

    /// Creates the `next` tasks of `parent`'s finished attempt, under SPEC §1's
    /// rules: each stays in the parent's gate unless its gate lists the
    /// parent's in `accept_next_from`, and the chain stays within its depth
    /// and its root's budget of descendants. All or none.
    fn create_next(
        &mut self,
        turn: &mut Turn<'_, '_>,
        parent: &TaskRecord,
        tasks: Vec<NewTask>,
    ) -> Result<Result<Vec<Created>, ShellError>, StoreError> {
        for (i, task) in tasks.iter().enumerate() {
            let accepted = task.gate == parent.gate
                || self
                    .gates
                    .get(&task.gate)
                    .is_some_and(|g| g.accept_next_from.contains(&parent.gate));
            if !accepted {
                return Ok(Err(ShellError::Forbidden {
                    field: format!("next[{i}].gate"),
                    message: format!(
                        "a next task stays in its source's gate {:?}; gate {:?} does not list {:?} in accept_next_from",
                        parent.gate, task.gate, parent.gate
                    ),
                }));
            }
        }
        let depth = parent.depth + 1;
        if depth > MAX_DEPTH {
            return Ok(Err(ShellError::Exhausted {
                field: "next".into(),
                message: format!(
                    "task {} is {} generations below its root; a next chain is at most {MAX_DEPTH} deep",
                    TaskId(parent.id),
                    parent.depth
                ),
            }));
        }
        let root = parent.root_id();
        let had = turn.tx.descendants(root)?;
        let asked = u32::try_from(tasks.len()).unwrap_or(u32::MAX);
        if had.saturating_add(asked) > self.max_descendants {
            return Ok(Err(ShellError::Exhausted {
                field: "next".into(),
                message: format!(
                    "root task {} has {had} descendants; {asked} more would pass the server's max_descendants of {}",
                    TaskId(root),
                    self.max_descendants
                ),
            }));
        }
        let tasks = tasks
            .into_iter()
            .map(|mut t| {
                t.parent = Some(TaskId(parent.id));
                t.lineage = Some((TaskId(root), depth));
                t
            })
            .collect();
        let created = self.create_tasks(turn, tasks, Some("next"))?;
        if let Ok(created) = &created {
            let new = created.iter().filter(|c| !c.replayed).count();
            let new = u32::try_from(new).unwrap_or(u32::MAX);
            turn.tx.set_descendants(root, had.saturating_add(new))?;
        }
        Ok(created)
    }

    fn next_task_id(&mut self, now: Timestamp) -> u64 {
        let id = (now.as_ms() << 16).max(self.last_task_id + 1);
        self.last_task_id = id;
        id
    }

    fn cancel_task(
        &mut self,
        turn: &mut Turn<'_, '_>,
        id: TaskId,
    ) -> Result<Result<TaskRecord, ShellError>, StoreError> {
        let now = turn.now.as_ms();
        let Some(task) = turn.task(id.0)? else {
            return Ok(Err(ShellError::NotFound {
                what: format!("task {id}"),
            }));
        };
        if task.state != TaskState::Scheduled {
            return Ok(Err(ShellError::Conflict(format!(
                "task {id} is {}; only scheduled tasks can be cancelled",
                task.state.as_str()
            ))));
        }
        let (gate_id, due) = (task.gate_id, task.due_at);
        task.state = TaskState::Cancelled;
        task.finished_at = Some(now);
        let record = task.clone();
        if let Some(schedule) = record.schedule.clone() {
            turn.ended.push((id.0, TaskState::Cancelled, schedule));
        }
        self.plugin_ref(turn, record.plugin.as_ref().map(|p| p.key()), -1);
        turn.tx.remove_pending(gate_id, due, id.0)?;
        self.count(turn, gate_id, |c| {
            c.pending = c.pending.saturating_sub(1);
            c.cancelled += 1;
        });
        self.core.handle_input(
            turn.now,
            Input::Dequeue {
                gate: GateId(gate_id),
                key: (Timestamp(due), id),
            },
        );
        Ok(Ok(record))
    }

    fn retry_task(
        &mut self,
        turn: &mut Turn<'_, '_>,
        id: TaskId,
    ) -> Result<Result<TaskRecord, ShellError>, StoreError> {
        let now = turn.now;
        let gates_known: Vec<u32> = self.gate_names.keys().copied().collect();
        let Some(task) = turn.task(id.0)? else {
            return Ok(Err(ShellError::NotFound {
                what: format!("task {id}"),
            }));
        };
        if !matches!(task.state, TaskState::Failed | TaskState::Expired) {
            return Ok(Err(ShellError::Conflict(format!(
                "task {id} is {}; only failed or expired tasks can be retried",
                task.state.as_str()
            ))));
        }
        if !gates_known.contains(&task.gate_id) {
            return Ok(Err(ShellError::Conflict(format!(
                "task {id}'s gate {:?} no longer exists",
                task.gate
            ))));
        }
        let was = task.state;
        if let Some(expires_at) = task.expires_at {
            let window = expires_at.saturating_sub(task.due_at.max(task.scheduled_at));
            task.expires_at = Some(now.as_ms() + window);
        }
        task.state = TaskState::Scheduled;
        task.attempt_offset = task.attempts;
        task.first_attempt_at = None;
        task.due_at = now.as_ms();
        task.finished_at = None;
        let record = task.clone();
        self.plugin_ref(turn, record.plugin.as_ref().map(|p| p.key()), 1);
        turn.tx
            .insert_pending(record.gate_id, record.due_at, id.0)?;
        self.count(turn, record.gate_id, |c| {
            c.pending += 1;
            match was {
                TaskState::Failed => c.failed = c.failed.saturating_sub(1),
                _ => c.expired = c.expired.saturating_sub(1),
            }
        });
        self.core
            .handle_input(now, Input::Enqueue(queued_of(&record)));
        Ok(Ok(record))
    }
}

fn queued_of(record: &TaskRecord) -> QueuedTask {
    let mut q = record.queued();
    q.attempts = record.attempts.saturating_sub(record.attempt_offset);
    q
}

fn retry_record(policy: &crate::core::RetryPolicy) -> RetryRecord {
    RetryRecord {
        max_attempts: policy.max_attempts,
        initial_ms: policy.backoff.initial.as_millis() as u64,
        max_ms: policy.backoff.max.as_millis() as u64,
        multiplier: policy.backoff.multiplier,
        jitter: policy.backoff.jitter,
        max_retry_duration_ms: policy.max_retry_duration.map(|d| d.as_millis() as u64),
    }
}

impl Engine {
    /// Checks a target against what is stored: a webhook's host against the
    /// gate, a plugin against the registry. Errors name the field at fault.
    fn check_target(
        &self,
        target: &Target,
        gate: &GateRecord,
    ) -> Result<(), (&'static str, String)> {
        match target {
            Target::Webhook(w) => check_host(&w.url, gate).map_err(|m| ("webhook.url", m)),
            Target::Plugin(p) if self.plugins.contains_key(&p.key()) => Ok(()),
            Target::Plugin(p) => Err((
                "plugin",
                format!(
                    "plugin {}@{} is not in the registry; upload it with PUT /v1/plugins/{}/{}",
                    p.name, p.version, p.name, p.version
                ),
            )),
        }
    }
}

/// Checks a webhook URL against the gate at creation, so a task that can never be
/// delivered is refused up front. Dispatch checks again: the gate may change.
fn check_host(url: &str, gate: &GateRecord) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("invalid url: {e}"))?;
    let host = parsed.host_str().ok_or("url has no host")?;
    let port = parsed.port_or_known_default().unwrap_or(0);
    if !guard::host_allowed(host, port, &gate.allowed_hosts) {
        return Err(format!(
            "host {host}:{port} is not in gate {:?}'s allowed_hosts {:?}",
            gate.name, gate.allowed_hosts
        ));
    }
    Ok(())
}

async fn sleep_until(at: Option<Timestamp>) {
    match at {
        Some(at) => tokio::time::sleep_until(clock::deadline(at)).await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_instant(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

pub use dispatch::rfc3339;
