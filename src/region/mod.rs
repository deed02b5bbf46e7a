//! Regions: route a closure's ordinary allocations (`Box`, `Vec`, `String`, `HashMap`
//! through the global allocator) into a layer stack of your choice.
//!
//! ```
//! use stratalloc::{Region, Router, region};
//!
//! #[global_allocator]
//! static ROUTER: Router = Router::new();
//!
//! let arena = Region::arena();
//! for request in 0..3u64 {
//!     let total: u64 = region::enter(&arena, || {
//!         let squares: Vec<u64> = (0..1000).map(|i| i * i + request).collect(); // in the arena
//!         squares.iter().sum()
//!     });
//!     assert_eq!(total, 332_833_500 + 1000 * request);
//!     assert!(arena.reset(), "the next request starts over in the same memory");
//! }
//! ```
//!
//! # Choosing a stack
//!
//! [`Region::arena`] makes the recommended region, [`RegionArena`]: bump allocation out of
//! 64 KiB chunks of whole pages from the system allocator, which ended regions hand on to
//! the next ones; the router carves its small blocks itself and a free only counts the
//! block. Make one region per task (a request, a parse, a frame), or one per thread reused
//! with [`Region::reset`]; either way no system call is made once warm. Any other stack
//! whose bottom is a page source can be a region ([`Region::new`]); pick one when you need
//! what it adds:
//!
//! - **figures**: `Stats<RegionArena>` counts blocks, bytes and the peak
//!   ([`Region::gauge`]); every block then goes through the stack (a call per block);
//! - **leak checking**: [`check_leaks`] runs a closure in a checking region; put
//!   [`Check`] on top of a stack of your own to have a region that ends with live blocks
//!   panic with the report;
//! - **memory straight from the OS**: `Chunk<Mmap, SIZE>` maps each chunk and unmaps it
//!   when the region ends or [gives its memory back](Region::give_back), for a few large,
//!   long-lived regions whose memory should return to the OS at once (a map and an unmap
//!   per chunk: slow for a region per request);
//! - **nested regions that borrow**: [`Pipe`](crate::layers::Pipe) at the bottom takes
//!   pieces from an enclosing region instead of the system allocator;
//! - **reuse inside a region**: a stack that frees and reuses blocks
//!   ([`FreeList`](crate::layers::FreeList), [`Coalesce`] over a
//!   page source), for a long closure whose live data stays small while it churns.
//!
//! # What holds (the router's rules)
//!
//! No safe program reaches undefined behaviour, a hang, or a free sent to the wrong
//! allocator through the router; CI runs the tests under Miri (Stacked and Tree Borrows)
//! and the threaded ones under ThreadSanitizer. Precisely:
//!
//! 1. A free goes to the region that owns the block, whichever region is current: the
//!    page map (a radix table over the address space) says, in two loads and without
//!    touching the block, which region's sources obtained the page. Pages nobody claimed
//!    belong to the system allocator. (A free or resize of a block inside the window the
//!    current region is carving small blocks from is known to be that region's from the
//!    window's bounds alone: those bytes hold its carved blocks and nothing else; a piece
//!    lent from the window to a pipe region moves the bound below it. A free of a carved
//!    block on the page the page map last found to be the current region's needs no look-up
//!    either: a page leaves a region only inside a call into its stack, at the end of its
//!    window or in a loan to a pipe, and each of those forgets the page.) A source claims a
//!    range's pages all or nothing: a claim the OS refuses half-way (no memory for the map
//!    itself) leaves no page claimed.
//! 2. A block may outlive its closure (returned, stored outside, sent to a thread). A region
//!    whose handle is dropped while blocks are live keeps its memory until the last one is
//!    freed (a *zombie*), and the escape is reported: a panic carrying the
//!    [`LeakReport`] when the stack has a [`Check`]
//!    on top, one line on stderr otherwise. Pieces that [`Pipe`](crate::layers::Pipe)
//!    regions took from it are not escapes: they go back when those regions end.
//! 3. A block freed on another thread goes on its region's queue (an array beside the
//!    stack, behind a short spin lock, never written into the block), which the owner
//!    drains into the stack; a zombie's queue is drained by whichever thread next makes a
//!    region operation. No layer code runs while a region's lock is held, so frees that
//!    travel between regions (pipes giving pieces back) cannot deadlock.
//! 4. `realloc` keeps a block in its region when that region belongs to this thread (an
//!    outer `Vec` grown inside a region stays outer); otherwise the block moves to the
//!    current region. Blocks of the system allocator stay there.
//! 5. Nothing in the router panics or unwinds; what cannot go on aborts with one line, and
//!    so does a layer of the stack that panics (its call is guarded). The memory of a
//!    freed block is neither released nor written by the freeing thread during its own
//!    `dealloc` call: a `Box` passed by value is still protected there. (A block freed into
//!    another thread's region is that thread's as soon as it is queued; see the documented
//!    limits below.) Frees that need the stack wait for its next
//!    allocation or region operation (at most 16 of them on the owner thread), and a zombie
//!    whose last block was freed is released at the next region operation of any thread,
//!    or by [`release_zombies`].
//! 6. [`enter`] and [`escape`] restore the stack on unwind; a new thread starts at the
//!    ground.
//! 7. Layer code never allocates through the global allocator; while a thread is
//!    panicking, allocations that would reach a region's stack go to the ground, so that
//!    the panic machinery's (the message, the payload, a backtrace's caches) never land in
//!    a region.
//! 8. Only stacks whose blocks the page map can attribute can be regions: the bottom of
//!    the stack must be a page source ([`Mmap`],
//!    [`Ground`](crate::layers::Ground), [`Pipe`](crate::layers::Pipe)). A per-object
//!    source does not compile:
//!
//! ```compile_fail
//! let per_object = stratalloc::Region::new(stratalloc::layers::System::new());
//! ```
//!
//! # Fast small blocks
//!
//! When the stack's top layer hands out [windows](crate::layer#window) (a bare
//! [`Chunk`](crate::layers::Chunk)), the router carves the region's small blocks itself
//! from the current window, without a call into the stack, and their frees only count
//! them. A stack with [`Stats`](crate::layers::Stats) or [`Check`] on top sees every block
//! instead, at the cost of a call per block.
//!
//! # Documented limits
//!
//! - Miri's aliasing models protect a `Box` passed by value until the function it was
//!   passed to returns, and do not know that a global allocator's `dealloc` ends the
//!   block: a function that frees such a `Box` and then lets a region operation release or
//!   reuse that memory before it returns is reported by Miri, as it is for every allocator
//!   that reuses memory. The operation may be another thread's: a block freed into a region
//!   of another thread goes to that thread, which may reuse it at once (`std`'s channels
//!   free their blocks of messages so: send across threads from outside the region, with
//!   [`escape`], in tests run under Miri). By the language's rules the block ended at its
//!   `dealloc`; the program is sound.
//! - Small blocks carved from a window (see below) are carved even while the thread is
//!   panicking: only allocations that reach the stack go to the ground then.
//! - A pipe takes pieces only from a region made before its own; when the enclosing region
//!   is younger (regions entered in the other order), its pieces come from the system
//!   allocator.
//!
//! # Things that outlive a closure without saying so
//!
//! Anything the program creates lazily on first use is allocated by the region current at
//! that moment and then lives on: stdout's buffer (the first `println!`), thread-local
//! caches of the standard library (a blocking channel's wait context), `OnceLock`s. They
//! are safe — such a region ends as a zombie and keeps that memory — but they show up as
//! escapes. Touch them once before entering a region (print a line, say).
//!
//! A region entered on this thread is this thread's: spawned threads start at the ground.
//! The machinery of spawning itself (the thread's handle, the closure) is allocated by the
//! spawning thread, in its current region.

