//! The REST API (`/v1`), health endpoints and the axum router.
//!
//! Reads go straight to a store snapshot; every write goes through the shell's
//! driver. Malformed input of any shape gets a 4xx with the error JSON, never a
//! 5xx or a panic.

pub mod auth;
pub mod error;
pub mod wire;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, FromRequest, Path, RawQuery, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::de::DeserializeOwned;

use crate::clock;
use crate::core::TaskId;
use crate::shell::{GateLive, Handle};
use crate::store::{Store, TaskFilter, TaskState};
pub use error::ApiError;
use wire::{
    BatchBody, BatchCreated, GateBody, GateExtra, GateList, GateView, ScheduleBody, ScheduleList,
    ScheduleView, TaskBody, TaskList, TaskView,
};

#[derive(Clone)]
pub struct AppState {
    pub store: Arc<Store>,
    pub shell: Handle,
}

/// Request body limits, answered with 413.
const GATE_BODY_LIMIT: usize = 64 * 1024;
const TASK_BODY_LIMIT: usize = wire::MAX_TASK_BODY + 64 * 1024;
const BATCH_BODY_LIMIT: usize = 64 << 20;

pub fn router(state: AppState) -> Router {
    let v1 = Router::new()
        .route("/gates", get(list_gates))
        .route(
            "/gates/{name}",
            put(put_gate)
                .get(get_gate)
                .delete(delete_gate)
                .layer(DefaultBodyLimit::max(GATE_BODY_LIMIT)),
        )
        .route("/gates/{name}/pause", post(pause_gate))
        .route("/gates/{name}/resume", post(resume_gate))
        .route(
            "/tasks",
            post(create_task)
                .get(list_tasks)
                .layer(DefaultBodyLimit::max(TASK_BODY_LIMIT)),
        )
        .route(
            "/tasks/batch",
            post(create_batch).layer(DefaultBodyLimit::max(BATCH_BODY_LIMIT)),
        )
        .route("/tasks/{id}", get(get_task).delete(cancel_task))
        .route("/tasks/{id}/retry", post(retry_task))
        .route(
            "/tasks/{id}/complete",
            post(complete_task).layer(DefaultBodyLimit::max(BATCH_BODY_LIMIT)),
        )
        .route("/tasks/{id}/fail", post(fail_task))
        .route(
            "/tasks/{id}/heartbeat",
            post(heartbeat_task).layer(DefaultBodyLimit::max(TASK_BODY_LIMIT)),
        )
        .route("/schedules", get(list_schedules))
        .route(
            "/schedules/{name}",
            put(put_schedule)
                .get(get_schedule)
                .delete(delete_schedule)
                .layer(DefaultBodyLimit::max(TASK_BODY_LIMIT)),
        )
        .route("/schedules/{name}/pause", post(pause_schedule))
        .route("/schedules/{name}/resume", post(resume_schedule));
    Router::new()
        .nest("/v1", v1)
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(GATE_BODY_LIMIT))
        .with_state(state)
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

async fn healthz() -> &'static str {
    "ok\n"
}

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
            reader.count_due(id, now.as_ms(), 10_000_000)?
        };
        Ok(GateExtra {
            due,
            oldest_due_ms: reader.oldest_pending(id)?,
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

async fn list_gates(State(state): State<AppState>) -> Result<Json<GateList>, ApiError> {
    let mut gates = Vec::new();
    for live in state.shell.live(None).await? {
        gates.push(gate_view(&state, &live).await?);
    }
    Ok(Json(GateList { gates }))
}

async fn get_gate(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<GateView>, ApiError> {
    Ok(Json(one_gate(&state, &name).await?))
}

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

async fn pause_gate(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<GateView>, ApiError> {
    state.shell.set_paused(name.clone(), true).await?;
    Ok(Json(one_gate(&state, &name).await?))
}

async fn resume_gate(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<GateView>, ApiError> {
    state.shell.set_paused(name.clone(), false).await?;
    Ok(Json(one_gate(&state, &name).await?))
}

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

async fn cancel_task(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<TaskView>, ApiError> {
    let id = parse_id(&id)?;
    let task = state.shell.cancel_task(id).await?;
    Ok(Json(TaskView::new(&task, None)))
}

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

async fn get_schedule(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<ScheduleView>, ApiError> {
    Ok(Json(read_schedule(&state, name).await?))
}

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

async fn delete_schedule(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.shell.delete_schedule(name).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn pause_schedule(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<ScheduleView>, ApiError> {
    state.shell.set_schedule_paused(name.clone(), true).await?;
    Ok(Json(read_schedule(&state, name).await?))
}

async fn resume_schedule(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<ScheduleView>, ApiError> {
    state.shell.set_schedule_paused(name.clone(), false).await?;
    Ok(Json(read_schedule(&state, name).await?))
}

async fn complete_task(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Body(body): Body<wire::CompleteBody>,
) -> Result<Json<TaskView>, ApiError> {
    let id = parse_id(&id)?;
    let callback = body.validate(clock::now())?;
    let task = state.shell.report(id, callback).await?;
    Ok(Json(TaskView::new(&task, None)))
}

async fn fail_task(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Body(body): Body<wire::FailBody>,
) -> Result<Json<TaskView>, ApiError> {
    let id = parse_id(&id)?;
    let task = state.shell.report(id, body.validate()?).await?;
    Ok(Json(TaskView::new(&task, None)))
}

async fn heartbeat_task(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Body(body): Body<wire::HeartbeatBody>,
) -> Result<Json<TaskView>, ApiError> {
    let id = parse_id(&id)?;
    let task = state.shell.report(id, body.validate()?).await?;
    Ok(Json(TaskView::new(&task, None)))
}
