//! The built-in scaler's decision (pure): replicas from consumer lag, as KEDA's Kafka scaler would
//! choose them, for clusters without KEDA.
//!
//! - target = ceil(total lag / lagThreshold), clamped to [minReplicas, maxReplicas] and capped at
//!   the partition count (a consumer without a partition idles);
//! - with scaleToZero, zero while lag ≤ activationLagThreshold;
//! - more replicas at once; fewer only once the lag has asked for fewer for a whole `cooldown`;
//! - lag that cannot be read changes nothing: an unreachable broker is no reason to scale down.

use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use tributary_api::subscription::Scaling;

/// `spec.scaling`, with the cooldown parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub min_replicas: i32,
    pub max_replicas: i32,
    pub lag_threshold: i64,
    pub activation_lag_threshold: i64,
    pub scale_to_zero: bool,
    pub cooldown: Duration,
}

impl Policy {
    pub fn new(scaling: &Scaling, cooldown: Duration) -> Self {
        Policy {
            min_replicas: scaling.min_replicas,
            max_replicas: scaling.max_replicas,
            lag_threshold: scaling.lag_threshold.max(1),
            activation_lag_threshold: scaling.activation_lag_threshold,
            scale_to_zero: scaling.scale_to_zero,
            cooldown,
        }
    }

    /// Replicas the lag asks for, before any cooldown.
    pub fn target(&self, total_lag: i64, partitions: i32) -> i32 {
        if self.scale_to_zero && total_lag <= self.activation_lag_threshold {
            return 0;
        }
        let lag = total_lag.max(0);
        // ceil(lag / threshold) for non-negative integers (i64::div_ceil is not stable yet).
        let wanted = lag / self.lag_threshold + i64::from(lag % self.lag_threshold != 0);
        let clamped = i32::try_from(wanted).unwrap_or(i32::MAX).clamp(self.min_replicas, self.max_replicas);
        if partitions > 0 {
            clamped.min(partitions)
        } else {
            clamped
        }
    }

    /// Replicas to start with when nothing is known yet: the floor while there is work.
    pub fn initial(&self) -> i32 {
        self.min_replicas
    }
}

/// A lag reading, summed over the group's partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lag {
    pub total: i64,
    pub partitions: i32,
}

/// What the scaler knows this time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    /// `None`: the lag could not be read.
    pub lag: Option<Lag>,
    /// Replicas the Deployment has now; `None` before it exists.
    pub current: Option<i32>,
    /// Since when lag has asked for fewer replicas (from status).
    pub low_lag_since: Option<Timestamp>,
    pub now: Timestamp,
}

/// Why the scaler chose its replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The replicas are what the lag asks for.
    AtTarget,
    /// The lag asks for `target`; the current replicas stay until the cooldown ends.
    CoolingDown { target: i32, until: Timestamp },
    /// The lag is unknown; the current replicas stay.
    LagUnknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub replicas: i32,
    /// To remember in status for the next decision.
    pub low_lag_since: Option<Timestamp>,
    pub reason: Reason,
}

