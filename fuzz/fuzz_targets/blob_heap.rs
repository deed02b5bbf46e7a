//! Fuzz target: `BlobHeap` (src/blob_heap/) with fuzzed geometry and two handles: alloc,
//! free, block, stats, dump, with_lock, alloc_waiting, reattaching, bogus and repeated
//! offsets, overruns into free memory, a holder dying with the header's lists, counts and
//! bitmaps half written, damaged identity fields at attach, stray bytes in the lock word
//! (issue 23), and recovery.
//!
//! Property: a live block is never handed out again, and the heap never changes its bytes
//! (its pattern is verified after every recovery and before every free); every offset that
//! is not the start of a live block is an error; a block is aligned to its size, as large as
//! asked and no larger than the next power of two; the heap is out of memory only when no
//! aligned free range of the size is left; overruns into free memory and a dead holder are
//! reported as `RecoveryNeeded` (nothing else fails) until `recover`, which keeps every live
//! block and makes the counts exact again; `attach` refuses every damaged identity field;
//! with a stray lock word, attach and the next operation come back within 2 s, with a
//! block or an error naming the state (`LockUnavailable`, `AlreadyLocked`, or
//! `RecoveryNeeded` for a holder that died or is gone), never hang.
#![no_main]
#![deny(clippy::undocumented_unsafe_blocks)]

use std::collections::{BTreeMap, BTreeSet};
use std::ptr::NonNull;
use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use stratalloc::blob_heap::{BlobError, BlobGeometry, BlobHeap, RecoveryReason};
use stratalloc_fuzz::programs::BlobOp;
use stratalloc_fuzz::{Bytes, decode_ops, fill, verify};

/// How long an operation waits for a lock that a live thread seems to hold (a stray lock
/// word may name any thread that exists), so that a program stays short.
const PATIENCE: Duration = Duration::from_millis(1);
/// The most an operation may take when the lock word is damaged: a few of the lock's
/// 20 ms slices, with room for a loaded machine.
const LOCK_BOUND: Duration = Duration::from_secs(2);
/// The most lock words a program damages (each costs a slice or two of the lock's waits):
/// later `Lock` ops are skipped, so that no program comes near the fuzzer's timeout.
const MOST_LOCK_DAMAGES: u32 = 3;

// The header's layout (`Header` in src/blob_heap/mod.rs), checked against the heap at the
// start of every run (`check_layout`): a change there fails loudly here.
/// `recovery: AtomicU32`.
const RECOVERY_AT: usize = 20;
/// `handles: AtomicU32`, left alone (the model counts handles).
const HANDLES_AT: usize = 28;
/// `alignment: AtomicU64`.
const ALIGNMENT_AT: usize = 40;
/// `lock: BlobLock`, 64 bytes, 64-aligned; on Linux with glibc its first 4 bytes are the
/// mutex's lock word (holder's thread id, waiters and owner-died bits), the only part of
/// it that the lock checks (issue 23; its other bytes must be left alone, see
/// `BlobHeap::attach`'s safety section).
const LOCK_AT: usize = 128;
const LOCK_BYTES: usize = 64;
const LOCK_WORD_BYTES: usize = 4;
/// `size_of::<Header>()` rounded to 64: where the first bitmap starts.
const MAPS_AT: usize = 704;
/// `id` and `pid_namespace: AtomicU64`, after the lock and the 29 list heads and 29
/// counts (`[AtomicU64; MOST_ORDERS]` each): the heap's identity, which no holder writes
/// (`attach` checks the namespace).
const IDENTITY_AT: usize = LOCK_AT + LOCK_BYTES + 2 * 29 * 8;
/// `RECOVERY_HOLDER_DIED`.
const HOLDER_DIED: u32 = 2;

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(shape) = <[u8; 4]>::arbitrary(&mut u) else {
        return;
    };
    let ops: Vec<BlobOp> = decode_ops(&mut u);
    if stratalloc_fuzz::tracing() {
        eprintln!("shape {shape:?}");
    }
    run(shape, &ops);
});

/// A blob: 64-byte lines, so that it starts on a 64-byte boundary.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Line([u8; 64]);

/// Where each order's bitmaps lie, as `BlobGeometry::maps` lays them out.
struct Maps {
    min: u32,
    max: u32,
    /// Byte offsets of the live bitmap of each order, from `min`.
    live: Vec<usize>,
    /// One past the last bitmap byte.
    end: usize,
    /// Where the data starts.
    data: usize,
}

