//! Schedules on a real clock: cron with seconds, across a restart, with no
//! duplicate occurrence and no overlap.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::json;
use sluice::clock;

use crate::support::{Reply, Server, Sink};

fn schedule_body(sink: &Sink, cron: &str) -> serde_json::Value {
    json!({
        "cron": cron,
        "timezone": "Europe/Berlin",
        "misfire": "skip",
        "task": { "gate": "cron", "webhook": { "url": sink.url("/tick"), "body": { "job": "tick" } } },
    })
}

fn gate_body(sink: &Sink) -> serde_json::Value {
    json!({ "rate": "10/s", "allowed_hosts": [sink.host()], "recovery": { "start": 1.0 } })
}

/// Every 2 seconds, across a graceful restart: each occurrence arrives once
/// (its key is unique), on time while the server runs, never overlapping
/// another, and the schedule picks up after the restart. What a restart does
/// to occurrences it spans (skip, run once, catch up) is the simulation's to
/// check, over hours of simulated downtime (`simulation.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_with_seconds_survives_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let sink = Sink::start().await;
    sink.behave(|_, _| Reply::ok().delayed(Duration::from_millis(50)));
    let mut server = Server::start_in(dir.path()).await;
    let c = server.client();
    c.put_gate("cron", gate_body(&sink)).await;
    let (status, s) = c
        .send(
            "PUT",
            "/v1/schedules/tick",
            Some(schedule_body(&sink, "*/2 * * * * *")),
        )
        .await;
    assert_eq!(status, 201, "{s}");
    assert_eq!(s["next_runs"].as_array().map(Vec::len), Some(10), "{s}");
    assert!(
        s["next_runs"][0]
            .as_str()
            .is_some_and(|t| t.ends_with("+01:00") || t.ends_with("+02:00")),
        "{s}"
    );
    sink.wait_for(3, Duration::from_secs(10)).await;
    server.stop().await;
    let stopped_with = sink.hits().len();
    let server = Server::start_in(dir.path()).await;
    let c = server.client();
    sink.wait_for(stopped_with + 3, Duration::from_secs(15))
        .await;
    let hits = sink.hits();
    let keys: Vec<String> = hits
        .iter()
        .map(|h| h.headers["idempotency-key"].clone())
        .collect();
    let unique: BTreeSet<&String> = keys.iter().collect();
    assert_eq!(
        unique.len(),
        keys.len(),
        "an occurrence ran twice: {keys:?}"
    );
    for h in &hits {
        assert_eq!(h.headers["sluice-schedule"], "tick");
        assert!(h.headers["idempotency-key"].starts_with("schedule:tick:"));
    }
    // While the server runs, an occurrence arrives within a second of its
    // second (its period is 2 s: a missed timer would be a period late).
    let on_time = hits
        .iter()
        .filter(|h| {
            let scheduled: jiff::Timestamp =
                h.headers["sluice-scheduled-at"].parse().expect("rfc3339");
            let arrived = clock::now().as_ms() as i64
                - clock::instant().duration_since(h.at).as_millis() as i64;
            let late = arrived - scheduled.as_millisecond();
            (-50..1_000).contains(&late)
        })
        .count();
    assert!(
        on_time >= hits.len() - 1,
        "only {on_time} of {} on time (one may be the late catch-up)",
        hits.len()
    );
    // Occurrences never overlap: each arrives after the previous one ended.
    for pair in hits.windows(2) {
        assert!(
            pair[1].at.duration_since(pair[0].at) >= Duration::from_millis(50),
            "overlap"
        );
    }
    let s = c.send("GET", "/v1/schedules/tick", None).await.1;
    assert!(
        s["last_runs"].as_array().is_some_and(|r| r.len() >= 3),
        "{s}"
    );
    assert_eq!(s["last_runs"][0]["state"], "succeeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedule_api_validates_pauses_and_deletes() {
    let server = Server::start().await;
    let c = server.client();
    let sink = Sink::start().await;
    c.put_gate("cron", gate_body(&sink)).await;
    let url = sink.url("/x");
    let task = json!({ "gate": "cron", "webhook": { "url": url } });
    let bad = [
        (json!({ "task": task }), "cron"),
        (json!({ "cron": "* * *", "task": task }), "cron"),
        (
            json!({ "cron": "0 9 * * *", "timezone": "Mars/Base", "task": task }),
            "timezone",
        ),
        (
            json!({ "cron": "0 9 * * *", "every": "1m", "task": task }),
            "every",
        ),
        (json!({ "every": "10ms", "task": task }), "every"),
        (
            json!({ "every": "1m", "misfire": "sometimes", "task": task }),
            "misfire",
        ),
        (
            json!({ "every": "1m", "catchup_limit": 0, "task": task }),
            "catchup_limit",
        ),
        (
            json!({ "every": "1m", "task": { "gate": "cron", "webhook": { "url": url }, "delay": "1s" } }),
            "task.delay",
        ),
        (
            json!({ "every": "1m", "task": { "gate": "nope", "webhook": { "url": url } } }),
            "task.gate",
        ),
        (
            json!({ "every": "1m", "task": { "gate": "cron", "webhook": { "url": "ftp://x" } } }),
            "task.webhook.url",
        ),
    ];
    for (body, field) in bad {
        let (status, v) = c.send("PUT", "/v1/schedules/s", Some(body.clone())).await;
        assert_eq!(status, 400, "{body} → {v}");
        assert_eq!(v["error"]["field"], field, "{body} → {v}");
    }
    let (status, s) = c
        .send("PUT", "/v1/schedules/daily", Some(json!({ "cron": "0 9 * * *", "timezone": "America/New_York", "jitter": "30s", "task": task })))
        .await;
    assert_eq!(status, 201, "{s}");
    let first = s["current_task"]
        .as_str()
        .expect("an occurrence is pending")
        .to_string();
    assert_eq!(c.task(&first).await["state"], "scheduled");
    let runs = s["next_runs"].as_array().cloned().unwrap_or_default();
    assert_eq!(runs.len(), 10);
    assert!(
        runs.iter().all(|r| r.as_str().is_some_and(
            |t| t.contains("T09:00:") && (t.ends_with("-05:00") || t.ends_with("-04:00"))
        )),
        "{runs:?}"
    );
    let (_, paused) = c.send("POST", "/v1/schedules/daily/pause", None).await;
    assert_eq!(paused["paused"], true);
    assert_eq!(
        c.task(&first).await["state"],
        "cancelled",
        "pausing withdraws the pending occurrence"
    );
    let (_, resumed) = c.send("POST", "/v1/schedules/daily/resume", None).await;
    let second = resumed["current_task"]
        .as_str()
        .expect("resumed")
        .to_string();
    assert_ne!(second, first);
    // The occurrence withdrawn by the pause is planned again, not lost (its
    // key once found it cancelled and the next one was planned instead),
    // and a withdrawal is no run.
    assert_eq!(resumed["next_runs"][0], s["next_runs"][0], "{resumed}");
    assert_eq!(c.task(&second).await["state"], "scheduled");
    assert_eq!(resumed["last_runs"], json!([]), "{resumed}");
    // The same holds for the same schedule sent again.
    let (status, again) = c
        .send("PUT", "/v1/schedules/daily", Some(json!({ "cron": "0 9 * * *", "timezone": "America/New_York", "jitter": "30s", "task": task })))
        .await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["next_runs"], s["next_runs"], "{again}");
    let second = again["current_task"]
        .as_str()
        .expect("planned again")
        .to_string();
    assert_eq!(c.task(&second).await["state"], "scheduled");
    // An interval sent again keeps its phase.
    let every = json!({ "every": "1h", "task": task });
    let (_, hourly) = c
        .send("PUT", "/v1/schedules/hourly", Some(every.clone()))
        .await;
    let (_, hourly_again) = c.send("PUT", "/v1/schedules/hourly", Some(every)).await;
    assert_eq!(
        hourly_again["next_runs"], hourly["next_runs"],
        "{hourly_again}"
    );
    assert_eq!(c.send("DELETE", "/v1/schedules/hourly", None).await.0, 204);
    let (status, list) = c.send("GET", "/v1/schedules", None).await;
    assert_eq!(status, 200);
    assert_eq!(list["schedules"].as_array().map(Vec::len), Some(1));
    assert_eq!(c.send("DELETE", "/v1/schedules/daily", None).await.0, 204);
    assert_eq!(c.task(&second).await["state"], "cancelled");
    assert_eq!(c.send("GET", "/v1/schedules/daily", None).await.0, 404);
}
