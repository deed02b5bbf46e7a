//! A malloc replacement built from stratalloc: a shared and a static library
//! (`crate-type = ["cdylib", "staticlib"]`, a package of its own, so the crate itself never
//! exports `malloc` into its users' programs) that any program can load with `LD_PRELOAD`,
//! and that a C program can link (`-lstratalloc`, or the static library by its
//! path), with what the library adds to the C API declared in `malloc/stratalloc.h`.
//!
//! ```text
//! cargo build --profile preload -p stratalloc-malloc
//! LD_PRELOAD=target/preload/libstratalloc.so ls -l
//! STRATALLOC_SUMMARY=1 LD_PRELOAD=target/preload/libstratalloc.so ls -l
//! gcc -I malloc prog.c -L target/preload -lstratalloc -Wl,-rpath,$PWD/target/preload
//! gcc -I malloc prog.c target/preload/libstratalloc.a   # linked statically
//! ```
//!
//! Built that way (stratalloc's `os` feature without `std`, and the `preload` profile's
//! `panic = "abort"`) the library is `no_std`: it needs only libc, and maps none of std's
//! panic, backtrace and unwinding code (nor `libgcc_s`) into the programs it is loaded
//! into, about 170 KiB of resident pages in each. A panic, which the allocator's own code
//! never raises on purpose (misuse it detects aborts with a message instead), aborts. Built
//! with the default features, or in a profile that unwinds, it links std as usual and
//! behaves the same.
//!
//! It exports `malloc`, `free`, `calloc`, `realloc`, `reallocarray`, `posix_memalign`,
//! `aligned_alloc`, `memalign`, `valloc`, `pvalloc` and `malloc_usable_size` with their C
//! semantics, over the [`General`] preset (per-thread slab heaps, a shared large-block
//! layer). Failures return null with `errno` set to `ENOMEM` (or `EINVAL` for a bad
//! alignment, which `posix_memalign` returns instead). The allocator's locks are taken
//! around `fork` (the crate registers its handlers with `pthread_atfork` at the first
//! allocation), so a child never inherits one held by a thread that did not survive, and
//! the heaps of those threads are never used there.
//!
//! With `STRATALLOC_SUMMARY` set (to anything but `0`), it prints a heap summary to stderr
//! at exit: totals, the peak, live blocks by size, and the leaks
//! (everything still live at exit, the C library's own buffers included). It writes to a
//! copy of stderr made at load time (file descriptor 100 or above), since programs may
//! close stderr before they exit; a program that closes every descriptor loses it.
//!
//! Beyond the C functions it exports `malloc_stats` (glibc's: the summary on stderr),
//! `stratalloc_summary(fd)` (the summary to a file descriptor, at any time) and
//! `stratalloc_set_counting(on)`: the summary's figures are counted only from the moment
//! counting is on (`STRATALLOC_SUMMARY` at load, or that call), since counting costs a few
//! shared atomic operations per allocation.
//!
//! Where glibc versions differ, this follows glibc 2.38: `aligned_alloc` with an alignment
//! that is not a power of two fails with `EINVAL`; `realloc(p, 0)` frees `p` and returns
//! null.

#![allow(clippy::missing_safety_doc)] // The C functions' duties are C's.
#![cfg_attr(all(panic = "abort", not(feature = "std")), no_std)]

use core::ffi::c_void;
use core::fmt::Write as _;
use core::ptr;

use stratalloc_crate::presets::{General, general};

/// The heap behind the C functions, and the library's own Rust allocations (there are
/// none on purpose; without std something must still be the global allocator).
#[global_allocator]
static HEAP: General = general();

// Without std nothing else links the C library (the `libc` crate leaves that to std when
// its own `std` feature is on, as the dev-dependencies turn it on); the library must name
// it so that the loader binds `mmap`, `write` and the rest to it.
#[cfg(all(panic = "abort", not(feature = "std")))]
#[link(name = "c")]
unsafe extern "C" {}

