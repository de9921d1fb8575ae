//! The store, written once for both backends (the shared queries in `graph.rs`, the
//! rarer writes in `changes.rs`): `identity_store!(Store, Database)` expands
//! to the `IdentityStore` implementation. The SQL here runs unchanged on Postgres and
//! SQLite; each backend adds what differs as inherent methods:
//!
//! - `begin(&self)`: a transaction, and on SQLite the process-wide writer lock;
//! - `lock_profiles`: `SELECT … FOR UPDATE` in a fixed order on Postgres;
//! - `seen_events`, `erased_among`, `holders`, `candidates_of` and `write_plan`: the
//!   batch reads and writes (with its entries in identity's log), with arrays on
//!   Postgres and prepared statements in a loop on SQLite;
//! - `log_in`: entries added to identity's log in the transaction;
//! - `resolved(events)`: told after each batch, to keep the planner's statistics;
//! - `scrub_deleted()`: what is left of deleted rows removed, after an erasure;
//! - `hints()`: where identifiers were last seen held (`hints.rs`), on Postgres, where it
//!   spares a lookup per identifier; none on SQLite, whose lookups are in process;
//! - `retries()`: how often a batch is run again after contention (none on SQLite,
//!   where writers take turns).

#[macro_use]
mod changes;
#[macro_use]
mod graph;

