//! Writes: `Tx`, the tables of one write transaction, and what each change
//! keeps in step with it (`due_minutes`, `finished`, the counters).

use super::*;

impl Tx<'_> {
    /// Writes this transaction's finished tasks to the retention index.
    pub(super) fn flush_finished(&mut self) -> Result<()> {
        let mut ids = std::mem::take(&mut self.finished_ids);
        ids.sort_unstable();
        ids.dedup();
        for group in ids.chunk_by(|a, b| a.0 == b.0) {
            let key = (group[0].0, group[0].1);
            // A task written again in a later commit at the same instant (it is
            // rewritten whenever a turn touches it) must not drop the others.
            let mut bytes = self
                .finished
                .get(key)?
                .map(|v| v.value().to_vec())
                .unwrap_or_default();
            for (_, id) in group {
                let id = id.to_le_bytes();
                if !bytes.chunks_exact(8).any(|b| b == id) {
                    bytes.extend_from_slice(&id);
                }
            }
            self.finished.insert(key, bytes.as_slice())?;
        }
        Ok(())
    }

    /// Removes one finished task and what hangs off it, if it still is the task
    /// that finished at `at`.
    pub(super) fn prune_task(&mut self, id: u64, at: u64) -> Result<bool> {
        let Some(task) = self.task(id)? else {
            return Ok(false);
        };
        if !task.state.is_final() || task.finished_at != Some(at) {
            return Ok(false);
        }
        self.tasks.remove(id)?;
        let attempts: Vec<(u64, u32)> = self
            .attempts
            .range((id, 0)..=(id, u32::MAX))?
            .map(|e| e.map(|(k, _)| k.value()))
            .collect::<std::result::Result<_, _>>()?;
        for key in attempts {
            self.attempts.remove(key)?;
        }
        self.gate_tasks.remove((task.gate_id, id))?;
        if task.root.is_none_or(|root| root == id) {
            self.txn.open_table(LINEAGE)?.remove(id)?;
        }
        if let Some(key) = &task.idempotency_key
            && self.idempotent(task.gate_id, key)? == Some(id)
        {
            self.idempotency.remove((task.gate_id, key.as_str()))?;
        }
        if let Some(key) = &task.coalesce_key
            && self.coalesced(task.gate_id, key)? == Some(id)
        {
            self.txn
                .open_table(COALESCE)?
                .remove((task.gate_id, key.as_str()))?;
        }
        Ok(true)
    }

    /// Builds `finished` from the tasks (upgrading a version 1 file).
    pub(super) fn index_finished(&mut self) -> Result<()> {
        for entry in self.tasks.iter()? {
            let (_, bytes) = entry?;
            let task: TaskRecord = decode_task(bytes.value())?;
            if let (true, Some(at)) = (task.state.is_final(), task.finished_at) {
                self.finished_ids.push((at, task.id));
            }
        }
        self.flush_finished()
    }

    /// Writes this transaction's changes to the running index. redb rebuilds
    /// a leaf for each removal, so the ends of a turn (a few dozen tasks
    /// among the hundred or so running) are taken out in one pass over
    /// the span of their ids, each leaf rebuilt once, where that span can
    /// hold no more than `RUNNING_SCAN` entries per removal; one by one
    /// otherwise (a large running set, held by leases).
    pub(super) fn flush_running(&mut self) -> Result<()> {
        const RUNNING_SCAN: u64 = 8;
        let changes = std::mem::take(&mut self.running_changes);
        let ended: Vec<u64> = changes.iter().filter(|c| !*c.1).map(|c| *c.0).collect();
        if let (Some(&first), Some(&last)) = (ended.first(), ended.last()) {
            if self.running.len()? <= RUNNING_SCAN * ended.len() as u64 {
                self.running
                    .retain_in(first..=last, |id, ()| ended.binary_search(&id).is_err())?;
            } else {
                for &id in &ended {
                    self.running.remove(id)?;
                }
            }
        }
        for (&id, _) in changes.iter().filter(|c| *c.1) {
            self.running.insert(id, ())?;
        }
        Ok(())
    }

    /// Counts a pending entry in (`delta` 1) or out (-1) of its gate's
    /// minute, written at the transaction's end.
    fn count_due(&mut self, gate_id: u32, due: u64, delta: i64) {
        *self
            .due_deltas
            .entry((gate_id, due / MINUTE_MS))
            .or_default() += delta;
    }

    /// Writes this transaction's changes to the per-minute counts.
    pub(super) fn flush_due_minutes(&mut self) -> Result<()> {
        for ((gate_id, minute), delta) in self.due_deltas.drain() {
            if delta == 0 {
                continue;
            }
            let old = self
                .due_minutes
                .get((gate_id, minute))?
                .map_or(0, |v| v.value());
            let new = old.saturating_add_signed(delta);
            if new == 0 {
                self.due_minutes.remove((gate_id, minute))?;
            } else {
                self.due_minutes.insert((gate_id, minute), new)?;
            }
        }
        Ok(())
    }

    /// Builds `due_minutes` from `pending` (upgrading a version 1 file).
    pub(super) fn count_due_minutes(&mut self) -> Result<()> {
        let mut counts: HashMap<(u32, u64), u64> = HashMap::new();
        for entry in self.pending.iter()? {
            let (gate_id, due, _) = entry?.0.value();
            *counts.entry((gate_id, due / MINUTE_MS)).or_default() += 1;
        }
        for (key, n) in counts {
            self.due_minutes.insert(key, n)?;
        }
        Ok(())
    }

    /// Creates the tables opened only on demand, so readers always find them.
    pub(super) fn create_lazy_tables(&mut self) -> Result<()> {
        self.txn.open_table(PLUGIN_WASM)?;
        self.txn.open_table(PLUGIN_COMPILED)?;
        self.txn.open_table(LINEAGE)?;
        self.txn.open_table(COALESCE)?;
        self.txn.open_table(REPLAYS)?;
        Ok(())
    }
}

