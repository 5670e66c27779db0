//! Relay metrics, registered in a registry the caller owns, and the readiness they imply.

use std::sync::atomic::{AtomicBool, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
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
    }

    pub fn published(&self, rows: usize) {
        self.published.inc_by(rows as u64);
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
