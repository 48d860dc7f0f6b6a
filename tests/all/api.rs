//! The REST surface: validation, idempotency, batches, cancel, paging.

use serde_json::{Value, json};

use crate::support::{Server, Sink, gate_for, webhook_task};

/// Every malformed request gets a 4xx with the error JSON of SPEC §3, never a 5xx.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_clear_4xx_errors() {
    let server = Server::start().await;
    let c = server.client();
    let sink = Sink::start().await;
    c.put_gate("g", gate_for(&sink, "10/s")).await;
    // A gate that allows another host only: the sink's origin, allowed in
    // `g`, must still be refused for it within one batch.
    c.put_gate(
        "elsewhere",
        json!({"rate": "10/s", "allowed_hosts": ["other.example"]}),
    )
    .await;
    let url = sink.url("/x");
    // (method, path, body, status, code, field)
    type Case<'a> = (
        &'a str,
        &'a str,
        Option<Value>,
        u16,
        &'a str,
        Option<&'a str>,
    );
    let cases: Vec<Case> = vec![
        (
            "PUT",
            "/v1/gates/g2",
            Some(json!({})),
            400,
            "invalid_argument",
            Some("rate"),
        ),
        (
            "PUT",
            "/v1/gates/g2",
            Some(json!({"rate": "fast"})),
            400,
            "invalid_argument",
            Some("rate"),
        ),
        (
            "PUT",
            "/v1/gates/g2",
            Some(json!({"rate": "0/s"})),
            400,
            "invalid_argument",
            Some("rate"),
        ),
        (
            "PUT",
            "/v1/gates/g2",
            Some(json!({"rate": -5})),
            400,
            "invalid_argument",
            Some("rate"),
        ),
        (
            "PUT",
            "/v1/gates/g2",
            Some(json!({"rate": "1/s", "burst": 0})),
            400,
            "invalid_argument",
            Some("burst"),
        ),
        (
            "PUT",
            "/v1/gates/g2",
            Some(json!({"rate": "1/s", "concurrency": -1})),
            400,
            "invalid_argument",
            Some("concurrency"),
        ),
        (
            "PUT",
            "/v1/gates/g2",
            Some(json!({"rate": "1/s", "colour": "red"})),
            400,
            "invalid_argument",
            None,
        ),
        (
            "PUT",
            "/v1/gates/g2",
            Some(json!({"rate": "1/s", "timeout": "soon"})),
            400,
            "invalid_argument",
            Some("timeout"),
        ),
        (
            "PUT",
            "/v1/gates/g2",
            Some(json!({"rate": "1/s", "allowed_hosts": ["a b"]})),
            400,
            "invalid_argument",
            Some("allowed_hosts[0]"),
        ),
        (
            "PUT",
            "/v1/gates/g2",
            Some(json!({"rate": "1/s", "recovery": {"start": 0}})),
            400,
            "invalid_argument",
            Some("recovery.start"),
        ),
        (
            "PUT",
            "/v1/gates/bad%20name",
            Some(json!({"rate": "1/s"})),
            400,
            "invalid_argument",
            Some("name"),
        ),
        (
            "PUT",
            "/v1/gates/g2",
            Some(json!([1, 2])),
            400,
            "invalid_argument",
            None,
        ),
        ("GET", "/v1/gates/nope", None, 404, "not_found", None),
        (
            "POST",
            "/v1/tasks",
            Some(json!({})),
            400,
            "invalid_argument",
            None,
        ),
        (
            "POST",
            "/v1/tasks",
            Some(json!({"gate": "g"})),
            400,
            "invalid_argument",
            Some("webhook"),
        ),
        (
            "POST",
            "/v1/tasks",
            Some(json!({"gate": "nope", "webhook": {"url": url}})),
            400,
            "invalid_argument",
            Some("gate"),
        ),
        (
            "POST",
            "/v1/tasks",
            Some(json!({"gate": "g", "webhook": {"url": "not a url"}})),
            400,
            "invalid_argument",
            Some("webhook.url"),
        ),
        (
            "POST",
            "/v1/tasks",
            Some(json!({"gate": "g", "webhook": {"url": "ftp://x/"}})),
            400,
            "invalid_argument",
            Some("webhook.url"),
        ),
        (
            "POST",
            "/v1/tasks",
            Some(json!({"gate": "g", "webhook": {"url": "http://other.example/"}})),
            400,
            "invalid_argument",
            Some("webhook.url"),
        ),
        (
            "POST",
            "/v1/tasks",
            Some(json!({"gate": "g", "webhook": {"url": url, "method": "BREW"}})),
            400,
            "invalid_argument",
            Some("webhook.method"),
        ),
        (
            "POST",
            "/v1/tasks",
            Some(json!({"gate": "g", "webhook": {"url": url}, "delay": "5"})),
            400,
            "invalid_argument",
            Some("delay"),
        ),
        (
            "POST",
            "/v1/tasks",
            Some(json!({"gate": "g", "webhook": {"url": url}, "run_at": "tomorrow"})),
            400,
            "invalid_argument",
            Some("run_at"),
        ),
        (
            "POST",
            "/v1/tasks",
            Some(
                json!({"gate": "g", "webhook": {"url": url}, "run_at": "2030-01-01T00:00:00Z", "delay": "1s"}),
            ),
            400,
            "invalid_argument",
            Some("delay"),
        ),
        // A path segment that is not UTF-8: the framework's refusal, as JSON.
        ("GET", "/v1/tasks/%FF", None, 400, "invalid_argument", None),
        (
            "POST",
            "/v1/tasks",
            Some(json!({"gate": "g", "webhook": {"url": url}, "expires_after": "3000000d"})),
            400,
            "invalid_argument",
            Some("expires_after"),
        ),
        (
            "POST",
            "/v1/tasks",
            Some(
                json!({"gate": "g", "webhook": {"url": url}, "run_at": "9999-12-30T00:00:00Z", "expires_after": "1d"}),
            ),
            400,
            "invalid_argument",
            Some("run_at"),
        ),
        (
            "POST",
            "/v1/tasks",
            Some(json!({"gate": "g", "webhook": {"url": url}, "max_attempts": 0})),
            400,
            "invalid_argument",
            Some("max_attempts"),
        ),
        (
            "POST",
            "/v1/tasks",
            Some(json!({"gate": "g", "webhook": {"url": url}, "urgency": 3})),
            400,
            "invalid_argument",
            None,
        ),
        (
            "POST",
            "/v1/tasks",
            Some(json!({"gate": "g", "webhook": {"url": url, "headers": {"sluice-task-id": "x"}}})),
            400,
            "invalid_argument",
            Some("webhook.headers.sluice-task-id"),
        ),
        (
            "POST",
            "/v1/tasks",
            Some(json!({"gate": "g", "webhook": {"url": url}, "labels": {"a": 1}})),
            400,
            "invalid_argument",
            Some("labels.a"),
        ),
        (
            "POST",
            "/v1/tasks",
            Some(
                json!({"gate": "g", "webhook": {"url": url}, "plugin": {"name": "p", "version": "1.0.0"}}),
            ),
            400,
            "invalid_argument",
            Some("webhook"),
        ),
        (
            "POST",
            "/v1/tasks/batch",
            Some(json!({"tasks": []})),
            400,
            "invalid_argument",
            Some("tasks"),
        ),
        (
            "POST",
            "/v1/tasks/batch",
            Some(json!({"tasks": [{"gate": "g", "webhook": {"url": url}}, {"gate": "g"}]})),
            400,
            "invalid_argument",
            Some("tasks[1].webhook"),
        ),
        (
            "POST",
            "/v1/tasks/batch",
            Some(json!({"tasks": [
                {"gate": "g", "webhook": {"url": url}},
                {"gate": "g", "webhook": {"url": sink.url("/y?z=1")}},
                {"gate": "g", "webhook": {"url": "http://other.example/"}},
            ]})),
            400,
            "invalid_argument",
            Some("tasks[2].webhook.url"),
        ),
        (
            "POST",
            "/v1/tasks/batch",
            Some(json!({"tasks": [
                {"gate": "g", "webhook": {"url": url}},
                {"gate": "elsewhere", "webhook": {"url": sink.url("/y")}},
            ]})),
            400,
            "invalid_argument",
            Some("tasks[1].webhook.url"),
        ),
        (
            "GET",
            "/v1/tasks/zzz",
            None,
            400,
            "invalid_argument",
            Some("id"),
        ),
        (
            "GET",
            "/v1/tasks/0000000000000",
            None,
            404,
            "not_found",
            None,
        ),
        (
            "GET",
            "/v1/tasks?state=happy",
            None,
            400,
            "invalid_argument",
            Some("state"),
        ),
        (
            "GET",
            "/v1/tasks?limit=0",
            None,
            400,
            "invalid_argument",
            Some("limit"),
        ),
        (
            "GET",
            "/v1/tasks?sort=asc",
            None,
            400,
            "invalid_argument",
            Some("sort"),
        ),
        ("GET", "/v1/tasks?gate=nope", None, 404, "not_found", None),
        (
            "DELETE",
            "/v1/tasks/0000000000000",
            None,
            404,
            "not_found",
            None,
        ),
        ("GET", "/v1/nothing", None, 404, "not_found", None),
        (
            "DELETE",
            "/v1/gates/g?force=maybe",
            None,
            400,
            "invalid_argument",
            Some("force"),
        ),
    ];
    for (method, path, body, status, code, field) in cases {
        let (got, v) = c.send(method, path, body.clone()).await;
        assert_eq!(got, status, "{method} {path} {body:?} → {v}");
        assert_eq!(v["error"]["code"], code, "{method} {path} {body:?} → {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{v}"
        );
        if let Some(field) = field {
            assert_eq!(v["error"]["field"], field, "{method} {path} {body:?} → {v}");
        }
    }
    // Bodies that are not JSON at all.
    for raw in [
        b"{".to_vec(),
        b"null".to_vec(),
        vec![0xff, 0xfe],
        b"{\"gate\": 1}".to_vec(),
        Vec::new(),
    ] {
        let (status, v) = c
            .raw("POST", "/v1/tasks", "application/json", raw.clone())
            .await;
        assert_eq!(status, 400, "{raw:?} → {v}");
        assert_eq!(v["error"]["code"], "invalid_argument");
    }
    // Too large: a 48 MiB webhook body, more than the connection buffers hold, so
    // the 413 reaches a client that is still sending only if the server reads on.
    // (Three times: without that reading, a reset wins most races, not all.)
    let big = json!({"gate": "g", "webhook": {"url": url, "body": "x".repeat(48 << 20)}});
    for _ in 0..3 {
        let (status, v) = c.send("POST", "/v1/tasks", Some(big.clone())).await;
        assert_eq!(status, 413, "{v}");
        assert_eq!(v["error"]["code"], "payload_too_large");
    }
    // Nothing malformed created a task.
    let (_, list) = c.send("GET", "/v1/tasks", None).await;
    assert_eq!(list["tasks"].as_array().map(Vec::len), Some(0), "{list}");
}

