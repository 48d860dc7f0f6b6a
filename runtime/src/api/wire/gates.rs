//! Gates: `GateBody` and its validation into a `GateSpec`; `GateView`
//! with its counters, windows, series and forecast.

use super::*;

pub(super) const MAX_ALLOWED_HOSTS: usize = 256;
pub(super) const MAX_ATTEMPTS: u32 = 1_000;
pub(super) const MAX_TIMEOUT: Duration = Duration::from_secs(3_600);

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
    /// Pace by the quota the endpoint states in its responses (`RateLimit` /
    /// `RateLimit-Policy`, `RateLimit-*`, `X-RateLimit-*`), so its limit is
    /// never exceeded; default `true`.
    pub quota_headers: Option<bool>,
    /// Search for the endpoint's safe concurrency between `min` and `max`
    /// from latency and errors; `concurrency` is then where the search
    /// starts, and the gate view shows the limit found. Absent or `null`:
    /// off.
    pub adaptive: Option<AdaptiveBody>,
    /// Limits every task `key` gets inside the gate, with overrides and
    /// weights per key. Keys share the gate in weighted round robin whether
    /// or not this is set.
    pub keys: Option<KeysBody>,
    /// `"key"`: a 429/503, `Retry-After` or a failing run throttles or trips
    /// only the key whose request drew it; `"gate"` (default): the gate.
    pub isolate: Option<String>,
    /// A waiting task gains one priority level per this much past its due
    /// time, so low priority is delayed, never starved; default `"1m"`.
    #[schema(example = "1m")]
    pub priority_aging: Option<String>,
}

/// Limits of each key inside its gate. A limit left out is the gate's.
#[derive(Deserialize, Debug, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeysBody {
    #[schema(value_type = Option<RateBody>)]
    pub rate: Option<RateBody>,
    /// Default 1.
    pub burst: Option<u32>,
    pub concurrency: Option<u32>,
    /// Share in the round robin; default 1.
    pub weight: Option<u32>,
    /// Keys with limits of their own; what one leaves out is the default's.
    pub overrides: Option<BTreeMap<String, KeyLimitsBody>>,
}

#[derive(Deserialize, Debug, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyLimitsBody {
    #[schema(value_type = Option<RateBody>)]
    pub rate: Option<RateBody>,
    pub burst: Option<u32>,
    pub concurrency: Option<u32>,
    pub weight: Option<u32>,
}

/// Most keys with limits of their own in one gate.
const MAX_KEY_OVERRIDES: usize = 1_000;
/// The longest task `key`, in bytes.
pub const MAX_KEY_BYTES: usize = 128;

impl KeyLimitsBody {
    /// Checks one key's limits, filling what it leaves out from `base`.
    fn validate(self, field: &str, base: KeyLimitsRecord) -> Result<KeyLimitsRecord, ApiError> {
        let rate = match self.rate {
            None => base.rate_per_s,
            Some(body) => Some(
                match body {
                    RateBody::Text(t) => Rate::parse(&t),
                    RateBody::Number(n) => Rate::per_second(n),
                }
                .map_err(|e| ApiError::field(&format!("{field}.rate"), e.to_string()))?
                .as_per_second(),
            ),
        };
        let burst = self.burst.unwrap_or(base.burst);
        if burst == 0 || burst > 1_000_000 {
            return Err(ApiError::field(
                &format!("{field}.burst"),
                "burst must be between 1 and 1000000",
            ));
        }
        let concurrency = self.concurrency.or(base.concurrency);
        if concurrency.is_some_and(|c| c == 0 || c > 100_000) {
            return Err(ApiError::field(
                &format!("{field}.concurrency"),
                "concurrency must be between 1 and 100000",
            ));
        }
        let weight = self.weight.unwrap_or(base.weight);
        if weight == 0 || weight > 1_000 {
            return Err(ApiError::field(
                &format!("{field}.weight"),
                "weight must be between 1 and 1000",
            ));
        }
        Ok(KeyLimitsRecord {
            rate_per_s: rate,
            burst,
            concurrency,
            weight,
        })
    }
}

