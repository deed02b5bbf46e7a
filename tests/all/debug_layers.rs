//! `Guard` and `Quarantine` catch what they are for: every planted overrun, underrun and
//! write after free, each in a child process that must abort with the one line naming the
//! block, its layout, the side and the offset. And what they are not for passes: writes
//! within bounds, and blocks left alone after their put.

use std::alloc::Layout;

use stratalloc::Layer;
use stratalloc::layer::FREED;
use stratalloc::layers::{
    Check, Deferred, GUARD_BYTE, Guard, OnRelease, Quarantine, Released, Stats, System,
};

/// Sizes and alignments the planted cases cycle through.
const LAYOUTS: [(usize, usize); 5] = [(1, 1), (8, 8), (24, 8), (100, 4), (4096, 64)];

/// The child side: does nothing unless started by `run_child`. A scenario is
/// `kind size align offset`.
#[test]
fn child() {
    let Some(scenario) = crate::child_scenario() else {
        return;
    };
    let words: Vec<&str> = scenario.split(' ').collect();
    let [kind, size, align, offset] = words[..] else {
        panic!("bad scenario {scenario:?}");
    };
    let layout = Layout::from_size_align(size.parse().unwrap(), align.parse().unwrap()).unwrap();
    let offset: isize = offset.parse().unwrap();
    match kind {
        "guard" => {
            let mut guarded = Guard::<_, 16>::new(System::new());
            let block = guarded.get(layout).unwrap();
            // SAFETY: none on purpose: one byte outside the block (inside the guard, which
            // the layer below owns) is written, and the put must catch it.
            unsafe {
                block.as_ptr().offset(offset).write(0x5A);
                guarded.put(block, layout);
            }
        }
        "quarantine" => {
            let mut quarantine = Quarantine::<_, 65536>::new(System::new());
            let block = quarantine.get(layout).unwrap();
            // SAFETY: none on purpose: the block is written after its put (its memory is
            // still the layer below's, held in quarantine), and the flush must catch it.
            unsafe {
                quarantine.put(block, layout);
                block.as_ptr().offset(offset).write(0x5A);
            }
            quarantine.flush();
        }
        "panicking_hook" => {
            let mut hooked = OnRelease::new(System::new(), 5, |_| panic!("a hook that panics"));
            let block = hooked.get(layout).unwrap();
            // SAFETY: got just above with `layout`, put once.
            unsafe { hooked.put(block, layout) };
        }
        "reentering_hook" | "gauging_hook" => {
            // A hook that reaches the `Heap` holding its layer, through a thread-local, in
            // the middle of the heap's free.
            type Hooked = Stats<OnRelease<System, fn(Released)>>;
            thread_local! {
                static HEAP: std::cell::Cell<Option<&'static stratalloc::Heap<Hooked>>> =
                    const { std::cell::Cell::new(None) };
                static GAUGE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
            }
            fn hook(_: Released) {
                if let Some(heap) = HEAP.with(std::cell::Cell::get) {
                    if GAUGE.with(std::cell::Cell::get) {
                        let _ = heap.gauge();
                    } else {
                        let _ = allocator_api2::boxed::Box::new_in(1u8, heap);
                    }
                }
            }
            GAUGE.with(|gauge| gauge.set(kind == "gauging_hook"));
            let heap: &'static _ = Box::leak(Box::new(stratalloc::Heap::new(Stats::new(
                OnRelease::new(System::new(), 9, hook as fn(Released)),
            ))));
            HEAP.with(|cell| cell.set(Some(heap)));
            drop(allocator_api2::boxed::Box::new_in(7u64, heap));
        }
        _ => panic!("bad scenario {scenario:?}"),
    }
    unreachable!("the misuse was not caught");
}

