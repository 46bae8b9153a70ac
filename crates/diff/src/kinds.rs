//! One trait for the Kubernetes kinds the index reads, in the style of kubert's
//! `IndexNamespacedResource`: apply, delete, and a relist streamed object by object.
//!
//! A watch feeds each kind the same way: `Init` starts a [`Relist`], each listed object goes
//! through [`Index::relist`], `InitDone` ends it with [`Index::finish_relist`] (what the relist
//! did not list is gone), and watch events go through [`Index::apply`] and [`Index::delete`].
//! A caller that has a whole list at hand uses [`Index::reset`].

use std::fmt;
use std::marker::PhantomData;
use std::time::Instant;

use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use rustc_hash::FxHashSet;

use crate::gate::Kind;
use crate::index::Index;
use crate::parse::{self, ObjKey};
use crate::report::Report;

/// A relist of one kind in progress: which objects it has listed so far.
///
/// Start one with `Relist::default()` at the watch's `Init`, pass each listed object to
/// [`Index::relist`], and end it with [`Index::finish_relist`] at `InitDone`. Until the first
/// relist of a kind is finished, the index judges nothing of that kind stale. The type
/// parameter keeps one kind's relist from ending another's.
pub struct Relist<K> {
    seen: FxHashSet<ObjKey>,
    kind: PhantomData<fn(&K)>,
}

impl<K> Default for Relist<K> {
    fn default() -> Self {
        Relist {
            seen: FxHashSet::default(),
            kind: PhantomData,
        }
    }
}

impl<K> fmt::Debug for Relist<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Relist")
            .field("listed", &self.seen.len())
            .finish()
    }
}

impl<K> Relist<K> {
    /// How many objects were listed so far.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether nothing was listed so far.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

mod sealed {
    /// The kinds are the index's own: their semantics live in `parse`.
    pub trait Sealed {}
    impl Sealed for super::Service {}
    impl Sealed for super::EndpointSlice {}
    impl Sealed for super::Pod {}
    impl Sealed for super::Node {}
}

/// A Kubernetes kind the [`Index`] reads: Service, EndpointSlice, Pod and Node.
///
/// Callers usually go through the generic methods on [`Index`] (`index.apply(&service, now)`),
/// which dispatch here; a caller generic over the kind (a watch feed) names `K::KIND` and
/// `K::prune`. Sealed: the set of kinds is the engine's.
pub trait IndexedKind: sealed::Sealed + Sized {
    /// The kind, as the freshness bookkeeping ([`Knowledge`](crate::Knowledge)) names it.
    const KIND: Kind;

    /// Adds or updates an object. A Service that becomes ignored (ExternalName, headless,
    /// another proxy's) loses its frontends without a tombstone, as do frontends an update
    /// drops: kube-proxy stops judging them too, and another proxy may own them now. An
    /// EndpointSlice whose Service is not known yet is kept. A Pod matters only on this node,
    /// with UDP hostPorts, a pod IP and no host network; one that stops mattering (finished, …)
    /// leaves tombstones. A Node with another name than this node's is skipped.
    fn apply(index: &mut Index, obj: &Self, now: Instant) -> Report;

    /// Removes an object. A deleted Service's (Pod's) frontends become tombstones for the TTL
    /// (unless it opted out).
    ///
    /// A deleted Service that is ignored (labelled `service.kubernetes.io/service-proxy-name`,
    /// ExternalName, headless) leaves no tombstone, as in `apply`: kube-proxy dropped its rules
    /// when the object became ignored, and another proxy may own its frontends now. (A watch
    /// whose label selector excludes that label turns the relabel into a deletion carrying the
    /// *old* object, which looks like a real deletion: the caller must filter the label
    /// client-side and pass the relabelled object to `apply`.) This node's Node object going
    /// away changes nothing: its last addresses are kept rather than forget which flows were
    /// NodePort traffic.
    fn delete(index: &mut Index, obj: &Self, now: Instant) -> Report;

    /// Applies one object of a relist in progress and records it as listed, from one parse.
    /// Objects can be applied as they arrive, so a relist never holds the whole list in memory.
    fn relist(index: &mut Index, relist: &mut Relist<Self>, obj: &Self, now: Instant) -> Report;

    /// Ends a relist: the objects it did not list are deleted (Services and Pods leave
    /// tombstones) and the kind counts as listed. Its first listing makes the whole index dirty;
    /// a later one only what it changed, like watch events. (Only this
    /// node's Node object is read, and its absence changes nothing.)
    fn finish(index: &mut Index, relist: Relist<Self>, now: Instant) -> Report;

    /// Drops every field the index does not read, in place: what is left parses to the same
    /// state and the same skip reports. The resourceVersion is kept, for a watch to resume from.
    fn prune(&mut self);
}

impl IndexedKind for Service {
    const KIND: Kind = Kind::Services;

    fn apply(index: &mut Index, obj: &Self, _now: Instant) -> Report {
        index.apply_service_listed(obj, None)
    }

    fn delete(index: &mut Index, obj: &Self, now: Instant) -> Report {
        index.delete_service_obj(obj, now)
    }

    fn relist(index: &mut Index, relist: &mut Relist<Self>, obj: &Self, _now: Instant) -> Report {
        index.apply_service_listed(obj, Some(&mut relist.seen))
    }

    fn finish(index: &mut Index, relist: Relist<Self>, now: Instant) -> Report {
        index.finish_services(&relist.seen, now);
        Report::default()
    }

