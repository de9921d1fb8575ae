//! Experiment statistics from per-arm aggregates (users, sums, sums of squares, cross
//! products), equal to GrowthBook's stats engine (gbstats 0.8.0) to 1e-6 on the cases
//! in `tests/data/experiments`: the frequentist Welch t on the relative (delta-method)
//! or absolute lift, the asymptotic confidence sequence, the Bayesian normal posterior
//! with chance to win and risk, and the sample-ratio-mismatch check; for conversion,
//! count and ratio metrics, with or without CUPED's adjustment by a pre-exposure
//! covariate; and corrections of p-values for many metrics. Arm 0 is the baseline;
//! each other arm is compared with it.

pub mod special;

use serde::{Deserialize, Serialize};

use special::{chi2_sf, normal_cdf, normal_quantile, t_quantile, t_sf, truncated_normal_mean};

/// What a metric's per-user value is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricType {
    /// Converted or not: `sum` counts the users who converted.
    Binomial,
    /// A count or amount per user: `sum` and `sum_squares` of the values.
    Count,
    /// A ratio of two per-user amounts summed over users (revenue per order): `sum`
    /// and `sum_squares` of the numerator, `denominator_sum` and
    /// `denominator_sum_squares` of the denominator, `sum_products` of the two.
    Ratio,
}

/// One analysis: the aggregates of each arm and the settings (the case format of
/// `corvus stats analyze`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub metric_type: MetricType,
    /// The expected traffic split, for the sample-ratio-mismatch check.
    pub weights: Vec<f64>,
    pub variants: Vec<Variant>,
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// N* of the asymptotic confidence sequence.
    #[serde(default = "default_tuning")]
    pub sequential_tuning_parameter: f64,
    #[serde(default)]
    pub prior: Prior,
    /// Lower is better.
    #[serde(default)]
    pub inverse: bool,
}

fn default_alpha() -> f64 {
    0.05
}

fn default_tuning() -> f64 {
    5000.0
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Variant {
    pub name: String,
    pub users: f64,
    pub sum: f64,
    #[serde(default)]
    pub sum_squares: f64,
    /// A ratio metric's denominator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub denominator_sum: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub denominator_sum_squares: Option<f64>,
    /// Σ numerator × denominator over users.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sum_products: Option<f64>,
    /// CUPED's pre-exposure covariate (the same metric before exposure): its sum, sum
    /// of squares, and Σ value × covariate over users. Given for every arm or none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub covariate_sum: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub covariate_sum_squares: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub covariate_sum_products: Option<f64>,
}

/// The Bayesian prior on the relative lift (rescaled by the baseline's mean for the
/// absolute one); a flat prior when not `proper`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Prior {
    pub proper: bool,
    pub mean: f64,
    pub stddev: f64,
}

impl Default for Prior {
    fn default() -> Self {
        Self {
            proper: false,
            mean: 0.0,
            stddev: 0.3,
        }
    }
}

