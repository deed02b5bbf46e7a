//! `Chunk<L, SIZE>`: bump allocation out of SIZE-byte chunks taken from `L`.
//!
//! Invariants (checked by `check_invariants` in tests): `floor <= top <= end of the
//! current chunk`; every chunk on the chain came from `L` with `chunk_layout()`; every large
//! block is on the large list exactly once, with its header just before it.

use core::alloc::Layout;
use core::fmt;
use core::mem::size_of;
use core::ptr::{self, NonNull};

use crate::Layer;
use crate::abort::{abort_with, debug_require};
use crate::layer::{FREED, FRESH, fill, paranoid, require_put, require_shrink, served_size};
use crate::layers::blocks::doubly_linked::{linked_by_fields, push_front, unlink};

/// The header at the start of every chunk: the chain to the previous one.
#[repr(C, align(16))]
struct ChunkHeader {
    prev: *mut ChunkHeader,
}

/// The header just before every large block: its place on the large list, and the layout
/// of the piece got from `L` for it.
#[repr(C)]
struct LargeHeader {
    prev: *mut LargeHeader,
    next: *mut LargeHeader,
    /// Size of the piece got from `L` (header, padding and block).
    piece_size: usize,
    /// Alignment of that piece; the block starts `header_offset(piece_align)` bytes in.
    piece_align: usize,
}

linked_by_fields!(LargeHeader);

/// Where a large block starts in its piece: right after a header, at the piece's alignment.
const fn header_offset(piece_align: usize) -> usize {
    size_of::<LargeHeader>().next_multiple_of(piece_align)
}

const CHUNK_ALIGN: usize = 16;
const HEADER: usize = size_of::<ChunkHeader>();

/// A bump allocator: blocks are carved downward out of chunks of `SIZE` bytes that come
/// from `L`. Freeing is nearly free: a put of the most recent block hands its bytes back at
/// once, other puts do nothing, and the chunks go back to `L` at [`reset`](Chunk::reset)
/// or [`deinit`](Layer::deinit).
///
/// Requests of more than a quarter of a chunk's room, or aligned to more than that, are
/// *large*: they go straight to `L`, each with a small header that keeps them on a list so
/// that `reset` and `deinit` return them too, and a put returns them to `L` at once (as
/// Heap-Layers' chunk heap does). Which path a block took is a function of its layout, so a
/// put needs no lookup.
///
/// `SIZE` must be a multiple of 16 and at least 256 (checked at compile time).
///
/// ```
/// use stratalloc::{Heap, layers::{Chunk, Mmap}};
/// use allocator_api2::vec::Vec;
///
/// let heap = Heap::new(Chunk::<Mmap, 65536>::new(Mmap::new()));
/// let mut squares = Vec::new_in(&heap);
/// squares.extend((0..100u64).map(|i| i * i));
/// assert_eq!(squares[9], 81);
/// ```
pub struct Chunk<L: Layer, const SIZE: usize> {
    /// The next block ends here; blocks are carved downward.
    top: *mut u8,
    /// The lowest byte of the current chunk that blocks may use.
    floor: *mut u8,
    /// The newest chunk; older ones follow its `prev` chain.
    current: *mut ChunkHeader,
    large: *mut LargeHeader,
    chunks: usize,
    larges: usize,
    inner: L,
}

// SAFETY: a `Chunk` exclusively owns its chunks and large blocks; the raw pointers are not
// shared with anything else, so moving it to another thread is as safe as moving `L`.
unsafe impl<L: Layer + Send, const SIZE: usize> Send for Chunk<L, SIZE> {}

impl<L: Layer, const SIZE: usize> Chunk<L, SIZE> {
    /// The most a small request may ask for, in size and in alignment: a quarter of the
    /// room in a chunk. Both bounds together guarantee that a small block fits a fresh chunk.
    pub const SMALL_LIMIT: usize = (SIZE - HEADER) / 4;

    /// A chunk heap over `inner`, holding no chunk yet.
    pub const fn new(inner: L) -> Self {
        const {
            assert!(SIZE >= 256, "Chunk: SIZE must be at least 256 bytes");
            assert!(
                SIZE <= isize::MAX as usize - (CHUNK_ALIGN - 1),
                "Chunk: SIZE must be a valid allocation size"
            );
            assert!(
                SIZE.is_multiple_of(CHUNK_ALIGN),
                "Chunk: SIZE must be a multiple of 16"
            );
        }
        Chunk {
            top: ptr::null_mut(),
            floor: ptr::null_mut(),
            current: ptr::null_mut(),
            large: ptr::null_mut(),
            chunks: 0,
            larges: 0,
            inner,
        }
    }

