//! Workloads shared by the benches that need a global allocator of their own (`router`,
//! `system_global`, `mimalloc_global`, `freelist_global`): the same code, measured under each
//! allocator. Binary trees, churn, and a request loop (a form body parsed into a map, in
//! the global allocator or in a bumpalo arena).

#![allow(dead_code)] // each bench binary uses its own subset

use std::collections::HashMap;
use std::hint::black_box;
use std::time::Duration;

use bumpalo::Bump;
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion};
use hashbrown::DefaultHashBuilder;

// ---- binary trees -------------------------------------------------------------------------

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

// ---- churn --------------------------------------------------------------------------------

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

/// Steps of the profiled churn: a million allocations and frees.
pub const PROFILE_CHURN_STEPS: usize = 1 << 20;

/// The criterion group the heap profilers are measured in on [`churn`] of
/// [`PROFILE_CHURN_STEPS`]: ten samples, since a profiled iteration takes seconds.
pub fn profile_churn_group(c: &mut Criterion) -> BenchmarkGroup<'_, WallTime> {
    let mut group = c.benchmark_group("profile_churn");
    group.sample_size(10);
    group
}

// ---- the request loop ---------------------------------------------------------------------

/// The criterion group every bench binary measures [`handle_request`] in, one request per
/// iteration: a request takes microseconds, so a short warm-up and measurement keep
/// `compare.py`'s run short.
pub fn request_loop_group(c: &mut Criterion) -> BenchmarkGroup<'_, WallTime> {
    let mut group = c.benchmark_group("request_loop");
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));
    group
}

/// The field names of the request body; each appears on several lines, so that most lines
/// add values to a key the map already holds.
const FIELDS: [&str; 20] = [
    "id", "user", "email", "tags", "item", "qty", "price", "note", "ref", "sort", "page", "filter",
    "lang", "tz", "opt", "color", "size", "city", "zip", "phone",
];

/// The body every request carries, generated once (the same bytes on every run): 61 form-like
/// lines `field=value,value,...` of 4104 bytes, 361 values of 4-15 lowercase letters and
/// digits under 19 of the 20 [`FIELDS`].
pub fn request_body() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) as usize
    };
    let mut body = String::new();
    while body.len() < 4096 {
        body.push_str(FIELDS[next() % FIELDS.len()]);
        body.push('=');
        for value in 0..1 + next() % 12 {
            if value > 0 {
                body.push(',');
            }
            for _ in 0..4 + next() % 12 {
                body.push(char::from(ALPHABET[next() % ALPHABET.len()]));
            }
        }
        body.push('\n');
    }
    body
}

/// The parsed form: each field with its values in the order they came.
///
/// The hasher is hashbrown's (foldhash), the same as the bumpalo peer's map, so that both
/// sides hash alike and differ only in where their memory comes from; `std`'s `HashMap` is
/// hashbrown's table.
pub type Form = HashMap<String, Vec<String>, DefaultHashBuilder>;

/// One request through the global allocator: parses `body` into a [`Form`] and answers with
/// a small figure read from it. For [`request_body`], 447 allocations (the 19 keys, the 361
/// values, 63 buffers of the value lists, 19 first ones and 44 growths, and 4 of the table),
/// all freed before it returns.
pub fn handle_request(body: &str) -> usize {
    let mut form = Form::default();
    for line in body.lines() {
        let Some((key, values)) = line.split_once('=') else {
            continue;
        };
        if let Some(list) = form.get_mut(key) {
            for value in values.split(',') {
                list.push(value.to_owned());
            }
        } else {
            let mut list = Vec::new();
            for value in values.split(',') {
                list.push(value.to_owned());
            }
            form.insert(key.to_owned(), list);
        }
    }
    let form = black_box(form);
    let ids = form
        .get("id")
        .map_or(0, |ids| ids.iter().map(String::len).sum());
    form.len() * 1000 + ids
}

/// The parsed form in a bumpalo arena: keys and values are `&str`s copied into the arena
/// (`Bump::alloc_str`, one allocation each, as a `String` is), the lists and the table are
/// allocated in it. The same hasher as [`Form`].
pub type BumpForm<'b> = hashbrown::HashMap<&'b str, BumpList<'b>, DefaultHashBuilder, &'b Bump>;

/// A field's values in a [`BumpForm`].
pub type BumpList<'b> = allocator_api2::vec::Vec<&'b str, &'b Bump>;

/// [`handle_request`] with every allocation in `bump`: the same parse, the same number of
/// allocations. Dropping the form frees the lists and the table into the arena, which takes
/// back only its last block; the caller resets the arena.
pub fn handle_request_in(bump: &Bump, body: &str) -> usize {
    let mut form = BumpForm::with_hasher_in(DefaultHashBuilder::default(), bump);
    for line in body.lines() {
        let Some((key, values)) = line.split_once('=') else {
            continue;
        };
        if let Some(list) = form.get_mut(key) {
            for value in values.split(',') {
                list.push(&*bump.alloc_str(value));
            }
        } else {
            let mut list = BumpList::new_in(bump);
            for value in values.split(',') {
                list.push(&*bump.alloc_str(value));
            }
            form.insert(&*bump.alloc_str(key), list);
        }
    }
    let form = black_box(form);
    let ids = form
        .get("id")
        .map_or(0, |ids| ids.iter().map(|id| id.len()).sum());
    form.len() * 1000 + ids
}
