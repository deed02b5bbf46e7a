//! `Heap` (the seed's heap handle), `Memory` (what `malloc` returns) and `MemStat` (what
//! `get_stats` returns), over [`BlobHeap`]. The lifetime rules are written under
//! "Lifetimes" below; the pinning they rest on in `pin.rs`.
//!
//! # Where the heap lies in the buffer
//!
//! [`BlobHeap`] needs its blob to start on a 64-byte boundary, and it aligns blocks to the
//! heap's `alignment` relative to the blob's start. A `bytearray` starts wherever Python's
//! allocator put it, so the heap starts at the first address in the buffer that is a
//! multiple of `clamp(alignment, 64, PAGE)` (the bytes before it are zeroed by `init`):
//! blocks are then aligned in absolute terms up to the page size, in any buffer. The cap
//! at the page size is what lets other processes find the heap: every mapping of a shared
//! segment (`SharedMemory`, `mmap`) starts on a page boundary, so the heap lies at the same
//! offset into the buffer in all of them. `attach` looks for the heap's header at each
//! 64-byte boundary within the buffer's first page, and takes the first it finds whose
//! alignment says it starts there. `Heap.size` includes the room to align (`PAGE - 1`
//! bytes at most).
//!
//! # Lifetimes
//!
//! - A `Heap` handle owns a [`Handle`]: the crate's handle and the [`Pinned`] buffer export
//!   that keeps its memory in place. `detach`, `destroy`, or the handle's garbage
//!   collection drop it (the crate's handle first, then the export).
//! - A `Memory` is one allocation of a block: its offset and its *generation* (see the
//!   crate's `blob_heap` docs, "Stamps"), which every handle of the heap, in every
//!   process, sees change when the block is freed. Before every access it checks, under
//!   its handle's state lock, that the handle is attached (so the memory is mapped), and
//!   pins the block for the access (so no handle anywhere frees it meanwhile; a pin of a
//!   freed generation fails): a `Memory` whose block was freed, by any handle of any
//!   process, raises `InvalidMemoryError` instead of touching it.
//! - A buffer exported from a `Memory` (a `memoryview` over it) is a raw pointer that
//!   cannot be revoked: it holds a pin on the block while it lives, so `free` of the block
//!   through any handle, in any process or mapping, raises `BusyError`; and the handle
//!   counts it, so `detach` / `destroy` of the handle raise `BusyError` too.
//! - `free` takes the allocation, not the place: it frees the block only if its generation
//!   is the object's, so a stale object never frees the block's next allocation.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use core::ffi::c_int;
use core::ptr::NonNull;

use pyo3::exceptions::{PyIndexError, PyOverflowError, PyTypeError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PySlice};
use stratalloc::blob_heap::{BlobBlock, BlobError, BlobGeometry, BlobHeap, LOWEST_ORDER};

use crate::pin::Pinned;
use crate::{
    BufferUnusableError, BusyError, DetachedError, InvalidMemoryError, NotAHeapError,
    StillAttachedError, heap_err, lock,
};

/// The cap on where a heap's start is aligned (see "Where the heap lies in the buffer").
pub(crate) const PAGE: usize = 4096;

/// What the heap's start is aligned to in the buffer, for a heap of `alignment`.
fn start_alignment(alignment: usize) -> usize {
    alignment.clamp(64, PAGE)
}

fn geometry(max_sz_pwr: u32, min_sz_pwr: u32, alignment: usize) -> PyResult<BlobGeometry> {
    BlobGeometry::new(max_sz_pwr, min_sz_pwr, alignment).map_err(heap_err)
}

/// A block handed back from a call made without the GIL.
struct SendBlock(BlobBlock);

// SAFETY: a block is an offset, a size and an address into memory pinned by the handle
// that made it; nothing in it is tied to a thread.
unsafe impl Send for SendBlock {}

/// An address handed to a call made without the GIL.
#[derive(Clone, Copy)]
struct SendPtr(NonNull<u8>);

// SAFETY: an address into memory pinned by the caller for the length of the call; nothing
// in it is tied to a thread.
unsafe impl Send for SendPtr {}

// ---- the handle and its state --------------------------------------------------------------

/// An attached handle: the crate's handle over pinned memory. Fields drop in order, so the
/// crate's handle (whose `Drop` writes the header, in the process that attached it only)
/// goes before the export.
struct Handle {
    heap: BlobHeap<'static>,
    /// Keeps `heap`'s memory in place (see `pin.rs`).
    pin: Pinned,
    /// Where the heap starts in this process (the key that tells mappings apart).
    start: NonNull<u8>,
    /// The heap's range among those of attached handles (see [`ATTACHED`]).
    attached: Attached,
}

/// The ranges of memory that attached handles of this process use, one entry per handle:
/// `Heap.init` refuses memory that overlaps one (it would reset a heap under its handles).
static ATTACHED: Mutex<Vec<(usize, usize)>> = Mutex::new(Vec::new());

/// A handle's entry in [`ATTACHED`], removed when it drops.
struct Attached(usize, usize);

impl Attached {
    fn new(start: NonNull<u8>, len: usize) -> Self {
        let start = start.as_ptr().addr();
        lock(&ATTACHED).push((start, start + len));
        Attached(start, start + len)
    }

