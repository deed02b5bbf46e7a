//! `Reserve<R>`: 16 KiB granules carved from one range of address space that the process
//! reserves once, so that "is this block in the range?" is a single compare.
//!
//! Invariants (per range, all under its lock but `base` and `len`, which are set once):
//! - `[base, base + len)` is reserved with no access; `[base, base + committed)` is
//!   readable and writable (`committed` only grows, in `COMMIT_STEP`s);
//! - every granule below `bump` is part of a live block, on one of the two free stacks
//!   (`dirty`: pages kept, linked through their first word; `clean`: pages given back to
//!   the OS, listed in the side array `clean_list` so that nothing touches them), or was
//!   skipped to align a block; never two of these.

use core::alloc::Layout;
use core::cell::UnsafeCell;
use core::fmt;
use core::marker::PhantomData;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicUsize, Ordering};

use crate::Layer;
use crate::spin::SpinLock;

/// The unit the range is carved in, and the alignment every block has.
pub const GRANULE: usize = 1 << 14;

/// The address space asked for first; halved on refusal down to [`SMALLEST_RESERVE`], and
/// never more than a quarter of the process's address-space limit (`RLIMIT_AS`).
const FIRST_RESERVE: usize = if cfg!(miri) {
    1 << 26
} else if usize::BITS >= 64 {
    1 << 36
} else {
    1 << 28
};
const SMALLEST_RESERVE: usize = 1 << 24;

/// The range is made readable and writable this much at a time, as blocks reach it.
const COMMIT_STEP: usize = 4 << 20;

/// Free granules kept with their pages (no `MADV_DONTNEED`, so no page faults when they
/// are reused), up to this many bytes; beyond it, granules put go back to the OS.
const DIRTY_LIMIT: usize = 32 << 20;

/// `base` while no reservation was tried yet, and after one failed.
const UNRESERVED: usize = 0;
const FAILED: usize = 1;

/// One reserved range: see the module invariants.
pub struct Range {
    /// The first granule (`UNRESERVED`, `FAILED` or an address).
    base: AtomicUsize,
    len: AtomicUsize,
    /// The range's start with the mapping's provenance (written before `base` is
    /// published, read after it is seen).
    base_ptr: UnsafeCell<*mut u8>,
    held: SpinLock,
    /// The rest is under `held`.
    bump: AtomicUsize,
    committed: AtomicUsize,
    /// Offset of the first dirty granule plus one (0: none), and the number of them.
    dirty: AtomicUsize,
    dirty_granules: AtomicUsize,
    /// The side array of clean granules (indices), its length, in its own map.
    clean_list: UnsafeCell<*mut u32>,
    clean_len: AtomicUsize,
}

// SAFETY: the cells are written under `held` (or once, before `base` is published) and read
// under `held` (or after `base` is seen published).
unsafe impl Sync for Range {}

impl Range {
    const fn new() -> Self {
        Range {
            base: AtomicUsize::new(UNRESERVED),
            len: AtomicUsize::new(0),
            base_ptr: UnsafeCell::new(ptr::null_mut()),
            held: SpinLock::new(),
            bump: AtomicUsize::new(0),
            committed: AtomicUsize::new(0),
            dirty: AtomicUsize::new(0),
            dirty_granules: AtomicUsize::new(0),
            clean_list: UnsafeCell::new(ptr::null_mut()),
            clean_len: AtomicUsize::new(0),
        }
    }

    fn lock(&self) {
        self.held.lock();
    }

    fn unlock(&self) {
        self.held.unlock();
    }

    /// The range's start, reserving it on first use; `None` when the OS refused.
    fn base(&self) -> Option<*mut u8> {
        let base = self.base.load(Ordering::Acquire);
        if base > FAILED {
            // SAFETY: `base_ptr` was written before `base` was published.
            return Some(unsafe { *self.base_ptr.get() });
        }
        if base == FAILED {
            return None;
        }
        self.lock();
        if self.base.load(Ordering::Acquire) == UNRESERVED {
            self.reserve();
        }
        self.unlock();
        let base = self.base.load(Ordering::Acquire);
        // SAFETY: as above.
        (base > FAILED).then(|| unsafe { *self.base_ptr.get() })
    }

