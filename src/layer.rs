//! The `Layer` trait: the contract every heap layer keeps, with its terms defined once.
//!
//! # Terms
//!
//! <a id="owner"></a>**Owner.** Whoever called [`Layer::get`] and received a block owns it
//! until they hand it back with [`Layer::put`]. A layer that wraps another (say `Stats<L>`)
//! is the owner of the blocks it got from `L`; its caller owns the block it got from the
//! wrapper. Only the owner may put a block, and only to the layer it got it from: a block got
//! through `Stats<L>` goes back through `Stats<L>`, never straight to the `L` inside it.
//!
//! <a id="currently-allocated"></a>**Currently allocated.** A block is *currently
//! allocated* by a layer from the moment `get` returns it until the first of: it is put back
//! to that layer, the layer's [`deinit`](Layer::deinit) runs, the layer is dropped (also a
//! layer without a `Drop` of its own, such as a [`Buffer`](crate::layers::Buffer) whose
//! memory goes back to its owner), or an operation documented as ending every block (such
//! as [`Chunk::reset`](crate::layers::Chunk::reset)) runs.
//!
//! <a id="fits"></a>**Fits.** A layout *fits* a block when it is the layout the block was
//! got with (same size, same alignment), or the layout most recently accepted for it by a
//! successful [`grow`](Layer::grow) or [`shrink`](Layer::shrink). Puts are *sized*: the
//! layer is told the layout rather than having to remember it, as in the region seed and in
//! Heap-Layers.
//!
//! <a id="zero-size"></a>**Zero-size requests.** A layout of size 0 is a valid request. It
//! is served as a block of one byte: it has an address of its own, distinct from every
//! other currently allocated block, and must be put back like any other block. (The
//! [`Heap`](crate::Heap) adapter does not send zero-size requests down at all; it answers
//! them with a dangling, well-aligned pointer, as the standard collections expect.)
//!
//! <a id="window"></a>**Window.** A range of free memory that a layer hands over whole
//! ([`Layer::window`]), for the caller to carve small blocks out of by itself, as a bump
//! allocator would. A window is [currently allocated](crate::layer#currently-allocated)
//! as one piece: the blocks carved from it never go back through `put`, `grow` or `shrink`,
//! and its memory returns to the layer when every block ends (`deinit`, or an operation
//! such as [`Chunk::reset`](crate::layers::Chunk::reset)). The router uses windows to serve
//! a region's small blocks without a call into the stack.
//!
//! # Order
//!
//! A stack is written outside-in: in `Stats<Chunk<Batch<Mmap>, 4096>>` a request reaches
//! `Stats` first, then `Chunk`, which asks `Batch` only for whole chunks, which asks `Mmap`.
//! Frees travel the same way down. Each layer sees only what the layer above it passes on.
//!
//! # Checks
//!
//! The layers check themselves in three tiers, as mimalloc does (`mi_assert`,
//! `mi_assert_internal`, `mi_assert_expensive`). Each broken check writes one line and
//! aborts (a layer may be serving the global allocator, where a panic must not unwind).
//!
//! 1. **Duty checks**, debug builds only: the callers' duties listed on [`put`](Layer::put),
//!    [`grow`](Layer::grow) and [`shrink`](Layer::shrink), as far as a layer can see them in O(1):
//!    a block aligned to its layout and to the layer's [`MIN_ALIGN`](Layer::MIN_ALIGN); a `grow`
//!    that does not shrink, a `shrink` that does not grow, and neither changing the alignment. The
//!    crate's layers call one set of helpers (crate-private, in this file) at the top of those
//!    methods, and so do the default `grow` and `shrink`, so every message reads `<Layer>: <call>
//!    of <address> ...: <what is wrong> (a caller duty of Layer::<call>)`. A layer that checks a
//!    duty better itself (such as [`Check`](crate::layers::Check), which knows every live block's
//!    layout) keeps its own.
//! 2. **Internal checks**, debug builds only: what a layer assumes of its own state and of the
//!    layer below during one operation (a free-list node aligned for its link, an arena from the
//!    layer below aligned as asked, a small block fitting a fresh chunk), and the checks of a put
//!    that look into the layer's structures (a block put to `Buddy` or `Bitset` that is cached
//!    already, or that lies in none of its arenas; a large block put to `Chunk` whose header is
//!    no longer on its list). Both tiers are written with the crate's `debug_require!` (or, for
//!    a check of a few lines, under `if cfg!(debug_assertions)`), so release builds neither run
//!    nor keep them.
//! 3. **Whole-structure checks**: [`check_invariants`](Layer::check_invariants), which walks
//!    everything a layer keeps. The conformance suite calls it after every step. With the
//!    `paranoid` feature (for tests only: every operation then walks the whole stack below
//!    it, as talc's `scan_for_errors`), every layer that has one calls it at the top of its
//!    `get`, `put`, `grow` and `shrink` too (through one helper, as do the default `grow` and
//!    `shrink`): every test, not only the suite, then checks every structure of its stack
//!    before each operation, and a broken one is reported by the first operation that
//!    meets it, inner layers' included.
//!
//! A few checks stay on in release builds because they are O(1) and stop likely misuse
//! from corrupting memory: `Slab`'s header check word, `Coalesce`'s sealed headers,
//! `Mmap`'s look-up of the block put, `Reserve`'s range check of the block put.
//!
//! # Fill bytes
//!
//! In debug builds, the layers that hand out memory again after it was put back
//! ([`FreeList`](crate::layers::FreeList), [`SizeClasses`](crate::layers::SizeClasses),
//! [`Slab`](crate::layers::Slab), [`Coalesce`](crate::layers::Coalesce),
//! [`Buddy`](crate::layers::Buddy), [`Bitset`](crate::layers::Bitset), and
//! [`Chunk`](crate::layers::Chunk), which takes back its most recent block and re-carves
//! its chunks after a reset) fill every block they hand out with [`FRESH`] (`0xD0`) and
//! every block put back to them with [`FREED`] (`0xDF`), so that a dump shows at a glance a
//! read of memory never written (`d0 d0 d0 d0`) or a use after free (`df df df df`).
//!
//! - The fill covers the block as the layer holds it: its size class (`FreeList`,
//!   `SizeClasses`, `Slab`), the bytes after its boundary tag (`Coalesce`), its order
//!   (`Buddy`), its run of blocks (`Bitset`), the size asked for (`Chunk`).
//! - A freed block keeps unfilled the links the layer writes into it: the first word of a
//!   `FreeList`, `SizeClasses`, `Slab` or `Bitset` block (a free list's or put cache's
//!   link), the first 16 bytes of a `Coalesce` or `Buddy` block (a free list's two links).
//!   The fill comes before the links are written; tags, headers and bitmaps lie outside
//!   the blocks.
//! - Not filled: blocks a layer passes through to the layer below (the larger requests of
//!   `FreeList`, `SizeClasses` and `Slab`, and the large blocks of `Coalesce` and `Chunk`,
//!   each a piece of the layer below); windows; [`Batch`](crate::layers::Batch), which
//!   never hands a block out again (its puts wait for `deinit`) and keeps its source's
//!   `ZEROED`; the sources; and every layer whose [`ZEROED`](Layer::ZEROED) is `true`.
//!
//! One helper writes every fill, and release builds compile it to nothing.

