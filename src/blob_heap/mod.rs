//! A buddy heap that lives entirely inside a blob of memory, so that several handles, in
//! one process or in several that map the same file, can attach to it and share it (the
//! Dragon heap manager's design). Entry point: [`BlobHeap`], made by
//! [`init`](BlobHeap::init) and joined by [`attach`](BlobHeap::attach).
//!
//! # Layout of a blob
//!
//! ```text
//! | header (magic, version, geometry, lock, free-list heads, counts) |
//! | per order: a bitmap of free blocks, a bitmap of live blocks      |
//! | a stamp per smallest block (generation, pins, live bit)          |
//! | padding to the alignment                                         |
//! | the heap: 2^max_order bytes, in blocks of 2^min_order..          |
//! ```
//!
//! Everything the heap knows is in the blob, and it names blocks by their *offset* from the
//! start of the heap, never by address, so a process that maps the blob elsewhere reads
//! the same heap. A free block starts with its free-list links (next, previous, and a check
//! word derived from its offset and order); the bitmaps say which blocks are free and which
//! are live at each order, which is what [`BlobHeap::recover`] rebuilds the free lists
//! from.
//!
//! # Stamps: which allocation a block is, and who still looks at it
//!
//! Beside the bitmaps, each smallest block's place has a 64-bit stamp: the *generation* of
//! the block that starts there (48 bits, bumped by every allocation and every free of a
//! block starting there: it would take a place allocated and freed a million times a
//! second for four years to come back to a generation), its *pins* (15 bits: views of the
//! block that must not outlive it) and a *live* bit (set by the allocation, cleared by its
//! free). A block handed out carries its generation ([`BlobBlock::generation`]); any
//! handle, in any process, can then tell whether that allocation is still live
//! ([`BlobHeap::generation`]), free it only if it is ([`BlobHeap::free_generation`]), and
//! pin it ([`BlobHeap::pin`]) so that no handle frees it until it is unpinned: a free of a
//! pinned block fails with [`BlobError::Pinned`], a pin of anything but a live
//! allocation with [`BlobError::StaleGeneration`]. Pins and generations change by
//! compare-and-swap on the stamp, without the lock; a free changes the stamp (not live,
//! the next generation) before anything else, so it and a pin never both succeed. Pins
//! are not tied to their taker: pins a process still holds when it ends stay, and its
//! blocks cannot be freed by anyone after it (they leak, which [`BlobHeap::stats`] shows
//! as live memory), never freed under a view.
//!
//! # Damage and dead lock holders
//!
//! Before the heap follows or rewrites a free block's links it checks them against the
//! bitmaps and the check word. When they disagree (a program wrote past the end of its
//! block into a free neighbour), the operation fails without changing anything and the
//! heap records that it needs recovery; so it does when the lock's word names as its holder
//! a thread that no longer exists (on Linux: a handle that died holding the lock, or a
//! stray write into the header). Until [`BlobHeap::recover`] runs,
//! allocations and frees return [`BlobError::RecoveryNeeded`].
//!
//! No operation waits for the lock for ever: a holder that exists is waited for up to the
//! handle's [lock patience](BlobHeap::set_lock_patience), after which the operation fails
//! with [`BlobError::LockUnavailable`] naming the holder; a holder that is gone is found
//! within a few tens of milliseconds. When the lock names a live thread that does not in
//! fact hold it (a stray write that happens to name one), [`BlobHeap::break_lock`] clears it. Recovery trusts only the bitmaps of live blocks: every
//! live block stays live and intact, and all other memory becomes free again. A block a
//! dead process had allocated stays live until some handle frees it.

mod error;
mod lock;

use core::fmt;
use core::marker::PhantomData;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use core::time::Duration;
use std::time::Instant;

pub use error::{BlobError, RecoveryReason};
use lock::{BlobLock, Holder, Taken};

/// The first word of a blob that holds a heap.
const MAGIC: u64 = u64::from_le_bytes(*b"stratBLB");
/// The format version this crate writes and reads (2: stamps and the heap's id; 3: the
/// PID namespace).
pub const BLOB_VERSION: u32 = 3;
/// The smallest order a block may have: 32 bytes hold a free block's three link words.
pub const LOWEST_ORDER: u32 = 5;
/// The largest order a heap may have (16 TiB; 1 GiB on 32-bit targets).
pub const HIGHEST_ORDER: u32 = 44;
/// The most orders a heap may span, from its smallest block to the whole heap.
pub const MOST_ORDERS: u32 = 29;
const SLOTS: usize = MOST_ORDERS as usize;
/// An empty link.
const NIL: u64 = u64::MAX;
/// Mixed into a free block's check word.
const LINK_SALT: u64 = 0x9e37_79b9_7f4a_7c15;
/// A stamp's generation bits.
const GENERATION_MASK: u64 = (1 << 48) - 1;
/// Where a stamp's pin count starts.
const PIN_SHIFT: u32 = 48;
/// One pin, in a stamp.
const PIN: u64 = 1 << PIN_SHIFT;
/// A stamp's live bit: an allocation starts at this place and was not freed.
const LIVE: u64 = 1 << 63;
/// The most pins a block can have at once.
pub const MOST_PINS: u32 = (1 << 15) - 1;
/// Codes of the header's `recovery` word.
const RECOVERY_NONE: u32 = 0;
const RECOVERY_CORRUPT: u32 = 1;
const RECOVERY_HOLDER_DIED: u32 = 2;
const RECOVERY_ORPHANED: u32 = 3;

// ---- geometry and layout -----------------------------------------------------------------

/// A blob heap's shape: the heap's size, its smallest block, and the alignment of the data.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct BlobGeometry {
    max_order: u32,
    min_order: u32,
    alignment: usize,
}

impl BlobGeometry {
    /// A heap of `1 << max_order` bytes whose smallest block is `1 << min_order` bytes,
    /// with its data starting at a multiple of `alignment` bytes from the start of the
    /// blob (so every block of at least `alignment` bytes is aligned to it relative to the
    /// blob's start, and absolutely when the blob is, as a file map is to its page size).
    pub const fn new(max_order: u32, min_order: u32, alignment: usize) -> Result<Self, BlobError> {
        if min_order > max_order {
            return Err(BlobError::MinOrderAboveMax {
                min_order,
                max_order,
            });
        }
        // On 32-bit targets the heap and its metadata must also fit in the address space.
        let highest = if HIGHEST_ORDER < usize::BITS - 2 {
            HIGHEST_ORDER
        } else {
            usize::BITS - 2
        };
        let lowest = LOWEST_ORDER;
        if min_order < lowest || max_order > highest {
            let order = if min_order < lowest {
                min_order
            } else {
                max_order
            };
            return Err(BlobError::OrderOutOfRange {
                order,
                lowest,
                highest,
            });
        }
        if max_order - min_order + 1 > MOST_ORDERS {
            return Err(BlobError::TooManyOrders {
                orders: max_order - min_order + 1,
                limit: MOST_ORDERS,
            });
        }
        if !alignment.is_power_of_two() || alignment < 8 {
            return Err(BlobError::BadAlignment { alignment });
        }
        if alignment > 1 << max_order {
            return Err(BlobError::AlignmentAboveHeap {
                alignment,
                heap_bytes: 1 << max_order,
            });
        }
        Ok(BlobGeometry {
            max_order,
            min_order,
            alignment,
        })
    }

    /// The order of the whole heap.
    pub const fn max_order(&self) -> u32 {
        self.max_order
    }

    /// The order of the smallest block.
    pub const fn min_order(&self) -> u32 {
        self.min_order
    }

    /// The alignment of the data.
    pub const fn alignment(&self) -> usize {
        self.alignment
    }

    /// The heap's size in bytes (what blocks are carved from).
    pub const fn heap_bytes(&self) -> usize {
        1 << self.max_order
    }

    /// The bytes a blob must have to hold this heap: header, bitmaps, padding and data.
    pub fn required_size(&self) -> usize {
        self.maps().data + self.heap_bytes()
    }

    fn orders(&self) -> core::ops::RangeInclusive<u32> {
        self.min_order..=self.max_order
    }

    /// Where the bitmaps and the data start, from the geometry alone.
    fn maps(&self) -> Maps {
        let mut maps = Maps {
            free: [0; SLOTS],
            live: [0; SLOTS],
            stamps: 0,
            data: 0,
        };
        let mut at = size_of::<Header>().next_multiple_of(64);
        for order in self.orders() {
            let words = (1usize << (self.max_order - order)).div_ceil(64);
            let slot = (order - self.min_order) as usize;
            maps.free[slot] = at;
            maps.live[slot] = at + words * 8;
            at += 2 * words * 8;
        }
        maps.stamps = at;
        at += (1usize << (self.max_order - self.min_order)) * size_of::<u64>();
        maps.data = at.next_multiple_of(self.alignment.max(64));
        maps
    }
}

