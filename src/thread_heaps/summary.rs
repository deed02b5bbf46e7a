//! The heap summary: the figures a [`ThreadHeaps`] keeps while counting is on (shared
//! atomics, written by the allocation paths' slow halves), and [`HeapSummary`], the report
//! built from them without allocating (what the malloc replacement prints at exit).

use core::fmt;
use core::sync::atomic::{AtomicUsize, Ordering};

use super::{BigSource, HeapSlab, SlabSource, ThreadHeaps};
use crate::Layer;
use crate::layer::Measured;

/// Figures kept while counting is on (see [`ThreadHeaps::set_counting`]), for the heap
/// summary: atomics shared by all threads.
pub(super) struct Counters {
    allocations: AtomicUsize,
    frees: AtomicUsize,
    bytes_allocated: AtomicUsize,
    live_bytes: AtomicUsize,
    live_blocks: AtomicUsize,
    peak_bytes: AtomicUsize,
    /// Blocks live when `peak_bytes` was last raised.
    peak_blocks: AtomicUsize,
    /// Live blocks per slab class (large blocks are found by walking `Large`).
    live: [AtomicUsize; HeapSlab::CLASSES],
}

impl Counters {
    /// No figures yet.
    pub(super) const fn new() -> Self {
        #[allow(clippy::declare_interior_mutable_const)] // copied into each field, never shared
        const ZERO: AtomicUsize = AtomicUsize::new(0);
        Counters {
            allocations: ZERO,
            frees: ZERO,
            bytes_allocated: ZERO,
            live_bytes: ZERO,
            live_blocks: ZERO,
            peak_bytes: ZERO,
            peak_blocks: ZERO,
            live: [ZERO; HeapSlab::CLASSES],
        }
    }

    /// Counts a block handed out: of a slab class, or a large one (`None`).
    #[cold]
    pub(super) fn count_get(&self, class: Option<usize>, size: usize) {
        let c = self;
        c.allocations.fetch_add(1, Ordering::Relaxed);
        c.bytes_allocated.fetch_add(size, Ordering::Relaxed);
        if let Some(class) = class {
            c.live[class].fetch_add(1, Ordering::Relaxed);
        }
        let blocks = c
            .live_blocks
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_add(1);
        self.count_growth(size, blocks);
    }

    /// Adds `size` live bytes (a block handed out or grown in place), raising the peak.
    pub(super) fn count_growth(&self, size: usize, blocks: usize) {
        let c = self;
        let live = c
            .live_bytes
            .fetch_add(size, Ordering::Relaxed)
            .wrapping_add(size);
        if c.peak_bytes.fetch_max(live, Ordering::Relaxed) < live {
            c.peak_blocks.store(blocks, Ordering::Relaxed);
        }
    }

    /// Counts `bytes` more in a block that grew in place.
    pub(super) fn count_grown_in_place(&self, bytes: usize) {
        self.bytes_allocated.fetch_add(bytes, Ordering::Relaxed);
        self.count_growth(bytes, self.live_blocks.load(Ordering::Relaxed));
    }

    /// Counts a block taken back.
    #[cold]
    pub(super) fn count_put(&self, class: Option<usize>, size: usize) {
        let c = self;
        c.frees.fetch_add(1, Ordering::Relaxed);
        // A block handed out before counting began, freed now, would take a count below
        // zero: the counts stop at zero instead (so that no later figure, the peak above
        // all, starts from a wrapped one).
        if let Some(class) = class {
            subtract_down_to_zero(&c.live[class], 1);
        }
        subtract_down_to_zero(&c.live_blocks, 1);
        subtract_down_to_zero(&c.live_bytes, size);
    }
}

/// Takes `n` off `count`, stopping at zero.
fn subtract_down_to_zero(count: &AtomicUsize, n: usize) {
    let _ = count.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |now| {
        Some(now.saturating_sub(n))
    });
}

