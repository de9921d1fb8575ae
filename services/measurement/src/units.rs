//! A person's part in the aggregates, computed from what is kept of them: their
//! decisions give each experiment's exposure (the first decision's arm, channel, segment,
//! action and day), how many of them sent (touches), and how far they got (the funnel's
//! stages, from events carrying a decision's id); their outcomes give each exposed
//! metric's value in the window after it and the covariate in the lookback before it. A
//! change to a person (a decision, an event, a merge, an erasure) computes their state
//! again and moves the aggregates by the difference, so applying the same change twice
//! moves nothing.

use std::collections::{BTreeMap, HashMap};

use crate::metric::Metric;
use crate::stats::MetricType;

const MICROS_PER_DAY: i64 = 86_400_000_000;

/// The channel of a decision that sent nothing (the person was held out).
pub const NO_CHANNEL: &str = "none";

/// Touches counted apart in the fatigue curve; more count as this many.
pub const MAX_TOUCHES: u32 = 20;

/// The funnel's stages after the exposure, as bits of `Exposure::reached`.
pub const STAGES: [&str; 4] = ["sent", "delivered", "opened", "clicked"];

/// A decision as the person's state reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct DecisionRow {
    pub id: uuid::Uuid,
    pub experiment: String,
    pub arm: String,
    pub channel: String,
    pub segment: String,
    pub action: String,
    pub propensity: f64,
    /// Microseconds since the epoch.
    pub at: i64,
}

/// A stage of the funnel a decision reached (an index into [`STAGES`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StageRow {
    pub decision: uuid::Uuid,
    pub stage: u8,
}

/// An event's contribution to a metric.
#[derive(Debug, Clone, PartialEq)]
pub struct OutcomeRow {
    pub metric: String,
    pub at: i64,
    pub numerator: f64,
    pub denominator: f64,
}

/// Where a person's exposure counts: the aggregates' key below the experiment.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Bucket {
    pub arm: String,
    pub channel: String,
    pub segment: String,
    pub action: String,
    /// UTC days since the epoch.
    pub day: i32,
}

#[derive(Debug, Clone)]
pub struct Exposure {
    pub bucket: Bucket,
    pub exposed_at: i64,
    /// The experiment's decisions for the person that sent something.
    pub touches: u32,
    /// The stages any of them reached: bit i for `STAGES[i]`.
    pub reached: u8,
    /// The first decision's propensity.
    pub propensity: f64,
    /// The first decision (not kept: only the tie between two at one time needs it).
    pub decision: uuid::Uuid,
}

/// Equal when they add the same: which decision it was is not kept.
impl PartialEq for Exposure {
    fn eq(&self, other: &Self) -> bool {
        (
            &self.bucket,
            self.exposed_at,
            self.touches,
            self.reached,
            self.propensity,
        ) == (
            &other.bucket,
            other.exposed_at,
            other.touches,
            other.reached,
            other.propensity,
        )
    }
}

/// What an exposure adds to its bucket's counts: people, touches, and the people who
/// reached each stage.
pub type Counts = [i64; 6];

impl Exposure {
    pub fn counts(&self) -> Counts {
        let stage = |i: usize| i64::from(self.reached >> i & 1);
        [1, i64::from(self.touches), stage(0), stage(1), stage(2), stage(3)]
    }

    /// The touches the fatigue curve counts the person at.
    pub fn fatigue_touches(&self) -> u32 {
        self.touches.min(MAX_TOUCHES)
    }
}

/// A person's value of a metric in an experiment.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Unit {
    pub value: f64,
    pub denominator: f64,
    pub covariate: f64,
}

/// The sums a unit adds to its bucket: value, value², denominator, denominator²,
/// value × denominator, covariate, covariate², value × covariate.
pub type Sums = [f64; 8];

impl Unit {
    pub fn is_zero(&self) -> bool {
        self.value == 0.0 && self.denominator == 0.0 && self.covariate == 0.0
    }

    pub fn sums(&self) -> Sums {
        let (v, d, c) = (self.value, self.denominator, self.covariate);
        [v, v * v, d, d * d, v * d, c, c * c, v * c]
    }
}

/// The day (UTC, since the epoch) of a time in microseconds.
pub fn day_of(micros: i64) -> i32 {
    micros.div_euclid(MICROS_PER_DAY) as i32
}

/// What a person adds to the aggregates: an exposure per experiment, and a unit per
/// experiment and metric where it is not zero.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PersonState {
    pub exposures: BTreeMap<String, Exposure>,
    pub units: BTreeMap<(String, String), Unit>,
}

