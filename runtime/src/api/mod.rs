//! The REST API (`/v1`), health endpoints and the axum router.
//!
//! Reads go straight to a store snapshot; every write goes through the shell's
//! driver. Malformed input of any shape gets a 4xx with the error JSON, never a
//! 5xx or a panic.
//!
//! Routes and their OpenAPI description come from one place: each handler's
//! `#[utoipa::path]` gives both its route (through `routes!`) and its operation,
//! so `GET /v1/openapi.json` cannot drift from what the router serves.

pub mod auth;
mod dashboard;
pub mod error;
pub mod linger;
mod metrics;
mod plugins;
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
use crate::store::{Store, TaskFilter, TaskState};
pub use error::ApiError;
use error::ErrorBody;
use wire::{
    BatchBody, BatchCreated, CompleteBody, FORECAST_MINUTES, FailBody, GateBody, GateExtra,
    GateList, GateView, HeartbeatBody, ScheduleBody, ScheduleList, ScheduleView, TaskBody,
    TaskList, TaskView,
};

#[derive(Clone)]
pub struct AppState {
    pub store: Arc<Store>,
    pub shell: Handle,
    pub plugins: Arc<crate::plugin::Host>,
}

/// Request body limits, answered with 413.
const GATE_BODY_LIMIT: usize = 64 * 1024;
const TASK_BODY_LIMIT: usize = wire::MAX_TASK_BODY + 64 * 1024;
const BATCH_BODY_LIMIT: usize = 64 << 20;

pub fn router(state: AppState) -> Router {
    let (router, _) = routes().split_for_parts();
    router
        .merge(dashboard::router())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(GATE_BODY_LIMIT))
        .with_state(state)
}

/// Every route with its operation. Handlers that share a path share a
/// `routes!`; the per-route body limits are the ones that answer 413.
fn routes() -> OpenApiRouter<AppState> {
    let v1 = OpenApiRouter::new()
        .routes(routes!(list_gates))
        .routes(
            routes!(put_gate, get_gate, delete_gate).layer(DefaultBodyLimit::max(GATE_BODY_LIMIT)),
        )
        .routes(routes!(pause_gate))
        .routes(routes!(resume_gate))
        .routes(routes!(create_task, list_tasks).layer(DefaultBodyLimit::max(TASK_BODY_LIMIT)))
        .routes(routes!(create_batch).layer(DefaultBodyLimit::max(BATCH_BODY_LIMIT)))
        .routes(routes!(get_task, cancel_task))
        .routes(routes!(retry_task))
        .routes(routes!(complete_task).layer(DefaultBodyLimit::max(BATCH_BODY_LIMIT)))
        .routes(routes!(fail_task))
        .routes(routes!(heartbeat_task).layer(DefaultBodyLimit::max(TASK_BODY_LIMIT)))
        .routes(routes!(list_schedules))
        .routes(
            routes!(put_schedule, get_schedule, delete_schedule)
                .layer(DefaultBodyLimit::max(TASK_BODY_LIMIT)),
        )
        .routes(routes!(pause_schedule))
        .routes(routes!(resume_schedule))
        .routes(routes!(plugins::list_plugins))
        .routes(
            routes!(
                plugins::put_plugin,
                plugins::get_plugin,
                plugins::delete_plugin
            )
            .layer(DefaultBodyLimit::max(plugins::UPLOAD_LIMIT)),
        )
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
        "An internal error; the message has an id to find in the server log.",
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

async fn gate_view(state: &AppState, live: &GateLive) -> Result<GateView, ApiError> {
    let now = clock::now();
    let store = state.store.clone();
    let id = live.record.id;
    let (exact, due_in_memory) = (live.view.due_exact, live.view.due_in_memory);
    let extra = tokio::task::spawn_blocking(move || -> Result<GateExtra, ApiError> {
        let reader = store.read()?;
        let due = if exact {
            due_in_memory
        } else {
            reader.due_now(id, now.as_ms())?
        };
        Ok(GateExtra {
            due,
            oldest_due_ms: reader.oldest_pending(id)?,
            forecast: reader.forecast(id, now.as_ms(), FORECAST_MINUTES)?,
        })
    })
    .await
    .map_err(|e| ApiError::internal(&e))??;
    Ok(GateView::new(live, extra, now))
}

async fn one_gate(state: &AppState, name: &str) -> Result<GateView, ApiError> {
    let live = state.shell.live(Some(name.to_string())).await?;
    let live = live
        .first()
        .ok_or_else(|| ApiError::not_found(format!("gate {name:?} not found")))?;
    gate_view(state, live).await
}

#[utoipa::path(
    get,
    path = "/gates",
    tag = "gates",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Every gate with its live figures", body = GateList),
        (status = 503, description = "The server is shutting down", body = ErrorBody),
    )
)]
async fn list_gates(State(state): State<AppState>) -> Result<Json<GateList>, ApiError> {
    let mut gates = Vec::new();
    for live in state.shell.live(None).await? {
        gates.push(gate_view(&state, &live).await?);
    }
    Ok(Json(GateList { gates }))
}

