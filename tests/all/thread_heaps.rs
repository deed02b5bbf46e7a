//! The general-purpose preset (`ThreadHeaps`): C-style calls by address alone, frees from
//! other threads, heaps of exited threads reused, the summary, and misuse aborts.
//!
//! Each test uses its own `static` allocator: the test harness runs every test on a fresh
//! thread, whose heap belongs to the first `ThreadHeaps` it allocates from.

use std::ptr::NonNull;
use std::sync::mpsc;

use std::sync::Mutex;

use stratalloc::Layer;
use stratalloc::presets::{General, general};

/// The tests that measure the slab space (shared by every `General` in the process) take
/// turns, so that one's growth is not the other's.
static MEASURING: Mutex<()> = Mutex::new(());

/// A block address sent to another thread (raw pointers are not `Send`).
struct Sent(*mut u8);
// SAFETY: the tests hand each block to exactly one other thread, which owns it from then on.
unsafe impl Send for Sent {}

/// Allocation sizes that cross every path: small slab classes and their 8 KiB limit, the
/// big slabs and their 32 KiB limit, the coalescing arenas, blocks of their own.
const SIZES: [usize; 15] = [
    1, 8, 16, 24, 100, 128, 129, 1000, 8192, 8193, 20_000, 32_768, 32_769, 100_000, BIG,
];

/// Slab space a later round may take afresh although the first round's slabs are all free:
/// while a slab range's decay tick gives the pages of its aged free granules back (up to
/// the 32 MiB a range keeps, outside its lock), those granules are on no free list, and
/// allocations on other threads meanwhile take fresh ones. Two ranges, so twice that.
const IN_FLIGHT: usize = 2 * (32 << 20);

/// The largest block the tests make: smaller under Miri, where every byte checked costs.
const BIG: usize = if cfg!(miri) { 70_000 } else { 1 << 20 };

fn fill(ptr: *mut u8, len: usize, byte: u8) {
    // SAFETY: callers pass a live block of at least `len` bytes.
    unsafe { ptr.write_bytes(byte, len) }
}

fn holds(ptr: *mut u8, len: usize, byte: u8) -> bool {
    // SAFETY: callers pass a live block of at least `len` bytes.
    unsafe {
        let pattern = [byte; 4096];
        std::slice::from_raw_parts(ptr, len)
            .chunks(4096)
            .all(|c| c == &pattern[..c.len()])
    }
}

#[test]
fn blocks_go_back_by_address_alone() {
    static HEAP: General = general();
    let mut blocks = Vec::new();
    for round in 0..4u8 {
        for (i, &size) in SIZES.iter().enumerate() {
            let ptr = HEAP.malloc(size);
            assert!(!ptr.is_null(), "malloc({size})");
            assert_eq!(ptr.addr() % 16, 0, "malloc({size}) is 16-aligned");
            // SAFETY: a live block of HEAP.
            let usable = unsafe { HEAP.usable_size(ptr) };
            assert!(usable >= size, "usable {usable} < {size}");
            fill(ptr, usable, round ^ i as u8);
            blocks.push((ptr, usable, round ^ i as u8));
        }
    }
    for (ptr, usable, byte) in blocks.drain(..) {
        assert!(holds(ptr, usable, byte), "a block was overwritten");
        // SAFETY: live, freed once.
        unsafe { HEAP.free(ptr) };
    }
    // SAFETY: null is fine, and so is asking its size.
    unsafe {
        HEAP.free(std::ptr::null_mut());
        assert_eq!(HEAP.usable_size(std::ptr::null_mut()), 0);
    }
    // A freed small block is the next one handed out in its class.
    let a = HEAP.malloc(40);
    // SAFETY: live, freed once.
    unsafe { HEAP.free(a) };
    assert_eq!(
        HEAP.malloc(48),
        a,
        "the 48-byte class reuses its last free block"
    );
}

#[test]
fn realloc_keeps_contents_across_every_path() {
    static HEAP: General = general();
    let mut ptr = HEAP.malloc(1);
    fill(ptr, 1, 7);
    let mut size = 1;
    for next in [3, 17, 200, 5000, 9000, 70_000, 2 * BIG, 60_000, 700, 20, 1] {
        // SAFETY: a live block; the old pointer is not used after success.
        let grown = unsafe { HEAP.realloc(ptr, next) };
        assert!(!grown.is_null());
        assert!(
            holds(grown, size.min(next), 7),
            "realloc {size} -> {next} lost bytes"
        );
        fill(grown, next, 7);
        ptr = grown;
        size = next;
    }
    // SAFETY: a live block, freed once.
    unsafe { HEAP.free(ptr) };
}

/// A block that realloc grows past 256 bytes moves to the coalescing `Large` layer (where
/// growing strings keep growing in place and their old copies merge back into free space),
/// while a fresh block of that size stays in a slab; shrunk to less than half, it moves back
/// to a slab. The counts of the summary follow each move. (Planted bugs caught: grown
/// blocks left in slabs; a move under the `Large` lock that counted no free.)
#[test]
fn blocks_grown_by_realloc_move_to_the_large_layer() {
    static HEAP: General = general();
    HEAP.set_counting(true);
    let in_large = |p: *mut u8| HEAP.with_large(|large| large.owns(NonNull::new(p).unwrap()));
    let fresh = HEAP.malloc(300);
    assert!(!in_large(fresh), "a fresh 300-byte block is a slab block");
    let mut p = HEAP.malloc(100);
    fill(p, 100, 3);
    assert!(!in_large(p));
    let mut size = 100;
    let mut blocker = std::ptr::null_mut();
    for next in [200, 300, 5000, 5100, 20_000, 64, 10] {
        if next == 5000 {
            // A large block (past the big slabs' 32 KiB) right after the grown one, so
            // that it cannot grow in place and moves under the lock.
            blocker = HEAP.malloc(40_000);
            assert!(in_large(blocker));
        }
        // SAFETY: a live block; the old pointer is not used after success.
        let q = unsafe { HEAP.realloc(p, next) };
        if next == 5000 {
            assert_ne!(q, p, "the blocked block moved");
        }
        assert!(!q.is_null());
        assert!(
            holds(q, size.min(next), 3),
            "realloc {size} -> {next} lost bytes"
        );
        fill(q, next, 3);
        let large = next > 256;
        assert_eq!(in_large(q), large, "realloc {size} -> {next}");
        p = q;
        size = next;
    }
    let summary = HEAP.summary();
    assert_eq!(summary.live_blocks(), 3, "{summary}");
    // SAFETY: live blocks, each freed once.
    unsafe {
        HEAP.free(p);
        HEAP.free(fresh);
        HEAP.free(blocker);
    }
    let summary = HEAP.summary();
    assert_eq!(summary.live_blocks(), 0, "{summary}");
    assert_eq!(summary.live_bytes(), 0, "{summary}");
    assert_eq!(summary.allocations - summary.frees, 0, "{summary}");
}

