//! Pure logic: no gRPC, no SQL.

pub mod affinity;
pub mod audiences;
pub mod clv;
pub mod engagement;
pub mod facts;
pub mod features;
pub mod kmeans;
pub mod metrics;
pub mod optimize;
pub mod propensity;
pub mod rfm;
pub mod segments;
pub mod sentiment;
pub mod special;
pub mod traits;
