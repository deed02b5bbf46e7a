//! `Reserve<R>`: granules (16 KiB; 64 and 256 KiB in the ranges of the thread heaps'
//! slabs) carved from one range of address space that the process reserves once, so that
//! "is this block in the range?" is a single compare. Entry point: [`Reserve`] and its
//! `Layer` impl.
//!
//! Invariants (per range, all under its lock but `base` and `len`, which are set once, and
//! `tick`, also read without the lock as a hint):
//! - `[base, base + len)` is reserved with no access; `[base, base + committed)` is
//!   readable and writable (`committed` only grows, in `COMMIT_STEP`s);
//! - every granule below `bump` is part of a live block, on one of the free stacks
//!   (`young` and `aged`: pages kept, linked through their first word; `clean`: pages given
//!   back to the OS, listed in the side array `clean_list` so that nothing touches them),
//!   being given back by one thread (off every stack, on its way from `aged`, or from a
//!   put when 32 MiB are kept already, to `clean`), or was skipped to align a block; never
//!   two of these. (A `fork` while a thread is giving granules back leaves those in the
//!   child on no list: address space lost to the child, never handed out twice.)

use core::alloc::Layout;
use core::cell::UnsafeCell;
use core::fmt;
use core::marker::PhantomData;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::Layer;
use crate::abort::abort_with;
use crate::layer::require_put;
use crate::os::{self, now_ms};
use crate::spin::SpinLock;

/// The unit the shared range is carved in, and the alignment every block has: the smallest
/// granule a range has (the thread heaps' slabs come from ranges of larger ones).
pub const GRANULE: usize = 1 << 14;

/// The address space asked for first; halved on refusal down to [`SMALLEST_RESERVE`], and
/// never more than the range's share of the process's address-space limit (`RLIMIT_AS`):
/// a quarter for the shared range, and a quarter for the thread heaps' two ranges together.
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

/// Free granules keep their pages (no `MADV_DONTNEED`, so no page faults when they are
/// reused) for a while: a put pushes them on the `young` stack, and every `DECAY_MS` (at
/// the next get or put, for there is no thread of our own) the `aged` granules go back to
/// the OS and the young ones become aged. So a granule left unused for two ticks is given
/// back, while a program that frees and soon allocates again (in phases, rounds, requests)
/// reuses its pages. The memory of a heap that shrank for good is not held for no one:
/// slab memory cannot serve the other layers a program's blocks may move to (say, as its
/// strings grow past the slab sizes), so pages kept here would add to theirs.
///
/// 20 ms (so 20-40 ms unused): long enough that a program which frees everything between rounds
/// keeps its pages, short enough that a short program's old slabs are gone before its peak (the
/// measurements behind the choice are in `benches/README.md`). (Under Miri, whose clock runs with
/// the program's steps, an hour: the tests drive ticks there themselves.)
const DECAY_MS: u64 = if cfg!(miri) { 3_600_000 } else { 20 };

/// At most this many bytes of free granules keep their pages, whatever their age; beyond
/// it, granules put go back to the OS at once.
const DIRTY_MAX: usize = 32 << 20;

/// `base` while no reservation was tried yet, and after one failed.
const UNRESERVED: usize = 0;
const FAILED: usize = 1;

// ---- the reserved range ------------------------------------------------------------------

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
    /// Free granules with their pages, put since the last tick: the offset of the first
    /// plus one (0: none), and the number of them.
    young: AtomicUsize,
    young_granules: AtomicUsize,
    /// Free granules with their pages, put before the last tick (given back at the next).
    aged: AtomicUsize,
    aged_granules: AtomicUsize,
    /// The monotonic clock at the last tick, in milliseconds (read without `held` as a
    /// hint that a tick may be due, written under it).
    tick: AtomicU64,
    /// Milliseconds between ticks: `DECAY_MS`, or longer for a test's range.
    decay_ms: u64,
    /// The unit the range is carved in, and the alignment of its blocks.
    granule: usize,
    /// The range reserves at most `1 / limit_share` of the address-space limit.
    limit_share: usize,
    /// The side array of clean granules (indices), its length, in its own map.
    clean_list: UnsafeCell<*mut u32>,
    clean_len: AtomicUsize,
}

