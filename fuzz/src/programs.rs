//! The op programs of the four targets: what each operation means is said where the target
//! runs it. Each enum can be encoded back into bytes (for the seed corpus, `src/bin/seeds.rs`).

use arbitrary::Arbitrary;

use crate::{Encoder, Rng};

// ---- heap_stacks --------------------------------------------------------------------------

/// One step of a `heap_stacks` program, on a `Heap<L>` through `allocator_api2::Allocator`.
#[derive(Arbitrary, Clone, Debug, PartialEq)]
pub enum HeapOp {
    /// `allocate` (or `allocate_zeroed`) `size` bytes aligned to `1 << (align_log2 % 13)`.
    Alloc {
        size: u16,
        align_log2: u8,
        zeroed: bool,
    },
    /// `deallocate` the picked live block.
    Free { pick: u16 },
    /// `grow` (or `grow_zeroed`) the picked block by `extra` bytes, to a new alignment.
    Grow {
        pick: u16,
        extra: u16,
        align_log2: u8,
        zeroed: bool,
    },
    /// `shrink` the picked block to at most `size` bytes, to a new alignment.
    Shrink {
        pick: u16,
        size: u16,
        align_log2: u8,
    },
    /// `check_invariants` on the whole stack.
    Check,
}

impl HeapOp {
    /// Appends the op's bytes.
    pub fn encode(&self, e: &mut Encoder) {
        match *self {
            HeapOp::Alloc {
                size,
                align_log2,
                zeroed,
            } => e.variant(0, 5).u16(size).u8(align_log2).bool(zeroed),
            HeapOp::Free { pick } => e.variant(1, 5).u16(pick),
            HeapOp::Grow {
                pick,
                extra,
                align_log2,
                zeroed,
            } => e
                .variant(2, 5)
                .u16(pick)
                .u16(extra)
                .u8(align_log2)
                .bool(zeroed),
            HeapOp::Shrink {
                pick,
                size,
                align_log2,
            } => e.variant(3, 5).u16(pick).u16(size).u8(align_log2),
            HeapOp::Check => e.variant(4, 5),
        };
    }
}

/// A program shaped like the conformance suite's (`tests/all/conformance.rs`): its mix of
/// gets (5), puts (3) and resizes (1), its sizes and alignments (up to 4 KiB), up to 96
/// steps; the resizes keep their alignment half the time and change it otherwise, and every
/// tenth step or so checks the invariants.
pub fn conformance_heap_program(rng: &mut Rng) -> Vec<HeapOp> {
    let steps = 1 + rng.upto(95) as usize;
    (0..steps)
        .map(|_| match rng.weighted(&[5, 3, 1, 1]) {
            0 => HeapOp::Alloc {
                size: rng.conformance_size(),
                align_log2: rng.upto(12) as u8,
                zeroed: rng.upto(3) == 0,
            },
            1 => HeapOp::Free {
                pick: rng.word() as u16,
            },
            2 => {
                let align_log2 = if rng.upto(1) == 0 {
                    0
                } else {
                    rng.upto(12) as u8
                };
                if rng.upto(1) == 0 {
                    HeapOp::Grow {
                        pick: rng.word() as u16,
                        extra: rng.conformance_size(),
                        align_log2,
                        zeroed: rng.upto(1) == 0,
                    }
                } else {
                    HeapOp::Shrink {
                        pick: rng.word() as u16,
                        size: rng.conformance_size(),
                        align_log2,
                    }
                }
            }
            _ => HeapOp::Check,
        })
        .collect()
}

// ---- general ------------------------------------------------------------------------------