/// A case that cannot be analysed: the field, and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct Invalid {
    pub field: String,
    pub reason: String,
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Invalid {
    Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

impl Case {
    /// Whether the arms carry a pre-exposure covariate (those of the baseline decide).
    pub fn cuped(&self) -> bool {
        self.variants.first().is_some_and(|v| v.covariate_sum.is_some())
    }

    /// Checks the case: at least two arms, each with users, no negative or impossible
    /// aggregates, weights for every arm adding up to 1, settings in range.
    pub fn check(&self) -> Result<(), Invalid> {
        if self.variants.len() < 2 {
            return Err(invalid("variants", "a baseline and at least one arm to compare"));
        }
        for (i, v) in self.variants.iter().enumerate() {
            let at = |f: &str| format!("variants[{i}].{f}");
            if !(v.users.is_finite() && v.users >= 1.0 && v.users.fract() == 0.0) {
                return Err(invalid(at("users"), "a whole number of users, at least 1"));
            }
            if !v.sum.is_finite() || !v.sum_squares.is_finite() {
                return Err(invalid(at("sum"), "a finite number"));
            }
            match self.metric_type {
                MetricType::Binomial if !(0.0..=v.users).contains(&v.sum) => {
                    return Err(invalid(at("sum"), "conversions, from 0 to the users"));
                }
                MetricType::Count | MetricType::Ratio if v.sum_squares < 0.0 => {
                    return Err(invalid(at("sum_squares"), "a sum of squares is not negative"));
                }
                _ => {}
            }
            let ratio_parts = [v.denominator_sum, v.denominator_sum_squares, v.sum_products];
            match self.metric_type {
                MetricType::Ratio => {
                    if ratio_parts.iter().any(|p| !p.is_some_and(f64::is_finite)) {
                        return Err(invalid(
                            at("denominator_sum"),
                            "a ratio metric needs denominator_sum, denominator_sum_squares and sum_products",
                        ));
                    }
                    if v.denominator_sum_squares < Some(0.0) {
                        return Err(invalid(
                            at("denominator_sum_squares"),
                            "a sum of squares is not negative",
                        ));
                    }
                }
                _ if ratio_parts.iter().any(Option::is_some) => {
                    return Err(invalid(at("denominator_sum"), "only for a ratio metric"));
                }
                _ => {}
            }
            let covariate = [v.covariate_sum, v.covariate_sum_squares, v.covariate_sum_products];
            if covariate.iter().any(Option::is_some) != self.cuped() {
                return Err(invalid(
                    at("covariate_sum"),
                    "a covariate (covariate_sum, covariate_sum_squares, covariate_sum_products) for every arm or none",
                ));
            }
            if self.cuped() {
                if covariate.iter().any(|c| !c.is_some_and(f64::is_finite)) {
                    return Err(invalid(at("covariate_sum"), "each of the covariate's sums, finite"));
                }
                if v.covariate_sum_squares < Some(0.0) {
                    return Err(invalid(at("covariate_sum_squares"), "a sum of squares is not negative"));
                }
            }
        }
        if self.cuped() && self.metric_type == MetricType::Ratio {
            return Err(invalid(
                "metric_type",
                "CUPED adjusts a binomial or count metric, not a ratio",
            ));
        }
        if self.weights.len() != self.variants.len() {
            return Err(invalid(
                "weights",
                format!("one per variant ({}), not {}", self.variants.len(), self.weights.len()),
            ));
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
        if !(self.sequential_tuning_parameter.is_finite() && self.sequential_tuning_parameter > 0.0) {
            return Err(invalid("sequential_tuning_parameter", "above 0"));
        }
        if self.prior.proper && !(self.prior.stddev.is_finite() && self.prior.stddev > 0.0) {
            return Err(invalid("prior.stddev", "above 0 for a proper prior"));
        }
        if !self.prior.mean.is_finite() {
            return Err(invalid("prior.mean", "a finite number"));
        }
        Ok(())
    }
}

/// Sums over an arm's users of a per-user value.
#[derive(Debug, Clone, Copy)]
struct Sums {
    n: f64,
    sum: f64,
    sum_squares: f64,
    /// A 0/1 value: its variance is p(1 − p), without a correction for the sample.
    binomial: bool,
}

impl Sums {
    fn mean(&self) -> f64 {
        if self.n == 0.0 { 0.0 } else { self.sum / self.n }
    }

    fn variance(&self) -> f64 {
        match self.binomial {
            true => self.mean() * (1.0 - self.mean()),
            false if self.n <= 1.0 => 0.0,
            false => (self.sum_squares - self.sum * self.sum / self.n) / (self.n - 1.0),
        }
    }

    /// The sample covariance with `other`, from Σ self × other.
    fn covariance(&self, other: &Sums, sum_products: f64) -> f64 {
        if self.n <= 1.0 {
            return 0.0;
        }
        (sum_products - self.sum * other.sum / self.n) / (self.n - 1.0)
    }

    /// Two arms' sums as one.
    fn joint(&self, other: &Sums) -> Sums {
        Sums {
            n: self.n + other.n,
            sum: self.sum + other.sum,
            sum_squares: self.sum_squares + other.sum_squares,
            binomial: self.binomial,
        }
    }
}

/// An arm's statistic: the mean compared (CUPED-adjusted when there is a covariate),
/// the mean as observed, and the variance of the per-user value.
#[derive(Debug, Clone, Copy)]
struct Stat {
    n: f64,
    mean: f64,
    unadjusted_mean: f64,
    variance: f64,
}

impl Stat {
    fn stddev(&self) -> f64 {
        if self.variance <= 0.0 {
            0.0
        } else {
            self.variance.sqrt()
        }
    }
}

/// An arm's aggregates, as the metric reads them.
#[derive(Debug, Clone, Copy)]
struct Arm {
    value: Sums,
    /// A ratio's denominator and Σ numerator × denominator.
    denominator: Option<(Sums, f64)>,
    /// CUPED's covariate and Σ value × covariate.
    covariate: Option<(Sums, f64)>,
}

impl Arm {
    fn of(metric: MetricType, v: &Variant) -> Self {
        let sums = |sum, sum_squares, binomial| Sums {
            n: v.users,
            sum,
            sum_squares,
            binomial,
        };
        let binomial = metric == MetricType::Binomial;
        Arm {
            value: sums(v.sum, if binomial { v.sum } else { v.sum_squares }, binomial),
            denominator: match (v.denominator_sum, v.denominator_sum_squares, v.sum_products) {
                (Some(s), Some(ss), Some(p)) if metric == MetricType::Ratio => Some((sums(s, ss, false), p)),
                _ => None,
            },
            covariate: match (v.covariate_sum, v.covariate_sum_squares, v.covariate_sum_products) {
                (Some(s), Some(ss), Some(p)) => Some((sums(s, ss, false), p)),
                _ => None,
            },
        }
    }

    /// The statistic without CUPED: the value's, or the ratio's by the delta method.
    fn plain(&self) -> Stat {
        let m = self.value;
        let (mean, variance) = match self.denominator {
            None => (m.mean(), m.variance()),
            Some((d, products)) => {
                let mean = if d.sum == 0.0 { 0.0 } else { m.sum / d.sum };
                let variance = if d.mean() == 0.0 || m.n <= 1.0 {
                    0.0
                } else {
                    let cov = m.covariance(&d, products);
                    m.variance() / d.mean().powi(2) - 2.0 * cov * m.mean() / d.mean().powi(3)
                        + m.mean().powi(2) * d.variance() / d.mean().powi(4)
                };
                (mean, variance)
            }
        };
        Stat {
            n: m.n,
            mean,
            unadjusted_mean: mean,
            variance,
        }
    }

    /// CUPED-adjusted by θ: the mean less θ times the covariate's.
    fn adjusted(&self, theta: f64) -> Stat {
        let (post, (pre, products)) = (self.value, self.covariate.expect("a covariate"));
        let variance = if post.n <= 1.0 {
            0.0
        } else {
            post.variance() + theta * theta * pre.variance() - 2.0 * theta * post.covariance(&pre, products)
        };
        Stat {
            n: post.n,
            mean: post.mean() - theta * pre.mean(),
            unadjusted_mean: post.mean(),
            variance,
        }
    }
}

/// The statistics two arms are compared with: with a covariate, both adjusted by the θ
/// of the two arms' data together (the regression of the value on the covariate), or
/// unadjusted when either has no variance there.
fn pair(a: &Arm, b: &Arm) -> (Stat, Stat) {
    let (Some((pre_a, products_a)), Some((pre_b, products_b))) = (a.covariate, b.covariate) else {
        return (a.plain(), b.plain());
    };
    let (post, pre) = (a.value.joint(&b.value), pre_a.joint(&pre_b));
    if pre.variance() == 0.0 || post.variance() == 0.0 {
        return (a.plain(), b.plain());
    }
    let theta = post.covariance(&pre, products_a + products_b) / pre.variance();
    if theta == 0.0 {
        return (a.plain(), b.plain());
    }
    (a.adjusted(theta), b.adjusted(theta))
}

/// The lift of `b` over `a`, relative (to `a`'s mean as observed) or absolute.
fn lift(a: Stat, b: Stat, relative: bool) -> f64 {
    match relative {
        true => (b.mean - a.mean) / a.unadjusted_mean,
        false => b.mean - a.mean,
    }
}

/// Its variance: the delta method's for the relative lift.
fn lift_variance(a: Stat, b: Stat, relative: bool) -> f64 {
    let (ma, mb) = (a.unadjusted_mean, b.unadjusted_mean);
    match relative {
        true => b.variance / (ma.powi(2) * b.n) + a.variance * mb.powi(2) / (ma.powi(4) * a.n),
        false => b.variance / b.n + a.variance / a.n,
    }
}

/// Welch–Satterthwaite degrees of freedom.
fn welch_dof(a: Stat, b: Stat) -> f64 {
    (b.variance / b.n + a.variance / a.n).powi(2)
        / (b.variance.powi(2) / (b.n.powi(2) * (b.n - 1.0)) + a.variance.powi(2) / (a.n.powi(2) * (a.n - 1.0)))
}

/// The engines and lifts analysed, by the names of the report's sections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting {
    FrequentistRelative,
    FrequentistAbsolute,
    FrequentistSequentialRelative,
    BayesianRelative,
    BayesianAbsolute,
}

impl Setting {
    pub const ALL: [Setting; 5] = [
        Setting::FrequentistRelative,
        Setting::FrequentistAbsolute,
        Setting::FrequentistSequentialRelative,
        Setting::BayesianRelative,
        Setting::BayesianAbsolute,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Setting::FrequentistRelative => "frequentist_relative",
            Setting::FrequentistAbsolute => "frequentist_absolute",
            Setting::FrequentistSequentialRelative => "frequentist_sequential_relative",
            Setting::BayesianRelative => "bayesian_relative",
            Setting::BayesianAbsolute => "bayesian_absolute",
        }
    }

    fn relative(self) -> bool {
        !matches!(self, Setting::FrequentistAbsolute | Setting::BayesianAbsolute)
    }
}

