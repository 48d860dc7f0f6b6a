//! Write Sluice plugins in Rust: tasks that run as WebAssembly components,
//! whose only way out is HTTP through their gate.
//!
//! A plugin is one `async fn` that takes the attempt's [`Context`] and the
//! task's input, and returns an [`Outcome`] or a `Result<Output, Error>`.
//! [`export!`] makes it the component's entry point. Input and output are any
//! serde types; the input arrives as the task's `plugin.input` JSON.
//!
//! ```no_run
//! use serde::{Deserialize, Serialize};
//! use sluice_sdk::{Context, Error, info};
//!
//! /// The task's `plugin.input`.
//! #[derive(Deserialize)]
//! struct Input {
//!     api: String,
//!     account: u64,
//! }
//!
//! /// Kept in the attempt's history.
//! #[derive(Serialize)]
//! struct Output {
//!     closed: usize,
//! }
//!
//! #[derive(Deserialize)]
//! struct Session {
//!     id: String,
//!     stale: bool,
//! }
//!
//! async fn run(ctx: Context, input: Input) -> Result<Output, Error> {
//!     let http = ctx.http();
//!     let url = format!("{}/accounts/{}/sessions", input.api, input.account);
//!     // A 5xx or a timeout here retries the task; a 404 fails it (see `Error`).
//!     let sessions: Vec<Session> = http.get_json(&url).await?;
//!     let mut closed = 0;
//!     for session in sessions.iter().filter(|s| s.stale) {
//!         // Each request waits for a token from the task's gate.
//!         http.delete(&format!("{url}/{}", session.id)).await?;
//!         closed += 1;
//!     }
//!     info!("closed {closed} of {} sessions", sessions.len());
//!     Ok(Output { closed })
//! }
//!
//! sluice_sdk::export!(run);
//! ```
//!
//! # From scaffold to a running task
//!
//! ```sh
//! sluice plugin new close-sessions          # a crate with this SDK, ready to build
//! cd close-sessions
//! cargo build --release --target wasm32-wasip2
//! sluice plugin push close-sessions 0.1.0 \
//!     target/wasm32-wasip2/release/close_sessions.wasm
//! ```
//!
//! `push` uploads the component (`PUT /v1/plugins/{name}/{version}`); the
//! server checks that it imports nothing outside the `sluice:task` world,
//! compiles it once and keeps it. Versions are immutable: change the code,
//! push a new version. Then create tasks that run it, in a gate that allows the
//! hosts it calls:
//!
//! ```sh
//! sluice gate set accounts --rate 20/s --allow-host accounts.internal:8080
//! sluice task create --gate accounts --plugin close-sessions@0.1.0 \
//!     --input '{"api": "http://accounts.internal:8080", "account": 42}'
//! ```
//!
//! `GET /v1/tasks/{id}` (or the dashboard) then shows each attempt with its
//! output, its error and its log lines. Schedules run plugins the same way,
//! with a `plugin` target in their `task`.
//!
//! # How an attempt ends
//!
//! - `Ok(output)` or [`Outcome::Success`]: the task succeeds; `output` is
//!   kept as JSON in the attempt's history. Tasks asked for with
//!   [`Context::add_next`] are created in the same commit (a workflow's next
//!   steps); with any other outcome they are dropped.
//! - [`Error::Retry`] or [`Outcome::Retry`]: the attempt failed for a reason
//!   that may pass; the task runs again after its backoff (or after `after`)
//!   while it has attempts left.
//! - [`Error::Fail`] or [`Outcome::Fail`]: the task fails now.
//! - Input that does not parse as the input type fails the task at once, with
//!   serde's message and the path of the bad field, e.g.
//!   ``invalid input: apps[2].id: invalid type: integer `7`, expected a string``.
//! - A panic traps: the host ends the attempt as an error, like a crash. Its
//!   message goes to the log first. Running out of memory traps too, but an
//!   allocation failure aborts without a message: the attempt's error says
//!   the plugin aborted, and the log has nothing of it.
//!
//! `?` decides between retry and failure by the table on [`Error`]: for HTTP,
//! the same rules as a webhook's answer (timeouts, connection errors, 408,
//! 429 and 5xx retry; other statuses and a denied host fail). For other
//! errors, [`ResultExt::or_retry`] and [`ResultExt::or_fail`] say which.
//!
//! # What a plugin can reach
//!
//! Only what the `sluice:task` world grants: outgoing HTTP through
//! [`Context::http`] (paced by the task's gate, limited to its allowed hosts:
//! others are [`HttpError::Denied`]), and the attempt's log ([`info!`] and
//! friends). The clocks and randomness are the host's. There are no files,
//! sockets, environment variables or subprocesses: the file system and
//! sockets may be imported (language runtimes do) but there is no directory
//! to open and every connection or name lookup is refused, the environment
//! is empty, and anything else outside the world is refused at upload. So
//! avoid crates that use `std::fs`, `std::net` or `std::env` (or a
//! time-zone crate that reads the system's zone files): they build, and
//! fail when they run.
//! Memory is capped (64 MiB by default) and the attempt has a deadline, the
//! task's timeout ([`Context::deadline`]).