/// One step of a `general` program, on `presets::General`.
#[derive(Arbitrary, Clone, Debug, PartialEq)]
pub enum GeneralOp {
    /// `GlobalAlloc::alloc` (or `alloc_zeroed`) of `size.max(1)` bytes aligned to
    /// `1 << (align_log2 % 13)`.
    Alloc {
        size: u16,
        align_log2: u8,
        zeroed: bool,
    },
    /// `GlobalAlloc::realloc` of the picked block to `size.max(1)` bytes.
    Realloc { pick: u16, size: u16 },
    /// `GlobalAlloc::dealloc` of the picked block (C's `free` for blocks from the C calls).
    Dealloc { pick: u16 },
    /// C's `malloc`.
    Malloc { size: u16 },
    /// C's `calloc` (`malloc` of `count * size`, zeroed, as the malloc library does).
    Calloc { count: u8, size: u16 },
    /// C's `memalign` / `aligned_alloc` (`malloc_aligned`).
    Memalign { size: u16, align_log2: u8 },
    /// C's `realloc` of the picked block (any block: the C calls free by address alone).
    CRealloc { pick: u16, size: u16 },
    /// C's `free` of the picked block (any block).
    CFree { pick: u16 },
    /// `malloc_usable_size` of the picked block: at least what was asked.
    UsableSize { pick: u16 },
    /// The picked block is sent to the worker thread, which verifies and frees it.
    SendFree { pick: u16 },
    /// The worker thread allocates a block and sends it here, where it is freed later.
    WorkerAlloc { size: u16 },
    /// A short-lived thread allocates `count % 8` blocks and exits; they are freed here.
    ThreadExit { count: u8, size: u16 },
    /// C's `malloc` of `pages << 14` bytes (up to 4 MiB, in an arena), or of 40 MiB for 255
    /// (more than an arena holds: a piece of its own).
    Large { pages: u8 },
}

impl GeneralOp {
    /// Appends the op's bytes.
    pub fn encode(&self, e: &mut Encoder) {
        const N: u32 = 13;
        match *self {
            GeneralOp::Alloc {
                size,
                align_log2,
                zeroed,
            } => e.variant(0, N).u16(size).u8(align_log2).bool(zeroed),
            GeneralOp::Realloc { pick, size } => e.variant(1, N).u16(pick).u16(size),
            GeneralOp::Dealloc { pick } => e.variant(2, N).u16(pick),
            GeneralOp::Malloc { size } => e.variant(3, N).u16(size),
            GeneralOp::Calloc { count, size } => e.variant(4, N).u8(count).u16(size),
            GeneralOp::Memalign { size, align_log2 } => e.variant(5, N).u16(size).u8(align_log2),
            GeneralOp::CRealloc { pick, size } => e.variant(6, N).u16(pick).u16(size),
            GeneralOp::CFree { pick } => e.variant(7, N).u16(pick),
            GeneralOp::UsableSize { pick } => e.variant(8, N).u16(pick),
            GeneralOp::SendFree { pick } => e.variant(9, N).u16(pick),
            GeneralOp::WorkerAlloc { size } => e.variant(10, N).u16(size),
            GeneralOp::ThreadExit { count, size } => e.variant(11, N).u8(count).u16(size),
            GeneralOp::Large { pages } => e.variant(12, N).u8(pages),
        };
    }
}

