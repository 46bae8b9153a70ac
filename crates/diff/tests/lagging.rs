//! Issue 14: the agent's view of the cluster lags kube-proxy's, yet a flow whose backend truly
//! serves is never deleted.
//!
//! The model. The *truth* is a history of Service and EndpointSlice changes applied at known
//! times. kube-proxy knows the truth at once: it creates flows only to backends that are truly
//! allowed (ready, or serving and terminating) when the flow is created, or leaves a flow un-DNATed when the
//! frontend has none. The *agent* receives the same changes through one watch per kind: the
//! "API server" sends every change and a periodic bookmark, each delivered in order after a
//! random delay of at most the gate's grace (the bound the design assumes). A watch can also
//! freeze silently (nothing delivered, nothing reported), fail (reported with
//! `Knowledge::failed`), or be relisted (after a failure, or a 410 on a healthy watch). The
//! agent confirms a kind only when it applies a message of that kind, at the message's receipt
//! time. At random times the agent asks the gate about every flow, as its pass and its event
//! path do, and deletes the flows the gate says `Delete` to.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests, benches and examples may panic

mod common;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use common::*;
use ctdiff::k8s_openapi::api::core::v1::Service;
use ctdiff::k8s_openapi::api::discovery::v1::EndpointSlice;
use ctdiff::{
    Decision, Evidence, FlowRef, Gate, GateConfig, Index, IndexConfig, Kind, Knowledge, Reason,
    Verdict,
};
use proptest::prelude::*;

/// The gate's grace, and the bound on every delivery delay of a healthy watch.
const GRACE_MS: u64 = 2_000;
/// How often the API server sends a bookmark on every healthy watch.
const BOOKMARK_MS: u64 = 700;
/// A kind not heard from for this long is stale.
const STALE_AFTER_MS: u64 = 8_000;
/// Tombstones (and the memory of departed backends) last this long.
const TTL_MS: u64 = 20_000;
/// Every service has one UDP port, named `dns`, on this number.
const SVC_PORT: u16 = 53;
/// A resumed watch replays one missed event every this many ms.
const REPLAY_MS: u64 = 300;
const NS: &str = "ns";
/// ClusterIPs in the pool: fewer than services, so that a ClusterIP is often reused.
const VIPS: u8 = 2;

// ---- the truth ----

/// An endpoint's conditions, as the EndpointSlice controller writes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cond {
    /// `ready=true, serving=true`.
    Ready,
    /// `ready=false, serving=false`.
    NotReady,
    /// `ready=false, serving=true, terminating=true` (terminating, still serving).
    TerminatingServing,
    /// `ready=true, serving=false` (a `publishNotReadyAddresses` Service's not-ready pod).
    PublishNotReady,
    /// No conditions at all (both read as true).
    Unset,
}

impl Cond {
    /// `ready`, `serving`, `terminating`.
    fn fields(self) -> (Option<bool>, Option<bool>, Option<bool>) {
        match self {
            Cond::Ready => (Some(true), Some(true), Some(false)),
            Cond::NotReady => (Some(false), Some(false), Some(false)),
            Cond::TerminatingServing => (Some(false), Some(true), Some(true)),
            Cond::PublishNotReady => (Some(true), Some(false), Some(false)),
            Cond::Unset => (None, None, None),
        }
    }

    /// Whether kube-proxy may route to such an endpoint: ready, or serving and terminating.
    fn allowed(self) -> bool {
        let (ready, serving, terminating) = self.fields();
        ready.unwrap_or(true) || (serving.unwrap_or(true) && terminating.unwrap_or(false))
    }
}

/// One change of the truth.
#[derive(Clone, Copy, Debug)]
enum Change {
    /// A Service `s{svc}` with ClusterIP `vip(vip)` (a no-op if it exists or the IP is taken).
    CreateService {
        svc: u8,
        vip: u8,
    },
    DeleteService {
        svc: u8,
    },
    /// Adds an endpoint to the service's slice, or changes its conditions.
    SetEndpoint {
        svc: u8,
        ep: u8,
        cond: Cond,
    },
    RemoveEndpoint {
        svc: u8,
        ep: u8,
    },
    /// The slice's port number (the Service's `targetPort`) changes.
    SetTarget {
        svc: u8,
        port: u16,
    },
    DeleteSlice {
        svc: u8,
    },
}

/// The one slice of a service.
#[derive(Clone, Debug, PartialEq, Eq)]
struct TSlice {
    target: u16,
    eps: BTreeMap<u8, Cond>,
}

impl Default for TSlice {
    fn default() -> Self {
        TSlice {
            target: 5353,
            eps: BTreeMap::new(),
        }
    }
}

#[derive(Clone, Debug, Default)]
struct Truth {
    /// Service → its ClusterIP (index into `vip`).
    services: BTreeMap<u8, u8>,
    /// Service → its slice (may exist without the service: slices can come first).
    slices: BTreeMap<u8, TSlice>,
}

fn vip(i: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 96, 0, i + 1))
}

fn ep_ip(i: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 1, 0, i + 1))
}

fn service_obj(svc: u8, v: u8) -> Service {
    mk_service(
        NS,
        &format!("s{svc}"),
        &[&vip(v).to_string()],
        vec![udp("dns", i32::from(SVC_PORT))],
    )
}

fn slice_obj(svc: u8, slice: &TSlice) -> EndpointSlice {
    let eps = slice
        .eps
        .iter()
        .map(|(ep, cond)| {
            let (ready, serving, terminating) = cond.fields();
            ep_cond(&ep_ip(*ep).to_string(), ready, serving, terminating)
        })
        .collect();
    mk_slice(
        NS,
        &format!("s{svc}-x"),
        &format!("s{svc}"),
        &[("dns", i32::from(slice.target))],
        eps,
    )
}

/// What the API server sends on a watch.
#[derive(Clone, Debug)]
enum Msg {
    ApplyService(u8, u8),
    DeleteService(u8, u8),
    ApplySlice(u8, TSlice),
    DeleteSlice(u8),
    Bookmark,
    /// A complete list, consistent as of `started` (ms).
    List {
        started: u64,
        snapshot: Truth,
    },
}

