//! In a cluster, a node that does not own the gates hands each API request
//! to the node that does, and passes its answer back: every node answers
//! the whole API, and every change to what is stored is made (and committed
//! to PostgreSQL) by the one node whose engine holds the gates in memory.
//! Creates are the exception: any node commits them (its standby engine
//! writes new tasks only), and the owner hears of them by `NOTIFY`. Health,
//! readiness, `/v1/cluster`, the OpenAPI document and the dashboard's pages
//! are answered by the node itself.
//!
//! A request is forwarded at most once (`sluice-forwarded-by`): if the
//! owner has just lost the gates, the client gets a 503 with `Retry-After`
//! and tries again, as it would while a takeover is under way.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::HeaderName;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::ApiError;
use crate::cluster::Cluster;

/// Marks a forwarded request, naming the node that sent it on.
pub const FORWARDED_BY: &str = "sluice-forwarded-by";

/// Largest request body forwarded: a plugin upload's limit and some.
const BODY_LIMIT: usize = crate::plugin::MAX_COMPONENT + (1 << 20);

/// Longest wait for the owner's answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// What forwarding needs: this node's view of the cluster and a client for
/// the owner. The client reaches cluster members only, at the addresses
/// they registered in the database, so it is not the guarded client of
/// outgoing requests.
#[derive(Clone)]
pub struct Peers {
    pub cluster: Arc<Cluster>,
    http: reqwest::Client,
}

impl Peers {
    pub fn new(cluster: Arc<Cluster>) -> reqwest::Result<Peers> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(2))
            .timeout(ANSWER_TIMEOUT)
            .no_proxy()
            .build()?;
        Ok(Peers { cluster, http })
    }
}

/// Paths every node answers itself.
fn local(path: &str) -> bool {
    !(path.starts_with("/v1/") || path == "/metrics")
        || path == "/v1/cluster"
        || path == "/v1/openapi.json"
}

/// Whether a create's body may name a coalesce key. A coalesce changes a
/// task already stored, which only the gate's owner does, so such creates
/// go to it; the rest commit on the node that took them. The bytes are
/// searched; only a body with escapes in it (which could spell the key
/// otherwise) is read as JSON. A false "yes" costs a hop, nothing more.
fn coalesces(body: &[u8]) -> bool {
    fn names_key(value: &serde_json::Value) -> bool {
        match value {
            serde_json::Value::Object(fields) => fields
                .iter()
                .any(|(name, value)| name == "coalesce_key" || names_key(value)),
            serde_json::Value::Array(items) => items.iter().any(names_key),
            _ => false,
        }
    }
    let has = |text: &[u8]| body.windows(text.len()).any(|w| w == text);
    has(b"coalesce_key")
        || (has(b"\\u")
            && serde_json::from_slice::<serde_json::Value>(body).is_ok_and(|v| names_key(&v)))
}

/// Hop-by-hop headers, and those the sending side sets again.
fn passes(name: &HeaderName) -> bool {
    !matches!(
        name.as_str(),
        "host"
            | "connection"
            | "keep-alive"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
            | "proxy-connection"
            | "content-length"
    )
}

/// A 503, with `Retry-After` as every 503 has.
fn retry_later(message: String) -> Response {
    ApiError::unavailable(message).into_response()
}

pub async fn layer(State(peers): State<Option<Peers>>, request: Request, next: Next) -> Response {
    let Some(peers) = peers else {
        return next.run(request).await;
    };
    if local(request.uri().path()) || peers.cluster.owns() {
        return next.run(request).await;
    }
    let creates = request.method() == axum::http::Method::POST
        && matches!(request.uri().path(), "/v1/tasks" | "/v1/tasks/batch");
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, BODY_LIMIT).await {
        Ok(body) => body,
        Err(_) => {
            return ApiError::too_large(format!("request body over {} MiB", BODY_LIMIT >> 20))
                .into_response();
        }
    };
    if creates && !coalesces(&body) {
        // Committed here: the owner hears of them by `NOTIFY`.
        return next.run(Request::from_parts(parts, Body::from(body))).await;
    }
    if parts.headers.contains_key(FORWARDED_BY) {
        return retry_later("the gates are changing hands; retry".into());
    }
    let Some((owner, address)) = peers.cluster.owner() else {
        return retry_later(
            "no node owns the gates right now (a takeover is under way); retry".into(),
        );
    };
    let target = format!(
        "{}{}",
        address.trim_end_matches('/'),
        parts.uri.path_and_query().map_or("/", |p| p.as_str())
    );
    let mut sent = peers.http.request(parts.method, &target).body(body);
    for (name, value) in &parts.headers {
        if passes(name) {
            sent = sent.header(name, value);
        }
    }
    sent = sent.header(FORWARDED_BY, peers.cluster.id());
    // A paused owner still accepts connections (its kernel does): give up
    // as soon as another node has taken the gates over.
    let moved = async {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if peers.cluster.owner().is_none_or(|(id, _)| id != owner) {
                return;
            }
        }
    };
    let sent = tokio::select! {
        sent = sent.send() => sent,
        () = moved => {
            return retry_later(format!("the gates moved away from {owner} while it answered; retry"));
        }
    };
    let answer = match sent {
        Ok(answer) => answer,
        Err(e) => {
            tracing::warn!(%owner, error = %e, "the owner of the gates did not answer");
            return retry_later(format!(
                "the node that owns the gates ({owner}) did not answer; retry"
            ));
        }
    };
    let status = answer.status();
    let headers = answer.headers().clone();
    let bytes = match answer.bytes().await {
        Ok(bytes) => bytes,
        Err(e) => {
            tracing::warn!(%owner, error = %e, "the owner's answer was cut off");
            return retry_later(format!(
                "the answer of the node that owns the gates ({owner}) was cut off"
            ));
        }
    };
    let mut response = Response::new(Body::from(bytes));
    *response.status_mut() = status;
    for (name, value) in &headers {
        if passes(name) {
            response.headers_mut().append(name, value.clone());
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_naming_a_coalesce_key_are_seen_however_it_is_spelt() {
        let plain = br#"{"gate":"g","coalesce_key":"a","webhook":{"url":"https://x"}}"#;
        let escaped = br#"{"tasks":[{"gate":"g","coalesce\u005fkey":"a"}]}"#;
        let none = br#"{"tasks":[{"gate":"g","labels":{"note":"caf\u00e9"}}]}"#;
        assert!(coalesces(plain));
        assert!(coalesces(escaped));
        assert!(!coalesces(none));
        assert!(!coalesces(br#"{"gate":"g"}"#));
    }
}
