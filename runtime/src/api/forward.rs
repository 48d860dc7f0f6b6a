//! In a cluster, every node answers the whole API: a request that changes
//! a gate, or a task or schedule of a gate, goes to the node that owns the
//! gate's unit (`route`), which changes and commits it; its answer comes
//! back as it is. Creates commit on the node that takes them (its engine
//! writes new tasks of any gate; the owner hears of them by `NOTIFY`),
//! except those naming a coalesce key, which change a task already stored.
//! Reads come from PostgreSQL on the node itself; the list of gates, whose
//! live figures are each owner's, is asked of every owner and merged.
//!
//! A request is forwarded at most once (`sluice-forwarded-by`). The view
//! of the owners is a heartbeat old at most; where it names no owner, or
//! this node, or an owner that turns the request away unanswered, the
//! database is asked who owns the gate now, so a request in the second
//! after a handover gets its answer. While a unit has no owner at all
//! (a takeover under way), the client gets a 503 with `Retry-After` and
//! tries again.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderName, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::ApiError;
use super::wire::GateList;
use crate::cluster::Cluster;
use crate::store::Backend;

/// Marks a forwarded request, naming the node that sent it on.
pub const FORWARDED_BY: &str = "sluice-forwarded-by";

/// Largest request body forwarded: a plugin upload's limit and some.
const BODY_LIMIT: usize = crate::plugin::MAX_COMPONENT + (1 << 20);

/// Longest wait for the owner's answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// Longest wait for another owner's list of gates.
const MERGE_TIMEOUT: Duration = Duration::from_secs(2);

/// On a merged list of gates: the nodes that did not answer (their gates
/// are missing from it).
pub const PARTIAL: &str = "sluice-partial";

/// What forwarding needs: this node's view of the cluster, the store (to
/// find a task's gate) and a client for the owners. The client reaches
/// cluster members only, at the addresses they registered in the
/// database, so it is not the guarded client of outgoing requests.
#[derive(Clone)]
pub struct Peers {
    pub cluster: Arc<Cluster>,
    store: Arc<dyn Backend>,
    http: reqwest::Client,
}

impl Peers {
    pub fn new(cluster: Arc<Cluster>, store: Arc<dyn Backend>) -> reqwest::Result<Peers> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(2))
            .timeout(ANSWER_TIMEOUT)
            .no_proxy()
            .build()?;
        Ok(Peers {
            cluster,
            store,
            http,
        })
    }
}

/// Where a request is answered.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Route {
    /// By this node: reads, creates, plugins, replays, the cluster's view.
    Local,
    /// By the owner of the gate.
    Gate(String),
    /// By the owner of the task's gate.
    Task(String),
    /// By the owner of the schedule's template gate.
    Schedule(String),
    /// A create naming a coalesce key: by the owner of the gate its body
    /// names (in a batch, its first task's that names one).
    Body,
    /// A schedule's `PUT`: by the owner of its gate, or of the gate the
    /// body names if there is no such schedule yet.
    PutSchedule(String),
    /// `GET /v1/gates`: by every owner, the answers merged.
    Gates,
}

