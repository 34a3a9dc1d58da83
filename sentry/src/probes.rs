//! The plain-HTTP side ports: `/healthz` (200 once the CA serves, 503 before) and the
//! Prometheus metrics (on `/` as upstream's exporter, and on `/metrics`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::Error;
use crate::metrics::Metrics;

/// Whether the CA is serving.
#[derive(Debug, Clone, Default)]
pub struct Health(Arc<AtomicBool>);

impl Health {
    pub fn set_ready(&self, ready: bool) {
        self.0.store(ready, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

async fn healthz(State(health): State<Health>) -> impl IntoResponse {
    if health.is_ready() {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "sentry is not ready")
    }
}

async fn metrics(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
        metrics.encode(),
    )
}

/// Binds the healthz port and serves it in the background; returns the bound address.
pub async fn serve_healthz(addr: SocketAddr, health: Health) -> Result<SocketAddr, Error> {
    let router = Router::new()
        .route("/healthz", get(healthz))
        .with_state(health);
    spawn(addr, router, "healthz").await
}

/// Binds the metrics port and serves it in the background; returns the bound address.
pub async fn serve_metrics(addr: SocketAddr, registry: Arc<Metrics>) -> Result<SocketAddr, Error> {
    let router = Router::new()
        .route("/", get(metrics))
        .route("/metrics", get(metrics))
        .with_state(registry);
    spawn(addr, router, "metrics").await
}

async fn spawn(addr: SocketAddr, router: Router, what: &'static str) -> Result<SocketAddr, Error> {
    let listener = dapr_serve::bind(addr).map_err(|source| Error::Bind { addr, source })?;
    let bound = listener.local_addr().unwrap_or(addr);
    tracing::info!(address = %bound, "{what} server listening");
    // These ports live as long as the process.
    let forever = tokio_util::sync::CancellationToken::new();
    let limits = dapr_serve::Limits::DEFAULT;
    tokio::spawn(dapr_serve::serve_plain_http(
        what, listener, router, limits, forever,
    ));
    Ok(bound)
}
