//! Decisions on Postgres: a person's first decision of a batch without a lock, checked
//! as it is written; the rest under the people's locks.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use corvus_log::store::NewEvent;
use sqlx::Row as _;
use uuid::Uuid;

use super::super::{
    DecideRequest, Ledger, PgOrchestrationStore, Recorded, State, StorageError, Touch, Writes, micros, touch_of,
};
use super::{DECISION_COLUMNS, entries, plan_all, states_of};

impl PgOrchestrationStore {
    pub(in crate::storage) async fn decide_batch(
        &self,
        requests: &[DecideRequest],
    ) -> Result<Vec<Recorded>, StorageError> {
        let mut first = HashSet::new();
        let unlocked: Vec<usize> = (0..requests.len())
            .filter(|&i| {
                let r = &requests[i];
                r.budgeted.is_empty() && first.insert((r.ws.as_str(), r.profile.as_uuid()))
            })
            .collect();
        let mut recorded: Vec<Option<Recorded>> = vec![None; requests.len()];
        if !unlocked.is_empty() {
            let asked: Vec<&DecideRequest> = unlocked.iter().map(|&i| &requests[i]).collect();
            for (&i, r) in unlocked.iter().zip(self.decide_unlocked(&asked).await?) {
                recorded[i] = r;
            }
        }
        let rest: Vec<usize> = (0..requests.len()).filter(|&i| recorded[i].is_none()).collect();
        if !rest.is_empty() {
            let asked: Vec<&DecideRequest> = rest.iter().map(|&i| &requests[i]).collect();
            for (&i, r) in rest.iter().zip(self.decide_locked(&asked).await?) {
                recorded[i] = Some(r);
            }
        }
        Ok(recorded
            .into_iter()
            .map(|r| r.expect("every request recorded"))
            .collect())
    }

    /// Plans each request (one a person) from the ledger as one statement reads it, the
    /// campaigns it may choose taken as live in the versions it knows, then writes the
    /// decisions in one statement on two conditions: the person's count of decisions is
    /// what was read (no decision and no merge moved their touches since), and the
    /// campaign is live in that version. `None` for a decision not written: it is
    /// decided again under the lock.
    async fn decide_unlocked(&self, requests: &[&DecideRequest]) -> Result<Vec<Option<Recorded>>, StorageError> {
        let rows = sqlx::query(
            "SELECT p.n, e.decisions, coalesce(e.erased, false), t.campaign, t.channel, t.at, t.local_day \
             FROM unnest($1::text[], $2::uuid[], $3::int8[]) WITH ORDINALITY AS p(ws, id, since, n) \
             LEFT JOIN people e ON e.workspace_id = p.ws AND e.profile_id = p.id \
             LEFT JOIN LATERAL (SELECT campaign, channel, at, local_day FROM touches \
               WHERE workspace_id = p.ws AND profile_id = p.id AND at >= p.since) t ON true",
        )
        .bind(requests.iter().map(|r| r.ws.as_str()).collect::<Vec<_>>())
        .bind(requests.iter().map(|r| r.profile.as_uuid()).collect::<Vec<_>>())
        .bind(requests.iter().map(|r| micros(r.since)).collect::<Vec<_>>())
        .fetch_all(&self.pool)
        .await?;
        let mut counts = vec![0_i64; requests.len()];
        let mut erased = vec![false; requests.len()];
        let mut touches: Vec<Vec<Touch>> = vec![Vec::new(); requests.len()];
        for row in rows {
            let n = row.try_get::<i64, _>(0)? as usize - 1;
            counts[n] = row.try_get::<Option<i64>, _>(1)?.unwrap_or_default();
            erased[n] = row.try_get(2)?;
            if let Some(campaign) = row.try_get::<Option<String>, _>(3)? {
                touches[n].push(touch_of((campaign, row.try_get(4)?, row.try_get(5)?, row.try_get(6)?)));
            }
        }
        let recorded: Vec<Recorded> = requests
            .iter()
            .zip(touches)
            .zip(erased)
            .map(|((r, touches), erased)| {
                if erased {
                    return Recorded::Erased;
                }
                let ledger = Ledger {
                    touches,
                    spent: HashMap::new(),
                    states: r
                        .assumed
                        .iter()
                        .map(|(name, version)| (name.clone(), (State::Live, *version)))
                        .collect(),
                };
                match (r.plan)(&ledger) {
                    Ok(writes) => Recorded::Written(Box::new(writes)),
                    Err(explanation) => Recorded::Nothing(explanation),
                }
            })
            .collect();
        let written = Self::write_checked(&self.pool, requests, &recorded, &counts).await?;
        if !written.is_empty() {
            self.log.wake();
            self.decisions_statistics.wrote(&self.pool, written.len());
        }
        Ok(recorded
            .into_iter()
            .map(|r| match r {
                Recorded::Written(w) if !written.contains(&w.decision.id) => None,
                r => Some(r),
            })
            .collect())
    }

