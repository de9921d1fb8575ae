//! Integration tests of corvus-identity, one binary with a module per area.

mod febrl4;
mod febrl4_data;
mod store;