/// Byte offsets in the blob of each order's bitmaps, of the stamps, and of the data.
#[derive(Clone, Copy)]
struct Maps {
    free: [usize; SLOTS],
    live: [usize; SLOTS],
    stamps: usize,
    data: usize,
}

/// The header at the start of the blob. Every field but the lock is an atomic: handles in
/// other processes read and write it too (under the lock, except the words noted).
#[repr(C)]
struct Header {
    /// `MAGIC` while the blob holds a heap (read without the lock).
    magic: AtomicU64,
    version: AtomicU32,
    max_order: AtomicU32,
    min_order: AtomicU32,
    /// `RECOVERY_*`, with the damaged block below when it is `RECOVERY_CORRUPT` (the
    /// orphaned lock's thread in `recovery_offset` when it is `RECOVERY_ORPHANED`).
    recovery: AtomicU32,
    recovery_order: AtomicU32,
    /// Handles attached (a handle of a process that died is never subtracted).
    handles: AtomicU32,
    recovery_offset: AtomicU64,
    alignment: AtomicU64,
    live_blocks: AtomicU64,
    allocated: AtomicU64,
    /// Bumped by every free (read without the lock by waiting allocations).
    frees: AtomicU32,
    /// Allocations waiting for a free (without the lock).
    waiters: AtomicU32,
    lock: BlobLock,
    heads: [AtomicU64; SLOTS],
    free_blocks: [AtomicU64; SLOTS],
    /// A random number drawn by `init`: tells apart two heaps, whatever their addresses
    /// in this process (read without the lock; written once).
    id: AtomicU64,
    /// The PID namespace of the processes using the heap ([`pid_namespace`]; 0 where it
    /// cannot be read): set by `init` and `claim_pid_namespace`, checked by `attach`.
    pid_namespace: AtomicU64,
}

// ---- the handle: making, attaching, detaching --------------------------------------------

/// A block handed out by [`BlobHeap::alloc`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct BlobBlock {
    /// Where the block starts, from the start of the heap: the same in every process.
    pub offset: u64,
    /// Its size in bytes (the request rounded up to a power of two).
    pub size: usize,
    /// Which allocation of this place it is (see "Stamps" in the module's docs): the same
    /// in every process while the block is live, another once it was freed.
    pub generation: u64,
    ptr: NonNull<u8>,
}

impl BlobBlock {
    /// The block's memory in this handle's mapping of the blob. Reading and writing it is
    /// the caller's business (it is `unsafe`, as for any raw pointer): the heap hands a
    /// block to one allocation at a time, but any handle that knows the offset may free it.
    pub fn as_ptr(&self) -> NonNull<[u8]> {
        NonNull::slice_from_raw_parts(self.ptr, self.size)
    }
}

/// A blob heap's figures at one moment (see [`BlobHeap::stats`]).
#[derive(Clone, PartialEq, Debug)]
pub struct BlobStats {
    /// The heap's size in bytes.
    pub total_bytes: usize,
    /// Bytes in live blocks.
    pub allocated_bytes: usize,
    /// Bytes in free blocks.
    pub free_bytes: usize,
    /// Live blocks.
    pub live_blocks: u64,
    /// `allocated_bytes / total_bytes`, in percent.
    pub utilisation: f64,
    /// Free blocks per order, from the smallest order to the largest: `(order, count)`.
    pub free_blocks: Vec<(u32, u64)>,
    /// Handles attached (handles of processes that died included).
    pub handles: u32,
    /// Why the heap waits for recovery, when it does.
    pub recovery_needed: Option<RecoveryReason>,
}

/// A handle on a buddy heap that lives in a blob of memory (see the [module](self)).
///
/// Every operation takes `&self` and the heap's lock, so one handle can be shared between
/// threads; other handles, in this process or others, see the same heap. Dropping the
/// handle detaches it.
///
/// **`BlobHeap` and [`Buddy`](crate::layers::Buddy)** are both binary buddy heaps.
/// `BlobHeap` keeps everything (header, bitmaps, free lists) inside the one blob of fixed
/// size it is given, names blocks by their offset (so a process that maps the blob
/// elsewhere reads the same heap), frees by offset alone (a bitmap of live blocks gives the
/// order), changes the heap under a process-shared lock, and can
/// [`recover`](Self::recover). `Buddy` is a [`Layer`](crate::Layer) for one owner in one
/// process: it takes arenas from the layer below as it needs them, links its free lists by
/// address, keeps its bitmaps beside each arena, caches put blocks, and is freed with the
/// layout. Use `BlobHeap` for a heap in shared memory; stack `Buddy` into an allocator.
///
/// ```
/// use stratalloc::blob_heap::{BlobGeometry, BlobHeap};
///
/// // A 64 KiB heap of blocks from 64 bytes up, in 64-byte-aligned memory.
/// let geometry = BlobGeometry::new(16, 6, 64)?;
/// #[repr(align(64))]
/// struct Line([u8; 64]);
/// let mut memory: Vec<Line> = (0..geometry.required_size().div_ceil(64)).map(|_| Line([0; 64])).collect();
/// // SAFETY: a slice of bytes over the lines, which outlive the heap.
/// let blob = unsafe { std::slice::from_raw_parts_mut(memory.as_mut_ptr().cast::<u8>(), memory.len() * 64) };
///
/// let heap = BlobHeap::init(blob, geometry)?;
/// let block = heap.alloc(100)?;
/// assert_eq!(block.size, 128);
/// // SAFETY: the block is ours until we free it.
/// unsafe { block.as_ptr().cast::<u8>().write_bytes(7, block.size) };
/// heap.free(block.offset)?;
/// assert_eq!(heap.free(block.offset).unwrap_err().to_string(),
///     format!("offset {:#x} is not a live block (never allocated, or freed already)", block.offset));
/// assert_eq!(heap.stats().allocated_bytes, 0);
/// # Ok::<(), stratalloc::blob_heap::BlobError>(())
/// ```
pub struct BlobHeap<'a> {
    base: NonNull<u8>,
    len: usize,
    geometry: BlobGeometry,
    maps: Maps,
    /// How long an operation waits for a lock that a live thread holds, in nanoseconds.
    lock_patience: AtomicU64,
    /// The process that attached: only it was counted among the heap's handles. A child
    /// forked with the handle holds an uncounted copy, which must not take its parent's
    /// count away when dropped, nor count as the heap's last handle in `destroy`.
    pid: u32,
    _memory: PhantomData<&'a mut [u8]>,
}

// SAFETY: the handle holds only the blob's address; everything it changes there is
// changed under the blob's lock, or is an atomic read without it.
unsafe impl Send for BlobHeap<'_> {}
// SAFETY: as above: every `&self` operation takes the lock.
unsafe impl Sync for BlobHeap<'_> {}

impl<'a> BlobHeap<'a> {
    /// The bytes a blob must have for a heap of `1 << max_order` bytes with blocks from
    /// `1 << min_order` up and data aligned to `alignment` (the seed's `Heap.size`).
    pub fn required_size(
        max_order: u32,
        min_order: u32,
        alignment: usize,
    ) -> Result<usize, BlobError> {
        Ok(BlobGeometry::new(max_order, min_order, alignment)?.required_size())
    }

    /// Makes a new, empty heap in `blob` (whatever it held is overwritten) and returns the
    /// first handle on it.
    ///
    /// Errors: a blob smaller than [`BlobGeometry::required_size`], or not starting on a
    /// 64-byte boundary.
    pub fn init(blob: &'a mut [u8], geometry: BlobGeometry) -> Result<Self, BlobError> {
        let len = blob.len();
        // SAFETY: the slice is ours, exclusively, for `'a`.
        unsafe { Self::init_raw(NonNull::from(blob).cast(), len, geometry) }
    }

