//! Corvus measurement: what each decision did. So far, the statistics an experiment's
//! results are computed with, from per-arm aggregates (`stats`), and off-policy
//! estimates of a candidate policy from logged decisions (`ope`); the service that keeps
//! aggregates as events arrive is not built yet.

pub mod grpc;
pub mod ope;
pub mod stats;

/// The gRPC service name, as health reports it.
pub const SERVICE_NAME: &str = "corvus.measurement.v1.MeasurementService";