    crate::layer::layer_below! {
        owns: "the chunks and large blocks this layer got from the inner one";
        into_inner after release: "every chunk and large block";
    }

    /// Chunks held now.
    pub const fn chunks(&self) -> usize {
        self.chunks
    }

    /// Large blocks live now.
    pub const fn large_blocks(&self) -> usize {
        self.larges
    }

    #[inline(always)]
    const fn is_small(layout: Layout) -> bool {
        layout.size() <= Self::SMALL_LIMIT && layout.align() <= Self::SMALL_LIMIT
    }

    fn chunk_layout() -> Layout {
        // SAFETY: `SIZE` is a multiple of 16 no larger than `isize::MAX - 15` (checked in
        // `new`, the only constructor), so with alignment 16 it is a valid layout.
        unsafe { Layout::from_size_align_unchecked(SIZE, CHUNK_ALIGN) }
    }

    /// The layout of the piece got from `L` for a large block (a zero-size one holds one
    /// byte, as every block does).
    fn large_piece(layout: Layout) -> Option<Layout> {
        let align = layout.align().max(align_of::<LargeHeader>());
        let size = header_offset(align).checked_add(served_size(layout))?;
        Layout::from_size_align(size, align).ok()
    }

    /// Ends every block at once and starts over, keeping the newest chunk so that the next
    /// blocks reuse memory that is already faulted in. Every other chunk and every large
    /// block goes back to `L`.
    ///
    /// # Safety
    ///
    /// Callers must ensure that no block got from this layer is used or put afterwards:
    /// every block stops being [currently allocated](crate::layer#currently-allocated).
    /// (A safe reset is [`Heap::reset`](crate::Heap::reset), whose `&mut self` proves that no
    /// collection still uses the heap.)
    pub unsafe fn reset(&mut self) {
        self.release_large();
        if self.current.is_null() {
            return;
        }
        // SAFETY: `current` is a live chunk; its header was written when it was got.
        let mut older = unsafe { (*self.current).prev };
        // SAFETY: as above; the kept chunk becomes the only one on the chain.
        unsafe { (*self.current).prev = ptr::null_mut() };
        while !older.is_null() {
            // SAFETY: `older` is a chunk on our chain, got from `L` with `chunk_layout()`.
            unsafe {
                let next = (*older).prev;
                self.inner
                    .put(NonNull::new_unchecked(older.cast()), Self::chunk_layout());
                older = next;
            }
        }
        self.chunks = 1;
        self.floor = self.current.cast::<u8>().wrapping_add(HEADER);
        self.top = self.current.cast::<u8>().wrapping_add(SIZE);
    }

    #[cold]
    #[inline(never)]
    fn get_in_new_chunk(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        self.start_chunk()?;
        let block = self.bump(layout);
        debug_require!(
            block.is_some(),
            "Chunk: a small block did not fit a fresh chunk"
        );
        block
    }

    /// Gets a fresh chunk from `L` and makes it the current one.
    fn start_chunk(&mut self) -> Option<()> {
        let chunk = self
            .inner
            .get(Self::chunk_layout())?
            .as_ptr()
            .cast::<ChunkHeader>();
        // SAFETY: the chunk is a fresh block of `SIZE` bytes aligned to 16: room for the header.
        unsafe { chunk.write(ChunkHeader { prev: self.current }) };
        self.current = chunk;
        self.chunks += 1;
        self.floor = chunk.cast::<u8>().wrapping_add(HEADER);
        self.top = chunk.cast::<u8>().wrapping_add(SIZE);
        Some(())
    }

    /// Whether a block fitting `layout` can be carved below `top`.
    #[inline(always)]
    fn fits(&self, layout: Layout) -> bool {
        self.top
            .addr()
            .checked_sub(served_size(layout))
            .is_some_and(|end| end & !(layout.align() - 1) >= self.floor.addr())
    }

    #[inline(always)]
    fn bump(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        let size = served_size(layout);
        let start = self.top.addr().checked_sub(size)? & !(layout.align() - 1);
        if start < self.floor.addr() {
            return None;
        }
        self.top = self.top.with_addr(start);
        // SAFETY: `start >= floor > 0`, so the pointer is not null.
        Some(unsafe { NonNull::new_unchecked(self.top) })
    }

    #[cold]
    fn get_large(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        let piece = Self::large_piece(layout)?;
        let base = self.inner.get(piece)?.as_ptr();
        // SAFETY: the block starts `header_offset >= size_of::<LargeHeader>()` bytes into
        // the piece, aligned for a header right before it, and its `served_size(layout)`
        // bytes end where the piece ends.
        unsafe {
            let block = base.add(header_offset(piece.align()));
            let header = block.cast::<LargeHeader>().sub(1);
            header.write(LargeHeader {
                prev: ptr::null_mut(),
                next: ptr::null_mut(),
                piece_size: piece.size(),
                piece_align: piece.align(),
            });
            push_front(&mut self.large, header);
            self.larges += 1;
            Some(NonNull::new_unchecked(block))
        }
    }

