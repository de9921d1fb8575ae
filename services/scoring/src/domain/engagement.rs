//! Channel preference and send time.
//!
//! **Channel preference**: a person's response rate on a channel (clicks over messages
//! sent or delivered) is Beta(α + clicks, β + messages − clicks), where Beta(α, β) is
//! the workspace's spread of response rates on that channel, fitted by the method of
//! moments over its people (a beta-binomial). The best channel is the one with the
//! highest posterior mean, reported with the probability that it beats the second (a
//! normal approximation of the difference of the two posteriors). Below `CONFIDENT`
//! that probability, or before the person has responded on any channel, the answer is
//! "not enough data": without a response of their own, the ranking would be the
//! workspace's, which the posteriors still show.
//!
//! **Send time**: a person's engaging events per hour of the week, shrunk towards the
//! workspace's distribution with the weight of `SEND_TIME_PRIOR` events, so a person with
//! two events is mostly the workspace's and one with two hundred mostly their own.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::features::Engagement;

/// The probability of beating the runner-up below which no best channel is named.
pub const CONFIDENT: f64 = 0.8;
/// The workspace's weight in a person's send time, in events.
pub const SEND_TIME_PRIOR: f64 = 10.0;
/// The prior's strength (α + β) when the workspace's spread cannot be estimated (too
/// few people, or no more spread than chance gives).
const FALLBACK_STRENGTH: f64 = 10.0;

/// A Beta prior of a channel's response rate.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Prior {
    pub alpha: f64,
    pub beta: f64,
}

/// Messages and responses on a channel.
pub fn exposures(e: &Engagement) -> (f64, f64) {
    let messages = e.sent.max(e.delivered).max(e.clicked) as f64;
    (messages, e.clicked as f64)
}

/// The workspace's prior on one channel from its people's (messages, responses), by
/// the method of moments of the beta-binomial (weighted by messages).
pub fn fit_prior(people: &[(f64, f64)]) -> Option<Prior> {
    let people: Vec<(f64, f64)> = people.iter().copied().filter(|(n, _)| *n > 0.0).collect();
    let total: f64 = people.iter().map(|(n, _)| n).sum();
    if total == 0.0 {
        return None;
    }
    let mean = people.iter().map(|(_, k)| k).sum::<f64>() / total;
    if mean <= 0.0 || mean >= 1.0 || people.len() < 2 {
        let mean = mean.clamp(0.01, 0.99);
        return Some(Prior {
            alpha: mean * FALLBACK_STRENGTH,
            beta: (1.0 - mean) * FALLBACK_STRENGTH,
        });
    }
    // Under the beta-binomial the message-weighted variance of people's rates around
    // the mean is μ(1 − μ)[1/n̄ + ρ(1 − 1/n̄)], with ρ = 1 / (α + β + 1) and n̄ the mean
    // messages a person: solved for ρ.
    let m = people.len() as f64;
    let variance = people.iter().map(|(n, k)| n * (k / n - mean).powi(2)).sum::<f64>() / total;
    let mean_n = total / m;
    let rho = (variance / (mean * (1.0 - mean)) - 1.0 / mean_n) / (1.0 - 1.0 / mean_n);
    let strength = if mean_n > 1.0 && rho > 0.0 && rho < 1.0 {
        (1.0 / rho - 1.0).max(0.1)
    } else {
        // One message a person tells nothing of the spread; none beyond chance, either.
        FALLBACK_STRENGTH
    };
    Some(Prior {
        alpha: mean * strength,
        beta: (1.0 - mean) * strength,
    })
}

/// A person's posterior on one channel.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelRate {
    pub channel: String,
    pub messages: f64,
    pub responses: f64,
    pub alpha: f64,
    pub beta: f64,
}

impl ChannelRate {
    pub fn mean(&self) -> f64 {
        self.alpha / (self.alpha + self.beta)
    }

    fn variance(&self) -> f64 {
        let s = self.alpha + self.beta;
        self.alpha * self.beta / (s * s * (s + 1.0))
    }
}

/// A person's preference: the posterior of every channel the workspace has a prior
/// for, best first, and the best channel with its probability of beating the second,
/// when the data says so.
#[derive(Debug, Clone, PartialEq)]
pub struct Preference {
    pub channels: Vec<ChannelRate>,
    pub best: Option<(String, f64)>,
}

pub fn preference(person: &BTreeMap<String, Engagement>, priors: &BTreeMap<String, Prior>) -> Preference {
    let mut channels: Vec<ChannelRate> = priors
        .iter()
        .map(|(channel, prior)| {
            let (messages, responses) = person.get(channel).map(exposures).unwrap_or((0.0, 0.0));
            ChannelRate {
                channel: channel.clone(),
                messages,
                responses,
                alpha: prior.alpha + responses,
                beta: prior.beta + messages - responses,
            }
        })
        .collect();
    channels.sort_by(|a, b| b.mean().total_cmp(&a.mean()).then(a.channel.cmp(&b.channel)));
    let heard = channels.iter().any(|c| c.responses > 0.0);
    let best = match channels.as_slice() {
        [only] if heard => Some((only.channel.clone(), 1.0)),
        [first, second, ..] if heard => {
            let z = (first.mean() - second.mean()) / (first.variance() + second.variance()).sqrt();
            let p = normal_cdf(z);
            (p >= CONFIDENT).then(|| (first.channel.clone(), p))
        }
        _ => None,
    };
    Preference { channels, best }
}

