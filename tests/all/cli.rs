//! The `sluice` binary as a client: tables by default, `--json` for scripts, and
//! exit codes scripts can rely on.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{Value, json};

use crate::support::{Server, Sink};

fn sluice(server: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .env("SLUICE_SERVER", server)
        .env("NO_COLOR", "1")
        .env_remove("SLUICE_TOKEN")
        .output()
        .expect("run sluice")
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn errors(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs the binary off the runtime's threads, so the in-process server keeps
/// answering while it waits.
async fn sluice_async(server: &str, args: &[&str]) -> Output {
    let server = server.to_string();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        sluice(&server, &args)
    })
    .await
    .expect("sluice runs")
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
                "--accept-next-from",
                "onboarding",
            ],
        );
        results.push(("gate set", set.status.code(), text(&set)));
        let create = sluice(
            &url,
            &[
                "task",
                "create",
                "--gate",
                "billing",
                "--url",
                &target,
                "--delay",
                "1h",
                "--label",
                "team=ops",
                "--secret-header",
                "X-Api-Key: s3cr3t",
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
        let none = sluice(
            &url,
            &[
                "task", "create", "--gate", "billing", "--url", &target, "--count", "0",
            ],
        );
        results.push(("count 0", none.status.code(), text(&none)));
        // A label filter written as `task create` takes labels finds them.
        let by_label = sluice(&url, &["task", "ls", "--label", "team=ops", "--json"]);
        results.push(("ls by label", by_label.status.code(), text(&by_label)));
        let down = sluice("http://127.0.0.1:9", &["gate", "ls"]);
        results.push(("down", down.status.code(), errors(&down)));
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
    let (_, gate) = server.client().send("GET", "/v1/gates/billing", None).await;
    assert_eq!(gate["accept_next_from"], json!(["onboarding"]), "{gate}");
    assert_eq!(code("task create"), Some(0));
    assert_eq!(stdout("task create").trim().len(), 13, "prints the id");
    assert!(
        stdout("task get").contains("scheduled"),
        "{}",
        stdout("task get")
    );
    let v: Value = serde_json::from_str(&stdout("task get --json")).expect("--json prints JSON");
    assert_eq!(v["labels"]["team"], "ops");
    assert_eq!(
        v["webhook"]["headers"]["X-Api-Key"],
        json!({ "secret": true }),
        "{v}"
    );
    assert!(
        stdout("status").contains("BACKLOG") && stdout("status").contains("billing"),
        "{}",
        stdout("status")
    );
    assert_eq!(code("missing"), Some(3), "not found");
    assert_eq!(code("conflict"), Some(4), "conflict");
    assert_eq!(code("invalid"), Some(5), "invalid request");
    assert_eq!(code("usage"), Some(2), "usage error");
    assert_eq!(code("count 0"), Some(2), "no tasks is no create");
    let listed: Value = serde_json::from_str(&stdout("ls by label")).expect("JSON");
    assert_eq!(
        listed["tasks"].as_array().map(Vec::len),
        Some(1),
        "{listed}"
    );
    assert_eq!(code("down"), Some(1), "server unreachable");
    // With the reason, not only reqwest's "error sending request".
    assert!(
        stdout("down").contains("Connection refused"),
        "{}",
        stdout("down")
    );
}

/// `status --watch` redraws in place: each frame clears the screen and shows
/// the figures of that moment.
/// `gate set` on a gate that exists changes what its flags name and keeps
/// the rest (hosts, keys, backoff, circuit, secrets, ...): a PUT replaces
/// the whole gate, and the CLI once sent only its flags, which opened a gate
/// limited to some hosts to any.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gate_set_keeps_what_its_flags_do_not_name() {
    let server = Server::start().await;
    let sink = Sink::start().await;
    let c = server.client();
    let full = json!({
        "rate": "50/s", "burst": 5, "concurrency": 7,
        "allowed_hosts": [sink.host()],
        "accept_next_from": ["elsewhere"],
        "timeout": "12s",
        "retry": { "max_attempts": 9, "backoff": { "initial": "2s", "max": "1m", "multiplier": 3.0, "jitter": false }, "max_retry_duration": "1h" },
        "recovery": { "start": 0.5, "over": "20s" },
        "circuit": null,
        "signing_secrets": ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"],
        "quota_headers": false,
        "keys": { "rate": "5/s", "burst": 2, "weight": 1, "overrides": { "vip": { "weight": 3 } } },
        "isolate": "key",
        "priority_aging": "30s",
    });
    c.put_gate("kept", full).await;
    let (_, before) = c.send("GET", "/v1/gates/kept", None).await;
    let url = server.url.clone();
    let out = tokio::task::spawn_blocking(move || {
        sluice(
            &url,
            &[
                "gate",
                "set",
                "kept",
                "--rate",
                "20/s",
                "--max-attempts",
                "4",
            ],
        )
    })
    .await
    .expect("joined");
    assert_eq!(out.status.code(), Some(0), "{}", errors(&out));
    let (_, after) = c.send("GET", "/v1/gates/kept", None).await;
    assert_eq!(after["rate"], "20/s", "{after}");
    assert_eq!(after["retry"]["max_attempts"], 4, "{after}");
    let mut expected = before["retry"].clone();
    expected["max_attempts"] = json!(4);
    assert_eq!(after["retry"], expected, "{after}");
    for field in [
        "burst",
        "concurrency",
        "allowed_hosts",
        "accept_next_from",
        "timeout",
        "recovery",
        "circuit",
        "signing_secrets",
        "quota_headers",
        "keys",
        "isolate",
        "priority_aging",
    ] {
        assert_eq!(after[field], before[field], "{field}: {after}");
    }
}

