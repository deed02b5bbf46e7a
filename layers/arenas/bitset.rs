//! `Bitset<L, BLOCK, ARENA, CACHE>`: fixed-size blocks in arenas taken from `L`, one bit
//! per block in a [`Bitmap`]; larger requests take runs of consecutive blocks, found through
//! a summary of the bitmap kept beside it (the [`RunIndex`] in `bitset/run_index.rs`);
//! put runs are cached a while before they go free. Entry point: [`Bitset`] and its `Layer` impl.
//!
//! Invariants (checked by `check_invariants` in tests): the arenas keep the
//! [`ArenaChain`]'s (written there); a block's bit is set exactly while it belongs to a live
//! run; each arena's bitmap keeps the `Bitmap` invariants (its count matches its bits);
//! each arena's run index bounds its bitmap from above: every bitmap
//! word's recorded class is at least the number of lengths `2^c` (`c < 7`) of free runs
//! that start in it, each entry of a level above is at least the largest of the 64 below
//! it, and no word below `first[c]` has a recorded class above `c` (the full list is on
//! [`RunIndex`]). The bitmap is the truth; the index only says where not to look. A cached
//! run of `n` blocks is a run in use of one of our arenas (all its bits set), on cache `n`
//! once, and cache `n` holds at most `CACHE` runs.

mod run_index;

use core::alloc::Layout;
use core::fmt;
use core::mem::size_of;
use core::ptr::NonNull;

use crate::abort::{abort_with, debug_require};
use crate::bitmap::RawBits;
use crate::layer::{
    FREED, FRESH, fill, paranoid, require_grow, require_put, require_shrink, served_size,
};
use crate::{Bitmap, Layer};
use run_index::{CLASSES, RunIndex, Words, class_of};

use super::arena_chain::{ArenaChain, ArenaShape, LINK_WORDS};
use super::put_cache::PutCache;

/// The longest run a put caches, in blocks (and at most `CACHED_RUN_BYTES`).
const CACHED_RUN_BLOCKS: usize = 16;
/// The most bytes a cached run holds.
const CACHED_RUN_BYTES: usize = 4096;
/// Stacks of the put cache, one per run length (0 unused).
const CACHE_SLOTS: usize = (CACHED_RUN_BLOCKS + 1).next_power_of_two();

/// The bitmap size of a `Bitset<_, BLOCK, ARENA>`, for its [`RunIndex`].
struct Geometry<const BLOCK: usize, const ARENA: usize>;

impl<const BLOCK: usize, const ARENA: usize> Words for Geometry<BLOCK, ARENA> {
    const WORDS: usize = (ARENA / BLOCK).div_ceil(64);
}

/// The run index of an arena of a `Bitset<_, BLOCK, ARENA>`.
type Index<const BLOCK: usize, const ARENA: usize> = RunIndex<Geometry<BLOCK, ARENA>>;

// ---- runs inside a bitmap word -----------------------------------------------------------

/// Bit `i` is set when bits `i..i + n` of `free` are all set (`1 <= n <= 64`): the starts of
/// the runs of `n` that lie inside the word: the starts of runs of `2^f <= n` (by doubling,
/// `f` steps), and of two such runs `n - 2^f` apart, which overlap. (Not all seven doublings
/// and a pick from an array: that array went through the stack on every search.)
#[inline(always)]
fn runs_in_word(free: u64, n: usize) -> u64 {
    let f = n.ilog2();
    let mut runs = free;
    for k in 0..f {
        runs &= runs >> (1u32 << k);
    }
    runs & (runs >> ((n - (1 << f)) & 63))
}

/// The first start of a run of `n` free blocks (`1 <= n <= 64`) inside word `lo` or running
/// on into the next word `hi`, among the starts in `starts` (for a `stride` below 64; only
/// bit 0 for larger strides, whose runs cannot cross into `hi` and still start in `lo`).
#[inline(always)]
fn fit_in_word(lo: u64, hi: u64, n: usize, starts: u64, stride: usize) -> Option<usize> {
    let found = runs_in_word(lo, n) & starts;
    if found != 0 {
        return Some(found.trailing_zeros() as usize);
    }
    // The run at the top of `lo`, from its first allowed start, continued into `hi`.
    let top = lo.leading_ones() as usize;
    let start = (64 - top + (stride - 1)) & !(stride - 1);
    (top != 0 && start < 64 && 64 - start + hi.trailing_ones() as usize >= n).then_some(start)
}

// ---- the type, construction and accessors ------------------------------------------------

