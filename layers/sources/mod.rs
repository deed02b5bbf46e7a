//! Sources: layers with nothing below them, which get memory from outside the stack.

/// Blocks carved from memory handed over (a box, a vector, a static or raw range), given
/// back as its origin requires.
mod adopted;
/// Blocks carved from caller memory (no OS, no std).
mod buffer;
/// Whole pages from the system allocator, claimable by a region.
#[cfg(feature = "std")]
mod ground;
/// Anonymous page maps from the OS, one per block (off Unix and Windows, page-aligned
/// blocks from the system allocator).
#[cfg(any(all(feature = "os", any(unix, windows)), feature = "std"))]
mod mmap;
/// Whole pages from the enclosing region.
#[cfg(feature = "std")]
mod pipe;
/// 16 KiB granules from one reserved range of address space.
#[cfg(all(feature = "os", any(unix, windows)))]
mod reserve;
/// The program break, with reuse of freed blocks.
#[cfg(all(feature = "std", target_os = "linux"))]
mod sbrk;
/// The platform allocator, per object.
#[cfg(feature = "std")]
mod system;

#[cfg(feature = "std")]
pub(crate) use adopted::overlap;
pub use adopted::{AdoptError, AdoptRefusal, Adopted, AdoptedMemory, Origin};
pub use buffer::Buffer;
#[cfg(feature = "std")]
pub use ground::Ground;
#[cfg(any(all(feature = "os", any(unix, windows)), feature = "std"))]
pub use mmap::Mmap;
#[cfg(feature = "std")]
pub use pipe::Pipe;
#[cfg(all(feature = "os", any(unix, windows)))]
pub(crate) use reserve::{BIG_GRANULE, BigSlabRange, SLAB_GRANULE, SlabRange};
#[cfg(all(feature = "os", any(unix, windows)))]
pub use reserve::{Reserve, ReserveRange, SharedRange};
#[cfg(all(feature = "std", target_os = "linux"))]
pub use sbrk::Sbrk;
#[cfg(feature = "std")]
pub use system::System;
