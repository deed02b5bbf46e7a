//! The heap in a blob: bad input, allocation against a model, a second handle and other
//! threads, waiting allocations, damage and recovery, and two processes sharing a heap in
//! a file (one of them killed while it holds the lock).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use stratalloc::blob_heap::{
    BLOB_VERSION, BlobBlock, BlobError, BlobGeometry, BlobHeap, MOST_PINS, RecoveryReason,
    pid_namespace,
};

/// 64-byte-aligned memory for a blob, filled with garbage.
struct Blob(Vec<Line>);

#[repr(align(64))]
#[derive(Clone, Copy)]
struct Line(#[allow(dead_code, reason = "only its bytes and alignment matter")] [u8; 64]);

impl Blob {
    fn new(len: usize) -> Self {
        Blob(vec![Line([0xEE; 64]); len.div_ceil(64)])
    }

    fn for_geometry(geometry: BlobGeometry) -> Self {
        Self::new(geometry.required_size())
    }

    fn bytes(&mut self) -> &mut [u8] {
        let len = self.0.len() * 64;
        // SAFETY: the lines are plain bytes, contiguous, and borrowed mutably from `self`.
        unsafe { std::slice::from_raw_parts_mut(self.0.as_mut_ptr().cast::<u8>(), len) }
    }
}

/// Attaches to memory that fails `attach`'s checks, or holds a heap that `init` made there.
fn attach(blob: &mut [u8]) -> Result<BlobHeap<'_>, BlobError> {
    // SAFETY: every caller passes memory that fails the header checks (garbage, zeroes,
    // a damaged version or geometry, too few bytes, a destroyed heap), which `attach`
    // reports before it touches the lock, or a heap `init` made in it and left alone.
    unsafe { BlobHeap::attach(blob) }
}

fn geometry(max: u32, min: u32) -> BlobGeometry {
    BlobGeometry::new(max, min, 64).unwrap()
}

/// Writes the block's pattern for `tag`: the tag itself, then bytes derived from it.
fn fill(block: &BlobBlock, tag: u64) {
    let ptr = block.as_ptr().cast::<u8>().as_ptr();
    for i in 0..block.size {
        // SAFETY: the block is live and ours (or handed to us) for its whole size.
        unsafe { ptr.add(i).write(pattern_byte(tag, i)) };
    }
}

fn pattern_byte(tag: u64, i: usize) -> u8 {
    (tag.wrapping_mul(0x9E37_79B9).wrapping_add(i as u64 * 7) >> 3) as u8
}

/// Whether the block still holds the pattern for `tag`.
fn holds(block: &BlobBlock, tag: u64) -> bool {
    let ptr = block.as_ptr().cast::<u8>().as_ptr();
    // SAFETY: as in `fill`.
    (0..block.size).all(|i| unsafe { ptr.add(i).read() } == pattern_byte(tag, i))
}

/// Checks the heap is empty and whole: nothing live, one free block of the top order.
fn assert_whole(heap: &BlobHeap<'_>) {
    let stats = heap.stats();
    assert_eq!(
        (stats.allocated_bytes, stats.live_blocks),
        (0, 0),
        "{stats:?}"
    );
    let max = heap.geometry().max_order();
    for &(order, count) in &stats.free_blocks {
        assert_eq!(count, u64::from(order == max), "order {order}: {stats:?}");
    }
    assert_eq!(stats.utilisation, 0.0);
    assert_eq!(stats.recovery_needed, None);
}

/// Allocates every smallest block, checks they are distinct and cover the heap, and frees
/// them again: the free lists are sound.
fn assert_usable(heap: &BlobHeap<'_>) {
    let g = heap.geometry();
    let count = 1usize << (g.max_order() - g.min_order());
    let mut offsets: Vec<u64> = (0..count).map(|_| heap.alloc(1).unwrap().offset).collect();
    assert!(matches!(
        heap.alloc(1),
        Err(BlobError::OutOfMemory { size: 1 })
    ));
    offsets.sort_unstable();
    offsets.dedup();
    assert_eq!(offsets.len(), count, "a block was handed out twice");
    for offset in offsets.iter().rev() {
        heap.free(*offset).unwrap();
    }
    assert_whole(heap);
}

#[test]
fn geometry_errors_name_what_was_wrong() {
    let error = |max, min, align| BlobGeometry::new(max, min, align).unwrap_err();
    assert_eq!(
        error(10, 12, 64),
        BlobError::MinOrderAboveMax {
            min_order: 12,
            max_order: 10
        }
    );
    assert_eq!(error(10, 4, 64).to_string(), "order 4 is outside 5..=44");
    assert!(matches!(
        error(45, 12, 64),
        BlobError::OrderOutOfRange { order: 45, .. }
    ));
    assert_eq!(
        error(40, 5, 64),
        BlobError::TooManyOrders {
            orders: 36,
            limit: 29
        }
    );
    for align in [0, 4, 24] {
        assert_eq!(
            error(10, 5, align),
            BlobError::BadAlignment { alignment: align }
        );
    }
    assert_eq!(
        error(10, 5, 24).to_string(),
        "alignment 24 is not a power of two of at least 8"
    );
    // A power of two above 8 is refused for being above the heap's size, and the message
    // says so rather than that it is not a power of two.
    assert_eq!(
        error(10, 5, 1 << 11),
        BlobError::AlignmentAboveHeap {
            alignment: 1 << 11,
            heap_bytes: 1 << 10
        }
    );
    assert_eq!(
        error(10, 5, 1 << 11).to_string(),
        "alignment 2048 is above the heap's size, 1024 bytes"
    );
    assert!(
        BlobGeometry::new(10, 5, 1 << 10).is_ok(),
        "the heap's size itself"
    );
    // The seed's example geometry: a 4 GiB heap of 4 KiB blocks, 4 KiB-aligned: the data,
    // an 8-byte stamp per block (8 MiB) and the bitmaps and header (under 1 MiB).
    let seed = BlobHeap::required_size(32, 12, 4096).unwrap();
    let stamps = (1 << 20) * 8;
    assert!(
        seed > (1 << 32) + stamps && seed < (1 << 32) + stamps + (1 << 20),
        "{seed}"
    );
}