/// The bitmapped-block allocator: memory is cut into blocks of `BLOCK` bytes, one bit each
/// (set = in use), and a request takes a run of `n = ceil(size / BLOCK)` clear bits that
/// starts at its alignment.
///
/// Which run: for `n <= 64`, the first fit inside the lowest bitmap word where a run of
/// `n.next_power_of_two()` free blocks starts (any such word has a fit), or, when no word
/// has one, the first fit of all. Longer runs take the first fit. A summary of the bitmap,
/// a class per word (the longest free run starting in it, to a power of two) under a
/// max-tree of fan-out 64, leads the search to those words in a few loads; a put raises the
/// classes of the words it frees blocks in, and a get leaves them high until a search
/// finds them so.
///
/// Memory comes from `L` one *arena* at a time: `ARENA` bytes (1 MiB unless given) aligned to
/// `ARENA`, followed in the same piece by the arena's bitmap (`ARENA / BLOCK` bits) and its summary
/// (about a byte per 64 blocks). A put finds its arena from the address alone (a mask) and clears
/// the run's bits (or caches the run: see below). A new arena is taken when no arena has a fitting
/// run, even once the cache is flushed; arenas stay until [`deinit`](Layer::deinit), which returns
/// them to `L`.
///
/// - Every block is aligned to `BLOCK` ([`MIN_ALIGN`](Layer::MIN_ALIGN)); larger
///   alignments, up to `ARENA`, are served by starting the run at a multiple of
///   `align / BLOCK` blocks.
/// - **Requests larger than `ARENA` bytes, or aligned to more than that, get `None`.**
/// - Zero-size requests take one block, as the [contract](crate::layer#zero-size) says.
/// - `shrink` in place always succeeds and frees the tail of the run; `grow` in place
///   succeeds when the blocks after the run are free.
///
/// **Put runs are cached before they go free**, as [`Buddy`](super::Buddy) caches its
/// blocks: a put of a run of at most 16 blocks and 4 KiB pushes it on a stack for its
/// length, holding up to `CACHE` runs (32 by default), and a get of that length (aligned to
/// no more than `BLOCK`) pops it again, without a search or a bitmap write. A put beyond
/// `CACHE` frees the run. Cached runs count as in use: [`used_blocks`](Bitset::used_blocks)
/// includes them, [`cached_blocks`](Bitset::cached_blocks) tells them, and
/// [`flush_cache`](Bitset::flush_cache) frees them. No arena is taken while cached runs
/// could serve a request: a get that finds no fitting run flushes the cache and searches
/// again first. (Blocks smaller than a pointer, or aligned to less, are never cached, since
/// a cached run holds a link.) `CACHE = 0` frees every run at its put.
///
/// `BLOCK` and `ARENA` must be powers of two with `BLOCK <= ARENA <= 2^(usize::BITS - 2)`
/// and `ARENA >= 8` (checked at compile time). A misconfigured `Bitset` does not build:
///
/// ```compile_fail
/// use stratalloc::layers::{Bitset, Buffer};
/// let _ = Bitset::<Buffer<'static>, 48>::new(Buffer::new(&mut []));
/// ```
///
/// ```compile_fail
/// use stratalloc::layers::{Bitset, Buffer};
/// // Arenas of 4 bytes would leave the bitmap after them unaligned.
/// let _ = Bitset::<Buffer<'static>, 1, 4>::new(Buffer::new(&mut []));
/// ```
///
/// ```
/// use core::alloc::Layout;
/// use stratalloc::{Layer, layers::{Bitset, Buffer}};
///
/// let mut memory = vec![core::mem::MaybeUninit::uninit(); 3 << 16];
/// // 64-byte blocks in arenas of 64 KiB.
/// let mut blocks = Bitset::<_, 64, 65536>::new(Buffer::new(&mut memory));
/// let layout = Layout::from_size_align(200, 8).unwrap();
/// let run = blocks.get(layout).unwrap(); // four blocks
/// assert_eq!(blocks.used_blocks(), 4);
/// // SAFETY: `run` came from `blocks` with `layout` and is put back once.
/// unsafe { blocks.put(run, layout) };
/// assert_eq!(blocks.cached_blocks(), 4, "the run waits in the cache for its length");
/// blocks.flush_cache();
/// assert_eq!(blocks.used_blocks(), 0);
/// ```
pub struct Bitset<L: Layer, const BLOCK: usize, const ARENA: usize = 1048576, const CACHE: u32 = 32>
{
    /// The arenas taken from `inner`.
    arenas: ArenaChain<Self>,
    /// The put runs of each length not freed yet.
    cache: PutCache<CACHE_SLOTS>,
    inner: L,
}

// SAFETY: a `Bitset` exclusively owns its arenas; the raw pointers are not shared with
// anything else, so moving it to another thread is as safe as moving `L`.
unsafe impl<L: Layer + Send, const BLOCK: usize, const ARENA: usize, const CACHE: u32> Send
    for Bitset<L, BLOCK, ARENA, CACHE>
{
}

