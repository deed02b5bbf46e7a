//! `Ground`: whole pages from the system allocator, claimed for the region that holds them.

use core::alloc::{GlobalAlloc, Layout};
use core::fmt;
use core::ptr::NonNull;

use crate::Layer;
use crate::layer::require_put;
use crate::region::page_map::{self, PAGE};
use crate::region::{Attributed, Attribution};
use crate::spin::SpinLock;

/// Pieces given back by `Ground` layers, kept for the next ones instead of going back to
/// the system allocator at once: regions made and dropped in quick succession (one per
/// request, one per tree) would otherwise make the system allocator return and re-fault
/// the same pages again and again.
struct PieceCache {
    pieces: SpinLock<[CachedPiece; CACHED_PIECES]>,
}

/// A cached piece and the layout it was allocated with, or an empty slot.
type CachedPiece = Option<(NonNull<u8>, Layout)>;

/// How many pieces the cache keeps, and the largest piece it keeps.
const CACHED_PIECES: usize = 16;
const CACHED_MAX: usize = 1 << 20;

// SAFETY: the pieces are reached only under their lock, one thread at a time; a cached
// piece is a system allocation that the cache owns alone, which any thread may free.
unsafe impl Sync for PieceCache {}

static CACHE: PieceCache = PieceCache {
    pieces: SpinLock::new([None; CACHED_PIECES]),
};

impl PieceCache {
    fn with<R>(
        &self,
        f: impl FnOnce(&mut [Option<(NonNull<u8>, Layout)>; CACHED_PIECES]) -> R,
    ) -> R {
        // The lock is held only for a look at the 16 slots: pieces go back to the system
        // allocator after it is let go.
        f(&mut self.pieces.lock())
    }

    /// A cached piece allocated with exactly `pages`.
    fn take(&self, pages: Layout) -> Option<NonNull<u8>> {
        if pages.size() > CACHED_MAX {
            return None;
        }
        self.with(|pieces| {
            let slot = pieces
                .iter_mut()
                .find(|p| matches!(p, Some((_, l)) if *l == pages))?;
            slot.take().map(|(piece, _)| piece)
        })
    }

    /// Keeps a piece allocated with `pages`; gives it back when the cache is full.
    fn keep(&self, piece: NonNull<u8>, pages: Layout) -> Option<NonNull<u8>> {
        if pages.size() > CACHED_MAX {
            return Some(piece);
        }
        self.with(|pieces| match pieces.iter_mut().find(|p| p.is_none()) {
            Some(slot) => {
                *slot = Some((piece, pages));
                None
            }
            None => Some(piece),
        })
    }
}

/// Forwards requests to the ground, the system allocator under every region, in whole
/// 4 KiB pages so that a region can claim them (the seed's `ground` layer).
///
/// Pieces of up to 1 MiB that come back are kept in a small process-wide cache (16 of
/// them) for the next `Ground` to reuse, so that short-lived regions do not make the system
/// allocator give pages back and fault them in again; [`Ground::release_cache`] empties it.
///
/// Sizes are rounded up to whole pages and blocks are page-aligned, so `Ground` belongs at
/// the bottom of a stack that asks for big pieces, under `Chunk`:
/// `Stats<Chunk<Batch<Check<Stats<Ground>>>, 65536>>` is the binarytree example's stack.
pub struct Ground {
    claims: Attribution,
    held: usize,
}

// SAFETY: `Ground` holds no memory of its own; its blocks belong to their owners.
unsafe impl Send for Ground {}

impl Ground {
    /// A ground source that claims nothing until a region attributes it.
    pub const fn new() -> Self {
        Ground {
            claims: Attribution::NONE,
            held: 0,
        }
    }

    /// Bytes currently held from the system allocator (whole pages).
    pub const fn held_bytes(&self) -> usize {
        self.held
    }

    /// Gives every cached piece back to the system allocator.
    pub fn release_cache() {
        let pieces = CACHE.with(|pieces| core::mem::replace(pieces, [None; CACHED_PIECES]));
        for (piece, pages) in pieces.into_iter().flatten() {
            // SAFETY: cached pieces came from the system allocator with `pages`.
            unsafe { std::alloc::System.dealloc(piece.as_ptr(), pages) };
        }
    }
}

impl Default for Ground {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: blocks are whole, page-aligned system allocations (fresh, or cached after a put
// and handed to one getter at a time), disjoint while live; they are claimed (when
// attributed) before they are handed out and released before they go back.
unsafe impl Layer for Ground {
    const MIN_ALIGN: usize = PAGE;

    fn get(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        let pages = page_map::pages_for(layout)?;
        let block = match CACHE.take(pages) {
            Some(block) => block,
            // SAFETY: `pages` has a non-zero size.
            None => NonNull::new(unsafe { std::alloc::System.alloc(pages) })?,
        };
        if self.claims.is_some() && !page_map::claim(block.as_ptr(), pages.size(), self.claims.0) {
            // SAFETY: just allocated with `pages`, never handed out.
            unsafe { std::alloc::System.dealloc(block.as_ptr(), pages) };
            return None;
        }
        self.held += pages.size();
        Some(block)
    }

    unsafe fn put(&mut self, ptr: NonNull<u8>, layout: Layout) {
        require_put::<Self>(ptr, layout);
        // The caller's layout was valid for `get`, so its pages were too.
        let Some(pages) = page_map::pages_for(layout) else {
            return;
        };
        if self.claims.is_some() {
            page_map::unclaim(ptr.as_ptr(), pages.size());
        }
        self.held = self.held.wrapping_sub(pages.size());
        if let Some(piece) = CACHE.keep(ptr, pages) {
            // SAFETY: the block came from `get`, allocated with `pages`.
            unsafe { std::alloc::System.dealloc(piece.as_ptr(), pages) }
        }
    }

    fn init() -> Self {
        Self::new()
    }

    fn deinit(&mut self) {}
}

// SAFETY: every block's pages are claimed for `owner` from `get` until its `put`.
unsafe impl Attributed for Ground {
    fn attribute(&mut self, owner: Attribution) {
        self.claims = owner;
    }
}

impl fmt::Debug for Ground {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ground")
            .field("held_bytes", &self.held)
            .finish()
    }
}
