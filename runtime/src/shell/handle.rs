//! How the API talks to the driver: `Handle` sends a `Command` and awaits
//! its answer, which comes only after the turn that applied it has committed.

use super::*;

pub(super) type Reply<T> = oneshot::Sender<Result<T, ShellError>>;

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
    /// Runs these failed or expired tasks again, in one commit with the
    /// job's record after this page (its `replayed` counts them); answers
    /// how many were (the others had moved on).
    ReplayTasks {
        ids: Vec<TaskId>,
        job: Option<Box<ReplayRecord>>,
        reply: Reply<usize>,
    },
    /// Writes a replay job's record and forgets the named ended ones.
    PutReplay {
        record: Box<ReplayRecord>,
        forget: Vec<String>,
        reply: Reply<()>,
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
    /// A change to the units the engine runs, from a cluster node's
    /// balance loop; the runner applies it between turns (`shell/units.rs`).
    Units {
        order: UnitsOrder,
        reply: Reply<usize>,
    },
}

/// What a cluster node asks of its engine about its units, in the order of
/// a handover: `Stop`, `Busy` until nothing is out (or a bound passes),
/// `Drop`; then the next owner's `Adopt`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnitsOrder {
    /// Run these units' gates from now on (`Engine::adopt`): empty
    /// buckets and the ramp, and with `Start::Takeover` the last owner's
    /// unfinished attempts held until their timeouts. Other nodes' creates
    /// into them are listened for first.
    Adopt(Units, Start),
    /// Start nothing new in them; what is out goes on (`Engine::stop_units`).
    Stop(Units),
    /// How much is still out in them (`Engine::busy`): the answer.
    Busy(Units),
    /// Those of them with nothing out: the answer, as `Units::bits`
    /// (`Handle::idle` reads it).
    Idle(Units),
    /// Forget them (`Engine::drop_units`); nothing more leaves for them,
    /// not even starts admitted ahead and still waiting for their slot.
    Drop(Units),
}

/// How the API talks to the driver.
#[derive(Clone)]
pub struct Handle {
    pub(super) commands: mpsc::Sender<Command>,
    pub(super) ready: Arc<AtomicBool>,
    pub(super) metrics: stats::Metrics,
}

impl Handle {
    /// A handle and the link a driver serves it through.
    pub fn linked() -> (Handle, Link) {
        let (commands_tx, commands_rx) = mpsc::channel(4_096);
        let ready = Arc::new(AtomicBool::new(false));
        let metrics = stats::Metrics::default();
        let link = Link {
            commands: Arc::new(tokio::sync::Mutex::new(commands_rx)),
            ready: ready.clone(),
            metrics: metrics.clone(),
        };
        let handle = Handle {
            commands: commands_tx,
            ready,
            metrics,
        };
        (handle, link)
    }

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

    /// Replays one page of tasks; `job`, when given, is the replay's record
    /// after the page, committed with it.
    pub async fn replay_tasks(
        &self,
        ids: Vec<TaskId>,
        job: Option<ReplayRecord>,
    ) -> Result<usize, ShellError> {
        self.ask(|reply| Command::ReplayTasks {
            ids,
            job: job.map(Box::new),
            reply,
        })
        .await
    }

    pub async fn put_replay(
        &self,
        record: ReplayRecord,
        forget: Vec<String>,
    ) -> Result<(), ShellError> {
        self.ask(|reply| Command::PutReplay {
            record: Box::new(record),
            forget,
            reply,
        })
        .await
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

    /// Applies `order` to the units the engine runs; `Busy` answers how
    /// much is out, the others 0.
    pub async fn units(&self, order: UnitsOrder) -> Result<usize, ShellError> {
        self.ask(|reply| Command::Units { order, reply }).await
    }

    /// Those of `units` with nothing out (`UnitsOrder::Idle`).
    pub async fn idle(&self, units: Units) -> Result<Units, ShellError> {
        let bits = self.units(UnitsOrder::Idle(units)).await?;
        Ok(Units::from_bits(u64::try_from(bits).unwrap_or(0)))
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
