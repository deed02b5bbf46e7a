//! Fuzz target: `presets::General` (the thread heaps over coalescing arenas) through
//! `GlobalAlloc` (alloc, alloc_zeroed, realloc, dealloc) and its C entry points (malloc,
//! calloc as the malloc library makes it, memalign, realloc, free, malloc_usable_size), with
//! frees on a worker thread, blocks made by the worker and by threads that exit at once.
//!
//! Property: every block is at least as long as asked and aligned as asked (16 for the C
//! calls), overlaps no live block, holds zeroes when asked for zeroed memory, keeps its
//! pattern until it is resized or freed on whichever thread (a resize keeps the smaller of
//! the two lengths); `malloc_usable_size` is at least the size asked.
#![no_main]
#![deny(clippy::undocumented_unsafe_blocks)]

use std::alloc::{GlobalAlloc, Layout};
use std::collections::BTreeMap;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Mutex, OnceLock};

use arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;
use stratalloc::presets;
use stratalloc_fuzz::programs::GeneralOp;
use stratalloc_fuzz::{Bytes, decode_ops, verify_zero};

/// One instance for the whole run, as a global allocator would be.
static GENERAL: presets::General = presets::general();

/// The C calls' alignment.
const C_ALIGN: usize = 16;
/// Blocks up to this size carry their pattern in every byte; larger ones (the large-block
/// path's) in their first and last `EDGE` bytes, so that a run is not all `memset`.
const WHOLE: usize = 1 << 20;
const EDGE: usize = 64 << 10;
/// Past this many live bytes, operations that allocate are skipped: the fuzzer's RSS limit
/// (2 GiB) is for leaks, and a program of forty-megabyte blocks is not one.
const BUDGET: usize = 256 << 20;

/// The byte ranges of a block of `len` bytes that carry its pattern.
fn patterned(len: usize) -> [std::ops::Range<usize>; 2] {
    if len <= WHOLE {
        [0..len, len..len]
    } else {
        [0..EDGE, len - EDGE..len]
    }
}

/// Fills the patterned bytes of a block of `len` bytes.
///
/// # Safety
///
/// `ptr` is valid for writes of `len` bytes.
unsafe fn fill(ptr: *mut u8, len: usize, byte: u8) {
    for range in patterned(len) {
        // SAFETY: the range lies inside the block.
        unsafe { stratalloc_fuzz::fill(ptr.add(range.start), range.len(), byte) };
    }
}

/// Verifies the patterned bytes of a block of `len` bytes that lie below `kept`.
///
/// # Safety
///
/// `ptr` is valid for reads of `len.min(kept)` bytes.
unsafe fn verify_kept(what: &str, ptr: *const u8, len: usize, kept: usize, byte: u8) {
    for range in patterned(len) {
        let end = range.end.min(kept);
        if range.start < end {
            // SAFETY: the range lies inside the block, below `kept`.
            unsafe { stratalloc_fuzz::verify(what, ptr.add(range.start), end - range.start, byte) };
        }
    }
}

/// Verifies the patterned bytes of a block of `len` bytes.
///
/// # Safety
///
/// `ptr` is valid for reads of `len` bytes.
unsafe fn verify(what: &str, ptr: *const u8, len: usize, byte: u8) {
    // SAFETY: the caller's duty.
    unsafe { verify_kept(what, ptr, len, len, byte) }
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let ops: Vec<GeneralOp> = decode_ops(&mut u);
    if stratalloc_fuzz::tracing() {
        eprintln!("{ops:#?}");
    }
    run(&ops);
});

/// A block's address, to send between threads.
#[derive(Clone, Copy)]
struct Addr(*mut u8);
// SAFETY: the address of a block of `General`, which any thread may fill, verify and free;
// exactly one thread owns it at a time (the channel hands it over).
unsafe impl Send for Addr {}

/// What the worker thread is asked.
enum Job {
    /// Verify the block's pattern and free it with C's `free`.
    Free { addr: Addr, len: usize, byte: u8 },
    /// Allocate a block of `size` bytes, fill it and send it back.
    Alloc { size: usize, byte: u8 },
    /// Answer once every earlier job is done.
    Flush,
}

struct Worker {
    jobs: Sender<Job>,
    answers: Receiver<Addr>,
}

/// The worker thread, started once and kept for the whole run.
fn worker() -> &'static Mutex<Worker> {
    static WORKER: OnceLock<Mutex<Worker>> = OnceLock::new();
    WORKER.get_or_init(|| {
        let (jobs, job_rx) = channel::<Job>();
        let (answer_tx, answers) = channel::<Addr>();
        std::thread::spawn(move || {
            for job in job_rx {
                match job {
                    Job::Free { addr, len, byte } => {
                        // SAFETY: the block was handed over live, `len` bytes long; it is
                        // freed once, here.
                        unsafe {
                            verify("block freed on the worker", addr.0, len, byte);
                            GENERAL.free(addr.0);
                        }
                    }
                    Job::Alloc { size, byte } => {
                        let ptr = GENERAL.malloc(size);
                        assert!(!ptr.is_null(), "the worker's malloc({size}) failed");
                        // SAFETY: a fresh block of at least `size` bytes.
                        unsafe { fill(ptr, size, byte) };
                        answer_tx.send(Addr(ptr)).expect("the fuzzer listens");
                    }
                    Job::Flush => answer_tx.send(Addr(std::ptr::null_mut())).expect("listens"),
                }
            }
        });
        Mutex::new(Worker { jobs, answers })
    })
}

