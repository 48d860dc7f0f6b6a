//! `sluice check`: what the store keeps beside its records (indexes, counters,
//! reference counts) against a scan of the records themselves.
//!
//! Every derived table is rebuilt in memory from `tasks` and `plugins`, then
//! compared with what is on disk. `repair` writes the rebuilt tables back; the
//! records themselves are never changed, so nothing a client was told is lost.

use std::collections::{BTreeMap, BTreeSet};

use redb::ReadTransaction;

use super::*;

/// What disagrees, one line each, and how much was looked at.
#[derive(Debug, Default, serde::Serialize)]
pub struct Findings {
    pub tasks: u64,
    pub attempts: u64,
    pub gates: u64,
    pub schedules: u64,
    pub plugins: u64,
    pub problems: Vec<String>,
}

impl Findings {
    pub(super) fn problem(&mut self, text: String) {
        // A store broken everywhere says so in a page, not a million lines.
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(text);
        } else if self.problems.len() == MAX_PROBLEMS {
            self.problems.push("… more problems not listed".into());
        }
    }
}

const MAX_PROBLEMS: usize = 200;

/// The derived tables as the records say they should be.
#[derive(Default)]
pub(super) struct Derived {
    pending: BTreeSet<(u32, u64, u64)>,
    pending_keyed: BTreeSet<(u32, String, u64, u64)>,
    running: BTreeSet<u64>,
    gate_tasks: BTreeSet<(u32, u64)>,
    due_minutes: BTreeMap<(u32, u64), u64>,
    /// Per gate: (scheduled, running), which the counters hold exactly, and
    /// the finished tasks by state, which the counters hold at least (they
    /// count what retention removed since).
    live: BTreeMap<u32, (u64, u64)>,
    ended: BTreeMap<u32, Counts>,
    /// (finished at, task) of every finished task: the retention index.
    finished: BTreeSet<(u64, u64)>,
    /// `name@version` → unfinished tasks that run it.
    plugin_users: BTreeMap<String, u64>,
    /// (gate, coalesce key) → the tasks with that key not yet started.
    coalesce: BTreeMap<(u32, String), Vec<u64>>,
}

impl Derived {
    /// Per gate: the counters on disk, and what they should be: pending and
    /// running exactly what is stored; the finished ones at least that (they
    /// also count what retention removed since), never lowered.
    fn counts(&self, counted: &BTreeMap<u32, Counts>) -> Vec<(u32, Counts, Counts)> {
        let gates: BTreeSet<u32> = counted
            .keys()
            .chain(self.live.keys())
            .chain(self.ended.keys())
            .copied()
            .collect();
        gates
            .into_iter()
            .map(|gate| {
                let on_disk = counted.get(&gate).copied().unwrap_or_default();
                let (pending, running) = self.live.get(&gate).copied().unwrap_or_default();
                let ended = self.ended.get(&gate).copied().unwrap_or_default();
                let should = Counts {
                    pending,
                    running,
                    succeeded: on_disk.succeeded.max(ended.succeeded),
                    failed: on_disk.failed.max(ended.failed),
                    expired: on_disk.expired.max(ended.expired),
                    cancelled: on_disk.cancelled.max(ended.cancelled),
                    superseded: on_disk.superseded.max(ended.superseded),
                    ..on_disk
                };
                (gate, on_disk, should)
            })
            .collect()
    }
}

fn read_counts(table: &impl ReadableTable<u32, &'static [u8]>) -> Result<BTreeMap<u32, Counts>> {
    let mut counted = BTreeMap::new();
    for entry in table.iter()? {
        let (gate, bytes) = entry?;
        counted.insert(gate.value(), Counts::decode(bytes.value()));
    }
    Ok(counted)
}

