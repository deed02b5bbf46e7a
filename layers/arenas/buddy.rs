//! `Buddy<L, MIN_ORDER, MAX_ORDER, CACHE>`: a binary buddy heap over arenas of
//! `2^MAX_ORDER` bytes taken from `L`, its free blocks booked in one [`Bitmap`] per order,
//! its put blocks cached a while before they merge. Entry point: [`Buddy`] and its `Layer` impl.
//!
//! Invariants (checked by `check_invariants` in tests): the arenas keep the
//! [`ArenaChain`]'s (written there); a free block of order `k` at offset `o` of its arena
//! has bit `o >> k` set in that arena's order-`k` bitmap, and is on free list `k` exactly
//! once, and nothing else is; no two free blocks overlap (no free block lies inside a
//! larger free one); no free block has its buddy free at the same order (merging is
//! complete among free blocks); bit `k` of `nonempty` is set exactly when list `k` is not
//! empty. A cached block of order `k` is a block of one of our arenas, on cache
//! `k` once, with no bit set for it or around it at orders `k` and up (it is neither free
//! nor inside a free block), and cache `k` holds at most `CACHE` blocks.

use core::alloc::Layout;
use core::fmt;
use core::mem::size_of;
use core::ptr::{self, NonNull};

use crate::abort::{abort_with, debug_require};
use crate::bitmap::RawBits;
use crate::layer::{
    FREED, FRESH, fill, paranoid, require_grow, require_put, require_shrink, served_size,
};
use crate::{Bitmap, Layer};

use super::arena_chain::{ArenaChain, ArenaShape, LINK_WORDS};
use super::put_cache::PutCache;
use crate::layers::blocks::doubly_linked::{linked_by_fields, push_front, unlink};

/// The links written into every free block; the list of its order goes through them.
#[repr(C)]
struct FreeNode {
    prev: *mut FreeNode,
    next: *mut FreeNode,
}

linked_by_fields!(FreeNode);

/// The largest order whose freed blocks are cached: blocks up to 4 KiB.
const CACHE_TOP_ORDER: u32 = 12;

/// Room for the free list heads of every order a `u64` mask can name.
const ORDER_SLOTS: usize = 64;

// ---- the type, construction and figures --------------------------------------------------

