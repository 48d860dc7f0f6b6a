//! `GET /v1/openapi.json`: the OpenAPI description generated from the handlers
//! lists every endpoint, parses as OpenAPI 3.1, and agrees with what the server
//! really accepts and answers.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{Client, Server, Sink, gate_for, webhook_task};

/// Every endpoint of SPEC §3, §9 and §10 (the dashboard at `/` is not an API operation).
const ENDPOINTS: &[(&str, &str)] = &[
    ("get", "/v1/gates"),
    ("put", "/v1/gates/{name}"),
    ("get", "/v1/gates/{name}"),
    ("delete", "/v1/gates/{name}"),
    ("post", "/v1/gates/{name}/pause"),
    ("post", "/v1/gates/{name}/resume"),
    // Issue 17: a gate's keys, paged.
    ("get", "/v1/gates/{name}/keys"),
    ("post", "/v1/tasks"),
    ("get", "/v1/tasks"),
    ("post", "/v1/tasks/batch"),
    ("get", "/v1/tasks/{id}"),
    ("delete", "/v1/tasks/{id}"),
    ("post", "/v1/tasks/{id}/retry"),
    ("post", "/v1/tasks/{id}/complete"),
    ("post", "/v1/tasks/{id}/fail"),
    ("post", "/v1/tasks/{id}/heartbeat"),
    // SPEC §1, self-tuning gates.
    ("post", "/v1/tasks/replay"),
    ("get", "/v1/tasks/replay/{id}"),
    ("delete", "/v1/tasks/replay/{id}"),
    ("get", "/v1/schedules"),
    ("put", "/v1/schedules/{name}"),
    ("get", "/v1/schedules/{name}"),
    ("delete", "/v1/schedules/{name}"),
    ("post", "/v1/schedules/{name}/pause"),
    ("post", "/v1/schedules/{name}/resume"),
    ("put", "/v1/plugins/{name}/{version}"),
    ("get", "/v1/plugins"),
    ("get", "/v1/plugins/{name}/{version}"),
    ("delete", "/v1/plugins/{name}/{version}"),
    ("post", "/v1/admin/backup"),
    // SPEC §9.
    ("get", "/v1/cluster"),
    ("get", "/v1/openapi.json"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
];

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "patch", "head", "options", "trace",
];

async fn document(c: &Client) -> Value {
    let (status, headers, doc) = c.send_full("GET", "/v1/openapi.json", None).await;
    assert_eq!(status, 200, "{doc}");
    assert_eq!(
        headers.get("content-type").and_then(|v| v.to_str().ok()),
        Some("application/json")
    );
    doc
}

/// The value a local `$ref` (`#/a/b`) points at.
fn resolve<'a>(doc: &'a Value, reference: &str) -> Option<&'a Value> {
    doc.pointer(reference.strip_prefix('#')?)
}

/// Every `$ref` anywhere under `value`.
fn refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("$ref", Value::String(r)) => out.push(r.clone()),
                    _ => refs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_describes_every_endpoint() {
    let server = Server::start().await;
    let doc = document(&server.client()).await;

    let text = doc.to_string();
    let spec = oas3::from_json(&text).expect("the document parses as OpenAPI 3.1");
    let version = spec.validate_version().expect("a supported version");
    assert_eq!((version.major, version.minor), (3, 1));

    let paths = doc["paths"].as_object().expect("paths");
    for (method, path) in ENDPOINTS {
        let op = &paths
            .get(*path)
            .unwrap_or_else(|| panic!("{path} is not documented"))[method];
        let responses = op["responses"].as_object();
        assert!(
            responses.is_some_and(|r| !r.is_empty()),
            "{method} {path} has no responses: {op}"
        );
    }
    // Nothing is documented that the server does not serve.
    for (path, item) in paths {
        for method in METHODS {
            if item.get(method).is_some() {
                assert!(
                    ENDPOINTS.contains(&(method, path.as_str())),
                    "{method} {path} is documented but not in the SPEC"
                );
            }
        }
    }

    // Every reference resolves: schemas, shared responses, security schemes.
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(
        all.len() > 50,
        "expected many references, found {}",
        all.len()
    );
    for r in &all {
        assert!(resolve(&doc, r).is_some(), "{r} does not resolve");
    }

    // Bearer tokens guard /v1; health checks are open.
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"],
        json!({ "type": "http", "scheme": "bearer" })
    );
    for (method, path) in ENDPOINTS {
        let op = &doc["paths"][path][method];
        let security = &op["security"];
        if path.starts_with("/v1/") || *path == "/metrics" {
            assert_eq!(security, &json!([{ "bearer": [] }]), "{method} {path}");
            for status in ["401", "403"] {
                assert!(
                    op["responses"].get(status).is_some(),
                    "{method} {path} lacks {status}"
                );
            }
        } else {
            assert!(security.is_null(), "{method} {path} needs no token");
        }
        // Every error answer has the error JSON of SPEC §3.
        for (status, response) in op["responses"].as_object().into_iter().flatten() {
            if status.starts_with('2') {
                continue;
            }
            let response = match response.get("$ref").and_then(Value::as_str) {
                Some(r) => resolve(&doc, r).expect("resolves"),
                None => response,
            };
            assert_eq!(
                response["content"]["application/json"]["schema"]["$ref"],
                "#/components/schemas/ErrorBody",
                "{method} {path} {status}"
            );
        }
    }
}

