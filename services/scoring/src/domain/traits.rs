//! Computed traits: a value per profile folded from the events it holds (a count, a sum,
//! the most frequent value of a property, ...) over the events a filter lets through
//! within a window. They are computed from the held events when read, so a new
//! definition has its values for every event already held the moment it is saved, and
//! a merge, unmerge or erasure shows in them at once.

use std::collections::HashMap;

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The longest window a trait or an audience condition can look back over.
pub const LONGEST_WINDOW: TimeDelta = TimeDelta::days(3650);

/// How many values a unique list keeps (the first seen).
pub const UNIQUE_LIST_CAP: usize = 100;

/// What scoring keeps of an event's own payload, for computed traits and audiences.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Payload {
    /// "track", "identify", "page", "screen", "group" or "alias".
    #[serde(rename = "type")]
    pub kind: String,
    /// A track event's name; a page's or screen's name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub properties: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub traits: Map<String, Value>,
}

/// An event as traits and audiences read it.
#[derive(Debug, Clone, PartialEq)]
pub struct Held {
    pub at: DateTime<Utc>,
    pub payload: Payload,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    Eq,
    Ne,
    Gt,
    Gte,
    Lt,
    Lte,
    /// A string holding the value as a substring (ignoring case), or a list holding it.
    Contains,
    /// Equal to one of a list's values.
    In,
    Exists,
    NotExists,
}

impl Op {
    /// Whether the operator takes a value, and which kinds.
    pub fn check(self, value: Option<&Value>) -> Result<(), String> {
        match (self, value) {
            (Op::Exists | Op::NotExists, None) => Ok(()),
            (Op::Exists | Op::NotExists, Some(_)) => Err("takes no value".into()),
            (_, None) => Err("a value is required".into()),
            (Op::Gt | Op::Gte | Op::Lt | Op::Lte, Some(Value::Number(_) | Value::String(_))) => Ok(()),
            (Op::Gt | Op::Gte | Op::Lt | Op::Lte, Some(v)) => Err(format!("compares numbers or strings, not {v}")),
            (Op::In, Some(Value::Array(items))) if !items.is_empty() => Ok(()),
            (Op::In, Some(_)) => Err("takes a non-empty list".into()),
            (Op::Eq | Op::Ne | Op::Contains, Some(Value::Array(_) | Value::Object(_))) => {
                Err("takes a single value (a number, string or boolean)".into())
            }
            (Op::Eq | Op::Ne | Op::Contains, Some(_)) => Ok(()),
        }
    }

    /// Whether the values found (none, one, or one per element of a list) satisfy
    /// `self value`: any of them for a positive operator; none for `ne`/`not_exists`.
    pub fn test(self, found: &[&Value], value: Option<&Value>) -> bool {
        let found: Vec<&Value> = found.iter().copied().filter(|v| !v.is_null()).collect();
        match self {
            Op::Exists => !found.is_empty(),
            Op::NotExists => found.is_empty(),
            Op::Ne => !found.iter().any(|v| Op::Eq.matches(v, value)),
            _ => found.iter().any(|v| self.matches(v, value)),
        }
    }

    fn matches(self, left: &Value, value: Option<&Value>) -> bool {
        let Some(right) = value else { return false };
        match self {
            Op::Eq => equal(left, right),
            Op::Ne => !equal(left, right),
            Op::Gt | Op::Gte | Op::Lt | Op::Lte => {
                let ordering = match (number(left), number(right)) {
                    (Some(a), Some(b)) => a.partial_cmp(&b),
                    _ => match (left, right) {
                        (Value::String(a), Value::String(b)) => Some(a.cmp(b)),
                        _ => None,
                    },
                };
                use std::cmp::Ordering::*;
                matches!(
                    (self, ordering),
                    (Op::Gt, Some(Greater))
                        | (Op::Gte, Some(Greater | Equal))
                        | (Op::Lt, Some(Less))
                        | (Op::Lte, Some(Less | Equal))
                )
            }
            Op::Contains => match (left, right) {
                (Value::String(s), Value::String(part)) => s.to_lowercase().contains(&part.to_lowercase()),
                (Value::Array(items), v) => items.iter().any(|item| equal(item, v)),
                _ => false,
            },
            Op::In => match right {
                Value::Array(items) => items.iter().any(|item| equal(left, item)),
                _ => false,
            },
            Op::Exists | Op::NotExists => true,
        }
    }
}

