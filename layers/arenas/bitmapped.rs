//! `Bitset<L, BLOCK, ARENA>`: fixed-size blocks in arenas taken from `L`, one bit per block
//! in a [`BitSet`]; larger requests take runs of consecutive blocks, found first-fit.
//!
//! Invariants (checked by `check_invariants` in tests): a block's bit is set exactly while
//! it belongs to a live run; for each `c < HINTS`, no run of `2^c` clear bits starts below an
//! arena's `hints[c]` (so `hints[0]` is at most the first clear bit); each arena's bitmap
//! keeps the `BitSet` invariants (its count matches its bits).

use core::alloc::Layout;
use core::fmt;
use core::mem::{ManuallyDrop, size_of};
use core::ptr::{self, NonNull};

use crate::abort::{abort_with, debug_require};
use crate::bitset::RawBits;
use crate::layer::served_size;
use crate::{BitSet, Layer};

/// The first words of an arena's metadata, which follows its `ARENA` data bytes; the
/// bitmap comes right after.
#[repr(C)]
struct ArenaMeta {
    /// The base of the next (older) arena, or null.
    next: *mut u8,
    /// No run of `2^c` clear bits starts below `hints[c]`: a first-fit search for `n >= 2^c`
    /// blocks starts there. A search that finds (or fails to find) `n <= 2^c` blocks raises
    /// `hints[c]`; a put lowers each hint to where a run through the freed blocks could
    /// start.
    hints: [usize; HINTS],
}

/// Run lengths with a hint of their own: 1, 2, 4, ... `2^(HINTS - 1)` blocks.
const HINTS: usize = 8;

const META_HEADER_WORDS: usize = size_of::<ArenaMeta>().div_ceil(8);

/// Bit `i` is set when bits `i..i + n` of `free` are all set (`1 <= n <= 64`): the starts of
/// the runs of `n` that lie inside the word.
#[inline(always)]
fn runs_in_word(free: u64, n: usize) -> u64 {
    let mut starts = free;
    let mut have = 1;
    while have < n {
        // Doubling: a run of `have` at `i` and one at `i + step` (`step <= have`) make a run
        // of `have + step` at `i`. `step < 64`, since `have < n <= 64`.
        let step = (n - have).min(have);
        starts &= starts >> step;
        have += step;
    }
    starts
}

/// The bitmapped-block allocator: memory is cut into blocks of `BLOCK` bytes, one bit each
/// (set = in use), and a request takes the first run of `ceil(size / BLOCK)` clear bits
/// that starts at its alignment, found by word-at-a-time scans of the bitmap.
///
/// Memory comes from `L` one *arena* at a time: `ARENA` bytes (1 MiB unless given) aligned
/// to `ARENA`, followed in the same piece by the arena's bitmap (`ARENA / BLOCK` bits). A
/// put finds its arena from the address alone (a mask) and clears the run's bits. A new
/// arena is taken when no arena has a fitting run; arenas stay until
/// [`deinit`](Layer::deinit), which returns them to `L`.
///
/// - Every block is aligned to `BLOCK` ([`MIN_ALIGN`](Layer::MIN_ALIGN)); larger
///   alignments, up to `ARENA`, are served by starting the run at a multiple of
///   `align / BLOCK` blocks.
/// - **Requests larger than `ARENA` bytes, or aligned to more than that, get `None`.**
/// - Zero-size requests take one block, as the [contract](crate::layer#zero-size) says.
/// - `shrink` in place always succeeds and frees the tail of the run; `grow` in place
///   succeeds when the blocks after the run are free.
///
/// `BLOCK` and `ARENA` must be powers of two with `BLOCK <= ARENA <= 2^(usize::BITS - 2)`
/// (checked at compile time). A misconfigured `Bitset` does not build:
///
/// ```compile_fail
/// use stratalloc::layers::{Bitset, Buffer};
/// let _ = Bitset::<Buffer<'static>, 48>::new(Buffer::new(&mut []));
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
/// assert_eq!(blocks.used_blocks(), 0);
/// ```
pub struct Bitset<L: Layer, const BLOCK: usize, const ARENA: usize = 1048576> {
    /// The newest arena's base; older ones follow the `next` links in their metadata.
    arenas: *mut u8,
    arena_count: usize,
    inner: L,
}

