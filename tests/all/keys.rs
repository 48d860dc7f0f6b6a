//! Keys: one gate, many tenants (SPEC §1 "Keys"), measured at a real sink.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::*;

fn keyed_task(gate: &str, sink: &Sink, key: &str) -> serde_json::Value {
    let mut task = webhook_task(gate, &sink.url(&format!("/{key}")));
    task["key"] = json!(key);
    task
}

/// Arrival times at the sink per key (the path names it).
fn by_key(hits: &[Hit]) -> std::collections::BTreeMap<String, Vec<Instant>> {
    let mut out: std::collections::BTreeMap<String, Vec<Instant>> = Default::default();
    for h in hits {
        let key = h.path.trim_start_matches('/').to_owned();
        out.entry(key).or_default().push(h.at);
    }
    for times in out.values_mut() {
        times.sort();
    }
    out
}

/// The gate is the bottleneck (100/s) and one key has three seconds of due
/// tasks: keys that come after it get their turn at once, not after its
/// backlog. Round robin gives each of six keys one start in six.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_key_does_not_hold_up_the_others() {
    let server = Server::start().await;
    let c = server.client();
    let sink = Sink::start().await;
    c.put_gate("shared", gate_for(&sink, "100/s")).await;
    let heavy = (0..300)
        .map(|_| keyed_task("shared", &sink, "heavy"))
        .collect();
    c.batch(heavy).await;
    let light: Vec<_> = (0..5)
        .flat_map(|k| (0..5).map(move |_| k))
        .map(|k| keyed_task("shared", &sink, &format!("light{k}")))
        .collect();
    c.batch(light).await;
    let light_answered = sluice::clock::instant();
    let hits = sink.wait_for(325, Duration::from_secs(20)).await;
    let keys = by_key(&hits);
    // The light keys came a moment after the heavy key's first start, or
    // after their own create's answer where that was later (a slow commit).
    let sent = keys["heavy"][0].max(light_answered);
    for k in 0..5 {
        let times = &keys[&format!("light{k}")];
        assert_eq!(times.len(), 5);
        // Behind the heavy key's backlog it would wait about 3 s.
        let first = times[0].saturating_duration_since(sent);
        assert!(
            first < Duration::from_millis(500),
            "light{k} first after {first:?}"
        );
        let last = times[4].saturating_duration_since(sent);
        assert!(
            last < Duration::from_millis(1_500),
            "light{k} last after {last:?}"
        );
    }
    let heavy = &keys["heavy"];
    assert!(
        heavy[heavy.len() - 1] > keys["light0"][4],
        "the heavy key finished first: no sharing"
    );
    // The gate's own bound over all keys (1 + 100 × T, arrival jitter aside).
    let all: Vec<Instant> = hits.iter().map(|h| h.at).collect();
    let peak = max_in_window(&all, Duration::from_millis(950));
    assert!(peak <= 105, "a 950 ms window held {peak} arrivals");
}

/// Per-key limits hold at the sink for every key, an override gets its own,
/// and the gate view shows the keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_key_keeps_its_own_limits() {
    let server = Server::start().await;
    let c = server.client();
    let sink = Sink::start().await;
    sink.behave(|_, _| Reply::ok().delayed(Duration::from_millis(10)));
    let mut gate = gate_for(&sink, "500/s");
    gate["burst"] = json!(20);
    gate["keys"] = json!({
        "rate": "20/s", "concurrency": 2,
        "overrides": { "vip": { "rate": "100/s", "weight": 3 } },
    });
    let view = c.put_gate("tenants", gate).await;
    assert_eq!(view["keys"]["rate"], "20/s", "{view}");
    assert_eq!(view["keys"]["overrides"]["vip"]["concurrency"], 2, "{view}");
    assert_eq!(view["isolate"], "gate");
    let mut tasks = Vec::new();
    for key in ["a", "b"] {
        tasks.extend((0..30).map(|_| keyed_task("tenants", &sink, key)));
    }
    tasks.extend((0..60).map(|_| keyed_task("tenants", &sink, "vip")));
    let ids = c.batch(tasks).await;
    let (_, live) = c.send("GET", "/v1/gates/tenants", None).await;
    assert!(live["active_keys"].as_u64().is_some(), "{live}");
    let hits = sink.wait_for(120, Duration::from_secs(20)).await;
    let keys = by_key(&hits);
    for (key, rate) in [("a", 20.0), ("b", 20.0), ("vip", 100.0)] {
        let times = &keys[key];
        // The window bound per key: burst 1 + rate × T, arrival jitter aside.
        let allowed = 1 + (rate * 0.95) as usize + 1;
        let peak = max_in_window(times, Duration::from_millis(950));
        assert!(
            peak <= allowed,
            "key {key}: {peak} in 950 ms, bound {allowed}"
        );
        let span = times[times.len() - 1]
            .duration_since(times[0])
            .as_secs_f64();
        let measured = (times.len() - 1) as f64 / span;
        assert!(measured <= rate * 1.05, "key {key} ran at {measured:.1}/s");
        assert!(
            measured >= rate * 0.6,
            "key {key} ran at only {measured:.1}/s"
        );
    }
    assert!(sink.max_in_flight() <= 6, "two per key at most");
    let task = c.task(&ids[0]).await;
    assert_eq!(task["key"], "a", "{task}");
}

