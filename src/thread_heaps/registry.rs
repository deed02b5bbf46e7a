//! The thread heaps and their registries: everything of a [`ThreadHeaps`](super::ThreadHeaps)
//! that must outlive the instance (which may move, or be dropped while threads still hold
//! its heaps), and the process-wide `fork` handlers. Entry points: [`Registry::claim`],
//! [`Registry::attach`], `thread_exit` (a thread key's destructor) and, on Unix, the fork
//! handlers.
//!
//! Invariants:
//! - a registry lives for the process, in a granule of the slab reserve that is never
//!   given back (or it is the static `FALLBACK`), and is on the process's list
//!   (`REGISTRIES`) from the moment it is published; at most one instance uses it at a time
//!   (`claimed`), but the fallback, which has no heaps, is shared;
//! - every heap is on its registry's list (`all`) for the life of the process, and belongs
//!   to that registry for good (a heap's memory is never given back, so a slab's owner tag
//!   always names a live heap, and a heap always names a live registry);
//! - a heap is used by at most one thread at a time: the thread whose thread pointer is in
//!   its `thread` field (and whose `CURRENT`, or key value, names it), or none while it
//!   sits in its registry's pool of abandoned heaps (then under the pool lock);
//! - a block of the thread heaps lives in a slab of the heap its tag names (small slabs in
//!   the slab reserve, big ones in a reserve of their own); only that
//!   heap's thread puts it on a slab free list; other threads push it on the heap's
//!   `remote` stack, which the owner drains.
//!
//! Publication (what makes another thread's reads of these fields race-free): a registry
//! is written before it is pushed on `REGISTRIES` (a Release store, read Acquire) and
//! before an instance publishes it (a Release compare-and-swap, read Acquire); a heap is
//! written before it is pushed on `all` (Release, read Acquire) and before the instance's
//! heap cache holds it (Release, read Acquire); it passes between threads through the pool
//! lock; blocks on a remote stack are written before the compare-and-swap that pushes them
//! and read after the swap that takes the stack (both SeqCst, for the hand-back's race
//! described at `ThreadHeap::push_remote`). Other threads compare the `thread` field only
//! with their own thread pointer, which only they write, or with 0 (no thread), which
//! sends them to the pool lock.

use core::alloc::Layout;
use core::cell::{Cell, UnsafeCell};
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};

use super::thread_pointer::thread_pointer;
#[cfg(feature = "std")]
use super::thread_pointer::{CURRENT, EXITED};
use super::{
    BIG_SLAB_BYTES, BigSlab, BigSource, HeapSlab, Reserved, SLAB_BYTES, SlabSource, reserve_of,
};
use crate::Layer;
use crate::layers::Slab;
use crate::os::ThreadKey;
#[cfg(unix)]
use crate::spin::Backoff;
use crate::spin::SpinLock;

// ---- heaps -------------------------------------------------------------------------------

/// A block on a heap's remote stack, written into the freed block: the link, and the
/// remote key that tells a second free of the block ([`HeapSlab::remote_key`]).
struct RemoteBlock {
    next: *mut RemoteBlock,
    /// (Read through the block's address by the slab's checks, cleared by `drain`.)
    key: usize,
}

/// An atomic on a cache line of its own, so that other threads pushing frees do not slow
/// the owner's slab work next to it.
#[repr(align(64))]
struct Padded<T>(T);

/// One thread's heap.
pub(super) struct ThreadHeap {
    /// The heap's slabs for small blocks and for big ones: used by its
    /// thread alone (or, while it is pooled, under the pool lock), while other threads hold
    /// `&ThreadHeap` to reach `remote` and `thread`.
    slab: UnsafeCell<HeapSlab>,
    big: UnsafeCell<BigSlab>,
    /// The thread pointer of the thread using the heap, 0 while none does. Written only by
    /// that thread (when it takes or hands back the heap) or, after a fork, by the one
    /// thread left; so a thread that reads its own pointer here owns the heap.
    pub(super) thread: AtomicUsize,
    /// The registry it belongs to, for good.
    registry: *const Registry,
    /// Blocks of this heap freed by other threads.
    remote: Padded<AtomicPtr<RemoteBlock>>,
    /// The registry link (every heap, forever).
    all_next: *mut ThreadHeap,
    /// The pool link (abandoned heaps), under the pool lock.
    pool_next: Cell<*mut ThreadHeap>,
    /// Whether the heap is in the pool, under the pool lock.
    abandoned: Cell<bool>,
}

