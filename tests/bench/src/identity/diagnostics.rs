//! Where identity's time went: the app's own histograms (read from this process's
//! Prometheus recorder), what its Postgres session was doing (sampled from
//! `pg_stat_activity`), and the scans its statements made (`pg_stat_user_indexes`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::people::MixCounts;
use crate::setup::Scratch;

/// Often enough for a picture of what the sessions wait on; each sample costs Postgres a
/// read of pg_stat_activity, taken from the run it watches.
const SESSION_SAMPLE: Duration = Duration::from_millis(20);
/// How the statement behind ListConsumers starts.
const LIST_CONSUMERS: &str = "SELECT c.name, c.last_delivery_at";

/// What identity made of the mix, from its tables.
pub(super) async fn graph_note(scratch: &Scratch, workspace: &str, expected: &MixCounts) -> anyhow::Result<String> {
    let mut conn = scratch.connect().await?;
    let (live, merged): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE merged_into IS NULL), count(*) FILTER (WHERE merged_into IS NOT NULL) \
         FROM identity.profiles WHERE workspace_id = $1",
    )
    .bind(workspace)
    .fetch_one(&mut conn)
    .await?;
    let identifiers: i64 = sqlx::query_scalar("SELECT count(*) FROM identity.identifiers WHERE workspace_id = $1")
        .bind(workspace)
        .fetch_one(&mut conn)
        .await?;
    Ok(format!(
        "identity graph after the mix: {live} live profiles, {merged} merged away, {identifiers} identifiers \
         (the mix made {} profiles and {} merges in generation order)",
        expected.new_profiles, expected.merges
    ))
}

/// What the app's Postgres sessions were doing, sampled from `pg_stat_activity`.
#[derive(Default)]
pub(super) struct Sessions {
    samples: u64,
    /// Samples by `(application, state, statement)`, for sessions not idle.
    seen: HashMap<(String, String, String), u64>,
}

/// Samples every [`SESSION_SAMPLE`] until `stop`: a profile of where identity's time goes
/// between Postgres executing statements and Postgres waiting for the app in the middle
/// of a transaction. This session's own statements are left out; each is a transaction
/// of its own, so each sees the activity afresh.
pub(super) async fn sample_sessions(mut conn: sqlx::PgConnection, stop: CancellationToken) -> anyhow::Result<Sessions> {
    let mut sessions = Sessions::default();
    let mut next = Instant::now();
    while !stop.is_cancelled() {
        let rows: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT application_name, state, left(regexp_replace(query, '\\s+', ' ', 'g'), 70) \
             FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() \
             AND application_name IN ('corvus-identity', 'corvus-ingestion') AND state <> 'idle'",
        )
        .fetch_all(&mut conn)
        .await?;
        sessions.samples += 1;
        for row in rows {
            *sessions.seen.entry(row).or_default() += 1;
        }
        next += SESSION_SAMPLE;
        tokio::time::sleep_until(next.max(Instant::now()).into()).await;
    }
    Ok(sessions)
}

impl Sessions {
    pub(super) fn note(&self) -> String {
        let share = |n: u64| 100.0 * n as f64 / self.samples.max(1) as f64;
        let of = |app: &str, state: &str| -> u64 {
            self.seen
                .iter()
                .filter(|((a, s, _), _)| a == app && s == state)
                .map(|(_, n)| n)
                .sum()
        };
        // The busiest statements of the app's sessions, leaving out the ListConsumers
        // polls of this bench.
        let top = |keep: &dyn Fn(&str, &str) -> bool, count: usize| -> (u64, Vec<String>) {
            let mut seen: Vec<(&String, u64)> = self
                .seen
                .iter()
                .filter(|((a, s, q), _)| keep(a, s) && !q.starts_with(LIST_CONSUMERS))
                .map(|((_, _, q), n)| (q, *n))
                .collect();
            seen.sort_by_key(|s| std::cmp::Reverse(s.1));
            let total = seen.iter().map(|(_, n)| n).sum();
            let listed = seen
                .iter()
                .take(count)
                .map(|(q, n)| format!("{:.0}% \"{q}…\"", share(*n)))
                .collect();
            (total, listed)
        };
        let (_, identity) = top(&|a, s| a == "corvus-identity" && s == "active", 4);
        let (outbox, outbox_top) = top(&|a, _| a == "corvus-ingestion", 2);
        format!(
            "identity's Postgres session, sampled every {} ms ({} samples) from the last ack to lag 0: executing a \
             statement {:.0}% of the time, waiting for the app in the middle of a transaction (\"idle in \
             transaction\") {:.0}%; busiest statements: {}; the outbox's statements (reading the log, moving the \
             cursor) {:.0}%: {}",
            SESSION_SAMPLE.as_millis(),
            self.samples,
            share(of("corvus-identity", "active")),
            share(of("corvus-identity", "idle in transaction")),
            identity.join(", "),
            share(outbox),
            outbox_top.join(", "),
        )
    }
}

