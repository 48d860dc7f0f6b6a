//! Writes: `PgTx`, one transaction on the writer connection, and the
//! per-minute due counts it keeps in step, written once at its end.
//!
//! A write whose answer nobody waits for (a record put, an index entry) is
//! queued, and the queue goes out as one pipeline (every statement sent
//! before the first answer is read) before the next read and at commit.
//! PostgreSQL runs a connection's statements in order, so a read still sees
//! every write before it.

use std::cell::RefCell;
use std::collections::BTreeMap;

use super::*;

type Param = Box<dyn ToSql + Sync + Send>;

/// A queued write, and the minute count it changes if it changed a row.
struct Queued {
    sql: &'static str,
    params: Vec<Param>,
    due_delta: Option<((u32, u64), i64)>,
}

/// What a transaction wrote to one task's row since its last flush: its
/// record (with the columns read off it) and its place in the running set.
/// However often the turn changed the task, the row goes out as one
/// statement.
#[derive(Default)]
struct TaskRow {
    record: Option<Vec<u8>>,
    gate_id: Option<u32>,
    finished_at: Option<u64>,
    running: Option<bool>,
}

impl TaskRow {
    /// The statement that writes it.
    fn queued(self, id: u64) -> Queued {
        let running = self.running;
        let (sql, params): (&'static str, Vec<Param>) = match self.record {
            Some(record) => (
                "INSERT INTO tasks (id, record, gate_id, finished_at, running) \
                 VALUES ($1, $2, $3, $4, coalesce($5, false)) \
                 ON CONFLICT (id) DO UPDATE SET record = EXCLUDED.record, \
                 gate_id = EXCLUDED.gate_id, finished_at = EXCLUDED.finished_at, \
                 running = coalesce($5, tasks.running)",
                vec![
                    Box::new(big(id)),
                    Box::new(record),
                    Box::new(self.gate_id.map(int)),
                    Box::new(self.finished_at.map(big)),
                    Box::new(running),
                ],
            ),
            None => (
                "UPDATE tasks SET running = coalesce($2, running), \
                 gate_id = coalesce($3, gate_id) WHERE id = $1",
                vec![
                    Box::new(big(id)),
                    Box::new(running),
                    Box::new(self.gate_id.map(int)),
                ],
            ),
        };
        Queued {
            sql,
            params,
            due_delta: None,
        }
    }
}

/// One write transaction on the writer connection.
pub(super) struct PgTx<'a> {
    client: &'a Conn,
    queued: RefCell<Vec<Queued>>,
    /// Task rows written since the last flush of everything.
    rows: RefCell<BTreeMap<u64, TaskRow>>,
    /// Changes to `due_minutes`, written once at the end.
    due_deltas: RefCell<HashMap<(u32, u64), i64>>,
}

