//! `Adopted<N>`: a source over memory the caller already holds (a `Box<[u8]>`, a `Vec<u8>`,
//! a `&'static mut [u8]`, a raw range), each range given back the way its origin requires.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::alloc::Layout;
use core::fmt;
use core::mem::ManuallyDrop;
use core::ops::Range;
use core::ptr::NonNull;

use crate::Layer;
use crate::layer::paranoid;
use crate::layers::Buffer;

/// Where adopted memory came from, which decides what happens to it when it is given back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A `Box<[u8]>`: freed to the global allocator, as the box would have been.
    Boxed,
    /// A `Vec<u8>`: freed to the global allocator with its capacity, as the vector would
    /// have been.
    Vec,
    /// A `&'static mut [u8]`: nothing to free; the slice is simply no longer borrowed.
    Static,
    /// A raw range ([`AdoptedMemory::from_raw_parts`]): never freed; it stays the caller's.
    Raw,
}

/// A range of initialised bytes handed over to be served from, with what it takes to give
/// it back: dropping it frees a box or vector to the global allocator and does nothing for
/// static or raw memory. [`Adopted`] and [`BufferManager`](crate::managed::BufferManager)
/// take it.
pub struct AdoptedMemory {
    base: NonNull<u8>,
    len: usize,
    /// A vector's capacity (its allocation's size), for giving it back; `len` otherwise.
    capacity: usize,
    origin: Origin,
}

// SAFETY: an `AdoptedMemory` owns its bytes exclusively (a box or vector moved in, a
// `&'static mut` borrow, or a raw range whose constructor's contract gives the same), so
// handing it to another thread is like sending a `Box<[u8]>`.
unsafe impl Send for AdoptedMemory {}
// SAFETY: `&AdoptedMemory` reads only the address, length and origin, never the bytes.
unsafe impl Sync for AdoptedMemory {}

impl AdoptedMemory {
    /// The bytes of a box, freed to the global allocator when given back.
    pub fn from_box(memory: Box<[u8]>) -> Self {
        let len = memory.len();
        // SAFETY: `Box::into_raw` never returns null.
        let base = unsafe { NonNull::new_unchecked(Box::into_raw(memory).cast::<u8>()) };
        AdoptedMemory {
            base,
            len,
            capacity: len,
            origin: Origin::Boxed,
        }
    }

    /// The initialised bytes of a vector (`0..len`; its spare capacity is kept but not
    /// served), freed to the global allocator with its capacity when given back.
    pub fn from_vec(memory: Vec<u8>) -> Self {
        let mut memory = ManuallyDrop::new(memory);
        AdoptedMemory {
            base: NonNull::new(memory.as_mut_ptr()).unwrap_or(NonNull::dangling()),
            len: memory.len(),
            capacity: memory.capacity(),
            origin: Origin::Vec,
        }
    }

    /// The bytes of a static slice; nothing is freed when given back.
    pub fn from_static(memory: &'static mut [u8]) -> Self {
        let len = memory.len();
        AdoptedMemory {
            base: NonNull::from(memory).cast(),
            len,
            capacity: len,
            origin: Origin::Static,
        }
    }

    /// `len` bytes at `base`, memory that is not a Rust value (a mapping, a C library's
    /// buffer); nothing is freed when given back: it stays the caller's to release after
    /// every user of it is gone.
    ///
    /// # Safety
    ///
    /// Callers must ensure that the `len` bytes at `base` are initialised and valid for
    /// reads and writes for as long as this value, or the layer or buffer it is adopted
    /// into, lives; and that nothing else reads or writes them meanwhile, with one
    /// exception: memory that overlaps what the same [`Adopted`] layer or
    /// [`BufferManager`](crate::managed::BufferManager) already holds (adopted ranges, and
    /// the manager's live buffers) is refused with an [`AdoptError`] naming both ranges
    /// before a byte of it is touched, so such a mistake is reported rather than undefined.
    pub unsafe fn from_raw_parts(base: NonNull<u8>, len: usize) -> Self {
        AdoptedMemory {
            base,
            len,
            capacity: len,
            origin: Origin::Raw,
        }
    }

