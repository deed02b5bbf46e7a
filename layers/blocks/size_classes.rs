//! `SizeClasses<L, RUN>`: a bucketizer, one free list per size class, the classes carved out
//! of runs got from `L`. Entry point: [`SizeClasses`] and its `Layer` impl.
//!
//! Invariants (checked by `check_invariants`): every run on the run chain came from `L`
//! with `run_layout(class)`, its footer naming the class; a class block lies in a run of
//! its class, at a multiple of the class size from the run's start; it is either held by a
//! caller, on its class's free list, or not yet carved (at or above the class's bump
//! pointer in the class's newest run), never two of these. A block is a class block exactly
//! when `class_of` maps the layout that [fits](crate::layer#fits) it to a class, so puts
//! route by layout.

use core::alloc::Layout;
use core::fmt;
use core::mem::size_of;
use core::ptr::{self, NonNull};

use super::classes::ClassMap;
use super::list::BlockList;
use crate::Layer;
use crate::abort::abort_with;
use crate::layer::{FREED, FRESH, fill, paranoid, require_grow, require_put, require_shrink};

/// The largest class.
const LIMIT: usize = 32 << 10;
/// The classes: 8 steps of 16 bytes up to 128, then 4 per doubling up to `LIMIT`, so a
/// block above 128 bytes wastes less than a fifth of itself.
type BucketClasses = ClassMap<GRAIN, 128, 4, LIMIT>;
/// The number of size classes (40).
const CLASSES: usize = BucketClasses::COUNT;
/// The largest alignment a class promises: a page.
const MAX_ALIGN: usize = 4096;
/// Every block of this layer is aligned to at least this.
const GRAIN: usize = 16;
/// The fewest objects a run holds, for the largest classes.
const MIN_OBJECTS: usize = 4;

// ---- classes and run footers -------------------------------------------------------------

/// The alignment every block of class `index` has: the largest power of two dividing its
/// size, at most a page.
const fn class_align(index: usize) -> usize {
    let size = BucketClasses::class_size(index);
    let low = size & size.wrapping_neg();
    if low > MAX_ALIGN { MAX_ALIGN } else { low }
}

/// The footer at the end of every run: the chain of runs, and the run's class.
#[repr(C, align(16))]
struct RunFooter {
    prev: *mut RunFooter,
    class: usize,
}

/// One size class: its free list, and the uncarved rest of its newest run.
struct Class {
    free: BlockList,
    /// The next block to carve.
    next: *mut u8,
    /// The end of the carvable part of the newest run (its footer).
    end: *mut u8,
}

impl Class {
    const EMPTY: Class = Class {
        free: BlockList::EMPTY,
        next: ptr::null_mut(),
        end: ptr::null_mut(),
    };
}

// ---- the type, the class map and figures -------------------------------------------------

/// A bucketizer: requests of up to 32 KiB are rounded up to one of 40 size classes, each
/// with its own free list; larger ones go straight to `L`.
///
/// # Classes
///
/// | sizes | classes | step | wasted per block, at most |
/// |---|---|---|---|
/// | 1 - 128 | 16, 32, 48, .. 128 | 16 | 15 bytes |
/// | 129 - 256 | 160, 192, 224, 256 | 32 | 31 bytes (< 20% of the block) |
/// | 2^e + 1 - 2^(e+1) | 4 per doubling | 2^(e-2) | 2^(e-2) - 1 bytes (< 20%) |
/// | 16385 - 32768 | 20480, 24576, 28672, 32768 | 4096 | 4095 bytes (< 20%) |
///
/// A block of class size `C` is aligned to the largest power of two dividing `C`, at most
/// 4096 (16 for 48, 64 for 192, 4096 for 8192). A request aligned to more than 16 is first
/// rounded up to a multiple of its alignment, which always lands in a class aligned enough
/// (the classes of each doubling are the multiples of its step); that rounding is the only
/// extra waste, and only aligned requests pay it. Requests above 32 KiB, or aligned to
/// more than 4096, pass straight through to `L` (asked with at least 16-byte alignment).
///
/// # Runs
///
/// A class gets memory from `L` as a *run* of `RUN / C` blocks (at least 4), plus a
/// 16-byte footer at its end that chains the runs so that [`deinit`](Layer::deinit) can
/// return them; the booking lives in `L`'s memory, never in the global allocator. Blocks
/// are carved from the newest run only when the class's free list is empty (a bump
/// pointer, so a fresh run costs O(1), not a pass threading all its blocks, and its pages
/// are touched only as they are used). A put pushes the block on its class's list; runs go
/// back to `L` only at `deinit` (or [`into_inner`](SizeClasses::into_inner)).
///
/// Class look-up is bit arithmetic, O(1); get and put are O(1).
///
/// ```
/// use core::alloc::Layout;
/// use stratalloc::{Layer, layers::{Mmap, SizeClasses}};
///
/// let mut heap: SizeClasses<Mmap> = SizeClasses::new(Mmap::new());
/// let layout = Layout::from_size_align(100, 8).unwrap();
/// assert_eq!(SizeClasses::<Mmap>::class_of(layout).map(SizeClasses::<Mmap>::class_size), Some(112));
/// let block = heap.get(layout).unwrap();
/// // SAFETY: `block` came from `heap` with `layout` and is put once.
/// unsafe { heap.put(block, layout) };
/// assert_eq!(heap.get(Layout::new::<[u8; 112]>()), Some(block), "same class, same block");
/// # unsafe { heap.put(block, Layout::new::<[u8; 112]>()) };
/// ```
pub struct SizeClasses<L: Layer, const RUN: usize = 65536> {
    classes: [Class; CLASSES],
    /// The newest run; older ones follow its footer's `prev`.
    runs: *mut RunFooter,
    run_count: usize,
    inner: L,
}