/// The results of one setting: the sample-ratio check, and each arm.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Analysis {
    pub srm_p: f64,
    pub variations: Vec<Variation>,
}

/// An arm's figures; for each arm but the baseline, its comparison with it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Variation {
    pub name: String,
    pub users: f64,
    pub mean: f64,
    pub stddev: f64,
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub comparison: Option<Comparison>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// The lift reported (the posterior mean for a proper prior).
    pub expected: f64,
    /// The confidence (frequentist) or credible (Bayesian) interval.
    pub ci: [f64; 2],
    pub uplift_mean: f64,
    pub uplift_stddev: f64,
    /// Why the comparison could not be made (then the rest is uninformative).
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p_value: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chance_to_win: Option<f64>,
    /// The expected loss of choosing the baseline, and of choosing this arm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub risk: Option<[f64; 2]>,
    /// With CUPED: the share of the lift's variance the covariate took away.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cuped_variance_reduction: Option<f64>,
}

const BASELINE_ZERO: &str = "ZERO_NEGATIVE_BASELINE_VARIATION";
const ZERO_VARIANCE: &str = "ZERO_NEGATIVE_VARIANCE";

/// The sample-ratio-mismatch check: the chi-square goodness of fit of the users to the
/// weights, with k − 1 degrees of freedom.
pub fn srm_p(users: &[f64], weights: &[f64]) -> f64 {
    let observed: f64 = users.iter().sum();
    if observed == 0.0 {
        return 1.0;
    }
    let total: f64 = weights.iter().sum();
    let x: f64 = users
        .iter()
        .zip(weights)
        .filter(|(_, w)| **w > 0.0)
        .map(|(o, w)| {
            let e = w / total * observed;
            (o - e).powi(2) / e
        })
        .sum();
    chi2_sf(x, (users.len() - 1) as f64)
}

