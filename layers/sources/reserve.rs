//! `Reserve`: 16 KiB granules carved from one range of address space that the process
//! reserves once, so that "is this block in the range?" is a single compare.
//!
//! Invariants: the range `[base, base + len)` is mapped readable and writable for the life
//! of the process (reserved with `MAP_NORESERVE`: pages cost memory only once touched);
//! every granule below `bump` is either part of a live block or on one of the two free
//! stacks (`dirty`: pages kept; `free`: pages given back to the OS), never both; a granule
//! on a free stack holds the stack's link in its first word.

use core::alloc::Layout;
use core::fmt;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::Layer;

/// The unit the range is carved in, and the alignment every block has.
pub const GRANULE: usize = 1 << 14;

/// The address space asked for first; halved on refusal (a strict overcommit policy, an
/// address-space limit) down to [`SMALLEST_RESERVE`].
const FIRST_RESERVE: usize = if cfg!(miri) {
    1 << 26
} else if usize::BITS >= 64 {
    1 << 36
} else {
    1 << 28
};
const SMALLEST_RESERVE: usize = 1 << 24;

/// `base` while no reservation was tried yet, and after one failed.
const UNRESERVED: usize = 0;
const FAILED: usize = 1;

/// The process's one reserved range, shared by every `Reserve` handle.
struct Range {
    /// The first granule (`UNRESERVED`, `FAILED` or an address).
    base: AtomicUsize,
    /// Its length in bytes.
    len: AtomicUsize,
    /// Bytes of the range handed out so far (granules above are untouched).
    bump: AtomicUsize,
    /// Serialises the reservation and the free stack.
    held: AtomicBool,
    /// Offset of the first free granule whose pages went back to the OS, plus one (0:
    /// none), under `held`.
    free: AtomicUsize,
    /// The same for free granules that kept their pages, and their number.
    dirty: AtomicUsize,
    dirty_granules: AtomicUsize,
}

static RANGE: Range = Range {
    base: AtomicUsize::new(UNRESERVED),
    len: AtomicUsize::new(0),
    bump: AtomicUsize::new(0),
    held: AtomicBool::new(false),
    free: AtomicUsize::new(0),
    dirty: AtomicUsize::new(0),
    dirty_granules: AtomicUsize::new(0),
};

/// Free granules kept with their pages (no `MADV_DONTNEED`, so no page faults when they
/// are reused), up to this many bytes; beyond it, granules put go back to the OS.
const DIRTY_LIMIT: usize = 32 << 20;

/// The provenance of the reserved range (its mapping), kept for rebuilding block pointers.
struct BasePtr(core::cell::UnsafeCell<*mut u8>);
// SAFETY: written once under `RANGE.held` before `RANGE.base` is published (Release), read
// only after `base` is seen set (Acquire).
unsafe impl Sync for BasePtr {}
static BASE_PTR: BasePtr = BasePtr(core::cell::UnsafeCell::new(ptr::null_mut()));

impl Range {
    fn lock(&self) {
        while self
            .held
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            while self.held.load(Ordering::Relaxed) {
                core::hint::spin_loop();
            }
        }
    }

    fn unlock(&self) {
        self.held.store(false, Ordering::Release);
    }

    /// The range's start, reserving it on first use; `None` when the OS refused.
    fn base(&self) -> Option<*mut u8> {
        let base = self.base.load(Ordering::Acquire);
        if base > FAILED {
            // SAFETY: `BASE_PTR` was written before `base` was published.
            return Some(unsafe { *BASE_PTR.0.get() });
        }
        if base == FAILED {
            return None;
        }
        self.lock();
        if self.base.load(Ordering::Acquire) == UNRESERVED {
            let mut len = FIRST_RESERVE;
            let mut mapped = ptr::null_mut();
            while len >= SMALLEST_RESERVE {
                if let Some(map) = map_range(len) {
                    mapped = map;
                    break;
                }
                len /= 2;
            }
            if mapped.is_null() {
                self.base.store(FAILED, Ordering::Release);
            } else {
                // Align the start to a granule (the map is page-aligned); the few bytes
                // skipped are never used.
                let skip = mapped.addr().wrapping_neg() % GRANULE;
                // SAFETY: `skip < GRANULE <= len`, inside the map.
                let start = unsafe { mapped.add(skip) };
                // SAFETY: under `held`, before `base` is published.
                unsafe { *BASE_PTR.0.get() = start };
                self.len.store(len - skip, Ordering::Relaxed);
                self.base.store(start.addr(), Ordering::Release);
            }
        }
        self.unlock();
        let base = self.base.load(Ordering::Acquire);
        // SAFETY: as above.
        (base > FAILED).then(|| unsafe { *BASE_PTR.0.get() })
    }
}