/// The conformance suite's mix (gets 5, puts 3, resizes 1) over `General`, each get, put
/// and resize made through `GlobalAlloc` or through the C calls at random, with a share of
/// frees sent to the worker thread and blocks made by other threads.
pub fn conformance_general_program(rng: &mut Rng) -> Vec<GeneralOp> {
    let steps = 1 + rng.upto(95) as usize;
    (0..steps)
        .map(|_| {
            let c = rng.upto(1) == 0;
            let pick = rng.word() as u16;
            match rng.weighted(&[5, 3, 1, 1]) {
                0 if c => match rng.upto(2) {
                    0 => GeneralOp::Malloc {
                        size: rng.conformance_size(),
                    },
                    1 => GeneralOp::Calloc {
                        count: rng.upto(16) as u8,
                        size: rng.conformance_size() / 16,
                    },
                    _ => GeneralOp::Memalign {
                        size: rng.conformance_size(),
                        align_log2: rng.upto(12) as u8,
                    },
                },
                0 => GeneralOp::Alloc {
                    size: rng.conformance_size(),
                    align_log2: rng.upto(12) as u8,
                    zeroed: rng.upto(3) == 0,
                },
                1 => match rng.upto(3) {
                    0 => GeneralOp::SendFree { pick },
                    1 => GeneralOp::CFree { pick },
                    _ => GeneralOp::Dealloc { pick },
                },
                2 if c => GeneralOp::CRealloc {
                    pick,
                    size: rng.conformance_size(),
                },
                2 => GeneralOp::Realloc {
                    pick,
                    size: rng.conformance_size(),
                },
                _ => match rng.upto(3) {
                    0 => GeneralOp::WorkerAlloc {
                        size: rng.conformance_size(),
                    },
                    1 => GeneralOp::ThreadExit {
                        count: rng.upto(7) as u8,
                        size: rng.conformance_size(),
                    },
                    2 => GeneralOp::UsableSize { pick },
                    _ => GeneralOp::Large {
                        pages: rng.upto(40) as u8,
                    },
                },
            }
        })
        .collect()
}

// ---- blob_heap ----------------------------------------------------------------------------

/// One step of a `blob_heap` program. `second` picks which of the two handles on the blob
/// runs it.
#[derive(Arbitrary, Clone, Debug, PartialEq)]
pub enum BlobOp {
    /// `alloc(size % (2 * heap bytes))`.
    Alloc { second: bool, size: u32 },
    /// `free` the picked live block.
    Free { second: bool, pick: u16 },
    /// `block` of the picked live block: its offset and size.
    Block { second: bool, pick: u16 },
    /// `free` of an offset that no live block starts at (skipped when one does): an error.
    BogusFree { second: bool, offset: u32 },
    /// `block` of such an offset: an error.
    BogusBlock { second: bool, offset: u32 },
    /// `free` of an offset freed earlier and not handed out since: an error.
    FreeAgain { second: bool, pick: u16 },
    /// `stats`, compared with the model.
    Stats,
    /// `dump_to_string`.
    Dump,
    /// `recover`: done when the heap asked for it, refused otherwise.
    Recover { second: bool },
    /// `with_lock`: an allocation through the guard, and a call through the heap meanwhile
    /// (refused: the lock is this thread's).
    WithLock { size: u32 },
    /// `alloc_waiting` with no time to wait.
    AllocWaiting { size: u32 },
    /// Detaches the handle and attaches a new one.
    Reattach { second: bool },
    /// Writes `byte` into free memory near the start of the `target`th smallest block (where
    /// a free block's links are), as an overrun from a neighbour would.
    Overrun { target: u16, at: u8, byte: u8 },
    /// A handle dies holding the lock, halfway through an operation: four bytes of the
    /// header's lists and counts, or of the bitmaps, are overwritten, and the heap is marked
    /// as the robust lock would mark it.
    HolderDied { at: [u16; 4], bytes: [u8; 4] },
    /// A header field that `attach` checks is overwritten, an attach tried, the field put
    /// back.
    BadAttach { field: u8, value: u32 },
    /// A byte of the lock's bytes in the header is overwritten (the damage of issue 23).
    Lock { at: u8, byte: u8 },
}

