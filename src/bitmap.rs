//! `Bitmap`: a bitmap that lives in caller memory (header and bits), the Dragon heap
//! manager seed's `BitSet`; the layout and its invariants are written on [`Bitmap`].
//!
//! Entry points: [`Bitmap::words_for`] to size the memory, [`Bitmap::init`] to make a set in
//! it, [`Bitmap::attach`] to use one that is already there, [`Bitmap::detach`] to get the
//! memory back.

use core::fmt;
use core::ops::Range;
use core::ptr::NonNull;

/// Words of header before the bits: a magic word, the number of bits, the number of bits set.
const HEADER_WORDS: usize = 3;
/// The first word of every bitmap in memory (`"BitSet01"` in little-endian bytes: the
/// seed's name, kept so that memory laid out by earlier versions still attaches).
const MAGIC: u64 = u64::from_le_bytes(*b"BitSet01");
const MAGIC_AT: usize = 0;
const BITS_AT: usize = 1;
const COUNT_AT: usize = 2;

// ---- errors ------------------------------------------------------------------------------

/// What went wrong with a [`Bitmap`] call. Every variant names the figures involved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BitmapError {
    /// A bit index at or past the end of the set.
    OutOfRange {
        /// The index asked for.
        index: usize,
        /// The number of bits in the set (valid indices are `0..len`).
        len: usize,
    },
    /// A range of bits that does not lie inside the set.
    RangeOutOfRange {
        /// The first index of the range.
        start: usize,
        /// One past its last index (saturated on overflow).
        end: usize,
        /// The number of bits in the set.
        len: usize,
    },
    /// The memory given is smaller than the set needs.
    MemoryTooSmall {
        /// Words the set needs ([`Bitmap::words_for`]).
        needed: usize,
        /// Words given.
        given: usize,
    },
    /// The memory does not start with a bitmap's header (its first word is not the magic).
    NotABitmap {
        /// The first word found.
        found: u64,
    },
    /// The header or the bits contradict each other.
    Corrupt {
        /// Which check failed.
        what: &'static str,
    },
}

impl fmt::Display for BitmapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            BitmapError::OutOfRange { index, len } => {
                write!(
                    f,
                    "bit index {index} is out of range for a bitmap of {len} bits"
                )
            }
            BitmapError::RangeOutOfRange { start, end, len } => write!(
                f,
                "bit range {start}..{end} is out of range for a bitmap of {len} bits"
            ),
            BitmapError::MemoryTooSmall { needed, given } => write!(
                f,
                "a bitmap needs {needed} words of memory, {given} were given"
            ),
            BitmapError::NotABitmap { found } => write!(
                f,
                "the memory holds no bitmap (first word {found:#018x}, expected {MAGIC:#018x})"
            ),
            BitmapError::Corrupt { what } => write!(f, "the bitmap is corrupt: {what}"),
        }
    }
}

impl core::error::Error for BitmapError {}

// ---- the set and its memory --------------------------------------------------------------

/// A bitmap: a set of the integers `0..num_bits`, one bit each, kept in memory the caller
/// provides. This is the Dragon seed's `BitSet` (`dragonBitSet_t`), named `Bitmap` here so
/// that it is not mistaken for the [`Bitset`](crate::layers::Bitset) layer built on it: the
/// header lives in that memory with the bits, so another handle (or, for shared memory,
/// another process) can [`attach`](Bitmap::attach) to a set that is already there.
///
/// # Layout
///
/// [`words_for(n)`](Bitmap::words_for) `u64` words: a header of three words (a magic word,
/// `n`, and the number of bits set), then `ceil(n / 64)` words of bits. Bit `i` is bit
/// `i % 64` (counting from the least significant) of bits word `i / 64`. [`dump`]
/// prints bit 0 on the left, as the seed does, so that a dump reads in index order.
///
/// # Invariants
///
/// The count in the header equals the number of bits set, and the padding bits of the last
/// word (past `n`) are 0. [`init`](Bitmap::init) establishes both, every method keeps them;
/// [`attach`](Bitmap::attach) checks the header in O(1), [`check`](Bitmap::check) checks
/// everything in O(n / 64). Scans read a word at a time and never report an index `>= n`,
/// even over memory that breaks the invariants.
///
/// # Words
///
/// - *Length* follows the seed: [`len`](Bitmap::len) is the number of members (bits set),
///   [`num_bits`](Bitmap::num_bits) the number of bits.
/// - *Zeroes to the right* of `i` ([`zeroes_to_right`](Bitmap::zeroes_to_right)) follows the
///   seed too: the number of 0 bits directly after `i` (indices `i + 1`, `i + 2`, ...) up to
///   the next set bit or the end; bit `i` itself is not counted, whatever its value. "Right"
///   is toward higher indices, as in a dump.
///
/// ```
/// use stratalloc::Bitmap;
///
/// let mut memory = [0u64; Bitmap::words_for(100)];
/// let mut set = Bitmap::init(&mut memory, 100).unwrap();
/// set.set(3).unwrap();
/// set.set(42).unwrap();
/// assert_eq!(set.len(), 2);
/// assert_eq!(set.first_set(), Some(3));
/// assert_eq!(set.zeroes_to_right(3), Ok(38)); // 4..=41 are clear
/// assert!(set.get(100).is_err());
/// let memory = set.detach();
///
/// // Another handle over the same memory sees the same set.
/// let again = Bitmap::attach(memory).unwrap();
/// assert_eq!(again.next_set(4), Some(42));
/// ```
///
/// [`dump`]: Bitmap::dump
pub struct Bitmap<'a> {
    num_bits: usize,
    /// The header and the bits: exactly `words_for(num_bits)` words.
    words: &'a mut [u64],
}

