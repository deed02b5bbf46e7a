//! The conformance suite (`stratalloc::testing`, the one layer authors get) run against
//! every layer and every named stack of the crate by `conformance!`.

pub use stratalloc::testing::{OwnedBuffer, PROGRAM_BYTES, no_gauge, program, run_program};

/// `conformance!(test_name, || make_layer())` runs the suite on the layer;
/// `conformance!(test_name, || make_layer(), gauged)` also compares the layer's own gauge.
macro_rules! conformance {
    ($name:ident, $make:expr) => {
        #[test]
        fn $name() {
            stratalloc::testing::check_layer_with(
                $crate::proptest_config(),
                $make,
                stratalloc::testing::no_gauge,
            );
        }
    };
    ($name:ident, $make:expr, gauged) => {
        #[test]
        fn $name() {
            stratalloc::testing::check_layer_with(
                $crate::proptest_config(),
                $make,
                stratalloc::testing::own_gauge,
            );
        }
    };
}

/// A buffer that any program of the suite fits.
fn suite_buffer() -> OwnedBuffer {
    OwnedBuffer::new(PROGRAM_BYTES)
}

mod layers {
    use stratalloc::layers::*;

    conformance!(buffer, super::suite_buffer);
    // Two ranges of different origins, so that programs spill from the first to the second.
    conformance!(adopted, || {
        let mut adopted = Adopted::<2>::new();
        for _ in 0..2 {
            let memory = AdoptedMemory::from_vec(vec![0; super::PROGRAM_BYTES / 2]);
            adopted.adopt(memory).unwrap();
        }
        adopted
    });
    conformance!(chunk_over_buffer, || Chunk::<_, 4096>::new(
        super::suite_buffer()
    ));
    conformance!(batch_over_buffer, || Batch::new(super::suite_buffer()));
    conformance!(align_over_buffer, || Align::<_, 64>::new(
        super::suite_buffer()
    ));
    // Zeroes over a layer that hands out dirty memory: the suite checks `ZEROED`.
    conformance!(zero_fill_over_buffer, || Fill::<_, 0>::new(
        super::suite_buffer()
    ));
    conformance!(byte_fill_over_buffer, || Fill::<_, 0xA5>::new(
        super::suite_buffer()
    ));
    // Over a layer that grows in place (a buffer does not): the bytes a grow adds are
    // filled, the ones the block held are kept, a zero-size block's one byte among them.
    #[cfg(not(miri))]
    conformance!(byte_fill_over_buddy, || Fill::<_, 0xA5>::new(Buddy::<
        _,
        4,
        16,
    >::new(
        super::suite_buffer()
    )));
    // A short list, so that programs fill it and the put that finds it full collects.
    conformance!(deferred_over_buffer, || Deferred::<_, 8>::new(
        super::suite_buffer()
    ));
    // A hook that checks what it is shown (the block's bytes may be uninitialised: a
    // block's memory is only the caller's to read once written).
    conformance!(on_release_over_buffer, || OnRelease::new(
        super::suite_buffer(),
        1,
        |released: Released| assert!(
            released.id == 1
                && released
                    .ptr
                    .as_ptr()
                    .addr()
                    .is_multiple_of(released.layout.align()),
            "the hook was shown {released:?}"
        )
    ));
    conformance!(guard_over_buffer, || Guard::<_, 16>::new(
        super::suite_buffer()
    ));
    // A quarantine the size of the suite's largest block: programs push blocks through it.
    conformance!(quarantine_over_buffer, || Quarantine::<_, 65536>::new(
        super::suite_buffer()
    ));
    conformance!(
        stats_over_buffer,
        || Stats::new(super::suite_buffer()),
        gauged
    );
    conformance!(
        check_over_buffer,
        || Check::new(super::suite_buffer()),
        gauged
    );
    // Under Miri, the unwinder captures no stacks: the table of sites stays empty there,
    // and the figures' arithmetic is what `heap_profile::figures_*` check.
    #[cfg(all(feature = "std", not(miri)))]
    conformance!(
        profile_over_buffer,
        || Profile::new(super::suite_buffer()),
        gauged
    );
    // Arenas of 64 KiB: the suite's largest request (64 KiB at most, aligned to 4 KiB at
    // most) fits one, and programs need several.
    conformance!(buddy_over_buffer, || Buddy::<_, 4, 16>::new(
        super::suite_buffer()
    ));
    // Each suite run costs ~15 s under Miri: the layers run there over a `Buffer`; the other
    // sources and stacks only natively.
    #[cfg(not(miri))]
    conformance!(eager_buddy_over_buffer, || Buddy::<_, 4, 16, 0>::new(
        super::suite_buffer()
    ));
    #[cfg(not(miri))]
    conformance!(
        buddy_under_check,
        || Check::new(Buddy::<_, 4, 16>::new(super::suite_buffer())),
        gauged
    );
    conformance!(bitset_over_buffer, || Bitset::<_, 64, 65536>::new(
        super::suite_buffer()
    ));
    #[cfg(not(miri))]
    conformance!(eager_bitset_over_buffer, || Bitset::<_, 64, 65536, 0>::new(
        super::suite_buffer()
    ));
    // Small requests to bump chunks, large ones straight to a buffer; a `Check` on each
    // side aborts on a block that reaches the wrong one.
    conformance!(size_header_over_buffer, || SizeHeader::new(
        super::suite_buffer()
    ));
    conformance!(slab_over_buffer, || Slab::<_>::new(super::suite_buffer()));
    conformance!(segregate_over_buffers, || Segregate::<_, _, 512>::new(
        Check::new(Chunk::<_, 4096>::new(super::suite_buffer())),
        Check::new(super::suite_buffer())
    ));
    // A 16 KiB buffer that programs fill quickly, then a second one: puts, grows and
    // shrinks must find the right one by `owns`.
    conformance!(fallback_over_buffers, || Fallback::new(
        super::OwnedBuffer::new(16 << 10),
        super::suite_buffer()
    ));
    // The same with blocks behind a size header, over a `Check`: the primary's blocks lie
    // inside the checked blocks, whose starts alone the checker's table knows; `owns` must
    // still find them all (through the buffer), or their puts would reach the second one.
    conformance!(fallback_over_size_header_check, || Fallback::new(
        SizeHeader::new(Check::new(super::OwnedBuffer::new(16 << 10))),
        super::suite_buffer()
    ));

