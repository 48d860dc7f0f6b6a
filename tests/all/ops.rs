//! Operating the store (SPEC §10): a backup taken from a busy server restores
//! everything it had acknowledged; `check` finds corrupted counters and
//! indexes without changing the file, and `--repair` rebuilds them; the
//! offline tools never touch a store a running server holds.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::json;
use sluice::core::{GateId, TaskId, Timestamp};
use sluice::store::{Counts, Store, Writes};

use crate::plugins::{plugin_task, push_ok};
use crate::support::{Reply, Server, Sink, gate_for, webhook_task};

pub(crate) async fn sluice(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(&args)
            .env("NO_COLOR", "1")
            .env_remove("SLUICE_TOKEN")
            .env_remove("SLUICE_DATA_DIR")
            .output()
            .expect("run sluice")
    })
    .await
    .expect("join")
}

pub(crate) fn said(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A backup taken while tasks are being created and delivered holds every
/// task, gate, schedule and plugin acknowledged before it began; restored
/// into a new directory, a server started there serves all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_under_load_restores_everything() {
    let server = Server::start().await;
    let c = server.client();
    let sink = Sink::start().await;
    sink.behave(|_, _| Reply::ok().delayed(Duration::from_millis(20)));
    c.put_gate("busy", gate_for(&sink, "200/s")).await;
    c.put_gate("later", gate_for(&sink, "10/s")).await;
    push_ok(&c, "cleanup-stray").await;
    let (status, v) = c
        .send(
            "PUT",
            "/v1/schedules/nightly",
            Some(json!({ "cron": "0 3 * * *", "task": webhook_task("later", &sink.url("/n")) })),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    let mut acknowledged = Vec::new();
    for _ in 0..10 {
        let batch = (0..100)
            .map(|i| {
                let mut t =
                    webhook_task(if i % 2 == 0 { "busy" } else { "later" }, &sink.url("/b"));
                if i % 2 == 1 {
                    t["delay"] = json!("1h");
                }
                t
            })
            .collect();
        acknowledged.extend(c.batch(batch).await);
    }
    let plugin = c
        .create(plugin_task("later", "cleanup-stray", json!({})))
        .await;
    acknowledged.push(plugin["id"].as_str().expect("id").to_string());

    // Load that goes on during the backup: more tasks, and deliveries.
    let loader = {
        let c = c.clone();
        let url = sink.url("/during");
        tokio::spawn(async move {
            for _ in 0..20 {
                c.batch((0..50).map(|_| webhook_task("busy", &url)).collect())
                    .await;
            }
        })
    };
    let out_dir = tempfile::tempdir().expect("dir");
    let file = out_dir.path().join("backup.redb");
    let out = sluice(&["backup", "--server", &server.url, "--out", path(&file)]).await;
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    assert!(said(&out).contains("backup written to"), "{}", said(&out));
    loader.await.expect("loader");
    assert!(
        !out_dir.path().join("backup.partial").exists(),
        "the partial download is renamed"
    );
    let scratch: Vec<_> = std::fs::read_dir(&server.dir)
        .expect("data dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("backup-"))
        .collect();
    assert!(scratch.is_empty(), "scratch files left: {scratch:?}");

    // Restoring into the running server's directory is refused.
    let live = sluice(&[
        "restore",
        path(&file),
        "--data-dir",
        path(&server.dir),
        "--force",
    ])
    .await;
    assert_eq!(live.status.code(), Some(4), "{}", said(&live));
    assert!(said(&live).contains("running server"), "{}", said(&live));

    let restored = tempfile::tempdir().expect("dir");
    let out = sluice(&["restore", path(&file), "--data-dir", path(restored.path())]).await;
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    let check = sluice(&["check", "--data-dir", path(restored.path())]).await;
    assert_eq!(check.status.code(), Some(0), "{}", said(&check));
    assert!(said(&check).contains("no problems"), "{}", said(&check));

    let mut copy = Server::start_in(restored.path()).await;
    let r = copy.client();
    for id in &acknowledged {
        let (status, v) = r.send("GET", &format!("/v1/tasks/{id}"), None).await;
        assert_eq!(
            status, 200,
            "task {id} was acknowledged before the backup: {v}"
        );
    }
    for gate in ["busy", "later"] {
        let (status, v) = r.send("GET", &format!("/v1/gates/{gate}"), None).await;
        assert_eq!(status, 200, "{v}");
    }
    let (status, v) = r.send("GET", "/v1/schedules/nightly", None).await;
    assert_eq!(status, 200, "{v}");
    let (status, v) = r.send("GET", "/v1/plugins/cleanup-stray/0.1.0", None).await;
    assert_eq!(status, 200, "{v}");

    copy.stop().await;

    // Something that is not a store is refused, and nothing is replaced.
    let junk = out_dir.path().join("junk.redb");
    std::fs::write(&junk, b"not a store").expect("write");
    let refused = sluice(&[
        "restore",
        path(&junk),
        "--data-dir",
        path(restored.path()),
        "--force",
    ])
    .await;
    assert_eq!(refused.status.code(), Some(5), "{}", said(&refused));
    // Over a stopped store: only with --force, which keeps the old one beside.
    let again = sluice(&["restore", path(&file), "--data-dir", path(restored.path())]).await;
    assert_eq!(again.status.code(), Some(4), "{}", said(&again));
    assert!(said(&again).contains("--force"), "{}", said(&again));
    let forced = sluice(&[
        "restore",
        path(&file),
        "--data-dir",
        path(restored.path()),
        "--force",
    ])
    .await;
    assert_eq!(forced.status.code(), Some(0), "{}", said(&forced));
    assert!(restored.path().join("sluice.redb.before-restore").exists());
    assert!(!restored.path().join("sluice.redb.restoring").exists());
}

/// `check` reports corrupted counters and indexes and leaves the file as it
/// was; `--repair` rebuilds them, and the server then dispatches the task
/// whose index entry was lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_corruption_and_repair_rebuilds() {
    let temp = tempfile::tempdir().expect("dir");
    let dir = temp.path();
    let sink = Sink::start().await;
    let mut server = Server::start_in(dir).await;
    let c = server.client();
    c.put_gate("g", gate_for(&sink, "100/s")).await;
    let mut task = webhook_task("g", &sink.url("/c"));
    task["delay"] = json!("2s");
    let lost = c.create(task.clone()).await;
    task["coalesce_key"] = json!("c1");
    let kept = c.create(task).await;

    let busy = sluice(&["check", "--data-dir", path(dir)]).await;
    assert_eq!(busy.status.code(), Some(4), "{}", said(&busy));
    assert!(said(&busy).contains("running server"), "{}", said(&busy));
    server.stop().await;

    let clean = sluice(&["check", "--data-dir", path(dir)]).await;
    assert_eq!(clean.status.code(), Some(0), "{}", said(&clean));
    assert!(said(&clean).contains("checked 2 tasks"), "{}", said(&clean));

    // Corrupt it: a counter off by a lot, and one task's pending entry gone.
    let file = dir.join(sluice::server::DATA_FILE);
    let lost_id: u64 = task_number(lost["id"].as_str().expect("id"));
    let kept_id: u64 = task_number(kept["id"].as_str().expect("id"));
    {
        let store = Store::open(&file).expect("open");
        store
            .write(|tx| {
                let (gate_id, mut counts) = tx.all_counts()?.into_iter().next().expect("counts");
                counts.pending += 40;
                tx.put_counts(gate_id, &counts)?;
                let record = tx.task(lost_id)?.expect("task");
                assert!(tx.remove_pending(
                    GateId(record.gate_id),
                    None,
                    Timestamp(record.due_at),
                    TaskId(lost_id)
                )?);
                // The coalesce key names another task than the waiting one.
                tx.put_coalesced(record.gate_id, "c1", lost_id)?;
                Ok(())
            })
            .expect("corrupt");
    }
    let before = std::fs::read(&file).expect("read");
    let found = sluice(&["check", "--data-dir", path(dir)]).await;
    assert_eq!(found.status.code(), Some(8), "{}", said(&found));
    let text = said(&found);
    assert!(
        text.contains("42 pending counted, 2 such tasks stored"),
        "{text}"
    );
    assert!(text.contains(&format!("pending: task {lost_id}")), "{text}");
    assert!(text.contains("due_minutes"), "{text}");
    assert!(
        text.contains(&format!(
            "coalesce: gate id 1 key \"c1\" names task {lost_id}, not the waiting task {kept_id}"
        )),
        "{text}"
    );
    assert_eq!(
        std::fs::read(&file).expect("read"),
        before,
        "check changed the file"
    );

    let json = sluice(&["check", "--data-dir", path(dir), "--json"]).await;
    assert_eq!(json.status.code(), Some(8), "{}", said(&json));
    let v: serde_json::Value =
        serde_json::from_slice(&json.stdout).expect("check --json prints JSON");
    assert_eq!(v["ok"], false);
    assert!(
        v["checked"]["problems"]
            .as_array()
            .is_some_and(|p| p.len() >= 3),
        "{v}"
    );

    let repaired = sluice(&["check", "--data-dir", path(dir), "--repair"]).await;
    assert_eq!(repaired.status.code(), Some(0), "{}", said(&repaired));
    assert!(
        said(&repaired).contains("no problems remain"),
        "{}",
        said(&repaired)
    );
    let store = Store::open(&file).expect("open");
    let counts: Vec<(u32, Counts)> = store.write(|tx| tx.all_counts()).expect("counts");
    assert_eq!(counts[0].1.pending, 2);
    let named = store
        .write(|tx| tx.coalesced(counts[0].0, "c1"))
        .expect("coalesce");
    assert_eq!(named, Some(kept_id), "repair names the waiting task again");
    drop(store);

    // The task whose index entry was lost is found again and delivered.
    let server = Server::start_in(dir).await;
    let c = server.client();
    for t in [&lost, &kept] {
        c.wait_state(
            t["id"].as_str().expect("id"),
            "succeeded",
            Duration::from_secs(15),
        )
        .await;
    }
}

pub(crate) fn task_number(id: &str) -> u64 {
    id.parse::<TaskId>().expect("a task id").0
}

/// A retention under a day is refused before anything starts: pruning a task
/// frees its idempotency key, which SPEC §1 keeps a day after the task ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retention_under_a_day_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let out = sluice(&[
        "serve",
        "--data-dir",
        path(&data),
        "--listen",
        "127.0.0.1:0",
        "--retention",
        "23h",
    ])
    .await;
    assert_ne!(out.status.code(), Some(0), "{}", said(&out));
    assert!(
        said(&out).contains("retention must be at least 1d"),
        "{}",
        said(&out)
    );
    assert!(!data.exists(), "nothing was made");
}

