//! Relay metrics, registered in a registry the caller owns, the readiness they imply, and the
//! report the operator reads from `GET /status`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{header, StatusCode};
use axum::routing::get;
use axum::Router;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tributary_api::outbox_relay::{RelayReport, RELAY_STATUS_PATH};
use tributary_common::server::Readiness;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Debug)]
pub struct RelayMetrics {
    pending: Gauge,
    published: Counter,
    failures: Family<ReasonLabels, Counter>,
    commit_to_ack: Histogram,
    batch_size: Histogram,
    database_ready: AtomicBool,
    kafka_ready: AtomicBool,
    readiness: Readiness,
    /// Whether `pending` holds a count yet (the gauge alone cannot tell 0 from "not counted").
    pending_counted: AtomicBool,
    /// Milliseconds since the Unix epoch of the last publish; 0 until the first.
    last_published_ms: AtomicU64,
    /// Why the table cannot be relayed, while the relay waits for it to be fixed.
    schema_problem: std::sync::Mutex<Option<String>>,
}

impl RelayMetrics {
    pub fn register(registry: &mut Registry, readiness: Readiness) -> Self {
        let metrics = RelayMetrics {
            pending: Gauge::default(),
            published: Counter::default(),
            failures: Family::default(),
            commit_to_ack: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
            database_ready: AtomicBool::new(false),
            kafka_ready: AtomicBool::new(false),
            readiness,
            pending_counted: AtomicBool::new(false),
            last_published_ms: AtomicU64::new(0),
            schema_problem: std::sync::Mutex::default(),
        };
        let registry = registry.sub_registry_with_prefix("tributary_relay");
        registry.register("pending_rows", "Outbox rows not yet published", metrics.pending.clone());
        registry.register("published", "Rows published and acknowledged by Kafka", metrics.published.clone());
        registry.register("failures", "Row failures, by reason", metrics.failures.clone());
        registry.register("commit_to_ack_seconds", "Time from a row's commit to Kafka's acknowledgement", metrics.commit_to_ack.clone());
        registry.register("batch_rows", "Rows claimed per batch", metrics.batch_size.clone());
        metrics
    }

    pub fn set_pending(&self, rows: i64) {
        self.pending.set(rows);
        self.pending_counted.store(true, Ordering::Release);
    }

    pub fn published(&self, rows: usize) {
        self.published.inc_by(rows as u64);
        if rows > 0 {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
            self.last_published_ms.store(u64::try_from(now.as_millis()).unwrap_or(u64::MAX), Ordering::Release);
        }
    }

    /// What `GET /status` answers.
    pub fn report(&self) -> RelayReport {
        let pending = self.pending_counted.load(Ordering::Acquire).then(|| self.pending.get());
        let last_published = match self.last_published_ms.load(Ordering::Acquire) {
            0 => None,
            ms => UNIX_EPOCH.checked_add(Duration::from_millis(ms)),
        };
        RelayReport::new(pending, last_published, self.schema_problem().clone())
    }

    /// Reported on `/status` until it is set to `None` again.
    pub fn set_schema_problem(&self, problem: Option<String>) {
        *self.schema_problem() = problem;
    }

    fn schema_problem(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.schema_problem.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn failed(&self, reason: &'static str) {
        self.failures.get_or_create(&ReasonLabels { reason }).inc();
    }

    pub fn observe_commit_to_ack(&self, seconds: f64) {
        self.commit_to_ack.observe(seconds.max(0.0));
    }

    pub fn observe_batch(&self, rows: usize) {
        self.batch_size.observe(rows as f64);
    }

    pub fn set_database_ready(&self, ready: bool) {
        self.database_ready.store(ready, Ordering::Release);
        self.readiness.set(self.is_ready());
    }

    pub fn set_kafka_ready(&self, ready: bool) {
        self.kafka_ready.store(ready, Ordering::Release);
        self.readiness.set(self.is_ready());
    }

    /// Ready while the last attempts reached both the database and Kafka.
    pub fn is_ready(&self) -> bool {
        self.database_ready.load(Ordering::Acquire) && self.kafka_ready.load(Ordering::Acquire)
    }
}

/// `GET /status`: the relay's [`RelayReport`] as JSON, served beside `/metrics`.
pub fn status_routes(metrics: Arc<RelayMetrics>) -> Router {
    Router::new().route(
        RELAY_STATUS_PATH,
        get(move || {
            let metrics = metrics.clone();
            async move {
                match serde_json::to_string(&metrics.report()) {
                    Ok(body) => (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body),
                    Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, [(header::CONTENT_TYPE, "text/plain")], error.to_string()),
                }
            }
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_is_empty_until_the_relay_counted_and_published() {
        let metrics = RelayMetrics::register(&mut Registry::default(), Readiness::default());
        assert_eq!(
            serde_json::to_value(metrics.report()).expect("serializes"),
            serde_json::json!({"pendingRows": null, "lastPublishedTime": null})
        );

        metrics.set_pending(0);
        metrics.published(0);
        assert_eq!(
            metrics.report(),
            RelayReport { pending_rows: Some(0), last_published_time: None, schema_problem: None },
            "an empty batch publishes nothing"
        );

        let before = SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_secs();
        metrics.set_pending(7);
        metrics.published(3);
        let report = metrics.report();
        assert_eq!(report.pending_rows, Some(7));
        let published = report.last_published_time.expect("a publish time").0;
        assert!(published.as_second() >= i64::try_from(before).expect("seconds fit"), "{published} is before {before}");
        assert_eq!(published.subsec_nanosecond(), 0, "whole seconds, as Kubernetes stores times");
    }

    #[test]
    fn a_schema_problem_is_reported_until_it_is_cleared() {
        let metrics = RelayMetrics::register(&mut Registry::default(), Readiness::default());
        metrics.set_schema_problem(Some("outbox table \"public\".\"outbox\" does not exist".into()));
        let report = serde_json::to_value(metrics.report()).expect("serializes");
        assert_eq!(report["schemaProblem"], serde_json::json!("outbox table \"public\".\"outbox\" does not exist"));
        metrics.set_schema_problem(None);
        assert!(serde_json::to_value(metrics.report()).expect("serializes").get("schemaProblem").is_none());
    }
}
