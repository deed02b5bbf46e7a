//! `HeldQueue`: a first-in first-out queue of put blocks held back from the layer below,
//! its storage a block of that layer: what `Quarantine` and `Deferred` keep.

use core::alloc::Layout;
use core::ptr::NonNull;

use crate::Layer;
use crate::abort::abort_with;

/// The most blocks a queue holds at once.
pub const HELD_BLOCKS: usize = 1024;

/// A put block waiting in a queue: where it is, and the layout it was put with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Held {
    /// The block (memory of the layer below, which has not got it back yet).
    pub ptr: NonNull<u8>,
    /// The layout it was put with.
    pub layout: Layout,
}

/// The queue: a ring of [`HELD_BLOCKS`] slots in a block of the layer below, got at the
/// first push.
///
/// Invariant: `len <= HELD_BLOCKS`; while `len > 0` the ring exists, and slots
/// `head..head + len` (modulo the ring) hold the queued blocks, oldest first.
pub(crate) struct HeldQueue {
    ring: Option<NonNull<Held>>,
    head: usize,
    len: usize,
}

impl HeldQueue {
    pub(crate) const fn new() -> Self {
        HeldQueue {
            ring: None,
            head: 0,
            len: 0,
        }
    }

    fn ring_layout() -> Layout {
        Layout::new::<[Held; HELD_BLOCKS]>()
    }

    /// Blocks queued.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Whether the storage exists (getting it from `inner` at the first call): a queue
    /// without it holds nothing, and its owner passes puts straight down.
    pub(crate) fn ready<L: Layer>(&mut self, inner: &mut L) -> bool {
        if self.ring.is_none() {
            self.ring = inner.get(Self::ring_layout()).map(NonNull::cast);
        }
        self.ring.is_some()
    }

    /// The ring, which exists whenever blocks are queued.
    #[inline(always)]
    fn ring(&self, what: &str) -> NonNull<Held> {
        let Some(ring) = self.ring else {
            no_storage(what, self.len)
        };
        ring
    }

    /// The `index`th oldest queued block (`index < len`).
    #[inline(always)]
    pub(crate) fn get(&self, index: usize) -> Held {
        let ring = self.ring("a look");
        // SAFETY: the slot is below `HELD_BLOCKS`, in the ring, and was written by the push
        // that queued its block (callers ask only for queued blocks).
        unsafe { ring.add((self.head + index) % HELD_BLOCKS).read() }
    }

    /// The queued blocks, oldest first.
    pub(crate) fn iter(&self) -> impl Iterator<Item = Held> + '_ {
        (0..self.len).map(|index| self.get(index))
    }

    /// Queues `held`; the caller made room (`len < HELD_BLOCKS`) and the storage ready.
    #[inline(always)]
    pub(crate) fn push(&mut self, held: Held) {
        let ring = self.ring("a push");
        if self.len == HELD_BLOCKS {
            abort_with(format_args!("held queue: a push into a full queue"));
        }
        // SAFETY: the slot is below `HELD_BLOCKS`, in the ring, and free.
        unsafe { ring.add((self.head + self.len) % HELD_BLOCKS).write(held) };
        self.len += 1;
    }

    /// Queues `held` in a full queue, in the place of the oldest queued block, which it
    /// returns: a pop and a push in one slot.
    #[inline(always)]
    pub(crate) fn replace_oldest(&mut self, held: Held) -> Held {
        let ring = self.ring("a replacement");
        if self.len != HELD_BLOCKS {
            not_full(self.len);
        }
        // SAFETY: the head slot is below `HELD_BLOCKS`, in the ring, and holds the oldest
        // queued block. In a full ring the newest slot is the one before the head, so once
        // the head moves past it the new block there is the newest.
        let oldest = unsafe { ring.add(self.head).replace(held) };
        self.head = (self.head + 1) % HELD_BLOCKS;
        oldest
    }

    /// Takes the oldest queued block off.
    #[inline(always)]
    pub(crate) fn pop(&mut self) -> Option<Held> {
        if self.len == 0 {
            return None;
        }
        let held = self.get(0);
        self.head = (self.head + 1) % HELD_BLOCKS;
        self.len -= 1;
        Some(held)
    }

    /// Gives the storage back to `inner`; the queue must be empty.
    pub(crate) fn release_storage<L: Layer>(&mut self, inner: &mut L) {
        if self.len != 0 {
            abort_with(format_args!(
                "held queue: storage released with {} blocks queued",
                self.len
            ));
        }
        if let Some(ring) = self.ring.take() {
            // SAFETY: the ring is a block of `inner` got with this layout, held by the
            // queue alone.
            unsafe { inner.put(ring.cast(), Self::ring_layout()) };
        }
    }
}

/// Aborts: the queue was used before it had storage (out of line, as every abort of the
/// queue, so that its inlined operations save no registers for the message).
#[cold]
#[inline(never)]
fn no_storage(what: &str, len: usize) -> ! {
    abort_with(format_args!(
        "held queue: {what} with {len} blocks queued and no storage"
    ))
}

/// Aborts: a replacement in a queue that is not full.
#[cold]
#[inline(never)]
fn not_full(len: usize) -> ! {
    abort_with(format_args!(
        "held queue: the oldest block replaced in a queue of {len} blocks, not full"
    ))
}