/// Runs the scenarios in children, four at a time, and checks each aborted with its line.
fn all_caught(cases: Vec<(String, String)>) {
    let caught = std::sync::atomic::AtomicUsize::new(0);
    let queue = std::sync::Mutex::new(cases.iter());
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                while let Some((scenario, message)) = queue.lock().unwrap().next() {
                    let output = crate::run_child("debug_layers::child", scenario);
                    crate::assert_aborted_with(&output, message);
                    caught.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            });
        }
    });
    assert_eq!(caught.into_inner(), cases.len());
}

#[test]
#[cfg_attr(miri, ignore = "Miri cannot start processes")]
fn guard_catches_every_planted_one_byte_overrun_and_underrun() {
    let mut cases = Vec::new();
    for i in 0..200 {
        let (size, align) = LAYOUTS[i % LAYOUTS.len()];
        // Overruns at the first byte past the block and further out; underruns at the
        // byte just before it and further out (the front guard is 16 bytes, or the
        // alignment when it is larger).
        let reach = (i / 2 / LAYOUTS.len()) % 16;
        let (offset, message) = if i % 2 == 0 {
            let offset = size + reach;
            (
                offset as isize,
                format!(
                    "Guard: a write past the end of the block at {{}} (size {size}, align \
                     {align}): byte {offset} (back guard byte {reach}) is 0x5a, not 0xca"
                ),
            )
        } else {
            let back = reach + 1;
            let front = 16usize.next_multiple_of(align);
            (
                -(back as isize),
                format!(
                    "Guard: a write before the block at {{}} (size {size}, align {align}): \
                     byte -{back} of its {front}-byte front guard is 0x5a, not 0xca"
                ),
            )
        };
        cases.push((format!("guard {size} {align} {offset}"), message));
    }
    // The block's address differs per child: match the text around it.
    let cases = cases
        .into_iter()
        .map(|(scenario, message)| {
            let tail = message.split("{}").nth(1).unwrap().to_owned();
            (scenario, tail)
        })
        .collect();
    all_caught(cases);
}

#[test]
#[cfg_attr(miri, ignore = "Miri cannot start processes")]
fn quarantine_catches_every_planted_write_after_free() {
    let mut cases = Vec::new();
    for i in 0..100 {
        let (size, align) = LAYOUTS[i % LAYOUTS.len()];
        let offset = [0, 1, size - 1][i % 3].min(size - 1);
        cases.push((
            format!("quarantine {size} {align} {offset}"),
            format!(
                " (size {size}, align {align}) was written after it was put: byte {offset} is \
                 0x5a, not 0xdf"
            ),
        ));
    }
    all_caught(cases);
}

#[test]
fn guard_passes_writes_within_bounds_and_keeps_alignment() {
    let mut guarded = Guard::<_, 16>::new(System::new());
    for &(size, align) in &LAYOUTS {
        let layout = Layout::from_size_align(size, align).unwrap();
        let block = guarded.get(layout).unwrap();
        assert_eq!(block.as_ptr().addr() % align, 0);
        // SAFETY: the block holds `size` bytes; the guard bytes around it are read only to
        // show they are there, inside the layer below's block.
        unsafe {
            assert_eq!(block.as_ptr().sub(1).read(), GUARD_BYTE);
            assert_eq!(block.as_ptr().add(size).read(), GUARD_BYTE);
            block.as_ptr().write_bytes(0x11, size);
            guarded.put(block, layout);
        }
    }
}

#[test]
fn quarantine_holds_blocks_back_within_its_bytes_then_lets_them_go() {
    let mut quarantine = Quarantine::<_, 4096>::new(System::new());
    let layout = Layout::from_size_align(1000, 8).unwrap();
    let blocks: Vec<_> = (0..6).map(|_| quarantine.get(layout).unwrap()).collect();
    for (count, &block) in blocks.iter().enumerate() {
        // SAFETY: each block is put once, with its layout, and only read afterwards while
        // held (the layer below has not got it back).
        unsafe {
            quarantine.put(block, layout);
            assert_eq!(block.as_ptr().read(), FREED, "poisoned at the put");
        }
        // At most 4096 bytes: four blocks of 1000.
        assert_eq!(
            quarantine.held(),
            ((count + 1).min(4), (count + 1).min(4) * 1000)
        );
    }
    quarantine.check_invariants();
    quarantine.flush();
    assert_eq!(quarantine.held(), (0, 0));
    // Zero-size blocks and blocks larger than the quarantine go down at once.
    let big = Layout::from_size_align(8192, 8).unwrap();
    let block = quarantine.get(big).unwrap();
    // SAFETY: put once, with its layout.
    unsafe { quarantine.put(block, big) };
    assert_eq!(quarantine.held(), (0, 0));
}

