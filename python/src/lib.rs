//! `stratalloc_py`: the Dragon heap manager's Python interface (`Heap`, `BitSet`, the seed
//! `../shared/seeds/000_788bc3d81cfaca3f.txt`) over stratalloc's
//! [`BlobHeap`](stratalloc::blob_heap::BlobHeap) and [`Bitmap`](stratalloc::Bitmap).
//! Entry point: the `#[pymodule]` at the end of this file.
//!
//! Files: `pin.rs` keeps a Python buffer pinned (the rule every other file relies on is
//! written there), `heap.rs` is `Heap`, its memory objects and its statistics, `bitset.rs`
//! is `BitSet`. This file holds the exception classes and how crate errors map onto them.
//!
//! Nothing here panics on purpose: every failure is a Python exception naming what was
//! wrong, and the locks of this module's own state recover from poisoning instead of
//! unwrapping.

#![warn(
    clippy::undocumented_unsafe_blocks,
    unsafe_op_in_unsafe_fn,
    missing_docs
)]

mod bitset;
mod heap;
mod pin;

use pyo3::create_exception;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use stratalloc::BitmapError;
use stratalloc::blob_heap::BlobError;

// ---- exceptions --------------------------------------------------------------------------

create_exception!(
    stratalloc_py,
    HeapError,
    PyRuntimeError,
    "Base of every error a Heap or its memory objects raise (a RuntimeError, as in the seed)."
);
create_exception!(
    stratalloc_py,
    GeometryError,
    HeapError,
    "The powers of two or the alignment given to Heap.size or Heap.init are not possible."
);
create_exception!(
    stratalloc_py,
    BufferUnusableError,
    HeapError,
    "The memory given cannot hold the heap: read-only, not contiguous, or too small."
);
create_exception!(
    stratalloc_py,
    NotAHeapError,
    HeapError,
    "The memory given to Heap.attach holds no heap (or one of another version, or destroyed)."
);
create_exception!(
    stratalloc_py,
    OutOfMemoryError,
    HeapError,
    "No free block is large enough (or the request is larger than the heap)."
);
create_exception!(
    stratalloc_py,
    InvalidMemoryError,
    HeapError,
    "A memory object that cannot be used: freed, from a detached handle, or not a live block."
);
create_exception!(
    stratalloc_py,
    RecoveryNeededError,
    HeapError,
    "The heap found damage or a dead lock holder; call recover() first."
);
create_exception!(
    stratalloc_py,
    NoRecoveryNeededError,
    HeapError,
    "recover() was called on a heap that does not need it."
);
create_exception!(
    stratalloc_py,
    LockError,
    HeapError,
    "The heap's process-shared lock could not be taken (held too long, or held by this thread)."
);
create_exception!(
    stratalloc_py,
    StillAttachedError,
    HeapError,
    "destroy() was called while other handles are attached."
);
create_exception!(
    stratalloc_py,
    DetachedError,
    HeapError,
    "The Heap handle was detached or destroyed."
);
create_exception!(
    stratalloc_py,
    BusyError,
    HeapError,
    "A block is pinned (a memoryview of it is alive, in this process or another, or it is being \
     read or written), or buffers over a handle's blocks are still exported."
);
create_exception!(
    stratalloc_py,
    BitSetError,
    PyRuntimeError,
    "Base of every error a BitSet raises (a RuntimeError, as in the seed)."
);
create_exception!(
    stratalloc_py,
    BitIndexError,
    BitSetError,
    "A bit index outside the set."
);
create_exception!(
    stratalloc_py,
    NotABitSetError,
    BitSetError,
    "The memory given to BitSet.attach holds no bit set."
);