impl<'a> PgTx<'a> {
    pub(super) fn new(client: &'a Conn) -> PgTx<'a> {
        PgTx {
            client,
            queued: RefCell::default(),
            rows: RefCell::default(),
            due_deltas: RefCell::default(),
        }
    }

    /// Changes what goes out for task `id`'s row.
    fn row(&self, id: u64, change: impl FnOnce(&mut TaskRow)) {
        change(self.rows.borrow_mut().entry(id).or_default());
    }

    fn send(&self, sql: &'static str, params: Vec<Param>) {
        self.send_counted(sql, params, None);
    }

    fn send_counted(
        &self,
        sql: &'static str,
        params: Vec<Param>,
        due_delta: Option<((u32, u64), i64)>,
    ) {
        self.queued.borrow_mut().push(Queued {
            sql,
            params,
            due_delta,
        });
    }

    /// Sends the task rows and the queued writes as one pipeline and waits
    /// for every answer. The rows go first: the only other statement on
    /// `tasks` (retention's delete) is queued after a read of the task,
    /// which flushed its row.
    fn flush(&self) -> Result<()> {
        let rows = std::mem::take(&mut *self.rows.borrow_mut());
        if !rows.is_empty() {
            let mut queued = self.queued.borrow_mut();
            let mut all: Vec<Queued> = rows.into_iter().map(|(id, row)| row.queued(id)).collect();
            all.append(&mut queued);
            *queued = all;
        }
        self.flush_queued()
    }

    /// Sends the queued writes, not the task rows (for reads of tables
    /// other than `tasks`, which need not wait for them).
    fn flush_queued(&self) -> Result<()> {
        let queued = std::mem::take(&mut *self.queued.borrow_mut());
        if queued.is_empty() {
            return Ok(());
        }
        let statements = queued
            .iter()
            .map(|q| self.client.statement(q.sql))
            .collect::<Result<Vec<_>>>()?;
        let answers = queued.iter().zip(&statements).map(|(q, statement)| {
            let params = q.params.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync));
            self.client.client.execute_raw(statement, params)
        });
        let changed = wait(futures_util::future::try_join_all(answers))?;
        let mut deltas = self.due_deltas.borrow_mut();
        for (q, n) in queued.iter().zip(changed) {
            if let (Some((key, delta)), true) = (q.due_delta, n > 0) {
                *deltas.entry(key).or_default() += delta;
            }
        }
        Ok(())
    }

    /// Sends what is queued, then the minute counts.
    pub(super) fn commit(&mut self) -> Result<()> {
        self.flush()?;
        let deltas = std::mem::take(&mut *self.due_deltas.borrow_mut());
        for ((gate_id, minute), delta) in deltas {
            if delta == 0 {
                continue;
            }
            self.send(
                "INSERT INTO due_minutes VALUES ($1, $2, $3) ON CONFLICT (gate_id, minute) \
                 DO UPDATE SET n = due_minutes.n + EXCLUDED.n",
                vec![
                    Box::new(int(gate_id)),
                    Box::new(big(minute)),
                    Box::new(delta),
                ],
            );
            self.send(
                "DELETE FROM due_minutes WHERE gate_id = $1 AND minute = $2 AND n <= 0",
                vec![Box::new(int(gate_id)), Box::new(big(minute))],
            );
        }
        self.flush()
    }

    /// The connection, once every queued write has gone out.
    fn read(&self) -> Result<&Conn> {
        self.flush()?;
        Ok(self.client)
    }

    /// A plugin's record read by `sql` (which locks it as it says).
    fn plugin_row(&self, sql: &'static str, key: &str) -> Result<Option<PluginRecord>> {
        let found = rows(self.read_other()?, sql, &[&key])?;
        Ok(records("plugins", found)?.into_iter().next())
    }

    /// The connection for a statement on a table other than `tasks` (the
    /// pending ones, say), once the queued writes have gone out; the task
    /// rows may wait, so the removal of a start's pending entry does not
    /// split its row into two writes.
    fn read_other(&self) -> Result<&Conn> {
        self.flush_queued()?;
        Ok(self.client)
    }

    /// Removes one finished task and what hangs off it, if it still is the
    /// task that finished at `at`.
    fn prune_task(&mut self, id: u64, at: u64) -> Result<bool> {
        let Some(task) = self.task(id)? else {
            return Ok(false);
        };
        if !task.state.is_final() || task.finished_at != Some(at) {
            // It ran again since (or an upgraded row's time was stale): its
            // columns from its record, so retention stops finding it here.
            self.put_task(&task)?;
            return Ok(false);
        }
        self.send("DELETE FROM tasks WHERE id = $1", vec![Box::new(big(id))]);
        self.send(
            "DELETE FROM attempts WHERE task_id = $1",
            vec![Box::new(big(id))],
        );
        if task.root.is_none_or(|root| root == id) {
            self.send(
                "DELETE FROM lineage WHERE root = $1",
                vec![Box::new(big(id))],
            );
        }
        if let Some(key) = task.idempotency_key {
            self.send(
                "DELETE FROM idempotency WHERE gate_id = $1 AND key = $2 AND task_id = $3",
                vec![
                    Box::new(int(task.gate_id)),
                    Box::new(key),
                    Box::new(big(id)),
                ],
            );
        }
        if let Some(key) = task.coalesce_key {
            self.send(
                "DELETE FROM coalesce WHERE gate_id = $1 AND key = $2 AND task_id = $3",
                vec![
                    Box::new(int(task.gate_id)),
                    Box::new(key),
                    Box::new(big(id)),
                ],
            );
        }
        Ok(true)
    }
}

