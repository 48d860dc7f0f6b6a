//! API tokens and roles.
//!
//! A token is 32 random bytes, written `sluice_` + base64url. The server keeps
//! only `sha256:<hex>` of each token, so a leaked config file opens nothing.
//! A presented token is hashed and compared with every configured hash in
//! constant time; the comparison does not stop at the first match.
//!
//! Which role each endpoint needs is one pure function, [`required`], and the
//! matrix is written out in SECURITY.md.

use std::fmt;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{ApiError, BATCH_BODY_LIMIT};

/// Roles, weakest first: a stronger role can do everything a weaker one can.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Reader,
    Writer,
    Admin,
}

impl Role {
    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "reader" => Some(Role::Reader),
            "writer" => Some(Role::Writer),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Writer => "writer",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an endpoint asks of the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Anyone: health checks, and the dashboard's page shell (its data calls
    /// are checked like any other).
    Open,
    /// Long-running work reports: the attempt's completion token is the
    /// credential (it is checked by the shell, and a wrong one changes nothing).
    CompletionToken,
    Needs(Role),
}

/// The endpoint-to-role matrix. Anything not listed needs `admin`, so a new
/// endpoint is closed until someone opens it here.
pub fn required(method: &Method, path: &str) -> Access {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let read = *method == Method::GET || *method == Method::HEAD;
    match segments.as_slice() {
        ["healthz"] | ["readyz"] if read => Access::Open,
        [""] if read => Access::Open,
        ["assets", ..] if read => Access::Open,
        ["metrics"] if read => Access::Needs(Role::Reader),
        ["v1", "tasks", _, "complete" | "fail" | "heartbeat"] if *method == Method::POST => {
            Access::CompletionToken
        }
        // Backups hold every secret: admin whatever the method.
        ["v1", "admin", ..] => Access::Needs(Role::Admin),
        ["v1", ..] if read => Access::Needs(Role::Reader),
        ["v1", "tasks", ..] | ["v1", "schedules", ..] => Access::Needs(Role::Writer),
        _ if read => Access::Needs(Role::Reader),
        _ => Access::Needs(Role::Admin),
    }
}

/// A configured token: its name (for logs), role and hash.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenEntry {
    pub name: String,
    pub role: Role,
    hash: [u8; 32],
}

// Hand-written so a hash never lands in a log line by way of `{:?}`.
impl fmt::Debug for TokenEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenEntry")
            .field("name", &self.name)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

impl TokenEntry {
    /// Parses a config entry; `hash` is `sha256:` and 64 hex digits.
    pub fn new(name: &str, role: &str, hash: &str) -> Result<TokenEntry, String> {
        let role = Role::parse(role)
            .ok_or_else(|| format!("token {name:?}: role must be admin, writer or reader"))?;
        let hex = hash
            .strip_prefix("sha256:")
            .filter(|h| h.len() == 64 && h.is_ascii())
            .ok_or_else(|| {
                format!(
                    "token {name:?}: hash must be sha256: and 64 hex digits, as `sluice token new` prints"
                )
            })?;
        let mut bytes = [0u8; 32];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
                .map_err(|_| format!("token {name:?}: hash has a non-hex digit"))?;
        }
        Ok(TokenEntry {
            name: name.to_string(),
            role,
            hash: bytes,
        })
    }
}

/// A new random token and the hash to put in the config.
pub fn new_token() -> Result<(String, String), getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    let token = format!(
        "sluice_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let hash = hash_text(&token);
    Ok((token, hash))
}

pub fn hash_text(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    format!("sha256:{}", crate::hex::encode(&digest))
}

/// The configured tokens. Empty means auth is off, which the config only
/// allows on a loopback listener.
#[derive(Clone, Debug, Default)]
pub struct Tokens {
    entries: Vec<TokenEntry>,
}

impl Tokens {
    pub fn new(entries: Vec<TokenEntry>) -> Tokens {
        Tokens { entries }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entry a presented token belongs to. Every entry is compared, in
    /// constant time, whatever matches.
    pub fn find(&self, presented: &str) -> Option<&TokenEntry> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found = None;
        for entry in &self.entries {
            if bool::from(entry.hash.ct_eq(&digest)) {
                found = Some(entry);
            }
        }
        found
    }