    // 64-byte class blocks, reused LIFO; larger or more aligned requests pass through to
    // the buffer. A `Check` below aborts on a block that reaches it with the wrong layout.
    conformance!(free_list_over_buffer, || FreeList::<_, 64>::new(
        Check::new(super::suite_buffer())
    ));
    // A class aligned to 4096 (the cap), with a short list whose surplus goes back.
    conformance!(capped_free_list_over_buffer, || {
        FreeList::<_, 12288, 2>::new(Check::new(super::suite_buffer()))
    });

    // Runs of 8 KiB so that a program's classes fit Miri's buffer; a `Check` below aborts on
    // a run or pass-through block that reaches it with the wrong layout.
    conformance!(size_classes_over_buffer, || SizeClasses::<_, 8192>::new(
        Check::new(super::suite_buffer())
    ));

    // 64 KiB arenas: the suite's largest requests (64 KiB, or 4 KiB-aligned ones near it)
    // go straight to the buffer as large blocks, the others split and merge in arenas.
    conformance!(coalesce_over_buffer, || Coalesce::<_, 65536>::new(
        Check::new(super::suite_buffer())
    ));

    #[cfg(feature = "std")]
    mod with_std {
        use stratalloc::layers::*;

        conformance!(mmap, Mmap::new);
        conformance!(system, System::new);
        conformance!(chunk_over_mmap, || Chunk::<_, 4096>::new(Mmap::new()));
        conformance!(small_chunks_over_system, || Chunk::<_, 256>::new(System));
        // 1 MiB chunks are slow to track under Miri; the logic is `small_chunks_over_system`'s.
        #[cfg(not(miri))]
        conformance!(big_chunks_over_system, || Chunk::<_, 1048576>::new(System));
        conformance!(batch_over_mmap, || Batch::new(Mmap::new()));
        // The debugging stack of the quarantine bench: guards inside the quarantine, over
        // size classes (`Guard` keeps `Mmap`'s zeroes: `ZEROED` is checked here).
        #[cfg(not(miri))]
        conformance!(quarantine_guard_size_classes_over_mmap, || {
            Quarantine::<_, { 1 << 20 }>::new(Guard::<_, 16>::new(SizeClasses::<_>::new(
                Mmap::new(),
            )))
        });
        conformance!(guard_over_mmap, || Guard::<_, 16>::new(Mmap::new()));
        conformance!(batch_over_system, || Batch::new(System));
        conformance!(stats_over_system, || Stats::new(System), gauged);
        conformance!(check_over_mmap, || Check::new(Mmap::new()), gauged);
        conformance!(check_over_system, || Check::new(System), gauged);
        // Natively only: under Miri they run over a `Buffer` (see above).
        #[cfg(not(miri))]
        conformance!(buddy_over_mmap, || Buddy::<_, 5, 20>::new(Mmap::new()));
        #[cfg(not(miri))]
        conformance!(buddy_over_system, || Buddy::<_, 4, 17>::new(System));
        #[cfg(not(miri))]
        conformance!(reserve, Reserve::new);
        // Natively only: under Miri the layer runs over a `Buffer` (see above).
        #[cfg(not(miri))]
        conformance!(size_header_over_system, || SizeHeader::new(System));
        // Natively only: under Miri the slab logic runs over a `Buffer` (see above).
        #[cfg(not(miri))]
        conformance!(slab_over_reserve, || Slab::<_>::new(Reserve::new()));
        #[cfg(not(miri))]
        conformance!(slab_over_mmap, || Slab::<_>::new(Mmap::new()));
        #[cfg(not(miri))]
        conformance!(slab_over_system, || Slab::<_, 131072>::new(System));
        // Slabs of 256 KiB serve up to 32 KiB (the thread heaps' big slabs).
        #[cfg(not(miri))]
        conformance!(big_slab_over_mmap, || Slab::<_, 262144>::new(Mmap::new()));
        // Not under Miri (32 s of its clock per pass): `segregated_fallback_stack` runs a
        // bitmap arena over maps there, a smaller one.
        #[cfg(not(miri))]
        conformance!(bitset_over_mmap, || Bitset::<_, 16>::new(Mmap::new()));
        // A general-purpose shape: small blocks in a bitmap arena while it has room, then
        // the system; large blocks from maps.
        conformance!(segregated_fallback_stack, || Segregate::<_, _, 1024>::new(
            Fallback::new(Bitset::<_, 16, 65536>::new(Mmap::new()), System),
            Mmap::new()
        ));
        #[cfg(not(miri))]
        conformance!(bitset_over_system, || Bitset::<_, 256, 262144>::new(System));
        // Natively only: under Miri the layer runs over a `Buffer` (see above).
        #[cfg(not(miri))]
        conformance!(free_list_over_system, || FreeList::<_, 256>::new(System));
        // Natively only: under Miri the layer runs over a `Buffer` (see above).
        #[cfg(not(miri))]
        conformance!(size_classes_over_system, || SizeClasses::<_>::new(System));
        // Natively only: under Miri the layer runs over a `Buffer` (see above).
        #[cfg(not(miri))]
        conformance!(coalesce_over_system, || Coalesce::<_, 65536>::new(System));
        #[cfg(not(miri))]
        conformance!(coalesce_over_mmap, || Coalesce::<_, { 4 << 20 }>::new(
            Mmap::new()
        ));
        // The shape of a general-purpose heap: size classes for small blocks, coalescing
        // arenas for the rest.
        #[cfg(not(miri))]
        conformance!(size_classes_over_coalesce, || SizeClasses::<_>::new(
            Coalesce::<_, { 1 << 20 }>::new(Mmap::new())
        ));
        #[cfg(not(miri))]
        conformance!(
            size_classes_over_mmap,
            || SizeClasses::<_>::new(Mmap::new())
        );
        #[cfg(not(miri))]
        conformance!(
            free_list_over_mmap,
            || FreeList::<_, 4096>::new(Mmap::new())
        );
    }
}

