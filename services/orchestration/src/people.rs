//! Who Decide decides for: a person as identity and scoring know them, read through
//! their APIs (in this process or over gRPC; the links live in the `corvus` crate).

use std::collections::HashMap;

use async_trait::async_trait;
use corvus_proto::ProfileId;
use corvus_proto::common::v1::Channel;
use corvus_proto::identity::v1::Profile;

/// The caller a request came from, passed on to identity and scoring so that they
/// check the same key.
#[derive(Debug, Clone)]
pub struct Caller {
    pub principal: corvus_platform::Principal,
    pub metadata: tonic::metadata::MetadataMap,
}

/// A person, by profile id or any identifier.
#[derive(Debug, Clone, PartialEq)]
pub enum Who {
    Profile(ProfileId),
    Identifier { kind: String, value: String },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Consent {
    pub purpose: String,
    /// Empty: every channel.
    pub channel: String,
    pub granted: bool,
}

/// What Decide reads of a person.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Person {
    pub profile: Option<ProfileId>,
    pub traits: serde_json::Map<String, serde_json::Value>,
    pub consents: Vec<Consent>,
    /// The `timezone` trait, when it names a zone.
    pub time_zone: Option<String>,
    /// The scoring audiences the person is in.
    pub audiences: Vec<String>,
    /// The needs-based segment's name.
    pub segment: Option<String>,
    pub scores: HashMap<String, f64>,
    pub preferred_channel: Option<String>,
    pub best_hour_of_week: Option<u32>,
    /// Suggested products, best first.
    pub products: Vec<String>,
    /// The person's identifiers (kind, value), strongest first: where a send goes.
    pub identifiers: Vec<(String, String)>,
}

/// The lowercase name of a channel (`email`), empty for none.
pub fn channel_name(channel: i32) -> String {
    match Channel::try_from(channel) {
        Ok(Channel::Unspecified) | Err(_) => String::new(),
        Ok(c) => c.as_str_name().trim_start_matches("CHANNEL_").to_ascii_lowercase(),
    }
}

/// The channel of a lowercase name.
pub fn channel_of(name: &str) -> Channel {
    Channel::from_str_name(&format!("CHANNEL_{}", name.to_ascii_uppercase())).unwrap_or(Channel::Unspecified)
}

impl Person {
    /// A person from identity's profile, with scoring's scores on it (GetProfile with
    /// `include_scores`).
    pub fn from_profile(profile: &Profile) -> Self {
        let traits: serde_json::Map<String, serde_json::Value> = profile
            .traits
            .iter()
            .map(|t| {
                let value = t
                    .value
                    .as_ref()
                    .map_or(serde_json::Value::Null, corvus_proto::json::value_to_json);
                (t.name.clone(), value)
            })
            .collect();
        let time_zone = ["timezone", "time_zone"]
            .iter()
            .find_map(|k| traits.get(*k).and_then(|v| v.as_str()))
            .filter(|tz| tz.parse::<chrono_tz::Tz>().is_ok())
            .map(str::to_owned);
        let mut person = Person {
            profile: profile.profile_id.parse().ok(),
            consents: profile
                .consents
                .iter()
                .map(|c| Consent {
                    purpose: c.purpose.clone(),
                    channel: channel_name(c.channel),
                    granted: c.granted,
                })
                .collect(),
            time_zone,
            traits,
            audiences: profile.segments.clone(),
            identifiers: profile
                .identifiers
                .iter()
                .map(|i| (i.kind.clone(), i.value.clone()))
                .collect(),
            ..Default::default()
        };
        for score in &profile.scores {
            match score.name.as_str() {
                "segment" => person.segment = Some(score.label.clone()),
                "preferred_channel" => person.preferred_channel = Some(score.label.clone()),
                "best_send_time" => person.best_hour_of_week = Some(score.value as u32),
                "suggested_product" => person.products.push(score.label.clone()),
                name => {
                    person.scores.insert(name.to_owned(), score.value);
                }
            }
        }
        person
    }

    /// Where a send on `channel` goes: the strongest identifier of the kind the channel
    /// reaches (email: `email`; sms and call_center: `phone`; push and app:
    /// `device_token`, else `device_id`); else the strongest of any kind, for a
    /// provider that looks the person up itself.
    pub fn address(&self, channel: &str) -> Option<(String, String)> {
        let kinds: &[&str] = match channel {
            "email" => &["email"],
            "sms" | "call_center" => &["phone"],
            "push" | "app" => &["device_token", "device_id"],
            _ => &[],
        };
        kinds
            .iter()
            .find_map(|k| self.identifiers.iter().find(|(kind, _)| kind == k))
            .or_else(|| self.identifiers.first())
            .cloned()
    }

    /// Whether every purpose is granted for `channel`: the latest consent given for the
    /// channel, else for every channel. None given is no consent.
    pub fn consents_to(&self, purposes: &[String], channel: &str) -> Result<(), String> {
        for purpose in purposes {
            let of = |ch: &str| {
                self.consents
                    .iter()
                    .rev()
                    .find(|c| &c.purpose == purpose && c.channel == ch)
                    .map(|c| c.granted)
            };
            if of(channel).or_else(|| of("")) != Some(true) {
                return Err(format!("no consent to {purpose:?} on {channel}"));
            }
        }
        Ok(())
    }
}

/// What a workspace holds that a campaign may target.
#[derive(Debug, Clone, Default)]
pub struct Targets {
    pub audiences: Vec<String>,
    /// None before the workspace's first segments fit.
    pub segments: Option<Vec<String>>,
}

#[async_trait]
pub trait Directory: Send + Sync {
    /// The person, or `None` for an unknown or erased one.
    async fn person(&self, caller: &Caller, who: &Who) -> Result<Option<Person>, String>;

    /// The workspace's audiences and segments.
    async fn targets(&self, caller: &Caller) -> Result<Targets, String>;

    /// The members of a scoring audience, or `None` for an unknown audience.
    async fn members(&self, caller: &Caller, audience: &str) -> Result<Option<Vec<ProfileId>>, String>;

    /// Every person of the workspace (each profile that stands), for what targets
    /// everyone or a segment.
    async fn population(&self, caller: &Caller) -> Result<Vec<ProfileId>, String>;

    /// A scoring audience's entries and exits after the change `after` (from now on
    /// when `None`), as they happen; the stream ends with an error when the audience is
    /// deleted or scoring cannot be asked.
    async fn audience_changes(&self, caller: &Caller, audience: &str, after: Option<u64>) -> Result<Changes, String>;
}

/// An entry into or exit from an audience, as scoring reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct AudienceChange {
    pub sequence: u64,
    pub profile: ProfileId,
    pub entered: bool,
}

pub type Changes = futures::stream::BoxStream<'static, Result<AudienceChange, String>>;
