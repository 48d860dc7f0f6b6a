//! `sluice bench`: starts a fresh release server and a fast loopback sink,
//! runs the workloads of docs/performance.md, prints a table and writes JSON.
//!
//! Everything stays on loopback. Each workload has bounded counts and a
//! deadline, so a run ends by itself even when a target is missed.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};

use crate::client::Client;
use crate::clock;

mod harness;
mod keys;
mod plugins;
mod replay;
mod table;

use harness::*;
use table::Table;

#[derive(Clone, Debug)]
pub struct Options {
    /// Pending tasks for W5 (5,000,000 in the full run).
    pub scale_tasks: u64,
    pub gates: u64,
    pub out: PathBuf,
    pub quick: bool,
    /// Run only these workloads (w1, w1c, w1k, w2 … w5b, w6, w6js, w6py, w7, w7c, w7d,
    /// w8 … w12); all when empty. W7c (a cluster) runs only with a PostgreSQL `store`.
    pub only: Vec<String>,
    /// A PostgreSQL URL for the servers' store; redb files when `None`.
    pub store: Option<String>,
}

impl Options {
    fn runs(&self, workload: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|w| w == workload)
    }
}

pub async fn run(options: Options) -> anyhow::Result<()> {
    let sink = Sink::start().await?;
    let temp = std::env::temp_dir().join(format!("sluice-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&temp);
    std::fs::create_dir_all(&temp)?;
    let mut results = serde_json::Map::new();
    let mut rows = Table::new();
    let host = sink.addr.to_string();
    let url = |p: &str| format!("http://{host}{p}");

    let mut server =
        Server::spawn(&temp.join("main"), free_port()?, options.store.as_deref()).await?;

    if options.runs("w1") {
        // W1: throughput.
        let n1 = if options.quick { 20_000 } else { 100_000 };
        server.gate("w1", unlimited(&sink)).await?;
        let tasks: Vec<Value> = (0..n1).map(|_| task("w1", &url("/w1"), None)).collect();
        let cpu = server.cpu_per_task();
        let created_in = server.create(tasks, 10_000, 2).await?;
        let started = clock::instant() - created_in;
        let got = sink.wait("/w1", n1, Duration::from_secs(300)).await;
        let (cpu_us, driver_us) = cpu(got.len());
        let last = got.iter().map(|a| a.at).max().unwrap_or(started);
        let first = got.iter().map(|a| a.at).min().unwrap_or(started);
        let create_rate = n1 as f64 / created_in.as_secs_f64();
        let end_to_end = got.len() as f64 / last.duration_since(started).as_secs_f64();
        let delivery_rate = got.len() as f64 / last.duration_since(first).as_secs_f64().max(1e-3);
        results.insert("w1".into(), json!({ "tasks": n1, "create_per_s": create_rate, "deliveries_per_s": delivery_rate, "end_to_end_per_s": end_to_end, "delivered": got.len(), "server_cpu_us_per_task": cpu_us, "driver_cpu_us_per_task": driver_us }));
        rows.push((
            "W1 creates/s (batch, durable)".into(),
            format!("{create_rate:.0}"),
            "≥ 50,000".into(),
        ));
        rows.push((
            "W1 deliveries/s".into(),
            format!(
                "{delivery_rate:.0} ({end_to_end:.0} from first create; CPU per task {cpu_us:.0} µs, driver {driver_us:.0})"
            ),
            "≥ 20,000".into(),
        ));
    }
    if options.runs("w1c") {
        // W1 at the concurrency people give an endpoint: no rate limit, 100
        // connections (the peers' harness setting).
        let n = if options.quick { 20_000 } else { 50_000 };
        let mut gate = unlimited(&sink);
        gate["concurrency"] = json!(100);
        server.gate("w1c", gate).await?;
        let tasks: Vec<Value> = (0..n).map(|_| task("w1c", &url("/w1c"), None)).collect();
        let cpu = server.cpu_per_task();
        server.create(tasks, 10_000, 2).await?;
        let got = sink.wait("/w1c", n, Duration::from_secs(300)).await;
        let (cpu_us, driver_us) = cpu(got.len());
        let times: Vec<Instant> = got.iter().map(|a| a.at).collect();
        let per_s = rate_after_burst(&times, 0.0);
        results.insert(
            "w1c".into(),
            json!({ "tasks": n, "concurrency": 100, "deliveries_per_s": per_s, "delivered": got.len(), "server_cpu_us_per_task": cpu_us, "driver_cpu_us_per_task": driver_us }),
        );
        rows.push((
            "W1 deliveries/s at concurrency 100".into(),
            format!("{per_s:.0} (CPU per task {cpu_us:.0} µs, driver {driver_us:.0})"),
            "≥ 20,000".into(),
        ));
    }
    for (name, workload) in [("w1k", 0), ("w8", 1), ("w9", 2)] {
        if !options.runs(name) {
            continue;
        }
        let (figures, mut lines) = match workload {
            0 => keys::w1_keys(&server, &sink, options.quick).await?,
            1 => keys::w8(&server, &sink, options.quick).await?,
            _ => keys::w9(&server, &sink, options.quick).await?,
        };
        results.insert(name.into(), figures);
        rows.append(&mut lines);
    }
    if options.runs("w7") {
        // W7: gate accuracy across rates and bursts, burst 1 (the default,
        // strictly smooth) first; about five seconds of tasks each, 2,000 at
        // 200/s as the issue measured.
        let sweep = w7(&server, &sink, options.quick, "w7", &mut rows).await?;
        results.insert("w7".into(), json!(sweep));
    }
    if options.runs("w7d") {
        // W7d: the same beside a neighbour that keeps the disk busy, so
        // some commits take 100 ms and more, as on a shared machine.
        let neighbour = DiskNeighbour::start(&temp.join("neighbour"))?;
        let sweep = w7(&server, &sink, options.quick, "w7d", &mut rows).await;
        let disk = neighbour.stop();
        let ms = |key: &str| disk[key].as_f64().unwrap_or(0.0);
        rows.push((
            "W7d the disk beside it: 4 KiB sync p50 / p99 / max".into(),
            format!(
                "{:.2} / {:.1} / {:.0} ms, {} over 50 ms",
                ms("sync_p50_ms"),
                ms("sync_p99_ms"),
                ms("sync_max_ms"),
                disk["syncs_over_50ms"]
            ),
            String::new(),
        ));
        results.insert("w7d".into(), json!({ "disk": disk, "sweep": sweep? }));
    }
    if options.runs("w10") {
        // W10: an endpoint that allows 1,000 requests per 10 s window and
        // says so in its headers; a gate configured far above it, with a
        // burst of 100 and with burst 1 (the default).
        let (limit, window_s, n) = if options.quick {
            (100u64, 3u64, 500usize)
        } else {
            (1_000, 10, 5_000)
        };
        let mut sweep = Vec::new();
        for burst in [100u32, 1] {
            let (name, path) = if burst == 1 {
                ("w10-b1", "/w10-b1")
            } else {
                ("w10", "/w10")
            };
            if let Ok(mut quotas) = sink.state.quotas.lock() {
                quotas.insert(
                    path.into(),
                    Quota::new(limit, Duration::from_secs(window_s)),
                );
            }
            server
                .gate(name, json!({ "rate": "10000/s", "burst": burst, "concurrency": 100, "allowed_hosts": [host], "recovery": { "start": 1.0 }, "circuit": null, "retry": { "max_attempts": 100 } }))
                .await?;
            server
                .create(
                    (0..n).map(|_| task(name, &url(path), None)).collect(),
                    10_000,
                    1,
                )
                .await?;
            let windows = (n as u64).div_ceil(limit);
            let within = Duration::from_secs(60 + 3 * windows * window_s);
            let got = sink.wait(path, n, within).await;
            let (refused, busiest) = sink
                .state
                .quotas
                .lock()
                .ok()
                .and_then(|q| {
                    q.get(path)
                        .map(|q| (q.refused, q.counts.values().copied().max().unwrap_or(0)))
                })
                .unwrap_or_default();
            let first = got.iter().map(|a| a.wall_ms).min().unwrap_or(0);
            let last = got.iter().map(|a| a.wall_ms).max().unwrap_or(0);
            let makespan_s = (last - first) as f64 / 1_000.0;
            // Ideal: the whole quota of each window from the first arrival on,
            // the last window's share sent the moment it opens.
            let window_ms = window_s * 1_000;
            let ideal_s = (((first / window_ms) + windows - 1) * window_ms).saturating_sub(first)
                as f64
                / 1_000.0;
            sweep.push(json!({ "burst": burst, "tasks": n, "limit": limit, "window_s": window_s, "requests": got.len(), "refused_429": refused, "busiest_window": busiest, "makespan_s": makespan_s, "ideal_makespan_s": ideal_s }));
            rows.push((
                format!("W10 quota {limit} per {window_s} s, {n} tasks, burst {burst}: 429s, busiest window"),
                format!("{refused} ({} requests), {busiest}", got.len()),
                format!("0, ≤ {limit}"),
            ));
            rows.push((
                format!("W10 makespan, burst {burst} (ideal)"),
                format!("{makespan_s:.1} s ({ideal_s:.1} s)"),
                String::new(),
            ));
        }
        results.insert("w10".into(), json!(sweep));
    }
    if options.runs("w11") {
        // W11: an endpoint whose p50 latency doubles past 40 requests held
        // and that fails past 60: fixed concurrency settings against the
        // adaptive search.
        let n = if options.quick { 4_000 } else { 12_000 };
        let mut sweep = Vec::new();
        for setting in ["20", "40", "60", "100", "adaptive", "adaptive-b1"] {
            let name = format!("w11-{setting}");
            let path = format!("/knee-{setting}");
            let mut gate = json!({ "rate": "100000/s", "burst": 100, "allowed_hosts": [host], "recovery": { "start": 1.0 }, "circuit": null, "retry": { "max_attempts": 100, "backoff": { "initial": "100ms", "max": "1s" } } });
            if setting.starts_with("adaptive") {
                gate["concurrency"] = json!(10);
                gate["adaptive"] = json!({ "min": 1, "max": 200 });
                if setting == "adaptive-b1" {
                    gate["burst"] = json!(1);
                }
            } else {
                gate["concurrency"] = json!(setting.parse::<u32>()?);
            }
            server.gate(&name, gate).await?;
            server
                .create(
                    (0..n).map(|_| task(&name, &url(&path), None)).collect(),
                    10_000,
                    1,
                )
                .await?;
            // The limit the gate runs at, sampled while it works.
            let mut limits = Vec::new();
            let began = clock::instant();
            let done = loop {
                let got = sink.arrivals(&path);
                let ok = got
                    .iter()
                    .map(|a| a.task.as_str())
                    .collect::<HashSet<_>>()
                    .len();
                let errors = sink
                    .state
                    .knees
                    .lock()
                    .map_or(0, |k| k.get(&path).map_or(0, |k| k.1));
                if got.len() as u64 >= n as u64 + errors && ok >= n
                    || began.elapsed() > Duration::from_secs(300)
                {
                    break got;
                }
                if let Ok(view) = server.api.gate(&name).await {
                    limits.push(view.concurrency);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            };
            let errors = sink
                .state
                .knees
                .lock()
                .map_or(0, |k| k.get(&path).map_or(0, |k| k.1));
            let first = done.iter().map(|a| a.at).min().unwrap_or(began);
            let last = done.iter().map(|a| a.at).max().unwrap_or(began);
            let per_s = (done.len() as u64 - errors) as f64
                / last.duration_since(first).as_secs_f64().max(1e-3);
            let settled = limits[limits.len() / 2..]
                .iter()
                .map(|&l| f64::from(l))
                .sum::<f64>()
                / (limits.len() - limits.len() / 2).max(1) as f64;
            sweep.push(json!({ "concurrency": setting, "tasks": n, "succeeded_per_s": per_s, "errors_500": errors, "settled_limit": settled }));
            rows.push((
                format!("W11 knee at 40 (errors past 60), concurrency {setting}"),
                format!("{per_s:.0}/s, {errors} errors, limit {settled:.1}"),
                if setting.starts_with("adaptive") {
                    "near 40 (30–50), few errors".into()
                } else {
                    String::new()
                },
            ));
        }
        results.insert("w11".into(), json!(sweep));
    }
    if options.runs("w12") {
        let (figures, mut lines) = replay::w12(
            &temp.join("replay"),
            options.store.as_deref(),
            &sink,
            options.quick,
        )
        .await?;
        results.insert("w12".into(), figures);
        rows.append(&mut lines);
    }
    if options.runs("w2") {
        // W2: gate accuracy at 500/s.
        let n2 = if options.quick { 2_500 } else { 10_000 };
        let burst2 = 10;
        server
        .gate("w2", json!({ "rate": "500/s", "burst": burst2, "concurrency": 100, "allowed_hosts": [host], "recovery": { "start": 1.0 } }))
        .await?;
        server
            .create(
                (0..n2).map(|_| task("w2", &url("/w2"), None)).collect(),
                10_000,
                1,
            )
            .await?;
        let got = sink.wait("/w2", n2, Duration::from_secs(120)).await;
        let times: Vec<Instant> = got.iter().map(|a| a.at).collect();
        let measured = rate_after_burst(&times, f64::from(burst2));
        let error = (measured - 500.0).abs() / 500.0 * 100.0;
        let w1s = max_in_window(&times, Duration::from_secs(1));
        let w100 = max_in_window(&times, Duration::from_millis(100));
        results.insert("w2".into(), json!({ "tasks": n2, "rate": 500, "burst": burst2, "measured_per_s": measured, "mean_error_pct": error, "max_1s": w1s, "max_100ms": w100 }));
        rows.push((
            "W2 mean rate error".into(),
            format!("{error:.2}% ({measured:.1}/s)"),
            "≤ 1%".into(),
        ));
        rows.push((
            "W2 most in any 1 s / 100 ms".into(),
            format!("{w1s} / {w100}"),
            format!("≤ {}", 500 + burst2),
        ));
    }
    if options.runs("w3") {
        // W3: endpoint outage of 20 s at a 200/s gate.
        let n3 = if options.quick { 2_000 } else { 5_000 };
        let outage = Duration::from_secs(if options.quick { 10 } else { 20 });
        server
        .gate(
            "w3",
            json!({ "rate": "200/s", "burst": 10, "concurrency": 50, "allowed_hosts": [host],
                    "recovery": { "start": 0.1, "over": "10s" },
                    "circuit": { "failures": 5, "cooldown": "5s", "max_cooldown": "20s" },
                    "retry": { "max_attempts": 100, "backoff": { "initial": "1s", "max": "30s" } } }),
        )
        .await?;
        let down_from = clock::instant();
        sink.state
            .down_until
            .lock()
            .map_err(|_| anyhow::anyhow!("lock"))?
            .insert("/w3".into(), down_from + outage);
        let now = clock::now().as_ms();
        let spread = outage.as_millis() as u64;
        let tasks = (0..n3)
            .map(|i| task("w3", &url("/w3"), Some(now + spread * i as u64 / n3 as u64)))
            .collect();
        server.create(tasks, 10_000, 1).await?;
        let got = sink.wait("/w3", n3, Duration::from_secs(300)).await;
        let during = got.iter().filter(|a| a.at < down_from + outage).count();
        let after: Vec<Instant> = got
            .iter()
            .filter(|a| a.at >= down_from + outage)
            .map(|a| a.at)
            .collect();
        let peak = max_in_window(&after, Duration::from_secs(1));
        let drain = after
            .iter()
            .max()
            .map_or(0.0, |l| l.duration_since(down_from + outage).as_secs_f64());
        let delivered: HashSet<&str> = got
            .iter()
            .filter(|a| a.at >= down_from + outage)
            .map(|a| a.task.as_str())
            .collect();
        let lost = n3 - delivered.len();
        results.insert("w3".into(), json!({ "tasks": n3, "outage_s": outage.as_secs(), "hits_while_down": during, "hits_while_down_per_s": during as f64 / outage.as_secs_f64(), "peak_1s_after": peak, "drain_s": drain, "lost": lost }));
        rows.push((
            "W3 hits on the dead endpoint".into(),
            format!(
                "{during} in {} s ({:.2}/s)",
                outage.as_secs(),
                during as f64 / outage.as_secs_f64()
            ),
            "one probe per cooldown".into(),
        ));
        rows.push((
            "W3 peak 1 s after recovery".into(),
            format!("{peak}"),
            "≤ ramp, ≤ 210".into(),
        ));
        rows.push((
            "W3 drain time / lost".into(),
            format!("{drain:.1} s / {lost}"),
            "0 lost".into(),
        ));
    }
    if options.runs("w4") {
        // W4: lateness of 5,000 tasks due evenly over 10 s.
        let n4 = 5_000;
        server.gate("w4", unlimited(&sink)).await?;
        let start4 = clock::now().as_ms() + 2_000;
        let tasks = (0..n4)
            .map(|i| {
                task(
                    "w4",
                    &url("/w4"),
                    Some(start4 + 10_000 * i as u64 / n4 as u64),
                )
            })
            .collect();
        server.create(tasks, 10_000, 1).await?;
        let got = sink.wait("/w4", n4, Duration::from_secs(60)).await;
        let mut late: Vec<f64> = got
            .iter()
            .filter_map(|a| a.scheduled_ms.map(|s| a.wall_ms as f64 - s as f64))
            .collect();
        late.sort_by(f64::total_cmp);
        let (p50, p99, max) = (
            percentile(&late, 0.5),
            percentile(&late, 0.99),
            late.last().copied().unwrap_or(0.0),
        );
        results.insert(
            "w4".into(),
            json!({ "tasks": n4, "p50_ms": p50, "p99_ms": p99, "max_ms": max }),
        );
        rows.push((
            "W4 lateness p50 / p99 / max".into(),
            format!("{p50:.0} / {p99:.0} / {max:.0} ms"),
            "p99 ≤ 5 ms".into(),
        ));
    }
    if options.runs("w5") {
        // W5a: many pending tasks over a day, then a kill -9 and restart.
        let n5 = options.scale_tasks;
        server.gate("w5", unlimited(&sink)).await?;
        let day_start = clock::now().as_ms() + 3_600_000;
        let mut create_rates = Vec::new();
        let step = 500_000.min(n5.max(1));
        let mut made = 0;
        while made < n5 {
            let this = step.min(n5 - made);
            let tasks: Vec<Value> = (0..this)
                .map(|i| {
                    task(
                        "w5",
                        &url("/w5"),
                        Some(day_start + (made + i) * 86_400_000 / n5.max(1)),
                    )
                })
                .collect();
            let took = server.create(tasks, 10_000, 2).await?;
            made += this;
            create_rates
                .push(json!({ "pending": made, "create_per_s": this as f64 / took.as_secs_f64() }));
            eprintln!(
                "w5: {made} pending, {:.0} creates/s",
                this as f64 / took.as_secs_f64()
            );
        }
        let rss_pending = server.rss_mb();
        let file_mb = server.file_mb();
        // One attempt in flight at a slow endpoint, then kill -9: after the restart
        // it is retried at once, which times the restart to the first dispatch.
        server.gate("probe", json!({ "rate": "100/s", "concurrency": 1, "allowed_hosts": [host], "recovery": { "start": 1.0 } })).await?;
        server
            .create(vec![task("probe", &url("/slow"), None)], 1, 1)
            .await?;
        sink.wait("/slow", 1, Duration::from_secs(30)).await;
        server.kill();
        let restarted = clock::instant();
        let port = server.port;
        let dir = server.dir.clone();
        let server5 = Server::spawn(&dir, port, options.store.as_deref()).await?;
        let ready = restarted.elapsed();
        let deadline = clock::instant() + Duration::from_secs(60);
        let mut first_dispatch = f64::NAN;
        while clock::instant() < deadline {
            if let Some(t) = sink
                .arrivals("/slow")
                .iter()
                .map(|a| a.at)
                .filter(|t| *t > restarted)
                .min()
            {
                first_dispatch = t.duration_since(restarted).as_secs_f64();
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let rss_restart = server5.rss_mb();
        // What a backup of this data set costs dispatch: a gate at the settings
        // users pick (2,000/s, burst 1, concurrency 100) drains for 5 s with no
        // backup, then while one runs.
        server5.gate("w5d", json!({ "rate": "2000/s", "burst": 1, "concurrency": 100, "allowed_hosts": [host], "recovery": { "start": 1.0 }, "circuit": null })).await?;
        let feed: Vec<Value> = (0..if options.quick { 40_000 } else { 400_000 })
            .map(|_| task("w5d", &url("/w5d"), None))
            .collect();
        server5.create(feed, 10_000, 2).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let quiet = clock::instant();
        tokio::time::sleep(Duration::from_secs(5)).await;
        let busy = clock::instant();
        let (backup_took, backup_bytes, backup_rss) = server5.backup().await?;
        let done = clock::instant();
        let arrived = sink.arrivals("/w5d");
        let rate_in = |from: Instant, to: Instant| {
            arrived.iter().filter(|a| a.at >= from && a.at < to).count() as f64
                / to.duration_since(from).as_secs_f64()
        };
        let (before, during) = (rate_in(quiet, busy), rate_in(busy, done));
        let backup_mb = backup_bytes as f64 / 1e6;
        results.insert("w5".into(), json!({ "pending": n5, "rss_mb": rss_pending, "file_mb": file_mb, "create_rates": create_rates, "restart_ready_s": ready.as_secs_f64(), "restart_first_dispatch_s": first_dispatch, "rss_after_restart_mb": rss_restart, "backup_s": backup_took.as_secs_f64(), "backup_mb": backup_mb, "backup_peak_rss_mb": backup_rss, "dispatch_per_s_before_backup": before, "dispatch_per_s_during_backup": during }));
        rows.push((
            format!("W5 backup of {n5} pending"),
            format!(
                "{:.1} s, {backup_mb:.0} MB; a 2,000/s gate dispatched {before:.0}/s before, {during:.0}/s during",
                backup_took.as_secs_f64()
            ),
            "".into(),
        ));
        rows.push((
            format!("W5 RSS with {n5} pending"),
            format!("{rss_pending:.0} MB (after restart {rss_restart:.0} MB)"),
            "≤ 300 MB".into(),
        ));
        rows.push(("W5 data file".into(), format!("{file_mb:.0} MB"), "".into()));
        rows.push((
            "W5 restart to first dispatch".into(),
            format!(
                "{first_dispatch:.2} s (ready in {:.2} s)",
                ready.as_secs_f64()
            ),
            "≤ 2 s".into(),
        ));
        drop(server5);
    }
    if options.runs("w5b") {
        // W5b: many gates; a 500/s gate keeps its accuracy among them.
        let mut server =
            Server::spawn(&temp.join("gates"), free_port()?, options.store.as_deref()).await?;
        let gates = options.gates;
        let mut set = tokio::task::JoinSet::new();
        for chunk in (0..gates)
            .collect::<Vec<_>>()
            .chunks(((gates / 8).max(1)) as usize)
        {
            let chunk = chunk.to_vec();
            let api = server.api.clone();
            let host = host.clone();
            set.spawn(async move {
                for g in chunk {
                    let body = json!({ "rate": "1/m", "allowed_hosts": [host] });
                    api.put_gate(&format!("g{g}"), &body).await?;
                }
                Ok::<_, crate::client::ClientError>(())
            });
        }
        while let Some(r) = set.join_next().await {
            r??;
        }
        let far = clock::now().as_ms() + 3_600_000;
        let idle: Vec<Value> = (0..gates)
            .map(|g| task(&format!("g{g}"), &url("/idle"), Some(far + g)))
            .collect();
        server.create(idle, 10_000, 2).await?;
        let rss_gates = server.rss_mb();
        server
        .gate("w5b", json!({ "rate": "500/s", "burst": 10, "concurrency": 100, "allowed_hosts": [host], "recovery": { "start": 1.0 } }))
        .await?;
        server
            .create(
                (0..2_500)
                    .map(|_| task("w5b", &url("/w5b"), None))
                    .collect(),
                10_000,
                1,
            )
            .await?;
        let got = sink.wait("/w5b", 2_500, Duration::from_secs(60)).await;
        let times: Vec<Instant> = got.iter().map(|a| a.at).collect();
        let measured = rate_after_burst(&times, 10.0);
        results.insert("w5b".into(), json!({ "gates": gates, "rss_mb": rss_gates, "busy_gate_per_s": measured, "max_1s": max_in_window(&times, Duration::from_secs(1)) }));
        rows.push((
            format!("W5 {gates} gates: RSS"),
            format!("{rss_gates:.0} MB"),
            "".into(),
        ));
        rows.push((
            "W5 500/s gate among them".into(),
            format!(
                "{measured:.1}/s, max 1 s {}",
                max_in_window(&times, Duration::from_secs(1))
            ),
            "≈ 500/s".into(),
        ));
        server.kill();
        drop(server);
    }
    for lang in &plugins::LANGUAGES {
        if options.runs(lang.workload) {
            plugins::w6(lang, &options, &temp, &mut results, &mut rows).await?;
        }
    }
    if options.runs("w7c")
        && let Some(store) = options.store.as_deref()
    {
        let (figures, mut lines) = cluster(&mut server, store, &sink, &temp, options.quick).await?;
        results.insert("w7c".into(), figures);
        rows.append(&mut lines);
    }
    let _ = std::fs::remove_dir_all(&temp);
    let machine = format!(
        "{} cores, {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(
                |c| c.lines().find(|l| l.starts_with("model name")).map(|l| l
                    .split(':')
                    .nth(1)
                    .unwrap_or("")
                    .trim()
                    .to_string())
            )
            .unwrap_or_default()
    );
    let store = if options.store.is_some() {
        "PostgreSQL (--store)"
    } else {
        "redb"
    };
    results.insert("machine".into(), json!(machine));
    results.insert("store".into(), json!(store));
    results.insert("at".into(), json!(clock::now().rfc3339()));
    results.insert("steal_pct".into(), rows.steal());
    std::fs::write(
        &options.out,
        serde_json::to_string_pretty(&Value::Object(results))?,
    )?;
    rows.print();
    println!(
        "\nmachine: {machine}; store: {store}\nJSON: {}",
        options.out.display()
    );
    Ok(())
}

/// The W7 sweep (`name`: w7, or w7d beside a disk neighbour): one gate per
/// rate and burst, about five seconds of due tasks each; the mean rate after
/// the first burst and the most arrivals in any 1 s and 100 ms window.
async fn w7(
    server: &Server,
    sink: &Sink,
    quick: bool,
    name: &str,
    rows: &mut Table,
) -> anyhow::Result<Vec<Value>> {
    let host = sink.addr.to_string();
    let label = name.to_uppercase();
    let mut sweep = Vec::new();
    for (rate, concurrency) in [
        (50u32, 50u32),
        (200, 50),
        (500, 100),
        (1_000, 100),
        (5_000, 100),
    ] {
        for burst in [1u32, 50] {
            let n = if rate == 200 {
                2_000
            } else {
                (rate * 5).max(250)
            } as usize;
            let n = if quick { n / 2 } else { n };
            let gate = format!("{name}-{rate}-{burst}");
            let url = format!("http://{host}/{gate}");
            server
                .gate(&gate, json!({ "rate": format!("{rate}/s"), "burst": burst, "concurrency": concurrency, "allowed_hosts": [host], "recovery": { "start": 1.0 }, "circuit": null }))
                .await?;
            server
                .create((0..n).map(|_| task(&gate, &url, None)).collect(), 10_000, 1)
                .await?;
            let within = Duration::from_secs(u64::from(60 + 2 * n as u32 / rate));
            let got = sink.wait(&format!("/{gate}"), n, within).await;
            let times: Vec<Instant> = got.iter().map(|a| a.at).collect();
            let measured = rate_after_burst(&times, f64::from(burst));
            let error = (measured - f64::from(rate)) / f64::from(rate) * 100.0;
            let w1s = max_in_window(&times, Duration::from_secs(1));
            let w100 = max_in_window(&times, Duration::from_millis(100));
            let (b1s, b100) = (burst + rate, burst + rate / 10);
            sweep.push(json!({ "rate": rate, "burst": burst, "concurrency": concurrency, "tasks": n, "measured_per_s": measured, "error_pct": error, "max_1s": w1s, "max_100ms": w100, "bound_1s": b1s, "bound_100ms": b100 }));
            rows.push((
                format!("{label} {rate}/s burst {burst} (c {concurrency})"),
                format!("{measured:.1}/s ({error:+.2}%), {w1s} / {w100} in 1 s / 100 ms"),
                format!("±1%, ≤ {b1s} / {b100}"),
            ));
        }
    }
    Ok(sweep)
}

/// W7c: three nodes on one PostgreSQL database (the gates spread over
/// them by unit). Tasks created through the two others (each commits its
/// creates; the gate's owner hears of them), what each task costs the database and the nodes,
/// the lateness and the row writes per task of a steady flow through the owner and another node,
/// then `SIGTERM` of the owner of a busy 200/s gate and `kill -9` of its next
/// owner: how long the gate stood still each time, and whether the sink's
/// windows held across both handovers.
async fn cluster(
    main: &mut Server,
    store: &str,
    sink: &Sink,
    temp: &Path,
    quick: bool,
) -> anyhow::Result<(Value, Vec<(String, String, String)>)> {
    let host = sink.addr.to_string();
    let url = |p: &str| format!("http://{host}{p}");
    if main.child.try_wait()?.is_some() {
        // W5 stopped it: a fresh first node.
        *main = Server::spawn(&temp.join("node-a"), free_port()?, Some(store)).await?;
    }
    let mut others = [
        Server::spawn(&temp.join("node-b"), free_port()?, Some(store)).await?,
        Server::spawn(&temp.join("node-c"), free_port()?, Some(store)).await?,
    ];
    let n = if quick { 10_000 } else { 50_000 };
    let mut gate = unlimited(sink);
    gate["concurrency"] = json!(100);
    others[0].gate("w7c", gate).await?;
    // The writes an idle cluster makes (its leases' renewals), taken off
    // the counts at this rate (`FLUSHED`).
    tokio::time::sleep(FLUSHED).await;
    let idle_from = (pg_counters(store).await?, clock::instant());
    tokio::time::sleep(FLUSHED).await;
    let before = pg_counters(store).await?;
    let idle_per_s =
        (before.writes - idle_from.0.writes) as f64 / idle_from.1.elapsed().as_secs_f64().max(1e-3);
    let counted_from = clock::instant();
    let cpu_before: Vec<f64> = std::iter::once(main.cpu_s())
        .chain(others.iter().map(Server::cpu_s))
        .collect();
    let start = clock::instant();
    let tasks: Vec<Value> = (0..n).map(|_| task("w7c", &url("/w7c"), None)).collect();
    let (b_tasks, c_tasks) = tasks.split_at(n / 2);
    let (b, c) = tokio::join!(
        others[0].create(b_tasks.to_vec(), 1_000, 2),
        others[1].create(c_tasks.to_vec(), 1_000, 2)
    );
    let created_in = b?.max(c?);
    let got = sink.wait("/w7c", n, Duration::from_secs(300)).await;
    let last = got.iter().map(|a| a.at).max().unwrap_or(start);
    let times: Vec<Instant> = got.iter().map(|a| a.at).collect();
    let delivered_per_s = rate_after_burst(&times, 0.0);
    let end_to_end = got.len() as f64 / last.duration_since(start).as_secs_f64().max(1e-3);
    tokio::time::sleep(FLUSHED).await;
    let after = pg_counters(store).await?;
    let idle = idle_per_s * counted_from.elapsed().as_secs_f64();
    let cpu_ms: Vec<f64> = std::iter::once(main.cpu_s())
        .chain(others.iter().map(Server::cpu_s))
        .zip(&cpu_before)
        .map(|(after, before)| (after - before) * 1_000.0 / n as f64)
        .collect();
    let writes = ((after.writes - before.writes) as f64 - idle).max(0.0) / n as f64;
    let task_rows = (after.task_rows - before.task_rows) as f64 / n as f64;
    let commits = (after.commits - before.commits) as f64 / n as f64;

    // Lateness of a task due at once, created one by one through the
    // gate's owner and through another node: the other's also waits for
    // the owner to hear of it (`NOTIFY`).
    let owner_at = owner_address(&others[0], "w7c").await?;
    let (owner, standby) = if main.api.base() == owner_at {
        (&*main, &others[0])
    } else if others[0].api.base() == owner_at {
        (&others[0], &others[1])
    } else {
        (&others[1], &others[0])
    };
    let mut lateness = Vec::new();
    for (label, server) in [("owner", owner), ("other", standby)] {
        let path = format!("/w7l-{label}");
        for _ in 0..LATENESS_TASKS {
            server
                .create(vec![task("w7c", &url(&path), None)], 1, 1)
                .await?;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let got = sink
            .wait(&path, LATENESS_TASKS, Duration::from_secs(60))
            .await;
        let mut late: Vec<f64> = got
            .iter()
            .filter_map(|a| a.scheduled_ms.map(|s| a.wall_ms as f64 - s as f64))
            .collect();
        late.sort_by(f64::total_cmp);
        lateness.push((label, percentile(&late, 0.5), percentile(&late, 0.99)));
    }

    // Writes per task in a steady flow (the gate keeps up, nothing queues),
    // created in batches through the owner and through another node.
    let mut steady = Vec::new();
    for (label, server) in [("owner", owner), ("other", standby)] {
        let flow = Flow {
            gate: "w7c",
            host: &host,
            path: &format!("/w7s-{label}"),
            batch: STEADY_BATCH,
        };
        let (all, rows) = flow.writes(store, server, sink, idle_per_s).await?;
        steady.push((label, all, rows));
    }
    // The same at the setting most users pick: a smooth gate (200/s,
    // burst 1), fed at its rate through its owner, whose turns start a
    // task or two each.
    others[0]
        .gate(
            "w7b",
            json!({ "rate": "200/s", "burst": 1, "concurrency": 100, "allowed_hosts": [host] }),
        )
        .await?;
    let smooth_owner = owner_address(&others[0], "w7b").await?;
    let smooth_owner = std::iter::once(&*main)
        .chain(others.iter())
        .find(|s| s.api.base() == smooth_owner)
        .with_context(|| format!("W7c: no node answers at {smooth_owner:?}"))?;
    let flow = Flow {
        gate: "w7b",
        host: &host,
        path: "/w7b",
        batch: STEADY_BATCH / 5,
    };
    let smooth = flow.writes(store, smooth_owner, sink, idle_per_s).await?;

    // Failover: a busy gate at 200/s, then kill -9 of its owner.
    others[0]
        .gate(
            "w7f",
            json!({ "rate": "200/s", "burst": 1, "concurrency": 50, "allowed_hosts": [host], "recovery": { "start": 0.5, "over": "2s" }, "circuit": null }),
        )
        .await?;
    let total = if quick { 3_000 } else { 6_000 };
    let feed: Vec<Value> = (0..total)
        .map(|_| task("w7f", &url("/w7f"), None))
        .collect();
    others[0].create(feed, 1_000, 1).await?;
    sink.wait("/w7f", 600, Duration::from_secs(60)).await;
    // First a deploy's stop: SIGTERM of the owner, which drains the gate
    // and hands it over; then kill -9 of the next owner.
    let mut nodes: Vec<&mut Server> = std::iter::once(main).chain(others.iter_mut()).collect();
    let owner = owner_index(&nodes, "w7f").await?;
    let termed = clock::instant();
    nodes[owner].terminate().await?;
    nodes.remove(owner);
    let got = sink.wait("/w7f", 1_200, Duration::from_secs(60)).await;
    let after_term = (got.iter().map(|a| a.at)).filter(|t| *t >= termed);
    let handover = longest_gap_s(std::iter::once(termed).chain(after_term));
    let owner = owner_index(&nodes, "w7f").await?;
    let killed = clock::instant();
    nodes[owner].kill();
    let got = sink.wait("/w7f", total, Duration::from_secs(120)).await;
    // The killed process is gone once `kill` returns; what arrives 100 ms
    // later was sent by the new owner. (The attempts the old owner had in
    // flight come last: they are held until their timeout, 30 s here.)
    let failover = got
        .iter()
        .map(|a| a.at)
        .filter(|t| *t >= killed + Duration::from_millis(100))
        .min()
        .map_or(f64::NAN, |t| t.duration_since(killed).as_secs_f64());
    let all: Vec<Instant> = got.iter().map(|a| a.at).collect();
    let peak = max_in_window(&all, Duration::from_secs(1));
    let distinct = got
        .iter()
        .map(|a| a.task.as_str())
        .collect::<HashSet<_>>()
        .len();
    let figures = json!({
        "nodes": 3, "tasks": n, "create_per_s_through_standbys": n as f64 / created_in.as_secs_f64(),
        "deliveries_per_s": delivered_per_s, "end_to_end_per_s": end_to_end,
        "row_writes_per_task": writes, "task_row_writes_per_task": task_rows,
        "idle_row_writes_per_s": idle_per_s,
        "transactions_per_task": commits,
        "cpu_ms_per_task_by_node": cpu_ms,
        "handover_still_s": handover,
        "failover_s": failover, "failover_peak_1s": peak, "failover_bound_1s": 201,
        "failover_delivered": distinct, "failover_tasks": total,
        "steady_row_writes_per_task": steady.iter().map(|(via, all, rows)| json!({ "via": via, "row_writes": all, "task_row_writes": rows, "per_s": STEADY_BATCH * 10 })).collect::<Vec<_>>(),
        "smooth_row_writes_per_task": { "gate": "200/s, burst 1, concurrency 100", "via": "owner", "row_writes": smooth.0, "task_row_writes": smooth.1, "per_s": STEADY_BATCH * 2 },
        "lateness_ms": lateness.iter().map(|(via, p50, p99)| json!({ "via": via, "p50": p50, "p99": p99 })).collect::<Vec<_>>(),
    });
    let lines = vec![
        (
            "W7c 3 nodes: creates/s via two nodes".into(),
            format!(
                "{:.0} (deliveries {delivered_per_s:.0}/s)",
                n as f64 / created_in.as_secs_f64()
            ),
            "".into(),
        ),
        (
            "W7c per task in PostgreSQL".into(),
            format!(
                "{writes:.1} row writes ({task_rows:.1} of task rows), {commits:.2} transactions"
            ),
            "≤ 2 writes".into(),
        ),
        (
            format!(
                "W7c steady flow ({}/s in batches of {STEADY_BATCH}), row writes per task via owner; via another node",
                STEADY_BATCH * 10
            ),
            steady
                .iter()
                .map(|(_, all, rows)| format!("{all:.1} ({rows:.1} of task rows)"))
                .collect::<Vec<_>>()
                .join("; "),
            "≤ 2 writes".into(),
        ),
        (
            "W7c smooth gate (200/s, burst 1) fed at its rate via its owner, row writes per task"
                .into(),
            format!("{:.1} ({:.1} of task rows)", smooth.0, smooth.1),
            "≤ 2 writes".into(),
        ),
        (
            "W7c node CPU per task (owner, b, c)".into(),
            cpu_ms
                .iter()
                .map(|ms| format!("{ms:.3}"))
                .collect::<Vec<_>>()
                .join(" / ")
                + " ms",
            "".into(),
        ),
        (
            "W7c lateness p50 / p99, created via owner; via another node".into(),
            lateness
                .iter()
                .map(|(_, p50, p99)| format!("{p50:.0} / {p99:.0} ms"))
                .collect::<Vec<_>>()
                .join("; "),
            "".into(),
        ),
        (
            "W7c handover after SIGTERM: longest still".into(),
            format!("{handover:.2} s"),
            "".into(),
        ),
        (
            "W7c failover after kill -9".into(),
            format!(
                "{failover:.1} s; peak 1 s window {peak} (bound 201); {distinct}/{total} delivered"
            ),
            "≤ 10 s".into(),
        ),
    ];
    Ok((figures, lines))
}

/// The longest time between two of `times` (in any order), in seconds.
fn longest_gap_s(times: impl IntoIterator<Item = Instant>) -> f64 {
    let mut times: Vec<Instant> = times.into_iter().collect();
    times.sort_unstable();
    (times.windows(2))
        .map(|w| w[1].duration_since(w[0]).as_secs_f64())
        .fold(0.0, f64::max)
}

/// Tasks created one by one for W7c's lateness, through each node.
const LATENESS_TASKS: usize = 200;

/// W7c's steady flow: batches of this many tasks, 100 ms apart, through
/// each node: 1,000 tasks/s, which the gate (concurrency 100) keeps up with.
const STEADY_BATCH: usize = 100;
const STEADY_BATCHES: usize = 50;

/// PostgreSQL's statistics reach its views as each connection flushes
/// them: at most a second apart while it works, 10 s after it idles (a
/// standby's writer, once its creates are in). So W7c reads its counts 11 s
/// after the cluster settles, before and after each run, and takes off
/// what an idle cluster writes meanwhile (its leases' renewals) at the rate
/// measured before the first.
const FLUSHED: Duration = Duration::from_secs(11);

/// A steady flow for W7c: `STEADY_BATCHES` batches of `batch` tasks to
/// `path` at the sink (`host`), 100 ms apart.
struct Flow<'a> {
    gate: &'a str,
    host: &'a str,
    path: &'a str,
    batch: usize,
}

impl Flow<'_> {
    /// The row writes per task the flow costs, all tables and the task
    /// rows, created through `server`: counted once PostgreSQL's statistics
    /// have settled before and after, less what an idle cluster writes
    /// meanwhile (`idle_per_s`).
    async fn writes(
        &self,
        store: &str,
        server: &Server,
        sink: &Sink,
        idle_per_s: f64,
    ) -> anyhow::Result<(f64, f64)> {
        tokio::time::sleep(FLUSHED).await;
        let (from, at) = (pg_counters(store).await?, clock::instant());
        let url = format!("http://{}{}", self.host, self.path);
        for _ in 0..STEADY_BATCHES {
            let batch = (0..self.batch)
                .map(|_| task(self.gate, &url, None))
                .collect();
            server.create(batch, self.batch, 1).await?;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let tasks = self.batch * STEADY_BATCHES;
        let got = sink.wait(self.path, tasks, Duration::from_secs(60)).await;
        if got.len() < tasks {
            bail!("W7c steady: {} of {tasks} delivered", got.len());
        }
        tokio::time::sleep(FLUSHED).await;
        let to = pg_counters(store).await?;
        let idle = idle_per_s * at.elapsed().as_secs_f64();
        Ok((
            ((to.writes - from.writes) as f64 - idle).max(0.0) / tasks as f64,
            (to.task_rows - from.task_rows) as f64 / tasks as f64,
        ))
    }
}

/// Which of `nodes` owns `gate`, as the first of them sees it.
async fn owner_index(nodes: &[&mut Server], gate: &str) -> anyhow::Result<usize> {
    let Some(asked) = nodes.first() else {
        bail!("W7c: no node left to ask");
    };
    let address = owner_address(asked, gate).await?;
    (nodes.iter())
        .position(|s| s.api.base() == address)
        .with_context(|| format!("W7c: no node answers at the owner's address {address:?}"))
}

/// The address of the node that owns `gate`, as `asked` sees it.
async fn owner_address(asked: &Server, gate: &str) -> anyhow::Result<String> {
    let cluster = asked.get("/v1/cluster").await?;
    let unit = u64::from(crate::core::units::unit_of(gate, crate::core::units::UNITS));
    Ok(cluster["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| {
            n["units"]
                .as_array()
                .is_some_and(|units| units.iter().any(|u| u.as_u64() == Some(unit)))
        })
        .and_then(|n| n["address"].as_str())
        .unwrap_or("")
        .to_string())
}

/// Rows written to Sluice's tables (and to `tasks` alone), and
/// transactions committed, as PostgreSQL's statistics count them.
struct PgCounters {
    writes: i64,
    task_rows: i64,
    commits: i64,
}

async fn pg_counters(store: &str) -> anyhow::Result<PgCounters> {
    let (client, connection) = tokio_postgres::connect(store, tokio_postgres::NoTls)
        .await
        .context("connecting to PostgreSQL for its statistics")?;
    let driver = tokio::spawn(connection);
    let row = client
        .query_one(
            "SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0)::bigint, \
             coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del) FILTER (WHERE relname = 'tasks'), \
             0)::bigint \
             FROM pg_stat_user_tables WHERE schemaname = 'sluice'",
            &[],
        )
        .await?;
    let (writes, task_rows) = (row.get(0), row.get(1));
    let commits: i64 = client
        .query_one(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
            &[],
        )
        .await?
        .get(0);
    drop(client);
    let _ = driver.await;
    Ok(PgCounters {
        writes,
        task_rows,
        commits,
    })
}
