//! Events from the log as identity reads them: identifiers, traits and consent changes.

use chrono::{DateTime, Utc};
use corvus_proto::common::v1::{Channel, Event, EventType, StoredEvent};

use crate::domain::batch::{ConsentChange, IncomingEvent};
use crate::domain::resolution::{EventId, IdentityRules};

/// The track event that carries consent: properties `purpose` (text), `channel` (a channel
/// name such as `email`, or absent for every channel) and `granted` (true or false), or a
/// list of such objects under `consents`.
pub const CONSENT_EVENT: &str = "Consent Updated";

/// Why a logged event cannot be resolved (it passed ingestion's checks, so this means a
/// corrupt or foreign payload).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unreadable(pub String);

/// Reads one delivered event.
pub fn incoming(stored: &StoredEvent, rules: &IdentityRules) -> Result<IncomingEvent, Unreadable> {
    let id: EventId = stored
        .event_id
        .parse()
        .map_err(|_| Unreadable(format!("event id {:?} is not a UUID", stored.event_id)))?;
    let event = stored
        .event
        .as_ref()
        .ok_or_else(|| Unreadable(format!("event {id} has no body")))?;
    let at = time_of(event).ok_or_else(|| Unreadable(format!("event {id} has no time")))?;
    let raw = std::iter::once(("anonymous_id", event.anonymous_id.as_str()))
        .chain(std::iter::once(("user_id", event.user_id.as_str())))
        .filter(|(_, value)| !value.is_empty())
        .chain(event.identifiers.iter().map(|i| (i.kind.as_str(), i.value.as_str())));
    let identity = rules.prepare(id, at, raw);
    let event_type = EventType::try_from(event.r#type).unwrap_or(EventType::Unspecified);
    let name = match event_type {
        EventType::Track => event.event.clone(),
        _ => event.name.clone(),
    };
    let traits = match &event.traits {
        Some(traits) => Some(
            traits
                .to_json()
                .map_err(|e| Unreadable(format!("event {id} has unreadable traits: {e}")))?,
        ),
        None => None,
    };
    let consents = if event_type == EventType::Track && name.eq_ignore_ascii_case(CONSENT_EVENT) {
        let properties = match &event.properties {
            Some(p) => p
                .to_json()
                .map_err(|e| Unreadable(format!("event {id} has unreadable properties: {e}")))?,
            None => Default::default(),
        };
        consent_changes(&properties)
    } else {
        Vec::new()
    };
    Ok(IncomingEvent {
        identity,
        message_id: event.message_id.clone(),
        event_type: event.r#type as i16,
        channel: event.context.as_ref().map_or(0, |c| c.channel) as i16,
        name,
        traits,
        consents,
        onward: crate::log::onward(stored),
    })
}

fn time_of(event: &Event) -> Option<DateTime<Utc>> {
    let t = event.timestamp.as_ref().or(event.received_at.as_ref())?;
    DateTime::from_timestamp(t.seconds, t.nanos.try_into().ok()?)
}

/// The consent changes a `Consent Updated` event's properties carry; entries without a
/// purpose or a boolean `granted`, or with an unknown channel, are not consent and are
/// left out.
pub fn consent_changes(properties: &serde_json::Map<String, serde_json::Value>) -> Vec<ConsentChange> {
    let one = |object: &serde_json::Map<String, serde_json::Value>| {
        let purpose = object.get("purpose")?.as_str()?.trim();
        let granted = object.get("granted")?.as_bool()?;
        let channel = match object.get("channel").and_then(|c| c.as_str()).map(str::trim) {
            None | Some("") => 0,
            Some(name) => Channel::from_str_name(&format!("CHANNEL_{}", name.to_ascii_uppercase()))? as i16,
        };
        (!purpose.is_empty()).then(|| ConsentChange {
            purpose: purpose.to_owned(),
            channel,
            granted,
        })
    };
    match properties.get("consents").and_then(|c| c.as_array()) {
        Some(list) => list.iter().filter_map(|c| c.as_object()).filter_map(one).collect(),
        None => one(properties).into_iter().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(json: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
        json.as_object().unwrap().clone()
    }

    #[test]
    fn consent_is_read_from_one_object_or_a_list() {
        let single = consent_changes(&props(
            serde_json::json!({"purpose": "marketing", "channel": "email", "granted": true}),
        ));
        assert_eq!(
            single,
            vec![ConsentChange {
                purpose: "marketing".into(),
                channel: Channel::Email as i16,
                granted: true
            }]
        );
        let list = consent_changes(&props(serde_json::json!({"consents": [
            {"purpose": "analytics", "granted": false},
            {"purpose": "marketing", "channel": "call_center", "granted": true},
            {"purpose": "marketing", "channel": "carrier pigeon", "granted": true},
            {"purpose": "", "granted": true},
            {"purpose": "profiling", "granted": "yes"}
        ]})));
        assert_eq!(
            list.iter()
                .map(|c| (c.purpose.as_str(), c.channel, c.granted))
                .collect::<Vec<_>>(),
            vec![("analytics", 0, false), ("marketing", Channel::CallCenter as i16, true)]
        );
    }
}
