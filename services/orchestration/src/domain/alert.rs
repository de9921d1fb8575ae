//! Alert rules: what each kind looks for in an event or in a person's scores, what a
//! rule must hold to be kept, the words an alert gives as its reason, and the summary
//! of the person it is about.

use std::fmt;

use corvus_scoring::domain::facts::TEXT_FIELDS;
use corvus_scoring::domain::sentiment::{self, Language};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::domain::campaign::check_name;
use crate::people::Person;

pub const DEFAULT_MAX_NPS: f64 = 6.0;
pub const DEFAULT_MAX_SENTIMENT: f64 = -0.25;
pub const DEFAULT_MIN_INCREASE: f64 = 0.2;
pub const DEFAULT_RECHECK_SECONDS: u64 = 3_600;
pub const DEFAULT_COOLDOWN_SECONDS: u64 = 86_400;
pub const DEFAULT_COMPLAINT_EVENT: &str = "Complaint Filed";
pub const DEFAULT_SENTIMENT_CHANNELS: [&str; 2] = ["chat", "social"];

const MAX_RECHECK_SECONDS: u64 = 30 * 86_400;
const MAX_WINDOW_DAYS: u32 = 90;
const MAX_COOLDOWN_SECONDS: u64 = 365 * 86_400;
const MIN_SECRET_CHARS: usize = 16;
/// The most of an event's text an alert quotes.
const QUOTED_CHARS: usize = 140;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Detractor,
    NegativeSentiment,
    ChurnRiskJump,
    Complaint,
    SatisfactionDrop,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Detractor => "detractor",
            Self::NegativeSentiment => "negative_sentiment",
            Self::ChurnRiskJump => "churn_risk_jump",
            Self::Complaint => "complaint",
            Self::SatisfactionDrop => "satisfaction_drop",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [
            Self::Detractor,
            Self::NegativeSentiment,
            Self::ChurnRiskJump,
            Self::Complaint,
            Self::SatisfactionDrop,
        ]
        .into_iter()
        .find(|k| k.as_str() == text)
    }
}

/// What a rule looks for, with its thresholds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Condition {
    /// An answer with `nps` at most `max_nps`.
    Detractor { max_nps: f64 },
    /// An event on one of `channels` with a sentiment (sent, or scored from its text) at
    /// most `max_sentiment`.
    NegativeSentiment { max_sentiment: f64, channels: Vec<String> },
    /// Churn risk up by `min_increase` since last looked at, for a CLV of `min_clv` or
    /// more; looked at most once per `recheck_seconds`.
    ChurnRiskJump {
        min_increase: f64,
        min_clv: f64,
        recheck_seconds: u64,
    },
    /// One of the rule's events.
    Complaint,
    /// The workspace's NPS or CSAT over the last `window_days` significantly below the
    /// same span before (one-sided, at `significance`), or its mentions significantly
    /// more; each span with at least `min_responses`. Looked at periodically, from
    /// measurement; the alert names no person.
    SatisfactionDrop {
        feedback: Feedback,
        window_days: u32,
        significance: f64,
        min_responses: u64,
    },
}

/// What a satisfaction rule watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Feedback {
    Nps,
    Csat,
    Mentions,
}

impl Feedback {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Nps => "nps",
            Self::Csat => "csat",
            Self::Mentions => "mentions",
        }
    }
}

/// A span's feedback as measurement gives it: the answers (or mentions), and the score
/// with its standard error.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Span {
    pub responses: u64,
    pub score: f64,
    pub stderr: f64,
}

