//! The lock inside a blob heap: shared by every handle, in this process or another, and
//! robust, so that a holder that dies does not wedge the others.
//!
//! On Linux it is a process-shared, robust `pthread_mutex_t` kept in the blob: when its
//! holder dies, the kernel hands it to the next locker with `EOWNERDEAD`, and we report
//! that so the heap can ask for recovery. Elsewhere, and under Miri (which has neither
//! process-shared nor robust mutexes), it is a spin lock on an atomic word in the blob,
//! which cannot see a dead holder. That word holds the holder's token, so that a thread
//! that locks twice gets an error, and it lies in the blob's header at a fixed place, which
//! is why it is not the crate's `SpinLock`; it waits as that lock does (`spin::Backoff`).

use core::sync::atomic::AtomicU32;

#[cfg(all(target_os = "linux", not(miri)))]
use core::cell::UnsafeCell;
#[cfg(not(all(target_os = "linux", not(miri))))]
use core::sync::atomic::Ordering;

#[cfg(not(all(target_os = "linux", not(miri))))]
use crate::spin::Backoff;

use super::BlobError;

/// How the lock was taken.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Taken {
    /// From a holder that unlocked it.
    Clean,
    /// From a holder that died holding it: what it was doing may be half done.
    HolderDied,
}

/// The lock's bytes in the blob header. Zero bytes are not a valid lock: `init` must run
/// once, when the heap is created.
#[repr(C, align(64))]
pub(super) struct BlobLock {
    #[cfg(all(target_os = "linux", not(miri)))]
    mutex: UnsafeCell<libc::pthread_mutex_t>,
    /// The spin lock's word (unused with the pthread mutex, but kept so that the header
    /// has one layout whichever lock a build uses).
    word: AtomicU32,
}

#[cfg(all(target_os = "linux", not(miri)))]
impl BlobLock {
    /// Makes the bytes at `this` an unlocked lock.
    ///
    /// # Safety
    ///
    /// `this` is valid for writes, and no handle uses the lock while it is initialised.
    pub(super) unsafe fn init(this: *mut BlobLock) -> Result<(), BlobError> {
        // SAFETY: the attribute object lives on this stack frame and is destroyed below;
        // the mutex bytes belong to `this`, which the caller lets us write.
        unsafe {
            let mut attr = core::mem::MaybeUninit::<libc::pthread_mutexattr_t>::uninit();
            check(libc::pthread_mutexattr_init(attr.as_mut_ptr()))?;
            let attr = attr.as_mut_ptr();
            let result = check(libc::pthread_mutexattr_setpshared(
                attr,
                libc::PTHREAD_PROCESS_SHARED,
            ))
            .and_then(|()| {
                // Error-checking: a thread that locks twice gets EDEADLK, not a hang.
                check(libc::pthread_mutexattr_settype(
                    attr,
                    libc::PTHREAD_MUTEX_ERRORCHECK,
                ))
            })
            .and_then(|()| {
                check(libc::pthread_mutexattr_setrobust(
                    attr,
                    libc::PTHREAD_MUTEX_ROBUST,
                ))
            })
            .and_then(|()| {
                check(libc::pthread_mutex_init(
                    UnsafeCell::raw_get(&raw const (*this).mutex),
                    attr,
                ))
            });
            libc::pthread_mutexattr_destroy(attr);
            result
        }
    }

    /// Takes the lock, waiting as long as it takes.
    pub(super) fn lock(&self) -> Result<Taken, BlobError> {
        // SAFETY: `init` made this a valid process-shared mutex (the heap checks its header
        // before any handle locks).
        match unsafe { libc::pthread_mutex_lock(self.mutex.get()) } {
            0 => Ok(Taken::Clean),
            libc::EOWNERDEAD => {
                // We hold it now; mark it usable again, and let the heap ask for recovery.
                // SAFETY: we are the holder.
                check(unsafe { libc::pthread_mutex_consistent(self.mutex.get()) })?;
                Ok(Taken::HolderDied)
            }
            libc::EDEADLK => Err(BlobError::AlreadyLocked),
            error => Err(BlobError::Lock { errno: error }),
        }
    }

    /// Releases the lock.
    ///
    /// # Safety
    ///
    /// This thread holds it.
    pub(super) unsafe fn unlock(&self) {
        // SAFETY: the caller holds the lock. Unlocking a mutex we hold cannot fail.
        unsafe { libc::pthread_mutex_unlock(self.mutex.get()) };
    }
}

#[cfg(all(target_os = "linux", not(miri)))]
fn check(result: libc::c_int) -> Result<(), BlobError> {
    match result {
        0 => Ok(()),
        errno => Err(BlobError::Lock { errno }),
    }
}

/// A nonzero number naming this thread among live ones in this process (the spin lock
/// cannot tell processes apart).
#[cfg(not(all(target_os = "linux", not(miri))))]
fn thread_token() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    std::thread_local! {
        static TOKEN: u32 = NEXT.fetch_add(1, Ordering::Relaxed).max(1);
    }
    TOKEN.with(|token| *token)
}

#[cfg(not(all(target_os = "linux", not(miri))))]
impl BlobLock {
    /// Makes the bytes at `this` an unlocked lock.
    ///
    /// # Safety
    ///
    /// `this` is valid for writes, and no handle uses the lock while it is initialised.
    pub(super) unsafe fn init(this: *mut BlobLock) -> Result<(), BlobError> {
        // SAFETY: as the caller promises.
        unsafe { (&raw mut (*this).word).write(AtomicU32::new(0)) };
        Ok(())
    }

    /// Takes the lock, waiting as the crate's spin lock does while another thread holds it.
    pub(super) fn lock(&self) -> Result<Taken, BlobError> {
        let me = thread_token();
        let mut backoff = Backoff::new();
        loop {
            match self
                .word
                .compare_exchange_weak(0, me, Ordering::Acquire, Ordering::Relaxed)
            {
                Ok(_) => return Ok(Taken::Clean),
                Err(holder) if holder == me => return Err(BlobError::AlreadyLocked),
                Err(_) => backoff.pause(),
            }
        }
    }

    /// Releases the lock.
    ///
    /// # Safety
    ///
    /// This thread holds it.
    pub(super) unsafe fn unlock(&self) {
        self.word.store(0, Ordering::Release);
    }
}
