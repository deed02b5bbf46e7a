//! `Slab<L, SLAB>`: Bonwick's slab allocator, the region seed's `bonwick` layer: per-size
//! caches of fixed-size blocks carved from SLAB-byte slabs, each slab with its own free list,
//! empty slabs given back to `L`.
//!
//! Invariants (checked by `check_invariants`):
//! - every slab is a block of `L` got with `Layout(SLAB, SLAB)`, with its [`SlabHeader`]
//!   at the slab's *colour* offset (a multiple of `HEADER` that its address picks, see
//!   `Slab::header_offset`); its blocks all have the one size of its class and start at
//!   `HEADER + i * size` past the header, for `i < capacity`;
//! - a slab of class `c` is on exactly one of `c`'s two lists: *partial* (it may have a free
//!   block; the head is the slab `get` takes from) or *full* (every carved block live and
//!   nothing left to carve); spare empty slabs sit on the `empty` stack, on no class list;
//! - `used` counts the slab's live blocks; the free list holds `carved - used` blocks.
//!
//! The classes are `SlabClasses`, an instance of the size-class policy (`classes.rs`). The
//! entry points are [`Slab`]'s `get` and `put`, and, for the thread heaps, the crate-internal
//! interface in the section "the thread heaps' interface".

use core::alloc::Layout;
use core::fmt;
use core::ptr::{self, NonNull};

use super::classes::ClassMap;
use super::doubly_linked::{insert_after, linked_by_fields, push_front, unlink};
use crate::Layer;
use crate::abort::{abort_with, debug_require};
use crate::layer::{FREED, FRESH, fill, paranoid, require_grow, require_put, require_shrink};

/// The bytes at the start of every slab kept for its header: two cache lines, one for the
/// fields the owner writes as it allocates and frees, one for those other threads read
/// when they free (never written while the slab is in use), so that frees from other
/// threads do not pull the owner's line away from it; blocks start 64-byte aligned and
/// never share a line with the header.
const HEADER: usize = 128;

/// The largest request any slabs serve, and the largest class; a `Slab` serves up to its
/// [`LIMIT`](Slab::LIMIT), which depends on its slab size. Larger requests, and alignments
/// above [`Slab::BLOCK_ALIGN`], go straight to `L`.
const MAX_LIMIT: usize = 32768;

/// The largest request slabs of `slab` bytes serve: an eighth of the slab, so that a slab
/// holds at least seven blocks of its largest class, but at least 8 KiB (a slab of
/// 16-64 KiB holds one to seven 8 KiB blocks) and at most [`MAX_LIMIT`].
const fn limit_for(slab: usize) -> usize {
    let eighth = slab / 8;
    if eighth < 8192 {
        8192
    } else if eighth > MAX_LIMIT {
        MAX_LIMIT
    } else {
        eighth
    }
}

/// The alignment every slab block has (sizes are multiples of it).
const BLOCK_ALIGN: usize = 16;

/// The slabs' size classes: 16-byte steps up to 128 bytes, then eight per doubling up to
/// `MAX_LIMIT`, so a block wastes at most a ninth of itself (at most 15 bytes below 128).
/// A `Slab` uses those up to its `LIMIT`.
type SlabClasses = ClassMap<BLOCK_ALIGN, 128, 8, MAX_LIMIT>;

/// The number of size classes (72).
const CLASSES: usize = SlabClasses::COUNT;

// Every class size is a multiple of the block alignment, and a class fits a `u8`; the
// smallest block holds a free block's link and key.
const _: () = assert!(
    SlabClasses::GRAIN.is_multiple_of(BLOCK_ALIGN)
        && CLASSES <= u8::MAX as usize
        && size_of::<FreeBlock>() <= SlabClasses::class_size(0)
);

/// Spare empty slabs kept for reuse before further ones go back to `L`: 256 KiB worth, so
/// that a program that frees and rebuilds its heap in rounds does not hand its slabs back
/// and fault them in again each round.
const EMPTY_KEEP_BYTES: usize = 256 << 10;

/// Bytes of blocks threaded onto a slab's free list at once when it needs more (a page, and
/// at least 8 blocks): the rest stay uncarved, so a fresh slab touches only the pages it
/// uses.
const CARVE_BYTES: usize = 4096;

/// The check word a header keeps: its own address mixed with a constant, so a pointer that
/// does not lead to a slab header is caught before its header is trusted.
const HEADER_CHECK: usize = 0x5AB5_1AB5_C0DE_F00D_u64 as usize;
/// What a free block's key is its address XORed with (see [`FreeBlock`]).
const FREE_KEY: usize = 0xF9EE_B10C_4E7A_11D5_u64 as usize;
/// What the key of a block waiting on a thread heap's remote stack is its address XORed
/// with (see [`Slab::remote_key`]).
const REMOTE_KEY: usize = 0x5E7D_0FF1_CE0B_10C5_u64 as usize;

// ---- free blocks and slab headers --------------------------------------------------------

/// A free block: the link to the next free block of the same slab, written into the block.
struct FreeBlock {
    next: *mut FreeBlock,
    /// [`free_key`] of the block while it is free, 0 once it is handed out: a put that
    /// finds the key looks for the block on its slab's free list, to catch a double put
    /// that is not of the list's head.
    key: usize,
}

/// The key a free block holds: its address, scrambled, so that a live block's bytes match
/// it only by a rare chance (which costs a walk of the free list, nothing else).
#[inline(always)]
fn free_key(block: *mut FreeBlock) -> usize {
    block.addr() ^ FREE_KEY
}

/// The word where a free block keeps its key ([`free_key`], or a remote key), read as it
/// is. A live block's key word holds whatever its owner left there, perhaps uninitialised
/// bytes, which an ordinary read may not see as a number: on x86-64 and AArch64 an
/// assembly load reads them as they are. Elsewhere the read is an ordinary one, and under
/// Miri (which runs no assembly and would report a program that frees a block with
/// uninitialised bytes there) it answers 0, no key: no block is taken for free by its key.
///
/// # Safety
///
/// `block` is a block of a slab: at least a free block's two words, readable.
#[inline(always)]
unsafe fn key_word(block: *mut FreeBlock) -> usize {
    // SAFETY: the caller's duty: the block holds a free block's words (no reference is
    // made, and nothing read).
    let word = unsafe { &raw const (*block).key };
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    let key: usize = {
        let key;
        // SAFETY: the caller's duty: the word is readable; the load changes nothing.
        unsafe {
            core::arch::asm!(
                "mov {key}, qword ptr [{word}]",
                word = in(reg) word,
                key = lateout(reg) key,
                options(nostack, readonly, preserves_flags, pure)
            )
        };
        key
    };
    #[cfg(all(target_arch = "aarch64", not(miri)))]
    let key: usize = {
        let key;
        // SAFETY: as above.
        unsafe {
            core::arch::asm!(
                "ldr {key}, [{word}]",
                word = in(reg) word,
                key = lateout(reg) key,
                options(nostack, readonly, preserves_flags, pure)
            )
        };
        key
    };
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64", miri)))]
    // SAFETY: as above.
    let key = unsafe { word.read() };
    #[cfg(miri)]
    let key = {
        let _ = word;
        0
    };
    key
}

