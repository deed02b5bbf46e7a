//! `Coalesce<L, ARENA, KEEP>`: a coalescing allocator for large blocks, with boundary tags in
//! arenas got from `L` and segregated free lists found through a bitmap. Entry point:
//! [`Coalesce`] and its `Layer` impl.
//!
//! Invariants (checked by `check_invariants`; written out in the "Invariants" section of the
//! type's docs): the blocks of an arena tile it exactly between its head and its end tag,
//! each tag's `prev` naming its left neighbour's size; no two free blocks are neighbours;
//! a block is free exactly when it is on the bin its size maps to, and a bin's bit is set
//! exactly when the bin is not empty; at most `KEEP` arenas are wholly free, counted in
//! `empty`.

use core::alloc::Layout;
use core::fmt;
use core::mem::size_of;
use core::ptr::{self, NonNull};

use super::classes::ClassMap;
use super::doubly_linked::{Linked, linked_by_fields, push_front, unlink};
use crate::Layer;
use crate::abort::{abort_with, debug_require};
use crate::layer::{
    FREED, FRESH, fill, paranoid, require_grow, require_put, require_shrink, served_size,
};

/// The header right before every block: 16 bytes.
#[repr(C, align(16))]
struct Tag {
    /// Arena blocks: the block's bytes, this tag included. Large blocks: the bytes of the
    /// piece got from `L`.
    size: usize,
    /// Arena blocks: the left neighbour's size in 16-byte units, 0 for an arena's first
    /// block. Large blocks: the payload's offset in its piece, in 16-byte units.
    prev: u32,
    /// The block's state in the low two bits, sealed with a hash of the tag's address so
    /// that a header that is not ours, or a stale copy of one, is recognised.
    seal: u32,
}

const TAG: usize = size_of::<Tag>();
static_assertions::const_assert_eq!(TAG, 16);

/// The links of a free block, in its first 16 bytes after the tag: its place on its bin.
#[repr(C)]
struct Links {
    next: *mut Tag,
    prev: *mut Tag,
}

/// The links of the free block whose tag is `tag`.
#[inline(always)]
fn links(tag: *mut Tag) -> *mut Links {
    tag.wrapping_add(1).cast()
}

// SAFETY: a free block on a bin has room for its links after its tag (`MIN_BLOCK`), which
// nothing but the bin uses while it is free; `prev` and `next` are two distinct fields.
unsafe impl Linked for Tag {
    #[inline(always)]
    unsafe fn prev(tag: *mut Tag) -> *mut *mut Tag {
        // SAFETY: the caller's duty: the block is valid, so are its links.
        unsafe { &raw mut (*links(tag)).prev }
    }

    #[inline(always)]
    unsafe fn next(tag: *mut Tag) -> *mut *mut Tag {
        // SAFETY: as above.
        unsafe { &raw mut (*links(tag)).next }
    }
}

/// The start of every arena: its place on the arena list.
#[repr(C, align(16))]
struct ArenaHead {
    prev: *mut ArenaHead,
    next: *mut ArenaHead,
}

/// The start of every large block's piece: its place on the large list, the piece's size,
/// and the payload's offset in it (which is also the piece's alignment).
#[repr(C)]
struct LargeHead {
    prev: *mut LargeHead,
    next: *mut LargeHead,
    len: usize,
    offset: usize,
}

linked_by_fields!(ArenaHead, LargeHead);

/// Every block is aligned to this, and every size is a multiple of it.
const GRAIN: usize = 16;
/// The smallest block: a tag and the links of a free block.
const MIN_BLOCK: usize = TAG + size_of::<Links>().next_multiple_of(GRAIN);
/// The smallest payload offset of a large block: room for its head and its tag.
const LARGE_OFFSET: usize = (size_of::<LargeHead>() + TAG).next_power_of_two();

// Block states, in the low bits of a seal.
const USED: u32 = 0;
const FREE: u32 = 1;
const LARGE: u32 = 2;
const EDGE: u32 = 3;

/// The seal of a tag at `addr` in `state`.
#[inline(always)]
fn seal(tag: *const Tag, state: u32) -> u32 {
    let hash = ((tag.addr() >> 4) as u32).wrapping_mul(0x9E37_79B1) ^ 0xC0A1_E5CE;
    (hash & !3) | state
}

/// Free lists: 8 bins per power of two (two-level segregated fit, as TLSF), from 32 bytes
/// to 2 GiB. The bins are the classes of a size-class policy (`classes.rs`): a free block is
/// filed on the largest class no bigger than it; the last class (2 GiB) only bounds the
/// sizes, so it is no bin. Bin `level * SUBS + sub` holds the blocks of `2^(level + 5)`
/// bytes and up, `sub` steps of `2^(level + 2)` above it.
type Bins = ClassMap<MIN_BLOCK, MIN_BLOCK, SUBS, { 1 << 31 }>;
const SUBS: usize = 8;
const BINS: usize = Bins::COUNT - 1;
const LEVELS: usize = BINS / SUBS;
// One linear class, so the bins go level by level from `MIN_BLOCK`, `SUBS` to a level.
const _: () = assert!(Bins::class_size(0) == MIN_BLOCK && BINS == LEVELS * SUBS);

/// The bin of a free block of `size` bytes (`MIN_BLOCK <= size < 2^31`).
#[inline(always)]
const fn bin_of(size: usize) -> usize {
    Bins::class_at_most(size)
}

/// Rounds a size up to a multiple of 16, or `None` on overflow.
#[inline(always)]
const fn round_up(size: usize) -> Option<usize> {
    match size.checked_add(GRAIN - 1) {
        Some(size) => Some(size & !(GRAIN - 1)),
        None => None,
    }
}