#[test]
fn blobs_that_do_not_hold_a_heap_are_errors() {
    let g = geometry(12, 6);
    let mut blob = Blob::for_geometry(g);
    let needed = g.required_size();
    let short = &mut blob.bytes()[..needed - 1];
    assert_eq!(
        BlobHeap::init(short, g).unwrap_err(),
        BlobError::BlobTooSmall {
            needed,
            given: needed - 1
        }
    );
    assert!(matches!(
        BlobHeap::init(&mut blob.bytes()[8..], g),
        Err(BlobError::BlobMisaligned { .. })
    ));
    // Garbage, zeroes, a header cut short.
    assert_eq!(
        attach(blob.bytes()).unwrap_err(),
        BlobError::NotAHeap {
            found: 0xEEEE_EEEE_EEEE_EEEE
        }
    );
    blob.bytes().fill(0);
    assert_eq!(
        attach(blob.bytes()).unwrap_err(),
        BlobError::NotAHeap { found: 0 }
    );
    assert!(matches!(
        attach(&mut blob.bytes()[..16]),
        Err(BlobError::BlobTooSmall { given: 16, .. })
    ));
    // A heap of another version, or with a damaged geometry.
    drop(BlobHeap::init(blob.bytes(), g).unwrap());
    blob.bytes()[8..12].copy_from_slice(&(BLOB_VERSION + 1).to_ne_bytes());
    assert_eq!(
        attach(blob.bytes()).unwrap_err(),
        BlobError::VersionMismatch {
            found: BLOB_VERSION + 1,
            expected: BLOB_VERSION
        }
    );
    blob.bytes()[8..12].copy_from_slice(&BLOB_VERSION.to_ne_bytes());
    blob.bytes()[12..16].copy_from_slice(&99u32.to_ne_bytes());
    assert_eq!(
        attach(blob.bytes()).unwrap_err(),
        BlobError::BadGeometry {
            max_order: 99,
            min_order: 6,
            alignment: 64
        }
    );
    // A heap whose geometry needs more than the blob has.
    blob.bytes()[12..16].copy_from_slice(&20u32.to_ne_bytes());
    let given = blob.bytes().len();
    assert!(matches!(
        attach(blob.bytes()),
        Err(BlobError::BlobTooSmall { given: g, .. }) if g == given
    ));
}

#[test]
fn bad_offsets_and_requests_are_errors_naming_them() {
    let g = geometry(12, 6);
    let mut blob = Blob::for_geometry(g);
    let heap = BlobHeap::init(blob.bytes(), g).unwrap();
    let block = heap.alloc(128).unwrap();
    assert_eq!(block.size, 128);
    // Inside a live block, never allocated, outside the heap, misaligned.
    for offset in [block.offset + 64, block.offset + 1, 2048] {
        assert_eq!(heap.free(offset), Err(BlobError::NotLive { offset }));
        assert_eq!(heap.block(offset), Err(BlobError::NotLive { offset }));
    }
    assert_eq!(
        heap.free(4096).unwrap_err().to_string(),
        "offset 0x1000 is outside the heap's 4096 bytes"
    );
    assert_eq!(heap.block(block.offset).unwrap(), block);
    heap.free(block.offset).unwrap();
    // A double free.
    assert_eq!(
        heap.free(block.offset).unwrap_err().to_string(),
        format!(
            "offset {:#x} is not a live block (never allocated, or freed already)",
            block.offset
        )
    );
    assert_eq!(
        heap.alloc(4097),
        Err(BlobError::TooLarge {
            size: 4097,
            largest: 4096
        })
    );
    // Locking twice on one thread is an error, not a hang; the guard's operations work.
    heap.with_lock(|guard| {
        assert_eq!(heap.alloc(64), Err(BlobError::AlreadyLocked));
        assert!(matches!(
            heap.with_lock(|_| ()),
            Err(BlobError::AlreadyLocked)
        ));
        let under_guard = guard.alloc(64).unwrap();
        guard.free(under_guard.offset).unwrap();
    })
    .unwrap();
    // A panic inside releases the lock on its way out.
    let caught = std::panic::catch_unwind(|| heap.with_lock(|_| panic!("inside with_lock")));
    assert!(caught.is_err());
    let whole = heap.alloc(4096).unwrap();
    assert_eq!(heap.alloc(0), Err(BlobError::OutOfMemory { size: 0 }));
    assert_eq!(heap.recover(), Err(BlobError::NoRecoveryNeeded));
    heap.free(whole.offset).unwrap();
    assert_whole(&heap);
}

#[test]
fn the_whole_heap_splits_into_smallest_blocks_and_merges_back() {
    // 256 smallest blocks (64 under Miri).
    let max = if cfg!(miri) { 11 } else { 13 };
    let count = 1 << (max - 5);
    let g = geometry(max, 5);
    let mut blob = Blob::for_geometry(g);
    let heap = BlobHeap::init(blob.bytes(), g).unwrap();
    assert_whole(&heap);
    let blocks: Vec<BlobBlock> = (0..count).map(|_| heap.alloc(32).unwrap()).collect();
    for (i, block) in blocks.iter().enumerate() {
        fill(block, i as u64);
    }
    assert_eq!(heap.stats().utilisation, 100.0);
    // Free in a scrambled order; every block keeps its pattern until it goes.
    for step in 0..count {
        let i = (step * 97) % count;
        assert!(holds(&blocks[i], i as u64), "block {i} changed");
        heap.free(blocks[i].offset).unwrap();
    }
    assert_whole(&heap);
    assert_usable(&heap);
}

#[derive(Clone, Debug)]
enum Op {
    Alloc(usize),
    Free(usize),
    Pin(usize),
    Unpin(usize),
    FreeStale(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        // Under Miri, where filling and checking a block byte by byte is slow, smaller blocks.
        3 => (0usize..if cfg!(miri) { 1200 } else { 5000 }).prop_map(Op::Alloc),
        3 => any::<usize>().prop_map(Op::Free),
        1 => any::<usize>().prop_map(Op::Pin),
        1 => any::<usize>().prop_map(Op::Unpin),
        1 => any::<usize>().prop_map(Op::FreeStale),
    ]
}

/// A live block of the model: the block, its pattern's tag, and its pins.
struct Live {
    block: BlobBlock,
    tag: u64,
    pins: u32,
}

