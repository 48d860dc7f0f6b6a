//! Webhooks reach real loopback endpoints on time, at the gate's pace, with
//! retries and timeouts as SPEC §2 classifies them.

use std::time::Duration;

use serde_json::json;
use sluice::clock;

use crate::support::{Reply, Server, Sink, gate_for, max_in_window, webhook_task};

/// A task delayed by 1 s arrives within a bounded lateness of its due time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_task_arrives_on_time() {
    let server = Server::start().await;
    let c = server.client();
    let sink = Sink::start().await;
    c.put_gate("g", gate_for(&sink, "100/s")).await;
    let created = clock::instant();
    let mut task = webhook_task("g", &sink.url("/later"));
    task["delay"] = json!("1s");
    let t = c.create(task).await;
    // The due time is taken when the server receives the task, somewhere
    // between these two instants; a commit stalled by a busy disk moves both.
    let answered = clock::instant();
    let hits = sink.wait_for(1, Duration::from_secs(10)).await;
    let early = hits[0].at.duration_since(created);
    assert!(
        early >= Duration::from_millis(990),
        "arrived early: {early:?}"
    );
    // Exact timing is the core's (`a_delayed_task_starts_at_its_due_time_not_before`);
    // here the bound catches a shell that misses its timer and waits for some
    // other wake-up, with room for a machine that runs every other test beside.
    let late = hits[0].at.saturating_duration_since(answered);
    assert!(late < Duration::from_secs(4), "arrived late: {late:?}");
    let h = &hits[0].headers;
    assert_eq!(h["sluice-task-id"], t["id"].as_str().unwrap_or_default());
    assert_eq!(h["sluice-attempt"], "1");
    assert_eq!(h["sluice-gate"], "g");
    assert_eq!(h["idempotency-key"], t["id"].as_str().unwrap_or_default());
    assert_eq!(h["content-type"], "application/json");
    assert_eq!(
        h["sluice-scheduled-at"],
        t["scheduled_at"].as_str().unwrap_or_default()
    );
    assert_eq!(&hits[0].body[..], br#"{"hello":"world"}"#);
    c.wait_state(
        t["id"].as_str().unwrap_or_default(),
        "succeeded",
        Duration::from_secs(5),
    )
    .await;
}

/// 600 tasks through a 200/s gate: no 1 s window holds more than burst + 200, and
/// the whole run is within a few percent of 200/s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gate_rate_holds_at_the_sink() {
    let server = Server::start().await;
    let c = server.client();
    let sink = Sink::start().await;
    let mut gate = gate_for(&sink, "200/s");
    gate["burst"] = json!(5);
    c.put_gate("rated", gate).await;
    let tasks = (0..600)
        .map(|_| webhook_task("rated", &sink.url("/r")))
        .collect();
    c.batch(tasks).await;
    let hits = sink.wait_for(600, Duration::from_secs(20)).await;
    let times: Vec<_> = hits.iter().map(|h| h.at).collect();
    // The sink sees arrivals, not releases: loopback and a machine running
    // the whole suite on two cores move each by milliseconds, and a release
    // held up while the next ones go on time bunches them (CI once saw 206
    // in 990 ms). So the bound for 1 s (burst + 200) is checked over 950 ms:
    // up to 50 ms of arrival jitter, as the plugin tests check theirs a
    // little under the period. The exact bound over release times is the
    // property tests' and the simulation's; at the sink it is #14's.
    let peak = max_in_window(&times, Duration::from_millis(950));
    assert!(peak <= 205, "a 950 ms window held {peak} arrivals");
    let span = times
        .iter()
        .max()
        .unwrap_or(&times[0])
        .duration_since(times[0])
        .as_secs_f64();
    // 600 arrivals: the first 5 are the burst, the other 595 are paced at 200/s.
    let rate = 595.0 / span;
    assert!(
        (rate - 200.0).abs() / 200.0 < 0.05,
        "measured {rate:.1}/s over {span:.2}s"
    );
}

/// A slow endpoint never sees more than `concurrency` requests at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_cap_holds_with_a_slow_sink() {
    let server = Server::start().await;
    let c = server.client();
    let sink = Sink::start().await;
    sink.behave(|_, _| Reply::ok().delayed(Duration::from_millis(200)));
    let mut gate = gate_for(&sink, "1000/s");
    gate["burst"] = json!(100);
    gate["concurrency"] = json!(3);
    c.put_gate("slow", gate).await;
    let ids = c
        .batch(
            (0..15)
                .map(|_| webhook_task("slow", &sink.url("/s")))
                .collect(),
        )
        .await;
    sink.wait_for(15, Duration::from_secs(10)).await;
    for id in &ids {
        c.wait_state(id, "succeeded", Duration::from_secs(5)).await;
    }
    assert_eq!(sink.max_in_flight(), 3);
}