// SAFETY: a `SizeClasses` exclusively owns its runs and the free blocks in them; the raw
// pointers are not shared, so moving it to another thread is as safe as moving `L`.
unsafe impl<L: Layer + Send, const RUN: usize> Send for SizeClasses<L, RUN> {}

impl<L: Layer, const RUN: usize> SizeClasses<L, RUN> {
    /// The number of size classes.
    pub const CLASSES: usize = CLASSES;
    /// The largest request served from a class; larger ones pass through to `L`.
    pub const LIMIT: usize = LIMIT;
    /// The largest alignment served from a class; more aligned requests pass through.
    pub const MAX_ALIGN: usize = MAX_ALIGN;

    /// A bucketizer over `inner`, holding no run yet.
    pub const fn new(inner: L) -> Self {
        const {
            assert!(
                RUN >= 4096 && RUN <= 1 << 24,
                "SizeClasses: RUN must be between 4 KiB and 16 MiB"
            );
        }
        SizeClasses {
            classes: [Class::EMPTY; CLASSES],
            runs: ptr::null_mut(),
            run_count: 0,
            inner,
        }
    }

    crate::layer::layer_below! {
        owns: "the runs and blocks this layer got from the inner one";
        into_inner after release: "every run";
    }

    /// The size of class `index` (0 past the last class).
    pub const fn class_size(index: usize) -> usize {
        if index < CLASSES {
            BucketClasses::class_size(index)
        } else {
            0
        }
    }

    /// The alignment every block of class `index` has (0 past the last class).
    pub const fn class_align(index: usize) -> usize {
        if index < CLASSES {
            class_align(index)
        } else {
            0
        }
    }

    /// The class that serves `layout`, or `None` when it passes through to `L`.
    #[inline(always)]
    pub const fn class_of(layout: Layout) -> Option<usize> {
        let align = layout.align();
        if align > MAX_ALIGN {
            return None;
        }
        let size = if align > GRAIN {
            // At most `LIMIT + MAX_ALIGN`, far from overflowing once the size is checked.
            if layout.size() > LIMIT {
                return None;
            }
            let size = if layout.size() == 0 { 1 } else { layout.size() };
            size.next_multiple_of(align)
        } else {
            layout.size()
        };
        if size > LIMIT {
            return None;
        }
        Some(BucketClasses::class_of(size))
    }

    /// Runs held now.
    pub const fn runs(&self) -> usize {
        self.run_count
    }

    /// Freed blocks waiting on the lists of all classes.
    pub fn cached(&self) -> usize {
        self.classes.iter().map(|class| class.free.len()).sum()
    }

    // ---- runs and pass-through layouts ---------------------------------------------------

    /// Blocks of one run of class `index`.
    const fn objects(index: usize) -> usize {
        let per_run = RUN / BucketClasses::class_size(index);
        if per_run < MIN_OBJECTS {
            MIN_OBJECTS
        } else {
            per_run
        }
    }

