//! Audiences: condition trees over a profile's traits, computed traits, features,
//! scores and segment, and its past events within time windows ("bought twice in 30
//! days and not in the last 7"). Evaluating one gives membership now and the next time
//! it can change with no new event, so a window that closes moves people out on time.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::traits::{ComputedTrait, EventFilter, Held, LONGEST_WINDOW, Op, in_window, lookup};

/// How often a condition on something that drifts with time (a score, days since an
/// event) is looked at again with no new event.
pub const DRIFT_RECHECK: TimeDelta = TimeDelta::hours(1);

/// Deepest nesting, and most children of one node, a definition may have.
pub const MAX_DEPTH: usize = 16;
pub const MAX_CHILDREN: usize = 64;

/// What a field holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Number,
    Text,
    /// A trait: whatever the profile's identify events sent.
    Any,
}

/// The features an audience can test (`features.<name>`), from `Features` as of now.
pub const FEATURES: &[(&str, Kind)] = &[
    ("events", Kind::Number),
    ("orders", Kind::Number),
    ("revenue", Kind::Number),
    ("average_order_value", Kind::Number),
    ("recency_days", Kind::Number),
    ("days_since_first_seen", Kind::Number),
    ("days_since_last_seen", Kind::Number),
    ("nps_mean", Kind::Number),
    ("nps_latest", Kind::Number),
    ("csat_mean", Kind::Number),
    ("csat_latest", Kind::Number),
    ("sentiment_mean", Kind::Number),
];

/// The scores an audience can test (`scores.<name>`), from the workspace's models.
pub const SCORES: &[(&str, Kind)] = &[
    ("p_alive", Kind::Number),
    ("expected_purchases", Kind::Number),
    ("expected_spend", Kind::Number),
    ("clv", Kind::Number),
    ("rfm_recency", Kind::Number),
    ("rfm_frequency", Kind::Number),
    ("rfm_monetary", Kind::Number),
    ("rfm_cell", Kind::Text),
    ("segment_id", Kind::Number),
    ("segment", Kind::Text),
    ("preferred_channel", Kind::Text),
    ("best_hour_of_week", Kind::Number),
    ("propensity", Kind::Number),
    ("churn_risk", Kind::Number),
];

/// Features that change as time passes with no new event.
fn drifts(field: &Field) -> bool {
    match field {
        Field::Feature(name) => name.contains("days"),
        Field::Score(_) => true,
        Field::Trait(_) | Field::Computed(_) => false,
    }
}

/// Where a compared value comes from: `traits.<path>`, `computed.<name>`,
/// `features.<name>` or `scores.<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Field {
    Trait(String),
    Computed(String),
    Feature(String),
    Score(String),
}

impl Field {
    pub fn parse(s: &str) -> Result<Self, String> {
        let (space, name) = s.split_once('.').filter(|(_, n)| !n.is_empty()).ok_or_else(|| {
            format!("{s:?} is not a field: traits.<path>, computed.<name>, features.<name> or scores.<name>")
        })?;
        let known = |list: &[(&str, Kind)], what: &str| {
            if list.iter().any(|(n, _)| *n == name) {
                Ok(name.to_owned())
            } else {
                let names: Vec<&str> = list.iter().map(|(n, _)| *n).collect();
                Err(format!("unknown {what} {name:?}; known: {}", names.join(", ")))
            }
        };
        match space {
            "traits" => Ok(Field::Trait(name.to_owned())),
            "computed" => Ok(Field::Computed(name.to_owned())),
            "features" => known(FEATURES, "feature").map(Field::Feature),
            "scores" => known(SCORES, "score").map(Field::Score),
            _ => Err(format!(
                "unknown field space {space:?}: traits, computed, features or scores"
            )),
        }
    }

    pub fn key(&self) -> String {
        match self {
            Field::Trait(n) => format!("traits.{n}"),
            Field::Computed(n) => format!("computed.{n}"),
            Field::Feature(n) => format!("features.{n}"),
            Field::Score(n) => format!("scores.{n}"),
        }
    }
}

/// "Did these events happen, between at_least and at_most times, within the window?"
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventCondition {
    #[serde(default)]
    pub filter: EventFilter,
    /// Seconds back from now; all time when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub within_seconds: Option<i64>,
    pub at_least: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_most: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Condition {
    All(Vec<Condition>),
    Any(Vec<Condition>),
    Not(Box<Condition>),
    Compare {
        field: String,
        op: Op,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        value: Option<Value>,
    },
    Event(EventCondition),
    /// Membership of another audience, by name.
    Audience(String),
}

/// A definition that cannot be saved: where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct Invalid {
    pub path: String,
    pub reason: String,
}

