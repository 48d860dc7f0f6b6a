//! Asks for a host that the gate does not allow. The host must refuse the
//! request before sending anything, answering `HTTP-request-denied`, which the
//! SDK gives as `HttpError::Denied`.
//!
//! Succeeds with `{"denied": true, "url": ...}` when refused, and fails with
//! `not denied: ...` otherwise, so a test reads the verdict from the outcome.
//! Input (optional): `{"url": "http://elsewhere.test/", "timeout_ms": 500}`
//! (`timeout_ms`: the SDK's `with_timeout`). The default host, under
//! `.invalid`, never resolves, so even a host that fails to refuse it sends
//! nothing anywhere.

use serde::{Deserialize, Serialize};
use sluice_sdk::{Context, HttpError, Outcome, Request};

const URL_DEFAULT: &str = "http://disallowed.invalid/";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    url: String,
    #[serde(default)]
    timeout_ms: Option<u64>,
}

#[derive(Serialize)]
struct Output {
    denied: bool,
    url: String,
}

async fn run(ctx: Context, input: Option<Input>) -> Outcome<Output> {
    let (url, timeout) = input.map_or((URL_DEFAULT.to_string(), None), |i| (i.url, i.timeout_ms));
    let mut http = ctx.http();
    if let Some(ms) = timeout {
        http = http.with_timeout(std::time::Duration::from_millis(ms));
    }
    match http.send(Request::get(&url)).await {
        Err(HttpError::Denied { url }) => Outcome::Success(Output { denied: true, url }),
        Err(err) => Outcome::Fail(format!("not denied: {err}")),
        Ok(response) => Outcome::Fail(format!("not denied: {url} answered {}", response.status())),
    }
}

sluice_sdk::export!(run);
