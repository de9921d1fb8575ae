//! The FEBRL4 data set, the settings used to link it and how links are scored against
//! the true pairs. Shared by the integration test and the `febrl4` example.

// The example and the test each use most, not all, of this module.
#![allow(dead_code)]

use std::collections::HashSet;
use std::path::PathBuf;

use corvus_identity::domain::matching::{
    BlockingRule, Comparison, Field, Pair, Record, Schema, ScoredPair, Settings, Thresholds, Training,
};

pub struct Febrl4 {
    pub a: Vec<Record>,
    pub b: Vec<Record>,
    /// True pairs by record id.
    pub truth: HashSet<(String, String)>,
}

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

/// Rows of a comma-separated file without quoting (FEBRL4 has none), header skipped.
fn rows(name: &str) -> Vec<Vec<String>> {
    let path = data_dir().join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    text.lines()
        .skip(1)
        .filter(|l| !l.is_empty())
        .map(|l| l.split(',').map(str::to_owned).collect())
        .collect()
}

fn records(name: &str) -> Vec<Record> {
    rows(name)
        .into_iter()
        .map(|mut row| {
            let id = row.remove(0);
            let fields = row.into_iter().map(|v| (!v.trim().is_empty()).then_some(v)).collect();
            Record { id, fields }
        })
        .collect()
}

pub fn load() -> Febrl4 {
    let truth = rows("febrl4_true_links.csv")
        .into_iter()
        .map(|r| (r[0].clone(), r[1].clone()))
        .collect();
    Febrl4 {
        a: records("febrl4_a.csv"),
        b: records("febrl4_b.csv"),
        truth,
    }
}

/// Fields in file order: given_name, surname, street_number, address_1, address_2,
/// suburb, postcode, state, date_of_birth, soc_sec_id.
pub fn settings() -> Settings {
    let jw = || Comparison::JaroWinkler {
        thresholds: vec![0.92, 0.8],
    };
    let edits = |d: Vec<usize>| Comparison::Levenshtein { max_distances: d };
    Settings {
        schema: Schema::new(vec![
            Field::new("given_name", jw()).with_term_frequency(),
            Field::new("surname", jw()).with_term_frequency(),
            Field::new("street_number", edits(vec![1])),
            Field::new("address_1", jw()),
            Field::new("address_2", jw()),
            Field::new("suburb", jw()).with_term_frequency(),
            Field::new("postcode", edits(vec![1])),
            Field::new("state", Comparison::Exact),
            Field::new("date_of_birth", Comparison::Date),
            Field::new("soc_sec_id", edits(vec![1, 2])),
        ]),
        blocking: vec![
            BlockingRule::on(&["given_name", "surname"]),
            BlockingRule::on(&["date_of_birth"]),
            BlockingRule::on(&["soc_sec_id"]),
            BlockingRule::on(&["given_name", "postcode"]),
            BlockingRule::on(&["surname", "postcode"]),
            BlockingRule::on(&["street_number", "address_1"]),
        ],
        training: Training::default(),
        thresholds: Thresholds::default(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quality {
    pub true_positives: usize,
    pub false_positives: usize,
    pub false_negatives: usize,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

/// Precision, recall and F1 of the links at or above `threshold`.
pub fn evaluate(data: &Febrl4, links: &[ScoredPair], threshold: f64) -> Quality {
    let mut tp = 0;
    let mut fp = 0;
    for link in links.iter().filter(|l| l.probability >= threshold) {
        if data
            .truth
            .contains(&(data.a[link.a].id.clone(), data.b[link.b].id.clone()))
        {
            tp += 1;
        } else {
            fp += 1;
        }
    }
    let fn_ = data.truth.len() - tp;
    let precision = if tp + fp == 0 {
        1.0
    } else {
        tp as f64 / (tp + fp) as f64
    };
    let recall = tp as f64 / data.truth.len() as f64;
    let f1 = if precision + recall == 0.0 {
        0.0
    } else {
        2.0 * precision * recall / (precision + recall)
    };
    Quality {
        true_positives: tp,
        false_positives: fp,
        false_negatives: fn_,
        precision,
        recall,
        f1,
    }
}

/// True pairs that no blocking rule proposed: no threshold can recover them.
pub fn lost_by_blocking(data: &Febrl4, candidates: &[Pair]) -> usize {
    let found = candidates
        .iter()
        .filter(|p| {
            data.truth
                .contains(&(data.a[p.a as usize].id.clone(), data.b[p.b as usize].id.clone()))
        })
        .count();
    data.truth.len() - found
}
