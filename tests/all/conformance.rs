//! The conformance suite: proptest programs of gets, puts and in-place resizes, run against
//! every layer and every named stack by `conformance!`.
//!
//! Each block is filled with its own byte when got and verified before it is put or
//! resized; no two live blocks may overlap; alignment (the layout's and the layer's
//! `MIN_ALIGN`) is honoured; `ZEROED` layers hand out zeroes; `check_invariants` holds after
//! every step; and a `Stats` wrapped around the layer (plus the layer's own gauge, when it
//! has one) reports exactly what a model of the program predicts.

use std::alloc::Layout;
use std::collections::BTreeMap;
use std::ptr::NonNull;

use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestRunner};
use stratalloc::layers::Stats;
use stratalloc::{Gauge, Gauges, Layer};

/// One step of a program.
#[derive(Clone, Debug)]
pub enum Op {
    /// Get a block of `size` bytes aligned to `1 << align_log2`.
    Get { size: usize, align_log2: u32 },
    /// Put the live block picked by `pick` (modulo the number of live blocks).
    Put { pick: usize },
    /// Try to resize the picked block in place to `size` bytes (grow or shrink).
    Resize { pick: usize, size: usize },
    /// Take a window for a block of `size` bytes aligned to `1 << align_log2`, from layers
    /// that give windows; the whole window is then held, filled and verified like a block,
    /// and never put.
    Window { size: usize, align_log2: u32 },
}

const MAX_SIZE: usize = if cfg!(miri) { 4096 } else { 65536 };
const MAX_OPS: usize = if cfg!(miri) { 32 } else { 96 };

fn size() -> impl Strategy<Value = usize> {
    prop_oneof![4 => 0..=64usize, 3 => 0..=1024usize, 1 => 0..=MAX_SIZE]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (size(), 0..=12u32).prop_map(|(size, align_log2)| Op::Get { size, align_log2 }),
        3 => any::<usize>().prop_map(|pick| Op::Put { pick }),
        1 => (any::<usize>(), size()).prop_map(|(pick, size)| Op::Resize { pick, size }),
        1 => (size(), 0..=12u32).prop_map(|(size, align_log2)| Op::Window { size, align_log2 }),
    ]
}

/// A program of gets, puts and resizes.
pub fn program() -> impl Strategy<Value = Vec<Op>> {
    proptest::collection::vec(op(), 1..=MAX_OPS)
}

struct Live {
    ptr: NonNull<u8>,
    layout: Layout,
    byte: u8,
}

/// A window taken from the layer: held to the end of the program, never put.
struct Window {
    block: Live,
}

fn extent(live: &Live) -> (usize, usize) {
    let start = live.ptr.as_ptr().addr();
    (start, start + live.layout.size().max(1))
}

/// The bytes a block holds: its size, or the one byte a zero-size request gets.
fn held(layout: Layout) -> usize {
    layout.size().max(1)
}

fn fill(live: &Live) {
    // SAFETY: the block is live and holds `held(layout)` bytes.
    unsafe { live.ptr.as_ptr().write_bytes(live.byte, held(live.layout)) }
}

fn verify(live: &Live, len: usize) -> Result<(), TestCaseError> {
    // SAFETY: the block is live and holds at least `len` bytes.
    let bytes = unsafe { std::slice::from_raw_parts(live.ptr.as_ptr(), len) };
    let pattern = [live.byte; 4096];
    if bytes.chunks(4096).all(|c| c == &pattern[..c.len()]) {
        return Ok(());
    }
    if let Some(at) = bytes.iter().position(|&b| b != live.byte) {
        return Err(TestCaseError::fail(format!(
            "block {:p} ({:?}) lost its pattern {:#04x} at byte {at}: found {:#04x}",
            live.ptr, live.layout, live.byte, bytes[at]
        )));
    }
    Ok(())
}