impl<L: Layer, const BLOCK: usize, const ARENA: usize, const CACHE: u32>
    Bitset<L, BLOCK, ARENA, CACHE>
{
    /// Blocks in an arena: bits in its bitmap.
    pub const BLOCKS: usize = ARENA / BLOCK;
    /// Words of bits in an arena's bitmap.
    const WORDS: usize = Self::BLOCKS.div_ceil(64);
    /// The bits of the last bitmap word that are blocks (the others are padding).
    const LAST_MASK: u64 = u64::MAX >> ((64 - Self::BLOCKS % 64) % 64);
    /// Where the run index starts in the metadata, in words (after the chain's link and
    /// the bitmap).
    const INDEX_AT: usize = LINK_WORDS + Bitmap::words_for(Self::BLOCKS);

    /// A bitmapped-block heap over `inner`, holding no arena yet.
    pub const fn new(inner: L) -> Self {
        const {
            assert!(
                BLOCK.is_power_of_two(),
                "Bitset: BLOCK must be a power of two"
            );
            assert!(
                ARENA.is_power_of_two(),
                "Bitset: ARENA must be a power of two"
            );
            assert!(
                BLOCK <= ARENA,
                "Bitset: BLOCK must not be larger than ARENA"
            );
            assert!(
                ARENA >= 8,
                "Bitset: ARENA must be at least 8 (its bitmap words follow the arena)"
            );
            assert!(
                ARENA <= 1 << (usize::BITS - 2),
                "Bitset: ARENA must leave room for a valid allocation size"
            );
        }
        Bitset {
            arenas: ArenaChain::new(),
            cache: PutCache::new(),
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

    // ---- the arena search and the put cache ----------------------------------------------

    /// A run of `blocks` starting at a multiple of `stride`, from the first arena that has
    /// one; the cache is flushed, and then an arena taken, when none has. (Not inlined, so
    /// that `get`'s cached path stays a leaf that saves no registers.)
    #[inline(never)]
    fn search_arenas(&mut self, blocks: usize, stride: usize) -> Option<NonNull<u8>> {
        loop {
            for base in self.arenas.iter() {
                // SAFETY: `base` is a live arena; its metadata follows its data.
                let meta = unsafe { base.as_ptr().add(ARENA) };
                // SAFETY: as above.
                if let Some(at) = unsafe { Self::take(meta, blocks, stride) } {
                    // SAFETY: block `at` lies inside the arena.
                    return Some(unsafe { base.add(at * BLOCK) });
                }
            }
            if !self.flush_cache() {
                break;
            }
        }
        let base = self.add_arena()?;
        // SAFETY: a fresh arena, whose metadata follows its data; its run starts at block 0,
        // which fits any request that `blocks_of` accepted.
        let at = unsafe { Self::take_from_fresh(base.as_ptr().add(ARENA), blocks, stride) }?;
        // SAFETY: block `at` lies inside the new arena.
        Some(unsafe { base.add(at * BLOCK) })
    }

    /// [`take`](Self::take) from a fresh arena, out of line, so that `search_arenas` holds
    /// one copy of the search (a second one cost it register spills on every call).
    ///
    /// # Safety
    ///
    /// As for `take`.
    #[cold]
    #[inline(never)]
    unsafe fn take_from_fresh(meta: *mut u8, blocks: usize, stride: usize) -> Option<usize> {
        // SAFETY: the caller's duties.
        unsafe { Self::take(meta, blocks, stride) }
    }

    /// Blocks of the runs waiting in the cache: put, but not free yet.
    pub fn cached_blocks(&self) -> usize {
        (1..=CACHED_RUN_BLOCKS)
            .map(|n| n * self.cache.count(n) as usize)
            .sum()
    }

    /// Frees every cached run, as if each had been put with no cache. Returns whether there
    /// was any.
    #[cold]
    #[inline(never)]
    pub fn flush_cache(&mut self) -> bool {
        // Taken out, so that the frees can use `self`.
        let Some(mut cache) = self.cache.take_all() else {
            return false;
        };
        cache.drain_all(1..=CACHED_RUN_BLOCKS, |n, run| {
            let (meta, at) = Self::locate(run);
            // SAFETY: a cached run is a live run of `n` blocks of ours, freed once here.
            unsafe { Self::free_run(meta, at, n) };
        });
        true
    }

    /// Whether put runs of `blocks` blocks go to the cache when it has room.
    #[inline(always)]
    const fn caches(blocks: usize) -> bool {
        CACHE > 0
            && BLOCK >= size_of::<*mut u8>()
            && BLOCK >= align_of::<*mut u8>()
            && blocks <= CACHED_RUN_BLOCKS
            && blocks * BLOCK <= CACHED_RUN_BYTES
    }

    /// Blocks in use in all arenas, cached runs included.
    pub fn used_blocks(&self) -> usize {
        self.arenas
            .iter()
            // SAFETY: `base` is a live arena, its metadata after its data; no other bitmap
            // handle is alive.
            .map(|base| unsafe { Self::bitmap(base.as_ptr().add(ARENA)) }.len())
            .sum()
    }

    /// Blocks that serve `layout`, and the stride (in blocks) its run must start at; `None`
    /// when it does not fit an arena.
    #[inline(always)]
    fn blocks_of(layout: Layout) -> Option<(usize, usize)> {
        let blocks = served_size(layout).div_ceil(BLOCK);
        if blocks > Self::BLOCKS || layout.align() > ARENA {
            return None;
        }
        Some((blocks, (layout.align() / BLOCK).max(1)))
    }

    // ---- an arena's bitmap and run index -------------------------------------------------

    /// The bitmap of the arena whose metadata is at `meta`.
    ///
    /// # Safety
    ///
    /// `meta` is the metadata of a live arena of this layer (with provenance over it), and
    /// no other `Bitmap` handle over its words is used while this one lives.
    #[inline(always)]
    unsafe fn bitmap<'m>(meta: *mut u8) -> Bitmap<'m> {
        // SAFETY: the bitmap follows the chain's link inside the metadata.
        let at = unsafe { meta.cast::<u64>().add(LINK_WORDS) };
        // SAFETY: `at` is inside an arena, so not null; the caller's duties give exclusive,
        // valid access to the words.
        match unsafe {
            Bitmap::attach_raw(NonNull::new_unchecked(at), Bitmap::words_for(Self::BLOCKS))
        } {
            Ok(set) => set,
            Err(error) => abort_with(format_args!(
                "Bitset: the bitmap at {at:p} is corrupt (memory overrun?): {error}"
            )),
        }
    }

    /// The bitmap of the arena whose metadata is at `meta`, for word-level access without the
    /// header check that [`bitmap`](Self::bitmap) makes.
    ///
    /// # Safety
    ///
    /// `meta` is the metadata of a live arena of this layer (with provenance over it), and
    /// no `Bitmap` handle over its words is used while the result is.
    #[inline(always)]
    unsafe fn raw_bitmap(meta: *mut u8) -> RawBits {
        // SAFETY: the bitmap follows the chain's link inside the metadata, where `add_arena`
        // made a `Bitmap`; the caller's duties give exclusive access. Not null: inside an
        // arena.
        unsafe { RawBits::new(NonNull::new_unchecked(meta.cast::<u64>().add(LINK_WORDS))) }
    }

    /// The run index of the arena whose metadata is at `meta`.
    ///
    /// # Safety
    ///
    /// `meta` is the metadata of a live arena of this layer (with provenance over it); the
    /// result is used while nothing else accesses the index.
    #[inline(always)]
    unsafe fn index(meta: *mut u8) -> Index<BLOCK, ARENA> {
        // SAFETY: the index follows the bitmap inside the metadata, `INDEX_WORDS` words,
        // aligned to 8; the caller's duties make it ours.
        unsafe { RunIndex::new(meta.cast::<u64>().add(Self::INDEX_AT)) }
    }

    /// The free blocks of bitmap word `w` as set bits (padding past `BLOCKS` counts as in
    /// use); 0 for `w == WORDS`.
    ///
    /// # Safety
    ///
    /// `map` is the bitmap of a live arena of this layer; `w <= WORDS`.
    #[inline(always)]
    unsafe fn free_word(map: RawBits, w: usize) -> u64 {
        if w == Self::WORDS {
            return 0;
        }
        // SAFETY: `w < WORDS`; the caller's duties.
        let free = !unsafe { map.word(w).read() };
        if w + 1 == Self::WORDS {
            free & Self::LAST_MASK
        } else {
            free
        }
    }

    /// The class of bitmap word `w` as the bitmap has it now.
    ///
    /// # Safety
    ///
    /// `map` is the bitmap of a live arena of this layer; `w < WORDS`.
    #[inline(always)]
    unsafe fn class_now(map: RawBits, w: usize) -> usize {
        // SAFETY: the caller's duties; `w + 1 <= WORDS`.
        unsafe { class_of(Self::free_word(map, w), Self::free_word(map, w + 1)) }
    }

    /// Raises the class that `index` records for bitmap word `w` to the bitmap's, after
    /// blocks went free (the record may stay above it: it drops lazily, in `take`).
    ///
    /// # Safety
    ///
    /// `map` and `index` belong to one live arena of this layer; `w < WORDS`.
    #[inline(always)]
    unsafe fn raise(map: RawBits, index: Index<BLOCK, ARENA>, w: usize) {
        // SAFETY: the caller's duties.
        let class = unsafe { Self::class_now(map, w) };
        if class > index.class(w) {
            index.raise(w, class);
        }
    }

    /// [`mark`](Self::mark)s a run free, out of line (so that `put`'s cached path stays a
    /// leaf that saves no registers).
    ///
    /// # Safety
    ///
    /// As for `mark`, with every block of the run in use.
    #[inline(never)]
    unsafe fn free_run(meta: *mut u8, at: usize, blocks: usize) {
        // SAFETY: the caller's duties are `mark`'s.
        unsafe { Self::mark(meta, at, blocks, false) }
    }

    /// Books (`used`) or frees the run of `blocks` blocks from `at` in the arena whose
    /// metadata is at `meta`. Booking leaves the run index as it is (a word's recorded
    /// class may be above the bitmap's, never below); freeing raises the classes of the
    /// words whose runs it lengthens.
    ///
    /// # Safety
    ///
    /// `meta` is the metadata of a live arena of this layer, accessed by nothing else
    /// meanwhile; `1 <= blocks` and `at + blocks <= BLOCKS`; every block of the run is now
    /// free (for `used`) or in use (otherwise).
    #[inline(always)]
    unsafe fn mark(meta: *mut u8, at: usize, blocks: usize, used: bool) {
        // SAFETY: the caller's duties; the bitmap and the index are disjoint.
        let (map, index) = unsafe { (Self::raw_bitmap(meta), Self::index(meta)) };
        // SAFETY: the run lies inside the bitmap, all of it `!used`.
        unsafe { map.flip_range(at, blocks, used) };
        if used {
            return;
        }
        let (first, last) = (at / 64, (at + blocks - 1) / 64);
        // The word below sees this one only through its low run of free blocks, which the
        // change reaches when every block below the run (unchanged) is free.
        let below = (1u64 << (at % 64)) - 1;
        // SAFETY: `first < WORDS`, since the run is inside the arena.
        if first > 0 && unsafe { Self::free_word(map, first) } & below == below {
            // SAFETY: `first - 1 < WORDS`.
            unsafe { Self::raise(map, index, first - 1) };
        }
        for w in first..=last {
            // SAFETY: `last < WORDS`, since the run is inside the arena.
            unsafe { Self::raise(map, index, w) };
        }
    }

    // ---- the run search ------------------------------------------------------------------

    /// The first start, a multiple of `stride`, of a run of `blocks > 64` free blocks in
    /// `map`, whose run index is `index`. Scans a word at a time, carrying the free run at
    /// the top of each word into the next; where no run is carried in, it jumps to the next
    /// word where a run of 64 starts (any longer run starts in such a word).
    ///
    /// # Safety
    ///
    /// `map` and `index` belong to one live arena of this layer; `stride` is a power of two.
    /// (Out of line: long runs are rare, and inlined it cost the short ones' search register
    /// spills.)
    #[inline(never)]
    unsafe fn find_long_run(
        map: RawBits,
        index: Index<BLOCK, ARENA>,
        blocks: usize,
        stride: usize,
    ) -> Option<usize> {
        const LONG: usize = CLASSES - 1;
        // Free blocks in a row just below bit `64 * w`.
        let mut run = 0usize;
        let mut w = index.next(LONG, index.first(LONG));
        index.set_first(LONG, w);
        while w < Self::WORDS {
            // SAFETY: `w < WORDS`; the caller's duties.
            let free = unsafe { Self::free_word(map, w) };
            let bit = w * 64;
            // The run carried in from below, continued by this word's low free blocks.
            // Rounded up to a multiple of `stride`, a power of two (a mask, not a division).
            let start = (bit - run + (stride - 1)) & !(stride - 1);
            if start + blocks <= bit + free.trailing_ones() as usize {
                return Some(start);
            }
            run = if free == u64::MAX {
                run + 64
            } else {
                free.leading_ones() as usize
            };
            w = if run == 0 {
                index.next(LONG, w + 1)
            } else {
                w + 1
            };
        }
        None
    }

    /// The first fit of a run of `blocks <= 64` free blocks, starting at a multiple of
    /// `stride`, in the lowest word of a class above `class` that has one.
    ///
    /// # Safety
    ///
    /// `map` and `index` belong to one live arena of this layer; `stride` is a power of two.
    #[inline(always)]
    unsafe fn search(
        map: RawBits,
        index: Index<BLOCK, ARENA>,
        class: usize,
        blocks: usize,
        stride: usize,
    ) -> Option<usize> {
        // The starts at multiples of `stride` inside a word (bit 0 alone for strides of 64
        // or more, which use one start a word): a table, not a division, which cost a tenth
        // of a search.
        const ALIGNED: [u64; 8] = [
            u64::MAX,
            0x5555_5555_5555_5555,
            0x1111_1111_1111_1111,
            0x0101_0101_0101_0101,
            0x0001_0001_0001_0001,
            0x0000_0001_0000_0001,
            1,
            1,
        ];
        let aligned = ALIGNED[(stride.trailing_zeros() as usize).min(7)];
        // Words that hold no start at a multiple of a large stride are skipped (a power of
        // two: a mask, not a division).
        let skip = (stride / 64).max(1) - 1;
        let mut w = index.next(class, index.first(class));
        // The first word visited whose class stays above `class`: where `first` goes (but
        // for large strides, whose search skips words).
        let mut first = if skip == 0 {
            Self::WORDS
        } else {
            index.first(class)
        };
        while w < Self::WORDS {
            if stride <= 64 || (w * 64).is_multiple_of(stride) {
                // SAFETY: `w < WORDS`; the caller's duties.
                let (lo, hi) = unsafe { (Self::free_word(map, w), Self::free_word(map, w + 1)) };
                if let Some(bit) = fit_in_word(lo, hi, blocks, aligned, stride) {
                    index.set_first(class, first.min(w));
                    return Some(w * 64 + bit);
                }
            }
            // No fit here: the word's recorded class comes down to the bitmap's.
            // SAFETY: `w < WORDS`.
            let now = unsafe { Self::class_now(map, w) };
            index.lower(w, now);
            if now > class {
                first = first.min(w);
            }
            w = index.next(class, (w + 1 + skip) & !skip);
        }
        index.set_first(class, first);
        None
    }

    /// [`search`](Self::search), out of line: for the second search of a request, which
    /// runs only when the first finds no word of the class that always fits.
    ///
    /// # Safety
    ///
    /// As for [`search`](Self::search).
    #[cold]
    #[inline(never)]
    unsafe fn search_cold(
        map: RawBits,
        index: Index<BLOCK, ARENA>,
        class: usize,
        blocks: usize,
        stride: usize,
    ) -> Option<usize> {
        // SAFETY: the caller's duties.
        unsafe { Self::search(map, index, class, blocks, stride) }
    }

    /// Finds and books a run of `blocks` free blocks starting at a multiple of `stride` in
    /// the arena whose metadata is at `meta` (the one the type's docs describe); returns
    /// the index of its first block.
    ///
    /// For `blocks <= 64`, the search visits the words of a class above
    /// `ceil(log2 blocks)` (where a fit is certain but for stale records and alignment),
    /// lowest first, and takes the first fit in the first that has one; when none has, the
    /// words of a class above `floor(log2 blocks)` (where any fit must start) the same way.
    ///
    /// # Safety
    ///
    /// `meta` is the metadata of a live arena of this layer, accessed by nothing else
    /// meanwhile; `1 <= blocks <= BLOCKS`; `stride` is a power of two.
    #[inline(always)]
    unsafe fn take(meta: *mut u8, blocks: usize, stride: usize) -> Option<usize> {
        // SAFETY: the caller's duties; the bitmap and the index are disjoint.
        let (map, index) = unsafe { (Self::raw_bitmap(meta), Self::index(meta)) };
        let at = if blocks <= 64 {
            let (fits, may_fit) = (
                blocks.next_power_of_two().ilog2() as usize,
                blocks.ilog2() as usize,
            );
            // SAFETY: the caller's duties.
            unsafe {
                match Self::search(map, index, fits, blocks, stride) {
                    Some(at) => at,
                    None if may_fit < fits => {
                        Self::search_cold(map, index, may_fit, blocks, stride)?
                    }
                    None => return None,
                }
            }
        } else {
            // SAFETY: the caller's duties.
            unsafe { Self::find_long_run(map, index, blocks, stride) }?
        };
        // SAFETY: the search keeps the run inside the arena, all of it free.
        unsafe { Self::mark(meta, at, blocks, true) };
        Some(at)
    }

    // ---- arenas --------------------------------------------------------------------------

    /// Takes a new arena from `L`, with an empty bitmap, at the head of the chain; returns
    /// its base.
    #[cold]
    fn add_arena(&mut self) -> Option<NonNull<u8>> {
        let base = self.arenas.add(&mut self.inner)?;
        // SAFETY: the piece holds `ARENA` bytes of data then `META_WORDS` words, aligned to
        // at least 8 (`ARENA` is a power of two; debug builds check in `ArenaChain::add` that
        // it is at least a pointer's alignment); it is ours alone.
        unsafe {
            let meta = base.as_ptr().add(ARENA);
            let at = meta.cast::<u64>().add(LINK_WORDS);
            // Cannot fail: the words were sized by `words_for`.
            let _ = Bitmap::init_raw(
                NonNull::new_unchecked(at),
                Bitmap::words_for(Self::BLOCKS),
                Self::BLOCKS,
            );
            // Every word free: all of class `CLASSES`, but for a last word cut short.
            let index = Self::index(meta);
            index.init();
            if Self::LAST_MASK != u64::MAX {
                index.lower(
                    Self::WORDS - 1,
                    Self::class_now(Self::raw_bitmap(meta), Self::WORDS - 1),
                );
            }
        }
        Some(base)
    }

    /// Gives every arena back to `L`, leaving this layer empty.
    fn release(&mut self) {
        self.arenas.put_all(&mut self.inner);
        self.cache.clear();
    }

    /// The run a live block occupies: its arena's metadata and its first block's index.
    #[inline(always)]
    fn locate(ptr: NonNull<u8>) -> (*mut u8, usize) {
        let block = ptr.as_ptr();
        let base = block.addr() & !(ARENA - 1);
        (block.with_addr(base + ARENA), (block.addr() - base) / BLOCK)
    }
}

// ---- the ArenaShape and Layer impls ------------------------------------------------------

impl<L: Layer, const BLOCK: usize, const ARENA: usize, const CACHE: u32> ArenaShape
    for Bitset<L, BLOCK, ARENA, CACHE>
{
    const NAME: &'static str = "Bitset";
    const BYTES: usize = ARENA;
    /// The chain's link, the bitmap, the run index.
    const META_WORDS: usize = Self::INDEX_AT + Index::<BLOCK, ARENA>::INDEX_WORDS;
}

// SAFETY: a block handed out is a run of blocks inside one arena got from `L`, starting at
// a multiple of `max(align, BLOCK)` bytes from the arena's `ARENA`-aligned base: either a
// run whose bits were all clear, or a cached run of the same length (aligned to `BLOCK`,
// for a request aligned to no more) taken off its stack. Its bits stay set while it is live
// or cached, so it is disjoint from every other live or cached block. A put either caches
// the run (its bits stay set) or clears exactly the run's bits. Arenas go back to `L` at
// deinit only.
unsafe impl<L: Layer, const BLOCK: usize, const ARENA: usize, const CACHE: u32> Layer
    for Bitset<L, BLOCK, ARENA, CACHE>
{
    const MIN_ALIGN: usize = BLOCK;
    const OWNS_EXACT: bool = true;
    const OWNS_INTERIOR: bool = true;

    #[inline]
    fn get(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        paranoid(self);
        let (blocks, stride) = Self::blocks_of(layout)?;
        let run = if stride == 1
            && Self::caches(blocks)
            && let Some(run) = self.cache.pop(blocks)
        {
            run
        } else {
            self.search_arenas(blocks, stride)?
        };
        // SAFETY: a run of `blocks` blocks, ours until it is handed out.
        unsafe { fill::<Self>(run.as_ptr(), 0, blocks * BLOCK, FRESH) };
        Some(run)
    }

    unsafe fn put(&mut self, ptr: NonNull<u8>, layout: Layout) {
        paranoid(self);
        require_put::<Self>(ptr, layout);
        let Some((blocks, _)) = Self::blocks_of(layout) else {
            debug_require!(
                false,
                "Bitset: put of {ptr:p} with {layout:?}, never served"
            );
            return;
        };
        let (meta, at) = Self::locate(ptr);
        if cfg!(debug_assertions) {
            self.arenas.require_ours("put", ptr, layout);
            // SAFETY: the caller's duties make `ptr` a live run in one of our arenas (one
            // of ours, just checked).
            let map = unsafe { Self::bitmap(meta) };
            if at + blocks > Self::BLOCKS || map.find_clear(at..at + blocks).is_some() {
                abort_with(format_args!(
                    "Bitset: put of {ptr:p} ({layout:?}), whose blocks are not all in use"
                ));
            }
            let (start, end) = (ptr.as_ptr().addr(), ptr.as_ptr().addr() + blocks * BLOCK);
            if self
                .cache
                .overlaps(1..=CACHED_RUN_BLOCKS, start, end, |n| n * BLOCK)
            {
                abort_with(format_args!(
                    "Bitset: put of {ptr:p} ({layout:?}), which is already put (cached)"
                ));
            }
        }
        // SAFETY: the caller gives up the run of `blocks` blocks; a cache's link is written
        // after the fill.
        unsafe {
            fill::<Self>(
                ptr.as_ptr(),
                PutCache::<CACHE_SLOTS>::LINK,
                blocks * BLOCK,
                FREED,
            )
        };
        // SAFETY: the run is ours, at least a pointer long and aligned to one (`caches`
        // checks `BLOCK`), and no longer in use, nor cached or free (the caller's duties).
        if Self::caches(blocks) && unsafe { self.cache.push(blocks, ptr, CACHE) } {
            return;
        }
        // SAFETY: as above: the run lies inside the arena's bitmap, all of it in use.
        unsafe { Self::free_run(meta, at, blocks) };
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
        let (Some((had, _)), Some((needs, _))) = (Self::blocks_of(old), Self::blocks_of(new))
        else {
            return false;
        };
        if cfg!(debug_assertions) {
            self.arenas.require_ours("grow", ptr, old);
        }
        let (meta, at) = Self::locate(ptr);
        if at + needs > Self::BLOCKS {
            return false;
        }
        // SAFETY: the caller's duties make `ptr` a live run in one of our arenas.
        if unsafe { Self::bitmap(meta) }
            .find_set(at + had..at + needs)
            .is_some()
        {
            return false;
        }
        if needs > had {
            // SAFETY: the blocks after the run are free and inside the arena; the `Bitmap`
            // handle is gone.
            unsafe { Self::mark(meta, at + had, needs - had, true) };
        }
        true
    }

    unsafe fn shrink(&mut self, ptr: NonNull<u8>, old: Layout, new: Layout) -> bool {
        paranoid(self);
        require_shrink::<Self>(ptr, old, new);
        let (Some((had, _)), Some((needs, _))) = (Self::blocks_of(old), Self::blocks_of(new))
        else {
            return false;
        };
        if cfg!(debug_assertions) && had > needs {
            self.arenas.require_ours("shrink", ptr, old);
        }
        let (meta, at) = Self::locate(ptr);
        if had > needs {
            // SAFETY: the caller's duties make `ptr` a live run of `had` blocks in one of our
            // arenas; its tail goes free.
            unsafe { Self::mark(meta, at + needs, had - needs, false) };
        }
        true
    }

    fn owns(&self, ptr: NonNull<u8>) -> bool {
        self.arenas.find(ptr.as_ptr().addr()).is_some()
    }

    fn check_invariants(&self) {
        self.arenas.check();
        for base in self.arenas.iter() {
            // SAFETY: `base` is a live arena, its metadata after its data.
            let meta = unsafe { base.as_ptr().add(ARENA) };
            // SAFETY: as above; one bitmap handle at a time.
            if let Err(error) = unsafe { Self::bitmap(meta) }.check() {
                abort_with(format_args!(
                    "Bitset invariant broken: bitmap at {meta:p}: {error}"
                ));
            }
            // SAFETY: as above; the `Bitmap` handle is gone, and the index only reads.
            let (map, index) = unsafe { (Self::raw_bitmap(meta), Self::index(meta)) };
            index.check(base.as_ptr(), |w| {
                // SAFETY: `w < WORDS`.
                unsafe { class_of(Self::free_word(map, w), Self::free_word(map, w + 1)) }
            });
        }
        for n in 0..CACHE_SLOTS {
            if !Self::caches(n) && self.cache.count(n) != 0 {
                abort_with(format_args!(
                    "Bitset invariant broken: a cache for runs of {n}, which are not cached"
                ));
            }
            let in_use = |run: NonNull<u8>| {
                let (meta, at) = Self::locate(run);
                let ours = self.arenas.find(run.as_ptr().addr()).is_some();
                // SAFETY: `meta` belongs to a live arena (just checked), and no other
                // bitmap handle is alive.
                let used = ours
                    && run.as_ptr().addr().is_multiple_of(BLOCK)
                    && at + n <= Self::BLOCKS
                    && unsafe { Self::bitmap(meta) }
                        .find_clear(at..at + n)
                        .is_none();
                if !used {
                    abort_with(format_args!(
                        "Bitset invariant broken: cached run {run:p} of {n} blocks is not a \
                         run in use of ours"
                    ));
                }
            };
            if let Err(error) = self.cache.check(n, CACHE, in_use) {
                abort_with(format_args!(
                    "Bitset invariant broken: the cache of runs of {n} {error}"
                ));
            }
        }
        self.inner.check_invariants();
    }
}

impl<L: Layer, const BLOCK: usize, const ARENA: usize, const CACHE: u32> Drop
    for Bitset<L, BLOCK, ARENA, CACHE>
{
    fn drop(&mut self) {
        self.deinit();
    }
}

impl<L: Layer + fmt::Debug, const BLOCK: usize, const ARENA: usize, const CACHE: u32> fmt::Debug
    for Bitset<L, BLOCK, ARENA, CACHE>
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bitset")
            .field("block", &BLOCK)
            .field("arena", &ARENA)
            .field("arenas", &self.arenas.len())
            .field("used_blocks", &self.used_blocks())
            .field("cached_blocks", &self.cached_blocks())
            .field("inner", &self.inner)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::Buffer;

    /// No cache, so that every put frees its run at once.
    type Small<'a> = Bitset<Buffer<'a>, 16, 1024, 0>;

    fn layout(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).unwrap()
    }

    /// The search through the run index gives what the docs promise, against a model
    /// (`Vec<bool>`), over runs that cross words and alignments up to and past a word: the
    /// first fit in its word, and either the first fit of all or one in a word below which
    /// no run of the next power of two starts; `None` only when nothing fits. Planting a bug
    /// in `Bitset::mark` (not raising the word below, whose run runs on into a freed run)
    /// made `check_invariants` fail here, and so did one in `RunIndex::raise` (not lowering
    /// `first`).
    #[test]
    fn first_fit_matches_a_model() {
        type OneArena<'a> = Bitset<Buffer<'a>, 16, 8192, 0>;
        const N: usize = OneArena::BLOCKS;
        // Room for one aligned arena only: a request with no fit gets `None`.
        // Uninitialised without a loop (which Miri would take seconds over).
        let mut memory = alloc::boxed::Box::new_uninit_slice(2 * 8192 + 8 * OneArena::META_WORDS);
        let mut heap = OneArena::new(Buffer::new(&mut memory));
        let mut used = alloc::vec![false; N];
        let mut live: alloc::vec::Vec<(NonNull<u8>, Layout)> = alloc::vec::Vec::new();
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = |m: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % m as u64) as usize
        };
        let steps = if cfg!(miri) { 60 } else { 3000 };
        let mut base = None;
        for _ in 0..steps {
            if live.is_empty() || next(5) < 3 {
                let blocks = [1, 2, 3, 5, 8, 13, 40, 64, 65, 130][next(10)];
                let stride = [1, 1, 1, 2, 4, 64, 128][next(7)];
                let l = layout(blocks * 16 - next(16), stride * 16);
                let free = |s: usize, n: usize| s + n <= N && used[s..s + n].iter().all(|u| !u);
                let first_fit = (0..N).step_by(stride).find(|&s| free(s, blocks));
                let got = heap.get(l);
                let base = *base.get_or_insert_with(|| got.map(|p| p.as_ptr().addr()));
                let at = got.map(|p| (p.as_ptr().addr() - base.unwrap()) / 16);
                match (at, first_fit) {
                    (None, None) => {}
                    (Some(at), Some(first_fit)) if at != first_fit => {
                        assert!(
                            blocks <= 64,
                            "{blocks} at {stride}: {at}, long runs take the first fit"
                        );
                        assert!(
                            at.is_multiple_of(stride) && free(at, blocks),
                            "{blocks} at {stride}: {at}"
                        );
                        let word = at / 64 * 64;
                        let earlier = (word..at).step_by(stride).find(|&s| free(s, blocks));
                        assert_eq!(
                            earlier, None,
                            "{blocks} at {stride}: {at}, not the first fit in its word"
                        );
                        let long = blocks.next_power_of_two();
                        let below = (0..word).step_by(stride).find(|&s| free(s, long));
                        assert_eq!(
                            below, None,
                            "{blocks} at {stride}: {at}, a run of {long} starts below"
                        );
                    }
                    _ => assert_eq!(at, first_fit, "{blocks} blocks at a stride of {stride}"),
                }
                if let (Some(p), Some(at)) = (got, at) {
                    used[at..at + blocks].fill(true);
                    live.push((p, l));
                }
            } else {
                let (p, l) = live.swap_remove(next(live.len()));
                let at = (p.as_ptr().addr() - base.unwrap().unwrap()) / 16;
                used[at..at + l.size().div_ceil(16)].fill(false);
                // SAFETY: got from `heap` with `l`, put once.
                unsafe { heap.put(p, l) };
            }
            heap.check_invariants();
        }
        assert_eq!(heap.arenas(), 1);
    }

    #[test]
    fn runs_first_fit_and_alignment() {
        let mut memory = alloc::boxed::Box::new_uninit_slice(8192);
        let mut heap = Small::new(Buffer::new(&mut memory));
        let a = heap.get(layout(16, 1)).unwrap();
        let b = heap.get(layout(40, 1)).unwrap(); // three blocks
        assert_eq!(b.as_ptr().addr() - a.as_ptr().addr(), 16);
        let c = heap.get(layout(0, 256)).unwrap();
        assert_eq!(c.as_ptr().addr() % 256, 0);
        assert_eq!(heap.used_blocks(), 5);
        heap.check_invariants();
        // SAFETY: each block came from `heap` with the layout given, once.
        unsafe {
            heap.put(a, layout(16, 1));
            // First fit: the hole `a` left takes the next one-block request.
            let d = heap.get(layout(1, 1)).unwrap();
            assert_eq!(d, a);
            assert!(
                heap.grow(b, layout(40, 1), layout(64, 1)),
                "the block after b is free"
            );
            assert!(!heap.grow(d, layout(1, 1), layout(17, 1)), "b follows d");
            assert!(heap.shrink(b, layout(64, 1), layout(1, 1)));
            heap.check_invariants();
            heap.put(b, layout(1, 1));
            heap.put(c, layout(0, 256));
            heap.put(d, layout(1, 1));
        }
        heap.check_invariants();
        assert_eq!(heap.used_blocks(), 0);
        // Too big or too aligned for an arena.
        assert!(heap.get(layout(1025, 1)).is_none());
        assert!(heap.get(layout(1, 2048)).is_none());
        let whole = heap.get(layout(1024, 1024)).unwrap();
        let more = heap.get(layout(1, 1)).unwrap();
        assert_eq!(heap.arenas(), 2);
        assert!(heap.owns(whole) && heap.owns(more));
        // SAFETY: as above.
        unsafe {
            heap.put(whole, layout(1024, 1024));
            heap.put(more, layout(1, 1));
        }
        heap.deinit();
        assert_eq!((heap.arenas(), heap.used_blocks()), (0, 0));
    }

    #[test]
    fn put_runs_wait_in_the_cache_and_serve_their_length_again() {
        let mut memory = alloc::vec![core::mem::MaybeUninit::uninit(); 4096];
        let mut heap = Bitset::<Buffer<'_>, 16, 1024, 2>::new(Buffer::new(&mut memory));
        let runs: alloc::vec::Vec<_> = (0..3).map(|_| heap.get(layout(40, 8)).unwrap()).collect();
        for &run in &runs {
            // SAFETY: each got above, put once.
            unsafe { heap.put(run, layout(40, 8)) };
            heap.check_invariants();
        }
        assert_eq!(
            heap.cached_blocks(),
            2 * 3,
            "two runs of 3 cached, the third freed"
        );
        assert_eq!(heap.used_blocks(), 2 * 3);
        assert_eq!(
            heap.get(layout(33, 1)),
            Some(runs[1]),
            "the last cached run first"
        );
        // An aligned request of the same length does not take a cached run.
        let aligned = heap.get(layout(40, 256)).unwrap();
        assert_eq!(aligned.as_ptr().addr() % 256, 0);
        assert_eq!(heap.cached_blocks(), 3);
        // SAFETY: got above, put once.
        unsafe {
            heap.put(aligned, layout(40, 256));
            heap.put(runs[1], layout(33, 1));
        }
        assert!(heap.flush_cache());
        assert!(!heap.flush_cache());
        heap.check_invariants();
        assert_eq!(heap.used_blocks(), 0);
    }

    #[test]
    fn a_get_frees_the_cached_runs_before_it_takes_an_arena() {
        let mut memory = alloc::vec![core::mem::MaybeUninit::uninit(); 4096];
        let mut heap = Bitset::<Buffer<'_>, 16, 1024>::new(Buffer::new(&mut memory));
        let runs: alloc::vec::Vec<_> = (0..64).map(|_| heap.get(layout(16, 1)).unwrap()).collect();
        assert_eq!(heap.arenas(), 1);
        for &run in &runs {
            // SAFETY: each got above, put once.
            unsafe { heap.put(run, layout(16, 1)) };
        }
        assert_eq!(heap.cached_blocks(), 32, "the default depth");
        let whole = heap
            .get(layout(1024, 1))
            .expect("the cached runs went free");
        assert_eq!(heap.arenas(), 1);
        heap.check_invariants();
        // SAFETY: got above, put once.
        unsafe { heap.put(whole, layout(1024, 1)) };
        assert_eq!(
            heap.used_blocks(),
            0,
            "a run longer than 16 blocks is never cached"
        );
    }

    #[test]
    fn blocks_smaller_than_a_pointer_are_never_cached() {
        let mut memory = alloc::vec![core::mem::MaybeUninit::uninit(); 4096];
        let mut heap = Bitset::<Buffer<'_>, 2, 1024>::new(Buffer::new(&mut memory));
        let run = heap.get(layout(16, 2)).unwrap();
        // SAFETY: got above, put once.
        unsafe { heap.put(run, layout(16, 2)) };
        assert_eq!((heap.cached_blocks(), heap.used_blocks()), (0, 0));
    }
}
