//! Reports on long-running work: complete, fail, heartbeat.

use super::*;

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

pub(super) fn check_token(token: &str) -> Result<(), ApiError> {
    if token.is_empty() || token.len() > 256 {
        return Err(ApiError::field(
            "token",
            "token is the Sluice-Completion-Token the attempt was sent",
        ));
    }
    Ok(())
}

pub(super) fn check_size(field: &str, value: &Option<serde_json::Value>) -> Result<(), ApiError> {
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
    pub fn validate(self) -> Result<crate::shell::Callback, ApiError> {
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
            .map(|(i, t)| t.validate(&format!("next[{i}].")))
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
        let retry_after = opt_duration("retry_after", &self.retry_after)?;
        if retry_after.is_some_and(|r| r > crate::core::RETRY_AFTER_MAX) {
            // Taken as given, the retry would come sooner than asked.
            return Err(ApiError::field(
                "retry_after",
                "retry_after is at most 1h (a later run: fail with retry false and create a task with run_at)",
            ));
        }
        Ok(crate::shell::Callback::Fail {
            token: self.token,
            reason: self.reason,
            retry: self.retry.unwrap_or(true),
            retry_after,
        })
    }
}

impl HeartbeatBody {
    pub fn validate(self) -> Result<crate::shell::Callback, ApiError> {
        check_token(&self.token)?;
        check_size("progress", &self.progress)?;
        let lease = opt_duration("lease", &self.lease)?;
        if lease.is_some_and(|l| l.is_zero() || l > crate::attempt::MAX_LEASE) {
            return Err(ApiError::field("lease", "lease is above 0 and at most 24h"));
        }
        Ok(crate::shell::Callback::Heartbeat {
            token: self.token,
            progress: self.progress,
            lease,
        })
    }
}
