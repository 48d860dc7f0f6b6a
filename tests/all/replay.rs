//! Paced replay (`POST /v1/tasks/replay`): what failed during an outage runs
//! again through its gate, paced like any task, never as a flood.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{Client, Reply, Server, Sink, max_in_window};

async fn failed_tasks(c: &Client, sink: &Sink, team: &str, n: usize) -> Vec<String> {
    let ids = c
        .batch(
            (0..n)
                .map(|_| {
                    json!({ "gate": "outage", "labels": { "team": team }, "key": team,
                            "webhook": { "url": sink.url("/r") } })
                })
                .collect(),
        )
        .await;
    for id in &ids {
        c.wait_state(id, "failed", Duration::from_secs(30)).await;
    }
    ids
}

async fn replay(c: &Client, body: Value) -> (u16, Value) {
    c.send("POST", "/v1/tasks/replay", Some(body)).await
}

/// Waits for a replay job to end; answers its view.
async fn finished(c: &Client, id: &str) -> Value {
    let began = sluice::clock::instant();
    loop {
        let (status, job) = c.send("GET", &format!("/v1/tasks/replay/{id}"), None).await;
        assert_eq!(status, 200, "{job}");
        if job["state"] != "running" {
            return job;
        }
        assert!(
            began.elapsed() < Duration::from_secs(30),
            "the replay did not end: {job}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Tasks failed while the endpoint was down. A dry run counts them and says
/// how long they take at the gate's rate, changing nothing; the replay runs
/// exactly the matching ones again, paced by the gate (never more than
/// burst + rate × T at the endpoint); a cancelled replay counts every task it
/// replayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_tasks_replay_through_their_gate() {
    let server = Server::start().await;
    let c = server.client();
    let sink = Sink::start().await;
    sink.behave(|_, _| Reply::status(500));
    c.put_gate(
        "outage",
        json!({ "rate": "100/s", "burst": 1, "concurrency": 10, "allowed_hosts": [sink.host()],
                "recovery": { "start": 1.0 }, "circuit": null, "retry": { "max_attempts": 1 } }),
    )
    .await;
    let a = failed_tasks(&c, &sink, "a", 40).await;
    let b = failed_tasks(&c, &sink, "b", 10).await;
    sink.behave(|_, _| Reply::ok());
    let before = sink.hits().len();

    // Bad filters are refused, naming the field; an unknown gate is 404.
    for (body, field) in [
        (json!({ "state": "running" }), "state"),
        (json!({ "since": "soon" }), "since"),
        (json!({ "label": "team" }), "label"),
        (json!({ "key": "" }), "key"),
        (json!({ "gates": "outage" }), "gates"),
    ] {
        let (status, v) = replay(&c, body.clone()).await;
        assert_eq!(status, 400, "{body}: {v}");
        assert_eq!(v["error"]["field"], field, "{body}: {v}");
    }
    let (status, v) = replay(&c, json!({ "gate": "nope" })).await;
    assert_eq!(status, 404, "{v}");

    let (status, dry) = replay(
        &c,
        json!({ "gate": "outage", "label": "team:a", "dry_run": true }),
    )
    .await;
    assert_eq!(status, 200, "{dry}");
    assert_eq!(dry["count"], 40, "{dry}");
    let eta = dry["eta_s"].as_f64().unwrap_or(-1.0);
    assert!((0.3..=0.5).contains(&eta), "40 tasks at 100/s: {dry}");
    assert_eq!(
        c.task(&a[0]).await["state"],
        "failed",
        "a dry run changes nothing"
    );
    // By key (the tenant): team b's tasks only.
    let (status, dry) = replay(&c, json!({ "key": "b", "dry_run": true })).await;
    assert_eq!((status, dry["count"].clone()), (200, json!(10)), "{dry}");

    let (status, job) = replay(&c, json!({ "label": "team:a" })).await;
    assert_eq!(status, 202, "{job}");
    let job = finished(&c, job["id"].as_str().unwrap_or_default()).await;
    assert_eq!(job["state"], "done", "{job}");
    assert_eq!(
        (job["matched"].clone(), job["replayed"].clone()),
        (json!(40), json!(40))
    );
    for id in &a {
        let done = c.wait_done(id, Duration::from_secs(30)).await;
        assert_eq!(done["state"], "succeeded", "{done}");
    }
    for id in &b {
        assert_eq!(
            c.task(id).await["state"],
            "failed",
            "team b was not asked for"
        );
    }
    let replayed: Vec<_> = sink.hits()[before..].iter().map(|h| h.at).collect();
    assert_eq!(replayed.len(), 40);
    // The gate's bound is 11 (burst 1 + 100/s × 100 ms); arrivals at the sink
    // carry the loopback's jitter, so two more: a replay past the gate
    // would bring all 40 at once.
    let most = max_in_window(&replayed, Duration::from_millis(100));
    assert!(most <= 13, "{most} arrivals in 100 ms at 100/s, burst 1");

    // Cancelled at once: whatever it reached, it counted.
    let (status, job) = replay(&c, json!({ "gate": "outage" })).await;
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_str().unwrap_or_default().to_string();
    let (status, _) = c
        .send("DELETE", &format!("/v1/tasks/replay/{id}"), None)
        .await;
    assert_eq!(status, 200);
    let job = finished(&c, &id).await;
    assert!(
        job["state"] == "cancelled" || job["state"] == "done",
        "{job}"
    );
    let mut moved = 0;
    for id in &b {
        moved += u64::from(c.task(id).await["state"] != "failed");
    }
    assert_eq!(job["replayed"], moved, "{job}");
    let (status, _) = c.send("GET", "/v1/tasks/replay/rp_nope", None).await;
    assert_eq!(status, 404);
}

/// A replay is durable like the tasks it walks: one accepted (its record
/// committed) and stopped by a crash goes on when the server is back, from
/// the page after its last committed one; one that ended is still there to
/// `GET`. The crash is set up in the file: a job left running with its
/// cursor halfway, as a `kill -9` between two pages leaves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_goes_on_after_a_restart() {
    use sluice::store::{Reads, ReplayRecord, Store, TaskFilter, TaskState, Writes};

    let temp = tempfile::tempdir().expect("dir");
    let mut server = Server::start_in(temp.path()).await;
    let c = server.client();
    let sink = Sink::start().await;
    sink.behave(|_, _| Reply::status(500));
    c.put_gate(
        "outage",
        json!({ "rate": "5000/s", "burst": 100, "concurrency": 50, "allowed_hosts": [sink.host()],
                "recovery": { "start": 1.0 }, "circuit": null, "retry": { "max_attempts": 1 } }),
    )
    .await;
    let ids = failed_tasks(&c, &sink, "a", 600).await;
    // One replay that ends before the restart: of a label no task has.
    let (status, ended) = replay(&c, json!({ "label": "team:nobody" })).await;
    assert_eq!(status, 202, "{ended}");
    let ended = finished(&c, ended["id"].as_str().unwrap_or_default()).await;
    server.stop().await;

    let file = temp.path().join(sluice::server::DATA_FILE);
    let filter = TaskFilter {
        state: Some(TaskState::Failed),
        ..TaskFilter::default()
    };
    {
        let store = Store::open(&file).expect("open");
        // The newest 300 were replayed (and, say, failed again) before the
        // crash: the walk goes on below them.
        let (newest, cursor) = store
            .read()
            .and_then(|r| r.list_tasks(&filter, None, 300))
            .expect("page");
        assert_eq!(newest.len(), 300);
        let record = ReplayRecord {
            id: "rp_halfway".into(),
            filter: filter.clone(),
            cursor,
            matched: 300,
            replayed: 300,
            started_at: 1,
            cancelled: false,
            ended: None,
        };
        store.write(|tx| tx.put_replay(&record)).expect("write");
    }
    sink.behave(|_, _| Reply::ok());
    let before = sink.hits().len();
    let server = Server::start_in(temp.path()).await;
    let c = server.client();
    let began = sluice::clock::instant();
    while c.send("GET", "/v1/tasks/replay/rp_halfway", None).await.0 != 200 {
        assert!(began.elapsed() < Duration::from_secs(10), "never picked up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let job = finished(&c, "rp_halfway").await;
    assert_eq!(job["state"], "done", "{job}");
    assert_eq!(
        (job["matched"].clone(), job["replayed"].clone()),
        (json!(600), json!(600))
    );
    let (status, again) = c
        .send(
            "GET",
            &format!(
                "/v1/tasks/replay/{}",
                ended["id"].as_str().unwrap_or_default()
            ),
            None,
        )
        .await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(
        (again["state"].clone(), again["matched"].clone()),
        (json!("done"), json!(0))
    );

    // Tasks are listed newest first (the batch made them in order): the
    // older half ran again, the newer half was left alone.
    for (n, id) in ids.iter().enumerate() {
        let t = c.task(id).await;
        if n < 300 {
            assert_ne!(t["state"], "failed", "task {n}, older than the cursor: {t}");
        } else {
            assert_eq!(t["state"], "failed", "task {n}, newer than the cursor: {t}");
        }
    }
    for id in &ids[..300] {
        let done = c.wait_done(id, Duration::from_secs(30)).await;
        assert_eq!(done["state"], "succeeded", "{done}");
    }
    assert_eq!(sink.hits().len() - before, 300);
}
