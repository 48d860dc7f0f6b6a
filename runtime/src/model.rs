//! Validated requests, as the API hands them to the shell. Everything here has
//! passed its checks; what depends on stored state (does the gate exist, is the
//! host allowed) the shell checks.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::core::{Backoff, CircuitPolicy, Rate, Recovery, RetryPolicy, Timestamp};

#[derive(Clone, Debug, PartialEq)]
pub struct GateSpec {
    pub rate: Rate,
    pub burst: u32,
    pub concurrency: u32,
    pub allowed_hosts: Vec<String>,
    pub timeout: Duration,
    pub retry: RetryPolicy,
    pub recovery: Recovery,
    pub circuit: Option<CircuitPolicy>,
    /// Gates whose tasks may create `next` tasks in this one.
    pub accept_next_from: Vec<String>,
    /// `None` keeps the secrets the gate has (the API never shows them, so a
    /// client cannot send them back); `Some(vec![])` removes them.
    pub signing_secrets: Option<Vec<String>>,
    /// Pace by the quota the endpoint's responses state.
    pub quota_headers: bool,
    /// Search for the endpoint's safe concurrency in this range.
    pub adaptive: Option<crate::core::AdaptiveRange>,
    /// Per-key limits, weights and isolation.
    pub keys: Option<crate::store::KeysRecord>,
    /// A waiting task gains a priority level per this much; `None`: a minute.
    pub priority_aging: Option<Duration>,
}

/// Defaults a gate gets for what its spec leaves out.
pub const DEFAULT_BURST: u32 = 1;
pub const DEFAULT_CONCURRENCY: u32 = 10;
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// A task's own backoff: each part it leaves out is its gate's.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BackoffPatch {
    pub initial: Option<Duration>,
    pub max: Option<Duration>,
    pub multiplier: Option<f64>,
    pub jitter: Option<bool>,
}

impl BackoffPatch {
    /// The patch over the gate's backoff. Where the gate's `max` is below
    /// the task's `initial` (or the task's `max` below the gate's
    /// `initial`), what the task said wins: the other moves to meet it.
    pub fn over(self, gate: Backoff) -> Backoff {
        let mut initial = self.initial.unwrap_or(gate.initial);
        let mut max = self.max.unwrap_or(gate.max);
        if max < initial {
            if self.initial.is_some() {
                max = initial;
            } else {
                initial = max;
            }
        }
        Backoff {
            initial,
            max,
            multiplier: self.multiplier.unwrap_or(gate.multiplier),
            jitter: self.jitter.unwrap_or(gate.jitter),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct NewTask {
    pub gate: String,
    pub target: Target,
    /// When it should run: `run_at`, or after `delay` (zero: now), counted
    /// from the turn that creates it.
    pub due: Due,
    pub max_attempts: Option<u32>,
    pub timeout: Option<Duration>,
    /// What the task says of its backoff; the rest is its gate's.
    pub backoff: Option<BackoffPatch>,
    pub max_retry_duration: Option<Duration>,
    pub expires_after: Option<Duration>,
    pub idempotency_key: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// The tenant it acts for (≤ 128 bytes).
    pub key: Option<String>,
    /// A later create with the same one replaces this task until it starts.
    pub coalesce_key: Option<String>,
    /// 0–9, higher first among its key's due tasks; `None`: 5.
    pub priority: Option<u8>,
    /// Set on occurrences of a schedule.
    pub schedule: Option<String>,
    /// Set on the next steps a completion creates.
    pub parent: Option<crate::core::TaskId>,
    /// Set with `parent`: the chain's first task, and this task's generation
    /// below it.
    pub lineage: Option<(crate::core::TaskId, u32)>,
}

/// When a new task is due. A delay is counted from the engine's turn, the
/// one `now` every decision of that turn uses, not from when the API read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Due {
    At(Timestamp),
    After(Duration),
}

impl Due {
    pub const NOW: Due = Due::After(Duration::ZERO);

    /// The instant, for a turn at `now`.
    pub fn at(self, now: Timestamp) -> Timestamp {
        match self {
            Due::At(at) => at,
            Due::After(delay) => now.plus(delay),
        }
    }
}

/// What a task acts on: exactly one of these.
#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    Webhook(Webhook),
    Plugin(PluginCall),
}

impl Target {
    pub fn plugin(&self) -> Option<&PluginCall> {
        match self {
            Target::Plugin(p) => Some(p),
            Target::Webhook(_) => None,
        }
    }
}

/// A validated webhook: an HTTPS request to a host its gate allows.
#[derive(Clone, Debug, PartialEq)]
pub struct Webhook {
    pub url: String,
    pub method: String,
    pub headers: BTreeMap<String, String>,
    pub body: Option<Body>,
    /// Names (lowercase) of the headers whose values are secret: sent, never
    /// shown.
    pub secret_headers: BTreeSet<String>,
}

/// A webhook's body: JSON, or text sent as it is.
#[derive(Clone, Debug, PartialEq)]
pub enum Body {
    Json(serde_json::Value),
    Text(String),
}

/// Which plugin version runs a task, with what input.
#[derive(Clone, Debug, PartialEq)]
pub struct PluginCall {
    pub name: String,
    pub version: String,
    pub input: serde_json::Value,
}

impl PluginCall {
    /// The registry key, `name@version`.
    pub fn key(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }
}

/// A validated schedule.
#[derive(Clone, Debug, PartialEq)]
pub struct ScheduleSpec {
    pub cron: Option<String>,
    pub timezone: String,
    pub every: Option<Duration>,
    pub misfire: crate::core::schedule::Misfire,
    pub catchup_limit: u32,
    pub jitter: Duration,
    /// The task each occurrence is made from (its `due` is unused).
    pub template: NewTask,
}