/// `docs/config.md` is what the code generates, and the code's list of
/// settings is every flag of `sluice serve` and every key of the config file.
#[test]
fn config_reference_matches_the_code() {
    use clap::CommandFactory;
    let settings = sluice::config::settings();
    let cli = sluice::cli::Cli::command();
    let serve = cli.find_subcommand("serve").expect("serve");
    for arg in serve.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if long == "help" {
            continue;
        }
        let flag = format!("--{long}");
        let s = settings
            .iter()
            .find(|s| s.flag == Some(flag.as_str()))
            .unwrap_or_else(|| panic!("{flag} is missing from config::settings"));
        let env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
        assert_eq!(s.env.map(str::to_string), env, "{flag}'s variable");
    }
    let flags: Vec<_> = settings.iter().filter_map(|s| s.flag).collect();
    for flag in flags {
        let long = flag.trim_start_matches("--");
        assert!(
            serve.get_arguments().any(|a| a.get_long() == Some(long)),
            "{flag} is listed but `sluice serve` has no such flag"
        );
    }
    let file = serde_json::to_value(sluice::config::FileConfig::default()).expect("json");
    let keys: std::collections::BTreeSet<&str> = file
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    let listed: std::collections::BTreeSet<&str> = settings.iter().filter_map(|s| s.key).collect();
    assert_eq!(keys, listed, "config file keys and config::settings differ");

    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/config.md");
    let generated = sluice::config::reference();
    if std::env::var_os("SLUICE_BLESS").is_some() {
        std::fs::write(&path, &generated).expect("write docs/config.md");
    }
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        on_disk == generated,
        "docs/config.md is out of date: regenerate it with `SLUICE_BLESS=1 cargo test --test all config_reference`"
    );
}