impl BlobOp {
    /// Appends the op's bytes.
    pub fn encode(&self, e: &mut Encoder) {
        const N: u32 = 16;
        match *self {
            BlobOp::Alloc { second, size } => e.variant(0, N).bool(second).u32(size),
            BlobOp::Free { second, pick } => e.variant(1, N).bool(second).u16(pick),
            BlobOp::Block { second, pick } => e.variant(2, N).bool(second).u16(pick),
            BlobOp::BogusFree { second, offset } => e.variant(3, N).bool(second).u32(offset),
            BlobOp::BogusBlock { second, offset } => e.variant(4, N).bool(second).u32(offset),
            BlobOp::FreeAgain { second, pick } => e.variant(5, N).bool(second).u16(pick),
            BlobOp::Stats => e.variant(6, N),
            BlobOp::Dump => e.variant(7, N),
            BlobOp::Recover { second } => e.variant(8, N).bool(second),
            BlobOp::WithLock { size } => e.variant(9, N).u32(size),
            BlobOp::AllocWaiting { size } => e.variant(10, N).u32(size),
            BlobOp::Reattach { second } => e.variant(11, N).bool(second),
            BlobOp::Overrun { target, at, byte } => e.variant(12, N).u16(target).u8(at).u8(byte),
            BlobOp::HolderDied { at, bytes } => {
                e.variant(13, N);
                for a in at {
                    e.u16(a);
                }
                for b in bytes {
                    e.u8(b);
                }
                e
            }
            BlobOp::BadAttach { field, value } => e.variant(14, N).u8(field).u32(value),
            BlobOp::Lock { at, byte } => e.variant(15, N).u8(at).u8(byte),
        };
    }
}

/// The shape of `tests/all/blob_heap.rs`: allocations of every size and frees in any
/// order from both handles, bogus and repeated frees, overruns into free blocks followed by
/// recovery, a holder that dies, a stray lock word, stats and dumps.
pub fn blob_program(rng: &mut Rng) -> Vec<BlobOp> {
    let steps = 1 + rng.upto(95) as usize;
    (0..steps)
        .map(|_| {
            let second = rng.upto(1) == 0;
            let pick = rng.word() as u16;
            match rng.weighted(&[6, 4, 1, 1, 1, 1, 1, 1, 2, 1, 1, 1, 2, 1, 1, 1]) {
                0 => {
                    let bits = rng.upto(16);
                    BlobOp::Alloc {
                        second,
                        size: rng.upto(1 << bits) as u32,
                    }
                }
                1 => BlobOp::Free { second, pick },
                2 => BlobOp::Block { second, pick },
                3 => BlobOp::BogusFree {
                    second,
                    offset: rng.word() as u32 % (1 << 17),
                },
                4 => BlobOp::BogusBlock {
                    second,
                    offset: rng.word() as u32 % (1 << 17),
                },
                5 => BlobOp::FreeAgain { second, pick },
                6 => BlobOp::Stats,
                7 => BlobOp::Dump,
                8 => BlobOp::Recover { second },
                9 => BlobOp::WithLock {
                    size: rng.upto(4096) as u32,
                },
                10 => BlobOp::AllocWaiting {
                    size: rng.upto(1 << 16) as u32,
                },
                11 => BlobOp::Reattach { second },
                12 => BlobOp::Overrun {
                    target: pick,
                    at: rng.upto(31) as u8,
                    byte: rng.word() as u8,
                },
                13 => BlobOp::HolderDied {
                    at: [0; 4].map(|_: u16| rng.word() as u16),
                    bytes: [0; 4].map(|_: u8| rng.word() as u8),
                },
                14 => BlobOp::BadAttach {
                    field: rng.upto(5) as u8,
                    value: rng.upto(64) as u32,
                },
                // The stray byte (thread 1), or any byte of the word.
                _ => BlobOp::Lock {
                    at: rng.upto(3) as u8,
                    byte: if rng.upto(1) == 0 {
                        1
                    } else {
                        rng.word() as u8
                    },
                },
            }
        })
        .collect()
}

// ---- bitmap -------------------------------------------------------------------------------

