//! Upstream #135323 / #135511: classification must be O(1) and allocation-free. A counting
//! global allocator (this test binary only) proves that no classification allocates.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests, benches and examples may panic

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every method forwards to the system allocator unchanged; the counting touches no
// allocation.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn bug_135323_classify_allocates_nothing() {
    let now = Instant::now();
    let mut services = Vec::new();
    let mut slices = Vec::new();
    for i in 0..500u32 {
        let ip = format!("10.96.{}.{}", i / 200, i % 200 + 1);
        services.push(with_external_ips(
            mk_service(
                "ns",
                &format!("s{i}"),
                &[&ip],
                vec![udp_np("p", 53, 30000 + i as i32)],
            ),
            &[&format!("203.0.{}.{}", i / 200, i % 200 + 1)],
        ));
        let endpoints = (0..5)
            .map(|e| ep(&format!("10.244.{}.{}", i % 200, e + 1)))
            .collect();
        slices.push(mk_slice(
            "ns",
            &format!("s{i}-x"),
            &format!("s{i}"),
            &[("p", 8053)],
            endpoints,
        ));
    }
    let pod = mk_pod("ns", "hp", NODE, &["10.244.250.1"], &[(None, 5060, 5060)]);
    let mut index = mk_index(
        &services,
        &slices,
        std::slice::from_ref(&pod),
        &["192.168.1.10"],
        now,
    );
    let _ = index.delete(&services[0], now);
    let flows: Vec<_> = (0..500u32)
        .flat_map(|i| {
            let vip = format!("10.96.{}.{}:53", i / 200, i % 200 + 1);
            [
                flow(&vip, &format!("10.244.{}.1:8053", i % 200)),
                flow(&vip, "10.9.9.9:8053"),
                flow(&vip, &vip),
                flow(&format!("192.168.1.10:{}", 30000 + i), "10.9.9.9:1"),
                flow(&format!("192.168.1.99:{}", 30000 + i), "10.9.9.9:1"),
                flow("192.168.1.10:5060", "10.244.250.1:5060"),
                flow("10.1.1.1:9", "10.1.1.1:9"),
            ]
        })
        .collect();
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    let mut stale = 0usize;
    for f in &flows {
        stale += usize::from(index.classify(f, now + Duration::from_secs(1)).is_stale());
    }
    let after = ALLOCATIONS.load(Ordering::Relaxed);
    assert_eq!(after - before, 0, "classify allocated");
    assert!(stale > 1000, "the flows exercise stale paths too: {stale}");
}
