//! What can go wrong with a blob heap, each case naming the value that was wrong.

use core::fmt;
use core::time::Duration;

/// Why a blob heap refuses to allocate or free until [`recover`](super::BlobHeap::recover)
/// runs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum RecoveryReason {
    /// The link words at the start of a free block did not hold what the heap wrote there:
    /// something wrote into free memory (typically an overrun from the block before it).
    CorruptFreeBlock {
        /// The free block's offset in the heap.
        offset: u64,
        /// Its order (its size is `1 << order`).
        order: u32,
    },
    /// The heap's lock was marked "holder died" by another handle, which found its holder
    /// gone (or [`break_lock`](super::BlobHeap::break_lock) cleared it): a handle may have
    /// died in the middle of an allocation or a free.
    HolderDied,
    /// The heap's lock named as its holder a thread that no longer exists and never
    /// released it: a handle (in this process or another) that died holding it, perhaps in
    /// the middle of an allocation or a free, or a stray write into the header.
    LockOrphaned {
        /// The thread id the lock named (0 when its word was set but named none).
        thread: u32,
    },
}

impl fmt::Display for RecoveryReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecoveryReason::CorruptFreeBlock { offset, order } => write!(
                f,
                "the free block at offset {offset:#x} (order {order}) was overwritten"
            ),
            RecoveryReason::HolderDied => f.write_str("a handle died holding the heap's lock"),
            RecoveryReason::LockOrphaned { thread } => write!(
                f,
                "the heap's lock named thread {thread}, which no longer exists, as its holder \
                 (it died holding the heap's lock, or a stray write named it)"
            ),
        }
    }
}

