//! A campaign's report from its aggregates, overall or per channel, segment, action or
//! day: the funnel (people, touches, sent, delivered, opened, clicked, converted), revenue,
//! and the lift of conversion and revenue against the holdout; and the fatigue curve,
//! response against touches, with the point where it drops.

use std::collections::BTreeMap;

use crate::metric::Metric;
use crate::stats::{self, Case, Comparison, MetricType, Prior, Setting};
use crate::storage::{Dimension, FatigueRow, ReportCell};
use crate::units::{Counts, Sums};

/// The arms people are held out in: they make the baseline of the lift.
pub const HELD_OUT: [&str; 2] = ["holdout", "control"];

/// One key of a report.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Row {
    pub key: String,
    /// Over every arm: people, touches, and the people who reached each stage.
    pub counts: Counts,
    pub held_out: u64,
    /// Of the treated people (every arm but the held-out ones).
    pub converted: f64,
    pub conversion_rate: f64,
    pub revenue: f64,
    pub revenue_per_person: f64,
    /// Treated against held out, relative; `None` without both, or without the metric.
    pub conversion_lift: Option<Comparison>,
    pub revenue_lift: Option<Comparison>,
}

/// The metrics a report reads.
#[derive(Debug, Clone, Default)]
pub struct Metrics<'a> {
    pub conversion: Option<&'a Metric>,
    pub revenue: Option<&'a Metric>,
}

/// People and sums of one group of arms.
#[derive(Debug, Clone, Copy, Default)]
struct Group {
    counts: Counts,
    conversion: Sums,
    revenue: Sums,
}

impl Group {
    fn add(&mut self, cell: &ReportCell, metrics: &Metrics) {
        for (a, b) in self.counts.iter_mut().zip(cell.counts) {
            *a += b;
        }
        let sums = |m: Option<&Metric>| m.and_then(|m| cell.sums.get(&m.name)).copied().unwrap_or_default();
        for (target, add) in [
            (&mut self.conversion, sums(metrics.conversion)),
            (&mut self.revenue, sums(metrics.revenue)),
        ] {
            for (a, b) in target.iter_mut().zip(add) {
                *a += b;
            }
        }
    }

    fn people(&self) -> f64 {
        self.counts[0] as f64
    }
}

/// The relative lift of `treated` over `held` on a metric: gbstats' frequentist relative
/// setting over the two groups (the sums of the metric, without CUPED).
fn lift(
    metric: &Metric,
    held: &Sums,
    held_people: f64,
    treated: &Sums,
    treated_people: f64,
    alpha: f64,
) -> Option<Comparison> {
    if held_people < 1.0 || treated_people < 1.0 {
        return None;
    }
    let variant = |name: &str, users: f64, s: &Sums| crate::results::variant(metric.metric_type, name, users, s, false);
    let case = Case {
        metric_type: metric.metric_type,
        weights: vec![0.5, 0.5],
        variants: vec![
            variant("held out", held_people, held),
            variant("treated", treated_people, treated),
        ],
        alpha,
        sequential_tuning_parameter: 5000.0,
        prior: Prior::default(),
        inverse: metric.inverse,
    };
    case.check().ok()?;
    stats::analyze_one(&case, Setting::FrequentistRelative)
        .variations
        .pop()
        .and_then(|v| v.comparison)
}

/// The report's rows (the overall one first when `dimension` is `Overall`), from the
/// cells of every key and arm. Held-out people have no channel or action of their own:
/// per channel or action, each key's treated people are compared with every held-out
/// person; per segment or day, with the held-out people of the same key.
pub fn rows(cells: &[ReportCell], dimension: Dimension, metrics: &Metrics, alpha: f64) -> Vec<Row> {
    let mut all_held = Group::default();
    let mut by_key: BTreeMap<&str, (Group, Group)> = BTreeMap::new();
    for cell in cells {
        let (held, treated) = by_key.entry(cell.key.as_str()).or_default();
        if HELD_OUT.contains(&cell.arm.as_str()) {
            held.add(cell, metrics);
            all_held.add(cell, metrics);
        } else {
            treated.add(cell, metrics);
        }
    }
    let pooled = matches!(dimension, Dimension::Channel | Dimension::Action);
    by_key
        .into_iter()
        .map(|(key, (held, treated))| {
            let baseline = if pooled { &all_held } else { &held };
            let mut counts = held.counts;
            for (a, b) in counts.iter_mut().zip(treated.counts) {
                *a += b;
            }
            let n = treated.people();
            let per = |x: f64| if n > 0.0 { x / n } else { 0.0 };
            let lift_of = |m: Option<&Metric>, pick: fn(&Group) -> &Sums| {
                m.and_then(|m| lift(m, pick(baseline), baseline.people(), pick(&treated), n, alpha))
            };
            Row {
                key: key.to_owned(),
                counts,
                held_out: held.counts[0] as u64,
                converted: treated.conversion[0],
                conversion_rate: per(treated.conversion[0]),
                revenue: treated.revenue[0],
                revenue_per_person: per(treated.revenue[0]),
                conversion_lift: lift_of(metrics.conversion, |g| &g.conversion),
                revenue_lift: lift_of(metrics.revenue, |g| &g.revenue),
            }
        })
        .collect()
}

