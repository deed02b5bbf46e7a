//! Call sites in leak reports: a leak planted at a known line is reported at that file and
//! line, grouped with the other blocks of its call site, the largest group first; with
//! call sites off there are none; the environment variable turns them on; by default they
//! are on where they are cheap.

use std::hint::black_box;

use stratalloc::layers::{Check, Mmap};
use stratalloc::{Layer, check_leaks, region};

const THIS_FILE: &str = "tests/all/leak_call_sites.rs";

/// The place of a call site's first frame: file, line and function.
fn first_place(site: &stratalloc::layers::CallSite<'_>) -> (String, u32, String) {
    let frames = site.frames();
    let first = frames.first().expect("a frame outside the allocator");
    (
        first.file.clone().unwrap_or_default(),
        first.line.unwrap_or(0),
        first.function.clone(),
    )
}

#[test]
#[cfg_attr(miri, ignore = "Miri captures no stacks")]
fn a_planted_leak_is_reported_at_its_file_and_line() {
    region::record_call_sites(true);
    let (mut boxed_line, mut vec_line) = (0, 0);
    let report = check_leaks(|| {
        boxed_line = line!() + 1;
        black_box(Box::leak(Box::new([7u8; 48])));
        for _ in 0..3 {
            vec_line = line!() + 1;
            black_box(Vec::<u32>::with_capacity(10).leak());
        }
        // Freed: not in the report.
        drop(black_box(vec![1u8; 4096]));
    })
    .unwrap_err();
    // The data: a site per stack. An optimised build may unroll the loop into three
    // calls, three sites of one block each, all at the same line.
    let at = |line: u32| -> (u64, u64) {
        report
            .call_sites()
            .filter(|site| first_place(site).0 == THIS_FILE && first_place(site).1 == line)
            .fold((0, 0), |(blocks, bytes), site| {
                (blocks + site.blocks, bytes + site.bytes)
            })
    };
    assert_eq!(at(vec_line), (3, 120), "{report}");
    assert_eq!(at(boxed_line), (1, 48), "{report}");
    let first = report.call_sites().next().expect("a site");
    assert!(
        first_place(&first).2.contains("a_planted_leak_is_reported"),
        "{report}"
    );
    assert_eq!(report.other_call_sites(), (0, 0, 0));

    let text = report.to_string();
    // Shown: one paragraph per place, the most bytes first.
    let expected = format!("3 blocks, 120 bytes leaked, allocated at {THIS_FILE}:{vec_line}:");
    assert!(text.contains(&expected), "{text}");
    assert!(
        text.find(&expected) < text.find("1 block, 48 bytes"),
        "{text}"
    );
    let expected = format!("1 block, 48 bytes leaked, allocated at {THIS_FILE}:{boxed_line}:");
    assert!(text.contains(&expected), "{text}");
    assert!(
        !text.contains("stratalloc::"),
        "the allocator's frames are trimmed: {text}"
    );
}

#[test]
#[cfg_attr(miri, ignore = "Miri captures no stacks")]
fn sites_beyond_eight_are_summed_up() {
    region::record_call_sites(true);
    // Ten distinct call sites: a macro writes ten allocations, each at a line of its own.
    macro_rules! leak_each {
        ($($size:literal)*) => { $( black_box(Vec::<u8>::with_capacity($size).leak()); )* };
    }
    let report = check_leaks(|| {
        leak_each!(
            100
            200
            300
            400
            500
            600
            700
            800
            900
            1000
        );
    })
    .unwrap_err();
    let bytes: Vec<u64> = report.call_sites().map(|site| site.bytes).collect();
    assert_eq!(bytes, [1000, 900, 800, 700, 600, 500, 400, 300]);
    assert_eq!(report.other_call_sites(), (2, 2, 300));
    assert!(
        report
            .to_string()
            .ends_with("and 2 more call sites: 2 blocks, 300 bytes")
    );
}

#[test]
fn without_call_sites_a_report_has_none() {
    let mut check = Check::new(Mmap::new());
    let layout = std::alloc::Layout::new::<[u64; 4]>();
    let block = check.get(layout).unwrap();
    let report = check.leaks().unwrap();
    assert_eq!(report.call_sites().count(), 0);
    assert!(!report.to_string().contains("allocated at"));
    // SAFETY: got above with `layout`, put once.
    unsafe { check.put(block, layout) };
}