proptest! {
    #![proptest_config(crate::proptest_config())]

    /// Random programs of allocations, frees, pins and frees of stale allocations: blocks
    /// are powers of two at multiples of their size, never overlap, keep their patterns; a
    /// pinned block is never freed, a stale generation frees nothing, and the heap ends
    /// whole.
    #[test]
    fn random_programs_keep_blocks_apart_and_intact(
        ops in prop::collection::vec(op(), 1..if cfg!(miri) { 24 } else { 200 })
    ) {
        let g = geometry(14, 5);
        let mut blob = Blob::for_geometry(g);
        let heap = BlobHeap::init(blob.bytes(), g).unwrap();
        let mut live: Vec<Live> = Vec::new();
        let mut stale: Vec<BlobBlock> = Vec::new();
        for (tag, op) in ops.into_iter().enumerate() {
            match op {
                Op::Alloc(size) => match heap.alloc(size) {
                    Ok(block) => {
                        prop_assert!(block.size >= size.max(32) && block.size.is_power_of_two());
                        prop_assert_eq!(block.offset % block.size as u64, 0);
                        for other in &live {
                            let other = &other.block;
                            let apart = block.offset + block.size as u64 <= other.offset
                                || other.offset + other.size as u64 <= block.offset;
                            prop_assert!(apart, "{:?} overlaps {:?}", block, other);
                        }
                        prop_assert_eq!(heap.pins(block.offset), 0);
                        fill(&block, tag as u64);
                        live.push(Live { block, tag: tag as u64, pins: 0 });
                    }
                    Err(BlobError::OutOfMemory { .. }) => {
                        let used: usize = live.iter().map(|l| l.block.size).sum();
                        prop_assert!(used + size.next_power_of_two() > g.heap_bytes() / 2 || size > 4096);
                    }
                    Err(other) => prop_assert!(false, "{}", other),
                },
                Op::Free(pick) if !live.is_empty() => {
                    let at = pick % live.len();
                    let Live { block, tag, pins } = live[at];
                    prop_assert!(holds(&block, tag), "block {:?} changed", block);
                    let freed = heap.free_generation(block.offset, block.generation);
                    if pins > 0 {
                        prop_assert_eq!(freed, Err(BlobError::Pinned { offset: block.offset, pins }));
                    } else {
                        prop_assert_eq!(freed, Ok(()));
                        prop_assert_eq!(heap.generation(block.offset), None);
                        live.swap_remove(at);
                        stale.push(block);
                    }
                }
                Op::Pin(pick) if !live.is_empty() => {
                    let at = pick % live.len();
                    let entry = &mut live[at];
                    prop_assert_eq!(heap.pin(entry.block.offset, entry.block.generation), Ok(()));
                    entry.pins += 1;
                }
                Op::Unpin(pick) if !live.is_empty() => {
                    let at = pick % live.len();
                    let entry = &mut live[at];
                    let unpinned = heap.unpin(entry.block.offset, entry.block.generation);
                    prop_assert_eq!(unpinned, entry.pins > 0);
                    entry.pins = entry.pins.saturating_sub(1);
                }
                Op::FreeStale(pick) if !stale.is_empty() => {
                    let block = stale[pick % stale.len()];
                    prop_assert!(heap.free_generation(block.offset, block.generation).is_err());
                    prop_assert!(heap.pin(block.offset, block.generation).is_err());
                }
                Op::Free(_) | Op::Pin(_) | Op::Unpin(_) | Op::FreeStale(_) => {}
            }
            let stats = heap.stats();
            prop_assert_eq!(stats.live_blocks as usize, live.len());
            prop_assert_eq!(stats.allocated_bytes, live.iter().map(|l| l.block.size).sum::<usize>());
        }
        for Live { block, tag, pins } in live {
            prop_assert!(holds(&block, tag));
            for _ in 0..pins {
                prop_assert!(heap.unpin(block.offset, block.generation));
            }
            heap.free_generation(block.offset, block.generation).unwrap();
        }
        assert_whole(&heap);
    }
}

/// A new heap in `blob` and two handles on it, one from `init_raw` and one from
/// `attach_raw`.
fn two_handles(blob: &mut Blob, g: BlobGeometry) -> (BlobHeap<'_>, BlobHeap<'_>) {
    let bytes = blob.bytes();
    let (base, len) = (
        std::ptr::NonNull::from(&mut *bytes).cast::<u8>(),
        bytes.len(),
    );
    // SAFETY: the blob outlives both handles (they borrow it), and is touched only through
    // them (both come from the same raw pointer, so neither borrow invalidates the other).
    let first = unsafe { BlobHeap::init_raw(base, len, g) }.unwrap();
    // SAFETY: as above.
    let second = unsafe { BlobHeap::attach_raw(base, len) }.unwrap();
    (first, second)
}

#[test]
fn a_second_handle_sees_and_frees_the_same_blocks() {
    let g = geometry(12, 6);
    let mut blob = Blob::for_geometry(g);
    let (first, second) = two_handles(&mut blob, g);
    assert_eq!(second.geometry(), g);
    assert_eq!(first.stats().handles, 2);
    let block = first.alloc(200).unwrap();
    fill(&block, 42);
    let seen = second.block(block.offset).unwrap();
    assert_eq!((seen.offset, seen.size), (block.offset, block.size));
    assert!(holds(&seen, 42));
    second.free(block.offset).unwrap();
    assert_eq!(
        first.free(block.offset),
        Err(BlobError::NotLive {
            offset: block.offset
        })
    );
    assert_eq!(
        second.destroy(),
        Err(BlobError::StillAttached { handles: 2 })
    );
    assert_eq!(first.stats().handles, 1);
    assert!(
        first
            .dump_to_string("after")
            .contains("1 handle(s) attached")
    );
    first.destroy().unwrap();
    assert!(matches!(
        attach(blob.bytes()),
        Err(BlobError::NotAHeap { .. })
    ));
}

/// Stamps: a block's generation tells its allocation apart from the place's later ones, in
/// every handle; a pinned block cannot be freed by any handle until it is unpinned; a free
/// of a stale generation frees nothing; two heaps have two ids, two handles of one heap one.
#[test]
fn generations_and_pins_guard_blocks_across_handles() {
    let g = geometry(12, 6);
    let mut blob = Blob::for_geometry(g);
    let (first, second) = two_handles(&mut blob, g);
    assert_eq!(first.id(), second.id());
    let mut other_blob = Blob::for_geometry(g);
    let other = BlobHeap::init(other_blob.bytes(), g).unwrap();
    assert_ne!(other.id(), first.id());

    let block = first.alloc(64).unwrap();
    let (offset, generation) = (block.offset, block.generation);
    assert_eq!(second.block(offset).unwrap().generation, generation);
    assert_eq!(second.generation(offset), Some(generation));
    assert_eq!(
        first.generation(offset + 8),
        None,
        "not a smallest block's start"
    );
    assert_eq!(first.generation(1 << 12), None, "outside the heap");

    // Pinned through one handle: no handle frees it, with or without the generation.
    second.pin(offset, generation).unwrap();
    assert_eq!(first.pins(offset), 1);
    let pinned = BlobError::Pinned { offset, pins: 1 };
    assert_eq!(first.free(offset), Err(pinned));
    assert_eq!(second.free_generation(offset, generation), Err(pinned));
    assert!(
        pinned
            .to_string()
            .contains("is pinned by 1 view(s) (in this process or another)"),
        "{pinned}"
    );
    assert!(second.unpin(offset, generation));
    assert!(
        !second.unpin(offset, generation),
        "no pin left to take back"
    );

    // Freed: no live allocation there, and the old one can neither be pinned nor freed;
    // nor can the place, at the generation it moved to, or inside a live block.
    first.free_generation(offset, generation).unwrap();
    assert_eq!(first.generation(offset), None);
    let stale = second.pin(offset, generation).unwrap_err();
    assert!(matches!(stale, BlobError::StaleGeneration { now, .. } if now != generation));
    assert!(
        stale
            .to_string()
            .contains("was freed (by this or another handle)")
    );
    for later in generation + 1..generation + 3 {
        assert!(matches!(
            second.pin(offset, later),
            Err(BlobError::StaleGeneration { .. })
        ));
    }
    let wide = first.alloc(256).unwrap();
    assert!(matches!(
        first.pin(wide.offset + 64, 0),
        Err(BlobError::StaleGeneration { .. })
    ));
    assert_eq!(
        first.generation(wide.offset + 64),
        None,
        "inside a live block"
    );
    assert_eq!(
        first.pin(1 << 12, 0),
        Err(BlobError::OffsetOutOfRange {
            offset: 1 << 12,
            heap_bytes: 1 << 12
        })
    );
    first.free_generation(wide.offset, wide.generation).unwrap();

    // Allocated again at the same place: a new generation; the old one frees nothing.
    let again = first.alloc(64).unwrap();
    assert_eq!(again.offset, offset);
    assert_ne!(again.generation, generation);
    assert!(matches!(
        second.free_generation(offset, generation),
        Err(BlobError::StaleGeneration { .. })
    ));
    assert_eq!(first.block(offset).unwrap().generation, again.generation);
    second.free_generation(offset, again.generation).unwrap();
    assert_whole(&first);
    drop(second);
    first.destroy().unwrap();
}

