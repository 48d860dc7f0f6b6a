//! Retry policy: how many attempts, how long between them, and for how long at most.

use std::time::Duration;

use super::rng::Rng;

/// Exponential backoff between attempts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    /// At least 1.0.
    pub multiplier: f64,
    /// When set, each delay is drawn uniformly from [delay / 2, delay], so tasks that
    /// failed together do not come back together.
    pub jitter: bool,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(600),
            multiplier: 2.0,
            jitter: true,
        }
    }
}

impl Backoff {
    /// The delay after the `attempt`-th attempt (1-based) failed.
    pub fn delay(&self, attempt: u32, rng: &mut Rng) -> Duration {
        let exponent = attempt.saturating_sub(1).min(1_000) as i32;
        let base = self.initial.as_secs_f64() * self.multiplier.powi(exponent);
        let capped = base.min(self.max.as_secs_f64()).max(0.0);
        let secs = if self.jitter {
            capped * (0.5 + 0.5 * rng.next_f64())
        } else {
            capped
        };
        Duration::from_secs_f64(secs)
    }
}

/// Everything the core needs to decide a task's next step after an attempt.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryPolicy {
    /// At least 1.
    pub max_attempts: u32,
    pub backoff: Backoff,
    /// Stop retrying once this long has passed since the first attempt started.
    pub max_retry_duration: Option<Duration>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            backoff: Backoff::default(),
            max_retry_duration: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Backoff never exceeds `max`, never falls below half the un-jittered delay,
        /// and without jitter grows monotonically.
        #[test]
        fn backoff_laws(
            initial_ms in 1u64..100_000,
            max_ms in 1u64..10_000_000,
            multiplier in 1.0f64..10.0,
            seed: u64,
            attempt in 1u32..200,
        ) {
            let max_ms = max_ms.max(initial_ms);
            let smooth = Backoff {
                initial: Duration::from_millis(initial_ms),
                max: Duration::from_millis(max_ms),
                multiplier,
                jitter: false,
            };
            let jittered = Backoff { jitter: true, ..smooth };
            let mut rng = super::Rng::new(seed);
            let d = smooth.delay(attempt, &mut rng);
            let next = smooth.delay(attempt + 1, &mut rng);
            prop_assert!(d <= smooth.max + Duration::from_millis(1));
            prop_assert!(next >= d);
            if attempt == 1 {
                prop_assert_eq!(d.as_millis(), u128::from(initial_ms.min(max_ms)));
            }
            let j = jittered.delay(attempt, &mut rng);
            prop_assert!(j <= d + Duration::from_millis(1));
            prop_assert!(j + Duration::from_millis(1) >= d / 2);
        }
    }
}