// SAFETY: the cells are written under `held` (or once, before `base` is published) and read
// under `held` (or after `base` is seen published).
unsafe impl Sync for Range {}

impl Range {
    /// A range carved in `granule`s (a power of two, at least [`GRANULE`]).
    const fn new(granule: usize) -> Self {
        Range::with_decay(granule, DECAY_MS)
    }

    /// A range carved in `granule`s whose ticks come `decay_ms` apart.
    const fn with_decay(granule: usize, decay_ms: u64) -> Self {
        assert!(granule.is_power_of_two() && granule >= GRANULE && granule <= COMMIT_STEP);
        Range {
            granule,
            limit_share: 4,
            base: AtomicUsize::new(UNRESERVED),
            len: AtomicUsize::new(0),
            base_ptr: UnsafeCell::new(ptr::null_mut()),
            held: SpinLock::new(()),
            bump: AtomicUsize::new(0),
            committed: AtomicUsize::new(0),
            young: AtomicUsize::new(0),
            young_granules: AtomicUsize::new(0),
            aged: AtomicUsize::new(0),
            aged_granules: AtomicUsize::new(0),
            tick: AtomicU64::new(0),
            decay_ms,
            clean_list: UnsafeCell::new(ptr::null_mut()),
            clean_len: AtomicUsize::new(0),
        }
    }

    /// The same range, reserving at most `1 / limit_share` of the address-space limit (a
    /// quarter by default), for ranges that share a quarter.
    const fn with_limit_share(self, limit_share: usize) -> Self {
        Range {
            limit_share,
            ..self
        }
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
        let held = self.held.lock();
        if self.base.load(Ordering::Acquire) == UNRESERVED {
            self.reserve();
        }
        drop(held);
        let base = self.base.load(Ordering::Acquire);
        // SAFETY: as above.
        (base > FAILED).then(|| unsafe { *self.base_ptr.get() })
    }

    /// Reserves the range and its side array (`held` is ours, nothing reserved yet).
    fn reserve(&self) {
        let mut len = FIRST_RESERVE.min(os::address_space_limit() / self.limit_share);
        while len >= SMALLEST_RESERVE {
            let list_len = (len / self.granule * size_of::<u32>()).next_multiple_of(4096);
            if let Some(map) = os::reserve(len) {
                let map = map.as_ptr();
                if let Some(list) = os::map(list_len) {
                    // Align the start to a granule (the map is page-aligned); the few bytes
                    // skipped are never used.
                    let skip = map.addr().wrapping_neg() % self.granule;
                    // SAFETY: `skip < granule <= len`, inside the map; the cells are written
                    // under `held`, before `base` is published.
                    unsafe {
                        *self.base_ptr.get() = map.add(skip);
                        *self.clean_list.get() = list.as_ptr().cast();
                    }
                    // Under Miri the range is mapped readable and writable whole.
                    let committed = if cfg!(miri) { len - skip } else { 0 };
                    self.committed.store(committed, Ordering::Relaxed);
                    self.base.store(map.addr() + skip, Ordering::Release);
                    // The length last: `contains` reads it first (see there).
                    self.len.store(len - skip, Ordering::Release);
                    return;
                }
                // SAFETY: the range was reserved just above and nothing uses it.
                unsafe { os::unmap(map, len) };
            }
            len /= 2;
        }
        self.base.store(FAILED, Ordering::Release);
    }

    /// Whether `addr` lies in the range (false while it is not reserved).
    ///
    /// No lock, and it may run while another thread reserves the range: `reserve` stores
    /// `base` and then `len` (Release), and this loads `len` first (Acquire). A length of
    /// 0 (not reserved yet, or the reservation failed) contains nothing, whatever `base`
    /// is; a length seen set was stored after `base`, so the `base` loaded after it is the
    /// range's (it is written once). Loaded the other way round, `base` could still be 0
    /// with the length already set, and every address below the length would be "in".
    #[inline(always)]
    fn contains(&self, addr: usize) -> bool {
        let len = self.len.load(Ordering::Acquire);
        let base = self.base.load(Ordering::Relaxed);
        addr.wrapping_sub(base) < len
    }

