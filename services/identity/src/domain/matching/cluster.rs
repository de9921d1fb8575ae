//! From scored pairs to decisions: a one-to-one assignment when linking two files that
//! each hold a person at most once, and connected components when deduplicating.

use std::cmp::Ordering;

use super::ScoredPair;

/// Best first: higher probability, then higher weight (which still separates pairs whose
/// probabilities both round to 1.0), then indices, so the order is total and stable.
fn best_first(x: &ScoredPair, y: &ScoredPair) -> Ordering {
    y.probability
        .total_cmp(&x.probability)
        .then(y.weight.total_cmp(&x.weight))
        .then(x.a.cmp(&y.a))
        .then(x.b.cmp(&y.b))
}

/// Greedy one-to-one assignment: pairs at or above `threshold`, best first, keeping a pair
/// only if neither record is already linked. Returned best first.
pub fn one_to_one(pairs: &[ScoredPair], threshold: f64) -> Vec<ScoredPair> {
    let mut candidates: Vec<ScoredPair> = pairs.iter().copied().filter(|p| p.probability >= threshold).collect();
    candidates.sort_unstable_by(best_first);
    let size = |side: fn(&ScoredPair) -> usize| candidates.iter().map(side).max().map_or(0, |m| m + 1);
    let mut left_used = vec![false; size(|p| p.a)];
    let mut right_used = vec![false; size(|p| p.b)];
    candidates.retain(|p| {
        let free = !left_used[p.a] && !right_used[p.b];
        if free {
            left_used[p.a] = true;
            right_used[p.b] = true;
        }
        free
    });
    candidates
}

/// Cluster label of each of `records` records: records joined by a pair at or above
/// `threshold`, directly or through others, share the label of their smallest index.
pub fn connected_components(records: usize, pairs: &[ScoredPair], threshold: f64) -> Vec<usize> {
    let mut parent: Vec<usize> = (0..records).collect();
    fn root(parent: &mut [usize], mut x: usize) -> usize {
        while parent[x] != x {
            // Path halving keeps the trees flat without recursion.
            parent[x] = parent[parent[x]];
            x = parent[x];
        }
        x
    }
    for pair in pairs.iter().filter(|p| p.probability >= threshold) {
        let (ra, rb) = (root(&mut parent, pair.a), root(&mut parent, pair.b));
        // The smaller index becomes the root, so a label is its cluster's smallest index.
        let (lo, hi) = if ra < rb { (ra, rb) } else { (rb, ra) };
        parent[hi] = lo;
    }
    (0..records).map(|x| root(&mut parent, x)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(a: usize, b: usize, probability: f64) -> ScoredPair {
        ScoredPair {
            a,
            b,
            probability,
            weight: probability,
        }
    }

    #[test]
    fn one_to_one_keeps_the_best_partner() {
        let pairs = [
            pair(0, 0, 0.9),
            pair(0, 1, 0.95),
            pair(1, 1, 0.8),
            pair(1, 0, 0.7),
            pair(2, 2, 0.3),
        ];
        // (0,1) wins first; (0,0) and (1,1) then collide; (1,0) is free; (2,2) is below 0.5.
        let got: Vec<(usize, usize)> = one_to_one(&pairs, 0.5).iter().map(|p| (p.a, p.b)).collect();
        assert_eq!(got, vec![(0, 1), (1, 0)]);
        assert!(one_to_one(&[], 0.5).is_empty());
    }

    #[test]
    fn ties_are_broken_by_weight_then_index() {
        let pairs = [
            ScoredPair {
                a: 0,
                b: 1,
                probability: 1.0,
                weight: 30.0,
            },
            ScoredPair {
                a: 0,
                b: 0,
                probability: 1.0,
                weight: 40.0,
            },
        ];
        let got = one_to_one(&pairs, 0.5);
        assert_eq!((got[0].a, got[0].b), (0, 0));
        assert_eq!(got.len(), 1);
    }

    #[test]
    fn components_join_through_chains_only_above_threshold() {
        let pairs = [
            pair(0, 1, 0.9),
            pair(1, 2, 0.8),
            pair(3, 4, 0.95),
            pair(2, 3, 0.2),
            pair(5, 6, 0.5),
        ];
        assert_eq!(connected_components(8, &pairs, 0.5), vec![0, 0, 0, 3, 3, 5, 5, 7]);
        assert_eq!(connected_components(8, &pairs, 0.1), vec![0, 0, 0, 0, 0, 5, 5, 7]);
    }
}