    /// The range of an attached handle that overlaps `start..end`, if any.
    fn overlapping(start: usize, end: usize) -> Option<(usize, usize)> {
        lock(&ATTACHED)
            .iter()
            .copied()
            .find(|&(from, to)| from < end && start < to)
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        let mut attached = lock(&ATTACHED);
        if let Some(at) = attached.iter().position(|&range| range == (self.0, self.1)) {
            attached.swap_remove(at);
        }
    }
}

// SAFETY: `BlobHeap` is `Send + Sync`; `Pinned` is (see `pin.rs`); `start` is an address
// only compared, never dereferenced.
unsafe impl Send for Handle {}
// SAFETY: as above.
unsafe impl Sync for Handle {}

struct State {
    /// `None` once detached or destroyed. An `Arc` so that `with_lock` can run Python code
    /// without holding the state lock (that code may call this handle again).
    handle: Option<Arc<Handle>>,
    /// Buffers exported from memory objects of this handle and not yet released.
    exports: usize,
}

// ---- Heap ----------------------------------------------------------------------------------

/// A handle on a buddy heap that lives inside a writable buffer (`bytearray`, `mmap.mmap`,
/// `SharedMemory().buf`), shared by every handle attached to that memory, in this process
/// or others. Detach it or destroy it explicitly, or let garbage collection detach it.
#[pyclass(frozen, module = "stratalloc_py")]
pub(crate) struct Heap {
    state: Mutex<State>,
    geometry: BlobGeometry,
    init_handle: bool,
}

impl Heap {
    fn new(handle: Handle, init_handle: bool) -> Self {
        Heap {
            geometry: handle.heap.geometry(),
            state: Mutex::new(State {
                handle: Some(Arc::new(handle)),
                exports: 0,
            }),
            init_handle,
        }
    }

    /// The attached handle, or `DetachedError`.
    fn handle(&self) -> PyResult<Arc<Handle>> {
        lock(&self.state)
            .handle
            .clone()
            .ok_or_else(|| DetachedError::new_err("this Heap handle was detached or destroyed"))
    }

    /// Takes the handle out of the state, refusing while buffers over its blocks are
    /// exported (`doing` names the call in the message).
    fn take_handle(&self, doing: &str) -> PyResult<Arc<Handle>> {
        let mut state = lock(&self.state);
        // Buffers are exported only from an attached handle's blocks.
        if state.exports > 0 {
            return Err(BusyError::new_err(format!(
                "cannot {doing}: {} buffer(s) over this handle's blocks are still exported \
                 (a memoryview is alive); release them first",
                state.exports
            )));
        }
        state.handle.take().ok_or_else(|| {
            DetachedError::new_err(format!(
                "cannot {doing}: this Heap handle was detached or destroyed already"
            ))
        })
    }

    /// A memory object of `len` bytes over `block` (this allocation of it).
    fn memory(
        slf: &Bound<'_, Heap>,
        handle: &Handle,
        block: BlobBlock,
        len: usize,
    ) -> PyResult<Py<Memory>> {
        Py::new(
            slf.py(),
            Memory {
                heap: slf.clone().unbind(),
                heap_id: handle.heap.id(),
                offset: block.offset,
                generation: block.generation,
                len,
                block_size: block.size,
                ptr: BlockPtr(block.as_ptr().cast::<u8>()),
                freed_here: AtomicBool::new(false),
            },
        )
    }
}

#[pymethods]
impl Heap {
    /// Bytes of memory a heap of 2**max_sz_pwr bytes needs, with blocks from
    /// 2**min_sz_pwr bytes up and data aligned to `alignment` (a power of two, at least
    /// 8): header, bitmaps and data, plus room to align the heap's start in any buffer.
    #[classmethod]
    fn size(
        _cls: &Bound<'_, pyo3::types::PyType>,
        max_sz_pwr: u32,
        min_sz_pwr: u32,
        alignment: usize,
    ) -> PyResult<usize> {
        let g = geometry(max_sz_pwr, min_sz_pwr, alignment)?;
        Ok(g.required_size() + start_alignment(alignment) - 1)
    }

