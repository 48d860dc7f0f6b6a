//! `kill -9` of the real binary loses nothing that was acknowledged.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;
use sluice::clock;

use crate::support::{Client, Reply, Sink, webhook_task};

pub fn spawn_server(dir: &std::path::Path, port: u16) -> KillOnDrop {
    spawn_server_with(dir, port, |_| {})
}

/// A server process a test started, stopped (by its PID) however the test
/// ends: one left running by a failed test would hold the test run's
/// output open, and the run with it.
pub struct KillOnDrop(pub Child);

impl KillOnDrop {
    pub fn stop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.stop();
    }
}

impl std::ops::Deref for KillOnDrop {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

/// The real binary on `port`, its command adjusted first (environment, say).
pub fn spawn_server_with(
    dir: &std::path::Path,
    port: u16,
    adjust: impl FnOnce(&mut Command),
) -> KillOnDrop {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
    command
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(dir)
        .env("SLUICE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    adjust(&mut command);
    KillOnDrop(command.spawn().expect("spawn sluice"))
}

/// A port for a server the test starts, free now and handed out once in the
/// run. A port from `bind(0)` is no good: between its check and the server's
/// bind, the kernel may hand it out again (to another node, or a sink), and
/// the server then finds it taken. These ports lie outside the ephemeral
/// range the kernel draws from, so only this function gives them out.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static TAKEN: AtomicU32 = AtomicU32::new(0);
    let (from, to) = outside_ephemeral_range();
    let span = (to - from).max(1);
    // Apart from another run's ports on the same machine.
    let start = std::process::id().wrapping_mul(997) % span;
    for _ in 0..span {
        let port = from + (start + TAKEN.fetch_add(1, Ordering::Relaxed)) % span;
        if let Ok(port) = u16::try_from(port)
            && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
        {
            return port;
        }
    }
    panic!("no free port outside the ephemeral range");
}

/// Ports `from..to` the kernel never hands out by itself: below its
/// ephemeral range (Linux's default where it cannot be read), or above it.
fn outside_ephemeral_range() -> (u32, u32) {
    let (low, high) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut bounds = s.split_whitespace().map(str::parse::<u32>);
            Some((bounds.next()?.ok()?, bounds.next()?.ok()?))
        })
        .unwrap_or((32_768, 60_999));
    if low >= 12_000 {
        (10_000, low)
    } else {
        (high + 1, 65_536)
    }
}

