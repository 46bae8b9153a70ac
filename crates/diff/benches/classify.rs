//! Criterion benchmark of `Index::classify` against 10,000 services × 10 endpoints.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests, benches and examples may panic

#[path = "../examples/support/workload.rs"]
mod workload;

use std::hint::black_box;
use std::time::Instant;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn classify(c: &mut Criterion) {
    let now = Instant::now();
    let (services, slices) = workload::objects(10_000, 10);
    let index = workload::index(&services, &slices, now);
    let flows = workload::flows(100_000, 10_000, 10);
    let mut group = c.benchmark_group("classify");
    group.throughput(Throughput::Elements(flows.len() as u64));
    group.bench_function("10k_services_x_10_endpoints_mixed_100k_flows", |b| {
        b.iter(|| {
            let mut stale = 0u32;
            for f in &flows {
                stale += u32::from(index.classify(black_box(f), now).is_stale());
            }
            black_box(stale)
        })
    });
    group.finish();
}

fn build(c: &mut Criterion) {
    let now = Instant::now();
    let (services, slices) = workload::objects(1_000, 10);
    c.bench_function("build_index_1k_services_x_10_endpoints", |b| {
        b.iter(|| black_box(workload::index(&services, &slices, now)))
    });
}

criterion_group!(benches, classify, build);
criterion_main!(benches);
