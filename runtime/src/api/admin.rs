//! `POST /v1/admin/backup`: a consistent snapshot of the running server's
//! store, streamed as a redb data file that `sluice restore` puts in place.
//!
//! The snapshot is written to a scratch file in the data directory (on the
//! same disk as the store, so it cannot fill a small `/tmp`), which is
//! unlinked as soon as it is open for streaming: a client that goes away, or
//! a server that stops mid-stream, leaves nothing behind.

use std::io::Read;
use std::path::{Path, PathBuf};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::{ApiError, ErrorBody};
use crate::store::Copied;

/// Chunks of the streamed file.
const CHUNK: usize = 256 * 1024;

/// Name of the scratch files, so a start can remove what a crash left.
const SCRATCH_PREFIX: &str = "backup-in-progress-";

/// Removes scratch files a crash mid-backup left in `dir`.
pub fn clear_scratch(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with(SCRATCH_PREFIX)
        {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

#[utoipa::path(
    post,
    path = "/admin/backup",
    tag = "admin",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A consistent snapshot of the store: a redb data file for `sluice restore`. \
            The `sluice-backup` header summarizes it as JSON.", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 409, description = "Another backup is running", body = ErrorBody),
    )
)]
pub(super) async fn backup(State(state): State<AppState>) -> Result<Response, ApiError> {
    let Ok(guard) = state.backup.clone().try_lock_owned() else {
        return Err(ApiError::conflict(
            "a backup is already running; try again when it is done",
        ));
    };
    let path = scratch_path(&state.scratch);
    let store = state.store.clone();
    let started = crate::clock::instant();
    let (file, copied, size) = tokio::task::spawn_blocking({
        let path = path.clone();
        move || -> Result<(std::fs::File, Copied, u64), ApiError> {
            let made = store.backup_to(&path).map_err(ApiError::from);
            // Open before unlinking: the open file keeps its bytes; the name goes.
            let opened = made.and_then(|copied| {
                let file = std::fs::File::open(&path).map_err(|e| ApiError::internal(&e))?;
                let size = file.metadata().map_err(|e| ApiError::internal(&e))?.len();
                Ok((file, copied, size))
            });
            let _ = std::fs::remove_file(&path);
            opened
        }
    })
    .await
    .map_err(|e| ApiError::internal(&e))??;
    tracing::info!(
        bytes = size,
        tasks = copied.tasks,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "backup snapshot taken"
    );
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
    tokio::task::spawn_blocking(move || {
        let _guard = guard;
        let mut file = file;
        loop {
            let mut buf = vec![0; CHUNK];
            let chunk = match file.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    buf.truncate(n);
                    Ok(Bytes::from(buf))
                }
                Err(e) => Err(e),
            };
            let failed = chunk.is_err();
            if tx.blocking_send(chunk).is_err() || failed {
                return; // the client went away, or the read failed (and said so)
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    });
    let summary = serde_json::to_string(&copied).map_err(|e| ApiError::internal(&e))?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, size.to_string()),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"sluice-backup.redb\"".to_string(),
            ),
            (header::HeaderName::from_static("sluice-backup"), summary),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

fn scratch_path(dir: &Path) -> PathBuf {
    dir.join(format!(
        "{SCRATCH_PREFIX}{}.redb",
        super::request_id::fresh()
    ))
}
