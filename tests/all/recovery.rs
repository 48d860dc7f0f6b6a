//! Outage-safe recovery on a real clock: after an endpoint outage, a 429, or a
//! `kill -9`, the backlog drains at the gate's pace, never as a flood.

use std::time::Duration;

use serde_json::json;
use sluice::clock;

use crate::crash::{free_port, spawn_server, wait_ready};
use crate::support::{Client, Reply, Server, Sink, max_in_window, webhook_task};

/// The endpoint answers 503 for 10 s while 2,000 tasks fall due. The circuit trips
/// after 5 failures, so the dead endpoint sees only a probe per cooldown; after it
/// recovers, no 1 s window exceeds burst + rate, and every task succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_outage_drains_at_the_gate_pace() {
    let server = Server::start().await;
    let c = server.client();
    let sink = Sink::start().await;
    let outage = Duration::from_secs(10);
    let began = clock::instant();
    sink.behave(move |hit, _| {
        if hit.at.duration_since(began) < outage {
            Reply::status(503)
        } else {
            Reply::ok()
        }
    });
    c.put_gate(
        "outage",
        json!({
            "rate": "200/s", "burst": 10, "concurrency": 50,
            "allowed_hosts": [sink.host()],
            "recovery": { "start": 0.2, "over": "3s" },
            "circuit": { "failures": 5, "cooldown": "2s", "max_cooldown": "4s" },
            "retry": { "max_attempts": 20, "backoff": { "initial": "200ms", "max": "2s" } },
        }),
    )
    .await;
    let mut ids = Vec::new();
    for chunk in 0..4 {
        let tasks = (0..500)
            .map(|i| {
                let mut t = webhook_task("outage", &sink.url("/o"));
                t["delay"] = json!(format!("{}ms", (chunk * 500 + i) * 4));
                t
            })
            .collect();
        ids.extend(c.batch(tasks).await);
    }
    // Every task is waiting, or out (the first ones, started as they
    // came due, or up to a lookahead ahead of that, and not yet back).
    let gate = c.send("GET", "/v1/gates/outage", None).await.1;
    let waiting = gate["backlog"].as_u64().unwrap_or(0) + gate["in_flight"].as_u64().unwrap_or(0);
    assert_eq!(waiting, 2000, "{gate}");
    // Wait for every task to succeed.
    let start = clock::instant();
    loop {
        let g = c.send("GET", "/v1/gates/outage", None).await.1;
        if g["counters"]["succeeded"] == 2000 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "did not drain: {g}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let hits = sink.hits();
    let during: Vec<_> = hits
        .iter()
        .filter(|h| h.at.duration_since(began) < outage)
        .collect();
    // 5 failures trip it; then one probe per cooldown (2 s, then 4 s): a handful,
    // plus what was already in flight when it tripped.
    assert!(
        during.len() <= 5 + 50 + 5,
        "the dead endpoint got {} requests",
        during.len()
    );
    let after: Vec<_> = hits
        .iter()
        .filter(|h| h.at.duration_since(began) >= outage)
        .map(|h| h.at)
        .collect();
    // The gate's bound is 210 (burst 10 + 200/s × 1 s); arrivals at the sink
    // carry the loopback's jitter, so five more. The backlog let out at
    // once would be hundreds.
    let peak = max_in_window(&after, Duration::from_secs(1));
    assert!(peak <= 215, "peak 1 s window after recovery: {peak}");
    let first_second = after
        .iter()
        .filter(|t| t.duration_since(after[0]) < Duration::from_secs(1))
        .count();
    assert!(
        first_second <= 10 + 200 + 5,
        "first second after recovery: {first_second}"
    );
    eprintln!(
        "outage: {} requests during 10 s down, peak {peak}/s after",
        during.len()
    );
}

