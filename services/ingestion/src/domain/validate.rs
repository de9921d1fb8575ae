//! Validation at the edge, one event at a time, so that a bad event never sinks its
//! neighbours: each gets a verdict naming the offending field.

use std::time::Duration;

use chrono::{DateTime, Utc};
use corvus_proto::common::v1::{Event, EventType};
use prost_types::Timestamp;

/// Limits a workspace's events are held to.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The largest event, encoded.
    pub max_event_bytes: usize,
    /// The largest batch (gRPC message or HTTP body, after decompression).
    pub max_batch_bytes: usize,
    /// How far past the receive time a (skew-corrected) timestamp may lie.
    pub max_future: Duration,
    /// The longest message id.
    pub max_message_id_len: usize,
    /// Identifier values that name nobody: SDK placeholders and default strings.
    pub blocked_values: Vec<String>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_event_bytes: 32 * 1024,
            max_batch_bytes: 500 * 1024,
            max_future: Duration::from_secs(24 * 3600),
            max_message_id_len: 256,
            blocked_values: [
                "",
                "null",
                "undefined",
                "none",
                "nil",
                "nan",
                "anonymous",
                "unknown",
                "0",
                "-1",
                "n/a",
                "na",
                "[object object]",
                "00000000-0000-0000-0000-000000000000",
            ]
            .map(String::from)
            .to_vec(),
        }
    }
}

impl Limits {
    pub fn is_blocked(&self, value: &str) -> bool {
        let value = value.trim();
        self.blocked_values.iter().any(|b| b.eq_ignore_ascii_case(value))
    }
}

/// Why an event was refused: the field (relative to the event) and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub field: String,
    pub reason: String,
}

