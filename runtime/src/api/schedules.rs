//! `/v1/schedules`: list, read, put, delete, pause, resume.

use super::*;

pub(super) async fn read_schedule(
    state: &AppState,
    name: String,
) -> Result<ScheduleView, ApiError> {
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
pub(super) async fn list_schedules(
    State(state): State<AppState>,
) -> Result<Json<ScheduleList>, ApiError> {
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
pub(super) async fn get_schedule(
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
pub(super) async fn put_schedule(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Body(body): Body<ScheduleBody>,
) -> Result<Response, ApiError> {
    wire::valid_name(&name)?;
    let spec = body.validate(clock::now())?;
    let (_, created) = state
        .shell
        .put_schedule(name.clone(), spec)
        .await
        .map_err(|e| ApiError::shell(e, error::Tasks::Under("task")))?;
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
pub(super) async fn delete_schedule(
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
pub(super) async fn pause_schedule(
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
pub(super) async fn resume_schedule(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<ScheduleView>, ApiError> {
    state.shell.set_schedule_paused(name.clone(), false).await?;
    Ok(Json(read_schedule(&state, name).await?))
}