/// Without std, a panic writes its message and location to stderr and aborts: nothing may
/// unwind out of malloc.
#[cfg(all(panic = "abort", not(feature = "std")))]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    let mut text = StackText::<512>::new();
    let _ = writeln!(text, "stratalloc (malloc): {info}; aborting");
    let _ = write_all(2, text.as_bytes());
    // SAFETY: `abort` takes nothing and never returns.
    unsafe { libc::abort() }
}

/// Alignment `malloc` guarantees: 16, as glibc's on 64-bit targets.
const MALLOC_ALIGN: usize = 16;

fn set_errno(code: i32) {
    // SAFETY: `__errno_location` returns this thread's errno, always valid.
    unsafe { *libc::__errno_location() = code };
}

/// Returns `ptr`, setting `errno` to `ENOMEM` when it is null.
fn or_enomem(ptr: *mut u8) -> *mut c_void {
    if ptr.is_null() {
        set_errno(libc::ENOMEM);
    }
    ptr.cast()
}

fn page_size() -> usize {
    stratalloc_crate::layers::Mmap::page_size()
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn malloc(size: usize) -> *mut c_void {
    or_enomem(HEAP.malloc(size))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn free(ptr: *mut c_void) {
    // SAFETY: C's duty: null or a live block of this allocator.
    unsafe { HEAP.free(ptr.cast()) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn calloc(count: usize, size: usize) -> *mut c_void {
    // (An overflowing product is refused there too, as out of memory.) A large block fresh
    // from the OS is not written, so its pages cost nothing until used, as with glibc.
    or_enomem(HEAP.calloc(count, size))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn realloc(ptr: *mut c_void, size: usize) -> *mut c_void {
    if ptr.is_null() {
        return or_enomem(HEAP.malloc(size));
    }
    if size == 0 {
        // glibc's behaviour: free the block and return null.
        // SAFETY: C's duty: a live block of this allocator.
        unsafe { HEAP.free(ptr.cast()) };
        return ptr::null_mut();
    }
    // SAFETY: C's duty: a live block of this allocator.
    or_enomem(unsafe { HEAP.realloc(ptr.cast(), size) })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn reallocarray(ptr: *mut c_void, count: usize, size: usize) -> *mut c_void {
    match count.checked_mul(size) {
        // SAFETY: C's duty, as for `realloc`.
        Some(bytes) => unsafe { realloc(ptr, bytes) },
        None => {
            set_errno(libc::ENOMEM);
            ptr::null_mut()
        }
    }
}

/// A block of `size` bytes aligned to `align` (a power of two), or null.
fn aligned(align: usize, size: usize) -> *mut u8 {
    if align <= MALLOC_ALIGN {
        HEAP.malloc(size)
    } else {
        HEAP.malloc_aligned(size, align)
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn posix_memalign(out: *mut *mut c_void, align: usize, size: usize) -> i32 {
    if !align.is_power_of_two() || !align.is_multiple_of(size_of::<*mut c_void>()) {
        return libc::EINVAL;
    }
    let block = aligned(align, size);
    if block.is_null() {
        return libc::ENOMEM;
    }
    // SAFETY: C's duty: `out` is a valid place for a pointer.
    unsafe { *out = block.cast() };
    0
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn aligned_alloc(align: usize, size: usize) -> *mut c_void {
    if !align.is_power_of_two() {
        set_errno(libc::EINVAL);
        return ptr::null_mut();
    }
    or_enomem(aligned(align, size))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn memalign(align: usize, size: usize) -> *mut c_void {
    // glibc rounds an alignment that is not a power of two up to one.
    let Some(align) = align.max(1).checked_next_power_of_two() else {
        set_errno(libc::EINVAL);
        return ptr::null_mut();
    };
    or_enomem(aligned(align, size))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn valloc(size: usize) -> *mut c_void {
    or_enomem(aligned(page_size(), size))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn pvalloc(size: usize) -> *mut c_void {
    let page = page_size();
    match size.max(1).checked_next_multiple_of(page) {
        Some(rounded) => or_enomem(aligned(page, rounded)),
        None => {
            set_errno(libc::ENOMEM);
            ptr::null_mut()
        }
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn malloc_usable_size(ptr: *mut c_void) -> usize {
    // SAFETY: C's duty: null or a live block of this allocator.
    unsafe { HEAP.usable_size(ptr.cast()) }
}

/// Up to `N` bytes of text formatted on the stack (the rest is cut): the summary and a
/// panic's message are printed without allocating.
struct StackText<const N: usize> {
    bytes: [u8; N],
    len: usize,
}

impl<const N: usize> StackText<N> {
    fn new() -> Self {
        StackText {
            bytes: [0; N],
            len: 0,
        }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// Writes all of `bytes` to `fd` with raw `write` calls, giving up at the first error;
/// whether all were written.
fn write_all(fd: i32, mut bytes: &[u8]) -> bool {
    while !bytes.is_empty() {
        // SAFETY: `bytes` is a live slice; `write` reads at most its length.
        let written = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if written <= 0 {
            return false;
        }
        bytes = &bytes[written as usize..];
    }
    true
}

impl<const N: usize> core::fmt::Write for StackText<N> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let take = s.len().min(self.bytes.len() - self.len);
        self.bytes[self.len..self.len + take].copy_from_slice(&s.as_bytes()[..take]);
        self.len += take;
        Ok(())
    }
}

/// Where the summary goes: a copy of stderr made at load time, since programs may close
/// stderr before exit (GNU coreutils' `close_stdout` does).
static SUMMARY_FD: core::sync::atomic::AtomicI32 = core::sync::atomic::AtomicI32::new(2);

extern "C" fn print_summary() {
    let fd = SUMMARY_FD.load(core::sync::atomic::Ordering::Relaxed);
    write_summary(fd);
}

/// Writes the heap summary to `fd` (formatted on the stack, nothing allocated); whether
/// all of it was written.
fn write_summary(fd: i32) -> bool {
    let mut text = StackText::<8192>::new();
    let _ = write!(text, "{}", HEAP.summary());
    write_all(fd, text.as_bytes())
}

/// glibc's `malloc_stats`: the heap summary on stderr.
#[unsafe(no_mangle)]
pub extern "C" fn malloc_stats() {
    write_summary(2);
}

/// Writes the heap summary to the file descriptor `fd`, at any time: 0 when all of it was
/// written, -1 (with `errno` from `write`) otherwise.
#[unsafe(no_mangle)]
pub extern "C" fn stratalloc_summary(fd: i32) -> i32 {
    if write_summary(fd) { 0 } else { -1 }
}

/// Turns the counting behind the summary on (`on` not 0) or off.
#[unsafe(no_mangle)]
pub extern "C" fn stratalloc_set_counting(on: i32) {
    HEAP.set_counting(on != 0);
}

/// Runs when the library is loaded: the summary, when asked for.
extern "C" fn on_load() {
    // SAFETY: plain C calls with a valid function pointer and a NUL-terminated name.
    unsafe {
        let wanted = libc::getenv(c"STRATALLOC_SUMMARY".as_ptr());
        // Unset, empty and "0" mean no summary.
        let wanted = !wanted.is_null()
            && *wanted != 0
            && (*wanted != b'0' as libc::c_char || *wanted.add(1) != 0);
        if wanted {
            HEAP.set_counting(true);
            let copy = libc::fcntl(2, libc::F_DUPFD_CLOEXEC, 100);
            if copy >= 0 {
                SUMMARY_FD.store(copy, core::sync::atomic::Ordering::Relaxed);
            }
            libc::atexit(print_summary);
        }
    }
}

#[used]
#[unsafe(link_section = ".init_array")]
static ON_LOAD: extern "C" fn() = on_load;
