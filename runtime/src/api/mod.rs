//! The REST API (`/v1`), health endpoints and the axum router.
//!
//! Reads go straight to a store snapshot; every write goes through the shell's
//! driver. Malformed input of any shape gets a 4xx with the error JSON, never a
//! 5xx or a panic.
//!
//! Routes and their OpenAPI description come from one place: each handler's
//! `#[utoipa::path]` gives both its route (through `routes!`) and its operation,
//! so `GET /v1/openapi.json` cannot drift from what the router serves.

pub mod admin;
pub mod auth;
mod cluster;
mod dashboard;
pub mod error;
pub mod forward;
mod gates;
pub mod linger;
mod metrics;
mod plugins;
pub mod replay;
pub mod request_id;
mod schedules;
mod tasks;
pub mod wire;

use std::sync::{Arc, LazyLock};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Path, RawQuery, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use utoipa::OpenApi;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{Ref, RefOr, ResponseBuilder, content::ContentBuilder};
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

use crate::clock;
use crate::core::TaskId;
use crate::shell::{GateLive, Handle};
use crate::store::{Backend, TaskFilter, TaskRecord, TaskState};
pub use error::ApiError;
use error::ErrorBody;
use wire::{
    BatchBody, BatchCreated, CompleteBody, FORECAST_MINUTES, FailBody, GateBody, GateExtra,
    GateList, GateView, HeartbeatBody, KeyBacklogView, KeysPage, ScheduleBody, ScheduleList,
    ScheduleView, TaskBody, TaskList, TaskView,
};

#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Backend>,
    pub shell: Handle,
    pub plugins: Arc<crate::plugin::Host>,
    /// Where backups are written before they are sent: the data directory.
    pub scratch: std::path::PathBuf,
    /// Held while a backup runs: one at a time.
    pub backup: Arc<tokio::sync::Mutex<()>>,
    /// This node's place in a cluster (PostgreSQL store); `None` alone.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
    /// Paced replays started on this server.
    pub replays: Arc<replay::Jobs>,
}

/// Request body limits, answered with 413.
const GATE_BODY_LIMIT: usize = 64 * 1024;
const TASK_BODY_LIMIT: usize = wire::MAX_TASK_BODY + 64 * 1024;
const BATCH_BODY_LIMIT: usize = 64 << 20;

pub fn router(state: AppState) -> Router {
    let (router, _) = routes().split_for_parts();
    router
        .merge(dashboard::router())
        // The nodes' requests to each other: not part of the API.
        .route(
            "/v1/internal/retry",
            axum::routing::post(replay::internal_retry),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(GATE_BODY_LIMIT))
        .layer(axum::middleware::from_fn(json_rejections))
        .with_state(state)
}

/// The framework's own refusals (a path segment that is not UTF-8, say)
/// answer in plain text; every error of the API is JSON (`ApiError`), so
/// under `/v1/` they are rewritten as one, with their status and text.
async fn json_rejections(
    request: Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let api = request.uri().path().starts_with("/v1/");
    let response = next.run(request).await;
    let plain = (response.headers().get(axum::http::header::CONTENT_TYPE))
        .is_some_and(|t| t.as_bytes().starts_with(b"text/plain"));
    if !api || !plain || !response.status().is_client_error() {
        return response;
    }
    let status = response.status();
    let text = axum::body::to_bytes(response.into_body(), 4096)
        .await
        .unwrap_or_default();
    let message = String::from_utf8_lossy(&text).trim().to_string();
    let error = match status {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::too_large(message),
        StatusCode::NOT_FOUND => ApiError::not_found(message),
        _ => ApiError {
            status,
            ..ApiError::invalid(None, message)
        },
    };
    error.into_response()
}

/// Every route with its operation. Handlers that share a path share a
/// `routes!`; the per-route body limits are the ones that answer 413.
fn routes() -> OpenApiRouter<AppState> {
    let v1 = OpenApiRouter::new()
        .routes(routes!(gates::list_gates))
        .routes(
            routes!(gates::put_gate, gates::get_gate, gates::delete_gate)
                .layer(DefaultBodyLimit::max(GATE_BODY_LIMIT)),
        )
        .routes(routes!(gates::list_keys))
        .routes(routes!(gates::pause_gate))
        .routes(routes!(gates::resume_gate))
        .routes(
            routes!(tasks::create_task, tasks::list_tasks)
                .layer(DefaultBodyLimit::max(TASK_BODY_LIMIT)),
        )
        .routes(routes!(tasks::create_batch).layer(DefaultBodyLimit::max(BATCH_BODY_LIMIT)))
        .routes(routes!(tasks::get_task, tasks::cancel_task))
        .routes(routes!(tasks::retry_task))
        .routes(routes!(replay::replay))
        .routes(routes!(replay::get_replay, replay::cancel_replay))
        .routes(routes!(tasks::complete_task).layer(DefaultBodyLimit::max(BATCH_BODY_LIMIT)))
        // Its reason (64 KiB) as JSON escapes it: up to six bytes each.
        .routes(routes!(tasks::fail_task).layer(DefaultBodyLimit::max(TASK_BODY_LIMIT)))
        .routes(routes!(tasks::heartbeat_task).layer(DefaultBodyLimit::max(TASK_BODY_LIMIT)))
        .routes(routes!(schedules::list_schedules))
        .routes(
            routes!(
                schedules::put_schedule,
                schedules::get_schedule,
                schedules::delete_schedule
            )
            .layer(DefaultBodyLimit::max(TASK_BODY_LIMIT)),
        )
        .routes(routes!(schedules::pause_schedule))
        .routes(routes!(schedules::resume_schedule))
        .routes(routes!(plugins::list_plugins))
        .routes(
            routes!(
                plugins::put_plugin,
                plugins::get_plugin,
                plugins::delete_plugin
            )
            .layer(DefaultBodyLimit::max(plugins::UPLOAD_LIMIT)),
        )
        .routes(routes!(admin::backup))
        .routes(routes!(cluster::cluster))
        .routes(routes!(openapi_json));
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .nest("/v1", v1)
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics::metrics))
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Sluice",
        description = "A self-hosted task scheduler whose gates never let a backlog flood an endpoint."
    ),
    tags(
        (name = "gates", description = "Throughput limits for endpoints"),
        (name = "tasks", description = "Webhook tasks and reports on long-running work"),
        (name = "schedules", description = "Periodic tasks"),
        (name = "plugins", description = "WebAssembly components that run tasks"),
        (name = "admin", description = "Backups of the running server"),
        (name = "meta", description = "Health and this description"),
    )
)]
struct ApiDoc;

