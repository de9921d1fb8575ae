//! `corvus stats analyze CASE.json`: an experiment's results from its per-arm
//! aggregates, computed in this process and printed as JSON.

use std::io::Read;
use std::path::Path;

use anyhow::Context;
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
