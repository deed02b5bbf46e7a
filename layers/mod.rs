//! The layers, one per file, grouped as Heap-Layers groups them; each file states its own
//! invariants at the top.

mod arenas;
mod blocks;
mod combinators;
pub(crate) mod debug;
mod shaping;
mod sources;

pub use arenas::{Batch, Bitset, Buddy, Chunk};
pub use blocks::{Coalesce, FreeList, SizeClasses, SizeHeader, Slab};
pub use combinators::{Fallback, Segregate};
pub use debug::{
    CallSite, Check, Deferred, GUARD_BYTE, Guard, HELD_BLOCKS, Held, LeakReport, OnRelease,
    Quarantine, Released, Stats,
};
#[cfg(feature = "std")]
pub use debug::{HeapProfile, Profile, SiteProfile, SourceFrame};
pub use shaping::{Align, Fill};
#[cfg(any(all(feature = "os", any(unix, windows)), feature = "std"))]
pub use sources::Mmap;
#[cfg(all(feature = "std", target_os = "linux"))]
pub use sources::Sbrk;
#[cfg(feature = "std")]
pub(crate) use sources::overlap;
pub use sources::{AdoptError, AdoptRefusal, Adopted, AdoptedMemory, Buffer, Origin};
#[cfg(all(feature = "os", any(unix, windows)))]
pub(crate) use sources::{BIG_GRANULE, BigSlabRange, SLAB_GRANULE, SlabRange};
#[cfg(feature = "std")]
pub use sources::{Ground, Pipe, System};
#[cfg(all(feature = "os", any(unix, windows)))]
pub use sources::{Reserve, ReserveRange, SharedRange};
