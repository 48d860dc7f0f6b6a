//! Security defences, each proven by attacking it: tokens and roles, TLS,
//! redaction of every secret, and size limits on every input.

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use sluice::api::auth::{ReportBodies, TokenEntry, Tokens, new_token};

mod next;
mod plugins;

use crate::crash::{free_port, spawn_server_with, wait_ready};
use crate::support::{Client, Reply, Server, Sink, gate_for, webhook_task};

/// Three tokens, one per role, and their plain texts (reader, writer, admin).
fn role_tokens() -> (Tokens, [String; 3]) {
    let mut entries = Vec::new();
    let mut plain = Vec::new();
    for role in ["reader", "writer", "admin"] {
        let (token, hash) = new_token().expect("random");
        entries.push(TokenEntry::new(role, role, &hash).expect("entry"));
        plain.push(token);
    }
    (
        Tokens::new(entries),
        plain.try_into().expect("three tokens"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_roles_guard_every_endpoint() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (tokens, [reader, writer, admin]) = role_tokens();
    let server = Server::start_with(dir.path(), |c| c.tokens = tokens).await;
    let sink = Sink::start().await;
    let anon = server.client();
    let reader = anon.with_token(&reader);
    let writer = anon.with_token(&writer);
    let admin = anon.with_token(&admin);

    // No token, a made-up token, a token in the wrong scheme: 401.
    let (status, headers, v) = anon.send_full("GET", "/v1/gates", None).await;
    assert_eq!(status, 401, "{v}");
    assert_eq!(v["error"]["code"], "unauthenticated");
    assert_eq!(headers["www-authenticate"], "Bearer");
    let forged = anon.with_token(&new_token().expect("random").0);
    assert_eq!(forged.send("GET", "/v1/gates", None).await.0, 401);
    let (status, _) = anon
        .raw("GET", "/v1/gates", "application/json", Vec::new())
        .await;
    assert_eq!(status, 401);
    // Unknown paths are closed too: nothing is learnt without a token.
    assert_eq!(anon.send("GET", "/v1/nothing-here", None).await.0, 401);

    // Gates are admin's.
    let gate = gate_for(&sink, "100/s");
    for c in [&reader, &writer] {
        let (status, v) = c.send("PUT", "/v1/gates/g", Some(gate.clone())).await;
        assert_eq!(status, 403, "{v}");
        assert_eq!(v["error"]["code"], "permission_denied");
    }
    admin.put_gate("g", gate).await;
    assert_eq!(writer.send("POST", "/v1/gates/g/pause", None).await.0, 403);

    // Tasks and schedules are writer's; reading is everyone's with a token.
    let task = webhook_task("g", &sink.url("/auth"));
    assert_eq!(
        reader.send("POST", "/v1/tasks", Some(task.clone())).await.0,
        403
    );
    let created = writer.create(task).await;
    let id = created["id"].as_str().expect("id");
    sink.wait_for(1, Duration::from_secs(10)).await;
    for c in [&reader, &writer, &admin] {
        assert_eq!(c.send("GET", &format!("/v1/tasks/{id}"), None).await.0, 200);
        assert_eq!(c.send("GET", "/v1/gates/g", None).await.0, 200);
    }
    let schedule = json!({ "every": "1h", "task": webhook_task("g", &sink.url("/s")) });
    assert_eq!(
        reader
            .send("PUT", "/v1/schedules/s", Some(schedule.clone()))
            .await
            .0,
        403
    );
    let (status, v) = writer.send("PUT", "/v1/schedules/s", Some(schedule)).await;
    assert!(status == 200 || status == 201, "{v}");

    // Long-running reports carry their own credential, the completion token:
    // without an API token the request gets through auth and is judged on it.
    let (status, v) = anon
        .send(
            "POST",
            &format!("/v1/tasks/{id}/complete"),
            Some(json!({ "token": "not-the-token" })),
        )
        .await;
    assert!(status != 401 && status != 403, "{status} {v}");
    assert!(status >= 400, "a wrong completion token is refused: {v}");

    // Health checks stay open for load balancers.
    assert_eq!(anon.send("GET", "/healthz", None).await.0, 200);
    assert_eq!(anon.send("GET", "/readyz", None).await.0, 200);
}

#[test]
fn an_open_api_listens_on_loopback_only() {
    let mut config =
        sluice::config::ServerConfig::local("unused".into(), "0.0.0.0:7460".parse().expect("addr"));
    let refused = config.check().expect_err("no tokens, all interfaces");
    assert!(refused.to_string().contains("no API tokens"), "{refused:#}");
    config.listen = "[::]:7460".parse().expect("addr");
    assert!(config.check().is_err());
    config.tokens = role_tokens().0;
    assert!(
        config.check().is_ok(),
        "with tokens any address may be used"
    );
    config.tokens = Tokens::default();
    config.listen = "[::1]:7460".parse().expect("addr");
    assert!(config.check().is_ok());
}

/// A self-signed certificate for 127.0.0.1 and localhost, as PEM files.
fn test_certificate(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf, String) {
    let generated =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .expect("certificate");
    let cert_pem = generated.cert.pem();
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, &cert_pem).expect("write cert");
    std::fs::write(&key, generated.signing_key.serialize_pem()).expect("write key");
    (cert, key, cert_pem)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_https_and_nothing_in_the_clear() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (cert, key, cert_pem) = test_certificate(dir.path());
    let (tokens, [_, _, admin]) = role_tokens();
    let data = dir.path().join("data");
    let server = Server::start_with(&data, |c| {
        c.tokens = tokens;
        c.tls = Some(sluice::config::TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
        });
    })
    .await;
    assert!(
        server.url.starts_with("https://127.0.0.1:"),
        "{}",
        server.url
    );

    let trusting = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert_pem.as_bytes()).expect("pem"))
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let client = Client::with_http(&server.url, trusting).with_token(&admin);
    let (status, v) = client.send("GET", "/v1/gates", None).await;
    assert_eq!(status, 200, "{v}");

    // A client that does not trust the certificate gets no answer.
    let untrusting = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let refused = untrusting
        .get(format!("{}/healthz", server.url))
        .send()
        .await;
    assert!(refused.is_err(), "an untrusted certificate was accepted");

    // Plain HTTP on the TLS port is not served.
    let clear = server.url.replace("https://", "http://");
    let plain = untrusting.get(format!("{clear}/healthz")).send().await;
    assert!(
        plain.is_err() || plain.is_ok_and(|r| r.status() != 200),
        "plain HTTP was served on the TLS port"
    );

    // The CLI reaches it with --ca-cert.
    let url = server.url.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["gate", "ls", "--json", "--server", &url, "--ca-cert"])
            .arg(&cert)
            .env("SLUICE_TOKEN", &admin)
            .output()
            .expect("run sluice")
    })
    .await
    .expect("join");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A key that does not belong to the certificate stops the start with a
    // clear error.
    let other = dir.path().join("other");
    std::fs::create_dir_all(&other).expect("dir");
    let (_, other_key, _) = test_certificate(&other);
    let mut config = sluice::config::ServerConfig::local(
        dir.path().join("data2"),
        "127.0.0.1:0".parse().expect("addr"),
    );
    config.tls = Some(sluice::config::TlsFiles {
        cert: dir.path().join("cert.pem"),
        key: other_key,
    });
    let err = match sluice::server::start(&config, None).await {
        Ok(_) => panic!("a mismatched key was accepted"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("does not fit"), "{err}");
}

