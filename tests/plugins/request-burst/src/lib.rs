//! Sends `count` requests to `url` all at once and reports how long they took.
//! Each takes a token from the task's gate, so with rate r and burst b they
//! need at least (count - b) / r seconds, and at most the gate's concurrency
//! are in flight at a time: the gate's invariant must hold for plugins too.
//!
//! Input: `{"url": "http://127.0.0.1:9000/", "count": 100}` (`count` defaults
//! to 100). Output: `{"count": 100, "ok": 100, "failed": 0, "elapsed_ms": 9800,
//! "first_error": null}`. Non-2xx answers count as failed.

use std::time::Instant;

use serde::{Deserialize, Serialize};
use sluice_sdk::{Context, Error, Request};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    url: String,
    #[serde(default = "count_default")]
    count: u32,
}

fn count_default() -> u32 {
    100
}

#[derive(Serialize)]
struct Output {
    count: u32,
    ok: u32,
    failed: u32,
    elapsed_ms: u128,
    first_error: Option<String>,
}

async fn run(ctx: Context, input: Input) -> Result<Output, Error> {
    let started = Instant::now();
    let requests: Vec<_> = (0..input.count)
        .map(|n| {
            let http = ctx.http();
            let request = Request::get(&input.url).header("x-burst-request", n.to_string());
            // Spawned, so that all of them are waiting on the gate at once.
            wstd::runtime::spawn(async move { http.send(request).await?.error_for_status() })
        })
        .collect();
    let (mut ok, mut failed, mut first_error) = (0, 0, None);
    for request in requests {
        match request.await {
            Ok(_) => ok += 1,
            Err(err) => {
                failed += 1;
                first_error.get_or_insert_with(|| err.to_string());
            }
        }
    }
    Ok(Output {
        count: input.count,
        ok,
        failed,
        elapsed_ms: started.elapsed().as_millis(),
        first_error,
    })
}

sluice_sdk::export!(run);
