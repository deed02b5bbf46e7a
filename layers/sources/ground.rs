//! `Ground`: whole pages from the system allocator, claimed for the region that holds them.

use core::alloc::{GlobalAlloc, Layout};
use core::fmt;
use core::ptr::NonNull;

use crate::Layer;
use crate::layer::require_put;
use crate::region::page_map::{self, PAGE};
use crate::region::{Attributed, Attribution};
use crate::spin::SpinLock;

#[cfg(any(unix, windows))]
use crate::os::now_ms;

/// Milliseconds since the first call (off Unix and Windows, where `os` is not built).
#[cfg(not(any(unix, windows)))]
fn now_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let start = *START.get_or_init(std::time::Instant::now);
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Pieces given back by `Ground` layers, kept for the next ones instead of going back to
/// the system allocator at once: regions made and dropped in quick succession (one per
/// request, one per tree) take the same pieces again and again, without a call to the
/// system allocator, which would otherwise give pages back and fault them in again. A
/// piece left unused for `IDLE_MS` goes back at the first put of any `Ground` once the
/// last sweep is `IDLE_MS` old (so after `IDLE_MS` to twice that).
struct PieceCache {
    slots: SpinLock<Slots>,
}

/// The cache's contents, under its lock.
struct Slots {
    pieces: [Option<CachedPiece>; CACHED_PIECES],
    /// When idle pieces were last given back (`now_ms`).
    swept_at: u64,
}

/// A cached piece, the layout it was allocated with, and when it was kept (`now_ms`).
#[derive(Clone, Copy)]
struct CachedPiece {
    piece: NonNull<u8>,
    pages: Layout,
    kept_at: u64,
}

/// How many pieces the cache keeps, and the largest piece it keeps.
const CACHED_PIECES: usize = 16;
const CACHED_MAX: usize = 1 << 20;
/// How long a cached piece may stay unused before it goes back to the system allocator.
const IDLE_MS: u64 = if cfg!(miri) { 3_600_000 } else { 100 };

// SAFETY: the pieces are reached only under their lock, one thread at a time; a cached
// piece is a system allocation that the cache owns alone, which any thread may free.
unsafe impl Sync for PieceCache {}

static CACHE: PieceCache = PieceCache::new();

/// Gives cached pieces back to the system allocator.
fn give_back(pieces: impl IntoIterator<Item = Option<CachedPiece>>) {
    for cached in pieces.into_iter().flatten() {
        // SAFETY: cached pieces came from the system allocator with their `pages`, and the
        // cache held them alone until it let them go.
        unsafe { std::alloc::System.dealloc(cached.piece.as_ptr(), cached.pages) };
    }
}

impl PieceCache {
    const fn new() -> Self {
        PieceCache {
            slots: SpinLock::new(Slots {
                pieces: [None; CACHED_PIECES],
                swept_at: 0,
            }),
        }
    }

    /// A cached piece allocated with exactly `pages`.
    fn take(&self, pages: Layout) -> Option<NonNull<u8>> {
        if pages.size() > CACHED_MAX {
            return None;
        }
        // The lock is held only for a look at the 16 slots.
        let mut slots = self.slots.lock();
        let slot = slots
            .pieces
            .iter_mut()
            .find(|slot| matches!(slot, Some(cached) if cached.pages == pages))?;
        slot.take().map(|cached| cached.piece)
    }

    /// Keeps a piece allocated with `pages`, or gives it back to the system allocator when
    /// it is too large or the cache is full; first gives back the pieces left unused for
    /// `IDLE_MS`, when a sweep is due. Nothing is given back under the lock.
    fn keep(&self, piece: NonNull<u8>, pages: Layout) {
        let now = now_ms();
        let mut slots = self.slots.lock();
        if now.wrapping_sub(slots.swept_at) > IDLE_MS {
            drop(slots);
            self.sweep(now);
            slots = self.slots.lock();
        }
        let cached = CachedPiece {
            piece,
            pages,
            kept_at: now,
        };
        if pages.size() <= CACHED_MAX
            && let Some(slot) = slots.pieces.iter_mut().find(|slot| slot.is_none())
        {
            *slot = Some(cached);
            return;
        }
        drop(slots);
        give_back([Some(cached)]);
    }

