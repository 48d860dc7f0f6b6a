//! A plugin's outgoing HTTP: the `wasi:http` send-request hook, bound to the
//! attempt's gate.
//!
//! Each request, in order:
//! - must pass the same checks as a webhook's (gate `allowed_hosts`, server
//!   `outbound_hosts`, no private or reserved address the gate does not name),
//!   or the guest gets `HTTP-request-denied` before any packet leaves; the URL's
//!   userinfo is dropped and `Host` comes from the checked URL, never from the
//!   guest;
//! - waits until the attempt has fewer than [`MAX_OPEN_REQUESTS`] requests in
//!   flight, then for a permit from the gate (a token, and a concurrency slot
//!   beyond the attempt's own when several run at once), before a byte of its
//!   body is read: until then the body waits in wasmtime's small per-body
//!   buffer;
//! - then runs in a task of its own that holds the permit until the response
//!   has ended (read to its end, capped) or the attempt's deadline passed,
//!   whether or not the guest still wants it. Dropping a request does not free
//!   its slot while the endpoint may still be working on it.
//!
//! Request and response bodies are streamed, never collected whole: what the
//! host holds for a request is a chunk or two. A 429 or 503 slows the gate as a
//! webhook's does.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::Frame;
use http_body_util::{BodyExt, Limited};
use tokio::sync::{mpsc, oneshot};

use super::super::PermitMessage;
use wasmtime_wasi_http::{Error, WasiBody, WasiHttpHooks};

use super::AttemptLog;
use crate::attempt::parse_retry_after;
use crate::attempt::quota::read_quota;
use crate::clock;
use crate::core::{Quota, Signal, TaskId};
use crate::dispatch::{Dispatcher, GuardRefused};

/// Largest request body a plugin may send, and response body it may receive.
pub(crate) const MAX_REQUEST_BODY: usize = 8 * 1024 * 1024;
pub(crate) const MAX_RESPONSE_BODY: usize = 8 * 1024 * 1024;
/// Largest response header section handed to a plugin (names and values).
pub(crate) const MAX_RESPONSE_HEADERS: usize = 64 * 1024;
/// Requests one attempt may have in flight at once; more wait their turn.
pub(crate) const MAX_OPEN_REQUESTS: usize = 32;
/// The size of one write to a request body, and how many writes wasmtime
/// buffers before the guest must wait: what a body holds until it is sent.
pub(crate) const BODY_CHUNK: usize = 16 * 1024;
const BODY_CHUNKS_BUFFERED: usize = 1;
/// Response chunks queued for the guest before the connection waits for it.
const RESPONSE_CHUNKS_QUEUED: usize = 2;

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
    /// The attempt's deadline: no request outlives it.
    pub deadline: tokio::time::Instant,
    /// One permit per request in flight (or asking the gate).
    pub open: Arc<tokio::sync::Semaphore>,
    /// The server's runtime, where a request waits for its permit and goes
    /// out: never behind guests that keep the plugin threads busy.
    pub io: tokio::runtime::Handle,
}

impl Link {
    pub(super) fn open_requests() -> Arc<tokio::sync::Semaphore> {
        Arc::new(tokio::sync::Semaphore::new(MAX_OPEN_REQUESTS))
    }
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
type SendFuture =
    Box<dyn Future<Output = Result<(http::Response<WasiBody>, IoFuture), Error>> + Send>;

impl WasiHttpHooks for GateHooks {
    /// `Host` is built from the checked URL by the client, never taken from the
    /// guest's authority as spelled.
    fn set_host_header(&mut self) -> bool {
        false
    }

    fn p2_outgoing_body_buffer_chunks(&mut self) -> usize {
        BODY_CHUNKS_BUFFERED
    }

    fn p2_outgoing_body_chunk_size(&mut self) -> usize {
        BODY_CHUNK
    }

    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: IoFuture,
    ) -> SendFuture {
        let link = self.link.clone();
        // How long the guest waits for the answer's head once the gate has
        // let the request out (the SDK's `with_timeout`); the attempt's own
        // deadline holds whatever it asks.
        let head_within = options.and_then(|o| o.first_byte_timeout.or(o.connect_timeout));
        // And for each piece of its body after that.
        let between = options.and_then(|o| o.between_bytes_timeout);
        Box::new(async move {
            // On the server's runtime, from asking the gate to the last byte;
            // a guest that drops its request drops the asking too.
            let io = link.io.clone();
            let response = AbortOnDrop(
                io.spawn(async move { link.send(request, head_within, between).await }),
            )
            .await
            .map_err(|e| Error::InternalError(Some(format!("the request's task: {e}"))))??;
            Ok((response, Box::new(async { Ok(()) }) as IoFuture))
        })
    }
}

