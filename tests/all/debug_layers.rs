//! `Guard` and `Quarantine` catch what they are for: every planted overrun, underrun and
//! write after free, each in a child process that must abort with the one line naming the
//! block, its layout, the side and the offset. And what they are not for passes: writes
//! within bounds, and blocks left alone after their put.

use std::alloc::Layout;

use stratalloc::Layer;
use stratalloc::layer::FREED;
use stratalloc::layers::{GUARD_BYTE, Guard, Quarantine, System};

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
