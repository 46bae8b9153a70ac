//! A loopback Kubernetes API double: list and watch for the kinds the agent reads.
//!
//! It speaks enough of kube-apiserver's protocol for the agent's list/watch loop (and
//! kube-runtime's watcher, which speaks the same requests): lists with a
//! resourceVersion, NDJSON watch streams resumed from a resourceVersion, bookmarks when asked,
//! `410 Gone` (a Status with reason `Expired`) for a forgotten version, the label and field
//! selectors kube-proxy uses, `timeoutSeconds`, and `sendInitialEvents` streaming lists. The lab
//! mutates the state through [`ApiServer::apply`] / [`ApiServer::delete`], and injects faults:
//! for every kind at once ([`ApiServer::drop_watches`], [`ApiServer::fail_for`] (HTTP 500),
//! [`ApiServer::stall_for`]) or for one kind ([`ApiServer::inject`] with a [`Fault`]: 500, 403,
//! stall, freeze without error, 410 Gone).
//!
//! Watches that ask for bookmarks get one periodically ([`ApiServer::set_bookmark_interval`]),
//! as kube-apiserver's watch cache sends one about every minute (`defaultBookmarkFrequency` in
//! `staging/src/k8s.io/apiserver/pkg/storage/cacher/cacher.go`) and one 2 s before the watch's
//! deadline (`cacheWatcher.nextBookmarkTime`), carrying the newest resourceVersion the watch has
//! processed. The lab's default interval is short so that tests stay fast.
//!
//! The listening socket can be made inside a network namespace ([`ApiServer::start_in_netns`]),
//! so an agent started there with `ip netns exec` reaches it on 127.0.0.1.
//!
//! [`store`] holds the objects and their history, [`selector`] parses selectors, [`kinds`] names
//! the kinds served and their REST coordinates.

pub mod kinds;
pub mod selector;
pub mod store;

use self::kinds::Kind;
use self::selector::{FieldSelector, LabelSelector};
use self::store::{Change, Store};
use crate::netns::in_netns;
use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc, watch};

type Body = BoxBody<Bytes, Infallible>;

/// The lab's default interval between periodic bookmarks (kube-apiserver's is one minute).
pub const DEFAULT_BOOKMARK_INTERVAL: Duration = Duration::from_secs(1);

/// How long before a watch's `timeoutSeconds` deadline kube-apiserver sends its last bookmark.
const PRE_DEADLINE_BOOKMARK: Duration = Duration::from_secs(2);

/// A fault of one resource kind (see [`ApiServer::inject`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Every request for the kind (list, watch, get) answers HTTP 500 `InternalError`; open
    /// watches of the kind end, so their clients come back and get the error.
    InternalError,
    /// Every request for the kind answers HTTP 403 `Forbidden` (as after an RBAC change); open
    /// watches of the kind end.
    Forbidden,
    /// Requests for the kind hang until the fault ends; open watches of the kind hold their
    /// events and bookmarks, and deliver them when it ends.
    Stall,
    /// Watches of the kind, open and new, stay open and deliver nothing: no event, no bookmark,
    /// no error, and no end at their `timeoutSeconds` (a dead connection the server cannot close
    /// either). Lists and gets work. When the fault ends the frozen streams end (as a dead
    /// connection does once noticed); clients resume from their last resourceVersion.
    Freeze,
    /// Watches of the kind answer 410 Gone (an `ERROR` event with reason `Expired`) whatever
    /// version they resume from, as after a compaction of that resource's history; open watches
    /// of the kind end. Lists work, so clients relist, then fail again on their next watch.
    Gone,
}

impl Fault {
    /// Whether the fault ends open watches of its kind when injected.
    fn ends_open_watches(self) -> bool {
        matches!(self, Fault::InternalError | Fault::Forbidden | Fault::Gone)
    }
}

/// Faults the lab can inject.
#[derive(Debug, Default)]
struct Faults {
    fail_until: Option<Instant>,
    stall_until: Option<Instant>,
    /// One fault per kind, until an instant.
    by_kind: HashMap<Kind, (Fault, Instant)>,
    /// Bumped to end the open watches of one kind.
    kind_drops: HashMap<Kind, u64>,
}

