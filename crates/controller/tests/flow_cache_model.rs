//! Property: a scoped pass served by the flow cache deletes exactly what a full walk of the
//! kernel table would delete within that scope, for generated histories of flows, events
//! (dropped, duplicated, reordered between NEW and DESTROY), desired-state changes and re-seeds,
//! and never a healthy flow. No root: the table is in memory.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

use conntrack_reconciler::pass::{
    FakeTable, FlowCache, PassConfig, PassReport, Sources, WalkChooser, run_pass, run_pass_with,
};
use ctdiff::{Dirty, Frontend, Index, IndexConfig, Kind, Verdict};
use ctnetlink::{Family, Flow, FlowKey, Status, Tuple, ZoneDir, proto};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use proptest::prelude::*;
use serde_json::json;
use std::collections::{HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Mutex, RwLock};
use std::time::Instant;

const VIPS: [&str; 2] = ["10.96.0.10", "10.96.0.20"];
const BACKENDS: [&str; 4] = ["10.244.0.1", "10.244.0.2", "10.244.0.3", "10.244.0.4"];

fn service(i: usize) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": format!("s{i}"), "namespace": "d"},
        "spec": {"clusterIP": VIPS[i], "clusterIPs": [VIPS[i]],
                 "ports": [{"port": 53, "protocol": "UDP"}]}
    }))
    .unwrap()
}

fn slice(i: usize, ready: &[bool; 4]) -> EndpointSlice {
    let endpoints: Vec<_> = BACKENDS
        .iter()
        .zip(ready)
        .map(|(ip, r)| json!({"addresses": [ip], "conditions": {"ready": r, "serving": r}}))
        .collect();
    serde_json::from_value(json!({
        "metadata": {"name": format!("s{i}-x"), "namespace": "d",
                     "labels": {"kubernetes.io/service-name": format!("s{i}")}},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"port": 5353, "protocol": "UDP"}]
    }))
    .unwrap()
}

fn flow(id: u32, svc: usize, backend: usize, client_port: u16) -> Flow {
    let client: IpAddr = "10.244.9.9".parse().unwrap();
    let vip: IpAddr = VIPS[svc].parse().unwrap();
    let backend: IpAddr = BACKENDS[backend].parse().unwrap();
    Flow {
        family: Family::V4,
        orig: Tuple::new(client, vip, proto::UDP, client_port, 53),
        reply: Tuple::new(backend, client, proto::UDP, 5353, client_port),
        status: Status::CONFIRMED,
        mark: 0,
        zone: 0,
        timeout: 30,
        id,
        zone_dir: ZoneDir::Both,
    }
}

#[derive(Clone, Debug)]
enum Op {
    /// A new flow: to service `svc`, DNATed to `backend`, from `port`.
    Create {
        svc: usize,
        backend: usize,
        port: u16,
    },
    /// The `n`th live flow (modulo) expires.
    Expire(usize),
    /// The next `n` queued events reach the agent.
    Deliver(usize),
    /// The next queued event is lost; the kernel reports the loss.
    Drop,
    /// The next queued event is delivered twice.
    Duplicate,
    /// The next two queued events swap places.
    Reorder,
    /// A desired-state change: service `svc`'s ready backends become `ready`; then the
    /// events queued so far are delivered and a scoped pass runs.
    Change { svc: usize, ready: [bool; 4] },
    /// A full pass (re-seeds the cache).
    FullPass,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..2usize, 0..4usize, 1000..1040u16).prop_map(|(svc, backend, port)| Op::Create { svc, backend, port }),
        2 => (0..64usize).prop_map(Op::Expire),
        3 => (1..6usize).prop_map(Op::Deliver),
        1 => Just(Op::Drop),
        1 => Just(Op::Duplicate),
        1 => Just(Op::Reorder),
        2 => (0..2usize, any::<[bool; 4]>()).prop_map(|(svc, ready)| Op::Change { svc, ready }),
        1 => Just(Op::FullPass),
    ]
}

enum Ev {
    New(Flow),
    Destroy(Flow),
}

struct World {
    table: FakeTable,
    queue: VecDeque<Ev>,
    cache: Mutex<FlowCache>,
    index: RwLock<Index>,
    next_id: u32,
}

fn cfg() -> PassConfig {
    PassConfig {
        family: None,
        dry_run: false,
        budget: 0,
        zone: 0,
    }
}

impl World {
    fn new() -> World {
        let t0 = Instant::now();
        let mut index = Index::new(IndexConfig::new("n1"));
        let _ = index.reset([&service(0), &service(1)], t0);
        let _ = index.reset([&slice(0, &[true; 4]), &slice(1, &[true; 4])], t0);
        let _ = index.reset::<Pod>([], t0);
        for kind in Kind::ALL {
            index.knowledge_mut().relist_started(kind, t0);
            index.knowledge_mut().listed(kind, t0, t0);
        }
        let mut cache = FlowCache::new(0);
        cache.following();
        World {
            table: FakeTable::default(),
            queue: VecDeque::new(),
            cache: Mutex::new(cache),
            index: RwLock::new(index),
            next_id: 1,
        }
    }

