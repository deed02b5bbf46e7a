//! `FreeList<L, SIZE, CAP>`: freed blocks of one size class kept on an intrusive list for
//! reuse, as Heap-Layers' `FreelistHeap`.
//!
//! Invariants (checked by `check_invariants`): every block on the list is a block `L` handed
//! out with `class_layout()` and that no caller holds; the list holds `cached()` blocks, at
//! most `CAP`. A block is a class block exactly when the layout that
//! [fits](crate::layer#fits) it is a class layout (`is_class`), so the layout given on put
//! says where it goes.

use core::alloc::Layout;
use core::fmt;
use core::mem::size_of;
use core::ptr::NonNull;

use super::list::BlockList;
use crate::Layer;
use crate::abort::abort_with;
use crate::layer::{FREED, FRESH, fill, paranoid, require_grow, require_put, require_shrink};

/// The largest alignment a class block is promised: a page. Larger powers of two dividing
/// `SIZE` are not asked of `L`, which would over-allocate for them.
const ALIGN_CAP: usize = 4096;

/// Caches freed blocks of one size, `SIZE` bytes, and hands them out again last in, first
/// out; everything else passes straight through to `L`.
///
/// A request is a *class request* when its size is at most `SIZE` and its alignment at most
/// [`CLASS_ALIGN`](FreeList::CLASS_ALIGN) (the largest power of two dividing `SIZE`, capped
/// at 4096). It is served as a whole `SIZE`-byte block: the most recently freed one, or a
/// fresh one from `L`. Its put pushes it on the list (the link lives in the freed block
/// itself, so the list costs no memory), unless the list already holds `CAP` blocks, in
/// which case it goes back to `L`. Other requests, and their puts, go to `L` unchanged.
///
/// [`deinit`](Layer::deinit) returns every cached block to `L`, then deinits `L`.
/// `SIZE` must be a multiple of the pointer size (checked at compile time); `CAP` defaults
/// to no limit.
///
/// ```
/// use core::alloc::Layout;
/// use stratalloc::{Layer, layers::{FreeList, System}};
///
/// let mut nodes: FreeList<System, 64> = FreeList::new(System);
/// let layout = Layout::new::<[u64; 6]>();
/// let a = nodes.get(layout).unwrap();
/// // SAFETY: `a` came from `nodes` with `layout` and is put once.
/// unsafe { nodes.put(a, layout) };
/// assert_eq!(nodes.cached(), 1);
/// assert_eq!(nodes.get(layout), Some(a), "the freed block comes back");
/// # unsafe { nodes.put(a, layout) };
/// ```
pub struct FreeList<L: Layer, const SIZE: usize, const CAP: usize = { usize::MAX }> {
    list: BlockList,
    inner: L,
}

// SAFETY: a `FreeList` exclusively owns the blocks on its list (blocks of `L` that no caller
// holds); moving it to another thread is as safe as moving `L`.
unsafe impl<L: Layer + Send, const SIZE: usize, const CAP: usize> Send for FreeList<L, SIZE, CAP> {}

impl<L: Layer, const SIZE: usize, const CAP: usize> FreeList<L, SIZE, CAP> {
    /// The alignment every class block has: the largest power of two dividing `SIZE`, at
    /// most 4096. Class requests may ask for up to this much.
    pub const CLASS_ALIGN: usize = {
        let low = SIZE & SIZE.wrapping_neg();
        if low > ALIGN_CAP { ALIGN_CAP } else { low }
    };

    /// A free list over `inner`, caching nothing yet.
    pub const fn new(inner: L) -> Self {
        const {
            assert!(
                SIZE >= size_of::<usize>() && SIZE.is_multiple_of(size_of::<usize>()),
                "FreeList: SIZE must be a non-zero multiple of the pointer size"
            );
            assert!(
                SIZE <= isize::MAX as usize - (ALIGN_CAP - 1),
                "FreeList: SIZE must be a valid allocation size"
            );
        }
        FreeList {
            list: BlockList::EMPTY,
            inner,
        }
    }

    crate::layer::layer_below! {
        owns: "the blocks this layer got from the inner one, cached or handed out";
        into_inner after release: "every cached block";
    }

    /// Blocks cached on the list now.
    pub const fn cached(&self) -> usize {
        self.list.len()
    }

    /// Whether blocks with `layout` are class blocks.
    #[inline(always)]
    const fn is_class(layout: Layout) -> bool {
        layout.size() <= SIZE && layout.align() <= Self::CLASS_ALIGN
    }

    /// The layout every class block is got from `L` and returned to it with.
    #[inline(always)]
    const fn class_layout() -> Layout {
        // SAFETY: `CLASS_ALIGN` is a power of two (the lowest set bit of `SIZE`, or 4096),
        // and `SIZE` rounded up to it cannot overflow `isize` (checked in `new`, the only
        // constructor).
        unsafe { Layout::from_size_align_unchecked(SIZE, Self::CLASS_ALIGN) }
    }

