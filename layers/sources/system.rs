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

fn served(layout: Layout) -> Layout {
    // One byte at an alignment that was already valid is always a valid layout.
    Layout::from_size_align(crate::layer::served_size(layout), layout.align()).unwrap_or(layout)
}

// SAFETY: blocks come from `std::alloc::System`, which hands out disjoint, aligned blocks
// that stay valid until deallocated; zero-size requests are sent as one byte.
unsafe impl Layer for System {
    #[inline]
    fn get(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        // SAFETY: `served` never has size 0.
        NonNull::new(unsafe { std::alloc::System.alloc(served(layout)) })
    }

    #[inline]
    unsafe fn put(&mut self, ptr: NonNull<u8>, layout: Layout) {
        require_put::<Self>(ptr, layout);
        // SAFETY: the caller's duties make `ptr` a live block of `System` got with
        // `served(layout)`.
        unsafe { std::alloc::System.dealloc(ptr.as_ptr(), served(layout)) }
    }

    fn init() -> Self {
        System
    }

    fn deinit(&mut self) {}
}