/// A coalescing heap for large blocks: boundary tags, segregated free lists, and arenas of
/// `ARENA` bytes from `L` that go back to it once wholly free.
///
/// Every block has a 16-byte [header](#headers) right before it. A get takes the smallest
/// free block found in O(1) (8 bins per power of two, a bitmap of the non-empty ones), and
/// splits off the rest when it is at least 32 bytes; a put merges the block with its free
/// neighbours on both sides in O(1). An arena that becomes wholly free goes back to `L`,
/// except `KEEP` of them (one by default), kept for later requests, so that a program that
/// gets and puts one block in a loop does not map and unmap an arena each time. (With
/// random frees of 8 KiB - 1 MiB blocks over 4 MiB arenas, several arenas are often empty
/// at once: `KEEP = 4` cut the arenas got from `Mmap` tenfold in `benches/coalesce.rs`,
/// and with them the page faults that dominated the time.) Requests too big for an arena go
/// straight to `L`, each in a piece of its own, with the same header before the block.
///
/// Blocks are aligned to 16 ([`MIN_ALIGN`](Layer::MIN_ALIGN)); a larger alignment is served
/// by taking a block with room to spare and splitting a free block off its front. Because
/// the header knows the block's size, [`put_unsized`](Coalesce::put_unsized) frees without a
/// layout and [`usable_size`](Coalesce::usable_size) tells how many bytes a block holds:
/// what a `malloc` replacement needs. Misuse the headers show (a put of a free block, a
/// pointer without one of our headers, a broken neighbour) aborts with one line.
///
/// `ARENA` must be a power of two from 64 KiB to 2 GiB (checked at compile time); 4 MiB
/// suits a `malloc` replacement serving 8 KiB to 1 MiB.
///
/// # Headers
///
/// `size` (the block's bytes, header included), the left neighbour's size (so both
/// neighbours are found in O(1): the right one `size` bytes on, the left one `prev` bytes
/// back), and the state sealed with a hash of the header's address. Each arena starts with
/// a 16-byte head (the arena list) and ends with a 16-byte edge tag that no block merges
/// into. A large block's header holds its piece's size and the block's offset in it; the
/// piece starts with its place on the large list.
///
/// # Invariants
///
/// - The blocks of an arena tile `[head + 16, end - 16)`; each tag's `prev` is its left
///   neighbour's size (0 for the first block); the edge tag's `prev` is the last block's.
/// - No two free blocks are neighbours (puts merge them).
/// - A block is free exactly when it is on the bin its size maps to; a bin's bit in the
///   bitmap is set exactly when the bin is not empty.
/// - At most `KEEP` arenas are wholly free (a single free block spanning each), and
///   `empty` counts them.
///
/// ```
/// use core::alloc::Layout;
/// use stratalloc::{Layer, layers::{Coalesce, Mmap}};
///
/// let mut heap: Coalesce<Mmap, { 4 << 20 }> = Coalesce::new(Mmap::new());
/// let layout = Layout::from_size_align(100_000, 8).unwrap();
/// let block = heap.get(layout).unwrap();
/// // SAFETY: `block` is a live block of `heap`.
/// assert!(unsafe { heap.usable_size(block) } >= 100_000);
/// // SAFETY: put once, without its layout.
/// unsafe { heap.put_unsized(block) };
/// assert_eq!(heap.arenas(), 1, "the empty arena is kept for the next request");
/// ```
pub struct Coalesce<L: Layer, const ARENA: usize, const KEEP: usize = 1> {
    bins: [*mut Tag; BINS],
    /// Bit `sub` of `subs[level]`: bin `level * 8 + sub` is not empty.
    subs: [u8; LEVELS],
    /// Bit `level`: `subs[level]` is not zero.
    levels: u32,
    arenas: *mut ArenaHead,
    arena_count: usize,
    /// Wholly free arenas kept for later requests (their one block is on a bin).
    empty: usize,
    large: *mut LargeHead,
    large_count: usize,
    inner: L,
}

// SAFETY: a `Coalesce` exclusively owns its arenas and large pieces; the raw pointers are
// not shared, so moving it to another thread is as safe as moving `L`.
unsafe impl<L: Layer + Send, const ARENA: usize, const KEEP: usize> Send
    for Coalesce<L, ARENA, KEEP>
{
}

impl<L: Layer, const ARENA: usize, const KEEP: usize> Coalesce<L, ARENA, KEEP> {
    /// The size of a wholly free arena's one block, header included.
    const FULL: usize = ARENA - size_of::<ArenaHead>() - TAG;

    /// The largest request, at alignment 16 or less, served from an arena; larger ones go
    /// straight to `L`.
    pub const ARENA_LIMIT: usize = Self::FULL - TAG;

    /// A coalescing heap over `inner`, holding no arena yet.
    pub const fn new(inner: L) -> Self {
        const {
            assert!(
                ARENA.is_power_of_two() && ARENA >= 1 << 16 && ARENA <= 1 << 31,
                "Coalesce: ARENA must be a power of two from 64 KiB to 2 GiB"
            );
            assert!(size_of::<ArenaHead>() == GRAIN);
            assert!(MIN_BLOCK == 32 && LARGE_OFFSET >= size_of::<LargeHead>() + TAG);
        }
        Coalesce {
            bins: [ptr::null_mut(); BINS],
            subs: [0; LEVELS],
            levels: 0,
            arenas: ptr::null_mut(),
            arena_count: 0,
            empty: 0,
            large: ptr::null_mut(),
            large_count: 0,
            inner,
        }
    }

    crate::layer::layer_below! {
        owns: "the arenas and large pieces this layer got from the inner one";
        into_inner after release: "every arena and large piece";
    }

    /// Arenas held now, the kept empty one included.
    pub const fn arenas(&self) -> usize {
        self.arena_count
    }

    /// Wholly free arenas kept for later requests (at most `KEEP`).
    pub const fn empty_arenas(&self) -> usize {
        self.empty
    }

    /// Large blocks (those served straight from `L`) live now.
    pub const fn large_blocks(&self) -> usize {
        self.large_count
    }

    /// Calls `f` with the usable size of every live block (arena blocks in address order,
    /// then the large ones): a walk of every arena's tags, for reports such as a heap
    /// summary, not for hot paths.
    pub fn for_each_live(&self, mut f: impl FnMut(usize)) {
        let mut arena = self.arenas;
        while !arena.is_null() {
            // SAFETY: every arena on the list is live and tiled by its tags, from just after
            // its head up to its edge tag.
            unsafe {
                let end = arena.cast::<u8>().add(ARENA - TAG).cast::<Tag>();
                let mut tag = arena.cast::<u8>().add(size_of::<ArenaHead>()).cast::<Tag>();
                while tag < end {
                    let size = (*tag).size;
                    if Self::state(tag) == USED {
                        f(size - TAG);
                    }
                    if size == 0 {
                        break;
                    }
                    tag = tag.byte_add(size);
                }
                arena = (*arena).next;
            }
        }
        let mut large = self.large;
        while !large.is_null() {
            // SAFETY: every piece on the large list is live and starts with its head; its
            // block holds the piece less the payload's offset (as `usable_size` says).
            unsafe {
                f((*large).len - (*large).offset);
                large = (*large).next;
            }
        }
    }

    /// The bytes the block at `ptr` really holds (at least the size it was got with, or
    /// grown or shrunk to), read from its header in O(1).
    ///
    /// # Safety
    ///
    /// Callers must ensure that `ptr` was returned by `get` on this layer and is
    /// [currently allocated](crate::layer#currently-allocated). (A pointer whose header is
    /// not one of this layer's aborts, when the header can be read at all.)
    pub unsafe fn usable_size(&self, ptr: NonNull<u8>) -> usize {
        let tag = Self::tag_of(ptr);
        // SAFETY: the caller's duty: a live block of ours, its tag right before it.
        match unsafe { Self::state(tag) } {
            // SAFETY: the tag is live, as above, and part of its arena's tiling.
            USED => unsafe {
                Self::check_tiling(tag);
                (*tag).size - TAG
            },
            // SAFETY: as above; a large tag's `prev` is the payload's offset.
            LARGE => unsafe { (*tag).size - (*tag).prev as usize * GRAIN },
            state => Self::misuse("usable_size", ptr, state),
        }
    }

