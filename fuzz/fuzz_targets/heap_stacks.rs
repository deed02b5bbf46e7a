//! Fuzz target: op programs over `Heap<L>` (through `allocator_api2::Allocator`) for every
//! named stack of `src/presets.rs` and a representative set of layer stacks (those the
//! conformance suite runs); the first input byte picks the stack.
//!
//! Property: every allocation (plain or zeroed, zeroes checked) fits its layout, is aligned,
//! and overlaps no live block; every live block keeps its fill pattern until it is grown
//! (the old bytes kept, the new ones zero for `grow_zeroed`), shrunk (to a new alignment
//! too) or freed, in any order; `check_invariants` holds whenever the program asks; the
//! stack drops cleanly (its `Check` layers find no leak and no bad put).
#![no_main]
#![deny(clippy::undocumented_unsafe_blocks)]

use std::alloc::Layout;
use std::collections::BTreeMap;
use std::mem::MaybeUninit;
use std::ptr::NonNull;

use allocator_api2::alloc::Allocator;
use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use stratalloc::layers::*;
use stratalloc::{Heap, Layer, presets};
use stratalloc_fuzz::programs::HeapOp;
use stratalloc_fuzz::{Bytes, decode_ops, fill, verify, verify_zero};

/// The largest block a program asks for (the conformance suite's largest).
const MAX_SIZE: usize = 65536;
/// Memory for the stacks over caller memory: enough for most programs; running out there
/// is an allowed failure, not a finding.
const BUFFER_BYTES: usize = 8 << 20;

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(stack) = u8::arbitrary(&mut u) else {
        return;
    };
    let ops: Vec<HeapOp> = decode_ops(&mut u);
    if stratalloc_fuzz::tracing() {
        eprintln!(
            "stack {}: {ops:#?}",
            STACKS[usize::from(stack) % STACKS.len()]
        );
    }
    run_stack(stack, &ops);
});

/// The stacks, by the first input byte (modulo their number). The names are printed with
/// a finding.
pub const STACKS: &[&str] = &[
    "presets::AuditedArena",
    "presets::Arena",
    "presets::RegionArena",
    "presets::CheckedSystem",
    "presets::BufferArena",
    "presets::General (through GlobalAlloc)",
    "region::LeakCheckStack",
    "Buddy<Mmap, 5, 20>",
    "Buddy<Adopted (a vector), 4, 16>",
    "Bitset<Mmap, 16>",
    "Bitset<System, 256, 262144>",
    "SizeHeader<System>",
    "Slab<Reserve>",
    "Slab<System, 131072>",
    "Segregate<Fallback<Bitset<Mmap, 16, 65536>, System>, Mmap, 1024>",
    "Fallback<Adopted (a 16 KiB vector), Mmap>",
    "FreeList<Check<Mmap>, 64>",
    "FreeList<Mmap, 4096>",
    "SizeClasses<Coalesce<Mmap, 1 MiB>>",
    "Coalesce<Check<System>, 65536>",
    "Chunk<System, 256>",
    "Stats<Check<Batch<System>>>",
    "Guard<Mmap, 16>",
    "Quarantine<Guard<SizeClasses<Mmap>, 16>, 1 MiB>",
];

fn run_stack(stack: u8, ops: &[HeapOp]) {
    let which = usize::from(stack) % STACKS.len();
    let name = STACKS[which];
    match which {
        0 => run(name, presets::audited_arena(), ops, false),
        1 => run(name, presets::arena(), ops, false),
        2 => run(name, presets::region_arena(), ops, false),
        3 => run(name, presets::checked_system(), ops, false),
        4 => {
            let mut memory: Vec<MaybeUninit<u8>> = Vec::with_capacity(BUFFER_BYTES);
            // SAFETY: the spare capacity is `BUFFER_BYTES` bytes of `MaybeUninit`, which
            // need no initialisation; `memory` outlives the arena (dropped in `run`).
            let bytes =
                unsafe { std::slice::from_raw_parts_mut(memory.as_mut_ptr(), BUFFER_BYTES) };
            run(name, presets::buffer_arena(bytes), ops, true);
            drop(memory);
        }
        5 => run(name, ViaGlobalAlloc, ops, false),
        6 => run(
            name,
            <stratalloc::region::LeakCheckStack as Layer>::init(),
            ops,
            false,
        ),
        7 => run(name, Buddy::<_, 5, 20>::new(Mmap::new()), ops, false),
        8 => run(
            name,
            Buddy::<_, 4, 16>::new(owned_buffer(BUFFER_BYTES)),
            ops,
            true,
        ),
        9 => run(name, Bitset::<_, 16>::new(Mmap::new()), ops, false),
        10 => run(name, Bitset::<_, 256, 262144>::new(System), ops, false),
        11 => run(name, SizeHeader::new(System), ops, false),
        12 => run(name, Slab::<_>::new(Reserve::new()), ops, false),
        13 => run(name, Slab::<_, 131072>::new(System), ops, false),
        14 => run(
            name,
            Segregate::<_, _, 1024>::new(
                Fallback::new(Bitset::<_, 16, 65536>::new(Mmap::new()), System),
                Mmap::new(),
            ),
            ops,
            false,
        ),
        15 => run(
            name,
            Fallback::new(owned_buffer(16 << 10), Mmap::new()),
            ops,
            false,
        ),
        16 => run(
            name,
            FreeList::<_, 64>::new(Check::new(Mmap::new())),
            ops,
            false,
        ),
        17 => run(name, FreeList::<_, 4096>::new(Mmap::new()), ops, false),
        18 => run(
            name,
            SizeClasses::<_>::new(Coalesce::<_, { 1 << 20 }>::new(Mmap::new())),
            ops,
            false,
        ),
        19 => run(
            name,
            Coalesce::<_, 65536>::new(Check::new(System)),
            ops,
            false,
        ),
        20 => run(name, Chunk::<_, 256>::new(System), ops, false),
        21 => run(name, Stats::new(Check::new(Batch::new(System))), ops, false),
        22 => run(name, Guard::<_, 16>::new(Mmap::new()), ops, false),
        _ => run(
            name,
            Quarantine::<_, { 1 << 20 }>::new(Guard::<_, 16>::new(SizeClasses::<_>::new(
                Mmap::new(),
            ))),
            ops,
            false,
        ),
    }
}