    /// Attaches a handle to the heap `blob` already holds (made by [`init`](Self::init),
    /// perhaps in another process).
    ///
    /// Errors, never a crash, for memory that does not hold a heap: a wrong magic word,
    /// another version, an impossible geometry, a blob smaller than the geometry needs.
    ///
    /// # Safety
    ///
    /// The heap's bookkeeping lives in the blob, and the heap trusts what it finds there
    /// as far as it cannot check it: every offset it writes through is checked to lie in
    /// the heap, and the lock word holds only a thread id and two flags, but bitmaps that
    /// other code changed could have the heap hand out a block that is in use. So callers
    /// must ensure that, when `blob` passes the checks above, it holds a heap that
    /// [`init`](Self::init) or [`init_raw`](Self::init_raw) made in this very
    /// memory (or in the same file, mapped by another process), and that its header has
    /// been changed since only by heap handles: not copied from elsewhere, and not written
    /// by other code. And every handle of the heap must be in a process of this process's
    /// PID namespace (not, say, in another container sharing the file): the lock names its
    /// holder by thread id, and a thread id of another namespace would be taken for a thread
    /// that no longer exists, whose lock is taken over. The heap records the namespace of
    /// the process that made it, and `attach` from another is
    /// [`BlobError::OtherPidNamespace`] (see [`claim_pid_namespace`](Self::claim_pid_namespace));
    /// where a process cannot read its namespace (no `/proc`), that check is skipped and the
    /// rule is the caller's alone. Memory that fails the checks is reported as an error,
    /// whatever it holds.
    ///
    /// Safe code cannot attach to bytes it wrote:
    ///
    /// ```compile_fail,E0133
    /// use stratalloc::blob_heap::BlobHeap;
    ///
    /// let mut bytes = vec![0u8; 4096];
    /// let _ = BlobHeap::attach(&mut bytes); // error: call to unsafe function
    /// ```
    pub unsafe fn attach(blob: &'a mut [u8]) -> Result<Self, BlobError> {
        let len = blob.len();
        // SAFETY: the slice is ours, exclusively, for `'a`; the heap in it is the caller's
        // duty.
        unsafe { Self::attach_raw(NonNull::from(blob).cast(), len) }
    }

    /// [`init`](Self::init) over raw memory.
    ///
    /// # Safety
    ///
    /// `base..base + len` is valid for reads and writes for `'a`, and while the heap lives
    /// it is touched only through heap handles and the blocks they hand out (other
    /// processes mapping the same memory included). No other handle is using it.
    pub unsafe fn init_raw(
        base: NonNull<u8>,
        len: usize,
        geometry: BlobGeometry,
    ) -> Result<Self, BlobError> {
        let heap = Self::over(base, len, geometry)?;
        let header = base.as_ptr().cast::<Header>();
        // SAFETY: the blob is large enough (checked in `over`) and ours to write, by the
        // caller's promise; zeroes are a valid value for every atomic in the header and
        // every bitmap word.
        unsafe {
            base.as_ptr().write_bytes(0, heap.maps.data);
            BlobLock::init(&raw mut (*header).lock)?;
        }
        let h = heap.header();
        h.version.store(BLOB_VERSION, Ordering::Relaxed);
        h.max_order.store(geometry.max_order, Ordering::Relaxed);
        h.min_order.store(geometry.min_order, Ordering::Relaxed);
        h.alignment
            .store(geometry.alignment as u64, Ordering::Relaxed);
        h.handles.store(1, Ordering::Relaxed);
        h.id.store(fresh_id(), Ordering::Relaxed);
        h.pid_namespace.store(pid_namespace(), Ordering::Relaxed);
        for head in &h.heads {
            head.store(NIL, Ordering::Relaxed);
        }
        heap.push(0, geometry.max_order);
        h.magic.store(MAGIC, Ordering::Release);
        Ok(heap)
    }

    /// [`attach`](Self::attach) to raw memory.
    ///
    /// # Safety
    ///
    /// As [`init_raw`](Self::init_raw), except that other handles may be using the heap,
    /// and as [`attach`](Self::attach) for the heap the memory holds.
    pub unsafe fn attach_raw(base: NonNull<u8>, len: usize) -> Result<Self, BlobError> {
        // SAFETY: the caller's promise.
        let h = unsafe { header_at(base, len) }?;
        let (max_order, min_order) = (
            h.max_order.load(Ordering::Relaxed),
            h.min_order.load(Ordering::Relaxed),
        );
        let alignment = h.alignment.load(Ordering::Relaxed);
        let bad = BlobError::BadGeometry {
            max_order,
            min_order,
            alignment,
        };
        let geometry = BlobGeometry::new(
            max_order,
            min_order,
            usize::try_from(alignment).map_err(|_| bad)?,
        )
        .map_err(|_| bad)?;
        let (made_in, here) = (h.pid_namespace.load(Ordering::Relaxed), pid_namespace());
        if made_in != here && made_in != 0 && here != 0 {
            return Err(BlobError::OtherPidNamespace {
                heap: made_in,
                here,
            });
        }
        let heap = Self::over(base, len, geometry)?;
        h.handles.fetch_add(1, Ordering::Relaxed);
        if matches!(h.lock.holder(), Holder::Gone { .. }) {
            // An orphaned lock: taking it marks it, and records that the heap needs
            // recovery, which `recovery_needed` then reports. Taking it can fail only as
            // any later operation would, which reports it.
            drop(heap.lock());
        }
        Ok(heap)
    }

    /// Records this process's PID namespace as the one of the heap that `base..base + len`
    /// holds, so that [`attach`](Self::attach) accepts this process and refuses processes
    /// of the namespace recorded before (with [`BlobError::OtherPidNamespace`]). For a heap
    /// that outlived every process of its namespace, as a file does when its container
    /// starts again with a new one.
    ///
    /// # Safety
    ///
    /// As [`attach_raw`](Self::attach_raw), and no process of another PID namespace uses the
    /// heap, now or later: its handles have ended (or their processes have). A process of
    /// the old namespace that still held the heap's lock would have it taken over as if it
    /// had died, with two processes changing the heap at once.
    pub unsafe fn claim_pid_namespace(base: NonNull<u8>, len: usize) -> Result<(), BlobError> {
        // SAFETY: the caller's promise.
        let h = unsafe { header_at(base, len) }?;
        h.pid_namespace.store(pid_namespace(), Ordering::Relaxed);
        Ok(())
    }

    /// The handles attached to the heap that `base..base + len` holds (this version's, as
    /// the header's magic and version words say), or `None` when it holds none: for a
    /// caller about to [`init_raw`](Self::init_raw) memory that other processes may map,
    /// which would reset a heap under their handles. (A handle of a process that died is
    /// never subtracted.) Nothing is written.
    ///
    /// # Safety
    ///
    /// `base..base + len` is valid for reads.
    pub unsafe fn attached_handles(base: NonNull<u8>, len: usize) -> Option<u32> {
        // SAFETY: the caller's promise; the header is only read.
        let h = unsafe { header_at(base, len) }.ok()?;
        Some(h.handles.load(Ordering::Relaxed))
    }

    /// A handle over `base` for `geometry`, checking only the blob's size and alignment.
    fn over(base: NonNull<u8>, len: usize, geometry: BlobGeometry) -> Result<Self, BlobError> {
        if !base.as_ptr().addr().is_multiple_of(64) {
            return Err(BlobError::BlobMisaligned {
                address: base.as_ptr().addr(),
            });
        }
        let needed = geometry.required_size();
        if len < needed {
            return Err(BlobError::BlobTooSmall { needed, given: len });
        }
        Ok(BlobHeap {
            base,
            len,
            geometry,
            maps: geometry.maps(),
            lock_patience: AtomicU64::new(Self::DEFAULT_LOCK_PATIENCE.as_nanos() as u64),
            pid: std::process::id(),
            _memory: PhantomData,
        })
    }

    /// Detaches this handle; the heap and its blocks stay as they are for other handles.
    /// (Dropping the handle does the same.)
    pub fn detach(self) {}

    /// Ends the heap: its blob no longer holds one (a later attach fails with
    /// [`BlobError::NotAHeap`]), and the memory is the caller's again.
    ///
    /// Fails with [`BlobError::StillAttached`] when other handles are attached (this
    /// handle is then detached, the heap left as it was). A handle that a forked child
    /// inherited is not one of the counted handles, so its parent's keeps the heap.
    pub fn destroy(self) -> Result<(), BlobError> {
        let guard = self.lock()?;
        let handles = self.header().handles.load(Ordering::Relaxed);
        if handles > u32::from(self.attached_here()) {
            return Err(BlobError::StillAttached { handles });
        }
        self.header().magic.store(0, Ordering::Release);
        drop(guard);
        Ok(())
    }

    /// Whether this process attached the handle (and so is counted among the heap's
    /// handles), not a child forked with it.
    fn attached_here(&self) -> bool {
        std::process::id() == self.pid
    }

    /// The heap's geometry.
    pub fn geometry(&self) -> BlobGeometry {
        self.geometry
    }