#[utoipa::path(
    get,
    path = "/gates/{name}",
    tag = "gates",
    params(
        ("name" = String, Path, description = "The gate's name"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The gate with its live figures", body = GateView),
        (status = 404, description = "No such gate", body = ErrorBody),
        (status = 503, description = "The server is shutting down", body = ErrorBody),
    )
)]
async fn get_gate(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<GateView>, ApiError> {
    Ok(Json(one_gate(&state, &name).await?))
}

#[utoipa::path(
    put,
    path = "/gates/{name}",
    tag = "gates",
    params(
        ("name" = String, Path, description = "The gate's name"),
    ),
    request_body(content = GateBody, content_type = "application/json"),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Created", body = GateView),
        (status = 200, description = "Replaced", body = GateView),
        (status = 400, description = "Invalid input; `field` names it", body = ErrorBody),
        (status = 413, description = "The body is over the size limit", body = ErrorBody),
        (status = 503, description = "The server is shutting down", body = ErrorBody),
    )
)]
async fn put_gate(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Body(body): Body<GateBody>,
) -> Result<Response, ApiError> {
    wire::valid_name(&name)?;
    let spec = body.validate()?;
    let (_, created) = state.shell.put_gate(name.clone(), spec).await?;
    let view = one_gate(&state, &name).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(view)).into_response())
}

#[utoipa::path(
    delete,
    path = "/gates/{name}",
    tag = "gates",
    params(
        ("name" = String, Path, description = "The gate's name"),
        ("force" = Option<bool>, Query, description = "Cancel the gate's unfinished tasks instead of answering 409"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Invalid query", body = ErrorBody),
        (status = 404, description = "No such gate", body = ErrorBody),
        (status = 409, description = "The gate holds unfinished tasks", body = ErrorBody),
        (status = 503, description = "The server is shutting down", body = ErrorBody),
    )
)]
async fn delete_gate(
    State(state): State<AppState>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<StatusCode, ApiError> {
    let pairs = query_pairs(&query, &["force"])?;
    let force = match pairs
        .iter()
        .find(|(k, _)| k == "force")
        .map(|(_, v)| v.as_str())
    {
        None | Some("false") => false,
        Some("true") | Some("") => true,
        Some(_) => return Err(ApiError::field("force", "force is true or false")),
    };
    state.shell.delete_gate(name, force).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    post,
    path = "/gates/{name}/pause",
    tag = "gates",
    params(
        ("name" = String, Path, description = "The gate's name"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Paused", body = GateView),
        (status = 404, description = "No such gate", body = ErrorBody),
        (status = 503, description = "The server is shutting down", body = ErrorBody),
    )
)]
async fn pause_gate(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<GateView>, ApiError> {
    state.shell.set_paused(name.clone(), true).await?;
    Ok(Json(one_gate(&state, &name).await?))
}

#[utoipa::path(
    post,
    path = "/gates/{name}/resume",
    tag = "gates",
    params(
        ("name" = String, Path, description = "The gate's name"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Resumed; the recovery ramp starts", body = GateView),
        (status = 404, description = "No such gate", body = ErrorBody),
        (status = 503, description = "The server is shutting down", body = ErrorBody),
    )
)]
async fn resume_gate(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<GateView>, ApiError> {
    state.shell.set_paused(name.clone(), false).await?;
    Ok(Json(one_gate(&state, &name).await?))
}

#[utoipa::path(
    post,
    path = "/tasks",
    tag = "tasks",
    request_body(content = TaskBody, content_type = "application/json"),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Created", body = TaskView),
        (status = 200, description = "The task created earlier with the same `idempotency_key`", body = TaskView, headers(("idempotent-replayed" = String, description = "`true`"))),
        (status = 400, description = "Invalid input; `field` names it", body = ErrorBody),
        (status = 413, description = "The body is over the size limit", body = ErrorBody),
        (status = 503, description = "The server is shutting down", body = ErrorBody),
    )
)]
async fn create_task(
    State(state): State<AppState>,
    Body(body): Body<TaskBody>,
) -> Result<Response, ApiError> {
    let task = body.validate(clock::now(), "")?;
    let created = state.shell.create_tasks(vec![task]).await?;
    let created = created
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::internal(&"no task created"))?;
    let view = Json(TaskView::new(&created.task, None));
    if created.replayed {
        let mut response = (StatusCode::OK, view).into_response();
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
        Ok(response)
    } else {
        Ok((StatusCode::CREATED, view).into_response())
    }
}

