//! `ArenaChain`: the arenas an arena layer ([`Buddy`](super::Buddy),
//! [`Bitset`](super::Bitset)) took from the layer below, linked newest first through the
//! first word of each arena's metadata; its invariants are written on [`ArenaChain`].

use core::alloc::Layout;
use core::marker::PhantomData;
use core::ptr::{self, NonNull};

use crate::Layer;
use crate::abort::{abort_with, debug_require};

/// What a chain knows of the arenas of the layer that holds it.
pub(super) trait ArenaShape {
    /// The layer's name, for reports.
    const NAME: &'static str;
    /// Bytes of data in an arena: a power of two, to which each arena is aligned.
    const BYTES: usize;
    /// Words of metadata after each arena's data: the chain's [`LINK_WORDS`], then the
    /// layer's own.
    const META_WORDS: usize;
}

/// Words at the start of each arena's metadata that the chain keeps (the base of the next,
/// older, arena, or null); the holder's own metadata follows them.
pub(super) const LINK_WORDS: usize = 1;

/// The arenas a layer took from the layer below, newest first.
///
/// An arena is one piece got from the layer below with [`layout`](Self::layout):
/// `S::BYTES` bytes of data at a base aligned to `S::BYTES`, then `S::META_WORDS` words of
/// metadata, whose first word links to the next arena. The chain hands out bases; the
/// holder finds an arena's metadata at `base + S::BYTES`, or from any address in its data
/// with a mask.
///
/// Invariants (checked by [`check`](Self::check)): every arena on the chain is a piece got
/// from the layer below with `layout()` and not put back; `len` is the number of arenas on
/// the chain; every base is aligned to `S::BYTES`. The pieces are live blocks of the layer
/// below, so they are disjoint: an address lies in the data of one arena at most.
pub(super) struct ArenaChain<S> {
    /// The newest arena's base, or null.
    newest: *mut u8,
    len: usize,
    shape: PhantomData<fn() -> S>,
}

impl<S: ArenaShape> ArenaChain<S> {
    /// A chain of no arena.
    pub(super) const fn new() -> Self {
        ArenaChain {
            newest: ptr::null_mut(),
            len: 0,
            shape: PhantomData,
        }
    }

    /// Arenas on the chain.
    #[inline(always)]
    pub(super) const fn len(&self) -> usize {
        self.len
    }

    /// The piece got from the layer below for one arena: its data, then its metadata;
    /// `None` when that overflows.
    pub(super) fn layout() -> Option<Layout> {
        let size = S::BYTES.checked_add(S::META_WORDS.checked_mul(8)?)?;
        Layout::from_size_align(size, S::BYTES).ok()
    }

    /// The link word of the arena at `base`.
    ///
    /// # Safety
    ///
    /// `base` is an arena on the chain (or one `add` is putting on it).
    #[inline(always)]
    unsafe fn link(base: NonNull<u8>) -> *mut *mut u8 {
        // SAFETY: the metadata follows the data inside the piece, and starts with the link.
        unsafe { base.as_ptr().add(S::BYTES).cast() }
    }