/// A live block of the program.
struct Live {
    ptr: *mut u8,
    /// The bytes asked for (and filled).
    len: usize,
    /// `Some(layout)` for blocks of `GlobalAlloc` (freed with it), `None` for the C calls'.
    layout: Option<Layout>,
    byte: u8,
}

struct Model {
    live: Vec<Live>,
    extents: BTreeMap<usize, usize>,
    bytes: Bytes,
}

impl Model {
    /// Records a fresh block after checking it.
    fn add(&mut self, what: &str, ptr: *mut u8, len: usize, align: usize, layout: Option<Layout>) {
        assert!(!ptr.is_null(), "{what}: out of memory for {len} bytes");
        let start = ptr.addr();
        assert_eq!(start % align, 0, "{what}: {ptr:p} not aligned to {align}");
        let end = start + len.max(1);
        if let Some((&s, &e)) = self.extents.range(..end).next_back() {
            assert!(
                e <= start,
                "{what}: {start:#x}..{end:#x} overlaps the live block {s:#x}..{e:#x}"
            );
        }
        let byte = self.bytes.fresh();
        // SAFETY: a fresh block of at least `len` bytes.
        unsafe { fill(ptr, len, byte) };
        self.extents.insert(start, end);
        self.live.push(Live {
            ptr,
            len,
            layout,
            byte,
        });
    }

    /// Takes the picked block out of the model, its pattern verified.
    fn take(&mut self, pick: u16) -> Option<Live> {
        if self.live.is_empty() {
            return None;
        }
        let block = self.live.swap_remove(usize::from(pick) % self.live.len());
        // SAFETY: the block is live and holds `len` bytes.
        unsafe { verify("block", block.ptr, block.len, block.byte) };
        self.extents.remove(&block.ptr.addr());
        Some(block)
    }

    /// Frees a block taken out of the model, the way it was made.
    fn free(block: Live) {
        // SAFETY: a live block of `GENERAL`, freed once, with its layout for `GlobalAlloc`.
        unsafe {
            match block.layout {
                Some(layout) => GENERAL.dealloc(block.ptr, layout),
                None => GENERAL.free(block.ptr),
            }
        }
    }

    /// Records a block resized from `old`, checking the bytes it kept.
    fn resized(&mut self, what: &str, old: Live, ptr: *mut u8, len: usize, align: usize) {
        if ptr.is_null() {
            // Out of memory: the old block stays live.
            self.extents
                .insert(old.ptr.addr(), old.ptr.addr() + old.len.max(1));
            self.live.push(old);
            return;
        }
        // SAFETY: the resized block holds `len` bytes, and kept the smaller length's.
        unsafe { verify_kept(what, ptr, old.len, len, old.byte) };
        let layout = old
            .layout
            .map(|l| Layout::from_size_align(len, l.align()).expect("layout"));
        self.add(what, ptr, len, align, layout);
    }
}

fn align(log2: u8) -> usize {
    1 << (log2 % 13)
}