use core::alloc::Layout;
use core::ptr::NonNull;

use crate::abort::debug_require;

/// A heap layer: a source of blocks that can be stacked on other layers.
///
/// Each layer does one thing (bump allocation, booking, counting, checking) and forwards
/// the rest to the layer it wraps, so that whole allocators are types such as
/// `Stats<Chunk<Batch<Check<Stats<Mmap>>>, 4096>>`. The terms used below are defined in
/// the [module documentation](crate::layer): [owner](crate::layer#owner),
/// [currently allocated](crate::layer#currently-allocated), [fits](crate::layer#fits) and
/// [zero-size requests](crate::layer#zero-size).
///
/// A layer is plain data used through `&mut self`. Sharing one between handles or threads
/// is the job of an adapter: [`Heap`](crate::Heap) for one thread,
/// [`Locked`](crate::Locked) for many (and for `#[global_allocator]`).
///
/// # Safety
///
/// The trait is `unsafe` because callers write through the blocks it returns: a wrong
/// implementation makes their code unsound. **Implementors must** keep all of these:
///
/// - A block returned by [`get`](Layer::get) is valid for reads and writes of
///   `layout.size()` bytes (one byte for a [zero-size request](crate::layer#zero-size)), is
///   aligned to `layout.align()` and to [`MIN_ALIGN`](Layer::MIN_ALIGN), and does not
///   overlap any other block that is [currently allocated](crate::layer#currently-allocated)
///   by this layer. It stays valid until it stops being currently allocated.
/// - Moving the layer (it is plain data) does not move or invalidate its blocks.
/// - When [`ZEROED`](Layer::ZEROED) is `true`, every byte of a block returned by `get` is 0.
/// - A [window](crate::layer#window) returned by [`window`](Layer::window) is valid for
///   reads and writes over its whole range, does not overlap any block or other window
///   currently allocated by this layer, and holds at least one block fitting the layout
///   asked for (carved downward from its end, as [`window`](Layer::window) describes).
///   Only layers whose [`WINDOW_LIMIT`](Layer::WINDOW_LIMIT) is above 0 return one.
/// - [`put`](Layer::put), [`grow`](Layer::grow) and [`shrink`](Layer::shrink) accept every
///   call that keeps the callers' duties listed on them.
/// - [`owns`](Layer::owns) returns `true` only for addresses inside memory this layer
///   manages (a block it has currently allocated, or space it holds for later blocks),
///   never for memory of another layer or of the caller. When
///   [`OWNS_EXACT`](Layer::OWNS_EXACT) is `true`, it also returns `true` for every block
///   the layer has currently allocated (its start); when
///   [`OWNS_INTERIOR`](Layer::OWNS_INTERIOR) is, for every address inside one.
/// - After [`deinit`](Layer::deinit) the layer holds no memory and is usable again, as if
///   fresh from [`init`](Layer::init); a second `deinit` does nothing. `Drop`, where a layer
///   implements it, calls `deinit`.
/// - No method allocates through the global allocator (a layer may be serving it), and no
///   code of the layer (its methods, and its `Debug` and [`Gauge`](crate::Gauge) impls)
///   reaches back into an adapter that holds it. The one exception is code of the caller's
///   that a layer calls, [`OnRelease`](crate::layers::OnRelease)'s hook: an adapter that
///   lends its stack out mutably must catch a call that comes back from inside the stack,
///   as [`Heap`](crate::Heap) and [`Locked`](crate::Locked) do.
/// - No panic unwinds out of [`get`](Layer::get), [`put`](Layer::put),
///   [`grow`](Layer::grow), [`shrink`](Layer::shrink) or [`window`](Layer::window): a layer
///   may be serving the global allocator, and unwinding out of an allocator is undefined
///   behaviour. Where a layer finds something it cannot go on from, it aborts with one line
///   (as the crate's layers do on a double put). [`deinit`](Layer::deinit) does not unwind
///   either, except to report leaks after it has released everything, as
///   [`Check`](crate::layers::Check) does; allocators never call it from inside an
///   allocation or a free of a live stack. Nor does the layer's `Drop`: the region router
///   deinitialises and drops the stack of a region that ended with blocks live once the
///   last of them is freed, which may be from inside an allocation (nothing is left to
///   report by then). Callers that are allocators (the region router,
///   [`Locked`](crate::Locked)'s `GlobalAlloc`) still guard every call they make into a
///   stack, so that a layer that breaks this duty aborts the process with one line naming
///   it instead of unwinding; other callers may rely on the duty.
/// - A layer that is `Send` keeps all of the above when moved to another thread.
///
/// **Callers must** keep the duties listed on [`put`](Layer::put), [`grow`](Layer::grow)
/// and [`shrink`](Layer::shrink), and must not use a block after it stops being currently
/// allocated.
///
/// # Example
///
/// A layer that counts nothing and forwards everything, the template for new layers:
///
/// ```
/// use core::{alloc::Layout, ptr::NonNull};
/// use stratalloc::Layer;
///
/// struct Forward<L>(L);
///
/// // SAFETY: every block comes unchanged from `L`, which keeps the contract; puts go back
/// // to `L` with the caller's duties passed on.
/// unsafe impl<L: Layer> Layer for Forward<L> {
///     // Both properties pass through only because `Forward` hands out `L`'s blocks
///     // unchanged. A layer that moves blocks within `L`'s (a header in front) keeps only
///     // the alignment it can prove; one that writes into blocks (a free-list link, a fill
///     // pattern, a header) or reuses them must not claim `ZEROED` from `L`: leave the
///     // default `false`. `WINDOW_LIMIT` stays 0: a window would bypass this layer.
///     const MIN_ALIGN: usize = L::MIN_ALIGN;
///     const ZEROED: bool = L::ZEROED;
///     fn get(&mut self, layout: Layout) -> Option<NonNull<u8>> {
///         self.0.get(layout)
///     }
///     unsafe fn put(&mut self, ptr: NonNull<u8>, layout: Layout) {
///         // SAFETY: our caller's duties are `L::put`'s duties; the block came from `L`.
///         unsafe { self.0.put(ptr, layout) }
///     }
///     fn init() -> Self {
///         Forward(L::init())
///     }
///     fn deinit(&mut self) {
///         self.0.deinit()
///     }
/// }
/// ```
///
/// # Testing a layer
///
/// With the `testing` feature, `stratalloc::testing::check_layer(|| Forward(System::new()))`
/// in a `#[test]` runs the conformance suite that every layer of this crate passes on a new
/// layer: random programs of gets, puts, resizes and windows, each block filled with a
/// pattern and verified before it is put; overlap, alignment, `ZEROED`, `WINDOW_LIMIT`,
/// `owns` and `check_invariants` checked after every step; the smallest failing program
/// printed when something breaks (see the `testing` module).
pub unsafe trait Layer {
    /// The alignment every block of this layer has at least, whatever the layout asked
    /// for (a power of two). `Mmap` guarantees a page; most layers guarantee nothing beyond
    /// the layout, which is `1`.
    const MIN_ALIGN: usize = 1;

