//! Test fixtures: an in-process server, a recording HTTP sink, a JSON client.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use sluice::clock;
use sluice::config::ServerConfig;
use tokio::sync::watch;

/// A server running in this process on a loopback port with its own data dir.
pub struct Server {
    pub running: Option<sluice::server::Running>,
    pub url: String,
    pub dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

impl Server {
    pub async fn start() -> Server {
        let temp = tempfile::tempdir().expect("temp dir");
        let dir = temp.path().to_path_buf();
        let mut server = Server::start_in(&dir).await;
        server._temp = Some(temp);
        server
    }

    pub async fn start_in(dir: &Path) -> Server {
        Server::start_with(dir, |_| {}).await
    }

    /// A server in `dir` whose config `adjust` changes first (tokens, TLS...).
    pub async fn start_with(dir: &Path, adjust: impl FnOnce(&mut ServerConfig)) -> Server {
        Server::start_tuned(dir, adjust, None).await
    }

    /// `start_with`, the scheduler tuned as `tuning` says.
    pub async fn start_tuned(
        dir: &Path,
        adjust: impl FnOnce(&mut ServerConfig),
        tuning: Option<sluice::core::Tuning>,
    ) -> Server {
        let mut config =
            ServerConfig::local(dir.to_path_buf(), "127.0.0.1:0".parse().expect("addr"));
        config.grace = Duration::from_secs(5);
        adjust(&mut config);
        let cluster = config.store.is_some();
        let running = sluice::server::start(&config, tuning)
            .await
            .expect("server starts");
        let url = running.url();
        let server = Server {
            running: Some(running),
            url,
            dir: dir.to_path_buf(),
            _temp: None,
        };
        if cluster {
            // A cluster node answers once it owns the gates or knows who does.
            crate::crash::wait_ready(&server.client()).await;
        }
        server
    }

    /// Its node id, in a cluster.
    pub fn node(&self) -> Option<String> {
        self.running.as_ref().and_then(|r| r.node())
    }

    pub fn client(&self) -> Client {
        Client::new(&self.url)
    }

    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await.expect("clean shutdown");
        }
    }
}

/// The tests' face of `sluice::client::Client`: answers as (status, body),
/// and helpers that fail the test on an unexpected answer.
#[derive(Clone)]
pub struct Client {
    api: sluice::client::Client,
}

impl Client {
    pub fn new(base: &str) -> Client {
        Client::with_http(
            base,
            reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .expect("client"),
        )
    }

    /// A client over a prepared reqwest client (one that trusts a test CA, say).
    pub fn with_http(base: &str, http: reqwest::Client) -> Client {
        Client {
            api: sluice::client::Client::with_http(base, http),
        }
    }

    /// The same client, sending `Authorization: Bearer <token>`.
    pub fn with_token(&self, token: &str) -> Client {
        Client {
            api: self.api.with_token(Some(token)),
        }
    }

    /// The shared typed client underneath.
    pub fn api(&self) -> &sluice::client::Client {
        &self.api
    }

    pub fn base_url(&self) -> String {
        self.api.base().to_string()
    }

    fn method(method: &str) -> reqwest::Method {
        method.parse().expect("method")
    }

    pub async fn send(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let (status, _, value) = self.send_full(method, path, body).await;
        (status, value)
    }

    /// Like `send`, but a connection failure is `None` instead of a panic.
    pub async fn try_send(&self, method: &str, path: &str, body: Value) -> Option<(u16, Value)> {
        let answer = self
            .api
            .send(Client::method(method), path, Some(&body))
            .await
            .ok()?;
        Some((answer.status.as_u16(), answer.body))
    }

    pub async fn send_full(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, HeaderMap, Value) {
        let answer = self
            .api
            .send(Client::method(method), path, body.as_ref())
            .await
            .expect("request reaches the server");
        (answer.status.as_u16(), answer.headers, answer.body)
    }

    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> (u16, Value) {
        let request = self
            .api
            .request(Client::method(method), path)
            .header("content-type", content_type)
            .body(body);
        let answer = self
            .api
            .send_request(request)
            .await
            .expect("request reaches the server");
        (answer.status.as_u16(), answer.body)
    }

