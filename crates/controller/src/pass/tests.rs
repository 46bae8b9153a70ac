//! The pass's rules, without root: the planner over an in-memory table.

use super::*;
use crate::test_fixtures::{udp_flow, udp_service, udp_slice};
use ctdiff::{GateConfig, IndexConfig, Kind, Reason};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

fn service() -> Service {
    udp_service("dns", "10.96.0.10", &[53])
}

fn other_service() -> Service {
    udp_service("stats", "10.96.0.20", &[8125])
}

fn slice(ready: &[(&str, bool)]) -> EndpointSlice {
    udp_slice("dns", ready)
}

fn flow_to(vip: &str, dport: u16, sport: u16, backend: &str, bport: u16) -> Flow {
    udp_flow(sport, vip, dport, backend, bport)
}

fn flow(sport: u16, backend: &str) -> Flow {
    flow_to("10.96.0.10", 53, sport, backend, 5353)
}

/// An index listed at `t0` with two ready backends, where 10.244.0.2 was then seen leaving.
fn index(t0: Instant) -> RwLock<Index> {
    let mut index = Index::new(IndexConfig::new("n1"));
    let _ = index.reset_services([&service(), &other_service()], t0);
    let _ =
        index.reset_endpoint_slices([&slice(&[("10.244.0.1", true), ("10.244.0.2", true)])], t0);
    let _ = index.reset_pods([], t0);
    let _ = index.apply_endpoint_slice(&slice(&[("10.244.0.1", true), ("10.244.0.2", false)]), t0);
    for kind in Kind::ALL {
        index.knowledge_mut().relist_started(kind, t0);
        index.knowledge_mut().listed(kind, t0, t0);
    }
    RwLock::new(index)
}

fn cfg() -> PassConfig {
    PassConfig {
        family: Some(Family::V4),
        dry_run: false,
        budget: 0,
        zone: 0,
    }
}

fn gate() -> Mutex<FlowGate> {
    Mutex::new(FlowGate::new(GateConfig::default()))
}

fn all() -> Dirty {
    Dirty {
        all: true,
        frontends: Vec::new(),
    }
}

fn plan(
    index: &RwLock<Index>,
    gate: &Mutex<FlowGate>,
    cfg: PassConfig,
    flows: &[Flow],
) -> PassReport {
    let now = Instant::now();
    let mut planner = Planner::new(cfg.plan(), &all());
    for f in flows {
        planner.observe(&index.read().unwrap(), f, now);
    }
    planner.decide(&index.read().unwrap(), Some(&mut gate.lock().unwrap()), now)
}

#[test]
fn a_removed_backend_is_deleted_by_exact_key_and_a_ready_one_kept() {
    let index = index(Instant::now());
    let gate = gate();
    let stale = flow(4000, "10.244.0.2");
    let mut table = FakeTable::new(vec![flow(4001, "10.244.0.1"), stale]);
    let report = run_pass(
        &mut table,
        &index,
        Some(&gate),
        &all(),
        &cfg(),
        Instant::now(),
    )
    .unwrap();
    assert_eq!(report.stale.len(), 1);
    assert_eq!(report.stale[0].reason, Reason::EndpointNotServing);
    assert_eq!((report.deleted, report.scanned), (1, 2));
    assert_eq!(table.delete_requests, vec![stale.key()]);
    assert_eq!(table.flows, vec![flow(4001, "10.244.0.1")]);
}

#[test]
fn a_verdict_that_went_stale_during_the_walk_is_not_acted_on() {
    let t0 = Instant::now();
    let index = index(t0);
    let gate = gate();
    let mut planner = Planner::new(cfg().plan(), &all());
    planner.observe(&index.read().unwrap(), &flow(4000, "10.244.0.2"), t0);
    // The slice flips the backend back to ready before the walk ends.
    let _ = index
        .write()
        .unwrap()
        .apply_endpoint_slice(&slice(&[("10.244.0.1", true), ("10.244.0.2", true)]), t0);
    let report = planner.decide(&index.read().unwrap(), Some(&mut gate.lock().unwrap()), t0);
    assert!(report.stale.is_empty(), "{report:?}");
    assert_eq!(report.recovered, 1);
}

#[test]
fn the_budget_caps_deletions_and_counts_the_rest_by_reason() {
    let index = index(Instant::now());
    let gate = gate();
    let flows: Vec<Flow> = (0..5).map(|i| flow(4000 + i, "10.244.0.2")).collect();
    let report = plan(&index, &gate, PassConfig { budget: 3, ..cfg() }, &flows);
    assert_eq!(report.stale.len(), 3);
    assert_eq!(
        report.over_budget,
        vec![(Family::V4, Reason::EndpointNotServing, 2)]
    );
}

