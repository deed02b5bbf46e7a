//! `Check<L>`: every block put exactly once with the layout it was got with; leaks reported.
//!
//! Invariant (checked by `check_invariants`): the table holds one slot per block that this
//! layer has currently allocated, keyed by address, in an open-addressing table with linear
//! probing and no gaps between a slot and its home position.

use core::alloc::Layout;
use core::fmt;
use core::mem::ManuallyDrop;
use core::ptr::{self, NonNull};

use crate::abort::abort_with;
use crate::{Gauge, Gauges, Layer};

/// One live block in the table; a null `ptr` marks an empty slot. The layout is packed into
/// one word (the size below [`SIZE_BITS`], log2 of the alignment above), so a slot takes 16
/// bytes and the table of a thousand live blocks fits in a first-level cache.
#[derive(Clone, Copy)]
struct Slot {
    ptr: *mut u8,
    layout: u64,
}

/// Bits of a packed layout that hold the size; the six above hold log2 of the alignment.
const SIZE_BITS: u32 = 58;

impl Slot {
    /// Packs a layout, or `None` for a size of 2^58 bytes or more (which no machine serves).
    #[inline(always)]
    fn pack(layout: Layout) -> Option<u64> {
        let size = layout.size() as u64;
        (size < 1 << SIZE_BITS)
            .then(|| size | (u64::from(layout.align().trailing_zeros()) << SIZE_BITS))
    }

    #[inline(always)]
    fn size(self) -> usize {
        (self.layout & ((1 << SIZE_BITS) - 1)) as usize
    }

    #[inline(always)]
    fn align(self) -> usize {
        1 << (self.layout >> SIZE_BITS)
    }

    fn unpack(self) -> Layout {
        // SAFETY: packed from a valid layout (possibly shrunk or grown by a valid resize).
        unsafe { Layout::from_size_align_unchecked(self.size(), self.align()) }
    }
}