    /// The layout of a run of class `index`: its blocks, then its footer.
    fn run_layout(index: usize) -> Layout {
        let size = Self::objects(index) * BucketClasses::class_size(index) + size_of::<RunFooter>();
        // SAFETY: the alignment is a power of two (16 to 4096), and the size is at most
        // `max(RUN, 4 * LIMIT) + 16`, which is a multiple of 16 far below `isize::MAX`.
        unsafe { Layout::from_size_align_unchecked(size, class_align(index)) }
    }

    /// The layout a pass-through request is got from `L` with: aligned to 16 at least.
    #[inline(always)]
    fn passed(layout: Layout) -> Option<Layout> {
        layout.align_to(GRAIN).ok()
    }

    /// Gets a new run for class `index` from `L` and carves its first block.
    #[cold]
    #[inline(never)]
    fn refill(&mut self, index: usize) -> Option<NonNull<u8>> {
        let layout = Self::run_layout(index);
        let base = self.inner.get(layout)?;
        let carved = Self::objects(index) * BucketClasses::class_size(index);
        // SAFETY: the run holds `carved` bytes of blocks followed by the footer's 16 bytes,
        // at an offset that is a multiple of 16 (class sizes are), so aligned for it.
        let footer = unsafe { base.as_ptr().add(carved) }.cast::<RunFooter>();
        // SAFETY: as above, the footer lies inside the fresh run.
        unsafe {
            footer.write(RunFooter {
                prev: self.runs,
                class: index,
            })
        };
        self.runs = footer;
        self.run_count += 1;
        let class = &mut self.classes[index];
        // SAFETY: the first block ends inside the run (a run holds at least 4 blocks).
        class.next = unsafe { base.as_ptr().add(BucketClasses::class_size(index)) };
        class.end = footer.cast();
        Some(base)
    }

    /// Gives every run back to `L` and empties every class.
    fn release(&mut self) {
        while !self.runs.is_null() {
            let footer = self.runs;
            // SAFETY: `footer` ends a live run of class `(*footer).class`, got from `L` with
            // that class's run layout; it starts `objects * class size` bytes before the
            // footer. Each run leaves the chain before it is put, so it is put once.
            unsafe {
                let RunFooter { prev, class } = footer.read();
                let base = footer
                    .cast::<u8>()
                    .sub(Self::objects(class) * BucketClasses::class_size(class));
                self.runs = prev;
                self.inner
                    .put(NonNull::new_unchecked(base), Self::run_layout(class));
            }
        }
        self.run_count = 0;
        self.classes = [Class::EMPTY; CLASSES];
    }
}

// ---- the Layer impl ----------------------------------------------------------------------

// SAFETY: a class block is carved once from a run of its class (the bump pointer only
// moves forward, and a run is the class's own block of `L`), or popped from the class's
// free list, where it went when its owner put it; so no two live blocks share memory. The
// class serving a layout holds at least its size (rounded up to its alignment when that is
// above 16) and is aligned to at least its alignment: the classes of a doubling are the
// multiples of its step, and runs are aligned to the class alignment. Every block is
// aligned to 16: class sizes are multiples of 16, and pass-through requests are asked with
// at least that alignment. Pass-through blocks come from `L` and return to it with the
// layout they were got with (a function of the caller's layout, which names the path).
// Runs go back to `L` only at deinit, once each. `owns` is `L`'s: runs are blocks of `L`.
unsafe impl<L: Layer, const RUN: usize> Layer for SizeClasses<L, RUN> {
    const MIN_ALIGN: usize = GRAIN;
    // Blocks lie inside blocks of `L`, and `owns` asks `L`: exact when `L` answers for
    // every address inside its blocks.
    const OWNS_EXACT: bool = L::OWNS_INTERIOR;
    const OWNS_INTERIOR: bool = L::OWNS_INTERIOR;

    #[inline]
    fn get(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        paranoid(self);
        let Some(index) = Self::class_of(layout) else {
            return self.inner.get(Self::passed(layout)?);
        };
        let class = &mut self.classes[index];
        let block = if let Some(block) = class.free.pop() {
            block
        } else if class.next < class.end {
            let block = class.next;
            // SAFETY: `next < end`, and the carvable part of a run is a whole number of
            // blocks, so the block ends at or before `end`.
            class.next = unsafe { block.add(BucketClasses::class_size(index)) };
            // SAFETY: `block` lies inside a live run, which is not at null.
            unsafe { NonNull::new_unchecked(block) }
        } else {
            self.refill(index)?
        };
        // SAFETY: a block of class `index`, ours until it is handed out.
        unsafe { fill::<Self>(block.as_ptr(), 0, BucketClasses::class_size(index), FRESH) };
        Some(block)
    }

