//! The General preset against the allocators a program would pick instead, in one process:
//! the system allocator (glibc here) and mimalloc (the `mimalloc` crate), each called
//! through `GlobalAlloc` directly (none of them is this binary's global allocator).
//!
//! - `pair`: one 32-byte allocation freed at once, the fast path of every allocator;
//! - `churn`: a window of 1000 live blocks of 16-1000 bytes, the oldest freed as each new
//!   one is allocated;
//! - `cross_thread`: blocks allocated on one thread and freed on another;
//! - `random_sizes`: a window of 2048 live blocks of 8 bytes to 32 KiB (log-uniform: as
//!   many of 8-16 bytes as of 16-32 KiB), a random one freed as each new one is allocated,
//!   as `benches/preload/random_sizes.c` does in C.
//!
//! Each allocator is called through `&dyn GlobalAlloc`, an indirect call into its
//! `GlobalAlloc` methods, as a program's `__rust_alloc` calls the global allocator's: so
//! none gets its fast path inlined into the benchmark loop while another pays a call.
//!
//! Run with `cargo bench --bench general`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::VecDeque;
use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mimalloc::MiMalloc;
use stratalloc::presets::{General, general};

static GENERAL: General = general();

const STEPS: usize = 4096;
const LIVE: usize = 1000;

fn layout(i: usize) -> Layout {
    Layout::from_size_align(16 + (i * 37) % 985, 8).unwrap()
}

fn pair(a: &dyn GlobalAlloc) {
    let layout = Layout::from_size_align(32, 8).unwrap();
    for _ in 0..STEPS {
        // SAFETY: a non-zero layout; the block is written once and freed once.
        unsafe {
            let p = a.alloc(black_box(layout));
            p.write(1);
            a.dealloc(black_box(p), layout);
        }
    }
}

fn churn(a: &dyn GlobalAlloc, window: &mut VecDeque<(*mut u8, Layout)>, start: usize) {
    for i in start..start + STEPS {
        if window.len() == LIVE {
            let (p, layout) = window.pop_front().unwrap();
            // SAFETY: allocated below with `layout`, freed once.
            unsafe { a.dealloc(p, layout) };
        }
        let layout = layout(i);
        // SAFETY: a non-zero layout; the block holds at least 16 bytes.
        let p = unsafe { a.alloc(black_box(layout)) };
        // SAFETY: as above.
        unsafe { p.write(1) };
        window.push_back((p, layout));
    }
}

fn measure_churn(b: &mut criterion::Bencher<'_>, a: &dyn GlobalAlloc) {
    let mut window = VecDeque::with_capacity(LIVE);
    let mut start = 0;
    b.iter(|| {
        churn(a, &mut window, start);
        start += STEPS;
    });
    for (p, layout) in window.drain(..) {
        // SAFETY: live blocks of `a`.
        unsafe { a.dealloc(p, layout) };
    }
}

/// The window of `random_sizes`.
const SLOTS: usize = 2048;

/// One step of xorshift64.
fn next(rng: &mut u64) -> u64 {
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    *rng
}

/// `STEPS` steps of random sizes: each frees a random slot's block (if any) and allocates
/// one of 8 bytes to 32 KiB in its place, writing its first and last byte.
fn random_sizes(a: &dyn GlobalAlloc, slots: &mut [(*mut u8, Layout)], rng: &mut u64) {
    for _ in 0..STEPS {
        let r = next(rng);
        let slot = &mut slots[r as usize % SLOTS];
        if !slot.0.is_null() {
            // SAFETY: allocated below with this layout, freed once.
            unsafe { a.dealloc(slot.0, slot.1) };
        }
        let shift = 3 + (r >> 16) % 12;
        let size = (1 << shift) + (r >> 24) as usize % (1 << shift);
        let layout = Layout::from_size_align(size, 8).unwrap();
        // SAFETY: a non-zero layout; the block holds `size` bytes.
        let p = unsafe { a.alloc(black_box(layout)) };
        // SAFETY: as above.
        unsafe {
            p.write(1);
            p.add(size - 1).write(1);
        }
        *slot = (p, layout);
    }
}

fn measure_random_sizes(b: &mut criterion::Bencher<'_>, a: &dyn GlobalAlloc) {
    let mut slots = vec![(std::ptr::null_mut(), Layout::new::<u8>()); SLOTS];
    let mut rng = 0x2545_F491_4F6C_DD1D;
    b.iter(|| random_sizes(a, &mut slots, &mut rng));
    for (p, layout) in slots {
        if !p.is_null() {
            // SAFETY: live blocks of `a`.
            unsafe { a.dealloc(p, layout) };
        }
    }
}

/// Allocates `STEPS` blocks here and frees them on a helper thread, which hands the
/// addresses back when done.
fn cross_thread(a: &'static (dyn GlobalAlloc + Sync)) {
    let layout = Layout::from_size_align(64, 8).unwrap();
    let blocks: Vec<usize> = (0..STEPS)
        // SAFETY: a non-zero layout.
        .map(|_| unsafe { a.alloc(layout) }.expose_provenance())
        .collect();
    std::thread::scope(|s| {
        s.spawn(|| {
            for &p in &blocks {
                // SAFETY: live blocks of `a`, freed once.
                unsafe { a.dealloc(std::ptr::with_exposed_provenance_mut(p), layout) };
            }
        });
    });
}

fn general_vs_peers(c: &mut Criterion) {
    let mut group = c.benchmark_group("pair");
    group.throughput(Throughput::Elements(STEPS as u64));
    group.bench_function("general", |b| b.iter(|| pair(&GENERAL)));
    group.bench_function("mimalloc", |b| b.iter(|| pair(&MiMalloc)));
    group.bench_function("system", |b| b.iter(|| pair(&System)));
    group.finish();

    let mut group = c.benchmark_group("churn");
    group.throughput(Throughput::Elements(STEPS as u64));
    group.bench_function("general", |b| measure_churn(b, &GENERAL));
    group.bench_function("mimalloc", |b| measure_churn(b, &MiMalloc));
    group.bench_function("system", |b| measure_churn(b, &System));
    group.finish();

    static MI: MiMalloc = MiMalloc;
    let mut group = c.benchmark_group("cross_thread");
    group.throughput(Throughput::Elements(STEPS as u64));
    group.bench_function("general", |b| b.iter(|| cross_thread(&GENERAL)));
    group.bench_function("mimalloc", |b| b.iter(|| cross_thread(&MI)));
    group.bench_function("system", |b| b.iter(|| cross_thread(&System)));
    group.finish();

    let mut group = c.benchmark_group("random_sizes");
    group.throughput(Throughput::Elements(STEPS as u64));
    group.bench_function("general", |b| measure_random_sizes(b, &GENERAL));
    group.bench_function("mimalloc", |b| measure_random_sizes(b, &MiMalloc));
    group.bench_function("system", |b| measure_random_sizes(b, &System));
    group.finish();
}

criterion_group!(benches, general_vs_peers);
criterion_main!(benches);
