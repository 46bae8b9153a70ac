//! The event-fed flow index (issue 12): a model test against a simulated kernel table with
//! lost, duplicated and reordered events and re-seeds; deletion equivalence with a full pass;
//! memory per flow measured with a counting allocator.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers may panic

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ctdiff::{FlowIndex, FlowIndexError, IndexedFlow};

// ---- a per-thread counting allocator: tests run in parallel threads ----

struct Counting;

thread_local! {
    static LIVE_BYTES: Cell<isize> = const { Cell::new(0) };
}

fn add_live(delta: isize) {
    // `try_with`: the thread-local may already be gone while a thread exits.
    let _ = LIVE_BYTES.try_with(|c| c.set(c.get() + delta));
}

fn live_bytes() -> isize {
    LIVE_BYTES.with(Cell::get)
}

// SAFETY: every method forwards to the system allocator unchanged; the counting touches no
// allocation.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        add_live(layout.size() as isize);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        add_live(-(layout.size() as isize));
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        add_live(new_size as isize - layout.size() as isize);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn v4(a: u32, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::from(a)), port)
}

fn v6(a: u128, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V6(Ipv6Addr::from(a)), port)
}

/// A realistic node: `n` flows over `dests` destinations. Nine in ten destinations are
/// ClusterIPs DNATed to one of 4 backends, the rest are not DNATed; one flow in ten is
/// masqueraded to the node address. Clients are distinct `ip:port` pairs.
fn node_flows(n: u32, dests: u32, mk: impl Fn(u32, u16) -> SocketAddr) -> Vec<IndexedFlow> {
    let node = mk(0xc0a8_010a, 0);
    (0..n)
        .map(|i| {
            let d = i % dests;
            let orig_dst = mk(0x0a60_0000 + d, 53);
            let orig_src = mk(0x0af4_0000 + i / 50_000, 1024 + (i % 50_000) as u16);
            let reply_src = if d % 10 == 9 {
                orig_dst
            } else {
                mk(0x0af5_0000 + d * 4 + (i / dests) % 4, 8053)
            };
            let reply_dst = if i % 10 == 3 {
                SocketAddr::new(node.ip(), orig_src.port())
            } else {
                orig_src
            };
            IndexedFlow {
                orig_src,
                orig_dst,
                reply_src,
                reply_dst,
                id: i.wrapping_mul(2_654_435_761),
            }
        })
        .collect()
}

/// Inserts `flows` into a fresh index; returns it with the heap bytes this thread's allocations
/// grew by meanwhile (the index's own allocations: `flows` already exists).
fn measured(flows: &[IndexedFlow]) -> (FlowIndex, isize) {
    let before = live_bytes();
    let mut index = FlowIndex::with_hash_seed(7);
    for f in flows {
        assert_eq!(index.insert(*f), Ok(true));
    }
    (index, live_bytes() - before)
}

#[test]
fn memory_v4_one_million_flows_over_1000_destinations() {
    let flows = node_flows(1_000_000, 1_000, v4);
    let (mut index, heap) = measured(&flows);
    assert_eq!(index.len(), 1_000_000);
    assert_eq!(index.destinations(), 1_000);
    let estimate = index.memory_bytes();
    let per_flow = estimate as f64 / index.len() as f64;
    let heap_per_flow = heap as f64 / index.len() as f64;
    println!("v4 1M: estimate {per_flow:.2} B/flow, counted heap {heap_per_flow:.2} B/flow");
    assert!(per_flow <= 32.0, "{per_flow} bytes per flow");
    assert!(
        (estimate as f64 - heap as f64).abs() <= heap as f64 * 0.10,
        "estimate {estimate} vs heap {heap}"
    );
    // Removing every flow gives the memory back.
    let before = live_bytes();
    for f in &flows {
        assert!(index.remove(f));
    }
    assert!(index.is_empty());
    assert_eq!(index.memory_bytes(), 0);
    assert!(
        live_bytes() - before <= -(heap * 9 / 10),
        "memory kept after removal"
    );
}

