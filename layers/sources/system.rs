//! `System`: the platform allocator as a layer, one call per object.

use core::alloc::{GlobalAlloc, Layout};
use core::ptr::NonNull;

use crate::Layer;
use crate::layer::require_put;

/// Forwards every block to the platform allocator (`std::alloc::System`: `malloc` and
/// `free` on Unix).
///
/// Useful at the bottom of a debugging stack (`Check<System>`, `Stats<System>`) and as
/// the reference a benchmark compares against. It allocates per object, so the blocks it
/// hands out live anywhere in the address space.
#[derive(Clone, Copy, Debug, Default)]
pub struct System;

impl System {
    /// The platform allocator as a layer.
    pub const fn new() -> Self {
        System
    }
}

/// The layout sent to the platform allocator: one byte for a zero-size request. `None` for
/// a zero-size layout at the largest alignments (2^63 on 64-bit targets), where one byte
/// rounded up to the alignment passes `isize::MAX`: `GlobalAlloc::alloc` must never be
/// given a zero-size layout, so such a request is refused rather than sent as it is.
fn served(layout: Layout) -> Option<Layout> {
    Layout::from_size_align(crate::layer::served_size(layout), layout.align()).ok()
}

// SAFETY: blocks come from `std::alloc::System`, which hands out disjoint, aligned blocks
// that stay valid until deallocated; zero-size requests are sent as one byte.
unsafe impl Layer for System {
    #[inline]
    fn get(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        let served = served(layout)?;
        // SAFETY: `served` never has size 0.
        NonNull::new(unsafe { std::alloc::System.alloc(served) })
    }

    #[inline]
    unsafe fn put(&mut self, ptr: NonNull<u8>, layout: Layout) {
        require_put::<Self>(ptr, layout);
        // A layout `get` refused was never served, so the caller's duties rule `None` out.
        let Some(served) = served(layout) else {
            return;
        };
        // SAFETY: the caller's duties make `ptr` a live block of `System` got with
        // `served(layout)`.
        unsafe { std::alloc::System.dealloc(ptr.as_ptr(), served) }
    }

    fn init() -> Self {
        System
    }

    fn deinit(&mut self) {}
}