impl Writes for Tx<'_> {
    fn next_gate_id(&mut self) -> Result<u32> {
        let next = self.meta.get("next_gate_id")?.map_or(1, |v| v.value());
        self.meta.insert("next_gate_id", next + 1)?;
        u32::try_from(next).map_err(|_| StoreError::Corrupt {
            table: "meta",
            detail: "gate ids exhausted".into(),
        })
    }

    fn gates(&self) -> Result<Vec<GateRecord>> {
        let mut out = Vec::new();
        for entry in self.gates.iter()? {
            let (_, v) = entry?;
            out.push(decode("gates", v.value())?);
        }
        Ok(out)
    }

    fn gate(&self, name: &str) -> Result<Option<GateRecord>> {
        match self.gates.get(name)? {
            Some(v) => Ok(Some(decode("gates", v.value())?)),
            None => Ok(None),
        }
    }

    fn put_gate(&mut self, gate: &GateRecord) -> Result<()> {
        self.gates
            .insert(gate.name.as_str(), encode(gate).as_slice())?;
        Ok(())
    }

    fn delete_gate(&mut self, name: &str) -> Result<()> {
        self.gates.remove(name)?;
        Ok(())
    }

    fn last_task_id(&self) -> Result<Option<u64>> {
        Ok(self.tasks.last()?.map(|(k, _)| k.value()))
    }

    fn task(&self, id: u64) -> Result<Option<TaskRecord>> {
        self.tasks
            .get(id)?
            .map(|v| decode_task(v.value()))
            .transpose()
    }

    fn put_task(&mut self, task: &TaskRecord) -> Result<()> {
        self.tasks.insert(task.id, encode_task(task).as_slice())?;
        if let (true, Some(at)) = (task.state.is_final(), task.finished_at) {
            self.finished_ids.push((at, task.id));
        }
        Ok(())
    }

    fn prune(&mut self, before: u64, limit: usize) -> Result<(usize, bool)> {
        let mut entries: Vec<((u64, u64), Vec<u64>)> = Vec::new();
        let mut taken = 0;
        let mut more = false;
        for entry in self.finished.range((0, 0)..(before, 0))? {
            if taken >= limit {
                more = true;
                break;
            }
            let (key, value) = entry?;
            let ids: Vec<u64> = finished_ids(value.value()).collect();
            taken += ids.len();
            entries.push((key.value(), ids));
        }
        let mut removed = 0;
        for ((at, first), ids) in entries {
            self.finished.remove((at, first))?;
            for id in ids {
                if self.prune_task(id, at)? {
                    removed += 1;
                }
            }
        }
        Ok((removed, more))
    }

    fn index_task(&mut self, gate_id: u32, task_id: u64) -> Result<()> {
        self.gate_tasks.insert((gate_id, task_id), ())?;
        Ok(())
    }

    fn insert_pending(
        &mut self,
        gate: GateId,
        key: Option<&str>,
        due: Timestamp,
        task: TaskId,
    ) -> Result<()> {
        let (gate_id, due) = (gate.0, due.as_ms());
        let fresh = match key {
            None => self.pending.insert((gate_id, due, task.0), ())?.is_none(),
            Some(key) => self
                .pending_keyed
                .insert((gate_id, key, due, task.0), ())?
                .is_none(),
        };
        if fresh {
            self.count_due(gate_id, due, 1);
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
        let (gate_id, due) = (gate.0, due.as_ms());
        let removed = match key {
            None => self.pending.remove((gate_id, due, task.0))?.is_some(),
            Some(key) => self
                .pending_keyed
                .remove((gate_id, key, due, task.0))?
                .is_some(),
        };
        if removed {
            self.count_due(gate_id, due, -1);
        }
        Ok(removed)
    }

    /// redb rebuilds a leaf for each removal, so a gate's starts of a turn
    /// (its soonest pending tasks, side by side in the index) are taken
    /// out in one pass over their span, each leaf rebuilt once, where that
    /// span holds at most `PENDING_SCAN` entries per removal; one by one
    /// otherwise, and for keyed entries.
    fn remove_pending_many(&mut self, entries: &[PendingEntry]) -> Result<Vec<bool>> {
        const PENDING_SCAN: usize = 4;
        let mut removed = vec![false; entries.len()];
        // The unkeyed ones by gate, in index order, with their place in `entries`.
        let mut plain: Vec<((u32, u64, u64), usize)> = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            match e.key {
                None => plain.push(((e.gate.0, e.due.as_ms(), e.task.0), i)),
                Some(ref key) => {
                    removed[i] = self.remove_pending(e.gate, Some(key), e.due, e.task)?
                }
            }
        }
        plain.sort_unstable();
        for group in plain.chunk_by(|a, b| a.0.0 == b.0.0) {
            let (first, last) = (group[0].0, group[group.len() - 1].0);
            let limit = PENDING_SCAN * group.len();
            let close = group.len() > 1
                && self.pending.range(first..=last)?.take(limit + 1).count() <= limit;
            if !close {
                for &((gate_id, due, id), i) in group {
                    removed[i] =
                        self.remove_pending(GateId(gate_id), None, Timestamp(due), TaskId(id))?;
                }
                continue;
            }
            let mut found = vec![false; group.len()];
            self.pending.retain_in(first..=last, |entry, ()| {
                // The first of an entry named twice is the one removed.
                let at = group.partition_point(|g| g.0 < entry);
                let named = group.get(at).is_some_and(|g| g.0 == entry);
                if named {
                    found[at] = true;
                }
                !named
            })?;
            for (&((gate_id, due, _), i), found) in group.iter().zip(found) {
                removed[i] = found;
                if found {
                    self.count_due(gate_id, due, -1);
                }
            }
        }
        Ok(removed)
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
        let (from_due, from_id) = (from.0.as_ms(), from.1.0);
        match key {
            None => {
                let range = self
                    .pending
                    .range((gate.0, from_due, from_id)..=(gate.0, u64::MAX, u64::MAX))?;
                let keys = range.map(|entry| {
                    let (_, due, id) = entry?.0.value();
                    Ok((Timestamp(due), TaskId(id)))
                });
                cut_range(keys, until, limit)
            }
            Some(key) => {
                let range = self
                    .pending_keyed
                    .range((gate.0, key, from_due, from_id)..=(gate.0, key, u64::MAX, u64::MAX))?;
                let keys = range.map(|entry| {
                    let (_, _, due, id) = entry?.0.value();
                    Ok((Timestamp(due), TaskId(id)))
                });
                cut_range(keys, until, limit)
            }
        }
    }

    fn pending_keys(&self, gate: GateId) -> Result<Vec<(Option<String>, (Timestamp, TaskId))>> {
        let mut out = Vec::new();
        if let Some(entry) = self
            .pending
            .range((gate.0, 0, 0)..=(gate.0, u64::MAX, u64::MAX))?
            .next()
        {
            let (_, due, id) = entry?.0.value();
            out.push((None, (Timestamp(due), TaskId(id))));
        }
        keyed_firsts(&self.pending_keyed, gate.0, usize::MAX, &mut out)?;
        Ok(out)
    }

    fn all_pending(&self, gate: GateId) -> Result<Vec<(Option<String>, Timestamp, TaskId)>> {
        let mut keys = Vec::new();
        for entry in self
            .pending
            .range((gate.0, 0, 0)..=(gate.0, u64::MAX, u64::MAX))?
        {
            let (k, _) = entry?;
            let (_, due, id) = k.value();
            keys.push((None, Timestamp(due), TaskId(id)));
        }
        let upper = (gate.0.saturating_add(1), "", 0, 0);
        for entry in self.pending_keyed.range((gate.0, "", 0, 0)..upper)? {
            let (k, _) = entry?;
            let (g, key, due, id) = k.value();
            if g == gate.0 {
                keys.push((Some(key.to_owned()), Timestamp(due), TaskId(id)));
            }
        }
        Ok(keys)
    }

    fn set_running(&mut self, task_id: u64, running: bool) -> Result<()> {
        self.running_changes.insert(task_id, running);
        Ok(())
    }

    fn running_tasks(&self) -> Result<Vec<u64>> {
        let mut out = BTreeSet::new();
        for entry in self.running.iter()? {
            out.insert(entry?.0.value());
        }
        for (&id, &running) in &self.running_changes {
            if running {
                out.insert(id);
            } else {
                out.remove(&id);
            }
        }
        Ok(out.into_iter().collect())
    }

    fn attempt(&self, task_id: u64, attempt: u32) -> Result<Option<AttemptRecord>> {
        self.attempts
            .get((task_id, attempt))?
            .map(|v| decode_attempt(v.value()))
            .transpose()
    }

    fn put_attempt(&mut self, task_id: u64, attempt: &AttemptRecord) -> Result<()> {
        self.attempts.insert(
            (task_id, attempt.attempt),
            encode_attempt(attempt).as_slice(),
        )?;
        Ok(())
    }

    fn idempotent(&self, gate_id: u32, key: &str) -> Result<Option<u64>> {
        Ok(self.idempotency.get((gate_id, key))?.map(|v| v.value()))
    }

    fn claim_idempotent(&mut self, gate_id: u32, key: &str, task_id: u64) -> Result<Option<u64>> {
        if let Some(held) = self.idempotent(gate_id, key)? {
            return Ok(Some(held));
        }
        self.put_idempotent(gate_id, key, task_id)?;
        Ok(None)
    }

    fn put_idempotent(&mut self, gate_id: u32, key: &str, task_id: u64) -> Result<()> {
        self.idempotency.insert((gate_id, key), task_id)?;
        Ok(())
    }

    fn forget_idempotent(&mut self, gate_id: u32, key: &str, task_id: u64) -> Result<()> {
        if self.idempotent(gate_id, key)? == Some(task_id) {
            self.idempotency.remove((gate_id, key))?;
        }
        Ok(())
    }

    fn coalesced(&self, gate_id: u32, key: &str) -> Result<Option<u64>> {
        let table = self.txn.open_table(COALESCE)?;
        Ok(table.get((gate_id, key))?.map(|v| v.value()))
    }

    fn put_coalesced(&mut self, gate_id: u32, key: &str, task_id: u64) -> Result<()> {
        self.txn
            .open_table(COALESCE)?
            .insert((gate_id, key), task_id)?;
        Ok(())
    }

    fn all_counts(&self) -> Result<Vec<(u32, Counts)>> {
        let mut out = Vec::new();
        for entry in self.counts.iter()? {
            let (k, v) = entry?;
            out.push((k.value(), Counts::decode(v.value())));
        }
        Ok(out)
    }

    fn put_counts(&mut self, gate_id: u32, counts: &Counts) -> Result<()> {
        self.counts.insert(gate_id, counts.encode().as_slice())?;
        Ok(())
    }

    fn add_counts(&mut self, deltas: &[(u32, CountsDelta)]) -> Result<()> {
        for (gate_id, delta) in deltas {
            let mut counts = self
                .counts
                .get(*gate_id)?
                .map(|v| Counts::decode(v.value()))
                .unwrap_or_default();
            counts.apply(delta);
            self.counts.insert(*gate_id, counts.encode().as_slice())?;
        }
        Ok(())
    }

    fn plugins(&self) -> Result<Vec<PluginRecord>> {
        let mut out = Vec::new();
        for entry in self.plugins.iter()? {
            let (_, v) = entry?;
            out.push(decode("plugins", v.value())?);
        }
        Ok(out)
    }

    fn put_plugin(&mut self, plugin: &PluginRecord) -> Result<()> {
        let key = plugin_key(&plugin.name, &plugin.version);
        self.plugins
            .insert(key.as_str(), encode(plugin).as_slice())?;
        Ok(())
    }

    fn add_plugin_refs(&mut self, refs: &[(String, i64)]) -> Result<()> {
        for (key, delta) in refs {
            let stored = self.plugins.get(key.as_str())?.map(|v| v.value().to_vec());
            let Some(bytes) = stored else {
                continue;
            };
            let mut plugin: PluginRecord = decode("plugins", &bytes)?;
            plugin.unfinished = plugin.unfinished.saturating_add_signed(*delta);
            self.put_plugin(&plugin)?;
        }
        Ok(())
    }

    fn put_plugin_wasm(&mut self, key: &str, wasm: &[u8]) -> Result<()> {
        self.txn.open_table(PLUGIN_WASM)?.insert(key, wasm)?;
        Ok(())
    }

    fn put_compiled(&mut self, key: &str, engine: u64, artifact: &[u8]) -> Result<()> {
        self.txn
            .open_table(PLUGIN_COMPILED)?
            .insert((key, engine), artifact)?;
        Ok(())
    }

    fn delete_plugin(&mut self, key: &str) -> Result<()> {
        self.plugins.remove(key)?;
        self.txn.open_table(PLUGIN_WASM)?.remove(key)?;
        let mut compiled = self.txn.open_table(PLUGIN_COMPILED)?;
        let engines: Vec<u64> = compiled
            .range((key, 0)..=(key, u64::MAX))?
            .map(|e| e.map(|(k, _)| k.value().1))
            .collect::<Result<_, _>>()?;
        for engine in engines {
            compiled.remove((key, engine))?;
        }
        Ok(())
    }

    fn descendants(&self, root: u64) -> Result<u32> {
        Ok(self
            .txn
            .open_table(LINEAGE)?
            .get(root)?
            .map_or(0, |v| v.value()))
    }

    fn set_descendants(&mut self, root: u64, count: u32) -> Result<()> {
        self.txn.open_table(LINEAGE)?.insert(root, count)?;
        Ok(())
    }

    fn add_descendants(&mut self, root: u64, n: i64, max: u32) -> Result<Option<u32>> {
        let had = i64::from(self.descendants(root)?);
        let total = (had + n).max(0);
        if n > 0 && total > i64::from(max) {
            return Ok(None);
        }
        let total = u32::try_from(total).unwrap_or(u32::MAX);
        self.set_descendants(root, total)?;
        Ok(Some(total))
    }

    fn schedules(&self) -> Result<Vec<ScheduleRecord>> {
        let mut out = Vec::new();
        for entry in self.schedules.iter()? {
            let (_, v) = entry?;
            out.push(decode("schedules", v.value())?);
        }
        Ok(out)
    }

    fn put_schedule(&mut self, schedule: &ScheduleRecord) -> Result<()> {
        self.schedules
            .insert(schedule.name.as_str(), encode(schedule).as_slice())?;
        Ok(())
    }

    fn delete_schedule(&mut self, name: &str) -> Result<()> {
        self.schedules.remove(name)?;
        Ok(())
    }

    fn delete_counts(&mut self, gate_id: u32) -> Result<()> {
        self.counts.remove(gate_id)?;
        Ok(())
    }

    fn put_replay(&mut self, replay: &ReplayRecord) -> Result<()> {
        self.txn
            .open_table(REPLAYS)?
            .insert(replay.id.as_str(), encode(replay).as_slice())?;
        Ok(())
    }

    fn delete_replay(&mut self, id: &str) -> Result<()> {
        self.txn.open_table(REPLAYS)?.remove(id)?;
        Ok(())
    }
}