impl Truth {
    /// Applies a change; the message the API server sends for it, if it changed anything.
    fn apply(&mut self, change: Change) -> Option<(Kind, Msg)> {
        match change {
            Change::CreateService { svc, vip } => {
                if self.services.contains_key(&svc) || self.services.values().any(|v| *v == vip) {
                    return None;
                }
                self.services.insert(svc, vip);
                Some((Kind::Services, Msg::ApplyService(svc, vip)))
            }
            Change::DeleteService { svc } => {
                let v = self.services.remove(&svc)?;
                Some((Kind::Services, Msg::DeleteService(svc, v)))
            }
            Change::DeleteSlice { svc } => {
                self.slices.remove(&svc)?;
                Some((Kind::EndpointSlices, Msg::DeleteSlice(svc)))
            }
            Change::SetEndpoint { svc, ep, cond } => {
                let slice = self.slices.entry(svc).or_default();
                slice.eps.insert(ep, cond);
                Some((Kind::EndpointSlices, Msg::ApplySlice(svc, slice.clone())))
            }
            Change::RemoveEndpoint { svc, ep } => {
                let slice = self.slices.get_mut(&svc)?;
                slice.eps.remove(&ep)?;
                Some((Kind::EndpointSlices, Msg::ApplySlice(svc, slice.clone())))
            }
            Change::SetTarget { svc, port } => {
                let slice = self.slices.entry(svc).or_default();
                slice.target = port;
                Some((Kind::EndpointSlices, Msg::ApplySlice(svc, slice.clone())))
            }
        }
    }

    /// The backends kube-proxy may route a flow to `frontend_ip:SVC_PORT` to, right now.
    fn allowed(&self, frontend_ip: IpAddr) -> Vec<SocketAddr> {
        let Some((svc, _)) = self.services.iter().find(|(_, v)| vip(**v) == frontend_ip) else {
            return Vec::new();
        };
        let Some(slice) = self.slices.get(svc) else {
            return Vec::new();
        };
        slice
            .eps
            .iter()
            .filter(|(_, cond)| cond.allowed())
            .map(|(ep, _)| SocketAddr::new(ep_ip(*ep), slice.target))
            .collect()
    }

    /// Whether a live Service owns `frontend_ip` right now.
    fn owned(&self, frontend_ip: IpAddr) -> bool {
        self.services.values().any(|v| vip(*v) == frontend_ip)
    }

    /// Every (service, allowed backend) pair of the slices right now, Service or not: a lagging
    /// agent may join an old slice to a new Service, so a backend that comes back to a
    /// service's slice is a flap even if the Service did not exist while it was away.
    fn endpoint_pairs(&self) -> BTreeSet<(u8, SocketAddr)> {
        self.slices
            .iter()
            .flat_map(|(svc, slice)| {
                slice
                    .eps
                    .iter()
                    .filter(|(_, cond)| cond.allowed())
                    .map(move |(ep, _)| (*svc, SocketAddr::new(ep_ip(*ep), slice.target)))
            })
            .collect()
    }

    /// Every (frontend IP, allowed backend) pair right now.
    fn pairs(&self) -> BTreeSet<(IpAddr, SocketAddr)> {
        (0..VIPS)
            .flat_map(|v| {
                let ip = vip(v);
                self.allowed(ip).into_iter().map(move |b| (ip, b))
            })
            .collect()
    }

    fn service_objs(&self) -> Vec<Service> {
        self.services
            .iter()
            .map(|(svc, v)| service_obj(*svc, *v))
            .collect()
    }

    fn slice_objs(&self) -> Vec<EndpointSlice> {
        self.slices
            .iter()
            .map(|(svc, slice)| slice_obj(*svc, slice))
            .collect()
    }
}

// ---- the agent's watches ----

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Delivers every message within the grace.
    Normal,
    /// Delivers nothing, reports nothing.
    Frozen,
    /// Delivers nothing; the agent knows (`Knowledge::failed`).
    Failing,
}

#[derive(Debug)]
struct Watch {
    kind: Kind,
    mode: Mode,
    /// Messages in flight: (receipt time in ms, message), receipt times non-decreasing.
    queue: VecDeque<(u64, Msg)>,
    /// Events sent while the watch was frozen or failing: a watch resumed from its last
    /// resourceVersion receives them late.
    lost: Vec<Msg>,
    /// A list was in flight when the watch stopped: it can only be relisted.
    lost_list: bool,
}

impl Watch {
    /// The watch stops delivering: what was in flight is lost (until a resume replays it).
    fn stop(&mut self, mode: Mode) {
        self.mode = mode;
        for (_, msg) in self.queue.drain(..) {
            match msg {
                Msg::List { .. } => self.lost_list = true,
                Msg::Bookmark => {}
                msg => self.lost.push(msg),
            }
        }
    }

    fn send(&mut self, now: u64, delay: u64, msg: Msg) {
        let tail = self.queue.back().map_or(0, |(at, _)| *at);
        self.queue.push_back((tail.max(now + delay), msg));
    }
}

/// One step of a history.
#[derive(Clone, Copy, Debug)]
enum Action {
    /// The truth changes now; the agent receives it after `delay` ms (if its watch is healthy).
    Change { change: Change, delay: u64 },
    /// kube-proxy creates a flow to `vip(vip):53`, to the `pick`-th allowed backend.
    Flow { vip: u8, pick: u8 },
    /// A pass: the gate is asked about every flow.
    Pass,
    /// The watch of `kind` freezes silently.
    Freeze(Kind),
    /// The watch of `kind` fails (reported).
    Fail(Kind),
    /// The watch of `kind` restarts with a list that is applied after `delay` ms.
    Relist { kind: Kind, delay: u64 },
    /// A stopped watch of `kind` resumes from its last resourceVersion: the API server accepts
    /// it (the agent marks the kind alive) and replays the events it missed, the first after
    /// `delay` ms, one every `REPLAY_MS`. This breaks the grace bound the gate assumes; only
    /// [`Promise::TwoGracesResumed`] histories have it (the others relist instead).
    Resume { kind: Kind, delay: u64 },
}

#[derive(Clone, Copy, Debug)]
struct Step {
    /// Milliseconds since the previous step.
    gap: u64,
    action: Action,
}

