//! What every Tributary binary shares.

pub mod server;