mod context;
mod http;
pub mod log;
mod outcome;

pub use context::Context;
pub use http::{Http, HttpError, Request, Response};
pub use outcome::{Error, IntoOutcome, Outcome, ResultExt};

// Lets the generated bindings name this crate by the path that also works
// from a plugin, where the export macro expands.
extern crate self as sluice_sdk;

/// The bindings generated from `wit/`. Not a stable API: use the types above.
#[doc(hidden)]
#[allow(
    missing_docs,
    unsafe_code,
    unreachable_pub,
    clippy::all,
    reason = "generated by wit-bindgen"
)]
pub mod wit {
    wit_bindgen::generate!({
        path: "../wit",
        world: "sluice:task/task",
        runtime_path: "::sluice_sdk::__private::wit_bindgen::rt",
        pub_export_macro: true,
        export_macro_name: "__export_task",
        // The WASI interfaces are bound once, by the `wasip2` crate (which wstd
        // uses); the world only names them so that plugins may import them.
        with: {
            "wasi:cli/environment@0.2.12": wasip2::cli::environment,
            "wasi:cli/exit@0.2.12": wasip2::cli::exit,
            "wasi:cli/stdin@0.2.12": wasip2::cli::stdin,
            "wasi:cli/stdout@0.2.12": wasip2::cli::stdout,
            "wasi:cli/stderr@0.2.12": wasip2::cli::stderr,
            "wasi:cli/terminal-input@0.2.12": wasip2::cli::terminal_input,
            "wasi:cli/terminal-output@0.2.12": wasip2::cli::terminal_output,
            "wasi:cli/terminal-stdin@0.2.12": wasip2::cli::terminal_stdin,
            "wasi:cli/terminal-stdout@0.2.12": wasip2::cli::terminal_stdout,
            "wasi:cli/terminal-stderr@0.2.12": wasip2::cli::terminal_stderr,
            "wasi:clocks/monotonic-clock@0.2.12": wasip2::clocks::monotonic_clock,
            "wasi:clocks/wall-clock@0.2.12": wasip2::clocks::wall_clock,
            "wasi:io/error@0.2.12": wasip2::io::error,
            "wasi:io/poll@0.2.12": wasip2::io::poll,
            "wasi:io/streams@0.2.12": wasip2::io::streams,
            "wasi:random/random@0.2.12": wasip2::random::random,
            "wasi:random/insecure@0.2.12": wasip2::random::insecure,
            "wasi:random/insecure-seed@0.2.12": wasip2::random::insecure_seed,
            "wasi:http/types@0.2.12": wasip2::http::types,
            "wasi:http/outgoing-handler@0.2.12": wasip2::http::outgoing_handler,
        },
    });
}