/// The exception for a crate error, with the crate's message (which names the values).
fn heap_err(error: BlobError) -> PyErr {
    let text = error.to_string();
    match error {
        BlobError::MinOrderAboveMax { .. }
        | BlobError::OrderOutOfRange { .. }
        | BlobError::TooManyOrders { .. }
        | BlobError::BadAlignment { .. }
        | BlobError::AlignmentAboveHeap { .. } => GeometryError::new_err(text),
        BlobError::BlobTooSmall { .. } | BlobError::BlobMisaligned { .. } => {
            BufferUnusableError::new_err(text)
        }
        BlobError::NotAHeap { .. }
        | BlobError::VersionMismatch { .. }
        | BlobError::BadGeometry { .. }
        | BlobError::Destroyed => NotAHeapError::new_err(text),
        BlobError::TooLarge { .. } | BlobError::OutOfMemory { .. } | BlobError::Timeout { .. } => {
            OutOfMemoryError::new_err(text)
        }
        BlobError::NotLive { .. }
        | BlobError::OffsetOutOfRange { .. }
        | BlobError::StaleGeneration { .. } => InvalidMemoryError::new_err(text),
        BlobError::Pinned { .. } | BlobError::TooManyPins { .. } => BusyError::new_err(text),
        BlobError::RecoveryNeeded { .. } => RecoveryNeededError::new_err(text),
        BlobError::NoRecoveryNeeded => NoRecoveryNeededError::new_err(text),
        BlobError::AlreadyLocked
        | BlobError::LockLost
        | BlobError::Lock { .. }
        | BlobError::LockUnavailable { .. } => LockError::new_err(text),
        BlobError::StillAttached { .. } => StillAttachedError::new_err(text),
        BlobError::OtherPidNamespace { .. } => HeapError::new_err(text),
        // The crate's error is `non_exhaustive`: a kind added later is still a HeapError.
        _ => HeapError::new_err(text),
    }
}

/// The exception for a bitmap error, with the crate's message.
fn bitset_err(error: BitmapError) -> PyErr {
    let text = error.to_string();
    match error {
        BitmapError::OutOfRange { .. } | BitmapError::RangeOutOfRange { .. } => {
            BitIndexError::new_err(text)
        }
        BitmapError::NotABitmap { .. } => NotABitSetError::new_err(text),
        _ => BitSetError::new_err(text),
    }
}

/// A lock of this module's own state, taken whatever a panic elsewhere left it as (nothing
/// here panics while holding one, and the state stays consistent at every step).
fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

// ---- the module --------------------------------------------------------------------------

/// The Dragon heap manager's interface: `Heap` (a buddy heap inside any writable buffer,
/// shareable between processes) and `BitSet` (a bit set inside any writable buffer).
#[pymodule]
fn stratalloc_py(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<heap::Heap>()?;
    m.add_class::<heap::Memory>()?;
    m.add_class::<heap::MemStat>()?;
    m.add_class::<bitset::BitSet>()?;
    m.add("HeapError", py.get_type::<HeapError>())?;
    m.add("GeometryError", py.get_type::<GeometryError>())?;
    m.add("BufferUnusableError", py.get_type::<BufferUnusableError>())?;
    m.add("NotAHeapError", py.get_type::<NotAHeapError>())?;
    m.add("OutOfMemoryError", py.get_type::<OutOfMemoryError>())?;
    m.add("InvalidMemoryError", py.get_type::<InvalidMemoryError>())?;
    m.add("RecoveryNeededError", py.get_type::<RecoveryNeededError>())?;
    m.add(
        "NoRecoveryNeededError",
        py.get_type::<NoRecoveryNeededError>(),
    )?;
    m.add("LockError", py.get_type::<LockError>())?;
    m.add("StillAttachedError", py.get_type::<StillAttachedError>())?;
    m.add("DetachedError", py.get_type::<DetachedError>())?;
    m.add("BusyError", py.get_type::<BusyError>())?;
    m.add("BitSetError", py.get_type::<BitSetError>())?;
    m.add("BitIndexError", py.get_type::<BitIndexError>())?;
    m.add("NotABitSetError", py.get_type::<NotABitSetError>())?;
    m.add("PAGE_SIZE", heap::PAGE)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