/// The inverse of the odd number `odd` modulo 2^32 (Newton's iteration, each step doubling
/// the bits that are right: `odd` is its own inverse to three bits).
const fn odd_inverse(odd: u32) -> u32 {
    let mut inverse = odd;
    let mut step = 0;
    while step < 4 {
        inverse = inverse.wrapping_mul(2u32.wrapping_sub(odd.wrapping_mul(inverse)));
        step += 1;
    }
    inverse
}

/// Which list a slab is on.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
enum State {
    Partial,
    Full,
    Empty,
}

/// The header at the start of every slab.
#[repr(C)]
struct SlabHeader {
    /// The slab's free blocks (carved, not live).
    free: *mut FreeBlock,
    /// Live blocks.
    used: u32,
    /// Blocks the slab can hold.
    capacity: u32,
    /// Blocks carved so far (the first `carved` block positions).
    carved: u32,
    /// Block size in bytes.
    size: u32,
    /// The multiplicative inverse, modulo 2^32, of the block size's odd factor: how a put
    /// finds the index of the block an offset starts without a division (see `put_in`).
    inverse: u32,
    /// The size class.
    class: u8,
    state: State,
    next: *mut SlabHeader,
    prev: *mut SlabHeader,
    /// What a free from another thread reads, on the second line.
    fixed: FixedHeader,
}

linked_by_fields!(SlabHeader);

/// The part of a slab header set up with the slab and then only read (until the slab goes
/// back to `L`), on a cache line of its own.
#[repr(C, align(64))]
struct FixedHeader {
    /// The owner tag the layer had when it set up the slab (see [`Slab::set_tag`]).
    tag: *mut u8,
    /// `address ^ HEADER_CHECK`.
    check: usize,
}

static_assertions::const_assert!(core::mem::size_of::<SlabHeader>() <= HEADER);

/// The class of every request size rounded up to a multiple of 16, so that one load
/// replaces the arithmetic on the allocation fast path.
static CLASS_BY_GRAIN: [u8; MAX_LIMIT / SlabClasses::GRAIN + 1] = SlabClasses::table();

// ---- the type, construction and accessors ------------------------------------------------

/// Per-size caches of small blocks in `SLAB`-byte slabs got from `L`; larger requests go
/// straight to `L`.
///
/// A request of up to [`Slab::LIMIT`] bytes (aligned to at most [`Slab::BLOCK_ALIGN`]) takes the
/// smallest of [`Slab::CLASSES`] size classes that holds it: 16-byte steps up to 128 bytes, then
/// eight classes per doubling, so a block wastes at most a ninth of itself (and at most 15
/// bytes below 128). Each class keeps a list of slabs with room; a slab's free blocks form
/// a list threaded through the blocks themselves, and a slab carves its blocks lazily, so
/// only the pages in use are touched. A put finds its slab by masking the address (slabs
/// are `SLAB`-aligned), pushes the block on that slab's free list, and a slab whose last
/// block comes back is kept as one of a few spares or given back to `L`: memory returns
/// to the source as a program's heap shrinks, which plain free lists never do.
///
/// Every slab records an owner tag ([`set_tag`](Slab::set_tag)), which
/// [`tag_of`](Slab::tag_of) reads from any block's address: thread heaps use it to send a
/// block freed on another thread back to the heap that owns it.
///
/// ```
/// use core::alloc::Layout;
/// use stratalloc::{Layer, layers::{Mmap, Slab}};
///
/// let mut slab: Slab<Mmap> = Slab::new(Mmap::new());
/// let a = slab.get(Layout::new::<[u8; 40]>()).unwrap();
/// // SAFETY: `a` is live, got with this layout; it is put once.
/// unsafe {
///     assert_eq!(Slab::<Mmap>::usable_size(a), 48, "the 48-byte class");
///     slab.put(a, Layout::new::<[u8; 40]>());
/// }
/// let b = slab.get(Layout::new::<[u8; 33]>()).unwrap();
/// assert_eq!(a, b, "the freed block is the next one handed out");
/// ```
pub struct Slab<L: Layer, const SLAB: usize = 65536> {
    partial: [*mut SlabHeader; CLASSES],
    full: [*mut SlabHeader; CLASSES],
    empty: *mut SlabHeader,
    empties: usize,
    slabs: usize,
    tag: *mut u8,
    inner: L,
}

// SAFETY: a `Slab` exclusively owns its slabs (memory from `L`); nothing in it is tied to a
// thread.
unsafe impl<L: Layer + Send, const SLAB: usize> Send for Slab<L, SLAB> {}

impl<L: Layer, const SLAB: usize> Slab<L, SLAB> {
    const GEOMETRY_OK: () = assert!(
        SLAB.is_power_of_two() && SLAB >= 16384 && SLAB <= 1 << 24,
        "SLAB must be a power of two from 16 KiB to 16 MiB"
    );

    /// The layout every slab is got from `L` with.
    const SLAB_LAYOUT: Layout = match Layout::from_size_align(SLAB, SLAB) {
        Ok(layout) => layout,
        Err(_) => panic!("SLAB is not a valid alignment"),
    };

    /// The largest request the slabs serve: 8 KiB for slabs of up to 64 KiB, an eighth
    /// of the slab beyond that, at most 32 KiB; larger ones go to `L`.
    pub const LIMIT: usize = limit_for(SLAB);
    /// The alignment of every slab block (16); requests aligned to more go to `L`.
    pub const BLOCK_ALIGN: usize = BLOCK_ALIGN;
    /// The number of size classes.
    pub const CLASSES: usize = CLASSES;

    /// Header positions (colours) in a slab: 16, or fewer for slabs under 64 KiB (a
    /// quarter of the slab's pages), so that colours cost at most 15 * 128 bytes of a slab.
    const COLOURS: usize = if SLAB / 4096 < 16 { SLAB / 4096 } else { 16 };

    /// Spare slabs kept (at least one).
    const EMPTY_KEEP: usize = if EMPTY_KEEP_BYTES / SLAB > 0 {
        EMPTY_KEEP_BYTES / SLAB
    } else {
        1
    };

    /// Whether a request is served from slabs.
    #[inline(always)]
    const fn is_small(layout: Layout) -> bool {
        layout.size() <= Self::LIMIT && layout.align() <= BLOCK_ALIGN
    }

    /// A layer with no slabs yet, over `inner`.
    pub const fn new(inner: L) -> Self {
        let () = Self::GEOMETRY_OK;
        Slab {
            partial: [ptr::null_mut(); CLASSES],
            full: [ptr::null_mut(); CLASSES],
            empty: ptr::null_mut(),
            empties: 0,
            slabs: 0,
            tag: ptr::null_mut(),
            inner,
        }
    }

