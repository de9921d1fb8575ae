//! The service's answers as messages: models, segments, rules, features and scores.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use corvus_proto::scoring::v1 as pb;

use super::timestamp;
use crate::domain::affinity::Rule;
use crate::domain::engagement::{self, Preference, SendTime};
use crate::domain::features::{Answers, Features};
use crate::domain::rfm::{Rfm, RfmModel, RfmScore};
use crate::domain::segments::{self, Segment};
use crate::models::{ClvModel, Fitted};

pub(super) fn named<V>(pairs: impl IntoIterator<Item = (String, V)>) -> HashMap<String, V> {
    pairs.into_iter().collect()
}

/// Any stored model as the API shows it.
pub fn fitted_message(fitted: &Fitted) -> pb::Model {
    match fitted {
        Fitted::Clv(m) => model_message(m),
        Fitted::Rfm(f) => {
            let bounds = [
                ("recency", &f.model.recency),
                ("frequency", &f.model.frequency),
                ("monetary", &f.model.monetary),
            ];
            pb::Model {
                kind: pb::ModelKind::Rfm as i32,
                fitted_at: Some(timestamp(f.fitted_at)),
                as_of: Some(timestamp(f.as_of)),
                parameters: named(bounds.iter().flat_map(|(name, b)| {
                    [20, 40, 60, 80]
                        .iter()
                        .zip(b.iter())
                        .map(move |(q, v)| (format!("{name}_q{q}"), *v))
                })),
                counts: named([
                    ("customers".to_owned(), f.model.customers),
                    ("purchases".to_owned(), f.purchases),
                ]),
                ..pb::Model::default()
            }
        }
        Fitted::Engagement(f) => pb::Model {
            kind: pb::ModelKind::Engagement as i32,
            fitted_at: Some(timestamp(f.fitted_at)),
            as_of: Some(timestamp(f.as_of)),
            parameters: named(f.priors.iter().flat_map(|(channel, p)| {
                [
                    (format!("{channel}_alpha"), p.alpha),
                    (format!("{channel}_beta"), p.beta),
                ]
            })),
            counts: named([
                ("profiles".to_owned(), f.profiles),
                ("engaging_events".to_owned(), f.engaging_events),
            ]),
            ..pb::Model::default()
        },
        Fitted::Segments(f) => pb::Model {
            kind: pb::ModelKind::Segments as i32,
            fitted_at: Some(timestamp(f.fitted_at)),
            as_of: Some(timestamp(f.as_of)),
            parameters: named(
                [
                    ("k".to_owned(), f.segmentation.segments.len() as f64),
                    ("silhouette".to_owned(), f.segmentation.silhouette),
                    ("inertia".to_owned(), f.segmentation.inertia),
                ]
                .into_iter()
                .chain(
                    f.segmentation
                        .tried
                        .iter()
                        .map(|(k, s)| (format!("silhouette_k{k}"), *s)),
                ),
            ),
            counts: named([("profiles".to_owned(), f.segmentation.profiles)]),
            ..pb::Model::default()
        },
        Fitted::Propensity(f) => pb::Model {
            kind: pb::ModelKind::Propensity as i32,
            fitted_at: Some(timestamp(f.fitted_at)),
            as_of: Some(timestamp(f.as_of)),
            parameters: named([
                ("alpha".to_owned(), f.model.ftrl.params.alpha),
                ("beta".to_owned(), f.model.ftrl.params.beta),
                ("l1".to_owned(), f.model.ftrl.params.l1),
                ("l2".to_owned(), f.model.ftrl.params.l2),
                ("platt_a".to_owned(), f.model.platt.a),
                ("platt_b".to_owned(), f.model.platt.b),
                ("horizon_days".to_owned(), f64::from(f.horizon_days)),
            ]),
            counts: named([
                ("training_examples".to_owned(), f.training_examples),
                ("holdout_examples".to_owned(), f.holdout_examples),
                ("coordinates".to_owned(), f.model.ftrl.coordinates() as u64),
                ("outcomes_learnt".to_owned(), f.model.ftrl.seen()),
            ]),
            diagnostics: crate::propensity::diagnostics(f).into_iter().collect(),
            ..pb::Model::default()
        },
        Fitted::Affinity(f) => pb::Model {
            kind: pb::ModelKind::Affinity as i32,
            fitted_at: Some(timestamp(f.fitted_at)),
            as_of: Some(timestamp(f.as_of)),
            parameters: named([
                ("min_support".to_owned(), f.min_support),
                ("min_confidence".to_owned(), f.min_confidence),
            ]),
            counts: named([
                ("orders".to_owned(), f.orders),
                ("products".to_owned(), f.products),
                ("rules".to_owned(), f.rules.len() as u64),
            ]),
            ..pb::Model::default()
        },
    }
}

