//! The bitmap (`Bitmap`) and the two layers built on it (`Buddy`, `Bitset`): clear errors
//! for bad input, the limits each layer documents, and memory coming back whole.
//!
//! Misconfigured layers (`MIN_ORDER > MAX_ORDER`, a `BLOCK` that is not a power of two) do
//! not compile: the `compile_fail` examples in their docs check that.

use std::alloc::Layout;
use std::ptr::NonNull;

use stratalloc::layers::{Bitset, Buddy};
use stratalloc::{Bitmap, BitmapError, Layer};

use crate::conformance::OwnedBuffer;

fn layout(size: usize, align: usize) -> Layout {
    Layout::from_size_align(size, align).unwrap()
}

#[test]
fn bitmap_out_of_range_names_index_and_length() {
    let mut memory = vec![0u64; Bitmap::words_for(100)];
    let mut set = Bitmap::init(&mut memory, 100).unwrap();
    let error = set.set(100).unwrap_err();
    assert_eq!(
        error,
        BitmapError::OutOfRange {
            index: 100,
            len: 100
        }
    );
    assert_eq!(
        error.to_string(),
        "bit index 100 is out of range for a bitmap of 100 bits"
    );
    assert!(set.get(usize::MAX).is_err());
    assert!(set.reset(1000).is_err());
    assert!(set.zeroes_to_right(100).is_err());
    assert_eq!(
        set.set_range(90, 20).unwrap_err().to_string(),
        "bit range 90..110 is out of range for a bitmap of 100 bits"
    );
    // Nothing changed.
    assert!(set.is_empty());
    set.check().unwrap();
}

#[test]
fn bitmap_attach_rejects_memory_without_a_bitmap() {
    let mut garbage = vec![0x5555_5555_5555_5555u64; 16];
    let error = Bitmap::attach(&mut garbage).unwrap_err();
    assert!(matches!(error, BitmapError::NotABitmap { .. }));
    assert!(error.to_string().contains("holds no bitmap"), "{error}");
    let mut memory = vec![0u64; Bitmap::words_for(1000)];
    let error = Bitmap::init(&mut memory[..5], 1000).unwrap_err();
    assert_eq!(
        error.to_string(),
        "a bitmap needs 19 words of memory, 5 were given"
    );
    Bitmap::init(&mut memory, 1000).unwrap();
    assert!(matches!(
        Bitmap::attach(&mut memory[..10]),
        Err(BitmapError::MemoryTooSmall {
            needed: 19,
            given: 10
        })
    ));
}

#[cfg(feature = "std")]
#[test]
fn bitmap_dumps_to_a_writer() {
    let mut memory = vec![0u64; Bitmap::words_for(16)];
    let mut set = Bitmap::init(&mut memory, 16).unwrap();
    set.set_range(2, 3).unwrap();
    let mut out = Vec::new();
    set.dump_to_io(&mut out, "free blocks", "> ").unwrap();
    let text = String::from_utf8(out).unwrap();
    assert_eq!(
        text,
        "> free blocks\n> bits: 16, set: 3, bytes in memory: 32\n>          0: ..111... ........\n"
    );
}

#[test]
fn buddy_refuses_requests_above_its_max_order() {
    let mut buddy = Buddy::<_, 4, 12>::new(OwnedBuffer::new(1 << 16));
    assert!(buddy.get(layout(4097, 8)).is_none(), "bigger than 2^12");
    assert!(buddy.get(layout(8, 8192)).is_none(), "aligned above 2^12");
    assert_eq!(buddy.arenas(), 0, "a refused request takes no arena");
    let whole = buddy.get(layout(4096, 4096)).expect("exactly 2^12 fits");
    assert_eq!(whole.as_ptr().addr() % 4096, 0);
    let small = buddy.get(layout(0, 1)).expect("zero-size gets a block");
    assert_eq!(buddy.arenas(), 2);
    assert!(buddy.owns(whole) && buddy.owns(small));
    let local = 0u8;
    assert!(!buddy.owns(NonNull::from(&local)));
    // SAFETY: each block goes back once, with the layout it was got with.
    unsafe {
        buddy.put(whole, layout(4096, 4096));
        buddy.put(small, layout(0, 1));
    }
    buddy.check_invariants();
    assert!(buddy.flush_cache(), "the small block waited in the cache");
    buddy.check_invariants();
    assert_eq!(buddy.free_blocks(12), 2, "every arena merged back whole");
    assert_eq!(buddy.free_bytes(), 2 * 4096);
}

#[test]
fn bitset_refuses_requests_larger_than_an_arena() {
    let mut heap = Bitset::<_, 32, 4096>::new(OwnedBuffer::new(1 << 16));
    assert!(heap.get(layout(4097, 8)).is_none());
    assert!(heap.get(layout(8, 8192)).is_none());
    assert_eq!(heap.arenas(), 0);
    let whole = heap.get(layout(4096, 4096)).expect("a whole arena fits");
    assert_eq!(heap.used_blocks(), 128);
    // SAFETY: got just above.
    unsafe { heap.put(whole, layout(4096, 4096)) };
    assert_eq!(heap.used_blocks(), 0);
    heap.check_invariants();
}

/// Many blocks of mixed sizes, freed in a scrambled order: once their caches are flushed,
/// the buddy heap ends with every arena whole again, the `Bitset` heap with every bit
/// clear.
#[test]
fn everything_comes_back_after_scrambled_frees() {
    let count = if cfg!(miri) { 40 } else { 2000 };
    let sizes = [1usize, 16, 17, 100, 512, 1000, 3000, 0, 64, 4096];
    let bytes = if cfg!(miri) { 1 << 20 } else { 48 << 20 };
    let mut buddy = Buddy::<_, 4, 14>::new(OwnedBuffer::new(bytes));
    let mut bitset = Bitset::<_, 16, 16384>::new(OwnedBuffer::new(bytes));
    let mut blocks = Vec::new();
    for i in 0..count {
        let l = layout(sizes[i % sizes.len()], 1 << (i % 5));
        let a = buddy.get(l).unwrap();
        let b = bitset.get(l).unwrap();
        blocks.push((a, b, l));
    }
    buddy.check_invariants();
    bitset.check_invariants();
    let mut state = 12345u64;
    while !blocks.is_empty() {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
        let (a, b, l) = blocks.swap_remove((state >> 33) as usize % blocks.len());
        // SAFETY: each block goes back once, with the layout it was got with.
        unsafe {
            buddy.put(a, l);
            bitset.put(b, l);
        }
    }
    buddy.check_invariants();
    bitset.check_invariants();
    assert!(buddy.cached_bytes() > 0);
    buddy.flush_cache();
    buddy.check_invariants();
    assert_eq!(buddy.cached_bytes(), 0);
    assert_eq!(buddy.free_blocks(14), buddy.arenas());
    assert_eq!(buddy.free_bytes(), buddy.arenas() << 14);
    assert!(bitset.cached_blocks() > 0);
    assert_eq!(bitset.used_blocks(), bitset.cached_blocks());
    bitset.flush_cache();
    bitset.check_invariants();
    assert_eq!(bitset.used_blocks(), 0);
}
