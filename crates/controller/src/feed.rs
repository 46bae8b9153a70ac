//! Feeds watch events into the stale-flow index, kind by kind.
//!
//! A relist (`Init` … `InitApply`* … `InitDone`) is buffered and applied as one `reset_*` at
//! `InitDone`, so the index never sees a half-listed kind: objects that vanished while the watch
//! was down become tombstones at that moment, and until then the last complete state keeps
//! serving. A kind is *ready* after its first `InitDone`; nothing may be deleted before all four
//! are.

use ctdiff::{Index, Report};
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::Event;
use std::time::Instant;

/// How one kind is applied to the index.
pub trait IndexedKind: Sized {
    /// The kind's name, for logs and metrics.
    const KIND: &'static str;
    /// An object was added or changed.
    fn apply(index: &mut Index, obj: &Self, now: Instant) -> Report;
    /// An object was deleted.
    fn delete(index: &mut Index, obj: &Self, now: Instant) -> Report;
    /// The complete list after a (re)list.
    fn reset(index: &mut Index, all: &[Self], now: Instant) -> Report;
}

impl IndexedKind for Service {
    const KIND: &'static str = "services";
    fn apply(index: &mut Index, obj: &Self, now: Instant) -> Report {
        index.apply_service(obj, now)
    }
    fn delete(index: &mut Index, obj: &Self, now: Instant) -> Report {
        index.delete_service(obj, now)
    }
    fn reset(index: &mut Index, all: &[Self], now: Instant) -> Report {
        index.reset_services(all, now)
    }
}

impl IndexedKind for EndpointSlice {
    const KIND: &'static str = "endpointslices";
    fn apply(index: &mut Index, obj: &Self, now: Instant) -> Report {
        index.apply_endpoint_slice(obj, now)
    }
    fn delete(index: &mut Index, obj: &Self, now: Instant) -> Report {
        index.delete_endpoint_slice(obj, now)
    }
    fn reset(index: &mut Index, all: &[Self], now: Instant) -> Report {
        index.reset_endpoint_slices(all, now)
    }
}

impl IndexedKind for Pod {
    const KIND: &'static str = "pods";
    fn apply(index: &mut Index, obj: &Self, now: Instant) -> Report {
        index.apply_pod(obj, now)
    }
    fn delete(index: &mut Index, obj: &Self, now: Instant) -> Report {
        index.delete_pod(obj, now)
    }
    fn reset(index: &mut Index, all: &[Self], now: Instant) -> Report {
        index.reset_pods(all, now)
    }
}

impl IndexedKind for Node {
    const KIND: &'static str = "nodes";
    fn apply(index: &mut Index, obj: &Self, _now: Instant) -> Report {
        index.apply_node(obj)
    }
    fn delete(_index: &mut Index, _obj: &Self, _now: Instant) -> Report {
        // Our own Node going away means the node is being drained of us too: keep its last
        // addresses rather than forget which flows were NodePort traffic.
        Report::default()
    }
    fn reset(index: &mut Index, all: &[Self], _now: Instant) -> Report {
        let mut report = Report::default();
        for node in all {
            report.merge(index.apply_node(node));
        }
        report
    }
}

/// Relist buffering and readiness of one kind.
#[derive(Debug)]
pub struct KindFeed<K> {
    buffer: Option<Vec<K>>,
    ready: bool,
}

impl<K> Default for KindFeed<K> {
    fn default() -> Self {
        KindFeed {
            buffer: None,
            ready: false,
        }
    }
}

impl<K: IndexedKind> KindFeed<K> {
    /// Applies one watch event; returns what the index reported.
    pub fn handle(&mut self, index: &mut Index, event: Event<K>, now: Instant) -> Report {
        match event {
            Event::Init => {
                self.buffer = Some(Vec::new());
                Report::default()
            }
            Event::InitApply(obj) => {
                self.buffer.get_or_insert_with(Vec::new).push(obj);
                Report::default()
            }
            Event::InitDone => {
                let all = self.buffer.take().unwrap_or_default();
                self.ready = true;
                K::reset(index, &all, now)
            }
            Event::Apply(obj) => K::apply(index, &obj, now),
            Event::Delete(obj) => K::delete(index, &obj, now),
        }
    }

    /// Whether the kind has completed its first list.
    pub fn is_ready(&self) -> bool {
        self.ready
    }
}

/// The four kinds' feeds.
#[derive(Debug, Default)]
pub struct Feed {
    /// Services.
    pub services: KindFeed<Service>,
    /// EndpointSlices.
    pub slices: KindFeed<EndpointSlice>,
    /// This Node.
    pub nodes: KindFeed<Node>,
    /// Pods on this node.
    pub pods: KindFeed<Pod>,
}

impl Feed {
    /// Whether every kind has completed its first list.
    pub fn all_ready(&self) -> bool {
        self.services.is_ready()
            && self.slices.is_ready()
            && self.nodes.is_ready()
            && self.pods.is_ready()
    }

    /// Readiness per kind, for metrics.
    pub fn readiness(&self) -> [(&'static str, bool); 4] {
        [
            (Service::KIND, self.services.is_ready()),
            (EndpointSlice::KIND, self.slices.is_ready()),
            (Node::KIND, self.nodes.is_ready()),
            (Pod::KIND, self.pods.is_ready()),
        ]
    }
}
