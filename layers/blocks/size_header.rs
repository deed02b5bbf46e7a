//! `SizeHeader<L>`: a header before every block recording its layout, so that any layer
//! becomes [`Measured`] (blocks put back without their layout), as Heap-Layers' `SizeHeap`.
//!
//! Invariant: every block handed out is `header` bytes into a block of `L` got with
//! `outer(layout)`, where `header = max(16, align)`; the 16 bytes right before the block
//! hold the caller's size and alignment.

use core::alloc::Layout;
use core::fmt;
use core::ptr::NonNull;

use crate::Layer;
use crate::layer::{Measured, paranoid, require_grow, require_put, require_shrink};

/// What the header keeps: the layout the block was last known to fit.
#[repr(C)]
struct Header {
    size: usize,
    align: usize,
}

/// The bytes in front of a block with alignment `align`: 16, or the alignment when it is
/// larger, so the block stays aligned.
const fn header_len(align: usize) -> usize {
    if align > 16 { align } else { 16 }
}

/// Puts the block's layout in a 16-byte header before it, so that a block can be put back
/// by its address alone ([`Measured::put_unsized`]) and its size read back
/// ([`Measured::usable_size`]). The price is 16 bytes a block (more for alignments above
/// 16): meant for large blocks, or for debugging, not for a heap of small objects.
///
/// ```
/// use core::alloc::Layout;
/// use stratalloc::{Layer, Measured, layers::{SizeHeader, System}};
///
/// let mut heap = SizeHeader::new(System);
/// let block = heap.get(Layout::from_size_align(100, 8).unwrap()).unwrap();
/// // SAFETY: a live block of `heap`, put once.
/// unsafe {
///     assert_eq!(heap.usable_size(block), 100);
///     heap.put_unsized(block);
/// }
/// ```
pub struct SizeHeader<L> {
    inner: L,
}

impl<L: Layer> SizeHeader<L> {
    /// Wraps `inner`.
    pub const fn new(inner: L) -> Self {
        SizeHeader { inner }
    }

    crate::layer::layer_below! {
        ///
        /// Nor may they replace the inner layer (which drops or moves it, blocks and all).
        ///
        /// Safe code cannot do it:
        ///
        /// ```compile_fail,E0133
        /// use stratalloc::{Layer, layers::{SizeHeader, System}};
        ///
        /// let mut heap = SizeHeader::new(System);
        /// heap.inner_mut().deinit(); // error: call to unsafe function
        /// ```
        owns: "the blocks this layer got from the inner one, each holding one of this \
            layer's blocks and its header, which [`put_unsized`](Measured::put_unsized) and \
            [`usable_size`](Measured::usable_size) read";
        /// Unwraps the layer below.
        into_inner;
    }

    /// The layout of the block of `L` behind a block with `layout`.
    fn outer(layout: Layout) -> Option<Layout> {
        let size = layout
            .size()
            .max(1)
            .checked_add(header_len(layout.align()))?;
        Layout::from_size_align(size, layout.align().max(16)).ok()
    }

    /// The header of a block.
    ///
    /// # Safety
    ///
    /// `ptr` is a live block of this layer.
    unsafe fn header(ptr: NonNull<u8>) -> *mut Header {
        // SAFETY: the caller's duty: 16 header bytes precede every block.
        unsafe { ptr.as_ptr().sub(size_of::<Header>()).cast() }
    }

    /// The layout a live block fits, read from its header.
    ///
    /// # Safety
    ///
    /// `ptr` is a live block of this layer.
    unsafe fn layout_of(ptr: NonNull<u8>) -> Layout {
        // SAFETY: the caller's duty; the header was written from a valid layout.
        unsafe {
            let header = Self::header(ptr);
            Layout::from_size_align_unchecked((*header).size, (*header).align)
        }
    }
}