/// Bad keys and key limits are refused with the field named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_keys_are_refused_by_field() {
    let server = Server::start().await;
    let c = server.client();
    let sink = Sink::start().await;
    let cases = [
        (json!({ "keys": { "rate": "fast" } }), "keys.rate"),
        (json!({ "keys": { "concurrency": 0 } }), "keys.concurrency"),
        (
            json!({ "keys": { "overrides": { "x": { "weight": 0 } } } }),
            "keys.overrides.x.weight",
        ),
        (json!({ "isolate": "tenant" }), "isolate"),
    ];
    for (extra, field) in cases {
        let mut gate = gate_for(&sink, "10/s");
        for (k, v) in extra.as_object().expect("object") {
            gate[k] = v.clone();
        }
        let (status, body) = c.send("PUT", "/v1/gates/bad", Some(gate)).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"]["field"], field, "{body}");
    }
    c.put_gate("good", gate_for(&sink, "10/s")).await;
    let mut task = webhook_task("good", &sink.url("/x"));
    task["key"] = json!("k".repeat(129));
    let (status, body) = c.send("POST", "/v1/tasks", Some(task)).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["field"], "key", "{body}");
    for (field, value) in [("priority", json!(10)), ("coalesce_key", json!(""))] {
        let mut task = webhook_task("good", &sink.url("/x"));
        task[field] = value;
        let (status, body) = c.send("POST", "/v1/tasks", Some(task)).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"]["field"], field, "{body}");
    }
    let mut gate = gate_for(&sink, "10/s");
    gate["priority_aging"] = json!("10ms");
    let (status, body) = c.send("PUT", "/v1/gates/bad", Some(gate)).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["field"], "priority_aging", "{body}");
}

/// With `"isolate": "key"`, one tenant's failing account trips that key's
/// circuit, not the gate: the other keys go on at once, and the failing key
/// gets one probe per cooldown instead of a retry storm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_key_trips_only_itself() {
    for isolate in ["key", "gate"] {
        let server = Server::start().await;
        let c = server.client();
        let sink = Sink::start().await;
        sink.behave(|hit, _| {
            if hit.path.starts_with("/bad") {
                Reply::status(500)
            } else {
                Reply::ok()
            }
        });
        let mut gate = gate_for(&sink, "200/s");
        gate["concurrency"] = json!(2);
        gate["circuit"] = json!({ "failures": 3, "cooldown": "30s" });
        gate["isolate"] = json!(isolate);
        c.put_gate("tenants", gate).await;
        let bad = (0..10)
            .map(|_| keyed_task("tenants", &sink, "bad"))
            .collect();
        c.batch(bad).await;
        // The bad key's first failures are in before the good key comes.
        sink.wait_for(3, Duration::from_secs(10)).await;
        let good: Vec<_> = (0..10)
            .map(|_| keyed_task("tenants", &sink, "good"))
            .collect();
        let ids = c.batch(good).await;
        if isolate == "gate" {
            // The control: the gate's circuit is open and holds back every key.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let done = sink.hits().iter().filter(|h| h.path == "/good").count();
            assert_eq!(done, 0, "the gate's open circuit let a good task out");
            let (_, view) = c.send("GET", "/v1/gates/tenants", None).await;
            assert_eq!(view["state"], "tripped", "{view}");
            continue;
        }
        for id in &ids {
            c.wait_state(id, "succeeded", Duration::from_secs(5)).await;
        }
        let (_, view) = c.send("GET", "/v1/gates/tenants", None).await;
        assert_eq!(view["isolate"], "key", "{view}");
        assert_ne!(view["state"], "tripped", "{view}");
        let keys = view["busiest_keys"].as_array().expect("busiest keys");
        let bad = keys
            .iter()
            .find(|k| k["key"] == "bad")
            .unwrap_or_else(|| panic!("the bad key is listed: {view}"));
        assert_eq!(bad["state"], "tripped", "{view}");
        let bad_hits = sink.hits().iter().filter(|h| h.path == "/bad").count();
        // Three failures trip it; one more may have been in flight.
        assert!(bad_hits <= 4, "the tripped key sent {bad_hits} requests");
    }
}

