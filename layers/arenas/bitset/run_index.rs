//! `RunIndex`: the summary that `Bitset` keeps beside each arena's bitmap, so that a search
//! for a run of free blocks jumps to the words that can hold one. Its invariants are on
//! [`RunIndex`]; `check` verifies them against the bitmap. Entry point: [`RunIndex`].
//!
//! Each bitmap word `w` has a *class* `k` in `0..=CLASSES`: the number of lengths `2^c`
//! (`c < CLASSES`) for which a run of at least `2^c` free blocks starts inside word `w`
//! (it may run on into word `w + 1`). So a word with no free block is class 0, a word
//! whose longest run starting in it is 5 blocks long is class 3, and a word whose run
//! reaches 64 blocks is class `CLASSES` (7). A run of `n <= 64` free blocks can only start
//! in a word of a class above `floor(log2 n)`, and a word of a class above `ceil(log2 n)`
//! holds one.
//!
//! The index records a class per word (one byte) and, level by level, a byte per 64
//! entries of the level below that is at least their largest (a max-tree of fan-out 64,
//! searched eight bytes at a time). Records may be too high, never too low: booking blocks
//! leaves them, and a search that finds a record too high lowers it. So a free costs a
//! byte store and a compare, a booking nothing.

use core::marker::PhantomData;

use crate::abort::abort_with;

/// Run lengths with a tree of their own: `2^c` blocks for `c < CLASSES`, i.e. 1 to 64.
pub(super) const CLASSES: usize = 7;

/// Levels an index can have: enough for `2^62` words.
const MAX_LEVELS: usize = 11;

// ---- word classes, byte tests, level sizes -----------------------------------------------

/// Byte `i` of the result is `0x80` when byte `i` of `x` (at most `0x7F`) is above `c`
/// (at most `0x7F`), else 0.
#[inline(always)]
fn bytes_above(x: u64, c: usize) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    // No byte carries into the next: each sum is at most 0x7F + 0x7F.
    x.wrapping_add(ONES * (0x7F - c as u64)) & (ONES << 7)
}

/// The class of a bitmap word whose free blocks are the set bits of `lo`, followed by the
/// word whose free blocks are `hi` (0 past the end of the bitmap).
#[inline(always)]
pub(super) fn class_of(lo: u64, hi: u64) -> usize {
    if lo == u64::MAX {
        return CLASSES;
    }
    // In-word runs: `r_m` marks the starts of `m` free bits in a row inside `lo`.
    let r2 = lo & (lo >> 1);
    let r4 = r2 & (r2 >> 2);
    let r8 = r4 & (r4 >> 4);
    let r16 = r8 & (r8 >> 8);
    let r32 = r16 & (r16 >> 16);
    let inside = usize::from(lo != 0)
        + usize::from(r2 != 0)
        + usize::from(r4 != 0)
        + usize::from(r8 != 0)
        + usize::from(r16 != 0)
        + usize::from(r32 != 0);
    // The run at the top of `lo`, continued into `hi`; its length's bit width is its class
    // (capped at 64 blocks). `top < 64` here, so no shift overflows.
    let top = lo.leading_ones();
    let reach = if top == 0 {
        0
    } else {
        u64::from(top + hi.trailing_ones()).min(64)
    };
    inside.max((u64::BITS - reach.leading_zeros()) as usize)
}

/// A run index reached outside its memory: a bug in `Bitset`, never a caller's.
#[cold]
#[inline(never)]
fn out_of_range(i: usize) -> ! {
    abort_with(format_args!("RunIndex: word {i} is outside the index"))
}

/// Entries in each level of an index over `words` bitmap words, bottom first (0 above the
/// top, which has at most 64).
const fn level_entries(words: usize) -> [usize; MAX_LEVELS] {
    let mut levels = [0; MAX_LEVELS];
    let mut entries = words;
    let mut l = 0;
    while l < MAX_LEVELS {
        levels[l] = entries;
        if entries <= 64 {
            break;
        }
        entries = entries.div_ceil(64);
        l += 1;
    }
    levels
}

