//! `/v1/gates`: list, read, put, delete, pause, resume.

use super::*;

pub(super) async fn gate_view(state: &AppState, live: &GateLive) -> Result<GateView, ApiError> {
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
    let mut view = GateView::new(live, extra, now);
    view.owner = state.cluster.as_ref().map(|c| c.id().to_string());
    Ok(view)
}

/// The gates the store has that `listed` lacks, each from its stored
/// settings and counts with no live figures (`state: unreachable`): in a
/// cluster, the gates of an owner that did not answer, or of a unit no node
/// holds right now (its `owner`, if any, is the one that did not answer).
pub(super) async fn unlisted_gates(
    store: Arc<dyn Backend>,
    cluster: &crate::cluster::Cluster,
    listed: std::collections::HashSet<String>,
) -> Result<Vec<GateView>, ApiError> {
    let now = clock::now();
    let found = tokio::task::spawn_blocking(move || -> Result<_, ApiError> {
        let reader = store.read()?;
        let mut found = Vec::new();
        for record in reader.gates()? {
            if listed.contains(&record.name) {
                continue;
            }
            let id = record.id;
            let extra = GateExtra {
                due: reader.due_now(id, now.as_ms())?,
                oldest_due_ms: reader.oldest_pending(id)?,
                forecast: reader.forecast(id, now.as_ms(), FORECAST_MINUTES)?,
            };
            found.push((reader.counts(id)?, extra, record));
        }
        Ok(found)
    })
    .await
    .map_err(|e| ApiError::internal(&e))??;
    let views = found.into_iter().map(|(counts, extra, record)| {
        let view = crate::core::GateStatus {
            state: crate::core::GateState::Open,
            effective_rate: 0.0,
            in_flight: 0,
            due_in_memory: 0,
            due_exact: false,
            circuit_open_until: None,
            throttled_until: None,
            quota: None,
            concurrency: record.concurrency,
            latencies: None,
            keys: 0,
        };
        let live = GateLive {
            record,
            view,
            keys: Vec::new(),
            counts,
            series: Vec::new(),
        };
        let mut view = GateView::new(&live, extra, now);
        view.state = UNREACHABLE.into();
        view.owner = cluster.owner_of(&view.name).map(|(id, _)| id);
        view
    });
    Ok(views.collect())
}

/// The state of a gate whose owner could not be asked (`unlisted_gates`).
const UNREACHABLE: &str = "unreachable";

pub(super) async fn one_gate(state: &AppState, name: &str) -> Result<GateView, ApiError> {
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
pub(super) async fn list_gates(State(state): State<AppState>) -> Result<Json<GateList>, ApiError> {
    let mut gates = Vec::new();
    for live in state.shell.live(None).await? {
        gates.push(gate_view(&state, &live).await?);
    }
    Ok(Json(GateList { gates }))
}

/// Pending tasks counted per key in a page of keys, at most.
const KEY_COUNT_CAP: u64 = 100_000;

#[utoipa::path(
    get,
    path = "/gates/{name}/keys",
    tag = "gates",
    params(
        ("name" = String, Path, description = "The gate's name"),
        ("limit" = Option<u32>, Query, description = "1 to 1000; default 100", minimum = 1, maximum = 1000),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The gate's keys with pending tasks, in key order, each with its backlog", body = KeysPage),
        (status = 400, description = "Invalid query; `field` names the parameter", body = ErrorBody),
        (status = 404, description = "No such gate", body = ErrorBody),
    )
)]
pub(super) async fn list_keys(
    State(state): State<AppState>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<KeysPage>, ApiError> {
    let pairs = query_pairs(&query, &["limit", "cursor"])?;
    let mut limit = 100usize;
    let mut cursor = None;
    for (k, v) in pairs {
        match k.as_str() {
            "limit" => {
                limit = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=1_000).contains(n))
                    .ok_or_else(|| ApiError::field("limit", "limit is a number from 1 to 1000"))?
            }
            "cursor" => cursor = Some(v),
            _ => {}
        }
    }
    let store = state.store.clone();
    let page = tokio::task::spawn_blocking(move || -> Result<KeysPage, ApiError> {
        let reader = store.read()?;
        let gate = reader
            .gate(&name)?
            .ok_or_else(|| ApiError::not_found(format!("gate {name:?} not found")))?;
        let mut keys = reader.gate_keys(gate.id, cursor.as_deref(), limit + 1, KEY_COUNT_CAP)?;
        let more = keys.len() > limit;
        keys.truncate(limit);
        Ok(KeysPage {
            next_cursor: more.then(|| keys.last().map(|k| k.key.clone())).flatten(),
            keys: keys.iter().map(KeyBacklogView::new).collect(),
        })
    })
    .await
    .map_err(|e| ApiError::internal(&e))??;
    Ok(Json(page))
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
pub(super) async fn get_gate(
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
pub(super) async fn put_gate(
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
pub(super) async fn delete_gate(
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
pub(super) async fn pause_gate(
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
pub(super) async fn resume_gate(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<GateView>, ApiError> {
    state.shell.set_paused(name.clone(), false).await?;
    Ok(Json(one_gate(&state, &name).await?))
}