    /// Makes a new, empty heap in `mem_addr` (a writable buffer of at least `Heap.size`
    /// bytes; what it held is overwritten) and returns the first handle on it.
    #[classmethod]
    fn init(
        _cls: &Bound<'_, pyo3::types::PyType>,
        max_sz_pwr: u32,
        min_sz_pwr: u32,
        alignment: usize,
        mem_addr: &Bound<'_, PyAny>,
    ) -> PyResult<Self> {
        let g = geometry(max_sz_pwr, min_sz_pwr, alignment)?;
        let pin = Pinned::writable(mem_addr, "mem_addr", BufferUnusableError::new_err)?;
        let (base, len) = (pin.base(), pin.len());
        let aligned = start_alignment(alignment);
        let skip = base.as_ptr().addr().next_multiple_of(aligned) - base.as_ptr().addr();
        let needed = g.required_size();
        if len < skip.saturating_add(needed) {
            return Err(BufferUnusableError::new_err(format!(
                "mem_addr has {len} bytes; a heap of 2**{max_sz_pwr} bytes in blocks of \
                 2**{min_sz_pwr} and up, aligned to {alignment}, needs {needed} bytes from a \
                 {aligned}-byte boundary, which lies {skip} bytes into this buffer \
                 (Heap.size({max_sz_pwr}, {min_sz_pwr}, {alignment}) = {} fits any buffer)",
                needed + aligned - 1
            )));
        }
        // SAFETY: `skip + needed <= len`, so the start lies inside the buffer.
        let start = unsafe { base.add(skip) };
        let from = base.as_ptr().addr();
        if let Some((used, to)) = Attached::overlapping(from, from + len) {
            return Err(BusyError::new_err(format!(
                "mem_addr ({from:#x}..{:#x}) overlaps the memory of a heap that a handle of \
                 this process is attached to ({used:#x}..{to:#x}); Heap.init would reset \
                 that heap under its handles: detach or destroy them first",
                from + len
            )));
        }
        // A heap with handles (of another process: this one's are refused above) anywhere
        // `attach` would look for one: `init` would reset it under them.
        let first = from.next_multiple_of(64) - from;
        for at in (first..len.min(PAGE)).step_by(64) {
            // SAFETY: `at < len`: the header read lies in the pinned buffer, or is refused
            // as too short by `attached_handles`.
            let handles = unsafe { BlobHeap::attached_handles(base.add(at), len - at) };
            if let Some(handles) = handles.filter(|&n| n > 0) {
                return Err(StillAttachedError::new_err(format!(
                    "mem_addr holds a heap (its header {at} bytes in) with {handles} handle(s) \
                     attached, in other processes or another mapping of this memory: \
                     Heap.init would reset it under them; \
                     detach or destroy them first (a handle of a process that died stays \
                     counted: to reuse such memory, zero it first)"
                )));
            }
        }
        // SAFETY: the bytes before the start are the buffer's, pinned and writable; zeroing
        // them means `attach` cannot find an older heap's header there (see the module).
        unsafe { base.as_ptr().write_bytes(0, skip) };
        // SAFETY: `start..start + len - skip` lies in the pinned, writable buffer, which
        // stays in place until the `Handle` drops the export, after the crate's handle; no
        // handle of this process uses it (checked above), nor, as far as the header says,
        // one of another (a process attaching while this runs is not seen).
        let heap = unsafe { BlobHeap::init_raw(start, len - skip, g) }.map_err(heap_err)?;
        let attached = Attached::new(start, len - skip);
        Ok(Heap::new(
            Handle {
                heap,
                pin,
                start,
                attached,
            },
            true,
        ))
    }

    /// Attaches a new handle to the heap that `mem_addr` already holds (made by `init`,
    /// perhaps in another process over the same shared memory). With
    /// `claim_pid_namespace`, first records this process's PID namespace as the heap's: for
    /// a heap that no process of its own namespace uses any more.
    #[classmethod]
    #[pyo3(signature = (mem_addr, claim_pid_namespace = false))]
    fn attach(
        _cls: &Bound<'_, pyo3::types::PyType>,
        mem_addr: &Bound<'_, PyAny>,
        claim_pid_namespace: bool,
    ) -> PyResult<Self> {
        let pin = Pinned::writable(mem_addr, "mem_addr", BufferUnusableError::new_err)?;
        let (base, len) = (pin.base(), pin.len());
        let first = base.as_ptr().addr().next_multiple_of(64) - base.as_ptr().addr();
        let mut found_other = None;
        // No heap fits in fewer bytes than the smallest possible one: such a tail of the
        // buffer holds none (and the crate would report its header as too long for it).
        let smallest = BlobGeometry::new(LOWEST_ORDER, LOWEST_ORDER, 8)
            .map_err(heap_err)?
            .required_size();
        for skip in (first..len.min(PAGE)).step_by(64) {
            if len - skip < smallest {
                break;
            }
            // SAFETY: `skip < len`: inside the buffer.
            let start = unsafe { base.add(skip) };
            let at = SendPtr(start);
            // Without the GIL: attaching takes the heap's lock when its word names a thread
            // that is gone, which may wait up to the lock's patience.
            let attached = mem_addr.py().detach(move || {
                let at = at;
                // SAFETY: the memory lies in the pinned, writable buffer, kept in place
                // until the crate's handle is gone (as in `init`). The heap `init` made in
                // this buffer (or in the shared segment it maps) is the first header found,
                // since `init` zeroed the bytes before it; other bytes of the buffer are
                // written only through the heap, the contract the README states for the
                // seed's interface (the crate checks every offset it writes through). A
                // claim of the PID namespace is the caller's promise that no process of
                // the heap's old namespace uses it (the README's contract for the flag).
                unsafe {
                    if claim_pid_namespace {
                        BlobHeap::claim_pid_namespace(at.0, len - skip)?;
                    }
                    BlobHeap::attach_raw(at.0, len - skip)
                }
            });
            match attached {
                Ok(heap) => {
                    let aligned = start_alignment(heap.geometry().alignment());
                    if start.as_ptr().addr().is_multiple_of(aligned) && skip < aligned {
                        let attached = Attached::new(start, len - skip);
                        let handle = Handle {
                            heap,
                            pin,
                            start,
                            attached,
                        };
                        return Ok(Heap::new(handle, false));
                    }
                }
                Err(BlobError::NotAHeap { .. }) => {}
                Err(error @ BlobError::BlobTooSmall { .. }) => found_other = Some(error),
                Err(error) => return Err(heap_err(error)),
            }
        }
        Err(match found_other {
            Some(error) => heap_err(error),
            None => NotAHeapError::new_err(format!(
                "mem_addr ({len} bytes) holds no heap: no heap header at any 64-byte boundary \
                 of its first {} bytes (was it made by Heap.init, in this memory or a mapping \
                 of the same segment starting on a page boundary?)",
                len.min(PAGE)
            )),
        })
    }

