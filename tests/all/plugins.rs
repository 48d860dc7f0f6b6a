//! WebAssembly plugins end to end: the registry (audit, immutability,
//! references), the example plugins against loopback services that play their
//! APIs, and the hostile ones, each of which must fail only its own attempt.
//!
//! The components are built from `plugins/` and `tests/plugins/` by
//! `scripts/build-plugins` (which `scripts/test` runs) into `target/plugins/`.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{Client, Hit, Reply, Server, Sink, max_in_window};

pub fn wasm(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/../target/plugins/{name}.wasm",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{path}: {e}; build the plugins first with scripts/build-plugins (scripts/test does)"
        )
    })
}

pub async fn push(client: &Client, name: &str, version: &str, file: &str) -> (u16, Value) {
    client
        .raw(
            "PUT",
            &format!("/v1/plugins/{name}/{version}"),
            "application/wasm",
            wasm(file),
        )
        .await
}

pub async fn push_ok(client: &Client, name: &str) {
    let (status, v) = push(client, name, "0.1.0", name).await;
    assert_eq!(status, 201, "upload {name}: {v}");
}

pub fn plugin_task(gate: &str, name: &str, input: Value) -> Value {
    json!({ "gate": gate, "plugin": { "name": name, "version": "0.1.0", "input": input } })
}

/// A gate open to the sink only, paced at `rate` with burst 1.
fn gate(sink: &Sink, rate: &str, timeout: &str) -> Value {
    json!({
        "rate": rate,
        "burst": 1,
        "concurrency": 10,
        "allowed_hosts": [sink.host()],
        "recovery": { "start": 1.0 },
        "timeout": timeout,
        "retry": { "max_attempts": 3, "backoff": { "initial": "100ms", "max": "1s", "jitter": false } },
    })
}

pub fn last_attempt(task: &Value) -> &Value {
    task["attempts"]
        .as_array()
        .and_then(|a| a.last())
        .expect("an attempt")
}

/// An attempt's log as text: the plugin's lines as `level: message`, the
/// host's notes as `[host] message`.
pub fn logs(attempt: &Value) -> String {
    attempt["logs"]
        .as_array()
        .map(|l| {
            l.iter()
                .map(|line| {
                    let message = line["message"].as_str().unwrap_or("");
                    match line["source"].as_str() {
                        Some("host") => format!("[host] {message}"),
                        _ => format!("{}: {message}", line["level"].as_str().unwrap_or("")),
                    }
                })
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn the_registry_audits_uploads_and_keeps_versions_immutable() {
    let server = Server::start().await;
    let c = server.client();

    let (status, v) = push(&c, "hibernate-idle", "0.1.0", "hibernate-idle").await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["name"], "hibernate-idle");
    assert_eq!(v["size"], wasm("hibernate-idle").len());
    assert_eq!(v["sha256"].as_str().map(str::len), Some(64));
    let imports: Vec<&str> = v["imports"]
        .as_array()
        .expect("imports")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        imports.contains(&"wasi:http/outgoing-handler@0.2.12"),
        "{v}"
    );
    assert!(imports.contains(&"sluice:task/log@0.1.0"), "{v}");

    // The same bytes again: nothing changes. Other bytes: versions are immutable.
    let (status, again) = push(&c, "hibernate-idle", "0.1.0", "hibernate-idle").await;
    assert_eq!((status, &again["sha256"]), (200, &v["sha256"]));
    let (status, e) = push(&c, "hibernate-idle", "0.1.0", "cleanup-stray").await;
    assert_eq!(status, 409, "{e}");
    assert_eq!(e["error"]["code"], "conflict");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("immutable"),
        "{e}"
    );

    let (status, e) = c
        .raw(
            "PUT",
            "/v1/plugins/junk/1.0.0",
            "application/wasm",
            b"\0asm\x01\0\0\0".to_vec(),
        )
        .await;
    assert_eq!(status, 400, "a core module is not a component: {e}");
    let (status, _) = c
        .raw(
            "PUT",
            "/v1/plugins/junk/1.0.0",
            "application/wasm",
            b"hello".to_vec(),
        )
        .await;
    assert_eq!(status, 400);
    let (status, e) = push(&c, "Bad_Name", "1.0.0", "hibernate-idle").await;
    assert_eq!((status, e["error"]["field"].as_str()), (400, Some("name")));
    let (status, e) = push(&c, "ok", "1.0", "hibernate-idle").await;
    assert_eq!(
        (status, e["error"]["field"].as_str()),
        (400, Some("version"))
    );
    let (status, e) = c
        .raw(
            "PUT",
            "/v1/plugins/big/1.0.0",
            "application/wasm",
            vec![0u8; (50 << 20) + 1],
        )
        .await;
    assert_eq!(status, 413, "{e}");

    let (status, list) = c.send("GET", "/v1/plugins", None).await;
    assert_eq!(status, 200);
    let names: Vec<&str> = list["plugins"]
        .as_array()
        .expect("plugins")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(
        names,
        ["hibernate-idle"],
        "refused uploads leave nothing behind"
    );

    // A task needs a plugin that exists; a plugin in use cannot be deleted.
    let sink = Sink::start().await;
    c.put_gate("apps", gate(&sink, "10/s", "5s")).await;
    let (status, e) = c
        .send(
            "POST",
            "/v1/tasks",
            Some(plugin_task("apps", "nope", json!({}))),
        )
        .await;
    assert_eq!(
        (status, e["error"]["field"].as_str()),
        (400, Some("plugin")),
        "{e}"
    );
    let mut later = plugin_task("apps", "hibernate-idle", json!({}));
    later["delay"] = json!("1h");
    let task = c.create(later).await;
    assert_eq!(task["plugin"]["name"], "hibernate-idle");
    assert!(task.get("webhook").is_none(), "{task}");
    let (status, one) = c
        .send("GET", "/v1/plugins/hibernate-idle/0.1.0", None)
        .await;
    assert_eq!((status, &one["references"]), (200, &json!(1)));
    let (status, e) = c
        .send("DELETE", "/v1/plugins/hibernate-idle/0.1.0", None)
        .await;
    assert_eq!(status, 409, "{e}");
    let id = task["id"].as_str().expect("id");
    let (status, _) = c.send("DELETE", &format!("/v1/tasks/{id}"), None).await;
    assert_eq!(status, 200);
    let (status, _) = c
        .send("DELETE", "/v1/plugins/hibernate-idle/0.1.0", None)
        .await;
    assert_eq!(status, 204);
    let (status, _) = c
        .send("GET", "/v1/plugins/hibernate-idle/0.1.0", None)
        .await;
    assert_eq!(status, 404);
}

