//! Tasks in: `TaskBody` (a webhook or a plugin call) and its validation into
//! a `NewTask`, batches, and the `next` tasks of a completion or a plugin.

use super::*;

/// The longest `delay` and `expires_after`.
const TEN_YEARS: Duration = Duration::from_secs(10 * 365 * 86_400);

/// 9000-01-01T00:00:00Z: `run_at` comes before it, so that its expiry
/// (`expires_after` at most 10 years on) is a time that can be shown.
const LAST_RUN_AT_MS: i64 = 221_845_392_000_000;

#[derive(Deserialize, Debug, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookBody {
    /// `http` or `https`.
    pub url: String,
    /// Default `POST`.
    pub method: Option<String>,
    /// A value is a string, or `{"value": "...", "secret": true}` for one that
    /// is sent but never shown.
    #[schema(value_type = Option<BTreeMap<String, HeaderInput>>)]
    pub headers: Option<BTreeMap<String, serde_json::Value>>,
    /// A JSON value is sent as `application/json`; a string is sent as is.
    pub body: Option<serde_json::Value>,
}

/// A plugin task's target.
#[derive(Deserialize, Debug, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PluginBody {
    /// A plugin in the registry (`GET /v1/plugins`).
    pub name: String,
    /// Its exact version, like `1.2.0`.
    pub version: String,
    /// Handed to the plugin as JSON text; `null` when absent. At most 1 MiB.
    pub input: Option<serde_json::Value>,
}

/// A plugin name: lowercase letters, digits and '-', starting with a letter or
/// digit, at most 64 characters.
pub fn valid_plugin_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
}

/// A semantic version: `MAJOR.MINOR.PATCH`, with an optional `-pre` and
/// `+build` of letters, digits, '.' and '-'.
pub fn valid_version(version: &str) -> bool {
    if version.is_empty() || version.len() > 64 {
        return false;
    }
    let (core, rest) = match version.find(['-', '+']) {
        Some(i) => (&version[..i], &version[i..]),
        None => (version, ""),
    };
    let numbers: Vec<&str> = core.split('.').collect();
    numbers.len() == 3
        && numbers.iter().all(|n| {
            !n.is_empty()
                && n.len() <= 10
                && n.chars().all(|c| c.is_ascii_digit())
                && (n.len() == 1 || !n.starts_with('0'))
        })
        && rest.get(1..).is_none_or(|tail| {
            !tail.is_empty()
                && tail
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '+'))
        })
}

impl PluginBody {
    fn validate(self, field: &str) -> Result<PluginCall, ApiError> {
        if !valid_plugin_name(&self.name) {
            return Err(ApiError::field(
                &format!("{field}.name"),
                "plugin names are 1 to 64 lowercase letters, digits and '-'",
            ));
        }
        if !valid_version(&self.version) {
            return Err(ApiError::field(
                &format!("{field}.version"),
                "expected a version like 1.2.0",
            ));
        }
        let input = self.input.unwrap_or(serde_json::Value::Null);
        let size = serde_json::to_vec(&input)
            .map(|b| b.len())
            .unwrap_or(usize::MAX);
        if size > MAX_TASK_BODY {
            return Err(ApiError {
                field: Some(format!("{field}.input")),
                ..ApiError::too_large(format!(
                    "plugin input is {size} bytes; the limit is {MAX_TASK_BODY}"
                ))
            });
        }
        Ok(PluginCall {
            name: self.name,
            version: self.version,
            input,
        })
    }
}

/// A plugin task's target, as shown.
#[derive(Serialize, Deserialize, Debug, Clone, ToSchema)]
pub struct PluginCallView {
    pub name: String,
    pub version: String,
    pub input: serde_json::Value,
}

impl PluginCallView {
    pub fn new(p: &PluginCallRecord) -> PluginCallView {
        PluginCallView {
            name: p.name.clone(),
            version: p.version.clone(),
            input: p.input.clone(),
        }
    }
}

/// A stored task's (or template's) target as shown: `(webhook, plugin)`,
/// exactly one set.
pub(super) fn target_views(
    webhook: &Option<WebhookRecord>,
    plugin: &Option<PluginCallRecord>,
) -> (Option<WebhookView>, Option<PluginCallView>) {
    match (webhook, plugin) {
        (_, Some(p)) => (None, Some(PluginCallView::new(p))),
        (w, None) => (w.as_ref().map(WebhookView::new), None),
    }
}