/// A block takes at most `MOST_PINS` pins; the one past them is refused, and every pin
/// taken comes back off. (Some 65,000 locked operations: too long for Miri, and the pins'
/// memory accesses are the ones the test above makes.)
#[test]
#[cfg_attr(
    miri,
    ignore = "65,000 locked operations; the test above covers their accesses"
)]
fn pins_stop_at_most_pins() {
    let g = geometry(12, 6);
    let mut blob = Blob::for_geometry(g);
    let heap = BlobHeap::init(blob.bytes(), g).unwrap();
    let block = heap.alloc(64).unwrap();
    let (offset, generation) = (block.offset, block.generation);
    for _ in 0..MOST_PINS {
        heap.pin(offset, generation).unwrap();
    }
    assert_eq!(heap.pins(offset), MOST_PINS);
    assert_eq!(
        heap.pin(offset, generation),
        Err(BlobError::TooManyPins { offset })
    );
    for _ in 0..MOST_PINS {
        assert!(heap.unpin(offset, generation));
    }
    assert!(!heap.unpin(offset, generation), "every pin came back off");
    heap.free_generation(offset, generation).unwrap();
    assert_whole(&heap);
}

/// `lock_ptr` is where the lock is: inside the header, the same in every handle, and (with
/// glibc's robust mutex, whose first word names the holder) held by this thread exactly
/// inside `with_lock`.
#[test]
fn lock_ptr_points_at_the_lock() {
    let g = geometry(12, 6);
    let mut blob = Blob::for_geometry(g);
    let bytes = blob.bytes();
    let (base, len) = (
        std::ptr::NonNull::from(&mut *bytes).cast::<u8>(),
        bytes.len(),
    );
    // SAFETY: the blob outlives both handles and is touched only through them (and through
    // the lock word read below with atomic loads, as the C library changes it).
    let first = unsafe { BlobHeap::init_raw(base, len, g) }.unwrap();
    // SAFETY: as above.
    let second = unsafe { BlobHeap::attach_raw(base, len) }.unwrap();
    let lock = first.lock_ptr();
    assert_eq!(lock, second.lock_ptr());
    let at = lock.as_ptr().addr() - base.as_ptr().addr();
    assert!(
        at > 0 && at < 4096 && at.is_multiple_of(64),
        "lock at offset {at}"
    );
    #[cfg(all(target_os = "linux", target_env = "gnu", not(miri)))]
    {
        // SAFETY: the lock's first word is glibc's futex word: an aligned `int` that the
        // C library changes atomically; we only load it.
        let word = unsafe { &*lock.as_ptr().cast::<AtomicU32>() };
        // SAFETY: gettid has no preconditions.
        let me = unsafe { libc::gettid() } as u32;
        assert_eq!(word.load(Ordering::Acquire), 0);
        let inside = first
            .with_lock(|_| word.load(Ordering::Acquire) & libc::FUTEX_TID_MASK)
            .unwrap();
        assert_eq!(inside, me);
        assert_eq!(word.load(Ordering::Acquire), 0);
    }
    drop(second);
    first.destroy().unwrap();
}

#[test]
fn threads_share_one_handle() {
    let g = geometry(16, 5);
    let mut blob = Blob::for_geometry(g);
    let heap = BlobHeap::init(blob.bytes(), g).unwrap();
    let rounds = if cfg!(miri) { 20 } else { 5_000 };
    std::thread::scope(|scope| {
        for thread in 0..4u64 {
            let heap = &heap;
            scope.spawn(move || {
                let mut live = Vec::new();
                for round in 0..rounds {
                    let tag = thread << 32 | round;
                    if live.len() < 16 && round % 3 != 2 {
                        let block = heap.alloc(16 + (tag as usize * 37) % 300).unwrap();
                        fill(&block, tag);
                        live.push((block, tag));
                    } else if let Some((block, tag)) = live.pop() {
                        assert!(holds(&block, tag), "thread {thread}: block changed");
                        heap.free(block.offset).unwrap();
                    }
                }
                for (block, tag) in live {
                    assert!(holds(&block, tag));
                    heap.free(block.offset).unwrap();
                }
            });
        }
    });
    assert_whole(&heap);
}

#[test]
fn a_waiting_allocation_gets_what_another_thread_frees_or_times_out() {
    let g = geometry(12, 6);
    let mut blob = Blob::for_geometry(g);
    let heap = BlobHeap::init(blob.bytes(), g).unwrap();
    let whole = heap.alloc(4096).unwrap();
    let start = Instant::now();
    assert!(matches!(
        heap.alloc_waiting(64, Duration::from_millis(20)),
        Err(BlobError::Timeout { size: 64, waited }) if waited >= Duration::from_millis(20)
    ));
    assert!(start.elapsed() >= Duration::from_millis(20));
    std::thread::scope(|scope| {
        scope.spawn(|| {
            std::thread::sleep(Duration::from_millis(30));
            heap.free(whole.offset).unwrap();
        });
        let block = heap.alloc_waiting(64, Duration::from_secs(60)).unwrap();
        assert_eq!(block.size, 64);
        heap.free(block.offset).unwrap();
    });
    assert_whole(&heap);
}

/// The seed's recovery scenario, swept: a small block overruns into the free blocks after
/// it, by 1 to 96 bytes of several values. Each case is either detected (the next free
/// asks for recovery, `recover` succeeds, and the free then works) or harmless; either way
/// the heap ends whole, with one top-order block, and sound.
#[test]
fn overruns_into_free_neighbours_are_detected_or_harmless() {
    let g = geometry(10, 5);
    let mut blob = Blob::for_geometry(g);
    let mut detected = 0;
    let lengths = if cfg!(miri) {
        vec![1, 17, 40, 90]
    } else {
        (1..=96).collect()
    };
    for &len in &lengths {
        for byte in [0x00u8, 0xFF, 0x41] {
            let heap = BlobHeap::init(blob.bytes(), g).unwrap();
            // The first block, then its free buddy (32 B), then free blocks of 64 and 128 B...
            let small = heap.alloc(32).unwrap();
            assert_eq!(small.offset, 0);
            let keep = heap.alloc(256).unwrap();
            fill(&keep, 7);
            // SAFETY: the overrun under test; it stays inside the heap's data.
            unsafe {
                small
                    .as_ptr()
                    .cast::<u8>()
                    .as_ptr()
                    .add(small.size)
                    .write_bytes(byte, len)
            };
            match heap.free(small.offset) {
                Ok(()) => {}
                Err(BlobError::RecoveryNeeded {
                    reason: RecoveryReason::CorruptFreeBlock { offset, order },
                }) => {
                    detected += 1;
                    assert!(
                        offset < (small.size + len) as u64,
                        "{offset:#x} order {order}"
                    );
                    assert!(heap.dump_to_string("damaged").contains("recovery: NEEDED"));
                    assert!(matches!(
                        heap.alloc(8),
                        Err(BlobError::RecoveryNeeded { .. })
                    ));
                    heap.recover().unwrap();
                    // The free that found the damage changed nothing: the block is live.
                    heap.free(small.offset).unwrap();
                }
                Err(other) => panic!("overrun of {len} bytes of {byte:#x}: {other}"),
            }
            assert!(holds(&keep, 7), "the live block changed");
            heap.free(keep.offset).unwrap();
            assert_whole(&heap);
            assert_usable(&heap);
        }
    }
    // Overruns past the free blocks' link words are harmless, the others are caught.
    assert!(detected >= lengths.len(), "only {detected} detected");
}