    /// Decides one request: `Ok` to go on, or the 401/403 to answer.
    pub fn decide(
        &self,
        method: &Method,
        path: &str,
        authorization: Option<&[u8]>,
    ) -> Result<(), ApiError> {
        if self.is_empty() {
            return Ok(());
        }
        let need = match required(method, path) {
            Access::Open | Access::CompletionToken => return Ok(()),
            Access::Needs(role) => role,
        };
        let presented = authorization
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or_else(|| {
                ApiError::unauthenticated("send an API token: Authorization: Bearer <token>")
            })?;
        let entry = self
            .find(presented)
            .ok_or_else(|| ApiError::unauthenticated("the API token is not valid"))?;
        if entry.role < need {
            return Err(ApiError::permission_denied(format!(
                "this needs the {need} role; token {:?} has {}",
                entry.name, entry.role
            )));
        }
        Ok(())
    }
}

/// Without tokens the API is open to anything that reaches the loopback port,
/// and a browser is such a thing: any page the operator visits could send it a
/// request. So a server without tokens answers only requests addressed to a
/// loopback name (no DNS rebinding), and refuses writes that a browser marks as
/// coming from another site (no cross-site request forgery). With tokens
/// neither is needed: a bearer token is never sent by a browser on its own.
pub fn local_only(method: &Method, headers: &HeaderMap) -> Result<(), ApiError> {
    if let Some(host) = headers.get(header::HOST)
        && !host.to_str().is_ok_and(is_loopback_authority)
    {
        return Err(ApiError::permission_denied(
            "this server has no API tokens, so it only answers requests addressed to 127.0.0.1, ::1 or localhost",
        ));
    }
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return Ok(());
    }
    let cross_site = headers
        .get("sec-fetch-site")
        .is_some_and(|v| v.as_bytes() == b"cross-site" || v.as_bytes() == b"same-site");
    let foreign_origin = headers.get(header::ORIGIN).is_some_and(|origin| {
        let host = headers.get(header::HOST).map(|h| h.as_bytes());
        let authority = origin
            .to_str()
            .ok()
            .and_then(|o| o.split_once("://"))
            .map(|(_, authority)| authority.as_bytes());
        authority.is_none() || authority != host
    });
    if cross_site || foreign_origin {
        return Err(ApiError::permission_denied(
            "a write from another site is refused; configure API tokens to use this server from other origins",
        ));
    }
    Ok(())
}