#[test]
fn memory_v6_100k_flows() {
    let flows = node_flows(100_000, 1_000, |a, p| v6(0xfd00 << 112 | u128::from(a), p));
    let (index, heap) = measured(&flows);
    assert_eq!(index.len(), 100_000);
    let estimate = index.memory_bytes();
    let per_flow = estimate as f64 / index.len() as f64;
    println!(
        "v6 100k: estimate {per_flow:.2} B/flow, counted heap {:.2} B/flow",
        heap as f64 / index.len() as f64
    );
    assert!(per_flow <= 64.0, "{per_flow} bytes per flow");
    assert!((estimate as f64 - heap as f64).abs() <= heap as f64 * 0.10);
}

#[test]
fn mixed_families_are_refused() {
    let mut index = FlowIndex::new();
    let bad = IndexedFlow {
        orig_src: v4(1, 1),
        orig_dst: v4(2, 2),
        reply_src: v6(3, 3),
        reply_dst: v4(1, 1),
        id: 1,
    };
    assert!(!bad.is_single_family());
    assert_eq!(index.insert(bad), Err(FlowIndexError::MixedFamilies));
    assert_eq!(index.seed(bad), Err(FlowIndexError::MixedFamilies));
    assert!(!index.remove(&bad));
    assert!(index.is_empty());
}

// ---- unit tests ----

fn f4(
    src: (u32, u16),
    dst: (u32, u16),
    rsrc: (u32, u16),
    rdst: (u32, u16),
    id: u32,
) -> IndexedFlow {
    IndexedFlow {
        orig_src: v4(src.0, src.1),
        orig_dst: v4(dst.0, dst.1),
        reply_src: v4(rsrc.0, rsrc.1),
        reply_dst: v4(rdst.0, rdst.1),
        id,
    }
}

fn sorted(flows: impl Iterator<Item = IndexedFlow>) -> Vec<IndexedFlow> {
    let mut v: Vec<_> = flows.collect();
    v.sort();
    v
}

#[test]
fn insert_remove_duplicates_and_lookup() {
    let mut index = FlowIndex::new();
    let a = f4((1, 1000), (100, 53), (200, 8053), (1, 1000), 1);
    let b = f4((2, 1000), (100, 53), (201, 8053), (9, 2000), 2); // SNATed to 9:2000
    let c = f4((1, 1001), (101, 53), (101, 53), (1, 1001), 3); // not DNATed
    assert_eq!(index.insert(a), Ok(true));
    assert_eq!(index.insert(a), Ok(false), "a duplicate NEW is a no-op");
    assert_eq!(index.insert(b), Ok(true));
    assert_eq!(index.insert(c), Ok(true));
    assert_eq!((index.len(), index.destinations()), (3, 2));
    assert_eq!(sorted(index.flows_to(v4(100, 53))), vec![a, b]);
    assert_eq!(sorted(index.flows_to(v4(101, 53))), vec![c]);
    assert_eq!(index.flows_to(v4(100, 54)).count(), 0);
    assert_eq!(index.flows_to(v6(0, 53)).count(), 0);
    // An IPv4-mapped query finds the IPv4 flows.
    let mapped = SocketAddr::new(IpAddr::V6(Ipv4Addr::from(100u32).to_ipv6_mapped()), 53);
    assert_eq!(sorted(index.flows_to(mapped)), vec![a, b]);
    // Same tuples, another id: another kernel entry.
    let a2 = IndexedFlow { id: 77, ..a };
    assert!(!index.remove(&a2), "unknown DESTROY is a no-op");
    assert!(index.remove(&a));
    assert!(!index.remove(&a));
    assert_eq!(sorted(index.flows_to(v4(100, 53))), vec![b]);
    assert!(index.contains(&b) && !index.contains(&a));
    assert_eq!(
        sorted(index.flows_to_port(true, 53, |ip| ip == IpAddr::V4(Ipv4Addr::from(101u32)))),
        vec![c]
    );
    assert_eq!(
        sorted(index.flows_to_port(true, 53, |_| true)),
        sorted([b, c].into_iter())
    );
    assert_eq!(index.flows_to_port(false, 53, |_| true).count(), 0);
    index.clear();
    assert!(index.is_empty());
    assert_eq!(index.memory_bytes(), 0);
}

