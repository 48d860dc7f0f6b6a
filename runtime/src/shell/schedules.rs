//! Schedules in the driver: each keeps at most one occurrence in progress, and
//! the next is created in the same commit in which the current one ends. The
//! decisions (which occurrence is next, what is skipped) come from
//! `core::schedule`; this file only records them.

use std::time::Duration;

use super::{At, Engine, ShellError, Turn, targets};
use crate::core::schedule::{self, Misfire};
use crate::core::{TaskId, Timestamp};
use crate::model::{NewTask, ScheduleSpec};
use crate::store::{
    BackoffRecord, OccurrenceRecord, RunRecord, ScheduleRecord, StoreError, TaskState,
    TemplateRecord,
};

/// History kept on each schedule.
const LAST_RUNS: usize = 10;

impl Engine {
    pub(super) fn put_schedule(
        &mut self,
        turn: &mut Turn<'_>,
        name: String,
        spec: ScheduleSpec,
    ) -> Result<Result<(ScheduleRecord, bool), ShellError>, StoreError> {
        let now = turn.now;
        let new = &spec.template.gate;
        if let Some(old) = self.schedules.get(&name).map(|e| &e.template.gate)
            && old != new
            && self.moved(new).is_some()
        {
            // Its occurrences, its current one among them, are this
            // engine's; another node runs the new gate.
            return Ok(Err(ShellError::Conflict(format!(
                "schedule {name:?} runs with gate {old:?}, and gate {new:?} is run by another \
                 node: a schedule moves only between gates of one node; delete it and create \
                 it again with the new gate"
            ))));
        }
        let Some(gate) = self.gates.get(new) else {
            return Ok(Err(ShellError::NoGate {
                at: At::item(0, "gate"),
                gate: spec.template.gate.clone(),
            }));
        };
        if let Err(e) = self.check_target(&spec.template.target, gate, 0) {
            return Ok(Err(e));
        }
        let t = &spec.template;
        let mut template = TemplateRecord {
            gate: t.gate.clone(),
            webhook: None,
            plugin: None,
            max_attempts: t.max_attempts,
            timeout_ms: t.timeout.map(|d| d.as_millis() as u64),
            backoff: t.backoff.map(|b| BackoffRecord {
                initial_ms: b.initial.map(|d| d.as_millis() as u64),
                max_ms: b.max.map(|d| d.as_millis() as u64),
                multiplier: b.multiplier,
                jitter: b.jitter,
            }),
            max_retry_duration_ms: t.max_retry_duration.map(|d| d.as_millis() as u64),
            expires_after_ms: t.expires_after.map(|d| d.as_millis() as u64),
            labels: t.labels.clone(),
            key: t.key.clone(),
        };
        (template.webhook, template.plugin) = targets::to_records(t.target.clone());
        let existing = self.schedules.get(&name).cloned();
        let created = existing.is_none();
        let every_ms = spec.every.map(|d| d.as_millis() as u64);
        let mut record = ScheduleRecord {
            name: name.clone(),
            cron: spec.cron.clone(),
            timezone: spec.timezone.clone(),
            every_ms,
            // An unchanged interval keeps its phase: a PUT of the same
            // schedule (a config applied again) moves none of its times.
            anchor: existing
                .as_ref()
                .filter(|e| every_ms.is_some() && e.every_ms == every_ms)
                .map_or(now.as_ms(), |e| e.anchor),
            misfire: spec.misfire.as_str().into(),
            catchup_limit: spec.catchup_limit,
            jitter_ms: spec.jitter.as_millis() as u64,
            template,
            paused: existing.as_ref().is_some_and(|e| e.paused),
            current: None,
            last_scheduled: existing.as_ref().and_then(|e| e.last_scheduled),
            counted_through: now.as_ms(),
            missed: existing.as_ref().map_or(0, |e| e.missed),
            skipped: existing.as_ref().map_or(0, |e| e.skipped),
            last_runs: existing
                .as_ref()
                .map(|e| e.last_runs.clone())
                .unwrap_or_default(),
            last_error: None,
            created_at: existing.as_ref().map_or(now.as_ms(), |e| e.created_at),
            updated_at: now.as_ms(),
        };
        if let Some(current) = existing.and_then(|e| e.current) {
            // A pending occurrence follows the new rule: cancel and re-plan. One
            // already running finishes; the next is planned when it ends.
            match turn.task(current.task)?.map(|t| t.state) {
                Some(TaskState::Running) => record.current = Some(current),
                Some(TaskState::Scheduled) => {
                    self.schedules.remove(&name);
                    self.withdraw(turn, current.task)?;
                }
                _ => {}
            }
        }
        self.schedules.insert(name.clone(), record);
        if self.schedules[&name].current.is_none() && !self.schedules[&name].paused {
            let from = running_now(&self.schedules[&name], now);
            self.plan_from(turn, &name, from, Misfire::Skip)?;
        }
        let record = self.schedules[&name].clone();
        turn.tx.put_schedule(&record)?;
        Ok(Ok((record, created)))
    }

