//! The Fellegi–Sunter model: per field and agreement level, m = P(level | match) and
//! u = P(level | non-match); a pair's match weight is the sum over fields of log2(m/u),
//! and its match probability follows from the weight and the prior λ.
//!
//! m, u and λ are estimated by EM over the candidate pairs without labels. EM runs over
//! the distinct comparison vectors with their counts, not over pairs: half a million
//! pairs collapse to a few thousand patterns, which makes each iteration cheap.

use std::collections::HashMap;

use super::compare::{Comparison, NULL_LEVEL};
use super::{Pair, Prepared};

/// Probabilities are kept away from 0 and 1 so that a level never seen in one class does
/// not produce an infinite weight.
const FLOOR: f64 = 1e-9;

/// The agreement levels of every compared pair, one row of `fields` levels per pair.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ComparisonVectors {
    pub fields: usize,
    pub levels: Vec<u8>,
}

impl ComparisonVectors {
    pub fn len(&self) -> usize {
        self.levels.len().checked_div(self.fields).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn row(&self, pair: usize) -> &[u8] {
        &self.levels[pair * self.fields..(pair + 1) * self.fields]
    }
}

/// Compares every pair on every field.
pub fn compare_pairs(comparisons: &[Comparison], a: &Prepared, b: &Prepared, pairs: &[Pair]) -> ComparisonVectors {
    let mut levels = Vec::with_capacity(pairs.len() * comparisons.len());
    for pair in pairs {
        let (i, j) = (pair.a as usize, pair.b as usize);
        for (f, comparison) in comparisons.iter().enumerate() {
            levels.push(comparison.level(a.value(i, f), b.value(j, f)));
        }
    }
    ComparisonVectors {
        fields: comparisons.len(),
        levels,
    }
}

/// A fitted model: the prior probability that a candidate pair matches, and m and u per
/// field and level (index 0 is disagreement, the last exact agreement).
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    pub lambda: f64,
    pub m: Vec<Vec<f64>>,
    pub u: Vec<Vec<f64>>,
}

/// How EM ran.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fit {
    pub iterations: usize,
    /// Largest change of any parameter in the last iteration.
    pub change: f64,
}

impl Model {
    /// Starting m: agreement levels far more likely than disagreement among matches
    /// (weights 4^level). Starting u is supplied (from random pairs) or uniform.
    pub fn initial(levels: &[usize], u: Option<Vec<Vec<f64>>>, lambda: f64) -> Model {
        let m = levels
            .iter()
            .map(|&n| {
                let w: Vec<f64> = (0..n).map(|l| 4f64.powi(l as i32)).collect();
                let total: f64 = w.iter().sum();
                w.into_iter().map(|x| x / total).collect()
            })
            .collect();
        let u = u.unwrap_or_else(|| levels.iter().map(|&n| vec![1.0 / n as f64; n]).collect());
        Model { lambda, m, u }
    }

    /// u estimated from comparison vectors of random pairs, which are nearly all
    /// non-matches. Add-one smoothing keeps unseen levels possible.
    pub fn u_from_random_pairs(levels: &[usize], vectors: &ComparisonVectors) -> Vec<Vec<f64>> {
        let mut counts: Vec<Vec<f64>> = levels.iter().map(|&n| vec![1.0; n]).collect();
        for p in 0..vectors.len() {
            for (f, &level) in vectors.row(p).iter().enumerate() {
                if level != NULL_LEVEL {
                    counts[f][level as usize] += 1.0;
                }
            }
        }
        counts.into_iter().map(normalised).collect()
    }

