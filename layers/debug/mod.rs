//! Debugging layers: they watch the traffic through them, and change none of it but the
//! bytes around and inside blocks that they use to catch misuse.

/// Checks every put and reports leaks.
mod check;
/// Canary bytes around every block, checked at put.
mod guard;
/// The table of live blocks that `Check` (and `Pipe`) keep.
pub(crate) mod live_table;
/// Put blocks poisoned and held back, checked when they go down.
mod quarantine;
/// Counts gets, puts, bytes and the peak.
mod stats;

pub use check::{Check, LeakReport};
pub use guard::{GUARD_BYTE, Guard};
pub use quarantine::{QUARANTINE_BLOCKS, Quarantine};
pub use stats::Stats;
