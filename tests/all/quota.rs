//! Self-tuning gates against endpoints that behave like real ones: one that
//! enforces a quota in fixed windows and states it in each header family,
//! with a gate configured far above it (the gate must learn the quota from
//! the answers and never be told 429); one whose latency grows with the
//! requests it holds and that fails past a knee (an adaptive gate must find
//! the knee).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;

use crate::support::{Reply, Server, Sink, webhook_task};

const LIMIT: u64 = 12;
const WINDOW_S: u64 = 3;
const TASKS: usize = 30;

#[derive(Clone, Copy, Debug)]
enum Family {
    /// `RateLimit` and `RateLimit-Policy` as structured-field lists.
    Structured,
    /// `RateLimit` as draft 07's dictionary.
    Dictionary,
    /// `RateLimit-Limit`, `-Remaining`, `-Reset`.
    Trio,
    /// `X-RateLimit-*` with the reset in seconds from now.
    XDelay,
    /// `X-RateLimit-*` with the reset as a Unix time.
    XUnixTime,
}

/// Answers 429 past `LIMIT` requests in a window of the wall clock (windows
/// start at multiples of `WINDOW_S` since the Unix epoch), and states the
/// quota in `family`'s headers. Answers the counts per window and how many
/// 429s it gave.
fn enforce(sink: &Sink, family: Family) -> Arc<Mutex<(HashMap<u64, u64>, u64)>> {
    let seen = Arc::new(Mutex::new((HashMap::new(), 0u64)));
    let counts = seen.clone();
    sink.behave(move |_, _| {
        let now_ms = sluice::clock::now().as_ms();
        let window = now_ms / (WINDOW_S * 1_000);
        let end_ms = (window + 1) * WINDOW_S * 1_000;
        let mut counts = counts.lock().expect("lock");
        let count = {
            let c = counts.0.entry(window).or_default();
            *c += 1;
            *c
        };
        let remaining = LIMIT.saturating_sub(count);
        let reset = (end_ms - now_ms).div_ceil(1_000).to_string();
        let mut reply = if count > LIMIT {
            counts.1 += 1;
            Reply::status(429)
        } else {
            Reply::ok()
        };
        let (limit, left) = (LIMIT.to_string(), remaining.to_string());
        reply = match family {
            Family::Structured => reply
                .header("RateLimit", &format!("\"default\";r={left};t={reset}"))
                .header(
                    "RateLimit-Policy",
                    &format!("\"default\";q={limit};w={WINDOW_S}"),
                ),
            Family::Dictionary => reply.header(
                "RateLimit",
                &format!("limit={limit}, remaining={left}, reset={reset}"),
            ),
            Family::Trio => reply
                .header("RateLimit-Limit", &limit)
                .header("RateLimit-Remaining", &left)
                .header("RateLimit-Reset", &reset),
            Family::XDelay => reply
                .header("X-RateLimit-Limit", &limit)
                .header("X-RateLimit-Remaining", &left)
                .header("X-RateLimit-Reset", &reset),
            Family::XUnixTime => reply
                .header("X-RateLimit-Limit", &limit)
                .header("X-RateLimit-Remaining", &left)
                .header("X-RateLimit-Reset", &(end_ms / 1_000).to_string()),
        };
        reply
    });
    seen
}

fn fast_gate(sink: &Sink, quota_headers: bool) -> serde_json::Value {
    json!({
        "rate": "1000/s",
        "burst": 20,
        "concurrency": 4,
        "allowed_hosts": [sink.host()],
        "recovery": { "start": 1.0 },
        "circuit": null,
        "quota_headers": quota_headers,
        "retry": { "max_attempts": 20, "backoff": { "initial": "100ms", "max": "1s", "jitter": false } },
    })
}

