//! Requests at the edges: zero sizes, sizes that overflow once rounded, huge alignments.
//! Each has defined behaviour: a distinct block, or `None` (an `AllocError` through `Heap`),
//! never a panic or a wrapped-around size.

use std::alloc::Layout;

use allocator_api2::alloc::Allocator;
use stratalloc::{Heap, Layer};

use crate::conformance::OwnedBuffer;

/// Zero-size requests, at small and large alignments, get distinct aligned one-byte blocks
/// that go back like any other.
fn zero_sizes_are_distinct_blocks<L: Layer>(mut layer: L) {
    for align in [1, 64, 4096, 1 << 16] {
        let zero = Layout::from_size_align(0, align).unwrap();
        let a = layer.get(zero).expect("zero-size get");
        let b = layer.get(zero).expect("zero-size get");
        assert_ne!(a, b, "two live zero-size blocks share an address");
        assert_eq!(
            (a.as_ptr().addr() % align, b.as_ptr().addr() % align),
            (0, 0)
        );
        // SAFETY: both were got with `zero`, hold one byte each, and are put once.
        unsafe {
            a.as_ptr().write(1);
            b.as_ptr().write(2);
            assert_eq!((a.as_ptr().read(), b.as_ptr().read()), (1, 2));
            layer.put(a, zero);
            layer.put(b, zero);
        }
    }
    layer.deinit();
}

/// The largest valid layouts overflow every layer's rounding: `None`, and the layer still
/// works afterwards.
fn overflowing_sizes_fail_cleanly<L: Layer>(mut layer: L) {
    for align in [1usize, 16, 4096, 1 << 20] {
        let size = isize::MAX as usize - (align - 1);
        let huge = Layout::from_size_align(size, align).unwrap();
        assert!(
            layer.get(huge).is_none(),
            "size {size:#x} align {align} was served"
        );
    }
    let ok = Layout::from_size_align(64, 8).unwrap();
    let block = layer.get(ok).expect("still usable");
    // SAFETY: got just above.
    unsafe { layer.put(block, ok) };
    layer.deinit();
}

macro_rules! edges {
    ($name:ident, $make:expr) => {
        edges!($name, $make, overflow_attr = allow(unused));
    };
    ($name:ident, $make:expr, overflow_attr = $($attr:tt)*) => {
        mod $name {
            #[allow(unused_imports)]
            use stratalloc::layers::*;
            #[allow(unused_imports)]
            use crate::conformance::OwnedBuffer;

            #[test]
            fn zero_sizes() {
                super::zero_sizes_are_distinct_blocks($make);
            }

            #[test]
            #[$($attr)*]
            fn overflowing_sizes() {
                super::overflowing_sizes_fail_cleanly($make);
            }
        }
    };
}

edges!(buffer, OwnedBuffer::new(1 << 20));
edges!(chunk, Chunk::<_, 4096>::new(OwnedBuffer::new(1 << 20)));
#[cfg(feature = "std")]
edges!(small_chunk_over_system, Chunk::<_, 256>::new(System));
edges!(batch, Batch::new(OwnedBuffer::new(1 << 20)));
edges!(stats, Stats::new(OwnedBuffer::new(1 << 20)));
edges!(check, Check::new(OwnedBuffer::new(1 << 20)));
edges!(buddy, Buddy::<_, 4, 16>::new(OwnedBuffer::new(1 << 20)));
edges!(
    bitset,
    Bitset::<_, 64, 65536>::new(OwnedBuffer::new(1 << 20))
);
#[cfg(feature = "std")]
edges!(
    mmap,
    Mmap::new(),
    // Miri backs an anonymous map with real memory: an (almost) isize::MAX map exhausts it.
    overflow_attr = cfg_attr(miri, ignore = "Miri cannot model a huge failed mmap")
);
#[cfg(all(feature = "std", not(miri)))]
edges!(system, System::new());
#[cfg(feature = "std")]
edges!(audited_arena, stratalloc::presets::audited_arena());

