//! `tributary-relay`: Tributary's data plane. `outbox` moves rows of a PostgreSQL outbox table to
//! Kafka in order per aggregate, losing nothing; `migrate` prepares the table.

pub mod bench;
pub mod cli;
pub mod metrics;
pub mod outbox;
pub mod producer;