    /// Detaches this handle; the heap and its blocks stay for other handles. Raises
    /// BusyError while a buffer over one of its blocks is exported.
    fn detach(&self) -> PyResult<()> {
        drop(self.take_handle("detach")?);
        Ok(())
    }

    /// Ends the heap: the memory no longer holds one (attaching fails) and is the
    /// caller's again. Raises StillAttachedError while other handles are attached (this
    /// handle then stays attached), BusyError while buffers over blocks are exported.
    fn destroy(&self, py: Python<'_>) -> PyResult<()> {
        let handle = self.handle()?;
        let handles = py.detach(|| handle.heap.stats().handles);
        drop(handle);
        if handles > 1 {
            return Err(heap_err(BlobError::StillAttached { handles }));
        }
        let handle = self.take_handle("destroy")?;
        let Handle {
            heap,
            pin,
            start,
            attached,
        } = match Arc::try_unwrap(handle) {
            Ok(handle) => handle,
            Err(handle) => {
                lock(&self.state).handle = Some(handle);
                return Err(BusyError::new_err(
                    "cannot destroy: this handle is in use (inside with_lock)",
                ));
            }
        };
        let len = heap.blob_len();
        match py.detach(|| heap.destroy()) {
            Ok(()) => Ok(()),
            Err(error) => {
                // Another handle attached since the count above (the crate's `destroy`
                // detached this one): attach again, so that the handle stays usable.
                // SAFETY: the same memory, still pinned by `pin`, holding the heap this
                // handle was attached to a moment ago.
                if let Ok(heap) = unsafe { BlobHeap::attach_raw(start, len) } {
                    let handle = Handle {
                        heap,
                        pin,
                        start,
                        attached,
                    };
                    lock(&self.state).handle = Some(Arc::new(handle));
                }
                Err(heap_err(error))
            }
        }
    }

    /// Allocates a block of at least `size` bytes and returns a writable memory object of
    /// `size` bytes over it. With `timeout` (seconds), waits that long for other handles
    /// to free memory when none is free. Raises RecoveryNeededError when the heap needs
    /// recover() first, OutOfMemoryError when no block is free.
    #[pyo3(signature = (size, timeout = None))]
    fn malloc(slf: &Bound<'_, Self>, size: usize, timeout: Option<f64>) -> PyResult<Py<Memory>> {
        let handle = slf.get().handle()?;
        let py = slf.py();
        let block = match timeout {
            None => py.detach(|| handle.heap.alloc(size).map(SendBlock)),
            Some(seconds) => {
                let wait = Duration::try_from_secs_f64(seconds).map_err(|_| {
                    PyValueError::new_err(format!(
                        "timeout must be a finite number of seconds >= 0, not {seconds}"
                    ))
                })?;
                py.detach(|| handle.heap.alloc_waiting(size, wait).map(SendBlock))
            }
        }
        .map_err(heap_err)?;
        Heap::memory(slf, &handle, block.0, size)
    }