    /// Gives the range's address space back (most of it: the few bytes skipped for
    /// alignment stay mapped), for tests that reserve ranges of their own again and again.
    #[cfg(all(test, not(miri)))]
    fn unreserve(&self) {
        let base = self.base.load(Ordering::Acquire);
        if base <= FAILED {
            return;
        }
        let len = self.len.load(Ordering::Relaxed);
        let list_len = (len / self.granule * size_of::<u32>()).next_multiple_of(4096);
        // SAFETY: the range and its side array were mapped by `reserve`, and the test that
        // calls this uses neither again.
        unsafe {
            os::unmap(*self.base_ptr.get(), len);
            os::unmap((*self.clean_list.get()).cast(), list_len);
        }
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
        let done = unsafe { os::commit(base.add(committed), target - committed) };
        if done {
            self.committed.store(target, Ordering::Relaxed);
        }
        done
    }
}

// ---- which range: the shared one or the slabs' -------------------------------------------

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

static SHARED: Range = Range::new(GRANULE);

impl sealed::Sealed for SharedRange {
    fn range() -> &'static Range {
        &SHARED
    }
}
impl ReserveRange for SharedRange {}

/// Declares a range private to the crate: its marker type (which no code outside the crate
/// can name), the range itself, carved in `$granule`s, and the impls.
macro_rules! private_range {
    ($(#[$doc:meta])* $name:ident, $granule:expr) => {
        $(#[$doc])*
        #[cfg_attr(not(feature = "std"), allow(dead_code))]
        #[derive(Clone, Copy, Debug, Default)]
        pub(crate) struct $name;

        impl sealed::Sealed for $name {
            fn range() -> &'static Range {
                // The thread heaps' two ranges share a quarter of the address-space limit.
                static RANGE: Range = Range::new($granule).with_limit_share(8);
                &RANGE
            }
        }
        impl ReserveRange for $name {}
    };
}

/// The granules of [`SlabRange`] and [`BigSlabRange`]: one slab of the thread heaps'
/// small blocks (up to 8 KiB), one of their big blocks (up to 32 KiB).
pub(crate) const SLAB_GRANULE: usize = 1 << 16;
pub(crate) const BIG_GRANULE: usize = 1 << 18;

private_range!(
    /// The range of the thread heaps' small slabs (and of the heaps and their registries),
    /// carved in [`SLAB_GRANULE`]s, so that a freed slab is reused whole (a range of 16 KiB
    /// granules reuses only single granules).
    SlabRange,
    SLAB_GRANULE
);
private_range!(
    /// The range of the thread heaps' big slabs, carved in [`BIG_GRANULE`]s.
    BigSlabRange,
    BIG_GRANULE
);

// ---- the handle: figures, decay and fork handling ----------------------------------------

/// Blocks of whole 16 KiB granules from a reserved range of address space, a source for
/// layers that want aligned pieces and a cheap "is it one of ours" test
/// ([`contains`](Reserve::contains)).
///
/// The range is reserved on first use, with no access and `MAP_NORESERVE` (on Windows
/// `MEM_RESERVE`; 64 GiB on 64-bit targets, at most a quarter of an address-space limit
/// (an eighth for each of the thread heaps' ranges), halved until the OS agrees), and
/// opened (committed) 4 MiB at a time as blocks reach it, so it costs memory only as pages
/// are touched and counts against a strict overcommit policy only as it is used. Blocks are
/// granule-aligned. A put pushes the granules on a free stack that later one-granule
/// requests reuse. Free granules keep their pages (reusing them costs no page faults) until
/// they have been unused for 20-40 ms, or beyond 32 MiB of them; then the pages go back to
/// the OS (`MADV_DONTNEED`; on Windows `MEM_RESET`, which frees the memory but keeps it in
/// the commit charge) and are not touched again until reused. (There is no thread of
/// our own: the clock is read at gets and puts, so a program that stops calling keeps its
/// last free granules.) A request of more than one granule, or aligned to more than
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
        Self::range().contains(ptr.addr())
    }

    /// Gives the pages of free granules unused for two ticks back to the OS, when a tick
    /// is due: what gets and puts do anyway, for a layer above to call on its own slow
    /// paths when granules come and go rarely. Cheap when no tick is due (a read of the
    /// coarse clock, no lock).
    pub fn decay(&self) {
        self.decay_at(now_ms());
    }

    /// [`decay`](Reserve::decay) with the coarse clock already read (`now`, from
    /// `os::now_ms`), for a caller that lets several ranges decay at once.
    #[cfg_attr(not(feature = "std"), allow(dead_code))]
    pub(crate) fn decay_at(&self, now: u64) {
        let range = Self::range();
        if now.wrapping_sub(range.tick.load(Ordering::Relaxed)) < range.decay_ms
            || range.base.load(Ordering::Acquire) <= FAILED
        {
            // No tick due, or no range reserved yet (and none to reserve for this).
            return;
        }
        let Some(base) = range.base() else { return };
        let held = range.held.lock();
        let stale = Self::tick(range);
        drop(held);
        Self::give_back(range, base, stale);
    }

    /// Makes a tick due now and runs it (for tests, which cannot wait under Miri).
    #[cfg(test)]
    fn force_tick(&self) {
        let range = Self::range();
        let held = range.held.lock();
        range
            .tick
            .store(now_ms().wrapping_sub(range.decay_ms), Ordering::Relaxed);
        drop(held);
        self.decay();
    }

    /// Bytes of free granules that keep their pages (young and aged).
    pub fn kept_bytes(&self) -> usize {
        let range = Self::range();
        let held = range.held.lock();
        let kept = range.young_granules.load(Ordering::Relaxed)
            + range.aged_granules.load(Ordering::Relaxed);
        drop(held);
        kept * range.granule
    }

    /// Bytes of the range handed out so far, free granules included.
    pub fn used_bytes(&self) -> usize {
        Self::range().bump.load(Ordering::Relaxed)
    }

    /// Takes the range's lock, so that a `fork` cannot copy it held by another thread.
    /// (`General` registers this and [`after_fork`](Reserve::after_fork) as fork handlers
    /// for its own range; a program forking with a reserve of its own does the same.)
    ///
    /// # Safety
    ///
    /// The call is followed, on the same thread and before anything else uses a reserve of
    /// this range, by one [`after_fork`](Reserve::after_fork) in the parent and one in the
    /// child: until then every use of the range waits.
    pub unsafe fn before_fork() {
        // Taken by hand: held across the fork, let go of in `after_fork`.
        Self::range().held.lock_by_hand();
    }

    /// Releases the lock [`before_fork`](Reserve::before_fork) took.
    ///
    /// # Safety
    ///
    /// The calling thread took the lock with `before_fork` (in this process, or in the
    /// parent it was forked from) and has not released it since: releasing a lock another
    /// thread holds would let two threads change the free granules at once.
    pub unsafe fn after_fork() {
        // Let go of by hand: `before_fork` took it with no guard.
        // SAFETY: the caller took it with `before_fork` and has not let go of it since.
        unsafe { Self::range().held.unlock_by_hand() };
    }

    // ---- free granules: stacks, ticks, pages given back ----------------------------------

    /// The pointer for `offset` into the range, with the range's provenance.
    fn at(base: *mut u8, offset: usize) -> NonNull<u8> {
        // SAFETY: offsets below the range's length stay inside the map, which is never null.
        unsafe { NonNull::new_unchecked(base.add(offset)) }
    }

    /// Pops a free granule, one that kept its pages first, the most recently put first
    /// (`held` is ours).
    fn pop_free(range: &Range, base: *mut u8) -> Option<NonNull<u8>> {
        for (head, count) in [
            (&range.young, &range.young_granules),
            (&range.aged, &range.aged_granules),
        ] {
            let top = head.load(Ordering::Relaxed);
            if top != 0 {
                let block = Self::at(base, top - 1);
                // SAFETY: a granule on a free stack holds the next link in its first word.
                let next = unsafe { block.as_ptr().cast::<usize>().read() };
                head.store(next, Ordering::Relaxed);
                count.fetch_sub(1, Ordering::Relaxed);
                return Some(block);
            }
        }
        let len = range.clean_len.load(Ordering::Relaxed);
        (len != 0).then(|| {
            range.clean_len.store(len - 1, Ordering::Relaxed);
            // SAFETY: the side array holds `len` indices, under `held`.
            let index = unsafe { (*range.clean_list.get()).add(len - 1).read() };
            Self::at(base, index as usize * range.granule)
        })
    }

    /// When a tick is due: makes the young granules aged and returns the stack of the
    /// aged ones (the first offset plus one, 0 for none), taken off, for
    /// [`give_back`](Reserve::give_back) once `held` is released (`held` is ours).
    fn tick(range: &Range) -> usize {
        let now = now_ms();
        if now.wrapping_sub(range.tick.load(Ordering::Relaxed)) < range.decay_ms {
            return 0;
        }
        range.tick.store(now, Ordering::Relaxed);
        let stale = range.aged.load(Ordering::Relaxed);
        range
            .aged
            .store(range.young.load(Ordering::Relaxed), Ordering::Relaxed);
        range.aged_granules.store(
            range.young_granules.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
        range.young.store(0, Ordering::Relaxed);
        range.young_granules.store(0, Ordering::Relaxed);
        stale
    }

    /// Gives the pages of a stack of granules taken off the free stacks back to the OS and
    /// lists the granules as clean (`held` is not ours): a batch of links read at a time
    /// (before any of their pages go), one `madvise` per run of neighbouring granules, and
    /// one hold of `held` per batch.
    fn give_back(range: &Range, base: *mut u8, mut top: usize) {
        const BATCH: usize = 64;
        while top != 0 {
            let mut batch = [0u32; BATCH];
            let mut count = 0;
            while top != 0 && count < BATCH {
                let offset = top - 1;
                // SAFETY: the granule was on a free stack, so it holds the next link; the
                // stack was taken off under `held`, so this thread alone owns its granules.
                top = unsafe { Self::at(base, offset).as_ptr().cast::<usize>().read() };
                // (At most 2^36 / 2^14 granules: an index fits in `u32`.)
                batch[count] = (offset / range.granule) as u32;
                count += 1;
            }
            let batch = &mut batch[..count];
            batch.sort_unstable();
            let mut run = 0;
            while run < batch.len() {
                let mut end = run + 1;
                while end < batch.len() && batch[end] == batch[end - 1] + 1 {
                    end += 1;
                }
                Self::drop_pages(range, base, batch[run] as usize, end - run);
                run = end;
            }
            Self::list_clean(range, batch.iter().copied());
        }
    }

    /// Gives the pages of `granules` granules from `block`, owned by this thread and on no
    /// stack, back to the OS and lists them as clean (`held` is not ours).
    fn give_back_block(range: &Range, base: *mut u8, block: NonNull<u8>, granules: usize) {
        let first = (block.as_ptr().addr() - base.addr()) / range.granule;
        Self::drop_pages(range, base, first, granules);
        // (At most 2^36 / 2^14 granules: an index fits in `u32`.)
        Self::list_clean(range, (first..first + granules).map(|index| index as u32));
    }

    /// Hands the pages of `granules` granules from index `first`, which this thread owns,
    /// back to the OS (`os::discard`).
    fn drop_pages(range: &Range, base: *mut u8, first: usize, granules: usize) {
        let granule = range.granule;
        // SAFETY: the granules are in the committed range and ours (the caller's duty):
        // their pages are ours to drop, and nothing relies on their bytes.
        unsafe { os::discard(Self::at(base, first * granule).as_ptr(), granules * granule) }
    }

    /// Appends granule indices to the clean list, under `held` (which is not ours yet).
    fn list_clean(range: &Range, indices: impl Iterator<Item = u32>) {
        let _held = range.held.lock();
        let mut len = range.clean_len.load(Ordering::Relaxed);
        for index in indices {
            // SAFETY: the side array has room for every granule of the range, and a granule
            // is listed at most once (it was on no stack), under `held`.
            unsafe { (*range.clean_list.get()).add(len).write(index) };
            len += 1;
        }
        range.clean_len.store(len, Ordering::Relaxed);
    }

    // ---- fresh granules ------------------------------------------------------------------

    /// Takes `granules` fresh granules, aligned to `align`, from the top of the range
    /// (`held` is ours).
    fn bump(range: &Range, base: *mut u8, granules: usize, align: usize) -> Option<NonNull<u8>> {
        let len = range.len.load(Ordering::Relaxed);
        let size = granules.checked_mul(range.granule)?;
        let old = range.bump.load(Ordering::Relaxed);
        let start = (base.addr() + old).checked_next_multiple_of(align)? - base.addr();
        let end = start.checked_add(size)?;
        if end > len || !range.commit(base, end) {
            return None;
        }
        range.bump.store(end, Ordering::Relaxed);
        Some(Self::at(base, start))
    }

    /// The granules of `range` a layout takes.
    fn granules(range: &Range, layout: Layout) -> Option<usize> {
        let granule = range.granule;
        Some(layout.size().max(1).checked_next_multiple_of(granule)? / granule)
    }
}

