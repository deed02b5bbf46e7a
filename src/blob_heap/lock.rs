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
//!
//! Nobody waits for ever. A locker waits in slices of [`SLICE`]; after each, it reads the
//! holder from the lock word (with the GNU C library, whose robust mutexes keep the
//! holder's thread id there) and, when no such thread exists any more and the word has not
//! changed meanwhile, marks the lock "holder died" itself, as the kernel does for a holder
//! that dies with the mutex on its robust list: the next locker then takes it with
//! `EOWNERDEAD`. A word that names a thread which never held it (a stray write, a process
//! that died before the kernel could see the mutex) is found that way. A word naming a
//! thread that exists is waited for up to the handle's patience, and then reported.
//!
//! The liveness test asks the kernel whether the thread id exists in this process's PID
//! namespace: handles of one heap must live in processes of one PID namespace.

use core::sync::atomic::{AtomicU32, Ordering};
use core::time::Duration;
use std::time::Instant;

#[cfg(all(target_os = "linux", not(miri)))]
use core::cell::UnsafeCell;

#[cfg(not(all(target_os = "linux", not(miri))))]
use crate::spin::Backoff;

use super::BlobError;

/// How the lock was taken.
#[cfg_attr(not(all(target_os = "linux", not(miri))), allow(dead_code))]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Taken {
    /// From a holder that unlocked it.
    Clean,
    /// From a holder that died holding it: what it was doing may be half done.
    HolderDied,
    /// From a lock word that named thread `thread`, which no longer existed and had not
    /// released it (see the module's notes): marked "holder died" by this locker.
    Orphaned {
        /// The thread id the word named.
        thread: u32,
    },
}

/// How long a locker waits before it looks at the holder again.
#[cfg(all(target_os = "linux", not(miri)))]
const SLICE: Duration = Duration::from_millis(20);

/// What the lock word says of its holder.
#[cfg_attr(not(all(target_os = "linux", not(miri))), allow(dead_code))]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Holder {
    /// Nobody holds the lock.
    Nobody,
    /// A thread that exists holds it, as far as the word can tell (`None`: the word cannot
    /// name threads across processes).
    Thread(Option<u32>),
    /// The word names a thread that no longer exists (`0`: no thread at all), and held
    /// that value across the check.
    Gone {
        /// The word as read.
        word: u32,
        /// The thread id it names.
        thread: u32,
    },
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

    /// Takes the lock, waiting up to `patience` for a holder that exists; a holder that no
    /// longer exists is found after one [`SLICE`] (see the module's notes).
    pub(super) fn lock(&self, patience: Duration) -> Result<Taken, BlobError> {
        // A free lock, the usual case, is taken without reading a clock.
        // SAFETY: `init` made this a valid process-shared mutex (the heap checks its header
        // before any handle locks).
        let first = unsafe { libc::pthread_mutex_trylock(self.mutex.get()) };
        if first != libc::EBUSY {
            return self.taken(first, None);
        }
        let start = Instant::now();
        let mut orphaned = None;
        loop {
            // SAFETY: as above; the deadline is a valid time.
            let result = unsafe { libc::pthread_mutex_timedlock(self.mutex.get(), &slice_end()) };
            if result != libc::ETIMEDOUT {
                return self.taken(result, orphaned);
            }
            let holder = match self.holder() {
                Holder::Gone { word, thread } => {
                    if self.mark_holder_died(word) {
                        orphaned = Some(thread);
                    }
                    (thread != 0).then_some(thread)
                }
                Holder::Thread(thread) => thread,
                Holder::Nobody => None,
            };
            // Whatever the word says (a live holder, or bytes that keep the lock busy
            // without naming anyone), no wait outlasts the patience.
            let waited = start.elapsed();
            if waited >= patience {
                return Err(BlobError::LockUnavailable { holder, waited });
            }
        }
    }

    /// What a lock call's `result` (other than a timeout or `EBUSY`) means; `orphaned`
    /// names the thread this handle found gone while waiting, if any.
    fn taken(&self, result: i32, orphaned: Option<u32>) -> Result<Taken, BlobError> {
        match result {
            0 => Ok(Taken::Clean),
            libc::EOWNERDEAD => {
                // We hold it now; mark it usable again, and let the heap ask for recovery.
                // SAFETY: we are the holder.
                check(unsafe { libc::pthread_mutex_consistent(self.mutex.get()) })?;
                Ok(orphaned.map_or(Taken::HolderDied, |thread| Taken::Orphaned { thread }))
            }
            libc::EDEADLK => Err(BlobError::AlreadyLocked),
            error => Err(BlobError::Lock { errno: error }),
        }
    }

    /// The lock word: the first `int` of glibc's mutex, which keeps the holder's thread id
    /// (`FUTEX_TID_MASK`) and the waiter and owner-died bits there for robust mutexes.
    #[cfg(target_env = "gnu")]
    fn word(&self) -> &AtomicU32 {
        // SAFETY: the mutex is at least an `int` long and aligned for one, lives in the
        // blob (shared memory, changed by the C library with atomic operations), and is
        // read and compared-and-swapped here only with atomic operations.
        unsafe { &*self.mutex.get().cast::<AtomicU32>() }
    }

    /// What the lock word says of the holder.
    pub(super) fn holder(&self) -> Holder {
        #[cfg(target_env = "gnu")]
        {
            let word = self.word().load(Ordering::Acquire);
            if word == 0 || word & libc::FUTEX_OWNER_DIED != 0 {
                // Free, or marked for the next locker to take with EOWNERDEAD.
                return Holder::Nobody;
            }
            let thread = word & libc::FUTEX_TID_MASK;
            if thread != 0 && thread_exists(thread) {
                return Holder::Thread(Some(thread));
            }
            // Gone, unless the word changed meanwhile (the holder unlocked, or another
            // took it): then look again next time.
            if self.word().load(Ordering::Acquire) == word {
                Holder::Gone { word, thread }
            } else {
                Holder::Thread(None)
            }
        }
        #[cfg(not(target_env = "gnu"))]
        {
            Holder::Thread(None)
        }
    }

    /// Marks the lock "holder died" if its word still is `word` (keeping the waiters bit),
    /// as the kernel does for a holder that dies with it on its robust list, and wakes a
    /// waiter. Returns whether this call changed it.
    fn mark_holder_died(&self, word: u32) -> bool {
        #[cfg(target_env = "gnu")]
        {
            let died = (word & libc::FUTEX_WAITERS) | libc::FUTEX_OWNER_DIED;
            let marked = self
                .word()
                .compare_exchange(word, died, Ordering::AcqRel, Ordering::Acquire)
                .is_ok();
            if marked {
                // SAFETY: a futex wake of one waiter on a word in shared memory (no private
                // flag: waiters may be in other processes).
                unsafe {
                    libc::syscall(libc::SYS_futex, self.word().as_ptr(), libc::FUTEX_WAKE, 1)
                };
            }
            marked
        }
        #[cfg(not(target_env = "gnu"))]
        {
            let _ = word;
            false
        }
    }

    /// Marks the lock "holder died" whoever holds it, so that the next locker takes it and
    /// the heap asks for recovery.
    ///
    /// # Safety
    ///
    /// No thread holds the lock (whatever its word says), and none takes it meanwhile
    /// but through this lock's own calls.
    pub(super) unsafe fn break_lock(&self) -> Result<(), BlobError> {
        #[cfg(target_env = "gnu")]
        {
            loop {
                let word = self.word().load(Ordering::Acquire);
                if word == 0 || self.mark_holder_died(word) {
                    return Ok(());
                }
            }
        }
        #[cfg(not(target_env = "gnu"))]
        {
            Err(BlobError::Lock {
                errno: libc::ENOTSUP,
            })
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

/// The end of the next wait slice, on the clock `pthread_mutex_timedlock` reads.
#[cfg(all(target_os = "linux", not(miri)))]
fn slice_end() -> libc::timespec {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec to write; CLOCK_REALTIME always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &raw mut now) };
    let nanos = now.tv_nsec + SLICE.subsec_nanos() as libc::c_long;
    libc::timespec {
        tv_sec: now.tv_sec + (nanos / 1_000_000_000) as libc::time_t,
        tv_nsec: nanos % 1_000_000_000,
    }
}

