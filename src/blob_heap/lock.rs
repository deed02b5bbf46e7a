//! The lock inside a blob heap: shared by every handle, in this process or another, and
//! robust, so that a holder that dies does not wedge the others.
//!
//! On Linux it is a futex word in the blob holding the holder's thread id, a "waiters" bit
//! and a "holder died" bit (the layout of a robust futex), and nothing else: no pointer, so
//! that bytes written into the blob by anyone (another process, a stray write, a Python
//! program writing into the buffer the heap lives in) can make the lock wait or fail, never
//! make this process write somewhere. A free lock is taken with one compare-and-swap; a
//! busy one is waited for on the futex in slices of [`SLICE`]. After each slice the locker
//! reads the holder from the word and, when no such thread exists any more and the word
//! has not changed meanwhile, marks the lock "holder died": the next locker takes it and
//! the heap asks for recovery. That is how a handle that died holding the lock is found
//! (the kernel is not told of the lock, so it takes one slice), and a word that names a
//! thread which never held it too. A word naming a thread that exists is waited for up to
//! the handle's patience, and then reported; so is anything else that keeps the lock busy.
//!
//! Elsewhere, and under Miri, it is a spin lock on the same word, which cannot see a dead
//! holder. That word holds the holder's token, so that a thread that locks twice gets an
//! error, and it lies in the blob's header at a fixed place, which is why it is not the
//! crate's `SpinLock`; it waits as that lock does (`spin::Backoff`).
//!
//! The liveness test asks the kernel whether the thread id exists in this process's PID
//! namespace: handles of one heap must live in processes of one PID namespace (which
//! `attach` checks against the namespace the heap records).
//! A holder that died after its thread id went to a new thread (Linux reuses ids only
//! after it has gone through the others) is taken for alive, and waited for up to the
//! patience.

use core::sync::atomic::{AtomicU32, Ordering};
use core::time::Duration;
use std::time::Instant;

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

/// The lock's bytes in the blob header: one word, and the rest of a cache line. Zero is
/// an unlocked lock.
#[repr(C, align(64))]
pub(super) struct BlobLock {
    /// Linux: the holder's thread id, with [`WAITERS`] and [`OWNER_DIED`] (the layout of a
    /// robust futex word). Elsewhere: the spin lock's holder token.
    word: AtomicU32,
}

/// Set in the word while a locker may be sleeping on it: the unlocker then wakes one.
#[cfg(all(target_os = "linux", not(miri)))]
const WAITERS: u32 = 0x8000_0000;
/// Set (with no thread id) in the word of a lock whose holder was found dead: the next
/// locker takes it and the heap asks for recovery.
#[cfg(all(target_os = "linux", not(miri)))]
const OWNER_DIED: u32 = 0x4000_0000;
/// The thread id part of the word.
#[cfg(all(target_os = "linux", not(miri)))]
const THREAD: u32 = 0x3FFF_FFFF;

