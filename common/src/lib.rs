//! What every Tributary binary shares.

pub mod kafka_properties;
pub mod logging;
pub mod server;
pub mod shutdown;
