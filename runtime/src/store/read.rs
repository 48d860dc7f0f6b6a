//! Reads: `Reader`, a consistent snapshot for the API, never blocking the
//! writer.

use super::*;

/// Which tasks a listing wants.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TaskFilter {
    pub gate_id: Option<u32>,
    pub state: Option<TaskState>,
    pub label: Option<(String, String)>,
    /// Finished within `[from, to]` (ms).
    pub finished: Option<(u64, u64)>,
    /// Of this key (the tenant) only; absent in filters stored before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

impl TaskFilter {
    /// Whether a task passes the state, label, time and key parts (the
    /// gate part is the index a listing walks).
    pub fn matches(&self, task: &TaskRecord) -> bool {
        self.state.is_none_or(|s| task.state == s)
            && (self.key.as_ref()).is_none_or(|key| task.key.as_ref() == Some(key))
            && self
                .label
                .as_ref()
                .is_none_or(|(k, v)| task.labels.get(k) == Some(v))
            && self.finished.is_none_or(|(from, to)| {
                task.finished_at.is_some_and(|at| (from..=to).contains(&at))
            })
    }
}

/// Pending keys in order, cut where `pending_range` stops: at `limit` keys
/// or at the first due after `until`, returning the first key not taken.
#[allow(clippy::type_complexity, reason = "a plain pair of key lists")]
pub(super) fn cut_range(
    keys: impl IntoIterator<Item = Result<(Timestamp, TaskId)>>,
    until: Timestamp,
    limit: usize,
) -> Result<(Vec<(Timestamp, TaskId)>, Option<(Timestamp, TaskId)>)> {
    let mut out = Vec::new();
    for key in keys {
        let key = key?;
        if out.len() >= limit || key.0 > until {
            return Ok((out, Some(key)));
        }
        out.push(key);
    }
    Ok((out, None))
}