impl Faults {
    /// The fault of `kind` in effect now, with its end.
    fn of(&self, kind: Kind) -> Option<(Fault, Instant)> {
        self.by_kind
            .get(&kind)
            .copied()
            .filter(|(_, until)| *until > Instant::now())
    }

    fn kind_drop(&self, kind: Kind) -> u64 {
        self.kind_drops.get(&kind).copied().unwrap_or(0)
    }
}

#[derive(Debug)]
struct Shared {
    store: Mutex<Store>,
    faults: Mutex<Faults>,
    /// Bumped to end every open watch stream.
    drop_generation: watch::Sender<u64>,
    /// Bumped whenever a fault is injected or healed, so waiting watches look again.
    fault_changes: watch::Sender<u64>,
    /// Every request's path and query, in order (for tests).
    requests: Mutex<Vec<String>>,
    /// Between periodic bookmarks; None sends none (but the initial-events-end one).
    bookmark_interval: Mutex<Option<Duration>>,
    addr: Mutex<Option<SocketAddr>>,
}

impl Shared {
    fn lock_store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_faults(&self) -> std::sync::MutexGuard<'_, Faults> {
        self.faults.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What holds a watch stream of `kind` now: a stall (global or of the kind) or a freeze,
    /// with its end. A freeze wins over a stall: it must not deliver held events at its end.
    fn holding(&self, kind: Kind) -> Option<(Fault, Instant)> {
        let faults = self.lock_faults();
        let now = Instant::now();
        match faults.of(kind) {
            Some((fault @ (Fault::Freeze | Fault::Stall), until)) => Some((fault, until)),
            _ => faults
                .stall_until
                .filter(|t| *t > now)
                .map(|t| (Fault::Stall, t)),
        }
    }
}

/// The running API double; stops serving when dropped.
#[derive(Debug)]
pub struct ApiServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    kubeconfig: PathBuf,
    _dir: tempfile::TempDir,
    accept_task: tokio::task::JoinHandle<()>,
    shutdown: watch::Sender<bool>,
}