pub async fn wait_ready(c: &Client) {
    let start = clock::instant();
    loop {
        let ok = reqwest::get(format!("{}/readyz", c_base(c)))
            .await
            .is_ok_and(|r| r.status() == 200);
        if ok {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "server never became ready"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn c_base(c: &Client) -> String {
    c.base_url()
}

/// 2,000 tasks are acknowledged, some are in flight at a slow sink, and the server
/// is killed with SIGKILL. After a restart on the same file every acknowledged
/// task reaches the sink, and none ends in any state but succeeded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_acknowledged_task() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let sink = Sink::start().await;
    sink.behave(|_, _| Reply::ok().delayed(Duration::from_millis(50)));
    let mut child = spawn_server(dir.path(), port);
    let c = Client::new(&format!("http://127.0.0.1:{port}"));
    wait_ready(&c).await;
    c.put_gate(
        "crash",
        json!({
            "rate": "400/s", "burst": 20, "concurrency": 20,
            "allowed_hosts": [sink.host()],
            "recovery": { "start": 1.0 },
            "retry": { "max_attempts": 10, "backoff": { "initial": "100ms", "max": "500ms" } },
        }),
    )
    .await;
    let mut ids = Vec::new();
    for _ in 0..4 {
        let tasks = (0..500)
            .map(|_| webhook_task("crash", &sink.url("/c")))
            .collect();
        ids.extend(c.batch(tasks).await);
    }
    // Kill while some attempts are in flight.
    sink.wait_for(100, Duration::from_secs(20)).await;
    child.kill().expect("kill -9");
    let _ = child.wait();
    let before = sink.hits().len();
    assert!(
        before < 2_000,
        "the kill came too late to test anything ({before} hits)"
    );
    // What a kill leaves is consistent: each commit changes the records and
    // everything derived from them together, or nothing.
    let check = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("check")
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .expect("run sluice check");
    assert!(
        check.status.success(),
        "check after kill -9: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );

    let mut child = spawn_server(dir.path(), port);
    wait_ready(&c).await;
    let start = clock::instant();
    loop {
        let delivered: std::collections::HashSet<String> =
            sink.hits().into_iter().map(|h| h.task).collect();
        if ids.iter().all(|id| delivered.contains(id)) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{} of {} acknowledged tasks never arrived",
            ids.iter().filter(|id| !delivered.contains(*id)).count(),
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for id in ids.iter().step_by(97) {
        c.wait_state(id, "succeeded", Duration::from_secs(20)).await;
    }
    let hits = sink.hits().len();
    // Duplicates are bounded by what was in flight at the kill (concurrency 20).
    assert!(hits <= 2_000 + 20, "{hits} hits for 2000 tasks");
    child.kill().expect("kill");
    let _ = child.wait();
}

/// Crash torture: load runs against the real binary while it is killed with
/// SIGKILL at random moments, `TORTURE_KILLS` times (3 in CI; see the README for
/// long runs). Afterwards every task whose create got a 2xx reached the sink,
/// every one is in the store and finished, the file opened cleanly each time,
/// and duplicates stay within what can have been in flight at the kills.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torture_kill_9_under_load() {
    let kills: usize = std::env::var("TORTURE_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let seed = clock::now().as_ms();
    let mut rng = sluice::core::rng::Rng::new(seed);
    eprintln!("torture: {kills} kills, seed {seed}");
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let sink = Sink::start().await;
    sink.behave(|_, i| Reply::ok().delayed(Duration::from_millis((i % 4) as u64 * 2)));
    let concurrency = 32;
    let c = Client::new(&format!("http://127.0.0.1:{port}"));
    let mut acked: Vec<String> = Vec::new();
    let mut gate_made = false;
    for round in 0..=kills {
        let mut child = spawn_server(dir.path(), port);
        wait_ready(&c).await;
        if !gate_made {
            c.put_gate(
                "torture",
                json!({
                    "rate": "5000/s", "burst": 100, "concurrency": concurrency,
                    "allowed_hosts": [sink.host()], "recovery": { "start": 1.0 },
                    "retry": { "max_attempts": 100, "backoff": { "initial": "50ms", "max": "200ms" } },
                }),
            )
            .await;
            gate_made = true;
        }
        if round == kills {
            // The last run is left alone to drain.
            let start = clock::instant();
            let allowed = Duration::from_secs(60 + acked.len() as u64 / 2_000);
            loop {
                let delivered: std::collections::HashSet<String> =
                    sink.hits().into_iter().map(|h| h.task).collect();
                let missing = acked.iter().filter(|id| !delivered.contains(*id)).count();
                if missing == 0 {
                    break;
                }
                assert!(
                    start.elapsed() < allowed,
                    "{missing} of {} acknowledged tasks never arrived",
                    acked.len()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            // Every acknowledged task is in the store and finished; a sample is
            // waited on, the rest must already be done.
            for id in &acked {
                let (status, t) = c.send("GET", &format!("/v1/tasks/{id}"), None).await;
                assert_eq!(status, 200, "acknowledged task {id} missing from the store");
                if t["state"] != "succeeded" {
                    c.wait_state(id, "succeeded", Duration::from_secs(30)).await;
                }
            }
            child.kill().expect("kill");
            let _ = child.wait();
            break;
        }
        // Load until a random moment, then SIGKILL.
        let kill_at = clock::instant() + Duration::from_millis(200 + rng.below(1_300));
        let mut load = tokio::task::JoinSet::new();
        for _ in 0..2 {
            let c = c.clone();
            let url = sink.url("/t");
            load.spawn(async move {
                let mut mine = Vec::new();
                for _ in 0..40 {
                    let tasks: Vec<_> = (0..50).map(|_| webhook_task("torture", &url)).collect();
                    match c
                        .try_send("POST", "/v1/tasks/batch", json!({ "tasks": tasks }))
                        .await
                    {
                        Some((201, v)) => mine.extend(
                            v["ids"]
                                .as_array()
                                .into_iter()
                                .flatten()
                                .filter_map(|i| i.as_str().map(String::from)),
                        ),
                        _ => break, // the server died under us: not acknowledged
                    }
                }
                mine
            });
        }
        tokio::time::sleep_until(tokio::time::Instant::from_std(kill_at)).await;
        child.kill().expect("kill -9");
        let _ = child.wait();
        while let Some(r) = load.join_next().await {
            acked.extend(r.expect("load task"));
        }
    }
    let hits = sink.hits();
    let unique: std::collections::HashSet<&str> = hits.iter().map(|h| h.task.as_str()).collect();
    let duplicates = hits.len() - unique.len();
    eprintln!(
        "torture: survived {kills} kills, {} acknowledged tasks, {} deliveries, {duplicates} duplicates",
        acked.len(),
        hits.len()
    );
    assert!(
        duplicates <= kills * concurrency as usize,
        "{duplicates} duplicates for {kills} kills"
    );
}
