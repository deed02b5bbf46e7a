//! The malloc replacement under `LD_PRELOAD`: the C-semantics program, real programs run
//! with and without it (their output must not change), and the heap summary it prints at
//! exit; and linked into a C program, shared and static, with the summary asked for.
//!
//! The library is `libstratalloc.so`, the cdylib package `malloc/`, built once per
//! test run with `cargo build --profile preload -p stratalloc-malloc` (the `no_std` build
//! the README describes) into
//! `target/preload` (a target dir of its own, so the build does not wait on the lock of the
//! cargo that runs these tests). A failed build fails every test here, with cargo's output.
//! With `STRATALLOC_PRELOAD_LIB=/path/to/lib.so` the tests use that library instead and
//! build nothing: that is how the harness was checked against glibc's peers (jemalloc,
//! mimalloc) before ours existed. The C programs are in `tests/preload/`, built with gcc
//! into a temporary directory.
//!
//! # The heap summary
//!
//! With `STRATALLOC_SUMMARY=1` in its environment, a process running the library prints,
//! when it exits (through `exit` or a return from `main`), this summary on stderr, each item
//! a line of its own, in this order:
//!
//! ```text
//! stratalloc heap summary (pid 4242)
//! totals: 5 allocations, 2 frees, 9092980 bytes allocated
//! peak: 8388608 bytes live in 1 blocks
//! live blocks by size:
//!   48 B x 1
//!   3072 B x 1
//!   704512 B x 1
//! leaks: 3 blocks, 707632 bytes
//! ```
//!
//! - The first line starts with `stratalloc heap summary`; what follows on it is free.
//! - `totals`: every block handed out (malloc, calloc, the aligned calls, and a realloc that
//!   hands out a new block) is one allocation; every block taken back (free, and a realloc
//!   that gives up the old one) is one free; so allocations less frees is the live blocks.
//!   The bytes are the sum of the sizes handed out (requested or rounded up: the library's
//!   choice, at least what was asked).
//! - `peak`: the most bytes live at once over the run, and the number of blocks live then.
//! - `live blocks by size`: the blocks still live at exit, grouped by size (requested, or
//!   as `malloc_usable_size` reports it), one line per size in ascending order, each two
//!   spaces, the size, ` B x `, the count.
//! - `leaks`: the number of blocks live at exit and their bytes (the sums of the lines
//!   above).
//!
//! Without `STRATALLOC_SUMMARY=1` the library prints nothing: the real-program tests
//! compare stderr with and without it.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The repository, where `tests/preload/` and the example live.
const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// Set to a shared library's path, the tests preload that instead of building ours.
const LIB_VAR: &str = "STRATALLOC_PRELOAD_LIB";

/// How long any one child process may run before it is killed and the test fails.
const PROCESS_TIMEOUT: Duration = Duration::from_secs(300);

/// The library these tests preload: ours, built on first use, or the one `LIB_VAR` names.
/// Panics (failing the calling test) with cargo's output when the build failed.
fn library() -> &'static Path {
    static LIBRARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match LIBRARY.get_or_init(find_or_build_library) {
        Ok(path) => path,
        Err(why) => panic!("{why}"),
    }
}

fn find_or_build_library() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os(LIB_VAR) {
        let path = PathBuf::from(path);
        eprintln!("preload tests: using {} from {LIB_VAR}", path.display());
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!("{LIB_VAR}={}: no such file", path.display()))
        };
    }
    let target = Path::new(REPO).join("target").join("preload");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(&cargo)
        .args(["build", "--profile", "preload", "-p", "stratalloc-malloc"])
        .current_dir(REPO)
        .env("CARGO_TARGET_DIR", &target)
        .env_remove("LD_PRELOAD")
        .output()
        .map_err(|e| format!("starting {}: {e}", Path::new(&cargo).display()))?;
    if !output.status.success() {
        return Err(format!(
            "cargo build --profile preload -p stratalloc-malloc failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let path = target.join("preload/libstratalloc.so");
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "the build succeeded but left no {}",
            path.display()
        ))
    }
}