/// The reason a satisfaction rule raises an alert, if it does: NPS or CSAT lower in
/// `current` than in `previous` by more than chance allows (a z-test on the difference,
/// one-sided); mentions more (given both spans' total, the current span's share is a
/// binomial of one half under an unchanged rate).
pub fn satisfaction_drop(condition: &Condition, previous: &Span, current: &Span) -> Option<String> {
    let Condition::SatisfactionDrop {
        feedback,
        window_days,
        significance,
        min_responses,
    } = condition
    else {
        return None;
    };
    if previous.responses < *min_responses || current.responses < *min_responses {
        return None;
    }
    let days = match window_days {
        1 => "day".to_owned(),
        n => format!("{n} days"),
    };
    match feedback {
        Feedback::Nps | Feedback::Csat => {
            let drop = previous.score - current.score;
            let se = (previous.stderr.powi(2) + current.stderr.powi(2)).sqrt();
            if drop <= 0.0 {
                return None;
            }
            // Without any spread in either span, a drop is no chance.
            let p = if se > 0.0 { 1.0 - normal_cdf(drop / se) } else { 0.0 };
            (p < *significance).then(|| {
                format!(
                    "{} fell from {:.1} to {:.1} ({:+.1} points) over the last {days}, p = {p:.2e}",
                    feedback.as_str().to_ascii_uppercase(),
                    previous.score,
                    current.score,
                    -drop
                )
            })
        }
        Feedback::Mentions => {
            let (c, b) = (current.responses as f64, previous.responses as f64);
            let n = c + b;
            let z = (c - n / 2.0) / (n / 4.0).sqrt();
            let p = 1.0 - normal_cdf(z);
            (c > b && p < *significance).then(|| {
                format!(
                    "mentions rose from {} to {} over the last {days}, p = {p:.2e}",
                    previous.responses, current.responses
                )
            })
        }
    }
}

/// The standard normal distribution function.
fn normal_cdf(x: f64) -> f64 {
    0.5 * libm::erfc(-x / std::f64::consts::SQRT_2)
}

impl Condition {
    pub fn kind(&self) -> Kind {
        match self {
            Self::Detractor { .. } => Kind::Detractor,
            Self::NegativeSentiment { .. } => Kind::NegativeSentiment,
            Self::ChurnRiskJump { .. } => Kind::ChurnRiskJump,
            Self::Complaint => Kind::Complaint,
            Self::SatisfactionDrop { .. } => Kind::SatisfactionDrop,
        }
    }
}

/// Where a rule's alerts are POSTed, signed with `secret`.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Webhook {
    pub url: String,
    pub secret: String,
}

impl fmt::Debug for Webhook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Webhook")
            .field("url", &self.url)
            .field("secret", &"<hidden>")
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rule {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub condition: Condition,
    /// Only events of these names; every track event when empty.
    #[serde(default)]
    pub events: Vec<String>,
    pub cooldown_seconds: u64,
    #[serde(default)]
    pub webhook: Option<Webhook>,
}

fn within(field: &str, value: f64, low: f64, high: f64, low_open: bool) -> Result<(), (String, String)> {
    let above = if low_open { value > low } else { value >= low };
    match value.is_finite() && above && value <= high {
        true => Ok(()),
        false => Err((
            field.to_owned(),
            format!("{value} is outside {}{low}, {high}]", if low_open { "(" } else { "[" }),
        )),
    }
}

impl Rule {
    pub fn kind(&self) -> Kind {
        self.condition.kind()
    }