/// 500 then 200: retried, then succeeded, with both attempts in history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_error_is_retried_then_succeeds() {
    let server = Server::start().await;
    let c = server.client();
    let sink = Sink::start().await;
    sink.behave(|hit, _| {
        if hit.attempt == 1 {
            Reply::status(500)
        } else {
            Reply::ok()
        }
    });
    c.put_gate("g", gate_for(&sink, "100/s")).await;
    let t = c.create(webhook_task("g", &sink.url("/flaky"))).await;
    let id = t["id"].as_str().unwrap_or_default();
    let done = c.wait_state(id, "succeeded", Duration::from_secs(10)).await;
    let attempts = done["attempts"].as_array().cloned().unwrap_or_default();
    assert_eq!(attempts.len(), 2, "{done}");
    assert_eq!(attempts[0]["outcome"], "failed");
    assert_eq!(attempts[0]["status"], 500);
    assert_eq!(attempts[1]["outcome"], "succeeded");
    let hits = sink.hits();
    assert_eq!(hits.len(), 2);
    assert!(
        hits[1].at.duration_since(hits[0].at) >= Duration::from_millis(90),
        "backoff respected"
    );
}

/// 404 fails at once: no retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_error_fails_without_retry() {
    let server = Server::start().await;
    let c = server.client();
    let sink = Sink::start().await;
    sink.behave(|_, _| Reply::status(404));
    c.put_gate("g", gate_for(&sink, "100/s")).await;
    let t = c.create(webhook_task("g", &sink.url("/missing"))).await;
    let id = t["id"].as_str().unwrap_or_default();
    let done = c.wait_state(id, "failed", Duration::from_secs(10)).await;
    assert_eq!(done["attempt_count"], 1);
    assert_eq!(done["attempts"][0]["outcome"], "rejected");
    assert_eq!(sink.hits().len(), 1);
}

/// A request that outlives its timeout counts as a failed attempt and is retried;
/// the retry budget ends the task as failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_is_retried() {
    let server = Server::start().await;
    let c = server.client();
    let sink = Sink::start().await;
    sink.behave(|hit, _| {
        if hit.attempt == 1 {
            Reply::ok().delayed(Duration::from_secs(3))
        } else {
            Reply::ok()
        }
    });
    c.put_gate("g", gate_for(&sink, "100/s")).await;
    let mut task = webhook_task("g", &sink.url("/slow"));
    task["timeout"] = json!("300ms");
    let t = c.create(task).await;
    let id = t["id"].as_str().unwrap_or_default();
    let done = c.wait_state(id, "succeeded", Duration::from_secs(10)).await;
    assert_eq!(done["attempts"][0]["outcome"], "timeout", "{done}");
    assert_eq!(done["attempts"][1]["outcome"], "succeeded");
}

/// A task whose gate lists no hosts may not reach loopback: refused before any
/// packet leaves, and failed without retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_address_is_refused_unless_named() {
    let server = Server::start().await;
    let c = server.client();
    let sink = Sink::start().await;
    c.put_gate("open", json!({ "rate": "10/s" })).await;
    let t = c.create(webhook_task("open", &sink.url("/nope"))).await;
    let id = t["id"].as_str().unwrap_or_default();
    let done = c.wait_state(id, "failed", Duration::from_secs(10)).await;
    assert_eq!(done["attempts"][0]["outcome"], "denied", "{done}");
    assert!(
        done["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("private"),
        "{done}"
    );
    assert_eq!(sink.hits().len(), 0);

    // A name that resolves to loopback only is refused the same way, by the
    // guard in the resolver: no retries, nothing that counts as a failure.
    let by_name = format!("http://localhost:{}/by-name", sink.addr.port());
    let t = c.create(webhook_task("open", &by_name)).await;
    let id = t["id"].as_str().unwrap_or_default();
    let done = c.wait_state(id, "failed", Duration::from_secs(10)).await;
    let attempts = done["attempts"].as_array().map_or(0, Vec::len);
    assert_eq!(attempts, 1, "{done}");
    assert_eq!(done["attempts"][0]["outcome"], "denied", "{done}");
    assert_eq!(sink.hits().len(), 0);
}

