//! `Router`: the global allocator that sends each allocation to this thread's current
//! region, and each free to the region that owns the block.
//!
//! Entry points: the four `GlobalAlloc` methods. The rules they keep are listed in the
//! [`region`](crate::region) module. Nothing here panics: a corrupted owner record aborts
//! with one line (see `region::owner`).

use core::alloc::{GlobalAlloc, Layout};
use core::ptr::{self, NonNull};
use std::alloc::System;

use super::page_map;
use super::{
    Owner, alloc_in, carve_in, count_carved_free, current_and_token, drivable, free_in,
    in_current_window, in_known_page, remember_page, resize_in_place, token,
};

/// The global allocator that makes [regions](crate::region) work. Install it once:
///
/// ```
/// #[global_allocator]
/// static ROUTER: stratalloc::Router = stratalloc::Router::new();
/// ```
///
/// With no region entered it hands everything to the system allocator, after one
/// thread-local read (allocation) or one page-map lookup (free).
#[derive(Debug, Default)]
pub struct Router {
    _private: (),
}

impl Router {
    /// The router; usable in a `static`.
    pub const fn new() -> Self {
        Router { _private: () }
    }
}

/// Allocates from the current region, or from the system allocator at the ground (and
/// while the current region is lent out by `with_layer`).
#[inline(always)]
fn allocate(layout: Layout, current: *const Owner) -> *mut u8 {
    if current.is_null() {
        // SAFETY: `GlobalAlloc` callers pass non-zero sizes.
        return unsafe { System.alloc(layout) };
    }
    // SAFETY: the current region is on this thread's stack, so it is this thread's and
    // active, and the router is not inside a stack call (layers never allocate through it).
    match unsafe { carve_in(current, layout) } {
        Some(block) => block.as_ptr(),
        None => allocate_in_stack(layout, current),
    }
}

/// The rest of [`allocate`] for a region: a call into its stack (or a new window), out of
/// line so that the carving fast path needs no stack frame.
#[inline(never)]
fn allocate_in_stack(layout: Layout, current: *const Owner) -> *mut u8 {
    // SAFETY: as in `allocate`.
    match unsafe { alloc_in(current, layout) } {
        Ok(block) => block.map_or(ptr::null_mut(), NonNull::as_ptr),
        // SAFETY: as above.
        Err(()) => unsafe { System.alloc(layout) },
    }
}

/// Resizes a carved block of `current`, this thread's current region: a carved block keeps
/// its bytes when it shrinks (as [`resize_in_place`] says); one that grows moves to a block
/// of the current region, and the old one is counted back.
///
/// # Safety
///
/// `in_current_window(current, ptr)` said `true`; `ptr` is live with `layout`,
/// and `new_size` is valid with its alignment.
#[inline(always)]
unsafe fn move_carved(
    ptr: *mut u8,
    layout: Layout,
    new_size: usize,
    current: *const Owner,
) -> *mut u8 {
    if new_size <= layout.size() {
        return ptr;
    }
    // SAFETY: `GlobalAlloc::realloc`'s duties: `new_size` is valid with the alignment.
    let new = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
    let fresh = allocate(new, current);
    if !fresh.is_null() {
        // SAFETY: both blocks are live and disjoint, and the old size fits both; the old
        // block, a carved block of `current`, is then counted back once.
        unsafe {
            ptr::copy_nonoverlapping(ptr, fresh, layout.size());
            count_carved_free(current);
        }
    }
    fresh
}

