//! The JSON of the API: request bodies with their validation, and responses.
//! Separate from store records and core types, so neither can change the wire by
//! accident.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::ApiError;
use crate::core::{
    Backoff, CircuitPolicy, Rate, Recovery, RetryPolicy, TaskId, Timestamp, format_duration,
    parse_duration,
};
use crate::dispatch::rfc3339;
use crate::model::{DEFAULT_BURST, DEFAULT_CONCURRENCY, DEFAULT_TIMEOUT, GateSpec, NewTask};
use crate::shell::GateLive;
use crate::shell::stats::{self, Bucket};
use crate::store::{
    AttemptRecord, BodyRecord, Counts, PluginCallRecord, PluginRecord, Target, TaskRecord,
    WebhookRecord,
};

/// Largest webhook body, serialized.
pub const MAX_TASK_BODY: usize = 1 << 20;
pub const MAX_BATCH: usize = 10_000;
const MAX_LABELS: usize = 64;
const MAX_KEY_LEN: usize = 256;
const MAX_URL_LEN: usize = 8 * 1024;
const MAX_HEADERS: usize = 64;
/// Headers that carry credentials by their nature: secret without being marked.
const ALWAYS_SECRET: &[&str] = &["authorization", "proxy-authorization", "cookie"];

/// A header value as given: `"text"` or `{"value": "text", "secret": true}`.
fn header_value(value: serde_json::Value) -> Result<(String, bool), &'static str> {
    const SHAPE: &str = r#"a header value is a string or {"value": "...", "secret": true}"#;
    match value {
        serde_json::Value::String(s) => Ok((s, false)),
        serde_json::Value::Object(mut map) => {
            let secret = match map.remove("secret") {
                None => false,
                Some(serde_json::Value::Bool(b)) => b,
                Some(_) => return Err(SHAPE),
            };
            let value = match map.remove("value") {
                Some(serde_json::Value::String(s)) => s,
                _ => return Err(SHAPE),
            };
            if !map.is_empty() {
                return Err(SHAPE);
            }
            Ok((value, secret))
        }
        _ => Err(SHAPE),
    }
}
const MAX_ALLOWED_HOSTS: usize = 256;
const MAX_ATTEMPTS: u32 = 1_000;
const MAX_TIMEOUT: Duration = Duration::from_secs(3_600);

/// A rate as `"100/s"`, `"30/m"`, `"2/h"` (fractions allowed: `"0.5/s"`), or a
/// number per second.
#[derive(Deserialize, Debug, ToSchema)]
#[serde(untagged)]
#[schema(example = "100/s")]
pub enum RateBody {
    Text(String),
    Number(f64),
}

#[derive(Deserialize, Debug, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BackoffBody {
    /// Delay before the first retry, a duration like `"1s"`.
    #[schema(example = "1s")]
    pub initial: Option<String>,
    /// Longest delay, a duration like `"10m"`; not below `initial`.
    #[schema(example = "10m")]
    pub max: Option<String>,
    /// Growth per retry, 1 to 100.
    pub multiplier: Option<f64>,
    pub jitter: Option<bool>,
}

#[derive(Deserialize, Debug, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryBody {
    /// 1 to 1000; default 5.
    pub max_attempts: Option<u32>,
    pub backoff: Option<BackoffBody>,
    /// No retry starts later than this after the first attempt, e.g. `"1h"`.
    pub max_retry_duration: Option<String>,
}

#[derive(Deserialize, Debug, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecoveryBody {
    /// Fraction of the rate the ramp starts at, above 0 and at most 1 (1 = no ramp).
    pub start: Option<f64>,
    /// How long the ramp takes, a duration like `"60s"`.
    #[schema(example = "60s")]
    pub over: Option<String>,
}

#[derive(Deserialize, Debug, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CircuitBody {
    /// Consecutive failed attempts that open the circuit.
    pub failures: Option<u32>,
    /// A duration like `"30s"`.
    #[schema(example = "30s")]
    pub cooldown: Option<String>,
    /// A duration like `"10m"`.
    #[schema(example = "10m")]
    pub max_cooldown: Option<String>,
}

