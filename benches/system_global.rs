//! The system allocator as the global allocator: binary trees with `Box`, the request loop
//! and the churn workload, the reference for `router` and `mimalloc_global` (see
//! `benches/compare.py`).

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};

mod workloads;

fn benches(c: &mut Criterion) {
    let mut group = c.benchmark_group(format!("binary_trees_{}", workloads::DEPTH));
    group.sample_size(10);
    group.bench_function("system_box", |b| {
        b.iter(|| workloads::binary_trees(workloads::DEPTH, workloads::boxed_tree))
    });
    group.finish();
    let body = workloads::request_body();
    let mut group = workloads::request_loop_group(c);
    group.bench_function("system", |b| {
        b.iter(|| workloads::handle_request(black_box(&body)))
    });
    group.finish();
    let mut group = c.benchmark_group("churn");
    group.bench_function("system", |b| b.iter(|| workloads::churn(100_000)));
    group.finish();
}

criterion_group!(system, benches);
criterion_main!(system);