impl ApiServer {
    /// Serves on 127.0.0.1 (an ephemeral port) in the caller's namespace, on `runtime`.
    pub fn start(runtime: &tokio::runtime::Handle) -> Result<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1")?;
        Self::serve(runtime, listener)
    }

    /// Serves on 127.0.0.1 inside the network namespace at `netns` (`/run/netns/<name>`).
    pub fn start_in_netns(runtime: &tokio::runtime::Handle, netns: &Path) -> Result<Self> {
        let listener = in_netns(netns, || std::net::TcpListener::bind("127.0.0.1:0"))
            .with_context(|| format!("binding 127.0.0.1 inside {}", netns.display()))?;
        Self::serve(runtime, listener)
    }

    fn serve(runtime: &tokio::runtime::Handle, listener: std::net::TcpListener) -> Result<Self> {
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let (drop_generation, _) = watch::channel(0);
        let (fault_changes, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::new()),
            faults: Mutex::new(Faults::default()),
            drop_generation,
            fault_changes,
            requests: Mutex::new(Vec::new()),
            bookmark_interval: Mutex::new(Some(DEFAULT_BOOKMARK_INTERVAL)),
            addr: Mutex::new(Some(addr)),
        });
        let dir = tempfile::tempdir().context("kubeconfig directory")?;
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(&kubeconfig, kubeconfig_yaml(addr)).context("writing the kubeconfig")?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let listener = {
            let _guard = runtime.enter();
            tokio::net::TcpListener::from_std(listener)?
        };
        let accept_shared = shared.clone();
        let accept_task = runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let shared = accept_shared.clone();
                let shutdown = shutdown_rx.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let shared = shared.clone();
                        let shutdown = shutdown.clone();
                        async move { Ok::<_, Infallible>(handle(shared, shutdown, req).await) }
                    });
                    // A client that hangs up mid-stream is normal (watch restarts).
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Self {
            shared,
            addr,
            kubeconfig,
            _dir: dir,
            accept_task,
            shutdown,
        })
    }

    /// The address it listens on (inside its namespace).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A kubeconfig file pointing at it (plain HTTP, no credentials).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// Creates or replaces an object; returns the new resourceVersion.
    pub fn apply<K: k8s_openapi::Resource + Serialize>(&self, object: &K) -> Result<u64> {
        let mut value = serde_json::to_value(object)?;
        value["kind"] = K::KIND.into();
        self.shared.lock_store().apply(value)
    }

    /// Deletes an object (namespace ignored for cluster-scoped kinds).
    pub fn delete<K: k8s_openapi::Resource>(&self, namespace: &str, name: &str) -> Result<u64> {
        let kind = Kind::from_name(K::KIND).context("kind not served by the lab")?;
        self.shared.lock_store().delete(kind, namespace, name)
    }

    /// One object, typed.
    pub fn get<K: k8s_openapi::Resource + DeserializeOwned>(
        &self,
        namespace: &str,
        name: &str,
    ) -> Option<K> {
        let kind = Kind::from_name(K::KIND)?;
        let value = self.shared.lock_store().get(kind, namespace, name)?;
        serde_json::from_value((*value).clone()).ok()
    }

    /// Every object of a kind, typed (objects that do not parse are skipped).
    pub fn list<K: k8s_openapi::Resource + DeserializeOwned>(&self) -> Vec<K> {
        let Some(kind) = Kind::from_name(K::KIND) else {
            return Vec::new();
        };
        let values = self.shared.lock_store().list(kind);
        values
            .into_iter()
            .filter_map(|v| serde_json::from_value((*v).clone()).ok())
            .collect()
    }

    /// A receiver notified of every change (the emulated kube-proxy follows it).
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.shared.lock_store().subscribe()
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.lock_store().resource_version()
    }

    /// Forgets the change history: every watch resuming from an older version gets 410 Gone.
    pub fn compact(&self) {
        self.shared.lock_store().compact();
    }

    /// Ends every open watch stream now (clients resume from their last resourceVersion).
    pub fn drop_watches(&self) {
        self.shared.drop_generation.send_modify(|g| *g += 1);
    }

    /// Answers every request with HTTP 500 for `duration`.
    pub fn fail_for(&self, duration: Duration) {
        let mut faults = self.shared.faults.lock().unwrap_or_else(|e| e.into_inner());
        faults.fail_until = Some(Instant::now() + duration);
    }

    /// Holds every request and every watch event for `duration`.
    pub fn stall_for(&self, duration: Duration) {
        let mut faults = self.shared.faults.lock().unwrap_or_else(|e| e.into_inner());
        faults.stall_until = Some(Instant::now() + duration);
    }

    /// Injects `fault` into every request and watch of `kind` for `duration` (replacing any
    /// fault of that kind); the other kinds are served normally.
    pub fn inject(&self, kind: Kind, fault: Fault, duration: Duration) {
        {
            let mut faults = self.shared.lock_faults();
            faults
                .by_kind
                .insert(kind, (fault, Instant::now() + duration));
            if fault.ends_open_watches() {
                *faults.kind_drops.entry(kind).or_insert(0) += 1;
            }
        }
        self.shared.fault_changes.send_modify(|g| *g += 1);
    }

    /// Ends the fault of `kind` now (a frozen watch ends, a stalled one delivers).
    pub fn heal(&self, kind: Kind) {
        self.shared.lock_faults().by_kind.remove(&kind);
        self.shared.fault_changes.send_modify(|g| *g += 1);
    }

    /// The fault of `kind` in effect now, if any.
    pub fn fault(&self, kind: Kind) -> Option<Fault> {
        self.shared.lock_faults().of(kind).map(|(fault, _)| fault)
    }

    /// Ends the open watch streams of one kind now (clients resume from their last version).
    pub fn drop_watches_of(&self, kind: Kind) {
        *self
            .shared
            .lock_faults()
            .kind_drops
            .entry(kind)
            .or_insert(0) += 1;
        self.shared.fault_changes.send_modify(|g| *g += 1);
    }

    /// Sets the interval between the periodic bookmarks sent to watches that allow them (None:
    /// no periodic bookmarks, as from a server without a watch cache). Watches opened from now
    /// on use it. The default is [`DEFAULT_BOOKMARK_INTERVAL`].
    pub fn set_bookmark_interval(&self, interval: Option<Duration>) {
        *self
            .shared
            .bookmark_interval
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = interval.filter(|i| !i.is_zero());
    }

    /// The interval between periodic bookmarks (None: none are sent).
    pub fn bookmark_interval(&self) -> Option<Duration> {
        *self
            .shared
            .bookmark_interval
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Every request so far, as `path?query`.
    pub fn requests(&self) -> Vec<String> {
        self.shared
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        self.accept_task.abort();
        *self.shared.addr.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

fn kubeconfig_yaml(addr: SocketAddr) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: lab\n  cluster:\n    server: http://{addr}\n\
         users:\n- name: lab\n  user: {{}}\ncontexts:\n- name: lab\n  context:\n    cluster: lab\n    user: lab\n\
         current-context: lab\n"
    )
}