impl<'a> Bitmap<'a> {
    /// Words of memory a set of `num_bits` bits needs, header included.
    pub const fn words_for(num_bits: usize) -> usize {
        HEADER_WORDS + num_bits.div_ceil(64)
    }

    /// Bytes of memory a set of `num_bits` bits needs (`words_for(num_bits) * 8`), the size
    /// the seed's `dragon_bitset_size` returns.
    pub const fn bytes_for(num_bits: usize) -> usize {
        Self::words_for(num_bits) * 8
    }

    /// Makes an empty set of `num_bits` bits in `memory`, overwriting what was there (the
    /// header and the bits; words past [`words_for(num_bits)`](Bitmap::words_for) are not
    /// touched).
    pub fn init(memory: &'a mut [u64], num_bits: usize) -> Result<Self, BitmapError> {
        let needed = Self::words_for(num_bits);
        if memory.len() < needed {
            return Err(BitmapError::MemoryTooSmall {
                needed,
                given: memory.len(),
            });
        }
        let words = &mut memory[..needed];
        words.fill(0);
        words[MAGIC_AT] = MAGIC;
        words[BITS_AT] = num_bits as u64;
        Ok(Bitmap { num_bits, words })
    }

    /// Uses the set that `memory` already holds (made by [`init`](Bitmap::init), possibly
    /// through another handle). Checks the header in O(1): the magic word, that the memory
    /// holds as many bits as the header says, and that the count is not above that; use
    /// [`check`](Bitmap::check) to verify the bits too.
    pub fn attach(memory: &'a mut [u64]) -> Result<Self, BitmapError> {
        if memory.len() < HEADER_WORDS {
            return Err(BitmapError::MemoryTooSmall {
                needed: HEADER_WORDS,
                given: memory.len(),
            });
        }
        if memory[MAGIC_AT] != MAGIC {
            return Err(BitmapError::NotABitmap {
                found: memory[MAGIC_AT],
            });
        }
        let Ok(num_bits) = usize::try_from(memory[BITS_AT]) else {
            return Err(BitmapError::Corrupt {
                what: "the number of bits does not fit in a usize",
            });
        };
        let needed = HEADER_WORDS.saturating_add(num_bits.div_ceil(64));
        if memory.len() < needed {
            return Err(BitmapError::MemoryTooSmall {
                needed,
                given: memory.len(),
            });
        }
        if memory[COUNT_AT] > num_bits as u64 {
            return Err(BitmapError::Corrupt {
                what: "more bits counted as set than the set has",
            });
        }
        Ok(Bitmap {
            num_bits,
            words: &mut memory[..needed],
        })
    }

