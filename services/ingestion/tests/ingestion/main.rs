//! The ingestion crate's one test binary: the event-log conformance suite (run against
//! SQLite and Postgres alike) and the outbox's delivery guarantees.

mod log;
mod outbox;
mod support;