    /// The bases of the arenas, newest first.
    #[inline(always)]
    pub(super) fn iter(&self) -> Iter<'_, S> {
        Iter {
            next: self.newest,
            chain: PhantomData,
        }
    }

    /// The arena whose data holds `addr`, if one does.
    #[inline]
    pub(super) fn find(&self, addr: usize) -> Option<NonNull<u8>> {
        self.iter()
            .find(|base| addr.wrapping_sub(base.as_ptr().addr()) < S::BYTES)
    }

    /// Aborts, naming the layer, the call and the block, when `ptr` lies in none of the
    /// chain's arenas: a block of another layer (perhaps another arena layer, whose
    /// metadata the holder would otherwise find by masking the address and take for its
    /// own). For the holder's debug checks of a put, grow or shrink: O(arenas).
    pub(super) fn require_ours(&self, call: &str, ptr: NonNull<u8>, layout: Layout) {
        if self.find(ptr.as_ptr().addr()).is_none() {
            abort_with(format_args!(
                "{}: {call} of {ptr:p} ({}), which is in none of this layer's arenas (a \
                 block of another layer?)",
                S::NAME,
                crate::layer::Shown(layout)
            ));
        }
    }

    /// Takes a new arena from `inner` and puts it at the head of the chain; returns its
    /// base. The holder lays out its own metadata (after [`LINK_WORDS`]) before anything
    /// reads it.
    #[cold]
    pub(super) fn add(&mut self, inner: &mut impl Layer) -> Option<NonNull<u8>> {
        let base = inner.get(Self::layout()?)?;
        debug_require!(
            base.as_ptr().addr().is_multiple_of(S::BYTES),
            "{}: the layer below returned an arena at {base:p}, not aligned to {}",
            S::NAME,
            S::BYTES
        );
        // SAFETY: the link is inside the piece, which is ours alone.
        let link = unsafe { Self::link(base) };
        debug_require!(
            link.addr().is_multiple_of(align_of::<*mut u8>()),
            "{}: arenas of {} bytes leave the metadata below a pointer's alignment",
            S::NAME,
            S::BYTES
        );
        // SAFETY: as above.
        unsafe { link.write(self.newest) };
        self.newest = base.as_ptr();
        self.len += 1;
        Some(base)
    }

    /// Puts every arena back to `inner`, leaving the chain empty.
    pub(super) fn put_all(&mut self, inner: &mut impl Layer) {
        let Some(layout) = Self::layout() else {
            return;
        };
        // The iterator reads each arena's link as it yields the arena, so the arena can go
        // back before the next one is reached.
        for base in self.iter() {
            // SAFETY: `base` is a piece got from `inner` with `layout`, put back once.
            unsafe { inner.put(base, layout) };
        }
        self.newest = ptr::null_mut();
        self.len = 0;
    }

    /// Aborts, naming the layer, unless the chain holds `len` arenas, each aligned to
    /// `S::BYTES` (walking at most `len + 1` links, so that a cycle is reported too).
    pub(super) fn check(&self) {
        let mut seen = 0;
        for base in self.iter().take(self.len + 1) {
            if !base.as_ptr().addr().is_multiple_of(S::BYTES) {
                abort_with(format_args!(
                    "{} invariant broken: arena {base:p} is not aligned to {}",
                    S::NAME,
                    S::BYTES
                ));
            }
            seen += 1;
        }
        if seen != self.len {
            abort_with(format_args!(
                "{} invariant broken: {seen}{} arenas on the chain, {} counted",
                S::NAME,
                if seen > self.len { " or more" } else { "" },
                self.len
            ));
        }
    }
}

/// The bases of a chain's arenas, newest first (see [`ArenaChain::iter`]). Each arena's
/// link is read as the arena is yielded.
pub(super) struct Iter<'c, S> {
    next: *mut u8,
    chain: PhantomData<&'c ArenaChain<S>>,
}

impl<S: ArenaShape> Iterator for Iter<'_, S> {
    type Item = NonNull<u8>;

    #[inline(always)]
    fn next(&mut self) -> Option<NonNull<u8>> {
        let base = NonNull::new(self.next)?;
        // SAFETY: `base` is an arena on the chain (its invariants), so its link is live.
        self.next = unsafe { ArenaChain::<S>::link(base).read() };
        Some(base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::Buffer;
    use core::mem::MaybeUninit;

    struct Small;
    impl ArenaShape for Small {
        const NAME: &'static str = "Small";
        const BYTES: usize = 256;
        const META_WORDS: usize = 2;
    }

    #[test]
    fn adds_finds_iterates_and_puts_back() {
        let mut memory = alloc::vec![MaybeUninit::<u8>::uninit(); 6 * 256];
        let mut inner = Buffer::new(&mut memory);
        let mut chain = ArenaChain::<Small>::new();
        let a = chain.add(&mut inner).unwrap();
        let b = chain.add(&mut inner).unwrap();
        chain.check();
        assert_eq!(chain.len(), 2);
        assert_eq!(
            chain.iter().collect::<alloc::vec::Vec<_>>(),
            [b, a],
            "newest first"
        );
        assert_eq!(chain.find(a.as_ptr().addr() + 255), Some(a));
        assert_eq!(chain.find(b.as_ptr().addr()), Some(b));
        assert_eq!(
            chain.find(a.as_ptr().addr() + 256),
            None,
            "metadata, not data"
        );
        chain.put_all(&mut inner);
        assert_eq!((chain.len(), chain.iter().next()), (0, None));
        chain.check();
    }
}
