//! `ThreadHeaps<Large>`: one slab heap per thread for blocks of up to 32 KiB, frees from
//! other threads handed back to the owning heap, heaps of exited threads reused; a shared,
//! locked `Large` layer for the rest. The adapter behind the [`General`](crate::presets::General)
//! preset and the malloc replacement. Entry point: [`ThreadHeaps`], its `GlobalAlloc` impl
//! and its C interface ([`malloc`](ThreadHeaps::malloc), [`free`](ThreadHeaps::free)).
//!
//! This file is the instance: the allocation paths, the heap cache, `Large` and the
//! counters. The heaps, the registry they share and the fork handlers, which all outlive
//! any instance, are in `thread_heaps/registry.rs`, with the invariants.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::fmt;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicBool, AtomicPtr, Ordering};

mod registry;
mod summary;
mod thread_pointer;

use registry::{Registry, ThreadHeap};
use summary::Counters;
pub use summary::{HeapSummary, LiveBlocks};
use thread_pointer::{EXITED, thread_pointer};

use crate::Layer;
use crate::abort::{call, no_unwind};
use crate::layer::Measured;
use crate::layers::{BIG_GRANULE, BigSlabRange, Reserve, SLAB_GRANULE, Slab, SlabRange};

/// The largest request the thread heaps' small slabs serve (8 KiB); up to [`BIG_LIMIT`],
/// their big slabs do.
const SMALL_LIMIT: usize = HeapSlab::LIMIT;

/// The largest request the thread heaps serve (32 KiB, in big slabs): beyond it, `Large`
/// (coalescing, so blocks grow in place and mixed sizes share memory) keeps memory tighter
/// than size classes, and a block is big enough that a lock costs little beside writing it.
const BIG_LIMIT: usize = BigSlab::LIMIT;

/// A block that `realloc` grows a little (to less than 1.5 times what it holds) past this
/// many bytes goes to `Large`, even below `BIG_LIMIT`. Such blocks are strings built by
/// appending, which pass through size class after size class; when many grow together,
/// each class's slabs fill as the wave passes and stay sparsely used after it, holding
/// memory no other class can use, where `Large` lets a block grow in place and merges its
/// old copies back into free space for any size (see `benches/README.md` for the
/// realloc workloads' memory with and without this). Blocks grown
/// by doubling (a `Vec`'s amortized growth) pass through few classes and stay in the
/// thread heaps, off the lock, as do fresh blocks of every size up to `BIG_LIMIT`.
const GROWN_LIMIT: usize = 256;

/// Whether `realloc` from a slab block holding `usable` bytes to `size` bytes is the
/// small growth past `GROWN_LIMIT` that moves a block to `Large`.
const fn grows_into_large(usable: usize, size: usize) -> bool {
    size > usable && size > GROWN_LIMIT && size < usable + usable / 2
}

/// A block of `Large` moved by `realloc` is copied outside the lock from this size on, so
/// that other threads' large blocks do not wait for a long copy.
const COPY_UNLOCKED: usize = 64 << 10;

/// The slabs of small blocks (up to 8 KiB): 64 KiB, and of big blocks (8-32 KiB):
/// 256 KiB; so that the largest class of each has seven blocks a slab. Larger slabs mean
/// fewer slabs moving between a class's full and partial lists (a third of `free`'s time in
/// a profile of Larson's server simulation, where blocks of 8-1000 bytes move between
/// threads, with 16 KiB slabs); smaller ones, less memory in each class's partly used slabs
/// (the price of size classes). The measurements behind the sizes are in
/// `benches/README.md`.
const SLAB_BYTES: usize = SLAB_GRANULE;
type HeapSlab = Slab<SlabSource, SLAB_BYTES>;
const BIG_SLAB_BYTES: usize = BIG_GRANULE;
type BigSlab = Slab<BigSource, BIG_SLAB_BYTES>;

/// The thread heaps' own ranges of address space, each carved in whole slabs of its own
/// size: only their small slabs (and the heaps and registries themselves) lie in the first,
/// only their big slabs in the second. `Large` may be made of any memory (a
/// [`Buffer`](crate::layers::Buffer) over a block of another `ThreadHeaps`, say), so a
/// block of `Large` that would start in either is refused ([`get_large`]).
type SlabSource = Reserve<SlabRange>;
type BigSource = Reserve<BigSlabRange>;

/// Which of the thread heaps' reserves holds an address.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reserved {
    /// The small slabs' reserve.
    Small,
    /// The big slabs' reserve.
    Big,
    /// Neither: a live block there is a block of `Large`.
    Neither,
}

/// Which reserve holds `ptr`, which names the layer of a live block of an allocator: only
/// slabs of one size lie in each reserve, a thread is served from slabs only by its heap's
/// own allocator, and no block of `Large` starts in either ([`get_large`]).
#[inline(always)]
fn reserve_of(ptr: NonNull<u8>) -> Reserved {
    if SlabSource::handle().contains(ptr.as_ptr()) {
        Reserved::Small
    } else if BigSource::handle().contains(ptr.as_ptr()) {
        Reserved::Big
    } else {
        Reserved::Neither
    }
}