    /// [`init`](Bitmap::init) over `words` words at `ptr`, for memory that is not a Rust
    /// slice (a block a layer got from the layer below it).
    ///
    /// # Safety
    ///
    /// Callers must ensure that `ptr` is valid for reads and writes of `words` `u64`s for
    /// `'a`, and that nothing else reads or writes them during `'a`.
    pub unsafe fn init_raw(
        ptr: NonNull<u64>,
        words: usize,
        num_bits: usize,
    ) -> Result<Self, BitmapError> {
        // SAFETY: the caller's duties are exactly `from_raw_parts_mut`'s.
        Self::init(
            unsafe { core::slice::from_raw_parts_mut(ptr.as_ptr(), words) },
            num_bits,
        )
    }

    /// [`attach`](Bitmap::attach) over `words` words at `ptr`, for memory that is not a Rust
    /// slice.
    ///
    /// # Safety
    ///
    /// As for [`init_raw`](Bitmap::init_raw): `ptr` is valid for reads and writes of
    /// `words` `u64`s for `'a`, and nothing else reads or writes them during `'a`.
    pub unsafe fn attach_raw(ptr: NonNull<u64>, words: usize) -> Result<Self, BitmapError> {
        // SAFETY: the caller's duties are exactly `from_raw_parts_mut`'s.
        Self::attach(unsafe { core::slice::from_raw_parts_mut(ptr.as_ptr(), words) })
    }

