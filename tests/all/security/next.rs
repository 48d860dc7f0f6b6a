//! `next` tasks (a completion's, a plugin's) under SPEC §1's rules: they stay
//! in their source's gate unless the target gate accepts it by name, and every
//! root's chain is capped in depth and in descendants.

use std::time::Duration;

use serde_json::{Value, json};

use crate::plugins::{last_attempt, plugin_task, push_ok};
use crate::support::{Client, Reply, Server, Sink, gate_for, webhook_task};

fn id(v: &Value) -> String {
    v["id"].as_str().expect("id").to_string()
}

/// Tasks in a gate, all of them (one page is enough here).
async fn tasks_in(c: &Client, gate: &str) -> Vec<Value> {
    let (status, v) = c
        .send("GET", &format!("/v1/tasks?gate={gate}&limit=1000"), None)
        .await;
    assert_eq!(status, 200, "{v}");
    v["tasks"].as_array().cloned().unwrap_or_default()
}

/// A webhook receiver holding a completion token may chain work only inside
/// its own gate, until another gate names it in `accept_next_from`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_creates_next_tasks_only_where_accepted() {
    let mut server = Server::start().await;
    let c = server.client();
    let sink = Sink::start().await;
    sink.behave(|hit, _| {
        if hit.path == "/leased" {
            Reply::status(202).header("sluice-lease", "1m")
        } else {
            Reply::ok()
        }
    });
    c.put_gate("source", gate_for(&sink, "100/s")).await;
    c.put_gate("billing", gate_for(&sink, "100/s")).await;
    let first = c.create(webhook_task("source", &sink.url("/leased"))).await;
    let hits = sink.wait_for(1, Duration::from_secs(10)).await;
    let token = hits[0].headers["sluice-completion-token"].clone();
    let complete = |next: Value| json!({ "token": token, "next": next });
    let path = format!("/v1/tasks/{}/complete", id(&first));

    // Into another gate: refused, naming the field, and nothing is created.
    let into_billing = json!([
        webhook_task("source", &sink.url("/same")),
        webhook_task("billing", &sink.url("/charge")),
    ]);
    let (status, v) = c
        .send("POST", &path, Some(complete(into_billing.clone())))
        .await;
    assert_eq!(status, 403, "{v}");
    assert_eq!(v["error"]["code"], "permission_denied", "{v}");
    assert_eq!(v["error"]["field"], "next[1].gate", "{v}");
    assert!(tasks_in(&c, "billing").await.is_empty());
    assert_eq!(tasks_in(&c, "source").await.len(), 1, "all or none");
    assert_eq!(c.task(&id(&first)).await["state"], "running");

    // Once billing accepts source, the same completion goes through.
    let mut billing = gate_for(&sink, "100/s");
    billing["accept_next_from"] = json!(["source"]);
    let gate = c.put_gate("billing", billing).await;
    assert_eq!(gate["accept_next_from"], json!(["source"]));
    let (status, v) = c.send("POST", &path, Some(complete(into_billing))).await;
    assert_eq!(status, 200, "{v}");
    let charged = tasks_in(&c, "billing").await;
    assert_eq!(charged.len(), 1);
    assert_eq!(charged[0]["parent"], id(&first));
    assert_eq!(charged[0]["root"], id(&first));
    assert_eq!(charged[0]["depth"], 1);
    let root = c.task(&id(&first)).await;
    assert_eq!(
        (root["root"].clone(), root["depth"].clone()),
        (json!(id(&first)), json!(0))
    );

    // A name that is not a gate's is refused when the gate is set.
    let mut bad = gate_for(&sink, "100/s");
    bad["accept_next_from"] = json!(["no spaces"]);
    let (status, v) = c.send("PUT", "/v1/gates/bad", Some(bad)).await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["field"], "accept_next_from[0]", "{v}");
    server.stop().await;
}

/// A plugin's outcome is held to the same rules: `next` tasks into a gate
/// that does not accept its own fail the attempt and create nothing; copies of
/// itself stop at the depth and descendant caps, each refusal recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_cannot_leave_its_gate_or_grow_without_bound() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = Server::start_with(dir.path(), |config| config.max_descendants = 30).await;
    let c = server.client();
    push_ok(&c, "host-abuse").await;
    let sink = Sink::start().await;
    let mut gate = gate_for(&sink, "500/s");
    gate["burst"] = json!(50);
    gate["retry"] = json!({ "max_attempts": 1 });
    c.put_gate("plugins", gate.clone()).await;
    c.put_gate("elsewhere", gate.clone()).await;
    c.put_gate("deep", gate.clone()).await;

    // Into another gate, with that gate's secrets and hosts: refused.
    let escape = c
        .create(plugin_task(
            "plugins",
            "host-abuse",
            json!({ "mode": "next", "tasks": [webhook_task("elsewhere", &sink.url("/escape"))] }),
        ))
        .await;
    let t = c.wait_done(&id(&escape), Duration::from_secs(20)).await;
    assert_eq!(t["state"], "failed", "{t}");
    let error = last_attempt(&t)["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("next[0].gate") && error.contains("accept_next_from"),
        "{t}"
    );
    assert!(tasks_in(&c, "elsewhere").await.is_empty());

    // Copies of itself, four at a time: 4, then 16 (20), then what fits in 30.
    let spawn = |gate: &str, fanout: u32| {
        plugin_task(
            gate,
            "host-abuse",
            json!({ "mode": "spawn", "fanout": fanout, "name": "host-abuse", "version": "0.1.0" }),
        )
    };
    c.create(spawn("plugins", 4)).await;
    // One at a time: a chain that stops at depth 10.
    c.create(spawn("deep", 1)).await;
    let settled = |tasks: &[Value]| {
        tasks
            .iter()
            .all(|t| matches!(t["state"].as_str(), Some("succeeded" | "failed")))
    };
    let start = sluice::clock::instant();
    let (wide, deep) = loop {
        let wide = tasks_in(&c, "plugins").await;
        let deep = tasks_in(&c, "deep").await;
        if wide.len() >= 29 && deep.len() == 11 && settled(&wide) && settled(&deep) {
            break (wide, deep);
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{} wide, {} deep",
            wide.len(),
            deep.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The escape attempt, the root and at most 30 descendants.
    let root = wide
        .iter()
        .find(|t| t["depth"] == 0 && t["plugin"]["input"]["mode"] == "spawn")
        .expect("root");
    let descendants: Vec<&Value> = wide
        .iter()
        .filter(|t| t["root"] == root["id"] && t["depth"] != 0)
        .collect();
    assert!(descendants.len() <= 30, "{} descendants", descendants.len());
    assert_eq!(descendants.len(), 28, "4 + 16 + two more fours");
    let refused: Vec<&Value> = wide
        .iter()
        .filter(|t| t["state"] == "failed" && t["plugin"]["input"]["mode"] == "spawn")
        .collect();
    assert!(!refused.is_empty());
    for task in &refused {
        let full = c.task(task["id"].as_str().expect("id")).await;
        let error = last_attempt(&full)["error"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(error.contains("max_descendants of 30"), "{full}");
    }
    // The chain one wide: ten generations below its root, then a refusal.
    let deepest = deep
        .iter()
        .max_by_key(|t| t["depth"].as_u64())
        .expect("tasks");
    assert_eq!(deepest["depth"], 10);
    let full = c.task(deepest["id"].as_str().expect("id")).await;
    assert_eq!(full["state"], "failed", "{full}");
    assert!(
        last_attempt(&full)["error"]
            .as_str()
            .is_some_and(|e| e.contains("at most 10 deep")),
        "{full}"
    );
    server.stop().await;
}
