//! Experiment planning before launch: how many people, and how many days of the
//! audience's eligible traffic, an experiment needs to detect a minimum detectable
//! effect (MDE) with a given power; and the inverse, the MDE a number of people or days
//! can detect, which dashboards show. From the baseline the workspace observed (a
//! conversion rate, or a mean and standard deviation) and its daily traffic.
//!
//! The convention is the two-sample z-test's normal approximation with the variance
//! under the alternative in both terms (the "unpooled" formula of Chow, Shao and Wang,
//! *Sample Size Calculations in Clinical Research*, with unequal allocation):
//!
//! ```text
//! n_b = (z_{1−α/2} + z_{power})² · (σ_a²/k + σ_b²) / δ²,   n_a = k · n_b,   k = w_a / w_b
//! ```
//!
//! for the baseline arm a and a treated arm b, δ the absolute effect (a relative MDE
//! times the baseline's mean), σ_a² = σ_b² the metric's variance for a count, and
//! p_a(1 − p_a), p_b(1 − p_b) with p_b = p_a + δ for a conversion rate. Like most
//! calculators it ignores the far tail of the two-sided test (a significant result in
//! the wrong direction): statsmodels' `NormalIndPower` with `alternative="larger"` at
//! α/2 gives the same n (the reference values of `tests/data/planning`); counting the
//! far tail ("two-sided") makes it about 2.4e-6 smaller. Evan Miller's calculator and
//! statsmodels' `samplesize_proportions_2indep_onetail` take the pooled rate's variance
//! for the z_{1−α/2} term instead, and GrowthBook's sizes the relative lift with its
//! delta-method variance; they differ from this by up to a few per cent.
//!
//! Arm 0 is the baseline, as in `stats`; each other arm is compared with it.

use serde::{Deserialize, Serialize};

use crate::stats::special::normal_quantile;
use crate::stats::{Invalid, MetricType, Variant, observed};

/// What the metric looked like before the experiment, in the audience to be tested.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Baseline {
    /// A conversion rate, strictly between 0 and 1.
    Binomial { rate: f64 },
    /// A count or amount per person: its mean, and its standard deviation, taken to be
    /// the same in every arm.
    Count { mean: f64, stddev: f64 },
}

impl Baseline {
    /// A count metric from its mean and variance.
    pub fn count_with_variance(mean: f64, variance: f64) -> Self {
        Baseline::Count {
            mean,
            stddev: variance.sqrt(),
        }
    }

    /// The baseline an arm's aggregates show, as `stats` reads them. A ratio metric is
    /// planned as a count with its delta-method variance per person, which is what its
    /// analysis divides by the people.
    pub fn observed(metric_type: MetricType, arm: &Variant) -> Self {
        let seen = &observed(metric_type, std::slice::from_ref(arm))[0];
        match metric_type {
            MetricType::Binomial => Baseline::Binomial { rate: seen.mean },
            MetricType::Count | MetricType::Ratio => Baseline::Count {
                mean: seen.mean,
                stddev: seen.stddev,
            },
        }
    }

    fn mean(&self) -> f64 {
        match *self {
            Baseline::Binomial { rate } => rate,
            Baseline::Count { mean, .. } => mean,
        }
    }

    /// The per-person variances of the baseline arm and of an arm `effect` above it.
    fn variances(&self, effect: f64) -> (f64, f64) {
        match *self {
            Baseline::Binomial { rate } => {
                let treated = rate + effect;
                (rate * (1.0 - rate), treated * (1.0 - treated))
            }
            Baseline::Count { stddev, .. } => (stddev * stddev, stddev * stddev),
        }
    }
}

