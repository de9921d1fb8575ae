//! Reads of the log shared by the dispatchers of one process. Consumers of one log mostly
//! read the same entries at about the same time (all at the head, woken by the same
//! commit), and each read costs Postgres a query and the process a copy of every
//! payload. So a read another dispatcher is making is waited for rather than made
//! again, and a recent one is answered from memory.
//!
//! Sound because a read's answer is final: what `read_after` returns lies below the
//! horizon, so no entry can later appear between `after` and the last one returned. A
//! remembered answer may be shorter than a fresh one (entries committed since); the
//! dispatcher reads again after its end. Only non-empty answers are shared with a
//! dispatcher that joined a read under way (an empty one may predate the commit that
//! woke it) or remembered, and only for [`KEEP`], so an erasure's deletions reach every
//! dispatcher within that.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};

use crate::store::{EventLog, Position, ReadBatch};

/// How long a read's answer is handed out again.
const KEEP: Duration = Duration::from_secs(1);
/// Answers remembered at most.
const REMEMBERED: usize = 32;

type Key = (Position, u32, u64);
type Answer = Result<Arc<ReadBatch>, String>;

#[derive(Default)]
pub(super) struct SharedReads {
    in_flight: Mutex<HashMap<Key, Shared<BoxFuture<'static, Answer>>>>,
    recent: Mutex<Vec<(Key, Instant, Arc<ReadBatch>)>>,
}

impl SharedReads {
    /// `log.read_after(after, limit, max_bytes)`, shared.
    pub(super) async fn read_after(
        &self,
        log: &Arc<dyn EventLog>,
        after: Position,
        limit: u32,
        max_bytes: u64,
    ) -> Result<ReadBatch, String> {
        let key = (after, limit, max_bytes);
        let now = Instant::now();
        {
            let mut recent = self.recent.lock().expect("shared reads");
            recent.retain(|(_, at, _)| now.duration_since(*at) < KEEP);
            if let Some((_, _, batch)) = recent.iter().find(|(k, _, _)| *k == key) {
                return Ok(copy(batch));
            }
        }
        let joined;
        let read = {
            let mut in_flight = self.in_flight.lock().expect("shared reads");
            // Only a read still running is joined: one that has finished answered a
            // question asked before this one, and an empty answer must be asked again.
            in_flight.retain(|_, read| read.peek().is_none());
            joined = in_flight.contains_key(&key);
            in_flight
                .entry(key)
                .or_insert_with(|| {
                    let log = log.clone();
                    async move {
                        log.read_after(after, limit, max_bytes)
                            .await
                            .map(Arc::new)
                            .map_err(|e| e.to_string())
                    }
                    .boxed()
                    .shared()
                })
                .clone()
        };
        let batch = read.await?;
        if batch.events.is_empty() && joined {
            // A read begun before this dispatcher was woken may have missed the commit
            // that woke it: nothing is shared but what was found.
            return log.read_after(after, limit, max_bytes).await.map_err(|e| e.to_string());
        }
        if !batch.events.is_empty() {
            let mut recent = self.recent.lock().expect("shared reads");
            if !recent.iter().any(|(k, _, _)| *k == key) {
                if recent.len() >= REMEMBERED {
                    recent.remove(0);
                }
                recent.push((key, Instant::now(), batch.clone()));
            }
        }
        Ok(copy(&batch))
    }
}

fn copy(batch: &ReadBatch) -> ReadBatch {
    ReadBatch {
        events: batch.events.clone(),
        held_back: batch.held_back,
    }
}
