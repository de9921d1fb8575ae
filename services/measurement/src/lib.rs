//! Corvus measurement: what each decision did. So far, the statistics an experiment's
//! results are computed with, from per-arm aggregates (`stats`); the service that keeps
//! those aggregates as events arrive is not built yet.

pub mod stats;