impl ThreadHeap {
    /// Whether the heap belongs to `registry`.
    pub(super) fn is_in(&self, registry: &Registry) -> bool {
        ptr::eq(self.registry, registry)
    }

    /// The heap's slab layer, mutably.
    ///
    /// # Safety
    ///
    /// The heap is this thread's (its `thread` is this thread's pointer), or it is pooled
    /// and the caller holds its registry's pool lock; no other reference to its slab is
    /// live.
    #[allow(clippy::mut_from_ref)]
    #[inline(always)]
    pub(super) unsafe fn slab(&self) -> &mut HeapSlab {
        // SAFETY: the caller's duty makes this the only access to the slab; the cast goes
        // through the heap's own cell.
        unsafe { &mut *self.slab.get() }
    }

    /// The heap's big slab layer, mutably.
    ///
    /// # Safety
    ///
    /// As for [`slab`](ThreadHeap::slab), for the big slab layer.
    #[allow(clippy::mut_from_ref)]
    #[inline(always)]
    pub(super) unsafe fn big(&self) -> &mut BigSlab {
        // SAFETY: as in `slab`.
        unsafe { &mut *self.big.get() }
    }

    /// Puts a block of this heap back in the slab layer it came from, found by its address.
    ///
    /// # Safety
    ///
    /// As for [`slab`](ThreadHeap::slab), and `ptr` is a live block of one of the heap's
    /// slabs, given up by the caller.
    unsafe fn put_back(&self, ptr: NonNull<u8>) {
        // SAFETY: the caller's duty; a block of the heap's slabs is small or big, and
        // `reserve_of` tells which.
        unsafe {
            if reserve_of(ptr) == Reserved::Big {
                self.big().put_unsized(ptr);
            } else {
                self.slab().put_unsized(ptr);
            }
        }
    }

    // ---- remote frees --------------------------------------------------------------------

    /// Takes the heap's remote stack and puts every block on it back in its slab.
    ///
    /// # Safety
    ///
    /// As for [`slab`](ThreadHeap::slab).
    #[cold]
    pub(super) unsafe fn drain(&self) {
        // SeqCst, for the hand-back's drain: see `push_remote`.
        let mut block = self.remote.0.swap(ptr::null_mut(), Ordering::SeqCst);
        // SAFETY: the heap is ours (the caller's duty); each block on the stack is a live
        // block of one of its slabs, given up by the thread that pushed it (its link and
        // remote key are the only things in it), written before the push that the swap
        // (SeqCst, so Acquire) pairs with.
        unsafe {
            while let Some(b) = NonNull::new(block) {
                block = (*block).next;
                // The put would take the remote key for a second free.
                (*b.as_ptr()).key = 0;
                self.put_back(b.cast());
            }
        }
    }

    /// Whether other threads freed blocks of this heap since its last drain (a hint).
    #[inline]
    pub(super) fn has_remote_frees(&self) -> bool {
        !self.remote.0.load(Ordering::Relaxed).is_null()
    }