/// A live block of the program.
struct Live {
    ptr: NonNull<u8>,
    layout: Layout,
    byte: u8,
}

impl Live {
    fn verify(&self, stack: &str, len: usize) {
        // SAFETY: the block is live and holds `layout.size()` bytes, at least `len`.
        unsafe { verify(stack, self.ptr.as_ptr(), len, self.byte) }
    }
}

fn align(log2: u8) -> usize {
    1 << (log2 % 13)
}

fn run<L: Layer>(stack: &str, layer: L, ops: &[HeapOp], may_fail: bool) {
    let mut heap = Heap::new(layer);
    let mut live: Vec<Live> = Vec::new();
    // start -> end of every live block of non-zero size.
    let mut extents: BTreeMap<usize, usize> = BTreeMap::new();
    let mut bytes = Bytes::default();
    for op in ops {
        match *op {
            HeapOp::Alloc {
                size,
                align_log2,
                zeroed,
            } => {
                let layout = Layout::from_size_align(usize::from(size), align(align_log2))
                    .expect("a valid layout");
                let a = &heap;
                let got = if zeroed {
                    a.allocate_zeroed(layout)
                } else {
                    a.allocate(layout)
                };
                let Ok(block) = got else {
                    assert!(may_fail, "{stack}: allocate({layout:?}) failed");
                    continue;
                };
                let ptr = block.cast::<u8>();
                check_new(stack, &extents, ptr, block.len(), layout);
                if zeroed {
                    // SAFETY: a fresh block of `layout.size()` bytes.
                    unsafe { verify_zero(stack, ptr.as_ptr(), layout.size()) };
                }
                let byte = bytes.fresh();
                // SAFETY: as above.
                unsafe { fill(ptr.as_ptr(), layout.size(), byte) };
                if layout.size() != 0 {
                    extents.insert(ptr.as_ptr().addr(), ptr.as_ptr().addr() + layout.size());
                }
                live.push(Live { ptr, layout, byte });
            }
            HeapOp::Free { pick } if !live.is_empty() => {
                let block = live.swap_remove(usize::from(pick) % live.len());
                block.verify(stack, block.layout.size());
                extents.remove(&block.ptr.as_ptr().addr());
                // SAFETY: allocated by this heap with this layout, freed once.
                unsafe { (&heap).deallocate(block.ptr, block.layout) };
            }
            HeapOp::Grow {
                pick,
                extra,
                align_log2,
                zeroed,
            } if !live.is_empty() => {
                let index = usize::from(pick) % live.len();
                let old = live[index].layout;
                let size = (old.size() + usize::from(extra)).min(MAX_SIZE.max(old.size()));
                let new = Layout::from_size_align(size, align(align_log2)).expect("a layout");
                resize(
                    stack,
                    &heap,
                    &mut live,
                    &mut extents,
                    index,
                    new,
                    zeroed,
                    may_fail,
                );
            }
            HeapOp::Shrink {
                pick,
                size,
                align_log2,
            } if !live.is_empty() => {
                let index = usize::from(pick) % live.len();
                let old = live[index].layout;
                let size = usize::from(size).min(old.size());
                let new = Layout::from_size_align(size, align(align_log2)).expect("a layout");
                resize(
                    stack,
                    &heap,
                    &mut live,
                    &mut extents,
                    index,
                    new,
                    false,
                    may_fail,
                );
            }
            HeapOp::Check => heap.layer_mut().check_invariants(),
            _ => {}
        }
    }
    heap.layer_mut().check_invariants();
    for block in live.drain(..).rev() {
        block.verify(stack, block.layout.size());
        // SAFETY: as for `Free`.
        unsafe { (&heap).deallocate(block.ptr, block.layout) };
    }
    heap.layer_mut().check_invariants();
    drop(heap);
}