fn full(status: StatusCode, body: Value) -> Response<Body> {
    let mut response = Response::new(
        Full::new(Bytes::from(body.to_string()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

fn status_object(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

fn error(status: StatusCode, reason: &str, message: &str) -> Response<Body> {
    full(status, status_object(status.as_u16(), reason, message))
}

fn stall_until(shared: &Shared) -> Option<Instant> {
    let faults = shared.faults.lock().unwrap_or_else(|e| e.into_inner());
    faults.stall_until.filter(|t| *t > Instant::now())
}

async fn handle(
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
    req: Request<Incoming>,
) -> Response<Body> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    shared
        .requests
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(format!("{path}?{query}"));
    if let Some(until) = stall_until(&shared) {
        tokio::time::sleep_until(until.into()).await;
    }
    let failing = {
        let faults = shared.faults.lock().unwrap_or_else(|e| e.into_inner());
        faults.fail_until.is_some_and(|t| t > Instant::now())
    };
    if failing {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            "injected fault: the lab's API double is failing requests",
        );
    }
    if req.method() != Method::GET {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "the lab's API double is read-only",
        );
    }
    let params = parse_query(&query);
    if let Some(doc) = discovery(&shared, &path) {
        return full(StatusCode::OK, doc);
    }
    let Some(target) = route(&path) else {
        return error(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("no route for {path}"),
        );
    };
    let kind = match &target {
        Target::Collection { kind, .. } | Target::Get { kind, .. } => *kind,
    };
    let watching = params.get("watch").is_some_and(|w| w == "true" || w == "1");
    if let Some(response) = kind_fault_response(&shared, kind, watching).await {
        return response;
    }
    match target {
        Target::Get {
            kind,
            namespace,
            name,
        } => {
            let object = shared.lock_store().get(kind, &namespace, &name);
            match object {
                Some(object) => full(StatusCode::OK, (*object).clone()),
                None => error(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    &format!("{} {name:?} not found", kind.plural()),
                ),
            }
        }
        Target::Collection { kind, namespace } => {
            let filter = match Filter::new(kind, namespace, &params) {
                Ok(filter) => filter,
                Err(message) => return error(StatusCode::BAD_REQUEST, "BadRequest", &message),
            };
            if watching {
                watch_response(shared, shutdown, filter, &params)
            } else {
                list_response(&shared, &filter, &params)
            }
        }
    }
}

/// The answer a fault of `kind` gives instead of the normal one, after holding a stalled
/// request until the stall ends (or is healed).
async fn kind_fault_response(
    shared: &Shared,
    kind: Kind,
    watching: bool,
) -> Option<Response<Body>> {
    let mut changes = shared.fault_changes.subscribe();
    loop {
        changes.mark_unchanged();
        let fault = shared.lock_faults().of(kind);
        match fault {
            Some((Fault::Stall, until)) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(until.into()) => {}
                    _ = changes.changed() => {}
                }
            }
            Some((Fault::InternalError, _)) => {
                return Some(error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "InternalError",
                    &format!(
                        "injected fault: the lab's API double is failing requests for {}",
                        kind.plural()
                    ),
                ));
            }
            Some((Fault::Forbidden, _)) => {
                return Some(error(
                    StatusCode::FORBIDDEN,
                    "Forbidden",
                    &format!(
                        "{} is forbidden: injected fault: the lab's API double refuses access",
                        kind.plural()
                    ),
                ));
            }
            Some((Fault::Gone, _)) if watching => {
                let gone = status_object(
                    410,
                    "Expired",
                    &format!(
                        "injected fault: too old resource version for {}",
                        kind.plural()
                    ),
                );
                return Some(stream_lines(
                    vec![json!({"type": "ERROR", "object": gone})],
                    None,
                ));
            }
            Some((Fault::Gone | Fault::Freeze, _)) | None => return None,
        }
    }
}

