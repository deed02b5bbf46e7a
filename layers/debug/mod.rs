//! Debugging layers and layers that manage release: they watch the traffic through them
//! (counting, checking, calling a hook) or hold put blocks back (to catch writes after free,
//! or to release them later together), and change no block but the bytes they use to catch
//! misuse.

/// The call stacks that allocated live blocks, for `Check`'s and `Profile`'s reports.
mod call_sites;
/// Checks every put and reports leaks.
mod check;
/// Puts wait on a list until `collect`.
mod deferred;
/// Canary bytes around every block, checked at put.
mod guard;
/// A profile's figures symbolised, and their writers (DHAT's format, flame graphs).
#[cfg(feature = "std")]
mod heap_profile;
/// The queue of put blocks held back that `Quarantine` and `Deferred` keep.
mod held_queue;
/// The table of live blocks that `Check`, `Profile` and `Pipe` keep.
pub(crate) mod live_table;
/// A caller's function called with every block put back.
mod on_release;
/// Per call site: allocations, frees, lifetimes and peaks.
#[cfg(feature = "std")]
mod profile;
/// Put blocks poisoned and held back, checked when they go down.
mod quarantine;
/// Counts gets, puts, bytes and the peak.
mod stats;

#[cfg(feature = "std")]
pub use call_sites::SourceFrame;
pub use check::{CallSite, Check, LeakReport};
pub use deferred::Deferred;
pub use guard::{GUARD_BYTE, Guard};
#[cfg(feature = "std")]
pub use heap_profile::{HeapProfile, SiteProfile};
pub use held_queue::{HELD_BLOCKS, Held};
pub use on_release::{OnRelease, Released};
#[cfg(feature = "std")]
pub use profile::Profile;
pub use quarantine::Quarantine;
pub use stats::Stats;