    /// Gives every cached block back to `L`.
    fn release(&mut self) {
        while let Some(block) = self.list.pop() {
            // SAFETY: cached blocks were got from `L` with `class_layout()`, and no caller
            // holds them; each leaves the list before it is put, so it is put once.
            unsafe { self.inner.put(block, Self::class_layout()) };
        }
    }
}

// SAFETY: class blocks come from `L` with `class_layout()`, which fits every class request
// (at most `SIZE` bytes, aligned to at most `CLASS_ALIGN`); a block is on the list only
// while no caller holds it, and leaves it before being handed out again, so no two live
// blocks share memory. Other blocks come from `L` unchanged. The layout given with each put
// says which kind a block is (see the module invariants), and resizes that would change the
// kind are refused. `owns` is `L`'s: every block, cached or live, is a live block of `L`.
unsafe impl<L: Layer, const SIZE: usize, const CAP: usize> Layer for FreeList<L, SIZE, CAP> {
    const MIN_ALIGN: usize = L::MIN_ALIGN;
    const OWNS_EXACT: bool = L::OWNS_EXACT;
    const OWNS_INTERIOR: bool = L::OWNS_INTERIOR;

    #[inline]
    fn get(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        paranoid(self);
        if !Self::is_class(layout) {
            return self.inner.get(layout);
        }
        let block = match self.list.pop() {
            Some(block) => block,
            None => self.inner.get(Self::class_layout())?,
        };
        // SAFETY: a class block of `SIZE` bytes, ours until it is handed out.
        unsafe { fill::<Self>(block.as_ptr(), 0, SIZE, FRESH) };
        Some(block)
    }

    #[inline]
    unsafe fn put(&mut self, ptr: NonNull<u8>, layout: Layout) {
        paranoid(self);
        require_put::<Self>(ptr, layout);
        if !Self::is_class(layout) {
            // SAFETY: a block that is not a class block came unchanged from `L` with a layout
            // that `layout` fits; the caller's duties pass on.
            unsafe { self.inner.put(ptr, layout) };
            return;
        }
        // SAFETY: a class block of `SIZE` bytes, which the caller gives up; its link (if it
        // is cached) is written after the fill.
        unsafe { fill::<Self>(ptr.as_ptr(), BlockList::LINK, SIZE, FREED) };
        if self.list.len() < CAP {
            // SAFETY: a class block holds `SIZE >= size_of::<usize>()` bytes aligned to
            // `CLASS_ALIGN >= size_of::<usize>()` (a power of two dividing a multiple of
            // the pointer size); the caller gives it up, so the list may use it.
            unsafe { self.list.push(ptr) };
        } else {
            // SAFETY: a class block, got from `L` with `class_layout()`.
            unsafe { self.inner.put(ptr, Self::class_layout()) };
        }
    }

    fn init() -> Self {
        Self::new(L::init())
    }

    fn deinit(&mut self) {
        self.release();
        self.inner.deinit();
    }

    unsafe fn grow(&mut self, ptr: NonNull<u8>, old: Layout, new: Layout) -> bool {
        paranoid(self);
        require_grow::<Self>(ptr, old, new);
        match (Self::is_class(old), Self::is_class(new)) {
            // A class block holds `SIZE` bytes whatever the request was.
            (true, true) => true,
            // SAFETY: a pass-through block of `L`, and it stays one.
            (false, false) => unsafe { self.inner.grow(ptr, old, new) },
            _ => false,
        }
    }

    unsafe fn shrink(&mut self, ptr: NonNull<u8>, old: Layout, new: Layout) -> bool {
        paranoid(self);
        require_shrink::<Self>(ptr, old, new);
        match (Self::is_class(old), Self::is_class(new)) {
            (true, true) => true,
            // SAFETY: a pass-through block of `L`, and it stays one.
            (false, false) => unsafe { self.inner.shrink(ptr, old, new) },
            _ => false,
        }
    }

    fn owns(&self, ptr: NonNull<u8>) -> bool {
        self.inner.owns(ptr)
    }

    fn check_invariants(&self) {
        let fail =
            |what: &str| -> ! { abort_with(format_args!("FreeList invariant broken: {what}")) };
        if self.list.len() > CAP {
            fail("more blocks cached than CAP");
        }
        let walked = self.list.check(|block| {
            if !block.as_ptr().addr().is_multiple_of(Self::CLASS_ALIGN) {
                fail("a cached block is not aligned to CLASS_ALIGN");
            }
            if L::OWNS_EXACT && !self.inner.owns(block) {
                fail("a cached block is not the inner layer's");
            }
        });
        if let Err(what) = walked {
            fail(what);
        }
        self.inner.check_invariants();
    }
}

impl<L: Layer, const SIZE: usize, const CAP: usize> Drop for FreeList<L, SIZE, CAP> {
    fn drop(&mut self) {
        self.deinit();
    }
}

