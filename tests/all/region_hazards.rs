//! What safe code can do to the router that must not reach undefined behaviour, hang, or
//! send a free to the wrong allocator: claims the OS refuses, layers that panic, pipe
//! regions in cycles, zombies freed from several threads, memory released under a
//! protected `Box`, and the standard library's lazily made state inside checking regions.

use std::alloc::Layout;
use std::ptr::NonNull;
use std::sync::mpsc;
use std::time::Duration;

use stratalloc::layers::{Check, Chunk, Deferred, Ground, Mmap, Pipe, Stats};
use stratalloc::region::{Attributed, Attribution};
use stratalloc::{Layer, Region, check_leaks, region};

use crate::{limit_address_space, mapped_address_space};

/// The child side of the process-level tests below: does nothing unless started by
/// `run_child`.
#[test]
fn child() {
    let Some(scenario) = crate::child_scenario() else {
        return;
    };
    match scenario.as_str() {
        "refused_leaf" => refused_leaf(),
        "pipes_both_ways" => pipes_both_ways(),
        "pipe_zombies_freed_from_two_threads" => pipe_zombies_freed_from_two_threads(),
        "panicking_layer" => panicking_layer(),
        "panicking_drop_of_a_zombie" => panicking_drop_of_a_zombie(),
        "panic_inside_check_leaks" => panic_inside_check_leaks(),
        "deferred_check_region_gives_back" => deferred_check_region_gives_back(),
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
    crate::assert_child_passed(&output, "refused leaf child passed");
}

/// A pipe region over `Chunk<_, 4096>`: blocks of more than a quarter of a chunk go to the
/// pipe as pieces of their own, so that freeing one gives a piece back to its origin.
type Piped = Stats<Chunk<Pipe, 4096>>;

fn piped() -> Region<Piped> {
    Region::new(Stats::new(Chunk::new(Pipe::new())))
}

/// Two pipe regions inside an outer region, entered in both orders, then all dropped once
/// every block is freed: everything must be given back, and no escape reported.
fn pipes_both_ways() {
    let start = Mmap::process_mapped_bytes();
    let outer = Region::new(Chunk::<_, 65536>::new(Mmap::new()));
    let (a, b) = (piped(), piped());
    // Small blocks make each region take a chunk from the one it is entered in (and keep
    // it until it ends); large ones take pieces of their own (given back when freed).
    region::enter(&outer, || {
        region::enter(&a, || region::enter(&b, || drop(Box::new([1u8; 64]))));
        region::enter(&b, || region::enter(&a, || drop(Box::new([2u8; 64]))));
        region::enter(&a, || region::enter(&b, || drop(vec![3u8; 3000])));
        region::enter(&b, || region::enter(&a, || drop(vec![4u8; 3000])));
    });
    drop(a);
    drop(outer);
    drop(b);
    region::release_zombies();
    assert_eq!(
        Mmap::process_mapped_bytes(),
        start,
        "memory stayed mapped after every region ended"
    );
    println!("pipes both ways child passed");
}

/// Blocks of two pipe regions entered in both orders, dropped while their blocks live on,
/// then freed from two threads at once.
fn pipe_zombies_freed_from_two_threads() {
    // With `paranoid` every get and put walks the pipe's table and the chunk's list of large
    // blocks: 500 blocks a region keep the child well inside its 30 s.
    const BLOCKS: usize = if cfg!(feature = "paranoid") {
        500
    } else {
        5000
    };
    let (a, b) = (piped(), piped());
    let in_b: Vec<Vec<u8>> = region::enter(&a, || {
        region::enter(&b, || (0..BLOCKS).map(|_| vec![1u8; 2000]).collect())
    });
    let in_a: Vec<Vec<u8>> = region::enter(&b, || {
        region::enter(&a, || (0..BLOCKS).map(|_| vec![2u8; 2000]).collect())
    });
    let addresses: Vec<usize> = in_a
        .iter()
        .chain(&in_b)
        .map(|v| v.as_ptr().addr())
        .collect();
    drop(a);
    drop(b);
    let start = std::sync::Barrier::new(2);
    std::thread::scope(|scope| {
        for blocks in [in_a, in_b] {
            let start = &start;
            scope.spawn(move || {
                start.wait();
                for block in blocks {
                    drop(block);
                }
            });
        }
    });
    region::release_zombies();
    let still_claimed = addresses
        .iter()
        .filter(|&&a| region::served_by_a_region(std::ptr::without_provenance(a)))
        .count();
    assert_eq!(
        still_claimed, 0,
        "pages of the ended regions stayed claimed"
    );
    println!("pipe zombies child passed");
}

/// A user's layer whose `get` panics when asked for 999 bytes, and, with `ON_DROP`, whose
/// drop panics (an assertion in a user's layer, say).
struct Panicky<L, const ON_DROP: bool = false>(L);

impl<L, const ON_DROP: bool> Drop for Panicky<L, ON_DROP> {
    fn drop(&mut self) {
        assert!(!ON_DROP, "Panicky panics when dropped");
    }
}

// SAFETY: every block comes unchanged from `L`; puts go back to it.
unsafe impl<L: Layer, const ON_DROP: bool> Layer for Panicky<L, ON_DROP> {
    fn get(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        assert_ne!(layout.size(), 999, "Panicky refuses 999 bytes");
        self.0.get(layout)
    }
    unsafe fn put(&mut self, ptr: NonNull<u8>, layout: Layout) {
        // SAFETY: the caller's duties are `L::put`'s.
        unsafe { self.0.put(ptr, layout) }
    }
    fn init() -> Self {
        Panicky(L::init())
    }
    fn deinit(&mut self) {
        self.0.deinit()
    }
}

// SAFETY: forwarded to `L`, which claims the pages of every block.
unsafe impl<L: Attributed, const ON_DROP: bool> Attributed for Panicky<L, ON_DROP> {
    fn attribute(&mut self, owner: Attribution) {
        self.0.attribute(owner)
    }
}

fn panicking_layer() {
    let region = Region::new(Panicky::<_, false>(Mmap::new()));
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        region::enter(&region, || vec![0u8; 999].len())
    }));
    println!("the panic unwound out of the allocator: {caught:?}");
}

