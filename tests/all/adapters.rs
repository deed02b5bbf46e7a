//! `Heap` and `Locked` as allocators for ordinary collections, and `Locked` as a
//! `GlobalAlloc` shared between threads.

use std::alloc::Layout;

use allocator_api2::boxed::Box;
use allocator_api2::vec::Vec;
use stratalloc::layers::{Chunk, Stats};
use stratalloc::{Heap, Layer, Locked};

use crate::conformance::OwnedBuffer;

fn stack() -> Stats<Chunk<OwnedBuffer, 4096>> {
    Stats::new(Chunk::new(OwnedBuffer::new(8 << 20)))
}

#[test]
fn heap_serves_vec_box_and_hashbrown() {
    let heap = Heap::new(stack());
    {
        let mut numbers = Vec::new_in(&heap);
        let count = if cfg!(miri) { 200 } else { 10_000 };
        for i in 0..count {
            numbers.push(i);
        }
        numbers.truncate(10);
        numbers.shrink_to_fit();
        assert_eq!(numbers[..], (0..10).collect::<std::vec::Vec<_>>()[..]);

        let boxed = Box::new_in([7u64; 32], &heap);
        assert_eq!(boxed.iter().sum::<u64>(), 224);

        let mut map = hashbrown::HashMap::new_in(&heap);
        for i in 0..count {
            map.insert(i, i * 2);
        }
        assert_eq!(map[&(count / 2)], count);
        assert!(heap.gauge().live >= 3);
    }
    assert_eq!(
        heap.gauge().live,
        0,
        "every collection gave its memory back"
    );
    assert_eq!(heap.gauge().live_bytes, 0);
}

#[test]
fn zeroed_allocations_are_zero_on_reused_memory() {
    use allocator_api2::alloc::Allocator;
    let heap = Heap::new(Chunk::<_, 4096>::new(OwnedBuffer::new(1 << 16)));
    let layout = Layout::from_size_align(1000, 8).unwrap();
    let dirty = (&heap).allocate(layout).unwrap().cast::<u8>();
    // SAFETY: the block holds 1000 bytes; it is the newest, so its put hands them back.
    unsafe {
        dirty.as_ptr().write_bytes(0xAB, 1000);
        (&heap).deallocate(dirty, layout);
    }
    let block = (&heap).allocate_zeroed(layout).unwrap();
    assert_eq!(block.cast::<u8>(), dirty, "the dirty bytes were reused");
    // SAFETY: the block holds 1000 initialised (zeroed) bytes.
    assert!(unsafe { block.as_ref() }.iter().all(|&b| b == 0));
    // SAFETY: allocated above with `layout`.
    unsafe { (&heap).deallocate(block.cast(), layout) };
}

#[test]
fn locked_is_shared_between_threads() {
    let locked = Locked::new(stack());
    let per_thread = if cfg!(miri) { 50 } else { 5_000 };
    std::thread::scope(|scope| {
        for t in 0..4u64 {
            let locked = &locked;
            scope.spawn(move || {
                let mut v = Vec::new_in(locked);
                for i in 0..per_thread {
                    v.push(t * 1_000_000 + i);
                }
                assert!(
                    v.iter()
                        .enumerate()
                        .all(|(i, &x)| x == t * 1_000_000 + i as u64)
                );
            });
        }
    });
    let figures = locked.gauge();
    assert_eq!(figures.live, 0);
    assert_eq!(figures.gets, figures.puts);
    assert!(figures.gets >= 4);
}

/// `Mmap` grows in place within its last page and moves beyond it; `Locked::realloc` must
/// take both paths and keep the contents.
#[cfg(feature = "std")]
#[test]
fn locked_global_alloc_reallocates_in_place_or_by_moving() {
    use std::alloc::GlobalAlloc;
    use stratalloc::layers::Mmap;
    let locked = Locked::new(Stats::new(Mmap::new()));
    let layout = Layout::from_size_align(16, 8).unwrap();
    // SAFETY: the `GlobalAlloc` duties: non-zero sizes, pointers from this allocator.
    unsafe {
        let p = locked.alloc(layout);
        assert!(!p.is_null());
        p.write_bytes(0x11, 16);
        let q = locked.realloc(p, layout, 3000);
        assert_eq!(q, p, "grew in place inside the page");
        let r = locked.realloc(q, Layout::from_size_align(3000, 8).unwrap(), 10_000);
        assert_ne!(r, q, "moved to a bigger map");
        assert!(std::slice::from_raw_parts(r, 16).iter().all(|&b| b == 0x11));
        let s = locked.realloc(r, Layout::from_size_align(10_000, 8).unwrap(), 8);
        assert_eq!(s, r, "shrank in place");
        assert!(std::slice::from_raw_parts(s, 8).iter().all(|&b| b == 0x11));
        locked.dealloc(s, Layout::from_size_align(8, 8).unwrap());
        let z = locked.alloc_zeroed(Layout::from_size_align(64, 8).unwrap());
        assert!(std::slice::from_raw_parts(z, 64).iter().all(|&b| b == 0));
        locked.dealloc(z, Layout::from_size_align(64, 8).unwrap());
    }
    let figures = locked.gauge();
    assert_eq!((figures.live, figures.gets, figures.puts), (0, 3, 3));
}

