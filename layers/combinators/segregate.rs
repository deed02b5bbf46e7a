//! `Segregate<Small, Large, LIMIT>`: requests of up to `LIMIT` bytes go to one layer, larger
//! ones to another, as Heap-Layers' `SegHeap` does.
//!
//! Invariant: a block lives in `Small` exactly when the layout that [fits](crate::layer#fits)
//! it has a size of at most `LIMIT`. `get` routes by the layout's size; `put`, `grow` and
//! `shrink` route by the size of the layout they are given, and an in-place resize that
//! would cross `LIMIT` is refused (the caller then moves the block), so the rule holds for
//! the block's whole life.

use core::alloc::Layout;
use core::fmt;
use core::ptr::NonNull;

use crate::Layer;
use crate::layer::{paranoid, require_grow, require_put, require_shrink};

/// Sends requests of at most `LIMIT` bytes to `Small` and the rest to `Large`.
///
/// Puts are sized, so the layout alone says which layer a block came from: no header, no
/// look-up. A typical use puts a fast fixed-size or bitmapped layer under small objects and
/// a page source under the rest:
///
/// ```
/// use core::alloc::Layout;
/// use stratalloc::{Layer, layers::{Bitset, Mmap, Segregate}};
///
/// let mut heap: Segregate<Bitset<Mmap, 16>, Mmap, 256> =
///     Segregate::new(Bitset::new(Mmap::new()), Mmap::new());
/// let small = heap.get(Layout::new::<[u64; 4]>()).unwrap();
/// let large = heap.get(Layout::new::<[u8; 4096]>()).unwrap();
/// assert!(heap.small().owns(small) && heap.large().owns(large));
/// // SAFETY: both blocks are ours, put once with the layouts they were got with.
/// unsafe {
///     heap.put(small, Layout::new::<[u64; 4]>());
///     heap.put(large, Layout::new::<[u8; 4096]>());
/// }
/// ```
pub struct Segregate<Small, Large, const LIMIT: usize> {
    small: Small,
    large: Large,
}

impl<Small, Large, const LIMIT: usize> Segregate<Small, Large, LIMIT> {
    /// Routes requests of at most `LIMIT` bytes to `small`, the others to `large`.
    pub const fn new(small: Small, large: Large) -> Self {
        Segregate { small, large }
    }

    /// The layer for small requests.
    pub const fn small(&self) -> &Small {
        &self.small
    }

    /// The layer for large requests.
    pub const fn large(&self) -> &Large {
        &self.large
    }

    /// Both layers, taken apart.
    pub fn into_parts(self) -> (Small, Large) {
        (self.small, self.large)
    }

    /// Whether blocks with `layout` belong to the small layer.
    #[inline(always)]
    const fn is_small(layout: Layout) -> bool {
        layout.size() <= LIMIT
    }
}

