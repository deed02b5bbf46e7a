//! Composable heap layers: build your own allocator as a type, out of small layers that
//! each do one thing.
//!
//! ```
//! use allocator_api2::vec::Vec;
//! use stratalloc::{Heap, layers::{Batch, Check, Chunk, Mmap, Stats}};
//!
//! // Counted bump allocation out of 4 KiB chunks; every chunk booked, checked and counted.
//! type Stack = Stats<Chunk<Batch<Check<Stats<Mmap>>>, 4096>>;
//! let heap: Heap<Stack> =
//!     Heap::new(Stats::new(Chunk::new(Batch::new(Check::new(Stats::new(Mmap::new()))))));
//!
//! let mut squares = Vec::new_in(&heap);
//! squares.extend((0..1000u64).map(|i| i * i));
//! assert_eq!(squares[999], 998_001);
//! drop(squares);
//! assert_eq!(heap.gauge().live, 0);
//! ```
//!
//! # The pieces
//!
//! - [`Layer`], the contract: `get`, `put`, `init`, `deinit`, with the terms every layer and
//!   caller rely on defined once in [`layer`].
//! - [`layers`]: sources ([`Mmap`](layers::Mmap), [`Sbrk`](layers::Sbrk),
//!   [`System`](layers::System), [`Buffer`](layers::Buffer)), arenas
//!   ([`Chunk`](layers::Chunk), [`Batch`](layers::Batch), [`Buddy`](layers::Buddy),
//!   [`Bitset`](layers::Bitset)), building blocks that reuse freed memory
//!   ([`FreeList`](layers::FreeList), [`SizeClasses`](layers::SizeClasses),
//!   [`Coalesce`](layers::Coalesce)), combinators ([`Segregate`](layers::Segregate),
//!   [`Fallback`](layers::Fallback)), shaping layers ([`Align`](layers::Align),
//!   [`Fill`](layers::Fill)) and debugging layers ([`Stats`](layers::Stats),
//!   [`Check`](layers::Check), [`Guard`](layers::Guard),
//!   [`Quarantine`](layers::Quarantine), [`OnRelease`](layers::OnRelease),
//!   [`Deferred`](layers::Deferred)).
//! - Adapters: [`Heap`] lends a stack to collections on one thread; [`Locked`] shares one
//!   between threads and can be the `#[global_allocator]`.
//! - [`presets`]: named stacks, documented level by level.
//! - [`Gauge`]: the figures a stack reports.
//! - [`Bitmap`]: a bitmap in caller memory that another handle can attach to (the Dragon
//!   seed's `BitSet`; the bitmap under the `Buddy` and `Bitset` layers).
//! - [`blob_heap`] (with `std`): a buddy heap whose metadata lives inside the blob it
//!   manages (caller memory or a shared file map), addressed by offsets, so that several
//!   handles and processes can attach to it; a robust process-shared lock, `recover`.
//! - [Regions](region) (with `std`): [`Router`], the global allocator that sends a
//!   closure's ordinary allocations to a [`Region`]'s stack for the length of
//!   [`region::enter`], soundly (frees always reach the owner, blocks may outlive their
//!   closure, other threads may free them); [`check_leaks`] for tests.
//!
//! A stack is read outside-in: see [Order](layer#order).
//!
//! # Layout
//!
//! Where each part lives in the source:
//!
//! - `src/layer.rs`: the [`Layer`] contract and its terms. `src/heap.rs`, `src/locked.rs`:
//!   the two adapters; `src/alloc_ops.rs`: the allocator operations both share.
//! - `layers/`: one layer per file, in folders by kind, each `mod.rs` listing its files
//!   with a line each: `sources/` (nothing below them: `mmap.rs`, `reserve.rs`, `ground.rs`,
//!   `pipe.rs`, ...), `arenas/` (carve and give back in bulk: `chunk.rs`, `batch.rs`,
//!   `buddy.rs`, `bitset.rs`, with the arena chain and put cache they share),
//!   `blocks/` (reuse freed memory: `free_list.rs`, `slab.rs`, `coalesce.rs`, with what
//!   the layers share: the size-class policy in `classes.rs`, the singly linked free list
//!   in `list.rs`, the doubly linked lists in `doubly_linked.rs`), `combinators/`,
//!   `shaping/` (`align.rs`, `fill.rs`) and `debug/` (`stats.rs`, `check.rs`, `guard.rs`,
//!   `quarantine.rs`, `deferred.rs`, `on_release.rs`; the queue of held blocks that
//!   `quarantine.rs` and `deferred.rs` share is `held_queue.rs`). To add a layer, copy `layers/debug/stats.rs`
//!   (a layer that forwards everything and counts; `layer::layer_below!` writes its
//!   `inner`, `inner_mut` and `into_inner`) or the `Forward` template in the [`Layer`]
//!   docs.
//! - `src/region/`: everything of regions: `mod.rs` (the public API), `router.rs` (the
//!   global allocator), `page_map.rs` (who owns each page), `owner.rs` (a region's record,
//!   frees from other threads, zombies), `frames.rs` (this thread's region stack).
//! - `src/thread_heaps/`: the general-purpose allocator behind [`presets::General`]:
//!   `mod.rs` (the allocation paths), `registry.rs` (heaps, pool, fork handlers),
//!   `thread_pointer.rs`, `summary.rs`.
//! - `src/managed/`: managed buffers (the Task::MemManager seed) and their typed views.
//! - `src/blob_heap/`: the buddy heap inside a blob shared between processes;
//!   `src/bitmap.rs`: the [`Bitmap`].
//! - `src/presets.rs`: the named stacks; `src/abort.rs`: failures that must not unwind
//!   (one line, then abort) and the assertion macro; `src/spin.rs`: the spin lock every
//!   allocator path uses; `src/gauge.rs`: figures.
//!
//! # Features
//!
//! - `std` (default, implies `os`) adds the sources that need std (`Sbrk`, `System`,
//!   `Ground`, `Pipe`), regions and the router, the blob heap, [managed buffers](managed),
//!   and leak reports on stderr.
//! - `os`, without `std`: the crate stays `no_std` but talks to the OS through libc:
//!   [`Mmap`](layers::Mmap), [`Reserve`](layers::Reserve), [`ThreadHeaps`] and the
//!   [`General`](presets::General), [`Arena`](presets::Arena) and
//!   [`AuditedArena`](presets::AuditedArena) presets, and misuse reports written to
//!   stderr before an abort. This is how the malloc replacement (the `stratalloc-malloc`
//!   package in `malloc/`) is built: without std's panic and backtrace machinery it maps a
//!   fraction of the pages into every program it is loaded into.
//! - With neither, the crate is `no_std`: `Buffer`, `Adopted`, `Chunk`, `Batch`, `Buddy`, `Bitset`,
//!   `FreeList`, `SizeClasses`, `Coalesce`, `Stats`, `Check`, `Bitmap`, `Heap` and `Locked`
//!   remain.
//! - `paranoid` (off by default, for tests): every layer calls its whole-structure
//!   [`check_invariants`](Layer::check_invariants) at the top of each operation (see
//!   [Checks](layer#checks)); many times slower.
//! - `allocator-api2-03`, `allocator-api2-04`: [`Heap`] and [`Locked`] also implement the
//!   `Allocator` traits of allocator-api2 0.3 and 0.4 (0.2's is always implemented, and
//!   re-exported as [`allocator_api2`]).
//! - `ndarray`: [`ManagedBuffer::array`](managed::ManagedBuffer::array), an `ndarray` view
//!   of a managed buffer's elements.
//! - `testing`: the `testing` module, the conformance suite for anyone who writes a
//!   [`Layer`] (it uses std and proptest whatever the other features).
//! - `nightly` (nightly Rust): allocator-api2 0.2's trait becomes `core::alloc::Allocator`,
//!   so std's `Vec::new_in(&heap)` and `Box::new_in(x, &heap)` work. The crate also builds
//!   when another crate turns allocator-api2's own `nightly` feature on.
//!
//! # Platforms
//!
//! Linux runs every test; Windows runs the tests that need no Unix call (under Wine in CI);
//! macOS and Windows type-check for each feature set in CI. Off Linux, `Sbrk` and the
//! malloc replacement are absent, and the blob heap's lock is a spin lock that cannot see a
//! dead holder. On Windows the OS calls are `VirtualAlloc` (maps, and reserved address space
//! committed as it is used), the tick count and fiber-local slots (a thread's heap handed
//! back at exit); on targets that are neither Unix nor Windows, `Mmap` and the region page
//! map take page-aligned zeroed blocks from the system allocator, and `Reserve`,
//! `ThreadHeaps` and the `General` preset are absent.

