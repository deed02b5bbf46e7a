//! `LiveTable`: the hash table of live blocks that `Check`, `Profile` and `Pipe` keep, in
//! memory they hand it.
//!
//! A SwissTable in miniature: slots of 16 bytes (a pointer and a word) beside one
//! control byte per slot, `EMPTY`, `DELETED` or the 7-bit tag of the slot's hash. A probe
//! reads eight control bytes at once as a `u64` and finds tag matches and empty bytes with
//! word arithmetic (no SIMD, so it runs anywhere, Miri included), which keeps the probe
//! loop short and predictable.
//!
//! Invariants (`check_invariants`): `len` control bytes are full and each full slot is found
//! by `find`; `growth_left + len + tombstones == capacity / 2`; a group that holds an
//! `EMPTY` byte is never passed by a probe sequence of a live key (so `remove` may mark
//! `EMPTY` there instead of `DELETED`).

use core::alloc::Layout;
use core::mem::size_of;
use core::ptr::{self, NonNull};

use crate::Layer;
use crate::abort::debug_require;

/// One live block: its address and what the table's user keeps with it (`Check`: a
/// [`Checked`]; `Profile`: its layout, site and birth; `Pipe`: the region the block came
/// from).
#[derive(Clone, Copy)]
pub(crate) struct Slot<V> {
    pub(crate) ptr: *mut u8,
    pub(crate) value: V,
}

/// Bits of a packed layout that hold the size; the six above hold log2 of the alignment.
const SIZE_BITS: u32 = 58;

/// What `Check` keeps with a live block: its layout packed into a word, and the identifier
/// of the call site that allocated it (0 when none was recorded).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Checked {
    pub(crate) layout: u64,
    pub(crate) site: u32,
}

/// A layout packed into a word: the size in the low `SIZE_BITS` bits, log2 of the alignment
/// above; `None` for a size of 2^58 bytes or more (which no machine serves).
#[inline(always)]
pub(crate) fn pack_layout(layout: Layout) -> Option<u64> {
    let size = layout.size() as u64;
    (size < 1 << SIZE_BITS)
        .then(|| size | (u64::from(layout.align().trailing_zeros()) << SIZE_BITS))
}

/// The size of a packed layout.
pub(crate) fn packed_size(packed: u64) -> usize {
    (packed & ((1 << SIZE_BITS) - 1)) as usize
}

/// The alignment of a packed layout.
pub(crate) fn packed_align(packed: u64) -> usize {
    1 << (packed >> SIZE_BITS)
}

/// The layout [`pack_layout`] packed.
pub(crate) fn unpack_layout(packed: u64) -> Layout {
    // SAFETY: packed from a valid layout, or from a valid resize of one.
    unsafe { Layout::from_size_align_unchecked(packed_size(packed), packed_align(packed)) }
}

impl Slot<Checked> {
    pub(crate) fn size(self) -> usize {
        packed_size(self.value.layout)
    }

    pub(crate) fn align(self) -> usize {
        packed_align(self.value.layout)
    }

    pub(crate) fn unpack(self) -> Layout {
        unpack_layout(self.value.layout)
    }
}

const EMPTY: u8 = 0xFF;
const DELETED: u8 = 0x80;
const GROUP: usize = 8;
const LOW_BITS: u64 = 0x0101_0101_0101_0101;
const HIGH_BITS: u64 = 0x8080_8080_8080_8080;

/// The table. It owns no memory itself: its user hands it a layer, from which
/// [`grow_from`](LiveTable::grow_from) gets each table block (giving the previous one back)
/// and to which [`release_to`](LiveTable::release_to) gives the last one back.
pub(crate) struct LiveTable<V> {
    slots: *mut Slot<V>,
    ctrl: *mut u8,
    /// A power of two, at least 16, or 0 before the first rebuild.
    capacity: usize,
    /// `64 - log2(capacity / GROUP)`: group indices are the top bits of the hash.
    shift: u32,
    len: usize,
    growth_left: usize,
}

