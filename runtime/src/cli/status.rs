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
            let mut table = status_table(&v);
            // A server from before clusters has no /v1/cluster: no lines.
            if let Ok(cluster) = api.get("/v1/cluster").await {
                table.push_str(&cluster_lines(&cluster));
            }
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

/// The nodes of a cluster, with the units and gates each dispatches;
/// nothing for a single server.
pub(super) fn cluster_lines(v: &Value) -> String {
    if v["store"] != "postgres" {
        return String::new();
    }
    let nodes = v["nodes"].as_array().cloned().unwrap_or_default();
    let held: usize = (nodes.iter())
        .filter_map(|n| n["units"].as_array().map(Vec::len))
        .sum();
    let mut out = format!(
        "\ncluster: {} nodes, {held} of {} units held\n",
        nodes.len(),
        crate::core::units::UNITS
    );
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| {
            let id = n["id"].as_str().unwrap_or("");
            let units = n["units"].as_array().map_or(0, Vec::len);
            vec![
                id.to_string(),
                n["address"].as_str().unwrap_or("").to_string(),
                format!("{:.1} s ago", n["last_heartbeat_s"].as_f64().unwrap_or(0.0)),
                units.to_string(),
                num(&n["gates_owned"]),
                if Some(id) == v["node"].as_str() {
                    "answered".to_string()
                } else {
                    String::new()
                },
            ]
        })
        .collect();
    out.push_str(&table(
        &["NODE", "ADDRESS", "HEARTBEAT", "UNITS", "GATES", ""],
        &rows,
    ));
    out
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
                num(&g["active_keys"]),
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
            "KEYS",
        ],
        &rows,
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_shows_its_nodes_and_what_each_owns() {
        let cluster = serde_json::json!({
            "store": "postgres", "node": "n-2",
            "nodes": [
                {"id": "n-1", "address": "http://10.0.0.7:7070", "last_heartbeat_s": 0.4,
                 "gates_owned": 3, "units": [0, 1, 2]},
                {"id": "n-2", "address": "http://10.0.0.8:7070", "last_heartbeat_s": 0.9,
                 "gates_owned": 0, "units": [3]},
            ],
        });
        let text = cluster_lines(&cluster);
        assert!(
            text.contains("cluster: 2 nodes, 4 of 64 units held"),
            "{text}"
        );
        let first = text.lines().find(|l| l.starts_with("n-1")).expect("n-1");
        assert!(
            first.contains(" 3 ") && !first.contains("answered"),
            "{text}"
        );
        let other = text.lines().find(|l| l.starts_with("n-2")).expect("n-2");
        assert!(
            other.contains(" 1 ") && other.contains("answered"),
            "{text}"
        );
        let single = serde_json::json!({"store": "redb", "nodes": []});
        assert_eq!(cluster_lines(&single), "");
    }
}
