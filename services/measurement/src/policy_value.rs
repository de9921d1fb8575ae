//! Off-policy estimates over Corvus's own decision log: each treated exposure of a
//! campaign is a round (its first decision's action, the person's segment as the
//! context, the decision's propensity, and the person's value of a metric in its window
//! as the reward), and a candidate policy is a distribution over the campaign's actions
//! per segment. The estimators are `ope`'s (held to obp's); the reward model of the
//! direct and doubly robust estimates is the mean reward of each segment's rounds of each
//! action.

use crate::ope::{self, Estimates, Policy, RewardModel, Round};
use crate::stats::Invalid;
use crate::storage::LoggedRound;

/// The probability the candidate gives an action, in a segment ("" for every segment
/// without rows of its own).
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub action: String,
    pub segment: String,
    pub probability: f64,
}

/// The log as the estimators read it.
#[derive(Debug, Clone, Default)]
pub struct Logged {
    pub rounds: Vec<Round>,
    /// Round i's action is `actions[rounds[i].action]`, its segment
    /// `segments[rounds[i].position]`; both sorted.
    pub actions: Vec<String>,
    pub segments: Vec<String>,
    /// Exposures left out: held out (no action), or with a propensity outside (0, 1].
    pub skipped: usize,
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Invalid {
    Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// The rounds of a campaign's exposures.
pub fn logged(rows: &[LoggedRound]) -> Logged {
    let kept: Vec<&LoggedRound> = rows
        .iter()
        .filter(|r| !r.action.is_empty() && r.propensity > 0.0 && r.propensity <= 1.0)
        .collect();
    let mut actions: Vec<String> = kept.iter().map(|r| r.action.clone()).collect();
    let mut segments: Vec<String> = kept.iter().map(|r| r.segment.clone()).collect();
    for names in [&mut actions, &mut segments] {
        names.sort_unstable();
        names.dedup();
    }
    let index = |names: &[String], name: &str| names.binary_search_by(|n| n.as_str().cmp(name)).expect("listed") as u32;
    Logged {
        rounds: kept
            .iter()
            .map(|r| Round {
                action: index(&actions, &r.action),
                position: index(&segments, &r.segment),
                reward: r.reward,
                pscore: r.propensity,
            })
            .collect(),
        skipped: rows.len() - kept.len(),
        actions,
        segments,
    }
}

/// The candidate as a policy over the log's actions in each of its segments. Every
/// action must be one the log has rounds of (what the log never tried, it cannot tell
/// of), and each segment's probabilities must add up to 1.
pub fn policy(candidate: &[Candidate], logged: &Logged) -> Result<Policy, Invalid> {
    if candidate.is_empty() {
        return Err(invalid("candidate", "the candidate's probabilities of the actions"));
    }
    for (i, c) in candidate.iter().enumerate() {
        if !logged.actions.contains(&c.action) {
            return Err(invalid(
                format!("candidate[{i}].action"),
                format!(
                    "{:?} has no logged round; the log has {:?}, and cannot tell what another action would do",
                    c.action, logged.actions
                ),
            ));
        }
        if !c.segment.is_empty() && !logged.segments.contains(&c.segment) {
            return Err(invalid(
                format!("candidate[{i}].segment"),
                format!("no logged round is in segment {:?}", c.segment),
            ));
        }
    }
    let mut rows = Vec::new();
    for (position, segment) in logged.segments.iter().enumerate() {
        let own = candidate.iter().any(|c| &c.segment == segment);
        let applies: Vec<&Candidate> = candidate
            .iter()
            .filter(|c| {
                if own {
                    &c.segment == segment
                } else {
                    c.segment.is_empty()
                }
            })
            .collect();
        if applies.is_empty() {
            return Err(invalid(
                "candidate",
                format!("no probabilities for segment {segment:?}, and none for every segment (\"\")"),
            ));
        }
        for c in applies {
            let action = logged.actions.binary_search(&c.action).expect("checked above") as u32;
            rows.push((action, position as u32, c.probability));
        }
    }
    Policy::new(&rows).map_err(|e| {
        let field = e.field.replacen("policy", "candidate", 1);
        invalid(field, e.reason.replace("position", "segment"))
    })
}

/// The mean reward of each segment's rounds of each action, else of the action's rounds.
pub struct CellMeans {
    segment_of: Vec<u32>,
    actions: usize,
    means: Vec<f64>,
}

impl CellMeans {
    pub fn new(logged: &Logged) -> Self {
        let (s, a) = (logged.segments.len(), logged.actions.len());
        let mut cells = vec![(0.0, 0.0); s * a];
        let mut by_action = vec![(0.0, 0.0); a];
        for r in &logged.rounds {
            for cell in [
                &mut cells[r.position as usize * a + r.action as usize],
                &mut by_action[r.action as usize],
            ] {
                cell.0 += r.reward;
                cell.1 += 1.0;
            }
        }
        let means = cells
            .iter()
            .enumerate()
            .map(|(i, (sum, n))| match *n > 0.0 {
                true => sum / n,
                false => {
                    let (sum, n) = by_action[i % a];
                    sum / n
                }
            })
            .collect();
        Self {
            segment_of: logged.rounds.iter().map(|r| r.position).collect(),
            actions: a,
            means,
        }
    }
}

impl RewardModel for CellMeans {
    fn q(&self, round: usize, action: u32) -> f64 {
        self.means[self.segment_of[round] as usize * self.actions + action as usize]
    }
}

/// The candidate's estimated value on the log, and the log's own (the mean reward of its
/// rounds, with its interval by the normal approximation).
pub fn estimate(logged: &Logged, candidate: &[Candidate], alpha: f64) -> Result<(Estimates, ope::Estimate), Invalid> {
    if logged.rounds.is_empty() {
        return Err(invalid(
            "experiment",
            "no treated exposure with a propensity to estimate from",
        ));
    }
    let policy = policy(candidate, logged)?;
    let model = CellMeans::new(logged);
    let estimates = ope::estimate(&logged.rounds, &policy, Some(&model), alpha);
    let n = logged.rounds.len() as f64;
    let mean = logged.rounds.iter().map(|r| r.reward).sum::<f64>() / n;
    let ss: f64 = logged.rounds.iter().map(|r| (r.reward - mean).powi(2)).sum();
    let stderr = if n > 1.0 { (ss / (n - 1.0) / n).sqrt() } else { 0.0 };
    let z = crate::stats::special::normal_quantile(1.0 - alpha / 2.0);
    let own = ope::Estimate {
        value: mean,
        ci: [mean - z * stderr, mean + z * stderr],
        stderr,
    };
    Ok((estimates, own))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(action: &str, segment: &str, propensity: f64, reward: f64) -> LoggedRound {
        LoggedRound {
            arm: "default".into(),
            action: action.into(),
            segment: segment.into(),
            propensity,
            reward,
        }
    }

    fn candidate(action: &str, segment: &str, probability: f64) -> Candidate {
        Candidate {
            action: action.into(),
            segment: segment.into(),
            probability,
        }
    }

    #[test]
    fn ips_weighs_each_round_by_the_candidates_probability_over_the_logs() {
        let rows = [
            round("mail", "loyal", 0.5, 1.0),
            round("sms", "loyal", 0.5, 0.0),
            round("mail", "new", 0.25, 0.0),
            round("sms", "new", 0.75, 1.0),
            round("", "new", 1.0, 1.0), // held out: left out
        ];
        let log = logged(&rows);
        assert_eq!((log.rounds.len(), log.skipped), (4, 1));
        // Always mail for the loyal; sms for everyone else.
        let candidate = [candidate("mail", "loyal", 1.0), candidate("sms", "", 1.0)];
        let (estimates, own) = estimate(&log, &candidate, 0.05).unwrap();
        // IPS: (1/0.5·1 + 0 + 0 + 1/0.75·1) / 4.
        assert!((estimates.ipw.value - (2.0 + 4.0 / 3.0) / 4.0).abs() < 1e-12);
        // DM with the cells' means: loyal mail 1, new sms 1.
        assert!((estimates.dm.unwrap().value - 1.0).abs() < 1e-12);
        assert!((own.value - 0.5).abs() < 1e-12);
    }

    #[test]
    fn a_candidate_the_log_cannot_judge_is_refused_with_its_field() {
        let log = logged(&[round("mail", "loyal", 0.5, 1.0), round("sms", "new", 0.5, 0.0)]);
        let field = |c: &[Candidate]| policy(c, &log).unwrap_err().field;
        assert_eq!(field(&[candidate("push", "", 1.0)]), "candidate[0].action");
        assert_eq!(field(&[candidate("mail", "vip", 1.0)]), "candidate[0].segment");
        assert_eq!(field(&[candidate("mail", "loyal", 1.0)]), "candidate");
        assert_eq!(
            field(&[candidate("mail", "", 0.6), candidate("sms", "", 0.3)]),
            "candidate"
        );
        assert_eq!(field(&[]), "candidate");
    }
}