#[test]
fn a_big_route_uses_its_table_and_shrinks_back() {
    let mut index = FlowIndex::new();
    let flows: Vec<_> = (0..5_000u32)
        .map(|i| {
            f4(
                (1 + i / 1000, (i % 1000) as u16),
                (100, 53),
                (200, 8053),
                (1 + i / 1000, (i % 1000) as u16),
                i,
            )
        })
        .collect();
    for f in &flows {
        assert_eq!(index.insert(*f), Ok(true));
    }
    let full = index.memory_bytes();
    for f in &flows[..4_990] {
        assert!(index.remove(f));
    }
    assert_eq!(
        sorted(index.flows_to(v4(100, 53))),
        sorted(flows[4_990..].iter().copied())
    );
    assert!(
        index.memory_bytes() * 20 < full,
        "{} of {full}",
        index.memory_bytes()
    );
    for f in &flows[4_990..] {
        assert!(index.contains(f));
    }
}

#[test]
fn reseed_keeps_new_flows_drops_unconfirmed_and_never_resurrects() {
    let mut index = FlowIndex::new();
    let old_live = f4((1, 1), (100, 53), (200, 8053), (1, 1), 1);
    let old_dead = f4((1, 2), (100, 53), (200, 8053), (1, 2), 2); // its DESTROY was lost
    let fresh = f4((1, 3), (100, 53), (200, 8053), (1, 3), 3); // NEW during the seed
    let dying = f4((1, 4), (100, 53), (201, 8053), (1, 4), 4); // DESTROY during the seed
    for f in [old_live, old_dead, dying] {
        index.insert(f).unwrap();
    }
    index.begin_seed();
    assert!(index.is_seeding());
    // Flows stay visible during the seed.
    assert_eq!(index.len(), 3);
    index.insert(fresh).unwrap();
    assert!(index.remove(&dying));
    assert_eq!(index.seed(old_live), Ok(false));
    // The dump passed `dying` before it died; that record is processed after its DESTROY.
    assert_eq!(index.seed(dying), Ok(false));
    assert!(!index.contains(&dying));
    // A DESTROY during the seed for a flow the index never had, then the dump reports it.
    let ghost = f4((1, 5), (102, 53), (200, 8053), (1, 5), 5);
    assert!(!index.remove(&ghost));
    assert_eq!(index.seed(ghost), Ok(false));
    assert_eq!(index.finish_seed(), 1, "old_dead dropped");
    assert_eq!(sorted(index.iter()), vec![old_live, fresh]);
    assert_eq!(index.destinations(), 1);
    // After the seed, destroyed identities are forgotten.
    assert_eq!(index.insert(dying), Ok(true));
    assert_eq!(index.finish_seed(), 0, "no seed in progress");
}

#[test]
fn a_new_event_revives_a_flow_destroyed_during_the_seed() {
    let mut index = FlowIndex::new();
    let f = f4((1, 1), (100, 53), (200, 8053), (1, 1), 1);
    index.begin_seed();
    index.remove(&f); // reordered: the DESTROY first
    assert_eq!(index.insert(f), Ok(true));
    assert_eq!(index.seed(f), Ok(false));
    index.finish_seed();
    assert!(index.contains(&f), "an extra flow is the safe side");
}

#[test]
fn restarting_a_seed_needs_a_fresh_confirmation() {
    let mut index = FlowIndex::new();
    let f = f4((1, 1), (100, 53), (200, 8053), (1, 1), 1);
    index.insert(f).unwrap();
    index.begin_seed();
    index.seed(f).unwrap();
    index.begin_seed(); // events were lost during the first dump
    assert_eq!(index.finish_seed(), 1);
    assert!(index.is_empty());
    assert_eq!(index.memory_bytes(), 0);
}