/// The JSON texts a plugin's success asks to create, checked as
/// `POST /v1/tasks` bodies: all or nothing.
pub fn parse_next(texts: &[String]) -> Result<Vec<NewTask>, String> {
    if texts.len() > MAX_NEXT {
        return Err(format!(
            "the plugin asked for {} next tasks; at most {MAX_NEXT}",
            texts.len()
        ));
    }
    let mut out = Vec::with_capacity(texts.len());
    for (i, text) in texts.iter().enumerate() {
        let mut de = serde_json::Deserializer::from_str(text);
        let body: TaskBody = serde_path_to_error::deserialize(&mut de)
            .map_err(|e| format!("next[{i}]: invalid task at {}: {}", e.path(), e.inner()))?;
        let task = body
            .validate(&format!("next[{i}]."))
            .map_err(|e| match e.field {
                Some(field) => format!("{field}: {}", e.message),
                None => e.message,
            })?;
        out.push(task);
    }
    Ok(out)
}

#[derive(Deserialize, Debug, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskBody {
    pub gate: String,
    /// An HTTP request to make; give this or `plugin`.
    pub webhook: Option<WebhookBody>,
    /// A WebAssembly plugin to run; give this or `webhook`.
    pub plugin: Option<PluginBody>,
    /// RFC 3339; not together with `delay`. Neither means now.
    #[schema(format = DateTime)]
    pub run_at: Option<String>,
    /// A duration like `"90s"`.
    #[schema(example = "90s")]
    pub delay: Option<String>,
    pub max_attempts: Option<u32>,
    /// A duration like `"30s"`; default the gate's.
    pub timeout: Option<String>,
    /// What the task changes of its gate's backoff: the parts left out are
    /// the gate's. Where the gate's `max` is below the task's `initial` (or
    /// the task's `max` below the gate's `initial`), the task's value wins.
    pub backoff: Option<BackoffBody>,
    /// A duration like `"1h"`.
    pub max_retry_duration: Option<String>,
    /// A duration like `"1h"` after it falls due.
    pub expires_after: Option<String>,
    /// Per gate: a second create with the same key returns the first task.
    pub idempotency_key: Option<String>,
    pub labels: Option<BTreeMap<String, String>>,
    /// The tenant, customer or account the task acts for (1 to 128 bytes):
    /// keys share their gate fairly, each within the gate's `keys` limits.
    pub key: Option<String>,
    /// A create whose `coalesce_key` matches a task of the same gate that
    /// has not started replaces it: the older ends `superseded` and the
    /// answer names it in `supersedes`. With `delay`, a trailing debounce.
    pub coalesce_key: Option<String>,
    /// 0–9 (default 5): among its key's due tasks, higher starts first; a
    /// waiting task gains a level per the gate's `priority_aging`.
    pub priority: Option<u8>,
}

#[derive(Deserialize, Debug, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchBody {
    /// 1 to 10,000 tasks, created all or none.
    pub tasks: Vec<TaskBody>,
}

