//! `sluice status`: every gate at a glance, once or watching.

use super::*;

pub(super) async fn status(api: &Api, watch: bool, json: bool) -> Result<(), Failure> {
    loop {
        let v = api.get("/v1/gates").await?;
        if json {
            for g in v["gates"].as_array().cloned().unwrap_or_default() {
                println!("{}", serde_json::to_string(&g).unwrap_or_default());
            }
        } else {
            let table = status_table(&v);
            if watch {
                print!("\x1b[2J\x1b[H");
            }
            print!("{table}");
        }
        if !watch {
            // Scripts can tell a tripped circuit from the exit code.
            let tripped = v["gates"]
                .as_array()
                .is_some_and(|gs| gs.iter().any(|g| g["state"] == "tripped"));
            if tripped {
                return Err(Failure {
                    code: 6,
                    message: "a gate's circuit is open".into(),
                });
            }
            return Ok(());
        }
        let _ = std::io::stdout().flush();
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

pub(super) fn status_table(v: &Value) -> String {
    let gates = v["gates"].as_array().cloned().unwrap_or_default();
    let backlog: u64 = gates.iter().filter_map(|g| g["backlog"].as_u64()).sum();
    let in_flight: u64 = gates.iter().filter_map(|g| g["in_flight"].as_u64()).sum();
    let mut out = format!(
        "{} gates, {} pending, {} in flight (at {})\n",
        gates.len(),
        backlog,
        in_flight,
        crate::clock::now().rfc3339()
    );
    let rows: Vec<Vec<String>> = gates
        .iter()
        .map(|g| {
            let state = g["state"].as_str().unwrap_or("");
            let eff = g["effective_rate"].as_f64().unwrap_or(0.0);
            vec![
                g["name"].as_str().unwrap_or("").to_string(),
                match state {
                    "paused" => "paused (paused)".to_string(),
                    "tripped" => "tripped (open)".to_string(),
                    s => s.to_string(),
                },
                num(&g["backlog"]),
                num(&g["due"]),
                age(g["oldest_due_age_s"].as_f64().unwrap_or(0.0)),
                format!("{}/{}", num(&g["in_flight"]), num(&g["concurrency"])),
                format!("{}/{}", format_rate(eff), g["rate"].as_str().unwrap_or("")),
                format!(
                    "{}/{}",
                    num(&g["recent"]["5m"]["succeeded"]),
                    num(&g["recent"]["5m"]["failed"])
                ),
                g["eta_drain_s"].as_f64().map_or("-".into(), age),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "GATE",
            "STATE",
            "BACKLOG",
            "DUE",
            "AGE",
            "INFLIGHT/LIMIT",
            "RATE(EFF/CONF)",
            "OK/FAIL(5m)",
            "ETA",
        ],
        &rows,
    ));
    out
}
