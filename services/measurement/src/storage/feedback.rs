//! The store's feedback: people's regions and segments, each piece of feedback once, and
//! its tallies per kind and key, moved as feedback arrives or is erased. Called from
//! `apply`'s transaction.

use std::collections::{BTreeMap, HashMap};

use corvus_proto::WorkspaceId;
use corvus_storage::StorageError;
use sqlx::QueryBuilder;
use uuid::Uuid;

use super::*;
use crate::feedback::Kind;

/// A tally's key: kind, day, channel, region, segment, activation.
type TallyKey = (String, i32, String, String, String, String);

/// A kept piece of feedback, as `RETURNING` gives it back.
type FeedbackRow = (String, i32, String, String, String, String, f64);

fn kind_of(name: &str) -> Option<Kind> {
    [Kind::Nps, Kind::Csat, Kind::Mention]
        .into_iter()
        .find(|k| k.as_str() == name)
}

/// The tallies' moves from pieces of feedback added (`sign` 1) or taken away (−1).
fn tallies(rows: Vec<FeedbackRow>, sign: i64, into: &mut BTreeMap<TallyKey, (i64, f64, f64, i64, i64)>) {
    for (kind, day, channel, region, segment, activation, value) in rows {
        let Some(k) = kind_of(&kind) else { continue };
        let t = into
            .entry((kind, day, channel, region, segment, activation))
            .or_default();
        let s = sign as f64;
        t.0 += sign;
        t.1 += s * value;
        t.2 += s * value * value;
        t.3 += sign * i64::from(k.top(value));
        t.4 += sign * i64::from(k.bottom(value));
    }
}

