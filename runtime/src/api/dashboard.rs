//! The dashboard: a page and its static files, compiled into the binary.
//!
//! `GET /` is the page shell and `GET /assets/{file}` its scripts, styles and
//! icon; both are open (see `auth::required`), and every number the page shows
//! comes from the `/v1` API with the user's token. Nothing is fetched from
//! anywhere else, and the Content-Security-Policy says so to the browser.

use axum::extract::Path;
use axum::http::{HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::{Router, routing::get};

use super::{ApiError, AppState};

/// Same origin only, no inline script or style, no framing, no plugins.
const POLICY: &str = "default-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const SVG: &str = "image/svg+xml";

macro_rules! asset {
    ($name:literal, $kind:expr) => {
        (
            $name,
            $kind,
            include_bytes!(concat!("../../assets/", $name)).as_slice(),
        )
    };
}

/// Every file under `/assets/`: name, content type, bytes.
const ASSETS: &[(&str, &str, &[u8])] = &[
    asset!("app.css", CSS),
    asset!("app.js", JS),
    asset!("api.js", JS),
    asset!("charts.js", JS),
    asset!("dom.js", JS),
    asset!("format.js", JS),
    asset!("gates.js", JS),
    asset!("plugins.js", JS),
    asset!("schedules.js", JS),
    asset!("tasks.js", JS),
    asset!("icon.svg", SVG),
];

const INDEX: &[u8] = include_bytes!("../../assets/index.html");

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/assets/{file}", get(asset))
}

async fn index() -> Response {
    file(HTML, INDEX)
}

async fn asset(Path(name): Path<String>) -> Result<Response, ApiError> {
    ASSETS
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, kind, bytes)| file(kind, bytes))
        .ok_or_else(|| ApiError::not_found(format!("no dashboard file {name:?}")))
}

fn file(kind: &'static str, bytes: &'static [u8]) -> Response {
    let headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static(kind)),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(POLICY),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        // Revalidate each load, so a new binary's files are picked up at once.
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (
            HeaderName::from_static("cross-origin-opener-policy"),
            HeaderValue::from_static("same-origin"),
        ),
    ];
    (headers, bytes).into_response()
}
