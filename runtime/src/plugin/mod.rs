//! WebAssembly plugins: components of the `sluice:task` world (`wit/`), run one
//! attempt per fresh `Store` on wasmtime with a pooling allocator.
//!
//! - [`audit`] decides, from a component's type alone, whether it may be
//!   uploaded.
//! - [`Host`] compiles uploads, keeps pre-instantiated components, and runs
//!   attempts: a wall-clock deadline over everything (guest code and host calls
//!   alike), epoch ticks that make even a loop that never calls the host give
//!   way to that deadline, and a memory cap per attempt.
//! - [`http`] is the guest's only way out: `wasi:http/outgoing-handler`, whose
//!   every request is checked against the gate's hosts and waits for a permit
//!   from the gate (the core's decision, see `core::scheduler`), then goes out
//!   through the same guarded client as webhooks.

pub mod audit;
#[cfg(feature = "plugins")]
mod host;
#[cfg(not(feature = "plugins"))]
mod stub;

#[cfg(feature = "plugins")]
pub use host::{Compiled, Host, MAX_FIELDS_BYTES, MAX_HANDLES};

/// Plugin attempts at once unless `plugin_instances` says otherwise.
pub const DEFAULT_INSTANCES: u32 = 2_048;
/// Memory (MiB) of an attempt whose plugin asked for none at upload, and the
/// most a plugin may ask for unless `plugin_memory_max` says otherwise.
pub const DEFAULT_MEMORY_MIB: u32 = 64;
/// The highest `plugin_memory_max` a server may set, in MiB.
pub const MAX_MEMORY_MIB: u32 = 512;
#[cfg(not(feature = "plugins"))]
pub use stub::{Compiled, Host};

use tokio::sync::oneshot;

use crate::attempt::{Plan, Report};
use crate::clock;
use crate::core::{Outcome, Signal, TaskId};
use crate::store::StoreError;

/// Largest component accepted for upload.
pub const MAX_COMPONENT: usize = 50 * 1024 * 1024;

/// Why an upload was refused, or a plugin could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("not a WebAssembly component: {0}")]
    Invalid(String),
    #[error(transparent)]
    Audit(#[from] audit::AuditError),
    #[error("{0}")]
    Link(String),
    #[error("plugin {0} is not in the registry")]
    Missing(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Between the plugin runtime and the driver, which owns the gates.
#[derive(Debug)]
pub enum PermitMessage {
    /// A request waits for the gate; `reply` is answered (or dropped, if the
    /// attempt ends first) when the gate allows it.
    Ask {
        task: TaskId,
        attempt: u32,
        ask: u64,
        reply: oneshot::Sender<()>,
    },
    /// A request that had its permit is over.
    Ended {
        task: TaskId,
        attempt: u32,
        signal: Signal,
        /// When the endpoint answered: after how long, and the quota it
        /// stated.
        answered: Option<(std::time::Duration, Option<crate::core::Quota>)>,
    },
}

/// The report of a plugin attempt on a server without a plugin runtime.
pub fn unavailable(plan: Plan) -> Report {
    never_ran(
        plan.task,
        plan.attempt,
        Outcome::Denied,
        "this server runs no plugins".into(),
    )
}

/// The report of an attempt that never ran (its plugin, or at all), and why.
pub(crate) fn never_ran(task: TaskId, attempt: u32, outcome: Outcome, why: String) -> Report {
    Report {
        task,
        attempt,
        outcome,
        ended_at: clock::now(),
        status: None,
        latency_ms: 0,
        error: Some(why),
        timed_out: false,
        response: None,
        lease: None,
        quota: None,
        logs: Vec::new(),
        next: Vec::new(),
    }
}
