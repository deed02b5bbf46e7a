//! `Fallback<Primary, Secondary>`: every request tries `Primary` first and goes to
//! `Secondary` when `Primary` cannot serve it; a put goes back to whichever layer owns the
//! block.
//!
//! Invariant: a block is `Primary`'s exactly when `Primary::owns` says so. That needs an
//! [exact](crate::Layer::OWNS_EXACT) `owns` from `Primary` (checked at compile time), and
//! `Primary` never claims memory of `Secondary` (the [`Layer`] contract: `owns` is true only
//! for memory the layer manages).

use core::alloc::Layout;
use core::fmt;
use core::ptr::NonNull;

use crate::Layer;
use crate::layer::{paranoid, require_grow, require_put, require_shrink};

/// Serves from `Primary` while it can, from `Secondary` when it cannot; frees go back by
/// ownership (`Primary::owns`), as Heap-Layers' `FallbackHeap` and the `std` allocator
/// proposals' `FallbackAllocator` do.
///
/// `Primary` must answer [`owns`](Layer::owns) exactly
/// ([`OWNS_EXACT`](Layer::OWNS_EXACT)): otherwise a put could not tell its blocks from
/// `Secondary`'s. A stack that breaks this does not compile:
///
/// ```compile_fail
/// use stratalloc::layers::{Chunk, Fallback, Mmap, System};
/// // `Chunk` cannot say which blocks are its own.
/// let _ = Fallback::new(Chunk::<_, 4096>::new(Mmap::new()), System);
/// ```
///
/// A fixed region first, the system allocator when it is full:
///
/// ```
/// use core::alloc::Layout;
/// use stratalloc::{Layer, layers::{Buffer, Fallback, System}};
///
/// let mut memory = [core::mem::MaybeUninit::uninit(); 256];
/// let mut heap = Fallback::new(Buffer::new(&mut memory), System);
/// let layout = Layout::new::<[u8; 200]>();
/// let first = heap.get(layout).unwrap();
/// let second = heap.get(layout).unwrap(); // the buffer is full: from the system
/// assert!(heap.primary().owns(first) && !heap.primary().owns(second));
/// // SAFETY: both blocks are ours, put once with their layout.
/// unsafe {
///     heap.put(second, layout);
///     heap.put(first, layout);
/// }
/// ```
pub struct Fallback<Primary, Secondary> {
    primary: Primary,
    secondary: Secondary,
}

impl<Primary: Layer, Secondary: Layer> Fallback<Primary, Secondary> {
    /// Tries `primary` first, then `secondary`.
    pub const fn new(primary: Primary, secondary: Secondary) -> Self {
        const {
            assert!(
                Primary::OWNS_EXACT,
                "Fallback: the primary layer must answer `owns` exactly (Layer::OWNS_EXACT)"
            );
        }
        Fallback { primary, secondary }
    }
}

impl<Primary, Secondary> Fallback<Primary, Secondary> {
    /// The layer tried first.
    pub const fn primary(&self) -> &Primary {
        &self.primary
    }

    /// The layer tried when the first cannot serve.
    pub const fn secondary(&self) -> &Secondary {
        &self.secondary
    }

    /// Both layers, taken apart.
    pub fn into_parts(self) -> (Primary, Secondary) {
        (self.primary, self.secondary)
    }
}

// SAFETY: every block comes unchanged from one of the two layers. `Primary::owns` is exact
// (checked when the value is made) and true only for its own memory, so it names the layer
// of every block a caller gives back, and each layer gets the caller's duties for its own
// blocks.
unsafe impl<Primary: Layer, Secondary: Layer> Layer for Fallback<Primary, Secondary> {
    const MIN_ALIGN: usize = if Primary::MIN_ALIGN < Secondary::MIN_ALIGN {
        Primary::MIN_ALIGN
    } else {
        Secondary::MIN_ALIGN
    };
    const ZEROED: bool = Primary::ZEROED && Secondary::ZEROED;
    const OWNS_EXACT: bool = Primary::OWNS_EXACT && Secondary::OWNS_EXACT;
    const OWNS_INTERIOR: bool = Primary::OWNS_INTERIOR && Secondary::OWNS_INTERIOR;

    #[inline]
    fn get(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        paranoid(self);
        self.primary
            .get(layout)
            .or_else(|| self.secondary.get(layout))
    }

    #[inline]
    unsafe fn put(&mut self, ptr: NonNull<u8>, layout: Layout) {
        paranoid(self);
        require_put::<Self>(ptr, layout);
        // SAFETY: `owns` names the layer the block came from; the caller's duties pass on.
        unsafe {
            if self.primary.owns(ptr) {
                self.primary.put(ptr, layout)
            } else {
                self.secondary.put(ptr, layout)
            }
        }
    }

    fn init() -> Self {
        Self::new(Primary::init(), Secondary::init())
    }

    fn deinit(&mut self) {
        self.primary.deinit();
        self.secondary.deinit();
    }

    unsafe fn grow(&mut self, ptr: NonNull<u8>, old: Layout, new: Layout) -> bool {
        paranoid(self);
        require_grow::<Self>(ptr, old, new);
        // SAFETY: as in `put`.
        unsafe {
            if self.primary.owns(ptr) {
                self.primary.grow(ptr, old, new)
            } else {
                self.secondary.grow(ptr, old, new)
            }
        }
    }

    unsafe fn shrink(&mut self, ptr: NonNull<u8>, old: Layout, new: Layout) -> bool {
        paranoid(self);
        require_shrink::<Self>(ptr, old, new);
        // SAFETY: as in `put`.
        unsafe {
            if self.primary.owns(ptr) {
                self.primary.shrink(ptr, old, new)
            } else {
                self.secondary.shrink(ptr, old, new)
            }
        }
    }

    fn owns(&self, ptr: NonNull<u8>) -> bool {
        self.primary.owns(ptr) || self.secondary.owns(ptr)
    }

    fn check_invariants(&self) {
        self.primary.check_invariants();
        self.secondary.check_invariants();
    }
}

impl<Primary: fmt::Debug, Secondary: fmt::Debug> fmt::Debug for Fallback<Primary, Secondary> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fallback")
            .field("primary", &self.primary)
            .field("secondary", &self.secondary)
            .finish()
    }
}
