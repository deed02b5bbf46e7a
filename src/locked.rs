//! `Locked<L>`: a spin lock around a layer stack, shareable across threads and usable as
//! `#[global_allocator]`; frees through `GlobalAlloc` are parked and made at the next call.
//! Entry point: [`Locked`] and its `GlobalAlloc` impl.

use core::alloc::{GlobalAlloc, Layout};
use core::any::type_name;
use core::fmt;
use core::ops::Deref;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicUsize, Ordering};

use crate::abort::{abort_with, call, no_unwind};
use crate::alloc_ops::allocate;
use crate::layer::into_field;
use crate::spin::{SpinGuard, SpinLock};
use crate::{Gauge, Gauges, Layer};

/// Frees that `GlobalAlloc::dealloc` and `realloc` park before they are put.
const PARKED: usize = 16;

/// A layer stack behind a lock. `Locked<L>` implements [`GlobalAlloc`], so a stack can be
/// the program's allocator, and `&Locked<L>` implements
/// [`Allocator`](allocator_api2::alloc::Allocator).
///
/// The lock is a spin lock that yields to the OS scheduler after a short spin (with `std`):
/// it needs no allocation and no OS object, so it works in a `static` and inside the global
/// allocator. Allocating through the same `Locked` while holding its [`lock`](Locked::lock)
/// guard on the same thread aborts the process with one line (with the `os` feature; it
/// deadlocks without); read figures with [`gauge`](Locked::gauge), which copies them out.
///
/// Shared access gives only shared access to the stack: blocks may be live in any thread,
/// so changing the stack (a `deinit`, a reset) is [`with_mut`](Locked::with_mut), which is
/// `unsafe`; with `&mut Locked` there are no such blocks and [`get_mut`](Locked::get_mut)
/// is safe.
///
/// # Frees wait for the next call
///
/// A `Box` passed by value to a function (`drop(boxed)` included) is protected until that
/// function returns: the compiler may assume that its memory stays allocated, unchanged by
/// anyone else, for the whole call, and the free of the `Box` happens inside that call. So
/// the allocator must not release or write the block's memory during the free itself,
/// which a stack that unmaps pages on `put` ([`Mmap`](crate::layers::Mmap)) or writes a
/// free-list link into the block would do. [`GlobalAlloc::dealloc`] therefore puts nothing
/// at once: it parks the block in a small array inside the `Locked` (16 entries, under the
/// same lock, with no allocation), and the parked blocks are put at the next allocation or
/// reallocation through the `Locked`, when the array is full (before the new block is
/// parked), and before the stack is shown or handed out ([`lock`](Locked::lock),
/// [`with_mut`](Locked::with_mut), [`get_mut`](Locked::get_mut),
/// [`into_inner`](Locked::into_inner), [`gauge`](Locked::gauge), and when the `Locked` is
/// dropped). A block that `realloc` moves is parked the same way. The
/// [`Allocator`](allocator_api2::alloc::Allocator) impl puts at once: the `Box` of
/// `allocator_api2` is not protected.
///
/// This covers a `Box` freed by the function it was passed to, as `drop` does. It does not
/// cover a function that takes a `Box` by value, frees it, and then allocates through the
/// same `Locked` before it returns: the `Box` is still protected there, and that allocation
/// puts the parked free, so a `put` that releases the memory or writes into it (a free-list
/// link) touches protected memory, which Miri reports. No allocator can tell when such a
/// function returns.
///
/// # Panics in layers
///
/// A panic must not unwind out of a global allocator. Every call that the `GlobalAlloc` impl
/// makes into the stack is guarded: a layer that panics there (breaking the
/// [`Layer`] contract) aborts the process with one line naming it.
///
/// ```
/// use stratalloc::{Gauge, Locked, layers::{Chunk, Mmap, Stats}};
///
/// #[global_allocator]
/// static GLOBAL: Locked<Stats<Chunk<Mmap, 65536>>> =
///     Locked::new(Stats::new(Chunk::new(Mmap::new())));
///
/// let numbers: Vec<u32> = (0..1000).collect();
/// assert_eq!(numbers.iter().sum::<u32>(), 499_500);
/// assert!(GLOBAL.gauge().gets > 0);
/// ```
///
/// The guard only reads: ending every block of a shared allocator from safe code does not
/// compile.
///
/// ```compile_fail
/// use stratalloc::{Layer, Locked, layers::{Chunk, Mmap}};
///
/// let locked = Locked::new(Chunk::<Mmap, 4096>::new(Mmap::new()));
/// locked.lock().deinit(); // error: cannot borrow as mutable
/// ```
pub struct Locked<L: Layer> {
    /// The stack and its parked frees. `Locked` is `Sync` and `Send` when `L` is `Send`,
    /// as a `Mutex<L>` is.
    held: SpinLock<Guarded<L>>,
    /// The thread holding `held` (see [`this_thread`]), 0 when none: a call that finds the
    /// lock held by its own thread has re-entered the allocator and would spin forever.
    holder: AtomicUsize,
}

