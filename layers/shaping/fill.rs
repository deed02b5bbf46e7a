//! `Fill<L, BYTE>`: every block handed out filled with `BYTE`; `Fill<L, 0>` zeroes.

use core::alloc::Layout;
use core::fmt;
use core::ptr::NonNull;

use crate::Layer;
use crate::layer::{paranoid, require_grow, require_put, require_shrink, served_size};

/// Fills every block `L` hands out with `BYTE` before the caller sees it (the bytes a block
/// gains by growing in place too): memory with a known first value, as `calloc` gives
/// zeroes. `Fill<L, 0>` reports [`ZEROED`](Layer::ZEROED), truthfully, whatever `L` is (and
/// skips the fill when `L` already zeroes its blocks); with any other byte the stack is not
/// `ZEROED`, whatever `L` is.
///
/// ```
/// use core::alloc::Layout;
/// use stratalloc::{Layer, layers::{Fill, System}};
///
/// let mut filled = Fill::<_, 0xAA>::new(System::new());
/// let layout = Layout::from_size_align(16, 8).unwrap();
/// let block = filled.get(layout).unwrap();
/// // SAFETY: the block holds 16 bytes, all written by the layer; put once.
/// unsafe {
///     assert!(core::slice::from_raw_parts(block.as_ptr(), 16).iter().all(|&b| b == 0xAA));
///     filled.put(block, layout);
/// }
/// assert!(<Fill<System, 0> as Layer>::ZEROED);
/// assert!(!<Fill<System, 0xAA> as Layer>::ZEROED);
/// ```
pub struct Fill<L, const BYTE: u8> {
    inner: L,
}

impl<L, const BYTE: u8> Fill<L, BYTE> {
    /// Wraps `inner`.
    pub const fn new(inner: L) -> Self {
        Fill { inner }
    }

    crate::layer::layer_below! {
        owns: "the blocks this layer got from the inner one";
        /// Unwraps the layer below. Blocks got through `Fill` go back to it unchanged.
        into_inner;
    }
}

// SAFETY: every block comes unchanged from `L` (only its bytes are written, which the
// caller is about to own), and every call is forwarded with the caller's duties; `ZEROED`
// holds when `BYTE` is 0 because every byte a caller gets is then written 0 here, or was
// already by `L`'s promise.
unsafe impl<L: Layer, const BYTE: u8> Layer for Fill<L, BYTE> {
    const MIN_ALIGN: usize = L::MIN_ALIGN;
    const OWNS_EXACT: bool = L::OWNS_EXACT;
    const OWNS_INTERIOR: bool = L::OWNS_INTERIOR;
    const ZEROED: bool = BYTE == 0;

    fn get(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        paranoid(self);
        let block = self.inner.get(layout)?;
        if !(BYTE == 0 && L::ZEROED) {
            // SAFETY: a fresh block of `layout.size()` bytes (one for a zero-size one).
            unsafe { block.as_ptr().write_bytes(BYTE, layout.size().max(1)) };
        }
        Some(block)
    }

    unsafe fn put(&mut self, ptr: NonNull<u8>, layout: Layout) {
        paranoid(self);
        require_put::<Self>(ptr, layout);
        // SAFETY: the caller's duties, which are `L`'s for a block of `L`.
        unsafe { self.inner.put(ptr, layout) }
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
        // SAFETY: forwarded with the caller's duties.
        let grown = unsafe { self.inner.grow(ptr, old, new) };
        // The bytes the block held already: one for a zero-size block, its owner's to
        // write, which a grow keeps as it keeps the others.
        let kept = served_size(old);
        if grown && new.size() > kept {
            // SAFETY: the block now holds `new.size()` bytes; the new ones are filled.
            unsafe { ptr.as_ptr().add(kept).write_bytes(BYTE, new.size() - kept) };
        }
        grown
    }

    unsafe fn shrink(&mut self, ptr: NonNull<u8>, old: Layout, new: Layout) -> bool {
        paranoid(self);
        require_shrink::<Self>(ptr, old, new);
        // SAFETY: forwarded with the caller's duties.
        unsafe { self.inner.shrink(ptr, old, new) }
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

impl<L: fmt::Debug, const BYTE: u8> fmt::Debug for Fill<L, BYTE> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fill")
            .field("byte", &BYTE)
            .field("inner", &self.inner)
            .finish()
    }
}

#[cfg(feature = "std")]
crate::region::attributed_as_inner!(Fill<L, const BYTE: u8>);