mod frames;
mod owner;
pub(crate) mod page_map;
mod router;

use core::alloc::{GlobalAlloc, Layout};
use core::cell::Cell;
use core::fmt;
use core::marker::PhantomData;
use core::ptr::{self, NonNull};

pub(crate) use frames::{current_and_token, enclosing, token};
pub(crate) use owner::Owner;
pub(crate) use owner::{
    alloc_in, carve_in, count_carved_free, drivable, free_in, in_current_window, in_known_page,
    lend_in, lends_to, remember_page, resize_in_place, take_back_in,
};
pub use router::Router;

use crate::abort::{call, no_unwind};
use crate::layers::{Check, Coalesce, HeapProfile, Mmap, Profile};
use crate::presets::RegionArena;
use crate::{Gauge, Gauges, Layer, LeakReport};

/// Which region a page source claims its pages for: handed down a stack by
/// [`Attributed::attribute`]. Opaque; [`Attribution::NONE`] claims nothing.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Attribution(pub(crate) *const Owner);

// SAFETY: an attribution is an identifier; it is only dereferenced by the router, which
// synchronises access to the record it names.
unsafe impl Send for Attribution {}

impl Attribution {
    /// Claims nothing: the source serves blocks that the router does not know.
    pub const NONE: Attribution = Attribution(ptr::null());

    /// Whether this attribution names a region.
    pub fn is_some(self) -> bool {
        !self.0.is_null()
    }
}

impl fmt::Debug for Attribution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Attribution({:p})", self.0)
    }
}