    /// The heap's id: a random number drawn when it was made, the same in every handle
    /// and process, so two handles are on one heap exactly when their ids are equal
    /// (whether or not they map it at the same address).
    pub fn id(&self) -> u64 {
        self.header().id.load(Ordering::Relaxed)
    }

    /// The blob's length in bytes (at least the geometry's required size).
    pub fn blob_len(&self) -> usize {
        self.len
    }

    /// Where the heap's process-shared lock lies in this handle's mapping of the blob (the
    /// Dragon seed's `exclusive_access`), for debuggers and for bindings that show it. The
    /// lock is taken only through [`with_lock`](Self::with_lock) and the heap's operations.
    pub fn lock_ptr(&self) -> NonNull<u8> {
        NonNull::from(&self.header().lock).cast()
    }

    fn header(&self) -> &Header {
        // SAFETY: `over` checked that the blob holds a header's bytes, 64-byte aligned;
        // the memory stays valid for `'a`.
        unsafe { &*self.base.as_ptr().cast::<Header>() }
    }

    // ---- locking, allocation and freeing -------------------------------------------------

    /// Runs `f` with the heap's lock held, for a run of allocations and frees through the
    /// [`BlobGuard`] it is given; the lock is released when `f` returns or unwinds.
    ///
    /// Errors: the heap was destroyed, the lock failed, or this thread holds it already
    /// (inside another `with_lock`). A lock whose holder died is taken, and the heap then
    /// needs recovery.
    ///
    /// The guard is lent to `f`, never handed out, so that the lock is always released: a
    /// guard that could be forgotten (`mem::forget`) would leave every other handle, in
    /// this process and others, waiting out its patience on a live holder. So the guard
    /// cannot leave `f`:
    ///
    /// ```compile_fail
    /// use stratalloc::blob_heap::{BlobGuard, BlobHeap};
    ///
    /// fn keep<'h, 'a>(heap: &'h BlobHeap<'a>) -> &'h BlobGuard<'h, 'a> {
    ///     heap.with_lock(|guard| guard).unwrap() // error: the guard escapes the closure
    /// }
    /// ```
    ///
    /// and no method hands one out to own:
    ///
    /// ```compile_fail,E0624
    /// use stratalloc::blob_heap::BlobHeap;
    ///
    /// fn hold(heap: &BlobHeap<'_>) {
    ///     std::mem::forget(heap.lock()); // error: `lock` is private
    /// }
    /// ```
    pub fn with_lock<R>(&self, f: impl FnOnce(&BlobGuard<'_, 'a>) -> R) -> Result<R, BlobError> {
        let guard = self.lock()?;
        Ok(f(&guard))
    }

    /// Takes the heap's lock (see [`with_lock`](Self::with_lock)); the guard never leaves
    /// this module but lent.
    fn lock(&self) -> Result<BlobGuard<'_, 'a>, BlobError> {
        let header = self.header();
        if header.magic.load(Ordering::Acquire) != MAGIC {
            return Err(BlobError::Destroyed);
        }
        match header.lock.lock(self.lock_patience())? {
            Taken::Clean => {}
            Taken::HolderDied => header
                .recovery
                .store(RECOVERY_HOLDER_DIED, Ordering::Relaxed),
            Taken::Orphaned { thread } => {
                header
                    .recovery_offset
                    .store(u64::from(thread), Ordering::Relaxed);
                header.recovery.store(RECOVERY_ORPHANED, Ordering::Relaxed);
            }
        }
        Ok(BlobGuard {
            heap: self,
            _not_send: PhantomData,
        })
    }

    /// How long an operation waits for the heap's lock while a thread that exists holds it
    /// (in this process or another), before it fails with [`BlobError::LockUnavailable`]:
    /// [`DEFAULT_LOCK_PATIENCE`](Self::DEFAULT_LOCK_PATIENCE) unless set. A holder that no
    /// longer exists is not waited for (see the [module](self)).
    pub fn lock_patience(&self) -> Duration {
        Duration::from_nanos(self.lock_patience.load(Ordering::Relaxed))
    }

    /// Sets this handle's [lock patience](Self::lock_patience) (at most about 584 years).
    /// Other handles keep theirs; a [`with_lock`](Self::with_lock) closure that runs for
    /// longer than another handle's patience makes that handle's operations fail.
    pub fn set_lock_patience(&self, patience: Duration) {
        let nanos = u64::try_from(patience.as_nanos()).unwrap_or(u64::MAX);
        self.lock_patience.store(nanos, Ordering::Relaxed);
    }

    /// The lock patience of a new handle: half a second, far above what an allocation or
    /// a free holds the lock for (microseconds).
    pub const DEFAULT_LOCK_PATIENCE: Duration = Duration::from_millis(500);