    async fn decide_locked(&self, requests: &[&DecideRequest]) -> Result<Vec<Recorded>, StorageError> {
        // Every read here is by key; without statistics (a young table) Postgres can
        // reckon a batch's people most of `touches` and read all of it.
        let mut tx = self
            .pool
            .begin_with("BEGIN; SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off")
            .await?;
        // The people's locks, in key order: a second decision for one of them, here or
        // on another replica, waits for this commit and then counts its touches.
        let mut people: BTreeMap<(&str, Uuid), (i64, i64)> = BTreeMap::new();
        for r in requests {
            let p = people
                .entry((r.ws.as_str(), r.profile.as_uuid()))
                .or_insert((0, i64::MAX));
            p.0 += 1;
            p.1 = p.1.min(micros(r.since));
        }
        let wss: Vec<&str> = people.keys().map(|k| k.0).collect();
        let ids: Vec<Uuid> = people.keys().map(|k| k.1).collect();
        let counts: Vec<i64> = people.values().map(|v| v.0).collect();
        let sinces: Vec<i64> = people.values().map(|v| v.1).collect();
        // With them, every campaign's state as of this statement: one paused before it
        // began is seen paused.
        let workspaces: Vec<&str> = wss.iter().copied().collect::<BTreeSet<_>>().into_iter().collect();
        let states = states_of(
            sqlx::query_as(
                "WITH locked AS (INSERT INTO people (workspace_id, profile_id, decisions) \
                   SELECT * FROM unnest($1::text[], $2::uuid[], $3::int8[]) \
                   ON CONFLICT (workspace_id, profile_id) DO UPDATE SET decisions = people.decisions + excluded.decisions) \
                 SELECT workspace_id, name, state, version FROM campaigns WHERE workspace_id = ANY($4)",
            )
            .bind(&wss)
            .bind(&ids)
            .bind(&counts)
            .bind(&workspaces)
            .fetch_all(&mut *tx)
            .await?,
        )?;
        // Each person's touches through their own range of the index (a lateral join
        // keeps the planner from scanning the workspace's), and whether they were erased.
        let rows = sqlx::query(
            "SELECT p.n, e.erased, t.campaign, t.channel, t.at, t.local_day \
             FROM unnest($1::text[], $2::uuid[], $3::int8[]) WITH ORDINALITY AS p(ws, id, since, n) \
             JOIN people e ON e.workspace_id = p.ws AND e.profile_id = p.id \
             LEFT JOIN LATERAL (SELECT campaign, channel, at, local_day FROM touches \
               WHERE workspace_id = p.ws AND profile_id = p.id AND at >= p.since) t ON true",
        )
        .bind(&wss)
        .bind(&ids)
        .bind(&sinces)
        .fetch_all(&mut *tx)
        .await?;
        let keys: Vec<(String, Uuid)> = people.keys().map(|(w, id)| ((*w).to_owned(), *id)).collect();
        let mut touches: HashMap<(String, Uuid), Vec<Touch>> = HashMap::new();
        let mut erased = HashSet::new();
        for row in rows {
            let person = &keys[row.try_get::<i64, _>(0)? as usize - 1];
            if row.try_get(1)? {
                erased.insert(person.clone());
            }
            if let Some(campaign) = row.try_get::<Option<String>, _>(2)? {
                let touch = touch_of((campaign, row.try_get(3)?, row.try_get(4)?, row.try_get(5)?));
                touches.entry(person.clone()).or_default().push(touch);
            }
        }
        // The budgets asked about, locked in key order: what they have spent is then
        // what this batch spends from.
        let budgets: BTreeSet<(&str, &str)> = requests
            .iter()
            .flat_map(|r| r.budgeted.iter().map(|c| (r.ws.as_str(), c.as_str())))
            .collect();
        let mut spent = HashMap::new();
        if !budgets.is_empty() {
            let (bws, bcs): (Vec<&str>, Vec<&str>) = budgets.iter().copied().unzip();
            sqlx::query(
                "INSERT INTO budgets (workspace_id, campaign, spent) \
                 SELECT w, c, 0 FROM unnest($1::text[], $2::text[]) AS b(w, c) ON CONFLICT DO NOTHING",
            )
            .bind(&bws)
            .bind(&bcs)
            .execute(&mut *tx)
            .await?;
            let rows: Vec<(String, String, i64)> = sqlx::query_as(
                "SELECT workspace_id, campaign, spent FROM budgets \
                 WHERE (workspace_id, campaign) IN (SELECT * FROM unnest($1::text[], $2::text[])) \
                 ORDER BY workspace_id, campaign FOR UPDATE",
            )
            .bind(&bws)
            .bind(&bcs)
            .fetch_all(&mut *tx)
            .await?;
            spent = rows.into_iter().map(|(w, c, s)| ((w, c), s as u64)).collect();
        }
        let recorded = plan_all(requests, touches, spent, &states, &erased);
        let mut spends: BTreeMap<(&str, &str), i64> = BTreeMap::new();
        for (r, w) in requests.iter().zip(&recorded) {
            if let Recorded::Written(w) = w
                && w.spend.is_some()
            {
                *spends.entry((r.ws.as_str(), w.decision.campaign.as_str())).or_default() += 1;
            }
        }
        if !spends.is_empty() {
            let (keys, ns): (Vec<_>, Vec<i64>) = spends.into_iter().unzip();
            let (bws, bcs): (Vec<&str>, Vec<&str>) = keys.into_iter().unzip();
            sqlx::query(
                "UPDATE budgets SET spent = budgets.spent + b.n \
                 FROM unnest($1::text[], $2::text[], $3::int8[]) AS b(w, c, n) \
                 WHERE budgets.workspace_id = b.w AND budgets.campaign = b.c",
            )
            .bind(&bws)
            .bind(&bcs)
            .bind(&ns)
            .execute(&mut *tx)
            .await?;
        }
        Self::write_all(&mut tx, requests, &recorded).await?;
        for (_, (i, entries)) in entries(requests, &recorded) {
            Self::log_in(&mut tx, &requests[i].ws, &entries).await?;
        }
        tx.commit().await?;
        self.log.wake();
        self.decisions_statistics.wrote(&self.pool, requests.len());
        Ok(recorded)
    }