/// A 429 with `Retry-After: 3` pauses the whole gate for 3 s, and waiting does not
/// consume attempts of the other tasks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_pauses_the_whole_gate() {
    let server = Server::start().await;
    let c = server.client();
    let sink = Sink::start().await;
    sink.behave(|_, i| {
        if i == 0 {
            Reply::status(429).header("retry-after", "3")
        } else {
            Reply::ok()
        }
    });
    c.put_gate(
        "polite",
        json!({
            "rate": "50/s", "concurrency": 1,
            "allowed_hosts": [sink.host()],
            "recovery": { "start": 1.0 },
        }),
    )
    .await;
    let ids = c
        .batch(
            (0..5)
                .map(|_| webhook_task("polite", &sink.url("/p")))
                .collect(),
        )
        .await;
    let hits = sink.wait_for(6, Duration::from_secs(15)).await;
    let gap = hits[1].at.duration_since(hits[0].at);
    assert!(
        gap >= Duration::from_millis(2_950),
        "next request after {gap:?}"
    );
    assert!(
        gap < Duration::from_millis(4_000),
        "gate stayed shut too long: {gap:?}"
    );
    for id in &ids[1..] {
        let t = c.wait_state(id, "succeeded", Duration::from_secs(10)).await;
        assert_eq!(
            t["attempt_count"], 1,
            "waiting on the gate used no attempt: {t}"
        );
    }
}

/// `kill -9` while 3,000 tasks are overdue, then restart: the endpoint sees the
/// ramp (the first second near start × rate), not the backlog at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_after_kill_ramps_up() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let sink = Sink::start().await;
    let mut child = spawn_server(dir.path(), port);
    let c = Client::new(&format!("http://127.0.0.1:{port}"));
    wait_ready(&c).await;
    c.put_gate(
        "ramp",
        json!({
            "rate": "500/s", "burst": 10, "concurrency": 100,
            "allowed_hosts": [sink.host()],
            "recovery": { "start": 0.1, "over": "4s" },
        }),
    )
    .await;
    let mut ids = Vec::new();
    for _ in 0..6 {
        let tasks = (0..500)
            .map(|_| {
                let mut t = webhook_task("ramp", &sink.url("/r"));
                // Long enough that a slow machine creates all six batches
                // before the first is due.
                t["delay"] = json!("5s");
                t
            })
            .collect();
        ids.extend(c.batch(tasks).await);
    }
    child.kill().expect("kill -9");
    let _ = child.wait();
    assert_eq!(sink.hits().len(), 0, "killed before anything was due");
    tokio::time::sleep(Duration::from_millis(5_200)).await; // let every task become overdue
    let restarted = clock::instant();
    let mut child = spawn_server(dir.path(), port);
    wait_ready(&c).await;
    let hits = sink.wait_for(3_000, Duration::from_secs(30)).await;
    let times: Vec<_> = hits.iter().map(|h| h.at).collect();
    let first = times.iter().min().copied().unwrap_or(restarted);
    let in_first_second = times
        .iter()
        .filter(|t| t.duration_since(first) < Duration::from_secs(1))
        .count();
    // The ramp starts at 50/s when the restarted server boots and rises to
    // 500/s over 4 s: the second from `s` seconds into it allows
    // 50 + 450 × ((s + 1)² − s²) / 8 (the bucket starts empty). It booted at
    // the earliest when we spawned it, so the first arrival is at most
    // `late` into the ramp: 106 when `late` is 0, more on a busy machine
    // where the process start and the first load take a while; plus the
    // burst (10) and a little loopback jitter.
    let late = first.duration_since(restarted).as_secs_f64().min(3.0);
    let allowed = 50.0 + 450.0 * ((late + 1.0).powi(2) - late.powi(2)) / 8.0;
    assert!(
        in_first_second as f64 <= allowed + 14.0,
        "first second after restart: {in_first_second}, the ramp allows {allowed:.0} \
         (first arrival {late:.2} s after the spawn)"
    );
    assert!(
        in_first_second >= 30,
        "the ramp should still send: {in_first_second}"
    );
    // The bound (burst 10 + 500 in 1 s) holds exactly over the release
    // instants, the slot times on record. At the sink, arrivals of a loaded
    // machine may bunch across a window's edge: a wake-up 20 ms late at
    // 500/s is 10 more in the window that follows it.
    let mut slots = Vec::with_capacity(ids.len());
    for id in &ids {
        let t = c.task(id).await;
        let at = t["attempts"][0]["started_at"]
            .as_str()
            .and_then(|s| s.parse::<jiff::Timestamp>().ok());
        slots.push(at.expect("a start on record").as_millisecond());
    }
    slots.sort_unstable();
    let most = (0..slots.len())
        .map(|i| slots[i..].partition_point(|&s| s < slots[i] + 1_000))
        .max()
        .unwrap_or(0);
    assert!(most <= 510, "{most} release instants in one second");
    let peak = max_in_window(&times, Duration::from_secs(1));
    assert!(peak <= 510 + 10, "peak {peak} at the sink");
    child.kill().expect("kill");
    let _ = child.wait();
}
