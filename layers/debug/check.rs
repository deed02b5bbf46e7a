//! `Check<L>`: every block put exactly once with the layout it was got with; leaks reported.
//!
//! Invariant (checked by `check_invariants`): the live table (`live_table.rs`, which states
//! its own) holds exactly one slot per block this layer has currently allocated, with the
//! layout the block now fits.

use core::alloc::Layout;
use core::fmt;
use core::ptr::NonNull;

use super::live_table::{LiveTable, Slot};
use crate::abort::abort_with;
use crate::layer::{paranoid, require_grow, require_shrink};
use crate::{Gauge, Gauges, Layer};

/// How many recently put addresses are remembered to tell a double put from a stranger.
const RECENT: usize = 32;

/// Checks every put against the blocks it handed out, and reports leaks.
///
/// `Check` remembers each live block's address and layout in a hash table whose memory it
/// gets from `L` (never from the global allocator), and checks each put:
///
/// - a put of an address that was already put: *double put*;
/// - a put of an address it never handed out: *not a block of this layer*;
/// - a put with a size or alignment other than the one the block was got with: *wrong
///   layout*.
///
/// Sizes of 2^58 bytes or more, which no machine can serve, are refused (`None`) without
/// asking `L`.
///
/// Each is a bug that could corrupt the layers below, and a check may run inside a global
/// allocator where unwinding is not allowed: `Check` writes one line naming the address and
/// both layouts to stderr and aborts the process.
///
/// At [`deinit`](Layer::deinit) (and so on drop), blocks still live are leaks: `Check`
/// returns them to `L` and panics with a [`LeakReport`] (blocks, bytes, sizes), or, when the
/// thread is already panicking, writes the report to stderr. (Without `std` there is no way
/// to tell that a thread is unwinding, so a leak found during a panic panics again, which
/// aborts.) Call [`leaks`](Check::leaks) first to inspect them without failing.
///
/// ```
/// use core::alloc::Layout;
/// use stratalloc::{Layer, layers::{Check, Mmap}};
///
/// let mut check = Check::new(Mmap::new());
/// let layout = Layout::new::<[u8; 24]>();
/// let block = check.get(layout).unwrap();
/// let report = check.leaks().expect("one block is live");
/// assert_eq!((report.blocks(), report.bytes()), (1, 24));
/// // SAFETY: put once, with the layout it was got with.
/// unsafe { check.put(block, layout) };
/// assert!(check.leaks().is_none());
/// ```
pub struct Check<L: Layer> {
    table: LiveTable<u64>,
    figures: Gauges,
    recent: [usize; RECENT],
    recent_next: usize,
    inner: L,
}

// SAFETY: a `Check` exclusively owns its table; the addresses in it are plain numbers.
unsafe impl<L: Layer + Send> Send for Check<L> {}

impl<L: Layer> Check<L> {
    /// A checker over `inner` with no block live.
    pub const fn new(inner: L) -> Self {
        Check {
            table: LiveTable::new(),
            figures: Gauges::ZERO,
            recent: [0; RECENT],
            recent_next: 0,
            inner,
        }
    }

    crate::layer::layer_below! {
        owns: "the blocks this layer tracks, or its table";
    }

    /// Unwraps the layer below. Blocks still live are reported and returned to it first,
    /// as at [`deinit`](Layer::deinit).
    pub fn into_inner(self) -> L {
        let mut report = None;
        // SAFETY: `inner` is a field of the layer.
        let inner = unsafe {
            crate::layer::into_field(self, |this| report = this.release(), |this| &this.inner)
        };
        if let Some(report) = report {
            report_leaks(&report);
        }
        inner
    }

    /// The blocks live now, or `None` when there are none.
    pub fn leaks(&self) -> Option<LeakReport> {
        if self.table.len() == 0 {
            return None;
        }
        let mut report = LeakReport::EMPTY;
        for slot in self.table.iter() {
            report.add(slot.ptr.addr(), slot.size());
        }
        Some(report)
    }