    crate::layer::layer_below! {
        ///
        /// Nor may they replace the inner layer (an assignment or a `mem::replace` drops or moves it,
        /// slabs and all): this layer reads and writes the slabs on its next call.
        ///
        /// Safe code cannot do it:
        ///
        /// ```compile_fail,E0133
        /// use stratalloc::{Layer, layers::{Mmap, Slab}};
        ///
        /// let mut slab: Slab<Mmap> = Slab::new(Mmap::new());
        /// let _ = slab.get(core::alloc::Layout::new::<u64>());
        /// slab.inner_mut().deinit(); // error: call to unsafe function
        /// ```
        owns: "the slabs and the large blocks this layer got from the inner one";
        into_inner after release: "every slab";
    }

    /// Slabs held right now (spares included).
    pub const fn slabs(&self) -> usize {
        self.slabs
    }

    /// Sets the owner tag written into every slab set up from now on (slabs already held
    /// keep theirs until they are given back or reused).
    ///
    /// Safe: to the slab the tag is a number it stores and never reads through. Code that
    /// turns tags back into pointers (as `ThreadHeaps` does with
    /// [`tag_of`](Slab::tag_of)) must keep the `Slab` to itself, so that no one else can
    /// set a tag.
    pub fn set_tag(&mut self, tag: *mut u8) {
        self.tag = tag;
    }

    /// Where in the slab holding `addr` (any address in it) its header starts: slab `k`
    /// of the address space has colour `k % COLOURS`, and its header sits that many
    /// `HEADER`s in. Slabs are `SLAB`-aligned, so headers at their starts would all fall
    /// in the same few sets of a cache (every way of a 32 KiB, 8-way L1 holds 4 KiB; of
    /// a 1 MiB L2, 64 or 128 KiB), and a thread using more classes than the cache has
    /// ways would miss on every header; colours spread them over `COLOURS` times as many
    /// sets. Consecutive slabs of a reserve take consecutive colours.
    #[inline(always)]
    const fn header_offset(addr: usize) -> usize {
        (addr / (SLAB / HEADER)) & ((Self::COLOURS - 1) * HEADER)
    }

    /// The header of the slab a small block lives in.
    #[inline(always)]
    fn slab_of(ptr: NonNull<u8>) -> *mut SlabHeader {
        ptr.as_ptr()
            .map_addr(|a| (a & !(SLAB - 1)) | Self::header_offset(a))
            .cast()
    }

    /// The start of the slab whose header is `slab`: the block got from `L`.
    fn slab_start(slab: *mut SlabHeader) -> NonNull<u8> {
        let start = slab.cast::<u8>().map_addr(|a| a & !(SLAB - 1));
        // SAFETY: a header lies inside its slab, which starts at a non-zero address.
        unsafe { NonNull::new_unchecked(start) }
    }

    /// The slab of `ptr`, checked: aborts when its header's check word is wrong.
    ///
    /// # Safety
    ///
    /// `ptr` lies inside a slab of some `Slab` layer with this `SLAB` (a block it handed
    /// out that is still live).
    #[inline(always)]
    unsafe fn checked_slab(ptr: NonNull<u8>) -> *mut SlabHeader {
        let slab = Self::slab_of(ptr);
        // SAFETY: the caller promises a live slab there, which starts with its header.
        if unsafe { (*slab).fixed.check } != slab.addr() ^ HEADER_CHECK {
            bad_pointer(
                ptr,
                "its slab header is not one (not a block of this layer?)",
            );
        }
        slab
    }

    /// The owner tag of the slab `ptr` lives in.
    ///
    /// # Safety
    ///
    /// `ptr` is a live block that a `Slab` with this `SLAB` served from a slab (a request
    /// of at most [`Slab::LIMIT`] bytes aligned to at most [`Slab::BLOCK_ALIGN`]).
    #[inline(always)]
    pub unsafe fn tag_of(ptr: NonNull<u8>) -> *mut u8 {
        // SAFETY: the caller's duty.
        unsafe { (*Self::checked_slab(ptr)).fixed.tag }
    }

    /// The bytes a slab block really holds: its class's size.
    ///
    /// # Safety
    ///
    /// As for [`tag_of`](Slab::tag_of).
    #[inline(always)]
    pub unsafe fn usable_size(ptr: NonNull<u8>) -> usize {
        // SAFETY: the caller's duty.
        unsafe { (*Self::checked_slab(ptr)).size as usize }
    }

    /// Live slab blocks per class, as `(block size, live blocks)` for each class with any,
    /// summed over every slab (a walk of all slab headers).
    pub fn live_by_class(&self) -> [(usize, usize); CLASSES] {
        let mut out = [(0, 0); CLASSES];
        for (class, entry) in out.iter_mut().enumerate() {
            entry.0 = Self::class_size(class);
        }
        self.for_each_slab(|slab| {
            // SAFETY: every listed slab is live and ours.
            let (class, used) = unsafe { ((*slab).class as usize, (*slab).used as usize) };
            out[class].1 += used;
        });
        out
    }

    /// Calls `f` on every slab on a class list (not the spares).
    fn for_each_slab(&self, mut f: impl FnMut(*mut SlabHeader)) {
        for head in self.partial.iter().chain(self.full.iter()) {
            let mut slab = *head;
            while !slab.is_null() {
                // SAFETY: listed slabs are live; `f` does not unlink them.
                let next = unsafe { (*slab).next };
                f(slab);
                slab = next;
            }
        }
    }

    // ---- getting blocks: carving and new slabs -------------------------------------------

    /// Gets a block of size class `class` (below [`Slab::CLASSES`]) from the slabs: what `get`
    /// does for a small layout, with its class already known.
    #[inline(always)]
    fn get_small(&mut self, class: usize) -> Option<NonNull<u8>> {
        match self.pop_free(class) {
            Some(block) => Some(block),
            None => self.get_small_slow(class),
        }
    }

    /// Threads a page's worth (`CARVE_BYTES`) of uncarved blocks of the slab onto its free list.
    ///
    /// # Safety
    ///
    /// `slab` is a live slab of ours with an empty free list and blocks left to carve.
    unsafe fn carve(slab: *mut SlabHeader) {
        // SAFETY: the caller's duty; every position below `capacity` lies inside the slab.
        unsafe {
            let size = (*slab).size as usize;
            let first = (*slab).carved;
            let batch = (CARVE_BYTES / size).max(8) as u32;
            let last = (first + batch).min((*slab).capacity);
            let base = slab.cast::<u8>().add(HEADER);
            let mut next = ptr::null_mut::<FreeBlock>();
            for i in (first..last).rev() {
                let block = base.add(i as usize * size).cast::<FreeBlock>();
                block.write(FreeBlock {
                    next,
                    key: free_key(block),
                });
                next = block;
            }
            (*slab).free = next;
            (*slab).carved = last;
        }
    }