/// A stack whose every block lies in pages that its sources claim in the page map for the
/// region they are given, so that the router finds the owner of any of its blocks.
///
/// # Safety
///
/// Implementors must ensure that, after `attribute(a)`, every block the stack hands out
/// lies inside pages that the page map records as `a`'s for as long as the block is
/// currently allocated, and that no page claimed for `a` is released to another owner or
/// returned to its source while one of its blocks is. Wrapping layers forward `attribute`
/// to the layer below; sources claim.
///
/// Only the crate's own sources ([`Mmap`], [`Ground`](crate::layers::Ground),
/// [`Pipe`](crate::layers::Pipe)) can claim pages; a layer of your own joins a region by
/// wrapping one of them and forwarding `attribute`, as `Stats`, `Check`, `Chunk` and
/// `Batch` do.
pub unsafe trait Attributed: Layer {
    /// Whether a [`put`](Layer::put) makes the block's memory usable again, by this layer's
    /// next gets or the layer below's: `false` for a layer that keeps every block until it
    /// ends (`Batch`, whose put does nothing, and `Chunk`'s small blocks). Wrappers that
    /// pass puts down say what the layer below says. `Chunk`'s
    /// [`rewind`](Attributed::rewind) keeps a chunk only over a layer that reclaims.
    const RECLAIMS: bool = true;

    /// Tells the stack which region it serves.
    fn attribute(&mut self, owner: Attribution);

    /// Ends every block the stack handed out, as [`deinit`](Layer::deinit) does, but keeps
    /// memory for the blocks that come next, the way `bumpalo::Bump::reset` does:
    /// [`Region::reset`] calls it. The default gives everything back (`deinit`). A layer
    /// that keeps blocks of the layer below must not rewind that layer, whose blocks they
    /// still are: `Chunk` keeps its newest chunk (over a layer that
    /// [reclaims](Attributed::RECLAIMS)) and stops there; `Stats` passes the call down, and
    /// `Batch` gives its blocks back, then passes it down.
    fn rewind(&mut self) {
        self.deinit();
    }
}

/// [`Attributed`] for a wrapper that keeps nothing of its own between calls (its blocks are
/// its inner layer's, or pieces of them): every call goes to the layer in its `inner`
/// field. `attributed_as_inner!(Guard<L, const N: usize>)`.
macro_rules! attributed_as_inner {
    ($layer:ident<L, const $param:ident: $kind:ty>) => {
        // SAFETY: every block comes from `L`, attributed to the same region; the wrapper
        // holds no block of its own that a rewind of `L` would end under it.
        unsafe impl<L: $crate::region::Attributed, const $param: $kind> $crate::region::Attributed
            for $layer<L, $param>
        {
            const RECLAIMS: bool = L::RECLAIMS;

            fn attribute(&mut self, owner: $crate::region::Attribution) {
                self.inner.attribute(owner);
            }

            fn rewind(&mut self) {
                self.inner.rewind();
            }
        }
    };
}
pub(crate) use attributed_as_inner;
static_assertions::assert_impl_all!(
    crate::layers::Guard<Mmap>: Attributed);
static_assertions::assert_impl_all!(crate::layers::Fill<Mmap, 0>: Attributed);
static_assertions::assert_impl_all!(crate::layers::Align<Mmap, 64>: Attributed);

/// A region: a layer stack that [`enter`] makes the destination of this thread's
/// allocations for the length of a closure.
///
/// The stack lives in a record of its own at a fixed address, so that blocks can outlive
/// the `Region` handle: see the module's rules. A `Region` stays on the thread that
/// made it (it is neither `Send` nor `Sync`); its blocks may go anywhere.
pub struct Region<L: Attributed + Send + 'static> {
    record: NonNull<Record<L>>,
    /// Set when an escape was already reported (by [`check_leaks`], or in a [`profile`]).
    reported: Cell<bool>,
    _this_thread: PhantomData<*mut ()>,
}

#[repr(C)]
struct Record<L> {
    owner: Owner,
    layer: L,
}

/// Drops the stack of a record and frees the record. The drop runs the layer's own code,
/// perhaps inside the allocator (a zombie disposed of by an allocation), so a panic there
/// aborts (as for every call into a layer from inside the allocator).
///
/// # Safety
///
/// `owner` heads a `Record<L>` made by `Region::new`, used by no one any more.
unsafe fn free_record<L>(owner: *mut Owner) {
    let record = owner.cast::<Record<L>>();
    // SAFETY: as the caller promises; the layer was deinitialised already, and dropping it
    // deinitialises again, which does nothing. The record came from the system allocator
    // with this layout.
    unsafe {
        no_unwind::<L, { call::DROP }, _>(|| ptr::drop_in_place(&raw mut (*record).layer));
        std::alloc::System.dealloc(record.cast(), Layout::new::<Record<L>>());
    }
}

