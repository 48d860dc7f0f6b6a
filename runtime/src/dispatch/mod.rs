//! Webhook attempts over one shared reqwest client.
//!
//! An attempt is planned by the shell (everything it needs, copied out of the
//! store), run here, and reported back as a [`Report`]: the core's [`Outcome`]
//! plus the attempt's history record. This module decides nothing about retries.

pub mod guard;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use crate::attempt::quota::read_quota;
use crate::attempt::{Action, MAX_LEASE, Plan, Report, Request, classify, parse_retry_after, sign};
use crate::clock;
use crate::core::{Outcome, Quota};
use crate::store::LogRecord;

/// The first this many bytes of a response body are kept in history.
pub const RESPONSE_EXCERPT: usize = 4 * 1024;

/// The guard refused every address a name resolves to. A type of its own, so
/// callers recognise a refusal by what it is, not by its wording.
#[derive(Debug, thiserror::Error)]
#[error("{host} resolves only to private or reserved addresses")]
pub struct GuardRefused {
    pub host: String,
}

/// A name did not resolve.
#[derive(Debug, thiserror::Error)]
#[error("{host} did not resolve: {source}")]
pub struct DnsFailed {
    pub host: String,
    pub source: std::io::Error,
}

/// Resolves names, then drops every address the guard refuses, so the address
/// that is checked is the address that is connected to (no DNS rebinding window).
struct GuardedResolver;

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            let looked_up = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map(|addrs| addrs.collect::<Vec<SocketAddr>>());
            let addrs = match looked_up {
                Ok(addrs) => addrs,
                Err(source) => return Err(Box::new(DnsFailed { host, source }) as _),
            };
            let allowed: Vec<SocketAddr> = addrs
                .into_iter()
                .filter(|a| !guard::is_forbidden(a.ip()))
                .collect();
            if allowed.is_empty() {
                return Err(Box::new(GuardRefused { host }) as _);
            }
            let iter: reqwest::dns::Addrs = Box::new(allowed.into_iter());
            Ok(iter)
        })
    }
}

/// The two shared clients: `guarded` refuses private addresses after DNS; `open`
/// is used only for hosts a gate names explicitly.
#[derive(Clone)]
pub struct Dispatcher {
    guarded: reqwest::Client,
    open: reqwest::Client,
    /// The server's `outbound_hosts`: when not empty, nothing else is reached.
    outbound: Arc<[String]>,
    /// URLs lately parsed (at most `URLS_KEPT`): parsing one (with its
    /// IDNA pass) took a twentieth of a webhook attempt's CPU, and a gate's
    /// tasks mostly share a few.
    urls: Arc<Mutex<HashMap<Box<str>, reqwest::Url>>>,
}

const URLS_KEPT: usize = 256;

fn client_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .use_rustls_tls()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(1_024)
        .pool_idle_timeout(Duration::from_secs(60))
        .connect_timeout(Duration::from_secs(10))
        .user_agent(concat!("sluice/", env!("CARGO_PKG_VERSION")))
        // Proxies from the environment (`HTTP_PROXY`, `HTTPS_PROXY`,
        // `ALL_PROXY`) are ignored: through a proxy the address guard would
        // check only the proxy's address, never the endpoint's.
        .no_proxy()
}

impl Dispatcher {
    pub fn new(outbound_hosts: Vec<String>) -> Result<Dispatcher, reqwest::Error> {
        Ok(Dispatcher {
            outbound: outbound_hosts.into(),
            guarded: client_builder()
                .dns_resolver(Arc::new(GuardedResolver))
                .build()?,
            open: client_builder().build()?,
            urls: Arc::default(),
        })
    }

    /// `text` parsed, from the URLs lately parsed where it is one of them.
    fn parse_url(&self, text: &str) -> Result<reqwest::Url, url::ParseError> {
        if let Ok(urls) = self.urls.lock()
            && let Some(url) = urls.get(text)
        {
            return Ok(url.clone());
        }
        let url = reqwest::Url::parse(text)?;
        if let Ok(mut urls) = self.urls.lock() {
            if urls.len() >= URLS_KEPT {
                urls.clear();
            }
            urls.insert(text.into(), url.clone());
        }
        Ok(url)
    }

    pub async fn run(&self, plan: Plan) -> Report {
        let started = clock::instant();
        let Exchange {
            outcome,
            status,
            error,
            timed_out,
            response,
            lease,
            quota,
        } = self.attempt(&plan).await;
        let (quota, logs) = match quota {
            Ok(quota) => (quota, Vec::new()),
            Err(why) => (None, vec![LogRecord::host(&why)]),
        };
        Report {
            task: plan.task,
            attempt: plan.attempt,
            outcome,
            ended_at: clock::now(),
            status,
            latency_ms: started.elapsed().as_millis() as u64,
            error,
            timed_out,
            response,
            lease,
            quota,
            logs,
            next: Vec::new(),
        }
    }

