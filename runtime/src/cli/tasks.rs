//! `sluice task …`: create (one, or batches from a file), list, show,
//! cancel, retry, complete.

use super::*;

pub(super) async fn task(api: &Api, command: TaskCommand, json: bool) -> Result<(), Failure> {
    match command {
        TaskCommand::Create {
            gate,
            url,
            plugin,
            input,
            method,
            headers,
            secret_headers,
            body,
            delay,
            run_at,
            max_attempts,
            timeout,
            expires_after,
            idempotency_key,
            key,
            priority,
            coalesce_key,
            labels,
            count,
        } => {
            let mut task = match (plugin, url) {
                (Some(plugin), _) => {
                    let (name, version) = split_pair(&plugin, '@', "plugin")?;
                    let mut target = json!({ "name": name.trim(), "version": version.trim() });
                    if let Some(i) = input {
                        target["input"] = body_value(i)?;
                    }
                    json!({ "gate": gate, "plugin": target })
                }
                (None, url) => {
                    let mut webhook = json!({ "url": url });
                    if let Some(m) = method {
                        webhook["method"] = json!(m);
                    }
                    if !headers.is_empty() || !secret_headers.is_empty() {
                        let mut map = BTreeMap::new();
                        for h in &headers {
                            let (k, v) = split_pair(h, ':', "header")?;
                            map.insert(k.trim().to_string(), json!(v.trim()));
                        }
                        for h in &secret_headers {
                            let (k, v) = split_pair(h, ':', "secret header")?;
                            let value = json!({ "value": v.trim(), "secret": true });
                            map.insert(k.trim().to_string(), value);
                        }
                        webhook["headers"] = json!(map);
                    }
                    if let Some(b) = body {
                        webhook["body"] = body_value(b)?;
                    }
                    json!({ "gate": gate, "webhook": webhook })
                }
            };
            let mut set = |k: &str, v: Option<Value>| {
                if let Some(v) = v {
                    task[k] = v;
                }
            };
            set("delay", delay.map(Value::from));
            set("run_at", run_at.map(Value::from));
            set("max_attempts", max_attempts.map(Value::from));
            set("timeout", timeout.map(Value::from));
            set("expires_after", expires_after.map(Value::from));
            set("idempotency_key", idempotency_key.map(Value::from));
            set("key", key.map(Value::from));
            set("priority", priority.map(Value::from));
            set("coalesce_key", coalesce_key.map(Value::from));
            if !labels.is_empty() {
                let mut map = BTreeMap::new();
                for l in &labels {
                    let (k, v) = split_label(l).ok_or_else(|| Failure {
                        code: 2,
                        message: format!("label {l:?} must look like key=value"),
                    })?;
                    map.insert(k.to_string(), v.to_string());
                }
                task["labels"] = json!(map);
            }
            let count = usize::try_from(count).unwrap_or(usize::MAX);
            if count == 1 {
                let v = api
                    .call(reqwest::Method::POST, "/v1/tasks", Some(&task))
                    .await?;
                if json {
                    print_json(&v);
                } else {
                    println!("{}", v["id"].as_str().unwrap_or(""));
                }
                return Ok(());
            }
            let tasks = std::iter::repeat_n(task, count);
            send_batches(api, tasks, 1_000, count, None, json).await
        }
        TaskCommand::Import { file, batch } => {
            let reader = std::io::BufReader::new(
                std::fs::File::open(&file)
                    .with_context(|| format!("opening {}", file.display()))?,
            );
            let mut tasks = Vec::new();
            let mut lines = Vec::new();
            for (i, line) in reader.lines().enumerate() {
                let line = line.with_context(|| format!("reading {}", file.display()))?;
                if line.trim().is_empty() {
                    continue;
                }
                let value: Value = serde_json::from_str(&line).map_err(|e| Failure {
                    code: 5,
                    message: format!("{}:{}: not JSON: {e}", file.display(), i + 1),
                })?;
                tasks.push(value);
                lines.push(i + 1);
            }
            let total = tasks.len();
            let batch = batch.clamp(1, 10_000);
            send_batches(api, tasks.into_iter(), batch, total, Some(&lines), json).await
        }
        TaskCommand::Get { id } => {
            let v = api.get(&format!("/v1/tasks/{}", enc(&id))).await?;
            if json {
                print_json(&v);
            } else {
                print!("{}", task_detail(&v));
            }
            Ok(())
        }
        TaskCommand::Ls {
            gate,
            state,
            label,
            limit,
            cursor,
        } => {
            let mut q = vec![format!("limit={limit}")];
            for (k, v) in [
                ("gate", gate),
                ("state", state),
                ("label", label),
                ("cursor", cursor),
            ] {
                if let Some(v) = v {
                    q.push(format!("{k}={}", enc(&v)));
                }
            }
            let v = api.get(&format!("/v1/tasks?{}", q.join("&"))).await?;
            if json {
                print_json(&v);
            } else {
                print!("{}", tasks_table(&v));
            }
            Ok(())
        }
        TaskCommand::Cancel { id } => {
            let v = api
                .call(
                    reqwest::Method::DELETE,
                    &format!("/v1/tasks/{}", enc(&id)),
                    None,
                )
                .await?;
            if json {
                print_json(&v);
            } else {
                println!("cancelled {}", v["id"].as_str().unwrap_or(&id));
            }
            Ok(())
        }
        TaskCommand::Retry { id } => {
            let v = api
                .call(
                    reqwest::Method::POST,
                    &format!("/v1/tasks/{}/retry", enc(&id)),
                    None,
                )
                .await?;
            if json {
                print_json(&v);
            } else {
                println!("re-running {}", v["id"].as_str().unwrap_or(&id));
            }
            Ok(())
        }
        TaskCommand::Replay {
            gate,
            state,
            since,
            until,
            label,
            key,
            dry_run,
        } => {
            let mut body = json!({ "dry_run": dry_run });
            for (key, value) in [
                ("gate", gate),
                ("state", state),
                ("since", since),
                ("until", until),
                ("label", label),
                ("key", key),
            ] {
                if let Some(value) = value {
                    body[key] = json!(value);
                }
            }
            let v = api
                .call(reqwest::Method::POST, "/v1/tasks/replay", Some(&body))
                .await?;
            if json {
                print_json(&v);
            } else if dry_run {
                let eta = v["eta_s"]
                    .as_f64()
                    .map_or("never (a gate is paused)".to_string(), |s| format!("{s} s"));
                println!("{} tasks would run again; all started in {eta}", v["count"]);
                for g in v["gates"].as_array().into_iter().flatten() {
                    println!("  {}: {}", g["gate"].as_str().unwrap_or(""), g["count"]);
                }
            } else {
                println!(
                    "replay {} started; follow it with GET /v1/tasks/replay/{}",
                    v["id"].as_str().unwrap_or(""),
                    v["id"].as_str().unwrap_or("")
                );
            }
            Ok(())
        }
    }
}