    pub(super) fn delete_schedule(
        &mut self,
        turn: &mut Turn<'_>,
        name: &str,
    ) -> Result<Result<(), ShellError>, StoreError> {
        let Some(record) = self.schedules.remove(name) else {
            return Ok(Err(ShellError::NotFound {
                what: format!("schedule {name:?}"),
            }));
        };
        if let Some(current) = record.current
            && turn
                .task(current.task)?
                .is_some_and(|t| t.state == TaskState::Scheduled)
        {
            self.withdraw(turn, current.task)?;
        }
        turn.tx.delete_schedule(name)?;
        Ok(Ok(()))
    }

    pub(super) fn set_schedule_paused(
        &mut self,
        turn: &mut Turn<'_>,
        name: &str,
        paused: bool,
    ) -> Result<Result<ScheduleRecord, ShellError>, StoreError> {
        let Some(record) = self.schedules.get_mut(name) else {
            return Ok(Err(ShellError::NotFound {
                what: format!("schedule {name:?}"),
            }));
        };
        let was = record.paused;
        record.paused = paused;
        record.updated_at = turn.now.as_ms();
        if paused && !was {
            // A pending occurrence is withdrawn; a running one finishes.
            if let Some(current) = record.current
                && turn
                    .task(current.task)?
                    .is_some_and(|t| t.state == TaskState::Scheduled)
            {
                if let Some(r) = self.schedules.get_mut(name) {
                    r.current = None;
                }
                self.withdraw(turn, current.task)?;
            }
        }
        if !paused && was && self.schedules[name].current.is_none() {
            // Occurrences that fell into the pause are skipped, whatever the
            // misfire policy: pausing means "not now".
            let from = running_now(&self.schedules[name], turn.now);
            self.plan_from(turn, name, from, Misfire::Skip)?;
        }
        let record = self.schedules[name].clone();
        turn.tx.put_schedule(&record)?;
        Ok(Ok(record))
    }

    /// An occurrence ended (succeeded, failed for good, expired or was cancelled):
    /// record it and request the next.
    pub(super) fn occurrence_ended(
        &mut self,
        turn: &mut Turn<'_>,
        name: &str,
        task: u64,
        state: TaskState,
    ) -> Result<(), StoreError> {
        let Some(record) = self.schedules.get_mut(name) else {
            return Ok(());
        };
        let Some(current) = record.current.filter(|c| c.task == task) else {
            return Ok(());
        };
        record.current = None;
        record.last_scheduled = Some(current.scheduled_at);
        record.last_runs.push(RunRecord {
            scheduled_at: current.scheduled_at,
            task,
            state,
        });
        if record.last_runs.len() > LAST_RUNS {
            record.last_runs.remove(0);
        }
        record.updated_at = turn.now.as_ms();
        if !record.paused {
            let misfire = record.misfire();
            self.plan_from(turn, name, Timestamp(current.scheduled_at), misfire)?;
        }
        let record = self.schedules[name].clone();
        turn.tx.put_schedule(&record)?;
        Ok(())
    }

    /// Withdraws the schedule's pending occurrence (a pause, a PUT, a
    /// delete): it ends cancelled and its key is freed, so planning again at
    /// its time (a resume, the new rule) creates it anew, where the key
    /// would find it ended and the occurrence would never run.
    fn withdraw(&mut self, turn: &mut Turn<'_>, task: u64) -> Result<(), StoreError> {
        if let Ok(task) = self.cancel_task(turn, TaskId(task))?
            && let Some(key) = &task.idempotency_key
        {
            turn.tx.forget_idempotent(task.gate_id, key, task.id)?;
        }
        Ok(())
    }

