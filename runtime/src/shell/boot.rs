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

    /// `boot`, saying how the last dispatcher stopped (see `Start`).
    pub fn boot_as(
        store: Arc<dyn Backend>,
        tuning: Tuning,
        now: Timestamp,
        seed: u64,
        start: Start,
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
            max_descendants: DEFAULT_MAX_DESCENDANTS,
            next_reader: no_next_reader,
            pacers: HashMap::new(),
            waiting: HashMap::new(),
            last_work: Duration::ZERO,
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
                        keys: gate.key_policy(),
                        paused: gate.paused,
                        ramp: true,
                    },
                );
                driver.gate_names.insert(gate.id, gate.name.clone());
                driver.gates.insert(gate.name.clone(), gate);
            }
            let mut turn = Turn::new(tx, now);
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
                if start == Start::Takeover {
                    // Another node may have sent this attempt (at any time
                    // up to its deadline, which is before now) and may still
                    // be waiting for its answer: the endpoint can be busy
                    // with it for a timeout from now, so it keeps its slot
                    // until then, then counts as interrupted and retries.
                    let timeout = turn.task(*id)?.map_or(0, |t| t.timeout_ms);
                    driver.core.handle_input(
                        now,
                        Input::HoldInterrupted {
                            task: queued,
                            until: Timestamp(now.as_ms().saturating_add(timeout)),
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

    pub fn set_next_reader(&mut self, reader: NextReader) {
        self.next_reader = reader;
    }

    /// From now on no attempt starts; reports are still taken.
    pub fn begin_shutdown(&mut self) {
        self.shutting_down = true;
    }
}