/// Runs `ops` against `layer`, checking everything the suite promises. `extra_gauge` reads
/// a gauge of the layer itself (for stacks that count) to compare with the model too.
pub fn run_program<L: Layer>(
    layer: &mut Stats<L>,
    ops: &[Op],
    extra_gauge: fn(&L) -> Option<Gauges>,
) -> Result<(), TestCaseError> {
    let mut live: Vec<Live> = Vec::new();
    let mut by_address: BTreeMap<usize, usize> = BTreeMap::new(); // start -> end
    let mut model = Gauges::default();
    let mut next_byte = 0u8;
    let mut windows: Vec<Window> = Vec::new();
    for op in ops {
        match *op {
            Op::Get { size, align_log2 } => {
                let layout = Layout::from_size_align(size, 1 << align_log2).unwrap();
                let Some(ptr) = layer.get(layout) else {
                    return Err(TestCaseError::fail(format!("get({layout:?}) failed")));
                };
                let align = layout.align().max(L::MIN_ALIGN);
                prop_assert_eq!(
                    ptr.as_ptr().addr() % align,
                    0,
                    "{:p} not aligned to {}",
                    ptr,
                    align
                );
                next_byte = next_byte.wrapping_add(1).max(1);
                let block = Live {
                    ptr,
                    layout,
                    byte: next_byte,
                };
                let (start, end) = extent(&block);
                if let Some((&s, &e)) = by_address.range(..end).next_back() {
                    prop_assert!(
                        e <= start || s >= end,
                        "{:#x}..{:#x} overlaps live {:#x}..{:#x}",
                        start,
                        end,
                        s,
                        e
                    );
                }
                if L::ZEROED {
                    // SAFETY: the block is fresh and holds `size` bytes.
                    let bytes = unsafe { std::slice::from_raw_parts(ptr.as_ptr(), size) };
                    prop_assert!(
                        bytes.iter().all(|&b| b == 0),
                        "a ZEROED layer returned dirty memory"
                    );
                }
                fill(&block);
                by_address.insert(start, end);
                model.gets += 1;
                model.live += 1;
                model.bytes_got += size as u64;
                model.live_bytes += size as u64;
                model.peak_bytes = model.peak_bytes.max(model.live_bytes);
                live.push(block);
            }
            Op::Put { pick } if !live.is_empty() => {
                let block = live.swap_remove(pick % live.len());
                verify(&block, held(block.layout))?;
                by_address.remove(&extent(&block).0);
                // SAFETY: the block came from this layer with this layout and is put once.
                unsafe { layer.put(block.ptr, block.layout) };
                model.puts += 1;
                model.live -= 1;
                model.bytes_put += block.layout.size() as u64;
                model.live_bytes -= block.layout.size() as u64;
            }
            Op::Resize { pick, size } if !live.is_empty() => {
                let index = pick % live.len();
                let block = &mut live[index];
                let old = block.layout;
                let new = Layout::from_size_align(size, old.align()).unwrap();
                verify(block, held(old))?;
                // SAFETY: the block is live with layout `old`; alignments match and the
                // direction matches the method.
                let resized = unsafe {
                    if size >= old.size() {
                        layer.grow(block.ptr, old, new)
                    } else {
                        layer.shrink(block.ptr, old, new)
                    }
                };
                if resized {
                    verify(block, held(old).min(held(new)))?;
                    let start = extent(block).0;
                    block.layout = new;
                    let end = extent(block).1;
                    by_address.insert(start, end);
                    if let Some((&s, &e)) = by_address.range(..start).next_back() {
                        prop_assert!(e <= start, "grown block overlaps {:#x}..{:#x}", s, e);
                    }
                    if let Some((&s, _)) = by_address.range(start + 1..).next() {
                        prop_assert!(s >= end, "grown block runs into {:#x}", s);
                    }
                    fill(block);
                    if size >= old.size() {
                        model.bytes_got += (size - old.size()) as u64;
                        model.live_bytes += (size - old.size()) as u64;
                        model.peak_bytes = model.peak_bytes.max(model.live_bytes);
                    } else {
                        model.bytes_put += (old.size() - size) as u64;
                        model.live_bytes -= (old.size() - size) as u64;
                    }
                }
            }
            Op::Window { size, align_log2 } => {
                let layout = Layout::from_size_align(size, 1 << align_log2).unwrap();
                let limit = L::WINDOW_LIMIT;
                // SAFETY: the window is taken from the layer inside `Stats`, which does not
                // see it; nothing is put or reset through this reference.
                let window = unsafe { layer.inner_mut() }.window(layout);
                let Some(window) = window else {
                    prop_assert!(
                        limit == 0 || size > limit || layout.align() > limit,
                        "window({layout:?}) failed under WINDOW_LIMIT {limit}"
                    );
                    continue;
                };
                prop_assert!(
                    size <= limit && layout.align() <= limit,
                    "window({:?}) given above WINDOW_LIMIT {}",
                    layout,
                    limit
                );
                let start = window.cast::<u8>().as_ptr().addr();
                let end = start + window.len();
                let carved = end
                    .checked_sub(held(layout))
                    .map(|at| at & !(layout.align() - 1));
                prop_assert!(
                    carved.is_some_and(|at| at >= start),
                    "window {:#x}..{:#x} has no room for {:?}",
                    start,
                    end,
                    layout
                );
                if window.is_empty() {
                    continue;
                }
                if let Some((&s, &e)) = by_address.range(..end).next_back() {
                    prop_assert!(
                        e <= start || s >= end,
                        "window {:#x}..{:#x} overlaps live {:#x}..{:#x}",
                        start,
                        end,
                        s,
                        e
                    );
                }
                next_byte = next_byte.wrapping_add(1).max(1);
                let block = Live {
                    ptr: window.cast(),
                    layout: Layout::from_size_align(window.len(), 1).unwrap(),
                    byte: next_byte,
                };
                fill(&block);
                by_address.insert(start, end);
                windows.push(Window { block });
            }
            _ => {}
        }
        layer.check_invariants();
        let stranger = 0u64;
        prop_assert!(
            !layer.owns(NonNull::from(&stranger).cast()),
            "the layer claims to own a local variable"
        );
        prop_assert_eq!(
            layer.gauge(),
            model,
            "Stats differs from the model after {:?}",
            op
        );
        if let Some(own) = extra_gauge(layer.inner()) {
            prop_assert_eq!(own, model, "the stack's own gauge differs from the model");
        }
    }
    for window in &windows {
        verify(&window.block, window.block.layout.size())?;
    }
    for block in live.drain(..).rev() {
        verify(&block, held(block.layout))?;
        // SAFETY: as for `Op::Put`.
        unsafe { layer.put(block.ptr, block.layout) };
    }
    prop_assert_eq!(layer.gauge().live, 0);
    prop_assert_eq!(layer.gauge().live_bytes, 0);
    layer.deinit();
    layer.check_invariants();
    // A layer is usable again after deinit.
    let layout = Layout::from_size_align(100, 8).unwrap();
    let ptr = layer.get(layout).expect("get after deinit");
    // SAFETY: got just above with `layout`.
    unsafe { layer.put(ptr, layout) };
    layer.deinit();
    Ok(())
}

