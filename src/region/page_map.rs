//! The page map: which region owns each 4 KiB page that a region's sources obtained; a
//! two-level radix table over the 48-bit address space.
//!
//! A lookup is two dependent loads and never touches the memory it asks about, so the
//! router can find the owner of any pointer, its own or the system allocator's, in O(1).
//! Pages that no region claimed map to null: they belong to the system allocator.
//!
//! Beside the owner, each page keeps the pointer its source handed out for the claimed
//! range (the *base*). A pointer the program frees carries only the permission of what it
//! pointed to (a `Box<u8>`'s pointer covers one byte), while the layers below may need to
//! touch the whole block and its neighbourhood (a header before it, a free-list link in it);
//! the router rebuilds the pointer from the base (`base.with_addr(ptr)`) before any layer
//! sees it, which keeps the provenance of the source's own allocation.
//!
//! Invariants: a page is claimed by at most one owner at a time; the source that claimed a
//! range unclaims it before the memory goes back to where it came from. A page's entry is
//! read only while its claimed bit is set; a claim writes it before it sets the bit (and
//! `reassign` hands a claimed page to another owner): an unclaimed page's entry keeps its
//! last owner and base, unread. Leaves are mapped
//! on first use, straight from the OS, and never freed (2 MiB of address space each, of
//! which only touched pages cost memory).

use core::cell::UnsafeCell;
use core::ptr;
use core::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

use super::Owner;
use crate::abort::{abort_with, debug_require};

/// Granularity of the map: claims cover whole 4 KiB pages.
pub(crate) const PAGE: usize = 4096;
pub(crate) const PAGE_BITS: u32 = 12;
const LEAF_BITS: u32 = 18;
const ROOT_BITS: u32 = 48 - PAGE_BITS - LEAF_BITS;
const LEAF_ENTRIES: usize = 1 << LEAF_BITS;

/// One page's record: who owns it, and the pointer its source handed out for the range.
struct Entry {
    owner: AtomicPtr<Owner>,
    base: AtomicPtr<u8>,
}

/// One gibibyte of address space: a bit per page saying whether it is claimed (so that a
/// lookup for the system allocator's blocks reads one dense word, a cache line covering
/// 2 MiB), then an entry per page.
struct Leaf {
    claimed: [AtomicU64; LEAF_ENTRIES / 64],
    entries: [Entry; LEAF_ENTRIES],
}

/// An installed leaf, reached through a raw pointer: the accessors borrow one word or one
/// entry, never the whole 4 MiB leaf (a `&Leaf` costs nothing natively, but Miri retags
/// every atomic in it on each reborrow, which made the router's tests take minutes).
///
/// Invariant: the pointer is one that `leaf` installed in the root (made only in `entry`
/// and `leaf`, from a non-null root slot). Indices are masked into range, so no access can
/// go out of bounds and none can panic inside the allocator.
#[derive(Clone, Copy)]
struct LeafPtr(*const Leaf);

impl LeafPtr {
    #[inline(always)]
    fn claimed(self, word: usize) -> &'static AtomicU64 {
        // SAFETY: installed leaves are never freed; the index is masked into range, and
        // the place projection borrows one word, not the whole leaf.
        unsafe { &(*self.0).claimed[word & (LEAF_ENTRIES / 64 - 1)] }
    }

    #[inline(always)]
    fn entry(self, index: usize) -> &'static Entry {
        // SAFETY: as in `claimed`.
        unsafe { &(*self.0).entries[index & (LEAF_ENTRIES - 1)] }
    }

    /// The entries of `count` pages from `index`, borrowed together (a claim writes them in
    /// one tight loop). A range that leaves the leaf (which `leaf_spans` never makes) aborts:
    /// a claim must not set claimed bits over entries it did not write.
    #[inline(always)]
    fn entries(self, index: usize, count: usize) -> &'static [Entry] {
        if index > LEAF_ENTRIES || count > LEAF_ENTRIES - index {
            abort_with(format_args!(
                "page map: pages {index}..{index}+{count} leave their leaf"
            ));
        }
        // SAFETY: installed leaves are never freed, and the range is inside the array
        // (checked above); the slice borrows these entries only, not the whole leaf.
        unsafe {
            let first = (&raw const (*self.0).entries).cast::<Entry>().add(index);
            &*ptr::slice_from_raw_parts(first, count)
        }
    }
}