// ---- the model: a kernel table, its event queue, a dump, and the agent feeding the index ----

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use common::*;
use ctdiff::{Dirty, Frontend, Index};
use proptest::prelude::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ev {
    New,
    Destroy,
}

#[derive(Clone, Copy, Debug)]
struct Queued {
    ev: Ev,
    flow: IndexedFlow,
    /// Delivered out of order (moved ahead of an earlier event), or queued before a lost
    /// event (the kernel reports a loss before the agent has read what was queued earlier).
    tainted: bool,
}

/// How a generated flow is shaped; turned into addresses by [`Sim::make`].
#[derive(Clone, Copy, Debug)]
struct FlowSpec {
    v6: bool,
    /// Index into the destination pool; 0 is hot (a route with many flows).
    dst: usize,
    /// 0 = not DNATed (reply source = destination), else a backend of the pool.
    backend: u8,
    client: u8,
    client_port: u8,
    /// 0 = no SNAT, 1 = masqueraded keeping the port, 2 = masqueraded to another port.
    snat: u8,
}

#[derive(Clone, Debug)]
enum Step {
    /// The kernel creates a flow; `dumped` decides whether a dump in progress reaches it.
    New(FlowSpec, bool),
    /// The kernel destroys its `n % len`-th flow; `dumped` decides whether a dump in progress
    /// passed it before its death.
    Destroy(usize, bool),
    /// The agent applies up to n queued events.
    Deliver(usize),
    DeliverAll,
    /// The socket overflows: the next queued event is lost.
    Drop,
    /// The next event is delivered twice.
    Dup,
    /// The second queued event is delivered before the first.
    Swap,
    /// Lost events were noticed (or a restart): begin (or restart) a seed.
    BeginSeed,
    /// The dump's next n records reach the agent.
    Dump(usize),
    /// The dump ends: its remaining records, then `finish_seed`.
    FinishSeed,
}

fn flow_spec() -> impl Strategy<Value = FlowSpec> {
    (
        prop::bool::weighted(0.25),
        prop_oneof![3 => Just(0usize), 2 => 0usize..6],
        prop_oneof![3 => Just(1u8), 2 => 0u8..4],
        0u8..4,
        0u8..16,
        prop_oneof![4 => Just(0u8), 1 => 1u8..3],
    )
        .prop_map(|(v6, dst, backend, client, client_port, snat)| FlowSpec {
            v6,
            dst,
            backend,
            client,
            client_port,
            snat,
        })
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => (flow_spec(), any::<bool>()).prop_map(|(s, d)| Step::New(s, d)),
        4 => (any::<usize>(), any::<bool>()).prop_map(|(n, d)| Step::Destroy(n, d)),
        5 => (1usize..6).prop_map(Step::Deliver),
        1 => Just(Step::DeliverAll),
        1 => Just(Step::Drop),
        1 => Just(Step::Dup),
        1 => Just(Step::Swap),
        1 => Just(Step::BeginSeed),
        3 => (1usize..8).prop_map(Step::Dump),
        1 => Just(Step::FinishSeed),
    ]
}

/// Destination pool: (IPv4, IPv6) frontends and a non-frontend.
const DSTS4: [&str; 6] = [
    "10.96.0.1:53",
    "10.96.0.2:53",
    "10.96.0.3:5353",
    "192.168.1.10:30053",
    "192.168.1.10:5060",
    "10.1.1.1:9",
];
const DSTS6: [&str; 6] = [
    "[fd00::96:1]:53",
    "[fd00::96:2]:53",
    "[fd00::96:3]:5353",
    "[fd00::10]:30053",
    "[fd00::10]:5060",
    "[fd00::1:1]:9",
];
/// Backends (1..=3): good ones, a not-ready one, an unknown one (by destination family).
const BACKENDS4: [&str; 3] = ["10.244.0.1", "10.244.0.3", "10.244.7.7"];
const BACKENDS6: [&str; 3] = ["fd00::244:1", "fd00::244:3", "fd00::244:7"];