    /// The client that may carry a request to `url` for a gate with these
    /// `allowed_hosts`, or why none may: the host must be allowed by the gate
    /// and by the server's `outbound_hosts`; a private or reserved address
    /// needs the gate to name the host explicitly, and is then reached through
    /// the open client; any other name goes through the guarded resolver. The
    /// same rules for webhooks and plugin requests.
    pub fn client_for(
        &self,
        url: &reqwest::Url,
        gate: &str,
        allowed_hosts: &[String],
    ) -> Result<&reqwest::Client, String> {
        let Some(host) = url.host_str() else {
            return Err("url has no host".into());
        };
        let port = url.port_or_known_default().unwrap_or(0);
        if !guard::host_allowed(host, port, allowed_hosts) {
            return Err(format!(
                "host {host}:{port} is not in gate {gate}'s allowed_hosts"
            ));
        }
        if !guard::host_allowed(host, port, &self.outbound) {
            return Err(format!(
                "host {host}:{port} is outside the server's outbound_hosts"
            ));
        }
        let explicit = guard::named_explicitly(host, port, allowed_hosts);
        let literal: Option<IpAddr> = match url.host() {
            Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
            _ => None,
        };
        if let Some(ip) = literal
            && guard::is_forbidden(ip)
            && !explicit
        {
            return Err(format!(
                "{ip} is a private or reserved address; name it in the gate's allowed_hosts to allow it"
            ));
        }
        Ok(if explicit { &self.open } else { &self.guarded })
    }

    async fn attempt(&self, plan: &Plan) -> Exchange {
        let denied = |why: String| Exchange::failed(Outcome::Denied, why);
        let Action::Webhook(webhook) = &plan.action else {
            return denied("not a webhook task".into());
        };
        let url = match self.parse_url(&webhook.url) {
            Ok(url) => url,
            Err(e) => return denied(format!("invalid url: {e}")),
        };
        let client = match self.client_for(&url, &plan.gate, &plan.allowed_hosts) {
            Ok(client) => client,
            Err(why) => return denied(why),
        };
        let method = match reqwest::Method::from_bytes(webhook.method.as_bytes()) {
            Ok(m) => m,
            Err(_) => return denied(format!("invalid method {:?}", webhook.method)),
        };
        let headers = match self.headers(plan, webhook) {
            Ok(h) => h,
            Err(e) => return denied(e),
        };
        let request = client
            .request(method, url)
            .headers(headers)
            .body(webhook.body.clone());
        let timed_out = || Exchange {
            timed_out: true,
            ..Exchange::failed(
                Outcome::Failed { retry_after: None },
                format!(
                    "timed out after {}",
                    crate::core::format_duration(plan.timeout)
                ),
            )
        };
        // The timeout runs until the answer's head; its excerpt is read in
        // what is left of it, and kept as far as it came: an answer given
        // (a 200, a 202 and its lease) stands, however slow its body.
        let started = clock::instant();
        let response = match tokio::time::timeout(plan.timeout, request.send()).await {
            Err(_) => return timed_out(),
            Ok(Err(e)) if e.is_timeout() => return timed_out(),
            Ok(Err(e)) if refused_by_guard(&e) => return denied(describe(&e)),
            Ok(Err(e)) => {
                return Exchange::failed(Outcome::Failed { retry_after: None }, describe(&e));
            }
            Ok(Ok(response)) => response,
        };
        let code = response.status().as_u16();
        let header = |name: &str| {
            (response.headers().get(name))
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let retry_after = header(reqwest::header::RETRY_AFTER.as_str())
            .and_then(|v| parse_retry_after(&v, clock::now()));
        let quota = read_quota(header, clock::now());
        // Only 202 with a lease starts long-running work; a lease that
        // cannot be read fails the attempt rather than end it as a success
        // whose report would then be refused.
        let lease = match header("sluice-lease").filter(|_| code == 202) {
            None => None,
            Some(text) => match crate::core::parse_duration(&text) {
                Ok(d) if !d.is_zero() => Some(d.min(MAX_LEASE)),
                _ => {
                    return Exchange {
                        status: Some(code),
                        ..Exchange::failed(
                            Outcome::Failed { retry_after: None },
                            format!(
                                "Sluice-Lease {:?} is not a duration like \"10m\"",
                                text.chars().take(64).collect::<String>()
                            ),
                        )
                    };
                }
            },
        };
        let left = plan.timeout.saturating_sub(started.elapsed());
        let excerpt = read_excerpt(response, left).await;
        let (outcome, error) = classify(code, retry_after);
        Exchange {
            outcome,
            status: Some(code),
            error,
            timed_out: false,
            response: excerpt,
            lease,
            quota,
        }
    }

    fn headers(&self, plan: &Plan, webhook: &Request) -> Result<HeaderMap, String> {
        let mut headers = HeaderMap::new();
        for (name, value) in &webhook.headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("invalid header name {name:?}"))?;
            let mut value = HeaderValue::from_str(value)
                .map_err(|_| format!("invalid value for header {name}"))?;
            if webhook.secret_headers.contains(name.as_str()) {
                value.set_sensitive(true);
            }
            headers.insert(name, value);
        }
        if webhook.json && !headers.contains_key(reqwest::header::CONTENT_TYPE) {
            headers.insert(
                reqwest::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        let mut put = |name: &'static str, value: String| {
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert(HeaderName::from_static(name), v);
            }
        };
        put("sluice-task-id", plan.task.to_string());
        put("sluice-attempt", plan.attempt.to_string());
        put("sluice-gate", plan.gate.clone());
        put("sluice-scheduled-at", plan.scheduled_at.rfc3339());
        put("idempotency-key", plan.idempotency_key.clone());
        if let Some(schedule) = &plan.schedule {
            put("sluice-schedule", schedule.clone());
        }
        put("sluice-completion-token", plan.completion_token.clone());
        if !plan.signing_keys.is_empty() {
            // The id stays the same across retries, as the specification asks,
            // so receivers can drop repeats by it too.
            let id = plan.task.to_string();
            let timestamp = crate::clock::now().as_ms() as i64 / 1_000;
            let signature = sign::signature(&plan.signing_keys, &id, timestamp, &webhook.body);
            put("webhook-id", id);
            put("webhook-timestamp", timestamp.to_string());
            put("webhook-signature", signature);
        }
        Ok(headers)
    }
}