/// A region of a layer whose drop panics ends with a block live (a zombie); the block is
/// freed inside another region, whose next allocation disposes of the zombie, inside the
/// allocator.
fn panicking_drop_of_a_zombie() {
    let other = Region::arena();
    let zombie = Region::new(Panicky::<_, true>(Mmap::new()));
    let escaped = region::enter(&zombie, || Box::new([7u8; 64]));
    drop(zombie);
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        region::enter(&other, || {
            drop(escaped);
            vec![1u8; 100].len()
        })
    }));
    println!("the panic unwound out of the allocator: {caught:?}");
}

fn panic_inside_check_leaks() {
    let checked = check_leaks(|| {
        let caught = std::panic::catch_unwind(|| panic!("a panic caught inside the scope"));
        caught.is_err()
    });
    match checked {
        Ok(true) => println!("panic inside check_leaks child passed"),
        Ok(false) => panic!("the panic was not caught"),
        Err(report) => panic!("the panic machinery was charged to the closure: {report}"),
    }
}

#[test]
#[cfg_attr(miri, ignore = "Miri cannot start processes")]
fn pipe_regions_entered_both_ways_give_everything_back() {
    let output = crate::run_child_within(
        "region_hazards::child",
        "pipes_both_ways",
        Duration::from_secs(60),
    )
    .expect("the child finished");
    crate::assert_child_passed(&output, "pipes both ways child passed");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("still live"),
        "an escape was reported where every block was freed: {stderr}"
    );
}

#[test]
#[cfg_attr(miri, ignore = "Miri cannot start processes")]
fn zombie_pipe_regions_freed_from_two_threads_do_not_deadlock() {
    for _ in 0..3 {
        let output = crate::run_child_within(
            "region_hazards::child",
            "pipe_zombies_freed_from_two_threads",
            Duration::from_secs(30),
        )
        .expect("the child hung: zombie pipe regions deadlocked");
        crate::assert_child_passed(&output, "pipe zombies child passed");
    }
}

#[test]
#[cfg_attr(miri, ignore = "Miri cannot start processes")]
fn a_panicking_layer_aborts_with_one_line_instead_of_unwinding() {
    let output = crate::run_child_within(
        "region_hazards::child",
        "panicking_layer",
        Duration::from_secs(60),
    )
    .expect("the child finished");
    crate::assert_aborted_with(
        &output,
        "region_hazards::Panicky<stratalloc::layers::sources::mmap::Mmap>::get` panicked inside the allocator",
    );
}

