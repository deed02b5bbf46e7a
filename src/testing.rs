//! The conformance suite, for anyone who writes a [`Layer`]: the proptest programs of
//! gets, puts, in-place resizes and windows that every layer and named stack of this crate
//! passes, callable on any layer (the `testing` feature).
//!
//! Each block is filled with its own byte when got and verified before it is put or
//! resized; no two live blocks may overlap; alignment (the layout's and the layer's
//! `MIN_ALIGN`) is honoured; a layer that claims [`ZEROED`](Layer::ZEROED) hands out
//! zeroes; windows stay within [`WINDOW_LIMIT`](Layer::WINDOW_LIMIT) and are not shared;
//! `check_invariants` holds after every step; the layer does not claim to own a stranger's
//! memory; a [`Stats`] wrapped around the layer (and the layer's own gauge, when it has one)
//! reports exactly what a model of the program predicts; and the layer is usable again after
//! `deinit`.
//!
//! ```
//! use stratalloc::layers::{Chunk, System};
//!
//! // In a `#[test]`: panics with the smallest failing program if the layer breaks a rule.
//! stratalloc::testing::check_layer(|| Chunk::<_, 4096>::new(System::new()));
//! ```
//!
//! A layer with a memory of its own to test over can use [`OwnedBuffer`]:
//! `check_layer(|| MyLayer::new(OwnedBuffer::new(PROGRAM_BYTES)))`.

// The suite runs programs with std's collections and proptest, whatever the crate's
// features.
extern crate std;

use std::format;
use std::vec::Vec;

use std::alloc::Layout;
use std::collections::BTreeMap;
use std::ptr::NonNull;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

use crate::layers::Stats;
use crate::{Gauge, Gauges, Layer};

/// One step of a program.
#[derive(Clone, Debug)]
pub enum Op {
    /// Get a block.
    Get {
        /// Bytes asked for (0 included).
        size: usize,
        /// The alignment asked for is `1 << align_log2`.
        align_log2: u32,
    },
    /// Put a live block.
    Put {
        /// Which one: taken modulo the number of live blocks.
        pick: usize,
    },
    /// Try to resize a live block in place (grow or shrink, as the size says).
    Resize {
        /// Which one: taken modulo the number of live blocks.
        pick: usize,
        /// The new size.
        size: usize,
    },
    /// Take a window for a block, from layers that give windows; the whole window is then
    /// held, filled and verified like a block, and never put.
    Window {
        /// Bytes the window must have room for.
        size: usize,
        /// The alignment asked for is `1 << align_log2`.
        align_log2: u32,
    },
}

/// The largest request a program makes (smaller under Miri).
pub const MAX_SIZE: usize = if cfg!(miri) { 4096 } else { 65536 };
/// The most steps a program has (fewer under Miri).
pub const MAX_OPS: usize = if cfg!(miri) { 32 } else { 96 };
/// Bytes that hold every block any program can have live at once, with room for the
/// alignment and the bookkeeping of the layers this crate has: a [`OwnedBuffer`] of this
/// size serves any program.
pub const PROGRAM_BYTES: usize = MAX_OPS * (MAX_SIZE + 4096) * 2 + (1 << 20);

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
                // An exact layer owns its block; one that owns by range, every byte of it.
                let last = NonNull::new(ptr.as_ptr().wrapping_add(held(layout) - 1)).unwrap();
                prop_assert!(
                    (!L::OWNS_EXACT || layer.owns(ptr))
                        && (!L::OWNS_INTERIOR || (layer.owns(ptr) && layer.owns(last))),
                    "the layer does not own its block {:p} ({:?}) as OWNS_EXACT and \
                     OWNS_INTERIOR say",
                    ptr,
                    layout
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

/// The suite's proptest configuration: 128 cases (4 under Miri, with a faster generator),
/// and no failure files (a failure prints its smallest program instead).
pub fn config() -> Config {
    Config {
        cases: if cfg!(miri) { 4 } else { 128 },
        failure_persistence: None,
        rng_algorithm: if cfg!(miri) {
            proptest::test_runner::RngAlgorithm::XorShift
        } else {
            proptest::test_runner::RngAlgorithm::ChaCha
        },
        ..Config::default()
    }
}

/// Runs the suite on fresh layers made by `make`, with [`config`]; panics with the
/// smallest failing program and what went wrong. The call for a test of a layer.
pub fn check_layer<L: Layer>(make: impl Fn() -> L) {
    check_layer_with(config(), make, no_gauge);
}

/// [`check_layer`] with a proptest configuration of the caller's, and `extra_gauge`
/// reading a gauge of the layer itself ([`own_gauge`] for a layer that counts, whose
/// figures must then match the model's too; [`no_gauge`] otherwise).
pub fn check_layer_with<L: Layer>(
    config: Config,
    make: impl Fn() -> L,
    extra_gauge: fn(&L) -> Option<Gauges>,
) {
    let mut runner = TestRunner::new(config);
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

/// A `Buffer` that owns its memory, so that the suite can make fresh ones per case.
#[derive(Debug)]
pub struct OwnedBuffer {
    buffer: crate::layers::Buffer<'static>,
    // A `Vec`, not a `Box`: moving a `Vec` keeps raw pointers into it valid.
    _memory: Vec<std::mem::MaybeUninit<u8>>,
}

impl OwnedBuffer {
    /// A buffer of `bytes` bytes of its own.
    pub fn new(bytes: usize) -> Self {
        let mut memory: Vec<std::mem::MaybeUninit<u8>> = Vec::with_capacity(bytes);
        // SAFETY: `memory` holds `bytes` bytes and lives as long as `buffer` (both fields of
        // this struct, never separated), and nothing else touches them.
        let buffer =
            unsafe { crate::layers::Buffer::from_raw_parts(memory.as_mut_ptr().cast(), bytes) };
        OwnedBuffer {
            buffer,
            _memory: memory,
        }
    }
}

// SAFETY: forwards everything to the `Buffer`, whose memory lives as long as `self`.
unsafe impl Layer for OwnedBuffer {
    const OWNS_EXACT: bool = true;
    const OWNS_INTERIOR: bool = true;

    fn get(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        self.buffer.get(layout)
    }
    unsafe fn put(&mut self, ptr: NonNull<u8>, layout: Layout) {
        // SAFETY: the caller's duties, passed on.
        unsafe { self.buffer.put(ptr, layout) }
    }
    fn init() -> Self {
        OwnedBuffer::new(PROGRAM_BYTES)
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
