//! The one clock. Everything else gets time from here or as an argument.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::core::Timestamp;

/// Wall-clock time as the core understands it.
#[expect(
    clippy::disallowed_methods,
    reason = "the one place that reads the clock"
)]
pub fn now() -> Timestamp {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    Timestamp(ms)
}

/// A monotonic instant, for measuring latency.
#[expect(
    clippy::disallowed_methods,
    reason = "the one place that reads the clock"
)]
pub fn instant() -> Instant {
    Instant::now()
}

/// The tokio instant at which wall-clock `at` arrives, as seen from now.
pub fn deadline(at: Timestamp) -> tokio::time::Instant {
    let wait = at.since(now());
    tokio::time::Instant::from_std(instant() + wait)
}
