//! `Chunk`: the bump path, the large path, reset keeping a chunk, and deinit.

use std::alloc::Layout;

use stratalloc::layers::{Chunk, Stats};
use stratalloc::{Gauge, Heap, Layer};

use crate::conformance::OwnedBuffer;

type Counted = Chunk<Stats<OwnedBuffer>, 4096>;

fn counted() -> Counted {
    Chunk::new(Stats::new(OwnedBuffer::new(4 << 20)))
}

fn small(size: usize) -> Layout {
    Layout::from_size_align(size, 8).unwrap()
}

#[test]
fn small_blocks_share_chunks() {
    let mut chunk = counted();
    for _ in 0..100 {
        chunk.get(small(32)).unwrap();
    }
    // 100 blocks of 32 bytes need 3200 bytes: one 4 KiB chunk.
    assert_eq!(chunk.chunks(), 1);
    assert_eq!(chunk.inner().gauge().gets, 1);
    for _ in 0..100 {
        chunk.get(small(32)).unwrap();
    }
    assert_eq!(chunk.chunks(), 2);
    chunk.check_invariants();
}

#[test]
fn putting_the_newest_block_gives_its_bytes_back() {
    let mut chunk = counted();
    let a = chunk.get(small(40)).unwrap();
    // SAFETY: `a` was got with this layout.
    unsafe { chunk.put(a, small(40)) };
    let b = chunk.get(small(40)).unwrap();
    assert_eq!(a, b, "the same bytes are handed out again");
}

#[test]
fn large_requests_go_straight_to_the_layer_below() {
    let mut chunk = counted();
    let limit = Counted::SMALL_LIMIT;
    assert_eq!(limit, (4096 - 16) / 4);
    chunk.get(small(limit)).unwrap();
    assert_eq!(chunk.inner().gauge().gets, 1, "at the limit: from a chunk");
    let big = small(limit + 1);
    let block = chunk.get(big).unwrap();
    let below = chunk.inner().gauge();
    assert_eq!(below.gets, 2, "over the limit: one piece of its own");
    assert!(below.bytes_got as usize > 4096 + limit);
    assert_eq!(chunk.large_blocks(), 1);
    // SAFETY: `block` was got with `big`.
    unsafe { chunk.put(block, big) };
    assert_eq!(
        chunk.inner().gauge().live,
        1,
        "the large piece went back at once"
    );
    chunk.check_invariants();
}

#[test]
fn alignments_beyond_a_chunk_and_a_page_are_honoured() {
    let mut chunk = counted();
    for align_log2 in [5, 9, 10, 12, 13, 16, 18] {
        let layout = Layout::from_size_align(100, 1 << align_log2).unwrap();
        let block = chunk.get(layout).unwrap();
        assert_eq!(
            block.as_ptr().addr() % layout.align(),
            0,
            "align {}",
            layout.align()
        );
        // SAFETY: the block holds 100 bytes.
        unsafe { block.as_ptr().write_bytes(0x5A, 100) };
    }
    chunk.check_invariants();
}

#[test]
fn reset_keeps_the_newest_chunk_and_returns_the_rest() {
    let mut chunk = counted();
    for _ in 0..1000 {
        chunk.get(small(48)).unwrap();
    }
    chunk.get(small(3000)).unwrap(); // a large block
    let chunks_before = chunk.chunks();
    assert!(chunks_before > 10);
    // SAFETY: no block got above is used or put after this.
    unsafe { chunk.reset() };
    assert_eq!(chunk.chunks(), 1);
    assert_eq!(chunk.large_blocks(), 0);
    assert_eq!(chunk.inner().gauge().live, 1, "only the kept chunk is held");
    let gets_before = chunk.inner().gauge().gets;
    for _ in 0..60 {
        chunk.get(small(48)).unwrap();
    }
    assert_eq!(
        chunk.inner().gauge().gets,
        gets_before,
        "the kept chunk is reused"
    );
    chunk.check_invariants();
    chunk.deinit();
    assert_eq!(chunk.inner().gauge().live, 0, "deinit returns everything");
}

#[test]
fn heap_reset_is_safe_and_reuses_memory() {
    let mut heap = Heap::new(counted());
    let mut gets_after_first_round = 0;
    for round in 0..5 {
        {
            // 200 `u16`s stay below the small limit as the vector doubles.
            let mut v = allocator_api2::vec::Vec::new_in(&heap);
            v.extend(0..200u16);
            assert_eq!(
                v.iter().map(|&x| x as u32).sum::<u32>(),
                19_900,
                "round {round}"
            );
        }
        heap.reset();
        let gets = heap.layer_mut().inner().gauge().gets;
        if round == 0 {
            gets_after_first_round = gets;
        }
        assert_eq!(
            gets, gets_after_first_round,
            "round {round} took new chunks"
        );
    }
    assert_eq!(heap.layer_mut().chunks(), 1);
}