/// Holds a permit; gives it back when dropped, however the request ended.
struct Permit {
    link: Arc<Link>,
    signal: Signal,
    /// When the endpoint answered: after how long, and the quota it stated.
    answered: Option<(std::time::Duration, Option<Quota>)>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let _ = self.link.permits.send(PermitMessage::Ended {
            task: self.link.task,
            attempt: self.link.attempt,
            signal: self.signal,
            answered: self.answered,
        });
    }
}

/// A request waiting for its permit. Dropped after the gate said yes but
/// before the answer was read (the guest dropped the request as its attempt
/// ended, say), it gives the slot back: otherwise the gate would count that
/// slot taken for good.
struct Asking {
    link: Arc<Link>,
    allowed: oneshot::Receiver<()>,
}

impl Drop for Asking {
    fn drop(&mut self) {
        // Closed first, so the answer is either here now or refused to the
        // driver, which then gives the slot back itself: never both.
        self.allowed.close();
        if self.allowed.try_recv().is_ok() {
            drop(Permit {
                link: self.link.clone(),
                signal: Signal::Neutral,
                answered: None,
            });
        }
    }
}

/// What the request task hands the guest: the response head, then its body.
type Head = Result<(http::StatusCode, http::HeaderMap), Error>;

impl Link {
    /// A note of the host's own in the attempt's log.
    fn note(&self, line: String) {
        if let Ok(mut log) = self.log.lock() {
            log.note(&line);
        }
    }

    async fn permit(self: &Arc<Self>) -> Result<Permit, Error> {
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
        let mut asking = Asking {
            link: self.clone(),
            allowed,
        };
        // Dropped unanswered: the attempt ended or the server is stopping.
        (&mut asking.allowed)
            .await
            .map_err(|_| Error::HttpRequestDenied)?;
        // Says nothing of the endpoint until the endpoint answered.
        Ok(Permit {
            link: self.clone(),
            signal: Signal::Neutral,
            answered: None,
        })
    }

    async fn send(
        self: Arc<Self>,
        request: http::Request<WasiBody>,
        head_within: Option<std::time::Duration>,
        between: Option<std::time::Duration>,
    ) -> Result<http::Response<WasiBody>, Error> {
        let (mut parts, body) = request.into_parts();
        let method = parts.method.clone();
        let mut url = reqwest::Url::parse(&parts.uri.to_string())
            .map_err(|_| Error::HttpRequestUriInvalid)?;
        if !url.username().is_empty() || url.password().is_some() {
            // Credentials in the authority never leave: not as userinfo, not as
            // a `Host`, not as a basic `Authorization` built from them.
            let _ = url.set_username("");
            let _ = url.set_password(None);
            self.note(format!("{method} {url}: userinfo in the URL dropped"));
        }
        let client = match self
            .dispatcher
            .client_for(&url, &self.gate, &self.allowed_hosts)
        {
            Ok(client) => client.clone(),
            Err(why) => {
                self.note(format!("{method} {url} denied: {why}"));
                return Err(Error::HttpRequestDenied);
            }
        };
        parts.headers.remove(http::header::HOST);
        let declared = parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if let Some(n) = declared.filter(|&n| n > MAX_REQUEST_BODY as u64) {
            self.note(format!(
                "{method} {url} refused: a body of {n} bytes; at most {MAX_REQUEST_BODY}"
            ));
            return Err(Error::HttpRequestBodySize(Some(n)));
        }
        // Nothing of the body is read before the gate allows the request.
        let open = self
            .open
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::HttpRequestDenied)?;
        let permit = self.permit().await?;
        let (head_tx, head_rx) = oneshot::channel::<Head>();
        let (body_tx, body_rx) = mpsc::channel(RESPONSE_CHUNKS_QUEUED);
        let sent = Arc::new(Sent::default());
        let request = client
            .request(method, url)
            .headers(parts.headers)
            .body(reqwest::Body::wrap(SyncBody::new(
                Limited::new(body, MAX_REQUEST_BODY),
                sent.clone(),
            )));
        let deadline = self.deadline;
        // Its own task: dropping the guest's future must not end the request
        // (and free its slot) while the endpoint may still be working on it.
        tokio::spawn(async move {
            let _open = open;
            let mut permit = permit;
            let mut head = Some(head_tx);
            let exchange = exchange(request, &mut permit, &mut head, body_tx, &sent);
            if tokio::time::timeout_at(deadline, exchange).await.is_err() {
                // No answer in the attempt's time: the endpoint failed it, as
                // a webhook's timeout does, unless the guest held back its
                // body.
                if permit.answered.is_none() {
                    permit.signal = sent.unanswered();
                }
                if let Some(head) = head.take() {
                    let _ = head.send(Err(Error::ConnectionTimeout));
                }
            }
        });
        // Past the guest's wait the request goes on (its slot stays taken
        // while the endpoint may still be working), answered to no one.
        let head = match head_within {
            Some(within) => (tokio::time::timeout(within, head_rx).await)
                .map_err(|_| Error::HttpResponseTimeout)?,
            None => head_rx.await,
        };
        let (status, headers) = head.map_err(|_| Error::HttpResponseIncomplete)??;
        let mut response = http::Response::new(ChannelBody::new(body_rx, between).boxed_unsync());
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        Ok(response)
    }
}