impl<Large: Measured + Send> ThreadHeaps<Large> {
    /// The figures counted since counting was turned on (see
    /// [`set_counting`](ThreadHeaps::set_counting)): totals, the peak, and the blocks live
    /// now by size (slab blocks by class, large blocks found by walking `Large` under its
    /// lock). It allocates nothing, so it can run at exit inside a malloc replacement.
    pub fn summary(&self) -> HeapSummary
    where
        Large: LiveBlocks,
    {
        let c = &self.counters;
        let mut summary = HeapSummary {
            allocations: c.allocations.load(Ordering::Relaxed),
            frees: c.frees.load(Ordering::Relaxed),
            bytes_allocated: c.bytes_allocated.load(Ordering::Relaxed),
            peak_bytes: c.peak_bytes.load(Ordering::Relaxed),
            peak_blocks: c.peak_blocks.load(Ordering::Relaxed),
            heaps: self.heaps(),
            reserved_bytes: SlabSource::handle().used_bytes() + BigSource::handle().used_bytes(),
            sizes: [(0, 0); SUMMARY_SIZES],
            kinds: 0,
            other_blocks: 0,
            other_bytes: 0,
        };
        for (class, live) in c.live.iter().enumerate() {
            summary.add(HeapSlab::class_size(class), live.load(Ordering::Relaxed));
        }
        self.with_large(|large| large.for_each_live(|size| summary.add(size, 1)));
        summary
    }
}

/// A layer that can list the sizes of its live blocks, for [`ThreadHeaps::summary`].
pub trait LiveBlocks {
    /// Calls `f` with the usable size of every live block.
    fn for_each_live(&self, f: impl FnMut(usize));
}

impl<L: Layer, const ARENA: usize, const KEEP: usize> LiveBlocks
    for crate::layers::Coalesce<L, ARENA, KEEP>
{
    fn for_each_live(&self, f: impl FnMut(usize)) {
        crate::layers::Coalesce::for_each_live(self, f);
    }
}

/// Distinct block sizes a [`HeapSummary`] lists one by one (the rest are summed).
pub const SUMMARY_SIZES: usize = 256;

/// The figures of a [`ThreadHeaps`] allocator: totals, the peak, live blocks by size.
/// `Display` writes the heap summary the malloc replacement prints at exit:
///
/// ```text
/// stratalloc heap summary (pid 4242)
/// totals: 5 allocations, 2 frees, 9092980 bytes allocated
/// peak: 8388608 bytes live in 1 blocks
/// live blocks by size:
///   48 B x 1
///   704512 B x 1
/// leaks: 2 blocks, 704560 bytes
/// ```
///
/// Sizes are usable sizes (a slab class, or a large block's bytes). "Leaks" are all the
/// blocks still live when the summary is taken; at exit, that is what the program never
/// freed (the C library's own buffers included).
#[derive(Clone, Copy, Debug)]
pub struct HeapSummary {
    /// Blocks handed out.
    pub allocations: usize,
    /// Blocks given back.
    pub frees: usize,
    /// Bytes handed out, in usable sizes (growth in place included).
    pub bytes_allocated: usize,
    /// The most bytes live at once.
    pub peak_bytes: usize,
    /// Blocks live at that peak.
    pub peak_blocks: usize,
    /// Thread heaps made.
    pub heaps: usize,
    /// Bytes of the reserves ever handed out for slabs, of every size (the high-water
    /// mark of the thread heaps' address space; slabs given back are reused from it).
    pub reserved_bytes: usize,
    /// Live blocks as `(size, count)`, ascending by size; `kinds` entries are used.
    pub sizes: [(usize, usize); SUMMARY_SIZES],
    /// Entries of `sizes` in use.
    pub kinds: usize,
    /// Live blocks past the first `SUMMARY_SIZES` distinct sizes.
    pub other_blocks: usize,
    /// Their bytes.
    pub other_bytes: usize,
}