    /// Lets go of the memory, which keeps the set: a later [`attach`](Bitmap::attach) finds
    /// it as it was. Returns the words the set occupies.
    pub fn detach(self) -> &'a mut [u64] {
        self.words
    }

    // ---- bits, ranges and the count ------------------------------------------------------

    /// The number of bits: valid indices are `0..num_bits()`.
    #[inline]
    pub const fn num_bits(&self) -> usize {
        self.num_bits
    }

    /// The number of members: bits set to 1 (the seed's "length"). O(1), kept in the header.
    #[inline]
    pub fn len(&self) -> usize {
        self.words[COUNT_AT] as usize
    }

    /// Whether no bit is set.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    #[inline]
    fn bits(&self) -> &[u64] {
        &self.words[HEADER_WORDS..]
    }

    #[inline]
    fn bits_mut(&mut self) -> &mut [u64] {
        &mut self.words[HEADER_WORDS..]
    }

    #[inline]
    fn add_count(&mut self, added: u64, removed: u64) {
        let count = &mut self.words[COUNT_AT];
        *count = count.wrapping_add(added).wrapping_sub(removed);
    }

    #[inline]
    fn in_range(&self, index: usize) -> Result<(), BitmapError> {
        if index < self.num_bits {
            Ok(())
        } else {
            Err(BitmapError::OutOfRange {
                index,
                len: self.num_bits,
            })
        }
    }

    fn range_in(&self, start: usize, count: usize) -> Result<(), BitmapError> {
        match start.checked_add(count) {
            Some(end) if end <= self.num_bits => Ok(()),
            end => Err(BitmapError::RangeOutOfRange {
                start,
                end: end.unwrap_or(usize::MAX),
                len: self.num_bits,
            }),
        }
    }

    /// Whether bit `index` is set.
    #[inline]
    pub fn get(&self, index: usize) -> Result<bool, BitmapError> {
        self.in_range(index)?;
        Ok(self.bits()[index / 64] >> (index % 64) & 1 == 1)
    }

    /// Sets bit `index` to 1; returns whether it was already set.
    #[inline]
    pub fn set(&mut self, index: usize) -> Result<bool, BitmapError> {
        self.in_range(index)?;
        let mask = 1u64 << (index % 64);
        let word = &mut self.bits_mut()[index / 64];
        let was = *word & mask != 0;
        *word |= mask;
        self.add_count(u64::from(!was), 0);
        Ok(was)
    }

    /// Resets bit `index` to 0; returns whether it was set.
    #[inline]
    pub fn reset(&mut self, index: usize) -> Result<bool, BitmapError> {
        self.in_range(index)?;
        let mask = 1u64 << (index % 64);
        let word = &mut self.bits_mut()[index / 64];
        let was = *word & mask != 0;
        *word &= !mask;
        self.add_count(0, u64::from(was));
        Ok(was)
    }

    /// Calls `each(word index, mask)` for the words that bits `start..start + count` touch.
    #[inline]
    fn for_each_word(start: usize, count: usize, mut each: impl FnMut(usize, u64)) {
        let end = start + count;
        let mut at = start;
        while at < end {
            let word = at / 64;
            let lo = at % 64;
            let hi = (end - word * 64).min(64);
            let mask = (u64::MAX >> (64 - (hi - lo))) << lo;
            each(word, mask);
            at = word * 64 + hi;
        }
    }

    /// Sets the `count` bits from `start`, a word at a time.
    pub fn set_range(&mut self, start: usize, count: usize) -> Result<(), BitmapError> {
        self.range_in(start, count)?;
        let mut added = 0;
        let bits = &mut self.words[HEADER_WORDS..];
        Self::for_each_word(start, count, |w, mask| {
            added += u64::from((mask & !bits[w]).count_ones());
            bits[w] |= mask;
        });
        self.add_count(added, 0);
        Ok(())
    }

    /// Resets the `count` bits from `start`, a word at a time.
    pub fn reset_range(&mut self, start: usize, count: usize) -> Result<(), BitmapError> {
        self.range_in(start, count)?;
        let mut removed = 0;
        let bits = &mut self.words[HEADER_WORDS..];
        Self::for_each_word(start, count, |w, mask| {
            removed += u64::from((mask & bits[w]).count_ones());
            bits[w] &= !mask;
        });
        self.add_count(0, removed);
        Ok(())
    }

    /// Resets every bit.
    pub fn clear(&mut self) {
        self.bits_mut().fill(0);
        self.words[COUNT_AT] = 0;
    }

    // ---- scans ---------------------------------------------------------------------------

    /// The first index in `range` whose bit equals `value`, scanning a word at a time.
    #[inline]
    fn find(&self, range: Range<usize>, value: bool) -> Option<usize> {
        let end = range.end.min(self.num_bits);
        let start = range.start;
        if start >= end {
            return None;
        }
        let flip = if value { 0 } else { u64::MAX };
        let bits = self.bits();
        let mut w = start / 64;
        let mut word = (bits[w] ^ flip) & (u64::MAX << (start % 64));
        loop {
            if word != 0 {
                let found = w * 64 + word.trailing_zeros() as usize;
                return (found < end).then_some(found);
            }
            w += 1;
            if w * 64 >= end {
                return None;
            }
            word = bits[w] ^ flip;
        }
    }

    /// The first set bit in `range` (clipped to the set), or `None`.
    #[inline]
    pub fn find_set(&self, range: Range<usize>) -> Option<usize> {
        self.find(range, true)
    }

    /// The first clear bit in `range` (clipped to the set), or `None`.
    #[inline]
    pub fn find_clear(&self, range: Range<usize>) -> Option<usize> {
        self.find(range, false)
    }

    /// The first set bit at or after `from`, or `None` (also when `from >= num_bits()`).
    #[inline]
    pub fn next_set(&self, from: usize) -> Option<usize> {
        self.find(from..self.num_bits, true)
    }

    /// The first clear bit at or after `from`, or `None`.
    #[inline]
    pub fn next_clear(&self, from: usize) -> Option<usize> {
        self.find(from..self.num_bits, false)
    }

    /// The lowest set bit (the seed's `first`), or `None` when the set is empty.
    #[inline]
    pub fn first_set(&self) -> Option<usize> {
        self.next_set(0)
    }

    /// The number of 0 bits directly after `index`, as the seed defines it: bits
    /// `index + 1`, `index + 2`, ... up to (not including) the next set bit, or to the end
    /// of the set. Bit `index` itself is not looked at. So `index + zeroes_to_right(index) +
    /// 1` is the next member after `index` when there is one, and the last index gives 0.
    ///
    /// Errors with [`BitmapError::OutOfRange`] when `index >= num_bits()`.
    pub fn zeroes_to_right(&self, index: usize) -> Result<usize, BitmapError> {
        self.in_range(index)?;
        let next = self.next_set(index + 1).unwrap_or(self.num_bits);
        Ok(next - index - 1)
    }

    // ---- checks and dumps ----------------------------------------------------------------

    /// Checks every invariant in O(num_bits / 64): the count in the header against the bits,
    /// and that the padding bits past the end are 0.
    pub fn check(&self) -> Result<(), BitmapError> {
        let bits = self.bits();
        let ones: u64 = bits.iter().map(|w| u64::from(w.count_ones())).sum();
        if ones != self.len() as u64 {
            return Err(BitmapError::Corrupt {
                what: "the count in the header differs from the bits set",
            });
        }
        if !self.num_bits.is_multiple_of(64)
            && let Some(last) = bits.last()
            && last >> (self.num_bits % 64) != 0
        {
            return Err(BitmapError::Corrupt {
                what: "a padding bit past the end is set",
            });
        }
        Ok(())
    }

    /// Writes a dump for people: `title`, the figures, then the bits, 64 per line with the
    /// index of the first, bit 0 on the left, `1` for a member and `.` for a clear bit.
    /// Each line starts with `indent`. Runs of identical lines after the first are shown as
    /// one `*` line, as `hexdump` does.
    pub fn dump(&self, out: &mut dyn fmt::Write, title: &str, indent: &str) -> fmt::Result {
        writeln!(out, "{indent}{title}")?;
        writeln!(
            out,
            "{indent}bits: {}, set: {}, bytes in memory: {}",
            self.num_bits,
            self.len(),
            Self::bytes_for(self.num_bits)
        )?;
        let mut previous = None;
        let mut starred = false;
        for (w, &word) in self.bits().iter().enumerate() {
            let last = (w + 1) * 64 >= self.num_bits;
            if previous == Some(word) && !last {
                if !starred {
                    writeln!(out, "{indent}*")?;
                    starred = true;
                }
                continue;
            }
            previous = Some(word);
            starred = false;
            write!(out, "{indent}{:>10}:", w * 64)?;
            for bit in 0..(self.num_bits - w * 64).min(64) {
                if bit % 8 == 0 {
                    out.write_char(' ')?;
                }
                out.write_char(if word >> bit & 1 == 1 { '1' } else { '.' })?;
            }
            writeln!(out)?;
        }
        Ok(())
    }

    /// [`dump`](Bitmap::dump) into a new `String`.
    pub fn dump_to_string(&self, title: &str, indent: &str) -> alloc::string::String {
        let mut out = alloc::string::String::new();
        // Writing to a `String` cannot fail.
        let _ = self.dump(&mut out, title, indent);
        out
    }

    /// [`dump`](Bitmap::dump) to any [`std::io::Write`] (a file, stderr).
    #[cfg(feature = "std")]
    pub fn dump_to_io(
        &self,
        out: &mut dyn std::io::Write,
        title: &str,
        indent: &str,
    ) -> std::io::Result<()> {
        out.write_all(self.dump_to_string(title, indent).as_bytes())
    }
}

