//! Building blocks: layers that reuse freed memory (free lists, size classes, slabs,
//! coalescing), the pieces of a general-purpose allocator.

/// The size-class policy (linear steps, then `K` classes per doubling) that `Slab`,
/// `SizeClasses` and `Coalesce` each name an instance of.
pub(crate) mod classes;

/// Coalescing arenas with boundary tags, for large blocks; frees without a layout.
mod coalesce;
/// Intrusive doubly linked lists (crate-private): the lists of free blocks, slabs, arenas
/// and large blocks that `Buddy`, `Coalesce`, `Slab` and `Chunk` keep.
pub(crate) mod doubly_linked;
/// Freed blocks of one size kept on an intrusive list for reuse.
mod free_list;
/// The intrusive list of free blocks that `FreeList`, `SizeClasses` and the arenas' put
/// caches share (crate-private).
pub(crate) mod list;
/// A bucketizer: 40 size classes up to 32 KiB, a free list each, carved from runs.
mod size_classes;
/// A header recording each block's layout, so blocks go back by address alone.
mod size_header;
/// Bonwick's slab allocator: per-size caches of blocks in aligned slabs.
mod slab;

pub use coalesce::Coalesce;
pub use free_list::FreeList;
pub use size_classes::SizeClasses;
pub use size_header::SizeHeader;
pub use slab::Slab;
