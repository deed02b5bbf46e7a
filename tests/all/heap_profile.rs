//! The heap profiler: `region::profile`'s figures per call site, at the file and line that
//! allocated; the peak and the figures at it; DHAT's file format as its viewer reads it;
//! folded stacks and the flame graph.

use std::collections::HashSet;
use std::hint::black_box;
use std::mem::MaybeUninit;

use stratalloc::layers::{Buffer, Coalesce, HeapProfile, Profile, SiteProfile};
use stratalloc::{Layer, region};

const THIS_FILE: &str = "tests/all/heap_profile.rs";

/// The site whose first frame is this file at `line` (the path is relative to the current
/// directory where the binary's paths lie inside it; not so under Wine, whose `Z:\` the
/// Linux paths do not match).
fn site_at(profile: &HeapProfile, line: u32) -> &SiteProfile {
    profile
        .sites
        .iter()
        .find(|site| {
            site.frames.first().is_some_and(|frame| {
                frame
                    .file
                    .as_deref()
                    .is_some_and(|file| file.ends_with(THIS_FILE))
                    && frame.line == Some(line)
            })
        })
        .unwrap_or_else(|| panic!("no site at {THIS_FILE}:{line} in\n{profile}"))
}

/// Allocates 800 bytes kept (returned), then five 48-byte boxes, each freed at once; the
/// lines of the two calls.
fn planted_work(kept_line: &mut u32, boxes_line: &mut u32) -> Vec<u64> {
    *kept_line = line!() + 1;
    let kept = black_box(Vec::<u64>::with_capacity(100));
    for _ in 0..5 {
        *boxes_line = line!() + 1;
        drop(black_box(Box::new([3u8; 48])));
    }
    kept
}

#[test]
#[cfg_attr(miri, ignore = "Miri captures no stacks")]
fn sites_are_counted_at_their_file_and_line() {
    let (mut kept_line, mut boxes_line) = (0, 0);
    let (kept, profile) = region::profile(|| planted_work(&mut kept_line, &mut boxes_line));
    assert_eq!(kept.capacity(), 100);

    let boxes = site_at(&profile, boxes_line);
    assert_eq!(
        (boxes.blocks, boxes.bytes, boxes.frees),
        (5, 240, 5),
        "{profile}"
    );
    assert_eq!((boxes.live_blocks, boxes.live_bytes), (0, 0));
    // One box at a time (an optimised build may unroll the loop into five call sites that
    // read the same once symbolised: their maxima add up).
    assert!((48..=240).contains(&boxes.max_live_bytes), "{boxes:?}");
    if cfg!(debug_assertions) {
        assert_eq!((boxes.max_live_bytes, boxes.max_live_blocks), (48, 1));
    }
    assert_eq!((boxes.bytes_at_peak, boxes.blocks_at_peak), (48, 1));

    let kept_site = site_at(&profile, kept_line);
    assert_eq!(
        (kept_site.blocks, kept_site.bytes, kept_site.frees),
        (1, 800, 0)
    );
    assert_eq!((kept_site.live_blocks, kept_site.live_bytes), (1, 800));
    assert_eq!(
        (kept_site.bytes_at_peak, kept_site.max_live_bytes),
        (800, 800)
    );
    assert!(kept_site.total_lifetime <= profile.duration);

    // Only the closure's allocations: these two sites.
    assert_eq!(profile.sites.len(), 2, "{profile}");
    assert_eq!((profile.blocks, profile.bytes, profile.frees), (6, 1040, 5));
    assert_eq!((profile.peak_bytes, profile.peak_blocks), (848, 2));
    assert_eq!((profile.live_blocks, profile.live_bytes), (1, 800));
    assert!(profile.peak_at <= profile.duration);
    // The most bytes first.
    assert_eq!(profile.sites[0].bytes, 800);

    let shown = profile.to_string();
    assert!(
        shown.starts_with("6 blocks, 1,040 bytes allocated in "),
        "{shown}"
    );
    assert!(
        shown.contains(&format!("{THIS_FILE}:{boxes_line}:")),
        "{shown}"
    );
    drop(kept);
}

