//! The region seed's `append` example with a composed stack: scratch vectors live in a
//! watched arena, their contents are appended to a vector outside it, and the stack's
//! gauges are printed at the end.
//!
//! Run with `cargo run --example append`.

use allocator_api2::vec::Vec as ArenaVec;
use stratalloc::layers::{Batch, Check, Chunk, Mmap, Stats};
use stratalloc::{Gauge, Heap};

/// The seed's stack: `stats(chunk(batch(check(stats(mmap))), 4096))`.
type Stack = Stats<Chunk<Batch<Check<Stats<Mmap>>>, 4096>>;

fn main() {
    let mut heap: Heap<Stack> = Heap::new(Stats::new(Chunk::new(Batch::new(Check::new(
        Stats::new(Mmap::new()),
    )))));

    let mut xs: Vec<i64> = Vec::new();
    println!("outside the arena xs: {xs:?}@{:p}", &xs);

    {
        // Scratch work in the arena; only the results are appended to `xs`, which stays
        // in the program's ordinary heap.
        let mut ys = ArenaVec::new_in(&heap);
        for i in 0..5 {
            ys.push(i);
        }
        xs.extend_from_slice(&ys);

        let mut zs = ArenaVec::new_in(&heap);
        for i in 0..5 {
            zs.push(i + i * 10);
        }
        xs.extend_from_slice(&zs);
        println!(
            "inside the arena ys: {ys:?}@{:p}, zs: {zs:?}@{:p}",
            ys.as_ptr(),
            zs.as_ptr()
        );
    }

    println!("outside the arena xs: {xs:?}@{:p}", xs.as_ptr());
    let top = heap.gauge();
    // Stats -> Chunk -> Batch -> Check -> Stats: the bottom `Stats` counts what the whole
    // stack took from the OS.
    let pages = heap.layer_mut().inner().inner().inner().inner().gauge();
    println!("program's blocks: {top}");
    println!("pages from mmap:  {pages}");
    println!("{:#?}", heap.layer_mut());
}
