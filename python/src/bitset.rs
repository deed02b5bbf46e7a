//! `BitSet`: the seed's bit set over [`Bitmap`], in any writable buffer. The set's header
//! and bits live in the buffer, so another handle (or process, over shared memory) can
//! attach to it; the handle keeps the buffer pinned (see `pin.rs`).
//!
//! A [`Bitmap`] is made for each call (an O(1) header check) and dropped before the call
//! returns: in this process, handles over the same memory never hold `&mut` borrows of it
//! at the same time, since each call runs start to end with the GIL held and calls no
//! Python code meanwhile. Like the seed's, the set has no lock: processes that share one
//! must coordinate themselves; one that writes the words while this process is in a call
//! races with it (the bits it reads or writes may be lost or torn, as in the seed), but
//! cannot make the call touch memory outside the pinned buffer: the bit count is read once
//! per call, checked to fit the buffer, and every index is checked against it.

use std::sync::Mutex;

use core::ptr::NonNull;

use pyo3::exceptions::PyOverflowError;
use pyo3::prelude::*;
use stratalloc::{Bitmap, BitmapError};

use crate::pin::Pinned;
use crate::{BitIndexError, BitSetError, bitset_err, lock};

/// A set of the integers `0..num_bits`, one bit each, kept in a writable buffer
/// (`bytearray`, `memoryview`, `mmap.mmap`, `SharedMemory().buf`) starting on an 8-byte
/// boundary. Made by `init` (end it with `destroy`) or joined by `attach` (end it with
/// `detach`); garbage collection lets go of the buffer too.
#[pyclass(frozen, module = "stratalloc_py")]
pub(crate) struct BitSet {
    /// The pinned buffer; `None` once detached or destroyed.
    state: Mutex<Option<Pinned>>,
    /// Made by `attach` (the seed's `_attach`).
    attached: bool,
}

impl BitSet {
    fn pin(space: &Bound<'_, PyAny>) -> PyResult<Pinned> {
        let pin = Pinned::writable(space, "space", BitSetError::new_err)?;
        let address = pin.base().as_ptr().addr();
        if pin.len() > 0 && !address.is_multiple_of(8) {
            return Err(BitSetError::new_err(format!(
                "space starts at {address:#x}, not on an 8-byte boundary; a BitSet's words \
                 need one (a bytearray, or a memoryview sliced at a multiple of 8, has it)"
            )));
        }
        Ok(pin)
    }

    /// Runs `f` on the set, under this handle's state lock (see the module's notes).
    fn with_set<R>(
        &self,
        f: impl FnOnce(&mut Bitmap<'_>) -> Result<R, BitmapError>,
    ) -> PyResult<R> {
        let state = lock(&self.state);
        let pin = state
            .as_ref()
            .ok_or_else(|| BitSetError::new_err("this BitSet handle was detached or destroyed"))?;
        // SAFETY: the buffer is pinned while `state` holds it (and `state` is locked), it
        // starts on an 8-byte boundary (checked when pinned) and holds `len / 8` whole
        // words; the `Bitmap` lives only for this call, during which no other handle of
        // this process touches the memory (another process's writes race with it: see the
        // module's notes).
        let mut set = unsafe { Bitmap::attach_raw(pin.base().cast::<u64>(), pin.len() / 8) }
            .map_err(bitset_err)?;
        f(&mut set).map_err(bitset_err)
    }

    /// A Python int as a bit index, refusing negative and huge ones as out of range (a
    /// BitIndexError, as for any index past the end); anything but an int is a TypeError.
    fn index(&self, idx: &Bound<'_, PyAny>) -> PyResult<usize> {
        let out_of_range = || {
            let bits = self
                .with_set(|set| Ok(set.num_bits()))
                .map_or_else(|_| "?".to_owned(), |n| n.to_string());
            BitIndexError::new_err(format!(
                "bit index {idx} is out of range for a bitmap of {bits} bits"
            ))
        };
        match idx.extract::<usize>() {
            Ok(index) => Ok(index),
            Err(error)
                if error.is_instance_of::<PyOverflowError>(idx.py())
                    || idx.extract::<i128>().is_ok() =>
            {
                Err(out_of_range())
            }
            Err(error) => Err(error),
        }
    }
}

#[pymethods]
impl BitSet {
    /// Makes an empty set of `num_bits` bits in `space` (at least `BitSet.size(num_bits)`
    /// bytes; what it held there is overwritten).
    #[classmethod]
    fn init(
        _cls: &Bound<'_, pyo3::types::PyType>,
        num_bits: usize,
        space: &Bound<'_, PyAny>,
    ) -> PyResult<Self> {
        let pin = Self::pin(space)?;
        let words = pin.len() / 8;
        let base = pin.base().cast::<u64>();
        // SAFETY: the buffer is pinned for as long as the handle holds `pin`, writable,
        // 8-byte aligned (checked in `pin`) and `words` words long; the `Bitmap` is dropped
        // at once.
        unsafe { Bitmap::init_raw(base, words, num_bits) }.map_err(bitset_err)?;
        Ok(BitSet {
            state: Mutex::new(Some(pin)),
            attached: false,
        })
    }