#[derive(Deserialize, Debug, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GateBody {
    /// Absent is refused with 400, so the schema requires it.
    #[schema(value_type = RateBody, required)]
    pub rate: Option<RateBody>,
    /// Bucket size; default 1.
    pub burst: Option<u32>,
    /// Attempts in flight at once; default 10.
    pub concurrency: Option<u32>,
    /// `host`, `host:port` or `*.example.com`; empty means any public host.
    pub allowed_hosts: Option<Vec<String>>,
    /// Per-attempt deadline, a duration like `"30s"` (at most 1h).
    #[schema(example = "30s")]
    pub timeout: Option<String>,
    pub retry: Option<RetryBody>,
    pub recovery: Option<RecoveryBody>,
    /// `null` switches the circuit breaker off; absent keeps the default.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<CircuitBody>)]
    pub circuit: Option<Option<CircuitBody>>,
    /// Standard Webhooks secrets; several sign at once during a rotation.
    pub signing_secrets: Option<Vec<String>>,
    /// Gates whose tasks may create `next` tasks (a completion's, a plugin's)
    /// in this gate. Default none: a `next` task stays in its source's gate.
    pub accept_next_from: Option<Vec<String>>,
}

/// Tells an explicit `null` (Some(None)) from an absent field (None).
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

fn duration(field: &str, text: &str) -> Result<Duration, ApiError> {
    parse_duration(text).map_err(|e| ApiError::field(field, e.to_string()))
}

fn opt_duration(field: &str, text: &Option<String>) -> Result<Option<Duration>, ApiError> {
    text.as_deref().map(|t| duration(field, t)).transpose()
}

fn backoff(prefix: &str, body: &BackoffBody, base: Backoff) -> Result<Backoff, ApiError> {
    let initial =
        opt_duration(&format!("{prefix}.initial"), &body.initial)?.unwrap_or(base.initial);
    let max = opt_duration(&format!("{prefix}.max"), &body.max)?.unwrap_or(base.max);
    let multiplier = body.multiplier.unwrap_or(base.multiplier);
    if !(1.0..=100.0).contains(&multiplier) {
        return Err(ApiError::field(
            &format!("{prefix}.multiplier"),
            "multiplier must be between 1 and 100",
        ));
    }
    if max < initial {
        return Err(ApiError::field(
            &format!("{prefix}.max"),
            "max must not be below initial",
        ));
    }
    if initial > Duration::from_secs(86_400) || max > Duration::from_secs(7 * 86_400) {
        return Err(ApiError::field(
            prefix,
            "backoff is capped at 1d initial and 7d max",
        ));
    }
    Ok(Backoff {
        initial,
        max,
        multiplier,
        jitter: body.jitter.unwrap_or(base.jitter),
    })
}

fn max_attempts(field: &str, n: u32) -> Result<u32, ApiError> {
    if n == 0 || n > MAX_ATTEMPTS {
        return Err(ApiError::field(
            field,
            format!("must be between 1 and {MAX_ATTEMPTS}"),
        ));
    }
    Ok(n)
}

fn timeout(field: &str, text: &str) -> Result<Duration, ApiError> {
    let d = duration(field, text)?;
    if d.is_zero() || d > MAX_TIMEOUT {
        return Err(ApiError::field(
            field,
            "timeout must be above 0 and at most 1h",
        ));
    }
    Ok(d)
}

pub fn valid_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::field(
            "name",
            "names are 1 to 128 characters of letters, digits, '-', '_' and '.'",
        ))
    }
}