impl<L: Attributed + Send + 'static> Region<L> {
    /// Makes a region of `layer`, owned by this thread.
    ///
    /// The layer is deinitialised first (blocks got from it before it became a region end),
    /// so that every page the region serves from is claimed for it. The region's record (its
    /// header and the stack) comes from the system allocator directly, never from another
    /// region, so that it lives exactly as long as the region needs it.
    ///
    /// # Panics
    ///
    /// When the system allocator has no room for the record.
    pub fn new(layer: L) -> Self {
        owner::service_zombies();
        // SAFETY: a `Record` is never zero-sized (its header is not).
        let memory = unsafe { std::alloc::System.alloc(Layout::new::<Record<L>>()) };
        assert!(
            !memory.is_null(),
            "stratalloc: no memory for a region record"
        );
        let record = memory.cast::<Record<L>>();
        // Blocks the stack handed out before it was attributed would lie on pages nobody
        // claimed: end them, so that everything the region serves comes after `attribute`.
        let mut layer = layer;
        layer.deinit();
        // SAFETY: the block is large enough and aligned for a `Record<L>`; the stack is
        // written first, then the header that points at it.
        unsafe {
            (&raw mut (*record).layer).write(layer);
            let stack: *mut dyn owner::Stack = &raw mut (*record).layer;
            Owner::write_at(
                &raw mut (*record).owner,
                stack,
                frames::token(),
                L::WINDOW_LIMIT,
                free_record::<L>,
            );
            (*record)
                .layer
                .attribute(Attribution(record.cast::<Owner>()));
        }
        Region {
            // SAFETY: the system allocator returned a block (checked above), so it is not null.
            record: unsafe { NonNull::new_unchecked(record) },
            reported: Cell::new(false),
            _this_thread: PhantomData,
        }
    }

    fn owner(&self) -> &Owner {
        // SAFETY: the record lives at least as long as the handle.
        unsafe { &self.record.as_ref().owner }
    }

    fn owner_ptr(&self) -> *const Owner {
        self.record.as_ptr().cast()
    }

    /// Runs `f` with the stack, for reading its figures. Frees that other threads made are
    /// put first. While `f` runs, the region serves no allocation: frees of its blocks wait
    /// on its remote list, and allocations meant for it go to the system allocator.
    pub fn with_layer<R>(&self, f: impl FnOnce(&L) -> R) -> R {
        struct Restore<'a>(&'a Owner, bool);
        impl Drop for Restore<'_> {
            fn drop(&mut self) {
                self.0.set_busy(self.1);
            }
        }
        let owner = self.owner();
        owner::service_zombies();
        owner::catch_up(owner);
        let _restore = Restore(owner, owner.busy_now());
        owner.set_busy(true);
        // SAFETY: with the region marked busy, the router creates no `&mut` to the stack
        // until `f` returns; the record outlives `self`.
        f(unsafe { &self.record.as_ref().layer })
    }

    /// Ends the region's blocks at once and starts over when none of them is live (after
    /// putting frees from other threads), keeping its memory for the next blocks, as
    /// `bumpalo::Bump::reset` does: the stack's [`rewind`](Attributed::rewind) (a `Chunk`
    /// keeps its newest chunk, claimed for this region, and rewinds its bump pointer).
    /// Returns whether it did. A region reused for one short task after another makes no
    /// call to the OS or the system allocator once warm. [`give_back`](Self::give_back)
    /// returns the memory too.
    ///
    /// ```
    /// use stratalloc::{Region, Router, region};
    ///
    /// #[global_allocator]
    /// static ROUTER: Router = Router::new();
    ///
    /// let scratch = Region::arena();
    /// for round in 0..3 {
    ///     region::enter(&scratch, || drop(vec![round; 1000]));
    ///     assert!(scratch.reset(), "nothing of the round survives");
    /// }
    /// let kept = region::enter(&scratch, || vec![1u8; 10]);
    /// assert!(!scratch.reset(), "`kept` is live");
    /// drop(kept);
    /// assert!(scratch.give_back(), "the memory goes back to the stack's source");
    /// ```
    pub fn reset(&self) -> bool {
        self.end_every_block(|layer| no_unwind::<L, { call::REWIND }, _>(|| layer.rewind()))
    }

    /// Ends the region's blocks at once when none of them is live, as [`reset`](Self::reset)
    /// does, and gives the stack's memory back to its source (its
    /// [`deinit`](Layer::deinit)); returns whether it did. The region stays usable and
    /// takes memory afresh on its next allocation.
    pub fn give_back(&self) -> bool {
        self.end_every_block(|layer| no_unwind::<L, { call::DEINIT }, _>(|| layer.deinit()))
    }

    /// Runs `end` on the stack when no block of the region is live and it is not busy.
    fn end_every_block(&self, end: impl FnOnce(&mut L)) -> bool {
        let owner = self.owner();
        owner::service_zombies();
        owner::catch_up(owner);
        if owner.live() != 0 || owner.busy_now() {
            return false;
        }
        owner.set_busy(true);
        owner.drop_window();
        // SAFETY: the owner thread, region active and (until now) not busy, outside any stack
        // call; busy keeps the router away from the stack meanwhile, so this is its only
        // reference. With no block live, nothing relies on the memory `end` ends (the
        // window included, forgotten above). The record outlives `self`.
        end(unsafe { &mut (*self.record.as_ptr()).layer });
        owner.set_busy(false);
        true
    }

    /// The stack's gauges, up to date with frees from other threads.
    pub fn gauge(&self) -> Gauges
    where
        L: Gauge,
    {
        self.with_layer(Gauge::gauge)
    }

    /// Blocks the router got from this region and that are not freed yet (frees that other
    /// threads made and the owner has not put yet count as freed), pieces lent to the pipes
    /// of other regions included. Called inside this region's own
    /// [`with_layer`](Self::with_layer), while its stack is in use, it cannot put the frees
    /// waiting for the stack, and counts them as live.
    pub fn live_blocks(&self) -> usize {
        owner::service_zombies();
        owner::catch_up(self.owner());
        self.owner().live()
    }
}

