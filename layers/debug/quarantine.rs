//! `Quarantine<L, BYTES>`: put blocks are poisoned and held back in a FIFO before they go
//! down, and a write after the put is caught when they leave it.

use core::alloc::Layout;
use core::fmt;
use core::ptr::NonNull;

use crate::Layer;
use crate::abort::abort_with;
use crate::layer::{
    FREED, Shown, first_byte_not, paranoid, require_grow, require_put, require_shrink,
};

/// The most blocks the quarantine holds at once, whatever their bytes.
pub const QUARANTINE_BLOCKS: usize = 1024;

/// A block waiting in the quarantine.
#[derive(Clone, Copy)]
struct Held {
    ptr: NonNull<u8>,
    layout: Layout,
}

/// Catches writes to freed memory. A put block is filled with [`FREED`] (`0xdf`) and held
/// in a first-in first-out queue of up to `BYTES` bytes (and [`QUARANTINE_BLOCKS`] blocks);
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
    /// The queue's storage (`QUARANTINE_BLOCKS` slots, a block of `L`), once got.
    ring: Option<NonNull<Held>>,
    /// The slot of the oldest held block.
    head: usize,
    /// Held blocks, and their bytes.
    len: usize,
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
            ring: None,
            head: 0,
            len: 0,
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
        (self.len, self.bytes)
    }

    /// Checks every held block's poison, and lets them all go down to `L`.
    pub fn flush(&mut self) {
        while self.len > 0 {
            self.release_oldest();
        }
    }

    /// Flushes, and gives the queue's storage back to `L`.
    fn release(&mut self) {
        self.flush();
        if let Some(ring) = self.ring.take() {
            // SAFETY: the ring is a block of `L` got with this layout, held by this layer.
            unsafe { self.inner.put(ring.cast(), Self::ring_layout()) };
        }
    }

    fn ring_layout() -> Layout {
        Layout::new::<[Held; QUARANTINE_BLOCKS]>()
    }

    /// The ring, got from `L` at the first use (`None` when `L` refuses).
    fn ring(&mut self) -> Option<NonNull<Held>> {
        if self.ring.is_none() {
            self.ring = self.inner.get(Self::ring_layout()).map(NonNull::cast);
        }
        self.ring
    }

    /// The `index`th oldest held block (`index < len`).
    fn held_block(&self, index: usize) -> Held {
        let Some(ring) = self.ring else {
            abort_with(format_args!(
                "Quarantine invariant broken: {} blocks held without a queue",
                self.len
            ))
        };
        // SAFETY: the slot is below `QUARANTINE_BLOCKS`, in the ring, and was written when
        // its block was held (callers ask only for held blocks).
        unsafe { ring.add((self.head + index) % QUARANTINE_BLOCKS).read() }
    }

    /// Checks every held block's poison; returns their bytes.
    fn verify_held(&self) -> usize {
        (0..self.len)
            .map(|index| {
                let held = self.held_block(index);
                // SAFETY: a held block: poisoned at its put, then untouched by this layer.
                unsafe { verify(held) };
                held.layout.size()
            })
            .sum()
    }

    /// Checks the held blocks a last time and forgets them with the queue, for `L` to end
    /// with all its blocks (`deinit`, `rewind`).
    fn forget_held(&mut self) {
        self.verify_held();
        (self.ring, self.head, self.len, self.bytes) = (None, 0, 0, 0);
    }

    /// Checks the oldest held block's poison, and puts it down to `L`.
    fn release_oldest(&mut self) {
        let held = self.held_block(0);
        // SAFETY: a held block: poisoned at its put, then untouched by this layer.
        unsafe { verify(held) };
        self.head = (self.head + 1) % QUARANTINE_BLOCKS;
        self.len -= 1;
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
unsafe fn verify(held: Held) {
    // SAFETY: the block holds `layout.size()` bytes, the caller says.
    let bytes = unsafe { core::slice::from_raw_parts(held.ptr.as_ptr(), held.layout.size()) };
    if let Some(offset) = first_byte_not(bytes, FREED) {
        abort_with(format_args!(
            "Quarantine: the block at {:p} ({}) was written after it was put: byte {offset} \
             is {:#04x}, not {FREED:#04x}",
            held.ptr,
            Shown(held.layout),
            bytes[offset]
        ));
    }
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
        let ring = match self.ring() {
            Some(ring) if size != 0 && size <= BYTES => ring,
            // SAFETY: the caller's duties, which are `L`'s for a block of `L`.
            _ => return unsafe { self.inner.put(ptr, layout) },
        };
        // SAFETY: the caller gives the block back: its bytes are this layer's to write.
        unsafe { ptr.as_ptr().write_bytes(FREED, size) };
        while self.len == QUARANTINE_BLOCKS || self.bytes + size > BYTES {
            self.release_oldest();
        }
        // SAFETY: the slot is below `QUARANTINE_BLOCKS`, in the ring, and free.
        unsafe {
            ring.add((self.head + self.len) % QUARANTINE_BLOCKS)
                .write(Held { ptr, layout })
        };
        self.len += 1;
        self.bytes += size;
    }

    fn init() -> Self {
        Self::new(L::init())
    }

    fn deinit(&mut self) {
        self.forget_held();
        self.inner.deinit();
    }

    unsafe fn grow(&mut self, ptr: NonNull<u8>, old: Layout, new: Layout) -> bool {
        paranoid(self);
        require_grow::<Self>(ptr, old, new);
        // SAFETY: a live block, which `L` handed out; the caller's duties passed on.
        unsafe { self.inner.grow(ptr, old, new) }
    }

    unsafe fn shrink(&mut self, ptr: NonNull<u8>, old: Layout, new: Layout) -> bool {
        paranoid(self);
        require_shrink::<Self>(ptr, old, new);
        // SAFETY: as for `grow`.
        unsafe { self.inner.shrink(ptr, old, new) }
    }

    fn owns(&self, ptr: NonNull<u8>) -> bool {
        self.inner.owns(ptr)
    }

    fn check_invariants(&self) {
        let bytes = self.verify_held();
        if self.len > QUARANTINE_BLOCKS || bytes != self.bytes || bytes > BYTES {
            abort_with(format_args!(
                "Quarantine invariant broken: {} blocks of {} bytes held, counted {}, limit {BYTES}",
                self.len, bytes, self.bytes
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
            .field("held_blocks", &self.len)
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
        // As `deinit`: the held blocks and the ring end with the rest of `L`'s.
        self.forget_held();
        self.inner.rewind();
    }
}
