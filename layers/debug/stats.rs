//! `Stats<L>`: counts gets, puts, bytes, live blocks and the peak, read through [`Gauge`].

use core::alloc::Layout;
use core::fmt;
use core::ptr::NonNull;

use crate::layer::{paranoid, require_grow, require_put, require_shrink};
use crate::{Gauge, Gauges, Layer};

/// Counts the traffic through it and forwards everything to `L` unchanged.
///
/// Sizes are the sizes callers asked for. In-place growth counts as bytes got, in-place
/// shrinking as bytes put, so `live_bytes == bytes_got - bytes_put` always holds.
///
/// ```
/// use core::alloc::Layout;
/// use stratalloc::{Gauge, Layer, layers::{Buffer, Stats}};
///
/// let mut memory = [core::mem::MaybeUninit::uninit(); 256];
/// let mut stats = Stats::new(Buffer::new(&mut memory));
/// let layout = Layout::new::<u64>();
/// let block = stats.get(layout).unwrap();
/// assert_eq!(stats.gauge().live_bytes, 8);
/// // SAFETY: `block` came from `stats` with `layout` and is put back once.
/// unsafe { stats.put(block, layout) };
/// assert_eq!((stats.gauge().gets, stats.gauge().puts), (1, 1));
/// ```
pub struct Stats<L> {
    figures: Gauges,
    inner: L,
}

impl<L> Stats<L> {
    /// Wraps `inner`, with every count at zero.
    pub const fn new(inner: L) -> Self {
        Stats {
            figures: Gauges::ZERO,
            inner,
        }
    }

    crate::layer::layer_below! {
        owns: "the blocks this layer got from the inner one";
        /// Unwraps the layer below. Blocks got through `Stats` now belong to whoever owned them
        /// and go back straight to the returned layer.
        into_inner;
    }

    /// Starts the counts afresh: the blocks live now count as got (so `gets == live`,
    /// `bytes_got == live_bytes`), puts restart at zero and the peak at what is live.
    pub fn clear(&mut self) {
        self.figures.restart();
    }
}

impl<L> Gauge for Stats<L> {
    fn gauge(&self) -> Gauges {
        self.figures
    }
}

// SAFETY: every block comes unchanged from `L`, and every call is forwarded to `L` with
// the caller's duties passed on; the counting touches no memory of the blocks.
unsafe impl<L: Layer> Layer for Stats<L> {
    const MIN_ALIGN: usize = L::MIN_ALIGN;
    const OWNS_EXACT: bool = L::OWNS_EXACT;
    const OWNS_INTERIOR: bool = L::OWNS_INTERIOR;
    const ZEROED: bool = L::ZEROED;

    #[inline]
    fn get(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        paranoid(self);
        let block = self.inner.get(layout)?;
        self.figures.record_get(layout.size());
        Some(block)
    }

    #[inline]
    unsafe fn put(&mut self, ptr: NonNull<u8>, layout: Layout) {
        paranoid(self);
        require_put::<Self>(ptr, layout);
        self.figures.record_put(layout.size());
        // SAFETY: the caller keeps `put`'s duties for this layer, which are `L`'s duties
        // for a block that this layer got from `L`.
        unsafe { self.inner.put(ptr, layout) }
    }

    fn init() -> Self {
        Self::new(L::init())
    }

    fn deinit(&mut self) {
        // Every block ends here: they count as put.
        self.figures.record_all_ended();
        self.inner.deinit();
    }

    unsafe fn grow(&mut self, ptr: NonNull<u8>, old: Layout, new: Layout) -> bool {
        paranoid(self);
        require_grow::<Self>(ptr, old, new);
        // SAFETY: forwarded with the caller's duties unchanged.
        let grown = unsafe { self.inner.grow(ptr, old, new) };
        if grown {
            self.figures.record_growth(new.size() - old.size());
        }
        grown
    }

    unsafe fn shrink(&mut self, ptr: NonNull<u8>, old: Layout, new: Layout) -> bool {
        paranoid(self);
        require_shrink::<Self>(ptr, old, new);
        // SAFETY: forwarded with the caller's duties unchanged.
        let shrunk = unsafe { self.inner.shrink(ptr, old, new) };
        if shrunk {
            self.figures.record_shrinking(old.size() - new.size());
        }
        shrunk
    }

    fn owns(&self, ptr: NonNull<u8>) -> bool {
        self.inner.owns(ptr)
    }

    fn leak_report(&self) -> Option<crate::LeakReport> {
        self.inner.leak_report()
    }

    fn check_invariants(&self) {
        let f = &self.figures;
        if f.live != f.gets.wrapping_sub(f.puts)
            || f.live_bytes != f.bytes_got.wrapping_sub(f.bytes_put)
            || f.live_bytes > f.peak_bytes
        {
            crate::abort::abort_with(format_args!("Stats invariant broken: {f}"));
        }
        self.inner.check_invariants();
    }
}

impl<L: fmt::Debug> fmt::Debug for Stats<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stats")
            .field("gauges", &format_args!("{}", self.figures))
            .field("inner", &self.inner)
            .finish()
    }
}

// SAFETY: every block comes from `L`, attributed to the same region.
#[cfg(feature = "std")]
unsafe impl<L: crate::region::Attributed> crate::region::Attributed for Stats<L> {
    const RECLAIMS: bool = L::RECLAIMS;

    fn attribute(&mut self, owner: crate::region::Attribution) {
        self.inner.attribute(owner);
    }

    fn rewind(&mut self) {
        // Every block ends here: they count as put.
        self.figures.record_all_ended();
        self.inner.rewind();
    }
}