    /// The decisions, touches and sends of a batch, in one statement.
    async fn write_all(
        conn: &mut sqlx::PgConnection,
        requests: &[&DecideRequest],
        recorded: &[Recorded],
    ) -> Result<(), StorageError> {
        let decisions = written(requests, recorded);
        if !decisions.is_empty() {
            bind_writes(sqlx::query_as::<_, (Uuid,)>(WRITE.as_str()), &decisions)
                .fetch_all(conn)
                .await?;
        }
        Ok(())
    }

    /// The decisions of a batch (one a person), with their touches, sends and log
    /// entries, in one statement that writes a decision only if the person's count of
    /// decisions is still `counts`' and its campaign is live in the version decided
    /// with; the decisions written.
    async fn write_checked(
        pool: &sqlx::PgPool,
        requests: &[&DecideRequest],
        recorded: &[Recorded],
        counts: &[i64],
    ) -> Result<HashSet<Uuid>, StorageError> {
        let decisions = written(requests, recorded);
        if decisions.is_empty() {
            return Ok(HashSet::new());
        }
        let counts: Vec<i64> = requests
            .iter()
            .zip(recorded)
            .zip(counts)
            .filter(|((_, rec), _)| matches!(rec, Recorded::Written(_)))
            .map(|(_, n)| *n)
            .collect();
        let entries: Vec<NewEvent> = decisions
            .iter()
            .map(|(r, w)| crate::log::entry(&r.ws, &w.decision))
            .collect();
        let ids: Vec<(Uuid,)> = bind_writes(sqlx::query_as(WRITE_CHECKED.as_str()), &decisions)
            .bind(decisions.iter().map(|(r, _)| r.ws.as_str()).collect::<Vec<_>>())
            .bind(decisions.iter().map(|(r, _)| r.profile.as_uuid()).collect::<Vec<_>>())
            .bind(counts)
            .bind(entries.iter().map(|e| e.message_id.clone()).collect::<Vec<_>>())
            .bind(entries.iter().map(|e| e.event_type).collect::<Vec<_>>())
            .bind(entries.iter().map(|e| e.received_at).collect::<Vec<_>>())
            .bind(entries.iter().map(|e| e.payload.clone()).collect::<Vec<_>>())
            .bind(entries.iter().map(|e| e.traceparent.clone()).collect::<Vec<_>>())
            .fetch_all(pool)
            .await?;
        Ok(ids.into_iter().map(|(id,)| id).collect())
    }
}

