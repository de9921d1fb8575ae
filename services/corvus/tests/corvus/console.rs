//! The console in headless Chromium (Debian's `chromium`): the page, served by the app on
//! its HTTP port, loads with a read key, asks the services' APIs through its relay, and
//! shows the figures the APIs give; a screenshot of it is kept
//! (`target/tmp/console.png`).

use std::collections::BTreeMap;
use std::process::Command;

use corvus_proto::measurement::v1 as pb;

use crate::support::TestApp;

/// Chromium, or `None` (skip) off CI; under CI it must be installed.
fn chromium() -> Option<&'static str> {
    let found = Command::new("chromium")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    match (found, std::env::var("CI").as_deref()) {
        (true, _) => Some("chromium"),
        (false, Ok("true")) => panic!("Debian's chromium must be installed under CI (apt-get install chromium)"),
        (false, _) => {
            eprintln!("skipping the console's browser check: no chromium");
            None
        }
    }
}

/// Runs headless Chromium on the console page with `extra` arguments; what it printed.
fn run(browser: &str, url: &str, extra: &[&str]) -> String {
    let profile = corvus_test_support::TempDir::new();
    let out = Command::new(browser)
        .args(["--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(["--virtual-time-budget=15000", "--window-size=1400,2200"])
        .args(extra)
        .arg(url)
        .output()
        .expect("chromium runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every `data-figure` on the page with its `data-value`.
fn figures(dom: &str) -> BTreeMap<String, f64> {
    let mut found = BTreeMap::new();
    for part in dom.split("data-figure=\"").skip(1) {
        let name = part.split('"').next().unwrap_or_default().to_owned();
        let value = part
            .split("data-value=\"")
            .nth(1)
            .and_then(|v| v.split('"').next())
            .and_then(|v| v.parse::<f64>().ok());
        if let Some(value) = value {
            found.insert(name, value);
        }
    }
    found
}

/// The console shows what the APIs give for `experiment`: each arm's people, mean,
/// lift and p-value of every metric, and the report's people and conversions.
pub async fn the_console_shows_what_the_api_gives(
    app: &TestApp,
    results: &pb::GetExperimentResultsResponse,
    report: &pb::GetCampaignReportResponse,
) {
    let Some(browser) = chromium() else { return };
    let url = format!(
        "{}/console#key={}&experiment={}",
        app.http, app.read_key, results.experiment
    );
    let dom = tokio::task::spawn_blocking({
        let url = url.clone();
        move || run(browser, &url, &["--dump-dom"])
    })
    .await
    .unwrap();
    assert!(
        dom.contains("data-loaded=\"true\""),
        "the page did not load its figures:\n{dom}"
    );
    let shown = figures(&dom);
    let mut compared = 0;
    for metric in &results.metrics {
        let relative = metric
            .settings
            .iter()
            .find(|s| s.setting == pb::Setting::FrequentistRelative as i32)
            .unwrap();
        for arm in &metric.observed {
            let name = format!("results.{}.{}", metric.metric, arm.name);
            assert_eq!(shown[&format!("{name}.users")], arm.users as f64, "{name}");
            assert!((shown[&format!("{name}.mean")] - arm.mean).abs() < 1e-12, "{name}");
            compared += 2;
            let comparison = relative
                .arms
                .iter()
                .find(|a| a.name == arm.name)
                .unwrap()
                .comparison
                .as_ref();
            if let Some(c) = comparison {
                assert!((shown[&format!("{name}.lift")] - c.expected).abs() < 1e-12, "{name}");
                assert!(
                    (shown[&format!("{name}.p_value")] - c.p_value.unwrap()).abs() < 1e-12,
                    "{name}"
                );
                compared += 2;
            }
        }
    }
    let overall = report.overall.as_ref().unwrap();
    assert_eq!(shown["report.overall.people"], overall.people as f64);
    assert_eq!(shown["report.overall.converted"], overall.converted);
    assert!(compared >= 8, "only {compared} figures compared: {shown:?}");
    // A screenshot, kept.
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("console.png");
    let arg = format!("--screenshot={}", shot.display());
    tokio::task::spawn_blocking(move || run(browser, &url, &[&arg]))
        .await
        .unwrap();
    let png = std::fs::read(&shot).expect("the screenshot");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    eprintln!("the console's screenshot: {}", shot.display());
}

/// The console's relay refuses what the API refuses, as JSON with the field; and what is
/// not one of Corvus's methods, or not JSON of its request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_relay_refuses_with_the_field() {
    let Some(app) = crate::support::spawn(corvus_test_support::Backend::Embedded).await else {
        return;
    };
    let client = reqwest::Client::new();
    let call = |path: &str, body: &str, key: &str| {
        client
            .post(format!("{}/console/{path}", app.http))
            .header("authorization", format!("Bearer {key}"))
            .body(body.to_owned())
            .send()
    };
    let page = reqwest::get(format!("{}/console", app.http)).await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("/console/app.js"));
    let results = "api/corvus.measurement.v1.MeasurementService/GetExperimentResults";
    let answer = call(results, "{}", &app.read_key).await.unwrap();
    assert_eq!(answer.status(), 400);
    let body: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(
        (body["code"].as_str(), body["field"].as_str()),
        (Some("InvalidArgument"), Some("experiment"))
    );
    // The key is the caller's: without one, the API refuses.
    assert_eq!(call(results, "{}", "").await.unwrap().status(), 401);
    assert_eq!(call(results, "{not json", &app.read_key).await.unwrap().status(), 400);
    let other = call("api/grpc.health.v1.Health/Check", "{}", &app.read_key)
        .await
        .unwrap();
    assert_eq!(other.status(), 404);
    // A streaming method is not relayed as a unary one.
    let streaming = "api/corvus.measurement.v1.MeasurementService/StreamMetrics";
    assert_eq!(call(streaming, "{}", &app.read_key).await.unwrap().status(), 404);
    // A unary call answers the API's JSON.
    let listed = call(
        "api/corvus.measurement.v1.MeasurementService/ListMetrics",
        "{}",
        &app.read_key,
    )
    .await
    .unwrap();
    assert_eq!(listed.status(), 200);
    assert_eq!(listed.json::<serde_json::Value>().await.unwrap(), serde_json::json!({}));
    app.stop().await;
}
