//! Computed traits and audiences on the wire: definitions read from their messages
//! (each mistake named by its path, e.g. `audience.definition.all[1].compare.op`) and
//! written back.

use std::pin::Pin;
use std::time::Duration;

use chrono::{DateTime, Utc};
use corvus_platform::error::{invalid_argument, storage_status};
use corvus_proto::WorkspaceId;
use corvus_proto::json::{json_to_value, value_to_json};
use corvus_proto::scoring::v1 as pb;
use futures::Stream;
use tonic::Status;

use super::timestamp;
use crate::audiences::Audience;
use crate::domain::audiences::{Condition, EventCondition, MAX_CHILDREN, MAX_DEPTH};
use crate::domain::traits::{Aggregation, ComputedTrait, EventFilter, Op, PropertyCondition};
use crate::service::Scoring;
use crate::storage::Definitions;

/// How long a change stream waits for news before looking at the store again (other
/// replicas' changes reach it this way).
const STREAM_POLL: Duration = Duration::from_millis(250);

fn op_from(path: &str, op: i32) -> Result<Op, Status> {
    Ok(match pb::Operator::try_from(op) {
        Ok(pb::Operator::Eq) => Op::Eq,
        Ok(pb::Operator::Ne) => Op::Ne,
        Ok(pb::Operator::Gt) => Op::Gt,
        Ok(pb::Operator::Gte) => Op::Gte,
        Ok(pb::Operator::Lt) => Op::Lt,
        Ok(pb::Operator::Lte) => Op::Lte,
        Ok(pb::Operator::Contains) => Op::Contains,
        Ok(pb::Operator::In) => Op::In,
        Ok(pb::Operator::Exists) => Op::Exists,
        Ok(pb::Operator::NotExists) => Op::NotExists,
        Ok(pb::Operator::Unspecified) => return Err(invalid_argument(path, "required: OPERATOR_EQ, _GT, _IN, ...")),
        Err(_) => return Err(invalid_argument(path, format!("unknown operator {op}"))),
    })
}

fn op_message(op: Op) -> i32 {
    (match op {
        Op::Eq => pb::Operator::Eq,
        Op::Ne => pb::Operator::Ne,
        Op::Gt => pb::Operator::Gt,
        Op::Gte => pb::Operator::Gte,
        Op::Lt => pb::Operator::Lt,
        Op::Lte => pb::Operator::Lte,
        Op::Contains => pb::Operator::Contains,
        Op::In => pb::Operator::In,
        Op::Exists => pb::Operator::Exists,
        Op::NotExists => pb::Operator::NotExists,
    }) as i32
}

const AGGREGATIONS: [(pb::Aggregation, Aggregation); 9] = [
    (pb::Aggregation::Count, Aggregation::Count),
    (pb::Aggregation::Sum, Aggregation::Sum),
    (pb::Aggregation::Average, Aggregation::Average),
    (pb::Aggregation::Min, Aggregation::Min),
    (pb::Aggregation::Max, Aggregation::Max),
    (pb::Aggregation::MostFrequent, Aggregation::MostFrequent),
    (pb::Aggregation::First, Aggregation::First),
    (pb::Aggregation::Last, Aggregation::Last),
    (pb::Aggregation::UniqueList, Aggregation::UniqueList),
];

/// A window in whole seconds; the domain checks its range.
fn within_from(path: &str, d: Option<&prost_types::Duration>) -> Result<Option<i64>, Status> {
    match d {
        None => Ok(None),
        Some(d) if d.nanos != 0 => Err(invalid_argument(path, "whole seconds only")),
        Some(d) => Ok(Some(d.seconds)),
    }
}

fn within_message(seconds: Option<i64>) -> Option<prost_types::Duration> {
    seconds.map(|seconds| prost_types::Duration { seconds, nanos: 0 })
}

