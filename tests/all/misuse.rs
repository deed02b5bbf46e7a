//! Misuse a layer cannot survive (double put, wrong layout, a stranger's pointer): one line
//! on stderr naming the address and layout, then abort. Each runs in a child process.

#[cfg(feature = "std")]
use std::{alloc::Layout, ptr::NonNull};

#[cfg(feature = "std")]
use stratalloc::{Layer, layers::System};

/// A layer that breaks the contract: its `get` (or, with `PUT`, its `put`) panics.
#[cfg(feature = "std")]
pub(crate) struct Panicky<const PUT: bool>(pub(crate) System);

// SAFETY: none; the layer panics on purpose. The blocks it does hand out are `System`'s.
#[cfg(feature = "std")]
unsafe impl<const PUT: bool> Layer for Panicky<PUT> {
    fn get(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        if !PUT {
            panic!("a layer whose get panics");
        }
        self.0.get(layout)
    }

    unsafe fn put(&mut self, _: NonNull<u8>, _: Layout) {
        panic!("a layer whose put panics");
    }

    fn init() -> Self {
        Panicky(System)
    }

    fn deinit(&mut self) {}
}

#[cfg(feature = "std")]
mod aborts {
    use std::alloc::{GlobalAlloc, Layout};
    use std::ptr::NonNull;

    use stratalloc::layers::{
        Batch, Bitset, Buddy, Check, Chunk, Coalesce, Mmap, Slab, Stats, System,
    };
    use stratalloc::{Layer, Locked};

    use super::Panicky;

