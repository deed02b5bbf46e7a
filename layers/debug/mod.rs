//! Debugging layers: they watch the traffic through them and change none of it.

/// Checks every put and reports leaks.
mod check;
/// The table of live blocks that `Check` (and `Pipe`) keep.
pub(crate) mod live_table;
/// Counts gets, puts, bytes and the peak.
mod stats;

pub use check::{Check, LeakReport};
pub use stats::Stats;
