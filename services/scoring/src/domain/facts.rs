//! What scoring keeps of each resolved event: a fact, read from the event's name and
//! properties by Segment's conventions (the e-commerce spec's `Order Completed`, the
//! email and push specs' engagement events, survey answers with `nps` / `csat`), and
//! nothing else of it.

use chrono::{DateTime, Datelike, TimeZone, Timelike, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::sentiment::{self, Language};

/// A step of a message's life on a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Sent,
    Delivered,
    Opened,
    Clicked,
    Unsubscribed,
}

/// One product line of a purchase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Product {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    /// Price × quantity, when the price is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spend: Option<f64>,
    pub quantity: f64,
}

/// What an event says that scoring keeps.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Fact {
    /// The engagement step and its channel, for a message event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<Stage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// The revenue of a purchase; `None` for any other event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revenue: Option<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub products: Vec<Product>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nps: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csat: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sentiment: Option<f64>,
    /// The language Corvus read the event's text in, when it scored the sentiment
    /// itself (the event carried text but no `sentiment`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sentiment_language: Option<Language>,
    /// The hour of the week (0 = Monday 00:00) in the person's time zone, for an
    /// engaging event (an open, a click, a purchase, a page or screen view).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hour_of_week: Option<u16>,
}

/// The kind of event, as far as scoring cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Track,
    View,
    Other,
}

/// An event as facts are read from it.
pub struct EventView<'a> {
    pub kind: Kind,
    /// A track event's name.
    pub name: &'a str,
    pub properties: &'a Map<String, Value>,
    /// The context's channel ("email", "web", ...), if sent.
    pub channel: Option<&'a str>,
    /// The context's IANA time zone, if sent.
    pub timezone: Option<&'a str>,
    /// The context's locale ("fr-FR"), if sent: the language of the event's text.
    pub locale: Option<&'a str>,
    pub at: DateTime<Utc>,
}

/// An event that cannot be read as its name says: the field and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("properties.{field}: {reason}")]
pub struct BadEvent {
    pub field: String,
    pub reason: String,
}

fn bad(field: impl Into<String>, reason: impl Into<String>) -> BadEvent {
    BadEvent {
        field: field.into(),
        reason: reason.into(),
    }
}

/// The engagement step an event name stands for, and the channel its name gives
/// ("Email Opened" → email), following Segment's email and push specs.
pub fn engagement(name: &str) -> Option<(Stage, Option<&'static str>)> {
    let (channel, rest) = if let Some(rest) = name.strip_prefix("Email ") {
        (Some("email"), rest)
    } else if let Some(rest) = name.strip_prefix("Push Notification ") {
        (Some("push"), rest)
    } else if let Some(rest) = name.strip_prefix("Push ") {
        (Some("push"), rest)
    } else if let Some(rest) = name.strip_prefix("SMS ") {
        (Some("sms"), rest)
    } else if let Some(rest) = name.strip_prefix("Message ") {
        (None, rest)
    } else if name == "Unsubscribed" {
        return Some((Stage::Unsubscribed, None));
    } else {
        return None;
    };
    let stage = match rest {
        "Sent" => Stage::Sent,
        "Delivered" | "Received" => Stage::Delivered,
        "Opened" => Stage::Opened,
        "Link Clicked" | "Clicked" | "Tapped" => Stage::Clicked,
        "Unsubscribed" => Stage::Unsubscribed,
        _ => return None,
    };
    Some((stage, channel))
}

/// A number sent as a JSON number or a numeric string.
fn number(properties: &Map<String, Value>, field: &str) -> Result<Option<f64>, BadEvent> {
    match properties.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_f64()),
        Some(Value::String(s)) => s
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite())
            .map(Some)
            .ok_or_else(|| bad(field, format!("{s:?} is not a number"))),
        Some(other) => Err(bad(field, format!("{other} is not a number"))),
    }
}