    /// Grows the block at `ptr` in place to hold `new_size` bytes, into its free right
    /// neighbour if need be (a block with a map of its own only within what it holds);
    /// `false`, and the block unchanged, when it cannot. The layout is not needed: the
    /// header says the block's size.
    ///
    /// # Safety
    ///
    /// As for [`usable_size`](Coalesce::usable_size).
    unsafe fn grow_to(&mut self, ptr: NonNull<u8>, new_size: usize) -> bool {
        let tag = Self::tag_of(ptr);
        let Some(need) = Self::block_size(new_size) else {
            return false;
        };
        // SAFETY: the caller's duty: a live block of ours. Its right neighbour's tag is
        // where its size says; a free one is taken off its bin and joined, and the rest
        // split off again, which keeps the tiling.
        unsafe {
            match Self::state(tag) {
                USED => Self::check_tiling(tag),
                LARGE => return self.usable_size(ptr) >= new_size,
                state => Self::misuse("grow", ptr, state),
            }
            let size = (*tag).size;
            if need <= size {
                return true;
            }
            let right = tag.byte_add(size);
            if Self::state(right) != FREE || size + (*right).size < need {
                return false;
            }
            self.remove(right);
            let joined = size + (*right).size;
            (*tag).size = joined;
            (*tag.byte_add(joined)).prev = (joined / GRAIN) as u32;
            self.split(tag, need);
        }
        true
    }

    /// Gives a block back without its layout, as C's `free` does: the header knows its
    /// size.
    ///
    /// # Safety
    ///
    /// Callers must ensure that `ptr` was returned by `get` on this same layer, that they
    /// are its [owner](crate::layer#owner), and that it is
    /// [currently allocated](crate::layer#currently-allocated). Afterwards the block is no
    /// longer theirs: it must not be read, written or put again. (A second put of the same
    /// block, or a pointer whose header is not one of this layer's, aborts when the header
    /// still shows it: not once its arena or piece went back to `L`, whose memory may be
    /// unmapped then, or reused.)
    pub unsafe fn put_unsized(&mut self, ptr: NonNull<u8>) {
        paranoid(self);
        // SAFETY: the caller's duties.
        unsafe { self.put_checked(ptr) }
    }

    /// [`put_unsized`](Self::put_unsized) past the `paranoid` walk (which `put` makes
    /// before its own checks).
    ///
    /// # Safety
    ///
    /// As for `put_unsized`.
    unsafe fn put_checked(&mut self, ptr: NonNull<u8>) {
        let tag = Self::tag_of(ptr);
        // SAFETY: the caller's duty: a live block of ours, its tag right before it.
        match unsafe { Self::state(tag) } {
            // SAFETY: a live arena block.
            USED => unsafe { self.free_in_arena(tag) },
            // SAFETY: a live large block.
            LARGE => unsafe { self.put_large(tag) },
            state => Self::misuse("put", ptr, state),
        }
    }

    // ---- tags ----------------------------------------------------------------------------

    /// The tag of the block at `ptr`, computed without asserting that it is ours.
    #[inline(always)]
    fn tag_of(ptr: NonNull<u8>) -> *mut Tag {
        ptr.as_ptr().wrapping_sub(TAG).cast()
    }

    /// The payload after `tag`.
    #[inline(always)]
    fn payload(tag: *mut Tag) -> NonNull<u8> {
        // SAFETY: a tag lies inside an arena or a piece, never at the top of the address
        // space, so the byte 16 past it is not null.
        unsafe { NonNull::new_unchecked(tag.cast::<u8>().wrapping_add(TAG)) }
    }

    /// The state in `tag`'s seal, or `u32::MAX` when the seal is not ours.
    ///
    /// # Safety
    ///
    /// `tag` is readable for 16 bytes and aligned to 16 (or misaligned: then nothing is
    /// read and the answer is `u32::MAX`).
    #[inline(always)]
    unsafe fn state(tag: *const Tag) -> u32 {
        if !tag.addr().is_multiple_of(GRAIN) {
            return u32::MAX;
        }
        // SAFETY: the caller's duty.
        let sealed = unsafe { (*tag).seal };
        let state = sealed & 3;
        if sealed == seal(tag, state) {
            state
        } else {
            u32::MAX
        }
    }

    /// Aborts on a block that `what` found in the wrong state.
    #[cold]
    #[inline(never)]
    fn misuse(what: &str, ptr: NonNull<u8>, state: u32) -> ! {
        match state {
            FREE => abort_with(format_args!(
                "Coalesce: {what} of {ptr:p}, which is already free (a double put?)"
            )),
            _ => abort_with(format_args!(
                "Coalesce: {what} of {ptr:p}, whose header is not one of this layer's"
            )),
        }
    }

    /// Aborts on a neighbour whose header is broken.
    #[cold]
    #[inline(never)]
    fn corrupted(tag: *const Tag) -> ! {
        abort_with(format_args!(
            "Coalesce: heap corrupted: a broken header next to the block at {:p} (or that \
             block was put already)",
            tag.wrapping_add(1)
        ))
    }

    /// Whether the arena block at `tag` is one of the arena's tiling, and if so, whether
    /// its left and right neighbours are free: its left neighbour (if any) reads `FREE` or
    /// `USED` and ends where it starts, and its right neighbour reads `FREE`, `USED` or
    /// `EDGE` and its `prev` names the block's size. `None` when they do not tile: a put
    /// of an address that starts no block, or of a block that was put and merged into its
    /// free left neighbour (its `USED` tag stays inside the merged free block).
    ///
    /// # Safety
    ///
    /// `tag` is sealed `USED` and lies in an arena of ours.
    #[inline(always)]
    unsafe fn free_neighbours(tag: *mut Tag) -> Option<(bool, bool)> {
        // SAFETY: the caller's duty; the neighbours' tags are where the sealed sizes say,
        // inside the same arena (each checked before the next is trusted).
        unsafe {
            let prev = (*tag).prev as usize * GRAIN;
            let mut left_free = false;
            if prev != 0 {
                let left = tag.byte_sub(prev);
                match Self::state(left) {
                    FREE if (*left).size == prev => left_free = true,
                    USED if (*left).size == prev => {}
                    _ => return None,
                }
            }
            let right = tag.byte_add((*tag).size);
            if (*right).prev as usize * GRAIN != (*tag).size {
                return None;
            }
            match Self::state(right) {
                FREE => Some((left_free, true)),
                USED | EDGE => Some((left_free, false)),
                _ => None,
            }
        }
    }

    /// Aborts unless the arena block whose tag reads `USED` is one of the arena's tiling
    /// ([`free_neighbours`](Self::free_neighbours)), as a put does before it merges: keeps
    /// `usable_size`, `grow` and `shrink` (C's `realloc` and `malloc_usable_size`) from
    /// taking a block that was put for a live one.
    ///
    /// # Safety
    ///
    /// As for `free_neighbours`.
    #[inline(always)]
    unsafe fn check_tiling(tag: *mut Tag) {
        // SAFETY: the caller's duty.
        if unsafe { Self::free_neighbours(tag) }.is_none() {
            Self::corrupted(tag);
        }
    }

    /// Writes a tag.
    ///
    /// # Safety
    ///
    /// `tag` is inside an arena or piece of ours, aligned to 16, with 16 bytes of room.
    #[inline(always)]
    unsafe fn write_tag(tag: *mut Tag, size: usize, prev: u32, state: u32) {
        // SAFETY: the caller's duty.
        unsafe {
            tag.write(Tag {
                size,
                prev,
                seal: seal(tag, state),
            })
        };
    }

    /// Sets a tag's state, keeping its sizes.
    ///
    /// # Safety
    ///
    /// As for `write_tag`, on a tag already written.
    #[inline(always)]
    unsafe fn set_state(tag: *mut Tag, state: u32) {
        // SAFETY: the caller's duty.
        unsafe { (*tag).seal = seal(tag, state) };
    }

