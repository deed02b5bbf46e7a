//! Combinators: layers that route each request to one of two layers.

/// Try one layer, then another; puts go back by ownership.
mod fallback;
/// Small requests to one layer, large ones to another, by size.
mod segregate;

pub use fallback::Fallback;
pub use segregate::Segregate;
