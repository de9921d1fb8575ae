//! The store, written once for both backends: `identity_store!(Store, Database)` expands
//! to the `IdentityStore` implementation. The SQL here runs unchanged on Postgres and
//! SQLite; each backend adds what differs as inherent methods:
//!
//! - `begin(&self)`: a transaction, and on SQLite the process-wide writer lock;
//! - `lock_profiles`: `SELECT … FOR UPDATE` in a fixed order on Postgres;
//! - `load_batch` and `write_plan`: the batch reads and writes, with arrays on Postgres
//!   and prepared statements in a loop on SQLite;
//! - `retries()`: how often a batch is run again after contention (none on SQLite,
//!   where writers take turns).

macro_rules! identity_store {
    ($Store:ident, $Db:ty) => {
        type Conn = <$Db as sqlx::Database>::Connection;

        /// `(profile, created_at, merged_into, erased_at)`.
        type ProfileRow = (ProfileId, i64, Option<ProfileId>, Option<i64>);

        /// What an id currently names: itself, the profile it was merged into, or nothing.
        async fn current_root(
            conn: &mut Conn,
            ws: &WorkspaceId,
            profile: ProfileId,
        ) -> Result<Option<(ProfileId, bool)>, sqlx::Error> {
            let row: Option<(ProfileId, Option<ProfileId>, Option<i64>)> = sqlx::query_as(
                "SELECT profile_id, merged_into, erased_at FROM profiles WHERE workspace_id = $1 AND profile_id = $2",
            )
            .bind(ws)
            .bind(profile)
            .fetch_optional(&mut *conn)
            .await?;
            Ok(row.map(|(id, into, erased)| (into.unwrap_or(id), erased.is_some())))
        }

        async fn absorbed(conn: &mut Conn, ws: &WorkspaceId, profile: ProfileId) -> Result<Vec<ProfileId>, sqlx::Error> {
            let rows: Vec<(ProfileId,)> = sqlx::query_as(
                "SELECT profile_id FROM profiles WHERE workspace_id = $1 AND merged_into = $2 ORDER BY profile_id",
            )
            .bind(ws)
            .bind(profile)
            .fetch_all(&mut *conn)
            .await?;
            Ok(rows.into_iter().map(|r| r.0).collect())
        }

        async fn held(
            conn: &mut Conn,
            ws: &WorkspaceId,
            profile: ProfileId,
        ) -> Result<Vec<(Identifier, DateTime<Utc>)>, StorageError> {
            let rows: Vec<(String, String, i64)> = sqlx::query_as(
                "SELECT kind, value, first_seen FROM identifiers WHERE workspace_id = $1 AND profile_id = $2",
            )
            .bind(ws)
            .bind(profile)
            .fetch_all(&mut *conn)
            .await?;
            rows.into_iter()
                .map(|(kind, value, first)| Ok((identifier(kind, value)?, time(first))))
                .collect()
        }

        async fn candidate(conn: &mut Conn, ws: &WorkspaceId, row: &ProfileRow) -> Result<Candidate, StorageError> {
            let identifiers = held(conn, ws, row.0).await?;
            Ok(Candidate {
                profile: row.0,
                created_at: time(row.1),
                identifiers: identifiers
                    .into_iter()
                    .map(|(identifier, first_seen)| HeldIdentifier { identifier, first_seen })
                    .collect(),
            })
        }

        type EvidenceRow = (
            i64,
            i16,
            ProfileId,
            Option<ProfileId>,
            String,
            String,
            Option<String>,
            Option<String>,
            Option<EventId>,
            i16,
            f64,
            i64,
            Option<i64>,
        );

        const EVIDENCE_COLUMNS: &str = "id, kind, profile_id, other_id, identifier_kind, identifier_value, \
             via_kind, via_value, event_id, rule, confidence, at, undone_at";

        fn evidence_of(row: EvidenceRow) -> Result<(i64, Evidence, Option<i64>), StorageError> {
            let (id, kind, profile, other, ikind, ivalue, vkind, vvalue, event, rule, confidence, at, undone) = row;
            let identifier = identifier(ikind, ivalue)?;
            let via = match (vkind, vvalue) {
                (Some(kind), Some(value)) => Some(crate::storage::identifier(kind, value)?),
                _ => None,
            };
            let kind = match (kind, other, via) {
                (2, Some(merged), Some(merged_via)) => EvidenceKind::Merge {
                    survivor: profile,
                    merged,
                    survivor_via: identifier,
                    merged_via,
                },
                (1, _, via) => EvidenceKind::Link { profile, identifier, via },
                _ => return Err(StorageError::Internal(format!("evidence {id} is malformed"))),
            };
            let evidence = Evidence {
                event,
                at: time(at),
                rule: rule_of(rule),
                confidence,
                kind,
            };
            Ok((id, evidence, undone))
        }

        fn merge_record(id: i64, evidence: Evidence, undone: Option<i64>) -> Option<MergeRecord> {
            let EvidenceKind::Merge {
                survivor,
                merged,
                survivor_via,
                merged_via,
            } = evidence.kind
            else {
                return None;
            };
            Some(MergeRecord {
                id,
                survivor,
                merged,
                event: evidence.event,
                rule: evidence.rule,
                confidence: evidence.confidence,
                survivor_via,
                merged_via,
                at: evidence.at,
                undone_at: undone.map(time),
            })
        }

        /// Every evidence record naming one of `members`, in the order recorded.
        async fn evidence_of_members(
            conn: &mut Conn,
            ws: &WorkspaceId,
            members: &[ProfileId],
            merges_only: bool,
        ) -> Result<Vec<(i64, Evidence, Option<i64>)>, StorageError> {
            // Two index lookups rather than one OR, which SQLite would answer by scanning
            // the workspace's evidence.
            let kind = if merges_only { " AND kind = 2" } else { "" };
            let by_profile =
                format!("SELECT {EVIDENCE_COLUMNS} FROM evidence WHERE workspace_id = $1 AND profile_id = $2{kind}");
            let by_other =
                format!("SELECT {EVIDENCE_COLUMNS} FROM evidence WHERE workspace_id = $1 AND other_id = $2{kind}");
            let mut records = std::collections::BTreeMap::new();
            for member in members {
                for sql in [&by_profile, &by_other] {
                    let rows: Vec<EvidenceRow> = sqlx::query_as(sql).bind(ws).bind(*member).fetch_all(&mut *conn).await?;
                    for row in rows {
                        let record = evidence_of(row)?;
                        records.insert(record.0, record);
                    }
                }
            }
            Ok(records.into_values().collect())
        }

        async fn insert_evidence(conn: &mut Conn, ws: &WorkspaceId, evidence: &Evidence) -> Result<i64, sqlx::Error> {
            let (kind, profile, other, identifier, via) = match &evidence.kind {
                EvidenceKind::Link { profile, identifier, via } => (1i16, *profile, None, identifier, via.as_ref()),
                EvidenceKind::Merge {
                    survivor,
                    merged,
                    survivor_via,
                    merged_via,
                } => (2, *survivor, Some(*merged), survivor_via, Some(merged_via)),
            };
            let (id,): (i64,) = sqlx::query_as(
                "INSERT INTO evidence (workspace_id, kind, profile_id, other_id, identifier_kind, identifier_value, \
                 via_kind, via_value, event_id, rule, confidence, at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING id",
            )
            .bind(ws)
            .bind(kind)
            .bind(profile)
            .bind(other)
            .bind(identifier.kind.as_str())
            .bind(&identifier.value)
            .bind(via.map(|v| v.kind.as_str()))
            .bind(via.map(|v| v.value.as_str()))
            .bind(evidence.event)
            .bind(rule_code(evidence.rule))
            .bind(evidence.confidence)
            .bind(micros(evidence.at))
            .fetch_one(&mut *conn)
            .await?;
            Ok(id)
        }

        /// Folds `from` into `into`: identifiers, events, counts, traits (newest wins) and
        /// consents move; `from` and whatever it had absorbed redirect to `into`. Returns
        /// the versions of every profile row changed (`into`'s included).
        async fn move_profile(
            conn: &mut Conn,
            ws: &WorkspaceId,
            from: ProfileId,
            into: ProfileId,
            now: i64,
        ) -> Result<Vec<(ProfileId, i64)>, sqlx::Error> {
            for sql in [
                "UPDATE identifiers SET profile_id = $3 WHERE workspace_id = $1 AND profile_id = $2",
                "UPDATE profile_events SET profile_id = $3 WHERE workspace_id = $1 AND profile_id = $2",
                "INSERT INTO event_counts (workspace_id, profile_id, channel, event_type, n) \
                 SELECT workspace_id, $3, channel, event_type, n FROM event_counts \
                 WHERE workspace_id = $1 AND profile_id = $2 \
                 ON CONFLICT (workspace_id, profile_id, channel, event_type) DO UPDATE SET n = event_counts.n + excluded.n",
                "INSERT INTO traits (workspace_id, profile_id, name, value, set_at, event_id) \
                 SELECT workspace_id, $3, name, value, set_at, event_id FROM traits \
                 WHERE workspace_id = $1 AND profile_id = $2 \
                 ON CONFLICT (workspace_id, profile_id, name) DO UPDATE \
                 SET value = excluded.value, set_at = excluded.set_at, event_id = excluded.event_id \
                 WHERE excluded.set_at > traits.set_at \
                    OR (excluded.set_at = traits.set_at AND excluded.event_id > traits.event_id)",
                "INSERT INTO consents (workspace_id, profile_id, purpose, channel, granted, set_at, event_id) \
                 SELECT workspace_id, $3, purpose, channel, granted, set_at, event_id FROM consents \
                 WHERE workspace_id = $1 AND profile_id = $2 \
                 ON CONFLICT (workspace_id, profile_id, purpose, channel) DO UPDATE \
                 SET granted = excluded.granted, set_at = excluded.set_at, event_id = excluded.event_id \
                 WHERE excluded.set_at > consents.set_at \
                    OR (excluded.set_at = consents.set_at AND excluded.event_id > consents.event_id)",
            ] {
                sqlx::query(sql).bind(ws).bind(from).bind(into).execute(&mut *conn).await?;
            }
            for table in ["event_counts", "traits", "consents"] {
                sqlx::query(&format!("DELETE FROM {table} WHERE workspace_id = $1 AND profile_id = $2"))
                    .bind(ws)
                    .bind(from)
                    .execute(&mut *conn)
                    .await?;
            }
            let (first, last, count): (i64, i64, i64) = sqlx::query_as(
                "SELECT first_seen, last_seen, event_count FROM profiles WHERE workspace_id = $1 AND profile_id = $2",
            )
            .bind(ws)
            .bind(from)
            .fetch_one(&mut *conn)
            .await?;
            // Two statements, each on its index: with an OR, Postgres scans the table.
            let mut versions = Vec::new();
            for by in ["profile_id", "merged_into"] {
                let moved: Vec<(ProfileId, i64)> = sqlx::query_as(&format!(
                    "UPDATE profiles SET merged_into = $3, version = version + 1, updated_at = $4 \
                     WHERE workspace_id = $1 AND {by} = $2 RETURNING profile_id, version"
                ))
                .bind(ws)
                .bind(from)
                .bind(into)
                .bind(now)
                .fetch_all(&mut *conn)
                .await?;
                versions.extend(moved);
            }
            let survivor: (i64, i64) = sqlx::query_as(
                "SELECT first_seen, last_seen FROM profiles WHERE workspace_id = $1 AND profile_id = $2",
            )
            .bind(ws)
            .bind(into)
            .fetch_one(&mut *conn)
            .await?;
            let (first, last) = if count > 0 {
                (first.min(survivor.0), last.max(survivor.1))
            } else {
                survivor
            };
            let version: (ProfileId, i64) = sqlx::query_as(
                "UPDATE profiles SET first_seen = $3, last_seen = $4, event_count = event_count + $5, \
                 version = version + 1, updated_at = $6 WHERE workspace_id = $1 AND profile_id = $2 \
                 RETURNING profile_id, version",
            )
            .bind(ws)
            .bind(into)
            .bind(first)
            .bind(last)
            .bind(count)
            .bind(now)
            .fetch_one(&mut *conn)
            .await?;
            versions.push(version);
            Ok(versions)
        }

        /// Rebuilds a profile's counts, traits, consents and seen times from its events
        /// (after an unmerge moved events between profiles).
        async fn rebuild(
            conn: &mut Conn,
            ws: &WorkspaceId,
            profile: ProfileId,
            now: i64,
        ) -> Result<(i64, u64), StorageError> {
            for sql in [
                "DELETE FROM event_counts WHERE workspace_id = $1 AND profile_id = $2",
                "DELETE FROM traits WHERE workspace_id = $1 AND profile_id = $2",
                "DELETE FROM consents WHERE workspace_id = $1 AND profile_id = $2",
            ] {
                sqlx::query(sql).bind(ws).bind(profile).execute(&mut *conn).await?;
            }
            sqlx::query(
                "INSERT INTO event_counts (workspace_id, profile_id, channel, event_type, n) \
                 SELECT workspace_id, profile_id, channel, event_type, COUNT(*) FROM profile_events \
                 WHERE workspace_id = $1 AND profile_id = $2 GROUP BY workspace_id, profile_id, channel, event_type",
            )
            .bind(ws)
            .bind(profile)
            .execute(&mut *conn)
            .await?;
            let rows: Vec<(EventId, i64, Option<String>, Option<String>)> = sqlx::query_as(
                "SELECT event_id, at, traits, consents FROM profile_events \
                 WHERE workspace_id = $1 AND profile_id = $2 ORDER BY at, event_id",
            )
            .bind(ws)
            .bind(profile)
            .fetch_all(&mut *conn)
            .await?;
            // In time order, so the last write of each is the newest.
            let mut traits = std::collections::BTreeMap::new();
            let mut consents = std::collections::BTreeMap::new();
            for (event, at, t, c) in &rows {
                if let Some(serde_json::Value::Object(map)) = t.as_deref().and_then(|t| serde_json::from_str(t).ok()) {
                    for (name, value) in map {
                        traits.insert(name, (value, *at, *event));
                    }
                }
                let changes: Vec<ConsentChange> =
                    c.as_deref().and_then(|c| serde_json::from_str(c).ok()).unwrap_or_default();
                for change in changes {
                    consents.insert((change.purpose.clone(), change.channel), (change.granted, *at, *event));
                }
            }
            for (name, (value, at, event)) in traits {
                sqlx::query(
                    "INSERT INTO traits (workspace_id, profile_id, name, value, set_at, event_id) \
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(ws)
                .bind(profile)
                .bind(name)
                .bind(value.to_string())
                .bind(at)
                .bind(event)
                .execute(&mut *conn)
                .await?;
            }
            for ((purpose, channel), (granted, at, event)) in consents {
                sqlx::query(
                    "INSERT INTO consents (workspace_id, profile_id, purpose, channel, granted, set_at, event_id) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(ws)
                .bind(profile)
                .bind(purpose)
                .bind(channel)
                .bind(granted)
                .bind(at)
                .bind(event)
                .execute(&mut *conn)
                .await?;
            }
            let first = rows.iter().map(|r| r.1).min();
            let last = rows.iter().map(|r| r.1).max();
            let (version,): (i64,) = sqlx::query_as(
                "UPDATE profiles SET merged_into = NULL, first_seen = COALESCE($3, first_seen), \
                 last_seen = COALESCE($4, last_seen), event_count = $5, version = version + 1, updated_at = $6 \
                 WHERE workspace_id = $1 AND profile_id = $2 RETURNING version",
            )
            .bind(ws)
            .bind(profile)
            .bind(first)
            .bind(last)
            .bind(rows.len() as i64)
            .bind(now)
            .fetch_one(&mut *conn)
            .await?;
            Ok((version, rows.len() as u64))
        }

        type CandidateRow = (uuid::Uuid, ProfileId, ProfileId, f64, String, i16, i64);
        const CANDIDATE_COLUMNS: &str = "candidate_id, profile_a, profile_b, probability, levels, status, proposed_at";

        fn candidate_record(row: CandidateRow) -> CandidateRecord {
            let (id, a, b, probability, levels, status, proposed_at) = row;
            CandidateRecord {
                id,
                a,
                b,
                probability,
                levels,
                status,
                proposed_at: time(proposed_at),
            }
        }

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
                    match self.resolve_once(ws, events, rules).await {
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
                let counts: Vec<(i16, i16, i64)> = sqlx::query_as(
                    "SELECT channel, event_type, n FROM event_counts WHERE workspace_id = $1 AND profile_id = $2 \
                     ORDER BY channel, event_type",
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
                let (_guard, mut tx) = self.begin().await?;
                let row: Option<EvidenceRow> =
                    sqlx::query_as(&format!("SELECT {EVIDENCE_COLUMNS} FROM evidence WHERE workspace_id = $1 AND id = $2"))
                        .bind(ws)
                        .bind(merge)
                        .fetch_optional(&mut *tx)
                        .await?;
                let Some((_, evidence, undone)) = row.map(evidence_of).transpose()? else {
                    return Ok(Err(UnmergeRefused::NotFound(merge)));
                };
                let EvidenceKind::Merge { survivor, .. } = evidence.kind else {
                    return Ok(Err(UnmergeRefused::NotFound(merge)));
                };
                if undone.is_some() {
                    return Ok(Err(UnmergeRefused::AlreadyUndone(merge)));
                }
                let root = match current_root(&mut tx, ws, survivor).await? {
                    Some((_, true)) | None => return Ok(Err(UnmergeRefused::Erased(merge))),
                    Some((root, false)) => root,
                };
                Self::lock_profiles(&mut tx, ws, &[root]).await?;
                let members: Vec<ProfileId> = std::iter::once(root).chain(absorbed(&mut tx, ws, root).await?).collect();
                let standing: Vec<(i64, Evidence)> = evidence_of_members(&mut tx, ws, &members, false)
                    .await?
                    .into_iter()
                    .filter(|(_, e, undone)| undone.is_none() || matches!(e.kind, EvidenceKind::Link { .. }))
                    .map(|(id, e, _)| (id, e))
                    .collect();
                let undo = standing.iter().position(|(id, _)| *id == merge).ok_or_else(|| {
                    StorageError::Internal(format!("merge {merge} is not in the history of its profile"))
                })?;
                let history: Vec<Evidence> = standing.into_iter().map(|(_, e)| e).collect();
                let rows: Vec<(EventId, i64, String)> = sqlx::query_as(
                    "SELECT event_id, at, identifiers FROM profile_events WHERE workspace_id = $1 AND profile_id = $2",
                )
                .bind(ws)
                .bind(root)
                .fetch_all(&mut *tx)
                .await?;
                let events: Vec<EventIdentity> = rows
                    .into_iter()
                    .map(|(event, at, identifiers)| EventIdentity {
                        event,
                        at: time(at),
                        identifiers: decode_identifiers(&identifiers),
                        dropped: Vec::new(),
                    })
                    .collect();
                let split = match unmerge(&history, undo, &events, rules) {
                    Ok(split) => split,
                    Err(err) => return Ok(Err(UnmergeRefused::Graph(err.to_string()))),
                };
                let now = micros(Utc::now());
                let mut versions = Vec::new();
                for side in &split.sides {
                    for absorbed in &side.absorbed {
                        let (version,): (i64,) = sqlx::query_as(
                            "UPDATE profiles SET merged_into = $3, version = version + 1 \
                             WHERE workspace_id = $1 AND profile_id = $2 RETURNING version",
                        )
                        .bind(ws)
                        .bind(*absorbed)
                        .bind(side.profile)
                        .fetch_one(&mut *tx)
                        .await?;
                        versions.push((*absorbed, version));
                    }
                    for identifier in &side.identifiers {
                        sqlx::query(
                            "UPDATE identifiers SET profile_id = $4 WHERE workspace_id = $1 AND kind = $2 AND value = $3",
                        )
                        .bind(ws)
                        .bind(identifier.kind.as_str())
                        .bind(&identifier.value)
                        .bind(side.profile)
                        .execute(&mut *tx)
                        .await?;
                    }
                    for event in &side.events {
                        sqlx::query(
                            "UPDATE profile_events SET profile_id = $3 WHERE workspace_id = $1 AND event_id = $2",
                        )
                        .bind(ws)
                        .bind(*event)
                        .bind(side.profile)
                        .execute(&mut *tx)
                        .await?;
                    }
                }
                let first = split.sides.first().map(|s| s.profile).unwrap_or(root);
                for event in &split.unplaced {
                    sqlx::query("UPDATE profile_events SET profile_id = $3 WHERE workspace_id = $1 AND event_id = $2")
                        .bind(ws)
                        .bind(*event)
                        .bind(first)
                        .execute(&mut *tx)
                        .await?;
                }
                let mut sides = Vec::new();
                for side in &split.sides {
                    let (version, events) = rebuild(&mut tx, ws, side.profile, now).await?;
                    versions.push((side.profile, version));
                    sides.push(SideSummary {
                        profile: side.profile,
                        identifiers: held(&mut tx, ws, side.profile).await?,
                        events,
                    });
                    sqlx::query(
                        "UPDATE match_candidates SET status = $3 WHERE workspace_id = $1 AND status = $4 \
                         AND (profile_a = $2 OR profile_b = $2)",
                    )
                    .bind(ws)
                    .bind(side.profile)
                    .bind(CANDIDATE_OBSOLETE)
                    .bind(CANDIDATE_PENDING)
                    .execute(&mut *tx)
                    .await?;
                }
                for side in &mut sides {
                    side.identifiers.sort_by(|a, b| rules.order(&a.0).cmp(&rules.order(&b.0)));
                }
                sqlx::query("UPDATE evidence SET undone_at = $3 WHERE workspace_id = $1 AND id = $2")
                    .bind(ws)
                    .bind(merge)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(Ok(Unmerged { sides, versions }))
            }

            async fn forget(
                &self,
                ws: &WorkspaceId,
                profile: ProfileId,
                block_identifiers: bool,
                receipt: &(dyn for<'r> Fn(&'r Removed) -> Vec<u8> + Sync),
            ) -> Result<Option<Erasure>, StorageError> {
                let (_guard, mut tx) = self.begin().await?;
                let Some((root, _)) = current_root(&mut tx, ws, profile).await? else {
                    return Ok(None);
                };
                let done: Option<(Vec<u8>, Option<String>)> =
                    sqlx::query_as("SELECT receipt, pending FROM erasures WHERE workspace_id = $1 AND profile_id = $2")
                        .bind(ws)
                        .bind(root)
                        .fetch_optional(&mut *tx)
                        .await?;
                if let Some((receipt, pending)) = done {
                    return Ok(Some(Erasure {
                        receipt,
                        pending: pending.map(|p| p.lines().map(str::to_owned).collect()).unwrap_or_default(),
                        already_erased: true,
                        versions: Vec::new(),
                    }));
                }
                Self::lock_profiles(&mut tx, ws, &[root]).await?;
                let absorbed = absorbed(&mut tx, ws, root).await?;
                let members: Vec<ProfileId> = std::iter::once(root).chain(absorbed.iter().copied()).collect();
                let identifiers: Vec<Identifier> = held(&mut tx, ws, root).await?.into_iter().map(|h| h.0).collect();
                let message_ids: Vec<(String,)> = sqlx::query_as(
                    "SELECT message_id FROM profile_events WHERE workspace_id = $1 AND profile_id = $2 ORDER BY event_id",
                )
                .bind(ws)
                .bind(root)
                .fetch_all(&mut *tx)
                .await?;
                let mut removed = Removed {
                    profile: root,
                    absorbed: absorbed.clone(),
                    identifiers,
                    message_ids: message_ids.into_iter().map(|m| m.0).collect(),
                    rows: Vec::new(),
                };
                for (table, sql) in [
                    ("identifiers", "DELETE FROM identifiers WHERE workspace_id = $1 AND profile_id = $2"),
                    ("events", "DELETE FROM profile_events WHERE workspace_id = $1 AND profile_id = $2"),
                    ("traits", "DELETE FROM traits WHERE workspace_id = $1 AND profile_id = $2"),
                    ("consents", "DELETE FROM consents WHERE workspace_id = $1 AND profile_id = $2"),
                    ("event_counts", "DELETE FROM event_counts WHERE workspace_id = $1 AND profile_id = $2"),
                    ("evidence", "DELETE FROM evidence WHERE workspace_id = $1 AND profile_id = $2"),
                    ("evidence", "DELETE FROM evidence WHERE workspace_id = $1 AND other_id = $2"),
                    (
                        "match_candidates",
                        "DELETE FROM match_candidates WHERE workspace_id = $1 AND (profile_a = $2 OR profile_b = $2)",
                    ),
                ] {
                    let mut n = 0;
                    for member in &members {
                        n += sqlx::query(sql).bind(ws).bind(*member).execute(&mut *tx).await?.rows_affected();
                    }
                    match removed.rows.last_mut() {
                        Some((last, count)) if *last == table => *count += n,
                        _ => removed.rows.push((table, n)),
                    }
                }
                let now = micros(Utc::now());
                let mut versions = Vec::new();
                for member in &members {
                    let (version,): (i64,) = sqlx::query_as(
                        "UPDATE profiles SET erased_at = $3, first_seen = 0, last_seen = 0, event_count = 0, \
                         version = version + 1, updated_at = $3 WHERE workspace_id = $1 AND profile_id = $2 \
                         RETURNING version",
                    )
                    .bind(ws)
                    .bind(*member)
                    .bind(now)
                    .fetch_one(&mut *tx)
                    .await?;
                    versions.push((*member, version));
                }
                removed.rows.push(("profiles", members.len() as u64));
                if block_identifiers {
                    for identifier in &removed.identifiers {
                        sqlx::query(
                            "INSERT INTO erased_identifiers (workspace_id, digest, erased_at) VALUES ($1, $2, $3) \
                             ON CONFLICT (workspace_id, digest) DO NOTHING",
                        )
                        .bind(ws)
                        .bind(digest(identifier))
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                    }
                }
                let receipt = receipt(&removed);
                let pending = (!removed.message_ids.is_empty()).then(|| removed.message_ids.join("\n"));
                sqlx::query("INSERT INTO erasures (workspace_id, profile_id, receipt, pending) VALUES ($1, $2, $3, $4)")
                    .bind(ws)
                    .bind(root)
                    .bind(&receipt)
                    .bind(&pending)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(Some(Erasure {
                    receipt,
                    pending: removed.message_ids,
                    already_erased: false,
                    versions,
                }))
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
                let (_guard, mut tx) = self.begin().await?;
                let now = Utc::now();
                let mut made = Vec::new();
                let mut versions = Vec::new();
                for m in merges {
                    let (Some((a, false)), Some((b, false))) =
                        (current_root(&mut tx, ws, m.a).await?, current_root(&mut tx, ws, m.b).await?)
                    else {
                        continue;
                    };
                    if a == b {
                        continue;
                    }
                    let mut rows = Self::lock_profiles(&mut tx, ws, &[a, b]).await?;
                    rows.sort_by_key(|r| r.0 == b);
                    let (Some(ra), Some(rb)) = (rows.first(), rows.get(1)) else {
                        continue;
                    };
                    let (ca, cb) = (candidate(&mut tx, ws, ra).await?, candidate(&mut tx, ws, rb).await?);
                    if !may_merge(&ca, &cb, rules) {
                        continue;
                    }
                    let strength = |c: &Candidate| {
                        let strongest = c.identifiers.iter().map(|h| rules.priority(&h.identifier.kind)).min();
                        (strongest.unwrap_or(u16::MAX), c.created_at, c.profile)
                    };
                    let (survivor, merged) = if strength(&ca) <= strength(&cb) { (&ca, &cb) } else { (&cb, &ca) };
                    let Some(evidence) = matched_merge(survivor, merged, m.rule, m.probability, now, rules) else {
                        continue;
                    };
                    let id = insert_evidence(&mut tx, ws, &evidence).await?;
                    versions.extend(move_profile(&mut tx, ws, merged.profile, survivor.profile, micros(now)).await?);
                    made.extend(merge_record(id, evidence, None));
                }
                tx.commit().await?;
                Ok((made, versions))
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
            /// One attempt at a batch: load and lock, plan, write, commit.
            async fn resolve_once(
                &self,
                ws: &WorkspaceId,
                events: &[IncomingEvent],
                rules: &IdentityRules,
            ) -> Result<Applied, ResolveError> {
                let (_guard, mut tx) = self.begin().await?;
                let loaded = self.load_batch(&mut tx, ws, events).await?;
                let plan = plan(events, loaded, rules, Utc::now(), ProfileId::new);
                let versions = self.write_plan(&mut tx, ws, &plan).await?;
                tx.commit().await?;
                Ok(Applied {
                    outcomes: plan.outcomes,
                    versions,
                })
            }

            /// Locks the live profiles holding the batch's identifiers and loads them. The
            /// holders are read again under the locks: if a concurrent merge moved an
            /// identifier meanwhile, the batch starts over.
            async fn load_batch(&self, conn: &mut Conn, ws: &WorkspaceId, events: &[IncomingEvent]) -> Result<Loaded, ResolveError> {
                let mut identifiers: Vec<&Identifier> =
                    events.iter().flat_map(|e| &e.identity.identifiers).collect();
                identifiers.sort();
                identifiers.dedup();
                let event_ids: Vec<EventId> = events.iter().map(|e| e.identity.event).collect();
                let seen = Self::seen_events(conn, ws, &event_ids).await?;
                let erased = Self::erased_among(conn, ws, &identifiers).await?;
                let holders = Self::holders(conn, ws, &identifiers).await?;
                let mut profiles: Vec<ProfileId> = holders.iter().map(|h| h.1).collect();
                profiles.sort();
                profiles.dedup();
                let rows = Self::lock_profiles(conn, ws, &profiles).await?;
                if rows.len() != profiles.len() || rows.iter().any(|r| r.2.is_some() || r.3.is_some()) {
                    return Err(ResolveError::Moved);
                }
                if Self::holders(conn, ws, &identifiers).await? != holders {
                    return Err(ResolveError::Moved);
                }
                let candidates = Self::candidates_of(conn, ws, &rows).await?;
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
