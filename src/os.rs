//! The operating system calls of the layers that go to the OS: maps of fresh pages, address
//! space reserved and opened piece by piece, pages handed back, the monotonic clock, the
//! thread and process ids, and a thread key whose destructor runs at thread exit. One
//! function per call, for Unix (libc) and for Windows (windows-sys).
//!
//! Where the two differ in what a caller can rely on, the function says so: a map is given
//! back whole on Windows (`VirtualFree` releases a reservation at once), and pages handed
//! back with [`discard`] read as zeros on Linux but as anything on Windows.

use core::ptr::{self, NonNull};

#[cfg(windows)]
use windows_sys::Win32::System::{Memory, SystemInformation, Threading};

/// `len` bytes of fresh, zero-filled, readable and writable pages at an address of the OS's
/// choosing (page-aligned; on Windows aligned to 64 KiB), or `None` when the OS refuses.
pub(crate) fn map(len: usize) -> Option<NonNull<u8>> {
    #[cfg(unix)]
    {
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
        let prot = libc::PROT_READ | libc::PROT_WRITE;
        // SAFETY: an anonymous map at an address the kernel picks touches no existing
        // memory.
        let base = unsafe { libc::mmap(ptr::null_mut(), len, prot, flags, -1, 0) };
        if base == libc::MAP_FAILED {
            return None;
        }
        NonNull::new(base.cast())
    }
    #[cfg(windows)]
    {
        // SAFETY: a fresh reservation at an address the OS picks, committed at once;
        // committed pages read as zeros.
        let base = unsafe {
            Memory::VirtualAlloc(
                ptr::null(),
                len,
                Memory::MEM_RESERVE | Memory::MEM_COMMIT,
                Memory::PAGE_READWRITE,
            )
        };
        NonNull::new(base.cast())
    }
}

/// `len` bytes of address space that nothing may touch yet, with no memory behind it (on
/// Linux `MAP_NORESERVE`: not counted against the overcommit limit), to be opened with
/// [`commit`]; `None` when the OS refuses. Under Miri, which has neither, the range is
/// mapped readable and writable whole.
pub(crate) fn reserve(len: usize) -> Option<NonNull<u8>> {
    if cfg!(miri) {
        return map(len);
    }
    #[cfg(unix)]
    {
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
        // SAFETY: an anonymous map at an address the kernel picks touches no existing
        // memory.
        let base = unsafe { libc::mmap(ptr::null_mut(), len, libc::PROT_NONE, flags, -1, 0) };
        if base == libc::MAP_FAILED {
            return None;
        }
        NonNull::new(base.cast())
    }
    #[cfg(windows)]
    {
        // SAFETY: a fresh reservation at an address the OS picks.
        let base = unsafe {
            Memory::VirtualAlloc(ptr::null(), len, Memory::MEM_RESERVE, Memory::PAGE_NOACCESS)
        };
        NonNull::new(base.cast())
    }
}

/// Makes `[start, start + len)` of a [`reserve`]d range readable and writable (its pages
/// read as zeros until written); false when the OS refuses.
///
/// # Safety
///
/// The range lies inside one reservation of the caller's, page-aligned, and no live memory
/// of anyone else's is in it.
pub(crate) unsafe fn commit(start: *mut u8, len: usize) -> bool {
    #[cfg(unix)]
    {
        // SAFETY: the caller's promise: the pages are in our own reservation.
        (unsafe { libc::mprotect(start.cast(), len, libc::PROT_READ | libc::PROT_WRITE) }) == 0
    }
    #[cfg(windows)]
    {
        // SAFETY: as above.
        let done = unsafe {
            Memory::VirtualAlloc(
                start.cast(),
                len,
                Memory::MEM_COMMIT,
                Memory::PAGE_READWRITE,
            )
        };
        !done.is_null()
    }
}

/// Hands the memory behind `[start, start + len)` back to the OS while keeping the range
/// readable and writable: the next touch gets a fresh page. On Linux (`MADV_DONTNEED`) it
/// reads as zeros; on Windows (`MEM_RESET`) its bytes are undefined, and the pages stay
/// counted in the commit charge. Failure is ignored: the pages keep their bytes. A no-op
/// under Miri.
///
/// # Safety
///
/// The range is page-aligned, inside a map or committed reservation of the caller's, and
/// nothing relies on its bytes.
pub(crate) unsafe fn discard(start: *mut u8, len: usize) {
    if cfg!(miri) {
        return;
    }
    #[cfg(unix)]
    // SAFETY: the caller's promise: our pages, whose bytes nobody needs.
    unsafe {
        libc::madvise(start.cast(), len, libc::MADV_DONTNEED);
    }
    #[cfg(windows)]
    // SAFETY: as above.
    unsafe {
        Memory::VirtualAlloc(start.cast(), len, Memory::MEM_RESET, Memory::PAGE_READWRITE);
    }
}