enum Target {
    Collection {
        kind: Kind,
        namespace: Option<String>,
    },
    Get {
        kind: Kind,
        namespace: String,
        name: String,
    },
}

fn route(path: &str) -> Option<Target> {
    let (prefix, rest) = if let Some(rest) = path.strip_prefix("/api/v1/") {
        ("/api/v1", rest)
    } else if let Some(rest) = path.strip_prefix("/apis/discovery.k8s.io/v1/") {
        ("/apis/discovery.k8s.io/v1", rest)
    } else {
        return None;
    };
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    match segments.as_slice() {
        [plural] => Some(Target::Collection {
            kind: Kind::from_path(prefix, plural)?,
            namespace: None,
        }),
        ["namespaces", ns, plural] => {
            let kind = Kind::from_path(prefix, plural)?;
            kind.namespaced().then(|| Target::Collection {
                kind,
                namespace: Some(ns.to_string()),
            })
        }
        ["namespaces", ns, plural, name] => {
            let kind = Kind::from_path(prefix, plural)?;
            kind.namespaced().then(|| Target::Get {
                kind,
                namespace: ns.to_string(),
                name: name.to_string(),
            })
        }
        [plural, name] => {
            let kind = Kind::from_path(prefix, plural)?;
            (!kind.namespaced()).then(|| Target::Get {
                kind,
                namespace: String::new(),
                name: name.to_string(),
            })
        }
        _ => None,
    }
}

fn discovery(shared: &Shared, path: &str) -> Option<Value> {
    let resources = |kinds: &[Kind], group_version: &str| {
        let list: Vec<Value> = kinds
            .iter()
            .map(|k| {
                json!({
                    "name": k.plural(), "singularName": k.name().to_lowercase(),
                    "namespaced": k.namespaced(), "kind": k.name(),
                    "verbs": ["get", "list", "watch"],
                })
            })
            .collect();
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": list})
    };
    let addr = shared
        .addr
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .map(|a| a.to_string())
        .unwrap_or_default();
    let discovery_group = json!({
        "name": "discovery.k8s.io",
        "versions": [{"groupVersion": "discovery.k8s.io/v1", "version": "v1"}],
        "preferredVersion": {"groupVersion": "discovery.k8s.io/v1", "version": "v1"},
    });
    match path.trim_end_matches('/') {
        "/version" => Some(json!({
            "major": "1", "minor": "33", "gitVersion": "v1.33.0-e2e-lab",
            "gitCommit": "", "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z",
            "goVersion": "", "compiler": "rustc", "platform": "linux/amd64",
        })),
        "/api" => Some(json!({
            "kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": addr}],
        })),
        "/apis" => {
            Some(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [discovery_group]}))
        }
        "/apis/discovery.k8s.io" => {
            let mut group = discovery_group;
            group["kind"] = "APIGroup".into();
            group["apiVersion"] = "v1".into();
            Some(group)
        }
        "/api/v1" => Some(resources(&[Kind::Service, Kind::Node, Kind::Pod], "v1")),
        "/apis/discovery.k8s.io/v1" => {
            Some(resources(&[Kind::EndpointSlice], "discovery.k8s.io/v1"))
        }
        _ => None,
    }
}

