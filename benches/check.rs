//! What watching costs: `Stats<Check<X>>` against `X` alone, on a steady churn of
//! allocations (a window of live blocks; each step frees the oldest and allocates a new one);
//! and one `check_leaks` scope's churn over its stack, `LeakCheckStack`, against the bump
//! arena it used before (`Check<Chunk<Mmap, 65536>>`, which reuses no freed block); and
//! the use-after-free and overrun catchers, `Quarantine<Guard<SizeClasses<Mmap>>>`, against
//! `SizeClasses<Mmap>` alone, on the same churn with every block written whole (as a
//! program writes its data); and call sites: `LeakCheckStack` recording the call stack of
//! every allocation, against the same stack not recording and against its heap unchecked,
//! on a churn of a million steps, and the heap profiler's stack (`ProfileStack`) on it. `benches/check_rss.rs` measures the memory side.
//!
//! Run with `cargo bench --bench check`.

use std::alloc::Layout;
use std::collections::VecDeque;
use std::hint::black_box;
use std::ptr::NonNull;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use stratalloc::Layer;
use stratalloc::layers::{
    Check, Chunk, Coalesce, Guard, Mmap, Quarantine, SizeClasses, Stats, System,
};
use stratalloc::region::{LeakCheckStack, ProfileStack};

const STEPS: usize = 4096;
const LIVE: usize = 1000;
/// Steps of one checking scope: enough that the bump arena maps about 9 MiB.
const SCOPE_STEPS: usize = 16 * STEPS;

fn layout(i: usize) -> Layout {
    Layout::from_size_align(16 + (i * 37) % 240, 8).unwrap()
}

/// Runs `steps` steps of churn over `layer`, keeping `LIVE` blocks live; each new block
/// gets its first byte written, or all of them with `WHOLE`.
fn churn<L: Layer, const WHOLE: bool>(
    layer: &mut L,
    window: &mut VecDeque<(NonNull<u8>, Layout)>,
    start: usize,
    steps: usize,
) {
    for i in start..start + steps {
        if window.len() == LIVE {
            let (block, layout) = window.pop_front().unwrap();
            // SAFETY: got from `layer` with `layout`, put once.
            unsafe { layer.put(block, layout) };
        }
        let layout = layout(i);
        let block = layer.get(black_box(layout)).unwrap();
        // SAFETY: the block holds `layout.size()` bytes, at least 16.
        unsafe {
            block
                .as_ptr()
                .write_bytes(1, if WHOLE { layout.size() } else { 1 })
        };
        window.push_back((block, layout));
    }
}

/// Measures churn over the layer `make` builds, in steady state: the window of live blocks
/// carries over from one iteration to the next and is put back at the end.
fn measure_churn<L: Layer, const WHOLE: bool>(
    b: &mut criterion::Bencher<'_>,
    make: impl FnOnce() -> L,
) {
    measure_churn_of::<L, WHOLE>(b, make, STEPS);
}

/// [`measure_churn`] with `steps` steps an iteration.
fn measure_churn_of<L: Layer, const WHOLE: bool>(
    b: &mut criterion::Bencher<'_>,
    make: impl FnOnce() -> L,
    steps: usize,
) {
    let mut layer = make();
    let mut window = VecDeque::with_capacity(LIVE);
    let mut start = 0;
    b.iter(|| {
        churn::<L, WHOLE>(&mut layer, &mut window, start, steps);
        start += steps;
    });
    for (block, layout) in window.drain(..) {
        // SAFETY: live blocks of `layer`.
        unsafe { layer.put(block, layout) };
    }
}

fn bench_pair<L: Layer>(c: &mut Criterion, name: &str, make: fn() -> L) {
    let mut group = c.benchmark_group(format!("churn_{name}"));
    group.throughput(Throughput::Elements(STEPS as u64));
    group.bench_function("alone", |b| measure_churn::<_, false>(b, make));
    group.bench_function("stats_check", |b| {
        measure_churn::<_, false>(b, || Stats::new(Check::new(make())))
    });
    group.finish();
}

