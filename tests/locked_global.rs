//! `Locked<Mmap>` as the program's global allocator: a freed block's memory stays mapped for
//! the whole of its free, which Miri checks under Stacked and Tree Borrows, and a layer that
//! panics aborts the process with one line.
//!
//! A test binary of its own rather than a module of `tests/all`, whose global allocator is
//! the region router: a program has one global allocator. It has no test harness either, so
//! that the only allocations made through `Locked<Mmap>` are this file's (one page map
//! each), which keeps it quick under Miri.

use std::alloc::Layout;
use std::hint::black_box;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use stratalloc::{Layer, Locked, layers::Mmap};

#[global_allocator]
static GLOBAL: Locked<PanicSwitch> = Locked::new(PanicSwitch(Mmap::new()));

/// Set in a child process to make every `get` panic.
static PANIC: AtomicBool = AtomicBool::new(false);

/// `Mmap`, except that `get` panics while [`PANIC`] is set: a layer that breaks the
/// contract, to show that the global allocator aborts rather than unwinds or hangs.
struct PanicSwitch(Mmap);

// SAFETY: every block comes unchanged from `Mmap`, and every call goes to it; only the
// panic, asked for on purpose, breaks the contract.
unsafe impl Layer for PanicSwitch {
    const MIN_ALIGN: usize = Mmap::MIN_ALIGN;
    const ZEROED: bool = Mmap::ZEROED;

    fn get(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        if PANIC.load(Ordering::Relaxed) {
            panic!("a layer that panics in get");
        }
        self.0.get(layout)
    }

    unsafe fn put(&mut self, ptr: NonNull<u8>, layout: Layout) {
        // SAFETY: the caller's duties are `Mmap::put`'s.
        unsafe { self.0.put(ptr, layout) }
    }

    unsafe fn grow(&mut self, ptr: NonNull<u8>, old: Layout, new: Layout) -> bool {
        // SAFETY: as for `put`.
        unsafe { self.0.grow(ptr, old, new) }
    }

    unsafe fn shrink(&mut self, ptr: NonNull<u8>, old: Layout, new: Layout) -> bool {
        // SAFETY: as for `put`.
        unsafe { self.0.shrink(ptr, old, new) }
    }

    fn init() -> Self {
        PanicSwitch(Mmap::new())
    }

    fn deinit(&mut self) {
        self.0.deinit();
    }
}

/// `drop` takes the `Box` by value, so the `Box` is protected until `drop` returns: its
/// memory must stay mapped for the whole of the `dealloc` inside it. An `Mmap` that
/// unmapped it there would deallocate protected memory (undefined behaviour, which Miri
/// reports).
fn a_dropped_box_stays_mapped_during_its_free() {
    drop(black_box(Box::new([7u8; 64])));
    // More frees than the deferred puts hold, so that they are made while others are
    // freed, and allocations in between, which make them.
    let boxes: Vec<Box<[u8; 64]>> = (0..40).map(|i| Box::new([i as u8; 64])).collect();
    for (i, b) in boxes.into_iter().enumerate() {
        assert_eq!(b[63], i as u8);
        drop(b);
        if i % 7 == 0 {
            drop(black_box(Box::new(i)));
        }
    }
}

/// A block that `realloc` moves is freed inside the `realloc` call: it stays mapped there.
fn a_moved_block_stays_mapped_during_its_realloc() {
    let mut bytes: Vec<u8> = Vec::with_capacity(8);
    for i in 0..20_000u32 {
        bytes.push(i as u8);
    }
    assert!(bytes.iter().enumerate().all(|(i, &b)| b == i as u8));
    bytes.truncate(10);
    bytes.shrink_to_fit();
    assert_eq!(bytes, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
}

/// Frees wait for the next allocation, but whoever looks at the stack sees them made.
fn the_stack_is_seen_with_every_free_made() {
    let before = GLOBAL.lock().0.mapped_bytes();
    let boxes: Vec<Box<u64>> = (0..5).map(Box::new).collect();
    let during = GLOBAL.lock().0.mapped_bytes();
    assert!(during > before, "{during} bytes mapped, {before} before");
    drop(boxes);
    assert_eq!(
        GLOBAL.lock().0.mapped_bytes(),
        before,
        "the frees were made"
    );
}

/// The environment variable that makes this program the child of
/// [`a_panicking_layer_aborts_the_process`].
const CHILD: &str = "STRATALLOC_LOCKED_GLOBAL_CHILD";

/// A layer of the global allocator that panics: the process aborts with one line (the
/// panic must not unwind out of the allocator, and the panic machinery, which allocates,
/// must not spin forever on the lock the allocator holds). Run in a child process, given a
/// minute before it counts as hung.
fn a_panicking_layer_aborts_the_process() {
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .env(CHILD, "panic")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > Duration::from_secs(60) {
            child.kill().unwrap();
            panic!("the child hung: the allocator spins on its own lock");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    #[cfg(unix)]
    let aborted = {
        use std::os::unix::process::ExitStatusExt;
        status.signal() == Some(6)
    };
    // The C runtime's `abort` ends a Windows process with exit code 3.
    #[cfg(windows)]
    let aborted = status.code() == Some(3);
    assert!(
        aborted,
        "an abort expected, got {status:?}; stderr:\n{stderr}"
    );
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("stratalloc:"))
        .collect();
    assert_eq!(lines.len(), 1, "one line expected; stderr:\n{stderr}");
    assert!(lines[0].contains("PanicSwitch"), "{}", lines[0]);
}

fn main() {
    if std::env::var_os(CHILD).is_some() {
        PANIC.store(true, Ordering::Relaxed);
        drop(black_box(Box::new(1u8)));
        unreachable!("the allocation returned");
    }
    a_dropped_box_stays_mapped_during_its_free();
    a_moved_block_stays_mapped_during_its_realloc();
    the_stack_is_seen_with_every_free_made();
    if cfg!(miri) {
        println!("locked_global: 3 checks passed (Miri cannot start the fourth's child process)");
    } else {
        a_panicking_layer_aborts_the_process();
        println!("locked_global: 4 checks passed");
    }
}
