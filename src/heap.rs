//! `Heap<L>`: a layer stack for one thread, used by collections through `&Heap<L>`.

use core::cell::{Cell, UnsafeCell};
use core::fmt;

use crate::abort::abort_with;
use crate::layers::Chunk;
use crate::{Gauge, Gauges, Layer};

/// Owns a layer stack and lends it to collections on one thread: `&Heap<L>` implements
/// [`allocator_api2::alloc::Allocator`], so `allocator_api2::vec::Vec::new_in(&heap)`,
/// `Box::new_in` and hashbrown's maps allocate from the stack.
///
/// Zero-size requests are answered with a dangling, aligned pointer without reaching the
/// layers. `Heap` is not `Sync`: share a stack across threads with [`Locked`](crate::Locked).
/// A stack that calls code of the caller's ([`OnRelease`](crate::layers::OnRelease)'s hook)
/// must not reach the heap from it: the heap is busy with that operation, and aborts the
/// process with one line if it is used again before the operation ends.
/// To print the stack with every layer's figures, format `heap.layer_mut()`.
///
/// ```
/// use allocator_api2::vec::Vec;
/// use stratalloc::{Gauge, Heap, layers::{Chunk, Mmap, Stats}};
///
/// let mut heap = Heap::new(Stats::new(Chunk::<Mmap, 4096>::new(Mmap::new())));
/// {
///     let mut words = Vec::new_in(&heap);
///     words.extend(["bump", "arena", "layer"]);
///     assert_eq!(words.len(), 3);
/// }
/// assert_eq!(heap.gauge().live, 0);
/// heap.layer_mut().clear();
/// ```
pub struct Heap<L> {
    layer: UnsafeCell<L>,
    /// Whether an operation is using the stack: a call that finds it set came from inside
    /// the stack (a hook), and would alias the stack the operation holds.
    busy: Cell<bool>,
}

impl<L: Layer> Heap<L> {
    /// Wraps a layer stack.
    pub const fn new(layer: L) -> Self {
        Heap {
            layer: UnsafeCell::new(layer),
            busy: Cell::new(false),
        }
    }

    /// The stack, to read or adjust it when no collection is using the heap.
    pub fn layer_mut(&mut self) -> &mut L {
        self.layer.get_mut()
    }

    /// Unwraps the stack. Blocks the heap handed out now belong to the stack.
    pub fn into_inner(self) -> L {
        self.layer.into_inner()
    }

    /// The stack's gauges, copied out.
    pub fn gauge(&self) -> Gauges
    where
        L: Gauge,
    {
        if self.busy.get() {
            reentered("gauge");
        }
        // SAFETY: `Heap` is not `Sync`, no reference into the stack outlives a method of
        // `Heap`, and no operation is running (checked above; the `Layer` contract keeps
        // `Gauge` impls from calling back), so nothing holds `&mut L` meanwhile.
        unsafe { (*self.layer.get()).gauge() }
    }

    /// Runs `f` with exclusive access to the stack, for the length of one heap operation.
    #[inline(always)]
    fn with_stack<R>(&self, f: impl FnOnce(&mut L) -> R) -> R {
        /// Marks the heap free again when the operation ends, also by unwinding.
        struct Done<'a>(&'a Cell<bool>);
        impl Drop for Done<'_> {
            #[inline(always)]
            fn drop(&mut self) {
                self.0.set(false);
            }
        }
        if self.busy.replace(true) {
            reentered("allocation or free");
        }
        let _done = Done(&self.busy);
        // SAFETY: `Heap` is not `Sync`, every borrow made here ends when `f` returns, and no
        // other operation is running (the flag, set until then, makes a call from inside
        // the stack abort above). So this is the only borrow alive.
        f(unsafe { &mut *self.layer.get() })
    }
}

/// A call into a heap from inside one of its own operations.
#[cold]
#[inline(never)]
fn reentered(what: &str) -> ! {
    abort_with(format_args!(
        "Heap: {what} from inside one of the heap's own operations (a hook of its stack \
         reached the heap); the stack cannot serve two operations at once"
    ))
}

impl<L: Layer, const SIZE: usize> Heap<Chunk<L, SIZE>> {
    /// Ends every block at once, keeping the newest chunk for reuse (see [`Chunk::reset`]). Safe
    /// because `&mut self` proves that no collection still uses the heap; raw blocks from
    /// [`Allocator::allocate`](allocator_api2::alloc::Allocator::allocate) must not be used or
    /// freed afterwards.
    pub fn reset(&mut self) {
        // SAFETY: with `&mut self` no borrow of the heap is alive, so no collection holds a
        // block; raw blocks are ended by this call as documented.
        unsafe { self.layer.get_mut().reset() }
    }
}

// SAFETY: every method borrows the stack only for its own duration (`with_stack`), the layer
// keeps the `Layer` contract, and `alloc_ops` answers zero-size requests with dangling
// pointers that are never passed to the layer. Blocks stay valid while the heap lives
// because `Heap` owns the stack and `&Heap` borrows it.
crate::alloc_ops::adapter_allocator!(Heap, [Layer], with_stack);

/// Opaque: the formatter's output may itself be a collection in this heap, and formatting
/// the stack while it grows would alias it. Print `heap.layer_mut()` instead, whose
/// `&mut` borrow proves that nothing else uses the heap meanwhile.
impl<L> fmt::Debug for Heap<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Heap").finish_non_exhaustive()
    }
}