/// Where a probe for a key ended.
enum Probe {
    Found(usize),
    /// Not present; the first free (empty or deleted) index on its probe sequence.
    Vacant(usize),
}

impl<V: Copy> LiveTable<V> {
    pub(crate) const fn new() -> Self {
        LiveTable {
            slots: ptr::null_mut(),
            ctrl: ptr::null_mut(),
            capacity: 0,
            shift: 64,
            len: 0,
            growth_left: 0,
        }
    }

    pub(crate) const fn len(&self) -> usize {
        self.len
    }

    /// Whether an insert needs a [`rebuild`](Self::rebuild) first.
    #[inline(always)]
    pub(crate) const fn is_full(&self) -> bool {
        self.growth_left == 0
    }

    /// The capacity the next rebuild should have: at least three times the live blocks,
    /// so that the table can take a third of them again before it is rebuilt (see
    /// [`max_load`](Self::max_load)).
    fn next_capacity(&self) -> usize {
        ((self.len + 1) * 3).next_power_of_two().max(16)
    }

    /// Slots a table of `capacity` may fill, live or deleted, before it is rebuilt: half.
    /// A steady churn of inserts and removes turns slots of full groups into deleted ones,
    /// which probes walk past: at 7/8 full, as SwissTables go, `Check` cost 1.8x its inner
    /// layer on `benches/check.rs`'s call-site churn; at half, 1.5x, with a table of the
    /// same size there (4096 slots for 1000 live blocks).
    const fn max_load(capacity: usize) -> usize {
        capacity / 2
    }

    /// The memory block a table of `capacity` slots needs: slots, then control bytes.
    fn block_layout(capacity: usize) -> Option<Layout> {
        let slots = capacity.checked_mul(size_of::<Slot<V>>())?;
        Layout::from_size_align(slots.checked_add(capacity)?, align_of::<Slot<V>>()).ok()
    }

    /// The memory block in use and its layout, if any.
    fn block(&self) -> Option<(NonNull<u8>, Layout)> {
        let block = NonNull::new(self.slots.cast::<u8>())?;
        // SAFETY: a capacity in use had a valid block layout.
        Some((block, unsafe {
            Self::block_layout(self.capacity).unwrap_unchecked()
        }))
    }

    /// Moves the table to a bigger block got from `layer` (which
    /// [`next_capacity`](Self::next_capacity) sizes) and gives the previous block back to
    /// it. `None`, and the table unchanged, when `layer` has no room.
    #[cold]
    pub(crate) fn grow_from<L: Layer>(&mut self, layer: &mut L) -> Option<()> {
        let capacity = self.next_capacity();
        let block = layer.get(Self::block_layout(capacity)?)?;
        // SAFETY: a fresh block of `layer` with the table's layout for `capacity`, which
        // `next_capacity` makes a power of two of at least 16 with room for every slot.
        if let Some((old, layout)) = unsafe { self.rebuild(block, capacity) } {
            // SAFETY: the previous block came from `layer` (the table's blocks all come from
            // the one layer its user hands in) with this layout.
            unsafe { layer.put(old, layout) };
        }
        Some(())
    }

    /// Gives the table's block back to `layer` and forgets every slot (the user ends the
    /// blocks they name first).
    pub(crate) fn release_to<L: Layer>(&mut self, layer: &mut L) {
        if let Some((block, layout)) = self.block() {
            // SAFETY: the block came from `layer` with this layout and is not used again.
            unsafe { layer.put(block, layout) };
        }
        self.clear();
    }