/// Maps `len` bytes of address space, readable and writable, with no memory committed.
fn map_range(len: usize) -> Option<*mut u8> {
    let flags =
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | if cfg!(miri) { 0 } else { libc::MAP_NORESERVE };
    // SAFETY: an anonymous map at an address the OS picks touches no existing memory.
    let map = unsafe {
        libc::mmap(
            ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
            -1,
            0,
        )
    };
    (map != libc::MAP_FAILED).then_some(map.cast())
}

/// Blocks of whole 16 KiB granules from the process's reserved range, a source for layers
/// that want aligned pieces and a cheap "is it one of ours" test
/// ([`contains`](Reserve::contains)).
///
/// The range is reserved on first use with `MAP_NORESERVE` (64 GiB on 64-bit targets,
/// halved until the OS agrees), so it costs memory only as pages are touched. Blocks are
/// granule-aligned. A put pushes the granules on a free stack that later one-granule
/// requests reuse: the first 32 MiB of free granules keep their pages (reusing them costs
/// no page faults), and beyond that the pages go back to the OS (`MADV_DONTNEED`). A request of more than one granule, or aligned to more than
/// one, takes fresh granules from the top of the range; when it is put its granules join
/// the free stack one by one, so the range is best used for granule-sized pieces (as
/// [`Slab`](crate::layers::Slab) asks for). `get` answers `None` once the range is used up.
///
/// Every `Reserve` is a handle to the same range: the layer is a zero-sized value, and its
/// blocks may be put through any handle.
///
/// ```
/// use core::alloc::Layout;
/// use stratalloc::{Layer, layers::Reserve};
///
/// let mut reserve = Reserve::new();
/// let layout = Layout::from_size_align(16384, 16384).unwrap();
/// let block = reserve.get(layout).unwrap();
/// assert!(Reserve::contains(block.as_ptr()));
/// assert!(!Reserve::contains(&layout as *const _ as *mut u8));
/// // SAFETY: got above with `layout`, put once.
/// unsafe { reserve.put(block, layout) };
/// ```
#[derive(Clone, Copy, Default)]
pub struct Reserve;

impl Reserve {
    /// A handle to the process's range (reserved on first `get`).
    pub const fn new() -> Self {
        Reserve
    }

    /// Whether `ptr` lies in the reserved range: one load and one compare.
    #[inline(always)]
    pub fn contains(ptr: *const u8) -> bool {
        let base = RANGE.base.load(Ordering::Relaxed);
        ptr.addr().wrapping_sub(base) < RANGE.len.load(Ordering::Relaxed)
    }

    /// Bytes of the range handed out so far, free granules included.
    pub fn used_bytes() -> usize {
        RANGE.bump.load(Ordering::Relaxed)
    }

    /// Takes the range's lock, so that a `fork` cannot copy it held by another thread.
    /// Every call must be followed by one [`after_fork`](Reserve::after_fork), in the
    /// parent and in the child.
    pub fn before_fork() {
        RANGE.lock();
    }

    /// Releases the lock [`before_fork`](Reserve::before_fork) took.
    pub fn after_fork() {
        RANGE.unlock();
    }

    /// The pointer for `offset` into the range, with the range's provenance.
    fn at(base: *mut u8, offset: usize) -> NonNull<u8> {
        // SAFETY: offsets below the range's length stay inside the map, which is never null.
        unsafe { NonNull::new_unchecked(base.add(offset)) }
    }

    /// Pops a free granule, one that kept its pages first; under `held`.
    fn pop_free(base: *mut u8) -> Option<NonNull<u8>> {
        RANGE.lock();
        let mut block = Self::pop_stack(base, &RANGE.dirty);
        if block.is_some() {
            RANGE.dirty_granules.fetch_sub(1, Ordering::Relaxed);
        } else {
            block = Self::pop_stack(base, &RANGE.free);
        }
        RANGE.unlock();
        block
    }