    /// Marks an arena block, taken off the bins and split to size, as in use and returns its
    /// payload, filled with [`FRESH`] in debug builds.
    ///
    /// # Safety
    ///
    /// `tag` is an arena block of ours, on no bin, its size written, that no caller holds.
    #[inline(always)]
    unsafe fn hand_out(tag: *mut Tag) -> NonNull<u8> {
        let payload = Self::payload(tag);
        // SAFETY: the caller's duty; the payload is the block's `size - TAG` bytes after its
        // tag, which become the caller's.
        unsafe {
            Self::set_state(tag, USED);
            fill::<Self>(payload.as_ptr(), 0, (*tag).size - TAG, FRESH);
        }
        payload
    }

    // ---- bins ----------------------------------------------------------------------------

    /// Puts a free block on its bin.
    ///
    /// # Safety
    ///
    /// `tag` is a free arena block of ours, on no bin, its size written.
    #[inline(always)]
    unsafe fn insert(&mut self, tag: *mut Tag) {
        // SAFETY: the caller's duty; the block has at least 32 bytes, room for its links.
        unsafe {
            let bin = bin_of((*tag).size);
            push_front(&mut self.bins[bin], tag);
            self.subs[bin / SUBS] |= 1 << (bin % SUBS);
            self.levels |= 1 << (bin / SUBS);
        }
    }

    /// Takes a free block off its bin.
    ///
    /// # Safety
    ///
    /// `tag` is a free arena block on the bin of its current size.
    #[inline(always)]
    unsafe fn remove(&mut self, tag: *mut Tag) {
        // SAFETY: the caller's duty; the neighbours on the bin are free blocks too.
        unsafe {
            let bin = bin_of((*tag).size);
            unlink(&mut self.bins[bin], tag);
            if self.bins[bin].is_null() {
                self.subs[bin / SUBS] &= !(1 << (bin % SUBS));
                if self.subs[bin / SUBS] == 0 {
                    self.levels &= !(1 << (bin / SUBS));
                }
            }
        }
    }

    /// A free block of at least `need` bytes, in O(1): the head of `need`'s own bin when it
    /// is big enough, else the head of the first non-empty bin whose every block is.
    #[inline]
    fn find(&self, need: usize) -> Option<*mut Tag> {
        let bin = bin_of(need);
        let head = self.bins[bin];
        // SAFETY: a bin's head is a live free block.
        if !head.is_null() && unsafe { (*head).size } >= need {
            return Some(head);
        }
        // The next bin up holds only blocks of `need` bytes or more.
        let first = bin + 1;
        let level = first / SUBS;
        if level >= LEVELS {
            return None;
        }
        let subs = self.subs[level] as usize & (usize::MAX << (first % SUBS));
        let bin = if subs != 0 {
            level * SUBS + subs.trailing_zeros() as usize
        } else {
            let levels = self.levels & (u32::MAX << level << 1);
            if levels == 0 {
                return None;
            }
            let level = levels.trailing_zeros() as usize;
            level * SUBS + self.subs[level].trailing_zeros() as usize
        };
        Some(self.bins[bin])
    }

    // ---- arenas --------------------------------------------------------------------------

    fn arena_layout() -> Layout {
        // SAFETY: a power of two up to 2 GiB (checked in `new`), aligned to 16.
        unsafe { Layout::from_size_align_unchecked(ARENA, GRAIN) }
    }

    /// A free block of at least `need` bytes taken off its bin, from a new arena if none.
    #[inline]
    fn take(&mut self, need: usize) -> Option<*mut Tag> {
        if let Some(tag) = self.find(need) {
            // SAFETY: `find` returns a free block on its bin.
            unsafe {
                self.remove(tag);
                if (*tag).prev == 0 && (*tag).size == Self::FULL {
                    // A wholly free arena is in use again.
                    self.empty -= 1;
                }
            }
            return Some(tag);
        }
        self.new_arena()
    }

    /// Gets an arena from `L` and returns its one block, free and on no bin.
    #[cold]
    #[inline(never)]
    fn new_arena(&mut self) -> Option<*mut Tag> {
        let arena = self.inner.get(Self::arena_layout())?.as_ptr();
        let head = arena.cast::<ArenaHead>();
        // SAFETY: a fresh block of `ARENA` bytes aligned to 16: room for the head, one
        // block of `FULL` bytes, and the edge tag.
        unsafe {
            head.write(ArenaHead {
                prev: ptr::null_mut(),
                next: ptr::null_mut(),
            });
            push_front(&mut self.arenas, head);
            let first = arena.add(size_of::<ArenaHead>()).cast::<Tag>();
            Self::write_tag(first, Self::FULL, 0, FREE);
            let edge = arena.add(ARENA - TAG).cast::<Tag>();
            Self::write_tag(edge, TAG, (Self::FULL / GRAIN) as u32, EDGE);
            self.arena_count += 1;
            Some(first)
        }
    }

    /// Takes an arena off the list and gives it back to `L`.
    ///
    /// # Safety
    ///
    /// `head` is an arena of ours none of whose blocks is live or on a bin.
    unsafe fn put_arena(&mut self, head: *mut ArenaHead) {
        // SAFETY: the caller's duty; the arena came from `L` with `arena_layout()`.
        unsafe {
            unlink(&mut self.arenas, head);
            self.arena_count -= 1;
            self.inner
                .put(NonNull::new_unchecked(head.cast()), Self::arena_layout());
        }
    }

    /// Splits the tail off a block taken off its bin, when at least 32 bytes are left.
    ///
    /// # Safety
    ///
    /// `tag` is an arena block of ours of at least `need` bytes (a multiple of 16), on no
    /// bin, whose right neighbour is not free.
    #[inline(always)]
    unsafe fn split(&mut self, tag: *mut Tag, need: usize) {
        // SAFETY: the caller's duty; the rest lies inside the block, and the block after
        // it is the old right neighbour.
        unsafe {
            let size = (*tag).size;
            let rest = size - need;
            if rest < MIN_BLOCK {
                return;
            }
            (*tag).size = need;
            let tail = tag.byte_add(need);
            Self::write_tag(tail, rest, (need / GRAIN) as u32, FREE);
            (*tail.byte_add(rest)).prev = (rest / GRAIN) as u32;
            self.insert(tail);
        }
    }

    /// Puts a live arena block back, merging it with its free neighbours.
    ///
    /// # Safety
    ///
    /// `tag` is the tag of a live arena block of ours.
    unsafe fn free_in_arena(&mut self, tag: *mut Tag) {
        // SAFETY: the caller's duty; the neighbours are found through the tags, which tile
        // the arena (each checked before it is trusted). The payload, which the caller gave
        // up, is filled before any link goes in.
        unsafe {
            let payload = Self::payload(tag).as_ptr();
            fill::<Self>(payload, size_of::<Links>(), (*tag).size - TAG, FREED);
            let Some((left_free, right_free)) = Self::free_neighbours(tag) else {
                Self::corrupted(tag)
            };
            let mut start = tag;
            let mut size = (*tag).size;
            if left_free {
                let left = tag.byte_sub((*tag).prev as usize * GRAIN);
                self.remove(left);
                start = left;
                size += (*left).size;
            }
            if right_free {
                let right = tag.byte_add((*tag).size);
                self.remove(right);
                size += (*right).size;
            }
            (*start).size = size;
            Self::set_state(start, FREE);
            (*start.byte_add(size)).prev = (size / GRAIN) as u32;
            if (*start).prev == 0 && size == Self::FULL {
                if self.empty < KEEP {
                    self.empty += 1;
                } else {
                    self.put_arena(start.byte_sub(size_of::<ArenaHead>()).cast());
                    return;
                }
            }
            self.insert(start);
        }
    }