/// A block of `large` for `layout`; `None` when it has no room, and when the block it
/// gives starts in one of the slab reserves, where an address must name a slab block (a
/// `Large` made of memory that a `ThreadHeaps` handed out): that block goes back at once.
fn get_large<Large: Measured>(large: &mut Large, layout: Layout) -> Option<NonNull<u8>> {
    get_large_as(large, layout, false)
}

/// [`get_large`], with the block's bytes zero when `zeroed` ([`Measured::get_zeroed`]).
fn get_large_as<Large: Measured>(
    large: &mut Large,
    layout: Layout,
    zeroed: bool,
) -> Option<NonNull<u8>> {
    let block = if zeroed {
        large.get_zeroed(layout)?
    } else {
        large.get(layout)?
    };
    if reserve_of(block) != Reserved::Neither {
        // SAFETY: got just above with `layout`, and handed to no one.
        unsafe { large.put(block, layout) };
        return None;
    }
    Some(block)
}

/// One of a heap's two slab layers: which one a block's path takes, for the code that is
/// the same for both.
trait HeapTier: Sized {
    /// The heap's layer of this tier.
    ///
    /// # Safety
    ///
    /// As for [`ThreadHeap::slab`].
    #[allow(clippy::mut_from_ref)]
    unsafe fn of(heap: &ThreadHeap) -> &mut Self;
}

impl HeapTier for HeapSlab {
    #[inline(always)]
    unsafe fn of(heap: &ThreadHeap) -> &mut Self {
        // SAFETY: the caller's duty.
        unsafe { heap.slab() }
    }
}

impl HeapTier for BigSlab {
    #[inline(always)]
    unsafe fn of(heap: &ThreadHeap) -> &mut Self {
        // SAFETY: the caller's duty.
        unsafe { heap.big() }
    }
}

/// Lets the free granules of every slab range that stayed unused go back to the OS, when
/// a tick is due (see `Reserve::decay`): one read of the coarse clock for both.
fn decay_slab_ranges() {
    let now = crate::os::now_ms();
    SlabSource::handle().decay_at(now);
    BigSource::handle().decay_at(now);
}

/// Slots of the thread-pointer cache: where a thread finds its heap without a
/// thread-local look-up (which costs a call in a shared library).
const CACHE_SLOTS: usize = 256;

/// The cache slot of a thread pointer.
#[inline(always)]
const fn cache_slot(tp: usize) -> usize {
    ((tp >> 12) ^ (tp >> 22)) % CACHE_SLOTS
}

// ---- the instance and its Large layer ----------------------------------------------------