/// A point of the fatigue curve: the mean response of the people with that many touches,
/// with its interval at `1 − alpha` (normal approximation).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FatiguePoint {
    pub touches: u32,
    pub people: u64,
    pub response: f64,
    pub ci: [f64; 2],
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Fatigue {
    pub points: Vec<FatiguePoint>,
    /// The touches (at least one) with the highest response among points with at least
    /// the minimum of people; 0 when none has.
    pub peak: u32,
    /// The first touches after the peak whose whole interval lies below the peak's
    /// response: from there, more sends bring less. 0 when none does.
    pub drops_at: u32,
}

/// The fatigue curve of a metric from its rows.
pub fn fatigue(metric: &Metric, rows: &[FatigueRow], min_people: u64, alpha: f64) -> Fatigue {
    let z = stats::special::normal_quantile(1.0 - alpha / 2.0);
    let points: Vec<FatiguePoint> = rows
        .iter()
        .map(|r| {
            let n = r.users as f64;
            let mean = r.sum / n;
            let variance = match metric.metric_type {
                MetricType::Binomial => mean * (1.0 - mean),
                _ if n > 1.0 => ((r.sum_squares - r.sum * r.sum / n) / (n - 1.0)).max(0.0),
                _ => 0.0,
            };
            let half = z * (variance / n).sqrt();
            FatiguePoint {
                touches: r.touches,
                people: r.users,
                response: mean,
                ci: [mean - half, mean + half],
            }
        })
        .collect();
    let enough = |p: &&FatiguePoint| p.touches >= 1 && p.people >= min_people;
    let peak = points
        .iter()
        .filter(enough)
        .max_by(|a, b| a.response.total_cmp(&b.response));
    let (peak, drops_at) = match peak {
        None => (0, 0),
        Some(top) => {
            let drop = points
                .iter()
                .filter(enough)
                .find(|p| p.touches > top.touches && p.ci[1] < top.response);
            (top.touches, drop.map_or(0, |p| p.touches))
        }
    };
    Fatigue { points, peak, drops_at }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metric::EventFilter;

    fn converted() -> Metric {
        Metric {
            name: "converted".into(),
            metric_type: MetricType::Binomial,
            numerator: EventFilter {
                event: "Order Completed".into(),
                ..Default::default()
            },
            denominator: None,
            window_seconds: 86_400,
            lookback_seconds: 0,
            inverse: false,
            guardrail: false,
            description: String::new(),
        }
    }

    fn row(touches: u32, users: u64, sum: f64) -> FatigueRow {
        FatigueRow {
            touches,
            users,
            sum,
            sum_squares: sum,
        }
    }

    #[test]
    fn fatigue_peaks_and_drops_where_the_interval_falls_below_the_peak() {
        let rows = [
            row(0, 1_000, 50.0),
            row(1, 1_000, 80.0),
            row(2, 1_000, 100.0),
            row(3, 1_000, 90.0),
            row(4, 1_000, 60.0),
            row(5, 10, 10.0),
        ];
        let f = fatigue(&converted(), &rows, 30, 0.05);
        // 5 touches has the highest rate but too few people. The interval at 3 reaches
        // the peak's 0.10; at 4, 0.06 ± 1.96·√(0.06·0.94/1000) = [0.045, 0.075] is below.
        assert_eq!((f.peak, f.drops_at), (2, 4));
        let p = f.points[4];
        assert!((p.ci[1] - (0.06 + 1.959963984540054 * (0.06f64 * 0.94 / 1000.0).sqrt())).abs() < 1e-12);
    }

    #[test]
    fn lift_per_channel_compares_with_every_held_out_person() {
        let cell = |key: &str, arm: &str, users: i64, converted: f64| ReportCell {
            key: key.into(),
            arm: arm.into(),
            counts: [users, 0, 0, 0, 0, 0],
            sums: [(
                "converted".to_owned(),
                [converted, converted, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
            )]
            .into(),
        };
        let cells = [
            cell("none", "holdout", 1_000, 100.0),
            cell("email", "a", 2_000, 240.0),
            cell("sms", "a", 2_000, 200.0),
        ];
        let m = converted();
        let metrics = Metrics {
            conversion: Some(&m),
            revenue: None,
        };
        let rows = rows(&cells, Dimension::Channel, &metrics, 0.05);
        let email = rows.iter().find(|r| r.key == "email").unwrap();
        assert_eq!(
            (email.counts[0], email.held_out, email.conversion_rate),
            (2_000, 0, 0.12)
        );
        // 12 % against the holdout's 10 %: +20 %.
        let lift = email.conversion_lift.as_ref().unwrap();
        assert!((lift.expected - 0.2).abs() < 1e-12);
        // The held-out row has no treated people to compare.
        let none = rows.iter().find(|r| r.key == "none").unwrap();
        assert!(none.conversion_lift.is_none());
        assert_eq!(none.held_out, 1_000);
    }
}