impl Writes for PgTx<'_> {
    fn next_gate_id(&mut self) -> Result<u32> {
        let row = one(
            self.read()?,
            "UPDATE meta SET value = value + 1 WHERE key = 'next_gate_id' RETURNING value - 1",
            &[],
        )?;
        let next = row.map_or(1, |row| unbig(row.get(0)));
        u32::try_from(next).map_err(|_| StoreError::Corrupt {
            table: "meta",
            detail: "gate ids exhausted".into(),
        })
    }

    fn gates(&self) -> Result<Vec<GateRecord>> {
        records(
            "gates",
            rows(self.read()?, "SELECT record FROM gates", &[])?,
        )
    }

    fn gate(&self, name: &str) -> Result<Option<GateRecord>> {
        let found = rows(
            self.read_other()?,
            "SELECT record FROM gates WHERE name = $1 FOR KEY SHARE",
            &[&name],
        )?;
        Ok(records("gates", found)?.into_iter().next())
    }

    fn lock_gate(&mut self, name: &str) -> Result<()> {
        one(
            self.read_other()?,
            "SELECT 1 FROM gates WHERE name = $1 FOR UPDATE",
            &[&name],
        )?;
        Ok(())
    }

    fn gates_in(&self, units: Units) -> Result<Vec<GateRecord>> {
        let units: Vec<i32> = units.iter().map(|u| u as i32).collect();
        records(
            "gates",
            rows(
                self.read()?,
                "SELECT record FROM gates WHERE unit = ANY($1)",
                &[&units],
            )?,
        )
    }

    fn put_gate(&mut self, gate: &GateRecord) -> Result<()> {
        self.send(
            "INSERT INTO gates (name, record, unit) VALUES ($1, $2, $3) ON CONFLICT (name) \
             DO UPDATE SET record = EXCLUDED.record, unit = EXCLUDED.unit",
            vec![
                Box::new(gate.name.clone()),
                Box::new(encode(gate)),
                Box::new(unit_column(&gate.name)),
            ],
        );
        Ok(())
    }

    fn delete_gate(&mut self, name: &str) -> Result<()> {
        self.send(
            "DELETE FROM gates WHERE name = $1",
            vec![Box::new(name.to_string())],
        );
        Ok(())
    }

    fn last_task_id(&self) -> Result<Option<u64>> {
        let row = one(self.read()?, "SELECT max(id) FROM tasks", &[])?;
        Ok(row.and_then(|row| row.get::<_, Option<i64>>(0)).map(unbig))
    }

    fn task(&self, id: u64) -> Result<Option<TaskRecord>> {
        task_record(one(
            self.read()?,
            "SELECT record FROM tasks WHERE id = $1",
            &[&big(id)],
        )?)
    }

    fn tasks(&self, ids: &[u64]) -> Result<Vec<TaskRecord>> {
        let ids: Vec<i64> = ids.iter().map(|&id| big(id)).collect();
        task_records(rows(
            self.read()?,
            "SELECT record FROM tasks WHERE id = ANY($1)",
            &[&ids],
        )?)
    }

    fn put_task(&mut self, task: &TaskRecord) -> Result<()> {
        let record = encode_task(task);
        let finished_at = task.finished_at.filter(|_| task.state.is_final());
        self.row(task.id, |row| {
            row.record = Some(record);
            row.gate_id = Some(task.gate_id);
            row.finished_at = finished_at;
        });
        Ok(())
    }

    fn prune(&mut self, before: u64, limit: usize) -> Result<(usize, bool)> {
        let found = rows(
            self.read()?,
            "SELECT finished_at, id FROM tasks WHERE finished_at < $1 \
             ORDER BY finished_at, id LIMIT $2",
            &[&big(before), &big(limit as u64 + 1)],
        )?;
        let more = found.len() > limit;
        let mut removed = 0;
        for row in found.iter().take(limit) {
            let (at, id): (i64, i64) = (row.get(0), row.get(1));
            if self.prune_task(unbig(id), unbig(at))? {
                removed += 1;
            }
        }
        Ok((removed, more))
    }

    fn index_task(&mut self, gate_id: u32, task_id: u64) -> Result<()> {
        // A column of the task's row, which its record sets too.
        self.row(task_id, |row| row.gate_id = Some(gate_id));
        Ok(())
    }

    fn insert_pending(
        &mut self,
        gate: GateId,
        key: Option<&str>,
        due: Timestamp,
        task: TaskId,
    ) -> Result<()> {
        let counted = Some(((gate.0, due.as_ms() / MINUTE_MS), 1));
        let (gate, due, task) = (int(gate.0), big(due.as_ms()), big(task.0));
        match key {
            None => self.send_counted(
                "INSERT INTO pending VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                vec![Box::new(gate), Box::new(due), Box::new(task)],
                counted,
            ),
            Some(key) => self.send_counted(
                "INSERT INTO pending_keyed VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                vec![
                    Box::new(gate),
                    Box::new(key.to_owned()),
                    Box::new(due),
                    Box::new(task),
                ],
                counted,
            ),
        }
        Ok(())
    }

    fn remove_pending(
        &mut self,
        gate: GateId,
        key: Option<&str>,
        due: Timestamp,
        task: TaskId,
    ) -> Result<bool> {
        let entry = PendingEntry {
            gate,
            key: key.map(str::to_owned),
            due,
            task,
        };
        Ok(self.remove_pending_many(&[entry])?.first() == Some(&true))
    }

    fn remove_pending_many(&mut self, entries: &[PendingEntry]) -> Result<Vec<bool>> {
        let (keyed, plain): (Vec<&PendingEntry>, Vec<&PendingEntry>) =
            entries.iter().partition(|e| e.key.is_some());
        let column = |list: &[&PendingEntry]| {
            (
                list.iter().map(|e| int(e.gate.0)).collect::<Vec<i32>>(),
                list.iter()
                    .map(|e| big(e.due.as_ms()))
                    .collect::<Vec<i64>>(),
                list.iter().map(|e| big(e.task.0)).collect::<Vec<i64>>(),
            )
        };
        let mut gone = Vec::new();
        if !plain.is_empty() {
            let (gates, dues, tasks) = column(&plain);
            gone.extend(rows(
                self.read_other()?,
                "DELETE FROM pending p USING unnest($1::int[], $2::bigint[], $3::bigint[]) \
                 AS e(gate_id, due, task_id) \
                 WHERE p.gate_id = e.gate_id AND p.due = e.due AND p.task_id = e.task_id \
                 RETURNING p.gate_id, p.due, p.task_id",
                &[&gates, &dues, &tasks],
            )?);
        }
        if !keyed.is_empty() {
            let (gates, dues, tasks) = column(&keyed);
            let keys: Vec<&str> = keyed.iter().filter_map(|e| e.key.as_deref()).collect();
            gone.extend(rows(
                self.read_other()?,
                "DELETE FROM pending_keyed p \
                 USING unnest($1::int[], $2::bigint[], $3::bigint[], $4::text[]) \
                 AS e(gate_id, due, task_id, key) \
                 WHERE p.gate_id = e.gate_id AND p.key = e.key AND p.due = e.due \
                 AND p.task_id = e.task_id \
                 RETURNING p.gate_id, p.due, p.task_id",
                &[&gates, &dues, &tasks, &keys],
            )?);
        }
        let mut removed = std::collections::HashSet::with_capacity(gone.len());
        let mut deltas = self.due_deltas.borrow_mut();
        for row in &gone {
            let (gate, due, task) = (unint(row.get(0)), unbig(row.get(1)), unbig(row.get(2)));
            *deltas.entry((gate, due / MINUTE_MS)).or_default() -= 1;
            removed.insert(task);
        }
        Ok(entries
            .iter()
            .map(|e| removed.contains(&e.task.0))
            .collect())
    }

    #[allow(clippy::type_complexity, reason = "a plain pair of key lists")]
    fn pending_range(
        &self,
        gate: GateId,
        key: Option<&str>,
        from: (Timestamp, TaskId),
        until: Timestamp,
        limit: usize,
    ) -> Result<(Vec<(Timestamp, TaskId)>, Option<(Timestamp, TaskId)>)> {
        let (gate, due, id, limit1) = (
            int(gate.0),
            big(from.0.as_ms()),
            big(from.1.0),
            big(limit as u64 + 1),
        );
        let found = keys(match key {
            None => rows(
                self.read_other()?,
                "SELECT due, task_id FROM pending \
                 WHERE gate_id = $1 AND (due, task_id) >= ($2, $3) \
                 ORDER BY due, task_id LIMIT $4",
                &[&gate, &due, &id, &limit1],
            )?,
            Some(key) => rows(
                self.read_other()?,
                "SELECT due, task_id FROM pending_keyed \
                 WHERE gate_id = $1 AND key = $5 AND (due, task_id) >= ($2, $3) \
                 ORDER BY due, task_id LIMIT $4",
                &[&gate, &due, &id, &limit1, &key],
            )?,
        });
        cut_range(found.into_iter().map(Ok), until, limit)
    }

    fn pending_keys(&self, gate: GateId) -> Result<Vec<(Option<String>, (Timestamp, TaskId))>> {
        let mut out: Vec<_> = keys(rows(
            self.read_other()?,
            "SELECT due, task_id FROM pending WHERE gate_id = $1 ORDER BY due, task_id LIMIT 1",
            &[&int(gate.0)],
        )?)
        .into_iter()
        .map(|first| (None, first))
        .collect();
        let firsts = rows(
            self.read_other()?,
            "SELECT DISTINCT ON (key) key, due, task_id FROM pending_keyed \
             WHERE gate_id = $1 ORDER BY key, due, task_id",
            &[&int(gate.0)],
        )?;
        for row in firsts {
            let first = (Timestamp(unbig(row.get(1))), TaskId(unbig(row.get(2))));
            out.push((Some(row.get(0)), first));
        }
        Ok(out)
    }

    fn all_pending(&self, gate: GateId) -> Result<Vec<(Option<String>, Timestamp, TaskId)>> {
        let mut out: Vec<_> = keys(rows(
            self.read_other()?,
            "SELECT due, task_id FROM pending WHERE gate_id = $1 ORDER BY due, task_id",
            &[&int(gate.0)],
        )?)
        .into_iter()
        .map(|(due, id)| (None, due, id))
        .collect();
        for row in rows(
            self.read_other()?,
            "SELECT key, due, task_id FROM pending_keyed WHERE gate_id = $1",
            &[&int(gate.0)],
        )? {
            out.push((
                Some(row.get(0)),
                Timestamp(unbig(row.get(1))),
                TaskId(unbig(row.get(2))),
            ));
        }
        Ok(out)
    }

    fn set_running(&mut self, task_id: u64, running: bool) -> Result<()> {
        self.row(task_id, |row| row.running = Some(running));
        Ok(())
    }

    fn running_tasks(&self) -> Result<Vec<u64>> {
        let found = rows(
            self.read()?,
            "SELECT id FROM tasks WHERE running ORDER BY id",
            &[],
        )?;
        Ok(found.iter().map(|row| unbig(row.get(0))).collect())
    }

    fn running_tasks_in(&self, gates: &[u32]) -> Result<Vec<u64>> {
        let gates: Vec<i32> = gates.iter().map(|g| *g as i32).collect();
        let found = rows(
            self.read()?,
            "SELECT id FROM tasks WHERE running AND gate_id = ANY($1) ORDER BY id",
            &[&gates],
        )?;
        Ok(found.iter().map(|row| unbig(row.get(0))).collect())
    }

    fn attempt(&self, task_id: u64, attempt: u32) -> Result<Option<AttemptRecord>> {
        record(
            "attempts",
            one(
                self.read()?,
                "SELECT record FROM attempts WHERE task_id = $1 AND attempt = $2",
                &[&big(task_id), &int(attempt)],
            )?,
        )
    }

    fn put_attempt(&mut self, task_id: u64, attempt: &AttemptRecord) -> Result<()> {
        self.send(
            "INSERT INTO attempts VALUES ($1, $2, $3) \
             ON CONFLICT (task_id, attempt) DO UPDATE SET record = EXCLUDED.record",
            vec![
                Box::new(big(task_id)),
                Box::new(int(attempt.attempt)),
                Box::new(encode(attempt)),
            ],
        );
        Ok(())
    }

    fn idempotent(&self, gate_id: u32, key: &str) -> Result<Option<u64>> {
        let row = one(
            self.read_other()?,
            "SELECT task_id FROM idempotency WHERE gate_id = $1 AND key = $2",
            &[&int(gate_id), &key],
        )?;
        Ok(row.map(|row| unbig(row.get(0))))
    }

    fn coalesced(&self, gate_id: u32, key: &str) -> Result<Option<u64>> {
        let row = one(
            self.read_other()?,
            "SELECT task_id FROM coalesce WHERE gate_id = $1 AND key = $2",
            &[&int(gate_id), &key],
        )?;
        Ok(row.map(|row| unbig(row.get(0))))
    }

    fn put_coalesced(&mut self, gate_id: u32, key: &str, task_id: u64) -> Result<()> {
        self.send(
            "INSERT INTO coalesce VALUES ($1, $2, $3) \
             ON CONFLICT (gate_id, key) DO UPDATE SET task_id = EXCLUDED.task_id",
            vec![
                Box::new(int(gate_id)),
                Box::new(key.to_string()),
                Box::new(big(task_id)),
            ],
        );
        Ok(())
    }

    fn claim_idempotent(&mut self, gate_id: u32, key: &str, task_id: u64) -> Result<Option<u64>> {
        // A concurrent claim of the same key waits here, on the unique
        // index, for the other transaction; after its commit this inserts
        // nothing, and the read (a new snapshot) sees its row.
        let claimed = one(
            self.read_other()?,
            "INSERT INTO idempotency VALUES ($1, $2, $3) ON CONFLICT DO NOTHING RETURNING task_id",
            &[&int(gate_id), &key, &big(task_id)],
        )?;
        if claimed.is_some() {
            return Ok(None);
        }
        self.idempotent(gate_id, key)
    }

    fn put_idempotent(&mut self, gate_id: u32, key: &str, task_id: u64) -> Result<()> {
        self.send(
            "INSERT INTO idempotency VALUES ($1, $2, $3) \
             ON CONFLICT (gate_id, key) DO UPDATE SET task_id = EXCLUDED.task_id",
            vec![
                Box::new(int(gate_id)),
                Box::new(key.to_string()),
                Box::new(big(task_id)),
            ],
        );
        Ok(())
    }

    fn all_counts(&self) -> Result<Vec<(u32, Counts)>> {
        let found = rows(self.read()?, "SELECT gate_id, record FROM counts", &[])?;
        Ok(found
            .iter()
            .map(|row| (unint(row.get(0)), Counts::decode(row.get::<_, &[u8]>(1))))
            .collect())
    }

    fn put_counts(&mut self, gate_id: u32, counts: &Counts) -> Result<()> {
        self.send(
            "INSERT INTO counts VALUES ($1, $2) ON CONFLICT (gate_id) DO UPDATE SET record = EXCLUDED.record",
            vec![Box::new(int(gate_id)), Box::new(counts.encode().to_vec())],
        );
        Ok(())
    }

    fn notify(&mut self, notices: &[Notice]) -> Result<()> {
        for (channel, lines) in super::listen::payloads(notices) {
            self.send(
                "SELECT pg_notify($1, current_schema() || $2)",
                vec![Box::new(channel), Box::new(lines)],
            );
        }
        Ok(())
    }

    fn add_counts(&mut self, deltas: &[(u32, CountsDelta)]) -> Result<()> {
        if deltas.is_empty() {
            return Ok(());
        }
        let mut ids: Vec<i32> = deltas.iter().map(|(g, _)| int(*g)).collect();
        ids.sort_unstable();
        ids.dedup();
        // Every row there to lock (a gate's first count makes it), then
        // locked in gate order, so two writers never wait on each other in
        // a cycle.
        self.send(
            "INSERT INTO counts SELECT unnest($1::int[]), $2 ON CONFLICT DO NOTHING",
            vec![
                Box::new(ids.clone()),
                Box::new(Counts::default().encode().to_vec()),
            ],
        );
        let found = rows(
            self.read_other()?,
            "SELECT gate_id, record FROM counts WHERE gate_id = ANY($1) ORDER BY gate_id FOR UPDATE",
            &[&ids],
        )?;
        let mut counts: BTreeMap<u32, Counts> = found
            .iter()
            .map(|row| (unint(row.get(0)), Counts::decode(row.get::<_, &[u8]>(1))))
            .collect();
        for (gate_id, delta) in deltas {
            counts.entry(*gate_id).or_default().apply(delta);
        }
        for (gate_id, total) in counts {
            self.put_counts(gate_id, &total)?;
        }
        Ok(())
    }

    fn plugins(&self) -> Result<Vec<PluginRecord>> {
        records(
            "plugins",
            rows(self.read()?, "SELECT record FROM plugins", &[])?,
        )
    }

    fn put_plugin(&mut self, plugin: &PluginRecord) -> Result<()> {
        self.send(
            "INSERT INTO plugins VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET record = EXCLUDED.record",
            vec![
                Box::new(plugin_key(&plugin.name, &plugin.version)),
                Box::new(encode(plugin)),
            ],
        );
        Ok(())
    }

    fn plugin(&self, key: &str) -> Result<Option<PluginRecord>> {
        self.plugin_row(
            "SELECT record FROM plugins WHERE key = $1 FOR KEY SHARE",
            key,
        )
    }

    fn lock_plugin(&mut self, key: &str) -> Result<Option<PluginRecord>> {
        self.plugin_row("SELECT record FROM plugins WHERE key = $1 FOR UPDATE", key)
    }

    fn add_plugin_refs(&mut self, refs: &[(String, i64)]) -> Result<()> {
        if refs.is_empty() {
            return Ok(());
        }
        let keys: Vec<&str> = refs.iter().map(|(k, _)| k.as_str()).collect();
        let found: Vec<PluginRecord> = records(
            "plugins",
            rows(
                self.read_other()?,
                "SELECT record FROM plugins WHERE key = ANY($1) ORDER BY key FOR UPDATE",
                &[&keys],
            )?,
        )?;
        for mut plugin in found {
            let key = plugin_key(&plugin.name, &plugin.version);
            let delta: i64 = refs.iter().filter(|(k, _)| *k == key).map(|(_, d)| d).sum();
            plugin.unfinished = plugin.unfinished.saturating_add_signed(delta);
            self.put_plugin(&plugin)?;
        }
        Ok(())
    }

    fn put_plugin_wasm(&mut self, key: &str, wasm: &[u8]) -> Result<()> {
        self.send(
            "INSERT INTO plugin_wasm VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET wasm = EXCLUDED.wasm",
            vec![Box::new(key.to_string()), Box::new(wasm.to_vec())],
        );
        Ok(())
    }

    fn put_compiled(&mut self, key: &str, engine: u64, artifact: &[u8]) -> Result<()> {
        self.send(
            "INSERT INTO plugin_compiled VALUES ($1, $2, $3) \
             ON CONFLICT (key, engine) DO UPDATE SET artifact = EXCLUDED.artifact",
            vec![
                Box::new(key.to_string()),
                Box::new(engine as i64),
                Box::new(artifact.to_vec()),
            ],
        );
        Ok(())
    }

    fn delete_plugin(&mut self, key: &str) -> Result<()> {
        for sql in [
            "DELETE FROM plugins WHERE key = $1",
            "DELETE FROM plugin_wasm WHERE key = $1",
            "DELETE FROM plugin_compiled WHERE key = $1",
        ] {
            self.send(sql, vec![Box::new(key.to_string())]);
        }
        Ok(())
    }

    fn descendants(&self, root: u64) -> Result<u32> {
        let row = one(
            self.read()?,
            "SELECT n FROM lineage WHERE root = $1",
            &[&big(root)],
        )?;
        Ok(row.map_or(0, |row| unint(row.get(0))))
    }

    fn set_descendants(&mut self, root: u64, count: u32) -> Result<()> {
        self.send(
            "INSERT INTO lineage VALUES ($1, $2) ON CONFLICT (root) DO UPDATE SET n = EXCLUDED.n",
            vec![Box::new(big(root)), Box::new(int(count))],
        );
        Ok(())
    }

    fn add_descendants(&mut self, root: u64, n: i64, max: u32) -> Result<Option<u32>> {
        let max = i64::from(max);
        if n > max {
            return Ok(None);
        }
        // The update takes the row's lock to the commit: a writer on
        // another node adding to the same root waits, then sees this sum.
        let row = one(
            self.read_other()?,
            "INSERT INTO lineage VALUES ($1, greatest($2::bigint, 0)::int) ON CONFLICT (root) \
             DO UPDATE SET n = greatest(lineage.n + $2::bigint, 0)::int \
             WHERE $2::bigint <= 0 OR lineage.n + $2::bigint <= $3::bigint RETURNING n",
            &[&big(root), &n, &max],
        )?;
        Ok(row.map(|row| unint(row.get(0))))
    }

    fn schedules(&self) -> Result<Vec<ScheduleRecord>> {
        records(
            "schedules",
            rows(self.read()?, "SELECT record FROM schedules", &[])?,
        )
    }

    fn put_schedule(&mut self, schedule: &ScheduleRecord) -> Result<()> {
        self.send(
            "INSERT INTO schedules VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET record = EXCLUDED.record",
            vec![Box::new(schedule.name.clone()), Box::new(encode(schedule))],
        );
        Ok(())
    }

    fn delete_schedule(&mut self, name: &str) -> Result<()> {
        self.send(
            "DELETE FROM schedules WHERE name = $1",
            vec![Box::new(name.to_string())],
        );
        Ok(())
    }

    fn delete_counts(&mut self, gate_id: u32) -> Result<()> {
        self.send(
            "DELETE FROM counts WHERE gate_id = $1",
            vec![Box::new(int(gate_id))],
        );
        Ok(())
    }

    fn put_replay(&mut self, replay: &ReplayRecord) -> Result<()> {
        self.send(
            "INSERT INTO replays VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET record = EXCLUDED.record",
            vec![Box::new(replay.id.clone()), Box::new(encode(replay))],
        );
        Ok(())
    }

    fn delete_replay(&mut self, id: &str) -> Result<()> {
        self.send(
            "DELETE FROM replays WHERE id = $1",
            vec![Box::new(id.to_string())],
        );
        Ok(())
    }
}