/// The debugging stack against the allocator it watches (target: at most 2.5x).
fn catching_cost(c: &mut Criterion) {
    let mut group = c.benchmark_group("churn_quarantine_guard");
    group.throughput(Throughput::Elements(STEPS as u64));
    group.bench_function("size_classes", |b| {
        measure_churn::<_, true>(b, || SizeClasses::<_>::new(Mmap::new()))
    });
    // Each debugging layer alone, to show which costs what.
    group.bench_function("guard_size_classes", |b| {
        measure_churn::<_, true>(b, || {
            Guard::<_, 16>::new(SizeClasses::<_>::new(Mmap::new()))
        })
    });
    group.bench_function("quarantine_size_classes", |b| {
        measure_churn::<_, true>(b, || {
            Quarantine::<_, { 1 << 20 }>::new(SizeClasses::<_>::new(Mmap::new()))
        })
    });
    group.bench_function("quarantine_guard_size_classes", |b| {
        measure_churn::<_, true>(b, || {
            Quarantine::<_, { 1 << 20 }>::new(Guard::<_, 16>::new(SizeClasses::<_>::new(
                Mmap::new(),
            )))
        })
    });
    group.finish();
}

fn watching_cost(c: &mut Criterion) {
    // The system allocator: the usual thing to leak-check (a test's own allocations).
    bench_pair(c, "system", System::new);
}

/// Measures one checking scope over the stack `make` builds: a fresh stack, `SCOPE_STEPS`
/// steps of churn, every block put back, the stack dropped (its memory unmapped).
fn measure_scope<L: Layer>(b: &mut criterion::Bencher<'_>, make: fn() -> L) {
    let mut window = VecDeque::with_capacity(LIVE);
    b.iter(|| {
        let mut layer = make();
        churn::<L, false>(&mut layer, &mut window, 0, SCOPE_STEPS);
        for (block, layout) in window.drain(..) {
            // SAFETY: live blocks of `layer`.
            unsafe { layer.put(block, layout) };
        }
    });
}

fn leak_check_scope(c: &mut Criterion) {
    let mut group = c.benchmark_group("leak_check_scope");
    group.throughput(Throughput::Elements(SCOPE_STEPS as u64));
    group.bench_function("leak_check_stack", |b| {
        measure_scope(b, <LeakCheckStack as Layer>::init)
    });
    group.bench_function("bump_arena_before", |b| {
        measure_scope(b, || Check::new(Chunk::<Mmap, 65536>::new(Mmap::new())))
    });
    group.finish();
}

/// Steps of the call-site churn: a million.
const CALL_SITE_STEPS: usize = 1 << 20;

/// What call sites cost `check_leaks`'s stack (targets: at most 3x the stack without them,
/// which is at most 1.3x its heap unchecked).
fn call_site_cost(c: &mut Criterion) {
    let mut group = c.benchmark_group("call_sites");
    group.throughput(Throughput::Elements(CALL_SITE_STEPS as u64));
    group.sample_size(10);
    group.bench_function("unchecked_heap", |b| {
        measure_churn_of::<_, false>(b, Coalesce::<Mmap, { 1 << 20 }>::init, CALL_SITE_STEPS)
    });
    group.bench_function("leak_check_stack", |b| {
        measure_churn_of::<_, false>(b, LeakCheckStack::init, CALL_SITE_STEPS)
    });
    group.bench_function("leak_check_stack_with_call_sites", |b| {
        let make = || {
            let mut stack = LeakCheckStack::init();
            stack.record_call_sites(true);
            stack
        };
        measure_churn_of::<_, false>(b, make, CALL_SITE_STEPS)
    });
    // The heap profiler's stack over the same heap (target: at most 5x the heap alone).
    group.bench_function("profile_stack", |b| {
        measure_churn_of::<_, false>(b, ProfileStack::init, CALL_SITE_STEPS)
    });
    group.finish();
}

criterion_group!(
    benches,
    watching_cost,
    leak_check_scope,
    catching_cost,
    call_site_cost
);
criterion_main!(benches);
