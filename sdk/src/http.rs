//! Outgoing HTTP through the task's gate: [`Http`], [`Request`], [`Response`]
//! and the typed [`HttpError`].
//!
//! A thin layer over wstd's client, which speaks `wasi:http/outgoing-handler`.
//! The gate itself is enforced by the host: every request waits for a token
//! from the task's gate, and a request to a host outside the gate's allowed
//! hosts comes back as [`HttpError::Denied`]. This module does not follow
//! redirects, retry, or cache: a task that wants another try returns
//! [`Error::Retry`](crate::Error::Retry) and lets the gate pace it.

use std::borrow::Cow;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde::de::DeserializeOwned;
use wasip2::http::types::ErrorCode;
use wstd::http::body::util::BodyExt as _;

/// How long a request may take to connect, to start answering, and between
/// two pieces of the body, unless [`Http::with_timeout`] says otherwise.
const TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);

/// The largest response body read into memory, unless
/// [`Http::with_max_body_bytes`] says otherwise. Plugins have 64 MiB by default.
const BODY_BYTES_MAX_DEFAULT: usize = 8 << 20;

/// How much of an error response's body [`HttpError::Status`] keeps.
const ERROR_BODY_CHARS_MAX: usize = 512;

/// An HTTP client bound to the task's gate; get one from
/// [`Context::http`](crate::Context::http).
///
/// Every request takes a token from the task's gate, so a loop of requests
/// runs at the gate's rate, never faster, and at most the gate's concurrency
/// are in flight. The JSON helpers treat any status but 2xx as an error
/// ([`HttpError::Status`]); [`Http::send`] returns every response as it is.
///
/// ```no_run
/// # async fn example(ctx: sluice_sdk::Context) -> Result<(), sluice_sdk::Error> {
/// #[derive(serde::Deserialize)]
/// struct App { id: String }
///
/// let http = ctx.http();
/// let apps: Vec<App> = http.get_json("http://apps.internal:8080/apps").await?;
/// for app in &apps {
///     let url = format!("http://apps.internal:8080/apps/{}/hibernate", app.id);
///     http.post_json(&url, &serde_json::json!({ "reason": "idle" })).await?;
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Http {
    timeout: Duration,
    body_bytes_max: usize,
}

impl Http {
    pub(crate) fn new() -> Self {
        Http {
            timeout: TIMEOUT_DEFAULT,
            body_bytes_max: BODY_BYTES_MAX_DEFAULT,
        }
    }

    /// Sets how long a request may take to connect, to start answering, and
    /// between two pieces of the body (30 s by default). The attempt's
    /// deadline applies regardless.
    ///
    /// ```no_run
    /// # fn example(ctx: sluice_sdk::Context) {
    /// let http = ctx.http().with_timeout(std::time::Duration::from_secs(5));
    /// # }
    /// ```
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets the largest response body to read (8 MiB by default); a larger
    /// one is [`HttpError::BodyTooLarge`].
    ///
    /// ```no_run
    /// # fn example(ctx: sluice_sdk::Context) {
    /// let http = ctx.http().with_max_body_bytes(64 << 10);
    /// # }
    /// ```
    pub fn with_max_body_bytes(mut self, bytes: usize) -> Self {
        self.body_bytes_max = bytes;
        self
    }

    /// Sends a request and returns the response whatever its status; only
    /// failures to get a response are errors.
    ///
    /// ```no_run
    /// # async fn example(ctx: sluice_sdk::Context) -> Result<(), sluice_sdk::Error> {
    /// use sluice_sdk::{Error, Request};
    ///
    /// let request = Request::post("https://pay.example.com/v1/charges")
    ///     .header("idempotency-key", ctx.idempotency_key())
    ///     .json(&serde_json::json!({ "invoice": "inv_42" }))?;
    /// let response = ctx.http().send(request).await?;
    /// if response.status() == 402 {
    ///     return Err(Error::fail("card declined"));
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn send(&self, request: Request) -> Result<Response, HttpError> {
        let url = request.url.clone();
        let outgoing = request.into_wstd()?;
        let mut client = wstd::http::Client::new();
        client.set_connect_timeout(self.timeout);
        client.set_first_byte_timeout(self.timeout);
        client.set_between_bytes_timeout(self.timeout);
        let response = client
            .send(outgoing)
            .await
            .map_err(|err| HttpError::from_wstd(&url, &err))?;
        let status = response.status().as_u16();
        let (parts, body) = response.into_parts();
        let body = self.read_body(&url, &parts.headers, body).await?;
        Ok(Response {
            url,
            status,
            headers: parts.headers,
            body,
        })
    }