/// An import whose batch is refused says where: what the batches before it
/// created is printed, and the error names the line the refused batch
/// begins at, so the import can go on from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_refused_partway_says_from_which_line() {
    let server = Server::start().await;
    let sink = Sink::start().await;
    let c = server.client();
    c.put_gate("imports", crate::support::gate_for(&sink, "10/s"))
        .await;
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("tasks.jsonl");
    let good = json!({ "gate": "imports", "webhook": { "url": sink.url("/i") }, "delay": "1h" });
    let bad = json!({ "gate": "nope", "webhook": { "url": sink.url("/i") } });
    let lines = [
        good.to_string(),
        String::new(),
        good.to_string(),
        good.to_string(),
        bad.to_string(),
    ];
    std::fs::write(&file, lines.join("\n")).expect("write");
    let url = server.url.clone();
    let path = file.to_str().expect("utf-8").to_string();
    let out = tokio::task::spawn_blocking(move || {
        sluice(&url, &["task", "import", &path, "--batch", "2"])
    })
    .await
    .expect("joined");
    assert_eq!(out.status.code(), Some(5), "{}", errors(&out));
    assert_eq!(text(&out).trim(), "created 2 tasks", "{}", text(&out));
    assert!(
        errors(&out)
            .contains("the batch from line 4 created nothing; the 2 tasks before it were created"),
        "{}",
        errors(&out)
    );
}

/// A reader that goes before the output ends (`sluice task ls | head`) ends
/// the command quietly, with success, not with a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_pipe_ends_a_command_quietly() {
    use std::io::Read;
    let server = Server::start().await;
    let sink = Sink::start().await;
    let c = server.client();
    c.put_gate("piped", crate::support::gate_for(&sink, "10/s"))
        .await;
    c.send("POST", "/v1/gates/piped/pause", None).await;
    let task = json!({ "gate": "piped", "webhook": { "url": sink.url("/p") } });
    c.batch(vec![task; 1_000]).await;
    let url = server.url.clone();
    let out = tokio::task::spawn_blocking(move || {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["task", "ls", "--json", "--limit", "1000", "--server", &url])
            .env("NO_COLOR", "1")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn sluice");
        // Far less than the output (over 64 KiB, more than a pipe holds).
        let mut first = [0u8; 100];
        let mut stdout = child.stdout.take().expect("stdout");
        stdout.read_exact(&mut first).expect("the output begins");
        drop(stdout);
        child.wait_with_output().expect("sluice ends")
    })
    .await
    .expect("joined");
    assert_eq!(out.status.code(), Some(0), "{}", errors(&out));
    assert!(!errors(&out).contains("panicked"), "{}", errors(&out));
}

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

