//! stratalloc's adapters in std's own collections, on a nightly compiler where
//! allocator-api2 0.2's `Allocator` is `core::alloc::Allocator` (its `nightly` feature is on
//! here whatever stratalloc's features are).
#![cfg_attr(test, feature(allocator_api))]

#[cfg(test)]
mod tests {
    use stratalloc::layers::{Chunk, Stats, System};
    use stratalloc::{Heap, Locked};

    fn stack() -> Stats<Chunk<System, 4096>> {
        Stats::new(Chunk::new(System::new()))
    }

    #[test]
    fn std_collections_take_heap_and_locked() {
        let heap = Heap::new(stack());
        let locked = Locked::new(stack());
        {
            let mut numbers = Vec::new_in(&heap);
            numbers.extend(0..1000u32);
            let boxed = Box::new_in(7u64, &heap);
            let mut shared = Vec::new_in(&locked);
            shared.extend(numbers.iter().copied());
            assert_eq!(shared.iter().sum::<u32>(), 499_500);
            assert_eq!(*boxed, 7);
        }
        assert_eq!(heap.gauge().live, 0);
        assert_eq!(locked.gauge().live, 0);
    }

    /// The trait stratalloc implements is core's own.
    #[test]
    fn the_allocator_trait_is_core_s() {
        fn core_allocator<A: core::alloc::Allocator>(_: A) {}
        let heap = Heap::new(stack());
        core_allocator(&heap);
        core_allocator(&Locked::new(stack()));
    }
}
