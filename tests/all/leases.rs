//! Long-running work on real loopback endpoints: 202 with a lease, heartbeats,
//! completion with next steps, lease expiry, stale tokens, concurrency held by
//! open leases, and leases that outlive a `kill -9`.

use std::time::Duration;

use serde_json::{Value, json};

use crate::crash::{free_port, spawn_server, wait_ready};
use crate::support::{Client, Hit, Reply, Server, Sink, gate_for, webhook_task};

fn leased(lease: &str) -> Reply {
    Reply::status(202).header("sluice-lease", lease)
}

fn token(hit: &Hit) -> String {
    hit.headers
        .get("sluice-completion-token")
        .cloned()
        .unwrap_or_default()
}

async fn report(c: &Client, id: &str, what: &str, body: Value) -> (u16, Value) {
    c.send("POST", &format!("/v1/tasks/{id}/{what}"), Some(body))
        .await
}

/// A three-step workflow: the first step is accepted with 202, heartbeats twice,
/// then completes with two next tasks, which both run and record their parent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_work_heartbeats_and_completes_with_next_steps() {
    let server = Server::start().await;
    let c = server.client();
    let sink = Sink::start().await;
    sink.behave(|hit, _| {
        if hit.headers.get("x-step").is_some_and(|s| s == "1") {
            leased("10s")
        } else {
            Reply::ok()
        }
    });
    c.put_gate("g", gate_for(&sink, "100/s")).await;
    let mut first = webhook_task("g", &sink.url("/provision"));
    first["webhook"]["headers"] = json!({ "x-step": "1" });
    let t = c.create(first).await;
    let id = t["id"].as_str().unwrap_or_default().to_string();
    let hits = sink.wait_for(1, Duration::from_secs(5)).await;
    let tok = token(&hits[0]);
    assert_eq!(tok.len(), 64, "a 256-bit token");
    // The attempt stays running while leased.
    let start = sluice::clock::instant();
    loop {
        let t = c.task(&id).await;
        if t["attempts"][0]["outcome"] == "leased" {
            assert_eq!(t["state"], "running");
            assert!(t["attempts"][0]["lease_until"].is_string());
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "never leased: {t}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for pct in [30, 70] {
        let (status, v) = report(
            &c,
            &id,
            "heartbeat",
            json!({ "token": tok, "progress": { "pct": pct } }),
        )
        .await;
        assert_eq!(status, 200, "{v}");
    }
    let t = c.task(&id).await;
    assert_eq!(t["attempts"][0]["progress"]["pct"], 70);
    let next = json!([
        { "gate": "g", "webhook": { "url": sink.url("/dns") } },
        { "gate": "g", "webhook": { "url": sink.url("/email") } },
    ]);
    let (status, v) = report(
        &c,
        &id,
        "complete",
        json!({ "token": tok, "output": { "account": 7 }, "next": next }),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["state"], "succeeded");
    let hits = sink.wait_for(3, Duration::from_secs(5)).await;
    let paths: Vec<String> = hits.iter().map(|h| h.task.clone()).collect();
    for h in &hits[1..] {
        let child = c
            .wait_state(&h.task, "succeeded", Duration::from_secs(5))
            .await;
        assert_eq!(child["parent"], id.as_str(), "{child}");
    }
    assert_eq!(paths.len(), 3);
    // Repeating the completion is harmless.
    let (status, _) = report(&c, &id, "complete", json!({ "token": tok })).await;
    assert_eq!(status, 200);
    assert_eq!(sink.hits().len(), 3, "no duplicate next steps");
    let done = c.task(&id).await;
    assert_eq!(done["attempts"][0]["response"], r#"{"account":7}"#);
}

/// Nobody reports back: the lease runs out, the attempt counts as timed out and
/// the task is retried. The first attempt's token is then stale: refused with
/// 409, and nothing changes; the current token works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_expiry_retries_and_stale_tokens_are_refused() {
    let server = Server::start().await;
    let c = server.client();
    let sink = Sink::start().await;
    // The second attempt's lease outlasts the reports below.
    sink.behave(|_, i| leased(if i == 0 { "700ms" } else { "60s" }));
    c.put_gate("g", gate_for(&sink, "100/s")).await;
    let t = c.create(webhook_task("g", &sink.url("/long"))).await;
    let id = t["id"].as_str().unwrap_or_default().to_string();
    let hits = sink.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(hits[1].attempt, 2);
    assert!(
        hits[1].at.duration_since(hits[0].at) >= Duration::from_millis(700),
        "retried before the lease ran out"
    );
    let t = c.task(&id).await;
    assert_eq!(t["attempts"][0]["outcome"], "lease_expired", "{t}");
    let (old, new) = (token(&hits[0]), token(&hits[1]));
    assert_ne!(old, new);
    let (status, v) = report(&c, &id, "complete", json!({ "token": old })).await;
    assert_eq!(status, 409, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("stale"),
        "{v}"
    );
    let (status, _) = report(&c, &id, "complete", json!({ "token": "f".repeat(64) })).await;
    assert_eq!(status, 409);
    assert_eq!(
        c.task(&id).await["state"],
        "running",
        "a refused token changes nothing"
    );
    let (status, v) = report(&c, &id, "complete", json!({ "token": new })).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["state"], "succeeded");
    let (status, _) = report(&c, &id, "heartbeat", json!({ "token": new })).await;
    assert_eq!(status, 409, "no heartbeat after the end");
    let (status, _) = report(&c, &id, "fail", json!({ "token": new, "retry": false })).await;
    assert_eq!(status, 409, "a contradicting report is refused");
    // A reason as long as allowed, in characters JSON escapes six-fold,
    // is read (and refused here for the same reason), not too large.
    let reason = "\u{1}".repeat(64 * 1024);
    let (status, v) = report(&c, &id, "fail", json!({ "token": new, "reason": reason })).await;
    assert_eq!(status, 409, "{v}");
}