/// The repository's SDK, which scaffolds in tests build against.
const SDK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../sdk");

/// Components built by these tests: where `scripts/build-plugins` builds
/// the examples, so that the SDK and its dependencies are built already
/// (a clean clone's first scaffold took most of a minute in its own
/// directory) and reruns take seconds.
const WASM_TARGET: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/wasm");

/// `\0asm`, then the component binary's version (13) and layer (1).
const COMPONENT_MAGIC: [u8; 8] = [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];

/// `cargo build --release --target wasm32-wasip2` in `dir`, into WASM_TARGET.
fn build_wasm(dir: &Path, extra: &[&str]) {
    let out = Command::new(env!("CARGO"))
        .current_dir(dir)
        .args(["build", "--release", "--target", "wasm32-wasip2"])
        .args(["--target-dir", WASM_TARGET])
        .args(extra)
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .expect("run cargo");
    assert!(
        out.status.success(),
        "cargo build in {} failed:\n{}",
        dir.display(),
        errors(&out)
    );
}

fn built(lib_name: &str) -> PathBuf {
    Path::new(WASM_TARGET).join(format!("wasm32-wasip2/release/{lib_name}.wasm"))
}

/// Scaffolds plugin `name` in `parent` with `sluice plugin new` against the
/// repository's SDK, and builds it; returns the crate's directory and the
/// component's bytes.
fn scaffold_and_build(parent: &Path, name: &str) -> (PathBuf, Vec<u8>) {
    let dir = parent.join(name);
    let new = sluice(
        "http://127.0.0.1:9",
        &[
            "plugin",
            "new",
            name,
            "--dir",
            dir.to_str().expect("utf-8"),
            "--sdk",
            SDK,
        ],
    );
    assert_eq!(new.status.code(), Some(0), "{}", errors(&new));
    // The examples' lock file pins the versions the SDK is known to build
    // with (and those WASM_TARGET already holds); cargo adds the new crate.
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/../plugins/Cargo.lock"),
        dir.join("Cargo.lock"),
    )
    .expect("copy the lock file");
    let lib_name = name.replace('-', "_");
    let _ = std::fs::remove_file(built(&lib_name));
    build_wasm(&dir, &[]);
    let wasm = std::fs::read(built(&lib_name)).expect("the component was built");
    (dir, wasm)
}

