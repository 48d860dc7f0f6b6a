//! The API's commands as the engine applies them: gates, tasks (and the
//! `next` tasks a completion creates), cancel and retry; the checks that
//! need stored state.

use std::collections::HashSet;

use super::*;

impl Engine {
    pub(super) fn apply_command(
        &mut self,
        turn: &mut Turn<'_>,
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
        let named = match &command {
            Command::PutGate { name, .. }
            | Command::DeleteGate { name, .. }
            | Command::SetPaused { name, .. } => Some(name.as_str()),
            // A schedule is its gate's engine's: the gate it has now, if
            // this engine runs it (a move to another gate is checked there).
            Command::PutSchedule { name, spec, .. } => Some(
                (self.schedules.get(name))
                    .map_or(spec.template.gate.as_str(), |s| s.template.gate.as_str()),
            ),
            _ => None,
        };
        let refused = if self.shutting_down && !matches!(command, Command::Live { .. }) {
            Some(ShellError::ShuttingDown)
        } else {
            named.and_then(|gate| self.moved(gate))
        };
        if let Some(error) = refused {
            return Ok(refuse(command, error));
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
                let result = self.create_tasks(turn, tasks)?;
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
            Command::ReplayTasks {
                ids,
                job,
                reply: to,
            } => {
                // A page is replayed whole or not at all: a task of a gate
                // moving to another engine would be left out, and the page
                // counted done without it. The job pauses instead (`Moved`
                // is a 503 to it) and does the page again later.
                for &id in &ids {
                    if let Some(moved) = self.moved_task(turn, id, false)? {
                        return Ok(reply(to, Err(moved)));
                    }
                }
                let mut replayed = 0;
                for id in ids {
                    replayed += usize::from(self.retry_task(turn, id)?.is_ok());
                }
                if let Some(mut job) = job {
                    job.replayed += replayed as u64;
                    turn.tx.put_replay(&job)?;
                }
                reply(to, Ok(replayed))
            }
            Command::PutReplay {
                record,
                forget,
                reply: to,
            } => {
                turn.tx.put_replay(&record)?;
                for id in forget {
                    turn.tx.delete_replay(&id)?;
                }
                reply(to, Ok(()))
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
            // The runner applies these between turns (`Runner::order`).
            Command::Units { reply: to, .. } => reply(
                to,
                Err(ShellError::Invalid {
                    at: None,
                    message: "units are changed between turns".into(),
                }),
            ),
        })
    }