    /// The child side: does nothing unless started by `run_child`.
    #[test]
    fn child() {
        let Some(scenario) = crate::child_scenario() else {
            return;
        };
        let layout = Layout::from_size_align(24, 8).unwrap();
        let mut check = Check::new(System);
        let block = check.get(layout).unwrap();
        // SAFETY: none — each scenario breaks `put`'s contract on purpose, and `Check` must
        // catch it before the layer below is touched.
        unsafe {
            match scenario.as_str() {
                "double_put" => {
                    check.put(block, layout);
                    check.put(block, layout);
                }
                "wrong_size" => check.put(block, Layout::from_size_align(32, 8).unwrap()),
                "wrong_align" => check.put(block, Layout::from_size_align(24, 16).unwrap()),
                "stranger" => {
                    let mut local = 0u64;
                    check.put(NonNull::from(&mut local).cast(), layout);
                }
                "mmap_stranger" => {
                    let mut mmap = Mmap::new();
                    let mut local = 0u64;
                    mmap.put(NonNull::from(&mut local).cast(), layout);
                }
                "coalesce_double_put" => {
                    let mut heap = Coalesce::<_, 65536>::new(System);
                    let a = heap.get(Layout::from_size_align(1000, 8).unwrap()).unwrap();
                    let _b = heap.get(Layout::from_size_align(1000, 8).unwrap()).unwrap();
                    heap.put_unsized(a);
                    heap.put_unsized(a);
                }
                "coalesce_large_double_put" => {
                    // `Batch` keeps the piece's memory after its put, so the second put
                    // reads the header that the first one left.
                    let mut heap = Coalesce::<_, 65536>::new(Batch::new(System));
                    let big = heap
                        .get(Layout::from_size_align(1 << 17, 8).unwrap())
                        .unwrap();
                    heap.put_unsized(big);
                    heap.put_unsized(big);
                }
                "coalesce_grow_of_a_put_block" | "coalesce_usable_size_of_a_put_block" => {
                    // `b` merges into its free neighbours on both sides; its own header,
                    // inside the merged free block, still reads "in use".
                    let mut heap = Coalesce::<_, 65536>::new(System);
                    let layout = Layout::from_size_align(1000, 8).unwrap();
                    let [l, b, r, _x] = [0; 4].map(|_| heap.get(layout).unwrap());
                    heap.put(r, layout);
                    heap.put(l, layout);
                    heap.put(b, layout);
                    if scenario == "coalesce_grow_of_a_put_block" {
                        // Unnoticed, this takes `r`'s old header off a bin it is not on and
                        // hands `b` out again inside the free block `l..`.
                        let grown = heap.grow(b, layout, Layout::from_size_align(2000, 8).unwrap());
                        let whole = heap.get(Layout::from_size_align(3000, 8).unwrap());
                        eprintln!("grown in place: {grown}; then got {whole:?} for {l:p}");
                    } else {
                        eprintln!("usable size {}", heap.usable_size(b));
                    }
                }
                "reserve_stranger" => {
                    // A granule-aligned block of another layer, put to the shared range:
                    // unnoticed, it goes on the free stack and the next get hands it out.
                    let mut reserve = stratalloc::layers::Reserve::new();
                    let one = Layout::from_size_align(16384, 16384).unwrap();
                    let _ours = reserve.get(one).unwrap();
                    let foreign = System.get(one).unwrap();
                    reserve.put(foreign, one);
                    let again = reserve.get(one);
                    eprintln!("Reserve handed out {again:?}; the foreign block is {foreign:p}");
                }
                "coalesce_stranger" => {
                    let mut heap = Coalesce::<_, 65536>::new(System);
                    // A 16-aligned pointer with 16 readable bytes before it that are not
                    // one of our headers.
                    let mut local = [0x5au128; 4];
                    heap.put_unsized(NonNull::from(&mut local[2]).cast());
                }
                "coalesce_corrupt_neighbour" => {
                    let mut heap = Coalesce::<_, 65536>::new(System);
                    let layout = Layout::from_size_align(1000, 8).unwrap();
                    let a = heap.get(layout).unwrap();
                    let b = heap.get(layout).unwrap();
                    // An overrun of `a` that tramples `b`'s header, seen when `a` is put and
                    // looks at its right neighbour.
                    a.as_ptr().write_bytes(0xEE, 1024);
                    let _ = b;
                    heap.put(a, layout);
                }
                "buddy_cached_double_put" => {
                    let mut heap = Buddy::<_, 4, 16>::new(Mmap::new());
                    let a = heap.get(layout).unwrap();
                    let _b = heap.get(layout).unwrap();
                    heap.put(a, layout);
                    heap.put(a, layout);
                }
                "buddy_merged_double_put" => {
                    let mut heap = Buddy::<_, 4, 16, 0>::new(Mmap::new());
                    let a = heap.get(layout).unwrap();
                    let _b = heap.get(layout).unwrap();
                    heap.put(a, layout);
                    heap.put(a, layout);
                }
                "bitset_cached_double_put" => {
                    let mut heap = Bitset::<_, 16, 65536>::new(Mmap::new());
                    let a = heap.get(layout).unwrap();
                    heap.put(a, layout);
                    heap.put(a, layout);
                }
                "bitset_cached_put_again_smaller" => {
                    let mut heap = Bitset::<_, 16, 65536>::new(Mmap::new());
                    let long = Layout::from_size_align(48, 8).unwrap();
                    let a = heap.get(long).unwrap();
                    heap.put(a, long);
                    heap.put(a, layout);
                }
                "buddy_stranger" => {
                    // A live block of another `Buddy`: its arena's bitmaps say "in use", so
                    // unnoticed the put caches it, and the next get hands it out again
                    // while its owner still uses it.
                    let mut ours = Buddy::<_, 4, 16>::new(Mmap::new());
                    let mut theirs = Buddy::<_, 4, 16>::new(Mmap::new());
                    let _mine = ours.get(layout).unwrap();
                    let foreign = theirs.get(layout).unwrap();
                    ours.put(foreign, layout);
                    let again = ours.get(layout);
                    eprintln!("Buddy handed out {again:?}; the foreign block is {foreign:p}");
                }
                "bitset_stranger" => {
                    let mut ours = Bitset::<_, 16, 65536>::new(Mmap::new());
                    let mut theirs = Bitset::<_, 16, 65536>::new(Mmap::new());
                    let _mine = ours.get(layout).unwrap();
                    let foreign = theirs.get(layout).unwrap();
                    ours.put(foreign, layout);
                    let again = ours.get(layout);
                    eprintln!("Bitset handed out {again:?}; the foreign block is {foreign:p}");
                }
                "chunk_large_double_put" => {
                    // `Batch` keeps the pieces' memory after their put, so the second put
                    // reads the header that the first one left: unnoticed, it takes the
                    // large list's head away (`b` is never returned by `deinit`), counts
                    // one large block fewer again, and puts the piece to `L` a second time.
                    let mut heap = Chunk::<_, 4096>::new(Batch::new(System));
                    let big = Layout::from_size_align(8192, 8).unwrap();
                    let a = heap.get(big).unwrap();
                    let _b = heap.get(big).unwrap();
                    heap.put(a, big);
                    heap.put(a, big);
                    eprintln!("large blocks now: {}", heap.large_blocks());
                }
                "grow_that_shrinks" => {
                    let mut heap = Stats::new(System);
                    let a = heap.get(layout).unwrap();
                    heap.grow(a, layout, Layout::from_size_align(16, 8).unwrap());
                }
                "shrink_that_realigns" => {
                    let mut heap = Buddy::<_, 4, 16>::new(Mmap::new());
                    let a = heap.get(layout).unwrap();
                    heap.shrink(a, layout, Layout::from_size_align(16, 16).unwrap());
                }
                "default_grow_that_realigns" => {
                    let mut heap = System;
                    let a = heap.get(layout).unwrap();
                    heap.grow(a, layout, Layout::from_size_align(32, 16).unwrap());
                }
                "put_off_the_block" => {
                    let mut heap = Slab::<_>::new(Mmap::new());
                    let aligned = Layout::from_size_align(24, 16).unwrap();
                    let a = heap.get(aligned).unwrap();
                    heap.put(a.add(8), aligned);
                }
                "locked_get_panics" => {
                    let locked = Locked::new(Panicky::<false>(System));
                    locked.alloc(layout);
                }
                "locked_put_panics" => {
                    // The free is parked; the next allocation makes it.
                    let locked = Locked::new(Panicky::<true>(System));
                    let p = locked.alloc(layout);
                    locked.dealloc(p, layout);
                    locked.alloc(layout);
                }
                "locked_entered_again" => {
                    let locked = Locked::new(System);
                    let _guard = locked.lock();
                    locked.alloc(layout);
                }
                other => panic!("unknown scenario {other}"),
            }
        }
        unreachable!("the misuse was not caught");
    }

