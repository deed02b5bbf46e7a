//! Managed buffers, as Perl's Task::MemManager has them: `count` elements of
//! `element_size` bytes from any stack, shared by cheap clones, filled when made, with a
//! hook called when the last clone goes, deferred release, and memory the caller already
//! holds adopted as buffers.
//!
//! A [`BufferManager`] holds a stack (any [`Layer`]); its buffers come from that stack and
//! go back to it. A [`ManagedBuffer`] is a handle: cloning it shares the buffer (Task::MemManager's
//! "shallow copy defers deallocation"), and the buffer is released when the last clone is
//! dropped. Released means: the buffer's hook runs (with its [`BufferInfo`] and its bytes,
//! still whole), then its memory goes back to the stack, or, for adopted memory, back to
//! its origin (see [`Origin`]). A buffer made with
//! [`deferred`](BufferOptions::deferred) instead waits, hook not yet run, on the manager's
//! list ([`waiting`](BufferManager::waiting)) until [`collect`](BufferManager::collect) or
//! the manager's drop.
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use stratalloc::layers::System;
//! use stratalloc::managed::BufferManager;
//!
//! let manager = BufferManager::new(System::new());
//! let released = Arc::new(Mutex::new(Vec::new()));
//! let log = Arc::clone(&released);
//! let buffer = manager
//!     .options(20, 1)
//!     .fill(b'A')
//!     .on_release(move |info, _bytes| log.lock().unwrap().push(info.id))
//!     .allocate()
//!     .unwrap();
//! assert_eq!(buffer.region(5, 10), Some(&b"AAAAA"[..]));
//! let copy = buffer.clone();
//! drop(buffer);
//! assert!(released.lock().unwrap().is_empty(), "the copy keeps the buffer");
//! let id = copy.id();
//! drop(copy);
//! assert_eq!(*released.lock().unwrap(), [id]);
//! ```
//!
//! Buffers made from one manager may be used, cloned and dropped on any thread when the
//! stack is [`Send`]; the manager's bookkeeping sits behind one lock. The manager's own
//! bookkeeping (its lists, the hooks) uses the global allocator; the buffers' memory comes
//! only from the stack.

mod views;

use alloc::sync::Arc;
use core::alloc::Layout;
use core::fmt;
use core::ops::Range;
use core::ptr::NonNull;
use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::vec::Vec;

use crate::Layer;
use crate::layers::{AdoptError, AdoptRefusal, AdoptedMemory, Origin, overlap};

pub use views::ViewError;

/// What a manager knows of a buffer: what [`waiting`](BufferManager::waiting) lists and
/// what a release hook is given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BufferInfo {
    /// The buffer's identifier, unique within its manager (counting from 1).
    pub id: u64,
    /// The address of its first byte.
    pub address: usize,
    /// Its size in bytes: `count * element_size`.
    pub size: usize,
    /// The size of one element.
    pub element_size: usize,
    /// The number of elements.
    pub count: usize,
    /// Where adopted memory came from; `None` for a buffer from the manager's stack.
    pub adopted: Option<Origin>,
}

/// A buffer's release hook: called once, with the buffer's description and its bytes,
/// before its memory goes back.
type Hook = Box<dyn FnOnce(&BufferInfo, &[u8]) + Send>;

/// Why a buffer was not made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BufferError {
    /// `count * element_size` overflows, or exceeds `isize::MAX` once aligned.
    TooLarge {
        /// The elements asked for.
        count: usize,
        /// The size of each.
        element_size: usize,
    },
    /// The alignment asked for is not a power of two.
    BadAlign {
        /// The alignment asked for.
        align: usize,
    },
    /// The stack had no memory for the buffer.
    OutOfMemory {
        /// The buffer's size in bytes.
        size: usize,
        /// Its alignment.
        align: usize,
    },
}

impl fmt::Display for BufferError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BufferError::TooLarge {
                count,
                element_size,
            } => write!(
                f,
                "a buffer of {count} elements of {element_size} bytes is too large"
            ),
            BufferError::BadAlign { align } => {
                write!(f, "alignment {align} is not a power of two")
            }
            BufferError::OutOfMemory { size, align } => write!(
                f,
                "the stack has no memory for a buffer of {size} bytes aligned to {align}"
            ),
        }
    }
}

impl std::error::Error for BufferError {}

/// A buffer on its way out: everything its release needs, wherever it waits.
struct Release {
    info: BufferInfo,
    ptr: NonNull<u8>,
    layout: Layout,
    /// `Some` for adopted memory, which goes back to its origin rather than to the stack.
    adopted: Option<AdoptedMemory>,
    hook: Option<Hook>,
}