/// An error from a [`BlobHeap`](super::BlobHeap) operation.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum BlobError {
    /// The smallest block's order is above the largest's.
    MinOrderAboveMax {
        /// The order asked for the smallest blocks.
        min_order: u32,
        /// The order asked for the whole heap.
        max_order: u32,
    },
    /// An order outside what a blob heap supports.
    OrderOutOfRange {
        /// The order given.
        order: u32,
        /// The lowest order allowed.
        lowest: u32,
        /// The highest order allowed.
        highest: u32,
    },
    /// Too many orders between the smallest and the largest block (the bitmaps would be
    /// too large).
    TooManyOrders {
        /// `max_order - min_order + 1` as given.
        orders: u32,
        /// The most a heap may have.
        limit: u32,
    },
    /// The alignment is not a power of two, or is below 8.
    BadAlignment {
        /// The alignment given.
        alignment: usize,
    },
    /// The alignment is a power of two of at least 8, but above the heap's size (no block
    /// could use it).
    AlignmentAboveHeap {
        /// The alignment given.
        alignment: usize,
        /// The heap's size in bytes (`1 << max_order`), the largest alignment allowed.
        heap_bytes: usize,
    },
    /// The memory is smaller than the heap needs.
    BlobTooSmall {
        /// Bytes the heap needs.
        needed: usize,
        /// Bytes given.
        given: usize,
    },
    /// The memory does not start on a 64-byte boundary.
    BlobMisaligned {
        /// The address given.
        address: usize,
    },
    /// The memory does not hold a blob heap (its first word is not the heap's magic).
    NotAHeap {
        /// The first word found.
        found: u64,
    },
    /// The memory holds a blob heap of another format version.
    VersionMismatch {
        /// The version in the blob.
        found: u32,
        /// The version this crate writes.
        expected: u32,
    },
    /// The heap was made (or last claimed) by a process of another PID namespace: its lock
    /// names holders by thread id, which only mean something inside one namespace (see
    /// [`BlobHeap::claim_pid_namespace`](super::BlobHeap::claim_pid_namespace) for a heap
    /// whose namespace has gone).
    OtherPidNamespace {
        /// The heap's namespace (the inode number of its `/proc/<pid>/ns/pid`).
        heap: u64,
        /// This process's.
        here: u64,
    },
    /// The header's geometry is impossible (the header is damaged).
    BadGeometry {
        /// The recorded largest order.
        max_order: u32,
        /// The recorded smallest order.
        min_order: u32,
        /// The recorded alignment.
        alignment: u64,
    },
    /// The heap was destroyed through another handle.
    Destroyed,
    /// A request larger than the whole heap.
    TooLarge {
        /// Bytes asked for.
        size: usize,
        /// The largest block the heap has.
        largest: usize,
    },
    /// No free block is large enough right now.
    OutOfMemory {
        /// Bytes asked for.
        size: usize,
    },
    /// The offset is not the start of a live block (never allocated, or already freed).
    NotLive {
        /// The offset given.
        offset: u64,
    },
    /// The block at the offset is not the allocation asked for: it was freed since (by
    /// this or another handle, in any process), and perhaps allocated again.
    StaleGeneration {
        /// The block's offset.
        offset: u64,
        /// The generation asked for (the allocation's).
        generation: u64,
        /// The generation there now.
        now: u64,
    },
    /// The block is pinned (views of it, in this process or another, must not outlive
    /// it): it cannot be freed until they are released.
    Pinned {
        /// The block's offset.
        offset: u64,
        /// Its pins.
        pins: u32,
    },
    /// The block has [`MOST_PINS`](super::MOST_PINS) pins already.
    TooManyPins {
        /// The block's offset.
        offset: u64,
    },
    /// The offset lies outside the heap.
    OffsetOutOfRange {
        /// The offset given.
        offset: u64,
        /// The heap's size in bytes.
        heap_bytes: usize,
    },
    /// The heap found damage, or a dead lock holder, and refuses allocations and frees
    /// until [`recover`](super::BlobHeap::recover) runs.
    RecoveryNeeded {
        /// What it found.
        reason: RecoveryReason,
    },
    /// `recover` was called on a heap that did not ask for it.
    NoRecoveryNeeded,
    /// `destroy` was called while other handles were attached.
    StillAttached {
        /// Handles attached, this one included.
        handles: u32,
    },
    /// A waiting allocation timed out before another handle freed enough memory.
    Timeout {
        /// Bytes asked for.
        size: usize,
        /// How long it waited.
        waited: Duration,
    },
    /// This thread already holds the heap's lock (inside
    /// [`with_lock`](super::BlobHeap::with_lock)): use the guard's operations.
    AlreadyLocked,
    /// A guard's thread no longer holds the heap's lock: the process was forked while its
    /// parent held it (the guard is the child's copy), or another handle took the lock as
    /// orphaned (its holder's thread id did not exist for it: handles in different PID
    /// namespaces).
    LockLost,
    /// The lock inside the heap failed (an OS error number).
    Lock {
        /// The error number.
        errno: i32,
    },
    /// A thread that exists held the heap's lock for longer than this handle's
    /// [lock patience](super::BlobHeap::lock_patience).
    LockUnavailable {
        /// The holder's thread id, as the lock names it (`None` where the lock cannot
        /// name threads across processes: off Linux with the GNU C library, and under
        /// Miri).
        holder: Option<u32>,
        /// How long the operation waited.
        waited: Duration,
    },
}