/// A binary buddy heap: blocks of `2^k` bytes for orders `k` in `MIN_ORDER..=MAX_ORDER`,
/// split in halves on the way out and merged with their free buddy on the way back (after
/// a while in the cache, for small blocks: see below).
///
/// Memory comes from `L` one *arena* at a time: `2^MAX_ORDER` bytes aligned to `2^MAX_ORDER`,
/// followed in the same piece by the arena's metadata (one [`Bitmap`] per order, with bit `i` of
/// order `k` set when the block at offset `i << k` is free at that order; about `2^(MAX_ORDER -
/// MIN_ORDER - 2)` bytes in all). A new arena is taken when no free block is large enough, even
/// once the cache is flushed; arenas stay until [`deinit`](Layer::deinit), which returns them to
/// `L`. The free lists are intrusive (their links live in the free blocks) and shared by all
/// arenas, so a `get` finds its block in O(1) plus the splits, and a `put` finds the arena from the
/// address alone (a mask) and merges in O(orders).
///
/// - A request is served from order `max(MIN_ORDER, log2 of the size and the alignment,
///   rounded up)`; every block of order `k` is aligned to `2^k`, so
///   [`MIN_ALIGN`](Layer::MIN_ALIGN) is `2^MIN_ORDER`.
/// - **Requests larger than `2^MAX_ORDER` bytes, or aligned to more than that, get `None`.**
/// - Zero-size requests are served as one byte (a block of `MIN_ORDER`), as the
///   [contract](crate::layer#zero-size) says.
/// - Puts are sized: the layout gives the order, the bitmaps give the buddy's state, no
///   header is kept per block.
/// - `shrink` in place always succeeds, giving back the halves it no longer needs; `grow`
///   in place succeeds when the order does not change.
///
/// **Freed small blocks are cached before they merge** (a lazy buddy system): a put of a
/// block of at most 4 KiB (and below `MAX_ORDER`) pushes it on a stack for its order,
/// holding up to `CACHE` blocks (32 by default), and a get of that order pops it again,
/// with no split, no merge and no bitmap touched; a put beyond `CACHE` merges as usual.
/// A program that frees and allocates blocks of the same sizes, as most do, so pays for
/// splits and merges only when the mix of sizes shifts. Cached blocks count as in use:
/// [`free_blocks`](Buddy::free_blocks) and [`free_bytes`](Buddy::free_bytes) leave them
/// out, [`cached_bytes`](Buddy::cached_bytes) tells them, and
/// [`flush_cache`](Buddy::flush_cache) merges them back. No arena is taken while cached
/// blocks could serve a request: a get that finds no free block large enough flushes the
/// cache and looks again first. At most `CACHE` blocks of each order from `MIN_ORDER` to
/// 12 are held, 256 KiB in all with the default (less when `MAX_ORDER` is small, since an
/// arena's largest block is never cached). `CACHE = 0` makes a strictly eager buddy heap.
///
/// **`Buddy` and [`BlobHeap`](crate::blob_heap::BlobHeap)** are both binary buddy heaps.
/// `Buddy` is a layer for one owner (`&mut self`) in one process: it takes arenas from the
/// layer below as it needs them, links its free lists by address, keeps its bitmaps beside
/// each arena, caches put blocks, and is freed with the layout (sized puts). `BlobHeap`
/// keeps everything (header, bitmaps, free lists) inside one blob of fixed size that the
/// caller gives it, names blocks by their offset, frees by offset alone, and is shared by
/// several handles and processes under a process-shared lock, with
/// [`recover`](crate::blob_heap::BlobHeap::recover) after damage or a dead lock holder.
/// Stack `Buddy` into an allocator; use `BlobHeap` for a heap in shared memory.
///
/// The orders are checked at compile time: `MIN_ORDER <= MAX_ORDER`,
/// `MAX_ORDER <= usize::BITS - 2`, and a `2^MIN_ORDER` block must hold two pointers (so
/// `MIN_ORDER >= 4` on 64-bit targets). A misconfigured `Buddy` does not build:
///
/// ```compile_fail
/// use stratalloc::layers::{Buddy, Buffer};
/// let _ = Buddy::<Buffer<'static>, 10, 4>::new(Buffer::new(&mut []));
/// ```
///
/// ```
/// use core::alloc::Layout;
/// use stratalloc::{Layer, layers::{Buddy, Buffer}};
///
/// let mut memory = vec![core::mem::MaybeUninit::uninit(); 3 << 16];
/// // Arenas of 64 KiB, blocks of 16 bytes and up.
/// let mut buddy = Buddy::<_, 4, 16>::new(Buffer::new(&mut memory));
/// let layout = Layout::from_size_align(100, 8).unwrap();
/// let block = buddy.get(layout).unwrap(); // a block of order 7 (128 bytes)
/// assert!(buddy.owns(block));
/// assert!(buddy.get(Layout::from_size_align(1 << 17, 8).unwrap()).is_none());
/// // SAFETY: `block` came from `buddy` with `layout` and is put back once.
/// unsafe { buddy.put(block, layout) };
/// assert_eq!(buddy.cached_bytes(), 128, "the block waits in the cache for its order");
/// buddy.flush_cache();
/// assert_eq!(buddy.free_blocks(16), 1, "merged back into one whole arena");
/// ```
pub struct Buddy<L: Layer, const MIN_ORDER: u32, const MAX_ORDER: u32, const CACHE: u32 = 32> {
    /// Free list heads, indexed by order.
    heads: [*mut FreeNode; ORDER_SLOTS],
    /// Bit `k` is set when free list `k` is not empty.
    nonempty: u64,
    /// The put blocks of each order not merged yet.
    cache: PutCache<ORDER_SLOTS>,
    /// The arenas taken from `inner`.
    arenas: ArenaChain<Self>,
    inner: L,
}

// SAFETY: a `Buddy` exclusively owns its arenas; the raw pointers are not shared with
// anything else, so moving it to another thread is as safe as moving `L`.
unsafe impl<L: Layer + Send, const MIN_ORDER: u32, const MAX_ORDER: u32, const CACHE: u32> Send
    for Buddy<L, MIN_ORDER, MAX_ORDER, CACHE>
{
}

