//! Pure identity logic: no I/O, no clocks, deterministic for the same input.

pub mod batch;
pub mod matching;
pub mod partition;
pub mod resolution;
