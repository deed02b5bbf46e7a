//! Sources: layers with nothing below them, which get memory from outside the stack.

/// Blocks carved from caller memory (no OS, no std).
mod buffer;
/// Anonymous page maps from the OS, one per block.
#[cfg(feature = "std")]
mod mmap;
/// The program break, with reuse of freed blocks.
#[cfg(feature = "std")]
mod sbrk;
/// The platform allocator, per object.
#[cfg(feature = "std")]
mod system;

pub use buffer::Buffer;
#[cfg(feature = "std")]
pub use mmap::Mmap;
#[cfg(feature = "std")]
pub use sbrk::Sbrk;
#[cfg(feature = "std")]
pub use system::System;
