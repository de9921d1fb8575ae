//! The queries every operation of the store shares: what an id names, what a profile
//! holds, the evidence log, folding one profile into another and rebuilding one from its
//! events. Expanded by `identity_store!` for each backend.

macro_rules! graph_sql {
    ($Db:ty) => {
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

        async fn absorbed(
            conn: &mut Conn,
            ws: &WorkspaceId,
            profile: ProfileId,
        ) -> Result<Vec<ProfileId>, sqlx::Error> {
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
                    .map(|(identifier, first_seen)| HeldIdentifier {
                        identifier,
                        first_seen,
                    })
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
                (1, _, via) => EvidenceKind::Link {
                    profile,
                    identifier,
                    via,
                },
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
                    let rows: Vec<EvidenceRow> = sqlx::query_as(sql)
                        .bind(ws)
                        .bind(*member)
                        .fetch_all(&mut *conn)
                        .await?;
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
                EvidenceKind::Link {
                    profile,
                    identifier,
                    via,
                } => (1i16, *profile, None, identifier, via.as_ref()),
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

        /// Folds `from` into `into`: identifiers, events, traits (newest wins) and
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
                "UPDATE identifiers SET profile_id = $3 WHERE workspace_id = $1 AND profile_id = $2".to_owned(),
                "UPDATE profile_events SET profile_id = $3 WHERE workspace_id = $1 AND profile_id = $2".to_owned(),
                format!(
                    "INSERT INTO traits (workspace_id, profile_id, name, value, set_at, event_id) \
                     SELECT workspace_id, $3, name, value, set_at, event_id FROM traits \
                     WHERE workspace_id = $1 AND profile_id = $2 {NEWER_TRAIT}"
                ),
                format!(
                    "INSERT INTO consents (workspace_id, profile_id, purpose, channel, granted, set_at, event_id) \
                     SELECT workspace_id, $3, purpose, channel, granted, set_at, event_id FROM consents \
                     WHERE workspace_id = $1 AND profile_id = $2 {NEWER_CONSENT}"
                ),
            ] {
                sqlx::query(&sql)
                    .bind(ws)
                    .bind(from)
                    .bind(into)
                    .execute(&mut *conn)
                    .await?;
            }
            for table in ["traits", "consents"] {
                sqlx::query(&format!(
                    "DELETE FROM {table} WHERE workspace_id = $1 AND profile_id = $2"
                ))
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

        /// Rebuilds a profile's traits, consents, seen times and count from its events
        /// (after an unmerge moved events between profiles).
        async fn rebuild(
            conn: &mut Conn,
            ws: &WorkspaceId,
            profile: ProfileId,
            now: i64,
        ) -> Result<(i64, u64), StorageError> {
            for sql in [
                "DELETE FROM traits WHERE workspace_id = $1 AND profile_id = $2",
                "DELETE FROM consents WHERE workspace_id = $1 AND profile_id = $2",
            ] {
                sqlx::query(sql)
                    .bind(ws)
                    .bind(profile)
                    .execute(&mut *conn)
                    .await?;
            }
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
                let changes: Vec<ConsentChange> = c
                    .as_deref()
                    .and_then(|c| serde_json::from_str(c).ok())
                    .unwrap_or_default();
                for change in changes {
                    consents.insert(
                        (change.purpose.clone(), change.channel),
                        (change.granted, *at, *event),
                    );
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
    };
}