/// Per-thread heaps of slabs for blocks of up to 32 KiB over one shared, locked `Large`
/// layer for the rest: a general-purpose allocator that scales across threads, usable as
/// `#[global_allocator]` and, through [`malloc`](ThreadHeaps::malloc) and
/// [`free`](ThreadHeaps::free) (which take no layout), as C's `malloc`.
///
/// - **Blocks of up to 32 KiB** (aligned to at most 16): the calling thread's own heap of
///   [`Slab`]s (64 KiB slabs for blocks of up to 8 KiB, 256 KiB ones beyond), over
///   [`Reserve`] granules, with no lock and no atomic operation on the way. A heap is made (or adopted) at a thread's first such allocation.
/// - **Frees from other threads**: a block's slab records the heap that owns it; a thread
///   that frees another heap's block pushes it on that heap's remote stack (one atomic
///   compare-and-swap), and the owner takes the whole stack back whenever the slab it
///   allocates from runs out of free blocks.
/// - **Thread exit**: the heap goes to a pool with all its slabs, and the next new thread
///   adopts it (along with the frees still arriving for it); heaps are never leaked and
///   never freed.
/// - **Everything else** (blocks over 32 KiB, large alignments, slab blocks that `realloc`
///   grows a little past 256 bytes, and the allocations of a thread whose heap was already
///   handed back at exit) goes to `Large`, under a lock. `Large` may be made of any memory
///   but that of the thread heaps' slabs: a block of `Large` lying in one (a
///   [`Buffer`](crate::layers::Buffer) over a block of another `ThreadHeaps`) is given
///   back and the request refused, as when out of memory, since its address would name a
///   slab block when freed.
/// - **Misuse**: a free of an address that is not the start of a block, and a second free
///   of a block still free in its slab, abort with one line naming the address (a free
///   block holds a key that sends a free to look for it on its slab's free list). So does
///   a second free, from any thread, of a block still waiting on its heap's remote stack
///   (it holds a remote key). A second free from another thread after the block was
///   handed out again cannot be told from a free of the new allocation, and is not caught
///   (nor is it by glibc). `realloc` and `malloc_usable_size` of a freed block abort as a
///   second free does. Blocks of `Large` are checked by their headers: a second free
///   aborts while the block's memory is still `Large`'s, but the memory of a block with a
///   map of its own (in `General`, one over 32 MiB), or of an arena left wholly free, may
///   be unmapped at the first free: a second free then faults (`SIGSEGV`), or, once the
///   address was mapped again for a new block, frees that one.
///
/// A program has one global allocator, and a `ThreadHeaps` is meant to be it (in place of
/// the [`Router`](crate::Router), not beside it). Each thread keeps one heap, for the first
/// `ThreadHeaps` it allocates small blocks from; a thread using a second instance is
/// served by that instance's `Large` layer alone. (Without the `std` feature a thread
/// keeps a heap in each instance it uses: see the `os` feature in the crate docs.)
///
/// ```
/// use stratalloc::presets::{General, general};
///
/// #[global_allocator]
/// static GLOBAL: General = general();
///
/// let words: Vec<String> = (0..1000).map(|i| i.to_string()).collect();
/// let joined = std::thread::spawn(move || words.join(",")).join().unwrap();
/// assert!(joined.starts_with("0,1,2"));
/// ```
///
/// # Instances that are not `static`s
///
/// An instance may live anywhere, move, and be dropped. Everything its heaps need after their
/// thread let go of the instance (the list of heaps, the pool of abandoned ones, the pthread key
/// whose destructor hands a heap back at thread exit, and the lock of `Large`) is in a *registry*
/// that the instance claims at its first allocation and that lives for the process; the instance
/// holds a pointer to it, the heap cache and `Large` (whose blocks the [`Layer`](crate::Layer)
/// contract keeps valid across moves). Dropping an instance drops `Large` and gives up the registry
/// with its heaps, still held by their threads or pooled: the next instance to make its first
/// allocation claims it (so a program that makes and drops instances in turn reuses one registry,
/// its heaps and their slabs). Small blocks still live when their instance is dropped stay
/// allocated in those slabs.
///
/// # Fork
///
/// At the first allocation of the process's first instance, handlers are registered with
/// `pthread_atfork` that take every lock of every instance (each `Large` lock, each pool of
/// abandoned heaps, the two slab reserves') before `fork` and give them back after it, in both
/// processes; in the child they also retire the heaps of the threads that did not survive
/// the fork (one may have been half-way through an operation). So a child can allocate
/// whatever the other threads were doing. A thread that forks inside
/// [`with_large`](ThreadHeaps::with_large) deadlocks. Locks inside `Large` itself (a
/// layer that shares a lock with other code) are that layer's to handle.
pub struct ThreadHeaps<Large: Measured + Send> {
    /// The registry, claimed at the first allocation (null before); never changes after.
    registry: AtomicPtr<Registry>,
    /// The shared layer, under the registry's `large` lock.
    large: UnsafeCell<Large>,
    counting: AtomicBool,
    counters: Counters,
    /// Heaps by thread-pointer hash, where a thread finds its heap without a thread-local
    /// look-up (which costs a call in a shared library). A slot is only a hint: a heap is
    /// used only when its `thread` is the caller's own thread pointer. Slots only ever hold
    /// heaps of this instance's registry, stored with Release after the heap was written.
    cache: [AtomicPtr<ThreadHeap>; CACHE_SLOTS],
}

// SAFETY: the heaps are reached only by their own thread (see the invariants in
// `registry.rs`), `Large` only under the registry's lock, the rest is atomic; so sharing
// the allocator is like sharing a `Mutex<Large>`: sound when `Large` can move between
// threads. (`Send` follows from the fields: an instance holds nothing tied to a thread.)
unsafe impl<Large: Measured + Send> Sync for ThreadHeaps<Large> {}

/// Whether a request is served by the thread heaps' small slabs.
#[inline(always)]
const fn is_small(layout: Layout) -> bool {
    layout.size() <= SMALL_LIMIT && layout.align() <= HeapSlab::BLOCK_ALIGN
}

/// Whether a request is served by the thread heaps (small or big slabs).
#[inline(always)]
const fn is_in_heaps(layout: Layout) -> bool {
    layout.size() <= BIG_LIMIT && layout.align() <= HeapSlab::BLOCK_ALIGN
}

impl<Large: Measured + Send> ThreadHeaps<Large> {
    /// An allocator with no heaps yet, over `large`; usable in a `static`.
    pub const fn new(large: Large) -> Self {
        ThreadHeaps {
            registry: AtomicPtr::new(ptr::null_mut()),
            large: UnsafeCell::new(large),
            counting: AtomicBool::new(false),
            counters: Counters::new(),
            cache: [const { AtomicPtr::new(ptr::null_mut()) }; CACHE_SLOTS],
        }
    }

    /// Runs `f` with the shared layer behind the heaps, under its lock (so `f` must not
    /// allocate through this allocator, which would deadlock, nor fork, which would too).
    pub fn with_large<R>(&self, f: impl FnOnce(&Large) -> R) -> R {
        // (The guard lets go of the lock also when `f` unwinds.)
        let _held = self.registry().large.lock();
        // SAFETY: the lock makes this the only access to `Large` until `_held` drops;
        // `f` gets shared access only, so it cannot end blocks that live elsewhere.
        f(unsafe { &*self.large.get() })
    }

