//! `GET /metrics`: Prometheus (OpenMetrics) text, per gate. The gauges are read
//! from the same live views as `GET /v1/gates`; dispatch counters and the
//! lateness histogram are kept by the driver as attempts start and end.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::gates::gate_view;
use super::{ApiError, AppState};
use crate::shell::stats::GateLabel;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    gate: String,
    state: String,
}

/// Every state a gate can be in, so each has a series (1 for the current one).
const STATES: [&str; 6] = [
    "open",
    "paused",
    "tripped",
    "probing",
    "recovering",
    "throttled",
];

const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "meta",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Per-gate metrics in the Prometheus (OpenMetrics) text format", body = String, content_type = "application/openmetrics-text"),
    )
)]
pub(super) async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let float = || Family::<GateLabel, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    let int = Family::<GateLabel, Gauge>::default;
    let (backlog, due, in_flight, concurrency) = (int(), int(), int(), int());
    let active_keys = int();
    let (quota_remaining, quota_reset) = (int(), float());
    let (effective, configured, oldest) = (float(), float(), float());
    let gate_state = Family::<StateLabel, Gauge>::default();
    for live in state.shell.live(None).await? {
        let view = gate_view(&state, &live).await?;
        let label = GateLabel {
            gate: view.name.clone(),
        };
        let set = |family: &Family<GateLabel, Gauge>, v: u64| {
            family
                .get_or_create(&label)
                .set(i64::try_from(v).unwrap_or(i64::MAX));
        };
        set(&backlog, view.backlog);
        set(&due, view.due);
        set(&in_flight, u64::from(view.in_flight));
        set(&concurrency, u64::from(view.concurrency));
        set(&active_keys, view.active_keys as u64);
        effective.get_or_create(&label).set(view.effective_rate);
        configured.get_or_create(&label).set(view.rate_per_s);
        oldest.get_or_create(&label).set(view.oldest_due_age_s);
        if let Some(quota) = &view.quota {
            set(&quota_remaining, quota.remaining);
            quota_reset.get_or_create(&label).set(quota.reset_in_s);
        }
        for s in STATES {
            gate_state
                .get_or_create(&StateLabel {
                    gate: view.name.clone(),
                    state: s.to_string(),
                })
                .set(i64::from(view.state == s));
        }
    }
    let mut registry = Registry::with_prefix("sluice");
    registry.register("gate_backlog", "Pending tasks, due or not", backlog);
    registry.register("gate_due", "Pending tasks due now", due);
    registry.register("gate_in_flight", "Attempts running now", in_flight);
    registry.register(
        "gate_concurrency",
        "Concurrency limit in force (the adaptive search's, when it runs)",
        concurrency,
    );
    registry.register(
        "gate_active_keys",
        "Keys with pending or running tasks (tasks without a key count as one)",
        active_keys,
    );
    registry.register(
        "gate_effective_rate",
        "Starts per second the gate allows now (ramp, throttling)",
        effective,
    );
    registry.register(
        "gate_configured_rate",
        "Configured starts per second",
        configured,
    );
    registry.register(
        "gate_oldest_due_age_seconds",
        "Age of the oldest task that is due and waiting",
        oldest,
    );
    registry.register("gate_state", "1 for the gate's current state", gate_state);
    registry.register(
        "gate_quota_remaining",
        "Requests the endpoint's stated quota still allows before its reset (gates whose endpoint states one)",
        quota_remaining,
    );
    registry.register(
        "gate_quota_reset_seconds",
        "Seconds until the endpoint's stated quota resets",
        quota_reset,
    );
    let kept = state.shell.metrics();
    registry.register(
        "dispatches",
        "Attempts ended, by outcome (leased: a 202 that keeps the attempt open)",
        kept.dispatches.clone(),
    );
    registry.register(
        "lateness_seconds",
        "Start minus due time of each attempt",
        kept.lateness.clone(),
    );
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)
        .map_err(|e| ApiError::internal(&e))?;
    Ok(([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response())
}