// ---- the Layer impl ----------------------------------------------------------------------

// SAFETY: blocks are whole granules of the range's open part, disjoint because the bump
// only moves up and a granule is on a free stack only while no block holds it; every block
// starts at a granule (and `align`) boundary. Reused granules keep old bytes, so blocks are
// not promised zeroed.
unsafe impl<R: ReserveRange> Layer for Reserve<R> {
    const MIN_ALIGN: usize = GRANULE;

    fn get(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        let range = Self::range();
        let base = range.base()?;
        let granules = Self::granules(range, layout)?;
        let held = range.held.lock();
        let mut block = None;
        if granules == 1 && layout.align() <= range.granule {
            block = Self::pop_free(range, base);
        }
        if block.is_none() {
            block = Self::bump(range, base, granules, layout.align().max(range.granule));
        }
        let stale = Self::tick(range);
        drop(held);
        Self::give_back(range, base, stale);
        block
    }

    unsafe fn put(&mut self, ptr: NonNull<u8>, layout: Layout) {
        require_put::<Self>(ptr, layout);
        let range = Self::range();
        // A live block means the range was reserved; the layout's granules fit it.
        let Some(base) = range.base() else { return };
        let Some(granules) = Self::granules(range, layout) else {
            return;
        };
        // O(1), as `Mmap`'s look-up: a block that is not below the bump pointer, or not
        // at a granule, is no block of ours, and putting it on a free stack would hand it
        // out again (and an offset below the base would overflow).
        let offset = ptr.as_ptr().addr().wrapping_sub(base.addr());
        if offset >= range.bump.load(Ordering::Relaxed) || !offset.is_multiple_of(range.granule) {
            abort_with(format_args!(
                "Reserve: put of {ptr:p} (size {}, align {}), which is not a block of this range",
                layout.size(),
                layout.align()
            ));
        }
        let held = range.held.lock();
        let kept = range.young_granules.load(Ordering::Relaxed)
            + range.aged_granules.load(Ordering::Relaxed);
        let keep = (kept + granules) * range.granule <= DIRTY_MAX;
        if keep {
            for i in 0..granules {
                let granule = offset + i * range.granule;
                let link = Self::at(base, granule).as_ptr().cast::<usize>();
                // SAFETY: the granule is ours (part of the block put) and holds a word.
                unsafe { link.write(range.young.load(Ordering::Relaxed)) };
                range.young.store(granule + 1, Ordering::Relaxed);
            }
            range.young_granules.fetch_add(granules, Ordering::Relaxed);
        }
        let stale = Self::tick(range);
        drop(held);
        if !keep {
            // The caller gives back a live block of ours, on no stack.
            Self::give_back_block(range, base, ptr, granules);
        }
        Self::give_back(range, base, stale);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A range of the tests' own, so that no other test's granules come and go in it, whose
    /// ticks never come by themselves: the test forces each one, so its steps do not hang
    /// on the clock.
    #[derive(Clone, Copy)]
    struct ForcedTicks;
    impl sealed::Sealed for ForcedTicks {
        fn range() -> &'static Range {
            static RANGE: Range = Range::with_decay(GRANULE, u64::MAX / 2);
            &RANGE
        }
    }
    impl ReserveRange for ForcedTicks {}

