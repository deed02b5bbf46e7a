//! The `serde` feature: `Gauges`, `LeakReport`, `HeapSummary` and `HeapProfile` serialise to
//! the figures their accessors show (checked through serde_json).

use core::alloc::Layout;
use core::mem::MaybeUninit;

use serde_json::json;
use stratalloc::layers::{Buffer, Check, Stats};
use stratalloc::{Heap, Layer};

#[test]
fn gauges_serialise_field_by_field() {
    let mut memory = [MaybeUninit::uninit(); 4096];
    let heap = Heap::new(Stats::new(Buffer::new(&mut memory)));
    let block = allocator_api2::boxed::Box::new_in([7u8; 100], &heap);
    let value = serde_json::to_value(heap.gauge()).unwrap();
    assert_eq!(
        value,
        json!({
            "gets": 1, "puts": 0, "bytes_got": 100, "bytes_put": 0,
            "live": 1, "live_bytes": 100, "peak_bytes": 100,
        })
    );
    drop(block);
}

#[test]
fn a_leak_report_serialises_its_counts_sizes_and_sample() {
    let mut memory = [MaybeUninit::uninit(); 4096];
    let mut check = Check::new(Buffer::new(&mut memory));
    let layout = Layout::from_size_align(100, 8).unwrap();
    let block = check.get(layout).expect("a block");
    let report = check.leaks().expect("one live block");
    let value = serde_json::to_value(report).unwrap();
    assert_eq!(
        value,
        json!({
            "blocks": 1,
            "bytes": 100,
            "sizes": [{ "smallest": 64, "largest": 127, "blocks": 1 }],
            "sample": [{ "address": block.as_ptr() as usize, "size": 100 }],
            "call_sites": [],
            "other_call_sites": { "sites": 0, "blocks": 0, "bytes": 0 },
        })
    );
    // SAFETY: `block` came from `check.get(layout)` and is put once, with that layout.
    unsafe { check.put(block, layout) };
    assert!(check.leaks().is_none());
}

/// With call sites recorded, each serialises with its addresses and symbolised frames.
#[cfg(feature = "std")]
#[test]
fn a_leak_report_serialises_its_call_sites() {
    let mut check = Check::new(stratalloc::layers::System::new());
    check.record_call_sites(true);
    let layout = Layout::from_size_align(24, 8).unwrap();
    let line = line!() + 1;
    let block = check.get(layout).expect("a block");
    let value = serde_json::to_value(check.leaks().unwrap()).unwrap();
    let site = &value["call_sites"][0];
    assert_eq!((&site["blocks"], &site["bytes"]), (&json!(1), &json!(24)));
    assert!(site["addresses"].as_array().is_some_and(|a| !a.is_empty()));
    let frame = &site["frames"][0];
    assert_eq!(frame["file"], json!("tests/all/serde.rs"), "{value}");
    assert_eq!(frame["line"], json!(line), "{value}");
    // SAFETY: got above with `layout`, put once.
    unsafe { check.put(block, layout) };
}

#[cfg(feature = "os")]
#[test]
fn a_heap_summary_serialises_the_listed_sizes_only() {
    use stratalloc::presets::{General, general};
    static HEAP: General = general();
    HEAP.set_counting(true);
    let block = HEAP.malloc(40);
    assert!(!block.is_null());
    let summary = HEAP.summary();
    let value = serde_json::to_value(summary).unwrap();
    let sizes: Vec<serde_json::Value> = summary
        .by_size()
        .iter()
        .map(|&(size, count)| json!([size, count]))
        .collect();
    assert_eq!(value["sizes"], json!(sizes));
    assert_eq!(value["live_blocks"], json!(1));
    assert_eq!(value["live_bytes"], json!(summary.live_bytes()));
    assert_eq!(value["allocations"], json!(summary.allocations));
    assert_eq!(value["frees"], json!(summary.frees));
    assert_eq!(value["heaps"], json!(summary.heaps));
    assert_eq!(value.as_object().unwrap().len(), 12, "{value}");
    // SAFETY: a live block of HEAP, freed once.
    unsafe { HEAP.free(block) };
}

#[test]
#[cfg(feature = "std")]
fn a_heap_profile_serialises_its_totals_and_sites() {
    let mut memory = [MaybeUninit::uninit(); 4096];
    let mut profile = stratalloc::layers::Profile::new(Buffer::new(&mut memory));
    let layout = Layout::new::<[u8; 40]>();
    let block = profile.get(layout).unwrap();
    let report = profile.report();
    let value = serde_json::to_value(&report).unwrap();
    assert_eq!(
        (value["blocks"].as_u64(), value["bytes"].as_u64()),
        (Some(1), Some(40))
    );
    assert_eq!(value["live_bytes"], 40);
    let sites = value["sites"].as_array().unwrap();
    assert_eq!(sites.len(), report.sites.len());
    assert_eq!(sites[0]["bytes"], 40);
    assert!(sites[0]["frames"].is_array());
    assert!(
        value["duration"]["secs"].is_u64(),
        "a Duration as serde writes it"
    );
    // SAFETY: got above with `layout`, put once.
    unsafe { profile.put(block, layout) };
}