/// One step of a `bitmap` program, on a `Bitmap` over memory that the input fills.
#[derive(Arbitrary, Clone, Debug, PartialEq)]
pub enum BitmapOp {
    /// `set(index)`.
    Set { index: u16 },
    /// `reset(index)`.
    Reset { index: u16 },
    /// `get(index)`.
    Get { index: u16 },
    /// `set_range(start, count)`.
    SetRange { start: u16, count: u16 },
    /// `reset_range(start, count)`.
    ResetRange { start: u16, count: u16 },
    /// `clear()`.
    Clear,
    /// `find_set(start..end)`.
    FindSet { start: u16, end: u16 },
    /// `find_clear(start..end)`.
    FindClear { start: u16, end: u16 },
    /// `next_set(from)`.
    NextSet { from: u16 },
    /// `next_clear(from)`.
    NextClear { from: u16 },
    /// `first_set()`.
    FirstSet,
    /// `zeroes_to_right(index)`.
    ZeroesToRight { index: u16 },
    /// `check()`, `len()`, `is_empty()`.
    Check,
    /// `dump_to_string`.
    Dump,
    /// `detach`, XOR `flip` into byte `at` of the memory (header included), `attach` again.
    Reattach { at: u16, flip: u8 },
}

impl BitmapOp {
    /// Appends the op's bytes.
    pub fn encode(&self, e: &mut Encoder) {
        const N: u32 = 15;
        match *self {
            BitmapOp::Set { index } => e.variant(0, N).u16(index),
            BitmapOp::Reset { index } => e.variant(1, N).u16(index),
            BitmapOp::Get { index } => e.variant(2, N).u16(index),
            BitmapOp::SetRange { start, count } => e.variant(3, N).u16(start).u16(count),
            BitmapOp::ResetRange { start, count } => e.variant(4, N).u16(start).u16(count),
            BitmapOp::Clear => e.variant(5, N),
            BitmapOp::FindSet { start, end } => e.variant(6, N).u16(start).u16(end),
            BitmapOp::FindClear { start, end } => e.variant(7, N).u16(start).u16(end),
            BitmapOp::NextSet { from } => e.variant(8, N).u16(from),
            BitmapOp::NextClear { from } => e.variant(9, N).u16(from),
            BitmapOp::FirstSet => e.variant(10, N),
            BitmapOp::ZeroesToRight { index } => e.variant(11, N).u16(index),
            BitmapOp::Check => e.variant(12, N),
            BitmapOp::Dump => e.variant(13, N),
            BitmapOp::Reattach { at, flip } => e.variant(14, N).u16(at).u8(flip),
        };
    }
}

/// The shape of `tests/all/bitmaps.rs`: sets, resets and ranges around word boundaries,
/// searches, the seed's `zeroes_to_right`, checks, and reattaching after a stray write.
pub fn bitmap_program(rng: &mut Rng, bits: u16) -> Vec<BitmapOp> {
    let steps = 1 + rng.upto(95) as usize;
    let bits = u64::from(bits);
    let index = |rng: &mut Rng| rng.upto(bits + 2) as u16;
    (0..steps)
        .map(
            |_| match rng.weighted(&[4, 3, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]) {
                0 => BitmapOp::Set { index: index(rng) },
                1 => BitmapOp::Reset { index: index(rng) },
                2 => BitmapOp::Get { index: index(rng) },
                3 => BitmapOp::SetRange {
                    start: index(rng),
                    count: rng.upto(130) as u16,
                },
                4 => BitmapOp::ResetRange {
                    start: index(rng),
                    count: rng.upto(130) as u16,
                },
                5 => BitmapOp::Clear,
                6 => BitmapOp::FindSet {
                    start: index(rng),
                    end: index(rng),
                },
                7 => BitmapOp::FindClear {
                    start: index(rng),
                    end: index(rng),
                },
                8 => BitmapOp::NextSet { from: index(rng) },
                9 => BitmapOp::NextClear { from: index(rng) },
                10 => BitmapOp::FirstSet,
                11 => BitmapOp::ZeroesToRight { index: index(rng) },
                12 => BitmapOp::Check,
                13 => BitmapOp::Dump,
                _ => BitmapOp::Reattach {
                    at: rng.upto(bits / 8 + 24) as u16,
                    flip: 1 << rng.upto(7),
                },
            },
        )
        .collect()
}
