//! The statistics against GrowthBook's stats engine: every case in `tests/data/
//! experiments` (copied from the project's shared reference data) holds the results
//! gbstats 0.8.0 computes for it under five settings; each number must match to 1e-6.
//! And cases that cannot be analysed are refused with the field. The service over both
//! backends is in `store.rs`.

mod ope;
mod planning;
mod reports;
mod satisfaction;
mod store;

use corvus_test_support::on_both_backends;
use store::{
    aggregates_equal_the_sums_of_the_people_and_count_each_entry_once,
    merges_unmerges_and_erasures_move_the_aggregates, metrics_are_fixed_once_defined_and_checked,
    two_replicas_delivering_at_once_count_everything_once,
};

use reports::reports_count_the_funnel_the_lift_and_fatigue;
use satisfaction::feedback_is_tallied_by_region_segment_activation_and_day;

on_both_backends!(
    feedback_is_tallied_by_region_segment_activation_and_day,
    reports_count_the_funnel_the_lift_and_fatigue,
    aggregates_equal_the_sums_of_the_people_and_count_each_entry_once,
    merges_unmerges_and_erasures_move_the_aggregates,
    metrics_are_fixed_once_defined_and_checked,
    two_replicas_delivering_at_once_count_everything_once,
);

use corvus_measurement::stats::{Case, report};
use serde_json::Value;

fn cases() -> Vec<(String, Value)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/experiments");
    let mut cases: Vec<(String, Value)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                serde_json::from_str(&text).unwrap(),
            )
        })
        .collect();
    cases.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(cases.len() >= 2, "the reference cases are in {}", dir.display());
    cases
}

/// Every number of `want` is in `got` at the same place, within 1e-6 (relative above
/// 1); every other value equal.
fn matches(path: &str, got: &Value, want: &Value, checked: &mut usize) {
    match (got, want) {
        (Value::Number(g), Value::Number(w)) => {
            let (g, w) = (g.as_f64().unwrap(), w.as_f64().unwrap());
            assert!(
                (g - w).abs() <= 1e-6 * w.abs().max(1.0),
                "{path}: {g} against gbstats' {w}"
            );
            *checked += 1;
        }
        (Value::Object(g), Value::Object(w)) => {
            for (key, w) in w {
                let g = g.get(key).unwrap_or_else(|| panic!("{path}.{key} is missing"));
                matches(&format!("{path}.{key}"), g, w, checked);
            }
        }
        (Value::Array(g), Value::Array(w)) => {
            assert_eq!(g.len(), w.len(), "{path}");
            for (i, (g, w)) in g.iter().zip(w).enumerate() {
                matches(&format!("{path}[{i}]"), g, w, checked);
            }
        }
        (g, w) => assert_eq!(g, w, "{path}"),
    }
}

#[test]
fn every_case_equals_gbstats() {
    for (name, file) in cases() {
        let case: Case = serde_json::from_value(file["case"].clone()).unwrap();
        case.check().unwrap();
        let mut checked = 0;
        matches(&name, &report(&case), &file["reference"], &mut checked);
        // Five settings, each with the SRM p-value and the arms' figures.
        assert!(checked >= 5 * 10, "{name}: only {checked} numbers compared");
    }
}

/// A change that spoils a case, with the field the refusal names.
type Spoiler = (fn(&mut Case), &'static str);

#[test]
fn cases_that_cannot_be_analysed_name_the_field() {
    let (_, file) = cases().remove(0);
    let base: Case = serde_json::from_value(file["case"].clone()).unwrap();
    let spoil: [Spoiler; 7] = [
        (|c| c.variants[1].users = 0.0, "variants[1].users"),
        (|c| c.variants[0].sum = -1.0, "variants[0].sum"),
        (|c| c.variants[0].sum = c.variants[0].users + 1.0, "variants[0].sum"),
        (|c| c.weights = vec![0.5, 0.4], "weights"),
        (|c| c.weights = vec![1.0], "weights"),
        (|c| c.variants.truncate(1), "variants"),
        (|c| c.alpha = 1.5, "alpha"),
    ];
    for (change, field) in spoil {
        let mut case = base.clone();
        change(&mut case);
        assert_eq!(case.check().unwrap_err().field, field);
    }
    // A ratio without its denominator; a covariate on one arm only, or on a ratio.
    let by_name = |name: &str| {
        let (_, file) = cases().into_iter().find(|(n, _)| n == name).unwrap();
        serde_json::from_value::<Case>(file["case"].clone()).unwrap()
    };
    let mut ratio = by_name("ratio_revenue_per_order.json");
    ratio.variants[1].sum_products = None;
    assert_eq!(ratio.check().unwrap_err().field, "variants[1].denominator_sum");
    let mut cuped = by_name("cuped_revenue_three_arms.json");
    cuped.variants[2].covariate_sum = None;
    assert_eq!(cuped.check().unwrap_err().field, "variants[2].covariate_sum");
    let mut both = by_name("ratio_revenue_per_order.json");
    for v in &mut both.variants {
        (v.covariate_sum, v.covariate_sum_squares, v.covariate_sum_products) = (Some(1.0), Some(1.0), Some(1.0));
    }
    assert_eq!(both.check().unwrap_err().field, "metric_type");
}
