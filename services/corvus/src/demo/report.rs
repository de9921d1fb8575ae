//! What `corvus demo` prints: the figures of the run, and one person's 360° profile next
//! to the truth about them. The same structures serialise to JSON for `--json`.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use corvus_ingestion::domain::validate::from_timestamp;
use corvus_proto::common::v1::{Channel, EventType};
use corvus_proto::identity::v1::{MatchRule, Profile, ProfileIdentifier};
use corvus_proto::json::value_to_json;
use prost_types::Timestamp;
use serde::Serialize;

use super::Resolution;
use super::population::Person;

#[derive(Debug, Serialize)]
pub struct Report {
    pub run_id: String,
    pub seed: u64,
    pub people: usize,
    pub days: i64,
    pub events: u64,
    pub accepted: u64,
    pub duplicates: u64,
    pub rejected: u64,
    pub send_seconds: f64,
    pub events_per_second: f64,
    /// From the last ack until identity had resolved every event.
    pub identity_seconds: f64,
    pub dead_letters: u64,
    /// The best deterministic resolution could do: every identifier joined to those the
    /// events carry it with, nothing else.
    pub linkable: Resolution,
    /// After deterministic resolution.
    pub resolution: Resolution,
    pub households: Households,
    /// Events the profiles found count: `events` unless identity lost or double-counted some.
    pub events_on_profiles: u64,
    /// After probabilistic matching, when it was run.
    pub matching: Option<Matching>,
    pub featured: Option<Featured>,
}

#[derive(Debug, Serialize)]
pub struct Households {
    /// Couples who share a tablet, each signed in with their own user id.
    pub shared_tablets: usize,
    /// Tablets found on a profile.
    pub tablets_found: usize,
    /// Couples whose user ids ended up on one profile.
    pub merged: usize,
}

#[derive(Debug, Serialize)]
pub struct Matching {
    pub seconds: f64,
    pub auto_merged: u64,
    pub queued_for_review: u64,
    pub resolution: Resolution,
    pub households: Households,
    pub events_on_profiles: u64,
}

/// One person: who they are, and the profile Corvus holds on them.
#[derive(Debug, Serialize)]
pub struct Featured {
    pub person: usize,
    pub name: String,
    /// How some of their records misspell the name.
    pub misspelt_as: Option<String>,
    pub shares_tablet: bool,
    /// Events sent about them.
    pub events: usize,
    /// Their identifiers, and whether each is on the profile.
    pub identifiers: Vec<TrueIdentifier>,
    pub profile: Option<ProfileView>,
}

#[derive(Debug, Serialize)]
pub struct TrueIdentifier {
    pub kind: &'static str,
    pub value: String,
    pub on_profile: bool,
}

impl Featured {
    pub fn new(person: &Person, profile: Option<Profile>) -> Self {
        let held = |kind: &str, value: &str| {
            profile
                .as_ref()
                .is_some_and(|p| p.identifiers.iter().any(|i| i.kind == kind && i.value == value))
        };
        Self {
            person: person.index,
            name: person.name(),
            misspelt_as: person.misspelt.as_ref().map(|(first, last)| format!("{first} {last}")),
            shares_tablet: person.shared_tablet.is_some(),
            events: person.events,
            identifiers: person
                .identifiers
                .iter()
                .map(|(kind, value)| TrueIdentifier {
                    kind,
                    value: value.clone(),
                    on_profile: held(kind, value),
                })
                .collect(),
            profile: profile.as_ref().map(ProfileView::from),
        }
    }
}

/// A profile in plain types, for printing and JSON.
#[derive(Debug, Serialize)]
pub struct ProfileView {
    pub profile_id: String,
    pub merged_profile_ids: Vec<String>,
    pub first_seen: Option<DateTime<Utc>>,
    pub last_seen: Option<DateTime<Utc>>,
    pub event_count: u64,
    pub version: u64,
    pub identifiers: Vec<IdentifierView>,
    pub traits: Vec<TraitView>,
    pub consents: Vec<ConsentView>,
    pub event_counts: Vec<EventCountView>,
    pub recent_events: Vec<RecentEventView>,
    pub merges: Vec<MergeView>,
}

#[derive(Debug, Serialize)]
pub struct IdentifierView {
    pub kind: String,
    pub value: String,
    pub first_seen: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize)]
pub struct TraitView {
    pub name: String,
    pub value: serde_json::Value,
    pub set_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize)]
pub struct ConsentView {
    pub purpose: String,
    /// Empty for every channel.
    pub channel: String,
    pub granted: bool,
    pub set_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize)]
pub struct EventCountView {
    pub channel: String,
    pub r#type: String,
    pub count: u64,
}

#[derive(Debug, Serialize)]
pub struct RecentEventView {
    pub timestamp: Option<DateTime<Utc>>,
    pub channel: String,
    pub r#type: String,
    pub name: String,
}

#[derive(Debug, Serialize)]
pub struct MergeView {
    pub merged_at: Option<DateTime<Utc>>,
    pub rule: String,
    pub confidence: f64,
    pub survivor_profile_id: String,
    pub merged_profile_id: String,
    pub survivor_via: String,
    pub merged_via: String,
    pub unmerged_at: Option<DateTime<Utc>>,
}