/// Whether a thread with this id exists (in this PID namespace). `kill` with signal 0
/// checks without sending anything; on Linux it accepts any thread's id, and `EPERM`
/// means that the thread exists in a process we may not signal.
#[cfg(all(target_os = "linux", not(miri), target_env = "gnu"))]
fn thread_exists(thread: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(thread) else {
        return false;
    };
    // SAFETY: signal 0 sends nothing; `pid` is positive (a thread id, never 0 here).
    unsafe { libc::kill(pid, 0) == 0 || *libc::__errno_location() != libc::ESRCH }
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

    /// Takes the lock, waiting as the crate's spin lock does while another thread holds it,
    /// up to `patience`.
    pub(super) fn lock(&self, patience: Duration) -> Result<Taken, BlobError> {
        let me = thread_token();
        let start = Instant::now();
        let mut backoff = Backoff::new();
        loop {
            match self
                .word
                .compare_exchange_weak(0, me, Ordering::Acquire, Ordering::Relaxed)
            {
                Ok(_) => return Ok(Taken::Clean),
                Err(holder) if holder == me => return Err(BlobError::AlreadyLocked),
                Err(_) => {
                    let waited = start.elapsed();
                    if waited >= patience {
                        return Err(BlobError::LockUnavailable {
                            holder: None,
                            waited,
                        });
                    }
                    backoff.pause();
                }
            }
        }
    }

    /// What the lock word says of the holder (the word names threads of this process only,
    /// by a token of its own).
    pub(super) fn holder(&self) -> Holder {
        match self.word.load(Ordering::Acquire) {
            0 => Holder::Nobody,
            _ => Holder::Thread(None),
        }
    }

    /// Unlocks the lock whoever holds it; the spin lock cannot mark a holder dead, so the
    /// heap records the need for recovery itself.
    ///
    /// # Safety
    ///
    /// As for the Linux lock's `break_lock`.
    pub(super) unsafe fn break_lock(&self) -> Result<(), BlobError> {
        self.word.store(0, Ordering::Release);
        Ok(())
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
