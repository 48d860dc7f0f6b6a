//! The engine's start: loading what is on disk, recovering attempts the last
//! run left in flight, and its settings.

use super::*;

impl Engine {
    /// Loads what is on disk and recovers attempts the last run left in flight.
    /// `seed` feeds the retry jitter.
    pub fn boot(
        store: Arc<dyn Backend>,
        tuning: Tuning,
        now: Timestamp,
        seed: u64,
    ) -> Result<Engine, StoreError> {
        Engine::boot_as(store, tuning, now, seed, Start::Restart)
    }

    /// `boot`, saying how the last dispatcher stopped (see `Start`): an
    /// engine that runs every unit.
    pub fn boot_as(
        store: Arc<dyn Backend>,
        tuning: Tuning,
        now: Timestamp,
        seed: u64,
        start: Start,
    ) -> Result<Engine, StoreError> {
        let mut engine = Engine::empty(store, tuning, seed)?;
        engine.adopt(now, Units::ALL, start)?;
        tracing::info!(gates = engine.gates.len(), "scheduler ready");
        Ok(engine)
    }

    /// An engine that runs no gate yet (see `adopt`): the registry of
    /// plugins and the last task id, which are the whole store's.
    pub fn empty(store: Arc<dyn Backend>, tuning: Tuning, seed: u64) -> Result<Engine, StoreError> {
        let mut engine = Engine {
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
            max_descendants: DEFAULT_MAX_DESCENDANTS,
            next_reader: no_next_reader,
            pacers: HashMap::new(),
            lookahead: Lookahead::new(tuning.lookahead, tuning.lookahead_max),
            turn_began: None,
            last_turn: None,
            waiting: HashMap::new(),
            last_work: Duration::ZERO,
            loaded: Units::NONE,
            held: Units::NONE,
            shares_writers: store.shares_writers(),
            ids: 0..0,
            ids_at: 0,
            notices: Vec::new(),
            recount: HashSet::new(),
            tokens: leases::Tokens::new(),
            kept: Kept::new(!store.shares_writers()),
        };
        store.write(|tx| {
            engine.last_task_id = tx.last_task_id()?.unwrap_or(0);
            for plugin in tx.plugins()? {
                engine.plugins.insert(
                    crate::store::plugin_key(&plugin.name, &plugin.version),
                    plugin,
                );
            }
            Ok(())
        })?;
        Ok(engine)
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

    /// Checks the records the engine keeps (`kept.rs`) against the store:
    /// how many it keeps, or the first that differs from its committed
    /// record. For the simulation, every sixteenth turn.
    pub fn kept_as_committed(&self) -> Result<usize, String> {
        let reads = self.store.read().map_err(|e| e.to_string())?;
        self.kept
            .check(|id| reads.task(id).map_err(|e| e.to_string()))
    }

    /// Sets the server-wide signing secrets (validated by the caller).
    pub fn set_default_secrets(&mut self, secrets: Vec<String>) {
        self.default_secrets = secrets;
    }

    /// Sets the lineage budget: most tasks one root's `next` chains create.
    pub fn set_max_descendants(&mut self, max: u32) {
        self.max_descendants = max;
    }

    pub fn set_next_reader(&mut self, reader: NextReader) {
        self.next_reader = reader;
    }

    /// From now on no attempt starts; reports are still taken.
    pub fn begin_shutdown(&mut self) {
        self.shutting_down = true;
    }
}
