//! The core's effects written into the turn's transaction, and the plan of
//! each attempt that starts.

use super::*;

impl Engine {
    /// Takes the pending entries of the tasks in `run` (starts queued one
    /// after another) out of the store at once.
    fn unpend(&mut self, turn: &mut Turn<'_>, run: &[(TaskId, GateId)]) -> Result<(), StoreError> {
        turn.prefetch(run.iter().map(|(task, _)| task.0))?;
        let mut entries = Vec::with_capacity(run.len());
        for &(task, gate) in run {
            let record = turn.must_task(task.0)?;
            entries.push(PendingEntry {
                gate,
                key: record.key.clone(),
                due: Timestamp(record.order_ms()),
                task,
            });
        }
        let removed = turn.tx.remove_pending_many(&entries)?;
        for (entry, removed) in entries.iter().zip(removed) {
            turn.unpended.insert(entry.task.0, removed);
        }
        Ok(())
    }

    pub(super) fn drain_effects(&mut self, turn: &mut Turn<'_>) -> Result<(), StoreError> {
        while let Some(effect) = self.core.poll_effect() {
            if let Some(task) = effect.task()
                && !turn.holds(task.0)
            {
                let queued = self.core.effect_tasks().map(|t| t.0);
                turn.prefetch(std::iter::once(task.0).chain(queued))?;
            }
            match effect {
                Effect::Load {
                    gate,
                    key,
                    from,
                    until,
                    limit,
                } => {
                    let (orders, next) =
                        turn.tx
                            .pending_range(gate, key.as_deref(), from, until, limit)?;
                    turn.prefetch(orders.iter().map(|(_, id)| id.0))?;
                    let mut tasks = Vec::with_capacity(orders.len());
                    for (_, id) in orders {
                        let mut task = queued_of(turn.peek(id.0)?);
                        // One copy of the key for all its tasks.
                        task.key.clone_from(&key);
                        tasks.push(task);
                    }
                    let loaded = Input::Loaded {
                        gate,
                        key,
                        tasks,
                        next,
                    };
                    self.core.handle_input(turn.now, loaded);
                }
                Effect::LoadKeys { gate } => {
                    let keys = turn
                        .tx
                        .pending_keys(gate)?
                        .into_iter()
                        .map(|(key, first)| (key.map(std::sync::Arc::from), first))
                        .collect();
                    self.core
                        .handle_input(turn.now, Input::KeysLoaded { gate, keys });
                }
                Effect::Start {
                    task,
                    gate,
                    attempt,
                    at,
                } => {
                    // When it leaves: the turn's time, or later (its slot
                    // time, or its due time when started ahead of it).
                    let now = at.max(turn.now);
                    if !turn.unpended.contains_key(&task.0) {
                        let run = std::iter::once((task, gate)).chain(self.core.next_starts());
                        let run: Vec<(TaskId, GateId)> = run.collect();
                        self.unpend(turn, &run)?;
                    }
                    let removed = turn.unpended.remove(&task.0) == Some(true);
                    assert!(removed, "started a task that was not pending");
                    let record = turn.must_task(task.0)?;
                    let due = record.due_at;
                    record.state = TaskState::Running;
                    record.attempts = record.attempt_offset + attempt;
                    record.first_attempt_at.get_or_insert(now.as_ms());
                    let number = record.attempts;
                    let (token, token_hash) = self.tokens.next();
                    let mut plan = self.plan(record, number);
                    plan.completion_token = token;
                    // The slot time on record (`started_at`): in a
                    // cluster it leaves only if this node's mark covers it.
                    plan.release_at = now;
                    turn.tx.set_running(task.0, true)?;
                    turn.put_attempt(
                        task.0,
                        &AttemptRecord {
                            token_hash: Some(token_hash),
                            ..AttemptRecord::started(number, now.as_ms())
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
                        let stats = self
                            .stats
                            .entry(gate.0)
                            .or_insert_with(|| metrics.gate(name));
                        stats.started(now, now.as_ms().saturating_sub(due), backlog);
                        if let Some(limit) = self.core.adaptive_limit(gate) {
                            stats.series.limit(now, limit);
                        }
                    }
                    turn.plans.push(plan);
                }
                Effect::Requeue {
                    task,
                    gate,
                    due,
                    retry,
                } => {
                    let record = turn.must_task(task.0)?;
                    record.state = TaskState::Scheduled;
                    // A retry waits for its backoff: due later, in due order
                    // (a start that never left keeps its due time).
                    record.due_at = due.as_ms();
                    record.order_at = None;
                    if !retry {
                        // That attempt never left: the next start is made
                        // under its number.
                        record.attempts = record.attempts.saturating_sub(1);
                        if record.attempts <= record.attempt_offset {
                            record.first_attempt_at = None;
                        }
                    }
                    let key = record.key.clone();
                    turn.tx.insert_pending(gate, key.as_deref(), due, task)?;
                    turn.tx.set_running(task.0, false)?;
                    self.count(turn, gate.0, |c| {
                        c.running = c.running.saturating_sub(1);
                        c.pending += 1;
                        if retry {
                            c.retried += 1;
                        } else {
                            // The attempt never left: it is made again.
                            c.attempts = c.attempts.saturating_sub(1);
                        }
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
                    let mut why = "the lease ran out before the endpoint reported back";
                    if let Some(mut record) = turn.attempt(task.0, number)? {
                        // No lease on record: an attempt of a node that lost
                        // the gates, held here until its timeout (boot).
                        let (outcome, error) = match record.lease_until {
                            Some(_) => ("lease_expired", why),
                            None => {
                                why = HANDED_OVER;
                                ("interrupted", why)
                            }
                        };
                        record.ended_at = Some(now.as_ms());
                        record.outcome = Some(outcome.into());
                        record.error = Some(error.into());
                        turn.put_attempt(task.0, &record)?;
                    }
                    turn.must_task(task.0)?.last_error = Some(why.into());
                }
                Effect::Expire { task, gate, due } => {
                    let now = turn.now;
                    let key = turn.must_task(task.0)?.key.clone();
                    turn.tx.remove_pending(gate, key.as_deref(), due, task)?;
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

    pub(super) fn plan(&self, record: &TaskRecord, attempt: u32) -> Plan {
        let gate = self.gates.get(&record.gate);
        Plan {
            task: TaskId(record.id),
            attempt,
            gate: record.gate.clone(),
            gate_id: GateId(record.gate_id),
            action: targets::action(record),
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
                    .filter_map(|s| crate::attempt::sign::SigningKey::parse(s).ok())
                    .collect()
            },
            idempotency_key: match (&record.schedule, &record.idempotency_key) {
                (Some(_), Some(key)) => key.clone(),
                _ => TaskId(record.id).to_string(),
            },
            allowed_hosts: gate.map(|g| g.allowed_hosts.clone()).unwrap_or_default(),
        }
    }
}
