//! `BlockList`: the intrusive LIFO list of free blocks that `FreeList`, `SizeClasses` and the
//! arenas' put caches share. Invariant (its whole contract, below): `count` nodes are linked from
//! `head`, the last one's link is null, and each node is a free block of at least a pointer's size,
//! aligned for a pointer, that nothing else uses.

use core::ptr::{self, NonNull};

use crate::abort::debug_require;

/// A singly linked stack of free blocks, the link written into the first word of each.
///
/// The list owns nothing: its user decides which blocks go on it and what they are. It
/// only keeps the duty stated on [`push`](BlockList::push) for every node.
pub(crate) struct BlockList {
    head: *mut u8,
    count: usize,
}

impl BlockList {
    /// An empty list.
    pub(crate) const EMPTY: BlockList = BlockList {
        head: ptr::null_mut(),
        count: 0,
    };

    /// The bytes at the start of a free block that hold its link.
    pub(crate) const LINK: usize = size_of::<*mut u8>();

    /// Blocks on the list.
    #[inline(always)]
    pub(crate) const fn len(&self) -> usize {
        self.count
    }

    /// Pushes a free block.
    ///
    /// # Safety
    ///
    /// Callers must ensure that `block` is valid for writes of a pointer, aligned for one,
    /// and unused by anything else until it is popped (or the list is forgotten).
    #[inline(always)]
    pub(crate) unsafe fn push(&mut self, block: NonNull<u8>) {
        debug_require!(
            block.as_ptr().addr().is_multiple_of(align_of::<*mut u8>()),
            "BlockList: push of {block:p}, which is not aligned for its link"
        );
        // SAFETY: the caller hands the block over, writable and aligned for a pointer.
        unsafe { block.as_ptr().cast::<*mut u8>().write(self.head) };
        self.head = block.as_ptr();
        self.count += 1;
    }

    /// Pops the most recently pushed block, if any.
    #[inline(always)]
    pub(crate) fn pop(&mut self) -> Option<NonNull<u8>> {
        let block = NonNull::new(self.head)?;
        // SAFETY: `block` is on the list, so `push`'s duty holds: it is ours, readable and
        // holds its link in its first word.
        self.head = unsafe { block.as_ptr().cast::<*mut u8>().read() };
        self.count -= 1;
        Some(block)
    }

    /// Walks the list, at most `count` nodes, calling `visit` on each, and returns a
    /// description of the first broken invariant (a list longer or shorter than its
    /// count), for the users' `check_invariants`.
    pub(crate) fn check(&self, mut visit: impl FnMut(NonNull<u8>)) -> Result<(), &'static str> {
        let mut node = self.head;
        for _ in 0..self.count {
            let Some(block) = NonNull::new(node) else {
                return Err("free list shorter than its count");
            };
            if !block.as_ptr().addr().is_multiple_of(align_of::<*mut u8>()) {
                return Err("free block not aligned for its link");
            }
            visit(block);
            // SAFETY: every node on the list keeps `push`'s duty.
            node = unsafe { block.as_ptr().cast::<*mut u8>().read() };
        }
        if node.is_null() {
            Ok(())
        } else {
            Err("free list longer than its count")
        }
    }
}