fn invalid(path: &str, reason: impl Into<String>) -> Invalid {
    Invalid {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

/// Checks a window in seconds.
pub fn check_window(path: &str, seconds: Option<i64>) -> Result<(), Invalid> {
    match seconds {
        Some(s) if s <= 0 => Err(invalid(path, "must be positive (leave it out for all time)")),
        Some(s) if s > LONGEST_WINDOW.num_seconds() => Err(invalid(
            path,
            format!(
                "{} days is longer than the longest window, {} days",
                s / 86_400,
                LONGEST_WINDOW.num_days()
            ),
        )),
        _ => Ok(()),
    }
}

/// Checks a filter's conditions.
pub fn check_filter(path: &str, filter: &EventFilter) -> Result<(), Invalid> {
    for (i, c) in filter.conditions.iter().enumerate() {
        if c.property.is_empty() {
            return Err(invalid(&format!("{path}.conditions[{i}].property"), "required"));
        }
        c.op.check(c.value.as_ref())
            .map_err(|reason| invalid(&format!("{path}.conditions[{i}].value"), reason))?;
    }
    Ok(())
}

/// Checks a computed trait's definition.
pub fn check_trait(t: &ComputedTrait) -> Result<(), Invalid> {
    check_name("name", &t.name)?;
    if t.aggregation.needs_property() && t.property.is_empty() {
        return Err(invalid("property", format!("required for {:?}", t.aggregation)));
    }
    check_window("within", t.within_seconds)?;
    check_filter("filter", &t.filter)
}

/// Names of traits and audiences: a lowercase letter, then lowercase letters, digits or
/// underscores, 64 at most.
pub fn check_name(path: &str, name: &str) -> Result<(), Invalid> {
    let ok = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            path,
            format!("{name:?}: a lowercase letter, then lowercase letters, digits or _, 64 at most"),
        ))
    }
}

/// What a definition may refer to.
pub struct Known<'a> {
    pub traits: &'a HashMap<String, ComputedTrait>,
    pub audiences: &'a HashMap<String, Condition>,
}

impl Condition {
    /// Checks the definition of audience `name`: fields and operators known, values of
    /// the right kind, windows in range, references to existing traits and audiences,
    /// no cycle through them.
    pub fn check(&self, name: &str, known: &Known<'_>) -> Result<(), Invalid> {
        self.check_node("definition", 0, known)?;
        // A cycle: a path of references from this audience back to itself.
        let mut stack = vec![(self, vec![name.to_owned()])];
        while let Some((condition, trail)) = stack.pop() {
            for referred in condition.audiences() {
                let mut trail = trail.clone();
                trail.push(referred.to_owned());
                if referred == name {
                    return Err(invalid("definition", format!("a cycle: {}", trail.join(" → "))));
                }
                if let Some(next) = known.audiences.get(referred) {
                    stack.push((next, trail));
                }
            }
        }
        Ok(())
    }

    fn check_node(&self, path: &str, depth: usize, known: &Known<'_>) -> Result<(), Invalid> {
        if depth >= MAX_DEPTH {
            return Err(invalid(path, format!("nested deeper than {MAX_DEPTH}")));
        }
        match self {
            Condition::All(children) | Condition::Any(children) => {
                let word = if matches!(self, Condition::All(_)) {
                    "all"
                } else {
                    "any"
                };
                if children.is_empty() {
                    return Err(invalid(&format!("{path}.{word}"), "needs at least one condition"));
                }
                if children.len() > MAX_CHILDREN {
                    return Err(invalid(
                        &format!("{path}.{word}"),
                        format!("more than {MAX_CHILDREN} conditions"),
                    ));
                }
                for (i, c) in children.iter().enumerate() {
                    c.check_node(&format!("{path}.{word}[{i}]"), depth + 1, known)?;
                }
                Ok(())
            }
            Condition::Not(c) => c.check_node(&format!("{path}.not"), depth + 1, known),
            Condition::Compare { field, op, value } => {
                let at = format!("{path}.compare");
                let parsed = Field::parse(field).map_err(|r| invalid(&format!("{at}.field"), r))?;
                op.check(value.as_ref())
                    .map_err(|r| invalid(&format!("{at}.value"), r))?;
                let kind = match &parsed {
                    Field::Trait(_) => Kind::Any,
                    Field::Computed(name) => match known.traits.get(name) {
                        Some(t) if t.aggregation.numeric() => Kind::Number,
                        Some(_) => Kind::Any,
                        None => {
                            return Err(invalid(&format!("{at}.field"), format!("no computed trait {name:?}")));
                        }
                    },
                    Field::Feature(n) | Field::Score(n) => FEATURES
                        .iter()
                        .chain(SCORES)
                        .find(|(f, _)| f == n)
                        .map_or(Kind::Any, |(_, k)| *k),
                };
                let wrong = match (kind, value) {
                    (Kind::Number, Some(Value::String(s))) if !matches!(op, Op::Contains) => s.parse::<f64>().is_err(),
                    (Kind::Number, Some(Value::Bool(_))) => true,
                    (Kind::Text, Some(Value::Number(_) | Value::Bool(_))) => true,
                    _ => false,
                };
                if wrong {
                    let what = if kind == Kind::Number { "a number" } else { "text" };
                    return Err(invalid(&format!("{at}.value"), format!("{field} is {what}")));
                }
                Ok(())
            }
            Condition::Event(e) => {
                let at = format!("{path}.event");
                check_window(&format!("{at}.within"), e.within_seconds)?;
                check_filter(&format!("{at}.filter"), &e.filter)?;
                if let Some(most) = e.at_most
                    && most < e.at_least
                {
                    return Err(invalid(
                        &format!("{at}.at_most"),
                        format!("{most} is below at_least ({})", e.at_least),
                    ));
                }
                Ok(())
            }
            Condition::Audience(name) => {
                if known.audiences.contains_key(name) {
                    Ok(())
                } else {
                    Err(invalid(&format!("{path}.audience"), format!("no audience {name:?}")))
                }
            }
        }
    }