impl<L: Layer, const MIN_ORDER: u32, const MAX_ORDER: u32, const CACHE: u32>
    Buddy<L, MIN_ORDER, MAX_ORDER, CACHE>
{
    /// Bytes in an arena, and the largest block: `2^MAX_ORDER`.
    pub const ARENA_BYTES: usize = 1 << MAX_ORDER;
    /// The smallest block: `2^MIN_ORDER` bytes.
    pub const MIN_BLOCK: usize = 1 << MIN_ORDER;
    /// [`bitmap_offset`](Self::bitmap_offset) of every order, for the hot paths (0 for
    /// orders outside `MIN_ORDER..=MAX_ORDER`).
    const BITMAP_AT: [usize; ORDER_SLOTS] = {
        let mut table = [0; ORDER_SLOTS];
        let mut k = MIN_ORDER;
        while k <= MAX_ORDER {
            table[k as usize] = Self::bitmap_offset(k);
            k += 1;
        }
        table
    };

    /// A buddy heap over `inner`, holding no arena yet.
    pub const fn new(inner: L) -> Self {
        const {
            assert!(
                MIN_ORDER <= MAX_ORDER,
                "Buddy: MIN_ORDER must not be above MAX_ORDER"
            );
            assert!(
                MAX_ORDER <= usize::BITS - 2,
                "Buddy: MAX_ORDER must leave 2^MAX_ORDER a valid allocation size"
            );
            assert!(
                (1usize << MIN_ORDER) >= size_of::<FreeNode>(),
                "Buddy: a block of MIN_ORDER must hold two pointers (MIN_ORDER >= 4 on 64-bit)"
            );
        }
        Buddy {
            heads: [ptr::null_mut(); ORDER_SLOTS],
            nonempty: 0,
            cache: PutCache::new(),
            arenas: ArenaChain::new(),
            inner,
        }
    }

    crate::layer::layer_below! {
        owns: "the arenas this layer got from the inner one";
        into_inner after release: "every arena";
    }

    /// Arenas held now.
    pub const fn arenas(&self) -> usize {
        self.arenas.len()
    }

    /// Free blocks of `order` in all arenas (0 for an order outside `MIN_ORDER..=MAX_ORDER`).
    pub fn free_blocks(&self, order: u32) -> usize {
        if !(MIN_ORDER..=MAX_ORDER).contains(&order) {
            return 0;
        }
        self.arenas
            .iter()
            // SAFETY: `base` is a live arena; the bitmap is not otherwise in use.
            .map(|base| unsafe { Self::bitmap(Self::meta_of(base.as_ptr()), order) }.len())
            .sum()
    }

    /// Free bytes in all arenas (cached blocks left out).
    pub fn free_bytes(&self) -> usize {
        (MIN_ORDER..=MAX_ORDER)
            .map(|k| self.free_blocks(k) << k)
            .sum()
    }

    /// Bytes of the blocks waiting in the cache: put, but not merged yet.
    pub fn cached_bytes(&self) -> usize {
        (MIN_ORDER..=MAX_ORDER)
            .map(|k| (self.cache.count(k as usize) as usize) << k)
            .sum()
    }

    // ---- the put cache -------------------------------------------------------------------

    /// Merges every cached block back into the free blocks, as if each had been put with
    /// no cache. Returns whether there was any.
    #[cold]
    #[inline(never)]
    pub fn flush_cache(&mut self) -> bool {
        // Taken out, so that the merges can use `self`.
        let Some(mut cache) = self.cache.take_all() else {
            return false;
        };
        cache.drain_all(MIN_ORDER as usize..=Self::CACHE_TOP as usize, |k, block| {
            // SAFETY: a cached block is a block of order `k` in a live arena, neither free
            // nor in use; it is merged once, here.
            unsafe { self.merge(block.as_ptr(), k as u32) }
        });
        true
    }

    /// The largest order the cache holds: blocks up to 4 KiB, never a whole arena; 0 (below
    /// every order) when `CACHE` is 0.
    const CACHE_TOP: u32 = if CACHE == 0 || MAX_ORDER <= MIN_ORDER {
        0
    } else if CACHE_TOP_ORDER < MAX_ORDER {
        CACHE_TOP_ORDER
    } else {
        MAX_ORDER - 1
    };

    /// Whether freed blocks of `order` (one of ours) go to the cache when it has room.
    #[inline(always)]
    const fn caches(order: u32) -> bool {
        MIN_ORDER <= order && order <= Self::CACHE_TOP
    }

    // ---- splitting and merging -----------------------------------------------------------

    /// Books `block`, of `order`, free, merged with its buddies as far as they are free.
    /// (Not inlined, so that `put`'s cached path stays a leaf.)
    ///
    /// # Safety
    ///
    /// `block` is a block of `order` in a live arena of ours, neither free, cached nor in
    /// use.
    #[inline(never)]
    unsafe fn merge(&mut self, block: *mut u8, mut order: u32) {
        let base = block.addr() & !(Self::ARENA_BYTES - 1);
        let mut offset = block.addr() - base;
        let meta = Self::meta_of(block);
        while order < MAX_ORDER {
            let buddy = offset ^ (1 << order);
            // SAFETY: `meta` is the metadata of the block's live arena, `order < MAX_ORDER`,
            // and the index is below `2^(MAX_ORDER - order)`, the bitmap's size.
            if !unsafe { Self::raw_bitmap(meta, order).get(buddy >> order) } {
                break;
            }
            // SAFETY: a set bit means a free block of this order starts at `buddy`, on
            // list `order`; the address is inside the block's arena.
            unsafe { self.unlink(block.with_addr(base + buddy).cast(), order) };
            offset &= !(1 << order);
            order += 1;
        }
        // SAFETY: the merged block lies in the arena, aligned to its order, and is free.
        unsafe { self.push(block.with_addr(base + offset), order) };
    }

    /// A block of `order` off the free lists, split from a larger one as needed; the
    /// cache is flushed, and then an arena taken, when no free block is large enough.
    /// (Not inlined, so that `get`'s cached path stays a leaf that saves no registers.)
    #[inline(never)]
    fn split_for(&mut self, order: u32) -> Option<NonNull<u8>> {
        let mut fitting = self.nonempty & (u64::MAX << order);
        if fitting == 0 && self.flush_cache() {
            fitting = self.nonempty & (u64::MAX << order);
        }
        let mut from = if fitting == 0 {
            self.add_arena()?;
            MAX_ORDER
        } else {
            fitting.trailing_zeros()
        };
        let node = self.heads[from as usize];
        // SAFETY: list `from` is not empty (bit `from` of `nonempty` is set, or an arena was
        // just booked on it), so `node` is its head.
        unsafe { self.unlink(node, from) };
        let block = node.cast::<u8>();
        while from > order {
            from -= 1;
            // SAFETY: the upper half of a free block of order `from + 1` is a free block of
            // order `from`, in the same arena.
            unsafe { self.push(block.add(1 << from), from) };
        }
        // SAFETY: `block` came off a free list, so it lies in an arena and is not null.
        Some(unsafe { NonNull::new_unchecked(block) })
    }

    /// Aborts when `block`, of `order`, is already free or cached, or overlaps a cached
    /// block (debug builds only: a put's caller guarantees none of it).
    ///
    /// # Safety
    ///
    /// `block` is a block of `order` of a live arena of ours.
    unsafe fn require_in_use(&self, block: *mut u8, order: u32, layout: Layout) {
        let offset = block.addr() & (Self::ARENA_BYTES - 1);
        let meta = Self::meta_of(block);
        for k in order..=MAX_ORDER {
            // SAFETY: the caller's duties make `block` a block of a live arena of ours; no
            // other bitmap handle is alive.
            if let Ok(true) = unsafe { Self::bitmap(meta, k) }.get(offset >> k) {
                abort_with(format_args!(
                    "Buddy: put of {block:p} ({layout:?}), which is already free"
                ));
            }
        }
        let (start, end) = (block.addr(), block.addr() + (1 << order));
        let orders = MIN_ORDER as usize..=Self::CACHE_TOP as usize;
        if self.cache.overlaps(orders, start, end, |k| 1 << k) {
            abort_with(format_args!(
                "Buddy: put of {block:p} ({layout:?}), which is already put (cached)"
            ));
        }
    }

    // ---- orders and arena metadata -------------------------------------------------------

    /// Words from the start of an arena's metadata to the bitmap of `order` (the chain's
    /// link comes first).
    const fn bitmap_offset(order: u32) -> usize {
        let mut at = LINK_WORDS;
        let mut k = MIN_ORDER;
        while k < order {
            at += Bitmap::words_for(1 << (MAX_ORDER - k));
            k += 1;
        }
        at
    }

    /// The order that serves `layout`, or `None` when it is larger than an arena.
    #[inline(always)]
    fn order_of(layout: Layout) -> Option<u32> {
        let size = served_size(layout).max(layout.align());
        if size > Self::ARENA_BYTES {
            return None;
        }
        Some(size.next_power_of_two().trailing_zeros().max(MIN_ORDER))
    }

    /// The metadata of the arena that `inside` (any address in its data) belongs to, with
    /// `inside`'s provenance.
    #[inline(always)]
    fn meta_of(inside: *mut u8) -> *mut u8 {
        inside.with_addr((inside.addr() & !(Self::ARENA_BYTES - 1)) + Self::ARENA_BYTES)
    }

    /// The bitmap of `order` in the arena metadata at `meta`.
    ///
    /// # Safety
    ///
    /// `meta` is the metadata of a live arena of this layer (with provenance over it), and
    /// no other `Bitmap` handle over the same words is used while this one lives.
    #[inline(always)]
    unsafe fn bitmap<'m>(meta: *mut u8, order: u32) -> Bitmap<'m> {
        let words = Bitmap::words_for(1 << (MAX_ORDER - order));
        // SAFETY: the bitmap lies inside the metadata, which is `META_WORDS` words long.
        let at = unsafe { meta.cast::<u64>().add(Self::bitmap_offset(order)) };
        // SAFETY: `at` is not null (it is inside an arena); the caller's duties give
        // exclusive, valid access to the words.
        match unsafe { Bitmap::attach_raw(NonNull::new_unchecked(at), words) } {
            Ok(set) => set,
            Err(error) => abort_with(format_args!(
                "Buddy: the order-{order} bitmap at {at:p} is corrupt (memory overrun?): {error}"
            )),
        }
    }

    /// The order-`order` bitmap of the arena metadata at `meta`, for word-level access
    /// without the header check that [`bitmap`](Self::bitmap) makes.
    ///
    /// # Safety
    ///
    /// `meta` is the metadata of a live arena of this layer (with provenance over it),
    /// `order` is in `MIN_ORDER..=MAX_ORDER`, and no `Bitmap` handle over the same words is used
    /// while the result is.
    #[inline(always)]
    unsafe fn raw_bitmap(meta: *mut u8, order: u32) -> RawBits {
        // `order < ORDER_SLOTS`, so the mask changes nothing but spares a bounds check.
        let offset = Self::BITMAP_AT[order as usize & (ORDER_SLOTS - 1)];
        // SAFETY: the bitmap lies inside the metadata, which is `META_WORDS` words long, and
        // `add_arena` made a `Bitmap` there; the caller's duties give exclusive access.
        unsafe { RawBits::new(NonNull::new_unchecked(meta.cast::<u64>().add(offset))) }
    }

    // ---- free lists ----------------------------------------------------------------------

    /// Puts `block`, a free block of `order`, at the head of its list and sets its bit.
    ///
    /// # Safety
    ///
    /// `block` lies in a live arena, aligned to `2^order`, and is not in use or on a list.
    #[inline(always)]
    unsafe fn push(&mut self, block: *mut u8, order: u32) {
        // SAFETY: a free block of at least `MIN_BLOCK` bytes, aligned to it, holds a node;
        // the list's nodes are free blocks of live arenas.
        unsafe { push_front(&mut self.heads[order as usize], block.cast::<FreeNode>()) };
        self.nonempty |= 1 << order;
        let offset = block.addr() & (Self::ARENA_BYTES - 1);
        // SAFETY: `block` is in a live arena and `order` one of ours, so the index is below
        // `2^(MAX_ORDER - order)`, the bitmap's size; no `Bitmap` handle is alive.
        unsafe { Self::raw_bitmap(Self::meta_of(block), order).set(offset >> order) };
    }

    /// Takes `node` off list `order` and clears its bit.
    ///
    /// # Safety
    ///
    /// `node` is on free list `order`.
    #[inline(always)]
    unsafe fn unlink(&mut self, node: *mut FreeNode, order: u32) {
        // SAFETY: `node` and its neighbours are live nodes of list `order`.
        unsafe { unlink(&mut self.heads[order as usize], node) };
        if self.heads[order as usize].is_null() {
            self.nonempty &= !(1 << order);
        }
        let block = node.cast::<u8>();
        let offset = block.addr() & (Self::ARENA_BYTES - 1);
        // SAFETY: `node` is in a live arena and `order` one of ours, so the index is below
        // the bitmap's size; no `Bitmap` handle is alive.
        unsafe { Self::raw_bitmap(Self::meta_of(block), order).reset(offset >> order) };
    }

    // ---- arenas --------------------------------------------------------------------------

    /// Takes a new arena from `L` and books it as one free block of `MAX_ORDER`.
    #[cold]
    fn add_arena(&mut self) -> Option<()> {
        let base = self.arenas.add(&mut self.inner)?.as_ptr();
        // SAFETY: the piece holds `ARENA_BYTES` of data then `META_WORDS` words, aligned to
        // at least 8 since the arena is; it is ours alone.
        unsafe {
            let meta = base.add(Self::ARENA_BYTES);
            for order in MIN_ORDER..=MAX_ORDER {
                let bits = 1 << (MAX_ORDER - order);
                let at = meta.cast::<u64>().add(Self::bitmap_offset(order));
                // Cannot fail: the words were sized by `words_for`.
                let _ = Bitmap::init_raw(NonNull::new_unchecked(at), Bitmap::words_for(bits), bits);
            }
            self.push(base, MAX_ORDER);
        }
        Some(())
    }

    /// Gives every arena back to `L`, leaving this layer empty.
    fn release(&mut self) {
        self.arenas.put_all(&mut self.inner);
        self.heads = [ptr::null_mut(); ORDER_SLOTS];
        self.nonempty = 0;
        self.cache.clear();
    }
}

