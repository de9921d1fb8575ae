//! `corvus stats analyze`: the command prints, for a case file, the results the
//! measurement crate computes (held to gbstats in its own tests), and refuses a case
//! that cannot be analysed with the field, printing nothing on standard output.

use std::process::Command;

fn case_file() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../measurement/tests/data/experiments/binomial_10pct_vs_11pct.json")
}

#[test]
fn analyze_prints_each_setting_as_json() {
    let out = Command::new(env!("CARGO_BIN_EXE_corvus"))
        .args(["stats", "analyze"])
        .arg(case_file())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // The file holds the case and gbstats' results for it.
    let file: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(case_file()).unwrap()).unwrap();
    let reference = &file["reference"];
    for setting in [
        "frequentist_relative",
        "frequentist_absolute",
        "frequentist_sequential_relative",
        "bayesian_relative",
        "bayesian_absolute",
    ] {
        let (got, want) = (&printed[setting]["variations"][1], &reference[setting]["variations"][1]);
        let key = if setting.starts_with("bayesian") {
            "chance_to_win"
        } else {
            "p_value"
        };
        let (g, w) = (got[key].as_f64().unwrap(), want[key].as_f64().unwrap());
        assert!((g - w).abs() < 1e-6, "{setting}.{key}: {g} against {w}");
    }
}

#[test]
fn analyze_refuses_a_bad_case_with_the_field() {
    let dir = corvus_test_support::TempDir::new();
    let path = dir.path().join("bad.json");
    std::fs::write(
        &path,
        r#"{"metric_type": "binomial", "weights": [0.5, 0.5],
            "variants": [{"name": "a", "users": 100, "sum": 10}, {"name": "b", "users": 0, "sum": 0}]}"#,
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_corvus"))
        .args(["stats", "analyze"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("variants[1].users"), "{err}");
}

#[test]
fn ope_prints_the_estimates_of_the_open_bandit_sample() {
    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../measurement/tests/data/obd");
    let out = Command::new(env!("CARGO_BIN_EXE_corvus"))
        .args(["stats", "ope", "--logged"])
        .arg(data.join("logged.csv"))
        .arg("--policy")
        .arg(data.join("policy.csv"))
        .arg("--rewards")
        .arg(data.join("rewards.csv.gz"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // obp 0.5.7's values for the same files (the data's README).
    for (key, want) in [
        ("ipw", 0.00455288),
        ("snipw", 0.004775833081),
        ("dm", 0.003540046105),
        ("dr", 0.004838331237),
    ] {
        let value = printed[key]["value"].as_f64().unwrap();
        assert!((value - want).abs() < 1e-9, "{key}: {value} against {want}");
        assert_eq!(printed[key]["ci"].as_array().unwrap().len(), 2);
    }
}
