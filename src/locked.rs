//! `Locked<L>`: a spin lock around a layer stack, shareable across threads and usable as
//! `#[global_allocator]`.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::fmt;
use core::marker::PhantomData;
use core::ops::Deref;
use core::ptr::{self, NonNull};

use allocator_api2::alloc::{AllocError, Allocator};

use crate::alloc_ops::{allocate, deallocate, resize};
use crate::spin::SpinLock;
use crate::{Gauge, Gauges, Layer};

/// A layer stack behind a lock. `Locked<L>` implements [`GlobalAlloc`], so a stack can be
/// the program's allocator, and `&Locked<L>` implements
/// [`Allocator`](allocator_api2::alloc::Allocator).
///
/// The lock is a spin lock that yields to the OS scheduler after a short spin (with `std`):
/// it needs no allocation and no OS object, so it works in a `static` and inside the global
/// allocator. Allocating through the same `Locked` while holding its [`lock`](Locked::lock)
/// guard deadlocks; read figures with [`gauge`](Locked::gauge), which copies them out.
///
/// Shared access gives only shared access to the stack: blocks may be live in any thread,
/// so changing the stack (a `deinit`, a reset) is [`with_mut`](Locked::with_mut), which is
/// `unsafe`; with `&mut Locked` there are no such blocks and [`get_mut`](Locked::get_mut)
/// is safe.
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
pub struct Locked<L> {
    held: SpinLock,
    layer: UnsafeCell<L>,
}

// SAFETY: the stack is reached only through `LockGuard`, which the lock makes exclusive,
// so sharing `Locked` is like sharing a `Mutex<L>`: sound when `L` can move between threads.
unsafe impl<L: Send> Sync for Locked<L> {}

impl<L> Locked<L> {
    /// Wraps a layer stack; usable in a `static`.
    pub const fn new(layer: L) -> Self {
        Locked {
            held: SpinLock::new(),
            layer: UnsafeCell::new(layer),
        }
    }

    /// Waits for the lock and returns a guard that reads the stack (its gauges, its
    /// `Debug` output) while no one else uses it.
    pub fn lock(&self) -> LockGuard<'_, L> {
        self.held.lock();
        LockGuard {
            locked: self,
            _exclusive: PhantomData,
        }
    }

    /// Runs `f` with exclusive access to the stack, under the lock.
    ///
    /// # Safety
    ///
    /// Blocks of this allocator may be live anywhere in the program, so `f` must not end
    /// them: no `deinit`, no reset, no put of a block `f` did not get itself, and no moving
    /// the stack out (`mem::replace`). `f` must not allocate through this `Locked` either
    /// (that deadlocks), and must not panic when the `Locked` is the global allocator.
    pub unsafe fn with_mut<R>(&self, f: impl FnOnce(&mut L) -> R) -> R {
        let guard = self.lock();
        // SAFETY: the guard holds the lock, so this is the only access to the stack until it
        // drops; the caller promises not to end other owners' blocks.
        f(unsafe { &mut *guard.locked.layer.get() })
    }

    /// Releases the lock without a guard: the other half of a guard that was forgotten
    /// (`mem::forget`) to keep the lock held across `fork`.
    ///
    /// # Safety
    ///
    /// The lock is held, by a guard that was forgotten on this thread, and nothing uses
    /// that guard's access afterwards.
    #[cfg(feature = "os")]
    pub(crate) unsafe fn force_unlock(&self) {
        self.held.unlock();
    }

    /// Exclusive access under the lock, for this module's allocation paths.
    #[inline(always)]
    fn locked_stack<R>(&self, f: impl FnOnce(&mut L) -> R) -> R {
        let guard = self.lock();
        // SAFETY: the guard holds the lock; `f` is one of this module's operations, which
        // keep the `Layer` contract and end no block but the one they are given.
        f(unsafe { &mut *guard.locked.layer.get() })
    }

    /// The stack, with no locking: `&mut self` proves no one else uses it.
    pub fn get_mut(&mut self) -> &mut L {
        self.layer.get_mut()
    }

    /// Unwraps the stack.
    pub fn into_inner(self) -> L {
        self.layer.into_inner()
    }

    /// The stack's gauges, copied out under the lock.
    pub fn gauge(&self) -> Gauges
    where
        L: Gauge,
    {
        self.lock().gauge()
    }
}