/// Checks a webhook target; `f` names fields (`tasks[3].webhook.url`).
pub(super) fn valid_webhook(
    webhook: WebhookBody,
    f: &dyn Fn(&str) -> String,
) -> Result<Webhook, ApiError> {
    if webhook.url.len() > MAX_URL_LEN {
        return Err(ApiError::field(
            &f("webhook.url"),
            "url is longer than 8 KiB",
        ));
    }
    let url = reqwest::Url::parse(&webhook.url)
        .map_err(|e| ApiError::field(&f("webhook.url"), format!("invalid url: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ApiError::field(
            &f("webhook.url"),
            "url must be http or https",
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(ApiError::field(&f("webhook.url"), "url has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(ApiError::field(
            &f("webhook.url"),
            "put credentials in headers, not in the url",
        ));
    }
    let method = webhook
        .method
        .unwrap_or_else(|| "POST".into())
        .to_ascii_uppercase();
    if !METHODS.contains(&method.as_str()) {
        return Err(ApiError::field(
            &f("webhook.method"),
            format!("method must be one of {METHODS:?}"),
        ));
    }
    let given = webhook.headers.unwrap_or_default();
    if given.len() > MAX_HEADERS {
        return Err(ApiError::field(
            &f("webhook.headers"),
            format!("at most {MAX_HEADERS} headers"),
        ));
    }
    let mut headers = BTreeMap::new();
    let mut secret_headers = BTreeSet::new();
    for (name, value) in given {
        let field = f(&format!("webhook.headers.{name}"));
        let name_ok = reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_ok();
        if !name_ok {
            return Err(ApiError::field(&field, "invalid header name"));
        }
        let lower = name.to_ascii_lowercase();
        if lower.starts_with("sluice-")
            || matches!(
                lower.as_str(),
                "host" | "content-length" | "transfer-encoding" | "connection" | "idempotency-key"
            )
        {
            return Err(ApiError::field(&field, "this header is set by Sluice"));
        }
        let (value, marked) = header_value(value).map_err(|m| ApiError::field(&field, m))?;
        // Messages never echo the value: it may be a credential.
        if reqwest::header::HeaderValue::from_str(&value).is_err() || value.len() > 8 * 1024 {
            return Err(ApiError::field(&field, "invalid header value"));
        }
        if marked || ALWAYS_SECRET.contains(&lower.as_str()) {
            secret_headers.insert(lower);
        }
        headers.insert(name, value);
    }
    let body = match webhook.body {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(Body::Text(s)),
        Some(v) => Some(Body::Json(v)),
    };
    let body_len = match &body {
        None => 0,
        Some(Body::Text(s)) => s.len(),
        Some(Body::Json(v)) => serde_json::to_vec(v).map(|b| b.len()).unwrap_or(usize::MAX),
    };
    if body_len > MAX_TASK_BODY {
        return Err(ApiError {
            field: Some(f("webhook.body")),
            ..ApiError::too_large(format!(
                "webhook body is {body_len} bytes; the limit is {MAX_TASK_BODY}"
            ))
        });
    }
    Ok(Webhook {
        url: webhook.url,
        method,
        headers,
        body,
        secret_headers,
    })
}

pub(super) const METHODS: [&str; 7] = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];

impl TaskBody {
    /// `prefix` is `""` for a single task, `"tasks[3]."` inside a batch.
    pub fn validate(self, prefix: &str) -> Result<NewTask, ApiError> {
        let f = |name: &str| format!("{prefix}{name}");
        valid_name(&self.gate).map_err(|e| ApiError::field(&f("gate"), e.message))?;
        let target = match (self.webhook, self.plugin) {
            (Some(_), Some(_)) => {
                return Err(ApiError::field(
                    &f("webhook"),
                    "a task has either a webhook or a plugin, not both",
                ));
            }
            (None, Some(plugin)) => Target::Plugin(plugin.validate(&f("plugin"))?),
            (None, None) => {
                return Err(ApiError::field(
                    &f("webhook"),
                    "a task needs a target: a webhook or a plugin",
                ));
            }
            (Some(webhook), None) => Target::Webhook(valid_webhook(webhook, &f)?),
        };
        let due = match (&self.run_at, &self.delay) {
            (Some(_), Some(_)) => {
                return Err(ApiError::field(
                    &f("delay"),
                    "give run_at or delay, not both",
                ));
            }
            (Some(at), None) => {
                let ts: jiff::Timestamp = at.parse().map_err(|e| {
                    ApiError::field(
                        &f("run_at"),
                        format!("expected RFC 3339, like 2026-01-02T03:04:05Z: {e}"),
                    )
                })?;
                let ms = ts.as_millisecond();
                if ms < 0 {
                    return Err(ApiError::field(&f("run_at"), "run_at is before 1970"));
                }
                if ms >= LAST_RUN_AT_MS {
                    // So its expiry (at most 10 years on) is a time too.
                    return Err(ApiError::field(
                        &f("run_at"),
                        "run_at is before the year 9000",
                    ));
                }
                // A time in the past means "now": it is due, and runs at once.
                Due::At(Timestamp(ms as u64))
            }
            (None, Some(d)) => {
                let d = duration(&f("delay"), d)?;
                if d > TEN_YEARS {
                    return Err(ApiError::field(&f("delay"), "delay is capped at 10 years"));
                }
                Due::After(d)
            }
            (None, None) => Due::NOW,
        };
        let labels = self.labels.unwrap_or_default();
        if labels.len() > MAX_LABELS {
            return Err(ApiError::field(
                &f("labels"),
                format!("at most {MAX_LABELS} labels"),
            ));
        }
        for (k, v) in &labels {
            if k.is_empty() || k.len() > 128 || v.len() > 512 || k.contains(':') {
                return Err(ApiError::field(
                    &f(&format!("labels.{k}")),
                    "label keys are 1-128 characters without ':', values at most 512",
                ));
            }
        }
        if let Some(key) = &self.idempotency_key
            && (key.is_empty() || key.len() > MAX_KEY_LEN)
        {
            return Err(ApiError::field(
                &f("idempotency_key"),
                format!("must be 1 to {MAX_KEY_LEN} characters"),
            ));
        }
        if let Some(key) = &self.key {
            gates::valid_key(key).map_err(|why| ApiError::field(&f("key"), why))?;
        }
        if self.priority.is_some_and(|p| p > 9) {
            return Err(ApiError::field(
                &f("priority"),
                "priority is 0 to 9 (default 5)",
            ));
        }
        if let Some(key) = &self.coalesce_key {
            gates::valid_key(key).map_err(|why| ApiError::field(&f("coalesce_key"), why))?;
        }
        let backoff = self
            .backoff
            .map(|b| backoff_patch(&f("backoff"), &b))
            .transpose()?;
        Ok(NewTask {
            gate: self.gate,
            target,
            due,
            max_attempts: self
                .max_attempts
                .map(|n| max_attempts(&f("max_attempts"), n))
                .transpose()?,
            timeout: self
                .timeout
                .as_deref()
                .map(|t| timeout(&f("timeout"), t))
                .transpose()?,
            backoff,
            max_retry_duration: opt_duration(&f("max_retry_duration"), &self.max_retry_duration)?,
            expires_after: match opt_duration(&f("expires_after"), &self.expires_after)? {
                Some(d) if d > TEN_YEARS => {
                    let why = "expires_after is capped at 10 years";
                    return Err(ApiError::field(&f("expires_after"), why));
                }
                d => d,
            },
            idempotency_key: self.idempotency_key,
            labels,
            key: self.key,
            coalesce_key: self.coalesce_key,
            priority: self.priority,
            schedule: None,
            parent: None,
            lineage: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// 2026-09-21, in milliseconds.
    const NOW: Timestamp = Timestamp(1_790_000_000_000);

    fn validate(v: serde_json::Value, prefix: &str) -> Result<NewTask, ApiError> {
        let body: TaskBody = serde_json::from_value(v).expect("a task body");
        body.validate(prefix)
    }

    #[test]
    fn a_webhook_task_gets_its_defaults_and_due_time() {
        let url = "https://a.example/x";
        let task = validate(json!({"gate": "g", "webhook": {"url": url}}), "").expect("valid");
        assert_eq!((task.gate.as_str(), task.due), ("g", Due::NOW));
        match &task.target {
            Target::Webhook(w) => assert_eq!((w.url.as_str(), w.method.as_str()), (url, "POST")),
            other => unreachable!("a webhook became {other:?}"),
        }
        let later = json!({"gate": "g", "webhook": {"url": url}, "delay": "1m30s"});
        // A delay counts from the turn that creates the task.
        let due = validate(later, "").expect("valid").due;
        assert_eq!(due, Due::After(Duration::from_secs(90)));
        assert_eq!(due.at(NOW), NOW.plus(Duration::from_secs(90)));
        // A time in the past is kept: the task is due at once.
        let past = json!({"gate": "g", "webhook": {"url": url}, "run_at": "1999-01-01T00:00:00Z"});
        assert!(validate(past, "").expect("valid").due.at(NOW) < NOW);
    }

    #[test]
    fn errors_name_the_field_under_the_prefix() {
        let url = "https://a.example/";
        let cases = [
            (json!({"gate": "g"}), "webhook"),
            (
                json!({"gate": "not a name", "webhook": {"url": url}}),
                "gate",
            ),
            (
                json!({"gate": "g", "webhook": {"url": url}, "run_at": "soon"}),
                "run_at",
            ),
            (
                json!({"gate": "g", "webhook": {"url": url}, "run_at": "2026-01-01T00:00:00Z", "delay": "1s"}),
                "delay",
            ),
            (
                json!({"gate": "g", "webhook": {"url": url}, "plugin": {"name": "p", "version": "1.0.0", "input": {}}}),
                "webhook",
            ),
        ];
        for (body, field) in cases {
            for prefix in ["", "tasks[3]."] {
                let e = validate(body.clone(), prefix).expect_err("invalid");
                assert_eq!(e.status, 400, "{body}");
                assert_eq!(e.field, Some(format!("{prefix}{field}")), "{body}: {e:?}");
            }
        }
    }

    #[test]
    fn next_tasks_are_read_all_or_nothing() {
        let one = json!({"gate": "g", "webhook": {"url": "https://a.example/"}}).to_string();
        let read = parse_next(&[one.clone(), one.clone()]).expect("two tasks");
        assert_eq!(read.len(), 2);
        let bad = parse_next(&[one.clone(), "{\"gate\": 1}".into()]).expect_err("bad");
        assert!(bad.starts_with("next[1]"), "{bad}");
        let too_many = vec![one; MAX_NEXT + 1];
        assert!(parse_next(&too_many).is_err());
    }
}
