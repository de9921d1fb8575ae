//! `corvus stats analyze CASE.json`: an experiment's results from its per-arm
//! aggregates; `corvus stats ope`: off-policy estimates from logged decisions. Both
//! computed in this process and printed as JSON.

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
