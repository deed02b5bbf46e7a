//! `PutCache`: stacks of put blocks kept by size class, which [`Buddy`](super::Buddy) and
//! [`Bitset`](super::Bitset) hand out again before they book the blocks free: the delay of
//! a lazy buddy system, which spares a program that frees and allocates the same sizes the
//! splits, merges and bitmap searches in between. Each stack is a [`BlockList`].

use core::ops::RangeInclusive;
use core::ptr::NonNull;

use crate::layers::blocks::list::BlockList;

/// Up to `depth` blocks (the holder's choice, per push) for each of `CLASSES` classes, on
/// intrusive stacks, the most recently put on top. The holder keeps the blocks booked as in
/// use while they are here.
pub(super) struct PutCache<const CLASSES: usize> {
    stacks: [BlockList; CLASSES],
}

impl<const CLASSES: usize> PutCache<CLASSES> {
    /// The bytes at the start of a cached block that hold its link.
    pub(super) const LINK: usize = BlockList::LINK;

    /// An empty cache.
    pub(super) const fn new() -> Self {
        const { assert!(CLASSES.is_power_of_two(), "PutCache: CLASSES must be 2^k") };
        PutCache {
            stacks: [BlockList::EMPTY; CLASSES],
        }
    }

    /// `class`'s stack: the index masked, which changes nothing for the classes the
    /// holders use (below `CLASSES`) and spares the hot paths a bounds check.
    #[inline(always)]
    fn stack(&mut self, class: usize) -> &mut BlockList {
        &mut self.stacks[class & (CLASSES - 1)]
    }

    /// Takes the block on top of `class`'s stack.
    #[inline(always)]
    pub(super) fn pop(&mut self, class: usize) -> Option<NonNull<u8>> {
        self.stack(class).pop()
    }

    /// Pushes `block` on `class`'s stack unless it holds `depth` blocks already; returns
    /// whether it did.
    ///
    /// # Safety
    ///
    /// As for [`BlockList::push`], and `block` is on no stack of the cache.
    #[inline(always)]
    pub(super) unsafe fn push(&mut self, class: usize, block: NonNull<u8>, depth: u32) -> bool {
        let stack = self.stack(class);
        if stack.len() >= depth as usize {
            return false;
        }
        // SAFETY: the caller's duties.
        unsafe { stack.push(block) };
        true
    }

    /// Takes every stack, leaving the cache empty, so that the holder can drain them while
    /// it uses itself; `None` when no class holds a block.
    pub(super) fn take_all(&mut self) -> Option<Self> {
        (!self.is_empty()).then(|| core::mem::replace(self, Self::new()))
    }

    /// Empties the stacks of `classes`, handing each block and its class to `each` (after
    /// its link was read, so `each` may write the block).
    pub(super) fn drain_all(
        &mut self,
        classes: RangeInclusive<usize>,
        mut each: impl FnMut(usize, NonNull<u8>),
    ) {
        for class in classes {
            let stack = self.stack(class);
            while let Some(block) = stack.pop() {
                each(class, block);
            }
        }
    }

    /// Blocks on `class`'s stack.
    pub(super) const fn count(&self, class: usize) -> u32 {
        self.stacks[class & (CLASSES - 1)].len() as u32
    }

    /// Whether no class holds a block.
    pub(super) fn is_empty(&self) -> bool {
        self.stacks.iter().all(|stack| stack.len() == 0)
    }

    /// Forgets every block (for a holder that gives their memory back wholesale).
    pub(super) fn clear(&mut self) {
        *self = Self::new();
    }

    /// Whether a block on the stack of a class in `classes` overlaps `start..end` (for debug
    /// checks of puts, which may name a cached block with another size); `bytes` gives the
    /// size of a class's blocks.
    pub(super) fn overlaps(
        &self,
        classes: RangeInclusive<usize>,
        start: usize,
        end: usize,
        bytes: impl Fn(usize) -> usize,
    ) -> bool {
        let mut found = false;
        for class in classes {
            // A broken stack is `check`'s to report; this looks at what it can walk.
            let _ = self.stacks[class & (CLASSES - 1)].check(|block| {
                let at = block.as_ptr().addr();
                found |= at < end && start < at + bytes(class);
            });
        }
        found
    }

    /// Checks `class`'s stack (for `check_invariants`): it holds at most `depth` blocks,
    /// as many as its count says, none twice; `each` sees every block before its link is
    /// read (so that it can abort on a block that is not the holder's first). The error
    /// names what is wrong.
    pub(super) fn check(
        &self,
        class: usize,
        depth: u32,
        mut each: impl FnMut(NonNull<u8>),
    ) -> Result<(), &'static str> {
        let stack = &self.stacks[class & (CLASSES - 1)];
        if stack.len() > depth as usize {
            return Err("holds more blocks than its depth");
        }
        let mut twice = false;
        let walked = stack.check(|block| {
            each(block);
            let mut seen = 0;
            let _ = stack.check(|other| seen += usize::from(other == block));
            twice |= seen > 1;
        });
        // A block on the stack twice also makes it loop past its count: name the cause.
        if twice {
            return Err("holds a block twice");
        }
        walked
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
        }
        assert_eq!((cache.count(1), cache.count(3)), (2, 1));
        let at = a.as_ptr().addr();
        let one = |_| 1;
        assert!(cache.overlaps(1..=1, at, at + 1, one) && !cache.overlaps(3..=3, at, at + 1, one));
        assert_eq!(cache.check(1, 2, |_| ()), Ok(()));
        assert_eq!(
            cache.check(1, 1, |_| ()),
            Err("holds more blocks than its depth")
        );
        assert_eq!(cache.pop(1), Some(b), "the last put comes back first");
        let mut drained = alloc::vec::Vec::new();
        cache.drain_all(1..=1, |class, block| drained.push((class, block)));
        assert_eq!(drained, [(1, a)]);
        assert_eq!(cache.pop(1), None);
        assert!(!cache.is_empty());
        let taken = cache.take_all().expect("class 3 holds a block");
        assert_eq!(taken.count(3), 1);
        assert!(cache.is_empty() && cache.take_all().is_none());
    }

    #[test]
    fn overlaps_finds_a_block_by_any_byte() {
        let mut words = [0usize; 4];
        let [a, ..] = words.each_mut().map(|w| NonNull::from(w).cast::<u8>());
        let mut cache = PutCache::<4>::new();
        let word = size_of::<usize>();
        // SAFETY: as above.
        unsafe { cache.push(2, a, 4) };
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
        }
        assert_eq!(cache.check(0, 8, |_| ()), Err("holds a block twice"));
    }
}