/// Every setting's analysis of a checked case, in `Setting::ALL`'s order.
pub fn analyze(case: &Case) -> Vec<(Setting, Analysis)> {
    Setting::ALL.iter().map(|&s| (s, analyze_one(case, s))).collect()
}

/// Each arm's figures as observed, without a comparison: what a report shows of an arm
/// whether or not there is another to compare it with.
pub fn observed(metric_type: MetricType, variants: &[Variant]) -> Vec<Variation> {
    variants
        .iter()
        .map(|v| {
            let stat = Arm::of(metric_type, v).plain();
            Variation {
                name: v.name.clone(),
                users: v.users,
                mean: stat.unadjusted_mean,
                stddev: stat.stddev(),
                comparison: None,
            }
        })
        .collect()
}

pub fn analyze_one(case: &Case, setting: Setting) -> Analysis {
    let arms: Vec<Arm> = case.variants.iter().map(|v| Arm::of(case.metric_type, v)).collect();
    let users: Vec<f64> = case.variants.iter().map(|v| v.users).collect();
    let figures = |v: &Variant, stat: Stat, comparison| Variation {
        name: v.name.clone(),
        users: v.users,
        mean: stat.unadjusted_mean,
        stddev: stat.stddev(),
        comparison,
    };
    let mut variations = Vec::with_capacity(arms.len());
    // The baseline as its last comparison saw it (with CUPED, adjusted by that pair's θ),
    // as gbstats reports it.
    let mut baseline = arms[0].plain();
    for (v, arm) in case.variants.iter().zip(&arms).skip(1) {
        let (a, b) = pair(&arms[0], arm);
        baseline = a;
        let mut comparison = compare(case, setting, a, b);
        if case.cuped() && comparison.error.is_none() {
            let (plain_a, plain_b) = (arms[0].plain(), arm.plain());
            let before = lift_variance(plain_a, plain_b, setting.relative());
            let after = lift_variance(a, b, setting.relative());
            comparison.cuped_variance_reduction = (before > 0.0).then(|| 1.0 - after / before);
        }
        variations.push(figures(v, b, Some(comparison)));
    }
    variations.insert(0, figures(&case.variants[0], baseline, None));
    Analysis {
        srm_p: srm_p(&users, &case.weights),
        variations,
    }
}