impl GateBody {
    pub fn validate(self) -> Result<GateSpec, ApiError> {
        let rate = match self.rate {
            None => return Err(ApiError::field("rate", "rate is required, e.g. \"100/s\"")),
            Some(RateBody::Text(t)) => Rate::parse(&t),
            Some(RateBody::Number(n)) => Rate::per_second(n),
        }
        .map_err(|e| ApiError::field("rate", e.to_string()))?;
        let burst = self.burst.unwrap_or(DEFAULT_BURST);
        if burst == 0 || burst > 1_000_000 {
            return Err(ApiError::field(
                "burst",
                "burst must be between 1 and 1000000",
            ));
        }
        let concurrency = self.concurrency.unwrap_or(DEFAULT_CONCURRENCY);
        if concurrency == 0 || concurrency > 100_000 {
            return Err(ApiError::field(
                "concurrency",
                "concurrency must be between 1 and 100000",
            ));
        }
        let allowed_hosts = self.allowed_hosts.unwrap_or_default();
        if allowed_hosts.len() > MAX_ALLOWED_HOSTS {
            return Err(ApiError::field(
                "allowed_hosts",
                format!("at most {MAX_ALLOWED_HOSTS} entries"),
            ));
        }
        for (i, h) in allowed_hosts.iter().enumerate() {
            if !crate::dispatch::guard::valid_pattern(h) {
                return Err(ApiError::field(
                    &format!("allowed_hosts[{i}]"),
                    format!("{h:?} is not a host, host:port or *.domain pattern"),
                ));
            }
        }
        let timeout = match &self.timeout {
            Some(t) => timeout("timeout", t)?,
            None => DEFAULT_TIMEOUT,
        };
        let retry_body = self.retry.unwrap_or_default();
        let base = RetryPolicy::default();
        let retry = RetryPolicy {
            max_attempts: max_attempts(
                "retry.max_attempts",
                retry_body.max_attempts.unwrap_or(base.max_attempts),
            )?,
            backoff: backoff(
                "retry.backoff",
                &retry_body.backoff.unwrap_or_default(),
                base.backoff,
            )?,
            max_retry_duration: opt_duration(
                "retry.max_retry_duration",
                &retry_body.max_retry_duration,
            )?,
        };
        let recovery_body = self.recovery.unwrap_or_default();
        let default_recovery = Recovery::default();
        let recovery = Recovery {
            start: recovery_body.start.unwrap_or(default_recovery.start),
            over: opt_duration("recovery.over", &recovery_body.over)?
                .unwrap_or(default_recovery.over),
        };
        if !(recovery.start > 0.0 && recovery.start <= 1.0) {
            return Err(ApiError::field(
                "recovery.start",
                "start must be above 0 and at most 1.0 (1.0 turns the ramp off)",
            ));
        }
        let circuit = match self.circuit {
            Some(None) => None,
            body => {
                let body = body.flatten().unwrap_or_default();
                let d = CircuitPolicy::default();
                let failures = body.failures.unwrap_or(d.failures);
                if failures == 0 || failures > 1_000_000 {
                    return Err(ApiError::field(
                        "circuit.failures",
                        "failures must be between 1 and 1000000",
                    ));
                }
                let cooldown =
                    opt_duration("circuit.cooldown", &body.cooldown)?.unwrap_or(d.cooldown);
                let max_cooldown = opt_duration("circuit.max_cooldown", &body.max_cooldown)?
                    .unwrap_or(d.max_cooldown.max(cooldown));
                if cooldown.is_zero() {
                    return Err(ApiError::field(
                        "circuit.cooldown",
                        "cooldown must be above 0",
                    ));
                }
                if max_cooldown < cooldown {
                    return Err(ApiError::field(
                        "circuit.max_cooldown",
                        "max_cooldown must not be below cooldown",
                    ));
                }
                Some(CircuitPolicy {
                    failures,
                    cooldown,
                    max_cooldown,
                })
            }
        };
        if let Some(secrets) = &self.signing_secrets {
            if secrets.len() > 10 {
                return Err(ApiError::field(
                    "signing_secrets",
                    "at most 10 signing secrets",
                ));
            }
            for (i, secret) in secrets.iter().enumerate() {
                crate::dispatch::sign::SigningKey::parse(secret).map_err(|e| {
                    ApiError::field(&format!("signing_secrets[{i}]"), e.to_string())
                })?;
            }
        }
        let accept_next_from = self.accept_next_from.unwrap_or_default();
        if accept_next_from.len() > MAX_ALLOWED_HOSTS {
            return Err(ApiError::field(
                "accept_next_from",
                format!("at most {MAX_ALLOWED_HOSTS} gates"),
            ));
        }
        for (i, name) in accept_next_from.iter().enumerate() {
            valid_name(name).map_err(|e| ApiError {
                field: Some(format!("accept_next_from[{i}]")),
                ..e
            })?;
        }
        Ok(GateSpec {
            signing_secrets: self.signing_secrets,
            accept_next_from,
            rate,
            burst,
            concurrency,
            allowed_hosts,
            timeout,
            retry,
            recovery,
            circuit,
        })
    }
}

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
    fn validate(self, field: &str) -> Result<PluginCallRecord, ApiError> {
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
        Ok(PluginCallRecord {
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

/// The target as shown: `(webhook, plugin)`, exactly one set.
fn target_views(target: &Target) -> (Option<WebhookView>, Option<PluginCallView>) {
    match target {
        Target::Webhook(w) => (Some(WebhookView::new(w)), None),
        Target::Plugin(p) => (None, Some(PluginCallView::new(p))),
    }
}

/// The JSON texts a plugin's success asks to create, checked as
/// `POST /v1/tasks` bodies: all or nothing.
pub fn parse_next(texts: &[String], now: Timestamp) -> Result<Vec<NewTask>, String> {
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
            .validate(now, &format!("next[{i}]."))
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
    pub backoff: Option<BackoffBody>,
    /// A duration like `"1h"`.
    pub max_retry_duration: Option<String>,
    /// A duration like `"1h"` after it falls due.
    pub expires_after: Option<String>,
    /// Per gate: a second create with the same key returns the first task.
    pub idempotency_key: Option<String>,
    pub labels: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize, Debug, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchBody {
    /// 1 to 10,000 tasks, created all or none.
    pub tasks: Vec<TaskBody>,
}

/// Checks a webhook target; `f` names fields (`tasks[3].webhook.url`).
fn webhook_record(
    webhook: WebhookBody,
    f: &dyn Fn(&str) -> String,
) -> Result<WebhookRecord, ApiError> {
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
        Some(serde_json::Value::String(s)) => Some(BodyRecord::Text(s)),
        Some(v) => Some(BodyRecord::Json(v)),
    };
    let body_len = match &body {
        None => 0,
        Some(BodyRecord::Text(s)) => s.len(),
        Some(BodyRecord::Json(v)) => serde_json::to_vec(v).map(|b| b.len()).unwrap_or(usize::MAX),
    };
    if body_len > MAX_TASK_BODY {
        return Err(ApiError {
            field: Some(f("webhook.body")),
            ..ApiError::too_large(format!(
                "webhook body is {body_len} bytes; the limit is {MAX_TASK_BODY}"
            ))
        });
    }
    Ok(WebhookRecord {
        url: webhook.url,
        method,
        headers,
        body,
        secret_headers,
    })
}

const METHODS: [&str; 7] = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];

impl TaskBody {
    /// `prefix` is `""` for a single task, `"tasks[3]."` inside a batch.
    pub fn validate(self, now: Timestamp, prefix: &str) -> Result<NewTask, ApiError> {
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
            (Some(webhook), None) => Target::Webhook(webhook_record(webhook, &f)?),
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
                // A time in the past means "now": it is due, and runs at once.
                Timestamp(ms as u64)
            }
            (None, Some(d)) => {
                let d = duration(&f("delay"), d)?;
                if d > Duration::from_secs(10 * 365 * 86_400) {
                    return Err(ApiError::field(&f("delay"), "delay is capped at 10 years"));
                }
                now.plus(d)
            }
            (None, None) => now,
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
        let backoff = self
            .backoff
            .map(|b| backoff(&f("backoff"), &b, Backoff::default()))
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
            expires_after: opt_duration(&f("expires_after"), &self.expires_after)?,
            idempotency_key: self.idempotency_key,
            labels,
            schedule: None,
            parent: None,
            lineage: None,
        })
    }
}