// ---- parked frees ------------------------------------------------------------------------

/// What the lock of a [`Locked`] protects.
struct Guarded<L> {
    /// Blocks freed through `GlobalAlloc` and not put yet.
    parked: Parked,
    layer: L,
}

/// The frees waiting to be put, with the layouts they were freed with.
struct Parked {
    blocks: [(*mut u8, Layout); PARKED],
    len: usize,
}

// SAFETY: the parked pointers are blocks of the stack beside them that no one else uses;
// they move with it, as the stack's own pointers do, and they are followed only by
// `put_all`, with the stack borrowed mutably.
unsafe impl Send for Parked {}

// SAFETY: shared access to `Parked` reads the pointers' values only (nothing follows them
// through `&Parked`).
unsafe impl Sync for Parked {}

impl Parked {
    const EMPTY: Parked = Parked {
        blocks: [(ptr::null_mut(), Layout::new::<u8>()); PARKED],
        len: 0,
    };

    /// Puts every parked block to `stack`, guarded: a layer that panics aborts.
    ///
    /// # Safety
    ///
    /// Every parked block is a block of `stack` that its owner freed, with the layout it
    /// fits, and not put since.
    #[inline]
    unsafe fn put_all<L: Layer>(&mut self, stack: &mut L) {
        let parked = core::mem::take(&mut self.len);
        for &(block, layout) in &self.blocks[..parked] {
            // SAFETY: the caller's duty; a parked block is never null (it came from `get`).
            no_unwind::<L, { call::PUT }, _>(|| unsafe {
                stack.put(NonNull::new_unchecked(block), layout)
            });
        }
    }

    /// Parks `block`, after putting every parked block when there is no room.
    ///
    /// # Safety
    ///
    /// As for [`put_all`](Parked::put_all), and `block` is a block of `stack` that its
    /// owner frees now, with a layout that fits it.
    #[inline]
    unsafe fn park<L: Layer>(&mut self, stack: &mut L, block: NonNull<u8>, layout: Layout) {
        if self.len == PARKED {
            // SAFETY: the caller's duty.
            unsafe { self.put_all(stack) };
        }
        if let Some(slot) = self.blocks.get_mut(self.len) {
            *slot = (block.as_ptr(), layout);
            self.len += 1;
        }
    }
}

// ---- locking and access to the stack -----------------------------------------------------

/// A number naming the calling thread among the live ones, never 0; 0 without the `os`
/// feature on Unix and Windows or `std` elsewhere, where re-entry goes undetected.
#[inline(always)]
fn this_thread() -> usize {
    #[cfg(all(feature = "os", any(unix, windows)))]
    {
        crate::os::thread_id()
    }
    #[cfg(all(feature = "std", not(any(unix, windows))))]
    {
        // The address of a thread-local byte: distinct among live threads. No destructor
        // and a const initialiser, so reading it never allocates.
        std::thread_local! {
            static MARK: u8 = const { 0 };
        }
        MARK.with(|mark| core::ptr::from_ref(mark).addr())
    }
    #[cfg(not(any(
        all(feature = "os", any(unix, windows)),
        all(feature = "std", not(any(unix, windows)))
    )))]
    {
        0
    }
}

impl<L: Layer> Locked<L> {
    /// Wraps a layer stack; usable in a `static`.
    pub const fn new(layer: L) -> Self {
        Locked {
            held: SpinLock::new(Guarded {
                parked: Parked::EMPTY,
                layer,
            }),
            holder: AtomicUsize::new(0),
        }
    }

