//! `Guard<L, N>`: `N` canary bytes before and after every block, checked when it is put;
//! an overrun or underrun aborts with one line naming the block, the side and the offset.

use core::alloc::Layout;
use core::fmt;
use core::ptr::NonNull;

use crate::Layer;
use crate::abort::abort_with;
use crate::layer::{Shown, first_byte_not, paranoid, require_put};

/// The byte the guards are filled with: `ca` for "canary" in a dump.
pub const GUARD_BYTE: u8 = 0xCA;

/// Surrounds every block with `N` guard bytes on each side ([`GUARD_BYTE`]), and checks
/// them when the block is put: a program that wrote past either end of its block is stopped
/// there, with one line on stderr naming the block, its layout, the side and the offset of
/// the byte nearest the block that changed, then an abort (as every misuse the crate
/// detects).
///
/// The guard before the block is `N` rounded up to the block's alignment, so that the
/// block keeps the alignment asked for. Blocks are never resized in place (a resize moves
/// the block, and the new one gets fresh guards). A zero-size block holds one byte, as
/// every layer's does, and its back guard starts after that byte.
///
/// `N` is at most 4096 (the guards are written and compared as arrays on the stack); a
/// larger `N` does not compile:
///
/// ```compile_fail
/// use stratalloc::layers::{Guard, System};
/// let _ = Guard::<_, 8192>::new(System::new());
/// ```
///
/// ```
/// use core::alloc::Layout;
/// use stratalloc::{Layer, layers::{Guard, System}};
///
/// let mut guarded = Guard::<_, 16>::new(System::new());
/// let layout = Layout::from_size_align(24, 8).unwrap();
/// let block = guarded.get(layout).unwrap();
/// // SAFETY: the block holds 24 bytes; it is put once, with its layout.
/// unsafe {
///     block.as_ptr().write_bytes(7, 24); // within bounds: the put below passes
///     guarded.put(block, layout);
/// }
/// ```
pub struct Guard<L, const N: usize = 16> {
    inner: L,
}

impl<L, const N: usize> Guard<L, N> {
    /// Wraps `inner`.
    pub const fn new(inner: L) -> Self {
        const {
            assert!(
                N <= 4096,
                "Guard: N must be at most 4096 (its guards are compared on the stack)"
            )
        };
        Guard { inner }
    }

    crate::layer::layer_below! {
        owns: "the blocks this layer got from the inner one (each larger than the block \
               handed out, which starts inside it)";
        /// Unwraps the layer below. Blocks got through `Guard` must not go back to it: they
        /// start inside the blocks it got.
        into_inner;
    }

    /// The bytes of guard before a block of `layout`: `N`, rounded up to its alignment.
    fn front(layout: Layout) -> Option<usize> {
        N.checked_next_multiple_of(layout.align())
    }

    /// The bytes a block of `layout` holds: its size, or one for a zero-size block.
    fn held(layout: Layout) -> usize {
        layout.size().max(1)
    }

    /// The layout of the inner block for a block of `layout`, and the front guard's size.
    fn inner_layout(layout: Layout) -> Option<(Layout, usize)> {
        let front = Self::front(layout)?;
        let size = front.checked_add(Self::held(layout))?.checked_add(N)?;
        Some((Layout::from_size_align(size, layout.align()).ok()?, front))
    }