fn filter_from(path: &str, f: Option<&pb::EventFilter>) -> Result<EventFilter, Status> {
    let Some(f) = f else { return Ok(EventFilter::default()) };
    if let Some(i) = f.events.iter().position(|e| e.trim().is_empty()) {
        return Err(invalid_argument(
            format!("{path}.events[{i}]"),
            "an event name is empty",
        ));
    }
    Ok(EventFilter {
        events: f.events.clone(),
        conditions: f
            .conditions
            .iter()
            .enumerate()
            .map(|(i, c)| {
                Ok(PropertyCondition {
                    property: c.property.clone(),
                    op: op_from(&format!("{path}.conditions[{i}].op"), c.op)?,
                    value: c.value.as_ref().map(value_to_json).filter(|v| !v.is_null()),
                })
            })
            .collect::<Result<_, Status>>()?,
    })
}

fn filter_message(f: &EventFilter) -> pb::EventFilter {
    pb::EventFilter {
        events: f.events.clone(),
        conditions: f
            .conditions
            .iter()
            .map(|c| pb::PropertyCondition {
                property: c.property.clone(),
                op: op_message(c.op),
                value: c.value.as_ref().map(json_to_value),
            })
            .collect(),
    }
}

pub fn trait_from(t: Option<&pb::ComputedTrait>) -> Result<ComputedTrait, Status> {
    let t = t.ok_or_else(|| invalid_argument("computed_trait", "required"))?;
    let aggregation = AGGREGATIONS
        .iter()
        .find(|(p, _)| *p as i32 == t.aggregation)
        .map(|(_, a)| *a)
        .ok_or_else(|| {
            invalid_argument(
                "computed_trait.aggregation",
                "required: AGGREGATION_COUNT, _SUM, _AVERAGE, _MIN, _MAX, _MOST_FREQUENT, _FIRST, _LAST or _UNIQUE_LIST",
            )
        })?;
    Ok(ComputedTrait {
        name: t.name.clone(),
        aggregation,
        property: t.property.clone(),
        filter: filter_from("computed_trait.filter", t.filter.as_ref())?,
        within_seconds: within_from("computed_trait.within", t.within.as_ref())?,
    })
}

pub fn trait_message(t: &ComputedTrait, created_at: DateTime<Utc>) -> pb::ComputedTrait {
    pb::ComputedTrait {
        name: t.name.clone(),
        aggregation: AGGREGATIONS
            .iter()
            .find(|(_, a)| *a == t.aggregation)
            .map_or(0, |(p, _)| *p as i32),
        property: t.property.clone(),
        filter: Some(filter_message(&t.filter)),
        within: within_message(t.within_seconds),
        created_at: Some(timestamp(created_at)),
    }
}

/// A definition read from its message; `path` names this node in errors.
pub fn condition_from(path: &str, c: Option<&pb::Condition>, depth: usize) -> Result<Condition, Status> {
    use pb::condition::Condition as C;
    if depth >= MAX_DEPTH {
        return Err(invalid_argument(path, format!("nested deeper than {MAX_DEPTH}")));
    }
    let Some(node) = c.and_then(|c| c.condition.as_ref()) else {
        return Err(invalid_argument(
            path,
            "required: one of all, any, not, compare, event, audience",
        ));
    };
    let children = |word: &str, list: &pb::Conditions| -> Result<Vec<Condition>, Status> {
        let at = format!("{path}.{word}");
        if list.conditions.len() > MAX_CHILDREN {
            return Err(invalid_argument(at, format!("more than {MAX_CHILDREN} conditions")));
        }
        list.conditions
            .iter()
            .enumerate()
            .map(|(i, c)| condition_from(&format!("{at}[{i}]"), Some(c), depth + 1))
            .collect()
    };
    Ok(match node {
        C::All(list) => Condition::All(children("all", list)?),
        C::Any(list) => Condition::Any(children("any", list)?),
        C::Not(inner) => Condition::Not(Box::new(condition_from(
            &format!("{path}.not"),
            Some(inner),
            depth + 1,
        )?)),
        C::Compare(c) => Condition::Compare {
            field: c.field.clone(),
            op: op_from(&format!("{path}.compare.op"), c.op)?,
            value: c.value.as_ref().map(value_to_json).filter(|v| !v.is_null()),
        },
        C::Event(e) => Condition::Event(EventCondition {
            filter: filter_from(&format!("{path}.event.filter"), e.filter.as_ref())?,
            within_seconds: within_from(&format!("{path}.event.within"), e.within.as_ref())?,
            at_least: if e.at_least == 0 && e.at_most.is_none() {
                1
            } else {
                e.at_least
            },
            at_most: e.at_most,
        }),
        C::Audience(name) => Condition::Audience(name.clone()),
    })
}