    pub(super) fn live(&self, now: Timestamp, only: Option<&str>) -> Vec<GateLive> {
        self.gates
            .values()
            .filter(|g| only.is_none_or(|name| g.name == name))
            .filter_map(|g| {
                let counts = self.counts.get(&g.id).copied().unwrap_or_default();
                Some(GateLive {
                    record: g.clone(),
                    view: self.core.view(now, GateId(g.id))?,
                    keys: match only {
                        Some(_) => self.core.busiest_keys(now, GateId(g.id), BUSIEST_KEYS),
                        None => Vec::new(),
                    },
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

    pub(super) fn put_gate(
        &mut self,
        turn: &mut Turn<'_>,
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
            quota_headers: spec.quota_headers,
            adaptive: spec.adaptive.map(|a| AdaptiveRecord {
                min: a.min,
                max: a.max,
            }),
            keys: spec.keys,
            priority_aging_ms: spec.priority_aging.map(crate::core::time::duration_ms),
            signing_secrets: spec.signing_secrets.unwrap_or(secrets),
            paused,
            created_at,
            updated_at: now,
        };
        turn.tx.put_gate(&record)?;
        if created {
            // A new id: nobody else counts into it yet.
            self.counts.insert(id, Counts::default());
            turn.tx.put_counts(id, &Counts::default())?;
        }
        self.core.handle_input(
            turn.now,
            Input::UpsertGate {
                gate: GateId(id),
                limits: record.limits(),
                keys: record.key_policy(),
                paused,
                ramp: false,
            },
        );
        self.gate_names.insert(id, name.clone());
        self.gates.insert(name, record.clone());
        Ok((record, created))
    }

    pub(super) fn delete_gate(
        &mut self,
        turn: &mut Turn<'_>,
        name: &str,
        force: bool,
    ) -> Result<Result<(), ShellError>, StoreError> {
        let Some(gate) = self.gates.get(name).cloned() else {
            return Ok(Err(ShellError::NotFound {
                what: format!("gate {name:?}"),
            }));
        };
        if self.shares_writers {
            // Other nodes create into it too: from here on they wait for
            // this commit (then find no gate), and what they committed
            // before is read below, its counters included.
            turn.tx.lock_gate(name)?;
            self.recount.insert(gate.id);
            self.recount_gates(turn)?;
        }
        let counts = self.counts.get(&gate.id).copied().unwrap_or_default();
        if counts.unfinished() > 0 && !force {
            return Ok(Err(ShellError::Conflict(format!(
                "gate {name:?} holds {} unfinished tasks; delete with ?force=true to cancel them",
                counts.unfinished()
            ))));
        }
        for (key, due, id) in turn.tx.all_pending(GateId(gate.id))? {
            turn.tx
                .remove_pending(GateId(gate.id), key.as_deref(), due, id)?;
            let id = id.0;
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
        self.pacers.remove(&gate.id);
        self.metrics.forget(&gate.name);
        Ok(Ok(()))
    }

    /// Creates tasks, all or none. A fault names the task by its index.
    pub(super) fn create_tasks(
        &mut self,
        turn: &mut Turn<'_>,
        tasks: Vec<NewTask>,
    ) -> Result<Result<Vec<Created>, ShellError>, StoreError> {
        // Check everything first: a batch is all or none. A batch mostly
        // names one endpoint: each gate's origins are checked once.
        let mut allowed: HashSet<(&str, &str)> = HashSet::new();
        // Gates another engine runs, as stored: where several engines
        // write one store a task may be created into them (a foreign
        // create: its rows, then a notice for their engine).
        let mut foreign: HashMap<String, GateRecord> = HashMap::new();
        if self.shares_writers {
            // The plugins as stored (another node may have added or deleted
            // one), each share-locked to the commit: a delete on another
            // node waits for it, and counts its tasks.
            let keys: std::collections::BTreeSet<String> = tasks
                .iter()
                .filter_map(|t| t.target.plugin().map(|p| p.key()))
                .collect();
            for key in keys {
                match turn.tx.plugin(&key)? {
                    Some(mut plugin) => {
                        let counted = turn.plugin_refs.get(&key).copied().unwrap_or(0);
                        plugin.unfinished = plugin.unfinished.saturating_add_signed(counted);
                        self.plugins.insert(key, plugin);
                    }
                    None => {
                        self.plugins.remove(&key);
                    }
                }
            }
        }
        for task in &tasks {
            if self.held.has_gate(&task.gate) || foreign.contains_key(&task.gate) {
                continue;
            }
            if let Some(moved) = self.moved(&task.gate)
                && (!self.shares_writers || task.coalesce_key.is_some())
            {
                // A coalesce key replaces a task of the gate: its engine's to do.
                return Ok(Err(moved));
            }
            if let Some(gate) = turn.tx.gate(&task.gate)? {
                foreign.insert(task.gate.clone(), gate);
            }
        }
        let held = self.held;
        for (i, task) in tasks.iter().enumerate() {
            let Some(gate) = gate_of(held, &self.gates, &foreign, &task.gate) else {
                return Ok(Err(ShellError::NoGate {
                    at: At::item(i, "gate"),
                    gate: task.gate.clone(),
                }));
            };
            let origin = match &task.target {
                Target::Webhook(w) => origin(&w.url),
                Target::Plugin(_) => None,
            };
            if let Some(origin) = origin
                && allowed.contains(&(task.gate.as_str(), origin))
            {
                continue;
            }
            if let Err(e) = self.check_target(&task.target, gate, i) {
                return Ok(Err(e));
            }
            if let Some(origin) = origin {
                allowed.insert((task.gate.as_str(), origin));
            }
        }
        // A lone task's record goes back to the API, which shows it; a
        // batch's are moved into the turn (where a start in this same turn
        // finds them, so each is written once), not copied.
        let lone = tasks.len() == 1;
        let mut out = Vec::with_capacity(tasks.len());
        turn.tasks.reserve(tasks.len());
        for task in tasks {
            let id_candidate = self.next_task_id(turn.now)?;
            let Some(gate) = gate_of(held, &self.gates, &foreign, &task.gate) else {
                continue;
            };
            let gate_id = gate.id;
            if let Some(key) = &task.idempotency_key
                && let Some(existing) = turn.tx.claim_idempotent(gate_id, key, id_candidate)?
            {
                // Read, not taken into the turn (which writes back what it
                // holds): the task may be another engine's to write, and a
                // copy written back could undo its later change.
                let found = match turn.tasks.get(&existing) {
                    Some(record) => Some(lone.then(|| record.clone())),
                    None => turn.tx.task(existing)?.map(|record| lone.then_some(record)),
                };
                if let Some(task) = found {
                    out.push(Created {
                        id: TaskId(existing),
                        task,
                        replayed: true,
                    });
                    continue;
                }
                // The key named a task that is gone: now it names this one.
                turn.tx.put_idempotent(gate_id, key, id_candidate)?;
            }
            let id = id_candidate;
            // A task of the same coalesce key that has not started gives
            // way (within a batch too: the earlier item is in this turn).
            let mut supersedes = None;
            if let Some(ck) = &task.coalesce_key
                && let Some(old) = turn.tx.coalesced(gate_id, ck)?
                && self.supersede(turn, old, id)?
            {
                supersedes = Some(old);
            }
            let Some(gate) = gate_of(held, &self.gates, &foreign, &task.gate) else {
                continue;
            };
            let backoff = task
                .backoff
                .unwrap_or_default()
                .over(gate.retry.policy().backoff);
            let retry = RetryRecord {
                max_attempts: task.max_attempts.unwrap_or(gate.retry.max_attempts),
                initial_ms: backoff.initial.as_millis() as u64,
                max_ms: backoff.max.as_millis() as u64,
                multiplier: backoff.multiplier,
                jitter: backoff.jitter,
                max_retry_duration_ms: task
                    .max_retry_duration
                    .map(|d| d.as_millis() as u64)
                    .or(gate.retry.max_retry_duration_ms),
            };
            let plugin = task.target.plugin().map(|p| p.key());
            let due = task.due.at(turn.now);
            let mut record = TaskRecord {
                id,
                gate: task.gate.clone(),
                gate_id,
                state: TaskState::Scheduled,
                webhook: None,
                plugin: None,
                created_at: turn.now.as_ms(),
                scheduled_at: due.as_ms(),
                due_at: due.as_ms(),
                order_at: None,
                timeout_ms: task
                    .timeout
                    .map_or(gate.timeout_ms, |d| d.as_millis() as u64),
                retry,
                expires_at: task.expires_after.map(|d| due.plus(d).as_ms()),
                expires_after_ms: task.expires_after.map(|d| d.as_millis() as u64),
                idempotency_key: task.idempotency_key.clone(),
                labels: task.labels,
                key: task.key.clone(),
                coalesce_key: task.coalesce_key.clone(),
                priority: task.priority.unwrap_or(crate::core::DEFAULT_PRIORITY),
                supersedes,
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
            (record.webhook, record.plugin) = targets::to_records(task.target);
            if let Some(call) = &mut record.plugin {
                call.sha256 = plugin
                    .as_ref()
                    .and_then(|key| self.plugins.get(key))
                    .map(|p| p.sha256.clone());
            }
            record.set_due(due.as_ms(), turn.now.as_ms(), gate.limits().priority_aging);
            self.plugin_ref(turn, plugin, 1);
            if let Some(ck) = &task.coalesce_key {
                turn.tx.put_coalesced(gate_id, ck, id)?;
            }
            turn.tx.index_task(gate_id, id)?;
            turn.tx.insert_pending(
                GateId(gate_id),
                record.key.as_deref(),
                Timestamp(record.order_ms()),
                TaskId(id),
            )?;
            if held.has_gate(&record.gate) {
                self.count(turn, gate_id, |c| c.pending += 1);
                self.core
                    .handle_input(turn.now, Input::Enqueue(queued_of(&record)));
            } else {
                let delta = CountsDelta::of(|c| c.pending += 1);
                turn.counted.entry(gate_id).or_default().add(&delta);
                turn.notices.push(Notice {
                    unit: crate::core::units::unit_of(&record.gate, crate::core::units::UNITS),
                    gate: GateId(gate_id),
                    key: record.key.clone(),
                    order: (Timestamp(record.order_ms()), TaskId(id)),
                });
            }
            out.push(Created {
                id: TaskId(id),
                task: lone.then(|| record.clone()),
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
    pub(super) fn create_next(
        &mut self,
        turn: &mut Turn<'_>,
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
                    at: At::item(i, "gate"),
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
                at: At::whole("next"),
                message: format!(
                    "task {} is {} generations below its root; a next chain is at most {MAX_DEPTH} deep",
                    TaskId(parent.id),
                    parent.depth
                ),
            }));
        }
        let root = parent.root_id();
        let asked = i64::try_from(tasks.len()).unwrap_or(i64::MAX);
        // The budget is taken first (shared with writers on other nodes)
        // and what was not used is given back.
        if turn
            .tx
            .add_descendants(root, asked, self.max_descendants)?
            .is_none()
        {
            let had = turn.tx.descendants(root)?;
            return Ok(Err(ShellError::Exhausted {
                at: At::whole("next"),
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
        let created = self.create_tasks(turn, tasks)?;
        let new = created
            .as_ref()
            .map_or(0, |created| created.iter().filter(|c| !c.replayed).count());
        let unused = asked - i64::try_from(new).unwrap_or(asked);
        if unused > 0 {
            turn.tx
                .add_descendants(root, -unused, self.max_descendants)?;
        }
        Ok(created)
    }

    /// A new task's id: above every id this engine gave before, and about
    /// its creation time (`ms << 16`), so ids sort by creation. With one
    /// writer (redb) the engine counts them itself; where several engines
    /// write (PostgreSQL) they come in blocks the store reserves, taken
    /// again when used up or `ID_BLOCK_AGE` old, so two nodes' ids never
    /// meet and still sort by creation to within that age.
    pub(super) fn next_task_id(&mut self, now: Timestamp) -> Result<u64, StoreError> {
        if !self.shares_writers {
            let id = (now.as_ms() << 16).max(self.last_task_id + 1);
            self.last_task_id = id;
            return Ok(id);
        }
        self.ensure_task_ids(now, 1)?;
        self.ids.next().ok_or_else(|| StoreError::Corrupt {
            table: "meta",
            detail: "the store reserved no task ids".into(),
        })
    }

    /// Makes sure `n` task ids are at hand where the store has several
    /// writers: a new block (of `n` at least) if fewer are left or the
    /// block is `ID_BLOCK_AGE` old. A turn calls it for its creates before
    /// its transaction begins: a reservation is a round trip on another
    /// connection, which inside the transaction would hold it open (and
    /// its locks held) meanwhile.
    pub(super) fn ensure_task_ids(&mut self, now: Timestamp, n: usize) -> Result<(), StoreError> {
        if !self.shares_writers {
            return Ok(());
        }
        let n = u64::try_from(n).unwrap_or(u64::MAX);
        let fresh = now.as_ms() < self.ids_at.saturating_add(ID_BLOCK_AGE_MS);
        if !fresh || self.ids.end.saturating_sub(self.ids.start) < n {
            let floor = now.as_ms() << 16;
            self.ids = self.store.reserve_task_ids(ID_BLOCK.max(n), floor)?;
            self.ids_at = now.as_ms();
        }
        Ok(())
    }

    pub(super) fn cancel_task(
        &mut self,
        turn: &mut Turn<'_>,
        id: TaskId,
    ) -> Result<Result<TaskRecord, ShellError>, StoreError> {
        let now = turn.now.as_ms();
        if let Some(moved) = self.moved_task(turn, id, false)? {
            return Ok(Err(moved));
        }
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
        task.finished_at = Some(now);
        Ok(Ok(self.end_pending(turn, id, TaskState::Cancelled)?))
    }

    /// Replaces a task that has not started with a newer one of the same
    /// coalesce key (`by`): it ends superseded. False when it has started
    /// (or ended) since the key last named it.
    fn supersede(&mut self, turn: &mut Turn<'_>, old: u64, by: u64) -> Result<bool, StoreError> {
        let now = turn.now.as_ms();
        let Some(task) = turn.task(old)? else {
            return Ok(false);
        };
        if task.state != TaskState::Scheduled || task.first_attempt_at.is_some() {
            return Ok(false);
        }
        task.finished_at = Some(now);
        task.last_error = Some(format!("superseded by task {}", TaskId(by)));
        self.end_pending(turn, TaskId(old), TaskState::Superseded)?;
        Ok(true)
    }

    /// Ends a pending task (already read into the turn) as `state`: out of
    /// the pending index and the core's window, counted.
    fn end_pending(
        &mut self,
        turn: &mut Turn<'_>,
        id: TaskId,
        state: TaskState,
    ) -> Result<TaskRecord, StoreError> {
        let task = turn.must_task(id.0)?;
        let (gate_id, due, key) = (task.gate_id, task.order_ms(), task.key.clone());
        task.state = state;
        let record = task.clone();
        if let Some(schedule) = record.schedule.clone() {
            turn.ended.push((id.0, state, schedule));
        }
        self.plugin_ref(turn, record.plugin.as_ref().map(|p| p.key()), -1);
        turn.tx
            .remove_pending(GateId(gate_id), key.as_deref(), Timestamp(due), id)?;
        self.count(turn, gate_id, |c| {
            c.pending = c.pending.saturating_sub(1);
            match state {
                TaskState::Superseded => c.superseded += 1,
                _ => c.cancelled += 1,
            }
        });
        self.core.handle_input(
            turn.now,
            Input::Dequeue {
                gate: GateId(gate_id),
                key: key.map(std::sync::Arc::from),
                order: (Timestamp(due), id),
            },
        );
        Ok(record)
    }

    pub(super) fn retry_task(
        &mut self,
        turn: &mut Turn<'_>,
        id: TaskId,
    ) -> Result<Result<TaskRecord, ShellError>, StoreError> {
        let now = turn.now;
        let gates_known: Vec<u32> = self.gate_names.keys().copied().collect();
        if let Some(moved) = self.moved_task(turn, id, false)? {
            return Ok(Err(moved));
        }
        // A plugin task run again runs its version as stored now (uploaded
        // again since, perhaps), as a create would take it.
        let plugin = turn
            .task(id.0)?
            .and_then(|t| t.plugin.as_ref().map(|p| p.key()));
        let sha256 = match &plugin {
            Some(key) if self.shares_writers => turn.tx.plugin(key)?.map(|p| p.sha256),
            Some(key) => self.plugins.get(key).map(|p| p.sha256.clone()),
            None => None,
        };
        let Some(task) = turn.task(id.0)? else {
            return Ok(Err(ShellError::NotFound {
                what: format!("task {id}"),
            }));
        };
        if !matches!(
            task.state,
            TaskState::Failed | TaskState::Expired | TaskState::Superseded
        ) {
            return Ok(Err(ShellError::Conflict(format!(
                "task {id} is {}; only failed, expired or superseded tasks can be retried",
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
        let aging = self
            .gate_names
            .get(&task.gate_id)
            .and_then(|name| self.gates.get(name))
            .map_or(
                Duration::from_millis(crate::store::DEFAULT_PRIORITY_AGING_MS),
                |g| g.limits().priority_aging,
            );
        if let Some(expires_at) = task.expires_at {
            // As long as it was made with: retries moved its due time, not
            // its window. (A record from before the window was kept: its
            // first life tells it exactly, a later one as well as it can.)
            let window = task
                .expires_after_ms
                .unwrap_or(if task.attempt_offset == 0 {
                    expires_at.saturating_sub(task.scheduled_at)
                } else {
                    expires_at.saturating_sub(task.due_at.max(task.scheduled_at))
                });
            task.expires_at = Some(now.as_ms().saturating_add(window));
        }
        task.state = TaskState::Scheduled;
        task.attempt_offset = task.attempts;
        task.first_attempt_at = None;
        task.set_due(now.as_ms(), now.as_ms(), aging);
        task.finished_at = None;
        if let Some(call) = &mut task.plugin {
            call.sha256 = sha256;
        }
        let record = task.clone();
        self.plugin_ref(turn, record.plugin.as_ref().map(|p| p.key()), 1);
        turn.tx.insert_pending(
            GateId(record.gate_id),
            record.key.as_deref(),
            Timestamp(record.order_ms()),
            id,
        )?;
        self.count(turn, record.gate_id, |c| {
            c.pending += 1;
            match was {
                TaskState::Failed => c.failed = c.failed.saturating_sub(1),
                TaskState::Superseded => c.superseded = c.superseded.saturating_sub(1),
                _ => c.expired = c.expired.saturating_sub(1),
            }
        });
        self.core
            .handle_input(now, Input::Enqueue(queued_of(&record)));
        Ok(Ok(record))
    }
}

/// Keys a gate's view lists.
const BUSIEST_KEYS: usize = 10;

pub(super) fn queued_of(record: &TaskRecord) -> QueuedTask {
    let mut q = record.queued();
    q.attempts = record.attempts.saturating_sub(record.attempt_offset);
    q
}

pub(super) fn retry_record(policy: &crate::core::RetryPolicy) -> RetryRecord {
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
    /// gate, a plugin against the registry. Errors name the field at fault,
    /// of the command's task number `item`.
    pub(super) fn check_target(
        &self,
        target: &Target,
        gate: &GateRecord,
        item: usize,
    ) -> Result<(), ShellError> {
        match target {
            Target::Webhook(w) => check_host(&w.url, gate).map_err(|message| ShellError::Invalid {
                at: Some(At::item(item, "webhook.url")),
                message,
            }),
            Target::Plugin(p) if self.plugins.contains_key(&p.key()) => Ok(()),
            Target::Plugin(p) => Err(ShellError::NoPlugin {
                at: At::item(item, "plugin"),
                key: p.key(),
            }),
        }
    }
}

/// The scheme and authority of an `http` or `https` URL, spelt so plainly
/// (letters, digits, `.`, `-`, `:`, `[`, `]`, ended by `/`, `?`, `#` or the
/// end) that any URL starting with it has the same host and port. `None`
/// for anything else, which is then parsed whole.
fn origin(url: &str) -> Option<&str> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']');
    if authority.is_empty() || !authority.chars().all(plain) {
        return None;
    }
    Some(&url[..url.len() - rest.len() + end])
}

/// Checks a webhook URL against the gate at creation, so a task that can never be
/// delivered is refused up front. Dispatch checks again: the gate may change.
pub(super) fn check_host(url: &str, gate: &GateRecord) -> Result<(), String> {
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

/// A gate's record: this engine's own where it runs the gate, else as
/// read from the store for a foreign create.
fn gate_of<'a>(
    held: Units,
    gates: &'a BTreeMap<String, GateRecord>,
    foreign: &'a HashMap<String, GateRecord>,
    name: &str,
) -> Option<&'a GateRecord> {
    if held.has_gate(name) {
        gates.get(name)
    } else {
        foreign.get(name)
    }
}

/// Answers `command` with `error`, whatever it asked.
fn refuse(command: Command, error: ShellError) -> Box<dyn FnOnce() + Send> {
    fn with<T: Send + 'static>(to: Reply<T>, error: ShellError) -> Box<dyn FnOnce() + Send> {
        Box::new(move || {
            let _ = to.send(Err(error));
        })
    }
    match command {
        Command::Live { reply: to, .. } => Box::new(move || {
            let _ = to.send(Vec::new());
        }),
        Command::PutGate { reply: to, .. } => with(to, error),
        Command::DeleteGate { reply: to, .. } => with(to, error),
        Command::SetPaused { reply: to, .. } => with(to, error),
        Command::CreateTasks { reply: to, .. } => with(to, error),
        Command::CancelTask { reply: to, .. } => with(to, error),
        Command::RetryTask { reply: to, .. } => with(to, error),
        Command::ReplayTasks { reply: to, .. } => with(to, error),
        Command::PutReplay { reply: to, .. } => with(to, error),
        Command::PutSchedule { reply: to, .. } => with(to, error),
        Command::Report { reply: to, .. } => with(to, error),
        Command::DeleteSchedule { reply: to, .. } => with(to, error),
        Command::SetSchedulePaused { reply: to, .. } => with(to, error),
        Command::PutPlugin { reply: to, .. } => with(to, error),
        Command::DeletePlugin { reply: to, .. } => with(to, error),
        Command::Units { reply: to, .. } => with(to, error),
    }
}

#[cfg(test)]
mod tests {
    use super::origin;

    #[test]
    fn an_origin_is_only_a_plainly_spelt_scheme_and_authority() {
        for (url, want) in [
            ("http://127.0.0.1:8080/x?y", Some("http://127.0.0.1:8080")),
            ("https://example.com", Some("https://example.com")),
            ("http://[::1]:9/p", Some("http://[::1]:9")),
            ("http://h?q=/a", Some("http://h")),
            ("http://h#f", Some("http://h")),
            ("http://a\tb/", None),
            ("http://user@h/", None),
            ("http://h\\evil/", None),
            ("http://h%2e/", None),
            ("HTTP://h/", None),
            (" http://h/", None),
            ("http:///x", None),
            ("ftp://h/", None),
        ] {
            assert_eq!(origin(url), want, "{url:?}");
        }
    }

    #[test]
    fn urls_of_one_origin_have_one_host_and_port() {
        let bases = [
            "http://127.0.0.1:8080",
            "https://example.com",
            "http://[::1]",
            "http://h:0",
        ];
        let tails = [
            "",
            "/",
            "/a/b?c=d",
            "?x",
            "#y",
            "/..%2f\\@other.example:1/",
            "/@evil.example",
        ];
        for base in bases {
            let first = reqwest::Url::parse(&format!("{base}/")).expect("a valid base");
            for tail in tails {
                let url = format!("{base}{tail}");
                assert_eq!(origin(&url), Some(base), "{url:?}");
                let parsed = reqwest::Url::parse(&url).expect("a valid url");
                assert_eq!(
                    (parsed.host_str(), parsed.port_or_known_default()),
                    (first.host_str(), first.port_or_known_default()),
                    "{url:?}"
                );
            }
        }
    }
}
