//! [`Context`]: what the host tells a plugin about the attempt it runs, and the
//! way to the attempt's capabilities (HTTP, next tasks).

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, SystemTime};

use crate::Http;
use crate::wit::exports::sluice::task::handler as wit;

/// The attempt being run: the same facts a webhook gets in its `Sluice-*`
/// headers, plus the gate-bound HTTP client.
///
/// Cheap to clone; clones share the list of next tasks.
///
/// ```no_run
/// use sluice_sdk::{Context, Error};
///
/// async fn run(ctx: Context, _input: serde_json::Value) -> Result<(), Error> {
///     sluice_sdk::info!("task {} in gate {}, attempt {}", ctx.task_id(), ctx.gate(), ctx.attempt());
///     Ok(())
/// }
/// sluice_sdk::export!(run);
/// ```
#[derive(Debug, Clone)]
pub struct Context {
    task_id: String,
    gate: String,
    attempt: u32,
    scheduled_at: SystemTime,
    deadline: SystemTime,
    idempotency_key: String,
    schedule: Option<String>,
    /// Tasks to create with a success, as JSON text. Shared between clones
    /// because the task function gets a clone and the glue reads the list
    /// after it returns.
    next: Rc<RefCell<Vec<String>>>,
}

impl Context {
    pub(crate) fn from_wit(ctx: wit::Context) -> Self {
        let ms = |ms: u64| SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
        Context {
            task_id: ctx.task_id,
            gate: ctx.gate,
            attempt: ctx.attempt,
            scheduled_at: ms(ctx.scheduled_at_ms),
            deadline: ms(ctx.deadline_ms),
            idempotency_key: ctx.idempotency_key,
            schedule: ctx.schedule,
            next: Rc::default(),
        }
    }

    /// The task's id, as in `GET /v1/tasks/{id}`.
    ///
    /// ```no_run
    /// # fn example(ctx: sluice_sdk::Context) {
    /// sluice_sdk::info!("running {}", ctx.task_id());
    /// # }
    /// ```
    pub fn task_id(&self) -> &str {
        &self.task_id
    }

    /// The gate the task runs in.
    ///
    /// ```no_run
    /// # fn example(ctx: sluice_sdk::Context) {
    /// sluice_sdk::debug!("gate {}", ctx.gate());
    /// # }
    /// ```
    pub fn gate(&self) -> &str {
        &self.gate
    }

    /// 1 for the first attempt, 2 for the first retry, and so on.
    ///
    /// ```no_run
    /// # fn example(ctx: sluice_sdk::Context) {
    /// if ctx.attempt() > 1 {
    ///     sluice_sdk::info!("retrying; earlier attempts may have done part of the work");
    /// }
    /// # }
    /// ```
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// When the task was due: for a schedule's occurrence, its scheduled
    /// time, whatever the lateness.
    ///
    /// ```no_run
    /// # fn example(ctx: sluice_sdk::Context) {
    /// let as_of = ctx.scheduled_at();
    /// # }
    /// ```
    pub fn scheduled_at(&self) -> SystemTime {
        self.scheduled_at
    }

    /// When the host ends this attempt (counted as timed out) if it is still
    /// running.
    ///
    /// ```no_run
    /// # fn example(ctx: sluice_sdk::Context) {
    /// let deadline = ctx.deadline();
    /// # }
    /// ```
    pub fn deadline(&self) -> SystemTime {
        self.deadline
    }

    /// The time left until [`Context::deadline`], zero once it has passed.
    /// A plugin with much to do can stop early and return a retry that
    /// carries on, instead of being cut off mid-request.
    ///
    /// ```no_run
    /// # fn example(ctx: sluice_sdk::Context) -> Result<(), sluice_sdk::Error> {
    /// if ctx.remaining() < std::time::Duration::from_secs(2) {
    ///     return Err(sluice_sdk::Error::retry("out of time; the next attempt carries on"));
    /// }
    /// # Ok(()) }
    /// ```
    pub fn remaining(&self) -> Duration {
        #[expect(
            clippy::disallowed_methods,
            reason = "the host provides the guest's clock"
        )]
        let now = SystemTime::now();
        self.deadline.duration_since(now).unwrap_or(Duration::ZERO)
    }

    /// The task id, or `schedule:<name>:<time>` for a schedule's occurrence;
    /// the same on every attempt. Pass it to APIs that take an idempotency
    /// key, so that a repeated attempt is not applied twice.
    ///
    /// ```no_run
    /// # fn example(ctx: sluice_sdk::Context) {
    /// let request = sluice_sdk::Request::post("https://pay.example.com/v1/charges")
    ///     .header("idempotency-key", ctx.idempotency_key());
    /// # }
    /// ```
    pub fn idempotency_key(&self) -> &str {
        &self.idempotency_key
    }

    /// The schedule that made this task, if one did.
    ///
    /// ```no_run
    /// # fn example(ctx: sluice_sdk::Context) {
    /// if let Some(name) = ctx.schedule() {
    ///     sluice_sdk::info!("occurrence of {name}");
    /// }
    /// # }
    /// ```
    pub fn schedule(&self) -> Option<&str> {
        self.schedule.as_deref()
    }

    /// An HTTP client bound to this task's gate: each request takes a token
    /// from the gate and may reach only the gate's allowed hosts.
    ///
    /// ```no_run
    /// # async fn example(ctx: sluice_sdk::Context) -> Result<(), sluice_sdk::Error> {
    /// let health: serde_json::Value = ctx.http().get_json("http://api.internal/health").await?;
    /// # Ok(()) }
    /// ```
    pub fn http(&self) -> Http {
        Http::new()
    }

    /// Asks for a task to be created if this attempt succeeds, in the same
    /// commit as the success: a workflow's next step. `task` is the body of
    /// `POST /v1/tasks`. Nothing is created if the attempt retries or fails.
    ///
    /// ```no_run
    /// # fn example(ctx: sluice_sdk::Context) {
    /// ctx.add_next(serde_json::json!({
    ///     "gate": "mail",
    ///     "webhook": { "url": "https://mail.internal/receipts", "body": { "invoice": "inv_42" } }
    /// }));
    /// # }
    /// ```
    pub fn add_next(&self, task: serde_json::Value) {
        self.next.borrow_mut().push(task.to_string());
    }

    pub(crate) fn take_next(&self) -> Vec<String> {
        self.next.take()
    }
}