fn coalesced(sink: &Sink, ck: &str, n: u64, delay: Option<&str>) -> serde_json::Value {
    let mut task = json!({
        "gate": "debounce",
        "webhook": { "url": sink.url(&format!("/{ck}")), "body": { "n": n } },
        "coalesce_key": ck,
    });
    if let Some(delay) = delay {
        task["delay"] = json!(delay);
    }
    task
}

/// `coalesce_key` with `delay` is a trailing debounce: a burst of creates
/// for one record becomes one task, the last, run after it; each answer
/// names the task it replaced. A batch coalesces within itself, a task
/// that has started is never replaced, and what was replaced can be
/// replayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coalescing_keeps_the_last_of_a_burst() {
    let server = Server::start().await;
    let c = server.client();
    let sink = Sink::start().await;
    c.put_gate("debounce", gate_for(&sink, "100/s")).await;

    let mut ids: Vec<String> = Vec::new();
    for n in 0..5 {
        let made = c.create(coalesced(&sink, "order-1", n, Some("1s"))).await;
        let id = made["id"].as_str().expect("id").to_owned();
        match ids.last() {
            None => assert!(made.get("supersedes").is_none(), "{made}"),
            Some(before) => assert_eq!(made["supersedes"], before.as_str(), "{made}"),
        }
        ids.push(id);
    }
    let last = c.wait_done(&ids[4], Duration::from_secs(10)).await;
    assert_eq!(last["state"], "succeeded", "{last}");
    for id in &ids[..4] {
        let t = c.task(id).await;
        assert_eq!(t["state"], "superseded", "{t}");
    }
    let hits: Vec<Hit> = sink
        .hits()
        .into_iter()
        .filter(|h| h.path == "/order-1")
        .collect();
    assert_eq!(hits.len(), 1, "one request for the burst");
    let body: serde_json::Value = serde_json::from_slice(&hits[0].body).expect("json");
    assert_eq!(body["n"], 4, "the last create's request");

    // Within one batch: the later items replace the earlier ones.
    let batch = c
        .batch(
            (0..3)
                .map(|n| coalesced(&sink, "order-2", n, Some("1s")))
                .collect(),
        )
        .await;
    let third = c.wait_done(&batch[2], Duration::from_secs(10)).await;
    assert_eq!(third["supersedes"], batch[1].as_str(), "{third}");
    assert_eq!(c.task(&batch[0]).await["state"], "superseded");

    // A task that has started is not replaced: both run.
    let first = c.create(coalesced(&sink, "order-3", 0, None)).await;
    let first_id = first["id"].as_str().expect("id");
    c.wait_done(first_id, Duration::from_secs(10)).await;
    let second = c.create(coalesced(&sink, "order-3", 1, None)).await;
    assert!(second.get("supersedes").is_none(), "{second}");
    c.wait_done(second["id"].as_str().expect("id"), Duration::from_secs(10))
        .await;
    assert_eq!(
        sink.hits().iter().filter(|h| h.path == "/order-3").count(),
        2
    );

    let (_, gate) = c.send("GET", "/v1/gates/debounce", None).await;
    assert_eq!(gate["counters"]["superseded"], 6, "{gate}");
    let (status, dry) = c
        .send(
            "POST",
            "/v1/tasks/replay",
            Some(json!({ "gate": "debounce", "state": "superseded", "dry_run": true })),
        )
        .await;
    assert_eq!(status, 200, "{dry}");
    assert_eq!(dry["count"], 6, "{dry}");
}