    /// Runs the child for `scenario` and checks that it aborted with one line saying
    /// `message`; a child that runs for a minute is killed and counts as hung.
    fn expect_abort(scenario: &str, message: &str) {
        let output = crate::run_child_within(
            "misuse::aborts::child",
            scenario,
            std::time::Duration::from_secs(60),
        )
        .unwrap_or_else(|| panic!("{scenario}: the child hung"));
        crate::assert_aborted_with(&output, message);
    }

    #[test]
    #[cfg_attr(miri, ignore = "Miri cannot start processes")]
    fn check_aborts_on_double_put() {
        expect_abort("double_put", "Check: double put of 0x");
        expect_abort("double_put", "(size 24, align 8): it was already put");
    }

    #[test]
    #[cfg_attr(miri, ignore = "Miri cannot start processes")]
    fn check_aborts_on_wrong_size() {
        expect_abort(
            "wrong_size",
            "with size 32, align 8, but it was got with size 24, align 8",
        );
    }

    #[test]
    #[cfg_attr(miri, ignore = "Miri cannot start processes")]
    fn check_aborts_on_wrong_alignment() {
        expect_abort(
            "wrong_align",
            "with size 24, align 16, but it was got with size 24, align 8",
        );
    }

    #[test]
    #[cfg_attr(miri, ignore = "Miri cannot start processes")]
    fn check_aborts_on_a_pointer_it_never_handed_out() {
        expect_abort("stranger", "which is not a live block of this layer");
    }