/// Makes an `async fn(Context, Input) -> Output` the component's entry point.
///
/// `Input` is any `serde::Deserialize` type; the function returns an
/// [`Outcome<T>`] or a `Result<T, Error>` where `T: serde::Serialize`. Use it
/// once per component, at the top level of the crate.
///
/// ```no_run
/// use sluice_sdk::{Context, Outcome};
///
/// async fn run(_ctx: Context, name: String) -> Outcome<String> {
///     Outcome::Success(format!("hello, {name}"))
/// }
/// sluice_sdk::export!(run);
/// ```
#[macro_export]
macro_rules! export {
    ($task:path) => {
        const _: () = {
            struct Task;

            impl $crate::wit::exports::sluice::task::handler::Guest for Task {
                fn run(
                    ctx: $crate::wit::exports::sluice::task::handler::Context,
                    input: ::std::string::String,
                ) -> $crate::wit::exports::sluice::task::handler::Outcome {
                    $crate::__private::run(ctx, &input, $task)
                }
            }

    $crate::wit::__export_task!(Task with_types_in $crate::wit);
        };
    };
}

/// What [`export!`] expands to. Not a stable API.
#[doc(hidden)]
pub mod __private {
    use std::future::Future;
    use std::sync::Once;

    use serde::Serialize;
    use serde::de::DeserializeOwned;
    pub use wit_bindgen;

    use crate::wit::exports::sluice::task::handler as wit;
    use crate::{Context, IntoOutcome, Outcome};

    /// Runs one attempt: decodes the input, drives the task's future to the
    /// end on wstd's event loop, and encodes its outcome.
    pub fn run<I, F, Fut>(ctx: wit::Context, input: &str, task: F) -> wit::Outcome
    where
        I: DeserializeOwned,
        F: FnOnce(Context, I) -> Fut,
        Fut: Future<Output: IntoOutcome<Output: Serialize>>,
    {
        log_panics();
        let ctx = Context::from_wit(ctx);
        let outcome = match decode_input(input) {
            Ok(input) => wstd::runtime::block_on(task(ctx.clone(), input)).into_outcome(),
            Err(reason) => Outcome::Fail(reason),
        };
        encode(outcome, ctx.take_next())
    }

    /// Input that does not match the input type is the task's fault, not a
    /// passing condition: the task fails, naming the bad field.
    pub(crate) fn decode_input<I: DeserializeOwned>(input: &str) -> Result<I, String> {
        let mut json = serde_json::Deserializer::from_str(input);
        let input = serde_path_to_error::deserialize(&mut json).map_err(describe)?;
        json.end().map_err(|err| format!("invalid input: {err}"))?;
        Ok(input)
    }

    fn describe(err: serde_path_to_error::Error<serde_json::Error>) -> String {
        let path = err.path().to_string();
        if path == "." {
            format!("invalid input: {}", err.inner())
        } else {
            format!("invalid input: {path}: {}", err.inner())
        }
    }

    pub(crate) fn encode<T: Serialize>(outcome: Outcome<T>, next: Vec<String>) -> wit::Outcome {
        match outcome {
            Outcome::Success(output) => match serde_json::to_string(&output) {
                Ok(output) => wit::Outcome::Success(wit::Success { output, next }),
                Err(err) => wit::Outcome::Fail(format!("output is not JSON: {err}")),
            },
            Outcome::Retry { after, reason } => wit::Outcome::Retry(wit::Retry {
                after_ms: after.map(|after| u64::try_from(after.as_millis()).unwrap_or(u64::MAX)),
                reason,
            }),
            Outcome::Fail(reason) => wit::Outcome::Fail(reason),
        }
    }