mod named_stacks {
    use stratalloc::presets;

    /// The `General` preset is a `GlobalAlloc`, not a layer: this handle drives it through
    /// `GlobalAlloc` so that the suite can run on it (zero sizes as one byte, which
    /// `GlobalAlloc` callers must never ask for).
    #[cfg(feature = "std")]
    struct ViaGlobalAlloc(&'static presets::General);

    #[cfg(feature = "std")]
    static GENERAL: presets::General = presets::general();

    #[cfg(feature = "std")]
    impl ViaGlobalAlloc {
        fn nonzero(layout: std::alloc::Layout) -> std::alloc::Layout {
            std::alloc::Layout::from_size_align(layout.size().max(1), layout.align()).unwrap()
        }
    }

    // SAFETY: every call forwards to `GlobalAlloc` with a non-zero layout that fits the
    // block; `General` keeps `GlobalAlloc`'s contract, which is the `Layer` contract's
    // for these calls.
    #[cfg(feature = "std")]
    unsafe impl stratalloc::Layer for ViaGlobalAlloc {
        fn get(&mut self, layout: std::alloc::Layout) -> Option<std::ptr::NonNull<u8>> {
            // SAFETY: a non-zero layout.
            std::ptr::NonNull::new(unsafe {
                std::alloc::GlobalAlloc::alloc(self.0, Self::nonzero(layout))
            })
        }
        unsafe fn put(&mut self, ptr: std::ptr::NonNull<u8>, layout: std::alloc::Layout) {
            // SAFETY: the caller's duties: a live block of `General` with this layout.
            unsafe { std::alloc::GlobalAlloc::dealloc(self.0, ptr.as_ptr(), Self::nonzero(layout)) }
        }
        fn init() -> Self {
            ViaGlobalAlloc(&GENERAL)
        }
        fn deinit(&mut self) {}
    }

    #[cfg(feature = "std")]
    conformance!(general, <ViaGlobalAlloc as stratalloc::Layer>::init);

    /// The preset itself, over one `Vec` that every case reuses.
    #[test]
    fn buffer_arena() {
        let mut memory = Vec::with_capacity(super::PROGRAM_BYTES);
        let (base, len) = (memory.as_mut_ptr(), super::PROGRAM_BYTES);
        let mut runner = proptest::test_runner::TestRunner::new(crate::proptest_config());
        let result = runner.run(&super::program(), |ops| {
            // SAFETY: `memory` outlives the runner; each case's arena is dropped before the
            // next case makes a new slice over the same bytes.
            let bytes = unsafe { std::slice::from_raw_parts_mut(base, len) };
            let mut layer = stratalloc::layers::Stats::new(presets::buffer_arena(bytes));
            super::run_program(&mut layer, &ops, super::no_gauge)
        });
        drop(memory);
        if let Err(error) = result {
            panic!("{error}");
        }
    }

    #[cfg(feature = "std")]
    mod with_std {
        use stratalloc::presets;

        conformance!(audited_arena, presets::audited_arena, gauged);
        // 64 KiB maps are slow to track under Miri; `chunk_over_mmap` runs the same logic.
        #[cfg(not(miri))]
        conformance!(arena, presets::arena);
        conformance!(checked_system, presets::checked_system, gauged);
        // 1 MiB arenas are slow to track under Miri; `coalesce_over_buffer` and
        // `check_over_buffer` run its layers' logic there.
        #[cfg(not(miri))]
        conformance!(
            leak_check_stack,
            <stratalloc::region::LeakCheckStack as stratalloc::Layer>::init,
            gauged
        );
    }
}
