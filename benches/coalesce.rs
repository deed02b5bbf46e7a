//! `Coalesce` over `Mmap` against talc (over one big anonymous map) and the system
//! allocator, on the large blocks it is meant for: 8 KiB - 1 MiB, 256 of them live, each
//! step freeing one picked in a scrambled order and getting a new one of another size.

use std::alloc::Layout;
use std::hint::black_box;
use std::ptr::NonNull;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use stratalloc::Layer;
use stratalloc::layers::{Coalesce, Mmap, System};

/// 4 MiB arenas, as a `malloc` replacement would use for this range; one empty arena kept
/// (the default), or four.
type Ours = Coalesce<Mmap, { 4 << 20 }>;
type OursKeep4 = Coalesce<Mmap, { 4 << 20 }, 4>;

/// talc's region: 1 GiB of address space (pages are touched only where blocks land).
const REGION: usize = 1 << 30;
/// Live blocks.
const LIVE: usize = 256;
/// Steps per iteration.
const STEPS: usize = 2048;

/// The operations every subject runs.
trait Subject {
    fn get(&mut self, layout: Layout) -> NonNull<u8>;
    fn put(&mut self, block: NonNull<u8>, layout: Layout);
}

impl<L: Layer> Subject for L {
    fn get(&mut self, layout: Layout) -> NonNull<u8> {
        Layer::get(self, layout).expect("memory")
    }
    fn put(&mut self, block: NonNull<u8>, layout: Layout) {
        // SAFETY: the workload puts each block once, with its layout.
        unsafe { Layer::put(self, block, layout) }
    }
}

struct PeerTalc {
    talc: talc::Talc<talc::ErrOnOom>,
    _memory: memmap2::MmapMut,
}

impl PeerTalc {
    fn new() -> Self {
        let mut memory = memmap2::MmapMut::map_anon(REGION).expect("map");
        let mut talc = talc::Talc::new(talc::ErrOnOom);
        // SAFETY: the map is ours, lives as long as the heap (same struct), and is used by
        // nothing else.
        unsafe {
            talc.claim(talc::Span::from_base_size(memory.as_mut_ptr(), REGION))
                .expect("claim");
        }
        PeerTalc {
            talc,
            _memory: memory,
        }
    }
}

impl Subject for PeerTalc {
    fn get(&mut self, layout: Layout) -> NonNull<u8> {
        // SAFETY: the workload asks for non-zero sizes.
        unsafe { self.talc.malloc(layout) }.expect("room in the region")
    }
    fn put(&mut self, block: NonNull<u8>, layout: Layout) {
        // SAFETY: the workload puts each block once, with its layout.
        unsafe { self.talc.free(block, layout) }
    }
}

/// Sizes from 8 KiB to 1 MiB, spread evenly over the 7 doublings (a cheap deterministic
/// sequence), so that small sizes are as common as in a real program's large range.
fn layout(i: usize) -> Layout {
    let hash = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let doubling = (hash >> 40) % 7;
    let base = 8192usize << doubling;
    let size = base + (hash >> 16) % base;
    Layout::from_size_align(size.min(1 << 20), 16).unwrap()
}

/// `STEPS` free/get steps with `LIVE` blocks live, freed in a scrambled order; each new
/// block is written at its start and its end.
fn steps(subject: &mut impl Subject, live: &mut Vec<(NonNull<u8>, Layout)>, seed: &mut usize) {
    for _ in 0..STEPS {
        *seed += 1;
        let i = *seed;
        let slot = (i * 97) % LIVE;
        if live.len() == LIVE {
            let (block, layout) = live[slot];
            subject.put(block, layout);
        }
        let layout = layout(i);
        let block = subject.get(layout);
        // SAFETY: a fresh block of `layout.size()` bytes.
        unsafe {
            block.as_ptr().write(i as u8);
            block.as_ptr().add(layout.size() - 1).write(i as u8);
        }
        if live.len() == LIVE {
            live[slot] = (black_box(block), layout);
        } else {
            live.push((black_box(block), layout));
        }
    }
}

fn run(c: &mut Criterion, name: &str, mut subject: impl Subject) {
    let mut live = Vec::with_capacity(LIVE);
    let mut seed = 0;
    let mut g = c.benchmark_group("coalesce_large_blocks");
    g.sample_size(20).measurement_time(Duration::from_secs(4));
    g.bench_function(name, |bench| {
        bench.iter(|| steps(&mut subject, &mut live, &mut seed))
    });
    g.finish();
    for (block, layout) in live.drain(..) {
        subject.put(block, layout);
    }
}

fn large_blocks(c: &mut Criterion) {
    run(c, "stratalloc_coalesce_over_mmap", Ours::new(Mmap::new()));
    run(
        c,
        "stratalloc_coalesce_keep4_over_mmap",
        OursKeep4::new(Mmap::new()),
    );
    run(c, "talc", PeerTalc::new());
    run(c, "system", System::new());
}

criterion_group!(benches, large_blocks);
criterion_main!(benches);