/// Gives back a whole map from [`map`] or range from [`reserve`] of `len` bytes.
///
/// # Safety
///
/// `base` is what `map` or `reserve` returned for `len` bytes, and nothing uses the range
/// again.
pub(crate) unsafe fn unmap(base: *mut u8, len: usize) {
    #[cfg(unix)]
    // SAFETY: the caller's promise: our own map, unused from here on.
    unsafe {
        libc::munmap(base.cast(), len);
    }
    #[cfg(windows)]
    {
        let _ = len;
        // SAFETY: as above; `VirtualFree` releases the whole reservation made at `base`.
        unsafe { Memory::VirtualFree(base.cast(), 0, Memory::MEM_RELEASE) };
    }
}

/// The OS page size (at least 4096).
pub(crate) fn page_size() -> usize {
    #[cfg(unix)]
    // SAFETY: `sysconf` with a valid name only reads system configuration.
    let answer = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
    #[cfg(windows)]
    let answer = {
        // SAFETY: `GetSystemInfo` fills the struct we pass (all-zero is a valid value).
        let mut info = unsafe { core::mem::zeroed::<SystemInformation::SYSTEM_INFO>() };
        // SAFETY: as above.
        unsafe { SystemInformation::GetSystemInfo(&mut info) };
        info.dwPageSize as usize
    };
    answer.max(4096)
}

/// The monotonic clock in milliseconds: on Linux the coarse clock (the vDSO's, no system
/// call), on Windows the tick count (updated every 10-16 ms); 0 if it cannot be read, which
/// at worst makes a periodic task run once early.
pub(crate) fn now_ms() -> u64 {
    #[cfg(unix)]
    {
        let mut now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        #[cfg(all(any(target_os = "linux", target_os = "android"), not(miri)))]
        let clock = libc::CLOCK_MONOTONIC_COARSE;
        #[cfg(not(all(any(target_os = "linux", target_os = "android"), not(miri))))]
        let clock = libc::CLOCK_MONOTONIC;
        // SAFETY: `clock_gettime` writes the time into the struct we pass.
        if unsafe { libc::clock_gettime(clock, &mut now) } != 0 {
            return 0;
        }
        (now.tv_sec as u64)
            .wrapping_mul(1000)
            .wrapping_add(now.tv_nsec as u64 / 1_000_000)
    }
    #[cfg(windows)]
    // SAFETY: `GetTickCount64` takes nothing and only reads the clock.
    unsafe {
        SystemInformation::GetTickCount64()
    }
}

/// The process's limit on address space (`RLIMIT_AS`), `usize::MAX` when there is none
/// (always on Windows, which has no such limit per process) or it cannot be read.
pub(crate) fn address_space_limit() -> usize {
    if cfg!(miri) {
        return usize::MAX;
    }
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `getrlimit` writes the limit into the struct we pass.
        if unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut limit) } != 0
            || limit.rlim_cur == libc::RLIM_INFINITY
        {
            return usize::MAX;
        }
        usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX)
    }
    #[cfg(windows)]
    {
        usize::MAX
    }
}

/// A number naming the calling thread among the live ones, never 0.
#[inline(always)]
pub(crate) fn thread_id() -> usize {
    #[cfg(unix)]
    {
        // SAFETY: `pthread_self` takes nothing and cannot fail. (Plus one: Miri numbers
        // the main thread 0.)
        (unsafe { libc::pthread_self() } as usize).wrapping_add(1)
    }
    #[cfg(windows)]
    {
        // SAFETY: `GetCurrentThreadId` takes nothing and cannot fail.
        (unsafe { Threading::GetCurrentThreadId() } as usize).wrapping_add(1)
    }
}

/// The calling process's id.
pub(crate) fn process_id() -> u32 {
    #[cfg(unix)]
    {
        // SAFETY: `getpid` only reads the process id.
        (unsafe { libc::getpid() }) as u32
    }
    #[cfg(windows)]
    {
        // SAFETY: `GetCurrentProcessId` takes nothing and cannot fail.
        unsafe { Threading::GetCurrentProcessId() }
    }
}