/// `127.0.0.1:7460`, `[::1]:7460`, `localhost`: a Host header naming loopback.
fn is_loopback_authority(authority: &str) -> bool {
    let host = match authority.strip_prefix('[') {
        Some(rest) => rest.split_once(']').map_or(rest, |(h, _)| h),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    host == "localhost"
        || host.ends_with(".localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Reports on long-running work (`complete`, `fail`, `heartbeat`) carry
/// their credential, the completion token, in the body, so a report's body is
/// read before anyone knows who sent it. The bodies of all the reports being
/// read at once share one budget, twice the largest a report may have: a
/// report whose declared length (without one, the largest) does not fit is
/// refused with 503 before a byte of it is read. Without it, anyone who
/// reaches the port could make the server hold 64 MiB per connection.
pub struct ReportBodies(Arc<Semaphore>);

/// The budget's unit.
const KIB: usize = 1024;

impl ReportBodies {
    /// Twice the largest body: two of the largest read at once, or many
    /// small ones.
    pub const BUDGET: usize = 2 * BATCH_BODY_LIMIT;

    fn new() -> ReportBodies {
        ReportBodies(Arc::new(Semaphore::new(Self::BUDGET / KIB)))
    }

    /// A share of the budget for one report, held while it is read and
    /// handled; or the 503 to answer.
    fn admit(&self, headers: &HeaderMap) -> Result<OwnedSemaphorePermit, ApiError> {
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(BATCH_BODY_LIMIT);
        let kib = declared.min(BATCH_BODY_LIMIT).div_ceil(KIB).max(1);
        let kib = u32::try_from(kib).unwrap_or(u32::MAX);
        Arc::clone(&self.0)
            .try_acquire_many_owned(kib)
            .map_err(|_| {
                ApiError::unavailable(
                    "too many reports on long-running work are being read at once; try again",
                )
            })
    }
}

/// What the middleware around every route holds: the tokens, and the budget
/// of the bodies read before their sender is known.
pub struct Guard {
    tokens: Tokens,
    reports: ReportBodies,
}

impl Guard {
    pub fn new(tokens: Tokens) -> Guard {
        Guard {
            tokens,
            reports: ReportBodies::new(),
        }
    }
}

/// The axum middleware around every route.
pub async fn layer(State(guard): State<Arc<Guard>>, req: Request, next: Next) -> Response {
    if req.uri().path().starts_with("/v1/internal/") {
        // The nodes' requests to each other carry the cluster's key, which
        // the handler checks, not a token.
        return next.run(req).await;
    }
    let tokens = &guard.tokens;
    if tokens.is_empty()
        && let Err(e) = local_only(req.method(), req.headers())
    {
        return e.into_response();
    }
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    if let Err(e) = tokens.decide(req.method(), req.uri().path(), authorization) {
        return e.into_response();
    }
    let _reading = match required(req.method(), req.uri().path()) {
        Access::CompletionToken => match guard.reports.admit(req.headers()) {
            Ok(share) => Some(share),
            Err(e) => return e.into_response(),
        },
        Access::Open | Access::Needs(_) => None,
    };
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> (Tokens, [String; 3]) {
        let mut entries = Vec::new();
        let mut plain = Vec::new();
        for role in ["reader", "writer", "admin"] {
            let (token, hash) = new_token().expect("random");
            entries.push(TokenEntry::new(role, role, &hash).expect("entry"));
            plain.push(token);
        }
        let plain: [String; 3] = plain.try_into().expect("three");
        (Tokens::new(entries), plain)
    }

    fn status(t: &Tokens, method: Method, path: &str, token: Option<&str>) -> u16 {
        let header = token.map(|t| format!("Bearer {t}"));
        match t.decide(&method, path, header.as_deref().map(str::as_bytes)) {
            Ok(()) => 200,
            Err(e) => e.status.as_u16(),
        }
    }

    #[test]
    fn matrix() {
        use Access::*;
        use Role::*;
        let cases = [
            (Method::GET, "/healthz", Open),
            (Method::GET, "/readyz", Open),
            (Method::GET, "/", Open),
            (Method::GET, "/metrics", Needs(Reader)),
            (Method::GET, "/v1/gates", Needs(Reader)),
            (Method::GET, "/v1/openapi.json", Needs(Reader)),
            (Method::GET, "/v1/tasks/abc", Needs(Reader)),
            (Method::PUT, "/v1/gates/g", Needs(Admin)),
            (Method::DELETE, "/v1/gates/g", Needs(Admin)),
            (Method::POST, "/v1/gates/g/pause", Needs(Admin)),
            (Method::PUT, "/v1/plugins/p/1.0.0", Needs(Admin)),
            (Method::DELETE, "/v1/plugins/p/1.0.0", Needs(Admin)),
            (Method::POST, "/v1/admin/backup", Needs(Admin)),
            (Method::GET, "/v1/admin/backup", Needs(Admin)),
            (Method::POST, "/v1/tasks", Needs(Writer)),
            (Method::POST, "/v1/tasks/batch", Needs(Writer)),
            (Method::DELETE, "/v1/tasks/abc", Needs(Writer)),
            (Method::POST, "/v1/tasks/abc/retry", Needs(Writer)),
            (Method::PUT, "/v1/schedules/s", Needs(Writer)),
            (Method::POST, "/v1/schedules/s/pause", Needs(Writer)),
            (Method::POST, "/v1/tasks/abc/complete", CompletionToken),
            (Method::POST, "/v1/tasks/abc/heartbeat", CompletionToken),
            (Method::POST, "/v1/tasks/abc/fail", CompletionToken),
            (Method::POST, "/v1/whatever", Needs(Admin)),
            (Method::PATCH, "/v1/tasks/abc", Needs(Writer)),
            (Method::POST, "/healthz", Needs(Admin)),
        ];
        for (method, path, want) in cases {
            assert_eq!(required(&method, path), want, "{method} {path}");
        }
    }

    #[test]
    fn decisions() {
        let (t, [reader, writer, admin]) = tokens();
        assert_eq!(status(&t, Method::GET, "/v1/gates", None), 401);
        assert_eq!(
            status(&t, Method::GET, "/v1/gates", Some("sluice_nope")),
            401
        );
        assert_eq!(status(&t, Method::GET, "/v1/gates", Some(&reader)), 200);
        assert_eq!(status(&t, Method::POST, "/v1/tasks", Some(&reader)), 403);
        assert_eq!(status(&t, Method::POST, "/v1/tasks", Some(&writer)), 200);
        assert_eq!(status(&t, Method::PUT, "/v1/gates/g", Some(&writer)), 403);
        assert_eq!(status(&t, Method::PUT, "/v1/gates/g", Some(&admin)), 200);
        assert_eq!(status(&t, Method::GET, "/healthz", None), 200);
        // Not a bearer token at all.
        let basic = t.decide(&Method::GET, "/v1/gates", Some(b"Basic YWxhZGRpbg=="));
        assert_eq!(basic.map_err(|e| e.status.as_u16()), Err(401));
        // With no tokens configured everything is open (loopback only).
        assert_eq!(
            status(&Tokens::default(), Method::PUT, "/v1/gates/g", None),
            200
        );
    }

    #[test]
    fn without_tokens_only_local_same_site_requests() {
        let check = |method: Method, pairs: &[(&str, &str)]| {
            let mut headers = HeaderMap::new();
            for (k, v) in pairs {
                headers.insert(
                    header::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                    v.parse().expect("value"),
                );
            }
            local_only(&method, &headers).map_err(|e| e.status.as_u16())
        };
        for host in [
            "127.0.0.1:7460",
            "localhost:7460",
            "[::1]:7460",
            "127.0.0.2",
            "LOCALHOST",
        ] {
            assert_eq!(check(Method::GET, &[("host", host)]), Ok(()), "{host}");
        }
        // DNS rebinding: a foreign name that resolves to 127.0.0.1.
        for host in [
            "evil.example:7460",
            "10.0.0.1:7460",
            "[::ffff:7f00:1]",
            "localhost.evil.example",
        ] {
            assert_eq!(check(Method::GET, &[("host", host)]), Err(403), "{host}");
        }
        let local = ("host", "127.0.0.1:7460");
        // The dashboard's own writes pass; another site's are refused.
        assert_eq!(
            check(Method::POST, &[local, ("origin", "http://127.0.0.1:7460")]),
            Ok(())
        );
        assert_eq!(
            check(Method::POST, &[local]),
            Ok(()),
            "curl sends no Origin"
        );
        assert_eq!(
            check(Method::POST, &[local, ("origin", "https://evil.example")]),
            Err(403)
        );
        assert_eq!(check(Method::POST, &[local, ("origin", "null")]), Err(403));
        assert_eq!(
            check(Method::DELETE, &[local, ("sec-fetch-site", "cross-site")]),
            Err(403)
        );
        assert_eq!(
            check(Method::POST, &[local, ("sec-fetch-site", "same-origin")]),
            Ok(())
        );
    }

    #[test]
    fn config_entries() {
        let (_, hash) = new_token().expect("random");
        assert!(TokenEntry::new("a", "admin", &hash).is_ok());
        assert!(TokenEntry::new("a", "root", &hash).is_err());
        assert!(TokenEntry::new("a", "admin", "sha256:abc").is_err());
        assert!(TokenEntry::new("a", "admin", &hash.replace("sha256:", "md5:")).is_err());
        let bad = format!("sha256:{}", "zz".repeat(32));
        assert!(TokenEntry::new("a", "admin", &bad).is_err());
        // Debug never shows the hash.
        let entry = TokenEntry::new("a", "admin", &hash).expect("entry");
        assert!(!format!("{entry:?}").contains(&hash[7..]));
    }
}
