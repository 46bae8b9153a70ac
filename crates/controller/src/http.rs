//! The admin server: `/metrics`, `/healthz`, `/readyz`.
//!
//! Like kubert's admin server it starts *unready*: `/readyz` turns 200 only after every watch has
//! completed its first list and the first pass has succeeded. `/healthz` fails when the pass loop
//! has not made progress for too long, so the kubelet restarts a wedged agent.
//!
//! The server runs on the host network, so anything that reaches the node can connect to it.
//! It must keep answering the kubelet's probes however many connections others open, and must
//! not let them grow its memory or file descriptors: every connection has to send its request
//! headers within [`ServeConfig::header_read_timeout`], a request gets
//! [`ServeConfig::request_timeout`] to be answered, and at most [`ServeConfig::max_connections`]
//! connections are open at once. When they are all taken, a new connection evicts the oldest one
//! that has no request in progress (so idle connections cannot lock the probes out), and is
//! closed at once only when every connection is busy answering a request.

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// Kept here too for callers that name it through the admin server.
pub use crate::health::Health;
use crate::health::Readiness;

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

/// Limits of the admin server (see the module documentation).
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// A connection must send a complete request head within this long after it is accepted or
    /// after its previous response, or it is closed. This also ends idle keep-alive connections.
    pub header_read_timeout: Duration,
    /// A request not answered within this long gets a 503.
    pub request_timeout: Duration,
    /// Connections open at once, busy or idle.
    pub max_connections: usize,
}

impl Default for ServeConfig {
    /// Probes and scrapes send their request at once and are answered in milliseconds; the
    /// request timeout matches Prometheus' default scrape timeout. 64 connections leave room
    /// for several scrapers and both probes.
    fn default() -> Self {
        ServeConfig {
            header_read_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            max_connections: 64,
        }
    }
}

/// Binds `addr` and serves the router with [`ServeConfig::default`] until the future is dropped.
pub async fn serve(addr: SocketAddr, router: Router) -> anyhow::Result<()> {
    serve_with(addr, router, ServeConfig::default()).await
}

/// Binds `addr` and serves the router with these limits until the future is dropped.
pub async fn serve_with(
    addr: SocketAddr,
    router: Router,
    config: ServeConfig,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} for metrics: {e}"))?;
    tracing::info!(%addr, "serving /metrics, /healthz, /readyz");
    if addr.ip().is_loopback() {
        // The default address falls back to loopback when the downward API gave no pod IP;
        // say why the kubelet's probes and Prometheus will not reach it.
        tracing::warn!(
            %addr,
            pod_ip = std::env::var("POD_IP").ok().as_deref().unwrap_or("<unset>"),
            "the admin server listens on loopback only, unreachable for probes and scrapes: \
             set POD_IP from status.podIP (the shipped DaemonSet does) or pass --metrics-addr"
        );
    }
    serve_listener(listener, router, config).await
}

/// Serves the router on an already bound listener until the future is dropped.
pub async fn serve_listener(
    listener: TcpListener,
    router: Router,
    config: ServeConfig,
) -> anyhow::Result<()> {
    let slots = Arc::new(Slots::new(config.max_connections.max(1)));
    let config = Arc::new(config);
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Errors of one connection (reset before accept) leave the listener usable;
                // anything else (out of descriptors, memory) is retried after a pause rather
                // than in a tight loop.
                if !matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionAborted
                        | std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::ConnectionRefused
                ) {
                    tracing::warn!(error = %e, "admin server: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                continue;
            }
        };
        let Some(slot) = slots.admit() else {
            // Every connection is answering a request: refuse this one at once instead of
            // queueing it.
            tracing::debug!("admin server: every connection busy, closing a new one");
            drop(stream);
            continue;
        };
        tokio::spawn(serve_connection(
            stream,
            router.clone(),
            config.clone(),
            slot,
        ));
    }
}

