//! The four watches (Services, EndpointSlices, this Node, this node's Pods), merged into one
//! channel of updates, each stamped with when it arrived.
//!
//! A small list-then-watch loop per kind instead of kube-runtime's `watcher`, because the agent
//! must *see* how current its view is (ctdiff's `Knowledge`): bookmarks (which `watcher` hides)
//! prove that everything before them was delivered, an accepted watch proves the server
//! answers, and a watch silent for longer than the idle timeout (a frozen connection) is
//! reported and replaced instead of waiting for the client's read timeout. After any failure
//! the loop lists again (with backoff) rather than resuming from its last resourceVersion: a
//! resumed watch replays missed events long after they were sent, and only a list tells the
//! agent how current its view is again. Only a watch the server ended normally (its timeout)
//! is resumed at once.
//!
//! Selectors are ones every supported API server accepts: Services are watched unfiltered (a
//! `service.kubernetes.io/service-proxy-name` label is handled by ctdiff, so relabelling a
//! Service is an update, not a deletion; `spec.clusterIP!=None` is refused before 1.31).
//! Objects are pruned before they travel: the index keeps only what it needs.

pub mod client;
pub mod feed;

use crate::watch::client::{SLICE_LABELS, node_fields, pod_fields};
use ctdiff::Kind;
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{ListParams, WatchEvent, WatchParams};
use kube::runtime::watcher::{DefaultBackoff, Event};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio::sync::mpsc;

/// The annotation the engine reads; every other annotation is pruned.
pub const SKIP_ANNOTATION: &str = ctdiff::ANNOTATION_SKIP;

/// Objects per list page.
const PAGE_SIZE: u32 = 500;

/// One item from one of the watches, with the kind and the instant it arrived.
#[derive(Debug)]
pub struct Update {
    /// The watched kind.
    pub kind: Kind,
    /// When the item arrived (list pages: when the list started, for `Init`).
    pub at: Instant,
    /// What arrived.
    pub what: What,
    /// Whether `at` can vouch for how current the view is: false while the watch reads a
    /// backlog that piled up in its socket while it waited for the index (an item read late
    /// was sent long before `at`).
    pub timely: bool,
}

/// What a watch delivered.
#[derive(Debug)]
// Updates are moved once through a channel; boxing the large variants would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum What {
    /// A Service event.
    Service(Event<Service>),
    /// An EndpointSlice event.
    Slice(Event<EndpointSlice>),
    /// An event of this node's Node object.
    Node(Event<Node>),
    /// An event of a Pod on this node.
    Pod(Event<Pod>),
    /// The API server accepted a watch request: the kind's watch is alive.
    Watching,
    /// A bookmark: everything the server had before it has been delivered.
    Bookmark,
    /// The list or watch failed (error answer, broken or silent connection); it is retried
    /// with backoff, and the last complete state stays in the index (but is not fresh).
    Failed(String),
}

impl Update {
    /// Whether this ends a (re)list of its kind.
    pub fn is_relist_done(&self) -> bool {
        matches!(
            self.what,
            What::Service(Event::InitDone)
                | What::Slice(Event::InitDone)
                | What::Node(Event::InitDone)
                | What::Pod(Event::InitDone)
        )
    }
}

/// How the watches behave.
#[derive(Clone, Copy, Debug)]
pub struct WatchTiming {
    /// A watch (or a list page) that delivers nothing for this long is reported failed and
    /// restarted. Real API servers send a bookmark about every minute.
    pub idle_timeout: Duration,
    /// The server-side timeout asked for each watch request.
    pub server_timeout: Duration,
}

impl Default for WatchTiming {
    fn default() -> Self {
        WatchTiming {
            idle_timeout: Duration::from_secs(300),
            server_timeout: Duration::from_secs(290),
        }
    }
}