#[test]
#[cfg_attr(miri, ignore = "Miri cannot start processes")]
fn a_layer_whose_drop_panics_aborts_when_its_zombie_goes_inside_the_allocator() {
    let output = crate::run_child_within(
        "region_hazards::child",
        "panicking_drop_of_a_zombie",
        Duration::from_secs(60),
    )
    .expect("the child finished");
    // The region's end with a block live was reported first, on a line of its own.
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("stratalloc:"))
        .collect();
    assert!(
        lines[0].contains("a region ended with 1 blocks still live"),
        "{stderr}"
    );
    let rest = std::process::Output {
        stderr: stderr.replacen(lines[0], "", 1).into_bytes(),
        ..output
    };
    crate::assert_aborted_with(
        &rest,
        "region_hazards::Panicky<stratalloc::layers::sources::mmap::Mmap, true>::drop` panicked \
         inside the allocator",
    );
}

/// Runs the scenario in a child with libtest's output capture on or off and
/// `RUST_BACKTRACE` as given.
fn run_child_captured(scenario: &str, capture: bool, backtrace: &str) -> std::process::Output {
    let mut args = vec!["region_hazards::child", "--exact", "--test-threads=1"];
    if !capture {
        args.push("--nocapture");
    }
    std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args(args)
        .env("STRATALLOC_CHILD", scenario)
        .env("RUST_BACKTRACE", backtrace)
        .output()
        .expect("running the test binary again")
}