// SAFETY: `ptr` is the address of a buffer that no handle uses any more (the last one has
// gone); the release reads its bytes and hands them back to the stack, under the manager's
// lock, from whichever thread runs it, as a `Box<[u8]>` may be dropped on any thread.
// The hook is `Send`, and adopted memory is `Send`.
unsafe impl Send for Release {}

impl Release {
    /// Runs the hook, if any, with the buffer still whole.
    fn run_hook(&mut self) {
        if let Some(hook) = self.hook.take() {
            // SAFETY: the buffer's `size` bytes are initialised (filled when made, or
            // adopted initialised) and stay valid until `finish`; no handle writes them any
            // more (the last one is gone).
            let bytes = unsafe { core::slice::from_raw_parts(self.ptr.as_ptr(), self.info.size) };
            if std::thread::panicking() {
                // The thread unwinds already (the last handle went in a drop during another
                // panic): a second panic out of a drop would abort the process, so the
                // hook's is caught and dropped, and the first panic goes on.
                let _ = catch_unwind(AssertUnwindSafe(|| hook(&self.info, bytes)));
            } else {
                hook(&self.info, bytes);
            }
        }
    }
}

/// A manager's state, behind its lock.
struct State<L: Layer> {
    heap: L,
    next_id: u64,
    /// The range of every buffer not yet released (live or waiting), by identifier.
    held: BTreeMap<u64, Range<usize>>,
    /// Buffers whose last handle went, waiting for `collect`.
    waiting: Vec<Release>,
    /// Whether the `BufferManager` handle still exists; after its drop, deferred buffers
    /// are released at once (nothing could collect them any more).
    open: bool,
}

impl<L: Layer> State<L> {
    /// Gives the buffer's memory back: to its origin if adopted, else to the stack.
    fn finish(&mut self, release: Release) {
        self.held.remove(&release.info.id);
        match release.adopted {
            Some(memory) => drop(memory),
            // SAFETY: the block came from `self.heap.get(layout)` (in `allocate`) and is
            // put back once: its `Release` is made once, by the last handle's drop.
            None => unsafe { self.heap.put(release.ptr, release.layout) },
        }
    }
}

impl<L: Layer> Drop for State<L> {
    fn drop(&mut self) {
        let mut waiting = core::mem::take(&mut self.waiting);
        // A hook that panics does not keep the others from running, nor any memory from
        // going back; the first panic goes on once all are released.
        let panic = each_despite_panics(waiting.iter_mut(), Release::run_hook);
        for release in waiting {
            self.finish(release);
        }
        if let Some(panic) = panic {
            resume_unwind(panic);
        }
    }
}

/// Calls `each` with every item, also after one of the calls panicked; returns the first
/// panic, for the caller to carry on once it has done what must follow.
fn each_despite_panics<T>(
    items: impl IntoIterator<Item = T>,
    mut each: impl FnMut(T),
) -> Option<Box<dyn core::any::Any + Send>> {
    let mut first_panic = None;
    for item in items {
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| each(item))) {
            first_panic.get_or_insert(panic);
        }
    }
    first_panic
}

type Shared<L> = Arc<Mutex<State<L>>>;

/// Locks the manager's state. A panic never leaves it half-changed (hooks run outside the
/// lock, and layers do not unwind), so a poisoned lock is taken as it is.
fn lock<L: Layer>(shared: &Shared<L>) -> MutexGuard<'_, State<L>> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs a release's hook outside the manager's lock (a hook may use the manager), then
/// gives the memory back; the memory goes back even when the hook panics.
fn release_now<L: Layer>(shared: &Shared<L>, release: Release) {
    struct FinishOnDrop<'s, L: Layer> {
        shared: &'s Shared<L>,
        release: Option<Release>,
    }
    impl<L: Layer> Drop for FinishOnDrop<'_, L> {
        fn drop(&mut self) {
            if let Some(release) = self.release.take() {
                lock(self.shared).finish(release);
            }
        }
    }
    let mut guard = FinishOnDrop {
        shared,
        release: Some(release),
    };
    if let Some(release) = &mut guard.release {
        release.run_hook();
    }
}

/// Holds a stack and makes [`ManagedBuffer`]s from it: see the [module
/// documentation](self).
///
/// Dropping the manager releases the buffers waiting on its deferred list; buffers still
/// in use keep the stack alive (they share it) and release into it when their last handle
/// goes, at once, deferred or not.
pub struct BufferManager<L: Layer> {
    shared: Shared<L>,
}

