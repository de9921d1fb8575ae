//! A profile's features, computed from its facts. A profile's facts are exactly those
//! of the events resolved to it now (merges join them, unmerges split them, erasures
//! delete them), so the features of a merged profile are those of its combined events
//! by construction.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, TimeDelta, Utc};

use super::clv::Customer;
use super::facts::{Fact, Stage};

/// A fact with the time of its event.
#[derive(Debug, Clone, PartialEq)]
pub struct Dated {
    pub at: DateTime<Utc>,
    pub fact: Fact,
}

/// How long before a purchase a click on a channel makes the purchase its conversion.
pub const ATTRIBUTION_WINDOW: TimeDelta = TimeDelta::days(7);

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Engagement {
    pub sent: u64,
    pub delivered: u64,
    pub opened: u64,
    pub clicked: u64,
    pub converted: u64,
    pub unsubscribed: u64,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Spend {
    pub quantity: f64,
    pub spend: f64,
    pub orders: u64,
}

/// Count, mean and latest of a score.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Answers {
    pub count: u64,
    pub sum: f64,
    pub latest: Option<f64>,
}

impl Answers {
    fn add(&mut self, value: Option<f64>) {
        if let Some(v) = value {
            self.count += 1;
            self.sum += v;
            self.latest = Some(v);
        }
    }

    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum / self.count as f64)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Features {
    pub events: u64,
    pub first_seen: Option<DateTime<Utc>>,
    pub last_seen: Option<DateTime<Utc>>,
    pub orders: u64,
    pub revenue: f64,
    pub first_purchase: Option<DateTime<Utc>>,
    pub last_purchase: Option<DateTime<Utc>>,
    /// Spend per UTC day with a purchase, in day order.
    pub purchase_days: BTreeMap<NaiveDate, f64>,
    pub channels: BTreeMap<String, Engagement>,
    pub categories: BTreeMap<String, Spend>,
    pub products: BTreeMap<String, Spend>,
    pub nps: Answers,
    pub csat: Answers,
    pub sentiment: Answers,
    /// Of the sentiment answers, those Corvus scored from the event's text.
    pub sentiment_scored: u64,
    pub hour_of_week: Vec<u32>,
}

impl Features {
    /// The features of `facts` (in time order) up to and including `as_of`.
    pub fn compute(facts: &[Dated], as_of: DateTime<Utc>) -> Self {
        let mut f = Features {
            events: 0,
            first_seen: None,
            last_seen: None,
            orders: 0,
            revenue: 0.0,
            first_purchase: None,
            last_purchase: None,
            purchase_days: BTreeMap::new(),
            channels: BTreeMap::new(),
            categories: BTreeMap::new(),
            products: BTreeMap::new(),
            nps: Answers::default(),
            csat: Answers::default(),
            sentiment: Answers::default(),
            sentiment_scored: 0,
            hour_of_week: vec![0; 168],
        };
        // The latest click on each channel, for conversions.
        let mut last_click: BTreeMap<String, DateTime<Utc>> = BTreeMap::new();
        for Dated { at, fact } in facts.iter().filter(|d| d.at <= as_of) {
            f.events += 1;
            f.first_seen.get_or_insert(*at);
            f.last_seen = Some(*at);
            if let (Some(stage), Some(channel)) = (fact.stage, &fact.channel) {
                let e = f.channels.entry(channel.clone()).or_default();
                match stage {
                    Stage::Sent => e.sent += 1,
                    Stage::Delivered => e.delivered += 1,
                    Stage::Opened => e.opened += 1,
                    Stage::Clicked => {
                        e.clicked += 1;
                        last_click.insert(channel.clone(), *at);
                    }
                    Stage::Unsubscribed => e.unsubscribed += 1,
                }
            }
            if let Some(revenue) = fact.revenue {
                f.orders += 1;
                f.revenue += revenue;
                f.first_purchase.get_or_insert(*at);
                f.last_purchase = Some(*at);
                *f.purchase_days.entry(at.date_naive()).or_default() += revenue;
                // Last click: the channel clicked most recently within the window.
                let clicked = last_click
                    .iter()
                    .filter(|(_, clicked)| *at - **clicked <= ATTRIBUTION_WINDOW)
                    .max_by_key(|(_, clicked)| **clicked);
                if let Some((channel, _)) = clicked {
                    f.channels.get_mut(channel).expect("a clicked channel").converted += 1;
                }
                for product in &fact.products {
                    let spend = product.spend.unwrap_or(0.0);
                    let add = |s: &mut Spend| {
                        s.quantity += product.quantity;
                        s.spend += spend;
                        s.orders += 1;
                    };
                    if !product.id.is_empty() {
                        add(f.products.entry(product.id.clone()).or_default());
                    }
                    if let Some(category) = &product.category {
                        add(f.categories.entry(category.clone()).or_default());
                    }
                }
            }
            f.nps.add(fact.nps);
            f.csat.add(fact.csat);
            f.sentiment.add(fact.sentiment);
            f.sentiment_scored += u64::from(fact.sentiment_language.is_some());
            if let Some(hour) = fact.hour_of_week {
                f.hour_of_week[usize::from(hour) % 168] += 1;
            }
        }
        f
    }