// ---- the ArenaShape and Layer impls ------------------------------------------------------

impl<L: Layer, const MIN_ORDER: u32, const MAX_ORDER: u32, const CACHE: u32> ArenaShape
    for Buddy<L, MIN_ORDER, MAX_ORDER, CACHE>
{
    const NAME: &'static str = "Buddy";
    const BYTES: usize = Self::ARENA_BYTES;
    /// The chain's link, then one bitmap per order.
    const META_WORDS: usize = Self::bitmap_offset(MAX_ORDER + 1);
}

// SAFETY: every block handed out is a block of some order `k` carved by halving from a
// whole arena got from `L`, aligned to `2^k >= max(size, align)`; it was taken off the free
// lists (and its bitmap bit cleared) or off the cache of its order when handed out, so it
// is disjoint from every free or cached block and from every other live block. A put
// caches the block (its bit stays clear, so no merge takes it) or books it free again,
// merging it only with a buddy the bitmaps show free at the same order. Arenas go back to
// `L` at deinit only.
unsafe impl<L: Layer, const MIN_ORDER: u32, const MAX_ORDER: u32, const CACHE: u32> Layer
    for Buddy<L, MIN_ORDER, MAX_ORDER, CACHE>
{
    const MIN_ALIGN: usize = 1 << MIN_ORDER;
    const OWNS_EXACT: bool = true;
    const OWNS_INTERIOR: bool = true;

    #[inline]
    fn get(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        paranoid(self);
        let order = Self::order_of(layout)?;
        let block = if Self::caches(order)
            && let Some(block) = self.cache.pop(order as usize)
        {
            block
        } else {
            self.split_for(order)?
        };
        // SAFETY: a block of `order`, ours until it is handed out.
        unsafe { fill::<Self>(block.as_ptr(), 0, 1 << order, FRESH) };
        Some(block)
    }
    #[inline]
    unsafe fn put(&mut self, ptr: NonNull<u8>, layout: Layout) {
        paranoid(self);
        require_put::<Self>(ptr, layout);
        let Some(order) = Self::order_of(layout) else {
            debug_require!(false, "Buddy: put of {ptr:p} with {layout:?}, never served");
            return;
        };
        let block = ptr.as_ptr();
        debug_require!(
            block.addr().is_multiple_of(1 << order),
            "Buddy: put of {ptr:p}, not a block of order {order}"
        );
        if cfg!(debug_assertions) {
            self.arenas.require_ours("put", ptr, layout);
            // SAFETY: the caller's duties make `block` a block of `order` of ours (and it
            // lies in one of our arenas, just checked).
            unsafe { self.require_in_use(block, order, layout) };
        }
        // SAFETY: the caller gives up the block of `order`; its links (a cache's or a free
        // list's) are written after the fill.
        unsafe { fill::<Self>(block, size_of::<FreeNode>(), 1 << order, FREED) };
        // SAFETY: the block is ours, of at least `MIN_BLOCK` bytes aligned to them (room
        // for the link), and no longer in use, nor cached or free (the caller's duties).
        if Self::caches(order) && unsafe { self.cache.push(order as usize, ptr, CACHE) } {
            return;
        }
        // SAFETY: the caller's duties make `block` a block of `order` of ours, in use until
        // now.
        unsafe { self.merge(block, order) };
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
        Self::order_of(new).is_some() && Self::order_of(new) == Self::order_of(old)
    }

    unsafe fn shrink(&mut self, ptr: NonNull<u8>, old: Layout, new: Layout) -> bool {
        paranoid(self);
        require_shrink::<Self>(ptr, old, new);
        let (Some(from), Some(to)) = (Self::order_of(old), Self::order_of(new)) else {
            return false;
        };
        if cfg!(debug_assertions) && from > to {
            self.arenas.require_ours("shrink", ptr, old);
        }
        let mut order = from;
        while order > to {
            order -= 1;
            // SAFETY: the block is ours, of order `from`; its upper half at each order below
            // is no longer needed once the block is of order `to`, and its buddy (the lower
            // half) stays in use, so it is booked free without merging.
            unsafe { self.push(ptr.as_ptr().add(1 << order), order) };
        }
        true
    }

    fn owns(&self, ptr: NonNull<u8>) -> bool {
        self.arenas.find(ptr.as_ptr().addr()).is_some()
    }

    fn check_invariants(&self) {
        let fail = |what: core::fmt::Arguments<'_>| -> ! {
            abort_with(format_args!("Buddy invariant broken: {what}"))
        };
        self.arenas.check();
        let mut free = [0usize; ORDER_SLOTS];
        for base in self.arenas.iter() {
            let meta = Self::meta_of(base.as_ptr());
            for k in MIN_ORDER..=MAX_ORDER {
                // SAFETY: `base` is a live arena; one bitmap handle at a time.
                let map = unsafe { Self::bitmap(meta, k) };
                if let Err(error) = map.check() {
                    fail(format_args!("order {k} bitmap of arena {base:p}: {error}"));
                }
                free[k as usize] += map.len();
                let mut at = map.first_set();
                while let Some(i) = at {
                    if k < MAX_ORDER && map.get(i ^ 1) == Ok(true) {
                        fail(format_args!(
                            "free buddies at order {k} not merged, arena {base:p} index {i}"
                        ));
                    }
                    for up in k + 1..=MAX_ORDER {
                        // SAFETY: as above; `map` is not used during this call.
                        let outer = unsafe { Self::bitmap(meta, up) };
                        if outer.get(i >> (up - k)) == Ok(true) {
                            fail(format_args!(
                                "free block of order {k} at index {i} of arena {base:p} \
                                 lies inside a free block of order {up}"
                            ));
                        }
                    }
                    at = map.next_set(i + 1);
                }
            }
        }
        for k in 0..ORDER_SLOTS as u32 {
            if !Self::caches(k) && self.cache.count(k as usize) != 0 {
                fail(format_args!("a cache for order {k}, which is not cached"));
            }
            let mut each = |block: NonNull<u8>| {
                let addr = block.as_ptr().addr();
                let Some(base) = self.arenas.find(addr) else {
                    fail(format_args!(
                        "cached block {block:p} of order {k} is in no arena"
                    ));
                };
                let offset = addr - base.as_ptr().addr();
                if !offset.is_multiple_of(1 << k) {
                    fail(format_args!(
                        "cached block {block:p} is not a block of order {k}"
                    ));
                }
                for up in k..=MAX_ORDER {
                    // SAFETY: `base` is a live arena; one bitmap handle at a time.
                    let map = unsafe { Self::bitmap(Self::meta_of(base.as_ptr()), up) };
                    if map.get(offset >> up) == Ok(true) {
                        fail(format_args!(
                            "cached block {block:p} of order {k} is (inside) a free block of \
                             order {up}"
                        ));
                    }
                }
            };
            if let Err(error) = self.cache.check(k as usize, CACHE, &mut each) {
                fail(format_args!("the cache of order {k} {error}"));
            }
        }
        for k in 0..ORDER_SLOTS as u32 {
            let head = self.heads[k as usize];
            if (self.nonempty >> k & 1 == 1) == head.is_null() {
                fail(format_args!("nonempty mask differs from list {k}"));
            }
            if !(MIN_ORDER..=MAX_ORDER).contains(&k) {
                if !head.is_null() {
                    fail(format_args!("a list for order {k}, outside the orders"));
                }
                continue;
            }
            let mut count = 0;
            let mut prev = ptr::null_mut();
            let mut node = head;
            while !node.is_null() {
                count += 1;
                if count > free[k as usize] {
                    fail(format_args!("list {k} is longer than its bitmaps say"));
                }
                let addr = node.addr();
                let Some(base) = self.arenas.find(addr) else {
                    fail(format_args!("node {node:p} on list {k} is in no arena"));
                };
                let offset = addr - base.as_ptr().addr();
                // SAFETY: `base` is a live arena.
                let map = unsafe { Self::bitmap(Self::meta_of(base.as_ptr()), k) };
                if !offset.is_multiple_of(1 << k) || map.get(offset >> k) != Ok(true) {
                    fail(format_args!("node {node:p} on list {k} is not booked free"));
                }
                // SAFETY: `node` is a free block of ours holding a node.
                unsafe {
                    if (*node).prev != prev {
                        fail(format_args!("list {k} back link at {node:p}"));
                    }
                    prev = node;
                    node = (*node).next;
                }
            }
            if count != free[k as usize] {
                fail(format_args!(
                    "list {k} has {count} blocks, the bitmaps {}",
                    free[k as usize]
                ));
            }
        }
        self.inner.check_invariants();
    }
}