    /// A range of the tests' own with the real ticks.
    #[derive(Clone, Copy)]
    struct ClockTicks;
    impl sealed::Sealed for ClockTicks {
        fn range() -> &'static Range {
            static RANGE: Range = Range::new(GRANULE);
            &RANGE
        }
    }
    impl ReserveRange for ClockTicks {}

    /// A range of the tests' own in granules of 64 KiB, with forced ticks.
    #[derive(Clone, Copy)]
    struct WideGranules;
    impl sealed::Sealed for WideGranules {
        fn range() -> &'static Range {
            static RANGE: Range = Range::with_decay(WIDE, u64::MAX / 2);
            &RANGE
        }
    }
    impl ReserveRange for WideGranules {}
    const WIDE: usize = 1 << 16;

    /// A range of larger granules hands out whole granules aligned to their size, reuses a
    /// put one whole (the last put first), counts kept bytes in its granules and gives them
    /// back at the second tick. (Planted bug caught: granule arithmetic left at 16 KiB,
    /// which put four "granules" on the free stack for one block.)
    #[test]
    fn a_range_of_larger_granules_reuses_them_whole() {
        let mut reserve = Reserve::<WideGranules>::handle();
        let slab = Layout::from_size_align(WIDE, WIDE).unwrap();
        let a = reserve.get(slab).unwrap();
        let b = reserve.get(slab).unwrap();
        assert_eq!(a.as_ptr().addr() % WIDE, 0, "aligned to the granule");
        assert_eq!(
            b.as_ptr().addr().abs_diff(a.as_ptr().addr()),
            WIDE,
            "neighbours"
        );
        // SAFETY: fresh granules of ours, written whole, then put once each.
        unsafe {
            a.as_ptr().write_bytes(1, WIDE);
            b.as_ptr().write_bytes(2, WIDE);
            reserve.put(a, slab);
            reserve.put(b, slab);
        }
        assert_eq!(reserve.kept_bytes(), 2 * WIDE);
        assert_eq!(reserve.get(slab), Some(b), "the last put is reused first");
        assert_eq!(reserve.get(slab), Some(a));
        assert_eq!(reserve.kept_bytes(), 0);
        let used = reserve.used_bytes();
        // SAFETY: live granules of ours, put once each.
        unsafe {
            reserve.put(a, slab);
            reserve.put(b, slab);
        }
        reserve.force_tick();
        reserve.force_tick();
        assert_eq!(reserve.kept_bytes(), 0, "two ticks: given back");
        assert_ne!(resident(a), Some(true), "a given-back granule has no pages");
        let again = [reserve.get(slab).unwrap(), reserve.get(slab).unwrap()];
        assert!(
            again.contains(&a) && again.contains(&b),
            "clean granules reused"
        );
        assert_eq!(reserve.used_bytes(), used, "no fresh address space taken");
        for block in again {
            // SAFETY: live granules of ours, put once each.
            unsafe { reserve.put(block, slab) };
        }
    }

    const ONE: Layout = match Layout::from_size_align(GRANULE, GRANULE) {
        Ok(layout) => layout,
        Err(_) => panic!("one granule"),
    };

    /// Whether the page at `ptr` is in memory; `None` under Miri, which has no `mincore`,
    /// and off Unix.
    #[cfg_attr(not(unix), allow(unused_variables))]
    fn resident(ptr: NonNull<u8>) -> Option<bool> {
        if cfg!(miri) {
            return None;
        }
        #[cfg(unix)]
        {
            let mut vec = 0u8;
            // SAFETY: `ptr` is page-aligned (a granule) and mapped; `mincore` writes one
            // byte per page of the one-page range.
            let done = unsafe { libc::mincore(ptr.as_ptr().cast(), 4096, &mut vec) };
            assert_eq!(done, 0, "mincore");
            Some(vec & 1 == 1)
        }
        #[cfg(not(unix))]
        None
    }

    /// Free granules keep their pages through the tick after their put, and give them back
    /// at the next one: so memory freed and soon reused costs no page faults, and memory
    /// left unused goes back to the OS. (Planted bug caught: a tick that rotated the
    /// stacks without giving the aged one back.)
    #[test]
    fn unused_granules_go_back_after_two_ticks() {
        let mut reserve = Reserve::<ForcedTicks>::handle();
        let blocks: alloc::vec::Vec<NonNull<u8>> = (0..8)
            .map(|i| {
                let block = reserve.get(ONE).unwrap();
                // SAFETY: a fresh granule of ours.
                unsafe { block.as_ptr().write_bytes(i + 1, GRANULE) };
                block
            })
            .collect();
        for &block in &blocks {
            // SAFETY: got above with `ONE`, put once.
            unsafe { reserve.put(block, ONE) };
        }
        assert_eq!(reserve.kept_bytes(), 8 * GRANULE, "just put: all kept");
        reserve.decay();
        assert_eq!(reserve.kept_bytes(), 8 * GRANULE, "no tick due");
        reserve.force_tick();
        assert_eq!(
            reserve.kept_bytes(),
            8 * GRANULE,
            "one tick: aged, still kept"
        );
        assert_ne!(
            resident(blocks[3]),
            Some(false),
            "an aged granule keeps its pages"
        );
        // A granule reused in between is young again: it survives the next tick.
        let reused = reserve.get(ONE).unwrap();
        // SAFETY: got above with `ONE`, put once.
        unsafe { reserve.put(reused, ONE) };
        reserve.force_tick();
        assert_eq!(
            reserve.kept_bytes(),
            GRANULE,
            "two ticks: the aged given back"
        );
        for &block in blocks.iter().filter(|&&block| block != reused) {
            assert_ne!(
                resident(block),
                Some(true),
                "a given-back granule has no pages"
            );
        }
        reserve.force_tick();
        assert_eq!(reserve.kept_bytes(), 0, "the reused one too, a tick later");
        // Given-back granules are reused (from the clean list) before the range grows.
        let used = reserve.used_bytes();
        let again = reserve.get(ONE).unwrap();
        assert!(blocks.contains(&again), "a clean granule is reused");
        assert_eq!(reserve.used_bytes(), used, "the range did not grow");
        // SAFETY: a granule of ours, writable again.
        unsafe { again.as_ptr().write_bytes(0xAA, GRANULE) };
        // SAFETY: got above with `ONE`, put once.
        unsafe { reserve.put(again, ONE) };
    }

    /// On the real clock, a granule left unused goes back within a few ticks, with no call
    /// but `decay`.
    #[test]
    #[cfg_attr(miri, ignore = "the ticks are an hour apart under Miri")]
    fn the_clock_ticks() {
        let mut reserve = Reserve::<ClockTicks>::handle();
        let block = reserve.get(ONE).unwrap();
        // SAFETY: a fresh granule of ours; got above with `ONE`, put once.
        unsafe {
            block.as_ptr().write_bytes(1, GRANULE);
            reserve.put(block, ONE);
        }
        let start = std::time::Instant::now();
        while reserve.kept_bytes() != 0 {
            assert!(
                start.elapsed() < std::time::Duration::from_secs(10),
                "no tick gave the granule back in 10 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
            reserve.decay();
        }
        assert!(start.elapsed() >= std::time::Duration::from_millis(DECAY_MS));
    }

    /// While one thread reserves a range, another asks whether an address far below it
    /// lies in it: the answer must be no at every moment (it was yes for a moment, with
    /// the length published before the base, and a block of another layer at a low address
    /// was then taken for one of the range's). Many fresh ranges, to meet that moment.
    #[test]
    fn contains_is_false_for_outside_addresses_during_the_first_reservation() {
        let rounds = if cfg!(miri) { 1 } else { 1000 };
        for _ in 0..rounds {
            let range = alloc::boxed::Box::new(Range::new(GRANULE));
            let range = &*range;
            let go = std::sync::Barrier::new(2);
            let wrong = std::thread::scope(|s| {
                let asker = s.spawn(|| {
                    go.wait();
                    let mut wrong = 0usize;
                    // Until the range is there, then a little longer.
                    let mut after = 0;
                    while after < 100 {
                        if range.contains(GRANULE) {
                            wrong += 1;
                        }
                        if range.len.load(Ordering::Acquire) != 0 {
                            after += 1;
                        }
                        core::hint::spin_loop();
                    }
                    wrong
                });
                go.wait();
                assert!(range.base().is_some(), "the range was reserved");
                asker.join().unwrap()
            });
            assert_eq!(wrong, 0, "an address below the range was said to be in it");
            #[cfg(not(miri))]
            range.unreserve();
        }
    }
}
