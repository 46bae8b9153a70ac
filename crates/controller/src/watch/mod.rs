//! The four watches (Services, EndpointSlices, this Node, this node's Pods) as streams, merged
//! with `select_all` and read in batches (`ready_chunks`) by the index loop: no task and no
//! channel between a watch and the index. Each update is stamped with when it arrived.
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
//! A watch is read only while the index loop asks for updates, so what arrived while the loop
//! was busy waits in the connection: [`Updates`] stamps such updates no later than the last
//! instant the merged stream was seen empty, and a batch that continues a backlog (the previous
//! batch was full) is not `timely` (see [`Update::timely`]).
//!
//! Selectors are ones every supported API server accepts, from ctdiff's label keys: Services
//! are watched unfiltered (a `service.kubernetes.io/service-proxy-name` label is handled by
//! ctdiff, so relabelling a Service is an update, not a deletion; `spec.clusterIP!=None` is
//! refused before 1.31). Objects are pruned to the fields ctdiff reads
//! ([`ctdiff::IndexedKind::prune`]) before they are queued.

pub mod client;
pub mod feed;

use crate::watch::client::{SLICE_LABELS, node_fields, pod_fields};
use ctdiff::{IndexedKind, Kind};
use futures::stream::{self, BoxStream, ReadyChunks, SelectAll};
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{ListParams, WatchEvent, WatchParams};
use kube::runtime::watcher::{DefaultBackoff, Event};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use std::fmt::{self, Debug};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Objects per list page.
const PAGE_SIZE: u32 = 500;

/// Most updates in one batch (applied under one write lock of the index).
pub const UPDATE_BATCH: usize = 256;

/// One item from one of the watches, with the kind and the instant it arrived.
#[derive(Debug)]
pub struct Update {
    /// The watched kind.
    pub kind: Kind,
    /// When the item arrived, or an earlier instant (see [`Updates`]). For `Init` and
    /// `InitDone`: when the list started.
    pub at: Instant,
    /// What arrived.
    pub what: What,
    /// Whether `at` can vouch for how current the view is: false while the index loop reads a
    /// backlog that piled up while it was busy (a batch right after a full one).
    pub timely: bool,
}

/// What a watch delivered.
#[derive(Debug)]
// Updates are moved once into a batch; boxing the large variants would buy nothing.
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

    /// Whether `at` is when a list started rather than when the item arrived.
    fn is_list_boundary(&self) -> bool {
        matches!(
            self.what,
            What::Service(Event::Init | Event::InitDone)
                | What::Slice(Event::Init | Event::InitDone)
                | What::Node(Event::Init | Event::InitDone)
                | What::Pod(Event::Init | Event::InitDone)
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

/// The four watches, merged; nothing runs until the index loop reads [`Updates`].
pub fn watches(
    client: Client,
    node_name: &str,
    timing: WatchTiming,
    relister: &Relister,
) -> Updates {
    let by_fields = |fields: String| Selectors {
        labels: None,
        fields: Some(fields),
    };
    let slices = Selectors {
        labels: Some(SLICE_LABELS.to_owned()),
        fields: None,
    };
    Updates::new(
        vec![
            KindWatch::new(
                Api::<Service>::all(client.clone()),
                Selectors::default(),
                What::Service,
                timing,
                relister,
            )
            .into_stream(),
            KindWatch::new(
                Api::<EndpointSlice>::all(client.clone()),
                slices,
                What::Slice,
                timing,
                relister,
            )
            .into_stream(),
            KindWatch::new(
                Api::<Node>::all(client.clone()),
                by_fields(node_fields(node_name)),
                What::Node,
                timing,
                relister,
            )
            .into_stream(),
            KindWatch::new(
                Api::<Pod>::all(client),
                by_fields(pod_fields(node_name)),
                What::Pod,
                timing,
                relister,
            )
            .into_stream(),
        ],
        UPDATE_BATCH,
    )
}

/// One kind's stream: its updates, then (never, unless a bug ends its loop) its end.
// Like `What`: moved once into a batch.
#[allow(clippy::large_enum_variant)]
enum Item {
    Update(Update),
    Ended(Kind),
}

/// A watch stream ended, which a watch never does on its own: the agent must stop (a restart
/// is the safe way back to a complete state).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchEnded(pub Option<Kind>);

impl fmt::Display for WatchEnded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(kind) => write!(f, "the {kind} watch ended"),
            None => f.write_str("every watch ended"),
        }
    }
}

