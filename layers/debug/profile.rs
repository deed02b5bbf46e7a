//! `Profile<L>`: a heap profiler. Per call site it counts the blocks and bytes allocated,
//! the frees, the blocks' lifetimes and the live peaks, for a [`HeapProfile`] (a DHAT file,
//! a flame graph).
//!
//! Invariants (`check_invariants`): the live table (`live_table.rs`) holds one slot per
//! block got while recording and not put yet; the live figures of the sites (with the
//! unknown site) add up to the table's blocks and bytes, and to the live figures of the
//! layer's gauges (whose peak is the profile's); no site has more bytes live than its most.

use core::alloc::Layout;
use core::cell::Cell;
use core::fmt;
use core::ptr::NonNull;
use std::time::{Duration, Instant};

use super::call_sites::{CallSites, Stack};
use super::heap_profile::{HeapProfile, SiteFigures};
use super::live_table::{LiveTable, Slot, pack_layout, unpack_layout};
use crate::abort::abort_with;
use crate::layer::{paranoid, require_grow, require_shrink};
use crate::{Gauge, Gauges, Layer};

/// Records, for each call stack that allocates through it, what it allocated and how long
/// the blocks lived; [`report`](Profile::report) symbolises the stacks and hands the
/// figures over as a [`HeapProfile`], which writes DHAT's file format (open it in DHAT's
/// viewer, `dh_view.html`) or a flame graph.
///
/// Per call site (the stack of return addresses that reached the allocator, captured as
/// [`Check`](super::Check)'s call sites are, from frame records or with the unwinder):
///
/// - blocks and bytes allocated, and how many of them were freed;
/// - the sum of the blocks' lifetimes (a block still live counts until the report);
/// - the most bytes (with the blocks then) live at once from the site;
/// - the bytes and blocks live from the site when the whole layer's live bytes peaked
///   (DHAT's "t-gmax"), and at the report ("t-end").
///
/// Growing a block in place counts the growth as bytes allocated at the block's site;
/// shrinking it in place frees nothing. Blocks live when the layer ends go back to `L`.
///
/// Capturing a stack costs tens of nanoseconds in a build with frame pointers
/// ([`CHEAP_CALL_SITES`](crate::region::CHEAP_CALL_SITES)), about 2.5 µs through the
/// unwinder elsewhere: profile a scope, not a whole program (see [`region::profile`]).
///
/// ```
/// use core::alloc::Layout;
/// use stratalloc::{Layer, layers::{Mmap, Profile}};
///
/// let mut profile = Profile::new(Mmap::new());
/// let layout = Layout::new::<[u8; 24]>();
/// let block = profile.get(layout).unwrap();
/// // SAFETY: put once, with the layout it was got with.
/// unsafe { profile.put(block, layout) };
/// let report = profile.report();
/// assert_eq!((report.blocks, report.bytes, report.peak_bytes), (1, 24, 24));
/// ```
///
/// [`region::profile`]: crate::region::profile
pub struct Profile<L: Layer> {
    table: LiveTable<Born>,
    sites: CallSites<SiteFigures>,
    /// The figures of blocks whose stack could not be captured (under Miri, or past the
    /// table's room for distinct stacks).
    unknown: SiteFigures,
    /// Whether gets are recorded (a paused profile serves blocks without counting them).
    recording: Cell<bool>,
    /// The time of the peak of live bytes (`figures.peak_bytes`), in ticks of `clock`.
    peak_at: u64,
    /// Set when the live bytes reached a new peak that the sites' figures at the peak do
    /// not hold yet; they are copied before the live bytes next go down, or at a report.
    peak_pending: bool,
    /// Times blocks' births and deaths, from when recording started.
    clock: Cell<Clock>,
    figures: Gauges,
    inner: L,
}

// SAFETY: a `Profile` exclusively owns its tables; the addresses in them are plain numbers.
unsafe impl<L: Layer + Send> Send for Profile<L> {}

/// What `Profile` keeps with a live block: its layout, its site and when it was got.
#[derive(Clone, Copy)]
pub(crate) struct Born {
    /// Packed by `pack_layout`.
    layout: u64,
    /// Ticks of the profile's clock.
    at: u64,
    site: u32,
}

impl<L: Layer> Profile<L> {
    /// A profiler over `inner`, recording from now.
    pub fn new(inner: L) -> Self {
        Profile {
            table: LiveTable::new(),
            sites: CallSites::new(),
            unknown: SiteFigures::default(),
            recording: Cell::new(true),
            peak_at: 0,
            peak_pending: false,
            clock: Cell::new(Clock::start()),
            figures: Gauges::ZERO,
            inner,
        }
    }