impl<L: Layer + fmt::Debug, const SIZE: usize, const CAP: usize> fmt::Debug
    for FreeList<L, SIZE, CAP>
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FreeList")
            .field("size", &SIZE)
            .field("cached", &self.list.len())
            .field("inner", &self.inner)
            .finish()
    }
}

// SAFETY: every block is a block of `L`, attributed to the same region; cached blocks go
// back to `L` only at deinit or when the list is full, when no caller holds them.
#[cfg(feature = "std")]
unsafe impl<L: crate::region::Attributed, const SIZE: usize, const CAP: usize>
    crate::region::Attributed for FreeList<L, SIZE, CAP>
{
    fn attribute(&mut self, owner: crate::region::Attribution) {
        self.inner.attribute(owner);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Gauge;
    use crate::layers::{Buffer, Stats};
    use core::mem::MaybeUninit;

    fn at(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).unwrap()
    }

    #[test]
    fn reuses_freed_blocks_last_in_first_out() {
        let mut memory = alloc::vec![MaybeUninit::uninit(); 4096];
        let mut list: FreeList<_, 48> = FreeList::new(Stats::new(Buffer::new(&mut memory)));
        let [a, b, c] = [0; 3].map(|_| list.get(at(40, 8)).unwrap());
        // SAFETY: each block is live with the layout given and put once.
        unsafe {
            list.put(a, at(40, 8));
            list.put(b, at(40, 8));
        }
        assert_eq!(list.cached(), 2);
        list.check_invariants();
        // Any class request takes the newest block: a smaller one, an aligned one.
        assert_eq!(list.get(at(1, 1)), Some(b));
        assert_eq!(list.get(at(48, 16)), Some(a));
        assert_eq!(list.cached(), 0);
        assert_eq!(
            list.inner().gauge().gets,
            3,
            "reuse did not reach the layer below"
        );
        // SAFETY: as above.
        unsafe {
            for block in [a, b, c] {
                list.put(block, at(48, 16));
            }
        }
        list.deinit();
        assert_eq!(
            list.inner().gauge().live,
            0,
            "deinit returned the cached blocks"
        );
    }

    #[test]
    fn class_bounds_and_pass_through() {
        assert_eq!(FreeList::<Buffer<'_>, 48>::CLASS_ALIGN, 16);
        assert_eq!(FreeList::<Buffer<'_>, 8>::CLASS_ALIGN, 8);
        assert_eq!(FreeList::<Buffer<'_>, 65536>::CLASS_ALIGN, 4096);
        let mut memory = alloc::vec![MaybeUninit::uninit(); 8192];
        let mut list: FreeList<_, 48> = FreeList::new(Stats::new(Buffer::new(&mut memory)));
        // Too big, or aligned beyond the class: straight to `L`, and back to it on put.
        for layout in [at(49, 8), at(16, 32)] {
            let block = list.get(layout).unwrap();
            assert!(block.as_ptr().addr().is_multiple_of(layout.align()));
            // SAFETY: live, put once with its layout.
            unsafe { list.put(block, layout) };
            assert_eq!(list.cached(), 0, "{layout:?} was cached");
            assert_eq!(list.inner().gauge().live, 0);
        }
        // A zero-size request is a class request.
        let zero = list.get(at(0, 1)).unwrap();
        // SAFETY: as above.
        unsafe { list.put(zero, at(0, 1)) };
        assert_eq!(list.cached(), 1);
    }

    #[test]
    fn cap_sends_the_surplus_back() {
        let mut memory = alloc::vec![MaybeUninit::uninit(); 4096];
        let mut list: FreeList<_, 32, 2> = FreeList::new(Stats::new(Buffer::new(&mut memory)));
        let blocks = [0; 3].map(|_| list.get(at(32, 8)).unwrap());
        for block in blocks {
            // SAFETY: live, put once.
            unsafe { list.put(block, at(32, 8)) };
        }
        assert_eq!(list.cached(), 2);
        assert_eq!(
            list.inner().gauge().live,
            2,
            "the third block went back to L"
        );
        list.check_invariants();
    }

    #[test]
    fn resizes_stay_within_the_class() {
        let mut memory = alloc::vec![MaybeUninit::uninit(); 4096];
        let mut list: FreeList<_, 64> = FreeList::new(Buffer::new(&mut memory));
        let block = list.get(at(10, 8)).unwrap();
        // SAFETY: live with the old layouts given; put once with the last one.
        unsafe {
            assert!(list.grow(block, at(10, 8), at(64, 8)));
            assert!(
                !list.grow(block, at(64, 8), at(65, 8)),
                "grew out of the class"
            );
            assert!(list.shrink(block, at(64, 8), at(1, 8)));
            list.put(block, at(1, 8));
        }
        assert_eq!(list.cached(), 1);
    }
}
