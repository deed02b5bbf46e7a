//! `Heap` and `Locked` as allocators for ordinary collections, and `Locked` as a
//! `GlobalAlloc` shared between threads.

use std::alloc::{GlobalAlloc, Layout};

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
    let heap = Heap::new(Chunk::<_, 4096>::new(OwnedBuffer::new(1 << 16)));
    {
        let mut dirty = Vec::new_in(&heap);
        dirty.resize(1000, 0xABu8);
    }
    let zeroed: Vec<u8, _> = {
        let mut v = Vec::with_capacity_in(1000, &heap);
        v.resize(1000, 0);
        v
    };
    assert!(zeroed.iter().all(|&b| b == 0));
    use allocator_api2::alloc::Allocator;
    let layout = Layout::from_size_align(1000, 8).unwrap();
    let block = (&heap).allocate_zeroed(layout).unwrap();
    // SAFETY: the block holds 1000 initialised (zeroed) bytes.
    let bytes = unsafe { block.as_ref() };
    assert!(bytes.iter().all(|&b| b == 0));
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

#[test]
fn locked_global_alloc_reallocates_in_place_or_by_moving() {
    let locked = Locked::new(stack());
    let layout = Layout::from_size_align(16, 8).unwrap();
    // SAFETY: the `GlobalAlloc` duties: non-zero sizes, pointers from this allocator.
    unsafe {
        let p = locked.alloc(layout);
        assert!(!p.is_null());
        p.write_bytes(0x11, 16);
        let q = locked.realloc(p, layout, 5000);
        assert!(!q.is_null());
        assert!(std::slice::from_raw_parts(q, 16).iter().all(|&b| b == 0x11));
        let big = Layout::from_size_align(5000, 8).unwrap();
        let r = locked.realloc(q, big, 8);
        assert!(std::slice::from_raw_parts(r, 8).iter().all(|&b| b == 0x11));
        locked.dealloc(r, Layout::from_size_align(8, 8).unwrap());
        let z = locked.alloc_zeroed(Layout::from_size_align(64, 8).unwrap());
        assert!(std::slice::from_raw_parts(z, 64).iter().all(|&b| b == 0));
        locked.dealloc(z, Layout::from_size_align(64, 8).unwrap());
    }
    assert_eq!(locked.gauge().live, 0);
    let mut stack = locked.into_inner();
    stack.deinit();
}

#[test]
fn heap_prints_the_whole_stack() {
    let heap = Heap::new(stack());
    drop(Box::new_in(5u8, &heap));
    let text = format!("{heap:?}");
    assert!(
        text.starts_with("Heap(Stats { gauges: gets 1 (1 B), puts 1 (1 B)"),
        "{text}"
    );
    assert!(text.contains("Chunk { size: 4096, chunks: 1"), "{text}");
}
