//! The pure core: gates, retry policy, the scheduler and the domain types.
//!
//! It never reads a clock, never touches the network or the disk, and draws
//! randomness only from a PRNG the shell seeds. That is what lets the simulation
//! tests replay hours of outages in milliseconds. A tidy test keeps it that way.

pub mod adaptive;
pub mod gate;
pub mod ids;
pub mod keys;
pub mod lease;
pub mod lookahead;
pub mod quota;
pub mod retry;
pub mod rng;
pub mod schedule;
pub mod scheduler;
#[cfg(test)]
mod sim_nodes;
pub mod time;
pub mod units;

pub use adaptive::AdaptiveRange;
pub use gate::{CircuitPolicy, Gate, GateLimits, GateState, RETRY_AFTER_MAX, Recovery, Signal};
pub use ids::{GateId, TaskId};
pub use keys::{KeyLimits, KeyPolicy, TaskKey};
pub use quota::{Quota, QuotaView};
pub use retry::{Backoff, RetryPolicy};
pub use scheduler::{
    DEFAULT_PRIORITY, Effect, End, FailReason, GateStatus, Input, KeyStatus, Order, Outcome,
    Permit, QueuedTask, Scheduler, Tuning,
};
pub use time::{Rate, Timestamp, format_duration, parse_duration};