/// An answer stands once its head has come: a 200 whose body is still
/// dripping when the timeout comes is a success, with what came of it, not a
/// timeout to retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_with_a_slow_body_stands() {
    let server = Server::start().await;
    let c = server.client();
    // The head and two bytes of the body, then nothing more for 5 s.
    let (addr, endpoint) = crate::support::stalled_body(Duration::from_secs(5)).await;
    c.put_gate(
        "g",
        json!({ "rate": "100/s", "allowed_hosts": [addr.to_string()] }),
    )
    .await;
    let mut task = webhook_task("g", &format!("http://{addr}/slow-body"));
    task["timeout"] = json!("500ms");
    let t = c.create(task).await;
    let id = t["id"].as_str().unwrap_or_default();
    let done = c.wait_done(id, Duration::from_secs(10)).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["attempts"].as_array().map_or(0, Vec::len), 1, "{done}");
    assert_eq!(done["attempts"][0]["status"], 200, "{done}");
    assert_eq!(done["attempts"][0]["response"], "ok", "{done}");
    endpoint.abort();
}

/// A 202 whose `Sluice-Lease` cannot be read fails the attempt, saying why,
/// rather than end it as a success whose report would then be refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_that_cannot_be_read_fails_the_attempt() {
    let server = Server::start().await;
    let c = server.client();
    let sink = Sink::start().await;
    sink.behave(|_, _| Reply::status(202).header("sluice-lease", "600"));
    c.put_gate("g", gate_for(&sink, "100/s")).await;
    let mut task = webhook_task("g", &sink.url("/lease"));
    task["max_attempts"] = json!(1);
    let t = c.create(task).await;
    let id = t["id"].as_str().unwrap_or_default();
    let done = c.wait_done(id, Duration::from_secs(10)).await;
    assert_eq!(done["state"], "failed", "{done}");
    assert_eq!(done["attempts"][0]["status"], 202, "{done}");
    let error = done["attempts"][0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("Sluice-Lease \"600\""), "{done}");
}

/// A blocked gate (paused, with a backlog) and a slow gate never delay another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gates_are_independent() {
    let server = Server::start().await;
    let c = server.client();
    let slow = Sink::start().await;
    slow.behave(|_, _| Reply::ok().delayed(Duration::from_secs(2)));
    let fast = Sink::start().await;
    let mut g = gate_for(&slow, "1000/s");
    g["burst"] = json!(100);
    c.put_gate("slow", g).await;
    c.put_gate("blocked", gate_for(&slow, "1000/s")).await;
    c.send("POST", "/v1/gates/blocked/pause", None).await;
    c.put_gate("fast", gate_for(&fast, "1000/s")).await;
    c.batch(
        (0..200)
            .map(|_| webhook_task("slow", &slow.url("/s")))
            .collect(),
    )
    .await;
    c.batch(
        (0..2_000)
            .map(|_| webhook_task("blocked", &slow.url("/b")))
            .collect(),
    )
    .await;
    let t = c.create(webhook_task("fast", &fast.url("/f"))).await;
    // Counted from the create's answer (its commit may wait behind the
    // batches' on a slow disk); waiting on the slow gate would cost 2 s.
    let answered = clock::instant();
    let hits = fast.wait_for(1, Duration::from_secs(5)).await;
    assert!(
        hits[0].at.saturating_duration_since(answered) < Duration::from_secs(1),
        "the fast gate waited"
    );
    c.wait_state(
        t["id"].as_str().unwrap_or_default(),
        "succeeded",
        Duration::from_secs(5),
    )
    .await;
    let blocked = c.send("GET", "/v1/gates/blocked", None).await.1;
    assert_eq!(blocked["state"], "paused");
    assert_eq!(blocked["backlog"], 2000);
    assert_eq!(blocked["due"], 2000);
}

/// Changing a gate's rate takes effect at once, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gate_changes_apply_at_once() {
    let server = Server::start().await;
    let c = server.client();
    let sink = Sink::start().await;
    c.put_gate("g", gate_for(&sink, "1/m")).await;
    c.batch(
        (0..20)
            .map(|_| webhook_task("g", &sink.url("/x")))
            .collect(),
    )
    .await;
    sink.wait_for(1, Duration::from_secs(5)).await;
    assert_eq!(sink.hits().len(), 1, "1/m lets one through");
    c.put_gate("g", gate_for(&sink, "100/s")).await;
    sink.wait_for(20, Duration::from_secs(5)).await;
}

