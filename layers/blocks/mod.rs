//! Building blocks: layers that reuse freed memory (free lists, size classes, coalescing),
//! the pieces of a general-purpose allocator.

/// Coalescing arenas with boundary tags, for large blocks; frees without a layout.
mod coalesce;
/// Freed blocks of one size kept on an intrusive list for reuse.
mod free_list;
/// The intrusive list of free blocks that `FreeList` and `SizeClasses` share (private).
mod list;
/// A bucketizer: 40 size classes up to 32 KiB, a free list each, carved from runs.
mod size_classes;

pub use coalesce::Coalesce;
pub use free_list::FreeList;
pub use size_classes::SizeClasses;