    #[inline]
    unsafe fn put(&mut self, ptr: NonNull<u8>, layout: Layout) {
        paranoid(self);
        require_put::<Self>(ptr, layout);
        match Self::class_of(layout) {
            // SAFETY: a class block: at least 16 bytes, aligned to 16, and the caller gives
            // it up, so it is ours to fill and its class's list may use it.
            Some(index) => unsafe {
                let size = BucketClasses::class_size(index);
                fill::<Self>(ptr.as_ptr(), BlockList::LINK, size, FREED);
                self.classes[index].free.push(ptr)
            },
            None => {
                if let Some(passed) = Self::passed(layout) {
                    // SAFETY: a pass-through block, got from `L` with `passed(layout)` (which
                    // succeeded then, and is the same now); the caller's duties pass on.
                    unsafe { self.inner.put(ptr, passed) }
                }
            }
        }
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
        match (Self::class_of(old), Self::class_of(new)) {
            // The block holds its whole class.
            (Some(a), Some(b)) => a == b,
            (None, None) => match (Self::passed(old), Self::passed(new)) {
                // SAFETY: a pass-through block of `L` with `passed(old)`, and it stays one.
                (Some(old), Some(new)) => unsafe { self.inner.grow(ptr, old, new) },
                _ => false,
            },
            _ => false,
        }
    }

    unsafe fn shrink(&mut self, ptr: NonNull<u8>, old: Layout, new: Layout) -> bool {
        paranoid(self);
        require_shrink::<Self>(ptr, old, new);
        match (Self::class_of(old), Self::class_of(new)) {
            // A smaller class may promise an alignment the block lacks: only the same one.
            (Some(a), Some(b)) => a == b,
            (None, None) => match (Self::passed(old), Self::passed(new)) {
                // SAFETY: a pass-through block of `L` with `passed(old)`, and it stays one.
                (Some(old), Some(new)) => unsafe { self.inner.shrink(ptr, old, new) },
                _ => false,
            },
            _ => false,
        }
    }

    fn owns(&self, ptr: NonNull<u8>) -> bool {
        self.inner.owns(ptr)
    }

    // ---- checks --------------------------------------------------------------------------

    fn check_invariants(&self) {
        let fail =
            |what: &str| -> ! { abort_with(format_args!("SizeClasses invariant broken: {what}")) };
        for (index, class) in self.classes.iter().enumerate() {
            let walked = class.free.check(|block| {
                if !block.as_ptr().addr().is_multiple_of(class_align(index)) {
                    fail("a free block is not aligned to its class");
                }
            });
            if let Err(what) = walked {
                fail(what);
            }
            if class.next.is_null() != class.end.is_null()
                || class.next > class.end
                || !(class.end.addr() - class.next.addr())
                    .is_multiple_of(BucketClasses::class_size(index))
                || !class.next.addr().is_multiple_of(class_align(index))
            {
                fail("a class's bump pointer is outside its run");
            }
        }
        let mut count = 0;
        let mut footer = self.runs;
        while !footer.is_null() {
            count += 1;
            if count > self.run_count {
                fail("run chain longer than its count");
            }
            // SAFETY: every footer on the chain ends a live run.
            let RunFooter { prev, class } = unsafe { footer.read() };
            if class >= CLASSES {
                fail("a run footer names no class");
            }
            footer = prev;
        }
        if count != self.run_count {
            fail("run count differs from the chain");
        }
        self.inner.check_invariants();
    }
}

impl<L: Layer, const RUN: usize> Drop for SizeClasses<L, RUN> {
    fn drop(&mut self) {
        self.deinit();
    }
}

impl<L: Layer + fmt::Debug, const RUN: usize> fmt::Debug for SizeClasses<L, RUN> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SizeClasses")
            .field("run", &RUN)
            .field("runs", &self.run_count)
            .field("cached", &self.cached())
            .field("inner", &self.inner)
            .finish()
    }
}

