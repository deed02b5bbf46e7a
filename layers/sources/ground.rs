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

/// The cache's contents, under its lock: a stack of pieces, `pieces[..len]`.
struct Slots {
    pieces: [CachedPiece; CACHED_PIECES],
    len: usize,
    /// The pieces' bytes.
    bytes: usize,
    /// When idle pieces were last given back (`now_ms`).
    swept_at: u64,
}

impl Slots {
    /// The index of the newest piece that `keep` finds, if any.
    fn newest(&self, keep: impl Fn(&CachedPiece) -> bool) -> Option<usize> {
        self.pieces[..self.len].iter().rposition(keep)
    }

    /// Takes the piece at `index` (below `len`) off the stack; the top piece takes its place.
    fn remove(&mut self, index: usize) -> CachedPiece {
        self.len -= 1;
        self.pieces.swap(index, self.len);
        let cached = core::mem::replace(&mut self.pieces[self.len], CachedPiece::NONE);
        self.bytes -= cached.pages.size();
        cached
    }
}

/// A cached piece, the layout it was allocated with, and when it was kept (`now_ms`).
#[derive(Clone, Copy)]
struct CachedPiece {
    piece: NonNull<u8>,
    pages: Layout,
    kept_at: u64,
}

impl CachedPiece {
    /// What a slot above the stack holds: no piece, no bytes.
    const NONE: CachedPiece = CachedPiece {
        piece: NonNull::dangling(),
        pages: Layout::new::<()>(),
        kept_at: 0,
    };
}

/// How many pieces the cache keeps, their bytes at most, and the largest piece it keeps:
/// 16 MiB, such as the chunks of a 16 MiB region, or of 256 regions of one 64 KiB chunk.
const CACHED_PIECES: usize = 256;
const CACHED_BYTES: usize = 16 << 20;
const CACHED_MAX: usize = 1 << 20;
/// How long a cached piece may stay unused before it goes back to the system allocator.
const IDLE_MS: u64 = if cfg!(miri) { 3_600_000 } else { 100 };

// SAFETY: the pieces are reached only under their lock, one thread at a time; a cached
// piece is a system allocation that the cache owns alone, which any thread may free.
unsafe impl Sync for PieceCache {}

static CACHE: PieceCache = PieceCache::new();

/// Gives a cached piece back to the system allocator.
fn give_back(cached: CachedPiece) {
    // SAFETY: cached pieces came from the system allocator with their `pages`, and the
    // cache held them alone until it let them go.
    unsafe { std::alloc::System.dealloc(cached.piece.as_ptr(), cached.pages) };
}

impl PieceCache {
    const fn new() -> Self {
        PieceCache {
            slots: SpinLock::new(Slots {
                pieces: [CachedPiece::NONE; CACHED_PIECES],
                len: 0,
                bytes: 0,
                swept_at: 0,
            }),
        }
    }

    /// A cached piece allocated with exactly `pages`.
    fn take(&self, pages: Layout) -> Option<NonNull<u8>> {
        if pages.size() > CACHED_MAX {
            return None;
        }
        // The newest piece first: regions ask for pieces of one size, so the top one
        // usually fits.
        let mut slots = self.slots.lock();
        let index = slots.newest(|cached| cached.pages == pages)?;
        Some(slots.remove(index).piece)
    }

    /// Keeps a piece allocated with `pages`, or gives it back to the system allocator when
    /// it is too large or the cache is full (in pieces or bytes); first gives back the
    /// pieces left unused for `IDLE_MS`, when a sweep is due. Nothing is given back under
    /// the lock.
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
            && slots.len < CACHED_PIECES
            && slots.bytes + pages.size() <= CACHED_BYTES
        {
            let top = slots.len;
            slots.pieces[top] = cached;
            slots.len += 1;
            slots.bytes += pages.size();
            return;
        }
        drop(slots);
        give_back(cached);
    }

    /// Gives back the pieces left unused for `IDLE_MS`.
    #[cold]
    #[inline(never)]
    fn sweep(&self, now: u64) {
        self.slots.lock().swept_at = now;
        let idle = |cached: &CachedPiece| now.wrapping_sub(cached.kept_at) > IDLE_MS;
        self.give_back_each(|slots| slots.newest(idle));
    }

    /// Gives every cached piece back to the system allocator.
    fn empty(&self) {
        self.give_back_each(|slots| slots.len.checked_sub(1));
    }

    /// Gives back, one at a time (the lock taken for each, and let go before the system
    /// allocator is called), the pieces that `pick` finds until it finds none.
    fn give_back_each(&self, pick: impl Fn(&Slots) -> Option<usize>) {
        loop {
            let mut slots = self.slots.lock();
            let Some(index) = pick(&slots) else {
                return;
            };
            let cached = slots.remove(index);
            drop(slots);
            give_back(cached);
        }
    }
}

/// Forwards requests to the ground, the system allocator under every region, in whole
/// 4 KiB pages so that a region can claim them (the seed's `ground` layer).
///
/// Pieces of up to 1 MiB that come back are kept in a process-wide cache (up to 16 MiB of
/// them) for the next `Ground` to reuse, so that short-lived regions (one per request)
/// take the same pages again without a call to the system allocator, let alone the OS. A
/// piece left unused for 100 to 200 ms goes back to the system allocator at the next put
/// of any `Ground`; [`Ground::release_cache`] empties the cache at once.
///
/// Sizes are rounded up to whole pages and blocks are page-aligned, so `Ground` belongs at
/// the bottom of a stack that asks for big pieces, under `Chunk`:
/// `Stats<Chunk<Batch<Check<Stats<Ground>>>, 65536>>` is the binarytree example's stack.
///
/// `Ground` books nothing, so its [`deinit`](Layer::deinit) ends no block: a piece not put
/// back before it stays allocated from the system allocator (and, in a region, claimed for
/// the region in the page map) for good. Every layer of this crate puts back what it holds
/// before it ends the layer below; a layer of your own over `Ground` must do the same.
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
            self.slots.lock().len
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
        assert_eq!(cache.len(), 0);
        // At most `CACHED_BYTES` in all.
        let biggest = Layout::from_size_align(CACHED_MAX, PAGE).unwrap();
        for _ in 0..CACHED_BYTES / CACHED_MAX + 2 {
            cache.keep(piece(biggest), biggest);
        }
        assert_eq!(cache.len(), CACHED_BYTES / CACHED_MAX);
        cache.empty();
    }

    /// The newest piece of a layout is taken first, and a piece taken from below the top
    /// leaves the others in the cache.
    #[test]
    fn the_newest_piece_of_a_layout_is_taken() {
        let cache = PieceCache::new();
        let (small, large) = (
            Layout::from_size_align(PAGE, PAGE).unwrap(),
            Layout::from_size_align(4 * PAGE, PAGE).unwrap(),
        );
        let (first, second, big) = (piece(small), piece(small), piece(large));
        cache.keep(first, small);
        cache.keep(second, small);
        cache.keep(big, large);
        assert_eq!(cache.take(small), Some(second));
        assert_eq!(cache.take(large), Some(big));
        assert_eq!(cache.take(small), Some(first));
        assert_eq!(cache.take(small), None);
        for (ptr, pages) in [(first, small), (second, small), (big, large)] {
            cache.keep(ptr, pages);
        }
        assert_eq!(cache.len(), 3);
        cache.empty();
        assert_eq!(cache.len(), 0);
    }
}
