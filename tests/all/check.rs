//! `Check`: leak reports (contents, Display, panicking at deinit) and resizes it tracks.

use std::alloc::Layout;
use std::panic::{AssertUnwindSafe, catch_unwind};

use stratalloc::layers::{Check, Stats};
use stratalloc::{Gauge, Layer};

use crate::conformance::OwnedBuffer;

fn layout(size: usize) -> Layout {
    Layout::from_size_align(size, 8).unwrap()
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(text) => *text,
        Err(payload) => payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .unwrap_or_default(),
    }
}

#[test]
fn reports_blocks_bytes_and_sizes() {
    let mut check = Check::new(OwnedBuffer::new(1 << 16));
    let kept: Vec<_> = [8, 12, 40, 0]
        .iter()
        .map(|&n| (check.get(layout(n)).unwrap(), n))
        .collect();
    let freed = check.get(layout(100)).unwrap();
    // SAFETY: got above with this layout; put once.
    unsafe { check.put(freed, layout(100)) };
    let report = check.leaks().expect("four blocks are live");
    assert_eq!((report.blocks(), report.bytes()), (4, 60));
    let sizes: Vec<_> = report.sizes().collect();
    assert_eq!(sizes, vec![(0, 0, 1), (8, 15, 2), (32, 63, 1)]);
    let mut addresses: Vec<_> = report.sample().iter().map(|&(a, _)| a).collect();
    addresses.sort();
    let mut expected: Vec<_> = kept.iter().map(|(p, _)| p.as_ptr().addr()).collect();
    expected.sort();
    assert_eq!(addresses, expected);
    let text = report.to_string();
    assert!(
        text.starts_with(
            "4 blocks (60 bytes) still live; sizes: 0 B x1, 8-15 B x2, 32-63 B x1; at 0x"
        ),
        "{text}"
    );
    for (ptr, size) in &kept {
        // SAFETY: each was got above with `layout(size)`.
        unsafe { check.put(*ptr, layout(*size)) };
    }
    assert!(check.leaks().is_none());
}

#[test]
fn many_leaks_are_summarised() {
    let mut check = Check::new(OwnedBuffer::new(1 << 16));
    for _ in 0..20 {
        check.get(layout(16)).unwrap();
    }
    let text = check.leaks().unwrap().to_string();
    assert!(
        text.contains("20 blocks (320 bytes)") && text.ends_with("and 12 more"),
        "{text}"
    );
    let result = catch_unwind(AssertUnwindSafe(|| check.deinit()));
    assert!(result.is_err());
}

#[test]
fn deinit_with_leaks_panics_with_the_report_and_returns_the_blocks() {
    let mut check = Check::new(Stats::new(OwnedBuffer::new(1 << 16)));
    check.get(layout(24)).unwrap();
    let message = panic_message(catch_unwind(AssertUnwindSafe(|| check.deinit())).unwrap_err());
    assert!(
        message.contains("stratalloc: Check: 1 block (24 bytes) still live; sizes: 16-31 B x1"),
        "{message}"
    );
    assert_eq!(
        check.inner().gauge().live,
        0,
        "leaked blocks and the table went back"
    );
    assert!(check.leaks().is_none(), "reported once");
    check.deinit();
}

/// (With `std` only: without it `Check` cannot tell that the thread is unwinding.)
#[cfg(feature = "std")]
#[test]
fn a_leak_found_while_unwinding_does_not_abort() {
    let result = catch_unwind(|| {
        let mut check = Check::new(OwnedBuffer::new(1 << 16));
        check.get(layout(24)).unwrap();
        panic!("the original failure");
    });
    assert_eq!(panic_message(result.unwrap_err()), "the original failure");
}

#[test]
fn tracks_resizes() {
    let mut check = Check::new(OwnedBuffer::new(1 << 16));
    let block = check.get(layout(64)).unwrap();
    // SAFETY: live with `layout(64)`; shrinking keeps the alignment.
    assert!(unsafe { check.shrink(block, layout(64), layout(16)) });
    assert_eq!(check.gauge().live_bytes, 16);
    // SAFETY: the block now fits `layout(16)`, which `Check` must accept.
    unsafe { check.put(block, layout(16)) };
    assert_eq!(
        check.gauge(),
        stratalloc::Gauges {
            gets: 1,
            puts: 1,
            bytes_got: 64,
            bytes_put: 64,
            live: 0,
            live_bytes: 0,
            peak_bytes: 64,
        }
    );
}

#[test]
fn thousands_of_blocks_through_table_growth() {
    let mut check = Check::new(Stats::new(OwnedBuffer::new(8 << 20)));
    // With `paranoid` every operation walks the whole table: 2000 blocks still take it
    // through seven growths.
    let count = if cfg!(miri) {
        300
    } else if cfg!(feature = "paranoid") {
        2000
    } else {
        20_000
    };
    let blocks: Vec<_> = (0..count)
        .map(|i| (check.get(layout(i % 50)).unwrap(), i % 50))
        .collect();
    check.check_invariants();
    for (i, (ptr, size)) in blocks.iter().enumerate() {
        if i % 2 == 0 {
            // SAFETY: got above with `layout(size)`.
            unsafe { check.put(*ptr, layout(*size)) };
        }
    }
    check.check_invariants();
    for (i, (ptr, size)) in blocks.iter().enumerate() {
        if i % 2 == 1 {
            // SAFETY: as above.
            unsafe { check.put(*ptr, layout(*size)) };
        }
    }
    check.check_invariants();
    assert!(check.leaks().is_none());
    check.deinit();
    assert_eq!(check.inner().gauge().live, 0, "the table went back too");
}

#[test]
fn deinit_counts_ended_blocks_as_put() {
    let mut check = Check::new(OwnedBuffer::new(1 << 16));
    check.get(layout(24)).unwrap();
    assert!(catch_unwind(AssertUnwindSafe(|| check.deinit())).is_err());
    assert_eq!((check.gauge().live, check.gauge().puts), (0, 1));
    check.check_invariants();
    let mut stats = Stats::new(OwnedBuffer::new(1 << 16));
    stats.get(layout(10)).unwrap();
    stats.deinit();
    assert_eq!((stats.gauge().live, stats.gauge().bytes_put), (0, 10));
    stats.check_invariants();
}

#[test]
fn owns_exactly_its_live_blocks() {
    let mut check = Check::new(OwnedBuffer::new(1 << 16));
    let block = check.get(layout(24)).unwrap();
    assert!(check.owns(block));
    // SAFETY: got above with this layout.
    unsafe { check.put(block, layout(24)) };
    assert!(!check.owns(block), "a put block is no longer owned");
}