/// A gate's `keys` and `isolate`, checked.
fn keys_record(
    keys: Option<KeysBody>,
    isolate: Option<String>,
) -> Result<Option<KeysRecord>, ApiError> {
    let isolate = match isolate.as_deref() {
        None | Some("gate") => false,
        Some("key") => true,
        Some(other) => {
            return Err(ApiError::field(
                "isolate",
                format!("isolate is \"gate\" or \"key\", not {other:?}"),
            ));
        }
    };
    let Some(body) = keys else {
        return Ok(isolate.then(|| KeysRecord {
            isolate,
            ..KeysRecord::default()
        }));
    };
    let defaults = KeyLimitsBody {
        rate: body.rate,
        burst: body.burst,
        concurrency: body.concurrency,
        weight: body.weight,
    };
    let limits = defaults.validate("keys", KeyLimitsRecord::default())?;
    let overrides = body.overrides.unwrap_or_default();
    if overrides.len() > MAX_KEY_OVERRIDES {
        return Err(ApiError::field(
            "keys.overrides",
            format!("at most {MAX_KEY_OVERRIDES} keys with limits of their own"),
        ));
    }
    let mut checked = BTreeMap::new();
    for (key, o) in overrides {
        let field = format!("keys.overrides.{key}");
        valid_key(&key).map_err(|why| ApiError::field(&field, why))?;
        let o = o.validate(&field, limits)?;
        checked.insert(key, o);
    }
    Ok(Some(KeysRecord {
        limits,
        overrides: checked,
        isolate,
    }))
}

/// A task `key` (or a key named in a gate's overrides): 1 to 128 bytes,
/// no control characters.
pub fn valid_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(format!("a key is 1 to {MAX_KEY_BYTES} bytes"));
    }
    if key.chars().any(char::is_control) {
        return Err("a key has no control characters".into());
    }
    Ok(())
}

#[derive(Deserialize, Debug, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdaptiveBody {
    /// At least 1.
    pub min: u32,
    /// At least `min`, at most 100000.
    pub max: u32,
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
        let adaptive = match self.adaptive {
            None => None,
            Some(AdaptiveBody { min, max }) => {
                if min == 0 || min > 100_000 {
                    return Err(ApiError::field(
                        "adaptive.min",
                        "adaptive.min must be between 1 and 100000",
                    ));
                }
                if max < min || max > 100_000 {
                    return Err(ApiError::field(
                        "adaptive.max",
                        "adaptive.max must be between adaptive.min and 100000",
                    ));
                }
                Some(AdaptiveRange { min, max })
            }
        };
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
                crate::attempt::sign::SigningKey::parse(secret).map_err(|e| {
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
        let priority_aging = opt_duration("priority_aging", &self.priority_aging)?;
        if priority_aging
            .is_some_and(|d| d < Duration::from_secs(1) || d > Duration::from_secs(86_400))
        {
            return Err(ApiError::field(
                "priority_aging",
                "priority_aging is between 1s and 24h",
            ));
        }
        Ok(GateSpec {
            keys: keys_record(self.keys, self.isolate)?,
            priority_aging,
            quota_headers: self.quota_headers.unwrap_or(true),
            adaptive,
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
    /// Replaced before they started by a newer task of their coalesce key.
    pub superseded: u64,
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
    /// Attempts allowed in flight at once; with `adaptive`, the limit the
    /// search has found, live.
    pub concurrency: u32,
    /// The adaptive concurrency search, when it runs.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub adaptive: Option<AdaptiveView>,
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
    /// Whether the endpoint's quota headers pace the gate.
    pub quota_headers: bool,
    /// Per-key limits, when the gate sets any.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub keys: Option<KeysView>,
    /// `gate` or `key`: what a 429, a `Retry-After` or a tripped circuit
    /// holds back.
    pub isolate: String,
    /// Keys with pending or running work.
    pub active_keys: usize,
    /// A waiting task gains one priority level per this much.
    pub priority_aging: String,
    /// The busiest keys now (most in flight, then most due), in a view of
    /// one gate.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub busiest_keys: Vec<KeyStateView>,
    pub paused: bool,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
    /// `open`, `paused`, `tripped`, `probing`, `recovering` or `throttled`;
    /// in a cluster, `unreachable` when its owner did not answer (or no node
    /// runs it right now): stored settings and counts, no live figures.
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
    /// The endpoint's quota as its last answers stated it, less what the
    /// gate sent since; absent when none stated one (or `quota_headers` is off).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub quota: Option<QuotaStateView>,
    /// Attempts over the last minute and the last five.
    pub recent: RecentView,
    /// The last ten minutes in 10-second steps.
    pub series: SeriesView,
    /// Pending tasks falling due in each minute of the next hour.
    pub forecast: ForecastView,
    /// In a cluster, the node that dispatches this gate.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub owner: Option<String>,
}

/// One page of a gate's keys with pending tasks, in key order.
#[derive(Serialize, Deserialize, Debug, Clone, ToSchema)]
pub struct KeysPage {
    pub keys: Vec<KeyBacklogView>,
    /// Pass as `cursor` for the next page; `null` on the last.
    #[schema(required)]
    pub next_cursor: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, ToSchema)]
pub struct KeyBacklogView {
    pub key: String,
    /// Pending tasks of the key (counted up to 100,000: more reads as that).
    pub pending: u64,
    /// Its first pending task's due time.
    #[schema(format = DateTime)]
    pub oldest_due: String,
}

impl KeyBacklogView {
    pub fn new(k: &crate::store::KeyBacklog) -> KeyBacklogView {
        KeyBacklogView {
            key: k.key.clone(),
            pending: k.pending,
            oldest_due: time(k.oldest_due_ms),
        }
    }
}

/// One key's limits inside its gate.
#[derive(Serialize, Deserialize, Debug, Clone, ToSchema)]
pub struct KeyLimitsView {
    /// Absent: the gate's rate.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub rate: Option<String>,
    pub burst: u32,
    /// Absent: the gate's concurrency.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub concurrency: Option<u32>,
    pub weight: u32,
}

#[derive(Serialize, Deserialize, Debug, Clone, ToSchema)]
pub struct KeysView {
    #[serde(flatten)]
    pub limits: KeyLimitsView,
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default)]
    pub overrides: BTreeMap<String, KeyLimitsView>,
}