    fn prune(&mut self) {
        parse::prune_service(self);
    }
}

impl IndexedKind for EndpointSlice {
    const KIND: Kind = Kind::EndpointSlices;

    fn apply(index: &mut Index, obj: &Self, now: Instant) -> Report {
        index.apply_slice_listed(obj, None, now)
    }

    fn delete(index: &mut Index, obj: &Self, now: Instant) -> Report {
        index.delete_slice_obj(obj, now)
    }

    fn relist(index: &mut Index, relist: &mut Relist<Self>, obj: &Self, now: Instant) -> Report {
        index.apply_slice_listed(obj, Some(&mut relist.seen), now)
    }

    fn finish(index: &mut Index, relist: Relist<Self>, now: Instant) -> Report {
        index.finish_slices(&relist.seen, now);
        Report::default()
    }

    fn prune(&mut self) {
        parse::prune_endpoint_slice(self);
    }
}

impl IndexedKind for Pod {
    const KIND: Kind = Kind::Pods;

    fn apply(index: &mut Index, obj: &Self, now: Instant) -> Report {
        index.apply_pod_listed(obj, None, now)
    }

    fn delete(index: &mut Index, obj: &Self, now: Instant) -> Report {
        index.delete_pod_obj(obj, now)
    }

    fn relist(index: &mut Index, relist: &mut Relist<Self>, obj: &Self, now: Instant) -> Report {
        index.apply_pod_listed(obj, Some(&mut relist.seen), now)
    }

    fn finish(index: &mut Index, relist: Relist<Self>, now: Instant) -> Report {
        index.finish_pods(&relist.seen, now);
        Report::default()
    }

    fn prune(&mut self) {
        parse::prune_pod(self);
    }
}

impl IndexedKind for Node {
    const KIND: Kind = Kind::Nodes;

    fn apply(index: &mut Index, obj: &Self, _now: Instant) -> Report {
        index.apply_node_obj(obj)
    }

    fn delete(_index: &mut Index, _obj: &Self, _now: Instant) -> Report {
        // Our own Node going away means the node is being drained of us too: keep its last
        // addresses rather than forget which flows were NodePort traffic.
        Report::default()
    }

    fn relist(index: &mut Index, _relist: &mut Relist<Self>, obj: &Self, _now: Instant) -> Report {
        index.apply_node_obj(obj)
    }

    fn finish(_index: &mut Index, _relist: Relist<Self>, _now: Instant) -> Report {
        Report::default()
    }

    fn prune(&mut self) {
        parse::prune_node(self);
    }
}

impl Index {
    /// Adds or updates an object of any [`IndexedKind`] (see [`IndexedKind::apply`]).
    pub fn apply<K: IndexedKind>(&mut self, obj: &K, now: Instant) -> Report {
        K::apply(self, obj, now)
    }

    /// Removes an object of any [`IndexedKind`] (see [`IndexedKind::delete`]).
    pub fn delete<K: IndexedKind>(&mut self, obj: &K, now: Instant) -> Report {
        K::delete(self, obj, now)
    }

    /// Applies one object of a relist in progress (see [`IndexedKind::relist`]).
    pub fn relist<K: IndexedKind>(
        &mut self,
        relist: &mut Relist<K>,
        obj: &K,
        now: Instant,
    ) -> Report {
        K::relist(self, relist, obj, now)
    }

    /// Ends a relist (see [`IndexedKind::finish`]).
    pub fn finish_relist<K: IndexedKind>(&mut self, relist: Relist<K>, now: Instant) -> Report {
        K::finish(self, relist, now)
    }

    /// Replaces every object of a kind with `all` (a full relist at once): the ones missing
    /// from it are deleted. Dirty as [`IndexedKind::finish`] says.
    pub fn reset<'a, K: IndexedKind + 'a>(
        &mut self,
        all: impl IntoIterator<Item = &'a K>,
        now: Instant,
    ) -> Report {
        let mut relist = Relist::default();
        let mut report = Report::default();
        for obj in all {
            report.merge(K::relist(self, &mut relist, obj, now));
        }
        report.merge(K::finish(self, relist, now));
        report
    }

    // The named forms below are kept for callers written before `IndexedKind`; each is the
    // generic method for one kind.

    /// [`Index::reset`] for Services.
    pub fn reset_services<'a>(
        &mut self,
        all: impl IntoIterator<Item = &'a Service>,
        now: Instant,
    ) -> Report {
        self.reset(all, now)
    }

    /// [`Index::reset`] for EndpointSlices.
    pub fn reset_endpoint_slices<'a>(
        &mut self,
        all: impl IntoIterator<Item = &'a EndpointSlice>,
        now: Instant,
    ) -> Report {
        self.reset(all, now)
    }

    /// [`Index::reset`] for Pods (this node's).
    pub fn reset_pods<'a>(
        &mut self,
        all: impl IntoIterator<Item = &'a Pod>,
        now: Instant,
    ) -> Report {
        self.reset(all, now)
    }

    /// [`Index::apply`] for an EndpointSlice.
    pub fn apply_endpoint_slice(&mut self, slice: &EndpointSlice, now: Instant) -> Report {
        self.apply(slice, now)
    }

    /// [`Index::delete`] for a Service.
    pub fn delete_service(&mut self, svc: &Service, now: Instant) -> Report {
        self.delete(svc, now)
    }

    /// [`Index::apply`] for this node's Node object (its addresses; the time is not used).
    pub fn apply_node(&mut self, node: &Node) -> Report {
        self.apply_node_obj(node)
    }
}
