//! End-to-end tests of the all-in-one process through its public APIs: gRPC, the
//! Segment HTTP API with the real SDKs, health, reflection, metrics, faults.

mod apart;
mod audiences;
mod campaigns;
mod console;
mod downstream;
mod erasure;
mod fault;
mod grpc;
mod http;
mod identity;
mod measurement;
mod orchestration;
mod platform;
mod satisfaction;
mod scoring;
mod scoring_models;
mod sdk;
mod stats;
mod support;
