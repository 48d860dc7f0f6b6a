//! Attacks the host, not the sandbox: it stays within its own memory and asks
//! the host to hold things on its behalf, or to send what it should not. One
//! plugin, a mode per attack, chosen by the input's `mode`:
//!
//! - `headers` (`count`, `bytes`, `hold_ms`): makes `count` header lists of one
//!   `bytes`-long value each and holds them all (for `hold_ms` more). The host
//!   must refuse past its budget.
//! - `bodies` (`url`, `count`, `bytes`, `send`, `hold_ms`): makes `count`
//!   outgoing requests and writes up to `bytes` of body into each without
//!   finishing it, holding them all; with `send` each is handed to the host
//!   first. The host must not buffer more than its budget, nor anything before
//!   the gate's permit.
//! - `drop` (`url`, `count`, `wait_ms`): sends `count` requests and drops each
//!   response future after `wait_ms`. The gate's slots must stay taken until
//!   the requests end.
//! - `fetch` (`scheme`, `authority`, `path`): one GET with exactly that
//!   authority (userinfo and all); reports the status or the error code.
//! - `spawn` (`fanout`, `name`, `version`, `gate`): succeeds asking for `fanout`
//!   copies of itself as next tasks, in `gate` (default its own).
//! - `next` (`tasks`): succeeds asking for exactly these next tasks.
//!
//! Output: `{"made", "bytes", "each", "error", "status"}` as far as they apply.
//! Only ever run it under the host's tests, against loopback endpoints.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sluice_sdk::{Context, Outcome};
use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    ErrorCode, Fields, FutureIncomingResponse, Method, OutgoingBody, OutgoingRequest, Scheme,
};
use wasip2::io::streams::OutputStream;

#[derive(Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case", deny_unknown_fields)]
enum Input {
    Headers {
        count: u32,
        bytes: usize,
        #[serde(default)]
        hold_ms: u64,
    },
    Bodies {
        url: String,
        count: u32,
        bytes: usize,
        #[serde(default)]
        send: bool,
        #[serde(default)]
        hold_ms: u64,
    },
    Drop {
        url: String,
        count: u32,
        #[serde(default)]
        wait_ms: u64,
    },
    Fetch {
        #[serde(default = "http")]
        scheme: String,
        authority: String,
        #[serde(default = "root")]
        path: String,
    },
    Spawn {
        fanout: u32,
        name: String,
        version: String,
        gate: Option<String>,
    },
    Next {
        tasks: Vec<Value>,
    },
}

fn http() -> String {
    "http".into()
}

fn root() -> String {
    "/".into()
}

#[derive(Serialize, Default)]
struct Output {
    made: u32,
    bytes: u64,
    error: Option<String>,
    status: Option<u16>,
    /// Bytes each request's body took, in the order made (`bodies` only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    each: Vec<u64>,
}

async fn run(ctx: Context, input: Input) -> Outcome<Output> {
    match input {
        Input::Headers {
            count,
            bytes,
            hold_ms,
        } => Outcome::Success(hold_headers(count, bytes, hold_ms)),
        Input::Bodies {
            url,
            count,
            bytes,
            send,
            hold_ms,
        } => Outcome::Success(hold_bodies(&url, count, bytes, send, hold_ms)),
        Input::Drop {
            url,
            count,
            wait_ms,
        } => Outcome::Success(drop_responses(&url, count, wait_ms)),
        Input::Fetch {
            scheme,
            authority,
            path,
        } => Outcome::Success(fetch(&scheme, &authority, &path)),
        Input::Spawn {
            fanout,
            name,
            version,
            gate,
        } => {
            let gate = gate.unwrap_or_else(|| ctx.gate().to_string());
            let input = json!({
                "mode": "spawn", "fanout": fanout, "name": name, "version": version, "gate": gate,
            });
            for _ in 0..fanout {
                ctx.add_next(json!({
                    "gate": gate,
                    "plugin": { "name": name, "version": version, "input": input },
                }));
            }
            Outcome::Success(Output {
                made: fanout,
                ..Output::default()
            })
        }
        Input::Next { tasks } => {
            let made = tasks.len() as u32;
            for task in tasks {
                ctx.add_next(task);
            }
            Outcome::Success(Output {
                made,
                ..Output::default()
            })
        }
    }
}

/// Waits on the host's monotonic clock.
fn sleep(ms: u64) {
    if ms > 0 {
        wasip2::clocks::monotonic_clock::subscribe_duration(ms * 1_000_000).block();
    }
}