/// A loopback service playing the apps API of `hibernate-idle`.
fn apps_api(sink: &Sink, now: jiff::Timestamp) {
    let old = (now - jiff::SignedDuration::from_hours(48)).to_string();
    let fresh = now.to_string();
    sink.behave(
        move |hit: &Hit, _| match (hit.method.as_str(), hit.path.as_str()) {
            ("GET", "/apps") => Reply::json(
                200,
                json!([
                    { "id": "a1", "last_active": old },
                    { "id": "a2", "last_active": old },
                    { "id": "a3", "last_active": old, "state": "hibernated" },
                    { "id": "a4", "last_active": fresh },
                    { "id": "a5", "last_active": old },
                    { "id": "gone", "last_active": old },
                ]),
            ),
            ("POST", "/apps/gone/hibernate") => Reply::status(404),
            ("POST", p) if p.ends_with("/hibernate") => Reply::json(200, json!({"ok": true})),
            _ => Reply::status(400),
        },
    );
}

#[tokio::test]
async fn hibernate_idle_pays_every_request_to_its_gate() {
    let mut server = Server::start().await;
    let c = server.client();
    push_ok(&c, "hibernate-idle").await;
    hibernate_idle(&c).await;
    server.stop().await;
}

/// `hibernate-idle` (whichever language it was written in) against its apps
/// API through a 5/s gate.
pub(crate) async fn hibernate_idle(c: &Client) {
    let sink = Sink::start().await;
    apps_api(&sink, jiff::Timestamp::now());
    // 5/s with burst 1: the five requests (one list, four hibernations) must
    // be spread over at least (5 - 1) / 5 s, the attempt's own start included.
    c.put_gate("apps", gate(&sink, "5/s", "10s")).await;
    let task = c
        .create(plugin_task(
            "apps",
            "hibernate-idle",
            json!({ "api": sink.url(""), "idle_after": "24h" }),
        ))
        .await;
    let id = task["id"].as_str().expect("id");
    let done = c.wait_state(id, "succeeded", Duration::from_secs(20)).await;
    let attempt = last_attempt(&done);
    let output: Value = serde_json::from_str(attempt["response"].as_str().expect("output"))
        .expect("output is JSON");
    assert_eq!(
        output,
        json!({ "apps": 6, "idle": 4, "hibernated": 3, "skipped": 1 })
    );
    assert!(
        logs(attempt).contains("info: hibernated a1"),
        "{}",
        logs(attempt)
    );

    let hits = sink.hits();
    let paths: Vec<&str> = hits.iter().map(|h| h.path.as_str()).collect();
    assert_eq!(paths[0], "/apps");
    assert_eq!(hits.len(), 5, "{paths:?}");
    let times: Vec<Instant> = hits.iter().map(|h| h.at).collect();
    // 200 ms apart by the gate (the attempt's start took the first token);
    // at the sink, with the loopback's jitter, at least half that.
    assert!(
        max_in_window(&times, Duration::from_millis(100)) <= 1,
        "{times:?}"
    );
    let span = times[4].duration_since(times[0]);
    assert!(
        span >= Duration::from_millis(750),
        "5 requests at 5/s took only {span:?}"
    );
}

#[tokio::test]
async fn cleanup_stray_retries_after_the_api_fails_then_finishes() {
    let server = Server::start().await;
    let c = server.client();
    push_ok(&c, "cleanup-stray").await;
    cleanup_stray(&c).await;
}

