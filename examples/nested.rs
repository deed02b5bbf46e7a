//! The region seed's nested example: a block made in an inner region is stored in an
//! object of the outer one, and the inner region ends while the outer object still holds
//! it. In the seed that left a dangling pointer; here the inner region keeps that memory
//! (it becomes a zombie, reported on stderr) until the block is freed.
//!
//! Run with `cargo run --example nested`.

use stratalloc::layers::{Chunk, Mmap, Stats};
use stratalloc::{Region, Router, region};

#[global_allocator]
static ROUTER: Router = Router::new();

fn main() {
    // Lazily made globals (stdout's buffer here) are allocated by whichever region is
    // current at their first use and then outlive it: make them before entering.
    println!("the seed's nested example, made safe");
    let outer = Region::new(Stats::new(Chunk::<_, 65536>::new(Mmap::new())));
    region::enter(&outer, || {
        // An object of the outer region.
        let mut names: Vec<String> = Vec::with_capacity(4);
        names.push(String::from("made in the outer region"));
        {
            let inner = Region::new(Stats::new(Chunk::<_, 65536>::new(Mmap::new())));
            region::enter(&inner, || {
                // A block of the inner region, stored into the outer object.
                names.push(format!("made in the inner region ({} bytes)", 33));
            });
            println!("inner region before it ends: {}", inner.gauge());
            // `inner` ends here with one block still live: it keeps that memory.
        }
        // The outer object still reads its inner string safely.
        for name in &names {
            println!("  {name}");
        }
        // Freeing it reaches the (zombie) inner region, which then releases its memory.
        names.pop();
        names.push(String::from("replaced in the outer region"));
        println!("outer object now: {names:?}");
    });
    println!("outer region after the closure: {}", outer.gauge());
}