/// Checks `value` against a schema of the JSON Schema subset the document uses.
/// Any other keyword fails, so the check never passes by ignoring a rule. With
/// `strict`, an object may have no property the schema does not name: what the
/// server sends must all be documented.
fn check(doc: &Value, schema: &Value, value: &Value, at: &str, strict: bool) -> Result<(), String> {
    let Some(schema) = schema.as_object() else {
        return Err(format!("{at}: schema is not an object: {schema}"));
    };
    for (keyword, rule) in schema {
        match keyword.as_str() {
            "$ref" => {
                let target = rule
                    .as_str()
                    .and_then(|r| resolve(doc, r))
                    .ok_or_else(|| format!("{at}: unresolved {rule}"))?;
                check(doc, target, value, at, strict)?;
            }
            "type" => {
                let types: Vec<&str> = match rule {
                    Value::String(t) => vec![t.as_str()],
                    Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
                    _ => return Err(format!("{at}: bad type {rule}")),
                };
                let ok = types.iter().any(|t| match *t {
                    "object" => value.is_object(),
                    "array" => value.is_array(),
                    "string" => value.is_string(),
                    "boolean" => value.is_boolean(),
                    "null" => value.is_null(),
                    "number" => value.is_number(),
                    "integer" => value.is_i64() || value.is_u64(),
                    _ => false,
                });
                if !ok {
                    return Err(format!("{at}: {value} is not {rule}"));
                }
            }
            "properties" => {
                let (Some(props), Some(object)) = (rule.as_object(), value.as_object()) else {
                    continue;
                };
                for (name, sub) in props {
                    if let Some(v) = object.get(name) {
                        check(doc, sub, v, &format!("{at}.{name}"), strict)?;
                    }
                }
                let extra_allowed = schema.get("additionalProperties");
                for (name, v) in object {
                    if props.contains_key(name) {
                        continue;
                    }
                    match extra_allowed {
                        Some(Value::Bool(false)) => {
                            return Err(format!("{at}: unknown property {name}"));
                        }
                        None if strict => {
                            return Err(format!("{at}: undocumented property {name}"));
                        }
                        Some(sub) if sub.is_object() => {
                            check(doc, sub, v, &format!("{at}.{name}"), strict)?
                        }
                        _ => {}
                    }
                }
            }
            "additionalProperties" => {
                // With `properties` it was checked there; alone it types a map.
                if schema.contains_key("properties") {
                    continue;
                }
                if let (Some(object), true) = (value.as_object(), rule.is_object()) {
                    for (name, v) in object {
                        check(doc, rule, v, &format!("{at}.{name}"), strict)?;
                    }
                }
            }
            "required" => {
                if let Some(object) = value.as_object() {
                    for name in rule.as_array().into_iter().flatten() {
                        let name = name.as_str().unwrap_or_default();
                        if !object.contains_key(name) {
                            return Err(format!("{at}: missing required {name}"));
                        }
                    }
                }
            }
            "items" => {
                for (i, v) in value.as_array().into_iter().flatten().enumerate() {
                    check(doc, rule, v, &format!("{at}[{i}]"), strict)?;
                }
            }
            "oneOf" => {
                let matching = rule
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|sub| check(doc, sub, value, at, strict).is_ok())
                    .count();
                if matching != 1 {
                    return Err(format!("{at}: {value} matches {matching} of {rule}"));
                }
            }
            "minimum" | "maximum" => {
                if let (Some(n), Some(limit)) = (value.as_f64(), rule.as_f64()) {
                    let ok = if keyword == "minimum" {
                        n >= limit
                    } else {
                        n <= limit
                    };
                    if !ok {
                        return Err(format!("{at}: {n} is outside {keyword} {limit}"));
                    }
                }
            }
            "format" => {
                if let (Some("date-time"), Some(text)) = (rule.as_str(), value.as_str()) {
                    text.parse::<jiff::Timestamp>()
                        .map_err(|e| format!("{at}: {text:?} is not a date-time: {e}"))?;
                }
            }
            "propertyNames" => {
                for name in value.as_object().into_iter().flat_map(|o| o.keys()) {
                    check(doc, rule, &json!(name), at, strict)?;
                }
            }
            "description" | "example" | "examples" => {}
            other => return Err(format!("{at}: keyword {other} is not checked here")),
        }
    }
    Ok(())
}

