//! The JSON of the API: request bodies with their validation, and responses.
//! Separate from store records and core types, so neither can change the wire by
//! accident.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::ApiError;
use crate::core::{
    AdaptiveRange, Backoff, CircuitPolicy, Rate, Recovery, RetryPolicy, TaskId, Timestamp,
    format_duration, parse_duration,
};
use crate::model::{
    BackoffPatch, Body, DEFAULT_BURST, DEFAULT_CONCURRENCY, DEFAULT_TIMEOUT, Due, GateSpec,
    NewTask, PluginCall, Target, Webhook,
};
use crate::shell::GateLive;
use crate::shell::stats::{self, Bucket};
use crate::store::{
    AttemptRecord, BodyRecord, Counts, KeyLimitsRecord, KeysRecord, PluginCallRecord, PluginRecord,
    TaskRecord, WebhookRecord,
};

mod gates;
mod plugins;
mod reports;
mod schedules;
mod task_views;
mod tasks;

pub use gates::*;
pub use plugins::*;
pub use reports::*;
pub use schedules::*;
pub use task_views::*;
pub use tasks::*;

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

/// A task's backoff as given: each part checked, the rest left to its gate.
fn backoff_patch(prefix: &str, body: &BackoffBody) -> Result<BackoffPatch, ApiError> {
    let patch = BackoffPatch {
        initial: opt_duration(&format!("{prefix}.initial"), &body.initial)?,
        max: opt_duration(&format!("{prefix}.max"), &body.max)?,
        multiplier: body.multiplier,
        jitter: body.jitter,
    };
    // Checked whole, with the built-in defaults where the task is silent;
    // which of them the gate's replace, `BackoffPatch::over` settles.
    let base = patch.over(Backoff::default());
    backoff(prefix, body, base)?;
    Ok(patch)
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

fn time(ms: u64) -> String {
    Timestamp(ms).rfc3339()
}

fn ms_text(ms: u64) -> String {
    format_duration(Duration::from_millis(ms))
}