    /// `GET url`, expecting a 2xx answer with a JSON body of type `T`.
    ///
    /// ```no_run
    /// # async fn example(ctx: sluice_sdk::Context) -> Result<(), sluice_sdk::Error> {
    /// let status: serde_json::Value = ctx.http().get_json("http://api.internal/status").await?;
    /// # Ok(()) }
    /// ```
    pub async fn get_json<T: DeserializeOwned>(&self, url: &str) -> Result<T, HttpError> {
        let request = Request::get(url).header("accept", "application/json");
        self.send(request).await?.error_for_status()?.json()
    }

    /// `POST url` with `body` as JSON, expecting a 2xx answer. Read a JSON
    /// answer with [`Response::json`].
    ///
    /// ```no_run
    /// # async fn example(ctx: sluice_sdk::Context) -> Result<(), sluice_sdk::Error> {
    /// #[derive(serde::Deserialize)]
    /// struct Created { id: u64 }
    ///
    /// let created: Created = ctx.http()
    ///     .post_json("http://api.internal/reports", &serde_json::json!({ "kind": "daily" }))
    ///     .await?
    ///     .json()?;
    /// # Ok(()) }
    /// ```
    pub async fn post_json<B: Serialize + ?Sized>(
        &self,
        url: &str,
        body: &B,
    ) -> Result<Response, HttpError> {
        let request = Request::post(url).json(body)?;
        self.send(request).await?.error_for_status()
    }

    /// `PUT url` with `body` as JSON, expecting a 2xx answer.
    ///
    /// ```no_run
    /// # async fn example(ctx: sluice_sdk::Context) -> Result<(), sluice_sdk::Error> {
    /// ctx.http().put_json("http://api.internal/flags/beta", &true).await?;
    /// # Ok(()) }
    /// ```
    pub async fn put_json<B: Serialize + ?Sized>(
        &self,
        url: &str,
        body: &B,
    ) -> Result<Response, HttpError> {
        let request = Request::put(url).json(body)?;
        self.send(request).await?.error_for_status()
    }

    /// `DELETE url`, expecting a 2xx answer. A 404 is an
    /// [`HttpError::Status`]; match on [`HttpError::status`] to treat it as
    /// "already gone".
    ///
    /// ```no_run
    /// # async fn example(ctx: sluice_sdk::Context) -> Result<(), sluice_sdk::Error> {
    /// match ctx.http().delete("http://api.internal/instances/i-42").await {
    ///     Ok(_) => sluice_sdk::info!("deleted i-42"),
    ///     Err(err) if err.status() == Some(404) => sluice_sdk::info!("i-42 was already gone"),
    ///     Err(err) => return Err(err.into()),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn delete(&self, url: &str) -> Result<Response, HttpError> {
        self.send(Request::delete(url)).await?.error_for_status()
    }

    async fn read_body(
        &self,
        url: &str,
        headers: &wstd::http::HeaderMap,
        body: wstd::http::Body,
    ) -> Result<Vec<u8>, HttpError> {
        let too_large = || HttpError::BodyTooLarge {
            url: url.to_string(),
            limit: self.body_bytes_max,
        };
        let announced = headers
            .get("content-length")
            .and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
        if announced.is_some_and(|len| len > self.body_bytes_max as u64) {
            return Err(too_large());
        }
        let mut body = body.into_boxed_body();
        let mut data = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|err| HttpError::from_wstd(url, &err))?;
            if let Ok(chunk) = frame.into_data() {
                if data.len() + chunk.len() > self.body_bytes_max {
                    return Err(too_large());
                }
                data.extend_from_slice(&chunk);
            }
        }
        Ok(data)
    }
}