    /// Reserves the range and its side array (`held` is ours, nothing reserved yet).
    fn reserve(&self) {
        let mut len = FIRST_RESERVE.min(address_space_limit() / 4);
        while len >= SMALLEST_RESERVE {
            let list_len = (len / GRANULE * size_of::<u32>()).next_multiple_of(4096);
            if let Some(map) = map_range(len, cfg!(miri)) {
                if let Some(list) = map_range(list_len, true) {
                    // Align the start to a granule (the map is page-aligned); the few bytes
                    // skipped are never used.
                    let skip = map.addr().wrapping_neg() % GRANULE;
                    // SAFETY: `skip < GRANULE <= len`, inside the map; the cells are written
                    // under `held`, before `base` is published.
                    unsafe {
                        *self.base_ptr.get() = map.add(skip);
                        *self.clean_list.get() = list.cast();
                    }
                    self.len.store(len - skip, Ordering::Relaxed);
                    // Under Miri the range is mapped readable and writable whole.
                    let committed = if cfg!(miri) { len - skip } else { 0 };
                    self.committed.store(committed, Ordering::Relaxed);
                    self.base.store(map.addr() + skip, Ordering::Release);
                    return;
                }
                // SAFETY: the map was made just above and nothing uses it.
                unsafe { libc::munmap(map.cast(), len) };
            }
            len /= 2;
        }
        self.base.store(FAILED, Ordering::Release);
    }

    /// Makes the range readable and writable up to at least `end` (`held` is ours).
    fn commit(&self, base: *mut u8, end: usize) -> bool {
        let committed = self.committed.load(Ordering::Relaxed);
        if end <= committed {
            return true;
        }
        let len = self.len.load(Ordering::Relaxed);
        let target = end.next_multiple_of(COMMIT_STEP).min(len);
        // SAFETY: `[committed, target)` lies inside our reservation, page-aligned (the base
        // is granule-aligned and both offsets are multiples of a granule or of the step).
        let done = unsafe {
            libc::mprotect(
                base.add(committed).cast(),
                target - committed,
                libc::PROT_READ | libc::PROT_WRITE,
            )
        } == 0;
        if done {
            self.committed.store(target, Ordering::Relaxed);
        }
        done
    }
}

/// A quarter of this is the most the range takes of the process's address-space limit.
fn address_space_limit() -> usize {
    if cfg!(miri) {
        return usize::MAX;
    }
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `getrlimit` writes the limit into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut limit) } != 0
        || limit.rlim_cur == libc::RLIM_INFINITY
    {
        return usize::MAX;
    }
    usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX)
}

/// Maps `len` bytes of address space with no memory committed: readable and writable when
/// `writable`, else with no access (to be opened by `mprotect`).
fn map_range(len: usize, writable: bool) -> Option<*mut u8> {
    let flags =
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | if cfg!(miri) { 0 } else { libc::MAP_NORESERVE };
    let prot = if writable {
        libc::PROT_READ | libc::PROT_WRITE
    } else {
        libc::PROT_NONE
    };
    // SAFETY: an anonymous map at an address the OS picks touches no existing memory.
    let map = unsafe { libc::mmap(ptr::null_mut(), len, prot, flags, -1, 0) };
    (map != libc::MAP_FAILED).then_some(map.cast())
}

/// Which reserved range a [`Reserve`] carves from: [`SharedRange`] for everyone, or a
/// range private to one part of the crate (the [`ThreadHeaps`](crate::ThreadHeaps)' slabs,
/// so that no other layer's blocks can lie in their range). Sealed.
pub trait ReserveRange: sealed::Sealed {}

mod sealed {
    /// The range behind a [`ReserveRange`](super::ReserveRange).
    pub trait Sealed {
        /// The process's one instance of the range.
        fn range() -> &'static super::Range;
    }
}

/// The process-wide range that every `Reserve` (the default) shares.
#[derive(Clone, Copy, Debug, Default)]
pub struct SharedRange;

static SHARED: Range = Range::new();

impl sealed::Sealed for SharedRange {
    fn range() -> &'static Range {
        &SHARED
    }
}
impl ReserveRange for SharedRange {}

/// The range of the thread heaps' slabs, which no code outside the crate can name.
#[cfg_attr(not(feature = "std"), allow(dead_code))]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct SlabRange;

static SLABS: Range = Range::new();

impl sealed::Sealed for SlabRange {
    fn range() -> &'static Range {
        &SLABS
    }
}
impl ReserveRange for SlabRange {}

