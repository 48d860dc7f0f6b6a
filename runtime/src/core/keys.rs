//! Keys: one gate, many tenants (SPEC §1 "Keys").
//!
//! A task may name the tenant it acts for (`key`); tasks without one share the
//! unnamed key. Inside its gate each key has a *part*: its own window of
//! pending tasks, its own limiter when the gate sets per-key limits, and its
//! place in the gate's weighted round robin. The scheduler keeps parts only
//! for keys with pending or running work (and, with a limiter, until its
//! bucket is full again, so that forgetting a key never hands it a burst it
//! has already used).
//!
//! A key's limiter never admits ahead of its token. It is asked at the
//! decision (`now`), then charged at the start's release instant, which the
//! gate chose (`at ≥ now`): so each key's starts conform to its own bucket at
//! the instants they are released, as the gate's do to the gate's.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use super::gate::{Gate, GateLimits, Recovery, Signal};
use super::scheduler::{DEFAULT_PRIORITY, Order, QueuedTask};
use super::time::{Rate, Timestamp};

/// The tenant a task acts for; `None` is the unnamed key.
pub type TaskKey = Option<Arc<str>>;

/// One key's limits inside its gate. `None` leaves that limit to the gate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KeyLimits {
    pub rate: Option<Rate>,
    pub burst: u32,
    pub concurrency: Option<u32>,
    /// Its share in the round robin: starts per turn when the gate is the
    /// bottleneck. At least 1.
    pub weight: u32,
}

impl Default for KeyLimits {
    fn default() -> Self {
        KeyLimits {
            rate: None,
            burst: 1,
            concurrency: None,
            weight: 1,
        }
    }
}

impl KeyLimits {
    fn limited(&self) -> bool {
        self.rate.is_some() || self.concurrency.is_some()
    }

    /// How long an idle key's bucket takes to fill from empty.
    fn refill(&self) -> Duration {
        self.rate.map_or(Duration::ZERO, |r| {
            Duration::from_secs_f64((f64::from(self.burst.max(1)) / r.as_per_second()).min(3_600.0))
        })
    }
}

/// A gate's `keys` (and `isolate`): the limits every key gets, the keys that
/// differ, and whether an endpoint's complaint about one key's request holds
/// back that key only.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KeyPolicy {
    pub default: KeyLimits,
    pub overrides: BTreeMap<Arc<str>, KeyLimits>,
    /// 429/503, `Retry-After` and the circuit apply to the key whose request
    /// drew them, not to the gate.
    pub isolate: bool,
}

impl KeyPolicy {
    pub fn limits(&self, key: &TaskKey) -> &KeyLimits {
        key.as_ref()
            .and_then(|k| self.overrides.get(k))
            .unwrap_or(&self.default)
    }

    /// The longest any key's bucket takes to refill.
    pub fn refill(&self) -> Duration {
        self.overrides
            .values()
            .map(KeyLimits::refill)
            .fold(self.default.refill(), Duration::max)
    }

    /// The limits of a key's own limiter, if it needs one: its rate, burst and
    /// concurrency; with isolation also the gate's circuit, ramp and quota
    /// headers.
    pub fn gate_limits(&self, key: &TaskKey, gate: &GateLimits) -> Option<GateLimits> {
        let limits = self.limits(key);
        if !limits.limited() && !self.isolate {
            return None;
        }
        let unlimited = Rate::per_second(Rate::MAX_PER_SECOND).expect("the largest rate is valid");
        Some(GateLimits {
            rate: limits.rate.unwrap_or(unlimited),
            burst: limits.burst.max(1),
            concurrency: limits.concurrency.unwrap_or(u32::MAX).max(1),
            adaptive: None,
            recovery: if self.isolate {
                gate.recovery
            } else {
                Recovery {
                    start: 1.0,
                    over: Duration::ZERO,
                }
            },
            circuit: if self.isolate { gate.circuit } else { None },
            // An isolated key is paced by the quota its own answers state.
            quota_headers: self.isolate && gate.quota_headers,
            priority_aging: gate.priority_aging,
        })
    }

    /// Which of gate and key hears an attempt's signal: with isolation the
    /// key, otherwise the gate. The other hears only that a slot is free.
    pub fn split(&self, signal: Signal) -> (Signal, Signal) {
        if self.isolate {
            (Signal::Neutral, signal)
        } else {
            (signal, Signal::Neutral)
        }
    }
}

/// Where a part stands in its gate's round robin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Place {
    /// In the ready ring.
    Ready,
    /// Waiting for an instant (its next task's due time, a load, its
    /// limiter), in the gate's list of waits.
    Waiting(Timestamp),
    /// Waiting for an event: an attempt of the key ending, a load answered.
    Idle,
}

