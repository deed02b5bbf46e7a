//! `Quarantine<L, BYTES>`: put blocks are poisoned and held back in a FIFO before they go
//! down, and a write after the put is caught when they leave it.

use core::alloc::Layout;
use core::fmt;
use core::ptr::NonNull;

use crate::Layer;
use crate::abort::abort_with;
use crate::layer::{FREED, Shown, differs_anywhere, paranoid, require_put};

use super::held_queue::{HELD_BLOCKS, Held, HeldQueue};

/// Catches writes to freed memory. A put block is filled with [`FREED`] (`0xdf`) and held
/// in a first-in first-out queue of up to `BYTES` bytes (and [`HELD_BLOCKS`] blocks);
/// only when newer puts push it out does it go down to `L`, and then every byte must still
/// read `0xdf`. A program that wrote into the block after putting it is stopped there, with
/// one line on stderr naming the block, its layout and the offset of the first byte that
/// changed, then an abort.
///
/// Meanwhile `L` cannot hand the block out again, so a use after free reads poison instead
/// of another block's data. [`flush`](Self::flush) checks and releases every held block at
/// once (so does `deinit`, and dropping the layer); zero-size blocks, and blocks larger
/// than `BYTES`, go down at once, unchecked. The queue's own storage is a block of `L`,
/// got at the first put.
///
/// Put a leak checker above it, not below: `Check<Quarantine<L>>`. Below, a checker would
/// count the held blocks and the queue as live.
///
/// ```
/// use core::alloc::Layout;
/// use stratalloc::{Layer, layers::{Quarantine, System}};
///
/// let mut quarantine = Quarantine::<_, 4096>::new(System::new());
/// let layout = Layout::from_size_align(64, 8).unwrap();
/// let block = quarantine.get(layout).unwrap();
/// // SAFETY: the block is put once, with its layout, and not touched afterwards.
/// unsafe { quarantine.put(block, layout) };
/// assert_eq!(quarantine.held(), (1, 64));
/// quarantine.flush(); // checks the poison, and lets the block go down
/// assert_eq!(quarantine.held(), (0, 0));
/// ```
pub struct Quarantine<L: Layer, const BYTES: usize = { 1 << 20 }> {
    queue: HeldQueue,
    /// The held blocks' bytes.
    bytes: usize,
    inner: L,
}

// SAFETY: the ring and the held blocks are memory of `L` that this layer alone uses; the
// layer moves between threads with `L`.
unsafe impl<L: Layer + Send, const BYTES: usize> Send for Quarantine<L, BYTES> {}

impl<L: Layer, const BYTES: usize> Quarantine<L, BYTES> {
    /// Wraps `inner`, holding nothing.
    pub const fn new(inner: L) -> Self {
        Quarantine {
            queue: HeldQueue::new(),
            bytes: 0,
            inner,
        }
    }

    crate::layer::layer_below! {
        owns: "the blocks held in quarantine and the queue's storage";
        into_inner after release: "every held block (checked) and the queue's storage";
    }

    /// How many blocks, and how many bytes, are held now.
    pub fn held(&self) -> (usize, usize) {
        (self.queue.len(), self.bytes)
    }

    /// Checks every held block's poison, and lets them all go down to `L`.
    pub fn flush(&mut self) {
        while let Some(held) = self.queue.pop() {
            self.let_go(held);
        }
    }

    /// Flushes, and gives the queue's storage back to `L`.
    fn release(&mut self) {
        self.flush();
        self.queue.release_storage(&mut self.inner);
    }

    /// Checks every held block's poison; returns their bytes.
    fn verify_held(&self) -> usize {
        self.queue
            .iter()
            .map(|held| {
                // SAFETY: a held block: poisoned at its put, then untouched by this layer.
                unsafe { verify(held) };
                held.layout.size()
            })
            .sum()
    }

    /// Checks a block taken off the queue, and puts it down to `L`.
    fn let_go(&mut self, held: Held) {
        // SAFETY: a held block: poisoned at its put, then untouched by this layer.
        unsafe { verify(held) };
        self.bytes -= held.layout.size();
        // SAFETY: the block was put to this layer with this layout, and is a block of `L`.
        unsafe { self.inner.put(held.ptr, held.layout) };
    }
}

/// Aborts, naming the first changed byte, unless every byte of `held` reads [`FREED`].
///
/// # Safety
///
/// `held` is a block of the quarantine's layer below, valid for reads.
#[inline(always)]
unsafe fn verify(held: Held) {
    // SAFETY: the block holds `layout.size()` bytes, the caller says.
    let bytes = unsafe { core::slice::from_raw_parts(held.ptr.as_ptr(), held.layout.size()) };
    if differs_anywhere(bytes, FREED) {
        report_write_after_put(held, bytes);
    }
}

