//! The `sluice` binary as a client: tables by default, `--json` for scripts, and
//! exit codes scripts can rely on.

use std::process::{Command, Output};

use serde_json::Value;

use crate::support::{Server, Sink};

fn sluice(server: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .env("SLUICE_SERVER", server)
        .env("NO_COLOR", "1")
        .output()
        .expect("run sluice")
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_tables_json_and_exit_codes() {
    let server = Server::start().await;
    let sink = Sink::start().await;
    let url = server.url.clone();
    let host = sink.host();
    let target = sink.url("/cli");
    let out = tokio::task::spawn_blocking(move || {
        let mut results = Vec::new();
        let set = sluice(
            &url,
            &[
                "gate",
                "set",
                "billing",
                "--rate",
                "50/s",
                "--concurrency",
                "5",
                "--allow-host",
                &host,
            ],
        );
        results.push(("gate set", set.status.code(), text(&set)));
        let create = sluice(
            &url,
            &[
                "task", "create", "--gate", "billing", "--url", &target, "--delay", "1h",
                "--label", "team=ops",
            ],
        );
        results.push(("task create", create.status.code(), text(&create)));
        let id = text(&create).trim().to_string();
        let get = sluice(&url, &["task", "get", &id]);
        results.push(("task get", get.status.code(), text(&get)));
        let json = sluice(&url, &["task", "get", &id, "--json"]);
        results.push(("task get --json", json.status.code(), text(&json)));
        let status = sluice(&url, &["status"]);
        results.push(("status", status.status.code(), text(&status)));
        let missing = sluice(&url, &["gate", "get", "nope"]);
        results.push(("missing", missing.status.code(), text(&missing)));
        let conflict = sluice(&url, &["gate", "rm", "billing"]);
        results.push(("conflict", conflict.status.code(), text(&conflict)));
        let invalid = sluice(&url, &["gate", "set", "bad", "--rate", "fast"]);
        results.push(("invalid", invalid.status.code(), text(&invalid)));
        let usage = sluice(&url, &["gate", "frobnicate"]);
        results.push(("usage", usage.status.code(), text(&usage)));
        let down = sluice("http://127.0.0.1:9", &["gate", "ls"]);
        results.push(("down", down.status.code(), text(&down)));
        results
    })
    .await
    .expect("cli runs");
    let code = |name: &str| {
        out.iter()
            .find(|r| r.0 == name)
            .map(|r| r.1)
            .unwrap_or_default()
    };
    let stdout = |name: &str| {
        out.iter()
            .find(|r| r.0 == name)
            .map(|r| r.2.clone())
            .unwrap_or_default()
    };
    assert_eq!(code("gate set"), Some(0));
    assert!(
        stdout("gate set").contains("GATE") && stdout("gate set").contains("billing"),
        "{}",
        stdout("gate set")
    );
    assert_eq!(code("task create"), Some(0));
    assert_eq!(stdout("task create").trim().len(), 13, "prints the id");
    assert!(
        stdout("task get").contains("scheduled"),
        "{}",
        stdout("task get")
    );
    let v: Value = serde_json::from_str(&stdout("task get --json")).expect("--json prints JSON");
    assert_eq!(v["labels"]["team"], "ops");
    assert!(
        stdout("status").contains("BACKLOG") && stdout("status").contains("billing"),
        "{}",
        stdout("status")
    );
    assert_eq!(code("missing"), Some(3), "not found");
    assert_eq!(code("conflict"), Some(4), "conflict");
    assert_eq!(code("invalid"), Some(5), "invalid request");
    assert_eq!(code("usage"), Some(2), "usage error");
    assert_eq!(code("down"), Some(1), "server unreachable");
}

/// `status --watch` redraws in place: each frame clears the screen and shows
/// the figures of that moment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_watch_redraws_in_place() {
    use std::io::Read;
    let server = Server::start().await;
    let sink = Sink::start().await;
    let c = server.client();
    c.put_gate("watched", crate::support::gate_for(&sink, "10/s"))
        .await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["status", "--watch", "--server", &server.url])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn sluice");
    let mut stdout = child.stdout.take().expect("stdout");
    // Read until a third frame begins, so two are whole (two refreshes), for
    // at most 15 s.
    let mut reader = tokio::task::spawn_blocking(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        let clears = |s: &[u8]| s.windows(4).filter(|w| w == b"\x1b[2J").count();
        while clears(&seen) < 3 {
            match stdout.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
        seen
    });
    // The third frame is the event; past 15 s, stopping the child ends the read.
    let done = tokio::time::timeout(std::time::Duration::from_secs(15), &mut reader).await;
    let _ = child.kill();
    let _ = child.wait();
    let seen = match done {
        Ok(seen) => seen,
        Err(_) => reader.await,
    }
    .expect("reader");
    let text = String::from_utf8_lossy(&seen);
    assert!(text.matches("\x1b[2J").count() >= 3, "{text}");
    let frames: Vec<&str> = text.split("\x1b[2J\x1b[H").skip(1).take(2).collect();
    assert!(
        frames
            .iter()
            .all(|f| f.contains("watched") && f.contains("10/s")),
        "{text}"
    );
}
