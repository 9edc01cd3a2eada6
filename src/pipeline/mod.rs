//! consume → decide → produce.

pub mod offsets;
pub mod output;