impl Region<RegionArena> {
    /// A region of the recommended stack, [`RegionArena`]: bump allocation out of 64 KiB
    /// chunks that regions hand on to one another, so that a region per task (a request,
    /// a parse) costs no system call once warm, and a reused region's
    /// [`reset`](Self::reset) keeps its newest chunk.
    ///
    /// ```
    /// use std::collections::HashMap;
    /// use stratalloc::{Region, Router, region};
    ///
    /// #[global_allocator]
    /// static ROUTER: Router = Router::new();
    ///
    /// let words = region::enter(&Region::arena(), || {
    ///     let mut counts: HashMap<String, usize> = HashMap::new();
    ///     for word in "the cat saw the dog".split(' ') {
    ///         *counts.entry(word.to_string()).or_default() += 1;
    ///     }
    ///     counts["the"]
    /// });
    /// assert_eq!(words, 2);
    /// ```
    pub fn arena() -> Self {
        Region::new(crate::presets::region_arena())
    }
}

impl<L: Attributed + Send + 'static> Drop for Region<L> {
    fn drop(&mut self) {
        let owner = self.owner();
        owner::service_zombies();
        owner::catch_up(owner);
        let report = if owner.held_by_the_program() > 0 {
            // SAFETY: the owner thread, outside any stack call, region still active.
            unsafe { (*owner.stack()).leak_report() }
        } else {
            None
        };
        // Pieces lent to younger pipe regions are no escapes, but the stack's report cannot
        // tell them from the program's blocks: say how many of its blocks they are.
        let lent = owner.live().wrapping_sub(owner.held_by_the_program());
        // SAFETY: the handle ends here, on the owner thread.
        let live = unsafe { owner::end(self.owner_ptr()) };
        if live == 0 || self.reported.get() {
            return;
        }
        match report {
            Some(report) if !std::thread::panicking() && lent != 0 => panic!(
                "stratalloc: a region ended with {live} blocks still live; its memory is kept \
                 until they are freed. The report also lists the {lent} pieces it lent to \
                 younger pipe regions, which are no escapes: {report}"
            ),
            Some(report) if !std::thread::panicking() => panic!(
                "stratalloc: a region ended with blocks still live; its memory is kept until \
                 they are freed: {report}"
            ),
            _ => {
                use core::fmt::Write as _;
                let mut line = crate::abort::LineBuffer::new();
                let _ = writeln!(
                    line,
                    "stratalloc: a region ended with {live} blocks still live; its memory is kept \
                     until the last is freed"
                );
                crate::abort::write_stderr(line.as_str().as_bytes());
            }
        }
    }
}

impl<L: Attributed + Send + fmt::Debug + 'static> fmt::Debug for Region<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.with_layer(|layer| f.debug_tuple("Region").field(layer).finish())
    }
}

/// Runs `f` with `region` on top of this thread's region stack: the allocations `f` makes
/// through the global allocator come from the region's stack. Nests; the stack is restored
/// when `f` returns or unwinds. Needs the [`Router`] as the global
/// allocator; without it, allocations are unaffected.
pub fn enter<L, R>(region: &Region<L>, f: impl FnOnce() -> R) -> R
where
    L: Attributed + Send + 'static,
{
    owner::service_zombies();
    let _frame = frames::push(Some(region.owner_ptr()));
    f()
}

