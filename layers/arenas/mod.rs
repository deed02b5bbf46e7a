//! Arenas: layers that carve or keep blocks and give memory back in bulk.

/// The chain of arenas that `Buddy` and `Bitset` take from the layer below.
mod arena_chain;
/// Books every block; frees them all at deinit.
mod batch;
/// Fixed-size blocks tracked by a bitmap; runs of blocks for larger requests.
mod bitset;
/// A binary buddy heap: power-of-two blocks, split and merged.
mod buddy;
/// Bump allocation out of fixed-size chunks.
mod chunk;
/// Stacks of put blocks by size, handed out again before they are booked free.
mod put_cache;

pub use batch::Batch;
pub use bitset::Bitset;
pub use buddy::Buddy;
pub use chunk::Chunk;
