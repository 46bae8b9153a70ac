//! The flow cache on a real kernel table (root): seed → events → change → delete without a
//! walk → lost events → the next scoped pass walks and re-seeds → a full pass re-seeds.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests, benches and examples may panic

mod common;

use common::{flow, service, slice};
use conntrack_reconciler::pass::{
    FlowCache, FlowGate, PassConfig, PassReport, Sources, WalkChooser, run_pass_with,
};
use ctdiff::{Dirty, Frontend, GateConfig, Index, IndexConfig, Kind};
use ctnetlink::testing::{TestNetns, root_or_skip};
use ctnetlink::{Capabilities, Conntrack, DumpFilter, Event, EventKinds, EventOptions, NewFlow};
use futures::StreamExt;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

const VIP: (&str, u16) = ("10.96.0.10", 53);
const KEPT: (&str, u16) = ("10.244.1.1", 5353);
const GONE: (&str, u16) = ("10.244.1.2", 5353);

fn index_with(ready: &[&str]) -> RwLock<Index> {
    let t0 = Instant::now();
    let mut index = Index::new(IndexConfig::new("n1"));
    let _ = index.reset_services([&service("dns", VIP.0, VIP.1, 5353)], t0);
    let _ = index.reset_endpoint_slices([&slice("dns", 5353, ready)], t0);
    let _ = index.reset_pods([], t0);
    for kind in Kind::ALL {
        index.knowledge_mut().relist_started(kind, t0);
        index.knowledge_mut().listed(kind, t0, t0);
    }
    RwLock::new(index)
}

fn flows(first_port: u16, n: u16, backend: (&str, u16)) -> Vec<NewFlow> {
    (first_port..first_port + n)
        .map(|p| flow(p, VIP, backend))
        .collect()
}