    /// Sets up a slab for `class` (a spare, or a new one from `L`), carves its first
    /// blocks and puts it at the head of the class's partial list.
    fn new_slab(&mut self, class: usize) -> Option<*mut SlabHeader> {
        let slab = if self.empty.is_null() {
            let start = self.inner.get(Self::SLAB_LAYOUT)?.as_ptr();
            self.slabs += 1;
            // SAFETY: the colour offset is less than SLAB - HEADER, inside the block.
            unsafe { start.add(Self::header_offset(start.addr())) }.cast::<SlabHeader>()
        } else {
            let slab = self.empty;
            // SAFETY: spares are live slabs of ours.
            self.empty = unsafe { (*slab).next };
            self.empties -= 1;
            slab
        };
        let size = Self::class_size(class);
        // SAFETY: `slab` is the header place of SLAB bytes of ours, on no list.
        unsafe {
            slab.write(SlabHeader {
                free: ptr::null_mut(),
                used: 0,
                capacity: ((SLAB - Self::header_offset(slab.addr()) - HEADER) / size) as u32,
                carved: 0,
                size: size as u32,
                inverse: odd_inverse(size as u32 >> size.trailing_zeros()),
                class: class as u8,
                state: State::Partial,
                next: ptr::null_mut(),
                prev: ptr::null_mut(),
                fixed: FixedHeader {
                    tag: self.tag,
                    check: slab.addr() ^ HEADER_CHECK,
                },
            });
            Self::carve(slab);
            self.push(slab, State::Partial);
        }
        Some(slab)
    }

    // ---- class lists ---------------------------------------------------------------------

    /// The head of class `class`'s list of slabs in `state`.
    #[inline(always)]
    fn list(&mut self, class: usize, state: State) -> &mut *mut SlabHeader {
        match state {
            State::Partial => &mut self.partial[class],
            State::Full => &mut self.full[class],
            State::Empty => unreachable_state(),
        }
    }

    /// Puts a slab at the head of its class's list for `state`.
    ///
    /// # Safety
    ///
    /// `slab` is a live slab of ours on no list.
    unsafe fn push(&mut self, slab: *mut SlabHeader, state: State) {
        // SAFETY: the caller's duty; listed slabs are live.
        unsafe {
            (*slab).state = state;
            push_front(self.list((*slab).class as usize, state), slab);
        }
    }

    /// Puts a slab at the tail-side of the partial list: right after the head, so the head
    /// (the slab being allocated from) stays put.
    ///
    /// # Safety
    ///
    /// `slab` is a live slab of ours on no list.
    unsafe fn push_partial_second(&mut self, slab: *mut SlabHeader) {
        // SAFETY: the caller's duty; listed slabs are live.
        unsafe {
            let head = self.partial[(*slab).class as usize];
            if head.is_null() {
                self.push(slab, State::Partial);
                return;
            }
            (*slab).state = State::Partial;
            insert_after(head, slab);
        }
    }

    /// Takes a slab off its class list.
    ///
    /// # Safety
    ///
    /// `slab` is a live slab of ours on the list its state names.
    unsafe fn unlink(&mut self, slab: *mut SlabHeader) {
        // SAFETY: the caller's duty; neighbours on a list are live.
        unsafe { unlink(self.list((*slab).class as usize, (*slab).state), slab) };
    }

    // ---- putting blocks back and retiring slabs ------------------------------------------

    /// Puts a slab block back, finding its slab (and class) from its address alone.
    ///
    /// # Safety
    ///
    /// `ptr` is a live block that this layer served from a slab (its layout was small),
    /// owned by the caller, and not used afterwards.
    #[inline(always)]
    pub unsafe fn put_unsized(&mut self, ptr: NonNull<u8>) {
        // SAFETY: the caller's duty: a live slab block of ours.
        unsafe { self.put_in(Self::checked_slab(ptr), ptr) }
    }

    /// Puts a live block back in its (checked) slab.
    ///
    /// # Safety
    ///
    /// `slab` is the checked slab of `ptr`, a live block of ours given up by the caller.
    #[inline(always)]
    unsafe fn put_in(&mut self, slab: *mut SlabHeader, ptr: NonNull<u8>) {
        // SAFETY: the caller's duty.
        unsafe {
            let block = ptr.as_ptr().cast::<FreeBlock>();
            // The start of a carved block. For an offset (past the header) that is a
            // multiple of the size, the offset times the inverse of the size's odd factor,
            // rotated right by the size's power of two, is the block's index; for any
            // other offset it is more than `u32::MAX / size`, so more than any index (the
            // test compilers use for `x % size == 0`, which also gives the quotient). An
            // address inside the header, or in the slab before it, wraps to an offset just
            // below 2^32, whose index is far past the slab's.
            let offset = ptr.as_ptr().addr().wrapping_sub(slab.addr() + HEADER) as u32;
            let size = (*slab).size;
            let index = offset
                .wrapping_mul((*slab).inverse)
                .rotate_right(size.trailing_zeros());
            if index >= (*slab).carved {
                bad_pointer(ptr, "it is not the start of a block of its slab");
            }
            if (*slab).used == 0 {
                bad_pointer(ptr, "put twice (it is already free)");
            }
            // A free block holds its key (the head of the free list among them); a block
            // waiting on a thread heap's remote stack, its remote key.
            let key = key_word(block);
            if key == free_key(block) {
                return self.put_keyed(slab, block);
            }
            if key == Self::remote_key(ptr) {
                bad_pointer(
                    ptr,
                    "put twice (another thread freed it, and it waits for its heap to take it back)",
                );
            }
            self.push_free(slab, block);
        }
    }

    /// [`put_in`](Slab::put_in) for a block that holds its free key: a double put if the
    /// block is on its slab's free list (an abort), else a live block whose bytes match
    /// the key by chance. Out of line, so that a put needs no stack frame.
    ///
    /// # Safety
    ///
    /// As for `put_in`, past its checks.
    #[cold]
    #[inline(never)]
    unsafe fn put_keyed(&mut self, slab: *mut SlabHeader, block: *mut FreeBlock) {
        // SAFETY: the caller's duty.
        unsafe {
            if Self::is_free(slab, block) {
                // SAFETY: the block's address, which `put_in` was given non-null.
                bad_pointer(
                    NonNull::new_unchecked(block.cast()),
                    "put twice (it is already free)",
                );
            }
            self.push_free(slab, block);
        }
    }

    /// Pushes a block that `put_in` checked on its slab's free list.
    ///
    /// # Safety
    ///
    /// As for `put_in`, past its checks.
    #[inline(always)]
    unsafe fn push_free(&mut self, slab: *mut SlabHeader, block: *mut FreeBlock) {
        // SAFETY: the caller's duty.
        unsafe {
            fill::<Self>(
                block.cast(),
                size_of::<FreeBlock>(),
                (*slab).size as usize,
                FREED,
            );
            block.write(FreeBlock {
                next: (*slab).free,
                key: free_key(block),
            });
            (*slab).free = block;
            (*slab).used -= 1;
            // (The slab its class allocates from is never full, and stays when empty.)
            if ((*slab).state == State::Full || (*slab).used == 0)
                && self.partial.get((*slab).class as usize) != Some(&slab)
            {
                self.refile(slab);
            }
        }
    }