/// A pause stops what the gate admitted ahead of its slot time, too. With
/// starts admitted a second ahead at 2/s, two or so wait for their slot
/// times at any moment: after the pause's answer none of them leaves; each
/// goes back to the queue uncounted (no retry, no attempt), and after the
/// resume every task arrives once, as its attempt 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_keeps_what_was_admitted_ahead() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ahead = Duration::from_secs(1);
    let tuning = sluice::core::Tuning {
        lookahead: ahead,
        lookahead_max: ahead,
        ..Default::default()
    };
    let server = Server::start_tuned(dir.path(), |_| {}, Some(tuning)).await;
    let c = server.client();
    let sink = Sink::start().await;
    c.put_gate("g", gate_for(&sink, "2/s")).await;
    let ids = c
        .batch((0..8).map(|_| webhook_task("g", &sink.url("/x"))).collect())
        .await;
    sink.wait_for(2, Duration::from_secs(10)).await;
    let (status, body) = c.send("POST", "/v1/gates/g/pause", None).await;
    assert_eq!(status, 200, "{body}");
    let paused = clock::instant();
    // Each start admitted ahead comes back at its slot time, within the
    // lookahead; in flight, the sink answers at once.
    for _ in 0..200 {
        let (_, gate) = c.send("GET", "/v1/gates/g", None).await;
        if gate["in_flight"] == 0 && paused.elapsed() > ahead {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sent: Vec<Duration> = (sink.hits().iter())
        .filter_map(|h| h.at.checked_duration_since(paused))
        .collect();
    // One sent just before the answer may arrive a little after it.
    assert!(
        sent.iter().all(|&after| after < Duration::from_millis(100)),
        "arrived after the pause: {sent:?}"
    );
    let (_, gate) = c.send("GET", "/v1/gates/g", None).await;
    let before = sink.hits().len();
    assert_eq!(gate["backlog"], (ids.len() - before) as u64, "{gate}");

    c.send("POST", "/v1/gates/g/resume", None).await;
    let hits = sink.wait_for(ids.len(), Duration::from_secs(20)).await;
    assert_eq!(hits.len(), ids.len(), "every task once");
    assert!(hits.iter().all(|h| h.headers["sluice-attempt"] == "1"));
    for id in &ids {
        c.wait_state(id, "succeeded", Duration::from_secs(5)).await;
    }
    let (_, gate) = c.send("GET", "/v1/gates/g", None).await;
    let counters = &gate["counters"];
    assert_eq!(counters["attempts"], ids.len() as u64, "{gate}");
    assert_eq!(counters["retried"], 0, "{gate}");
}

/// A graceful stop lets the attempt in flight finish and records it; the restart
/// does not send it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_attempts_in_flight() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = Server::start_in(dir.path()).await;
    let c = server.client();
    let sink = Sink::start().await;
    sink.behave(|_, _| Reply::ok().delayed(Duration::from_millis(500)));
    c.put_gate("g", gate_for(&sink, "100/s")).await;
    let t = c.create(webhook_task("g", &sink.url("/x"))).await;
    let id = t["id"].as_str().unwrap_or_default().to_string();
    sink.wait_for(1, Duration::from_secs(5)).await;
    server.stop().await;
    let server = Server::start_in(dir.path()).await;
    let c = server.client();
    let done = c.task(&id).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["attempt_count"], 1);
    assert_eq!(sink.hits().len(), 1);
}

/// A task that cannot start by `due + expires_after` (its gate was paused) ends
/// as expired instead of running stale work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_task_expires_instead_of_running() {
    let server = Server::start().await;
    let c = server.client();
    let sink = Sink::start().await;
    c.put_gate("g", gate_for(&sink, "100/s")).await;
    c.send("POST", "/v1/gates/g/pause", None).await;
    // Due a second ago with 300 ms to start: stale once the gate resumes.
    let mut task = webhook_task("g", &sink.url("/stale"));
    let due = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(1);
    task["run_at"] = json!(due.to_string());
    task["expires_after"] = json!("300ms");
    let stale = c.create(task).await;
    let fresh = c.create(webhook_task("g", &sink.url("/fresh"))).await;
    c.send("POST", "/v1/gates/g/resume", None).await;
    c.wait_state(
        fresh["id"].as_str().unwrap_or_default(),
        "succeeded",
        Duration::from_secs(10),
    )
    .await;
    let t = c
        .wait_state(
            stale["id"].as_str().unwrap_or_default(),
            "expired",
            Duration::from_secs(5),
        )
        .await;
    assert_eq!(t["attempt_count"], 0);
    assert!(
        sink.hits()
            .iter()
            .all(|h| h.task != stale["id"].as_str().unwrap_or_default())
    );
}