/// What sets a segment apart, in words: its three furthest features.
pub(super) fn describe(s: &Segment) -> String {
    let mut order: Vec<usize> = (0..s.distinction.len()).collect();
    order.sort_by(|a, b| s.distinction[*b].abs().total_cmp(&s.distinction[*a].abs()));
    order
        .iter()
        .take(3)
        .map(|j| {
            let z = s.distinction[*j];
            format!(
                "{} {:.1} sd {}",
                segments::FEATURES[*j],
                z.abs(),
                if z >= 0.0 { "above" } else { "below" }
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

pub(super) fn summary_message(s: &Segment, profiles: u64) -> pb::SegmentSummary {
    pb::SegmentSummary {
        segment_id: s.id,
        name: s.name.clone(),
        size: s.size,
        share: if profiles > 0 {
            s.size as f64 / profiles as f64
        } else {
            0.0
        },
        description: describe(s),
    }
}

pub(super) fn rule_message(r: &Rule) -> pb::AssociationRule {
    pb::AssociationRule {
        antecedents: r.antecedents.clone(),
        consequent: r.consequent.clone(),
        support: r.support,
        confidence: r.confidence,
        lift: r.lift,
    }
}

pub(super) fn rfm_message((score, rfm, model): &(RfmScore, Rfm, RfmModel)) -> pb::Rfm {
    pb::Rfm {
        recency: u32::from(score.recency),
        frequency: u32::from(score.frequency),
        monetary: u32::from(score.monetary),
        cell: score.cell.to_owned(),
        explanation: format!(
            "last purchase {:.1} days ago, {} orders, {:.2} spent; the workspace's quintiles: recency {:?} days, \
             orders {:?}, spend {:?}",
            rfm.recency_days, rfm.frequency, rfm.monetary, model.recency, model.frequency, model.monetary
        ),
    }
}

pub(super) fn preference_message(p: &Preference) -> pb::ChannelPreference {
    let explanation = match (&p.best, p.channels.iter().any(|c| c.responses > 0.0)) {
        (Some((best, confidence)), _) => {
            format!("{best} has the highest posterior response rate, above the next with probability {confidence:.2}")
        }
        (None, false) => "not enough data: no response from this person yet; the rates are the workspace's".to_owned(),
        (None, true) => format!(
            "not enough data: no channel's response rate is above the next's with probability {}",
            engagement::CONFIDENT
        ),
    };
    pb::ChannelPreference {
        channels: p
            .channels
            .iter()
            .map(|c| pb::ChannelRate {
                channel: c.channel.clone(),
                messages: c.messages,
                responses: c.responses,
                rate: c.mean(),
                alpha: c.alpha,
                beta: c.beta,
            })
            .collect(),
        best_channel: p.best.as_ref().map(|(c, _)| c.clone()).unwrap_or_default(),
        confidence: p.best.as_ref().map_or(0.0, |(_, p)| *p),
        explanation,
    }
}

pub(super) fn send_time_message(t: &SendTime) -> pb::SendTime {
    pb::SendTime {
        hour_of_week: u32::from(t.hour_of_week),
        share: t.share,
        events: t.events,
        explanation: format!(
            "{} engaging events of the person's, with the workspace's hours weighing as {} more",
            t.events,
            engagement::SEND_TIME_PRIOR
        ),
    }
}

pub(super) fn answers(a: &Answers) -> (u64, Option<f64>, Option<f64>) {
    (a.count, a.mean(), a.latest)
}

pub(super) fn features_message(f: &Features, as_of: DateTime<Utc>) -> pb::Features {
    let spend = |s: &crate::domain::features::Spend| pb::Spend {
        quantity: s.quantity,
        spend: s.spend,
        orders: s.orders,
    };
    let (nps_answers, nps_mean, nps_latest) = answers(&f.nps);
    let (csat_answers, csat_mean, csat_latest) = answers(&f.csat);
    let (sentiment_answers, sentiment_mean, _) = answers(&f.sentiment);
    pb::Features {
        events: f.events,
        first_seen: f.first_seen.map(timestamp),
        last_seen: f.last_seen.map(timestamp),
        purchases: Some(pb::Purchases {
            orders: f.orders,
            purchase_days: f.purchase_days.len() as u64,
            revenue: f.revenue,
            average_order_value: if f.orders > 0 { f.revenue / f.orders as f64 } else { 0.0 },
            first_purchase: f.first_purchase.map(timestamp),
            last_purchase: f.last_purchase.map(timestamp),
            recency_days: f.recency_days(as_of),
        }),
        channels: f
            .channels
            .iter()
            .map(|(name, e)| {
                let engagement = pb::Engagement {
                    sent: e.sent,
                    delivered: e.delivered,
                    opened: e.opened,
                    clicked: e.clicked,
                    converted: e.converted,
                    unsubscribed: e.unsubscribed,
                };
                (name.clone(), engagement)
            })
            .collect(),
        categories: f.categories.iter().map(|(k, s)| (k.clone(), spend(s))).collect(),
        products: f.products.iter().map(|(k, s)| (k.clone(), spend(s))).collect(),
        satisfaction: Some(pb::Satisfaction {
            nps_answers,
            nps_mean,
            nps_latest,
            csat_answers,
            csat_mean,
            csat_latest,
            sentiment_answers,
            sentiment_mean,
            sentiment_scored: f.sentiment_scored,
        }),
        hour_of_week: f.hour_of_week.clone(),
    }
}

/// The stored model as the API shows it.
pub fn model_message(m: &ClvModel) -> pb::Model {
    let parameters: HashMap<String, f64> = [
        ("r", m.bg_nbd.r),
        ("alpha", m.bg_nbd.alpha),
        ("a", m.bg_nbd.a),
        ("b", m.bg_nbd.b),
        ("p", m.gamma_gamma.p),
        ("q", m.gamma_gamma.q),
        ("v", m.gamma_gamma.v),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    pb::Model {
        kind: pb::ModelKind::Clv as i32,
        fitted_at: Some(timestamp(m.fitted_at)),
        as_of: Some(timestamp(m.as_of)),
        unit: m.unit.as_str().to_owned(),
        parameters,
        log_likelihood: [
            ("bg_nbd".to_owned(), m.bg_nbd_log_likelihood),
            ("gamma_gamma".to_owned(), m.gamma_gamma_log_likelihood),
        ]
        .into(),
        counts: [
            ("customers".to_owned(), m.customers),
            ("repeat_buyers".to_owned(), m.repeat_buyers),
            ("purchases".to_owned(), m.purchases),
        ]
        .into(),
        diagnostics: [
            ("bg_nbd_iterations".to_owned(), f64::from(m.bg_nbd_iterations)),
            ("bg_nbd_gradient".to_owned(), m.bg_nbd_gradient),
            ("gamma_gamma_iterations".to_owned(), f64::from(m.gamma_gamma_iterations)),
            ("gamma_gamma_gradient".to_owned(), m.gamma_gamma_gradient),
        ]
        .into(),
        clv_months: m.clv_months,
        discount_rate: m.discount_rate,
    }
}