    // ---- large blocks --------------------------------------------------------------------

    /// A block straight from `L`, in a piece of its own with the header before it.
    #[cold]
    #[inline(never)]
    fn get_large(&mut self, size: usize, align: usize) -> Option<NonNull<u8>> {
        let offset = align.max(LARGE_OFFSET);
        let len = offset.checked_add(size)?;
        let piece = Layout::from_size_align(len, offset).ok()?;
        let prev = u32::try_from(offset / GRAIN).ok()?;
        let base = self.inner.get(piece)?.as_ptr();
        // SAFETY: the piece holds `offset >= LARGE_OFFSET` bytes before the payload: room
        // for the head at its start and the tag right before the payload, both aligned
        // (the piece is aligned to `offset`, a power of two of at least 64).
        unsafe {
            let head = base.cast::<LargeHead>();
            head.write(LargeHead {
                prev: ptr::null_mut(),
                next: ptr::null_mut(),
                len,
                offset,
            });
            push_front(&mut self.large, head);
            self.large_count += 1;
            let tag = base.add(offset - TAG).cast::<Tag>();
            Self::write_tag(tag, len, prev, LARGE);
            Some(Self::payload(tag))
        }
    }

    /// Gives a large block's piece back to `L`.
    ///
    /// # Safety
    ///
    /// `tag` is the tag of a live large block of ours.
    unsafe fn put_large(&mut self, tag: *mut Tag) {
        // SAFETY: the caller's duty: the piece starts `offset` bytes before the payload,
        // with its head, and was got from `L` with `(len, offset)`.
        unsafe {
            let offset = (*tag).prev as usize * GRAIN;
            if !offset.is_power_of_two() || offset < LARGE_OFFSET {
                Self::corrupted(tag);
            }
            let base = tag.byte_add(TAG).cast::<u8>().sub(offset);
            let head = base.cast::<LargeHead>();
            let LargeHead {
                len,
                offset: recorded,
                ..
            } = head.read();
            if len != (*tag).size || recorded != offset {
                Self::corrupted(tag);
            }
            unlink(&mut self.large, head);
            self.large_count -= 1;
            // A second put of the block, while the memory is still readable, sees this.
            Self::set_state(tag, FREE);
            self.inner.put(
                NonNull::new_unchecked(base),
                Layout::from_size_align_unchecked(len, offset),
            );
        }
    }

    /// The block bytes (header included) an arena block for `size` payload bytes needs.
    #[inline(always)]
    fn block_size(size: usize) -> Option<usize> {
        round_up(size.max(GRAIN))?.checked_add(TAG)
    }

    /// Gives every arena and large piece back to `L`, leaving this layer empty.
    fn release(&mut self) {
        while !self.large.is_null() {
            // SAFETY: every piece on the large list is live; its tag is `offset - 16` bytes
            // in, and `put_large` takes the piece off the list.
            unsafe {
                let offset = (*self.large).offset;
                self.put_large(self.large.cast::<u8>().add(offset - TAG).cast());
            }
        }
        while !self.arenas.is_null() {
            // SAFETY: at release every block ends: none is live any more.
            unsafe { self.put_arena(self.arenas) };
        }
        self.bins = [ptr::null_mut(); BINS];
        self.subs = [0; LEVELS];
        self.levels = 0;
        self.empty = 0;
    }
}

// ---- the Layer, Attributed and Measured impls --------------------------------------------

// SAFETY: an arena block is handed out only after it was taken off its bin (or from a fresh
// arena), and its put puts it back (merged); splits and merges keep the blocks of an arena
// tiling it, so no two live blocks overlap. A block holds `size` bytes or more after its
// 16-byte tag: `block_size` rounds up, and the front split for alignment leaves at least
// `need` bytes (the search asked for `need + align + 32`). Every payload is 16 bytes past a
// 16-aligned tag, and an aligned one starts at an address rounded up to its alignment.
// Large blocks lie in pieces of their own from `L`, returned once with the layout they were
// got with (recorded in the piece). Arenas go back to `L` only when wholly free, or at
// deinit. `owns` is exact: it answers from the arena list and the large list.
unsafe impl<L: Layer, const ARENA: usize, const KEEP: usize> Layer for Coalesce<L, ARENA, KEEP> {
    const MIN_ALIGN: usize = GRAIN;
    const OWNS_EXACT: bool = true;
    const OWNS_INTERIOR: bool = true;

    fn get(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        paranoid(self);
        let size = served_size(layout);
        let need = Self::block_size(size)?;
        let align = layout.align();
        if align <= GRAIN {
            if need > Self::FULL {
                return self.get_large(size, align);
            }
            let tag = self.take(need)?;
            // SAFETY: a free block of at least `need` bytes taken off its bin; its right
            // neighbour is not free (no two free blocks are neighbours).
            unsafe {
                self.split(tag, need);
                return Some(Self::hand_out(tag));
            }
        }
        let search = need.checked_add(align)?.checked_add(MIN_BLOCK)?;
        if search > Self::FULL {
            return self.get_large(size, align);
        }
        let mut tag = self.take(search)?;
        let payload = Self::payload(tag).as_ptr();
        let mut gap = payload.addr().wrapping_neg() & (align - 1);
        if gap != 0 && gap < MIN_BLOCK {
            gap += align;
        }
        // SAFETY: `gap < align + 32`, so the block from `gap` on still holds `need` bytes;
        // the front piece (at least 32 bytes) becomes a free block whose left neighbour is
        // not free (the taken block's was not), and the rest is split as above.
        unsafe {
            if gap != 0 {
                let size = (*tag).size;
                let front = tag;
                tag = tag.byte_add(gap);
                Self::write_tag(tag, size - gap, (gap / GRAIN) as u32, FREE);
                (*tag.byte_add(size - gap)).prev = ((size - gap) / GRAIN) as u32;
                (*front).size = gap;
                self.insert(front);
            }
            self.split(tag, need);
            Some(Self::hand_out(tag))
        }
    }

    #[inline]
    unsafe fn put(&mut self, ptr: NonNull<u8>, layout: Layout) {
        paranoid(self);
        require_put::<Self>(ptr, layout);
        if cfg!(debug_assertions) {
            let tag = Self::tag_of(ptr);
            // SAFETY: the caller's duty: a live block of ours, its tag right before it.
            if matches!(unsafe { Self::state(tag) }, USED | LARGE) {
                // SAFETY: as above, in a state `usable_size` accepts.
                let held = unsafe { self.usable_size(ptr) };
                debug_require!(
                    held >= layout.size(),
                    "Coalesce: put of {ptr:p} with a layout of {} bytes, more than its {held}",
                    layout.size()
                );
            }
        }
        // SAFETY: the caller's duties, which are `put_unsized`'s and more.
        unsafe { self.put_checked(ptr) }
    }

    fn init() -> Self {
        Self::new(L::init())
    }

    fn deinit(&mut self) {
        self.release();
        self.inner.deinit();
    }