/// The schema of an operation's request body.
fn request_schema<'a>(doc: &'a Value, method: &str, path: &str) -> &'a Value {
    &doc["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]
}

/// The schema of an operation's answer with `status`.
fn response_schema<'a>(doc: &'a Value, method: &str, path: &str, status: u16) -> &'a Value {
    let response = &doc["paths"][path][method]["responses"][status.to_string()];
    let response = match response.get("$ref").and_then(Value::as_str) {
        Some(r) => resolve(doc, r).unwrap_or(&Value::Null),
        None => response,
    };
    &response["content"]["application/json"]["schema"]
}

/// Sends a request the document describes and checks both ends against it.
async fn round_trip(
    c: &Client,
    doc: &Value,
    (method, path): (&str, &str),
    url: &str,
    body: Option<Value>,
) -> (u16, Value) {
    if let Some(body) = &body {
        let schema = request_schema(doc, method, path);
        check(doc, schema, body, "request", false)
            .unwrap_or_else(|e| panic!("{method} {path} body: {e}"));
    }
    let (status, answer) = c.send(&method.to_uppercase(), url, body).await;
    let schema = response_schema(doc, method, path, status);
    if status == 204 {
        assert!(schema.is_null(), "{method} {path}: 204 has no body");
    } else {
        check(doc, schema, &answer, "answer", true)
            .unwrap_or_else(|e| panic!("{method} {path} {status}: {e}\n{answer}"));
    }
    (status, answer)
}