impl Maps {
    fn new(g: BlobGeometry) -> Self {
        let (min, max) = (g.min_order(), g.max_order());
        let mut at = MAPS_AT;
        let mut live = Vec::new();
        for order in min..=max {
            let words = (1usize << (max - order)).div_ceil(64);
            live.push(at + words * 8);
            at += 2 * words * 8;
        }
        // After the bitmaps, an 8-byte stamp per smallest block, then the data.
        let stamps_end = at + (1usize << (max - min)) * 8;
        Maps {
            min,
            max,
            live,
            end: at,
            data: stamps_end.next_multiple_of(g.alignment().max(64)),
        }
    }
}

/// What the program knows of the heap.
struct Model {
    base: NonNull<u8>,
    len: usize,
    maps: Maps,
    heap_bytes: u64,
    /// Live blocks the program allocated: offset -> (order, fill byte).
    live: BTreeMap<u64, (u32, u8)>,
    /// Blocks the live bitmaps hold that are not (or no longer) the program's: a dying
    /// holder's half-written bitmap made them. Never freed; never handed out again.
    foreign: BTreeSet<(u64, u32)>,
    /// Offsets freed and not handed out since.
    freed: Vec<u64>,
    /// A byte of free memory was overwritten since the last recovery (so damage may be
    /// found by the next operation).
    overrun: bool,
    /// A holder died since the last recovery: the counts are not to be trusted.
    died: bool,
    /// The lock word was damaged since the last recovery: the heap may ask for recovery
    /// because its holder died or is gone.
    lock_hit: bool,
    /// Lock words damaged so far.
    lock_damages: u32,
    bytes: Bytes,
}

impl Model {
    /// Whether `start..end` of the heap meets a live block (the program's or foreign).
    fn meets(&self, start: u64, end: u64) -> Option<(u64, u64)> {
        if let Some((&o, &(order, _))) = self.live.range(..end).next_back()
            && o + (1 << order) > start
        {
            return Some((o, o + (1 << order)));
        }
        self.foreign
            .iter()
            .map(|&(o, order)| (o, o + (1 << order)))
            .find(|&(s, e)| s < end && e > start)
    }

    fn is_live_start(&self, offset: u64) -> bool {
        self.live.contains_key(&offset) || self.foreign.iter().any(|&(o, _)| o == offset)
    }

    /// The block's bytes in the blob.
    fn block_ptr(&self, offset: u64) -> *mut u8 {
        // SAFETY: offsets of blocks lie in the heap, inside the blob.
        unsafe { self.base.as_ptr().add(self.maps.data + offset as usize) }
    }

    fn verify_all(&self, when: &str) {
        for (&offset, &(order, byte)) in &self.live {
            // SAFETY: a live block of the program: `1 << order` bytes inside the blob.
            unsafe { verify(when, self.block_ptr(offset), 1 << order, byte) };
        }
    }

    /// The first bytes of every live block: where the heap writes a free block's links.
    fn verify_heads(&self, when: &str) {
        for (&offset, &(order, byte)) in &self.live {
            // SAFETY: as in `verify_all`, fewer bytes.
            unsafe { verify(when, self.block_ptr(offset), (1 << order).min(32), byte) };
        }
    }

    /// Reads the live bitmaps: every `(offset, order)` they hold.
    fn live_bits(&self) -> BTreeSet<(u64, u32)> {
        let mut set = BTreeSet::new();
        for order in self.maps.min..=self.maps.max {
            let map = self.maps.live[(order - self.maps.min) as usize];
            for bit in 0..1usize << (self.maps.max - order) {
                // SAFETY: the bitmap lies inside the blob's first `maps.end` bytes.
                let byte = unsafe { self.base.as_ptr().add(map + bit / 8).read() };
                if byte >> (bit % 8) & 1 == 1 {
                    set.insert(((bit as u64) << order, order));
                }
            }
        }
        set
    }