/// Index scans of identity's tables so far, by `table.index`, as Postgres counts them.
/// Sequential scans of identity's and ingestion's tables, and the rows they read, go in
/// beside them: a table scanned whole for each batch shows there.
pub(super) async fn index_scans(scratch: &Scratch) -> anyhow::Result<HashMap<String, i64>> {
    let mut conn = scratch.connect().await?;
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT relname || '.' || indexrelname, idx_scan FROM pg_stat_user_indexes WHERE schemaname = 'identity' \
         UNION ALL SELECT schemaname || '.' || relname || ' seq scans', seq_scan FROM pg_stat_user_tables \
         WHERE schemaname IN ('identity', 'ingestion') \
         UNION ALL SELECT schemaname || '.' || relname || ' rows seq-scanned', seq_tup_read FROM pg_stat_user_tables \
         WHERE schemaname IN ('identity', 'ingestion')",
    )
    .fetch_all(&mut conn)
    .await?;
    Ok(rows.into_iter().collect())
}

/// The mean time of a `SELECT 1` from this process: what one statement costs at least.
pub(super) async fn round_trip(scratch: &Scratch) -> anyhow::Result<Duration> {
    const TRIPS: u32 = 200;
    let mut conn = scratch.connect().await?;
    let started = Instant::now();
    for _ in 0..TRIPS {
        sqlx::query("SELECT 1").execute(&mut conn).await?;
    }
    Ok(started.elapsed() / TRIPS)
}

/// Index scans per identity batch, the busiest first. Postgres counts one for each
/// statement that probes an index, and one per element or row where a statement probes
/// it for each (`= ANY($1)`, a join, `ON CONFLICT`), so a count near the number of
/// candidate profiles or events a batch has shows a per-row statement or probe.
pub(super) fn scans_note(
    before: &HashMap<String, i64>,
    after: &HashMap<String, i64>,
    batches: f64,
    round_trip: Duration,
) -> String {
    let mut per_batch: Vec<(&str, f64)> = after
        .iter()
        .map(|(index, n)| {
            (
                index.as_str(),
                (n - before.get(index).copied().unwrap_or(0)) as f64 / batches,
            )
        })
        .filter(|(_, n)| *n >= 0.5)
        .collect();
    per_batch.sort_by(|a, b| b.1.total_cmp(&a.1));
    let listed: Vec<String> = per_batch.iter().map(|(index, n)| format!("{index} {n:.0}")).collect();
    format!(
        "scans per identity batch (pg_stat_user_indexes and _tables over the mix): {}; a SELECT 1 round trip from \
         this process takes {:.0} µs",
        listed.join(", "),
        round_trip.as_secs_f64() * 1e6
    )
}

/// A Prometheus histogram of this process's recorder (the app's metrics), cumulative.
#[derive(Debug, Clone, Default)]
pub(crate) struct Histogram {
    count: f64,
    seconds: f64,
    /// `(upper bound, cumulative count)`.
    buckets: Vec<(f64, f64)>,
    /// A counter read alongside: events resolved, for the identity batches.
    items: Option<f64>,
}

/// What a histogram gained between two samples.
pub(crate) struct Delta {
    pub count: f64,
    pub seconds: f64,
    buckets: Vec<(f64, f64)>,
    items: Option<f64>,
}

impl Histogram {
    /// `corvus_identity_batch_seconds`, with the events resolved.
    pub(super) fn batch_time() -> Self {
        let text = corvus_platform::metrics::recorder().render();
        let mut h = Self::parse(&text, "corvus_identity_batch_seconds", "");
        h.items = Some(value_of(&text, "corvus_identity_events_resolved_total", "").unwrap_or(0.0));
        h
    }