/// Sends the request and moves its response to the guest: the head through
/// `head`, the body chunk by chunk through `body` (it waits while the guest
/// does not read). A guest that went away still gets its response read to the
/// end, capped, so the permit is held for as long as the endpoint works.
async fn exchange(
    request: reqwest::RequestBuilder,
    permit: &mut Permit,
    head: &mut Option<oneshot::Sender<Head>>,
    body: mpsc::Sender<Result<Bytes, Error>>,
    sent: &Sent,
) {
    let link = permit.link.clone();
    let started = clock::instant();
    let mut response = match request.send().await {
        Ok(response) => response,
        Err(e) => {
            let (code, text) = classify_error(&e);
            link.note(format!("request failed: {text}"));
            // Our own refusal, or the plugin's body, says nothing of the
            // endpoint; a connection that failed or timed out does.
            let ours = matches!(
                code,
                Error::DestinationIpProhibited | Error::HttpRequestDenied
            );
            permit.signal = if ours {
                Signal::Neutral
            } else {
                sent.unanswered()
            };
            if let Some(head) = head.take() {
                let _ = head.send(Err(code));
            }
            return;
        }
    };
    let status = response.status();
    // As a webhook's answer bears on the gate (`attempt::classify`).
    permit.signal = match status.as_u16() {
        429 | 503 => {
            let retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, clock::now()));
            Signal::Throttled { retry_after }
        }
        408 | 500..=599 => Signal::Failed,
        _ => Signal::Healthy,
    };
    let headers = response.headers();
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let quota = read_quota(header, clock::now()).unwrap_or_else(|why| {
        link.note(why);
        None
    });
    permit.answered = Some((started.elapsed(), quota));
    let section: usize = response
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    let refused = if section > MAX_RESPONSE_HEADERS {
        Some(Error::HttpResponseHeaderSectionSize(
            u32::try_from(section).ok(),
        ))
    } else {
        response
            .content_length()
            .filter(|&n| n > MAX_RESPONSE_BODY as u64)
            .map(|n| Error::HttpResponseBodySize(Some(n)))
    };
    let answer = match refused {
        Some(e) => {
            link.note(format!("response refused: {e}"));
            Err(e)
        }
        None => Ok((status, response.headers().clone())),
    };
    let refused = answer.is_err();
    let mut forward = head.take().is_some_and(|h| h.send(answer).is_ok()) && !refused;
    if refused {
        return;
    }
    let mut total = 0usize;
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                total += chunk.len();
                if total > MAX_RESPONSE_BODY {
                    if forward {
                        let _ = body.send(Err(Error::HttpResponseBodySize(None))).await;
                    }
                    break;
                }
                if forward && body.send(Ok(chunk)).await.is_err() {
                    // The guest let go; the endpoint is still answering.
                    forward = false;
                }
            }
            Ok(None) => break,
            Err(_) => {
                if forward {
                    let _ = body.send(Err(Error::HttpResponseIncomplete)).await;
                }
                break;
            }
        }
    }
    tracing::debug!(task = %link.task, status = status.as_u16(), ms = started.elapsed().as_millis() as u64, "plugin request");
}