#[test]
fn stats_and_dump_describe_the_heap() {
    let g = geometry(12, 6);
    let mut blob = Blob::for_geometry(g);
    let heap = BlobHeap::init(blob.bytes(), g).unwrap();
    let block = heap.alloc(100).unwrap();
    let stats = heap.stats();
    assert_eq!(
        (stats.total_bytes, stats.allocated_bytes, stats.free_bytes),
        (4096, 128, 3968)
    );
    assert_eq!(stats.utilisation, 128.0 * 100.0 / 4096.0);
    // One free block of each order from 128 B to 2 KiB.
    assert_eq!(
        stats.free_blocks,
        vec![(6, 0), (7, 1), (8, 1), (9, 1), (10, 1), (11, 1), (12, 0)]
    );
    let dump = heap.dump_to_string("Heap info");
    assert!(dump.starts_with("Heap info\n"), "{dump}");
    assert!(
        dump.contains("allocated: 128 bytes in 1 block(s); free: 3968 bytes; utilisation 3.12%"),
        "{dump}"
    );
    assert!(
        dump.contains("order 11 (      2048 B): 1 at 0x800"),
        "{dump}"
    );
    let mut io = Vec::new();
    heap.dump_to_io(&mut io, "Heap info").unwrap();
    assert_eq!(String::from_utf8(io).unwrap(), dump);
    heap.free(block.offset).unwrap();
}

// Two processes. The parent makes a heap in a file and a mailbox block in it; the child
// (this test binary run again) maps the file and attaches.

/// Words at the start of the mailbox block.
const READY: usize = 0;
const PUBLISHED: usize = 1; // + process (0 parent, 1 child)
const DONE: usize = 3; // + process
const HOLDING: usize = 5;
/// Where each process's published offsets start, as u64 words, and how many fit.
const OFFSETS: usize = 8;
const PUBLISHED_MAX: usize = 200;

struct Mailbox(BlobBlock);

impl Mailbox {
    /// A cleared mailbox in a fresh block (which holds whatever its free-list links were).
    fn new(block: BlobBlock) -> Self {
        // SAFETY: the block is live and ours; no other process knows it yet.
        unsafe { block.as_ptr().cast::<u8>().write_bytes(0, block.size) };
        Mailbox(block)
    }

    fn word(&self, index: usize) -> &AtomicU32 {
        // SAFETY: the mailbox block is live for the whole test and large enough; its
        // words are only ever used as atomics.
        unsafe { &*self.0.as_ptr().cast::<AtomicU32>().as_ptr().add(index) }
    }

    fn slot(&self, process: usize, index: usize) -> &AtomicU64 {
        // SAFETY: as in `word`; the offsets area is 8-byte aligned, past the words.
        unsafe {
            &*self
                .0
                .as_ptr()
                .cast::<AtomicU64>()
                .as_ptr()
                .add(OFFSETS + process * (PUBLISHED_MAX + 1) + index)
        }
    }

    /// Publishes `blocks` as `process`'s (count first, then offsets and tags).
    fn publish(&self, process: usize, blocks: &[(u64, u64)]) {
        assert!(2 * blocks.len() < PUBLISHED_MAX);
        self.slot(process, 0)
            .store(blocks.len() as u64, Ordering::Relaxed);
        for (i, &(offset, tag)) in blocks.iter().enumerate() {
            self.slot(process, 1 + 2 * i)
                .store(offset, Ordering::Relaxed);
            self.slot(process, 2 + 2 * i).store(tag, Ordering::Relaxed);
        }
        self.word(PUBLISHED + process).store(1, Ordering::Release);
    }

    fn published(&self, process: usize) -> Vec<(u64, u64)> {
        let count = self.slot(process, 0).load(Ordering::Relaxed) as usize;
        (0..count)
            .map(|i| {
                (
                    self.slot(process, 1 + 2 * i).load(Ordering::Relaxed),
                    self.slot(process, 2 + 2 * i).load(Ordering::Relaxed),
                )
            })
            .collect()
    }