// ---- responses ----

fn time(ms: u64) -> String {
    rfc3339(Timestamp(ms))
}

fn ms_text(ms: u64) -> String {
    format_duration(Duration::from_millis(ms))
}

#[derive(Serialize, Deserialize, Debug, Clone, ToSchema)]
/// Durations are strings like `"1s"`, `"10m"`, `"1h30m"`.
pub struct BackoffView {
    pub initial: String,
    pub max: String,
    pub multiplier: f64,
    pub jitter: bool,
}

#[derive(Serialize, Deserialize, Debug, Clone, ToSchema)]
pub struct RetryView {
    pub max_attempts: u32,
    pub backoff: BackoffView,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_retry_duration: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, ToSchema)]
pub struct RecoveryView {
    pub start: f64,
    pub over: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, ToSchema)]
pub struct CircuitView {
    pub failures: u32,
    pub cooldown: String,
    pub max_cooldown: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, ToSchema)]
pub struct CountersView {
    pub succeeded: u64,
    pub failed: u64,
    pub expired: u64,
    pub cancelled: u64,
    pub retried: u64,
    pub attempts: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone, ToSchema)]
pub struct GateView {
    pub name: String,
    /// Like `"100/s"`.
    #[schema(example = "100/s")]
    pub rate: String,
    pub rate_per_s: f64,
    pub burst: u32,
    pub concurrency: u32,
    pub allowed_hosts: Vec<String>,
    /// Gates whose tasks may create `next` tasks in this one.
    pub accept_next_from: Vec<String>,
    pub timeout: String,
    pub retry: RetryView,
    pub recovery: RecoveryView,
    /// `null` when the gate has no circuit breaker.
    #[schema(required)]
    pub circuit: Option<CircuitView>,
    /// How many signing secrets the gate has; the secrets are never shown.
    pub signing_secrets: usize,
    pub paused: bool,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
    /// `open`, `paused`, `tripped`, `probing`, `recovering` or `throttled`.
    pub state: String,
    /// Pending tasks, due or not.
    pub backlog: u64,
    /// Pending tasks that are due now.
    pub due: u64,
    pub in_flight: u32,
    pub effective_rate: f64,
    pub oldest_due_age_s: f64,
    /// Seconds to start every due task at the effective rate; `null` when paused.
    #[schema(required)]
    pub eta_drain_s: Option<f64>,
    pub counters: CountersView,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    pub circuit_open_until: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    pub throttled_until: Option<String>,
    /// Attempts over the last minute and the last five.
    pub recent: RecentView,
    /// The last ten minutes in 10-second steps.
    pub series: SeriesView,
    /// Pending tasks falling due in each minute of the next hour.
    pub forecast: ForecastView,
}

