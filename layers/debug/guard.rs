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

    /// The bytes of guard before a block of `layout`: `N`, rounded up to its alignment (a
    /// power of two, so a mask rounds it: a division would cost more than the rest of a
    /// put's arithmetic). `N` is at most 4096 and the alignment at most 2^63, so the sum
    /// cannot wrap.
    #[inline(always)]
    fn front(layout: Layout) -> usize {
        let mask = layout.align() - 1;
        (N + mask) & !mask
    }

    /// The bytes a block of `layout` holds: its size, or one for a zero-size block.
    fn held(layout: Layout) -> usize {
        layout.size().max(1)
    }

    /// The layout of the inner block for a block of `layout`, and the front guard's size;
    /// `None` when it would pass `Layout`'s limit.
    #[inline(always)]
    fn inner_layout(layout: Layout) -> Option<(Layout, usize)> {
        let front = Self::front(layout);
        // `front + N` is at most 2^63 + 8192, which fits; only the last sum can wrap.
        let size = Self::held(layout).checked_add(front + N)?;
        // `Layout`'s own limit, without its check that the alignment is a power of two
        // (it is one: it is `layout`'s).
        if size > isize::MAX as usize - (layout.align() - 1) {
            return None;
        }
        // SAFETY: the alignment is `layout`'s, a power of two, and `size` rounded up to it
        // does not pass `isize::MAX`, as just checked.
        let outer = unsafe { Layout::from_size_align_unchecked(size, layout.align()) };
        Some((outer, front))
    }

    /// Writes the guards of a block of `layout` into `base`, and returns the block.
    ///
    /// # Safety
    ///
    /// `base` is a block of `L` with the layout [`inner_layout`](Self::inner_layout)
    /// gives for `layout`, with `front`.
    #[inline(always)]
    unsafe fn write_guards(base: NonNull<u8>, layout: Layout, front: usize) -> NonNull<u8> {
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
            block
        }
    }

    /// [`get`](Layer::get) for a block whose front guard is longer than `N` (an alignment
    /// over `N`): out of line, so that the usual get keeps no registers for its `memset`.
    #[cold]
    #[inline(never)]
    fn get_over_aligned(
        &mut self,
        outer: Layout,
        layout: Layout,
        front: usize,
    ) -> Option<NonNull<u8>>
    where
        L: Layer,
    {
        let base = self.inner.get(outer)?;
        // SAFETY: a block of `L` with the layout `inner_layout` gave with `front`.
        Some(unsafe { Self::write_guards(base, layout, front) })
    }

    /// Whether the `N` guard bytes on each side of the block at `ptr` are intact and the
    /// front guard is no longer than `N`: the usual case, two vector compares. When not, the
    /// block goes to [`put_checked_slowly`](Self::put_checked_slowly).
    ///
    /// # Safety
    ///
    /// `ptr` is a live block of this layer with `layout`, and `front` its front guard's
    /// length.
    #[inline(always)]
    unsafe fn near_guards_intact(ptr: NonNull<u8>, layout: Layout, front: usize) -> bool {
        let block = ptr.as_ptr();
        // SAFETY: `N` bytes before the block and `N` after it, inside the guards.
        let (near_front, back) = unsafe {
            (
                block.sub(N).cast::<[u8; N]>().read_unaligned(),
                block
                    .add(Self::held(layout))
                    .cast::<[u8; N]>()
                    .read_unaligned(),
            )
        };
        let guard = [GUARD_BYTE; N];
        near_front == guard && back == guard && front == N
    }

    /// [`put`](Layer::put) for a block whose near guards changed or whose front guard is
    /// longer than `N`: checks every guard byte, aborting on a changed one, and puts the
    /// block down. Out of line, so that the usual put saves no registers for it.
    ///
    /// # Safety
    ///
    /// As [`put`](Layer::put), with `outer` and `front` what `inner_layout` gives.
    #[cold]
    #[inline(never)]
    unsafe fn put_checked_slowly(
        &mut self,
        ptr: NonNull<u8>,
        layout: Layout,
        outer: Layout,
        front: usize,
    ) where
        L: Layer,
    {
        // SAFETY: the caller's duties.
        unsafe {
            Self::verify_slowly(ptr, layout, front);
            self.inner.put(ptr.sub(front), outer);
        }
    }

    /// Aborts if a guard byte of the block at `ptr` with `layout` changed, naming the byte
    /// nearest the block.
    ///
    /// # Safety
    ///
    /// `ptr` is a live block of this layer with `layout`, and `front` its front guard's
    /// length.
    unsafe fn verify_slowly(ptr: NonNull<u8>, layout: Layout, front: usize) {
        let block = ptr.as_ptr();
        let held = Self::held(layout);
        // SAFETY: both guards lie inside the inner block, around the block.
        let (before, after) = unsafe {
            (
                core::slice::from_raw_parts(block.sub(front), front),
                core::slice::from_raw_parts(block.add(held), N),
            )
        };
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
        if front != N {
            return self.get_over_aligned(outer, layout, front);
        }
        let base = self.inner.get(outer)?;
        // SAFETY: a block of `L` with the layout `inner_layout` gave with `front`.
        Some(unsafe { Self::write_guards(base, layout, front) })
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
            if !Self::near_guards_intact(ptr, layout, front) {
                return self.put_checked_slowly(ptr, layout, outer, front);
            }
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
