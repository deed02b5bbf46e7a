//! Memory kept between regions: a region per request ([`Region::arena`]), or one region
//! reset between requests, makes no system call once warm; `reset` keeps the region's
//! memory and `give_back` returns it. The system calls are counted by tracing a child
//! process with `ptrace` (Linux on x86-64), between two marker calls around the requests.

use std::collections::HashMap;
use std::hint::black_box;

#[cfg(target_os = "linux")]
use stratalloc::layers::Mmap;
use stratalloc::layers::{Chunk, Ground, Stats};
use stratalloc::{Gauge, Region, region};

/// Requests made between the markers (after as many again to warm up).
#[cfg(target_os = "linux")]
const REQUESTS: usize = if cfg!(miri) { 20 } else { 10_000 };

/// Lines in a request's body: 120 (24 under Miri, which would take seconds per request).
const LINES: usize = if cfg!(miri) { 24 } else { 120 };

/// A form body of about 4 KB: `LINES` lines of `key=value,value,value`, keys repeated.
fn body() -> String {
    (0..LINES)
        .map(|i| format!("field{}=alpha{i},beta{},gamma\n", i % 40, i * 7))
        .collect()
}

/// One request's work: the body parsed into a map of owned strings (about 450
/// allocations), and a figure read from it.
fn handle(body: &str) -> usize {
    let mut fields: HashMap<String, Vec<String>> = HashMap::new();
    for line in body.lines() {
        let (key, values) = line.split_once('=').expect("a key=values line");
        fields
            .entry(key.to_string())
            .or_default()
            .extend(values.split(',').map(str::to_string));
    }
    fields.values().map(Vec::len).sum()
}

#[test]
fn a_request_s_allocations_come_from_its_region() {
    let body = body();
    let arena = Region::new(Stats::new(stratalloc::presets::region_arena()));
    assert_eq!(region::enter(&arena, || handle(&body)), 3 * LINES);
    let figures = arena.gauge();
    assert!(figures.gets > 2 * LINES as u64, "{figures}");
    assert_eq!(figures.live, 0, "{figures}");
}

#[test]
fn reset_keeps_the_newest_chunk_and_give_back_returns_it() {
    let body = body();
    let arena = Region::new(Chunk::<Stats<Ground>, 65536>::new(
        Stats::new(Ground::new()),
    ));
    let pieces = || arena.with_layer(|chunk| chunk.inner().gauge().live);
    region::enter(&arena, || black_box(handle(&body)));
    assert_eq!(pieces(), 1, "one chunk holds a request");
    let rounds = if cfg!(miri) { 3 } else { 100 };
    for _ in 0..rounds {
        assert!(arena.reset());
        assert_eq!(pieces(), 1, "reset keeps the chunk");
        region::enter(&arena, || black_box(handle(&body)));
    }
    let gets = arena.with_layer(|chunk| chunk.inner().gauge().gets);
    assert_eq!(
        gets, 1,
        "every request after the first reused the kept chunk"
    );
    assert!(arena.give_back());
    assert_eq!(pieces(), 0, "give_back returns it");
    region::enter(&arena, || black_box(handle(&body)));
    assert_eq!(pieces(), 1, "and the region takes memory afresh");
}

#[test]
fn reset_and_give_back_refuse_while_a_block_is_live() {
    let arena = Region::arena();
    let kept = region::enter(&arena, || vec![7u8; 100]);
    assert!(!arena.reset());
    assert!(!arena.give_back());
    assert_eq!(kept[99], 7, "the block is intact");
    drop(kept);
    assert!(arena.reset());
}

/// The scenarios the tracing tests run in a child process (when started by
/// `memory_calls_during_requests`).
#[test]
#[cfg(target_os = "linux")]
fn child() {
    let Some(scenario) = crate::child_scenario() else {
        return;
    };
    let body = body();
    let request: Box<dyn Fn()> = match scenario.as_str() {
        "region_per_request" => Box::new(|| {
            let arena = Region::arena();
            black_box(region::enter(&arena, || handle(&body)));
        }),
        "region_reset_between_requests" => {
            let arena = Region::arena();
            Box::new(move || {
                black_box(region::enter(&arena, || handle(&body)));
                assert!(arena.reset());
            })
        }
        "mmap_region_per_request" => Box::new(|| {
            let arena = Region::new(Chunk::<Mmap, 65536>::new(Mmap::new()));
            black_box(region::enter(&arena, || handle(&body)));
        }),
        other => panic!("unknown scenario {other}"),
    };
    for _ in 0..REQUESTS {
        request();
    }
    mark();
    for _ in 0..REQUESTS {
        request();
    }
    mark();
}