    /// Pops a granule off one of the free stacks (`held` is ours).
    fn pop_stack(base: *mut u8, stack: &AtomicUsize) -> Option<NonNull<u8>> {
        let top = stack.load(Ordering::Relaxed);
        (top != 0).then(|| {
            let block = Self::at(base, top - 1);
            // SAFETY: a granule on a free stack holds the next link in its first word.
            let next = unsafe { block.as_ptr().cast::<usize>().read() };
            stack.store(next, Ordering::Relaxed);
            block
        })
    }

    /// Pushes `granules` granules from `offset` on a free stack (`held` is ours).
    fn push_stack(base: *mut u8, stack: &AtomicUsize, offset: usize, granules: usize) {
        for i in 0..granules {
            let granule = offset + i * GRANULE;
            let link = Self::at(base, granule).as_ptr().cast::<usize>();
            // SAFETY: the granule is ours (part of a block put) and holds at least a word.
            unsafe { link.write(stack.load(Ordering::Relaxed)) };
            stack.store(granule + 1, Ordering::Relaxed);
        }
    }

    /// Takes `granules` fresh granules, aligned to `align`, from the top of the range.
    fn bump(base: *mut u8, granules: usize, align: usize) -> Option<NonNull<u8>> {
        let len = RANGE.len.load(Ordering::Relaxed);
        let size = granules.checked_mul(GRANULE)?;
        let mut old = RANGE.bump.load(Ordering::Relaxed);
        loop {
            let start = (base.addr() + old).checked_next_multiple_of(align)? - base.addr();
            let end = start.checked_add(size)?;
            if end > len {
                return None;
            }
            match RANGE
                .bump
                .compare_exchange_weak(old, end, Ordering::Relaxed, Ordering::Relaxed)
            {
                // Granules skipped for alignment stay unused: rare, and costing no memory.
                Ok(_) => return Some(Self::at(base, start)),
                Err(now) => old = now,
            }
        }
    }

    /// The granules a layout takes.
    fn granules(layout: Layout) -> Option<usize> {
        Some(layout.size().max(1).checked_next_multiple_of(GRANULE)? / GRANULE)
    }
}

// SAFETY: blocks are whole granules of the mapped range, disjoint because the bump only
// moves up and a granule is on a free stack only while no block holds it; every block
// starts at a granule (and `align`) boundary. Reused granules keep old bytes, so blocks
// are not promised zeroed.
unsafe impl Layer for Reserve {
    const MIN_ALIGN: usize = GRANULE;

    fn get(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        let base = RANGE.base()?;
        let granules = Self::granules(layout)?;
        if granules == 1
            && layout.align() <= GRANULE
            && let Some(block) = Self::pop_free(base)
        {
            return Some(block);
        }
        Self::bump(base, granules, layout.align().max(GRANULE))
    }

    unsafe fn put(&mut self, ptr: NonNull<u8>, layout: Layout) {
        // A live block means the range was reserved; the layout's granules fit it.
        let Some(base) = RANGE.base() else { return };
        let Some(granules) = Self::granules(layout) else {
            return;
        };
        let offset = ptr.as_ptr().addr() - base.addr();
        RANGE.lock();
        let dirty = RANGE.dirty_granules.load(Ordering::Relaxed);
        if (dirty + granules) * GRANULE <= DIRTY_LIMIT {
            Self::push_stack(base, &RANGE.dirty, offset, granules);
            RANGE
                .dirty_granules
                .store(dirty + granules, Ordering::Relaxed);
            RANGE.unlock();
            return;
        }
        RANGE.unlock();
        // SAFETY: the caller gives back a live block of ours: its pages are ours to drop
        // (a private anonymous map reads back zero afterwards). Failure is harmless: the
        // pages keep their bytes, which nothing relies on.
        unsafe {
            libc::madvise(ptr.as_ptr().cast(), granules * GRANULE, libc::MADV_DONTNEED);
        }
        RANGE.lock();
        Self::push_stack(base, &RANGE.free, offset, granules);
        RANGE.unlock();
    }

    fn init() -> Self {
        Reserve
    }

    /// The range is the process's: a handle holds nothing to release.
    fn deinit(&mut self) {}
}

impl fmt::Debug for Reserve {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reserve")
            .field("reserved", &RANGE.len.load(Ordering::Relaxed))
            .field("used", &Self::used_bytes())
            .finish()
    }
}