/// Blocks of whole 16 KiB granules from a reserved range of address space, a source for
/// layers that want aligned pieces and a cheap "is it one of ours" test
/// ([`contains`](Reserve::contains)).
///
/// The range is reserved on first use, with no access and `MAP_NORESERVE` (64 GiB on 64-bit
/// targets, at most a quarter of an address-space limit, halved until the OS agrees), and
/// opened 4 MiB at a time as blocks reach it, so it costs memory only as pages are touched
/// and counts against a strict overcommit policy only as it is used. Blocks are
/// granule-aligned. A put pushes the granules on a free stack that later one-granule
/// requests reuse: the first 32 MiB of free granules keep their pages (reusing them costs
/// no page faults); beyond that the pages go back to the OS (`MADV_DONTNEED`) and are not
/// touched again until reused. A request of more than one granule, or aligned to more than
/// one, takes fresh granules from the top of the range; when it is put its granules join
/// the free stacks one by one, so the range is best used for granule-sized pieces (as
/// [`Slab`](crate::layers::Slab) asks for). `get` answers `None` once the range is used up.
///
/// Every `Reserve` of one [`ReserveRange`] is a handle to the same range: the layer is a
/// zero-sized value, and its blocks may be put through any handle of that range.
///
/// ```
/// use core::alloc::Layout;
/// use stratalloc::{Layer, layers::Reserve};
///
/// let mut reserve = Reserve::new();
/// let layout = Layout::from_size_align(16384, 16384).unwrap();
/// let block = reserve.get(layout).unwrap();
/// assert!(reserve.contains(block.as_ptr()));
/// assert!(!reserve.contains(&layout as *const _ as *mut u8));
/// // SAFETY: got above with `layout`, put once.
/// unsafe { reserve.put(block, layout) };
/// ```
pub struct Reserve<R: ReserveRange = SharedRange>(PhantomData<R>);

impl<R: ReserveRange> Clone for Reserve<R> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<R: ReserveRange> Copy for Reserve<R> {}
impl Default for Reserve {
    fn default() -> Self {
        Reserve::new()
    }
}

impl Reserve {
    /// A handle to the process's shared range (reserved on first `get`).
    pub const fn new() -> Self {
        Reserve(PhantomData)
    }
}

impl<R: ReserveRange> Reserve<R> {
    /// A handle to range `R`.
    #[cfg_attr(not(feature = "std"), allow(dead_code))]
    pub(crate) const fn handle() -> Self {
        Reserve(PhantomData)
    }

    fn range() -> &'static Range {
        <R as sealed::Sealed>::range()
    }

    /// Whether `ptr` lies in the reserved range: two loads and one compare.
    #[inline(always)]
    pub fn contains(&self, ptr: *const u8) -> bool {
        let range = Self::range();
        let base = range.base.load(Ordering::Relaxed);
        ptr.addr().wrapping_sub(base) < range.len.load(Ordering::Relaxed)
    }

    /// Bytes of the range handed out so far, free granules included.
    pub fn used_bytes(&self) -> usize {
        Self::range().bump.load(Ordering::Relaxed)
    }

    /// Takes the range's lock, so that a `fork` cannot copy it held by another thread.
    /// Every call must be followed by one [`after_fork`](Reserve::after_fork), in the
    /// parent and in the child.
    pub fn before_fork() {
        Self::range().lock();
    }

    /// Releases the lock [`before_fork`](Reserve::before_fork) took.
    pub fn after_fork() {
        Self::range().unlock();
    }

    /// The pointer for `offset` into the range, with the range's provenance.
    fn at(base: *mut u8, offset: usize) -> NonNull<u8> {
        // SAFETY: offsets below the range's length stay inside the map, which is never null.
        unsafe { NonNull::new_unchecked(base.add(offset)) }
    }

    /// Pops a free granule, one that kept its pages first (`held` is ours).
    fn pop_free(range: &Range, base: *mut u8) -> Option<NonNull<u8>> {
        let top = range.dirty.load(Ordering::Relaxed);
        if top != 0 {
            let block = Self::at(base, top - 1);
            // SAFETY: a dirty granule holds the next link in its first word.
            let next = unsafe { block.as_ptr().cast::<usize>().read() };
            range.dirty.store(next, Ordering::Relaxed);
            range.dirty_granules.fetch_sub(1, Ordering::Relaxed);
            return Some(block);
        }
        let len = range.clean_len.load(Ordering::Relaxed);
        (len != 0).then(|| {
            range.clean_len.store(len - 1, Ordering::Relaxed);
            // SAFETY: the side array holds `len` indices, under `held`.
            let index = unsafe { (*range.clean_list.get()).add(len - 1).read() };
            Self::at(base, index as usize * GRANULE)
        })
    }

    /// Takes `granules` fresh granules, aligned to `align`, from the top of the range
    /// (`held` is ours).
    fn bump(range: &Range, base: *mut u8, granules: usize, align: usize) -> Option<NonNull<u8>> {
        let len = range.len.load(Ordering::Relaxed);
        let size = granules.checked_mul(GRANULE)?;
        let old = range.bump.load(Ordering::Relaxed);
        let start = (base.addr() + old).checked_next_multiple_of(align)? - base.addr();
        let end = start.checked_add(size)?;
        if end > len || !range.commit(base, end) {
            return None;
        }
        range.bump.store(end, Ordering::Relaxed);
        Some(Self::at(base, start))
    }

    /// The granules a layout takes.
    fn granules(layout: Layout) -> Option<usize> {
        Some(layout.size().max(1).checked_next_multiple_of(GRANULE)? / GRANULE)
    }
}