/// Every secret the server holds (API tokens, signing secrets, secret header
/// values) is planted, used for real, and then looked for in every API answer
/// and every log line the server wrote at debug level.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planted_secrets_appear_nowhere() {
    planted_secrets("text").await;
}

/// The same with `--log-format json`, whose lines are also each one JSON
/// object with the stable fields, and carry the request id of the API call
/// they belong to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planted_secrets_appear_nowhere_in_json_logs() {
    let logs = planted_secrets("json").await;
    let mut with_request = 0;
    for line in logs.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        for field in ["timestamp", "level", "target", "message"] {
            assert!(v.get(field).is_some(), "no {field:?} in {line}");
        }
        if let Some(id) = v["span"]["request_id"].as_str() {
            assert!(id.len() >= 16, "{line}");
            with_request += 1;
        }
    }
    assert!(with_request > 0, "no line carried a request id:\n{logs}");
}

/// Runs the planted-secrets check with the server's log in `log_format`;
/// returns what the server wrote to stderr.
async fn planted_secrets(log_format: &str) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    let sink = Sink::start().await;
    sink.behave(|_, i| {
        if i == 0 {
            Reply::status(500)
        } else {
            Reply::ok()
        }
    });
    let (token, hash) = new_token().expect("random");
    let (bad_token, _) = new_token().expect("random");
    let random = || {
        new_token()
            .expect("random")
            .0
            .trim_start_matches("sluice_")
            .to_string()
    };
    let server_signing = format!("whsec_{}", b64(&random()));
    let gate_signing = format!("whsec_{}", b64(&random()));
    let header_secret = format!("hdr-{}", random());
    let bearer_secret = format!("auth-{}", random());
    let planted = [
        token.clone(),
        hash.trim_start_matches("sha256:").to_string(),
        server_signing.clone(),
        gate_signing.clone(),
        header_secret.clone(),
        bearer_secret.clone(),
        bad_token.clone(),
    ];
    let config = dir.path().join("sluice.toml");
    std::fs::write(
        &config,
        format!(
            "signing_secrets = [\"{server_signing}\"]\n\n[[tokens]]\nname = \"ops\"\nrole = \"admin\"\nhash = \"{hash}\"\n"
        ),
    )
    .expect("config");
    let log = dir.path().join("server.log");
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--config")
        .arg(&config)
        .args(["--log-format", log_format])
        .env("SLUICE_LOG", "debug")
        .stdout(Stdio::from(
            std::fs::File::create(dir.path().join("server.out")).expect("out"),
        ))
        .stderr(Stdio::from(std::fs::File::create(&log).expect("log")))
        .spawn()
        .expect("spawn sluice");
    let anon = Client::new(&format!("http://127.0.0.1:{port}"));
    wait_ready(&anon).await;
    let c = anon.with_token(&token);
    let mut answers: Vec<String> = Vec::new();
    let mut keep = |(status, v): (u16, Value)| {
        answers.push(v.to_string());
        (status, v)
    };

    let mut gate = gate_for(&sink, "50/s");
    gate["signing_secrets"] = json!([gate_signing]);
    let (status, v) = keep(c.send("PUT", "/v1/gates/g", Some(gate)).await);
    assert!(status == 200 || status == 201, "{v}");
    let headers = json!({
        "X-Api-Key": { "value": header_secret, "secret": true },
        "Authorization": format!("Bearer {bearer_secret}"),
        "X-Plain": "visible",
    });
    let task = json!({
        "gate": "g",
        "webhook": { "url": sink.url("/secret"), "headers": headers },
        "max_attempts": 3,
    });
    let (status, v) = keep(c.send("POST", "/v1/tasks", Some(task.clone())).await);
    assert_eq!(status, 201, "{v}");
    let id = v["id"].as_str().expect("id").to_string();
    assert_eq!(
        v["webhook"]["headers"]["X-Api-Key"],
        json!({ "secret": true })
    );
    assert_eq!(
        v["webhook"]["headers"]["Authorization"],
        json!({ "secret": true })
    );
    assert_eq!(v["webhook"]["headers"]["X-Plain"], "visible");
    let schedule = json!({ "every": "1h", "task": task });
    let (status, v) = keep(c.send("PUT", "/v1/schedules/s", Some(schedule)).await);
    assert!(status == 200 || status == 201, "{v}");

    // Rejected input never echoes a secret back.
    let mut bad = webhook_task("g", &sink.url("/bad"));
    bad["webhook"]["headers"] =
        json!({ "X-Api-Key": { "value": format!("{header_secret}\n"), "secret": true } });
    let (status, _) = keep(c.send("POST", "/v1/tasks", Some(bad)).await);
    assert_eq!(status, 400);
    let (status, _) = keep(
        anon.with_token(&bad_token)
            .send("GET", "/v1/gates", None)
            .await,
    );
    assert_eq!(status, 401);

    // The secrets are used: the endpoint got them, on the failed attempt and
    // on the retry that succeeded.
    let hits = sink.wait_for(2, Duration::from_secs(20)).await;
    let first = hits.iter().find(|h| h.task == id).expect("delivered");
    assert_eq!(first.headers["x-api-key"], header_secret);
    assert_eq!(
        first.headers["authorization"],
        format!("Bearer {bearer_secret}")
    );
    assert!(first.headers.contains_key("webhook-signature"));
    c.wait_state(&id, "succeeded", Duration::from_secs(20))
        .await;

    for path in [
        "/v1/gates".to_string(),
        "/v1/gates/g".into(),
        "/v1/tasks".into(),
        format!("/v1/tasks/{id}"),
        "/v1/schedules".into(),
        "/v1/schedules/s".into(),
        "/metrics".into(),
    ] {
        let (status, v) = keep(c.send("GET", &path, None).await);
        assert_eq!(status, 200, "{path}: {v}");
    }

    // Stop it by its PID with SIGTERM, so shutdown logs are in too.
    let stopped = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(stopped.success());
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("join")
        .expect("wait");
    assert!(exit.success(), "{exit:?}");

    let stderr = std::fs::read_to_string(&log).expect("log");
    let logs =
        stderr.clone() + &std::fs::read_to_string(dir.path().join("server.out")).expect("out");
    assert!(
        logs.contains("sluice listening"),
        "the log was captured: {logs}"
    );
    let everything = answers.join("\n") + &logs;
    for secret in &planted {
        assert!(
            !everything.contains(secret.as_str()),
            "a planted secret ({}...) leaked",
            &secret[..8]
        );
    }
    stderr
}