/// Checks a block the heap just handed out: as long as asked, aligned, and disjoint from
/// every live block.
fn check_new(
    stack: &str,
    extents: &BTreeMap<usize, usize>,
    ptr: NonNull<u8>,
    len: usize,
    layout: Layout,
) {
    assert!(
        len >= layout.size(),
        "{stack}: {len} bytes handed out for {layout:?}"
    );
    let start = ptr.as_ptr().addr();
    assert_eq!(
        start % layout.align(),
        0,
        "{stack}: {ptr:p} is not aligned for {layout:?}"
    );
    if layout.size() == 0 {
        return;
    }
    let end = start + layout.size();
    if let Some((&s, &e)) = extents.range(..end).next_back() {
        assert!(
            e <= start,
            "{stack}: {start:#x}..{end:#x} ({layout:?}) overlaps the live block {s:#x}..{e:#x}"
        );
    }
}

/// Grows or shrinks the block at `index` to `new` (a new alignment too), through
/// `grow`/`grow_zeroed`/`shrink`, and checks what it keeps.
#[allow(clippy::too_many_arguments)]
fn resize<L: Layer>(
    stack: &str,
    heap: &Heap<L>,
    live: &mut [Live],
    extents: &mut BTreeMap<usize, usize>,
    index: usize,
    new: Layout,
    zeroed: bool,
    may_fail: bool,
) {
    let block = &mut live[index];
    let old = block.layout;
    block.verify(stack, old.size());
    // SAFETY: the block is live in this heap with layout `old`; `grow` gets a size at least
    // the old one, `shrink` one at most.
    let got = unsafe {
        if new.size() >= old.size() {
            if zeroed {
                heap.grow_zeroed(block.ptr, old, new)
            } else {
                heap.grow(block.ptr, old, new)
            }
        } else {
            heap.shrink(block.ptr, old, new)
        }
    };
    let Ok(moved) = got else {
        assert!(may_fail, "{stack}: resizing {old:?} to {new:?} failed");
        // The block stays as it was.
        block.verify(stack, old.size());
        return;
    };
    let ptr = moved.cast::<u8>();
    let old_start = block.ptr.as_ptr().addr();
    extents.remove(&old_start);
    check_new(stack, extents, ptr, moved.len(), new);
    let kept = old.size().min(new.size());
    // SAFETY: the (perhaps moved) block holds `new.size()` bytes, at least `kept`.
    unsafe { verify(stack, ptr.as_ptr(), kept, block.byte) };
    if zeroed && new.size() > old.size() {
        // SAFETY: as above; the bytes past `kept` are inside the block.
        unsafe { verify_zero(stack, ptr.as_ptr().add(kept), new.size() - kept) };
    }
    // SAFETY: as above.
    unsafe { fill(ptr.as_ptr(), new.size(), block.byte) };
    if new.size() != 0 {
        extents.insert(ptr.as_ptr().addr(), ptr.as_ptr().addr() + new.size());
    }
    block.ptr = ptr;
    block.layout = new;
}

// ---- the stacks that need a wrapper ----------------------------------------------------

/// `presets::General` is a `GlobalAlloc`, not a layer: this handle drives one static
/// instance through `GlobalAlloc` (zero sizes as one byte, which `GlobalAlloc` callers
/// never ask for), as the conformance suite does.
struct ViaGlobalAlloc;

static GENERAL: presets::General = presets::general();

fn nonzero(layout: Layout) -> Layout {
    Layout::from_size_align(layout.size().max(1), layout.align()).expect("a layout")
}

// SAFETY: every call forwards to `GlobalAlloc` with a non-zero layout that fits the block;
// `General` keeps `GlobalAlloc`'s contract, which is the `Layer` contract's for these calls.
unsafe impl Layer for ViaGlobalAlloc {
    fn get(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        // SAFETY: a non-zero layout.
        NonNull::new(unsafe { std::alloc::GlobalAlloc::alloc(&GENERAL, nonzero(layout)) })
    }
    unsafe fn put(&mut self, ptr: NonNull<u8>, layout: Layout) {
        // SAFETY: the caller's duties: a live block of `General` with this layout.
        unsafe { std::alloc::GlobalAlloc::dealloc(&GENERAL, ptr.as_ptr(), nonzero(layout)) }
    }
    fn init() -> Self {
        ViaGlobalAlloc
    }
    fn deinit(&mut self) {}
}

/// A source over a vector of `bytes` bytes of its own.
fn owned_buffer(bytes: usize) -> Adopted<1> {
    let mut adopted = Adopted::new();
    let memory = AdoptedMemory::from_vec(vec![0; bytes]);
    adopted.adopt(memory).expect("an empty layer adopts");
    adopted
}