    crate::layer::layer_below! {
        owns: "the blocks this layer tracks, or its tables";
    }

    /// A profiler over `inner` that records nothing until
    /// [`start_recording`](Self::start_recording): blocks got meanwhile are served but not
    /// counted, and their frees are not counted either.
    pub(crate) fn paused(inner: L) -> Self {
        let profile = Self::new(inner);
        profile.recording.set(false);
        profile
    }

    /// Starts recording, with the clock at zero. Takes `&self` so that a region's stack can
    /// be started through [`Region::with_layer`](crate::Region::with_layer).
    pub(crate) fn start_recording(&self) {
        self.clock.set(Clock::start());
        self.recording.set(true);
    }

    /// The figures so far, symbolised: one site per distinct stack once the allocator's,
    /// the standard library's and the runtime's frames are left out (stacks that differ
    /// only there are merged), the most bytes allocated first.
    ///
    /// It allocates through the global allocator, and symbolising reads the program's
    /// debug information: call it outside the profiled code (for a region's stack,
    /// [`Region::with_layer`](crate::Region::with_layer) does that). A `Profile` that *is*
    /// the global allocator cannot report from inside itself.
    pub fn report(&self) -> HeapProfile {
        let now = self.now();
        let clock = self.clock.get();
        let nanos = clock.nanos_per_tick(now);
        let mut sites: Vec<(Vec<usize>, SiteFigures)> = self
            .sites
            .iter()
            .map(|site| (site.stack.frames().to_vec(), site.counts))
            .collect();
        let mut unknown = self.unknown;
        let peak_pending = self.peak_pending;
        // Lifetimes of the blocks still live run until now; a peak not copied yet is now's
        // live figures.
        for slot in self.table.iter() {
            let lifetime = now.saturating_sub(slot.value.at);
            let site = (slot.value.site as usize).checked_sub(1);
            let figures = match site.and_then(|i| sites.get_mut(i)) {
                Some((_, figures)) => figures,
                None => &mut unknown,
            };
            figures.lifetimes = figures.lifetimes.saturating_add(lifetime);
        }
        for figures in sites
            .iter_mut()
            .map(|(_, figures)| figures)
            .chain([&mut unknown])
        {
            if peak_pending {
                figures.take_peak();
            }
            // Ticks to nanoseconds.
            figures.lifetimes = (figures.lifetimes as f64 * nanos) as u64;
        }
        let duration = |ticks: u64| Duration::from_nanos((ticks as f64 * nanos) as u64);
        HeapProfile::new(sites, unknown, duration(self.peak_at), duration(now))
    }

    /// Ticks of the clock since the profile started.
    #[inline]
    fn now(&self) -> u64 {
        self.clock.get().ticks()
    }

    fn figures_of(&mut self, site: u32) -> &mut SiteFigures {
        match self.sites.counts_mut(site) {
            Some(figures) => figures,
            None => &mut self.unknown,
        }
    }

    /// After the gauges counted more bytes live: when their peak moved, notes when, for
    /// the sites' figures to be copied later.
    fn note_peak(&mut self, peak_before: u64) {
        if self.figures.peak_bytes > peak_before {
            self.peak_at = self.now();
            self.peak_pending = true;
        }
    }

    /// Before the live bytes go down (a put, a shrink): a peak not copied yet is copied,
    /// every site's live figures becoming its figures at the peak.
    fn copy_pending_peak(&mut self) {
        if self.peak_pending {
            self.peak_pending = false;
            self.unknown.take_peak();
            for figures in self.sites.counts_iter_mut() {
                figures.take_peak();
            }
        }
    }

    /// Returns the live blocks and the tables to `L`, and forgets every figure.
    fn release(&mut self) {
        for slot in self.table.iter() {
            // SAFETY: a live slot records a block got from `L` with this layout (or a resize
            // of it that `L` made); `deinit` ends it, so it goes back to `L` once.
            unsafe {
                self.inner
                    .put(NonNull::new_unchecked(slot.ptr), slot.layout())
            };
        }
        self.table.release_to(&mut self.inner);
        self.sites.release(&mut self.inner);
        self.unknown = SiteFigures::default();
        self.peak_pending = false;
        self.figures = Gauges::ZERO;
    }
}