    /// Whether every block returned by `get` is zero-filled. Adapters use it to skip
    /// clearing memory for zeroed allocations.
    const ZEROED: bool = false;

    /// The largest size and alignment of the blocks a caller may carve out of a
    /// [window](crate::layer#window) instead of calling `get`; 0 (the default) when the
    /// layer hands out no windows. Layers that must see every block (counting, checking)
    /// keep 0.
    const WINDOW_LIMIT: usize = 0;

    /// Whether [`owns`](Layer::owns) answers `true` for every block this layer has
    /// currently allocated, so that `false` means "not mine" rather than "cannot tell".
    /// Layers that route puts by ownership ([`Fallback`](crate::layers::Fallback)) need it
    /// of the layer they ask. The default is `false`.
    const OWNS_EXACT: bool = false;

    /// Whether [`owns`](Layer::owns) answers `true` for every address inside every block
    /// this layer has currently allocated, not only for its start: so do layers that own by
    /// address range (a map, a buffer, an arena). A layer that hands out blocks inside
    /// the blocks it gets from `L` (behind a header, or carved from a run) and asks `L`
    /// whose they are is exact only when this holds of `L`. The default is `false`.
    const OWNS_INTERIOR: bool = false;

    /// Returns a block that fits `layout`, or `None` when the layer cannot provide one
    /// (out of memory, or a size that overflows once the layer rounds it).
    ///
    /// The block is aligned to `layout.align()`, holds `layout.size()` bytes (one byte for
    /// a [zero-size request](crate::layer#zero-size)), and is disjoint from every other
    /// block this layer has [currently allocated](crate::layer#currently-allocated).
    /// Its contents are unspecified unless [`ZEROED`](Layer::ZEROED) says otherwise.
    fn get(&mut self, layout: Layout) -> Option<NonNull<u8>>;

    /// Gives a block back to the layer.
    ///
    /// # Safety
    ///
    /// Callers must ensure that:
    /// - `ptr` was returned by `get` on this same layer, the caller is its
    ///   [owner](crate::layer#owner), and it is
    ///   [currently allocated](crate::layer#currently-allocated);
    /// - `layout` [fits](crate::layer#fits) the block.
    ///
    /// Afterwards the block is no longer the caller's: it must not be read, written or put
    /// again.
    unsafe fn put(&mut self, ptr: NonNull<u8>, layout: Layout);

    /// Creates the layer, and the layers below it, in their empty state.
    ///
    /// Every layer also has a `const fn new(..)` so that a stack can live in a `static`.
    fn init() -> Self
    where
        Self: Sized;