impl PersonState {
    /// The state from the person's decisions, the stages they reached, and outcomes, for
    /// `metrics`.
    pub fn of(metrics: &[Metric], decisions: &[DecisionRow], stages: &[StageRow], outcomes: &[OutcomeRow]) -> Self {
        let mut exposures: BTreeMap<String, Exposure> = BTreeMap::new();
        for d in decisions {
            let sent = u32::from(d.channel != NO_CHANNEL);
            let reached = stages
                .iter()
                .filter(|s| s.decision == d.id)
                .fold(0u8, |bits, s| bits | 1 << s.stage);
            let first = Exposure {
                bucket: Bucket {
                    arm: d.arm.clone(),
                    channel: d.channel.clone(),
                    segment: d.segment.clone(),
                    action: d.action.clone(),
                    day: day_of(d.at),
                },
                exposed_at: d.at,
                touches: sent,
                reached,
                propensity: d.propensity,
                decision: d.id,
            };
            exposures
                .entry(d.experiment.clone())
                .and_modify(|e| {
                    // The earliest decision is the exposure; ties go to the lower decision
                    // id, so the order decisions are read in cannot matter.
                    let (touches, reached) = (e.touches + sent, e.reached | reached);
                    if (d.at, d.id) < (e.exposed_at, e.decision) {
                        *e = first.clone();
                    }
                    (e.touches, e.reached) = (touches, reached);
                })
                .or_insert(first);
        }
        let mut units = BTreeMap::new();
        for (experiment, exposure) in &exposures {
            for metric in metrics {
                let unit = unit(
                    metric,
                    exposure.exposed_at,
                    outcomes.iter().filter(|o| o.metric == metric.name),
                );
                if !unit.is_zero() {
                    units.insert((experiment.clone(), metric.name.clone()), unit);
                }
            }
        }
        Self { exposures, units }
    }
}

/// A metric's unit for a person exposed at `exposed_at`, from their outcomes of it.
pub fn unit<'a>(metric: &Metric, exposed_at: i64, outcomes: impl Iterator<Item = &'a OutcomeRow>) -> Unit {
    let end = exposed_at.saturating_add(metric.window_seconds as i64 * 1_000_000);
    let start = exposed_at.saturating_sub(metric.lookback_seconds as i64 * 1_000_000);
    let mut u = Unit::default();
    for o in outcomes {
        if (exposed_at..end).contains(&o.at) {
            u.value += o.numerator;
            u.denominator += o.denominator;
        } else if metric.cuped() && (start..exposed_at).contains(&o.at) {
            u.covariate += o.numerator;
        }
    }
    if metric.metric_type == MetricType::Binomial {
        u.value = u.value.min(1.0);
        u.covariate = u.covariate.min(1.0);
    }
    u
}

/// How a set of changes moves the aggregates: people (and their touches and stages) per
/// (experiment, bucket), sums per (experiment, metric, bucket), and the fatigue curve's
/// people per (experiment, touches) and value and its square per (experiment, metric,
/// touches).
#[derive(Debug, Default)]
pub struct Deltas {
    pub users: HashMap<(String, Bucket), Counts>,
    pub sums: HashMap<(String, String, Bucket), Sums>,
    pub fatigue_users: HashMap<(String, u32), i64>,
    pub fatigue_sums: HashMap<(String, String, u32), [f64; 2]>,
}

impl Deltas {
    /// Moves from a person's `old` state to their `new` one.
    pub fn add(&mut self, old: &PersonState, new: &PersonState) {
        for (state, sign) in [(old, -1), (new, 1)] {
            for (experiment, e) in &state.exposures {
                let counts = self.users.entry((experiment.clone(), e.bucket.clone())).or_default();
                for (c, n) in counts.iter_mut().zip(e.counts()) {
                    *c += sign * n;
                }
                *self
                    .fatigue_users
                    .entry((experiment.clone(), e.fatigue_touches()))
                    .or_default() += sign;
            }
            let sign = sign as f64;
            for ((experiment, metric), unit) in &state.units {
                let Some(exposure) = state.exposures.get(experiment) else {
                    continue;
                };
                let key = (experiment.clone(), metric.clone(), exposure.bucket.clone());
                let sums = self.sums.entry(key).or_default();
                for (s, u) in sums.iter_mut().zip(unit.sums()) {
                    *s += sign * u;
                }
                let key = (experiment.clone(), metric.clone(), exposure.fatigue_touches());
                let fatigue = self.fatigue_sums.entry(key).or_default();
                fatigue[0] += sign * unit.value;
                fatigue[1] += sign * unit.value * unit.value;
            }
        }
    }