/// The clock of a profile: the x86-64 time-stamp counter where it is invariant (it ticks at
/// one rate whatever the core's power state, as on every x86-64 processor of the last
/// fifteen years), read in a few nanoseconds and turned into nanoseconds at the report by
/// the rate measured against `Instant` since the start; elsewhere `Instant`'s nanoseconds
/// (a call into the vDSO, about 20 ns on Linux).
#[derive(Clone, Copy)]
struct Clock {
    start: Instant,
    start_ticks: u64,
    counter: bool,
}

impl Clock {
    fn start() -> Clock {
        let counter = invariant_time_stamp_counter();
        Clock {
            start: Instant::now(),
            start_ticks: if counter { time_stamp_counter() } else { 0 },
            counter,
        }
    }

    /// Ticks since the start.
    #[inline]
    fn ticks(&self) -> u64 {
        if self.counter {
            time_stamp_counter().saturating_sub(self.start_ticks)
        } else {
            self.start.elapsed().as_nanos() as u64
        }
    }

    /// Nanoseconds per tick, measured over the `ticks` since the start (which were just
    /// read).
    fn nanos_per_tick(&self, ticks: u64) -> f64 {
        if !self.counter || ticks == 0 {
            return 1.0;
        }
        self.start.elapsed().as_nanos() as f64 / ticks as f64
    }
}

/// Whether the processor's time-stamp counter is invariant (CPUID leaf 0x8000_0007, EDX
/// bit 8); never under Miri, which has no such instructions.
fn invariant_time_stamp_counter() -> bool {
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    {
        use core::arch::x86_64::__cpuid;
        // SAFETY: CPUID exists on every x86-64 processor; the extended leaf is asked only
        // when the processor has it. (Newer compilers declare `__cpuid` safe.)
        #[allow(unused_unsafe)]
        unsafe {
            __cpuid(0x8000_0000).eax >= 0x8000_0007 && __cpuid(0x8000_0007).edx & 1 << 8 != 0
        }
    }
    #[cfg(not(all(target_arch = "x86_64", not(miri))))]
    false
}

/// The time-stamp counter (0 where it is not read).
#[inline]
fn time_stamp_counter() -> u64 {
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    // SAFETY: RDTSC exists on every x86-64 processor. (Newer compilers declare it safe.)
    #[allow(unused_unsafe)]
    unsafe {
        core::arch::x86_64::_rdtsc()
    }
    #[cfg(not(all(target_arch = "x86_64", not(miri))))]
    0
}

impl Slot<Born> {
    /// The block's layout.
    fn layout(self) -> Layout {
        unpack_layout(self.value.layout)
    }
}

impl<L: Layer> Gauge for Profile<L> {
    fn gauge(&self) -> Gauges {
        self.figures
    }
}

// SAFETY: blocks come unchanged from `L`, and every put, grow and shrink is passed on with
// the caller's arguments; the layer's own tables are blocks of `L` it alone uses.
unsafe impl<L: Layer> Layer for Profile<L> {
    const MIN_ALIGN: usize = L::MIN_ALIGN;
    const OWNS_EXACT: bool = L::OWNS_EXACT;
    const OWNS_INTERIOR: bool = L::OWNS_INTERIOR;
    const ZEROED: bool = L::ZEROED;

    fn get(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        paranoid(self);
        if !self.recording.get() {
            return self.inner.get(layout);
        }
        let packed = pack_layout(layout)?;
        if self.table.is_full() {
            self.table.grow_from(&mut self.inner)?;
        }
        let block = self.inner.get(layout)?;
        let site = self.sites.intern(&Stack::capture(), &mut self.inner);
        let at = self.now();
        let size = layout.size() as u64;
        self.figures_of(site).allocated(size);
        if self
            .table
            .insert(Slot {
                ptr: block.as_ptr(),
                value: Born {
                    layout: packed,
                    at,
                    site,
                },
            })
            .is_err()
        {
            abort_with(format_args!(
                "Profile: the layer below handed out {block:p} while it was still live"
            ));
        }
        let peak = self.figures.peak_bytes;
        self.figures.record_get(layout.size());
        self.note_peak(peak);
        Some(block)
    }