pub fn condition_message(c: &Condition) -> pb::Condition {
    use pb::condition::Condition as C;
    let list = |cs: &[Condition]| pb::Conditions {
        conditions: cs.iter().map(condition_message).collect(),
    };
    pb::Condition {
        condition: Some(match c {
            Condition::All(cs) => C::All(list(cs)),
            Condition::Any(cs) => C::Any(list(cs)),
            Condition::Not(inner) => C::Not(Box::new(condition_message(inner))),
            Condition::Compare { field, op, value } => C::Compare(pb::Comparison {
                field: field.clone(),
                op: op_message(*op),
                value: value.as_ref().map(json_to_value),
            }),
            Condition::Event(e) => C::Event(pb::EventCondition {
                filter: Some(filter_message(&e.filter)),
                within: within_message(e.within_seconds),
                at_least: e.at_least,
                at_most: e.at_most,
            }),
            Condition::Audience(name) => C::Audience(name.clone()),
        }),
    }
}

pub fn audience_message(a: &Audience) -> pb::Audience {
    pb::Audience {
        name: a.name.clone(),
        description: a.description.clone(),
        definition: Some(condition_message(&a.condition)),
        created_at: Some(timestamp(a.created_at)),
        built_at: a.built_at.map(timestamp),
        size: a.size,
    }
}

pub type ChangeStream = Pin<Box<dyn Stream<Item = Result<pb::StreamAudienceChangesResponse, Status>> + Send>>;

/// When the audience named was created; none when there is none.
async fn created_at(scoring: &Scoring, ws: &WorkspaceId, audience: &str) -> Result<Option<DateTime<Utc>>, Status> {
    let definitions = scoring
        .store
        .definitions(ws, Definitions::Audiences)
        .await
        .map_err(storage_status)?;
    Ok(definitions
        .into_iter()
        .find(|d| d.name == audience)
        .map(|d| d.created_at))
}

/// An audience's changes after `after`, then each as it is recorded. The stream ends with
/// NOT_FOUND once the audience is deleted (looked for before changes are sent, and at
/// most once a `STREAM_POLL` while none come), even if one of the same name has been
/// created since.
pub fn change_stream(scoring: Scoring, ws: WorkspaceId, audience: String, mut after: i64) -> ChangeStream {
    Box::pin(async_stream::try_stream! {
        let mut news = scoring.audience_news();
        let created = created_at(&scoring, &ws, &audience).await?;
        let mut looked = std::time::Instant::now();
        loop {
            news.borrow_and_update();
            let batch = scoring.audience_changes(&ws, &audience, after, 500).await?;
            let full = batch.len() == 500;
            // Changes of a new audience of the same name are not this one's.
            if !batch.is_empty() && created_at(&scoring, &ws, &audience).await? != created {
                Err(Status::not_found(format!("audience {audience:?} was deleted")))?;
            }
            for c in batch {
                after = c.seq;
                yield pb::StreamAudienceChangesResponse {
                    sequence: c.seq as u64,
                    audience: c.audience,
                    profile_id: c.profile.to_string(),
                    entered: c.entered,
                    at: Some(timestamp(c.at)),
                    reason: c.reason,
                };
            }
            if !full {
                if looked.elapsed() >= STREAM_POLL {
                    if created.is_none() || created_at(&scoring, &ws, &audience).await? != created {
                        Err(Status::not_found(format!("audience {audience:?} was deleted")))?;
                    }
                    looked = std::time::Instant::now();
                }
                let _ = tokio::time::timeout(STREAM_POLL, news.changed()).await;
            }
        }
    })
}
