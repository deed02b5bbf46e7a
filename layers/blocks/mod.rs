//! Building blocks: layers that reuse freed memory (free lists, size classes, coalescing),
//! the pieces of a general-purpose allocator.

/// Freed blocks of one size kept on an intrusive list for reuse.
mod free_list;
/// The intrusive list of free blocks that `FreeList` and `SizeClasses` share (private).
mod list;

pub use free_list::FreeList;