    /// Releases everything the layer holds, including what the layers below it hold.
    ///
    /// Every block this layer handed out stops being
    /// [currently allocated](crate::layer#currently-allocated). The layer stays usable; a
    /// second call does nothing.
    fn deinit(&mut self);

    /// Tries to grow a block in place to `new`. Returns `true` when the block now fits
    /// `new` (same address, the first `old.size()` bytes kept, and a zero-size block's one
    /// byte), `false` when it is left as it was. The default never grows.
    ///
    /// # Safety
    ///
    /// Callers must ensure that `ptr` is a block of this layer that they
    /// [own](crate::layer#owner) and that is
    /// [currently allocated](crate::layer#currently-allocated), that `old`
    /// [fits](crate::layer#fits) it, that `new.size() >= old.size()`, and that
    /// `new.align() == old.align()`.
    unsafe fn grow(&mut self, ptr: NonNull<u8>, old: Layout, new: Layout) -> bool {
        paranoid(self);
        require_grow::<Self>(ptr, old, new);
        false
    }

    /// Tries to shrink a block in place to `new`. Returns `true` when the block now fits
    /// `new`, `false` when it is left as it was. The default never shrinks.
    ///
    /// # Safety
    ///
    /// Callers must ensure that `ptr` is a block of this layer that they
    /// [own](crate::layer#owner) and that is
    /// [currently allocated](crate::layer#currently-allocated), that `old`
    /// [fits](crate::layer#fits) it, that `new.size() <= old.size()`, and that
    /// `new.align() == old.align()`.
    unsafe fn shrink(&mut self, ptr: NonNull<u8>, old: Layout, new: Layout) -> bool {
        paranoid(self);
        require_shrink::<Self>(ptr, old, new);
        false
    }

    /// Hands over a [window](crate::layer#window) for blocks fitting `layout`, or `None`
    /// when the layer gives no windows, when `layout`'s size or alignment is above
    /// [`WINDOW_LIMIT`](Layer::WINDOW_LIMIT), or when it is out of memory.
    ///
    /// The window is guaranteed to hold a block fitting `layout` carved from its end: its
    /// end minus the layout's size (one byte for a zero-size layout), rounded down to
    /// `layout.align()`, is not below its start. Blocks carved from it belong to the caller
    /// until every block of the layer ends; the caller never puts them back. The default
    /// gives none.
    ///
    /// ```
    /// use core::alloc::Layout;
    /// use stratalloc::{Layer, layers::{Buffer, Chunk}};
    ///
    /// let mut memory = [core::mem::MaybeUninit::uninit(); 4096];
    /// let mut chunk = Chunk::<_, 1024>::new(Buffer::new(&mut memory));
    /// let window = chunk.window(Layout::new::<u64>()).expect("room for a chunk");
    /// assert!(window.len() >= 8);
    /// ```
    fn window(&mut self, layout: Layout) -> Option<NonNull<[u8]>> {
        let _ = layout;
        None
    }

    /// Whether `ptr` lies inside memory this layer manages: a block it has currently
    /// allocated, or space it holds for later ones. The default, for layers that cannot
    /// tell, answers `false`; a `false` therefore means "not known to be mine", while a
    /// `true` is always reliable.
    fn owns(&self, ptr: NonNull<u8>) -> bool {
        let _ = ptr;
        false
    }

    /// The blocks a checking layer at the top of this stack sees live, or `None` when the
    /// layer does not check. [`Check`](crate::layers::Check) answers; pass-through layers
    /// ([`Stats`](crate::layers::Stats)) forward the question; layers that change what the
    /// layer below sees (`Chunk`, `Batch`) do not, since below them blocks are chunks, not
    /// the caller's. A region asks its stack this when it ends with blocks live.
    fn leak_report(&self) -> Option<crate::LeakReport> {
        None
    }

    /// Checks the layer's internal invariants, then those of the layers below, and aborts
    /// with a message naming the first one broken. It walks whole structures, so it is
    /// expensive: the conformance suite calls it after every operation; programs should
    /// not. The default checks nothing of its own.
    fn check_invariants(&self) {}
}

/// A layer that knows each block's size from its address alone, so that a block can be
/// put back without its layout: what C's `free` and `malloc_usable_size` need (see
/// [`ThreadHeaps::free`](crate::ThreadHeaps::free)).
///
/// # Safety
///
/// **Implementors must** keep the [`Layer`] contract, and: `usable_size` returns a size
/// the block holds (at least the size of every layout that [fits](crate::layer#fits) it,
/// and every byte of it valid for reads and writes while the block lives), `put_unsized`
/// does exactly what `put` would do with a layout that fits the block, and `grow_unsized`
/// what `grow` would do with a layout that fits it and a new one of `new_size` bytes and
/// the same alignment.
///
/// **Callers must** keep the duties listed on each method.
pub unsafe trait Measured: Layer {
    /// The bytes the block really holds.
    ///
    /// # Safety
    ///
    /// `ptr` was returned by `get` on this layer and is
    /// [currently allocated](crate::layer#currently-allocated).
    unsafe fn usable_size(&self, ptr: NonNull<u8>) -> usize;

    /// Gives a block back without its layout.
    ///
    /// # Safety
    ///
    /// As for [`put`](Layer::put), less the layout: `ptr` was returned by `get` on this
    /// layer, the caller owns it and it is currently allocated. It is not used afterwards.
    unsafe fn put_unsized(&mut self, ptr: NonNull<u8>);

