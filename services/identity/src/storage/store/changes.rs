//! The store's rarer writes, each one transaction: undoing a merge, erasing a person,
//! applying merges from matching or review. Expanded by `identity_store!` for each backend.

macro_rules! changes_sql {
    ($Store:ident) => {
        async fn unmerge_in(
            store: &$Store,
            ws: &WorkspaceId,
            merge: i64,
            rules: &IdentityRules,
        ) -> Result<Result<Unmerged, UnmergeRefused>, StorageError> {
            let (_guard, mut tx) = store.begin().await?;
            let row: Option<EvidenceRow> = sqlx::query_as(&format!(
                "SELECT {EVIDENCE_COLUMNS} FROM evidence WHERE workspace_id = $1 AND id = $2"
            ))
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
            <$Store>::lock_profiles(&mut tx, ws, &[root]).await?;
            let members: Vec<ProfileId> = std::iter::once(root)
                .chain(absorbed(&mut tx, ws, root).await?)
                .collect();
            let standing: Vec<(i64, Evidence)> = evidence_of_members(&mut tx, ws, &members, false)
                .await?
                .into_iter()
                .filter(|(_, e, undone)| undone.is_none() || matches!(e.kind, EvidenceKind::Link { .. }))
                .map(|(id, e, _)| (id, e))
                .collect();
            let undo = standing
                .iter()
                .position(|(id, _)| *id == merge)
                .ok_or_else(|| StorageError::Internal(format!("merge {merge} is not in the history of its profile")))?;
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
                    sqlx::query("UPDATE profile_events SET profile_id = $3 WHERE workspace_id = $1 AND event_id = $2")
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
                side.identifiers
                    .sort_by(|a, b| rules.order(&a.0).cmp(&rules.order(&b.0)));
            }
            sqlx::query("UPDATE evidence SET undone_at = $3 WHERE workspace_id = $1 AND id = $2")
                .bind(ws)
                .bind(merge)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            let placed: Vec<(ProfileId, Vec<EventId>)> = split
                .sides
                .iter()
                .enumerate()
                .map(|(i, side)| {
                    let mut events = side.events.clone();
                    if i == 0 {
                        events.extend(split.unplaced.iter().copied());
                    }
                    (side.profile, events)
                })
                .collect();
            <$Store>::log_in(&mut tx, ws, &[crate::log::unmerged_entry(ws, merge, &placed)]).await?;
            tx.commit().await?;
            Ok(Ok(Unmerged { sides, versions }))
        }

        async fn forget_in(
            store: &$Store,
            ws: &WorkspaceId,
            profile: ProfileId,
            block_identifiers: bool,
            receipt: &(dyn for<'r> Fn(&'r Removed) -> Vec<u8> + Sync),
        ) -> Result<Option<Erasure>, StorageError> {
            let (_guard, mut tx) = store.begin().await?;
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
                    identifiers: Vec::new(),
                    pending: pending
                        .map(|p| p.lines().map(str::to_owned).collect())
                        .unwrap_or_default(),
                    already_erased: true,
                    versions: Vec::new(),
                }));
            }
            <$Store>::lock_profiles(&mut tx, ws, &[root]).await?;
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
            // Identity's log first: its entries of the person's events are found through
            // `profile_events`, and a consumer not yet past them never receives them.
            for (table, sql) in [
                (
                    "log_dead_letters",
                    "DELETE FROM dead_letters WHERE workspace_id = $1 AND (tx_id, seq) IN (SELECT l.tx_id, l.seq \
                     FROM events l JOIN profile_events p ON l.workspace_id = p.workspace_id \
                     AND l.event_id = p.event_id WHERE p.workspace_id = $1 AND p.profile_id = $2)",
                ),
                // The backend's own statement (`erase_log_in`).
                ("log", ""),
                (
                    "identifiers",
                    "DELETE FROM identifiers WHERE workspace_id = $1 AND profile_id = $2",
                ),
                (
                    "events",
                    "DELETE FROM profile_events WHERE workspace_id = $1 AND profile_id = $2",
                ),
                (
                    "traits",
                    "DELETE FROM traits WHERE workspace_id = $1 AND profile_id = $2",
                ),
                (
                    "consents",
                    "DELETE FROM consents WHERE workspace_id = $1 AND profile_id = $2",
                ),
                (
                    "evidence",
                    "DELETE FROM evidence WHERE workspace_id = $1 AND profile_id = $2",
                ),
                (
                    "evidence",
                    "DELETE FROM evidence WHERE workspace_id = $1 AND other_id = $2",
                ),
                (
                    "match_candidates",
                    "DELETE FROM match_candidates WHERE workspace_id = $1 AND (profile_a = $2 OR profile_b = $2)",
                ),
            ] {
                let mut n = 0;
                for member in &members {
                    n += if sql.is_empty() {
                        <$Store>::erase_log_in(&mut tx, ws, *member).await?
                    } else {
                        sqlx::query(sql)
                            .bind(ws)
                            .bind(*member)
                            .execute(&mut *tx)
                            .await?
                            .rows_affected()
                    };
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
            <$Store>::log_in(
                &mut tx,
                ws,
                &[crate::log::erased_entry(ws, &members, &removed.message_ids)],
            )
            .await?;
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
                identifiers: removed.identifiers,
                pending: removed.message_ids,
                already_erased: false,
                versions,
            }))
        }

        async fn merge_matches_in(
            store: &$Store,
            ws: &WorkspaceId,
            merges: &[MatchMerge],
            rules: &IdentityRules,
        ) -> Result<(Vec<MergeRecord>, Vec<(ProfileId, i64)>), StorageError> {
            let (_guard, mut tx) = store.begin().await?;
            let now = Utc::now();
            let mut made = Vec::new();
            let mut versions = Vec::new();
            let mut entries = Vec::new();
            for m in merges {
                let (Some((a, false)), Some((b, false))) = (
                    current_root(&mut tx, ws, m.a).await?,
                    current_root(&mut tx, ws, m.b).await?,
                ) else {
                    continue;
                };
                if a == b {
                    continue;
                }
                let mut rows = <$Store>::lock_profiles(&mut tx, ws, &[a, b]).await?;
                rows.sort_by_key(|r| r.0 == b);
                let (Some(ra), Some(rb)) = (rows.first(), rows.get(1)) else {
                    continue;
                };
                let (ca, cb) = (
                    candidate(&mut tx, ws, ra).await?,
                    candidate(&mut tx, ws, rb).await?,
                );
                if !may_merge(&ca, &cb, rules) {
                    continue;
                }
                let strength = |c: &Candidate| {
                    let strongest = c
                        .identifiers
                        .iter()
                        .map(|h| rules.priority(&h.identifier.kind))
                        .min();
                    (strongest.unwrap_or(u16::MAX), c.created_at, c.profile)
                };
                let (survivor, merged) = if strength(&ca) <= strength(&cb) {
                    (&ca, &cb)
                } else {
                    (&cb, &ca)
                };
                let Some(evidence) = matched_merge(survivor, merged, m.rule, m.probability, now, rules) else {
                    continue;
                };
                let id = insert_evidence(&mut tx, ws, &evidence).await?;
                versions.extend(move_profile(&mut tx, ws, merged.profile, survivor.profile, micros(now)).await?);
                entries.push(crate::log::merged_entry(
                    ws,
                    survivor.profile,
                    &[merged.profile],
                    None,
                    None,
                ));
                made.extend(merge_record(id, evidence, None));
            }
            // Last before the commit, once every profile is locked (see `log_in`).
            <$Store>::log_in(&mut tx, ws, &entries).await?;
            tx.commit().await?;
            Ok((made, versions))
        }
    };
}