    /// Plans and creates the next occurrence after `prev`.
    fn plan_from(
        &mut self,
        turn: &mut Turn<'_>,
        name: &str,
        prev: Timestamp,
        misfire: Misfire,
    ) -> Result<(), StoreError> {
        let now = turn.now;
        let record = &self.schedules[name];
        let rule = match record.rule() {
            Ok(rule) => rule,
            Err(e) => {
                self.stall(name, format!("rule no longer valid: {e}"));
                return Ok(());
            }
        };
        // An occurrence runs at its time plus the schedule's offset: it is
        // missed once that has passed, not its time.
        let jitter = schedule::jitter_offset(name, Duration::from_millis(record.jitter_ms));
        let now = before_offset(now, jitter);
        let Some(next) = schedule::next_occurrence(
            &rule,
            prev,
            now,
            Timestamp(record.counted_through),
            misfire,
            record.catchup_limit,
        ) else {
            self.stall(name, "the rule has no further occurrences".into());
            return Ok(());
        };
        let key = format!("schedule:{name}:{}", next.scheduled.rfc3339());
        let task = occurrence_task(record, next.scheduled.plus(jitter), key, name);
        if let Some(r) = self.schedules.get_mut(name) {
            r.missed += next.missed;
            r.skipped += next.skipped;
            r.counted_through = r.counted_through.max(now.as_ms());
        }
        match self.create_tasks(turn, vec![task])? {
            Err(e) => self.stall(name, format!("could not create the next occurrence: {e}")),
            Ok(created) => {
                let Some(c) = created.into_iter().next() else {
                    return Ok(());
                };
                if let Some(r) = self.schedules.get_mut(name) {
                    r.current = Some(OccurrenceRecord {
                        task: c.id.0,
                        scheduled_at: next.scheduled.as_ms(),
                    });
                    r.last_error = None;
                }
                let state = c.task.as_ref().map(|t| t.state);
                if let Some(state) = state.filter(|s| c.replayed && s.is_final()) {
                    // This occurrence already ran (its key existed): never twice.
                    turn.ended.push((c.id.0, state, name.to_string()));
                }
            }
        }
        Ok(())
    }

    fn stall(&mut self, name: &str, why: String) {
        tracing::warn!(schedule = name, "{why}");
        if let Some(r) = self.schedules.get_mut(name) {
            r.last_error = Some(why);
        }
    }
}

/// `now` less a schedule's jitter offset: the time of an occurrence that
/// runs now. Planning from it (a PUT, a resume) finds an occurrence whose
/// time has passed but not its run.
fn before_offset(now: Timestamp, offset: Duration) -> Timestamp {
    Timestamp(now.as_ms().saturating_sub(offset.as_millis() as u64))
}

/// The time of the schedule's occurrence that would run now.
fn running_now(record: &ScheduleRecord, now: Timestamp) -> Timestamp {
    let offset = schedule::jitter_offset(&record.name, Duration::from_millis(record.jitter_ms));
    before_offset(now, offset)
}

fn occurrence_task(record: &ScheduleRecord, due: Timestamp, key: String, name: &str) -> NewTask {
    let t = &record.template;
    NewTask {
        gate: t.gate.clone(),
        target: targets::of_records(&t.webhook, &t.plugin),
        due: crate::model::Due::At(due),
        max_attempts: t.max_attempts,
        timeout: t.timeout_ms.map(Duration::from_millis),
        backoff: t.backoff.map(|b| crate::model::BackoffPatch {
            initial: b.initial_ms.map(Duration::from_millis),
            max: b.max_ms.map(Duration::from_millis),
            multiplier: b.multiplier,
            jitter: b.jitter,
        }),
        max_retry_duration: t.max_retry_duration_ms.map(Duration::from_millis),
        expires_after: t.expires_after_ms.map(Duration::from_millis),
        idempotency_key: Some(key),
        labels: t.labels.clone(),
        key: t.key.clone(),
        coalesce_key: None,
        priority: None,
        schedule: Some(name.to_string()),
        parent: None,
        lineage: None,
    }
}