/// Blocks leave the quarantine oldest first, whichever limit sends them (its block count,
/// once the ring is full and each put takes the oldest's slot, or its bytes), and with their
/// poison checked.
#[test]
fn quarantine_lets_blocks_go_oldest_first_under_both_limits() {
    let miri = cfg!(miri);
    // Small blocks: the ring of 1024 fills, and bounds.
    let held = lets_go_oldest_first::<65536>(16..33, if miri { 1100 } else { 3000 });
    assert_eq!(held, 1024, "the block count bounds");
    // Large ones: the bytes bound first.
    let held = lets_go_oldest_first::<4096>(100..400, if miri { 60 } else { 3000 });
    assert!(held < 1024, "the bytes bound: {held} blocks held");
}

/// Puts `blocks` blocks of sizes in `sizes` into a `Quarantine<_, BYTES>`, checking its
/// bounds and that the blocks that went down are the oldest, in order; returns how many it
/// held at the end, before the flush.
fn lets_go_oldest_first<const BYTES: usize>(sizes: std::ops::Range<usize>, blocks: usize) -> usize {
    let released = std::cell::RefCell::new(Vec::new());
    let hooked = OnRelease::new(System::new(), 0, |r: Released| {
        released.borrow_mut().push(r.ptr.as_ptr() as usize);
    });
    let mut quarantine = Quarantine::<_, BYTES>::new(hooked);
    let mut put = Vec::new();
    for i in 0..blocks {
        let size = sizes.start + (i * 37) % sizes.len();
        let layout = Layout::from_size_align(size, 8).unwrap();
        let block = quarantine.get(layout).unwrap();
        // SAFETY: the block holds `size` bytes; it is put once, with its layout.
        unsafe {
            block.as_ptr().write_bytes(1, size);
            quarantine.put(block, layout);
        }
        put.push(block.as_ptr() as usize);
        let (held, bytes) = quarantine.held();
        assert!(
            held <= 1024 && bytes <= BYTES,
            "{held} blocks, {bytes} bytes held"
        );
        assert_eq!(released.borrow().len(), put.len() - held, "put {i}");
    }
    let (held, _) = quarantine.held();
    assert_eq!(released.borrow()[..], put[..put.len() - held]);
    quarantine.flush();
    assert_eq!(released.borrow()[..], put[..]);
    held
}

#[test]
fn the_release_hook_sees_every_put_block_whole_before_it_goes_down() {
    let seen = std::cell::RefCell::new(Vec::new());
    let mut hooked = OnRelease::new(Guard::<_, 16>::new(System::new()), 42, |r: Released| {
        // SAFETY: the hook runs before the block goes down: its bytes are readable.
        let first = unsafe { r.ptr.as_ptr().read() };
        seen.borrow_mut().push((r.id, r.layout, first));
    });
    let layouts = [
        Layout::new::<u64>(),
        Layout::from_size_align(300, 16).unwrap(),
    ];
    for (i, &layout) in layouts.iter().enumerate() {
        let block = hooked.get(layout).unwrap();
        // SAFETY: the block holds `layout.size()` bytes; put once with its layout.
        unsafe {
            block.as_ptr().write(i as u8 + 1);
            hooked.put(block, layout);
        }
    }
    assert_eq!(
        seen.into_inner(),
        [(42, layouts[0], 1), (42, layouts[1], 2)]
    );
    // Made by `Layer::init`, the layer has no hook and calls nothing.
    let mut plain = <OnRelease<System, fn(Released)> as Layer>::init();
    let block = plain.get(layouts[0]).unwrap();
    // SAFETY: got just above, put once.
    unsafe { plain.put(block, layouts[0]) };
}