    /// Everything a rule must hold, with the first problem's field.
    pub fn check(&self) -> Result<(), (String, String)> {
        check_name(&self.name).map_err(|e| ("rule.name".to_owned(), e))?;
        if self.description.chars().count() > 1_000 {
            return Err(("rule.description".to_owned(), "1000 characters at most".to_owned()));
        }
        for (i, event) in self.events.iter().enumerate() {
            if event.trim().is_empty() || event.len() > 200 {
                return Err((
                    format!("rule.events[{i}]"),
                    "an event name of 1 to 200 characters".to_owned(),
                ));
            }
        }
        match &self.condition {
            Condition::Detractor { max_nps } => within("rule.max_nps", *max_nps, 0.0, 10.0, false)?,
            Condition::NegativeSentiment {
                max_sentiment,
                channels,
            } => {
                within("rule.max_sentiment", *max_sentiment, -1.0, 0.0, false)?;
                if channels.is_empty() {
                    return Err(("rule.channels".to_owned(), "at least one channel".to_owned()));
                }
            }
            Condition::ChurnRiskJump {
                min_increase,
                min_clv,
                recheck_seconds,
            } => {
                within("rule.min_increase", *min_increase, 0.0, 1.0, true)?;
                within("rule.min_clv", *min_clv, 0.0, f64::MAX, false)?;
                if *recheck_seconds > MAX_RECHECK_SECONDS {
                    return Err(("rule.recheck".to_owned(), "30 days at most".to_owned()));
                }
            }
            Condition::Complaint => {
                if self.events.is_empty() {
                    return Err(("rule.events".to_owned(), "at least one complaint event".to_owned()));
                }
            }
            Condition::SatisfactionDrop {
                window_days,
                significance,
                ..
            } => {
                if !(1..=MAX_WINDOW_DAYS).contains(window_days) {
                    return Err(("rule.window".to_owned(), "whole days, 1 to 90".to_owned()));
                }
                within("rule.significance", *significance, 0.0, 0.5, true)?;
                if !self.events.is_empty() {
                    return Err((
                        "rule.events".to_owned(),
                        "a satisfaction rule reads measurement's figures, not events".to_owned(),
                    ));
                }
            }
        }
        if !(1..=MAX_COOLDOWN_SECONDS).contains(&self.cooldown_seconds) {
            return Err((
                "rule.cooldown".to_owned(),
                "at least 1 second and at most 365 days".to_owned(),
            ));
        }
        if let Some(hook) = &self.webhook {
            let url = reqwest::Url::parse(&hook.url).map_err(|e| {
                (
                    "rule.webhook.url".to_owned(),
                    format!("{:?} is not a URL: {e}", hook.url),
                )
            })?;
            if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
                return Err((
                    "rule.webhook.url".to_owned(),
                    format!("{:?} is not an http or https URL", hook.url),
                ));
            }
            if hook.secret.chars().count() < MIN_SECRET_CHARS {
                return Err((
                    "rule.webhook.secret".to_owned(),
                    format!("at least {MIN_SECRET_CHARS} characters"),
                ));
            }
        }
        Ok(())
    }

    /// Whether an event of this name is one the rule looks at.
    pub fn admits(&self, event: &str) -> bool {
        self.events.is_empty() || self.events.iter().any(|e| e == event)
    }
}

/// An event as a rule looks at it.
#[derive(Debug, Clone, Copy)]
pub struct Seen<'a> {
    pub name: &'a str,
    /// The context's channel, lowercase; empty when unspecified.
    pub channel: &'a str,
    pub locale: &'a str,
    pub properties: &'a Map<String, Value>,
}

/// A number sent as a number or as a numeric string.
fn number(props: &Map<String, Value>, key: &str) -> Option<f64> {
    match props.get(key)? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .filter(|v: &f64| v.is_finite())
}

/// The event's text (a comment, a message, a mention), first found first.
fn text(props: &Map<String, Value>) -> Option<&str> {
    TEXT_FIELDS
        .iter()
        .find_map(|f| props.get(*f).and_then(Value::as_str).filter(|t| !t.trim().is_empty()))
}

/// `: "the text"`, cut to `QUOTED_CHARS`; empty without text.
fn quoted(text: Option<&str>) -> String {
    match text {
        None => String::new(),
        Some(t) => {
            let t = t.trim();
            let mut cut: String = t.chars().take(QUOTED_CHARS).collect();
            if cut.len() < t.len() {
                cut.push('…');
            }
            format!(": {cut:?}")
        }
    }
}

/// Whether the event can be judged under a condition without reading its properties:
/// false when it certainly raises nothing. `raw` is the encoded properties, searched
/// for the key a detractor needs.
pub fn may_match(condition: &Condition, seen_channel: &str, raw: &[u8]) -> bool {
    match condition {
        Condition::Detractor { .. } => raw.windows(3).any(|w| w == b"nps"),
        Condition::NegativeSentiment { channels, .. } => {
            seen_channel.is_empty() || channels.iter().any(|c| c == seen_channel)
        }
        Condition::Complaint => true,
        Condition::ChurnRiskJump { .. } | Condition::SatisfactionDrop { .. } => false,
    }
}