    /// Days from the last purchase to `as_of`.
    pub fn recency_days(&self, as_of: DateTime<Utc>) -> Option<f64> {
        self.last_purchase
            .map(|last| (as_of - last).num_milliseconds() as f64 / 86_400_000.0)
    }
}

/// A customer's purchase summary as of `as_of` in units of `unit_days` days, from the
/// spend per purchase day (days after `as_of` left out): repeat purchases are counted
/// per day, as the literature and `lifetimes` count them. `None` without a purchase.
pub fn summary(days: &BTreeMap<NaiveDate, f64>, as_of: NaiveDate, unit_days: f64) -> Option<Customer> {
    let mut held = days.range(..=as_of);
    let (first, _) = held.next()?;
    let (mut repeat, mut spend, mut last) = (0.0, 0.0, *first);
    for (day, value) in held {
        repeat += 1.0;
        spend += value;
        last = *day;
    }
    let units = |from: NaiveDate, to: NaiveDate| (to - from).num_days() as f64 / unit_days;
    Some(Customer {
        x: repeat,
        t_x: units(*first, last),
        t: units(*first, as_of),
        m: if repeat > 0.0 { spend / repeat } else { 0.0 },
    })
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::domain::facts::Product;

    fn at(day: u32, hour: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, day, hour, 0, 0).unwrap()
    }

    fn order(day: u32, hour: u32, revenue: f64) -> Dated {
        Dated {
            at: at(day, hour),
            fact: Fact {
                revenue: Some(revenue),
                products: vec![Product {
                    id: "p1".into(),
                    category: Some("Books".into()),
                    spend: Some(revenue),
                    quantity: 1.0,
                }],
                ..Fact::default()
            },
        }
    }

    fn message(day: u32, stage: Stage) -> Dated {
        Dated {
            at: at(day, 9),
            fact: Fact {
                stage: Some(stage),
                channel: Some("email".into()),
                ..Fact::default()
            },
        }
    }

    #[test]
    fn purchases_engagement_and_conversions_add_up() {
        let facts = vec![
            order(1, 10, 20.0),
            order(1, 18, 5.0),
            message(2, Stage::Sent),
            message(2, Stage::Clicked),
            order(5, 12, 30.0),  // within 7 days of the click: converted
            order(20, 12, 10.0), // not
            order(28, 12, 99.0), // after as_of
        ];
        let f = Features::compute(&facts, at(21, 0));
        assert_eq!(f.orders, 4);
        assert_eq!(f.revenue, 65.0);
        assert_eq!(f.purchase_days.len(), 3);
        assert_eq!(f.channels["email"].converted, 1);
        assert_eq!(f.channels["email"].sent, 1);
        assert_eq!(f.categories["Books"].orders, 4);
        assert_eq!(f.recency_days(at(21, 0)), Some(0.5));
        let c = summary(&f.purchase_days, at(21, 0).date_naive(), 7.0).unwrap();
        assert_eq!(c.x, 2.0);
        assert_eq!(c.t_x, 19.0 / 7.0);
        assert_eq!(c.t, 20.0 / 7.0);
        assert_eq!(c.m, 20.0);
    }
}
