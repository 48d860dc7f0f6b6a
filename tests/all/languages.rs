//! Plugins written in JavaScript and Python (SPEC §11), built from
//! `plugins/js/`, `plugins/python/` and their hostile twins in
//! `tests/plugins/` by `scripts/build-plugins` with the pinned componentize-js
//! and componentize-py. The examples' jobs run exactly as the Rust ones do,
//! against the same loopback APIs through gates, and the hostile ones fail
//! only their own attempt. One server per language, so that the uploads after
//! the first reuse the runtime's compiled code.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::plugins::{
    charge_invoice, cleanup_stray, held_mib, hibernate_idle, last_attempt, plugin_task, push,
};
use crate::support::{Client, Server, Sink, max_in_window};

/// Uploads `<name>-<suffix>` of each example as `<name>` and runs the Rust
/// examples' scenarios against them.
async fn examples_run_like_the_rust_ones(c: &Client, suffix: &str) {
    for name in ["hibernate-idle", "cleanup-stray", "charge-invoice"] {
        let (status, v) = push(c, name, "0.1.0", &format!("{name}-{suffix}")).await;
        assert_eq!(status, 201, "{name}-{suffix}: {v}");
    }
    tokio::join!(hibernate_idle(c), cleanup_stray(c), charge_invoice(c));
}

/// Creates a task of the `hostile` plugin and waits for it to end.
async fn hostile_task(c: &Client, gate: &str, input: Value) -> Value {
    let id = c.create(plugin_task(gate, "hostile", input)).await["id"]
        .as_str()
        .expect("id")
        .to_string();
    c.wait_done(&id, Duration::from_secs(40)).await
}

fn output(task: &Value) -> Value {
    let attempt = last_attempt(task);
    serde_json::from_str(attempt["response"].as_str().unwrap_or("null"))
        .unwrap_or_else(|_| panic!("output is JSON: {attempt}"))
}

/// The abuses both hostile plugins share: a loop that never yields, memory
/// without end, and a flood of concurrent requests. Returns the sink for
/// more checks.
async fn hostile_are_contained(c: &Client, suffix: &str) -> Sink {
    let (status, v) = push(c, "hostile", "0.1.0", &format!("hostile-{suffix}")).await;
    assert_eq!(status, 201, "hostile-{suffix}: {v}");
    let sink = Sink::start().await;
    let gate = |rate: &str, timeout: &str| {
        json!({
            "rate": rate, "burst": 1, "concurrency": 3,
            "allowed_hosts": [sink.host()], "recovery": { "start": 1.0 },
            "timeout": timeout, "retry": { "max_attempts": 1 },
        })
    };
    c.put_gate("hostile", gate("50/s", "3s")).await;
    c.put_gate("flood", gate("10/s", "20s")).await;

    // The flood first, alone: see `spinning_plugins_do_not_bunch_other_requests`
    // for one beside a spinning plugin.
    let flood = hostile_task(
        c,
        "flood",
        json!({ "do": "flood", "url": sink.url("/flood"), "count": 10 }),
    )
    .await;
    let (looping, bomb) = tokio::join!(
        hostile_task(c, "hostile", json!({ "do": "loop" })),
        hostile_task(c, "hostile", json!({ "do": "memory" })),
    );
    // Stopped at its deadline, though it never calls the host.
    assert_eq!(looping["state"], "failed", "{looping}");
    assert_eq!(last_attempt(&looping)["outcome"], "timeout", "{looping}");
    // Held to its 64 MiB: it grows, then fails on its own, well before its
    // deadline.
    assert_eq!(bomb["state"], "failed", "{bomb}");
    assert_ne!(last_attempt(&bomb)["outcome"], "timeout", "{bomb}");
    let held = held_mib(last_attempt(&bomb));
    assert!((16..64).contains(&held), "held {held} MiB: {bomb}");
    // Ten requests at once, paid to the gate one token at a time.
    assert_eq!(flood["state"], "succeeded", "{flood}");
    assert_eq!(output(&flood)["ok"], 10, "{flood}");
    let times: Vec<Instant> = sink
        .hits()
        .iter()
        .filter(|h| h.path == "/flood")
        .map(|h| h.at)
        .collect();
    assert_eq!(times.len(), 10);
    // 100 ms apart by the gate; at the sink, with the loopback's jitter, at
    // least half that. Ten let out at once would come together.
    assert!(
        max_in_window(&times, Duration::from_millis(50)) <= 1,
        "{times:?}"
    );
    let span = times[9].duration_since(times[0]);
    assert!(
        span >= Duration::from_millis(850),
        "10 requests at 10/s took only {span:?}"
    );
    sink
}

#[tokio::test]
async fn javascript_plugins_run_like_the_rust_ones_and_stay_contained() {
    let mut server = Server::start().await;
    let c = server.client();
    examples_run_like_the_rust_ones(&c, "js").await;
    hostile_are_contained(&c, "js").await;
    let (status, _) = c.send("GET", "/healthz", None).await;
    assert_eq!(status, 200);
    server.stop().await;
}

#[tokio::test]
async fn python_plugins_run_like_the_rust_ones_and_stay_contained() {
    let mut server = Server::start().await;
    let c = server.client();
    examples_run_like_the_rust_ones(&c, "py").await;
    hostile_are_contained(&c, "py").await;

    // CPython imports the file system and sockets; linked inert, they open
    // nothing and connect nowhere.
    let bait = std::net::TcpListener::bind("127.0.0.1:0").expect("bait listener");
    bait.set_nonblocking(true).expect("nonblocking");
    let port = bait.local_addr().expect("addr").port();
    let (file, socket) = tokio::join!(
        hostile_task(&c, "hostile", json!({ "do": "file" })),
        hostile_task(&c, "hostile", json!({ "do": "socket", "port": port })),
    );
    assert_eq!(file["state"], "succeeded", "{file}");
    let file = output(&file);
    assert_eq!(file["passwd"]["ok"], false, "{file}");
    assert_eq!(file["root"]["ok"], false, "{file}");
    assert_eq!(socket["state"], "succeeded", "{socket}");
    assert_eq!(output(&socket)["connected"], false, "{socket}");
    assert!(
        matches!(bait.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "a plugin opened a TCP connection"
    );
    server.stop().await;
}