fn run(ops: &[GeneralOp]) {
    let worker = worker().lock().unwrap_or_else(|e| e.into_inner());
    let mut m = Model {
        live: Vec::new(),
        extents: BTreeMap::new(),
        bytes: Bytes::default(),
    };
    for op in ops {
        let allocates = !matches!(
            op,
            GeneralOp::Dealloc { .. }
                | GeneralOp::CFree { .. }
                | GeneralOp::UsableSize { .. }
                | GeneralOp::SendFree { .. }
        );
        if allocates && m.live.iter().map(|b| b.len).sum::<usize>() > BUDGET {
            continue;
        }
        match *op {
            GeneralOp::Alloc {
                size,
                align_log2,
                zeroed,
            } => {
                let layout = Layout::from_size_align(usize::from(size).max(1), align(align_log2))
                    .expect("a layout");
                // SAFETY: a non-zero layout.
                let ptr = unsafe {
                    if zeroed {
                        GENERAL.alloc_zeroed(layout)
                    } else {
                        GENERAL.alloc(layout)
                    }
                };
                if zeroed && !ptr.is_null() {
                    // SAFETY: a fresh block of `layout.size()` bytes.
                    unsafe { verify_zero("alloc_zeroed", ptr, layout.size()) };
                }
                m.add("alloc", ptr, layout.size(), layout.align(), Some(layout));
            }
            GeneralOp::Realloc { pick, size } => {
                // `GlobalAlloc::realloc` for blocks of `GlobalAlloc` only.
                let Some(index) = pick_where(&m, pick, |b| b.layout.is_some()) else {
                    continue;
                };
                let block = m.take(index).expect("a block");
                let layout = block.layout.expect("a GlobalAlloc block");
                let new = usize::from(size).max(1);
                // SAFETY: a live block with its layout; a non-zero size that makes a valid
                // layout with its alignment.
                let ptr = unsafe { GlobalAlloc::realloc(&GENERAL, block.ptr, layout, new) };
                m.resized("realloc", block, ptr, new, layout.align());
            }
            GeneralOp::Dealloc { pick } => {
                if let Some(block) = m.take(pick) {
                    Model::free(block);
                }
            }
            GeneralOp::Malloc { size } => {
                let ptr = GENERAL.malloc(usize::from(size));
                m.add("malloc", ptr, usize::from(size), C_ALIGN, None);
            }
            GeneralOp::Calloc { count, size } => {
                let bytes = usize::from(count % 17) * usize::from(size);
                let ptr = GENERAL.malloc(bytes);
                if !ptr.is_null() {
                    // SAFETY: a fresh block of at least `bytes` bytes (calloc as the malloc
                    // library makes it).
                    unsafe { ptr.write_bytes(0, bytes) };
                }
                m.add("calloc", ptr, bytes, C_ALIGN, None);
            }
            GeneralOp::Memalign { size, align_log2 } => {
                let align = align(align_log2);
                let ptr = GENERAL.malloc_aligned(usize::from(size), align);
                m.add("memalign", ptr, usize::from(size), align.max(C_ALIGN), None);
            }
            GeneralOp::CRealloc { pick, size } => {
                let Some(block) = m.take(pick) else { continue };
                let size = usize::from(size);
                // SAFETY: a live block of `GENERAL`; the C calls free and resize any block.
                let ptr = unsafe { GENERAL.realloc(block.ptr, size) };
                let block = Live {
                    layout: None,
                    ..block
                };
                m.resized("C realloc", block, ptr, size, C_ALIGN);
            }
            GeneralOp::CFree { pick } => {
                if let Some(block) = m.take(pick) {
                    // SAFETY: a live block of `GENERAL`, freed once.
                    unsafe { GENERAL.free(block.ptr) };
                }
            }
            GeneralOp::UsableSize { pick } => {
                if m.live.is_empty() {
                    continue;
                }
                let block = &m.live[usize::from(pick) % m.live.len()];
                // SAFETY: a live block of `GENERAL`.
                let usable = unsafe { GENERAL.usable_size(block.ptr) };
                assert!(
                    usable >= block.len,
                    "malloc_usable_size {usable} below the {} bytes asked",
                    block.len
                );
            }
            GeneralOp::SendFree { pick } => {
                if let Some(block) = m.take(pick) {
                    let job = Job::Free {
                        addr: Addr(block.ptr),
                        len: block.len,
                        byte: block.byte,
                    };
                    worker.jobs.send(job).expect("the worker runs");
                }
            }
            GeneralOp::WorkerAlloc { size } => {
                let size = usize::from(size);
                let byte = m.bytes.fresh();
                worker
                    .jobs
                    .send(Job::Alloc { size, byte })
                    .expect("the worker runs");
                let addr = worker.answers.recv().expect("the worker answers");
                // SAFETY: the worker filled `size` bytes with `byte`.
                unsafe { verify("the worker's block", addr.0, size, byte) };
                m.add("the worker's malloc", addr.0, size, C_ALIGN, None);
            }
            GeneralOp::ThreadExit { count, size } => {
                let size = usize::from(size);
                let made: Vec<Addr> = std::thread::spawn(move || {
                    (0..count % 8).map(|_| Addr(GENERAL.malloc(size))).collect()
                })
                .join()
                .expect("the thread allocates");
                for addr in made {
                    m.add("an exited thread's malloc", addr.0, size, C_ALIGN, None);
                }
            }
            GeneralOp::Large { pages } => {
                // Up to 4 MiB in an arena; 40 MiB is more than an arena holds (32 MiB), a
                // piece of its own from `Mmap`.
                let size = if pages == u8::MAX {
                    40 << 20
                } else {
                    usize::from(pages) << 14
                };
                let ptr = GENERAL.malloc(size);
                m.add("large malloc", ptr, size, C_ALIGN, None);
            }
        }
    }
    while let Some(block) = m.take(0) {
        Model::free(block);
    }
    worker.jobs.send(Job::Flush).expect("the worker runs");
    let done = worker.answers.recv().expect("the worker answers");
    assert!(done.0.is_null(), "the worker answered a flush with a block");
}

/// The index of a live block that `wanted` accepts, searching from the picked one.
fn pick_where(m: &Model, pick: u16, wanted: impl Fn(&Live) -> bool) -> Option<u16> {
    let n = m.live.len();
    (0..n)
        .map(|i| (usize::from(pick) + i) % n)
        .find(|&i| wanted(&m.live[i]))
        .map(|i| i as u16)
}