    /// Drops what cancelled out.
    pub fn settle(&mut self) {
        self.users.retain(|_, n| n.iter().any(|x| *x != 0));
        self.sums.retain(|_, s| s.iter().any(|x| *x != 0.0));
        self.fatigue_users.retain(|_, n| *n != 0);
        self.fatigue_sums.retain(|_, s| s.iter().any(|x| *x != 0.0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metric::EventFilter;

    const HOUR: i64 = 3_600_000_000;

    fn metric(metric_type: MetricType, lookback_hours: u64) -> Metric {
        Metric {
            name: "m".into(),
            metric_type,
            numerator: EventFilter {
                event: "Order Completed".into(),
                ..Default::default()
            },
            denominator: None,
            window_seconds: 24 * 3600,
            lookback_seconds: lookback_hours * 3600,
            inverse: false,
            guardrail: false,
            description: String::new(),
        }
    }

    fn decision(arm: &str, at: i64) -> DecisionRow {
        DecisionRow {
            id: uuid::Uuid::from_u128(at as u128),
            experiment: "spring".into(),
            arm: arm.into(),
            channel: "email".into(),
            segment: "s".into(),
            action: "offer".into(),
            propensity: 0.5,
            at,
        }
    }

    fn outcome(at: i64, n: f64) -> OutcomeRow {
        OutcomeRow {
            metric: "m".into(),
            at,
            numerator: n,
            denominator: 0.0,
        }
    }

    #[test]
    fn the_first_decision_is_the_exposure_and_the_window_counts_after_it() {
        let t0 = 100 * 24 * HOUR;
        let outcomes = [
            outcome(t0 - 2 * HOUR, 5.0),  // in the lookback
            outcome(t0 - 30 * HOUR, 7.0), // before it
            outcome(t0, 1.0),             // at exposure: counts
            outcome(t0 + 23 * HOUR, 2.0), // in the window
            outcome(t0 + 24 * HOUR, 4.0), // after it
        ];
        let decisions = [decision("b", t0 + HOUR), decision("a", t0)];
        // The later decision was opened: the person reached that stage.
        let stages = [StageRow {
            decision: decisions[0].id,
            stage: 2,
        }];
        let s = PersonState::of(&[metric(MetricType::Count, 24)], &decisions, &stages, &outcomes);
        let e = &s.exposures["spring"];
        assert_eq!(
            (e.bucket.arm.as_str(), e.exposed_at, e.touches, e.bucket.day),
            ("a", t0, 2, 100)
        );
        assert_eq!(e.counts(), [1, 2, 0, 0, 1, 0]);
        assert_eq!(
            s.units[&("spring".to_owned(), "m".to_owned())],
            Unit {
                value: 3.0,
                denominator: 0.0,
                covariate: 5.0
            }
        );
        let b = PersonState::of(&[metric(MetricType::Binomial, 0)], &decisions, &[], &outcomes);
        assert_eq!(
            b.units[&("spring".to_owned(), "m".to_owned())],
            Unit {
                value: 1.0,
                denominator: 0.0,
                covariate: 0.0
            }
        );
    }

    #[test]
    fn deltas_move_a_person_between_buckets_and_cancel_when_nothing_changed() {
        let metrics = [metric(MetricType::Count, 0)];
        let old = PersonState::of(&metrics, &[decision("a", 0)], &[], &[outcome(1, 3.0)]);
        let mut deltas = Deltas::default();
        deltas.add(&old, &old);
        deltas.settle();
        assert!(deltas.users.is_empty() && deltas.sums.is_empty() && deltas.fatigue_users.is_empty());
        let both = [decision("b", -1), decision("a", 0)];
        let new = PersonState::of(&metrics, &both, &[], &[outcome(1, 3.0)]);
        deltas.add(&old, &new);
        deltas.settle();
        let bucket = |arm: &str, day| Bucket {
            arm: arm.into(),
            channel: "email".into(),
            segment: "s".into(),
            action: "offer".into(),
            day,
        };
        assert_eq!(
            deltas.users[&("spring".to_owned(), bucket("a", 0))],
            [-1, -1, 0, 0, 0, 0]
        );
        assert_eq!(
            deltas.users[&("spring".to_owned(), bucket("b", -1))],
            [1, 2, 0, 0, 0, 0]
        );
        let moved = deltas.sums[&("spring".to_owned(), "m".to_owned(), bucket("b", -1))];
        assert_eq!(moved, [3.0, 9.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
        // On the fatigue curve, the person moved from one touch to two.
        let spring = |t| ("spring".to_owned(), t);
        assert_eq!(
            (deltas.fatigue_users[&spring(1)], deltas.fatigue_users[&spring(2)]),
            (-1, 1)
        );
        assert_eq!(
            deltas.fatigue_sums[&("spring".to_owned(), "m".to_owned(), 2)],
            [3.0, 9.0]
        );
    }
}
