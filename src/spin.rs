//! `SpinLock`: the raw lock the allocator paths share, since they can use no OS lock that
//! might allocate: spins, and yields to the scheduler every 64 spins (with `std`).

use core::sync::atomic::{AtomicBool, Ordering};

/// A lock with no data and no guard: callers pair [`lock`](SpinLock::lock) with
/// [`unlock`](SpinLock::unlock) around what it protects.
pub(crate) struct SpinLock {
    held: AtomicBool,
}

impl SpinLock {
    pub(crate) const fn new() -> Self {
        SpinLock {
            held: AtomicBool::new(false),
        }
    }

    /// Waits until the lock is free, then takes it.
    #[inline]
    pub(crate) fn lock(&self) {
        let mut spins = 0u32;
        while self
            .held
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            while self.held.load(Ordering::Relaxed) {
                spins = spins.wrapping_add(1);
                if spins.is_multiple_of(64) {
                    // SAFETY: `sched_yield` takes nothing and only gives up the CPU.
                    #[cfg(feature = "os")]
                    unsafe {
                        libc::sched_yield()
                    };
                }
                core::hint::spin_loop();
            }
        }
    }

    /// Takes the lock if it is free; returns whether it did.
    #[inline(always)]
    pub(crate) fn try_lock(&self) -> bool {
        self.held
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    /// Whether some caller holds the lock right now (a snapshot, for `Debug`).
    pub(crate) fn is_held(&self) -> bool {
        self.held.load(Ordering::Relaxed)
    }

    /// Releases the lock, which the caller holds.
    #[inline]
    pub(crate) fn unlock(&self) {
        self.held.store(false, Ordering::Release);
    }
}
