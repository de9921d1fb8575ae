//! Product affinity: the itemsets bought together in at least `min_support` of the
//! baskets, found level by level (Apriori) over one bitset of baskets per itemset, so a
//! candidate's support is one AND and a popcount per 64 baskets; and the rules with one
//! item on the right drawn from them (support, confidence, lift), as mlxtend's
//! `fpgrowth` + `association_rules` draw them.

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

/// A rule: who bought every item of `antecedents` bought `consequent` too, in
/// `confidence` of the cases, `lift` times as often as anyone does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rule {
    pub antecedents: Vec<String>,
    pub consequent: String,
    /// Of all baskets, the share holding antecedents and consequent.
    pub support: f64,
    pub confidence: f64,
    pub lift: f64,
}

/// Baskets holding each itemset, one bit per basket.
#[derive(Clone)]
struct Bits(Vec<u64>);

impl Bits {
    fn and(&self, other: &Bits) -> Bits {
        Bits(self.0.iter().zip(&other.0).map(|(a, b)| a & b).collect())
    }

    fn count(&self) -> u32 {
        self.0.iter().map(|w| w.count_ones()).sum()
    }
}

/// The most frequent itemsets a fit holds: a support so low that every subset of a
/// large basket is frequent would otherwise take all the memory there is.
pub const MAX_ITEMSETS: usize = 2_000_000;

/// Too many itemsets are frequent at the support asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("more than {MAX_ITEMSETS} itemsets are in at least {min_support} of the {baskets} orders; raise min_support")]
pub struct TooMany {
    pub min_support: String,
    pub baskets: usize,
}

/// The rules of `baskets` (each a set of item names) at `min_support` and
/// `min_confidence`, by lift, highest first.
pub fn rules(baskets: &[BTreeSet<String>], min_support: f64, min_confidence: f64) -> Result<Vec<Rule>, TooMany> {
    let n = baskets.len();
    if n == 0 {
        return Ok(Vec::new());
    }
    let words = n.div_ceil(64);
    // Items by name; a bitset of baskets per item.
    let mut names: Vec<&str> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut columns: Vec<Bits> = Vec::new();
    for (b, basket) in baskets.iter().enumerate() {
        for item in basket {
            let i = *index.entry(item.as_str()).or_insert_with(|| {
                names.push(item.as_str());
                columns.push(Bits(vec![0; words]));
                names.len() - 1
            });
            columns[i].0[b / 64] |= 1 << (b % 64);
        }
    }
    let frequent = |count: u32| f64::from(count) / n as f64 >= min_support;
    // Level 1, in name order so that itemsets are sorted by name.
    let mut order: Vec<usize> = (0..names.len()).filter(|i| frequent(columns[*i].count())).collect();
    order.sort_by_key(|i| names[*i]);
    let mut counts: HashMap<Vec<usize>, u32> = HashMap::new();
    let mut level: Vec<(Vec<usize>, Bits)> = order
        .iter()
        .map(|i| {
            counts.insert(vec![*i], columns[*i].count());
            (vec![*i], columns[*i].clone())
        })
        .collect();
    let rank: HashMap<usize, usize> = order.iter().enumerate().map(|(r, i)| (*i, r)).collect();
    // Level k + 1 from pairs of level k sharing all but their last item.
    while level.len() > 1 {
        let mut next = Vec::new();
        for a in 0..level.len() {
            for b in a + 1..level.len() {
                let (left, right) = (&level[a].0, &level[b].0);
                let k = left.len();
                if left[..k - 1] != right[..k - 1] {
                    break; // sorted: no later b shares the prefix either
                }
                let mut candidate = left.clone();
                candidate.push(right[k - 1]);
                // Every subset one item shorter must be frequent (Apriori).
                let pruned = (0..k - 1).any(|drop| {
                    let subset: Vec<usize> = candidate
                        .iter()
                        .enumerate()
                        .filter(|(j, _)| *j != drop)
                        .map(|(_, i)| *i)
                        .collect();
                    !counts.contains_key(&subset)
                });
                if pruned {
                    continue;
                }
                let bits = level[a].1.and(&level[b].1);
                let count = bits.count();
                if frequent(count) {
                    next.push((candidate, bits));
                }
            }
        }
        next.sort_by(|(x, _), (y, _)| x.iter().map(|i| rank[i]).cmp(y.iter().map(|i| rank[i])));
        for (set, bits) in &next {
            counts.insert(set.clone(), bits.count());
        }
        if counts.len() > MAX_ITEMSETS {
            return Err(TooMany {
                min_support: min_support.to_string(),
                baskets: n,
            });
        }
        level = next;
    }
    // Rules with one item on the right.
    let support = |count: u32| f64::from(count) / n as f64;
    let mut found = Vec::new();
    for (set, count) in counts.iter().filter(|(s, _)| s.len() > 1) {
        for (j, consequent) in set.iter().enumerate() {
            let antecedents: Vec<usize> = set
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != j)
                .map(|(_, i)| *i)
                .collect();
            let confidence = support(*count) / support(counts[&antecedents]);
            if confidence < min_confidence {
                continue;
            }
            found.push(Rule {
                antecedents: antecedents.iter().map(|i| names[*i].to_owned()).collect(),
                consequent: names[*consequent].to_owned(),
                support: support(*count),
                confidence,
                lift: confidence / support(counts[&vec![*consequent]]),
            });
        }
    }
    found.sort_by(|a, b| {
        b.lift
            .total_cmp(&a.lift)
            .then_with(|| a.consequent.cmp(&b.consequent))
            .then_with(|| a.antecedents.cmp(&b.antecedents))
    });
    Ok(found)
}

