//! `RunMatching`: probabilistic matching over a workspace's profiles, their traits as
//! records. Pairs at or above the auto-merge threshold are merged (with evidence, so an
//! unmerge can undo them); pairs between the thresholds wait for review.

use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use corvus_proto::WorkspaceId;
use corvus_proto::identity::v1 as pb;
use corvus_proto::identity::v1::match_field::Comparison as FieldComparison;

use crate::domain::matching::{
    BlockingRule, Comparison, Field, Linker, Record, Schema, Settings, Thresholds, Training,
};
use crate::domain::resolution::{ProfileId, Rule};
use crate::service::{Identity, IdentityError};
use crate::storage::{CANDIDATE_PENDING, CandidateRecord, MatchMerge};

pub const DEFAULT_AUTO_MERGE: f64 = 0.99;
pub const DEFAULT_REVIEW: f64 = 0.8;

/// Runs a step of the model on the blocking pool.
async fn cpu<T: Send + 'static>(
    step: impl FnOnce() -> Result<T, crate::domain::matching::MatchingError> + Send + 'static,
) -> Result<T, IdentityError> {
    tokio::task::spawn_blocking(step)
        .await
        .map_err(|e| IdentityError::Precondition(format!("matching stopped: {e}")))?
        .map_err(|e| IdentityError::Invalid {
            field: "fields",
            reason: e.to_string(),
        })
}

/// A validated matching request.
#[derive(Debug, Clone)]
pub struct Job {
    settings: Settings,
    auto_merge: f64,
    review: f64,
    dry_run: bool,
}

fn comparison(kind: FieldComparison) -> Option<Comparison> {
    Some(match kind {
        FieldComparison::Unspecified => return None,
        FieldComparison::Exact => Comparison::Exact,
        FieldComparison::Name => Comparison::JaroWinkler {
            thresholds: vec![0.92, 0.80],
        },
        FieldComparison::Text => Comparison::Levenshtein {
            max_distances: vec![1, 2],
        },
        FieldComparison::Date => Comparison::Date,
        FieldComparison::Number => Comparison::Numeric {
            tolerances: vec![1.0, 10.0],
        },
    })
}

/// The fields compared when a request names none: a person's name, birth date and address.
fn default_fields() -> Vec<Field> {
    let name = || Comparison::JaroWinkler {
        thresholds: vec![0.92, 0.80],
    };
    vec![
        Field::new("first_name", name()).with_term_frequency(),
        Field::new("last_name", name()).with_term_frequency(),
        Field::new("date_of_birth", Comparison::Date),
        Field::new("postcode", Comparison::Levenshtein { max_distances: vec![1] }),
        Field::new("city", Comparison::Exact).with_term_frequency(),
    ]
}

fn default_blocking() -> Vec<BlockingRule> {
    vec![
        BlockingRule::on(&["last_name", "date_of_birth"]),
        BlockingRule::on(&["first_name", "postcode"]),
        BlockingRule::on(&["date_of_birth", "postcode"]),
    ]
}