    /// The size of the largest live block whose layout has alignment `align`.
    #[cfg(feature = "std")]
    pub(crate) fn largest_live_with_align(&self, align: usize) -> Option<usize> {
        self.table
            .iter()
            .filter(|slot| slot.align() == align)
            .map(|slot| slot.size())
            .max()
    }

    /// Moves the table to a bigger block from `L`. `None` when `L` has no room for it.
    #[cold]
    fn grow_table(&mut self) -> Option<()> {
        let capacity = self.table.next_capacity();
        let block = self.inner.get(LiveTable::<u64>::block_layout(capacity)?)?;
        // SAFETY: a fresh block of `L` with the table's layout for `capacity`, which
        // `next_capacity` makes a power of two of at least 16 with room for every slot.
        if let Some((old, layout)) = unsafe { self.table.rebuild(block, capacity) } {
            // SAFETY: the previous table block came from `L` with this layout.
            unsafe { self.inner.put(old, layout) };
        }
        Some(())
    }

    /// The slot of a block being put or resized, or an abort naming what is wrong.
    fn expect_live(&self, ptr: NonNull<u8>, layout: Layout, what: &str) -> usize {
        let addr = ptr.as_ptr().addr();
        let Some(i) = self.table.find(addr) else {
            if self.recent.contains(&addr) {
                abort_with(format_args!(
                    "Check: double {what} of {ptr:p} (size {}, align {}): it was already put",
                    layout.size(),
                    layout.align()
                ))
            }
            abort_with(format_args!(
                "Check: {what} of {ptr:p} (size {}, align {}), which is not a live block of this layer",
                layout.size(),
                layout.align()
            ))
        };
        let slot = self.table.slot(i);
        if Slot::pack(layout) != Some(slot.value) {
            abort_with(format_args!(
                "Check: {what} of {ptr:p} with size {}, align {}, but it was got with size {}, align {}",
                layout.size(),
                layout.align(),
                slot.size(),
                slot.align()
            ))
        }
        i
    }

    /// Ends the table: returns live blocks (leaks) and the table to `L`. Returns the report
    /// of the leaks, if any.
    fn release(&mut self) -> Option<LeakReport> {
        let report = self.leaks();
        for slot in self.table.iter() {
            // SAFETY: a live slot records a block got from `L` with this layout; `deinit`
            // ends it, so it goes back to `L` once.
            unsafe {
                self.inner
                    .put(NonNull::new_unchecked(slot.ptr), slot.unpack())
            };
        }
        if let Some((block, layout)) = self.table.block() {
            // SAFETY: the table block came from `L` with this layout and is not used again.
            unsafe { self.inner.put(block, layout) };
        }
        self.table.clear();
        self.figures.record_all_ended();
        report
    }
}

impl<L: Layer> Gauge for Check<L> {
    fn gauge(&self) -> Gauges {
        self.figures
    }
}

// SAFETY: blocks come unchanged from `L`; every put reaching `L` is of a live block with
// the layout it was got with (anything else aborts before reaching `L`).
unsafe impl<L: Layer> Layer for Check<L> {
    const MIN_ALIGN: usize = L::MIN_ALIGN;
    const OWNS_EXACT: bool = true;
    const ZEROED: bool = L::ZEROED;

    fn get(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        paranoid(self);
        let packed = Slot::pack(layout)?;
        if self.table.is_full() {
            self.grow_table()?;
        }
        let block = self.inner.get(layout)?;
        let slot = Slot {
            ptr: block.as_ptr(),
            value: packed,
        };
        if self.table.insert(slot).is_err() {
            abort_with(format_args!(
                "Check: the layer below handed out {block:p} while it was still live"
            ));
        }
        self.figures.record_get(layout.size());
        Some(block)
    }

    unsafe fn put(&mut self, ptr: NonNull<u8>, layout: Layout) {
        paranoid(self);
        // Every duty of `put`, checked exactly (in release builds too).
        let i = self.expect_live(ptr, layout, "put");
        self.table.remove(i);
        self.recent[self.recent_next] = ptr.as_ptr().addr();
        self.recent_next = (self.recent_next + 1) % RECENT;
        self.figures.record_put(layout.size());
        // SAFETY: the block is live in `L` and `layout` is the one it was got with.
        unsafe { self.inner.put(ptr, layout) }
    }

