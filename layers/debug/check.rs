//! `Check<L>`: every block put exactly once with the layout it was got with; leaks reported.
//!
//! Invariant (checked by `check_invariants`): the live table (`live_table.rs`, which states
//! its own) holds exactly one slot per block this layer has currently allocated, with the
//! layout the block now fits.

use core::alloc::Layout;
use core::fmt;
use core::ptr::NonNull;

#[cfg(feature = "std")]
use super::call_sites::SourceFrame;
use super::call_sites::{CallSites, Stack};
use super::live_table::{Checked, LiveTable, Slot, pack_layout};
use crate::abort::abort_with;
use crate::layer::{paranoid, require_grow, require_shrink};
use crate::{Gauge, Gauges, Layer};

/// What is live from one call site: blocks and their bytes.
#[derive(Clone, Copy, Default)]
struct Live {
    blocks: u64,
    bytes: u64,
}

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
/// With [`record_call_sites`](Check::record_call_sites) on, each block also remembers the
/// call stack that allocated it (return addresses, interned per distinct stack in memory
/// from `L`), and the report groups the leaks by call site, symbolised when it is read. A
/// stack costs about 2.5 µs through the unwinder, or tens of nanoseconds from frame
/// records in a build with frame pointers
/// ([`CHEAP_CALL_SITES`](crate::region::CHEAP_CALL_SITES)); it is off by default.
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
    table: LiveTable<Checked>,
    sites: CallSites<Live>,
    recording: bool,
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
            sites: CallSites::new(),
            recording: false,
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

    /// Whether blocks got from now on remember the call stack that allocated them (see
    /// the type's documentation); blocks got before keep what they have.
    pub fn record_call_sites(&mut self, on: bool) {
        self.recording = on;
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
        for site in self.sites.iter().filter(|site| site.counts.blocks > 0) {
            report.add_site(&site.stack, site.counts.blocks, site.counts.bytes);
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

    /// Adds a block (`block` 1, or -1 to take one away, or 0) and `bytes` to what is live
    /// from call site `site`; nothing for site 0.
    fn count(&mut self, site: u32, block: i64, bytes: i64) {
        if let Some(live) = self.sites.counts_mut(site) {
            live.blocks = live.blocks.wrapping_add_signed(block);
            live.bytes = live.bytes.wrapping_add_signed(bytes);
        }
    }

    /// The call site of the block being got, interned, with `size` bytes counted to it:
    /// out of line, as recording is off by default.
    #[cold]
    #[inline(never)]
    fn record_site(&mut self, size: usize) -> u32 {
        let site = self.sites.intern(&Stack::capture(), &mut self.inner);
        self.count(site, 1, size as i64);
        site
    }

    /// The slot of a block being put or resized, or an abort naming what is wrong.
    #[inline(always)]
    fn expect_live(&self, ptr: NonNull<u8>, layout: Layout, what: &str) -> usize {
        if let Some(i) = self.table.find(ptr.as_ptr().addr())
            && pack_layout(layout) == Some(self.table.slot(i).value.layout)
        {
            return i;
        }
        self.not_live(ptr, layout, what)
    }

    /// Aborts, naming what is wrong with a put or resize of `ptr` with `layout` that
    /// [`expect_live`](Self::expect_live) refused: out of line, so that the usual put
    /// keeps no registers for the messages.
    #[cold]
    #[inline(never)]
    fn not_live(&self, ptr: NonNull<u8>, layout: Layout, what: &str) -> ! {
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
        abort_with(format_args!(
            "Check: {what} of {ptr:p} with size {}, align {}, but it was got with size {}, align {}",
            layout.size(),
            layout.align(),
            slot.size(),
            slot.align()
        ))
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
        self.table.release_to(&mut self.inner);
        self.sites.release(&mut self.inner);
        self.figures.record_all_ended();
        report
    }
}

impl<L: Layer> Gauge for Check<L> {
    fn gauge(&self) -> Gauges {
        self.figures
    }
}

/// Aborts: the layer below handed out a block that is still live.
#[cold]
#[inline(never)]
fn handed_out_twice(block: NonNull<u8>) -> ! {
    abort_with(format_args!(
        "Check: the layer below handed out {block:p} while it was still live"
    ))
}

// SAFETY: blocks come unchanged from `L`; every put reaching `L` is of a live block with
// the layout it was got with (anything else aborts before reaching `L`).
unsafe impl<L: Layer> Layer for Check<L> {
    const MIN_ALIGN: usize = L::MIN_ALIGN;
    const OWNS_EXACT: bool = true;
    const OWNS_INTERIOR: bool = L::OWNS_INTERIOR;
    const ZEROED: bool = L::ZEROED;

    fn get(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        paranoid(self);
        let packed = pack_layout(layout)?;
        if self.table.is_full() {
            self.table.grow_from(&mut self.inner)?;
        }
        let block = self.inner.get(layout)?;
        let site = if self.recording {
            self.record_site(layout.size())
        } else {
            0
        };
        let slot = Slot {
            ptr: block.as_ptr(),
            value: Checked {
                layout: packed,
                site,
            },
        };
        if self.table.insert(slot).is_err() {
            handed_out_twice(block);
        }
        self.figures.record_get(layout.size());
        Some(block)
    }

    unsafe fn put(&mut self, ptr: NonNull<u8>, layout: Layout) {
        paranoid(self);
        // Every duty of `put`, checked exactly (in release builds too).
        let i = self.expect_live(ptr, layout, "put");
        let site = self.table.slot(i).value.site;
        self.count(site, -1, -(layout.size() as i64));
        self.table.remove(i);
        self.recent[self.recent_next % RECENT] = ptr.as_ptr().addr();
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
        let Some(packed) = pack_layout(new) else {
            return false;
        };
        // SAFETY: checked above that the block is live with layout `old`.
        let grown = unsafe { self.inner.grow(ptr, old, new) };
        if grown {
            let site = self.table.slot(i).value.site;
            self.table.set_value(
                i,
                Checked {
                    layout: packed,
                    site,
                },
            );
            self.count(site, 0, new.size() as i64 - old.size() as i64);
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
            let site = self.table.slot(i).value.site;
            // A size below one that packed packs too.
            let layout = pack_layout(new).unwrap_or(0);
            self.table.set_value(i, Checked { layout, site });
            self.count(site, 0, new.size() as i64 - old.size() as i64);
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
        if let Err(broken) = self.sites.check_invariants() {
            abort_with(format_args!("Check invariant broken: {broken}"));
        }
        let attributed = self.table.iter().filter(|slot| slot.value.site != 0);
        let (blocks, bytes) = attributed.fold((0u64, 0u64), |(blocks, bytes), slot| {
            (blocks + 1, bytes + slot.size() as u64)
        });
        let (site_blocks, site_bytes) = self.sites.iter().fold((0u64, 0u64), |(b, n), site| {
            (
                b.wrapping_add(site.counts.blocks),
                n.wrapping_add(site.counts.bytes),
            )
        });
        if (blocks, bytes) != (site_blocks, site_bytes) {
            abort_with(format_args!(
                "Check invariant broken: the call sites count {site_blocks} blocks \
                 ({site_bytes} bytes), the table {blocks} ({bytes} bytes)"
            ));
        }
        self.inner.check_invariants();
    }

    fn leak_report(&self) -> Option<LeakReport> {
        self.leaks()
    }

    /// A live block's start (from the table), or, when `L` answers for the addresses
    /// inside its blocks, any address `L` owns (all of `L`'s memory is this layer's).
    fn owns(&self, ptr: NonNull<u8>) -> bool {
        self.table.find(ptr.as_ptr().addr()).is_some() || (L::OWNS_INTERIOR && self.inner.owns(ptr))
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
/// Call sites kept in a [`LeakReport`], those that leaked the most bytes.
const SITES: usize = 8;

/// One call site's share of a leak, as a [`LeakReport`] keeps it.
#[derive(Clone, Copy, PartialEq, Eq)]
struct SiteShare {
    stack: Stack,
    blocks: u64,
    bytes: u64,
}

impl SiteShare {
    const EMPTY: SiteShare = SiteShare {
        stack: Stack::EMPTY,
        blocks: 0,
        bytes: 0,
    };
}

/// What was still live when a [`Check`] ended: block and byte counts, a histogram of sizes
/// by power of two, the first few addresses and, when the checker recorded call sites, the
/// eight sites that leaked the most bytes (with a total for the rest). It allocates
/// nothing, so it can be built where the global allocator is off limits; the call sites'
/// addresses are symbolised when they are read ([`CallSite::frames`], `Display`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct LeakReport {
    blocks: u64,
    bytes: u64,
    by_class: [u64; CLASSES],
    sample: [(usize, usize); SAMPLES],
    sampled: usize,
    /// The sites that leaked the most bytes, the most first (`sited` of them).
    sites: [SiteShare; SITES],
    sited: usize,
    /// The sites left out of `sites`, with their blocks and bytes.
    other_sites: (u64, u64, u64),
}

impl LeakReport {
    const EMPTY: LeakReport = LeakReport {
        blocks: 0,
        bytes: 0,
        by_class: [0; CLASSES],
        sample: [(0, 0); SAMPLES],
        sampled: 0,
        sites: [SiteShare::EMPTY; SITES],
        sited: 0,
        other_sites: (0, 0, 0),
    };

    /// Counts a site's live blocks: kept among the eight with the most bytes, or added to
    /// the rest.
    fn add_site(&mut self, stack: &Stack, blocks: u64, bytes: u64) {
        let mut share = SiteShare {
            stack: *stack,
            blocks,
            bytes,
        };
        let kept = &mut self.sites[..self.sited];
        let at = kept.iter().position(|kept| kept.bytes < bytes);
        if self.sited < SITES {
            self.sites[self.sited] = share;
            self.sited += 1;
            let at = at.unwrap_or(self.sited - 1);
            self.sites[at..self.sited].rotate_right(1);
            return;
        }
        if let Some(at) = at {
            // The smallest kept share moves to the rest.
            core::mem::swap(&mut share, &mut self.sites[SITES - 1]);
            self.sites[at..].rotate_right(1);
        }
        self.other_sites.0 += 1;
        self.other_sites.1 += share.blocks;
        self.other_sites.2 += share.bytes;
    }

    /// The call sites that leaked the most bytes (up to eight), the most first; none when
    /// the checker did not record call sites.
    pub fn call_sites(&self) -> impl Iterator<Item = CallSite<'_>> + '_ {
        self.sites[..self.sited].iter().map(|share| CallSite {
            blocks: share.blocks,
            bytes: share.bytes,
            addresses: share.stack.frames(),
        })
    }

    /// The call sites left out of [`call_sites`](Self::call_sites): how many, and their
    /// blocks and bytes.
    pub fn other_call_sites(&self) -> (u64, u64, u64) {
        self.other_sites
    }

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
/// `{ address, size }` ([`sample`](LeakReport::sample)), `call_sites` as a list of
/// [`CallSite`]s and `other_call_sites` as `{ sites, blocks, bytes }`
/// ([`other_call_sites`](LeakReport::other_call_sites)). Written by hand, so that the output
/// holds what the accessors show, not the fixed-size arrays behind them; but for the call
/// sites' symbolised frames, it allocates
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

        #[derive(serde::Serialize)]
        struct OtherSites {
            sites: u64,
            blocks: u64,
            bytes: u64,
        }
        struct Sites<'a>(&'a LeakReport);
        impl serde::Serialize for Sites<'_> {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_seq(self.0.call_sites())
            }
        }

        let mut out = serializer.serialize_struct("LeakReport", 6)?;
        out.serialize_field("blocks", &self.blocks)?;
        out.serialize_field("bytes", &self.bytes)?;
        out.serialize_field("sizes", &Sizes(self))?;
        out.serialize_field("sample", &Samples(self))?;
        out.serialize_field("call_sites", &Sites(self))?;
        let (sites, blocks, bytes) = self.other_sites;
        let other = OtherSites {
            sites,
            blocks,
            bytes,
        };
        out.serialize_field("other_call_sites", &other)?;
        out.end()
    }
}