/// The requests with a decision to write, and its writes.
fn written<'a>(requests: &[&'a DecideRequest], recorded: &'a [Recorded]) -> Vec<(&'a DecideRequest, &'a Writes)> {
    requests
        .iter()
        .zip(recorded)
        .filter_map(|(r, rec)| match rec {
            Recorded::Written(w) => Some((*r, w.as_ref())),
            _ => None,
        })
        .collect()
}

/// The decisions ($1 to $12), touches ($13 to $19) and sends ($20 to $27) of a batch,
/// a column an array.
const ROWS: [&str; 3] = [
    "unnest($1::uuid[], $2::text[], $3::uuid[], $4::text[], $5::int4[], $6::text[], $7::text[], $8::text[], \
     $9::text[], $10::int8[], $11::int8[], $12::text[]) \
     AS x(id, w, p, c, v, arm, action, ch, seg, send_at, decided_at, detail)",
    "unnest($13::text[], $14::uuid[], $15::text[], $16::text[], $17::int8[], $18::int4[], $19::uuid[]) \
     AS t(w, p, c, ch, at, day, id)",
    "unnest($20::uuid[], $21::text[], $22::uuid[], $23::text[], $24::text[], $25::int8[], $26::text[], $27::text[]) \
     AS s(id, w, p, c, ch, at, r, pl)",
];
const TOUCH_COLUMNS: &str = "workspace_id, profile_id, campaign, channel, at, local_day, decision_id";
const SEND_COLUMNS: &str =
    "decision_id, workspace_id, profile_id, campaign, channel, state, send_at, next_attempt_at, recipient, payload";
const SEND_ROW: &str = "s.id, s.w, s.p, s.c, s.ch, 'pending', s.at, s.at, s.r, s.pl";

/// The writes of a batch decided under the people's locks.
static WRITE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let [d, t, s] = ROWS;
    format!(
        "WITH d AS (INSERT INTO decisions ({DECISION_COLUMNS}) SELECT * FROM {d}), \
         t AS (INSERT INTO touches ({TOUCH_COLUMNS}) SELECT * FROM {t}) \
         INSERT INTO sends ({SEND_COLUMNS}) SELECT {SEND_ROW} FROM {s}"
    )
});

/// The writes of a batch decided without them: the people's counts of decisions
/// ($28, $29, $30 as read) moved on where they are unchanged and the person not erased, the decisions of those
/// people whose campaign is live in their version, and with each decision written its
/// touch, send and log entry ($28, $31 to $35: the log's columns). The decisions written.
static WRITE_CHECKED: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let [d, t, s] = ROWS;
    format!(
        "WITH counted AS (INSERT INTO people (workspace_id, profile_id, decisions) \
           SELECT w, p, n + 1 FROM unnest($28::text[], $29::uuid[], $30::int8[]) AS c(w, p, n) \
           ON CONFLICT (workspace_id, profile_id) DO UPDATE SET decisions = excluded.decisions \
           WHERE people.decisions = excluded.decisions - 1 AND NOT people.erased \
           RETURNING workspace_id, profile_id), \
         d AS (INSERT INTO decisions ({DECISION_COLUMNS}) SELECT x.* FROM {d} \
           WHERE (x.w, x.p) IN (SELECT workspace_id, profile_id FROM counted) \
           AND EXISTS (SELECT 1 FROM campaigns k WHERE k.workspace_id = x.w AND k.name = x.c \
             AND k.state = 'live' AND k.version = x.v) \
           RETURNING decision_id), \
         t AS (INSERT INTO touches ({TOUCH_COLUMNS}) SELECT t.* FROM {t} WHERE t.id IN (SELECT decision_id FROM d)), \
         s AS (INSERT INTO sends ({SEND_COLUMNS}) SELECT {SEND_ROW} FROM {s} WHERE s.id IN (SELECT decision_id FROM d)), \
         l AS (INSERT INTO events (workspace_id, message_id, event_id, event_type, received_at, payload, traceparent) \
           SELECT * FROM unnest($28::text[], $31::text[], $1::uuid[], $32::int2[], $33::timestamptz[], \
             $34::bytea[], $35::text[]) AS l(w, m, id, ty, at, pl, tp) WHERE l.id IN (SELECT decision_id FROM d)) \
         SELECT decision_id FROM d"
    )
});