const EMPTY: Slot = Slot {
    ptr: ptr::null_mut(),
    layout: 0,
};
const FIRST_CAPACITY: usize = 64;
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
    slots: *mut Slot,
    capacity: usize,
    /// `64 - log2(capacity)`: the hash keeps the top bits of a multiplicative hash.
    shift: u32,
    len: usize,
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
            slots: ptr::null_mut(),
            capacity: 0,
            shift: 64,
            len: 0,
            figures: Gauges::ZERO,
            recent: [0; RECENT],
            recent_next: 0,
            inner,
        }
    }

    /// The layer below.
    pub const fn inner(&self) -> &L {
        &self.inner
    }

    /// The layer below, mutably.
    ///
    /// # Safety
    ///
    /// Callers must not put, deinit or reset, through this reference, the blocks this layer
    /// tracks or its table (see [owner](crate::layer#owner)).
    pub const unsafe fn inner_mut(&mut self) -> &mut L {
        &mut self.inner
    }

    /// Unwraps the layer below. Blocks still live are reported and returned to it first,
    /// as at [`deinit`](Layer::deinit).
    pub fn into_inner(self) -> L {
        let mut this = ManuallyDrop::new(self);
        let report = this.release();
        // SAFETY: `this` is never used or dropped again, so `inner` is moved out once.
        let inner = unsafe { ptr::read(&this.inner) };
        if let Some(report) = report {
            report_leaks(&report);
        }
        inner
    }

    /// The blocks live now, or `None` when there are none.
    pub fn leaks(&self) -> Option<LeakReport> {
        if self.len == 0 {
            return None;
        }
        let mut report = LeakReport::EMPTY;
        for slot in self.table() {
            if !slot.ptr.is_null() {
                report.add(slot.ptr.addr(), slot.size());
            }
        }
        Some(report)
    }

    fn table(&self) -> &[Slot] {
        if self.slots.is_null() {
            return &[];
        }
        // SAFETY: `slots` points at `capacity` initialised slots in a block of `L` that
        // this layer owns.
        unsafe { core::slice::from_raw_parts(self.slots, self.capacity) }
    }

    #[inline(always)]
    fn home(&self, addr: usize) -> usize {
        let hash = (addr as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        hash.checked_shr(self.shift).unwrap_or(0) as usize
    }

    fn table_layout(capacity: usize) -> Option<Layout> {
        Layout::array::<Slot>(capacity).ok()
    }

    /// Doubles the table. Returns `None` when `L` has no room for the bigger one.
    #[cold]
    fn grow_table(&mut self) -> Option<()> {
        let capacity = (self.capacity * 2).max(FIRST_CAPACITY);
        let layout = Self::table_layout(capacity)?;
        let slots = self.inner.get(layout)?.as_ptr().cast::<Slot>();
        // SAFETY: a fresh block of `capacity` slots, aligned for `Slot`.
        unsafe {
            for i in 0..capacity {
                slots.add(i).write(EMPTY);
            }
        }
        let old = self.table() as *const [Slot];
        let old_slots = self.slots;
        let old_capacity = self.capacity;
        self.slots = slots;
        self.capacity = capacity;
        self.shift = 64 - capacity.trailing_zeros();
        // SAFETY: the old table is still live (it goes back to `L` below) and disjoint from
        // the new one.
        for slot in unsafe { &*old } {
            if !slot.ptr.is_null() {
                self.insert_new(*slot);
            }
        }
        if !old_slots.is_null() {
            // SAFETY: the old table came from `L` with this layout and is not used again.
            unsafe {
                self.inner.put(
                    NonNull::new_unchecked(old_slots.cast()),
                    Self::table_layout(old_capacity).unwrap_unchecked(),
                )
            };
        }
        Some(())
    }

    /// Inserts a slot for an address that is not in the table yet (room is guaranteed).
    fn insert_new(&mut self, slot: Slot) {
        let mask = self.capacity - 1;
        let mut i = self.home(slot.ptr.addr());
        // SAFETY: `i` is always masked into the table; the table is never full (load is at
        // most one half), so the probe ends.
        unsafe {
            while !(*self.slots.add(i)).ptr.is_null() {
                if (*self.slots.add(i)).ptr == slot.ptr {
                    abort_with(format_args!(
                        "Check: the layer below handed out {:p} while it was still live",
                        slot.ptr
                    ));
                }
                i = (i + 1) & mask;
            }
            self.slots.add(i).write(slot);
        }
    }

    /// The index of `addr`'s slot, if it is live.
    #[inline]
    fn find(&self, addr: usize) -> Option<usize> {
        if self.capacity == 0 {
            return None;
        }
        let mask = self.capacity - 1;
        let mut i = self.home(addr);
        loop {
            // SAFETY: `i` is masked into the table.
            let here = unsafe { (*self.slots.add(i)).ptr };
            if here.addr() == addr {
                return Some(i);
            }
            if here.is_null() {
                return None;
            }
            i = (i + 1) & mask;
        }
    }

    /// Empties slot `i`, shifting later slots of the same probe run back (no tombstones).
    fn remove_at(&mut self, mut i: usize) {
        let mask = self.capacity - 1;
        let mut j = i;
        // SAFETY: every index is masked into the table.
        unsafe {
            loop {
                j = (j + 1) & mask;
                let slot = *self.slots.add(j);
                if slot.ptr.is_null() {
                    break;
                }
                let home = self.home(slot.ptr.addr());
                // Move `j` back to `i` unless its home lies cyclically in `(i, j]`.
                let stays = if i <= j {
                    i < home && home <= j
                } else {
                    i < home || home <= j
                };
                if !stays {
                    *self.slots.add(i) = slot;
                    i = j;
                }
            }
            *self.slots.add(i) = EMPTY;
        }
        self.len -= 1;
    }

    /// The slot of a block being put or resized, or an abort naming what is wrong.
    fn expect_live(&self, ptr: NonNull<u8>, layout: Layout, what: &str) -> usize {
        let addr = ptr.as_ptr().addr();
        let Some(i) = self.find(addr) else {
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
        // SAFETY: `find` returned an index into the table.
        let slot = unsafe { *self.slots.add(i) };
        if Slot::pack(layout) != Some(slot.layout) {
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
        let table = self.table() as *const [Slot];
        // SAFETY: the table is live until it is put back below.
        for slot in unsafe { &*table } {
            if !slot.ptr.is_null() {
                // SAFETY: a live slot records a block got from `L` with this layout;
                // `deinit` ends it, so it goes back to `L` once.
                unsafe {
                    self.inner.put(
                        NonNull::new_unchecked(slot.ptr),
                        slot.unpack(),
                    )
                };
            }
        }
        if !self.slots.is_null() {
            // SAFETY: the table came from `L` with this layout and is not used again.
            unsafe {
                self.inner.put(
                    NonNull::new_unchecked(self.slots.cast()),
                    Self::table_layout(self.capacity).unwrap_unchecked(),
                )
            };
        }
        self.slots = ptr::null_mut();
        self.capacity = 0;
        self.shift = 64;
        self.len = 0;
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
    const ZEROED: bool = L::ZEROED;

    fn get(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        if (self.len + 1) * 4 > self.capacity {
            self.grow_table()?;
        }
        let packed = Slot::pack(layout)?;
        let block = self.inner.get(layout)?;
        self.insert_new(Slot {
            ptr: block.as_ptr(),
            layout: packed,
        });
        self.len += 1;
        self.figures.record_get(layout.size());
        Some(block)
    }

    unsafe fn put(&mut self, ptr: NonNull<u8>, layout: Layout) {
        let i = self.expect_live(ptr, layout, "put");
        self.remove_at(i);
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
        let i = self.expect_live(ptr, old, "grow");
        let Some(packed) = Slot::pack(new) else {
            return false;
        };
        // SAFETY: checked above that the block is live with layout `old`.
        let grown = unsafe { self.inner.grow(ptr, old, new) };
        if grown {
            // SAFETY: `i` indexes the block's slot.
            unsafe { (*self.slots.add(i)).layout = packed };
            self.figures.record_growth(new.size() - old.size());
        }
        grown
    }

    unsafe fn shrink(&mut self, ptr: NonNull<u8>, old: Layout, new: Layout) -> bool {
        let i = self.expect_live(ptr, old, "shrink");
        // SAFETY: checked above that the block is live with layout `old`.
        let shrunk = unsafe { self.inner.shrink(ptr, old, new) };
        if shrunk {
            // SAFETY: `i` indexes the block's slot; a smaller size than a packed one packs.
            unsafe { (*self.slots.add(i)).layout = Slot::pack(new).unwrap_unchecked() };
            self.figures.record_shrinking(old.size() - new.size());
        }
        shrunk
    }

    fn check_invariants(&self) {
        let mut count = 0;
        let table = self.table();
        for (i, slot) in table.iter().enumerate() {
            if slot.ptr.is_null() {
                continue;
            }
            count += 1;
            let mut j = self.home(slot.ptr.addr());
            while j != i {
                if table[j].ptr.is_null() {
                    abort_with(format_args!(
                        "Check invariant broken: gap before {:p}",
                        slot.ptr
                    ));
                }
                j = (j + 1) & (self.capacity - 1);
            }
        }
        if count != self.len {
            abort_with(format_args!(
                "Check invariant broken: {count} slots for {} blocks",
                self.len
            ));
        }
        self.inner.check_invariants();
    }

    fn owns(&self, ptr: NonNull<u8>) -> bool {
        self.find(ptr.as_ptr().addr()).is_some()
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
            .field("live", &self.len)
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