    fn wait_for(&self, index: usize) {
        let start = Instant::now();
        while self.word(index).load(Ordering::Acquire) == 0 {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "gave up waiting for word {index}"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// A heap in a temporary file, mapped shared; the file is removed on drop.
struct FileBlob {
    path: std::path::PathBuf,
    map: memmap2::MmapMut,
}

impl FileBlob {
    fn create(name: &str, g: BlobGeometry) -> Self {
        let path = std::env::temp_dir().join(format!("stratalloc-{name}-{}", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        file.set_len(g.required_size() as u64).unwrap();
        Self::map(path, &file)
    }

    fn open(path: &str) -> Self {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        Self::map(path.into(), &file)
    }

    fn map(path: std::path::PathBuf, file: &std::fs::File) -> Self {
        // SAFETY: the file is this test's own; the processes sharing it touch it only
        // through heap handles, blocks and the mailbox's atomics.
        let map = unsafe { memmap2::MmapMut::map_mut(file) }.unwrap();
        FileBlob { path, map }
    }
}

/// The scenario string for a child: kind, file, mailbox offset.
fn scenario(kind: &str, path: &std::path::Path, mailbox: u64) -> String {
    format!("{kind}|{}|{mailbox}", path.display())
}

/// One process's share of the concurrent workload: allocate and free blocks of random
/// sizes with patterns (verified before each free), then publish the ones still live.
fn churn(heap: &BlobHeap<'_>, process: u64, rounds: u64) -> Vec<(u64, u64)> {
    let mut live: Vec<(BlobBlock, u64)> = Vec::new();
    let mut seed = 0x2545_F491_4F6C_DD1D ^ process;
    for round in 0..rounds {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let tag = process << 40 | round;
        if live.len() < 60 && !seed.is_multiple_of(3) {
            let block = heap.alloc(16 + (seed as usize >> 8) % 3000).unwrap();
            fill(&block, tag);
            live.push((block, tag));
        } else if !live.is_empty() {
            let (block, tag) = live.swap_remove((seed as usize >> 16) % live.len());
            assert!(
                holds(&block, tag),
                "process {process}: block {block:?} changed"
            );
            heap.free(block.offset).unwrap();
        }
    }
    live.iter()
        .map(|(block, tag)| (block.offset, *tag))
        .collect()
}

/// Verifies and frees the blocks another process published.
fn take_over(heap: &BlobHeap<'_>, blocks: &[(u64, u64)]) {
    for &(offset, tag) in blocks {
        let block = heap.block(offset).unwrap();
        assert!(holds(&block, tag), "block at {offset:#x} changed");
        heap.free(offset).unwrap();
    }
}

/// The child side of the two-process tests: does nothing unless started by them.
#[test]
fn child() {
    let Some(scenario) = crate::child_scenario() else {
        return;
    };
    let mut parts = scenario.split('|');
    let (kind, path, mailbox) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap().parse::<u64>().unwrap(),
    );
    let mut blob = FileBlob::open(path);
    if kind == "namespace" {
        return claim_in_another_namespace(&mut blob, mailbox);
    }
    // SAFETY: the parent made the heap in this file with `init`; both processes touch it
    // only through heap handles and their blocks.
    let heap = unsafe { BlobHeap::attach(&mut blob.map) }.unwrap();
    let mailbox = Mailbox(heap.block(mailbox).unwrap());
    match kind {
        "share" => {
            mailbox.wait_for(READY);
            let mine = churn(&heap, 1, 3000);
            mailbox.publish(1, &mine);
            mailbox.wait_for(PUBLISHED);
            take_over(&heap, &mailbox.published(0));
            mailbox.word(DONE + 1).store(1, Ordering::Release);
        }
        "die" => {
            let mine = churn(&heap, 1, 500);
            heap.with_lock(|guard| {
                // One more block, allocated under the lock the child then dies holding.
                let last = guard.alloc(1000).unwrap();
                fill(&last, 99);
                let mut published = mine.clone();
                published.push((last.offset, 99));
                mailbox.publish(1, &published);
                mailbox.word(HOLDING).store(1, Ordering::Release);
                std::thread::sleep(Duration::from_secs(120));
                unreachable!("the parent kills this process");
            })
            .unwrap();
        }
        other => panic!("unknown scenario {other}"),
    }
}

/// The child of the PID namespace test, in a namespace of its own: refused, then claims the
/// heap, attaches, and finds the parent's block at `kept` intact.
fn claim_in_another_namespace(blob: &mut FileBlob, kept: u64) {
    let here = pid_namespace();
    // SAFETY: the parent made the heap in this file with `init` and dropped its handle;
    // this process touches it only through heap handles and their blocks.
    let refused = unsafe { BlobHeap::attach(&mut blob.map) }.unwrap_err();
    assert!(
        matches!(refused, BlobError::OtherPidNamespace { heap, here: h } if h == here && heap != here),
        "{refused:?}"
    );
    // The parent's process, of the heap's namespace, uses it no more until this one ends.
    let heap = claim_and_attach(blob);
    assert!(holds(&heap.block(kept).unwrap(), 5), "the parent's block");
    println!("attached in pid:[{here}] after the claim");
}

/// Claims the heap in `blob` for this process's PID namespace and attaches to it. The
/// PID namespace test calls it only where no process of another namespace uses the heap.
fn claim_and_attach(blob: &mut FileBlob) -> BlobHeap<'_> {
    let (base, len) = (
        std::ptr::NonNull::new(blob.map.as_mut_ptr()).unwrap(),
        blob.map.len(),
    );
    // SAFETY: the heap `init` made in this file, touched only through heap handles and
    // their blocks; no process of another namespace uses it (see above).
    unsafe { BlobHeap::claim_pid_namespace(base, len) }.unwrap();
    // SAFETY: as above.
    unsafe { BlobHeap::attach(&mut blob.map) }.unwrap()
}

fn wait_success(mut child: std::process::Child) {
    let status = child.wait().unwrap();
    assert!(status.success(), "child failed: {status:?}");
}

/// A heap belongs to the PID namespace of the process that made it: a process of another
/// (the test binary again, under `unshare`) is refused with an error naming both, until it
/// claims the heap; then the first namespace is refused, until it claims the heap back.
#[test]
#[cfg(target_os = "linux")]
#[cfg_attr(miri, ignore = "Miri cannot start processes or map files")]
fn a_process_of_another_pid_namespace_must_claim_the_heap() {
    let g = geometry(16, 6);
    let mut blob = FileBlob::create("namespace", g);
    let heap = BlobHeap::init(&mut blob.map, g).unwrap();
    let kept = heap.alloc(100).unwrap();
    fill(&kept, 5);
    drop(heap);
    // A user namespace too, so that no privilege is needed for the PID namespace.
    let output = std::process::Command::new("unshare")
        .args(["--user", "--map-root-user", "--pid", "--fork"])
        .arg(std::env::current_exe().unwrap())
        .args([
            "blob_heap::child",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(
            crate::CHILD_VAR,
            scenario("namespace", &blob.path, kept.offset),
        )
        .output()
        .expect("running the test binary under unshare (util-linux)");
    crate::assert_child_passed(&output, "after the claim");
    // SAFETY: the heap `init` made in this file; the child has ended.
    let refused = unsafe { BlobHeap::attach(&mut blob.map) }.unwrap_err();
    let BlobError::OtherPidNamespace { heap, here } = refused else {
        panic!("{refused:?}")
    };
    assert_eq!(here, pid_namespace());
    assert!(
        refused.to_string().contains(&format!(
            "belongs to processes of PID namespace pid:[{heap}], and this one is in \
             pid:[{here}]"
        )),
        "{refused}"
    );
    // The child's namespace has no process left.
    let heap = claim_and_attach(&mut blob);
    assert!(holds(&heap.block(kept.offset).unwrap(), 5));
    heap.free(kept.offset).unwrap();
    assert_whole(&heap);
    drop(heap);
    std::fs::remove_file(&blob.path).unwrap();
}

#[test]
#[cfg_attr(miri, ignore = "Miri cannot start processes or map files")]
fn two_processes_share_a_heap_in_a_file() {
    let g = BlobGeometry::new(22, 5, 4096).unwrap();
    let mut blob = FileBlob::create("share", g);
    let heap = BlobHeap::init(&mut blob.map, g).unwrap();
    let mailbox = Mailbox::new(heap.alloc(8192).unwrap());
    let child = crate::spawn_child(
        "blob_heap::child",
        &scenario("share", &blob.path, mailbox.0.offset),
    );
    mailbox.word(READY).store(1, Ordering::Release);
    // Both processes allocate and free at the same time.
    let mine = churn(&heap, 0, 3000);
    // The child publishes first and waits for us, so that nobody frees a block while we
    // check that nothing live was handed out twice.
    mailbox.wait_for(PUBLISHED + 1);
    let theirs = mailbox.published(1);
    let mut all: Vec<(u64, usize)> = mine
        .iter()
        .chain(&theirs)
        .map(|&(offset, _)| (offset, heap.block(offset).unwrap().size))
        .collect();
    all.sort_unstable();
    assert!(
        all.windows(2).all(|w| w[0].0 + w[0].1 as u64 <= w[1].0),
        "overlapping blocks"
    );
    mailbox.publish(0, &mine);
    take_over(&heap, &theirs);
    mailbox.wait_for(DONE + 1);
    wait_success(child);
    heap.free(mailbox.0.offset).unwrap();
    assert_whole(&heap);
    assert_eq!(heap.stats().handles, 1, "the child detached");
    drop(heap);
    std::fs::remove_file(&blob.path).unwrap();
}

#[test]
#[cfg_attr(miri, ignore = "Miri cannot start processes or map files")]
fn a_process_killed_holding_the_lock_is_found_and_recovered_from() {
    let g = BlobGeometry::new(22, 5, 4096).unwrap();
    let mut blob = FileBlob::create("die", g);
    let heap = BlobHeap::init(&mut blob.map, g).unwrap();
    let mailbox = Mailbox::new(heap.alloc(8192).unwrap());
    let mine: Vec<(BlobBlock, u64)> = (0..50)
        .map(|i| {
            let block = heap.alloc(100 + i * 40).unwrap();
            fill(&block, 1000 + i as u64);
            (block, 1000 + i as u64)
        })
        .collect();
    let mut child = crate::spawn_child(
        "blob_heap::child",
        &scenario("die", &blob.path, mailbox.0.offset),
    );
    mailbox.wait_for(HOLDING);
    // SAFETY: a signal to our own child process.
    assert_eq!(
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) },
        0
    );
    child.wait().unwrap();
    // The next handle to lock finds the holder's thread gone (after one wait slice);
    // nothing works until recovery.
    let start = Instant::now();
    let error = heap.alloc(10);
    assert!(
        matches!(
            error,
            Err(BlobError::RecoveryNeeded {
                reason: RecoveryReason::LockOrphaned { thread }
            }) if thread != 0
        ),
        "{error:?}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    assert!(matches!(
        heap.recovery_needed(),
        Some(RecoveryReason::LockOrphaned { .. })
    ));
    assert!(matches!(
        heap.free(mine[0].0.offset),
        Err(BlobError::RecoveryNeeded { .. })
    ));
    heap.recover().unwrap();
    // No live block was lost: ours and the child's (the last one included) are intact.
    for (block, tag) in &mine {
        assert!(holds(block, *tag));
        heap.free(block.offset).unwrap();
    }
    let theirs = mailbox.published(1);
    assert!(!theirs.is_empty());
    take_over(&heap, &theirs);
    heap.free(mailbox.0.offset).unwrap();
    assert_whole(&heap);
    assert_usable(&heap);
    drop(heap);
    std::fs::remove_file(&blob.path).unwrap();
}

// ---- the lock: stray and orphaned words, patience ----------------------------------------

/// Where the lock's word sits in the blob: the first `int` of the mutex, which the header
/// places at byte 128.
const LOCK_WORD: usize = 128;

/// A heap over raw memory, so that a test can write into its header while handles use it,
/// as a stray write from another process would. The memory is leaked: a handle stuck in a
/// lock (the failure these tests look for) never sees it go.
struct RawHeap {
    base: std::ptr::NonNull<u8>,
    len: usize,
}

// SAFETY: the memory is leaked, so valid everywhere for ever, and touched only through heap
// handles and `lock_word`'s atomic.
unsafe impl Send for RawHeap {}
// SAFETY: as above.
unsafe impl Sync for RawHeap {}

impl RawHeap {
    fn new(g: BlobGeometry) -> (Self, BlobHeap<'static>) {
        let bytes = Box::leak(Box::new(Blob::for_geometry(g))).bytes();
        let (base, len) = (
            std::ptr::NonNull::from(&mut *bytes).cast::<u8>(),
            bytes.len(),
        );
        // SAFETY: leaked memory, valid for ever; the tests touch it otherwise only through
        // `lock_word`, atomically, as the C library does.
        let heap = unsafe { BlobHeap::init_raw(base, len, g) }.unwrap();
        (RawHeap { base, len }, heap)
    }

    fn attach(&self) -> BlobHeap<'static> {
        // SAFETY: as in `new`; the memory holds the heap `new` made.
        unsafe { BlobHeap::attach_raw(self.base, self.len) }.unwrap()
    }

    fn lock_word(&self) -> &AtomicU32 {
        // SAFETY: the header's lock word: in the blob, aligned, and changed by the heap only
        // with atomic operations.
        unsafe { AtomicU32::from_ptr(self.base.as_ptr().add(LOCK_WORD).cast::<u32>()) }
    }
}

/// Runs `op` on another thread and returns its result, failing the test (instead of hanging
/// it) when it has not returned after five seconds.
fn without_hanging<T: Send + 'static>(op: impl FnOnce() -> T + Send + 'static) -> T {
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || done_tx.send(op()).unwrap());
    done_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the operation still waits for the lock after five seconds")
}