impl Derived {
    /// Adds the task stored under `key` as `bytes` to what the derived
    /// tables should hold.
    pub(super) fn add(&mut self, key: u64, bytes: &[u8], found: &mut Findings) {
        found.tasks += 1;
        let task: TaskRecord = match decode_task(bytes) {
            Ok(t) => t,
            Err(e) => {
                found.problem(format!("task {}: {e}", key));
                return;
            }
        };
        if task.id != key {
            found.problem(format!("task {} is stored under id {}", task.id, key));
        }
        self.gate_tasks.insert((task.gate_id, task.id));
        let live = self.live.entry(task.gate_id).or_default();
        match task.state {
            TaskState::Scheduled => {
                live.0 += 1;
                match &task.key {
                    None => self
                        .pending
                        .insert((task.gate_id, task.order_ms(), task.id)),
                    Some(key) => self.pending_keyed.insert((
                        task.gate_id,
                        key.clone(),
                        task.order_ms(),
                        task.id,
                    )),
                };
                *self
                    .due_minutes
                    .entry((task.gate_id, task.order_ms() / MINUTE_MS))
                    .or_default() += 1;
                if let Some(key) = &task.coalesce_key {
                    self.coalesce
                        .entry((task.gate_id, key.clone()))
                        .or_default()
                        .push(task.id);
                }
            }
            TaskState::Running => {
                live.1 += 1;
                self.running.insert(task.id);
            }
            ended => {
                let c = self.ended.entry(task.gate_id).or_default();
                match ended {
                    TaskState::Succeeded => c.succeeded += 1,
                    TaskState::Failed => c.failed += 1,
                    TaskState::Expired => c.expired += 1,
                    TaskState::Superseded => c.superseded += 1,
                    _ => c.cancelled += 1,
                }
                if let Some(at) = task.finished_at {
                    self.finished.insert((at, task.id));
                }
            }
        }
        if !task.state.is_final()
            && let Some(plugin) = &task.plugin
        {
            *self
                .plugin_users
                .entry(plugin_key(&plugin.name, &plugin.version))
                .or_default() += 1;
        }
    }
}

/// Reads every record once and says what the derived tables should hold.
fn derive(txn: &ReadTransaction, found: &mut Findings) -> Result<Derived> {
    let mut d = Derived::default();
    let tasks = txn.open_table(TASKS)?;
    for entry in tasks.iter()? {
        let (key, bytes) = entry?;
        d.add(key.value(), bytes.value(), found);
    }
    Ok(d)
}

/// What a store holds beside its records, as read from it.
#[derive(Default)]
pub(super) struct Stored {
    pub(super) gate_ids: BTreeSet<u32>,
    pub(super) pending: BTreeSet<(u32, u64, u64)>,
    pub(super) pending_keyed: BTreeSet<(u32, String, u64, u64)>,
    pub(super) running: BTreeSet<u64>,
    pub(super) gate_tasks: BTreeSet<(u32, u64)>,
    /// (finished at, task) as the retention index lists them.
    pub(super) finished: BTreeSet<(u64, u64)>,
    pub(super) due_minutes: BTreeMap<(u32, u64), u64>,
    pub(super) counted: BTreeMap<u32, Counts>,
    /// (gate, coalesce key) → the task it names.
    pub(super) coalesce: BTreeMap<(u32, String), u64>,
}

