//! `tributary-relay`: Tributary's data plane. `outbox` moves rows of a PostgreSQL outbox table to
//! Kafka in order per aggregate, losing nothing; `migrate` prepares the table; `dispatch` pushes
//! records of Kafka topics to an HTTP sink.

pub mod backoff;
pub mod cli;
pub mod dispatch;
pub mod metrics;
pub mod outbox;
pub mod producer;