/// "block" or "blocks".
fn blocks_word(count: u64) -> &'static str {
    if count == 1 { "block" } else { "blocks" }
}

/// With call sites, one paragraph per site after the first line: `3 blocks, 96 bytes
/// leaked, allocated at tests/parse.rs:42:17 in my_crate::index::build`, then the rest of
/// the stack (the allocator's, `alloc`'s and `std`'s frames left out), eight frames at most;
/// the most bytes first. Sites whose stacks read the same once symbolised (copies of one
/// call made by the optimiser) are one paragraph.
impl fmt::Display for LeakReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} ({} bytes) still live; sizes:",
            self.blocks,
            blocks_word(self.blocks),
            self.bytes
        )?;
        for (i, (low, high, count)) in self.sizes().enumerate() {
            let comma = if i == 0 { "" } else { "," };
            if low == high {
                write!(f, "{comma} {low} B x{count}")?;
            } else {
                write!(f, "{comma} {low}-{high} B x{count}")?;
            }
        }
        write!(f, "; at")?;
        for (i, (addr, size)) in self.sample().iter().enumerate() {
            let comma = if i == 0 { "" } else { "," };
            write!(f, "{comma} {addr:#x} ({size} B)")?;
        }
        if self.blocks > self.sampled as u64 {
            write!(f, " and {} more", self.blocks - self.sampled as u64)?;
        }
        // Sites whose stacks read the same once symbolised (copies of one call that the
        // optimiser unrolled or duplicated) are shown as one.
        #[cfg(feature = "std")]
        {
            let mut places: std::vec::Vec<(std::vec::Vec<SourceFrame>, u64, u64)> =
                std::vec::Vec::new();
            for site in self.call_sites() {
                let frames = site.frames();
                match places.iter_mut().find(|(known, ..)| *known == frames) {
                    Some((_, blocks, bytes)) => {
                        *blocks += site.blocks;
                        *bytes += site.bytes;
                    }
                    None => places.push((frames, site.blocks, site.bytes)),
                }
            }
            places.sort_by_key(|&(_, _, bytes)| core::cmp::Reverse(bytes));
            for (frames, blocks, bytes) in &places {
                writeln!(f)?;
                write_place(f, *blocks, *bytes, frames)?;
            }
        }
        #[cfg(not(feature = "std"))]
        for site in self.call_sites() {
            write!(f, "\n{site}")?;
        }
        let (sites, blocks, bytes) = self.other_sites;
        if sites > 0 {
            write!(
                f,
                "\nand {sites} more call site{}: {blocks} {}, {bytes} bytes",
                if sites == 1 { "" } else { "s" },
                blocks_word(blocks)
            )?;
        }
        Ok(())
    }
}