#[derive(Serialize, Deserialize, Debug, Clone, ToSchema)]
pub struct RecentView {
    #[serde(rename = "1m")]
    pub one_minute: WindowView,
    #[serde(rename = "5m")]
    pub five_minutes: WindowView,
}

/// Attempts in a recent window (kept in memory: a restart starts afresh).
#[derive(Serialize, Deserialize, Debug, Clone, ToSchema)]
pub struct WindowView {
    pub started: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub success_per_s: f64,
    pub error_per_s: f64,
}

#[derive(Serialize, Deserialize, Debug, Clone, ToSchema)]
pub struct SeriesView {
    pub step_s: u64,
    /// Oldest first; the last point is the step in progress.
    pub points: Vec<SeriesPoint>,
}

#[derive(Serialize, Deserialize, Debug, Clone, ToSchema)]
pub struct SeriesPoint {
    /// Start of the step.
    #[schema(format = DateTime)]
    pub t: String,
    pub started: u64,
    pub succeeded: u64,
    pub failed: u64,
    /// The backlog at the end of the step (`null` before anything was seen).
    #[schema(required)]
    pub backlog: Option<u64>,
}

#[derive(Serialize, Deserialize, Debug, Clone, ToSchema)]
pub struct ForecastView {
    /// Start of the current minute: `per_minute[0]` counts the tasks due in it
    /// (overdue ones of this minute included), `per_minute[i]` those of the
    /// i-th minute after.
    #[schema(format = DateTime)]
    pub from: String,
    pub per_minute: Vec<u64>,
}

/// Minutes the forecast covers.
pub const FORECAST_MINUTES: usize = 60;

/// Figures that need a store read, gathered by the handler.
pub struct GateExtra {
    pub due: u64,
    pub oldest_due_ms: Option<u64>,
    pub forecast: Vec<u64>,
}

fn window_view(series: &[Bucket], now: Timestamp, span_s: u64) -> WindowView {
    let (started, succeeded, failed) = stats::window(series, now, span_s * 1_000);
    let per_s = |n: u64| (n as f64 / span_s as f64 * 1_000.0).round() / 1_000.0;
    WindowView {
        started,
        succeeded,
        failed,
        success_per_s: per_s(succeeded),
        error_per_s: per_s(failed),
    }
}

impl GateView {
    pub fn new(live: &GateLive, extra: GateExtra, now: Timestamp) -> GateView {
        let g = &live.record;
        let c: Counts = live.counts;
        let view = &live.view;
        let rate = Rate::per_second(g.rate_per_s)
            .map(|r| r.to_string())
            .unwrap_or_default();
        let oldest_due_age_s = extra
            .oldest_due_ms
            .filter(|&t| t <= now.as_ms())
            .map_or(0.0, |t| (now.as_ms() - t) as f64 / 1000.0);
        let eta_drain_s = if g.paused || view.effective_rate <= 0.0 {
            None
        } else {
            Some((extra.due as f64 / view.effective_rate * 10.0).round() / 10.0)
        };
        GateView {
            name: g.name.clone(),
            rate,
            rate_per_s: g.rate_per_s,
            burst: g.burst,
            concurrency: g.concurrency,
            allowed_hosts: g.allowed_hosts.clone(),
            accept_next_from: g.accept_next_from.clone(),
            timeout: ms_text(g.timeout_ms),
            retry: retry_view(&g.retry),
            recovery: RecoveryView {
                start: g.recovery.start,
                over: ms_text(g.recovery.over_ms),
            },
            circuit: g.circuit.map(|c| CircuitView {
                failures: c.failures,
                cooldown: ms_text(c.cooldown_ms),
                max_cooldown: ms_text(c.max_cooldown_ms),
            }),
            signing_secrets: g.signing_secrets.len(),
            paused: g.paused,
            created_at: time(g.created_at),
            updated_at: time(g.updated_at),
            state: view.state.as_str().to_string(),
            backlog: c.pending,
            due: extra.due,
            in_flight: view.in_flight,
            effective_rate: (view.effective_rate * 1000.0).round() / 1000.0,
            oldest_due_age_s,
            eta_drain_s,
            counters: CountersView {
                succeeded: c.succeeded,
                failed: c.failed,
                expired: c.expired,
                cancelled: c.cancelled,
                retried: c.retried,
                attempts: c.attempts,
            },
            circuit_open_until: view.circuit_open_until.map(|t| time(t.as_ms())),
            throttled_until: view
                .throttled_until
                .filter(|&t| t > now)
                .map(|t| time(t.as_ms())),
            recent: RecentView {
                one_minute: window_view(&live.series, now, 60),
                five_minutes: window_view(&live.series, now, 300),
            },
            series: SeriesView {
                step_s: stats::STEP_MS / 1_000,
                points: live
                    .series
                    .iter()
                    .map(|b| SeriesPoint {
                        t: time(b.start_ms),
                        started: b.started,
                        succeeded: b.succeeded,
                        failed: b.failed,
                        backlog: b.backlog,
                    })
                    .collect(),
            },
            forecast: ForecastView {
                from: time(now.as_ms() - now.as_ms() % 60_000),
                per_minute: extra.forecast,
            },
        }
    }
}