    /// Gives a block to this heap, which is not the calling thread's: on its remote stack,
    /// or, when the heap sits in the pool with no thread to take the stack back, straight
    /// into its slab under the pool lock (which adoption takes too), so that memory freed
    /// into the heaps of exited threads is reused and given back, not stranded.
    ///
    /// A push can race with the heap's thread handing it back (`Registry::abandon`: clear
    /// `thread`, then, under the pool lock, empty the remote stack and pool the heap). After
    /// its push, the pusher reads `thread` again, and if it is 0, it takes the pool lock and
    /// empties the stack itself if the heap is pooled by then. With the push, that read, the
    /// clearing store and the emptying swap all SeqCst, either the read sees the store (and
    /// the pusher, or the hand-back after it, empties the stack under the lock), or the
    /// push comes before the store in their single order, and so before the swap, which
    /// takes the block. No block is left on the stack of a pooled heap.
    ///
    /// # Safety
    ///
    /// `ptr` is a live block of one of this heap's slabs, given up by the caller.
    pub(super) unsafe fn push_remote(&self, ptr: NonNull<u8>) {
        // SAFETY: the caller's duty: a block of one of the heap's slabs (`Slab`s of any
        // size share the free blocks' layout).
        unsafe { HeapSlab::abort_if_free(ptr) };
        // SAFETY: the block is one of the heap's slab blocks, given up by the caller.
        if self.thread.load(Ordering::Relaxed) == 0 && unsafe { self.drain_if_pooled(Some(ptr)) } {
            return;
        }
        let block = ptr.as_ptr().cast::<RemoteBlock>();
        let mut head = self.remote.0.load(Ordering::Relaxed);
        loop {
            // SAFETY: the block is given up by the caller: its first two words (every slab
            // block holds a free block's two) are ours to use.
            unsafe {
                block.write(RemoteBlock {
                    next: head,
                    key: HeapSlab::remote_key(ptr),
                })
            };
            match self.remote.0.compare_exchange_weak(
                head,
                block,
                Ordering::SeqCst,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(now) => head = now,
            }
        }
        if self.thread.load(Ordering::SeqCst) == 0 {
            // SAFETY: no block to put.
            unsafe { self.drain_if_pooled(None) };
        }
    }

    /// For a heap that no thread holds: under the pool's lock, if the heap is pooled,
    /// drains its remote frees and puts `block` back; `true` when it did. A heap handed
    /// back drains only what was pushed before it was pooled, so a free racing with the
    /// hand-back must do this itself, or its block would wait for the heap's next
    /// adopter.
    ///
    /// # Safety
    ///
    /// `block`, if any, is one of the heap's slab blocks, given up by the caller.
    #[cold]
    unsafe fn drain_if_pooled(&self, block: Option<NonNull<u8>>) -> bool {
        // SAFETY: a heap's registry lives for the process.
        let pool = unsafe { &(*self.registry).pool };
        let _pooled = pool.lock();
        if !self.abandoned.get() {
            return false;
        }
        // SAFETY: a pooled heap is no thread's, and the pool lock keeps it so; the block
        // is the caller's to give up.
        unsafe {
            self.drain();
            if let Some(block) = block {
                self.put_back(block);
            }
        }
        true
    }
}

// ---- registries --------------------------------------------------------------------------

/// What the heaps of one `ThreadHeaps` share, and the lock of its `Large` layer: the
/// instance holds only a pointer to it, so that the instance can move and be dropped while
/// the heaps, their thread-exit hand-back and the fork handlers keep working.
pub(super) struct Registry {
    /// The lock of the instance's `Large` layer: here, where the fork handlers find it.
    pub(super) large: SpinLock,
    /// Every heap made, newest first.
    all: AtomicPtr<ThreadHeap>,
    /// Abandoned heaps, ready for adoption: the first, linked through their `pool_next`.
    /// The lock covers the heaps' `pool_next` and `abandoned` too, and their slabs while
    /// they are pooled.
    pool: SpinLock<*mut ThreadHeap>,
    /// The thread key whose destructor hands a heap back; none for the fallback, which
    /// has no heaps.
    key: Option<ThreadKey>,
    /// Whether an instance uses the registry.
    claimed: AtomicBool,
    /// The next registry on `REGISTRIES` (set before the registry is published there).
    next: *const Registry,
}

// SAFETY: the pool's head is reached only under its lock (the heaps it lists are shared
// through it, one thread at a time); `key` and `next` are written before the registry is
// published and only read afterwards; the rest is atomic or a lock.
unsafe impl Sync for Registry {}

/// Every registry made, newest first: pushed under `PUSHING`, read without it.
static REGISTRIES: AtomicPtr<Registry> = AtomicPtr::new(ptr::null_mut());

