//! Schedules: `ScheduleBody` and `ScheduleView`.

use super::*;

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
        let template = self.task.validate("task.")?;
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
                webhook: target_views(&t.webhook, &t.plugin).0,
                plugin: target_views(&t.webhook, &t.plugin).1,
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
                    scheduled_at: show(Timestamp(r.scheduled_at).plus(jitter)),
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
