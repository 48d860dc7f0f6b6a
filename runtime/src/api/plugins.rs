//! The plugin registry: `PUT`, `GET` and `DELETE /v1/plugins/{name}/{version}`
//! and `GET /v1/plugins`.
//!
//! An upload is checked and compiled here, off the async threads, before the
//! driver stores it: a component that fails the audit never reaches the store.

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Json, extract::rejection::BytesRejection};

use super::AppState;
use super::error::{ApiError, ErrorBody};
use super::wire::{PluginList, PluginView, valid_plugin_name, valid_version};
use crate::clock;
use crate::plugin::{self, PluginError};
use crate::shell::plugins::Upload;
use crate::store::{Backend, PluginRecord, plugin_key};

/// Request body limit for uploads; one byte more is answered 413.
pub(super) const UPLOAD_LIMIT: usize = plugin::MAX_COMPONENT;

fn check_names(name: &str, version: &str) -> Result<(), ApiError> {
    if !valid_plugin_name(name) {
        return Err(ApiError::field(
            "name",
            "plugin names are 1 to 64 lowercase letters, digits and '-'",
        ));
    }
    if !valid_version(version) {
        return Err(ApiError::field(
            "version",
            "expected a semantic version like 1.2.0",
        ));
    }
    Ok(())
}

/// The upload's `memory`: MiB as a number, or with its unit (`128MiB`,
/// `1GiB`), from the default up to this server's cap.
fn parse_memory(text: &str, cap: u32) -> Result<u32, ApiError> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "MiB"),
    };
    let scale = match unit.trim() {
        "MiB" | "M" | "MB" => 1,
        "GiB" | "G" | "GB" => 1024,
        _ => 0,
    };
    let mib = number
        .parse::<u32>()
        .ok()
        .filter(|_| scale > 0)
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(|| {
            ApiError::field(
                "memory",
                format!("memory is a size in MiB, like 128 or 128MiB or 1GiB; got {text:?}"),
            )
        })?;
    if mib < plugin::DEFAULT_MEMORY_MIB || mib > cap {
        return Err(ApiError::field(
            "memory",
            format!(
                "memory {mib}MiB is outside what this server allows, {}MiB to {cap}MiB (its plugin_memory_max)",
                plugin::DEFAULT_MEMORY_MIB
            ),
        ));
    }
    Ok(mib)
}

impl From<PluginError> for ApiError {
    fn from(e: PluginError) -> ApiError {
        match e {
            PluginError::Store(e) => e.into(),
            PluginError::Missing(what) => ApiError::not_found(format!("plugin {what} not found")),
            other => ApiError::invalid(None, other.to_string()),
        }
    }
}

/// Views of plugin records, with the schedules that use each counted.
fn views(store: &dyn Backend, records: &[PluginRecord]) -> Result<Vec<PluginView>, ApiError> {
    let schedules = store.read()?.schedules()?;
    Ok(records
        .iter()
        .map(|r| {
            let key = plugin_key(&r.name, &r.version);
            let used = schedules
                .iter()
                .filter(|s| s.template.plugin.as_ref().is_some_and(|p| p.key() == key))
                .count() as u64;
            PluginView::new(r, used)
        })
        .collect())
}

async fn view(state: &AppState, record: PluginRecord) -> Result<PluginView, ApiError> {
    let store = state.store.clone();
    tokio::task::spawn_blocking(move || views(store.as_ref(), &[record]))
        .await
        .map_err(|e| ApiError::internal(&e))??
        .pop()
        .ok_or_else(|| ApiError::internal(&"no view"))
}

