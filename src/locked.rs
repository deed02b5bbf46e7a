//! `Locked<L>`: a spin lock around a layer stack, shareable across threads and usable as
//! `#[global_allocator]`.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::fmt;
use core::ops::{Deref, DerefMut};
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicBool, Ordering};

use allocator_api2::alloc::{AllocError, Allocator};

use crate::alloc_ops::{allocate, deallocate, resize};
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
pub struct Locked<L> {
    held: AtomicBool,
    layer: UnsafeCell<L>,
}

// SAFETY: the stack is reached only through `LockGuard`, which the lock makes exclusive,
// so sharing `Locked` is like sharing a `Mutex<L>`: sound when `L` can move between threads.
unsafe impl<L: Send> Sync for Locked<L> {}

impl<L> Locked<L> {
    /// Wraps a layer stack; usable in a `static`.
    pub const fn new(layer: L) -> Self {
        Locked {
            held: AtomicBool::new(false),
            layer: UnsafeCell::new(layer),
        }
    }

    /// Waits for the lock and returns a guard that gives exclusive access to the stack.
    pub fn lock(&self) -> LockGuard<'_, L> {
        let mut spins = 0u32;
        while self
            .held
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            while self.held.load(Ordering::Relaxed) {
                spins = spins.wrapping_add(1);
                if spins.is_multiple_of(64) {
                    #[cfg(feature = "std")]
                    std::thread::yield_now();
                }
                core::hint::spin_loop();
            }
        }
        LockGuard { locked: self }
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

/// Exclusive access to a [`Locked`] stack; unlocks when dropped (also on unwind).
pub struct LockGuard<'a, L> {
    locked: &'a Locked<L>,
}

impl<L> Deref for LockGuard<'_, L> {
    type Target = L;
    fn deref(&self) -> &L {
        // SAFETY: the guard exists only while the lock is held by it.
        unsafe { &*self.locked.layer.get() }
    }
}

impl<L> DerefMut for LockGuard<'_, L> {
    fn deref_mut(&mut self) -> &mut L {
        // SAFETY: the guard exists only while the lock is held by it, and `&mut self`
        // makes this the only borrow through the guard.
        unsafe { &mut *self.locked.layer.get() }
    }
}

impl<L> Drop for LockGuard<'_, L> {
    fn drop(&mut self) {
        self.locked.held.store(false, Ordering::Release);
    }
}

// SAFETY: every call runs under the lock, so the stack sees one caller at a time; blocks
// come from a layer that keeps the `Layer` contract; zero-size layouts never reach
// `GlobalAlloc` (its callers must not pass them).
unsafe impl<L: Layer + Send> GlobalAlloc for Locked<L> {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.lock()
            .get(layout)
            .map_or(ptr::null_mut(), NonNull::as_ptr)
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        allocate(&mut *self.lock(), layout, true).map_or(ptr::null_mut(), |b| b.cast().as_ptr())
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `GlobalAlloc::dealloc`'s duties: `ptr` is a live block of this allocator
        // (so not null) allocated with `layout`.
        unsafe { self.lock().put(NonNull::new_unchecked(ptr), layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `GlobalAlloc::realloc`'s duties: `ptr` is live with `layout`, and
        // `new_size` is non-zero and valid with `layout.align()`.
        unsafe {
            let new = Layout::from_size_align_unchecked(new_size, layout.align());
            resize(
                &mut *self.lock(),
                NonNull::new_unchecked(ptr),
                layout,
                new,
                false,
            )
            .map_or(ptr::null_mut(), |b| b.cast().as_ptr())
        }
    }
}

// SAFETY: as for `GlobalAlloc`, with zero-size requests answered by `alloc_ops` without
// reaching the stack.
unsafe impl<L: Layer + Send> Allocator for &Locked<L> {
    fn allocate(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        allocate(&mut *self.lock(), layout, false)
    }

    fn allocate_zeroed(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        allocate(&mut *self.lock(), layout, true)
    }

    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        // SAFETY: the caller's `Allocator` duties are `deallocate`'s.
        unsafe { deallocate(&mut *self.lock(), ptr, layout) }
    }

    unsafe fn grow(
        &self,
        ptr: NonNull<u8>,
        old: Layout,
        new: Layout,
    ) -> Result<NonNull<[u8]>, AllocError> {
        // SAFETY: `Allocator::grow`'s duties include `new.size() >= old.size()`.
        unsafe { resize(&mut *self.lock(), ptr, old, new, false) }
    }

    unsafe fn grow_zeroed(
        &self,
        ptr: NonNull<u8>,
        old: Layout,
        new: Layout,
    ) -> Result<NonNull<[u8]>, AllocError> {
        // SAFETY: as for `grow`.
        unsafe { resize(&mut *self.lock(), ptr, old, new, true) }
    }

    unsafe fn shrink(
        &self,
        ptr: NonNull<u8>,
        old: Layout,
        new: Layout,
    ) -> Result<NonNull<[u8]>, AllocError> {
        // SAFETY: `Allocator::shrink`'s duties include `new.size() <= old.size()`.
        unsafe { resize(&mut *self.lock(), ptr, old, new, false) }
    }
}

/// Shows only whether the lock is held: formatting the stack under the lock could allocate
/// (into a `String`) through this very `Locked` when it is the global allocator, and
/// deadlock. Format `&*locked.lock()` yourself where that cannot happen.
impl<L> fmt::Debug for Locked<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Locked")
            .field("held", &self.held.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}