/// What a list or watch selects.
struct Filter {
    kind: Kind,
    namespace: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Filter {
    fn new(
        kind: Kind,
        namespace: Option<String>,
        params: &HashMap<String, String>,
    ) -> Result<Self, String> {
        let labels = LabelSelector::parse(params.get("labelSelector").map_or("", String::as_str))?;
        let fields = FieldSelector::parse(
            params.get("fieldSelector").map_or("", String::as_str),
            kind.field_paths(),
        )?;
        Ok(Self {
            kind,
            namespace,
            labels,
            fields,
        })
    }

    fn matches(&self, object: &Value) -> bool {
        let in_namespace = self.namespace.as_deref().is_none_or(|ns| {
            object
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                == Some(ns)
        });
        in_namespace && self.labels.matches(object) && self.fields.matches(object)
    }

    /// The watch event a change produces for this filter, as kube-apiserver computes it:
    /// an object moving out of the selection is DELETED, one moving in is ADDED.
    fn event(&self, change: &Change) -> Option<Value> {
        if change.kind != self.kind {
            return None;
        }
        let was = change.old.as_deref().is_some_and(|o| self.matches(o));
        let is = change.new.as_deref().is_some_and(|o| self.matches(o));
        let (kind, object) = match (&change.old, &change.new, was, is) {
            (_, Some(new), false, true) => ("ADDED", new),
            (_, Some(new), true, true) => ("MODIFIED", new),
            (_, Some(new), true, false) => ("DELETED", new),
            (Some(old), None, true, _) => ("DELETED", old),
            _ => return None,
        };
        Some(json!({"type": kind, "object": **object}))
    }
}

/// A list, paginated like kube-apiserver when the client sends `limit`: each page carries a
/// `continue` token naming the snapshot's resourceVersion and the next offset, and later pages
/// keep that resourceVersion (a forgotten one answers 410 Gone, as an expired token does).
fn list_response(
    shared: &Shared,
    filter: &Filter,
    params: &HashMap<String, String>,
) -> Response<Body> {
    let store = shared.lock_store();
    let limit = params
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0);
    let (snapshot_rv, offset) = match params.get("continue").filter(|c| !c.is_empty()) {
        None => (store.resource_version(), 0),
        Some(token) => {
            let parsed = token
                .split_once(':')
                .and_then(|(rv, off)| Some((rv.parse::<u64>().ok()?, off.parse::<usize>().ok()?)));
            match parsed {
                Some((rv, off)) if rv >= store.oldest_watchable() => (rv, off),
                Some(_) => {
                    return error(
                        StatusCode::GONE,
                        "Expired",
                        "the continue token has expired",
                    );
                }
                None => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "BadRequest",
                        "malformed continue token",
                    );
                }
            }
        }
    };
    let matching: Vec<Arc<Value>> = store
        .list(filter.kind)
        .into_iter()
        .filter(|o| filter.matches(o))
        .collect();
    drop(store);
    let end = limit.map_or(matching.len(), |l| {
        matching.len().min(offset.saturating_add(l))
    });
    let items: Vec<Value> = matching
        .get(offset.min(matching.len())..end)
        .unwrap_or_default()
        .iter()
        .map(|o| (**o).clone())
        .collect();
    let mut metadata = json!({"resourceVersion": snapshot_rv.to_string()});
    if end < matching.len() {
        metadata["continue"] = json!(format!("{snapshot_rv}:{end}"));
        metadata["remainingItemCount"] = json!(matching.len() - end);
    }
    let body = json!({
        "kind": format!("{}List", filter.kind.name()),
        "apiVersion": filter.kind.api_version(),
        "metadata": metadata,
        "items": items,
    });
    full(StatusCode::OK, body)
}

fn bookmark(kind: Kind, rv: u64, initial_end: bool) -> Value {
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    json!({"type": "BOOKMARK", "object": {"kind": kind.name(), "apiVersion": kind.api_version(), "metadata": metadata}})
}