    pub async fn put_gate(&self, name: &str, body: Value) -> Value {
        let (status, v) = self
            .send("PUT", &format!("/v1/gates/{name}"), Some(body))
            .await;
        assert!(status == 200 || status == 201, "gate {name}: {status} {v}");
        v
    }

    pub async fn create(&self, task: Value) -> Value {
        let (status, v) = self.send("POST", "/v1/tasks", Some(task)).await;
        assert_eq!(status, 201, "create: {v}");
        v
    }

    pub async fn batch(&self, tasks: Vec<Value>) -> Vec<String> {
        let (status, v) = self
            .send("POST", "/v1/tasks/batch", Some(json!({ "tasks": tasks })))
            .await;
        assert_eq!(status, 201, "batch: {v}");
        v["ids"]
            .as_array()
            .expect("ids")
            .iter()
            .map(|i| i.as_str().expect("id").to_string())
            .collect()
    }

    pub async fn task(&self, id: &str) -> Value {
        let (status, v) = self.send("GET", &format!("/v1/tasks/{id}"), None).await;
        assert_eq!(status, 200, "get task: {v}");
        v
    }

    /// Polls the task until it has ended, whichever way.
    pub async fn wait_done(&self, id: &str, within: Duration) -> Value {
        let start = clock::instant();
        loop {
            let t = self.task(id).await;
            if matches!(
                t["state"].as_str(),
                Some("succeeded" | "failed" | "expired" | "cancelled")
            ) {
                return t;
            }
            assert!(start.elapsed() < within, "task {id} never ended: {t}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Polls the task until it reaches `state`. Polling the API is the event here:
    /// the state change is only visible through it.
    pub async fn wait_state(&self, id: &str, state: &str, within: Duration) -> Value {
        let start = clock::instant();
        loop {
            let t = self.task(id).await;
            if t["state"] == state {
                return t;
            }
            assert!(
                start.elapsed() < within,
                "task {id} never reached {state}: {t}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// One request the sink received.
#[derive(Clone, Debug)]
pub struct Hit {
    pub at: Instant,
    pub method: String,
    /// Path and query.
    pub path: String,
    pub task: String,
    pub attempt: u32,
    pub headers: HashMap<String, String>,
    pub body: Bytes,
}

/// What the sink answers.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub delay: Duration,
    pub headers: Vec<(String, String)>,
    pub body: Option<String>,
}

impl Reply {
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            delay: Duration::ZERO,
            headers: Vec::new(),
            body: None,
        }
    }

    /// A JSON answer, as an API a plugin calls would give.
    pub fn json(status: u16, body: Value) -> Reply {
        let mut reply = Reply::status(status).header("content-type", "application/json");
        reply.body = Some(body.to_string());
        reply
    }

    pub fn ok() -> Reply {
        Reply::status(200)
    }

    pub fn delayed(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.into(), value.into()));
        self
    }
}

type Behaviour = Arc<dyn Fn(&Hit, usize) -> Reply + Send + Sync>;

struct SinkState {
    hits: Mutex<Vec<Hit>>,
    count: watch::Sender<usize>,
    in_flight: Mutex<(usize, usize)>,
    behaviour: Mutex<Behaviour>,
}

/// An HTTP endpoint on loopback that records the arrival time of every request.
#[derive(Clone)]
pub struct Sink {
    state: Arc<SinkState>,
    pub addr: SocketAddr,
}

impl Sink {
    pub async fn start() -> Sink {
        Sink::start_on("127.0.0.1:0".parse().expect("addr")).await
    }

    pub async fn start_on(addr: SocketAddr) -> Sink {
        let (count, _) = watch::channel(0);
        let state = Arc::new(SinkState {
            hits: Mutex::new(Vec::new()),
            count,
            in_flight: Mutex::new((0, 0)),
            behaviour: Mutex::new(Arc::new(|_: &Hit, _| Reply::ok())),
        });
        let app = axum::Router::new()
            .fallback(record)
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .expect("sink binds");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Sink { state, addr }
    }

    /// Sets how the sink answers: a function of the hit and the index of the hit.
    pub fn behave(&self, f: impl Fn(&Hit, usize) -> Reply + Send + Sync + 'static) {
        *self.state.behaviour.lock().expect("lock") = Arc::new(f);
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The `allowed_hosts` entry that names this sink.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn hits(&self) -> Vec<Hit> {
        self.state.hits.lock().expect("lock").clone()
    }

    pub fn max_in_flight(&self) -> usize {
        self.state.in_flight.lock().expect("lock").1
    }

    /// Requests it holds now (a behaviour sees those before the one it
    /// answers).
    pub fn in_flight(&self) -> usize {
        self.state.in_flight.lock().expect("lock").0
    }

    /// Waits until the sink has seen at least `n` requests.
    pub async fn wait_for(&self, n: usize, within: Duration) -> Vec<Hit> {
        let mut rx = self.state.count.subscribe();
        let reached = tokio::time::timeout(within, rx.wait_for(|c| *c >= n)).await;
        let hits = self.hits();
        assert!(
            reached.is_ok(),
            "sink saw {} requests, expected {n} within {within:?}",
            hits.len()
        );
        hits
    }
}

async fn record(
    State(state): State<Arc<SinkState>>,
    method: axum::http::Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let at = clock::instant();
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let hit = Hit {
        at,
        method: method.to_string(),
        path: uri
            .path_and_query()
            .map_or_else(|| uri.path().to_string(), |p| p.to_string()),
        task: get("sluice-task-id"),
        attempt: get("sluice-attempt").parse().unwrap_or(0),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
            .collect(),
        body,
    };
    let index = {
        let mut hits = state.hits.lock().expect("lock");
        hits.push(hit.clone());
        hits.len() - 1
    };
    let behaviour = state.behaviour.lock().expect("lock").clone();
    let reply = behaviour(&hit, index);
    /// Counts the request out however it ends: answered, or dropped when
    /// its client went away.
    struct InFlight(Arc<SinkState>);
    impl Drop for InFlight {
        fn drop(&mut self) {
            if let Ok(mut f) = self.0.in_flight.lock() {
                f.0 -= 1;
            }
        }
    }
    {
        let mut f = state.in_flight.lock().expect("lock");
        f.0 += 1;
        f.1 = f.1.max(f.0);
    }
    let in_flight = InFlight(state.clone());
    state.count.send_modify(|c| *c += 1);
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    drop(in_flight);
    let mut response = (
        StatusCode::from_u16(reply.status).unwrap_or(StatusCode::OK),
        reply.body.unwrap_or_else(|| "sink".into()),
    )
        .into_response();
    for (k, v) in reply.headers {
        if let (Ok(k), Ok(v)) = (
            axum::http::HeaderName::from_bytes(k.as_bytes()),
            axum::http::HeaderValue::from_str(&v),
        ) {
            response.headers_mut().insert(k, v);
        }
    }
    response
}

/// The most arrivals in any window of `width`, over sorted arrival instants.
pub fn max_in_window(times: &[Instant], width: Duration) -> usize {
    let mut sorted = times.to_vec();
    sorted.sort();
    let mut best = 0;
    let mut start = 0;
    for end in 0..sorted.len() {
        while sorted[end].duration_since(sorted[start]) >= width {
            start += 1;
        }
        best = best.max(end - start + 1);
    }
    best
}

/// A gate body allowing the sink, with the given rate and no ramp.
pub fn gate_for(sink: &Sink, rate: &str) -> Value {
    json!({
        "rate": rate,
        "burst": 1,
        "concurrency": 50,
        "allowed_hosts": [sink.host()],
        "recovery": { "start": 1.0 },
        "retry": { "backoff": { "initial": "100ms", "max": "1s", "jitter": false } },
    })
}

pub fn webhook_task(gate: &str, url: &str) -> Value {
    json!({ "gate": gate, "webhook": { "url": url, "body": { "hello": "world" } } })
}

/// A gate's spec for the tests that drive an engine directly: `rate`,
/// `burst` and `concurrency` to `host`, a 5 s timeout, and every other
/// setting at its default (change fields with `..` where a test needs to).
pub fn engine_gate(
    rate: f64,
    burst: u32,
    concurrency: u32,
    host: String,
) -> sluice::model::GateSpec {
    sluice::model::GateSpec {
        rate: sluice::core::Rate::per_second(rate).expect("rate"),
        burst,
        concurrency,
        allowed_hosts: vec![host],
        timeout: Duration::from_secs(5),
        retry: Default::default(),
        recovery: Default::default(),
        circuit: None,
        accept_next_from: Vec::new(),
        signing_secrets: None,
        quota_headers: false,
        adaptive: None,
        keys: None,
        priority_aging: None,
    }
}

/// A webhook task to `url` in `gate`, due at `due`, with every default: what
/// the tests that drive an engine directly hand it to create.
pub fn engine_task(gate: &str, url: &str, due: sluice::core::Timestamp) -> sluice::model::NewTask {
    use sluice::model::{Due, NewTask, Target, Webhook};
    NewTask {
        gate: gate.to_string(),
        target: Target::Webhook(Webhook {
            url: url.into(),
            method: "POST".into(),
            headers: Default::default(),
            body: None,
            secret_headers: Default::default(),
        }),
        due: Due::At(due),
        max_attempts: None,
        timeout: None,
        backoff: None,
        max_retry_duration: None,
        expires_after: None,
        idempotency_key: None,
        labels: Default::default(),
        key: None,
        coalesce_key: None,
        priority: None,
        schedule: None,
        parent: None,
        lineage: None,
    }
}

/// In a cluster on PostgreSQL: waits (up to 30 s) until every unit is held
/// by its rendezvous owner among the nodes `ids`, as `c`'s node sees it,
/// and returns each unit's owner as an index into `ids`.
pub async fn settled_cluster(c: &Client, ids: &[String]) -> Vec<usize> {
    use sluice::core::units::{UNITS, fnv1a, owner_of};
    let named: Vec<&String> = ids.iter().collect();
    let wanted: Vec<usize> = (0..UNITS)
        .map(|u| {
            let owner = owner_of(u, &named, |id: &String| fnv1a(id.as_bytes()));
            (ids.iter())
                .position(|id| Some(id) == owner)
                .expect("a live node")
        })
        .collect();
    let start = clock::instant();
    loop {
        let (status, cluster) = c.send("GET", "/v1/cluster", None).await;
        let mut held: Vec<Option<usize>> = vec![None; UNITS as usize];
        for node in cluster["nodes"].as_array().into_iter().flatten() {
            let index = ids.iter().position(|id| node["id"] == id.as_str());
            for unit in node["units"].as_array().into_iter().flatten() {
                if let Some(slot) = unit.as_u64().and_then(|u| held.get_mut(u as usize)) {
                    *slot = index;
                }
            }
        }
        if status == 200 && held.iter().zip(&wanted).all(|(h, w)| *h == Some(*w)) {
            return wanted;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the units never settled over {ids:?}: {cluster}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An endpoint for one request that answers 200 at once with the first two
/// bytes of a chunked body (`ok`), then sends nothing more for `stall`: an
/// answer whose head came and whose body stalls. Abort the handle to end it.
pub async fn stalled_body(stall: Duration) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let endpoint = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.expect("accept");
        let mut request = Vec::new();
        let mut buf = [0u8; 4096];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => request.extend_from_slice(&buf[..n]),
            }
        }
        let head = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n";
        let _ = socket.write_all(head.as_bytes()).await;
        tokio::time::sleep(stall).await;
    });
    (addr, endpoint)
}
