//! The node's UDP flows as the kernel announced them: a [`ctdiff::FlowIndex`] seeded by full
//! passes and kept current by NEW and DESTROY events, so a scoped pass looks its flows up
//! instead of walking the table.
//!
//! The cache answers only while it is *complete*: seeded by a full walk that started after the
//! event subscription, with no event lost since. Otherwise a scoped pass walks the table as
//! before. An entry the cache holds but the kernel dropped costs an "already gone" delete; an
//! entry it lacks is the dangerous side, which lost-event detection (re-seed) and the periodic
//! full pass cover.

use ctdiff::{Dirty, FlowIndex, Frontend, IndexedFlow};
use ctnetlink::{Family, Flow, Status, Tuple, ZoneDir};
use std::net::SocketAddr;

/// The flow index and whether it can be trusted.
#[derive(Default)]
pub struct FlowCache {
    index: FlowIndex,
    /// Events are being applied: the subscription is up and no loss was reported since.
    following: bool,
    /// A full walk seeded the index since `following` became true and no event was lost.
    seeded: bool,
    /// Counts losses: a seed counts only when no loss happened while it ran.
    losses: u64,
    /// The zone judged; other zones' flows are not indexed.
    zone: u16,
    /// The kernel sends no events (or the event path is off): never trusted.
    disabled: bool,
}

impl FlowCache {
    /// An empty cache for flows of `zone`.
    pub fn new(zone: u16) -> Self {
        // Client addresses and ports of NodePort traffic are chosen by remote peers: the
        // index's hashes get a per-process random seed.
        FlowCache {
            index: FlowIndex::with_hash_seed(super::process_hash_seed()),
            zone,
            ..FlowCache::default()
        }
    }

    /// True when scoped passes may be served from the cache.
    pub fn is_complete(&self) -> bool {
        self.following && self.seeded
    }

    /// The event subscription is up: events from now on are applied. Only zone 0 is cached:
    /// an index record does not keep which direction a zone applies to, which a key of a zoned
    /// entry needs; with another zone every pass walks the table.
    pub fn following(&mut self) {
        self.following = self.zone == 0 && !self.disabled;
    }

    /// True when a walk that begins now can make the cache complete (events are followed).
    /// Walks seed it only then: filling an index nothing keeps current would cost memory and
    /// time for nothing.
    pub fn can_seed(&self) -> bool {
        self.following
    }

    /// Never trust the cache: no events will keep it current (the event path is off, or the
    /// namespace's `net.netfilter.nf_conntrack_events` is 0). Every pass walks the table.
    pub fn disable(&mut self) {
        self.disabled = true;
        self.unsubscribed();
    }

    /// Events were lost; the subscription goes on. The cache may lack flows until a full walk
    /// that starts after this seeds it again.
    pub fn lost(&mut self) {
        self.losses += 1;
        self.seeded = false;
    }

    /// The subscription ended: nothing keeps the cache current any more.
    pub fn unsubscribed(&mut self) {
        self.lost();
        self.following = false;
    }

    /// A NEW event.
    pub fn created(&mut self, flow: &Flow) {
        if let Some(f) = self.indexable(flow) {
            let _ = self.index.insert(f);
        }
    }

    /// A DESTROY event.
    pub fn destroyed(&mut self, flow: &Flow) {
        if let Some(f) = self.indexable(flow) {
            let _ = self.index.remove(&f);
        }
    }

    /// Starts a full walk that seeds the cache (before the dump request is sent). Returns a
    /// token for [`FlowCache::finish_seed`]: the seed counts only when events were followed when
    /// it began and none was lost until it finished.
    pub fn begin_seed(&mut self) -> SeedToken {
        self.index.begin_seed();
        SeedToken {
            counts: self.following,
            losses: self.losses,
        }
    }

    /// A flow of the seeding walk; returns whether the cache lacked it.
    pub fn seed(&mut self, flow: &Flow) -> bool {
        // `seed` says whether it added the flow, i.e. whether the cache lacked it: one lookup.
        self.indexable(flow)
            .is_some_and(|f| self.index.seed(f) == Ok(true))
    }

    /// Ends a seeding walk that completed.
    pub fn finish_seed(&mut self, token: SeedToken) {
        let _ = self.index.finish_seed();
        if token.counts && self.following && token.losses == self.losses {
            self.seeded = true;
        }
    }

    /// True when a scoped pass over `scope` may be served from the cache (it is complete and
    /// the scope is not everything).
    pub fn can_serve(&self, scope: &Dirty) -> bool {
        self.is_complete() && !scope.all
    }

    /// The flows a scoped pass over `scope` must judge, or None when the cache cannot answer
    /// (not complete, or the scope is everything).
    pub fn scoped(&self, scope: &Dirty) -> Option<Vec<Flow>> {
        if !self.can_serve(scope) {
            return None;
        }
        let mut flows = Vec::new();
        for frontend in &scope.frontends {
            self.flows_of(frontend, &mut flows);
        }
        Some(flows)
    }