/// With the `serde` feature: the figures under their field names, `sizes` as the listed
/// `[size, count]` pairs only ([`by_size`](HeapSummary::by_size), without `kinds`), and
/// `live_blocks` and `live_bytes` added. Written by hand: serde derives nothing for the
/// 256-entry array, whose unused entries would only be noise.
#[cfg(feature = "serde")]
impl serde::Serialize for HeapSummary {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct as _;
        let mut out = serializer.serialize_struct("HeapSummary", 12)?;
        out.serialize_field("allocations", &self.allocations)?;
        out.serialize_field("frees", &self.frees)?;
        out.serialize_field("bytes_allocated", &self.bytes_allocated)?;
        out.serialize_field("peak_bytes", &self.peak_bytes)?;
        out.serialize_field("peak_blocks", &self.peak_blocks)?;
        out.serialize_field("heaps", &self.heaps)?;
        out.serialize_field("reserved_bytes", &self.reserved_bytes)?;
        out.serialize_field("sizes", self.by_size())?;
        out.serialize_field("other_blocks", &self.other_blocks)?;
        out.serialize_field("other_bytes", &self.other_bytes)?;
        out.serialize_field("live_blocks", &self.live_blocks())?;
        out.serialize_field("live_bytes", &self.live_bytes())?;
        out.end()
    }
}

impl HeapSummary {
    /// Counts `count` live blocks of `size` bytes, keeping `sizes` sorted.
    fn add(&mut self, size: usize, count: usize) {
        if count == 0 {
            return;
        }
        let used = &mut self.sizes[..self.kinds];
        match used.binary_search_by_key(&size, |&(s, _)| s) {
            Ok(at) => used[at].1 = used[at].1.saturating_add(count),
            Err(at) if self.kinds < SUMMARY_SIZES => {
                self.sizes.copy_within(at..self.kinds, at + 1);
                self.sizes[at] = (size, count);
                self.kinds += 1;
            }
            Err(_) => {
                self.other_blocks = self.other_blocks.saturating_add(count);
                self.other_bytes = self.other_bytes.saturating_add(size.saturating_mul(count));
            }
        }
    }

    /// The live blocks listed by size.
    pub fn by_size(&self) -> &[(usize, usize)] {
        &self.sizes[..self.kinds]
    }

    /// Blocks still live.
    pub fn live_blocks(&self) -> usize {
        let listed = self
            .by_size()
            .iter()
            .fold(0usize, |sum, &(_, n)| sum.saturating_add(n));
        listed.saturating_add(self.other_blocks)
    }

    /// Bytes still live (usable sizes).
    pub fn live_bytes(&self) -> usize {
        let listed = self.by_size().iter().fold(0usize, |sum, &(s, n)| {
            sum.saturating_add(s.saturating_mul(n))
        });
        listed.saturating_add(self.other_bytes)
    }
}

impl fmt::Display for HeapSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pid = crate::os::process_id();
        writeln!(f, "stratalloc heap summary (pid {pid})")?;
        writeln!(
            f,
            "totals: {} allocations, {} frees, {} bytes allocated",
            self.allocations, self.frees, self.bytes_allocated
        )?;
        writeln!(
            f,
            "peak: {} bytes live in {} blocks",
            self.peak_bytes, self.peak_blocks
        )?;
        writeln!(f, "live blocks by size:")?;
        for &(size, n) in self.by_size() {
            writeln!(f, "  {size} B x {n}")?;
        }
        if self.other_blocks > 0 {
            writeln!(
                f,
                "  (other sizes: {} blocks, {} bytes)",
                self.other_blocks, self.other_bytes
            )?;
        }
        writeln!(
            f,
            "leaks: {} blocks, {} bytes",
            self.live_blocks(),
            self.live_bytes()
        )?;
        writeln!(
            f,
            "thread heaps: {}; slab space used: {} bytes",
            self.heaps, self.reserved_bytes
        )
    }
}
