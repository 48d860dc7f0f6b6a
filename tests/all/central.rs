//! The central view's figures: recent windows, the series, the forecast and
//! `/metrics`, all checked against what the test itself sent.

use std::time::Duration;

use serde_json::json;

use crate::support::{Reply, Server, Sink, gate_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gate_figures_and_metrics_match_what_happened() {
    let server = Server::start().await;
    let sink = Sink::start().await;
    // Every fifth request fails; with one attempt each, those tasks fail.
    sink.behave(|_, i| {
        if i % 5 == 0 {
            Reply::status(500)
        } else {
            Reply::ok()
        }
    });
    let c = server.client();
    c.put_gate("g", gate_for(&sink, "200/s")).await;
    let task = |delay: &str| json!({ "gate": "g", "webhook": { "url": sink.url("/v") }, "max_attempts": 1, "delay": delay });
    let now: Vec<_> = (0..30).map(|_| task("0s")).collect();
    let soon: Vec<_> = (0..20).map(|_| task("5m")).collect();
    let later: Vec<_> = (0..10).map(|_| task("30m")).collect();
    let ids = c.batch(now).await;
    c.batch(soon).await;
    c.batch(later).await;
    sink.wait_for(30, Duration::from_secs(20)).await;
    for id in &ids {
        let t = c.task(id).await;
        if t["state"] == "scheduled" || t["state"] == "running" {
            c.wait_state(id, "succeeded", Duration::from_secs(10)).await;
        }
    }

    let (status, g) = c.send("GET", "/v1/gates/g", None).await;
    assert_eq!(status, 200, "{g}");
    assert_eq!(g["backlog"], 30, "{g}");
    assert_eq!(g["due"], 0);
    let one = &g["recent"]["1m"];
    assert_eq!(one["started"], 30, "{g}");
    assert_eq!(one["succeeded"], 24);
    assert_eq!(one["failed"], 6);
    assert_eq!(g["recent"]["5m"]["started"], 30);
    // The series holds the same attempts, in 10 s steps.
    assert_eq!(g["series"]["step_s"], 10);
    let points = g["series"]["points"].as_array().expect("points");
    let sum = |k: &str| {
        points
            .iter()
            .map(|p| p[k].as_u64().unwrap_or(0))
            .sum::<u64>()
    };
    assert_eq!(
        (sum("started"), sum("succeeded"), sum("failed")),
        (30, 24, 6)
    );
    assert_eq!(points.last().map(|p| p["backlog"].clone()), Some(json!(30)));
    // The forecast: 20 tasks in five minutes (the fifth or sixth minute from
    // the current one, depending on where in its minute the test ran), 10
    // in thirty.
    let f: Vec<u64> = g["forecast"]["per_minute"]
        .as_array()
        .expect("forecast")
        .iter()
        .map(|v| v.as_u64().unwrap_or(0))
        .collect();
    assert_eq!(f.len(), 60);
    assert_eq!(f[4..=6].iter().sum::<u64>(), 20, "{f:?}");
    assert_eq!(f[29..=31].iter().sum::<u64>(), 10, "{f:?}");
    assert_eq!(f.iter().sum::<u64>(), 30);

    let resp = reqwest::get(format!("{}/metrics", server.url))
        .await
        .expect("metrics");
    assert_eq!(resp.status(), 200);
    let content_type = resp.headers()["content-type"]
        .to_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let text = resp.text().await.expect("text");
    for line in [
        "sluice_gate_backlog{gate=\"g\"} 30",
        "sluice_gate_due{gate=\"g\"} 0",
        "sluice_gate_in_flight{gate=\"g\"} 0",
        "sluice_gate_configured_rate{gate=\"g\"} 200.0",
        "sluice_gate_state{gate=\"g\",state=\"open\"} 1",
        "sluice_gate_state{gate=\"g\",state=\"paused\"} 0",
        "sluice_dispatches_total{gate=\"g\",outcome=\"succeeded\"} 24",
        "sluice_dispatches_total{gate=\"g\",outcome=\"failed\"} 6",
        "sluice_lateness_seconds_count{gate=\"g\"} 30",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    assert!(text.trim_end().ends_with("# EOF"));

    // A deleted gate leaves no series behind.
    let (status, _) = c.send("DELETE", "/v1/gates/g?force=true", None).await;
    assert_eq!(status, 204);
    let text = reqwest::get(format!("{}/metrics", server.url))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(!text.contains("gate=\"g\""), "{text}");
}

/// Finished tasks go after `retention`, with their history and idempotency
/// keys; unfinished ones and the gate's lifetime counters stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_prunes_finished_tasks_in_the_background() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start_with(dir.path(), |c| {
        c.retention = Duration::from_secs(2);
    })
    .await;
    let sink = Sink::start().await;
    sink.behave(|hit, _| {
        if hit.headers.contains_key("x-fail") {
            Reply::status(500)
        } else {
            Reply::ok()
        }
    });
    let c = server.client();
    c.put_gate("g", gate_for(&sink, "100/s")).await;
    let mut finished = Vec::new();
    for i in 0..5 {
        let t = c
            .create(json!({ "gate": "g", "webhook": { "url": sink.url("/r") }, "idempotency_key": format!("k{i}") }))
            .await;
        finished.push(t["id"].as_str().expect("id").to_string());
    }
    let failing = c
        .create(json!({ "gate": "g", "webhook": { "url": sink.url("/f"), "headers": { "X-Fail": "1" } }, "max_attempts": 1 }))
        .await;
    finished.push(failing["id"].as_str().expect("id").to_string());
    let waiting = c
        .create(json!({ "gate": "g", "webhook": { "url": sink.url("/w") }, "delay": "1h" }))
        .await;
    let waiting = waiting["id"].as_str().expect("id").to_string();
    for id in &finished[..5] {
        c.wait_state(id, "succeeded", Duration::from_secs(10)).await;
    }
    c.wait_state(&finished[5], "failed", Duration::from_secs(10))
        .await;

    // Polling the API is the event: removal is only visible through it.
    let start = sluice::clock::instant();
    for id in &finished {
        loop {
            let (status, _) = c.send("GET", &format!("/v1/tasks/{id}"), None).await;
            if status == 404 {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "task {id} was never pruned"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let (status, kept) = c.send("GET", &format!("/v1/tasks/{waiting}"), None).await;
    assert_eq!(status, 200, "{kept}");
    let (_, list) = c.send("GET", "/v1/tasks?gate=g", None).await;
    let ids: Vec<&str> = list["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .filter_map(|t| t["id"].as_str())
        .collect();
    assert_eq!(ids, vec![waiting.as_str()]);
    let (_, g) = c.send("GET", "/v1/gates/g", None).await;
    assert_eq!(g["counters"]["succeeded"], 5, "{g}");
    assert_eq!(g["counters"]["failed"], 1);
    assert_eq!(g["backlog"], 1);
    // The key of a pruned task is free again.
    let again = c
        .create(
            json!({ "gate": "g", "webhook": { "url": sink.url("/r") }, "idempotency_key": "k0" }),
        )
        .await;
    assert_ne!(again["id"], json!(finished[0]));
}