/// The container file passes hadolint, and the systemd unit passes
/// `systemd-analyze verify` with no warning and scores as well sandboxed in
/// `systemd-analyze security` (exposure 1.5 or less out of 10). Neither can
/// run here (no container registry, no systemd as PID 1): docs/operations.md
/// says what was verified how. `scripts/test` installs the tools and sets
/// SLUICE_DEPLOY_TESTS, which turns a missing tool into a failure.
#[test]
fn deployment_recipes_pass_their_linters() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let required = std::env::var_os("SLUICE_DEPLOY_TESTS").is_some();
    let hadolint = std::env::var("SLUICE_HADOLINT").unwrap_or_else(|_| "hadolint".into());
    match Command::new(&hadolint)
        .arg(root.join("deploy/Dockerfile"))
        .output()
    {
        Ok(out) => assert!(
            out.status.success() && out.stdout.is_empty(),
            "hadolint: {}",
            said(&out)
        ),
        Err(e) => {
            assert!(!required, "{hadolint}: {e}");
            eprintln!("skipping hadolint: {e}");
        }
    }
    // verify checks that ExecStart's program exists: point it at this build.
    let temp = tempfile::tempdir().expect("dir");
    let unit = std::fs::read_to_string(root.join("deploy/sluice.service")).expect("unit");
    assert!(
        unit.contains("ExecStart=/usr/local/bin/sluice serve"),
        "{unit}"
    );
    let unit = unit.replace("/usr/local/bin/sluice", env!("CARGO_BIN_EXE_sluice"));
    let file = temp.path().join("sluice.service");
    std::fs::write(&file, unit).expect("write");
    match Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&file)
        .output()
    {
        Ok(out) => assert!(
            out.status.success() && out.stderr.is_empty(),
            "systemd-analyze verify: {}",
            said(&out)
        ),
        Err(e) => {
            assert!(!required, "systemd-analyze: {e}");
            eprintln!("skipping systemd-analyze: {e}");
            return;
        }
    }
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--threshold=15", "--no-pager"])
        .arg(&file)
        .output()
        .expect("systemd-analyze security");
    assert!(out.status.success(), "exposure above 1.5: {}", said(&out));
}