/// The marker the tracer looks for: a system call nothing else in the child makes.
#[cfg(target_os = "linux")]
fn mark() {
    // SAFETY: `getppid` has no preconditions.
    unsafe { libc::getppid() };
}

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod traced {
    use super::REQUESTS;

    /// The system calls that map, unmap or move memory, or grow the heap.
    const MEMORY_CALLS: [libc::c_long; 6] = [
        libc::SYS_mmap,
        libc::SYS_munmap,
        libc::SYS_mremap,
        libc::SYS_brk,
        libc::SYS_madvise,
        libc::SYS_mprotect,
    ];

    /// Runs `scenario` in a child traced with `ptrace` and returns the memory system calls
    /// (by number) that any of its threads made between its two markers.
    fn memory_calls_during_requests(scenario: &str) -> Vec<libc::c_long> {
        use std::collections::HashMap;
        use std::os::unix::process::CommandExt;

        let mut command = std::process::Command::new(std::env::current_exe().expect("binary"));
        command
            .args(["region_reuse::child", "--exact", "--test-threads=1"])
            .env(crate::CHILD_VAR, scenario)
            .stdout(std::process::Stdio::null())
            // A process group of its own, so that the waits below see only its threads,
            // never the children of tests running beside this one.
            .process_group(0);
        // SAFETY: between fork and exec the closure makes one `ptrace` call, which is
        // async-signal-safe, and allocates nothing.
        unsafe {
            command.pre_exec(|| {
                if libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            })
        };
        let child = command.spawn().expect("starting the traced child");
        let pid = child.id() as libc::pid_t;
        let mut status = 0;
        // SAFETY: waiting for our own child, which stops at its `exec`.
        let stopped = unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(
            stopped == pid && libc::WIFSTOPPED(status),
            "the child did not stop at exec (is ptrace permitted here?): status {status:#x}"
        );
        let options = libc::PTRACE_O_TRACESYSGOOD | libc::PTRACE_O_TRACECLONE;
        // SAFETY: `pid` is our tracee, stopped.
        let set = unsafe { libc::ptrace(libc::PTRACE_SETOPTIONS, pid, 0, options) };
        assert_eq!(
            set,
            0,
            "PTRACE_SETOPTIONS: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: as above.
        unsafe { libc::ptrace(libc::PTRACE_SYSCALL, pid, 0, 0) };

        // Per thread: whether it is inside a system call (its next syscall stop is the exit).
        let mut inside: HashMap<libc::pid_t, bool> = HashMap::from([(pid, false)]);
        let (mut markers, mut calls, mut exit) = (0, Vec::new(), None);
        loop {
            // SAFETY: waiting for any thread of our tracee (its process group is `pid`).
            let tid = unsafe { libc::waitpid(-pid, &mut status, libc::__WALL) };
            if tid == -1 {
                break; // no tracee left
            }
            if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
                if tid == pid {
                    exit = Some(status);
                }
                continue;
            }
            let signal = libc::WSTOPSIG(status);
            let mut deliver = 0;
            if signal == libc::SIGTRAP | 0x80 {
                let entering = !inside.get(&tid).copied().unwrap_or(false);
                inside.insert(tid, entering);
                if entering {
                    let offset = 8 * libc::ORIG_RAX as usize;
                    // SAFETY: `tid` is a tracee in a syscall stop; the offset is that of
                    // `orig_rax` in its `user_regs_struct`.
                    let number = unsafe { libc::ptrace(libc::PTRACE_PEEKUSER, tid, offset, 0) };
                    if number == libc::SYS_getppid {
                        markers += 1;
                    } else if markers == 1 && MEMORY_CALLS.contains(&number) {
                        calls.push(number);
                    }
                }
            } else if signal == libc::SIGTRAP
                || (signal == libc::SIGSTOP && !inside.contains_key(&tid))
            {
                // A clone event, or a new thread's first stop: nothing to deliver.
                inside.entry(tid).or_insert(false);
            } else {
                deliver = signal;
            }
            // SAFETY: `tid` is a stopped tracee.
            unsafe { libc::ptrace(libc::PTRACE_SYSCALL, tid, 0, deliver) };
        }
        drop(child);
        let exit = exit.expect("the child's exit");
        assert!(
            libc::WIFEXITED(exit) && libc::WEXITSTATUS(exit) == 0,
            "the child failed: status {exit:#x}"
        );
        assert_eq!(markers, 2, "both markers seen");
        calls
    }

    /// Fails unless `scenario`'s requests made no memory system call.
    fn assert_no_memory_calls(scenario: &str) {
        let calls = memory_calls_during_requests(scenario);
        assert!(
            calls.is_empty(),
            "{scenario}: {} calls over {REQUESTS} requests: {calls:?}",
            calls.len()
        );
    }

    #[test]
    #[cfg_attr(miri, ignore = "starts a traced process")]
    fn a_region_per_request_makes_no_memory_system_call_once_warm() {
        assert_no_memory_calls("region_per_request");
    }

    #[test]
    #[cfg_attr(miri, ignore = "starts a traced process")]
    fn a_region_reset_between_requests_makes_no_memory_system_call_once_warm() {
        assert_no_memory_calls("region_reset_between_requests");
    }

    /// The tracer sees what it counts: a region per request over `Mmap` maps and unmaps a
    /// chunk per request.
    #[test]
    #[cfg_attr(miri, ignore = "starts a traced process")]
    fn the_tracer_counts_a_map_and_an_unmap_per_request_over_mmap() {
        let calls = memory_calls_during_requests("mmap_region_per_request");
        let maps = calls.iter().filter(|&&c| c == libc::SYS_mmap).count();
        let unmaps = calls.iter().filter(|&&c| c == libc::SYS_munmap).count();
        assert!(
            maps >= REQUESTS && unmaps >= REQUESTS,
            "{maps} maps, {unmaps} unmaps"
        );
    }
}