struct Sim {
    t0: Instant,
    now: u64,
    truth: Truth,
    index: Index,
    gate: Gate<usize, FlowRef>,
    watches: Vec<Watch>,
    next_bookmark: u64,
    rng: u64,
    /// The conntrack table: flow id → flow.
    flows: BTreeMap<usize, FlowRef>,
    next_flow: usize,
    /// What happened, for a readable counterexample.
    log: String,
    /// Which promise is checked, and which histories are generated.
    promise: Promise,
    /// (frontend IP, backend) pairs truly allowed now, with the time since when continuously.
    since: BTreeMap<(IpAddr, SocketAddr), u64>,
    /// Pairs that were allowed once and stopped being allowed.
    left: BTreeSet<(IpAddr, SocketAddr)>,
    /// Likewise per service's slice (see [`Truth::endpoint_pairs`]).
    left_eps: BTreeSet<(u8, SocketAddr)>,
    /// Bound of the delivery delays of healthy watches.
    max_delay: u64,
    /// Deletions of truly allowed flows the promise tolerates (flapped within two graces).
    tolerated: usize,
}

/// What the property promises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Promise {
    /// Never a deletion of a flow whose backend is truly allowed at that moment, on histories
    /// where a backend that left a frontend never comes back to it (no flap, no re-add, no
    /// ClusterIP reused by an owner of the same backend).
    Strict,
    /// Never a deletion of a flow whose backend is truly allowed at that moment, on any history.
    StrictWithFlaps,
    /// Any history; never a deletion of a flow whose backend has been truly allowed throughout
    /// the last two graces (the gate's documented bound: a flap the agent saw half of may cost
    /// a flow within that window).
    TwoGraces,
    /// As `TwoGraces`, and a stopped watch may resume from its last resourceVersion instead of
    /// relisting, receiving the events it missed long after they were sent.
    TwoGracesResumed,
}

fn slot(kind: Kind) -> usize {
    Kind::ALL.iter().position(|k| *k == kind).expect("a kind")
}

impl Sim {
    /// The truth after `initial`, listed completely by the agent at time 0.
    fn new(initial: &[Change], seed: u64, promise: Promise) -> Self {
        let t0 = Instant::now();
        let mut truth = Truth::default();
        for change in initial {
            let _ = truth.apply(*change);
        }
        let mut cfg = IndexConfig::new(NODE);
        cfg.tombstone_ttl = Duration::from_millis(TTL_MS);
        let mut index = Index::new(cfg);
        *index.knowledge_mut() = Knowledge::new(Duration::from_millis(STALE_AFTER_MS));
        let mut sim = Sim {
            t0,
            now: 0,
            truth,
            index,
            gate: Gate::new(GateConfig {
                grace: Duration::from_millis(GRACE_MS),
                ..GateConfig::default()
            }),
            watches: Kind::ALL
                .iter()
                .map(|kind| Watch {
                    kind: *kind,
                    mode: Mode::Normal,
                    queue: VecDeque::new(),
                    lost: Vec::new(),
                    lost_list: false,
                })
                .collect(),
            next_bookmark: BOOKMARK_MS,
            rng: seed | 1,
            flows: BTreeMap::new(),
            next_flow: 0,
            log: String::new(),
            promise,
            since: BTreeMap::new(),
            left: BTreeSet::new(),
            left_eps: BTreeSet::new(),
            max_delay: GRACE_MS,
            tolerated: 0,
        };
        sim.since = sim.truth.pairs().into_iter().map(|p| (p, 0)).collect();
        let _ = writeln!(sim.log, "t=0 truth {:?}", sim.truth);
        for kind in Kind::ALL {
            sim.index.knowledge_mut().relist_started(kind, t0);
            sim.deliver(
                kind,
                0,
                Msg::List {
                    started: 0,
                    snapshot: sim.truth.clone(),
                },
            );
        }
        sim
    }

    fn at(&self, ms: u64) -> Instant {
        self.t0 + Duration::from_millis(ms)
    }

    fn random_delay(&mut self) -> u64 {
        // xorshift64: bookmark delays need no shrinking of their own.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng % (self.max_delay + 1)
    }

    /// Applies one delivered message to the agent's index and knowledge.
    fn deliver(&mut self, kind: Kind, receipt: u64, msg: Msg) {
        let at = self.at(receipt);
        let _ = writeln!(self.log, "t={receipt} agent applies {kind}: {msg:?}");
        let index = &mut self.index;
        match msg {
            Msg::ApplyService(svc, v) => drop(index.apply(&service_obj(svc, v), at)),
            Msg::DeleteService(svc, v) => drop(index.delete(&service_obj(svc, v), at)),
            Msg::ApplySlice(svc, slice) => drop(index.apply(&slice_obj(svc, &slice), at)),
            Msg::DeleteSlice(svc) => drop(index.delete(&slice_obj(svc, &TSlice::default()), at)),
            Msg::Bookmark => {
                self.index.knowledge_mut().bookmarked(kind, at);
                return;
            }
            Msg::List { started, snapshot } => {
                match kind {
                    Kind::Services => drop(index.reset(&snapshot.service_objs(), at)),
                    Kind::EndpointSlices => drop(index.reset(&snapshot.slice_objs(), at)),
                    Kind::Pods => {
                        drop(index.reset::<ctdiff::k8s_openapi::api::core::v1::Pod>(&[], at))
                    }
                    Kind::Nodes => drop(index.apply_node(&mk_node(NODE, &["192.168.0.1"]))),
                }
                let started = self.at(started);
                self.index.knowledge_mut().listed(kind, started, at);
                return;
            }
        }
        self.index.knowledge_mut().confirmed(kind, at);
    }

    /// Lets time pass until `to`: deliveries and bookmarks happen in time order.
    fn advance(&mut self, to: u64) {
        loop {
            let next_delivery = self
                .watches
                .iter()
                .enumerate()
                .filter_map(|(i, w)| w.queue.front().map(|(at, _)| (*at, i)))
                .min();
            match next_delivery {
                Some((at, i)) if at <= to && at <= self.next_bookmark => {
                    self.now = self.now.max(at);
                    let (receipt, msg) = self.watches[i].queue.pop_front().expect("queued");
                    let kind = self.watches[i].kind;
                    self.deliver(kind, receipt, msg);
                }
                _ if self.next_bookmark <= to => {
                    self.now = self.now.max(self.next_bookmark);
                    for i in 0..self.watches.len() {
                        if self.watches[i].mode == Mode::Normal {
                            let delay = self.random_delay();
                            let now = self.now;
                            self.watches[i].send(now, delay, Msg::Bookmark);
                        }
                    }
                    self.next_bookmark += BOOKMARK_MS;
                }
                _ => break,
            }
        }
        self.now = self.now.max(to);
    }

