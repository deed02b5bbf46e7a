//! `SpinLock<T>`: the one lock the allocator paths share, since they can use no OS lock
//! that might allocate. It owns what it protects and hands it out through a
//! [`SpinGuard`], which lets go of the lock when dropped; [`Backoff`] is its wait, which
//! other spinning waits in the crate use too.
//!
//! Two ways out of the guard, each for a documented reason at its call site:
//! [`SpinGuard::unlocked`] lets go of the lock while a closure runs (a zombie region's
//! driver, whose puts must run outside it), and [`SpinLock::lock_by_hand`] /
//! [`SpinLock::unlock_by_hand`] hold a lock across calls (the fork handlers, which take
//! locks before `fork` and give them back after it).

use core::cell::UnsafeCell;
use core::marker::PhantomData;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicBool, Ordering};

/// A spinning wait: spins, and yields to the scheduler every 64 spins (with the `os`
/// feature; without it there is no scheduler to yield to).
pub(crate) struct Backoff {
    spins: u32,
}

impl Backoff {
    pub(crate) const fn new() -> Self {
        Backoff { spins: 0 }
    }

    /// One step of the wait.
    #[inline(always)]
    pub(crate) fn pause(&mut self) {
        self.spins = self.spins.wrapping_add(1);
        if self.spins.is_multiple_of(64) {
            #[cfg(all(feature = "os", any(unix, windows)))]
            crate::os::yield_now();
            #[cfg(all(feature = "std", not(any(unix, windows))))]
            std::thread::yield_now();
        }
        core::hint::spin_loop();
    }
}

/// A spin lock around a `T` (`()` when what it protects lives elsewhere), usable in a
/// `static`. It needs no allocation and no OS object; it does not track its holder, so a
/// thread that takes it twice spins for good (`Locked` adds that check).
pub(crate) struct SpinLock<T = ()> {
    held: AtomicBool,
    data: UnsafeCell<T>,
}

// SAFETY: `data` is reached only through a guard, which exists only while its lock is held
// (or through `&mut self`), so sharing the lock hands `T` from thread to thread one at a
// time, as `Mutex<T>` does: sound when `T` can move between threads.
unsafe impl<T: Send> Sync for SpinLock<T> {}

impl<T> SpinLock<T> {
    pub(crate) const fn new(data: T) -> Self {
        SpinLock {
            held: AtomicBool::new(false),
            data: UnsafeCell::new(data),
        }
    }

    /// Waits until the lock is free, then takes it.
    #[inline]
    pub(crate) fn lock(&self) -> SpinGuard<'_, T> {
        self.acquire();
        SpinGuard::new(self)
    }

    /// Takes the lock if it is free.
    #[inline(always)]
    pub(crate) fn try_lock(&self) -> Option<SpinGuard<'_, T>> {
        self.try_acquire().then(|| SpinGuard::new(self))
    }

    /// Whether some caller holds the lock right now (a snapshot, for `Debug`).
    pub(crate) fn is_held(&self) -> bool {
        self.held.load(Ordering::Relaxed)
    }

    /// What the lock protects, with no locking (`&mut self` proves no one else uses it).
    pub(crate) fn get_mut(&mut self) -> &mut T {
        self.data.get_mut()
    }

    /// Unwraps what the lock protects.
    pub(crate) fn into_inner(self) -> T {
        self.data.into_inner()
    }

    /// Takes the lock with no guard, for a lock that stays held after the call returns
    /// (the fork handlers'); [`unlock_by_hand`](SpinLock::unlock_by_hand) lets go of it.
    /// Every other use takes a guard.
    #[cfg_attr(not(all(feature = "os", unix)), allow(dead_code))] // (the fork handlers need `os` on Unix)
    pub(crate) fn lock_by_hand(&self) {
        self.acquire();
    }

    /// Lets go of a lock taken with [`lock_by_hand`](SpinLock::lock_by_hand).
    ///
    /// # Safety
    ///
    /// The lock was taken with `lock_by_hand` (by this thread, or, after a `fork`, by the
    /// thread of the parent that this process continues) and not let go of since: no guard
    /// of it is alive, so no one holds a reference to the data.
    #[cfg_attr(not(all(feature = "os", unix)), allow(dead_code))]
    pub(crate) unsafe fn unlock_by_hand(&self) {
        self.let_go();
    }

    #[inline(always)]
    fn try_acquire(&self) -> bool {
        self.held
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    #[inline(always)]
    fn acquire(&self) {
        let mut backoff = Backoff::new();
        while self
            .held
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            while self.held.load(Ordering::Relaxed) {
                backoff.pause();
            }
        }
    }

    #[inline(always)]
    fn let_go(&self) {
        self.held.store(false, Ordering::Release);
    }
}