#![cfg_attr(not(feature = "std"), no_std)]
// allocator-api2's `nightly` feature (this crate's `nightly`, or another crate's) makes its
// `Allocator` trait `core`'s unstable one; on a nightly compiler (`build.rs`) the language
// feature lets the adapters implement it either way.
#![cfg_attr(stratalloc_nightly_compiler, feature(allocator_api))]
// (Unused when nothing turned allocator-api2's `nightly` on: not worth a warning.)
#![cfg_attr(stratalloc_nightly_compiler, allow(unknown_lints, unused_features))]
#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

extern crate alloc;
// Unit tests may use std (threads, clocks) whatever the features.
#[cfg(all(test, not(feature = "std")))]
extern crate std;

mod abort;
mod alloc_ops;
mod bitmap;
#[cfg(feature = "std")]
pub mod blob_heap;
mod gauge;
mod heap;
pub mod layer;
mod locked;
#[cfg(feature = "std")]
pub mod managed;
#[cfg(all(feature = "os", any(unix, windows)))]
mod os;
pub mod presets;
#[cfg(feature = "std")]
pub mod region;
mod spin;
#[cfg(feature = "testing")]
pub mod testing;
#[cfg(all(feature = "os", any(unix, windows)))]
mod thread_heaps;

// The layers live in a top-level `layers/` folder, one file each, so that the crate's
// layout shows the catalogue at a glance (as Heap-Layers' folders do); `#[path]` wires that
// folder in as the `layers` module.
#[path = "../layers/mod.rs"]
pub mod layers;