    /// Runs one step; `Err` describes a healthy flow the gate let go.
    fn step(&mut self, step: Step) -> Result<(), String> {
        self.advance(self.now + step.gap);
        let now = self.now;
        match step.action {
            Action::Change { change, delay } => {
                let mut next = self.truth.clone();
                let Some((kind, msg)) = next.apply(change) else {
                    return Ok(());
                };
                let before = self.truth.pairs();
                let after = next.pairs();
                let (eps_before, eps_after) = (self.truth.endpoint_pairs(), next.endpoint_pairs());
                if self.promise == Promise::Strict
                    && (after.iter().any(|p| self.left.contains(p))
                        || eps_after.iter().any(|p| self.left_eps.contains(p)))
                {
                    // A backend would come back to a frontend (or a service's slice) it left:
                    // not this history.
                    return Ok(());
                }
                for pair in before.difference(&after) {
                    self.since.remove(pair);
                    self.left.insert(*pair);
                }
                self.left_eps
                    .extend(eps_before.difference(&eps_after).copied());
                for pair in after.difference(&before) {
                    self.since.insert(*pair, now);
                }
                self.truth = next;
                let _ = writeln!(self.log, "t={now} truth {change:?} (agent delay {delay})");
                let watch = &mut self.watches[slot(kind)];
                // A frozen or failing watch loses it; the next list carries it, or a resumed
                // watch receives it late.
                if watch.mode == Mode::Normal {
                    watch.send(now, delay, msg);
                } else {
                    watch.lost.push(msg);
                }
            }
            Action::Flow { vip: v, pick } => {
                let dst = SocketAddr::new(vip(v), SVC_PORT);
                let allowed = self.truth.allowed(dst.ip());
                let reply = if allowed.is_empty() {
                    dst
                } else {
                    allowed[usize::from(pick) % allowed.len()]
                };
                let id = self.next_flow;
                self.next_flow += 1;
                let _ = writeln!(self.log, "t={now} kube-proxy flow #{id} {dst} -> {reply}");
                self.flows.insert(id, FlowRef::udp(dst, reply));
                // The event path judges the new flow at once.
                self.judge(&[id], "event")?;
            }
            Action::Pass => {
                let at = self.at(now);
                self.index.expire_tombstones(at);
                self.gate.sweep(at);
                let ids: Vec<usize> = self.flows.keys().copied().collect();
                self.judge(&ids, "pass")?;
            }
            Action::Freeze(kind) => {
                let watch = &mut self.watches[slot(kind)];
                if watch.mode == Mode::Normal {
                    let _ = writeln!(self.log, "t={now} {kind} watch freezes");
                    watch.stop(Mode::Frozen);
                }
            }
            Action::Fail(kind) => {
                let _ = writeln!(self.log, "t={now} {kind} watch fails");
                let watch = &mut self.watches[slot(kind)];
                watch.stop(Mode::Failing);
                let at = self.at(now);
                self.index.knowledge_mut().failed(kind, at);
            }
            Action::Resume { kind, delay } => {
                let watch = &mut self.watches[slot(kind)];
                if watch.mode == Mode::Normal {
                    return Ok(());
                }
                if self.promise != Promise::TwoGracesResumed || watch.lost_list {
                    return self.step(Step {
                        gap: 0,
                        action: Action::Relist { kind, delay },
                    });
                }
                watch.mode = Mode::Normal;
                let lost = std::mem::take(&mut watch.lost);
                let _ = writeln!(
                    self.log,
                    "t={now} {kind} watch resumes, replaying {} events",
                    lost.len()
                );
                for (i, msg) in lost.into_iter().enumerate() {
                    watch.send(now, delay + i as u64 * REPLAY_MS, msg);
                }
                let at = self.at(now);
                self.index.knowledge_mut().resumed(kind, at);
            }
            Action::Relist { kind, delay } => {
                let _ = writeln!(self.log, "t={now} {kind} relist (applied after {delay})");
                let at = self.at(now);
                self.index.knowledge_mut().relist_started(kind, at);
                let snapshot = self.truth.clone();
                let watch = &mut self.watches[slot(kind)];
                watch.mode = Mode::Normal;
                watch.queue.clear();
                watch.lost.clear();
                watch.lost_list = false;
                watch.send(
                    now,
                    delay,
                    Msg::List {
                        started: now,
                        snapshot,
                    },
                );
            }
        }
        Ok(())
    }

    /// Asks the gate about each flow of `ids` now, deletes what it says to delete, and checks
    /// that no deleted flow's backend is truly allowed. Returns the ids deleted.
    fn judge(&mut self, ids: &[usize], path: &str) -> Result<Vec<usize>, String> {
        let now = self.at(self.now);
        let mut deleted = Vec::new();
        for id in ids {
            let Some(flow) = self.flows.get(id).copied() else {
                continue;
            };
            let (decision, stale) = match self.index.classify(&flow, now) {
                Verdict::Stale(stale) => (
                    self.gate
                        .decide(*id, flow, &stale, self.index.knowledge(), now),
                    format!("{} {:?}", stale.reason, stale.evidence),
                ),
                _ => {
                    self.gate.forget(id);
                    continue;
                }
            };
            if decision != Decision::Delete {
                continue;
            }
            let _ = writeln!(self.log, "t={} {path}: DELETE #{id} ({stale})", self.now);
            if let Some(since) = self.since.get(&(flow.orig_dst.ip(), flow.reply_src))
                && (matches!(self.promise, Promise::Strict | Promise::StrictWithFlaps)
                    || self.now - since >= 2 * GRACE_MS)
            {
                return Err(format!(
                    "flow #{id} {} -> {} deleted at t={} ({stale}) while its backend truly \
                     serves (since t={since})\nknowledge: {}\nhistory:\n{}",
                    flow.orig_dst,
                    flow.reply_src,
                    self.now,
                    self.knowledge_summary(),
                    self.log
                ));
            }
            if self
                .since
                .contains_key(&(flow.orig_dst.ip(), flow.reply_src))
            {
                self.tolerated += 1;
            }
            self.flows.remove(id);
            deleted.push(*id);
        }
        Ok(deleted)
    }