/// An experiment to be launched: the metric, the split and the test.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    pub metric: Baseline,
    /// Each arm's share of the traffic, the baseline's first; they add up to 1.
    pub weights: Vec<f64>,
    /// MDEs, given and returned, are in the metric's unit (0.01 = one point of a rate)
    /// rather than a share of the baseline's mean (0.05 = +5 %, the default).
    #[serde(default)]
    pub absolute: bool,
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    #[serde(default = "default_power")]
    pub power: f64,
    /// Split alpha evenly over the comparisons with the baseline. Off by default, as
    /// `stats` tests each arm at alpha; on when the decision corrects the arms' p-values
    /// for their number (`stats::adjust` with Holm, which rejects whatever Bonferroni
    /// does, so the power planned with it holds).
    #[serde(default)]
    pub bonferroni: bool,
    /// People a day entering the experiment (all arms together), for the days.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily_traffic: Option<f64>,
}

fn default_alpha() -> f64 {
    0.05
}

fn default_power() -> f64 {
    0.8
}

/// What an experiment needs to detect the MDE.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sizing {
    /// People each arm needs, unrounded. The binding comparison's two arms need exactly
    /// these; the other arms get their share of the same total on the way.
    pub per_arm: Vec<f64>,
    /// The same, rounded up.
    pub people: Vec<u64>,
    pub total: u64,
    /// Days of the daily traffic until every arm has its people, when it is known.
    pub days: Option<u64>,
    /// The treated arm whose comparison with the baseline needs the most people: for
    /// the same variance, the smallest (the last of equal ones).
    pub binding: usize,
    /// The level each comparison is tested at: alpha, or its Bonferroni share.
    pub alpha: f64,
    /// The MDE in the metric's unit.
    pub effect: f64,
}