    /// The audiences it refers to.
    pub fn audiences(&self) -> Vec<&str> {
        let mut out = Vec::new();
        self.visit(&mut |c| {
            if let Condition::Audience(name) = c {
                out.push(name.as_str());
            }
        });
        out
    }

    /// The filters of its event conditions.
    pub fn event_filters(&self) -> Vec<&EventFilter> {
        let mut out = Vec::new();
        self.visit(&mut |c| {
            if let Condition::Event(e) = c {
                out.push(&e.filter);
            }
        });
        out
    }

    /// The fields it compares (through the audiences it refers to as well, given them).
    pub fn fields(&self, audiences: &HashMap<String, Condition>) -> Vec<Field> {
        let mut out = Vec::new();
        let mut pending = vec![self];
        let mut depth = 0;
        while let Some(c) = pending.pop() {
            depth += 1;
            if depth > 10_000 {
                break;
            }
            c.visit(&mut |node| match node {
                Condition::Compare { field, .. } => out.extend(Field::parse(field).ok()),
                Condition::Audience(name) => pending.extend(audiences.get(name)),
                _ => {}
            });
        }
        out
    }

    fn visit<'a>(&'a self, f: &mut impl FnMut(&'a Condition)) {
        f(self);
        match self {
            Condition::All(cs) | Condition::Any(cs) => cs.iter().for_each(|c| c.visit(f)),
            Condition::Not(c) => c.visit(f),
            _ => {}
        }
    }
}

/// One profile as audiences see it at `now`.
pub struct Subject<'a> {
    pub now: DateTime<Utc>,
    pub events: &'a [Held],
    pub traits: &'a Map<String, Value>,
    /// Computed traits' values and their next change.
    pub computed: &'a HashMap<String, (Option<Value>, Option<DateTime<Utc>>)>,
    /// Features and scores by key (`features.orders`, `scores.p_alive`).
    pub values: &'a BTreeMap<String, Value>,
    pub audiences: &'a HashMap<String, Condition>,
}

/// Membership now, and the next time it can change with no new event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub member: bool,
    pub recheck_at: Option<DateTime<Utc>>,
}

fn earliest(a: Option<DateTime<Utc>>, b: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

impl Subject<'_> {
    pub fn evaluate(&self, condition: &Condition) -> Verdict {
        self.node(condition, 0)
    }

    fn node(&self, condition: &Condition, depth: usize) -> Verdict {
        // Definitions are checked for cycles when saved; this bounds a corrupt store.
        if depth > MAX_DEPTH * 8 {
            return Verdict {
                member: false,
                recheck_at: None,
            };
        }
        match condition {
            Condition::All(cs) | Condition::Any(cs) => {
                let all = matches!(condition, Condition::All(_));
                let mut recheck_at = None;
                let mut member = all;
                for c in cs {
                    let v = self.node(c, depth + 1);
                    recheck_at = earliest(recheck_at, v.recheck_at);
                    if all {
                        member &= v.member;
                    } else {
                        member |= v.member;
                    }
                }
                Verdict { member, recheck_at }
            }
            Condition::Not(c) => {
                let v = self.node(c, depth + 1);
                Verdict {
                    member: !v.member,
                    recheck_at: v.recheck_at,
                }
            }
            Condition::Compare { field, op, value } => {
                let Ok(field) = Field::parse(field) else {
                    return Verdict {
                        member: false,
                        recheck_at: None,
                    };
                };
                let (found, recheck_at): (Vec<&Value>, _) = match &field {
                    Field::Trait(path) => (lookup(self.traits, path), None),
                    Field::Computed(name) => match self.computed.get(name) {
                        Some((v, next)) => (v.iter().collect(), *next),
                        None => (Vec::new(), None),
                    },
                    Field::Feature(_) | Field::Score(_) => {
                        let recheck = drifts(&field).then(|| self.now + DRIFT_RECHECK);
                        (self.values.get(&field.key()).into_iter().collect(), recheck)
                    }
                };
                Verdict {
                    member: op.test(&found, value.as_ref()),
                    recheck_at,
                }
            }
            Condition::Event(e) => {
                let (admitted, recheck_at) = in_window(
                    self.events,
                    e.within_seconds.map(TimeDelta::seconds),
                    self.now,
                    &e.filter,
                );
                let count = admitted.count() as u64;
                Verdict {
                    member: count >= u64::from(e.at_least) && e.at_most.is_none_or(|m| count <= u64::from(m)),
                    recheck_at,
                }
            }
            Condition::Audience(name) => match self.audiences.get(name) {
                Some(c) => self.node(c, depth + 1),
                None => Verdict {
                    member: false,
                    recheck_at: None,
                },
            },
        }
    }
}

