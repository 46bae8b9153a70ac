//! Classification throughput and index size: 10,000 services × 10 endpoints, 1,000,000 mixed
//! flows on one core. `--json` prints one JSON line (for `cargo xtask bench`).
//!
//! Run: `cargo run --release -p ctdiff --example classify-bench [-- --json] [--services N]
//! [--endpoints M] [--flows F]`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests, benches and examples may panic

#[path = "support/workload.rs"]
mod workload;

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use ctdiff::Verdict;

/// Counts live heap bytes so the index's size can be measured exactly.
struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every method forwards to the system allocator unchanged; the counting touches no
// allocation.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

struct Args {
    json: bool,
    services: u32,
    endpoints: u32,
    flows: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        json: false,
        services: 10_000,
        endpoints: 10,
        flows: 1_000_000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| -> Result<u64, String> {
            let text = it.next().ok_or(format!("{name} needs a value"))?;
            text.parse().map_err(|e| format!("{name} {text}: {e}"))
        };
        match arg.as_str() {
            "--json" => args.json = true,
            "--services" => args.services = value("--services")?.clamp(1, 1 << 20) as u32,
            "--endpoints" => args.endpoints = value("--endpoints")?.clamp(1, 1000) as u32,
            "--flows" => args.flows = value("--flows")?.max(1) as usize,
            "--bench" => {} // passed by `cargo bench` to every target
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(args)
}

fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("classify-bench: {e}");
            std::process::exit(2);
        }
    };
    let now = Instant::now();
    let (services, slices) = workload::objects(args.services, args.endpoints);
    let flows = workload::flows(args.flows, args.services, args.endpoints);

    let before = LIVE_BYTES.load(Ordering::Relaxed);
    let build_start = Instant::now();
    let index = workload::index(&services, &slices, now);
    let build = build_start.elapsed();
    let index_bytes = (LIVE_BYTES.load(Ordering::Relaxed) - before).max(0) as u64;
    let endpoints = u64::from(args.services) * u64::from(args.endpoints);
    let bytes_per_endpoint = index_bytes as f64 / endpoints as f64;

    let (mut keep, mut stale, mut unrelated) = (0u64, 0u64, 0u64);
    for f in &flows {
        match index.classify(f, now) {
            Verdict::Keep => keep += 1,
            Verdict::Stale(_) => stale += 1,
            Verdict::Unrelated => unrelated += 1,
        }
    }
    // Best of five timed rounds over the whole flow set, on this thread only.
    let mut best = Duration::MAX;
    for _ in 0..5 {
        let start = Instant::now();
        let mut stale_seen = 0u64;
        for f in &flows {
            stale_seen += u64::from(black_box(index.classify(black_box(f), now)).is_stale());
        }
        black_box(stale_seen);
        best = best.min(start.elapsed());
    }
    let flows_per_sec = args.flows as f64 / best.as_secs_f64();
    let ns_per_flow = best.as_nanos() as f64 / args.flows as f64;

    if args.json {
        println!(
            "{{\"bench\":\"ctdiff_classify\",\"services\":{},\"endpoints\":{},\"flows\":{},\"flows_per_sec\":{:.0},\"ns_per_flow\":{:.2},\"index_bytes\":{},\"bytes_per_endpoint\":{:.1},\"build_ms\":{:.1},\"keep\":{},\"stale\":{},\"unrelated\":{},\"target_flows_per_sec\":10000000,\"target_bytes_per_endpoint\":200}}",
            args.services,
            endpoints,
            args.flows,
            flows_per_sec,
            ns_per_flow,
            index_bytes,
            bytes_per_endpoint,
            build.as_secs_f64() * 1e3,
            keep,
            stale,
            unrelated
        );
        return;
    }
    let verdict = |ok: bool| if ok { "ok" } else { "MISSED" };
    println!("ctdiff classify benchmark (one core)");
    println!(
        "  services × endpoints   {} × {} = {}",
        args.services, args.endpoints, endpoints
    );
    println!(
        "  flows                  {} (keep {keep}, stale {stale}, unrelated {unrelated})",
        args.flows
    );
    println!(
        "  index build            {:.1} ms",
        build.as_secs_f64() * 1e3
    );
    println!(
        "  throughput             {:.1} M flows/s ({ns_per_flow:.1} ns/flow)   target >= 10 M/s: {}",
        flows_per_sec / 1e6,
        verdict(flows_per_sec >= 10e6)
    );
    println!(
        "  index size             {:.1} MiB, {bytes_per_endpoint:.1} bytes/endpoint   target <= 200: {}",
        index_bytes as f64 / (1 << 20) as f64,
        verdict(bytes_per_endpoint <= 200.0)
    );
}
