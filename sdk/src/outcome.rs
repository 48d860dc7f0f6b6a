//! How an attempt ends: [`Outcome`], and the [`Error`] that `?` turns into a
//! retry or a failure. Decides nothing about HTTP beyond the table on
//! `From<HttpError> for Error`.

use std::fmt;
use std::time::Duration;

use crate::http::HttpError;

/// How an attempt ended: what a task function returns.
///
/// A task function may also return `Result<T, Error>`, which is usually more
/// convenient because `?` works in it; `Ok` becomes [`Outcome::Success`] and
/// [`Error`] becomes a retry or a failure.
///
/// ```
/// use std::time::Duration;
/// use sluice_sdk::Outcome;
///
/// fn decide(status: u16) -> Outcome<&'static str> {
///     match status {
///         200 => Outcome::Success("charged"),
///         402 => Outcome::Fail("card declined".into()),
///         _ => Outcome::Retry { after: Some(Duration::from_secs(30)), reason: format!("got {status}") },
///     }
/// }
/// assert_eq!(decide(402), Outcome::Fail("card declined".into()));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome<T> {
    /// Done: the task succeeds with this output, serialized as JSON into the
    /// attempt's history.
    Success(T),
    /// Try again later: the task goes back to `scheduled` while it has attempts
    /// left, and fails when they are used up.
    Retry {
        /// The earliest time to try again, from now; `None` leaves it to the
        /// task's backoff policy. The host bounds it.
        after: Option<Duration>,
        /// Why, for the attempt's history.
        reason: String,
    },
    /// Give up: the task fails now, whatever attempts it has left.
    Fail(String),
}

/// A reason to end the attempt early: retry it later, or fail the task.
///
/// `?` converts into it, which decides between the two:
///
/// | from | gives |
/// |---|---|
/// | [`HttpError`] | see `From<HttpError>` below: timeouts, connection errors, 408, 429 and 5xx retry; the rest fail |
/// | [`serde_json::Error`] | [`Error::Fail`]: the same data will not parse better next time |
/// | any other error | use [`ResultExt::or_retry`] or [`ResultExt::or_fail`] to say which |
///
/// ```
/// use sluice_sdk::{Error, ResultExt};
///
/// fn parse_id(raw: &str) -> Result<u64, Error> {
///     let id = raw.parse().or_fail("app id is not a number")?;
///     if id == 0 {
///         return Err(Error::fail("app id 0 is reserved"));
///     }
///     Ok(id)
/// }
/// assert!(matches!(parse_id("x"), Err(Error::Fail(_))));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// Try the attempt again later (see [`Outcome::Retry`]).
    Retry {
        /// The earliest time to try again; `None` leaves it to the backoff policy.
        after: Option<Duration>,
        /// Why, for the attempt's history.
        reason: String,
    },
    /// Fail the task now (see [`Outcome::Fail`]).
    Fail(String),
}

impl Error {
    /// Retry after the task's backoff.
    ///
    /// ```
    /// let err = sluice_sdk::Error::retry("inventory service is restarting");
    /// assert_eq!(err.reason(), "inventory service is restarting");
    /// ```
    pub fn retry(reason: impl Into<String>) -> Self {
        Error::Retry {
            after: None,
            reason: reason.into(),
        }
    }

    /// Retry no sooner than `after` from now.
    ///
    /// ```
    /// use std::time::Duration;
    /// let err = sluice_sdk::Error::retry_after(Duration::from_secs(60), "rate limited");
    /// assert!(matches!(err, sluice_sdk::Error::Retry { after: Some(_), .. }));
    /// ```
    pub fn retry_after(after: Duration, reason: impl Into<String>) -> Self {
        Error::Retry {
            after: Some(after),
            reason: reason.into(),
        }
    }

    /// Fail the task now.
    ///
    /// ```
    /// let err = sluice_sdk::Error::fail("customer deleted");
    /// assert_eq!(err.to_string(), "customer deleted");
    /// ```
    pub fn fail(reason: impl Into<String>) -> Self {
        Error::Fail(reason.into())
    }

