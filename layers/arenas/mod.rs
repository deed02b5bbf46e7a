//! Arenas: layers that carve or keep blocks and give memory back in bulk.

/// Bump allocation out of fixed-size chunks.
mod chunk;
/// Books every block; frees them all at deinit.
mod batch;

pub use batch::Batch;
pub use chunk::Chunk;