/// Runs the suite's property on fresh layers made by `make`.
pub fn check_layer<L: Layer>(make: impl Fn() -> L, extra_gauge: fn(&L) -> Option<Gauges>) {
    let mut runner = TestRunner::new(crate::proptest_config());
    let result = runner.run(&program(), |ops| {
        let mut layer = Stats::new(make());
        run_program(&mut layer, &ops, extra_gauge)
    });
    if let Err(error) = result {
        panic!("{error}");
    }
}

/// The layer's own gauge, for stacks that have one.
pub fn own_gauge<L: Gauge>(layer: &L) -> Option<Gauges> {
    Some(layer.gauge())
}

/// No gauge of the layer's own.
pub fn no_gauge<L>(_: &L) -> Option<Gauges> {
    None
}

/// `conformance!(test_name, || make_layer())` runs the suite on the layer;
/// `conformance!(test_name, || make_layer(), gauged)` also compares the layer's own gauge.
macro_rules! conformance {
    ($name:ident, $make:expr) => {
        #[test]
        fn $name() {
            $crate::conformance::check_layer($make, $crate::conformance::no_gauge);
        }
    };
    ($name:ident, $make:expr, gauged) => {
        #[test]
        fn $name() {
            $crate::conformance::check_layer($make, $crate::conformance::own_gauge);
        }
    };
}

/// Memory for `Buffer`-based layers: big enough for any program of the suite.
const BUFFER_BYTES: usize = MAX_OPS * (MAX_SIZE + 4096) * 2 + (1 << 20);

/// A `Buffer` that owns its memory, so that the suite can make fresh ones per case.
#[derive(Debug)]
pub struct OwnedBuffer {
    buffer: stratalloc::layers::Buffer<'static>,
    // A `Vec`, not a `Box`: moving a `Vec` keeps raw pointers into it valid.
    _memory: Vec<std::mem::MaybeUninit<u8>>,
}

impl OwnedBuffer {
    pub fn new(bytes: usize) -> Self {
        let mut memory: Vec<std::mem::MaybeUninit<u8>> = Vec::with_capacity(bytes);
        // SAFETY: `memory` holds `bytes` bytes and lives as long as `buffer` (both fields of
        // this struct, never separated), and nothing else touches them.
        let buffer = unsafe {
            stratalloc::layers::Buffer::from_raw_parts(memory.as_mut_ptr().cast(), bytes)
        };
        OwnedBuffer {
            buffer,
            _memory: memory,
        }
    }
}

fn suite_buffer() -> OwnedBuffer {
    OwnedBuffer::new(BUFFER_BYTES)
}

// SAFETY: forwards everything to the `Buffer`, whose memory lives as long as `self`.
unsafe impl Layer for OwnedBuffer {
    const OWNS_EXACT: bool = true;

    fn get(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        self.buffer.get(layout)
    }
    unsafe fn put(&mut self, ptr: NonNull<u8>, layout: Layout) {
        // SAFETY: the caller's duties, passed on.
        unsafe { self.buffer.put(ptr, layout) }
    }
    fn init() -> Self {
        suite_buffer()
    }
    fn deinit(&mut self) {
        self.buffer.deinit()
    }
    unsafe fn shrink(&mut self, ptr: NonNull<u8>, old: Layout, new: Layout) -> bool {
        // SAFETY: the caller's duties, passed on.
        unsafe { self.buffer.shrink(ptr, old, new) }
    }
    fn owns(&self, ptr: NonNull<u8>) -> bool {
        self.buffer.owns(ptr)
    }
    fn check_invariants(&self) {
        self.buffer.check_invariants()
    }
}

mod layers {
    use stratalloc::layers::*;

    conformance!(buffer, super::suite_buffer);
    conformance!(chunk_over_buffer, || Chunk::<_, 4096>::new(
        super::suite_buffer()
    ));
    conformance!(batch_over_buffer, || Batch::new(super::suite_buffer()));
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
        let mut memory = Vec::with_capacity(super::BUFFER_BYTES);
        let (base, len) = (memory.as_mut_ptr(), super::BUFFER_BYTES);
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