/// The lock held, and the data it protects lent out; lets go of the lock when dropped
/// (also on unwind). It neither panics nor allocates.
pub(crate) struct SpinGuard<'a, T> {
    lock: &'a SpinLock<T>,
    /// The guard stands for exclusive use of `T`: `Send` only when `T` is, `Sync` only
    /// when `T` is.
    _exclusive: PhantomData<&'a mut T>,
}

impl<'a, T> SpinGuard<'a, T> {
    /// A guard for `lock`, which the caller just took.
    #[inline(always)]
    fn new(lock: &'a SpinLock<T>) -> Self {
        SpinGuard {
            lock,
            _exclusive: PhantomData,
        }
    }
}

impl<T> Deref for SpinGuard<'_, T> {
    type Target = T;
    #[inline(always)]
    fn deref(&self) -> &T {
        // SAFETY: the guard exists only while its lock is held, so no `&mut T` but through
        // this guard is alive, and that one is not while this borrow is.
        unsafe { &*self.lock.data.get() }
    }
}

impl<T> DerefMut for SpinGuard<'_, T> {
    #[inline(always)]
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the guard exists only while its lock is held, so this is the only
        // reference to the data until the borrow of the guard ends.
        unsafe { &mut *self.lock.data.get() }
    }
}

impl<T> Drop for SpinGuard<'_, T> {
    #[inline(always)]
    fn drop(&mut self) {
        // The store goes through a reference to the flag alone, not through `let_go(&self)`:
        // once the lock is let go another thread may free the memory it lives in (a zombie
        // region's record), and a `&SpinLock` argument stays protected until its function
        // returns, padding included (Stacked and Tree Borrows; rust-lang/rust#55005).
        self.lock.held.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guard_lets_go_when_dropped() {
        let lock = SpinLock::new(1u32);
        {
            let mut guard = lock.lock();
            *guard += 1;
            assert!(lock.try_lock().is_none(), "held by the guard");
        }
        assert!(!lock.is_held());
        assert_eq!(*lock.lock(), 2);
    }

    #[test]
    fn a_lock_taken_by_hand_stays_held_until_let_go() {
        let mut lock = SpinLock::new(());
        lock.lock_by_hand();
        assert!(lock.is_held());
        // SAFETY: taken by hand just above, on this thread, with no guard alive.
        unsafe { lock.unlock_by_hand() };
        assert!(!lock.is_held());
        assert!(lock.try_lock().is_some(), "let go of");
        lock.get_mut();
        lock.into_inner();
    }

    #[test]
    fn threads_take_turns() {
        const THREADS: u64 = 4;
        const ROUNDS: u64 = if cfg!(miri) { 50 } else { 10_000 };
        let lock = SpinLock::new(0u64);
        std::thread::scope(|s| {
            for _ in 0..THREADS {
                s.spawn(|| {
                    for _ in 0..ROUNDS {
                        // A read and a write apart: another holder between them would lose
                        // an increment.
                        let mut guard = lock.lock();
                        let seen = *guard;
                        core::hint::spin_loop();
                        *guard = seen + 1;
                    }
                });
            }
        });
        assert_eq!(lock.into_inner(), THREADS * ROUNDS);
    }
}