// SAFETY: every block comes unchanged from one of the two layers, chosen by the size of
// the layout, and every later call on it goes to the same layer: the layout that fits a
// block always has a size on the same side of `LIMIT` (resizes that would cross it are
// refused), so each layer gets the caller's duties for its own blocks. `owns` is true only
// where one of the layers says so; with both exact, it is exact.
unsafe impl<Small: Layer, Large: Layer, const LIMIT: usize> Layer
    for Segregate<Small, Large, LIMIT>
{
    const MIN_ALIGN: usize = if Small::MIN_ALIGN < Large::MIN_ALIGN {
        Small::MIN_ALIGN
    } else {
        Large::MIN_ALIGN
    };
    const ZEROED: bool = Small::ZEROED && Large::ZEROED;
    const OWNS_EXACT: bool = Small::OWNS_EXACT && Large::OWNS_EXACT;
    const OWNS_INTERIOR: bool = Small::OWNS_INTERIOR && Large::OWNS_INTERIOR;

    #[inline]
    fn get(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        paranoid(self);
        if Self::is_small(layout) {
            self.small.get(layout)
        } else {
            self.large.get(layout)
        }
    }

    #[inline]
    unsafe fn put(&mut self, ptr: NonNull<u8>, layout: Layout) {
        paranoid(self);
        require_put::<Self>(ptr, layout);
        // SAFETY: the layout's size names the layer the block came from (see above); the
        // caller's duties pass on to it.
        unsafe {
            if Self::is_small(layout) {
                self.small.put(ptr, layout)
            } else {
                self.large.put(ptr, layout)
            }
        }
    }

    fn init() -> Self {
        Self::new(Small::init(), Large::init())
    }

    fn deinit(&mut self) {
        self.small.deinit();
        self.large.deinit();
    }

    unsafe fn grow(&mut self, ptr: NonNull<u8>, old: Layout, new: Layout) -> bool {
        paranoid(self);
        require_grow::<Self>(ptr, old, new);
        match (Self::is_small(old), Self::is_small(new)) {
            // SAFETY: the block is `small`'s, and stays on its side.
            (true, true) => unsafe { self.small.grow(ptr, old, new) },
            // SAFETY: the block is `large`'s.
            (false, false) => unsafe { self.large.grow(ptr, old, new) },
            // Crossing the limit would change the block's layer: the caller moves it.
            _ => false,
        }
    }

    unsafe fn shrink(&mut self, ptr: NonNull<u8>, old: Layout, new: Layout) -> bool {
        paranoid(self);
        require_shrink::<Self>(ptr, old, new);
        match (Self::is_small(old), Self::is_small(new)) {
            // SAFETY: the block is `small`'s.
            (true, true) => unsafe { self.small.shrink(ptr, old, new) },
            // SAFETY: the block is `large`'s, and stays on its side.
            (false, false) => unsafe { self.large.shrink(ptr, old, new) },
            _ => false,
        }
    }

    fn owns(&self, ptr: NonNull<u8>) -> bool {
        self.small.owns(ptr) || self.large.owns(ptr)
    }

    fn check_invariants(&self) {
        self.small.check_invariants();
        self.large.check_invariants();
    }
}

impl<Small: fmt::Debug, Large: fmt::Debug, const LIMIT: usize> fmt::Debug
    for Segregate<Small, Large, LIMIT>
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Segregate")
            .field("limit", &LIMIT)
            .field("small", &self.small)
            .field("large", &self.large)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::{Bitset, Buffer};

    /// The small side (a bitmapped arena) could grow a block in place past the limit, and
    /// the large side (a buffer) could shrink one below it; both would send the block's
    /// later put to the wrong layer, so `Segregate` refuses.
    #[test]
    fn resizes_never_cross_the_limit() {
        // Room for a 64 KiB-aligned arena and its bitmap wherever the buffer lands.
        let mut small_memory = alloc::boxed::Box::<[u8]>::new_uninit_slice(1 << 18);
        let mut large_memory = alloc::boxed::Box::<[u8]>::new_uninit_slice(1 << 14);
        let mut heap: Segregate<Bitset<Buffer<'_>, 16, 65536>, Buffer<'_>, 64> = Segregate::new(
            Bitset::new(Buffer::new(&mut small_memory)),
            Buffer::new(&mut large_memory),
        );
        let at = |size| Layout::from_size_align(size, 8).unwrap();
        let small = heap.get(at(48)).unwrap();
        let large = heap.get(at(200)).unwrap();
        assert!(heap.small().owns(small) && heap.large().owns(large));
        // SAFETY: both blocks are live with the layouts given, each resized once.
        unsafe {
            assert!(heap.grow(small, at(48), at(64)), "within the small side");
            assert!(!heap.grow(small, at(64), at(65)), "grew across the limit");
            assert!(
                !heap.shrink(large, at(200), at(64)),
                "shrank across the limit"
            );
            assert!(heap.shrink(large, at(200), at(65)), "within the large side");
            heap.put(small, at(64));
            heap.put(large, at(65));
        }
        heap.check_invariants();
    }
}