/// Taken to push a registry on `REGISTRIES`, and held by the fork handlers across a fork,
/// so that no registry appears (with a lock someone holds) while they take every lock.
static PUSHING: SpinLock = SpinLock::new(());

/// The registry of instances that could not have one of their own (no reserve, or no
/// pthread key left): no heaps, so everything goes to `Large`. Shared, which is sound:
/// with no heaps it holds nothing but the lock that the `Large` layers of those instances
/// then take turns on.
static FALLBACK: Registry = Registry {
    large: SpinLock::new(()),
    all: AtomicPtr::new(ptr::null_mut()),
    pool: SpinLock::new(ptr::null_mut()),
    key: None,
    claimed: AtomicBool::new(true),
    next: ptr::null(),
};

impl Registry {
    /// A registry for an instance: a released one (with the heaps it kept), or a new one,
    /// or the fallback.
    #[cold]
    pub(super) fn claim() -> &'static Registry {
        register_fork_handlers();
        let mut registry = REGISTRIES.load(Ordering::Acquire);
        // SAFETY: published registries live for the process.
        while let Some(r) = unsafe { registry.as_ref() } {
            if r.claimed
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                return r;
            }
            registry = r.next.cast_mut();
        }
        Registry::make().unwrap_or(&FALLBACK)
    }

    /// A new registry, claimed, in a granule of its own from the slab reserve (never given
    /// back), published on `REGISTRIES`.
    fn make() -> Option<&'static Registry> {
        let layout = Layout::new::<Registry>();
        let memory = SlabSource::handle().get(layout)?;
        let Some(key) = ThreadKey::new(thread_exit) else {
            // SAFETY: the block was got just above with `layout`, and is unused.
            unsafe { SlabSource::handle().put(memory, layout) };
            return None;
        };
        let registry = memory.as_ptr().cast::<Registry>();
        let pushing = PUSHING.lock();
        // SAFETY: a fresh block that fits a `Registry`, not yet published: ours alone.
        unsafe {
            registry.write(Registry {
                large: SpinLock::new(()),
                all: AtomicPtr::new(ptr::null_mut()),
                pool: SpinLock::new(ptr::null_mut()),
                key: Some(key),
                claimed: AtomicBool::new(true),
                next: REGISTRIES.load(Ordering::Relaxed),
            });
        }
        REGISTRIES.store(registry, Ordering::Release);
        drop(pushing);
        // SAFETY: written above; registries live for the process.
        Some(unsafe { &*registry })
    }

    /// Gives the registry up, heaps and all, for the next instance to claim (the fallback
    /// stays shared).
    pub(super) fn unclaim(&self) {
        if !ptr::eq(self, &FALLBACK) {
            self.claimed.store(false, Ordering::Release);
        }
    }

    // ---- figures -------------------------------------------------------------------------

    /// Heaps made so far (in use and abandoned).
    pub(super) fn heaps(&self) -> usize {
        let mut count = 0;
        let mut heap = self.all.load(Ordering::Acquire);
        while !heap.is_null() {
            count += 1;
            // SAFETY: registered heaps live forever; `all_next` is set before publication.
            heap = unsafe { (*heap).all_next };
        }
        count
    }

    /// Abandoned heaps waiting for a thread.
    pub(super) fn pooled_heaps(&self) -> usize {
        let pool = self.pool.lock();
        let mut count = 0;
        let mut heap = *pool;
        while !heap.is_null() {
            count += 1;
            // SAFETY: pooled heaps are live; their links are read under the pool lock.
            heap = unsafe { (*heap).pool_next.get() };
        }
        drop(pool);
        count
    }

    /// Bytes of slabs held by the heaps in the pool.
    pub(super) fn pooled_slab_bytes(&self) -> usize {
        let pool = self.pool.lock();
        let mut bytes = 0;
        let mut heap = *pool;
        while !heap.is_null() {
            // SAFETY: pooled heaps are live and no thread's; the pool lock keeps them so.
            unsafe {
                bytes +=
                    (*heap).slab().slabs() * SLAB_BYTES + (*heap).big().slabs() * BIG_SLAB_BYTES;
                heap = (*heap).pool_next.get();
            }
        }
        drop(pool);
        bytes
    }

    /// Blocks waiting on the remote stacks of the heaps in the pool.
    pub(super) fn pooled_remote_frees(&self) -> usize {
        let pool = self.pool.lock();
        let mut count = 0;
        let mut heap = *pool;
        // SAFETY: pooled heaps are live; their links are read under the pool lock. Blocks on
        // a remote stack stay there, unchanged, until a drain, which takes the pool lock
        // for a pooled heap; they were written before the push (SeqCst, so Release) that
        // the Acquire load pairs with (a push meanwhile only adds a block above the head
        // read).
        unsafe {
            while let Some(h) = heap.as_ref() {
                let mut block = h.remote.0.load(Ordering::Acquire);
                while let Some(b) = block.as_ref() {
                    count += 1;
                    block = b.next;
                }
                heap = h.pool_next.get();
            }
        }
        drop(pool);
        count
    }

    // ---- attaching and handing back a thread's heap --------------------------------------

    /// This thread's heap, type-erased: null before the thread's first small allocation,
    /// `EXITED` after its heap was handed back; `None` while the thread-local is being
    /// destroyed. The heap may belong to another registry.
    ///
    /// Without std it is this registry's thread key, whose value the thread's heap is
    /// anyway. There a thread keeps a heap per registry. At thread exit glibc clears a
    /// key before calling its destructor, so allocations from destructors that run later
    /// get a heap (pooled again by the key's next round of destructors) instead of going
    /// to `Large`; one made after the last round (glibc makes four) is never pooled.
    /// Windows calls a key's destructor once, and `thread_exit` leaves `EXITED` in the key.
    #[inline]
    pub(super) fn current(&self) -> Option<*mut u8> {
        #[cfg(feature = "std")]
        {
            CURRENT.try_with(Cell::get).ok()
        }
        #[cfg(not(feature = "std"))]
        {
            Some(self.key.map_or(ptr::null_mut(), ThreadKey::get))
        }
    }

    /// Gives this thread a heap of this registry: an abandoned one, or a new one; `None`
    /// when the registry has no key or no heap can be made.
    #[cold]
    pub(super) fn attach(&'static self) -> Option<&'static ThreadHeap> {
        let key = self.key?;
        let mut pool = self.pool.lock();
        let adopted = *pool;
        if !adopted.is_null() {
            // SAFETY: pooled heaps are live; their links change under the pool lock.
            unsafe {
                *pool = (*adopted).pool_next.get();
                (*adopted).pool_next.set(ptr::null_mut());
                (*adopted).abandoned.set(false);
            }
        }
        drop(pool);
        let heap = if adopted.is_null() {
            self.make_heap()?
        } else {
            adopted
        };
        #[cfg(feature = "std")]
        CURRENT.try_with(|c| c.set(heap.cast())).ok()?;
        // SAFETY: the heap is live, and ours from here on.
        unsafe { (*heap).thread.store(thread_pointer(), Ordering::Relaxed) };
        key.set(heap.cast());
        // SAFETY: heaps live for the process; this one is now this thread's.
        Some(unsafe { &*heap })
    }

    /// A fresh heap, in granules of its own from the reserve (never given back, and never
    /// counted as a block), registered for good.
    fn make_heap(&'static self) -> Option<*mut ThreadHeap> {
        let layout = Layout::new::<ThreadHeap>();
        let memory = SlabSource::handle().get(layout)?;
        let heap = memory.as_ptr().cast::<ThreadHeap>();
        let mut slab = Slab::new(SlabSource::handle());
        slab.set_tag(heap.cast());
        let mut big = Slab::new(BigSource::handle());
        big.set_tag(heap.cast());
        // SAFETY: a fresh block that fits a `ThreadHeap`.
        unsafe {
            heap.write(ThreadHeap {
                slab: UnsafeCell::new(slab),
                big: UnsafeCell::new(big),
                registry: self,
                remote: Padded(AtomicPtr::new(ptr::null_mut())),
                thread: AtomicUsize::new(0),
                all_next: ptr::null_mut(),
                pool_next: Cell::new(ptr::null_mut()),
                abandoned: Cell::new(false),
            });
        }
        let mut head = self.all.load(Ordering::Relaxed);
        loop {
            // SAFETY: not yet published: ours alone.
            unsafe { (*heap).all_next = head };
            match self
                .all
                .compare_exchange_weak(head, heap, Ordering::Release, Ordering::Relaxed)
            {
                Ok(_) => return Some(heap),
                Err(now) => head = now,
            }
        }
    }

    /// Hands this thread's heap back to the pool (thread exit).
    fn abandon(&self, heap: &ThreadHeap) {
        #[cfg(feature = "std")]
        let _ = CURRENT.try_with(|c| c.set(EXITED));
        // SeqCst, and the drain under the pool lock: see `ThreadHeap::push_remote`.
        heap.thread.store(0, Ordering::SeqCst);
        let mut pool = self.pool.lock();
        // SAFETY: the heap was this thread's until just now, no other thread takes it
        // before it is in the pool, and other threads put blocks in its slab only once it
        // is pooled, under the pool lock held here.
        unsafe { heap.drain() };
        heap.abandoned.set(true);
        heap.pool_next.set(*pool);
        *pool = ptr::from_ref(heap).cast_mut();
    }

    /// Every registry of the process, the fallback included (for the fork handlers).
    #[cfg(unix)]
    fn for_each(mut f: impl FnMut(&'static Registry)) {
        f(&FALLBACK);
        let mut registry = REGISTRIES.load(Ordering::Acquire);
        // SAFETY: published registries live for the process; `next` is set before.
        while let Some(r) = unsafe { registry.as_ref() } {
            f(r);
            registry = r.next.cast_mut();
        }
    }
}

/// The thread keys' destructor (a pthread key's): hands the exiting thread's heap back to
/// its registry.
#[cfg(unix)]
extern "C" fn thread_exit(heap: *mut core::ffi::c_void) {
    hand_back(heap.cast());
}

/// The thread keys' destructor (a fiber-local slot's callback): hands the exiting thread's
/// heap back to its registry.
#[cfg(windows)]
extern "system" fn thread_exit(heap: *const core::ffi::c_void) {
    hand_back(heap.cast_mut().cast());
}

/// Hands the heap in an exiting thread's key back to its registry. It touches the heap and
/// the registry only, which live for the process.
fn hand_back(heap: *mut ThreadHeap) {
    // SAFETY: the keys' values are heaps (set in `attach`), which live for the process and
    // name their registry, which does too.
    let heap = unsafe { &*heap };
    // SAFETY: as above.
    let registry = unsafe { &*heap.registry };
    // Windows calls a key's destructor once and clears nothing: mark the thread exited in
    // the key, so that its later allocations (without std, found through the key) go to
    // `Large`, as with std, and never reach the heap once it is pooled.
    #[cfg(windows)]
    if let Some(key) = registry.key {
        key.set_at_exit(super::thread_pointer::EXITED);
    }
    registry.abandon(heap);
}

// ---- fork handling -----------------------------------------------------------------------

/// Off Unix there is no `fork`, so no handlers.
#[cfg(not(unix))]
fn register_fork_handlers() {}

/// Registers the fork handlers with `pthread_atfork`, once per process, before the first
/// registry is claimed (so before any of their locks is taken). Other threads claiming a
/// registry meanwhile wait for the registration to finish; the registering thread itself
/// passes (it may allocate, and so come back here, inside `pthread_atfork`). A thread that
/// waits here from inside another library's fork handler would wait for good (the
/// registering thread needs the C library's fork lock): that takes a fork racing with the
/// process's very first claim, which for a global allocator comes with its first
/// allocation, in practice before `main`.
#[cfg(unix)]
fn register_fork_handlers() {
    /// 0: not yet; 1: done; else the thread pointer (at least 2) of the thread registering.
    static STATE: AtomicUsize = AtomicUsize::new(0);
    const DONE: usize = 1;
    if STATE.load(Ordering::Acquire) == DONE {
        return;
    }
    let me = thread_pointer().max(2);
    match STATE.compare_exchange(0, me, Ordering::Acquire, Ordering::Acquire) {
        Ok(_) => {
            // (Miri cannot fork, and has no `pthread_atfork`.)
            #[cfg(not(miri))]
            // SAFETY: three `extern "C"` functions that take and give back the locks below.
            unsafe {
                libc::pthread_atfork(
                    Some(before_fork),
                    Some(after_fork_parent),
                    Some(after_fork_child),
                );
            }
            STATE.store(DONE, Ordering::Release);
        }
        Err(registering) if registering == me => {}
        Err(_) => {
            let mut backoff = Backoff::new();
            while STATE.load(Ordering::Acquire) != DONE {
                backoff.pause();
            }
        }
    }
}

/// Before `fork`: takes every lock of the thread heaps (no new registry, each registry's
/// `Large` lock and pool, then the slab reserves'), so that the child gets none of them
/// held by a thread that will not exist there. A thread that forks while it holds one of
/// them itself (inside [`with_large`](super::ThreadHeaps::with_large)) deadlocks.
#[cfg(unix)]
extern "C" fn before_fork() {
    // Taken by hand: held across the fork, let go of in `after_fork_parent`/`_child`.
    PUSHING.lock_by_hand();
    Registry::for_each(|r| {
        r.large.lock_by_hand();
        r.pool.lock_by_hand();
    });
    // SAFETY: `after_fork_parent` or `after_fork_child` follows on this thread, as
    // `pthread_atfork` promises, before anything else runs in either process.
    unsafe {
        SlabSource::before_fork();
        BigSource::before_fork();
    }
}

/// After `fork`, in the parent: gives back what [`before_fork`] took.
#[cfg(unix)]
extern "C" fn after_fork_parent() {
    // SAFETY: `before_fork` took the reserves' locks on this thread.
    unsafe {
        BigSource::after_fork();
        SlabSource::after_fork();
    }
    Registry::for_each(|r| {
        // Let go of by hand: `before_fork` took them, on this thread, with no guard.
        // SAFETY: as just said; nothing took them since (every other use waits for them).
        unsafe {
            r.pool.unlock_by_hand();
            r.large.unlock_by_hand();
        }
    });
    // SAFETY: as above.
    unsafe { PUSHING.unlock_by_hand() };
}

/// After `fork`, in the child: gives back what [`before_fork`] took, and orphans the
/// heaps of every thread that did not survive the fork. One of them may have been in the
/// middle of a slab operation, and a new thread may get its thread pointer (glibc reuses
/// the control blocks of dead threads), so such a heap is never used again in the child:
/// with `thread` 0 and not `abandoned`, it is neither found through a cache nor adopted;
/// frees of its blocks go to its remote stack and stay there (the child loses that memory,
/// never its consistency). Pooled heaps stay adoptable.
#[cfg(unix)]
extern "C" fn after_fork_child() {
    // SAFETY: `before_fork` took the reserves' locks on this thread, in the parent.
    unsafe {
        BigSource::after_fork();
        SlabSource::after_fork();
    }
    let me = thread_pointer();
    Registry::for_each(|r| {
        let mut heap = r.all.load(Ordering::Acquire);
        // SAFETY: registered heaps live forever; the threads that used the others no
        // longer exist in this process, which has this one thread.
        while let Some(h) = unsafe { heap.as_ref() } {
            let thread = h.thread.load(Ordering::Relaxed);
            if thread != 0 && thread != me {
                h.thread.store(0, Ordering::Relaxed);
            }
            heap = h.all_next;
        }
        // Let go of by hand: `before_fork` took them, in the parent, on the thread this
        // process continues, with no guard.
        // SAFETY: as just said; nothing took them since.
        unsafe {
            r.pool.unlock_by_hand();
            r.large.unlock_by_hand();
        }
    });
    // SAFETY: as above.
    unsafe { PUSHING.unlock_by_hand() };
}