    /// After the bitmaps were overwritten: the program's blocks that the live bitmaps no
    /// longer hold are lost (the heap may hand their memory out after recovery), blocks the
    /// bitmaps hold besides the program's are foreign, and so are the program's that meet
    /// a foreign one.
    fn resync(&mut self) {
        let bits = self.live_bits();
        self.live
            .retain(|&o, &mut (order, _)| bits.contains(&(o, order)));
        self.foreign = bits
            .iter()
            .copied()
            .filter(|&(o, order)| self.live.get(&o).is_none_or(|&(k, _)| k != order))
            .collect();
        let meeting: Vec<(u64, u32)> = self
            .live
            .iter()
            .filter(|&(&o, &(order, _))| {
                self.foreign
                    .iter()
                    .any(|&(f, fo)| f < o + (1 << order) && f + (1 << fo) > o)
            })
            .map(|(&o, &(order, _))| (o, order))
            .collect();
        for (o, order) in meeting {
            self.live.remove(&o);
            self.foreign.insert((o, order));
        }
        self.freed.retain(|&o| !bits.iter().any(|&(b, _)| b == o));
    }

    /// Whether some aligned range of `1 << order` bytes meets no live block.
    fn has_room(&self, order: u32) -> bool {
        (0..self.heap_bytes >> order).any(|i| {
            let start = i << order;
            self.meets(start, start + (1 << order)).is_none()
        })
    }

    fn check_stats(&self, heap: &BlobHeap<'_>) {
        let stats = heap.stats();
        assert_eq!(stats.handles, 2, "handles counted");
        if self.died {
            return;
        }
        let blocks = self.live.len() as u64 + self.foreign.len() as u64;
        let bytes: u64 = self.live.values().map(|&(o, _)| 1u64 << o).sum::<u64>()
            + self.foreign.iter().map(|&(_, o)| 1u64 << o).sum::<u64>();
        assert_eq!(stats.live_blocks, blocks, "live blocks counted: {stats:?}");
        assert_eq!(
            stats.allocated_bytes as u64, bytes,
            "bytes counted: {stats:?}"
        );
        assert_eq!(stats.total_bytes as u64, self.heap_bytes);
        let free: u64 = stats.free_blocks.iter().map(|&(o, n)| n << o).sum();
        if heap.recovery_needed().is_none() {
            // Foreign blocks may nest (a half-written bitmap); the free lists cover what no
            // live block covers.
            let mut extents: Vec<(u64, u64)> = self
                .live
                .iter()
                .map(|(&o, &(order, _))| (o, o + (1 << order)))
                .chain(self.foreign.iter().map(|&(o, order)| (o, o + (1 << order))))
                .collect();
            extents.sort_unstable();
            let (mut covered, mut reach) = (0, 0);
            for (s, e) in extents {
                covered += e.saturating_sub(s.max(reach));
                reach = reach.max(e);
            }
            assert_eq!(
                free + covered,
                self.heap_bytes,
                "free lists plus live: {stats:?}"
            );
        }
    }
}

/// The geometry the first bytes ask for: smallest block 32 B..1 KiB, heap up to 1 MiB.
fn geometry(shape: [u8; 4]) -> BlobGeometry {
    let min = 5 + u32::from(shape[0]) % 6;
    let max = min + u32::from(shape[1]) % (21 - min);
    let alignment = 8usize << (shape[2] % 10);
    match BlobGeometry::new(max, min, alignment) {
        Ok(g) => g,
        Err(e) => {
            assert!(alignment > 1 << max, "{max}, {min}, {alignment}: {e}");
            assert!(matches!(e, BlobError::AlignmentAboveHeap { .. }), "{e}");
            BlobGeometry::new(max, min, 8).expect("a valid geometry")
        }
    }
}

