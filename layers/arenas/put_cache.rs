//! `PutCache`: stacks of put blocks kept by size class, which [`Buddy`](super::Buddy) and
//! [`Bitset`](super::Bitset) hand out again before they book the blocks free: the delay of
//! a lazy buddy system, which spares a program that frees and allocates the same sizes the
//! splits, merges and bitmap searches in between.

use core::ptr::{self, NonNull};

/// The link written into the first word of every cached block.
struct Node {
    next: *mut Node,
}

/// Up to `depth` blocks (the holder's choice, per push) for each of `CLASSES` classes, on
/// stacks linked through the blocks' first words, the most recently put on top. The holder
/// keeps the blocks booked as in use while they are here.
pub(super) struct PutCache<const CLASSES: usize> {
    heads: [*mut Node; CLASSES],
    counts: [u32; CLASSES],
}

impl<const CLASSES: usize> PutCache<CLASSES> {
    /// An empty cache.
    pub(super) const fn new() -> Self {
        const { assert!(CLASSES.is_power_of_two(), "PutCache: CLASSES must be 2^k") };
        PutCache {
            heads: [ptr::null_mut(); CLASSES],
            counts: [0; CLASSES],
        }
    }

    /// `class` as an index: masked, which changes nothing for the classes the holders use
    /// (below `CLASSES`) and spares the hot paths a bounds check.
    #[inline(always)]
    const fn slot(class: usize) -> usize {
        class & (CLASSES - 1)
    }

    /// Takes the block on top of `class`'s stack.
    ///
    /// # Safety
    ///
    /// Every block pushed and not yet popped or drained is still the holder's, untouched
    /// since its push.
    #[inline(always)]
    pub(super) unsafe fn pop(&mut self, class: usize) -> Option<NonNull<u8>> {
        let slot = Self::slot(class);
        let top = NonNull::new(self.heads[slot])?;
        // SAFETY: a cached block holds its link in its first word (the caller's duty keeps
        // it there).
        self.heads[slot] = unsafe { top.as_ptr().read() }.next;
        self.counts[slot] -= 1;
        Some(top.cast())
    }

    /// Pushes `block` on `class`'s stack unless it holds `depth` blocks already; returns
    /// whether it did.
    ///
    /// # Safety
    ///
    /// `block` is valid for writes of a pointer (as long as one) and aligned to one, not on
    /// any stack of the cache, and unused by anyone until it is popped or drained.
    #[inline(always)]
    pub(super) unsafe fn push(&mut self, class: usize, block: NonNull<u8>, depth: u32) -> bool {
        debug_assert!(block.as_ptr().cast::<Node>().is_aligned());
        let slot = Self::slot(class);
        if self.counts[slot] >= depth {
            return false;
        }
        let node = block.as_ptr().cast::<Node>();
        // SAFETY: the caller's duties make the first word of `block` ours to write.
        unsafe {
            node.write(Node {
                next: self.heads[slot],
            })
        };
        self.heads[slot] = node;
        self.counts[slot] += 1;
        true
    }

    /// Empties `class`'s stack, handing each block to `each` (after its link was read, so
    /// `each` may write the block).
    ///
    /// # Safety
    ///
    /// As for [`pop`](PutCache::pop).
    pub(super) unsafe fn drain(&mut self, class: usize, mut each: impl FnMut(NonNull<u8>)) {
        let slot = Self::slot(class);
        let mut node = self.heads[slot];
        self.heads[slot] = ptr::null_mut();
        self.counts[slot] = 0;
        while let Some(block) = NonNull::new(node) {
            // SAFETY: as in `pop`.
            node = unsafe { node.read() }.next;
            each(block.cast());
        }
    }

    /// Takes every stack, leaving the cache empty, so that the holder can drain them while
    /// it uses itself; `None` when no class holds a block.
    pub(super) fn take_all(&mut self) -> Option<Self> {
        (!self.is_empty()).then(|| core::mem::replace(self, Self::new()))
    }

    /// Empties the stacks of `classes`, handing each block and its class to `each` (after
    /// its link was read).
    ///
    /// # Safety
    ///
    /// As for [`pop`](PutCache::pop).
    pub(super) unsafe fn drain_all(
        &mut self,
        classes: core::ops::RangeInclusive<usize>,
        mut each: impl FnMut(usize, NonNull<u8>),
    ) {
        for class in classes {
            // SAFETY: the caller's duty.
            unsafe { self.drain(class, |block| each(class, block)) };
        }
    }

    /// Blocks on `class`'s stack.
    pub(super) const fn count(&self, class: usize) -> u32 {
        self.counts[Self::slot(class)]
    }

    /// Whether no class holds a block.
    pub(super) fn is_empty(&self) -> bool {
        self.counts.iter().all(|&count| count == 0)
    }

    /// Forgets every block (for a holder that gives their memory back wholesale).
    pub(super) fn clear(&mut self) {
        *self = Self::new();
    }

