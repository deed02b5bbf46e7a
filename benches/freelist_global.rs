//! A bare free list as the global allocator: the simplest allocator that serves and frees
//! every tree node one by one, a reference point for binary trees of `Box`es (see
//! `benches/compare.py`).
//!
//! It is not an allocator anyone should use: 16-byte blocks (a tree node) come from a
//! thread-local LIFO free list, refilled by bumping through 1 MiB slabs that are never given
//! back; everything else goes to the system allocator. No checks, no ownership look-up, no
//! return of memory. It shows what per-node frees cost on this workload by themselves,
//! apart from any routing: a bump arena (bumpalo) never frees nodes one by one.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::ptr;

use criterion::{Criterion, criterion_group, criterion_main};

mod workloads;

const NODE: usize = 16;
const SLAB: usize = 1 << 20;

struct FreeList;

thread_local! {
    /// Freed 16-byte blocks, linked through their first word.
    static FREE: Cell<*mut u8> = const { Cell::new(ptr::null_mut()) };
    /// The unused rest of the current slab.
    static NEXT: Cell<*mut u8> = const { Cell::new(ptr::null_mut()) };
    static END: Cell<*mut u8> = const { Cell::new(ptr::null_mut()) };
}

fn is_node(layout: Layout) -> bool {
    layout.size() <= NODE && layout.align() <= NODE
}

// SAFETY: node blocks are 16-byte aligned pieces of slabs from the system allocator, each
// handed out once until it is freed back onto this thread's list (the benchmark frees on
// the allocating thread); other layouts go to the system allocator both ways.
unsafe impl GlobalAlloc for FreeList {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !is_node(layout) {
            // SAFETY: the caller's duties, passed on.
            return unsafe { System.alloc(layout) };
        }
        let free = FREE.get();
        if !free.is_null() {
            // SAFETY: a freed node holds the next free node in its first word.
            FREE.set(unsafe { free.cast::<*mut u8>().read() });
            return free;
        }
        let next = NEXT.get();
        if next != END.get() {
            NEXT.set(next.wrapping_add(NODE));
            return next;
        }
        // SAFETY: a non-zero size with a valid alignment.
        let slab = unsafe { System.alloc(Layout::from_size_align_unchecked(SLAB, NODE)) };
        if slab.is_null() {
            return slab;
        }
        NEXT.set(slab.wrapping_add(NODE));
        END.set(slab.wrapping_add(SLAB));
        slab
    }

    #[inline]
    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        if !is_node(layout) {
            // SAFETY: the caller's duties, passed on.
            return unsafe { System.dealloc(block, layout) };
        }
        // SAFETY: a node block is 16 bytes, aligned, and no longer used by the program.
        unsafe { block.cast::<*mut u8>().write(FREE.get()) };
        FREE.set(block);
    }
}

#[global_allocator]
static FREE_LIST: FreeList = FreeList;

fn benches(c: &mut Criterion) {
    let mut group = c.benchmark_group(format!("binary_trees_{}", workloads::DEPTH));
    group.sample_size(10);
    group.bench_function("free_list_box", |b| {
        b.iter(|| workloads::binary_trees(workloads::DEPTH, workloads::boxed_tree))
    });
    group.finish();
}

criterion_group!(free_list, benches);
criterion_main!(free_list);