const ROOT_ENTRIES: usize = 1 << ROOT_BITS;

/// The root: a leaf pointer per gibibyte, null until that leaf is mapped.
///
/// The array sits in one `UnsafeCell` so that Miri sees a single interior-mutable range
/// when a use of the static borrows it, instead of visiting 262,144 atomics each time
/// (which made every page-map look-up take a tenth of a second under Miri).
struct Root(UnsafeCell<[AtomicPtr<Leaf>; ROOT_ENTRIES]>);

// SAFETY: the cell holds only atomics, reached one slot at a time through `root_slot`.
unsafe impl Sync for Root {}

static ROOT: Root = Root(UnsafeCell::new(
    [const { AtomicPtr::new(ptr::null_mut()) }; ROOT_ENTRIES],
));

/// The root slot for leaf `root`, reached without borrowing the whole 2 MiB root (for the
/// same reason as [`LeafPtr`]). Every caller got `root` from `split`, which checks it; the
/// mask keeps the access in bounds for any argument anyway, at no cost there.
#[inline(always)]
fn root_slot(root: usize) -> &'static AtomicPtr<Leaf> {
    // SAFETY: the index is masked below `ROOT_ENTRIES`, and the static lives forever.
    unsafe {
        &*ROOT
            .0
            .get()
            .cast::<AtomicPtr<Leaf>>()
            .add(root & (ROOT_ENTRIES - 1))
    }
}

/// The layout of the whole, page-aligned pages a page source serves `layout` from (`None`
/// when rounding overflows).
pub(crate) fn pages_for(layout: core::alloc::Layout) -> Option<core::alloc::Layout> {
    let size = crate::layer::served_size(layout).checked_next_multiple_of(PAGE)?;
    core::alloc::Layout::from_size_align(size, layout.align().max(PAGE)).ok()
}

#[inline(always)]
fn split(addr: usize) -> Option<(usize, usize)> {
    let page = addr >> PAGE_BITS;
    let root = page >> LEAF_BITS;
    (root < ROOT_ENTRIES).then_some((root, page & (LEAF_ENTRIES - 1)))
}

/// The entry of a claimed page (`None` for pages nobody claimed).
#[inline(always)]
fn entry(addr: usize) -> Option<&'static Entry> {
    let (root, index) = split(addr)?;
    let leaf = installed(root)?;
    let word = leaf.claimed(index / 64).load(Ordering::Acquire);
    (word & (1 << (index % 64)) != 0).then(|| leaf.entry(index))
}

/// The owner of the page holding `addr`, or null when no region claimed it.
#[inline(always)]
pub(crate) fn owner_of(addr: usize) -> *const Owner {
    entry(addr).map_or(ptr::null(), |e| e.owner.load(Ordering::Acquire))
}

/// The owner of the page holding `ptr` (null when no region claimed it) and, when there is
/// one, `ptr` rebuilt with the provenance of the claimed range's base.
#[inline(always)]
pub(crate) fn lookup(ptr: *mut u8) -> (*const Owner, *mut u8) {
    let Some(entry) = entry(ptr.addr()) else {
        return (ptr::null(), ptr);
    };
    let owner = entry.owner.load(Ordering::Acquire);
    if owner.is_null() {
        return (owner, ptr);
    }
    let base = entry.base.load(Ordering::Acquire);
    (owner, base.with_addr(ptr.addr()))
}

