//! The region seed's binarytree example: the benchmarks game's binary-trees program with
//! its allocations in two regions, a long-lived one for the tree that lives throughout and
//! a short-lived one for the many small trees, given back as the program goes. Prints the
//! classic lines, then each region's gauges.
//!
//! Run with `cargo run --release --example binarytree 21` (the depth; 16 by default).

use stratalloc::layers::{Batch, Check, Chunk, Ground, Stats};
use stratalloc::{Gauge, Region, Router, region};

#[global_allocator]
static ROUTER: Router = Router::new();

/// The seed's stack: `stats(chunk(batch(check(stats(ground))), 65536))`.
type Stack = Stats<Chunk<Batch<Check<Stats<Ground>>>, 65536>>;

fn stack() -> Stack {
    Stats::new(Chunk::new(Batch::new(Check::new(
        Stats::new(Ground::new()),
    ))))
}

struct Node {
    children: Option<(Box<Node>, Box<Node>)>,
}

fn bottom_up(depth: u32) -> Box<Node> {
    Box::new(Node {
        children: (depth > 0).then(|| (bottom_up(depth - 1), bottom_up(depth - 1))),
    })
}

fn check(node: &Node) -> u32 {
    1 + node
        .children
        .as_ref()
        .map_or(0, |(left, right)| check(left) + check(right))
}

fn main() {
    let depth: u32 = std::env::args()
        .nth(1)
        .and_then(|arg| arg.parse().ok())
        .unwrap_or(16);
    let min_depth = 4;
    let max_depth = depth.max(min_depth + 2);

    let short_lived = Region::new(stack());
    let long_lived_region = Region::new(stack());

    let stretch = max_depth + 1;
    let nodes = region::enter(&short_lived, || check(&bottom_up(stretch)));
    println!("stretch tree of depth {stretch}\t check: {nodes}");
    short_lived.give_back();

    let long_lived = region::enter(&long_lived_region, || bottom_up(max_depth));

    // Small trees share the short-lived region's chunks; its memory goes back whenever
    // about a megabyte of nodes has come and gone (every tree is dropped by then).
    let mut nodes_since_give_back = 0u64;
    for d in (min_depth..=max_depth).step_by(2) {
        let iterations = 1u32 << (max_depth - d + min_depth);
        let mut total = 0;
        for _ in 0..iterations {
            total += region::enter(&short_lived, || check(&bottom_up(d)));
            nodes_since_give_back += 1 << (d + 1);
            if nodes_since_give_back >= 1 << 15 {
                short_lived.give_back();
                nodes_since_give_back = 0;
            }
        }
        println!("{iterations}\t trees of depth {d}\t check: {total}");
    }
    println!(
        "long lived tree of depth {max_depth}\t check: {}",
        check(&long_lived)
    );
    drop(long_lived);

    println!();
    println!("short-lived region: {}", short_lived.gauge());
    println!("long-lived region:  {}", long_lived_region.gauge());
    // The bottom `Stats` of each stack counts what came from the system allocator.
    short_lived.with_layer(|stack| {
        println!(
            "short-lived pages:  {}",
            stack.inner().inner().inner().inner().gauge()
        )
    });
}
