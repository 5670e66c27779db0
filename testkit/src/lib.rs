//! Support for tests and benchmarks; never a dependency of a shipped binary.

pub mod api_server;
pub mod http;
pub mod prerequisite;

pub use api_server::{Access, FakeApiServer, ResourceKey};