/// Runs `f` one level down: its allocations go to the region below the current one (the
/// ground, the system allocator, below the last). Nested escapes go further down; a region
/// entered inside `f` is on top again.
pub fn escape<R>(f: impl FnOnce() -> R) -> R {
    let _frame = frames::push(None);
    f()
}

/// Gives back the memory of ended regions (zombies) whose last block has been freed, and
/// puts the frees they are waiting for into their stacks.
///
/// A region that ended with blocks still live keeps its memory until they are freed, and
/// the last free does not release it on the spot: the memory of a `Box` must stay valid for
/// the whole of its own `dealloc` call (the language still protects a `Box` passed by value
/// until the function it was passed to returns). The router does this work itself at every
/// region operation of any thread: making, entering, resetting or ending a region, reading
/// its figures, and every allocation that reaches a region's stack. Call this where a
/// program has stopped using regions and wants that memory back at once.
pub fn release_zombies() {
    owner::service_zombies();
}

/// Whether the block at `ptr` was served by a region (and so is freed through its owner),
/// rather than by the system allocator. The answer comes from the page map in O(1),
/// without reading the block; any pointer may be asked about.
#[inline]
pub fn served_by_a_region(ptr: *const u8) -> bool {
    !page_map::owner_of(ptr.addr()).is_null()
}

/// The stack [`check_leaks`] runs closures in, a checker over a heap that reuses what is
/// freed:
///
/// 1. `Check` records every block and reports those still live when the closure ends;
/// 2. `Coalesce<_, 1 MiB>` serves them from 1 MiB arenas whose freed blocks merge with their
///    free neighbours and are handed out again, so that a closure's footprint follows its
///    live data, not its traffic; a block too big for an arena gets a map of its own,
///    unmapped when it is freed;
/// 3. `Mmap` maps the arenas, whose pages the page map records as the checking region's.
pub type LeakCheckStack = Check<Coalesce<Mmap, { 1 << 20 }>>;

static_assertions::assert_impl_all!(LeakCheckStack: Layer, Attributed, Send, fmt::Debug);

/// Runs `f` in a fresh checking region and reports whatever it allocated and did not free
/// (including blocks still held by the value it returns: return owned data made outside,
/// or build it in [`escape`]).
///
/// Each call sees only its own thread's allocations, so tests running in parallel do not
/// disturb one another. Leaked blocks stay valid: their memory is kept until they are
/// freed. Freed blocks are reused ([`LeakCheckStack`]), so a closure that churns through
/// many short-lived blocks needs about the memory of its live data.
///
/// It watches the closure through the [`Router`], which must be the program's global
/// allocator (in a test binary, one line in its crate root):
///
/// ```
/// use std::hint::black_box;
/// use stratalloc::{Router, check_leaks};
///
/// #[global_allocator]
/// static ROUTER: Router = Router::new();
///
/// assert!(check_leaks(|| drop(vec![1, 2, 3])).is_ok());
/// let report = check_leaks(|| {
///     black_box(Box::leak(Box::new([0u8; 100])));
/// })
/// .unwrap_err();
/// assert_eq!(report.blocks(), 1);
/// ```
///
/// # Deliberate leaks
///
/// An optimised build (`--release`) may remove an allocation whose block is never used,
/// a leaked one included: a test that leaks on purpose, to see the report, passes the block
/// through [`std::hint::black_box`] (as above), which keeps the allocation.
///
/// # What it does not see
///
/// It reports the blocks of its own region, so a block that the router's rules send
/// elsewhere is not reported when it leaks:
///
/// - an allocation made while the thread is panicking (a `Drop` run by unwinding inside `f`,
///   under `catch_unwind`) goes to the system allocator (rule 7);
/// - a block that another thread grows or shrinks by moving it moves to that thread's
///   current region (rule 4), e.g. a `Vec` made in `f` and grown on a scoped thread;
/// - a block leaked in a region that `f` makes itself belongs to that region, which reports
///   it as an escape when its handle is dropped (rule 2 of the [module documentation](self):
///   a panic when its stack has a `Check` on top, else one line on stderr); and a region
///   that `f` leaks whole with `mem::forget` has its record from the system allocator.
///
/// # Panics
///
/// When it cannot watch `f`, rather than pass a closure whose allocations it did not see.
/// Before running `f` it allocates a probe through the global allocator inside the checking
/// region; when the region did not serve it, this panics (naming the cause) without running
/// `f`:
///
/// - the [`Router`] is not the program's global allocator; install it with
///   `#[global_allocator] static ROUTER: stratalloc::Router = stratalloc::Router::new();`
///   in the crate root of the binary (for a test, of the test binary);
/// - this thread is panicking (a call from a `Drop` during unwinding): the router sends the
///   allocations of a panicking thread to the system allocator, and the panic, a second
///   one, aborts the process.
///
/// It also panics, as [`Region::new`] does, when the system allocator has no room for the
/// region's record.
#[allow(
    clippy::result_large_err,
    reason = "a LeakReport allocates nothing, so that it can be built where the global \
              allocator is off limits; boxing it would defeat that, and the error path is cold"
)]
pub fn check_leaks<R>(f: impl FnOnce() -> R) -> Result<R, LeakReport> {
    let mut stack = LeakCheckStack::new(Coalesce::new(Mmap::new()));
    stack.record_call_sites(call_sites_wanted());
    let region = Region::new(stack);
    if !enter(&region, || a_probe_lands_in(&region)) {
        cannot_watch("check_leaks");
    }
    let value = enter(&region, f);
    if region.with_layer(|stack| stack.leaks()).is_some() {
        move_out_the_output_capture(&region);
    }
    match region.with_layer(|stack| stack.leaks()) {
        None => Ok(value),
        Some(report) => {
            region.reported.set(true);
            Err(report)
        }
    }
}