#[utoipa::path(
    post,
    path = "/tasks/batch",
    tag = "tasks",
    request_body(content = BatchBody, content_type = "application/json"),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "All created, ids in order", body = BatchCreated),
        (status = 400, description = "Invalid input; `field` names it", body = ErrorBody),
        (status = 413, description = "The body is over the size limit, or more than 10,000 tasks", body = ErrorBody),
        (status = 503, description = "The server is shutting down", body = ErrorBody),
    )
)]
async fn create_batch(
    State(state): State<AppState>,
    Body(body): Body<BatchBody>,
) -> Result<Response, ApiError> {
    if body.tasks.is_empty() {
        return Err(ApiError::field("tasks", "a batch needs at least one task"));
    }
    if body.tasks.len() > wire::MAX_BATCH {
        return Err(ApiError::too_large(format!(
            "a batch holds at most {} tasks, this one has {}",
            wire::MAX_BATCH,
            body.tasks.len()
        )));
    }
    let now = clock::now();
    let tasks = body
        .tasks
        .into_iter()
        .enumerate()
        .map(|(i, t)| t.validate(now, &format!("tasks[{i}].")))
        .collect::<Result<Vec<_>, _>>()?;
    let created = state.shell.create_tasks(tasks).await?;
    let ids = created
        .iter()
        .map(|c| TaskId(c.task.id).to_string())
        .collect();
    Ok((StatusCode::CREATED, Json(BatchCreated { ids })).into_response())
}

#[utoipa::path(
    get,
    path = "/tasks/{id}",
    tag = "tasks",
    params(
        ("id" = String, Path, description = "The task's id"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The task with its attempts", body = TaskView),
        (status = 400, description = "Not a task id", body = ErrorBody),
        (status = 404, description = "No such task", body = ErrorBody),
    )
)]
async fn get_task(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<TaskView>, ApiError> {
    let id = parse_id(&id)?;
    let store = state.store.clone();
    let found = tokio::task::spawn_blocking(move || -> Result<_, ApiError> {
        let reader = store.read()?;
        let Some(task) = reader.task(id.0)? else {
            return Ok(None);
        };
        let attempts = reader.attempts(id.0)?;
        Ok(Some(TaskView::new(&task, Some(&attempts))))
    })
    .await
    .map_err(|e| ApiError::internal(&e))??;
    found
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("task {id} not found")))
}

#[utoipa::path(
    get,
    path = "/tasks",
    tag = "tasks",
    params(
        ("gate" = Option<String>, Query, description = "Only this gate's tasks"),
        ("state" = Option<String>, Query, description = "`scheduled`, `running`, `succeeded`, `failed`, `expired` or `cancelled`"),
        ("label" = Option<String>, Query, description = "`key:value`", example = "team:billing"),
        ("limit" = Option<u32>, Query, description = "1 to 1000; default 50", minimum = 1, maximum = 1000),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Tasks, newest first, without attempts", body = TaskList),
        (status = 400, description = "Invalid query; `field` names the parameter", body = ErrorBody),
        (status = 404, description = "No such gate", body = ErrorBody),
    )
)]
async fn list_tasks(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Json<TaskList>, ApiError> {
    let pairs = query_pairs(&query, &["gate", "state", "label", "limit", "cursor"])?;
    let mut filter = TaskFilter::default();
    let mut limit = 50usize;
    let mut cursor = None;
    let mut gate_name = None;
    for (k, v) in pairs {
        match k.as_str() {
            "gate" => gate_name = Some(v),
            "state" => {
                filter.state = Some(TaskState::parse(&v).ok_or_else(|| {
                    ApiError::field(
                        "state",
                        "state is one of scheduled, running, succeeded, failed, expired, cancelled",
                    )
                })?)
            }
            "label" => {
                let (key, value) = v
                    .split_once(':')
                    .ok_or_else(|| ApiError::field("label", "label filter is key:value"))?;
                filter.label = Some((key.to_string(), value.to_string()));
            }
            "limit" => {
                limit = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=1_000).contains(n))
                    .ok_or_else(|| ApiError::field("limit", "limit is a number from 1 to 1000"))?
            }
            "cursor" => {
                cursor =
                    Some(parse_id(&v).map_err(|_| ApiError::field("cursor", "invalid cursor"))?)
            }
            _ => {}
        }
    }
    let store = state.store.clone();
    let list = tokio::task::spawn_blocking(move || -> Result<TaskList, ApiError> {
        let reader = store.read()?;
        if let Some(name) = gate_name {
            match reader.gate(&name)? {
                Some(g) => filter.gate_id = Some(g.id),
                None => return Err(ApiError::not_found(format!("gate {name:?} not found"))),
            }
        }
        let (tasks, next) = reader.list_tasks(&filter, cursor.map(|c| c.0), limit)?;
        Ok(TaskList {
            tasks: tasks.iter().map(|t| TaskView::new(t, None)).collect(),
            next_cursor: next.map(|n| TaskId(n).to_string()),
        })
    })
    .await
    .map_err(|e| ApiError::internal(&e))??;
    Ok(Json(list))
}