/// A number, or a string that reads as one (events often carry numbers as strings).
pub fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok().filter(|v| v.is_finite()),
        _ => None,
    }
}

fn equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(_), _) | (_, Value::Number(_)) => match (number(a), number(b)) {
            (Some(x), Some(y)) => x == y,
            _ => false,
        },
        _ => a == b,
    }
}

/// The values at a dotted path ("products.category"): a list along the way yields one
/// value per element.
pub fn lookup<'a>(root: &'a Map<String, Value>, path: &str) -> Vec<&'a Value> {
    let mut current: Vec<&Value> = Vec::new();
    let mut parts = path.split('.');
    let Some(first) = parts.next().and_then(|p| root.get(p)) else {
        return current;
    };
    current.push(first);
    for part in parts {
        let mut next = Vec::new();
        for v in current {
            match v {
                Value::Object(m) => next.extend(m.get(part)),
                Value::Array(items) => next.extend(items.iter().filter_map(|i| i.as_object()?.get(part))),
                _ => {}
            }
        }
        current = next;
    }
    current
        .into_iter()
        .flat_map(|v| match v {
            Value::Array(items) => items.iter().collect::<Vec<_>>(),
            v => vec![v],
        })
        .collect()
}

/// A check a property of an event must pass.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PropertyCondition {
    pub property: String,
    pub op: Op,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
}

/// Which events count: any of the names (every event when empty) whose properties pass
/// every condition.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventFilter {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<PropertyCondition>,
}

impl EventFilter {
    pub fn admits(&self, payload: &Payload) -> bool {
        (self.events.is_empty() || self.events.contains(&payload.name))
            && self
                .conditions
                .iter()
                .all(|c| c.op.test(&lookup(fields_of(payload), &c.property), c.value.as_ref()))
    }
}

/// An event's properties, or an identify's or group's traits.
fn fields_of(payload: &Payload) -> &Map<String, Value> {
    if payload.properties.is_empty() {
        &payload.traits
    } else {
        &payload.properties
    }
}

/// The events within `within` of `now` (all up to `now` without a window), and the
/// next time that set changes with no new event: an event leaving the window, or one
/// dated after `now` coming due.
pub fn in_window<'a>(
    events: &'a [Held],
    within: Option<TimeDelta>,
    now: DateTime<Utc>,
    filter: &'a EventFilter,
) -> (impl Iterator<Item = &'a Held> + 'a, Option<DateTime<Utc>>) {
    let start = within.map(|w| now - w);
    let mut next: Option<DateTime<Utc>> = None;
    for e in events.iter().filter(|e| filter.admits(&e.payload)) {
        let change = if e.at > now {
            Some(e.at)
        } else {
            match (start, within) {
                (Some(start), Some(w)) if e.at > start => Some(e.at + w),
                _ => None,
            }
        };
        if let Some(c) = change {
            next = Some(next.map_or(c, |n| n.min(c)));
        }
    }
    let admitted = events
        .iter()
        .filter(move |e| e.at <= now && start.is_none_or(|s| e.at > s) && filter.admits(&e.payload));
    (admitted, next)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Aggregation {
    Count,
    Sum,
    Average,
    Min,
    Max,
    MostFrequent,
    First,
    Last,
    UniqueList,
}

impl Aggregation {
    /// Whether it folds a property's values (all but a count do).
    pub fn needs_property(self) -> bool {
        self != Aggregation::Count
    }

    /// Whether its value is a number (what `gt`/`lt` compare as numbers).
    pub fn numeric(self) -> bool {
        matches!(
            self,
            Aggregation::Count | Aggregation::Sum | Aggregation::Average | Aggregation::Min | Aggregation::Max
        )
    }
}

/// A user's computed trait.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComputedTrait {
    pub name: String,
    pub aggregation: Aggregation,
    /// The property folded (a dotted path); empty for a count.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub property: String,
    #[serde(default)]
    pub filter: EventFilter,
    /// Seconds back from now; all time when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub within_seconds: Option<i64>,
}