    /// Moves every live slot into a fresh table of `capacity` slots in `block` (laid out by
    /// [`block_layout`](Self::block_layout)), and returns the previous block, if any, for
    /// the caller to free.
    ///
    /// # Safety
    ///
    /// `block` is valid for writes of `block_layout(capacity)` bytes, aligned to it, and
    /// disjoint from the current table; `capacity` is a power of two, at least 16, and more
    /// than twice `len`.
    unsafe fn rebuild(
        &mut self,
        block: NonNull<u8>,
        capacity: usize,
    ) -> Option<(NonNull<u8>, Layout)> {
        let old = self.block();
        let (old_slots, old_ctrl, old_capacity) = (self.slots, self.ctrl, self.capacity);
        self.slots = block.as_ptr().cast();
        // SAFETY: the control bytes follow the slots inside `block`.
        self.ctrl = unsafe { block.as_ptr().add(capacity * size_of::<Slot<V>>()) };
        // SAFETY: `capacity` control bytes are inside `block`.
        unsafe { self.ctrl.write_bytes(EMPTY, capacity) };
        self.capacity = capacity;
        self.shift = 64 - (capacity / GROUP).trailing_zeros();
        self.growth_left = Self::max_load(capacity);
        self.len = 0;
        for i in 0..old_capacity {
            // SAFETY: `i` is within the old table, which is still live.
            unsafe {
                if *old_ctrl.add(i) < DELETED {
                    let slot = *old_slots.add(i);
                    if let Probe::Vacant(at) = self.probe(slot.ptr.addr()) {
                        self.fill(at, slot);
                    }
                }
            }
        }
        old
    }

