//! Long-running work: an endpoint answers `202` with `Sluice-Lease`, keeps the
//! attempt (and its concurrency slot), and reports back with the attempt's
//! completion token. Only the token's hash is stored; a token from another
//! attempt is refused with 409 and changes nothing. Repeating a report that
//! already took effect is answered as before, so callbacks are safe to retry.

use std::time::Duration;

use sha2::{Digest, Sha256};

use super::{Engine, ShellError, Turn};
use crate::core::{Input, Outcome, TaskId};
use crate::model::NewTask;
use crate::store::{AttemptRecord, StoreError, TaskRecord, TaskState};

/// Output and failure reasons kept in history are capped like response bodies.
const KEPT: usize = 4 * 1024;

#[derive(Debug, Clone, PartialEq)]
pub enum Callback {
    Complete {
        token: String,
        output: Option<serde_json::Value>,
        /// Created in the same commit as the completion.
        next: Vec<NewTask>,
    },
    Fail {
        token: String,
        reason: Option<String>,
        retry: bool,
        retry_after: Option<Duration>,
    },
    Heartbeat {
        token: String,
        progress: Option<serde_json::Value>,
        lease: Option<Duration>,
    },
}

impl Callback {
    fn token(&self) -> &str {
        match self {
            Callback::Complete { token, .. }
            | Callback::Fail { token, .. }
            | Callback::Heartbeat { token, .. } => token,
        }
    }
}

/// Bytes of one completion token (256 random bits).
const TOKEN: usize = 32;
/// Tokens read from the operating system at once.
const POOL: usize = 32 * TOKEN;

/// The source of completion tokens: the operating system's random bytes,
/// read 32 tokens at a time (a system call per start was 2 % of the
/// driver's time). A byte is handed out once, and wiped as it is.
pub(super) struct Tokens {
    pool: Box<[u8; POOL]>,
    used: usize,
}

impl Tokens {
    pub(super) fn new() -> Tokens {
        Tokens {
            pool: Box::new([0; POOL]),
            used: POOL,
        }
    }

    /// A fresh completion token (hex) and its hash.
    pub(super) fn next(&mut self) -> (String, String) {
        if self.used == POOL {
            if getrandom::fill(&mut self.pool[..]).is_err() {
                // No OS randomness means no unguessable token: fail loudly.
                panic!("the operating system's random source failed");
            }
            self.used = 0;
        }
        let bytes = &mut self.pool[self.used..self.used + TOKEN];
        self.used += TOKEN;
        let token = crate::hex::encode(bytes);
        bytes.fill(0);
        let hash = hash_token(&token);
        (token, hash)
    }
}

pub(super) fn hash_token(token: &str) -> String {
    crate::hex::encode(&Sha256::digest(token.as_bytes()))
}

/// Constant-time comparison of two hex digests.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn cap(text: String) -> String {
    if text.len() <= KEPT {
        return text;
    }
    let mut end = KEPT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

