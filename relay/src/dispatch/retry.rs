//! When a failed delivery is tried again, and after how long.
//!
//! Which responses are retried follows Knative Eventing's data-plane contract and its dispatcher
//! (`SelectiveRetry`): network errors, timeouts, `5xx`, `404` (a sink that is still starting),
//! `408`, `409` and `429` are retried; every other response (`1xx`, `3xx`, the remaining `4xx`)
//! means the sink will not accept this event, so it is dead-lettered at once.

use std::time::{Duration, SystemTime};

pub use tributary_api::subscription::Backoff;

use crate::backoff::exponential_delay;

/// Attempts and delays of a failing delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts before a record is dead-lettered, the first one included (at least 1).
    pub max_attempts: u32,
    pub backoff: Backoff,
    pub initial_delay: Duration,
    /// Longest delay, also for a `Retry-After` asking for more.
    pub max_delay: Duration,
}

impl RetryPolicy {
    /// The delay after failed attempt `attempts` (1 = the first attempt failed): the backoff
    /// (`initial × n` before retry n when linear, `initial × 2^(n-1)` when exponential), or the
    /// sink's `Retry-After` when that is longer; never more than `max_delay`.
    pub fn delay(&self, attempts: u32, retry_after: Option<Duration>) -> Duration {
        let retry = attempts.max(1);
        let backoff = match self.backoff {
            Backoff::Linear => self.initial_delay.saturating_mul(retry),
            Backoff::Exponential => exponential_delay(self.initial_delay, retry - 1, Duration::MAX),
        };
        backoff.max(retry_after.unwrap_or_default()).min(self.max_delay)
    }

    /// Whether a failure after `attempts` attempts is retried or dead-lettered.
    pub fn should_retry(&self, attempts: u32, retryable: bool) -> bool {
        retryable && attempts < self.max_attempts
    }
}

/// Whether a response status is worth another attempt (see the module documentation).
pub fn is_retryable_status(status: u16) -> bool {
    status >= 500 || matches!(status, 404 | 408 | 409 | 429)
}

/// A `Retry-After` value: delay-seconds or an HTTP date (RFC 9110 §10.2.3), as a delay from
/// `now`. A date in the past means "now"; anything unparsable is ignored.
pub fn parse_retry_after(value: &[u8], now: SystemTime) -> Option<Duration> {
    let text = std::str::from_utf8(value).ok()?.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        // More digits than u64 holds: the longest delay there is.
        return Some(text.parse::<u64>().map_or(Duration::MAX, Duration::from_secs));
    }
    let date = httpdate::parse_http_date(text).ok()?;
    Some(date.duration_since(now).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(backoff: Backoff) -> RetryPolicy {
        RetryPolicy { max_attempts: 5, backoff, initial_delay: Duration::from_millis(100), max_delay: Duration::from_secs(1) }
    }

    #[test]
    fn linear_backoff_grows_by_the_initial_delay_up_to_the_cap() {
        let linear = policy(Backoff::Linear);
        let delays: Vec<u128> = (1..=12).map(|n| linear.delay(n, None).as_millis()).collect();
        assert_eq!(delays, [100, 200, 300, 400, 500, 600, 700, 800, 900, 1000, 1000, 1000]);
    }

    #[test]
    fn exponential_backoff_doubles_up_to_the_cap_without_overflow() {
        let exponential = policy(Backoff::Exponential);
        let delays: Vec<u128> = (1..=6).map(|n| exponential.delay(n, None).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(exponential.delay(u32::MAX, None), Duration::from_secs(1));
        let uncapped = RetryPolicy { max_delay: Duration::MAX, ..exponential };
        assert_eq!(uncapped.delay(40, None), Duration::from_millis(100).saturating_mul(u32::MAX));
    }

    #[test]
    fn retry_after_wins_when_longer_and_is_capped_by_the_max_delay() {
        let exponential = policy(Backoff::Exponential);
        assert_eq!(exponential.delay(1, Some(Duration::from_millis(700))), Duration::from_millis(700));
        assert_eq!(exponential.delay(3, Some(Duration::from_millis(10))), Duration::from_millis(400));
        assert_eq!(exponential.delay(1, Some(Duration::from_secs(3600))), Duration::from_secs(1));
    }

    #[test]
    fn attempts_include_the_first_and_non_retryable_failures_stop_at_once() {
        let policy = policy(Backoff::Linear);
        assert!(policy.should_retry(1, true) && policy.should_retry(4, true));
        assert!(!policy.should_retry(5, true));
        assert!(!policy.should_retry(1, false));
        let once = RetryPolicy { max_attempts: 1, ..policy };
        assert!(!once.should_retry(1, true));
    }

    #[test]
    fn statuses_are_retried_as_knative_does() {
        for status in [404, 408, 409, 429, 500, 502, 503, 504, 599] {
            assert!(is_retryable_status(status), "{status}");
        }
        for status in [100, 301, 302, 304, 400, 401, 403, 405, 410, 413, 415, 422] {
            assert!(!is_retryable_status(status), "{status}");
        }
    }

    #[test]
    fn retry_after_parses_seconds_and_http_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480); // Wed, 21 Oct 2015 07:28:00 GMT
        assert_eq!(parse_retry_after(b"120", now), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after(b" 0 ", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after(b"99999999999999999999999", now), Some(Duration::MAX));
        assert_eq!(parse_retry_after(b"Wed, 21 Oct 2015 07:28:05 GMT", now), Some(Duration::from_secs(5)));
        // RFC 850 and asctime forms are HTTP dates too; a past date means now.
        assert_eq!(parse_retry_after(b"Wednesday, 21-Oct-15 07:28:30 GMT", now), Some(Duration::from_secs(30)));
        assert_eq!(parse_retry_after(b"Wed Oct 21 07:29:00 2015", now), Some(Duration::from_secs(60)));
        assert_eq!(parse_retry_after(b"Wed, 21 Oct 2015 07:00:00 GMT", now), Some(Duration::ZERO));
        for bad in [&b""[..], b"-1", b"1.5", b"soon", b"\xff"] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
        }
    }
}