    /// The adopted range of addresses.
    pub fn range(&self) -> Range<usize> {
        let start = self.base.as_ptr().addr();
        start..start + self.len
    }

    /// The addresses this memory holds, which no other adopted range may share: its whole
    /// allocation (a vector's capacity too, which is freed with it), not just the bytes served.
    pub(crate) fn held_range(&self) -> Range<usize> {
        let start = self.base.as_ptr().addr();
        start..start + self.capacity
    }

    /// The number of bytes adopted.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no byte was adopted.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Where the memory came from.
    pub fn origin(&self) -> Origin {
        self.origin
    }

    /// The first byte. Valid for reads and writes of [`len`](Self::len) initialised bytes
    /// while `self` lives (the constructors' guarantees and contract).
    pub fn as_ptr(&self) -> NonNull<u8> {
        self.base
    }
}

impl Drop for AdoptedMemory {
    fn drop(&mut self) {
        match self.origin {
            Origin::Boxed => {
                let slice = core::ptr::slice_from_raw_parts_mut(self.base.as_ptr(), self.len);
                // SAFETY: `base` and `len` are those of a `Box<[u8]>` leaked in `from_box`
                // and not freed since: this rebuilds and frees that box once.
                drop(unsafe { Box::from_raw(slice) });
            }
            Origin::Vec => {
                // SAFETY: pointer, length and capacity are those of the vector taken apart
                // in `from_vec` and not freed since: this rebuilds and frees it once.
                drop(unsafe { Vec::from_raw_parts(self.base.as_ptr(), self.len, self.capacity) });
            }
            Origin::Static | Origin::Raw => {}
        }
    }
}

impl fmt::Debug for AdoptedMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let range = self.range();
        write!(
            f,
            "AdoptedMemory({:#x}..{:#x}, {:?})",
            range.start, range.end, self.origin
        )
    }
}

/// Why memory was not adopted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdoptRefusal {
    /// The memory overlaps a range the layer or manager already holds.
    Overlaps {
        /// The range offered.
        adopting: Range<usize>,
        /// The range it overlaps.
        existing: Range<usize>,
        /// What the existing range is: `"an adopted range"`, or a manager's buffer.
        existing_is: &'static str,
        /// The existing buffer's identifier, when it is a manager's buffer.
        existing_id: Option<u64>,
    },
    /// An [`Adopted`] layer holds as many ranges as it has room for.
    Full {
        /// Its room, `N`.
        ranges: usize,
    },
    /// The memory is smaller than the buffer asked to be made of it.
    TooSmall {
        /// The bytes offered.
        len: usize,
        /// The elements asked for.
        count: usize,
        /// The size of each.
        element_size: usize,
    },
}

impl fmt::Display for AdoptRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdoptRefusal::Overlaps {
                adopting,
                existing,
                existing_is,
                existing_id,
            } => {
                write!(
                    f,
                    "adopting {:#x}..{:#x} refused: it overlaps {existing_is}",
                    adopting.start, adopting.end
                )?;
                if let Some(id) = existing_id {
                    write!(f, " #{id}")?;
                }
                write!(f, " at {:#x}..{:#x}", existing.start, existing.end)
            }
            AdoptRefusal::Full { ranges } => write!(
                f,
                "adopting refused: the layer holds {ranges} ranges already, its most"
            ),
            AdoptRefusal::TooSmall {
                len,
                count,
                element_size,
            } => write!(
                f,
                "adopting refused: {len} bytes cannot hold {count} elements of {element_size} bytes"
            ),
        }
    }
}

/// Memory that was not adopted, with the reason; the memory is handed back whole
/// ([`into_memory`](Self::into_memory)), or given back to its origin when this is dropped.
pub struct AdoptError {
    refusal: AdoptRefusal,
    memory: AdoptedMemory,
}

impl AdoptError {
    pub(crate) fn new(refusal: AdoptRefusal, memory: AdoptedMemory) -> Self {
        AdoptError { refusal, memory }
    }