    /// After a put into a slab that was full or is now empty, and is not the one its
    /// class allocates from: a full slab goes back on its partial list; an empty one is
    /// retired. Out of line, so that a put needs no stack frame.
    ///
    /// # Safety
    ///
    /// `slab` is a live slab of ours, on the list its state names.
    #[inline(never)]
    unsafe fn refile(&mut self, slab: *mut SlabHeader) {
        // SAFETY: the caller's duty.
        unsafe {
            if (*slab).state == State::Full {
                self.unlink(slab);
                self.push_partial_second(slab);
            }
            // (A slab of one block goes from full to empty in one put.)
            if (*slab).used == 0 && self.partial[(*slab).class as usize] != slab {
                self.retire(slab);
            }
        }
    }

    /// Whether `block` is on `slab`'s free list (a walk of at most `carved` links).
    ///
    /// # Safety
    ///
    /// `slab` is a live slab of ours.
    #[cold]
    #[inline(never)]
    unsafe fn is_free(slab: *mut SlabHeader, block: *mut FreeBlock) -> bool {
        // SAFETY: the caller's duty; a free block of a live slab holds its link.
        unsafe {
            let mut free = (*slab).free;
            for _ in 0..(*slab).carved {
                if free.is_null() {
                    return false;
                }
                if free == block {
                    return true;
                }
                free = (*free).next;
            }
            false
        }
    }

    /// A slab with no live block that is not the head of its list: keep it as a spare or
    /// give it back to `L`.
    ///
    /// # Safety
    ///
    /// `slab` is a live slab of ours on its partial list, with no live block.
    #[cold]
    unsafe fn retire(&mut self, slab: *mut SlabHeader) {
        // SAFETY: the caller's duty.
        unsafe {
            self.unlink(slab);
            if self.empties < Self::EMPTY_KEEP {
                (*slab).state = State::Empty;
                (*slab).next = self.empty;
                self.empty = slab;
                self.empties += 1;
            } else {
                self.give_back(slab);
            }
        }
    }

    /// Returns a slab on no list to `L`.
    ///
    /// # Safety
    ///
    /// `slab` is a live slab of ours with no live block, on no list.
    unsafe fn give_back(&mut self, slab: *mut SlabHeader) {
        // SAFETY: the caller's duty; the slab came from `L` with `SLAB_LAYOUT`. Its check
        // word is cleared first, so a stale pointer into it is caught if the memory stays.
        unsafe {
            (*slab).fixed.check = 0;
            self.inner.put(Self::slab_start(slab), Self::SLAB_LAYOUT);
        }
        self.slabs -= 1;
    }

    /// Gives every slab back to `L`: every slab block ends.
    fn release(&mut self) {
        for class in 0..CLASSES {
            for head in [self.partial[class], self.full[class]] {
                let mut slab = head;
                while !slab.is_null() {
                    // SAFETY: listed slabs are live; the link is read before the slab goes.
                    unsafe {
                        let next = (*slab).next;
                        self.give_back(slab);
                        slab = next;
                    }
                }
            }
            self.partial[class] = ptr::null_mut();
            self.full[class] = ptr::null_mut();
        }
        while !self.empty.is_null() {
            let slab = self.empty;
            // SAFETY: spares are live slabs of ours.
            unsafe {
                self.empty = (*slab).next;
                self.give_back(slab);
            }
        }
        self.empties = 0;
    }
}

// ---- the thread heaps' interface (crate-internal) ----------------------------------------

/// What the thread heaps (`src/thread_heaps/`) call in place of `get` and `put`, so that
/// their fast paths stay a few loads inlined into `malloc` and `free`, with their own work
/// between the halves. Each keeps the invariants at the top of this file, as `get` and `put`
/// do.
///
/// - The class map: [`class_of`](Slab::class_of) (one table load) and
///   [`class_size`](Slab::class_size), for requests of at most [`LIMIT`](Slab::LIMIT)
///   bytes aligned to at most [`BLOCK_ALIGN`](Slab::BLOCK_ALIGN), in
///   [`CLASSES`](Slab::CLASSES) classes.
/// - A get in two halves: [`pop_free`](Slab::pop_free), a block off the free list of the
///   class's head slab or `None`; then [`get_small_slow`](Slab::get_small_slow), which
///   carves, moves on to the next slab or sets up a new one.
/// - A put in two halves: [`slab_and_tag`](Slab::slab_and_tag) finds a block's slab and its
///   owner tag from the address alone (and [`usable_size`](Slab::usable_size) its size);
///   [`put_in_slab`](Slab::put_in_slab) puts it back in that slab, once the caller knows
///   the slab is its own. Blocks freed on other threads come back through
///   [`put_unsized`](Slab::put_unsized).
///
/// The halves fill blocks in debug builds as `get` and `put` do ([`FRESH`] when handed out,
/// [`FREED`] past the link when put back; see [Fill bytes](crate::layer#fill-bytes)), so
/// the thread heaps' blocks show the same bytes. The thread heaps put a block inside the
/// `dealloc` call that frees it, and so write its link and its fill then, through the
/// pointer `dealloc` was given. Miri does not accept [`General`](crate::presets::General)
/// as the global allocator, with or without the fill: freeing a `Box` there, it reports the
/// read of the block's slab header through the `Box`'s pointer before anything is written
/// (Stacked Borrows: "that tag does not exist in the borrow stack for this location", the
/// tag covering the `Box`'s bytes only; Tree Borrows: a read through a tag of the `Box`
/// that an earlier write to the header, through the slab's own pointer, disabled). Past
/// that, Stacked Borrows would report the link and the fill the same way where they go
/// past the `Box`'s bytes (a `Box` smaller than its size class). The tests drive `General`
/// through `GlobalAlloc` calls with raw pointers, which Miri accepts, fill included.
impl<L: Layer, const SLAB: usize> Slab<L, SLAB> {
    /// The smallest class whose blocks hold `size` bytes (at most [`LIMIT`](Slab::LIMIT));
    /// a zero size takes the first class.
    #[inline(always)]
    pub(crate) fn class_of(size: usize) -> usize {
        debug_require!(
            size <= Self::LIMIT,
            "Slab: class_of({size}) is past the slab limit"
        );
        // Callers check the limit first, so the index is in bounds (and its check folds away).
        SlabClasses::class_in(&CLASS_BY_GRAIN, size)
    }

    /// The block size of class `class` (below [`CLASSES`](Slab::CLASSES)).
    #[inline(always)]
    pub(crate) const fn class_size(class: usize) -> usize {
        SlabClasses::class_size(class)
    }

    /// The fast half of [`get_small`](Slab::get_small): a block off the free list of the
    /// class's head slab, or `None` when that list is empty (then call
    /// [`get_small_slow`](Slab::get_small_slow)).
    #[inline(always)]
    pub(crate) fn pop_free(&mut self, class: usize) -> Option<NonNull<u8>> {
        // (`get`, not indexing: no panic path on the allocation fast path.)
        let slab = *self.partial.get(class)?;
        if slab.is_null() {
            return None;
        }
        // SAFETY: the head of a partial list is a live slab of ours.
        unsafe {
            let block = (*slab).free;
            if block.is_null() {
                return None;
            }
            Some(Self::take(slab, block))
        }
    }