/// Starts the four watches; they run until `tx` is closed.
pub fn spawn(
    client: Client,
    node_name: &str,
    timing: WatchTiming,
    relister: &Relister,
    tx: mpsc::Sender<Update>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let by_fields = |fields: String| Selectors {
        labels: None,
        fields: Some(fields),
    };
    let slices = Selectors {
        labels: Some(SLICE_LABELS.to_owned()),
        fields: None,
    };
    vec![
        tokio::spawn(
            KindWatch {
                api: Api::<Service>::all(client.clone()),
                selectors: Selectors::default(),
                kind: Kind::Services,
                relist: relister.of(Kind::Services),
                wrap: What::Service,
                timing,
                tx: tx.clone(),
                backlog: AtomicBool::new(false),
            }
            .run(),
        ),
        tokio::spawn(
            KindWatch {
                api: Api::<EndpointSlice>::all(client.clone()),
                selectors: slices,
                kind: Kind::EndpointSlices,
                relist: relister.of(Kind::EndpointSlices),
                wrap: What::Slice,
                timing,
                tx: tx.clone(),
                backlog: AtomicBool::new(false),
            }
            .run(),
        ),
        tokio::spawn(
            KindWatch {
                api: Api::<Node>::all(client.clone()),
                selectors: by_fields(node_fields(node_name)),
                kind: Kind::Nodes,
                relist: relister.of(Kind::Nodes),
                wrap: What::Node,
                timing,
                tx: tx.clone(),
                backlog: AtomicBool::new(false),
            }
            .run(),
        ),
        tokio::spawn(
            KindWatch {
                api: Api::<Pod>::all(client),
                selectors: by_fields(pod_fields(node_name)),
                kind: Kind::Pods,
                relist: relister.of(Kind::Pods),
                wrap: What::Pod,
                timing,
                tx,
                backlog: AtomicBool::new(false),
            }
            .run(),
        ),
    ]
}

/// Label and field selectors of one watch.
#[derive(Clone, Debug, Default)]
struct Selectors {
    labels: Option<String>,
    fields: Option<String>,
}

impl Selectors {
    fn list(&self) -> ListParams {
        let mut lp = ListParams::default().limit(PAGE_SIZE);
        if let Some(l) = &self.labels {
            lp = lp.labels(l);
        }
        if let Some(f) = &self.fields {
            lp = lp.fields(f);
        }
        lp
    }

    fn watch(&self, timing: &WatchTiming) -> WatchParams {
        let secs = u32::try_from(timing.server_timeout.as_secs())
            .unwrap_or(290)
            .max(1);
        let mut wp = WatchParams::default().timeout(secs);
        if let Some(l) = &self.labels {
            wp = wp.labels(l);
        }
        if let Some(f) = &self.fields {
            wp = wp.fields(f);
        }
        wp
    }
}

/// Why a list or watch round ended.
enum End {
    /// The receiver is gone: the agent is stopping.
    Closed,
    /// The resource version expired (410 Gone): list again.
    Relist,
    /// A failure, already reported: retry after a backoff.
    Failed,
}

/// The list-then-watch loop of one kind.
struct KindWatch<K> {
    api: Api<K>,
    selectors: Selectors,
    kind: Kind,
    wrap: fn(Event<K>) -> What,
    timing: WatchTiming,
    tx: mpsc::Sender<Update>,
    /// A send had to wait for room: what the stream yields next may have waited in the
    /// socket, until it is drained (the stream is pending).
    backlog: AtomicBool,
    /// Asks for a list now (see [`Relister`]).
    relist: Arc<Notify>,
}

/// Asks a kind's watch to list again: a list requested now proves the view current as of now,
/// which flows waiting for proof need when no event or bookmark comes (a quiet cluster, an API
/// server without periodic bookmarks).
#[derive(Clone, Debug, Default)]
pub struct Relister {
    kinds: [Arc<Notify>; 4],
}

impl Relister {
    fn of(&self, kind: Kind) -> Arc<Notify> {
        let slot = Kind::ALL.iter().position(|k| *k == kind).unwrap_or(0);
        self.kinds[slot].clone()
    }

    /// Asks `kind`'s watch to list again (once, however often asked before it does).
    pub fn relist(&self, kind: Kind) {
        self.of(kind).notify_one();
    }
}

