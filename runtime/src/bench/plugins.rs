//! W6: what a plugin costs, per language the SDKs serve. For each, a no-op
//! component (`tests/plugins/noop`, `tests/plugins/js/noop`,
//! `tests/plugins/python/noop`): its size, its compile time at upload, one
//! attempt's own cost in process (instantiate, call, drop), and plugin tasks
//! end to end on a fresh server.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use super::Options;
use super::harness::*;
use crate::clock;

/// One language's W6.
pub(super) struct Language {
    /// The workload's name for `--only`.
    pub(super) workload: &'static str,
    /// As the table names it.
    label: &'static str,
    /// The no-op component, `target/plugins/<file>.wasm`.
    file: &'static str,
    /// Attempts measured in process, and tasks end to end (full, quick).
    attempts: (usize, usize),
    tasks: (usize, usize),
    /// The targets, as the table shows them.
    attempt_target: &'static str,
    tasks_target: &'static str,
}

pub(super) const LANGUAGES: [Language; 3] = [
    Language {
        workload: "w6",
        label: "W6",
        file: "noop",
        attempts: (20_000, 2_000),
        tasks: (50_000, 10_000),
        attempt_target: "≤ 100 µs",
        tasks_target: "≥ 5,000",
    },
    Language {
        workload: "w6js",
        label: "W6 JavaScript",
        file: "noop-js",
        attempts: (2_000, 200),
        tasks: (10_000, 2_000),
        attempt_target: "≤ 2 ms p99",
        tasks_target: "≥ 1,000",
    },
    Language {
        workload: "w6py",
        label: "W6 Python",
        file: "noop-py",
        attempts: (2_000, 200),
        tasks: (10_000, 2_000),
        attempt_target: "≤ 2 ms p99",
        tasks_target: "≥ 1,000",
    },
];

pub(super) async fn w6(
    lang: &Language,
    options: &Options,
    temp: &Path,
    results: &mut serde_json::Map<String, Value>,
    rows: &mut super::table::Table,
) -> anyhow::Result<()> {
    let label = lang.label;
    // In process: one attempt's own cost.
    let wasm = plugin_component(lang.file)?;
    let size = wasm.len();
    let n = if options.quick {
        lang.attempts.1
    } else {
        lang.attempts.0
    };
    let (compile_s, mut micros) =
        plugin_attempts(wasm.clone(), n, Duration::from_secs(120)).await?;
    let mean = micros.iter().sum::<f64>() / micros.len().max(1) as f64;
    micros.sort_by(f64::total_cmp);
    let (p50, p99, max) = (
        percentile(&micros, 0.5),
        percentile(&micros, 0.99),
        micros.last().copied().unwrap_or(0.0),
    );
    rows.push((
        format!("{label} no-op component: size, compile"),
        format!(
            "{:.1} MiB, {compile_s:.1} s",
            size as f64 / (1 << 20) as f64
        ),
        "".into(),
    ));
    rows.push((
        format!("{label} no-op plugin attempt: mean / p99"),
        format!("{mean:.1} / {p99:.1} µs (p50 {p50:.1}, max {max:.0})"),
        lang.attempt_target.into(),
    ));

    // End to end, on a fresh server: from the first create to the last
    // success, with a gate that does not hold them back.
    let n = if options.quick {
        lang.tasks.1
    } else {
        lang.tasks.0
    };
    let server = Server::spawn(
        &temp.join(lang.workload),
        free_port()?,
        options.store.as_deref(),
    )
    .await?;
    let uploading = clock::instant();
    server.upload_plugin("noop", "0.1.0", wasm).await?;
    let upload_s = uploading.elapsed().as_secs_f64();
    server
        .gate(
            "w6",
            json!({ "rate": "100000/s", "burst": 1_000, "concurrency": 512,
                    "recovery": { "start": 1.0 }, "circuit": null }),
        )
        .await?;
    let tasks: Vec<Value> = (0..n)
        .map(|_| json!({ "gate": "w6", "plugin": { "name": "noop", "version": "0.1.0", "input": {} } }))
        .collect();
    let cpu_before = server.cpu_s();
    let started = clock::instant();
    let created_in = server.create(tasks, 10_000, 2).await?;
    let deadline = started + Duration::from_secs(300);
    let (mut succeeded, mut ended) = (0, 0);
    while ended < n as u64 && clock::instant() < deadline {
        let gate = server.get("/v1/gates/w6").await?;
        let count = |k: &str| gate["counters"][k].as_u64().unwrap_or(0);
        succeeded = count("succeeded");
        ended = succeeded + count("failed") + count("expired") + count("cancelled");
        if ended < n as u64 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let took = started.elapsed().as_secs_f64();
    let cpu_us = (server.cpu_s() - cpu_before) * 1e6 / (succeeded.max(1) as f64);
    let per_s = succeeded as f64 / took;
    let create_per_s = n as f64 / created_in.as_secs_f64();
    let rss_mb = server.rss_mb();
    results.insert(
        lang.workload.into(),
        json!({
            "component_bytes": size, "compile_s": compile_s, "upload_s": upload_s,
            "attempts": micros.len(), "attempt_mean_us": mean, "attempt_p50_us": p50,
            "attempt_p99_us": p99, "attempt_max_us": max,
            "tasks": n, "succeeded": succeeded, "ended": ended, "seconds": took,
            "tasks_per_s": per_s, "create_per_s": create_per_s, "server_cpu_us_per_task": cpu_us,
            "server_rss_mb": rss_mb,
        }),
    );
    rows.push((
        format!("{label} plugin tasks/s, end to end"),
        format!(
            "{per_s:.0} ({succeeded} of {n} in {took:.1} s, server CPU {cpu_us:.0} µs/task, upload {upload_s:.1} s, RSS {rss_mb:.0} MB)"
        ),
        lang.tasks_target.into(),
    ));
    Ok(())
}
