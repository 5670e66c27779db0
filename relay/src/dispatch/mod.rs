//! `tributary-relay dispatch`: the push dispatcher. Consumes topics as a consumer group and POSTs
//! every record to an HTTP sink (CloudEvents binary mode), retrying with backoff and
//! dead-lettering what cannot be delivered; offsets are committed only below the lowest record
//! not yet delivered, dead-lettered or filtered out (at-least-once, nothing skipped).
//!
//! - [`filter`], [`retry`], [`scheduler`], [`dead_letter`]: the pure parts (what matches, when to
//!   retry, what may go and be committed, what a dead letter holds).
//! - [`http`]: requests and the keep-alive connections that carry them.
//! - [`consumer`]: the rdkafka consumer thread; [`engine`]: the loop tying everything together.

pub mod consumer;
pub mod dead_letter;
pub mod engine;
pub mod filter;
pub mod http;
pub mod metrics;
pub mod record;
pub mod retry;
pub mod scheduler;

use std::sync::Arc;
use std::time::Duration;

pub use consumer::{ConsumerSettings, StartFrom};
pub use engine::{DispatchError, Dispatcher};
pub use filter::Filter;
pub use http::Sink;
pub use retry::{Backoff, RetryPolicy};
pub use scheduler::Ordering;

/// Everything the dispatcher runs with, independent of the command line.
#[derive(Debug, Clone)]
pub struct DispatchSettings {
    pub consumer: ConsumerSettings,
    pub sink: Arc<Sink>,
    pub ordering: Ordering,
    /// Deliveries in flight at once (each on a connection of its own): records with `Unordered`,
    /// keys with `PerKey`.
    pub lanes: usize,
    pub retry: RetryPolicy,
    pub dead_letter_topic: String,
    /// All must match for a record to be delivered.
    pub filters: Vec<Filter>,
    /// Bounds one attempt, connecting included.
    pub request_timeout: Duration,
    /// Records held (read, not yet done) before the consumer pauses.
    pub max_buffered_records: usize,
    /// Bytes held before the consumer pauses.
    pub max_buffered_bytes: usize,
}