impl<L: Layer, const MIN_ORDER: u32, const MAX_ORDER: u32, const CACHE: u32> Drop
    for Buddy<L, MIN_ORDER, MAX_ORDER, CACHE>
{
    fn drop(&mut self) {
        self.deinit();
    }
}

impl<L: Layer + fmt::Debug, const MIN_ORDER: u32, const MAX_ORDER: u32, const CACHE: u32> fmt::Debug
    for Buddy<L, MIN_ORDER, MAX_ORDER, CACHE>
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Buddy")
            .field("orders", &(MIN_ORDER..=MAX_ORDER))
            .field("arenas", &self.arenas.len())
            .field("free_bytes", &self.free_bytes())
            .field("cached_bytes", &self.cached_bytes())
            .field("inner", &self.inner)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::Buffer;
    use core::mem::MaybeUninit;

    /// Eager (no cache), so that every put merges at once.
    type Small<'a> = Buddy<Buffer<'a>, 4, 10, 0>;
    /// A cache of two blocks per order.
    type Cached<'a> = Buddy<Buffer<'a>, 4, 10, 2>;

    fn layout(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).unwrap()
    }

    #[test]
    fn splits_and_merges_back_to_one_block() {
        let mut memory = alloc::vec![MaybeUninit::uninit(); 4096];
        let mut buddy = Small::new(Buffer::new(&mut memory));
        let a = buddy.get(layout(16, 1)).unwrap();
        buddy.check_invariants();
        // One block of each order from 4 to 9 is left free by the splits.
        for k in 4..10 {
            assert_eq!(buddy.free_blocks(k), 1, "order {k}");
        }
        let b = buddy.get(layout(16, 1)).unwrap();
        assert_eq!(
            b.as_ptr().addr() ^ a.as_ptr().addr(),
            16,
            "a and b are buddies"
        );
        let c = buddy.get(layout(300, 1)).unwrap();
        assert_eq!(c.as_ptr().addr() % 512, 0);
        buddy.check_invariants();
        // SAFETY: each block came from `buddy` with the layout given, once.
        unsafe {
            buddy.put(b, layout(16, 1));
            buddy.check_invariants();
            buddy.put(c, layout(300, 1));
            buddy.check_invariants();
            buddy.put(a, layout(16, 1));
        }
        buddy.check_invariants();
        assert_eq!(buddy.free_blocks(10), 1);
        assert_eq!(buddy.free_bytes(), 1024);
        assert_eq!(buddy.arenas(), 1);
    }

    #[test]
    fn alignment_and_size_limits() {
        let mut memory = alloc::vec![MaybeUninit::uninit(); 8192];
        let mut buddy = Small::new(Buffer::new(&mut memory));
        assert!(buddy.get(layout(1025, 1)).is_none());
        assert!(buddy.get(layout(1, 2048)).is_none());
        let whole = buddy.get(layout(1024, 8)).unwrap();
        let aligned = buddy.get(layout(1, 256)).unwrap();
        assert_eq!(aligned.as_ptr().addr() % 256, 0);
        assert_eq!(buddy.arenas(), 2);
        // SAFETY: both came from `buddy` with these layouts.
        unsafe {
            assert!(buddy.shrink(whole, layout(1024, 8), layout(10, 8)));
            buddy.check_invariants();
            // One left by splitting the second arena for `aligned`, one from the shrink.
            assert_eq!(buddy.free_blocks(9), 2, "the upper half went back");
            assert_eq!(buddy.free_blocks(4), 1);
            assert!(buddy.grow(aligned, layout(1, 256), layout(200, 256)));
            assert!(!buddy.grow(aligned, layout(200, 256), layout(300, 256)));
            buddy.put(whole, layout(10, 8));
            buddy.put(aligned, layout(200, 256));
        }
        buddy.check_invariants();
        assert_eq!(buddy.free_blocks(10), 2);
        buddy.deinit();
        assert_eq!((buddy.arenas(), buddy.free_bytes()), (0, 0));
    }

    #[test]
    fn a_put_block_waits_in_the_cache_and_is_served_again() {
        let mut memory = alloc::vec![MaybeUninit::uninit(); 4096];
        let mut buddy = Cached::new(Buffer::new(&mut memory));
        let a = buddy.get(layout(16, 1)).unwrap();
        let free = buddy.free_bytes();
        // SAFETY: got just above.
        unsafe { buddy.put(a, layout(16, 1)) };
        buddy.check_invariants();
        assert_eq!(buddy.cached_bytes(), 16);
        assert_eq!(buddy.free_bytes(), free, "a cached block is not free");
        assert_eq!(
            buddy.get(layout(10, 8)),
            Some(a),
            "same order, from the cache"
        );
        assert_eq!(buddy.cached_bytes(), 0);
        // SAFETY: got just above.
        unsafe { buddy.put(a, layout(10, 8)) };
        assert!(buddy.flush_cache());
        assert!(!buddy.flush_cache(), "nothing left to flush");
        buddy.check_invariants();
        assert_eq!(buddy.free_blocks(10), 1, "merged back whole");
    }

    #[test]
    fn puts_beyond_the_cache_depth_merge() {
        let mut memory = alloc::vec![MaybeUninit::uninit(); 4096];
        let mut buddy = Cached::new(Buffer::new(&mut memory));
        let blocks: alloc::vec::Vec<_> =
            (0..4).map(|_| buddy.get(layout(32, 8)).unwrap()).collect();
        for &block in &blocks {
            // SAFETY: each got above, put once.
            unsafe { buddy.put(block, layout(32, 8)) };
            buddy.check_invariants();
        }
        assert_eq!(
            buddy.cached_bytes(),
            2 * 32,
            "two cached, the other two merged"
        );
        assert_eq!(buddy.free_bytes(), 1024 - 2 * 32);
        let whole = buddy.get(layout(1024, 8));
        assert!(
            whole.is_some(),
            "the get flushed the cache to find a whole arena"
        );
        assert_eq!(buddy.arenas(), 1);
        assert_eq!(buddy.cached_bytes(), 0);
    }

    #[test]
    fn a_get_flushes_the_cache_before_it_takes_an_arena() {
        // Room for more than one arena: the test is that no second one is taken.
        let mut memory = alloc::vec![MaybeUninit::uninit(); 8192];
        let mut buddy = Buddy::<Buffer<'_>, 4, 10>::new(Buffer::new(&mut memory));
        let blocks: alloc::vec::Vec<_> =
            (0..64).map(|_| buddy.get(layout(16, 1)).unwrap()).collect();
        for &block in &blocks {
            // SAFETY: each got above, put once.
            unsafe { buddy.put(block, layout(16, 1)) };
        }
        assert_eq!(buddy.cached_bytes(), 32 * 16, "the default depth, 32");
        let whole = buddy.get(layout(1024, 1)).expect("the cache merged back");
        buddy.check_invariants();
        assert_eq!(buddy.arenas(), 1);
        // SAFETY: got just above.
        unsafe { buddy.put(whole, layout(1024, 1)) };
        assert_eq!(buddy.free_blocks(10), 1, "a whole arena is never cached");
    }

    #[test]
    fn blocks_above_4_kib_are_never_cached() {
        let mut memory = alloc::boxed::Box::<[u8]>::new_uninit_slice(3 << 16);
        let mut buddy = Buddy::<Buffer<'_>, 4, 16>::new(Buffer::new(&mut memory));
        let (big, small) = (layout(8192, 8), layout(4096, 8));
        let a = buddy.get(big).unwrap();
        let b = buddy.get(small).unwrap();
        // SAFETY: each got above, put once.
        unsafe {
            buddy.put(a, big);
            assert_eq!(buddy.cached_bytes(), 0, "order 13 merges at once");
            buddy.put(b, small);
        }
        assert_eq!(buddy.cached_bytes(), 4096, "order 12 is cached");
        buddy.check_invariants();
    }

    #[test]
    fn an_eager_heap_caches_nothing() {
        let mut memory = alloc::vec![MaybeUninit::uninit(); 4096];
        let mut buddy = Small::new(Buffer::new(&mut memory));
        let a = buddy.get(layout(16, 1)).unwrap();
        // SAFETY: got just above.
        unsafe { buddy.put(a, layout(16, 1)) };
        assert_eq!(buddy.cached_bytes(), 0);
        assert!(!buddy.flush_cache());
        assert_eq!(buddy.free_blocks(10), 1);
    }
}