/// Five open leases fill a concurrency-5 gate: the sixth task waits until one of
/// them completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_leases_hold_the_gate_concurrency() {
    let server = Server::start().await;
    let c = server.client();
    let sink = Sink::start().await;
    sink.behave(|_, _| leased("60s"));
    let mut gate = gate_for(&sink, "1000/s");
    gate["burst"] = json!(10);
    gate["concurrency"] = json!(5);
    c.put_gate("g", gate).await;
    c.batch(
        (0..6)
            .map(|_| webhook_task("g", &sink.url("/hold")))
            .collect(),
    )
    .await;
    let hits = sink.wait_for(5, Duration::from_secs(5)).await;
    // Once the fifth lease is on record, the turn that recorded it has
    // decided: a sixth start would be committed in that same turn.
    for hit in &hits {
        wait_leased(&c, &hit.task).await;
    }
    let sixth = c
        .send("GET", "/v1/tasks?gate=g&state=scheduled", None)
        .await
        .1;
    assert_eq!(
        sixth["tasks"].as_array().map(Vec::len),
        Some(1),
        "a sixth attempt started while five leases were open: {sixth}"
    );
    assert_eq!(sixth["tasks"][0]["attempt_count"], 0, "{sixth}");
    assert_eq!(sink.hits().len(), 5);
    let g = c.send("GET", "/v1/gates/g", None).await.1;
    assert_eq!(g["in_flight"], 5, "{g}");
    let (status, v) = report(
        &c,
        &hits[0].task,
        "complete",
        json!({ "token": token(&hits[0]) }),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    sink.wait_for(6, Duration::from_secs(5)).await;
}

/// `kill -9` while leases are open. After the restart a completion still works,
/// and the other lease still runs out and is retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_survive_kill_9() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let sink = Sink::start().await;
    // The first is completed after the restart; the second must outlast the
    // kill and the restart, and then run out.
    sink.behave(|_, i| leased(if i == 1 { "6s" } else { "60s" }));
    let mut child = spawn_server(dir.path(), port);
    let c = Client::new(&format!("http://127.0.0.1:{port}"));
    wait_ready(&c).await;
    c.put_gate("g", gate_for(&sink, "100/s")).await;
    c.batch(
        (0..2)
            .map(|_| webhook_task("g", &sink.url("/job")))
            .collect(),
    )
    .await;
    let hits = sink.wait_for(2, Duration::from_secs(5)).await;
    // Let both 202s be recorded before the kill.
    let start = sluice::clock::instant();
    while !(c.task(&hits[0].task).await["attempts"][0]["outcome"] == "leased"
        && c.task(&hits[1].task).await["attempts"][0]["outcome"] == "leased")
    {
        assert!(start.elapsed() < Duration::from_secs(5), "never leased");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().expect("kill -9");
    let _ = child.wait();
    let mut child = spawn_server(dir.path(), port);
    wait_ready(&c).await;
    let (status, v) = report(
        &c,
        &hits[0].task,
        "complete",
        json!({ "token": token(&hits[0]) }),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["state"], "succeeded");
    assert_eq!(
        c.task(&hits[1].task).await["state"],
        "running",
        "the open lease survived the restart"
    );
    let again = sink.wait_for(3, Duration::from_secs(20)).await;
    assert_eq!(again[2].task, hits[1].task, "the expired lease is retried");
    assert_eq!(again[2].attempt, 2);
    let t = c.task(&hits[1].task).await;
    assert_eq!(t["attempts"][0]["outcome"], "lease_expired", "{t}");
    child.kill().expect("kill");
    let _ = child.wait();
}

/// A heartbeat for an attempt still waiting for its answer (no 202, no
/// lease) is refused: a lease it began could run out before the answer and
/// start the task again beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_needs_a_lease() {
    let server = Server::start().await;
    let c = server.client();
    let sink = Sink::start().await;
    sink.behave(|_, _| Reply::ok().delayed(Duration::from_secs(2)));
    c.put_gate("g", gate_for(&sink, "100/s")).await;
    let t = c.create(webhook_task("g", &sink.url("/sync"))).await;
    let id = t["id"].as_str().unwrap_or_default().to_string();
    let hits = sink.wait_for(1, Duration::from_secs(10)).await;
    let (status, v) = report(&c, &id, "heartbeat", json!({ "token": token(&hits[0]) })).await;
    assert_eq!(status, 409, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("no lease"),
        "{v}"
    );
    // A retry later than the longest wait allowed is refused, not shortened.
    let late = json!({ "token": token(&hits[0]), "retry_after": "2h" });
    let (status, v) = report(&c, &id, "fail", late).await;
    assert_eq!(
        (status, &v["error"]["field"]),
        (400, &json!("retry_after")),
        "{v}"
    );
    let done = c.wait_done(&id, Duration::from_secs(10)).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["attempt_count"], 1, "{done}");
}

/// Waits until the task's first attempt has its `202` on record (a lease).
async fn wait_leased(c: &Client, id: &str) {
    let start = sluice::clock::instant();
    loop {
        let t = c.task(id).await;
        if t["attempts"][0]["status"] == 202 {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "no lease: {t}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