fn this_thread_id() -> u32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() as u32 }
}

#[test]
#[cfg_attr(miri, ignore = "Miri's lock is a spin lock that names no thread")]
fn a_stray_byte_in_the_lock_is_an_error_within_a_second_not_a_hang() {
    let g = geometry(14, 6);
    let (raw, heap) = RawHeap::new(g);
    let mine = heap.alloc(100).unwrap();
    fill(&mine, 7);
    // One stray byte: the word now says "locked by thread 1".
    raw.lock_word().store(1, Ordering::SeqCst);
    let other = std::sync::Arc::new(without_hanging(move || raw.attach()));
    let start = Instant::now();
    let error = without_hanging({
        let other = other.clone();
        move || other.alloc(10).map(|block| block.offset)
    })
    .unwrap_err();
    let waited = start.elapsed();
    assert!(waited < Duration::from_secs(1), "waited {waited:?}");
    if std::path::Path::new("/proc/1").exists() {
        // Thread 1 exists (the PID namespace's init): the heap cannot tell it from a
        // holder that takes its time, and says so after its patience.
        let BlobError::LockUnavailable { holder, waited } = error else {
            panic!("{error:?}");
        };
        assert_eq!(holder, Some(1));
        assert!(waited >= BlobHeap::DEFAULT_LOCK_PATIENCE, "{waited:?}");
        assert_eq!(
            error.to_string(),
            format!(
                "thread 1 still held the heap's lock after {waited:?} (if it does not in fact \
                 hold it, break_lock and recover)"
            )
        );
        for result in [other.free(mine.offset), other.block(mine.offset).map(drop)] {
            assert!(
                matches!(result, Err(BlobError::LockUnavailable { .. })),
                "{result:?}"
            );
        }
        // SAFETY: thread 1 does not hold the lock: this test wrote its id there.
        unsafe { other.break_lock() }.unwrap();
        assert_eq!(
            other.alloc(10),
            Err(BlobError::RecoveryNeeded {
                reason: RecoveryReason::HolderDied
            })
        );
    } else {
        assert_eq!(
            error,
            BlobError::RecoveryNeeded {
                reason: RecoveryReason::LockOrphaned { thread: 1 }
            }
        );
    }
    other.recover().unwrap();
    assert!(holds(&mine, 7));
    heap.free(mine.offset).unwrap();
    assert_usable(&heap);
}