    /// A panic aborts (wasm has no unwinding) and the host sees only a trap;
    /// logging the message first keeps the reason in the attempt's history.
    fn log_panics() {
        static HOOK: Once = Once::new();
        HOOK.call_once(|| {
            std::panic::set_hook(Box::new(|info| {
                crate::log::write(crate::log::Level::Error, &format!("panic: {info}"));
            }));
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::__private::{decode_input, encode};
    use super::wit::exports::sluice::task::handler as wit;
    use super::{Context, Outcome};

    #[derive(Debug, serde::Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Input {
        api: String,
        apps: Vec<App>,
    }

    #[derive(Debug, serde::Deserialize, PartialEq)]
    struct App {
        id: String,
    }

    /// Bad input must fail with a message that points at the field, so an
    /// operator can fix the task without reading the plugin's source.
    #[test]
    fn bad_input_names_the_field() {
        let err = decode_input::<Input>(r#"{"api": "http://a", "apps": [{"id": "1"}, {"id": 7}]}"#)
            .expect_err("id must be a string");
        assert!(
            err.starts_with("invalid input: apps[1].id: invalid type: integer `7`"),
            "{err}"
        );
        let err = decode_input::<Input>("null").expect_err("null is not an object");
        assert!(
            err.starts_with("invalid input: invalid type: null"),
            "{err}"
        );
        let err = decode_input::<Input>(r#"{"api": "x", "apps": [], "extra": 1}"#)
            .expect_err("unknown field");
        assert!(err.contains("unknown field `extra`"), "{err}");
        let err = decode_input::<Input>(r#"{"api": "x", "apps": []} trailing"#)
            .expect_err("trailing characters");
        assert!(
            err.starts_with("invalid input: trailing characters"),
            "{err}"
        );
        assert_eq!(
            decode_input::<Input>(r#"{"api": "x", "apps": [{"id": "a"}]}"#),
            Ok(Input {
                api: "x".into(),
                apps: vec![App { id: "a".into() }]
            })
        );
    }

    #[test]
    fn outcomes_encode_for_the_host() {
        match encode(Outcome::Success(vec![1, 2]), vec!["{}".into()]) {
            wit::Outcome::Success(success) => {
                assert_eq!(success.output, "[1,2]");
                assert_eq!(success.next, vec!["{}".to_string()]);
            }
            other => panic!("expected success, got {other:?}"),
        }
        let retry = Outcome::<()>::Retry {
            after: Some(Duration::from_millis(1500)),
            reason: "busy".into(),
        };
        assert!(matches!(
            encode(retry, Vec::new()),
            wit::Outcome::Retry(wit::Retry { after_ms: Some(1500), reason }) if reason == "busy"
        ));
        let forever = Outcome::<()>::Retry {
            after: Some(Duration::MAX),
            reason: String::new(),
        };
        assert!(matches!(
            encode(forever, Vec::new()),
            wit::Outcome::Retry(wit::Retry {
                after_ms: Some(u64::MAX),
                ..
            })
        ));
        assert!(matches!(
            encode(Outcome::<()>::Fail("no".into()), Vec::new()),
            wit::Outcome::Fail(reason) if reason == "no"
        ));
        // A map with non-string keys has no JSON form.
        let unencodable = std::collections::BTreeMap::from([((1, 2), 3)]);
        assert!(matches!(
            encode(Outcome::Success(unencodable), Vec::new()),
            wit::Outcome::Fail(reason) if reason.starts_with("output is not JSON")
        ));
    }

    #[test]
    fn context_carries_the_hosts_facts() {
        let ctx = Context::from_wit(wit::Context {
            task_id: "t1".into(),
            gate: "billing".into(),
            attempt: 2,
            scheduled_at_ms: 1_000,
            deadline_ms: 31_000,
            idempotency_key: "schedule:nightly:2026-11-27T02:30:00Z".into(),
            schedule: Some("nightly".into()),
        });
        assert_eq!(
            (ctx.task_id(), ctx.gate(), ctx.attempt()),
            ("t1", "billing", 2)
        );
        assert_eq!(
            ctx.deadline()
                .duration_since(ctx.scheduled_at())
                .expect("deadline after due"),
            Duration::from_secs(30)
        );
        assert_eq!(ctx.schedule(), Some("nightly"));
        let clone = ctx.clone();
        clone.add_next(serde_json::json!({"gate": "mail"}));
        assert_eq!(ctx.take_next(), vec![r#"{"gate":"mail"}"#.to_string()]);
        assert!(ctx.take_next().is_empty());
    }
}