fn retry_view(r: &crate::store::RetryRecord) -> RetryView {
    RetryView {
        max_attempts: r.max_attempts,
        backoff: BackoffView {
            initial: ms_text(r.initial_ms),
            max: ms_text(r.max_ms),
            multiplier: r.multiplier,
            jitter: r.jitter,
        },
        max_retry_duration: r.max_retry_duration_ms.map(ms_text),
    }
}

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
                BodyRecord::Json(v) => v.clone(),
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
    /// `scheduled`, `running`, `succeeded`, `failed`, `expired` or `cancelled`.
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
        let (webhook, plugin) = target_views(&t.target());
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
pub struct GateList {
    pub gates: Vec<GateView>,
}

#[derive(Serialize, Deserialize, Debug, ToSchema)]
pub struct BatchCreated {
    pub ids: Vec<String>,
}

// ---- schedules ----

#[derive(Deserialize, Debug, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleBody {
    /// A cron expression; give `cron` or `every`.
    #[schema(example = "0 9 * * MON-FRI")]
    pub cron: Option<String>,
    /// A duration like `"15m"`.
    pub every: Option<String>,
    /// IANA zone for `cron`; default `UTC`.
    pub timezone: Option<String>,
    /// `skip` (default), `once` or `all`.
    pub misfire: Option<String>,
    /// 1 to 10,000; default 100.
    pub catchup_limit: Option<u32>,
    /// A duration like `"30s"`, at most 1d.
    pub jitter: Option<String>,
    /// The task each occurrence creates, without `run_at`, `delay` or
    /// `idempotency_key`.
    pub task: TaskBody,
}

impl ScheduleBody {
    pub fn validate(self, now: Timestamp) -> Result<crate::model::ScheduleSpec, ApiError> {
        use crate::core::schedule::{Misfire, Rule};
        let timezone = self.timezone.clone().unwrap_or_else(|| "UTC".into());
        let (cron, every) = match (&self.cron, &self.every) {
            (Some(_), Some(_)) => {
                return Err(ApiError::field("every", "give cron or every, not both"));
            }
            (None, None) => return Err(ApiError::field("cron", "a schedule needs cron or every")),
            (Some(expr), None) => {
                Rule::cron(expr, &timezone).map_err(|e| {
                    let field = if matches!(e, crate::core::schedule::RuleError::Zone(_)) {
                        "timezone"
                    } else {
                        "cron"
                    };
                    ApiError::field(field, e.to_string())
                })?;
                (Some(expr.clone()), None)
            }
            (None, Some(text)) => {
                if self.timezone.is_some() {
                    return Err(ApiError::field(
                        "timezone",
                        "timezone applies to cron, not every",
                    ));
                }
                let d = duration("every", text)?;
                Rule::every(d, now).map_err(|e| ApiError::field("every", e.to_string()))?;
                (None, Some(d))
            }
        };
        let misfire = match self.misfire.as_deref() {
            None => Misfire::Skip,
            Some(m) => Misfire::parse(m)
                .ok_or_else(|| ApiError::field("misfire", "misfire is skip, once or all"))?,
        };
        let catchup_limit = self.catchup_limit.unwrap_or(100);
        if catchup_limit == 0 || catchup_limit > 10_000 {
            return Err(ApiError::field(
                "catchup_limit",
                "catchup_limit is between 1 and 10000",
            ));
        }
        let jitter = opt_duration("jitter", &self.jitter)?.unwrap_or_default();
        if jitter > Duration::from_secs(86_400) {
            return Err(ApiError::field("jitter", "jitter is at most 1d"));
        }
        for (set, field) in [
            (self.task.run_at.is_some(), "task.run_at"),
            (self.task.delay.is_some(), "task.delay"),
            (self.task.idempotency_key.is_some(), "task.idempotency_key"),
        ] {
            if set {
                return Err(ApiError::field(
                    field,
                    "a schedule decides when its tasks run and keys each occurrence itself",
                ));
            }
        }
        let template = self.task.validate(now, "task.")?;
        Ok(crate::model::ScheduleSpec {
            cron,
            timezone,
            every,
            misfire,
            catchup_limit,
            jitter,
            template,
        })
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, ToSchema)]
pub struct RunView {
    #[schema(format = DateTime)]
    pub scheduled_at: String,
    pub task: String,
    pub state: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, ToSchema)]