#[test]
#[cfg_attr(miri, ignore = "Miri cannot start processes")]
fn a_panic_caught_inside_check_leaks_is_not_charged_to_it() {
    for capture in [false, true] {
        for backtrace in ["0", "1", "full"] {
            let output = run_child_captured("panic_inside_check_leaks", capture, backtrace);
            let stdout = String::from_utf8_lossy(&output.stdout);
            assert!(
                output.status.success(),
                "capture {capture}, RUST_BACKTRACE={backtrace}: {:?}\n{stdout}\n{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
}

#[test]
fn a_panic_caught_inside_check_leaks_in_this_process() {
    panic_inside_check_leaks();
}

#[test]
fn printing_inside_check_leaks_is_not_a_leak() {
    // `cargo test` captures output: the first print of a test allocates the capture's
    // buffer, here inside the checked closure.
    let checked = check_leaks(|| {
        println!("printed inside the checked closure");
        eprintln!("and to stderr");
        1
    });
    assert_eq!(checked.map_err(|r| r.to_string()), Ok(1));
}

#[test]
fn a_byte_buffer_leaked_after_printing_is_still_reported() {
    let report = check_leaks(|| {
        println!("printed inside the checked closure");
        String::from("leaked").leak().len()
    })
    .expect_err("the leaked string went unreported");
    assert_eq!((report.blocks(), report.bytes()), (1, 6), "{report}");
}

#[test]
fn blocks_of_a_region_forgotten_by_an_exited_thread_are_freed_anywhere() {
    // The region's owner thread forgets its handle and exits; threads made afterwards may
    // reuse its thread state, and with it the token the region still names as its owner.
    let count = if cfg!(miri) { 6 } else { 200 };
    let blocks: Vec<(Vec<u8>, u8)> = std::thread::spawn(move || {
        let region = Region::new(Stats::new(Chunk::<_, 4096>::new(Mmap::new())));
        let blocks = region::enter(&region, || {
            (0..count)
                .map(|i| (vec![i as u8; if i % 3 == 0 { 3000 } else { 40 }], i as u8))
                .collect()
        });
        std::mem::forget(region);
        blocks
    })
    .join()
    .unwrap();
    let mut rest = blocks;
    while !rest.is_empty() {
        let batch: Vec<(Vec<u8>, u8)> = rest.drain(..rest.len().min(count / 4 + 1)).collect();
        std::thread::spawn(move || {
            for (block, byte) in batch {
                assert!(block.iter().all(|&b| b == byte), "block {byte} changed");
            }
        })
        .join()
        .unwrap();
    }
}

// The releases that must wait for the end of a block's own `dealloc` call (run under Miri
// with Stacked and Tree Borrows: releasing the memory of a `Box` while it is still
// protected is undefined behaviour there).

#[test]
fn a_box_freed_in_an_mmap_region_is_released_after_its_free() {
    let region = Region::new(Mmap::new());
    region::enter(&region, || {
        drop(Box::new([7u8; 64]));
        let kept = Box::new([8u8; 64]);
        assert_eq!(kept[63], 8);
    });
    assert_eq!(region.live_blocks(), 0);
}

#[test]
fn a_box_outliving_its_region_is_freed_into_the_zombie() {
    let region = Region::new(Chunk::<_, 65536>::new(Mmap::new()));
    let kept = region::enter(&region, || Box::new([9u8; 64]));
    drop(region);
    assert_eq!(kept[0], 9);
    drop(kept);
    region::release_zombies();
}

#[test]
fn a_channel_s_block_freed_into_a_zombie() {
    let region = Region::new(Chunk::<_, 65536>::new(Mmap::new()));
    let (sender, receiver) = mpsc::channel::<u64>();
    region::enter(&region, || sender.send(5).unwrap());
    drop(region);
    let receiving = std::thread::spawn(move || receiver.recv().unwrap());
    assert_eq!(receiving.join().unwrap(), 5);
    drop(sender);
    region::release_zombies();
}

#[test]
fn a_checked_region_s_figures_count_deferred_frees() {
    let region = Region::new(Check::new(Chunk::<_, 65536>::new(Mmap::new())));
    region::enter(&region, || {
        for i in 0..100 {
            drop(Box::new(i));
        }
    });
    assert_eq!(region.live_blocks(), 0);
    assert!(region.with_layer(|stack| stack.leaks()).is_none());
}

/// In a region, the same report comes from inside the router's guard around `deinit`: a
/// correct program (every block freed) is aborted by `give_back`.
fn deferred_check_region_gives_back() {
    let region = Region::new(Deferred::<_, 64>::new(Check::new(Ground::new())));
    region::enter(&region, || drop(std::hint::black_box(Box::new([1u8; 100]))));
    // The router parks the free until the stack's next operation; `give_back` puts it.
    assert!(region.give_back(), "no block is live");
    drop(region);
    println!("deferred check region child passed");
}

#[test]
#[cfg_attr(miri, ignore = "Miri cannot start processes")]
fn a_region_with_deferred_over_check_gives_back_without_aborting() {
    let output = crate::run_child_within(
        "region_hazards::child",
        "deferred_check_region_gives_back",
        Duration::from_secs(60),
    )
    .expect("the child finished");
    crate::assert_child_passed(&output, "deferred check region child passed");
}

/// `Ground` does not book its pieces, so a layer above that forgets blocks at `deinit` or
/// `rewind` (relying on the layer below to end them, as `Deferred` and `Quarantine` do)
/// leaks them: every `reset` of a reused region loses the waiting blocks' pages for good,
/// and those pages stay claimed in the page map for the region even after its record is
/// freed.
#[test]
fn resetting_a_deferred_ground_region_gives_its_pages_back() {
    let region = Region::new(Deferred::<_, 64>::new(Ground::new()));
    let mut addresses = Vec::new();
    for _ in 0..4 {
        let address = region::enter(&region, || {
            let block = std::hint::black_box(Box::new([7u8; 5000]));
            let address = (&raw const *block).addr();
            drop(block);
            address
        });
        addresses.push(address);
        assert!(region.reset(), "no block is live");
    }
    let held = region.with_layer(|deferred| deferred.inner().held_bytes());
    assert_eq!(held, 0, "Ground still holds {held} bytes after reset");
    drop(region);
    stratalloc::region::release_zombies();
    for address in addresses {
        assert!(
            !region::served_by_a_region(std::ptr::without_provenance(address)),
            "{address:#x} is still claimed by a region that was dropped"
        );
    }
}

/// `deinit` ends every block and leaves the layer "as if fresh from `init`" (the `Layer`
/// contract). `Ground` books nothing, so its `deinit` does nothing: the pieces still out
/// stay allocated from the system allocator for good (and, in a region, claimed for it in
/// the page map), and `held_bytes` still counts them. Booking pieces as `Pipe` does
/// would fix it, at a map per new `Ground`.
#[test]
#[ignore = "open: Ground books no pieces, so its deinit cannot end them (see its docs)"]
fn ground_deinit_ends_its_pieces() {
    let layout = Layout::from_size_align(8192, 8).unwrap();
    let mut ground = Ground::new();
    let _piece = ground.get(layout).expect("memory");
    ground.deinit();
    assert_eq!(ground.held_bytes(), 0, "deinit left a piece held");
}

/// A region with `Check` on top that ends with one block escaped reports that block, and
/// not also the pieces it lent to a younger pipe region that is still alive (they are not
/// escapes: they come back when that region ends, rule 2).
#[test]
fn an_ending_region_reports_its_escapes_without_the_pieces_it_lent() {
    let outer = Region::new(Check::new(Chunk::<_, 65536>::new(Ground::new())));
    let piped = Region::new(Chunk::<_, 4096>::new(Pipe::new()));
    let kept = region::enter(&outer, || {
        // The pipe region takes a chunk (a piece of `outer`) and keeps it while it lives.
        region::enter(&piped, || drop(std::hint::black_box(Box::new([0u8; 100]))));
        std::hint::black_box(Box::new(5u64))
    });
    assert_eq!(outer.live_blocks(), 2, "the escaped box and the lent piece");
    let ended = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(outer)));
    let message = ended
        .expect_err("the escape is reported")
        .downcast::<String>()
        .expect("a formatted message");
    // The stack's report cannot tell the lent piece from the escape (`Check` sees two
    // blocks), so the message says which count is the program's.
    assert!(
        message.contains("ended with 1 blocks still live")
            && message.contains("the 1 pieces it lent to younger pipe regions"),
        "the report counts the lent piece as an escape: {message}"
    );
    drop(kept);
    drop(piped);
    region::release_zombies();
}

/// A pipe region and the region it borrows from both end while their blocks live on (the
/// borrower's small blocks are carved from a chunk that is a piece of the lender; its large
/// one is a piece of its own); the blocks are then freed on another thread. Both zombies
/// must be released, in the right order, with nothing left claimed (and, under Miri with
/// either aliasing model, without undefined behaviour).
#[test]
fn a_lender_and_its_pipe_region_end_as_zombies_freed_on_another_thread() {
    let outer = Region::new(Chunk::<_, 65536>::new(Ground::new()));
    let piped = Region::new(Chunk::<_, 4096>::new(Pipe::new()));
    let (small, large) = region::enter(&outer, || {
        region::enter(&piped, || (Box::new([1u8; 64]), vec![2u8; 5000]))
    });
    let addresses = [(&raw const *small).addr(), large.as_ptr().addr()];
    assert!(
        outer.live_blocks() >= 2,
        "the chunk and the large piece are lent"
    );
    drop(outer);
    drop(piped);
    std::thread::spawn(move || {
        assert_eq!(small[63], 1);
        assert_eq!(large[4999], 2);
        drop(small);
        drop(large);
    })
    .join()
    .expect("the freeing thread");
    region::release_zombies();
    for address in addresses {
        assert!(
            !region::served_by_a_region(std::ptr::without_provenance(address)),
            "{address:#x} stayed claimed after both regions ended"
        );
    }
}

/// A zombie's driver lets go of its lock with blocks still live; another thread may then
/// free the last of them, drive the zombie to its end and release the record while the first
/// is still returning. Nothing may hold a protected reference into the record across that
/// point (Stacked and Tree Borrows protect a function's reference arguments until it
/// returns, padding included, and releasing memory under one is undefined behaviour, as in
/// rust-lang/rust#55005): not the driver's view of the header, nor a lock guard passed by
/// value, nor the spin lock's `&self` in the store that lets it go. Two threads free the
/// last two blocks of a zombie at once, each servicing zombies after its free. The
/// interleaving that matters is narrow, so this can pass under Miri without the fix; it is
/// here to keep running the path.
#[test]
fn a_zombie_released_by_one_thread_while_another_lets_go_of_its_lock() {
    let rounds = if cfg!(miri) { 8 } else { 500 };
    for _ in 0..rounds {
        let region = Region::new(Chunk::<_, 4096>::new(Ground::new()));
        let (first, second) =
            region::enter(&region, || (Box::new([1u8; 3000]), Box::new([2u8; 3000])));
        let addresses = [(&raw const *first).addr(), (&raw const *second).addr()];
        drop(region);
        let start = std::sync::Barrier::new(2);
        std::thread::scope(|s| {
            for block in [first, second] {
                let start = &start;
                s.spawn(move || {
                    start.wait();
                    assert!(block.iter().all(|&byte| byte == block[0]));
                    drop(block);
                    region::release_zombies();
                });
            }
        });
        region::release_zombies();
        for address in addresses {
            assert!(
                !region::served_by_a_region(std::ptr::without_provenance(address)),
                "{address:#x} stayed claimed after the zombie's last block was freed"
            );
        }
    }
}
