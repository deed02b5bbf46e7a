//! What safe code can do to the router that must not reach undefined behaviour, hang, or
//! send a free to the wrong allocator: claims the OS refuses, layers that panic, pipe
//! regions in cycles, zombies freed from several threads, memory released under a
//! protected `Box`, and the standard library's lazily made state inside checking regions.

use std::alloc::Layout;
use std::time::Duration;

use stratalloc::layers::Mmap;
use stratalloc::{Region, region};

/// The bytes of address space this process has mapped (`VmSize`).
fn mapped_address_space() -> usize {
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
fn limit_address_space(bytes: Option<usize>) {
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

/// The child side of the process-level tests below: does nothing unless started by
/// `run_child`.
#[test]
fn child() {
    let Some(scenario) = crate::child_scenario() else {
        return;
    };
    match scenario.as_str() {
        "refused_leaf" => refused_leaf(),
        other => panic!("unknown scenario {other}"),
    }
}

/// A region's `Mmap` maps a block spanning several gibibytes, each of which needs a leaf
/// of the page map (4 MiB); the address-space limit lets the block's map and one leaf
/// through and refuses the next leaf. The failed claim must leave no page claimed, or the
/// next system allocation placed there would be routed to the region.
fn refused_leaf() {
    const SIZE: usize = 5 << 29; // 2.5 GiB: three or four leaves
    const LEAF: usize = (4 << 20) + (32 << 10);
    // SAFETY: an anonymous map at an address of the kernel's choosing, unmapped at once:
    // it tells where the region's map of the same size will go.
    let probe = unsafe {
        let probe = libc::mmap(
            std::ptr::null_mut(),
            SIZE,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(probe, libc::MAP_FAILED);
        libc::munmap(probe, SIZE);
        probe.addr()
    };
    let region = Region::new(Mmap::new());
    let layout = Layout::from_size_align(SIZE, 4096).unwrap();
    // The block, the Mmap's table (one page) and one leaf fit; a second leaf does not.
    limit_address_space(Some(
        mapped_address_space() + SIZE + 4096 + LEAF + (1 << 20),
    ));
    // SAFETY: a valid non-zero layout; a null result is handled.
    let block = region::enter(&region, || unsafe { std::alloc::alloc(layout) });
    limit_address_space(None);
    assert!(block.is_null(), "the limit was meant to refuse a leaf");
    let claimed = (probe.saturating_sub(SIZE)..probe + 2 * SIZE)
        .step_by(4096)
        .filter(|&page| region::served_by_a_region(std::ptr::without_provenance(page)))
        .count();
    assert_eq!(claimed, 0, "pages stayed claimed after the failed claim");
    println!("refused leaf child passed");
}

#[test]
#[cfg_attr(miri, ignore = "Miri cannot start processes")]
fn a_claim_the_os_refuses_half_way_claims_nothing() {
    let output = crate::run_child_within(
        "region_hazards::child",
        "refused_leaf",
        Duration::from_secs(60),
    )
    .expect("the child finished");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("refused leaf child passed"),
        "{:?}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}
