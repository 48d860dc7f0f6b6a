//! One turn of the engine: reports and commands in, the core's decisions
//! applied, one commit, answers and attempts out.

use super::*;

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
        for report in &reports {
            // Whatever the attempt still waited for, it waits no more.
            self.forget_asks(report.task);
        }
        // A turn later than the engine asked for (after its last turn) is
        // time it decided nothing, as during a commit: the driver was busy
        // elsewhere or had no CPU.
        if let (Some(wanted), Some(last)) = (self.poll_timeout(), self.last_turn)
            && last < wanted
            && wanted < now
        {
            self.lookahead.busy(wanted, now);
        }
        self.last_turn = Some(now);
        let lookahead = self.lookahead.at(now);
        self.core.set_lookahead(lookahead);
        // A timer that starts nothing (a rate-limited wake, say) needs no commit.
        if commands.is_empty() && reports.is_empty() {
            if !self.shutting_down {
                self.core.handle_timeout(now);
            }
            if !self.core.has_effects() {
                return Ok(Vec::new());
            }
        }
        let creates = (commands.iter())
            .map(|command| match command {
                Command::CreateTasks { tasks, .. } => tasks.len(),
                _ => 0,
            })
            .sum();
        if creates > 0 {
            // Before the transaction begins (see `ensure_task_ids`).
            self.ensure_task_ids(now, creates)?;
        }
        let store = self.store.clone();
        let mut replies: Vec<Box<dyn FnOnce() + Send>> = Vec::new();
        // The engine has its kept records back only if this turn commits.
        let mut kept = self.kept.lend();
        let plans = store.write(|tx| {
            let began = clock::instant();
            let mut turn = Turn::new(tx, now, kept.lend());
            self.lock_plugins_first(&mut turn, &commands)?;
            self.recount_gates(&mut turn)?;
            turn.prefetch(reports.iter().map(|r| r.task.0))?;
            turn.prefetch_attempts(reports.iter().map(|r| (r.task.0, r.attempt)))?;
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
            self.last_work = clock::instant().saturating_duration_since(began);
            Ok((
                std::mem::take(&mut turn.plans),
                std::mem::take(&mut turn.notices),
                turn.kept.lend(),
            ))
        });
        let plans = match plans {
            Ok((plans, notices, kept)) => {
                self.kept = kept;
                self.notices.extend(notices);
                self.turn_began = Some(now);
                plans
            }
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

    pub(super) fn finish_turn(&mut self, turn: &mut Turn<'_>) -> Result<(), StoreError> {
        turn.flush()?;
        let mut refs: Vec<(String, i64)> = turn
            .plugin_refs
            .drain()
            .filter(|(_, delta)| *delta != 0)
            .collect();
        refs.sort_unstable();
        turn.tx.add_plugin_refs(&refs)?;
        let mut counted: Vec<(u32, CountsDelta)> = turn
            .counted
            .drain()
            .filter(|(_, delta)| !delta.is_zero())
            .collect();
        counted.sort_unstable_by_key(|(gate, _)| *gate);
        turn.tx.add_counts(&counted)?;
        turn.tx.notify(&turn.notices)
    }

    /// Reads again the counters of the gates other engines counted into
    /// (`recount`), before this turn changes them.
    pub(super) fn recount_gates(&mut self, turn: &mut Turn<'_>) -> Result<(), StoreError> {
        if self.recount.is_empty() {
            return Ok(());
        }
        for (gate, counts) in turn.tx.all_counts()? {
            if self.recount.contains(&gate) && self.gate_names.contains_key(&gate) {
                self.counts.insert(gate, counts);
            }
        }
        self.recount.clear();
        Ok(())
    }

    /// Counts a plugin task becoming unfinished (`+1`) or finished (`-1`), so a
    /// plugin still in use cannot be deleted.
    pub(super) fn plugin_ref(&mut self, turn: &mut Turn<'_>, key: Option<String>, delta: i64) {
        let Some(key) = key else {
            return;
        };
        if let Some(plugin) = self.plugins.get_mut(&key) {
            plugin.unfinished = plugin.unfinished.saturating_add_signed(delta);
            *turn.plugin_refs.entry(key).or_default() += delta;
        }
    }

    pub(super) fn count(&mut self, turn: &mut Turn<'_>, gate_id: u32, f: impl FnOnce(&mut Counts)) {
        if self.gate_names.contains_key(&gate_id) {
            let delta = CountsDelta::of(f);
            self.counts.entry(gate_id).or_default().apply(&delta);
            turn.counted.entry(gate_id).or_default().add(&delta);
        }
    }

    pub(super) fn apply_report(
        &mut self,
        turn: &mut Turn<'_>,
        mut report: Report,
    ) -> Result<(), StoreError> {
        let id = report.task.0;
        // A report on a gate of a unit handed over is the next owner's: not
        // a byte of its task is written here (its record is only looked at).
        if turn.look(id)?.is_some_and(|t| !self.runs(&t.gate)) {
            return Ok(());
        }
        // A report that is not about the task's open attempt (a callback settled
        // it first, or it is from before a restart) changes nothing.
        let current = turn.task(id)?.map(|t| (t.attempts, t.state));
        if current != Some((report.attempt, TaskState::Running)) {
            return Ok(());
        }
        let Some(mut record) = turn.attempt(id, report.attempt)? else {
            return Ok(());
        };
        if record.ended_at.is_some() {
            return Ok(());
        }
        if report.status.is_some() {
            self.core.handle_input(
                turn.now,
                Input::Answered {
                    task: report.task,
                    attempt: report.attempt,
                    latency: Duration::from_millis(report.latency_ms),
                    quota: report.quota,
                },
            );
        }
        if report.outcome == Outcome::Succeeded && !report.next.is_empty() {
            // A plugin's next steps: created with the success, or the attempt
            // fails (all or nothing, like a completion's).
            // Refused, and whether only for now (`Moved`).
            let created = match (self.next_reader)(&report.next) {
                Ok(tasks) => {
                    let parent = turn.must_task(id)?.clone();
                    self.create_next(turn, &parent, tasks)?
                        .map(|_| ())
                        .map_err(|e| (matches!(e, ShellError::Moved { .. }), e.in_list("next")))
                }
                Err(e) => Err((false, e)),
            };
            match created {
                Ok(()) => {}
                // A next task with a coalesce key is its gate's engine's to
                // create, and that gate is changing hands: not the plugin's
                // fault, so not final. The task runs again (its next owner's).
                Err((true, why)) => {
                    report.outcome = Outcome::Interrupted;
                    report.error = Some(format!(
                        "the plugin's next tasks could not be created now ({why}); run again"
                    ));
                }
                Err((false, why)) => {
                    report.outcome = Outcome::Rejected;
                    report.error = Some(format!("the plugin's next tasks were refused: {why}"));
                }
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
            record.logs = std::mem::take(&mut report.logs);
            turn.put_attempt(id, &record)?;
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
        turn.put_attempt(id, &record)?;
        let mut plugin = false;
        if let Some(task) = turn.task(id)? {
            plugin = task.plugin.is_some();
            if !matches!(report.outcome, Outcome::Succeeded | Outcome::Withdrawn) {
                task.last_error = report.error.clone();
            }
        }
        let (task, outcome) = (report.task, report.outcome);
        let ended = if plugin {
            Input::PluginEnded { task, outcome }
        } else {
            Input::AttemptEnded { task, outcome }
        };
        self.core.handle_input(turn.now, ended);
        self.apply_effects(turn)
    }

    /// Counts an attempt's end in the gate's recent series and metrics.
    pub(super) fn observe(
        &mut self,
        turn: &mut Turn<'_>,
        id: u64,
        report: &Report,
    ) -> Result<(), StoreError> {
        let Some(gate_id) = turn.task(id)?.map(|t| t.gate_id) else {
            return Ok(());
        };
        if report.outcome == Outcome::Withdrawn {
            // Never sent: not a dispatch.
            return Ok(());
        }
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
        let stats = self
            .stats
            .entry(gate_id)
            .or_insert_with(|| metrics.gate(name));
        stats.ended(turn.now, outcome, verdict, backlog);
        if let Some(limit) = self.core.adaptive_limit(GateId(gate_id)) {
            stats.series.limit(turn.now, limit);
        }
        Ok(())
    }

    /// Executes the core's effects into the transaction, in order, and moves
    /// schedules on whose occurrences ended, until nothing is left to do.
    pub(super) fn apply_effects(&mut self, turn: &mut Turn<'_>) -> Result<(), StoreError> {
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
}