/// Gives up the rest of the calling thread's time slice.
#[inline]
pub(crate) fn yield_now() {
    #[cfg(unix)]
    // SAFETY: `sched_yield` takes nothing and only gives up the CPU.
    unsafe {
        libc::sched_yield();
    }
    #[cfg(windows)]
    // SAFETY: `SwitchToThread` takes nothing and only gives up the CPU.
    unsafe {
        Threading::SwitchToThread();
    }
}

// ---- thread keys -------------------------------------------------------------------------

/// What a [`ThreadKey`] calls at thread exit with the exiting thread's value, when it is
/// not null: `extern "C" fn(*mut c_void)` on Unix (a pthread key's destructor),
/// `extern "system" fn(*const c_void)` on Windows (a fiber-local slot's callback).
#[cfg(unix)]
pub(crate) type OnThreadExit = unsafe extern "C" fn(*mut core::ffi::c_void);
#[cfg(windows)]
pub(crate) type OnThreadExit = unsafe extern "system" fn(*const core::ffi::c_void);

/// A per-thread word with a destructor that runs when a thread exits with a non-null value
/// in it: a pthread key; on Windows a thread-local slot (`TlsAlloc`) for the value beside a
/// fiber-local one (`FlsAlloc`) whose callback runs at thread exit. Keys are never deleted.
///
/// At exit, glibc clears a thread's value before calling the destructor, and calls it again
/// (up to four rounds) if the value was set anew. Windows calls each fiber-local callback
/// once, and its fiber-local values may read as null during the callbacks; the thread-local
/// value holds, so a destructor that marks the thread exited there with
/// [`ThreadKey::set_at_exit`] is seen by the thread's later allocations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ThreadKey {
    #[cfg(unix)]
    key: libc::pthread_key_t,
    #[cfg(windows)]
    tls: u32,
    #[cfg(windows)]
    fls: u32,
}

impl ThreadKey {
    /// A new key whose destructor is `on_exit`; `None` when the OS has no key left.
    pub(crate) fn new(on_exit: OnThreadExit) -> Option<ThreadKey> {
        #[cfg(unix)]
        {
            let mut key: libc::pthread_key_t = 0;
            // SAFETY: `key` is a valid place for the key; the destructor has the ABI
            // pthread calls it with.
            if unsafe { libc::pthread_key_create(&mut key, Some(on_exit)) } != 0 {
                return None;
            }
            Some(ThreadKey { key })
        }
        #[cfg(windows)]
        {
            // SAFETY: `TlsAlloc` takes nothing; the callback has the ABI Windows calls it
            // with. (A fiber-local slot left over when the thread-local one fails is lost.)
            let (tls, fls) = unsafe { (Threading::TlsAlloc(), Threading::FlsAlloc(Some(on_exit))) };
            (tls != Threading::TLS_OUT_OF_INDEXES && fls != Threading::FLS_OUT_OF_INDEXES)
                .then_some(ThreadKey { tls, fls })
        }
    }

    /// The calling thread's value (null until it sets one).
    #[cfg_attr(feature = "std", allow(dead_code))] // (with std, a thread-local is read)
    #[inline]
    pub(crate) fn get(self) -> *mut u8 {
        #[cfg(unix)]
        // SAFETY: a key we made; reading a key's value has no other effect.
        unsafe {
            libc::pthread_getspecific(self.key).cast()
        }
        #[cfg(windows)]
        // SAFETY: as above.
        unsafe {
            Threading::TlsGetValue(self.tls).cast()
        }
    }

    /// Sets the calling thread's value, which its destructor gets at thread exit.
    pub(crate) fn set(self, value: *mut u8) {
        #[cfg(unix)]
        // SAFETY: a key we made; the value is only handed back to its destructor.
        unsafe {
            libc::pthread_setspecific(self.key, value.cast());
        }
        #[cfg(windows)]
        // SAFETY: as above.
        unsafe {
            Threading::TlsSetValue(self.tls, value.cast());
            Threading::FlsSetValue(self.fls, value.cast());
        }
    }

    /// From the key's destructor on Windows: sets the value that [`get`](ThreadKey::get)
    /// reads for the rest of the thread's exit, without arming the destructor again.
    #[cfg(windows)]
    pub(crate) fn set_at_exit(self, value: *mut u8) {
        // SAFETY: a key we made; the thread-local slot outlives the fiber-local callbacks.
        unsafe { Threading::TlsSetValue(self.tls, value.cast()) };
    }
}