fn udp_count(ct: &mut Conntrack) -> usize {
    let mut n = 0;
    ct.dump(
        &DumpFilter::all_families_proto(ctnetlink::proto::UDP),
        |_| n += 1,
    )
    .unwrap();
    n
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One pass of the agent's kind: with the cache, a fresh walk chooser.
fn pass(
    ct: &mut Conntrack,
    index: &RwLock<Index>,
    gate: Option<&Mutex<FlowGate>>,
    cache: Option<&Mutex<FlowCache>>,
    scope: &Dirty,
    cfg: &PassConfig,
    now: Instant,
) -> Result<PassReport, ctnetlink::Error> {
    let sources = Sources {
        cache,
        walks: &mut WalkChooser::default(),
    };
    run_pass_with(ct, index, gate, sources, scope, cfg, now)
}

#[test]
fn seed_events_change_delete_lost_events_reseed() {
    if !root_or_skip("seed_events_change_delete_lost_events_reseed") {
        return;
    }
    let ns = TestNetns::new("ctr-cache").unwrap();
    let caps = Capabilities::from_running_kernel();
    let mut ct = Conntrack::open(Some(&ns.path()), caps).unwrap();

    // The event path: NEW and DESTROY into the cache, losses reported.
    let cache = Arc::new(Mutex::new(FlowCache::new(0)));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let options = EventOptions {
        kinds: EventKinds::ALL,
        receive_buffer: 64 * 1024,
        ..EventOptions::new_only(&[ctnetlink::proto::UDP])
    };
    let mut events = {
        let _guard = rt.enter();
        ctnetlink::events_with(Some(&ns.path()), &options).unwrap()
    };
    let paused = Arc::new(Mutex::new(false));
    cache.lock().unwrap().following();
    let (c, p) = (cache.clone(), paused.clone());
    let applier = std::thread::spawn(move || {
        rt.block_on(async move {
            loop {
                if *p.lock().unwrap() {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
                let next = tokio::time::timeout(Duration::from_millis(50), events.next()).await;
                match next {
                    Ok(Some(Ok(Event::New(f)))) => c.lock().unwrap().created(&f),
                    Ok(Some(Ok(Event::Destroy(f)))) => c.lock().unwrap().destroyed(&f),
                    Ok(Some(Ok(Event::Lost))) => c.lock().unwrap().lost(),
                    Ok(Some(Err(_))) | Ok(None) => {
                        c.lock().unwrap().lost();
                        return;
                    }
                    Err(_) => {
                        if Arc::strong_count(&c) == 1 {
                            return;
                        }
                    }
                }
            }
        })
    });

    // Created once a listener exists: with the kernel's default `nf_conntrack_events=2`, only
    // entries created while someone listens carry the event extension and send DESTROY events
    // (older ones stay in the cache as harmless extras until a full pass re-seeds it).
    ct.create(&flows(1000, 50, KEPT)).unwrap();
    ct.create(&flows(2000, 50, GONE)).unwrap();
    let index = index_with(&[KEPT.0, GONE.0]);
    let gate = Mutex::new(FlowGate::new(GateConfig::default()));
    let cfg = PassConfig {
        family: None,
        dry_run: false,
        budget: 0,
        zone: 0,
    };
    // 1. A full pass seeds the cache: nothing is stale yet.
    let report = pass(
        &mut ct,
        &index,
        Some(&gate),
        Some(&cache),
        &Dirty::all(),
        &cfg,
        Instant::now(),
    )
    .unwrap();
    assert!(report.walked && report.stale.is_empty(), "{report:?}");
    assert!(cache.lock().unwrap().is_complete());
    assert_eq!(cache.lock().unwrap().len(), 100);

    // 2. New flows reach the cache by NEW events; a deleted one leaves by DESTROY.
    ct.create(&flows(3000, 30, GONE)).unwrap();
    wait_until("NEW events", || cache.lock().unwrap().len() == 130);
    let victim = {
        let mut one = None;
        ct.dump(
            &DumpFilter::all_families_proto(ctnetlink::proto::UDP),
            |f| {
                if f.orig.sport == 1000 {
                    one = Some(f.key());
                }
            },
        )
        .unwrap();
        one.unwrap()
    };
    assert_eq!(ct.delete([victim]).unwrap().deleted, 1);
    wait_until("a DESTROY event", || cache.lock().unwrap().len() == 129);

    // 3. The backend goes: a scoped pass finds its flows in the cache and deletes exactly
    //    them, without a walk.
    let _ = index
        .write()
        .unwrap()
        .apply_endpoint_slice(&slice("dns", 5353, &[KEPT.0]), Instant::now());
    let dumps_before = ct.dump_requests();
    let scope = Dirty::of([Frontend::Addr(
        format!("{}:{}", VIP.0, VIP.1).parse().unwrap(),
    )]);
    let report = pass(
        &mut ct,
        &index,
        Some(&gate),
        Some(&cache),
        &scope,
        &cfg,
        Instant::now(),
    )
    .unwrap();
    assert_eq!(
        ct.dump_requests(),
        dumps_before,
        "a scoped pass must not walk the table"
    );
    assert!(!report.walked);
    assert_eq!((report.stale.len(), report.deleted), (80, 80), "{report:?}");
    assert_eq!(
        udp_count(&mut ct),
        49,
        "every flow to the kept backend stays"
    );
    wait_until("DESTROY events of the deleted flows", || {
        cache.lock().unwrap().len() == 49
    });

    // 4. Events are lost (the applier stops reading; a small buffer overflows): the cache is
    //    no longer trusted, and a scoped pass walks the table again.
    *paused.lock().unwrap() = true;
    ct.create(&flows(10_000, 5_000, GONE)).unwrap();
    *paused.lock().unwrap() = false;
    wait_until("the loss report", || !cache.lock().unwrap().is_complete());
    // A dry run first: it walks (the cache cannot answer) and, reading the whole table,
    // re-seeds the cache, without deletes whose DESTROY burst would overflow the small buffer
    // again.
    let dry = PassConfig {
        dry_run: true,
        ..cfg
    };
    let report = pass(
        &mut ct,
        &index,
        Some(&gate),
        Some(&cache),
        &scope,
        &dry,
        Instant::now(),
    )
    .unwrap();
    assert!(report.walked, "an incomplete cache must not serve a pass");
    assert_eq!((report.stale.len(), report.deleted), (5_000, 0));
    wait_until("the cache re-seeded by the scoped walk", || {
        let c = cache.lock().unwrap();
        c.is_complete() && c.len() == 5_049
    });
    // So the deleting pass is a lookup again.
    let report = pass(
        &mut ct,
        &index,
        Some(&gate),
        Some(&cache),
        &scope,
        &cfg,
        Instant::now(),
    )
    .unwrap();
    assert!(!report.walked, "the re-seeded cache serves the pass");
    assert_eq!(report.deleted, 5_000);
    assert_eq!(udp_count(&mut ct), 49);

    // 5. The subscription goes on after a loss; a full pass re-seeds the cache.
    let report = pass(
        &mut ct,
        &index,
        Some(&gate),
        Some(&cache),
        &Dirty::all(),
        &cfg,
        Instant::now(),
    )
    .unwrap();
    assert!(report.walked && report.stale.is_empty());
    wait_until("the re-seeded cache", || {
        let c = cache.lock().unwrap();
        c.is_complete() && c.len() == 49
    });
    drop(cache);
    applier.join().unwrap();
}