    /// The reason, as the attempt's history will show it.
    ///
    /// ```
    /// assert_eq!(sluice_sdk::Error::fail("gone").reason(), "gone");
    /// ```
    pub fn reason(&self) -> &str {
        match self {
            Error::Retry { reason, .. } | Error::Fail(reason) => reason,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for Error {}

/// What `?` on an HTTP error does, mirroring how Sluice treats a webhook's
/// answer:
///
/// | error | gives |
/// |---|---|
/// | [`HttpError::Timeout`], [`HttpError::Transport`] | retry, after the backoff |
/// | [`HttpError::Status`] 408, 429, 5xx | retry, after `Retry-After` if the answer had one |
/// | [`HttpError::Status`], any other | fail |
/// | [`HttpError::Denied`] | fail: the gate's allowed hosts will not change by retrying |
/// | [`HttpError::BodyTooLarge`], [`HttpError::Json`], [`HttpError::InvalidRequest`] | fail |
impl From<HttpError> for Error {
    fn from(err: HttpError) -> Self {
        let reason = err.to_string();
        match err {
            HttpError::Timeout { .. } | HttpError::Transport { .. } => Error::retry(reason),
            HttpError::Status {
                status,
                retry_after,
                ..
            } if status == 408 || status == 429 || (500..=599).contains(&status) => Error::Retry {
                after: retry_after,
                reason,
            },
            HttpError::Status { .. }
            | HttpError::Denied { .. }
            | HttpError::BodyTooLarge { .. }
            | HttpError::Json { .. }
            | HttpError::InvalidRequest { .. } => Error::fail(reason),
        }
    }
}

/// Data that does not parse will not parse better on the next attempt.
impl From<serde_json::Error> for Error {
    fn from(err: serde_json::Error) -> Self {
        Error::fail(format!("JSON: {err}"))
    }
}

impl<T> From<Error> for Outcome<T> {
    fn from(err: Error) -> Self {
        match err {
            Error::Retry { after, reason } => Outcome::Retry { after, reason },
            Error::Fail(reason) => Outcome::Fail(reason),
        }
    }
}

impl<T> From<Result<T, Error>> for Outcome<T> {
    fn from(result: Result<T, Error>) -> Self {
        result.map_or_else(Outcome::from, Outcome::Success)
    }
}

/// What a task function may return: an [`Outcome`] or a `Result<T, Error>`.
///
/// ```
/// use sluice_sdk::{Error, IntoOutcome, Outcome};
///
/// let done: Result<u32, Error> = Ok(3);
/// assert_eq!(done.into_outcome(), Outcome::Success(3));
/// ```
pub trait IntoOutcome {
    /// The output on success.
    type Output;
    /// Converts into an [`Outcome`].
    fn into_outcome(self) -> Outcome<Self::Output>;
}

impl<T> IntoOutcome for Outcome<T> {
    type Output = T;
    fn into_outcome(self) -> Outcome<T> {
        self
    }
}

impl<T> IntoOutcome for Result<T, Error> {
    type Output = T;
    fn into_outcome(self) -> Outcome<T> {
        self.into()
    }
}

/// Says whether an error (or a missing value) should retry the attempt or
/// fail the task, for errors that `?` cannot decide alone.
///
/// ```
/// use sluice_sdk::{Error, ResultExt};
///
/// fn port(raw: &str) -> Result<u16, Error> {
///     raw.parse::<u16>().or_fail("bad port")
/// }
/// assert_eq!(port("80x").unwrap_err().reason(), "bad port: invalid digit found in string");
///
/// let owner: Option<&str> = None;
/// assert_eq!(owner.or_fail("no owner").unwrap_err(), Error::fail("no owner"));
/// ```
pub trait ResultExt<T> {
    /// On error, retry after the backoff, with the reason `"{reason}: {error}"`.
    fn or_retry(self, reason: &str) -> Result<T, Error>;
    /// On error, fail the task, with the reason `"{reason}: {error}"`.
    fn or_fail(self, reason: &str) -> Result<T, Error>;
}

impl<T, E: fmt::Display> ResultExt<T> for Result<T, E> {
    fn or_retry(self, reason: &str) -> Result<T, Error> {
        self.map_err(|err| Error::retry(format!("{reason}: {err}")))
    }
    fn or_fail(self, reason: &str) -> Result<T, Error> {
        self.map_err(|err| Error::fail(format!("{reason}: {err}")))
    }
}

/// For an `Option`, the reason is given as is.
impl<T> ResultExt<T> for Option<T> {
    fn or_retry(self, reason: &str) -> Result<T, Error> {
        self.ok_or_else(|| Error::retry(reason))
    }
    fn or_fail(self, reason: &str) -> Result<T, Error> {
        self.ok_or_else(|| Error::fail(reason))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(status: u16, retry_after: Option<Duration>) -> HttpError {
        HttpError::Status {
            url: "http://api.test/x".into(),
            status,
            retry_after,
            body: String::new(),
        }
    }

    /// The HTTP table in `From<HttpError> for Error`, row by row: transient
    /// trouble retries (keeping `Retry-After`), anything a retry cannot fix fails.
    #[test]
    fn http_errors_retry_or_fail_like_webhooks() {
        let url = || "http://api.test/x".to_string();
        let minute = Some(Duration::from_secs(60));
        for code in [408, 429, 500, 502, 503, 599] {
            assert!(
                matches!(
                    Error::from(status(code, None)),
                    Error::Retry { after: None, .. }
                ),
                "{code} retries"
            );
        }
        assert!(matches!(
            Error::from(status(503, minute)),
            Error::Retry { after, .. } if after == minute
        ));
        for code in [301, 400, 401, 402, 403, 404, 409, 422] {
            assert!(
                matches!(Error::from(status(code, minute)), Error::Fail(_)),
                "{code} fails"
            );
        }
        assert!(matches!(
            Error::from(HttpError::Timeout { url: url() }),
            Error::Retry { after: None, .. }
        ));
        assert!(matches!(
            Error::from(HttpError::Transport {
                url: url(),
                detail: "connection refused".into()
            }),
            Error::Retry { .. }
        ));
        let denied = Error::from(HttpError::Denied { url: url() });
        assert!(matches!(denied, Error::Fail(_)));
        assert!(denied.reason().contains("allowed hosts"), "{denied}");
        assert!(matches!(
            Error::from(HttpError::BodyTooLarge {
                url: url(),
                limit: 10
            }),
            Error::Fail(_)
        ));
    }

    #[test]
    fn results_and_outcomes_convert() {
        let ok: Result<u8, Error> = Ok(1);
        assert_eq!(ok.into_outcome(), Outcome::Success(1));
        let retry: Result<u8, Error> = Err(Error::retry_after(Duration::from_secs(5), "busy"));
        assert_eq!(
            retry.into_outcome(),
            Outcome::Retry {
                after: Some(Duration::from_secs(5)),
                reason: "busy".into()
            }
        );
        let fail: Outcome<u8> = Error::fail("no").into();
        assert_eq!(fail, Outcome::Fail("no".into()));
        let json = serde_json::from_str::<u8>("[").unwrap_err();
        assert!(matches!(Error::from(json), Error::Fail(reason) if reason.starts_with("JSON: ")));
    }

    #[test]
    fn result_ext_keeps_the_cause() {
        let err = "x".parse::<u8>().or_retry("reading count").unwrap_err();
        assert_eq!(
            err,
            Error::retry("reading count: invalid digit found in string")
        );
        assert_eq!(Some(3).or_fail("missing"), Ok(3));
        assert_eq!(None::<u8>.or_retry("missing"), Err(Error::retry("missing")));
    }
}