impl<L: Layer> BufferManager<L> {
    /// A manager serving buffers from `heap`.
    pub fn new(heap: L) -> Self {
        BufferManager {
            shared: Arc::new(Mutex::new(State {
                heap,
                next_id: 1,
                held: BTreeMap::new(),
                waiting: Vec::new(),
                open: true,
            })),
        }
    }

    /// Starts a buffer of `count` elements of `element_size` bytes: set its options, then
    /// [`allocate`](BufferOptions::allocate) or [`adopt`](BufferOptions::adopt).
    pub fn options(&self, count: usize, element_size: usize) -> BufferOptions<'_, L> {
        BufferOptions {
            manager: self,
            count,
            element_size,
            fill: 0,
            align: 16,
            hook: None,
            deferred: false,
        }
    }

    /// A zeroed buffer of `count` elements of `element_size` bytes, with no hook, released
    /// at once: `options(count, element_size).allocate()`.
    ///
    /// # Errors
    ///
    /// As [`BufferOptions::allocate`].
    pub fn allocate(
        &self,
        count: usize,
        element_size: usize,
    ) -> Result<ManagedBuffer<L>, BufferError> {
        self.options(count, element_size).allocate()
    }

    /// The buffers waiting for [`collect`](Self::collect), in the order their last handle
    /// went (Task::MemManager's `get_delayed_gc_objects`).
    pub fn waiting(&self) -> Vec<BufferInfo> {
        lock(&self.shared)
            .waiting
            .iter()
            .map(|release| release.info.clone())
            .collect()
    }

    /// The number of buffers not yet released, waiting ones included.
    pub fn held(&self) -> usize {
        lock(&self.shared).held.len()
    }

    /// Releases every waiting buffer: runs its hook, then gives its memory back. Returns
    /// how many were released.
    ///
    /// A hook that panics does not stop the others: every waiting buffer is released, its
    /// hook run once, and then the first panic carries on out of `collect`.
    pub fn collect(&self) -> usize {
        let waiting = core::mem::take(&mut lock(&self.shared).waiting);
        let released = waiting.len();
        let panic = each_despite_panics(waiting, |release| release_now(&self.shared, release));
        if let Some(panic) = panic {
            resume_unwind(panic);
        }
        released
    }

    /// Calls `f` with the stack, for its gauges or leak report (read only: a `deinit`
    /// would end the live buffers). `f` must not use this manager or drop its buffers
    /// (the manager's lock is held: that would deadlock).
    pub fn with_heap<R>(&self, f: impl FnOnce(&L) -> R) -> R {
        f(&lock(&self.shared).heap)
    }
}

impl<L: Layer> Drop for BufferManager<L> {
    fn drop(&mut self) {
        lock(&self.shared).open = false;
        self.collect();
    }
}

impl<L: Layer> fmt::Debug for BufferManager<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = lock(&self.shared);
        f.debug_struct("BufferManager")
            .field("held", &state.held.len())
            .field("waiting", &state.waiting.len())
            .finish_non_exhaustive()
    }
}

/// A buffer being specified: its fill, alignment, hook and release; made by
/// [`BufferManager::options`].
#[must_use = "a buffer is made only by `allocate` or `adopt`"]
pub struct BufferOptions<'m, L: Layer> {
    manager: &'m BufferManager<L>,
    count: usize,
    element_size: usize,
    fill: u8,
    align: usize,
    hook: Option<Hook>,
    deferred: bool,
}