    /// Frees the block `mem_obj` is over (a memory object from `malloc` or `block` of any
    /// handle on this heap, in this process), if it is still that allocation. The object,
    /// and every other object over that allocation in any process, cannot be used
    /// afterwards. Raises InvalidMemoryError when the block was freed already (through any
    /// handle) or the object is of another heap, BusyError while the block is pinned (a
    /// memoryview of it is alive, in this process or another), RecoveryNeededError when
    /// the heap needs recover() first (the block stays live).
    fn free(&self, py: Python<'_>, mem_obj: &Bound<'_, Memory>) -> PyResult<()> {
        let mem = mem_obj.get();
        let handle = self.handle()?;
        mem.usable()?;
        if mem.heap_id != handle.heap.id() {
            return Err(InvalidMemoryError::new_err(format!(
                "the memory object at offset {:#x} belongs to another heap: free it through \
                 a handle on its own heap",
                mem.offset
            )));
        }
        let (offset, generation) = (mem.offset, mem.generation);
        py.detach(|| handle.heap.free_generation(offset, generation))
            .map_err(|error| match error {
                // Freed elsewhere: the place is free, or another allocation's.
                BlobError::NotLive { .. } | BlobError::StaleGeneration { .. } => mem.freed_error(),
                other => heap_err(other),
            })?;
        mem.freed_here.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// A memory object over the live block at `offset` (how a process reaches a block
    /// another process allocated, from the offset it was sent). Its length is the block's
    /// size. Raises InvalidMemoryError when no live block starts there.
    fn block(slf: &Bound<'_, Self>, offset: &Bound<'_, PyAny>) -> PyResult<Py<Memory>> {
        let handle = slf.get().handle()?;
        // A negative or huge int is outside the heap, as any offset past its end.
        let offset = match offset.extract::<u64>() {
            Ok(offset) => offset,
            Err(error) if error.is_instance_of::<PyOverflowError>(slf.py()) => {
                return Err(InvalidMemoryError::new_err(format!(
                    "offset {offset} is outside the heap's {} bytes",
                    handle.heap.geometry().heap_bytes()
                )));
            }
            Err(error) => return Err(error),
        };
        let block = slf
            .py()
            .detach(|| handle.heap.block(offset).map(SendBlock))
            .map_err(heap_err)?
            .0;
        let size = block.size;
        Heap::memory(slf, &handle, block, size)
    }

    /// Rebuilds the heap's free lists after damage or a process that died holding the
    /// lock: every live block stays live and untouched. Raises NoRecoveryNeededError on a
    /// heap that does not need it.
    fn recover(&self, py: Python<'_>) -> PyResult<()> {
        let handle = self.handle()?;
        py.detach(|| handle.heap.recover()).map_err(heap_err)
    }

    /// Clears the heap's lock whoever its word names as the holder, and marks the heap for
    /// recover(): for a lock that names a live thread which does not hold it (a stray
    /// write, or a holder that died and whose thread id went to a new thread), which
    /// otherwise raises LockError for ever. Only when no process holds the lock: a holder
    /// that does would then change the heap at the same time as the next one (the
    /// bookkeeping may break, blocks may be handed out twice; nothing is written outside
    /// the buffer).
    fn break_lock(&self, py: Python<'_>) -> PyResult<()> {
        let handle = self.handle()?;
        // SAFETY: the lock word and the heap's bookkeeping are atomics in the buffer, and
        // every offset the heap writes through is checked to lie in it, so a holder that
        // still runs can corrupt the heap's bookkeeping, not this process's memory; that
        // nobody holds the lock is the caller's word, as documented above.
        py.detach(|| unsafe { handle.heap.break_lock() })
            .map_err(heap_err)
    }

    /// The heap's statistics now.
    fn get_stats(&self, py: Python<'_>) -> PyResult<MemStat> {
        let handle = self.handle()?;
        let s = py.detach(|| handle.heap.stats());
        let g = self.geometry;
        Ok(MemStat {
            num_segments: 1usize << (g.max_order() - g.min_order()),
            segment_size: 1usize << g.min_order(),
            total_size: s.total_bytes,
            total_free_space: s.free_bytes,
            allocated_bytes: s.allocated_bytes,
            live_blocks: s.live_blocks,
            utilization_pct: s.utilisation,
            num_block_sizes: s.free_blocks.len(),
            free_blocks: s
                .free_blocks
                .iter()
                .map(|&(order, count)| (1usize << order, count))
                .collect(),
            handles: s.handles,
            recovery_reason: s.recovery_needed.map(|reason| reason.to_string()),
        })
    }

    /// Prints a dump of the heap under `title` to sys.stdout.
    fn dump(&self, py: Python<'_>, title: &str) -> PyResult<()> {
        let text = self.dump_to_str(py, title)?;
        py.import("sys")?
            .getattr("stdout")?
            .call_method1("write", (text,))?;
        Ok(())
    }

    /// A dump of the heap under `title`: geometry, figures, free blocks per size.
    fn dump_to_str(&self, py: Python<'_>, title: &str) -> PyResult<String> {
        let handle = self.handle()?;
        Ok(py.detach(|| handle.heap.dump_to_string(title)))
    }

    /// Writes the dump to `fobj` (anything with a `write(str)` method).
    fn dump_to_file(&self, title: &str, fobj: &Bound<'_, PyAny>) -> PyResult<()> {
        let text = self.dump_to_str(fobj.py(), title)?;
        fobj.call_method1("write", (text,))?;
        Ok(())
    }

    /// Calls `func()` with the heap's lock held, and returns what it returns: every other
    /// handle, in this process and others, waits meanwhile (up to its lock_patience). Calls
    /// through this handle inside `func` raise LockError. If this process dies inside
    /// `func`, the next handle to lock finds the heap in need of recover().
    fn with_lock(&self, func: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let handle = self.handle()?;
        let py = func.py();
        let func = func.clone().unbind();
        // The lock is waited for without the GIL, so that a holder in this process (another
        // thread inside with_lock) can go on; `func` runs with it.
        py.detach(|| {
            handle
                .heap
                .with_lock(|_guard| Python::attach(|py| func.call0(py)))
        })
        .map_err(heap_err)?
    }

    /// The number of smallest blocks (segments) the heap is made of.
    #[getter]
    fn num_segments(&self) -> usize {
        1usize << (self.geometry.max_order() - self.geometry.min_order())
    }

    /// The size of the smallest block in bytes.
    #[getter]
    fn segment_size(&self) -> usize {
        1usize << self.geometry.min_order()
    }

    /// The number of free lists: one per block size.
    #[getter]
    fn num_freelists(&self) -> u32 {
        self.geometry.max_order() - self.geometry.min_order() + 1
    }

    /// Whether the heap waits for recover() (damage found, or a lock holder died). Reading
    /// it takes the lock, so a holder that died is found here.
    #[getter]
    fn recovery_needed(&self, py: Python<'_>) -> PyResult<bool> {
        let handle = self.handle()?;
        Ok(py.detach(|| handle.heap.stats().recovery_needed.is_some()))
    }

    /// Why the heap waits for recover(), or None.
    #[getter]
    fn recovery_reason(&self, py: Python<'_>) -> PyResult<Option<String>> {
        let handle = self.handle()?;
        let stats = py.detach(|| handle.heap.stats());
        Ok(stats.recovery_needed.map(|reason| reason.to_string()))
    }

    /// Whether this handle was made by `init` (rather than `attach`).
    #[getter]
    fn init_handle(&self) -> bool {
        self.init_handle
    }

    /// The address of the heap's process-shared lock in this process (for debuggers; lock
    /// it with with_lock).
    #[getter]
    fn exclusive_access(&self) -> PyResult<usize> {
        Ok(self.handle()?.heap.lock_ptr().as_ptr().addr())
    }

    /// The heap's size as a power of two.
    #[getter]
    fn max_sz_pwr(&self) -> u32 {
        self.geometry.max_order()
    }

    /// The smallest block's size as a power of two.
    #[getter]
    fn min_sz_pwr(&self) -> u32 {
        self.geometry.min_order()
    }

    /// The alignment the heap was made with.
    #[getter]
    fn alignment(&self) -> usize {
        self.geometry.alignment()
    }

    /// Whether this handle is attached (not detached or destroyed).
    #[getter]
    fn attached(&self) -> bool {
        lock(&self.state).handle.is_some()
    }

    /// The buffer object the heap lives in (None once detached).
    #[getter]
    fn memory_object<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        let handle = lock(&self.state).handle.clone()?;
        handle.pin.object(py).cloned()
    }

