//! Satisfaction and brand: NPS and CSAT answers and social mentions, read off resolved
//! events as they arrive, and their figures with intervals.
//!
//! An event with a numeric `nps` property (0 to 10) is an NPS answer; with `csat` (1 to
//! 5), a CSAT answer; an event on the social channel, or named `Social Mention`, is a
//! mention, its sentiment the `sentiment` property (-1 to 1) or scored from its text as
//! scoring scores it. An `activation` property tags feedback with the activation (a
//! launch, an in-store event) it was gathered at.

use corvus_scoring::domain::facts::TEXT_FIELDS;
use corvus_scoring::domain::sentiment::{self, Language};
use serde_json::{Map, Value};

use crate::stats::special::normal_quantile;

/// The event a mention arrives as when not on the social channel.
pub const MENTION_EVENT: &str = "Social Mention";

/// Sentiments beyond this (either way) count as positive or negative.
const NEUTRAL: f64 = 0.05;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Nps,
    Csat,
    Mention,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Nps => "nps",
            Kind::Csat => "csat",
            Kind::Mention => "mention",
        }
    }

    /// Promoters (9, 10), satisfied (4, 5), positive.
    pub fn top(self, value: f64) -> bool {
        match self {
            Kind::Nps => value >= 9.0,
            Kind::Csat => value >= 4.0,
            Kind::Mention => value > NEUTRAL,
        }
    }

    /// Detractors (0 to 6), dissatisfied (1, 2), negative.
    pub fn bottom(self, value: f64) -> bool {
        match self {
            Kind::Nps => value <= 6.0,
            Kind::Csat => value <= 2.0,
            Kind::Mention => value < -NEUTRAL,
        }
    }
}

fn number(properties: &Map<String, Value>, key: &str) -> Option<f64> {
    match properties.get(key)? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// The feedback an event gives: each kind with its value.
pub fn read(event: &str, channel: &str, locale: &str, properties: &Map<String, Value>) -> Vec<(Kind, f64)> {
    let mut found = Vec::new();
    if let Some(nps) = number(properties, "nps").filter(|n| (0.0..=10.0).contains(n)) {
        found.push((Kind::Nps, nps));
    }
    if let Some(csat) = number(properties, "csat").filter(|n| (1.0..=5.0).contains(n)) {
        found.push((Kind::Csat, csat));
    }
    if channel == "social" || event == MENTION_EVENT {
        let sent = number(properties, "sentiment").filter(|s| (-1.0..=1.0).contains(s));
        let scored = || {
            let text = TEXT_FIELDS.iter().find_map(|f| {
                properties
                    .get(*f)
                    .and_then(Value::as_str)
                    .filter(|t| !t.trim().is_empty())
            })?;
            let language = properties
                .get("language")
                .and_then(Value::as_str)
                .or(Some(locale).filter(|l| !l.is_empty()))
                .and_then(Language::parse);
            Some(sentiment::score(text, language)?.score)
        };
        if let Some(score) = sent.or_else(scored) {
            found.push((Kind::Mention, score));
        }
    }
    found
}

/// A group's feedback as kept: answers, Σ value, Σ value², and the top and bottom counts.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Tally {
    pub responses: u64,
    pub sum: f64,
    pub sum_squares: f64,
    pub top: u64,
    pub bottom: u64,
}

/// A group's figure: NPS (% promoters − % detractors), CSAT (% satisfied) or a mention's
/// mean sentiment, with its interval at `1 − alpha` (normal approximation).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Figure {
    pub score: f64,
    pub ci: [f64; 2],
    pub stderr: f64,
}

pub fn figure(kind: Kind, t: &Tally, alpha: f64) -> Figure {
    let n = t.responses as f64;
    if n == 0.0 {
        return Figure {
            score: 0.0,
            ci: [0.0, 0.0],
            stderr: 0.0,
        };
    }
    let (top, bottom) = (t.top as f64 / n, t.bottom as f64 / n);
    let (score, stderr) = match kind {
        // Each answer scores +1, 0 or −1: the mean is the NPS, its variance (p + d) − NPS².
        Kind::Nps => {
            let mean = top - bottom;
            (100.0 * mean, 100.0 * ((top + bottom - mean * mean).max(0.0) / n).sqrt())
        }
        Kind::Csat => (100.0 * top, 100.0 * (top * (1.0 - top) / n).sqrt()),
        Kind::Mention => {
            let mean = t.sum / n;
            let variance = match n > 1.0 {
                true => ((t.sum_squares - t.sum * t.sum / n) / (n - 1.0)).max(0.0),
                false => 0.0,
            };
            (mean, (variance / n).sqrt())
        }
    };
    let z = normal_quantile(1.0 - alpha / 2.0);
    Figure {
        score,
        ci: [score - z * stderr, score + z * stderr],
        stderr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn props(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn answers_and_mentions_are_read_off_events() {
        let answer = props(json!({"nps": 9, "csat": "2", "comment": "ok"}));
        assert_eq!(
            read("Survey Answered", "survey", "", &answer),
            [(Kind::Nps, 9.0), (Kind::Csat, 2.0)]
        );
        assert!(read("Survey Answered", "", "", &props(json!({"nps": 11}))).is_empty());
        let mention = props(json!({"sentiment": -0.6}));
        assert_eq!(read("Posted", "social", "", &mention), [(Kind::Mention, -0.6)]);
        let text = props(json!({"text": "I love this brand, wonderful service"}));
        let scored = read(MENTION_EVENT, "", "en", &text);
        assert!(scored[0].1 > NEUTRAL, "{scored:?}");
    }

    #[test]
    fn nps_and_csat_with_their_intervals() {
        // 50 promoters, 30 passives, 20 detractors: NPS 30; each answer +1/0/−1 has
        // variance 0.7 − 0.09 = 0.61, so the standard error is 100·√(0.61/100).
        let t = Tally {
            responses: 100,
            sum: 0.0,
            sum_squares: 0.0,
            top: 50,
            bottom: 20,
        };
        let f = figure(Kind::Nps, &t, 0.05);
        assert!((f.score - 30.0).abs() < 1e-12);
        assert!((f.stderr - 100.0 * (0.61f64 / 100.0).sqrt()).abs() < 1e-12);
        assert!((f.ci[0] - (30.0 - 1.959963984540054 * f.stderr)).abs() < 1e-9);
        // CSAT: 80 of 100 satisfied, 80 % ± 1.96·√(0.16/100)·100.
        let t = Tally { top: 80, ..t };
        let f = figure(Kind::Csat, &t, 0.05);
        assert!((f.score - 80.0).abs() < 1e-12 && (f.stderr - 4.0).abs() < 1e-12);
    }
}
