//! Off-policy estimates: what a candidate policy would have achieved, from decisions a
//! logging policy made with known propensities. Inverse propensity weighting (IPS), its
//! self-normalised form (SNIPS), and with a reward model the direct method (DM) and the
//! doubly robust estimate (DR), each with a normal-approximation interval, and the
//! effective sample size of the weights. The formats are those of the Open Bandit
//! Dataset's files (`logged`, `policy`, `rewards`), as `corvus stats ope` reads them.

use std::collections::HashMap;

use serde::Serialize;

use crate::stats::Invalid;
use crate::stats::special::normal_quantile;

/// One logged decision.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Round {
    pub action: u32,
    /// The slot it was shown in (0 for a single one).
    pub position: u32,
    pub reward: f64,
    /// The probability with which the logging policy chose this action in this slot.
    pub pscore: f64,
}

/// The candidate policy: the probability of each action in each slot, held densely (a
/// row of every action's probability per slot) for the estimates' inner loops.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Sorted.
    actions: Vec<u32>,
    /// Sorted.
    positions: Vec<u32>,
    /// `positions.len()` rows of `actions.len()`.
    probabilities: Vec<f64>,
}

impl Policy {
    /// From (action, position, probability) rows; the probabilities of each position must
    /// add up to 1.
    pub fn new(rows: &[(u32, u32, f64)]) -> Result<Self, Invalid> {
        let mut probabilities = HashMap::with_capacity(rows.len());
        let mut totals: HashMap<u32, f64> = HashMap::new();
        let mut actions = Vec::new();
        for (i, &(action, position, p)) in rows.iter().enumerate() {
            if !(p.is_finite() && (0.0..=1.0).contains(&p)) {
                return Err(invalid(format!("policy[{i}].probability"), "between 0 and 1"));
            }
            if probabilities.insert((action, position), p).is_some() {
                return Err(invalid(
                    format!("policy[{i}]"),
                    "the action and position are listed twice",
                ));
            }
            *totals.entry(position).or_default() += p;
            actions.push(action);
        }
        if let Some((position, total)) = totals.iter().find(|(_, t)| (**t - 1.0).abs() > 1e-6) {
            return Err(invalid(
                "policy",
                format!("the probabilities of position {position} add up to {total}, not 1"),
            ));
        }
        actions.sort_unstable();
        actions.dedup();
        let mut positions: Vec<u32> = totals.keys().copied().collect();
        positions.sort_unstable();
        let mut dense = vec![0.0; positions.len() * actions.len()];
        for ((action, position), p) in probabilities {
            let row = positions.binary_search(&position).expect("a position listed");
            let column = actions.binary_search(&action).expect("an action listed");
            dense[row * actions.len() + column] = p;
        }
        Ok(Self {
            actions,
            positions,
            probabilities: dense,
        })
    }

    /// Every action's probability in `position`, in the order of the sorted actions.
    fn row(&self, position: u32) -> Option<&[f64]> {
        let row = self.positions.binary_search(&position).ok()?;
        let width = self.actions.len();
        Some(&self.probabilities[row * width..(row + 1) * width])
    }

    pub fn probability(&self, action: u32, position: u32) -> f64 {
        match (self.row(position), self.actions.binary_search(&action)) {
            (Some(row), Ok(column)) => row[column],
            _ => 0.0,
        }
    }
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Invalid {
    Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Checks the logged rounds: propensities in (0, 1], finite rewards.
pub fn check(rounds: &[Round]) -> Result<(), Invalid> {
    if rounds.is_empty() {
        return Err(invalid("logged", "no rounds"));
    }
    for (i, r) in rounds.iter().enumerate() {
        if !(r.pscore > 0.0 && r.pscore <= 1.0) {
            return Err(invalid(format!("logged[{i}].pscore"), "a propensity in (0, 1]"));
        }
        if !r.reward.is_finite() {
            return Err(invalid(format!("logged[{i}].reward"), "a finite number"));
        }
    }
    Ok(())
}

/// A reward model's estimate q(round, action), at each round's logged position.
pub trait RewardModel {
    fn q(&self, round: usize, action: u32) -> f64;

    /// A round's estimates of every action at once, with the (sorted) actions they are
    /// for, where the model holds them so.
    fn row(&self, _round: usize) -> Option<(&[u32], &[f64])> {
        None
    }
}

/// An estimate with its interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Estimate {
    pub value: f64,
    /// The normal approximation's interval at the level asked for.
    pub ci: [f64; 2],
    pub stderr: f64,
}

/// Every estimate the inputs allow.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Estimates {
    pub ipw: Estimate,
    pub snipw: Estimate,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dm: Option<Estimate>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dr: Option<Estimate>,
    /// (Σw)² / Σw²: how many rounds the weighted sample is worth.
    pub effective_sample_size: f64,
    pub rounds: usize,
    /// How the intervals are made.
    pub interval: &'static str,
}