#[test]
fn heap_prints_the_whole_stack() {
    let mut heap = Heap::new(stack());
    drop(Box::new_in(5u8, &heap));
    assert_eq!(format!("{heap:?}"), "Heap { .. }");
    let text = format!("{:?}", heap.layer_mut());
    assert!(
        text.starts_with("Stats { gauges: gets 1 (1 B), puts 1 (1 B)"),
        "{text}"
    );
    assert!(text.contains("Chunk { size: 4096, chunks: 1"), "{text}");
}

#[test]
fn stats_clear_restarts_the_counts_around_live_blocks() {
    let mut heap = Heap::new(stack());
    let kept = Box::new_in([1u64; 4], &heap);
    drop(Box::new_in(2u8, &heap));
    // Keep the block but end the borrow, so that `clear` (which needs `&mut`) can run; the
    // block goes back below through the same heap.
    let (raw, _) = Box::into_raw_with_allocator(kept);
    heap.layer_mut().clear();
    assert_eq!(
        heap.gauge(),
        stratalloc::Gauges {
            gets: 1,
            puts: 0,
            bytes_got: 32,
            bytes_put: 0,
            live: 1,
            live_bytes: 32,
            peak_bytes: 32,
        }
    );
    // SAFETY: `raw` came from `Box::new_in(.., &heap)` and is freed once, by the same heap.
    drop(unsafe { Box::from_raw_in(raw, &heap) });
    heap.layer_mut().check_invariants();
    assert_eq!(heap.gauge().live, 0);
}

/// Through the `Allocator` impl a panic may unwind (it is no global allocator there); the
/// lock goes with it, so the stack stays usable.
#[cfg(feature = "std")]
#[test]
fn a_panic_in_a_layer_under_locked_allocator_releases_the_lock() {
    use stratalloc::layers::System;
    let locked = Locked::new(crate::misuse::Panicky::<false>(System));
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        Vec::<u8, _>::with_capacity_in(8, &locked)
    }));
    assert!(caught.is_err(), "the layer panicked");
    assert!(!format!("{locked:?}").contains("held: true"), "{locked:?}");
    drop(locked.lock());
}

/// A `Vec` and a `Box` of allocator-api2 release `$api` in a `Heap` and in a `Locked`,
/// every block given back.
macro_rules! collections_of {
    ($api:ident) => {{
        use $api::boxed::Box;
        use $api::vec::Vec;
        let heap = Heap::new(stack());
        let locked = Locked::new(stack());
        {
            let mut numbers = Vec::new_in(&heap);
            numbers.extend(0..1000u32);
            let boxed = Box::new_in([3u32; 8], &heap);
            let mut shared = Vec::new_in(&locked);
            shared.extend(numbers.iter().copied());
            assert_eq!(shared.iter().sum::<u32>(), 499_500);
            assert_eq!(boxed.iter().sum::<u32>(), 24);
            assert!(heap.gauge().live >= 2);
        }
        assert_eq!(heap.gauge().live, 0, "every block went back to the heap");
        assert_eq!(
            locked.gauge().live,
            0,
            "every block went back to the locked stack"
        );
    }};
}

#[test]
fn collections_of_the_re_exported_allocator_api2() {
    use stratalloc::allocator_api2;
    collections_of!(allocator_api2);
}

#[cfg(feature = "allocator-api2-03")]
#[test]
fn collections_of_allocator_api2_0_3() {
    collections_of!(allocator_api2_03);
}

#[cfg(feature = "allocator-api2-04")]
#[test]
fn collections_of_allocator_api2_0_4() {
    collections_of!(allocator_api2_04);
}
