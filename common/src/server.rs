//! `/metrics`, `/healthz` and `/readyz` on one port, as every Tributary binary serves them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::registry::Registry;

/// What `/readyz` answers: set by the binary when it can do its work (the operator once its
/// watches are synced, the relay while it reaches its database and Kafka).
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn mark_ready(&self) {
        self.set(true);
    }

    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

#[derive(Clone)]
struct ServerState {
    registry: Arc<Registry>,
    readiness: Readiness,
}

/// Liveness: answers while the process serves at all.
pub const HEALTHZ_PATH: &str = "/healthz";
/// Readiness: answers 200 once the binary can do its work ([`Readiness`]).
pub const READYZ_PATH: &str = "/readyz";

pub fn router(registry: Arc<Registry>, readiness: Readiness) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route(HEALTHZ_PATH, get(|| async { "ok" }))
        .route(READYZ_PATH, get(ready))
        .with_state(ServerState { registry, readiness })
}

/// The server's socket, bound before the binary starts its work: an address already in use
/// stops the binary at start instead of leaving it running without health endpoints.
#[derive(Debug)]
pub struct Listener {
    listener: tokio::net::TcpListener,
    address: SocketAddr,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {address} for /metrics, /healthz and /readyz (set another --listen-address)")]
pub struct BindError {
    pub address: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

/// Binds `address` and logs where `/metrics` is served (the bound address: port 0 is resolved).
pub async fn bind(address: SocketAddr) -> Result<Listener, BindError> {
    let bind_error = |source| BindError { address, source };
    let listener = tokio::net::TcpListener::bind(address).await.map_err(bind_error)?;
    let address = listener.local_addr().map_err(bind_error)?;
    tracing::info!("serving /metrics, /healthz and /readyz at http://{address}/metrics");
    Ok(Listener { listener, address })
}

impl Listener {
    /// The bound address.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Serves until the process ends.
    pub async fn serve(self, registry: Arc<Registry>, readiness: Readiness) -> std::io::Result<()> {
        self.serve_with(registry, readiness, Router::new()).await
    }

    /// Serves the common routes plus `extra`, the binary's own (such as the relay's `/status`),
    /// until the process ends.
    pub async fn serve_with(self, registry: Arc<Registry>, readiness: Readiness, extra: Router) -> std::io::Result<()> {
        axum::serve(self.listener, router(registry, readiness).merge(extra)).await
    }
}

async fn metrics(State(state): State<ServerState>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &state.registry) {
        Ok(()) => (StatusCode::OK, [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, [(header::CONTENT_TYPE, "text/plain")], error.to_string()),
    }
}

async fn ready(State(state): State<ServerState>) -> impl IntoResponse {
    if state.readiness.is_ready() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get_text(address: SocketAddr, path: &str) -> (u16, String) {
        tributary_testkit::http::get(address, path).await.expect("answers")
    }

    #[tokio::test]
    async fn readyz_follows_readiness_and_metrics_render() {
        let mut registry = Registry::default();
        let failures = prometheus_client::metrics::counter::Counter::<u64>::default();
        registry.register("failures", "Failures", failures.clone());
        failures.inc();
        let readiness = Readiness::default();
        let listener = bind("127.0.0.1:0".parse().expect("address")).await.expect("binds");
        let address = listener.address();
        assert_ne!(address.port(), 0, "the bound port, not the requested one");
        tokio::spawn(listener.serve(Arc::new(registry), readiness.clone()));

        assert_eq!(get_text(address, "/healthz").await.0, 200);
        assert_eq!(get_text(address, "/readyz").await.0, 503);
        readiness.mark_ready();
        assert_eq!(get_text(address, "/readyz").await.0, 200);
        let (status, body) = get_text(address, "/metrics").await;
        assert_eq!(status, 200);
        assert!(body.contains("failures_total 1"), "{body}");
    }

    #[tokio::test]
    async fn a_taken_address_fails_to_bind_and_the_error_names_it() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("binds");
        let address = taken.local_addr().expect("address");
        let error = bind(address).await.expect_err("the address is taken");
        assert_eq!(error.address, address);
        assert_eq!(error.source.kind(), std::io::ErrorKind::AddrInUse);
        assert!(error.to_string().contains(&address.to_string()), "{error}");
    }
}