/// The reason an event raises an alert under a condition, if it does. Churn-risk rules
/// judge scores, not events: see [`churn_jump`].
pub fn judge(condition: &Condition, seen: &Seen<'_>) -> Option<String> {
    let props = seen.properties;
    match condition {
        Condition::Detractor { max_nps } => {
            let nps = number(props, "nps").filter(|n| (0.0..=10.0).contains(n))?;
            (nps <= *max_nps).then(|| {
                format!(
                    "NPS {nps} on {:?}: a detractor, {max_nps} or less{}",
                    seen.name,
                    quoted(text(props))
                )
            })
        }
        Condition::NegativeSentiment {
            max_sentiment,
            channels,
        } => {
            let channel = match seen.channel {
                "" => props.get("channel").and_then(Value::as_str)?.to_ascii_lowercase(),
                named => named.to_owned(),
            };
            if !channels.contains(&channel) {
                return None;
            }
            let text = text(props);
            let score = match number(props, "sentiment").filter(|s| (-1.0..=1.0).contains(s)) {
                Some(sent) => sent,
                None => {
                    let language = props
                        .get("language")
                        .and_then(Value::as_str)
                        .or(Some(seen.locale).filter(|l| !l.is_empty()))
                        .and_then(Language::parse);
                    sentiment::score(text?, language)?.score
                }
            };
            (score <= *max_sentiment).then(|| {
                format!(
                    "negative sentiment {score:.2} on {channel}, {max_sentiment} or less{}",
                    quoted(text)
                )
            })
        }
        Condition::Complaint => Some(format!(
            "complaint {:?}{}",
            seen.name,
            quoted(text(props).or_else(|| props.get("reason").and_then(Value::as_str)))
        )),
        Condition::ChurnRiskJump { .. } | Condition::SatisfactionDrop { .. } => None,
    }
}

/// The reason a churn-risk rule raises an alert, if it does: the risk rose from
/// `before` to `now` by at least `min_increase`, for a customer of CLV `min_clv` or more.
pub fn churn_jump(condition: &Condition, before: f64, now: f64, clv: Option<f64>) -> Option<String> {
    let Condition::ChurnRiskJump {
        min_increase, min_clv, ..
    } = condition
    else {
        return None;
    };
    let clv = clv.unwrap_or(0.0);
    // A rise computed from two stored floats may fall a hair short of one it equals.
    let risen = now - before >= min_increase - 1e-9;
    (risen && clv >= *min_clv).then(|| {
        format!(
            "churn risk rose from {before:.2} to {now:.2} (by {:.2}; {min_increase} or more) for a customer with CLV {clv:.2}",
            now - before
        )
    })
}

/// Who an alert is about, as the directory knew them when it was raised.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub name: String,
    pub email: String,
    pub region: String,
    pub segment: String,
    pub clv: Option<f64>,
    pub churn_risk: Option<f64>,
}