fn score(
    properties: &Map<String, Value>,
    field: &str,
    range: std::ops::RangeInclusive<f64>,
) -> Result<Option<f64>, BadEvent> {
    match number(properties, field)? {
        Some(v) if !range.contains(&v) => Err(bad(
            field,
            format!("{v} is outside {} to {}", range.start(), range.end()),
        )),
        v => Ok(v),
    }
}

/// The properties whose text Corvus scores the sentiment of, first found first, when
/// the event carries no `sentiment`: a survey's comment, a chat message, a mention.
pub const TEXT_FIELDS: [&str; 8] = [
    "comment", "text", "message", "body", "review", "feedback", "content", "mention",
];

/// Reads the fact of one event; `purchase` says whether a track event's name counts as
/// a purchase in its workspace.
pub fn read(event: &EventView<'_>, purchase: impl Fn(&str) -> bool) -> Result<Fact, BadEvent> {
    let mut fact = Fact::default();
    let props = event.properties;
    let mut engaging = event.kind == Kind::View;
    if event.kind == Kind::Track {
        if purchase(event.name) {
            let revenue = match number(props, "revenue")? {
                Some(v) => Some(v),
                None => number(props, "total")?,
            };
            fact.products = products(props)?;
            let lines: Option<f64> = fact.products.iter().map(|p| p.spend).sum();
            fact.revenue = Some(revenue.or(lines).unwrap_or(0.0));
            engaging = true;
        } else if let Some((stage, channel)) = engagement(event.name) {
            fact.stage = Some(stage);
            let named = props.get("channel").and_then(Value::as_str);
            fact.channel = channel
                .or(named)
                .or(event.channel)
                .map(|c| c.to_ascii_lowercase())
                .or_else(|| Some("email".to_owned()));
            engaging = matches!(stage, Stage::Opened | Stage::Clicked);
        }
    }
    fact.nps = score(props, "nps", 0.0..=10.0)?;
    fact.csat = score(props, "csat", 1.0..=5.0)?;
    fact.sentiment = score(props, "sentiment", -1.0..=1.0)?;
    if fact.sentiment.is_none()
        && let Some(text) = TEXT_FIELDS
            .iter()
            .find_map(|f| props.get(*f).and_then(Value::as_str).filter(|t| !t.trim().is_empty()))
    {
        let language = props
            .get("language")
            .and_then(Value::as_str)
            .or(event.locale)
            .and_then(Language::parse);
        if let Some(s) = sentiment::score(text, language) {
            fact.sentiment = Some(s.score);
            fact.sentiment_language = Some(s.language);
        }
    }
    if engaging {
        fact.hour_of_week = Some(hour_of_week(event.at, event.timezone));
    }
    Ok(fact)
}

fn products(props: &Map<String, Value>) -> Result<Vec<Product>, BadEvent> {
    let Some(list) = props.get("products") else {
        return Ok(Vec::new());
    };
    let Value::Array(items) = list else {
        return Err(bad("products", "must be a list of products"));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let Value::Object(p) = item else {
                return Err(bad(format!("products[{i}]"), "must be an object"));
            };
            let at = |e: BadEvent| bad(format!("products[{i}].{}", e.field), e.reason);
            let text = |field: &str| match p.get(field) {
                Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
                Some(Value::Number(n)) => Some(n.to_string()),
                _ => None,
            };
            let quantity = number(p, "quantity").map_err(at)?.unwrap_or(1.0);
            let price = number(p, "price").map_err(at)?;
            Ok(Product {
                id: text("product_id").or_else(|| text("sku")).unwrap_or_default(),
                category: text("category"),
                spend: price.map(|price| price * quantity),
                quantity,
            })
        })
        .collect()
}

