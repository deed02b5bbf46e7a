//! Debugging layers: they watch the traffic through them, and change none of it but the
//! bytes around and inside blocks that they use to catch misuse.

/// Checks every put and reports leaks.
mod check;
/// Canary bytes around every block, checked at put.
mod guard;
/// The table of live blocks that `Check` (and `Pipe`) keep.
pub(crate) mod live_table;
/// A caller's function called with every block put back.
mod on_release;
/// Put blocks poisoned and held back, checked when they go down.
mod quarantine;
/// Counts gets, puts, bytes and the peak.
mod stats;

pub use check::{Check, LeakReport};
pub use guard::{GUARD_BYTE, Guard};
pub use on_release::{OnRelease, Released};
pub use quarantine::{QUARANTINE_BLOCKS, Quarantine};
pub use stats::Stats;