#[test]
fn large_alignments_are_honoured() {
    static HEAP: General = general();
    for align in [16, 32, 64, 4096, 65536, 1 << 20] {
        for size in [1, 100, 10_000] {
            let ptr = HEAP.malloc_aligned(size, align);
            assert!(
                !ptr.is_null() && ptr.addr().is_multiple_of(align),
                "{size} at {align}"
            );
            fill(ptr, size, 1);
            // SAFETY: live, freed once.
            unsafe { HEAP.free(ptr) };
        }
    }
}

/// Producer threads allocate, consumer threads free: every block (small or big) crosses
/// a thread, every pattern is verified, and the producers' heaps get the blocks back (the
/// reserves stop growing once the heaps have warmed up).
#[test]
#[cfg_attr(miri, ignore = "minutes under Miri: CI's Miri step has no room for it")]
fn frees_from_other_threads_reach_the_owner() {
    static HEAP: General = general();
    let _turn = MEASURING.lock().unwrap_or_else(|e| e.into_inner());
    const THREADS: usize = 4;
    let blocks = if cfg!(miri) { 50 } else { 100_000 };
    let rounds = 3;
    let mut used_after_first = 0;
    for round in 0..rounds {
        let mut producers = Vec::new();
        let mut consumers = Vec::new();
        for t in 0..THREADS {
            let (send, receive) = mpsc::sync_channel::<(Sent, usize, u8)>(1024);
            producers.push(std::thread::spawn(move || {
                for i in 0..blocks {
                    // Every eighth block 1-32 KiB (small or big), the rest small.
                    let size = if i % 8 == 0 {
                        1025 + (i * 131 + t * 977) % 31_000
                    } else {
                        8 + (i * 7 + t * 13) % 600
                    };
                    let byte = (i ^ t) as u8;
                    let ptr = HEAP.malloc(size);
                    assert!(!ptr.is_null());
                    fill(ptr, size, byte);
                    send.send((Sent(ptr), size, byte)).unwrap();
                }
            }));
            consumers.push(std::thread::spawn(move || {
                for (Sent(ptr), size, byte) in receive {
                    assert!(holds(ptr, size, byte), "a block was overwritten in flight");
                    // SAFETY: a live block handed over by its producer, freed once.
                    unsafe { HEAP.free(ptr) };
                }
            }));
        }
        for thread in producers.into_iter().chain(consumers) {
            thread.join().unwrap();
        }
        if round == 0 {
            used_after_first = HEAP.summary().reserved_bytes;
        }
    }
    // Heaps of exited threads are adopted by the next round's threads: at most one heap
    // per thread alive at once.
    assert!(HEAP.heaps() <= 2 * THREADS, "{} heaps", HEAP.heaps());
    assert_eq!(
        HEAP.pooled_heaps(),
        HEAP.heaps(),
        "every thread's heap is back in the pool"
    );
    // Without remote frees coming back, each round would take another ~250 MB.
    let grown = HEAP.summary().reserved_bytes - used_after_first;
    assert!(
        grown < (40 << 20) + IN_FLIGHT,
        "the slab space grew by {grown} bytes after the first round"
    );
}

/// Four threads build strings by appending with `realloc` (blocks moving from slabs to
/// `Large`, growing in place, moving under the lock and, past 64 KiB, copied outside it)
/// while the free slab granules decay; every fourth finished string goes to the next
/// thread to be checked and freed there. Every byte of every string is checked, so a
/// block handed out twice, or bytes lost in a move, show. (Planted bug caught: half the
/// bytes copied on a move outside the lock.)
#[test]
#[cfg_attr(miri, ignore = "minutes under Miri: CI's Miri step has no room for it")]
fn strings_grown_by_realloc_on_many_threads_keep_every_byte() {
    static HEAP: General = general();
    const THREADS: usize = 4;
    const STRINGS: usize = 64;
    /// The byte at `index` of string `id`.
    fn byte(id: usize, index: usize) -> u8 {
        (id.wrapping_mul(31) ^ index.wrapping_mul(7)) as u8
    }
    fn check(ptr: *mut u8, len: usize, id: usize) {
        // SAFETY: callers pass a live block holding `len` bytes.
        let bytes = unsafe { std::slice::from_raw_parts(ptr, len) };
        if let Some(at) = (0..len).find(|&i| bytes[i] != byte(id, i)) {
            panic!("string {id} ({len} bytes) is wrong at {at}");
        }
    }
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for _ in 0..THREADS {
        let (send, receive) = mpsc::channel::<(Sent, usize, usize)>();
        senders.push(send);
        receivers.push(receive);
    }
    senders.rotate_left(1);
    let threads: Vec<_> = senders
        .into_iter()
        .zip(receivers)
        .enumerate()
        .map(|(t, (next, mine))| {
            std::thread::spawn(move || {
                let mut strings = vec![(std::ptr::null_mut::<u8>(), 0usize, 0usize); STRINGS];
                let mut seed = 0x9E37_79B9_u32.wrapping_mul(t as u32 + 1);
                let id = t << 32;
                for step in 0..40_000usize {
                    seed ^= seed << 13;
                    seed ^= seed >> 17;
                    seed ^= seed << 5;
                    let slot = seed as usize % STRINGS;
                    let (ptr, len, sid) = strings[slot];
                    let (ptr, sid) = if ptr.is_null() {
                        (ptr, id + step)
                    } else {
                        (ptr, sid)
                    };
                    // Mostly a few bytes, now and then a long piece, to pass 64 KiB.
                    let piece = if seed.is_multiple_of(97) {
                        20_000
                    } else {
                        1 + seed as usize % 9
                    };
                    // SAFETY: null or this thread's live string; not used after success.
                    let grown = unsafe { HEAP.realloc(ptr, len + piece) };
                    assert!(!grown.is_null());
                    for i in len..len + piece {
                        // SAFETY: the block holds `len + piece` bytes.
                        unsafe { grown.add(i).write(byte(sid, i)) };
                    }
                    let len = len + piece;
                    let limit = if sid % 8 == 0 { 200_000 } else { 2_000 };
                    if len < limit {
                        strings[slot] = (grown, len, sid);
                        continue;
                    }
                    check(grown, len, sid);
                    strings[slot] = (std::ptr::null_mut(), 0, 0);
                    if step % 4 == 0 {
                        next.send((Sent(grown), len, sid)).unwrap();
                    } else {
                        // SAFETY: a live block, freed once.
                        unsafe { HEAP.free(grown) };
                    }
                    for (Sent(ptr), len, sid) in mine.try_iter() {
                        check(ptr, len, sid);
                        // SAFETY: a live block handed over by its owner, freed once.
                        unsafe { HEAP.free(ptr) };
                    }
                }
                for (ptr, len, sid) in strings {
                    if !ptr.is_null() {
                        check(ptr, len, sid);
                        // SAFETY: a live block, freed once.
                        unsafe { HEAP.free(ptr) };
                    }
                }
                drop(next);
                mine
            })
        })
        .collect();
    // Every thread is done before the last strings handed over are checked.
    let receivers: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    for mine in receivers {
        for (Sent(ptr), len, sid) in mine.try_iter() {
            check(ptr, len, sid);
            // SAFETY: a live block handed over, freed once.
            unsafe { HEAP.free(ptr) };
        }
    }
}