/// Puts and gets on a `Profile` over a buffer: the peak is the most bytes live at once,
/// and each site's figures at the peak are those of that moment, not of a later one.
/// (Under Miri every block is at the unknown site, which checks the same arithmetic.)
#[test]
fn figures_at_the_peak_are_those_of_its_moment() {
    let mut memory = [MaybeUninit::uninit(); 4096];
    let mut profile = Profile::new(Buffer::new(&mut memory));
    let layout = |size| core::alloc::Layout::from_size_align(size, 8).unwrap();
    let a = profile.get(layout(100)).unwrap();
    let b = profile.get(layout(200)).unwrap();
    // SAFETY: each block is put once, with the layout it was got with.
    unsafe { profile.put(a, layout(100)) };
    let c = profile.get(layout(50)).unwrap();
    let d = profile.get(layout(10)).unwrap();
    unsafe { profile.put(b, layout(200)) };
    profile.check_invariants();

    let report = profile.report();
    assert_eq!((report.blocks, report.bytes, report.frees), (4, 360, 2));
    assert_eq!((report.peak_bytes, report.peak_blocks), (300, 2));
    assert_eq!((report.live_blocks, report.live_bytes), (2, 60));
    let max: u64 = report.sites.iter().map(|site| site.max_live_bytes).sum();
    assert!(max >= 300, "{report}");

    unsafe {
        profile.put(c, layout(50));
        profile.put(d, layout(10));
    }
    let report = profile.report();
    assert_eq!((report.frees, report.live_bytes), (4, 0));
    assert_eq!(
        report.peak_bytes, 300,
        "a later, lower moment changes nothing"
    );
}

/// In-place growth counts as bytes allocated at the block's site (and can make a peak);
/// shrinking frees nothing but lowers what is live; a put counts the size recorded.
#[test]
fn resizes_in_place_move_the_figures() {
    // A coalescing heap grows a block in place into a free neighbour.
    let memory = stratalloc::testing::OwnedBuffer::new(1 << 18);
    let mut profile = Profile::new(Coalesce::<_, 65536>::new(memory));
    let layout = |size| core::alloc::Layout::from_size_align(size, 8).unwrap();
    // The first round makes the profile's tables (blocks of the heap too), so that the
    // second round's block, from the same call and larger than the first's hole, comes
    // from the free rest of the arena.
    let mut block = None;
    for size in [100, 200] {
        let got = profile.get(layout(size)).unwrap();
        match size {
            // SAFETY: put once, with its layout.
            100 => unsafe { profile.put(got, layout(100)) },
            _ => block = Some(got),
        }
    }
    let block = block.unwrap();
    // SAFETY: the block is live with the old layout each time; put once at the end.
    unsafe {
        assert!(profile.grow(block, layout(200), layout(300)));
        profile.check_invariants();
        assert!(profile.shrink(block, layout(300), layout(50)));
        profile.check_invariants();
    }
    let report = profile.report();
    assert_eq!(
        (report.blocks, report.bytes),
        (2, 400),
        "growth is allocated"
    );
    assert_eq!((report.peak_bytes, report.live_bytes), (300, 50));
    unsafe { profile.put(block, layout(50)) };
    let report = profile.report();
    assert_eq!(
        (report.frees, report.live_bytes, report.live_blocks),
        (2, 0, 0)
    );
    profile.check_invariants();
}

