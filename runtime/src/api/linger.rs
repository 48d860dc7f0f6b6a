//! Lingering reads: an answer given before the request body is read still reaches
//! the client.
//!
//! A 413 (or a 401) is known before the body has arrived. If the server answered
//! and closed at once, the client, still sending, would meet a reset and never
//! read the answer: a clear error turned into a broken pipe. So, as nginx's
//! lingering close does, whatever of the body the handler left unread is read and
//! discarded first, up to [`LINGER_BYTES`] and for at most [`LINGER_TIME`].

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::BodyExt;

/// The most of an unread body read before answering; a client that announces
/// more is answered at once.
pub const LINGER_BYTES: u64 = 64 << 20;
/// The longest an answer waits for the rest of a body.
pub const LINGER_TIME: Duration = Duration::from_secs(2);

type Unread = Arc<Mutex<Option<Body>>>;

/// Middleware: lends the handler the body and drains what it hands back unread.
pub async fn layer(req: Request, next: Next) -> Response {
    let unread: Unread = Arc::default();
    let req = req.map(|inner| {
        Body::new(Lent {
            inner: Some(inner),
            ended: false,
            unread: unread.clone(),
        })
    });
    let response = next.run(req).await;
    let rest = unread.lock().ok().and_then(|mut slot| slot.take());
    if let Some(rest) = rest {
        drain(rest).await;
    }
    response
}

async fn drain(mut body: Body) {
    if body.size_hint().lower() > LINGER_BYTES {
        return;
    }
    let mut left = LINGER_BYTES;
    let _ = tokio::time::timeout(LINGER_TIME, async {
        while let Some(Ok(frame)) = body.frame().await {
            let len = frame.data_ref().map_or(0, |d| d.len() as u64);
            left = left.saturating_sub(len);
            if left == 0 {
                break;
            }
        }
    })
    .await;
}

/// The request body as the handler sees it; dropped before its end, it puts
/// the rest back for [`layer`] to drain.
struct Lent {
    inner: Option<Body>,
    ended: bool,
    unread: Unread,
}

impl http_body::Body for Lent {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            this.ended = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint())
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        if self.is_end_stream() {
            return;
        }
        if let (Some(inner), Ok(mut slot)) = (self.inner.take(), self.unread.lock()) {
            *slot = Some(inner);
        }
    }
}