macro_rules! feedback_writes {
    ($Store:ident, $Db:ty) => {
        impl $Store {
            /// People's regions (from traits) and segments (from their latest decision).
            pub(super) async fn record_people(
                tx: &mut sqlx::Transaction<'_, $Db>,
                ws: &WorkspaceId,
                traits: &[NewTraits],
                decisions: &[NewDecision],
            ) -> Result<(), StorageError> {
                // One row a person a statement: a statement may not touch a row twice.
                let mut people: BTreeMap<Uuid, (String, String, i64)> = BTreeMap::new();
                for t in traits {
                    people.entry(t.profile).or_insert((String::new(), String::new(), i64::MIN)).0 = t.region.clone();
                }
                for d in decisions {
                    let p = people.entry(d.profile).or_insert((String::new(), String::new(), i64::MIN));
                    if micros(d.at) >= p.2 {
                        (p.1, p.2) = (d.segment.clone(), micros(d.at));
                    }
                }
                let people: Vec<_> = people.into_iter().collect();
                for chunk in people.chunks(ROWS_PER_STATEMENT) {
                    let mut q = QueryBuilder::<$Db>::new(
                        "INSERT INTO people (profile_id, workspace_id, region, segment, segment_at) ",
                    );
                    q.push_values(chunk, |mut row, (profile, (region, segment, at))| {
                        row.push_bind(*profile)
                            .push_bind(ws.as_str())
                            .push_bind(region.clone())
                            .push_bind(segment.clone())
                            .push_bind(*at);
                    });
                    q.push(
                        " ON CONFLICT (profile_id) DO UPDATE SET \
                         region = CASE WHEN excluded.region = '' THEN people.region ELSE excluded.region END, \
                         segment = CASE WHEN excluded.segment_at >= people.segment_at THEN excluded.segment \
                           ELSE people.segment END, \
                         segment_at = CASE WHEN excluded.segment_at >= people.segment_at THEN excluded.segment_at \
                           ELSE people.segment_at END",
                    );
                    q.build().execute(&mut **tx).await?;
                }
                Ok(())
            }

            /// Keeps each piece of feedback once, counted by the person's region (unless
            /// the event named one) and segment, and adds the new ones to the tallies.
            pub(super) async fn record_feedback(
                tx: &mut sqlx::Transaction<'_, $Db>,
                ws: &WorkspaceId,
                feedback: &[NewFeedback],
            ) -> Result<(), StorageError> {
                if feedback.is_empty() {
                    return Ok(());
                }
                let profiles: Vec<Uuid> = feedback.iter().map(|f| f.profile).collect();
                let known: HashMap<Uuid, (String, String)> = of_people!(
                    $Db,
                    "SELECT profile_id, region, segment FROM people",
                    ws,
                    &profiles
                )
                .build_query_as::<(Uuid, String, String)>()
                .fetch_all(&mut **tx)
                .await?
                .into_iter()
                .map(|(p, region, segment)| (p, (region, segment)))
                .collect();
                let mut moves = BTreeMap::new();
                for chunk in feedback.chunks(ROWS_PER_STATEMENT) {
                    let mut q = QueryBuilder::<$Db>::new(
                        "INSERT INTO feedback (event_id, kind, workspace_id, profile_id, day, channel, region, \
                         segment, activation, value) ",
                    );
                    q.push_values(chunk, |mut row, f| {
                        let (region, segment) = known.get(&f.profile).cloned().unwrap_or_default();
                        row.push_bind(f.event_id)
                            .push_bind(f.kind.as_str())
                            .push_bind(ws.as_str())
                            .push_bind(f.profile)
                            .push_bind(day(f.at))
                            .push_bind(f.channel.clone())
                            .push_bind(if f.region.is_empty() { region } else { f.region.clone() })
                            .push_bind(segment)
                            .push_bind(f.activation.clone())
                            .push_bind(f.value);
                    });
                    q.push(
                        " ON CONFLICT (event_id, kind) DO NOTHING \
                         RETURNING kind, day, channel, region, segment, activation, value",
                    );
                    let added: Vec<FeedbackRow> = q.build_query_as().fetch_all(&mut **tx).await?;
                    tallies(added, 1, &mut moves);
                }
                Self::move_tallies(tx, ws, moves).await
            }

            /// Deletes the people's feedback, and takes it off the tallies. Returns the
            /// pieces deleted.
            pub(super) async fn erase_feedback(
                tx: &mut sqlx::Transaction<'_, $Db>,
                ws: &WorkspaceId,
                profiles: &[Uuid],
            ) -> Result<u64, StorageError> {
                let mut q = of_people!($Db, "DELETE FROM feedback", ws, profiles);
                q.push(" RETURNING kind, day, channel, region, segment, activation, value");
                let gone: Vec<FeedbackRow> = q.build_query_as().fetch_all(&mut **tx).await?;
                let deleted = gone.len() as u64;
                let mut moves = BTreeMap::new();
                tallies(gone, -1, &mut moves);
                Self::move_tallies(tx, ws, moves).await?;
                Ok(deleted + delete_people!($Db, tx, "people", ws, profiles))
            }

            async fn move_tallies(
                tx: &mut sqlx::Transaction<'_, $Db>,
                ws: &WorkspaceId,
                moves: BTreeMap<TallyKey, (i64, f64, f64, i64, i64)>,
            ) -> Result<(), StorageError> {
                let moves: Vec<_> = moves.into_iter().collect();
                for chunk in moves.chunks(ROWS_PER_STATEMENT) {
                    let mut q = QueryBuilder::<$Db>::new(
                        "INSERT INTO feedback_counts (workspace_id, kind, day, channel, region, segment, activation, \
                         responses, sum, sum_squares, top, bottom) ",
                    );
                    q.push_values(chunk, |mut row, ((kind, day, channel, region, segment, activation), t)| {
                        row.push_bind(ws.as_str())
                            .push_bind(kind.clone())
                            .push_bind(*day)
                            .push_bind(channel.clone())
                            .push_bind(region.clone())
                            .push_bind(segment.clone())
                            .push_bind(activation.clone())
                            .push_bind(t.0)
                            .push_bind(t.1)
                            .push_bind(t.2)
                            .push_bind(t.3)
                            .push_bind(t.4);
                    });
                    q.push(
                        " ON CONFLICT (workspace_id, kind, day, channel, region, segment, activation) DO UPDATE SET \
                         responses = feedback_counts.responses + excluded.responses, \
                         sum = feedback_counts.sum + excluded.sum, \
                         sum_squares = feedback_counts.sum_squares + excluded.sum_squares, \
                         top = feedback_counts.top + excluded.top, \
                         bottom = feedback_counts.bottom + excluded.bottom",
                    );
                    q.build().execute(&mut **tx).await?;
                }
                Ok(())
            }
        }
    };
}

feedback_writes!(PgMeasurementStore, sqlx::Postgres);
feedback_writes!(SqliteMeasurementStore, sqlx::Sqlite);