    fn deliver_one(&mut self) {
        match self.queue.pop_front() {
            Some(Ev::New(f)) => self.cache.lock().unwrap().created(&f),
            Some(Ev::Destroy(f)) => self.cache.lock().unwrap().destroyed(&f),
            None => {}
        }
    }

    /// One pass as the agent runs it: over the table, with the cache, without a gate.
    fn pass(&mut self, scope: &Dirty, now: Instant) -> PassReport {
        let sources = Sources {
            cache: Some(&self.cache),
            walks: &mut WalkChooser::default(),
        };
        run_pass_with(
            &mut self.table,
            &self.index,
            None,
            sources,
            scope,
            &cfg(),
            now,
        )
        .unwrap()
    }

    fn full_pass(&mut self) {
        let report = self.pass(&Dirty::all(), Instant::now());
        // Deleted flows leave by DESTROY events too.
        for s in report.stale {
            self.queue.push_back(Ev::Destroy(s.flow));
        }
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::Create { svc, backend, port } => {
                // The kernel holds one entry per original tuple.
                if self
                    .table
                    .flows
                    .iter()
                    .any(|f| f.orig.sport == port && f.orig.dst == flow(0, svc, 0, port).orig.dst)
                {
                    return;
                }
                let f = flow(self.next_id, svc, backend, port);
                self.next_id += 1;
                self.table.flows.push(f);
                self.queue.push_back(Ev::New(f));
            }
            Op::Expire(n) => {
                if !self.table.flows.is_empty() {
                    let f = self.table.flows.remove(n % self.table.flows.len());
                    self.queue.push_back(Ev::Destroy(f));
                }
            }
            Op::Deliver(n) => (0..n).for_each(|_| self.deliver_one()),
            Op::Drop => {
                if self.queue.pop_front().is_some() {
                    self.cache.lock().unwrap().lost();
                }
            }
            Op::Duplicate => {
                let copy = match self.queue.front() {
                    Some(Ev::New(f)) => Some(Ev::New(*f)),
                    Some(Ev::Destroy(f)) => Some(Ev::Destroy(*f)),
                    None => None,
                };
                if let Some(e) = copy {
                    self.queue.push_front(e);
                }
            }
            Op::Reorder => {
                if self.queue.len() >= 2 {
                    self.queue.swap(0, 1);
                }
            }
            Op::FullPass => self.full_pass(),
            Op::Change { svc, ready } => {
                let _ = self
                    .index
                    .write()
                    .unwrap()
                    .apply(&slice(svc, &ready), Instant::now());
                while !self.queue.is_empty() {
                    self.deliver_one();
                }
                self.check_scoped_pass(svc);
            }
        }
    }

    /// The scoped pass (cache or walk, as the agent would) deletes exactly what a full walk
    /// finds stale within the scope, and only stale flows.
    fn check_scoped_pass(&mut self, svc: usize) {
        let vip: SocketAddr = format!("{}:53", VIPS[svc]).parse().unwrap();
        let scope = Dirty::of([Frontend::Addr(vip)]);
        let now = Instant::now();
        // The reference: a walk of the table, planned over the scope, deleting nothing.
        let mut reference_table = self.table.clone();
        let dry = PassConfig {
            dry_run: true,
            ..cfg()
        };
        let reference =
            run_pass(&mut reference_table, &self.index, None, &scope, &dry, now).unwrap();
        let expected: HashSet<FlowKey> = reference.stale.iter().map(|s| s.flow.key()).collect();
        let live_before: HashSet<FlowKey> = self.table.flows.iter().map(Flow::key).collect();
        let walks_before = self.table.walks;
        // (Judged before the pass: a pass that walks re-seeds the cache.)
        let complete = self.cache.lock().unwrap().is_complete();
        let report = self.pass(&scope, now);
        assert_eq!(report.walked, !complete);
        assert_eq!(self.table.walks - walks_before, usize::from(!complete));
        let deleted: HashSet<FlowKey> = report
            .stale
            .iter()
            .map(|s| s.flow.key())
            .filter(|k| live_before.contains(k))
            .collect();
        assert_eq!(deleted, expected, "cache complete: {complete}");
        // Nothing healthy: every key asked to be deleted is stale by the index.
        let index = self.index.read().unwrap();
        for s in &report.stale {
            let v = index.classify(&conntrack_reconciler::pass::flow_ref(&s.flow), now);
            assert!(matches!(v, Verdict::Stale(_)), "{:?}", s.flow);
        }
        drop(index);
        for s in report.stale {
            if live_before.contains(&s.flow.key()) {
                self.queue.push_back(Ev::Destroy(s.flow));
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn scoped_passes_from_the_cache_delete_what_a_walk_would(ops in proptest::collection::vec(op(), 1..80)) {
        let mut world = World::new();
        world.full_pass(); // the startup pass seeds the cache
        for op in ops {
            world.apply(op);
        }
    }
}
