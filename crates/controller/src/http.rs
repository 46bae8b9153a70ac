//! The admin server: `/metrics`, `/healthz`, `/readyz`.
//!
//! Like kubert's admin server it starts *unready*: `/readyz` turns 200 only after every watch has
//! completed its first list and the first pass has succeeded. `/healthz` fails when the pass loop
//! has not made progress for too long, so the kubelet restarts a wedged agent.

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;

/// Liveness and readiness, shared between the agent's tasks and the admin server.
#[derive(Debug)]
pub struct Health {
    ready: AtomicBool,
    heartbeat_unix_ms: AtomicU64,
    stall_limit: Duration,
}

impl Health {
    /// A new, unready state; the pass loop must beat at least every `stall_limit`.
    pub fn new(stall_limit: Duration) -> Self {
        let h = Health {
            ready: AtomicBool::new(false),
            heartbeat_unix_ms: AtomicU64::new(0),
            stall_limit,
        };
        h.beat();
        h
    }

    /// Marks the agent ready (first complete state and first successful pass).
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    /// Whether the agent is ready.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Records that the pass loop is making progress.
    pub fn beat(&self) {
        self.heartbeat_unix_ms.store(unix_ms(), Ordering::Relaxed);
    }

    /// Whether the pass loop made progress recently.
    pub fn is_alive(&self) -> bool {
        let last = self.heartbeat_unix_ms.load(Ordering::Relaxed);
        unix_ms().saturating_sub(last) <= self.stall_limit.as_millis() as u64
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

struct AdminState {
    registry: Registry,
    health: Arc<Health>,
}

/// Builds the admin router.
pub fn router(registry: Registry, health: Arc<Health>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(Arc::new(AdminState { registry, health }))
}

/// Binds `addr` and serves the router until the future is dropped.
pub async fn serve(addr: SocketAddr, router: Router) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} for metrics: {e}"))?;
    tracing::info!(%addr, "serving /metrics, /healthz, /readyz");
    axum::serve(listener, router).await?;
    Ok(())
}

async fn metrics(State(state): State<Arc<AdminState>>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &state.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding metrics: {e}\n"),
        )
            .into_response(),
    }
}

async fn healthz(State(state): State<Arc<AdminState>>) -> impl IntoResponse {
    if state.health.is_alive() {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "pass loop stalled\n")
    }
}

async fn readyz(State(state): State<Arc<AdminState>>) -> impl IntoResponse {
    if state.health.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "waiting for the first complete state and pass\n",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get_status(router: Router, path: &str) -> (StatusCode, String) {
        use tower::ServiceExt;
        let resp = router
            .oneshot(
                axum::http::Request::get(path)
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn readyz_flips_after_set_ready_and_metrics_serve() {
        let mut registry = Registry::default();
        let _m = crate::metrics::Metrics::new(&mut registry);
        let health = Arc::new(Health::new(Duration::from_secs(60)));
        let app = router(registry, health.clone());
        assert_eq!(
            get_status(app.clone(), "/readyz").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(get_status(app.clone(), "/healthz").await.0, StatusCode::OK);
        health.set_ready();
        assert_eq!(get_status(app.clone(), "/readyz").await.0, StatusCode::OK);
        let (status, body) = get_status(app, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            body.contains("conntrack_reconciler_budget_exhausted_total"),
            "{body}"
        );
    }

    #[test]
    fn a_stalled_loop_is_not_alive() {
        let health = Health::new(Duration::from_millis(0));
        health.heartbeat_unix_ms.store(0, Ordering::Relaxed);
        assert!(!health.is_alive());
        let health = Health::new(Duration::from_secs(60));
        assert!(health.is_alive());
    }
}
