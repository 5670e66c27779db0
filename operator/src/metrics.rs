//! Reconcile metrics, registered in a registry the caller owns. Labels name controllers and
//! failure reasons, never objects, so cardinality stays fixed however many objects there are.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    pub controller: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub controller: &'static str,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScalingLabels {
    /// `up` or `down`.
    pub direction: &'static str,
}

#[derive(Debug)]
pub struct Metrics {
    reconciles: Family<ControllerLabels, Counter>,
    failures: Family<FailureLabels, Counter>,
    duration: Family<ControllerLabels, Histogram>,
    scalings: Family<ScalingLabels, Counter>,
    leader: Gauge,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Metrics {
            reconciles: Family::default(),
            failures: Family::default(),
            duration: Family::new_with_constructor(|| Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])),
            scalings: Family::default(),
            leader: Gauge::default(),
        };
        let registry = registry.sub_registry_with_prefix("tributary");
        registry.register("reconciles", "Reconcile runs", metrics.reconciles.clone());
        registry.register("reconcile_failures", "Reconcile runs that failed, by reason", metrics.failures.clone());
        registry.register("reconcile_duration_seconds", "Time a reconcile run took", metrics.duration.clone());
        registry.register("subscription_scalings", "Replica changes the built-in scaler made, by direction", metrics.scalings.clone());
        registry.register(
            "leader",
            "1 while this instance holds the leader Lease and reconciles, 0 while it stands by",
            metrics.leader.clone(),
        );
        metrics
    }

    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    pub fn reconciled(&self, controller: &'static str, took: Duration) {
        let labels = ControllerLabels { controller };
        self.reconciles.get_or_create(&labels).inc();
        self.duration.get_or_create(&labels).observe(took.as_secs_f64());
    }

    pub fn failed(&self, controller: &'static str, reason: &'static str) {
        self.failures.get_or_create(&FailureLabels { controller, reason }).inc();
    }

    pub fn scaled(&self, from: i32, to: i32) {
        let direction = if to > from { "up" } else { "down" };
        self.scalings.get_or_create(&ScalingLabels { direction }).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_render_with_controller_and_reason_labels() {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        metrics.reconciled("eventtopic", Duration::from_millis(20));
        metrics.failed("eventtopic", "kafka_unavailable");
        metrics.scaled(3, 1);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
        assert!(text.contains(r#"tributary_reconciles_total{controller="eventtopic"} 1"#), "{text}");
        assert!(text.contains(r#"tributary_reconcile_failures_total{controller="eventtopic",reason="kafka_unavailable"} 1"#), "{text}");
        assert!(text.contains(r#"tributary_reconcile_duration_seconds_count{controller="eventtopic"} 1"#), "{text}");
        assert!(text.contains(r#"tributary_subscription_scalings_total{direction="down"} 1"#), "{text}");
    }
}
