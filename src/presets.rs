//! Named stacks: whole allocators as documented type aliases, each with a `const fn` that
//! builds it (so it can live in a `static`). Read a stack outside-in (see
//! [Order](crate::layer#order)).

use static_assertions::assert_impl_all;

use crate::Layer;
#[cfg(all(feature = "os", any(unix, windows)))]
use crate::layers::Coalesce;
use crate::layers::{Batch, Buffer, Chunk};
#[cfg(feature = "std")]
use crate::layers::{Ground, System};
#[cfg(any(all(feature = "os", any(unix, windows)), feature = "std"))]
use crate::{
    Gauge,
    layers::{Check, Mmap, Stats},
};

/// The region seed's `append` stack, a fully watched arena:
///
/// 1. `Stats` counts what the program asks for (blocks, bytes, peak);
/// 2. `Chunk<_, 4096>` bump-allocates them out of 4 KiB chunks;
/// 3. `Batch` books every chunk and returns them all when the stack ends;
/// 4. `Check` verifies that every chunk comes back exactly once with its layout;
/// 5. `Stats` counts the chunks, that is, the memory really taken from the OS;
/// 6. `Mmap` maps the pages.
#[cfg(any(all(feature = "os", any(unix, windows)), feature = "std"))]
pub type AuditedArena = Stats<Chunk<Batch<Check<Stats<Mmap>>>, 4096>>;

/// Builds an [`AuditedArena`].
#[cfg(any(all(feature = "os", any(unix, windows)), feature = "std"))]
pub const fn audited_arena() -> AuditedArena {
    Stats::new(Chunk::new(Batch::new(Check::new(Stats::new(Mmap::new())))))
}

/// A plain, fast arena: bump allocation out of 64 KiB chunks mapped from the OS, all of
/// them unmapped when the stack ends.
///
/// 1. `Chunk<_, 65536>` bump-allocates;
/// 2. `Mmap` maps each chunk (and each block larger than a quarter of one).
#[cfg(any(all(feature = "os", any(unix, windows)), feature = "std"))]
pub type Arena = Chunk<Mmap, 65536>;

/// Builds an [`Arena`].
#[cfg(any(all(feature = "os", any(unix, windows)), feature = "std"))]
pub const fn arena() -> Arena {
    Chunk::new(Mmap::new())
}

/// The recommended stack for a region, which [`Region::arena`](crate::Region::arena) makes:
/// the fastest sound one, bump allocation out of 64 KiB chunks of whole pages that the
/// system allocator provides and regions hand on to one another.
///
/// 1. `Chunk<_, 65536>` bump-allocates; the router carves the region's small blocks from
///    its window without a call into the stack, and a free only counts the block; a
///    [`Region::reset`](crate::Region::reset) keeps the newest chunk;
/// 2. [`Ground`] takes each chunk (and each block larger than a
///    quarter of one) from the system allocator in whole pages, claims them for the
///    region, and keeps the pieces that ended regions give back (up to 16 MiB of them) for
///    the next ones, so that a region per request makes no system call once warm.
#[cfg(feature = "std")]
pub type RegionArena = Chunk<Ground, 65536>;

/// Builds a [`RegionArena`].
#[cfg(feature = "std")]
pub const fn region_arena() -> RegionArena {
    Chunk::new(Ground::new())
}

/// A leak checker over the platform allocator, for code under test:
///
/// 1. `Stats` counts the traffic;
/// 2. `Check` verifies every free and reports what is still live at the end;
/// 3. `System` allocates each object with the platform allocator.
#[cfg(feature = "std")]
pub type CheckedSystem = Stats<Check<System>>;

/// Builds a [`CheckedSystem`].
#[cfg(feature = "std")]
pub const fn checked_system() -> CheckedSystem {
    Stats::new(Check::new(System::new()))
}

/// An arena in caller memory, for `no_std` programs and tests under Miri:
///
/// 1. `Chunk<_, 4096>` bump-allocates out of 4 KiB chunks;
/// 2. `Batch` books chunks and large blocks and returns them together;
/// 3. `Buffer` carves them from the caller's bytes.
pub type BufferArena<'a> = Chunk<Batch<Buffer<'a>>, 4096>;

/// Builds a [`BufferArena`] over `memory`.
pub const fn buffer_arena(memory: &mut [core::mem::MaybeUninit<u8>]) -> BufferArena<'_> {
    Chunk::new(Batch::new(Buffer::new(memory)))
}

/// A general-purpose allocator, for `#[global_allocator]` or as C's malloc (the
/// `stratalloc-malloc` library in `malloc/`):
///
/// 1. [`ThreadHeaps`](crate::ThreadHeaps) gives each thread its own heap for blocks of up to
///    32 KiB, sends frees from other threads back to the owning heap, and reuses the heaps
///    of exited threads; everything else goes, under a lock, to
/// 2. `Coalesce<_, 32 MiB>`, boundary-tagged arenas whose free neighbours merge (the tag
///    before each block also tells C's `free` its size), which also takes the small
///    blocks `realloc` grows a little past 256 bytes (strings built by appending, which
///    grow in place there); blocks too big for an arena get a piece of their own from
/// 3. `Mmap`.
///
/// Each thread heap is two [`Slab`](crate::layers::Slab)s over
/// [`Reserve`](crate::layers::Reserve)s: slabs of one size class each, of 64 KiB for blocks
/// of up to 8 KiB and 256 KiB up to 32 KiB, each size from a reserved range of address
/// space of its own.
#[cfg(all(feature = "os", any(unix, windows)))]
pub type General = crate::ThreadHeaps<Coalesce<Mmap, { 32 << 20 }>>;

/// Builds a [`General`] allocator.
#[cfg(all(feature = "os", any(unix, windows)))]
pub const fn general() -> General {
    crate::ThreadHeaps::new(Coalesce::new(Mmap::new()))
}

#[cfg(all(feature = "os", any(unix, windows)))]
assert_impl_all!(General: core::alloc::GlobalAlloc, Send, Sync, core::fmt::Debug);
#[cfg(any(all(feature = "os", any(unix, windows)), feature = "std"))]
assert_impl_all!(AuditedArena: Layer, Gauge, Send, core::fmt::Debug);
#[cfg(any(all(feature = "os", any(unix, windows)), feature = "std"))]
assert_impl_all!(Arena: Layer, Send, core::fmt::Debug);
#[cfg(feature = "std")]
assert_impl_all!(CheckedSystem: Layer, Gauge, Send, core::fmt::Debug);
assert_impl_all!(BufferArena<'static>: Layer, Send, core::fmt::Debug);
