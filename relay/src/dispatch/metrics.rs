//! Dispatcher metrics (`tributary_dispatch_*`), registered in a registry the caller owns, and the
//! readiness they imply. Labels are bounded: failure kinds and dead-letter reasons only.

use std::sync::atomic::{AtomicBool, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tributary_common::server::Readiness;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// Why a record was dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLetterReason {
    /// The sink answered with a status that is not retried.
    NotRetryable,
    /// Every attempt failed.
    AttemptsExhausted,
}

impl DeadLetterReason {
    pub fn label(self) -> &'static str {
        match self {
            DeadLetterReason::NotRetryable => "not_retryable",
            DeadLetterReason::AttemptsExhausted => "attempts_exhausted",
        }
    }
}

#[derive(Debug)]
pub struct DispatchMetrics {
    delivered: Counter,
    retried: Counter,
    failed_attempts: Family<KindLabels, Counter>,
    dead_lettered: Family<ReasonLabels, Counter>,
    dead_letter_write_failures: Counter,
    dead_letters_truncated: Counter,
    dead_letters_refused: Counter,
    sink_outages: Counter,
    sink_up: Gauge,
    filtered: Counter,
    delivery_latency: Histogram,
    lag: Gauge,
    buffered: Gauge,
    in_flight: Gauge,
    assigned: AtomicBool,
    broker_up: AtomicBool,
    readiness: Readiness,
}

impl DispatchMetrics {
    pub fn register(registry: &mut Registry, readiness: Readiness) -> Self {
        Self::register_with_latency_buckets(registry, readiness, exponential_buckets(0.0005, 2.0, 18))
    }

    /// With the delivery-latency histogram's bucket bounds given (the benchmark reads its
    /// quantiles from finer buckets than a Prometheus server needs).
    pub fn register_with_latency_buckets(registry: &mut Registry, readiness: Readiness, buckets: impl Iterator<Item = f64>) -> Self {
        let metrics = DispatchMetrics {
            delivered: Counter::default(),
            retried: Counter::default(),
            failed_attempts: Family::default(),
            dead_lettered: Family::default(),
            dead_letter_write_failures: Counter::default(),
            dead_letters_truncated: Counter::default(),
            dead_letters_refused: Counter::default(),
            sink_outages: Counter::default(),
            sink_up: Gauge::default(),
            filtered: Counter::default(),
            delivery_latency: Histogram::new(buckets),
            lag: Gauge::default(),
            buffered: Gauge::default(),
            in_flight: Gauge::default(),
            assigned: AtomicBool::new(false),
            broker_up: AtomicBool::new(false),
            readiness,
        };
        let registry = registry.sub_registry_with_prefix("tributary_dispatch");
        registry.register("delivered", "Records the sink accepted (2xx)", metrics.delivered.clone());
        registry.register("retries", "Delivery attempts that were retries of a failed one", metrics.retried.clone());
        registry.register("failed_attempts", "Failed delivery attempts, by kind", metrics.failed_attempts.clone());
        registry.register("dead_lettered", "Records written to the dead-letter topic, by reason", metrics.dead_lettered.clone());
        registry.register(
            "dead_letter_write_failures",
            "Failed tries to write a dead letter (retried)",
            metrics.dead_letter_write_failures.clone(),
        );
        registry.register(
            "dead_letters_truncated",
            "Dead letters Kafka refused whole, written without the value (header tributary_truncated)",
            metrics.dead_letters_truncated.clone(),
        );
        registry.register(
            "dead_letters_refused",
            "Records dropped because Kafka refused their dead letter for good, truncated too (logged with topic, partition, offset)",
            metrics.dead_letters_refused.clone(),
        );
        registry.register("sink_up", "1 while the sink accepts connections, 0 while delivery is paused for it", metrics.sink_up.clone());
        registry.register(
            "sink_outages",
            "Times delivery was paused because the sink did not accept connections",
            metrics.sink_outages.clone(),
        );
        registry.register("filtered", "Records skipped by the filters (committed, not delivered)", metrics.filtered.clone());
        registry.register(
            "delivery_latency_seconds",
            "Time from a record's arrival in the dispatcher to the sink accepting it, retries included",
            metrics.delivery_latency.clone(),
        );
        registry.register("lag", "Records of the assigned partitions not yet done (stored offset to high watermark)", metrics.lag.clone());
        registry.register("buffered_records", "Records held by the dispatcher (waiting, in flight, retrying)", metrics.buffered.clone());
        registry.register("in_flight", "HTTP deliveries in flight", metrics.in_flight.clone());
        metrics
    }

    pub fn delivered(&self, latency_seconds: f64) {
        self.delivered.inc();
        self.delivery_latency.observe(latency_seconds.max(0.0));
    }

    pub fn failed_attempt(&self, kind: &'static str, retried: bool) {
        self.failed_attempts.get_or_create(&KindLabels { kind }).inc();
        if retried {
            self.retried.inc();
        }
    }

    pub fn dead_lettered(&self, reason: DeadLetterReason) {
        self.dead_lettered.get_or_create(&ReasonLabels { reason: reason.label() }).inc();
    }

    pub fn dead_letter_write_failed(&self) {
        self.dead_letter_write_failures.inc();
    }

    pub fn dead_letter_truncated(&self) {
        self.dead_letters_truncated.inc();
    }

    pub fn dead_letter_refused(&self) {
        self.dead_letters_refused.inc();
    }

    pub fn filtered(&self, records: u64) {
        self.filtered.inc_by(records);
    }

    pub fn set_lag(&self, records: i64) {
        self.lag.set(records);
    }

    pub fn set_load(&self, buffered: usize, in_flight: usize) {
        self.buffered.set(i64::try_from(buffered).unwrap_or(i64::MAX));
        self.in_flight.set(i64::try_from(in_flight).unwrap_or(i64::MAX));
    }

    /// The consumer joined the group and got its assignment (possibly empty), or lost it.
    pub fn set_assigned(&self, assigned: bool) {
        self.assigned.store(assigned, Ordering::Release);
        self.readiness.set(self.is_ready());
    }

    pub fn set_broker_up(&self, up: bool) {
        self.broker_up.store(up, Ordering::Release);
        self.readiness.set(self.is_ready());
    }

    /// The sink accepts connections (again), or stopped doing so (an outage begins).
    pub fn set_sink_up(&self, up: bool) {
        if self.sink_up.set(i64::from(up)) == 1 && !up {
            self.sink_outages.inc();
        }
        self.readiness.set(self.is_ready());
    }

    /// Ready while the sink accepts connections and the consumer is a member of its group with an
    /// assignment and a broker is up.
    pub fn is_ready(&self) -> bool {
        self.sink_up.get() == 1 && self.assigned.load(Ordering::Acquire) && self.broker_up.load(Ordering::Acquire)
    }
}
