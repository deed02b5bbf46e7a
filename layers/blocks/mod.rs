//! Building blocks: layers that cache, class and carve blocks for general-purpose heaps.

/// A header recording each block's layout, so blocks go back by address alone.
mod size_header;
/// Bonwick's slab allocator: per-size caches of blocks in aligned slabs.
mod slab;

pub use size_header::SizeHeader;
pub use slab::Slab;
pub(crate) use slab::{BLOCK_ALIGN, CLASSES, SLAB_LIMIT, class_of, class_size};