    /// Why the memory was refused.
    pub fn refusal(&self) -> &AdoptRefusal {
        &self.refusal
    }

    /// The memory, unchanged, for the caller to use elsewhere.
    pub fn into_memory(self) -> AdoptedMemory {
        self.memory
    }
}

impl fmt::Display for AdoptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({:?} memory)", self.refusal, self.memory.origin)
    }
}

impl fmt::Debug for AdoptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdoptError")
            .field("refusal", &self.refusal)
            .field("memory", &self.memory)
            .finish()
    }
}

impl core::error::Error for AdoptError {}

/// Whether two ranges of addresses share a byte (empty ranges share none).
pub(crate) fn overlap(a: &Range<usize>, b: &Range<usize>) -> bool {
    a.start < b.end && b.start < a.end
}

/// One adopted range and the bump source serving it.
struct Slot {
    /// Declared first: dropped before the memory it points into.
    source: Buffer<'static>,
    memory: AdoptedMemory,
}

/// Serves blocks out of memory the caller hands over ([`adopt`](Adopted::adopt)), up to
/// `N` ranges, each with its own origin; when the layer is dropped, or on
/// [`give_back`](Adopted::give_back), each range goes back as its origin requires (a box or
/// vector to the global allocator, a static slice or raw range to nobody).
///
/// Each range is served as a [`Buffer`] is: bumping upward, taking back only the most
/// recent block at once, the rest at [`deinit`](Layer::deinit), which ends every block and
/// keeps the ranges for the blocks to come (as a `Buffer` keeps its memory). Stack a
/// reusing layer on top (a [`FreeList`](crate::layers::FreeList), a
/// [`Coalesce`](crate::layers::Coalesce)) when blocks are freed out of order. `get` tries
/// the ranges in the order they were adopted.
///
/// Adopting memory that overlaps a range already adopted is refused with an
/// [`AdoptError`] naming both ranges. A layer made by [`Layer::init`] holds no memory
/// (adopt some to serve blocks). Because dropping it may free boxes and vectors to the
/// global allocator, an `Adopted` that holds such memory must not itself serve the global
/// allocator.
///
/// ```
/// use core::alloc::Layout;
/// use stratalloc::{Layer, layers::{Adopted, AdoptedMemory}};
///
/// let mut adopted = Adopted::<4>::new();
/// adopted.adopt(AdoptedMemory::from_vec(vec![0; 256])).unwrap();
/// let layout = Layout::from_size_align(100, 8).unwrap();
/// let block = adopted.get(layout).unwrap();
/// // SAFETY: got just above with `layout`, put once.
/// unsafe { adopted.put(block, layout) };
/// // Dropping the layer frees the vector to the global allocator.
/// ```
pub struct Adopted<const N: usize = 8> {
    slots: [Option<Slot>; N],
}

impl<const N: usize> Adopted<N> {
    /// A layer holding no memory yet.
    pub const fn new() -> Self {
        Adopted {
            slots: [const { None }; N],
        }
    }

    /// Serves blocks from `memory` from now on, after the ranges adopted before it.
    ///
    /// # Errors
    ///
    /// [`AdoptRefusal::Overlaps`] when `memory` shares a byte with a range adopted already,
    /// [`AdoptRefusal::Full`] when `N` ranges are held; the memory comes back in the error.
    pub fn adopt(&mut self, memory: AdoptedMemory) -> Result<(), AdoptError> {
        let adopting = memory.held_range();
        for slot in self.slots.iter().flatten() {
            let existing = slot.memory.held_range();
            if overlap(&adopting, &existing) {
                let refusal = AdoptRefusal::Overlaps {
                    adopting,
                    existing,
                    existing_is: "an adopted range",
                    existing_id: None,
                };
                return Err(AdoptError::new(refusal, memory));
            }
        }
        let Some(free) = self.slots.iter_mut().find(|slot| slot.is_none()) else {
            return Err(AdoptError::new(AdoptRefusal::Full { ranges: N }, memory));
        };
        // SAFETY: the bytes are initialised and valid for reads and writes while `memory`
        // lives (its constructors), which is as long as the slot: the `Buffer` is dropped
        // first (field order) and never outlives the slot. No other range of this layer
        // overlaps them (checked above), and nothing outside uses them (the contract of
        // `AdoptedMemory`).
        let source = unsafe { Buffer::from_raw_parts(memory.as_ptr().as_ptr(), memory.len()) };
        *free = Some(Slot { source, memory });
        Ok(())
    }

