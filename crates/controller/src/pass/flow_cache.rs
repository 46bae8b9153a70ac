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
    /// A full walk seeded the index since `following` became true.
    seeded: bool,
    /// The zone judged; other zones' flows are not indexed.
    zone: u16,
}

impl FlowCache {
    /// An empty cache for flows of `zone`.
    pub fn new(zone: u16) -> Self {
        FlowCache {
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
        self.following = self.zone == 0;
    }

    /// Events were lost (or the subscription ended): the cache may lack flows until a full walk
    /// seeds it again.
    pub fn lost(&mut self) {
        self.following = false;
        self.seeded = false;
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

    /// Starts a full walk that seeds the cache (before the dump request is sent). Returns
    /// whether the seed will count: only a walk started while events are followed does.
    pub fn begin_seed(&mut self) -> bool {
        self.index.begin_seed();
        self.following
    }

    /// A flow of the seeding walk; returns whether the cache lacked it.
    pub fn seed(&mut self, flow: &Flow) -> bool {
        match self.indexable(flow) {
            Some(f) => {
                let missing = !self.index.contains(&f);
                let _ = self.index.seed(f);
                missing
            }
            None => false,
        }
    }

    /// Ends a seeding walk that completed; `counts` is what [`FlowCache::begin_seed`] said.
    pub fn finish_seed(&mut self, counts: bool) {
        let _ = self.index.finish_seed();
        if counts && self.following {
            self.seeded = true;
        }
    }

    /// The flows a scoped pass over `scope` must judge, or None when the cache cannot answer
    /// (not complete, or the scope is everything).
    pub fn scoped(&self, scope: &Dirty) -> Option<Vec<Flow>> {
        if !self.is_complete() || scope.all {
            return None;
        }
        let mut flows = Vec::new();
        for frontend in &scope.frontends {
            match *frontend {
                Frontend::Addr(addr) => flows.extend(self.index.flows_to(addr).map(to_flow)),
                Frontend::HostPort(addr) if !addr.ip().is_unspecified() => {
                    flows.extend(self.index.flows_to(addr).map(to_flow))
                }
                // On every node address: every destination with the port (a superset; the
                // planner judges each flow).
                Frontend::HostPort(addr) => flows.extend(
                    self.index
                        .flows_to_port(addr.is_ipv4(), addr.port(), |_| true)
                        .map(to_flow),
                ),
                Frontend::NodePort(port) => {
                    for ipv4 in [true, false] {
                        flows.extend(self.index.flows_to_port(ipv4, port, |_| true).map(to_flow));
                    }
                }
            }
        }
        Some(flows)
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
        orig: Tuple::new(f.orig_src.ip(), f.orig_dst.ip(), udp, f.orig_src.port(), f.orig_dst.port()),
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
