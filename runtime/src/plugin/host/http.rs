//! A plugin's outgoing HTTP: the `wasi:http` send-request hook, bound to the
//! attempt's gate.
//!
//! Each request, in order: the host must pass the same checks as a webhook's
//! (gate `allowed_hosts`, server `outbound_hosts`, no private or reserved
//! address the gate does not name), or the guest gets `HTTP-request-denied`
//! before any packet leaves; then it waits for a permit from the gate (a token,
//! and a concurrency slot beyond the attempt's own when several run at once);
//! then it goes out through the shared guarded client, with no redirects, and
//! its response body is read whole up to a cap. A 429 or 503 slows the gate as
//! a webhook's does.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use tokio::sync::{mpsc, oneshot};

use super::super::PermitMessage;
use wasmtime_wasi_http::{Error, WasiBody, WasiHttpHooks};

use super::AttemptLog;
use crate::clock;
use crate::core::{Signal, TaskId};
use crate::dispatch::{Dispatcher, parse_retry_after};

/// Largest request body a plugin may send, and response body it may receive.
pub(crate) const MAX_REQUEST_BODY: usize = 8 * 1024 * 1024;
pub(crate) const MAX_RESPONSE_BODY: usize = 8 * 1024 * 1024;

/// What a request needs to know of its attempt.
pub(super) struct Link {
    pub task: TaskId,
    pub attempt: u32,
    pub gate: String,
    pub allowed_hosts: Arc<[String]>,
    pub dispatcher: Dispatcher,
    pub permits: mpsc::UnboundedSender<PermitMessage>,
    pub log: Arc<Mutex<AttemptLog>>,
    pub next_ask: AtomicU64,
}

pub(super) struct GateHooks {
    link: Arc<Link>,
}

impl GateHooks {
    pub(super) fn new(link: Link) -> GateHooks {
        GateHooks {
            link: Arc::new(link),
        }
    }
}

type IoFuture = Box<dyn Future<Output = Result<(), Error>> + Send>;

impl WasiHttpHooks for GateHooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        _options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: IoFuture,
    ) -> Box<dyn Future<Output = Result<(http::Response<WasiBody>, IoFuture), Error>> + Send> {
        let link = self.link.clone();
        Box::new(async move {
            let response = link.send(request).await?;
            Ok((response, Box::new(async { Ok(()) }) as IoFuture))
        })
    }
}

/// Holds a permit; gives it back when dropped, however the request ended.
struct Permit<'a> {
    link: &'a Link,
    signal: Signal,
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        let _ = self.link.permits.send(PermitMessage::Ended {
            task: self.link.task,
            attempt: self.link.attempt,
            signal: self.signal,
        });
    }
}

impl Link {
    fn note(&self, line: String) {
        if let Ok(mut log) = self.log.lock() {
            log.push("sluice", &line);
        }
    }

    async fn permit(&self) -> Result<Permit<'_>, Error> {
        let (reply, allowed) = oneshot::channel();
        let ask = self.next_ask.fetch_add(1, Ordering::Relaxed);
        self.permits
            .send(PermitMessage::Ask {
                task: self.task,
                attempt: self.attempt,
                ask,
                reply,
            })
            .map_err(|_| Error::HttpRequestDenied)?;
        // Dropped unanswered: the attempt ended or the server is stopping.
        allowed.await.map_err(|_| Error::HttpRequestDenied)?;
        Ok(Permit {
            link: self,
            signal: Signal::Healthy,
        })
    }

    async fn send(
        &self,
        request: http::Request<WasiBody>,
    ) -> Result<http::Response<WasiBody>, Error> {
        let (parts, body) = request.into_parts();
        let target = parts.uri.to_string();
        let url = reqwest::Url::parse(&target).map_err(|_| Error::HttpRequestUriInvalid)?;
        let client = match self
            .dispatcher
            .client_for(&url, &self.gate, &self.allowed_hosts)
        {
            Ok(client) => client,
            Err(why) => {
                self.note(format!("{} {url} denied: {why}", parts.method));
                return Err(Error::HttpRequestDenied);
            }
        };
        let body = Limited::new(body, MAX_REQUEST_BODY)
            .collect()
            .await
            .map_err(|_| Error::HttpRequestBodySize(None))?
            .to_bytes();
        let mut permit = self.permit().await?;
        let started = clock::instant();
        let response = client
            .request(parts.method.clone(), url.clone())
            .headers(parts.headers)
            .body(body)
            .send()
            .await;
        let response = match response {
            Ok(r) => r,
            Err(e) => {
                let (code, text) = classify_error(&e);
                self.note(format!("{} {url} failed: {text}", parts.method));
                return Err(code);
            }
        };
        let status = response.status();
        if matches!(status.as_u16(), 429 | 503) {
            let retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, clock::now()));
            permit.signal = Signal::Throttled { retry_after };
        }
        let mut builder = http::Response::builder().status(status);
        for (name, value) in response.headers() {
            builder = builder.header(name, value);
        }
        let bytes = read_capped(response).await?;
        drop(permit);
        tracing::debug!(task = %self.task, %url, status = status.as_u16(), ms = started.elapsed().as_millis() as u64, "plugin request");
        let body = Full::new(bytes)
            .map_err(|never| match never {})
            .boxed_unsync();
        builder.body(body).map_err(|_| Error::HttpProtocolError)
    }
}

async fn read_capped(mut response: reqwest::Response) -> Result<Bytes, Error> {
    if response
        .content_length()
        .is_some_and(|n| n > MAX_RESPONSE_BODY as u64)
    {
        return Err(Error::HttpResponseBodySize(response.content_length()));
    }
    let mut kept = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if kept.len() + chunk.len() > MAX_RESPONSE_BODY {
                    return Err(Error::HttpResponseBodySize(None));
                }
                kept.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(Bytes::from(kept)),
            Err(_) => return Err(Error::HttpResponseIncomplete),
        }
    }
}

/// The `wasi:http` error code for a failed send, and the text for the log.
fn classify_error(e: &reqwest::Error) -> (Error, String) {
    use std::error::Error as _;
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    let code = if text.contains("private or reserved") {
        Error::DestinationIpProhibited
    } else if e.is_timeout() {
        Error::ConnectionTimeout
    } else if e.is_connect() {
        Error::ConnectionRefused
    } else {
        Error::HttpProtocolError
    };
    (code, text)
}