    /// Grows a block in place to hold `new_size` bytes, keeping its alignment, without its
    /// layout (what C's `realloc` needs); `false`, and the block unchanged, when it cannot.
    /// Afterwards `usable_size` is at least `new_size`.
    ///
    /// # Safety
    ///
    /// `ptr` was returned by `get` on this layer and is currently allocated, and `new_size`
    /// is more than its [`usable_size`](Measured::usable_size).
    unsafe fn grow_unsized(&mut self, ptr: NonNull<u8>, new_size: usize) -> bool;

    /// A block that fits `layout`, as [`get`](Layer::get) returns, whose first
    /// `layout.size()` bytes are zero (what C's `calloc` and `GlobalAlloc::alloc_zeroed`
    /// need). The default zeroes what `get` returned; a layer that knows a block is zero
    /// already (a piece fresh from a [`ZEROED`](Layer::ZEROED) layer below, whose pages
    /// the OS maps on first touch) skips that, so that a large zeroed request costs no
    /// memory until it is written.
    fn get_zeroed(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        let block = self.get(layout)?;
        // SAFETY: a fresh block of ours, valid for writes of `layout.size()` bytes.
        unsafe { block.as_ptr().write_bytes(0, layout.size()) };
        Some(block)
    }
}

/// The size a layer actually serves for `layout`: its size, or one byte for a
/// [zero-size request](crate::layer#zero-size).
#[inline(always)]
pub(crate) const fn served_size(layout: Layout) -> usize {
    if layout.size() == 0 { 1 } else { layout.size() }
}

// ---- fill bytes (see "Fill bytes" above) -----------------------------------------------

/// The byte a layer that reuses memory fills every block it hands out with, in debug
/// builds: bytes that read `d0` were never written by the block's owner. See
/// [Fill bytes](crate::layer#fill-bytes).
pub const FRESH: u8 = 0xD0;

/// The byte a layer that reuses memory fills every block put back to it with, in debug
/// builds, past the links it keeps there: bytes that read `df` belong to a freed block. See
/// [Fill bytes](crate::layer#fill-bytes).
pub const FREED: u8 = 0xDF;

/// Fills bytes `skip..len` of `block` with `byte` ([`FRESH`] or [`FREED`]) in debug builds,
/// unless `L` promises zeroed blocks ([`ZEROED`](Layer::ZEROED)); nothing when
/// `len <= skip`, and nothing at all in release builds. `skip` leaves the links `L` keeps
/// at the start of a free block.
///
/// # Safety
///
/// Bytes `skip..len` of `block` are valid for writes and are `L`'s to write: a block it is
/// handing out, or one put back to it, before it writes its links there.
#[inline(always)]
pub(crate) unsafe fn fill<L: Layer + ?Sized>(block: *mut u8, skip: usize, len: usize, byte: u8) {
    if cfg!(debug_assertions) && !L::ZEROED && len > skip {
        // SAFETY: the caller's duty.
        unsafe { block.add(skip).write_bytes(byte, len - skip) }
    }
}

/// The offset of the first byte of `bytes` that is not `byte`, or `None`: how the debugging
/// layers check their poison and guard bytes. The usual answer is `None`, so the whole run
/// is compared first with no early exit ([`differs_anywhere`]), which the compiler turns
/// into vector compares; only a run that differs is searched byte by byte.
#[inline]
pub(crate) fn first_byte_not(bytes: &[u8], byte: u8) -> Option<usize> {
    if differs_anywhere(bytes, byte) {
        bytes.iter().position(|&b| b != byte)
    } else {
        None
    }
}

/// Whether any byte of `bytes` is not `byte`: the check behind every poison and guard
/// byte the debugging layers verify, so its usual answer is `false` and it never exits
/// early. Runs under 32 bytes take two overlapping 16-byte lanes, two overlapping words, or
/// bytes one by one under 8; longer runs go through [`differs_in_groups`] of 32 bytes (two
/// SSE2 registers).
#[inline]
pub(crate) fn differs_anywhere(bytes: &[u8], byte: u8) -> bool {
    let len = bytes.len();
    if len >= 32 {
        return differs_in_groups::<32>(bytes, byte);
    }
    if len >= 16 {
        return differs_in_groups::<16>(bytes, byte);
    }
    if len >= 8 {
        let word = |at: usize| {
            let mut word = [byte; 8];
            word.copy_from_slice(&bytes[at..at + 8]);
            u64::from_ne_bytes(word) ^ u64::from_ne_bytes([byte; 8])
        };
        return word(0) | word(len - 8) != 0;
    }
    bytes.iter().any(|&b| b != byte)
}

/// Whether any byte of `bytes` (at least `GROUP` of them) is not `byte`: each whole group's
/// differences are ORed into one `GROUP`-byte accumulator with no branch (the compiler makes
/// it vector registers, and a vector XOR and OR a register's width), then one last group
/// ending at the end (it may overlap bytes already compared, harmlessly).
#[inline(always)]
fn differs_in_groups<const GROUP: usize>(bytes: &[u8], byte: u8) -> bool {
    let len = bytes.len();
    let mut acc = [0u8; GROUP];
    let mut whole = bytes.chunks_exact(GROUP);
    for group in whole.by_ref() {
        or_differences(&mut acc, group, byte);
    }
    if !whole.remainder().is_empty() {
        or_differences(&mut acc, &bytes[len - GROUP..], byte);
    }
    acc.iter().fold(0, |any, &acc| any | acc) != 0
}

/// ORs the difference of each byte of `group` from `byte` into `acc`.
#[inline(always)]
fn or_differences<const GROUP: usize>(acc: &mut [u8; GROUP], group: &[u8], byte: u8) {
    for (acc, &b) in acc.iter_mut().zip(group) {
        *acc |= b ^ byte;
    }
}

// ---- checks (tiers 1 and 3 of "Checks" above) -------------------------------------------