/// Serves one connection until the client closes it, it times out, or it is evicted.
async fn serve_connection(
    stream: TcpStream,
    router: Router,
    config: Arc<ServeConfig>,
    mut slot: Slot,
) {
    let busy = slot.busy.clone();
    let request_timeout = config.request_timeout;
    let inner = TowerToHyperService::new(router);
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let busy = BusyGuard::enter(busy.clone());
        let response = hyper::service::Service::call(&inner, req);
        async move {
            let response = match tokio::time::timeout(request_timeout, response).await {
                Ok(Ok(response)) => response,
                Ok(Err(never)) => match never {},
                Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "request timed out\n").into_response(),
            };
            drop(busy);
            Ok::<_, Infallible>(response)
        }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        // The smallest buffer hyper allows: requests here are a request line and a few headers.
        .max_buf_size(8192);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    let evicted = slot.evicted.take();
    tokio::select! {
        result = connection => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "admin server: connection ended");
            }
        }
        // Dropping the connection closes the socket.
        _ = async move {
            if let Some(evicted) = evicted {
                let _ = evicted.await;
            }
        } => tracing::debug!("admin server: idle connection evicted for a new one"),
    }
}

/// Marks a connection busy while one of its requests is being answered.
struct BusyGuard(Arc<AtomicBool>);

impl BusyGuard {
    fn enter(flag: Arc<AtomicBool>) -> Self {
        flag.store(true, Ordering::Relaxed);
        BusyGuard(flag)
    }
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

/// The open connections, oldest first, so that a new one can evict the oldest idle one.
struct Slots {
    max: usize,
    inner: Mutex<SlotsInner>,
}

#[derive(Default)]
struct SlotsInner {
    next_id: u64,
    open: BTreeMap<u64, OpenConnection>,
}

struct OpenConnection {
    busy: Arc<AtomicBool>,
    evict: oneshot::Sender<()>,
}

/// One admitted connection; dropping it frees its place.
struct Slot {
    id: u64,
    slots: Arc<Slots>,
    busy: Arc<AtomicBool>,
    /// Resolves when a newer connection evicted this one.
    evicted: Option<oneshot::Receiver<()>>,
}

impl Slots {
    fn new(max: usize) -> Self {
        Slots {
            max,
            inner: Mutex::new(SlotsInner::default()),
        }
    }

    /// A place for a new connection, evicting the oldest idle one when all are taken; `None`
    /// when every open connection is busy.
    fn admit(self: &Arc<Self>) -> Option<Slot> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.open.len() >= self.max {
            let oldest_idle = inner
                .open
                .iter()
                .find(|(_, conn)| !conn.busy.load(Ordering::Relaxed))
                .map(|(id, _)| *id)?;
            if let Some(conn) = inner.open.remove(&oldest_idle) {
                let _ = conn.evict.send(());
            }
        }
        let id = inner.next_id;
        inner.next_id += 1;
        let busy = Arc::new(AtomicBool::new(false));
        let (evict, evicted) = oneshot::channel();
        inner.open.insert(
            id,
            OpenConnection {
                busy: busy.clone(),
                evict,
            },
        );
        Some(Slot {
            id,
            slots: self.clone(),
            busy,
            evicted: Some(evicted),
        })
    }

    #[cfg(test)]
    fn open(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .open
            .len()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut inner = self.slots.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.open.remove(&self.id);
    }
}

