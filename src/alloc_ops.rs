//! The allocator operations both adapters share, written once over a `&mut L`: zero-size
//! requests, zeroed memory, and resizing in place or by moving; and the adapters'
//! `Allocator` impls, written once for every `Allocator` trait the crate implements
//! (allocator-api2 0.2, and 0.3 and 0.4 with their features; 0.2's is `core`'s own with the
//! `nightly` feature).

use core::alloc::Layout;
use core::ptr::{self, NonNull};

use crate::Layer;

/// The stack refused a request: each `Allocator` impl turns it into its own `AllocError`.
#[derive(Debug)]
pub(crate) struct Refused;

/// A well-aligned, non-null pointer that owns nothing: the answer to a zero-size request.
#[inline(always)]
pub(crate) fn dangling(layout: Layout) -> NonNull<u8> {
    // SAFETY: an alignment is never zero.
    unsafe { NonNull::new_unchecked(ptr::without_provenance_mut(layout.align())) }
}

/// `Allocator::allocate` (and `allocate_zeroed` when `zeroed`).
#[inline(always)]
pub(crate) fn allocate<L: Layer>(
    layer: &mut L,
    layout: Layout,
    zeroed: bool,
) -> Result<NonNull<[u8]>, Refused> {
    if layout.size() == 0 {
        return Ok(NonNull::slice_from_raw_parts(dangling(layout), 0));
    }
    let block = layer.get(layout).ok_or(Refused)?;
    if zeroed && !L::ZEROED {
        // SAFETY: the block is valid for writes of `layout.size()` bytes.
        unsafe { block.as_ptr().write_bytes(0, layout.size()) };
    }
    Ok(NonNull::slice_from_raw_parts(block, layout.size()))
}

/// `Allocator::deallocate`.
///
/// # Safety
///
/// `ptr` is a block the caller owns, allocated by `allocate` on this layer with a layout
/// that `layout` fits (a zero-size layout for a dangling pointer).
#[inline(always)]
pub(crate) unsafe fn deallocate<L: Layer>(layer: &mut L, ptr: NonNull<u8>, layout: Layout) {
    if layout.size() != 0 {
        // SAFETY: a non-zero size means the block came from `layer.get` with this layout.
        unsafe { layer.put(ptr, layout) }
    }
}

/// `Allocator::grow` / `grow_zeroed` / `shrink`, and `GlobalAlloc::realloc`: resize in
/// place when the layer can, otherwise move to a new block and free the old one.
///
/// # Safety
///
/// As [`deallocate`] for `ptr` and `old`; for growth `new.size() >= old.size()`, for
/// shrinking `new.size() <= old.size()` (callers say which by the sizes alone).
pub(crate) unsafe fn resize<L: Layer>(
    layer: &mut L,
    ptr: NonNull<u8>,
    old: Layout,
    new: Layout,
    zeroed: bool,
) -> Result<NonNull<[u8]>, Refused> {
    if old.size() != 0 && new.size() != 0 && old.align() == new.align() {
        // SAFETY: the block is live in `layer` with layout `old`; the alignments match and
        // the size goes the way the called method expects.
        let in_place = unsafe {
            if new.size() >= old.size() {
                layer.grow(ptr, old, new)
            } else {
                layer.shrink(ptr, old, new)
            }
        };
        if in_place {
            if zeroed && new.size() > old.size() {
                // SAFETY: the block now holds `new.size()` bytes.
                unsafe {
                    ptr.as_ptr()
                        .add(old.size())
                        .write_bytes(0, new.size() - old.size())
                };
            }
            return Ok(NonNull::slice_from_raw_parts(ptr, new.size()));
        }
    }
    let moved = allocate(layer, new, zeroed)?;
    // SAFETY: both blocks are live and disjoint; the smaller size is in bounds for both.
    unsafe {
        ptr::copy_nonoverlapping(
            ptr.as_ptr(),
            moved.cast::<u8>().as_ptr(),
            old.size().min(new.size()),
        );
        deallocate(layer, ptr, old);
    }
    Ok(moved)
}