/// Binds the arrays of `ROWS`.
fn bind_writes<'q, O>(
    query: sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>,
    decisions: &'q [(&'q DecideRequest, &'q Writes)],
) -> sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments> {
    let column = |f: &dyn Fn(&DecideRequest, &Writes) -> String| -> Vec<String> {
        decisions.iter().map(|(r, w)| f(r, w)).collect()
    };
    let touched: Vec<(&DecideRequest, &Writes, &Touch)> = decisions
        .iter()
        .filter_map(|(r, w)| Some((*r, *w, w.touch.as_ref()?)))
        .collect();
    let sent: Vec<(&DecideRequest, &Writes, &super::super::Outbound)> = decisions
        .iter()
        .filter_map(|(r, w)| Some((*r, *w, w.send.as_ref()?)))
        .collect();
    query
        .bind(decisions.iter().map(|(_, w)| w.decision.id).collect::<Vec<_>>())
        .bind(column(&|r, _| r.ws.as_str().to_owned()))
        .bind(
            decisions
                .iter()
                .map(|(_, w)| w.decision.profile.as_uuid())
                .collect::<Vec<_>>(),
        )
        .bind(column(&|_, w| w.decision.campaign.clone()))
        .bind(
            decisions
                .iter()
                .map(|(_, w)| w.decision.campaign_version as i32)
                .collect::<Vec<_>>(),
        )
        .bind(column(&|_, w| w.decision.arm.clone()))
        .bind(column(&|_, w| w.decision.action.clone()))
        .bind(column(&|_, w| w.decision.channel.clone()))
        .bind(column(&|_, w| w.decision.segment.clone()))
        .bind(
            decisions
                .iter()
                .map(|(_, w)| micros(w.decision.send_at))
                .collect::<Vec<_>>(),
        )
        .bind(
            decisions
                .iter()
                .map(|(_, w)| micros(w.decision.decided_at))
                .collect::<Vec<_>>(),
        )
        .bind(column(&|_, w| {
            serde_json::to_string(&w.decision).expect("a decision serialises")
        }))
        .bind(
            touched
                .iter()
                .map(|(r, _, _)| r.ws.as_str().to_owned())
                .collect::<Vec<_>>(),
        )
        .bind(touched.iter().map(|(r, _, _)| r.profile.as_uuid()).collect::<Vec<_>>())
        .bind(touched.iter().map(|(_, _, t)| t.campaign.clone()).collect::<Vec<_>>())
        .bind(touched.iter().map(|(_, _, t)| t.channel.clone()).collect::<Vec<_>>())
        .bind(touched.iter().map(|(_, _, t)| micros(t.at)).collect::<Vec<_>>())
        .bind(touched.iter().map(|(_, _, t)| t.local_day).collect::<Vec<_>>())
        .bind(touched.iter().map(|(_, w, _)| w.decision.id).collect::<Vec<_>>())
        .bind(sent.iter().map(|(_, w, _)| w.decision.id).collect::<Vec<_>>())
        .bind(
            sent.iter()
                .map(|(r, _, _)| r.ws.as_str().to_owned())
                .collect::<Vec<_>>(),
        )
        .bind(sent.iter().map(|(r, _, _)| r.profile.as_uuid()).collect::<Vec<_>>())
        .bind(
            sent.iter()
                .map(|(_, w, _)| w.decision.campaign.clone())
                .collect::<Vec<_>>(),
        )
        .bind(
            sent.iter()
                .map(|(_, w, _)| w.decision.channel.clone())
                .collect::<Vec<_>>(),
        )
        .bind(
            sent.iter()
                .map(|(_, w, _)| micros(w.decision.send_at))
                .collect::<Vec<_>>(),
        )
        .bind(sent.iter().map(|(_, _, s)| s.recipient.clone()).collect::<Vec<_>>())
        .bind(sent.iter().map(|(_, _, s)| s.payload.clone()).collect::<Vec<_>>())
}