    /// The knowledge of every kind, times in ms since the start.
    fn knowledge_summary(&self) -> String {
        let ms = |t: Option<Instant>| t.map(|t| t.duration_since(self.t0).as_millis());
        let mut out = String::new();
        for kind in Kind::ALL {
            let k = self.index.knowledge().kind(kind);
            let _ = write!(
                out,
                "{kind}: listed={} relisting={} failing_since={:?} last_alive={:?} \
                 confirmed={:?}; ",
                k.listed,
                k.relisting,
                ms(k.failing_since),
                ms(k.last_alive),
                ms(k.confirmed)
            );
        }
        out
    }

    /// Liveness: every watch healthy again, no more changes; once the agent has caught up and a
    /// bookmark arrived after first_seen + grace, every truly stale flow to a live Service is
    /// gone.
    fn settle(&mut self) -> Result<(), String> {
        // Caught up: deliveries well within the grace, so that some bookmark is always less
        // than a grace old.
        self.max_delay = GRACE_MS / 2;
        for i in 0..self.watches.len() {
            if self.watches[i].mode != Mode::Normal {
                let kind = self.watches[i].kind;
                self.step(Step {
                    gap: 0,
                    action: Action::Relist {
                        kind,
                        delay: GRACE_MS / 2,
                    },
                })?;
            }
        }
        // A resumed watch may still be replaying: it catches up at the first bookmark after the
        // replay, which is queued behind it.
        let drained = self
            .watches
            .iter()
            .filter_map(|w| w.queue.back().map(|(at, _)| *at))
            .max()
            .unwrap_or(self.now)
            .max(self.now);
        let caught_up = drained + GRACE_MS + 2 * BOOKMARK_MS;
        self.advance(caught_up);
        let first = self.now;
        if let Some(why) = self.index.knowledge().first_staleness(self.at(first)) {
            return Err(format!("not fresh after settling: {why}\n{}", self.log));
        }
        self.step(Step {
            gap: 0,
            action: Action::Pass,
        })?;
        // A bookmark sent at or after first + grace has arrived.
        self.advance(first + 2 * GRACE_MS + 2 * BOOKMARK_MS);
        self.step(Step {
            gap: 0,
            action: Action::Pass,
        })?;
        for (id, flow) in &self.flows {
            let ip = flow.orig_dst.ip();
            if self.truth.owned(ip) && !self.truth.allowed(ip).contains(&flow.reply_src) {
                return Err(format!(
                    "truly stale flow #{id} {} -> {} not deleted at t={} (verdict {:?}; first \
                     pass at t={first}; waiting {:?})\nknowledge: {}\nhistory:\n{}",
                    flow.orig_dst,
                    flow.reply_src,
                    self.now,
                    self.index.classify(flow, self.at(self.now)),
                    self.gate
                        .waiting()
                        .find(|(k, _)| *k == id)
                        .map(|(_, w)| w.first_seen.duration_since(self.t0).as_millis()),
                    self.knowledge_summary(),
                    self.log
                ));
            }
        }
        Ok(())
    }
}

// ---- strategies ----

fn cond() -> impl Strategy<Value = Cond> {
    prop_oneof![
        3 => Just(Cond::Ready),
        2 => Just(Cond::NotReady),
        1 => Just(Cond::TerminatingServing),
        1 => Just(Cond::PublishNotReady),
        1 => Just(Cond::Unset),
    ]
}

fn change() -> impl Strategy<Value = Change> {
    let svc = 0u8..3;
    let v = 0..VIPS;
    let ep = 0u8..4;
    prop_oneof![
        2 => (svc.clone(), v).prop_map(|(svc, vip)| Change::CreateService { svc, vip }),
        1 => svc.clone().prop_map(|svc| Change::DeleteService { svc }),
        6 => (svc.clone(), ep.clone(), cond()).prop_map(|(svc, ep, cond)| Change::SetEndpoint { svc, ep, cond }),
        2 => (svc.clone(), ep).prop_map(|(svc, ep)| Change::RemoveEndpoint { svc, ep }),
        1 => (svc.clone(), prop_oneof![Just(5353u16), Just(5354)]).prop_map(|(svc, port)| Change::SetTarget { svc, port }),
        1 => svc.prop_map(|svc| Change::DeleteSlice { svc }),
    ]
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        2 => Just(Kind::Services),
        3 => Just(Kind::EndpointSlices),
        1 => Just(Kind::Pods),
        1 => Just(Kind::Nodes),
    ]
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        6 => (change(), 0..=GRACE_MS).prop_map(|(change, delay)| Action::Change { change, delay }),
        5 => (0..VIPS, any::<u8>()).prop_map(|(vip, pick)| Action::Flow { vip, pick }),
        4 => Just(Action::Pass),
        1 => kind().prop_map(Action::Freeze),
        1 => kind().prop_map(Action::Fail),
        1 => (kind(), 0..=GRACE_MS).prop_map(|(kind, delay)| Action::Relist { kind, delay }),
        1 => (kind(), 0..=GRACE_MS).prop_map(|(kind, delay)| Action::Resume { kind, delay }),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    (
        prop_oneof![2 => 0u64..300, 2 => 0u64..1_500, 1 => 0u64..6_000],
        action(),
    )
        .prop_map(|(gap, action)| Step { gap, action })
}

