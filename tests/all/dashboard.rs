//! The dashboard at `/`: its files are served with a strict policy, and real
//! headless Chromium drives it against a live server
//! (`tests/browser/dashboard.mjs`, set up by `scripts/browser-setup`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use sluice::api::auth::{TokenEntry, Tokens, new_token};
use sluice::clock;

use crate::support::{Client, Reply, Server, Sink, gate_for, settled_cluster, webhook_task};

const CHROMIUM: &str = "/usr/bin/chromium";
/// The browser script gives up after 60 s; this is the backstop.
const BROWSER_LIMIT: Duration = Duration::from_secs(120);

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the crate sits in the workspace")
        .to_path_buf()
}

/// A server with two tokens, and those tokens: an admin's and a reader's.
async fn server_with_tokens(dir: &Path) -> (Server, String, String) {
    let (admin, admin_hash) = new_token().expect("random");
    let (reader, reader_hash) = new_token().expect("random");
    let tokens = Tokens::new(vec![
        TokenEntry::new("operator", "admin", &admin_hash).expect("entry"),
        TokenEntry::new("viewer", "reader", &reader_hash).expect("entry"),
    ]);
    let server = Server::start_with(dir, |c| c.tokens = tokens).await;
    (server, admin, reader)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_files_are_served_with_a_strict_policy() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (server, _, _) = server_with_tokens(dir.path()).await;
    let anon = server.client();

    // The page and its files need no token; the data behind them does.
    let (status, headers, page) = anon.send_full("GET", "/", None).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    let policy = headers["content-security-policy"].to_str().expect("ascii");
    assert!(policy.starts_with("default-src 'self'"), "{policy}");
    assert!(!policy.contains("unsafe"), "{policy}");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(anon.send("GET", "/v1/gates", None).await.0, 401);

    // No inline script, handler or style for the policy to forbid.
    let page = page.as_str().expect("html");
    assert!(page.contains(r#"<script type="module" src="/assets/app.js"></script>"#));
    for inline in ["<script>", " onclick=", " style=", "http://", "https://"] {
        assert!(!page.contains(inline), "the page has {inline:?}");
    }

    // Every module imported from a served module is served, with its type.
    let mut pending = vec!["app.js".to_string()];
    let mut seen = Vec::new();
    while let Some(name) = pending.pop() {
        if seen.contains(&name) {
            continue;
        }
        let (status, headers, body) = anon
            .send_full("GET", &format!("/assets/{name}"), None)
            .await;
        assert_eq!(status, 200, "/assets/{name}");
        assert_eq!(headers["content-type"], "text/javascript; charset=utf-8");
        assert!(headers.contains_key("content-security-policy"));
        let text = body.as_str().expect("javascript");
        for import in text.split("from './").skip(1) {
            let file = import.split('\'').next().expect("a quoted name");
            pending.push(file.to_string());
        }
        seen.push(name);
    }
    assert!(seen.len() >= 5, "modules: {seen:?}");
    for (file, kind) in [
        ("app.css", "text/css; charset=utf-8"),
        ("icon.svg", "image/svg+xml"),
    ] {
        let (status, headers, _) = anon
            .send_full("GET", &format!("/assets/{file}"), None)
            .await;
        assert_eq!(status, 200, "/assets/{file}");
        assert_eq!(headers["content-type"], kind);
    }
    for missing in ["/assets/nope.js", "/assets/..%2FCargo.toml", "/assets/"] {
        let (status, _) = anon.send("GET", missing, None).await;
        assert_eq!(status, 404, "{missing}");
    }
}

/// Whether the browser checks can run here: they are skipped without the
/// tools, unless `SLUICE_BROWSER_TESTS` says they must run.
fn browser_can_run(browser_dir: &Path) -> bool {
    let missing = missing_browser_tools(browser_dir);
    if missing.is_empty() {
        return true;
    }
    assert!(
        std::env::var_os("SLUICE_BROWSER_TESTS").is_none(),
        "SLUICE_BROWSER_TESTS is set but {missing:?} is missing: scripts/browser-setup installs it"
    );
    eprintln!("skipped: run scripts/test (it installs Chromium); missing {missing:?}");
    false
}

/// What the browser needs, and whether it is there.
fn missing_browser_tools(browser_dir: &Path) -> Vec<&'static str> {
    let mut missing = Vec::new();
    if !Path::new(CHROMIUM).exists() {
        missing.push(CHROMIUM);
    }
    if !browser_dir.join("node_modules/playwright-core").is_dir() {
        missing.push("tests/browser/node_modules (npm ci)");
    }
    let node = Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .status();
    if !node.is_ok_and(|s| s.success()) {
        missing.push("node");
    }
    missing
}

/// A built plugin component, from `scripts/build-plugins`: in the shared
/// target directory when `CARGO_TARGET_DIR` names one, else in `target/`.
fn plugin_wasm(name: &str) -> Vec<u8> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .filter(|dir| dir.join("plugins").is_dir())
        .unwrap_or_else(|| workspace().join("target"));
    let path = target.join(format!("plugins/{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; build the plugins first with scripts/build-plugins (scripts/test does)",
            path.display()
        )
    })
}