/// The decision planned without a lock (Postgres) against a merge or an erasure written
/// between its read and its write. SQLite decides under the file's write lock: nothing comes between.
#[cfg(test)]
mod unlocked {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use chrono::Utc;
    use corvus_proto::{ProfileId, WorkspaceId};
    use corvus_test_support::{Backend, TempDir};

    use super::super::tests::request;
    use crate::storage::{Merge, OrchestrationStore, Recorded, State};

    /// A Postgres store with campaign "c" live in version 1, as `request`'s plan decides
    /// with; `None` where there is no server to test against.
    async fn live_store(dir: &TempDir) -> Option<(Arc<dyn OrchestrationStore>, WorkspaceId)> {
        let config = corvus_test_support::storage(Backend::Postgres, dir).await?;
        let store: Arc<dyn OrchestrationStore> = crate::storage::connect(&config).await.unwrap();
        let ws: WorkspaceId = "acme".parse().unwrap();
        let def = serde_json::from_value(serde_json::json!({
            "name": "c", "actions": [{"name": "x"}], "channels": ["email"],
        }))
        .unwrap();
        store.create_campaign(&ws, &def, Utc::now()).await.unwrap();
        let live = store.set_state(&ws, "c", State::Live, Utc::now()).await.unwrap();
        assert_eq!(live.version, 1);
        Some((store, ws))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_merge_between_the_read_and_the_write_is_counted() {
        let dir = TempDir::new();
        let Some((store, ws)) = live_store(&dir).await else {
            return;
        };
        let (survivor, merged) = (ProfileId::new(), ProfileId::new());
        // The merged id's decision sends: a touch.
        let first = store.decide(&[request(merged, &[])]).await.unwrap();
        assert!(matches!(first[0], Recorded::Written(_)));
        // The survivor's plan (send while there is no touch) runs once from its ledger
        // read before the merge, which is then written, moving the touch to it.
        let mut asked = request(survivor, &[]);
        asked.since = Utc::now() - chrono::Duration::hours(1);
        let plan = asked.plan;
        let (merging, merger) = (Arc::new(AtomicBool::new(false)), store.clone());
        let ws_ = ws.clone();
        asked.plan = Box::new(move |ledger| {
            if !merging.swap(true, Ordering::SeqCst) {
                let merge = Merge {
                    ws: ws_.clone(),
                    survivor,
                    merged: vec![merged],
                };
                tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(merger.merge(&[merge])))
                    .unwrap();
            }
            plan(ledger)
        });
        let second = store.decide(&[asked]).await.unwrap();
        assert!(
            matches!(second[0], Recorded::Nothing(_)),
            "the touch merged in meanwhile counts: {:?}",
            second[0]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_erasure_between_the_read_and_the_write_leaves_nothing() {
        let dir = TempDir::new();
        let Some((store, ws)) = live_store(&dir).await else {
            return;
        };
        // One person decided for before (a count to check), one never.
        let (known, new) = (ProfileId::new(), ProfileId::new());
        let first = store.decide(&[request(known, &[])]).await.unwrap();
        assert!(matches!(first[0], Recorded::Written(_)));
        for person in [known, new] {
            let mut asked = request(person, &[]);
            let plan = asked.plan;
            let (erasing, eraser, ws_) = (Arc::new(AtomicBool::new(false)), store.clone(), ws.clone());
            asked.plan = Box::new(move |ledger| {
                if !erasing.swap(true, Ordering::SeqCst) {
                    tokio::task::block_in_place(|| {
                        tokio::runtime::Handle::current().block_on(eraser.erase(&ws_, &[person]))
                    })
                    .unwrap();
                }
                plan(ledger)
            });
            let answer = store.decide(&[asked]).await.unwrap();
            assert!(
                matches!(answer[0], Recorded::Erased),
                "erased between the read and the write: {:?}",
                answer[0]
            );
            let since = Utc::now() - chrono::Duration::days(1);
            assert!(store.touches(&ws, person, since).await.unwrap().is_empty());
            // And after: nothing decided for them either.
            let again = store.decide(&[request(person, &[])]).await.unwrap();
            assert!(matches!(again[0], Recorded::Erased), "{:?}", again[0]);
        }
    }
}