fn compare(case: &Case, setting: Setting, a: Stat, b: Stat) -> Comparison {
    let relative = setting.relative();
    let bayesian = matches!(setting, Setting::BayesianRelative | Setting::BayesianAbsolute);
    let uninformative = |error: &str| Comparison {
        expected: 0.0,
        ci: [0.0, 0.0],
        uplift_mean: 0.0,
        uplift_stddev: 0.0,
        error: Some(error.to_owned()),
        p_value: (!bayesian).then_some(1.0),
        chance_to_win: bayesian.then_some(0.5),
        risk: bayesian.then_some([0.0, 0.0]),
        cuped_variance_reduction: None,
    };
    let baseline_zero = a.mean == 0.0 || a.unadjusted_mean == 0.0;
    let mut result = if baseline_zero && (relative || !bayesian) {
        uninformative(BASELINE_ZERO)
    } else if a.variance <= 0.0 || b.variance <= 0.0 {
        uninformative(ZERO_VARIANCE)
    } else if bayesian {
        bayesian_comparison(case, a, b, relative)
    } else {
        frequentist_comparison(case, setting, a, b, relative)
    };
    // As gbstats reports it: nothing for a baseline without a positive mean, and at
    // least the raw relative difference when the comparison could not be made.
    if a.unadjusted_mean <= 0.0 {
        result.expected = 0.0;
    } else if result.expected == 0.0 {
        result.expected = (b.mean - a.mean) / a.unadjusted_mean;
    }
    result
}

fn frequentist_comparison(case: &Case, setting: Setting, a: Stat, b: Stat, relative: bool) -> Comparison {
    let estimate = lift(a, b, relative);
    let variance = lift_variance(a, b, relative);
    let se = variance.sqrt();
    let (ci, p_value) = if setting == Setting::FrequentistSequentialRelative {
        // The asymptotic confidence sequence of Waudby-Smith et al. (2023), eq. 9, with
        // ρ from eq. 161 and the p-value from the e-value of eq. 155.
        let alpha = case.alpha;
        let n = a.n + b.n;
        let rho = ((-2.0 * alpha.ln() + (-2.0 * alpha.ln() + 1.0).ln()) / case.sequential_tuning_parameter).sqrt();
        let nr2 = n * rho * rho + 1.0;
        let width = (variance * n).sqrt() * (2.0 * nr2 * ((nr2.sqrt()) / alpha).ln() / (n * rho).powi(2)).sqrt();
        let st2 = estimate.powi(2) * n / variance;
        let evalue = (rho * rho * st2 / (2.0 * nr2)).exp() / nr2.sqrt();
        ([estimate - width, estimate + width], (1.0 / evalue).min(1.0))
    } else {
        let dof = welch_dof(a, b);
        let width = t_quantile(1.0 - case.alpha / 2.0, dof) * se;
        let t = estimate / se;
        ([estimate - width, estimate + width], 2.0 * t_sf(t.abs(), dof))
    };
    Comparison {
        expected: estimate,
        ci,
        uplift_mean: estimate,
        uplift_stddev: se,
        error: None,
        p_value: Some(p_value),
        chance_to_win: None,
        risk: None,
        cuped_variance_reduction: None,
    }
}