/// `cleanup-stray` against a cloud API whose first listing fails.
pub(crate) async fn cleanup_stray(c: &Client) {
    let sink = Sink::start().await;
    sink.behave(|hit: &Hit, i| match (hit.method.as_str(), hit.path.as_str()) {
        // The first listing fails: the whole task retries.
        ("GET", "/instances") if i == 0 => Reply::status(500),
        ("GET", "/instances") => Reply::json(
            200,
            json!([
                { "id": "i-1", "tags": { "owner": "team-a" } },
                { "id": "i-2" },
                { "id": "i-3", "tags": {} },
                { "id": "i-4", "tags": { "owner": "team-b" }, "expires_at": "2020-01-01T00:00:00Z" },
            ]),
        ),
        ("DELETE", "/instances/i-3") => Reply::status(404),
        ("DELETE", _) => Reply::status(204),
        _ => Reply::status(400),
    });
    c.put_gate("cloud", gate(&sink, "50/s", "10s")).await;
    let task = c
        .create(plugin_task(
            "cloud",
            "cleanup-stray",
            json!({ "api": sink.url(""), "retry_delay": "200ms" }),
        ))
        .await;
    let id = task["id"].as_str().expect("id");
    let done = c.wait_state(id, "succeeded", Duration::from_secs(20)).await;
    let attempts = done["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 2, "{done}");
    assert_eq!(attempts[0]["outcome"], "failed");
    assert!(
        attempts[0]["error"].as_str().unwrap_or("").contains("500"),
        "{}",
        attempts[0]
    );
    let output: Value =
        serde_json::from_str(attempts[1]["response"].as_str().expect("output")).expect("JSON");
    assert_eq!(
        output,
        json!({ "instances": 4, "strays": 3, "deleted": 2, "already_gone": 1, "dry_run": false })
    );
    let deletes: Vec<String> = sink
        .hits()
        .iter()
        .filter(|h| h.method == "DELETE")
        .map(|h| h.path.clone())
        .collect();
    assert_eq!(deletes.len(), 3, "{deletes:?}");
}

#[tokio::test]
async fn charge_invoice_succeeds_with_its_receipt_or_fails_for_good() {
    let server = Server::start().await;
    let c = server.client();
    push_ok(&c, "charge-invoice").await;
    charge_invoice(&c).await;
}

/// `charge-invoice` through each of its outcomes: paid with a receipt, a
/// busy API retried after its Retry-After, a decline failed for good.
pub(crate) async fn charge_invoice(c: &Client) {
    let sink = Sink::start().await;
    let busy = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let still_busy = busy.clone();
    sink.behave(move |hit: &Hit, _| {
        let body: Value = serde_json::from_slice(&hit.body).unwrap_or(Value::Null);
        match (hit.method.as_str(), hit.path.as_str()) {
            ("POST", "/v1/charges") if body["invoice"] == "inv_declined" => {
                Reply::json(402, json!({ "decline_code": "insufficient_funds" }))
            }
            // Busy once: the plugin asks for a retry after the Retry-After.
            ("POST", "/v1/charges")
                if body["invoice"] == "inv_busy"
                    && still_busy.swap(false, std::sync::atomic::Ordering::SeqCst) =>
            {
                Reply::status(503).header("retry-after", "1")
            }
            ("POST", "/v1/charges") => {
                Reply::json(201, json!({ "id": "ch_1", "status": "succeeded" }))
            }
            ("POST", "/receipts") => Reply::ok(),
            _ => Reply::status(400),
        }
    });
    c.put_gate("payments", gate(&sink, "50/s", "10s")).await;
    let input = |invoice: &str| {
        json!({
            "api": sink.url(""),
            "invoice": invoice,
            "amount_cents": 1999,
            "currency": "eur",
            "receipt": { "gate": "payments", "url": sink.url("/receipts") },
        })
    };
    let paid = c
        .create(plugin_task("payments", "charge-invoice", input("inv_42")))
        .await;
    let declined = c
        .create(plugin_task(
            "payments",
            "charge-invoice",
            input("inv_declined"),
        ))
        .await;
    let retried = c
        .create(plugin_task("payments", "charge-invoice", input("inv_busy")))
        .await;
    let paid_id = paid["id"].as_str().expect("id");
    let declined_id = declined["id"].as_str().expect("id");

    let done = c
        .wait_state(paid_id, "succeeded", Duration::from_secs(20))
        .await;
    let output: Value =
        serde_json::from_str(last_attempt(&done)["response"].as_str().expect("output"))
            .expect("JSON");
    assert_eq!(output, json!({ "charge": "ch_1", "status": "succeeded" }));
    // The receipt, created in the same commit as the success, is delivered.
    let mut receipt = None;
    for seen in 3..=6 {
        receipt = sink
            .wait_for(seen, Duration::from_secs(10))
            .await
            .into_iter()
            .find(|h| h.path == "/receipts");
        if receipt.is_some() {
            break;
        }
    }
    let receipt = receipt.expect("the receipt webhook arrives");
    let (_, listed) = c.send("GET", "/v1/tasks?gate=payments", None).await;
    let child = listed["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .find(|t| t["parent"] == paid_id)
        .expect("the receipt task names its parent")
        .clone();
    assert_eq!(receipt.task, child["id"].as_str().expect("id"));
    // The charge carried the task's idempotency key.
    let charge = sink
        .hits()
        .into_iter()
        .find(|h| h.path == "/v1/charges" && h.body.windows(6).any(|w| w == b"inv_42"))
        .expect("charge request");
    assert_eq!(
        charge.headers.get("idempotency-key").map(String::as_str),
        Some(paid_id)
    );

    // A 503 with Retry-After: the plugin's retry outcome, then success.
    let done = c
        .wait_state(
            retried["id"].as_str().expect("id"),
            "succeeded",
            Duration::from_secs(20),
        )
        .await;
    let attempts = done["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 2, "{done}");
    assert_eq!(attempts[0]["outcome"], "failed", "{done}");
    assert!(!busy.load(std::sync::atomic::Ordering::SeqCst));
    let first_end = attempts[0]["ended_at"]
        .as_str()
        .expect("ended")
        .parse::<jiff::Timestamp>();
    let second = attempts[1]["started_at"]
        .as_str()
        .expect("started")
        .parse::<jiff::Timestamp>();
    let waited = second
        .expect("time")
        .duration_since(first_end.expect("time"));
    assert!(
        waited >= jiff::SignedDuration::from_millis(900),
        "retried after {waited:?}, before the Retry-After"
    );

    let failed = c
        .wait_state(declined_id, "failed", Duration::from_secs(20))
        .await;
    let attempts = failed["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 1, "a decline is not retried: {failed}");
    assert_eq!(attempts[0]["outcome"], "rejected");
    assert!(
        attempts[0]["error"]
            .as_str()
            .unwrap_or("")
            .contains("card declined (insufficient_funds)"),
        "{}",
        attempts[0]
    );
}

/// A component of a few bytes that imports an interface the `sluice:task`
/// world does not grant (`evil:net/raw`, an instance of an empty type).
fn importing_evil() -> Vec<u8> {
    const NAME: &[u8] = b"evil:net/raw";
    let mut wasm = b"\0asm\x0d\0\x01\0".to_vec();
    // Type section: type 0 is `(instance)`.
    wasm.extend([0x07, 0x03, 0x01, 0x42, 0x00]);
    // Import section: `(import "evil:net/raw" (instance (type 0)))`.
    let mut import = vec![0x01, 0x00, NAME.len() as u8];
    import.extend(NAME);
    import.extend([0x05, 0x00]);
    wasm.extend([0x0a, import.len() as u8]);
    wasm.extend(import);
    wasm
}

/// An upload the audit refuses is refused on the names it declares,
/// before a byte of it is compiled.
#[tokio::test]
async fn an_upload_is_audited_before_it_is_compiled() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = Server::start_in(dir.path()).await;
    let c = server.client();
    let (status, e) = c
        .raw(
            "PUT",
            "/v1/plugins/evil/1.0.0",
            "application/wasm",
            importing_evil(),
        )
        .await;
    assert_eq!(status, 400, "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("evil:net/raw")),
        "{e}"
    );
    assert_eq!(
        server.running.as_ref().map(|r| r.plugin_compilations()),
        Some(0),
        "refused before it was compiled"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_restart_runs_stored_plugins_without_compiling_them_again() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = Server::start_in(dir.path()).await;
    let c = server.client();
    push_ok(&c, "hibernate-idle").await;
    assert_eq!(
        server.running.as_ref().map(|r| r.plugin_compilations()),
        Some(1)
    );
    server.stop().await;

    let mut server = Server::start_in(dir.path()).await;
    let c = server.client();
    let sink = Sink::start().await;
    apps_api(&sink, jiff::Timestamp::now());
    c.put_gate("apps", gate(&sink, "100/s", "10s")).await;
    let task = c
        .create(plugin_task(
            "apps",
            "hibernate-idle",
            json!({ "api": sink.url(""), "idle_after": "24h" }),
        ))
        .await;
    c.wait_state(
        task["id"].as_str().expect("id"),
        "succeeded",
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(
        server.running.as_ref().map(|r| r.plugin_compilations()),
        Some(0),
        "the stored artifact was used"
    );
    server.stop().await;
}

#[tokio::test]
async fn hostile_plugins_fail_only_their_own_attempt() {
    let mut server = Server::start().await;
    let c = server.client();
    for name in [
        "infinite-loop",
        "memory-bomb",
        "deep-recursion",
        "huge-output",
        "log-flood",
        "http-disallowed",
        "http-private",
        "imports-filesystem",
        "imports-sockets",
    ] {
        push_ok(&c, name).await;
    }
    // What imports-sockets tries to reach: a loopback listener that must
    // never see a connection.
    let bait = std::net::TcpListener::bind("127.0.0.1:0").expect("bait listener");
    bait.set_nonblocking(true).expect("nonblocking");
    let bait_addr = bait.local_addr().expect("addr").to_string();
    let sink = Sink::start().await;
    let mut hostile = gate(&sink, "50/s", "3s");
    hostile["retry"]["max_attempts"] = json!(1);
    c.put_gate("hostile", hostile).await;
    // Open to every public host, so only the address guard stands between the
    // plugin and loopback.
    c.put_gate(
        "public",
        json!({ "rate": "50/s", "allowed_hosts": [], "timeout": "5s", "retry": { "max_attempts": 1 } }),
    )
    .await;
    c.put_gate("calm", gate(&sink, "100/s", "5s")).await;

    let port = sink.addr.port();
    let cases = [
        ("hostile", "infinite-loop", json!({})),
        ("hostile", "memory-bomb", json!({})),
        ("hostile", "deep-recursion", json!({})),
        (
            "hostile",
            "huge-output",
            json!({ "bytes": 4 << 20, "into": "output" }),
        ),
        (
            "hostile",
            "huge-output",
            json!({ "bytes": 4 << 20, "into": "fail" }),
        ),
        ("hostile", "log-flood", json!({})),
        // Loopback, but another address than the one the gate names.
        (
            "hostile",
            "http-disallowed",
            json!({ "url": format!("http://127.0.0.2:{port}/") }),
        ),
        (
            "public",
            "http-private",
            json!({ "urls": [
                format!("http://127.0.0.1:{port}/"),
                format!("http://[::1]:{port}/"),
                format!("http://localhost:{port}/"),
            ] }),
        ),
        // The file system and sockets are linked (language runtimes import
        // them) but inert: nothing to open, nothing to connect.
        ("hostile", "imports-filesystem", json!("/etc/passwd")),
        ("hostile", "imports-sockets", json!(bait_addr)),
    ];
    let mut ids = Vec::new();
    for (gate, name, input) in &cases {
        ids.push(c.create(plugin_task(gate, name, input.clone())).await["id"].clone());
    }
    // Meanwhile ordinary webhooks carry on.
    let calm: Vec<Value> = (0..20)
        .map(|i| json!({ "gate": "calm", "webhook": { "url": sink.url(&format!("/calm/{i}")) } }))
        .collect();
    let calm_ids = c.batch(calm).await;

    let mut ended = Vec::new();
    for id in &ids {
        let id = id.as_str().expect("id");
        let start = sluice::clock::instant();
        let task = loop {
            let t = c.task(id).await;
            if matches!(t["state"].as_str(), Some("succeeded" | "failed")) {
                break t;
            }
            assert!(start.elapsed() < Duration::from_secs(30), "{t}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        ended.push(task);
    }
    let summary = |t: &Value| {
        let a = last_attempt(t);
        format!(
            "{} {} error={} response={} logs={}",
            t["plugin"]["name"],
            a["outcome"],
            a["error"],
            a["response"].as_str().map_or(0, str::len),
            a["logs"].as_array().map_or(0, Vec::len)
        )
    };
    let error = |t: &Value| last_attempt(t)["error"].as_str().unwrap_or("").to_string();

    let [
        looping,
        bomb,
        recursion,
        output,
        reason,
        flood,
        disallowed,
        private,
        file,
        socket,
    ] = ended.as_slice()
    else {
        panic!("ten cases");
    };
    assert_eq!(looping["state"], "failed");
    assert_eq!(
        last_attempt(looping)["outcome"],
        "timeout",
        "{}",
        summary(looping)
    );
    assert!(
        error(looping).starts_with("timed out after 3s"),
        "{}",
        summary(looping)
    );

    assert_eq!(bomb["state"], "failed", "{}", summary(bomb));
    assert!(error(bomb).starts_with("trap:"), "{}", summary(bomb));
    assert_eq!(recursion["state"], "failed", "{}", summary(recursion));
    assert!(
        error(recursion).contains("stack overflow"),
        "{}",
        summary(recursion)
    );

    // Huge output and reasons are kept capped, never whole.
    assert_eq!(output["state"], "succeeded", "{}", summary(output));
    assert_eq!(
        last_attempt(output)["response"].as_str().map(str::len),
        Some(4096)
    );
    assert_eq!(reason["state"], "failed", "{}", summary(reason));
    assert_eq!(error(reason).len(), 4096, "{}", summary(reason));

    // A flood of log lines keeps a capped share and says what it dropped.
    let flood_log = logs(last_attempt(flood));
    assert!(
        flood_log.len() <= 20 * 1024,
        "{} bytes kept",
        flood_log.len()
    );
    assert!(
        flood_log.contains("more lines dropped"),
        "{}",
        summary(flood)
    );

    // Outgoing requests outside the gate are refused before they leave, and
    // the refusal is in the attempt's history.
    assert_eq!(disallowed["state"], "succeeded", "{}", summary(disallowed));
    assert!(
        logs(last_attempt(disallowed)).contains("not in gate hostile's allowed_hosts"),
        "{}",
        logs(last_attempt(disallowed))
    );
    assert_eq!(private["state"], "succeeded", "{}", summary(private));
    let refused = logs(last_attempt(private));
    assert!(
        refused.matches("denied").count() + refused.matches("failed").count() >= 3,
        "{refused}"
    );
    assert_eq!(file["state"], "failed", "{}", summary(file));
    assert_eq!(last_attempt(file)["outcome"], "rejected");
    assert!(
        error(file).starts_with("reading a file"),
        "{}",
        summary(file)
    );
    assert!(!error(file).contains("root:"), "{}", summary(file));
    assert_eq!(socket["state"], "failed", "{}", summary(socket));
    assert_eq!(last_attempt(socket)["outcome"], "rejected");
    assert!(
        error(socket).starts_with("connecting"),
        "{}",
        summary(socket)
    );
    assert!(
        matches!(bait.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "a plugin opened a TCP connection"
    );
    assert!(
        sink.hits().iter().all(|h| h.path.starts_with("/calm/")),
        "no hostile request reached the sink: {:?}",
        sink.hits().iter().map(|h| &h.path).collect::<Vec<_>>()
    );

    for id in &calm_ids {
        c.wait_state(id, "succeeded", Duration::from_secs(20)).await;
    }
    let (status, _) = c.send("GET", "/healthz", None).await;
    assert_eq!(status, 200);
    server.stop().await;
}

/// A gate's circuit hears of its endpoint: from a plugin, through the
/// plugin's requests, not its own outcome. Plugins that trap fail their own
/// attempts and leave the gate open for the webhooks beside them; a plugin
/// whose requests meet 500s trips it, though each of its attempts succeeded.
#[tokio::test]
async fn the_circuit_counts_a_plugins_requests_not_its_faults() {
    let mut server = Server::start().await;
    let c = server.client();
    push_ok(&c, "memory-bomb").await;
    push_ok(&c, "host-abuse").await;
    let sink = Sink::start().await;
    sink.behave(|hit, _| match hit.path.as_str() {
        "/down" => Reply::status(500),
        "/hang" => Reply::ok().delayed(Duration::from_secs(30)),
        _ => Reply::ok(),
    });
    let mut shared = gate(&sink, "100/s", "10s");
    shared["retry"]["max_attempts"] = json!(1);
    shared["circuit"] = json!({ "failures": 2, "cooldown": "1h" });
    c.put_gate("shared", shared).await;
    let state = || async { c.send("GET", "/v1/gates/shared", None).await.1["state"].clone() };
    let within = Duration::from_secs(30);

    for _ in 0..3 {
        let t = c
            .create(plugin_task("shared", "memory-bomb", json!({})))
            .await;
        let t = c.wait_done(t["id"].as_str().expect("id"), within).await;
        assert_eq!(t["state"], "failed", "{t}");
    }
    assert_eq!(state().await, "open", "three traps tripped the gate");
    let hook = c
        .create(json!({ "gate": "shared", "webhook": { "url": sink.url("/up") } }))
        .await;
    c.wait_state(hook["id"].as_str().expect("id"), "succeeded", within)
        .await;

    for _ in 0..2 {
        let t = c
            .create(plugin_task(
                "shared",
                "host-abuse",
                json!({ "mode": "fetch", "authority": sink.host(), "path": "/down" }),
            ))
            .await;
        let t = c.wait_done(t["id"].as_str().expect("id"), within).await;
        assert_eq!(t["state"], "succeeded", "{t}");
        assert!(
            last_attempt(&t)["response"]
                .as_str()
                .is_some_and(|r| r.contains("500")),
            "{t}"
        );
    }
    assert_eq!(state().await, "tripped", "two 500s left the gate open");

    // A GET the endpoint never answers, by the attempt's deadline, is the
    // endpoint's failure as a webhook's timeout is.
    let mut hangs = gate(&sink, "100/s", "1s");
    hangs["retry"]["max_attempts"] = json!(1);
    hangs["circuit"] = json!({ "failures": 2, "cooldown": "1h" });
    c.put_gate("hangs", hangs).await;
    for _ in 0..2 {
        let t = c
            .create(plugin_task(
                "hangs",
                "host-abuse",
                json!({ "mode": "fetch", "authority": sink.host(), "path": "/hang" }),
            ))
            .await;
        let t = c.wait_done(t["id"].as_str().expect("id"), within).await;
        assert_eq!(t["state"], "failed", "{t}");
    }
    let (_, g) = c.send("GET", "/v1/gates/hangs", None).await;
    assert_eq!(
        g["state"], "tripped",
        "two hanging GETs left the gate open: {g}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_burst_of_plugin_requests_is_held_to_the_gate() {
    let server = Server::start().await;
    let c = server.client();
    push_ok(&c, "request-burst").await;
    let sink = Sink::start().await;
    sink.behave(|_, _| Reply::ok().delayed(Duration::from_millis(50)));
    c.put_gate(
        "burst",
        json!({
            "rate": "10/s",
            "burst": 2,
            "concurrency": 3,
            "allowed_hosts": [sink.host()],
            "recovery": { "start": 1.0 },
            "timeout": "20s",
        }),
    )
    .await;
    let task = c
        .create(plugin_task(
            "burst",
            "request-burst",
            json!({ "url": sink.url("/hit"), "count": 20 }),
        ))
        .await;
    let done = c
        .wait_state(
            task["id"].as_str().expect("id"),
            "succeeded",
            Duration::from_secs(30),
        )
        .await;
    let output: Value =
        serde_json::from_str(last_attempt(&done)["response"].as_str().expect("output"))
            .expect("JSON");
    assert_eq!(output["ok"], 20, "{output}");
    let times: Vec<Instant> = sink.hits().iter().map(|h| h.at).collect();
    assert_eq!(times.len(), 20);
    // Never more than burst + rate × T in any window (the attempt's start took
    // one token too), never more than the concurrency in flight.
    for (width, bound) in [(500, 7), (1_000, 12)] {
        let seen = max_in_window(&times, Duration::from_millis(width));
        assert!(seen <= bound, "{seen} requests within {width} ms");
    }
    assert!(
        sink.max_in_flight() <= 3,
        "{} in flight",
        sink.max_in_flight()
    );
    let elapsed = times
        .iter()
        .max()
        .expect("hits")
        .duration_since(*times.iter().min().expect("hits"));
    assert!(
        elapsed >= Duration::from_millis(1_650),
        "20 requests at 10/s took {elapsed:?}"
    );
}

/// A plugin's own wait for an answer (the SDK's `with_timeout`) holds: the
/// request times out for the plugin, which decides what that means, long
/// before the attempt's deadline (the host once ignored it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_request_times_out_when_the_plugin_says() {
    let server = Server::start().await;
    let c = server.client();
    push_ok(&c, "http-disallowed").await;
    let sink = Sink::start().await;
    sink.behave(|_, _| Reply::ok().delayed(Duration::from_secs(30)));
    let mut body = gate(&sink, "50/s", "60s");
    body["retry"]["max_attempts"] = json!(1);
    c.put_gate("waits", body).await;
    let task = c
        .create(plugin_task(
            "waits",
            "http-disallowed",
            json!({ "url": sink.url("/hang"), "timeout_ms": 500 }),
        ))
        .await;
    let t = c
        .wait_done(task["id"].as_str().expect("id"), Duration::from_secs(20))
        .await;
    // The plugin fails for good on a timeout (`Outcome::Fail`): its own
    // verdict, seconds before the attempt's 60 s deadline.
    gave_up_in_time(&t, "timed out");
}

/// The plugin ended its attempt itself (`Outcome::Fail`, naming `why`)
/// within 10 s, well before the attempt's deadline.
fn gave_up_in_time(t: &Value, why: &str) {
    let attempt = last_attempt(t);
    assert_eq!(attempt["outcome"], "rejected", "{t}");
    assert!(
        attempt["error"].as_str().is_some_and(|e| e.contains(why)),
        "{t}"
    );
    assert!(attempt["latency_ms"].as_u64() < Some(10_000), "{t}");
}

/// The plugin's wait holds between pieces of the body too: an answer whose
/// head came at once and whose body then stalls ends the plugin's wait
/// when it says, not at the attempt's deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_times_out_when_the_plugin_says() {
    let server = Server::start().await;
    let c = server.client();
    push_ok(&c, "http-disallowed").await;
    // The head and two bytes of the body, then nothing more for 30 s.
    let (addr, endpoint) = crate::support::stalled_body(Duration::from_secs(30)).await;
    c.put_gate(
        "stalls",
        json!({ "rate": "50/s", "allowed_hosts": [addr.to_string()], "timeout": "60s", "retry": { "max_attempts": 1 } }),
    )
    .await;
    let task = c
        .create(plugin_task(
            "stalls",
            "http-disallowed",
            json!({ "url": format!("http://{addr}/stall"), "timeout_ms": 500 }),
        ))
        .await;
    let t = c
        .wait_done(task["id"].as_str().expect("id"), Duration::from_secs(20))
        .await;
    // The plugin's verdict on its failed request (the SDK reads the body's
    // error as a transport failure naming the read timeout).
    gave_up_in_time(&t, "read timeout");
    endpoint.abort();
}

#[tokio::test]
async fn the_deadline_covers_time_spent_waiting_on_the_network() {
    let server = Server::start().await;
    let c = server.client();
    push_ok(&c, "http-disallowed").await;
    let sink = Sink::start().await;
    sink.behave(|hit: &Hit, _| match hit.path.as_str() {
        // Never answers within the task's deadline.
        "/hang" => Reply::ok().delayed(Duration::from_secs(30)),
        // A body past the host's 8 MiB cap.
        "/huge" => {
            let mut reply = Reply::ok();
            reply.body = Some("x".repeat(9 << 20));
            reply
        }
        _ => Reply::ok(),
    });
    let mut body = gate(&sink, "50/s", "1s");
    body["concurrency"] = json!(1);
    body["retry"]["max_attempts"] = json!(1);
    c.put_gate("net", body).await;

    let started = sluice::clock::instant();
    let hang = c
        .create(plugin_task(
            "net",
            "http-disallowed",
            json!({ "url": sink.url("/hang") }),
        ))
        .await;
    let hung = c
        .wait_state(
            hang["id"].as_str().expect("id"),
            "failed",
            Duration::from_secs(20),
        )
        .await;
    assert_eq!(last_attempt(&hung)["outcome"], "timeout", "{hung}");
    // Its 1 s timeout, not the endpoint's 30 s, with room for a slow machine.
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );

    // The request's slot came back with the attempt: with concurrency 1 the
    // next task runs, and gets an error for a body over the cap.
    let huge = c
        .create(plugin_task(
            "net",
            "http-disallowed",
            json!({ "url": sink.url("/huge") }),
        ))
        .await;
    let capped = c
        .wait_state(
            huge["id"].as_str().expect("id"),
            "failed",
            Duration::from_secs(10),
        )
        .await;
    let error = last_attempt(&capped)["error"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(
        error.starts_with("not denied:") && !error.contains("answered 200"),
        "{error}"
    );
}

#[tokio::test]
async fn a_schedule_runs_a_plugin_and_holds_it_in_the_registry() {
    let server = Server::start().await;
    let c = server.client();
    push_ok(&c, "cleanup-stray").await;
    let sink = Sink::start().await;
    sink.behave(|hit: &Hit, _| match hit.method.as_str() {
        "GET" => Reply::json(200, json!([])),
        _ => Reply::status(400),
    });
    c.put_gate("cloud", gate(&sink, "50/s", "5s")).await;
    let schedule = json!({
        "every": "1s",
        "task": {
            "gate": "cloud",
            "plugin": { "name": "cleanup-stray", "version": "0.1.0", "input": { "api": sink.url("") } },
        },
    });
    let (status, v) = c.send("PUT", "/v1/schedules/sweep", Some(schedule)).await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["task"]["plugin"]["name"], "cleanup-stray");
    let hits = sink.wait_for(2, Duration::from_secs(10)).await;
    assert!(hits.iter().all(|h| h.path == "/instances"), "{hits:?}");

    let (status, e) = c
        .send("DELETE", "/v1/plugins/cleanup-stray/0.1.0", None)
        .await;
    assert_eq!(status, 409, "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("sweep"),
        "{e}"
    );

    // A schedule for a plugin that is not there is refused up front.
    let (status, e) = c
        .send(
            "PUT",
            "/v1/schedules/ghost",
            Some(json!({ "every": "1m", "task": { "gate": "cloud", "plugin": { "name": "ghost", "version": "1.0.0" } } })),
        )
        .await;
    assert_eq!(
        (status, e["error"]["field"].as_str()),
        (400, Some("task.plugin")),
        "{e}"
    );
}

/// Plugin attempts waiting on the network hold no thread: a thousand of them
/// wait on a slow endpoint at once, on a server whose runtime has two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_plugin_attempts_wait_on_http_at_once() {
    let server = Server::start().await;
    let c = server.client();
    push_ok(&c, "request-burst").await;
    let sink = Sink::start().await;
    // Each is held until 10 s after the first came: all that come by then
    // are in flight at once, however slowly a loaded machine starts them.
    let first = std::sync::Arc::new(std::sync::OnceLock::new());
    sink.behave(move |hit, _| {
        let until = *first.get_or_init(|| hit.at) + Duration::from_secs(10);
        Reply::ok().delayed(until.saturating_duration_since(hit.at))
    });
    c.put_gate(
        "wide",
        json!({
            "rate": "100000/s",
            "burst": 2000,
            "concurrency": 2000,
            "allowed_hosts": [sink.host()],
            "recovery": { "start": 1.0 },
            "timeout": "60s",
        }),
    )
    .await;
    let n = 1_000;
    let tasks: Vec<Value> = (0..n)
        .map(|_| {
            plugin_task(
                "wide",
                "request-burst",
                json!({ "url": sink.url("/slow"), "count": 1 }),
            )
        })
        .collect();
    let ids = c.batch(tasks).await;
    sink.wait_for(n, Duration::from_secs(60)).await;
    assert!(
        sink.max_in_flight() >= n * 9 / 10,
        "only {} requests in flight at once",
        sink.max_in_flight()
    );
    for id in ids.iter().step_by(100) {
        c.wait_state(id, "succeeded", Duration::from_secs(60)).await;
    }
}

/// The most a memory-bomb attempt said it held before it ran out.
pub(crate) fn held_mib(attempt: &Value) -> u64 {
    logs(attempt)
        .lines()
        .filter_map(|l| l.strip_prefix("info: holding "))
        .filter_map(|l| l.strip_suffix(" MiB"))
        .filter_map(|n| n.parse().ok())
        .max()
        .unwrap_or(0)
}

#[tokio::test]
async fn a_plugin_gets_the_memory_it_asked_for_and_no_more() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start_with(dir.path(), |config| config.plugin_memory_max = 192).await;
    let c = server.client();
    let upload = |version: &str, memory: &str| {
        let path = if memory.is_empty() {
            format!("/v1/plugins/memory-bomb/{version}")
        } else {
            format!("/v1/plugins/memory-bomb/{version}?memory={memory}")
        };
        let c = c.clone();
        async move {
            c.raw("PUT", &path, "application/wasm", wasm("memory-bomb"))
                .await
        }
    };
    let (status, v) = upload("1.0.0", "").await;
    assert_eq!((status, &v["memory_mib"]), (201, &json!(64)), "{v}");
    let (status, v) = upload("2.0.0", "160MiB").await;
    assert_eq!((status, &v["memory_mib"]), (201, &json!(160)), "{v}");
    // Over the server's cap, under the default, or not a size: refused,
    // naming the parameter.
    for (memory, says) in [
        ("256", "64MiB to 192MiB"),
        ("1GiB", "64MiB to 192MiB"),
        ("32MiB", "64MiB to 192MiB"),
        ("lots", "a size in MiB"),
    ] {
        let (status, e) = upload("3.0.0", memory).await;
        assert_eq!(status, 400, "{memory}: {e}");
        assert_eq!(e["error"]["field"], "memory", "{e}");
        let message = e["error"]["message"].as_str().unwrap_or("");
        assert!(message.contains(says), "{memory}: {message}");
    }
    // Memory is part of a version, like its bytes.
    let (status, e) = upload("1.0.0", "128").await;
    assert_eq!(status, 409, "{e}");

    c.put_gate(
        "mem",
        json!({ "rate": "10/s", "timeout": "20s", "retry": { "max_attempts": 1 } }),
    )
    .await;
    let mut held = Vec::new();
    for version in ["1.0.0", "2.0.0"] {
        let task = c
            .create(
                json!({ "gate": "mem", "plugin": { "name": "memory-bomb", "version": version } }),
            )
            .await;
        let done = c
            .wait_state(
                task["id"].as_str().expect("id"),
                "failed",
                Duration::from_secs(30),
            )
            .await;
        let attempt = last_attempt(&done);
        assert!(
            attempt["error"].as_str().unwrap_or("").starts_with("trap:"),
            "{attempt}"
        );
        held.push(held_mib(attempt));
    }
    // 64 MiB holds at most 63 chunks beside the runtime's own; 160 MiB more
    // than 64 and fewer than 160.
    assert!((48..64).contains(&held[0]), "{held:?}");
    assert!((120..160).contains(&held[1]), "{held:?}");
}

/// Plugins that spin take CPU from nothing else: a burst of requests through
/// a burst-1 gate keeps its exact pace at the endpoint while three attempts
/// loop without end beside it. (Guests run on their own threads; the
/// requests, the pacer and the driver on the server's.)
#[tokio::test]
async fn spinning_plugins_do_not_bunch_other_requests() {
    let server = Server::start().await;
    let c = server.client();
    push_ok(&c, "request-burst").await;
    push_ok(&c, "infinite-loop").await;
    let sink = Sink::start().await;
    c.put_gate(
        "paced",
        json!({ "rate": "10/s", "burst": 1, "concurrency": 3, "allowed_hosts": [sink.host()],
                "recovery": { "start": 1.0 }, "timeout": "20s" }),
    )
    .await;
    c.put_gate(
        "spin",
        json!({ "rate": "100/s", "concurrency": 10, "timeout": "4s",
                "retry": { "max_attempts": 1 } }),
    )
    .await;
    let spinning = c
        .batch(
            (0..3)
                .map(|_| plugin_task("spin", "infinite-loop", json!({})))
                .collect(),
        )
        .await;
    // Once they spin, the burst.
    let start = sluice::clock::instant();
    while c.send("GET", "/v1/gates/spin", None).await.1["in_flight"] != 3 {
        assert!(start.elapsed() < Duration::from_secs(5), "the loops start");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let task = c
        .create(plugin_task(
            "paced",
            "request-burst",
            json!({ "url": sink.url("/hit"), "count": 10 }),
        ))
        .await;
    c.wait_state(
        task["id"].as_str().expect("id"),
        "succeeded",
        Duration::from_secs(30),
    )
    .await;
    let times: Vec<Instant> = sink.hits().iter().map(|h| h.at).collect();
    assert_eq!(times.len(), 10);
    let gaps: Vec<u128> = times
        .windows(2)
        .map(|w| w[1].duration_since(w[0]).as_millis())
        .collect();
    // 100 ms apart by the gate; at the sink, with the loopback's jitter
    // (and three spinning plugins on two cores), at least half that. A
    // burst past the gate comes all at once.
    assert!(
        max_in_window(&times, Duration::from_millis(50)) <= 1,
        "gaps {gaps:?} ms"
    );
    for id in &spinning {
        let t = c.task(id).await;
        assert_ne!(t["state"], "succeeded", "{t}");
    }
}