#[test]
#[cfg_attr(miri, ignore = "Miri cannot start processes")]
fn a_panicking_release_hook_aborts_naming_the_layer() {
    let output = crate::run_child("debug_layers::child", "panicking_hook 24 8 0");
    crate::assert_aborted_with(&output, "::OnRelease<");
    crate::assert_aborted_with(&output, ">::release hook` panicked inside the allocator");
}

/// A hook that uses the `Heap` holding its layer (to allocate, or to read its gauges) would
/// alias the stack the heap's free is using: the heap aborts instead.
#[test]
#[cfg_attr(miri, ignore = "Miri cannot start processes")]
fn a_hook_that_reaches_its_heap_aborts() {
    let output = crate::run_child("debug_layers::child", "reentering_hook 0 1 0");
    crate::assert_aborted_with(
        &output,
        "Heap: allocation or free from inside one of the heap's own operations",
    );
    let output = crate::run_child("debug_layers::child", "gauging_hook 0 1 0");
    crate::assert_aborted_with(
        &output,
        "Heap: gauge from inside one of the heap's own operations",
    );
}

#[test]
fn deferred_puts_wait_until_collect_or_the_cap() {
    use stratalloc::Gauge;
    let mut deferred = Deferred::<_, 3>::new(Stats::new(System::new()));
    let layout = Layout::from_size_align(40, 8).unwrap();
    let blocks: Vec<_> = (0..4).map(|_| deferred.get(layout).unwrap()).collect();
    for &block in &blocks[..3] {
        // SAFETY: each block is put once, with its layout, and not touched afterwards.
        unsafe { deferred.put(block, layout) };
    }
    // Nothing went down yet: `Stats` below has seen no put (the list's storage was a get).
    assert_eq!(deferred.inner().gauge().puts, 0);
    let waiting: Vec<_> = deferred
        .waiting()
        .map(|held| (held.ptr, held.layout))
        .collect();
    assert_eq!(
        waiting,
        blocks[..3].iter().map(|&b| (b, layout)).collect::<Vec<_>>()
    );
    // The put that finds the list full collects it first.
    // SAFETY: as above.
    unsafe { deferred.put(blocks[3], layout) };
    assert_eq!(deferred.inner().gauge().puts, 3);
    assert_eq!(deferred.waiting().count(), 1);
    assert_eq!(deferred.collect(), 1);
    assert_eq!(deferred.inner().gauge().puts, 4);
    deferred.check_invariants();
    // Dropping the layer releases what waits and the list's storage.
    let block = deferred.get(layout).unwrap();
    // SAFETY: as above.
    unsafe { deferred.put(block, layout) };
    let stats = deferred.into_inner();
    assert_eq!(stats.gauge().live, 0, "every block and the list went back");
}

/// A put that waits in `Deferred` or `Quarantine` is a put: the caller is done with the
/// block. Ending the layer must not make a `Check` below report it as a leak.
#[test]
fn a_held_put_is_no_leak_at_deinit() {
    fn put_then_end(mut layer: impl Layer, name: &str) {
        let layout = Layout::from_size_align(64, 8).unwrap();
        let block = layer.get(layout).expect("memory");
        // SAFETY: got just above with `layout`, put once, never used again.
        unsafe { layer.put(block, layout) };
        let ended = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| layer.deinit()));
        assert!(
            ended.is_ok(),
            "{name}: deinit reported a block the caller had put as a leak"
        );
    }
    put_then_end(Deferred::<_, 8>::new(Check::new(System::new())), "Deferred");
    put_then_end(
        Quarantine::<_, 4096>::new(Check::new(System::new())),
        "Quarantine",
    );
}