// SAFETY: every block lies in a run or a pass-through block got from `L`, attributed to the
// same region; runs go back to `L` only at deinit, when every block has ended.
#[cfg(feature = "std")]
unsafe impl<L: crate::region::Attributed, const RUN: usize> crate::region::Attributed
    for SizeClasses<L, RUN>
{
    fn attribute(&mut self, owner: crate::region::Attribution) {
        self.inner.attribute(owner);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Gauge;
    use crate::layers::{Buffer, Stats};

    type Classes<'a> = SizeClasses<Stats<Buffer<'a>>, 8192>;

    /// The classes are the documented ones, within the documented waste.
    #[test]
    fn the_classes_are_the_documented_ones() {
        BucketClasses::check_properties();
        let sizes = [
            16, 32, 48, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384, 448, 512, 640, 768,
            896, 1024, 1280, 1536, 1792, 2048, 2560, 3072, 3584, 4096, 5120, 6144, 7168, 8192,
            10240, 12288, 14336, 16384, 20480, 24576, 28672, 32768,
        ];
        assert_eq!(CLASSES, sizes.len());
        for (index, &size) in sizes.iter().enumerate() {
            assert_eq!(BucketClasses::class_size(index), size, "class {index}");
            // The wasted-space bound the docs give: under 16 bytes, or under 20% above 128.
            let prev = if index == 0 { 0 } else { sizes[index - 1] };
            let waste = size - prev - 1;
            assert!(
                waste < 16 || waste * 5 < size,
                "class {index} wastes {waste}"
            );
        }
    }

    /// Every size maps to the smallest class holding it (checked against a search of the
    /// table), and every aligned layout to a class that holds and aligns it.
    #[test]
    fn every_request_fits_its_class() {
        let step = if cfg!(miri) { 257 } else { 1 };
        for size in (0..=LIMIT).step_by(step).chain([LIMIT]) {
            let index = BucketClasses::class_of(size);
            let smallest = (0..CLASSES).find(|&i| BucketClasses::class_size(i) >= size.max(1));
            assert_eq!(Some(index), smallest, "size {size}");
            for align_log2 in 0..=12 {
                let layout = Layout::from_size_align(size, 1 << align_log2).unwrap();
                let Some(index) = Classes::class_of(layout) else {
                    assert!(size.next_multiple_of(layout.align().max(16)) > LIMIT);
                    continue;
                };
                assert!(
                    BucketClasses::class_size(index) >= size.max(1),
                    "{layout:?}"
                );
                assert!(class_align(index) >= layout.align(), "{layout:?}");
            }
        }
        assert_eq!(
            Classes::class_of(Layout::from_size_align(LIMIT + 1, 8).unwrap()),
            None
        );
        assert_eq!(
            Classes::class_of(Layout::from_size_align(8, 8192).unwrap()),
            None
        );
    }

    #[test]
    fn classes_reuse_their_own_blocks() {
        let mut memory = alloc::boxed::Box::<[u8]>::new_uninit_slice(1 << 16);
        let mut heap: Classes<'_> = SizeClasses::new(Stats::new(Buffer::new(&mut memory)));
        let at = |size, align| Layout::from_size_align(size, align).unwrap();
        let a = heap.get(at(100, 8)).unwrap();
        let b = heap.get(at(100, 8)).unwrap();
        assert_eq!(
            b.as_ptr().addr() - a.as_ptr().addr(),
            112,
            "carved side by side"
        );
        assert_eq!(heap.runs(), 1);
        let c = heap.get(at(20, 32)).unwrap();
        assert!(c.as_ptr().addr().is_multiple_of(32));
        assert_eq!(heap.runs(), 2, "an aligned request has a class of its own");
        // SAFETY: each block is live with the layout given and put once.
        unsafe {
            heap.put(a, at(100, 8));
            heap.put(c, at(20, 32));
        }
        assert_eq!(heap.cached(), 2);
        heap.check_invariants();
        assert_eq!(heap.get(at(97, 16)), Some(a));
        assert_eq!(heap.get(at(32, 32)), Some(c));
        // Past the limit: straight to the layer below and back.
        let live = heap.inner().gauge().live;
        let big = heap.get(at(LIMIT + 1, 8)).unwrap();
        // SAFETY: live, put once.
        unsafe { heap.put(big, at(LIMIT + 1, 8)) };
        assert_eq!(heap.inner().gauge().live, live);
        heap.deinit();
        assert_eq!(heap.inner().gauge().live, 0, "deinit returned every run");
        heap.check_invariants();
    }
}