/// The route of a request, from its method and path.
fn route(method: &Method, path: &str) -> Route {
    let Some(rest) = path.strip_prefix("/v1/") else {
        return Route::Local;
    };
    let parts: Vec<&str> = rest.split('/').collect();
    let get = method == Method::GET;
    // Names are letters, digits, '-', '_' and '.': never escaped. One
    // that is arrives as written, and its owner refuses it.
    let name = |i: usize| parts.get(i).map(|s| s.to_string()).unwrap_or_default();
    match parts.as_slice() {
        ["gates"] if get => Route::Gates,
        ["gates", _, "keys"] => Route::Local,
        ["gates", _] | ["gates", _, "pause" | "resume"] => Route::Gate(name(1)),
        ["tasks"] | ["tasks", "batch"] if method == Method::POST => Route::Body,
        ["tasks", "replay", ..] => Route::Local,
        ["tasks", _] if method == Method::DELETE => Route::Task(name(1)),
        ["tasks", _, "retry" | "complete" | "fail" | "heartbeat"] => Route::Task(name(1)),
        ["schedules", _] if method == Method::PUT => Route::PutSchedule(name(1)),
        ["schedules", _] if method == Method::DELETE => Route::Schedule(name(1)),
        ["schedules", _, "pause" | "resume"] => Route::Schedule(name(1)),
        _ => Route::Local,
    }
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

/// `sent` with the headers of `from` that a forwarded request carries.
fn with_headers(
    mut sent: reqwest::RequestBuilder,
    from: &axum::http::HeaderMap,
) -> reqwest::RequestBuilder {
    for (name, value) in from {
        if passes(name) {
            sent = sent.header(name, value);
        }
    }
    sent
}

/// A 503, with `Retry-After` as every 503 has.
fn retry_later(message: String) -> Response {
    ApiError::unavailable(message).into_response()
}

/// The gate a body names: a create's `gate` (in a batch, that of its first
/// task naming a coalesce key, else its first task's), or a schedule's
/// `task.gate`. `None` if it names none (the handler then answers what is
/// wrong with it). A batch's task with a coalesce key changes a task of its
/// gate, which only that gate's owner does; a plain task is created by any
/// node.
fn gate_in(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let tasks = value.get("tasks").and_then(|t| t.as_array());
    let first = tasks.and_then(|tasks| {
        (tasks.iter().find(|t| t.get("coalesce_key").is_some())).or_else(|| tasks.first())
    });
    let gate = (value.get("gate"))
        .or_else(|| value.get("task").and_then(|t| t.get("gate")))
        .or_else(|| first.and_then(|t| t.get("gate")))?;
    gate.as_str().map(String::from)
}

pub async fn layer(State(peers): State<Option<Peers>>, request: Request, next: Next) -> Response {
    let Some(peers) = peers else {
        return next.run(request).await;
    };
    let forwarded = request.headers().contains_key(FORWARDED_BY);
    let gate = match route(request.method(), request.uri().path()) {
        Route::Local => return next.run(request).await,
        // Asked by another node's merge: this node's own gates.
        Route::Gates if forwarded => return next.run(request).await,
        Route::Gates => return all_gates(&peers, request, next).await,
        Route::Gate(gate) => gate,
        Route::Task(id) => match task_gate(&peers, &id).await {
            Some(gate) => gate,
            // Not a task id, or no such task: the handler says so.
            None => return next.run(request).await,
        },
        Route::Schedule(name) => match schedule_gate(&peers, &name).await {
            Some(gate) => gate,
            None => return next.run(request).await,
        },
        // A schedule that exists is its gate's engine's, even where the
        // body moves it to another gate (that engine says whether it may).
        Route::PutSchedule(name) => match schedule_gate(&peers, &name).await {
            Some(gate) => gate,
            None => {
                return match read_body(request).await {
                    Ok((parts, body)) => by_named_gate(&peers, parts, body, next, forwarded).await,
                    Err(refused) => refused,
                };
            }
        },
        Route::Body => {
            let (parts, body) = match read_body(request).await {
                Ok(read) => read,
                Err(refused) => return refused,
            };
            if parts.uri.path().starts_with("/v1/tasks") && !coalesces(&body) {
                // Committed here: the owner hears of them by `NOTIFY`.
                return next.run(Request::from_parts(parts, Body::from(body))).await;
            }
            return by_named_gate(&peers, parts, body, next, forwarded).await;
        }
    };
    to_owner(&peers, &gate, request, next, forwarded).await
}

/// The request's head and its whole body, or the 413 past `BODY_LIMIT`.
async fn read_body(request: Request) -> Result<(Parts, Bytes), Response> {
    let (parts, body) = request.into_parts();
    match axum::body::to_bytes(body, BODY_LIMIT).await {
        Ok(body) => Ok((parts, body)),
        Err(_) => Err(
            ApiError::too_large(format!("request body over {} MiB", BODY_LIMIT >> 20))
                .into_response(),
        ),
    }
}

/// Has the owner of the gate the body names answer it; this node, where the
/// body names none (the handler says what is missing).
async fn by_named_gate(
    peers: &Peers,
    parts: Parts,
    body: Bytes,
    next: Next,
    forwarded: bool,
) -> Response {
    let gate = gate_in(&body);
    let request = Request::from_parts(parts, Body::from(body));
    match gate {
        Some(gate) => to_owner(peers, &gate, request, next, forwarded).await,
        None => next.run(request).await,
    }
}

/// The gate of the task `id` names, read from the store.
async fn task_gate(peers: &Peers, id: &str) -> Option<String> {
    let id: crate::core::TaskId = id.parse().ok()?;
    let store = peers.store.clone();
    let task = tokio::task::spawn_blocking(move || store.read().ok()?.task(id.0).ok()?).await;
    task.ok().flatten().map(|t| t.gate)
}

/// The template gate of the schedule `name`, read from the store.
async fn schedule_gate(peers: &Peers, name: &str) -> Option<String> {
    let (store, name) = (peers.store.clone(), name.to_string());
    let schedule =
        tokio::task::spawn_blocking(move || store.read().ok()?.schedule(&name).ok()?).await;
    schedule.ok().flatten().map(|s| s.template.gate)
}

/// Answers `request` here if this node runs `gate`, else has its owner
/// answer it. The view of the owners is a heartbeat old at most: where it
/// has no owner for the gate, or this node (which has just let it go), the
/// database is asked who owns it now; and a request the owner turns away
/// unanswered (a 503, or no connection) goes once more to the node the
/// database then names, if that is another. So a request in the second
/// after a handover gets its answer, not a 503.
async fn to_owner(
    peers: &Peers,
    gate: &str,
    request: Request,
    next: Next,
    forwarded: bool,
) -> Response {
    let cluster = &peers.cluster;
    if cluster.runs(gate) {
        return next.run(request).await;
    }
    if forwarded {
        // Forwarded once already: taken for the owner by a node whose view
        // is older than this one's, or ahead of this node's engine.
        return changing_hands(gate);
    }
    let (parts, body) = match read_body(request).await {
        Ok(read) => read,
        Err(refused) => return refused,
    };
    let here = |parts, body| next.run(Request::from_parts(parts, Body::from(body)));
    let owner = match cluster.owner_of(gate) {
        Some(owner) if owner.0 != cluster.id() => owner,
        _ => match cluster.owner_now(gate).await {
            _ if cluster.runs(gate) => return here(parts, body).await,
            Ok(Some(owner)) if owner.0 != cluster.id() => owner,
            Ok(Some(_)) => return changing_hands(gate),
            Ok(None) | Err(_) => return no_owner(gate),
        },
    };
    let turned_away = match ask(peers, gate, &owner, &parts, &body).await {
        Ok(answer) => return answer,
        Err(turned_away) => turned_away,
    };
    match cluster.owner_now(gate).await {
        _ if cluster.runs(gate) => here(parts, body).await,
        Ok(Some(now)) if now.0 == owner.0 => turned_away,
        Ok(Some(now)) if now.0 == cluster.id() => changing_hands(gate),
        Ok(Some(now)) => ask(peers, gate, &now, &parts, &body)
            .await
            .unwrap_or_else(|turned_away| turned_away),
        Ok(None) => no_owner(gate),
        Err(_) => turned_away,
    }
}

/// The answer of `owner` (id, address) to the request: `Err` (a 503) if
/// it turned the request away without acting on it (it answered 503, or
/// took no connection), so it may go to another owner.
async fn ask(
    peers: &Peers,
    gate: &str,
    (owner, address): &(String, String),
    parts: &Parts,
    body: &Bytes,
) -> Result<Response, Response> {
    let cluster = &peers.cluster;
    let target = format!(
        "{}{}",
        address.trim_end_matches('/'),
        parts.uri.path_and_query().map_or("/", |p| p.as_str())
    );
    let mut sent = (peers.http)
        .request(parts.method.clone(), &target)
        .body(body.clone());
    sent = with_headers(sent, &parts.headers).header(FORWARDED_BY, cluster.id());
    // A paused owner still accepts connections (its kernel does): give up
    // as soon as another node has taken the gate over.
    let moved = async {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if cluster.owner_of(gate).is_none_or(|(id, _)| id != *owner) {
                return;
            }
        }
    };
    let sent = tokio::select! {
        sent = sent.send() => sent,
        () = moved => {
            return Ok(retry_later(format!("gate {gate:?} moved away from {owner} while it answered; retry")));
        }
    };
    let answer = match sent {
        Ok(answer) => answer,
        Err(e) => {
            tracing::warn!(%owner, error = %e, "the owner of a gate did not answer");
            let answer = retry_later(format!(
                "the node that owns gate {gate:?} ({owner}) did not answer; retry"
            ));
            // Not connected: nothing reached it.
            return if e.is_connect() {
                Err(answer)
            } else {
                Ok(answer)
            };
        }
    };
    let status = answer.status();
    let headers = answer.headers().clone();
    let bytes = match answer.bytes().await {
        Ok(bytes) => bytes,
        Err(e) => {
            tracing::warn!(%owner, error = %e, "the owner's answer was cut off");
            return Ok(retry_later(format!(
                "the answer of the node that owns gate {gate:?} ({owner}) was cut off"
            )));
        }
    };
    let mut response = Response::new(Body::from(bytes));
    *response.status_mut() = status;
    for (name, value) in &headers {
        if passes(name) {
            response.headers_mut().append(name, value.clone());
        }
    }
    if status == axum::http::StatusCode::SERVICE_UNAVAILABLE {
        Err(response)
    } else {
        Ok(response)
    }
}