/// Answers that any `/v1` operation (all behind a bearer token) can give,
/// declared once in `components.responses`: status, name, description.
const SHARED_ANSWERS: [(&str, &str, &str); 3] = [
    (
        "401",
        "Unauthenticated",
        "No token, or one the server does not know.",
    ),
    (
        "403",
        "PermissionDenied",
        "The token's role does not allow this.",
    ),
    (
        "500",
        "Internal",
        "An internal error; its `request_id` finds it in the server log.",
    ),
];

/// The OpenAPI 3.1 description of the router, as served at `/v1/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut api = routes().into_openapi();
    let components = api
        .components
        .get_or_insert_with(utoipa::openapi::Components::new);
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
    );
    for (_, name, description) in SHARED_ANSWERS {
        let error = ContentBuilder::new()
            .schema(Some(Ref::from_schema_name("ErrorBody")))
            .build();
        let response = ResponseBuilder::new()
            .description(description)
            .content("application/json", error)
            .build();
        components
            .responses
            .insert(name.to_string(), RefOr::T(response));
    }
    for item in api.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
        ];
        for op in operations.into_iter().flatten() {
            if op.security.as_ref().is_none_or(|s| s.is_empty()) {
                continue;
            }
            for (status, name, _) in SHARED_ANSWERS {
                let answer = RefOr::Ref(Ref::new(format!("#/components/responses/{name}")));
                op.responses
                    .responses
                    .entry(status.to_string())
                    .or_insert(answer);
            }
        }
    }
    api
}

/// The document, serialized once.
static OPENAPI_JSON: LazyLock<Result<Bytes, String>> = LazyLock::new(|| {
    openapi()
        .to_json()
        .map(Bytes::from)
        .map_err(|e| e.to_string())
});

#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "meta",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "This OpenAPI 3.1 document", content_type = "application/json", body = Object),
    )
)]
async fn openapi_json() -> Result<Response, ApiError> {
    let json = OPENAPI_JSON.as_ref().map_err(|e| ApiError::internal(e))?;
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        json.clone(),
    )
        .into_response())
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint")
}

async fn method_not_allowed() -> ApiError {
    ApiError {
        status: StatusCode::METHOD_NOT_ALLOWED,
        ..ApiError::invalid(None, "method not allowed on this endpoint")
    }
}

#[utoipa::path(
    get,
    path = "/healthz",
    tag = "meta",
    responses(
        (status = 200, description = "The process is alive", body = String, content_type = "text/plain", example = "ok\n"),
    )
)]
async fn healthz() -> &'static str {
    "ok\n"
}

#[utoipa::path(
    get,
    path = "/readyz",
    tag = "meta",
    responses(
        (status = 200, description = "Ready to serve", body = String, content_type = "text/plain", example = "ready\n"),
        (status = 503, description = "Starting or stopping", body = ErrorBody),
    )
)]
async fn readyz(State(state): State<AppState>) -> Response {
    // In a cluster too: every node runs an engine, holding units or not.
    if state.shell.is_ready() {
        "ready\n".into_response()
    } else {
        ApiError::unavailable("starting or stopping").into_response()
    }
}

/// JSON body extractor with our error shape: 413 past the size limit, 400 naming
/// the field for anything else.
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| {
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::too_large("request body is too large")
                } else {
                    ApiError::invalid(None, format!("could not read the body: {e}"))
                }
            })?;
        if bytes.is_empty() {
            return Err(ApiError::invalid(None, "expected a JSON body"));
        }
        let mut de = serde_json::Deserializer::from_slice(&bytes);
        let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let path = e.path().to_string();
            let field = (path != "." && !path.is_empty()).then_some(path);
            ApiError::invalid(field, format!("invalid JSON: {}", e.inner()))
        })?;
        de.end()
            .map_err(|e| ApiError::invalid(None, format!("invalid JSON: {e}")))?;
        Ok(Body(value))
    }
}

fn query_pairs(raw: &Option<String>, allowed: &[&str]) -> Result<Vec<(String, String)>, ApiError> {
    let pairs: Vec<(String, String)> = raw
        .as_deref()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    for (k, _) in &pairs {
        if !allowed.contains(&k.as_str()) {
            return Err(ApiError::field(
                k,
                format!("unknown query parameter; expected one of {allowed:?}"),
            ));
        }
    }
    Ok(pairs)
}

fn parse_id(text: &str) -> Result<TaskId, ApiError> {
    text.parse()
        .map_err(|_| ApiError::field("id", format!("{text:?} is not a task id")))
}
