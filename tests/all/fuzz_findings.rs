//! What the fuzz targets in `fuzz/` found, each as a plain test that failed before its fix
//! (see fuzz/README.md for the targets, and how a finding becomes a test here).

#[cfg(feature = "std")]
mod blob_heap {
    use std::ptr::NonNull;

    use stratalloc::blob_heap::{BlobError, BlobGeometry, BlobHeap, RecoveryReason};

    #[repr(align(64))]
    #[derive(Clone, Copy)]
    struct Line(#[allow(dead_code, reason = "only its bytes and alignment matter")] [u8; 64]);

    /// Where the header's bitmaps end for `g` (`BlobGeometry::maps`: after the 704-byte
    /// header, a free and a live bitmap per order, of whole words). The caller checks the
    /// figure against the heap before relying on it.
    fn bitmaps_end(g: BlobGeometry) -> usize {
        (g.min_order()..=g.max_order())
            .map(|order| 2 * (1usize << (g.max_order() - order)).div_ceil(64) * 8)
            .sum::<usize>()
            + 704
    }

    /// `blob_heap` target: a stray write set the bits past the only block of the largest
    /// order in its live bitmap, and `recover` counted them as 63 live blocks of 1 KiB in a
    /// heap of 1 KiB (`stats` then said 64 blocks, 64 544 bytes, utilisation 6 303%).
    /// Recovery now counts the bits of real blocks only, and clears the others.
    #[test]
    fn recovery_counts_no_live_blocks_past_the_end_of_an_order() {
        let g = BlobGeometry::new(10, 5, 64).unwrap();
        let mut memory = vec![Line([0xEE; 64]); g.required_size().div_ceil(64)];
        let len = memory.len() * 64;
        let base = NonNull::new(memory.as_mut_ptr().cast::<u8>()).unwrap();
        // SAFETY: the memory outlives the heap, and is touched only through it and through
        // the two writes below, made while no operation runs.
        let heap = unsafe { BlobHeap::init_raw(base, len, g) }.unwrap();
        // The largest order's live bitmap is the last word of the bitmaps.
        let word = base.as_ptr().wrapping_add(bitmaps_end(g) - 8).cast::<u64>();
        // SAFETY: a bitmap word inside the blob's header, 8-aligned, read while no heap
        // operation runs.
        let read = || unsafe { word.read() };
        let whole = heap.alloc(1024).unwrap();
        assert_eq!(read(), 1, "the layout of the bitmaps changed");
        heap.free(whole.offset).unwrap();
        assert_eq!(read(), 0, "the layout of the bitmaps changed");

        // A live block, and an overrun into its free buddy's links: the heap needs recovery.
        let small = heap.alloc(32).unwrap();
        let buddy = small.as_ptr().cast::<u8>().as_ptr().wrapping_add(32);
        // SAFETY: the free buddy's first 24 bytes, inside the heap's data.
        unsafe { buddy.write_bytes(0xFF, 24) };
        assert!(matches!(
            heap.free(small.offset),
            Err(BlobError::RecoveryNeeded {
                reason: RecoveryReason::CorruptFreeBlock { .. }
            })
        ));
        // The stray bits: every bit but the largest block's own.
        // SAFETY: as for `read`.
        unsafe { word.write(!1) };
        heap.recover().unwrap();
        let stats = heap.stats();
        assert_eq!(
            (stats.live_blocks, stats.allocated_bytes),
            (1, 32),
            "{stats:?}"
        );
        assert_eq!(read(), 0, "the stray bits stay");
        heap.free(small.offset).unwrap();
        let stats = heap.stats();
        assert_eq!(
            (stats.live_blocks, stats.free_bytes),
            (0, 1024),
            "{stats:?}"
        );
        assert_eq!(heap.alloc(1024).unwrap().offset, 0);
        drop(heap);
        drop(memory);
    }
}