/// The computed traits a condition needs, by name.
pub fn traits_needed<'a>(
    fields: &[Field],
    traits: &'a HashMap<String, ComputedTrait>,
) -> impl Iterator<Item = &'a ComputedTrait> {
    let names: Vec<&String> = fields
        .iter()
        .filter_map(|f| match f {
            Field::Computed(n) => Some(n),
            _ => None,
        })
        .collect();
    traits.values().filter(move |t| names.contains(&&t.name))
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use serde_json::json;

    use super::*;
    use crate::domain::traits::Payload;

    fn day(d: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, d, 12, 0, 0).unwrap()
    }

    fn order(d: u32) -> Held {
        Held {
            at: day(d),
            payload: Payload {
                kind: "track".into(),
                name: "Order Completed".into(),
                ..Payload::default()
            },
        }
    }

    fn bought(at_least: u32, within_days: i64) -> Condition {
        Condition::Event(EventCondition {
            filter: EventFilter {
                events: vec!["Order Completed".into()],
                conditions: vec![],
            },
            within_seconds: Some(within_days * 86_400),
            at_least,
            at_most: None,
        })
    }

    /// Bought twice in 30 days and not in the last 7.
    fn lapsing() -> Condition {
        Condition::All(vec![bought(2, 30), Condition::Not(Box::new(bought(1, 7)))])
    }

    fn verdict(condition: &Condition, events: &[Held], now: DateTime<Utc>) -> Verdict {
        let empty = HashMap::new();
        Subject {
            now,
            events,
            traits: &Map::new(),
            computed: &HashMap::new(),
            values: &BTreeMap::new(),
            audiences: &empty,
        }
        .evaluate(condition)
    }

    #[test]
    fn time_moves_people_in_and_out_of_a_window() {
        let events = vec![order(1), order(5)];
        // On the 8th the order of the 5th is within 7 days: not yet.
        let v = verdict(&lapsing(), &events, day(8));
        assert!(!v.member);
        // The next change: the order of the 5th leaves the last 7 days on the 12th.
        assert_eq!(v.recheck_at, Some(day(12)));
        let v = verdict(&lapsing(), &events, day(12));
        assert!(v.member);
        // Out again when the order of the 1st leaves the 30 days, on the 31st.
        assert_eq!(v.recheck_at, Some(day(31)));
        assert!(!verdict(&lapsing(), &events, day(31)).member);
    }

    #[test]
    fn definitions_are_checked_field_by_field() {
        let traits = HashMap::new();
        let mut audiences = HashMap::new();
        let known = Known {
            traits: &traits,
            audiences: &audiences,
        };
        let compare = |field: &str, op, value| Condition::Compare {
            field: field.into(),
            op,
            value,
        };
        let err = Condition::All(vec![bought(1, 7), compare("scores.pallive", Op::Gt, Some(json!(0.5)))])
            .check("a", &known)
            .unwrap_err();
        assert_eq!(err.path, "definition.all[1].compare.field");
        assert!(err.reason.contains("unknown score \"pallive\""), "{}", err.reason);
        let err = compare("features.orders", Op::Gt, Some(json!("many")))
            .check("a", &known)
            .unwrap_err();
        assert_eq!(err.path, "definition.compare.value");
        let err = bought(1, 4000).check("a", &known).unwrap_err();
        assert_eq!(err.path, "definition.event.within");
        let err = Condition::Audience("b".into()).check("a", &known).unwrap_err();
        assert_eq!(err.reason, "no audience \"b\"");
        // b refers to a; a referring to b closes a cycle.
        audiences.insert("b".into(), Condition::Audience("a".into()));
        let known = Known {
            traits: &traits,
            audiences: &audiences,
        };
        let err = Condition::Audience("b".into()).check("a", &known).unwrap_err();
        assert_eq!(err.reason, "a cycle: a → b → a");
    }
}