    /// Whether a block on the stack of a class in `classes` overlaps `start..end` (for debug
    /// checks of puts, which may name a cached block with another size); `bytes` gives the
    /// size of a class's blocks.
    ///
    /// # Safety
    ///
    /// As for [`pop`](PutCache::pop).
    pub(super) unsafe fn overlaps(
        &self,
        classes: core::ops::RangeInclusive<usize>,
        start: usize,
        end: usize,
        bytes: impl Fn(usize) -> usize,
    ) -> bool {
        for class in classes {
            let slot = Self::slot(class);
            let mut node = self.heads[slot];
            for _ in 0..self.counts[slot] {
                if node.is_null() {
                    break;
                }
                let at = node.addr();
                if at < end && start < at + bytes(class) {
                    return true;
                }
                // SAFETY: as in `pop`.
                node = unsafe { node.read() }.next;
            }
        }
        false
    }

    /// Checks `class`'s stack (for `check_invariants`): it holds at most `depth` blocks,
    /// as many as its count says, none twice; `each` sees every block before its link is
    /// read (so that it can abort on a block that is not the holder's first). The error
    /// names what is wrong.
    ///
    /// # Safety
    ///
    /// As for [`pop`](PutCache::pop), for the blocks the count covers.
    pub(super) unsafe fn check(
        &self,
        class: usize,
        depth: u32,
        mut each: impl FnMut(NonNull<u8>),
    ) -> Result<(), &'static str> {
        let slot = Self::slot(class);
        let count = self.counts[slot];
        if count > depth {
            return Err("holds more blocks than its depth");
        }
        let mut node = self.heads[slot];
        let mut seen = 0;
        while let Some(block) = NonNull::new(node) {
            seen += 1;
            if seen > count {
                return Err("holds more blocks than its count says (or a loop)");
            }
            each(block.cast());
            // SAFETY: one of the first `count` blocks of the stack, the caller's duty.
            if unsafe { self.on_stack_below(block.as_ptr(), count - seen) } {
                return Err("holds a block twice");
            }
            // SAFETY: as above.
            node = unsafe { node.read() }.next;
        }
        if seen != count {
            return Err("holds fewer blocks than its count says");
        }
        Ok(())
    }

    /// Whether `node` appears among the (at most `left`) nodes after it on its stack.
    ///
    /// # Safety
    ///
    /// `node` and the `left` nodes after it are cached blocks.
    unsafe fn on_stack_below(&self, node: *mut Node, left: u32) -> bool {
        // SAFETY: the caller's duty.
        let mut other = unsafe { node.read() }.next;
        for _ in 0..left {
            if other.is_null() {
                break;
            }
            if other == node {
                return true;
            }
            // SAFETY: as above.
            other = unsafe { other.read() }.next;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pushes_pops_and_drains_in_stack_order() {
        let mut words = [0usize; 4];
        let [a, b, c, _] = words.each_mut().map(|w| NonNull::from(w).cast::<u8>());
        let mut cache = PutCache::<4>::new();
        // SAFETY: each word is a block of ours, pushed once, untouched while cached.
        unsafe {
            assert!(cache.push(1, a, 2));
            assert!(cache.push(1, b, 2));
            assert!(!cache.push(1, c, 2), "the stack is at its depth");
            assert!(cache.push(3, c, 2));
            assert_eq!((cache.count(1), cache.count(3)), (2, 1));
            let at = a.as_ptr().addr();
            let one = |_| 1;
            assert!(
                cache.overlaps(1..=1, at, at + 1, one) && !cache.overlaps(3..=3, at, at + 1, one)
            );
            assert_eq!(cache.check(1, 2, |_| ()), Ok(()));
            assert_eq!(
                cache.check(1, 1, |_| ()),
                Err("holds more blocks than its depth")
            );
            assert_eq!(cache.pop(1), Some(b), "the last put comes back first");
            let mut drained = alloc::vec::Vec::new();
            cache.drain(1, |block| drained.push(block));
            assert_eq!(drained, [a]);
            assert_eq!(cache.pop(1), None);
        }
        assert!(!cache.is_empty());
        cache.clear();
        assert!(cache.is_empty());
    }

    #[test]
    fn overlaps_finds_a_block_by_any_byte() {
        let mut words = [0usize; 4];
        let [a, ..] = words.each_mut().map(|w| NonNull::from(w).cast::<u8>());
        let mut cache = PutCache::<4>::new();
        let word = size_of::<usize>();
        // SAFETY: as above.
        unsafe {
            cache.push(2, a, 4);
            let at = a.as_ptr().addr();
            // Class 2's blocks are two words long here: `a` covers the second word too.
            let bytes = |class: usize| class * word;
            assert!(cache.overlaps(0..=3, at + word, at + 2 * word, bytes));
            assert!(
                !cache.overlaps(0..=1, at, at + word, bytes),
                "class 2 not searched"
            );
            assert!(!cache.overlaps(0..=3, at + 2 * word, at + 3 * word, bytes));
        }
    }

    #[test]
    fn check_finds_a_block_cached_twice() {
        let mut words = [0usize; 2];
        let [a, b] = words.each_mut().map(|w| NonNull::from(w).cast::<u8>());
        let mut cache = PutCache::<2>::new();
        // SAFETY: as above, but for the double push, which breaks `push`'s contract on
        // purpose: the blocks stay valid, so the check can read them.
        unsafe {
            cache.push(0, a, 8);
            cache.push(0, b, 8);
            cache.push(0, a, 8);
            assert_eq!(cache.check(0, 8, |_| ()), Err("holds a block twice"));
        }
    }
}