    /// # Safety
    ///
    /// `block` is a live large block of this layer.
    unsafe fn put_large(&mut self, block: NonNull<u8>) {
        // SAFETY: the header sits just before every large block and is live with it; the
        // piece starts `header_offset` bytes before the block and was got from `L` with the
        // layout the header records.
        unsafe {
            let header = block.as_ptr().cast::<LargeHeader>().sub(1);
            let LargeHeader {
                piece_size,
                piece_align,
                ..
            } = header.read();
            unlink(&mut self.large, header);
            self.larges = self.larges.wrapping_sub(1);
            let base = block.as_ptr().sub(header_offset(piece_align));
            self.inner.put(
                NonNull::new_unchecked(base),
                Layout::from_size_align_unchecked(piece_size, piece_align),
            );
        }
    }

    /// Aborts unless the header before the large `block` is on the large list, as it is
    /// from `get_large` until the block's put (debug builds only: a put's caller guarantees
    /// it). Its neighbours must link back to it, or the list's head be it: a block put
    /// already keeps its old links, which no longer do (a double put).
    ///
    /// # Safety
    ///
    /// `block` was handed out by `get_large` (so a readable header lies before it).
    unsafe fn require_listed(&self, block: NonNull<u8>, layout: Layout) {
        // SAFETY: the caller's duty for the header. The neighbours a header on the list
        // names are live headers; a header put already may name stale ones, which the put
        // would write through next: reading them first is how this check stops it.
        let listed = unsafe {
            let header = block.as_ptr().cast::<LargeHeader>().sub(1);
            let (prev, next) = ((*header).prev, (*header).next);
            let back = if prev.is_null() {
                self.large == header
            } else {
                (*prev).next == header
            };
            back && (next.is_null() || (*next).prev == header)
        };
        if !listed {
            abort_with(format_args!(
                "Chunk: put of {block:p} ({}), a large block not on the large list (a double \
                 put?)",
                crate::layer::Shown(layout)
            ));
        }
    }

    fn release_large(&mut self) {
        while !self.large.is_null() {
            // SAFETY: the list holds the headers of live large blocks, each right before
            // its block.
            unsafe { self.put_large(NonNull::new_unchecked(self.large.add(1).cast())) };
        }
    }

    /// Gives every chunk and large block back to `L`, leaving this layer empty.
    fn release(&mut self) {
        self.release_large();
        let mut chunk = self.current;
        while !chunk.is_null() {
            // SAFETY: `chunk` is on our chain, got from `L` with `chunk_layout()`.
            unsafe {
                let prev = (*chunk).prev;
                self.inner
                    .put(NonNull::new_unchecked(chunk.cast()), Self::chunk_layout());
                chunk = prev;
            }
        }
        self.current = ptr::null_mut();
        self.top = ptr::null_mut();
        self.floor = ptr::null_mut();
        self.chunks = 0;
    }
}

// SAFETY: small blocks are carved downward from `top` and never below `floor`, so they lie inside
// the current chunk and below every block carved earlier from it; `top` moves back up only over the
// most recent block, after its put. A window is the whole range between `floor` and `top`, after
// which `top` drops to `floor`: later blocks come from below it (a fresh chunk). Chunks and large
// pieces come from `L` and go back to it once. Large blocks lie in pieces of their own, after their
// header.
unsafe impl<L: Layer, const SIZE: usize> Layer for Chunk<L, SIZE> {
    #[inline(always)]
    fn get(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        paranoid(self);
        if !Self::is_small(layout) {
            return self.get_large(layout);
        }
        let block = match self.bump(layout) {
            Some(block) => block,
            None => self.get_in_new_chunk(layout)?,
        };
        // SAFETY: a small block just carved, ours until it is handed out.
        unsafe { fill::<Self>(block.as_ptr(), 0, served_size(layout), FRESH) };
        Some(block)
    }

    #[inline(always)]
    unsafe fn put(&mut self, ptr: NonNull<u8>, layout: Layout) {
        paranoid(self);
        require_put::<Self>(ptr, layout);
        if Self::is_small(layout) {
            // SAFETY: a small block of `served_size(layout)` bytes, which the caller gives up
            // (its bytes stay in the chunk until a reset).
            unsafe { fill::<Self>(ptr.as_ptr(), 0, served_size(layout), FREED) };
            if ptr.as_ptr() == self.top {
                self.top = self.top.wrapping_add(served_size(layout));
            }
        } else {
            if cfg!(debug_assertions) {
                // SAFETY: a layout that is not small was served by `get_large`, so a header
                // lies before the block.
                unsafe { self.require_listed(ptr, layout) };
            }
            // SAFETY: a layout that is not small was served by `get_large`.
            unsafe { self.put_large(ptr) }
        }
    }

