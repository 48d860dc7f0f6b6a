//! What is on disk. These types are the file format: change them only in ways
//! that old files still decode (new fields need `#[serde(default)]`).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::core::{self, Backoff, CircuitPolicy, GateLimits, Rate, Recovery, RetryPolicy};
use std::time::Duration;

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct GateRecord {
    pub id: u32,
    pub name: String,
    /// Dispatches per second.
    pub rate_per_s: f64,
    pub burst: u32,
    pub concurrency: u32,
    pub allowed_hosts: Vec<String>,
    pub timeout_ms: u64,
    pub retry: RetryRecord,
    pub recovery: RecoveryRecord,
    pub circuit: Option<CircuitRecord>,
    /// Standard Webhooks secrets (`whsec_…`); never shown by the API.
    #[serde(default)]
    pub signing_secrets: Vec<String>,
    /// Gates whose tasks may create `next` tasks in this one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub accept_next_from: Vec<String>,
    /// Pace by the quota the endpoint's responses state (on unless turned off).
    #[serde(default = "on", skip_serializing_if = "is_on")]
    pub quota_headers: bool,
    /// The range of the adaptive concurrency search, when it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adaptive: Option<AdaptiveRecord>,
    /// Per-key limits and isolation (SPEC §1 "Keys").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<KeysRecord>,
    /// `priority_aging`; `None` is the default, a minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_aging_ms: Option<u64>,
    pub paused: bool,
    pub created_at: u64,
    pub updated_at: u64,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
pub struct RetryRecord {
    pub max_attempts: u32,
    pub initial_ms: u64,
    pub max_ms: u64,
    pub multiplier: f64,
    pub jitter: bool,
    pub max_retry_duration_ms: Option<u64>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
pub struct RecoveryRecord {
    pub start: f64,
    pub over_ms: u64,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
pub struct AdaptiveRecord {
    pub min: u32,
    pub max: u32,
}

/// A gate's `keys` and `isolate`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct KeysRecord {
    pub limits: KeyLimitsRecord,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub overrides: BTreeMap<String, KeyLimitsRecord>,
    #[serde(default)]
    pub isolate: bool,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
pub struct KeyLimitsRecord {
    pub rate_per_s: Option<f64>,
    pub burst: u32,
    pub concurrency: Option<u32>,
    pub weight: u32,
}

impl Default for KeyLimitsRecord {
    fn default() -> Self {
        KeyLimitsRecord {
            rate_per_s: None,
            burst: 1,
            concurrency: None,
            weight: 1,
        }
    }
}

impl KeyLimitsRecord {
    fn limits(&self) -> core::KeyLimits {
        core::KeyLimits {
            // Validated before it was stored; a damaged rate limits nothing.
            rate: self.rate_per_s.and_then(|r| Rate::per_second(r).ok()),
            burst: self.burst.max(1),
            concurrency: self.concurrency.map(|c| c.max(1)),
            weight: self.weight.max(1),
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
pub struct CircuitRecord {
    pub failures: u32,
    pub cooldown_ms: u64,
    pub max_cooldown_ms: u64,
}

/// A waiting task gains a priority level a minute unless the gate says.
pub const DEFAULT_PRIORITY_AGING_MS: u64 = 60_000;

fn on() -> bool {
    true
}

fn is_on(value: &bool) -> bool {
    *value
}

impl GateRecord {
    /// What the core needs of `keys`; `None` when the gate sets nothing.
    pub fn key_policy(&self) -> Option<std::sync::Arc<core::KeyPolicy>> {
        let keys = self.keys.as_ref()?;
        Some(std::sync::Arc::new(core::KeyPolicy {
            default: keys.limits.limits(),
            overrides: keys
                .overrides
                .iter()
                .map(|(k, l)| (std::sync::Arc::from(k.as_str()), l.limits()))
                .collect(),
            isolate: keys.isolate,
        }))
    }

    pub fn limits(&self) -> GateLimits {
        GateLimits {
            // Validated before it was stored; a damaged value falls back to 1/s.
            rate: Rate::per_second(self.rate_per_s)
                .or_else(|_| Rate::per_second(1.0))
                .expect("1/s is a valid rate"),
            burst: self.burst.max(1),
            concurrency: self.concurrency.max(1),
            recovery: Recovery {
                start: self.recovery.start,
                over: Duration::from_millis(self.recovery.over_ms),
            },
            circuit: self.circuit.map(|c| CircuitPolicy {
                failures: c.failures.max(1),
                cooldown: Duration::from_millis(c.cooldown_ms),
                max_cooldown: Duration::from_millis(c.max_cooldown_ms),
            }),
            quota_headers: self.quota_headers,
            priority_aging: Duration::from_millis(
                self.priority_aging_ms
                    .unwrap_or(DEFAULT_PRIORITY_AGING_MS)
                    .max(1),
            ),
            adaptive: self.adaptive.map(|a| core::AdaptiveRange {
                min: a.min.max(1),
                max: a.max.max(a.min.max(1)),
            }),
        }
    }
}

impl RetryRecord {
    pub fn policy(&self) -> RetryPolicy {
        RetryPolicy {
            max_attempts: self.max_attempts.max(1),
            backoff: Backoff {
                initial: Duration::from_millis(self.initial_ms),
                max: Duration::from_millis(self.max_ms),
                multiplier: self.multiplier.max(1.0),
                jitter: self.jitter,
            },
            max_retry_duration: self.max_retry_duration_ms.map(Duration::from_millis),
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    Scheduled,
    Running,
    Succeeded,
    Failed,
    Expired,
    Cancelled,
    /// Replaced before it started by a newer task with its `coalesce_key`.
    Superseded,
}

impl TaskState {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Scheduled => "scheduled",
            TaskState::Running => "running",
            TaskState::Succeeded => "succeeded",
            TaskState::Failed => "failed",
            TaskState::Expired => "expired",
            TaskState::Cancelled => "cancelled",
            TaskState::Superseded => "superseded",
        }
    }

    pub fn parse(s: &str) -> Option<TaskState> {
        Some(match s {
            "scheduled" => TaskState::Scheduled,
            "running" => TaskState::Running,
            "succeeded" => TaskState::Succeeded,
            "failed" => TaskState::Failed,
            "expired" => TaskState::Expired,
            "cancelled" => TaskState::Cancelled,
            "superseded" => TaskState::Superseded,
            _ => return None,
        })
    }

    pub fn is_final(self) -> bool {
        !matches!(self, TaskState::Scheduled | TaskState::Running)
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct WebhookRecord {
    pub url: String,
    pub method: String,
    pub headers: BTreeMap<String, String>,
    pub body: Option<BodyRecord>,
    /// Names (lowercase) of the headers whose values are secret: sent, never shown.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub secret_headers: BTreeSet<String>,
}

impl WebhookRecord {
    /// A request to nowhere: what a damaged task record (neither a webhook
    /// nor a plugin) reads as, so its gate refuses it instead of the
    /// engine failing on it.
    pub fn empty() -> WebhookRecord {
        WebhookRecord {
            url: String::new(),
            method: "POST".into(),
            headers: Default::default(),
            body: None,
            secret_headers: Default::default(),
        }
    }
}

/// A plugin task's target: which plugin version runs it, with what input.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct PluginCallRecord {
    pub name: String,
    pub version: String,
    pub input: serde_json::Value,
    /// The SHA-256 (hex) of the component the version was when the task was
    /// created: a node that kept an earlier upload of the same version (one
    /// deleted and uploaded again through another node) loads it afresh.
    /// `None` in a schedule's template and in tasks from before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

impl PluginCallRecord {
    /// The registry key, `name@version`.
    pub fn key(&self) -> String {
        plugin_key(&self.name, &self.version)
    }
}

pub fn plugin_key(name: &str, version: &str) -> String {
    format!("{name}@{version}")
}

/// A plugin version in the registry. The component's bytes and its compiled
/// artifacts live in tables of their own.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct PluginRecord {
    pub name: String,
    pub version: String,
    pub size: u64,
    /// SHA-256 of the component, hex.
    pub sha256: String,
    pub uploaded_at: u64,
    pub imports: Vec<String>,
    /// Unfinished tasks that run it; kept in the same commits as the tasks.
    pub unfinished: u64,
    /// The memory (MiB) its upload asked for; `None`: the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u32>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum BodyRecord {
    Json(JsonText),
    Text(String),
}

/// A JSON value kept as its text. The engine never looks into a task's
/// body: it sends it as given and the API shows it, so a start no longer
/// builds it as a tree and writes it out again (about 6 % of the driver's
/// work on a webhook with a small JSON body).
#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(transparent)]
pub struct JsonText(Box<serde_json::value::RawValue>);

impl JsonText {
    /// The value's compact text.
    pub fn of(value: &serde_json::Value) -> JsonText {
        match serde_json::value::to_raw_value(value) {
            Ok(raw) => JsonText(raw),
            // A `Value` always serializes; this keeps the signature total.
            Err(_) => JsonText(serde_json::value::RawValue::NULL.to_owned()),
        }
    }

    /// Text checked to be one JSON value.
    pub fn parse(text: String) -> Result<JsonText, serde_json::Error> {
        serde_json::value::RawValue::from_string(text).map(JsonText)
    }

    pub fn as_str(&self) -> &str {
        self.0.get()
    }

    /// The value as a tree (for a view, or a schedule's next occurrence).
    pub fn value(&self) -> serde_json::Value {
        serde_json::from_str(self.as_str()).unwrap_or(serde_json::Value::Null)
    }
}

impl PartialEq for JsonText {
    fn eq(&self, other: &JsonText) -> bool {
        self.as_str() == other.as_str()
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct TaskRecord {
    pub id: u64,
    pub gate: String,
    pub gate_id: u32,
    pub state: TaskState,
    /// Exactly one of `webhook` and `plugin` is set; see [`TaskRecord::target`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<PluginCallRecord>,
    pub created_at: u64,
    /// When the task was asked to run (`run_at` or now + `delay`).
    pub scheduled_at: u64,
    /// When it is next due: `scheduled_at`, or the time of its next retry.
    pub due_at: u64,
    /// Its place in its key's order when not `due_at`: a task of priority
    /// above the default that is due when it is made (created, retried by
    /// hand, replayed) goes `(priority − 5) × priority_aging` ahead, so it
    /// passes the backlog its priority passes after aging, wherever that
    /// backlog is (in memory or on disk). See [`TaskRecord::order_ms`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_at: Option<u64>,
    pub timeout_ms: u64,
    pub retry: RetryRecord,
    pub expires_at: Option<u64>,
    /// The `expires_after` it was made with: a replay gives it that long
    /// again, however far its retries had moved it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_after_ms: Option<u64>,
    pub idempotency_key: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// The tenant it acts for: its share of the gate (SPEC §1 "Keys").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// A later create with the same one replaces this task until it starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coalesce_key: Option<String>,
    /// 0–9: among its key's due tasks, higher starts first.
    #[serde(
        default = "default_priority",
        skip_serializing_if = "is_default_priority"
    )]
    pub priority: u8,
    /// The task this one replaced (coalescing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supersedes: Option<u64>,
    /// Attempts started so far, over the task's whole life.
    pub attempts: u32,
    /// `attempts` when an operator last re-ran the task: the retry budget counts
    /// from here, while attempt numbers keep counting up.
    #[serde(default)]
    pub attempt_offset: u32,
    pub first_attempt_at: Option<u64>,
    pub last_error: Option<String>,
    pub finished_at: Option<u64>,
    /// The schedule this task is an occurrence of.
    #[serde(default)]
    pub schedule: Option<String>,
    /// The task whose completion created this one (a workflow's previous step).
    #[serde(default)]
    pub parent: Option<u64>,
    /// The first task of its `next` chain; `None` for a root (the task itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<u64>,
    /// Generations below the root: 0 for a root, its parent's plus one.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub depth: u32,
}

fn default_priority() -> u8 {
    core::DEFAULT_PRIORITY
}

fn is_default_priority(p: &u8) -> bool {
    *p == core::DEFAULT_PRIORITY
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl TaskRecord {
    /// The root of this task's `next` chain: itself unless a `next` made it.
    pub fn root_id(&self) -> u64 {
        self.root.unwrap_or(self.id)
    }
}

impl TaskRecord {
    /// The instant its pending entry is ordered by: `order_at`, else its due
    /// time. Never after `due_at`.
    pub fn order_ms(&self) -> u64 {
        self.order_at.unwrap_or(self.due_at)
    }

    /// Makes the task due at `due` (ms), now `now`: a task of raised
    /// priority that is due already is ordered `(priority − 5) × aging`
    /// earlier. With aging linear, that order among due tasks is the order
    /// of their aged priorities (`p + waited / aging`), whatever the time.
    pub fn set_due(&mut self, due: u64, now: u64, aging: Duration) {
        self.due_at = due;
        let raised = u64::from(self.priority.min(9).saturating_sub(core::DEFAULT_PRIORITY));
        let ahead = raised.saturating_mul(core::time::duration_ms(aging));
        self.order_at = (raised > 0 && due <= now).then(|| due.saturating_sub(ahead));
    }

    pub fn queued(&self) -> core::QueuedTask {
        core::QueuedTask {
            id: core::TaskId(self.id),
            gate: core::GateId(self.gate_id),
            key: self.key.as_deref().map(std::sync::Arc::from),
            priority: self.priority,
            due: core::Timestamp(self.order_ms()),
            ahead_ms: self.due_at.saturating_sub(self.order_ms()),
            attempts: self.attempts,
            first_attempt_at: self.first_attempt_at.map(core::Timestamp),
            expires_at: self.expires_at.map(core::Timestamp),
            policy: self.retry.policy(),
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct AttemptRecord {
    /// 1-based.
    pub attempt: u32,
    pub started_at: u64,
    pub ended_at: Option<u64>,
    /// `succeeded`, `rejected`, `failed`, `throttled`, `timeout`, `denied`,
    /// `interrupted`; none while running.
    pub outcome: Option<String>,
    pub status: Option<u16>,
    pub latency_ms: Option<u64>,
    pub error: Option<String>,
    /// The first 4 KiB of the response body.
    pub response: Option<String>,
    /// SHA-256 of the attempt's completion token, hex. The token itself is never
    /// stored.
    #[serde(default)]
    pub token_hash: Option<String>,
    /// Set while the endpoint holds the attempt as long-running work.
    #[serde(default)]
    pub lease_until: Option<u64>,
    #[serde(default)]
    pub lease_ms: Option<u64>,
    /// What the last heartbeat reported.
    #[serde(default)]
    pub progress: Option<serde_json::Value>,
    /// A plugin attempt's log lines and the host's notes, capped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub logs: Vec<LogRecord>,
    #[serde(default)]
    pub heartbeat_at: Option<u64>,
}

impl AttemptRecord {
    /// Attempt `attempt`, started at `started_at` (ms), nothing known of it yet.
    pub fn started(attempt: u32, started_at: u64) -> AttemptRecord {
        AttemptRecord {
            attempt,
            started_at,
            ended_at: None,
            outcome: None,
            status: None,
            latency_ms: None,
            error: None,
            response: None,
            token_hash: None,
            lease_until: None,
            lease_ms: None,
            progress: None,
            logs: Vec::new(),
            heartbeat_at: None,
        }
    }
}

/// Who wrote a line of an attempt's log.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LogSource {
    /// The plugin, through `sluice:task/log`.
    Plugin,
    /// The host: a refusal, a limit reached, lines dropped.
    Host,
}

/// One line of an attempt's log. Whether the host wrote it is a field, never
/// a prefix of the text, so a plugin cannot pass its lines off as the host's.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(from = "LogRepr")]
pub struct LogRecord {
    pub source: LogSource,
    /// The plugin's level (`trace` … `error`); `info` for the host's notes.
    pub level: String,
    pub message: String,
}

impl LogRecord {
    pub fn plugin(level: &str, message: &str) -> LogRecord {
        LogRecord {
            source: LogSource::Plugin,
            level: level.to_string(),
            message: message.to_string(),
        }
    }

    pub fn host(message: &str) -> LogRecord {
        LogRecord {
            source: LogSource::Host,
            level: "info".to_string(),
            message: message.to_string(),
        }
    }
}

/// Files of schema 3 kept lines as `level: message` text; those read back as
/// the plugin's lines (a plugin could have written any of them).
#[derive(Deserialize)]
#[serde(untagged)]
enum LogRepr {
    Line {
        source: LogSource,
        level: String,
        message: String,
    },
    Text(String),
}

impl From<LogRepr> for LogRecord {
    fn from(repr: LogRepr) -> LogRecord {
        match repr {
            LogRepr::Line {
                source,
                level,
                message,
            } => LogRecord {
                source,
                level,
                message,
            },
            LogRepr::Text(text) => match text.split_once(": ") {
                Some((level, message)) => LogRecord::plugin(level, message),
                None => LogRecord::plugin("info", &text),
            },
        }
    }
}

/// Per-gate counters, kept in the same commits as the changes they count, so they
/// are never recomputed by a scan.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub pending: u64,
    pub running: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub expired: u64,
    pub cancelled: u64,
    pub retried: u64,
    pub attempts: u64,
    /// Added later: older counters decode it as 0.
    pub superseded: u64,
}

impl Counts {
    const FIELDS: usize = 9;

    fn values(&self) -> [u64; Self::FIELDS] {
        [
            self.pending,
            self.running,
            self.succeeded,
            self.failed,
            self.expired,
            self.cancelled,
            self.retried,
            self.attempts,
            self.superseded,
        ]
    }

    fn from_values(v: [u64; Self::FIELDS]) -> Counts {
        Counts {
            pending: v[0],
            running: v[1],
            succeeded: v[2],
            failed: v[3],
            expired: v[4],
            cancelled: v[5],
            retried: v[6],
            attempts: v[7],
            superseded: v[8],
        }
    }

    pub fn encode(&self) -> [u8; 8 * Self::FIELDS] {
        let mut out = [0u8; 8 * Self::FIELDS];
        for (i, v) in self.values().iter().enumerate() {
            out[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Counts {
        let get = |i: usize| {
            bytes
                .get(i * 8..i * 8 + 8)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map_or(0, u64::from_le_bytes)
        };
        Counts::from_values(std::array::from_fn(get))
    }

    /// Adds `delta`; a counter never goes below zero.
    pub fn apply(&mut self, delta: &CountsDelta) {
        let mut values = self.values();
        for (v, d) in values.iter_mut().zip(delta.0) {
            *v = v.saturating_add_signed(d);
        }
        *self = Counts::from_values(values);
    }

    pub fn unfinished(&self) -> u64 {
        self.pending + self.running
    }
}

/// What a turn changed in a gate's counters (`Writes::add_counts`): engines on
/// several nodes count into one gate by adding, never by overwriting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CountsDelta([i64; Counts::FIELDS]);

impl CountsDelta {
    /// From `before` to `after`.
    pub fn between(before: &Counts, after: &Counts) -> CountsDelta {
        let (b, a) = (before.values(), after.values());
        CountsDelta(std::array::from_fn(|i| {
            i64::try_from(a[i])
                .unwrap_or(i64::MAX)
                .saturating_sub(i64::try_from(b[i]).unwrap_or(i64::MAX))
        }))
    }

    /// What `change` does to any counters, exactly: run on counters far
    /// from zero, so a decrement is one even where the engine's own copy
    /// (which may miss tasks other engines created) would stop at zero.
    pub fn of(change: impl FnOnce(&mut Counts)) -> CountsDelta {
        const FAR: u64 = 1 << 40;
        let base = Counts::from_values([FAR; Counts::FIELDS]);
        let mut changed = base;
        change(&mut changed);
        CountsDelta::between(&base, &changed)
    }

    pub fn add(&mut self, other: &CountsDelta) {
        for (d, o) in self.0.iter_mut().zip(other.0) {
            *d = d.saturating_add(o);
        }
    }

    pub fn is_zero(&self) -> bool {
        self.0.iter().all(|d| *d == 0)
    }
}

/// A schedule's backoff as given: each part left out is the gate's when
/// an occurrence is made (records from before partial backoffs have all
/// four).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
pub struct BackoffRecord {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multiplier: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter: Option<bool>,
}

/// What each occurrence of a schedule is made from.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct TemplateRecord {
    pub gate: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<PluginCallRecord>,
    pub max_attempts: Option<u32>,
    pub timeout_ms: Option<u64>,
    pub backoff: Option<BackoffRecord>,
    pub max_retry_duration_ms: Option<u64>,
    pub expires_after_ms: Option<u64>,
    pub labels: BTreeMap<String, String>,
    /// The key each occurrence acts for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct RunRecord {
    pub scheduled_at: u64,
    pub task: u64,
    pub state: TaskState,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
pub struct OccurrenceRecord {
    pub task: u64,
    pub scheduled_at: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ScheduleRecord {
    pub name: String,
    pub cron: Option<String>,
    pub timezone: String,
    pub every_ms: Option<u64>,
    /// `every` counts from here.
    pub anchor: u64,
    pub misfire: String,
    pub catchup_limit: u32,
    pub jitter_ms: u64,
    pub template: TemplateRecord,
    pub paused: bool,
    /// The occurrence in progress (pending or running); at most one.
    pub current: Option<OccurrenceRecord>,
    /// The scheduled time of the last occurrence that ended.
    pub last_scheduled: Option<u64>,
    /// Missed occurrences up to here are counted.
    pub counted_through: u64,
    pub missed: u64,
    pub skipped: u64,
    /// The last ten occurrences that ended, oldest first.
    pub last_runs: Vec<RunRecord>,
    pub last_error: Option<String>,
    pub created_at: u64,
    pub updated_at: u64,
}

impl ScheduleRecord {
    pub fn rule(&self) -> Result<core::schedule::Rule, core::schedule::RuleError> {
        match (&self.cron, self.every_ms) {
            (Some(expr), _) => core::schedule::Rule::cron(expr, &self.timezone),
            (None, Some(ms)) => {
                core::schedule::Rule::every(Duration::from_millis(ms), core::Timestamp(self.anchor))
            }
            (None, None) => Err(core::schedule::RuleError::Period),
        }
    }

    pub fn misfire(&self) -> core::schedule::Misfire {
        core::schedule::Misfire::parse(&self.misfire).unwrap_or(core::schedule::Misfire::Skip)
    }
}

/// A paced replay (SPEC §1): what it matches, how far its walk got, and how
/// it ended. Each page's tasks and the job's new cursor commit together, so
/// a restart goes on from the page after the last one committed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ReplayRecord {
    pub id: String,
    pub filter: super::TaskFilter,
    /// The walk goes on below this task id; `None` before the first page.
    pub cursor: Option<u64>,
    pub matched: u64,
    pub replayed: u64,
    pub started_at: u64,
    /// Asked to stop: no page after the current one is replayed.
    #[serde(default)]
    pub cancelled: bool,
    /// `None` while the job runs.
    pub ended: Option<ReplayEnd>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ReplayEnd {
    pub at: u64,
    /// `done`, `cancelled` or `failed`.
    pub state: String,
    pub error: Option<String>,
}