// ---- the index and its memory ------------------------------------------------------------

/// A view of the index of one arena whose bitmap has `G::WORDS` words (`WORDS` below), at
/// the memory `at`: `first[c]` for each `c < CLASSES` (one word each), then the levels,
/// each a byte per entry padded with zero bytes to a multiple of 64. Level 0 has the
/// recorded class of each bitmap word; entry `i` of level `l + 1` stands for entries
/// `64 * i..64 * i + 64` of level `l`.
///
/// Invariants: each word's recorded class is at least its class in the bitmap (see
/// [`class_of`]) and at most `CLASSES`; each entry above level 0 is at least the largest of
/// the 64 it stands for (so a search may visit a word or a group that turns out to have no
/// fit, and lowers its record then, but never skips one that has); padding bytes are 0; no
/// word below `first[c]` has a recorded class above `c` (a search for one starts there),
/// and `first[c] <= WORDS`.
pub(super) struct RunIndex<G: Words> {
    at: *mut u64,
    words: PhantomData<G>,
}

/// The size of the bitmap an index summarises, as a type (a const generic parameter
/// computed from others cannot be passed on in stable Rust).
pub(super) trait Words {
    /// Words in the bitmap.
    const WORDS: usize;
}

impl<G: Words> Clone for RunIndex<G> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<G: Words> Copy for RunIndex<G> {}

impl<G: Words> RunIndex<G> {
    /// Entries per level.
    const ENTRIES: [usize; MAX_LEVELS] = level_entries(G::WORDS);
    /// Levels in the index.
    const DEPTH: usize = {
        let mut d = 1;
        while d < MAX_LEVELS && Self::ENTRIES[d] != 0 {
            d += 1;
        }
        d
    };
    /// Where each level starts, in words from the index's start (and where the index ends,
    /// after the last level).
    const LEVEL_AT: [usize; MAX_LEVELS + 1] = {
        let mut at = [0; MAX_LEVELS + 1];
        at[0] = CLASSES;
        let mut l = 0;
        while l < MAX_LEVELS {
            at[l + 1] = at[l] + Self::ENTRIES[l].div_ceil(64) * 8;
            l += 1;
        }
        at
    };
    /// Words the whole index takes.
    pub(super) const INDEX_WORDS: usize = Self::LEVEL_AT[MAX_LEVELS];

    /// The index at `at`.
    ///
    /// # Safety
    ///
    /// Callers must ensure that `at` is valid for reads and writes of `INDEX_WORDS` words,
    /// aligned to 8, for as long as the view (or a copy) is used, and that nothing else
    /// accesses them meanwhile. Every method but [`init`](Self::init) needs an index that
    /// `init` made.
    #[inline(always)]
    pub(super) const unsafe fn new(at: *mut u64) -> Self {
        RunIndex {
            at,
            words: PhantomData,
        }
    }

    /// Word `i` of the index. Checked in every build (an index out of range aborts), so
    /// that the safe methods below never reach memory outside the index whatever their
    /// arguments.
    #[inline(always)]
    fn word(self, i: usize) -> *mut u64 {
        if i >= Self::INDEX_WORDS {
            out_of_range(i);
        }
        // SAFETY: `new`'s duties, and `i < INDEX_WORDS`.
        unsafe { self.at.add(i) }
    }

    /// The byte of entry `i` of level `level` (`i` below the level's padded size), checked
    /// as [`word`](Self::word) is.
    #[inline(always)]
    fn entry(self, level: usize, i: usize) -> *mut u8 {
        let byte = Self::LEVEL_AT[level] * 8 + i;
        let word = self.word(byte / 8);
        // SAFETY: byte `byte % 8` of a word inside the index.
        unsafe { word.cast::<u8>().add(byte % 8) }
    }