/// The rest of `dealloc`, out of line so that the quick frees in the current region need
/// no stack frame and inline into their callers: a free through the page map, to the
/// system allocator or to the region that owns the block.
///
/// # Safety
///
/// `GlobalAlloc::dealloc`'s duties for `ptr` and `layout`; `current` is this thread's
/// current region.
#[inline(never)]
unsafe fn free_elsewhere(ptr: *mut u8, layout: Layout, current: *const Owner) {
    // (Read here, not in `dealloc`: the quick frees do not need it.)
    let thread = token();
    let (owner, block) = page_map::lookup(ptr);
    if owner.is_null() {
        // SAFETY: a page nobody claimed: the block came from the system allocator.
        return unsafe { System.dealloc(ptr, layout) };
    }
    if ptr::eq(owner, current) {
        // Before `free_in`, never after: a free it parks may flush the parked ones into the
        // stack, which may give pages away and forgets the page.
        // SAFETY: the page map gave the current region for `ptr` just now.
        unsafe { remember_page(current, thread, ptr) };
    }
    // SAFETY: the page map says `owner` served this block (`block` is the same address
    // with its source's provenance); the caller's duties make it live, freed once, with
    // this layout.
    unsafe { free_in(owner, thread, NonNull::new_unchecked(block), layout) }
}

// SAFETY: every block comes from the system allocator or from a region's stack, which keep
// the `GlobalAlloc` guarantees for the layouts they are given (the region's being at least
// the program's); every free goes to the allocator that owns the block, found in the page
// map, which only region sources write.
unsafe impl GlobalAlloc for Router {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        allocate(layout, current_and_token().0)
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let current = current_and_token().0;
        if current.is_null() {
            // SAFETY: non-zero size, as `GlobalAlloc` callers guarantee.
            return unsafe { System.alloc_zeroed(layout) };
        }
        let block = allocate(layout, current);
        if !block.is_null() {
            // SAFETY: a fresh block of at least `layout.size()` bytes.
            unsafe { block.write_bytes(0, layout.size()) };
        }
        block
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let current = current_and_token().0;
        if !current.is_null()
            // SAFETY: the current region of this thread.
            && unsafe { in_current_window(current, ptr) || in_known_page(current, ptr, layout) }
        {
            // SAFETY: as above; `GlobalAlloc::dealloc`'s duties make `ptr` live and freed
            // once.
            return unsafe { count_carved_free(current) };
        }
        // SAFETY: passed on from the caller.
        unsafe { free_elsewhere(ptr, layout, current) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let (current, thread) = current_and_token();
        // SAFETY: the current region of this thread.
        if !current.is_null() && unsafe { in_current_window(current, ptr) } {
            // A carved block of the current region, as a growing `Vec`'s usually is.
            // SAFETY: the block is live with `layout` (`GlobalAlloc::realloc`'s duties).
            return unsafe { move_carved(ptr, layout, new_size, current) };
        }
        let (owner, block) = page_map::lookup(ptr);
        if owner.is_null() {
            // SAFETY: a system block stays with the system allocator (rule 4: the ground is
            // on every thread).
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // SAFETY: `GlobalAlloc::realloc`'s duties: `new_size` is valid with the alignment.
        let new = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: `ptr` is non-null and a live block of `owner` with `layout`; `block` is
        // its address with the provenance of the source's allocation.
        let block = unsafe { NonNull::new_unchecked(block) };
        let fresh = if drivable(owner, thread) {
            // SAFETY: as above; the region is this thread's and active.
            if unsafe { resize_in_place(owner, thread, block, layout, new) } == Some(true) {
                return block.as_ptr();
            }
            // Rule 4: the block stays in the region that owns it.
            // SAFETY: drivable means this thread's active region, outside a stack call.
            match unsafe { alloc_in(owner, new) } {
                Ok(fresh) => fresh.map_or(ptr::null_mut(), NonNull::as_ptr),
                Err(()) => allocate(new, current),
            }
        } else {
            // Another thread's region, or a zombie: move to the current region.
            allocate(new, current)
        };
        if !fresh.is_null() {
            // SAFETY: both blocks are live and disjoint; the smaller size fits both. The old
            // block is then freed once, to its owner.
            unsafe {
                ptr::copy_nonoverlapping(block.as_ptr(), fresh, layout.size().min(new_size));
                free_in(owner, thread, block, layout);
            }
        }
        fresh
    }
}