    /// Fits m, λ and (unless `fix_u`) u by EM from `self` as the starting point.
    pub fn fit(&mut self, vectors: &ComparisonVectors, max_iterations: usize, tolerance: f64, fix_u: bool) -> Fit {
        let patterns = patterns(vectors);
        let total: f64 = patterns.iter().map(|(_, c)| c).sum();
        let mut fit = Fit {
            iterations: 0,
            change: f64::INFINITY,
        };
        if total == 0.0 {
            return fit;
        }
        while fit.iterations < max_iterations && fit.change > tolerance {
            let mut m_acc: Vec<Vec<f64>> = self.m.iter().map(|l| vec![0.0; l.len()]).collect();
            let mut u_acc = m_acc.clone();
            let mut matches = 0.0;
            for (pattern, count) in &patterns {
                let posterior = self.posterior(pattern);
                matches += count * posterior;
                for (f, &level) in pattern.iter().enumerate() {
                    if level != NULL_LEVEL {
                        m_acc[f][level as usize] += count * posterior;
                        u_acc[f][level as usize] += count * (1.0 - posterior);
                    }
                }
            }
            let lambda = (matches / total).clamp(FLOOR, 1.0 - FLOOR);
            let mut change = (lambda - self.lambda).abs();
            let mut update = |old: &mut Vec<Vec<f64>>, acc: Vec<Vec<f64>>| {
                for (old, acc) in old.iter_mut().zip(acc) {
                    // A field that is null in every pair keeps its starting values.
                    if acc.iter().sum::<f64>() > 0.0 {
                        for (o, n) in old.iter_mut().zip(normalised(acc)) {
                            change = change.max((*o - n).abs());
                            *o = n;
                        }
                    }
                }
            };
            update(&mut self.m, m_acc);
            if !fix_u {
                update(&mut self.u, u_acc);
            }
            self.lambda = lambda;
            fit = Fit {
                iterations: fit.iterations + 1,
                change,
            };
        }
        fit
    }

    /// P(match | comparison vector), ignoring term frequencies (as EM does).
    pub fn posterior(&self, levels: &[u8]) -> f64 {
        let mut lm = self.lambda;
        let mut lu = 1.0 - self.lambda;
        for (f, &level) in levels.iter().enumerate() {
            if level != NULL_LEVEL {
                lm *= self.m[f][level as usize];
                lu *= self.u[f][level as usize];
            }
        }
        lm / (lm + lu)
    }

    /// log2(m/u) per field and level: the contribution of each level to a match weight.
    pub fn weights(&self) -> Vec<Vec<f64>> {
        self.m
            .iter()
            .zip(&self.u)
            .map(|(m, u)| m.iter().zip(u).map(|(m, u)| (m / u).log2()).collect())
            .collect()
    }

    /// log2 of the prior odds λ/(1-λ).
    pub fn prior_weight(&self) -> f64 {
        (self.lambda / (1.0 - self.lambda)).log2()
    }
}

/// Converts a match weight (log2 Bayes factor, prior excluded) to a probability.
pub fn probability(prior_weight: f64, weight: f64) -> f64 {
    1.0 / (1.0 + (-(prior_weight + weight)).exp2())
}

fn normalised(v: Vec<f64>) -> Vec<f64> {
    let total: f64 = v.iter().sum();
    v.into_iter().map(|x| (x / total).clamp(FLOOR, 1.0)).collect()
}

/// Distinct comparison vectors with their counts, sorted so that floating-point sums
/// (and hence the fit) do not depend on hash order.
fn patterns(vectors: &ComparisonVectors) -> Vec<(&[u8], f64)> {
    let mut counts: HashMap<&[u8], u64> = HashMap::new();
    for p in 0..vectors.len() {
        *counts.entry(vectors.row(p)).or_default() += 1;
    }
    let mut patterns: Vec<(&[u8], f64)> = counts.into_iter().map(|(k, c)| (k, c as f64)).collect();
    patterns.sort_unstable_by(|x, y| x.0.cmp(y.0));
    patterns
}

/// A scored candidate pair: indices into the left and right record sets, the match
/// weight (log2 Bayes factor, prior excluded, term frequencies included) and the match
/// probability.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScoredPair {
    pub a: usize,
    pub b: usize,
    pub probability: f64,
    pub weight: f64,
}

/// Term-frequency adjustment for exact agreement: log2(u_exact / tf(value)), where tf is
/// the share of non-missing values equal to this one. Stored per left-hand record, since
/// exact agreement means both sides hold the same value.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TermFrequencies {
    /// `adjustment[field][record]`; empty for fields without adjustment.
    pub adjustment: Vec<Vec<f64>>,
}