/// A backend that leaves and comes back: `svc`'s endpoint `ep` stops being allowed, and is
/// allowed again later (each change with its own delivery delay), so that the agent may see it
/// leave and not yet see it return; sometimes the slice watch then freezes, so that the agent
/// may not see it return at all.
fn flap() -> impl Strategy<Value = Vec<Step>> {
    let leave = prop_oneof![
        Just(Some(Cond::NotReady)),
        Just(None), // removed from the slice
    ];
    let back = prop_oneof![
        Just(Cond::Ready),
        Just(Cond::TerminatingServing),
        Just(Cond::PublishNotReady),
        Just(Cond::Unset),
    ];
    (
        (0u8..3, 0u8..4, leave, back),
        (0u64..1_500, 0u64..5_000),
        (0..=GRACE_MS, 0..=GRACE_MS),
        prop::option::of(0..GRACE_MS),
    )
        .prop_map(
            |((svc, ep, leave, back), (gap, after), (out, again), freeze)| {
                let leaves = match leave {
                    Some(cond) => Change::SetEndpoint { svc, ep, cond },
                    None => Change::RemoveEndpoint { svc, ep },
                };
                let mut steps = vec![
                    Step {
                        gap,
                        action: Action::Change {
                            change: leaves,
                            delay: out,
                        },
                    },
                    Step {
                        gap: after,
                        action: Action::Change {
                            change: Change::SetEndpoint {
                                svc,
                                ep,
                                cond: back,
                            },
                            delay: again,
                        },
                    },
                ];
                if let Some(gap) = freeze {
                    steps.push(Step {
                        gap,
                        action: Action::Freeze(Kind::EndpointSlices),
                    });
                }
                steps
            },
        )
}

/// A history: single steps and, now and then, a flap (its two changes may interleave with
/// nothing else, which keeps it short; other steps come before and after).
fn history() -> impl Strategy<Value = Vec<Step>> {
    proptest::collection::vec(
        prop_oneof![8 => step().prop_map(|s| vec![s]), 1 => flap()],
        1..50,
    )
    .prop_map(|chunks| chunks.into_iter().flatten().collect())
}