/// Tier 3 at the top of an operation: `layer.check_invariants()` with the `paranoid`
/// feature, nothing without it.
#[inline(always)]
pub(crate) fn paranoid<L: Layer + ?Sized>(layer: &L) {
    if cfg!(feature = "paranoid") {
        layer.check_invariants();
    }
}

/// Tier 1 for [`Layer::put`]: in debug builds, aborts unless `ptr` is aligned to `layout`
/// and to `L`'s [`MIN_ALIGN`](Layer::MIN_ALIGN), as every block `L` hands out is.
#[inline(always)]
pub(crate) fn require_put<L: Layer + ?Sized>(ptr: NonNull<u8>, layout: Layout) {
    require_block::<L>("put", ptr, layout);
}

/// Tier 1 for [`Layer::grow`]: in debug builds, aborts unless the call keeps the duties
/// that can be seen from its arguments (see [`require_block`] and [`require_resize`]) and
/// `new.size() >= old.size()`.
#[inline(always)]
pub(crate) fn require_grow<L: Layer + ?Sized>(ptr: NonNull<u8>, old: Layout, new: Layout) {
    require_resize::<L>("grow", ptr, old, new);
    debug_require!(
        new.size() >= old.size(),
        "{}: grow of {ptr:p} ({}) to {}: the new size is below the old one (a caller duty \
         of Layer::grow)",
        layer_name::<L>(),
        Shown(old),
        Shown(new)
    );
}

/// Tier 1 for [`Layer::shrink`]: as [`require_grow`], with `new.size() <= old.size()`.
#[inline(always)]
pub(crate) fn require_shrink<L: Layer + ?Sized>(ptr: NonNull<u8>, old: Layout, new: Layout) {
    require_resize::<L>("shrink", ptr, old, new);
    debug_require!(
        new.size() <= old.size(),
        "{}: shrink of {ptr:p} ({}) to {}: the new size is above the old one (a caller duty \
         of Layer::shrink)",
        layer_name::<L>(),
        Shown(old),
        Shown(new)
    );
}

/// The duties `grow` and `shrink` share: the block is one of `L`'s fitting `old`, and
/// `new.align() == old.align()`.
#[inline(always)]
fn require_resize<L: Layer + ?Sized>(call: &str, ptr: NonNull<u8>, old: Layout, new: Layout) {
    require_block::<L>(call, ptr, old);
    debug_require!(
        new.align() == old.align(),
        "{}: {call} of {ptr:p} ({}) to {}: the alignment changes (a caller duty of \
         Layer::{call})",
        layer_name::<L>(),
        Shown(old),
        Shown(new)
    );
}

/// The duties on the block itself that an address shows: a block that `layout` fits is
/// aligned to it, and every block of `L` to `L::MIN_ALIGN`.
#[inline(always)]
fn require_block<L: Layer + ?Sized>(call: &str, ptr: NonNull<u8>, layout: Layout) {
    let addr = ptr.as_ptr().addr();
    debug_require!(
        addr.is_multiple_of(layout.align()),
        "{}: {call} of {ptr:p} ({}): the block is not aligned to the layout, so the layout does \
         not fit it (a caller duty of Layer::{call})",
        layer_name::<L>(),
        Shown(layout)
    );
    debug_require!(
        addr.is_multiple_of(L::MIN_ALIGN),
        "{}: {call} of {ptr:p} ({}): the address is not aligned to the layer's MIN_ALIGN \
         ({}), so it is no block of this layer (a caller duty of Layer::{call})",
        layer_name::<L>(),
        Shown(layout),
        L::MIN_ALIGN
    );
}

/// The name of layer `L` in a message: its type's name without path or parameters.
fn layer_name<L: ?Sized>() -> &'static str {
    let full = core::any::type_name::<L>();
    let head = full.split('<').next().unwrap_or(full);
    head.rsplit("::").next().unwrap_or(head)
}

/// A layout as the messages show it: `size 24, align 8`.
pub(crate) struct Shown(pub(crate) Layout);

impl core::fmt::Display for Shown {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "size {}, align {}", self.0.size(), self.0.align())
    }
}

/// Takes a wrapper apart for its `into_inner`, written once for every layer with a `Drop`
/// (which forbids moving a field out): runs `finish` on the wrapper (what its `Drop` would
/// have done first, such as giving back what it holds to the layer inside), then moves the
/// field that `field` picks out, and forgets the rest. The wrapper's `Drop` never runs, not
/// even when `finish` unwinds.
///
/// # Safety
///
/// `field` returns a field of the value it is given, found without following a pointer
/// (`|this| &this.inner`): that field is moved out once, and it is all of the value that
/// is ever dropped. What the other fields still hold is leaked.
#[inline]
pub(crate) unsafe fn into_field<T, F>(
    value: T,
    finish: impl FnOnce(&mut T),
    field: impl FnOnce(&T) -> &F,
) -> F {
    let mut value = core::mem::ManuallyDrop::new(value);
    finish(&mut value);
    // SAFETY: the field lies inside `value` (the caller's duty), which is never used or
    // dropped again, so the field is moved out once.
    unsafe { core::ptr::read(field(&value)) }
}