    fn init() -> Self {
        Self::new(L::init())
    }

    fn deinit(&mut self) {
        let report = self.release();
        self.inner.deinit();
        if let Some(report) = report {
            report_leaks(&report);
        }
    }

    unsafe fn grow(&mut self, ptr: NonNull<u8>, old: Layout, new: Layout) -> bool {
        paranoid(self);
        // The block and `old` first, with `Check`'s exact messages; then the duties on `new`.
        let i = self.expect_live(ptr, old, "grow");
        require_grow::<Self>(ptr, old, new);
        let Some(packed) = Slot::pack(new) else {
            return false;
        };
        // SAFETY: checked above that the block is live with layout `old`.
        let grown = unsafe { self.inner.grow(ptr, old, new) };
        if grown {
            self.table.set_value(i, packed);
            self.figures.record_growth(new.size() - old.size());
        }
        grown
    }

    unsafe fn shrink(&mut self, ptr: NonNull<u8>, old: Layout, new: Layout) -> bool {
        paranoid(self);
        let i = self.expect_live(ptr, old, "shrink");
        require_shrink::<Self>(ptr, old, new);
        // SAFETY: checked above that the block is live with layout `old`.
        let shrunk = unsafe { self.inner.shrink(ptr, old, new) };
        if shrunk {
            // A size below one that packed packs too.
            self.table.set_value(i, Slot::pack(new).unwrap_or(0));
            self.figures.record_shrinking(old.size() - new.size());
        }
        shrunk
    }

    fn check_invariants(&self) {
        if let Err(broken) = self.table.check_invariants() {
            abort_with(format_args!("Check invariant broken: {broken}"));
        }
        if self.table.len() as u64 != self.figures.live {
            abort_with(format_args!(
                "Check invariant broken: table and gauges disagree"
            ));
        }
        self.inner.check_invariants();
    }

    fn leak_report(&self) -> Option<LeakReport> {
        self.leaks()
    }

    fn owns(&self, ptr: NonNull<u8>) -> bool {
        self.table.find(ptr.as_ptr().addr()).is_some()
    }
}

impl<L: Layer> Drop for Check<L> {
    fn drop(&mut self) {
        self.deinit();
    }
}

impl<L: Layer + fmt::Debug> fmt::Debug for Check<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Check")
            .field("live", &self.table.len())
            .field("gauges", &format_args!("{}", self.figures))
            .field("inner", &self.inner)
            .finish()
    }
}

/// Fails loudly about leaks found at deinit: a panic carrying the report, or, when the
/// thread is already unwinding (a second panic would abort), the report on stderr.
#[cold]
fn report_leaks(report: &LeakReport) {
    #[cfg(feature = "std")]
    if std::thread::panicking() {
        use core::fmt::Write as _;
        let mut line = crate::abort::LineBuffer::new();
        let _ = writeln!(line, "stratalloc: Check: {report}");
        crate::abort::write_stderr(line.as_str().as_bytes());
        return;
    }
    panic!("stratalloc: Check: {report}");
}

/// Size classes of a [`LeakReport`]: class 0 is size 0, class `k` holds sizes in
/// `2^(k-1) ..= 2^k - 1`.
const CLASSES: usize = usize::BITS as usize + 1;
/// Addresses kept in a [`LeakReport`].
const SAMPLES: usize = 8;

/// What was still live when a [`Check`] ended: block and byte counts, a histogram of sizes
/// by power of two, and the first few addresses. It allocates nothing, so it can be built
/// where the global allocator is off limits.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct LeakReport {
    blocks: u64,
    bytes: u64,
    by_class: [u64; CLASSES],
    sample: [(usize, usize); SAMPLES],
    sampled: usize,
}

impl LeakReport {
    const EMPTY: LeakReport = LeakReport {
        blocks: 0,
        bytes: 0,
        by_class: [0; CLASSES],
        sample: [(0, 0); SAMPLES],
        sampled: 0,
    };