    /// `corvus_outbox_delivery_seconds` of one consumer, with the entries it was handed
    /// (`corvus_outbox_delivered_total`).
    pub(crate) fn delivery(consumer: &str) -> Self {
        let text = corvus_platform::metrics::recorder().render();
        let labels = format!("consumer=\"{consumer}\"");
        let mut h = Self::parse(&text, "corvus_outbox_delivery_seconds", &labels);
        h.items = Some(value_of(&text, "corvus_outbox_delivered_total", &labels).unwrap_or(0.0));
        h
    }

    /// `corvus_request_duration_seconds` of GetProfile.
    pub(super) fn server_time() -> Self {
        Self::request_time("GetProfile")
    }

    /// `corvus_request_duration_seconds` of the method whose series' labels hold `method`.
    pub(crate) fn request_time(method: &str) -> Self {
        let text = corvus_platform::metrics::recorder().render();
        Self::parse(&text, "corvus_request_duration_seconds", method)
    }

    /// The series `name` whose labels contain `labels`.
    fn parse(text: &str, name: &str, labels: &str) -> Self {
        let mut h = Self::default();
        let bucket = format!("{name}_bucket");
        for line in text.lines().filter(|l| !l.starts_with('#') && l.contains(labels)) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let metric = series.split('{').next().unwrap_or(series);
            if metric == format!("{name}_count") {
                h.count = value;
            } else if metric == format!("{name}_sum") {
                h.seconds = value;
            } else if metric == bucket
                && let Some(le) = series.split("le=\"").nth(1).and_then(|s| s.split('"').next())
            {
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap_or(f64::INFINITY)
                };
                h.buckets.push((le, value));
            }
        }
        h.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        h
    }

    pub(crate) fn since(&self, before: &Self) -> Option<Delta> {
        let count = self.count - before.count;
        (count > 0.0).then(|| Delta {
            count,
            seconds: self.seconds - before.seconds,
            buckets: self
                .buckets
                .iter()
                .map(|(le, n)| {
                    let was = before.buckets.iter().find(|b| b.0 == *le).map_or(0.0, |b| b.1);
                    (*le, n - was)
                })
                .collect(),
            items: self.items.zip(before.items).map(|(now, was)| now - was),
        })
    }
}

impl Delta {
    /// Deliveries, their mean time and entries, and the share of `over` they took.
    pub(crate) fn deliveries(&self, over: Duration) -> String {
        format!(
            "{:.0} deliveries, {:.1} ms and {:.0} entries each on average, busy {:.0}% of the time",
            self.count,
            1e3 * self.seconds / self.count,
            self.items.unwrap_or(0.0) / self.count,
            100.0 * self.seconds / over.as_secs_f64().max(1e-9)
        )
    }

    /// The bucket bound below which `q` of the observations fall.
    fn quantile(&self, q: f64) -> Option<f64> {
        let wanted = self.count * q;
        self.buckets.iter().find(|(_, n)| *n >= wanted).map(|(le, _)| *le)
    }
}

impl std::fmt::Display for Delta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let bound = |q: f64| match self.quantile(q) {
            Some(le) if le.is_finite() => format!("<= {:.1} ms", le * 1e3),
            _ => "above the top bucket".to_owned(),
        };
        write!(
            f,
            "{:.0} calls, mean {:.2} ms, p50 {}, p99 {}",
            self.count,
            1e3 * self.seconds / self.count,
            bound(0.5),
            bound(0.99)
        )?;
        if let Some(items) = self.items {
            write!(
                f,
                ", {:.0} events a batch, {:.0} events/s while resolving",
                items / self.count,
                items / self.seconds.max(1e-9)
            )?;
        }
        Ok(())
    }
}

pub(crate) fn value_of(text: &str, name: &str, labels: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && l.contains(labels))
        .find_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            (series.split('{').next()? == name).then(|| value.parse().ok())?
        })
}

/// The GetProfile requests the server has answered so far, by gRPC code
/// (`corvus_requests_total`).
pub(super) fn get_profile_codes() -> std::collections::BTreeMap<String, f64> {
    let text = corvus_platform::metrics::recorder().render();
    text.lines()
        .filter(|l| l.starts_with("corvus_requests_total{") && l.contains("GetProfile"))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let code = series.split("code=\"").nth(1)?.split('"').next()?;
            Some((code.to_owned(), value.parse().ok()?))
        })
        .collect()
}