pub struct TemplateView {
    pub gate: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plugin: Option<PluginCallView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_after: Option<String>,
    pub labels: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, ToSchema)]
pub struct ScheduleView {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub every: Option<String>,
    pub timezone: String,
    /// `skip`, `once` or `all`.
    pub misfire: String,
    pub catchup_limit: u32,
    pub jitter: String,
    pub paused: bool,
    pub task: TemplateView,
    /// The occurrence in progress.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_task: Option<String>,
    /// The next 10 runs, jitter included, in the schedule's zone.
    pub next_runs: Vec<String>,
    /// The last 10 occurrences that ended, newest first.
    pub last_runs: Vec<RunView>,
    pub missed: u64,
    pub skipped: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
}

#[derive(Serialize, Deserialize, Debug, ToSchema)]
pub struct ScheduleList {
    pub schedules: Vec<ScheduleView>,
}

impl ScheduleView {
    pub fn new(s: &crate::store::ScheduleRecord, now: Timestamp) -> ScheduleView {
        let zone = jiff::tz::TimeZone::get(&s.timezone).unwrap_or(jiff::tz::TimeZone::UTC);
        let jitter =
            crate::core::schedule::jitter_offset(&s.name, Duration::from_millis(s.jitter_ms));
        let show = |t: Timestamp| {
            jiff::Timestamp::from_millisecond(t.as_ms() as i64)
                .map(|ts| {
                    let offset = zone.to_offset(ts);
                    ts.display_with_offset(offset).to_string()
                })
                .unwrap_or_default()
        };
        let next_runs = match (s.paused, s.rule()) {
            (true, _) | (_, Err(_)) => Vec::new(),
            (false, Ok(rule)) => {
                let mut times = Vec::new();
                let from = match s.current {
                    Some(c) => {
                        times.push(Timestamp(c.scheduled_at));
                        Timestamp(c.scheduled_at)
                    }
                    None => now,
                };
                times.extend(rule.upcoming(from, 10 - times.len()));
                times.into_iter().map(|t| show(t.plus(jitter))).collect()
            }
        };
        let t = &s.template;
        ScheduleView {
            name: s.name.clone(),
            cron: s.cron.clone(),
            every: s.every_ms.map(ms_text),
            timezone: s.timezone.clone(),
            misfire: s.misfire.clone(),
            catchup_limit: s.catchup_limit,
            jitter: ms_text(s.jitter_ms),
            paused: s.paused,
            task: TemplateView {
                gate: t.gate.clone(),
                webhook: target_views(&t.target()).0,
                plugin: target_views(&t.target()).1,
                max_attempts: t.max_attempts,
                timeout: t.timeout_ms.map(ms_text),
                expires_after: t.expires_after_ms.map(ms_text),
                labels: t.labels.clone(),
            },
            current_task: s.current.map(|c| TaskId(c.task).to_string()),
            next_runs,
            last_runs: s
                .last_runs
                .iter()
                .rev()
                .map(|r| RunView {
                    scheduled_at: show(Timestamp(r.scheduled_at)),
                    task: TaskId(r.task).to_string(),
                    state: r.state.as_str().into(),
                })
                .collect(),
            missed: s.missed,
            skipped: s.skipped,
            last_error: s.last_error.clone(),
            created_at: time(s.created_at),
            updated_at: time(s.updated_at),
        }
    }
}

// ---- reports on long-running work ----

/// Most next steps one completion may create.
pub const MAX_NEXT: usize = 100;

