//! `Buddy` against buddy_system_allocator and `Bitset` against talc, each over one big
//! region of anonymous memory: alloc/free pairs with a window of live blocks, and 64Ki live
//! blocks allocated and then freed in scrambled order; `Bitset` and talc also with a
//! million (2^20) live blocks. (At a million live blocks buddy_system_allocator, whose frees
//! search a linked list for the buddy, does not finish in minutes.)

use std::alloc::Layout;
use std::hint::black_box;
use std::ptr::NonNull;

use criterion::{Criterion, criterion_group, criterion_main};
use stratalloc::Layer;
use stratalloc::layers::{Bitset, Buddy, Mmap};

/// The region every allocator works in: 256 MiB.
const REGION_ORDER: u32 = 28;
const REGION: usize = 1 << REGION_ORDER;

/// Live blocks in the second workload.
const MANY: usize = 1 << 16;
/// Live blocks in the third (`Bitset` and talc only).
const MILLION: usize = 1 << 20;

/// One arena as big as the peers' region, blocks of 16 bytes and up.
type OurBuddy = Buddy<Mmap, 4, REGION_ORDER>;
type OurBitset = Bitset<Mmap, 16, REGION>;

/// The operations both sides of a comparison run.
trait Subject {
    fn get(&mut self, layout: Layout) -> NonNull<u8>;
    fn put(&mut self, block: NonNull<u8>, layout: Layout);
}

impl<L: Layer> Subject for L {
    fn get(&mut self, layout: Layout) -> NonNull<u8> {
        Layer::get(self, layout).expect("room in the region")
    }
    fn put(&mut self, block: NonNull<u8>, layout: Layout) {
        // SAFETY: the workloads put each block once, with its layout.
        unsafe { Layer::put(self, block, layout) }
    }
}

struct PeerBuddy {
    heap: buddy_system_allocator::Heap<33>,
    _memory: memmap2::MmapMut,
}

impl PeerBuddy {
    fn new() -> Self {
        let mut memory = memmap2::MmapMut::map_anon(REGION).expect("map");
        let mut heap = buddy_system_allocator::Heap::<33>::new();
        // SAFETY: the map is ours, lives as long as the heap (same struct), and is used by
        // nothing else.
        unsafe { heap.init(memory.as_mut_ptr() as usize, REGION) };
        PeerBuddy {
            heap,
            _memory: memory,
        }
    }
}

impl Subject for PeerBuddy {
    fn get(&mut self, layout: Layout) -> NonNull<u8> {
        self.heap.alloc(layout).expect("room in the region")
    }
    fn put(&mut self, block: NonNull<u8>, layout: Layout) {
        self.heap.dealloc(block, layout)
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
        // SAFETY: as for `PeerBuddy`.
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
        // SAFETY: the workloads ask for non-zero sizes.
        unsafe { self.talc.malloc(layout) }.expect("room in the region")
    }
    fn put(&mut self, block: NonNull<u8>, layout: Layout) {
        // SAFETY: the workloads put each block once, with its layout.
        unsafe { self.talc.free(block, layout) }
    }
}

/// Sizes 16-256 bytes from a cheap deterministic sequence.
fn layout(i: usize) -> Layout {
    Layout::from_size_align(16 + (i.wrapping_mul(2_654_435_761) >> 7) % 241, 8).unwrap()
}

/// 4096 alloc/free steps with 256 blocks live, freed in a scrambled order.
fn pairs(subject: &mut impl Subject, live: &mut Vec<(NonNull<u8>, Layout)>) {
    for i in 0..4096 {
        // Once 256 blocks are live, each step frees the one in a slot that cycles through
        // all 256 in a scrambled order, and puts the new block there. (Not `swap_remove`:
        // its 16-byte read of the element pushed one step earlier stalls on store
        // forwarding, which took most of the loop's time for every allocator alike.)
        let slot = (i * 97) % 256;
        if live.len() == 256 {
            let (block, layout) = live[slot];
            subject.put(block, layout);
        }
        let layout = layout(i);
        let block = subject.get(layout);
        // SAFETY: a fresh block of at least one byte.
        unsafe { block.as_ptr().write(i as u8) };
        if live.len() == 256 {
            live[slot] = (black_box(block), layout);
        } else {
            live.push((black_box(block), layout));
        }
    }
}

/// `count` (a power of two) blocks of 16-64 bytes allocated, then freed in a scrambled
/// order. Each block is stored in a scrambled slot and the frees walk the slots in order,
/// so that the harness's own loads are sequential and the time is the allocator's (reading
/// the slots in a scrambled order instead made a cache miss per free, the same for both
/// sides, most of the time measured).
fn many_live(subject: &mut impl Subject, live: &mut Vec<(NonNull<u8>, Layout)>, count: usize) {
    live.resize(count, (NonNull::dangling(), Layout::new::<u8>()));
    let mut at = 0usize;
    for i in 0..count {
        at = (at + 40_503) % count; // odd, so coprime with 2^k: visits every index once
        let layout = Layout::from_size_align(16 + (i * 7) % 49, 8).unwrap();
        live[at] = (subject.get(layout), layout);
    }
    for &(block, layout) in live.iter() {
        subject.put(block, layout);
    }
    live.clear();
}

/// The workloads, ours then the peer's in each group; with `million`, the million-live one
/// too.
fn compare<A: Subject, B: Subject>(
    c: &mut Criterion,
    group: &str,
    (ours, mut a): (&str, A),
    (peer, mut b): (&str, B),
    million: bool,
) {
    let mut live = Vec::with_capacity(if million { MILLION } else { MANY });
    let mut g = c.benchmark_group(format!("{group}_pairs"));
    g.bench_function(ours, |bench| bench.iter(|| pairs(&mut a, &mut live)));
    for (block, layout) in live.drain(..) {
        a.put(block, layout);
    }
    g.bench_function(peer, |bench| bench.iter(|| pairs(&mut b, &mut live)));
    for (block, layout) in live.drain(..) {
        b.put(block, layout);
    }
    g.finish();
    let mut g = c.benchmark_group(format!("{group}_many_live"));
    g.sample_size(10);
    g.bench_function(ours, |bench| {
        bench.iter(|| many_live(&mut a, &mut live, MANY))
    });
    g.bench_function(peer, |bench| {
        bench.iter(|| many_live(&mut b, &mut live, MANY))
    });
    g.finish();
    if million {
        let mut g = c.benchmark_group(format!("{group}_million_live"));
        g.sample_size(10);
        g.bench_function(ours, |bench| {
            bench.iter(|| many_live(&mut a, &mut live, MILLION))
        });
        g.bench_function(peer, |bench| {
            bench.iter(|| many_live(&mut b, &mut live, MILLION))
        });
        g.finish();
    }
}

fn buddy(c: &mut Criterion) {
    compare(
        c,
        "buddy",
        ("stratalloc_buddy", OurBuddy::new(Mmap::new())),
        ("buddy_system_allocator", PeerBuddy::new()),
        false,
    );
}

fn bitset(c: &mut Criterion) {
    compare(
        c,
        "bitset",
        ("stratalloc_bitset", OurBitset::new(Mmap::new())),
        ("talc", PeerTalc::new()),
        true,
    );
}

criterion_group!(benches, buddy, bitset);
criterion_main!(benches);