/// Writes a wrapper layer's ways to the layer below it, held in its field `inner` of type
/// `L`: `inner`, `inner_mut` and, when asked for, `into_inner`, inside the wrapper's
/// inherent `impl`, so that they read the same at every layer and only what differs is
/// written there:
///
/// - `owns: "..."` names what the layer owns of the one below, for `inner_mut`'s `# Safety`
///   section ("Callers must not put, deinit or reset, through this reference, *what*: they
///   belong to this layer"); doc lines written before it follow that sentence;
/// - `into_inner after release: "every arena";` unwraps the layer through [`into_field`]
///   after its `release(&mut self)` gives back what it holds (a layer with a `Drop`);
///   `into_inner;`, after its doc lines, moves `inner` out (a layer without one); with
///   neither, the layer writes `into_inner` itself (as `Check` does, to report leaks).
macro_rules! layer_below {
    (
        $(#[$more_safety:meta])*
        owns: $owns:literal;
        $($into_inner:tt)*
    ) => {
        /// The layer below.
        pub const fn inner(&self) -> &L {
            &self.inner
        }

        /// The layer below, mutably.
        ///
        /// # Safety
        ///
        #[doc = concat!(
            "Callers must not put, deinit or reset, through this reference, ",
            $owns,
            ": they belong to this layer (see [owner](crate::layer#owner))."
        )]
        $(#[$more_safety])*
        pub const unsafe fn inner_mut(&mut self) -> &mut L {
            &mut self.inner
        }

        $crate::layer::layer_below!(@into_inner $($into_inner)*);
    };
    (@into_inner) => {};
    (@into_inner into_inner after release: $what:literal;) => {
        #[doc = concat!("Unwraps the layer below, after giving it back ", $what, ".")]
        pub fn into_inner(self) -> L {
            // SAFETY: `inner` is a field of the layer.
            unsafe { $crate::layer::into_field(self, Self::release, |this| &this.inner) }
        }
    };
    (@into_inner $(#[$doc:meta])* into_inner;) => {
        $(#[$doc])*
        pub fn into_inner(self) -> L {
            self.inner
        }
    };
}
pub(crate) use layer_below;

/// `grow` and `shrink` for a wrapper whose blocks are its inner layer's, unchanged (in
/// place, or held back for later, as `Deferred` and `Quarantine` hold put blocks): the duty
/// checks, then the call goes to the layer in its `inner` field.
macro_rules! resizes_go_below {
    () => {
        unsafe fn grow(
            &mut self,
            ptr: core::ptr::NonNull<u8>,
            old: core::alloc::Layout,
            new: core::alloc::Layout,
        ) -> bool {
            $crate::layer::paranoid(self);
            $crate::layer::require_grow::<Self>(ptr, old, new);
            // SAFETY: a live block, which the inner layer handed out unchanged; the
            // caller's duties are that layer's.
            unsafe { self.inner.grow(ptr, old, new) }
        }

        unsafe fn shrink(
            &mut self,
            ptr: core::ptr::NonNull<u8>,
            old: core::alloc::Layout,
            new: core::alloc::Layout,
        ) -> bool {
            $crate::layer::paranoid(self);
            $crate::layer::require_shrink::<Self>(ptr, old, new);
            // SAFETY: as for `grow`.
            unsafe { self.inner.shrink(ptr, old, new) }
        }
    };
}
pub(crate) use resizes_go_below;

#[cfg(test)]
mod tests {
    use super::*;
    use core::cell::Cell;

    /// Every length up to 100 (under Miri 41: a group and a tail), every position of one
    /// changed byte, and no change at all: the same answer as a byte-by-byte search.
    #[test]
    fn first_byte_not_finds_every_changed_byte() {
        let longest = if cfg!(miri) { 41 } else { 100 };
        let mut bytes = [0xDFu8; 100];
        for len in 0..=longest {
            assert_eq!(first_byte_not(&bytes[..len], 0xDF), None, "length {len}");
            for at in 0..len {
                bytes[at] = 0x5A;
                assert_eq!(
                    first_byte_not(&bytes[..len], 0xDF),
                    Some(at),
                    "length {len}"
                );
                // A second change after the first does not move the answer.
                bytes[len - 1] ^= 1;
                assert_eq!(
                    first_byte_not(&bytes[..len], 0xDF),
                    Some(at),
                    "length {len}"
                );
                bytes[len - 1] ^= 1;
                bytes[at] = 0xDF;
            }
        }
    }

    /// Counts its drops in the cell it points to.
    struct Counted<'a>(&'a Cell<u32>);

    impl Drop for Counted<'_> {
        fn drop(&mut self) {
            self.0.set(self.0.get() + 1);
        }
    }

    /// A wrapper whose `Drop` must not run once it is taken apart.
    struct Wrapper<'a> {
        inner: Counted<'a>,
        finished: bool,
    }

    impl Drop for Wrapper<'_> {
        fn drop(&mut self) {
            panic!("the wrapper's `Drop` ran");
        }
    }

    #[test]
    fn into_field_finishes_then_moves_the_field_out_once() {
        let drops = Cell::new(0);
        let wrapper = Wrapper {
            inner: Counted(&drops),
            finished: false,
        };
        let mut finished = false;
        // SAFETY: `inner` is a field of the wrapper.
        let inner = unsafe {
            into_field(
                wrapper,
                |this| {
                    this.finished = true;
                    finished = this.finished;
                },
                |this| &this.inner,
            )
        };
        assert!(finished);
        assert_eq!(drops.get(), 0, "moved, not dropped");
        drop(inner);
        assert_eq!(drops.get(), 1, "dropped once");
    }

    /// Every layer's `into_inner` gives back what the layer holds before it hands out the
    /// layer below.
    #[test]
    fn into_inner_gives_everything_back_first() {
        use crate::Gauge;
        use crate::layers::{
            Batch, Bitset, Buddy, Buffer, Check, Chunk, Coalesce, FreeList, SizeClasses, Slab,
            Stats,
        };
        type Below<'a> = Stats<Buffer<'a>>;
        fn layout(i: usize) -> Layout {
            Layout::from_size_align(16 << (i % 6), 8).expect("a valid layout")
        }
        macro_rules! gives_back {
            ($($layer:ty),* $(,)?) => {$({
                let mut memory = alloc::boxed::Box::new_uninit_slice(4 << 20);
                let mut layer = <$layer>::new(Stats::new(Buffer::new(&mut memory)));
                let blocks: alloc::vec::Vec<_> = (0..8)
                    .map(|i| layer.get(layout(i)).expect("memory enough"))
                    .collect();
                for (i, block) in blocks.into_iter().enumerate() {
                    // SAFETY: got just above with this layout, put once.
                    unsafe { layer.put(block, layout(i)) };
                }
                let below = layer.into_inner();
                assert_eq!(below.gauge().live, 0, "{}", core::any::type_name::<$layer>());
            })*};
        }
        gives_back!(
            Batch<Below<'_>>,
            Bitset<Below<'_>, 64, 65536>,
            Buddy<Below<'_>, 5, 16>,
            Check<Below<'_>>,
            Chunk<Below<'_>, 4096>,
            Coalesce<Below<'_>, 65536>,
            FreeList<Below<'_>, 32>,
            SizeClasses<Below<'_>, 16384>,
            Slab<Below<'_>, 16384>,
        );
    }

    /// The bytes of `len` from `block`, read one by one (a block the layer holds, whose
    /// links may be there).
    #[cfg(debug_assertions)]
    fn bytes(block: NonNull<u8>, len: usize) -> alloc::vec::Vec<u8> {
        // SAFETY: every caller reads a block of the test's own buffer, all of whose bytes
        // were written (filled, or a link).
        (0..len)
            .map(|i| unsafe { block.as_ptr().add(i).read() })
            .collect()
    }

    /// Every layer that reuses memory hands out its blocks filled with `FRESH` and fills the
    /// blocks put back with `FREED`, past the links it keeps there; a block handed out again
    /// is `FRESH` again (debug builds: release builds write nothing).
    #[test]
    #[cfg(debug_assertions)]
    fn reusing_layers_fill_fresh_and_freed_blocks() {
        use crate::layers::{Bitset, Buddy, Buffer, Chunk, Coalesce, FreeList, SizeClasses, Slab};
        let layout = Layout::from_size_align(40, 8).expect("a valid layout");
        // Each layer with the bytes it holds for `layout` and the bytes of its links.
        macro_rules! fills {
            ($($layer:ty => ($held:expr, $links:expr)),* $(,)?) => {$({
                let name = core::any::type_name::<$layer>();
                let mut memory = alloc::boxed::Box::new_uninit_slice(1 << 20);
                let mut layer = <$layer>::new(Buffer::new(&mut memory));
                // A neighbour first: `a` is then the most recent block (which `Chunk` takes
                // back), and a `Coalesce` block with a block in use on its left.
                let neighbour = layer.get(layout).expect("memory enough");
                let a = layer.get(layout).expect("memory enough");
                assert!(bytes(a, $held).iter().all(|&b| b == FRESH), "{name}: fresh");
                // SAFETY: `a` holds `layout.size()` bytes; it is put once, with its layout,
                // and read afterwards only as bytes of the test's buffer.
                unsafe {
                    a.as_ptr().write_bytes(0x55, layout.size());
                    layer.put(a, layout);
                }
                let freed = bytes(a, $held);
                assert!(freed[$links..].iter().all(|&b| b == FREED), "{name}: freed {freed:x?}");
                let again = layer.get(layout).expect("memory enough");
                assert_eq!(again, a, "{name}: the freed block is reused");
                assert!(bytes(again, $held).iter().all(|&b| b == FRESH), "{name}: refilled");
                layer.check_invariants();
                // SAFETY: both live, put once with their layout.
                unsafe {
                    layer.put(again, layout);
                    layer.put(neighbour, layout);
                }
            })*};
        }
        fills!(
            FreeList<Buffer<'_>, 64> => (64, 8),
            SizeClasses<Buffer<'_>, 8192> => (48, 8),
            Slab<Buffer<'_>> => (48, 16),
            Coalesce<Buffer<'_>, 65536> => (48, 16),
            Buddy<Buffer<'_>, 4, 16> => (64, 16),
            Bitset<Buffer<'_>, 64, 65536> => (64, 8),
            Chunk<Buffer<'_>, 4096> => (40, 0),
        );
    }

    /// Blocks a layer passes through from the layer below are not filled, and neither are
    /// those of a layer that promises zeroed memory.
    #[test]
    #[cfg(all(debug_assertions, feature = "os"))]
    fn pass_through_blocks_and_zeroed_layers_are_not_filled() {
        use crate::layers::{FreeList, Mmap};
        let mut list: FreeList<Mmap, 64> = FreeList::new(Mmap::new());
        let class = Layout::from_size_align(64, 8).expect("a valid layout");
        let large = Layout::from_size_align(8192, 8).expect("a valid layout");
        let (a, b) = (
            list.get(class).expect("a map"),
            list.get(large).expect("a map"),
        );
        assert!(
            bytes(a, 64).iter().all(|&b| b == FRESH),
            "a class block is filled"
        );
        assert!(
            bytes(b, 8192).iter().all(|&b| b == 0),
            "a pass-through block is not"
        );
        // SAFETY: both live, put once with their layout.
        unsafe {
            list.put(a, class);
            list.put(b, large);
        }
        let mut mmap = Mmap::new();
        let c = mmap.get(class).expect("a map");
        assert!(bytes(c, 64).iter().all(|&b| b == 0), "ZEROED: not filled");
        // SAFETY: live, put once.
        unsafe { mmap.put(c, class) };
    }
}
