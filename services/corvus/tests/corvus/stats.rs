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

/// AnalyzeAggregates through the public API: two metrics of one experiment (the
/// reference cases' aggregates), their p-values as gbstats computes them, corrected
/// together by Holm's method; and aggregates that cannot be analysed refused with the
/// field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analyze_aggregates_through_the_api() {
    use corvus_proto::measurement::v1 as pb;
    use corvus_proto::measurement::v1::measurement_service_client::MeasurementServiceClient;

    let Some(app) = crate::support::spawn(corvus_test_support::Backend::Embedded).await else {
        return;
    };
    let mut client =
        MeasurementServiceClient::with_interceptor(app.channel().await, crate::support::Key::bearer(&app.read_key));
    let cases: Vec<serde_json::Value> = ["binomial_10pct_vs_11pct.json", "revenue_mean.json"]
        .iter()
        .map(|name| {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../measurement/tests/data/experiments")
                .join(name);
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
        })
        .collect();
    let metric = |name: &str, file: &serde_json::Value, metric_type: pb::MetricType| pb::MetricAggregates {
        metric: name.to_owned(),
        metric_type: metric_type as i32,
        arms: file["case"]["variants"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| pb::ArmAggregates {
                name: v["name"].as_str().unwrap().to_owned(),
                users: v["users"].as_u64().unwrap(),
                sum: v["sum"].as_f64().unwrap(),
                sum_squares: v["sum_squares"].as_f64().unwrap_or_default(),
                ..Default::default()
            })
            .collect(),
        inverse: false,
    };
    let request = pb::AnalyzeAggregatesRequest {
        metrics: vec![
            metric("converted", &cases[0], pb::MetricType::Binomial),
            metric("revenue", &cases[1], pb::MetricType::Count),
        ],
        weights: vec![0.5, 0.5],
        correction: pb::Correction::Holm as i32,
        ..Default::default()
    };
    let answer = client.analyze_aggregates(request.clone()).await.unwrap().into_inner();
    assert_eq!(answer.metrics.len(), 2);
    let mut p = Vec::new();
    for (result, file) in answer.metrics.iter().zip(&cases) {
        let frequentist = &result.settings[0];
        assert_eq!(frequentist.setting, pb::Setting::FrequentistRelative as i32);
        let want = &file["reference"]["frequentist_relative"];
        let got = frequentist.arms[1].comparison.as_ref().unwrap();
        let reference = want["variations"][1]["p_value"].as_f64().unwrap();
        assert!((got.p_value.unwrap() - reference).abs() < 1e-6, "{got:?}");
        assert!((frequentist.srm_p - want["srm_p"].as_f64().unwrap()).abs() < 1e-6);
        let bayesian = &result.settings[3];
        let chance = file["reference"]["bayesian_relative"]["variations"][1]["chance_to_win"]
            .as_f64()
            .unwrap();
        let got_chance = bayesian.arms[1].comparison.as_ref().unwrap().chance_to_win.unwrap();
        assert!((got_chance - chance).abs() < 1e-6);
        p.push((got.p_value.unwrap(), got.adjusted_p_value.unwrap()));
    }
    // Holm over two: the smaller p doubled, the larger at least that and itself.
    let (small, large) = if p[0].0 < p[1].0 { (p[0], p[1]) } else { (p[1], p[0]) };
    assert!((small.1 - 2.0 * small.0).abs() < 1e-12, "{p:?}");
    assert!((large.1 - large.0.max(2.0 * small.0)).abs() < 1e-12, "{p:?}");

    // An arm without users: INVALID_ARGUMENT naming it; weights that do not add up.
    let mut bad = request.clone();
    bad.metrics[1].arms[1].users = 0;
    let err = client.analyze_aggregates(bad).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(crate::orchestration::field_of(&err), "metrics[1].arms[1].users");
    let mut bad = request;
    bad.weights = vec![0.5, 0.4];
    let err = client.analyze_aggregates(bad).await.unwrap_err();
    assert_eq!(crate::orchestration::field_of(&err), "weights");
    app.stop().await;
}