/// The ids the browser script looks at.
struct Filled {
    /// A webhook task that failed after three attempts.
    failed: String,
    /// A plugin task that succeeded, with a log.
    plugin_task: String,
}

/// A loopback service playing the apps API of `hibernate-idle`: two apps
/// idle for years, one active (in the future, so never idle).
fn apps_api(sink: &Sink) {
    sink.behave(|hit, _| match (hit.method.as_str(), hit.path.as_str()) {
        ("GET", "/apps") => Reply::json(
            200,
            json!([
                { "id": "web-1", "last_active": "2020-01-01T00:00:00Z" },
                { "id": "web-2", "last_active": "2020-01-02T00:00:00Z", "state": "hibernated" },
                { "id": "api", "last_active": "2999-01-01T00:00:00Z" },
            ]),
        ),
        ("POST", p) if p.ends_with("/hibernate") => Reply::json(200, json!({ "ok": true })),
        _ => Reply::status(400),
    });
}

/// Gates with a backlog draining at 1/s, a paused one, one with tasks due
/// over the next hour, a failing one and a quiet one; a failed task with three
/// attempts; three schedules, one of them every 2 s (so it has past runs).
/// Plugins: `hibernate-idle` with a finished task (its log), a waiting one and
/// a schedule using it, and `cleanup-stray`, used by nothing.
async fn fill(admin: &Client, sink: &Sink, failing: &Sink, apps: &Sink, secret: &str) -> Filled {
    admin.put_gate("pings", gate_for(sink, "5/s")).await;
    let heartbeat = json!({ "every": "2s", "task": webhook_task("pings", &sink.url("/ping")) });
    let (status, v) = admin
        .send("PUT", "/v1/schedules/heartbeat", Some(heartbeat))
        .await;
    assert_eq!(status, 201, "{v}");

    let mut billing = gate_for(sink, "1/s");
    billing["concurrency"] = json!(2);
    billing["accept_next_from"] = json!(["pings"]);
    admin.put_gate("billing", billing).await;
    let tasks = (0..300)
        .map(|i| {
            let mut t = webhook_task("billing", &sink.url(&format!("/invoice/{i}")));
            t["labels"] = json!({ "team": "billing" });
            t
        })
        .collect();
    admin.batch(tasks).await;

    // An adaptive gate, searching its endpoint's concurrency.
    let mut search = gate_for(sink, "20/s");
    search["concurrency"] = json!(4);
    search["adaptive"] = json!({ "min": 1, "max": 20 });
    admin.put_gate("search", search).await;
    admin
        .batch(
            (0..20)
                .map(|_| webhook_task("search", &sink.url("/search")))
                .collect(),
        )
        .await;

    // Tenants sharing one gate, each key limited, one with more weight.
    let mut tenants = gate_for(sink, "2/s");
    tenants["keys"] =
        json!({ "rate": "1/s", "overrides": { "acme": { "rate": "2/s", "weight": 3 } } });
    tenants["isolate"] = json!("key");
    admin.put_gate("tenants", tenants).await;
    admin
        .batch(
            ["acme", "globex", "initech"]
                .iter()
                .cycle()
                .take(60)
                .map(|k| {
                    let mut t = webhook_task("tenants", &sink.url("/tenant"));
                    t["key"] = json!(k);
                    t
                })
                .collect(),
        )
        .await;

    admin.put_gate("reports", gate_for(sink, "10/s")).await;
    let (status, v) = admin.send("POST", "/v1/gates/reports/pause", None).await;
    assert_eq!(status, 200, "{v}");
    let reports = (0..120)
        .map(|i| webhook_task("reports", &sink.url(&format!("/report/{i}"))))
        .collect();
    admin.batch(reports).await;

    // Due over the next hour: a steady trickle and a herd at +20 minutes.
    admin.put_gate("email", gate_for(sink, "5/s")).await;
    let email = (0..180)
        .map(|i| format!("{}s", 60 + i * 20))
        .chain((0..120).map(|_| "1200s".to_string()))
        .map(|delay| {
            let mut t = webhook_task("email", &sink.url("/send"));
            t["delay"] = json!(delay);
            t
        })
        .collect();
    admin.batch(email).await;

    let mut hooks = gate_for(failing, "20/s");
    hooks["circuit"] = json!({ "failures": 5, "cooldown": "10m" });
    admin.put_gate("webhooks", hooks).await;
    let mut task = webhook_task("webhooks", &failing.url("/hook"));
    task["max_attempts"] = json!(3);
    task["labels"] = json!({ "customer": "acme" });
    task["webhook"]["headers"] = json!({
        "X-Api-Key": { "value": secret, "secret": true },
        "X-Request-Source": "dashboard-test",
    });
    let failed = admin.create(task).await["id"]
        .as_str()
        .expect("id")
        .to_string();
    admin
        .wait_state(&failed, "failed", Duration::from_secs(20))
        .await;
    // Two more failures open the gate's circuit: a tripped gate to show.
    let mut second = webhook_task("webhooks", &failing.url("/hook"));
    second["max_attempts"] = json!(2);
    let second = admin.create(second).await["id"]
        .as_str()
        .expect("id")
        .to_string();
    admin
        .wait_state(&second, "failed", Duration::from_secs(20))
        .await;

    for (name, body) in [
        (
            "nightly-report",
            json!({ "cron": "30 2 * * *", "timezone": "Europe/Berlin",
                    "task": webhook_task("reports", &sink.url("/nightly")) }),
        ),
        (
            "crm-sync",
            json!({ "every": "15m", "task": webhook_task("billing", &sink.url("/crm")) }),
        ),
    ] {
        let (status, v) = admin
            .send("PUT", &format!("/v1/schedules/{name}"), Some(body))
            .await;
        assert!(status == 200 || status == 201, "{name}: {v}");
    }

    for name in ["hibernate-idle", "cleanup-stray"] {
        let (status, v) = admin
            .raw(
                "PUT",
                &format!("/v1/plugins/{name}/0.1.0"),
                "application/wasm",
                plugin_wasm(name),
            )
            .await;
        assert_eq!(status, 201, "upload {name}: {v}");
    }
    apps_api(apps);
    admin.put_gate("apps", gate_for(apps, "5/s")).await;
    let hibernate = |input: Value| {
        json!({ "gate": "apps",
                "plugin": { "name": "hibernate-idle", "version": "0.1.0", "input": input } })
    };
    let input = json!({ "api": apps.url(""), "idle_after": "24h" });
    let plugin_task = admin.create(hibernate(input.clone())).await["id"]
        .as_str()
        .expect("id")
        .to_string();
    let done = admin
        .wait_state(&plugin_task, "succeeded", Duration::from_secs(20))
        .await;
    let logs = &done["attempts"][0]["logs"];
    assert!(
        logs.as_array()
            .is_some_and(|l| l.iter().any(|l| l["source"] == "plugin"
                && l["level"] == "info"
                && l["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("hibernated web-1")))),
        "{done}"
    );
    // Users of the plugin: a task waiting an hour, and a nightly schedule
    // (with its next occurrence, a task created ahead: three references).
    let mut later = hibernate(input.clone());
    later["delay"] = json!("1h");
    admin.create(later).await;
    let nightly = json!({ "cron": "0 3 * * *", "timezone": "UTC", "task": hibernate(input) });
    let (status, v) = admin
        .send("PUT", "/v1/schedules/hibernate-apps", Some(nightly))
        .await;
    assert_eq!(status, 201, "{v}");
    Filled {
        failed,
        plugin_task,
    }
}

/// Runs the browser script, killing it past the backstop; its output goes to
/// `browser.log` in `artifacts`.
async fn run_browser(script: &Path, env: &[(&str, &str)], artifacts: &Path) -> (bool, String) {
    let log_path = artifacts.join("browser.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut command = Command::new("node");
    command
        .arg(script)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log handle"))
        .stderr(log);
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command.spawn().expect("node starts");
    let start = clock::instant();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait on node") {
            break Some(status);
        }
        if start.elapsed() > BROWSER_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let output = std::fs::read_to_string(&log_path).unwrap_or_default();
    (status.is_some_and(|s| s.success()), output)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_in_headless_chromium() {
    let root = workspace();
    let browser_dir = root.join("tests/browser");
    if !browser_can_run(&browser_dir) {
        return;
    }

    let dir = tempfile::tempdir().expect("temp dir");
    let (server, token, reader) = server_with_tokens(dir.path()).await;
    let admin = server.client().with_token(&token);
    let sink = Sink::start().await;
    sink.behave(|_, _| Reply::ok().delayed(Duration::from_millis(1500)));
    let failing = Sink::start().await;
    failing.behave(|_, _| Reply::status(500));
    let apps = Sink::start().await;
    let secret = "never-shown-7c1d";
    let filled = fill(&admin, &sink, &failing, &apps, secret).await;

    let artifacts = root.join("target/browser-artifacts");
    std::fs::create_dir_all(&artifacts).expect("artifacts dir");
    let start = clock::instant();
    let (passed, output) = run_browser(
        &browser_dir.join("dashboard.mjs"),
        &[
            ("SLUICE_URL", &server.url),
            ("SLUICE_TOKEN", &token),
            ("SLUICE_READER_TOKEN", &reader),
            ("SLUICE_ARTIFACTS", &artifacts.to_string_lossy()),
            ("SLUICE_FAILED_TASK", &filled.failed),
            ("SLUICE_PLUGIN_TASK", &filled.plugin_task),
            ("SLUICE_SECRET", secret),
        ],
        &artifacts,
    )
    .await;
    assert!(passed, "the browser checks failed:\n{output}");
    eprintln!("browser checks passed in {:?}", start.elapsed());

    if std::env::var("SLUICE_UPDATE_SCREENSHOTS").is_ok_and(|v| v == "1") {
        let docs = root.join("docs/screenshots");
        std::fs::create_dir_all(&docs).expect("docs/screenshots");
        for name in [
            "overview",
            "gate-detail",
            "task-detail",
            "schedules",
            "plugins",
            "plugin-task",
        ] {
            let file = format!("{name}.png");
            std::fs::copy(artifacts.join(&file), docs.join(&file)).expect("copy screenshot");
        }
    }
    let email: Value = admin.send("GET", "/v1/gates/email", None).await.1;
    assert_eq!(email["state"], "paused", "the UI paused it: {email}");
    // The UI deleted the unused plugin, and was refused the one in use.
    let (status, _) = admin
        .send("GET", "/v1/plugins/cleanup-stray/0.1.0", None)
        .await;
    assert_eq!(status, 404, "the UI deleted cleanup-stray");
    let (status, _) = admin
        .send("GET", "/v1/plugins/hibernate-idle/0.1.0", None)
        .await;
    assert_eq!(status, 200, "hibernate-idle is in use and stays");
}

/// In a cluster the overview lists its nodes and what each dispatches
/// (SPEC §9): two nodes on one PostgreSQL, read by real Chromium from
/// one of them, checked against the ids the nodes gave themselves and
/// `/v1/cluster`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_the_nodes_of_a_cluster() {
    let root = workspace();
    let browser_dir = root.join("tests/browser");
    if !browser_can_run(&browser_dir) {
        return;
    }
    let Some(pg) = crate::pg::PgServer::start() else {
        return;
    };
    let (token, hash) = new_token().expect("random");
    let tokens = Tokens::new(vec![
        TokenEntry::new("operator", "admin", &hash).expect("entry"),
    ]);
    let url = pg.url();
    let on_pg = |config: &mut sluice::config::ServerConfig| {
        config.store = Some(url.clone());
        config.tokens = tokens.clone();
    };
    let (a, b) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let mut first = Server::start_with(a.path(), on_pg).await;
    let mut second = Server::start_with(b.path(), on_pg).await;
    let mut ids: Vec<String> = [&first, &second]
        .iter()
        .map(|s| s.node().expect("a cluster node has an id"))
        .collect();
    ids.sort();
    // Both have registered before the page loads, and every unit is with
    // its rendezvous owner (nothing moves while the page reads), so the
    // gates there are are owned. A gate's unit may have no owner just
    // after the start: the client then sends its PUT again.
    let client = second.client().with_token(&token);
    for name in ["billing", "email"] {
        let gate = json!({ "rate": "5/s", "allowed_hosts": ["127.0.0.1:9"] });
        let (status, body) = client
            .send("PUT", &format!("/v1/gates/{name}"), Some(gate))
            .await;
        assert!(status == 200 || status == 201, "{status}: {body}");
    }
    settled_cluster(&client, &ids).await;
    let (status, cluster) = client.send("GET", "/v1/cluster", None).await;
    assert_eq!(status, 200, "{cluster}");
    let owned: u64 = (cluster["nodes"].as_array().into_iter().flatten())
        .filter_map(|n| n["gates_owned"].as_u64())
        .sum();
    assert_eq!(owned, 2, "{cluster}");

    let artifacts = root.join("target/browser-artifacts/cluster");
    std::fs::create_dir_all(&artifacts).expect("artifacts dir");
    let (passed, output) = run_browser(
        &browser_dir.join("dashboard.mjs"),
        &[
            ("SLUICE_URL", &second.url),
            ("SLUICE_TOKEN", &token),
            ("SLUICE_ARTIFACTS", &artifacts.to_string_lossy()),
            ("SLUICE_NODES", &ids.join(",")),
        ],
        &artifacts,
    )
    .await;
    assert!(passed, "the browser checks failed:\n{output}");
    second.stop().await;
    first.stop().await;
}
