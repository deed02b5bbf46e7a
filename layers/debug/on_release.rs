//! `OnRelease<L, H>`: a function of the caller's called with every block put back, before
//! the block goes down to `L`.

use core::alloc::Layout;
use core::fmt;
use core::ptr::NonNull;

use crate::Layer;
use crate::abort::{call, no_unwind};
use crate::layer::{paranoid, require_put};

/// A block being put back, as [`OnRelease`]'s hook sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Released {
    /// The block: its bytes are still readable while the hook runs.
    pub ptr: NonNull<u8>,
    /// The layout it was got with (its size after any resize).
    pub layout: Layout,
    /// The identifier the layer was made with.
    pub id: u64,
}

/// Calls a hook with every block put back to it (address, layout and the layer's
/// identifier), before the block goes down to `L`: the "death stub" of a memory manager,
/// for logging, accounting, or releasing what the block stood for elsewhere.
///
/// What a hook may do: read the block (it is still whole), and anything that does not need
/// this layer (which is busy with the put). It runs inside the allocator: under a
/// [`Locked`](crate::Locked) its stack's lock is held, and in a region's stack an
/// allocation through the global allocator goes to the ground (the router's rule 7), not to
/// the region. A hook that reaches the adapter holding the layer anyway finds it busy: a
/// [`Heap`](crate::Heap) aborts the process with one line, and so does a `Locked` built with
/// the `os` feature on Unix or Windows, or with `std` (elsewhere it waits for itself for
/// ever). A hook must not panic: a panic cannot unwind out of an allocator, so one that
/// reaches the layer aborts the process with one line naming it.
///
/// ```
/// use core::alloc::Layout;
/// use std::cell::RefCell;
/// use stratalloc::{Layer, layers::{OnRelease, System}};
///
/// let log = RefCell::new(Vec::new());
/// let mut hooked = OnRelease::new(System::new(), 7, |released| {
///     log.borrow_mut().push((released.id, released.layout.size()));
/// });
/// let layout = Layout::from_size_align(48, 8).unwrap();
/// let block = hooked.get(layout).unwrap();
/// // SAFETY: got just above with `layout`, put once.
/// unsafe { hooked.put(block, layout) };
/// assert_eq!(log.into_inner(), [(7, 48)]);
/// ```
pub struct OnRelease<L, H> {
    /// `None` for a layer made by `Layer::init`, which has no hook to call.
    hook: Option<H>,
    id: u64,
    inner: L,
}

impl<L, H: FnMut(Released)> OnRelease<L, H> {
    /// Wraps `inner`, calling `hook` with every block put, tagged `id`.
    pub const fn new(inner: L, id: u64, hook: H) -> Self {
        OnRelease {
            hook: Some(hook),
            id,
            inner,
        }
    }

    crate::layer::layer_below! {
        owns: "the blocks this layer got from the inner one";
        /// Unwraps the layer below; the hook is dropped.
        into_inner;
    }
}

// SAFETY: every block comes unchanged from `L`, and every call is forwarded with the
// caller's duties; the hook only sees a block before it goes down, and cannot unwind out of
// `put`. The hook is the caller's code, so it may reach back into an adapter holding this
// layer, which the `Layer` contract lets adapters rule out for layer code: the crate's
// adapters catch such a call instead (`Heap` aborts; `Locked` aborts where it can tell
// threads apart and otherwise spins, which is no unsoundness), and the contract tells
// other adapters to.
unsafe impl<L: Layer, H: FnMut(Released)> Layer for OnRelease<L, H> {
    const MIN_ALIGN: usize = L::MIN_ALIGN;
    const OWNS_EXACT: bool = L::OWNS_EXACT;
    const OWNS_INTERIOR: bool = L::OWNS_INTERIOR;
    const ZEROED: bool = L::ZEROED;

    fn get(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        paranoid(self);
        self.inner.get(layout)
    }

    unsafe fn put(&mut self, ptr: NonNull<u8>, layout: Layout) {
        paranoid(self);
        require_put::<Self>(ptr, layout);
        let released = Released {
            ptr,
            layout,
            id: self.id,
        };
        if let Some(hook) = &mut self.hook {
            no_unwind::<Self, { call::RELEASE_HOOK }, _>(|| hook(released));
        }
        // SAFETY: the caller's duties, which are `L`'s for a block of `L`.
        unsafe { self.inner.put(ptr, layout) }
    }

    /// A layer with no hook (a hook is a value of the caller's, which `init` cannot make):
    /// it calls nothing until replaced by one made with [`OnRelease::new`].
    fn init() -> Self {
        OnRelease {
            hook: None,
            id: 0,
            inner: L::init(),
        }
    }

    fn deinit(&mut self) {
        self.inner.deinit();
    }

    crate::layer::resizes_go_below!();

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

impl<L: fmt::Debug, H> fmt::Debug for OnRelease<L, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OnRelease")
            .field("id", &self.id)
            .field("inner", &self.inner)
            .finish()
    }
}