    /// Seconds an operation of this handle waits for the lock while a live thread (of any
    /// process) holds it, before raising LockError (0.5 unless set).
    #[getter]
    fn get_lock_patience(&self) -> PyResult<f64> {
        Ok(self.handle()?.heap.lock_patience().as_secs_f64())
    }

    #[setter]
    fn set_lock_patience(&self, seconds: f64) -> PyResult<()> {
        let patience = Duration::try_from_secs_f64(seconds).map_err(|_| {
            PyValueError::new_err(format!(
                "lock_patience must be a finite number of seconds >= 0, not {seconds}"
            ))
        })?;
        self.handle()?.heap.set_lock_patience(patience);
        Ok(())
    }

    fn __repr__(&self) -> String {
        let g = self.geometry;
        let how = if self.init_handle { "init" } else { "attach" };
        let attached = if lock(&self.state).handle.is_some() {
            "attached"
        } else {
            "detached"
        };
        format!(
            "<Heap 2**{} bytes, blocks from 2**{}, alignment {}, by {how}, {attached}>",
            g.max_order(),
            g.min_order(),
            g.alignment()
        )
    }
}

// ---- Memory --------------------------------------------------------------------------------

/// A block's address in this process. Only dereferenced after checking, under the handle's
/// state lock, that the handle which pins the memory is attached, with the block pinned.
struct BlockPtr(NonNull<u8>);

// SAFETY: an address; see the type's note for when it is dereferenced (always with the GIL
// held).
unsafe impl Send for BlockPtr {}
// SAFETY: as above.
unsafe impl Sync for BlockPtr {}

/// A block of a Heap: `len(m)` bytes, readable and writable by index and slice
/// (`m[0:5] = b"hello"`, `m[3]`), and through the buffer protocol (`memoryview(m)`,
/// `bytes(m)`). Using it after its block was freed (through any handle, in any process),
/// or after its Heap handle was detached, raises InvalidMemoryError.
#[pyclass(frozen, module = "stratalloc_py")]
pub(crate) struct Memory {
    heap: Py<Heap>,
    /// The id of the heap the block is in (see `BlobHeap::id`).
    heap_id: u64,
    offset: u64,
    /// Which allocation of the block this object is.
    generation: u64,
    len: usize,
    block_size: usize,
    ptr: BlockPtr,
    /// Freed through this object (what `freed` says once its handle is detached, when the
    /// block's stamp can no longer be read).
    freed_here: AtomicBool,
}

impl Memory {
    /// Whether the object was freed through itself (a quick check before a free; the heap
    /// checks the generation).
    fn usable(&self) -> PyResult<()> {
        if self.freed_here.load(Ordering::Relaxed) {
            return Err(self.freed_error());
        }
        Ok(())
    }

    fn freed_error(&self) -> PyErr {
        InvalidMemoryError::new_err(format!(
            "the memory object at offset {:#x} was freed (through this or another handle, in \
             this process or another); it cannot be used again",
            self.offset
        ))
    }

    fn detached_error(&self) -> PyErr {
        InvalidMemoryError::new_err(format!(
            "the memory object at offset {:#x} outlived its Heap handle, which was detached \
             or destroyed; attach a handle and use block(offset)",
            self.offset
        ))
    }

    /// Pins the block through `handle` (the object's allocation of it), mapping a freed
    /// generation to InvalidMemoryError and a full count of pins to BusyError. The memory
    /// must still hold the object's heap: one made anew there since (by `Heap.init` in
    /// another process) has another id, and its generations say nothing of this object.
    fn pin(&self, handle: &Handle) -> PyResult<()> {
        if handle.heap.id() != self.heap_id {
            return Err(self.freed_error());
        }
        handle
            .heap
            .pin(self.offset, self.generation)
            .map_err(|error| match error {
                BlobError::StaleGeneration { .. } => self.freed_error(),
                other => heap_err(other),
            })
    }

    /// Runs `f` with the block's address, under the handle's state lock, after checking
    /// that the handle is attached (so the memory is mapped) and pinning the block for the
    /// call (so it is this allocation, and stays it). `f` must not call Python code.
    fn with_block<R>(&self, f: impl FnOnce(*mut u8) -> R) -> PyResult<R> {
        let heap = self.heap.get();
        let state = lock(&heap.state);
        let handle = state.handle.as_ref().ok_or_else(|| self.detached_error())?;
        self.pin(handle)?;
        let result = f(self.ptr.0.as_ptr());
        handle.heap.unpin(self.offset, self.generation);
        Ok(result)
    }

