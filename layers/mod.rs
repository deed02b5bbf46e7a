//! The layers, one per file, grouped as Heap-Layers groups them; each file states its own
//! invariants at the top.

mod arenas;
mod blocks;
mod combinators;
pub(crate) mod debug;
mod sources;

pub use arenas::{Batch, Bitset, Buddy, Chunk};
pub use blocks::{Coalesce, FreeList, SizeClasses, SizeHeader, Slab};
pub use combinators::{Fallback, Segregate};
pub use debug::{Check, LeakReport, Stats};
pub use sources::Buffer;
#[cfg(feature = "os")]
pub(crate) use sources::SlabRange;
#[cfg(feature = "std")]
pub use sources::{Ground, Pipe, Sbrk, System};
#[cfg(feature = "os")]
pub use sources::{Mmap, Reserve, ReserveRange, SharedRange};
