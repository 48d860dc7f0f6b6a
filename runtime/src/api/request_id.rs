//! A request id for every API call: in the `x-request-id` answer header, in
//! every error body, and on every log line written while the call is served
//! (as the `request_id` field of its `request` span), so an operator can go
//! from a client's error to the server's log in one search.
//!
//! An id a proxy already gave (`x-request-id`, up to 64 letters, digits, `.`,
//! `_` or `-`) is kept; otherwise it is 16 random hex digits.

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

pub const HEADER: HeaderName = HeaderName::from_static("x-request-id");

tokio::task_local! {
    static CURRENT: String;
}

/// The id of the request being served, if any.
pub fn current() -> Option<String> {
    CURRENT.try_with(Clone::clone).ok()
}

fn given(req: &Request) -> Option<String> {
    let id = req.headers().get(&HEADER)?.to_str().ok()?;
    let fine = (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    fine.then(|| id.to_string())
}

/// 16 random hex digits (a counter's if the system has no randomness).
pub(super) fn fresh() -> String {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        // No randomness: a process-wide counter is still unique here.
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        bytes = NEXT
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .to_be_bytes();
    }
    crate::hex::encode(&bytes)
}

/// The outermost layer: names the request, serves it in its span, and logs
/// how it ended (server errors as warnings, the rest, 503 while starting or
/// stopping among them, at debug).
pub async fn layer(req: Request, next: Next) -> Response {
    let id = given(&req).unwrap_or_else(fresh);
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %req.method(),
        path = %req.uri().path(),
    );
    let started = crate::clock::instant();
    let mut response = CURRENT
        .scope(id.clone(), next.run(req))
        .instrument(span.clone())
        .await;
    let status = response.status().as_u16();
    let elapsed_ms = started.elapsed().as_secs_f64() * 1e3;
    span.in_scope(|| {
        if status >= 500 && status != 503 {
            tracing::warn!(status, elapsed_ms, "answered");
        } else {
            tracing::debug!(status, elapsed_ms, "answered");
        }
    });
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(HEADER, value);
    }
    response
}