/// An HTTP request to send with [`Http::send`].
///
/// ```
/// use sluice_sdk::Request;
///
/// let request = Request::patch("http://api.internal/apps/7")
///     .header("x-reason", "idle")
///     .json(&serde_json::json!({ "state": "hibernated" }))
///     .expect("a JSON value always serializes");
/// assert_eq!(request.url(), "http://api.internal/apps/7");
/// ```
#[derive(Debug, Clone)]
pub struct Request {
    method: String,
    url: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    /// A request with any method, such as `"OPTIONS"`. The URL must be
    /// absolute, `http` or `https`.
    ///
    /// ```
    /// let request = sluice_sdk::Request::new("HEAD", "http://api.internal/health");
    /// ```
    pub fn new(method: &str, url: impl Into<String>) -> Self {
        Request {
            method: method.to_string(),
            url: url.into(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// A `GET` request.
    ///
    /// ```
    /// let request = sluice_sdk::Request::get("http://api.internal/apps");
    /// ```
    pub fn get(url: impl Into<String>) -> Self {
        Request::new("GET", url)
    }

    /// A `POST` request.
    ///
    /// ```
    /// let request = sluice_sdk::Request::post("http://api.internal/apps").body("hello");
    /// ```
    pub fn post(url: impl Into<String>) -> Self {
        Request::new("POST", url)
    }

    /// A `PUT` request.
    ///
    /// ```
    /// let request = sluice_sdk::Request::put("http://api.internal/apps/7/owner").body("ops");
    /// ```
    pub fn put(url: impl Into<String>) -> Self {
        Request::new("PUT", url)
    }

    /// A `PATCH` request.
    ///
    /// ```
    /// let request = sluice_sdk::Request::patch("http://api.internal/apps/7");
    /// ```
    pub fn patch(url: impl Into<String>) -> Self {
        Request::new("PATCH", url)
    }

    /// A `DELETE` request.
    ///
    /// ```
    /// let request = sluice_sdk::Request::delete("http://api.internal/apps/7");
    /// ```
    pub fn delete(url: impl Into<String>) -> Self {
        Request::new("DELETE", url)
    }

    /// Adds a header. The host may refuse some (such as `host`); that comes
    /// back as [`HttpError::InvalidRequest`] or [`HttpError::Denied`].
    ///
    /// ```
    /// let request = sluice_sdk::Request::get("http://api.internal/apps").header("accept", "text/csv");
    /// ```
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the body, as bytes or text.
    ///
    /// ```
    /// let request = sluice_sdk::Request::post("http://api.internal/notes")
    ///     .header("content-type", "text/plain")
    ///     .body("restarted by sluice");
    /// ```
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// Sets the body to `body` as JSON, with `content-type: application/json`.
    ///
    /// ```
    /// let request = sluice_sdk::Request::post("http://api.internal/apps")
    ///     .json(&serde_json::json!({ "name": "web" }))
    ///     .expect("a JSON value always serializes");
    /// ```
    pub fn json<B: Serialize + ?Sized>(self, body: &B) -> Result<Self, HttpError> {
        let bytes = serde_json::to_vec(body).map_err(|err| HttpError::InvalidRequest {
            url: self.url.clone(),
            detail: format!("body is not JSON: {err}"),
        })?;
        Ok(self.header("content-type", "application/json").body(bytes))
    }

    /// The URL the request goes to.
    ///
    /// ```
    /// assert_eq!(sluice_sdk::Request::get("http://a.test/").url(), "http://a.test/");
    /// ```
    pub fn url(&self) -> &str {
        &self.url
    }

    fn into_wstd(self) -> Result<wstd::http::Request<wstd::http::Body>, HttpError> {
        let invalid = |detail: String| HttpError::InvalidRequest {
            url: self.url.clone(),
            detail,
        };
        let uri: wstd::http::Uri = self.url.parse().map_err(|err| invalid(format!("{err}")))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.authority().is_none() {
            return Err(invalid("needs an absolute http or https URL".into()));
        }
        let mut builder = wstd::http::Request::builder()
            .method(self.method.as_str())
            .uri(uri);
        for (name, value) in &self.headers {
            builder = builder.header(name, value);
        }
        builder
            .body(wstd::http::Body::from(self.body))
            .map_err(|err| invalid(err.to_string()))
    }
}

/// An HTTP response, its body read in full.
///
/// ```no_run
/// # async fn example(ctx: sluice_sdk::Context) -> Result<(), sluice_sdk::Error> {
/// let response = ctx.http().send(sluice_sdk::Request::get("http://api.internal/apps")).await?;
/// sluice_sdk::info!("{} answered {} with {} bytes", response.url(), response.status(), response.body().len());
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Response {
    url: String,
    status: u16,
    headers: wstd::http::HeaderMap,
    body: Vec<u8>,
}

impl Response {
    /// The status code, such as 200.
    ///
    /// ```no_run
    /// # async fn example(response: sluice_sdk::Response) {
    /// if response.status() == 404 { /* gone */ }
    /// # }
    /// ```
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The URL the request went to.
    ///
    /// ```no_run
    /// # fn example(response: sluice_sdk::Response) {
    /// sluice_sdk::debug!("answer from {}", response.url());
    /// # }
    /// ```
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A header's value, if present and text; names are case-insensitive.
    ///
    /// ```no_run
    /// # fn example(response: sluice_sdk::Response) {
    /// let kind = response.header("content-type").unwrap_or("unknown");
    /// # }
    /// ```
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)?.to_str().ok()
    }

    /// The body's bytes.
    ///
    /// ```no_run
    /// # fn example(response: sluice_sdk::Response) {
    /// let size = response.body().len();
    /// # }
    /// ```
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The body as text; invalid UTF-8 becomes `�`.
    ///
    /// ```no_run
    /// # fn example(response: sluice_sdk::Response) {
    /// sluice_sdk::info!("answer: {}", response.text());
    /// # }
    /// ```
    pub fn text(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.body)
    }