/// Compares what a store holds beside its records with what the records
/// say it should: the same on every store.
pub(super) fn compare_stored(d: &Derived, s: &Stored, found: &mut Findings) {
    for (gate, (scheduled, running)) in &d.live {
        if (*scheduled > 0 || *running > 0) && !s.gate_ids.contains(gate) {
            found.problem(format!(
                "gate id {gate}: {scheduled} scheduled and {running} running tasks, but no such gate"
            ));
        }
    }
    // Indexes: the same set of keys on disk as the records imply.
    compare(found, "pending", &d.pending, &s.pending, |(g, due, id)| {
        format!("task {id} (gate id {g}, due {due})")
    });
    compare(
        found,
        "pending_keyed",
        &d.pending_keyed,
        &s.pending_keyed,
        |(g, key, due, id)| format!("task {id} (gate id {g}, key {key:?}, due {due})"),
    );
    compare(found, "running", &d.running, &s.running, |id| {
        format!("task {id}")
    });
    compare(
        found,
        "gate_tasks",
        &d.gate_tasks,
        &s.gate_tasks,
        |(g, id)| format!("task {id} (gate id {g})"),
    );
    // Coalescing: the task not yet started is the one its key names, or a
    // create with that key would not replace it.
    for ((gate, key), ids) in &d.coalesce {
        if ids.len() > 1 {
            found.problem(format!(
                "coalesce: gate id {gate} key {key:?}: {} tasks not yet started ({ids:?}), one at most",
                ids.len()
            ));
        }
        let named = s.coalesce.get(&(*gate, key.clone())).copied();
        let newest = ids.iter().max().copied();
        if named != newest {
            let named = named.map_or("no task".to_string(), |id| format!("task {id}"));
            found.problem(format!(
                "coalesce: gate id {gate} key {key:?} names {named}, not the waiting task {}",
                newest.unwrap_or_default()
            ));
        }
    }
    // The retention index may name tasks already removed (it is read lazily);
    // what it must not do is miss one, or that task is never removed.
    for (at, id) in d.finished.difference(&s.finished) {
        found.problem(format!(
            "finished: task {id} (finished at {at}) is missing, so retention never removes it"
        ));
    }
    // Counters.
    if s.due_minutes != d.due_minutes {
        let keys: BTreeSet<_> = s.due_minutes.keys().chain(d.due_minutes.keys()).collect();
        for key in keys {
            let (on_disk, scanned) = (
                s.due_minutes.get(key).copied().unwrap_or(0),
                d.due_minutes.get(key).copied().unwrap_or(0),
            );
            if on_disk != scanned {
                found.problem(format!(
                    "due_minutes: gate id {} minute {}: {on_disk} counted, {scanned} pending",
                    key.0, key.1
                ));
            }
        }
    }
    for (gate, on_disk, should) in d.counts(&s.counted) {
        if !s.gate_ids.contains(&gate) && !s.counted.contains_key(&gate) {
            // A deleted gate's counters went with it; its ended tasks stay
            // until retention (live ones are a problem above).
            continue;
        }
        for (name, on_disk, should) in [
            ("pending", on_disk.pending, should.pending),
            ("running", on_disk.running, should.running),
            ("succeeded", on_disk.succeeded, should.succeeded),
            ("failed", on_disk.failed, should.failed),
            ("expired", on_disk.expired, should.expired),
            ("cancelled", on_disk.cancelled, should.cancelled),
            ("superseded", on_disk.superseded, should.superseded),
        ] {
            if on_disk != should {
                found.problem(format!(
                    "counts: gate id {gate}: {on_disk} {name} counted, {should} such tasks stored"
                ));
            }
        }
    }
}