/// Φ(z), from the error function (Abramowitz and Stegun 7.1.26 is too coarse; this is
/// the complementary error function's Chebyshev fit of Numerical Recipes, 1.2e-7).
fn normal_cdf(z: f64) -> f64 {
    let x = -z / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.5 * x.abs());
    let poly = -x * x - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98 + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let erfc = t * poly.exp();
    let erfc = if x >= 0.0 { erfc } else { 2.0 - erfc };
    0.5 * erfc
}

/// A person's best hour of the week to reach them.
#[derive(Debug, Clone, PartialEq)]
pub struct SendTime {
    /// 0 = Monday 00:00–01:00 in the person's time zone.
    pub hour_of_week: u16,
    /// The shrunk share of engagement in that hour.
    pub share: f64,
    /// The person's own engaging events it rests on.
    pub events: u64,
}

/// The best hour: the person's histogram shrunk towards the workspace's.
pub fn send_time(person: &[u32], workspace: &[f64]) -> Option<SendTime> {
    let events: u64 = person.iter().map(|c| u64::from(*c)).sum();
    let total: f64 = workspace.iter().sum();
    if events == 0 && total == 0.0 {
        return None;
    }
    let prior = |hour: usize| if total > 0.0 { workspace[hour] / total } else { 0.0 };
    let weight = events as f64 + SEND_TIME_PRIOR;
    let (hour, share) = (0..168)
        .map(|h| (h, (f64::from(person[h]) + SEND_TIME_PRIOR * prior(h)) / weight))
        .fold((0, f64::MIN), |best, (h, s)| if s > best.1 { (h, s) } else { best });
    Some(SendTime {
        hour_of_week: hour as u16,
        share,
        events,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engagement(sent: u64, clicked: u64) -> Engagement {
        Engagement {
            sent,
            clicked,
            ..Engagement::default()
        }
    }

    #[test]
    fn the_prior_is_the_spread_of_people_beyond_chance() {
        // Half the people click 1 in 10, half 5 in 10: a real spread.
        let people: Vec<(f64, f64)> = (0..100).map(|i| (10.0, if i % 2 == 0 { 1.0 } else { 5.0 })).collect();
        let prior = fit_prior(&people).unwrap();
        assert!((prior.alpha / (prior.alpha + prior.beta) - 0.3).abs() < 1e-12);
        // S = 0.04 = 0.21 (1/10 + ρ 0.9): ρ = 0.100529…, α + β = 1/ρ − 1 = 8.947368….
        assert!(
            (prior.alpha + prior.beta - 8.947_368_421_052_63).abs() < 1e-9,
            "{prior:?}"
        );
    }

    #[test]
    fn the_best_channel_needs_the_data_to_say_so() {
        let priors: BTreeMap<String, Prior> = [
            ("email".to_owned(), Prior { alpha: 1.0, beta: 9.0 }),
            ("sms".to_owned(), Prior { alpha: 1.0, beta: 9.0 }),
        ]
        .into();
        let none = preference(&BTreeMap::new(), &priors);
        assert_eq!(none.best, None, "no message yet");
        let thin: BTreeMap<String, Engagement> = [("sms".to_owned(), engagement(2, 1))].into();
        assert_eq!(preference(&thin, &priors).best, None, "one click in two is not enough");
        let silent: BTreeMap<String, Engagement> = [("sms".to_owned(), engagement(30, 0))].into();
        assert_eq!(preference(&silent, &priors).best, None, "no response of their own");
        let clear: BTreeMap<String, Engagement> = [
            ("sms".to_owned(), engagement(40, 20)),
            ("email".to_owned(), engagement(40, 2)),
        ]
        .into();
        let p = preference(&clear, &priors);
        let (best, confidence) = p.best.unwrap();
        assert_eq!(best, "sms");
        assert!(confidence > 0.99, "{confidence}");
        assert_eq!(p.channels[0].alpha, 21.0);
        assert_eq!(p.channels[0].beta, 29.0);
    }

    #[test]
    fn send_time_leans_on_the_workspace_until_the_person_has_data() {
        let mut workspace = vec![0.0; 168];
        workspace[20] = 100.0;
        let mut person = vec![0; 168];
        person[100] = 2;
        assert_eq!(send_time(&person, &workspace).unwrap().hour_of_week, 20);
        person[100] = 30;
        let t = send_time(&person, &workspace).unwrap();
        assert_eq!((t.hour_of_week, t.events), (100, 30));
        assert!((t.share - 0.75).abs() < 1e-12);
    }

    #[test]
    fn the_normal_cdf_is_close() {
        assert!((normal_cdf(0.0) - 0.5).abs() < 1e-7);
        assert!((normal_cdf(1.959_963_984_540_054) - 0.975).abs() < 2e-7);
        assert!((normal_cdf(-1.0) - 0.158_655_253_931_457_05).abs() < 2e-7);
    }
}