    /// Runs `f` with exclusive access to `Large`, under its lock, for the allocation paths;
    /// aborts with one line if `f` (a call into the layer) unwinds.
    #[inline]
    fn locked_large<const CALL: u8, R>(&self, f: impl FnOnce(&mut Large) -> R) -> R {
        let _held = self.registry().large.lock();
        no_unwind::<Large, CALL, _>(|| {
            // SAFETY: the lock makes this the only access to `Large` until `_held` drops;
            // `f` is one of this file's operations, which end no block but theirs.
            f(unsafe { &mut *self.large.get() })
        })
    }

    // ---- the registry and the figures ----------------------------------------------------

    /// This instance's registry, claimed on first use.
    #[inline]
    fn registry(&self) -> &'static Registry {
        let registry = self.registry.load(Ordering::Acquire);
        if registry.is_null() {
            return self.claim_registry();
        }
        // SAFETY: published registries live for the process, written before publication
        // (the Acquire load pairs with the Release that published it).
        unsafe { &*registry }
    }

    /// The registry, if the instance claimed one yet.
    fn registry_if_any(&self) -> Option<&'static Registry> {
        // SAFETY: as in `registry`.
        unsafe { self.registry.load(Ordering::Acquire).as_ref() }
    }

    /// Claims a registry for this instance; if another thread claimed one for it first,
    /// gives ours up and uses theirs.
    #[cold]
    fn claim_registry(&self) -> &'static Registry {
        let claimed = Registry::claim();
        match self.registry.compare_exchange(
            ptr::null_mut(),
            ptr::from_ref(claimed).cast_mut(),
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => claimed,
            Err(theirs) => {
                claimed.unclaim();
                // SAFETY: as in `registry`.
                unsafe { &*theirs }
            }
        }
    }

    /// Turns the counting behind [`summary`](ThreadHeaps::summary) on or off. It costs a
    /// few shared atomic operations per call, so it is off by default; turn it on before
    /// the program allocates for whole figures.
    pub fn set_counting(&self, on: bool) {
        self.counting.store(on, Ordering::Relaxed);
    }

    /// Heaps made so far (in use and abandoned), by this instance and by the instances
    /// that used its registry before it.
    pub fn heaps(&self) -> usize {
        self.registry_if_any().map_or(0, Registry::heaps)
    }

    /// Abandoned heaps waiting for a thread.
    pub fn pooled_heaps(&self) -> usize {
        self.registry_if_any().map_or(0, Registry::pooled_heaps)
    }

    /// Bytes of slabs held by the heaps in the pool (those of exited threads): slabs
    /// still holding live blocks, and each heap's few spares.
    pub fn pooled_slab_bytes(&self) -> usize {
        self.registry_if_any()
            .map_or(0, Registry::pooled_slab_bytes)
    }

    /// Blocks freed by other threads into the heaps in the pool and not yet back in their
    /// slabs: 0 whenever no such free is under way (a free into a pooled heap goes
    /// straight to its slab, and a heap's remote stack is emptied as it enters the pool).
    pub fn pooled_remote_frees(&self) -> usize {
        self.registry_if_any()
            .map_or(0, Registry::pooled_remote_frees)
    }

    // ---- the heap cache ------------------------------------------------------------------

    /// This thread's heap for this allocator, making or adopting one on first use; `None`
    /// after this thread's heap was handed back, or when the thread uses another instance.
    #[inline(always)]
    fn heap(&self) -> Option<&'static ThreadHeap> {
        let tp = thread_pointer();
        match self.cached_heap(tp) {
            Some(heap) => Some(heap),
            None => self.heap_slow(tp),
        }
    }

    /// The heap the cache holds for the thread with thread pointer `tp`, when it is that
    /// thread's: the look-up both [`heap`](ThreadHeaps::heap) and the allocation fast
    /// path make.
    #[inline(always)]
    fn cached_heap(&self, tp: usize) -> Option<&'static ThreadHeap> {
        let cached = self.cache[cache_slot(tp)].load(Ordering::Acquire);
        // SAFETY: slots only ever hold heaps, which live for the process, written before
        // they were stored (the Acquire load pairs with that Release store).
        let heap = unsafe { cached.as_ref() }?;
        (heap.thread.load(Ordering::Relaxed) == tp).then_some(heap)
    }

    /// [`heap`](ThreadHeaps::heap) past the cache: the thread's heap, then attaching.
    #[cold]
    fn heap_slow(&self, tp: usize) -> Option<&'static ThreadHeap> {
        let registry = self.registry();
        let current = registry.current()?;
        if current == EXITED {
            return None;
        }
        let heap = if current.is_null() {
            registry.attach()?
        } else {
            // SAFETY: `CURRENT` (or the key) names a live heap used by this thread alone.
            let heap = unsafe { &*current.cast::<ThreadHeap>() };
            if !heap.is_in(registry) {
                return None;
            }
            heap
        };
        self.cache[cache_slot(tp)].store(ptr::from_ref(heap).cast_mut(), Ordering::Release);
        Some(heap)
    }

    // ---- allocation ----------------------------------------------------------------------

    /// Allocates a block for `layout`; null when out of memory.
    ///
    /// The fast path (a small block popped from this thread's heap, counting off) makes no
    /// call where the thread pointer is a register read (x86-64 and aarch64 Linux), so it
    /// saves no registers; everything else is [`allocate_slow`].
    ///
    /// [`allocate_slow`]: ThreadHeaps::allocate_slow
    #[inline(always)]
    fn allocate(&self, layout: Layout) -> *mut u8 {
        if is_small(layout)
            && !self.counting.load(Ordering::Relaxed)
            && let Some(heap) = self.cached_heap(thread_pointer())
        {
            // SAFETY: this thread's heap; no other reference to its slab is live.
            let slab = unsafe { heap.slab() };
            if let Some(block) = slab.pop_free(HeapSlab::class_of(layout.size())) {
                return block.as_ptr();
            }
        }
        self.allocate_slow(layout)
    }

    /// [`allocate`](ThreadHeaps::allocate) past its fast path: finding or making the
    /// heap, refilling the class, counting, and large blocks.
    #[cold]
    #[inline(never)]
    fn allocate_slow(&self, layout: Layout) -> *mut u8 {
        if is_in_heaps(layout)
            && let Some(heap) = self.heap()
        {
            // SAFETY: this thread's heap.
            let block = unsafe {
                if is_small(layout) {
                    self.allocate_in::<SlabSource, SLAB_BYTES>(heap, layout.size())
                } else {
                    self.allocate_in::<BigSource, BIG_SLAB_BYTES>(heap, layout.size())
                }
            };
            if let Some(block) = block {
                return block.as_ptr();
            }
        }
        self.allocate_large(layout)
    }

    /// A block of `size` bytes from this thread's slabs of one tier, counted.
    ///
    /// # Safety
    ///
    /// `heap` is this thread's heap, no reference to its slabs is live, and `size` is at
    /// most the tier's limit.
    #[inline(always)]
    unsafe fn allocate_in<L: Layer, const SLAB: usize>(
        &self,
        heap: &ThreadHeap,
        size: usize,
    ) -> Option<NonNull<u8>>
    where
        Slab<L, SLAB>: HeapTier,
    {
        let class = Slab::<L, SLAB>::class_of(size);
        // SAFETY: the caller's duty.
        let block = match unsafe { Slab::<L, SLAB>::of(heap) }.pop_free(class) {
            Some(block) => block,
            // SAFETY: the caller's duty.
            None => unsafe { Self::refill::<L, SLAB>(heap, class)? },
        };
        if self.counting.load(Ordering::Relaxed) {
            self.counters
                .count_get(Some(class), Slab::<L, SLAB>::class_size(class));
        }
        Some(block)
    }

    /// The head slab of `class` has no free block: take back the blocks other threads
    /// freed first (they may refill it), then let the slab layer carve or move on.
    ///
    /// # Safety
    ///
    /// `heap` is this thread's heap, and no reference to its slabs is live.
    #[cold]
    unsafe fn refill<L: Layer, const SLAB: usize>(
        heap: &ThreadHeap,
        class: usize,
    ) -> Option<NonNull<u8>>
    where
        Slab<L, SLAB>: HeapTier,
    {
        // SAFETY: the caller's duty.
        unsafe {
            if heap.has_remote_frees() {
                heap.drain();
                if let Some(block) = Slab::<L, SLAB>::of(heap).pop_free(class) {
                    return Some(block);
                }
            }
            // A slow path taken every few dozen allocations: the moment to let free
            // granules that stayed unused go back to the OS.
            decay_slab_ranges();
            Slab::<L, SLAB>::of(heap).get_small_slow(class)
        }
    }

    /// Allocates a block whose bytes are zero: a slab block zeroed, or a block of `Large`
    /// that `Large` zeroes only when it is not zero already (a piece fresh from the OS), so
    /// that a large zeroed request (`calloc`, `vec![0; n]`) costs no memory until written.
    fn allocate_zeroed(&self, layout: Layout) -> *mut u8 {
        if is_in_heaps(layout) {
            let block = self.allocate(layout);
            if !block.is_null() {
                // SAFETY: a fresh block of at least `layout.size()` bytes.
                unsafe { block.write_bytes(0, layout.size()) };
            }
            return block;
        }
        self.allocate_large_as(layout, true)
    }

    /// Allocates from `Large`, under its lock.
    #[cold]
    fn allocate_large(&self, layout: Layout) -> *mut u8 {
        self.allocate_large_as(layout, false)
    }

    /// Allocates from `Large`, under its lock, zeroed when `zeroed`.
    #[cold]
    fn allocate_large_as(&self, layout: Layout, zeroed: bool) -> *mut u8 {
        decay_slab_ranges();
        let counting = self.counting.load(Ordering::Relaxed);
        let block = self.locked_large::<{ call::GET }, _>(|large| {
            let block = get_large_as(large, layout, zeroed)?;
            if counting {
                // SAFETY: a live block of `Large`, just got.
                let size = unsafe { large.usable_size(block) };
                self.counters.count_get(None, size);
            }
            Some(block)
        });
        block.map_or(ptr::null_mut(), NonNull::as_ptr)
    }

    // ---- frees ---------------------------------------------------------------------------

    /// Frees a block, whichever thread and heap it came from.
    ///
    /// # Safety
    ///
    /// `ptr` is a live block of this allocator, not used afterwards.
    #[inline(always)]
    unsafe fn free_block(&self, ptr: NonNull<u8>) {
        match reserve_of(ptr) {
            // SAFETY: a live block in the small slabs' reserve, given up by the caller.
            Reserved::Small => unsafe { self.free_in::<SlabSource, SLAB_BYTES>(ptr) },
            // SAFETY: a live block in the big slabs' reserve, given up by the caller.
            Reserved::Big => unsafe { self.free_in::<BigSource, BIG_SLAB_BYTES>(ptr) },
            // SAFETY: a live block of `Large`, given up by the caller.
            Reserved::Neither => unsafe { self.free_large(ptr) },
        }
    }

    /// Frees a block of a slab of one tier: into its slab when the heap is this thread's,
    /// else onto its heap's remote stack.
    ///
    /// # Safety
    ///
    /// `ptr` is a live block of a slab of this tier, not used afterwards.
    #[inline(always)]
    unsafe fn free_in<L: Layer, const SLAB: usize>(&self, ptr: NonNull<u8>)
    where
        Slab<L, SLAB>: HeapTier,
    {
        if self.counting.load(Ordering::Relaxed) {
            // SAFETY: passed on from the caller.
            return unsafe { self.free_counted::<L, SLAB>(ptr) };
        }
        // SAFETY: passed on from the caller.
        unsafe { Self::free_uncounted::<L, SLAB>(ptr) }
    }

    /// [`free_in`](ThreadHeaps::free_in) while the heap summary counts: out of line, so
    /// that a free needs no stack frame.
    ///
    /// # Safety
    ///
    /// As for `free_in`.
    #[cold]
    #[inline(never)]
    unsafe fn free_counted<L: Layer, const SLAB: usize>(&self, ptr: NonNull<u8>)
    where
        Slab<L, SLAB>: HeapTier,
    {
        // SAFETY: a live slab block, so its slab header is readable.
        let size = unsafe { Slab::<L, SLAB>::usable_size(ptr) };
        self.counters
            .count_put(Some(Slab::<L, SLAB>::class_of(size)), size);
        // SAFETY: passed on from the caller.
        unsafe { Self::free_uncounted::<L, SLAB>(ptr) }
    }

    /// [`free_in`](ThreadHeaps::free_in) past the count.
    ///
    /// # Safety
    ///
    /// As for `free_in`.
    #[inline(always)]
    unsafe fn free_uncounted<L: Layer, const SLAB: usize>(ptr: NonNull<u8>)
    where
        Slab<L, SLAB>: HeapTier,
    {
        // SAFETY: a live slab block: its slab header is readable and names its owner.
        let (slab, owner) = unsafe { Slab::<L, SLAB>::slab_and_tag(ptr) };
        // SAFETY: a tag names a live heap for good (registry invariants), which this
        // thread reached after the heap was written: through the block, handed to it
        // after its allocation on the heap's thread.
        let heap = unsafe { &*owner.cast::<ThreadHeap>() };
        if heap.thread.load(Ordering::Relaxed) == thread_pointer() {
            // SAFETY: the block's heap is this thread's; the caller gives it up.
            unsafe { Slab::<L, SLAB>::of(heap).put_in_slab(slab, ptr) };
        } else {
            // SAFETY: a live block of the heap's slabs, given up by the caller.
            unsafe { heap.push_remote(ptr) };
        }
    }

    /// The bytes a slab block holds, or `None` for a block of `Large`.
    ///
    /// # Safety
    ///
    /// `ptr` is a live block of this allocator.
    #[inline]
    unsafe fn slab_usable_size(ptr: NonNull<u8>) -> Option<usize> {
        /// A freed slab block holds its free key (cleared when it is handed out again).
        const FREED_BLOCK: &str = "put twice (it is already free): realloc or malloc_usable_size \
                             of a freed block";
        // SAFETY: the caller's duty; `reserve_of` names the layer of a live block, which
        // holds at least a free block's two words.
        unsafe {
            match reserve_of(ptr) {
                Reserved::Small => {
                    let size = HeapSlab::usable_size(ptr);
                    HeapSlab::abort_if_free_with(ptr, FREED_BLOCK);
                    Some(size)
                }
                Reserved::Big => {
                    let size = BigSlab::usable_size(ptr);
                    BigSlab::abort_if_free_with(ptr, FREED_BLOCK);
                    Some(size)
                }
                Reserved::Neither => None,
            }
        }
    }

    /// Frees a block of `Large`.
    ///
    /// # Safety
    ///
    /// `ptr` is a live block of `Large`, not used afterwards.
    #[cold]
    unsafe fn free_large(&self, ptr: NonNull<u8>) {
        let counting = self.counting.load(Ordering::Relaxed);
        // SAFETY: the closure puts only the caller's block, live in `Large`.
        self.locked_large::<{ call::PUT }, _>(|large| unsafe {
            if counting {
                let size = large.usable_size(ptr);
                self.counters.count_put(None, size);
            }
            large.put_unsized(ptr)
        })
    }

    // ---- the C interface -----------------------------------------------------------------

    /// C's `malloc`: a block of at least `size` bytes aligned to 16, or null.
    #[inline]
    pub fn malloc(&self, size: usize) -> *mut u8 {
        match Layout::from_size_align(size.max(1), HeapSlab::BLOCK_ALIGN) {
            Ok(layout) => self.allocate(layout),
            Err(_) => ptr::null_mut(),
        }
    }

    /// C's `calloc`: a block of `count * size` zero bytes aligned to 16, or null (also when
    /// the product overflows). A large one fresh from the OS is not written: its pages
    /// cost nothing until used, as with glibc.
    pub fn calloc(&self, count: usize, size: usize) -> *mut u8 {
        let Some(bytes) = count.checked_mul(size) else {
            return ptr::null_mut();
        };
        match Layout::from_size_align(bytes.max(1), HeapSlab::BLOCK_ALIGN) {
            Ok(layout) => self.allocate_zeroed(layout),
            Err(_) => ptr::null_mut(),
        }
    }

    /// A block of at least `size` bytes aligned to `align` (a power of two), or null.
    pub fn malloc_aligned(&self, size: usize, align: usize) -> *mut u8 {
        match Layout::from_size_align(size.max(1), align.max(HeapSlab::BLOCK_ALIGN)) {
            Ok(layout) => self.allocate(layout),
            Err(_) => ptr::null_mut(),
        }
    }

    /// C's `free`: gives back a block of this allocator, found by its address alone; null
    /// does nothing.
    ///
    /// # Safety
    ///
    /// `ptr` is null or a live block that this allocator returned (from any of its
    /// methods, on any thread), not used afterwards.
    #[inline]
    pub unsafe fn free(&self, ptr: *mut u8) {
        if let Some(ptr) = NonNull::new(ptr) {
            // SAFETY: the caller's duty.
            unsafe { self.free_block(ptr) }
        }
    }

    /// C's `malloc_usable_size`: the bytes the block really holds (0 for null).
    ///
    /// # Safety
    ///
    /// As for [`free`](ThreadHeaps::free), except that the block stays live.
    pub unsafe fn usable_size(&self, ptr: *mut u8) -> usize {
        let Some(ptr) = NonNull::new(ptr) else {
            return 0;
        };
        // SAFETY: the caller's duty: a live block of ours.
        match unsafe { Self::slab_usable_size(ptr) } {
            Some(size) => size,
            // SAFETY: a live block of `Large`.
            None => self.locked_large::<{ call::USABLE_SIZE }, _>(|large| unsafe {
                large.usable_size(ptr)
            }),
        }
    }

    /// C's `realloc`: the block itself when `size` still fits it (and does not waste more
    /// than half of it) or when a block of `Large` grows in place into a free neighbour,
    /// else a new block with the contents moved; null when out of memory (the old block
    /// then stays live). A null `ptr` is `malloc(size)`. A small block grown a little past
    /// 256 bytes moves to `Large` (see `GROWN_LIMIT` in the source): strings built by
    /// appending then keep growing in place there.
    ///
    /// # Safety
    ///
    /// `ptr` is null or a live block of this allocator; on success it is not used
    /// afterwards unless the same pointer came back.
    pub unsafe fn realloc(&self, ptr: *mut u8, size: usize) -> *mut u8 {
        let Some(block) = NonNull::new(ptr) else {
            return self.malloc(size);
        };
        // SAFETY: the caller's duty: a live block of ours.
        let Some(usable) = (unsafe { Self::slab_usable_size(block) }) else {
            // SAFETY: the caller's duty: a live block, and in neither reserve, so `Large`'s.
            return unsafe { self.realloc_large(block, size) };
        };
        if size <= usable && size >= usable / 2 {
            return ptr;
        }
        // A block growing a little past `GROWN_LIMIT` moves to `Large`, where it can keep
        // growing in place and its old copies merge back into free space any size can use.
        let new = if grows_into_large(usable, size) {
            match Layout::from_size_align(size, HeapSlab::BLOCK_ALIGN) {
                Ok(layout) => self.allocate_large(layout),
                Err(_) => ptr::null_mut(),
            }
        } else {
            self.malloc(size)
        };
        // SAFETY: the caller's duty; `new` is null or a fresh block of at least `size`.
        unsafe { self.move_block(ptr, new, usable.min(size)) }
    }

    /// [`realloc`](ThreadHeaps::realloc) of a block of `Large`: kept when it still fits,
    /// grown in place into a free neighbour when it can (as glibc's are), else moved to a
    /// new block of `Large` under the same hold of the lock (a block of `COPY_UNLOCKED`
    /// bytes or more is copied outside it); moved to a new block of any kind when it
    /// shrinks to less than half.
    ///
    /// # Safety
    ///
    /// `block` is a live block of `Large`; on success it is not used afterwards unless the
    /// same pointer came back.
    unsafe fn realloc_large(&self, block: NonNull<u8>, size: usize) -> *mut u8 {
        /// What the locked part decided.
        enum Resized {
            /// The block to return: the same, a moved one, or null (out of memory).
            Done(*mut u8),
            /// Shrunk to less than half: move it to a fresh block of the right kind.
            Shrunk,
            /// A new block of `Large` to copy this many bytes into, outside the lock.
            CopyUnlocked(NonNull<u8>, usize),
        }
        let Ok(layout) = Layout::from_size_align(size.max(1), HeapSlab::BLOCK_ALIGN) else {
            return ptr::null_mut();
        };
        let counting = self.counting.load(Ordering::Relaxed);
        // SAFETY: the caller's duty: `block` is a live block of `Large`; the closure
        // resizes, or moves and puts, only that block.
        let resized = unsafe {
            self.locked_large::<{ call::RESIZE }, _>(|large| {
                let usable = large.usable_size(block);
                if size <= usable {
                    return if size >= usable / 2 {
                        Resized::Done(block.as_ptr())
                    } else {
                        Resized::Shrunk
                    };
                }
                // (Grown keeping its own alignment, which C's `realloc` does not know.)
                if large.grow_unsized(block, size) {
                    if counting {
                        let now = large.usable_size(block);
                        self.counters.count_grown_in_place(now - usable);
                    }
                    return Resized::Done(block.as_ptr());
                }
                let Some(new) = get_large(large, layout) else {
                    return Resized::Done(ptr::null_mut());
                };
                if counting {
                    self.counters.count_get(None, large.usable_size(new));
                }
                if usable >= COPY_UNLOCKED {
                    return Resized::CopyUnlocked(new, usable);
                }
                // The new block is fresh (distinct) and holds `size > usable` bytes.
                ptr::copy_nonoverlapping(block.as_ptr(), new.as_ptr(), usable);
                if counting {
                    self.counters.count_put(None, usable);
                }
                large.put_unsized(block);
                Resized::Done(new.as_ptr())
            })
        };
        match resized {
            Resized::Done(done) => done,
            // SAFETY: the caller's duty; the new block is null or holds `size` bytes.
            Resized::Shrunk => unsafe { self.move_block(block.as_ptr(), self.malloc(size), size) },
            // SAFETY: the caller's duty; `new` is a fresh live block of `Large` holding more
            // than `usable` bytes, and `block` (live, holding `usable`) is freed once.
            Resized::CopyUnlocked(new, usable) => unsafe {
                self.move_block(block.as_ptr(), new.as_ptr(), usable)
            },
        }
    }

    /// Copies `len` bytes of the live block `old` into `new` and frees `old`; when `new`
    /// is null (out of memory), leaves `old` live. Returns `new`.
    ///
    /// # Safety
    ///
    /// `old` is a live block of this allocator holding `len` bytes, not used afterwards
    /// when `new` is not null; `new` is null or a live block of at least `len` bytes.
    unsafe fn move_block(&self, old: *mut u8, new: *mut u8, len: usize) -> *mut u8 {
        if !new.is_null() {
            // SAFETY: both blocks are live and distinct (`new` is fresh), each holding
            // `len` bytes; `old` is given up by the caller.
            unsafe {
                ptr::copy_nonoverlapping(old, new, len);
                self.free(old);
            }
        }
        new
    }
}