struct Sim {
    index: FlowIndex,
    kernel: BTreeSet<IndexedFlow>,
    queue: VecDeque<Queued>,
    next_id: u32,
    /// Flows the agent was told are live (a NEW applied or a dump record seeded).
    told: BTreeSet<IndexedFlow>,
    /// The dump in progress: records not yet read, and flows destroyed whose record the dump
    /// had passed (`dumped`) or not.
    dump: Option<VecDeque<IndexedFlow>>,
    passed_before_death: BTreeSet<IndexedFlow>,
    /// No event lost or reordered since the last `begin_seed`, and a seed completed since.
    clean: bool,
    seeded_once: bool,
    /// A NEW event was lost and no seed that began after the loss has completed: lookups may
    /// miss that flow until one does.
    new_lost: bool,
    /// A NEW event was lost since the last `begin_seed`.
    new_lost_in_seed: bool,
    exact_checks: usize,
}

impl Sim {
    fn new(initial: &[FlowSpec]) -> Sim {
        let mut sim = Sim {
            index: FlowIndex::with_hash_seed(3),
            kernel: BTreeSet::new(),
            queue: VecDeque::new(),
            next_id: 1,
            told: BTreeSet::new(),
            dump: None,
            passed_before_death: BTreeSet::new(),
            clean: false,
            seeded_once: false,
            new_lost: false,
            new_lost_in_seed: false,
            exact_checks: 0,
        };
        for spec in initial {
            sim.kernel_new(*spec, false);
        }
        // The initial events predate the agent: the agent starts with a seeding dump.
        sim.queue.clear();
        sim.step(&Step::BeginSeed);
        sim.step(&Step::FinishSeed);
        sim
    }

    fn make(&mut self, s: FlowSpec) -> IndexedFlow {
        let (dsts, backends, client_net, node): (&[&str; 6], &[&str; 3], &str, &str) = if s.v6 {
            (&DSTS6, &BACKENDS6, "fd00::244:", "fd00::10")
        } else {
            (&DSTS4, &BACKENDS4, "10.244.1.", "192.168.1.10")
        };
        let orig_dst = sock(dsts[s.dst]);
        let reply_src = match s.backend {
            0 => orig_dst,
            b => SocketAddr::new(backends[usize::from(b) - 1].parse().unwrap(), 8053),
        };
        let client_ip: IpAddr = format!("{client_net}{}", 100 + s.client).parse().unwrap();
        let orig_src = SocketAddr::new(client_ip, 40_000 + u16::from(s.client_port));
        let node: IpAddr = node.parse().unwrap();
        let reply_dst = match s.snat {
            0 => orig_src,
            1 => SocketAddr::new(node, orig_src.port()),
            _ => SocketAddr::new(
                node,
                60_000 + u16::from(s.client_port) + 16 * u16::from(s.client),
            ),
        };
        let id = self.next_id;
        self.next_id += 1;
        IndexedFlow {
            orig_src,
            orig_dst,
            reply_src,
            reply_dst,
            id,
        }
    }

    fn kernel_new(&mut self, spec: FlowSpec, dumped: bool) {
        let flow = self.make(spec);
        // Reply tuples are unique in the kernel table (a clash would be NATed elsewhere).
        if self
            .kernel
            .iter()
            .any(|k| (k.reply_src, k.reply_dst) == (flow.reply_src, flow.reply_dst))
        {
            return;
        }
        self.kernel.insert(flow);
        self.queue.push_back(Queued {
            ev: Ev::New,
            flow,
            tainted: false,
        });
        if dumped && let Some(dump) = &mut self.dump {
            dump.push_back(flow);
        }
    }