/// The allocator-api2 release whose `Allocator` trait `Heap` and `Locked` always implement
/// (0.2), re-exported so that `stratalloc::allocator_api2::vec::Vec::new_in(&heap)` needs no
/// dependency of its own. The `allocator-api2-03` and `allocator-api2-04` features add the
/// traits of those releases; with `nightly`, this trait is `core::alloc::Allocator`.
pub use allocator_api2;
pub use bitmap::{Bitmap, BitmapError};
pub use gauge::{Gauge, Gauges};
pub use heap::Heap;
pub use layer::{Layer, Measured};
pub use layers::LeakReport;
pub use locked::{LockGuard, Locked};
#[cfg(feature = "std")]
pub use region::Router;
#[cfg(feature = "std")]
pub use region::{Region, check_leaks};
#[cfg(all(feature = "os", any(unix, windows)))]
pub use thread_heaps::{HeapSummary, LiveBlocks, ThreadHeaps};

/// The README's examples, compiled and run as doc tests (`cargo test --doc`), every ```rust
/// block of it, with warnings denied: a snippet that a reader copies must build cleanly
/// (an unused import included).
#[cfg(all(doctest, feature = "std"))]
#[doc = include_str!("../README.md")]
#[doc(test(attr(deny(warnings))))]
pub struct ReadmeExamples;