/// Where a share of a leak was allocated: a call site of a [`LeakReport`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallSite<'a> {
    /// Blocks still live from this site.
    pub blocks: u64,
    /// Their bytes.
    pub bytes: u64,
    addresses: &'a [usize],
}

impl CallSite<'_> {
    /// The return addresses of the stack, innermost first, as captured (the allocator's own
    /// frames included).
    pub fn addresses(&self) -> &[usize] {
        self.addresses
    }

    /// The stack symbolised, innermost first, the caller's code only: the frames of the
    /// allocator (this crate), of `alloc`, `core` and `std` (and of `hashbrown`, the
    /// standard collections' tables) are left out, as are the runtime's (thread start,
    /// closure calls, the test harness). Each inlined call is a frame of its own.
    /// File and line need debug information (`debug = "line-tables-only"` is enough in a
    /// release profile); without it a frame has its function's name only.
    #[cfg(feature = "std")]
    pub fn frames(&self) -> std::vec::Vec<SourceFrame> {
        SourceFrame::callers(self.addresses)
    }
}

/// With the `serde` feature: `blocks`, `bytes`, `addresses` and, with std, `frames` (the
/// symbolised [`frames`](CallSite::frames), each `{ function, file, line, column }`).
#[cfg(feature = "serde")]
impl serde::Serialize for CallSite<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct as _;
        let mut out = serializer.serialize_struct("CallSite", 4)?;
        out.serialize_field("blocks", &self.blocks)?;
        out.serialize_field("bytes", &self.bytes)?;
        out.serialize_field("addresses", self.addresses)?;
        #[cfg(feature = "std")]
        out.serialize_field("frames", &self.frames())?;
        out.end()
    }
}

