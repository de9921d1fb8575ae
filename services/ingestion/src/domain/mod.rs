//! Pure ingestion logic: what makes an event valid, clock-skew correction, and the
//! Segment JSON format. No I/O here.

pub mod segment;
pub mod validate;

pub use validate::{Limits, Violation, validate};