fn no_owner(gate: &str) -> Response {
    retry_later(format!(
        "no node owns gate {gate:?} right now (a takeover is under way); retry"
    ))
}

fn changing_hands(gate: &str) -> Response {
    retry_later(format!("gate {gate:?} is changing hands; retry"))
}

/// `GET /v1/gates` in a cluster: this node's gates and every other
/// owner's (each asked with `sluice-forwarded-by`, so it answers with its
/// own), merged in name order. An owner that does not answer within
/// `MERGE_TIMEOUT` is named in `sluice-partial`, and its gates (and any
/// no node runs right now) are shown from the store, `unreachable`.
async fn all_gates(peers: &Peers, request: Request, next: Next) -> Response {
    let (parts, _) = request.into_parts();
    let mut asks = Vec::new();
    for (id, address) in peers.cluster.owners() {
        if id == peers.cluster.id() {
            continue;
        }
        let mut sent = (peers.http)
            .get(format!("{}/v1/gates", address.trim_end_matches('/')))
            .timeout(MERGE_TIMEOUT)
            .header(FORWARDED_BY, peers.cluster.id());
        sent = with_headers(sent, &parts.headers);
        asks.push(async move {
            let listed = match sent.send().await {
                Ok(answer) if answer.status().is_success() => match answer.bytes().await {
                    Ok(bytes) => {
                        serde_json::from_slice::<GateList>(&bytes).map_err(|e| e.to_string())
                    }
                    Err(e) => Err(e.to_string()),
                },
                Ok(answer) => Err(format!("answered {}", answer.status())),
                Err(e) => Err(e.to_string()),
            };
            listed.map_err(|error| {
                tracing::warn!(node = %id, %error, "a node did not list its gates");
                id
            })
        });
    }
    let local = Request::from_parts(parts, Body::empty());
    let (mine, theirs) = tokio::join!(next.run(local), futures_util::future::join_all(asks));
    if !mine.status().is_success() {
        return mine;
    }
    let mine = match axum::body::to_bytes(mine.into_body(), usize::MAX).await {
        Ok(bytes) => serde_json::from_slice::<GateList>(&bytes).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    let mut all = match mine {
        Ok(list) => list,
        Err(e) => return ApiError::internal(&e).into_response(),
    };
    let mut missing = Vec::new();
    for answer in theirs {
        match answer {
            Ok(list) => all.gates.extend(list.gates),
            Err(node) => missing.push(node),
        }
    }
    // What no owner listed (its owner silent, or its unit between owners)
    // still shows, from the store.
    let listed = all.gates.iter().map(|g| g.name.clone()).collect();
    match super::gates::unlisted_gates(peers.store.clone(), &peers.cluster, listed).await {
        Ok(unlisted) => all.gates.extend(unlisted),
        Err(e) => return e.into_response(),
    }
    all.gates.sort_by(|a, b| a.name.cmp(&b.name));
    all.gates.dedup_by(|a, b| a.name == b.name);
    let mut response = axum::Json(all).into_response();
    if !missing.is_empty()
        && let Ok(value) = axum::http::HeaderValue::from_str(&missing.join(","))
    {
        response.headers_mut().insert(PARTIAL, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_go_where_their_gate_is() {
        let gate = |name: &str| Route::Gate(name.to_string());
        let task = |id: &str| Route::Task(id.to_string());
        let schedule = Route::Schedule("daily".into());
        let cases = [
            (Method::GET, "/v1/gates", Route::Gates),
            (Method::GET, "/v1/gates/mail", gate("mail")),
            (Method::PUT, "/v1/gates/mail", gate("mail")),
            (Method::DELETE, "/v1/gates/mail", gate("mail")),
            (Method::POST, "/v1/gates/mail/pause", gate("mail")),
            (Method::POST, "/v1/gates/mail/resume", gate("mail")),
            (Method::GET, "/v1/gates/mail/keys", Route::Local),
            (Method::POST, "/v1/tasks", Route::Body),
            (Method::POST, "/v1/tasks/batch", Route::Body),
            (Method::GET, "/v1/tasks", Route::Local),
            (Method::GET, "/v1/tasks/t1", Route::Local),
            (Method::DELETE, "/v1/tasks/t1", task("t1")),
            (Method::POST, "/v1/tasks/t1/retry", task("t1")),
            (Method::POST, "/v1/tasks/t1/complete", task("t1")),
            (Method::POST, "/v1/tasks/t1/fail", task("t1")),
            (Method::POST, "/v1/tasks/t1/heartbeat", task("t1")),
            (Method::POST, "/v1/tasks/replay", Route::Local),
            (Method::DELETE, "/v1/tasks/replay/r1", Route::Local),
            (
                Method::PUT,
                "/v1/schedules/daily",
                Route::PutSchedule("daily".into()),
            ),
            (Method::GET, "/v1/schedules/daily", Route::Local),
            (Method::DELETE, "/v1/schedules/daily", schedule.clone()),
            (Method::POST, "/v1/schedules/daily/pause", schedule),
            (Method::PUT, "/v1/plugins/p/1.0.0", Route::Local),
            (Method::GET, "/v1/cluster", Route::Local),
            (Method::GET, "/metrics", Route::Local),
            (Method::GET, "/readyz", Route::Local),
        ];
        for (method, path, expected) in cases {
            assert_eq!(route(&method, path), expected, "{method} {path}");
        }
    }

    #[test]
    fn the_gate_a_body_names_is_found_in_each_shape() {
        assert_eq!(gate_in(br#"{"gate":"a"}"#).as_deref(), Some("a"));
        let batch = br#"{"tasks":[{"gate":"b"}]}"#;
        assert_eq!(gate_in(batch).as_deref(), Some("b"));
        // Its first task naming a coalesce key: that one only its gate's
        // owner may create, the others any node.
        let mixed = br#"{"tasks":[{"gate":"b"},{"gate":"c","coalesce_key":"k"},{"gate":"d"}]}"#;
        assert_eq!(gate_in(mixed).as_deref(), Some("c"));
        let schedule = br#"{"every":"1m","task":{"gate":"c"}}"#;
        assert_eq!(gate_in(schedule).as_deref(), Some("c"));
        assert_eq!(gate_in(br#"{"tasks":[]}"#), None);
        assert_eq!(gate_in(b"not json"), None);
    }

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