#[test]
fn repeated_entries_past_the_budget_are_counted_once() {
    let index = index(Instant::now());
    let gate = gate();
    // A walk that hands out every stale entry twice (the table changed during the dump).
    let mut flows = Vec::new();
    for i in 0..4 {
        flows.push(flow(4000 + i, "10.244.0.2"));
        flows.push(flow(4000 + i, "10.244.0.2"));
    }
    flows.push(flow(5000, "10.244.0.1"));
    let report = plan(&index, &gate, PassConfig { budget: 1, ..cfg() }, &flows);
    assert_eq!(report.stale.len(), 1);
    assert_eq!(
        report.over_budget,
        vec![(Family::V4, Reason::EndpointNotServing, 3)]
    );
    assert_eq!(report.scanned, 5);
    // The figures for the metrics: 5 flows to the frontend, 3 stale ones left behind.
    let figures = report
        .tally
        .resolve(&index.read().unwrap(), Instant::now(), 10);
    assert_eq!(figures.flows.iter().map(|f| f.flows).sum::<u64>(), 5);
    assert_eq!(figures.stale_left.iter().map(|f| f.flows).sum::<u64>(), 3);
}

#[test]
fn stale_flows_out_of_scope_are_left_and_counted() {
    let index = index(Instant::now());
    let gate = gate();
    let stale = flow(4000, "10.244.0.2");
    // A pass over the other service's frontend only.
    let scope = Dirty {
        all: false,
        frontends: vec![ctdiff::Frontend::Addr("10.96.0.20:8125".parse().unwrap())],
    };
    let mut table = FakeTable::new(vec![stale]);
    let report = run_pass(
        &mut table,
        &index,
        Some(&gate),
        &scope,
        &cfg(),
        Instant::now(),
    )
    .unwrap();
    assert!(report.stale.is_empty());
    assert!(table.delete_requests.is_empty());
    let figures = report
        .tally
        .resolve(&index.read().unwrap(), Instant::now(), 10);
    assert_eq!(figures.stale_left.iter().map(|f| f.flows).sum::<u64>(), 1);
    // The same pass scoped to the flow's own frontend deletes it.
    let scope = Dirty {
        all: false,
        frontends: vec![ctdiff::Frontend::Addr("10.96.0.10:53".parse().unwrap())],
    };
    let report = run_pass(
        &mut table,
        &index,
        Some(&gate),
        &scope,
        &cfg(),
        Instant::now(),
    )
    .unwrap();
    assert_eq!(report.deleted, 1);
}

#[test]
fn a_dry_run_reports_and_deletes_nothing() {
    let index = index(Instant::now());
    let gate = gate();
    let mut table = FakeTable::new(vec![flow(4000, "10.244.0.2")]);
    let cfg = PassConfig {
        dry_run: true,
        ..cfg()
    };
    let report = run_pass(
        &mut table,
        &index,
        Some(&gate),
        &all(),
        &cfg,
        Instant::now(),
    )
    .unwrap();
    assert_eq!((report.stale.len(), report.deleted), (1, 0));
    assert!(table.delete_requests.is_empty());
    assert_eq!(table.flows.len(), 1);
}

#[test]
fn other_zones_and_other_protocols_are_not_judged() {
    let index = index(Instant::now());
    let gate = gate();
    let mut zoned = flow(4000, "10.244.0.2");
    zoned.zone = 7;
    let mut tcp = flow(4001, "10.244.0.2");
    tcp.orig.proto = ctnetlink::proto::TCP;
    tcp.reply.proto = ctnetlink::proto::TCP;
    let report = plan(&index, &gate, cfg(), &[zoned, tcp]);
    assert!(report.stale.is_empty());
    assert_eq!(report.scanned, 0);
}