impl TermFrequencies {
    /// `sets` are the record sets whose values define the frequencies (both sides when
    /// linking); the adjustment is indexed by the records of `sets[0]`.
    pub fn new(model: &Model, enabled: &[bool], sets: &[&Prepared]) -> TermFrequencies {
        let adjustment = enabled
            .iter()
            .enumerate()
            .map(|(f, &on)| {
                if !on {
                    return Vec::new();
                }
                let mut counts: HashMap<&str, u32> = HashMap::new();
                let mut total = 0u32;
                for set in sets {
                    for i in 0..set.len() {
                        if let Some(v) = set.value(i, f) {
                            *counts.entry(&v.text).or_default() += 1;
                            total += 1;
                        }
                    }
                }
                let u_exact = *model.u[f].last().unwrap_or(&1.0);
                let left = sets[0];
                (0..left.len())
                    .map(|i| match left.value(i, f) {
                        Some(v) => {
                            let tf = f64::from(counts[&*v.text]) / f64::from(total);
                            (u_exact / tf).log2()
                        }
                        None => 0.0,
                    })
                    .collect()
            })
            .collect();
        TermFrequencies { adjustment }
    }
}

/// Scores every compared pair.
pub fn score(model: &Model, tf: &TermFrequencies, pairs: &[Pair], vectors: &ComparisonVectors) -> Vec<ScoredPair> {
    let weights = model.weights();
    let prior = model.prior_weight();
    pairs
        .iter()
        .enumerate()
        .map(|(p, pair)| {
            let mut weight = 0.0;
            for (f, &level) in vectors.row(p).iter().enumerate() {
                if level == NULL_LEVEL {
                    continue;
                }
                weight += weights[f][level as usize];
                let exact = level as usize + 1 == weights[f].len();
                if exact && let Some(adjust) = tf.adjustment.get(f).and_then(|a| a.get(pair.a as usize)) {
                    weight += adjust;
                }
            }
            ScoredPair {
                a: pair.a as usize,
                b: pair.b as usize,
                probability: probability(prior, weight),
                weight,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::matching::random::SplitMix64;

    fn draw(rng: &mut SplitMix64, probabilities: &[f64]) -> u8 {
        let x = rng.unit();
        let mut acc = 0.0;
        for (level, p) in probabilities.iter().enumerate() {
            acc += p;
            if x < acc {
                return level as u8;
            }
        }
        (probabilities.len() - 1) as u8
    }

    #[test]
    fn em_recovers_known_m_u_and_lambda() {
        // Three conditionally independent fields with known m and u, 20% matches.
        let m = [vec![0.05, 0.15, 0.8], vec![0.1, 0.9], vec![0.05, 0.1, 0.25, 0.6]];
        let u = [vec![0.85, 0.1, 0.05], vec![0.7, 0.3], vec![0.6, 0.25, 0.1, 0.05]];
        let lambda = 0.2;
        let mut rng = SplitMix64::new(42);
        let n = 100_000;
        let mut levels = Vec::with_capacity(n * 3);
        for _ in 0..n {
            let is_match = rng.unit() < lambda;
            for f in 0..3 {
                levels.push(draw(&mut rng, if is_match { &m[f] } else { &u[f] }));
            }
        }
        let vectors = ComparisonVectors { fields: 3, levels };
        let mut model = Model::initial(&[3, 2, 4], None, 0.5);
        let fit = model.fit(&vectors, 1000, 1e-9, false);
        assert!(fit.change <= 1e-9, "em did not converge: {fit:?}");
        assert!((model.lambda - lambda).abs() < 0.01, "lambda {}", model.lambda);
        for (f, (m, u)) in m.iter().zip(&u).enumerate() {
            for l in 0..m.len() {
                assert!((model.m[f][l] - m[l]).abs() < 0.02, "m[{f}][{l}] {}", model.m[f][l]);
                assert!((model.u[f][l] - u[l]).abs() < 0.02, "u[{f}][{l}] {}", model.u[f][l]);
            }
        }
    }

    #[test]
    fn em_with_fixed_u_recovers_m() {
        let m = [vec![0.1, 0.9], vec![0.2, 0.8], vec![0.05, 0.95]];
        let u = [vec![0.9, 0.1], vec![0.8, 0.2], vec![0.95, 0.05]];
        let mut rng = SplitMix64::new(7);
        let mut levels = Vec::new();
        for _ in 0..50_000 {
            let is_match = rng.unit() < 0.1;
            for f in 0..3 {
                levels.push(draw(&mut rng, if is_match { &m[f] } else { &u[f] }));
            }
        }
        let vectors = ComparisonVectors { fields: 3, levels };
        let mut model = Model::initial(&[2, 2, 2], Some(u.to_vec()), 0.5);
        model.fit(&vectors, 1000, 1e-9, true);
        assert_eq!(model.u, u.to_vec());
        assert!((model.lambda - 0.1).abs() < 0.01, "lambda {}", model.lambda);
        for (f, m) in m.iter().enumerate() {
            assert!((model.m[f][1] - m[1]).abs() < 0.02, "m[{f}] {}", model.m[f][1]);
        }
    }

    #[test]
    fn term_frequencies_reward_rare_and_discount_common_values() {
        use crate::domain::matching::{Field, Record, Schema};
        let schema = Schema::new(vec![Field::new("surname", Comparison::Exact).with_term_frequency()]);
        let prepare = |names: &[&str]| {
            let records: Vec<Record> = names
                .iter()
                .map(|n| Record {
                    id: (*n).into(),
                    fields: vec![Some((*n).into())],
                })
                .collect();
            Prepared::new(&schema, &records).unwrap()
        };
        let a = prepare(&["smith", "smith", "smith", "jones"]);
        let b = prepare(&["smith", "lee", "jones"]);
        let model = Model {
            lambda: 0.5,
            m: vec![vec![0.1, 0.9]],
            u: vec![vec![0.75, 0.25]],
        };
        let tf = TermFrequencies::new(&model, &[true], &[&a, &b]);
        // smith is 4 of 7 values, jones 2 of 7: log2(0.25 / (4/7)) and log2(0.25 / (2/7)).
        assert!((tf.adjustment[0][0] - (0.25f64 * 7.0 / 4.0).log2()).abs() < 1e-12);
        assert!((tf.adjustment[0][3] - (0.25f64 * 7.0 / 2.0).log2()).abs() < 1e-12);

        let pairs = [Pair { a: 0, b: 0 }, Pair { a: 3, b: 2 }, Pair { a: 3, b: 1 }];
        let vectors = compare_pairs(&[Comparison::Exact], &a, &b, &pairs);
        let scored = score(&model, &tf, &pairs, &vectors);
        let exact = (0.9f64 / 0.25).log2();
        assert!((scored[0].weight - (exact + tf.adjustment[0][0])).abs() < 1e-12);
        assert!((scored[1].weight - (exact + tf.adjustment[0][3])).abs() < 1e-12);
        assert!(scored[1].weight > scored[0].weight, "a rare name agreeing weighs more");
        // Disagreement is not adjusted.
        assert!((scored[2].weight - (0.1f64 / 0.75).log2()).abs() < 1e-12);
    }

    #[test]
    fn weights_and_probabilities_follow_bayes() {
        let model = Model {
            lambda: 0.2,
            m: vec![vec![0.1, 0.9]],
            u: vec![vec![0.9, 0.1]],
        };
        let w = model.weights();
        assert!((w[0][1] - 9f64.log2()).abs() < 1e-12);
        assert!((w[0][0] + 9f64.log2()).abs() < 1e-12);
        // Agreement: odds 0.25 × 9 = 2.25, probability 2.25 / 3.25.
        assert!((model.posterior(&[1]) - 2.25 / 3.25).abs() < 1e-12);
        assert!((probability(model.prior_weight(), w[0][1]) - 2.25 / 3.25).abs() < 1e-12);
        // A missing value is no evidence: the prior.
        assert!((model.posterior(&[NULL_LEVEL]) - 0.2).abs() < 1e-12);
    }
}