/// `sluice plugin new` makes a crate that builds, as it is, into a component
/// for the server: the files, the SDK dependency, the README's commands.
#[test]
fn plugin_new_scaffolds_a_crate_that_builds_a_component() {
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = temp.path().join("check-health");
    let new = sluice(
        "http://127.0.0.1:9",
        &[
            "plugin",
            "new",
            "check-health",
            "--dir",
            dir.to_str().expect("utf-8"),
            "--sdk",
            SDK,
        ],
    );
    assert_eq!(new.status.code(), Some(0), "{}", errors(&new));
    let push =
        "sluice plugin push check-health 0.1.0 target/wasm32-wasip2/release/check_health.wasm";
    assert!(text(&new).contains(push), "{}", text(&new));

    let read = |file: &str| std::fs::read_to_string(dir.join(file)).expect(file);
    for file in [
        "Cargo.toml",
        "src/lib.rs",
        ".cargo/config.toml",
        ".gitignore",
        "README.md",
    ] {
        assert!(!read(file).contains("{{"), "{file} has a placeholder left");
    }
    let manifest: toml::Table = read("Cargo.toml").parse().expect("Cargo.toml is TOML");
    assert_eq!(manifest["package"]["name"].as_str(), Some("check-health"));
    assert_eq!(manifest["package"]["edition"].as_str(), Some("2024"));
    assert_eq!(
        manifest["lib"]["crate-type"].as_array().map(Vec::as_slice),
        Some(&[toml::Value::from("cdylib")][..])
    );
    let sdk = std::fs::canonicalize(SDK).expect("sdk");
    assert_eq!(
        manifest["dependencies"]["sluice-sdk"]["path"].as_str(),
        sdk.to_str(),
        "the SDK as a canonical absolute path"
    );
    let serde = &manifest["dependencies"]["serde"];
    assert!(
        serde["features"]
            .as_array()
            .is_some_and(|f| f.contains(&"derive".into())),
        "{serde}"
    );
    assert!(manifest["dependencies"].get("serde_json").is_some());
    let release = &manifest["profile"]["release"];
    assert_eq!(release["opt-level"].as_str(), Some("s"));
    assert_eq!(release["lto"].as_bool(), Some(true));
    assert_eq!(release["strip"].as_bool(), Some(true));
    let config: toml::Table = read(".cargo/config.toml").parse().expect("config is TOML");
    assert_eq!(config["build"]["target"].as_str(), Some("wasm32-wasip2"));
    assert!(read(".gitignore").lines().any(|l| l == "target/"));
    let lib = read("src/lib.rs");
    for needle in [
        "#[derive(Deserialize)]",
        "ctx.http()",
        "info!(",
        "Outcome<",
        "sluice_sdk::export!(run);",
    ] {
        assert!(lib.contains(needle), "src/lib.rs lacks {needle}");
    }
    let readme = read("README.md");
    assert!(
        readme.contains("cargo build --release --target wasm32-wasip2"),
        "{readme}"
    );
    assert!(readme.contains(push), "{readme}");
    // The README's task is valid JSON naming the plugin.
    let example = readme
        .split("```json\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("a JSON example");
    let task: Value = serde_json::from_str(example).expect("the example is JSON");
    assert_eq!(task["plugin"]["name"], "check-health");
    assert_eq!(task["plugin"]["version"], "0.1.0");
    assert!(
        task["gate"].is_string() && task["plugin"]["input"].is_object(),
        "{task}"
    );

    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/../plugins/Cargo.lock"),
        dir.join("Cargo.lock"),
    )
    .expect("copy the lock file");
    let _ = std::fs::remove_file(built("check_health"));
    build_wasm(&dir, &[]);
    let wasm = std::fs::read(built("check_health")).expect("the component was built");
    assert!(
        wasm.starts_with(&COMPONENT_MAGIC),
        "not a component: {:02x?}",
        &wasm[..wasm.len().min(8)]
    );
}