impl ComputedTrait {
    pub fn within(&self) -> Option<TimeDelta> {
        self.within_seconds.map(TimeDelta::seconds)
    }

    /// The trait's value for a profile's events (in time order) at `now` (`None` when
    /// there is nothing to fold: no average of no values), and the next time it can
    /// change with no new event.
    pub fn compute(&self, events: &[Held], now: DateTime<Utc>) -> (Option<Value>, Option<DateTime<Utc>>) {
        let (admitted, next) = in_window(events, self.within(), now, &self.filter);
        if self.aggregation == Aggregation::Count {
            return (Some(Value::from(admitted.count() as u64)), next);
        }
        let values: Vec<&Value> = admitted
            .flat_map(|e| lookup(fields_of(&e.payload), &self.property))
            .filter(|v| !v.is_null())
            .collect();
        let numbers = || values.iter().filter_map(|v| number(v));
        let value = match self.aggregation {
            Aggregation::Count => unreachable!("counted above"),
            Aggregation::Sum => Some(Value::from(numbers().sum::<f64>())),
            Aggregation::Average => {
                let (n, sum) = numbers().fold((0u64, 0.0), |(n, s), v| (n + 1, s + v));
                (n > 0).then(|| Value::from(sum / n as f64))
            }
            Aggregation::Min => numbers().reduce(f64::min).map(Value::from),
            Aggregation::Max => numbers().reduce(f64::max).map(Value::from),
            Aggregation::First => values.first().map(|v| (*v).clone()),
            Aggregation::Last => values.last().map(|v| (*v).clone()),
            Aggregation::MostFrequent => {
                // The most frequent; among equals, the latest seen.
                let mut counts: HashMap<String, (usize, usize, &Value)> = HashMap::new();
                for (i, v) in values.iter().enumerate() {
                    let entry = counts.entry(v.to_string()).or_insert((0, i, v));
                    entry.0 += 1;
                    entry.1 = i;
                }
                counts
                    .into_values()
                    .max_by_key(|(count, last, _)| (*count, *last))
                    .map(|(_, _, v)| v.clone())
            }
            Aggregation::UniqueList => {
                let mut seen: Vec<&Value> = Vec::new();
                for v in &values {
                    if seen.len() < UNIQUE_LIST_CAP && !seen.iter().any(|s| equal(s, v)) {
                        seen.push(v);
                    }
                }
                Some(Value::Array(seen.into_iter().cloned().collect()))
            }
        };
        (value, next)
    }
}

