//! `Sbrk`: memory from growing the program break, with sized free lists for reuse.

use core::alloc::Layout;
use core::fmt;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicBool, Ordering};

use crate::Layer;
use crate::layer::{require_put, served_size};
use crate::spin::SpinLock;

/// Set once the program has promised that `Sbrk` layers may move the break.
static CLAIMED: AtomicBool = AtomicBool::new(false);
/// Serialises every break move made by `Sbrk` layers of this process.
static BREAK_LOCK: SpinLock = SpinLock::new(());

/// Granule of every block: sizes and alignments are rounded up to it, so that a freed
/// block can hold a [`FreeBlock`] record.
const GRANULE: usize = 16;

/// A freed block, kept inside its own bytes until a request of the same size reuses it.
struct FreeBlock {
    next: *mut FreeBlock,
    size: usize,
}

/// Grows the program break (`sbrk`) for each block, as the classic Unix `malloc` did.
///
/// A put of the block at the top of the break moves the break back down; any other put
/// keeps the block on a free list inside this layer, and a later `get` of the same rounded
/// size reuses it. Sizes and alignments are rounded up to 16 bytes.
///
/// `deinit` gives back the free blocks that sit at the top of the break. Free blocks below
/// memory that someone else still holds cannot go back to the OS (the break only moves at
/// its top): they are forgotten and stay with the process, the one way in which `Sbrk`
/// falls short of "holds no memory after deinit".
///
/// # Living beside the system allocator
///
/// The break is one per process, and `sbrk` is not thread-safe: two threads that move it at
/// the same moment can be handed the same memory. All `Sbrk` layers of the process take one
/// lock around their break moves, so they never race each other, but the system `malloc`
/// does not take that lock: glibc grows its main arena with `sbrk` too (other threads'
/// arenas use `mmap`). glibc copes with a break that someone else moved (it treats its heap
/// as non-contiguous), so the two can share the break, but not at the same instant.
///
/// Because that is a promise about the whole process, `Sbrk` does nothing until the
/// program makes it with [`Sbrk::claim_break`]; before that, `get` answers `None`.
/// Single-threaded programs can make it. A multi-threaded program can make it only if
/// nothing in it reaches the C library's `malloc` while another thread may be in an
/// `Sbrk` call, and that is hard to know: the standard library itself calls C functions
/// that allocate with `malloc` (`std::fs::canonicalize` calls `realpath`, for one), so a
/// `stratalloc` stack over `Sbrk` as the global allocator is not enough.
pub struct Sbrk {
    free: *mut FreeBlock,
    /// Bytes got from the break and not given back to it.
    held: usize,
}

// SAFETY: the free list lives in memory this layer exclusively owns; break moves are
// serialised process-wide by `BREAK_LOCK`.
unsafe impl Send for Sbrk {}

impl Sbrk {
    /// A layer with nothing on its free list.
    pub const fn new() -> Self {
        Sbrk {
            free: ptr::null_mut(),
            held: 0,
        }
    }

    /// Lets `Sbrk` layers move the program break from now on.
    ///
    /// # Safety
    ///
    /// Callers must ensure that, for the rest of the process's life, nothing outside the
    /// `Sbrk` layers moves the program break while one of them is in a call: no `brk` or
    /// `sbrk` calls from other code, and no `malloc` on another thread that may grow the
    /// system heap with `sbrk` (see the [type's documentation](Sbrk)).
    pub unsafe fn claim_break() {
        CLAIMED.store(true, Ordering::Release);
    }

    /// Bytes this layer got from the break and has not moved the break back over.
    pub const fn held_bytes(&self) -> usize {
        self.held
    }

    fn rounded(layout: Layout) -> Option<(usize, usize)> {
        let size = served_size(layout).checked_add(GRANULE - 1)? & !(GRANULE - 1);
        Some((size, layout.align().max(GRANULE)))
    }

    fn with_break<R>(f: impl FnOnce() -> R) -> R {
        let _held = BREAK_LOCK.lock();
        f()
    }