#[test]
fn heap_answers_zero_sizes_without_the_layers() {
    let heap = Heap::new(stratalloc::layers::Stats::new(OwnedBuffer::new(4096)));
    let layout = Layout::from_size_align(0, 64).unwrap();
    let block = (&heap).allocate(layout).unwrap();
    assert_eq!(block.len(), 0);
    assert_eq!(block.cast::<u8>().as_ptr().addr() % 64, 0);
    // SAFETY: allocated just above with `layout`.
    unsafe { (&heap).deallocate(block.cast(), layout) };
    assert_eq!(heap.gauge().gets, 0);
}

#[test]
fn heap_reports_exhaustion_as_an_error() {
    let heap = Heap::new(OwnedBuffer::new(1024));
    let mut v: allocator_api2::vec::Vec<u8, _> = allocator_api2::vec::Vec::new_in(&heap);
    assert!(v.try_reserve(100_000).is_err());
    assert!(v.try_reserve(100).is_ok());
    let huge = Layout::from_size_align(isize::MAX as usize - 7, 8).unwrap();
    assert!((&heap).allocate(huge).is_err());
}

#[cfg(feature = "std")]
#[test]
fn mmap_serves_alignments_beyond_a_page() {
    use stratalloc::layers::Mmap;
    let mut mmap = Mmap::new();
    for align_log2 in [12, 13, 16, 21] {
        let layout = Layout::from_size_align(10, 1 << align_log2).unwrap();
        let block = mmap.get(layout).unwrap();
        assert_eq!(block.as_ptr().addr() % layout.align(), 0);
        // SAFETY: the block holds 10 bytes.
        unsafe { block.as_ptr().write_bytes(7, 10) };
    }
    assert!(mmap.mapped_bytes() >= 4 * 4096);
    mmap.deinit();
    assert_eq!(mmap.mapped_bytes(), 0);
}

#[cfg(feature = "std")]
#[test]
fn mmap_and_buffer_own_their_blocks_only() {
    use stratalloc::layers::Mmap;
    let mut mmap = Mmap::new();
    let mut buffer = OwnedBuffer::new(4096);
    let layout = Layout::from_size_align(100, 8).unwrap();
    let (m, b) = (mmap.get(layout).unwrap(), buffer.get(layout).unwrap());
    assert!(mmap.owns(m) && buffer.owns(b));
    assert!(!mmap.owns(b) && !buffer.owns(m));
    // SAFETY: each block goes back to the layer it came from, once.
    unsafe {
        mmap.put(m, layout);
        buffer.put(b, layout);
    }
    assert!(!mmap.owns(m), "an unmapped block is not owned");
}

/// The largest alignment a `Layout` can have, 2^63 on 64-bit targets, with size 0 (the only
/// size it allows): every layer answers `None` or a distinct one-byte block, without a
/// panic and without handing a zero-size layout to anything below.
fn largest_alignment_zero_size<L: Layer>(mut layer: L) {
    let top = Layout::from_size_align(0, 1 << (usize::BITS - 1)).unwrap();
    if let Some(block) = layer.get(top) {
        assert_eq!(block.as_ptr().addr() % top.align(), 0);
        // SAFETY: got just above with `top`, put once.
        unsafe { layer.put(block, top) };
    }
    let ok = Layout::from_size_align(64, 8).unwrap();
    let block = layer.get(ok).expect("still usable");
    // SAFETY: got just above.
    unsafe { layer.put(block, ok) };
}

#[test]
fn the_largest_alignment_is_refused_cleanly_by_the_arena_and_shaping_layers() {
    use stratalloc::layers::*;
    largest_alignment_zero_size(OwnedBuffer::new(1 << 20));
    largest_alignment_zero_size(Chunk::<_, 4096>::new(OwnedBuffer::new(1 << 20)));
    largest_alignment_zero_size(Batch::new(OwnedBuffer::new(1 << 20)));
    largest_alignment_zero_size(Buddy::<_, 4, 16>::new(OwnedBuffer::new(1 << 20)));
    largest_alignment_zero_size(Bitset::<_, 64, 65536>::new(OwnedBuffer::new(1 << 20)));
    largest_alignment_zero_size(SizeHeader::new(OwnedBuffer::new(1 << 20)));
    largest_alignment_zero_size(Align::<_, 64>::new(OwnedBuffer::new(1 << 20)));
    largest_alignment_zero_size(Fill::<_, 0>::new(OwnedBuffer::new(1 << 20)));
    largest_alignment_zero_size(Segregate::<_, _, 64>::new(
        OwnedBuffer::new(1 << 20),
        OwnedBuffer::new(1 << 20),
    ));
}

