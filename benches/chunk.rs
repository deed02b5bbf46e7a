//! Chunk's hot path against bumpalo and the system allocator: rounds of small allocations
//! (16-64 bytes), each round ending with a reset (for the system allocator: freeing every
//! block of the round).
//!
//! Run with `cargo bench --bench chunk`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::ptr::NonNull;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use stratalloc::Layer;
use stratalloc::layers::{Chunk, Mmap};

/// Allocations per round, between resets.
const ROUND: usize = 4096;

/// Sizes cycle through 16..=64 bytes in steps of 8, with 8-byte alignment.
fn layouts() -> Vec<Layout> {
    (0..ROUND)
        .map(|i| Layout::from_size_align(16 + (i % 7) * 8, 8).unwrap())
        .collect()
}

fn small_allocations(c: &mut Criterion) {
    let layouts = layouts();
    let mut group = c.benchmark_group("small_allocations_with_reset");
    group.throughput(Throughput::Elements(ROUND as u64));

    group.bench_function("stratalloc_chunk", |b| {
        // 1 MiB chunks: a round (~160 KiB) fits the chunk that reset keeps.
        let mut chunk = Chunk::<Mmap, { 1 << 20 }>::new(Mmap::new());
        b.iter(|| {
            for &layout in &layouts {
                let block = chunk.get(black_box(layout)).unwrap();
                // SAFETY: the block holds at least one byte.
                unsafe { block.as_ptr().write(1) };
                black_box(block);
            }
            // SAFETY: no block of the round is used after this.
            unsafe { chunk.reset() };
        });
    });

    group.bench_function("bumpalo", |b| {
        let mut bump = bumpalo::Bump::new();
        b.iter(|| {
            for &layout in &layouts {
                let block = bump.alloc_layout(black_box(layout));
                // SAFETY: the block holds at least one byte.
                unsafe { block.as_ptr().write(1) };
                black_box(block);
            }
            bump.reset();
        });
    });

    group.bench_function("system_malloc_free", |b| {
        let mut blocks: Vec<NonNull<u8>> = Vec::with_capacity(ROUND);
        b.iter(|| {
            for &layout in &layouts {
                // SAFETY: non-zero sizes.
                let block = NonNull::new(unsafe { System.alloc(black_box(layout)) }).unwrap();
                // SAFETY: the block holds at least one byte.
                unsafe { block.as_ptr().write(1) };
                blocks.push(block);
            }
            for (block, &layout) in blocks.drain(..).zip(&layouts) {
                // SAFETY: allocated above with this layout.
                unsafe { System.dealloc(block.as_ptr(), layout) };
            }
        });
    });
    group.finish();
}

criterion_group!(benches, small_allocations);
criterion_main!(benches);