/// The mean of per-round terms, with its standard error and interval.
fn mean_of(terms: impl Iterator<Item = f64> + Clone, z: f64) -> Estimate {
    let (n, sum) = terms.clone().fold((0.0, 0.0), |(n, s), x| (n + 1.0, s + x));
    let mean = sum / n;
    let ss: f64 = terms.map(|x| (x - mean).powi(2)).sum();
    let stderr = if n > 1.0 { (ss / (n - 1.0) / n).sqrt() } else { 0.0 };
    Estimate {
        value: mean,
        ci: [mean - z * stderr, mean + z * stderr],
        stderr,
    }
}

/// The estimates of the candidate's mean reward, with intervals at `1 − alpha`.
pub fn estimate(rounds: &[Round], policy: &Policy, rewards: Option<&dyn RewardModel>, alpha: f64) -> Estimates {
    let z = normal_quantile(1.0 - alpha / 2.0);
    let weights: Vec<f64> = rounds
        .iter()
        .map(|r| policy.probability(r.action, r.position) / r.pscore)
        .collect();
    let n = rounds.len() as f64;
    let ipw = mean_of(rounds.iter().zip(&weights).map(|(r, w)| w * r.reward), z);
    // Self-normalised: Σ w·r / Σ w, its variance by the delta method on the ratio.
    let mean_w = weights.iter().sum::<f64>() / n;
    let snipw_value = ipw.value / mean_w;
    let snipw_terms = rounds
        .iter()
        .zip(&weights)
        .map(|(r, w)| (w * r.reward - snipw_value * w) / mean_w);
    let spread = mean_of(snipw_terms, z);
    let snipw = Estimate {
        value: snipw_value,
        ci: [snipw_value - z * spread.stderr, snipw_value + z * spread.stderr],
        stderr: spread.stderr,
    };
    let (dm, dr) = match rewards {
        None => (None, None),
        Some(model) => {
            // Σ_a π(a, position)·q(round, a): a dot product of two rows where the model
            // holds its estimates for the policy's actions in the same order.
            let aligned = model.row(0).is_some_and(|(actions, _)| actions == policy.actions);
            let direct: Vec<f64> = rounds
                .iter()
                .enumerate()
                .map(|(i, r)| match (aligned, policy.row(r.position), model.row(i)) {
                    (true, Some(p), Some((_, q))) => p.iter().zip(q).map(|(p, q)| p * q).sum(),
                    _ => policy
                        .actions
                        .iter()
                        .map(|&a| policy.probability(a, r.position) * model.q(i, a))
                        .sum(),
                })
                .collect();
            let dm = mean_of(direct.iter().copied(), z);
            let dr = mean_of(
                rounds
                    .iter()
                    .enumerate()
                    .map(|(i, r)| direct[i] + weights[i] * (r.reward - model.q(i, r.action))),
                z,
            );
            (Some(dm), Some(dr))
        }
    };
    let (sum_w, sum_w2) = weights.iter().fold((0.0, 0.0), |(s, s2), w| (s + w, s2 + w * w));
    Estimates {
        ipw,
        snipw,
        dm,
        dr,
        effective_sample_size: if sum_w2 > 0.0 { sum_w * sum_w / sum_w2 } else { 0.0 },
        rounds: rounds.len(),
        interval: "normal approximation",
    }
}

/// Reward-model estimates held as a table: a value per round and action.
#[derive(Debug, Clone, Default)]
pub struct RewardTable {
    /// Sorted: the columns.
    actions: Vec<u32>,
    q: Vec<f64>,
}

impl RewardTable {
    /// From (round, action, q) rows: every round must have the same actions.
    pub fn new(rows: &[(usize, u32, f64)], rounds: usize) -> Result<Self, Invalid> {
        let mut actions: Vec<u32> = rows.iter().map(|r| r.1).collect();
        actions.sort_unstable();
        actions.dedup();
        let index: HashMap<u32, usize> = actions.iter().enumerate().map(|(i, a)| (*a, i)).collect();
        let width = actions.len();
        let mut q = vec![f64::NAN; rounds * width];
        for (i, &(round, action, value)) in rows.iter().enumerate() {
            if round >= rounds {
                return Err(invalid(
                    format!("rewards[{i}].round"),
                    format!("no round {round} is logged"),
                ));
            }
            if !value.is_finite() {
                return Err(invalid(format!("rewards[{i}].q"), "a finite number"));
            }
            q[round * width + index[&action]] = value;
        }
        if let Some(missing) = q.iter().position(|v| v.is_nan()) {
            return Err(invalid(
                "rewards",
                format!(
                    "no estimate for round {} and action {}",
                    missing / width,
                    actions[missing % width]
                ),
            ));
        }
        Ok(Self { actions, q })
    }
}