    /// Gives back the pieces left unused for `IDLE_MS`.
    #[cold]
    #[inline(never)]
    fn sweep(&self, now: u64) {
        let mut stale = [None; CACHED_PIECES];
        {
            let mut slots = self.slots.lock();
            slots.swept_at = now;
            for (slot, out) in slots.pieces.iter_mut().zip(stale.iter_mut()) {
                if slot.is_some_and(|cached| now.wrapping_sub(cached.kept_at) > IDLE_MS) {
                    *out = slot.take();
                }
            }
        }
        give_back(stale);
    }

    /// Gives every cached piece back to the system allocator.
    fn empty(&self) {
        let pieces = core::mem::replace(&mut self.slots.lock().pieces, [None; CACHED_PIECES]);
        give_back(pieces);
    }
}

/// Forwards requests to the ground, the system allocator under every region, in whole
/// 4 KiB pages so that a region can claim them (the seed's `ground` layer).
///
/// Pieces of up to 1 MiB that come back are kept in a small process-wide cache (16 of
/// them) for the next `Ground` to reuse, so that short-lived regions (one per request)
/// take the same pages again without a call to the system allocator, let alone the OS. A
/// piece left unused for 100 to 200 ms goes back to the system allocator at the next put
/// of any `Ground`; [`Ground::release_cache`] empties the cache at once.
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
        CACHE.empty();
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
        // The block came from `get`, allocated with `pages`; it is no one's now.
        CACHE.keep(ptr, pages);
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

#[cfg(test)]
mod tests {
    use super::*;

    impl PieceCache {
        fn len(&self) -> usize {
            self.slots.lock().pieces.iter().flatten().count()
        }
    }

    fn piece(pages: Layout) -> NonNull<u8> {
        // SAFETY: `pages` has a non-zero size.
        NonNull::new(unsafe { std::alloc::System.alloc(pages) }).expect("memory for a piece")
    }

    #[test]
    #[cfg_attr(miri, ignore = "waits for the idle time on the real clock")]
    fn pieces_left_idle_go_back_at_the_next_put() {
        let cache = PieceCache::new();
        let pages = Layout::from_size_align(PAGE, PAGE).unwrap();
        cache.keep(piece(pages), pages);
        cache.keep(piece(pages), pages);
        assert_eq!(cache.len(), 2);
        let taken = cache.take(pages).expect("a cached piece of that layout");
        assert_eq!(cache.len(), 1);
        cache.keep(taken, pages);
        std::thread::sleep(std::time::Duration::from_millis(IDLE_MS + 50));
        cache.keep(piece(pages), pages);
        assert_eq!(
            cache.len(),
            1,
            "the two idle pieces went back, the new one stays"
        );
        cache.empty();
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn large_pieces_and_pieces_past_a_full_cache_go_back_at_once() {
        let cache = PieceCache::new();
        let large = Layout::from_size_align(2 * CACHED_MAX, PAGE).unwrap();
        cache.keep(piece(large), large);
        assert_eq!(cache.len(), 0);
        assert!(cache.take(large).is_none());
        let pages = Layout::from_size_align(PAGE, PAGE).unwrap();
        for _ in 0..CACHED_PIECES + 3 {
            cache.keep(piece(pages), pages);
        }
        assert_eq!(cache.len(), CACHED_PIECES);
        let other = Layout::from_size_align(2 * PAGE, PAGE).unwrap();
        assert!(
            cache.take(other).is_none(),
            "only a piece of the same layout is taken"
        );
        cache.empty();
    }
}
