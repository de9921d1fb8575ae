//! Per-workspace rules for each identifier kind, and the first step of resolution: turning
//! an event's raw identifiers into normalised ones, dropping those that identify no one.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeDelta, Utc};

use super::{EventId, Identifier, IdentifierKind, Malformed, Normalisation};

/// Values that clients send when they have no identifier: an SDK placeholder or a default
/// from a form. Compared trimmed and ignoring ASCII case, for every kind, before
/// normalisation. Without this, every visitor whose SDK sent `"null"` would be one person.
pub const DEFAULT_BLOCKED_VALUES: &[&str] = &[
    "",
    "null",
    "nil",
    "none",
    "undefined",
    "anonymous",
    "unknown",
    "n/a",
    "nan",
    "0",
    "-1",
    "[object object]",
    "00000000-0000-0000-0000-000000000000",
];

/// At most `max` values of a kind on one profile, counting values first seen within
/// `window` before the event's time. E.g. anonymous ids: 5 a week, so that a kiosk or a
/// shared browser does not collect everyone who used it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub max: u32,
    pub window: TimeDelta,
}

/// How one identifier kind takes part in resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KindRule {
    /// Lower is stronger. Decides which identifier gives way when a rule stops a merge, and
    /// which profile survives a merge.
    pub priority: u16,
    /// A profile holds at most one value of this kind: two profiles with different values
    /// are two people and never merge.
    pub unique: bool,
    pub limit: Option<Limit>,
    /// Values of this kind that are never identifiers (e.g. a test card number). Compared
    /// after normalising them like the event's values.
    pub blocked: Vec<String>,
    pub normalisation: Normalisation,
}

impl KindRule {
    pub fn new(priority: u16) -> Self {
        Self {
            priority,
            unique: false,
            limit: None,
            blocked: Vec::new(),
            normalisation: Normalisation::Trim,
        }
    }

    pub fn unique(mut self) -> Self {
        self.unique = true;
        self
    }

    pub fn limit(mut self, max: u32, window: TimeDelta) -> Self {
        self.limit = Some(Limit { max, window });
        self
    }

    pub fn block(mut self, value: impl Into<String>) -> Self {
        self.blocked.push(value.into());
        self
    }

    pub fn normalisation(mut self, normalisation: Normalisation) -> Self {
        self.normalisation = normalisation;
        self
    }

    fn blocks(&self, normalised: &str) -> bool {
        self.blocked.iter().any(|blocked| {
            let blocked = self
                .normalisation
                .apply(blocked)
                .unwrap_or_else(|_| blocked.trim().to_owned());
            blocked == normalised
        })
    }
}

/// The identity rules of one workspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityRules {
    pub kinds: BTreeMap<IdentifierKind, KindRule>,
    /// For kinds a workspace sends without configuring them: weakest, not unique, no limit.
    pub other: KindRule,
    /// See [`DEFAULT_BLOCKED_VALUES`].
    pub blocked_everywhere: Vec<String>,
}

impl Default for IdentityRules {
    /// The standard kinds, strongest first: a login (`user_id`) and a CRM key identify a
    /// person outright and are unique; contact points can be shared or change hands; device
    /// and browser ids are the weakest, and anonymous ids are limited to 5 a week.
    fn default() -> Self {
        let kinds = [
            (IdentifierKind::user_id(), KindRule::new(10).unique()),
            (IdentifierKind::crm_id(), KindRule::new(20).unique()),
            (
                IdentifierKind::email(),
                KindRule::new(30).normalisation(Normalisation::Email { canonical_gmail: false }),
            ),
            (
                IdentifierKind::phone(),
                KindRule::new(40).normalisation(Normalisation::Phone {
                    default_country_code: None,
                }),
            ),
            (IdentifierKind::loyalty_card(), KindRule::new(50)),
            (IdentifierKind::device_id(), KindRule::new(60)),
            (
                IdentifierKind::anonymous_id(),
                KindRule::new(70).limit(5, TimeDelta::days(7)),
            ),
        ];
        Self {
            kinds: kinds.into_iter().collect(),
            other: KindRule::new(100),
            blocked_everywhere: DEFAULT_BLOCKED_VALUES.iter().map(|v| (*v).to_owned()).collect(),
        }
    }
}