    /// The body parsed as JSON into `T`.
    ///
    /// ```no_run
    /// # fn example(response: sluice_sdk::Response) -> Result<(), sluice_sdk::Error> {
    /// let value: serde_json::Value = response.json()?;
    /// # Ok(()) }
    /// ```
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, HttpError> {
        serde_json::from_slice(&self.body).map_err(|source| HttpError::Json {
            url: self.url.clone(),
            source,
        })
    }

    /// How long the server asked to wait (`Retry-After`, in seconds or as an
    /// HTTP date), if it did.
    ///
    /// ```no_run
    /// # fn example(response: sluice_sdk::Response) -> Result<(), sluice_sdk::Error> {
    /// if response.status() == 503 {
    ///     return Err(match response.retry_after() {
    ///         Some(after) => sluice_sdk::Error::retry_after(after, "maintenance"),
    ///         None => sluice_sdk::Error::retry("maintenance"),
    ///     });
    /// }
    /// # Ok(()) }
    /// ```
    pub fn retry_after(&self) -> Option<Duration> {
        // The only clock reading in the SDK: the guest's wall clock is the
        // host's (WASI `wall-clock`), which the simulation controls.
        #[expect(
            clippy::disallowed_methods,
            reason = "the host provides the guest's clock"
        )]
        let now = SystemTime::now();
        parse_retry_after(self.header("retry-after")?, now)
    }

    /// The response itself if its status is 2xx, else [`HttpError::Status`].
    ///
    /// ```no_run
    /// # async fn example(ctx: sluice_sdk::Context) -> Result<(), sluice_sdk::Error> {
    /// let request = sluice_sdk::Request::get("http://api.internal/report.csv");
    /// let csv = ctx.http().send(request).await?.error_for_status()?;
    /// # Ok(()) }
    /// ```
    pub fn error_for_status(self) -> Result<Response, HttpError> {
        if (200..300).contains(&self.status) {
            return Ok(self);
        }
        let retry_after = self.retry_after();
        let body: String = self.text().chars().take(ERROR_BODY_CHARS_MAX).collect();
        Err(HttpError::Status {
            url: self.url,
            status: self.status,
            retry_after,
            body,
        })
    }
}