impl Violation {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Checks `event` (all but its encoded size, which the caller checks on the bytes it
/// stores) and normalises it in place: identifiers trimmed, `received_at` set,
/// `timestamp` corrected for the client's clock skew
/// (`timestamp = received_at - (sent_at - timestamp)`). `batch_sent_at` stands in for an
/// event without its own `sent_at`.
pub fn validate(
    event: &mut Event,
    limits: &Limits,
    received_at: DateTime<Utc>,
    batch_sent_at: Option<&Timestamp>,
) -> Result<(), Violation> {
    event.message_id = event.message_id.trim().to_owned();
    if event.message_id.is_empty() {
        return Err(Violation::new("message_id", "required"));
    }
    if event.message_id.len() > limits.max_message_id_len {
        return Err(Violation::new(
            "message_id",
            format!("longer than {} characters", limits.max_message_id_len),
        ));
    }
    let kind = EventType::try_from(event.r#type).unwrap_or(EventType::Unspecified);
    if kind == EventType::Unspecified {
        return Err(Violation::new("type", "unknown event type"));
    }

    check_identifier("anonymous_id", &mut event.anonymous_id, limits)?;
    check_identifier("user_id", &mut event.user_id, limits)?;
    for (i, id) in event.identifiers.iter_mut().enumerate() {
        if !valid_kind(&id.kind) {
            return Err(Violation::new(
                format!("identifiers[{i}].kind"),
                "must be 1 to 32 lowercase letters, digits or '_', starting with a letter",
            ));
        }
        id.value = id.value.trim().to_owned();
        if limits.is_blocked(&id.value) {
            return Err(Violation::new(
                format!("identifiers[{i}].value"),
                "blocked identifier value",
            ));
        }
    }
    // A till receipt may carry only a loyalty card, a call only a phone number: any
    // identifier names the person.
    if event.anonymous_id.is_empty() && event.user_id.is_empty() && event.identifiers.is_empty() {
        return Err(Violation::new(
            "user_id",
            "an anonymous_id, a user_id or an identifier is required",
        ));
    }
    match kind {
        EventType::Track if event.event.trim().is_empty() => {
            return Err(Violation::new("event", "required for track"));
        }
        EventType::Group if event.group_id.trim().is_empty() => {
            return Err(Violation::new("group_id", "required for group"));
        }
        EventType::Alias => {
            if event.user_id.is_empty() {
                return Err(Violation::new("user_id", "required for alias"));
            }
            check_identifier("previous_id", &mut event.previous_id, limits)?;
            if event.previous_id.is_empty() {
                return Err(Violation::new("previous_id", "required for alias"));
            }
        }
        _ => {}
    }

    // The free-form parts travel encoded; make sure every consumer can decode them.
    let free_form = [
        ("properties", event.properties.as_ref()),
        ("traits", event.traits.as_ref()),
        ("context.extra", event.context.as_ref().and_then(|c| c.extra.as_ref())),
    ];
    for (field, raw) in free_form {
        if let Some(raw) = raw {
            raw.check()
                .map_err(|reason| Violation::new(field, format!("malformed: {reason}")))?;
        }
    }

    let timestamp = corrected_timestamp(event, received_at, batch_sent_at)
        .map_err(|field| Violation::new(field, "not a valid timestamp"))?;
    let limit = received_at + limits.max_future;
    if timestamp > limit {
        return Err(Violation::new(
            "timestamp",
            format!("{timestamp} is more than {:?} in the future", limits.max_future),
        ));
    }
    event.timestamp = Some(to_timestamp(timestamp));
    event.received_at = Some(to_timestamp(received_at));
    Ok(())
}

fn check_identifier(field: &str, value: &mut String, limits: &Limits) -> Result<(), Violation> {
    if value.is_empty() {
        return Ok(());
    }
    *value = value.trim().to_owned();
    if limits.is_blocked(value) {
        return Err(Violation::new(field, "blocked identifier value"));
    }
    if value.len() > 1024 {
        return Err(Violation::new(field, "longer than 1024 characters"));
    }
    Ok(())
}

fn valid_kind(kind: &str) -> bool {
    (1..=32).contains(&kind.len())
        && kind.starts_with(|c: char| c.is_ascii_lowercase())
        && kind
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn corrected_timestamp(
    event: &Event,
    received_at: DateTime<Utc>,
    batch_sent_at: Option<&Timestamp>,
) -> Result<DateTime<Utc>, &'static str> {
    let Some(ts) = event.timestamp.as_ref() else {
        return Ok(received_at);
    };
    let ts = from_timestamp(ts).ok_or("timestamp")?;
    let sent_at = match event.sent_at.as_ref().or(batch_sent_at) {
        Some(sent) => Some(from_timestamp(sent).ok_or("sent_at")?),
        None => None,
    };
    Ok(match sent_at {
        Some(sent_at) => received_at - (sent_at - ts),
        None => ts,
    })
}

pub fn from_timestamp(ts: &Timestamp) -> Option<DateTime<Utc>> {
    u32::try_from(ts.nanos)
        .ok()
        .and_then(|nanos| DateTime::from_timestamp(ts.seconds, nanos))
}

pub fn to_timestamp(at: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: at.timestamp(),
        nanos: at.timestamp_subsec_nanos() as i32,
    }
}

#[cfg(test)]
mod tests {
    use corvus_proto::common::v1::Identifier;
    use prost::Message;

    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn track() -> Event {
        Event {
            message_id: "m-1".into(),
            r#type: EventType::Track as i32,
            anonymous_id: "anon-1".into(),
            event: "Order Completed".into(),
            ..Event::default()
        }
    }

    fn check(mut event: Event) -> Result<Event, Violation> {
        validate(&mut event, &Limits::default(), at("2026-11-22T12:00:00Z"), None).map(|()| event)
    }

    #[test]
    fn a_valid_track_is_stamped_with_receive_time() {
        let event = check(track()).unwrap();
        assert_eq!(event.received_at, Some(to_timestamp(at("2026-11-22T12:00:00Z"))));
        assert_eq!(event.timestamp, event.received_at);
    }

    #[test]
    fn clock_skew_is_corrected_from_sent_at() {
        // The client's clock runs 1 h fast: it says the event happened at 12:59:50 and
        // was sent at 13:00:00; received at 12:00:00 it happened at 11:59:50.
        let mut event = track();
        event.timestamp = Some(to_timestamp(at("2026-11-22T12:59:50Z")));
        event.sent_at = Some(to_timestamp(at("2026-11-22T13:00:00Z")));
        let event = check(event).unwrap();
        assert_eq!(event.timestamp, Some(to_timestamp(at("2026-11-22T11:59:50Z"))));
    }

    #[test]
    fn the_batch_sent_at_stands_in_for_a_missing_one() {
        let mut event = track();
        event.timestamp = Some(to_timestamp(at("2026-11-22T12:00:00Z")));
        let sent = to_timestamp(at("2026-11-22T12:00:30Z"));
        validate(&mut event, &Limits::default(), at("2026-11-22T12:00:00Z"), Some(&sent)).unwrap();
        assert_eq!(event.timestamp, Some(to_timestamp(at("2026-11-22T11:59:30Z"))));
    }

    #[test]
    fn far_future_timestamps_are_refused() {
        let mut event = track();
        event.timestamp = Some(to_timestamp(at("2026-11-25T12:00:00Z")));
        assert_eq!(check(event).unwrap_err().field, "timestamp");
        let mut event = track();
        event.timestamp = Some(to_timestamp(at("2026-11-23T11:00:00Z")));
        assert!(check(event).is_ok(), "23 h ahead is within the default day");
    }

    #[test]
    fn each_rule_names_its_field() {
        type Change = Box<dyn Fn(&mut Event)>;
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|e| e.message_id = " ".into()), "message_id"),
            (Box::new(|e| e.r#type = 0), "type"),
            (Box::new(|e| e.r#type = 42), "type"),
            (Box::new(|e| e.event.clear()), "event"),
            (Box::new(|e| e.anonymous_id = "null".into()), "anonymous_id"),
            (
                Box::new(|e| {
                    // A Struct entry "k" whose Value is a cut-off varint.
                    let bytes: &[u8] = &[0x0a, 0x06, 0x0a, 0x01, b'k', 0x12, 0x01, 0xff];
                    e.properties = Some(corvus_proto::raw::RawStruct::decode(bytes).unwrap());
                }),
                "properties",
            ),
            (Box::new(|e| e.anonymous_id = " Anonymous ".into()), "anonymous_id"),
            (Box::new(|e| e.anonymous_id.clear()), "user_id"),
            (Box::new(|e| e.user_id = "-1".into()), "user_id"),
            (
                Box::new(|e| {
                    e.identifiers.push(Identifier {
                        kind: "Email".into(),
                        value: "a@b.c".into(),
                    })
                }),
                "identifiers[0].kind",
            ),
            (
                Box::new(|e| {
                    e.identifiers.push(Identifier {
                        kind: "email".into(),
                        value: "undefined".into(),
                    })
                }),
                "identifiers[0].value",
            ),
            (
                Box::new(|e| {
                    e.r#type = EventType::Group as i32;
                }),
                "group_id",
            ),
            (
                Box::new(|e| {
                    e.r#type = EventType::Alias as i32;
                    e.user_id = "u-1".into();
                }),
                "previous_id",
            ),
        ];
        for (change, field) in cases {
            let mut event = track();
            change(&mut event);
            assert_eq!(check(event).unwrap_err().field, field);
        }
    }

    #[test]
    fn any_identifier_names_the_person() {
        let mut till = track();
        till.anonymous_id.clear();
        till.identifiers.push(Identifier {
            kind: "loyalty_card".into(),
            value: "L-1".into(),
        });
        assert!(check(till).is_ok(), "a till receipt with only a loyalty card");
    }

    #[test]
    fn identifiers_are_trimmed() {
        let mut event = track();
        event.user_id = "  u-7 ".into();
        assert_eq!(check(event).unwrap().user_id, "u-7");
    }
}