/// A task run again by hand (or by a replay) gets its whole `expires_after`
/// again, from then: its retries moved its due time, not its window (it
/// once got what was left after the last retry, and expired again unrun).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_run_again_gets_its_whole_expiry_window() {
    let server = Server::start().await;
    let c = server.client();
    let sink = Sink::start().await;
    sink.behave(|_, _| Reply::status(500));
    c.put_gate("g", gate_for(&sink, "100/s")).await;
    let mut task = webhook_task("g", &sink.url("/flaky"));
    task["expires_after"] = json!("2s");
    task["max_attempts"] = json!(20);
    task["backoff"] = json!({ "initial": "600ms", "max": "600ms", "jitter": false });
    let t = c.create(task).await;
    let id = t["id"].as_str().unwrap_or_default();
    let t = c.wait_state(id, "expired", Duration::from_secs(10)).await;
    assert!(t["attempt_count"].as_u64() > Some(1), "retried first: {t}");
    let (status, again) = c.send("POST", &format!("/v1/tasks/{id}/retry"), None).await;
    assert_eq!(status, 200, "{again}");
    let at = |field: &str| {
        let text = again[field].as_str().unwrap_or_default();
        text.parse::<jiff::Timestamp>()
            .unwrap_or_else(|e| panic!("{field} {text:?}: {e}"))
    };
    let window = at("expires_at").duration_since(at("due_at"));
    assert_eq!(window, jiff::SignedDuration::from_secs(2), "{again}");
}

/// Every webhook carries Standard Webhooks signatures, one per active secret
/// during a rotation, which an independent implementation (the
/// `standardwebhooks` crate) verifies. The secrets never come back from the API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_signed_per_standard_webhooks() {
    let server = Server::start().await;
    let c = server.client();
    let sink = Sink::start().await;
    let (old, new) = (
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "whsec_c2x1aWNlLXRlc3Qtc2VjcmV0LTAxMjM0NTY3ODk=",
    );
    let mut gate = gate_for(&sink, "100/s");
    gate["signing_secrets"] = json!([old, new]);
    let shown = c.put_gate("signed", gate).await;
    assert_eq!(shown["signing_secrets"], 2);
    let t = c.create(webhook_task("signed", &sink.url("/signed"))).await;
    let hit = &sink.wait_for(1, Duration::from_secs(5)).await[0];
    let mut headers = http::HeaderMap::new();
    for name in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
        let value = hit
            .headers
            .get(name)
            .unwrap_or_else(|| panic!("{name} missing"));
        headers.insert(name, value.parse().expect("header value"));
    }
    assert_eq!(
        hit.headers["webhook-id"],
        t["id"].as_str().unwrap_or_default()
    );
    assert_eq!(
        hit.headers["webhook-signature"].split(' ').count(),
        2,
        "both secrets sign"
    );
    for secret in [old, new] {
        let verifier = standardwebhooks::Webhook::new(secret).expect("secret");
        verifier
            .verify(&hit.body, &headers)
            .expect("signature verifies");
        assert!(
            verifier
                .verify(b"{\"hello\":\"tampered\"}", &headers)
                .is_err()
        );
    }
    // Not in any API answer, and a re-PUT without the field keeps them.
    for path in [
        "/v1/gates/signed",
        "/v1/gates",
        &format!("/v1/tasks/{}", t["id"].as_str().unwrap_or_default()),
    ] {
        let (_, v) = c.send("GET", path, None).await;
        assert!(
            !v.to_string().contains("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            "{path} leaks a secret"
        );
    }
    let kept = c.put_gate("signed", gate_for(&sink, "100/s")).await;
    assert_eq!(kept["signing_secrets"], 2);
    let (status, v) = c
        .send(
            "PUT",
            "/v1/gates/bad",
            Some(json!({ "rate": "1/s", "signing_secrets": ["hunter2"] })),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(v["error"]["field"], "signing_secrets[0]");
    assert!(
        !v.to_string().contains("hunter2"),
        "the error does not echo the secret"
    );
}
