//! The Segment spec's JSON messages as Corvus events. Accepts what the Segment and
//! RudderStack SDKs send: explicit nulls, numeric ids, identify traits under
//! `context.traits`, ISO 8601 timestamps with any offset.

use chrono::{DateTime, Utc};
use corvus_proto::common::v1::{Campaign, Channel, Context, Event, EventType, Identifier};
use corvus_proto::raw::RawStruct;
use serde_json::{Map, Value};

use super::Violation;
use super::validate::to_timestamp;

/// The event type named by a Segment `type` (or by the endpoint, for `/v1/track` …).
pub fn event_type(name: &str) -> Option<EventType> {
    Some(match name {
        "track" => EventType::Track,
        "identify" => EventType::Identify,
        "page" => EventType::Page,
        "screen" => EventType::Screen,
        "group" => EventType::Group,
        "alias" => EventType::Alias,
        _ => return None,
    })
}

/// Converts one message. `endpoint_type` is the type the endpoint implies; a batch
/// message names its own.
pub fn from_json(message: Value, endpoint_type: Option<EventType>) -> Result<Event, Violation> {
    let Value::Object(mut m) = message else {
        return Err(Violation::new("", "an event must be a JSON object"));
    };
    let kind = match (endpoint_type, m.get("type")) {
        (Some(kind), _) => kind,
        (None, Some(Value::String(t))) => event_type(t).ok_or_else(|| Violation::new("type", "unknown event type"))?,
        (None, _) => return Err(Violation::new("type", "required")),
    };
    let mut context = take_object(&mut m, "context", "context")?.unwrap_or_default();
    let traits = match take_object(&mut m, "traits", "traits")? {
        Some(t) => Some(t),
        // Identify calls of some SDKs carry the traits under context.traits only.
        None if kind == EventType::Identify => take_object(&mut context, "traits", "context.traits")?,
        None => None,
    };
    let mut event = Event {
        message_id: id_field(&m, "messageId")?,
        r#type: kind as i32,
        anonymous_id: id_field(&m, "anonymousId")?,
        user_id: id_field(&m, "userId")?,
        event: string_field(&m, "event")?,
        name: string_field(&m, "name")?,
        group_id: id_field(&m, "groupId")?,
        previous_id: id_field(&m, "previousId")?,
        properties: take_object(&mut m, "properties", "properties")?.map(|p| RawStruct::from_json(&p)),
        timestamp: match time_field(&m, "timestamp")? {
            Some(t) => Some(t),
            None => time_field(&m, "originalTimestamp")?,
        },
        sent_at: time_field(&m, "sentAt")?,
        ..Event::default()
    };
    event.identifiers = identifiers(&context, traits.as_ref(), context.get("traits"))?;
    if let Some(traits) = &traits {
        event.traits = Some(RawStruct::from_json(traits));
    }
    let channel = context
        .get("channel")
        .or_else(|| m.get("channel"))
        .and_then(Value::as_str)
        .map(channel)
        .unwrap_or(match kind {
            EventType::Page => Channel::Web,
            EventType::Screen => Channel::App,
            _ => Channel::Unspecified,
        });
    event.context = Some(convert_context(context, channel)?);
    Ok(event)
}

fn take_object(m: &mut Map<String, Value>, key: &str, field: &str) -> Result<Option<Map<String, Value>>, Violation> {
    match m.remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(o)) => Ok(Some(o)),
        Some(_) => Err(Violation::new(field, "must be an object")),
    }
}

fn id_field(m: &Map<String, Value>, key: &str) -> Result<String, Violation> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Number(n)) => Ok(n.to_string()),
        Some(_) => Err(Violation::new(key, "must be a string or a number")),
    }
}

fn string_field(m: &Map<String, Value>, key: &str) -> Result<String, Violation> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(Violation::new(key, "must be a string")),
    }
}

fn time_field(m: &Map<String, Value>, key: &str) -> Result<Option<prost_types::Timestamp>, Violation> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => parse_time(s)
            .map(|t| Some(to_timestamp(t)))
            .ok_or_else(|| Violation::new(key, "not an ISO 8601 timestamp")),
        Some(_) => Err(Violation::new(key, "must be an ISO 8601 string")),
    }
}

