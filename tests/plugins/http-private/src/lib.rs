//! Asks for private, loopback, link-local and cloud-metadata addresses. Unless
//! the gate names them in its allowed hosts, the host must refuse each one
//! before any packet leaves (`HTTP-request-denied`), even with a gate that
//! allows any public host.
//!
//! NEVER run this against a real network except under the host's test suite:
//! if the host's guard is broken, these requests go out. It stops at the first
//! address that is not refused, so a broken guard leaks one request, not all.
//!
//! Succeeds with the refused URLs; fails with `not denied: ...` at the first
//! one that was not refused. Input (optional): `{"urls": [...]}`, for example a
//! name that resolves to a private address, to check the guard after DNS.

use serde::{Deserialize, Serialize};
use sluice_sdk::{Context, HttpError, Outcome, Request};

const URLS_DEFAULT: &[&str] = &[
    "http://10.0.0.1/",
    "http://172.16.0.1/",
    "http://192.168.0.1/",
    "http://127.0.0.1/",
    "http://169.254.169.254/latest/meta-data/",
    "http://[::1]/",
    "http://[fd00::1]/",
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    urls: Vec<String>,
}

#[derive(Serialize)]
struct Output {
    denied: Vec<String>,
}

async fn run(ctx: Context, input: Option<Input>) -> Outcome<Output> {
    let urls = input.map_or_else(
        || URLS_DEFAULT.iter().map(|url| url.to_string()).collect(),
        |input| input.urls,
    );
    let http = ctx.http();
    let mut denied = Vec::new();
    for url in urls {
        match http.send(Request::get(&url)).await {
            Err(HttpError::Denied { url }) => denied.push(url),
            Err(err) => return Outcome::Fail(format!("not denied: {err}")),
            Ok(response) => {
                return Outcome::Fail(format!("not denied: {url} answered {}", response.status()));
            }
        }
    }
    Outcome::Success(Output { denied })
}

sluice_sdk::export!(run);