fn watch_response(
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
    filter: Filter,
    params: &HashMap<String, String>,
) -> Response<Body> {
    let bookmarks = params
        .get("allowWatchBookmarks")
        .is_some_and(|v| v == "true");
    let send_initial = params.get("sendInitialEvents").is_some_and(|v| v == "true");
    let timeout = params
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(1800));
    let requested = params.get("resourceVersion").cloned().unwrap_or_default();

    // Under the store's lock: the first lines and a subscription that continues right after them.
    // A version the history no longer holds gets one ERROR line, then the stream ends (it still
    // goes through the stream task, so that a frozen kind does not deliver even that).
    let (initial, mut changes, start_rv, gone) = {
        let store = shared.lock_store();
        let current = store.resource_version();
        let mut lines = Vec::new();
        let mut gone = false;
        let from_scratch = send_initial || requested.is_empty() || requested == "0";
        if from_scratch {
            for object in store.list(filter.kind) {
                if filter.matches(&object) {
                    lines.push(json!({"type": "ADDED", "object": *object}));
                }
            }
            if send_initial {
                lines.push(bookmark(filter.kind, current, true));
            }
        } else {
            let Ok(rv) = requested.parse::<u64>() else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    &format!("invalid resourceVersion {requested:?}"),
                );
            };
            match store.changes_since(rv) {
                Some(changes) => lines.extend(changes.iter().filter_map(|c| filter.event(c))),
                None => {
                    // kube-apiserver answers 200 and streams one ERROR event.
                    let status = status_object(
                        410,
                        "Expired",
                        &format!(
                            "too old resource version: {rv} ({})",
                            store.oldest_watchable()
                        ),
                    );
                    lines.push(json!({"type": "ERROR", "object": status}));
                    gone = true;
                }
            }
        }
        (lines, store.subscribe(), current, gone)
    };

    let (tx, rx) = mpsc::channel::<Bytes>(256);
    let mut dropped = shared.drop_generation.subscribe();
    dropped.mark_unchanged();
    let mut fault_changes = shared.fault_changes.subscribe();
    let kind = filter.kind;
    let kind_drop = shared.lock_faults().kind_drop(kind);
    let interval = *shared
        .bookmark_interval
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    tokio::spawn(async move {
        let mut pending: VecDeque<Bytes> = initial.iter().map(ndjson).collect();
        let started = tokio::time::Instant::now();
        let deadline = started + timeout;
        let mut pre_deadline = (bookmarks && timeout > PRE_DEADLINE_BOOKMARK)
            .then(|| deadline - PRE_DEADLINE_BOOKMARK);
        let mut next_bookmark = interval.filter(|_| bookmarks).map(|i| started + i);
        let mut last_rv = start_rv;
        let mut frozen = false;
        loop {
            fault_changes.mark_unchanged();
            if shared.lock_faults().kind_drop(kind) != kind_drop {
                return;
            }
            // A stalled or frozen kind delivers nothing until the fault ends.
            if let Some((fault, until)) = shared.holding(kind) {
                frozen |= fault == Fault::Freeze;
                tokio::select! {
                    _ = tokio::time::sleep_until(until.into()) => {}
                    _ = fault_changes.changed() => {}
                    _ = dropped.changed() => return,
                    _ = shutdown.changed() => return,
                    _ = tx.closed() => return,
                }
                continue;
            }
            if frozen {
                // The connection was dead: it ends rather than coming back to life.
                return;
            }
            while let Some(line) = pending.pop_front() {
                if tx.send(line).await.is_err() {
                    return;
                }
            }
            if gone {
                return;
            }
            let far = started + Duration::from_secs(86_400 * 365);
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return,
                _ = dropped.changed() => return,
                _ = shutdown.changed() => return,
                _ = fault_changes.changed() => {}
                _ = tokio::time::sleep_until(next_bookmark.unwrap_or(far)), if next_bookmark.is_some() => {
                    if !drain(&mut changes, &filter, &mut last_rv, &mut pending) { return; }
                    pending.push_back(ndjson(&bookmark(kind, last_rv, false)));
                    next_bookmark = interval.map(|i| tokio::time::Instant::now() + i);
                }
                _ = tokio::time::sleep_until(pre_deadline.unwrap_or(far)), if pre_deadline.is_some() => {
                    if !drain(&mut changes, &filter, &mut last_rv, &mut pending) { return; }
                    pending.push_back(ndjson(&bookmark(kind, last_rv, false)));
                    pre_deadline = None;
                }
                change = changes.recv() => {
                    // Lagged or closed: end the stream; the client resumes from its last
                    // version, which the history still holds.
                    let Ok(change) = change else { return };
                    queue_change(&change, &filter, &mut last_rv, &mut pending);
                }
            }
        }
    });
    stream_lines(Vec::new(), Some(rx))
}