pub fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .or_else(|| DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f%z").ok())
        .map(|t| t.with_timezone(&Utc))
}

/// Identifiers beyond anonymousId and userId: `context.identifiers` (`{"kind": "value"}`),
/// Segment's `context.externalIds`, and `email` and `phone` among the traits.
fn identifiers(
    context: &Map<String, Value>,
    traits: Option<&Map<String, Value>>,
    context_traits: Option<&Value>,
) -> Result<Vec<Identifier>, Violation> {
    let mut out: Vec<Identifier> = Vec::new();
    let mut push = |kind: String, value: String| {
        if !out.iter().any(|i| i.kind == kind && i.value == value) {
            out.push(Identifier { kind, value });
        }
    };
    match context.get("identifiers") {
        None | Some(Value::Null) => {}
        Some(Value::Object(ids)) => {
            for (kind, value) in ids {
                match value {
                    Value::String(v) => push(kind.clone(), v.clone()),
                    Value::Number(n) => push(kind.clone(), n.to_string()),
                    _ => {
                        return Err(Violation::new(
                            format!("context.identifiers.{kind}"),
                            "must be a string",
                        ));
                    }
                }
            }
        }
        Some(_) => return Err(Violation::new("context.identifiers", "must be an object")),
    }
    if let Some(Value::Array(external)) = context.get("externalIds") {
        for (i, ext) in external.iter().enumerate() {
            let id = ext.get("id").and_then(Value::as_str);
            let kind = ext.get("type").and_then(Value::as_str);
            match (kind, id) {
                (Some(kind), Some(id)) => push(kind.to_ascii_lowercase(), id.to_owned()),
                _ => {
                    return Err(Violation::new(
                        format!("context.externalIds[{i}]"),
                        "needs an id and a type",
                    ));
                }
            }
        }
    }
    // Traits named email or phone are identifiers by convention; only usable values count.
    let context_traits = context_traits.and_then(Value::as_object);
    for source in [traits, context_traits].into_iter().flatten() {
        for kind in ["email", "phone"] {
            if let Some(Value::String(v)) = source.get(kind)
                && !v.trim().is_empty()
                && !matches!(v.trim().to_ascii_lowercase().as_str(), "null" | "undefined" | "none")
            {
                push(kind.to_owned(), v.trim().to_owned());
            }
        }
    }
    Ok(out)
}

fn channel(name: &str) -> Channel {
    match name.to_ascii_lowercase().as_str() {
        "web" | "browser" => Channel::Web,
        "app" | "mobile" | "ios" | "android" => Channel::App,
        "email" => Channel::Email,
        "sms" => Channel::Sms,
        "push" => Channel::Push,
        "call_center" | "call-center" | "phone" | "voice" => Channel::CallCenter,
        "chat" => Channel::Chat,
        "store" | "pos" | "till" => Channel::Store,
        "survey" => Channel::Survey,
        "social" => Channel::Social,
        "server" => Channel::Server,
        _ => Channel::Unspecified,
    }
}

fn convert_context(mut c: Map<String, Value>, channel: Channel) -> Result<Context, Violation> {
    c.remove("channel");
    c.remove("identifiers");
    let text = |c: &mut Map<String, Value>, key: &str| -> Result<String, Violation> {
        match c.remove(key) {
            None | Some(Value::Null) => Ok(String::new()),
            Some(Value::String(s)) => Ok(s),
            Some(_) => Err(Violation::new(format!("context.{key}"), "must be a string")),
        }
    };
    let campaign = match c.remove("campaign") {
        None | Some(Value::Null) => None,
        Some(Value::Object(mut camp)) => Some(Campaign {
            name: text(&mut camp, "name")?,
            source: text(&mut camp, "source")?,
            medium: text(&mut camp, "medium")?,
            term: text(&mut camp, "term")?,
            content: text(&mut camp, "content")?,
        }),
        Some(_) => return Err(Violation::new("context.campaign", "must be an object")),
    };
    Ok(Context {
        channel: channel as i32,
        campaign,
        locale: text(&mut c, "locale")?,
        timezone: text(&mut c, "timezone")?,
        user_agent: text(&mut c, "userAgent")?,
        ip: text(&mut c, "ip")?,
        extra: (!c.is_empty()).then(|| RawStruct::from_json(&c)),
    })
}