/// The leaf for root slot `root`, mapping it on first use. `None` when the OS refuses.
fn leaf(root: usize) -> Option<LeafPtr> {
    if let Some(leaf) = installed(root) {
        return Some(leaf);
    }
    #[cfg(test)]
    if tests::REFUSED_ROOT.load(Ordering::Relaxed) == root {
        return None;
    }
    let fresh = new_leaf()?;
    match root_slot(root).compare_exchange(
        ptr::null_mut(),
        fresh,
        Ordering::AcqRel,
        Ordering::Acquire,
    ) {
        Ok(_) => Some(LeafPtr(fresh)),
        Err(winner) => {
            // Another thread installed one first: ours was never shared.
            // SAFETY: `fresh` came from `new_leaf` and nothing else saw it.
            unsafe { free_leaf(fresh) };
            Some(LeafPtr(winner))
        }
    }
}

/// A zero-filled leaf (no page claimed, every entry two null `AtomicPtr`s) straight from
/// the OS: only the pages a lookup or claim touches cost memory. `None` when the OS
/// refuses.
#[cfg(any(unix, windows))]
fn new_leaf() -> Option<*mut Leaf> {
    crate::os::map(size_of::<Leaf>()).map(|fresh| fresh.as_ptr().cast())
}

/// Gives back a leaf that was never installed.
///
/// # Safety
///
/// `leaf` came from [`new_leaf`] and nothing else uses it.
#[cfg(any(unix, windows))]
unsafe fn free_leaf(leaf: *mut Leaf) {
    // SAFETY: the caller's promise: our own map of a leaf's size.
    unsafe { crate::os::unmap(leaf.cast(), size_of::<Leaf>()) };
}

/// Elsewhere: a zeroed block of the system allocator (which maps a block this large from the
/// OS on demand, as `mmap` does).
#[cfg(not(any(unix, windows)))]
fn new_leaf() -> Option<*mut Leaf> {
    use std::alloc::GlobalAlloc;
    // SAFETY: a leaf's layout has a non-zero size.
    let fresh = unsafe { std::alloc::System.alloc_zeroed(core::alloc::Layout::new::<Leaf>()) };
    (!fresh.is_null()).then_some(fresh.cast())
}

/// Gives back a leaf that was never installed.
///
/// # Safety
///
/// `leaf` came from [`new_leaf`] and nothing else uses it.
#[cfg(not(any(unix, windows)))]
unsafe fn free_leaf(leaf: *mut Leaf) {
    use std::alloc::GlobalAlloc;
    // SAFETY: the caller's promise: allocated in `new_leaf` with this layout.
    unsafe { std::alloc::System.dealloc(leaf.cast(), core::alloc::Layout::new::<Leaf>()) };
}

/// The root slot and in-leaf index range of each leaf a page-aligned range `[start, end)`
/// touches, in address order. The caller has checked that `end - 1` splits.
fn leaf_spans(start: usize, end: usize) -> impl Iterator<Item = (usize, usize, usize)> {
    let mut addr = start;
    core::iter::from_fn(move || {
        if addr >= end {
            return None;
        }
        let (root, index) = split(addr).unwrap_or((0, 0));
        let stop = ((root + 1) << (LEAF_BITS + PAGE_BITS)).min(end);
        let count = (stop - addr) >> PAGE_BITS;
        addr = stop;
        Some((root, index, count))
    })
}

/// The range `[start, end)` of a page-aligned range of `len` bytes at `start`, when every
/// page of it lies in the address space the map covers.
fn span(start: usize, len: usize) -> Option<(usize, usize)> {
    debug_require!(
        start.is_multiple_of(PAGE) && len.is_multiple_of(PAGE),
        "page map: unaligned range {start:#x} + {len:#x}"
    );
    let end = start.checked_add(len)?;
    (len == 0 || split(end - 1).is_some()).then_some((start, end))
}

/// Sets or clears the claimed bits of `count` pages from `index` in `leaf`, one atomic
/// operation per word of 64 pages: a read-modify-write, so that a claim's `Release` reaches
/// the lookups of its pages whatever happens to the other pages of the word meanwhile.
fn mark(leaf: LeafPtr, index: usize, count: usize, claimed: bool) {
    let mut first = index;
    while first < index + count {
        let last = (first | 63).min(index + count - 1);
        let bits = (u64::MAX >> (63 - (last - first))) << (first % 64);
        if claimed {
            leaf.claimed(first / 64).fetch_or(bits, Ordering::Release);
        } else {
            leaf.claimed(first / 64).fetch_and(!bits, Ordering::Release);
        }
        first = last + 1;
    }
}