#[utoipa::path(
    delete,
    path = "/tasks/{id}",
    tag = "tasks",
    params(
        ("id" = String, Path, description = "The task's id"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Cancelled", body = TaskView),
        (status = 400, description = "Not a task id", body = ErrorBody),
        (status = 404, description = "No such task", body = ErrorBody),
        (status = 409, description = "The task is not scheduled", body = ErrorBody),
        (status = 503, description = "The server is shutting down", body = ErrorBody),
    )
)]
async fn cancel_task(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<TaskView>, ApiError> {
    let id = parse_id(&id)?;
    let task = state.shell.cancel_task(id).await?;
    Ok(Json(TaskView::new(&task, None)))
}

#[utoipa::path(
    post,
    path = "/tasks/{id}/retry",
    tag = "tasks",
    params(
        ("id" = String, Path, description = "The task's id"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Scheduled again with fresh attempts", body = TaskView),
        (status = 400, description = "Not a task id", body = ErrorBody),
        (status = 404, description = "No such task", body = ErrorBody),
        (status = 409, description = "The task is not failed or expired, or its gate is gone", body = ErrorBody),
        (status = 503, description = "The server is shutting down", body = ErrorBody),
    )
)]
async fn retry_task(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<TaskView>, ApiError> {
    let id = parse_id(&id)?;
    let task = state.shell.retry_task(id).await?;
    Ok(Json(TaskView::new(&task, None)))
}

async fn read_schedule(state: &AppState, name: String) -> Result<ScheduleView, ApiError> {
    let store = state.store.clone();
    tokio::task::spawn_blocking(move || -> Result<ScheduleView, ApiError> {
        let reader = store.read()?;
        let record = reader
            .schedule(&name)?
            .ok_or_else(|| ApiError::not_found(format!("schedule {name:?} not found")))?;
        Ok(ScheduleView::new(&record, clock::now()))
    })
    .await
    .map_err(|e| ApiError::internal(&e))?
}

#[utoipa::path(
    get,
    path = "/schedules",
    tag = "schedules",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Every schedule", body = ScheduleList),
    )
)]
async fn list_schedules(State(state): State<AppState>) -> Result<Json<ScheduleList>, ApiError> {
    let store = state.store.clone();
    let list = tokio::task::spawn_blocking(move || -> Result<ScheduleList, ApiError> {
        let now = clock::now();
        let schedules = store.read()?.schedules()?;
        Ok(ScheduleList {
            schedules: schedules
                .iter()
                .map(|s| ScheduleView::new(s, now))
                .collect(),
        })
    })
    .await
    .map_err(|e| ApiError::internal(&e))??;
    Ok(Json(list))
}

#[utoipa::path(
    get,
    path = "/schedules/{name}",
    tag = "schedules",
    params(
        ("name" = String, Path, description = "The schedule's name"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The schedule with its next and last runs", body = ScheduleView),
        (status = 404, description = "No such schedule", body = ErrorBody),
    )
)]
async fn get_schedule(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<ScheduleView>, ApiError> {
    Ok(Json(read_schedule(&state, name).await?))
}

#[utoipa::path(
    put,
    path = "/schedules/{name}",
    tag = "schedules",
    params(
        ("name" = String, Path, description = "The schedule's name"),
    ),
    request_body(content = ScheduleBody, content_type = "application/json"),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Created", body = ScheduleView),
        (status = 200, description = "Replaced", body = ScheduleView),
        (status = 400, description = "Invalid input; `field` names it", body = ErrorBody),
        (status = 413, description = "The body is over the size limit", body = ErrorBody),
        (status = 503, description = "The server is shutting down", body = ErrorBody),
    )
)]
async fn put_schedule(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Body(body): Body<ScheduleBody>,
) -> Result<Response, ApiError> {
    wire::valid_name(&name)?;
    let spec = body.validate(clock::now())?;
    let (_, created) = state.shell.put_schedule(name.clone(), spec).await?;
    let view = read_schedule(&state, name).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(view)).into_response())
}

