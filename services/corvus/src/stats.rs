//! `corvus stats analyze CASE.json`: an experiment's results from its per-arm
//! aggregates; `corvus stats ope`: off-policy estimates from logged decisions. Both
//! computed in this process and printed as JSON. `corvus stats export`: a campaign's
//! logged decisions from a running Corvus, written in the files `ope` reads.

use std::io::Read;
use std::path::Path;

use anyhow::Context;
use corvus_measurement::ope::{self, files};
use corvus_measurement::stats::{Case, report};

pub fn analyze(file: &Path) -> anyhow::Result<()> {
    let text = match file.to_str() {
        Some("-") => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("read the case from standard input")?;
            text
        }
        _ => std::fs::read_to_string(file).with_context(|| format!("read {}", file.display()))?,
    };
    let mut value: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not JSON", file.display()))?;
    // A file of the reference data holds the case under "case", beside its results.
    if let Some(case) = value.get_mut("case") {
        value = case.take();
    }
    let case: Case = serde_json::from_value(value).with_context(|| format!("{}: not a case", file.display()))?;
    case.check().map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    println!("{}", serde_json::to_string_pretty(&report(&case))?);
    Ok(())
}

pub fn ope(logged: &Path, policy: &Path, rewards: Option<&Path>, alpha: f64) -> anyhow::Result<()> {
    anyhow::ensure!(alpha > 0.0 && alpha < 1.0, "--alpha: between 0 and 1");
    let read = |path: &Path| files::read_text(path).with_context(|| format!("read {}", path.display()));
    let refused = |e: corvus_measurement::stats::Invalid| anyhow::anyhow!("{e}");
    let rounds = files::logged(&read(logged)?).map_err(refused)?;
    ope::check(&rounds).map_err(refused)?;
    let policy = files::policy(&read(policy)?).map_err(refused)?;
    let model = match rewards {
        Some(path) => Some(files::rewards(&read(path)?, rounds.len()).map_err(refused)?),
        None => None,
    };
    let model = model.as_ref().map(|m| m as &dyn ope::RewardModel);
    let estimates = ope::estimate(&rounds, &policy, model, alpha);
    println!("{}", serde_json::to_string_pretty(&estimates)?);
    Ok(())
}

/// Writes a campaign's logged decisions (`ExportDecisionLog`) to `out`: `logged.csv`
/// (round, action, position, reward, pscore), and `actions.csv` and `positions.csv`,
/// which name each action and segment by its index.
pub async fn export(endpoint: &str, key: &str, experiment: &str, metric: &str, out: &Path) -> anyhow::Result<()> {
    use corvus_proto::measurement::v1::ExportDecisionLogRequest;
    use corvus_proto::measurement::v1::measurement_service_client::MeasurementServiceClient;
    use std::fmt::Write as _;

    let mut client = MeasurementServiceClient::new(corvus::client::connect(endpoint, key).await?);
    let mut stream = client
        .export_decision_log(ExportDecisionLogRequest {
            experiment: experiment.to_owned(),
            metric: metric.to_owned(),
        })
        .await
        .map_err(|s| anyhow::anyhow!("ExportDecisionLog: {}", s.message()))?
        .into_inner();
    let (mut logged, mut actions, mut positions) = (
        String::from("round,action,position,reward,pscore\n"),
        String::from("action,name\n"),
        String::from("position,segment\n"),
    );
    let (mut rounds, mut skipped) = (0, 0);
    while let Some(message) = stream
        .message()
        .await
        .map_err(|s| anyhow::anyhow!("ExportDecisionLog: {}", s.message()))?
    {
        for (i, name) in message.actions.iter().enumerate() {
            writeln!(actions, "{i},{}", csv_field(name))?;
        }
        for (i, name) in message.segments.iter().enumerate() {
            writeln!(positions, "{i},{}", csv_field(name))?;
        }
        skipped += message.skipped;
        for r in &message.rounds {
            writeln!(
                logged,
                "{},{},{},{},{}",
                r.round, r.action, r.position, r.reward, r.pscore
            )?;
        }
        rounds += message.rounds.len();
    }
    std::fs::create_dir_all(out).with_context(|| format!("create {}", out.display()))?;
    for (name, text) in [
        ("logged.csv", logged),
        ("actions.csv", actions),
        ("positions.csv", positions),
    ] {
        let path = out.join(name);
        std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
    }
    println!(
        "exported {rounds} rounds of {experiment} ({skipped} exposures left out: held out, or without a propensity) to {}",
        out.display()
    );
    Ok(())
}

/// A name as a CSV field: quoted when it holds a comma, a quote or a line break.
fn csv_field(name: &str) -> String {
    match name.contains([',', '"', '\n', '\r']) {
        true => format!("\"{}\"", name.replace('"', "\"\"")),
        false => name.to_owned(),
    }
}