    /// Takes the lock, or aborts when this thread holds it already (a layer or a panic
    /// that allocated inside the allocator, or an allocation made while a guard is held),
    /// which would otherwise spin forever.
    #[inline(always)]
    fn acquire(&self) -> LockGuard<'_, L> {
        let me = this_thread();
        let held = match self.held.try_lock() {
            Some(held) => held,
            None => {
                if me != 0 && self.holder.load(Ordering::Relaxed) == me {
                    reentered(type_name::<L>());
                }
                self.held.lock()
            }
        };
        self.holder.store(me, Ordering::Relaxed);
        LockGuard { held, locked: self }
    }

    /// Runs `f` on the stack and the parked frees, under the lock.
    #[inline(always)]
    fn with_parked<R>(&self, f: impl FnOnce(&mut L, &mut Parked) -> R) -> R {
        let mut guard = self.acquire();
        let Guarded { parked, layer } = &mut *guard.held;
        f(layer, parked)
    }

    /// Waits for the lock, puts every parked free, and returns a guard that reads the stack
    /// (its gauges, its `Debug` output) while no one else uses it.
    pub fn lock(&self) -> LockGuard<'_, L> {
        let mut guard = self.acquire();
        let Guarded { parked, layer } = &mut *guard.held;
        // SAFETY: parked blocks are frees of this stack's blocks.
        unsafe { parked.put_all(layer) };
        guard
    }

    /// Runs `f` with exclusive access to the stack, under the lock, after every parked free
    /// was put.
    ///
    /// # Safety
    ///
    /// Blocks of this allocator may be live anywhere in the program, so `f` must not end
    /// them: no `deinit`, no reset, no put of a block `f` did not get itself, and no moving
    /// the stack out (`mem::replace`). `f` must not allocate through this `Locked` either
    /// (that aborts), and must not panic when the `Locked` is the global allocator.
    pub unsafe fn with_mut<R>(&self, f: impl FnOnce(&mut L) -> R) -> R {
        self.with_parked(|stack, parked| {
            // SAFETY: parked blocks are frees of this stack's blocks.
            unsafe { parked.put_all(stack) };
            f(stack)
        })
    }

    /// Exclusive access under the lock, after the parked frees, for the `Allocator` paths.
    #[inline(always)]
    fn locked_stack<R>(&self, f: impl FnOnce(&mut L) -> R) -> R {
        self.with_parked(|stack, parked| {
            // SAFETY: parked blocks are frees of this stack's blocks.
            unsafe { parked.put_all(stack) };
            f(stack)
        })
    }

    /// The stack, with no locking (`&mut self` proves no one else uses it), after every
    /// parked free was put.
    pub fn get_mut(&mut self) -> &mut L {
        let Guarded { parked, layer } = self.held.get_mut();
        // SAFETY: parked blocks are frees of this stack's blocks.
        unsafe { parked.put_all(layer) };
        layer
    }

    /// Unwraps the stack, after every parked free was put.
    pub fn into_inner(self) -> L {
        // SAFETY: `held` is a field of the `Locked`; the other (`holder`) holds nothing.
        let guarded = unsafe { into_field(self, |this| _ = this.get_mut(), |this| &this.held) };
        // (The parked array is empty: `get_mut` put every parked free.)
        guarded.into_inner().layer
    }

    /// The stack's gauges, copied out under the lock (with every parked free put).
    pub fn gauge(&self) -> Gauges
    where
        L: Gauge,
    {
        self.lock().gauge()
    }
}

/// Aborts: a call into a `Locked` found its lock held by the calling thread.
#[cold]
#[inline(never)]
fn reentered(layer: &str) -> ! {
    abort_with(format_args!(
        "`Locked<{layer}>` was entered again by the thread that holds its lock (a layer \
         that panicked or allocated inside the allocator, or an allocation while a lock \
         guard is held)"
    ))
}

/// Puts the parked frees when the `Locked` goes, before the stack is dropped.
impl<L: Layer> Drop for Locked<L> {
    fn drop(&mut self) {
        self.get_mut();
    }
}

// ---- the guard ---------------------------------------------------------------------------

/// Shared access to a [`Locked`] stack while holding its lock; unlocks when dropped (also
/// on unwind).
///
/// It stands for exclusive use of `L`: `Send` when `L` is, `Sync` only when `L` is.
pub struct LockGuard<'a, L: Layer> {
    /// Lets go of the lock when dropped, after the guard's own `drop` cleared `holder`.
    held: SpinGuard<'a, Guarded<L>>,
    locked: &'a Locked<L>,
}

