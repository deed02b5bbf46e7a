//! `Align<L, A>`: every block aligned to at least `A`, whatever the request asks.

use core::alloc::Layout;
use core::fmt;
use core::ptr::NonNull;

use crate::Layer;
use crate::layer::{paranoid, require_grow, require_put, require_shrink};

/// Asks `L` for every block with an alignment of at least `A` (a power of two), so that
/// callers get `A`-aligned blocks whatever they ask for (cache-line alignment against false
/// sharing, page alignment for a device). Puts and resizes pass the same raised layout
/// down, so `L` sees one layout per block throughout.
///
/// ```
/// use core::alloc::Layout;
/// use stratalloc::{Layer, layers::{Align, System}};
///
/// let mut aligned = Align::<_, 64>::new(System::new());
/// let layout = Layout::from_size_align(10, 1).unwrap();
/// let block = aligned.get(layout).unwrap();
/// assert_eq!(block.as_ptr().addr() % 64, 0);
/// // SAFETY: got just above with `layout`, put once.
/// unsafe { aligned.put(block, layout) };
/// ```
///
/// An alignment that is not a power of two does not compile:
///
/// ```compile_fail,E0080
/// use stratalloc::{Layer, layers::{Align, System}};
///
/// let aligned = Align::<_, 48>::new(System::new());
/// ```
pub struct Align<L, const A: usize> {
    inner: L,
}

impl<L, const A: usize> Align<L, A> {
    /// Checked where the layer is made: `A` is a power of two.
    const POWER_OF_TWO: () = assert!(A.is_power_of_two(), "Align's A must be a power of two");

    /// Wraps `inner`.
    pub const fn new(inner: L) -> Self {
        let () = Self::POWER_OF_TWO;
        Align { inner }
    }

    crate::layer::layer_below! {
        owns: "the blocks this layer got from the inner one";
        /// Unwraps the layer below. Blocks got through `Align` must go back to it with their
        /// raised layouts (`layout.align_to(A)`).
        into_inner;
    }

    /// The layout `L` sees for a block of `layout`.
    fn raised(layout: Layout) -> Layout {
        let () = Self::POWER_OF_TWO;
        // A power of two, at most `isize::MAX` as every alignment: raising to it keeps the
        // size valid for every layout that fits a block, which `get` (and `grow`) checked
        // when the block was made or resized; a shrink's smaller size stays valid.
        layout.align_to(A).unwrap_or(layout)
    }
}

// SAFETY: every block is `L`'s block for the raised layout, which holds the size asked and
// is aligned to both the layout's alignment and `A`; every call passes `L` the same raised
// layout, with the caller's duties unchanged.
unsafe impl<L: Layer, const A: usize> Layer for Align<L, A> {
    const MIN_ALIGN: usize = if L::MIN_ALIGN > A { L::MIN_ALIGN } else { A };
    const OWNS_EXACT: bool = L::OWNS_EXACT;
    const OWNS_INTERIOR: bool = L::OWNS_INTERIOR;
    const ZEROED: bool = L::ZEROED;

    fn get(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        paranoid(self);
        let raised = layout.align_to(A).ok()?;
        let () = Self::POWER_OF_TWO;
        self.inner.get(raised)
    }

    unsafe fn put(&mut self, ptr: NonNull<u8>, layout: Layout) {
        paranoid(self);
        require_put::<Self>(ptr, layout);
        // SAFETY: the block came from `L` with the raised layout.
        unsafe { self.inner.put(ptr, Self::raised(layout)) }
    }

    fn init() -> Self {
        Self::new(L::init())
    }

    fn deinit(&mut self) {
        self.inner.deinit();
    }

    unsafe fn grow(&mut self, ptr: NonNull<u8>, old: Layout, new: Layout) -> bool {
        paranoid(self);
        require_grow::<Self>(ptr, old, new);
        // A size that cannot be raised (within `A - 1` of `isize::MAX`) is no block `L` could
        // hold at `A`: refused here, rather than passed down at the caller's alignment.
        let Ok(raised_new) = new.align_to(A) else {
            return false;
        };
        // SAFETY: the block is `L`'s with the raised `old`; both raised layouts keep one
        // alignment and the sizes go the same way.
        unsafe { self.inner.grow(ptr, Self::raised(old), raised_new) }
    }

    unsafe fn shrink(&mut self, ptr: NonNull<u8>, old: Layout, new: Layout) -> bool {
        paranoid(self);
        require_shrink::<Self>(ptr, old, new);
        // SAFETY: as for `grow`.
        unsafe { self.inner.shrink(ptr, Self::raised(old), Self::raised(new)) }
    }

    fn owns(&self, ptr: NonNull<u8>) -> bool {
        self.inner.owns(ptr)
    }

    fn leak_report(&self) -> Option<crate::LeakReport> {
        self.inner.leak_report()
    }

    fn check_invariants(&self) {
        self.inner.check_invariants();
    }
}

impl<L: fmt::Debug, const A: usize> fmt::Debug for Align<L, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Align")
            .field("align", &A)
            .field("inner", &self.inner)
            .finish()
    }
}

#[cfg(feature = "std")]
crate::region::attributed_as_inner!(Align<L, const A: usize>);