/// Allocations made at thread exit after the thread's heap was handed back (by a thread
/// key destructor that runs after the allocator's own, as a C library's would: a pthread
/// key, or a fiber-local slot on Windows) work, and leak no heap: with std they go to the
/// large layer; without std, on Unix the thread takes a pooled heap again and the key's
/// next round of destructors hands it back, on Windows (one round) they go to the large
/// layer too. Either way threads that do this one after another share one heap.
#[test]
fn allocations_after_the_heap_was_handed_back_leak_no_heap() {
    static HEAP: General = general();
    static KEY: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    static LATE_OK: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

    fn late() {
        let ptr = HEAP.malloc(48);
        if !ptr.is_null() {
            fill(ptr, 48, 0x5a);
            if holds(ptr, 48, 0x5a) {
                LATE_OK.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            // SAFETY: the block just allocated, freed once.
            unsafe { HEAP.free(ptr) };
        }
    }

    const THREADS: usize = 6;
    for _ in 0..THREADS {
        std::thread::spawn(|| {
            // The allocator's key is made at this thread's first small allocation, so
            // the test's key, made after it, is destroyed after it.
            let first = HEAP.malloc(16);
            // SAFETY: the block just allocated, freed once.
            unsafe { HEAP.free(first) };
            exit_key::arm(*KEY.get_or_init(|| exit_key::make(late)));
        })
        .join()
        .unwrap();
    }
    assert_eq!(
        LATE_OK.load(std::sync::atomic::Ordering::Relaxed),
        THREADS,
        "every late allocation was served and kept its bytes"
    );
    assert_eq!(HEAP.heaps(), 1, "the threads shared one heap");
    assert_eq!(HEAP.pooled_heaps(), 1, "the heap is back in the pool");
}

/// A thread key of the test's own whose destructor calls one function at thread exit.
mod exit_key {
    use std::sync::OnceLock;

    static HOOK: OnceLock<fn()> = OnceLock::new();

    #[cfg(unix)]
    extern "C" fn destructor(_: *mut libc::c_void) {
        HOOK.get().expect("a hook")();
    }

    #[cfg(windows)]
    extern "system" fn destructor(_: *const core::ffi::c_void) {
        HOOK.get().expect("a hook")();
    }

    /// A key whose destructor calls `hook` (once per process).
    pub fn make(hook: fn()) -> usize {
        HOOK.set(hook).expect("one key per process");
        #[cfg(unix)]
        {
            let mut key = 0;
            // SAFETY: a valid place for the key, and an `extern "C"` destructor.
            assert_eq!(
                unsafe { libc::pthread_key_create(&mut key, Some(destructor)) },
                0
            );
            key as usize
        }
        #[cfg(windows)]
        {
            use windows_sys::Win32::System::Threading::{FLS_OUT_OF_INDEXES, FlsAlloc};
            // SAFETY: a callback with the ABI Windows calls it with.
            let index = unsafe { FlsAlloc(Some(destructor)) };
            assert_ne!(index, FLS_OUT_OF_INDEXES);
            index as usize
        }
    }

    /// Gives the calling thread a non-null value under `key`, so that its destructor runs
    /// when the thread exits.
    pub fn arm(key: usize) {
        let value = std::ptr::dangling_mut::<u8>().cast();
        #[cfg(unix)]
        // SAFETY: a key made by `make`; the value is only handed to the destructor.
        unsafe {
            libc::pthread_setspecific(key as libc::pthread_key_t, value)
        };
        #[cfg(windows)]
        // SAFETY: as above.
        unsafe {
            windows_sys::Win32::System::Threading::FlsSetValue(key as u32, value)
        };
    }
}

/// Threads allocate small and big blocks and exit; another thread frees their blocks
/// afterwards, into heaps that sit in the pool. Those frees must reach the slabs (and empty
/// them), not pile up on a remote stack that nobody drains: otherwise every round takes
/// fresh slab space.
#[test]
#[cfg_attr(miri, ignore = "minutes under Miri: CI's Miri step has no room for it")]
fn frees_into_the_heaps_of_exited_threads_are_reused() {
    static HEAP: General = general();
    let _turn = MEASURING.lock().unwrap_or_else(|e| e.into_inner());
    const THREADS: usize = 8;
    let blocks = if cfg!(miri) { 100 } else { 20_000 };
    let mut used_after_first = 0;
    for round in 0..3 {
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                std::thread::spawn(move || {
                    (0..blocks)
                        .map(|i| {
                            let size = if i % 16 == 0 { 12_000 } else { 200 };
                            let ptr = HEAP.malloc(size);
                            fill(ptr, size, (i ^ t) as u8);
                            (Sent(ptr), size, (i ^ t) as u8)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for worker in workers {
            for (Sent(ptr), size, byte) in worker.join().unwrap() {
                assert!(
                    holds(ptr, size, byte),
                    "a block of an exited thread was overwritten"
                );
                // SAFETY: a live block whose thread has exited, freed once.
                unsafe { HEAP.free(ptr) };
            }
        }
        assert_eq!(
            HEAP.pooled_heaps(),
            HEAP.heaps(),
            "every heap is back in the pool"
        );
        // The frees emptied the pooled heaps' slabs, which went back to the reserve
        // (beyond a few spares each), instead of waiting for a thread to adopt them.
        let held = HEAP.pooled_slab_bytes();
        assert!(
            held <= HEAP.heaps() * (1 << 20),
            "pooled heaps still hold {held} bytes"
        );
        if round == 0 {
            used_after_first = HEAP.summary().reserved_bytes;
        }
    }
    // Each round allocates ~30 MB of 200-byte blocks and ~120 MB of 12,000-byte ones;
    // reusing the emptied slabs, later rounds need none (but what a decay tick holds).
    let grown = HEAP.summary().reserved_bytes - used_after_first;
    assert!(
        grown < (16 << 20) + IN_FLIGHT,
        "the slab space grew by {grown} bytes after the first round"
    );
}

/// Frees racing with the exit of the blocks' thread: each either reaches the heap's remote
/// stack before the exiting thread empties it, or finds the heap pooled (or about to be)
/// and puts the block in its slab. None is left on the remote stack of a pooled heap, where
/// it would wait for a thread to adopt the heap.
#[test]
fn frees_racing_with_their_thread_s_exit_are_not_stranded() {
    static HEAP: General = general();
    let (rounds, blocks) = if cfg!(miri) { (3, 8) } else { (2000, 64) };
    for round in 0..rounds {
        let (send, receive) = mpsc::channel();
        let worker = std::thread::spawn(move || {
            for i in 0..blocks {
                let ptr = HEAP.malloc(48);
                fill(ptr, 48, i as u8);
                send.send((Sent(ptr), i as u8)).unwrap();
            }
        });
        // Freed as they come, the last ones while the worker exits.
        for (Sent(ptr), byte) in receive {
            assert!(holds(ptr, 48, byte), "a block was overwritten");
            // SAFETY: a live block of HEAP, freed once.
            unsafe { HEAP.free(ptr) };
        }
        worker.join().unwrap();
        assert_eq!(HEAP.pooled_heaps(), HEAP.heaps());
        assert_eq!(
            HEAP.pooled_remote_frees(),
            0,
            "round {round}: frees stranded on a pooled heap's remote stack"
        );
    }
}

/// A thread that finds the heap of an exited thread in its slot of the heap cache (the
/// next thread often gets the exited one's thread pointer, as glibc reuses its stack)
/// reads that heap's `thread` field: the heap's initialising writes must happen before
/// that read with nothing but the cache between the two threads (the first one is not
/// joined; the second waits for it by the clock alone). ThreadSanitizer checks it: with
/// the cache stored and loaded Relaxed it reported a data race here.
#[test]
fn a_thread_finds_an_exited_thread_s_heap_in_the_cache_initialised() {
    static HEAP: General = general();
    fn allocate() {
        let p = HEAP.malloc(32);
        fill(p, 32, 9);
        // SAFETY: live, freed once.
        unsafe { HEAP.free(p) };
    }
    for _ in 0..if cfg!(miri) { 2 } else { 8 } {
        drop(std::thread::spawn(allocate));
        std::thread::sleep(std::time::Duration::from_millis(50));
        std::thread::spawn(allocate).join().unwrap();
    }
}

/// Blocks handed out before counting began and freed after it take no count below zero:
/// the summary counts from zero, and its peak is the one reached since.
#[test]
fn frees_of_blocks_older_than_the_counting_leave_the_summary_sane() {
    static HEAP: General = general();
    let old = [HEAP.malloc(100_000), HEAP.malloc(40)];
    HEAP.set_counting(true);
    for p in old {
        // SAFETY: live, freed once.
        unsafe { HEAP.free(p) };
    }
    let p = HEAP.malloc(64);
    let summary = HEAP.summary();
    assert_eq!(
        (summary.peak_blocks, summary.live_blocks()),
        (1, 1),
        "{summary}"
    );
    assert!(summary.peak_bytes <= 100, "{summary}");
    // SAFETY: live, freed once.
    unsafe { HEAP.free(p) };
    assert_eq!(HEAP.summary().live_blocks(), 0);
}

#[test]
fn the_summary_counts_live_blocks_by_size() {
    static HEAP: General = general();
    HEAP.set_counting(true);
    let kept = [
        HEAP.malloc(24),
        HEAP.malloc(24),
        HEAP.malloc(500),
        HEAP.malloc(5000),
        HEAP.malloc(50_000),
    ];
    for _ in 0..10 {
        let p = HEAP.malloc(100);
        // SAFETY: live, freed once.
        unsafe { HEAP.free(p) };
    }
    let summary = HEAP.summary();
    assert_eq!(summary.allocations, 15);
    assert_eq!(summary.frees, 10);
    assert_eq!(summary.live_blocks(), 5);
    let sizes: Vec<usize> = summary.by_size().iter().map(|&(s, _)| s).collect();
    assert_eq!(&sizes[..3], &[32, 512, 5120], "slab classes, ascending");
    assert!(sizes[3] >= 50_000 && sizes.len() == 4, "{sizes:?}");
    let text = summary.to_string();
    assert!(text.starts_with("stratalloc heap summary (pid "), "{text}");
    assert!(
        text.contains("\n  32 B x 2\n  512 B x 1\n  5120 B x 1\n"),
        "{text}"
    );
    let leaks = format!("leaks: 5 blocks, {} bytes", 32 * 2 + 512 + 5120 + sizes[3]);
    assert!(text.contains(&leaks), "{text}");
    for p in kept {
        // SAFETY: live, freed once.
        unsafe { HEAP.free(p) };
    }
    assert_eq!(HEAP.summary().live_blocks(), 0);
    assert!(HEAP.summary().peak_bytes >= 50_000);
}

/// Misuse of small blocks aborts with a line naming it (each in a child process): a double
/// free of the last block freed, of a block freed before others (glibc's "free a, free b,
/// free a" too), of a block freed twice by another thread (found when the owner takes its
/// remote frees back), or freed here and then by another thread; and a free of an address
/// inside a block. Another block of the
/// slab stays live throughout, so that a slab with no live block does not give it away.
#[test]
#[cfg_attr(miri, ignore = "Miri cannot start processes")]
fn small_block_misuse_aborts_with_a_message() {
    static HEAP: General = general();
    let scenarios = [
        ("double free", "put twice"),
        ("double free, older", "put twice"),
        ("free a, free b, free a", "put twice"),
        ("double free, from another thread", "put twice"),
        (
            "freed here, then on another thread",
            "the second time by another thread",
        ),
        ("free inside a block", "not the start of a block"),
    ];
    if let Some(scenario) = crate::child_scenario() {
        let p = HEAP.malloc(64);
        let others = [HEAP.malloc(64), HEAP.malloc(64)];
        let _live = HEAP.malloc(64);
        // SAFETY: not sound, on purpose: the misuse must abort before any harm.
        unsafe {
            match scenario.as_str() {
                "double free" => {
                    HEAP.free(p);
                    HEAP.free(p);
                }
                "double free, older" => {
                    HEAP.free(p);
                    HEAP.free(others[0]);
                    HEAP.free(others[1]);
                    HEAP.free(p);
                }
                "free a, free b, free a" => {
                    HEAP.free(p);
                    HEAP.free(others[0]);
                    HEAP.free(p);
                }
                "double free, from another thread" => {
                    let sent = Sent(p);
                    std::thread::spawn(move || {
                        let sent = sent;
                        HEAP.free(sent.0);
                        HEAP.free(sent.0);
                    })
                    .join()
                    .unwrap();
                    // The owner takes its remote frees back when its slab runs dry.
                    for _ in 0..100_000 {
                        HEAP.malloc(64);
                    }
                }
                "freed here, then on another thread" => {
                    HEAP.free(p);
                    let sent = Sent(p);
                    std::thread::spawn(move || {
                        let sent = sent;
                        HEAP.free(sent.0);
                    })
                    .join()
                    .unwrap();
                }
                "free inside a block" => HEAP.free(p.add(16)),
                other => panic!("unknown scenario {other}"),
            }
        }
        println!("the misuse went unnoticed");
        return;
    }
    for (scenario, message) in scenarios {
        let out = crate::run_child(
            "thread_heaps::small_block_misuse_aborts_with_a_message",
            scenario,
        );
        crate::assert_aborted_with(&out, message);
    }
}

// ---------------------------------------------------------------------------------------
// Instances that are not `static`s, and `fork`
// ---------------------------------------------------------------------------------------

/// Runs `run`, a scenario whose failure is a crash or a hang: under Miri in this process
/// (Miri cannot start processes, and reports the undefined behaviour itself), else in a
/// child process (this test binary again, for `test` alone) that must succeed within 30 s.
/// (Under ThreadSanitizer the child runs instrumented too.)
fn in_child(test: &str, scenario: &str, run: impl FnOnce()) {
    if cfg!(miri) || crate::child_scenario().as_deref() == Some(scenario) {
        run();
        return;
    }
    let mut child = crate::spawn_child(test, scenario);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().expect("waiting for the child") {
            assert!(status.success(), "{scenario}: the child failed: {status}");
            return;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{scenario}: the child hung (killed after 30 s)");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Memory kept for the life of the process (reachable from here, so not a leak to Miri).
static KEPT: Mutex<Vec<Box<dyn Send>>> = Mutex::new(Vec::new());

/// Allocates a block of `len` bytes filled with 0xFF through the test binary's allocator
/// and keeps it for good: it likely takes the place of a block of that size just freed,
/// so that whatever still reads the freed block reads garbage instead of its old bytes.
fn scribble(len: usize) {
    KEPT.lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(Box::new(vec![0xFFu8; len]));
}

/// Small blocks through both entry points (`GlobalAlloc::alloc` and `malloc`), checked and
/// freed: the calling thread takes a heap of `heap`.
fn use_small_blocks(heap: &General, rounds: usize) {
    use std::alloc::{GlobalAlloc, Layout};
    let layout = Layout::from_size_align(48, 8).unwrap();
    let mut blocks = Vec::new();
    for i in 0..rounds {
        // SAFETY: a layout of non-zero size.
        let a = unsafe { heap.alloc(layout) };
        let b = heap.malloc(100);
        assert!(!a.is_null() && !b.is_null());
        fill(a, 48, i as u8);
        fill(b, 100, !(i as u8));
        blocks.push((a, b, i as u8));
    }
    for (a, b, byte) in blocks {
        assert!(holds(a, 48, byte) && holds(b, 100, !byte));
        // SAFETY: live blocks of `heap`, each freed once.
        unsafe {
            heap.dealloc(a, layout);
            heap.free(b);
        }
    }
}

/// A `General` made, used for small blocks and dropped inside a thread that then exits,
/// and the same on a few more threads after it: the thread-exit hand-back of each thread's
/// heap must not reach the dropped instance (it hung, or read freed memory under Miri).
/// The registry a dropped instance leaves behind, with its heaps, goes to the next
/// instance made, so the rounds after the first take no new memory.
#[test]
fn an_instance_dropped_inside_a_thread_leaves_its_heaps_sound() {
    in_child(
        "thread_heaps::an_instance_dropped_inside_a_thread_leaves_its_heaps_sound",
        "dropped instance",
        || {
            let _turn = MEASURING.lock().unwrap_or_else(|e| e.into_inner());
            let rounds = if cfg!(miri) { 3 } else { 6 };
            let mut reserved = Vec::new();
            for _ in 0..rounds {
                let (heaps, used) = std::thread::spawn(|| {
                    let heap = Box::new(general());
                    use_small_blocks(&heap, if cfg!(miri) { 20 } else { 500 });
                    let figures = (heap.heaps(), heap.summary().reserved_bytes);
                    drop(heap);
                    scribble(size_of::<General>());
                    figures
                })
                .join()
                .unwrap();
                assert_eq!(
                    heaps, 1,
                    "one heap: made, or adopted from the thread before"
                );
                reserved.push(used);
            }
            if crate::child_scenario().is_some() {
                // Alone in its process: every round after the first claimed the registry
                // the one before released, adopted its heap and took no new slab space.
                assert!(
                    reserved.windows(2).all(|w| w[0] == w[1]),
                    "slab space used by round: {reserved:?}"
                );
            }
        },
    );
}

/// An instance moved (here out of one box into another) after threads took heaps from
/// it: the heaps must not refer to where it was (the first thread's exit hung, or read
/// freed memory under Miri), and the moved instance serves threads that come and go.
#[test]
fn an_instance_moved_after_its_first_allocation_stays_sound() {
    in_child(
        "thread_heaps::an_instance_moved_after_its_first_allocation_stays_sound",
        "moved instance",
        || {
            std::thread::spawn(|| {
                let first = Box::new(general());
                let kept = first.malloc(64);
                fill(kept, 64, 0x3c);
                use_small_blocks(&first, 10);
                let moved = rebox(first);
                scribble(size_of::<General>());
                assert!(holds(kept, 64, 0x3c));
                for _ in 0..3 {
                    std::thread::scope(|s| {
                        s.spawn(|| use_small_blocks(&moved, 10));
                    });
                }
                use_small_blocks(&moved, 10);
                // SAFETY: a live block of the instance, which moved with it; freed once.
                unsafe { moved.free(kept) };
                KEPT.lock().unwrap_or_else(|e| e.into_inner()).push(moved);
            })
            .join()
            .unwrap();
        },
    );
}

/// Moves an instance into a new box and frees the old one.
fn rebox(heap: Box<General>) -> Box<General> {
    Box::new(*heap)
}

/// Waits up to 30 s for the forked child `pid` to exit with status 0; kills it if not.
#[cfg(unix)]
fn wait_for_forked(pid: libc::pid_t) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let mut status = 0;
        // SAFETY: `pid` is our child; `status` is a valid place for its status.
        let done = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        assert!(done >= 0, "waitpid failed");
        if done == pid {
            assert!(
                libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
                "the forked child failed: status {status:#x}"
            );
            return;
        }
        if std::time::Instant::now() > deadline {
            // SAFETY: a signal to our own child, then reaping it.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            panic!("the forked child hung (killed after 30 s)");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Forks; the child allocates and frees a small and a large block of `heap`, touching
/// nothing else (a child of a multi-threaded process), and exits with 0 when both came.
#[cfg(unix)]
fn fork_and_allocate(heap: &'static General) -> libc::pid_t {
    // SAFETY: the child calls only the allocator under test (which allocates nothing
    // through the global allocator) and `_exit`.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let small = heap.malloc(64);
        let large = heap.malloc(100_000);
        let ok = !small.is_null() && !large.is_null();
        // SAFETY: live blocks (or null), each freed once; `_exit` ends the child.
        unsafe {
            heap.free(small);
            heap.free(large);
            libc::_exit(if ok { 0 } else { 1 });
        }
    }
    pid
}

/// A fork while another thread holds the large layer's lock: the fork waits for it (the
/// fork handlers take every lock of the thread heaps first), so the child finds it free.
/// (Without handlers the child spun forever on the copy of the held lock.)
#[test]
#[cfg(unix)]
#[cfg_attr(miri, ignore = "Miri cannot fork")]
fn a_fork_while_another_thread_holds_the_large_layer_leaves_the_child_working() {
    static HEAP: General = general();
    let p = HEAP.malloc(100_000);
    // SAFETY: live, freed once.
    unsafe { HEAP.free(p) };
    let (locked, is_locked) = mpsc::channel();
    let holder = std::thread::spawn(move || {
        HEAP.with_large(|_| {
            locked.send(()).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(300));
        });
    });
    is_locked.recv().unwrap();
    let pid = fork_and_allocate(&HEAP);
    holder.join().unwrap();
    wait_for_forked(pid);
}

/// Forks while other threads allocate and free small and large blocks as fast as they
/// can: every child must be able to allocate.
#[test]
#[cfg(unix)]
#[cfg_attr(miri, ignore = "Miri cannot fork")]
fn forks_while_threads_allocate_leave_every_child_working() {
    static HEAP: General = general();
    static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let workers: Vec<_> = (0..2)
        .map(|t| {
            std::thread::spawn(move || {
                let mut i = 0usize;
                while !STOP.load(std::sync::atomic::Ordering::Relaxed) {
                    let size = if i.is_multiple_of(8) {
                        20_000 + t
                    } else {
                        16 + i % 1000
                    };
                    let p = HEAP.malloc(size);
                    fill(p, size.min(64), 1);
                    // SAFETY: live, freed once.
                    unsafe { HEAP.free(p) };
                    i += 1;
                }
            })
        })
        .collect();
    for _ in 0..20 {
        wait_for_forked(fork_and_allocate(&HEAP));
    }
    STOP.store(true, std::sync::atomic::Ordering::Relaxed);
    for worker in workers {
        worker.join().unwrap();
    }
}

/// The child side of [`the_slab_ranges_take_a_quarter_of_an_address_space_limit`]: does
/// nothing unless started by `run_child`.
#[cfg(target_os = "linux")]
#[test]
fn child() {
    let Some(scenario) = crate::child_scenario() else {
        return;
    };
    assert_eq!(scenario, "ranges_under_a_limit");
    static HEAP: General = general();
    let gib = 1 << 30;
    let limit = crate::mapped_address_space() + gib;
    crate::limit_address_space(Some(limit));
    let before = crate::mapped_address_space();
    // The first small block reserves the small slabs' range, the first big one the big
    // slabs' range.
    let small = HEAP.malloc(64);
    let big = HEAP.malloc(20_000);
    assert!(!small.is_null() && !big.is_null());
    let reserved = crate::mapped_address_space() - before;
    // SAFETY: live blocks of `HEAP`, freed once.
    unsafe {
        HEAP.free(small);
        HEAP.free(big);
    }
    crate::limit_address_space(None);
    // The quarter, plus the ranges' side arrays and the heap's registry.
    assert!(
        reserved <= limit / 4 + (16 << 20),
        "the slab ranges reserved {reserved} bytes under a limit of {limit}"
    );
    println!("ranges under a limit child passed");
}

/// Under an address-space limit (`ulimit -v`), the thread heaps' two slab ranges together
/// reserve at most a quarter of it, leaving the rest for the program's large blocks.
#[cfg(target_os = "linux")]
#[test]
#[cfg_attr(miri, ignore = "Miri cannot start processes")]
fn the_slab_ranges_take_a_quarter_of_an_address_space_limit() {
    let output = crate::run_child("thread_heaps::child", "ranges_under_a_limit");
    crate::assert_child_passed(&output, "ranges under a limit child passed");
}

/// A `ThreadHeaps` whose `Large` is made of memory another one handed out (a block of its
/// small slabs): a block of `Large` there would be taken for a slab block when freed, so
/// `Large`'s blocks (here over-aligned ones, which no slab serves) are refused, as when out
/// of memory, and given straight back to it.
#[test]
fn a_large_layer_made_of_a_slab_block_is_refused() {
    use std::alloc::{GlobalAlloc, Layout};
    use std::mem::MaybeUninit;

    use stratalloc::Gauge;
    use stratalloc::ThreadHeaps;
    use stratalloc::layers::{Buffer, SizeHeader, Stats};

    static HEAP: General = general();
    const LEN: usize = 4096;
    let memory = HEAP.malloc(LEN);
    assert!(!memory.is_null());
    // SAFETY: a live block of `HEAP` of `LEN` bytes, never freed: the slice is its only use.
    let memory: &'static mut [MaybeUninit<u8>] =
        unsafe { std::slice::from_raw_parts_mut(memory.cast(), LEN) };
    let other = ThreadHeaps::new(SizeHeader::new(Stats::new(Buffer::new(memory))));
    for size in [8, 64, 1000] {
        let layout = Layout::from_size_align(size, 64).unwrap();
        // SAFETY: a valid layout.
        let block = unsafe { other.alloc(layout) };
        assert!(
            block.is_null(),
            "{block:p}, a block of `Large` in a slab, was served"
        );
        let (gets, live) = other.with_large(|large| {
            let figures = large.inner().gauge();
            (figures.gets, figures.live)
        });
        assert!(gets > 0, "`Large` was not asked");
        assert_eq!(live, 0, "the refused block was not given back");
    }
}

/// C's `realloc` of an over-aligned block of `Large` grows it by its own layout: over
/// `SizeHeader`, whose header sits `align` bytes before such a block, a grow told 16 found
/// no header there.
#[test]
fn realloc_grows_an_over_aligned_large_block_by_its_own_layout() {
    use stratalloc::ThreadHeaps;
    use stratalloc::layers::{Coalesce, Mmap, SizeHeader};

    static HEAP: ThreadHeaps<SizeHeader<Coalesce<Mmap, { 1 << 20 }>>> =
        ThreadHeaps::new(SizeHeader::new(Coalesce::new(Mmap::new())));
    for align in [32, 64, 4096] {
        let block = HEAP.malloc_aligned(100, align);
        assert!(!block.is_null() && block.addr().is_multiple_of(align));
        // SAFETY: 100 bytes of a live block, then `realloc`'s and `free`'s duties: the block
        // is used only through the pointer each call returns, and freed once.
        unsafe {
            for i in 0..100 {
                block.add(i).write(i as u8);
            }
            let grown = HEAP.realloc(block, 150);
            assert!(!grown.is_null());
            assert!(HEAP.usable_size(grown) >= 150);
            assert!((0..100).all(|i| grown.add(i).read() == i as u8));
            let further = HEAP.realloc(grown, 40_000);
            assert!((0..100).all(|i| further.add(i).read() == i as u8));
            HEAP.free(further);
        }
    }
}

/// `realloc` of a block already freed is a second free, as `free` of it is: `free` aborts
/// with a message (for slab blocks by their key, for blocks of `Large` by their headers),
/// so `realloc` must too, before it hands the freed block back as live (or grows it into
/// its free neighbours). Each scenario ends with the harm a missed misuse does: a block
/// handed out twice.
#[test]
#[cfg_attr(miri, ignore = "Miri cannot start processes")]
fn realloc_of_a_freed_block_aborts_with_a_message() {
    static HEAP: General = general();
    let scenarios = [
        // A block of `Large` (an arena block) that merged into its free left neighbour:
        // its header still reads "in use" (only the merged block's first header changes).
        ("large, same size", "heap corrupted"),
        ("large, grown in place", "heap corrupted"),
        // A slab block: its key says it is free.
        ("small, same size", "put twice"),
    ];
    if let Some(scenario) = crate::child_scenario() {
        const N: usize = 40_000;
        // SAFETY: not sound, on purpose: the misuse must abort before any harm.
        unsafe {
            match scenario.as_str() {
                "large, same size" | "large, grown in place" => {
                    let [l, b, r, _x] = [0; 4].map(|_| HEAP.malloc(N));
                    assert_eq!(b as usize - l as usize, N + 16, "carved side by side");
                    HEAP.free(r);
                    HEAP.free(l);
                    HEAP.free(b); // merges into `l` (and `r`): one free block of 3 * (N + 16)
                    let size = if scenario == "large, same size" {
                        N
                    } else {
                        2 * N
                    };
                    let again = HEAP.realloc(b, size);
                    // Not caught: the freed block is live again, inside a free block that
                    // the next request of its size takes whole.
                    let whole = HEAP.malloc(3 * (N + 16) - 16);
                    println!(
                        "the misuse went unnoticed: realloc gave {again:p} (freed {b:p}), and \
                         malloc then gave {whole:p}, which overlaps it: {}",
                        (whole as usize) <= again as usize
                            && again as usize <= whole as usize + 3 * N
                    );
                }
                "small, same size" => {
                    let p = HEAP.malloc(64);
                    let _live = HEAP.malloc(64);
                    HEAP.free(p);
                    let again = HEAP.realloc(p, 64);
                    let other = HEAP.malloc(64);
                    println!(
                        "the misuse went unnoticed: realloc gave {again:p} (freed {p:p}), \
                         malloc then gave {other:p}"
                    );
                }
                other => panic!("unknown scenario {other}"),
            }
        }
        return;
    }
    let mut failures = Vec::new();
    for (scenario, message) in scenarios {
        let out = crate::run_child(
            "thread_heaps::realloc_of_a_freed_block_aborts_with_a_message",
            scenario,
        );
        let result = std::panic::catch_unwind(|| crate::assert_aborted_with(&out, message));
        if result.is_err() {
            failures.push(format!(
                "{scenario}: {:?}, stdout: {}",
                out.status,
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .filter(|l| l.contains("unnoticed"))
                    .collect::<Vec<_>>()
                    .join(" ")
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// A second free of a block of `Large` with a map of its own (over 32 MiB in `General`):
/// the first free unmapped it, so the second cannot read its header and faults, as the
/// `ThreadHeaps` docs now say (it is not the one-line abort that other misuse gets).
#[cfg(unix)]
#[test]
#[cfg_attr(miri, ignore = "Miri cannot start processes")]
fn a_second_free_of_an_unmapped_large_block_faults() {
    static HEAP: General = general();
    if crate::child_scenario().as_deref() == Some("large twice") {
        let p = HEAP.malloc(64 << 20);
        // SAFETY: not sound, on purpose.
        unsafe {
            HEAP.free(p);
            HEAP.free(p);
        }
        println!("the misuse went unnoticed");
        return;
    }
    let out = crate::run_child(
        "thread_heaps::a_second_free_of_an_unmapped_large_block_faults",
        "large twice",
    );
    use std::os::unix::process::ExitStatusExt;
    let stderr = String::from_utf8_lossy(&out.stderr);
    // A sanitizer (the CI's ThreadSanitizer run) catches the fault itself, reports it and
    // exits with a status of its own instead of dying by the signal.
    let sanitizer_saw_the_fault = stderr.contains("Sanitizer: SEGV on unknown address");
    assert!(
        out.status.signal() == Some(libc::SIGSEGV) || sanitizer_saw_the_fault,
        "{:?}; stderr: {stderr}",
        out.status,
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("went unnoticed"));
}

/// A small block that another thread freed waits on its heap's remote stack until the
/// owner takes the stack back; it holds a remote key meanwhile, so a `realloc` of it (which
/// would hand it back as live, to be handed out twice after the drain), a second free
/// from another thread (which would push it twice, a cycle in the stack) and a free from
/// the owner thread (which would put it on its free list while it waits) abort as a second
/// free does.
#[test]
#[cfg_attr(miri, ignore = "Miri cannot start processes")]
fn misuse_of_a_block_freed_on_another_thread_aborts() {
    static HEAP: General = general();
    let free_elsewhere = |p: *mut u8| {
        let sent = Sent(p);
        std::thread::spawn(move || {
            let sent = sent;
            // SAFETY: a block of `HEAP`, freed here (a second time, in "freed twice").
            unsafe { HEAP.free(sent.0) };
        })
        .join()
        .unwrap();
    };
    match crate::child_scenario().as_deref() {
        Some("realloc") => {
            let p = HEAP.malloc(64);
            let _live = HEAP.malloc(64);
            free_elsewhere(p);
            // SAFETY: not sound, on purpose.
            let again = unsafe { HEAP.realloc(p, 64) };
            let mut twice = false;
            for _ in 0..100_000 {
                twice |= HEAP.malloc(64) == again;
            }
            println!(
                "the misuse went unnoticed: realloc gave {again:p}; handed out again: {twice}"
            );
            return;
        }
        Some("freed twice") => {
            let p = HEAP.malloc(64);
            let _live = HEAP.malloc(64);
            free_elsewhere(p);
            free_elsewhere(p);
            println!("the misuse went unnoticed: {p:p} is on the remote stack twice");
            return;
        }
        Some("freed here too") => {
            let p = HEAP.malloc(64);
            let _live = HEAP.malloc(64);
            free_elsewhere(p);
            // SAFETY: not sound, on purpose.
            unsafe { HEAP.free(p) };
            println!("the misuse went unnoticed: {p:p} is on the remote stack and free");
            return;
        }
        _ => {}
    }
    for scenario in ["realloc", "freed twice", "freed here too"] {
        let out = crate::run_child(
            "thread_heaps::misuse_of_a_block_freed_on_another_thread_aborts",
            scenario,
        );
        crate::assert_aborted_with(&out, "put twice");
    }
}

/// Resident memory of this process, in bytes (Linux).
#[cfg(target_os = "linux")]
fn resident_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// A large zeroed block (C's `calloc`, Rust's `vec![0; n]` through `alloc_zeroed`) fresh
/// from the OS is zero already: writing it whole made every page resident (a 1 GiB `calloc`
/// took 1 GiB where glibc takes nothing until it is used). A reused block is still zeroed.
#[cfg(target_os = "linux")]
#[test]
#[cfg_attr(miri, ignore = "a GiB of address space, and /proc")]
fn large_zeroed_blocks_cost_no_memory_until_written() {
    use std::alloc::{GlobalAlloc, Layout};
    static HEAP: General = general();
    let _turn = MEASURING.lock().unwrap_or_else(|e| e.into_inner());
    const GIB: usize = 1 << 30;
    let before = resident_bytes();
    let p = HEAP.calloc(1, GIB);
    let layout = Layout::from_size_align(GIB, 16).unwrap();
    // SAFETY: a valid layout of non-zero size.
    let q = unsafe { HEAP.alloc_zeroed(layout) };
    assert!(!p.is_null() && !q.is_null());
    let grown = resident_bytes().saturating_sub(before);
    // SAFETY: live blocks of `GIB` bytes.
    unsafe {
        for offset in (0..GIB).step_by(GIB / 16) {
            assert_eq!((*p.add(offset), *q.add(offset)), (0, 0));
        }
        HEAP.free(p);
        HEAP.dealloc(q, layout);
    }
    assert!(
        grown < 64 << 20,
        "two zeroed GiB made {} MiB resident",
        grown >> 20
    );
    // Blocks of the arenas are reused, and zeroed.
    for size in [40_000, 1 << 20] {
        let dirty = HEAP.malloc(size);
        fill(dirty, size, 0xAB);
        // SAFETY: a live block, freed once.
        unsafe { HEAP.free(dirty) };
        let zeroed = HEAP.calloc(size, 1);
        assert!(holds(zeroed, size, 0), "calloc({size}) after a free");
        // SAFETY: as above.
        unsafe { HEAP.free(zeroed) };
    }
    assert!(
        HEAP.calloc(usize::MAX, 2).is_null(),
        "an overflowing product"
    );
}

/// Zeroed blocks are zero on every path: slab blocks, arena blocks reused after a dirty
/// free, and a block with a piece of its own (left unwritten, as the OS zeroed it).
#[test]
fn zeroed_blocks_are_zero_on_every_path() {
    use std::alloc::{GlobalAlloc, Layout};
    static HEAP: General = general();
    // Past `Coalesce`'s 32 MiB arenas: a piece of its own.
    const PIECE: usize = 33 << 20;
    for size in [24, 20_000, 40_000, PIECE] {
        let layout = Layout::from_size_align(size, 16).unwrap();
        // SAFETY: valid, non-zero layouts; each block freed once.
        unsafe {
            let dirty = HEAP.alloc(layout);
            let edge = size.min(1 << 16);
            fill(dirty, edge, 0xAB);
            fill(dirty.add(size - edge), edge, 0xAB);
            HEAP.dealloc(dirty, layout);
            let zeroed = HEAP.alloc_zeroed(layout);
            assert!(holds(zeroed, edge, 0), "alloc_zeroed({size}): head");
            assert!(
                holds(zeroed.add(size - edge), edge, 0),
                "alloc_zeroed({size}): tail"
            );
            HEAP.dealloc(zeroed, layout);
            let c = HEAP.calloc(size, 1);
            assert!(
                holds(c, edge, 0) && holds(c.add(size - edge), edge, 0),
                "calloc({size})"
            );
            HEAP.free(c);
        }
    }
}
