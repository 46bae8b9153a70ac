//! Feeds watch events into the stale-flow index, kind by kind, through ctdiff's
//! `IndexedKind`.
//!
//! A relist (`Init` … `InitApply`* … `InitDone`) is streamed into the index through a
//! `ctdiff::Relist`: each listed object is applied as it arrives (it is current truth, like a
//! watch update), and only at `InitDone` do the objects the relist did not list go away
//! (tombstones for Services). So the index never loses what a half-finished relist has not
//! reached yet, and nothing buffers a whole list: memory stays at the index's own size even for
//! 10,000 Services. A kind is *ready* after its first `InitDone`; ctdiff judges nothing stale
//! before then, and the agent deletes nothing before all four kinds are ready.

use ctdiff::{Index, IndexedKind, Relist, Report};
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::Event;
use std::time::Instant;

/// The relist in progress and the readiness of one kind.
#[derive(Debug)]
pub struct KindFeed<K> {
    relist: Option<Relist<K>>,
    ready: bool,
    kind: std::marker::PhantomData<fn(K)>,
}

impl<K> Default for KindFeed<K> {
    fn default() -> Self {
        KindFeed {
            relist: None,
            ready: false,
            kind: std::marker::PhantomData,
        }
    }
}

impl<K: IndexedKind> KindFeed<K> {
    /// Applies one watch event; returns what the index reported.
    pub fn handle(&mut self, index: &mut Index, event: Event<K>, now: Instant) -> Report {
        match event {
            Event::Init => {
                self.relist = Some(Relist::default());
                Report::default()
            }
            Event::InitApply(obj) => {
                let relist = self.relist.get_or_insert_with(Relist::default);
                index.relist(relist, &obj, now)
            }
            Event::InitDone => {
                let relist = self.relist.take().unwrap_or_default();
                self.ready = true;
                index.finish_relist(relist, now)
            }
            Event::Apply(obj) => index.apply(&obj, now),
            Event::Delete(obj) => index.delete(&obj, now),
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
            (Service::KIND.as_str(), self.services.is_ready()),
            (EndpointSlice::KIND.as_str(), self.slices.is_ready()),
            (Node::KIND.as_str(), self.nodes.is_ready()),
            (Pod::KIND.as_str(), self.pods.is_ready()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ctdiff::{FlowRef, IndexConfig, Reason, Verdict};
    use serde_json::json;

    fn service(name: &str, ip: &str) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "d"},
            "spec": {"clusterIP": ip, "clusterIPs": [ip], "ports": [{"port": 53, "protocol": "UDP"}]}
        }))
        .unwrap()
    }

    fn slice(service: &str, ip: &str) -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"name": format!("{service}-1"), "namespace": "d",
                         "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [ip], "conditions": {"ready": true}}],
            "ports": [{"port": 53, "protocol": "UDP"}]
        }))
        .unwrap()
    }

    fn flow(vip: &str, backend: &str) -> FlowRef {
        FlowRef::udp(
            format!("{vip}:53").parse().unwrap(),
            format!("{backend}:53").parse().unwrap(),
        )
    }

    fn list_all(feed: &mut Feed, index: &mut Index, now: Instant) {
        for event in [
            Event::Init,
            Event::InitApply(service("a", "10.96.0.1")),
            Event::InitDone,
        ] {
            let _ = feed.services.handle(index, event, now);
        }
        for event in [
            Event::Init,
            Event::InitApply(slice("a", "10.244.0.1")),
            Event::InitDone,
        ] {
            let _ = feed.slices.handle(index, event, now);
        }
        let _ = feed.nodes.handle(index, Event::Init, now);
        let _ = feed.nodes.handle(index, Event::InitDone, now);
        let _ = feed.pods.handle(index, Event::Init, now);
        let _ = feed.pods.handle(index, Event::InitDone, now);
    }

    #[test]
    fn ready_only_after_every_kind_listed() {
        let now = Instant::now();
        let mut index = Index::new(IndexConfig::new("n1"));
        let mut feed = Feed::default();
        let _ = feed.services.handle(&mut index, Event::Init, now);
        let _ = feed
            .services
            .handle(&mut index, Event::InitApply(service("a", "10.96.0.1")), now);
        assert!(!feed.all_ready());
        let _ = feed.services.handle(&mut index, Event::InitDone, now);
        assert!(!feed.all_ready(), "slices, nodes and pods have not listed");
        assert_eq!(
            index.classify(&flow("10.96.0.1", "10.244.9.9"), now),
            Verdict::Keep,
            "nothing is stale while the slices are unlisted"
        );
        list_all(&mut feed, &mut index, now);
        assert!(feed.all_ready());
        assert_eq!(
            index
                .classify(&flow("10.96.0.1", "10.244.9.9"), now)
                .reason(),
            Some(Reason::EndpointGone)
        );
    }

    #[test]
    fn a_relist_tombstones_only_at_init_done() {
        let now = Instant::now();
        let mut index = Index::new(IndexConfig::new("n1"));
        let mut feed = Feed::default();
        list_all(&mut feed, &mut index, now);
        let healthy = flow("10.96.0.1", "10.244.0.1");
        assert_eq!(index.classify(&healthy, now), Verdict::Keep);
        // The relist after a 410 lists nothing yet: the old state keeps serving.
        let _ = feed.services.handle(&mut index, Event::Init, now);
        assert_eq!(index.classify(&healthy, now), Verdict::Keep);
        // It ends without service a: a was deleted while the watch was down.
        let _ = feed.services.handle(&mut index, Event::InitDone, now);
        assert_eq!(
            index.classify(&healthy, now).reason(),
            Some(Reason::ServiceDeleted)
        );
    }

    #[test]
    fn watch_updates_apply_at_once() {
        let now = Instant::now();
        let mut index = Index::new(IndexConfig::new("n1"));
        let mut feed = Feed::default();
        list_all(&mut feed, &mut index, now);
        let _ = index.take_dirty();
        let _ = feed
            .slices
            .handle(&mut index, Event::Apply(slice("a", "10.244.0.2")), now);
        assert_eq!(
            index
                .classify(&flow("10.96.0.1", "10.244.0.1"), now)
                .reason(),
            Some(Reason::EndpointGone)
        );
        assert!(!index.take_dirty().is_empty());
        let _ = feed
            .services
            .handle(&mut index, Event::Delete(service("a", "10.96.0.1")), now);
        assert_eq!(
            index
                .classify(&flow("10.96.0.1", "10.244.0.2"), now)
                .reason(),
            Some(Reason::ServiceDeleted)
        );
    }
}