/// A key of a gate as it stands.
#[derive(Serialize, Deserialize, Debug, Clone, ToSchema)]
pub struct KeyStateView {
    /// `null` for tasks without a key.
    #[schema(required)]
    pub key: Option<String>,
    pub in_flight: u32,
    /// Due tasks the scheduler holds in memory for it (a lower bound of its
    /// backlog).
    pub due: u64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub oldest_due_age_s: Option<f64>,
    /// Its own limiter's state, when it has one: `open`, `tripped`,
    /// `probing`, `recovering` or `throttled`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub state: Option<String>,
    pub weight: u32,
}

fn key_limits_view(l: &KeyLimitsRecord) -> KeyLimitsView {
    KeyLimitsView {
        rate: l
            .rate_per_s
            .and_then(|r| Rate::per_second(r).ok())
            .map(|r| r.to_string()),
        burst: l.burst,
        concurrency: l.concurrency,
        weight: l.weight,
    }
}

/// The adaptive concurrency search: its range and what it has learned.
#[derive(Serialize, Deserialize, Debug, Clone, ToSchema)]
pub struct AdaptiveView {
    pub min: u32,
    pub max: u32,
    /// Where the search starts (after a restart, say): the gate's `concurrency`.
    pub start: u32,
    /// The lowest latency seen lately, in milliseconds (`null` before any answer).
    #[schema(required)]
    pub baseline_ms: Option<f64>,
    /// The moving average of the last answers' latency, in milliseconds.
    #[schema(required)]
    pub recent_ms: Option<f64>,
}