#[test]
fn every_reason_a_pass_deletes_for() {
    let t0 = Instant::now();
    let index = index(t0);
    let gate = gate();
    let flows = [
        flow(4000, "10.244.0.2"),                          // not serving any more
        flow_to("10.96.0.10", 53, 4001, "10.96.0.10", 53), // never DNATed
        flow_to("10.96.0.20", 8125, 4002, "10.244.0.7", 8125), // a service without endpoints
    ];
    let report = plan(&index, &gate, cfg(), &flows);
    let mut reasons: Vec<Reason> = report.stale.iter().map(|s| s.reason).collect();
    reasons.sort_by_key(|r| r.as_str());
    let mut expected = vec![Reason::EndpointNotServing, Reason::NotDnated];
    expected.sort_by_key(|r| r.as_str());
    // A backend never seen behind a service with no endpoints waits for proof (Unseen).
    assert_eq!(reasons, expected, "{report:?}");
    assert_eq!(report.deferred, 1);
    // The service goes away: its flows are stale by deletion, proven by the Services watch.
    let _ = index.write().unwrap().delete_service(&other_service(), t0);
    // A bookmark a grace after the flow was first seen proves the Services view newer than it.
    let later = Instant::now() + Duration::from_secs(6);
    index
        .write()
        .unwrap()
        .knowledge_mut()
        .bookmarked(Kind::Services, later);
    let report = plan(&index, &gate, cfg(), &[flows[2]]);
    assert_eq!(report.stale.len(), 1, "{report:?}");
    assert_eq!(report.stale[0].reason, Reason::ServiceDeleted);
}

#[test]
fn the_gate_defers_never_seen_backends_and_holds_on_a_stale_view() {
    let t0 = Instant::now();
    let index = index(t0);
    let gate = gate();
    let report = plan(&index, &gate, cfg(), &[flow(4000, "10.244.0.9")]);
    assert!(report.stale.is_empty());
    assert_eq!(report.deferred, 1);
    assert_eq!(gate.lock().unwrap().len(), 1);
    // Nothing proves the view newer than the flow yet; a bookmark a grace later does.
    let later = Instant::now() + Duration::from_secs(6);
    let found = recheck_waiting(&index, &gate, later, 0);
    assert!(found.delete.is_empty());
    for kind in Kind::ALL {
        index
            .write()
            .unwrap()
            .knowledge_mut()
            .bookmarked(kind, later);
    }
    let found = recheck_waiting(&index, &gate, later, 0);
    assert_eq!(found.delete.len(), 1);
    // A failing watch holds even positive evidence.
    index
        .write()
        .unwrap()
        .knowledge_mut()
        .failed(Kind::EndpointSlices, later);
    let report = plan(&index, &gate, cfg(), &[flow(4001, "10.244.0.2")]);
    assert_eq!((report.stale.len(), report.held), (0, 1));
}

#[test]
fn a_scoped_walk_seeds_the_flow_cache_so_the_next_scoped_pass_is_a_lookup() {
    let index = index(Instant::now());
    let gate = gate();
    let stale = flow(4000, "10.244.0.2");
    let mut table = FakeTable::new(vec![flow(4001, "10.244.0.1"), stale]);
    let cache = Mutex::new(FlowCache::new(0));
    cache.lock().unwrap().following(); // events followed, nothing seeded yet (as after a loss)
    let mut walks = WalkChooser::default();
    let dns = Dirty::of([ctdiff::Frontend::Addr("10.96.0.10:53".parse().unwrap())]);
    let mut scoped = |table: &mut FakeTable| {
        let sources = Sources {
            cache: Some(&cache),
            walks: &mut walks,
        };
        run_pass_with(
            table,
            &index,
            Some(&gate),
            sources,
            &dns,
            &cfg(),
            Instant::now(),
        )
        .unwrap()
    };
    let first = scoped(&mut table);
    assert!(first.walked, "an untrusted cache cannot answer");
    assert_eq!(first.deleted, 1);
    assert!(cache.lock().unwrap().is_complete(), "the walk seeded it");
    // The deleted entry's DESTROY event; then the old rules re-create it.
    cache.lock().unwrap().destroyed(&stale);
    table.flows.push(stale);
    cache.lock().unwrap().created(&stale);
    let second = scoped(&mut table);
    assert!(!second.walked, "served by the cache");
    assert_eq!(table.walks, 1);
    assert_eq!(second.deleted, 1);
    assert_eq!(table.delete_requests, vec![stale.key(), stale.key()]);
}

#[test]
fn a_walk_does_not_fill_a_cache_no_event_keeps_current() {
    let index = index(Instant::now());
    let mut table = FakeTable::new(vec![flow(4001, "10.244.0.1")]);
    let cache = Mutex::new(FlowCache::new(0)); // no subscription
    let sources = Sources {
        cache: Some(&cache),
        walks: &mut WalkChooser::default(),
    };
    let report = run_pass_with(
        &mut table,
        &index,
        None,
        sources,
        &all(),
        &cfg(),
        Instant::now(),
    )
    .unwrap();
    assert!(report.walked);
    let cache = cache.lock().unwrap();
    assert!(cache.is_empty() && !cache.is_complete());
}