    #[test]
    #[cfg_attr(miri, ignore = "Miri cannot start processes")]
    #[cfg_attr(
        not(debug_assertions),
        ignore = "Buddy checks puts in debug builds only"
    )]
    fn buddy_aborts_on_a_double_put_of_a_cached_block() {
        expect_abort("buddy_cached_double_put", "which is already put (cached)");
    }

    #[test]
    #[cfg_attr(miri, ignore = "Miri cannot start processes")]
    #[cfg_attr(
        not(debug_assertions),
        ignore = "Buddy checks puts in debug builds only"
    )]
    fn buddy_aborts_on_a_double_put_of_a_free_block() {
        expect_abort("buddy_merged_double_put", "which is already free");
    }

    #[test]
    #[cfg_attr(miri, ignore = "Miri cannot start processes")]
    #[cfg_attr(
        not(debug_assertions),
        ignore = "Bitset checks puts in debug builds only"
    )]
    fn bitset_aborts_on_a_double_put_of_a_cached_run() {
        expect_abort("bitset_cached_double_put", "which is already put (cached)");
    }

    #[test]
    #[cfg_attr(miri, ignore = "Miri cannot start processes")]
    #[cfg_attr(
        not(debug_assertions),
        ignore = "Bitset checks puts in debug builds only"
    )]
    fn bitset_aborts_on_a_second_put_of_a_cached_run_with_another_size() {
        expect_abort(
            "bitset_cached_put_again_smaller",
            "which is already put (cached)",
        );
    }

    #[test]
    #[cfg_attr(miri, ignore = "Miri cannot start processes")]
    fn coalesce_aborts_on_double_put() {
        expect_abort(
            "coalesce_double_put",
            "which is already free (a double put?)",
        );
    }

    #[test]
    #[cfg_attr(miri, ignore = "Miri cannot start processes")]
    fn coalesce_aborts_on_a_large_block_put_twice() {
        expect_abort(
            "coalesce_large_double_put",
            "which is already free (a double put?)",
        );
    }

    /// A block of another arena layer (here a live block of a second `Buddy` or `Bitset`)
    /// put to one: its metadata, found by masking the address, is another layer's and says
    /// "in use", so the double-put checks pass it; the layer must see that the address is in
    /// none of its arenas rather than cache it and hand it out again.
    #[test]
    #[cfg_attr(miri, ignore = "Miri cannot start processes")]
    #[cfg_attr(
        not(debug_assertions),
        ignore = "Buddy and Bitset check puts in debug builds only"
    )]
    fn buddy_and_bitset_abort_on_a_block_of_another_layer() {
        expect_abort("buddy_stranger", "Buddy: put of 0x");
        expect_abort("buddy_stranger", "which is in none of this layer's arenas");
        expect_abort("bitset_stranger", "Bitset: put of 0x");
        expect_abort("bitset_stranger", "which is in none of this layer's arenas");
    }

    /// A large block of `Chunk` put twice: its header, still there for the second put, is
    /// no longer on the large list.
    #[test]
    #[cfg_attr(miri, ignore = "Miri cannot start processes")]
    #[cfg_attr(
        not(debug_assertions),
        ignore = "Chunk checks puts in debug builds only"
    )]
    fn chunk_aborts_on_a_large_block_put_twice() {
        expect_abort("chunk_large_double_put", "Chunk: put of 0x");
        expect_abort(
            "chunk_large_double_put",
            "(size 8192, align 8), a large block not on the large list (a double put?)",
        );
    }

    /// `Reserve`, as `Mmap`, refuses a block that is not in its range (in release builds
    /// too: the debug-only alignment check lets any granule-aligned block through).
    #[test]
    #[cfg_attr(miri, ignore = "Miri cannot start processes")]
    fn reserve_aborts_on_a_pointer_it_never_handed_out() {
        expect_abort("reserve_stranger", "which is not a block of this range");
    }

    /// A block put, whose header a merge left behind inside a free block, is no live block
    /// to `grow` (C's `realloc`) or `usable_size` either: they abort as `put` does.
    #[test]
    #[cfg_attr(miri, ignore = "Miri cannot start processes")]
    fn coalesce_aborts_on_a_resize_or_size_of_a_block_put() {
        for scenario in [
            "coalesce_grow_of_a_put_block",
            "coalesce_usable_size_of_a_put_block",
        ] {
            expect_abort(
                scenario,
                "Coalesce: heap corrupted: a broken header next to",
            );
        }
    }

    #[test]
    #[cfg_attr(miri, ignore = "Miri cannot start processes")]
    fn coalesce_aborts_on_a_header_that_is_not_its_own() {
        expect_abort(
            "coalesce_stranger",
            "whose header is not one of this layer's",
        );
    }

    #[test]
    #[cfg_attr(miri, ignore = "Miri cannot start processes")]
    fn coalesce_aborts_on_a_trampled_header() {
        // With `paranoid`, the walk at the top of the put meets the header first.
        let message = if cfg!(feature = "paranoid") {
            "Coalesce invariant broken: "
        } else {
            "Coalesce: heap corrupted: a broken header next to the block at 0x"
        };
        expect_abort("coalesce_corrupt_neighbour", message);
    }

    #[test]
    #[cfg_attr(miri, ignore = "Miri cannot start processes")]
    fn mmap_aborts_on_a_pointer_it_never_handed_out() {
        expect_abort("mmap_stranger", "Mmap: put of 0x");
    }

    /// The duties of `grow`, `shrink` and `put` that the arguments show are checked in debug
    /// builds, with one wording for every layer (the default methods included).
    #[test]
    #[cfg_attr(miri, ignore = "Miri cannot start processes")]
    #[cfg_attr(not(debug_assertions), ignore = "duty checks run in debug builds only")]
    fn broken_duties_of_resizes_and_puts_abort_with_one_wording() {
        expect_abort("grow_that_shrinks", "Stats: grow of 0x");
        expect_abort(
            "grow_that_shrinks",
            "(size 24, align 8) to size 16, align 8: the new size is below the old one (a \
             caller duty of Layer::grow)",
        );
        expect_abort(
            "shrink_that_realigns",
            "to size 16, align 16: the alignment changes (a caller duty of Layer::shrink)",
        );
        expect_abort("default_grow_that_realigns", "System: grow of 0x");
        expect_abort(
            "put_off_the_block",
            "(size 24, align 16): the block is not aligned to the layout, so the layout does not \
             fit it (a caller duty of Layer::put)",
        );
    }

    /// A panic must not unwind out of `GlobalAlloc` (undefined behaviour): `Locked` guards
    /// every layer call it makes there, the parked puts included.
    #[test]
    #[cfg_attr(miri, ignore = "Miri cannot start processes")]
    fn locked_aborts_when_a_layer_panics_inside_global_alloc() {
        expect_abort(
            "locked_get_panics",
            "misuse::Panicky<false>::get` panicked inside the allocator",
        );
        expect_abort(
            "locked_put_panics",
            "misuse::Panicky<true>::put` panicked inside the allocator",
        );
    }

    /// An allocation by the thread that holds the lock would spin forever.
    #[test]
    #[cfg_attr(miri, ignore = "Miri cannot start processes")]
    fn locked_aborts_when_the_lock_holder_allocates_through_it() {
        expect_abort(
            "locked_entered_again",
            "System>` was entered again by the thread that holds its lock",
        );
    }
}

/// Without `os` (or `std`) there is no abort to call: the same misuse raises a panic.
#[cfg(not(feature = "os"))]
mod panics {
    use std::alloc::Layout;

    use stratalloc::Layer;
    use stratalloc::layers::Check;

    #[test]
    #[should_panic(expected = "Check: double put of")]
    fn check_panics_on_double_put() {
        let mut check = Check::new(crate::conformance::OwnedBuffer::new(4096));
        let layout = Layout::new::<u64>();
        let block = check.get(layout).unwrap();
        // SAFETY: the second put breaks the contract on purpose; `Check` catches it.
        unsafe {
            check.put(block, layout);
            check.put(block, layout);
        }
    }
}