impl Engine {
    pub(super) fn callback(
        &mut self,
        turn: &mut Turn<'_>,
        id: TaskId,
        callback: Callback,
    ) -> Result<Result<TaskRecord, ShellError>, StoreError> {
        let now = turn.now;
        if let Some(moved) = self.moved_task(turn, id, true)? {
            return Ok(Err(moved));
        }
        let Some(task) = turn.task(id.0)?.cloned() else {
            return Ok(Err(ShellError::NotFound {
                what: format!("task {id}"),
            }));
        };
        let hash = hash_token(callback.token());
        let current = turn.attempt(id.0, task.attempts)?;
        let Some(mut attempt) =
            current.filter(|a| a.token_hash.as_deref().is_some_and(|h| same(h, &hash)))
        else {
            // Which attempt, if any, the token belonged to makes a better message.
            let mut stale = None;
            for n in (1..task.attempts).rev() {
                if turn
                    .attempt(id.0, n)?
                    .is_some_and(|a| a.token_hash.as_deref().is_some_and(|h| same(h, &hash)))
                {
                    stale = Some(n);
                    break;
                }
            }
            let message = match stale {
                Some(n) => format!(
                    "stale token: it belongs to attempt {n}, the task is on attempt {}",
                    task.attempts
                ),
                None => "wrong completion token for this task's current attempt".to_string(),
            };
            return Ok(Err(ShellError::Conflict(message)));
        };
        if attempt.ended_at.is_some() {
            return Ok(repeat(&task, &attempt, &callback));
        }
        if task.state != TaskState::Running {
            return Ok(Err(ShellError::Conflict(format!(
                "task {id} is {}",
                task.state.as_str()
            ))));
        }
        match callback {
            // Until its 202, an attempt is a request in flight under its
            // timeout: a lease begun by a heartbeat could run out before the
            // answer and start the task again beside it.
            Callback::Heartbeat { .. } if attempt.lease_until.is_none() => {
                return Ok(Err(ShellError::Conflict(format!(
                    "attempt {} of task {id} holds no lease: a heartbeat extends the lease a 202 with Sluice-Lease began",
                    task.attempts
                ))));
            }
            Callback::Heartbeat {
                progress, lease, ..
            } => {
                let lease = lease
                    .or(attempt.lease_ms.map(Duration::from_millis))
                    .unwrap_or(Duration::from_secs(60))
                    .min(crate::attempt::MAX_LEASE);
                let until = now.plus(lease);
                attempt.lease_until = Some(until.as_ms());
                attempt.lease_ms = Some(lease.as_millis() as u64);
                attempt.heartbeat_at = Some(now.as_ms());
                if progress.is_some() {
                    attempt.progress = progress;
                }
                turn.put_attempt(id.0, &attempt)?;
                self.core
                    .handle_input(now, Input::Heartbeat { task: id, until });
            }
            Callback::Complete { output, next, .. } => {
                // The next steps are checked first: all or nothing.
                if !next.is_empty()
                    && let Err(e) = self.create_next(turn, &task, next)?
                {
                    return Ok(Err(e));
                }
                attempt.ended_at = Some(now.as_ms());
                attempt.outcome = Some("succeeded".into());
                attempt.latency_ms = Some(now.as_ms().saturating_sub(attempt.started_at));
                if let Some(output) = output {
                    attempt.response = Some(cap(output.to_string()));
                }
                turn.put_attempt(id.0, &attempt)?;
                self.core.handle_input(
                    now,
                    Input::AttemptEnded {
                        task: id,
                        outcome: Outcome::Succeeded,
                    },
                );
            }
            Callback::Fail {
                reason,
                retry,
                retry_after,
                ..
            } => {
                let reason = cap(reason.unwrap_or_else(|| "the endpoint reported failure".into()));
                attempt.ended_at = Some(now.as_ms());
                attempt.outcome = Some(if retry { "failed" } else { "rejected" }.into());
                attempt.latency_ms = Some(now.as_ms().saturating_sub(attempt.started_at));
                attempt.error = Some(reason.clone());
                turn.put_attempt(id.0, &attempt)?;
                if let Some(t) = turn.task(id.0)? {
                    t.last_error = Some(reason);
                }
                let outcome = if retry {
                    Outcome::Failed { retry_after }
                } else {
                    Outcome::Rejected
                };
                self.core
                    .handle_input(now, Input::AttemptEnded { task: id, outcome });
            }
        }
        self.apply_effects(turn)?;
        Ok(turn
            .task(id.0)?
            .cloned()
            .ok_or_else(|| ShellError::NotFound {
                what: format!("task {id}"),
            }))
    }
}

/// A report repeated after its attempt ended: the same answer when it is the same
/// report, 409 when it contradicts what happened.
fn repeat(
    task: &TaskRecord,
    attempt: &AttemptRecord,
    callback: &Callback,
) -> Result<TaskRecord, ShellError> {
    let outcome = attempt.outcome.as_deref().unwrap_or("");
    let same = match callback {
        Callback::Complete { .. } => outcome == "succeeded",
        Callback::Fail { retry: true, .. } => outcome == "failed",
        Callback::Fail { retry: false, .. } => outcome == "rejected",
        Callback::Heartbeat { .. } => false,
    };
    if same {
        Ok(task.clone())
    } else {
        Err(ShellError::Conflict(format!(
            "attempt {} already ended ({outcome})",
            attempt.attempt
        )))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn tokens_are_never_handed_out_twice_across_refills() {
        let mut tokens = Tokens::new();
        let mut seen = HashSet::new();
        for n in 0..3 * POOL / TOKEN + 5 {
            let (token, hash) = tokens.next();
            assert_eq!(token.len(), 2 * TOKEN);
            assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
            assert_eq!(hash, hash_token(&token));
            assert!(seen.insert(token), "token {n} came twice");
            // What was handed out is wiped from the pool.
            assert!(tokens.pool[..tokens.used].iter().all(|b| *b == 0));
        }
    }
}
