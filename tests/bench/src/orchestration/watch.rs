//! What the app was doing meanwhile: consumers' lags, Postgres sessions, rows read.

use super::*;

/// (samples, sum, largest) of each consumer's lag, in seconds.
pub(super) type LagsSeen = HashMap<&'static str, (u64, f64, f64)>;

/// The consumers' lags as they report them (`corvus_outbox_lag_seconds`: how long ago
/// the last entry each was handed had been received), identity's on the event log and
/// scoring's and orchestration's on identity's log, sampled from this process's metrics
/// until stopped (no query of the database the run shares): the mean and the largest.
pub(super) struct Lags {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<LagsSeen>,
}

/// The consumers on an alert's way, and scoring beside them.
pub(super) const CONSUMERS: [&str; 3] = ["identity", "scoring", "orchestration"];

impl Lags {
    pub(super) fn sample() -> Self {
        let stop = CancellationToken::new();
        let stopping = stop.clone();
        let task = tokio::spawn(async move {
            let mut seen = LagsSeen::new();
            let mut next = Instant::now();
            while !stopping.is_cancelled() {
                let text = corvus_platform::metrics::recorder().render();
                for name in CONSUMERS {
                    let labels = format!("consumer=\"{name}\"");
                    let Some(lag) = crate::identity::diagnostics::value_of(&text, "corvus_outbox_lag_seconds", &labels)
                    else {
                        continue;
                    };
                    let entry = seen.entry(name).or_default();
                    entry.0 += 1;
                    entry.1 += lag;
                    entry.2 = entry.2.max(lag);
                }
                next += LAG_SAMPLE;
                tokio::time::sleep_until(next.max(Instant::now()).into()).await;
            }
            seen
        });
        Self { stop, task }
    }

    pub(super) async fn stop(self) -> anyhow::Result<LagNote> {
        self.stop.cancel();
        Ok(LagNote(self.task.await.context("the lag sampler panicked")?))
    }
}

pub(super) struct LagNote(LagsSeen);

impl LagNote {
    pub(super) fn note(&self) -> String {
        CONSUMERS
            .iter()
            .filter_map(|name| {
                let (samples, sum, max) = self.0.get(name)?;
                Some(format!(
                    "{name} mean {:.0} ms, max {:.0} ms ({samples} samples)",
                    1e3 * sum / (*samples).max(1) as f64,
                    1e3 * max
                ))
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// The app's Postgres sessions not idle, sampled from `pg_stat_activity` until stopped:
/// by service, state (or what they wait on) and statement.
pub(super) struct Sessions {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<SessionNote>>,
}

#[derive(Default)]
pub(super) struct SessionNote {
    samples: u64,
    seen: HashMap<(String, String, String), u64>,
}

impl Sessions {
    pub(super) async fn sample(scratch: &Scratch) -> anyhow::Result<Self> {
        let mut conn = scratch.connect().await?;
        let stop = CancellationToken::new();
        let stopping = stop.clone();
        let task = tokio::spawn(async move {
            let mut note = SessionNote::default();
            let mut next = Instant::now();
            while !stopping.is_cancelled() {
                let rows: Vec<(String, String, String)> = sqlx::query_as(
                    "SELECT application_name, \
                     CASE WHEN state = 'active' AND wait_event IS NOT NULL \
                          THEN 'waiting on ' || wait_event_type || ':' || wait_event ELSE state END, \
                     left(regexp_replace(query, '\\s+', ' ', 'g'), 60) \
                     FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() \
                     AND application_name LIKE 'corvus-%' AND state <> 'idle'",
                )
                .fetch_all(&mut conn)
                .await?;
                note.samples += 1;
                for row in rows {
                    *note.seen.entry(row).or_default() += 1;
                }
                next += SESSION_SAMPLE;
                tokio::time::sleep_until(next.max(Instant::now()).into()).await;
            }
            anyhow::Ok(note)
        });
        Ok(Self { stop, task })
    }

    pub(super) async fn stop(self) -> anyhow::Result<SessionNote> {
        self.stop.cancel();
        self.task.await.context("the session sampler panicked")?
    }
}

impl SessionNote {
    pub(super) fn note(&self) -> String {
        let share = |n: u64| 100.0 * n as f64 / self.samples.max(1) as f64;
        let busy: u64 = self.seen.values().sum();
        let mut top: Vec<_> = self.seen.iter().collect();
        top.sort_by(|a, b| b.1.cmp(a.1));
        let top: Vec<String> = top
            .iter()
            .take(8)
            .map(|((app, state, query), n)| format!("{:.0}% {app} {state} \"{query}…\"", share(**n)))
            .collect();
        format!(
            "the app's Postgres sessions, sampled every {} ms ({} samples), were busy {:.0}% of the time (summed over \
             sessions); most seen: {}",
            SESSION_SAMPLE.as_millis(),
            self.samples,
            share(busy),
            top.join(", ")
        )
    }
}

/// Scans so far and the rows they read: each table's sequential scans
/// (`pg_stat_user_tables`) and each index's scans with the entries they read
/// (`pg_stat_user_indexes`); a busy session publishes its counts within a second.
pub(super) async fn table_scans(scratch: &Scratch) -> anyhow::Result<HashMap<String, [i64; 2]>> {
    let mut conn = scratch.connect().await?;
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT schemaname || '.' || relname || ' sequentially', coalesce(seq_scan, 0), \
         coalesce(seq_tup_read, 0) FROM pg_stat_user_tables \
         UNION ALL SELECT schemaname || '.' || relname || ' by ' || indexrelname, idx_scan, idx_tup_read \
         FROM pg_stat_user_indexes",
    )
    .fetch_all(&mut conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(what, scans, read)| (what, [scans, read]))
        .collect())
}

/// What was read most between two looks, by rows, per `unit` of `units`.
pub(super) fn scans_note(
    before: &HashMap<String, [i64; 2]>,
    after: &HashMap<String, [i64; 2]>,
    unit: &str,
    units: u64,
) -> String {
    let mut read: Vec<(&String, [i64; 2])> = after
        .iter()
        .map(|(what, now)| {
            let was = before.get(what).copied().unwrap_or_default();
            (what, [now[0] - was[0], now[1] - was[1]])
        })
        .filter(|(_, d)| d[1] > 0)
        .collect();
    read.sort_by_key(|(_, d)| -d[1]);
    let per = |n: i64| n as f64 / units.max(1) as f64;
    let top: Vec<String> = read
        .iter()
        .take(5)
        .map(|(what, d)| format!("{what}: {:.1} rows in {:.2} scans", per(d[1]), per(d[0])))
        .collect();
    format!(
        "read {unit} (pg_stat_user_tables and _indexes): {}",
        if top.is_empty() {
            "nothing".to_owned()
        } else {
            top.join("; ")
        }
    )
}