/// Asks the processor to bring the first lines of `held`'s block into its caches (a hint:
/// nothing is read, and nothing happens where there is no such instruction).
#[inline(always)]
fn prefetch_block(held: Held) {
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    {
        use core::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        let start = held.ptr.as_ptr().cast_const().cast::<i8>();
        let lines = held.layout.size().min(256).div_ceil(64);
        for line in 0..lines {
            // SAFETY: a prefetch reads nothing and cannot fault; the address is inside the
            // held block (its first `lines` lines start within its size).
            unsafe { _mm_prefetch::<_MM_HINT_T0>(start.wrapping_add(line * 64)) };
        }
    }
    #[cfg(not(all(target_arch = "x86_64", not(miri))))]
    let _ = held;
}

/// Aborts, naming the first byte of `bytes` (the block of `held`) that is not [`FREED`]
/// (there is one: [`verify`] found it): out of line, so that a put's usual path saves no
/// registers for it.
#[cold]
#[inline(never)]
fn report_write_after_put(held: Held, bytes: &[u8]) -> ! {
    let offset = bytes.iter().position(|&b| b != FREED).unwrap_or(0);
    abort_with(format_args!(
        "Quarantine: the block at {:p} ({}) was written after it was put: byte {offset} is \
         {:#04x}, not {FREED:#04x}",
        held.ptr,
        Shown(held.layout),
        bytes[offset]
    ))
}

// SAFETY: blocks come unchanged from `L` and go back to it with the layout they were got
// with; a held block is neither handed out again (`L` has not got it back) nor touched but
// to be checked; the ring is a block of `L` no caller sees.
unsafe impl<L: Layer, const BYTES: usize> Layer for Quarantine<L, BYTES> {
    const MIN_ALIGN: usize = L::MIN_ALIGN;
    const ZEROED: bool = L::ZEROED;

    fn get(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        paranoid(self);
        self.inner.get(layout)
    }

    unsafe fn put(&mut self, ptr: NonNull<u8>, layout: Layout) {
        paranoid(self);
        require_put::<Self>(ptr, layout);
        let size = layout.size();
        if size == 0 || size > BYTES || !self.queue.ready(&mut self.inner) {
            // SAFETY: the caller's duties, which are `L`'s for a block of `L`.
            return unsafe { self.inner.put(ptr, layout) };
        }
        // SAFETY: the caller gives the block back: its bytes are this layer's to write.
        unsafe { ptr.as_ptr().write_bytes(FREED, size) };
        let held = Held { ptr, layout };
        self.bytes += size;
        if self.queue.len() == HELD_BLOCKS {
            // The steady state of small blocks: the new block takes the oldest one's slot.
            let oldest = self.queue.replace_oldest(held);
            // The next put checks the block now oldest: it was written `HELD_BLOCKS` puts
            // ago, and is likely out of the nearest caches, so its loads start now.
            prefetch_block(self.queue.get(0));
            self.let_go(oldest);
        } else {
            self.queue.push(held);
        }
        // Over `BYTES`, the oldest go; never the new block, as it alone fits (`size <=
        // BYTES`).
        while self.bytes > BYTES {
            match self.queue.pop() {
                Some(oldest) => self.let_go(oldest),
                None => break,
            }
        }
    }

    fn init() -> Self {
        Self::new(L::init())
    }

    fn deinit(&mut self) {
        // The held blocks (checked) and the ring go down first: a layer below that does not
        // book its blocks (`Ground`, `System`) would leak them, and `Check` would report
        // blocks the caller had put as leaks.
        self.release();
        self.inner.deinit();
    }

    crate::layer::resizes_go_below!();

    fn owns(&self, ptr: NonNull<u8>) -> bool {
        self.inner.owns(ptr)
    }

    fn check_invariants(&self) {
        let bytes = self.verify_held();
        if bytes != self.bytes || bytes > BYTES {
            abort_with(format_args!(
                "Quarantine invariant broken: {} blocks of {} bytes held, counted {}, limit {BYTES}",
                self.queue.len(),
                bytes,
                self.bytes
            ));
        }
        self.inner.check_invariants();
    }
}

impl<L: Layer, const BYTES: usize> Drop for Quarantine<L, BYTES> {
    fn drop(&mut self) {
        self.release();
    }
}

impl<L: Layer + fmt::Debug, const BYTES: usize> fmt::Debug for Quarantine<L, BYTES> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Quarantine")
            .field("held_blocks", &self.queue.len())
            .field("held_bytes", &self.bytes)
            .field("limit", &BYTES)
            .field("inner", &self.inner)
            .finish()
    }
}

// SAFETY: every block and the ring come from `L`, attributed to the same region.
#[cfg(feature = "std")]
unsafe impl<L: crate::region::Attributed, const BYTES: usize> crate::region::Attributed
    for Quarantine<L, BYTES>
{
    const RECLAIMS: bool = L::RECLAIMS;

    fn attribute(&mut self, owner: crate::region::Attribution) {
        self.inner.attribute(owner);
    }

    fn rewind(&mut self) {
        // As `deinit`: the held blocks (checked) and the ring go down before `L` rewinds.
        self.release();
        self.inner.rewind();
    }
}