impl fmt::Display for BlobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            BlobError::MinOrderAboveMax {
                min_order,
                max_order,
            } => write!(
                f,
                "the smallest block's order {min_order} is above the heap's order {max_order}"
            ),
            BlobError::OrderOutOfRange {
                order,
                lowest,
                highest,
            } => write!(f, "order {order} is outside {lowest}..={highest}"),
            BlobError::TooManyOrders { orders, limit } => {
                write!(
                    f,
                    "{orders} orders from smallest to largest block; at most {limit}"
                )
            }
            BlobError::BadAlignment { alignment } => {
                write!(
                    f,
                    "alignment {alignment} is not a power of two of at least 8"
                )
            }
            BlobError::AlignmentAboveHeap {
                alignment,
                heap_bytes,
            } => write!(
                f,
                "alignment {alignment} is above the heap's size, {heap_bytes} bytes"
            ),
            BlobError::BlobTooSmall { needed, given } => {
                write!(f, "the blob has {given} bytes; the heap needs {needed}")
            }
            BlobError::BlobMisaligned { address } => {
                write!(
                    f,
                    "the blob at {address:#x} does not start on a 64-byte boundary"
                )
            }
            BlobError::NotAHeap { found } => {
                write!(
                    f,
                    "the blob does not hold a heap (first word {found:#018x})"
                )
            }
            BlobError::VersionMismatch { found, expected } => {
                write!(
                    f,
                    "the blob holds a heap of version {found}; this crate reads version {expected}"
                )
            }
            BlobError::OtherPidNamespace { heap, here } => write!(
                f,
                "the heap belongs to processes of PID namespace pid:[{heap}], and this one is in \
                 pid:[{here}]: the heap's lock names its holder by thread id, which means \
                 nothing in another namespace (run the processes sharing the heap in one PID \
                 namespace; for a heap whose namespace has gone, claim it)"
            ),
            BlobError::BadGeometry {
                max_order,
                min_order,
                alignment,
            } => write!(
                f,
                "the heap's header is damaged: orders {min_order}..={max_order}, alignment {alignment}"
            ),
            BlobError::Destroyed => f.write_str("the heap was destroyed"),
            BlobError::TooLarge { size, largest } => {
                write!(
                    f,
                    "{size} bytes asked for; the largest block is {largest} bytes"
                )
            }
            BlobError::OutOfMemory { size } => {
                write!(f, "no free block of {size} bytes or more")
            }
            BlobError::NotLive { offset } => {
                write!(
                    f,
                    "offset {offset:#x} is not a live block (never allocated, or freed already)"
                )
            }
            BlobError::StaleGeneration {
                offset,
                generation,
                now,
            } => write!(
                f,
                "the block at offset {offset:#x} was freed (by this or another handle): it was \
                 allocation {generation} of that place, which is at {now} now"
            ),
            BlobError::Pinned { offset, pins } => write!(
                f,
                "the block at offset {offset:#x} is pinned by {pins} view(s) (in this process or \
                 another); release them before freeing it"
            ),
            BlobError::TooManyPins { offset } => write!(
                f,
                "the block at offset {offset:#x} has {} pins already, the most it can have",
                super::MOST_PINS
            ),
            BlobError::OffsetOutOfRange { offset, heap_bytes } => {
                write!(
                    f,
                    "offset {offset:#x} is outside the heap's {heap_bytes} bytes"
                )
            }
            BlobError::RecoveryNeeded { reason } => {
                write!(f, "the heap needs recovery: {reason}")
            }
            BlobError::NoRecoveryNeeded => f.write_str("the heap does not need recovery"),
            BlobError::StillAttached { handles } => {
                write!(
                    f,
                    "{handles} handles are attached; detach the others before destroying"
                )
            }
            BlobError::Timeout { size, waited } => {
                write!(f, "no block of {size} bytes was freed within {waited:?}")
            }
            BlobError::AlreadyLocked => {
                f.write_str("this thread already holds the heap's lock (inside with_lock)")
            }
            BlobError::LockLost => f.write_str(
                "this thread no longer holds the heap's lock that its guard was lent under (a \
                 process forked inside with_lock, or another handle took the lock as orphaned)",
            ),
            BlobError::Lock { errno } => write!(f, "the heap's lock failed (errno {errno})"),
            BlobError::LockUnavailable {
                holder: Some(thread),
                waited,
            } => write!(
                f,
                "thread {thread} still held the heap's lock after {waited:?} (if it does not \
                 in fact hold it, break_lock and recover)"
            ),
            BlobError::LockUnavailable {
                holder: None,
                waited,
            } => write!(f, "the heap's lock was still held after {waited:?}"),
        }
    }
}

impl core::error::Error for BlobError {}