macro_rules! identity_store {
    ($Store:ident, $Db:ty) => {
        use super::{
            Applied, CANDIDATE_OBSOLETE, CANDIDATE_PENDING, CANDIDATE_REJECTED, CandidateRecord, Erasure, Hints,
            IdentityStore, Lookup, MatchMerge, MergeRecord, ProfileData, RecentEvent, Removed, ReviewRefused,
            NEWER_CONSENT, NEWER_TRAIT, SideSummary, UnmergeRefused, Unmerged, decode_identifiers, digest, identifier,
            is_contention, micros,
            rule_code, rule_of, time,
        };
        use crate::domain::batch::{
            ConsentChange, ConsentRow, FastMap, FastSet, IncomingEvent, Loaded, TraitRow, matched_merge, may_merge, plan,
        };
        use crate::domain::resolution::{
            Candidate, EventId, EventIdentity, Evidence, EvidenceKind, HeldIdentifier, Identifier, IdentityRules,
            ProfileId, unmerge,
        };

        graph_sql!($Db);
        changes_sql!($Store);

        #[async_trait]
        impl IdentityStore for $Store {
            async fn ping(&self) -> Result<(), StorageError> {
                sqlx::query("SELECT 1 FROM profiles LIMIT 1").execute(&self.pool).await?;
                Ok(())
            }

            async fn resolve(
                &self,
                ws: &WorkspaceId,
                events: &[IncomingEvent],
                rules: &IdentityRules,
            ) -> Result<Applied, StorageError> {
                let mut attempt = 0;
                loop {
                    // Guesses are made on the first attempt only (see `load_batch`): a wrong
                    // one has sent the batch round again.
                    match self.resolve_once(ws, events, rules, attempt == 0).await {
                        Err(ResolveError::Sql(err)) if is_contention(&err) && attempt < self.retries() => {}
                        Err(ResolveError::Moved) if attempt < self.retries() => {}
                        Err(ResolveError::Moved) => {
                            return Err(StorageError::Unavailable(
                                "the profiles of this batch kept changing under it; try again".to_owned(),
                            ));
                        }
                        Err(ResolveError::Sql(err)) => return Err(err.into()),
                        Err(ResolveError::Storage(err)) => return Err(err),
                        Ok(applied) => return Ok(applied),
                    }
                    attempt += 1;
                    // Back off a little, differently per writer, so that contenders interleave.
                    let pause = 1 + (attempt as u64 * 7 + u64::from(uuid::Uuid::new_v4().as_bytes()[0])) % 20;
                    tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
                }
            }

            async fn scrub(&self) -> Result<(), StorageError> {
                self.scrub_deleted().await
            }

            async fn lookup(&self, ws: &WorkspaceId, profile: ProfileId) -> Result<Lookup, StorageError> {
                let mut conn = self.pool.acquire().await?;
                let row: Option<(i64, i64, i64, i64, i64, i64, Option<ProfileId>, Option<i64>)> = sqlx::query_as(
                    "SELECT created_at, updated_at, first_seen, last_seen, event_count, version, merged_into, erased_at \
                     FROM profiles WHERE workspace_id = $1 AND profile_id = $2",
                )
                .bind(ws)
                .bind(profile)
                .fetch_optional(&mut *conn)
                .await?;
                let Some((created, updated, first, last, event_count, version, merged_into, erased)) = row else {
                    return Ok(Lookup::Missing);
                };
                if erased.is_some() {
                    return Ok(Lookup::Erased { version });
                }
                if let Some(into) = merged_into {
                    return Ok(Lookup::Merged { into, version });
                }
                let conn = &mut *conn;
                let absorbed = absorbed(conn, ws, profile).await?;
                let identifiers = held(conn, ws, profile).await?;
                let traits: Vec<(String, String, i64, EventId)> = sqlx::query_as(
                    "SELECT name, value, set_at, event_id FROM traits WHERE workspace_id = $1 AND profile_id = $2 \
                     ORDER BY name",
                )
                .bind(ws)
                .bind(profile)
                .fetch_all(&mut *conn)
                .await?;
                let consents: Vec<(String, i16, bool, i64, EventId)> = sqlx::query_as(
                    "SELECT purpose, channel, granted, set_at, event_id FROM consents \
                     WHERE workspace_id = $1 AND profile_id = $2 ORDER BY purpose, channel",
                )
                .bind(ws)
                .bind(profile)
                .fetch_all(&mut *conn)
                .await?;
                // Counted from the events when the profile is read (and cached), rather than
                // kept up to date with a row written for every event.
                let counts: Vec<(i16, i16, i64)> = sqlx::query_as(
                    "SELECT channel, event_type, COUNT(*) FROM profile_events WHERE workspace_id = $1 AND profile_id = $2 \
                     GROUP BY channel, event_type ORDER BY channel, event_type",
                )
                .bind(ws)
                .bind(profile)
                .fetch_all(&mut *conn)
                .await?;
                let recent: Vec<(EventId, i64, i16, i16, String)> = sqlx::query_as(
                    "SELECT event_id, at, event_type, channel, name FROM profile_events \
                     WHERE workspace_id = $1 AND profile_id = $2 ORDER BY at DESC, event_id DESC LIMIT 20",
                )
                .bind(ws)
                .bind(profile)
                .fetch_all(&mut *conn)
                .await?;
                let members: Vec<ProfileId> = std::iter::once(profile).chain(absorbed.iter().copied()).collect();
                let mut merges: Vec<MergeRecord> = evidence_of_members(conn, ws, &members, true)
                    .await?
                    .into_iter()
                    .rev()
                    .filter_map(|(id, e, undone)| merge_record(id, e, undone))
                    .collect();
                merges.truncate(20);
                Ok(Lookup::Live(Box::new(ProfileData {
                    profile,
                    created_at: time(created),
                    updated_at: time(updated),
                    first_seen: time(first),
                    last_seen: time(last),
                    event_count,
                    version,
                    absorbed,
                    identifiers,
                    traits: traits
                        .into_iter()
                        .map(|(name, value, set_at, event)| TraitRow {
                            profile,
                            name,
                            value: serde_json::from_str(&value).unwrap_or(serde_json::Value::Null),
                            set_at: time(set_at),
                            event,
                        })
                        .collect(),
                    consents: consents
                        .into_iter()
                        .map(|(purpose, channel, granted, set_at, event)| ConsentRow {
                            profile,
                            change: ConsentChange {
                                purpose,
                                channel,
                                granted,
                            },
                            set_at: time(set_at),
                            event,
                        })
                        .collect(),
                    counts,
                    recent: recent
                        .into_iter()
                        .map(|(event, at, event_type, channel, name)| RecentEvent {
                            event,
                            at: time(at),
                            event_type,
                            channel,
                            name,
                        })
                        .collect(),
                    merges,
                })))
            }

            async fn holder(&self, ws: &WorkspaceId, identifier: &Identifier) -> Result<Option<ProfileId>, StorageError> {
                let row: Option<(ProfileId,)> = sqlx::query_as(
                    "SELECT profile_id FROM identifiers WHERE workspace_id = $1 AND kind = $2 AND value = $3",
                )
                .bind(ws)
                .bind(identifier.kind.as_str())
                .bind(&identifier.value)
                .fetch_optional(&self.pool)
                .await?;
                Ok(row.map(|r| r.0))
            }

            async fn profile_ids(
                &self,
                ws: &WorkspaceId,
                after: Option<ProfileId>,
                limit: u32,
            ) -> Result<Vec<ProfileId>, StorageError> {
                let rows: Vec<(ProfileId,)> = sqlx::query_as(
                    "SELECT profile_id FROM profiles WHERE workspace_id = $1 AND profile_id > $2 \
                     AND merged_into IS NULL AND erased_at IS NULL ORDER BY profile_id LIMIT $3",
                )
                .bind(ws)
                .bind(after.unwrap_or_else(|| ProfileId::from(uuid::Uuid::nil())))
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?;
                Ok(rows.into_iter().map(|r| r.0).collect())
            }

            async fn merges(
                &self,
                ws: &WorkspaceId,
                profile: ProfileId,
                before: Option<i64>,
                limit: u32,
            ) -> Result<Vec<MergeRecord>, StorageError> {
                let mut conn = self.pool.acquire().await?;
                let members: Vec<ProfileId> =
                    std::iter::once(profile).chain(absorbed(&mut conn, ws, profile).await?).collect();
                Ok(evidence_of_members(&mut conn, ws, &members, true)
                    .await?
                    .into_iter()
                    .rev()
                    .filter(|(id, _, _)| before.is_none_or(|before| *id < before))
                    .filter_map(|(id, e, undone)| merge_record(id, e, undone))
                    .take(limit as usize)
                    .collect())
            }

            async fn unmerge(
                &self,
                ws: &WorkspaceId,
                merge: i64,
                rules: &IdentityRules,
            ) -> Result<Result<Unmerged, UnmergeRefused>, StorageError> {
                unmerge_in(self, ws, merge, rules).await
            }

            async fn forget(
                &self,
                ws: &WorkspaceId,
                profile: ProfileId,
                block_identifiers: bool,
                receipt: &(dyn for<'r> Fn(&'r Removed) -> Vec<u8> + Sync),
            ) -> Result<Option<Erasure>, StorageError> {
                forget_in(self, ws, profile, block_identifiers, receipt).await
            }

            async fn erasure_receipt(
                &self,
                ws: &WorkspaceId,
                profile: ProfileId,
            ) -> Result<Option<(Vec<u8>, Vec<(String, String, String)>)>, StorageError> {
                let mut conn = self.pool.acquire().await?;
                let root = current_root(&mut conn, ws, profile).await?.map_or(profile, |r| r.0);
                let receipt: Option<(Vec<u8>,)> =
                    sqlx::query_as("SELECT receipt FROM erasures WHERE workspace_id = $1 AND profile_id = $2")
                        .bind(ws)
                        .bind(root)
                        .fetch_optional(&mut *conn)
                        .await?;
                let Some((receipt,)) = receipt else {
                    return Ok(None);
                };
                let answers: Vec<(String, String, String)> = sqlx::query_as(
                    "SELECT consumer, store, removed FROM erasure_answers \
                     WHERE workspace_id = $1 AND profile_id = $2 ORDER BY consumer",
                )
                .bind(ws)
                .bind(root)
                .fetch_all(&mut *conn)
                .await?;
                Ok(Some((receipt, answers)))
            }

            async fn erasure_answered(
                &self,
                ws: &WorkspaceId,
                profile: ProfileId,
                consumer: &str,
                store: &str,
                removed: &str,
            ) -> Result<(), StorageError> {
                sqlx::query(
                    "INSERT INTO erasure_answers (workspace_id, profile_id, consumer, store, removed) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (workspace_id, profile_id, consumer) DO NOTHING",
                )
                .bind(ws)
                .bind(profile)
                .bind(consumer)
                .bind(store)
                .bind(removed)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn erasure_done(&self, ws: &WorkspaceId, profile: ProfileId, receipt: &[u8]) -> Result<(), StorageError> {
                let (_guard, mut tx) = self.begin().await?;
                let root = current_root(&mut tx, ws, profile).await?.map_or(profile, |r| r.0);
                sqlx::query("UPDATE erasures SET receipt = $3, pending = NULL WHERE workspace_id = $1 AND profile_id = $2")
                    .bind(ws)
                    .bind(root)
                    .bind(receipt)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn trait_records(
                &self,
                ws: &WorkspaceId,
                traits: &[String],
            ) -> Result<Vec<(ProfileId, Vec<Option<String>>)>, StorageError> {
                let rows: Vec<(ProfileId, String, String)> = sqlx::query_as(
                    "SELECT profile_id, name, value FROM traits WHERE workspace_id = $1 ORDER BY profile_id",
                )
                .bind(ws)
                .fetch_all(&self.pool)
                .await?;
                let mut records: Vec<(ProfileId, Vec<Option<String>>)> = Vec::new();
                for (profile, name, value) in rows {
                    let Some(field) = traits.iter().position(|t| *t == name) else {
                        continue;
                    };
                    if records.last().is_none_or(|r| r.0 != profile) {
                        records.push((profile, vec![None; traits.len()]));
                    }
                    let text = match serde_json::from_str(&value) {
                        Ok(serde_json::Value::String(s)) => s,
                        Ok(serde_json::Value::Null) | Err(_) => continue,
                        Ok(other) => other.to_string(),
                    };
                    if let Some(record) = records.last_mut() {
                        record.1[field] = Some(text);
                    }
                }
                Ok(records)
            }

            async fn merge_matches(
                &self,
                ws: &WorkspaceId,
                merges: &[MatchMerge],
                rules: &IdentityRules,
            ) -> Result<(Vec<MergeRecord>, Vec<(ProfileId, i64)>), StorageError> {
                merge_matches_in(self, ws, merges, rules).await
            }

            async fn propose(&self, ws: &WorkspaceId, candidates: &[CandidateRecord]) -> Result<u64, StorageError> {
                let (_guard, mut tx) = self.begin().await?;
                sqlx::query("DELETE FROM match_candidates WHERE workspace_id = $1 AND status = $2")
                    .bind(ws)
                    .bind(CANDIDATE_PENDING)
                    .execute(&mut *tx)
                    .await?;
                let mut proposed = 0;
                for c in candidates {
                    proposed += sqlx::query(&format!(
                        "INSERT INTO match_candidates ({CANDIDATE_COLUMNS}, workspace_id) \
                         SELECT $1, $2, $3, $4, $5, $6, $7, $8 WHERE NOT EXISTS ( \
                           SELECT 1 FROM match_candidates WHERE workspace_id = $8 AND status = {CANDIDATE_REJECTED} \
                           AND ((profile_a = $2 AND profile_b = $3) OR (profile_a = $3 AND profile_b = $2)))"
                    ))
                    .bind(c.id)
                    .bind(c.a)
                    .bind(c.b)
                    .bind(c.probability)
                    .bind(&c.levels)
                    .bind(CANDIDATE_PENDING)
                    .bind(micros(c.proposed_at))
                    .bind(ws)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                }
                tx.commit().await?;
                Ok(proposed)
            }

            async fn candidates(
                &self,
                ws: &WorkspaceId,
                status: i16,
                after: Option<(f64, uuid::Uuid)>,
                limit: u32,
            ) -> Result<Vec<CandidateRecord>, StorageError> {
                let (probability, id) = after.unwrap_or((f64::INFINITY, uuid::Uuid::nil()));
                let rows: Vec<CandidateRow> = sqlx::query_as(&format!(
                    "SELECT {CANDIDATE_COLUMNS} FROM match_candidates WHERE workspace_id = $1 AND status = $2 \
                     AND (probability < $3 OR (probability = $3 AND candidate_id > $4)) \
                     ORDER BY probability DESC, candidate_id LIMIT $5"
                ))
                .bind(ws)
                .bind(status)
                .bind(probability)
                .bind(id)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?;
                Ok(rows.into_iter().map(candidate_record).collect())
            }

            async fn candidate(&self, ws: &WorkspaceId, id: uuid::Uuid) -> Result<Option<CandidateRecord>, StorageError> {
                let row: Option<CandidateRow> = sqlx::query_as(&format!(
                    "SELECT {CANDIDATE_COLUMNS} FROM match_candidates WHERE workspace_id = $1 AND candidate_id = $2"
                ))
                .bind(ws)
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
                Ok(row.map(candidate_record))
            }

            async fn set_candidate_status(
                &self,
                ws: &WorkspaceId,
                id: uuid::Uuid,
                status: i16,
            ) -> Result<Result<CandidateRecord, ReviewRefused>, StorageError> {
                let row: Option<CandidateRow> = sqlx::query_as(&format!(
                    "UPDATE match_candidates SET status = $3, reviewed_at = $4 \
                     WHERE workspace_id = $1 AND candidate_id = $2 AND status = $5 RETURNING {CANDIDATE_COLUMNS}"
                ))
                .bind(ws)
                .bind(id)
                .bind(status)
                .bind(micros(Utc::now()))
                .bind(CANDIDATE_PENDING)
                .fetch_optional(&self.pool)
                .await?;
                Ok(match row {
                    Some(row) => Ok(candidate_record(row)),
                    None if self.candidate(ws, id).await?.is_some() => Err(ReviewRefused::NotPending(id)),
                    None => Err(ReviewRefused::NotFound(id)),
                })
            }
        }

        impl $Store {
            /// Whether the workspace has erased anyone's identifiers.
            async fn any_erased(conn: &mut Conn, ws: &WorkspaceId) -> Result<bool, sqlx::Error> {
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM erased_identifiers WHERE workspace_id = $1)")
                    .bind(ws)
                    .fetch_one(&mut *conn)
                    .await
            }

            /// One attempt at a batch: load and lock, plan, write, commit; then remember
            /// where the batch left every identifier it saw.
            async fn resolve_once(
                &self,
                ws: &WorkspaceId,
                events: &[IncomingEvent],
                rules: &IdentityRules,
                first_attempt: bool,
            ) -> Result<Applied, ResolveError> {
                let (_guard, mut tx) = self.begin().await?;
                let hints = self.hints();
                let loaded = self.load_batch(&mut tx, ws, events, first_attempt).await?;
                let held: Vec<(u64, ProfileId)> = match hints {
                    Some(hints) => loaded
                        .candidates
                        .iter()
                        .flat_map(|c| c.identifiers.iter().map(|h| (hints.key(ws, &h.identifier), c.profile)))
                        .collect(),
                    None => Vec::new(),
                };
                let plan = plan(events, loaded, rules, Utc::now(), ProfileId::new);
                // The batch's entries in identity's log with its writes, last (see `log_in`).
                let versions = self.write_plan(&mut tx, ws, &plan, &crate::log::of_plan(ws, &plan)).await?;
                tx.commit().await?;
                self.resolved(events.len());
                if let Some(hints) = hints {
                    let merged: FastMap<ProfileId, ProfileId> = plan.merges.iter().copied().collect();
                    let moved = held.into_iter().map(|(key, p)| (key, merged.get(&p).copied().unwrap_or(p)));
                    let new = plan.identifiers.iter().map(|(i, p, _)| (hints.key(ws, i), *p));
                    hints.learn(moved.chain(new));
                }
                Ok(Applied {
                    outcomes: plan.outcomes,
                    versions,
                })
            }

            /// Locks the live profiles holding the batch's identifiers and loads them with
            /// what they hold, read under the locks. An identifier a concurrent writer moved
            /// between the first read and the locks is then held by none of them: the batch
            /// takes it for new, and its insert, meeting the primary key, starts the batch
            /// over. A locked profile merged or erased meanwhile starts it over too.
            ///
            /// A backend that can run a batch again guesses on the first attempt, and looks
            /// on the next: it takes every event for new (a redelivered one then breaks
            /// the primary key of `profile_events`), and locks the profiles the hints
            /// (`hints.rs`) name without looking those identifiers up, starting over if
            /// the locked profiles do not bear a hint out.
            async fn load_batch(
                &self,
                conn: &mut Conn,
                ws: &WorkspaceId,
                events: &[IncomingEvent],
                first_attempt: bool,
            ) -> Result<Loaded, ResolveError> {
                let guess = first_attempt && self.retries() > 0;
                let hints = self.hints().filter(|_| guess);
                let mut unique = FastSet::default();
                let identifiers: Vec<&Identifier> = events
                    .iter()
                    .flat_map(|e| &e.identity.identifiers)
                    .filter(|i| unique.insert(*i))
                    .collect();
                let seen = if guess {
                    Default::default()
                } else {
                    let event_ids: Vec<EventId> = events.iter().map(|e| e.identity.event).collect();
                    Self::seen_events(conn, ws, &event_ids).await?
                };
                let guesses = match hints {
                    Some(hints) => hints.get(&identifiers.iter().map(|i| hints.key(ws, i)).collect::<Vec<_>>()),
                    None => vec![None; identifiers.len()],
                };
                let (mut hinted, mut unknown) = (Vec::new(), Vec::new());
                for (identifier, guess) in identifiers.iter().zip(guesses) {
                    match guess {
                        Some(profile) => hinted.push((*identifier, profile)),
                        None => unknown.push(*identifier),
                    }
                }
                // Most workspaces have erased no one: one probe (with the holders, where
                // there are identifiers to look up) then spares one per identifier (and
                // its digest).
                let (mut profiles, any_erased) = if unknown.is_empty() {
                    (Vec::new(), Self::any_erased(conn, ws).await?)
                } else {
                    Self::holders(conn, ws, &unknown).await?
                };
                let erased = if any_erased {
                    Self::erased_among(conn, ws, &identifiers).await?
                } else {
                    Default::default()
                };
                profiles.extend(hinted.iter().map(|h| h.1));
                profiles.sort();
                profiles.dedup();
                let rows = Self::lock_profiles(conn, ws, &profiles).await?;
                if rows.len() != profiles.len() || rows.iter().any(|r| r.2.is_some() || r.3.is_some()) {
                    return Err(ResolveError::Moved);
                }
                let candidates = Self::candidates_of(conn, ws, &rows).await?;
                if !hinted.is_empty() {
                    let holder: FastMap<&Identifier, ProfileId> = candidates
                        .iter()
                        .flat_map(|c| c.identifiers.iter().map(|h| (&h.identifier, c.profile)))
                        .collect();
                    if hinted.iter().any(|(identifier, profile)| holder.get(identifier) != Some(profile)) {
                        return Err(ResolveError::Moved);
                    }
                }
                Ok(Loaded {
                    seen,
                    erased,
                    candidates,
                })
            }
        }

        #[derive(Debug)]
        enum ResolveError {
            Sql(sqlx::Error),
            Storage(StorageError),
            /// A profile of the batch was merged or erased between reading and locking.
            Moved,
        }

        impl From<sqlx::Error> for ResolveError {
            fn from(err: sqlx::Error) -> Self {
                Self::Sql(err)
            }
        }

        impl From<StorageError> for ResolveError {
            fn from(err: StorageError) -> Self {
                Self::Storage(err)
            }
        }

    };
}