/// `GET /v1/gates/{name}/keys` pages through the keys with pending tasks,
/// each with its backlog, never listing them all at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_paged_with_their_backlog() {
    let server = Server::start().await;
    let c = server.client();
    let sink = Sink::start().await;
    c.put_gate("held", gate_for(&sink, "10/s")).await;
    let (status, v) = c.send("POST", "/v1/gates/held/pause", None).await;
    assert_eq!(status, 200, "{v}");
    let mut tasks = Vec::new();
    for (key, n) in [("acme", 3), ("globex", 2), ("initech", 1)] {
        tasks.extend((0..n).map(|_| keyed_task("held", &sink, key)));
    }
    tasks.push(webhook_task("held", &sink.url("/none")));
    c.batch(tasks).await;
    let (status, page) = c.send("GET", "/v1/gates/held/keys?limit=2", None).await;
    assert_eq!(status, 200, "{page}");
    let keys: Vec<(String, u64)> = page["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| {
            (
                k["key"].as_str().unwrap_or("").to_owned(),
                k["pending"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        keys,
        [("acme".to_owned(), 3), ("globex".to_owned(), 2)],
        "{page}"
    );
    assert_eq!(page["next_cursor"], "globex", "{page}");
    let (_, rest) = c
        .send("GET", "/v1/gates/held/keys?limit=2&cursor=globex", None)
        .await;
    assert_eq!(rest["keys"][0]["key"], "initech", "{rest}");
    assert_eq!(rest["keys"].as_array().map(Vec::len), Some(1), "{rest}");
    assert!(rest["next_cursor"].is_null(), "{rest}");
    let (status, v) = c.send("GET", "/v1/gates/held/keys?limit=0", None).await;
    assert_eq!(
        (status, v["error"]["field"].clone()),
        (400, json!("limit")),
        "{v}"
    );
    let (status, _) = c.send("GET", "/v1/gates/nope/keys", None).await;
    assert_eq!(status, 404);
    let (_, gate) = c.send("GET", "/v1/gates/held", None).await;
    assert_eq!(
        gate["active_keys"], 4,
        "three keys and the unnamed one: {gate}"
    );
}

/// A task of raised priority passes the backlog its aged priority passes,
/// even one longer than the window a gate keeps in memory (2,048): 3,000
/// tasks wait behind a paused gate, then one of priority 9 and one of the
/// default come. The first starts among the first few, not after the
/// 3,000 (nor after the window's first half, as when priority applied in
/// memory only); the second waits its turn, among the last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_urgent_task_passes_a_backlog_longer_than_the_window() {
    let server = Server::start().await;
    let c = server.client();
    let sink = Sink::start().await;
    c.put_gate(
        "urgent",
        json!({ "rate": "1000/s", "burst": 1, "concurrency": 10, "allowed_hosts": [sink.host()],
                "recovery": { "start": 1.0 } }),
    )
    .await;
    let (status, v) = c.send("POST", "/v1/gates/urgent/pause", None).await;
    assert_eq!(status, 200, "{v}");
    for _ in 0..3 {
        let bulk = (0..1_000)
            .map(|_| webhook_task("urgent", &sink.url("/bulk")))
            .collect();
        c.batch(bulk).await;
    }
    let mut urgent = webhook_task("urgent", &sink.url("/urgent"));
    urgent["priority"] = json!(9);
    c.create(urgent).await;
    c.create(webhook_task("urgent", &sink.url("/late"))).await;
    let (status, v) = c.send("POST", "/v1/gates/urgent/resume", None).await;
    assert_eq!(status, 200, "{v}");
    let began = sluice::clock::instant();
    while sink.hits().len() < 3_002 {
        assert!(
            began.elapsed() < Duration::from_secs(60),
            "{} of 3,002 arrived",
            sink.hits().len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut hits = sink.hits();
    hits.sort_by_key(|h| h.at);
    let place = |path: &str| hits.iter().position(|h| h.path == path);
    let urgent_at = place("/urgent").expect("the urgent task arrived");
    assert!(urgent_at < 20, "the urgent task arrived {urgent_at}th");
    let late_at = place("/late").expect("the late task arrived");
    assert!(
        late_at >= 2_990,
        "the default one made last arrived {late_at}th"
    );
}