impl<K> KindWatch<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Prune + 'static,
{
    /// Lists, then watches; lists again after an expired resourceVersion or (with backoff) a
    /// failure. Returns when the receiver is gone.
    async fn run(self) {
        let mut backoff = DefaultBackoff::default();
        loop {
            let end = match self.list().await {
                Ok(rv) => {
                    backoff = DefaultBackoff::default();
                    self.watch_from(rv).await
                }
                Err(end) => end,
            };
            match end {
                End::Closed => return,
                End::Relist => {}
                End::Failed => {
                    let pause = backoff.next().unwrap_or(Duration::from_secs(30));
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }

    /// Sends `what`; false once the receiver is gone.
    async fn send(&self, at: Instant, what: What) -> bool {
        let update = Update {
            kind: self.kind,
            at,
            what,
            timely: !self.backlog.load(Ordering::Relaxed),
        };
        if self.tx.capacity() == 0 {
            self.backlog.store(true, Ordering::Relaxed);
        }
        self.tx.send(update).await.is_ok()
    }

    /// Reports a failure; `End::Failed`, or `End::Closed` when the receiver is gone.
    async fn fail(&self, why: String) -> End {
        if self.send(Instant::now(), What::Failed(why)).await {
            End::Failed
        } else {
            End::Closed
        }
    }

    fn idle_secs(&self) -> u64 {
        self.timing.idle_timeout.as_secs()
    }

    /// Lists every object (paginated, streamed as `Init`, `InitApply`…, `InitDone`); returns
    /// the list's resource version.
    async fn list(&self) -> Result<String, End> {
        let started = Instant::now();
        if !self.send(started, (self.wrap)(Event::Init)).await {
            return Err(End::Closed);
        }
        let idle = self.timing.idle_timeout;
        let mut params = self.selectors.list();
        loop {
            let page = match tokio::time::timeout(idle, self.api.list(&params)).await {
                Ok(Ok(page)) => page,
                Ok(Err(e)) => return Err(self.fail(format!("list: {e}")).await),
                Err(_) => {
                    let why = format!("list: no answer in {}s", self.idle_secs());
                    return Err(self.fail(why).await);
                }
            };
            for mut obj in page.items {
                obj.prune();
                let what = (self.wrap)(Event::InitApply(obj));
                if !self.send(Instant::now(), what).await {
                    return Err(End::Closed);
                }
            }
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(token) => params = params.continue_token(&token),
                None => {
                    let Some(rv) = page.metadata.resource_version.filter(|rv| !rv.is_empty())
                    else {
                        // A watch from "" would start at "now" and miss what changed since
                        // the list: not a view to trust.
                        return Err(self.fail("list: no resourceVersion".to_owned()).await);
                    };
                    // `at` of InitDone is the list's start: its content is at least that current.
                    if !self.send(started, (self.wrap)(Event::InitDone)).await {
                        return Err(End::Closed);
                    }
                    return Ok(rv);
                }
            }
        }
    }

    /// Watches from `rv` until the resource version expires or the watch fails.
    async fn watch_from(&self, mut rv: String) -> End {
        let params = self.selectors.watch(&self.timing);
        let idle = self.timing.idle_timeout;
        loop {
            let stream = match tokio::time::timeout(idle, self.api.watch(&params, &rv)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(kube::Error::Api(status))) if status.code == 410 => return End::Relist,
                Ok(Err(e)) => return self.fail(format!("watch: {e}")).await,
                Err(_) => {
                    let why = format!("watch: no answer in {}s", self.idle_secs());
                    return self.fail(why).await;
                }
            };
            if !self.send(Instant::now(), What::Watching).await {
                return End::Closed;
            }
            let mut stream = std::pin::pin!(stream);
            let opened = Instant::now();
            let mut delivered = false;
            loop {
                // While reading a backlog, an item that is ready at once was probably sent a
                // while ago; the first time the stream has nothing ready, the backlog is read.
                let ready_now = if self.backlog.load(Ordering::Relaxed) {
                    stream.next().now_or_never()
                } else {
                    None
                };
                let next = match ready_now {
                    Some(item) => Ok(item),
                    None => {
                        self.backlog.store(false, Ordering::Relaxed);
                        tokio::select! {
                            next = tokio::time::timeout(idle, stream.next()) => next,
                            () = self.relist.notified() => return End::Relist,
                        }
                    }
                };
                let item = match next {
                    Ok(Some(item)) => item,
                    // The server ended the watch (its timeout): continue from where it left
                    // off, after a pause if it ended at once (a misbehaving proxy).
                    Ok(None) => {
                        if !delivered && opened.elapsed() < Duration::from_secs(1) {
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                        break;
                    }
                    // Silent for too long: a frozen connection, or a server without periodic
                    // bookmarks. Resuming from `rv` would replay what was missed long after it
                    // was sent, and the agent could not tell when the replay ends; a list can.
                    Err(_) => {
                        let why = format!(
                            "watch: no event or bookmark for {}s; listing again",
                            self.idle_secs()
                        );
                        return self.fail(why).await;
                    }
                };
                let at = Instant::now();
                let what = match item {
                    Ok(WatchEvent::Added(mut obj) | WatchEvent::Modified(mut obj)) => {
                        rv = obj.resource_version().unwrap_or_else(|| rv.clone());
                        obj.prune();
                        (self.wrap)(Event::Apply(obj))
                    }
                    Ok(WatchEvent::Deleted(mut obj)) => {
                        rv = obj.resource_version().unwrap_or_else(|| rv.clone());
                        obj.prune();
                        (self.wrap)(Event::Delete(obj))
                    }
                    Ok(WatchEvent::Bookmark(bookmark)) => {
                        rv = bookmark.metadata.resource_version;
                        What::Bookmark
                    }
                    Ok(WatchEvent::Error(status)) if status.code == 410 => return End::Relist,
                    Ok(WatchEvent::Error(status)) => {
                        let why = format!("watch: error event: {}", status.message);
                        return self.fail(why).await;
                    }
                    Err(e) => return self.fail(format!("watch: {e}")).await,
                };
                delivered = true;
                if !self.send(at, what).await {
                    return End::Closed;
                }
            }
        }
    }
}

/// Drops the parts of an object the engine never reads.
pub trait Prune {
    /// Prunes in place.
    fn prune(&mut self);
}

fn prune_meta(meta: &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) {
    meta.managed_fields = None;
    meta.owner_references = None;
    meta.finalizers = None;
    if let Some(annotations) = &mut meta.annotations {
        annotations.retain(|k, _| k == SKIP_ANNOTATION);
    }
}

impl Prune for Service {
    fn prune(&mut self) {
        prune_meta(&mut self.metadata);
        if let Some(spec) = &mut self.spec {
            spec.selector = None;
        }
    }
}

impl Prune for EndpointSlice {
    fn prune(&mut self) {
        prune_meta(&mut self.metadata);
        for ep in &mut self.endpoints {
            ep.hints = None;
            ep.target_ref = None;
            ep.deprecated_topology = None;
            ep.zone = None;
        }
    }
}

impl Prune for Node {
    fn prune(&mut self) {
        prune_meta(&mut self.metadata);
        self.metadata.labels = None;
        self.spec = None;
        if let Some(status) = &mut self.status {
            let addresses = status.addresses.take();
            *status = Default::default();
            status.addresses = addresses;
        }
    }
}

impl Prune for Pod {
    fn prune(&mut self) {
        prune_meta(&mut self.metadata);
        self.metadata.labels = None;
        if let Some(spec) = &mut self.spec {
            spec.volumes = None;
            spec.affinity = None;
            spec.tolerations = None;
            spec.init_containers = None;
            spec.ephemeral_containers = None;
            for c in &mut spec.containers {
                c.env = None;
                c.env_from = None;
                c.volume_mounts = None;
                c.command = None;
                c.args = None;
                c.liveness_probe = None;
                c.readiness_probe = None;
                c.startup_probe = None;
                c.resources = None;
            }
        }
        if let Some(status) = &mut self.status {
            status.conditions = None;
            status.container_statuses = None;
            status.init_container_statuses = None;
            status.ephemeral_container_statuses = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn prune_keeps_what_the_engine_reads() {
        let mut svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "a", "namespace": "b",
                "annotations": {SKIP_ANNOTATION: "true", "kubectl.kubernetes.io/last-applied-configuration": "{…}"},
                "managedFields": [{"manager": "kubectl"}]},
            "spec": {"clusterIP": "10.96.0.10", "selector": {"app": "x"}, "ports": [{"port": 53, "protocol": "UDP"}]}
        }))
        .unwrap();
        svc.prune();
        assert_eq!(
            svc.metadata.annotations,
            Some(BTreeMap::from([(
                SKIP_ANNOTATION.to_owned(),
                "true".to_owned()
            )]))
        );
        assert!(svc.metadata.managed_fields.is_none());
        let spec = svc.spec.unwrap();
        assert_eq!(spec.cluster_ip.as_deref(), Some("10.96.0.10"));
        assert!(spec.selector.is_none());
        assert_eq!(spec.ports.unwrap().len(), 1);
    }

    #[test]
    fn prune_pod_keeps_ports_and_ips() {
        let mut pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "n", "labels": {"a": "b"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "env": [{"name": "X", "value": "1"}],
                "ports": [{"containerPort": 8125, "hostPort": 8125, "protocol": "UDP"}]}]},
            "status": {"podIP": "10.244.0.9", "hostIP": "192.168.1.2", "conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .unwrap();
        pod.prune();
        let spec = pod.spec.as_ref().unwrap();
        assert!(spec.containers[0].env.is_none());
        assert_eq!(
            spec.containers[0].ports.as_ref().unwrap()[0].host_port,
            Some(8125)
        );
        let status = pod.status.as_ref().unwrap();
        assert_eq!(status.pod_ip.as_deref(), Some("10.244.0.9"));
        assert_eq!(status.host_ip.as_deref(), Some("192.168.1.2"));
        assert!(status.conditions.is_none());
    }
}
