//! The `Router` as the global allocator: pass-through cost with no region entered, binary
//! trees with one region per tree and the request loop with a region per request or one
//! region reset after each (each against bumpalo, in the same run), and the cost of a free's
//! ownership look-up, and the heap profiler on a churn. `benches/compare.py` sets these against the `system_global`,
//! `mimalloc_global` and `freelist_global` binaries.

use std::hint::black_box;

use bumpalo::Bump;
use criterion::{Criterion, criterion_group, criterion_main};
use stratalloc::{Region, Router, region};

mod workloads;

#[global_allocator]
static ROUTER: Router = Router::new();

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

/// A node of a tree of boxes in a bumpalo arena: like [`workloads::Node`], dropped node by
/// node with a `deallocate` call per node (bumpalo takes back only its last block). Each box
/// carries its arena reference, so a node is 32 bytes where a `workloads::Node` is 16.
struct BumpBoxNode<'a> {
    children: Option<(BumpBox<'a>, BumpBox<'a>)>,
}

type BumpBox<'a> = allocator_api2::boxed::Box<BumpBoxNode<'a>, &'a Bump>;

fn bump_box_tree(bump: &Bump, depth: u32) -> BumpBox<'_> {
    let children = (depth > 0).then(|| {
        (
            bump_box_tree(bump, depth - 1),
            bump_box_tree(bump, depth - 1),
        )
    });
    BumpBox::new_in(BumpBoxNode { children }, bump)
}

fn bump_box_check(node: &BumpBoxNode<'_>) -> u32 {
    1 + node.children.as_ref().map_or(0, |(left, right)| {
        bump_box_check(left) + bump_box_check(right)
    })
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
                let arena = Region::arena();
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
    group.bench_function("bumpalo_box_per_tree", |b| {
        b.iter(|| {
            workloads::binary_trees(workloads::DEPTH, |depth| {
                let bump = Bump::new();
                let tree = bump_box_tree(&bump, depth);
                let total = bump_box_check(&tree);
                drop(tree);
                total
            })
        })
    });
    group.finish();
}

/// The request loop, one request per iteration: through the router with no region, in a
/// region of the recommended stack made and dropped per request, in one such region reset
/// after each request, and in one bumpalo arena reset after each request.
fn request_loop(c: &mut Criterion) {
    let body = workloads::request_body();
    let body = body.as_str();
    let mut group = workloads::request_loop_group(c);
    group.bench_function("router_no_region", |b| {
        b.iter(|| workloads::handle_request(black_box(body)))
    });
    group.bench_function("region_per_request", |b| {
        b.iter(|| {
            let arena = Region::arena();
            let answer = region::enter(&arena, || workloads::handle_request(black_box(body)));
            drop(arena);
            answer
        })
    });
    group.bench_function("region_reset_per_request", |b| {
        let arena = Region::arena();
        b.iter(|| {
            let answer = region::enter(&arena, || workloads::handle_request(black_box(body)));
            assert!(arena.reset(), "nothing of a request outlives it");
            answer
        })
    });
    group.bench_function("bumpalo_reset_per_request", |b| {
        let mut bump = Bump::new();
        b.iter(|| {
            let answer = workloads::handle_request_in(&bump, black_box(body));
            bump.reset();
            answer
        })
    });
    group.finish();
}

fn churn(c: &mut Criterion) {
    let mut group = c.benchmark_group("churn");
    group.bench_function("router_no_region", |b| b.iter(|| workloads::churn(100_000)));
    group.finish();
}

/// The heap profiler on the churn: `region::profile` (the profile written in DHAT's
/// format, as `dhat` writes its file) against the same churn unprofiled; `dhat_global` runs
/// dhat on it.
fn profile_churn(c: &mut Criterion) {
    let mut group = workloads::profile_churn_group(c);
    group.bench_function("router_no_region", |b| {
        b.iter(|| workloads::churn(workloads::PROFILE_CHURN_STEPS))
    });
    group.bench_function("region_profile", |b| {
        b.iter(|| {
            let (total, profile) =
                region::profile(|| workloads::churn(workloads::PROFILE_CHURN_STEPS));
            profile.write_dhat(std::io::sink()).unwrap();
            total
        })
    });
    group.finish();
}

fn free_lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("free_lookup");
    let system_block = Box::new([0u8; 64]);
    let arena = Region::arena();
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

criterion_group!(
    router,
    binary_trees,
    request_loop,
    churn,
    profile_churn,
    free_lookup
);
criterion_main!(router);
