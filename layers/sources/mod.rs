//! Sources: layers with nothing below them, which get memory from outside the stack.

/// Blocks carved from caller memory (no OS, no std).
mod buffer;
/// Whole pages from the system allocator, claimable by a region.
#[cfg(feature = "std")]
mod ground;
/// Anonymous page maps from the OS, one per block.
#[cfg(feature = "os")]
mod mmap;
/// Whole pages from the enclosing region.
#[cfg(feature = "std")]
mod pipe;
/// 16 KiB granules from one reserved range of address space.
#[cfg(feature = "os")]
mod reserve;
/// The program break, with reuse of freed blocks.
#[cfg(feature = "std")]
mod sbrk;
/// The platform allocator, per object.
#[cfg(feature = "std")]
mod system;

pub use buffer::Buffer;
#[cfg(feature = "std")]
pub use ground::Ground;
#[cfg(feature = "os")]
pub use mmap::Mmap;
#[cfg(feature = "std")]
pub use pipe::Pipe;
#[cfg(feature = "os")]
pub(crate) use reserve::SlabRange;
#[cfg(feature = "os")]
pub use reserve::{Reserve, ReserveRange, SharedRange};
#[cfg(feature = "std")]
pub use sbrk::Sbrk;
#[cfg(feature = "std")]
pub use system::System;
