//! Detects a nightly compiler, where allocator-api2 0.2's `nightly` feature (turned on by
//! this crate's `nightly` feature, or by any other crate in the build) makes its `Allocator`
//! trait `core`'s unstable one: the crate then needs the `allocator_api` language feature
//! to implement it. On stable and beta compilers nothing changes.
//!
//! Also detects a build with frame pointers (`-C force-frame-pointers=yes` in the flags
//! cargo passes to rustc for the crate, which RUSTFLAGS pass to every crate of the build):
//! on Linux for x86-64 and AArch64, call sites are then captured by walking frame records
//! (`layers/debug/call_sites.rs`) rather than with the unwinder.

use std::process::Command;

fn main() {
    println!("cargo:rustc-check-cfg=cfg(stratalloc_nightly_compiler)");
    println!("cargo:rustc-check-cfg=cfg(stratalloc_frame_records)");
    println!("cargo:rerun-if-env-changed=CARGO_ENCODED_RUSTFLAGS");
    if frame_pointers_forced() {
        println!("cargo:rustc-cfg=stratalloc_frame_records");
    }
    println!("cargo:rerun-if-env-changed=RUSTC");
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let version = Command::new(rustc)
        .arg("--version")
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).into_owned())
        .unwrap_or_default();
    if version.contains("-nightly") || version.contains("-dev") {
        println!("cargo:rustc-cfg=stratalloc_nightly_compiler");
    }
}

/// Whether the crate is built with frame pointers kept everywhere, on a target whose frame
/// records `call_sites.rs` walks, with std (for the thread-local bounds).
fn frame_pointers_forced() -> bool {
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let std = std::env::var_os("CARGO_FEATURE_STD").is_some();
    let flags = std::env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    let flags: Vec<&str> = flags.split('\x1f').collect();
    // `-C force-frame-pointers=yes`, `-Cforce-frame-pointers=on`, ... (the last one wins).
    let forced = flags
        .iter()
        .enumerate()
        .filter_map(|(i, flag)| {
            let option = match *flag {
                "-C" => flags.get(i + 1).copied()?,
                flag => flag.strip_prefix("-C")?,
            };
            let value = option.strip_prefix("force-frame-pointers")?;
            Some(matches!(
                value,
                "" | "=yes" | "=y" | "=on" | "=true" | "=always"
            ))
        })
        .next_back()
        .unwrap_or(false);
    forced && std && os == "linux" && matches!(arch.as_str(), "x86_64" | "aarch64")
}