    /// The hash whose top bits pick the first group, and the 7-bit tag (from a second,
    /// independent multiplier, so that keys of one group rarely share a tag).
    #[inline(always)]
    fn hash(addr: usize) -> (u64, u8) {
        let h = (addr as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let tag = ((addr as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F) >> 57) as u8;
        (h, tag)
    }

    #[inline(always)]
    fn group_word(&self, group: usize) -> u64 {
        // SAFETY: `group < capacity / GROUP`, so its eight control bytes are in the table;
        // the control bytes start 16 * capacity bytes into an 8-aligned block, so the read
        // is aligned.
        u64::from_le(unsafe { self.ctrl.add(group * GROUP).cast::<u64>().read() })
    }

    /// Finds `addr`, or where it would go. Needs a table with at least one empty byte.
    #[inline(always)]
    fn probe(&self, addr: usize) -> Probe {
        let (h, tag) = Self::hash(addr);
        let groups_mask = self.capacity / GROUP - 1;
        let mut group = h.checked_shr(self.shift).unwrap_or(0) as usize & groups_mask;
        let mut stride = 0;
        let mut vacant = None;
        loop {
            let word = self.group_word(group);
            let x = word ^ (LOW_BITS * u64::from(tag));
            let mut matches = x.wrapping_sub(LOW_BITS) & !x & HIGH_BITS;
            while matches != 0 {
                let i = group * GROUP + (matches.trailing_zeros() / 8) as usize;
                // SAFETY: `i` is in the table. The control byte is compared too: the word
                // trick can flag a neighbour of a true match, and a deleted slot keeps its
                // stale pointer.
                let (ptr, ctrl) = unsafe { ((*self.slots.add(i)).ptr, *self.ctrl.add(i)) };
                if ptr.addr() == addr && ctrl == tag {
                    return Probe::Found(i);
                }
                matches &= matches - 1;
            }
            if vacant.is_none() {
                let free = word & HIGH_BITS;
                if free != 0 {
                    vacant = Some(group * GROUP + (free.trailing_zeros() / 8) as usize);
                }
            }
            if word & (word << 1) & HIGH_BITS != 0 {
                // An empty byte: no live key's sequence goes past this group. (An empty byte
                // is also free, so `vacant` is set by now.)
                return Probe::Vacant(vacant.unwrap_or(0));
            }
            stride += 1;
            group = (group + stride) & groups_mask;
        }
    }

    /// Writes a slot at a free index found by `probe`.
    #[inline(always)]
    fn fill(&mut self, at: usize, slot: Slot<V>) {
        // SAFETY: `at` is a free index of the table.
        unsafe {
            if *self.ctrl.add(at) == EMPTY {
                self.growth_left -= 1;
            }
            *self.ctrl.add(at) = Self::hash(slot.ptr.addr()).1;
            self.slots.add(at).write(slot);
        }
        self.len += 1;
    }

    /// Inserts a slot whose address is not live; `Err` with the index of the live slot
    /// that has it otherwise. Needs `!is_full()`.
    #[inline]
    pub(crate) fn insert(&mut self, slot: Slot<V>) -> Result<(), usize> {
        debug_require!(!self.is_full(), "LiveTable::insert needs room");
        match self.probe(slot.ptr.addr()) {
            Probe::Found(i) => Err(i),
            Probe::Vacant(at) => {
                self.fill(at, slot);
                Ok(())
            }
        }
    }

    /// The index of the live slot for `addr`.
    #[inline]
    pub(crate) fn find(&self, addr: usize) -> Option<usize> {
        if self.capacity == 0 {
            return None;
        }
        match self.probe(addr) {
            Probe::Found(i) => Some(i),
            Probe::Vacant(_) => None,
        }
    }

    /// The live slot at `i` (an index from `find`).
    #[inline(always)]
    pub(crate) fn slot(&self, i: usize) -> Slot<V> {
        debug_require!(i < self.capacity, "LiveTable: slot {i} out of range");
        // SAFETY: indices handed out by `find` are in the table.
        unsafe { *self.slots.add(i) }
    }

    /// Changes the value of the live slot at `i`.
    pub(crate) fn set_value(&mut self, i: usize, value: V) {
        debug_require!(i < self.capacity, "LiveTable: slot {i} out of range");
        // SAFETY: as for `slot`.
        unsafe { (*self.slots.add(i)).value = value };
    }

    /// Removes the live slot at `i`.
    #[inline]
    pub(crate) fn remove(&mut self, i: usize) {
        let word = self.group_word(i / GROUP);
        let mark = if word & (word << 1) & HIGH_BITS != 0 {
            // The group already had an empty byte, so no sequence passes it: stay empty.
            self.growth_left += 1;
            EMPTY
        } else {
            DELETED
        };
        // SAFETY: `i` is in the table.
        unsafe { *self.ctrl.add(i) = mark };
        self.len -= 1;
    }

    /// Every live slot.
    pub(crate) fn iter(&self) -> impl Iterator<Item = Slot<V>> + '_ {
        (0..self.capacity)
            // SAFETY: `i` is in the table.
            .filter(|&i| unsafe { *self.ctrl.add(i) } < DELETED)
            .map(|i| self.slot(i))
    }

    /// Forgets the table (its block must already be freed or handed back by the caller).
    fn clear(&mut self) {
        *self = Self::new();
    }

    /// Checks the invariants in the file header; returns the first broken one.
    pub(crate) fn check_invariants(&self) -> Result<(), &'static str> {
        let (mut full, mut deleted) = (0, 0);
        for i in 0..self.capacity {
            // SAFETY: `i` is in the table.
            match unsafe { *self.ctrl.add(i) } {
                EMPTY => {}
                DELETED => deleted += 1,
                tag if tag < DELETED => {
                    full += 1;
                    let slot = self.slot(i);
                    if Self::hash(slot.ptr.addr()).1 != tag || self.find(slot.ptr.addr()) != Some(i)
                    {
                        return Err("a live slot is not found where its hash leads");
                    }
                }
                _ => return Err("a control byte is neither empty, deleted nor a tag"),
            }
        }
        if full != self.len {
            return Err("the live count differs from the full slots");
        }
        if self.capacity != 0 && self.growth_left + full + deleted != Self::max_load(self.capacity)
        {
            return Err("growth left does not add up");
        }
        Ok(())
    }
}
