//! Experiment planning against statsmodels: every case of `tests/data/planning/
//! cases.json` (written by `tests/reference/planning_cases.py`) holds the people, days
//! and detectable MDEs statsmodels' power solver gives for a plan; each must match, the
//! unrounded figures to 1e-6 relative and the rounded-up ones exactly. And plans that
//! cannot be sized are refused with the field.

use corvus_measurement::planning::{Baseline, Budget, Plan, detectable, size};
use corvus_measurement::stats::{MetricType, Variant};
use serde_json::{Value, json};

fn cases() -> Vec<Value> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/planning/cases.json");
    let file: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let cases = file["cases"].as_array().unwrap().clone();
    assert!(cases.len() >= 8, "the reference cases are in {}", path.display());
    cases
}

fn close(what: &str, got: f64, want: f64) {
    assert!(
        (got - want).abs() <= 1e-6 * want.abs(),
        "{what}: {got} against statsmodels' {want}"
    );
}

#[test]
fn sizes_and_detectable_effects_equal_statsmodels() {
    for case in cases() {
        let name = case["name"].as_str().unwrap();
        let plan: Plan = serde_json::from_value(case["plan"].clone()).unwrap();
        let mde = case["mde"].as_f64().unwrap();
        let want = &case["expected"];
        let got = size(&plan, mde).unwrap();
        let per_arm: Vec<f64> = serde_json::from_value(want["per_arm"].clone()).unwrap();
        assert_eq!(got.per_arm.len(), per_arm.len(), "{name}");
        for (i, (g, w)) in got.per_arm.iter().zip(&per_arm).enumerate() {
            close(&format!("{name}.per_arm[{i}]"), *g, *w);
        }
        let people: Vec<u64> = serde_json::from_value(want["people"].clone()).unwrap();
        assert_eq!(got.people, people, "{name}.people");
        assert_eq!(got.total, want["total"].as_u64().unwrap(), "{name}.total");
        assert_eq!(got.days, want["days"].as_u64(), "{name}.days");
        assert_eq!(got.binding as u64, want["binding"].as_u64().unwrap(), "{name}.binding");
        close(&format!("{name}.alpha"), got.alpha, want["alpha"].as_f64().unwrap());
        close(&format!("{name}.effect"), got.effect, want["effect"].as_f64().unwrap());

        for d in case["detectable"].as_array().unwrap() {
            let budget: Budget = serde_json::from_value(d["budget"].clone()).unwrap();
            let got = detectable(&plan, budget).unwrap();
            close(
                &format!("{name}.detectable({budget:?})"),
                got,
                d["mde"].as_f64().unwrap(),
            );
        }

        // The inverse: what the sizing buys detects the MDE, just (the people are
        // rounded up, the days more so).
        let sized = size(&plan, mde).unwrap();
        let by_people = detectable(&plan, Budget::People(sized.total)).unwrap();
        assert!(
            by_people <= mde && by_people > 0.999 * mde,
            "{name}: {by_people} for {mde}"
        );
        if let Some(days) = sized.days {
            assert!(detectable(&plan, Budget::Days(days)).unwrap() <= by_people, "{name}");
            assert!(detectable(&plan, Budget::Days(days - 1)).unwrap() > mde, "{name}");
        }
    }
}

#[test]
fn defaults_and_baselines_from_the_workspaces_aggregates() {
    let plan: Plan = serde_json::from_value(json!({
        "metric": {"type": "binomial", "rate": 0.1}, "weights": [0.5, 0.5]
    }))
    .unwrap();
    assert_eq!(
        (plan.alpha, plan.power, plan.absolute, plan.bonferroni),
        (0.05, 0.8, false, false)
    );
    // The textbook figure: (1.959964 + 0.841621)² · (0.1·0.9 + 0.105·0.895) / 0.005².
    let sized = size(&plan, 0.05).unwrap();
    assert_eq!(sized.people, [57_760, 57_760]);
    assert_eq!(sized.days, None);

    assert_eq!(
        Baseline::count_with_variance(3.2, 9.0),
        Baseline::Count { mean: 3.2, stddev: 3.0 }
    );
    let arm = |value: Value| serde_json::from_value::<Variant>(value).unwrap();
    let converted = arm(json!({"name": "control", "users": 1000.0, "sum": 120.0}));
    assert_eq!(
        Baseline::observed(MetricType::Binomial, &converted),
        Baseline::Binomial { rate: 0.12 }
    );
    // Values 1, 2, 3, 6: mean 3, sample variance 14 / 3.
    let spent = arm(json!({"name": "control", "users": 4.0, "sum": 12.0, "sum_squares": 50.0}));
    let Baseline::Count { mean, stddev } = Baseline::observed(MetricType::Count, &spent) else {
        panic!("a count");
    };
    assert!((mean - 3.0).abs() < 1e-12 && (stddev - (14.0_f64 / 3.0).sqrt()).abs() < 1e-12);
}