/// The Segment JSON name of a field named in a [`Violation`], for HTTP error bodies.
pub fn json_field(field: &str) -> String {
    let renamed = [
        ("message_id", "messageId"),
        ("anonymous_id", "anonymousId"),
        ("user_id", "userId"),
        ("group_id", "groupId"),
        ("previous_id", "previousId"),
        ("sent_at", "sentAt"),
        ("identifiers", "context.identifiers"),
    ];
    for (proto, json) in renamed {
        if let Some(rest) = field.strip_prefix(proto) {
            return format!("{json}{rest}");
        }
    }
    field.to_owned()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_rudder_identify_takes_its_traits_from_context() {
        let msg = json!({
            "type": "identify", "messageId": "m-1", "userId": "u-1", "anonymousId": null,
            "channel": "server", "timestamp": "2026-11-22T11:08:26.275228+00:00",
            "context": {"traits": {"email": "ada@example.com"}, "library": {"name": "analytics-python"}},
            "integrations": {"All": true}
        });
        let event = from_json(msg, None).unwrap();
        assert_eq!(event.r#type, EventType::Identify as i32);
        assert_eq!(event.user_id, "u-1");
        assert_eq!(event.anonymous_id, "");
        assert!(event.traits.unwrap().to_json().unwrap().contains_key("email"));
        assert_eq!(
            event.identifiers,
            vec![Identifier {
                kind: "email".into(),
                value: "ada@example.com".into()
            }]
        );
        let context = event.context.unwrap();
        assert_eq!(context.channel, Channel::Server as i32);
        assert!(context.extra.unwrap().to_json().unwrap().contains_key("library"));
        assert_eq!(event.timestamp.unwrap().nanos, 275_228_000);
    }

    #[test]
    fn numbers_are_ids_and_campaigns_are_kept() {
        let msg = json!({
            "type": "page", "messageId": 17, "userId": 42, "name": "Home",
            "context": {"campaign": {"name": "spring", "source": "newsletter"}, "locale": "en-GB",
                        "identifiers": {"loyalty_card": "LC-9"}, "externalIds": [{"id": "C-1", "type": "CRM_ID"}]}
        });
        let event = from_json(msg, None).unwrap();
        assert_eq!((event.message_id.as_str(), event.user_id.as_str()), ("17", "42"));
        let context = event.context.unwrap();
        assert_eq!(context.channel, Channel::Web as i32);
        assert_eq!(context.campaign.unwrap().source, "newsletter");
        let kinds: Vec<_> = event.identifiers.iter().map(|i| i.kind.as_str()).collect();
        assert_eq!(kinds, ["loyalty_card", "crm_id"]);
    }

    #[test]
    fn malformed_fields_are_named() {
        let cases = [
            (json!({"type": "nope"}), "type"),
            (json!({}), "type"),
            (json!({"type": "track", "userId": {}}), "userId"),
            (json!({"type": "track", "properties": [1]}), "properties"),
            (json!({"type": "track", "timestamp": "yesterday"}), "timestamp"),
            (json!({"type": "track", "context": {"ip": 1}}), "context.ip"),
        ];
        for (msg, field) in cases {
            assert_eq!(from_json(msg, None).unwrap_err().field, field);
        }
        assert_eq!(from_json(json!([1]), None).unwrap_err().field, "");
    }

    #[test]
    fn the_endpoint_sets_the_type() {
        let event = from_json(json!({"event": "Signed Up"}), Some(EventType::Track)).unwrap();
        assert_eq!(event.r#type, EventType::Track as i32);
        assert_eq!(json_field("user_id"), "userId");
        assert_eq!(json_field("identifiers[0].value"), "context.identifiers[0].value");
    }
}
