//! Capped exponential backoff, the one rule for waiting after repeated failures: a failing outbox
//! row, a lost database or broker, a push delivery the sink refused and a dead letter Kafka did
//! not take all wait `initial × 2^n` after their n+1-th failure in a row, never longer than a cap.

use std::time::Duration;

/// The delay after a failure that `earlier_failures` others preceded: `initial × 2^earlier_failures`,
/// at most `max`. Saturating, so any count is safe.
pub fn exponential_delay(initial: Duration, earlier_failures: u32, max: Duration) -> Duration {
    initial.saturating_mul(2u32.saturating_pow(earlier_failures)).min(max)
}

/// The delays of something that keeps failing: `initial`, then doubling up to `max`; from
/// `initial` again after a success.
#[derive(Debug, Clone)]
pub struct ExponentialBackoff {
    initial: Duration,
    max: Duration,
    failures: u32,
}

impl ExponentialBackoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        ExponentialBackoff { initial, max, failures: 0 }
    }

    /// How long to wait after one more failure.
    pub fn next_delay(&mut self) -> Duration {
        let delay = exponential_delay(self.initial, self.failures, self.max);
        self.failures = self.failures.saturating_add(1);
        delay
    }

    /// After a success: the next failure waits `initial` again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let mut backoff = ExponentialBackoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let delays: Vec<_> = (0..4).map(|_| backoff.next_delay().as_millis()).collect();
        assert_eq!(delays, vec![100, 200, 350, 350]);
        backoff.reset();
        assert_eq!(backoff.next_delay().as_millis(), 100);
    }

    #[test]
    fn delays_saturate_instead_of_overflowing() {
        let day = Duration::from_secs(86_400);
        assert_eq!(exponential_delay(Duration::from_secs(1), 0, day), Duration::from_secs(1));
        assert_eq!(exponential_delay(Duration::from_secs(1), 10, day), Duration::from_secs(1024));
        assert_eq!(exponential_delay(Duration::from_secs(1), u32::MAX, day), day);
        assert_eq!(exponential_delay(Duration::MAX, 3, Duration::MAX), Duration::MAX);
    }
}