/// A change that spoils a plan, with the field the refusal names.
type Spoiler = (fn(&mut Plan), &'static str);

#[test]
fn plans_that_cannot_be_sized_name_the_field() {
    let base = Plan {
        metric: Baseline::Binomial { rate: 0.1 },
        weights: vec![0.1, 0.45, 0.45],
        absolute: false,
        alpha: 0.05,
        power: 0.8,
        bonferroni: false,
        daily_traffic: Some(1000.0),
    };
    let spoil: [Spoiler; 16] = [
        (|c| c.metric = Baseline::Binomial { rate: 0.0 }, "metric.rate"),
        (|c| c.metric = Baseline::Binomial { rate: 1.0 }, "metric.rate"),
        (|c| c.metric = Baseline::Binomial { rate: f64::NAN }, "metric.rate"),
        (
            |c| c.metric = Baseline::Count { mean: 5.0, stddev: 0.0 },
            "metric.stddev",
        ),
        (|c| c.metric = Baseline::count_with_variance(5.0, 0.0), "metric.stddev"),
        (|c| c.metric = Baseline::count_with_variance(5.0, -1.0), "metric.stddev"),
        (|c| c.metric = Baseline::Count { mean: 0.0, stddev: 1.0 }, "metric.mean"),
        (|c| c.power = 0.0, "power"),
        (|c| c.power = 1.0, "power"),
        (|c| c.alpha = 0.0, "alpha"),
        (|c| c.alpha = 1.0, "alpha"),
        (|c| c.weights = vec![0.5, 0.4], "weights"),
        (|c| c.weights = vec![1.0], "weights"),
        (|c| c.weights = vec![0.5, 0.5, 0.0], "weights[2]"),
        (|c| c.daily_traffic = Some(0.0), "daily_traffic"),
        (|c| c.daily_traffic = Some(-20.0), "daily_traffic"),
    ];
    for (change, field) in spoil {
        let mut plan = base.clone();
        change(&mut plan);
        assert_eq!(size(&plan, 0.05).unwrap_err().field, field, "{plan:?}");
        assert_eq!(
            detectable(&plan, Budget::People(1000)).unwrap_err().field,
            field,
            "{plan:?}"
        );
    }
    // A mean of 0 is fine for an absolute MDE.
    let mut absolute = base.clone();
    absolute.absolute = true;
    absolute.metric = Baseline::Count { mean: 0.0, stddev: 1.0 };
    assert!(size(&absolute, 0.1).is_ok());

    for mde in [0.0, -0.05, f64::NAN, f64::INFINITY] {
        assert_eq!(size(&base, mde).unwrap_err().field, "mde");
    }
    assert_eq!(size(&base, 1e-300).unwrap_err().field, "mde");
    // A rise past a rate of 1.
    assert_eq!(size(&base, 9.0).unwrap_err().field, "mde");

    assert_eq!(detectable(&base, Budget::People(0)).unwrap_err().field, "people");
    assert_eq!(detectable(&base, Budget::Days(0)).unwrap_err().field, "days");
    let mut no_traffic = base.clone();
    no_traffic.daily_traffic = None;
    assert_eq!(
        detectable(&no_traffic, Budget::Days(7)).unwrap_err().field,
        "daily_traffic"
    );
    assert_eq!(detectable(&base, Budget::People(3)).unwrap_err().field, "people");
}
