//! Shaping: layers that change what every block of the layer below looks like to their
//! callers (its alignment, its first contents) and nothing else.

/// Every block aligned to at least `A`.
mod align;
/// Every block handed out filled with one byte.
mod fill;

pub use align::Align;
pub use fill::Fill;