// ---- word-level access (crate-internal) --------------------------------------------------

/// Word-level access to a set that [`Bitmap::init`] made, for a layer's hot paths: no
/// header check and no bounds check per access (the caller vouches for both), the count in
/// the header kept as every [`Bitmap`] method keeps it. [`Bitmap`] stays the way to make,
/// attach, check and dump the set; a `RawBits` is a bare pointer, so it may be copied and
/// kept while no [`Bitmap`] handle over the same memory is in use.
#[derive(Clone, Copy)]
pub(crate) struct RawBits {
    /// The set's first word (its header).
    at: NonNull<u64>,
}

impl RawBits {
    /// The set whose header is at `at`.
    ///
    /// # Safety
    ///
    /// Callers must ensure that `at` holds a set made by [`Bitmap::init`], valid for
    /// reads and writes of its [`words_for`](Bitmap::words_for) words for as long as the
    /// `RawBits` (or a copy) is used, and that no [`Bitmap`] handle over the same memory is
    /// used meanwhile. Every index given to a method is below the set's number of bits.
    #[inline(always)]
    pub(crate) const unsafe fn new(at: NonNull<u64>) -> Self {
        RawBits { at }
    }

    /// The count word in the header.
    #[inline(always)]
    fn count_word(self) -> *mut u64 {
        // SAFETY: `new`'s duties: the header is inside the set's memory.
        unsafe { self.at.as_ptr().add(COUNT_AT) }
    }

    /// Bits word `w` (bits `64 * w..64 * w + 64`).
    ///
    /// # Safety
    ///
    /// `w` is below `num_bits.div_ceil(64)`.
    #[inline(always)]
    pub(crate) unsafe fn word(self, w: usize) -> *mut u64 {
        // SAFETY: the caller's duty and `new`'s keep the word inside the set's memory.
        unsafe { self.at.as_ptr().add(HEADER_WORDS + w) }
    }

    /// Adds `added` and takes `removed` from the count.
    #[inline(always)]
    fn add_count(self, added: u64, removed: u64) {
        let count = self.count_word();
        // SAFETY: `new`'s duties make the header readable and writable.
        unsafe { count.write(count.read().wrapping_add(added).wrapping_sub(removed)) };
    }