fn run(shape: [u8; 4], ops: &[BlobOp]) {
    // Raw geometries are errors or heaps, never a panic.
    let _ = BlobGeometry::new(
        u32::from(shape[0]),
        u32::from(shape[1]),
        usize::from(shape[2]),
    );
    let g = geometry(shape);
    let len = g.required_size() + usize::from(shape[3]) * 8;
    let mut memory = vec![Line([0xA5; 64]); len.div_ceil(64)];
    let base = NonNull::new(memory.as_mut_ptr().cast::<u8>()).expect("a Vec's pointer");
    // A blob one byte short is refused.
    // SAFETY: the blob is ours, and no handle uses it.
    let short = unsafe { BlobHeap::init_raw(base, g.required_size() - 1, g) };
    assert!(matches!(short, Err(BlobError::BlobTooSmall { .. })));
    // SAFETY: `memory` outlives every handle (dropped at the end of this function, after
    // them), and nothing but the handles and this program's checked writes touches it.
    let first = unsafe { BlobHeap::init_raw(base, len, g) }.expect("init");
    // SAFETY: as above; the blob holds the heap `init_raw` just made.
    let second = unsafe { BlobHeap::attach_raw(base, len) }.expect("attach");
    first.set_lock_patience(PATIENCE);
    second.set_lock_patience(PATIENCE);
    let mut handles = [Some(first), Some(second)];
    let mut m = Model {
        base,
        len,
        maps: Maps::new(g),
        heap_bytes: g.heap_bytes() as u64,
        live: BTreeMap::new(),
        foreign: BTreeSet::new(),
        freed: Vec::new(),
        overrun: false,
        died: false,
        lock_hit: false,
        lock_damages: 0,
        bytes: Bytes::default(),
    };
    check_layout(&m, handles[0].as_ref().expect("a handle"));
    for op in ops {
        if stratalloc_fuzz::tracing() {
            eprintln!("{op:?}");
        }
        step(&mut m, &mut handles, g, op);
    }
    let heap = handles[0].take().expect("a handle");
    if heap.recovery_needed().is_some() {
        heap.recover().expect("recover");
        m.overrun = false;
        m.died = false;
        m.lock_hit = false;
    }
    m.verify_all("at the end");
    m.check_stats(&heap);
    let offsets: Vec<u64> = m.live.keys().copied().collect();
    for offset in offsets {
        if let Err(e) = heap.free(offset) {
            // An overrun the heap had not met yet.
            allowed(&m, &heap, "free at the end", e, false);
            heap.recover().expect("recover");
            heap.free(offset).expect("free after recover");
        }
    }
    drop(heap);
    drop(handles);
    // SAFETY: as above.
    let last = unsafe { BlobHeap::attach_raw(base, len) }.expect("attach at the end");
    last.destroy().expect("the only handle destroys the heap");
    // SAFETY: as above: the blob no longer holds a heap.
    let gone = unsafe { BlobHeap::attach_raw(base, len) };
    assert!(matches!(gone, Err(BlobError::NotAHeap { .. })));
    drop(memory);
}

/// The hardcoded layout agrees with the heap: the data starts where `Maps` says, and a new
/// heap's bitmaps hold one free block of the largest order and nothing else.
fn check_layout(m: &Model, heap: &BlobHeap<'_>) {
    let bytes = |range: std::ops::Range<usize>| {
        // SAFETY: inside the blob's metadata.
        unsafe { std::slice::from_raw_parts(m.base.as_ptr().add(range.start), range.len()) }
    };
    let ones: u32 = bytes(MAPS_AT..m.maps.end)
        .iter()
        .map(|b| b.count_ones())
        .sum();
    assert_eq!(ones, 1, "the bitmaps of a new heap: the layout changed");
    let last_free = m.maps.end - 2 * 8;
    assert_eq!(
        bytes(last_free..last_free + 1)[0],
        1,
        "the largest order's free bitmap"
    );
    assert_eq!(
        u32::from_le_bytes(bytes(RECOVERY_AT..RECOVERY_AT + 4).try_into().expect("4")),
        0
    );
    assert_eq!(
        u32::from_le_bytes(bytes(HANDLES_AT..HANDLES_AT + 4).try_into().expect("4")),
        2,
        "the handle count: the layout changed"
    );
    let alignment =
        u64::from_le_bytes(bytes(ALIGNMENT_AT..ALIGNMENT_AT + 8).try_into().expect("8"));
    assert_eq!(
        alignment,
        heap.geometry().alignment() as u64,
        "the layout changed"
    );
    let word = |at: usize| u64::from_le_bytes(bytes(at..at + 8).try_into().expect("8"));
    assert_eq!(word(IDENTITY_AT), heap.id(), "the heap's id: the layout changed");
    assert_eq!(
        word(IDENTITY_AT + 8),
        stratalloc::blob_heap::pid_namespace(),
        "the PID namespace: the layout changed"
    );
    let block = heap.alloc(0).expect("a first block");
    assert_eq!(block.offset, 0);
    assert_eq!(
        block.as_ptr().cast::<u8>().as_ptr(),
        m.block_ptr(0),
        "the data's offset: the layout changed"
    );
    heap.free(0).expect("free");
}