    /// Ends every block and gives every range back to its origin: the layer then holds
    /// no memory, as one fresh from [`new`](Self::new).
    pub fn give_back(&mut self) {
        for slot in &mut self.slots {
            *slot = None;
        }
    }

    /// The source of the range that owns the block at `ptr`.
    fn source_of(&mut self, ptr: NonNull<u8>) -> Option<&mut Buffer<'static>> {
        self.slots
            .iter_mut()
            .flatten()
            .map(|slot| &mut slot.source)
            .find(|source| source.owns(ptr))
    }

    /// The ranges held, in the order they are served from.
    pub fn ranges(&self) -> impl Iterator<Item = (Range<usize>, Origin)> + '_ {
        self.slots
            .iter()
            .flatten()
            .map(|slot| (slot.memory.range(), slot.memory.origin()))
    }
}

impl<const N: usize> Default for Adopted<N> {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: each block comes from one range's `Buffer`, which keeps the contract over its
// range; ranges never overlap one another (`adopt` refuses overlaps) and stay valid while
// held, so blocks of different ranges never overlap either. A put goes to the one range
// that owns the block (`Buffer::owns` is exact).
unsafe impl<const N: usize> Layer for Adopted<N> {
    const OWNS_EXACT: bool = true;
    const OWNS_INTERIOR: bool = true;

    fn get(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        paranoid(self);
        self.slots
            .iter_mut()
            .flatten()
            .find_map(|slot| slot.source.get(layout))
    }

    unsafe fn put(&mut self, ptr: NonNull<u8>, layout: Layout) {
        paranoid(self);
        match self.source_of(ptr) {
            // SAFETY: the caller's duties; the block is one of this range's.
            Some(source) => unsafe { source.put(ptr, layout) },
            None => crate::abort::abort_with(format_args!(
                "Adopted: put of {ptr:p} ({} bytes), which is not a block of any adopted range",
                layout.size()
            )),
        }
    }

    fn init() -> Self {
        Self::new()
    }

    /// Ends every block; the ranges stay, served again from their starts.
    fn deinit(&mut self) {
        for slot in self.slots.iter_mut().flatten() {
            slot.source.deinit();
        }
    }

    unsafe fn shrink(&mut self, ptr: NonNull<u8>, old: Layout, new: Layout) -> bool {
        paranoid(self);
        let source = self.source_of(ptr);
        // SAFETY: the caller's duties, passed on to the range that owns the block.
        source.is_some_and(|source| unsafe { source.shrink(ptr, old, new) })
    }

    fn owns(&self, ptr: NonNull<u8>) -> bool {
        self.slots
            .iter()
            .flatten()
            .any(|slot| slot.source.owns(ptr))
    }

    fn check_invariants(&self) {
        // No allocation here (it may run inside a `get`): a pairwise walk of the array.
        for (i, slot) in self.slots.iter().enumerate() {
            let Some(slot) = slot else { continue };
            slot.source.check_invariants();
            for other in self.slots[i + 1..].iter().flatten() {
                if overlap(&slot.memory.held_range(), &other.memory.held_range()) {
                    crate::abort::abort_with(format_args!(
                        "Adopted invariant broken: ranges {:?} and {:?} overlap",
                        slot.memory, other.memory
                    ));
                }
            }
        }
    }
}

impl<const N: usize> fmt::Debug for Adopted<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(
                self.slots
                    .iter()
                    .flatten()
                    .map(|slot| (&slot.memory, &slot.source)),
            )
            .finish()
    }
}
