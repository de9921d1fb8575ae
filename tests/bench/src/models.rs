//! Scoring's model fits against the Python reference libraries on the same data, in the
//! same run: BG/NBD and Gamma–Gamma on the CDNOW sample's summary (as of 1997-09-30, in
//! weeks) against `lifetimes` 0.11.3 (`tests/reference/clv_fit_timing.py`), each the
//! median of several fits, with the parameters compared.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;
use chrono::NaiveDate;
use corvus_scoring::domain::clv::{BgNbd, Customer, GammaGamma};
use corvus_scoring::domain::features::summary;

use crate::scenarios::Results;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn transactions() -> PathBuf {
    root().join("services/corvus/tests/data/cdnow_sample_transactions.txt")
}

/// The CDNOW customers as scoring summarises them: purchase days with their spend.
fn cdnow() -> anyhow::Result<Vec<Customer>> {
    let text = std::fs::read_to_string(transactions()).context("read the CDNOW transactions")?;
    let mut days: BTreeMap<&str, BTreeMap<NaiveDate, f64>> = BTreeMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let day = NaiveDate::parse_from_str(f[2], "%Y%m%d")?;
        *days.entry(f[0]).or_default().entry(day).or_default() += f[4].parse::<f64>()?;
    }
    let end = NaiveDate::from_ymd_opt(1997, 9, 30).expect("a date");
    Ok(days.values().filter_map(|d| summary(d, end, 7.0)).collect())
}

/// The median seconds of `f` over at least `n` runs and at least a second.
fn median_seconds<T>(n: usize, mut f: impl FnMut() -> T) -> (f64, T) {
    let mut times = Vec::new();
    let started = Instant::now();
    let mut last = None;
    while times.len() < n || started.elapsed().as_secs_f64() < 1.0 {
        let t = Instant::now();
        last = Some(f());
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    (times[times.len() / 2], last.expect("ran at least once"))
}

pub fn run(results: &mut Results) -> anyhow::Result<()> {
    let customers = cdnow()?;
    let (bg_seconds, bg) = median_seconds(5, || BgNbd::fit(&customers));
    let (gg_seconds, gg) = median_seconds(5, || GammaGamma::fit(&customers));
    let (bg, gg) = (bg?.model, gg?.model);
    let ours = [
        ("r", bg.r),
        ("alpha", bg.alpha),
        ("a", bg.a),
        ("b", bg.b),
        ("p", gg.p),
        ("q", gg.q),
        ("v", gg.v),
    ];
    let reference = std::process::Command::new("python3")
        .arg(root().join("tests/reference/clv_fit_timing.py"))
        .arg(transactions())
        .arg("5")
        .output();
    let line = match reference {
        Ok(out) if out.status.success() => {
            let r: serde_json::Value = serde_json::from_slice(&out.stdout)?;
            let theirs = r["bg_nbd_seconds"].as_f64().unwrap_or(f64::NAN)
                + r["gamma_gamma_seconds"].as_f64().unwrap_or(f64::NAN);
            let largest = ours
                .iter()
                .map(|(k, v)| (v - r["parameters"][k].as_f64().unwrap_or(f64::NAN)).abs() / v.abs().max(1.0))
                .fold(0.0, f64::max);
            format!(
                "CLV fit on CDNOW ({} customers): BG/NBD {:.2} ms + Gamma–Gamma {:.2} ms = {:.2} ms against \
                 lifetimes 0.11.3's {:.1} ms in this run: {:.0}× faster (target ≥ 10×); parameters within {:.1e} \
                 (relative) of lifetimes'",
                customers.len(),
                bg_seconds * 1e3,
                gg_seconds * 1e3,
                (bg_seconds + gg_seconds) * 1e3,
                theirs * 1e3,
                theirs / (bg_seconds + gg_seconds),
                largest
            )
        }
        Ok(out) => format!(
            "CLV fit on CDNOW: {:.2} ms; the lifetimes reference failed ({}): pip install -r \
             tests/reference/requirements.txt",
            (bg_seconds + gg_seconds) * 1e3,
            String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or_default()
        ),
        Err(err) => format!(
            "CLV fit on CDNOW: {:.2} ms; no python3 for the reference ({err})",
            (bg_seconds + gg_seconds) * 1e3
        ),
    };
    eprintln!("corvus-bench: {line}");
    results.notes.push(line);
    Ok(())
}