impl RewardModel for RewardTable {
    fn q(&self, round: usize, action: u32) -> f64 {
        self.actions
            .binary_search(&action)
            .map_or(0.0, |a| self.q[round * self.actions.len() + a])
    }

    fn row(&self, round: usize) -> Option<(&[u32], &[f64])> {
        let width = self.actions.len();
        self.q
            .get(round * width..(round + 1) * width)
            .map(|q| (self.actions.as_slice(), q))
    }
}

/// The files `corvus stats ope` reads, as the Open Bandit Dataset's sample has them: CSV
/// with a header, gzip or plain.
pub mod files {
    use std::io::Read;
    use std::path::Path;

    use super::{Policy, RewardTable, Round, invalid};
    use crate::stats::Invalid;

    /// A file's text, gunzipped when it starts with gzip's magic bytes.
    pub fn read_text(path: &Path) -> std::io::Result<String> {
        let bytes = std::fs::read(path)?;
        if bytes.starts_with(&[0x1f, 0x8b]) {
            let mut text = String::new();
            flate2::read::MultiGzDecoder::new(bytes.as_slice()).read_to_string(&mut text)?;
            Ok(text)
        } else {
            String::from_utf8(bytes).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
        }
    }

    /// The rows of a CSV file whose header names `columns` (in any order), each as the
    /// values of those columns; `what` names the file in errors (`logged[3].pscore`).
    fn rows(text: &str, what: &str, columns: &[&str]) -> Result<Vec<Vec<f64>>, Invalid> {
        let mut lines = text.lines().filter(|l| !l.trim().is_empty());
        let header: Vec<&str> = lines
            .next()
            .ok_or_else(|| invalid(what, "an empty file"))?
            .split(',')
            .map(str::trim)
            .collect();
        let at: Vec<usize> = columns
            .iter()
            .map(|c| {
                header
                    .iter()
                    .position(|h| h == c)
                    .ok_or_else(|| invalid(what, format!("no column {c:?} in the header")))
            })
            .collect::<Result<_, _>>()?;
        lines
            .enumerate()
            .map(|(i, line)| {
                let cells: Vec<&str> = line.split(',').map(str::trim).collect();
                at.iter()
                    .zip(columns)
                    .map(|(&j, c)| {
                        cells
                            .get(j)
                            .and_then(|v| v.parse::<f64>().ok())
                            .ok_or_else(|| invalid(format!("{what}[{i}].{c}"), "a number"))
                    })
                    .collect()
            })
            .collect()
    }

    fn whole(value: f64, field: impl FnOnce() -> String) -> Result<u32, Invalid> {
        if value >= 0.0 && value.fract() == 0.0 && value <= f64::from(u32::MAX) {
            Ok(value as u32)
        } else {
            Err(invalid(field(), "a whole number, at least 0"))
        }
    }

    /// `round,action,position,reward,pscore`, rounds numbered 0, 1, 2, … in order.
    pub fn logged(text: &str) -> Result<Vec<Round>, Invalid> {
        rows(text, "logged", &["round", "action", "position", "reward", "pscore"])?
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                if r[0] != i as f64 {
                    return Err(invalid(
                        format!("logged[{i}].round"),
                        format!("rounds are numbered 0, 1, 2, … in order: expected {i}"),
                    ));
                }
                Ok(Round {
                    action: whole(r[1], || format!("logged[{i}].action"))?,
                    position: whole(r[2], || format!("logged[{i}].position"))?,
                    reward: r[3],
                    pscore: r[4],
                })
            })
            .collect()
    }

    /// `action,position,probability`.
    pub fn policy(text: &str) -> Result<Policy, Invalid> {
        let rows = rows(text, "policy", &["action", "position", "probability"])?
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                Ok((
                    whole(r[0], || format!("policy[{i}].action"))?,
                    whole(r[1], || format!("policy[{i}].position"))?,
                    r[2],
                ))
            })
            .collect::<Result<Vec<_>, Invalid>>()?;
        Policy::new(&rows)
    }

    /// `round,action,q`, for `rounds` logged rounds.
    pub fn rewards(text: &str, rounds: usize) -> Result<RewardTable, Invalid> {
        let rows = rows(text, "rewards", &["round", "action", "q"])?
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                Ok((
                    whole(r[0], || format!("rewards[{i}].round"))? as usize,
                    whole(r[1], || format!("rewards[{i}].action"))?,
                    r[2],
                ))
            })
            .collect::<Result<Vec<_>, Invalid>>()?;
        RewardTable::new(&rows, rounds)
    }
}