/// Each header family paces a gate of 1,000/s down to the endpoint's 12
/// requests per 3 s: every task succeeds, no answer is a 429, and the gate
/// view shows the quota it learned. Without `quota_headers` the same
/// endpoint answers 429s at once (so it does enforce its quota).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_quota_family_paces_the_gate_without_a_429() {
    let server = Server::start().await;
    let c = server.client();
    let families = [
        Family::Structured,
        Family::Dictionary,
        Family::Trio,
        Family::XDelay,
        Family::XUnixTime,
    ];
    let mut runs = Vec::new();
    for (i, family) in families.into_iter().enumerate() {
        let sink = Sink::start().await;
        let seen = enforce(&sink, family);
        let gate = format!("quota{i}");
        c.put_gate(&gate, fast_gate(&sink, true)).await;
        let ids = c
            .batch(
                (0..TASKS)
                    .map(|_| webhook_task(&gate, &sink.url("/q")))
                    .collect(),
            )
            .await;
        runs.push((family, gate, sink, seen, ids));
    }
    // The control: the same endpoint, quota headers off.
    let blind = Sink::start().await;
    let blind_seen = enforce(&blind, Family::XDelay);
    c.put_gate("blind", fast_gate(&blind, false)).await;
    c.batch(
        (0..TASKS)
            .map(|_| webhook_task("blind", &blind.url("/q")))
            .collect(),
    )
    .await;

    // While the gates work, each view shows the quota learned (it lapses at
    // the reset when the endpoint stated no window).
    let mut learned: HashMap<String, Option<serde_json::Value>> =
        runs.iter().map(|r| (r.1.clone(), None)).collect();
    let looking = sluice::clock::instant();
    while learned.values().any(Option::is_none) && looking.elapsed() < Duration::from_secs(10) {
        for (gate, quota) in learned.iter_mut().filter(|(_, q)| q.is_none()) {
            let (status, view) = c.send("GET", &format!("/v1/gates/{gate}"), None).await;
            assert_eq!(status, 200);
            assert_eq!(view["quota_headers"], true);
            if view["quota"]["reset_at"].is_string() && view["quota"]["remaining"].is_u64() {
                *quota = Some(view["quota"].clone());
            }
        }
    }

    // 30 tasks at 12 per 3 s take three to four windows.
    let within = Duration::from_secs(WINDOW_S * 8);
    for (family, gate, sink, seen, ids) in &runs {
        for id in ids {
            let done = c.wait_done(id, within).await;
            assert_eq!(done["state"], "succeeded", "{family:?}: {done}");
        }
        let (counts, refused) = seen.lock().expect("lock").clone();
        assert_eq!(
            refused, 0,
            "{family:?}: the endpoint answered 429s: {counts:?}"
        );
        assert!(
            counts.values().all(|&n| n <= LIMIT),
            "{family:?}: {counts:?}"
        );
        assert_eq!(sink.hits().len(), TASKS, "{family:?}: one request per task");
        assert!(
            learned[gate].is_some(),
            "{family:?}: the gate view showed the quota it learned"
        );
    }
    blind.wait_for(TASKS, within).await;
    assert!(
        blind_seen.lock().expect("lock").1 > 0,
        "without quota_headers the endpoint refuses some: the test's endpoint enforces its quota"
    );
}

/// Headers that cannot be trusted are ignored, and the attempt's history
/// says why; the gate goes on at its own pace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrustworthy_quota_headers_are_ignored_with_a_reason() {
    let server = Server::start().await;
    let c = server.client();
    let sink = Sink::start().await;
    sink.behave(|_, _| {
        Reply::ok()
            .header("X-RateLimit-Remaining", "-5")
            .header("X-RateLimit-Reset", "30")
    });
    c.put_gate("liar", fast_gate(&sink, true)).await;
    let ids = c
        .batch(
            (0..5)
                .map(|_| webhook_task("liar", &sink.url("/q")))
                .collect(),
        )
        .await;
    for id in &ids {
        let done = c.wait_done(id, Duration::from_secs(20)).await;
        assert_eq!(done["state"], "succeeded", "{done}");
        let logs = done["attempts"][0]["logs"].to_string();
        assert!(
            logs.contains("X-RateLimit-* headers ignored") && logs.contains("negative"),
            "{done}"
        );
    }
    let (_, view) = c.send("GET", "/v1/gates/liar", None).await;
    assert!(view.get("quota").is_none(), "{view}");
}

/// A gate far above its endpoint's knee, searching 1 to 50 from `start`.
fn adaptive_gate(sink: &Sink, start: u32) -> serde_json::Value {
    json!({
        "rate": "1000/s", "burst": 10, "concurrency": start,
        "adaptive": { "min": 1, "max": 50 },
        "allowed_hosts": [sink.host()], "recovery": { "start": 1.0 }, "circuit": null,
        "retry": { "max_attempts": 10, "backoff": { "initial": "50ms", "max": "200ms", "jitter": false } },
    })
}

