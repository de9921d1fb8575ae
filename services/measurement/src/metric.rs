//! Metrics: what an event adds to a person's value, and the checks a definition must
//! pass before it is kept.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::stats::{Invalid, MetricType};

/// The longest window and lookback.
pub const MAX_SPAN_SECONDS: u64 = 365 * 24 * 3600;

/// CUPED's lookback when a definition gives none.
pub const DEFAULT_LOOKBACK_SECONDS: u64 = 14 * 24 * 3600;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metric {
    pub name: String,
    pub metric_type: MetricType,
    pub numerator: EventFilter,
    /// Ratio metrics only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub denominator: Option<EventFilter>,
    pub window_seconds: u64,
    /// 0: no covariate.
    pub lookback_seconds: u64,
    #[serde(default)]
    pub inverse: bool,
    #[serde(default)]
    pub guardrail: bool,
    #[serde(default)]
    pub description: String,
}

/// A track event by name whose named properties equal their values, and the property
/// each such event adds (1 when `value` is empty).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EventFilter {
    pub event: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub value: String,
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Invalid {
    Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// A property's value as a condition reads it: a string as it is, anything else as its
/// JSON text (`true`, `3`).
fn text(v: &Value) -> std::borrow::Cow<'_, str> {
    match v {
        Value::String(s) => s.as_str().into(),
        other => other.to_string().into(),
    }
}

impl EventFilter {
    /// What an event adds, if it is one this filter counts.
    pub fn value_of(&self, event: &str, properties: &Map<String, Value>) -> Option<f64> {
        if event != self.event {
            return None;
        }
        let equal = self
            .properties
            .iter()
            .all(|(k, want)| properties.get(k).is_some_and(|v| text(v) == want.as_str()));
        if !equal {
            return None;
        }
        if self.value.is_empty() {
            return Some(1.0);
        }
        let value = match properties.get(&self.value) {
            Some(Value::Number(n)) => n.as_f64().unwrap_or(0.0),
            Some(Value::String(s)) => s.trim().parse::<f64>().unwrap_or(0.0),
            _ => 0.0,
        };
        Some(if value.is_finite() { value } else { 0.0 })
    }

    fn check(&self, at: &str) -> Result<(), Invalid> {
        if self.event.trim().is_empty() {
            return Err(invalid(format!("{at}.event"), "an event name"));
        }
        if let Some(k) = self.properties.keys().find(|k| k.trim().is_empty()) {
            return Err(invalid(
                format!("{at}.properties"),
                format!("{k:?} is not a property name"),
            ));
        }
        if self.value.len() != self.value.trim().len() {
            return Err(invalid(
                format!("{at}.value"),
                "a property name without spaces around it",
            ));
        }
        Ok(())
    }
}

impl Metric {
    /// What an event adds to the person's (numerator, denominator), if it counts.
    pub fn contribution(&self, event: &str, properties: &Map<String, Value>) -> Option<(f64, f64)> {
        let numerator = self.numerator.value_of(event, properties);
        let denominator = self.denominator.as_ref().and_then(|d| d.value_of(event, properties));
        let numerator = match self.metric_type {
            // Converted or not: any event counts, whatever it carries.
            MetricType::Binomial => numerator.map(|_| 1.0),
            _ => numerator,
        };
        match (numerator, denominator) {
            (None, None) => None,
            (n, d) => Some((n.unwrap_or(0.0), d.unwrap_or(0.0))),
        }
    }

    /// Whether results carry CUPED's covariate.
    pub fn cuped(&self) -> bool {
        self.lookback_seconds > 0 && self.metric_type != MetricType::Ratio
    }

    /// Checks a definition; the fields are named as the API names them (`metric.…`).
    pub fn check(&self) -> Result<(), Invalid> {
        let name_ok = (1..=64).contains(&self.name.len())
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !name_ok {
            return Err(invalid("metric.name", "1 to 64 of a-z, 0-9, _ and -"));
        }
        self.numerator.check("metric.numerator")?;
        if self.metric_type == MetricType::Binomial && !self.numerator.value.is_empty() {
            return Err(invalid(
                "metric.numerator.value",
                "a binomial metric counts people with an event, not values: leave it out",
            ));
        }
        match (&self.denominator, self.metric_type) {
            (Some(d), MetricType::Ratio) => d.check("metric.denominator")?,
            (None, MetricType::Ratio) => return Err(invalid("metric.denominator", "a ratio metric needs one")),
            (Some(_), _) => return Err(invalid("metric.denominator", "only a ratio metric has one")),
            (None, _) => {}
        }
        if !(1..=MAX_SPAN_SECONDS).contains(&self.window_seconds) {
            return Err(invalid("metric.window", "more than 0 and at most 365 days"));
        }
        if self.lookback_seconds > MAX_SPAN_SECONDS {
            return Err(invalid("metric.lookback", "at most 365 days"));
        }
        if self.lookback_seconds > 0 && self.metric_type == MetricType::Ratio {
            return Err(invalid(
                "metric.lookback",
                "a ratio metric has no covariate: 0, or leave it out",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn revenue_per_order() -> Metric {
        Metric {
            name: "revenue_per_order".into(),
            metric_type: MetricType::Ratio,
            numerator: EventFilter {
                event: "Order Completed".into(),
                value: "revenue".into(),
                ..Default::default()
            },
            denominator: Some(EventFilter {
                event: "Order Completed".into(),
                ..Default::default()
            }),
            window_seconds: 86_400,
            lookback_seconds: 0,
            inverse: false,
            guardrail: false,
            description: String::new(),
        }
    }

    #[test]
    fn an_event_adds_its_value_where_its_properties_match() {
        let mut m = revenue_per_order();
        let props = |v: Value| v.as_object().unwrap().clone();
        assert_eq!(
            m.contribution("Order Completed", &props(json!({"revenue": 12.5}))),
            Some((12.5, 1.0))
        );
        assert_eq!(
            m.contribution("Order Completed", &props(json!({"revenue": "3"}))),
            Some((3.0, 1.0))
        );
        assert_eq!(m.contribution("Order Completed", &props(json!({}))), Some((0.0, 1.0)));
        assert_eq!(m.contribution("Product Viewed", &props(json!({"revenue": 1}))), None);
        m.numerator.properties.insert("coupon".into(), "true".into());
        m.denominator = None;
        m.metric_type = MetricType::Count;
        assert_eq!(
            m.contribution("Order Completed", &props(json!({"revenue": 2, "coupon": true}))),
            Some((2.0, 0.0))
        );
        assert_eq!(
            m.contribution("Order Completed", &props(json!({"revenue": 2, "coupon": false}))),
            None
        );
    }

    #[test]
    fn a_bad_definition_names_its_field() {
        let field = |f: &dyn Fn(&mut Metric)| {
            let mut m = revenue_per_order();
            f(&mut m);
            m.check().unwrap_err().field
        };
        assert!(revenue_per_order().check().is_ok());
        assert_eq!(field(&|m| m.name = "Revenue!".into()), "metric.name");
        assert_eq!(field(&|m| m.numerator.event.clear()), "metric.numerator.event");
        assert_eq!(field(&|m| m.denominator = None), "metric.denominator");
        assert_eq!(field(&|m| m.window_seconds = 0), "metric.window");
        assert_eq!(field(&|m| m.lookback_seconds = 3600), "metric.lookback");
        assert_eq!(field(&|m| m.metric_type = MetricType::Count), "metric.denominator");
        assert_eq!(
            field(&|m| m.metric_type = MetricType::Binomial),
            "metric.numerator.value"
        );
    }
}