    /// Small blocks, the ones carved from chunks.
    const WINDOW_LIMIT: usize = Self::SMALL_LIMIT;

    /// The rest of the current chunk (or all of a fresh one, when the rest is too small for
    /// `layout`); the chunk counts it as carved.
    fn window(&mut self, layout: Layout) -> Option<NonNull<[u8]>> {
        paranoid(self);
        if !Self::is_small(layout) {
            return None;
        }
        if self.current.is_null() || !self.fits(layout) {
            self.start_chunk()?;
        }
        let len = self.top.addr() - self.floor.addr();
        let start = self.floor;
        self.top = self.floor;
        // SAFETY: `floor` lies inside a live chunk, so it is not null.
        Some(NonNull::slice_from_raw_parts(
            unsafe { NonNull::new_unchecked(start) },
            len,
        ))
    }

    fn init() -> Self {
        Self::new(L::init())
    }

    fn deinit(&mut self) {
        self.release();
        self.inner.deinit();
    }

    fn check_invariants(&self) {
        let fail = |what: &str| -> ! { abort_with(format_args!("Chunk invariant broken: {what}")) };
        let mut count = 0;
        let mut chunk = self.current;
        while !chunk.is_null() {
            count += 1;
            // SAFETY: every chunk on the chain is live and starts with its header.
            chunk = unsafe { (*chunk).prev };
        }
        if count != self.chunks {
            fail("chunk count differs from the chain");
        }
        if self.current.is_null() {
            if !self.top.is_null() || !self.floor.is_null() {
                fail("bump pointers set without a chunk");
            }
        } else {
            let start = self.current.addr();
            if self.floor.addr() != start + HEADER
                || self.top.addr() < self.floor.addr()
                || self.top.addr() > start + SIZE
            {
                fail("bump pointers outside the current chunk");
            }
        }
        let mut count = 0;
        let mut large = self.large;
        let mut prev = ptr::null_mut();
        while !large.is_null() {
            count += 1;
            // SAFETY: every header on the large list is live.
            unsafe {
                if (*large).prev != prev {
                    fail("large list back link");
                }
                prev = large;
                large = (*large).next;
            }
        }
        if count != self.larges {
            fail("large block count differs from the list");
        }
        self.inner.check_invariants();
    }

    unsafe fn shrink(&mut self, ptr: NonNull<u8>, old: Layout, new: Layout) -> bool {
        paranoid(self);
        require_shrink::<Self>(ptr, old, new);
        // A small block keeps its bytes; a large one keeps its piece, whose size is in its
        // header. Only a change of path would confuse a later put.
        Self::is_small(old) == Self::is_small(new)
    }
}

impl<L: Layer, const SIZE: usize> Drop for Chunk<L, SIZE> {
    fn drop(&mut self) {
        self.deinit();
    }
}

impl<L: Layer + fmt::Debug, const SIZE: usize> fmt::Debug for Chunk<L, SIZE> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Chunk")
            .field("size", &SIZE)
            .field("chunks", &self.chunks)
            .field("large_blocks", &self.larges)
            .field("inner", &self.inner)
            .finish()
    }
}

// SAFETY: every block lies in a chunk or a large piece got from `L`, attributed to the same
// region; chunks go back to `L` only when none of their blocks is live (reset, deinit).
#[cfg(feature = "std")]
unsafe impl<L: crate::region::Attributed, const SIZE: usize> crate::region::Attributed
    for Chunk<L, SIZE>
{
    fn attribute(&mut self, owner: crate::region::Attribution) {
        self.inner.attribute(owner);
    }

    /// Small blocks are reclaimed only when the chunk ends.
    const RECLAIMS: bool = false;

    /// Over a layer that [reclaims](crate::region::Attributed::RECLAIMS), keeps the newest
    /// chunk, as [`reset`](Chunk::reset) does, and does not rewind the layer below (the kept
    /// chunk is one of its blocks, still in use). Over one that does not (`Batch`), the
    /// chunks it would give back would stay booked there, so it gives everything back and
    /// rewinds the layer below instead.
    fn rewind(&mut self) {
        if L::RECLAIMS {
            // SAFETY: `rewind` ends every block of the stack (its contract, as `deinit`'s),
            // so none is used or put afterwards.
            unsafe { self.reset() };
        } else {
            self.release();
            self.inner.rewind();
        }
    }
}