/// A stop turns `/readyz` to 503 while the API still answers, and only then
/// closes the listener: a load balancer sees the server leave before its
/// connections are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_turns_false_before_the_listener_closes() {
    let mut server = Server::start().await;
    let c = server.client();
    let sink = Sink::start().await;
    sink.behave(|_, _| Reply::ok().delayed(Duration::from_millis(1_500)));
    c.put_gate("g", gate_for(&sink, "10/s")).await;
    let t = c.create(webhook_task("g", &sink.url("/slow"))).await;
    sink.wait_for(1, Duration::from_secs(10)).await;
    let running = server.running.take().expect("running");
    let stopping = tokio::spawn(running.shutdown());
    let probe = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("client");
    let mut seen = Vec::new();
    for _ in 0..1_000 {
        match probe.get(format!("{}/readyz", server.url)).send().await {
            Ok(r) => seen.push(r.status().as_u16()),
            Err(_) => break, // the listener has closed
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stopping.await.expect("join").expect("clean stop");
    assert!(seen.contains(&503), "no 503 while stopping: {seen:?}");
    let first_503 = seen.iter().position(|&s| s == 503).unwrap_or(0);
    assert!(
        seen[first_503..].iter().all(|&s| s == 503),
        "ready again while stopping: {seen:?}"
    );
    // The attempt in flight finished within the grace period and was recorded.
    let again = Server::start_in(&server.dir).await;
    let done = again
        .client()
        .wait_state(
            t["id"].as_str().expect("id"),
            "succeeded",
            Duration::from_secs(5),
        )
        .await;
    assert_eq!(done["attempts"].as_array().map(Vec::len), Some(1), "{done}");
}

/// SIGTERM while a backup is being streamed to a client that reads slowly:
/// the server exits cleanly within its grace period, the client is left with
/// a short stream (never a whole-looking file), and the store, restarted,
/// has everything and no scratch file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_backup_ends_cleanly() {
    let temp = tempfile::tempdir().expect("dir");
    let dir = temp.path().to_path_buf();
    let (child, port, c) = start_process(&dir).await;
    let sink = Sink::start().await;
    c.put_gate("g", gate_for(&sink, "10/s")).await;
    // Enough that the backup cannot sit whole in the socket buffers.
    let padding = "x".repeat(2_000);
    for _ in 0..10 {
        let tasks = (0..2_000)
            .map(|_| {
                let mut t = webhook_task("g", &sink.url("/later"));
                t["delay"] = json!("1h");
                t["webhook"]["body"] = json!({ "padding": padding });
                t
            })
            .collect();
        c.batch(tasks).await;
    }
    let mut backup = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/v1/admin/backup"))
        .send()
        .await
        .expect("backup starts");
    assert_eq!(backup.status(), 200);
    let total = backup.content_length().expect("length");
    let first = backup.chunk().await.expect("a chunk").expect("not empty");
    assert!((first.len() as u64) < total);

    stop_cleanly(child).await;
    let mut received = first.len() as u64;
    while let Ok(Some(chunk)) = backup.chunk().await {
        received += chunk.len() as u64;
    }
    assert!(received < total, "the whole backup arrived after the stop");

    let again = Server::start_in(&dir).await;
    let (status, gate) = again.client().send("GET", "/v1/gates/g", None).await;
    assert_eq!(status, 200, "{gate}");
    assert_eq!(gate["backlog"], 20_000, "{gate}");
    let scratch = std::fs::read_dir(&dir)
        .expect("dir")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("backup-"))
        .count();
    assert_eq!(scratch, 0, "a scratch file was left");
}