impl<L: Layer> BufferOptions<'_, L> {
    /// Every byte of the new buffer is `byte` (Task::MemManager's `init_value`); the default is 0.
    /// Adopted memory keeps its bytes.
    pub fn fill(mut self, byte: u8) -> Self {
        self.fill = byte;
        self
    }

    /// The buffer's first byte is aligned to `align` (a power of two; the default is 16).
    /// Adopted memory keeps its address.
    pub fn align(mut self, align: usize) -> Self {
        self.align = align;
        self
    }

    /// `hook` is called once, when the buffer is released (Task::MemManager's `death_stub`), with
    /// its description (its identifier among it) and its bytes, before the memory goes
    /// back. It runs on the thread that drops the last handle (or calls
    /// [`collect`](BufferManager::collect)), outside the manager's lock: it may use the
    /// manager. If it panics, the memory still goes back, then the panic goes on (unless the
    /// thread was unwinding already, from a panic that dropped the last handle: the hook's
    /// panic is then dropped, and the first one goes on).
    pub fn on_release(mut self, hook: impl FnOnce(&BufferInfo, &[u8]) + Send + 'static) -> Self {
        self.hook = Some(Box::new(hook));
        self
    }

    /// When its last handle goes, the buffer waits on the manager's list, hook not yet
    /// run, until [`collect`](BufferManager::collect) or the manager's drop (Task::MemManager's
    /// `delayed_gc`).
    pub fn deferred(mut self) -> Self {
        self.deferred = true;
        self
    }

    fn size(&self) -> Option<usize> {
        self.count.checked_mul(self.element_size)
    }

    /// Makes the buffer from the manager's stack, every byte the fill byte.
    ///
    /// # Errors
    ///
    /// [`BufferError::TooLarge`] when the size overflows, [`BufferError::BadAlign`] for an
    /// alignment that is not a power of two, [`BufferError::OutOfMemory`] when the stack
    /// has no memory for it.
    pub fn allocate(self) -> Result<ManagedBuffer<L>, BufferError> {
        let too_large = BufferError::TooLarge {
            count: self.count,
            element_size: self.element_size,
        };
        let size = self.size().ok_or(too_large.clone())?;
        if !self.align.is_power_of_two() {
            return Err(BufferError::BadAlign { align: self.align });
        }
        let layout = Layout::from_size_align(size, self.align).map_err(|_| too_large)?;
        let shared = &self.manager.shared;
        let mut state = lock(shared);
        let ptr = state.heap.get(layout).ok_or(BufferError::OutOfMemory {
            size,
            align: self.align,
        })?;
        let id = state.next_id;
        state.next_id += 1;
        let start = ptr.as_ptr().addr();
        state.held.insert(id, start..start + size);
        drop(state);
        if !(L::ZEROED && self.fill == 0) {
            // SAFETY: the block is valid for writes of `size` bytes (the `Layer` contract),
            // and no one else has it yet.
            unsafe { ptr.as_ptr().write_bytes(self.fill, size) };
        }
        Ok(self.finish(id, ptr, layout, None))
    }

    /// Makes the buffer of memory the caller held (Task::MemManager's `consume`): its first
    /// `count * element_size` bytes, as they are. The memory goes back to its origin when
    /// the buffer is released (see [`Origin`]), never to the stack.
    ///
    /// # Errors
    ///
    /// [`AdoptRefusal::TooSmall`] when the memory cannot hold the elements, and
    /// [`AdoptRefusal::Overlaps`] naming both ranges when it overlaps a buffer of this
    /// manager not yet released (possible only with
    /// [`AdoptedMemory::from_raw_parts`]); the memory comes back in the error.
    pub fn adopt(self, memory: AdoptedMemory) -> Result<ManagedBuffer<L>, AdoptError> {
        let size = match self.size() {
            Some(size) if size <= memory.len() => size,
            _ => {
                let refusal = AdoptRefusal::TooSmall {
                    len: memory.len(),
                    count: self.count,
                    element_size: self.element_size,
                };
                return Err(AdoptError::new(refusal, memory));
            }
        };
        let adopting = memory.held_range();
        let mut state = lock(&self.manager.shared);
        let clash = state
            .held
            .iter()
            .find(|(_, existing)| overlap(&adopting, existing));
        if let Some((&id, existing)) = clash {
            let refusal = AdoptRefusal::Overlaps {
                adopting,
                existing: existing.clone(),
                existing_is: "buffer",
                existing_id: Some(id),
            };
            return Err(AdoptError::new(refusal, memory));
        }
        let id = state.next_id;
        state.next_id += 1;
        // The whole memory is the buffer's until it is released, not just the bytes it shows.
        state.held.insert(id, adopting);
        drop(state);
        let layout = Layout::from_size_align(size, 1)
            .expect("adopted memory is at most isize::MAX bytes (AdoptedMemory's contract)");
        Ok(self.finish(id, memory.as_ptr(), layout, Some(memory)))
    }

    fn finish(
        self,
        id: u64,
        ptr: NonNull<u8>,
        layout: Layout,
        adopted: Option<AdoptedMemory>,
    ) -> ManagedBuffer<L> {
        let info = BufferInfo {
            id,
            address: ptr.as_ptr().addr(),
            size: layout.size(),
            element_size: self.element_size,
            count: self.count,
            adopted: adopted.as_ref().map(AdoptedMemory::origin),
        };
        ManagedBuffer {
            inner: Arc::new(Inner {
                release: Some(Release {
                    info,
                    ptr,
                    layout,
                    adopted,
                    hook: self.hook,
                }),
                deferred: self.deferred,
                shared: Arc::clone(&self.manager.shared),
            }),
        }
    }
}

/// What every handle of one buffer shares.
struct Inner<L: Layer> {
    /// Always `Some` until the drop takes it.
    release: Option<Release>,
    deferred: bool,
    shared: Shared<L>,
}

impl<L: Layer> Inner<L> {
    fn release(&self) -> &Release {
        self.release.as_ref().expect("taken only by the drop")
    }
}

