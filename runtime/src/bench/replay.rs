//! W12: a paced replay of a million failed tasks while another gate
//! dispatches. The walk must never hold up dispatch, and what it replays
//! must go out at its gate's pace.

use std::path::Path;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use super::harness::*;
use crate::clock;

type Rows = Vec<(String, String, String)>;

/// Arrivals per second over `[from, to)`, and the longest gap between two
/// arrivals inside it (a hold-up shows as a gap).
fn rate_and_gap(times: &[Instant], from: Instant, to: Instant) -> (f64, f64) {
    let inside: Vec<Instant> = times
        .iter()
        .copied()
        .filter(|&t| t >= from && t < to)
        .collect();
    let span = to.saturating_duration_since(from).as_secs_f64().max(1e-3);
    let count = inside.len() as f64;
    (count / span, super::longest_gap_s(inside) * 1_000.0)
}

pub(super) async fn w12(
    dir: &Path,
    store: Option<&str>,
    sink: &Sink,
    quick: bool,
) -> anyhow::Result<(Value, Rows)> {
    let n = if quick { 100_000 } else { 1_000_000 };
    let server = Server::spawn(dir, free_port()?, store).await?;
    let host = sink.addr.to_string();
    // The outage: every request to /w12 answers 503, and the gate tries once.
    if let Ok(mut down) = sink.state.down_until.lock() {
        down.insert("/w12".into(), clock::instant() + Duration::from_secs(3_600));
    }
    let outage_gate = |rate: &str, burst: u32, concurrency: u32| {
        json!({ "rate": rate, "burst": burst, "concurrency": concurrency,
                "allowed_hosts": [host], "recovery": { "start": 1.0 }, "circuit": null,
                "retry": { "max_attempts": 1 } })
    };
    server
        .gate("w12", outage_gate("100000/s", 1_000, 200))
        .await?;
    let url = format!("http://{host}/w12");
    let failing = clock::instant();
    server
        .create((0..n).map(|_| task("w12", &url, None)).collect(), 10_000, 2)
        .await?;
    let deadline = clock::instant() + Duration::from_secs(900);
    loop {
        let gate = server.get("/v1/gates/w12").await?;
        if gate["counters"]["failed"].as_u64().unwrap_or(0) >= n as u64 {
            break;
        }
        anyhow::ensure!(
            clock::instant() < deadline,
            "the outage did not fail every task"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let failed_in = failing.elapsed().as_secs_f64();
    if let Ok(mut down) = sink.state.down_until.lock() {
        down.remove("/w12");
    }
    let hits_before = sink.arrivals("/w12").len();
    // The endpoint is back; its gate at the pace people give one.
    server.gate("w12", outage_gate("500/s", 1, 50)).await?;
    // Another gate at the settings users pick, with a backlog that outlasts
    // the replay.
    let steady = if quick { 60_000 } else { 240_000 };
    server
        .gate(
            "w12s",
            json!({ "rate": "1000/s", "burst": 1, "concurrency": 100, "allowed_hosts": [host],
                    "recovery": { "start": 1.0 }, "circuit": null }),
        )
        .await?;
    let steady_url = format!("http://{host}/w12s");
    server
        .create(
            (0..steady)
                .map(|_| task("w12s", &steady_url, None))
                .collect(),
            10_000,
            1,
        )
        .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let baseline = clock::instant();
    tokio::time::sleep(Duration::from_secs(5)).await;

    let api = &server.api;
    let replay = |body: Value| async move {
        api.send(Method::POST, "/v1/tasks/replay", Some(&body))
            .await?
            .ok()
    };
    let asked = clock::instant();
    let dry = replay(json!({ "gate": "w12", "dry_run": true })).await?;
    let dry_run_s = asked.elapsed().as_secs_f64();
    let started = clock::instant();
    let job = replay(json!({ "gate": "w12" })).await?;
    let path = format!(
        "/v1/tasks/replay/{}",
        job["id"].as_str().unwrap_or_default()
    );
    let mut peak_rss = server.rss_mb();
    let job = loop {
        let job = server.get(&path).await?;
        peak_rss = peak_rss.max(server.rss_mb());
        if job["state"] != "running" {
            break job;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(900),
            "the replay did not end"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let ended = clock::instant();
    let walk_s = ended.duration_since(started).as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;

    let steady_times: Vec<Instant> = sink.arrivals("/w12s").iter().map(|a| a.at).collect();
    let (rate_before, gap_before) = rate_and_gap(&steady_times, baseline, asked);
    let (rate_during, gap_during) = rate_and_gap(&steady_times, started, ended);
    let mut replayed_times: Vec<Instant> = sink.arrivals("/w12")[hits_before..]
        .iter()
        .map(|a| a.at)
        .collect();
    replayed_times.sort();
    let replayed_1s = max_in_window(&replayed_times, Duration::from_secs(1));
    let replayed = job["replayed"].as_u64().unwrap_or(0);
    let figures = json!({
        "failed_tasks": n, "failed_in_s": failed_in, "dry_run_s": dry_run_s,
        "dry_run_count": dry["count"], "dry_run_eta_s": dry["eta_s"],
        "walk_s": walk_s, "replayed": replayed, "walked_per_s": replayed as f64 / walk_s,
        "steady_rate_before": rate_before, "steady_rate_during": rate_during,
        "steady_max_gap_ms_before": gap_before, "steady_max_gap_ms_during": gap_during,
        "replayed_gate_most_in_1s": replayed_1s, "peak_rss_mb": peak_rss,
    });
    let rows = vec![
        (
            format!("W12 replay of {n} failed tasks: walked in (per s)"),
            format!(
                "{walk_s:.1} s ({:.0}/s), {replayed} replayed",
                replayed as f64 / walk_s
            ),
            "bounded commits".into(),
        ),
        (
            "W12 dry run: time, count, ETA".into(),
            format!("{dry_run_s:.1} s, {}, {} s", dry["count"], dry["eta_s"]),
            String::new(),
        ),
        (
            "W12 a 1,000/s burst-1 gate before / during: rate, longest gap".into(),
            format!(
                "{rate_before:.0}/s, {gap_before:.0} ms / {rate_during:.0}/s, {gap_during:.0} ms"
            ),
            "unaffected".into(),
        ),
        (
            "W12 the replayed gate (500/s, burst 1): most in 1 s; peak RSS".into(),
            format!("{replayed_1s}; {peak_rss:.0} MB"),
            "≤ 501".into(),
        ),
    ];
    Ok((figures, rows))
}