    /// Clears the heap's lock whoever its word names as the holder, and records that the
    /// heap needs [recovery](Self::recover): for a lock left held by a stray write that
    /// names a thread that exists but does not hold it (which the heap cannot tell from a
    /// slow holder, so it reports [`BlobError::LockUnavailable`] for ever).
    ///
    /// Fails with [`BlobError::Lock`] where the lock cannot be marked (a Linux C library
    /// other than the GNU one).
    ///
    /// # Safety
    ///
    /// No thread of any process holds the heap's lock, and none takes it until this call
    /// returns: otherwise two threads would change the heap at once.
    pub unsafe fn break_lock(&self) -> Result<(), BlobError> {
        let h = self.header();
        // SAFETY: as the caller promises.
        unsafe { h.lock.break_lock()? };
        // A damaged free block, if one is recorded, stays the reason given.
        let _ = h.recovery.compare_exchange(
            RECOVERY_NONE,
            RECOVERY_HOLDER_DIED,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        Ok(())
    }

    /// Allocates a block of at least `size` bytes (a power of two, at least the smallest
    /// block; `size` 0 gets the smallest block).
    pub fn alloc(&self, size: usize) -> Result<BlobBlock, BlobError> {
        self.lock()?.alloc(size)
    }

    /// As [`alloc`](Self::alloc), but when no block is free it waits up to `timeout` for
    /// other handles (other threads or processes) to free memory.
    pub fn alloc_waiting(&self, size: usize, timeout: Duration) -> Result<BlobBlock, BlobError> {
        let start = Instant::now();
        let header = self.header();
        loop {
            let seen = header.frees.load(Ordering::SeqCst);
            match self.alloc(size) {
                Err(BlobError::OutOfMemory { .. }) => {}
                other => return other,
            }
            let waited = start.elapsed();
            if waited >= timeout {
                return Err(BlobError::Timeout { size, waited });
            }
            header.waiters.fetch_add(1, Ordering::SeqCst);
            wait_for_change(&header.frees, seen, timeout - waited);
            header.waiters.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Frees the live block at `offset` (from any handle). Anything else is an error that
    /// names the offset: one outside the heap, one that is not the start of a live block
    /// (never allocated, or freed already).
    pub fn free(&self, offset: u64) -> Result<(), BlobError> {
        self.lock()?.free(offset)
    }

    /// As [`free`](Self::free), but only the allocation `generation` of the block (a
    /// [`BlobBlock::generation`]): when the block at `offset` was freed since, perhaps by
    /// another process, and perhaps allocated again, the error is
    /// [`BlobError::StaleGeneration`] and nothing is freed.
    pub fn free_generation(&self, offset: u64, generation: u64) -> Result<(), BlobError> {
        let guard = self.lock()?;
        guard.usable()?;
        self.free_locked(offset, Some(generation))
    }

    /// The live block at `offset`, in this handle's mapping: how another process turns an
    /// offset it was sent into memory. Errors as for [`free`](Self::free).
    pub fn block(&self, offset: u64) -> Result<BlobBlock, BlobError> {
        let _guard = self.lock()?;
        let order = self.live_order(offset)?;
        Ok(self.block_at(offset, order))
    }

    // ---- stamps: generations and pins ----------------------------------------------------

    /// The generation of the live allocation that starts at `offset` (see "Stamps" in the
    /// module's docs), equal to its block's [`generation`](BlobBlock::generation); `None`
    /// when none does (the place is free, inside a block, or outside the heap). No lock.
    pub fn generation(&self, offset: u64) -> Option<u64> {
        let stamp = self.stamp(offset)?.load(Ordering::Acquire);
        (stamp & LIVE != 0).then_some(stamp & GENERATION_MASK)
    }

    /// Pins the allocation `generation` of the block at `offset`: until as many
    /// [`unpin`](Self::unpin)s, no handle in any process frees it (its frees fail with
    /// [`BlobError::Pinned`]). Fails with [`BlobError::StaleGeneration`] unless that
    /// allocation is live, [`BlobError::TooManyPins`] at [`MOST_PINS`],
    /// [`BlobError::OffsetOutOfRange`] outside the heap. No lock.
    pub fn pin(&self, offset: u64, generation: u64) -> Result<(), BlobError> {
        let stamp = self.stamp_or_error(offset)?;
        let mut seen = stamp.load(Ordering::Acquire);
        loop {
            if !is_live_generation(seen, generation) {
                return Err(BlobError::StaleGeneration {
                    offset,
                    generation,
                    now: seen & GENERATION_MASK,
                });
            }
            if pins_of(seen) == MOST_PINS {
                return Err(BlobError::TooManyPins { offset });
            }
            match stamp.compare_exchange_weak(seen, seen + PIN, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Ok(()),
                Err(now) => seen = now,
            }
        }
    }

    /// Takes back one [`pin`](Self::pin) of the live allocation `generation` at `offset`;
    /// false when it holds none (nothing changes). No lock.
    pub fn unpin(&self, offset: u64, generation: u64) -> bool {
        let Some(stamp) = self.stamp(offset) else {
            return false;
        };
        stamp
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |seen| {
                (is_live_generation(seen, generation) && pins_of(seen) > 0).then(|| seen - PIN)
            })
            .is_ok()
    }

    /// The pins the block at `offset` holds now (0 outside the heap). No lock.
    pub fn pins(&self, offset: u64) -> u32 {
        self.stamp(offset)
            .map_or(0, |stamp| pins_of(stamp.load(Ordering::Acquire)))
    }

    // ---- recovery ------------------------------------------------------------------------

    /// Whether the heap waits for [`recover`](Self::recover), and why.
    pub fn recovery_needed(&self) -> Option<RecoveryReason> {
        let h = self.header();
        match h.recovery.load(Ordering::Relaxed) {
            RECOVERY_NONE => None,
            RECOVERY_CORRUPT => Some(RecoveryReason::CorruptFreeBlock {
                offset: h.recovery_offset.load(Ordering::Relaxed),
                order: h.recovery_order.load(Ordering::Relaxed),
            }),
            RECOVERY_ORPHANED => Some(RecoveryReason::LockOrphaned {
                thread: h.recovery_offset.load(Ordering::Relaxed) as u32,
            }),
            _ => Some(RecoveryReason::HolderDied),
        }
    }

    /// Rebuilds the free lists from the bitmaps of live blocks, after damage to a free
    /// block or the death of a lock holder: every live block stays live and untouched,
    /// everything else is free, merged into the largest blocks possible. The blocks' stamps
    /// are made to agree: a block whose free stopped half-way (its generation moved on)
    /// stays live under its new generation, which [`block`](Self::block) returns; a place
    /// whose allocation stopped half-way is not live, and holds no pins.
    ///
    /// Fails with [`BlobError::NoRecoveryNeeded`] on a heap that did not ask for it.
    pub fn recover(&self) -> Result<(), BlobError> {
        let guard = self.lock()?;
        if self.recovery_needed().is_none() {
            return Err(BlobError::NoRecoveryNeeded);
        }
        let h = self.header();
        let g = self.geometry;
        for order in g.orders() {
            let slot = self.slot(order);
            h.heads[slot].store(NIL, Ordering::Relaxed);
            h.free_blocks[slot].store(0, Ordering::Relaxed);
            let words = (1usize << (g.max_order - order)).div_ceil(64);
            for word in 0..words {
                self.word(self.maps.free[slot], word * 64)
                    .store(0, Ordering::Relaxed);
            }
        }
        let (mut live, mut allocated) = (0u64, 0u64);
        for order in g.orders() {
            let map = self.maps.live[self.slot(order)];
            let count = 1usize << (g.max_order - order);
            // An order of fewer than 64 blocks has one word whose high bits name no block:
            // a stray write may have set them, and they would count as live blocks (and
            // stay there), so they are cleared.
            if count < 64 {
                self.word(map, 0)
                    .fetch_and((1u64 << count) - 1, Ordering::Relaxed);
            }
            let blocks: u64 = (0..count.div_ceil(64))
                .map(|word| {
                    u64::from(
                        self.word(map, word * 64)
                            .load(Ordering::Relaxed)
                            .count_ones(),
                    )
                })
                .sum();
            live += blocks;
            allocated += blocks << order;
        }
        h.live_blocks.store(live, Ordering::Relaxed);
        h.allocated.store(allocated, Ordering::Relaxed);
        self.reconcile_stamps();
        if self.rebuild(0, g.max_order) {
            self.push(0, g.max_order);
        }
        h.recovery.store(RECOVERY_NONE, Ordering::Relaxed);
        drop(guard);
        Ok(())
    }

    /// Makes every stamp agree with the live bitmaps, for `recover`: an allocation or a free
    /// changes a block's stamp and its live bit one after the other, so a holder that died
    /// between the two left them apart. A place where a live block starts gets its stamp's
    /// live bit (keeping its generation, moved on already by a free that stopped half-way,
    /// and its pins); any other place loses it, and its pins, which only a live allocation
    /// can take.
    fn reconcile_stamps(&self) {
        let g = self.geometry;
        for place in 0..1u64 << (g.max_order - g.min_order) {
            let offset = place << g.min_order;
            let Some(stamp) = self.stamp(offset) else {
                continue;
            };
            let starts_live = (g.min_order..=g.max_order)
                .take_while(|&order| offset.trailing_zeros() >= order)
                .any(|order| self.is_live(offset, order));
            let seen = stamp.load(Ordering::Relaxed);
            let right = if starts_live {
                seen | LIVE
            } else {
                seen & GENERATION_MASK
            };
            if right != seen {
                stamp.store(right, Ordering::Release);
            }
        }
    }

    /// Pushes the wholly free blocks under the block at `offset` of `order` onto their
    /// free lists, and returns whether that block is itself wholly free (then the caller
    /// pushes it, or merges it with its buddy).
    fn rebuild(&self, offset: u64, order: u32) -> bool {
        if self.is_live(offset, order) {
            return false;
        }
        if !self.any_live_inside(offset, order) {
            return true;
        }
        // Something below is live, so `order` is above the smallest.
        let half = 1u64 << (order - 1);
        let low = self.rebuild(offset, order - 1);
        let high = self.rebuild(offset + half, order - 1);
        if low {
            self.push(offset, order - 1);
        }
        if high {
            self.push(offset + half, order - 1);
        }
        false
    }

    /// Whether any block strictly inside the block at `offset` of `order` is live.
    fn any_live_inside(&self, offset: u64, order: u32) -> bool {
        (self.geometry.min_order..order).any(|inner| {
            let map = self.maps.live[self.slot(inner)];
            let first = (offset >> inner) as usize;
            let count = 1usize << (order - inner);
            let mut bit = first;
            while bit < first + count {
                let in_word = (64 - bit % 64).min(first + count - bit);
                let mask = (u64::MAX >> (64 - in_word)) << (bit % 64);
                if self.word(map, bit).load(Ordering::Relaxed) & mask != 0 {
                    return true;
                }
                bit += in_word;
            }
            false
        })
    }

    // ---- figures and dumps ---------------------------------------------------------------

    /// The heap's figures now.
    pub fn stats(&self) -> BlobStats {
        // Counters are read without the lock when it cannot be taken (a destroyed heap):
        // they are atomics, so the worst is a figure that is out of date.
        let _guard = self.lock();
        let h = self.header();
        let total_bytes = self.geometry.heap_bytes();
        let allocated_bytes = h.allocated.load(Ordering::Relaxed) as usize;
        BlobStats {
            total_bytes,
            allocated_bytes,
            free_bytes: total_bytes.saturating_sub(allocated_bytes),
            live_blocks: h.live_blocks.load(Ordering::Relaxed),
            utilisation: allocated_bytes as f64 * 100.0 / total_bytes as f64,
            free_blocks: self
                .geometry
                .orders()
                .map(|order| {
                    (
                        order,
                        h.free_blocks[self.slot(order)].load(Ordering::Relaxed),
                    )
                })
                .collect(),
            handles: h.handles.load(Ordering::Relaxed),
            recovery_needed: self.recovery_needed(),
        }
    }

    /// Writes a description of the heap under `title`: geometry, figures, and per order
    /// the free blocks' count and first offsets (read from the bitmaps, so a dump works on
    /// a damaged heap too).
    pub fn dump(&self, out: &mut dyn fmt::Write, title: &str) -> fmt::Result {
        let stats = self.stats();
        let g = self.geometry;
        writeln!(out, "{title}")?;
        writeln!(
            out,
            "  heap: {} bytes (order {}), blocks of {} bytes (order {}) and up, alignment {}",
            g.heap_bytes(),
            g.max_order,
            1usize << g.min_order,
            g.min_order,
            g.alignment
        )?;
        writeln!(
            out,
            "  blob: {} bytes, data at offset {}; {} handle(s) attached",
            self.len, self.maps.data, stats.handles
        )?;
        writeln!(
            out,
            "  allocated: {} bytes in {} block(s); free: {} bytes; utilisation {:.2}%",
            stats.allocated_bytes, stats.live_blocks, stats.free_bytes, stats.utilisation
        )?;
        match stats.recovery_needed {
            None => writeln!(out, "  recovery: not needed")?,
            Some(reason) => writeln!(out, "  recovery: NEEDED ({reason})")?,
        }
        writeln!(out, "  free blocks by order:")?;
        const SHOWN: usize = 4;
        for (order, count) in stats.free_blocks {
            if count == 0 {
                continue;
            }
            let map = self.maps.free[self.slot(order)];
            let offsets: Vec<String> = (0..1usize << (g.max_order - order))
                .filter(|&block| self.bit(map, block))
                .take(SHOWN)
                .map(|block| format!("{:#x}", (block as u64) << order))
                .collect();
            let more = if count as usize > SHOWN { ", ..." } else { "" };
            writeln!(
                out,
                "    order {order:>2} ({:>10} B): {count} at {}{more}",
                1usize << order,
                offsets.join(", ")
            )?;
        }
        Ok(())
    }

    /// [`dump`](Self::dump) into a new `String`.
    pub fn dump_to_string(&self, title: &str) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = self.dump(&mut text, title);
        text
    }

    /// [`dump`](Self::dump) to any `io::Write` (a file, stdout).
    pub fn dump_to_io(&self, out: &mut dyn std::io::Write, title: &str) -> std::io::Result<()> {
        out.write_all(self.dump_to_string(title).as_bytes())
    }

    // ---- bitmaps, free lists, splitting and merging --------------------------------------

    // Everything in this section runs under the lock.

    fn slot(&self, order: u32) -> usize {
        (order - self.geometry.min_order) as usize
    }

    /// The bitmap word holding `bit` of the bitmap at byte offset `map`.
    fn word(&self, map: usize, bit: usize) -> &AtomicU64 {
        // SAFETY: `maps()` laid every bitmap out inside the blob's header part, 8-byte
        // aligned, with a word for each 64 of its bits; callers pass bits below the
        // bitmap's block count.
        unsafe {
            &*self
                .base
                .as_ptr()
                .add(map + bit / 64 * 8)
                .cast::<AtomicU64>()
        }
    }

    fn bit(&self, map: usize, bit: usize) -> bool {
        self.word(map, bit).load(Ordering::Relaxed) & (1 << (bit % 64)) != 0
    }

    fn set_bit(&self, map: usize, bit: usize, value: bool) {
        let word = self.word(map, bit);
        let mask = 1u64 << (bit % 64);
        if value {
            word.fetch_or(mask, Ordering::Relaxed);
        } else {
            word.fetch_and(!mask, Ordering::Relaxed);
        }
    }

    fn is_free(&self, offset: u64, order: u32) -> bool {
        self.bit(self.maps.free[self.slot(order)], (offset >> order) as usize)
    }

    fn is_live(&self, offset: u64, order: u32) -> bool {
        self.bit(self.maps.live[self.slot(order)], (offset >> order) as usize)
    }

    /// The stamp of the smallest block at `offset`; `None` outside the heap or between
    /// smallest blocks' starts. (Not only under the lock: stamps change by compare-and-swap.)
    fn stamp(&self, offset: u64) -> Option<&AtomicU64> {
        let g = self.geometry;
        if offset >= g.heap_bytes() as u64 || offset.trailing_zeros() < g.min_order {
            return None;
        }
        let index = (offset >> g.min_order) as usize;
        // SAFETY: `maps()` laid out a stamp per smallest block inside the blob's header
        // part, 8-byte aligned (after 8-byte bitmap words); `index` is below their count.
        Some(unsafe {
            &*self
                .base
                .as_ptr()
                .add(self.maps.stamps + index * size_of::<u64>())
                .cast::<AtomicU64>()
        })
    }

    /// [`stamp`](Self::stamp), or the error naming the offset.
    fn stamp_or_error(&self, offset: u64) -> Result<&AtomicU64, BlobError> {
        let heap_bytes = self.geometry.heap_bytes();
        if offset >= heap_bytes as u64 {
            return Err(BlobError::OffsetOutOfRange { offset, heap_bytes });
        }
        self.stamp(offset).ok_or(BlobError::NotLive { offset })
    }

    /// The block at `offset` of `order`, in this mapping, with its generation now.
    fn block_at(&self, offset: u64, order: u32) -> BlobBlock {
        // SAFETY: offsets of blocks lie inside the heap, which `over` checked lies inside
        // the blob.
        let ptr = unsafe { self.base.add(self.maps.data + offset as usize) };
        BlobBlock {
            offset,
            size: 1 << order,
            generation: self.generation(offset).unwrap_or(0),
            ptr,
        }
    }

    /// The three link words at the start of the free block at `offset`, or `None` when
    /// `offset` is not the start of a smallest block inside the heap. Offsets come from
    /// the blob (list heads, links), which another process, or a stray write, may change
    /// at any time: every write through one is checked here, however it was checked
    /// before.
    fn link_words(&self, offset: u64) -> Option<*mut u64> {
        let g = self.geometry;
        (offset < g.heap_bytes() as u64 && offset.trailing_zeros() >= g.min_order)
            .then(|| self.block_at(offset, g.min_order).ptr.as_ptr().cast())
    }

    /// Writes through the link words of the block at `offset`, or, when `offset` is not a
    /// block of the heap, records damage there instead.
    fn write_words(&self, offset: u64, order: u32, write: impl FnOnce(*mut u64)) {
        match self.link_words(offset) {
            Some(words) => write(words),
            None => {
                self.damaged(offset, order);
            }
        }
    }

    fn check_word(offset: u64, order: u32) -> u64 {
        LINK_SALT ^ offset.rotate_left(17) ^ u64::from(order)
    }

    /// Reads the links of the free block at `offset` of `order`, checking them against the
    /// bitmaps and the check word; on a mismatch, records that the heap needs recovery.
    fn link(&self, offset: u64, order: u32) -> Result<Link, BlobError> {
        let fits = |at: u64| {
            at == NIL
                || (at < self.geometry.heap_bytes() as u64
                    && at.trailing_zeros() >= order
                    && self.is_free(at, order))
        };
        if let Some(words) = self
            .link_words(offset)
            .filter(|_| offset != NIL && fits(offset))
        {
            // SAFETY: a free block of at least 32 bytes, 32-byte aligned in the heap (its
            // offset is a multiple of its size, and the data is 64-byte aligned): its
            // first three words are the heap's while it is free, read atomically (another
            // process, or a stray write, may change them).
            let (link, check) = unsafe {
                let link = Link {
                    next: load(words),
                    prev: load(words.add(1)),
                };
                (link, load(words.add(2)))
            };
            if check == Self::check_word(offset, order) && fits(link.next) && fits(link.prev) {
                return Ok(link);
            }
        }
        Err(self.damaged(offset, order))
    }

    /// Records damage at the free block at `offset` and returns the error to report.
    fn damaged(&self, offset: u64, order: u32) -> BlobError {
        let h = self.header();
        h.recovery_offset.store(offset, Ordering::Relaxed);
        h.recovery_order.store(order, Ordering::Relaxed);
        h.recovery.store(RECOVERY_CORRUPT, Ordering::Relaxed);
        BlobError::RecoveryNeeded {
            reason: RecoveryReason::CorruptFreeBlock { offset, order },
        }
    }

    fn write_link(&self, offset: u64, order: u32, next: u64, prev: u64) {
        // SAFETY: as in `link`: a block of at least 32 bytes inside the heap, 32-byte
        // aligned (`link_words` checked), free or becoming free.
        self.write_words(offset, order, |words| unsafe {
            store(words, next);
            store(words.add(1), prev);
            store(words.add(2), Self::check_word(offset, order));
        });
    }

    fn set_next(&self, offset: u64, order: u32, next: u64) {
        // SAFETY: as in `write_link`.
        self.write_words(offset, order, |words| unsafe { store(words, next) });
    }

    fn set_prev(&self, offset: u64, order: u32, prev: u64) {
        // SAFETY: as in `write_link`.
        self.write_words(offset, order, |words| unsafe { store(words.add(1), prev) });
    }

    /// Puts the block at `offset` of `order` at the head of its free list. The list's head,
    /// if any, was checked by the caller.
    fn push(&self, offset: u64, order: u32) {
        let h = self.header();
        let slot = self.slot(order);
        let head = h.heads[slot].load(Ordering::Relaxed);
        self.write_link(offset, order, head, NIL);
        if head != NIL {
            self.set_prev(head, order, offset);
        }
        h.heads[slot].store(offset, Ordering::Relaxed);
        self.set_bit(self.maps.free[slot], (offset >> order) as usize, true);
        h.free_blocks[slot].fetch_add(1, Ordering::Relaxed);
    }

    /// Checks that the free block at `offset` of `order` can be taken out of its list:
    /// its links, and its neighbours' links back to it.
    fn check_unlink(&self, offset: u64, order: u32) -> Result<Link, BlobError> {
        let link = self.link(offset, order)?;
        let back = if link.prev == NIL {
            self.header().heads[self.slot(order)].load(Ordering::Relaxed) == offset
        } else {
            self.link(link.prev, order)?.next == offset
        };
        let forth = link.next == NIL || self.link(link.next, order)?.prev == offset;
        if back && forth {
            Ok(link)
        } else {
            Err(self.damaged(offset, order))
        }
    }

    /// Takes the free block at `offset` of `order`, whose links `check_unlink` returned,
    /// out of its list.
    fn unlink(&self, offset: u64, order: u32, link: Link) {
        let h = self.header();
        let slot = self.slot(order);
        if link.prev == NIL {
            h.heads[slot].store(link.next, Ordering::Relaxed);
        } else {
            self.set_next(link.prev, order, link.next);
        }
        if link.next != NIL {
            self.set_prev(link.next, order, link.prev);
        }
        self.set_bit(self.maps.free[slot], (offset >> order) as usize, false);
        h.free_blocks[slot].fetch_sub(1, Ordering::Relaxed);
    }

    /// The order of the live block starting at `offset`.
    fn live_order(&self, offset: u64) -> Result<u32, BlobError> {
        let heap_bytes = self.geometry.heap_bytes();
        if offset >= heap_bytes as u64 {
            return Err(BlobError::OffsetOutOfRange { offset, heap_bytes });
        }
        self.geometry
            .orders()
            .take_while(|&order| offset.trailing_zeros() >= order)
            .find(|&order| self.is_live(offset, order))
            .ok_or(BlobError::NotLive { offset })
    }

    fn order_for(&self, size: usize) -> Result<u32, BlobError> {
        let largest = self.geometry.heap_bytes();
        if size > largest {
            return Err(BlobError::TooLarge { size, largest });
        }
        Ok(size
            .max(1)
            .next_power_of_two()
            .trailing_zeros()
            .max(self.geometry.min_order))
    }

    fn alloc_locked(&self, size: usize) -> Result<BlobBlock, BlobError> {
        let order = self.order_for(size)?;
        let h = self.header();
        let Some(found) = (order..=self.geometry.max_order)
            .find(|&o| h.heads[self.slot(o)].load(Ordering::Relaxed) != NIL)
        else {
            return Err(BlobError::OutOfMemory { size });
        };
        let offset = h.heads[self.slot(found)].load(Ordering::Relaxed);
        let link = self.check_unlink(offset, found)?;
        self.unlink(offset, found, link);
        // Split down to the order asked for; the lists below `found` are empty, so each
        // upper half goes into an empty list.
        for lower in (order..found).rev() {
            self.push(offset + (1 << lower), lower);
        }
        // A new allocation of this place: live, the next generation, no pins (a place
        // that is not live can take none; a stray write's are dropped).
        if let Some(stamp) = self.stamp(offset) {
            let next = ((stamp.load(Ordering::Relaxed) & GENERATION_MASK) + 1) & GENERATION_MASK;
            stamp.store(next | LIVE, Ordering::Release);
        }
        self.set_bit(
            self.maps.live[self.slot(order)],
            (offset >> order) as usize,
            true,
        );
        h.live_blocks.fetch_add(1, Ordering::Relaxed);
        h.allocated.fetch_add(1 << order, Ordering::Relaxed);
        Ok(self.block_at(offset, order))
    }

    /// Frees the live block at `offset` (only its allocation `generation`, when given),
    /// unless it is pinned.
    fn free_locked(&self, offset: u64, generation: Option<u64>) -> Result<(), BlobError> {
        let order = self.live_order(offset)?;
        let stamp = self.stamp(offset).ok_or(BlobError::NotLive { offset })?;
        let seen = stamp.load(Ordering::Acquire);
        if let Some(generation) = generation.filter(|&g| g != seen & GENERATION_MASK) {
            return Err(BlobError::StaleGeneration {
                offset,
                generation,
                now: seen & GENERATION_MASK,
            });
        }
        // Plan the merges and check every list they touch before changing anything, so a
        // free that finds damage leaves the heap (and the block) as they were.
        let mut merges = [(0u64, 0u32, Link::EMPTY); SLOTS];
        let mut count = 0;
        let (mut start, mut size) = (offset, order);
        while size < self.geometry.max_order {
            let buddy = start ^ (1 << size);
            if !self.is_free(buddy, size) {
                break;
            }
            merges[count] = (buddy, size, self.check_unlink(buddy, size)?);
            count += 1;
            start = start.min(buddy);
            size += 1;
        }
        let head = self.header().heads[self.slot(size)].load(Ordering::Relaxed);
        if head != NIL && self.link(head, size)?.prev != NIL {
            return Err(self.damaged(head, size));
        }
        // The stamp first: from here no pin can be taken (the place is no longer live),
        // and a pin taken since `seen` makes the swap fail, before anything else changed.
        let current = seen & GENERATION_MASK;
        let unpinned = current | LIVE;
        let next = (current + 1) & GENERATION_MASK;
        if let Err(now) =
            stamp.compare_exchange(unpinned, next, Ordering::AcqRel, Ordering::Acquire)
        {
            return Err(if is_live_generation(now, current) {
                BlobError::Pinned {
                    offset,
                    pins: pins_of(now),
                }
            } else {
                // A live block's stamp not live, or its generation changed under the lock
                // we hold: only a stray write does that.
                BlobError::StaleGeneration {
                    offset,
                    generation: current,
                    now: now & GENERATION_MASK,
                }
            });
        }
        let h = self.header();
        self.set_bit(
            self.maps.live[self.slot(order)],
            (offset >> order) as usize,
            false,
        );
        h.live_blocks.fetch_sub(1, Ordering::Relaxed);
        h.allocated.fetch_sub(1 << order, Ordering::Relaxed);
        for &(buddy, buddy_order, link) in &merges[..count] {
            self.unlink(buddy, buddy_order, link);
        }
        self.push(start, size);
        // A waiting allocation counts itself in `waiters` before it sleeps on `frees`, and
        // sleeps only while `frees` is what it saw: either it sees this bump, or we see it.
        h.frees.fetch_add(1, Ordering::SeqCst);
        if h.waiters.load(Ordering::SeqCst) > 0 {
            wake_all(&h.frees);
        }
        Ok(())
    }
}

/// Whether `stamp` is that of the live allocation `generation`.
fn is_live_generation(stamp: u64, generation: u64) -> bool {
    stamp & LIVE != 0 && stamp & GENERATION_MASK == generation
}

/// The pins counted in `stamp`.
fn pins_of(stamp: u64) -> u32 {
    ((stamp >> PIN_SHIFT) as u32) & MOST_PINS
}

/// The header of the heap of this version that `base..base + len` holds: checked to fit
/// in it, aligned, with the magic and version words; the rest is the caller's to check.
///
/// # Safety
///
/// `base..base + len` is valid for reads for `'a`, and for writes too if the caller
/// writes through the header.
unsafe fn header_at<'a>(base: NonNull<u8>, len: usize) -> Result<&'a Header, BlobError> {
    if len < size_of::<Header>() {
        return Err(BlobError::BlobTooSmall {
            needed: size_of::<Header>(),
            given: len,
        });
    }
    if !base.as_ptr().addr().is_multiple_of(64) {
        return Err(BlobError::BlobMisaligned {
            address: base.as_ptr().addr(),
        });
    }
    // SAFETY: the blob holds at least a header's bytes, aligned, valid by the caller's
    // promise; any bytes are a valid value for atomics.
    let h = unsafe { &*base.as_ptr().cast::<Header>() };
    let found = h.magic.load(Ordering::Acquire);
    if found != MAGIC {
        return Err(BlobError::NotAHeap { found });
    }
    let version = h.version.load(Ordering::Relaxed);
    if version != BLOB_VERSION {
        return Err(BlobError::VersionMismatch {
            found: version,
            expected: BLOB_VERSION,
        });
    }
    Ok(h)
}

/// This process's PID namespace: the inode number of `/proc/self/ns/pid` (Linux), 0 where
/// it cannot be read (other systems, no `/proc`, Miri).
pub fn pid_namespace() -> u64 {
    #[cfg(all(target_os = "linux", not(miri)))]
    {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata("/proc/self/ns/pid").map_or(0, |m| m.ino())
    }
    #[cfg(not(all(target_os = "linux", not(miri))))]
    0
}

/// A new heap's id (never 0): std's hash keys, drawn at random once per thread and bumped
/// by each use, hashing the process id, the monotonic clock and a count of ids drawn in
/// this process, so that a forked child, which inherits the keys and the count, still
/// draws another id than its parent's.
fn fresh_id() -> u64 {
    use std::hash::{BuildHasher, Hash, Hasher};
    static DRAWN: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::hash::RandomState::new().build_hasher();
    hasher.write_u64(MAGIC);
    hasher.write_u32(std::process::id());
    Instant::now().hash(&mut hasher);
    hasher.write_u64(DRAWN.fetch_add(1, Ordering::Relaxed));
    hasher.finish().max(1)
}

impl Drop for BlobHeap<'_> {
    fn drop(&mut self) {
        if !self.attached_here() {
            // A copy a forked child inherited: never counted.
            return;
        }
        let handles = &self.header().handles;
        let _ = handles.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }
}

