//! Workloads shared by the benches that need a global allocator of their own (`router`,
//! `system_global`, `mimalloc_global`): the same code, measured under each allocator.

#![allow(dead_code)] // each bench binary uses its own subset

use std::hint::black_box;

/// A binary-trees node, allocated through the global allocator.
pub struct Node {
    children: Option<(Box<Node>, Box<Node>)>,
}

pub fn bottom_up(depth: u32) -> Box<Node> {
    Box::new(Node {
        children: (depth > 0).then(|| (bottom_up(depth - 1), bottom_up(depth - 1))),
    })
}

pub fn check(node: &Node) -> u32 {
    1 + node
        .children
        .as_ref()
        .map_or(0, |(left, right)| check(left) + check(right))
}

/// The depth the binary-trees benches run at.
pub const DEPTH: u32 = 18;

/// One run of the benchmarks game's binary-trees at `max_depth`: `short_lived(d)` builds,
/// checks and drops one tree of depth `d` (in whatever arena the caller chooses); the
/// long-lived tree goes through the global allocator.
pub fn binary_trees(max_depth: u32, mut short_lived: impl FnMut(u32) -> u32) -> u32 {
    let min_depth = 4;
    let mut total = short_lived(max_depth + 1);
    let long_lived = bottom_up(max_depth);
    for d in (min_depth..=max_depth).step_by(2) {
        for _ in 0..1u32 << (max_depth - d + min_depth) {
            total = total.wrapping_add(short_lived(d));
        }
    }
    total.wrapping_add(check(&long_lived))
}

/// A short-lived tree through the global allocator.
pub fn boxed_tree(depth: u32) -> u32 {
    check(&bottom_up(depth))
}

/// Allocation-heavy churn through the global allocator: vectors and strings of 16-512
/// bytes, 256 of them live, the oldest freed as each new one comes.
pub fn churn(steps: usize) -> usize {
    let mut window: std::collections::VecDeque<Vec<u8>> = std::collections::VecDeque::new();
    let mut total = 0;
    for i in 0..steps {
        if window.len() == 256 {
            total += window.pop_front().map_or(0, |v| v.len());
        }
        let size = 16 + (i * 37) % 497;
        let mut v = Vec::with_capacity(size);
        v.resize(size, i as u8);
        window.push_back(black_box(v));
    }
    total + window.len()
}