/// A product to suggest, and the rule that suggests it.
#[derive(Debug, Clone, PartialEq)]
pub struct Suggestion {
    pub product: String,
    pub rule: Rule,
}

/// The products to suggest to someone who bought `owned`: the consequents of the rules
/// whose antecedents they all bought, by the confidence of the best such rule; what
/// they own already left out unless `include_owned` (for goods bought again and again).
pub fn suggest(rules: &[Rule], owned: &BTreeSet<String>, include_owned: bool, limit: usize) -> Vec<Suggestion> {
    let mut best: HashMap<&str, &Rule> = HashMap::new();
    for rule in rules {
        if (!include_owned && owned.contains(&rule.consequent)) || !rule.antecedents.iter().all(|a| owned.contains(a)) {
            continue;
        }
        let entry = best.entry(rule.consequent.as_str()).or_insert(rule);
        if (rule.confidence, rule.lift) > (entry.confidence, entry.lift) {
            *entry = rule;
        }
    }
    let mut suggestions: Vec<Suggestion> = best
        .into_iter()
        .map(|(product, rule)| Suggestion {
            product: product.to_owned(),
            rule: rule.clone(),
        })
        .collect();
    suggestions.sort_by(|a, b| {
        b.rule
            .confidence
            .total_cmp(&a.rule.confidence)
            .then(b.rule.lift.total_cmp(&a.rule.lift))
            .then_with(|| a.product.cmp(&b.product))
    });
    suggestions.truncate(limit);
    suggestions
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basket(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn rules_and_suggestions_on_a_small_shop() {
        let baskets = vec![
            basket(&["bread", "butter", "milk"]),
            basket(&["bread", "butter"]),
            basket(&["bread", "milk"]),
            basket(&["beer", "crisps"]),
            basket(&["beer", "crisps", "bread"]),
        ];
        let rules = rules(&baskets, 0.4, 0.6).unwrap();
        // Frequent (≥ 2 of 5): bread 4, butter 2, milk 2, beer 2, crisps 2;
        // bread+butter 2, bread+milk 2, beer+crisps 2.
        let beer = rules.iter().find(|r| r.antecedents == ["beer"]).unwrap();
        assert_eq!(
            (beer.consequent.as_str(), beer.confidence, beer.lift),
            ("crisps", 1.0, 2.5)
        );
        let butter = rules.iter().find(|r| r.antecedents == ["butter"]).unwrap();
        assert_eq!((butter.consequent.as_str(), butter.confidence), ("bread", 1.0));
        assert!((butter.lift - 1.25).abs() < 1e-12);
        assert!(
            rules.iter().all(|r| r.antecedents != ["bread"]),
            "bread → butter is 0.5, below 0.6"
        );
        assert_eq!(rules.len(), 4);
        let suggestions = suggest(&rules, &basket(&["beer", "milk"]), false, 5);
        let products: Vec<&str> = suggestions.iter().map(|s| s.product.as_str()).collect();
        assert_eq!(products, vec!["crisps", "bread"], "both certain; crisps lifts more");
        assert!(suggest(&rules, &basket(&["beer", "crisps"]), false, 5).is_empty());
    }
}