// SAFETY: a `Bitset` exclusively owns its arenas; the raw pointers are not shared with
// anything else, so moving it to another thread is as safe as moving `L`.
unsafe impl<L: Layer + Send, const BLOCK: usize, const ARENA: usize> Send
    for Bitset<L, BLOCK, ARENA>
{
}

impl<L: Layer, const BLOCK: usize, const ARENA: usize> Bitset<L, BLOCK, ARENA> {
    /// Blocks in an arena: bits in its bitmap.
    pub const BLOCKS: usize = ARENA / BLOCK;
    /// Words of metadata after each arena's data: the header, then the bitmap.
    const META_WORDS: usize = META_HEADER_WORDS + BitSet::words_for(Self::BLOCKS);

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
                ARENA <= 1 << (usize::BITS - 2),
                "Bitset: ARENA must leave room for a valid allocation size"
            );
        }
        Bitset {
            arenas: ptr::null_mut(),
            arena_count: 0,
            inner,
        }
    }

    /// The layer below.
    pub const fn inner(&self) -> &L {
        &self.inner
    }

    /// The layer below, mutably.
    ///
    /// # Safety
    ///
    /// Callers must not put or deinit, through this reference, the arenas this layer got
    /// from the inner one (see [owner](crate::layer#owner)).
    pub const unsafe fn inner_mut(&mut self) -> &mut L {
        &mut self.inner
    }

    /// Unwraps the layer below, after giving it back every arena.
    pub fn into_inner(self) -> L {
        let mut this = ManuallyDrop::new(self);
        this.release();
        // SAFETY: `this` is never used or dropped again, so `inner` is moved out once.
        unsafe { ptr::read(&this.inner) }
    }

    /// Arenas held now.
    pub const fn arenas(&self) -> usize {
        self.arena_count
    }

    /// Blocks in use in all arenas.
    pub fn used_blocks(&self) -> usize {
        let mut used = 0;
        self.for_each_arena(|meta| {
            // SAFETY: `meta` belongs to a live arena; no other bitmap handle is alive.
            used += unsafe { Self::bitmap(meta) }.len();
        });
        used
    }

    /// The piece got from `L` for one arena: its data, then its metadata.
    fn arena_layout() -> Option<Layout> {
        let size = ARENA.checked_add(Self::META_WORDS.checked_mul(8)?)?;
        Layout::from_size_align(size, ARENA).ok()
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

    /// The bitmap of the arena whose metadata is at `meta`.
    ///
    /// # Safety
    ///
    /// `meta` is the metadata of a live arena of this layer (with provenance over it), and
    /// no other `BitSet` over that bitmap is used while this one lives.
    #[inline(always)]
    unsafe fn bitmap<'m>(meta: *mut u8) -> BitSet<'m> {
        // SAFETY: the bitmap follows the header inside the metadata.
        let at = unsafe { meta.cast::<u64>().add(META_HEADER_WORDS) };
        // SAFETY: `at` is inside an arena, so not null; the caller's duties give exclusive,
        // valid access to the words.
        match unsafe {
            BitSet::attach_raw(NonNull::new_unchecked(at), BitSet::words_for(Self::BLOCKS))
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
    /// no `BitSet` over that bitmap is used while the result is.
    #[inline(always)]
    unsafe fn raw_bitmap(meta: *mut u8) -> RawBits {
        // SAFETY: the bitmap follows the header inside the metadata, where `add_arena` made
        // a `BitSet`; the caller's duties give exclusive access. Not null: inside an arena.
        unsafe {
            RawBits::new(NonNull::new_unchecked(
                meta.cast::<u64>().add(META_HEADER_WORDS),
            ))
        }
    }

    /// The hints of the arena whose metadata is at `meta`.
    ///
    /// # Safety
    ///
    /// `meta` is the metadata of a live arena of this layer; the result is used while no
    /// other reference to the header is.
    #[inline(always)]
    unsafe fn hints<'m>(meta: *mut u8) -> &'m mut [usize; HINTS] {
        // SAFETY: the metadata starts with an `ArenaMeta`; the caller's duties make the
        // reference unique.
        unsafe { &mut (*meta.cast::<ArenaMeta>()).hints }
    }

    /// Lowers the hints of the arena at `meta` after blocks from `at` went free: a run of
    /// `2^c` clear bits through them starts at `at - (2^c - 1)` or later.
    ///
    /// # Safety
    ///
    /// As for [`hints`](Self::hints).
    #[inline(always)]
    unsafe fn freed_from(meta: *mut u8, at: usize) {
        // SAFETY: the caller's duties.
        let hints = unsafe { Self::hints(meta) };
        for (c, hint) in hints.iter_mut().enumerate() {
            *hint = (*hint).min(at.saturating_sub((1 << c) - 1));
        }
    }

    /// The first start at or after `from`, a multiple of `stride`, of a run of `blocks` clear
    /// bits in `map`; and the first clear bit at or after `from` (`BLOCKS` when none).
    /// Scans a word at a time, carrying the clear run at the top of each word into the next.
    ///
    /// # Safety
    ///
    /// `map` is the bitmap of a live arena of this layer; `from <= BLOCKS`; `stride` is a
    /// power of two.
    #[inline(always)]
    unsafe fn find_run(
        map: RawBits,
        from: usize,
        blocks: usize,
        stride: usize,
    ) -> (Option<usize>, usize) {
        let words = Self::BLOCKS.div_ceil(64);
        let mut first_free = Self::BLOCKS;
        // Clear bits in a row just below bit `64 * w`.
        let mut run = 0usize;
        let mut w = from / 64;
        // The bits of word `w` inside `from..BLOCKS`.
        let mut inside = u64::MAX << (from % 64);
        // Bits at the multiples of `stride`, for strides below 64 (the divisor is 0 only for
        // multiples of 64, where this is not used).
        let aligned = u64::MAX
            .checked_div((1u64 << (stride % 64)) - 1)
            .unwrap_or(u64::MAX);
        while w < words {
            if !Self::BLOCKS.is_multiple_of(64) {
                // Only when `BLOCKS < 64`: one word, with padding above `BLOCKS`.
                inside &= u64::MAX >> (64 - Self::BLOCKS % 64);
            }
            // SAFETY: `w < words`, inside the bitmap; the caller's duties.
            let free = !unsafe { map.word(w).read() } & inside;
            inside = u64::MAX;
            if free == 0 {
                run = 0;
                w += 1;
                continue;
            }
            let bit = w * 64;
            if first_free == Self::BLOCKS {
                first_free = bit + free.trailing_zeros() as usize;
            }
            // The run carried in from below, continued by this word's low clear bits.
            // Rounded up to a multiple of `stride`, a power of two (a mask, not a division).
            let start = (bit - run + (stride - 1)) & !(stride - 1);
            if start + blocks <= bit + free.trailing_ones() as usize {
                return (Some(start), first_free);
            }
            // Runs that start inside this word and end inside it.
            if blocks <= 64 {
                let starts = if stride < 64 {
                    aligned
                } else {
                    u64::from(bit.is_multiple_of(stride))
                };
                let found = runs_in_word(free, blocks) & starts;
                if found != 0 {
                    return (Some(bit + found.trailing_zeros() as usize), first_free);
                }
            }
            run = if free == u64::MAX {
                run + 64
            } else {
                free.leading_ones() as usize
            };
            w += 1;
        }
        (None, first_free)
    }

    /// Calls `each` with the metadata of every arena, newest first.
    fn for_each_arena(&self, mut each: impl FnMut(*mut u8)) {
        let mut base = self.arenas;
        while !base.is_null() {
            // SAFETY: every arena on the chain is live; its metadata follows its data.
            let meta = unsafe { base.add(ARENA) };
            // SAFETY: the metadata starts with an `ArenaMeta`.
            base = unsafe { (*meta.cast::<ArenaMeta>()).next };
            each(meta);
        }
    }

    /// Finds and books the first run of `blocks` clear bits starting at a multiple of
    /// `stride` in the arena whose metadata is at `meta`; returns the index of its first
    /// block.
    ///
    /// # Safety
    ///
    /// `meta` is the metadata of a live arena of this layer; `1 <= blocks <= BLOCKS`;
    /// `stride` is a power of two.
    #[inline(always)]
    unsafe fn take(meta: *mut u8, blocks: usize, stride: usize) -> Option<usize> {
        // SAFETY: the caller's duty; the header and the bitmap are disjoint words.
        let (map, hints) = unsafe { (Self::raw_bitmap(meta), Self::hints(meta)) };
        if Self::BLOCKS - map.len() < blocks {
            return None;
        }
        // `2^below <= blocks`: no run of `blocks` starts below `hints[below]`, nor below
        // `hints[0]`. `2^above >= blocks`: a run of `2^above` is one of `blocks`.
        let below = (blocks.checked_ilog2().unwrap_or(0) as usize).min(HINTS - 1);
        let above = blocks.next_power_of_two().trailing_zeros() as usize;
        let from = hints[0].max(hints[below]);
        // SAFETY: the caller's duties; the hints are at most `BLOCKS` (the invariant).
        let (found, first_free) = unsafe { Self::find_run(map, from, blocks, stride) };
        // Every bit in `from..first_free` is set, so no run of any length starts below it.
        if from == hints[0] {
            hints[0] = first_free;
        }
        let Some(at) = found else {
            if stride == 1 && above < HINTS {
                // No run of `blocks` anywhere, so none of `2^above`.
                hints[above] = Self::BLOCKS;
            }
            return None;
        };
        // SAFETY: `find_run` keeps the run inside the arena.
        unsafe { map.fill_range(at, blocks, true) };
        if at == hints[0] {
            hints[0] = at + blocks;
        }
        if stride == 1 && above < HINTS {
            // No run of `blocks` starts below `at` (first fit), and none at or after it
            // overlaps the run just booked: none of `2^above` starts below `at + blocks`.
            hints[above] = hints[above].max(at + blocks);
        }
        Some(at)
    }

    /// Takes a new arena from `L`, with an empty bitmap, at the head of the chain.
    #[cold]
    fn add_arena(&mut self) -> Option<*mut u8> {
        let layout = Self::arena_layout()?;
        let base = self.inner.get(layout)?.as_ptr();
        debug_require!(
            base.addr().is_multiple_of(ARENA),
            "Bitset: the layer below returned an arena at {base:p}, not aligned to {ARENA}"
        );
        // SAFETY: the piece holds `ARENA` bytes of data then `META_WORDS` words, aligned to
        // at least 8 (`ARENA` is a power of two, and the header's alignment is checked
        // below); it is ours alone.
        unsafe {
            let meta = base.add(ARENA);
            debug_require!(
                meta.addr().is_multiple_of(align_of::<ArenaMeta>()),
                "Bitset: ARENA below the metadata's alignment"
            );
            meta.cast::<ArenaMeta>().write(ArenaMeta {
                next: self.arenas,
                hints: [0; HINTS],
            });
            let at = meta.cast::<u64>().add(META_HEADER_WORDS);
            // Cannot fail: the words were sized by `words_for`.
            let _ = BitSet::init_raw(
                NonNull::new_unchecked(at),
                BitSet::words_for(Self::BLOCKS),
                Self::BLOCKS,
            );
            self.arenas = base;
            self.arena_count += 1;
            Some(meta)
        }
    }

    /// Gives every arena back to `L`, leaving this layer empty.
    fn release(&mut self) {
        let Some(layout) = Self::arena_layout() else {
            return;
        };
        let mut base = self.arenas;
        while !base.is_null() {
            // SAFETY: `base` is a live arena got from `L` with `layout`; its link is read
            // before the arena goes back.
            unsafe {
                let next = (*base.add(ARENA).cast::<ArenaMeta>()).next;
                self.inner.put(NonNull::new_unchecked(base), layout);
                base = next;
            }
        }
        self.arenas = ptr::null_mut();
        self.arena_count = 0;
    }

    /// The run a live block occupies: its arena's metadata and its first block's index.
    #[inline(always)]
    fn locate(ptr: NonNull<u8>) -> (*mut u8, usize) {
        let block = ptr.as_ptr();
        let base = block.addr() & !(ARENA - 1);
        (block.with_addr(base + ARENA), (block.addr() - base) / BLOCK)
    }
}

// SAFETY: a block handed out is a run of blocks inside one arena got from `L`, starting at
// a multiple of `max(align, BLOCK)` bytes from the arena's `ARENA`-aligned base, whose bits
// were all clear and are set while it is live; so it is disjoint from every other live
// block. Puts clear exactly the run's bits. Arenas go back to `L` at deinit only.
unsafe impl<L: Layer, const BLOCK: usize, const ARENA: usize> Layer for Bitset<L, BLOCK, ARENA> {
    const MIN_ALIGN: usize = BLOCK;
    const OWNS_EXACT: bool = true;

    fn get(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        let (blocks, stride) = Self::blocks_of(layout)?;
        let mut base = self.arenas;
        while !base.is_null() {
            // SAFETY: `base` is a live arena; its metadata follows its data.
            let meta = unsafe { base.add(ARENA) };
            // SAFETY: as above.
            if let Some(at) = unsafe { Self::take(meta, blocks, stride) } {
                // SAFETY: block `at` lies inside the arena, which is not at null.
                return Some(unsafe { NonNull::new_unchecked(base.add(at * BLOCK)) });
            }
            // SAFETY: as above.
            base = unsafe { (*meta.cast::<ArenaMeta>()).next };
        }
        let meta = self.add_arena()?;
        // SAFETY: a fresh arena; its run starts at block 0, which fits any request that
        // `blocks_of` accepted.
        let at = unsafe { Self::take(meta, blocks, stride) }?;
        // SAFETY: block `at` lies inside the new arena, just before its metadata.
        Some(unsafe { NonNull::new_unchecked(meta.sub(ARENA).add(at * BLOCK)) })
    }

    unsafe fn put(&mut self, ptr: NonNull<u8>, layout: Layout) {
        let Some((blocks, _)) = Self::blocks_of(layout) else {
            debug_require!(
                false,
                "Bitset: put of {ptr:p} with {layout:?}, never served"
            );
            return;
        };
        let (meta, at) = Self::locate(ptr);
        if cfg!(debug_assertions) {
            // SAFETY: the caller's duties make `ptr` a live run in one of our arenas.
            let map = unsafe { Self::bitmap(meta) };
            if at + blocks > Self::BLOCKS || map.find_clear(at..at + blocks).is_some() {
                abort_with(format_args!(
                    "Bitset: put of {ptr:p} ({layout:?}), whose blocks are not all in use"
                ));
            }
        }
        // SAFETY: as above: the run lies inside the arena's bitmap; no `BitSet` handle is
        // alive; the header is disjoint from the bitmap.
        unsafe {
            Self::raw_bitmap(meta).fill_range(at, blocks, false);
            Self::freed_from(meta, at);
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
        let (Some((had, _)), Some((needs, _))) = (Self::blocks_of(old), Self::blocks_of(new))
        else {
            return false;
        };
        let (meta, at) = Self::locate(ptr);
        if at + needs > Self::BLOCKS {
            return false;
        }
        // SAFETY: the caller's duties make `ptr` a live run in one of our arenas.
        let mut map = unsafe { Self::bitmap(meta) };
        if map.find_set(at + had..at + needs).is_some() {
            return false;
        }
        let _ = map.set_range(at + had, needs - had);
        true
    }

    unsafe fn shrink(&mut self, ptr: NonNull<u8>, old: Layout, new: Layout) -> bool {
        let (Some((had, _)), Some((needs, _))) = (Self::blocks_of(old), Self::blocks_of(new))
        else {
            return false;
        };
        let (meta, at) = Self::locate(ptr);
        // SAFETY: the caller's duties make `ptr` a live run in one of our arenas.
        let _ = unsafe { Self::bitmap(meta) }.reset_range(at + needs, had - needs);
        // SAFETY: as above; the `BitSet` handle is gone.
        unsafe { Self::freed_from(meta, at + needs) };
        true
    }

    fn owns(&self, ptr: NonNull<u8>) -> bool {
        let mut owned = false;
        self.for_each_arena(|meta| {
            owned |= ptr.as_ptr().addr().wrapping_sub(meta.addr() - ARENA) < ARENA;
        });
        owned
    }

    fn check_invariants(&self) {
        let mut arenas = 0;
        self.for_each_arena(|meta| {
            arenas += 1;
            // SAFETY: `meta` belongs to a live arena; one bitmap handle at a time.
            let (map, hints) = unsafe { (Self::bitmap(meta), (*meta.cast::<ArenaMeta>()).hints) };
            if let Err(error) = map.check() {
                abort_with(format_args!(
                    "Bitset invariant broken: bitmap at {meta:p}: {error}"
                ));
            }
            if let Some(hint) = hints.iter().find(|&&hint| hint > Self::BLOCKS) {
                abort_with(format_args!(
                    "Bitset invariant broken: a hint {hint} past the end, arena {meta:p}"
                ));
            }
            // Every run of clear bits (maximal), against every hint.
            let mut at = map.find_clear(0..Self::BLOCKS);
            while let Some(start) = at {
                let end = map.find_set(start..Self::BLOCKS).unwrap_or(Self::BLOCKS);
                for (c, &hint) in hints.iter().enumerate() {
                    if end - start >= 1 << c && start < hint {
                        abort_with(format_args!(
                            "Bitset invariant broken: a run of {} clear bits at {start} \
                             (arena {meta:p}), below hints[{c}] = {hint}",
                            end - start
                        ));
                    }
                }
                at = map.find_clear(end..Self::BLOCKS);
            }
        });
        if arenas != self.arena_count {
            abort_with(format_args!(
                "Bitset invariant broken: {arenas} arenas on the chain, {} counted",
                self.arena_count
            ));
        }
        self.inner.check_invariants();
    }
}

impl<L: Layer, const BLOCK: usize, const ARENA: usize> Drop for Bitset<L, BLOCK, ARENA> {
    fn drop(&mut self) {
        self.deinit();
    }
}

impl<L: Layer + fmt::Debug, const BLOCK: usize, const ARENA: usize> fmt::Debug
    for Bitset<L, BLOCK, ARENA>
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bitset")
            .field("block", &BLOCK)
            .field("arena", &ARENA)
            .field("arenas", &self.arena_count)
            .field("used_blocks", &self.used_blocks())
            .field("inner", &self.inner)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::Buffer;
    use core::mem::MaybeUninit;

    type Small<'a> = Bitset<Buffer<'a>, 16, 1024>;

    fn layout(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).unwrap()
    }

    /// The word-at-a-time search and the hints give exactly first fit: against a model
    /// (`Vec<bool>`), over runs that cross words and alignments up to and past a word.
    #[test]
    fn first_fit_matches_a_model() {
        type Heap<'a> = Bitset<Buffer<'a>, 16, 8192>;
        const N: usize = Heap::BLOCKS;
        // Room for one aligned arena only: a request with no fit gets `None`.
        let mut memory = alloc::vec![MaybeUninit::uninit(); 2 * 8192 + 8 * Heap::META_WORDS];
        let mut heap = Heap::new(Buffer::new(&mut memory));
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
                let expect = (0..N)
                    .step_by(stride)
                    .find(|&s| s + blocks <= N && used[s..s + blocks].iter().all(|u| !u));
                let got = heap.get(l);
                let base = *base.get_or_insert_with(|| got.map(|p| p.as_ptr().addr()));
                let at = got.map(|p| (p.as_ptr().addr() - base.unwrap()) / 16);
                assert_eq!(at, expect, "{blocks} blocks at a stride of {stride}");
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
        let mut memory = alloc::vec![MaybeUninit::uninit(); 8192];
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
}