/// Why an HTTP request did not give the answer that was asked for.
///
/// `?` turns it into an [`Error`](crate::Error): a retry or a failure, by the
/// table on `From<HttpError> for Error`.
///
/// ```no_run
/// # async fn example(ctx: sluice_sdk::Context) -> Result<(), sluice_sdk::Error> {
/// use sluice_sdk::HttpError;
///
/// match ctx.http().get_json::<serde_json::Value>("https://elsewhere.example.org/").await {
///     Err(HttpError::Denied { url }) => sluice_sdk::warn!("the gate does not allow {url}"),
///     other => { other?; }
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    /// The host refused the request before sending it: the URL's host is not
    /// in the gate's allowed hosts, or it resolves to a private, loopback or
    /// link-local address that the gate does not name.
    #[error("request to {url} denied: its host is not in the gate's allowed hosts")]
    Denied {
        /// The URL asked for.
        url: String,
    },
    /// Connecting, or waiting for the answer, took longer than the timeout.
    #[error("request to {url} timed out")]
    Timeout {
        /// The URL asked for.
        url: String,
    },
    /// The connection failed: DNS, refused, reset, TLS, a broken answer.
    #[error("request to {url} failed: {detail}")]
    Transport {
        /// The URL asked for.
        url: String,
        /// What went wrong, as the host reported it.
        detail: String,
    },
    /// The server answered with a status the caller did not accept.
    #[error("{url} answered {status}{}", body_suffix(.body))]
    Status {
        /// The URL asked for.
        url: String,
        /// The status code.
        status: u16,
        /// The answer's `Retry-After`, if it had one.
        retry_after: Option<Duration>,
        /// The start of the answer's body (up to 512 characters).
        body: String,
    },
    /// The answer's body was larger than the limit.
    #[error("answer from {url} is larger than {limit} bytes")]
    BodyTooLarge {
        /// The URL asked for.
        url: String,
        /// The limit, in bytes.
        limit: usize,
    },
    /// The answer's body was not the JSON expected.
    #[error("answer from {url} is not the JSON expected: {source}")]
    Json {
        /// The URL asked for.
        url: String,
        /// What did not parse.
        source: serde_json::Error,
    },
    /// The request could not be made: a malformed URL, header or method.
    #[error("invalid request to {url}: {detail}")]
    InvalidRequest {
        /// The URL asked for.
        url: String,
        /// What is wrong with it.
        detail: String,
    },
}

