//! Failures that must not unwind: one line on stderr, written without allocating, then abort.
//!
//! Code that may be running inside a global allocator cannot panic (unwinding out of an
//! allocator is undefined behaviour) and cannot allocate to format a message. Misuse that
//! a layer detects there (a double put, a put with the wrong layout) ends here instead.

use core::fmt;

/// A fixed buffer that a message is formatted into, cut short if it does not fit.
#[cfg_attr(not(feature = "os"), allow(dead_code))]
pub(crate) struct LineBuffer {
    bytes: [u8; 512],
    len: usize,
}

#[cfg_attr(not(feature = "os"), allow(dead_code))]
impl LineBuffer {
    pub(crate) const fn new() -> Self {
        LineBuffer {
            bytes: [0; 512],
            len: 0,
        }
    }

    /// The text written so far (always whole UTF-8 characters).
    pub(crate) fn as_str(&self) -> &str {
        // Only whole `&str` pieces are copied in (see `write_str`), so this cannot fail.
        core::str::from_utf8(&self.bytes[..self.len]).unwrap_or("")
    }
}

impl fmt::Write for LineBuffer {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = self.bytes.len() - self.len;
        let mut take = s.len().min(room);
        while !s.is_char_boundary(take) {
            take -= 1;
        }
        self.bytes[self.len..self.len + take].copy_from_slice(&s.as_bytes()[..take]);
        self.len += take;
        Ok(())
    }
}

/// `debug_assert!` for code that may run inside a global allocator: in debug builds a
/// broken condition writes its message and aborts (see [`abort_with`]) instead of
/// panicking, which could unwind out of the allocator or deadlock re-entering its lock.
/// In release builds neither the condition nor the message is evaluated.
///
/// It serves the first two tiers of checks that `src/layer.rs` describes ("Checks"):
/// callers' duties (through the `require_*` helpers there, with their uniform messages)
/// and a layer's internal consistency.
macro_rules! debug_require {
    ($condition:expr, $($message:tt)+) => {
        if cfg!(debug_assertions) && !$condition {
            $crate::abort::abort_with(format_args!($($message)+))
        }
    };
}
pub(crate) use debug_require;

/// Writes `stratalloc: <message>` and a newline to stderr, then aborts the process.
///
/// Without the `os` feature (which `std` implies) there is neither stderr nor a portable
/// abort: the message is raised as a panic instead, and a `no_std` program that uses
/// checking layers inside its global allocator should build with `panic = "abort"`.
#[cold]
#[inline(never)]
pub(crate) fn abort_with(message: fmt::Arguments<'_>) -> ! {
    #[cfg(feature = "os")]
    {
        use fmt::Write as _;
        let mut line = LineBuffer::new();
        let _ = writeln!(line, "stratalloc: {message}");
        write_stderr(line.as_str().as_bytes());
        // SAFETY: `abort` takes no arguments and does not return.
        unsafe { libc::abort() }
    }
    #[cfg(not(feature = "os"))]
    {
        panic!("stratalloc: {}", message)
    }
}

/// The layer calls [`no_unwind`] can name, as its `CALL` parameter.
#[cfg_attr(not(feature = "std"), allow(dead_code))]
pub(crate) mod call {
    pub(crate) const GET: u8 = 0;
    pub(crate) const PUT: u8 = 1;
    pub(crate) const GROW: u8 = 2;
    pub(crate) const SHRINK: u8 = 3;
    pub(crate) const WINDOW: u8 = 4;
    pub(crate) const DEINIT: u8 = 5;
    pub(crate) const LEAK_REPORT: u8 = 6;
    // (The thread heaps'.)
    #[cfg_attr(not(all(feature = "os", any(unix, windows))), allow(dead_code))]
    pub(crate) const USABLE_SIZE: u8 = 7;
    pub(crate) const RESIZE: u8 = 8;
    pub(crate) const REWIND: u8 = 9;
    pub(crate) const RELEASE_HOOK: u8 = 10;
    pub(crate) const DROP: u8 = 11;
    /// Their names, by number.
    pub(super) const NAMES: [&str; 12] = [
        "get",
        "put",
        "grow",
        "shrink",
        "window",
        "deinit",
        "leak_report",
        "usable_size",
        "grow, shrink or move",
        "rewind",
        "release hook",
        "drop",
    ];
}

/// Runs `f`, a call into the code of layer `L` made from inside an allocator, and aborts
/// with one line naming `L` and the call (a [`call`] constant) if it unwinds: a panic must
/// not leave a global allocator (that is undefined behaviour), and a stack that panicked
/// half-way through an operation cannot be trusted with the next one. The panic's own
/// message has been printed by the panic hook by then. The guard is zero-sized and
/// forgotten on the normal path, so it costs nothing there but the landing pad.
#[inline(always)]
pub(crate) fn no_unwind<L: ?Sized, const CALL: u8, R>(f: impl FnOnce() -> R) -> R {
    /// Aborts when dropped, which only unwinding does.
    struct Unwinding<L: ?Sized, const CALL: u8>(core::marker::PhantomData<L>);
    impl<L: ?Sized, const CALL: u8> Drop for Unwinding<L, CALL> {
        #[cold]
        fn drop(&mut self) {
            abort_with(format_args!(
                "`{}::{}` panicked inside the allocator; a panic cannot unwind out of an \
                 allocator, so the process aborts",
                core::any::type_name::<L>(),
                call::NAMES.get(usize::from(CALL)).copied().unwrap_or("?")
            ))
        }
    }
    let guard = Unwinding::<L, CALL>(core::marker::PhantomData);
    let result = f();
    core::mem::forget(guard);
    result
}

/// Writes bytes to file descriptor 2 with raw `write` calls: no lock, no allocation.
#[cfg(feature = "os")]
pub(crate) fn write_stderr(mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // (`as _`: the count is a `size_t` on Unix and an `unsigned int` on Windows.)
        let count = bytes.len().min(i32::MAX as usize);
        // SAFETY: `bytes` is a live slice; `write` reads at most `count <= bytes.len()`
        // bytes of it.
        let written = unsafe { libc::write(2, bytes.as_ptr().cast(), count as _) };
        if written <= 0 {
            return;
        }
        bytes = &bytes[written as usize..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::fmt::Write as _;

    #[test]
    fn long_lines_are_cut_on_a_character_boundary() {
        let mut line = LineBuffer::new();
        for _ in 0..200 {
            write!(line, "é·").unwrap();
        }
        assert!(line.as_str().len() <= 512);
        assert!(line.as_str().starts_with("é·é·"));
    }
}