/// Queues the event `change` produces for this watch, if any; `last_rv` follows every change,
/// whatever its kind, as the watch cache's resourceVersion does.
fn queue_change(
    change: &Change,
    filter: &Filter,
    last_rv: &mut u64,
    pending: &mut VecDeque<Bytes>,
) {
    if change.rv <= *last_rv {
        return;
    }
    *last_rv = change.rv;
    if let Some(event) = filter.event(change) {
        pending.push_back(ndjson(&event));
    }
}

/// Queues every change already received, so that a bookmark after them cannot claim a version
/// past an event not yet sent. False when the subscription broke (the stream must end).
fn drain(
    changes: &mut broadcast::Receiver<Change>,
    filter: &Filter,
    last_rv: &mut u64,
    pending: &mut VecDeque<Bytes>,
) -> bool {
    loop {
        match changes.try_recv() {
            Ok(change) => queue_change(&change, filter, last_rv, pending),
            Err(broadcast::error::TryRecvError::Empty) => return true,
            Err(_) => return false,
        }
    }
}

fn ndjson(value: &Value) -> Bytes {
    let mut text = value.to_string();
    text.push('\n');
    Bytes::from(text)
}

fn stream_lines(first: Vec<Value>, rest: Option<mpsc::Receiver<Bytes>>) -> Response<Body> {
    let first: Vec<Result<Frame<Bytes>, Infallible>> =
        first.iter().map(|v| Ok(Frame::data(ndjson(v)))).collect();
    let rest = futures::stream::unfold(rest, |rest| async move {
        let mut rx = rest?;
        let chunk = rx.recv().await?;
        Some((Ok(Frame::data(chunk)), Some(rx)))
    });
    let stream = futures::StreamExt::chain(futures::stream::iter(first), rest);
    let mut response = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

fn parse_query(query: &str) -> HashMap<String, String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_decoding() {
        let q = parse_query(
            "labelSelector=%21service.kubernetes.io%2Fservice-proxy-name&fieldSelector=spec.clusterIP%21%3DNone&watch=true&x=a+b&bad=%zz",
        );
        assert_eq!(
            q["labelSelector"],
            "!service.kubernetes.io/service-proxy-name"
        );
        assert_eq!(q["fieldSelector"], "spec.clusterIP!=None");
        assert_eq!(q["x"], "a b");
        assert_eq!(q["bad"], "%zz");
        assert_eq!(percent_decode("%41"), "A");
        assert_eq!(percent_decode("%4"), "%4");
    }

    #[test]
    fn routes() {
        assert!(matches!(
            route("/api/v1/services"),
            Some(Target::Collection {
                kind: Kind::Service,
                namespace: None
            })
        ));
        assert!(matches!(
            route("/apis/discovery.k8s.io/v1/namespaces/a/endpointslices"),
            Some(Target::Collection {
                kind: Kind::EndpointSlice,
                namespace: Some(_)
            })
        ));
        assert!(matches!(
            route("/api/v1/nodes/n1"),
            Some(Target::Get {
                kind: Kind::Node,
                ..
            })
        ));
        assert!(route("/api/v1/namespaces/a/nodes").is_none());
        assert!(route("/api/v1/configmaps").is_none());
    }
}