#[utoipa::path(
    delete,
    path = "/schedules/{name}",
    tag = "schedules",
    params(
        ("name" = String, Path, description = "The schedule's name"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Deleted; a scheduled occurrence is cancelled"),
        (status = 404, description = "No such schedule", body = ErrorBody),
        (status = 503, description = "The server is shutting down", body = ErrorBody),
    )
)]
async fn delete_schedule(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.shell.delete_schedule(name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    post,
    path = "/schedules/{name}/pause",
    tag = "schedules",
    params(
        ("name" = String, Path, description = "The schedule's name"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Paused", body = ScheduleView),
        (status = 404, description = "No such schedule", body = ErrorBody),
        (status = 503, description = "The server is shutting down", body = ErrorBody),
    )
)]
async fn pause_schedule(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<ScheduleView>, ApiError> {
    state.shell.set_schedule_paused(name.clone(), true).await?;
    Ok(Json(read_schedule(&state, name).await?))
}

#[utoipa::path(
    post,
    path = "/schedules/{name}/resume",
    tag = "schedules",
    params(
        ("name" = String, Path, description = "The schedule's name"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Resumed", body = ScheduleView),
        (status = 404, description = "No such schedule", body = ErrorBody),
        (status = 503, description = "The server is shutting down", body = ErrorBody),
    )
)]
async fn resume_schedule(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<ScheduleView>, ApiError> {
    state.shell.set_schedule_paused(name.clone(), false).await?;
    Ok(Json(read_schedule(&state, name).await?))
}

#[utoipa::path(
    post,
    path = "/tasks/{id}/complete",
    tag = "tasks",
    params(
        ("id" = String, Path, description = "The task's id"),
    ),
    request_body(content = CompleteBody, content_type = "application/json"),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The attempt succeeded; `next` tasks are created", body = TaskView),
        (status = 400, description = "Invalid input; `field` names it", body = ErrorBody),
        (status = 404, description = "No such task", body = ErrorBody),
        (status = 409, description = "Wrong or stale token, or the attempt already ended otherwise", body = ErrorBody),
        (status = 413, description = "The body or `output` is over the size limit", body = ErrorBody),
        (status = 503, description = "The server is shutting down", body = ErrorBody),
    )
)]
async fn complete_task(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Body(body): Body<CompleteBody>,
) -> Result<Json<TaskView>, ApiError> {
    let id = parse_id(&id)?;
    let callback = body.validate(clock::now())?;
    let task = state.shell.report(id, callback).await?;
    Ok(Json(TaskView::new(&task, None)))
}

#[utoipa::path(
    post,
    path = "/tasks/{id}/fail",
    tag = "tasks",
    params(
        ("id" = String, Path, description = "The task's id"),
    ),
    request_body(content = FailBody, content_type = "application/json"),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The attempt failed; the task retries or fails", body = TaskView),
        (status = 400, description = "Invalid input; `field` names it", body = ErrorBody),
        (status = 404, description = "No such task", body = ErrorBody),
        (status = 409, description = "Wrong or stale token, or the attempt already ended otherwise", body = ErrorBody),
        (status = 413, description = "The body is over the size limit", body = ErrorBody),
        (status = 503, description = "The server is shutting down", body = ErrorBody),
    )
)]
async fn fail_task(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Body(body): Body<FailBody>,
) -> Result<Json<TaskView>, ApiError> {
    let id = parse_id(&id)?;
    let task = state.shell.report(id, body.validate()?).await?;
    Ok(Json(TaskView::new(&task, None)))
}

#[utoipa::path(
    post,
    path = "/tasks/{id}/heartbeat",
    tag = "tasks",
    params(
        ("id" = String, Path, description = "The task's id"),
    ),
    request_body(content = HeartbeatBody, content_type = "application/json"),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The lease is extended", body = TaskView),
        (status = 400, description = "Invalid input; `field` names it", body = ErrorBody),
        (status = 404, description = "No such task", body = ErrorBody),
        (status = 409, description = "Wrong or stale token, or the attempt ended", body = ErrorBody),
        (status = 413, description = "The body or `progress` is over the size limit", body = ErrorBody),
        (status = 503, description = "The server is shutting down", body = ErrorBody),
    )
)]
async fn heartbeat_task(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Body(body): Body<HeartbeatBody>,
) -> Result<Json<TaskView>, ApiError> {
    let id = parse_id(&id)?;
    let task = state.shell.report(id, body.validate()?).await?;
    Ok(Json(TaskView::new(&task, None)))
}
