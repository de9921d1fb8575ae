//! Corvus's ordered logs. Ingestion's event log and identity's log of resolved events
//! and profile changes are the same machinery over tables of the same shape, each in its
//! own service's schema: entries in commit order, a cursor per consumer that never skips
//! a late commit, dead letters with their reason, and the outbox that hands entries on.

pub mod api;
pub mod outbox;
pub mod store;