/// Checks an error an operation returned where the program expected none but damage may
/// have been found.
fn allowed(m: &Model, heap: &BlobHeap<'_>, what: &str, e: BlobError, before: bool) {
    match e {
        BlobError::RecoveryNeeded { reason } => {
            let expected = match reason {
                RecoveryReason::HolderDied => m.died || m.lock_hit,
                RecoveryReason::LockOrphaned { .. } => m.lock_hit,
                RecoveryReason::CorruptFreeBlock { .. } => m.overrun || before,
            };
            assert!(expected, "{what}: {e} with no damage done");
            assert!(heap.recovery_needed().is_some(), "{what}: {e} unrecorded");
        }
        e => panic!("{what}: unexpected {e:?}"),
    }
}

fn handle<'h, 'a>(handles: &'h [Option<BlobHeap<'a>>; 2], second: bool) -> &'h BlobHeap<'a> {
    handles[usize::from(second)].as_ref().expect("a handle")
}

/// Records a block the heap handed out for `size` bytes, after checking it.
fn took(m: &mut Model, what: &str, size: usize, offset: u64, block_size: usize, ptr: *mut u8) {
    let order = block_size.trailing_zeros();
    assert!(
        block_size.is_power_of_two() && order >= m.maps.min,
        "{what}: size {block_size}"
    );
    assert!(block_size >= size, "{what}: {block_size} bytes for {size}");
    assert!(
        block_size / 2 < size.max(1) || order == m.maps.min,
        "{what}: {block_size} bytes for {size}"
    );
    assert!(
        offset.is_multiple_of(block_size as u64),
        "{what}: offset {offset:#x}"
    );
    assert!(
        offset + block_size as u64 <= m.heap_bytes,
        "{what}: offset {offset:#x}"
    );
    assert_eq!(ptr, m.block_ptr(offset), "{what}: the block's address");
    if let Some((s, e)) = m.meets(offset, offset + block_size as u64) {
        panic!("{what}: {offset:#x} (+{block_size}) handed out again: live {s:#x}..{e:#x}");
    }
    let byte = m.bytes.fresh();
    // SAFETY: a fresh block of `block_size` bytes inside the blob.
    unsafe { fill(ptr, block_size, byte) };
    m.live.insert(offset, (order, byte));
    m.freed
        .retain(|&o| o < offset || o >= offset + block_size as u64);
}

/// An allocation's outcome, checked.
fn allocated(
    m: &mut Model,
    heap: &BlobHeap<'_>,
    what: &str,
    size: usize,
    got: Result<stratalloc::blob_heap::BlobBlock, BlobError>,
    before: bool,
) {
    match got {
        Ok(block) => {
            assert!(!before, "{what}: allocated while the heap needs recovery");
            took(
                m,
                what,
                size,
                block.offset,
                block.size,
                block.as_ptr().cast::<u8>().as_ptr(),
            );
            m.verify_heads(what);
        }
        Err(BlobError::TooLarge { .. }) => assert!(size as u64 > m.heap_bytes, "{what}"),
        Err(BlobError::OutOfMemory { .. } | BlobError::Timeout { .. }) if !before => {
            let order = size
                .max(1)
                .next_power_of_two()
                .trailing_zeros()
                .max(m.maps.min);
            assert!(
                !m.has_room(order),
                "{what}: out of memory for {size} with room left"
            );
        }
        Err(e) => allowed(m, heap, what, e, before),
    }
}