/// The `Allocator` traits of every allocator-api2 version the crate is built with, for
/// `&$adapter<L>`, written once for both adapters: each method is the operation above of the
/// same name, run on the stack through the adapter's exclusive-access method `$with`.
macro_rules! adapter_allocator {
    ($adapter:ident, [$($bounds:tt)+], $with:ident) => {
        $crate::alloc_ops::adapter_allocator!(@api allocator_api2::alloc, $adapter, [$($bounds)+], $with);
        #[cfg(feature = "allocator-api2-03")]
        $crate::alloc_ops::adapter_allocator!(@api allocator_api2_03::alloc, $adapter, [$($bounds)+], $with);
        #[cfg(feature = "allocator-api2-04")]
        $crate::alloc_ops::adapter_allocator!(@api allocator_api2_04::alloc, $adapter, [$($bounds)+], $with);
    };
    (@api $api:path, $adapter:ident, [$($bounds:tt)+], $with:ident) => {
        const _: () = {
            use $api as api;
            use $crate::alloc_ops::Refused;

            // SAFETY: each method is one operation of this module on the stack, which keeps
            // the `Layer` contract, under the exclusive access `$with` lends (why that access
            // is exclusive, and why blocks stay valid, is argued where the macro is called);
            // zero-size requests get dangling pointers that never reach the layer.
            unsafe impl<L: $($bounds)+> api::Allocator for &$adapter<L> {
                #[inline(always)]
                fn allocate(
                    &self,
                    layout: core::alloc::Layout,
                ) -> Result<core::ptr::NonNull<[u8]>, api::AllocError> {
                    self.$with(|stack| $crate::alloc_ops::allocate(stack, layout, false))
                        .map_err(|Refused| api::AllocError)
                }

                #[inline]
                fn allocate_zeroed(
                    &self,
                    layout: core::alloc::Layout,
                ) -> Result<core::ptr::NonNull<[u8]>, api::AllocError> {
                    self.$with(|stack| $crate::alloc_ops::allocate(stack, layout, true))
                        .map_err(|Refused| api::AllocError)
                }

                #[inline(always)]
                unsafe fn deallocate(&self, ptr: core::ptr::NonNull<u8>, layout: core::alloc::Layout) {
                    // SAFETY: the caller's `Allocator` duties are `deallocate`'s.
                    self.$with(|stack| unsafe { $crate::alloc_ops::deallocate(stack, ptr, layout) })
                }

                unsafe fn grow(
                    &self,
                    ptr: core::ptr::NonNull<u8>,
                    old: core::alloc::Layout,
                    new: core::alloc::Layout,
                ) -> Result<core::ptr::NonNull<[u8]>, api::AllocError> {
                    // SAFETY: `Allocator::grow`'s duties include `new.size() >= old.size()`.
                    self.$with(|stack| unsafe {
                        $crate::alloc_ops::resize(stack, ptr, old, new, false)
                    })
                    .map_err(|Refused| api::AllocError)
                }

                unsafe fn grow_zeroed(
                    &self,
                    ptr: core::ptr::NonNull<u8>,
                    old: core::alloc::Layout,
                    new: core::alloc::Layout,
                ) -> Result<core::ptr::NonNull<[u8]>, api::AllocError> {
                    // SAFETY: as for `grow`.
                    self.$with(|stack| unsafe {
                        $crate::alloc_ops::resize(stack, ptr, old, new, true)
                    })
                    .map_err(|Refused| api::AllocError)
                }

                unsafe fn shrink(
                    &self,
                    ptr: core::ptr::NonNull<u8>,
                    old: core::alloc::Layout,
                    new: core::alloc::Layout,
                ) -> Result<core::ptr::NonNull<[u8]>, api::AllocError> {
                    // SAFETY: `Allocator::shrink`'s duties include `new.size() <= old.size()`.
                    self.$with(|stack| unsafe {
                        $crate::alloc_ops::resize(stack, ptr, old, new, false)
                    })
                    .map_err(|Refused| api::AllocError)
                }
            }
        };
    };
}
pub(crate) use adapter_allocator;