fn run(initial: &[Change], steps: &[Step], seed: u64, promise: Promise) -> Result<(), String> {
    let mut sim = Sim::new(initial, seed, promise);
    for step in steps {
        sim.step(*step)?;
    }
    sim.settle()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Whatever the lag, freeze or failure: never a `Delete` for a flow whose backend is truly
    /// allowed at that moment (on histories where no backend comes back to a frontend it
    /// left); and once the agent is caught up and fresh, truly stale flows go.
    #[test]
    fn lagging_agent_never_deletes_a_serving_backend(
        initial in proptest::collection::vec(change(), 0..10),
        steps in history(),
        seed in any::<u64>(),
    ) {
        if let Err(why) = run(&initial, &steps, seed, Promise::Strict) {
            return Err(TestCaseError::fail(why));
        }
    }

    /// Any history, flaps and ClusterIP reuse included: never a `Delete` for a flow whose
    /// backend has been truly allowed for the last two graces; liveness as above.
    #[test]
    fn lagging_agent_never_deletes_a_backend_serving_for_two_graces(
        initial in proptest::collection::vec(change(), 0..10),
        steps in history(),
        seed in any::<u64>(),
    ) {
        if let Err(why) = run(&initial, &steps, seed, Promise::TwoGraces) {
            return Err(TestCaseError::fail(why));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// As above, but a stopped watch may also resume from its last resourceVersion (what a
    /// watcher does after most errors) and so receive missed events long after they were sent,
    /// beyond the grace the gate assumes.
    ///
    /// Minimal case of what this once found: `resumed_watch_replay_does_not_confirm_a_view_still_missing_events`.
    #[test]
    fn lagging_agent_never_deletes_a_backend_serving_for_two_graces_after_a_resumed_watch(
        initial in proptest::collection::vec(change(), 0..10),
        steps in history(),
        seed in any::<u64>(),
    ) {
        if let Err(why) = run(&initial, &steps, seed, Promise::TwoGracesResumed) {
            return Err(TestCaseError::fail(why));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// The strict promise on every history. No agent whose view lags can keep it: when a backend
    /// leaves and comes back (readiness flap, slice or Service recreated, ClusterIP reused by an
    /// owner of the same backend) within the lag, the agent has seen it leave and not yet come
    /// back, and a flow kube-proxy sends to it meanwhile looks removed. Minimal counterexample:
    /// see `flap_within_the_lag_costs_the_flow_until_two_graces`.
    #[test]
    #[ignore = "unattainable with any lag: a flap within the lag (see the doc comment)"]
    fn lagging_agent_never_deletes_a_serving_backend_even_after_a_flap(
        initial in proptest::collection::vec(change(), 0..10),
        steps in history(),
        seed in any::<u64>(),
    ) {
        if let Err(why) = run(&initial, &steps, seed, Promise::StrictWithFlaps) {
            return Err(TestCaseError::fail(why));
        }
    }
}

// ---- named examples ----

const VIP: &str = "10.96.0.1";
const VIP_PORT: &str = "10.96.0.1:53";
const A: &str = "10.1.0.1";
const B: &str = "10.1.0.2";
const GRACE: Duration = Duration::from_millis(GRACE_MS);

fn secs(t0: Instant, s: u64) -> Instant {
    t0 + Duration::from_secs(s)
}

/// An index that listed `services` and `slices` (and every other kind) at `t0`.
fn listed(services: &[Service], slices: &[EndpointSlice], t0: Instant) -> Index {
    let mut cfg = IndexConfig::new(NODE);
    cfg.tombstone_ttl = Duration::from_millis(TTL_MS);
    let mut index = mk_index_with(cfg, services, slices, &[], &["192.168.0.1"], t0);
    *index.knowledge_mut() = Knowledge::new(Duration::from_millis(STALE_AFTER_MS));
    for kind in Kind::ALL {
        index.knowledge_mut().listed(kind, t0, t0);
    }
    index
}

fn gate() -> Gate<u32, FlowRef> {
    Gate::new(GateConfig {
        grace: GRACE,
        ..GateConfig::default()
    })
}

/// Bookmarks (or events) of `kinds` received at `at`.
fn confirm(index: &mut Index, kinds: &[Kind], at: Instant) {
    for kind in kinds {
        index.knowledge_mut().confirmed(*kind, at);
    }
}

const ALL_BUT_SLICES: [Kind; 3] = [Kind::Services, Kind::Nodes, Kind::Pods];

/// The gate's answer for one flow at `now`, with the verdict's evidence; `None` if not stale.
fn ask(
    index: &Index,
    gate: &mut Gate<u32, FlowRef>,
    id: u32,
    flow: FlowRef,
    now: Instant,
) -> Option<(Decision, Reason, Evidence)> {
    match index.classify(&flow, now) {
        Verdict::Stale(stale) => Some((
            gate.decide(id, flow, &stale, index.knowledge(), now),
            stale.reason,
            stale.evidence,
        )),
        _ => {
            gate.forget(&id);
            None
        }
    }
}

fn dns_service(name: &str, ip: &str) -> Service {
    mk_service(NS, name, &[ip], vec![udp("dns", 53)])
}

fn dns_slice(
    service: &str,
    endpoints: Vec<ctdiff::k8s_openapi::api::discovery::v1::Endpoint>,
) -> EndpointSlice {
    mk_slice(
        NS,
        &format!("{service}-x"),
        service,
        &[("dns", 5353)],
        endpoints,
    )
}

/// (a) kube-proxy leads: a new endpoint the agent has not seen (its slice watch frozen) gets
/// flows; they are deferred, never deleted, even long after the grace, until the frozen watch
/// makes the view stale (then held).
#[test]
fn new_endpoint_unseen_while_slice_watch_frozen_is_never_deleted() {
    let t0 = Instant::now();
    let mut index = listed(
        &[dns_service("s0", VIP)],
        &[dns_slice("s0", vec![ep(A)])],
        t0,
    );
    let mut gate = gate();
    // The truth gains B at t=1; kube-proxy routes to it; the agent's slice watch is frozen.
    let to_b = flow(VIP_PORT, &format!("{B}:5353"));
    for s in 1..=20 {
        let now = secs(t0, s);
        confirm(&mut index, &ALL_BUT_SLICES, now);
        let (decision, reason, evidence) =
            ask(&index, &mut gate, 1, to_b, now).expect("judged stale by the lagging view");
        assert_eq!((reason, evidence), (Reason::EndpointGone, Evidence::Unseen));
        let want = if Duration::from_secs(s) <= Duration::from_millis(STALE_AFTER_MS) {
            Decision::Defer
        } else {
            Decision::Hold
        };
        assert_eq!(decision, want, "at t={s}s");
    }
}

/// (b) A backend the agent saw removed goes at once while the view is fresh, and is held while
/// the slice watch is failing.
#[test]
fn backend_seen_removed_is_deleted_at_once_when_fresh_held_when_failing() {
    let t0 = Instant::now();
    let svc = dns_service("s0", VIP);
    let mut index = listed(&[svc], &[dns_slice("s0", vec![ep(A), ep(B)])], t0);
    let mut gate = gate();
    let to_b = flow(VIP_PORT, &format!("{B}:5353"));
    assert_eq!(ask(&index, &mut gate, 1, to_b, secs(t0, 1)), None);
    let t2 = secs(t0, 2);
    let _ = index.apply(&dns_slice("s0", vec![ep(A)]), t2);
    confirm(&mut index, &[Kind::EndpointSlices], t2);

    let mut failing = listed(
        &[dns_service("s0", VIP)],
        &[dns_slice("s0", vec![ep(A), ep(B)])],
        t0,
    );
    let _ = failing.apply(&dns_slice("s0", vec![ep(A)]), t2);
    confirm(&mut failing, &[Kind::EndpointSlices], t2);
    failing
        .knowledge_mut()
        .failed(Kind::EndpointSlices, secs(t0, 3));

    let now = secs(t0, 3);
    confirm(&mut index, &ALL_BUT_SLICES, now);
    confirm(&mut failing, &ALL_BUT_SLICES, now);
    assert_eq!(
        ask(&index, &mut gate, 1, to_b, now),
        Some((Decision::Delete, Reason::EndpointGone, Evidence::Removed))
    );
    assert_eq!(
        ask(&failing, &mut gate, 1, to_b, now),
        Some((Decision::Hold, Reason::EndpointGone, Evidence::Removed))
    );
}

/// (c) A new Service whose slice has not reached the agent: flows kube-proxy DNATed to its
/// backends are not deleted (deferred while the slice watch has not confirmed past the grace),
/// and are kept once the slice arrives.
#[test]
fn new_service_without_its_slice_yet_is_not_deleted() {
    let t0 = Instant::now();
    let mut index = listed(&[], &[], t0);
    let mut gate = gate();
    let t1 = secs(t0, 1);
    let _ = index.apply(&dns_service("s0", VIP), t1);
    confirm(&mut index, &[Kind::Services], t1);
    let to_a = flow(VIP_PORT, &format!("{A}:5353"));
    // The slice's event is in flight for up to the grace; bookmarks of every other kind arrive.
    for ms in (1_000..=1_000 + GRACE_MS).step_by(250) {
        let now = t0 + Duration::from_millis(ms);
        confirm(&mut index, &ALL_BUT_SLICES, now);
        assert_eq!(
            ask(&index, &mut gate, 1, to_a, now),
            Some((Decision::Defer, Reason::NoEndpoints, Evidence::Unseen)),
            "at {ms} ms"
        );
    }
    let arrived = t0 + Duration::from_millis(1_000 + GRACE_MS);
    let _ = index.apply(&dns_slice("s0", vec![ep(A)]), arrived);
    confirm(&mut index, &[Kind::EndpointSlices], arrived);
    assert_eq!(ask(&index, &mut gate, 1, to_a, arrived), None);
}

/// (d) A ClusterIP reused by a Service the agent has not seen: the old owner's tombstone does
/// not delete flows to the new owner's backends, while flows to the old owner's backends go.
#[test]
fn reused_vip_tombstone_does_not_delete_the_new_owners_flows() {
    let t0 = Instant::now();
    let mut index = listed(
        &[dns_service("old", VIP)],
        &[dns_slice("old", vec![ep(A)])],
        t0,
    );
    let mut gate = gate();
    // Truth at t=1: `old` deleted, `new` created on the same ClusterIP with backend B. The agent
    // sees the deletion at t=2; `new` and its slice are still in flight.
    let t2 = secs(t0, 2);
    let _ = index.delete(&dns_service("old", VIP), t2);
    confirm(&mut index, &[Kind::Services], t2);
    confirm(&mut index, &ALL_BUT_SLICES, t2);
    let to_b = flow(VIP_PORT, &format!("{B}:5353"));
    let to_a = flow(VIP_PORT, &format!("{A}:5353"));
    assert_eq!(
        ask(&index, &mut gate, 1, to_b, t2),
        Some((Decision::Defer, Reason::ServiceDeleted, Evidence::Unseen))
    );
    assert_eq!(
        ask(&index, &mut gate, 2, to_a, t2),
        Some((Decision::Delete, Reason::ServiceDeleted, Evidence::Removed))
    );
    // Still in flight a little later (within the grace): deferred.
    let t3 = secs(t0, 3);
    confirm(&mut index, &ALL_BUT_SLICES, t3);
    assert_eq!(
        ask(&index, &mut gate, 1, to_b, t3).map(|d| d.0),
        Some(Decision::Defer)
    );
    // The new owner arrives: kept.
    let _ = index.apply(&dns_service("new", VIP), t3);
    let _ = index.apply(&dns_slice("new", vec![ep(B)]), t3);
    confirm(&mut index, &Kind::ALL, t3);
    assert_eq!(ask(&index, &mut gate, 1, to_b, t3), None);
}

/// (e) An endpoint the agent knows as not ready becomes ready while the agent lags: kube-proxy's
/// new flows to it are not deleted.
#[test]
fn not_ready_endpoint_turning_ready_while_agent_lags_is_not_deleted() {
    let t0 = Instant::now();
    let mut index = listed(
        &[dns_service("s0", VIP)],
        &[dns_slice(
            "s0",
            vec![ep(A), ep_cond(B, Some(false), Some(false), None)],
        )],
        t0,
    );
    let mut gate = gate();
    // Truth at t=1: B ready. The agent's slice watch is frozen.
    let to_b = flow(VIP_PORT, &format!("{B}:5353"));
    for s in 1..=8 {
        let now = secs(t0, s);
        confirm(&mut index, &ALL_BUT_SLICES, now);
        assert_eq!(
            ask(&index, &mut gate, 1, to_b, now),
            Some((
                Decision::Defer,
                Reason::EndpointNotServing,
                Evidence::Unseen
            )),
            "at t={s}s"
        );
    }
}

/// The cost of lag, pinned: a backend the agent saw leave comes back (readiness flap) while the
/// agent's slice watch, frozen right after, never tells it. A flow kube-proxy sends to it at once
/// looks removed and goes (no agent whose view lags can know better); once the backend has been
/// back for two graces it is never deleted, because the frozen watch's view is then more than a
/// grace old. (Before the gate required a view at most a grace old, such flows went until the
/// watch counted as silent.)
#[test]
fn flap_within_the_lag_costs_the_flow_until_two_graces() {
    let t0 = Instant::now();
    let mut index = listed(
        &[dns_service("s0", VIP)],
        &[dns_slice("s0", vec![ep(A), ep(B)])],
        t0,
    );
    let mut gate = gate();
    let ms = |ms: u64| t0 + Duration::from_millis(ms);
    // B stops being ready at 0.8 s; the agent applies it at 1 s. B is ready again at 1.2 s; the
    // slice watch freezes before delivering that. Every other kind keeps confirming.
    let _ = index.apply(
        &dns_slice(
            "s0",
            vec![ep(A), ep_cond(B, Some(false), Some(false), None)],
        ),
        ms(1_000),
    );
    confirm(&mut index, &[Kind::EndpointSlices], ms(1_000));
    let to_b = flow(VIP_PORT, &format!("{B}:5353"));
    let back = 1_200;
    let soon = ms(back + 300);
    confirm(&mut index, &ALL_BUT_SLICES, soon);
    assert_eq!(
        ask(&index, &mut gate, 1, to_b, soon),
        Some((
            Decision::Delete,
            Reason::EndpointNotServing,
            Evidence::Removed
        )),
        "within the lag the agent cannot know B came back"
    );
    for t in (back + 2 * GRACE_MS..STALE_AFTER_MS).step_by(500) {
        let now = ms(t);
        confirm(&mut index, &ALL_BUT_SLICES, now);
        let decision = ask(&index, &mut gate, 2, to_b, now).map(|d| d.0);
        assert_eq!(decision, Some(Decision::Defer), "at {t} ms");
    }
}

/// A watch resumed from its last resourceVersion (what a watcher does after most errors)
/// replays the events it missed long after they were sent. Each replayed event confirms the kind
/// at its receipt time, so a pass between two replayed events trusts a view that still lacks the
/// later ones: here the slice that added B, to which kube-proxy already sends a flow.
///
/// The gate's grace bound assumes every event arrives within `grace` of being sent, which a
/// replay breaks: a resumed watch is catching up (not fresh, its events confirm nothing) until a
/// bookmark, which the API server sends after the replay.
#[test]
fn resumed_watch_replay_does_not_confirm_a_view_still_missing_events() {
    let t0 = Instant::now();
    let c = "10.1.0.3";
    let mut index = listed(
        &[dns_service("s0", VIP), dns_service("s1", "10.96.0.2")],
        &[dns_slice("s0", vec![ep(A)]), dns_slice("s1", vec![ep(c)])],
        t0,
    );
    let mut gate = gate();
    let ms = |ms: u64| t0 + Duration::from_millis(ms);
    // The slice watch freezes at 0. Truth: s1's slice changes at 0.1 s (event E1), s0's slice
    // gains B at 0.2 s (event E2); kube-proxy sends a flow to B at 0.3 s.
    let to_b = flow(VIP_PORT, &format!("{B}:5353"));
    confirm(&mut index, &ALL_BUT_SLICES, ms(300));
    assert_eq!(
        ask(&index, &mut gate, 1, to_b, ms(300)).map(|d| d.0),
        Some(Decision::Defer)
    );
    // At 4 s the watch resumes: accepted, then E1 replayed (E2 follows at 4.3 s).
    index
        .knowledge_mut()
        .resumed(Kind::EndpointSlices, ms(4_000));
    let _ = index.apply(&dns_slice("s1", vec![ep(c), ep("10.1.0.4")]), ms(4_000));
    confirm(&mut index, &[Kind::EndpointSlices], ms(4_000));
    confirm(&mut index, &ALL_BUT_SLICES, ms(4_100));
    let decision = ask(&index, &mut gate, 1, to_b, ms(4_100)).map(|d| d.0);
    assert_ne!(
        decision,
        Some(Decision::Delete),
        "B's slice (E2) has not been replayed yet"
    );
}
