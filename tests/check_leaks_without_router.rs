//! `check_leaks` (and `region::profile`) in a program whose global allocator is not the
//! `Router`: it cannot watch the closure, so it panics and says how to install the router,
//! rather than pass a leak (or return an empty profile).
//!
//! A test binary of its own rather than a module of `tests/all`, whose global allocator is
//! the router: this one has none declared, so the system allocator serves it.

use std::hint::black_box;
use std::panic::{AssertUnwindSafe, catch_unwind};

use stratalloc::check_leaks;

/// The line the panic tells the program to add.
const INSTALL: &str =
    "#[global_allocator] static ROUTER: stratalloc::Router = stratalloc::Router::new();";

/// Runs `call`, which must panic, and returns its message.
fn panic_message(call: impl FnOnce()) -> String {
    let payload = catch_unwind(AssertUnwindSafe(call)).expect_err("check_leaks returned");
    match payload.downcast::<String>() {
        Ok(message) => *message,
        Err(payload) => payload
            .downcast::<&str>()
            .map(|message| message.to_string())
            .expect("a panic message"),
    }
}

/// Asserts that `message` says what went wrong and how to put it right.
fn assert_explains(message: &str) {
    assert_explains_for("check_leaks", message);
}

/// Asserts that `message` says that `what` could not watch, why and how to put it right.
fn assert_explains_for(what: &str, message: &str) {
    assert!(
        message.contains(&format!("{what} cannot watch the closure"))
            && message.contains("not stratalloc's Router")
            && message.contains(INSTALL),
        "{message}"
    );
}

#[test]
fn a_leak_is_not_passed() {
    let ran = std::cell::Cell::new(false);
    let message = panic_message(|| {
        let _ = check_leaks(|| {
            ran.set(true);
            black_box(Box::leak(Box::new([7u8; 100])));
        });
    });
    assert_explains(&message);
    assert!(
        !ran.get(),
        "the closure ran although it could not be watched"
    );
}

#[test]
fn a_closure_that_frees_everything_is_not_passed_either() {
    let message = panic_message(|| {
        let _ = check_leaks(|| black_box(vec![1u64, 2, 3]).len());
    });
    assert_explains(&message);
}

#[test]
fn a_closure_that_allocates_nothing_is_not_passed_either() {
    let message = panic_message(|| {
        let _ = check_leaks(|| black_box(2) + 2);
    });
    assert_explains(&message);
}

#[test]
fn a_profile_of_allocations_it_did_not_see_is_not_returned() {
    let ran = std::cell::Cell::new(false);
    let message = panic_message(|| {
        let _ = stratalloc::region::profile(|| {
            ran.set(true);
            black_box(vec![1u64, 2, 3]).len()
        });
    });
    assert_explains_for("profile", &message);
    assert!(
        !ran.get(),
        "the closure ran although it could not be watched"
    );
}