    unsafe fn grow(&mut self, ptr: NonNull<u8>, old: Layout, new: Layout) -> bool {
        paranoid(self);
        require_grow::<Self>(ptr, old, new);
        // SAFETY: the caller's duties; the block's header, not `old`, says its size.
        unsafe { self.grow_to(ptr, new.size()) }
    }

    unsafe fn shrink(&mut self, ptr: NonNull<u8>, old: Layout, new: Layout) -> bool {
        paranoid(self);
        require_shrink::<Self>(ptr, old, new);
        let tag = Self::tag_of(ptr);
        let Some(need) = Self::block_size(new.size()) else {
            return false;
        };
        // SAFETY: the caller's duty: a live block of ours. The tail split off becomes a
        // free block merged with a free right neighbour, so no two free blocks touch.
        unsafe {
            match Self::state(tag) {
                USED => Self::check_tiling(tag),
                LARGE => return true,
                state => Self::misuse("shrink", ptr, state),
            }
            let size = (*tag).size;
            if size.saturating_sub(need) < MIN_BLOCK {
                return true;
            }
            let right = tag.byte_add(size);
            let mut rest = size - need;
            if Self::state(right) == FREE {
                self.remove(right);
                rest += (*right).size;
            }
            (*tag).size = need;
            let tail = tag.byte_add(need);
            Self::write_tag(tail, rest, (need / GRAIN) as u32, FREE);
            (*tail.byte_add(rest)).prev = (rest / GRAIN) as u32;
            self.insert(tail);
        }
        true
    }

    fn owns(&self, ptr: NonNull<u8>) -> bool {
        let addr = ptr.as_ptr().addr();
        let mut arena = self.arenas;
        while !arena.is_null() {
            if addr.wrapping_sub(arena.addr()) < ARENA {
                return true;
            }
            // SAFETY: every arena on the list is live and starts with its head.
            arena = unsafe { (*arena).next };
        }
        let mut large = self.large;
        while !large.is_null() {
            // SAFETY: every piece on the large list is live and starts with its head.
            let LargeHead { next, len, .. } = unsafe { large.read() };
            if addr.wrapping_sub(large.addr()) < len {
                return true;
            }
            large = next;
        }
        false
    }

    fn check_invariants(&self) {
        let fail =
            |what: &str| -> ! { abort_with(format_args!("Coalesce invariant broken: {what}")) };
        let mut free_blocks = 0usize;
        let mut arenas = 0usize;
        let mut wholly_free = 0usize;
        let mut arena = self.arenas;
        while !arena.is_null() {
            arenas += 1;
            if arenas > self.arena_count {
                fail("arena list longer than its count");
            }
            // SAFETY: every arena on the list is live; its tags tile it (checked as we go,
            // each before the next is trusted).
            unsafe {
                if !(*arena).next.is_null() && (*(*arena).next).prev != arena {
                    fail("arena list back link");
                }
                let end = arena.cast::<u8>().add(ARENA - TAG).cast::<Tag>();
                let mut tag = arena.cast::<u8>().add(size_of::<ArenaHead>()).cast::<Tag>();
                let mut prev_size = 0usize;
                let mut prev_free = false;
                while tag != end {
                    if tag > end {
                        fail("blocks run past the arena's end");
                    }
                    let size = (*tag).size;
                    if (*tag).prev as usize * GRAIN != prev_size {
                        fail("a tag's prev differs from its left neighbour's size");
                    }
                    if size < MIN_BLOCK || !size.is_multiple_of(GRAIN) {
                        fail("a block size below 32 or not a multiple of 16");
                    }
                    match Self::state(tag) {
                        FREE => {
                            if prev_free {
                                fail("two free neighbours");
                            }
                            prev_free = true;
                            free_blocks += 1;
                            if prev_size == 0 && size == Self::FULL {
                                wholly_free += 1;
                            }
                        }
                        USED => prev_free = false,
                        _ => fail("an arena block with a broken seal"),
                    }
                    prev_size = size;
                    tag = tag.byte_add(size);
                }
                if Self::state(end) != EDGE || (*end).prev as usize * GRAIN != prev_size {
                    fail("an arena's edge tag is broken");
                }
                arena = (*arena).next;
            }
        }
        if arenas != self.arena_count {
            fail("arena count differs from the list");
        }
        if wholly_free != self.empty || wholly_free > KEEP {
            fail("the count of kept empty arenas is wrong, or above KEEP");
        }
        let mut on_bins = 0usize;
        for (bin, &head) in self.bins.iter().enumerate() {
            let bit = self.subs[bin / SUBS] & (1 << (bin % SUBS)) != 0;
            if bit == head.is_null() {
                fail("a bin's bit differs from whether it is empty");
            }
            let mut node = head;
            let mut prev = ptr::null_mut();
            while !node.is_null() {
                on_bins += 1;
                if on_bins > free_blocks {
                    fail("more blocks on the bins than free blocks in the arenas");
                }
                // SAFETY: every node on a bin is a free block, counted above.
                unsafe {
                    if Self::state(node) != FREE || bin_of((*node).size) != bin {
                        fail("a block on the wrong bin, or not free");
                    }
                    let Links { next, prev: back } = links(node).read();
                    if back != prev {
                        fail("a bin's back link");
                    }
                    prev = node;
                    node = next;
                }
            }
        }
        for level in 0..LEVELS {
            if (self.levels & (1 << level) != 0) != (self.subs[level] != 0) {
                fail("the level bitmap differs from its bins");
            }
        }
        if on_bins != free_blocks {
            fail("a free block is on no bin");
        }
        let mut count = 0usize;
        let mut large = self.large;
        while !large.is_null() {
            count += 1;
            if count > self.large_count {
                fail("large list longer than its count");
            }
            // SAFETY: every piece on the large list is live.
            large = unsafe { (*large).next };
        }
        if count != self.large_count {
            fail("large block count differs from the list");
        }
        self.inner.check_invariants();
    }
}

impl<L: Layer, const ARENA: usize, const KEEP: usize> Drop for Coalesce<L, ARENA, KEEP> {
    fn drop(&mut self) {
        self.deinit();
    }
}

impl<L: Layer + fmt::Debug, const ARENA: usize, const KEEP: usize> fmt::Debug
    for Coalesce<L, ARENA, KEEP>
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Coalesce")
            .field("arena", &ARENA)
            .field("arenas", &self.arena_count)
            .field("empty_arenas", &self.empty)
            .field("large_blocks", &self.large_count)
            .field("inner", &self.inner)
            .finish()
    }
}

// SAFETY: every block lies in an arena or a piece got from `L`, attributed to the same
// region; arenas go back to `L` only when none of their blocks is live.
#[cfg(feature = "std")]
unsafe impl<L: crate::region::Attributed, const ARENA: usize, const KEEP: usize>
    crate::region::Attributed for Coalesce<L, ARENA, KEEP>
{
    fn attribute(&mut self, owner: crate::region::Attribution) {
        self.inner.attribute(owner);
    }
}