    /// A new handle on the set `space` already holds.
    #[classmethod]
    fn attach(_cls: &Bound<'_, pyo3::types::PyType>, space: &Bound<'_, PyAny>) -> PyResult<Self> {
        let set = BitSet {
            state: Mutex::new(Some(Self::pin(space)?)),
            attached: true,
        };
        set.with_set(|_| Ok(()))?;
        Ok(set)
    }

    /// Bytes a set of `num_bits` bits needs: its header and its bits.
    #[classmethod]
    fn size(_cls: &Bound<'_, pyo3::types::PyType>, num_bits: usize) -> usize {
        Bitmap::bytes_for(num_bits)
    }

    /// Lets go of the memory, which keeps the set (for handles made by attach).
    fn detach(&self) -> PyResult<()> {
        if !self.attached {
            return Err(BitSetError::new_err(
                "this BitSet was made by init: destroy() it (detach() is for handles made by attach)",
            ));
        }
        lock(&self.state)
            .take()
            .map(drop)
            .ok_or_else(|| BitSetError::new_err("this BitSet handle was detached already"))
    }

    /// Ends the set: the memory no longer holds one (attaching fails), and is the
    /// caller's again (for handles made by init).
    fn destroy(&self) -> PyResult<()> {
        if self.attached {
            return Err(BitSetError::new_err(
                "this BitSet was made by attach: detach() it (destroy() is for handles made by init)",
            ));
        }
        self.with_set(|_| Ok(()))?;
        let pin = lock(&self.state)
            .take()
            .ok_or_else(|| BitSetError::new_err("this BitSet handle was destroyed already"))?;
        let magic: NonNull<u64> = pin.base().cast();
        // SAFETY: the buffer held a set (checked just above), so its first word is an
        // 8-byte-aligned word of the pinned buffer; clearing it is what makes `attach` fail.
        unsafe { magic.as_ptr().write(0) };
        Ok(())
    }

    /// The number of bits in the set.
    fn get_num_bits(&self) -> PyResult<usize> {
        self.with_set(|set| Ok(set.num_bits()))
    }

    /// The bit at `idx`: 0 or 1. Raises BitIndexError out of range.
    fn get_bit(&self, idx: &Bound<'_, PyAny>) -> PyResult<u8> {
        let idx = self.index(idx)?;
        self.with_set(|set| set.get(idx).map(u8::from))
    }

    /// Sets the bit at `idx` to 1.
    fn set_bit(&self, idx: &Bound<'_, PyAny>) -> PyResult<()> {
        let idx = self.index(idx)?;
        self.with_set(|set| set.set(idx).map(drop))
    }

    /// Sets the bit at `idx` to 0.
    fn reset_bit(&self, idx: &Bound<'_, PyAny>) -> PyResult<()> {
        let idx = self.index(idx)?;
        self.with_set(|set| set.reset(idx).map(drop))
    }

    /// The number of 0 bits directly right of (after) `idx`, up to the next 1 bit or the
    /// end of the set; the bit at `idx` is not counted.
    fn right_zeroes(&self, idx: &Bound<'_, PyAny>) -> PyResult<usize> {
        let idx = self.index(idx)?;
        self.with_set(|set| set.zeroes_to_right(idx))
    }

    /// The number of bits set to 1.
    fn get_count(&self) -> PyResult<usize> {
        self.with_set(|set| Ok(set.len()))
    }

    /// Prints a dump of the set to sys.stdout: `title`, the figures, then the bits (64 a
    /// line, bit 0 on the left), every line starting with `indent`.
    #[pyo3(signature = (title, indent = ""))]
    fn dump(&self, py: Python<'_>, title: &str, indent: &str) -> PyResult<()> {
        let text = self.dump_to_str(title, indent)?;
        py.import("sys")?
            .getattr("stdout")?
            .call_method1("write", (text,))?;
        Ok(())
    }

    /// The dump `dump` prints, as a string.
    #[pyo3(signature = (title, indent = ""))]
    fn dump_to_str(&self, title: &str, indent: &str) -> PyResult<String> {
        self.with_set(|set| Ok(set.dump_to_string(title, indent)))
    }

    /// Whether this handle was made by attach (rather than init).
    #[getter(_attach)]
    fn is_attach(&self) -> bool {
        self.attached
    }

    fn __repr__(&self) -> String {
        let how = if self.attached { "attach" } else { "init" };
        match self.with_set(|set| Ok((set.num_bits(), set.len()))) {
            Ok((bits, set)) => format!("<BitSet {bits} bits, {set} set, by {how}>"),
            Err(_) => format!("<BitSet by {how}, detached>"),
        }
    }
}
