//! Tasks out: `TaskView` with its target, attempts and their log lines;
//! secret headers shown only as hidden.

use super::*;

#[derive(Serialize, Deserialize, Debug, Clone, ToSchema)]
pub struct WebhookView {
    pub url: String,
    pub method: String,
    /// Secret values show as `{"secret": true}`.
    #[schema(value_type = BTreeMap<String, HeaderShown>)]
    pub headers: BTreeMap<String, serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<serde_json::Value>,
}

impl WebhookView {
    pub fn new(w: &WebhookRecord) -> WebhookView {
        let headers = w
            .headers
            .iter()
            .map(|(name, value)| {
                let shown = if w.secret_headers.contains(&name.to_ascii_lowercase()) {
                    serde_json::json!({ "secret": true })
                } else {
                    serde_json::Value::String(value.clone())
                };
                (name.clone(), shown)
            })
            .collect();
        WebhookView {
            url: w.url.clone(),
            method: w.method.clone(),
            headers,
            body: w.body.as_ref().map(|b| match b {
                BodyRecord::Json(text) => text.value(),
                BodyRecord::Text(s) => serde_json::Value::String(s.clone()),
            }),
        }
    }
}

/// A header value as given: plain text, or marked secret. Documentation only:
/// `header_value` reads it, with errors that never echo the value.
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
#[allow(
    dead_code,
    reason = "describes the wire format for the OpenAPI document"
)]
pub enum HeaderInput {
    Plain(String),
    Marked(MarkedHeader),
}

/// `{"value": "...", "secret": true}`: sent, but shown as `{"secret": true}`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(
    dead_code,
    reason = "describes the wire format for the OpenAPI document"
)]
pub struct MarkedHeader {
    pub value: String,
    pub secret: Option<bool>,
}

/// A header value as shown: the text, or `{"secret": true}` in place of a
/// secret one.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
#[allow(
    dead_code,
    reason = "describes the wire format for the OpenAPI document"
)]
pub enum HeaderShown {
    Plain(String),
    Hidden(HiddenHeader),
}

#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(
    dead_code,
    reason = "describes the wire format for the OpenAPI document"
)]
pub struct HiddenHeader {
    pub secret: bool,
}

#[derive(Serialize, Deserialize, Debug, Clone, ToSchema)]
pub struct AttemptView {
    pub attempt: u32,
    #[schema(format = DateTime)]
    pub started_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    pub ended_at: Option<String>,
    /// `running`, `leased`, or how it ended: `succeeded`, `failed`, `rejected`, ...
    pub outcome: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response: Option<String>,
    /// While the endpoint holds the attempt as long-running work.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    pub lease_until: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    pub heartbeat_at: Option<String>,
    /// A plugin attempt's log (capped), with the host's own notes (a denied
    /// request, a limit reached) marked `"source": "host"`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub logs: Vec<LogLineView>,
}

/// One line of a plugin attempt's log.
#[derive(Serialize, Deserialize, Debug, Clone, ToSchema)]
pub struct LogLineView {
    /// `plugin` (its own `log` calls) or `host` (what Sluice noted: a refused
    /// request, a limit reached). Only the host writes `host` lines.
    #[schema(example = "plugin")]
    pub source: String,
    /// `trace`, `debug`, `info`, `warn` or `error`.
    pub level: String,
    pub message: String,
}

impl From<&crate::store::LogRecord> for LogLineView {
    fn from(l: &crate::store::LogRecord) -> LogLineView {
        LogLineView {
            source: match l.source {
                crate::store::LogSource::Plugin => "plugin",
                crate::store::LogSource::Host => "host",
            }
            .to_string(),
            level: l.level.clone(),
            message: l.message.clone(),
        }
    }
}

impl From<&AttemptRecord> for AttemptView {
    fn from(a: &AttemptRecord) -> AttemptView {
        AttemptView {
            attempt: a.attempt,
            started_at: time(a.started_at),
            ended_at: a.ended_at.map(time),
            outcome: a.outcome.clone().unwrap_or_else(|| {
                if a.lease_until.is_some() {
                    "leased".into()
                } else {
                    "running".into()
                }
            }),
            status: a.status,
            latency_ms: a.latency_ms,
            error: a.error.clone(),
            response: a.response.clone(),
            lease_until: a.lease_until.filter(|_| a.ended_at.is_none()).map(time),
            progress: a.progress.clone(),
            heartbeat_at: a.heartbeat_at.map(time),
            logs: a.logs.iter().map(LogLineView::from).collect(),
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, ToSchema)]
pub struct TaskView {
    pub id: String,
    pub gate: String,
    /// `scheduled`, `running`, `succeeded`, `failed`, `expired`, `cancelled` or `superseded`.
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plugin: Option<PluginCallView>,
    #[schema(format = DateTime)]
    pub created_at: String,
    /// When it was asked to run.
    #[schema(format = DateTime)]
    pub scheduled_at: String,
    /// When it is next due (differs from `scheduled_at` while a retry waits).
    #[schema(format = DateTime)]
    pub due_at: String,
    pub max_attempts: u32,
    /// Attempts made so far.
    pub attempt_count: u32,
    pub timeout: String,
    pub backoff: BackoffView,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_retry_duration: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    pub expires_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// The tenant it acts for.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub coalesce_key: Option<String>,
    /// 0–9, higher first.
    pub priority: u8,
    /// The task this one replaced, which ended `superseded`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub supersedes: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    pub finished_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempts: Option<Vec<AttemptView>>,
    /// The task whose completion created this one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// The first task of its `next` chain: the task itself unless a `next`
    /// made it. A root's descendants are capped (`max_descendants`).
    pub root: String,
    /// Generations below `root` (0 for a root; at most 10).
    pub depth: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
}

impl TaskView {
    pub fn new(t: &TaskRecord, attempts: Option<&[AttemptRecord]>) -> TaskView {
        let retry = retry_view(&t.retry);
        let (webhook, plugin) = target_views(&t.webhook, &t.plugin);
        TaskView {
            id: TaskId(t.id).to_string(),
            gate: t.gate.clone(),
            state: t.state.as_str().to_string(),
            webhook,
            plugin,
            created_at: time(t.created_at),
            scheduled_at: time(t.scheduled_at),
            due_at: time(t.due_at),
            max_attempts: t.retry.max_attempts,
            attempt_count: t.attempts,
            timeout: ms_text(t.timeout_ms),
            backoff: retry.backoff,
            max_retry_duration: retry.max_retry_duration,
            expires_at: t.expires_at.map(time),
            idempotency_key: t.idempotency_key.clone(),
            key: t.key.clone(),
            coalesce_key: t.coalesce_key.clone(),
            priority: t.priority,
            supersedes: t.supersedes.map(|id| TaskId(id).to_string()),
            labels: t.labels.clone(),
            last_error: t.last_error.clone(),
            finished_at: t.finished_at.map(time),
            attempts: attempts.map(|a| a.iter().map(AttemptView::from).collect()),
            parent: t.parent.map(|p| TaskId(p).to_string()),
            root: TaskId(t.root_id()).to_string(),
            depth: t.depth,
            schedule: t.schedule.clone(),
        }
    }
}

#[derive(Serialize, Deserialize, Debug, ToSchema)]
pub struct TaskList {
    pub tasks: Vec<TaskView>,
    /// The `cursor` of the next page; `null` on the last page.
    #[schema(required)]
    pub next_cursor: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, ToSchema)]
pub struct BatchCreated {
    pub ids: Vec<String>,
}