impl<L: Layer> Deref for LockGuard<'_, L> {
    type Target = L;
    fn deref(&self) -> &L {
        &self.held.layer
    }
}

impl<L: Layer> Drop for LockGuard<'_, L> {
    fn drop(&mut self) {
        self.locked.holder.store(0, Ordering::Relaxed);
    }
}

// ---- the GlobalAlloc and Allocator impls -------------------------------------------------

// SAFETY: every call runs under the lock, so the stack sees one caller at a time; blocks
// come from a layer that keeps the `Layer` contract; zero-size layouts never reach
// `GlobalAlloc` (its callers must not pass them). A freed block is parked and put only at a
// later call (see "Frees wait for the next call"), every parked block being a block of the
// stack freed by its owner with a fitting layout. Every layer call is guarded by
// `no_unwind`, so no panic unwinds out of these methods.
unsafe impl<L: Layer + Send> GlobalAlloc for Locked<L> {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.with_parked(|stack, parked| {
            // SAFETY: parked blocks are frees of this stack's blocks.
            unsafe { parked.put_all(stack) };
            no_unwind::<L, { call::GET }, _>(|| stack.get(layout))
        })
        .map_or(ptr::null_mut(), NonNull::as_ptr)
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        self.with_parked(|stack, parked| {
            // SAFETY: parked blocks are frees of this stack's blocks.
            unsafe { parked.put_all(stack) };
            no_unwind::<L, { call::GET }, _>(|| allocate(stack, layout, true))
        })
        .map_or(ptr::null_mut(), |b| b.cast().as_ptr())
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `GlobalAlloc::dealloc`'s duties: `ptr` is a live block of this allocator
        // (so not null) allocated with `layout`, freed now by its owner.
        self.with_parked(|stack, parked| unsafe {
            parked.park(stack, NonNull::new_unchecked(ptr), layout)
        })
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `GlobalAlloc::realloc`'s duties: `ptr` is live with `layout` (so not
        // null), and `new_size` is non-zero and valid with `layout.align()`.
        let (block, new) = unsafe {
            (
                NonNull::new_unchecked(ptr),
                Layout::from_size_align_unchecked(new_size, layout.align()),
            )
        };
        self.with_parked(|stack, parked| {
            // SAFETY: parked blocks are frees of this stack's blocks.
            unsafe { parked.put_all(stack) };
            let in_place = if new_size >= layout.size() {
                // SAFETY: `block` is live with `layout`; the alignment is kept and the size
                // does not shrink.
                no_unwind::<L, { call::GROW }, _>(|| unsafe { stack.grow(block, layout, new) })
            } else {
                // SAFETY: as above, and the size does not grow.
                no_unwind::<L, { call::SHRINK }, _>(|| unsafe { stack.shrink(block, layout, new) })
            };
            if in_place {
                return ptr;
            }
            let Some(moved) = no_unwind::<L, { call::GET }, _>(|| stack.get(new)) else {
                return ptr::null_mut();
            };
            // SAFETY: both blocks are live and disjoint, the smaller size in bounds of
            // both; the old block is freed now, by its owner, with its layout.
            unsafe {
                ptr::copy_nonoverlapping(ptr, moved.as_ptr(), layout.size().min(new_size));
                parked.park(stack, block, layout);
            }
            moved.as_ptr()
        })
    }
}

// SAFETY: as for `GlobalAlloc`, with zero-size requests answered by `alloc_ops` without
// reaching the stack. Frees are put at once (the parked ones first).
crate::alloc_ops::adapter_allocator!(Locked, [Layer + Send], locked_stack);