/// The viewer's checks (`dh_view.js`, `buildTree` and `checkPP`): the global fields, the
/// fields of each program point, frame 0 `[root]`, frame indices inside the table, and no
/// two program points with the same frames (it adds to each leaf once).
fn assert_the_viewer_reads(file: &[u8]) -> serde_json::Value {
    let json: serde_json::Value = serde_json::from_slice(file).expect("JSON");
    for field in [
        "dhatFileVersion",
        "mode",
        "verb",
        "bklt",
        "bkacc",
        "tu",
        "Mtu",
        "cmd",
        "pid",
        "te",
        "pps",
        "ftbl",
        "tg",
        "tuth",
    ] {
        assert!(json.get(field).is_some(), "no {field}");
    }
    assert_eq!(json["dhatFileVersion"], 2);
    assert_eq!(json["bklt"], true);
    let frames = json["ftbl"].as_array().unwrap();
    assert_eq!(frames[0], "[root]");
    let mut seen = HashSet::new();
    for pp in json["pps"].as_array().unwrap() {
        for field in ["tb", "tbk", "tl", "mb", "mbk", "gb", "gbk", "eb", "ebk"] {
            assert!(pp[field].is_u64(), "{field} in {pp}");
        }
        let fs: Vec<u64> = pp["fs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|frame| frame.as_u64().unwrap())
            .collect();
        assert!(!fs.is_empty());
        assert!(fs.iter().all(|&i| i >= 1 && (i as usize) < frames.len()));
        assert!(seen.insert(fs), "two program points with the same frames");
    }
    json
}

#[test]
#[cfg_attr(miri, ignore = "Miri captures no stacks")]
fn the_dhat_file_holds_the_sites_and_totals() {
    let (mut kept_line, mut boxes_line) = (0, 0);
    let (_, profile) = region::profile(|| planted_work(&mut kept_line, &mut boxes_line));
    let mut file = Vec::new();
    profile.write_dhat(&mut file).unwrap();
    let json = assert_the_viewer_reads(&file);

    let pps = json["pps"].as_array().unwrap();
    let total = |field: &str| {
        pps.iter()
            .map(|pp| pp[field].as_u64().unwrap())
            .sum::<u64>()
    };
    assert_eq!((total("tb"), total("tbk")), (profile.bytes, profile.blocks));
    assert_eq!(
        (total("gb"), total("eb")),
        (profile.peak_bytes, profile.live_bytes)
    );
    assert_eq!(json["pid"], std::process::id());
    let place = format!("{THIS_FILE}:{boxes_line}:");
    let frames = json["ftbl"].as_array().unwrap();
    assert!(
        frames
            .iter()
            .any(|frame| frame.as_str().unwrap().contains(&place)),
        "{frames:?}"
    );
}

/// With no stack known (a profile over a buffer under Miri, or blocks from the runtime),
/// the file has one program point at the unknown frame, which the viewer reads too.
#[test]
fn a_profile_without_stacks_writes_the_unknown_frame() {
    let mut memory = [MaybeUninit::uninit(); 1024];
    let mut profile = Profile::new(Buffer::new(&mut memory));
    let layout = core::alloc::Layout::new::<[u64; 4]>();
    let block = profile.get(layout).unwrap();
    // SAFETY: put once, with its layout.
    unsafe { profile.put(block, layout) };
    let mut report = profile.report();
    // What a run without an unwinder records: the frames of every site unknown.
    for site in &mut report.sites {
        site.frames.clear();
    }
    let mut file = Vec::new();
    report.write_dhat(&mut file).unwrap();
    let json = assert_the_viewer_reads(&file);
    assert_eq!(json["ftbl"][1], "[unknown: no frame outside the allocator]");
    assert!(
        report
            .folded_stacks()
            .starts_with("[unknown: no frame outside the allocator] 32")
    );
}

#[test]
#[cfg_attr(miri, ignore = "Miri captures no stacks")]
fn folded_stacks_end_at_the_allocating_function() {
    let (mut kept_line, mut boxes_line) = (0, 0);
    let (_, profile) = region::profile(|| planted_work(&mut kept_line, &mut boxes_line));
    let folded = profile.folded_stacks();
    let planted: Vec<&str> = folded
        .lines()
        .filter(|line| line.contains("::heap_profile::planted_work "))
        .collect();
    // Both sites are in `planted_work`, one line of 1040 bytes once the lines merge.
    assert_eq!(planted.len(), 1, "{folded}");
    assert!(
        planted[0].ends_with("::heap_profile::planted_work 1040"),
        "{folded}"
    );
}

#[test]
#[cfg(feature = "flamegraph")]
#[cfg_attr(miri, ignore = "Miri captures no stacks")]
fn the_flame_graph_is_well_formed_and_names_the_site() {
    use quick_xml::events::Event;

    let (mut kept_line, mut boxes_line) = (0, 0);
    let (_, profile) = region::profile(|| planted_work(&mut kept_line, &mut boxes_line));
    let mut svg = Vec::new();
    profile
        .write_flame_graph("Bytes allocated", &mut svg)
        .unwrap();
    let mut reader = quick_xml::Reader::from_reader(svg.as_slice());
    reader.config_mut().check_end_names = true;
    let (mut depth, mut root, mut titles) = (0i32, None, Vec::new());
    let mut buffer = Vec::new();
    let mut in_title = false;
    loop {
        match reader
            .read_event_into(&mut buffer)
            .expect("well-formed XML")
        {
            Event::Start(tag) => {
                if depth == 0 {
                    root = Some(String::from_utf8_lossy(tag.name().as_ref()).into_owned());
                }
                in_title = tag.name().as_ref() == b"title";
                depth += 1;
            }
            Event::End(_) => {
                depth -= 1;
                in_title = false;
            }
            Event::Text(text) if in_title => {
                titles.push(String::from_utf8_lossy(&text).into_owned());
            }
            Event::Eof => break,
            _ => {}
        }
        buffer.clear();
    }
    assert_eq!(depth, 0, "every element closed");
    assert_eq!(root.as_deref(), Some("svg"));
    assert!(
        titles
            .iter()
            .any(|title| title.ends_with("::heap_profile::planted_work (1,040 bytes, 100.00%)")),
        "{titles:?}"
    );
}
