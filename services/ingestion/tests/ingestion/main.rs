//! The ingestion crate's one test binary: the event-log conformance suite (run against
//! SQLite and Postgres alike), the outbox's delivery guarantees, and deliveries balanced
//! over a consumer's addresses.

mod discovery;
mod log;
mod outbox;
mod support;
