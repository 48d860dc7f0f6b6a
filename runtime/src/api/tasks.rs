//! `/v1/tasks`: create (one or a batch), read, list, cancel, retry, and the
//! reports on long-running work (complete, fail, heartbeat).

use super::*;

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
pub(super) async fn create_task(
    State(state): State<AppState>,
    Body(body): Body<TaskBody>,
) -> Result<Response, ApiError> {
    let task = body.validate("")?;
    let created = state.shell.create_tasks(vec![task]).await?;
    let created = created
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::internal(&"no task created"))?;
    let record = created
        .task
        .as_ref()
        .ok_or_else(|| ApiError::internal(&"a lone task came back without its record"))?;
    let view = Json(TaskView::new(record, None));
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
pub(super) async fn create_batch(
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
    let tasks = body
        .tasks
        .into_iter()
        .enumerate()
        .map(|(i, t)| t.validate(&format!("tasks[{i}].")))
        .collect::<Result<Vec<_>, _>>()?;
    let created = state
        .shell
        .create_tasks(tasks)
        .await
        .map_err(|e| ApiError::shell(e, error::Tasks::List("tasks")))?;
    let ids = created.iter().map(|c| c.id.to_string()).collect();
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
pub(super) async fn get_task(
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
        ("state" = Option<String>, Query, description = "`scheduled`, `running`, `succeeded`, `failed`, `expired`, `cancelled` or `superseded`"),
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
pub(super) async fn list_tasks(
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
                        "state is one of scheduled, running, succeeded, failed, expired, cancelled, superseded",
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
pub(super) async fn cancel_task(
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
pub(super) async fn retry_task(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<TaskView>, ApiError> {
    let id = parse_id(&id)?;
    let task = state.shell.retry_task(id).await?;
    Ok(Json(TaskView::new(&task, None)))
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
pub(super) async fn complete_task(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Body(body): Body<CompleteBody>,
) -> Result<Json<TaskView>, ApiError> {
    let id = parse_id(&id)?;
    let callback = body.validate()?;
    let task = state
        .shell
        .report(id, callback)
        .await
        .map_err(|e| ApiError::shell(e, error::Tasks::List("next")))?;
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
pub(super) async fn fail_task(
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
pub(super) async fn heartbeat_task(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Body(body): Body<HeartbeatBody>,
) -> Result<Json<TaskView>, ApiError> {
    let id = parse_id(&id)?;
    let task = state.shell.report(id, body.validate()?).await?;
    Ok(Json(TaskView::new(&task, None)))
}