/// A directory of its own for one test, removed when the guard drops (also on a panic).
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let path =
            std::env::temp_dir().join(format!("stratalloc-preload-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("creating a temporary directory");
        TempDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `command` to its end, with `lib` preloaded when given, in the C locale and UTC so
/// that its output does not depend on the machine, without a summary unless the command
/// asks for one, and kills it after `PROCESS_TIMEOUT`.
fn run(command: &mut Command, lib: Option<&Path>) -> Output {
    if !command.get_envs().any(|(k, _)| k == "STRATALLOC_SUMMARY") {
        command.env_remove("STRATALLOC_SUMMARY");
    }
    command
        .env("LC_ALL", "C")
        .env("TZ", "UTC")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    match lib {
        Some(lib) => command.env("LD_PRELOAD", lib),
        None => command.env_remove("LD_PRELOAD"),
    };
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("starting {command:?}: {e}"));
    // Drain both pipes on threads, so that a child that writes much cannot block on a full
    // pipe while this thread waits for it.
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let out = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out.read_to_end(&mut buf);
        buf
    });
    let err = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err.read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + PROCESS_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for a child") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{command:?} (preload {lib:?}) still ran after {PROCESS_TIMEOUT:?}: killed");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
    }
}

/// Compiles `tests/preload/<name>.c` with gcc (no preload) into `dir` and returns the
/// program's path.
fn compile(name: &str, dir: &Path) -> PathBuf {
    let source = Path::new(REPO)
        .join("tests/preload")
        .join(format!("{name}.c"));
    let program = dir.join(name);
    let output = run(
        Command::new("gcc")
            .args(["-O2", "-fno-builtin", "-pthread", "-Wall", "-o"])
            .arg(&program)
            .arg(&source),
        None,
    );
    assert!(
        output.status.success(),
        "gcc {}: {}\n{}",
        source.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    program
}

/// Where two outputs first differ, as a line number and the two lines, for a failure
/// message that does not dump megabytes.
fn first_difference(a: &[u8], b: &[u8]) -> String {
    let (a, b) = (String::from_utf8_lossy(a), String::from_utf8_lossy(b));
    let mut lines = a.lines().zip(b.lines()).enumerate();
    match lines.find(|(_, (x, y))| x != y) {
        Some((n, (x, y))) => format!("line {}:\n  without: {x:?}\n  with:    {y:?}", n + 1),
        None => format!(
            "one is a prefix of the other: {} lines without, {} with",
            a.lines().count(),
            b.lines().count()
        ),
    }
}

/// Asserts that a program did the same without the library (`plain`) as with it: the same
/// exit status, stdout and stderr (every program here writes a deterministic stderr, most
/// an empty one, so a library that prints when it should not fails too).
fn assert_same(what: &str, plain: &Output, preloaded: &Output) {
    assert_eq!(
        plain.status,
        preloaded.status,
        "{what}: exit status differs; stderr with the library:\n{}",
        String::from_utf8_lossy(&preloaded.stderr)
    );
    assert!(
        plain.stdout == preloaded.stdout,
        "{what}: stdout differs, {}\nstderr with the library:\n{}",
        first_difference(&plain.stdout, &preloaded.stdout),
        String::from_utf8_lossy(&preloaded.stderr)
    );
    assert!(
        plain.stderr == preloaded.stderr,
        "{what}: stderr differs, {}",
        first_difference(&plain.stderr, &preloaded.stderr)
    );
}

/// Runs the command `make` builds twice, without and with the library, and asserts that
/// both runs did the same; returns the plain run's output.
fn same_with_and_without(what: &str, make: impl Fn() -> Command) -> Output {
    let lib = library();
    let plain = run(&mut make(), None);
    let preloaded = run(&mut make(), Some(lib));
    assert_same(what, &plain, &preloaded);
    plain
}

#[test]
#[cfg_attr(miri, ignore = "Miri cannot start processes")]
fn c_semantics_hold_under_the_library() {
    let lib = library();
    let dir = TempDir::new("c-semantics");
    let program = compile("c_semantics", dir.path());
    let output = run(&mut Command::new(&program), Some(lib));
    assert!(
        output.status.success(),
        "c_semantics under {}: {}\n{}{}",
        lib.display(),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("checks passed"), "{stdout}");
}

/// A Python workload that allocates much: a dict of 200k strings, a JSON round trip, a sort,
/// and a digest of the result.
const PYTHON_WORKLOAD: &str = r#"
import hashlib, json, random
random.seed(5)
letters = "abcdefghijklmnopqrstuvwxyz"
table = {}
for i in range(200_000):
    word = "".join(letters[(i * 7 + j * 13) % 26] for j in range(1 + i % 17))
    table["k%06d-%s" % (i, word)] = [i, str(i * 7), {"n": i % 97, "w": word}]
blob = json.dumps(table, sort_keys=True)
back = json.loads(blob)
assert back == table
keys = sorted(back, key=lambda k: (len(k), k[::-1]))
digest = hashlib.sha256("\n".join(keys).encode()).hexdigest()
shuffled = list(back.values())
random.shuffle(shuffled)
total = sum(v[0] for v in shuffled) + sum(len(v[2]["w"]) for v in shuffled)
print(len(blob), len(keys), keys[0], keys[-1], total, digest)
"#;

#[test]
#[cfg_attr(miri, ignore = "Miri cannot start processes")]
fn python_runs_the_same() {
    let plain = same_with_and_without("python3", || {
        let mut c = Command::new("python3");
        c.args(["-c", PYTHON_WORKLOAD])
            .env("PYTHONHASHSEED", "0")
            .env("PYTHONDONTWRITEBYTECODE", "1");
        c
    });
    assert!(plain.status.success(), "{plain:?}");
    assert!(plain.stdout.len() > 64, "{plain:?}");
}

#[test]
#[cfg_attr(miri, ignore = "Miri cannot start processes")]
fn ls_lists_the_same() {
    let plain = same_with_and_without("ls -lR /usr/share", || {
        let mut c = Command::new("ls");
        c.args(["-lR", "/usr/share"]);
        c
    });
    assert!(plain.stdout.len() > 100_000, "a listing of /usr/share");
}

/// Writes a file of `lines` lines of words and numbers, the same every run.
fn write_sort_input(path: &Path, lines: usize) {
    let mut text = String::with_capacity(lines * 24);
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    for _ in 0..lines {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let word: String = (0..3 + x % 9)
            .map(|i| char::from(b'a' + ((x >> (i * 5)) % 26) as u8))
            .collect();
        text.push_str(&format!("{word} {} {:x}\n", x % 100_000, x >> 40));
    }
    std::fs::write(path, text).expect("writing the sort input");
}

#[test]
#[cfg_attr(miri, ignore = "Miri cannot start processes")]
fn sort_sorts_the_same() {
    let dir = TempDir::new("sort");
    let input = dir.path().join("input.txt");
    write_sort_input(&input, 250_000);
    // In memory; then on a field, numerically, through temporary files (a 256 KiB buffer)
    // with two sorting threads.
    let plain = same_with_and_without("sort", || {
        let mut c = Command::new("sort");
        c.arg(&input);
        c
    });
    assert!(plain.status.success());
    assert_eq!(
        plain.stdout.len(),
        std::fs::metadata(&input).unwrap().len() as usize
    );
    let plain = same_with_and_without("sort -k2,2n -S 256K", || {
        let mut c = Command::new("sort");
        c.args(["-k2,2n", "-k1,1", "-S", "256K", "--parallel=2", "-T"])
            .arg(dir.path())
            .arg(&input);
        c
    });
    assert!(plain.status.success());
}

#[test]
#[cfg_attr(miri, ignore = "Miri cannot start processes")]
fn gcc_compiles_the_same() {
    let lib = library();
    let dir = TempDir::new("gcc");
    let source = Path::new(REPO).join("tests/preload/sieve.c");
    let gcc = |out: &str, preload: Option<&Path>| {
        run(
            Command::new("gcc")
                .args(["-O2", "-Wall", "-o"])
                .arg(dir.path().join(out))
                .arg(&source),
            preload,
        )
    };
    let plain = gcc("plain", None);
    let preloaded = gcc("preloaded", Some(lib));
    assert_same("gcc", &plain, &preloaded);
    assert!(plain.status.success(), "{plain:?}");
    assert!(
        String::from_utf8_lossy(&plain.stderr).contains("unused_on_purpose"),
        "gcc -Wall warns about the planted unused variable"
    );
    let ran_plain = run(&mut Command::new(dir.path().join("plain")), None);
    let ran_preloaded = run(&mut Command::new(dir.path().join("preloaded")), None);
    assert_same("the compiled sieve", &ran_plain, &ran_preloaded);
    assert!(
        String::from_utf8_lossy(&ran_plain.stdout).starts_with("primes up to 2000000: 148933"),
        "{ran_plain:?}"
    );
    // gcc is deterministic: the same source gives the same bytes, whatever malloc it ran on.
    let a = std::fs::read(dir.path().join("plain")).unwrap();
    let b = std::fs::read(dir.path().join("preloaded")).unwrap();
    assert!(a == b, "the two binaries differ");
}

/// The git session both runs go through, each in a repository of its own.
const GIT_STEPS: &[&[&str]] = &[
    &["init", "-q", "-b", "main"],
    &["add", "."],
    &["commit", "-q", "-m", "first: three files"],
    &["rm", "-q", "b.txt"],
    &["mv", "a.txt", "renamed.txt"],
    &["commit", "-q", "-m", "second: remove one, rename one"],
    &["log", "--stat", "--format=%H %an %ad %s", "--date=iso"],
    &["gc", "-q", "--aggressive"],
    &["fsck", "--full", "--no-progress"],
    &["count-objects", "-v"],
    &["log", "--stat", "-p", "--format=%H %s"],
];

/// Runs `GIT_STEPS` in a new repository at `dir`, with dates, names and config pinned,
/// and returns every step's status, stdout and stderr, in order.
fn git_session(dir: &Path, lib: Option<&Path>) -> Output {
    std::fs::create_dir_all(dir).unwrap();
    for (name, lines) in [("a.txt", 3000), ("b.txt", 10), ("c.txt", 20000)] {
        let text: String = (0..lines).map(|i| format!("{name} line {i}\n")).collect();
        std::fs::write(dir.join(name), text).unwrap();
    }
    let mut all = Output {
        status: std::process::ExitStatus::default(),
        stdout: Vec::new(),
        stderr: Vec::new(),
    };
    for step in GIT_STEPS {
        let output = run(
            Command::new("git")
                .args(*step)
                .current_dir(dir)
                .env("HOME", dir)
                .env("GIT_CONFIG_NOSYSTEM", "1")
                .env("GIT_CONFIG_GLOBAL", "/dev/null")
                .env("GIT_AUTHOR_NAME", "Heap Layers")
                .env("GIT_AUTHOR_EMAIL", "layers@example.com")
                .env("GIT_COMMITTER_NAME", "Heap Layers")
                .env("GIT_COMMITTER_EMAIL", "layers@example.com")
                .env("GIT_AUTHOR_DATE", "2024-05-01T12:00:00Z")
                .env("GIT_COMMITTER_DATE", "2024-05-01T12:00:00Z"),
            lib,
        );
        let header = format!("$ git {} -> {}\n", step.join(" "), output.status);
        all.stdout.extend_from_slice(header.as_bytes());
        all.stdout.extend_from_slice(&output.stdout);
        all.stderr.extend_from_slice(header.as_bytes());
        all.stderr.extend_from_slice(&output.stderr);
        if !output.status.success() {
            all.status = output.status;
            break;
        }
    }
    all
}

#[test]
#[cfg_attr(miri, ignore = "Miri cannot start processes")]
fn git_does_the_same() {
    let lib = library();
    let dir = TempDir::new("git");
    let plain = git_session(&dir.path().join("plain"), None);
    let preloaded = git_session(&dir.path().join("preloaded"), Some(lib));
    assert_same("git", &plain, &preloaded);
    assert!(
        plain.status.success(),
        "{}",
        String::from_utf8_lossy(&plain.stderr)
    );
    let log = String::from_utf8_lossy(&plain.stdout);
    assert!(log.contains("renamed.txt"), "{log}");
}

/// The numbers on a summary line after `prefix`, e.g. `[5, 2, 9092980]` for `totals: 5
/// allocations, 2 frees, 9092980 bytes allocated`; fails the test when no line starts so.
fn summary_numbers(summary: &str, prefix: &str) -> Vec<u64> {
    let line = summary
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting {prefix:?} in the summary:\n{summary}"));
    line[prefix.len()..]
        .split(|c: char| !c.is_ascii_digit())
        .filter(|w| !w.is_empty())
        .map(|w| w.parse().unwrap())
        .collect()
}

#[test]
#[cfg_attr(miri, ignore = "Miri cannot start processes")]
fn the_summary_reports_the_three_leaks() {
    let lib = library();
    let dir = TempDir::new("summary");
    let program = compile("leak_three", dir.path());

    let quiet = run(&mut Command::new(&program), Some(lib));
    assert!(quiet.status.success(), "{quiet:?}");
    assert!(
        quiet.stderr.is_empty(),
        "without STRATALLOC_SUMMARY=1 the library prints nothing, but printed:\n{}",
        String::from_utf8_lossy(&quiet.stderr)
    );

    let output = run(
        Command::new(&program).env("STRATALLOC_SUMMARY", "1"),
        Some(lib),
    );
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        output.stdout, b"leaked 3 blocks\n",
        "the program's own output"
    );
    let summary = String::from_utf8_lossy(&output.stderr);
    assert!(
        summary.starts_with("stratalloc heap summary"),
        "stderr opens with the summary:\n{summary}"
    );

    // The program asks for 8 MiB and 100 B (both freed), then 40, 3000 and 700000 B.
    let leaked = [40u64, 3000, 700_000];
    let asked = (8 << 20) + 100 + leaked.iter().sum::<u64>();
    let totals = summary_numbers(&summary, "totals: ");
    let [allocations, frees, bytes] = totals[..] else {
        panic!("totals: want allocations, frees, bytes; got {totals:?}\n{summary}");
    };
    assert!(allocations >= 5 && frees >= 2, "{summary}");
    assert_eq!(allocations - frees, 3, "allocations less frees:\n{summary}");
    assert!(
        bytes >= asked,
        "at least {asked} bytes allocated:\n{summary}"
    );

    let peak = summary_numbers(&summary, "peak: ");
    let [peak_bytes, peak_blocks] = peak[..] else {
        panic!("peak: want bytes, blocks; got {peak:?}\n{summary}");
    };
    assert!(
        peak_bytes >= 8 << 20,
        "the 8 MiB block was live:\n{summary}"
    );
    assert!(peak_blocks >= 1, "{summary}");

    // Every leaked block on a size line, each size at least its request and not absurdly
    // more (a size class or whole pages).
    let by_size = summary
        .split_once("live blocks by size:\n")
        .unwrap_or_else(|| panic!("no 'live blocks by size:' line:\n{summary}"))
        .1;
    let mut sizes = Vec::new();
    for line in by_size.lines().take_while(|l| l.starts_with("  ")) {
        let (size, count) = line
            .trim()
            .split_once(" B x ")
            .unwrap_or_else(|| panic!("a size line is '  <size> B x <count>': {line:?}"));
        let (size, count): (u64, u64) = (size.parse().unwrap(), count.parse().unwrap());
        sizes.extend(std::iter::repeat_n(size, count as usize));
    }
    assert!(sizes.is_sorted(), "sizes ascending:\n{summary}");
    assert_eq!(sizes.len(), 3, "three live blocks listed:\n{summary}");
    for (size, asked) in sizes.iter().zip(leaked) {
        assert!(
            (asked..=2 * asked + 4096).contains(size),
            "a {asked}-byte leak listed as {size} B:\n{summary}"
        );
    }

    let leaks = summary_numbers(&summary, "leaks: ");
    assert_eq!(leaks, [3, sizes.iter().sum::<u64>()], "{summary}");
    assert!(
        summary.lines().any(|l| l.starts_with("leaks: 3 blocks, ")),
        "{summary}"
    );
}