/// A profile's traits as its identify events left them: each trait's latest value.
pub fn latest_traits(events: &[Held], now: DateTime<Utc>) -> Map<String, Value> {
    let mut traits = Map::new();
    for e in events.iter().filter(|e| e.at <= now && e.payload.kind == "identify") {
        for (k, v) in &e.payload.traits {
            traits.insert(k.clone(), v.clone());
        }
    }
    traits
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use serde_json::json;

    use super::*;

    fn day(d: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, d, 12, 0, 0).unwrap()
    }

    fn track(d: u32, name: &str, properties: Value) -> Held {
        Held {
            at: day(d),
            payload: Payload {
                kind: "track".into(),
                name: name.into(),
                properties: properties.as_object().cloned().unwrap_or_default(),
                traits: Map::new(),
            },
        }
    }

    fn definition(aggregation: Aggregation, property: &str, within_days: Option<i64>) -> ComputedTrait {
        ComputedTrait {
            name: "t".into(),
            aggregation,
            property: property.into(),
            filter: EventFilter {
                events: vec!["Order Completed".into()],
                conditions: vec![],
            },
            within_seconds: within_days.map(|d| d * 86_400),
        }
    }

    fn orders() -> Vec<Held> {
        vec![
            track(
                1,
                "Order Completed",
                json!({"revenue": 10, "products": [{"category": "Books"}]}),
            ),
            track(3, "Page Viewed", json!({"revenue": 1000})),
            track(
                5,
                "Order Completed",
                json!({"revenue": "30", "products": [{"category": "Games"}, {"category": "Books"}]}),
            ),
            track(
                9,
                "Order Completed",
                json!({"revenue": 20, "products": [{"category": "Games"}]}),
            ),
        ]
    }

    #[test]
    fn each_aggregation_folds_the_admitted_events() {
        let events = orders();
        let now = day(10);
        let value = |agg, property: &str, within| definition(agg, property, within).compute(&events, now).0;
        assert_eq!(value(Aggregation::Count, "", None), Some(json!(3)));
        assert_eq!(value(Aggregation::Sum, "revenue", None), Some(json!(60.0)));
        assert_eq!(value(Aggregation::Average, "revenue", None), Some(json!(20.0)));
        assert_eq!(value(Aggregation::Min, "revenue", None), Some(json!(10.0)));
        assert_eq!(value(Aggregation::Max, "revenue", None), Some(json!(30.0)));
        assert_eq!(value(Aggregation::First, "revenue", None), Some(json!(10)));
        assert_eq!(value(Aggregation::Last, "revenue", None), Some(json!(20)));
        // Books twice, Games twice: the later seen wins the tie.
        assert_eq!(
            value(Aggregation::MostFrequent, "products.category", None),
            Some(json!("Games"))
        );
        assert_eq!(
            value(Aggregation::UniqueList, "products.category", None),
            Some(json!(["Books", "Games"]))
        );
        // The last 7 days hold the orders of the 5th and the 9th.
        assert_eq!(value(Aggregation::Count, "", Some(7)), Some(json!(2)));
        assert_eq!(value(Aggregation::Average, "missing", None), None);
    }

    #[test]
    fn a_window_says_when_it_next_changes() {
        let events = orders();
        let (count, next) = definition(Aggregation::Count, "", Some(7)).compute(&events, day(10));
        assert_eq!(count, Some(json!(2)));
        // The order of the 5th leaves the window on the 12th.
        assert_eq!(next, Some(day(12)));
        let (count, _) = definition(Aggregation::Count, "", Some(7)).compute(&events, day(12));
        assert_eq!(count, Some(json!(1)));
        // Without a window nothing leaves; an order dated later comes due.
        let (_, next) = definition(Aggregation::Count, "", None).compute(&events, day(6));
        assert_eq!(next, Some(day(9)));
    }

    #[test]
    fn operators_compare_numbers_strings_and_lists() {
        let n = json!(5);
        let s = json!("2026-03-01");
        assert!(Op::Gt.test(&[&n], Some(&json!("4.5"))));
        assert!(Op::Lte.test(&[&s], Some(&json!("2026-03-02"))));
        assert!(!Op::Gt.test(&[&s], Some(&json!(3))));
        assert!(Op::In.test(&[&json!("gold")], Some(&json!(["silver", "gold"]))));
        assert!(Op::Contains.test(&[&json!("Very Happy")], Some(&json!("happy"))));
        assert!(Op::Ne.test(&[], Some(&json!("pro"))));
        assert!(Op::NotExists.test(&[&Value::Null], None));
        assert!(Op::Eq.check(Some(&json!([1]))).is_err());
        assert!(Op::In.check(Some(&json!([]))).is_err());
        assert!(Op::Exists.check(Some(&json!(1))).is_err());
    }

    #[test]
    fn the_latest_identify_wins_each_trait() {
        let identify = |d, traits: Value| Held {
            at: day(d),
            payload: Payload {
                kind: "identify".into(),
                traits: traits.as_object().cloned().unwrap(),
                ..Payload::default()
            },
        };
        let events = vec![
            identify(1, json!({"plan": "free", "city": "Lyon"})),
            identify(2, json!({"plan": "pro"})),
        ];
        let traits = latest_traits(&events, day(3));
        assert_eq!(traits["plan"], json!("pro"));
        assert_eq!(traits["city"], json!("Lyon"));
    }
}