    unsafe fn put(&mut self, ptr: NonNull<u8>, layout: Layout) {
        paranoid(self);
        if let Some(i) = self.table.find(ptr.as_ptr().addr()) {
            let born = self.table.slot(i).value;
            self.table.remove(i);
            let lifetime = self.now().saturating_sub(born.at);
            // The size recorded, whatever the caller says (a layer below may reject a
            // wrong one; the figures stay whole either way).
            let size = unpack_layout(born.layout).size();
            self.copy_pending_peak();
            self.figures_of(born.site).freed(size as u64, lifetime);
            self.figures.record_put(size);
        }
        // SAFETY: the caller's duties, passed on.
        unsafe { self.inner.put(ptr, layout) }
    }

    fn init() -> Self {
        Self::new(L::init())
    }

    fn deinit(&mut self) {
        self.release();
        self.inner.deinit();
    }

    unsafe fn grow(&mut self, ptr: NonNull<u8>, old: Layout, new: Layout) -> bool {
        paranoid(self);
        require_grow::<Self>(ptr, old, new);
        let Some(packed) = pack_layout(new) else {
            return false;
        };
        // SAFETY: the caller's duties, passed on.
        if !unsafe { self.inner.grow(ptr, old, new) } {
            return false;
        }
        if let Some(i) = self.table.find(ptr.as_ptr().addr()) {
            let mut born = self.table.slot(i).value;
            // From the size recorded, as in `put`.
            let growth = new.size().saturating_sub(unpack_layout(born.layout).size());
            born.layout = packed;
            self.table.set_value(i, born);
            self.figures_of(born.site).grown(growth as u64);
            let peak = self.figures.peak_bytes;
            self.figures.record_growth(growth);
            self.note_peak(peak);
        }
        true
    }

    unsafe fn shrink(&mut self, ptr: NonNull<u8>, old: Layout, new: Layout) -> bool {
        paranoid(self);
        require_shrink::<Self>(ptr, old, new);
        // SAFETY: the caller's duties, passed on.
        if !unsafe { self.inner.shrink(ptr, old, new) } {
            return false;
        }
        if let Some(i) = self.table.find(ptr.as_ptr().addr()) {
            let mut born = self.table.slot(i).value;
            // From the size recorded, as in `put`.
            let shrinking = unpack_layout(born.layout).size().saturating_sub(new.size());
            // A size below one that packed packs too.
            born.layout = pack_layout(new).unwrap_or(0);
            self.table.set_value(i, born);
            self.copy_pending_peak();
            self.figures_of(born.site).shrunk(shrinking as u64);
            self.figures.record_shrinking(shrinking);
        }
        true
    }

    fn check_invariants(&self) {
        let broken =
            |what: &str| -> ! { abort_with(format_args!("Profile invariant broken: {what}")) };
        if let Err(what) = self.table.check_invariants() {
            broken(what);
        }
        if let Err(what) = self.sites.check_invariants() {
            broken(what);
        }
        let (blocks, bytes) = self
            .table
            .iter()
            .fold((0u64, 0u64), |(blocks, bytes), slot| {
                (blocks + 1, bytes + slot.layout().size() as u64)
            });
        let mut site_blocks = self.unknown.live_blocks;
        let mut site_bytes = self.unknown.live_bytes;
        for figures in self
            .sites
            .iter()
            .map(|site| &site.counts)
            .chain([&self.unknown])
        {
            if figures.live_bytes > figures.max_bytes {
                broken("a site has more bytes live than its peak");
            }
        }
        for site in self.sites.iter() {
            site_blocks += site.counts.live_blocks;
            site_bytes += site.counts.live_bytes;
        }
        if (blocks, bytes) != (site_blocks, site_bytes)
            || (blocks, bytes) != (self.figures.live, self.figures.live_bytes)
        {
            broken("the sites, the table and the gauges disagree");
        }
        self.inner.check_invariants();
    }

    fn owns(&self, ptr: NonNull<u8>) -> bool {
        self.inner.owns(ptr)
    }
}

impl<L: Layer> Drop for Profile<L> {
    fn drop(&mut self) {
        self.deinit();
    }
}

impl<L: Layer + fmt::Debug> fmt::Debug for Profile<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Profile")
            .field("live_blocks", &self.table.len())
            .field("live_bytes", &self.figures.live_bytes)
            .field("peak_bytes", &self.figures.peak_bytes)
            .field("sites", &self.sites)
            .field("inner", &self.inner)
            .finish()
    }
}

// SAFETY: every block comes from `L`, attributed to the same region.
unsafe impl<L: crate::region::Attributed> crate::region::Attributed for Profile<L> {
    const RECLAIMS: bool = L::RECLAIMS;

    fn attribute(&mut self, owner: crate::region::Attribution) {
        self.inner.attribute(owner);
    }
}
