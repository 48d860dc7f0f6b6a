//! `Kept`: the records of unfinished webhook tasks an engine has lately
//! read or written, as committed: those a load put in a gate's queue, until
//! they start, and those running, until they end.
//!
//! The turn that starts a task, and the one that ends it, then take its
//! record from memory instead of reading and decoding it in the write
//! transaction. Only the store's one writer may keep records (redb: every
//! write to a task passes through this engine's turns, and only retention
//! deletes one, once finished); where several engines write (PostgreSQL),
//! another node may change a task meanwhile, so nothing is kept.
//!
//! The invariant: a kept record equals the task's committed record. A turn
//! borrows the whole set (`Engine::turn`), takes out each record it
//! touches, puts back those still unfinished once written (`Turn::flush`),
//! and the engine has the set back only when the turn committed.

use std::collections::HashMap;

use crate::store::{BodyRecord, TaskRecord};

/// At most this much memory (by `weight`) in kept records: beyond it, a
/// task's start or end reads its record from the store as before.
const BUDGET: usize = 16 << 20;

#[derive(Default)]
pub(super) struct Kept {
    on: bool,
    records: HashMap<u64, TaskRecord>,
    bytes: usize,
}

impl Kept {
    /// Keeps records when `on` (the store has one writer).
    pub(super) fn new(on: bool) -> Kept {
        Kept {
            on,
            ..Kept::default()
        }
    }

    pub(super) fn contains(&self, id: u64) -> bool {
        self.records.contains_key(&id)
    }

    /// Takes task `id`'s record out: whoever took it writes it back or
    /// leaves the store's copy as it is.
    pub(super) fn take(&mut self, id: u64) -> Option<TaskRecord> {
        let record = self.records.remove(&id)?;
        self.bytes -= weight(&record);
        Some(record)
    }

    /// Keeps `record`, as committed, if it is an unfinished webhook task
    /// and fits; otherwise lets it go.
    pub(super) fn put(&mut self, record: TaskRecord) {
        // An older copy goes first: never kept beside, or instead of, the
        // record as now committed.
        self.take(record.id);
        if !self.on || record.state.is_final() || record.webhook.is_none() {
            return;
        }
        let size = weight(&record);
        if self.bytes + size > BUDGET {
            return;
        }
        self.bytes += size;
        self.records.insert(record.id, record);
    }

    /// Forgets every record: the next turns read from the store.
    pub(super) fn clear(&mut self) {
        self.records.clear();
        self.bytes = 0;
    }

    /// The whole set, for a turn, leaving an empty one (keeping as this
    /// one does) in its place until the turn commits.
    pub(super) fn lend(&mut self) -> Kept {
        std::mem::replace(self, Kept::new(self.on))
    }

    /// How many records it keeps, or the first that is not `stored`'s.
    pub(super) fn check(
        &self,
        stored: impl Fn(u64) -> Result<Option<TaskRecord>, String>,
    ) -> Result<usize, String> {
        for (id, record) in &self.records {
            let on_disk = stored(*id)?;
            if on_disk.as_ref() != Some(record) {
                return Err(format!("task {id}: kept {record:?}, committed {on_disk:?}"));
            }
        }
        Ok(self.records.len())
    }
}

/// About what a kept record costs in memory: its variable parts and a
/// fixed share for the rest.
fn weight(record: &TaskRecord) -> usize {
    let Some(webhook) = &record.webhook else {
        return 0;
    };
    let body = match &webhook.body {
        Some(BodyRecord::Json(json)) => json.as_str().len(),
        Some(BodyRecord::Text(text)) => text.len(),
        None => 0,
    };
    let headers: usize = webhook
        .headers
        .iter()
        .map(|(name, value)| name.len() + value.len() + 48)
        .sum();
    let labels: usize = record
        .labels
        .iter()
        .map(|(name, value)| name.len() + value.len() + 48)
        .sum();
    512 + webhook.url.len() + body + headers + labels + record.gate.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: u64, state: &str, body: &str) -> TaskRecord {
        serde_json::from_value(serde_json::json!({
            "id": id, "gate": "g", "gate_id": 1, "state": state,
            "webhook": { "url": "http://127.0.0.1:9/", "method": "POST", "headers": {},
                         "body": { "text": body } },
            "created_at": 1, "scheduled_at": 1, "due_at": 1, "timeout_ms": 1000,
            "retry": { "max_attempts": 1, "initial_ms": 1, "max_ms": 1, "multiplier": 2.0,
                       "jitter": false, "max_retry_duration_ms": null },
            "expires_at": null, "idempotency_key": null, "labels": {},
            "attempts": 1, "first_attempt_at": 1, "last_error": null, "finished_at": null,
        }))
        .expect("task record")
    }

    #[test]
    fn keeps_unfinished_webhooks_only_and_each_once() {
        let mut kept = Kept::new(true);
        kept.put(task(1, "running", "a"));
        kept.put(task(2, "succeeded", "b"));
        kept.put(task(3, "scheduled", "c"));
        kept.put(task(5, "cancelled", "e"));
        let mut plugin = task(4, "running", "d");
        plugin.webhook = None;
        kept.put(plugin);
        assert!(kept.contains(1) && kept.contains(3));
        assert!(!kept.contains(2) && !kept.contains(4) && !kept.contains(5));
        assert_eq!(kept.take(3).map(|t| t.id), Some(3));
        assert_eq!(kept.take(1).map(|t| t.id), Some(1));
        assert!(kept.take(1).is_none(), "taken once");
        assert_eq!(kept.bytes, 0, "what it weighed went with it");
    }

    #[test]
    fn keeps_nothing_for_a_store_with_several_writers() {
        let mut kept = Kept::new(false);
        kept.put(task(1, "running", "a"));
        assert!(!kept.contains(1));
    }

    #[test]
    fn stays_within_its_budget_and_counts_a_replaced_record_once() {
        let mut kept = Kept::new(true);
        let body = "x".repeat(1 << 20);
        for id in 0..40 {
            kept.put(task(id, "running", &body));
        }
        assert!(kept.bytes <= BUDGET, "{} bytes kept", kept.bytes);
        let held = kept.records.len();
        assert!(
            (10..40).contains(&held),
            "{held} of 40 one-MiB records kept"
        );
        let before = kept.bytes;
        let id = *kept.records.keys().next().expect("one kept");
        kept.put(task(id, "running", &body));
        assert_eq!(kept.bytes, before, "a record kept again weighs once");
        kept.clear();
        assert_eq!((kept.records.len(), kept.bytes), (0, 0));
    }

    #[test]
    fn check_finds_a_record_that_is_not_the_stores() {
        let mut kept = Kept::new(true);
        kept.put(task(1, "running", "a"));
        assert_eq!(kept.check(|_| Ok(Some(task(1, "running", "a")))), Ok(1));
        assert!(kept.check(|_| Ok(Some(task(1, "succeeded", "a")))).is_err());
        assert!(kept.check(|_| Ok(None)).is_err());
    }

    #[test]
    fn a_finished_record_replaces_its_older_copy() {
        let mut kept = Kept::new(true);
        kept.put(task(1, "running", "a"));
        kept.put(task(1, "succeeded", "a"));
        assert!(!kept.contains(1));
        assert_eq!(kept.bytes, 0);
    }
}
