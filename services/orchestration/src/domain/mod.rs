//! What orchestration decides with, free of storage and transport.

pub mod alert;
pub mod campaign;
pub mod policy;
pub mod template;
pub mod timing;