#[test]
#[cfg_attr(miri, ignore = "Miri's lock is a spin lock that names no thread")]
fn a_lock_naming_a_thread_that_exited_is_found_at_attach_and_recovered_from() {
    let g = geometry(14, 6);
    let (raw, heap) = RawHeap::new(g);
    let blocks: Vec<BlobBlock> = (0..20).map(|i| heap.alloc(64 + i * 30).unwrap()).collect();
    for (tag, block) in blocks.iter().enumerate() {
        fill(block, tag as u64);
    }
    // A thread that is gone, named as the holder (as a holder the kernel could not see die
    // would leave it), with the waiters bit another locker would have set.
    let gone = std::thread::spawn(this_thread_id).join().unwrap();
    raw.lock_word()
        .store(gone | libc::FUTEX_WAITERS, Ordering::SeqCst);
    // A handle attaching now sees it at once.
    let start = Instant::now();
    let raw = std::sync::Arc::new(raw);
    let other = std::sync::Arc::new(without_hanging({
        let raw = raw.clone();
        move || raw.attach()
    }));
    let orphaned = RecoveryReason::LockOrphaned { thread: gone };
    assert_eq!(other.recovery_needed(), Some(orphaned));
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(
        orphaned.to_string(),
        format!(
            "the heap's lock named thread {gone}, which no longer exists, as its holder (it \
             died holding the heap's lock, or a stray write named it)"
        )
    );
    assert_eq!(
        heap.alloc(10),
        Err(BlobError::RecoveryNeeded { reason: orphaned })
    );
    heap.recover().unwrap();
    for (tag, block) in blocks.iter().enumerate() {
        assert!(holds(block, tag as u64));
        other.free(block.offset).unwrap();
    }
    assert_usable(&heap);

    // The same, found by an operation rather than by attaching.
    let gone = std::thread::spawn(this_thread_id).join().unwrap();
    raw.lock_word().store(gone, Ordering::SeqCst);
    let start = Instant::now();
    assert_eq!(
        without_hanging({
            let other = other.clone();
            move || other.free(0)
        }),
        Err(BlobError::RecoveryNeeded {
            reason: RecoveryReason::LockOrphaned { thread: gone }
        })
    );
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    other.recover().unwrap();
    assert_usable(&other);
}

#[test]
#[cfg_attr(miri, ignore = "waits on the real clock")]
fn a_live_holder_is_waited_for_up_to_the_patience_then_named() {
    let g = geometry(14, 6);
    let heap = std::sync::Arc::new(RawHeap::new(g).1);
    assert_eq!(heap.lock_patience(), BlobHeap::DEFAULT_LOCK_PATIENCE);
    heap.set_lock_patience(Duration::from_millis(50));
    assert_eq!(heap.lock_patience(), Duration::from_millis(50));
    let (held_tx, held_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let holding = std::thread::spawn({
        let heap = heap.clone();
        move || {
            heap.with_lock(|_guard| {
                held_tx.send(this_thread_id()).unwrap();
                release_rx.recv().unwrap();
            })
            .unwrap();
        }
    });
    let holder = held_rx.recv().unwrap();
    let start = Instant::now();
    let error = without_hanging({
        let heap = heap.clone();
        move || heap.alloc(10).map(|block| block.offset)
    })
    .unwrap_err();
    let BlobError::LockUnavailable {
        holder: named,
        waited,
    } = error
    else {
        panic!("{error:?}");
    };
    assert_eq!(named, Some(holder));
    assert!(waited >= Duration::from_millis(50), "{waited:?}");
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    release_tx.send(()).unwrap();
    holding.join().unwrap();
    // Released: operations work again, and nothing asks for recovery.
    assert_eq!(heap.recovery_needed(), None);
    assert_usable(&heap);
}

/// A shared anonymous map (which forked children see too), unmapped when dropped.
struct SharedMap {
    start: *mut libc::c_void,
    len: usize,
}

impl SharedMap {
    fn new(len: usize) -> Self {
        // SAFETY: a fresh map, which this value alone owns until it unmaps it.
        let start = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(start, libc::MAP_FAILED);
        SharedMap { start, len }
    }

    /// The map's bytes, borrowed from it (so a heap over them ends before the unmap).
    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: `len` mapped bytes, borrowed mutably from their only owner.
        unsafe { std::slice::from_raw_parts_mut(self.start.cast::<u8>(), self.len) }
    }
}

impl Drop for SharedMap {
    fn drop(&mut self) {
        // SAFETY: the map made in `new`, no longer borrowed.
        unsafe { libc::munmap(self.start, self.len) };
    }
}

/// A child forked with a handle holds a copy that was never counted among the heap's
/// handles: dropping it leaves its parent's count, and destroying the heap through it is
/// refused while the parent's handle is attached.
#[test]
#[cfg_attr(miri, ignore = "Miri cannot fork")]
fn a_handle_inherited_by_a_forked_child_is_not_counted() {
    let g = geometry(16, 6);
    let mut map = SharedMap::new(g.required_size());
    let heap = BlobHeap::init(map.bytes(), g).unwrap();
    for destroy in [false, true] {
        // SAFETY: the child makes no allocation and leaves with `_exit`.
        let child = unsafe { libc::fork() };
        if child == 0 {
            let refused = if destroy {
                matches!(heap.destroy(), Err(BlobError::StillAttached { handles: 1 }))
            } else {
                drop(heap);
                true
            };
            // SAFETY: leaves the child at once, running nothing of the parent's.
            unsafe { libc::_exit(if refused { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: waits for our own child.
        assert_eq!(unsafe { libc::waitpid(child, &mut status, 0) }, child);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "the child destroyed the heap under its parent (status {status:#x})"
        );
        assert_eq!(
            heap.stats().handles,
            1,
            "after the child's {}",
            if destroy { "destroy" } else { "drop" }
        );
    }
    assert_whole(&heap);
    heap.destroy().unwrap();
}

/// A process forked inside `with_lock` copies the guard, not the holding: the child's
/// operations through it fail with `LockLost`, and its guard's end (when its closure
/// returns) leaves the parent's lock held, so the parent goes on under it.
#[test]
#[cfg_attr(miri, ignore = "Miri cannot fork")]
fn a_guard_copied_into_a_forked_child_does_not_hold_the_lock() {
    let g = geometry(16, 6);
    let mut map = SharedMap::new(g.required_size());
    let heap = BlobHeap::init(map.bytes(), g).unwrap();
    let (child, in_parent) = heap
        .with_lock(|guard| {
            // SAFETY: the child makes no allocation and leaves with `_exit` right after
            // `with_lock` returns.
            let child = unsafe { libc::fork() };
            if child == 0 {
                let lost = matches!(guard.alloc(64), Err(BlobError::LockLost));
                return (0, lost);
            }
            let mut status = 0;
            // SAFETY: waits for our own child.
            assert_eq!(unsafe { libc::waitpid(child, &mut status, 0) }, child);
            assert!(
                libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
                "the child's guard still worked (status {status:#x})"
            );
            // The child's guard ended before it exited: the lock is still this thread's.
            let block = guard.alloc(64).expect("the parent still holds the lock");
            guard.free(block.offset).unwrap();
            (child, true)
        })
        .unwrap();
    if child == 0 {
        // SAFETY: leaves the child at once, running nothing of the parent's.
        unsafe { libc::_exit(if in_parent { 0 } else { 1 }) };
    }
    assert!(in_parent);
    assert_whole(&heap);
}