async fn metrics(State(state): State<Arc<AdminState>>) -> impl IntoResponse {
    // Encoding only reads memory: the kernel's statistics come from the last sample of a
    // thread of their own (see `metrics::kernel_stats`), so a scrape never waits for the
    // kernel and needs no blocking thread.
    let mut body = String::new();
    let encoded = prometheus_client::encoding::text::encode(&mut body, &state.registry)
        .map(|()| body)
        .map_err(|e| e.to_string());
    match encoded {
        Ok(body) => (
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
    match state.health.readiness() {
        Readiness::Starting => (
            StatusCode::SERVICE_UNAVAILABLE,
            "waiting for the first complete state and pass\n".to_owned(),
        ),
        Readiness::Stale(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("view of the cluster not fresh ({why}): nothing is deleted\n"),
        ),
        Readiness::Ready => (StatusCode::OK, "ready\n".to_owned()),
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
        health.set_stale(Some("endpointslices watch failing".into()));
        let (status, body) = get_status(app.clone(), "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("endpointslices watch failing"), "{body}");
        health.set_stale(None);
        assert_eq!(get_status(app.clone(), "/readyz").await.0, StatusCode::OK);
        let (status, body) = get_status(app, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            body.contains("conntrack_reconciler_budget_exhausted_total"),
            "{body}"
        );
    }

    /// Starts the server on an ephemeral loopback port.
    async fn start(app: Router, config: ServeConfig) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve_listener(listener, app, config));
        addr
    }

    /// One request on a fresh connection; the response's status line.
    async fn request(addr: SocketAddr, path: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await
            .unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.unwrap();
        let text = String::from_utf8_lossy(&response);
        text.lines().next().unwrap_or_default().to_string()
    }

    fn admin_router() -> Router {
        router(
            Registry::default(),
            Arc::new(Health::new(Duration::from_secs(60))),
        )
    }

    /// A thousand connections that never finish a request (half of them send part of one) must
    /// neither keep the probes from being answered nor stay open past the header timeout.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_connections_neither_starve_healthz_nor_stay_open() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let header_read_timeout = Duration::from_millis(500);
        let addr = start(
            admin_router(),
            ServeConfig {
                header_read_timeout,
                request_timeout: Duration::from_secs(1),
                max_connections: 64,
            },
        )
        .await;
        let mut idle = Vec::new();
        for i in 0..1000 {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            if i % 2 == 1 {
                stream
                    .write_all(b"GET /metrics HTTP/1.1\r\nHost: a\r\n")
                    .await
                    .unwrap();
            }
            idle.push(stream);
        }
        for _ in 0..5 {
            let status =
                tokio::time::timeout(Duration::from_millis(100), request(addr, "/healthz"))
                    .await
                    .expect("/healthz answers within 100 ms beside 1000 idle connections");
            assert_eq!(status, "HTTP/1.1 200 OK");
        }
        // Evicted at once or closed by the header timeout: each reads end of stream (or a
        // reset) well before four header timeouts have passed.
        let deadline = tokio::time::Instant::now() + header_read_timeout * 4;
        for (i, stream) in idle.iter_mut().enumerate() {
            let mut buf = [0u8; 512];
            loop {
                match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
                    Err(_) => panic!("idle connection {i} still open after the header timeout"),
                    Ok(Ok(0)) | Ok(Err(_)) => break,
                    Ok(Ok(_)) => continue,
                }
            }
        }
    }

    /// The small read buffer bounds request heads only: a large `/metrics` body still arrives
    /// whole.
    #[tokio::test]
    async fn a_large_response_is_delivered_whole() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let body = "x".repeat(1 << 20);
        let app = Router::new().route("/big", get(move || async move { body.clone() }));
        let addr = start(app, ServeConfig::default()).await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /big HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.unwrap();
        let text = String::from_utf8_lossy(&response);
        assert!(text.starts_with("HTTP/1.1 200 OK"), "{}", &text[..80]);
        let (_, payload) = text.split_once("\r\n\r\n").unwrap();
        assert_eq!(payload.len(), 1 << 20);
    }

    #[tokio::test]
    async fn a_slow_request_gets_a_503_after_the_request_timeout() {
        let app = Router::new().route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(60)).await;
                "late"
            }),
        );
        let addr = start(
            app,
            ServeConfig {
                request_timeout: Duration::from_millis(100),
                ..ServeConfig::default()
            },
        )
        .await;
        let status = tokio::time::timeout(Duration::from_secs(5), request(addr, "/slow"))
            .await
            .expect("answered after the request timeout");
        assert_eq!(status, "HTTP/1.1 503 Service Unavailable");
    }

    #[test]
    fn a_new_connection_evicts_the_oldest_idle_one_and_is_refused_when_all_are_busy() {
        let slots = Arc::new(Slots::new(2));
        let mut first = slots.admit().unwrap();
        let mut second = slots.admit().unwrap();
        first.busy.store(true, Ordering::Relaxed);
        let third = slots
            .admit()
            .expect("the idle second connection makes room");
        assert!(second.evicted.as_mut().unwrap().try_recv().is_ok());
        assert!(first.evicted.as_mut().unwrap().try_recv().is_err());
        assert_eq!(slots.open(), 2);
        third.busy.store(true, Ordering::Relaxed);
        assert!(slots.admit().is_none(), "every connection is busy");
        drop(second);
        assert_eq!(slots.open(), 2);
        drop(first);
        assert_eq!(slots.open(), 1);
        assert!(slots.admit().is_some());
    }
}