/// One key's share of a gate.
#[derive(Debug)]
pub(super) struct Part {
    /// Boxed: a B-tree node holds eleven entries whatever the count, and a
    /// hundred thousand keys with two tasks each would pay for eleven.
    pub(super) queue: BTreeMap<Order, Box<QueuedTask>>,
    /// The window invariant, per key: every pending task of the key whose
    /// order is below `disk_next` is in `queue`, none at or above it is.
    pub(super) disk_next: Option<Order>,
    pub(super) loading: bool,
    /// The key's own limits, when the gate sets any (or isolates keys).
    pub(super) limiter: Option<Gate>,
    pub(super) weight: u32,
    /// Starts in its current turn of the round robin.
    pub(super) credit: u32,
    /// Attempts of the key in flight, and ended attempts whose requests are
    /// still out: while any is, the part stays.
    pub(super) held: u32,
    pub(super) place: Place,
    /// The orders in `queue` by priority level, once any task of the key
    /// has a priority other than the default (until then, due order).
    levels: Option<Box<[BTreeSet<Order>; 10]>>,
}

impl Part {
    pub(super) fn new(limiter: Option<Gate>, weight: u32) -> Part {
        Part {
            queue: BTreeMap::new(),
            disk_next: None,
            loading: false,
            limiter,
            weight: weight.max(1),
            credit: 0,
            held: 0,
            place: Place::Idle,
            levels: None,
        }
    }

    pub(super) fn insert(&mut self, task: QueuedTask) {
        let order = task.order();
        if task.priority != DEFAULT_PRIORITY && self.levels.is_none() {
            let mut levels: Box<[BTreeSet<Order>; 10]> = Box::default();
            for (o, t) in &self.queue {
                levels[usize::from(t.priority.min(9))].insert(*o);
            }
            self.levels = Some(levels);
        }
        if let Some(levels) = &mut self.levels {
            levels[usize::from(task.priority.min(9))].insert(order);
        }
        self.queue.insert(order, Box::new(task));
    }

    pub(super) fn remove(&mut self, order: &Order) -> Option<QueuedTask> {
        let task = *self.queue.remove(order)?;
        if let Some(levels) = &mut self.levels {
            levels[usize::from(task.priority.min(9))].remove(order);
        }
        Some(task)
    }

    /// Drops from memory every task at or after `order` (they are on disk).
    pub(super) fn drop_from(&mut self, order: Order) {
        let dropped = self.queue.split_off(&order);
        if let Some(levels) = &mut self.levels {
            for (o, t) in &dropped {
                levels[usize::from(t.priority.min(9))].remove(o);
            }
        }
    }

    /// The task to start next: among the due ones, the highest priority
    /// after aging (one level per `aging` past its due time, never above 9),
    /// the earliest of equals; with none due, the first by due time.
    pub(super) fn pick(&self, now: Timestamp, aging: Duration) -> Option<Order> {
        let first = self.queue.first_key_value().map(|(o, _)| *o)?;
        let Some(levels) = &self.levels else {
            return Some(first);
        };
        let aging_ms = super::time::duration_ms(aging).max(1);
        let mut best: Option<(u64, std::cmp::Reverse<Order>)> = None;
        for (level, orders) in levels.iter().enumerate() {
            // The oldest of a level has aged the most.
            let Some(&head) = orders.first() else {
                continue;
            };
            if head.0 > now {
                continue;
            }
            // Aging counts from the due time, not from an order moved ahead.
            let ahead = self.queue.get(&head).map_or(0, |t| t.ahead_ms);
            let waited = now.since(head.0).as_millis() as u64;
            let aged = (level as u64 + waited.saturating_sub(ahead) / aging_ms).min(9);
            let candidate = (aged, std::cmp::Reverse(head));
            if best.is_none_or(|b| candidate > b) {
                best = Some(candidate);
            }
        }
        Some(best.map_or(first, |(_, std::cmp::Reverse(order))| order))
    }

    /// When the part can be forgotten: nothing pending or running, and its
    /// limiter as good as a new one. `None` while that is not in sight.
    pub(super) fn rested_at(&self, now: Timestamp) -> Option<Timestamp> {
        if !self.queue.is_empty() || self.disk_next.is_some() || self.loading || self.held > 0 {
            return None;
        }
        match &self.limiter {
            None => Some(now),
            Some(limiter) => limiter.rested_at(now),
        }
    }

    /// Keeps the window within `window` tasks, spilling the latest to disk.
    pub(super) fn trim(&mut self, window: usize) {
        while self.queue.len() > window {
            let Some(order) = self.queue.last_key_value().map(|(o, _)| *o) else {
                break;
            };
            self.remove(&order);
            self.disk_next = Some(self.disk_next.map_or(order, |d| d.min(order)));
        }
    }
}
