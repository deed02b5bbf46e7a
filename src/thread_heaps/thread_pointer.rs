//! How a thread finds its heap: the thread pointer (a register read where the platform has
//! one), which keys the instance's heap cache, and the thread-local that names the thread's
//! heap (with std; without it, each registry's thread key does).

#[cfg(feature = "std")]
use core::cell::Cell;
use core::ptr;

/// What `CURRENT` holds after this thread's heap was handed back at thread exit: later
/// allocations on the thread (other destructors) go to the shared `Large` layer.
pub(super) const EXITED: *mut u8 = ptr::without_provenance_mut(1);

#[cfg(feature = "std")]
std::thread_local! {
    /// This thread's heap (one per thread, whatever registry it belongs to), null before
    /// the first small allocation, `EXITED` after thread exit. Without std there are no
    /// thread-locals on stable Rust, and each registry's thread key holds the thread's
    /// heap instead (see `Registry::current`).
    pub(super) static CURRENT: Cell<*mut u8> = const { Cell::new(ptr::null_mut()) };
}

/// This thread's thread pointer: a word unique to each live thread, read in one
/// instruction where the platform has a register for it.
#[inline(always)]
pub(super) fn thread_pointer() -> usize {
    #[cfg(all(target_arch = "x86_64", target_os = "linux", not(miri)))]
    {
        let tp: usize;
        // SAFETY: on x86-64 Linux, `fs:0` holds the thread control block's own address
        // (the TLS ABI's self pointer); reading it touches nothing else.
        unsafe {
            core::arch::asm!(
                "mov {}, qword ptr fs:[0]",
                out(reg) tp,
                options(nostack, readonly, preserves_flags, pure)
            )
        };
        tp
    }
    #[cfg(all(target_arch = "aarch64", target_os = "linux", not(miri)))]
    {
        let tp: usize;
        // SAFETY: `tpidr_el0` is the thread pointer register; reading it has no effect.
        unsafe {
            core::arch::asm!(
                "mrs {}, tpidr_el0",
                out(reg) tp,
                options(nostack, nomem, preserves_flags, pure)
            )
        };
        tp
    }
    #[cfg(not(all(
        any(target_arch = "x86_64", target_arch = "aarch64"),
        target_os = "linux",
        not(miri)
    )))]
    {
        // The address of a thread-local: unique per live thread, if slower to get.
        #[cfg(feature = "std")]
        return CURRENT.try_with(|c| ptr::from_ref(c).addr()).unwrap_or(0);
        // The OS's thread id, which is unique per live thread too (and never 0, which
        // means "no thread" here).
        #[cfg(not(feature = "std"))]
        return crate::os::thread_id();
    }
}
