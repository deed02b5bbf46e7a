//! What a leak check costs in memory: the peak resident set of a churn of one million
//! allocate/free pairs (16 to 1024 bytes, eight live at a time) with no region, under
//! `check_leaks`, and in a checking region over the bump arena `check_leaks` once used
//! (`Check<Chunk<Mmap, 65536>>`), which reuses no freed block. Not a timed bench: each case
//! runs in a child process of its own, which reports its peak (`VmHWM`) and wall time.
//!
//! Run with `cargo bench --bench check_rss`.

use std::hint::black_box;
use std::process::Command;
use std::time::Instant;

use stratalloc::layers::{Check, Chunk, Mmap};
use stratalloc::{Region, Router, check_leaks, region};

#[global_allocator]
static ROUTER: Router = Router::new();

/// The environment variable that tells a child which case to run.
const CASE: &str = "STRATALLOC_RSS_CASE";

const PAIRS: usize = 1_000_000;

/// `(name, what it runs)`, in the order of the table.
const CASES: [(&str, &str); 4] = [
    ("startup", "nothing: the process's own footprint"),
    ("plain", "the churn, no region"),
    ("check_leaks", "the churn under check_leaks"),
    (
        "old_stack",
        "the churn in a region of Check<Chunk<Mmap, 65536>>",
    ),
];

/// `pairs` steps, each allocating a block of 16 to 1024 bytes, writing it, and freeing the
/// one allocated eight steps before.
fn churn(pairs: usize) {
    let mut ring: [Vec<u8>; 8] = Default::default();
    for i in 0..pairs {
        ring[i % 8] = black_box(vec![i as u8; 16 + (i * 37) % 1009]);
    }
}

/// This process's peak resident set, in KiB (`VmHWM`).
fn peak_rss_kib() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .expect("a VmHWM line in kB")
}

/// Runs one case (in the child) and prints its peak RSS and time on one line.
fn run_case(case: &str) {
    let start = Instant::now();
    match case {
        "startup" => {}
        "plain" => churn(PAIRS),
        "check_leaks" => check_leaks(|| churn(PAIRS)).expect("the churn leaks nothing"),
        "old_stack" => {
            let region = Region::new(Check::new(Chunk::<Mmap, 65536>::new(Mmap::new())));
            region::enter(&region, || churn(PAIRS));
            assert!(region.with_layer(|stack| stack.leaks()).is_none());
        }
        other => panic!("unknown case {other}"),
    }
    let elapsed = start.elapsed();
    println!("{} {:.1}", peak_rss_kib(), elapsed.as_secs_f64() * 1e3);
}

fn main() {
    if let Ok(case) = std::env::var(CASE) {
        run_case(&case);
        return;
    }
    let exe = std::env::current_exe().expect("this bench's path");
    println!("peak RSS of {PAIRS} allocate/free pairs (16-1024 B, 8 live), one process each");
    println!(
        "{:<12} {:>14} {:>10}  what",
        "case", "peak RSS KiB", "time ms"
    );
    for (name, what) in CASES {
        let output = Command::new(&exe)
            .env(CASE, name)
            .output()
            .expect("running this bench again");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "case {name}: {:?}\n{stdout}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        let mut fields = stdout.split_whitespace();
        let (rss, ms) = (fields.next().unwrap_or("?"), fields.next().unwrap_or("?"));
        println!("{name:<12} {rss:>14} {ms:>10}  {what}");
    }
}