fn b64(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(&text.as_bytes()[..32])
}

/// Every endpoint that takes a body answers 413 past its limit, with the error
/// JSON, before reading further.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_body_has_a_limit() {
    let server = Server::start().await;
    let c = server.client();
    const KIB: usize = 1024;
    let cases: [(&str, &str, usize); 9] = [
        ("PUT", "/v1/gates/g", 64 * KIB),
        ("POST", "/v1/tasks", 1024 * KIB + 64 * KIB),
        ("POST", "/v1/tasks/batch", 64 * 1024 * KIB),
        ("POST", "/v1/tasks/AAAAAAAAAAAAA/complete", 64 * 1024 * KIB),
        // A reason of 64 KiB, escaped as JSON, fits.
        (
            "POST",
            "/v1/tasks/AAAAAAAAAAAAA/fail",
            1024 * KIB + 64 * KIB,
        ),
        (
            "POST",
            "/v1/tasks/AAAAAAAAAAAAA/heartbeat",
            1024 * KIB + 64 * KIB,
        ),
        ("PUT", "/v1/schedules/s", 1024 * KIB + 64 * KIB),
        ("POST", "/v1/gates/g/pause", 64 * KIB),
        ("POST", "/v1/tasks/AAAAAAAAAAAAA/retry", 64 * KIB),
    ];
    for (method, path, limit) in cases {
        // A JSON string just past the limit.
        let mut body = Vec::with_capacity(limit + 3);
        body.push(b'"');
        body.resize(limit + 1, b'a');
        body.push(b'"');
        let (status, v) = c.raw(method, path, "application/json", body).await;
        // Endpoints that read no body may answer on their own terms (404 for
        // an unknown task or gate), but never accept or choke on the bytes.
        if path.ends_with("/pause") || path.ends_with("/retry") {
            assert!(
                status == 404 || status == 413,
                "{method} {path}: {status} {v}"
            );
            continue;
        }
        assert_eq!(status, 413, "{method} {path}: {v}");
        assert_eq!(v["error"]["code"], "payload_too_large", "{method} {path}");
    }
}

