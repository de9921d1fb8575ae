//! Blocking: only pairs that agree exactly on the fields of at least one rule are compared.
//! Comparing all 25 million pairs of two 5,000-record files is what blocking avoids; a
//! union of several loose rules keeps the true pairs that any one rule would miss.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use super::Prepared;

/// Pairs agree exactly on all these fields (by name); a missing value never agrees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockingRule {
    pub fields: Vec<String>,
}

impl BlockingRule {
    pub fn on(fields: &[&str]) -> BlockingRule {
        BlockingRule {
            fields: fields.iter().map(|f| (*f).to_owned()).collect(),
        }
    }
}

/// A candidate pair: indices into the left and right record sets (the same set when
/// deduplicating, then `a < b`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pair {
    pub a: u32,
    pub b: u32,
}

/// The blocking key of every record under one rule, interned as a small integer shared by
/// both sides so that agreement is an integer comparison.
struct Keys {
    left: Vec<Option<u32>>,
    right: Vec<Option<u32>>,
    /// Right-hand records grouped by key, in index order: those with key `k` are
    /// `members[starts[k]..starts[k + 1]]` (one allocation instead of one per key).
    starts: Vec<u32>,
    members: Vec<u32>,
}

impl Keys {
    fn bucket(&self, key: u32) -> &[u32] {
        &self.members[self.starts[key as usize] as usize..self.starts[key as usize + 1] as usize]
    }
}

fn keys(rule: &[usize], left: &Prepared, right: Option<&Prepared>) -> Keys {
    let capacity = left.len() + right.map_or(0, Prepared::len);
    let mut ids: HashMap<String, u32, FxBuild> = HashMap::with_capacity_and_hasher(capacity, FxBuild::default());
    let mut key = String::new();
    let mut key_of = |records: &Prepared, i: usize| -> Option<u32> {
        key.clear();
        for &field in rule {
            key.push_str(&records.value(i, field)?.text);
            // A separator that cannot occur in trimmed text keeps ("ab","c") apart from ("a","bc").
            key.push('\u{1f}');
        }
        if let Some(&id) = ids.get(key.as_str()) {
            return Some(id);
        }
        let id = ids.len() as u32;
        ids.insert(key.clone(), id);
        Some(id)
    };
    let left_keys: Vec<Option<u32>> = (0..left.len()).map(|i| key_of(left, i)).collect();
    let right_keys = match right {
        Some(right) => (0..right.len()).map(|i| key_of(right, i)).collect(),
        None => left_keys.clone(),
    };
    // Counting sort of the right-hand records by key.
    let mut starts = vec![0u32; ids.len() + 1];
    for key in right_keys.iter().flatten() {
        starts[*key as usize + 1] += 1;
    }
    for k in 1..starts.len() {
        starts[k] += starts[k - 1];
    }
    let mut next = starts.clone();
    let mut members = vec![0u32; starts[ids.len()] as usize];
    for (j, key) in right_keys.iter().enumerate() {
        if let Some(key) = key {
            members[next[*key as usize] as usize] = j as u32;
            next[*key as usize] += 1;
        }
    }
    Keys {
        left: left_keys,
        right: right_keys,
        starts,
        members,
    }
}

/// FxHash (as in rustc): blocking keys are short and not attacker-chosen in a batch job,
/// so a fast multiplicative hash beats the default SipHash, and it is deterministic.
#[derive(Default, Clone, Copy)]
struct FxHasher(u64);

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(word)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type FxBuild = BuildHasherDefault<FxHasher>;

/// Whether an earlier rule already produced this pair; checking this instead of sorting
/// and deduplicating keeps the output in a stable order at no extra memory.
fn seen(earlier: &[Keys], a: usize, b: usize) -> bool {
    earlier
        .iter()
        .any(|k| matches!((k.left[a], k.right[b]), (Some(x), Some(y)) if x == y))
}

/// Candidate pairs between two record sets: the union over rules, each pair once.
/// `rules` holds field indices.
pub fn link_pairs(rules: &[Vec<usize>], left: &Prepared, right: &Prepared) -> Vec<Pair> {
    pairs(rules, left, Some(right))
}

/// Candidate pairs within one record set (`a < b`), each pair once.
pub fn dedupe_pairs(rules: &[Vec<usize>], records: &Prepared) -> Vec<Pair> {
    pairs(rules, records, None)
}

fn pairs(rules: &[Vec<usize>], left: &Prepared, right: Option<&Prepared>) -> Vec<Pair> {
    let mut done: Vec<Keys> = Vec::with_capacity(rules.len());
    let mut out = Vec::new();
    for rule in rules {
        let keys = keys(rule, left, right);
        for (i, key) in keys.left.iter().enumerate() {
            let Some(key) = key else { continue };
            for &j in keys.bucket(*key) {
                if right.is_none() && j as usize <= i {
                    continue;
                }
                if !seen(&done, i, j as usize) {
                    out.push(Pair { a: i as u32, b: j });
                }
            }
        }
        done.push(keys);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::matching::{Comparison, Field, Record, Schema};

    fn schema() -> Schema {
        Schema::new(vec![
            Field::new("name", Comparison::Exact),
            Field::new("city", Comparison::Exact),
        ])
    }

    fn records(rows: &[(&str, &str)]) -> Prepared {
        let records: Vec<Record> = rows
            .iter()
            .enumerate()
            .map(|(i, (name, city))| Record {
                id: i.to_string(),
                fields: vec![Some((*name).to_owned()), Some((*city).to_owned())],
            })
            .collect();
        Prepared::new(&schema(), &records).unwrap()
    }

    #[test]
    fn union_of_rules_lists_each_pair_once() {
        let a = records(&[("ann", "oslo"), ("bob", "rome"), ("", "rome")]);
        let b = records(&[("ann", "oslo"), ("ann", "rome"), ("cyd", "rome"), ("", "")]);
        let got = link_pairs(&[vec![0], vec![1]], &a, &b);
        let want = [(0, 0), (0, 1), (1, 1), (1, 2), (2, 1), (2, 2)];
        let mut sorted = got.clone();
        sorted.sort();
        assert_eq!(sorted, want.map(|(a, b)| Pair { a, b }));
        // Missing values never block together, so (2, 3) and (x, 3) are absent.
        assert!(got.iter().all(|p| p.b != 3));
    }

    #[test]
    fn rules_on_several_fields_need_all_to_agree() {
        let a = records(&[("ann", "oslo"), ("ann", "rome")]);
        let b = records(&[("ann", "oslo"), ("an", "noslo")]);
        assert_eq!(link_pairs(&[vec![0, 1]], &a, &b), vec![Pair { a: 0, b: 0 }]);
    }

    #[test]
    fn dedupe_lists_unordered_pairs_once() {
        let r = records(&[("ann", "oslo"), ("ann", "oslo"), ("ann", "rome"), ("bob", "rome")]);
        let mut got = dedupe_pairs(&[vec![0], vec![1]], &r);
        got.sort();
        let want = [(0, 1), (0, 2), (1, 2), (2, 3)].map(|(a, b)| Pair { a, b });
        assert_eq!(got, want);
    }
}