/// How the guest's side of a request body went: whether a request that
/// failed or went unanswered says anything of the endpoint.
#[derive(Default)]
struct Sent {
    /// The guest's side failed: a body dropped unfinished, longer than it
    /// declared or than the host takes.
    broke: AtomicBool,
    /// The request waits for the guest's next piece of body (it was asked
    /// for and has not come): the guest's delay, not the endpoint's.
    on_guest: AtomicBool,
}

impl Sent {
    /// What a request that failed, or was not answered in time, says of
    /// the endpoint: a failure unless the guest broke its body or held it
    /// back. (A body never read at all, as hyper does with a GET's, is no
    /// delay of the guest's.)
    fn unanswered(&self) -> Signal {
        if self.broke.load(Ordering::Relaxed) || self.on_guest.load(Ordering::Relaxed) {
            Signal::Neutral
        } else {
            Signal::Failed
        }
    }
}

/// The guest's request body for reqwest, which wants a `Sync` body: only ever
/// polled through `&mut`, so the wrapper never locks. Notes how far it got
/// in `sent`.
struct SyncBody<B> {
    body: sync_wrapper::SyncWrapper<B>,
    sent: Arc<Sent>,
}

impl<B> SyncBody<B> {
    fn new(body: B, sent: Arc<Sent>) -> SyncBody<B> {
        SyncBody {
            body: sync_wrapper::SyncWrapper::new(body),
            sent,
        }
    }
}

impl<B: http_body::Body + Unpin> http_body::Body for SyncBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let frame = Pin::new(this.body.get_mut()).poll_frame(cx);
        this.sent
            .on_guest
            .store(frame.is_pending(), Ordering::Relaxed);
        if let Poll::Ready(Some(Err(_))) = &frame {
            this.sent.broke.store(true, Ordering::Relaxed);
        }
        frame
    }
}

/// The response body as the guest reads it: chunks from the request's task.
struct ChannelBody {
    chunks: mpsc::Receiver<Result<Bytes, Error>>,
    /// The guest's wait for each piece (the SDK's `with_timeout`), and the
    /// current one's timer: past it the body ends with a timeout, and the
    /// request goes on (its slot taken) answered to no one.
    between: Option<std::time::Duration>,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl ChannelBody {
    fn new(
        chunks: mpsc::Receiver<Result<Bytes, Error>>,
        between: Option<std::time::Duration>,
    ) -> ChannelBody {
        ChannelBody {
            chunks,
            between,
            timer: None,
        }
    }
}

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = self.get_mut();
        match this.chunks.poll_recv(cx) {
            Poll::Ready(chunk) => {
                this.timer = None;
                Poll::Ready(chunk.map(|c| c.map(Frame::data)))
            }
            Poll::Pending => {
                let Some(between) = this.between else {
                    return Poll::Pending;
                };
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(between)));
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.between = None;
                this.chunks.close();
                Poll::Ready(Some(Err(Error::ConnectionReadTimeout)))
            }
        }
    }
}

/// The `wasi:http` error code for a failed send, and the text for the log:
/// from the error's causes, never from its wording.
fn classify_error(e: &reqwest::Error) -> (Error, String) {
    use std::error::Error as _;
    let mut text = e.to_string();
    let mut code = None;
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        code = code.or_else(|| cause_code(s));
        source = s.source();
    }
    let code = code.unwrap_or(if e.is_timeout() {
        Error::ConnectionTimeout
    } else if e.is_connect() {
        Error::DestinationUnavailable
    } else if e.is_body() {
        Error::HttpRequestBodySize(None)
    } else {
        Error::HttpProtocolError
    });
    (code, text)
}

