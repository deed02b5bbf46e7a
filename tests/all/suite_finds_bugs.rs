//! The conformance suite must fail on broken layers: planted bugs it has to find.

use std::alloc::Layout;
use std::ptr::NonNull;

use proptest::test_runner::{Config, TestRunner};
use stratalloc::Layer;
use stratalloc::layer::FRESH;
use stratalloc::layers::Stats;

use crate::conformance::{OwnedBuffer, no_gauge, program, run_program};

/// Planted bug: every fourth block starts in the middle of the previous one.
struct Overlapping {
    inner: OwnedBuffer,
    gets: usize,
    last: Option<(NonNull<u8>, usize)>,
}

// SAFETY: none — this layer breaks the contract on purpose; the test only checks that the
// suite notices before anything is written through the bad block.
unsafe impl Layer for Overlapping {
    fn get(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        self.gets += 1;
        if let Some((last, size)) = self.last.filter(|_| self.gets.is_multiple_of(4)) {
            let inside = last.as_ptr().wrapping_add(size / 2);
            if size >= 2 && inside.addr() % layout.align() == 0 {
                return NonNull::new(inside);
            }
        }
        let block = self.inner.get(layout)?;
        self.last = Some((block, layout.size()));
        Some(block)
    }
    unsafe fn put(&mut self, _: NonNull<u8>, _: Layout) {}
    fn init() -> Self {
        Overlapping {
            inner: OwnedBuffer::new(16 << 20),
            gets: 0,
            last: None,
        }
    }
    fn deinit(&mut self) {
        self.inner.deinit();
        self.last = None;
    }
}

/// Planted bug: a put scribbles one byte on the block handed out just before.
struct Scribbling {
    inner: OwnedBuffer,
    last: Option<NonNull<u8>>,
}

// SAFETY: none — broken on purpose, as above; the scribble lands inside memory the inner
// buffer owns, so the test itself stays defined.
unsafe impl Layer for Scribbling {
    fn get(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        let block = self.inner.get(layout)?;
        self.last = Some(block);
        Some(block)
    }
    unsafe fn put(&mut self, ptr: NonNull<u8>, _: Layout) {
        if let Some(last) = self.last.filter(|&last| last != ptr) {
            // SAFETY: `last` is a block of the inner buffer, which never reuses memory
            // before deinit, so the byte is inside the buffer.
            unsafe { last.as_ptr().write(0xEE) };
        }
    }
    fn init() -> Self {
        Scribbling {
            inner: OwnedBuffer::new(16 << 20),
            last: None,
        }
    }
    fn deinit(&mut self) {
        self.inner.deinit();
        self.last = None;
    }
}

/// Planted bug: a layer that claims `ZEROED` and fills the blocks it hands out with
/// `FRESH` anyway, as a debug fill that forgot the claim would (the crate's fill skips
/// layers that claim it).
struct FilledButZeroed {
    inner: OwnedBuffer,
}

// SAFETY: none — broken on purpose: its blocks are not zeroed.
unsafe impl Layer for FilledButZeroed {
    const ZEROED: bool = true;

    fn get(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        let block = self.inner.get(layout)?;
        // SAFETY: a fresh block of the buffer, holding `layout.size()` bytes (one at least).
        unsafe { block.as_ptr().write_bytes(FRESH, layout.size().max(1)) };
        Some(block)
    }
    unsafe fn put(&mut self, ptr: NonNull<u8>, layout: Layout) {
        // SAFETY: the caller's duties, passed on.
        unsafe { self.inner.put(ptr, layout) }
    }
    fn init() -> Self {
        FilledButZeroed {
            inner: OwnedBuffer::new(16 << 20),
        }
    }
    fn deinit(&mut self) {
        self.inner.deinit();
    }
}

fn suite_rejects<L: Layer>(what: &str) -> String {
    let mut runner = TestRunner::new(Config {
        cases: 256,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&program(), |ops| {
        let mut layer = Stats::new(L::init());
        run_program(&mut layer, &ops, no_gauge)
    });
    match result {
        Err(error) => error.to_string(),
        Ok(()) => panic!("the suite passed a layer with a planted {what} bug"),
    }
}

#[test]
#[cfg_attr(
    miri,
    ignore = "hundreds of cases; the suite's logic runs under Miri elsewhere"
)]
fn finds_a_planted_overlap() {
    let message = suite_rejects::<Overlapping>("overlap");
    assert!(message.contains("overlaps"), "{message}");
}

#[test]
#[cfg_attr(
    miri,
    ignore = "hundreds of cases; the suite's logic runs under Miri elsewhere"
)]
fn finds_a_planted_scribble() {
    let message = suite_rejects::<Scribbling>("scribble");
    assert!(message.contains("lost its pattern"), "{message}");
}

#[test]
#[cfg_attr(
    miri,
    ignore = "hundreds of cases; the suite's logic runs under Miri elsewhere"
)]
fn finds_a_planted_dirty_block_of_a_zeroed_layer() {
    let message = suite_rejects::<FilledButZeroed>("fill despite ZEROED");
    assert!(
        message.contains("a ZEROED layer returned dirty memory"),
        "{message}"
    );
}
