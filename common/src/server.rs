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

pub fn router(registry: Arc<Registry>, readiness: Readiness) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .with_state(ServerState { registry, readiness })
}

/// Serves until the process ends.
pub async fn serve(address: SocketAddr, registry: Arc<Registry>, readiness: Readiness) -> std::io::Result<()> {
    serve_with(address, registry, readiness, Router::new()).await
}

/// Serves the common routes plus `extra`, the binary's own (such as the relay's `/status`), until
/// the process ends.
pub async fn serve_with(address: SocketAddr, registry: Arc<Registry>, readiness: Readiness, extra: Router) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(address).await?;
    axum::serve(listener, router(registry, readiness).merge(extra)).await
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
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(address).await.expect("connects");
        stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await.expect("writes");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("reads");
        let status = response[9..12].parse().expect("status code");
        (status, response)
    }

    #[tokio::test]
    async fn readyz_follows_readiness_and_metrics_render() {
        let mut registry = Registry::default();
        let failures = prometheus_client::metrics::counter::Counter::<u64>::default();
        registry.register("failures", "Failures", failures.clone());
        failures.inc();
        let readiness = Readiness::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binds");
        let address = listener.local_addr().expect("address");
        let app = router(Arc::new(registry), readiness.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });

        assert_eq!(get_text(address, "/healthz").await.0, 200);
        assert_eq!(get_text(address, "/readyz").await.0, 503);
        readiness.mark_ready();
        assert_eq!(get_text(address, "/readyz").await.0, 200);
        let (status, body) = get_text(address, "/metrics").await;
        assert_eq!(status, 200);
        assert!(body.contains("failures_total 1"), "{body}");
    }
}
