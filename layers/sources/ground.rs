//! `Ground`: whole pages from the system allocator, claimed for the region that holds them.

use core::alloc::{GlobalAlloc, Layout};
use core::fmt;
use core::ptr::{self, NonNull};

use crate::Layer;
use crate::layer::served_size;
use crate::page_map::{self, PAGE};
use crate::region::{Attributed, Attribution};

/// Forwards requests to the ground, the system allocator under every region, in whole
/// 4 KiB pages so that a region can claim them (the seed's `ground` layer).
///
/// Sizes are rounded up to whole pages and blocks are page-aligned, so `Ground` belongs at
/// the bottom of a stack that asks for big pieces, under `Chunk`:
/// `Stats<Chunk<Batch<Check<Stats<Ground>>>, 65536>>` is the binarytree example's stack.
pub struct Ground {
    claims: Attribution,
    held: usize,
}

// SAFETY: `Ground` holds no memory of its own; its blocks belong to their owners.
unsafe impl Send for Ground {}

impl Ground {
    /// A ground source that claims nothing until a region attributes it.
    pub const fn new() -> Self {
        Ground {
            claims: Attribution::NONE,
            held: 0,
        }
    }

    /// Bytes currently held from the system allocator (whole pages).
    pub const fn held_bytes(&self) -> usize {
        self.held
    }

    fn pages(layout: Layout) -> Option<Layout> {
        let size = served_size(layout).checked_next_multiple_of(PAGE)?;
        Layout::from_size_align(size, layout.align().max(PAGE)).ok()
    }
}

impl Default for Ground {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: blocks are whole, page-aligned system allocations, disjoint while live; they are
// claimed (when attributed) before they are handed out and released before they go back.
unsafe impl Layer for Ground {
    const MIN_ALIGN: usize = PAGE;

    fn get(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        let pages = Self::pages(layout)?;
        // SAFETY: `pages` has a non-zero size.
        let block = NonNull::new(unsafe { std::alloc::System.alloc(pages) })?;
        if self.claims.is_some() && !page_map::set(block.as_ptr(), pages.size(), self.claims.0) {
            // SAFETY: just allocated with `pages`, never handed out.
            unsafe { std::alloc::System.dealloc(block.as_ptr(), pages) };
            return None;
        }
        self.held += pages.size();
        Some(block)
    }

    unsafe fn put(&mut self, ptr: NonNull<u8>, layout: Layout) {
        // The caller's layout was valid for `get`, so its pages were too.
        let Some(pages) = Self::pages(layout) else {
            return;
        };
        if self.claims.is_some() {
            page_map::set(ptr.as_ptr(), pages.size(), ptr::null());
        }
        self.held = self.held.wrapping_sub(pages.size());
        // SAFETY: the block came from `get`, which allocated it with `pages`.
        unsafe { std::alloc::System.dealloc(ptr.as_ptr(), pages) }
    }

    fn init() -> Self {
        Self::new()
    }

    fn deinit(&mut self) {}
}

// SAFETY: every block's pages are claimed for `owner` from `get` until its `put`.
unsafe impl Attributed for Ground {
    fn attribute(&mut self, owner: Attribution) {
        self.claims = owner;
    }
}

impl fmt::Debug for Ground {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ground")
            .field("held_bytes", &self.held)
            .finish()
    }
}
