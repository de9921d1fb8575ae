//! The ceiling: the same rows the event log stores, loaded with binary `COPY` into a
//! table built like `ingestion.events` (same columns, defaults, keys, indexes and
//! statement trigger) in a scratch schema. No service can write these rows faster
//! than Postgres takes them this way, so every ingest figure is reported against it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::ensure;
use bytes::{BufMut as _, Bytes, BytesMut};
use chrono::{DateTime, TimeZone as _, Utc};
use prost::Message as _;

use crate::corpus;
use crate::load::Measured;
use crate::setup::Scratch;

/// Rows per COPY statement (and so per transaction): large enough that the commit's
/// WAL flush is amortised, as a bulk loader would do it.
pub const ROWS_PER_COPY: usize = 5_000;

const COLUMNS: &str = "workspace_id, message_id, event_id, event_type, received_at, payload, traceparent";

/// Creates `bench_copy.<table>` like `ingestion.events`.
async fn create_table(scratch: &Scratch, table: &str) -> anyhow::Result<()> {
    let mut conn = scratch.connect().await?;
    for sql in [
        "CREATE SCHEMA IF NOT EXISTS bench_copy".to_owned(),
        format!("DROP TABLE IF EXISTS bench_copy.{table}"),
        format!("CREATE TABLE bench_copy.{table} (LIKE ingestion.events INCLUDING ALL)"),
        // LIKE copies no triggers; the log's NOTIFY trigger is part of the write cost.
        format!(
            "CREATE TRIGGER events_notify AFTER INSERT ON bench_copy.{table} \
             FOR EACH STATEMENT EXECUTE FUNCTION ingestion.notify_events()"
        ),
        "CHECKPOINT".to_owned(),
    ] {
        sqlx::query(&sql).execute(&mut conn).await?;
    }
    Ok(())
}

/// Microseconds since 2000-01-01 UTC: Postgres's binary timestamptz.
fn pg_micros(at: DateTime<Utc>) -> i64 {
    let epoch = Utc.with_ymd_and_hms(2000, 1, 1, 0, 0, 0).unwrap();
    (at - epoch).num_microseconds().unwrap_or(i64::MAX)
}

fn put_field(buf: &mut BytesMut, bytes: &[u8]) {
    buf.put_i32(bytes.len() as i32);
    buf.put_slice(bytes);
}

/// `rows` events of corpus `seed` as binary COPY streams of [`ROWS_PER_COPY`] rows. The
/// payload is the event as the log stores it: encoded, with `received_at` set.
fn encode_chunks(seed: u64, rows: usize) -> anyhow::Result<Vec<(Bytes, u64)>> {
    let now = Utc::now();
    let received = pg_micros(now);
    let mut chunks = Vec::new();
    for start in (0..rows).step_by(ROWS_PER_COPY) {
        let end = (start + ROWS_PER_COPY).min(rows);
        let mut buf = BytesMut::with_capacity((end - start) * 700);
        buf.put_slice(b"PGCOPY\n\xff\r\n\0");
        buf.put_i32(0); // flags
        buf.put_i32(0); // header extension length
        for i in start..end {
            let mut event = corpus::event(seed, i as u64, now)?;
            event.received_at = Some(corvus_ingestion::domain::validate::to_timestamp(now));
            buf.put_i16(7);
            put_field(&mut buf, b"bench-copy");
            put_field(&mut buf, event.message_id.as_bytes());
            put_field(&mut buf, uuid::Uuid::now_v7().as_bytes());
            put_field(&mut buf, &(event.r#type as i16).to_be_bytes());
            put_field(&mut buf, &received.to_be_bytes());
            put_field(&mut buf, &event.encode_to_vec());
            buf.put_i32(-1); // traceparent: NULL
        }
        buf.put_i16(-1); // trailer
        chunks.push((buf.freeze(), (end - start) as u64));
    }
    Ok(chunks)
}

/// A load ready to go: the table made, the rows encoded, the connections open, so
/// that nothing but the COPY itself is timed.
pub struct Prepared {
    chunks: Vec<(Bytes, u64)>,
    statement: String,
    connections: Vec<sqlx::PgConnection>,
    rows: usize,
}

/// Prepares loading `rows` rows over `connections` connections at once.
pub async fn prepare(scratch: &Scratch, seed: u64, rows: usize, connections: usize) -> anyhow::Result<Prepared> {
    let table = format!("events_c{connections}");
    create_table(scratch, &table).await?;
    let mut conns = Vec::with_capacity(connections);
    for _ in 0..connections {
        conns.push(scratch.connect().await?);
    }
    Ok(Prepared {
        chunks: encode_chunks(seed, rows)?,
        statement: format!("COPY bench_copy.{table} ({COLUMNS}) FROM STDIN (FORMAT binary)"),
        connections: conns,
        rows,
    })
}

impl Prepared {
    /// Runs the load. The connections stay open afterwards (until `self` drops), so that
    /// their backends' CPU time is still there to be counted when the run is sampled.
    pub async fn run(&mut self) -> anyhow::Result<Measured> {
        let next = AtomicUsize::new(0);
        let (chunks, statement, next) = (&self.chunks, self.statement.as_str(), &next);
        let started = Instant::now();
        // One task polling every connection: the client side of COPY is only I/O.
        let loads = self.connections.iter_mut().map(|conn| async move {
            let mut latencies = Vec::new();
            let mut copied = 0u64;
            while let Some((chunk, expected)) = chunks.get(next.fetch_add(1, Ordering::Relaxed)) {
                let sent = Instant::now();
                let mut copy = conn.copy_in_raw(statement).await?;
                copy.send(chunk.as_ref()).await?;
                let done = copy.finish().await?;
                ensure!(done == *expected, "COPY took {done} rows of {expected}");
                latencies.push(sent.elapsed());
                copied += done;
            }
            anyhow::Ok((copied, latencies))
        });
        let mut measured = Measured::default();
        for (copied, latencies) in futures::future::try_join_all(loads).await? {
            measured.events += copied;
            measured.latencies.extend(latencies);
        }
        measured.elapsed = started.elapsed();
        ensure!(
            measured.events == self.rows as u64,
            "COPY loaded {} rows of {}",
            measured.events,
            self.rows
        );
        Ok(measured)
    }
}