    fn deliver(&mut self, q: Queued) {
        if q.tainted {
            self.clean = false;
        }
        match q.ev {
            Ev::New => {
                self.index.insert(q.flow).unwrap();
                self.told.insert(q.flow);
            }
            Ev::Destroy => {
                self.index.remove(&q.flow);
            }
        }
    }

    fn read_dump(&mut self, n: usize) {
        for _ in 0..n {
            let Some(flow) = self.dump.as_mut().and_then(VecDeque::pop_front) else {
                return;
            };
            // A live flow is always reported; a flow that died during the dump only when the
            // dump passed it first.
            if self.kernel.contains(&flow) || self.passed_before_death.contains(&flow) {
                self.index.seed(flow).unwrap();
                self.told.insert(flow);
            }
        }
    }

    fn step(&mut self, step: &Step) {
        match *step {
            Step::New(spec, dumped) => self.kernel_new(spec, dumped),
            Step::Destroy(n, dumped) => {
                if self.kernel.is_empty() {
                    return;
                }
                let Some(&flow) = self.kernel.iter().nth(n % self.kernel.len()) else {
                    return;
                };
                self.kernel.remove(&flow);
                if dumped {
                    self.passed_before_death.insert(flow);
                }
                self.queue.push_back(Queued {
                    ev: Ev::Destroy,
                    flow,
                    tainted: false,
                });
            }
            Step::Deliver(n) => {
                for _ in 0..n {
                    if let Some(q) = self.queue.pop_front() {
                        self.deliver(q);
                    }
                }
            }
            Step::DeliverAll => {
                while let Some(q) = self.queue.pop_front() {
                    self.deliver(q);
                }
            }
            Step::Drop => {
                if let Some(q) = self.queue.pop_front() {
                    self.clean = false;
                    if q.ev == Ev::New {
                        self.new_lost = true;
                        self.new_lost_in_seed = true;
                    }
                    for q in &mut self.queue {
                        q.tainted = true;
                    }
                }
            }
            Step::Dup => {
                if let Some(q) = self.queue.pop_front() {
                    self.deliver(q);
                    self.deliver(q);
                }
            }
            Step::Swap => {
                if self.queue.len() >= 2 {
                    self.queue.swap(0, 1);
                    // Both are out of order: the one moved ahead, and the one it jumped over
                    // (a DESTROY moved ahead of its NEW leaves that NEW to re-add a dead flow).
                    self.queue[0].tainted = true;
                    self.queue[1].tainted = true;
                }
            }
            Step::BeginSeed => {
                self.index.begin_seed();
                self.dump = Some(self.kernel.iter().copied().collect());
                self.passed_before_death.clear();
                self.new_lost_in_seed = false;
                // Tainted events still queued make the result inexact (extras).
                self.clean = !self.queue.iter().any(|q| q.tainted);
            }
            Step::Dump(n) => self.read_dump(n),
            Step::FinishSeed => {
                if self.dump.is_none() {
                    return;
                }
                self.read_dump(usize::MAX);
                self.dump = None;
                self.index.finish_seed();
                self.seeded_once = true;
                // The dump covered a NEW lost before `begin_seed`, not one lost during it.
                if !self.new_lost_in_seed {
                    self.new_lost = false;
                }
            }
        }
        self.check();
    }