fn hold_headers(count: u32, bytes: usize, hold_ms: u64) -> Output {
    let mut held = Vec::new();
    let mut out = Output::default();
    let value = vec![b'a'; bytes];
    for _ in 0..count {
        match Fields::from_list(&[("x-pad".to_string(), value.clone())]) {
            Ok(fields) => {
                held.push(fields);
                out.made += 1;
                out.bytes += bytes as u64;
            }
            Err(e) => {
                out.error = Some(format!("{e:?}"));
                break;
            }
        }
    }
    sleep(hold_ms);
    drop(held);
    out
}

/// A request to `url` (`http://host:port/path` only) with an empty header list.
fn request(method: Method, url: &str) -> OutgoingRequest {
    let rest = url.strip_prefix("http://").unwrap_or(url);
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let request = OutgoingRequest::new(Fields::new());
    let _ = request.set_method(&method);
    let _ = request.set_scheme(Some(&Scheme::Http));
    let _ = request.set_authority(Some(authority));
    let _ = request.set_path_with_query(Some(path));
    request
}

/// Writes what the stream takes without blocking, up to `bytes`.
fn fill(stream: &OutputStream, bytes: usize) -> Result<u64, String> {
    let chunk = vec![b'b'; 64 * 1024];
    let mut written = 0usize;
    while written < bytes {
        let room = stream.check_write().map_err(|e| format!("{e:?}"))? as usize;
        if room == 0 {
            break;
        }
        let n = room.min(chunk.len()).min(bytes - written);
        stream.write(&chunk[..n]).map_err(|e| format!("{e:?}"))?;
        written += n;
    }
    Ok(written as u64)
}

fn hold_bodies(url: &str, count: u32, bytes: usize, send: bool, hold_ms: u64) -> Output {
    // Children before parents: a stream before its body.
    let mut held: Vec<(OutputStream, OutgoingBody, Option<OutgoingRequest>)> = Vec::new();
    let mut responses: Vec<FutureIncomingResponse> = Vec::new();
    let mut out = Output::default();
    for _ in 0..count {
        let request = request(Method::Post, url);
        let Ok(body) = request.body() else {
            out.error = Some("no body".into());
            break;
        };
        let Ok(stream) = body.write() else {
            out.error = Some("no body stream".into());
            break;
        };
        let request = if send {
            match outgoing_handler::handle(request, None) {
                Ok(future) => responses.push(future),
                Err(e) => {
                    out.error = Some(format!("{e:?}"));
                    break;
                }
            }
            None
        } else {
            Some(request)
        };
        match fill(&stream, bytes) {
            Ok(n) => {
                out.bytes += n;
                out.each.push(n);
            }
            Err(e) => {
                out.error = Some(e);
                break;
            }
        }
        out.made += 1;
        held.push((stream, body, request));
    }
    sleep(hold_ms);
    drop(held);
    drop(responses);
    out
}

fn drop_responses(url: &str, count: u32, wait_ms: u64) -> Output {
    let mut out = Output::default();
    for _ in 0..count {
        let request = request(Method::Get, url);
        match outgoing_handler::handle(request, None) {
            Ok(future) => {
                // Give the host a moment to send it, then walk away.
                sleep(wait_ms);
                drop(future);
                out.made += 1;
            }
            Err(e) => {
                out.error = Some(format!("{e:?}"));
                break;
            }
        }
    }
    out
}

fn fetch(scheme: &str, authority: &str, path: &str) -> Output {
    let mut out = Output::default();
    let request = OutgoingRequest::new(Fields::new());
    let scheme = match scheme {
        "https" => Scheme::Https,
        _ => Scheme::Http,
    };
    let _ = request.set_scheme(Some(&scheme));
    if request.set_authority(Some(authority)).is_err() {
        out.error = Some("authority refused by the bindings".into());
        return out;
    }
    let _ = request.set_path_with_query(Some(path));
    let future = match outgoing_handler::handle(request, None) {
        Ok(future) => future,
        Err(e) => {
            out.error = Some(code(&e));
            return out;
        }
    };
    future.subscribe().block();
    match future.get() {
        Some(Ok(Ok(response))) => out.status = Some(response.status()),
        Some(Ok(Err(e))) => out.error = Some(code(&e)),
        _ => out.error = Some("no response".into()),
    }
    out
}

/// The error code's variant name, as the guest sees it.
fn code(e: &ErrorCode) -> String {
    let text = format!("{e:?}");
    let name = text.split(['(', ' ', '{']).next().unwrap_or("");
    name.rsplit("::").next().unwrap_or(name).to_string()
}

sluice_sdk::export!(run);