#[cfg(all(target_os = "linux", not(miri)))]
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

    /// Takes the lock, waiting up to `patience` for a holder that exists; a holder that no
    /// longer exists is found after one [`SLICE`] (see the module's notes).
    pub(super) fn lock(&self, patience: Duration) -> Result<Taken, BlobError> {
        let me = this_thread();
        // A free lock, the usual case, is taken with one compare-and-swap.
        if self
            .word
            .compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            return Ok(Taken::Clean);
        }
        let start = Instant::now();
        let mut orphaned = None;
        loop {
            let word = self.word.load(Ordering::Acquire);
            // A locker that has waited takes the lock with the waiters bit set: others
            // may still sleep on it, and its unlock must wake one.
            let mine = me | WAITERS;
            if word == 0 || word == WAITERS {
                if self.swap_in(word, mine) {
                    return Ok(Taken::Clean);
                }
                continue;
            }
            if word & OWNER_DIED != 0 {
                if self.swap_in(word, mine) {
                    return Ok(
                        orphaned.map_or(Taken::HolderDied, |thread| Taken::Orphaned { thread })
                    );
                }
                continue;
            }
            if word & THREAD == me {
                return Err(BlobError::AlreadyLocked);
            }
            if word & WAITERS == 0 && !self.swap_in(word, word | WAITERS) {
                continue;
            }
            let slice_start = Instant::now();
            super::wait_for_change(&self.word, word | WAITERS, SLICE);
            if slice_start.elapsed() < SLICE && self.word.load(Ordering::Relaxed) != word | WAITERS
            {
                // Woken, or the word changed: try again at once.
                if start.elapsed() < patience {
                    continue;
                }
            }
            let holder = match self.holder() {
                Holder::Gone { word, thread } => {
                    if self.mark_holder_died(word) {
                        orphaned = Some(thread);
                        continue;
                    }
                    (thread != 0).then_some(thread)
                }
                Holder::Thread(thread) => thread,
                Holder::Nobody => None,
            };
            // Whatever the word says (a live holder, or bytes that keep changing), no wait
            // outlasts the patience.
            let waited = start.elapsed();
            if waited >= patience {
                return Err(BlobError::LockUnavailable { holder, waited });
            }
        }
    }

    /// Replaces the word `from` by `to`; whether it was still `from`.
    fn swap_in(&self, from: u32, to: u32) -> bool {
        self.word
            .compare_exchange(from, to, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    /// What the lock word says of the holder.
    pub(super) fn holder(&self) -> Holder {
        let word = self.word.load(Ordering::Acquire);
        if word & !WAITERS == 0 || word & OWNER_DIED != 0 {
            // Free, or marked for the next locker to take.
            return Holder::Nobody;
        }
        let thread = word & THREAD;
        if thread_exists(thread) {
            return Holder::Thread(Some(thread));
        }
        // Gone, unless the word changed meanwhile (the holder unlocked, or another took
        // it): then look again next time.
        if self.word.load(Ordering::Acquire) == word {
            Holder::Gone { word, thread }
        } else {
            Holder::Thread(None)
        }
    }

    /// Marks the lock "holder died" if its word still is `word` (keeping the waiters bit),
    /// and wakes a waiter. Returns whether this call changed it.
    fn mark_holder_died(&self, word: u32) -> bool {
        let died = (word & WAITERS) | OWNER_DIED;
        let marked = self
            .word
            .compare_exchange(word, died, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if marked {
            wake_one(&self.word);
        }
        marked
    }

    /// Marks the lock "holder died" whoever holds it, so that the next locker takes it and
    /// the heap asks for recovery.
    ///
    /// # Safety
    ///
    /// No thread holds the lock (whatever its word says), and none takes it meanwhile
    /// but through this lock's own calls.
    pub(super) unsafe fn break_lock(&self) -> Result<(), BlobError> {
        loop {
            let word = self.word.load(Ordering::Acquire);
            if word & !WAITERS == 0 || self.mark_holder_died(word) {
                return Ok(());
            }
        }
    }

    /// Whether the word names this thread as the holder. A guard can outlive its holding:
    /// in a child forked while its parent held the lock (the word names the parent's
    /// thread), or when another process took the lock as orphaned (see the module's notes).
    pub(super) fn held_here(&self) -> bool {
        let word = self.word.load(Ordering::Acquire);
        word & OWNER_DIED == 0 && word & THREAD == this_thread()
    }

    /// Releases the lock, and wakes a waiter if one may sleep; leaves it as it is when the
    /// word does not name this thread (see [`held_here`](Self::held_here)), which must not
    /// let go of another holder's lock.
    ///
    /// # Safety
    ///
    /// This thread took the lock.
    pub(super) unsafe fn unlock(&self) {
        let me = this_thread();
        let mut word = self.word.load(Ordering::Relaxed);
        while word & OWNER_DIED == 0 && word & THREAD == me {
            // (A compare-and-swap: a waiter may set the waiters bit meanwhile.)
            match self
                .word
                .compare_exchange_weak(word, 0, Ordering::Release, Ordering::Relaxed)
            {
                Ok(_) => {
                    if word & WAITERS != 0 {
                        wake_one(&self.word);
                    }
                    return;
                }
                Err(now) => word = now,
            }
        }
    }
}

/// Wakes one waiter on `word` (no private flag: waiters may be in other processes).
#[cfg(all(target_os = "linux", not(miri)))]
fn wake_one(word: &AtomicU32) {
    // SAFETY: a futex wake on a word of shared memory; no memory is touched.
    unsafe { libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, 1) };
}

#[cfg(all(target_os = "linux", not(miri)))]
std::thread_local! {
    /// This thread's id once asked (0 before): `gettid` is a system call, and a lock takes
    /// it every time.
    static THIS_THREAD: core::cell::Cell<u32> = const { core::cell::Cell::new(0) };
}

/// This thread's id, as the kernel names it (never 0, and within [`THREAD`]: Linux thread
/// ids are below 2^22).
#[cfg(all(target_os = "linux", not(miri)))]
fn this_thread() -> u32 {
    let known = THIS_THREAD.try_with(core::cell::Cell::get).unwrap_or(0);
    if known != 0 {
        return known;
    }
    // A forked child starts with a copy of the forking thread's cache, naming a thread of
    // the parent: the handler forgets it in the child.
    static FORGET_IN_CHILDREN: std::sync::Once = std::sync::Once::new();
    FORGET_IN_CHILDREN.call_once(|| {
        extern "C" fn forget() {
            let _ = THIS_THREAD.try_with(|id| id.set(0));
        }
        // SAFETY: registers a child handler that only writes a thread-local cell.
        unsafe { libc::pthread_atfork(None, None, Some(forget)) };
    });
    // SAFETY: gettid has no preconditions.
    let id = (unsafe { libc::syscall(libc::SYS_gettid) } as u32) & THREAD;
    let _ = THIS_THREAD.try_with(|cell| cell.set(id));
    id
}

/// Whether a thread with this id exists (in this PID namespace). `kill` with signal 0
/// checks without sending anything; on Linux it accepts any thread's id, and `EPERM`
/// means that the thread exists in a process we may not signal.
#[cfg(all(target_os = "linux", not(miri)))]
fn thread_exists(thread: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(thread) else {
        return false;
    };
    if pid == 0 {
        return false;
    }
    // SAFETY: signal 0 sends nothing; `pid` is positive.
    unsafe { libc::kill(pid, 0) == 0 || *libc::__errno_location() != libc::ESRCH }
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

    /// Whether the word holds this thread's token. (The tokens are per process: a child
    /// forked while its parent held the lock holds the same token, which this lock cannot
    /// tell apart.)
    pub(super) fn held_here(&self) -> bool {
        self.word.load(Ordering::Acquire) == thread_token()
    }

    /// Releases the lock, when the word holds this thread's token.
    ///
    /// # Safety
    ///
    /// This thread took the lock.
    pub(super) unsafe fn unlock(&self) {
        let me = thread_token();
        let _ = self
            .word
            .compare_exchange(me, 0, Ordering::Release, Ordering::Relaxed);
    }
}
