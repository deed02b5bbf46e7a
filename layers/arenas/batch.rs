//! `Batch<L>`: books every block taken from `L`; put does nothing; deinit returns them all.
//!
//! Invariant: every block got from `L` and not yet returned has exactly one entry in the
//! booking pages, and every booking page came from `L` with `page_layout()`.

use core::alloc::Layout;
use core::fmt;
use core::mem::{MaybeUninit, size_of};
use core::ptr::{self, NonNull};

use crate::Layer;
use crate::layer::{paranoid, require_put, require_shrink};

/// One booked block: where it is and the layout `L` gave it with.
#[derive(Clone, Copy)]
struct Entry {
    block: NonNull<u8>,
    layout: Layout,
}

/// Bytes in a booking page: one page of the usual size.
const PAGE_BYTES: usize = 4096;
/// Entries in a booking page, after its two-word header.
const ENTRIES: usize = (PAGE_BYTES - 2 * size_of::<usize>()) / size_of::<Entry>();

/// A page of the booking table, itself a block got from `L`.
#[repr(C)]
struct BookPage {
    prev: *mut BookPage,
    len: usize,
    entries: [MaybeUninit<Entry>; ENTRIES],
}

static_assertions::const_assert!(size_of::<BookPage>() <= PAGE_BYTES);

/// Frees in one go: every block taken from `L` is booked, a put does nothing, and
/// [`deinit`](Layer::deinit) (or dropping the layer) returns every booked block to `L`,
/// newest first, with the layout it was got with.
///
/// The booking lives in 4 KiB pages that `Batch` gets from `L` itself, 24 bytes per block
/// on 64-bit targets, so blocks reach `L` with exactly the caller's layout and booking never
/// touches the global allocator. `shrink` succeeds in place (the block keeps its bytes until
/// deinit); `grow` does not.
///
/// ```
/// use core::alloc::Layout;
/// use stratalloc::{Gauge, Layer, layers::{Batch, Mmap, Stats}};
///
/// let mut batch = Batch::new(Stats::new(Mmap::new()));
/// for size in [10, 1000, 100_000] {
///     batch.get(Layout::from_size_align(size, 8).unwrap()).unwrap();
/// }
/// assert_eq!(batch.booked(), 3);
/// batch.deinit();
/// assert_eq!(batch.inner().gauge().live, 0, "every block went back");
/// ```
pub struct Batch<L: Layer> {
    newest: *mut BookPage,
    booked: usize,
    inner: L,
}

// SAFETY: a `Batch` exclusively owns its booking pages and the blocks booked in them.
unsafe impl<L: Layer + Send> Send for Batch<L> {}

impl<L: Layer> Batch<L> {
    /// A batch over `inner` with nothing booked.
    pub const fn new(inner: L) -> Self {
        Batch {
            newest: ptr::null_mut(),
            booked: 0,
            inner,
        }
    }

    crate::layer::layer_below! {
        owns: "the blocks and pages this layer booked";
        into_inner after release: "every booked block";
    }

    /// Blocks booked now (taken from `L`, not yet returned).
    pub const fn booked(&self) -> usize {
        self.booked
    }

    fn page_layout() -> Layout {
        Layout::new::<BookPage>()
    }

    /// Makes room for one more entry, getting a new page from `L` when the newest is full.
    fn reserve_one(&mut self) -> Option<()> {
        // SAFETY: `newest`, when not null, is a live booking page.
        if !self.newest.is_null() && unsafe { (*self.newest).len } < ENTRIES {
            return Some(());
        }
        let page = self
            .inner
            .get(Self::page_layout())?
            .as_ptr()
            .cast::<BookPage>();
        // SAFETY: a fresh block with `BookPage`'s layout; only the header is written, the
        // entries stay uninitialised until booked.
        unsafe {
            (&raw mut (*page).prev).write(self.newest);
            (&raw mut (*page).len).write(0);
        }
        self.newest = page;
        Some(())
    }

    /// Returns every booked block and every page to `L`, newest first.
    fn release(&mut self) {
        while !self.newest.is_null() {
            let page = self.newest;
            // SAFETY: `page` is a live booking page whose first `len` entries are booked
            // blocks got from `L` with the recorded layouts; each is returned once, then the
            // page itself, which `L` gave with `page_layout()`.
            unsafe {
                let len = (*page).len;
                for i in (0..len).rev() {
                    let Entry { block, layout } = (*page).entries[i].assume_init();
                    self.inner.put(block, layout);
                }
                self.newest = (*page).prev;
                self.inner
                    .put(NonNull::new_unchecked(page.cast()), Self::page_layout());
            }
        }
        self.booked = 0;
    }
}

// SAFETY: blocks come unchanged from `L`; none is returned to `L` before `deinit`, so
// none is handed out twice, and at `deinit` each is returned exactly once with the layout
// `L` gave it with.
unsafe impl<L: Layer> Layer for Batch<L> {
    const MIN_ALIGN: usize = L::MIN_ALIGN;
    const ZEROED: bool = L::ZEROED;

    #[inline]
    fn get(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        paranoid(self);
        self.reserve_one()?;
        let block = self.inner.get(layout)?;
        // SAFETY: `reserve_one` left a live page with `len < ENTRIES`.
        unsafe {
            let page = &mut *self.newest;
            page.entries[page.len].write(Entry { block, layout });
            page.len += 1;
        }
        self.booked += 1;
        Some(block)
    }

    #[inline]
    unsafe fn put(&mut self, ptr: NonNull<u8>, layout: Layout) {
        paranoid(self);
        require_put::<Self>(ptr, layout);
        // Nothing until `deinit`: the block stays booked.
    }

    fn init() -> Self {
        Self::new(L::init())
    }

    fn deinit(&mut self) {
        self.release();
        self.inner.deinit();
    }

    fn check_invariants(&self) {
        let mut entries = 0;
        let mut page = self.newest;
        while !page.is_null() {
            // SAFETY: every page on the chain is a live booking page.
            unsafe {
                if (*page).len > ENTRIES {
                    crate::abort::abort_with(format_args!("Batch invariant broken: page overfull"));
                }
                entries += (*page).len;
                page = (*page).prev;
            }
        }
        if entries != self.booked {
            crate::abort::abort_with(format_args!(
                "Batch invariant broken: {entries} entries for {} booked blocks",
                self.booked
            ));
        }
        self.inner.check_invariants();
    }

    unsafe fn shrink(&mut self, ptr: NonNull<u8>, old: Layout, new: Layout) -> bool {
        paranoid(self);
        require_shrink::<Self>(ptr, old, new);
        // The booked entry keeps the original layout, which is what `L` must be given back.
        true
    }
}

impl<L: Layer> Drop for Batch<L> {
    fn drop(&mut self) {
        self.deinit();
    }
}

impl<L: Layer + fmt::Debug> fmt::Debug for Batch<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batch")
            .field("booked", &self.booked)
            .field("inner", &self.inner)
            .finish()
    }
}

// SAFETY: every block comes from `L`, attributed to the same region.
#[cfg(feature = "std")]
unsafe impl<L: crate::region::Attributed> crate::region::Attributed for Batch<L> {
    fn attribute(&mut self, owner: crate::region::Attribution) {
        self.inner.attribute(owner);
    }

    /// Puts do nothing: every block stays booked until the layer ends or rewinds.
    const RECLAIMS: bool = false;

    fn rewind(&mut self) {
        self.release();
        self.inner.rewind();
    }
}
