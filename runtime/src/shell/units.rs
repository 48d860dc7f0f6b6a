//! The engine over a changing set of units (`core::units`): taking up a
//! unit's gates as a new owner does, and letting them go when the unit
//! moves to another node (the cluster issue's step 2; today the server
//! adopts every unit at boot and never lets one go).
//!
//! The order of a handover, which the proof in `docs/cluster-spread.md`
//! rests on: `stop` (no new attempt starts; commands for the unit get
//! `Moved`), wait until `busy` is 0 or a bound passes, `drop` (the core
//! forgets the gates whole, and later reports for them write nothing),
//! and only then is the unit's lease released. The taker `adopt`s it: every
//! gate empty with the ramp, each attempt still on record as running held
//! until its timeout (or its lease restored), as after a takeover.

use super::*;

impl Engine {
    /// Takes up the gates of `units` as of `now`, in one commit: each
    /// starts with an empty bucket and ramps (the backlog must not come out
    /// as a flood), with its schedules and counts; the attempts the store
    /// has as running are recovered as `start` says. Units already run are
    /// left as they are; one still being handed over is dropped first and
    /// taken up afresh.
    pub fn adopt(&mut self, now: Timestamp, units: Units, start: Start) -> Result<(), StoreError> {
        let stopping = self.loaded.without(self.held);
        let again = units.and(stopping);
        if !again.is_empty() {
            self.drop_units(now, again);
        }
        let new = units.without(self.loaded);
        if new.is_empty() {
            return Ok(());
        }
        self.loaded = self.loaded.with(new);
        self.held = self.held.with(new);
        // Nothing kept across a change of units: this write reads from the
        // store, and later turns do too.
        self.kept.clear();
        let store = self.store.clone();
        store.write(|tx| {
            for gate in tx.gates_in(new)? {
                self.core.handle_input(
                    now,
                    Input::UpsertGate {
                        gate: GateId(gate.id),
                        limits: gate.limits(),
                        keys: gate.key_policy(),
                        paused: gate.paused,
                        ramp: true,
                    },
                );
                self.gate_names.insert(gate.id, gate.name.clone());
                self.gates.insert(gate.name.clone(), gate);
            }
            for (gate_id, counts) in tx.all_counts()? {
                if self
                    .gate_names
                    .get(&gate_id)
                    .is_some_and(|name| new.has_gate(name))
                {
                    self.counts.insert(gate_id, counts);
                }
            }
            for schedule in tx.schedules()? {
                if new.has_gate(&schedule.template.gate) {
                    self.schedules.insert(schedule.name.clone(), schedule);
                }
            }
            let mut turn = Turn::new(tx, now, Kept::new(false));
            self.recover(&mut turn, new, start)?;
            self.apply_effects(&mut turn)?;
            self.finish_turn(&mut turn)
        })
    }

    /// The attempts the store has as running in `units`' gates: a lease
    /// goes on; with `Start::Takeover` each keeps its slot until its
    /// timeout (another node may have sent it), unless its slot time shows
    /// it never left; with `Start::Restart` it died with this process and
    /// is retried at once.
    fn recover(
        &mut self,
        turn: &mut Turn<'_>,
        units: Units,
        start: Start,
    ) -> Result<(), StoreError> {
        let now = turn.now;
        let (mut interrupted, mut unsent) = (0usize, 0usize);
        // Every unit: every running task, those of deleted gates too.
        let running = if units == Units::ALL {
            turn.tx.running_tasks()?
        } else {
            let gates: Vec<u32> = (self.gate_names.iter())
                .filter(|(_, name)| units.has_gate(name))
                .map(|(id, _)| *id)
                .collect();
            turn.tx.running_tasks_in(&gates)?
        };
        // Each running task's record and last attempt, read at once (a
        // round trip each on PostgreSQL, where an adopt holds up the
        // gates the node already runs).
        turn.prefetch(running.iter().copied())?;
        let mut last = Vec::with_capacity(running.len());
        for &id in &running {
            if let Some(task) = turn.task(id)?
                && units.has_gate(&task.gate)
                && task.state == TaskState::Running
            {
                last.push((id, task.attempts));
            }
        }
        let mut attempts = turn.tx.attempts_of(&last)?;
        for id in running {
            let Some(task) = turn.task(id)? else {
                turn.tx.set_running(id, false)?;
                continue;
            };
            if !units.has_gate(&task.gate) {
                // Another unit's: not this engine's to write.
                turn.tasks.remove(&id);
                continue;
            }
            if task.state != TaskState::Running {
                turn.tx.set_running(id, false)?;
                continue;
            }
            interrupted += 1;
            let timeout = task.timeout_ms;
            let queued = queued_of(task);
            let record = attempts.remove(&id);
            if let Some(until) = record
                .as_ref()
                .and_then(|r| r.lease_until.filter(|_| r.ended_at.is_none()))
            {
                // Long-running work goes on without us: keep its slot and its
                // lease; a lease that ran out meanwhile expires at once.
                let until = Timestamp(until);
                self.core.handle_input(
                    now,
                    Input::RestoreLease {
                        task: queued,
                        until,
                    },
                );
                continue;
            }
            if let Start::Takeover { unsent_after } = start {
                if let (Some(mark), Some(mut record)) = (unsent_after, record)
                    && record.started_at > mark.as_ms()
                {
                    // Its slot time was after the last owner's mark, so it
                    // never left: back to the queue, as if never started
                    // (its next start writes over this record).
                    unsent += 1;
                    record.ended_at = Some(now.as_ms());
                    record.outcome = Some("withdrawn".into());
                    record.error = Some(NEVER_SENT.into());
                    turn.put_attempt(id, &record)?;
                    self.core.handle_input(now, Input::Unsent(queued));
                    continue;
                }
                // Another node may have sent this attempt (at any time up
                // to its deadline, which is before now) and may still be
                // waiting for its answer: the endpoint can be busy with it
                // for a timeout from now, so it keeps its slot until then,
                // then counts as interrupted and retries.
                let until = Timestamp(now.as_ms().saturating_add(timeout));
                self.core.handle_input(
                    now,
                    Input::HoldInterrupted {
                        task: queued,
                        until,
                    },
                );
                continue;
            }
            if let Some(task) = turn.task(id)? {
                task.last_error = Some("the server stopped during this attempt".into());
            }
            if let Some(mut record) = record {
                record.ended_at = Some(now.as_ms());
                record.outcome = Some("interrupted".into());
                record.error = Some("the server stopped during this attempt".into());
                turn.put_attempt(id, &record)?;
            }
            self.core.handle_input(now, Input::Interrupted(queued));
        }
        if interrupted > 0 {
            tracing::info!(
                count = interrupted,
                never_sent = unsent,
                "recovering attempts the last run left in flight"
            );
        }
        Ok(())
    }