/// The hour of the week (0 = Monday 00:00 to 167) of `at` in `timezone` (UTC when
/// absent or unknown).
pub fn hour_of_week(at: DateTime<Utc>, timezone: Option<&str>) -> u16 {
    let (weekday, hour) = match timezone.and_then(|tz| tz.parse::<chrono_tz::Tz>().ok()) {
        Some(tz) => {
            let local = tz.from_utc_datetime(&at.naive_utc());
            (local.weekday(), local.hour())
        }
        None => (at.weekday(), at.hour()),
    };
    (weekday.num_days_from_monday() * 24 + hour) as u16
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn view<'a>(name: &'a str, props: &'a Map<String, Value>) -> EventView<'a> {
        EventView {
            kind: Kind::Track,
            name,
            properties: props,
            channel: None,
            timezone: Some("Europe/Paris"),
            locale: None,
            // A Monday, 22:30 UTC: Tuesday 00:30 in Paris (summer time).
            at: Utc.with_ymd_and_hms(2026, 6, 1, 22, 30, 0).unwrap(),
        }
    }

    fn is_order(name: &str) -> bool {
        name == "Order Completed"
    }

    #[test]
    fn an_order_is_read_by_the_ecommerce_spec() {
        let props = json!({"total": "42.50", "products": [
            {"product_id": "p1", "category": "Books", "price": 10, "quantity": 2},
            {"sku": "s-2", "price": 22.5}
        ]});
        let fact = read(&view("Order Completed", props.as_object().unwrap()), is_order).unwrap();
        assert_eq!(fact.revenue, Some(42.5));
        assert_eq!(fact.products.len(), 2);
        assert_eq!(fact.products[0].spend, Some(20.0));
        assert_eq!(fact.products[1].id, "s-2");
        assert_eq!(fact.products[1].quantity, 1.0);
        assert_eq!(fact.hour_of_week, Some(24), "Tuesday 00:00–01:00 in Paris");
    }

    #[test]
    fn engagement_names_give_the_stage_and_channel() {
        assert_eq!(engagement("Email Link Clicked"), Some((Stage::Clicked, Some("email"))));
        assert_eq!(
            engagement("Push Notification Received"),
            Some((Stage::Delivered, Some("push")))
        );
        assert_eq!(engagement("Unsubscribed"), Some((Stage::Unsubscribed, None)));
        assert_eq!(engagement("Order Completed"), None);
        let props = json!({"channel": "SMS"});
        let fact = read(&view("Message Sent", props.as_object().unwrap()), is_order).unwrap();
        assert_eq!((fact.stage, fact.channel.as_deref()), (Some(Stage::Sent), Some("sms")));
    }

    #[test]
    fn text_without_a_sentiment_is_scored_in_its_language() {
        let props = json!({"comment": "Le service était vraiment excellent, merci !"});
        let fact = read(&view("Survey Answered", props.as_object().unwrap()), is_order).unwrap();
        assert!(fact.sentiment.unwrap() > 0.5, "{fact:?}");
        assert_eq!(fact.sentiment_language, Some(Language::Fr));
        // A sentiment sent with the event is kept as sent.
        let props = json!({"comment": "terrible", "sentiment": 0.2});
        let fact = read(&view("Survey Answered", props.as_object().unwrap()), is_order).unwrap();
        assert_eq!((fact.sentiment, fact.sentiment_language), (Some(0.2), None));
        // Text with no opinion in it has no sentiment, rather than a neutral one.
        let props = json!({"message": "order 1234 shipped to 10 Downing Street"});
        let fact = read(&view("Chat Message", props.as_object().unwrap()), is_order).unwrap();
        assert_eq!(fact.sentiment, None);
    }

    #[test]
    fn bad_values_name_their_field() {
        let props = json!({"revenue": "a lot"});
        let err = read(&view("Order Completed", props.as_object().unwrap()), is_order).unwrap_err();
        assert_eq!(err.to_string(), "properties.revenue: \"a lot\" is not a number");
        let props = json!({"products": [{"price": true}]});
        let err = read(&view("Order Completed", props.as_object().unwrap()), is_order).unwrap_err();
        assert_eq!(err.field, "products[0].price");
        let props = json!({"nps": 11});
        let err = read(&view("Survey Answered", props.as_object().unwrap()), is_order).unwrap_err();
        assert_eq!(err.to_string(), "properties.nps: 11 is outside 0 to 10");
    }
}