/// Most frames of a call site shown after its first line.
#[cfg(feature = "std")]
const SHOWN_FRAMES: usize = 8;

/// `3 blocks, 96 bytes leaked, allocated at <first frame>`, then the other frames, one a
/// line, eight at most.
#[cfg(feature = "std")]
fn write_place(
    f: &mut fmt::Formatter<'_>,
    blocks: u64,
    bytes: u64,
    frames: &[SourceFrame],
) -> fmt::Result {
    write!(
        f,
        "{blocks} {}, {bytes} bytes leaked, allocated",
        blocks_word(blocks)
    )?;
    let Some((first, rest)) = frames.split_first() else {
        return write!(f, " at an unknown place (no frame outside the allocator)");
    };
    write!(f, " at {}", first.place())?;
    for frame in rest.iter().take(SHOWN_FRAMES) {
        write!(f, "\n    {}", frame.place())?;
    }
    if rest.len() > SHOWN_FRAMES {
        write!(f, "\n    ({} frames more)", rest.len() - SHOWN_FRAMES)?;
    }
    Ok(())
}

/// As in a [`LeakReport`]: with std, `3 blocks, 96 bytes leaked, allocated at
/// tests/parse.rs:42:17 in my_crate::index::build` and the rest of the stack; without std,
/// the return addresses.
impl fmt::Display for CallSite<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        #[cfg(feature = "std")]
        {
            write_place(f, self.blocks, self.bytes, &self.frames())
        }
        #[cfg(not(feature = "std"))]
        {
            write!(
                f,
                "{} {}, {} bytes leaked, allocated from",
                self.blocks,
                blocks_word(self.blocks),
                self.bytes
            )?;
            for address in self.addresses {
                write!(f, " {address:#x}")?;
            }
            Ok(())
        }
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