/// The bodies the tests send validate against the documented request schemas, and
/// what the server answers validates against the documented responses, with no
/// undocumented field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_and_answers_match_the_document() {
    let server = Server::start().await;
    let c = server.client();
    let sink = Sink::start().await;
    let doc = document(&c).await;

    let mut gate = gate_for(&sink, "50/s");
    gate["circuit"] = json!({ "failures": 3, "cooldown": "1s" });
    gate["accept_next_from"] = json!(["onboarding"]);
    let (status, _) = round_trip(
        &c,
        &doc,
        ("put", "/v1/gates/{name}"),
        "/v1/gates/g",
        Some(gate),
    )
    .await;
    assert_eq!(status, 201);
    let (status, _) = round_trip(
        &c,
        &doc,
        ("put", "/v1/gates/{name}"),
        "/v1/gates/g",
        Some(json!({ "rate": 5, "circuit": null })),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = round_trip(
        &c,
        &doc,
        ("put", "/v1/gates/{name}"),
        "/v1/gates/g",
        Some(gate_for(&sink, "50/s")),
    )
    .await;
    assert_eq!(status, 200);
    round_trip(&c, &doc, ("get", "/v1/gates"), "/v1/gates", None).await;

    let mut task = webhook_task("g", &sink.url("/hook"));
    task["labels"] = json!({ "team": "billing" });
    task["idempotency_key"] = json!("order-1");
    task["backoff"] = json!({ "initial": "1s", "max": "1m" });
    let path = ("post", "/v1/tasks");
    let (status, created) = round_trip(&c, &doc, path, "/v1/tasks", Some(task.clone())).await;
    assert_eq!(status, 201);
    let (status, _) = round_trip(&c, &doc, path, "/v1/tasks", Some(task)).await;
    assert_eq!(status, 200, "an idempotent replay");
    // The check has teeth: an undocumented, a missing or a malformed field fails.
    let view = response_schema(&doc, "post", "/v1/tasks", 201);
    let mut extra = created.clone();
    extra["surprise"] = json!(1);
    let mut missing = created.clone();
    missing.as_object_mut().map(|o| o.remove("id"));
    let mut bad_time = created.clone();
    bad_time["created_at"] = json!("yesterday");
    for wrong in [extra, missing, bad_time] {
        assert!(
            check(&doc, view, &wrong, "answer", true).is_err(),
            "{wrong}"
        );
    }
    let id = created["id"].as_str().expect("id").to_string();
    c.wait_state(&id, "succeeded", Duration::from_secs(10))
        .await;
    let (_, done) = round_trip(
        &c,
        &doc,
        ("get", "/v1/tasks/{id}"),
        &format!("/v1/tasks/{id}"),
        None,
    )
    .await;
    assert_eq!(done["attempts"].as_array().map(Vec::len), Some(1), "{done}");

    let batch = json!({ "tasks": [
        webhook_task("g", &sink.url("/a")),
        { "gate": "g", "webhook": { "url": sink.url("/b"), "method": "PUT", "body": "raw" }, "delay": "1h" },
    ] });
    let (status, _) = round_trip(
        &c,
        &doc,
        ("post", "/v1/tasks/batch"),
        "/v1/tasks/batch",
        Some(batch),
    )
    .await;
    assert_eq!(status, 201);
    round_trip(
        &c,
        &doc,
        ("get", "/v1/tasks"),
        "/v1/tasks?gate=g&limit=2",
        None,
    )
    .await;

    let schedule = json!({
        "cron": "0 9 * * *",
        "timezone": "Europe/Berlin",
        "misfire": "skip",
        "task": { "gate": "g", "webhook": { "url": sink.url("/tick"), "body": { "job": "tick" } } },
    });
    let path = ("put", "/v1/schedules/{name}");
    let (status, _) = round_trip(&c, &doc, path, "/v1/schedules/daily", Some(schedule)).await;
    assert_eq!(status, 201);
    round_trip(&c, &doc, ("get", "/v1/schedules"), "/v1/schedules", None).await;

    // Errors: the documented error JSON, and unknown fields refused on both sides.
    let unknown = json!({ "rate": "1/s", "colour": "red" });
    let schema = request_schema(&doc, "put", "/v1/gates/{name}");
    assert!(check(&doc, schema, &unknown, "request", false).is_err());
    let (status, _) = c.send("PUT", "/v1/gates/g2", Some(unknown)).await;
    assert_eq!(status, 400);
    let (status, _) = round_trip(
        &c,
        &doc,
        ("put", "/v1/gates/{name}"),
        "/v1/gates/g2",
        Some(json!({ "rate": "fast" })),
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = round_trip(&c, &doc, ("get", "/v1/tasks/{id}"), "/v1/tasks/nope", None).await;
    assert_eq!(status, 400);
    let (status, _) = round_trip(
        &c,
        &doc,
        ("delete", "/v1/gates/{name}"),
        "/v1/gates/g",
        None,
    )
    .await;
    assert_eq!(status, 409);
    let (status, _) = round_trip(
        &c,
        &doc,
        ("delete", "/v1/schedules/{name}"),
        "/v1/schedules/daily",
        None,
    )
    .await;
    assert_eq!(status, 204);

    // The registry and a plugin task (the upload itself is not JSON).
    let wasm_path = format!(
        "{}/../target/plugins/cleanup-stray.wasm",
        env!("CARGO_MANIFEST_DIR")
    );
    let wasm = std::fs::read(&wasm_path).expect("scripts/build-plugins built the plugins");
    let (status, uploaded) = c
        .raw(
            "PUT",
            "/v1/plugins/cleanup-stray/1.0.0",
            "application/wasm",
            wasm,
        )
        .await;
    assert_eq!(status, 201, "{uploaded}");
    check(
        &doc,
        response_schema(&doc, "put", "/v1/plugins/{name}/{version}", 201),
        &uploaded,
        "answer",
        true,
    )
    .expect("the upload's answer matches its schema");
    round_trip(&c, &doc, ("get", "/v1/plugins"), "/v1/plugins", None).await;
    round_trip(
        &c,
        &doc,
        ("get", "/v1/plugins/{name}/{version}"),
        "/v1/plugins/cleanup-stray/1.0.0",
        None,
    )
    .await;
    let plugin_task = json!({
        "gate": "g",
        "delay": "1h",
        "plugin": { "name": "cleanup-stray", "version": "1.0.0", "input": { "api": sink.url("") } },
    });
    let (status, task) = round_trip(
        &c,
        &doc,
        ("post", "/v1/tasks"),
        "/v1/tasks",
        Some(plugin_task),
    )
    .await;
    assert_eq!(status, 201);
    let id = task["id"].as_str().expect("id");
    round_trip(
        &c,
        &doc,
        ("delete", "/v1/tasks/{id}"),
        &format!("/v1/tasks/{id}"),
        None,
    )
    .await;
    let (status, _) = round_trip(
        &c,
        &doc,
        ("delete", "/v1/plugins/{name}/{version}"),
        "/v1/plugins/cleanup-stray/1.0.0",
        None,
    )
    .await;
    assert_eq!(status, 204);
}