/// Claims every page of the range of `len` bytes at `base` (whole pages) for `owner`,
/// recording `base` as the pointer the pages' blocks are rebuilt from. All or nothing:
/// returns `false`, having claimed no page, when a page lies outside the address space the
/// map covers or a leaf cannot be mapped (the leaves the range needs are all mapped before
/// any page is written).
pub(crate) fn claim(base: *mut u8, len: usize, owner: *const Owner) -> bool {
    debug_require!(!owner.is_null(), "page map: a claim for no owner");
    let Some((start, end)) = span(base.addr(), len) else {
        return false;
    };
    if leaf_spans(start, end).any(|(root, _, _)| leaf(root).is_none()) {
        return false;
    }
    for (root, index, count) in leaf_spans(start, end) {
        let Some(leaf) = installed(root) else {
            return false;
        };
        for entry in leaf.entries(index, count) {
            entry.base.store(base, Ordering::Relaxed);
            entry.owner.store(owner.cast_mut(), Ordering::Release);
        }
        mark(leaf, index, count, true);
    }
    true
}

/// Hands the claimed pages of the range of `len` bytes at `start` to `owner`, keeping the
/// pointer their blocks are rebuilt from (a piece that a [`Pipe`](crate::layers::Pipe)
/// takes from its enclosing region, and gives back). Every page of the range is claimed
/// (by the region the piece came from), so its leaf exists and nothing can fail.
pub(crate) fn reassign(start: *mut u8, len: usize, owner: *const Owner) {
    debug_require!(!owner.is_null(), "page map: a claim handed to no owner");
    let Some((start, end)) = span(start.addr(), len) else {
        return;
    };
    for (root, index, count) in leaf_spans(start, end) {
        let Some(leaf) = installed(root) else {
            continue;
        };
        for i in index..index + count {
            debug_require!(
                leaf.claimed(i / 64).load(Ordering::Relaxed) & (1 << (i % 64)) != 0,
                "page map: a page handed on that nobody claimed"
            );
            leaf.entry(i)
                .owner
                .store(owner.cast_mut(), Ordering::Release);
        }
    }
}

/// Releases every page of the range of `len` bytes at `base` (whole pages): its blocks
/// belong to nobody from here on. Cannot fail: pages in leaves never mapped were never
/// claimed.
pub(crate) fn unclaim(base: *mut u8, len: usize) {
    let Some((start, end)) = span(base.addr(), len) else {
        return;
    };
    for (root, index, count) in leaf_spans(start, end) {
        let Some(leaf) = installed(root) else {
            continue;
        };
        // The entries keep their last owner and base: every read checks the claimed bit
        // first, and the next claim writes both before it sets the bit.
        mark(leaf, index, count, false);
    }
}

