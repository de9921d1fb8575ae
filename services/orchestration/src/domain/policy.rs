//! How Decide chooses among eligible actions: Thompson sampling over each action's
//! Beta posterior of conversion, with a floor on exploration, every draw seeded (by the
//! candidates and the decision id) so that a decision can be replayed; and arms
//! assigned by hashing.

use sha2::{Digest, Sha256};

/// A seeded generator (xoshiro256**, seeded through SplitMix64): the same seed gives
/// the same draws on every machine. It keeps the second normal of each Box–Muller pair.
#[derive(Debug, Clone)]
pub struct Rng([u64; 4], Option<f64>);

impl Rng {
    pub fn seeded(seed: u64) -> Self {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Self([next(), next(), next(), next()], None)
    }

    /// A seed from any text: the first 8 bytes of its SHA-256.
    pub fn of(parts: &[&str]) -> Self {
        Self::seeded(hash64(parts))
    }

    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.0;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box–Muller, both of each pair used).
    fn normal(&mut self) -> f64 {
        if let Some(spare) = self.1.take() {
            return spare;
        }
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        let r = (-2.0 * u1.ln()).sqrt();
        let (sin, cos) = (std::f64::consts::TAU * u2).sin_cos();
        self.1 = Some(r * sin);
        r * cos
    }

    /// Gamma(shape, 1), Marsaglia and Tsang's method (boosted below shape 1).
    pub fn gamma(&mut self, shape: f64) -> f64 {
        if shape < 1.0 {
            let u = 1.0 - self.uniform();
            return self.gamma(shape + 1.0) * u.powf(1.0 / shape);
        }
        let d = shape - 1.0 / 3.0;
        let c = 1.0 / (9.0 * d).sqrt();
        loop {
            let x = self.normal();
            let v = (1.0 + c * x).powi(3);
            if v <= 0.0 {
                continue;
            }
            let u = 1.0 - self.uniform();
            // The squeeze accepts most draws without a logarithm; it implies the test
            // after it.
            let x2 = x * x;
            if u < 1.0 - 0.0331 * x2 * x2 || u.ln() < 0.5 * x2 + d - d * v + d * v.ln() {
                return d * v;
            }
        }
    }

    /// Beta(a, b).
    pub fn beta(&mut self, a: f64, b: f64) -> f64 {
        let x = self.gamma(a);
        let y = self.gamma(b);
        x / (x + y)
    }
}

/// The first 8 bytes of the SHA-256 of the parts, each followed by a 0 byte.
pub fn hash64(parts: &[&str]) -> u64 {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    let digest = hasher.finalize();
    u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

/// Where a person falls in [0, 1) for a purpose: the same on every replica, before and
/// after a restart.
pub fn bucket(parts: &[&str]) -> f64 {
    (hash64(parts) >> 11) as f64 / (1u64 << 53) as f64
}

/// The index of the weight `point` falls under, the weights laid end to end (the last
/// when rounding leaves it past their sum).
pub fn pick_weighted(point: f64, weights: &[f64]) -> usize {
    let total: f64 = weights.iter().sum();
    let mut edge = 0.0;
    for (i, w) in weights.iter().enumerate() {
        edge += w / total;
        if point < edge {
            return i;
        }
    }
    weights.len() - 1
}

/// One eligible action as the policy sees it: its posterior Beta(1 + successes,
/// 1 + trials − successes) of conversion, and what a conversion is worth.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Arm {
    pub successes: f64,
    pub trials: f64,
    pub value: f64,
}

impl Arm {
    fn alpha(&self) -> f64 {
        1.0 + self.successes
    }

    fn beta(&self) -> f64 {
        1.0 + (self.trials - self.successes).max(0.0)
    }

    /// The posterior mean times the value.
    pub fn expected_value(&self) -> f64 {
        self.alpha() / (self.alpha() + self.beta()) * self.value
    }
}

/// What the policy chose, and with what probability.
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    pub index: usize,
    /// The probability of each candidate being chosen.
    pub propensities: Vec<f64>,
    /// The draws they were estimated from; 0 when exact.
    pub draws: u32,
}