// SAFETY: each block lies `header_len(align)` bytes into a block of `L` that holds the
// header and the caller's bytes; `L`'s blocks are disjoint, so ours are; alignment holds
// because the outer block is aligned to `align` and the offset is a multiple of it.
unsafe impl<L: Layer> Layer for SizeHeader<L> {
    const MIN_ALIGN: usize = 16;
    const ZEROED: bool = false;
    // Blocks lie inside blocks of `L`, and `owns` asks `L`: exact when `L` answers for
    // every address inside its blocks.
    const OWNS_EXACT: bool = L::OWNS_INTERIOR;
    const OWNS_INTERIOR: bool = L::OWNS_INTERIOR;

    fn get(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        paranoid(self);
        let outer = Self::outer(layout)?;
        let base = self.inner.get(outer)?;
        // SAFETY: the outer block holds the header and then the caller's bytes.
        unsafe {
            let block = base.add(header_len(layout.align()));
            Self::header(block).write(Header {
                size: layout.size(),
                align: layout.align(),
            });
            Some(block)
        }
    }

    unsafe fn put(&mut self, ptr: NonNull<u8>, layout: Layout) {
        require_put::<Self>(ptr, layout);
        // SAFETY: the caller's duties are `put_unsized`'s.
        unsafe { self.put_unsized(ptr) }
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
        // SAFETY: the caller's duties, carried to the outer block.
        unsafe { self.resize(ptr, old, new, true) }
    }

    unsafe fn shrink(&mut self, ptr: NonNull<u8>, old: Layout, new: Layout) -> bool {
        paranoid(self);
        require_shrink::<Self>(ptr, old, new);
        // SAFETY: as for `grow`.
        unsafe { self.resize(ptr, old, new, false) }
    }

    fn owns(&self, ptr: NonNull<u8>) -> bool {
        self.inner.owns(ptr)
    }

    fn check_invariants(&self) {
        self.inner.check_invariants();
    }
}

impl<L: Layer> SizeHeader<L> {
    /// Resizes the outer block in place and records the new size.
    ///
    /// # Safety
    ///
    /// `Layer::grow`'s (or `shrink`'s) duties for `ptr`, `old` and `new`.
    unsafe fn resize(&mut self, ptr: NonNull<u8>, old: Layout, new: Layout, grow: bool) -> bool {
        let (Some(outer_old), Some(outer_new)) = (Self::outer(old), Self::outer(new)) else {
            return false;
        };
        // SAFETY: the outer block is live with `outer_old` (the header's offset depends on
        // the alignment only, which does not change).
        unsafe {
            let base = ptr.sub(header_len(old.align()));
            let done = if grow {
                self.inner.grow(base, outer_old, outer_new)
            } else {
                self.inner.shrink(base, outer_old, outer_new)
            };
            if done {
                (*Self::header(ptr)).size = new.size();
            }
            done
        }
    }
}

// SAFETY: the header holds the layout the block fits (written at `get`, updated by every
// successful resize), so `usable_size` is a size it holds, `put_unsized` puts the outer
// block with the layout it was got with, and `grow_unsized` grows it from that layout.
unsafe impl<L: Layer> Measured for SizeHeader<L> {
    unsafe fn usable_size(&self, ptr: NonNull<u8>) -> usize {
        // SAFETY: the caller's duty.
        unsafe { Self::layout_of(ptr).size() }
    }

    unsafe fn put_unsized(&mut self, ptr: NonNull<u8>) {
        paranoid(self);
        // SAFETY: the caller's duty; the header names the outer block's layout.
        unsafe {
            let layout = Self::layout_of(ptr);
            let outer = Self::outer(layout).unwrap_unchecked();
            self.inner.put(ptr.sub(header_len(layout.align())), outer);
        }
    }

    unsafe fn grow_unsized(&mut self, ptr: NonNull<u8>, new_size: usize) -> bool {
        // SAFETY: the caller's duty.
        let old = unsafe { Self::layout_of(ptr) };
        let Ok(new) = Layout::from_size_align(new_size, old.align()) else {
            return false;
        };
        // SAFETY: `old` fits the live block, and `new` has its alignment and a larger size
        // (`new_size` is more than the usable size, which is `old`'s).
        unsafe { self.grow(ptr, old, new) }
    }
}

impl<L: fmt::Debug> fmt::Debug for SizeHeader<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SizeHeader")
            .field("inner", &self.inner)
            .finish()
    }
}