fn time(ts: Option<&Timestamp>) -> Option<DateTime<Utc>> {
    ts.and_then(from_timestamp)
}

fn channel_name(channel: i32) -> String {
    match Channel::try_from(channel) {
        Ok(Channel::Unspecified) | Err(_) => String::new(),
        Ok(channel) => channel.as_str_name().trim_start_matches("CHANNEL_").to_owned(),
    }
}

fn type_name(kind: i32) -> String {
    EventType::try_from(kind)
        .map(|t| t.as_str_name().trim_start_matches("EVENT_TYPE_").to_owned())
        .unwrap_or_default()
}

fn via(identifier: Option<&ProfileIdentifier>) -> String {
    identifier
        .map(|i| format!("{}:{}", i.kind, i.value))
        .unwrap_or_default()
}

impl From<&Profile> for ProfileView {
    fn from(p: &Profile) -> Self {
        Self {
            profile_id: p.profile_id.clone(),
            merged_profile_ids: p.merged_profile_ids.clone(),
            first_seen: time(p.first_seen.as_ref()),
            last_seen: time(p.last_seen.as_ref()),
            event_count: p.event_count,
            version: p.version,
            identifiers: p
                .identifiers
                .iter()
                .map(|i| IdentifierView {
                    kind: i.kind.clone(),
                    value: i.value.clone(),
                    first_seen: time(i.first_seen.as_ref()),
                })
                .collect(),
            traits: p
                .traits
                .iter()
                .map(|t| TraitView {
                    name: t.name.clone(),
                    value: t.value.as_ref().map(value_to_json).unwrap_or_default(),
                    set_at: time(t.set_at.as_ref()),
                })
                .collect(),
            consents: p
                .consents
                .iter()
                .map(|c| ConsentView {
                    purpose: c.purpose.clone(),
                    channel: channel_name(c.channel),
                    granted: c.granted,
                    set_at: time(c.set_at.as_ref()),
                })
                .collect(),
            event_counts: p
                .event_counts
                .iter()
                .map(|c| EventCountView {
                    channel: channel_name(c.channel),
                    r#type: type_name(c.r#type),
                    count: c.count,
                })
                .collect(),
            recent_events: p
                .recent_events
                .iter()
                .map(|e| RecentEventView {
                    timestamp: time(e.timestamp.as_ref()),
                    channel: channel_name(e.channel),
                    r#type: type_name(e.r#type),
                    name: e.name.clone(),
                })
                .collect(),
            merges: p
                .merges
                .iter()
                .map(|m| MergeView {
                    merged_at: time(m.merged_at.as_ref()),
                    rule: MatchRule::try_from(m.rule)
                        .map(|r| r.as_str_name().trim_start_matches("MATCH_RULE_").to_owned())
                        .unwrap_or_default(),
                    confidence: m.confidence,
                    survivor_profile_id: m.survivor_profile_id.clone(),
                    merged_profile_id: m.merged_profile_id.clone(),
                    survivor_via: via(m.survivor_via.as_ref()),
                    merged_via: via(m.merged_via.as_ref()),
                    unmerged_at: time(m.unmerged_at.as_ref()),
                })
                .collect(),
        }
    }
}

fn at(time: Option<DateTime<Utc>>) -> String {
    time.map(|t| t.format("%Y-%m-%d %H:%M").to_string())
        .unwrap_or_else(|| "-".to_owned())
}

impl Report {
    /// The report as text, one figure a line.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let w = &mut out;
        let _ = writeln!(
            w,
            "corvus demo, run {} (seed {}): {} people over {} days",
            self.run_id, self.seed, self.people, self.days
        );
        let _ = writeln!(
            w,
            "  events       {} sent in {:.1} s ({:.0} events/s): {} accepted, {} duplicates, {} rejected",
            self.events, self.send_seconds, self.events_per_second, self.accepted, self.duplicates, self.rejected
        );
        let _ = writeln!(
            w,
            "  identity     caught up {:.1} s after the last ack, {} dead letters",
            self.identity_seconds, self.dead_letters
        );
        render_resolution(w, &self.resolution, &self.households);
        render_events(w, self.events_on_profiles, self.events);
        let _ = writeln!(
            w,
            "  the events allow at most recall {:.4}, {} profiles, {} split people: the rest needs matching",
            self.linkable.recall, self.linkable.profiles, self.linkable.split_people
        );
        if let Some(m) = &self.matching {
            let _ = writeln!(
                w,
                "after probabilistic matching ({:.1} s): {} profiles merged, {} pairs queued for review",
                m.seconds, m.auto_merged, m.queued_for_review
            );
            render_resolution(w, &m.resolution, &m.households);
            render_events(w, m.events_on_profiles, self.events);
        }
        if let Some(featured) = &self.featured {
            let _ = writeln!(w);
            featured.render(w);
        }
        out
    }
}