fn step(m: &mut Model, handles: &mut [Option<BlobHeap<'_>>; 2], g: BlobGeometry, op: &BlobOp) {
    let heap_bytes = m.heap_bytes;
    let size_of = |size: u32| (u64::from(size) % (2 * heap_bytes + 1)) as usize;
    // Whether the heap asked for recovery before this operation.
    let before = handle(handles, false).recovery_needed().is_some();
    match *op {
        BlobOp::Alloc { second, size } => {
            let heap = handle(handles, second);
            let size = size_of(size);
            let got = heap.alloc(size);
            allocated(m, heap, "alloc", size, got, before);
        }
        BlobOp::AllocWaiting { size } => {
            let heap = handle(handles, false);
            let size = size_of(size);
            let got = heap.alloc_waiting(size, Duration::ZERO);
            allocated(m, heap, "alloc_waiting", size, got, before);
        }
        BlobOp::WithLock { size } => {
            let heap = handle(handles, false);
            let size = size_of(size);
            let (got, inner) = heap
                .with_lock(|guard| (guard.alloc(size), heap.free(0)))
                .expect("with_lock");
            assert_eq!(
                inner,
                Err(BlobError::AlreadyLocked),
                "a call under the lock"
            );
            allocated(m, heap, "alloc under with_lock", size, got, before);
        }
        BlobOp::Free { second, pick } => {
            let heap = handle(handles, second);
            let Some((&offset, &(order, byte))) = m.live.iter().nth(pick_in(pick, m.live.len()))
            else {
                return;
            };
            // SAFETY: a live block of the program.
            unsafe { verify("before free", m.block_ptr(offset), 1 << order, byte) };
            match heap.free(offset) {
                Ok(()) => {
                    assert!(!before, "freed while the heap needs recovery");
                    m.live.remove(&offset);
                    m.freed.push(offset);
                    m.verify_heads("free");
                }
                Err(e) => allowed(m, heap, "free", e, before),
            }
        }
        BlobOp::Block { second, pick } => {
            let heap = handle(handles, second);
            let Some((&offset, &(order, _))) = m.live.iter().nth(pick_in(pick, m.live.len()))
            else {
                return;
            };
            let block = heap.block(offset).expect("block of a live block");
            assert_eq!((block.offset, block.size), (offset, 1 << order));
            assert_eq!(block.as_ptr().cast::<u8>().as_ptr(), m.block_ptr(offset));
        }
        BlobOp::BogusFree { second, offset } | BlobOp::BogusBlock { second, offset } => {
            let offset = u64::from(offset) % (2 * heap_bytes);
            if m.is_live_start(offset) {
                return;
            }
            let heap = handle(handles, second);
            let free = matches!(op, BlobOp::BogusFree { .. });
            bogus(m, heap, offset, free, before);
        }
        BlobOp::FreeAgain { second, pick } => {
            let Some(&offset) = m.freed.get(pick_in(pick, m.freed.len())) else {
                return;
            };
            if m.is_live_start(offset) {
                return;
            }
            bogus(m, handle(handles, second), offset, true, before);
        }
        BlobOp::Stats => m.check_stats(handle(handles, false)),
        BlobOp::Dump => {
            let heap = handle(handles, false);
            let dump = heap.dump_to_string("fuzz");
            assert_eq!(dump.contains("recovery: NEEDED"), before, "{dump}");
        }
        BlobOp::Recover { second } => {
            let heap = handle(handles, second);
            match heap.recover() {
                Ok(()) => {
                    assert!(before, "recovered a heap that did not ask for it");
                    m.overrun = false;
                    m.died = false;
                    m.lock_hit = false;
                    assert_eq!(heap.recovery_needed(), None);
                    m.verify_all("after recover");
                    m.check_stats(heap);
                }
                Err(BlobError::NoRecoveryNeeded) => assert!(!before, "recover refused"),
                Err(e) => panic!("recover: {e:?}"),
            }
        }
        BlobOp::Reattach { second } => {
            handles[usize::from(second)] = None;
            // SAFETY: the blob holds the heap, and outlives the handle (see `run`).
            let again = unsafe { BlobHeap::attach_raw(m.base, m.len) }.expect("reattach");
            assert_eq!(again.geometry(), g);
            again.set_lock_patience(PATIENCE);
            handles[usize::from(second)] = Some(again);
        }
        BlobOp::Overrun { target, at, byte } => {
            let offset = ((u64::from(target) << m.maps.min) + u64::from(at % 32)) % heap_bytes;
            if m.meets(offset, offset + 1).is_some() {
                return;
            }
            // SAFETY: a byte of free memory in the heap, which the program may damage (as an
            // overrun from a neighbour would): the heap must find it, not be fooled.
            unsafe { m.block_ptr(offset).write(byte) };
            m.overrun = true;
        }
        BlobOp::HolderDied { at, bytes } => {
            // The header's words a holder changes (not the identity fields, the handle count
            // or the lock), then the bitmaps.
            let ranges = [
                RECOVERY_AT..HANDLES_AT,
                32..ALIGNMENT_AT,
                48..LOCK_AT,
                LOCK_AT + LOCK_BYTES..IDENTITY_AT,
                IDENTITY_AT + 16..m.maps.end,
            ];
            let total: usize = ranges.iter().map(|r| r.len()).sum();
            for (&a, &b) in at.iter().zip(&bytes) {
                let mut pos = usize::from(a) * 7 % total;
                for r in &ranges {
                    if pos < r.len() {
                        pos += r.start;
                        break;
                    }
                    pos -= r.len();
                }
                // SAFETY: a byte of the blob's metadata, which only this thread's handles
                // use (none of them holds the lock).
                unsafe { m.base.as_ptr().add(pos).write(b) };
            }
            let recovery = m.base.as_ptr().wrapping_add(RECOVERY_AT).cast::<u32>();
            // SAFETY: the header's recovery word, 4-aligned in the 64-aligned blob.
            unsafe { recovery.write(HOLDER_DIED) };
            m.died = true;
            m.resync();
        }
        BlobOp::BadAttach { field, value } => bad_attach(m, handles, g, field, value),
        BlobOp::Lock { at, byte } => damage_lock(m, handles, at, byte, before),
    }
}

fn pick_in(pick: u16, len: usize) -> usize {
    if len == 0 { 0 } else { usize::from(pick) % len }
}

/// `free` (or `block`) of an offset where no live block starts: an error naming it.
fn bogus(m: &Model, heap: &BlobHeap<'_>, offset: u64, free: bool, before: bool) {
    let got = if free {
        heap.free(offset)
    } else {
        heap.block(offset).map(|_| ())
    };
    match got {
        Ok(()) => panic!(
            "{} of the bogus offset {offset:#x} succeeded",
            if free { "free" } else { "block" }
        ),
        Err(BlobError::NotLive { offset: o }) => {
            assert_eq!(o, offset);
            assert!(offset < m.heap_bytes);
        }
        Err(BlobError::OffsetOutOfRange { offset: o, .. }) => {
            assert_eq!(o, offset);
            assert!(offset >= m.heap_bytes);
        }
        Err(e @ BlobError::RecoveryNeeded { .. }) if free => {
            allowed(m, heap, "bogus free", e, before)
        }
        Err(e) => panic!("bogus offset {offset:#x}: unexpected {e:?}"),
    }
}

/// Overwrites one identity field of the header, checks that `attach` refuses it (or, for a
/// value that is valid after all, attaches), that the handles see a destroyed heap while
/// the magic word is wrong, and puts the field back.
fn bad_attach(
    m: &Model,
    handles: &[Option<BlobHeap<'_>>; 2],
    g: BlobGeometry,
    field: u8,
    value: u32,
) {
    let field = field % 7;
    let (at, width) = match field {
        0 => (0, 8),
        1 => (8, 4),
        2 => (12, 4),
        3 => (16, 4),
        4 => (ALIGNMENT_AT, 8),
        5 => (IDENTITY_AT + 8, 8),
        _ => (0, 0),
    };
    let mut saved = [0u8; 8];
    // SAFETY: the header's first bytes, inside the blob.
    let field_bytes = unsafe { std::slice::from_raw_parts_mut(m.base.as_ptr().add(at), width) };
    saved[..width].copy_from_slice(field_bytes);
    let mut value_bytes = [0u8; 8];
    value_bytes[..4].copy_from_slice(&value.to_le_bytes());
    field_bytes.copy_from_slice(&value_bytes[..width]);
    let len = if width == 0 {
        usize::try_from(value).unwrap_or(usize::MAX) % m.len
    } else {
        m.len
    };
    let read32 = |at: usize| {
        // SAFETY: a header word inside the blob, 4-aligned.
        unsafe { m.base.as_ptr().add(at).cast::<u32>().read() }
    };
    // SAFETY: the blob outlives the handle; its lock bytes are the heap's own.
    let got = unsafe { BlobHeap::attach_raw(m.base, len) };
    // SAFETY: as `read32`, 8-aligned.
    let magic = unsafe { m.base.as_ptr().cast::<u64>().read() };
    // SAFETY: as above.
    let alignment = unsafe { m.base.as_ptr().add(ALIGNMENT_AT).cast::<u64>().read() };
    let expected = if field == 0 && magic != u64::from_le_bytes(*b"stratBLB") {
        Err("NotAHeap")
    } else if read32(8) != stratalloc::blob_heap::BLOB_VERSION {
        Err("VersionMismatch")
    } else {
        match usize::try_from(alignment)
            .ok()
            .and_then(|a| BlobGeometry::new(read32(12), read32(16), a).ok())
        {
            None => Err("BadGeometry"),
            Some(_) if other_namespace(m) => Err("OtherPidNamespace"),
            Some(geometry) if len < geometry.required_size() || len < MAPS_AT => {
                Err("BlobTooSmall")
            }
            Some(geometry) => Ok(geometry),
        }
    };
    match (&got, expected) {
        (Ok(heap), Ok(geometry)) => assert_eq!(heap.geometry(), geometry),
        (Err(e), Err(name)) => assert!(format!("{e:?}").starts_with(name), "{e:?}, not {name}"),
        (got, expected) => {
            panic!("attach with field {field} = {value:#x}: {got:?}, expected {expected:?}")
        }
    }
    drop(got);
    if field == 0 && magic != u64::from_le_bytes(*b"stratBLB") {
        let heap = handle(handles, false);
        assert_eq!(heap.alloc(1).map(|_| ()), Err(BlobError::Destroyed));
        assert_eq!(heap.free(0), Err(BlobError::Destroyed));
        let _ = heap.dump_to_string("destroyed");
    }
    // SAFETY: as above.
    let field_bytes = unsafe { std::slice::from_raw_parts_mut(m.base.as_ptr().add(at), width) };
    field_bytes.copy_from_slice(&saved[..width]);
    let _ = g;
}

/// Whether the header names a PID namespace other than this process's (0, on either side,
/// names none).
fn other_namespace(m: &Model) -> bool {
    // SAFETY: the header's namespace word, 8-aligned in the 64-aligned blob.
    let recorded = unsafe { m.base.as_ptr().add(IDENTITY_AT + 8).cast::<u64>().read() };
    let here = stratalloc::blob_heap::pid_namespace();
    recorded != here && recorded != 0 && here != 0
}

/// Writes a stray byte into the lock word (issue 23: "locked by thread 1" hung every
/// operation): an attach and the next operation must each come back within `LOCK_BOUND`,
/// with a block (the word is still free), or an error that names the state. Then the lock
/// is put right as a user would: `break_lock` when a live thread seems to hold it, and the
/// heap waits for `recover` (a later op).
fn damage_lock(m: &mut Model, handles: &[Option<BlobHeap<'_>>; 2], at: u8, byte: u8, before: bool) {
    if m.lock_damages == MOST_LOCK_DAMAGES {
        return;
    }
    m.lock_damages += 1;
    let pos = LOCK_AT + usize::from(at) % LOCK_WORD_BYTES;
    // SAFETY: a byte of the lock word, which no handle holds now (every handle is this
    // thread's, and none is inside an operation).
    unsafe { m.base.as_ptr().add(pos).write(byte) };
    // SAFETY: the lock word, 4-aligned in the 64-aligned blob.
    let word = unsafe { m.base.as_ptr().add(LOCK_AT).cast::<u32>().read() };
    let start = std::time::Instant::now();
    // SAFETY: the blob holds the heap and outlives the handle; only the lock word (which
    // the lock checks) was written.
    let third = unsafe { BlobHeap::attach_raw(m.base, m.len) }.expect("attach");
    let attached = start.elapsed();
    assert!(
        attached < LOCK_BOUND,
        "attach took {attached:?} with lock word {word:#x}"
    );
    third.set_lock_patience(PATIENCE);
    drop(third);
    m.lock_hit |= word != 0;
    let heap = handle(handles, false);
    let start = std::time::Instant::now();
    let got = heap.alloc(1);
    let took_for = start.elapsed();
    assert!(
        took_for < LOCK_BOUND,
        "alloc took {took_for:?} with lock word {word:#x}: {got:?}"
    );
    match got {
        Err(BlobError::LockUnavailable { .. } | BlobError::AlreadyLocked) => {
            assert_ne!(word, 0, "a free lock was unavailable");
            // A word naming a thread that exists (or this one): nothing tells it from a
            // holder, so the user breaks the lock.
            // SAFETY: no thread holds the lock: every handle is this thread's and none is
            // inside an operation; the word was written by this program.
            unsafe { heap.break_lock() }.expect("break_lock");
            assert!(
                heap.recovery_needed().is_some(),
                "break_lock asks for recovery"
            );
        }
        got => {
            let before = before || heap.recovery_needed().is_some();
            allocated(m, heap, "alloc after a stray lock word", 1, got, before);
        }
    }
}