    /// An index into the object, Python style (negative from the end), checked: an int
    /// too large for the platform is out of range too (IndexError, as for a bytearray).
    fn index(&self, key: &Bound<'_, PyAny>) -> PyResult<usize> {
        let out_of_range = || {
            PyIndexError::new_err(format!(
                "index {key} is out of range for a memory object of {} bytes",
                self.len
            ))
        };
        let index = match key.extract::<isize>() {
            Ok(index) => index,
            Err(error) if error.is_instance_of::<PyOverflowError>(key.py()) => {
                return Err(out_of_range());
            }
            Err(error) => return Err(error),
        };
        let len = self.len as isize;
        let at = if index < 0 { index + len } else { index };
        if (0..len).contains(&at) {
            Ok(at as usize)
        } else {
            Err(out_of_range())
        }
    }
}

#[pymethods]
impl Memory {
    /// The block's offset in the heap: the same in every process.
    #[getter]
    fn offset(&self) -> u64 {
        self.offset
    }

    /// Which allocation of the block this object is: the same in every process while the
    /// block is live; the block's generation moves on when it is freed.
    #[getter]
    fn generation(&self) -> u64 {
        self.generation
    }

    /// The object's length in bytes (what malloc was asked for).
    #[getter]
    fn size(&self) -> usize {
        self.len
    }

    /// The block's size in bytes (a power of two, at least the heap's segment size).
    #[getter]
    fn block_size(&self) -> usize {
        self.block_size
    }

    /// Whether the block was freed (through any handle, in any process; once this
    /// object's handle is detached, only a free through this object is known).
    #[getter]
    fn freed(&self) -> bool {
        if self.freed_here.load(Ordering::Relaxed) {
            return true;
        }
        let state = lock(&self.heap.get().state);
        state.handle.as_ref().is_some_and(|handle| {
            handle.heap.id() != self.heap_id
                || handle.heap.generation(self.offset) != Some(self.generation)
        })
    }

    /// The Heap handle this object came from.
    #[getter]
    fn heap(&self, py: Python<'_>) -> Py<Heap> {
        self.heap.clone_ref(py)
    }

    fn __len__(&self) -> usize {
        self.len
    }

    /// The bytes, copied.
    fn tobytes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        // SAFETY: `with_block` checked that the block is mapped and pinned it; `len` is at
        // most the block's size.
        let copy = self.with_block(|ptr| unsafe { copy_out(ptr, self.len) })?;
        Ok(PyBytes::new(py, &copy))
    }

    fn __getitem__<'py>(&self, key: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let py = key.py();
        if let Ok(slice) = key.cast::<PySlice>() {
            let s = slice.indices(self.len as isize)?;
            let bytes = self.with_block(|ptr| {
                if s.step == 1 {
                    // SAFETY: `start..start + slicelength` lies in `0..len`, inside the
                    // block, which `with_block` checked is mapped and pinned.
                    return unsafe { copy_out(ptr.add(s.start as usize), s.slicelength) };
                }
                (0..s.slicelength)
                    .map(|i| {
                        let at = (s.start + i as isize * s.step) as usize;
                        // SAFETY: `indices` keeps every position in `0..len`, inside the
                        // block, which `with_block` checked is mapped and pinned.
                        unsafe { ptr.add(at).read() }
                    })
                    .collect::<Vec<u8>>()
            })?;
            return Ok(PyBytes::new(py, &bytes).into_any());
        }
        let at = self.index(key)?;
        // SAFETY: `at < len`, inside the block, which `with_block` checked is mapped and
        // pinned.
        let byte = self.with_block(|ptr| unsafe { ptr.add(at).read() })?;
        Ok(byte.into_pyobject(py)?.into_any())
    }

    fn __setitem__(&self, key: &Bound<'_, PyAny>, value: &Bound<'_, PyAny>) -> PyResult<()> {
        if let Ok(slice) = key.cast::<PySlice>() {
            let s = slice.indices(self.len as isize)?;
            // The source's buffer is taken before the state lock: it may be a memory object
            // of this very heap, whose export takes the lock too.
            let source = Pinned::readable(value)?;
            if source.len() != s.slicelength {
                return Err(PyValueError::new_err(format!(
                    "a slice of {} bytes cannot take {} bytes: a memory object keeps its size",
                    s.slicelength,
                    source.len()
                )));
            }
            let from = source.base().as_ptr();
            return self.with_block(|ptr| {
                if s.step == 1 {
                    // SAFETY: `start..start + slicelength` lies in the block (mapped and
                    // pinned); the source holds `slicelength` bytes, pinned by its export,
                    // and may overlap the block (a view of it), hence `copy`.
                    unsafe { core::ptr::copy(from, ptr.add(s.start as usize), s.slicelength) };
                } else {
                    let bytes: Vec<u8> = (0..s.slicelength)
                        // SAFETY: `i < slicelength`, the source's length.
                        .map(|i| unsafe { from.add(i).read() })
                        .collect();
                    for (i, byte) in bytes.into_iter().enumerate() {
                        let at = (s.start + i as isize * s.step) as usize;
                        // SAFETY: `indices` keeps every position in `0..len`, in the block.
                        unsafe { ptr.add(at).write(byte) };
                    }
                }
            });
        }
        let at = self.index(key)?;
        // As a bytearray: an int out of range is a ValueError, anything else a TypeError.
        let out_of_range = || {
            PyValueError::new_err(format!(
                "a byte of a memory object takes an int in 0..=255, not {value}"
            ))
        };
        let byte: u8 = match value.extract::<i128>() {
            Ok(int) => u8::try_from(int).map_err(|_| out_of_range())?,
            Err(error) if error.is_instance_of::<PyOverflowError>(value.py()) => {
                return Err(out_of_range());
            }
            Err(_) => {
                return Err(PyTypeError::new_err(format!(
                    "a byte of a memory object takes an int in 0..=255, not {}",
                    value.get_type().name()?
                )));
            }
        };
        // SAFETY: `at < len`, inside the block, which `with_block` checked is mapped and
        // pinned.
        self.with_block(|ptr| unsafe { ptr.add(at).write(byte) })
    }

    /// The buffer protocol: a writable, one-dimensional buffer of `len` bytes over the
    /// block. While it is exported, the block is pinned (no handle in any process frees
    /// it) and its handle cannot be detached.
    ///
    /// # Safety
    ///
    /// `view` is the `Py_buffer` Python passes to `bf_getbuffer`.
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        let mem = slf.get();
        let heap = mem.heap.get();
        let mut state = lock(&heap.state);
        let handle = state.handle.clone().ok_or_else(|| mem.detached_error())?;
        mem.pin(&handle)?;
        // SAFETY: `view` is Python's to fill; the pointer and length describe the block,
        // mapped while the handle is attached (which the export counted below keeps) and
        // pinned above until `__releasebuffer__`; `PyBuffer_FillInfo` takes its own
        // reference to `slf`.
        let filled = unsafe {
            ffi::PyBuffer_FillInfo(
                view,
                slf.as_ptr(),
                mem.ptr.0.as_ptr().cast(),
                mem.len as ffi::Py_ssize_t,
                0,
                flags,
            )
        };
        if filled != 0 {
            handle.heap.unpin(mem.offset, mem.generation);
            return Err(PyErr::fetch(slf.py()));
        }
        state.exports += 1;
        Ok(())
    }

    /// Ends an export made by `__getbuffer__`: its pin and its count in the handle.
    ///
    /// # Safety
    ///
    /// `_view` is a buffer `__getbuffer__` filled.
    unsafe fn __releasebuffer__(&self, _view: *mut ffi::Py_buffer) {
        let mut state = lock(&self.heap.get().state);
        state.exports = state.exports.saturating_sub(1);
        // Attached: an export keeps its handle from detaching.
        if let Some(handle) = &state.handle {
            handle.heap.unpin(self.offset, self.generation);
        }
    }

    fn __repr__(&self) -> String {
        let state = if self.freed() { ", freed" } else { "" };
        format!(
            "<Memory {} bytes at offset {:#x} (block of {}){state}>",
            self.len, self.offset, self.block_size
        )
    }
}