fn render_resolution(w: &mut String, r: &Resolution, households: &Households) {
    let _ = writeln!(
        w,
        "  profiles     {} for {} people ({} identifiers looked up, {} on no profile)",
        r.profiles, r.people, r.identifiers, r.not_found
    );
    let _ = writeln!(
        w,
        "  precision    {:.4}  of identifier pairs on one profile, the share that are one person's",
        r.precision
    );
    let _ = writeln!(
        w,
        "  recall       {:.4}  of identifier pairs of one person, the share on one profile",
        r.recall
    );
    let _ = writeln!(w, "  split        {} people over more than one profile", r.split_people);
    let _ = writeln!(
        w,
        "  over-merged  {} profiles holding more than one person",
        r.overmerged_profiles
    );
    let _ = writeln!(
        w,
        "  exact        {} people on a profile of their own that holds all their identifiers",
        r.exact_people
    );
    let _ = writeln!(
        w,
        "  households   {} couples share a tablet: {} merged into one profile ({} tablets on a profile)",
        households.shared_tablets, households.merged, households.tablets_found
    );
}

fn render_events(w: &mut String, counted: u64, sent: u64) {
    let verdict = match counted.cmp(&sent) {
        std::cmp::Ordering::Equal => "none lost or counted twice".to_owned(),
        std::cmp::Ordering::Less => format!("{} missing", sent - counted),
        std::cmp::Ordering::Greater => format!("{} too many", counted - sent),
    };
    let _ = writeln!(
        w,
        "  events       the profiles count {counted} of the {sent} events sent: {verdict}"
    );
}

impl Featured {
    fn render(&self, w: &mut String) {
        let mut about = format!("{} (person {})", self.name, self.person);
        if self.shares_tablet {
            about.push_str(", shares a tablet at home");
        }
        if let Some(misspelt) = &self.misspelt_as {
            let _ = write!(about, ", some records say {misspelt:?}");
        }
        let _ = writeln!(w, "One person, as Corvus sees them: {about}");
        let Some(p) = &self.profile else {
            let _ = writeln!(w, "  no profile holds their strongest identifier");
            return;
        };
        let _ = writeln!(
            w,
            "  profile {}: {} events from {} to {}, {} profiles merged in, version {}",
            p.profile_id,
            p.event_count,
            at(p.first_seen),
            at(p.last_seen),
            p.merged_profile_ids.len(),
            p.version
        );
        let _ = writeln!(w, "  identifiers, strongest first");
        for i in &p.identifiers {
            let _ = writeln!(w, "    {:<14} {:<40} first seen {}", i.kind, i.value, at(i.first_seen));
        }
        let _ = writeln!(w, "  traits");
        for t in &p.traits {
            let _ = writeln!(w, "    {:<14} {:<40} set {}", t.name, t.value.to_string(), at(t.set_at));
        }
        let _ = writeln!(w, "  consents");
        for c in &p.consents {
            let channel = if c.channel.is_empty() {
                "every channel"
            } else {
                &c.channel
            };
            let granted = if c.granted { "granted" } else { "refused" };
            let _ = writeln!(
                w,
                "    {:<14} {:<14} {:<25} set {}",
                c.purpose,
                channel,
                granted,
                at(c.set_at)
            );
        }
        let _ = writeln!(w, "  events by channel and type");
        let mut channels: Vec<&str> = Vec::new();
        for count in &p.event_counts {
            if !channels.contains(&count.channel.as_str()) {
                channels.push(&count.channel);
            }
        }
        for channel in channels {
            let counts: Vec<String> = p
                .event_counts
                .iter()
                .filter(|c| c.channel == channel)
                .map(|c| format!("{} {}", c.r#type, c.count))
                .collect();
            let channel = if channel.is_empty() { "(none)" } else { channel };
            let _ = writeln!(w, "    {:<14} {}", channel, counts.join(", "));
        }
        let _ = writeln!(w, "  recent events");
        for e in p.recent_events.iter().take(10) {
            let _ = writeln!(
                w,
                "    {}  {:<12} {:<9} {}",
                at(e.timestamp),
                e.channel,
                e.r#type,
                e.name
            );
        }
        let _ = writeln!(w, "  merges, newest first");
        for m in &p.merges {
            let undone = m
                .unmerged_at
                .map(|t| format!(", undone {}", at(Some(t))))
                .unwrap_or_default();
            let _ = writeln!(
                w,
                "    {}  {:<13} {} absorbed {} ({} met {}, confidence {:.2}){undone}",
                at(m.merged_at),
                m.rule,
                m.survivor_profile_id,
                m.merged_profile_id,
                m.survivor_via,
                m.merged_via,
                m.confidence
            );
        }
        let on = self.identifiers.iter().filter(|i| i.on_profile).count();
        let _ = writeln!(
            w,
            "  the truth: {} events were sent about them; {on} of their {} identifiers are on this profile",
            self.events,
            self.identifiers.len()
        );
        for missing in self.identifiers.iter().filter(|i| !i.on_profile) {
            let _ = writeln!(w, "    missing {}:{}", missing.kind, missing.value);
        }
    }
}