impl Summary {
    pub fn of(person: &Person) -> Self {
        let trait_text = |key: &str| {
            person
                .traits
                .get(key)
                .and_then(|v| match v {
                    Value::String(s) => Some(s.trim().to_owned()),
                    Value::Number(n) => Some(n.to_string()),
                    _ => None,
                })
                .filter(|s| !s.is_empty())
        };
        let name = trait_text("name").unwrap_or_else(|| {
            [trait_text("first_name"), trait_text("last_name")]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(" ")
        });
        let email = trait_text("email")
            .or_else(|| {
                person
                    .identifiers
                    .iter()
                    .find(|(kind, _)| kind == "email")
                    .map(|(_, v)| v.clone())
            })
            .unwrap_or_default();
        Self {
            name,
            email,
            region: trait_text("region")
                .or_else(|| trait_text("country"))
                .unwrap_or_default(),
            segment: person.segment.clone().unwrap_or_default(),
            clv: person.scores.get("clv").copied(),
            churn_risk: person.scores.get("churn_risk").copied(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rule(condition: Condition) -> Rule {
        Rule {
            name: "hot".to_owned(),
            description: String::new(),
            condition,
            events: Vec::new(),
            cooldown_seconds: DEFAULT_COOLDOWN_SECONDS,
            webhook: None,
        }
    }

    fn seen<'a>(name: &'a str, channel: &'a str, props: &'a Map<String, Value>) -> Seen<'a> {
        Seen {
            name,
            channel,
            locale: "",
            properties: props,
        }
    }

    fn props(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn a_detractor_is_an_nps_of_the_threshold_or_less() {
        let c = Condition::Detractor { max_nps: 6.0 };
        let six = props(json!({"nps": 6, "comment": "meh"}));
        assert_eq!(
            judge(&c, &seen("Survey Answered", "", &six)).unwrap(),
            r#"NPS 6 on "Survey Answered": a detractor, 6 or less: "meh""#
        );
        assert!(judge(&c, &seen("Survey Answered", "", &props(json!({"nps": "3"})))).is_some());
        assert!(judge(&c, &seen("Survey Answered", "", &props(json!({"nps": 7})))).is_none());
        // Out of the scale, or absent: no answer.
        assert!(judge(&c, &seen("Survey Answered", "", &props(json!({"nps": -1})))).is_none());
        assert!(judge(&c, &seen("Survey Answered", "", &props(json!({})))).is_none());
    }

    #[test]
    fn negative_sentiment_is_sent_or_scored_on_the_rules_channels() {
        let c = Condition::NegativeSentiment {
            max_sentiment: DEFAULT_MAX_SENTIMENT,
            channels: vec!["chat".to_owned(), "social".to_owned()],
        };
        let sent = props(json!({"sentiment": -0.5}));
        assert!(judge(&c, &seen("Message Sent", "chat", &sent)).is_some());
        assert!(judge(&c, &seen("Message Sent", "email", &sent)).is_none());
        // Without a context channel, the property says.
        let named = props(json!({"sentiment": -0.5, "channel": "Social"}));
        assert!(judge(&c, &seen("Mention", "", &named)).is_some());
        let text = props(json!({"text": "This is terrible, the worst service ever"}));
        let reason = judge(&c, &seen("Message Sent", "chat", &text)).unwrap();
        assert!(reason.starts_with("negative sentiment -"), "{reason}");
        assert!(
            reason.ends_with(r#": "This is terrible, the worst service ever""#),
            "{reason}"
        );
        let kind = props(json!({"text": "Thank you, wonderful help"}));
        assert!(judge(&c, &seen("Message Sent", "chat", &kind)).is_none());
        // No opinion is no alert.
        let plain = props(json!({"message": "order 1234 shipped"}));
        assert!(judge(&c, &seen("Message Sent", "chat", &plain)).is_none());
    }

    #[test]
    fn a_churn_jump_needs_the_rise_and_the_value() {
        let c = Condition::ChurnRiskJump {
            min_increase: 0.2,
            min_clv: 500.0,
            recheck_seconds: 0,
        };
        assert!(churn_jump(&c, 0.3, 0.5, Some(800.0)).is_some());
        assert!(churn_jump(&c, 0.3, 0.49, Some(800.0)).is_none());
        assert!(churn_jump(&c, 0.3, 0.9, Some(100.0)).is_none());
        assert!(churn_jump(&c, 0.3, 0.9, None).is_none());
    }

    #[test]
    fn a_rule_is_checked_field_by_field() {
        let field = |r: Rule| r.check().unwrap_err().0;
        assert!(rule(Condition::Detractor { max_nps: 6.0 }).check().is_ok());
        assert_eq!(field(rule(Condition::Detractor { max_nps: 11.0 })), "rule.max_nps");
        assert_eq!(
            field(rule(Condition::NegativeSentiment {
                max_sentiment: 0.5,
                channels: vec!["chat".to_owned()]
            })),
            "rule.max_sentiment"
        );
        let churn = |min_increase| Condition::ChurnRiskJump {
            min_increase,
            min_clv: 0.0,
            recheck_seconds: 60,
        };
        assert_eq!(field(rule(churn(0.0))), "rule.min_increase");
        assert_eq!(field(rule(Condition::Complaint)), "rule.events");
        let mut r = rule(Condition::Detractor { max_nps: 6.0 });
        r.cooldown_seconds = 0;
        assert_eq!(field(r.clone()), "rule.cooldown");
        r.cooldown_seconds = 60;
        r.name = "Hot".to_owned();
        assert_eq!(field(r.clone()), "rule.name");
        r.name = "hot".to_owned();
        r.webhook = Some(Webhook {
            url: "ftp://example.com/".to_owned(),
            secret: "0123456789abcdef".to_owned(),
        });
        assert_eq!(field(r.clone()), "rule.webhook.url");
        r.webhook = Some(Webhook {
            url: "https://example.com/hook".to_owned(),
            secret: "short".to_owned(),
        });
        assert_eq!(field(r.clone()), "rule.webhook.secret");
        // The secret never shows in a debug print.
        assert!(!format!("{r:?}").contains("short"));
    }

    #[test]
    fn the_summary_reads_traits_and_scores() {
        let person = Person {
            traits: props(json!({"first_name": "Ada", "last_name": "Lovelace", "country": "GB"})),
            identifiers: vec![("email".to_owned(), "ada@example.com".to_owned())],
            segment: Some("loyal".to_owned()),
            scores: [("clv".to_owned(), 900.0), ("churn_risk".to_owned(), 0.4)].into(),
            ..Default::default()
        };
        let s = Summary::of(&person);
        assert_eq!(
            (s.name.as_str(), s.email.as_str(), s.region.as_str(), s.segment.as_str()),
            ("Ada Lovelace", "ada@example.com", "GB", "loyal")
        );
        assert_eq!((s.clv, s.churn_risk), (Some(900.0), Some(0.4)));
    }

    #[test]
    fn a_significant_drop_or_spike_raises_and_chance_does_not() {
        let rule = |feedback| Condition::SatisfactionDrop {
            feedback,
            window_days: 7,
            significance: 0.01,
            min_responses: 30,
        };
        let span = |responses, score, stderr| Span {
            responses,
            score,
            stderr,
        };
        // 40 → 20 points with standard errors 5 and 5: z = 20/√50 = 2.83, p = 0.0023.
        let reason = satisfaction_drop(&rule(Feedback::Nps), &span(100, 40.0, 5.0), &span(100, 20.0, 5.0)).unwrap();
        assert!(
            reason.starts_with("NPS fell from 40.0 to 20.0 (-20.0 points) over the last 7 days"),
            "{reason}"
        );
        // 40 → 30: z = 1.41, p = 0.079, within chance at 0.01.
        assert!(satisfaction_drop(&rule(Feedback::Nps), &span(100, 40.0, 5.0), &span(100, 30.0, 5.0)).is_none());
        // A rise is no drop; too few answers are no evidence.
        assert!(satisfaction_drop(&rule(Feedback::Csat), &span(100, 60.0, 5.0), &span(100, 90.0, 5.0)).is_none());
        assert!(satisfaction_drop(&rule(Feedback::Nps), &span(100, 40.0, 5.0), &span(29, 0.0, 5.0)).is_none());
        // Mentions 50 → 90: given 140, 90 is z = (90 − 70)/√35 = 3.38 above half.
        assert!(satisfaction_drop(&rule(Feedback::Mentions), &span(50, 0.0, 0.0), &span(90, 0.0, 0.0)).is_some());
        assert!(satisfaction_drop(&rule(Feedback::Mentions), &span(50, 0.0, 0.0), &span(60, 0.0, 0.0)).is_none());
    }
}
