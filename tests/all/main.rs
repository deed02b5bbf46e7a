//! The integration tests: one binary, a module per concern.

mod adapters;
mod bad_input;
mod bitmaps;
// (The blob heap's tests kill lock holders and read Linux's futex words.)
#[cfg(all(feature = "std", target_os = "linux"))]
mod blob_heap;
mod check;
mod chunk;
mod conformance;
#[cfg(feature = "std")]
mod debug_layers;
/// What the fuzz targets (`fuzz/`) found, each as a plain test.
mod fuzz_findings;
#[cfg(feature = "std")]
mod heap_profile;
#[cfg(feature = "std")]
mod leak_call_sites;
#[cfg(feature = "std")]
mod managed_buffers;
mod misuse;
#[cfg(all(feature = "std", target_os = "linux"))]
mod preload;
#[cfg(all(feature = "std", unix))]
mod region_hazards;
#[cfg(feature = "std")]
mod region_reuse;
#[cfg(feature = "std")]
mod regions;
#[cfg(feature = "std")]
mod routing_model;
#[cfg(all(feature = "std", target_os = "linux"))]
mod sbrk;
#[cfg(feature = "serde")]
mod serde;
mod suite_finds_bugs;
#[cfg(feature = "os")]
mod thread_heaps;

/// The router is this binary's global allocator: with no region entered it hands
/// everything to the system allocator, so the other tests run as they would without it.
#[cfg(feature = "std")]
#[global_allocator]
static ROUTER: stratalloc::Router = stratalloc::Router::new();

/// Proptest cases per property: fewer under Miri, which is ~100x slower (4 there, so that
/// the Miri step, which now runs some 15 more conformance entries, stays well inside CI).
pub const CASES: u32 = if cfg!(miri) { 4 } else { 128 };

/// The generator of proptest's cases: under Miri, ChaCha took ~90% of a conformance run's
/// time, and XorShift makes the same programs' worth of cases for a tenth of it.
pub const RNG: proptest::test_runner::RngAlgorithm = if cfg!(miri) {
    proptest::test_runner::RngAlgorithm::XorShift
} else {
    proptest::test_runner::RngAlgorithm::ChaCha
};

/// The proptest configuration the suites share: `CASES` cases, and no failure files (which
/// Miri's isolation forbids; a failure prints its minimal case instead).
pub fn proptest_config() -> proptest::test_runner::Config {
    proptest::test_runner::Config {
        cases: CASES,
        failure_persistence: None,
        rng_algorithm: RNG,
        ..proptest::test_runner::Config::default()
    }
}

/// The bytes of address space this process has mapped (`VmSize`).
#[cfg(unix)]
pub fn mapped_address_space() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmSize:"))
        .expect("a VmSize line");
    let kib: usize = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("VmSize in kB");
    kib * 1024
}

/// Sets the soft limit on address space (`RLIMIT_AS`); `None` lifts it to the hard limit.
#[cfg(unix)]
pub fn limit_address_space(bytes: Option<usize>) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid place for the current limits.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut limit) }, 0);
    limit.rlim_cur = bytes.map_or(limit.rlim_max, |b| b as libc::rlim_t);
    // SAFETY: lowering or restoring our own soft limit.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_AS, &limit) }, 0);
}

/// The environment variable that tells a re-executed test binary which scenario to run.
#[cfg(feature = "os")]
pub const CHILD_VAR: &str = "STRATALLOC_CHILD";

/// The scenario this process was started for, when it is a child of `run_child`.
#[cfg(feature = "os")]
pub fn child_scenario() -> Option<String> {
    std::env::var(CHILD_VAR).ok()
}

/// Starts this test binary again for the single test `test` with the scenario in the
/// environment, and returns at once (the child's stderr, where a failure is reported, goes
/// to this process's; its test harness chatter on stdout does not).
#[cfg(feature = "os")]
pub fn spawn_child(test: &str, scenario: &str) -> std::process::Child {
    std::process::Command::new(std::env::current_exe().expect("test binary path"))
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_VAR, scenario)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("starting the test binary again")
}

/// Re-runs this test binary for the single test `test` (its full path), with the scenario
/// in the environment, on one test thread, and returns what it did.
#[cfg(feature = "os")]
pub fn run_child(test: &str, scenario: &str) -> std::process::Output {
    std::process::Command::new(std::env::current_exe().expect("test binary path"))
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_VAR, scenario)
        .output()
        .expect("re-running the test binary")
}

/// As [`run_child`], but gives up after `limit`: the child is killed and the result says
/// so (`None`), for scenarios whose failure is a hang. Its output is read as it comes, so a
/// talkative child cannot block on a full pipe.
#[cfg(feature = "os")]
pub fn run_child_within(
    test: &str,
    scenario: &str,
    limit: std::time::Duration,
) -> Option<std::process::Output> {
    use std::io::Read;
    let mut child = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_VAR, scenario)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starting the test binary again");
    let read_all = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = read_all(Box::new(child.stdout.take().expect("piped stdout")));
    let stderr = read_all(Box::new(child.stderr.take().expect("piped stderr")));
    let deadline = std::time::Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for the child") {
            break status;
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    Some(std::process::Output {
        status,
        stdout: stdout.join().expect("the child's stdout"),
        stderr: stderr.join().expect("the child's stderr"),
    })
}

/// Checks that a child (of [`run_child`]) exited successfully after printing `line`, its
/// sign of having run to the end.
pub fn assert_child_passed(output: &std::process::Output, line: &str) {
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains(line),
        "{:?}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Checks that a child aborted (SIGABRT) after writing exactly one `stratalloc:` line to
/// stderr, and that the line contains `message`.
#[cfg(feature = "os")]
pub fn assert_aborted_with(output: &std::process::Output, message: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    #[cfg(unix)]
    let aborted = {
        use std::os::unix::process::ExitStatusExt;
        output.status.signal() == Some(libc::SIGABRT)
    };
    // The C runtime's `abort` ends a Windows process with exit code 3.
    #[cfg(windows)]
    let aborted = output.status.code() == Some(3);
    assert!(
        aborted,
        "expected an abort, got {:?}; stderr:\n{stderr}",
        output.status
    );
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("stratalloc:"))
        .collect();
    assert_eq!(lines.len(), 1, "one line expected; stderr:\n{stderr}");
    assert!(
        lines[0].contains(message),
        "{:?} does not say {message:?}",
        lines[0]
    );
}