/// Thompson sampling with an exploration floor, as probability matching: each
/// candidate's propensity is ε + (1 − ε·m)·p (m candidates, ε·m at most 1), p its share
/// of `draws` seeded draws from the posteriors (times their values) that it wins; the
/// choice is then drawn from those propensities, seeded by `seed` (the decision id). So
/// the propensity logged is exactly the probability the choice was made with, each
/// candidate keeps at least ε, and the same candidates and seed replay the same choice.
/// The draws are seeded by the candidates themselves, so that propensities can be
/// kept and reused while the evidence stands (see [`Propensities`]).
///
/// With `draws` 0 (a simulation, which logs nothing) no propensity is estimated: the
/// choice is one Thompson draw, explored with probability ε·m.
pub fn thompson(candidates: &[Arm], epsilon: f64, draws: u32, seed: &str) -> Choice {
    if candidates.len() < 2 || draws == 0 {
        return single_draw(candidates, epsilon, seed);
    }
    choose(estimate(candidates, epsilon, draws), draws, seed)
}

fn choose(propensities: Vec<f64>, draws: u32, seed: &str) -> Choice {
    let index = pick_weighted(Rng::of(&[seed, "choose"]).uniform(), &propensities);
    Choice {
        index,
        propensities,
        draws,
    }
}

/// The propensities of [`thompson`], estimated from `draws` draws seeded by the
/// candidates' evidence and values.
fn estimate(candidates: &[Arm], epsilon: f64, draws: u32) -> Vec<f64> {
    let m = candidates.len();
    let epsilon = epsilon.min(1.0 / m as f64);
    let explore = epsilon * m as f64;
    let seed: Vec<String> = candidates
        .iter()
        .map(|c| format!("{}/{}/{}", c.successes, c.trials, c.value))
        .collect();
    let mut rng = Rng::of(&[&seed.join(","), "propensity"]);
    let mut wins = vec![0u32; m];
    for _ in 0..draws {
        wins[winner(candidates, &mut rng)] += 1;
    }
    wins.iter()
        .map(|&w| epsilon + (1.0 - explore) * f64::from(w) / f64::from(draws))
        .collect()
}

/// The candidate whose draw from its posterior, times its value, is highest.
fn winner(candidates: &[Arm], rng: &mut Rng) -> usize {
    let mut best = (0, f64::NEG_INFINITY);
    for (i, c) in candidates.iter().enumerate() {
        let score = rng.beta(c.alpha(), c.beta()) * c.value;
        if score > best.1 {
            best = (i, score);
        }
    }
    best.0
}

fn single_draw(candidates: &[Arm], epsilon: f64, seed: &str) -> Choice {
    let m = candidates.len();
    assert!(m > 0, "a choice needs a candidate");
    if m == 1 {
        return Choice {
            index: 0,
            propensities: vec![1.0],
            draws: 0,
        };
    }
    let epsilon = epsilon.min(1.0 / m as f64);
    let mut rng = Rng::of(&[seed, "choose"]);
    let index = match rng.uniform() < epsilon * m as f64 {
        true => ((rng.uniform() * m as f64) as usize).min(m - 1),
        false => winner(candidates, &mut rng),
    };
    Choice {
        index,
        propensities: vec![epsilon; m],
        draws: 0,
    }
}

/// Propensities already estimated, by their candidates: while the evidence a replica
/// holds stands, every decision over the same candidates reuses them rather than
/// drawing again. Bounded: emptied when full.
#[derive(Debug, Default)]
pub struct Propensities {
    known: std::sync::Mutex<std::collections::HashMap<Vec<u64>, std::sync::Arc<Vec<f64>>>>,
}

/// Candidate sets kept at most.
const PROPENSITIES_KEPT: usize = 4_096;