/// A task's `backoff` names what it changes; the rest is its gate's, and
/// where the two disagree (the task's `initial` above the gate's `max`),
/// what the task said wins. A schedule's occurrences get the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_backoff_takes_the_rest_from_its_gate() {
    let server = Server::start().await;
    let c = server.client();
    let sink = Sink::start().await;
    let mut g = gate_for(&sink, "10/s");
    g["retry"] = json!({
        "max_attempts": 5,
        "backoff": { "initial": "30s", "max": "6h", "multiplier": 4, "jitter": false },
    });
    c.put_gate("g", g).await;
    // The gate's own values, as the API writes durations.
    let (_, view) = c.send("GET", "/v1/gates/g", None).await;
    let gate = view["retry"]["backoff"].clone();
    let (_, other) = c
        .send(
            "PUT",
            "/v1/gates/durations",
            Some(json!({ "rate": "1/s", "allowed_hosts": [sink.host()], "retry": { "backoff": { "initial": "12h", "max": "12h" } } })),
        )
        .await;
    let twelve_hours = other["retry"]["backoff"]["initial"].clone();

    let backoff_of = |given: Value| {
        let mut task = webhook_task("g", &sink.url("/a"));
        task["delay"] = json!("1h");
        task["backoff"] = given;
        let c = &c;
        async move { c.create(task).await["backoff"].clone() }
    };
    let b = backoff_of(json!({ "multiplier": 3 })).await;
    assert_eq!(b["initial"], gate["initial"], "{b}");
    assert_eq!(b["max"], gate["max"], "{b}");
    assert_eq!(b["multiplier"], 3.0, "{b}");
    assert_eq!(b["jitter"], false, "{b}");

    let b = backoff_of(json!({ "initial": "12h" })).await;
    assert_eq!(b["initial"], twelve_hours, "{b}");
    assert_eq!(b["max"], twelve_hours, "the task's initial wins: {b}");
    assert_eq!(b["multiplier"], 4.0, "{b}");

    let b = backoff_of(json!({ "max": "1s" })).await;
    assert_eq!(b["max"], b["initial"], "the task's max wins: {b}");
    assert_ne!(b["max"], gate["initial"], "{b}");

    let (status, e) = c
        .send(
            "POST",
            "/v1/tasks",
            Some(json!({ "gate": "g", "webhook": { "url": sink.url("/a") }, "backoff": { "initial": "2m", "max": "1m" } })),
        )
        .await;
    assert_eq!(status, 400, "{e}");

    let (status, s) = c
        .send(
            "PUT",
            "/v1/schedules/partial",
            Some(json!({
                "every": "1h",
                "task": { "gate": "g", "webhook": { "url": sink.url("/s") }, "backoff": { "jitter": true } },
            })),
        )
        .await;
    assert!(status == 200 || status == 201, "{s}");
    let planned = c
        .task(s["current_task"].as_str().expect("the planned occurrence"))
        .await;
    let b = &planned["backoff"];
    assert_eq!(b["max"], gate["max"], "{planned}");
    assert_eq!(b["jitter"], true, "{planned}");
    // The schedule keeps what it said, not the gate's values of the day:
    // an occurrence made after the gate changed gets the gate's new ones.
    let mut g = gate_for(&sink, "10/s");
    g["retry"] =
        json!({ "backoff": { "initial": "30s", "max": "12h", "multiplier": 4, "jitter": false } });
    c.put_gate("g", g).await;
    for step in ["pause", "resume"] {
        let (status, v) = c
            .send("POST", &format!("/v1/schedules/partial/{step}"), None)
            .await;
        assert_eq!(status, 200, "{step}: {v}");
    }
    let (_, s) = c.send("GET", "/v1/schedules/partial", None).await;
    let planned = c
        .task(s["current_task"].as_str().expect("the planned occurrence"))
        .await;
    let b = &planned["backoff"];
    assert_eq!(b["max"], twelve_hours, "{planned}");
    assert_eq!(b["jitter"], true, "{planned}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_create_returns_the_first_task() {
    let server = Server::start().await;
    let c = server.client();
    let sink = Sink::start().await;
    c.put_gate("g", gate_for(&sink, "10/s")).await;
    let mut task = webhook_task("g", &sink.url("/a"));
    task["idempotency_key"] = json!("order-42");
    task["delay"] = json!("1h");
    let first = c.create(task.clone()).await;
    let (status, headers, second) = c.send_full("POST", "/v1/tasks", Some(task.clone())).await;
    assert_eq!(status, 200);
    assert_eq!(
        headers
            .get("idempotent-replayed")
            .map(|v| v.to_str().unwrap_or("")),
        Some("true")
    );
    assert_eq!(second["id"], first["id"]);
    // In a batch too, the key maps to the same task.
    let ids = c
        .batch(vec![task.clone(), webhook_task("g", &sink.url("/b"))])
        .await;
    assert_eq!(ids[0], first["id"].as_str().unwrap_or_default());
    assert_ne!(ids[1], ids[0]);
    let (_, list) = c.send("GET", "/v1/tasks?gate=g", None).await;
    assert_eq!(
        list["tasks"].as_array().map(Vec::len),
        Some(2),
        "one task per key: {list}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_batch_paging_and_gate_delete() {
    let server = Server::start().await;
    let c = server.client();
    let sink = Sink::start().await;
    c.put_gate("g", gate_for(&sink, "10/s")).await;
    let tasks: Vec<Value> = (0..25)
        .map(|i| {
            let mut t = webhook_task("g", &sink.url("/p"));
            t["delay"] = json!("1h");
            t["labels"] = json!({ "batch": if i % 2 == 0 { "even" } else { "odd" } });
            t
        })
        .collect();
    let ids = c.batch(tasks).await;
    assert_eq!(ids.len(), 25);
    // Paging, newest first, covers each task once.
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let path = if cursor.is_empty() {
            "/v1/tasks?limit=10".to_string()
        } else {
            format!("/v1/tasks?limit=10&cursor={cursor}")
        };
        let (status, page) = c.send("GET", &path, None).await;
        assert_eq!(status, 200);
        for t in page["tasks"].as_array().cloned().unwrap_or_default() {
            seen.push(t["id"].as_str().unwrap_or_default().to_string());
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = next.to_string(),
            None => break,
        }
    }
    let mut expected = ids.clone();
    expected.reverse();
    assert_eq!(seen, expected);
    let (_, odd) = c
        .send("GET", "/v1/tasks?label=batch:odd&limit=100", None)
        .await;
    assert_eq!(odd["tasks"].as_array().map(Vec::len), Some(12));

    let (status, cancelled) = c
        .send("DELETE", &format!("/v1/tasks/{}", ids[0]), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(cancelled["state"], "cancelled");
    let (status, again) = c
        .send("DELETE", &format!("/v1/tasks/{}", ids[0]), None)
        .await;
    assert_eq!(status, 409, "{again}");
    let gate = c.send("GET", "/v1/gates/g", None).await.1;
    assert_eq!(gate["backlog"], 24);
    assert_eq!(gate["counters"]["cancelled"], 1);

    let (status, v) = c.send("DELETE", "/v1/gates/g", None).await;
    assert_eq!(status, 409, "{v}");
    let (status, _) = c.send("DELETE", "/v1/gates/g?force=true", None).await;
    assert_eq!(status, 204);
    assert_eq!(c.task(&ids[1]).await["state"], "cancelled");
    assert_eq!(c.send("GET", "/v1/gates/g", None).await.0, 404);
    assert_eq!(sink.hits().len(), 0, "nothing was due");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness() {
    let server = Server::start().await;
    let c = server.client();
    assert_eq!(c.send("GET", "/healthz", None).await.0, 200);
    assert_eq!(c.send("GET", "/readyz", None).await.0, 200);
}

/// Every answer names its request: a fresh id each time, or the one a proxy
/// sent; error bodies carry the same id as the header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_carries_a_request_id() {
    let server = Server::start().await;
    let c = server.client();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..20 {
        let (status, headers, body) = c.send_full("GET", "/v1/gates/missing", None).await;
        assert_eq!(status, 404);
        let id = headers["x-request-id"].to_str().expect("ascii").to_string();
        assert_eq!(id.len(), 16, "{id}");
        assert_eq!(body["error"]["request_id"], id.as_str(), "{body}");
        assert!(seen.insert(id), "request ids repeat");
    }
    let (status, headers, _) = c.send_full("GET", "/healthz", None).await;
    assert_eq!(status, 200);
    assert!(headers.contains_key("x-request-id"));
    let given = reqwest::Client::new()
        .get(format!("{}/v1/gates/missing", server.url))
        .header("x-request-id", "from-the-proxy.42")
        .send()
        .await
        .expect("answer");
    assert_eq!(given.headers()["x-request-id"], "from-the-proxy.42");
    let body: Value = serde_json::from_str(&given.text().await.expect("body")).expect("json");
    assert_eq!(body["error"]["request_id"], "from-the-proxy.42");
    // Something that is not an id is replaced, never echoed.
    let odd = reqwest::Client::new()
        .get(format!("{}/v1/gates/missing", server.url))
        .header("x-request-id", "<script>")
        .send()
        .await
        .expect("answer");
    assert_ne!(odd.headers()["x-request-id"], "<script>");
}

/// The shared client (`sluice::client`, which the CLI and the bench use too)
/// decodes what the server answers into the wire views, and a refusal into
/// its status, message and field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_typed_client_reads_the_servers_answers() {
    let server = Server::start().await;
    let api = server.client().api().clone();
    let sink = Sink::start().await;
    let gate = api
        .put_gate("typed", &gate_for(&sink, "20/s"))
        .await
        .expect("gate");
    assert_eq!((gate.name.as_str(), gate.rate_per_s), ("typed", 20.0));
    assert_eq!(gate.allowed_hosts, vec![sink.host()]);
    let one = api
        .create_task(&webhook_task("typed", &sink.url("/one")))
        .await
        .expect("task");
    assert_eq!(one.gate, "typed");
    assert_eq!(
        one.max_attempts, gate.retry.max_attempts,
        "the gate's default"
    );
    let ids = api
        .create_tasks(&[
            webhook_task("typed", &sink.url("/a")),
            webhook_task("typed", &sink.url("/b")),
        ])
        .await
        .expect("batch");
    assert_eq!(ids.len(), 2);
    sink.wait_for(3, std::time::Duration::from_secs(10)).await;
    let read = api.task(&ids[1]).await.expect("read back");
    assert_eq!(read.id, ids[1]);
    assert_eq!(
        read.webhook.map(|w| w.url),
        Some(sink.url("/b")),
        "the view keeps the task's URL"
    );
    let refused = api
        .create_task(&webhook_task("nowhere", &sink.url("/x")))
        .await
        .expect_err("no such gate");
    assert_eq!(refused.status().map(|s| s.as_u16()), Some(400));
    match refused {
        sluice::client::ClientError::Refused { field, .. } => {
            assert_eq!(field.as_deref(), Some("gate"))
        }
        other => panic!("not a refusal: {other}"),
    }
    assert!(api.ready().await);
}