// SAFETY: blocks are whole granules of the range's open part, disjoint because the bump
// only moves up and a granule is on a free stack only while no block holds it; every block
// starts at a granule (and `align`) boundary. Reused granules keep old bytes, so blocks are
// not promised zeroed.
unsafe impl<R: ReserveRange> Layer for Reserve<R> {
    const MIN_ALIGN: usize = GRANULE;

    fn get(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        let range = Self::range();
        let base = range.base()?;
        let granules = Self::granules(layout)?;
        range.lock();
        let mut block = None;
        if granules == 1 && layout.align() <= GRANULE {
            block = Self::pop_free(range, base);
        }
        if block.is_none() {
            block = Self::bump(range, base, granules, layout.align().max(GRANULE));
        }
        range.unlock();
        block
    }

    unsafe fn put(&mut self, ptr: NonNull<u8>, layout: Layout) {
        let range = Self::range();
        // A live block means the range was reserved; the layout's granules fit it.
        let Some(base) = range.base() else { return };
        let Some(granules) = Self::granules(layout) else {
            return;
        };
        let offset = ptr.as_ptr().addr() - base.addr();
        range.lock();
        let dirty = range.dirty_granules.load(Ordering::Relaxed);
        if (dirty + granules) * GRANULE <= DIRTY_LIMIT {
            for i in 0..granules {
                let granule = offset + i * GRANULE;
                let link = Self::at(base, granule).as_ptr().cast::<usize>();
                // SAFETY: the granule is ours (part of the block put) and holds a word.
                unsafe { link.write(range.dirty.load(Ordering::Relaxed)) };
                range.dirty.store(granule + 1, Ordering::Relaxed);
            }
            range
                .dirty_granules
                .store(dirty + granules, Ordering::Relaxed);
            range.unlock();
            return;
        }
        range.unlock();
        // SAFETY: the caller gives back a live block of ours: its pages are ours to drop.
        // Failure is harmless: the pages keep their bytes, which nothing relies on.
        unsafe {
            libc::madvise(ptr.as_ptr().cast(), granules * GRANULE, libc::MADV_DONTNEED);
        }
        range.lock();
        let len = range.clean_len.load(Ordering::Relaxed);
        for i in 0..granules {
            // SAFETY: the side array has room for every granule of the range, and a granule
            // is listed at most once (it was part of a live block); indices fit in `u32`
            // (at most 2^36 / 2^14 granules).
            unsafe {
                (*range.clean_list.get())
                    .add(len + i)
                    .write((offset / GRANULE + i) as u32)
            };
        }
        range.clean_len.store(len + granules, Ordering::Relaxed);
        range.unlock();
    }

    fn init() -> Self {
        Reserve(PhantomData)
    }

    /// The range is the process's: a handle holds nothing to release.
    fn deinit(&mut self) {}
}

impl<R: ReserveRange> fmt::Debug for Reserve<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reserve")
            .field("reserved", &Self::range().len.load(Ordering::Relaxed))
            .field("used", &self.used_bytes())
            .finish()
    }
}
