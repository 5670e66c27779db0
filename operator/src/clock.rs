//! Where "now" comes from: the system clock in production, a clock that stands still until moved
//! in tests, so that conditions, lease expiry and scaling cool-downs can be checked at fixed times.

use k8s_openapi::jiff::Timestamp;

pub trait Clock: Send + Sync {
    fn now(&self) -> Timestamp;
}

/// The real clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// A clock that stands still until moved.
#[cfg(test)]
#[derive(Debug)]
pub struct FixedClock(std::sync::Mutex<Timestamp>);

#[cfg(test)]
impl FixedClock {
    pub fn new(now: Timestamp) -> Self {
        FixedClock(std::sync::Mutex::new(now))
    }

    pub fn advance(&self, by: std::time::Duration) {
        let mut now = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *now = now.checked_add(k8s_openapi::jiff::SignedDuration::try_from(by).unwrap_or_default()).unwrap_or(*now);
    }
}

#[cfg(test)]
impl Clock for FixedClock {
    fn now(&self) -> Timestamp {
        *self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_clock_moves_only_when_advanced() {
        let clock = FixedClock::new(Timestamp::from_second(10).expect("timestamp"));
        assert_eq!(clock.now(), Timestamp::from_second(10).expect("timestamp"));
        clock.advance(std::time::Duration::from_secs(5));
        assert_eq!(clock.now(), Timestamp::from_second(15).expect("timestamp"));
    }
}