/// Stores written by the build of every earlier schema version (made by
/// `scripts/make-store-fixture`, see docs/operations.md) open with this one:
/// `check` first asks for the upgrade, the server upgrades them in place, every
/// gate, task and schedule of the manifest is served as it was, and `check`
/// then finds nothing wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_of_every_earlier_schema_upgrade_in_place() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/stores");
    let mut versions = Vec::new();
    for version in 1..sluice::store::SCHEMA_VERSION {
        let manifest = fixtures.join(format!("v{version}.json"));
        let text = std::fs::read_to_string(&manifest).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; every earlier schema needs a fixture (scripts/make-store-fixture)",
                manifest.display()
            )
        });
        let manifest: serde_json::Value = serde_json::from_str(&text).expect("manifest");
        assert_eq!(manifest["schema_version"], version);
        versions.push((version, manifest));
    }
    for (version, manifest) in versions {
        let temp = tempfile::tempdir().expect("dir");
        let dir = temp.path();
        std::fs::copy(
            fixtures.join(format!("v{version}.redb")),
            dir.join(sluice::server::DATA_FILE),
        )
        .expect("copy the fixture");
        let old = sluice(&["check", "--data-dir", path(dir)]).await;
        assert_ne!(old.status.code(), Some(0), "v{version}: {}", said(&old));
        assert!(
            said(&old).contains(&format!("schema version {version}")),
            "v{version}: {}",
            said(&old)
        );

        let mut server = Server::start_in(dir).await;
        let c = server.client();
        for (name, want) in manifest["gates"].as_object().expect("gates") {
            let (status, gate) = c.send("GET", &format!("/v1/gates/{name}"), None).await;
            assert_eq!(status, 200, "v{version} gate {name}: {gate}");
            assert_eq!(
                gate["paused"], want["paused"],
                "v{version} gate {name}: {gate}"
            );
        }
        for (id, want) in manifest["tasks"].as_object().expect("tasks") {
            let (status, task) = c.send("GET", &format!("/v1/tasks/{id}"), None).await;
            assert_eq!(status, 200, "v{version} task {id}: {task}");
            assert_eq!(task["state"], want["state"], "v{version} task {id}: {task}");
            if let Some(labels) = want.get("labels") {
                assert_eq!(&task["labels"], labels, "v{version} task {id}: {task}");
            }
        }
        for name in manifest["schedules"].as_array().expect("schedules") {
            let name = name.as_str().expect("name");
            let (status, v) = c.send("GET", &format!("/v1/schedules/{name}"), None).await;
            assert_eq!(status, 200, "v{version} schedule {name}: {v}");
        }
        server.stop().await;
        let upgraded = sluice(&["check", "--data-dir", path(dir)]).await;
        assert_eq!(
            upgraded.status.code(),
            Some(0),
            "v{version}: {}",
            said(&upgraded)
        );
    }
}

