//! The workloads of keys (SPEC §1 "Keys"): W1 with keys in use, W8
//! fairness, W9 many keys.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use super::harness::*;
use crate::clock;

type Rows = Vec<(String, String, String)>;

fn keyed(gate: &str, url: &str, key: &str) -> Value {
    let mut t = task(gate, url, None);
    t["key"] = json!(key);
    t
}

/// Arrivals under `prefix` by path, each list in time order.
fn by_path(sink: &Sink, prefix: &str) -> BTreeMap<String, Vec<Instant>> {
    let mut out: BTreeMap<String, Vec<Instant>> = BTreeMap::new();
    if let Ok(arrivals) = sink.state.arrivals.lock() {
        for a in arrivals.iter().filter(|a| a.path.starts_with(prefix)) {
            out.entry(a.path.clone()).or_default().push(a.at);
        }
    }
    for times in out.values_mut() {
        times.sort();
    }
    out
}

/// Waits until `n` arrivals whose path passes `wanted` are in, or
/// `within` passed; returns how many are.
async fn wait_until(
    sink: &Sink,
    wanted: impl Fn(&str) -> bool,
    n: usize,
    within: Duration,
) -> usize {
    let start = clock::instant();
    loop {
        let got = sink
            .state
            .arrivals
            .lock()
            .map_or(0, |a| a.iter().filter(|a| wanted(&a.path)).count());
        if got >= n || start.elapsed() > within {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// W1 with keys in use: the same 100,000 immediate tasks through a gate
/// with no effective limit, spread over 1,000 keys.
pub(super) async fn w1_keys(
    server: &Server,
    sink: &Sink,
    quick: bool,
) -> anyhow::Result<(Value, Rows)> {
    let n = if quick { 20_000 } else { 100_000 };
    let host = sink.addr.to_string();
    server.gate("w1k", unlimited(sink)).await?;
    let url = format!("http://{host}/w1k");
    let tasks: Vec<Value> = (0..n)
        .map(|i| keyed("w1k", &url, &format!("k{}", i % 1_000)))
        .collect();
    server.create(tasks, 10_000, 2).await?;
    let got = sink.wait("/w1k", n, Duration::from_secs(300)).await;
    let times: Vec<Instant> = got.iter().map(|a| a.at).collect();
    let per_s = rate_after_burst(&times, 0.0);
    let rows = vec![(
        "W1 deliveries/s, 1,000 keys in use".into(),
        format!("{per_s:.0}"),
        "within 10 % of W1".into(),
    )];
    Ok((
        json!({ "tasks": n, "keys": 1_000, "deliveries_per_s": per_s, "delivered": got.len() }),
        rows,
    ))
}

/// W8 fairness: one gate at 500/s; key `a` holds 200,000 due tasks, then
/// keys b…k come with 100 tasks each. Each small key's wait from its
/// create to its first and last arrival, and the rate at the sink.
pub(super) async fn w8(server: &Server, sink: &Sink, quick: bool) -> anyhow::Result<(Value, Rows)> {
    let big = if quick { 20_000 } else { 200_000 };
    let host = sink.addr.to_string();
    server
        .gate(
            "w8",
            json!({ "rate": "500/s", "burst": 1, "concurrency": 100, "allowed_hosts": [host],
                    "recovery": { "start": 1.0 }, "circuit": null }),
        )
        .await?;
    let url = |key: &str| format!("http://{host}/w8/{key}");
    let backlog: Vec<Value> = (0..big).map(|_| keyed("w8", &url("a"), "a")).collect();
    server.create(backlog, 10_000, 2).await?;
    // Key a is flowing at the gate's rate.
    wait_until(sink, |p| p == "/w8/a", 500, Duration::from_secs(60)).await;
    let small: Vec<String> = ('b'..='k').map(String::from).collect();
    let tasks: Vec<Value> = small
        .iter()
        .flat_map(|k| (0..100).map(|_| keyed("w8", &url(k), k)))
        .collect();
    let came = clock::instant();
    server.create(tasks, 1_000, 1).await?;
    let created_in = came.elapsed();
    let small_path = |p: &str| p.starts_with("/w8/") && p != "/w8/a";
    wait_until(sink, small_path, small.len() * 100, Duration::from_secs(60)).await;
    let paths = by_path(sink, "/w8/");
    let mut firsts = Vec::new();
    let mut lasts = Vec::new();
    for k in &small {
        let times = paths.get(&format!("/w8/{k}")).cloned().unwrap_or_default();
        if let (Some(first), Some(last)) = (times.first(), times.last()) {
            firsts.push(first.saturating_duration_since(came).as_secs_f64() * 1_000.0);
            lasts.push(last.saturating_duration_since(came).as_secs_f64() * 1_000.0);
        }
    }
    firsts.sort_by(f64::total_cmp);
    lasts.sort_by(f64::total_cmp);
    let done_ms = lasts.last().copied().unwrap_or(f64::NAN);
    // The rate at the sink while the small keys ran, over every key.
    let end = came + Duration::from_secs_f64(done_ms.max(1.0) / 1_000.0);
    let all: Vec<Instant> = paths.values().flatten().copied().collect();
    let during = all.iter().filter(|&&t| t >= came && t <= end).count();
    let rate = during as f64 / (done_ms.max(1.0) / 1_000.0);
    let max_1s = max_in_window(&all, Duration::from_secs(1));
    // The rest of key a's backlog is cancelled with the gate.
    let _ = server
        .api
        .send(Method::DELETE, "/v1/gates/w8?force=true", None)
        .await;
    let first_max = firsts.last().copied().unwrap_or(f64::NAN);
    let rows = vec![
        (
            "W8 small keys: first start after create".into(),
            format!(
                "median {:.0} ms, max {first_max:.0} ms (the create took {:.0} ms)",
                percentile(&firsts, 0.5),
                created_in.as_secs_f64() * 1_000.0
            ),
            "≤ 50 ms + fair turn".into(),
        ),
        (
            "W8 all 1,000 small-key tasks done".into(),
            format!("{done_ms:.0} ms after their create"),
            "≤ 3 s".into(),
        ),
        (
            "W8 rate at the sink / most in 1 s".into(),
            format!("{rate:.1}/s / {max_1s}"),
            "500/s, ≤ 501".into(),
        ),
    ];
    Ok((
        json!({ "backlog": big, "small_keys": small.len(), "small_tasks_each": 100,
                "create_ms": created_in.as_secs_f64() * 1_000.0,
                "first_start_ms": firsts, "last_start_ms": lasts, "done_ms": done_ms,
                "rate_during_per_s": rate, "max_1s": max_1s }),
        rows,
    ))
}

/// W9 many keys: 100,000 distinct keys with 10 tasks each, each key
/// limited to 5/s with burst 1, through a gate with no other limit: RSS,
/// delivery rate, and each key's bound checked at the sink.
pub(super) async fn w9(server: &Server, sink: &Sink, quick: bool) -> anyhow::Result<(Value, Rows)> {
    let keys = if quick { 10_000 } else { 100_000 };
    let host = sink.addr.to_string();
    let mut gate = unlimited(sink);
    gate["keys"] = json!({ "rate": "5/s", "burst": 1 });
    server.gate("w9", gate).await?;
    let rss_before = server.rss_mb();
    let tasks: Vec<Value> = (0..keys * 10)
        .map(|i| {
            let k = format!("k{}", i % keys);
            keyed("w9", &format!("http://{host}/w9/{k}"), &k)
        })
        .collect();
    let began = clock::instant();
    server.create(tasks, 10_000, 2).await?;
    let created_in = began.elapsed();
    let rss_created = server.rss_mb();
    let n = keys * 10;
    let mut rss_peak = rss_created;
    let deadline = Duration::from_secs(600);
    loop {
        let got = wait_until(sink, |p| p.starts_with("/w9/"), n, Duration::from_secs(2)).await;
        rss_peak = rss_peak.max(server.rss_mb());
        if got >= n || began.elapsed() > deadline {
            break;
        }
    }
    let paths = by_path(sink, "/w9/");
    let all: Vec<Instant> = paths.values().flatten().copied().collect();
    let delivered = all.len();
    let per_s = rate_after_burst(&all, 0.0);
    // Each key: burst 1 + 5/s × T over any window, 50 ms of arrival
    // jitter allowed (the exact bound over release times is the
    // simulation's).
    let mut over = 0;
    for times in paths.values() {
        let in_1s = max_in_window(times, Duration::from_millis(950));
        let in_200ms = max_in_window(times, Duration::from_millis(150));
        if in_1s > 6 || in_200ms > 2 {
            over += 1;
        }
    }
    let rows = vec![
        (
            "W9 100,000 keys × 10: deliveries/s".into(),
            format!("{per_s:.0} ({delivered} delivered)"),
            "against W1".into(),
        ),
        (
            "W9 RSS: before / all pending / peak".into(),
            format!("{rss_before:.0} / {rss_created:.0} / {rss_peak:.0} MB"),
            String::new(),
        ),
        (
            "W9 keys over their bound at the sink".into(),
            format!("{over} of {}", paths.len()),
            "0".into(),
        ),
    ];
    let _ = server
        .api
        .send(Method::DELETE, "/v1/gates/w9?force=true", None)
        .await;
    Ok((
        json!({ "keys": keys, "tasks": n, "create_s": created_in.as_secs_f64(),
                "deliveries_per_s": per_s, "delivered": delivered,
                "rss_before_mb": rss_before, "rss_all_pending_mb": rss_created, "rss_peak_mb": rss_peak,
                "keys_over_bound": over }),
        rows,
    ))
}
