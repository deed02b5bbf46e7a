//! `Pinned`: a writable Python buffer held exported, so that its memory stays where it is.
//!
//! # The rule every handle relies on
//!
//! While a buffer export is held, its exporter may neither move nor free the memory:
//! `bytearray` refuses to resize (`BufferError`), `mmap.mmap` refuses to close, and a
//! `memoryview` (such as `SharedMemory().buf`) refuses to be released, which also keeps
//! `SharedMemory.close()` from unmapping it. So a pointer into the buffer stays valid for as
//! long as the `Pinned` lives, and every handle of this module keeps the `Pinned` for the
//! memory it points into, dropping it only after the last use of those pointers.
//!
//! What an export cannot stop is Python code writing into the buffer directly (`buf[0] = 1`):
//! the heap's header and bitmaps lie in it. That is the seed's contract too; the README says
//! so, and the heap checks what it can (free blocks' links, the header's magic and geometry).

use core::ptr::NonNull;

use pyo3::buffer::PyUntypedBuffer;
use pyo3::prelude::*;

/// A writable, C-contiguous buffer, exported for as long as this lives.
pub(crate) struct Pinned {
    buffer: PyUntypedBuffer,
    base: NonNull<u8>,
    len: usize,
}

impl Pinned {
    /// Exports `obj`'s buffer, refusing one that is read-only or not contiguous. `error`
    /// builds the exception (its message is given); `what` names the argument in it.
    pub(crate) fn writable(
        obj: &Bound<'_, PyAny>,
        what: &str,
        error: fn(String) -> PyErr,
    ) -> PyResult<Self> {
        let buffer = PyUntypedBuffer::get(obj)?;
        let type_name = obj
            .get_type()
            .name()
            .map_or_else(|_| "?".to_owned(), |name| name.to_string());
        if buffer.readonly() {
            return Err(error(format!(
                "{what} is a read-only {type_name} buffer; give writable memory (a bytearray, \
                 an mmap.mmap, or SharedMemory().buf)"
            )));
        }
        if !buffer.is_c_contiguous() {
            return Err(error(format!(
                "{what} is a {type_name} buffer that is not contiguous; give contiguous memory"
            )));
        }
        let len = buffer.len_bytes();
        let base = NonNull::new(buffer.buf_ptr().cast::<u8>()).unwrap_or(NonNull::dangling());
        Ok(Pinned { buffer, base, len })
    }

    /// Exports `obj`'s buffer for reading (the source of a copy), refusing one that is not
    /// contiguous.
    pub(crate) fn readable(obj: &Bound<'_, PyAny>) -> PyResult<Self> {
        let buffer = PyUntypedBuffer::get(obj)?;
        if !buffer.is_c_contiguous() {
            return Err(pyo3::exceptions::PyValueError::new_err(
                "the bytes to copy are not contiguous; give bytes, a bytearray or a contiguous memoryview",
            ));
        }
        let len = buffer.len_bytes();
        let base = NonNull::new(buffer.buf_ptr().cast::<u8>()).unwrap_or(NonNull::dangling());
        Ok(Pinned { buffer, base, len })
    }

    /// The buffer's first byte (dangling, and `len` 0, for an empty buffer).
    pub(crate) fn base(&self) -> NonNull<u8> {
        self.base
    }

    /// The buffer's length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The object whose buffer this is.
    pub(crate) fn object<'py>(&self, py: Python<'py>) -> Option<&Bound<'py, PyAny>> {
        self.buffer.obj(py)
    }
}

// `PyUntypedBuffer` is `Send` and `Sync` (the export may be released from any thread that
// holds the GIL, which its `Drop` takes); the cached base pointer is only an address
// into that buffer, dereferenced by the handles that own the `Pinned`, under the GIL.
// SAFETY: as above: no thread-affine state, and every access happens with the GIL held.
unsafe impl Send for Pinned {}
// SAFETY: as above.
unsafe impl Sync for Pinned {}