impl Job {
    pub fn from_request(request: &pb::RunMatchingRequest) -> Result<Job, IdentityError> {
        let invalid = |field, reason: String| IdentityError::Invalid { field, reason };
        let fields = if request.fields.is_empty() {
            default_fields()
        } else {
            let mut fields = Vec::with_capacity(request.fields.len());
            for f in &request.fields {
                if f.r#trait.trim().is_empty() {
                    return Err(invalid("fields.trait", "every field names a trait".to_owned()));
                }
                let kind = FieldComparison::try_from(f.comparison).unwrap_or(FieldComparison::Unspecified);
                let comparison = comparison(kind)
                    .ok_or_else(|| invalid("fields.comparison", format!("field {:?} needs a comparison", f.r#trait)))?;
                let mut field = Field::new(f.r#trait.trim(), comparison);
                field.term_frequency = f.term_frequency;
                fields.push(field);
            }
            fields
        };
        let blocking = if request.blocking_rules.is_empty() {
            default_blocking()
        } else {
            request
                .blocking_rules
                .iter()
                .map(|rule| {
                    let names: Vec<&str> = rule.split(',').map(str::trim).filter(|n| !n.is_empty()).collect();
                    BlockingRule::on(&names)
                })
                .collect()
        };
        let or_default = |value: f64, default: f64| if value == 0.0 { default } else { value };
        let auto_merge = or_default(request.auto_merge_threshold, DEFAULT_AUTO_MERGE);
        let review = or_default(request.review_threshold, DEFAULT_REVIEW);
        if !(0.0..=1.0).contains(&auto_merge) {
            return Err(invalid("auto_merge_threshold", "must be a probability".to_owned()));
        }
        if !(0.0..=auto_merge).contains(&review) {
            return Err(invalid(
                "review_threshold",
                "must be a probability no higher than auto_merge_threshold".to_owned(),
            ));
        }
        let settings = Settings {
            schema: Schema::new(fields),
            blocking,
            training: Training::default(),
            thresholds: Thresholds {
                match_probability: auto_merge,
                review_probability: review,
            },
        };
        // Checks the blocking rules against the fields.
        Linker::new(settings.clone()).map_err(|e| invalid("blocking_rules", e.to_string()))?;
        Ok(Job {
            settings,
            auto_merge,
            review,
            dry_run: request.dry_run,
        })
    }

    /// Runs the job, reporting each stage to `progress` as it starts and at the end.
    pub async fn run(
        self,
        identity: &Identity,
        ws: &WorkspaceId,
        progress: impl Fn(pb::RunMatchingResponse),
    ) -> Result<pb::RunMatchingResponse, IdentityError> {
        let started = Instant::now();
        let mut report = pb::RunMatchingResponse::default();
        let stage = |report: &mut pb::RunMatchingResponse, stage: pb::MatchingStage| {
            report.stage = stage as i32;
            report.elapsed_ms = started.elapsed().as_millis() as u64;
            progress(*report);
        };
        stage(&mut report, pb::MatchingStage::Loading);
        let names: Vec<String> = self.settings.schema.fields.iter().map(|f| f.name.clone()).collect();
        let rows = identity.store.trait_records(ws, &names).await?;
        let ids: Vec<ProfileId> = rows.iter().map(|r| r.0).collect();
        let records: Vec<Record> = rows
            .into_iter()
            .enumerate()
            .map(|(i, (_, fields))| Record {
                id: i.to_string(),
                fields,
            })
            .collect();
        report.profiles = records.len() as u64;

        stage(&mut report, pb::MatchingStage::Blocking);
        let linker = Arc::new(Linker::new(self.settings.clone()).expect("checked when the job was made"));
        // The model is CPU work: off the async workers, a step at a time so that progress
        // can be told between them.
        let blocked = {
            let linker = linker.clone();
            cpu(move || {
                let prepared = linker.prepare(&records)?;
                let pairs = linker.candidates(&prepared, None);
                let vectors = linker.compare(&prepared, None, &pairs);
                Ok((prepared, pairs, vectors))
            })
            .await?
        };
        report.candidate_pairs = blocked.1.len() as u64;
        stage(&mut report, pb::MatchingStage::Training);
        let (blocked, model) = {
            let linker = linker.clone();
            cpu(move || {
                let (model, _) = linker.train(&blocked.0, None, &blocked.2);
                Ok((blocked, model))
            })
            .await?
        };
        stage(&mut report, pb::MatchingStage::Scoring);
        let (prepared, pairs, vectors) = blocked;
        let (scored, levels) = cpu(move || {
            let scored = linker.score(&model, &prepared, None, &pairs, &vectors);
            let levels: Vec<Vec<u8>> = (0..pairs.len()).map(|i| vectors.row(i).to_vec()).collect();
            Ok((scored, levels))
        })
        .await?;

        let mut merges = Vec::new();
        let mut candidates = Vec::new();
        let now = Utc::now();
        let mut order: Vec<usize> = (0..scored.len()).collect();
        order.sort_by(|x, y| scored[*y].probability.total_cmp(&scored[*x].probability));
        for i in order {
            let pair = &scored[i];
            let (a, b) = (ids[pair.a], ids[pair.b]);
            if pair.probability >= self.auto_merge {
                merges.push(MatchMerge {
                    a,
                    b,
                    rule: Rule::Probabilistic,
                    probability: pair.probability,
                });
            } else if pair.probability >= self.review {
                let levels: serde_json::Map<String, serde_json::Value> = names
                    .iter()
                    .zip(&levels[i])
                    .map(|(name, level)| {
                        let level = if *level == crate::domain::matching::compare::NULL_LEVEL {
                            0
                        } else {
                            *level
                        };
                        (name.clone(), serde_json::Value::from(level))
                    })
                    .collect();
                candidates.push(CandidateRecord {
                    id: uuid::Uuid::now_v7(),
                    a,
                    b,
                    probability: pair.probability,
                    levels: serde_json::Value::Object(levels).to_string(),
                    status: CANDIDATE_PENDING,
                    proposed_at: now,
                });
            }
        }
        stage(&mut report, pb::MatchingStage::Applying);
        if self.dry_run {
            report.auto_merged = merges.len() as u64;
            report.queued_for_review = candidates.len() as u64;
        } else {
            report.auto_merged = identity.merge_matches(ws, &merges).await?.len() as u64;
            report.queued_for_review = identity.store.propose(ws, &candidates).await?;
        }
        stage(&mut report, pb::MatchingStage::Done);
        Ok(report)
    }
}