impl fmt::Debug for BlobHeap<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlobHeap")
            .field("base", &self.base)
            .field("len", &self.len)
            .field("geometry", &self.geometry)
            .finish_non_exhaustive()
    }
}

/// Reads a link word of a free block, atomically: the blob is shared memory.
///
/// # Safety
///
/// `word` is valid, 8-byte aligned, and accessed only atomically while the heap exists.
unsafe fn load(word: *mut u64) -> u64 {
    // Under Miri, plain accesses: its weak-memory emulation panics (an internal error) on
    // an atomic store to a word that the overrun tests last wrote byte by byte.
    #[cfg(miri)]
    // SAFETY: as the caller promises.
    return unsafe { word.read() };
    #[cfg(not(miri))]
    // SAFETY: as the caller promises.
    unsafe { AtomicU64::from_ptr(word) }.load(Ordering::Relaxed)
}

/// Writes a link word of a free block, atomically; as [`load`].
///
/// # Safety
///
/// As for [`load`].
unsafe fn store(word: *mut u64, value: u64) {
    #[cfg(miri)]
    // SAFETY: as the caller promises (plain under Miri, as in `load`).
    unsafe {
        word.write(value)
    };
    #[cfg(not(miri))]
    // SAFETY: as the caller promises.
    unsafe { AtomicU64::from_ptr(word) }.store(value, Ordering::Relaxed);
}