fn bayesian_comparison(case: &Case, a: Stat, b: Stat, relative: bool) -> Comparison {
    // The prior is on the relative lift: rescaled by the baseline's mean for the
    // absolute one.
    let prior = &case.prior;
    let (prior_mean, prior_variance) = match relative {
        true => (prior.mean, prior.stddev.powi(2)),
        false => (
            prior.mean * a.unadjusted_mean.abs(),
            prior.stddev.powi(2) * a.unadjusted_mean.powi(2),
        ),
    };
    let data_variance = lift_variance(a, b, relative);
    let data_mean = lift(a, b, relative);
    let precision = 1.0 / data_variance + f64::from(u8::from(prior.proper)) / prior_variance;
    let mean = match prior.proper {
        true => (data_mean / data_variance + prior_mean / prior_variance) / precision,
        false => data_mean,
    };
    let sd = (1.0 / precision).sqrt();
    let above_zero = normal_cdf(mean / sd);
    let chance_to_win = if case.inverse { 1.0 - above_zero } else { above_zero };
    let z = normal_quantile(1.0 - case.alpha / 2.0);
    // normal_quantile(α/2) = −z: the interval is symmetric about the mean.
    let ci = [mean - z * sd, mean + z * sd];
    let below = normal_cdf(-mean / sd);
    let mean_below = truncated_normal_mean(mean, sd, f64::NEG_INFINITY, 0.0);
    let mean_above = truncated_normal_mean(mean, sd, 0.0, f64::INFINITY);
    let risk = [(1.0 - below) * mean_above, -(below * mean_below)];
    Comparison {
        expected: mean,
        ci,
        uplift_mean: mean,
        uplift_stddev: sd,
        error: None,
        p_value: None,
        chance_to_win: Some(chance_to_win),
        risk: Some(if case.inverse { [risk[1], risk[0]] } else { risk }),
        cuped_variance_reduction: None,
    }
}

/// A case's report as `corvus stats analyze` prints it: each setting by name.
pub fn report(case: &Case) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    for (setting, analysis) in analyze(case) {
        out.insert(
            setting.name().to_owned(),
            serde_json::to_value(analysis).expect("an analysis serialises"),
        );
    }
    serde_json::Value::Object(out)
}

/// How p-values of many metrics (or arms) are corrected together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Correction {
    /// Holm–Bonferroni: controls the family-wise error rate.
    Holm,
    /// Benjamini–Hochberg: controls the false discovery rate.
    BenjaminiHochberg,
}

/// The p-values adjusted for their number, in their order: compare each with alpha.
pub fn adjust(correction: Correction, p_values: &[f64]) -> Vec<f64> {
    let m = p_values.len();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&a, &b| p_values[a].total_cmp(&p_values[b]));
    let mut adjusted = vec![0.0; m];
    match correction {
        Correction::Holm => {
            // Step down: (m − rank)·p, never below an earlier one's.
            let mut floor: f64 = 0.0;
            for (rank, &i) in order.iter().enumerate() {
                floor = floor.max(((m - rank) as f64 * p_values[i]).min(1.0));
                adjusted[i] = floor;
            }
        }
        Correction::BenjaminiHochberg => {
            // Step up: m·p/rank, never above a later one's.
            let mut ceiling: f64 = 1.0;
            for (rank, &i) in order.iter().enumerate().rev() {
                ceiling = ceiling.min(m as f64 * p_values[i] / (rank + 1) as f64);
                adjusted[i] = ceiling;
            }
        }
    }
    adjusted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corrections_for_many_metrics() {
        let p = [0.01, 0.04, 0.03, 0.005, 0.2, 0.04];
        let close = |got: Vec<f64>, want: [f64; 6]| {
            assert!(
                got.iter().zip(want).all(|(g, w)| (g - w).abs() < 1e-12),
                "{got:?} against {want:?}"
            );
        };
        // scipy.stats.false_discovery_control(p, method="bh"), scipy 1.17.1.
        close(
            adjust(Correction::BenjaminiHochberg, &p),
            [0.03, 0.048, 0.048, 0.03, 0.2, 0.048],
        );
        // Holm by hand: sorted 0.005, 0.01, 0.03, 0.04, 0.04, 0.2 times 6, 5, 4, 3, 2, 1
        // is 0.03, 0.05, 0.12, 0.12, 0.08, 0.2; each at least the one before.
        close(adjust(Correction::Holm, &p), [0.05, 0.12, 0.12, 0.03, 0.2, 0.12]);
    }
}