/// Names that are not crate names, and directories already in use, are
/// refused before anything is written.
#[test]
fn plugin_new_refuses_bad_names_and_occupied_dirs() {
    let temp = tempfile::tempdir().expect("temp dir");
    let at = |name: &str| temp.path().join(name).to_str().expect("utf-8").to_string();
    for bad in [
        "Check",
        "check_health",
        "9lives",
        "-x",
        "x-",
        "a b",
        "fn",
        "std",
        "",
    ] {
        let dir = at("bad");
        let out = sluice(
            "http://127.0.0.1:9",
            &["plugin", "new", "--dir", &dir, "--", bad],
        );
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", errors(&out));
        assert!(
            errors(&out).contains("plugin name") || errors(&out).contains("cannot name"),
            "{bad:?}: {}",
            errors(&out)
        );
        assert!(!Path::new(&dir).exists(), "{bad:?} wrote nothing");
    }
    let long = "a".repeat(65);
    let out = sluice(
        "http://127.0.0.1:9",
        &["plugin", "new", &long, "--dir", &at("long")],
    );
    assert_eq!(out.status.code(), Some(2));

    let occupied = at("occupied");
    std::fs::create_dir(&occupied).expect("dir");
    std::fs::write(Path::new(&occupied).join("notes.txt"), "mine").expect("file");
    let out = sluice(
        "http://127.0.0.1:9",
        &["plugin", "new", "fine", "--dir", &occupied],
    );
    assert_eq!(out.status.code(), Some(4), "{}", errors(&out));
    assert!(errors(&out).contains("not empty"), "{}", errors(&out));
    assert_eq!(
        std::fs::read_dir(&occupied).expect("dir").count(),
        1,
        "nothing added"
    );

    let out = sluice(
        "http://127.0.0.1:9",
        &[
            "plugin",
            "new",
            "fine",
            "--dir",
            &at("fine"),
            "--sdk",
            &at("no-sdk"),
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", errors(&out));
    assert!(errors(&out).contains("--sdk"), "{}", errors(&out));

    // An empty directory will do.
    let empty = at("empty");
    std::fs::create_dir(&empty).expect("dir");
    let out = sluice(
        "http://127.0.0.1:9",
        &[
            "plugin", "new", "fine", "--dir", &empty, "--sdk", SDK, "--json",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", errors(&out));
    let v: Value = serde_json::from_str(&text(&out)).expect("--json prints JSON");
    assert_eq!(v["wasm"], "target/wasm32-wasip2/release/fine.wasm");
    assert!(Path::new(&empty).join("src/lib.rs").is_file());
}

/// `plugin push` checks the file before sending it: a missing file, a text
/// file and a core module (not a component) never reach the server.
#[test]
fn plugin_push_refuses_what_is_not_a_component() {
    let temp = tempfile::tempdir().expect("temp dir");
    let file = |name: &str, bytes: &[u8]| {
        let path = temp.path().join(name);
        std::fs::write(&path, bytes).expect("write");
        path.to_str().expect("utf-8").to_string()
    };
    // Nothing listens on port 9: a request would fail with exit code 1.
    let missing = temp.path().join("missing.wasm");
    let out = sluice(
        "http://127.0.0.1:9",
        &[
            "plugin",
            "push",
            "p",
            "0.1.0",
            missing.to_str().expect("utf-8"),
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", errors(&out));
    assert!(errors(&out).contains("missing.wasm"), "{}", errors(&out));

    let text_file = file("notes.wasm", b"not wasm at all");
    let out = sluice(
        "http://127.0.0.1:9",
        &["plugin", "push", "p", "0.1.0", &text_file],
    );
    assert_eq!(out.status.code(), Some(5), "{}", errors(&out));
    assert!(
        errors(&out).contains("not a WebAssembly component"),
        "{}",
        errors(&out)
    );

    let core = file("core.wasm", b"\0asm\x01\x00\x00\x00");
    let out = sluice(
        "http://127.0.0.1:9",
        &["plugin", "push", "p", "0.1.0", &core],
    );
    assert_eq!(out.status.code(), Some(5), "{}", errors(&out));
    assert!(
        errors(&out).contains("core WebAssembly module") && errors(&out).contains("wasm32-wasip2"),
        "{}",
        errors(&out)
    );

    let usage = sluice("http://127.0.0.1:9", &["plugin", "push", "p", &core]);
    assert_eq!(
        usage.status.code(),
        Some(2),
        "NAME VERSION FILE are all required"
    );
}

/// The same component with a custom section appended: still valid, other bytes.
fn with_custom_section(wasm: &[u8], payload: &[u8]) -> Vec<u8> {
    let name = b"sluice-test";
    let size = 1 + name.len() + payload.len();
    assert!(size < 128, "one-byte LEB128 sizes only");
    let mut out = wasm.to_vec();
    out.extend_from_slice(&[0, size as u8, name.len() as u8]);
    out.extend_from_slice(name);
    out.extend_from_slice(payload);
    out
}

/// push, ls, get and rm against the registry: 201 then 200 for the same bytes,
/// 409 for other bytes at the same version, 404, and 409 while a task uses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_push_ls_get_rm() {
    use sha2::Digest;
    let server = Server::start().await;
    let url = server.url.clone();
    let temp = tempfile::tempdir().expect("temp dir");
    let parent = temp.path().to_path_buf();
    let (_, wasm) = tokio::task::spawn_blocking(move || scaffold_and_build(&parent, "push-me"))
        .await
        .expect("build");
    let first = temp.path().join("first.wasm");
    std::fs::write(&first, &wasm).expect("write");
    let first = first.to_str().expect("utf-8").to_string();
    let sha = format!("{:x}", sha2::Sha256::digest(&wasm));

    let out = sluice_async(&url, &["plugin", "push", "push-me", "0.1.0", &first]).await;
    assert_eq!(out.status.code(), Some(0), "{}", errors(&out));
    assert!(
        text(&out).contains("uploaded push-me 0.1.0"),
        "{}",
        text(&out)
    );
    assert!(
        text(&out).contains(&sha),
        "prints the sha256: {}",
        text(&out)
    );
    assert!(
        text(&out).contains(&wasm.len().to_string()),
        "prints the size: {}",
        text(&out)
    );

    // What the SDK docs promise: the scaffold, built and pushed, runs as a task
    // that calls an API through its gate.
    let api = Sink::start().await;
    api.behave(|_, _| crate::support::Reply::json(200, json!({ "status": "ok" })));
    health_check_runs(&server, &api, "health", "push-me@0.1.0", "/health").await;
    let hits = api.hits();
    assert_eq!(hits.len(), 1);
    assert_eq!(
        (hits[0].method.as_str(), hits[0].path.as_str()),
        ("GET", "/health")
    );

    let out = sluice_async(&url, &["plugin", "push", "push-me", "0.1.0", &first]).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "the same bytes again: {}",
        errors(&out)
    );
    assert!(text(&out).contains("already there"), "{}", text(&out));
    let out = sluice_async(
        &url,
        &["plugin", "push", "push-me", "0.1.0", &first, "--json"],
    )
    .await;
    let v: Value = serde_json::from_str(&text(&out)).expect("--json prints JSON");
    assert_eq!(v["sha256"], sha.as_str());
    assert_eq!(v["size"], wasm.len());

    let second = temp.path().join("second.wasm");
    std::fs::write(&second, with_custom_section(&wasm, b"2")).expect("write");
    let second = second.to_str().expect("utf-8").to_string();
    let out = sluice_async(&url, &["plugin", "push", "push-me", "0.1.0", &second]).await;
    assert_eq!(
        out.status.code(),
        Some(4),
        "other bytes, same version: {}",
        errors(&out)
    );
    assert!(
        errors(&out).contains("push-me 0.1.0") && errors(&out).contains("[409]"),
        "{}",
        errors(&out)
    );
    let out = sluice_async(&url, &["plugin", "push", "push-me", "0.2.0", &second]).await;
    assert_eq!(out.status.code(), Some(0), "{}", errors(&out));

    let out = sluice_async(&url, &["plugin", "ls"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", errors(&out));
    let table = text(&out);
    for needle in [
        "NAME",
        "VERSION",
        "SHA256",
        "REFERENCES",
        "push-me",
        "0.1.0",
        "0.2.0",
        &sha[..12],
    ] {
        assert!(table.contains(needle), "ls lacks {needle}: {table}");
    }
    let out = sluice_async(&url, &["plugin", "ls", "--json"]).await;
    let v: Value = serde_json::from_str(&text(&out)).expect("--json prints JSON");
    let versions: Vec<&str> = v["plugins"]
        .as_array()
        .expect("plugins")
        .iter()
        .filter_map(|p| p["version"].as_str())
        .collect();
    assert_eq!(versions, ["0.1.0", "0.2.0"]);

    let out = sluice_async(&url, &["plugin", "get", "push-me", "0.1.0"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", errors(&out));
    assert!(
        text(&out).contains(&sha) && text(&out).contains("sluice:task/log@0.1.0"),
        "{}",
        text(&out)
    );
    let out = sluice_async(&url, &["plugin", "get", "push-me", "9.9.9"]).await;
    assert_eq!(out.status.code(), Some(3), "not found: {}", errors(&out));

    // A task that will run 0.2.0 holds it; `task create --plugin` makes one.
    let c = server.client();
    c.put_gate("plugins", json!({ "rate": "1/s" })).await;
    let out = sluice_async(
        &url,
        &[
            "task",
            "create",
            "--gate",
            "plugins",
            "--delay",
            "1h",
            "--plugin",
            "push-me@0.2.0",
            "--input",
            r#"{"url": "http://x.test/"}"#,
            "--json",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", errors(&out));
    let created: serde_json::Value = serde_json::from_str(&text(&out)).expect("task JSON");
    assert_eq!(created["plugin"]["version"], "0.2.0", "{created}");
    assert_eq!(
        created["plugin"]["input"]["url"], "http://x.test/",
        "{created}"
    );
    let out = sluice_async(
        &url,
        &[
            "task",
            "create",
            "--gate",
            "plugins",
            "--plugin",
            "no-version",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(2), "{}", errors(&out));
    let out = sluice_async(&url, &["plugin", "rm", "push-me", "0.2.0"]).await;
    assert_eq!(out.status.code(), Some(4), "referenced: {}", errors(&out));
    assert!(errors(&out).contains("[409]"), "{}", errors(&out));

    let out = sluice_async(&url, &["plugin", "rm", "push-me", "0.1.0"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", errors(&out));
    assert!(
        text(&out).contains("deleted plugin push-me 0.1.0"),
        "{}",
        text(&out)
    );
    let out = sluice_async(&url, &["plugin", "rm", "push-me", "0.1.0"]).await;
    assert_eq!(out.status.code(), Some(3), "gone: {}", errors(&out));
}

/// What the server refuses comes back with its reason and exit code 5: more
/// memory than the server allows (the parameter named), one over 50 MiB, an
/// invalid version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_push_shows_the_servers_refusals() {
    let server = Server::start().await;
    let url = server.url.clone();
    let temp = tempfile::tempdir().expect("temp dir");
    let file = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../target/plugins/noop.wasm"
    ));
    let file = file.to_str().expect("utf-8");
    let out = sluice_async(
        &url,
        &[
            "plugin", "push", "greedy", "0.1.0", file, "--memory", "1GiB",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(5), "{}", errors(&out));
    assert!(
        errors(&out).contains("memory") && errors(&out).contains("64MiB to 64MiB"),
        "names the parameter and the bounds: {}",
        errors(&out)
    );

    let out = sluice_async(&url, &["plugin", "push", "greedy", "latest", file]).await;
    assert_eq!(out.status.code(), Some(5), "{}", errors(&out));

    let mut huge = COMPONENT_MAGIC.to_vec();
    huge.resize(51 * 1024 * 1024, 0);
    let file = temp.path().join("huge.wasm");
    std::fs::write(&file, &huge).expect("write");
    let out = sluice_async(
        &url,
        &[
            "plugin",
            "push",
            "huge",
            "0.1.0",
            file.to_str().expect("utf-8"),
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(5), "{}", errors(&out));
    assert!(errors(&out).contains("MiB"), "{}", errors(&out));

    let out = sluice_async(&url, &["plugin", "ls"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", errors(&out));
    assert!(!text(&out).contains("greedy"), "{}", text(&out));
}

/// Plugins are the admin's: a reader may list them, not push or remove them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_commands_need_the_right_role() {
    use sluice::api::auth::{TokenEntry, Tokens, new_token};
    let (reader, hash) = new_token().expect("random");
    let tokens = Tokens::new(vec![
        TokenEntry::new("reader", "reader", &hash).expect("entry"),
    ]);
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start_with(dir.path(), |c| c.tokens = tokens).await;
    let file = dir.path().join("tiny.wasm");
    std::fs::write(&file, COMPONENT_MAGIC).expect("write");
    let file = file.to_str().expect("utf-8").to_string();
    let token = ["--token", reader.as_str()];
    let ls = sluice_async(&server.url, &[&["plugin", "ls"][..], &token].concat()).await;
    assert_eq!(ls.status.code(), Some(0), "{}", errors(&ls));
    let push = sluice_async(
        &server.url,
        &[&["plugin", "push", "tiny", "0.1.0", &file][..], &token].concat(),
    )
    .await;
    assert_eq!(push.status.code(), Some(7), "{}", errors(&push));
    let rm = sluice_async(
        &server.url,
        &[&["plugin", "rm", "tiny", "0.1.0"][..], &token].concat(),
    )
    .await;
    assert_eq!(rm.status.code(), Some(7), "{}", errors(&rm));
    let anonymous = sluice_async(&server.url, &["plugin", "ls"]).await;
    assert_eq!(anonymous.status.code(), Some(7), "{}", errors(&anonymous));
}

/// What a scaffold's health check does once pushed: `sluice gate set` (open
/// to `api` only), `sluice task create --plugin` against `api` at `path`, and
/// the task succeeds with the status the API answered and a log line.
async fn health_check_runs(server: &Server, api: &Sink, gate: &str, plugin: &str, path: &str) {
    let url = &server.url;
    let out = sluice_async(
        url,
        &[
            "gate",
            "set",
            gate,
            "--rate",
            "5/s",
            "--allow-host",
            &api.host(),
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", errors(&out));
    let input = json!({ "url": api.url(path) }).to_string();
    let out = sluice_async(
        url,
        &[
            "task", "create", "--gate", gate, "--plugin", plugin, "--input", &input, "--json",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", errors(&out));
    let created: Value = serde_json::from_str(&text(&out)).expect("task JSON");
    let id = created["id"].as_str().expect("id");
    let done = server
        .client()
        .wait_state(id, "succeeded", std::time::Duration::from_secs(30))
        .await;
    let attempt = &done["attempts"][0];
    let output: Value =
        serde_json::from_str(attempt["response"].as_str().expect("output")).expect("JSON");
    assert_eq!(output["status"], "ok", "{plugin}: {done}");
    assert!(
        attempt["logs"].as_array().is_some_and(|l| !l.is_empty()),
        "{plugin}: {done}"
    );
}

/// The commands of a scaffold's README under `## Build`: the lines of its
/// first `sh` block, comments dropped.
fn readme_build_commands(readme: &str) -> Vec<String> {
    let build = readme
        .split("## Build")
        .nth(1)
        .expect("the README has a Build section");
    let block = build
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("an sh block");
    block
        .lines()
        .map(|l| l.split(" #").next().unwrap_or("").trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

/// `sluice plugin new --lang js|python`: the scaffold, built with the
/// commands its own README gives (the pinned componentize-js and
/// componentize-py, from the package registries), pushed with the CLI, runs
/// as a task that calls an API through its gate. Needs the registries:
/// `SLUICE_LANGUAGE_TESTS=1`.
async fn scaffold_builds_and_runs(lang: &str, name: &str, wasm: &str) {
    // It installs the tools from npm and PyPI, as a user would.
    if std::env::var_os("SLUICE_LANGUAGE_TESTS").is_none() {
        eprintln!(
            "skipped: set SLUICE_LANGUAGE_TESTS=1 (scripts/test does) to build the scaffolds with npm and pip"
        );
        return;
    }
    let server = Server::start().await;
    let url = server.url.clone();
    let temp = tempfile::tempdir().expect("temp dir");
    let api = Sink::start().await;
    api.behave(|_, _| crate::support::Reply::json(200, json!({ "status": "ok" })));
    let dir = temp.path().join(name);
    let dir_arg = dir.to_str().expect("utf-8").to_string();
    let out = sluice_async(
        &url,
        &["plugin", "new", name, "--lang", lang, "--dir", &dir_arg],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", errors(&out));
    let push = format!("sluice plugin push {name} 0.1.0 {wasm}");
    assert!(text(&out).contains(&push), "{}", text(&out));
    let readme = std::fs::read_to_string(dir.join("README.md")).expect("README");
    assert!(readme.contains(&push), "{readme}");
    assert!(!readme.contains("{{"), "a placeholder left: {readme}");
    let commands = readme_build_commands(&readme);
    assert_eq!(commands.len(), 2, "two commands build it: {commands:?}");
    for command in commands {
        let dir = dir.clone();
        let out = tokio::task::spawn_blocking(move || {
            Command::new("sh")
                .args(["-c", &command])
                .current_dir(&dir)
                .output()
                .expect("run sh")
        })
        .await
        .expect("build");
        assert!(out.status.success(), "{lang}: {}", errors(&out));
    }
    let component = dir.join(wasm);
    let component = component.to_str().expect("utf-8");
    let out = sluice_async(&url, &["plugin", "push", name, "0.1.0", component]).await;
    assert_eq!(out.status.code(), Some(0), "{}", errors(&out));

    let gate = format!("{name}-gate");
    let plugin = format!("{name}@0.1.0");
    health_check_runs(&server, &api, &gate, &plugin, &format!("/{name}")).await;
    assert!(
        api.hits().iter().any(|h| h.path == format!("/{name}")),
        "{lang}: the plugin called the API"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_new_scaffolds_a_js_plugin_that_runs() {
    scaffold_builds_and_runs("js", "health-js", "plugin.wasm").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_new_scaffolds_a_python_plugin_that_runs() {
    scaffold_builds_and_runs("python", "health-py", "app.wasm").await;
}