#[utoipa::path(
    put,
    path = "/plugins/{name}/{version}",
    tag = "plugins",
    params(
        ("name" = String, Path, description = "Lowercase letters, digits and '-'"),
        ("version" = String, Path, description = "A semantic version, like 1.2.0"),
        ("memory" = Option<String>, Query, description = "Linear memory its attempts may use, in MiB (`128`, `128MiB`, `1GiB`): from 64 (the default) to the server's `plugin_memory_max`"),
    ),
    request_body(content = Vec<u8>, content_type = "application/wasm", description = "The component, at most 50 MiB"),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Uploaded, audited and compiled", body = PluginView),
        (status = 200, description = "This version already holds these exact bytes", body = PluginView),
        (status = 400, description = "Not a component of the sluice:task world, an import outside it, or a `memory` over the cap; the message names it", body = ErrorBody),
        (status = 409, description = "This version exists with other bytes or memory: versions are immutable", body = ErrorBody),
        (status = 413, description = "Over 50 MiB", body = ErrorBody),
        (status = 503, description = "The server is shutting down", body = ErrorBody),
    )
)]
pub(super) async fn put_plugin(
    State(state): State<AppState>,
    Path((name, version)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    check_names(&name, &version)?;
    let mut memory_mib = None;
    for (key, value) in super::query_pairs(&query, &["memory"])? {
        if key == "memory" {
            memory_mib = Some(parse_memory(&value, state.plugins.memory_max_mib())?)
                .filter(|&mib| mib != plugin::DEFAULT_MEMORY_MIB);
        }
    }
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(format!(
                "the component is over the {} MiB limit",
                UPLOAD_LIMIT >> 20
            ))
        } else {
            ApiError::invalid(None, format!("could not read the body: {e}"))
        }
    })?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
    if content_type
        .as_deref()
        .is_some_and(|t| !matches!(t, "application/wasm" | "application/octet-stream"))
    {
        return Err(ApiError::invalid(
            None,
            "send the component as application/wasm",
        ));
    }
    if body.is_empty() {
        return Err(ApiError::invalid(
            None,
            "the body is empty; send the component",
        ));
    }
    let host = state.plugins.clone();
    let wasm = body.to_vec();
    let (compiled, wasm) = tokio::task::spawn_blocking(move || {
        let compiled = host.compile(&wasm);
        (compiled, wasm)
    })
    .await
    .map_err(|e| ApiError::internal(&e))?;
    let compiled = compiled?;
    let record = PluginRecord {
        name,
        version,
        size: wasm.len() as u64,
        sha256: compiled.sha256.clone(),
        uploaded_at: clock::now().as_ms(),
        imports: compiled.imports.clone(),
        unfinished: 0,
        memory_mib,
    };
    let key = plugin_key(&record.name, &record.version);
    let (record, created) = state
        .shell
        .put_plugin(Upload {
            record,
            wasm,
            artifact: compiled.artifact.clone(),
            engine: state.plugins.engine_hash(),
        })
        .await?;
    if created {
        state.plugins.install(&key, &compiled, memory_mib);
    }
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(view(&state, record).await?)).into_response())
}

#[utoipa::path(
    get,
    path = "/plugins",
    tag = "plugins",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Every plugin version, by name then version", body = PluginList),
    )
)]
pub(super) async fn list_plugins(
    State(state): State<AppState>,
) -> Result<Json<PluginList>, ApiError> {
    let store = state.store.clone();
    let plugins =
        tokio::task::spawn_blocking(move || views(store.as_ref(), &store.read()?.plugins()?))
            .await
            .map_err(|e| ApiError::internal(&e))??;
    Ok(Json(PluginList { plugins }))
}

#[utoipa::path(
    get,
    path = "/plugins/{name}/{version}",
    tag = "plugins",
    params(
        ("name" = String, Path, description = "The plugin's name"),
        ("version" = String, Path, description = "Its version"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The plugin version", body = PluginView),
        (status = 404, description = "No such plugin version", body = ErrorBody),
    )
)]
pub(super) async fn get_plugin(
    State(state): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<PluginView>, ApiError> {
    let key = plugin_key(&name, &version);
    let store = state.store.clone();
    let lookup = key.clone();
    let record = tokio::task::spawn_blocking(move || store.read()?.plugin(&lookup))
        .await
        .map_err(|e| ApiError::internal(&e))??
        .ok_or_else(|| ApiError::not_found(format!("plugin {key} not found")))?;
    Ok(Json(view(&state, record).await?))
}

#[utoipa::path(
    delete,
    path = "/plugins/{name}/{version}",
    tag = "plugins",
    params(
        ("name" = String, Path, description = "The plugin's name"),
        ("version" = String, Path, description = "Its version"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Deleted, with its compiled artifacts"),
        (status = 404, description = "No such plugin version", body = ErrorBody),
        (status = 409, description = "Unfinished tasks or schedules still use it", body = ErrorBody),
        (status = 503, description = "The server is shutting down", body = ErrorBody),
    )
)]
pub(super) async fn delete_plugin(
    State(state): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let key = plugin_key(&name, &version);
    state.shell.delete_plugin(key.clone()).await?;
    state.plugins.evict(&key);
    Ok(StatusCode::NO_CONTENT)
}