/// Reports on long-running work carry their token in the body, so a report's
/// body is read before its sender is known: the bodies of all the reports
/// read at once share a budget, and a report past it is refused (503) before
/// its body is read, until the reports holding it end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_read_before_their_sender_is_known_share_a_budget() {
    use tokio::io::AsyncWriteExt;
    let server = Server::start().await;
    let c = server.client();
    let base = c.base_url();
    let authority = base.trim_start_matches("http://").trim_end_matches('/');
    let path = "/v1/tasks/AAAAAAAAAAAAA/complete";
    let largest = ReportBodies::BUDGET / 2;
    let small = || {
        c.raw(
            "POST",
            path,
            "application/json",
            br#"{"token":"x"}"#.to_vec(),
        )
    };
    assert_ne!(small().await.0, 503, "a report with the budget free");

    // Two reports of the largest size, their bodies begun and never ended.
    let hold = || async {
        let mut stream = tokio::net::TcpStream::connect(authority)
            .await
            .expect("connect");
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: {authority}\r\ncontent-type: application/json\r\n\
             content-length: {largest}\r\n\r\n{{\"token\": \""
        );
        stream.write_all(head.as_bytes()).await.expect("send");
        stream
    };
    let mut held = vec![hold().await, hold().await];
    // Once both are being read (nothing else holds any), any other report is
    // refused at once, the smallest too. (A held report admitted while a
    // small one still held its kilobyte was refused itself: it is sent
    // again.)
    let start = sluice::clock::instant();
    loop {
        let (status, v) = small().await;
        if status == 503 {
            assert_eq!(v["error"]["code"], "unavailable", "{v}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "two reports of {largest} bytes being read, and one more was let in: {status} {v}"
        );
        for stream in &mut held {
            let mut answered = [0u8; 64];
            match stream.try_read(&mut answered) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                _ => *stream = hold().await,
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut body = br#"{"token":""#.to_vec();
    body.resize(1 << 20, b'a');
    body.extend_from_slice(br#""}"#);
    let (status, _) = c.raw("POST", path, "application/json", body).await;
    assert_eq!(status, 503, "a report of 1 MiB past the budget");

    // The senders give up: their shares come back.
    drop(held);
    let start = sluice::clock::instant();
    loop {
        let (status, v) = small().await;
        if status != 503 {
            assert!((400..500).contains(&status), "{status} {v}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the budget never came back after the reports holding it ended"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `outbound_hosts` narrows every outgoing request, whatever a gate allows: a
/// task to a host outside it is refused before any DNS query or connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_hosts_overrule_the_gates() {
    let dir = tempfile::tempdir().expect("temp dir");
    let sink = Sink::start().await;
    let server = Server::start_with(dir.path(), |c| {
        c.outbound_hosts = vec!["hooks.example.com".to_string()];
    })
    .await;
    let c = server.client();
    c.put_gate("g", gate_for(&sink, "100/s")).await;
    let created = c.create(webhook_task("g", &sink.url("/out"))).await;
    let id = created["id"].as_str().expect("id");
    let task = c.wait_state(id, "failed", Duration::from_secs(10)).await;
    let error = task["attempts"][0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("outbound_hosts"), "{task}");
    assert!(sink.hits().is_empty(), "the sink was reached");
}

/// Without tokens, a browser page on another site cannot drive the server:
/// neither through a rebinding name nor with a cross-site write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_server_refuses_other_sites() {
    let server = Server::start().await;
    let http = reqwest::Client::new();
    let rebound = http
        .get(format!("{}/v1/gates", server.url))
        .header("host", "evil.example:7460")
        .send()
        .await
        .expect("answer");
    assert_eq!(rebound.status(), 403);
    let forged = http
        .put(format!("{}/v1/gates/g", server.url))
        .header("origin", "https://evil.example")
        .header("content-type", "application/json")
        .body(r#"{"rate": "1/s"}"#)
        .send()
        .await
        .expect("answer");
    assert_eq!(forged.status(), 403);
    let (status, v) = server.client().send("GET", "/v1/gates/g", None).await;
    assert_eq!(status, 404, "the forged write changed nothing: {v}");
    let own = http
        .put(format!("{}/v1/gates/g", server.url))
        .header("origin", server.url.clone())
        .header("content-type", "application/json")
        .body(r#"{"rate": "1/s"}"#)
        .send()
        .await
        .expect("answer");
    assert!(own.status().is_success(), "{}", own.status());
}

/// Proxies in the server's environment are ignored: through one, the address
/// guard would see only the proxy's address. A webhook to loopback through a
/// gate that does not name it is refused, one to a named host goes straight
/// there, and the proxy hears nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_in_the_environment_are_ignored() {
    let proxy = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("proxy binds");
    let proxy_url = format!("http://{}", proxy.local_addr().expect("addr"));
    let heard = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = heard.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = proxy.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(socket);
        }
    });
    let sink = Sink::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let mut child = spawn_server_with(dir.path(), port, |command| {
        for name in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"] {
            command.env(name, &proxy_url);
            command.env(name.to_lowercase(), &proxy_url);
        }
        command.env_remove("NO_PROXY").env_remove("no_proxy");
    });
    let c = Client::new(&format!("http://127.0.0.1:{port}"));
    wait_ready(&c).await;
    let mut open = gate_for(&sink, "100/s");
    open["allowed_hosts"] = serde_json::json!([]);
    c.put_gate("open", open).await;
    c.put_gate("named", gate_for(&sink, "100/s")).await;
    let by_name = format!("http://localhost:{}/by-name", sink.addr.port());
    let refused = c.create(webhook_task("open", &by_name)).await;
    let direct = c.create(webhook_task("named", &sink.url("/direct"))).await;
    let refused = c
        .wait_state(
            refused["id"].as_str().expect("id"),
            "failed",
            Duration::from_secs(20),
        )
        .await;
    c.wait_state(
        direct["id"].as_str().expect("id"),
        "succeeded",
        Duration::from_secs(20),
    )
    .await;
    child.stop();
    let error = refused["attempts"][0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("private or reserved"), "{refused}");
    let paths: Vec<String> = sink.hits().into_iter().map(|h| h.path).collect();
    assert_eq!(paths, ["/direct"], "only the named host was reached");
    assert_eq!(
        heard.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the proxy was used"
    );
}
