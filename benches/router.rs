//! The `Router` as the global allocator: pass-through cost with no region entered, binary
//! trees with one region per tree (against a bumpalo arena per tree, in the same run), and
//! the cost of a free's ownership look-up. `benches/compare.py` sets these against the
//! `system_global` and `mimalloc_global` binaries.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use stratalloc::layers::{Chunk, Ground};
use stratalloc::{Region, Router, region};

mod workloads;

#[global_allocator]
static ROUTER: Router = Router::new();

/// The stack each short-lived tree gets: bump allocation in 64 KiB chunks of pages from
/// the system allocator.
type TreeStack = Chunk<Ground, 65536>;

struct BumpNode<'a> {
    children: Option<(&'a BumpNode<'a>, &'a BumpNode<'a>)>,
}

fn bump_tree<'a>(bump: &'a bumpalo::Bump, depth: u32) -> &'a BumpNode<'a> {
    bump.alloc(BumpNode {
        children: (depth > 0).then(|| (bump_tree(bump, depth - 1), bump_tree(bump, depth - 1))),
    })
}

fn bump_check(node: &BumpNode<'_>) -> u32 {
    1 + node
        .children
        .map_or(0, |(left, right)| bump_check(left) + bump_check(right))
}

fn binary_trees(c: &mut Criterion) {
    let mut group = c.benchmark_group(format!("binary_trees_{}", workloads::DEPTH));
    group.sample_size(10);
    group.bench_function("router_no_region", |b| {
        b.iter(|| workloads::binary_trees(workloads::DEPTH, workloads::boxed_tree))
    });
    group.bench_function("region_per_tree", |b| {
        b.iter(|| {
            workloads::binary_trees(workloads::DEPTH, |depth| {
                let arena = Region::new(TreeStack::new(Ground::new()));
                region::enter(&arena, || workloads::boxed_tree(depth))
            })
        })
    });
    group.bench_function("bumpalo_per_tree", |b| {
        b.iter(|| {
            workloads::binary_trees(workloads::DEPTH, |depth| {
                let bump = bumpalo::Bump::new();
                bump_check(bump_tree(&bump, depth))
            })
        })
    });
    group.finish();
}

fn churn(c: &mut Criterion) {
    let mut group = c.benchmark_group("churn");
    group.bench_function("router_no_region", |b| b.iter(|| workloads::churn(100_000)));
    group.finish();
}

fn free_lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("free_lookup");
    let system_block = Box::new([0u8; 64]);
    let arena = Region::new(TreeStack::new(Ground::new()));
    let region_block = region::enter(&arena, || Box::new([0u8; 64]));
    group.bench_function("system_block", |b| {
        b.iter(|| region::served_by_a_region(black_box(system_block.as_ptr())))
    });
    group.bench_function("region_block", |b| {
        b.iter(|| region::served_by_a_region(black_box(region_block.as_ptr())))
    });
    group.finish();
    drop(region_block);
}

criterion_group!(router, binary_trees, churn, free_lookup);
criterion_main!(router);
