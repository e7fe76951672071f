//! The Tether engine core, sans IO.
#![forbid(unsafe_code)]

mod record;

pub use record::{Record, Tx};