/// Shows only whether the lock is held: formatting the stack under the lock could allocate
/// (into a `String`) through this very `Locked` when it is the global allocator. Format
/// `&*locked.lock()` yourself where that cannot happen.
impl<L: Layer> fmt::Debug for Locked<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Locked")
            .field("held", &self.held.is_held())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::{Buffer, Check, Stats};
    use core::mem::MaybeUninit;

    const BLOCK: Layout = Layout::new::<[u64; 4]>();

    fn memory() -> alloc::boxed::Box<[MaybeUninit<u8>]> {
        alloc::boxed::Box::new_uninit_slice(16 << 10)
    }

    /// A layer that must stay on its thread, and one that may move but not be shared.
    struct Pinned<T>(core::marker::PhantomData<T>);

    // SAFETY: it hands out no block.
    unsafe impl<T> Layer for Pinned<T> {
        fn get(&mut self, _: Layout) -> Option<NonNull<u8>> {
            None
        }
        unsafe fn put(&mut self, _: NonNull<u8>, _: Layout) {}
        fn init() -> Self {
            Pinned(core::marker::PhantomData)
        }
        fn deinit(&mut self) {}
    }

    type OnItsThread = Pinned<*mut u8>;
    type Unshared = Pinned<core::cell::Cell<u8>>;

    // `Locked<L>` is shared and sent as a `Mutex<L>` is: when `L` may move between threads.
    // Its guard reads `L`, so it is `Sync` only when `L` is too.
    static_assertions::assert_impl_all!(Locked<Unshared>: Send, Sync);
    static_assertions::assert_not_impl_any!(Locked<OnItsThread>: Send, Sync);
    static_assertions::assert_impl_all!(LockGuard<'static, Unshared>: Send);
    static_assertions::assert_not_impl_any!(LockGuard<'static, Unshared>: Sync);
    static_assertions::assert_not_impl_any!(LockGuard<'static, OnItsThread>: Send, Sync);

    /// The figures of the stack as they are, parked frees not put.
    fn puts_made(locked: &Locked<Stats<Buffer<'_>>>) -> u64 {
        locked.acquire().gauge().puts
    }

    fn parked(locked: &Locked<Stats<Buffer<'_>>>) -> usize {
        locked.acquire().held.parked.len
    }

    #[test]
    fn frees_wait_for_the_next_call_or_a_full_array() {
        let mut memory = memory();
        let locked = Locked::new(Stats::new(Buffer::new(&mut memory)));
        // SAFETY: the `GlobalAlloc` duties: non-zero sizes, each block freed once with
        // its layout.
        unsafe {
            let blocks: alloc::vec::Vec<*mut u8> =
                (0..PARKED + 4).map(|_| locked.alloc(BLOCK)).collect();
            assert!(blocks.iter().all(|b| !b.is_null()));
            for &block in &blocks[..PARKED] {
                locked.dealloc(block, BLOCK);
            }
            assert_eq!((puts_made(&locked), parked(&locked)), (0, PARKED));
            locked.dealloc(blocks[PARKED], BLOCK);
            assert_eq!(
                (puts_made(&locked), parked(&locked)),
                (PARKED as u64, 1),
                "a full array is put before the next free is parked"
            );
            let again = locked.alloc(BLOCK);
            assert_eq!(
                (puts_made(&locked), parked(&locked)),
                (PARKED as u64 + 1, 0)
            );
            let moved = locked.realloc(again, BLOCK, 4096);
            assert_ne!(moved, again, "`Buffer` does not grow in place");
            assert_eq!(parked(&locked), 1, "the moved block waits too");
            locked.dealloc(moved, Layout::from_size_align_unchecked(4096, 8));
            for &block in &blocks[PARKED + 1..] {
                locked.dealloc(block, BLOCK);
            }
        }
        let figures = locked.gauge();
        assert_eq!(parked(&locked), 0, "the lock puts every parked free");
        assert_eq!((figures.live, figures.puts), (0, PARKED as u64 + 6));
    }

    #[test]
    fn the_stack_is_handed_out_with_every_free_made() {
        let mut memory = memory();
        let mut locked = Locked::new(Stats::new(Buffer::new(&mut memory)));
        // SAFETY: as above.
        unsafe { locked.dealloc(locked.alloc(BLOCK), BLOCK) };
        assert_eq!(locked.get_mut().gauge().live, 0);
        // SAFETY: as above.
        unsafe { locked.dealloc(locked.alloc(BLOCK), BLOCK) };
        // SAFETY: the closure ends no block.
        assert_eq!(unsafe { locked.with_mut(|stack| stack.gauge().live) }, 0);
        // SAFETY: as above.
        unsafe { locked.dealloc(locked.alloc(BLOCK), BLOCK) };
        assert_eq!(locked.into_inner().gauge().live, 0);
    }

    /// `Check` panics at deinit when blocks are live: a `Locked` dropped with frees parked
    /// makes them first.
    #[test]
    fn dropping_the_lock_makes_the_parked_frees() {
        let mut memory = memory();
        let locked = Locked::new(Check::new(Buffer::new(&mut memory)));
        // SAFETY: as above.
        unsafe { locked.dealloc(locked.alloc(BLOCK), BLOCK) };
        drop(locked);
    }
}
