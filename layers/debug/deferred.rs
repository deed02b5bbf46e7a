//! `Deferred<L, CAP>`: puts wait on a list, inspectable, until `collect()` (or the cap, or
//! `deinit`) lets them go down to `L` together.

use core::alloc::Layout;
use core::fmt;
use core::ptr::NonNull;

use crate::Layer;
use crate::abort::abort_with;
use crate::layer::{paranoid, require_put};

use super::held_queue::{HELD_BLOCKS, Held, HeldQueue};

/// Defers every put: the block waits on a list until [`collect`](Self::collect) releases
/// the whole list to `L` at a moment the program chooses (between frames, after a request,
/// when a pause is cheap), or until `CAP` blocks wait (the put that finds the list full
/// collects it first), or `deinit`, or the layer is dropped. [`waiting`](Self::waiting)
/// lists the blocks that wait, oldest first.
///
/// `CAP` is between 1 and [`HELD_BLOCKS`] (checked at compile time). A waiting block is
/// still `L`'s memory and is not handed out again until it is collected; nothing is written
/// into it. The list's own storage is a block of `L`, got at the first put (when `L` refuses
/// it, puts go down at once).
///
/// ```
/// use core::alloc::Layout;
/// use stratalloc::{Layer, layers::{Deferred, System}};
///
/// let mut deferred = Deferred::<_, 64>::new(System::new());
/// let layout = Layout::from_size_align(32, 8).unwrap();
/// let block = deferred.get(layout).unwrap();
/// // SAFETY: got just above with `layout`, put once, not touched afterwards.
/// unsafe { deferred.put(block, layout) };
/// assert_eq!(deferred.waiting().map(|held| held.ptr).collect::<Vec<_>>(), [block]);
/// assert_eq!(deferred.collect(), 1);
/// assert_eq!(deferred.waiting().count(), 0);
/// ```
pub struct Deferred<L: Layer, const CAP: usize = HELD_BLOCKS> {
    queue: HeldQueue,
    inner: L,
}

// SAFETY: the list and the waiting blocks are memory of `L` that this layer alone uses; the
// layer moves between threads with `L`.
unsafe impl<L: Layer + Send, const CAP: usize> Send for Deferred<L, CAP> {}

impl<L: Layer, const CAP: usize> Deferred<L, CAP> {
    /// Checked where the layer is used: `CAP` is between 1 and `HELD_BLOCKS`.
    const CAP_IN_RANGE: () = assert!(
        CAP >= 1 && CAP <= HELD_BLOCKS,
        "Deferred's CAP must be between 1 and HELD_BLOCKS"
    );

    /// Wraps `inner`, with nothing waiting.
    pub const fn new(inner: L) -> Self {
        Deferred {
            queue: HeldQueue::new(),
            inner,
        }
    }

    crate::layer::layer_below! {
        owns: "the blocks waiting on the list and the list's storage";
        into_inner after release: "every waiting block and the list's storage";
    }

    /// The blocks waiting to be released, oldest first.
    pub fn waiting(&self) -> impl Iterator<Item = Held> + '_ {
        self.queue.iter()
    }

    /// Releases every waiting block to `L`, oldest first; returns how many.
    pub fn collect(&mut self) -> usize {
        let mut released = 0;
        while let Some(held) = self.queue.pop() {
            // SAFETY: the block was put to this layer with this layout, and is a block of
            // `L` that nobody has used since.
            unsafe { self.inner.put(held.ptr, held.layout) };
            released += 1;
        }
        released
    }

    /// Collects, and gives the list's storage back to `L`.
    fn release(&mut self) {
        self.collect();
        self.queue.release_storage(&mut self.inner);
    }
}

// SAFETY: blocks come unchanged from `L` and go back to it with the layout they were put
// with; a waiting block is neither handed out again (`L` has not got it back) nor touched;
// the list is a block of `L` no caller sees.
unsafe impl<L: Layer, const CAP: usize> Layer for Deferred<L, CAP> {
    const MIN_ALIGN: usize = L::MIN_ALIGN;
    const ZEROED: bool = L::ZEROED;

    fn get(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        paranoid(self);
        let () = Self::CAP_IN_RANGE;
        self.inner.get(layout)
    }

    unsafe fn put(&mut self, ptr: NonNull<u8>, layout: Layout) {
        paranoid(self);
        require_put::<Self>(ptr, layout);
        if !self.queue.ready(&mut self.inner) {
            // SAFETY: the caller's duties, which are `L`'s for a block of `L`.
            return unsafe { self.inner.put(ptr, layout) };
        }
        if self.queue.len() >= CAP {
            self.collect();
        }
        self.queue.push(Held { ptr, layout });
    }

    fn init() -> Self {
        Self::new(L::init())
    }

    fn deinit(&mut self) {
        // The waiting blocks and the list go down first: a layer below that does not book
        // its blocks (`Ground`, `System`, a `FreeList`'s pass-through) would leak them, and
        // one that checks (`Check`) would report blocks the caller had put as leaks.
        self.release();
        self.inner.deinit();
    }

    crate::layer::resizes_go_below!();

    fn owns(&self, ptr: NonNull<u8>) -> bool {
        self.inner.owns(ptr)
    }

    fn check_invariants(&self) {
        if self.queue.len() > CAP {
            abort_with(format_args!(
                "Deferred invariant broken: {} blocks wait, cap {CAP}",
                self.queue.len()
            ));
        }
        self.inner.check_invariants();
    }
}

impl<L: Layer, const CAP: usize> Drop for Deferred<L, CAP> {
    fn drop(&mut self) {
        self.release();
    }
}

impl<L: Layer + fmt::Debug, const CAP: usize> fmt::Debug for Deferred<L, CAP> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Deferred")
            .field("waiting", &self.queue.len())
            .field("cap", &CAP)
            .field("inner", &self.inner)
            .finish()
    }
}

// SAFETY: every block and the list come from `L`, attributed to the same region.
#[cfg(feature = "std")]
unsafe impl<L: crate::region::Attributed, const CAP: usize> crate::region::Attributed
    for Deferred<L, CAP>
{
    const RECLAIMS: bool = L::RECLAIMS;

    fn attribute(&mut self, owner: crate::region::Attribution) {
        self.inner.attribute(owner);
    }

    fn rewind(&mut self) {
        // As `deinit`: the waiting blocks and the list go down before `L` rewinds.
        self.release();
        self.inner.rewind();
    }
}