/// Appends each key of the gate in `pending_keyed` with its first task's
/// order, at most `limit` keys: one seek per key, never a walk of a key's
/// backlog.
#[allow(clippy::type_complexity, reason = "a plain list of pairs")]
pub(super) fn keyed_firsts(
    table: &impl ReadableTable<(u32, &'static str, u64, u64), ()>,
    gate_id: u32,
    limit: usize,
    out: &mut Vec<(Option<String>, (Timestamp, TaskId))>,
) -> Result<()> {
    use std::ops::Bound;
    let upper = (gate_id.saturating_add(1), "", 0, 0);
    let mut after: Option<String> = None;
    for _ in 0..limit {
        let lower = match &after {
            None => Bound::Included((gate_id, "", 0, 0)),
            Some(key) => Bound::Excluded((gate_id, key.as_str(), u64::MAX, u64::MAX)),
        };
        let Some(entry) = table.range((lower, Bound::Excluded(upper)))?.next() else {
            break;
        };
        let (k, _) = entry?;
        let (g, key, due, id) = k.value();
        if g != gate_id {
            break;
        }
        out.push((Some(key.to_owned()), (Timestamp(due), TaskId(id))));
        after = Some(key.to_owned());
    }
    Ok(())
}

/// One key of a gate with pending tasks.
#[derive(Clone, Debug, PartialEq)]
pub struct KeyBacklog {
    pub key: String,
    /// Pending tasks, counted up to the cap asked for.
    pub pending: u64,
    pub oldest_due_ms: u64,
}

/// Keys looked at for a gate's oldest pending task.
const OLDEST_KEYS_LIMIT: usize = 10_000;

/// At most this many rows are looked at per listing call; a sparse filter answers
/// with fewer rows and a cursor to continue from.
pub(super) const LIST_SCAN_LIMIT: usize = 20_000;

impl Reads for Reader {
    fn plugins(&self) -> Result<Vec<PluginRecord>> {
        let table = self.txn.open_table(PLUGINS)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (_, v) = entry?;
            out.push(decode("plugins", v.value())?);
        }
        Ok(out)
    }

    fn plugin(&self, key: &str) -> Result<Option<PluginRecord>> {
        let table = self.txn.open_table(PLUGINS)?;
        table
            .get(key)?
            .map(|v| decode("plugins", v.value()))
            .transpose()
    }

    fn plugin_wasm(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let table = self.txn.open_table(PLUGIN_WASM)?;
        Ok(table.get(key)?.map(|v| v.value().to_vec()))
    }

    fn compiled(&self, key: &str, engine: u64) -> Result<Option<Vec<u8>>> {
        let table = self.txn.open_table(PLUGIN_COMPILED)?;
        Ok(table.get((key, engine))?.map(|v| v.value().to_vec()))
    }

    fn gates(&self) -> Result<Vec<GateRecord>> {
        let table = self.txn.open_table(GATES)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (_, v) = entry?;
            out.push(decode("gates", v.value())?);
        }
        Ok(out)
    }

    fn gate(&self, name: &str) -> Result<Option<GateRecord>> {
        let table = self.txn.open_table(GATES)?;
        table
            .get(name)?
            .map(|v| decode("gates", v.value()))
            .transpose()
    }

    fn task(&self, id: u64) -> Result<Option<TaskRecord>> {
        let table = self.txn.open_table(TASKS)?;
        table.get(id)?.map(|v| decode_task(v.value())).transpose()
    }

    fn attempts(&self, task_id: u64) -> Result<Vec<AttemptRecord>> {
        let table = self.txn.open_table(ATTEMPTS)?;
        let mut out = Vec::new();
        for entry in table.range((task_id, 0)..=(task_id, u32::MAX))? {
            let (_, v) = entry?;
            out.push(decode_attempt(v.value())?);
        }
        Ok(out)
    }

    fn counts(&self, gate_id: u32) -> Result<Counts> {
        let table = self.txn.open_table(COUNTS)?;
        Ok(table
            .get(gate_id)?
            .map_or_else(Counts::default, |v| Counts::decode(v.value())))
    }

    fn gate_keys(
        &self,
        gate_id: u32,
        after: Option<&str>,
        limit: usize,
        count_cap: u64,
    ) -> Result<Vec<KeyBacklog>> {
        use std::ops::Bound;
        let table = self.txn.open_table(PENDING_KEYED)?;
        let upper = Bound::Excluded((gate_id.saturating_add(1), "", 0, 0));
        let mut after = after.map(str::to_owned);
        let mut out = Vec::new();
        while out.len() < limit {
            let lower = match &after {
                None => Bound::Included((gate_id, "", 0, 0)),
                Some(key) => Bound::Excluded((gate_id, key.as_str(), u64::MAX, u64::MAX)),
            };
            let Some(entry) = table.range((lower, upper))?.next() else {
                break;
            };
            let (k, _) = entry?;
            let (g, key, due, _) = k.value();
            if g != gate_id {
                break;
            }
            let key = key.to_owned();
            let mut pending = 0;
            for entry in table.range(
                (gate_id, key.as_str(), 0, 0)..=(gate_id, key.as_str(), u64::MAX, u64::MAX),
            )? {
                entry?;
                pending += 1;
                if pending >= count_cap {
                    break;
                }
            }
            out.push(KeyBacklog {
                key: key.clone(),
                pending,
                oldest_due_ms: due,
            });
            after = Some(key);
        }
        Ok(out)
    }

    fn oldest_pending(&self, gate_id: u32) -> Result<Option<u64>> {
        let table = self.txn.open_table(PENDING)?;
        let mut range = table.range((gate_id, 0, 0)..=(gate_id, u64::MAX, u64::MAX))?;
        let unnamed = match range.next() {
            Some(entry) => Some(entry?.0.value().1),
            None => None,
        };
        // With keys, the oldest of each key's first (of the first keys, past
        // thousands of them).
        let mut firsts = Vec::new();
        let keyed = self.txn.open_table(PENDING_KEYED)?;
        keyed_firsts(&keyed, gate_id, OLDEST_KEYS_LIMIT, &mut firsts)?;
        let oldest_keyed = firsts.iter().map(|(_, (due, _))| due.as_ms()).min();
        Ok(match (unnamed, oldest_keyed) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        })
    }

    fn forecast(&self, gate_id: u32, from: u64, n: usize) -> Result<Vec<u64>> {
        let table = self.txn.open_table(DUE_MINUTES)?;
        let first = from / MINUTE_MS;
        let mut out = vec![0; n];
        for entry in table.range((gate_id, first)..(gate_id, first + n as u64))? {
            let (key, count) = entry?;
            let index = (key.value().1 - first) as usize;
            out[index] = count.value();
        }
        Ok(out)
    }

    fn due_now(&self, gate_id: u32, now: u64) -> Result<u64> {
        let table = self.txn.open_table(DUE_MINUTES)?;
        let minute = now / MINUTE_MS;
        let mut n = 0;
        for entry in table.range((gate_id, 0)..(gate_id, minute))? {
            n += entry?.1.value();
        }
        // The current minute row by row, up to a bound: past it (a herd of
        // tasks due in the same minute) the whole minute counts as due.
        // Tasks with keys due this minute are not walked: the whole minute
        // counts then.
        let keyed = self.txn.open_table(PENDING_KEYED)?;
        let mut any_keyed =
            keyed.range((gate_id, "", 0, 0)..(gate_id.saturating_add(1), "", 0, 0))?;
        if any_keyed.next().is_some() {
            let whole = table.get((gate_id, minute))?.map_or(0, |v| v.value());
            return Ok(n + whole);
        }
        let pending = self.txn.open_table(PENDING)?;
        let mut in_minute = 0;
        for entry in pending.range((gate_id, minute * MINUTE_MS, 0)..=(gate_id, now, u64::MAX))? {
            entry?;
            in_minute += 1;
            if in_minute == DUE_SCAN_LIMIT {
                let whole = table.get((gate_id, minute))?.map_or(0, |v| v.value());
                return Ok(n + whole.max(in_minute));
            }
        }
        Ok(n + in_minute)
    }

    fn list_tasks(
        &self,
        filter: &TaskFilter,
        before: Option<u64>,
        limit: usize,
    ) -> Result<(Vec<TaskRecord>, Option<u64>)> {
        let tasks = self.txn.open_table(TASKS)?;
        let upper = before.unwrap_or(u64::MAX);
        let ids: Box<dyn Iterator<Item = Result<u64>>> = match filter.gate_id {
            Some(gate_id) => {
                let index = self.txn.open_table(GATE_TASKS)?;
                let range = index.range((gate_id, 0)..(gate_id, upper))?.rev();
                Box::new(range.map(|e| Ok(e?.0.value().1)))
            }
            None => {
                let range = tasks.range(0..upper)?.rev();
                Box::new(range.map(|e| Ok(e?.0.value())))
            }
        };
        let mut out = Vec::new();
        let mut scanned = 0;
        for id in ids {
            let id = id?;
            scanned += 1;
            let last = Some(id);
            let Some(task) = tasks.get(id)?.map(|v| decode_task(v.value())).transpose()? else {
                continue;
            };
            if filter.matches(&task) {
                out.push(task);
                if out.len() >= limit {
                    return Ok((out, last));
                }
            }
            if scanned >= LIST_SCAN_LIMIT {
                return Ok((out, last));
            }
        }
        Ok((out, None))
    }

    fn schedules(&self) -> Result<Vec<ScheduleRecord>> {
        let table = self.txn.open_table(SCHEDULES)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (_, v) = entry?;
            out.push(decode("schedules", v.value())?);
        }
        Ok(out)
    }

    fn schedule(&self, name: &str) -> Result<Option<ScheduleRecord>> {
        let table = self.txn.open_table(SCHEDULES)?;
        table
            .get(name)?
            .map(|v| decode("schedules", v.value()))
            .transpose()
    }

    fn task_count(&self) -> Result<u64> {
        Ok(self.txn.open_table(TASKS)?.len()?)
    }

    fn replay(&self, id: &str) -> Result<Option<ReplayRecord>> {
        let table = match self.txn.open_table(REPLAYS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        table
            .get(id)?
            .map(|v| decode("replays", v.value()))
            .transpose()
    }

    fn replays(&self) -> Result<Vec<ReplayRecord>> {
        let table = match self.txn.open_table(REPLAYS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut out = Vec::new();
        for entry in table.iter()? {
            out.push(decode("replays", entry?.1.value())?);
        }
        Ok(out)
    }
}
