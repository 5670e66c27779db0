//! The transactional-outbox relay: claims rows, publishes them, and removes (or marks) them only
//! after Kafka acknowledged them.
//!
//! Each worker runs claim → produce → delete in one database transaction. The claim takes an
//! advisory lock per aggregate and skips rows other transactions hold, so several workers (and
//! several relay replicas) share a table while every aggregate is published by one transaction at
//! a time, in insertion order. Nothing relies on "id > last seen", so rows that commit out of
//! order are never skipped. A crash before the commit leaves the rows in place: they are sent
//! again, with the same `ce_id`.
//!
//! Here: the settings. `batch`: one claim → produce → delete transaction. `worker`: workers running
//! batches back to back, and the whole relay. `housekeeping`: LISTEN for inserts, the pending-rows
//! gauge, Kafka probes when idle, pruning. `database`: connecting, and waiting for a database that
//! is not up yet; `tls`: the TLS its URL's `sslmode` asks for. `table`: migrating and checking the table, releasing held rows. `schema`: the
//! SQL; `record`: a row as a Kafka record.

mod batch;
mod database;
mod housekeeping;
#[cfg(test)]
mod pg_tests;
pub mod record;
pub mod schema;
mod table;
pub mod tls;
mod worker;

use std::time::Duration;

pub use batch::{decode_row, process_batch, BatchOutcome, Session, Shard};
pub use database::{connect_when_reachable, connector, ConnectError, Connector, Database, DatabaseConnection};
pub use housekeeping::wake_workers_on_notify;
pub use table::{check_schema, check_schema_until_ready, migrate, release_held, OnSchemaProblem, SchemaProblem};
pub use worker::{connect_worker, relay, WorkerPool};

use crate::backoff::exponential_delay;
use record::RecordSettings;
use schema::Statements;

/// What happens to a row once Kafka has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cleanup {
    Delete,
    /// Set the published-at column; rows older than `retention` are pruned.
    Mark {
        retention: Duration,
    },
}

/// What a row that keeps failing does to its aggregate: with `Block` the row stays, marked
/// failed, and holds back the rest of its aggregate (order kept); with `Skip` it moves to the
/// `<table>_failed` table and its aggregate goes on.
pub use tributary_api::outbox_relay::FailurePolicy;

/// Everything a relay worker needs to know.
#[derive(Debug, Clone)]
pub struct OutboxSettings {
    pub statements: Statements,
    pub record: RecordSettings,
    pub batch_size: i64,
    pub poll_interval: Duration,
    pub cleanup: Cleanup,
    pub failure_policy: FailurePolicy,
    /// Attempts before a row counts as failed.
    pub max_attempts: i32,
    pub retry_initial: Duration,
    pub retry_max: Duration,
    /// Commit each batch synchronously (`synchronous_commit` stays on): see the CLI flag.
    pub synchronous_cleanup: bool,
    /// How long Kafka may take to acknowledge a record (the producer's delivery timeout).
    pub delivery_timeout: Duration,
}

impl OutboxSettings {
    /// How long a worker's transaction may sit idle before PostgreSQL ends its session, releasing
    /// its aggregates' locks (a relay frozen or cut off mid-batch must not hold them for ever).
    /// A batch's transaction is idle while it waits for Kafka: it starts its last round of
    /// records within one delivery timeout (see `process_batch`), which ends within another.
    pub fn transaction_idle_timeout(&self) -> Duration {
        self.delivery_timeout.saturating_mul(2) + Duration::from_secs(30)
    }

    /// Delay before attempt `attempts + 1` of a row: exponential, capped.
    pub fn retry_delay(&self, attempts: i32) -> Duration {
        exponential_delay(self.retry_initial, attempts.max(0).unsigned_abs(), self.retry_max)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("database error on outbox table {table}: {source}")]
    Database {
        table: String,
        #[source]
        source: tokio_postgres::Error,
    },
}