/// The library linked rather than preloaded, shared (`-lstratalloc`) and static (the
/// `.a` beside it): `tests/preload/linked.c` turns counting on, keeps two blocks of three
/// and asks for the summary on stdout (`stratalloc_summary`) and stderr (`malloc_stats`),
/// both declared by `malloc/stratalloc.h`. The counts prove that the program's
/// `malloc` is ours: glibc's would leave them at zero.
#[test]
#[cfg_attr(miri, ignore = "Miri cannot start processes")]
fn a_c_program_links_the_shared_and_the_static_library() {
    if std::env::var_os(LIB_VAR).is_some() {
        eprintln!("skipped: {LIB_VAR} names another library");
        return;
    }
    let shared = library();
    let libdir = shared.parent().expect("the library's directory");
    let archive = libdir.join("libstratalloc.a");
    assert!(archive.is_file(), "no {}", archive.display());
    let dir = TempDir::new("linked");
    let source = Path::new(REPO).join("tests/preload/linked.c");
    let header_dir = Path::new(REPO).join("malloc");
    let build = |name: &str, link: &mut dyn FnMut(&mut Command)| {
        let program = dir.path().join(name);
        let mut gcc = Command::new("gcc");
        gcc.args(["-O2", "-Wall", "-Werror", "-pthread", "-I"])
            .arg(&header_dir)
            .arg("-o")
            .arg(&program)
            .arg(&source);
        link(&mut gcc);
        let output = run(&mut gcc, None);
        assert!(
            output.status.success(),
            "gcc ({name}): {}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        program
    };
    let dynamic = build("linked_shared", &mut |gcc| {
        gcc.arg("-L")
            .arg(libdir)
            .arg("-lstratalloc")
            .arg(format!("-Wl,-rpath,{}", libdir.display()));
    });
    let fixed = build("linked_static", &mut |gcc| {
        gcc.arg(&archive);
    });
    for program in [dynamic, fixed] {
        let output = run(&mut Command::new(&program), None);
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "{}: {}\n{stdout}{stderr}",
            program.display(),
            output.status
        );
        assert!(stdout.ends_with("linked: done\n"), "{stdout}");
        for (what, summary) in [("stratalloc_summary", &*stdout), ("malloc_stats", &*stderr)] {
            assert!(
                summary.starts_with("stratalloc heap summary"),
                "{what} in {}:\n{summary}",
                program.display()
            );
            let totals = summary_numbers(summary, "totals: ");
            assert_eq!(
                totals[..2],
                [3, 1],
                "{what}: 3 allocations, 1 free:\n{summary}"
            );
            assert_eq!(
                summary_numbers(summary, "leaks: ")[0],
                2,
                "{what}: 2 blocks live:\n{summary}"
            );
        }
    }
}