/// Creates the tasks in batches, each all or none. A batch refused ends it:
/// what the batches before it created is printed as on success, and the
/// error names where the refused batch begins (`lines`: each task's line in
/// its file), so an import can go on from there.
pub(super) async fn send_batches(
    api: &Api,
    tasks: impl Iterator<Item = Value>,
    batch: usize,
    total: usize,
    lines: Option<&[usize]>,
    json: bool,
) -> Result<(), Failure> {
    let mut ids: Vec<Value> = Vec::with_capacity(total);
    let mut chunk = Vec::with_capacity(batch);
    let progress = std::io::stderr().is_terminal();
    let flush = async |chunk: &mut Vec<Value>, ids: &mut Vec<Value>| -> Result<(), Failure> {
        if chunk.is_empty() {
            return Ok(());
        }
        let body = json!({ "tasks": std::mem::take(chunk) });
        let v = api
            .call(reqwest::Method::POST, "/v1/tasks/batch", Some(&body))
            .await?;
        ids.extend(v["ids"].as_array().cloned().unwrap_or_default());
        if progress {
            eprint!("\rcreated {}/{}", ids.len(), total);
            let _ = std::io::stderr().flush();
        }
        Ok(())
    };
    let mut refused = None;
    for task in tasks {
        chunk.push(task);
        if chunk.len() >= batch
            && let Err(f) = flush(&mut chunk, &mut ids).await
        {
            refused = Some(f);
            break;
        }
    }
    if refused.is_none()
        && let Err(f) = flush(&mut chunk, &mut ids).await
    {
        refused = Some(f);
    }
    if progress {
        eprintln!();
    }
    if json {
        print_json(&json!({ "ids": ids }));
    } else {
        println!("created {} tasks", ids.len());
    }
    match refused {
        None => Ok(()),
        Some(f) => {
            let first = ids.len();
            let from = match lines.and_then(|l| l.get(first)) {
                Some(line) => format!("line {line}"),
                None => format!("task {}", first + 1),
            };
            Err(Failure {
                code: f.code,
                message: format!(
                    "{} (the batch from {from} created nothing; the {first} tasks before it were created)",
                    f.message
                ),
            })
        }
    }
}