// SAFETY: the header before every block records its size (`usable_size` reads it, and it
// is never below the size the block was got, grown or shrunk with), and `put_unsized` and
// `grow_unsized` do what `put` and `grow` do: those ignore the layout and read the header.
unsafe impl<L: Layer, const ARENA: usize, const KEEP: usize> crate::layer::Measured
    for Coalesce<L, ARENA, KEEP>
{
    unsafe fn usable_size(&self, ptr: NonNull<u8>) -> usize {
        // SAFETY: the caller's duty, passed on (the inherent function of the same name).
        unsafe { Coalesce::usable_size(self, ptr) }
    }

    unsafe fn put_unsized(&mut self, ptr: NonNull<u8>) {
        // SAFETY: as above.
        unsafe { Coalesce::put_unsized(self, ptr) }
    }

    unsafe fn grow_unsized(&mut self, ptr: NonNull<u8>, new_size: usize) -> bool {
        paranoid(self);
        // SAFETY: as above; `grow` does the same, its old layout unread.
        unsafe { self.grow_to(ptr, new_size) }
    }

    fn get_zeroed(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        let block = self.get(layout)?;
        // A block with a piece of its own, fresh from a `ZEROED` layer below, is zero past
        // its tag (nothing writes a large block's payload: no fill, no link); an arena
        // block may hold an earlier block's bytes.
        // SAFETY: a live block of ours, its tag right before it.
        let fresh = L::ZEROED && unsafe { Self::state(Self::tag_of(block)) } == LARGE;
        if !fresh {
            // SAFETY: a fresh block of ours holding `layout.size()` bytes.
            unsafe { block.as_ptr().write_bytes(0, layout.size()) };
        }
        Some(block)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Gauge;
    use crate::layers::{Buffer, Stats};
    use core::mem::MaybeUninit;

    const ARENA: usize = 1 << 16;
    type Heap<'a> = Coalesce<Stats<Buffer<'a>>, ARENA>;

    fn at(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).unwrap()
    }

    /// Uninitialised memory for a `Buffer`, made without a loop over its bytes (which
    /// Miri would run byte by byte).
    fn memory_of(bytes: usize) -> alloc::boxed::Box<[MaybeUninit<u8>]> {
        alloc::boxed::Box::new_uninit_slice(bytes)
    }

    fn memory() -> alloc::boxed::Box<[MaybeUninit<u8>]> {
        memory_of(6 * ARENA)
    }

    #[test]
    fn puts_merge_both_neighbours_and_the_arena_comes_back_whole() {
        let mut memory = memory();
        let mut heap: Heap<'_> = Coalesce::new(Stats::new(Buffer::new(&mut memory)));
        let [a, b, c, d] = [0; 4].map(|_| heap.get(at(1000, 8)).unwrap());
        // Blocks are carved side by side: 1008 bytes of payload plus a 16-byte header.
        assert_eq!(b.as_ptr().addr() - a.as_ptr().addr(), 1024);
        // SAFETY: each block is live and put once.
        unsafe {
            heap.put_unsized(a);
            heap.put_unsized(c);
            heap.check_invariants();
            // `b` merges with `a` on its left and `c` on its right.
            heap.put_unsized(b);
        }
        heap.check_invariants();
        assert_eq!(
            heap.get(at(3 * 1024 - 16, 8)),
            Some(a),
            "a, b and c are one block"
        );
        // SAFETY: as above.
        unsafe {
            heap.put_unsized(a);
            heap.put_unsized(d);
        }
        heap.check_invariants();
        assert_eq!(heap.empty_arenas(), 1);
        // One free block spans the arena: the largest arena request takes it, no new arena.
        let gets = heap.inner().gauge().gets;
        let whole = heap.get(at(Heap::ARENA_LIMIT, 16)).unwrap();
        assert_eq!(whole, a);
        assert_eq!(heap.inner().gauge().gets, gets);
        assert_eq!(heap.empty_arenas(), 0);
        // A second arena, then both wholly free: one is kept, the other goes back to `L`.
        let other = heap.get(at(Heap::ARENA_LIMIT, 16)).unwrap();
        assert_eq!(heap.arenas(), 2);
        // SAFETY: as above.
        unsafe {
            heap.put_unsized(whole);
            heap.put_unsized(other);
        }
        assert_eq!(heap.arenas(), 1);
        assert_eq!(heap.inner().gauge().live, 1, "the second arena went back");
        heap.check_invariants();
        heap.deinit();
        assert_eq!(heap.inner().gauge().live, 0);
    }

    #[test]
    fn keep_bounds_the_empty_arenas() {
        let mut memory = memory();
        let mut heap: Coalesce<_, ARENA, 2> = Coalesce::new(Stats::new(Buffer::new(&mut memory)));
        let whole = at(Coalesce::<Stats<Buffer<'_>>, ARENA, 2>::ARENA_LIMIT, 16);
        let blocks = [0; 3].map(|_| heap.get(whole).unwrap());
        assert_eq!(heap.arenas(), 3);
        for block in blocks {
            // SAFETY: live, put once.
            unsafe { heap.put_unsized(block) };
            heap.check_invariants();
        }
        assert_eq!((heap.arenas(), heap.empty_arenas()), (2, 2));
        assert_eq!(heap.inner().gauge().live, 2, "the third went back to L");
    }

    #[test]
    fn one_block_in_a_loop_keeps_one_arena() {
        let mut memory = memory();
        let mut heap: Heap<'_> = Coalesce::new(Stats::new(Buffer::new(&mut memory)));
        for size in [40_000, 100, 40_000, 7] {
            let block = heap.get(at(size, 8)).unwrap();
            // SAFETY: live, put once.
            unsafe { heap.put(block, at(size, 8)) };
        }
        assert_eq!(heap.inner().gauge().gets, 1, "the empty arena was reused");
        assert_eq!(heap.empty_arenas(), 1);
        heap.check_invariants();
    }

    #[test]
    fn usable_size_reads_the_header() {
        let mut memory = memory();
        let mut heap: Heap<'_> = Coalesce::new(Stats::new(Buffer::new(&mut memory)));
        for (size, usable) in [(0, 16), (1, 16), (17, 32), (1000, 1008), (4096, 4096)] {
            let block = heap.get(at(size, 8)).unwrap();
            // SAFETY: live until the put just after.
            unsafe {
                assert_eq!(heap.usable_size(block), usable, "size {size}");
                heap.put_unsized(block);
            }
        }
        heap.check_invariants();
    }

    #[test]
    fn aligned_requests_split_off_the_front() {
        let mut memory = memory();
        let mut heap: Heap<'_> = Coalesce::new(Stats::new(Buffer::new(&mut memory)));
        let first = heap.get(at(16, 8)).unwrap();
        let mut blocks = alloc::vec::Vec::new();
        for align_log2 in 5..=13 {
            let layout = at(100, 1 << align_log2);
            let block = heap.get(layout).unwrap();
            assert!(block.as_ptr().addr().is_multiple_of(layout.align()));
            heap.check_invariants();
            blocks.push((block, layout));
        }
        assert_eq!(heap.arenas(), 1, "all of them fit the first arena");
        for (block, layout) in blocks {
            // SAFETY: live, put once with its layout.
            unsafe { heap.put(block, layout) };
            heap.check_invariants();
        }
        // SAFETY: as above.
        unsafe { heap.put_unsized(first) };
        assert_eq!(heap.empty_arenas(), 1, "everything merged back");
    }

    #[test]
    fn large_blocks_bypass_the_arenas_with_a_header() {
        let mut memory = memory_of(8 * ARENA);
        let mut heap: Heap<'_> = Coalesce::new(Stats::new(Buffer::new(&mut memory)));
        let big = heap.get(at(ARENA, 8)).unwrap();
        let aligned = heap.get(at(100, 2 * ARENA)).unwrap();
        assert!(aligned.as_ptr().addr().is_multiple_of(2 * ARENA));
        assert_eq!((heap.large_blocks(), heap.arenas()), (2, 0));
        assert!(heap.owns(big) && heap.owns(aligned));
        // SAFETY: live blocks; each put once.
        unsafe {
            assert_eq!(heap.usable_size(big), ARENA);
            assert!(heap.usable_size(aligned) >= 100);
            heap.put_unsized(big);
        }
        assert!(!heap.owns(big));
        assert_eq!(heap.inner().gauge().live, 1);
        heap.check_invariants();
        heap.deinit();
        assert_eq!(
            heap.inner().gauge().live,
            0,
            "deinit returned the live large block"
        );
        assert_eq!(heap.large_blocks(), 0);
    }

    #[test]
    fn grows_into_a_free_neighbour_and_shrinks_in_place() {
        let mut memory = memory();
        let mut heap: Heap<'_> = Coalesce::new(Stats::new(Buffer::new(&mut memory)));
        let a = heap.get(at(1000, 8)).unwrap();
        let b = heap.get(at(1000, 8)).unwrap();
        // SAFETY: live blocks with the layouts given.
        unsafe {
            assert!(!heap.grow(a, at(1000, 8), at(2000, 8)), "b is in the way");
            heap.put_unsized(b);
            assert!(heap.grow(a, at(1000, 8), at(2000, 8)), "into b's space");
            heap.check_invariants();
            assert_eq!(heap.usable_size(a), 2000_usize.next_multiple_of(16));
            assert!(heap.shrink(a, at(2000, 8), at(100, 8)));
            heap.check_invariants();
            assert_eq!(heap.usable_size(a), 112);
            // The freed tail merged with the rest of the arena: the next block follows `a`.
            let c = heap.get(at(10, 8)).unwrap();
            assert_eq!(c.as_ptr().addr() - a.as_ptr().addr(), 128);
            heap.put_unsized(c);
            heap.put(a, at(100, 8));
        }
        heap.check_invariants();
        assert_eq!(heap.empty_arenas(), 1);
    }

    /// Probe: after random gets, puts, grows and shrinks, would a second put of a block
    /// already put (or a put of an address inside a live block) pass every check that
    /// `put_unsized` makes before it changes anything? Such a put corrupts the heap silently.
    #[test]
    fn probe_stale_headers_that_pass_the_checks() {
        // The checks a put makes before it changes anything.
        fn would_accept(ptr: NonNull<u8>) -> Option<&'static str> {
            let tag = Heap::tag_of(ptr);
            // SAFETY: the probed addresses lie in the heap's arenas (`owns`), whose bytes
            // are all initialised (see the writes below); only tags are read.
            unsafe {
                match Heap::state(tag) {
                    LARGE => Some("large"),
                    USED => Heap::free_neighbours(tag).map(|_| "arena"),
                    _ => None,
                }
            }
        }
        let mut memory = memory_of(8 * ARENA);
        let mut heap: Heap<'_> = Coalesce::new(Stats::new(Buffer::new(&mut memory)));
        let mut seed = 0x1234_5678_9abc_def1u64;
        let mut rand = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let mut live: alloc::vec::Vec<(NonNull<u8>, Layout)> = alloc::vec::Vec::new();
        let mut dead: alloc::vec::Vec<NonNull<u8>> = alloc::vec::Vec::new();
        let steps = if cfg!(miri) { 30 } else { 5_000 };
        for step in 0..steps {
            match rand(10) {
                0..=3 => {
                    let size = [16, 32, 48, 100, 500, 1000, 3000][rand(7)];
                    let align = [8, 16, 32, 64][rand(4)];
                    let layout = at(size, align);
                    if let Some(block) = heap.get(layout) {
                        // Owners need not write their blocks, so stale headers may survive
                        // in them; under Miri, which forbids the probe's reads of bytes
                        // never written, the blocks are written (debug builds fill them
                        // anyway).
                        if cfg!(miri) {
                            // SAFETY: a fresh block of `layout.size()` bytes.
                            unsafe { block.as_ptr().write_bytes(0x5A, layout.size()) };
                        }
                        live.push((block, layout));
                    }
                }
                4..=6 if !live.is_empty() => {
                    let (block, layout) = live.swap_remove(rand(live.len()));
                    // SAFETY: a live block with its layout, off the list, put once.
                    unsafe { heap.put(block, layout) };
                    dead.push(block);
                }
                7 if !live.is_empty() => {
                    let i = rand(live.len());
                    let (block, layout) = live[i];
                    let new = at(layout.size() + [16, 100, 1000][rand(3)], layout.align());
                    // SAFETY: a live block with its layout; `new` is larger, same alignment.
                    if unsafe { heap.grow(block, layout, new) } {
                        if cfg!(miri) {
                            // SAFETY: grown in place to `new.size()` bytes.
                            unsafe { block.as_ptr().write_bytes(0x5A, new.size()) };
                        }
                        live[i].1 = new;
                    }
                }
                8 if !live.is_empty() => {
                    let i = rand(live.len());
                    let (block, layout) = live[i];
                    let new = at(layout.size() / (1 + rand(4)), layout.align());
                    // SAFETY: a live block with its layout; `new` is no larger, same alignment.
                    if unsafe { heap.shrink(block, layout, new) } {
                        live[i].1 = new;
                    }
                }
                _ => {}
            }
            heap.check_invariants();
            if dead.len() > 64 {
                dead.drain(..32);
            }
            for &stale in &dead {
                if live.iter().any(|&(b, _)| b == stale) {
                    continue;
                }
                if !heap.owns(stale) {
                    continue;
                }
                if let Some(kind) = would_accept(stale) {
                    panic!("step {step}: a second put of {stale:p} would pass ({kind})");
                }
            }
            // Interior addresses of live blocks.
            for &(block, layout) in &live {
                let mut off = 16;
                while off + 16 <= layout.size() {
                    let p = NonNull::new(block.as_ptr().wrapping_add(off)).unwrap();
                    if let Some(kind) = would_accept(p) {
                        panic!(
                            "step {step}: a put of {p:p}, {off} bytes into a live block, would pass ({kind})"
                        );
                    }
                    off += 16;
                }
            }
        }
    }

    /// Bin `level * SUBS + sub` starts at `2^(level + 5) + sub * 2^(level + 2)` bytes, as
    /// documented, and every size is filed on the bin it reaches.
    #[test]
    fn bins_are_the_documented_ones() {
        Bins::check_properties();
        assert_eq!((LEVELS, BINS), (26, 208));
        for level in 0..LEVELS {
            for sub in 0..SUBS {
                let low = (1 << (level + 5)) + (sub << (level + 2));
                let bin = level * SUBS + sub;
                assert_eq!(Bins::class_size(bin), low, "bin {bin}");
                assert_eq!(bin_of(low), bin, "bin {bin}");
                if bin > 0 {
                    assert_eq!(bin_of(low - 1), bin - 1, "bin {bin}");
                }
            }
        }
        assert_eq!(bin_of((1 << 31) - 1), BINS - 1);
    }
}