    /// Takes a free block of exactly `size` bytes aligned to `align` off the free list.
    fn reuse(&mut self, size: usize, align: usize) -> Option<NonNull<u8>> {
        let mut link: *mut *mut FreeBlock = &mut self.free;
        // SAFETY: every node on the list is a freed block of this layer, holding a valid
        // `FreeBlock` record written by `put`; `link` always points at a live `next` field
        // (or at `self.free`).
        unsafe {
            while !(*link).is_null() {
                let node = *link;
                if (*node).size == size && node.addr() & (align - 1) == 0 {
                    *link = (*node).next;
                    return NonNull::new(node.cast());
                }
                link = &mut (*node).next;
            }
        }
        None
    }
}

impl Default for Sbrk {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: blocks are fresh ranges of the break (disjoint from everything else while the
// claim holds) or exact-size reuses of freed blocks; a block is on the free list only after
// its owner put it.
unsafe impl Layer for Sbrk {
    const MIN_ALIGN: usize = GRANULE;

    fn get(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        if !CLAIMED.load(Ordering::Acquire) {
            return None;
        }
        let (size, align) = Self::rounded(layout)?;
        if let Some(block) = self.reuse(size, align) {
            return Some(block);
        }
        let block = Self::with_break(|| {
            // SAFETY: `sbrk(0)` only reads the break; the claim says no one else moves it.
            let current = unsafe { libc::sbrk(0) };
            if current as isize == -1 {
                return None;
            }
            let pad = current.addr().wrapping_neg() & (align - 1);
            let grow = pad
                .checked_add(size)
                .filter(|&g| g <= isize::MAX as usize)?;
            // SAFETY: moving the break up is `sbrk`'s contract; failure is reported as -1.
            let old = unsafe { libc::sbrk(grow as libc::intptr_t) };
            if old as isize == -1 || old != current {
                return None;
            }
            Some((old.cast::<u8>().wrapping_add(pad), grow))
        });
        let (block, grow) = block?;
        self.held += grow;
        NonNull::new(block)
    }

    unsafe fn put(&mut self, ptr: NonNull<u8>, layout: Layout) {
        require_put::<Self>(ptr, layout);
        let Some((size, _)) = Self::rounded(layout) else {
            return;
        };
        let released = Self::with_break(|| {
            // SAFETY: reads the break only.
            let top = unsafe { libc::sbrk(0) };
            if ptr.as_ptr().wrapping_add(size) == top.cast() {
                // SAFETY: the block is the topmost piece of the break and ours: moving the
                // break down over it gives exactly its bytes back.
                unsafe { libc::sbrk(-(size as libc::intptr_t)) };
                true
            } else {
                false
            }
        });
        if released {
            self.held = self.held.wrapping_sub(size);
            return;
        }
        let node = ptr.as_ptr().cast::<FreeBlock>();
        // SAFETY: the caller gave the block back to us, it holds at least 16 bytes and is
        // 16-aligned, so it can hold a `FreeBlock`.
        unsafe {
            node.write(FreeBlock {
                next: self.free,
                size,
            })
        };
        self.free = node;
    }

    fn init() -> Self {
        Self::new()
    }

    fn deinit(&mut self) {
        // Freed blocks at the top of the break go back to the OS, repeatedly; the rest are
        // below memory someone else holds, cannot be returned, and stay with the process.
        let free = &mut self.free;
        let held = &mut self.held;
        Self::with_break(|| {
            'again: loop {
                // SAFETY: reads the break only.
                let top = unsafe { libc::sbrk(0) };
                let mut link: *mut *mut FreeBlock = free;
                // SAFETY: the list holds freed blocks with their `FreeBlock` records, as in
                // `reuse`; a block at the top of the break is ours to give back.
                unsafe {
                    while !(*link).is_null() {
                        let node = *link;
                        if node.cast::<u8>().wrapping_add((*node).size) == top.cast() {
                            *link = (*node).next;
                            *held = held.wrapping_sub((*node).size);
                            libc::sbrk(-((*node).size as libc::intptr_t));
                            continue 'again;
                        }
                        link = &mut (*node).next;
                    }
                }
                break;
            }
        });
        self.free = ptr::null_mut();
    }
}

impl fmt::Debug for Sbrk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sbrk")
            .field("held_bytes", &self.held)
            .finish()
    }
}