/// An endpoint that answers in 50 ms while it holds up to 8 requests, in
/// 150 ms up to 12, and with 500 beyond: an adaptive gate (1 to 50, starting
/// at 4) settles near 8 (within 25 % for the middle of the arrivals in the
/// second half) and causes few errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adaptive_gate_finds_the_knee() {
    const KNEE: usize = 8;
    const TASKS: usize = 400;
    let server = Server::start().await;
    let c = server.client();
    let sink = Sink::start().await;
    let held: Arc<Mutex<Vec<usize>>> = Arc::default();
    let (seen, at) = (held.clone(), sink.clone());
    sink.behave(move |_, _| {
        let now = at.in_flight() + 1;
        seen.lock().expect("lock").push(now);
        match now {
            n if n <= KNEE => Reply::ok().delayed(Duration::from_millis(50)),
            n if n <= KNEE + 4 => Reply::ok().delayed(Duration::from_millis(150)),
            _ => Reply::status(500),
        }
    });
    c.put_gate("knee", adaptive_gate(&sink, 4)).await;
    let ids = c
        .batch(
            (0..TASKS)
                .map(|_| webhook_task("knee", &sink.url("/k")))
                .collect(),
        )
        .await;
    for id in &ids {
        let done = c.wait_done(id, Duration::from_secs(60)).await;
        assert_eq!(done["state"], "succeeded", "{done}");
    }
    let held = held.lock().expect("lock").clone();
    let mut late = held[held.len() / 2..].to_vec();
    late.sort_unstable();
    let middle = late[late.len() / 2];
    assert!(
        (6..=10).contains(&middle),
        "requests held when each arrived, second half, middle {middle}: {late:?}"
    );
    let errors = held.iter().filter(|&&n| n > KNEE + 4).count();
    assert!(
        errors * 20 <= held.len(),
        "{errors} of {} arrivals past the error point",
        held.len()
    );
    let (_, view) = c.send("GET", "/v1/gates/knee", None).await;
    assert_eq!(view["adaptive"]["min"], 1, "{view}");
    assert!(
        view["adaptive"]["baseline_ms"]
            .as_f64()
            .is_some_and(|b| b >= 45.0),
        "{view}"
    );
    let live = view["concurrency"].as_u64().unwrap_or(0);
    assert!((1..=50).contains(&live), "{view}");
}

/// A range that cannot be searched is refused, naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adaptive_ranges_are_checked() {
    let server = Server::start().await;
    let c = server.client();
    for (adaptive, field) in [
        (json!({ "min": 0, "max": 5 }), "adaptive.min"),
        (json!({ "min": 5, "max": 2 }), "adaptive.max"),
        (json!({ "min": 1, "max": 100_001 }), "adaptive.max"),
    ] {
        let body = json!({ "rate": "10/s", "adaptive": adaptive });
        let (status, v) = c.send("PUT", "/v1/gates/bad", Some(body)).await;
        assert_eq!(status, 400, "{adaptive}: {v}");
        assert_eq!(v["error"]["field"], field, "{adaptive}: {v}");
    }
    let body = json!({ "rate": "10/s", "adaptive": { "min": 2, "max": 9 }, "concurrency": 5, "quota_headers": false });
    let (status, v) = c.send("PUT", "/v1/gates/good", Some(body)).await;
    assert_eq!(status, 201, "created: {v}");
    assert_eq!(v["concurrency"], 5, "the search starts at concurrency: {v}");
    assert_eq!(v["adaptive"]["max"], 9, "{v}");
    assert_eq!(v["quota_headers"], false, "{v}");
}

/// The knee endpoint turns slow (every answer four times slower): within
/// seconds the adaptive gate holds far fewer requests there, measured at the
/// endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adaptive_gate_backs_off_when_the_endpoint_slows() {
    const KNEE: usize = 8;
    let server = Server::start().await;
    let c = server.client();
    let sink = Sink::start().await;
    // Each arrival: when, and how many requests the endpoint then held.
    let arrivals: Arc<Mutex<Vec<(std::time::Instant, usize)>>> = Arc::default();
    let slow_from: Arc<Mutex<Option<std::time::Instant>>> = Arc::default();
    let (seen, at, slow) = (arrivals.clone(), sink.clone(), slow_from.clone());
    sink.behave(move |hit, _| {
        let held = at.in_flight() + 1;
        seen.lock().expect("lock").push((hit.at, held));
        let factor = if slow.lock().expect("lock").is_some() {
            4
        } else {
            1
        };
        match held {
            n if n <= KNEE => Reply::ok().delayed(Duration::from_millis(50 * factor)),
            n if n <= KNEE + 4 => Reply::ok().delayed(Duration::from_millis(150 * factor)),
            _ => Reply::status(500),
        }
    });
    c.put_gate("flips", adaptive_gate(&sink, 8)).await;
    c.batch(
        (0..800)
            .map(|_| webhook_task("flips", &sink.url("/f")))
            .collect(),
    )
    .await;
    // Healthy for about two seconds, then slow.
    sink.wait_for(300, Duration::from_secs(30)).await;
    let turned = sluice::clock::instant();
    *slow_from.lock().expect("lock") = Some(turned);
    tokio::time::sleep(Duration::from_secs(5)).await;

    let arrivals = arrivals.lock().expect("lock").clone();
    let middle = |from: std::time::Instant, to: std::time::Instant| {
        let mut held: Vec<usize> = arrivals
            .iter()
            .filter(|(t, _)| *t >= from && *t < to)
            .map(|&(_, n)| n)
            .collect();
        held.sort_unstable();
        held.get(held.len() / 2).copied()
    };
    let before = middle(turned - Duration::from_secs(1), turned).expect("arrivals before");
    let after = middle(
        turned + Duration::from_secs(3),
        turned + Duration::from_secs(5),
    )
    .expect("arrivals after");
    assert!(
        before >= 5 && after * 10 <= before * 6,
        "held before the slowdown {before}, 3 to 5 s after it {after}"
    );
}