/// Whether [`check_leaks`] records call sites: 0 until decided (by [`record_call_sites`],
/// or the environment at the first `check_leaks`), then 1 for off and 2 for on.
static CALL_SITES: core::sync::atomic::AtomicU8 = core::sync::atomic::AtomicU8::new(0);

/// Turns on (or off) the call sites of [`check_leaks`] for every thread: each block
/// allocated in a checking region then remembers the call stack that allocated it, and the
/// [`LeakReport`] groups the leaks by call site, with file and line
/// ([`LeakReport::call_sites`]):
///
/// ```text
/// 1 block (48 bytes) still live; sizes: 32-63 B x1; at 0x7f3a5c000f10 (48 B)
/// 1 block, 48 bytes leaked, allocated at tests/parse.rs:42:17 in my_crate::index::build
///     tests/parse.rs:30:5 in my_crate::parse_all
/// ```
///
/// By default they are on where they are cheap, [`CHEAP_CALL_SITES`] (a build with frame
/// pointers, where a stack costs tens of nanoseconds), and off elsewhere (the unwinder
/// takes about 2.5 µs a stack). The environment variable `STRATALLOC_CALL_SITES` decides
/// instead when it is set and not empty (`0` off, anything else on: for a whole test run,
/// without a change of code); it is read at the first `check_leaks` unless this function
/// was called before.
/// File and line need debug information: tests have it; for a release profile,
/// `debug = "line-tables-only"` is enough. Without it each frame is a function's name.
pub fn record_call_sites(on: bool) {
    CALL_SITES.store(
        if on { 2 } else { 1 },
        core::sync::atomic::Ordering::Relaxed,
    );
}

/// Whether this build captures call stacks from frame records, in tens of nanoseconds,
/// rather than with the unwinder, in microseconds: on Linux for x86-64 and AArch64, when
/// the whole build keeps frame pointers (`RUSTFLAGS="-C force-frame-pointers=yes"`; the
/// standard library ships with them). [`check_leaks`] then records call sites by default,
/// and [`profile`] costs a few times the work it profiles rather than a hundred.
pub const CHEAP_CALL_SITES: bool = cfg!(stratalloc_frame_records);

/// Whether `check_leaks` records call sites now (see [`record_call_sites`]).
fn call_sites_wanted() -> bool {
    use core::sync::atomic::Ordering::Relaxed;
    if CALL_SITES.load(Relaxed) == 0 {
        let on = match std::env::var_os("STRATALLOC_CALL_SITES") {
            Some(value) if !value.is_empty() => value != "0",
            _ => CHEAP_CALL_SITES,
        };
        let _ = CALL_SITES.compare_exchange(0, if on { 2 } else { 1 }, Relaxed, Relaxed);
    }
    CALL_SITES.load(Relaxed) == 2
}

/// Whether a block allocated now through the global allocator comes from `region`: it does
/// when the [`Router`] is the global allocator, `region` is on top of this thread's stack,
/// and the thread is not panicking. The probe is freed at once.
fn a_probe_lands_in<L: Attributed + Send + 'static>(region: &Region<L>) -> bool {
    // `black_box` keeps the optimiser from removing the allocation.
    let probe = std::hint::black_box(Box::new(0u8));
    page_map::owner_of((&raw const *probe).addr()) == region.owner_ptr()
}