/// A free block's links as read from it.
#[derive(Clone, Copy)]
struct Link {
    next: u64,
    prev: u64,
}

impl Link {
    const EMPTY: Link = Link {
        next: NIL,
        prev: NIL,
    };
}

// ---- the guard, and waiting for frees ----------------------------------------------------

/// The heap's lock, held: several allocations and frees without taking it for each, lent
/// by [`BlobHeap::with_lock`] for the length of a closure. While it is held, every other
/// handle waits, in this process and others, and this thread's calls through the heap
/// (rather than the guard) fail with [`BlobError::AlreadyLocked`] (`stats` and `dump` still
/// work); if its process dies, the next handle to lock finds that out and the heap asks
/// for [`recover`](BlobHeap::recover).
pub struct BlobGuard<'h, 'a> {
    heap: &'h BlobHeap<'a>,
    /// The lock belongs to this thread.
    _not_send: PhantomData<*const ()>,
}

impl BlobGuard<'_, '_> {
    fn usable(&self) -> Result<(), BlobError> {
        if !self.heap.header().lock.held_here() {
            return Err(BlobError::LockLost);
        }
        match self.heap.recovery_needed() {
            None => Ok(()),
            Some(reason) => Err(BlobError::RecoveryNeeded { reason }),
        }
    }