    /// Whether bit `index` is set.
    ///
    /// # Safety
    ///
    /// `index` is below the set's number of bits.
    #[inline(always)]
    pub(crate) unsafe fn get(self, index: usize) -> bool {
        // SAFETY: the caller's duty keeps the word inside the set.
        unsafe { self.word(index / 64).read() >> (index % 64) & 1 == 1 }
    }

    /// Sets bit `index`, as [`Bitmap::set`] does.
    ///
    /// # Safety
    ///
    /// `index` is below the set's number of bits.
    #[inline(always)]
    pub(crate) unsafe fn set(self, index: usize) {
        // SAFETY: the caller's duty keeps the word inside the set.
        let word = unsafe { self.word(index / 64) };
        let mask = 1u64 << (index % 64);
        // SAFETY: as above.
        let old = unsafe { word.read() };
        // SAFETY: as above.
        unsafe { word.write(old | mask) };
        self.add_count(u64::from(old & mask == 0), 0);
    }

    /// Resets bit `index`, as [`Bitmap::reset`] does.
    ///
    /// # Safety
    ///
    /// `index` is below the set's number of bits.
    #[inline(always)]
    pub(crate) unsafe fn reset(self, index: usize) {
        // SAFETY: the caller's duty keeps the word inside the set.
        let word = unsafe { self.word(index / 64) };
        let mask = 1u64 << (index % 64);
        // SAFETY: as above.
        let old = unsafe { word.read() };
        // SAFETY: as above.
        unsafe { word.write(old & !mask) };
        self.add_count(0, u64::from(old & mask != 0));
    }

    /// Sets (`value`) or resets the `count` bits from `start`, all of which are `!value`, as
    /// [`Bitmap::set_range`] and [`Bitmap::reset_range`] do, keeping the count without
    /// counting the bits that change (all do).
    ///
    /// # Safety
    ///
    /// `start + count` is at most the set's number of bits, and every bit in the range is
    /// `!value`.
    #[inline(always)]
    pub(crate) unsafe fn flip_range(self, start: usize, count: usize, value: bool) {
        Bitmap::for_each_word(start, count, |w, mask| {
            // SAFETY: the caller's duty keeps every word the range touches inside the set.
            let word = unsafe { self.word(w) };
            // SAFETY: as above.
            let old = unsafe { word.read() };
            // A bit already `value` would flip the wrong way and the count would drift.
            crate::abort::debug_require!(
                old & mask == if value { 0 } else { mask },
                "Bitmap: flip_range({start}, {count}, {value}) over bits already {value}"
            );
            // SAFETY: as above.
            unsafe { word.write(old ^ mask) };
        });
        if value {
            self.add_count(count as u64, 0);
        } else {
            self.add_count(0, count as u64);
        }
    }
}