/// The layer alone, recording: sites follow puts, grows and shrinks (the suite's
/// `check_invariants` compares the sites' counts with the table after every step).
#[test]
fn a_recording_check_passes_the_suite() {
    stratalloc::testing::check_layer(|| {
        let mut check = Check::new(Mmap::new());
        check.record_call_sites(true);
        check
    });
}

/// `STRATALLOC_CALL_SITES=1` turns call sites on for a process that never calls
/// `record_call_sites`: a child run of the test below.
#[test]
#[cfg_attr(miri, ignore = "starts a process")]
fn the_environment_variable_turns_call_sites_on() {
    passes_in_a_child(
        "leak_call_sites::reported_with_the_environment_variable",
        Some("1"),
    );
}

/// Runs the ignored test `name` of this binary in a child process, with
/// `STRATALLOC_CALL_SITES` set to `variable` (or unset), and asserts that it passed.
fn passes_in_a_child(name: &str, variable: Option<&str>) {
    let mut child = std::process::Command::new(std::env::current_exe().unwrap());
    child.args([name, "--exact", "--nocapture", "--ignored"]);
    match variable {
        Some(value) => child.env("STRATALLOC_CALL_SITES", value),
        None => child.env_remove("STRATALLOC_CALL_SITES"),
    };
    let output = child.output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(stdout.contains("1 passed"), "{stdout}");
}

#[test]
#[ignore = "run by the_environment_variable_turns_call_sites_on, in a process of its own"]
fn reported_with_the_environment_variable() {
    let report = check_leaks(|| {
        black_box(Box::leak(Box::new(5u64)));
    })
    .unwrap_err();
    assert_eq!(report.call_sites().count(), 1, "{report}");
}

/// Without the environment variable or a call, call sites are on exactly where they are
/// cheap (a build with frame pointers): a child run of the test below.
#[test]
#[cfg_attr(miri, ignore = "starts a process")]
fn by_default_call_sites_are_on_where_they_are_cheap() {
    passes_in_a_child("leak_call_sites::reported_by_default_where_cheap", None);
}

#[test]
#[ignore = "run by by_default_call_sites_are_on_where_they_are_cheap, in a process of its own"]
fn reported_by_default_where_cheap() {
    let report = check_leaks(|| {
        black_box(Box::leak(Box::new(5u64)));
    })
    .unwrap_err();
    let expected = usize::from(region::CHEAP_CALL_SITES);
    assert_eq!(report.call_sites().count(), expected, "{report}");
}

/// A block allocated under a C library's frame (`qsort` calling back into Rust): glibc is
/// built without frame pointers, so in a build with them the walk of frame records meets a
/// frame pointer register that `qsort` may have used for anything. The walk reads only
/// inside the thread's stack and stops there; the block is still reported at the line in
/// the callback that allocated it.
#[test]
#[cfg(target_os = "linux")]
#[cfg_attr(miri, ignore = "Miri captures no stacks, nor calls qsort")]
fn a_leak_under_a_c_frame_is_reported_at_its_line() {
    use std::sync::atomic::{AtomicU32, Ordering};

    static LEAK_LINE: AtomicU32 = AtomicU32::new(0);

    extern "C" fn compare(a: *const libc::c_void, b: *const libc::c_void) -> libc::c_int {
        LEAK_LINE.store(line!() + 1, Ordering::Relaxed);
        black_box(Box::leak(Box::new([9u8; 24])));
        // SAFETY: qsort passes pointers to two of the array's `u32`s.
        let (a, b) = unsafe { (*a.cast::<u32>(), *b.cast::<u32>()) };
        a.cmp(&b) as libc::c_int
    }

    region::record_call_sites(true);
    let report = check_leaks(|| {
        let mut numbers = [3u32, 1, 2];
        // SAFETY: the array, its length and element size, and a comparator of `u32`s.
        unsafe {
            libc::qsort(
                numbers.as_mut_ptr().cast(),
                numbers.len(),
                size_of::<u32>(),
                Some(compare),
            )
        };
        assert_eq!(numbers, [1, 2, 3]);
    })
    .unwrap_err();
    let line = LEAK_LINE.load(Ordering::Relaxed);
    let at_line: u64 = report
        .call_sites()
        .filter(|site| first_place(site).0 == THIS_FILE && first_place(site).1 == line)
        .map(|site| site.blocks)
        .sum();
    assert_eq!(
        at_line,
        report.blocks(),
        "every block at its line: {report}"
    );
}