    /// [`BlobHeap::alloc`] under this guard.
    pub fn alloc(&self, size: usize) -> Result<BlobBlock, BlobError> {
        self.usable()?;
        self.heap.alloc_locked(size)
    }

    /// [`BlobHeap::free`] under this guard.
    pub fn free(&self, offset: u64) -> Result<(), BlobError> {
        self.usable()?;
        self.heap.free_locked(offset, None)
    }
}

impl Drop for BlobGuard<'_, '_> {
    fn drop(&mut self) {
        // SAFETY: the guard was made by taking the lock on this thread (`unlock` leaves a
        // lock that no longer names it alone).
        unsafe { self.heap.header().lock.unlock() };
    }
}

/// Waits (up to `timeout`) while `word` still holds `seen`; may return early.
#[cfg(all(target_os = "linux", not(miri)))]
fn wait_for_change(word: &AtomicU32, seen: u32, timeout: Duration) {
    let timeout = libc::timespec {
        tv_sec: timeout.as_secs().min(i32::MAX as u64) as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: a futex wait on a word in shared memory (no private flag: other processes
    // wake it), with a relative timeout; it returns at once if the word changed.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            seen,
            &raw const timeout,
        )
    };
}

#[cfg(all(target_os = "linux", not(miri)))]
fn wake_all(word: &AtomicU32) {
    // SAFETY: a futex wake of every waiter on the word.
    unsafe { libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, i32::MAX) };
}

/// Elsewhere, and under Miri, waiting is polling.
#[cfg(not(all(target_os = "linux", not(miri))))]
fn wait_for_change(word: &AtomicU32, seen: u32, timeout: Duration) {
    let until = Instant::now() + timeout;
    while word.load(Ordering::SeqCst) == seen && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[cfg(not(all(target_os = "linux", not(miri))))]
fn wake_all(_word: &AtomicU32) {}

#[cfg(test)]
mod tests {
    use super::*;

    /// 64-byte-aligned memory for a blob.
    #[repr(align(64))]
    #[derive(Clone, Copy)]
    struct Line(#[allow(dead_code, reason = "only its bytes and alignment matter")] [u8; 64]);

    fn blob(geometry: BlobGeometry) -> std::vec::Vec<Line> {
        std::vec![Line([0; 64]); geometry.required_size().div_ceil(64)]
    }

    fn bytes(lines: &mut [Line]) -> &mut [u8] {
        let len = lines.len() * 64;
        // SAFETY: the lines are plain bytes, contiguous, borrowed mutably.
        unsafe { core::slice::from_raw_parts_mut(lines.as_mut_ptr().cast::<u8>(), len) }
    }

    /// The states a holder that died half-way through an allocation or a free leaves: the
    /// stamp changed and the live bit not yet. After `recover` the stamps agree with the
    /// bitmaps: the block whose free stopped is live and frees through `block`; the place
    /// whose allocation stopped is free, with no pins.
    #[test]
    fn recover_makes_the_stamps_agree_with_the_live_blocks() {
        let geometry = BlobGeometry::new(12, 6, 64).unwrap();
        let mut lines = blob(geometry);
        let heap = BlobHeap::init(bytes(&mut lines), geometry).unwrap();
        let freeing = heap.alloc(64).unwrap();
        let kept = heap.alloc(64).unwrap();
        let allocating = heap.alloc(128).unwrap();
        heap.free(allocating.offset).unwrap();
        // A free that swapped the stamp (generation moved on, not live) and died.
        let stamp = heap.stamp(freeing.offset).unwrap();
        stamp.store(freeing.generation + 1, Ordering::Relaxed);
        // An allocation that stamped its place live (with a stray pin) and died.
        heap.stamp(allocating.offset)
            .unwrap()
            .store((allocating.generation + 1) | LIVE | PIN, Ordering::Relaxed);
        heap.header()
            .recovery
            .store(RECOVERY_HOLDER_DIED, Ordering::Relaxed);
        heap.recover().unwrap();

        assert_eq!(heap.generation(allocating.offset), None);
        assert_eq!(heap.pins(allocating.offset), 0);
        let found = heap.block(freeing.offset).unwrap();
        assert_eq!(found.generation, freeing.generation + 1);
        assert_eq!(heap.generation(kept.offset), Some(kept.generation));
        heap.free(found.offset).unwrap();
        heap.free(kept.offset).unwrap();
        let stats = heap.stats();
        assert_eq!(stats.live_blocks, 0);
    }
}