/// Checks the store `txn` reads: every record decodes, and every derived
/// table agrees with the records. Changes nothing.
pub(super) fn check(txn: &ReadTransaction) -> Result<Findings> {
    let mut found = Findings::default();
    let d = derive(txn, &mut found)?;
    let mut s = Stored::default();
    for entry in txn.open_table(GATES)?.iter()? {
        let (name, bytes) = entry?;
        found.gates += 1;
        match decode::<GateRecord>("gates", bytes.value()) {
            Ok(g) => {
                s.gate_ids.insert(g.id);
            }
            Err(e) => found.problem(format!("gate {:?}: {e}", name.value())),
        }
    }
    for entry in txn.open_table(SCHEDULES)?.iter()? {
        let (name, bytes) = entry?;
        found.schedules += 1;
        if let Err(e) = decode::<ScheduleRecord>("schedules", bytes.value()) {
            found.problem(format!("schedule {:?}: {e}", name.value()));
        }
    }
    for entry in txn.open_table(ATTEMPTS)?.iter()? {
        let (key, bytes) = entry?;
        found.attempts += 1;
        if let Err(e) = decode_attempt(bytes.value()) {
            let (task, n) = key.value();
            found.problem(format!("attempt {n} of task {task}: {e}"));
        }
    }
    s.pending = keys(txn, PENDING)?;
    // A file from before keys has no such table: nothing is indexed by key.
    match txn.open_table(PENDING_KEYED) {
        Ok(table) => {
            for entry in table.iter()? {
                let (k, _) = entry?;
                let (gate, key, due, id) = k.value();
                s.pending_keyed.insert((gate, key.to_owned(), due, id));
            }
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(e.into()),
    }
    s.running = keys(txn, RUNNING)?;
    s.gate_tasks = keys(txn, GATE_TASKS)?;
    match txn.open_table(COALESCE) {
        Ok(table) => {
            for entry in table.iter()? {
                let (k, v) = entry?;
                let (gate, key) = k.value();
                s.coalesce.insert((gate, key.to_owned()), v.value());
            }
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(e.into()),
    }
    for entry in txn.open_table(FINISHED)?.iter()? {
        let (key, ids) = entry?;
        let (at, _) = key.value();
        s.finished
            .extend(finished_ids(ids.value()).map(|id| (at, id)));
    }
    for entry in txn.open_table(DUE_MINUTES)?.iter()? {
        let (key, n) = entry?;
        s.due_minutes.insert(key.value(), n.value());
    }
    s.counted = read_counts(&txn.open_table(COUNTS)?)?;
    compare_stored(&d, &s, &mut found);

    // Plugins: each record has its component, and counts its unfinished users.
    let wasm = txn.open_table(PLUGIN_WASM)?;
    for entry in txn.open_table(PLUGINS)?.iter()? {
        let (key, bytes) = entry?;
        found.plugins += 1;
        let key = key.value();
        let plugin: PluginRecord = match decode("plugins", bytes.value()) {
            Ok(p) => p,
            Err(e) => {
                found.problem(format!("plugin {key}: {e}"));
                continue;
            }
        };
        if wasm.get(key)?.is_none() {
            found.problem(format!("plugin {key}: its component is missing"));
        }
        let users = d.plugin_users.get(key).copied().unwrap_or(0);
        if plugin.unfinished != users {
            found.problem(format!(
                "plugin {key}: {} unfinished tasks counted, {users} stored",
                plugin.unfinished
            ));
        }
    }
    Ok(found)
}

/// Every key of an index table (one whose values are `()`).
fn keys<K>(txn: &ReadTransaction, table: TableDefinition<K, ()>) -> Result<BTreeSet<K>>
where
    K: redb::Key + Ord + 'static + for<'a> redb::Value<SelfType<'a> = K>,
{
    let mut out = BTreeSet::new();
    for entry in txn.open_table(table)?.iter()? {
        out.insert(entry?.0.value());
    }
    Ok(out)
}

/// Lines for the keys only one side has.
fn compare<K: Ord + Clone>(
    found: &mut Findings,
    table: &str,
    expected: &BTreeSet<K>,
    on_disk: &BTreeSet<K>,
    name: impl Fn(K) -> String,
) {
    for k in expected.difference(on_disk) {
        found.problem(format!("{table}: {} is missing", name(k.clone())));
    }
    for k in on_disk.difference(expected) {
        found.problem(format!("{table}: {} should not be there", name(k.clone())));
    }
}

impl Store {
    /// Checks the store; see [`check`].
    pub fn check(&self) -> Result<Findings> {
        check(&self.db.begin_read()?)
    }

    /// Rebuilds every derived table from the records, in one commit: the
    /// indexes (a coalesce key names its waiting task again), `due_minutes`, the live counters (the finished ones are raised
    /// to what is stored, never lowered) and the plugins' counts of users.
    pub fn repair(&self) -> Result<()> {
        let mut ignored = Findings::default();
        let d = derive(&self.db.begin_read()?, &mut ignored)?;
        self.write(|tx| {
            tx.pending.retain(|_, _| false)?;
            for &key in &d.pending {
                tx.pending.insert(key, ())?;
            }
            tx.pending_keyed.retain(|_, _| false)?;
            for (gate, key, due, id) in &d.pending_keyed {
                tx.pending_keyed
                    .insert((*gate, key.as_str(), *due, *id), ())?;
            }
            tx.running.retain(|_, _| false)?;
            for &id in &d.running {
                tx.running.insert(id, ())?;
            }
            tx.gate_tasks.retain(|_, _| false)?;
            for &key in &d.gate_tasks {
                tx.gate_tasks.insert(key, ())?;
            }
            tx.due_minutes.retain(|_, _| false)?;
            for (&key, &n) in &d.due_minutes {
                tx.due_minutes.insert(key, n)?;
            }
            tx.finished_ids.extend(d.finished.iter().copied());
            for ((gate, key), ids) in &d.coalesce {
                if let Some(&newest) = ids.iter().max() {
                    tx.put_coalesced(*gate, key, newest)?;
                }
            }
            let counted = read_counts(&tx.counts)?;
            for (gate, _, should) in d.counts(&counted) {
                tx.counts.insert(gate, should.encode().as_slice())?;
            }
            let mut plugins = Vec::new();
            for entry in tx.plugins.iter()? {
                let (_, bytes) = entry?;
                if let Ok(p) = decode::<PluginRecord>("plugins", bytes.value()) {
                    plugins.push(p);
                }
            }
            for mut plugin in plugins {
                plugin.unfinished = d
                    .plugin_users
                    .get(&plugin_key(&plugin.name, &plugin.version))
                    .copied()
                    .unwrap_or(0);
                tx.put_plugin(&plugin)?;
            }
            Ok(())
        })
    }
}