impl HttpError {
    /// The status code, for [`HttpError::Status`].
    ///
    /// ```no_run
    /// # fn example(err: sluice_sdk::HttpError) {
    /// let already_gone = err.status() == Some(404);
    /// # }
    /// ```
    pub fn status(&self) -> Option<u16> {
        match self {
            HttpError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The URL the request was for.
    ///
    /// ```no_run
    /// # fn example(err: sluice_sdk::HttpError) {
    /// sluice_sdk::warn!("{} failed", err.url());
    /// # }
    /// ```
    pub fn url(&self) -> &str {
        match self {
            HttpError::Denied { url }
            | HttpError::Timeout { url }
            | HttpError::Transport { url, .. }
            | HttpError::Status { url, .. }
            | HttpError::BodyTooLarge { url, .. }
            | HttpError::Json { url, .. }
            | HttpError::InvalidRequest { url, .. } => url,
        }
    }

    /// Classifies an error from wstd, whose errors carry the host's
    /// `wasi:http` error code when there is one.
    fn from_wstd(url: &str, err: &wstd::http::Error) -> Self {
        match err
            .chain()
            .find_map(|cause| cause.downcast_ref::<ErrorCode>())
        {
            Some(code) => HttpError::from_code(url, code),
            None => HttpError::Transport {
                url: url.to_string(),
                detail: format!("{err:#}"),
            },
        }
    }

    fn from_code(url: &str, code: &ErrorCode) -> Self {
        let url = url.to_string();
        match code {
            ErrorCode::HttpRequestDenied | ErrorCode::DestinationIpProhibited => {
                HttpError::Denied { url }
            }
            ErrorCode::DnsTimeout
            | ErrorCode::ConnectionTimeout
            | ErrorCode::ConnectionReadTimeout
            | ErrorCode::ConnectionWriteTimeout
            | ErrorCode::HttpResponseTimeout => HttpError::Timeout { url },
            ErrorCode::HttpRequestMethodInvalid
            | ErrorCode::HttpRequestUriInvalid
            | ErrorCode::HttpRequestUriTooLong
            | ErrorCode::HttpRequestHeaderSectionSize(_)
            | ErrorCode::HttpRequestHeaderSize(_)
            | ErrorCode::HttpRequestBodySize(_) => HttpError::InvalidRequest {
                url,
                detail: code.to_string(),
            },
            ErrorCode::HttpResponseBodySize(limit) => HttpError::BodyTooLarge {
                url,
                limit: limit.map_or(0, |limit| usize::try_from(limit).unwrap_or(usize::MAX)),
            },
            _ => HttpError::Transport {
                url,
                detail: code.to_string(),
            },
        }
    }
}

fn body_suffix(body: &str) -> String {
    let body = body.trim();
    if body.is_empty() {
        String::new()
    } else {
        format!(": {body}")
    }
}

/// `Retry-After` is either seconds or an HTTP date; a date in the past means
/// "now", and anything else is ignored.
fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_or_a_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        let later = httpdate::fmt_http_date(now + Duration::from_secs(90));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(90))
        );
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(90));
        assert_eq!(parse_retry_after(&earlier, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
    }

    /// The host's `wasi:http` error codes, as a plugin sees them: a refusal
    /// by the gate is `Denied` whichever code the host picks, and timeouts are
    /// told apart from other transport failures.
    #[test]
    fn host_error_codes_become_typed_errors() {
        let url = "http://10.0.0.1/";
        assert!(matches!(
            HttpError::from_code(url, &ErrorCode::HttpRequestDenied),
            HttpError::Denied { .. }
        ));
        assert!(matches!(
            HttpError::from_code(url, &ErrorCode::DestinationIpProhibited),
            HttpError::Denied { .. }
        ));
        assert!(matches!(
            HttpError::from_code(url, &ErrorCode::ConnectionTimeout),
            HttpError::Timeout { .. }
        ));
        assert!(matches!(
            HttpError::from_code(url, &ErrorCode::ConnectionRefused),
            HttpError::Transport { .. }
        ));
        assert!(matches!(
            HttpError::from_code(url, &ErrorCode::HttpRequestUriInvalid),
            HttpError::InvalidRequest { .. }
        ));
        let denied = HttpError::from_code(url, &ErrorCode::HttpRequestDenied);
        assert_eq!(
            denied.to_string(),
            "request to http://10.0.0.1/ denied: its host is not in the gate's allowed hosts"
        );
        assert_eq!(denied.url(), url);
        assert_eq!(denied.status(), None);
    }

    #[test]
    fn wstd_errors_are_classified_through_their_context() {
        let err = wstd::http::Error::from(ErrorCode::HttpRequestDenied).context("sending");
        assert!(matches!(
            HttpError::from_wstd("http://a.test/", &err),
            HttpError::Denied { .. }
        ));
        let other = wstd::http::Error::msg("stream closed");
        assert!(matches!(
            HttpError::from_wstd("http://a.test/", &other),
            HttpError::Transport { detail, .. } if detail == "stream closed"
        ));
    }

    #[test]
    fn requests_need_absolute_http_urls() {
        for url in ["/apps", "ftp://a.test/x", "http//a.test", ""] {
            assert!(
                matches!(
                    Request::get(url).into_wstd(),
                    Err(HttpError::InvalidRequest { .. })
                ),
                "{url:?}"
            );
        }
        let request = Request::post("https://a.test:8443/x?y=1")
            .header("x-a", "b")
            .json(&serde_json::json!({ "k": 1 }))
            .expect("json")
            .into_wstd()
            .expect("valid");
        assert_eq!(request.method().as_str(), "POST");
        assert_eq!(request.uri().to_string(), "https://a.test:8443/x?y=1");
        assert_eq!(request.headers()["content-type"], "application/json");
        assert!(matches!(
            Request::get("http://a.test/")
                .header("bad header", "x")
                .into_wstd(),
            Err(HttpError::InvalidRequest { .. })
        ));
    }

    #[test]
    fn status_errors_keep_the_start_of_the_body() {
        let response = Response {
            url: "http://a.test/x".into(),
            status: 503,
            headers: {
                let mut headers = wstd::http::HeaderMap::new();
                headers.insert("retry-after", "7".parse().expect("header"));
                headers
            },
            body: "x".repeat(2000).into_bytes(),
        };
        let err = response.error_for_status().expect_err("503 is an error");
        match &err {
            HttpError::Status {
                status,
                retry_after,
                body,
                ..
            } => {
                assert_eq!(*status, 503);
                assert_eq!(*retry_after, Some(Duration::from_secs(7)));
                assert_eq!(body.len(), ERROR_BODY_CHARS_MAX);
            }
            other => panic!("expected a status error, got {other:?}"),
        }
        assert!(
            err.to_string()
                .starts_with("http://a.test/x answered 503: xxx")
        );
    }
}