    /// Aborts if a guard byte of the block at `ptr` with `layout` changed.
    ///
    /// # Safety
    ///
    /// `ptr` is a live block of this layer with `layout`.
    unsafe fn verify(ptr: NonNull<u8>, layout: Layout, front: usize) {
        let block = ptr.as_ptr();
        let held = Self::held(layout);
        // SAFETY: both guards lie inside the inner block, around the block.
        let (before, after) = unsafe {
            (
                core::slice::from_raw_parts(block.sub(front), front),
                core::slice::from_raw_parts(block.add(held), N),
            )
        };
        // The usual case first: the `N` bytes on each side compared as two arrays (a vector
        // compare each); only a guard that differs, or a front guard longer than `N` (a
        // large alignment), is searched byte by byte.
        // SAFETY: as above: `N` bytes before the block and `N` after it, inside the guards.
        let (near_front, back) = unsafe {
            (
                block.sub(N).cast::<[u8; N]>().read_unaligned(),
                block.add(held).cast::<[u8; N]>().read_unaligned(),
            )
        };
        let guard = [GUARD_BYTE; N];
        if near_front == guard && back == guard && front == N {
            return;
        }
        if first_byte_not(before, GUARD_BYTE).is_some() {
            // Nearest the block first: an underrun changes the last byte before it first.
            let back = before
                .iter()
                .rev()
                .position(|&b| b != GUARD_BYTE)
                .unwrap_or(0)
                + 1;
            abort_with(format_args!(
                "Guard: a write before the block at {ptr:p} ({}): byte -{back} of its \
                 {front}-byte front guard is {:#04x}, not {GUARD_BYTE:#04x}",
                Shown(layout),
                before[front - back]
            ));
        }
        if let Some(at) = first_byte_not(after, GUARD_BYTE) {
            abort_with(format_args!(
                "Guard: a write past the end of the block at {ptr:p} ({}): byte {} (back \
                 guard byte {at}) is {:#04x}, not {GUARD_BYTE:#04x}",
                Shown(layout),
                held + at,
                after[at]
            ));
        }
    }
}

// SAFETY: each block is the part of a block of `L` after its front guard, aligned as asked
// (the front guard is a multiple of the alignment, and `L`'s block is aligned to it), of
// the size asked, inside `L`'s block; distinct blocks of `L` make distinct blocks. Puts hand
// `L` back the very block and layout it gave.
unsafe impl<L: Layer, const N: usize> Layer for Guard<L, N> {
    // The block inside keeps `L`'s bytes: zeroed when `L`'s blocks are.
    const ZEROED: bool = L::ZEROED;

    fn get(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        paranoid(self);
        let (outer, front) = Self::inner_layout(layout)?;
        let base = self.inner.get(outer)?;
        // SAFETY: the inner block holds `front + held + N` bytes; the back guard starts at
        // `front + held` and the front one at 0, with `front >= N`. The `N`-byte writes are
        // whole-array stores, which the compiler makes a few vector stores for small `N`
        // (a `memset` call for 16 bytes costs more than the stores).
        unsafe {
            let guard = [GUARD_BYTE; N];
            if front > N {
                base.as_ptr().write_bytes(GUARD_BYTE, front - N);
            }
            base.as_ptr()
                .add(front - N)
                .cast::<[u8; N]>()
                .write_unaligned(guard);
            let block = base.add(front);
            block
                .as_ptr()
                .add(Self::held(layout))
                .cast::<[u8; N]>()
                .write_unaligned(guard);
            Some(block)
        }
    }

    unsafe fn put(&mut self, ptr: NonNull<u8>, layout: Layout) {
        paranoid(self);
        require_put::<Self>(ptr, layout);
        // The layout was valid for `get`, so these are what `get` computed.
        let Some((outer, front)) = Self::inner_layout(layout) else {
            return;
        };
        // SAFETY: the caller's duties: a live block of this layer with `layout`.
        unsafe {
            Self::verify(ptr, layout, front);
            self.inner.put(ptr.sub(front), outer);
        }
    }

    fn init() -> Self {
        Self::new(L::init())
    }

    fn deinit(&mut self) {
        self.inner.deinit();
    }

    fn owns(&self, ptr: NonNull<u8>) -> bool {
        self.inner.owns(ptr)
    }

    fn leak_report(&self) -> Option<crate::LeakReport> {
        self.inner.leak_report()
    }

    fn check_invariants(&self) {
        self.inner.check_invariants();
    }
}

impl<L: fmt::Debug, const N: usize> fmt::Debug for Guard<L, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guard")
            .field("bytes", &N)
            .field("inner", &self.inner)
            .finish()
    }
}

#[cfg(feature = "std")]
crate::region::attributed_as_inner!(Guard<L, const N: usize>);