    /// The head slab of `class` has no free block: carve more, or move on to the next
    /// slab, or set up a new one.
    #[cold]
    pub(crate) fn get_small_slow(&mut self, class: usize) -> Option<NonNull<u8>> {
        loop {
            let slab = self.partial[class];
            if slab.is_null() {
                break;
            }
            // SAFETY: listed slabs are live and ours.
            unsafe {
                if (*slab).free.is_null() && (*slab).carved < (*slab).capacity {
                    Self::carve(slab);
                }
                let block = (*slab).free;
                if !block.is_null() {
                    return Some(Self::take(slab, block));
                }
                // Nothing free and nothing to carve: the slab is full.
                self.unlink(slab);
                self.push(slab, State::Full);
            }
        }
        let slab = self.new_slab(class)?;
        // SAFETY: a fresh slab of ours, with at least one block carved.
        unsafe { Some(Self::take(slab, (*slab).free)) }
    }

    /// Hands out `block`, the head of `slab`'s free list: takes it off the list, counts it
    /// live and, in debug builds, fills it with [`FRESH`].
    ///
    /// # Safety
    ///
    /// `slab` is a live slab of ours and `block` the head of its free list.
    #[inline(always)]
    unsafe fn take(slab: *mut SlabHeader, block: *mut FreeBlock) -> NonNull<u8> {
        // SAFETY: the caller's duty; a free block holds its link, and its slab's block size
        // of bytes, which become the caller's.
        unsafe {
            (*slab).free = (*block).next;
            (*block).key = 0;
            (*slab).used += 1;
            fill::<Self>(block.cast(), 0, (*slab).size as usize, FRESH);
            NonNull::new_unchecked(block.cast())
        }
    }

    /// Aborts, naming `ptr`, if the block holds a free block's key: it is (short of a
    /// chance of one in 2^64 for a live block's bytes) on its slab's free list, and is being
    /// put again by another thread, which cannot look at that list (the owner's alone).
    ///
    /// # Safety
    ///
    /// `ptr` is a block of one of this layer's slabs (live or free), readable.
    #[cfg_attr(not(all(feature = "os", any(unix, windows))), allow(dead_code))]
    #[inline(always)]
    pub(crate) unsafe fn abort_if_free(ptr: NonNull<u8>) {
        // SAFETY: the caller's duty.
        unsafe {
            Self::abort_if_free_with(
                ptr,
                "put twice (it is already free), the second time by another thread",
            )
        }
    }

    /// [`abort_if_free`](Slab::abort_if_free) with the reason given: for the calls other
    /// than a put that take a block for live (C's `realloc` and `malloc_usable_size`).
    ///
    /// # Safety
    ///
    /// As for `abort_if_free`.
    #[cfg_attr(not(all(feature = "os", any(unix, windows))), allow(dead_code))]
    #[inline(always)]
    pub(crate) unsafe fn abort_if_free_with(ptr: NonNull<u8>, why: &str) {
        let block = ptr.as_ptr().cast::<FreeBlock>();
        // SAFETY: the caller's duty: every block holds at least a free block's two words.
        let key = unsafe { key_word(block) };
        if key == free_key(block) || key == Self::remote_key(ptr) {
            bad_pointer(ptr, why);
        }
    }

    /// The key a block waiting on a thread heap's remote stack holds in its second word
    /// (where a free block keeps its [`free_key`]), written by the thread that pushed it:
    /// a second free of the block before its heap takes the stack back is then caught, by
    /// [`abort_if_free`](Slab::abort_if_free) from another thread and by the put from the
    /// owner's, as `realloc` of it is. The put that takes it back writes the free key over
    /// it.
    #[inline(always)]
    pub(crate) fn remote_key(ptr: NonNull<u8>) -> usize {
        ptr.as_ptr().addr() ^ REMOTE_KEY
    }

    /// The slab `ptr` lives in, checked, with the slab's owner tag.
    ///
    /// # Safety
    ///
    /// As for [`tag_of`](Slab::tag_of).
    #[cfg_attr(not(all(feature = "os", any(unix, windows))), allow(dead_code))]
    #[inline(always)]
    pub(crate) unsafe fn slab_and_tag(ptr: NonNull<u8>) -> (SlabRef, *mut u8) {
        // SAFETY: the caller's duty.
        unsafe {
            let slab = Self::checked_slab(ptr);
            (SlabRef(slab), (*slab).fixed.tag)
        }
    }

    /// [`put_unsized`](Slab::put_unsized) with the slab already found by
    /// [`slab_and_tag`](Slab::slab_and_tag).
    ///
    /// # Safety
    ///
    /// As for `put_unsized`, and `slab` is the slab of `ptr`.
    #[cfg_attr(not(all(feature = "os", any(unix, windows))), allow(dead_code))]
    #[inline(always)]
    pub(crate) unsafe fn put_in_slab(&mut self, slab: SlabRef, ptr: NonNull<u8>) {
        // SAFETY: the caller's duty.
        unsafe { self.put_in(slab.0, ptr) }
    }
}

/// A slab found from a block's address (see [`Slab::slab_and_tag`]).
#[derive(Clone, Copy)]
#[cfg_attr(not(all(feature = "os", any(unix, windows))), allow(dead_code))]
pub(crate) struct SlabRef(*mut SlabHeader);

// ---- aborts and the Layer impl -----------------------------------------------------------

/// A put of something that cannot be one of this layer's blocks.
#[cold]
#[inline(never)]
fn bad_pointer(ptr: NonNull<u8>, why: &str) -> ! {
    abort_with(format_args!("Slab: bad put of {ptr:p}: {why}"))
}

#[cold]
#[inline(never)]
fn unreachable_state() -> ! {
    abort_with(format_args!("Slab: a spare slab on a class list"))
}

// SAFETY: small blocks are disjoint positions of slabs got from `L`, each handed out only
// while off its slab's free list (a block is on at most one free list, and a slab on at
// most one class list); a slab goes back to `L` only with no live block. Every position is
// 16-aligned (sizes and `HEADER` are multiples of 16, slabs SLAB-aligned) and holds its
// class's size, at least the request. Other requests go to `L` unchanged, and their puts
// and resizes too (chosen by the layout, which fits the block and stays on its side).
unsafe impl<L: Layer, const SLAB: usize> Layer for Slab<L, SLAB> {
    const MIN_ALIGN: usize = if L::MIN_ALIGN < BLOCK_ALIGN {
        L::MIN_ALIGN
    } else {
        BLOCK_ALIGN
    };
    // Blocks lie inside blocks of `L`, and `owns` asks `L`: exact when `L` answers for
    // every address inside its blocks.
    const OWNS_EXACT: bool = L::OWNS_INTERIOR;
    const OWNS_INTERIOR: bool = L::OWNS_INTERIOR;

    #[inline(always)]
    fn get(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        paranoid(self);
        if Self::is_small(layout) {
            self.get_small(Self::class_of(layout.size()))
        } else {
            self.inner.get(layout)
        }
    }

