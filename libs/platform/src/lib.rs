//! What every Corvus service stands on: configuration, telemetry, metrics, API keys and
//! workspaces, the gRPC and HTTP server bootstrap, and error mapping.

pub mod auth;
pub mod config;
pub mod error;
pub mod metrics;
pub mod paging;
pub mod server;
pub mod telemetry;

pub use auth::{Authenticator, KeyStore, Principal, Role};
pub use config::{ServerConfig, load_config};