/// Shared access to a [`Locked`] stack while holding its lock; unlocks when dropped (also
/// on unwind).
pub struct LockGuard<'a, L> {
    locked: &'a Locked<L>,
    /// The guard stands for exclusive use of `L`: `Sync` only when `L` is.
    _exclusive: PhantomData<&'a mut L>,
}

impl<L> Deref for LockGuard<'_, L> {
    type Target = L;
    fn deref(&self) -> &L {
        // SAFETY: the guard exists only while the lock is held by it.
        unsafe { &*self.locked.layer.get() }
    }
}

impl<L> Drop for LockGuard<'_, L> {
    fn drop(&mut self) {
        self.locked.held.unlock();
    }
}

// SAFETY: every call runs under the lock, so the stack sees one caller at a time; blocks
// come from a layer that keeps the `Layer` contract; zero-size layouts never reach
// `GlobalAlloc` (its callers must not pass them).
unsafe impl<L: Layer + Send> GlobalAlloc for Locked<L> {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.locked_stack(|stack| stack.get(layout))
            .map_or(ptr::null_mut(), NonNull::as_ptr)
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        self.locked_stack(|stack| allocate(stack, layout, true))
            .map_or(ptr::null_mut(), |b| b.cast().as_ptr())
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `GlobalAlloc::dealloc`'s duties: `ptr` is a live block of this allocator
        // (so not null) allocated with `layout`.
        self.locked_stack(|stack| unsafe { stack.put(NonNull::new_unchecked(ptr), layout) })
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `GlobalAlloc::realloc`'s duties: `ptr` is live with `layout`, and
        // `new_size` is non-zero and valid with `layout.align()`.
        unsafe {
            let new = Layout::from_size_align_unchecked(new_size, layout.align());
            self.locked_stack(|stack| {
                resize(stack, NonNull::new_unchecked(ptr), layout, new, false)
            })
            .map_or(ptr::null_mut(), |b| b.cast().as_ptr())
        }
    }
}

// SAFETY: as for `GlobalAlloc`, with zero-size requests answered by `alloc_ops` without
// reaching the stack.
unsafe impl<L: Layer + Send> Allocator for &Locked<L> {
    fn allocate(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        self.locked_stack(|stack| allocate(stack, layout, false))
    }

    fn allocate_zeroed(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        self.locked_stack(|stack| allocate(stack, layout, true))
    }

    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        // SAFETY: the caller's `Allocator` duties are `deallocate`'s.
        self.locked_stack(|stack| unsafe { deallocate(stack, ptr, layout) })
    }

    unsafe fn grow(
        &self,
        ptr: NonNull<u8>,
        old: Layout,
        new: Layout,
    ) -> Result<NonNull<[u8]>, AllocError> {
        // SAFETY: `Allocator::grow`'s duties include `new.size() >= old.size()`.
        self.locked_stack(|stack| unsafe { resize(stack, ptr, old, new, false) })
    }

    unsafe fn grow_zeroed(
        &self,
        ptr: NonNull<u8>,
        old: Layout,
        new: Layout,
    ) -> Result<NonNull<[u8]>, AllocError> {
        // SAFETY: as for `grow`.
        self.locked_stack(|stack| unsafe { resize(stack, ptr, old, new, true) })
    }

    unsafe fn shrink(
        &self,
        ptr: NonNull<u8>,
        old: Layout,
        new: Layout,
    ) -> Result<NonNull<[u8]>, AllocError> {
        // SAFETY: `Allocator::shrink`'s duties include `new.size() <= old.size()`.
        self.locked_stack(|stack| unsafe { resize(stack, ptr, old, new, false) })
    }
}

/// Shows only whether the lock is held: formatting the stack under the lock could allocate
/// (into a `String`) through this very `Locked` when it is the global allocator, and
/// deadlock. Format `&*locked.lock()` yourself where that cannot happen.
impl<L> fmt::Debug for Locked<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Locked")
            .field("held", &self.held.is_held())
            .finish_non_exhaustive()
    }
}
