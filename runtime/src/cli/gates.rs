//! `sluice gate …`.

use super::*;

pub(super) async fn gate(api: &Api, command: GateCommand, json: bool) -> Result<(), Failure> {
    let value = match command {
        GateCommand::Set {
            name,
            rate,
            burst,
            concurrency,
            allow_host,
            accept_next_from,
            timeout,
            max_attempts,
            recovery_start,
            recovery_over,
            no_circuit,
            adaptive,
            no_quota_headers,
        } => {
            // A gate that exists keeps what no flag names (its hosts, keys,
            // backoff, ...): a PUT replaces the whole gate.
            let path = format!("/v1/gates/{}", enc(&name));
            let mut body = match api.get(&path).await {
                Ok(view) => settings_of(&view),
                Err(f) if f.code == 3 => json!({}),
                Err(f) => return Err(f),
            };
            body["rate"] = json!(rate);
            if let Some(b) = burst {
                body["burst"] = json!(b);
            }
            if let Some(c) = concurrency {
                body["concurrency"] = json!(c);
            }
            if !allow_host.is_empty() {
                body["allowed_hosts"] = json!(allow_host);
            }
            if !accept_next_from.is_empty() {
                body["accept_next_from"] = json!(accept_next_from);
            }
            if let Some(t) = timeout {
                body["timeout"] = json!(t);
            }
            if let Some(n) = max_attempts {
                if !body["retry"].is_object() {
                    body["retry"] = json!({});
                }
                body["retry"]["max_attempts"] = json!(n);
            }
            if recovery_start.is_some() || recovery_over.is_some() {
                if !body["recovery"].is_object() {
                    body["recovery"] = json!({});
                }
                if let Some(s) = recovery_start {
                    body["recovery"]["start"] = json!(s);
                }
                if let Some(o) = recovery_over {
                    body["recovery"]["over"] = json!(o);
                }
            }
            if no_circuit {
                body["circuit"] = Value::Null;
            }
            if let Some((min, max)) = adaptive {
                body["adaptive"] = json!({ "min": min, "max": max });
            }
            if no_quota_headers {
                body["quota_headers"] = json!(false);
            }
            api.call(reqwest::Method::PUT, &path, Some(&body)).await?
        }
        GateCommand::Get { name } => api.get(&format!("/v1/gates/{}", enc(&name))).await?,
        GateCommand::Ls => {
            let v = api.get("/v1/gates").await?;
            if json {
                print_json(&v);
            } else {
                print!("{}", gates_table(&v));
            }
            return Ok(());
        }
        GateCommand::Rm { name, force } => {
            let q = if force { "?force=true" } else { "" };
            api.call(
                reqwest::Method::DELETE,
                &format!("/v1/gates/{}{q}", enc(&name)),
                None,
            )
            .await?;
            if !json {
                println!("deleted gate {name}");
            }
            return Ok(());
        }
        GateCommand::Pause { name } => {
            api.call(
                reqwest::Method::POST,
                &format!("/v1/gates/{}/pause", enc(&name)),
                None,
            )
            .await?
        }
        GateCommand::Resume { name } => {
            api.call(
                reqwest::Method::POST,
                &format!("/v1/gates/{}/resume", enc(&name)),
                None,
            )
            .await?
        }
    };
    if json {
        print_json(&value);
    } else {
        print!("{}", gates_table(&json!({ "gates": [value] })));
        print!("{}", keys_table(&value));
    }
    Ok(())
}

/// A gate's settings, as its view shows them, as a PUT body takes them (no
/// live figures; the adaptive search's range and where it starts; the
/// signing secrets left out, which a PUT then keeps).
fn settings_of(view: &Value) -> Value {
    let mut body = json!({});
    for field in [
        "burst",
        "concurrency",
        "allowed_hosts",
        "accept_next_from",
        "timeout",
        "retry",
        "recovery",
        "circuit",
        "quota_headers",
        "keys",
        "isolate",
        "priority_aging",
    ] {
        if let Some(value) = view.get(field) {
            body[field] = value.clone();
        }
    }
    if let Some(adaptive) = view.get("adaptive").filter(|a| a.is_object()) {
        body["adaptive"] = json!({ "min": adaptive["min"], "max": adaptive["max"] });
        body["concurrency"] = adaptive["start"].clone();
    }
    body
}

/// A gate's busiest keys, when it has keys with work; nothing otherwise.
pub(super) fn keys_table(gate: &Value) -> String {
    let keys = gate["busiest_keys"].as_array().cloned().unwrap_or_default();
    if keys.is_empty() {
        return String::new();
    }
    let rows: Vec<Vec<String>> = keys
        .iter()
        .map(|k| {
            vec![
                k["key"].as_str().unwrap_or("(no key)").to_string(),
                num(&k["in_flight"]),
                num(&k["due"]),
                k["oldest_due_age_s"].as_f64().map_or("-".into(), age),
                k["state"].as_str().unwrap_or("-").to_string(),
            ]
        })
        .collect();
    format!(
        "\n{} keys with work, the busiest:\n{}",
        num(&gate["active_keys"]),
        table(&["KEY", "INFLIGHT", "DUE", "OLDEST", "STATE"], &rows)
    )
}

pub(super) fn split_pair<'a>(
    text: &'a str,
    sep: char,
    what: &str,
) -> Result<(&'a str, &'a str), Failure> {
    text.split_once(sep).ok_or_else(|| Failure {
        code: 2,
        message: format!("{what} {text:?} must look like name{sep}value"),
    })
}

pub(super) fn gates_table(v: &Value) -> String {
    let rows: Vec<Vec<String>> = v["gates"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|g| {
            vec![
                g["name"].as_str().unwrap_or("").to_string(),
                g["state"].as_str().unwrap_or("").to_string(),
                g["rate"].as_str().unwrap_or("").to_string(),
                num(&g["burst"]),
                num(&g["concurrency"]),
                g["allowed_hosts"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|h| h.as_str())
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| "(any public)".into()),
            ]
        })
        .collect();
    table(
        &["GATE", "STATE", "RATE", "BURST", "CONCURRENCY", "HOSTS"],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gate_with_keys_lists_its_busiest() {
        let gate = json!({
            "active_keys": 2,
            "busiest_keys": [
                { "key": "acme", "in_flight": 2, "due": 40, "oldest_due_age_s": 3.0, "state": "tripped", "weight": 1 },
                { "key": null, "in_flight": 0, "due": 1, "weight": 1 },
            ],
        });
        let text = keys_table(&gate);
        assert!(text.contains("2 keys with work"), "{text}");
        let acme = text.lines().find(|l| l.starts_with("acme")).expect("acme");
        assert!(acme.contains("tripped") && acme.contains(" 40 "), "{text}");
        assert!(text.contains("(no key)"), "{text}");
        assert_eq!(keys_table(&json!({ "busiest_keys": [] })), "");
    }
}
