//! Detects a nightly compiler, where allocator-api2 0.2's `nightly` feature (turned on by
//! this crate's `nightly` feature, or by any other crate in the build) makes its `Allocator`
//! trait `core`'s unstable one: the crate then needs the `allocator_api` language feature
//! to implement it. On stable and beta compilers nothing changes.

use std::process::Command;

fn main() {
    println!("cargo:rustc-check-cfg=cfg(stratalloc_nightly_compiler)");
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
