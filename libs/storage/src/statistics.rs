//! The planner's statistics of a service's tables, kept in step with their growth.
//!
//! Autovacuum does this on a server that runs it, at its own pace; but a table that
//! grew from empty and was never analyzed, or last analyzed when it held a handful of
//! rows, is planned as if it still did: a batch's key lookups become scans of the
//! workspace (an index read on its first column alone, each key a filter). So a service
//! analyzes its tables itself, in the background, once it has written `first` rows and
//! again each time that count has doubled: a handful of times over the first millions,
//! which is when the estimates move.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use sqlx::PgPool;

#[derive(Debug)]
pub struct Statistics {
    service: &'static str,
    /// `ANALYZE` of the tables and the key columns the service's lookups go by.
    analyze: &'static str,
    written: AtomicU64,
    next: AtomicU64,
    running: AtomicBool,
}

impl Statistics {
    pub fn new(service: &'static str, first: u64, analyze: &'static str) -> Arc<Self> {
        Arc::new(Self {
            service,
            analyze,
            written: AtomicU64::new(0),
            next: AtomicU64::new(first),
            running: AtomicBool::new(false),
        })
    }

    /// Counts rows written, and analyzes the tables when they have grown enough.
    pub fn wrote(self: &Arc<Self>, pool: &PgPool, rows: usize) {
        let total = self.written.fetch_add(rows as u64, Ordering::Relaxed) + rows as u64;
        if total < self.next.load(Ordering::Relaxed) || self.running.swap(true, Ordering::AcqRel) {
            return;
        }
        self.next.store(2 * total, Ordering::Relaxed);
        let (pool, this) = (pool.clone(), self.clone());
        tokio::spawn(async move {
            if let Err(err) = this.run(&pool).await {
                tracing::warn!(error = %err, service = this.service, "could not analyze the service's tables");
            }
            this.running.store(false, Ordering::Release);
        });
    }

    /// A coarse sample (a tenth of the default) is plenty to tell a key lookup from a scan.
    async fn run(&self, pool: &PgPool) -> Result<(), sqlx::Error> {
        let mut tx = pool.begin().await?;
        sqlx::query("SET LOCAL default_statistics_target = 10")
            .execute(&mut *tx)
            .await?;
        sqlx::query(self.analyze).execute(&mut *tx).await?;
        tx.commit().await
    }
}