    fn check(&mut self) {
        // Never missing: a live flow the agent was told about is indexed.
        for flow in &self.kernel {
            if self.told.contains(flow) {
                assert!(self.index.contains(flow), "missing {flow:?}");
            }
        }
        assert_eq!(self.index.len(), self.index.iter().count());
        if self.clean && self.seeded_once && self.dump.is_none() && self.queue.is_empty() {
            self.exact_checks += 1;
            let indexed: BTreeSet<IndexedFlow> = self.index.iter().collect();
            assert_eq!(self.index.len(), indexed.len(), "a flow yielded twice");
            let extra: Vec<_> = indexed.difference(&self.kernel).collect();
            let missing: Vec<_> = self.kernel.difference(&indexed).collect();
            assert!(
                extra.is_empty() && missing.is_empty(),
                "extra {extra:?}, missing {missing:?}"
            );
            let mut by_dst: BTreeMap<SocketAddr, Vec<IndexedFlow>> = BTreeMap::new();
            for f in &self.kernel {
                by_dst.entry(f.orig_dst).or_default().push(*f);
            }
            for d in DSTS4.iter().chain(&DSTS6).map(|d| sock(d)) {
                let want = by_dst.remove(&d).unwrap_or_default();
                assert_eq!(sorted(self.index.flows_to(d)), want, "flows to {d}");
            }
            assert_eq!(
                self.index.destinations(),
                self.kernel
                    .iter()
                    .map(|f| f.orig_dst)
                    .collect::<BTreeSet<_>>()
                    .len()
            );
        }
    }