impl Propensities {
    /// As [`thompson`], the propensities reused when known.
    pub fn thompson(&self, candidates: &[Arm], epsilon: f64, draws: u32, seed: &str) -> Choice {
        if candidates.len() < 2 || draws == 0 {
            return single_draw(candidates, epsilon, seed);
        }
        let mut key: Vec<u64> = vec![epsilon.to_bits(), u64::from(draws)];
        key.extend(
            candidates
                .iter()
                .flat_map(|c| [c.successes.to_bits(), c.trials.to_bits(), c.value.to_bits()]),
        );
        let known = self.known.lock().expect("propensities lock").get(&key).cloned();
        let propensities = match known {
            Some(p) => p.as_ref().clone(),
            None => {
                let p = estimate(candidates, epsilon, draws);
                let mut known = self.known.lock().expect("propensities lock");
                if known.len() >= PROPENSITIES_KEPT {
                    known.clear();
                }
                known.insert(key, std::sync::Arc::new(p.clone()));
                p
            }
        };
        choose(propensities, draws, seed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arm(successes: f64, trials: f64, value: f64) -> Arm {
        Arm {
            successes,
            trials,
            value,
        }
    }

    #[test]
    fn beta_draws_have_the_distributions_moments() {
        // Beta(a, b): mean a/(a+b), variance ab/((a+b)²(a+b+1)).
        for (a, b) in [(1.0, 1.0), (2.0, 8.0), (0.5, 0.5), (30.0, 70.0)] {
            let mut rng = Rng::seeded(7);
            let n = 200_000;
            let xs: Vec<f64> = (0..n).map(|_| rng.beta(a, b)).collect();
            let mean = xs.iter().sum::<f64>() / n as f64;
            let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
            let (m, v) = (a / (a + b), a * b / ((a + b) * (a + b) * (a + b + 1.0)));
            assert!(
                (mean - m).abs() < 4.0 * (v / n as f64).sqrt() + 1e-4,
                "{a},{b}: mean {mean} vs {m}"
            );
            assert!((var - v).abs() / v < 0.03, "{a},{b}: variance {var} vs {v}");
        }
    }

    #[test]
    fn every_candidate_keeps_the_floor_and_the_propensities_add_up() {
        let (strong, weak) = (arm(90.0, 100.0, 1.0), arm(1.0, 100.0, 1.0));
        let choice = thompson(&[strong, weak, weak], 0.05, 1_000, "d1");
        assert!((choice.propensities.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert!(choice.propensities.iter().all(|&p| p >= 0.05));
        // The strong arm wins every draw: 0.05 + 0.85.
        assert!(
            (choice.propensities[0] - 0.90).abs() < 1e-12,
            "{:?}",
            choice.propensities
        );
        assert_eq!(thompson(&[strong], 0.05, 1_000, "d1").propensities, [1.0]);
    }

    #[test]
    fn the_same_seed_replays_the_same_choice() {
        let arms = [arm(3.0, 10.0, 1.0), arm(4.0, 12.0, 1.0)];
        let a = thompson(&arms, 0.05, 1_000, "decision-42");
        assert_eq!(a, thompson(&arms, 0.05, 1_000, "decision-42"));
        // Over many seeds each is chosen about as often as its propensity says.
        let n = 4_000;
        let chosen = (0..n)
            .filter(|i| thompson(&arms, 0.05, 0, &i.to_string()).index == 1)
            .count();
        let expected = thompson(&arms, 0.05, 20_000, "x").propensities[1];
        let share = chosen as f64 / n as f64;
        assert!((share - expected).abs() < 0.03, "{share} vs {expected}");
    }

    #[test]
    fn kept_propensities_give_the_same_choice() {
        let arms = [arm(3.0, 10.0, 1.0), arm(4.0, 12.0, 2.0)];
        let kept = Propensities::default();
        for seed in ["a", "b", "c"] {
            assert_eq!(
                kept.thompson(&arms, 0.05, 1_000, seed),
                thompson(&arms, 0.05, 1_000, seed)
            );
        }
        // Chosen from the propensities: over many seeds, about as often as they say.
        let n = 4_000;
        let p = thompson(&arms, 0.05, 1_000, "x").propensities[1];
        let chosen = (0..n)
            .filter(|i| kept.thompson(&arms, 0.05, 1_000, &i.to_string()).index == 1)
            .count();
        let share = chosen as f64 / n as f64;
        assert!(
            (share - p).abs() < 4.0 * (p * (1.0 - p) / n as f64).sqrt(),
            "{share} vs {p}"
        );
    }

    #[test]
    fn weights_split_the_unit_interval() {
        assert_eq!(pick_weighted(0.1, &[0.2, 0.8]), 0);
        assert_eq!(pick_weighted(0.2, &[0.2, 0.8]), 1);
        assert_eq!(pick_weighted(0.999_999, &[0.5, 0.5]), 1);
        // Buckets are uniform: a tenth of 10,000 ids fall below 0.1.
        let low = (0..10_000)
            .filter(|i| bucket(&["ws", "c", &i.to_string()]) < 0.1)
            .count();
        assert!((900..1100).contains(&low), "{low}");
    }
}