pub fn decide(policy: &Policy, observation: &Observation) -> Decision {
    let Some(lag) = observation.lag else {
        let replicas = observation.current.unwrap_or_else(|| policy.initial());
        return Decision { replicas, low_lag_since: observation.low_lag_since, reason: Reason::LagUnknown };
    };
    let target = policy.target(lag.total, lag.partitions);
    let at_target = Decision { replicas: target, low_lag_since: None, reason: Reason::AtTarget };
    let Some(current) = observation.current.filter(|current| target < *current) else {
        return at_target;
    };
    let since = observation.low_lag_since.unwrap_or(observation.now);
    let until = since.checked_add(SignedDuration::try_from(policy.cooldown).unwrap_or(SignedDuration::MAX)).unwrap_or(Timestamp::MAX);
    if observation.now >= until {
        at_target
    } else {
        Decision { replicas: current, low_lag_since: Some(since), reason: Reason::CoolingDown { target, until } }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COOLDOWN: Duration = Duration::from_secs(300);

    fn policy(min: i32, max: i32, scale_to_zero: bool) -> Policy {
        Policy { min_replicas: min, max_replicas: max, lag_threshold: 100, activation_lag_threshold: 10, scale_to_zero, cooldown: COOLDOWN }
    }

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).expect("timestamp")
    }

    fn observe(total: i64, partitions: i32, current: Option<i32>, low_lag_since: Option<i64>, now: i64) -> Observation {
        Observation { lag: Some(Lag { total, partitions }), current, low_lag_since: low_lag_since.map(at), now: at(now) }
    }

    #[test]
    fn target_is_lag_over_threshold_clamped_and_capped_at_partitions() {
        let policy = policy(2, 10, false);
        assert_eq!(policy.target(0, 12), 2, "min while idle without scaleToZero");
        assert_eq!(policy.target(450, 12), 5, "ceil(450 / 100)");
        assert_eq!(policy.target(5_000, 12), 10, "max");
        assert_eq!(policy.target(5_000, 6), 6, "no more consumers than partitions");
        assert_eq!(policy.target(5_000, 1), 1, "the partition cap wins over min");
    }

    #[test]
    fn scales_up_at_once() {
        let decision = decide(&policy(1, 10, false), &observe(750, 12, Some(2), None, 0));
        assert_eq!(decision, Decision { replicas: 8, low_lag_since: None, reason: Reason::AtTarget });
    }

    #[test]
    fn scales_down_only_after_the_lag_stayed_low_for_the_cooldown() {
        let policy = policy(1, 10, false);
        let first = decide(&policy, &observe(150, 12, Some(8), None, 0));
        assert_eq!(first, Decision { replicas: 8, low_lag_since: Some(at(0)), reason: Reason::CoolingDown { target: 2, until: at(300) } });
        let during = decide(&policy, &observe(50, 12, Some(8), Some(0), 299));
        assert_eq!((during.replicas, during.low_lag_since), (8, Some(at(0))));
        let after = decide(&policy, &observe(50, 12, Some(8), Some(0), 300));
        assert_eq!(after, Decision { replicas: 1, low_lag_since: None, reason: Reason::AtTarget });
    }

    #[test]
    fn lag_rising_again_ends_the_cooldown() {
        let policy = policy(1, 10, false);
        let back_up = decide(&policy, &observe(800, 12, Some(8), Some(0), 200));
        assert_eq!(back_up, Decision { replicas: 8, low_lag_since: None, reason: Reason::AtTarget });
    }

    #[test]
    fn scales_to_zero_when_idle_after_the_cooldown_and_back_when_lag_appears() {
        let policy = policy(2, 10, true);
        assert_eq!(decide(&policy, &observe(10, 4, Some(2), None, 0)).replicas, 2, "cooldown first");
        assert_eq!(decide(&policy, &observe(10, 4, Some(2), Some(0), 300)).replicas, 0, "lag ≤ activation threshold");
        let woken = decide(&policy, &observe(11, 4, Some(0), None, 301));
        assert_eq!(woken, Decision { replicas: 2, low_lag_since: None, reason: Reason::AtTarget }, "lag above activation: min");
    }

    #[test]
    fn unknown_lag_keeps_the_replicas_and_the_cooldown_clock() {
        let policy = policy(1, 10, true);
        let unknown = Observation { lag: None, current: Some(6), low_lag_since: Some(at(0)), now: at(1_000) };
        assert_eq!(decide(&policy, &unknown), Decision { replicas: 6, low_lag_since: Some(at(0)), reason: Reason::LagUnknown });
        let new_deployment = Observation { lag: None, current: None, low_lag_since: None, now: at(0) };
        assert_eq!(decide(&policy, &new_deployment).replicas, 1, "a new Deployment starts at minReplicas");
    }

    #[test]
    fn a_new_deployment_starts_at_the_target_without_cooldown() {
        assert_eq!(decide(&policy(1, 10, true), &observe(0, 4, None, None, 0)).replicas, 0);
        assert_eq!(decide(&policy(1, 10, false), &observe(320, 4, None, None, 0)).replicas, 4);
    }
}