    /// Writes the index of a bitmap whose every word is free and of class `CLASSES`.
    pub(super) fn init(self) {
        // SAFETY: `new`'s duties: every byte written is inside the index.
        unsafe {
            self.at.write_bytes(0, Self::INDEX_WORDS);
            for level in 0..Self::DEPTH {
                self.entry(level, 0)
                    .write_bytes(CLASSES as u8, Self::ENTRIES[level]);
            }
        }
    }

    // ---- records: first words and classes ------------------------------------------------

    /// A bitmap word below which no word has a recorded class above `c` (at most `WORDS`).
    #[inline(always)]
    pub(super) fn first(self, c: usize) -> usize {
        // SAFETY: `c < CLASSES`, inside the index.
        unsafe { self.word(c).read() as usize }
    }

    /// Records that no word below `w` has a recorded class above `c` (`w <= WORDS`).
    #[inline(always)]
    pub(super) fn set_first(self, c: usize, w: usize) {
        // SAFETY: `c < CLASSES`, inside the index.
        unsafe { self.word(c).write(w as u64) };
    }

    /// The recorded class of bitmap word `w`.
    #[inline(always)]
    pub(super) fn class(self, w: usize) -> usize {
        // SAFETY: `w < WORDS`.
        usize::from(unsafe { self.entry(0, w).read() })
    }

    /// Records a lower class `k` for bitmap word `w`, which a search found (the levels
    /// above keep theirs, which stay high enough).
    #[inline(always)]
    pub(super) fn lower(self, w: usize, k: usize) {
        // SAFETY: `w < WORDS`; `k <= CLASSES` fits a byte.
        unsafe { self.entry(0, w).write(k as u8) };
    }

    /// Records a higher class `k` (`<= CLASSES`) for bitmap word `w`, and raises the levels
    /// above to it where they are lower.
    #[inline(always)]
    pub(super) fn raise(self, w: usize, k: usize) {
        let old = self.class(w);
        // SAFETY: `w < WORDS`; `k <= CLASSES` fits a byte.
        unsafe { self.entry(0, w).write(k as u8) };
        let mut i = w / 64;
        for level in 1..Self::DEPTH {
            let up = self.entry(level, i);
            // SAFETY: `i` is an entry of this level.
            if usize::from(unsafe { up.read() }) >= k {
                break;
            }
            // SAFETY: as above.
            unsafe { up.write(k as u8) };
            i /= 64;
        }
        // Words of a class above `c` now include `w`: searches may start no later.
        for c in old..k {
            if w < self.first(c) {
                self.set_first(c, w);
            }
        }
    }

    // ---- the search ----------------------------------------------------------------------

    /// The first entry at or after `i` in the 64 of level `level` that hold `i`, whose
    /// record is above `c`.
    #[inline(always)]
    fn scan(self, level: usize, i: usize, c: usize) -> Option<usize> {
        let group = i & !63;
        // Both ends of the group's 64 bytes are checked to lie inside the index (they do
        // when `i` is below the level's padded size).
        let words = self.entry(level, group).cast::<u64>();
        let _ = self.entry(level, group | 63);
        let mut q = (i % 64) / 8;
        let mut keep = u64::MAX << (8 * (i % 8));
        while q < 8 {
            // SAFETY: as above; the level starts on a word, so the bytes are aligned.
            let above = bytes_above(unsafe { words.add(q).read() }, c) & keep;
            if above != 0 {
                return Some(group + 8 * q + above.trailing_zeros() as usize / 8);
            }
            keep = u64::MAX;
            q += 1;
        }
        None
    }

    /// The lowest bitmap word at or after `from` with a recorded class above `c`, or
    /// `WORDS`. Lowers the records of the groups it finds too high.
    #[inline(always)]
    pub(super) fn next(self, c: usize, from: usize) -> usize {
        if from >= G::WORDS {
            return G::WORDS;
        }
        match self.scan(0, from, c) {
            Some(w) => w,
            None => self.next_far(c, from),
        }
    }