impl std::error::Error for WatchEnded {}

/// The watches merged into one stream, read in batches.
///
/// Nothing reads a watch while the index loop applies a batch, so what arrives meanwhile waits
/// in the connection and is read late. A batch read at once (without waiting) was therefore
/// received after the last instant the merged stream was seen empty, not necessarily when it
/// was read: its updates' `at` is capped at that instant, so that no update claims the view
/// more current than it is. A batch that follows a full one may hold items queued for longer;
/// like any backlog, it is not `timely`.
pub struct Updates {
    inner: ReadyChunks<SelectAll<BoxStream<'static, Item>>>,
    batch: usize,
    /// The last instant the merged stream was seen empty.
    drained: Instant,
    /// The previous batch was full: the stream may still hold a backlog.
    behind: bool,
}

impl Updates {
    /// Merges per-kind streams of updates; a batch holds at most `batch` updates.
    pub fn new(streams: Vec<(Kind, BoxStream<'static, Update>)>, batch: usize) -> Self {
        let streams = streams.into_iter().map(|(kind, s)| {
            // A stream that ends must end the agent, not vanish from the merge.
            s.map(Item::Update)
                .chain(stream::once(async move { Item::Ended(kind) }))
                .boxed()
        });
        Updates {
            inner: stream::select_all(streams).ready_chunks(batch.max(1)),
            batch: batch.max(1),
            drained: Instant::now(),
            behind: false,
        }
    }

    /// The next batch: what is queued now, else the first updates to arrive. An error when a
    /// watch stream ended.
    pub async fn next_batch(&mut self) -> Result<Vec<Update>, WatchEnded> {
        let polled = Instant::now();
        let (chunk, waited) = match self.inner.next().now_or_never() {
            Some(chunk) => (chunk, false),
            None => (self.inner.next().await, true),
        };
        let items = chunk.ok_or(WatchEnded(None))?;
        let full = items.len() >= self.batch;
        let mut batch = Vec::with_capacity(items.len());
        for item in items {
            let mut update = match item {
                Item::Update(update) => update,
                Item::Ended(kind) => return Err(WatchEnded(Some(kind))),
            };
            if !waited {
                if self.behind {
                    update.timely = false;
                }
                if !update.is_list_boundary() {
                    update.at = update.at.min(self.drained);
                }
            }
            batch.push(update);
        }
        // Unless the batch is full, the stream was empty at some instant after `polled`.
        self.behind = full;
        if !full {
            self.drained = polled;
        }
        Ok(batch)
    }
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

/// Where one kind's list-then-watch loop is.
enum Step<K> {
    /// List from the start (first, after an expired resourceVersion, or when asked to).
    List,
    /// A list in progress: the rest of the page read last, then the next page if any.
    Listing {
        started: Instant,
        items: std::vec::IntoIter<K>,
        next: Option<ListParams>,
        /// The last page's resource version, once it is read.
        rv: Option<String>,
    },
    /// Open a watch from a resource version.
    Watch { rv: String },
    /// Read an open watch.
    Reading {
        rv: String,
        events: BoxStream<'static, kube::Result<WatchEvent<K>>>,
        opened: Instant,
        delivered: bool,
    },
    /// Wait, then list again (after a failure).
    Pause(Duration),
}

/// The list-then-watch loop of one kind, as a stream of updates.
struct KindWatch<K> {
    api: Api<K>,
    selectors: Selectors,
    kind: Kind,
    wrap: fn(Event<K>) -> What,
    timing: WatchTiming,
    /// Asks for a list now (see [`Relister`]).
    relist: Arc<Notify>,
    backoff: DefaultBackoff,
    step: Step<K>,
}

impl<K> KindWatch<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + IndexedKind + 'static,
{
    fn new(
        api: Api<K>,
        selectors: Selectors,
        wrap: fn(Event<K>) -> What,
        timing: WatchTiming,
        relister: &Relister,
    ) -> Self {
        KindWatch {
            api,
            selectors,
            kind: K::KIND,
            wrap,
            timing,
            relist: relister.of(K::KIND),
            backoff: DefaultBackoff::default(),
            step: Step::List,
        }
    }

    /// The updates, for ever: lists, then watches; lists again after an expired
    /// resourceVersion, when asked to, or (with backoff) after a failure.
    fn into_stream(self) -> (Kind, BoxStream<'static, Update>) {
        let kind = self.kind;
        let updates = stream::unfold(self, |mut watch| async move {
            let update = watch.next_update().await;
            Some((update, watch))
        });
        (kind, updates.boxed())
    }

    fn update(&self, at: Instant, what: What) -> Update {
        Update {
            kind: self.kind,
            at,
            what,
            timely: true,
        }
    }

    /// Reports a failure; the loop lists again after a backoff.
    fn fail(&mut self, why: String) -> Update {
        let pause = self.backoff.next().unwrap_or(Duration::from_secs(30));
        self.step = Step::Pause(pause);
        self.update(Instant::now(), What::Failed(why))
    }

    fn idle_secs(&self) -> u64 {
        self.timing.idle_timeout.as_secs()
    }

    /// Runs the loop until it has something to tell.
    async fn next_update(&mut self) -> Update {
        let idle = self.timing.idle_timeout;
        loop {
            match std::mem::replace(&mut self.step, Step::List) {
                Step::Pause(pause) => {
                    tokio::time::sleep(pause).await;
                    self.step = Step::List;
                }
                // A list is paginated, streamed as `Init`, `InitApply`…, `InitDone`.
                Step::List => {
                    let started = Instant::now();
                    self.step = Step::Listing {
                        started,
                        items: Vec::new().into_iter(),
                        next: Some(self.selectors.list()),
                        rv: None,
                    };
                    return self.update(started, (self.wrap)(Event::Init));
                }
                Step::Listing {
                    started,
                    mut items,
                    next,
                    rv,
                } => {
                    if let Some(mut obj) = items.next() {
                        obj.prune();
                        self.step = Step::Listing {
                            started,
                            items,
                            next,
                            rv,
                        };
                        return self.update(Instant::now(), (self.wrap)(Event::InitApply(obj)));
                    }
                    let Some(params) = next else {
                        let Some(rv) = rv else {
                            // A watch from "" would start at "now" and miss what changed since
                            // the list: not a view to trust.
                            return self.fail("list: no resourceVersion".to_owned());
                        };
                        self.backoff = DefaultBackoff::default();
                        self.step = Step::Watch { rv };
                        // `at` of InitDone is the list's start: its content is at least that
                        // current.
                        return self.update(started, (self.wrap)(Event::InitDone));
                    };
                    let page = match tokio::time::timeout(idle, self.api.list(&params)).await {
                        Ok(Ok(page)) => page,
                        Ok(Err(e)) => return self.fail(format!("list: {e}")),
                        Err(_) => {
                            let why = format!("list: no answer in {}s", self.idle_secs());
                            return self.fail(why);
                        }
                    };
                    let next = page
                        .metadata
                        .continue_
                        .filter(|c| !c.is_empty())
                        .map(|token| params.continue_token(&token));
                    let rv = match next {
                        Some(_) => None,
                        None => page.metadata.resource_version.filter(|rv| !rv.is_empty()),
                    };
                    self.step = Step::Listing {
                        started,
                        items: page.items.into_iter(),
                        next,
                        rv,
                    };
                }
                Step::Watch { rv } => {
                    let params = self.selectors.watch(&self.timing);
                    match tokio::time::timeout(idle, self.api.watch(&params, &rv)).await {
                        Ok(Ok(events)) => {
                            self.step = Step::Reading {
                                rv,
                                events: events.boxed(),
                                opened: Instant::now(),
                                delivered: false,
                            };
                            return self.update(Instant::now(), What::Watching);
                        }
                        Ok(Err(kube::Error::Api(status))) if status.code == 410 => {}
                        Ok(Err(e)) => return self.fail(format!("watch: {e}")),
                        Err(_) => {
                            let why = format!("watch: no answer in {}s", self.idle_secs());
                            return self.fail(why);
                        }
                    }
                }
                Step::Reading {
                    mut rv,
                    mut events,
                    opened,
                    delivered,
                } => {
                    let next = tokio::select! {
                        next = tokio::time::timeout(idle, events.next()) => next,
                        () = self.relist.notified() => continue,
                    };
                    let item = match next {
                        Ok(Some(item)) => item,
                        // The server ended the watch (its timeout): continue from where it left
                        // off, after a pause if it ended at once (a misbehaving proxy).
                        Ok(None) => {
                            if !delivered && opened.elapsed() < Duration::from_secs(1) {
                                tokio::time::sleep(Duration::from_secs(1)).await;
                            }
                            self.step = Step::Watch { rv };
                            continue;
                        }
                        // Silent for too long: a frozen connection, or a server without
                        // periodic bookmarks. Resuming from `rv` would replay what was missed
                        // long after it was sent, and the agent could not tell when the replay
                        // ends; a list can.
                        Err(_) => {
                            let why = format!(
                                "watch: no event or bookmark for {}s; listing again",
                                self.idle_secs()
                            );
                            return self.fail(why);
                        }
                    };
                    let at = Instant::now();
                    let what = match item {
                        Ok(WatchEvent::Added(mut obj) | WatchEvent::Modified(mut obj)) => {
                            rv = obj.resource_version().unwrap_or(rv);
                            obj.prune();
                            (self.wrap)(Event::Apply(obj))
                        }
                        Ok(WatchEvent::Deleted(mut obj)) => {
                            rv = obj.resource_version().unwrap_or(rv);
                            obj.prune();
                            (self.wrap)(Event::Delete(obj))
                        }
                        Ok(WatchEvent::Bookmark(bookmark)) => {
                            rv = bookmark.metadata.resource_version;
                            What::Bookmark
                        }
                        // Expired: list again (the step is `List` already).
                        Ok(WatchEvent::Error(status)) if status.code == 410 => continue,
                        Ok(WatchEvent::Error(status)) => {
                            return self.fail(format!("watch: error event: {}", status.message));
                        }
                        Err(e) => return self.fail(format!("watch: {e}")),
                    };
                    self.step = Step::Reading {
                        rv,
                        events,
                        opened,
                        delivered: true,
                    };
                    return self.update(at, what);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ctdiff::{FlowRef, Index, IndexConfig};
    use futures::channel::mpsc;

    fn update(kind: Kind, what: What) -> Update {
        Update {
            kind,
            at: Instant::now(),
            what,
            timely: true,
        }
    }

    #[test]
    fn pruned_objects_keep_what_the_engine_reads() {
        let mut svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "a", "namespace": "b",
                "annotations": {ctdiff::ANNOTATION_SKIP: "true", "kubectl.kubernetes.io/last-applied-configuration": "{…}"},
                "managedFields": [{"manager": "kubectl"}]},
            "spec": {"clusterIP": "10.96.0.10", "selector": {"app": "x"}, "ports": [{"port": 53, "protocol": "UDP"}]}
        }))
        .unwrap();
        svc.prune();
        assert_eq!(
            svc.metadata.annotations,
            Some(std::collections::BTreeMap::from([(
                ctdiff::ANNOTATION_SKIP.to_owned(),
                "true".to_owned()
            )]))
        );
        assert!(svc.metadata.managed_fields.is_none());
        let spec = svc.spec.unwrap();
        assert_eq!(spec.cluster_ip.as_deref(), Some("10.96.0.10"));
        assert!(spec.selector.is_none());
        assert_eq!(spec.ports.unwrap().len(), 1);

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
        assert!(status.conditions.is_none());
        assert!(pod.metadata.labels.is_none());
    }

    #[test]
    fn pruned_pods_keep_sidecar_host_ports() {
        // The pruning the controller did before dropped init containers, whose (sidecar) host
        // ports ctdiff reads: `run` lost flows that `check` judged.
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "n"},
            "spec": {"nodeName": "n1", "containers": [{"name": "main"}],
                "initContainers": [{"name": "agent", "restartPolicy": "Always",
                    "ports": [{"containerPort": 8125, "hostPort": 8125, "protocol": "UDP"}]}]},
            "status": {"podIP": "10.244.0.9"}
        }))
        .unwrap();
        let mut pruned = pod.clone();
        pruned.prune();
        let now = Instant::now();
        let stale = |pod: &Pod| {
            let mut index = Index::new(IndexConfig::new("n1"));
            let _ = index.reset::<Service>([], now);
            let _ = index.reset::<EndpointSlice>([], now);
            let _ = index.reset([pod], now);
            index.set_local_addrs(["192.168.1.2".parse().unwrap()]);
            let flow = FlowRef::udp(
                "192.168.1.2:8125".parse().unwrap(),
                "10.244.0.7:8125".parse().unwrap(),
            );
            index.classify(&flow, now).is_stale()
        };
        assert!(stale(&pod), "the pod owns the host port");
        assert!(stale(&pruned), "the pruned pod owns it too");
    }

    #[tokio::test]
    async fn updates_are_merged_in_batches() {
        let (tx_a, rx_a) = mpsc::unbounded();
        let (tx_b, rx_b) = mpsc::unbounded();
        let mut updates = Updates::new(
            vec![(Kind::Services, rx_a.boxed()), (Kind::Pods, rx_b.boxed())],
            3,
        );
        for _ in 0..2 {
            tx_a.unbounded_send(update(Kind::Services, What::Bookmark))
                .unwrap();
            tx_b.unbounded_send(update(Kind::Pods, What::Watching))
                .unwrap();
        }
        let first = updates.next_batch().await.unwrap();
        assert_eq!(first.len(), 3, "at most a batch");
        let second = updates.next_batch().await.unwrap();
        assert_eq!(second.len(), 1);
        let kinds = |b: &[Update]| b.iter().filter(|u| u.kind == Kind::Pods).count();
        assert_eq!(kinds(&first) + kinds(&second), 2);
        assert!(first.iter().all(|u| u.timely));
        assert!(
            second.iter().all(|u| !u.timely),
            "the batch after a full one continues a backlog"
        );
        // The stream is drained: the next batch waits for what arrives.
        let sender = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            tx_b.unbounded_send(update(Kind::Pods, What::Bookmark))
                .unwrap();
            (tx_a, tx_b)
        });
        let third = updates.next_batch().await.unwrap();
        assert_eq!(third.len(), 1);
        assert!(third[0].timely);
        drop(sender.await.unwrap());
    }

    #[tokio::test]
    async fn an_update_read_late_is_stamped_no_later_than_the_stream_was_drained() {
        let (tx, rx) = mpsc::unbounded();
        let mut updates = Updates::new(vec![(Kind::Services, rx.boxed())], 8);
        tx.unbounded_send(update(Kind::Services, What::Bookmark))
            .unwrap();
        let _ = updates.next_batch().await.unwrap();
        let drained = Instant::now();
        // The index loop is busy; a bookmark arrives and waits.
        tokio::time::sleep(Duration::from_millis(30)).await;
        let arrived = Instant::now();
        tx.unbounded_send(Update {
            at: arrived,
            ..update(Kind::Services, What::Bookmark)
        })
        .unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
        // A list boundary keeps its stamp: when the list started.
        tx.unbounded_send(Update {
            at: arrived,
            ..update(Kind::Services, What::Service(Event::InitDone))
        })
        .unwrap();
        let batch = updates.next_batch().await.unwrap();
        assert_eq!(batch.len(), 2);
        assert!(batch[0].at <= drained, "capped at the last drained instant");
        assert!(batch[0].timely);
        assert_eq!(batch[1].at, arrived);
    }

    #[tokio::test]
    async fn a_stream_that_ends_ends_the_updates() {
        let (tx, rx) = mpsc::unbounded();
        let (_keep, quiet) = mpsc::unbounded::<Update>();
        let mut updates = Updates::new(
            vec![(Kind::Pods, quiet.boxed()), (Kind::Nodes, rx.boxed())],
            8,
        );
        tx.unbounded_send(update(Kind::Nodes, What::Watching))
            .unwrap();
        drop(tx);
        let result = updates.next_batch().await;
        assert_eq!(result.unwrap_err(), WatchEnded(Some(Kind::Nodes)));
    }
}
