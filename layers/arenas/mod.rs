//! Arenas: layers that carve or keep blocks and give memory back in bulk.

/// Books every block; frees them all at deinit.
mod batch;
/// Bump allocation out of fixed-size chunks.
mod chunk;

pub use batch::Batch;
pub use chunk::Chunk;