/// The error code one cause in the chain stands for, if it is one we know.
fn cause_code(cause: &(dyn std::error::Error + 'static)) -> Option<Error> {
    use tokio_rustls::rustls;
    if cause.is::<GuardRefused>() {
        return Some(Error::DestinationIpProhibited);
    }
    if cause.is::<crate::dispatch::DnsFailed>() {
        return Some(Error::DnsError {
            rcode: None,
            info_code: None,
        });
    }
    if cause.is::<http_body_util::LengthLimitError>() {
        return Some(Error::HttpRequestBodySize(None));
    }
    let tls = |e: &rustls::Error| match e {
        rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented => {
            Error::TlsCertificateError
        }
        rustls::Error::AlertReceived(alert) => Error::TlsAlertReceived {
            alert_id: Some(u8::from(*alert)),
            alert_message: Some(format!("{alert:?}")),
        },
        _ => Error::TlsProtocolError,
    };
    if let Some(e) = cause.downcast_ref::<rustls::Error>() {
        return Some(tls(e));
    }
    let mut io = cause.downcast_ref::<std::io::Error>()?;
    // An I/O error hides the error it carries from `source`, and may carry
    // another I/O error.
    while let Some(inner) = io.get_ref() {
        if let Some(e) = inner.downcast_ref::<rustls::Error>() {
            return Some(tls(e));
        }
        match inner.downcast_ref::<std::io::Error>() {
            Some(e) => io = e,
            None => break,
        }
    }
    use std::io::ErrorKind;
    match io.kind() {
        ErrorKind::ConnectionRefused => Some(Error::ConnectionRefused),
        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe => {
            Some(Error::ConnectionTerminated)
        }
        ErrorKind::TimedOut => Some(Error::ConnectionTimeout),
        ErrorKind::HostUnreachable | ErrorKind::NetworkUnreachable => {
            Some(Error::DestinationIpUnroutable)
        }
        _ => None,
    }
}

/// A task that ends when whoever awaits it goes away.
pub(super) struct AbortOnDrop<T>(pub tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<T> Future for AbortOnDrop<T> {
    type Output = Result<T, tokio::task::JoinError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::task::JoinHandle;

    type Asked = (
        JoinHandle<Result<(), Error>>,
        oneshot::Sender<()>,
        mpsc::UnboundedReceiver<PermitMessage>,
    );

    /// A request of task 7's first attempt that has asked the gate: its
    /// task, the driver's end of the answer, and the messages to the driver.
    async fn asking() -> Asked {
        let (permits, mut messages) = mpsc::unbounded_channel();
        let link = Arc::new(Link {
            task: TaskId(7),
            attempt: 1,
            gate: "g".into(),
            allowed_hosts: Arc::from([]),
            dispatcher: Dispatcher::new(Vec::new()).expect("dispatcher"),
            permits,
            log: Arc::default(),
            next_ask: AtomicU64::new(0),
            deadline: tokio::time::Instant::from_std(clock::instant()),
            open: Link::open_requests(),
            io: tokio::runtime::Handle::current(),
        });
        let task = tokio::spawn(async move { link.permit().await.map(drop) });
        let Some(PermitMessage::Ask { reply, .. }) = messages.recv().await else {
            panic!("the request did not ask the gate");
        };
        (task, reply, messages)
    }

    /// The gate allows a request whose guest has just dropped it: the slot
    /// the permit took comes back, once.
    #[tokio::test]
    async fn a_permit_granted_to_a_dropped_request_is_given_back() {
        let (task, reply, mut messages) = asking().await;
        // Allowed, and dropped before it could read the answer (on this
        // one-thread runtime the task is not polled in between).
        assert!(reply.send(()).is_ok());
        task.abort();
        assert!(task.await.is_err_and(|e| e.is_cancelled()));
        assert!(matches!(
            messages.try_recv(),
            Ok(PermitMessage::Ended {
                task: TaskId(7),
                attempt: 1,
                ..
            })
        ));
        assert!(messages.try_recv().is_err(), "the slot came back twice");
    }

    /// Dropped before the gate allowed it, the request refuses the answer:
    /// the driver gives the slot back then, and the request sends nothing.
    #[tokio::test]
    async fn a_request_dropped_before_its_permit_refuses_it() {
        let (task, reply, mut messages) = asking().await;
        task.abort();
        assert!(task.await.is_err_and(|e| e.is_cancelled()));
        assert!(reply.send(()).is_err());
        assert!(messages.try_recv().is_err());
    }
}