    /// [`next`](Self::next) past the 64 words that hold `from`.
    #[inline(never)]
    fn next_far(self, c: usize, from: usize) -> usize {
        let (mut level, mut i) = (0, from);
        // Nothing above `c` from `i` to the end of its group at `level`: look further up.
        loop {
            if level + 1 == Self::DEPTH {
                return G::WORDS;
            }
            let group = i / 64;
            if i % 64 == 0 {
                // The whole group is at most `c`: so may be its record.
                let up = self.entry(level + 1, group);
                // SAFETY: `group` is an entry of the level above.
                unsafe { up.write(up.read().min(c as u8)) };
            }
            level += 1;
            i = group + 1;
            // Then down again, from the first entry above `c`, while there is one.
            loop {
                if i >= Self::ENTRIES[level] {
                    return G::WORDS;
                }
                match self.scan(level, i, c) {
                    None => break,
                    Some(j) if level == 0 => return j,
                    Some(j) => {
                        level -= 1;
                        i = 64 * j;
                    }
                }
            }
        }
    }

    // ---- checks --------------------------------------------------------------------------

    /// Aborts, naming the arena at `arena`, unless every bitmap word `w` has a recorded
    /// class of at least `class(w)` (the bitmap's own) and the index keeps the invariants
    /// above.
    pub(super) fn check(self, arena: *const u8, class: impl Fn(usize) -> usize) {
        let broken = |what: core::fmt::Arguments<'_>| -> ! {
            abort_with(format_args!(
                "Bitset invariant broken: run index of arena {arena:p}: {what}"
            ))
        };
        // One pass over the words (the check runs after every operation in tests, some
        // under Miri): records against the bitmap, and the lowest word of each class.
        let mut lowest = [G::WORDS; CLASSES];
        let mut classes_seen = 0;
        for w in 0..G::WORDS {
            // A record of `CLASSES` is at least any class: the bitmap need not be read.
            let have = self.class(w);
            if have > CLASSES || (have < CLASSES && have < class(w)) {
                broken(format_args!(
                    "word {w} is of class {}, recorded {have}",
                    class(w)
                ));
            }
            // Classes nest: the first word of a class above `c` is above every lower one.
            while classes_seen < have {
                lowest[classes_seen] = w;
                classes_seen += 1;
            }
        }
        for (c, &lowest) in lowest.iter().enumerate() {
            if self.first(c) > lowest {
                broken(format_args!(
                    "first[{c}] = {}, above word {lowest}, of a class above {c}",
                    self.first(c)
                ));
            }
        }
        for level in 0..Self::DEPTH {
            let entries = Self::ENTRIES[level];
            // Level 0 is the records, checked above: only its padding here.
            let from = if level == 0 { entries } else { 0 };
            for i in from..entries.div_ceil(64) * 64 {
                // SAFETY: `i` is below the level's padded size.
                let have = unsafe { self.entry(level, i).read() };
                let mut want = 0;
                if i < entries && usize::from(have) < CLASSES {
                    for e in 64 * i..(64 * i + 64).min(Self::ENTRIES[level - 1]) {
                        // SAFETY: an entry of the level below.
                        want = want.max(unsafe { self.entry(level - 1, e).read() });
                    }
                }
                if (i >= entries && have != 0) || have < want {
                    broken(format_args!(
                        "level {level}, entry {i}: {have}, below its entries' {want} (or padding)"
                    ));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    /// The longest run of set bits starting in `lo`, continued into `hi`, capped at 64, as
    /// a class: one pass over the 128 bits.
    fn model_class(lo: u64, hi: u64) -> usize {
        let bits = |i: usize| {
            if i < 64 {
                lo >> i & 1
            } else {
                hi >> (i - 64) & 1
            }
        };
        let (mut longest, mut start) = (0, None);
        for i in 0..=128 {
            match (start, i < 128 && bits(i) == 1) {
                (None, true) if i < 64 => start = Some(i),
                (Some(s), false) => {
                    longest = longest.max((i - s).min(64));
                    start = None;
                }
                _ => {}
            }
        }
        (0..CLASSES).filter(|&c| longest >= 1 << c).count()
    }

    /// `class_of` against a bit-by-bit model, on words made of a few runs (every run length
    /// and position shows up across the seeds).
    #[test]
    fn class_of_matches_a_model() {
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let cases = if cfg!(miri) { 16 } else { 4000 };
        for _ in 0..cases {
            let (a, b, c) = (next(), next(), next());
            // Sparse, dense and run-shaped words.
            let lo = match a % 4 {
                0 => a,
                1 => a | b,
                2 => !(u64::MAX << (b % 64)) << (c % 64),
                _ => u64::MAX ^ (1 << (b % 64)),
            };
            let hi = match c % 3 {
                0 => 0,
                1 => !(u64::MAX << (a % 64)),
                _ => c,
            };
            assert_eq!(class_of(lo, hi), model_class(lo, hi), "{lo:#x} {hi:#x}");
        }
        assert_eq!(class_of(u64::MAX, 0), CLASSES);
        assert_eq!(class_of(1 << 63, u64::MAX), CLASSES);
        assert_eq!(class_of(0, u64::MAX), 0);
    }

    /// Raising and lowering records keeps the levels and `first` right, and `next` finds what a
    /// scan of the records finds (through groups whose records are too high), over an index of
    /// three levels (4097 words; two levels, 129 words, under Miri). Planting a bug in `raise`
    /// (stopping after level 1) made `next` miss the last word here, and so did one in `next_far`
    /// (lowering a group's record after a scan that did not start at its first entry).
    #[test]
    fn next_matches_a_scan() {
        /// Three levels natively; two under Miri (its speed), which still climb and descend.
        struct Size;
        impl Words for Size {
            const WORDS: usize = if cfg!(miri) { 129 } else { 4097 };
        }
        const WORDS: usize = Size::WORDS;
        type Index = RunIndex<Size>;
        assert_eq!(Index::DEPTH, if cfg!(miri) { 2 } else { 3 });
        let mut memory = vec![0u64; Index::INDEX_WORDS + 1];
        memory[Index::INDEX_WORDS] = 0xDFDF_DFDF_DFDF_DFDF;
        // SAFETY: the index's words, used only through `index`.
        let index = unsafe { Index::new(memory.as_mut_ptr()) };
        index.init();
        // Every word in use, and every group's record found too high and lowered, so that
        // raises have to climb every level.
        for w in 0..WORDS {
            index.lower(w, 0);
        }
        for c in 0..CLASSES {
            // Twice: the first search lowers level 1, the second the top level's last
            // entry (for the last word, alone in its group of 4096), with three levels.
            assert_eq!(index.next(c, 0), WORDS);
            assert_eq!(index.next(c, 0), WORDS);
        }
        let mut classes = vec![0; WORDS];
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = |m: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % m as u64) as usize
        };
        let steps = if cfg!(miri) { 30 } else { 20_000 };
        for step in 0..steps {
            // Half the changes among the first 200 words, so that groups fill and empty,
            // and some on the last word, whose records up to the top were lowered.
            let w = match next(8) {
                0..4 => next(200.min(WORDS)),
                4 => WORDS - 1,
                _ => next(WORDS),
            };
            let k = [0, 0, 0, 1, 3, CLASSES][next(6)];
            if k > classes[w] {
                index.raise(w, k);
            } else {
                index.lower(w, k);
            }
            classes[w] = k;
            let (c, from) = (next(CLASSES), next(WORDS + 1));
            let want = (from..WORDS).find(|&w| classes[w] > c).unwrap_or(WORDS);
            assert_eq!(index.next(c, from), want, "class {c} from {from}");
            if step % 500 == 0 && !cfg!(miri) {
                index.check(core::ptr::null(), |w| classes[w]);
            }
        }
        index.check(core::ptr::null(), |w| classes[w]);
        assert_eq!(
            memory[Index::INDEX_WORDS],
            0xDFDF_DFDF_DFDF_DFDF,
            "wrote past"
        );
    }
}