/// A stopped server has let go of its store: the file opens at once, even
/// right after answers on several kept-alive connections (whose tasks end a
/// moment after the listener does).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_server_lets_go_of_its_file() {
    let temp = tempfile::tempdir().expect("dir");
    for round in 0..20 {
        let mut server = Server::start_in(temp.path()).await;
        let mut asking = tokio::task::JoinSet::new();
        for _ in 0..4 {
            let c = server.client();
            asking.spawn(async move {
                for _ in 0..3 {
                    let (status, _) = c.send("GET", "/v1/gates", None).await;
                    assert_eq!(status, 200);
                }
            });
        }
        while let Some(asked) = asking.join_next().await {
            asked.expect("asked");
        }
        server.stop().await;
        let file = temp.path().join(sluice::server::DATA_FILE);
        if let Err(e) = Store::open(&file) {
            panic!("round {round}: the stopped server still holds its file: {e}");
        }
    }
}

/// SIGTERM while a plugin upload is half sent, batches of tasks are being
/// created and failed tasks are being replayed (`retry`): the server exits
/// cleanly within its grace period; after a restart every task whose batch was
/// acknowledged is there, every acknowledged replay runs again, and the upload
/// is not there at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_an_upload_creates_and_replays_ends_cleanly() {
    use tokio::io::AsyncWriteExt;

    let temp = tempfile::tempdir().expect("dir");
    let dir = temp.path().to_path_buf();
    let (child, port, c) = start_process(&dir).await;
    let sink = Sink::start().await;
    // First attempts fail for good (a 400), replays succeed.
    sink.behave(|hit, _| {
        if hit.attempt == 1 && hit.path.starts_with("/replay") {
            Reply::status(400)
        } else {
            Reply::ok()
        }
    });
    c.put_gate("g", gate_for(&sink, "100/s")).await;
    let mut failed = Vec::new();
    for _ in 0..20 {
        failed.push(
            c.create(webhook_task("g", &sink.url("/replay"))).await["id"]
                .as_str()
                .expect("id")
                .to_string(),
        );
    }
    for id in &failed {
        c.wait_state(id, "failed", Duration::from_secs(10)).await;
    }

    // Half an upload, then silence.
    let wasm = crate::plugins::wasm("noop");
    let mut upload = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let head = format!(
        "PUT /v1/plugins/half/0.1.0 HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/wasm\r\ncontent-length: {}\r\n\r\n",
        wasm.len()
    );
    upload.write_all(head.as_bytes()).await.expect("head");
    upload
        .write_all(&wasm[..wasm.len() / 2])
        .await
        .expect("half the body");

    // Batches, back to back, until the server stops answering; each side
    // counts what it had acknowledged, so the stop comes after both began.
    let counted = std::sync::Arc::new([
        std::sync::atomic::AtomicUsize::new(0),
        std::sync::atomic::AtomicUsize::new(0),
    ]);
    let creating = {
        let c = c.clone();
        let url = sink.url("/later");
        let counted = counted.clone();
        tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            for _ in 0..10_000 {
                let tasks: Vec<_> = (0..50)
                    .map(|_| {
                        let mut t = webhook_task("g", &url);
                        t["delay"] = json!("1h");
                        t
                    })
                    .collect();
                match c
                    .try_send("POST", "/v1/tasks/batch", json!({ "tasks": tasks }))
                    .await
                {
                    Some((201, v)) => {
                        acknowledged.extend(
                            v["ids"]
                                .as_array()
                                .expect("ids")
                                .iter()
                                .map(|id| id.as_str().expect("id").to_string()),
                        );
                        counted[0].fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    _ => break,
                }
            }
            acknowledged
        })
    };
    let replaying = {
        let c = c.clone();
        let failed = failed.clone();
        let counted = counted.clone();
        tokio::spawn(async move {
            let mut replayed = Vec::new();
            for id in failed {
                tokio::time::sleep(Duration::from_millis(20)).await;
                match c
                    .try_send("POST", &format!("/v1/tasks/{id}/retry"), json!({}))
                    .await
                {
                    Some((200, _)) => {
                        replayed.push(id);
                        counted[1].fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    _ => break,
                }
            }
            replayed
        })
    };
    let began = sluice::clock::instant();
    while counted
        .iter()
        .any(|n| n.load(std::sync::atomic::Ordering::SeqCst) == 0)
    {
        assert!(
            began.elapsed() < Duration::from_secs(20),
            "no batch or no replay acknowledged in 20 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop_cleanly(child).await;
    let acknowledged = creating.await.expect("creates");
    let replayed = replaying.await.expect("replays");
    assert!(
        !replayed.is_empty(),
        "no replay was acknowledged before the stop"
    );
    assert!(
        !acknowledged.is_empty(),
        "no batch was acknowledged before the stop"
    );
    drop(upload);

    let again = Server::start_in(&dir).await;
    let r = again.client();
    let (_, gate) = r.send("GET", "/v1/gates/g", None).await;
    assert!(
        gate["backlog"].as_u64() >= Some(acknowledged.len() as u64),
        "{} acknowledged, {gate}",
        acknowledged.len()
    );
    for id in acknowledged.iter().step_by(37) {
        let (status, v) = r.send("GET", &format!("/v1/tasks/{id}"), None).await;
        assert_eq!(status, 200, "acknowledged task {id} is gone: {v}");
    }
    for id in &replayed {
        r.wait_state(id, "succeeded", Duration::from_secs(10)).await;
    }
    let (status, v) = r.send("GET", "/v1/plugins/half/0.1.0", None).await;
    assert_eq!(status, 404, "half an upload was stored: {v}");
}

/// The real binary on a free loopback port in `dir`, with a 1 s grace
/// period, once it is ready.
async fn start_process(dir: &Path) -> (crate::crash::KillOnDrop, u16, crate::support::Client) {
    use crate::crash::{free_port, spawn_server_with, wait_ready};
    let port = free_port();
    let child = spawn_server_with(dir, port, |c| {
        c.args(["--shutdown-grace", "1s"]);
    });
    let c = crate::support::Client::new(&format!("http://127.0.0.1:{port}"));
    wait_ready(&c).await;
    (child, port, c)
}

/// Sends SIGTERM to the server process (by its PID) and waits, at most 10 s,
/// for it to exit with success.
async fn stop_cleanly(mut child: crate::crash::KillOnDrop) {
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(term.success());
    let exit = tokio::task::spawn_blocking(move || {
        for _ in 0..200 {
            if let Some(status) = child.try_wait().expect("wait") {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    })
    .await
    .expect("join");
    let exit = exit.expect("the server did not exit within 10 s of SIGTERM");
    assert!(exit.success(), "{exit:?}");
}