/// The panic of [`check_leaks`] (or [`profile`], named by `what`) when its probe was not
/// served by its region.
#[cold]
#[inline(never)]
fn cannot_watch(what: &str) -> ! {
    if std::thread::panicking() {
        panic!(
            "stratalloc: {what} cannot watch a closure while this thread is panicking: \
             the router sends a panicking thread's allocations to the system allocator"
        );
    }
    panic!(
        "stratalloc: {what} cannot watch the closure: an allocation made inside its region \
         did not reach the region, so the global allocator is not stratalloc's Router. \
         Install it in the crate root of this binary (for a test, of the test binary): \
         #[global_allocator] static ROUTER: stratalloc::Router = stratalloc::Router::new();"
    );
}

/// The stack of [`profile`]'s region: a [`Profile`] over the same reusing heap as
/// [`LeakCheckStack`]'s, so that a closure's footprint follows its live data.
pub type ProfileStack = Profile<Coalesce<Mmap, { 1 << 20 }>>;

static_assertions::assert_impl_all!(ProfileStack: Layer, Attributed, Send, fmt::Debug);

/// Runs `f` in a fresh profiling region and returns, with its value, the [`HeapProfile`]
/// of what it allocated: per call site, blocks and bytes, frees, lifetimes and peaks. Only
/// the closure's own allocations (on this thread) are in it, whatever the rest of the
/// program does.
///
/// ```
/// use stratalloc::{Router, region};
///
/// #[global_allocator]
/// static ROUTER: Router = Router::new();
///
/// let (words, profile) = region::profile(|| {
///     let text = "the cat saw the dog ".repeat(100);
///     text.split_whitespace().map(str::to_owned).collect::<Vec<_>>()
/// });
/// assert_eq!(profile.live_blocks as usize, words.len() + 1, "the words and their Vec");
/// println!("{profile}");
/// let mut dhat_file = Vec::new(); // or a `std::fs::File`, for DHAT's viewer
/// profile.write_dhat(&mut dhat_file)?;
/// # Ok::<(), std::io::Error>(())
/// ```
///
/// Blocks still live at the end (the value returned included) stay valid and count as
/// live at the end. Each allocation captures its call stack: from frame records in a build
/// with frame pointers ([`CHEAP_CALL_SITES`]), where a profile costs a few times the time
/// of the work unprofiled, else with the unwinder (about 2.5 µs an allocation). Symbolising
/// happens once, after `f` returns.
///
/// # Panics
///
/// As [`check_leaks`] does, rather than return a profile of allocations it did not see: when
/// the [`Router`] is not the program's global allocator, or this thread is panicking.
pub fn profile<R>(f: impl FnOnce() -> R) -> (R, HeapProfile) {
    let stack = ProfileStack::paused(Coalesce::new(Mmap::new()));
    let region = Region::new(stack);
    if !enter(&region, || a_probe_lands_in(&region)) {
        cannot_watch("profile");
    }
    region.with_layer(|stack| stack.start_recording());
    let value = enter(&region, f);
    let report = region.with_layer(Profile::report);
    // The blocks still live are in the profile (live at the end): the region need not
    // say again that it ends with blocks live.
    region.reported.set(true);
    (value, report)
}

/// The largest output buffer [`move_out_the_output_capture`] tells from a leak.
const LARGEST_CAPTURE: usize = 64 << 10;

/// Tells the test harness's output buffer from a leak of the closure's.
///
/// Under `cargo test`, libtest captures each test's output in a byte buffer that is
/// allocated by the test's first `print!`: when that print happened inside the checked
/// closure, the buffer lies in the checking region and outlives it. Stable Rust offers no
/// way to tell that allocation from the closure's own, so when a byte buffer (alignment 1)
/// is among the blocks still live, this writes one line to stderr (which libtest captures
/// into that same buffer) longer than the largest such block: the capture buffer, if it is
/// one of them, must grow, and while the region is busy its growth moves it out to the
/// region below (rule 4), so it is no longer counted. Without a capture (`--nocapture`, or
/// no test harness) the line reaches stderr, and only when a byte buffer did leak.
fn move_out_the_output_capture(region: &Region<LeakCheckStack>) {
    let largest = region.with_layer(|stack| stack.largest_live_with_align(1));
    let Some(largest) = largest.filter(|&size| size < LARGEST_CAPTURE) else {
        return;
    };
    region.with_layer(|_| {
        std::eprintln!(
            "{:<width$}",
            "stratalloc: check_leaks found a byte buffer still live at the end of its closure; \
             this line makes the test harness's output buffer, if that is what it is, grow \
             out of the checking region",
            width = largest + 1
        );
    });
}