    /// What the agent does after lost events: a complete seed, then every queued event.
    fn recover(&mut self) {
        self.step(&Step::DeliverAll);
        self.step(&Step::BeginSeed);
        self.step(&Step::FinishSeed);
        self.step(&Step::DeliverAll);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// (a) The index against the kernel table: never a missing flow; exact after a clean seed.
    #[test]
    fn index_follows_the_kernel_table(
        initial in prop::collection::vec(flow_spec(), 0..20),
        steps in prop::collection::vec(step(), 0..120),
    ) {
        let mut sim = Sim::new(&initial);
        for step in &steps {
            sim.step(step);
        }
        sim.recover();
        prop_assert!(sim.exact_checks > 0);
        assert_eq!(sorted(sim.index.iter()), sorted(sim.kernel.iter().copied()));
    }
}

// ---- (b) deletion equivalence with a full pass ----

fn cluster(now: Instant) -> Index {
    let a = with_ip_families(
        mk_service(
            "ns",
            "a",
            &["10.96.0.1", "fd00::96:1"],
            vec![udp_np("dns", 53, 30053)],
        ),
        &["IPv4", "IPv6"],
    );
    let b = mk_service(
        "ns",
        "b",
        &["10.96.0.2", "fd00::96:2"],
        vec![udp("dns", 53)],
    );
    let gone = mk_service(
        "ns",
        "gone",
        &["10.96.0.3", "fd00::96:3"],
        vec![udp("mdns", 5353)],
    );
    let slices = [
        mk_slice(
            "ns",
            "a4",
            "a",
            &[("dns", 8053)],
            vec![
                ep("10.244.0.1"),
                ep_cond("10.244.0.3", Some(false), Some(false), None),
            ],
        ),
        mk_slice("ns", "a6", "a", &[("dns", 8053)], vec![ep("fd00::244:1")]),
        mk_slice("ns", "b4", "b", &[("dns", 8053)], vec![ep("10.244.0.3")]),
        mk_slice(
            "ns",
            "gone4",
            "gone",
            &[("mdns", 8053)],
            vec![ep("10.244.0.1")],
        ),
    ];
    let pod = mk_pod(
        "ns",
        "hp",
        NODE,
        &["10.244.0.1", "fd00::244:1"],
        &[(None, 5060, 8053)],
    );
    let mut index = mk_index(
        &[a, b, gone.clone()],
        &slices,
        &[pod],
        &["192.168.1.10", "fd00::10"],
        now,
    );
    let _ = index.delete_service(&gone, now);
    index
}

/// Every frontend a change can touch, as a `Dirty` set names them.
fn frontends() -> Vec<Frontend> {
    let mut v: Vec<Frontend> = DSTS4[..3]
        .iter()
        .chain(&DSTS6[..3])
        .map(|d| Frontend::Addr(sock(d)))
        .collect();
    v.push(Frontend::NodePort(30053));
    v.push(Frontend::HostPort(sock("0.0.0.0:5060")));
    v.push(Frontend::HostPort(sock("[::]:5060")));
    v.push(Frontend::HostPort(sock("192.168.1.10:5060")));
    v.push(Frontend::Addr(sock("10.1.1.1:9")));
    v
}

/// The index lookups a targeted pass makes for `frontend`.
fn lookup(index: &FlowIndex, frontend: &Frontend) -> Vec<IndexedFlow> {
    match *frontend {
        Frontend::Addr(addr) => index.flows_to(addr).collect(),
        Frontend::HostPort(addr) if !addr.ip().is_unspecified() => index.flows_to(addr).collect(),
        Frontend::HostPort(addr) => index
            .flows_to_port(addr.is_ipv4(), addr.port(), |_| true)
            .collect(),
        Frontend::NodePort(port) => index
            .flows_to_port(true, port, |_| true)
            .chain(index.flows_to_port(false, port, |_| true))
            .collect(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// (b) The stale flows found through the index for a set of changed frontends are exactly
    /// those a full pass finds among the flows to those frontends (restricted to flows the
    /// kernel still has); the index adds only "already gone" ones, never a kept flow.
    #[test]
    fn targeted_deletions_equal_a_full_pass(
        initial in prop::collection::vec(flow_spec(), 0..30),
        steps in prop::collection::vec(step(), 0..100),
        changed in prop::collection::btree_set(0usize..11, 1..5),
    ) {
        let now = Instant::now();
        let cluster = cluster(now);
        let later = now + Duration::from_secs(1);
        let mut sim = Sim::new(&initial);
        for step in &steps {
            sim.step(step);
        }
        // After a lost NEW, lookups may miss that flow until a seed begun after the loss
        // completes: the agent re-seeds (and repeats the changed frontends' lookups after it).
        if sim.new_lost {
            sim.recover();
        }
        // Now, with events still queued: no stale flow the agent was told about is missed.
        let (via_index, full) = stale_sets(&sim, &cluster, &changed, later)?;
        for flow in full.intersection(&sim.told) {
            prop_assert!(via_index.contains(flow), "missed {flow:?}");
        }
        // Once the queued events are applied: the same stale set as a full pass.
        sim.step(&Step::DeliverAll);
        let (via_index, full) = stale_sets(&sim, &cluster, &changed, later)?;
        let live: BTreeSet<IndexedFlow> = via_index.intersection(&sim.kernel).copied().collect();
        prop_assert_eq!(&live, &full);
        for gone in via_index.difference(&sim.kernel) {
            // An extra the index still holds (its DESTROY was lost or came first): deleting it
            // by exact key and id finds nothing in the kernel.
            prop_assert!(!sim.kernel.iter().any(|k| k.id == gone.id));
        }
    }
}

type StaleSets = (BTreeSet<IndexedFlow>, BTreeSet<IndexedFlow>);

/// The stale flows to the `changed` frontends: found through the index, and by a full pass
/// over the kernel table.
fn stale_sets(
    sim: &Sim,
    cluster: &Index,
    changed: &BTreeSet<usize>,
    now: Instant,
) -> Result<StaleSets, TestCaseError> {
    let all = frontends();
    let dirty = Dirty {
        all: false,
        frontends: {
            let mut f: Vec<_> = changed.iter().map(|&i| all[i]).collect();
            f.sort();
            f.dedup();
            f
        },
    };
    let mut via_index = BTreeSet::new();
    for frontend in &dirty.frontends {
        for flow in lookup(&sim.index, frontend) {
            prop_assert!(
                dirty.covers(&flow.flow_ref()),
                "{flow:?} is not to {frontend}"
            );
            if cluster.classify(&flow.flow_ref(), now).is_stale() {
                via_index.insert(flow);
            }
        }
    }
    let full: BTreeSet<IndexedFlow> = sim
        .kernel
        .iter()
        .filter(|f| dirty.covers(&f.flow_ref()))
        .filter(|f| cluster.classify(&f.flow_ref(), now).is_stale())
        .copied()
        .collect();
    Ok((via_index, full))
}