impl<L: Layer> Drop for Inner<L> {
    fn drop(&mut self) {
        let Some(release) = self.release.take() else {
            return;
        };
        if self.deferred {
            let mut state = lock(&self.shared);
            if state.open {
                state.waiting.push(release);
                return;
            }
        }
        release_now(&self.shared, release);
    }
}

/// A buffer of `count` elements of `element_size` bytes from a [`BufferManager`]; clones
/// share it, and it is released when the last one goes (see the [module
/// documentation](self)).
///
/// Reading is through shared references ([`as_bytes`](Self::as_bytes),
/// [`region`](Self::region), [`view`](Self::view)); writing needs the only handle
/// ([`get_mut`](Self::get_mut), [`view_mut`](Self::view_mut)), as with `Arc::get_mut`, or
/// the raw address ([`as_mut_ptr`](Self::as_mut_ptr)) for foreign code.
pub struct ManagedBuffer<L: Layer> {
    inner: Arc<Inner<L>>,
}

// SAFETY: a handle reads the buffer's bytes through `&self` and writes them only as the
// one handle left (`Arc::get_mut`), as `Arc<Box<[u8]>>` would; the release may run on any
// thread (`Release` is `Send`) and reaches the stack under the manager's lock, so the stack
// need only be `Send`.
unsafe impl<L: Layer + Send> Send for ManagedBuffer<L> {}
// SAFETY: as above: shared handles only read.
unsafe impl<L: Layer + Send> Sync for ManagedBuffer<L> {}

impl<L: Layer> Clone for ManagedBuffer<L> {
    /// Another handle to the same buffer (no bytes are copied).
    fn clone(&self) -> Self {
        ManagedBuffer {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<L: Layer> ManagedBuffer<L> {
    /// The buffer's description.
    pub fn info(&self) -> &BufferInfo {
        &self.inner.release().info
    }

    /// Its identifier, unique within its manager.
    pub fn id(&self) -> u64 {
        self.info().id
    }

    /// The address of its first byte (Task::MemManager's `get_buffer`).
    pub fn address(&self) -> usize {
        self.info().address
    }

    /// Its size in bytes (Task::MemManager's `get_buffer_size`).
    pub fn size(&self) -> usize {
        self.info().size
    }

    /// The size of one element (Task::MemManager's `get_element_size`).
    pub fn element_size(&self) -> usize {
        self.info().element_size
    }

    /// The number of elements (Task::MemManager's `get_num_of_elements`).
    pub fn count(&self) -> usize {
        self.info().count
    }

    /// How many handles share the buffer.
    pub fn handles(&self) -> usize {
        Arc::strong_count(&self.inner)
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        let release = self.inner.release();
        // SAFETY: the buffer's `size` bytes are initialised (filled when made, or adopted
        // initialised) and valid while a handle lives; handles write them only when alone
        // (`get_mut`), which `&self` here rules out for the life of the slice.
        unsafe { core::slice::from_raw_parts(release.ptr.as_ptr(), release.info.size) }
    }

    /// The bytes, writable, when this is the only handle (else `None`).
    pub fn get_mut(&mut self) -> Option<&mut [u8]> {
        let inner = Arc::get_mut(&mut self.inner)?;
        let release = inner.release.as_ref().expect("taken only by the drop");
        // SAFETY: as in `as_bytes`, and no other handle exists (`Arc::get_mut`) while the
        // `&mut self` borrow lasts.
        Some(unsafe { core::slice::from_raw_parts_mut(release.ptr.as_ptr(), release.info.size) })
    }

    /// The bytes `start..end` (Task::MemManager's `extract_buffer_region`), or `None` when `end`
    /// is past the buffer's end or `start > end`.
    pub fn region(&self, start: usize, end: usize) -> Option<&[u8]> {
        self.as_bytes().get(start..end)
    }

    /// The first byte, for foreign code. Writing through it is allowed while no slice from
    /// this buffer ([`as_bytes`](Self::as_bytes), views) is in use, and no other thread
    /// reads the bytes meanwhile; the pointer is valid while a handle lives.
    pub fn as_mut_ptr(&self) -> *mut u8 {
        self.inner.release().ptr.as_ptr()
    }
}

impl<L: Layer> fmt::Debug for ManagedBuffer<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let info = self.info();
        write!(
            f,
            "ManagedBuffer #{} at {:#x}: {} x {} bytes",
            info.id, info.address, info.count, info.element_size
        )?;
        if let Some(origin) = info.adopted {
            write!(f, ", adopted ({origin:?})")?;
        }
        Ok(())
    }
}