/// What came of one exchange with the endpoint.
struct Exchange {
    outcome: Outcome,
    status: Option<u16>,
    error: Option<String>,
    timed_out: bool,
    response: Option<String>,
    lease: Option<Duration>,
    /// What the response said of the endpoint's quota, or why it was ignored.
    quota: Result<Option<Quota>, String>,
}

impl Exchange {
    /// Ended without an answer from the endpoint.
    fn failed(outcome: Outcome, why: String) -> Exchange {
        Exchange {
            outcome,
            status: None,
            error: Some(why),
            timed_out: false,
            response: None,
            lease: None,
            quota: Ok(None),
        }
    }
}

/// The first bytes of the answer's body, as many as came `within`.
async fn read_excerpt(mut response: reqwest::Response, within: Duration) -> Option<String> {
    let mut kept = Vec::new();
    let out_of_time = tokio::time::sleep(within);
    tokio::pin!(out_of_time);
    while kept.len() < RESPONSE_EXCERPT {
        let chunk = tokio::select! {
            chunk = response.chunk() => chunk,
            () = &mut out_of_time => break,
        };
        match chunk {
            Ok(Some(chunk)) => {
                kept.extend_from_slice(&chunk[..chunk.len().min(RESPONSE_EXCERPT - kept.len())])
            }
            _ => break,
        }
    }
    if kept.is_empty() {
        return None;
    }
    Some(String::from_utf8_lossy(&kept).into_owned())
}

/// Whether the outgoing-address guard refused every address the name
/// resolved to: refused like an address named outright, not retried.
fn refused_by_guard(e: &reqwest::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if c.is::<GuardRefused>() {
            return true;
        }
        cause = c.source();
    }
    false
}

fn describe(e: &reqwest::Error) -> String {
    use std::error::Error;
    let mut text = if e.is_connect() {
        "connection failed".to_string()
    } else {
        "request failed".to_string()
    };
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parsed_lately_are_the_same_urls_and_stay_few() {
        let dispatcher = Dispatcher::new(Vec::new()).expect("dispatcher");
        let text = "http://127.0.0.1:9/hook?a=1";
        let first = dispatcher.parse_url(text).expect("parses");
        let again = dispatcher.parse_url(text).expect("parses again");
        assert_eq!(first, again);
        assert_eq!(again, reqwest::Url::parse(text).expect("parses"));
        assert!(dispatcher.parse_url("not a url").is_err());
        for i in 0..URLS_KEPT * 3 {
            let url = format!("http://127.0.0.1:9/{i}");
            assert_eq!(
                dispatcher.parse_url(&url).expect("parses").path(),
                format!("/{i}")
            );
        }
        let kept = dispatcher.urls.lock().expect("urls").len();
        assert!((1..=URLS_KEPT).contains(&kept), "{kept} kept");
    }
}