    /// Starts nothing more in `units`' gates, and takes no more commands
    /// for them (`ShellError::Moved`): the first step of handing them over.
    /// Attempts in flight go on, and their reports are taken.
    pub fn stop_units(&mut self, now: Timestamp, units: Units) {
        let units = units.and(self.held);
        self.held = self.held.without(units);
        for (name, gate) in &self.gates {
            if units.has_gate(name) {
                self.core.handle_input(now, Input::Stop(GateId(gate.id)));
            }
        }
    }

    /// What of `units`' gates is still out and must be answered here
    /// before they are dropped (see `Scheduler::busy`).
    pub fn busy(&self, units: Units) -> usize {
        self.gates
            .iter()
            .filter(|(name, _)| units.has_gate(name))
            .map(|(_, gate)| self.core.busy(GateId(gate.id)))
            .sum()
    }

    /// Forgets `units`' gates whole, in memory: the next owner takes them
    /// up from the store. Nothing is written, now or later (reports that
    /// come for them are ignored). Call it between turns, after
    /// `stop_units`; what was still in flight is the next owner's to hold.
    pub fn drop_units(&mut self, now: Timestamp, units: Units) {
        let units = units.and(self.loaded);
        self.kept.clear();
        let gone: Vec<(String, u32)> = self
            .gates
            .iter()
            .filter(|(name, _)| units.has_gate(name))
            .map(|(name, gate)| (name.clone(), gate.id))
            .collect();
        for (name, id) in gone {
            let gate = GateId(id);
            let core = &self.core;
            self.waiting
                .retain(|task, _| core.gate_of(*task) != Some(gate));
            self.core.handle_input(now, Input::DropGate(gate));
            self.gates.remove(&name);
            self.gate_names.remove(&id);
            self.counts.remove(&id);
            self.stats.remove(&id);
            self.pacers.remove(&id);
        }
        self.schedules
            .retain(|_, s| !units.has_gate(&s.template.gate));
        self.loaded = self.loaded.without(units);
        self.held = self.held.without(units);
    }

    /// The creates this engine committed into gates other engines run,
    /// since it was last asked: each must reach the gate's engine
    /// (`appeared`), or that engine must `reload` the gate.
    pub fn take_notices(&mut self) -> Vec<Notice> {
        std::mem::take(&mut self.notices)
    }

    /// Tasks another engine created in this engine's gates (its notices,
    /// late, twice or out of order as they may come): each gate reads them
    /// from the store at its next turn.
    pub fn appeared(&mut self, now: Timestamp, notices: impl IntoIterator<Item = Notice>) {
        for notice in notices {
            if !self.gate_names.contains_key(&notice.gate.0) {
                continue;
            }
            // Its creator counted it: the counters are read again.
            self.recount.insert(notice.gate.0);
            self.core.handle_input(
                now,
                Input::Appeared {
                    gate: notice.gate,
                    key: notice.key.map(Arc::from),
                    order: notice.order,
                },
            );
        }
    }

    /// Reads the gate's pending tasks again (notices may have been lost).
    pub fn reload(&mut self, now: Timestamp, gate: GateId) {
        self.core.handle_input(now, Input::Reload(gate));
        self.recount.insert(gate.0);
    }

    /// `reload` of every gate this engine runs.
    pub fn reload_all(&mut self, now: Timestamp) {
        let gates: Vec<u32> = self.gate_names.keys().copied().collect();
        for gate in gates {
            self.reload(now, GateId(gate));
        }
    }

    /// `Moved` when the gate's unit is not this engine's to serve.
    pub(super) fn moved(&self, gate: &str) -> Option<ShellError> {
        (!self.held.has_gate(gate)).then(|| ShellError::Moved {
            gate: gate.to_string(),
        })
    }

    /// `Moved` when the task's gate is not this engine's to serve. The
    /// record is only looked at: a refused command writes nothing back,
    /// and what this turn changed in it before (a report) stays.
    /// A `report` on work in flight is taken while the unit is being handed
    /// over (the drain waits for such reports); a command is not.
    pub(super) fn moved_task(
        &self,
        turn: &mut Turn<'_>,
        id: TaskId,
        report: bool,
    ) -> Result<Option<ShellError>, StoreError> {
        let serves = |gate: &str| {
            if report {
                self.runs(gate)
            } else {
                self.held.has_gate(gate)
            }
        };
        Ok(turn
            .look(id.0)?
            .filter(|t| !serves(&t.gate))
            .map(|t| ShellError::Moved {
                gate: t.gate.clone(),
            }))
    }

    /// Whether reports on the gate's tasks are this engine's to apply.
    pub(super) fn runs(&self, gate: &str) -> bool {
        self.loaded.has_gate(gate)
    }
}