// ---- MemStat -------------------------------------------------------------------------------

/// A heap's statistics at one moment (the seed's `dragonHeapStats_t`).
#[pyclass(frozen, module = "stratalloc_py")]
pub(crate) struct MemStat {
    /// Smallest blocks (segments) in the heap.
    #[pyo3(get)]
    num_segments: usize,
    /// The smallest block's size in bytes.
    #[pyo3(get)]
    segment_size: usize,
    /// The heap's size in bytes.
    #[pyo3(get)]
    total_size: usize,
    /// Bytes in free blocks.
    #[pyo3(get)]
    total_free_space: usize,
    /// Bytes in live blocks.
    #[pyo3(get)]
    allocated_bytes: usize,
    /// Live blocks.
    #[pyo3(get)]
    live_blocks: u64,
    /// allocated_bytes / total_size, in percent.
    #[pyo3(get)]
    utilization_pct: f64,
    /// Block sizes the heap has (free lists).
    #[pyo3(get)]
    num_block_sizes: usize,
    free_blocks: Vec<(usize, u64)>,
    /// Handles attached (those of processes that died included).
    #[pyo3(get)]
    handles: u32,
    /// Why the heap waits for recover(), or None.
    #[pyo3(get)]
    recovery_reason: Option<String>,
}

#[pymethods]
impl MemStat {
    /// Free blocks per block size: {size in bytes: count}, smallest first.
    #[getter]
    fn free_blocks<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let dict = PyDict::new(py);
        for &(size, count) in &self.free_blocks {
            dict.set_item(size, count)?;
        }
        Ok(dict)
    }

    /// Whether the heap waits for recover().
    #[getter]
    fn recovery_needed(&self) -> bool {
        self.recovery_reason.is_some()
    }

    fn __repr__(&self) -> String {
        format!(
            "<MemStat {} of {} bytes allocated in {} block(s), {:.2}%>",
            self.allocated_bytes, self.total_size, self.live_blocks, self.utilization_pct
        )
    }
}

/// Copies `len` bytes of shared memory out, without a reference to them: another process
/// (or a `memoryview`) may write them meanwhile, which a `&[u8]` would forbid.
///
/// # Safety
///
/// `from..from + len` is mapped and readable.
unsafe fn copy_out(from: *const u8, len: usize) -> Vec<u8> {
    let mut copy = Vec::with_capacity(len);
    // SAFETY: the caller's duty for the source; the destination is `len` bytes of fresh
    // capacity, disjoint from it, and initialised by the copy before `set_len`.
    unsafe {
        core::ptr::copy_nonoverlapping(from, copy.as_mut_ptr(), len);
        copy.set_len(len);
    }
    copy
}