impl fmt::Debug for Bitmap<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bitmap")
            .field("num_bits", &self.num_bits)
            .field("len", &self.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use alloc::vec::Vec;

    fn with_set(num_bits: usize, f: impl FnOnce(&mut Bitmap<'_>)) {
        let mut memory = vec![0xAAAA_AAAA_AAAA_AAAAu64; Bitmap::words_for(num_bits) + 1];
        let mut set = Bitmap::init(&mut memory, num_bits).unwrap();
        f(&mut set);
        set.check().unwrap();
        assert_eq!(
            *memory.last().unwrap(),
            0xAAAA_AAAA_AAAA_AAAA,
            "init or an operation wrote past the set"
        );
    }

    /// A plain `Vec<bool>` model of the set.
    fn model_zeroes_to_right(model: &[bool], index: usize) -> usize {
        model[index + 1..].iter().take_while(|&&b| !b).count()
    }

    #[test]
    fn sizes() {
        assert_eq!(Bitmap::words_for(0), 3);
        assert_eq!(Bitmap::words_for(1), 4);
        assert_eq!(Bitmap::words_for(64), 4);
        assert_eq!(Bitmap::words_for(65), 5);
        assert_eq!(Bitmap::bytes_for(128), 40);
    }

    #[test]
    fn empty_set() {
        with_set(0, |set| {
            assert_eq!((set.num_bits(), set.len()), (0, 0));
            assert!(set.is_empty());
            assert_eq!(
                set.get(0),
                Err(BitmapError::OutOfRange { index: 0, len: 0 })
            );
            assert!(set.set(0).is_err() && set.reset(0).is_err());
            assert!(set.zeroes_to_right(0).is_err());
            assert_eq!(set.first_set(), None);
            assert_eq!(set.next_clear(0), None);
            assert!(set.set_range(0, 0).is_ok());
            assert!(set.set_range(0, 1).is_err());
            assert!(set.dump_to_string("empty", "").contains("bits: 0"));
        });
    }

    #[test]
    fn out_of_range_errors_name_index_and_length() {
        with_set(70, |set| {
            assert_eq!(
                set.set(70),
                Err(BitmapError::OutOfRange { index: 70, len: 70 })
            );
            let message = alloc::format!("{}", set.get(71).unwrap_err());
            assert!(
                message.contains("71") && message.contains("70"),
                "{message}"
            );
            assert_eq!(
                set.reset_range(60, 11),
                Err(BitmapError::RangeOutOfRange {
                    start: 60,
                    end: 71,
                    len: 70
                })
            );
            assert!(matches!(
                set.set_range(1, usize::MAX),
                Err(BitmapError::RangeOutOfRange {
                    end: usize::MAX,
                    ..
                })
            ));
            assert!(set.get(69).is_ok());
            assert_eq!(set.zeroes_to_right(69), Ok(0));
        });
    }

    #[test]
    fn set_get_reset_and_count() {
        with_set(130, |set| {
            assert_eq!(set.set(0), Ok(false));
            assert_eq!(set.set(0), Ok(true));
            assert_eq!(set.set(129), Ok(false));
            assert_eq!(set.set(64), Ok(false));
            assert_eq!(set.len(), 3);
            assert_eq!((set.get(64), set.get(63)), (Ok(true), Ok(false)));
            assert_eq!(set.reset(64), Ok(true));
            assert_eq!(set.reset(64), Ok(false));
            assert_eq!(set.len(), 2);
            assert_eq!(set.first_set(), Some(0));
            assert_eq!(set.next_set(1), Some(129));
            assert_eq!(set.next_set(130), None);
            assert_eq!(set.next_clear(0), Some(1));
            assert_eq!(set.next_clear(129), None);
            set.clear();
            assert!(set.is_empty() && set.first_set().is_none());
        });
    }

    #[test]
    fn zeroes_to_right_follows_the_seed() {
        with_set(200, |set| {
            // Empty: everything after the index.
            assert_eq!(set.zeroes_to_right(0), Ok(199));
            assert_eq!(set.zeroes_to_right(199), Ok(0));
            set.set(10).unwrap();
            set.set(150).unwrap();
            // The bit at the index is not counted, set or not.
            assert_eq!(set.zeroes_to_right(10), Ok(139));
            assert_eq!(set.zeroes_to_right(9), Ok(0));
            assert_eq!(set.zeroes_to_right(5), Ok(4));
            assert_eq!(set.zeroes_to_right(150), Ok(49));
            // next member after i is i + zeroes_to_right(i) + 1
            assert_eq!(10 + set.zeroes_to_right(10).unwrap() + 1, 150);
        });
    }

    #[test]
    fn ranges_across_words_match_a_model() {
        let n = 333; // not a multiple of 64
        let count = if cfg!(miri) { 16 } else { 400 };
        with_set(n, |set| {
            let mut model = vec![false; n];
            let mut seed = 0x2545_F491_4F6C_DD1Du64;
            let mut next = |m: usize| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                (seed % m as u64) as usize
            };
            for step in 0..count {
                let start = next(n);
                let len = next(n - start + 1);
                if step % 2 == 0 {
                    set.set_range(start, len).unwrap();
                } else {
                    set.reset_range(start, len).unwrap();
                }
                model[start..start + len].fill(step % 2 == 0);
                assert_eq!(set.len(), model.iter().filter(|&&b| b).count());
                let probe = next(n);
                assert_eq!(set.get(probe), Ok(model[probe]));
                assert_eq!(
                    set.zeroes_to_right(probe),
                    Ok(model_zeroes_to_right(&model, probe))
                );
                let expect_set = (probe..n).find(|&i| model[i]);
                let expect_clear = (probe..n).find(|&i| !model[i]);
                assert_eq!(set.next_set(probe), expect_set);
                assert_eq!(set.next_clear(probe), expect_clear);
                let end = probe + next(n - probe + 1);
                assert_eq!(
                    set.find_clear(probe..end),
                    (probe..end).find(|&i| !model[i])
                );
                set.check().unwrap();
            }
        });
    }

    #[test]
    fn attach_sees_the_same_set_and_rejects_garbage() {
        let mut memory = vec![0u64; Bitmap::words_for(100)];
        let mut set = Bitmap::init(&mut memory, 100).unwrap();
        set.set(99).unwrap();
        let words = set.detach();
        assert_eq!(words.len(), Bitmap::words_for(100));
        let set = Bitmap::attach(words).unwrap();
        assert_eq!(
            (set.num_bits(), set.len(), set.first_set()),
            (100, 1, Some(99))
        );

        // Too small to init, and too small for the header it holds.
        let mut small = [0u64; 4];
        assert_eq!(
            Bitmap::init(&mut small, 65).unwrap_err(),
            BitmapError::MemoryTooSmall {
                needed: 5,
                given: 4
            }
        );
        assert!(matches!(
            Bitmap::attach(&mut memory[..4]),
            Err(BitmapError::MemoryTooSmall { needed: 5, .. })
        ));
        assert!(matches!(
            Bitmap::attach(&mut small[..2]),
            Err(BitmapError::MemoryTooSmall {
                needed: 3,
                given: 2
            })
        ));
        // Not a set at all.
        let mut zeroes = [0u64; 8];
        assert_eq!(
            Bitmap::attach(&mut zeroes).unwrap_err(),
            BitmapError::NotABitmap { found: 0 }
        );
        // A count above the number of bits.
        memory[COUNT_AT] = 1000;
        assert!(matches!(
            Bitmap::attach(&mut memory),
            Err(BitmapError::Corrupt { .. })
        ));
        // A count that attach accepts but check catches, and a stray padding bit.
        memory[COUNT_AT] = 2;
        assert!(Bitmap::attach(&mut memory).unwrap().check().is_err());
        memory[COUNT_AT] = 1;
        *memory.last_mut().unwrap() |= 1 << 63;
        memory[COUNT_AT] = 2;
        let set = Bitmap::attach(&mut memory).unwrap();
        assert!(matches!(set.check(), Err(BitmapError::Corrupt { .. })));
        // Scans never report the stray bit past the end.
        assert_eq!(set.next_set(100), None);
        assert_eq!(set.zeroes_to_right(99), Ok(0));
    }

    #[test]
    fn raw_constructors() {
        let mut memory: Vec<u64> = vec![0; Bitmap::words_for(10)];
        let ptr = NonNull::new(memory.as_mut_ptr()).unwrap();
        // SAFETY: `memory` holds the words and is not used while the sets live.
        unsafe {
            let mut set = Bitmap::init_raw(ptr, memory.len(), 10).unwrap();
            set.set(4).unwrap();
            let set = Bitmap::attach_raw(ptr, Bitmap::words_for(10)).unwrap();
            assert_eq!(set.first_set(), Some(4));
        }
    }

    #[test]
    fn dump_shows_bit_zero_first_and_collapses_runs() {
        with_set(320, |set| {
            set.set(0).unwrap();
            set.set(9).unwrap();
            set.set(319).unwrap();
            let dump = set.dump_to_string("A Bit Dump", "  ");
            let lines: Vec<&str> = dump.lines().collect();
            assert_eq!(lines[0], "  A Bit Dump");
            assert_eq!(lines[1], "  bits: 320, set: 3, bytes in memory: 64");
            assert!(
                lines[2].starts_with("           0: 1....... .1......"),
                "{dump}"
            );
            assert!(lines[3].starts_with("          64: ........"), "{dump}");
            assert_eq!(lines[4], "  *");
            assert!(lines[5].starts_with("         256:") && lines[5].ends_with('1'));
            assert_eq!(lines.len(), 6);
        });
    }

    #[cfg(feature = "std")]
    #[test]
    fn dump_to_io_writes_the_same_text() {
        with_set(5, |set| {
            set.set(4).unwrap();
            let mut out = Vec::new();
            set.dump_to_io(&mut out, "t", "").unwrap();
            assert_eq!(out, set.dump_to_string("t", "").into_bytes());
            assert!(set.dump_to_string("t", "").ends_with("0: ....1\n"));
        });
    }
}
