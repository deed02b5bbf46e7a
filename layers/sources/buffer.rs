//! `Buffer<'a>`: a source over caller memory (a static array, a stack buffer); no OS, no std.

use core::alloc::Layout;
use core::fmt;
use core::marker::PhantomData;
use core::mem::MaybeUninit;
use core::ptr::NonNull;

use crate::Layer;
use crate::abort::debug_require;
use crate::layer::{paranoid, require_put, require_shrink, served_size};

/// Hands out blocks from one caller-provided buffer, bumping upward, like Heap-Layers'
/// static-buffer heap.
///
/// A put of the most recent block gives its bytes back at once; other puts keep their
/// bytes until [`deinit`](Layer::deinit) empties the whole buffer. Stack a reusing layer
/// on top when blocks are freed out of order. `get` answers `None` when the buffer is full.
///
/// ```
/// use core::{alloc::Layout, mem::MaybeUninit};
/// use stratalloc::{Layer, layers::Buffer};
///
/// let mut memory = [MaybeUninit::uninit(); 64];
/// let mut buffer = Buffer::new(&mut memory);
/// let layout = Layout::from_size_align(48, 8).unwrap();
/// let block = buffer.get(layout).unwrap();
/// assert!(buffer.get(layout).is_none(), "only 64 bytes");
/// // SAFETY: `block` came from `buffer` with `layout` and is put back once.
/// unsafe { buffer.put(block, layout) };
/// assert!(buffer.get(layout).is_some(), "the last block's bytes came back");
/// ```
pub struct Buffer<'a> {
    base: *mut u8,
    len: usize,
    top: usize,
    _memory: PhantomData<&'a mut [MaybeUninit<u8>]>,
}

// SAFETY: a `Buffer` is an exclusive borrow of its bytes (like `&mut [u8]`, which is
// `Send`); no other handle to them exists.
unsafe impl Send for Buffer<'_> {}

impl<'a> Buffer<'a> {
    /// A source that serves blocks out of `memory`.
    pub const fn new(memory: &'a mut [MaybeUninit<u8>]) -> Self {
        Buffer {
            base: memory.as_mut_ptr().cast(),
            len: memory.len(),
            top: 0,
            _memory: PhantomData,
        }
    }

    /// A source over `len` bytes at `base`, for memory that is not a Rust slice (a linker
    /// section, a `static mut` array named in a `static` initialiser).
    ///
    /// # Safety
    ///
    /// Callers must ensure that `base` is valid for reads and writes of `len` bytes for
    /// `'a`, and that nothing else reads or writes those bytes while the `Buffer` (or any
    /// block it handed out) is in use.
    pub const unsafe fn from_raw_parts(base: *mut u8, len: usize) -> Self {
        Buffer {
            base,
            len,
            top: 0,
            _memory: PhantomData,
        }
    }

    /// The buffer's size in bytes.
    pub const fn capacity(&self) -> usize {
        self.len
    }

    /// Bytes from the start of the buffer up to the end of the highest block in use.
    pub const fn used(&self) -> usize {
        self.top
    }
}

// SAFETY: blocks are carved from `[base + top, base + len)` in increasing order, so they
// never overlap one another; `top` only moves back over the most recent block, after it
// was put. The memory is valid for `'a` by the constructors' contracts.
unsafe impl Layer for Buffer<'_> {
    const OWNS_EXACT: bool = true;
    const OWNS_INTERIOR: bool = true;

    fn get(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        paranoid(self);
        let here = self.base.addr().wrapping_add(self.top);
        let pad = here.wrapping_neg() & (layout.align() - 1);
        let start = self.top.checked_add(pad)?;
        let end = start.checked_add(served_size(layout))?;
        if end > self.len {
            return None;
        }
        self.top = end;
        // SAFETY: `start < end <= len`, so the pointer stays inside the buffer, which is
        // not null (a slice or a valid region never starts at null).
        Some(unsafe { NonNull::new_unchecked(self.base.add(start)) })
    }

    unsafe fn put(&mut self, ptr: NonNull<u8>, layout: Layout) {
        paranoid(self);
        require_put::<Self>(ptr, layout);
        let offset = ptr.as_ptr().addr().wrapping_sub(self.base.addr());
        debug_require!(
            offset < self.top,
            "Buffer: put of {ptr:p}, which is not a block of this buffer"
        );
        if offset + served_size(layout) == self.top {
            self.top = offset;
        }
    }

    fn init() -> Self {
        Buffer::new(&mut [])
    }

    fn deinit(&mut self) {
        self.top = 0;
    }

    unsafe fn shrink(&mut self, ptr: NonNull<u8>, old: Layout, new: Layout) -> bool {
        paranoid(self);
        require_shrink::<Self>(ptr, old, new);
        // The block keeps its bytes; a later put with the smaller size no longer matches
        // `top`, so those bytes stay in use until `deinit`. Wasteful, never unsound.
        true
    }

    fn owns(&self, ptr: NonNull<u8>) -> bool {
        ptr.as_ptr().addr().wrapping_sub(self.base.addr()) < self.top
    }

    fn check_invariants(&self) {
        if self.top > self.len {
            crate::abort::abort_with(format_args!(
                "Buffer invariant broken: top {} past the end {}",
                self.top, self.len
            ));
        }
    }
}

impl fmt::Debug for Buffer<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Buffer")
            .field("capacity", &self.len)
            .field("used", &self.top)
            .finish()
    }
}