/// An identifier that was left out of resolution, and why. `value` is the normalised value
/// when normalisation succeeded, else the value as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    pub kind: String,
    pub value: String,
    pub reason: DropReason,
}

impl Dropped {
    pub(super) fn identifier(identifier: &Identifier, reason: DropReason) -> Self {
        Self {
            kind: identifier.kind.as_str().to_owned(),
            value: identifier.value.clone(),
            reason,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DropReason {
    InvalidKind,
    Malformed(Malformed),
    /// A blocked value (the workspace-wide list or the kind's own).
    Blocked,
    /// Keeping it would put two values of the unique `kind` on one profile.
    Unique {
        kind: IdentifierKind,
    },
    /// Keeping it would put more than `limit.max` values of `kind` first seen within the
    /// window on one profile.
    Limit {
        kind: IdentifierKind,
        limit: Limit,
    },
}

/// An event's identifiers after [`IdentityRules::prepare`]: normalised, without duplicates,
/// strongest first. The store looks up the profiles holding any of `identifiers`.
#[derive(Debug, Clone, PartialEq)]
pub struct EventIdentity {
    pub event: EventId,
    /// The time limits are counted back from and first-seen times are set to.
    pub at: DateTime<Utc>,
    pub identifiers: Vec<Identifier>,
    pub dropped: Vec<Dropped>,
}

impl IdentityRules {
    pub fn with_kind(mut self, kind: IdentifierKind, rule: KindRule) -> Self {
        self.kinds.insert(kind, rule);
        self
    }

    pub fn rule(&self, kind: &IdentifierKind) -> &KindRule {
        self.kinds.get(kind).unwrap_or(&self.other)
    }

    pub fn priority(&self, kind: &IdentifierKind) -> u16 {
        self.rule(kind).priority
    }

    /// Strongest first; kind and value break ties so that the order never depends on the
    /// order the client sent them in.
    pub fn order<'a>(&self, identifier: &'a Identifier) -> (u16, &'a IdentifierKind, &'a str) {
        (self.priority(&identifier.kind), &identifier.kind, &identifier.value)
    }

    /// One raw identifier in normal form, or why it is not one.
    pub fn identifier(&self, kind: &str, value: &str) -> Result<Identifier, DropReason> {
        let kind = IdentifierKind::parse(kind).map_err(|_| DropReason::InvalidKind)?;
        let trimmed = value.trim();
        if self
            .blocked_everywhere
            .iter()
            .any(|blocked| blocked.trim().eq_ignore_ascii_case(trimmed))
        {
            return Err(DropReason::Blocked);
        }
        let rule = self.rule(&kind);
        let value = rule.normalisation.apply(value).map_err(DropReason::Malformed)?;
        if rule.blocks(&value) {
            return Err(DropReason::Blocked);
        }
        Ok(Identifier { kind, value })
    }

    /// The raw `(kind, value)` pairs of an event (anonymous id and user id included, as
    /// kinds `anonymous_id` and `user_id`) in normal form, strongest first.
    pub fn prepare<'a>(
        &self,
        event: EventId,
        at: DateTime<Utc>,
        raw: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> EventIdentity {
        let mut identifiers = Vec::new();
        let mut dropped = Vec::new();
        for (kind, value) in raw {
            match self.identifier(kind, value) {
                Ok(identifier) => identifiers.push(identifier),
                Err(reason) => {
                    let value = IdentifierKind::parse(kind)
                        .ok()
                        .and_then(|kind| self.rule(&kind).normalisation.apply(value).ok())
                        .unwrap_or_else(|| value.to_owned());
                    dropped.push(Dropped {
                        kind: kind.to_owned(),
                        value,
                        reason,
                    });
                }
            }
        }
        identifiers.sort_by(|a, b| self.order(a).cmp(&self.order(b)));
        identifiers.dedup();
        EventIdentity {
            event,
            at,
            identifiers,
            dropped,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> EventId {
        EventId::from(uuid::Uuid::nil())
    }

    #[test]
    fn defaults_rank_standard_kinds() {
        let rules = IdentityRules::default();
        let user = rules.rule(&IdentifierKind::user_id());
        assert!(user.unique && rules.rule(&IdentifierKind::crm_id()).unique);
        assert!(!rules.rule(&IdentifierKind::email()).unique);
        assert!(user.priority < rules.priority(&IdentifierKind::email()));
        assert!(rules.priority(&IdentifierKind::email()) < rules.priority(&IdentifierKind::anonymous_id()));
        assert_eq!(
            rules.rule(&IdentifierKind::anonymous_id()).limit,
            Some(Limit {
                max: 5,
                window: TimeDelta::days(7)
            })
        );
        let custom = IdentifierKind::parse("shoe_size_club").unwrap();
        assert_eq!(rules.rule(&custom), &rules.other);
    }

    #[test]
    fn prepare_normalises_sorts_and_deduplicates() {
        let rules = IdentityRules::default();
        let prepared = rules.prepare(
            event(),
            DateTime::UNIX_EPOCH,
            [
                ("anonymous_id", " a1 "),
                ("email", " Ada@Example.COM "),
                ("user_id", "u1"),
                ("email", "ada@example.com"),
            ],
        );
        assert_eq!(
            prepared.identifiers,
            vec![
                Identifier::new(IdentifierKind::user_id(), "u1"),
                Identifier::new(IdentifierKind::email(), "ada@example.com"),
                Identifier::new(IdentifierKind::anonymous_id(), "a1"),
            ]
        );
        assert!(prepared.dropped.is_empty());
    }

    #[test]
    fn prepare_drops_what_identifies_no_one() {
        let rules =
            IdentityRules::default().with_kind(IdentifierKind::loyalty_card(), KindRule::new(50).block("TEST-0000"));
        let prepared = rules.prepare(
            event(),
            DateTime::UNIX_EPOCH,
            [
                ("anonymous_id", " NULL "),
                ("user_id", ""),
                ("Email", "ada@example.com"),
                ("email", "not-an-email"),
                ("loyalty_card", " TEST-0000 "),
                ("loyalty_card", "L-1"),
            ],
        );
        assert_eq!(
            prepared.identifiers,
            vec![Identifier::new(IdentifierKind::loyalty_card(), "L-1")]
        );
        let reasons: Vec<_> = prepared
            .dropped
            .iter()
            .map(|d| (d.kind.as_str(), d.value.as_str(), d.reason.clone()))
            .collect();
        assert_eq!(
            reasons,
            vec![
                ("anonymous_id", "NULL", DropReason::Blocked),
                ("user_id", "", DropReason::Blocked),
                ("Email", "ada@example.com", DropReason::InvalidKind),
                ("email", "not-an-email", DropReason::Malformed(Malformed::NotAnEmail)),
                ("loyalty_card", "TEST-0000", DropReason::Blocked),
            ]
        );
    }

    #[test]
    fn blocked_values_are_compared_in_normal_form() {
        let rules = IdentityRules::default().with_kind(
            IdentifierKind::email(),
            KindRule::new(30)
                .normalisation(Normalisation::Email { canonical_gmail: false })
                .block("Test@Example.com"),
        );
        assert_eq!(rules.identifier("email", " TEST@example.COM"), Err(DropReason::Blocked));
        assert!(rules.identifier("email", "ada@example.com").is_ok());
    }
}