/// What the gate knows of its endpoint's quota.
#[derive(Serialize, Deserialize, Debug, Clone, ToSchema)]
pub struct QuotaStateView {
    /// Requests the gate may still send before `reset_at`.
    pub remaining: u64,
    #[schema(format = DateTime)]
    pub reset_at: String,
    /// Seconds from now to `reset_at`.
    pub reset_in_s: f64,
    /// The endpoint's stated limit per window, when it stated one.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub limit: Option<u64>,
    /// The window, like `"60s"`, when the endpoint stated one.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub window: Option<String>,
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
    /// An adaptive gate's concurrency limit at the end of the step.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub concurrency: Option<u32>,
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

pub(super) fn window_view(series: &[Bucket], now: Timestamp, span_s: u64) -> WindowView {
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
            concurrency: if g.adaptive.is_some() {
                view.concurrency
            } else {
                g.concurrency
            },
            adaptive: g.adaptive.map(|a| {
                let (baseline, recent) = view.latencies.unwrap_or((None, None));
                let round = |ms: Option<f64>| ms.map(|v| (v * 100.0).round() / 100.0);
                AdaptiveView {
                    min: a.min,
                    max: a.max,
                    start: g.concurrency,
                    baseline_ms: round(baseline),
                    recent_ms: round(recent),
                }
            }),
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
            quota_headers: g.quota_headers,
            keys: g
                .keys
                .as_ref()
                .filter(|k| {
                    *k != &KeysRecord {
                        isolate: k.isolate,
                        ..KeysRecord::default()
                    }
                })
                .map(|k| KeysView {
                    limits: key_limits_view(&k.limits),
                    overrides: k
                        .overrides
                        .iter()
                        .map(|(name, l)| (name.clone(), key_limits_view(l)))
                        .collect(),
                }),
            isolate: if g.keys.as_ref().is_some_and(|k| k.isolate) {
                "key"
            } else {
                "gate"
            }
            .into(),
            active_keys: view.keys,
            priority_aging: ms_text(
                g.priority_aging_ms
                    .unwrap_or(crate::store::DEFAULT_PRIORITY_AGING_MS),
            ),
            busiest_keys: live
                .keys
                .iter()
                .map(|k| KeyStateView {
                    key: k.key.as_deref().map(str::to_owned),
                    in_flight: k.in_flight,
                    due: k.due_in_memory,
                    oldest_due_age_s: k
                        .oldest_due
                        .filter(|&t| t <= now)
                        .map(|t| now.as_ms().saturating_sub(t.as_ms()) as f64 / 1_000.0),
                    state: k.state.map(|s| s.as_str().to_string()),
                    weight: k.weight,
                })
                .collect(),
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
                superseded: c.superseded,
                retried: c.retried,
                attempts: c.attempts,
            },
            circuit_open_until: view.circuit_open_until.map(|t| time(t.as_ms())),
            throttled_until: view
                .throttled_until
                .filter(|&t| t > now)
                .map(|t| time(t.as_ms())),
            quota: view.quota.map(|q| QuotaStateView {
                remaining: q.remaining,
                reset_at: time(q.reset_at.as_ms()),
                reset_in_s: q.reset_at.as_ms().saturating_sub(now.as_ms()) as f64 / 1_000.0,
                limit: q.limit,
                window: q.window.map(crate::core::format_duration),
            }),
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
                        concurrency: b.concurrency,
                    })
                    .collect(),
            },
            forecast: ForecastView {
                from: time(now.as_ms() - now.as_ms() % 60_000),
                per_minute: extra.forecast,
            },
            owner: None,
        }
    }
}

/// `GET /v1/cluster`.
#[derive(Serialize, Deserialize, Debug, Clone, ToSchema)]
pub struct ClusterView {
    /// `redb` (one node, nothing to share) or `postgres`.
    pub store: String,
    /// The node that answered.
    pub node: String,
    pub nodes: Vec<NodeView>,
}

#[derive(Serialize, Deserialize, Debug, Clone, ToSchema)]
pub struct NodeView {
    pub id: String,
    /// Where the node answers the API; `null` for a single node.
    #[schema(required)]
    pub address: Option<String>,
    /// Seconds since its last heartbeat, by the database's clock.
    pub last_heartbeat_s: f64,
    #[schema(format = DateTime)]
    pub started_at: Option<String>,
    /// Gates this node dispatches.
    pub gates_owned: usize,
    /// The units (0 to 63) it holds: a gate's unit comes from its name,
    /// and the unit's owner dispatches the gate.
    pub units: Vec<u32>,
}

impl NodeView {
    /// `node`, owning those of `gates` (names) in its units.
    pub fn of(node: &crate::cluster::Node, gates: &[String]) -> NodeView {
        NodeView {
            id: node.id.clone(),
            address: Some(node.address.clone()),
            last_heartbeat_s: node.heartbeat_age_ms as f64 / 1000.0,
            started_at: Some(time(node.started_at)),
            gates_owned: gates.iter().filter(|g| node.units.has_gate(g)).count(),
            units: node.units.iter().collect(),
        }
    }
}

pub(super) fn retry_view(r: &crate::store::RetryRecord) -> RetryView {
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

#[derive(Serialize, Deserialize, Debug, ToSchema)]
pub struct GateList {
    pub gates: Vec<GateView>,
}