    #[inline(always)]
    unsafe fn put(&mut self, ptr: NonNull<u8>, layout: Layout) {
        paranoid(self);
        require_put::<Self>(ptr, layout);
        // SAFETY: the layout fits the block, so it names the path that served it.
        unsafe {
            if Self::is_small(layout) {
                self.put_unsized(ptr)
            } else {
                self.inner.put(ptr, layout)
            }
        }
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
        match (Self::is_small(old), Self::is_small(new)) {
            (true, true) => Self::class_of(old.size()) == Self::class_of(new.size()),
            // SAFETY: a large block of `L`, staying large.
            (false, false) => unsafe { self.inner.grow(ptr, old, new) },
            _ => false,
        }
    }

    unsafe fn shrink(&mut self, ptr: NonNull<u8>, old: Layout, new: Layout) -> bool {
        paranoid(self);
        require_shrink::<Self>(ptr, old, new);
        match (Self::is_small(old), Self::is_small(new)) {
            (true, true) => Self::class_of(old.size()) == Self::class_of(new.size()),
            // SAFETY: a large block of `L`, staying large.
            (false, false) => unsafe { self.inner.shrink(ptr, old, new) },
            _ => false,
        }
    }

    fn owns(&self, ptr: NonNull<u8>) -> bool {
        self.inner.owns(ptr)
    }

    fn check_invariants(&self) {
        let fail = |what: &str| -> ! { abort_with(format_args!("Slab invariant broken: {what}")) };
        let mut listed = 0;
        for class in 0..CLASSES {
            for (head, state) in [
                (self.partial[class], State::Partial),
                (self.full[class], State::Full),
            ] {
                let mut prev = ptr::null_mut();
                let mut slab = head;
                while !slab.is_null() {
                    listed += 1;
                    // SAFETY: listed slabs are live and start with their header.
                    let header = unsafe { &*slab };
                    if header.prev != prev || header.state != state {
                        fail("list links or state");
                    }
                    if header.class as usize != class
                        || header.size as usize != Self::class_size(class)
                    {
                        fail("a slab on another class's list");
                    }
                    if header.fixed.check != slab.addr() ^ HEADER_CHECK
                        || Self::slab_of(Self::slab_start(slab)) != slab
                    {
                        fail("header check word or the header's place in its slab");
                    }
                    let room = SLAB - Self::header_offset(slab.addr()) - HEADER;
                    if header.used > header.carved
                        || header.carved > header.capacity
                        || header.capacity as usize * header.size as usize > room
                    {
                        fail("used <= carved <= capacity");
                    }
                    let mut free = 0;
                    let mut block = header.free;
                    while !block.is_null() {
                        free += 1;
                        let offset = block.addr().wrapping_sub(slab.addr());
                        if free > header.carved
                            || offset < HEADER
                            || !(offset - HEADER).is_multiple_of(header.size as usize)
                            || (offset - HEADER) / header.size as usize >= header.carved as usize
                        {
                            fail("a free block outside its slab's carved blocks");
                        }
                        // SAFETY: a free block of a live slab holds its link and key.
                        if unsafe { (*block).key } != free_key(block) {
                            fail("a free block without its key");
                        }
                        // SAFETY: a free block of a live slab holds its link.
                        block = unsafe { (*block).next };
                    }
                    if free != header.carved - header.used {
                        fail("free list length differs from carved - used");
                    }
                    if state == State::Full && (free != 0 || header.carved != header.capacity) {
                        fail("a full slab with room");
                    }
                    prev = slab;
                    slab = header.next;
                }
            }
        }
        let mut spares = 0;
        let mut slab = self.empty;
        while !slab.is_null() {
            spares += 1;
            // SAFETY: spares are live slabs.
            slab = unsafe { (*slab).next };
        }
        if spares != self.empties || listed + spares != self.slabs {
            fail("slab counts differ from the lists");
        }
        self.inner.check_invariants();
    }
}

impl<L: Layer, const SLAB: usize> Drop for Slab<L, SLAB> {
    fn drop(&mut self) {
        self.deinit();
    }
}