pub(super) fn body_value(body: String) -> Result<Value, Failure> {
    let text = match body.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?,
        None => body,
    };
    Ok(serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

pub(super) fn tasks_table(v: &Value) -> String {
    let rows: Vec<Vec<String>> = v["tasks"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|t| {
            vec![
                t["id"].as_str().unwrap_or("").to_string(),
                t["gate"].as_str().unwrap_or("").to_string(),
                t["state"].as_str().unwrap_or("").to_string(),
                format!("{}/{}", num(&t["attempt_count"]), num(&t["max_attempts"])),
                t["due_at"].as_str().unwrap_or("").to_string(),
                t["webhook"]["url"].as_str().unwrap_or("").to_string(),
            ]
        })
        .collect();
    let mut out = table(
        &["ID", "GATE", "STATE", "ATTEMPTS", "DUE (UTC)", "URL"],
        &rows,
    );
    if let Some(c) = v["next_cursor"].as_str() {
        out.push_str(&format!("more: --cursor {c}\n"));
    }
    out
}

pub(super) fn task_detail(t: &Value) -> String {
    let mut out = String::new();
    let field = |k: &str, v: &Value, out: &mut String| {
        if !v.is_null() {
            out.push_str(&format!(
                "{k:<14}{}\n",
                v.as_str().map_or_else(|| v.to_string(), str::to_string)
            ));
        }
    };
    for k in [
        "id",
        "gate",
        "state",
        "schedule",
        "parent",
        "scheduled_at",
        "due_at",
        "created_at",
        "finished_at",
        "last_error",
    ] {
        field(k, &t[k], &mut out);
    }
    field("url", &t["webhook"]["url"], &mut out);
    out.push_str(&format!(
        "{:<14}{}/{}\n",
        "attempts",
        num(&t["attempt_count"]),
        num(&t["max_attempts"])
    ));
    let rows: Vec<Vec<String>> = t["attempts"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|a| {
            vec![
                num(&a["attempt"]),
                a["started_at"].as_str().unwrap_or("").to_string(),
                match (a["outcome"].as_str(), a["lease_until"].as_str()) {
                    (Some("leased"), Some(until)) => {
                        let progress = if a["progress"].is_null() {
                            String::new()
                        } else {
                            format!(", progress {}", a["progress"])
                        };
                        format!("leased until {until}{progress}")
                    }
                    (o, _) => o.unwrap_or("").to_string(),
                },
                num(&a["status"]),
                a["latency_ms"]
                    .as_u64()
                    .map_or("-".into(), |l| format!("{l}ms")),
                a["error"].as_str().unwrap_or("").to_string(),
            ]
        })
        .collect();
    if !rows.is_empty() {
        out.push('\n');
        out.push_str(&table(
            &[
                "#",
                "STARTED (UTC)",
                "OUTCOME",
                "STATUS",
                "LATENCY",
                "ERROR",
            ],
            &rows,
        ));
    }
    out
}