#[derive(Deserialize, Debug, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompleteBody {
    /// The `Sluice-Completion-Token` the attempt was sent.
    pub token: String,
    /// Kept with the attempt, at most 1 MiB.
    pub output: Option<serde_json::Value>,
    /// Up to 100 tasks to create in the same commit.
    pub next: Option<Vec<TaskBody>>,
}

#[derive(Deserialize, Debug, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FailBody {
    /// The `Sluice-Completion-Token` the attempt was sent.
    pub token: String,
    pub reason: Option<String>,
    /// Default true; false fails the task without further attempts.
    pub retry: Option<bool>,
    /// A duration like `"30s"`.
    pub retry_after: Option<String>,
}

#[derive(Deserialize, Debug, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatBody {
    /// The `Sluice-Completion-Token` the attempt was sent.
    pub token: String,
    /// Kept with the attempt, at most 1 MiB.
    pub progress: Option<serde_json::Value>,
    /// Extends the lease to this long from now, a duration like `"5m"` (at most 24h).
    pub lease: Option<String>,
}

fn check_token(token: &str) -> Result<(), ApiError> {
    if token.is_empty() || token.len() > 256 {
        return Err(ApiError::field(
            "token",
            "token is the Sluice-Completion-Token the attempt was sent",
        ));
    }
    Ok(())
}

fn check_size(field: &str, value: &Option<serde_json::Value>) -> Result<(), ApiError> {
    if let Some(v) = value
        && v.to_string().len() > MAX_TASK_BODY
    {
        return Err(ApiError {
            field: Some(field.into()),
            ..ApiError::too_large(format!("{field} is larger than 1 MiB"))
        });
    }
    Ok(())
}

impl CompleteBody {
    pub fn validate(self, now: Timestamp) -> Result<crate::shell::Callback, ApiError> {
        check_token(&self.token)?;
        check_size("output", &self.output)?;
        let next = self.next.unwrap_or_default();
        if next.len() > MAX_NEXT {
            return Err(ApiError::field(
                "next",
                format!("at most {MAX_NEXT} next tasks"),
            ));
        }
        let next = next
            .into_iter()
            .enumerate()
            .map(|(i, t)| t.validate(now, &format!("next[{i}].")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(crate::shell::Callback::Complete {
            token: self.token,
            output: self.output,
            next,
        })
    }
}

impl FailBody {
    pub fn validate(self) -> Result<crate::shell::Callback, ApiError> {
        check_token(&self.token)?;
        if self.reason.as_ref().is_some_and(|r| r.len() > 64 * 1024) {
            return Err(ApiError::field("reason", "reason is at most 64 KiB"));
        }
        Ok(crate::shell::Callback::Fail {
            token: self.token,
            reason: self.reason,
            retry: self.retry.unwrap_or(true),
            retry_after: opt_duration("retry_after", &self.retry_after)?,
        })
    }
}

impl HeartbeatBody {
    pub fn validate(self) -> Result<crate::shell::Callback, ApiError> {
        check_token(&self.token)?;
        check_size("progress", &self.progress)?;
        let lease = opt_duration("lease", &self.lease)?;
        if lease.is_some_and(|l| l.is_zero() || l > crate::dispatch::MAX_LEASE) {
            return Err(ApiError::field("lease", "lease is above 0 and at most 24h"));
        }
        Ok(crate::shell::Callback::Heartbeat {
            token: self.token,
            progress: self.progress,
            lease,
        })
    }
}

// ---- the plugin registry ----

/// A plugin version in the registry.
#[derive(Serialize, Deserialize, Debug, Clone, ToSchema)]
pub struct PluginView {
    pub name: String,
    pub version: String,
    /// Bytes of the component.
    pub size: u64,
    /// SHA-256 of the component, hex.
    pub sha256: String,
    #[schema(format = DateTime)]
    pub uploaded_at: String,
    /// What the component imports (all within the `sluice:task` world).
    pub imports: Vec<String>,
    /// Unfinished tasks and schedules that run it; it cannot be deleted while
    /// this is above zero.
    pub references: u64,
}

impl PluginView {
    pub fn new(p: &PluginRecord, schedules: u64) -> PluginView {
        PluginView {
            name: p.name.clone(),
            version: p.version.clone(),
            size: p.size,
            sha256: p.sha256.clone(),
            uploaded_at: time(p.uploaded_at),
            imports: p.imports.clone(),
            references: p.unfinished + schedules,
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, ToSchema)]
pub struct PluginList {
    pub plugins: Vec<PluginView>,
}