impl<L: Layer + fmt::Debug, const SLAB: usize> fmt::Debug for Slab<L, SLAB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Slab")
            .field("slab", &SLAB)
            .field("slabs", &self.slabs)
            .field("spares", &self.empties)
            .field("inner", &self.inner)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Gauge;
    use crate::layers::{Buddy, Buffer, Stats};

    /// Many blocks of a few classes, freed in a scrambled order: slabs fill, go full, come
    /// back to partial, empty out, become spares, and beyond the spares go back to the
    /// source; every block keeps its pattern; at the end only spares remain.
    #[test]
    #[cfg_attr(
        miri,
        ignore = "minutes under Miri; slab_over_buffer and one_block_slabs_are_retired cover the logic there"
    )]
    fn slabs_fill_empty_and_go_back() {
        // A buddy heap of 64 KiB blocks up to 2^TOP bytes: slabs given back are reused.
        // (`Box::new_uninit_slice`, not `vec![uninit; n]`, which Miri fills byte by byte.)
        // (Three arenas' worth of buffer, so that one aligned arena fits wherever it lands.)
        const TOP: u32 = if cfg!(miri) { 22 } else { 24 };
        let mut memory = alloc::boxed::Box::<[u8]>::new_uninit_slice(3 << TOP);
        let mut heap: Slab<Stats<Buddy<Buffer<'_>, 16, TOP>>> =
            Slab::new(Stats::new(Buddy::new(Buffer::new(&mut memory))));
        let sizes = [24usize, 100, 1000, 8000];
        let per_size = if cfg!(miri) { 12 } else { 600 };
        let mut live: alloc::vec::Vec<(NonNull<u8>, Layout, u8)> = alloc::vec::Vec::new();
        let mut seed = 0x1234_5678_u32;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed
        };
        for round in 0..3 {
            for i in 0..per_size * sizes.len() {
                let layout = Layout::from_size_align(sizes[i % sizes.len()], 8).unwrap();
                let block = heap.get(layout).expect("room for every block");
                let byte = (i as u8) ^ round;
                // SAFETY: a fresh block of `layout.size()` bytes.
                unsafe { block.as_ptr().write_bytes(byte, layout.size()) };
                live.push((block, layout, byte));
                if next() % 3 == 0 {
                    let pick = next() as usize % live.len();
                    let (block, layout, byte) = live.swap_remove(pick);
                    // SAFETY: a live block of ours with its layout, checked then put once.
                    unsafe {
                        let bytes = core::slice::from_raw_parts(block.as_ptr(), layout.size());
                        assert!(bytes.iter().all(|&b| b == byte), "block overwritten");
                        heap.put(block, layout);
                    }
                }
            }
            heap.check_invariants();
            while !live.is_empty() {
                let pick = next() as usize % live.len();
                let (block, layout, byte) = live.swap_remove(pick);
                // SAFETY: as above.
                unsafe {
                    let bytes = core::slice::from_raw_parts(block.as_ptr(), layout.size());
                    assert!(bytes.iter().all(|&b| b == byte), "block overwritten");
                    heap.put(block, layout);
                }
            }
            heap.check_invariants();
            assert!(heap.live_by_class().iter().all(|&(_, n)| n == 0));
            // Each class keeps its head slab; beyond that only spares remain.
            assert!(
                heap.slabs() <= sizes.len() + Slab::<Buffer<'_>>::EMPTY_KEEP,
                "{} slabs",
                heap.slabs()
            );
            assert_eq!(
                heap.inner().gauge().live,
                heap.slabs() as u64,
                "slabs went back"
            );
        }
        // Natively the test fills many slabs; under Miri a few, which still take every
        // transition (8000-byte blocks are 7 to a slab).
        let slab_bytes = 65536 * (sizes.len() + Slab::<Buffer<'_>>::EMPTY_KEEP) as u64;
        let filled = if cfg!(miri) {
            65536 * 2
        } else {
            3 * slab_bytes
        };
        assert!(
            heap.inner().gauge().peak_bytes > filled,
            "the test filled slabs"
        );
        heap.deinit();
        assert_eq!(heap.slabs(), 0);
    }

    /// Consecutive slabs put their headers at consecutive colours, 128 bytes apart, and
    /// every colour leaves room for the blocks; a slab's header is found from any of its
    /// addresses.
    #[test]
    fn slab_headers_take_every_colour_in_turn() {
        type Small = Slab<Buffer<'static>, 16384>;
        type Usual = Slab<Buffer<'static>, 65536>;
        assert_eq!((Small::COLOURS, Usual::COLOURS), (4, 16));
        let base = 0x7f00_0000_0000_usize;
        for k in 0..40 {
            let start = base + k * 65536;
            assert_eq!(Usual::header_offset(start), (k % 16) * HEADER);
            let at = |addr| NonNull::new(ptr::without_provenance_mut::<u8>(addr)).unwrap();
            let header = Usual::slab_of(at(start));
            for inside in [start, start + 4096, start + 65535] {
                assert_eq!(Usual::slab_of(at(inside)), header);
            }
            assert_eq!(Usual::slab_start(header).as_ptr().addr(), start);
            assert_eq!(Small::header_offset(base + k * 16384), (k % 4) * HEADER);
        }
        // The last colour still holds one block of the largest class of the small slabs.
        let room = 16384 - (Small::COLOURS - 1) * HEADER - HEADER;
        assert!(room >= Small::class_size(Small::class_of(Small::LIMIT)));
    }

    /// Small slabs hold one block of the largest class: a put takes such a slab from full
    /// to empty at once, and it must still be retired.
    #[test]
    fn one_block_slabs_are_retired() {
        // Three arenas' worth: a 4 MiB-aligned arena and its bookkeeping after it fit
        // wherever the box starts (in two, a box starting just past a 4 MiB boundary left
        // no room for one, and the first `get` failed).
        let mut memory = alloc::boxed::Box::<[u8]>::new_uninit_slice(3 << 22);
        let mut heap: Slab<Buddy<Buffer<'_>, 14, 22>, 16384> =
            Slab::new(Buddy::new(Buffer::new(&mut memory)));
        let layout = Layout::from_size_align(8192, 16).unwrap();
        let blocks: alloc::vec::Vec<_> = (0..40).map(|_| heap.get(layout).unwrap()).collect();
        assert_eq!(heap.slabs(), 40);
        for block in blocks {
            // SAFETY: live blocks of `heap` with this layout, put once.
            unsafe { heap.put(block, layout) };
        }
        heap.check_invariants();
        let keep = Slab::<Buddy<Buffer<'_>, 14, 22>, 16384>::EMPTY_KEEP;
        assert!(heap.slabs() <= 1 + keep, "{} slabs left", heap.slabs());
    }

    /// The index `put_in` finds for an offset is the block's for the start of each block
    /// and past every block's for any other offset (inside the header, or before it in the
    /// slab, too), for every class of the largest slabs.
    #[test]
    #[cfg_attr(miri, ignore = "arithmetic on 18 million offsets; nothing for Miri")]
    fn block_indices_come_without_a_division() {
        const SLAB: usize = 1 << 18;
        for class in 0..CLASSES {
            let size = Slab::<Buffer<'static>, SLAB>::class_size(class) as u32;
            let inverse = odd_inverse(size >> size.trailing_zeros());
            let most = (SLAB - HEADER) as u32 / size;
            let index = |offset: u32| {
                offset
                    .wrapping_mul(inverse)
                    .rotate_right(size.trailing_zeros())
            };
            for offset in 0..(SLAB - HEADER) as u32 {
                if offset % size == 0 {
                    assert_eq!(index(offset), offset / size, "size {size}");
                } else {
                    assert!(index(offset) >= most, "size {size}, offset {offset}");
                }
            }
            let before_blocks = Slab::<Buffer<'static>, SLAB>::COLOURS * HEADER;
            for below in 1..=before_blocks as u32 {
                assert!(index(below.wrapping_neg()) >= most, "size {size}");
            }
        }
    }

    /// The classes are the documented ones, and every size up to the limit takes the
    /// tightest (through the table as through the arithmetic).
    #[test]
    #[cfg_attr(miri, ignore = "arithmetic on 32,769 sizes: nothing for Miri to check")]
    fn classes_are_the_documented_ones_and_fit() {
        type Map = Slab<Buffer<'static>, { 1 << 18 }>;
        SlabClasses::check_properties();
        let sizes = [
            16, 32, 48, 64, 80, 96, 112, 128, 144, 160, 176, 192, 208, 224, 240, 256, 288, 320,
            352, 384, 416, 448, 480, 512, 576, 640, 704, 768, 832, 896, 960, 1024, 1152, 1280,
            1408, 1536, 1664, 1792, 1920, 2048, 2304, 2560, 2816, 3072, 3328, 3584, 3840, 4096,
            4608, 5120, 5632, 6144, 6656, 7168, 7680, 8192, 9216, 10240, 11264, 12288, 13312,
            14336, 15360, 16384, 18432, 20480, 22528, 24576, 26624, 28672, 30720, 32768,
        ];
        assert_eq!(CLASSES, sizes.len());
        assert_eq!(Slab::<Buffer<'static>, 16384>::LIMIT, 8192);
        assert_eq!(Slab::<Buffer<'static>>::LIMIT, 8192);
        assert_eq!(Slab::<Buffer<'static>, { 1 << 17 }>::LIMIT, 16384);
        assert_eq!(Map::LIMIT, MAX_LIMIT);
        assert_eq!(Slab::<Buffer<'static>, { 1 << 20 }>::LIMIT, MAX_LIMIT);
        for (class, &size) in sizes.iter().enumerate() {
            assert_eq!(Map::class_size(class), size, "class {class}");
        }
        for size in 0..=MAX_LIMIT {
            let class = Map::class_of(size);
            assert_eq!(class, SlabClasses::class_of(size), "size {size}");
            // The waste bound in the docs: a ninth of the block, or 15 bytes below 128.
            let waste = Map::class_size(class) - size.max(1);
            assert!(
                waste <= 15 || waste * 9 <= Map::class_size(class),
                "size {size}"
            );
        }
    }
}
