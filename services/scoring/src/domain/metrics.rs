//! How well probabilities predict outcomes: AUC, log-loss, Brier score and a
//! reliability table with the expected calibration error, as scikit-learn computes them.

use serde::{Deserialize, Serialize};

/// The area under the ROC curve: the probability that a positive scores above a
/// negative, ties counting half (Mann–Whitney U with mid-ranks; scikit-learn's
/// `roc_auc_score`). NaN without both classes.
pub fn auc(scores: &[f64], labels: &[bool]) -> f64 {
    let positives = labels.iter().filter(|y| **y).count() as f64;
    let negatives = labels.len() as f64 - positives;
    if positives == 0.0 || negatives == 0.0 {
        return f64::NAN;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&i, &j| scores[i].total_cmp(&scores[j]));
    let mut rank_sum = 0.0;
    let mut start = 0;
    while start < order.len() {
        let mut end = start;
        while end + 1 < order.len() && scores[order[end + 1]] == scores[order[start]] {
            end += 1;
        }
        // Ranks start..=end (1-based start + 1..=end + 1) share their mean.
        let mid_rank = (start + end) as f64 / 2.0 + 1.0;
        rank_sum += mid_rank * order[start..=end].iter().filter(|&&i| labels[i]).count() as f64;
        start = end + 1;
    }
    (rank_sum - positives * (positives + 1.0) / 2.0) / (positives * negatives)
}

/// The mean negative log-likelihood, probabilities clipped to [ε, 1 − ε] (ε the f64
/// machine epsilon), as scikit-learn's `log_loss`.
pub fn log_loss(probabilities: &[f64], labels: &[bool]) -> f64 {
    let clip = |p: f64| p.clamp(f64::EPSILON, 1.0 - f64::EPSILON);
    let total: f64 = probabilities
        .iter()
        .zip(labels)
        .map(|(&p, &y)| if y { -clip(p).ln() } else { -clip(1.0 - p).ln() })
        .sum();
    total / probabilities.len() as f64
}

/// The mean squared difference between probability and outcome.
pub fn brier(probabilities: &[f64], labels: &[bool]) -> f64 {
    let total: f64 = probabilities
        .iter()
        .zip(labels)
        .map(|(&p, &y)| (p - if y { 1.0 } else { 0.0 }).powi(2))
        .sum();
    total / probabilities.len() as f64
}

/// One of the reliability table's bins.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ReliabilityBin {
    pub count: u64,
    /// The mean probability in the bin (0 when empty).
    pub mean_predicted: f64,
    /// The share of positives in the bin (0 when empty).
    pub observed_rate: f64,
}

/// Predicted against observed in ten equal-width bins of probability, and the expected
/// calibration error: Σ (count / n) |mean predicted − observed rate|.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reliability {
    pub bins: Vec<ReliabilityBin>,
    pub ece: f64,
}

pub const RELIABILITY_BINS: usize = 10;

/// The reliability table. A probability on an inner edge goes to the bin below it
/// (bin k holds (k/10, (k+1)/10], the first also 0), the edges `k × 0.1` as
/// scikit-learn's `calibration_curve(strategy="uniform")` computes them.
pub fn reliability(probabilities: &[f64], labels: &[bool]) -> Reliability {
    let mut sums = [(0u64, 0.0, 0.0); RELIABILITY_BINS];
    for (&p, &y) in probabilities.iter().zip(labels) {
        let bin = (1..RELIABILITY_BINS).filter(|&k| k as f64 * 0.1 < p).count();
        let sum = &mut sums[bin];
        *sum = (sum.0 + 1, sum.1 + p, sum.2 + if y { 1.0 } else { 0.0 });
    }
    let n = probabilities.len() as f64;
    let mut ece = 0.0;
    let bins = sums
        .iter()
        .map(|&(count, predicted, observed)| {
            if count == 0 {
                return ReliabilityBin::default();
            }
            let c = count as f64;
            let bin = ReliabilityBin {
                count,
                mean_predicted: predicted / c,
                observed_rate: observed / c,
            };
            ece += c / n * (bin.mean_predicted - bin.observed_rate).abs();
            bin
        })
        .collect();
    Reliability { bins, ece }
}

/// How well probabilities predict outcomes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    pub examples: u64,
    pub positives: u64,
    pub auc: f64,
    pub log_loss: f64,
    pub brier: f64,
    pub reliability: Reliability,
}

pub fn evaluate(probabilities: &[f64], labels: &[bool]) -> Evaluation {
    Evaluation {
        examples: labels.len() as u64,
        positives: labels.iter().filter(|y| **y).count() as u64,
        auc: auc(probabilities, labels),
        log_loss: log_loss(probabilities, labels),
        brier: brier(probabilities, labels),
        reliability: reliability(probabilities, labels),
    }
}