    /// Appends the flows to `frontend` to `out`. A pass takes them one frontend at a time, so
    /// that what it copies out of the cache is one frontend's flows, not the whole scope's.
    pub fn flows_of(&self, frontend: &Frontend, out: &mut Vec<Flow>) {
        match *frontend {
            Frontend::Addr(addr) => out.extend(self.index.flows_to(addr).map(to_flow)),
            Frontend::HostPort(addr) if !addr.ip().is_unspecified() => {
                out.extend(self.index.flows_to(addr).map(to_flow))
            }
            // On every node address: every destination with the port (a superset; the
            // planner judges each flow).
            Frontend::HostPort(addr) => out.extend(
                self.index
                    .flows_to_port(addr.is_ipv4(), addr.port(), |_| true)
                    .map(to_flow),
            ),
            Frontend::NodePort(port) => {
                for ipv4 in [true, false] {
                    out.extend(self.index.flows_to_port(ipv4, port, |_| true).map(to_flow));
                }
            }
        }
    }

    /// Flows indexed.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// True when no flow is indexed.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Heap bytes the index holds.
    pub fn memory_bytes(&self) -> usize {
        self.index.memory_bytes()
    }

    fn indexable(&self, flow: &Flow) -> Option<IndexedFlow> {
        (flow.orig.proto == ctnetlink::proto::UDP && flow.zone == self.zone).then(|| IndexedFlow {
            orig_src: SocketAddr::new(flow.orig.src, flow.orig.sport),
            orig_dst: SocketAddr::new(flow.orig.dst, flow.orig.dport),
            reply_src: SocketAddr::new(flow.reply.src, flow.reply.sport),
            reply_dst: SocketAddr::new(flow.reply.dst, flow.reply.dport),
            id: flow.id,
        })
    }
}

/// What a seed needs to know at its end about its start.
#[derive(Clone, Copy, Debug)]
pub struct SeedToken {
    counts: bool,
    losses: u64,
}

/// The flow an indexed record stands for, with the same exact key as the kernel's entry
/// ([`Flow::key`]: reply tuple, id, zone). Status, mark and timeout are not indexed: the
/// planner does not read them, and a waiting flow's lifetime falls back to UDP's stream timeout.
fn to_flow(f: IndexedFlow) -> Flow {
    let family = if f.orig_dst.is_ipv4() {
        Family::V4
    } else {
        Family::V6
    };
    let udp = ctnetlink::proto::UDP;
    Flow {
        family,
        orig: Tuple::new(
            f.orig_src.ip(),
            f.orig_dst.ip(),
            udp,
            f.orig_src.port(),
            f.orig_dst.port(),
        ),
        reply: Tuple::new(
            f.reply_src.ip(),
            f.reply_dst.ip(),
            udp,
            f.reply_src.port(),
            f.reply_dst.port(),
        ),
        status: Status::CONFIRMED,
        mark: 0,
        zone: 0,
        timeout: 0,
        id: f.id,
        zone_dir: ZoneDir::Both,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_fixtures::udp_flow;

    fn udp(sport: u16, dst: &str, dport: u16, backend: &str) -> Flow {
        udp_flow(sport, dst, dport, backend, 5353)
    }

    fn seeded(flows: &[Flow]) -> FlowCache {
        let mut cache = FlowCache::new(0);
        cache.following();
        let token = cache.begin_seed();
        for f in flows {
            cache.seed(f);
        }
        cache.finish_seed(token);
        cache
    }

    #[test]
    fn a_loss_during_the_seed_leaves_the_cache_untrusted() {
        let mut cache = FlowCache::new(0);
        cache.following();
        let token = cache.begin_seed();
        cache.seed(&udp(1, "10.96.0.10", 53, "10.244.0.1"));
        cache.lost();
        cache.finish_seed(token);
        assert!(!cache.is_complete());
        let token = cache.begin_seed();
        cache.finish_seed(token);
        assert!(cache.is_complete(), "a seed begun after the loss counts");
        cache.unsubscribed();
        let token = cache.begin_seed();
        cache.finish_seed(token);
        assert!(
            !cache.is_complete(),
            "no seed counts without the subscription"
        );
    }

    #[test]
    fn scoped_lookups_return_the_exact_keys_of_the_frontends_flows() {
        let a = udp(1, "10.96.0.10", 53, "10.244.0.1");
        let b = udp(2, "10.96.0.20", 53, "10.244.0.2");
        let np = udp(3, "192.168.0.5", 30053, "10.244.0.3");
        let cache = seeded(&[a, b, np]);
        let scope = Dirty::of([Frontend::Addr("10.96.0.10:53".parse().unwrap())]);
        let found = cache.scoped(&scope).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].key(), a.key(), "the same key the kernel entry has");
        let found = cache
            .scoped(&Dirty::of([Frontend::NodePort(30053)]))
            .unwrap();
        assert_eq!(
            found.iter().map(Flow::key).collect::<Vec<_>>(),
            vec![np.key()]
        );
        assert!(cache.scoped(&Dirty::all()).is_none(), "a full pass walks");
    }

    #[test]
    fn a_disabled_cache_is_never_trusted() {
        let mut cache = FlowCache::new(0);
        cache.disable();
        cache.following();
        assert!(!cache.can_seed());
        let token = cache.begin_seed();
        cache.finish_seed(token);
        assert!(!cache.is_complete());
        assert!(cache.scoped(&Dirty::of([Frontend::NodePort(1)])).is_none());
    }

    #[test]
    fn other_zones_are_neither_cached_nor_served() {
        let mut cache = FlowCache::new(7);
        cache.following();
        let token = cache.begin_seed();
        cache.finish_seed(token);
        assert!(!cache.is_complete());
        let mut zoned = udp(1, "10.96.0.10", 53, "10.244.0.1");
        zoned.zone = 3;
        let mut cache = seeded(&[zoned]);
        cache.created(&zoned);
        assert!(cache.is_empty());
    }
}