    fn add(&mut self, addr: usize, size: usize) {
        self.blocks += 1;
        self.bytes += size as u64;
        self.by_class[(usize::BITS - size.leading_zeros()) as usize] += 1;
        if self.sampled < SAMPLES {
            self.sample[self.sampled] = (addr, size);
            self.sampled += 1;
        }
    }

    /// How many blocks leaked.
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    /// How many bytes they hold, counting the sizes callers asked for.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The size histogram: `(smallest, largest, blocks)` for each power-of-two size range
    /// that holds any leaked block, smallest first.
    pub fn sizes(&self) -> impl Iterator<Item = (usize, usize, u64)> + '_ {
        self.by_class
            .iter()
            .enumerate()
            .filter(|&(_, &count)| count > 0)
            .map(|(class, &count)| match class {
                0 => (0, 0, count),
                _ => (
                    1usize << (class - 1),
                    usize::MAX >> (usize::BITS as usize - class),
                    count,
                ),
            })
    }

    /// Up to eight leaked blocks as `(address, size)`, in no particular order.
    pub fn sample(&self) -> &[(usize, usize)] {
        &self.sample[..self.sampled]
    }
}

/// With the `serde` feature: `blocks`, `bytes`, `sizes` as a list of
/// `{ smallest, largest, blocks }` ([`sizes`](LeakReport::sizes)) and `sample` as a list of
/// `{ address, size }` ([`sample`](LeakReport::sample)). Written by hand, so that the output
/// holds what the accessors show, not the fixed-size arrays behind them; it allocates
/// nothing.
#[cfg(feature = "serde")]
impl serde::Serialize for LeakReport {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct as _;

        #[derive(serde::Serialize)]
        struct SizeRange {
            smallest: usize,
            largest: usize,
            blocks: u64,
        }
        #[derive(serde::Serialize)]
        struct Sample {
            address: usize,
            size: usize,
        }
        /// The histogram and the sample, as sequences written straight from the report.
        struct Sizes<'a>(&'a LeakReport);
        struct Samples<'a>(&'a LeakReport);
        impl serde::Serialize for Sizes<'_> {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_seq(self.0.sizes().map(|(smallest, largest, blocks)| {
                    SizeRange {
                        smallest,
                        largest,
                        blocks,
                    }
                }))
            }
        }
        impl serde::Serialize for Samples<'_> {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_seq(
                    self.0
                        .sample()
                        .iter()
                        .map(|&(address, size)| Sample { address, size }),
                )
            }
        }

        let mut out = serializer.serialize_struct("LeakReport", 4)?;
        out.serialize_field("blocks", &self.blocks)?;
        out.serialize_field("bytes", &self.bytes)?;
        out.serialize_field("sizes", &Sizes(self))?;
        out.serialize_field("sample", &Samples(self))?;
        out.end()
    }
}

impl fmt::Display for LeakReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} block{} ({} bytes) still live; sizes:",
            self.blocks,
            if self.blocks == 1 { "" } else { "s" },
            self.bytes
        )?;
        for (low, high, count) in self.sizes() {
            if low == high {
                write!(f, " {low} B x{count}")?;
            } else {
                write!(f, " {low}-{high} B x{count}")?;
            }
        }
        write!(f, "; at")?;
        for (addr, size) in self.sample() {
            write!(f, " {addr:#x} ({size} B)")?;
        }
        if self.blocks > self.sampled as u64 {
            write!(f, " and {} more", self.blocks - self.sampled as u64)?;
        }
        Ok(())
    }
}

impl fmt::Debug for LeakReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LeakReport({self})")
    }
}

// SAFETY: every block comes from `L`, attributed to the same region.
#[cfg(feature = "std")]
unsafe impl<L: crate::region::Attributed> crate::region::Attributed for Check<L> {
    const RECLAIMS: bool = L::RECLAIMS;

    fn attribute(&mut self, owner: crate::region::Attribution) {
        self.inner.attribute(owner);
    }
}