#[cfg(feature = "std")]
#[test]
fn the_largest_alignment_is_refused_cleanly_by_the_os_sources() {
    use stratalloc::layers::*;
    largest_alignment_zero_size(Mmap::new());
    largest_alignment_zero_size(System::new());
    largest_alignment_zero_size(Stats::new(System::new()));
}

/// A layer over `OwnedBuffer` that notes every `grow` or `shrink` whose two layouts differ
/// in alignment (a caller duty of `Layer::grow`/`shrink` broken by the layer above), and
/// otherwise forwards everything.
struct NotesResizes {
    inner: OwnedBuffer,
    broken: Vec<(Layout, Layout)>,
}

// SAFETY: every call goes to `inner` unchanged; `grow` answers `false` when the duty was
// broken, which the contract allows.
unsafe impl Layer for NotesResizes {
    fn get(&mut self, layout: Layout) -> Option<std::ptr::NonNull<u8>> {
        self.inner.get(layout)
    }
    unsafe fn put(&mut self, ptr: std::ptr::NonNull<u8>, layout: Layout) {
        // SAFETY: the caller's duties.
        unsafe { self.inner.put(ptr, layout) }
    }
    fn init() -> Self {
        unreachable!()
    }
    fn deinit(&mut self) {
        self.inner.deinit();
    }
    unsafe fn grow(&mut self, ptr: std::ptr::NonNull<u8>, old: Layout, new: Layout) -> bool {
        if old.align() != new.align() {
            self.broken.push((old, new));
            return false;
        }
        // SAFETY: the caller's duties.
        unsafe { self.inner.grow(ptr, old, new) }
    }
}

/// `Align<L, A>` raises every layout to `A`; a grow to a size that cannot be raised (within
/// `A - 1` of `isize::MAX`) must be refused, not passed down with the alignment dropped back
/// to the caller's (which breaks `L`'s `grow` duty: debug builds of the crate's layers abort
/// on it). Reached from safe code by `Vec::try_reserve_exact`.
#[test]
fn align_never_passes_a_grow_down_with_a_changed_alignment() {
    use stratalloc::layers::Align;
    let heap = Heap::new(Align::<_, 64>::new(NotesResizes {
        inner: OwnedBuffer::new(1 << 16),
        broken: Vec::new(),
    }));
    {
        let mut bytes = allocator_api2::vec::Vec::<u8, _>::with_capacity_in(16, &heap);
        assert!(bytes.try_reserve_exact(isize::MAX as usize - 16).is_err());
    }
    let broken = &heap.into_inner().into_inner().broken;
    assert!(broken.is_empty(), "grow passed down with {broken:?}");
}

/// A zero-size block holds one byte, its owner's to write; a grow in place to one byte keeps
/// it, as the conformance suite checks (`verify(block, held(old).min(held(new)))`) and as
/// every other layer does. `Fill` wrote its byte over it (from `old.size()`, 0), so
/// `Fill<Buddy>` and `Fill<Bitset>` fail the suite.
#[test]
fn fill_keeps_the_byte_of_a_zero_size_block_it_grows() {
    use stratalloc::layers::{Buddy, Fill};
    let mut filled = Fill::<_, 0xAA>::new(Buddy::<_, 4, 16>::new(OwnedBuffer::new(1 << 18)));
    let zero = Layout::from_size_align(0, 8).unwrap();
    let one = Layout::from_size_align(1, 8).unwrap();
    let block = filled.get(zero).unwrap();
    // SAFETY: the block holds one byte (a zero-size request); grown with its layouts, then
    // put once with the layout it now fits.
    unsafe {
        block.as_ptr().write(0x01);
        assert!(filled.grow(block, zero, one), "same order: grown in place");
        assert_eq!(
            block.as_ptr().read(),
            0x01,
            "the block's byte was overwritten"
        );
        filled.put(block, one);
    }
}