// ---- dropping, and the GlobalAlloc impl --------------------------------------------------

impl<Large: Measured + Send> Drop for ThreadHeaps<Large> {
    /// Releases the registry, with its heaps, for the next instance to claim; `Large` is
    /// dropped after this, as a field.
    fn drop(&mut self) {
        if let Some(registry) = self.registry_if_any() {
            registry.unclaim();
        }
    }
}

// SAFETY: blocks of up to 32 KiB come from this thread's `Slab`s (layers keeping the
// contract) and go back to their owner's slab of the same size, directly or through its
// remote stack; everything else comes from and goes back to `Large`, under its lock; they
// never mix, because only slabs of one size lie in each of the two reserves (no block of
// `Large` starts in them: `get_large`).
unsafe impl<Large: Measured + Send> GlobalAlloc for ThreadHeaps<Large> {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.allocate(layout)
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        self.allocate_zeroed(layout)
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `GlobalAlloc::dealloc`'s duties: a live block of this allocator.
        unsafe { self.free_block(NonNull::new_unchecked(ptr)) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if layout.align() <= HeapSlab::BLOCK_ALIGN {
            // SAFETY: a live block; C's `realloc` keeps alignments up to 16.
            return unsafe { ThreadHeaps::realloc(self, ptr, new_size) };
        }
        // SAFETY: `GlobalAlloc::realloc`'s duties make the new layout valid.
        let new = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        let fresh = self.allocate(new);
        if !fresh.is_null() {
            // SAFETY: both blocks live and distinct; the old one holds `layout.size()`.
            unsafe {
                ptr::copy_nonoverlapping(ptr, fresh, layout.size().min(new_size));
                self.free(ptr);
            }
        }
        fresh
    }
}

impl<Large: Measured + Send> fmt::Debug for ThreadHeaps<Large> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThreadHeaps")
            .field("heaps", &self.heaps())
            .field("reserved_bytes_used", &SlabSource::handle().used_bytes())
            .field("big_bytes_used", &BigSource::handle().used_bytes())
            .finish_non_exhaustive()
    }
}
