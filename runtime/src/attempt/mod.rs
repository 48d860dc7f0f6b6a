//! An attempt between the engine that plans it and the executors that run it
//! (`dispatch` for webhooks, `plugin` for components): the `Plan` going out,
//! the `Report` coming back, how an HTTP answer maps onto the core's
//! `Outcome`, and the Standard Webhooks signing keys a plan carries.
//!
//! Below both executors and the shell, so none of them reaches sideways or up
//! for these.

pub mod quota;
pub mod sign;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Bytes;

use crate::core::{GateId, Outcome, TaskId, Timestamp};
use crate::store::LogRecord;

/// Everything one attempt needs.
#[derive(Clone, Debug)]
pub struct Plan {
    pub task: TaskId,
    pub attempt: u32,
    pub gate: String,
    pub gate_id: GateId,
    pub action: Action,
    pub timeout: Duration,
    pub scheduled_at: Timestamp,
    /// The attempt's slot time in its gate: released then, not before.
    pub release_at: Timestamp,
    /// The schedule this attempt's task is an occurrence of.
    pub schedule: Option<String>,
    /// Sent as `Sluice-Completion-Token`; only its hash is stored.
    pub completion_token: String,
    /// Standard Webhooks keys: the gate's, or the server's default.
    pub signing_keys: Vec<sign::SigningKey>,
    pub idempotency_key: String,
    pub allowed_hosts: Vec<String>,
}

/// What an attempt does: send a webhook, or run a plugin.
#[derive(Clone, Debug)]
pub enum Action {
    Webhook(Request),
    Plugin(PluginCall),
}

/// A webhook attempt's request, ready to send.
#[derive(Clone, Debug)]
pub struct Request {
    pub url: String,
    pub method: String,
    pub headers: BTreeMap<String, String>,
    /// Lowercase names of secret headers: marked sensitive on the wire.
    pub secret_headers: BTreeSet<String>,
    pub body: Bytes,
    /// The body is JSON: sent with `content-type: application/json` unless a
    /// header says otherwise.
    pub json: bool,
}

/// What a plugin attempt runs.
#[derive(Clone, Debug)]
pub struct PluginCall {
    pub name: String,
    pub version: String,
    /// The task's `plugin.input` as JSON text.
    pub input: String,
    /// The component the task was created for, if known
    /// (`PluginCallRecord::sha256`).
    pub sha256: Option<String>,
}

/// What became of an attempt.
#[derive(Clone, Debug)]
pub struct Report {
    pub task: TaskId,
    pub attempt: u32,
    pub outcome: Outcome,
    pub ended_at: Timestamp,
    pub status: Option<u16>,
    pub latency_ms: u64,
    pub error: Option<String>,
    pub response: Option<String>,
    /// The attempt ran out of its time (its error says after how long).
    pub timed_out: bool,
    /// A `202` with `Sluice-Lease`: the endpoint holds the work for this long.
    pub lease: Option<Duration>,
    /// The quota the response stated (`quota::read_quota`).
    pub quota: Option<crate::core::Quota>,
    /// A plugin attempt's log lines.
    pub logs: Vec<LogRecord>,
    /// Tasks a plugin's success asks for, as `POST /v1/tasks` JSON texts;
    /// created in the same commit as the success, or the attempt fails.
    pub next: Vec<String>,
}

/// Longest lease an endpoint may ask for at once; heartbeats extend it.
pub const MAX_LEASE: Duration = Duration::from_secs(24 * 3_600);

impl Report {
    /// The word history shows for this outcome.
    pub fn outcome_name(&self) -> &'static str {
        match self.outcome {
            Outcome::Succeeded => "succeeded",
            Outcome::Rejected => "rejected",
            Outcome::Denied => "denied",
            Outcome::Failed { .. } if self.timed_out => "timeout",
            Outcome::Failed { .. } => "failed",
            Outcome::Throttled { .. } => "throttled",
            Outcome::Interrupted => "interrupted",
            Outcome::Withdrawn => "withdrawn",
        }
    }
}

/// SPEC §2: 2xx succeeds; 429 and 503 throttle; 408 and other 5xx retry; any other
/// status (4xx, and 3xx since redirects are not followed) fails at once.
pub fn classify(status: u16, retry_after: Option<Duration>) -> (Outcome, Option<String>) {
    match status {
        200..=299 => (Outcome::Succeeded, None),
        429 | 503 => (
            Outcome::Throttled { retry_after },
            Some(format!("endpoint answered {status}")),
        ),
        408 | 500..=599 => (
            Outcome::Failed { retry_after },
            Some(format!("endpoint answered {status}")),
        ),
        300..=399 => (
            Outcome::Rejected,
            Some(format!(
                "endpoint answered {status}; redirects are not followed"
            )),
        ),
        _ => (
            Outcome::Rejected,
            Some(format!("endpoint answered {status}")),
        ),
    }
}

/// `Retry-After` as seconds or an HTTP date in any of the three forms RFC
/// 9110 has recipients read (IMF-fixdate, RFC 850, asctime); capped by the
/// core, so a number too long for any clock is as far as it goes.
pub fn parse_retry_after(value: &str, now: Timestamp) -> Option<Duration> {
    const DAY: Duration = Duration::from_secs(86_400);
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return Some(
            value
                .parse::<u64>()
                .map_or(DAY, |secs| Duration::from_secs(secs).min(DAY)),
        );
    }
    let at_ms = match jiff::fmt::rfc2822::parse(value) {
        Ok(at) => u64::try_from(at.timestamp().as_millisecond()).ok()?,
        Err(_) => {
            let at = httpdate::parse_http_date(value).ok()?;
            let since_epoch = at.duration_since(std::time::UNIX_EPOCH).ok()?;
            u64::try_from(since_epoch.as_millis()).ok()?
        }
    };
    Some(Timestamp(at_ms).since(now))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified_as_the_spec_says() {
        assert_eq!(classify(200, None).0, Outcome::Succeeded);
        assert_eq!(classify(204, None).0, Outcome::Succeeded);
        assert_eq!(classify(404, None).0, Outcome::Rejected);
        assert_eq!(classify(400, None).0, Outcome::Rejected);
        assert_eq!(classify(301, None).0, Outcome::Rejected);
        assert_eq!(classify(408, None).0, Outcome::Failed { retry_after: None });
        assert_eq!(classify(500, None).0, Outcome::Failed { retry_after: None });
        assert_eq!(classify(502, None).0, Outcome::Failed { retry_after: None });
        let after = Some(Duration::from_secs(3));
        assert_eq!(
            classify(429, after).0,
            Outcome::Throttled { retry_after: after }
        );
        assert_eq!(
            classify(503, None).0,
            Outcome::Throttled { retry_after: None }
        );
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let now = Timestamp(1_445_412_480_000); // 2015-10-21T07:28:00Z
        assert_eq!(parse_retry_after("3", now), Some(Duration::from_secs(3)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("", now), None);
        // The two older date forms RFC 9110 has recipients read too.
        for old_form in [
            "Wednesday, 21-Oct-15 07:28:30 GMT",
            "Wed Oct 21 07:28:30 2015",
        ] {
            assert_eq!(
                parse_retry_after(old_form, now),
                Some(Duration::from_secs(30)),
                "{old_form}"
            );
        }
        // A number past any clock waits as long as the longest allowed.
        let day = Some(Duration::from_secs(86_400));
        assert_eq!(parse_retry_after("99999999999999999999999", now), day);
        assert_eq!(parse_retry_after("86401", now), day);
    }
}