/// What an experiment can spend: people entering it in all, or days of the traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Budget {
    People(u64),
    Days(u64),
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Invalid {
    Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

impl Plan {
    /// Checks the plan: a rate strictly between 0 and 1 or a metric that varies, a
    /// baseline and at least one arm whose shares add up to 1, alpha and power in range,
    /// and traffic above 0 when given.
    pub fn check(&self) -> Result<(), Invalid> {
        match self.metric {
            Baseline::Binomial { rate } if !(rate > 0.0 && rate < 1.0) => {
                return Err(invalid("metric.rate", "strictly between 0 and 1"));
            }
            Baseline::Count { mean, .. } if !mean.is_finite() => {
                return Err(invalid("metric.mean", "a finite number"));
            }
            Baseline::Count { stddev, .. } if !(stddev.is_finite() && stddev > 0.0) => {
                return Err(invalid(
                    "metric.stddev",
                    "above 0: a metric that never varies shows no effect",
                ));
            }
            _ => {}
        }
        if !self.absolute && self.metric.mean() == 0.0 {
            return Err(invalid(
                "metric.mean",
                "not 0 for a relative MDE (plan an absolute one)",
            ));
        }
        if self.weights.len() < 2 {
            return Err(invalid("weights", "a baseline and at least one arm to compare"));
        }
        if let Some(i) = self.weights.iter().position(|w| !(w.is_finite() && *w > 0.0)) {
            return Err(invalid(format!("weights[{i}]"), "a share above 0"));
        }
        let total: f64 = self.weights.iter().sum();
        if (total - 1.0).abs() > 1e-6 {
            return Err(invalid("weights", format!("shares add up to 1, not {total}")));
        }
        if !(self.alpha > 0.0 && self.alpha < 1.0) {
            return Err(invalid("alpha", "between 0 and 1"));
        }
        // Below α/2 the test rejects more often by chance than the power asked for.
        if !(self.power > self.test_alpha() / 2.0 && self.power < 1.0) {
            return Err(invalid("power", "between 0 and 1, above the test's alpha / 2"));
        }
        if self.daily_traffic.is_some_and(|t| !(t.is_finite() && t > 0.0)) {
            return Err(invalid("daily_traffic", "people a day, above 0"));
        }
        Ok(())
    }

    /// The level each comparison is tested at.
    fn test_alpha(&self) -> f64 {
        match self.bonferroni {
            true => self.alpha / (self.weights.len() - 1) as f64,
            false => self.alpha,
        }
    }

    /// z_{1−α/2} + z_{power}.
    fn z(&self) -> f64 {
        normal_quantile(1.0 - self.test_alpha() / 2.0) + normal_quantile(self.power)
    }
}

/// The people and days needed to detect `mde` (relative or absolute, as the plan says)
/// in every comparison with the baseline.
pub fn size(plan: &Plan, mde: f64) -> Result<Sizing, Invalid> {
    plan.check()?;
    if !(mde.is_finite() && mde > 0.0) {
        return Err(invalid("mde", "a rise above 0"));
    }
    let effect = match plan.absolute {
        true => mde,
        false => mde * plan.metric.mean().abs(),
    };
    if let Baseline::Binomial { rate } = plan.metric
        && rate + effect >= 1.0
    {
        return Err(invalid("mde", "the treated rate, the baseline's plus the MDE, below 1"));
    }
    let (z, w) = (plan.z(), &plan.weights);
    let (baseline_variance, treated_variance) = plan.metric.variances(effect);
    // Comparison i needs n_i in arm i and k·n_i in the baseline: both are reached when
    // n_i / w_i people have entered.
    let (binding, total) = (1..w.len())
        .map(|i| {
            let k = w[0] / w[i];
            let treated = z * z * (baseline_variance / k + treated_variance) / (effect * effect);
            (i, treated / w[i])
        })
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .expect("at least two arms");
    // More people than there are, and beyond what the integers below add up.
    if total >= 1e15 {
        return Err(invalid("mde", "too small to detect in any audience"));
    }
    let per_arm: Vec<f64> = w.iter().map(|w| total * w).collect();
    let people: Vec<u64> = per_arm.iter().map(|n| n.ceil() as u64).collect();
    let days = plan.daily_traffic.map(|traffic| {
        people
            .iter()
            .zip(w)
            .map(|(&n, w)| (n as f64 / (traffic * w)).ceil() as u64)
            .max()
            .expect("at least two arms")
    });
    Ok(Sizing {
        per_arm,
        total: people.iter().sum(),
        people,
        days,
        binding,
        alpha: plan.test_alpha(),
        effect,
    })
}

/// The smallest MDE (relative or absolute, as the plan says) that every comparison with
/// the baseline detects with the plan's power within the budget.
pub fn detectable(plan: &Plan, budget: Budget) -> Result<f64, Invalid> {
    plan.check()?;
    let total = match budget {
        Budget::People(0) => return Err(invalid("people", "at least 1")),
        Budget::Days(0) => return Err(invalid("days", "at least 1")),
        Budget::People(n) => n as f64,
        Budget::Days(d) => {
            let traffic = plan
                .daily_traffic
                .ok_or_else(|| invalid("daily_traffic", "needed to plan by days"))?;
            d as f64 * traffic
        }
    };
    let (z, w) = (plan.z(), &plan.weights);
    let effect = (1..w.len())
        .map(|i| {
            let (n_a, n_b) = (total * w[0], total * w[i]);
            match plan.metric {
                Baseline::Count { stddev, .. } => z * stddev * (1.0 / n_a + 1.0 / n_b).sqrt(),
                // δ² = z²·(v/n_a + p_b(1 − p_b)/n_b) with p_b(1 − p_b) = v + δ(1 − 2p) − δ²:
                // a quadratic in δ, whose positive root this is.
                Baseline::Binomial { rate: p } => {
                    let (q, v) = (z * z, p * (1.0 - p));
                    let a = 1.0 + q / n_b;
                    let b = q * (1.0 - 2.0 * p) / n_b;
                    let c = q * v * (1.0 / n_a + 1.0 / n_b);
                    (b + (b * b + 4.0 * a * c).sqrt()) / (2.0 * a)
                }
            }
        })
        .fold(0.0, f64::max);
    if let Baseline::Binomial { rate } = plan.metric
        && rate + effect >= 1.0
    {
        let field = if matches!(budget, Budget::Days(_)) {
            "days"
        } else {
            "people"
        };
        return Err(invalid(field, "too few to detect any rise of the rate"));
    }
    Ok(match plan.absolute {
        true => effect,
        false => effect / plan.metric.mean().abs(),
    })
}
