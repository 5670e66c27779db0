//! What every Tributary binary shares.

pub mod logging;
pub mod server;
pub mod shutdown;
