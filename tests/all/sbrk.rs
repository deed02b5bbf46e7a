//! `Sbrk`: refuses to move the break until the program claims it; passes the suite once it
//! has (in a child process, whose only thread that allocates is the test's).

use std::alloc::Layout;

use stratalloc::Layer;
use stratalloc::layers::Sbrk;

#[test]
fn does_nothing_until_the_break_is_claimed() {
    if crate::child_scenario().is_some() {
        return; // a child claims the break; this test is about processes that did not
    }
    assert!(Sbrk::new().get(Layout::new::<u64>()).is_none());
}

#[test]
fn child() {
    if crate::child_scenario().as_deref() != Some("sbrk_suite") {
        return;
    }
    // SAFETY: this child runs one test on one thread; the harness's main thread only waits
    // for it, so nothing else moves the break while `Sbrk` runs.
    unsafe { Sbrk::claim_break() };
    stratalloc::testing::check_layer_with(
        crate::proptest_config(),
        Sbrk::new,
        stratalloc::testing::no_gauge,
    );
    let mut sbrk = Sbrk::new();
    let layout = Layout::from_size_align(100, 64).unwrap();
    let a = sbrk.get(layout).unwrap();
    assert_eq!(a.as_ptr().addr() % 64, 0);
    let held = sbrk.held_bytes();
    // SAFETY: `a` is the most recent block: the break moves back over it.
    unsafe { sbrk.put(a, layout) };
    assert!(
        sbrk.held_bytes() < held,
        "the top block went back to the OS"
    );
    println!("sbrk child passed");
}

#[test]
#[cfg_attr(miri, ignore = "Miri cannot start processes, nor run sbrk")]
fn passes_the_suite_once_claimed() {
    let output = crate::run_child("sbrk::child", "sbrk_suite");
    crate::assert_child_passed(&output, "sbrk child passed");
}