/// The leaf of root slot `root` when it is mapped.
#[inline(always)]
fn installed(root: usize) -> Option<LeafPtr> {
    let leaf = root_slot(root).load(Ordering::Acquire);
    (!leaf.is_null()).then_some(LeafPtr(leaf))
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::sync::atomic::AtomicUsize;

    /// A root slot whose leaf `leaf` refuses to map, as the OS does under `RLIMIT_AS`
    /// (`usize::MAX`: none).
    pub(super) static REFUSED_ROOT: AtomicUsize = AtomicUsize::new(usize::MAX);

    #[test]
    fn claims_and_unclaims_ranges_across_leaves() {
        let owner = ptr::without_provenance::<Owner>(0x1000);
        // A range that straddles a leaf boundary (1 GiB), far from real allocations.
        let start = (5usize << 30) - 2 * PAGE;
        let base = ptr::without_provenance_mut::<u8>(start);
        assert!(claim(base, 4 * PAGE, owner));
        for page in 0..4 {
            assert_eq!(owner_of(start + page * PAGE + 17), owner);
        }
        assert!(owner_of(start - 1).is_null());
        assert!(owner_of(start + 4 * PAGE).is_null());
        assert_eq!(
            lookup(base.wrapping_add(PAGE + 5)).1.addr(),
            start + PAGE + 5
        );
        unclaim(base, 4 * PAGE);
        assert!(owner_of(start + PAGE).is_null());
    }

    #[test]
    fn claims_spanning_several_bitmap_words_are_exact() {
        let owner = ptr::without_provenance::<Owner>(0x2000);
        // Pages 60..260 of a leaf far from real allocations: five bitmap words.
        let start = (7usize << 30) + 60 * PAGE;
        let base = ptr::without_provenance_mut::<u8>(start);
        assert!(claim(base, 200 * PAGE, owner));
        for page in [0, 3, 4, 67, 68, 131, 199] {
            assert_eq!(owner_of(start + page * PAGE), owner, "page {page}");
        }
        assert!(owner_of(start - PAGE).is_null());
        assert!(owner_of(start + 200 * PAGE).is_null());
        unclaim(base.wrapping_add(64 * PAGE), 64 * PAGE);
        assert!(owner_of(start + 100 * PAGE).is_null());
        assert_eq!(owner_of(start + 63 * PAGE), owner);
        assert_eq!(owner_of(start + 128 * PAGE), owner);
        unclaim(base, 200 * PAGE);
    }

    #[test]
    fn addresses_beyond_48_bits_are_nobody_s() {
        let owner = ptr::without_provenance::<Owner>(0x1000);
        assert!(owner_of(usize::MAX).is_null());
        assert!(!claim(ptr::without_provenance_mut(1 << 48), PAGE, owner));
        assert!(!claim(
            ptr::without_provenance_mut(usize::MAX - PAGE + 1),
            PAGE,
            owner
        ));
    }

    #[test]
    fn a_claim_that_cannot_map_a_leaf_claims_nothing() {
        let owner = ptr::without_provenance::<Owner>(0x3000);
        // Eight pages each side of the boundary between the leaves of 9 and 10 GiB, far
        // from real allocations; the second leaf refuses to map.
        let start = (10usize << 30) - 8 * PAGE;
        let base = ptr::without_provenance_mut::<u8>(start);
        REFUSED_ROOT.store(split(10 << 30).unwrap().0, Ordering::Relaxed);
        let claimed = claim(base, 16 * PAGE, owner);
        REFUSED_ROOT.store(usize::MAX, Ordering::Relaxed);
        assert!(!claimed, "the claim reports the failure");
        for page in 0..16 {
            assert!(
                owner_of(start + page * PAGE).is_null(),
                "page {page} stayed claimed after a failed claim"
            );
        }
        assert!(
            claim(base, 16 * PAGE, owner),
            "with both leaves it succeeds"
        );
        assert_eq!(owner_of(start + 15 * PAGE), owner);
        unclaim(base, 16 * PAGE);
        assert!(owner_of(start).is_null());
    }

    #[test]
    fn a_reassigned_range_keeps_its_base() {
        let (first, second) = (
            ptr::without_provenance::<Owner>(0x4000),
            ptr::without_provenance::<Owner>(0x5000),
        );
        let start = (11usize << 30) + 16 * PAGE;
        let base = ptr::without_provenance_mut::<u8>(start);
        assert!(claim(base, 8 * PAGE, first));
        reassign(base.wrapping_add(2 * PAGE), 2 * PAGE, second);
        assert_eq!(owner_of(start + PAGE), first);
        assert_eq!(owner_of(start + 3 * PAGE + 9), second);
        let (owner, rebuilt) = lookup(base.wrapping_add(3 * PAGE + 9));
        assert_eq!(owner, second);
        assert_eq!(rebuilt.addr(), start + 3 * PAGE + 9);
        reassign(base.wrapping_add(2 * PAGE), 2 * PAGE, first);
        assert_eq!(owner_of(start + 3 * PAGE), first);
        unclaim(base, 8 * PAGE);
        assert!(owner_of(start + 3 * PAGE).is_null());
    }
}
