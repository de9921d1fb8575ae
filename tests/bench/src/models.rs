//! Scoring's model fits against the Python reference libraries on the same data, in the
//! same run, each the median of several fits, with the results compared: BG/NBD and
//! Gamma–Gamma on the CDNOW sample's summary (as of 1997-09-30, in weeks) against
//! `lifetimes` 0.11.3 (`tests/reference/clv_fit_timing.py`); association rules on the
//! Groceries baskets against mlxtend 0.25.0's `fpgrowth` + `association_rules`
//! (`tests/reference/groceries_mlxtend.py`); k-means on 1,000,000 points of 20 features
//! against scikit-learn's `KMeans`, the same k and restarts, the inertia compared
//! (`tests/reference/kmeans_sklearn.py`, which also writes the points).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;
use chrono::NaiveDate;
use corvus_scoring::domain::affinity;
use corvus_scoring::domain::clv::{BgNbd, Customer, GammaGamma};
use corvus_scoring::domain::features::summary;
use corvus_scoring::domain::kmeans::{self, Points};

use crate::scenarios::Results;

pub(crate) fn root() -> PathBuf {
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
pub(crate) fn median_seconds<T>(n: usize, mut f: impl FnMut() -> T) -> (f64, T) {
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

/// Runs a reference script with `args`; its JSON answer, or why there is none.
pub(crate) fn reference(script: &str, args: &[&str]) -> Result<serde_json::Value, String> {
    let out = std::process::Command::new("python3")
        .arg(root().join("tests/reference").join(script))
        .args(args)
        .output()
        .map_err(|e| format!("no python3 ({e})"))?;
    if !out.status.success() {
        let last = String::from_utf8_lossy(&out.stderr)
            .lines()
            .last()
            .unwrap_or_default()
            .to_owned();
        return Err(format!(
            "{last}; pip install -r tests/reference/requirements.txt (and see the script's own notes)"
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}

/// Association rules on Groceries at support 0.006 and confidence 0.25.
fn groceries(results: &mut Results) -> anyhow::Result<()> {
    let path = root().join("services/corvus/tests/data/groceries_baskets.csv");
    let text = std::fs::read_to_string(&path).context("read the Groceries baskets")?;
    let baskets: Vec<BTreeSet<String>> = text
        .lines()
        .map(|l| l.split(',').map(str::to_owned).collect())
        .collect();
    let (seconds, rules) = median_seconds(5, || affinity::rules(&baskets, 0.006, 0.25));
    let rules = rules?;
    let path = path.to_string_lossy().into_owned();
    let line = match reference("groceries_mlxtend.py", &[&path, "--time", "5"]) {
        Ok(r) => {
            let theirs = r["seconds"].as_f64().unwrap_or(f64::NAN);
            format!(
                "association rules on Groceries ({} baskets): {} rules in {:.2} ms against mlxtend 0.25.0's {} in \
                 {:.1} ms in this run: {:.0}× faster (target ≥ 10×)",
                baskets.len(),
                rules.len(),
                seconds * 1e3,
                r["rules"],
                theirs * 1e3,
                theirs / seconds
            )
        }
        Err(why) => format!(
            "association rules on Groceries: {} rules in {:.2} ms; no reference: {why}",
            rules.len(),
            seconds * 1e3
        ),
    };
    eprintln!("corvus-bench: {line}");
    results.notes.push(line);
    Ok(())
}

/// k-means on the reference's points: k 8, 3 restarts, the median of three fits.
fn kmeans_against_sklearn(results: &mut Results) -> anyhow::Result<()> {
    let file = std::env::temp_dir().join(format!("corvus-bench-kmeans-{}.f64", std::process::id()));
    let path = file.to_string_lossy().into_owned();
    let theirs = reference("kmeans_sklearn.py", &[&path, "8", "3"]);
    let line = match theirs {
        Ok(r) => {
            let bytes = std::fs::read(&file).context("read the k-means points")?;
            let _ = std::fs::remove_file(&file);
            let data: Vec<f64> = bytes
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")))
                .collect();
            let points = Points { data: &data, d: 20 };
            let mut times = Vec::new();
            let mut inertia = f64::INFINITY;
            let mut iterations = Vec::new();
            for seed in 0..3 {
                let started = Instant::now();
                let c = kmeans::kmeans(&points, 8, 3, seed);
                times.push(started.elapsed().as_secs_f64());
                inertia = inertia.min(c.inertia);
                iterations.push(c.iterations);
            }
            times.sort_by(f64::total_cmp);
            let ours = times[1];
            let their_seconds = r["seconds"].as_f64().unwrap_or(f64::NAN);
            let their_inertia = r["inertia"].as_f64().unwrap_or(f64::NAN);
            format!(
                "k-means on {} points × 20 (k 8, 3 restarts): {:.3} s against scikit-learn's {:.3} s in this run: \
                 {:.1}× faster (target ≥ 3×); inertia {:.1} against {:.1}: {:.6}× (target ≤ 1.005×); iterations {:?} \
                 against {}",
                points.len(),
                ours,
                their_seconds,
                their_seconds / ours,
                inertia,
                their_inertia,
                inertia / their_inertia,
                iterations,
                r["iterations"]
            )
        }
        Err(why) => format!("k-means: no reference: {why}"),
    };
    eprintln!("corvus-bench: {line}");
    results.notes.push(line);
    Ok(())
}

pub fn run(results: &mut Results) -> anyhow::Result<()> {
    groceries(results)?;
    kmeans_against_sklearn(results)?;
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
    let path = transactions().to_string_lossy().into_owned();
    let line = match reference("clv_fit_timing.py", &[&path, "5"]) {
        Ok(r) => {
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
        Err(why) => format!(
            "CLV fit on CDNOW: {:.2} ms; no reference: {why}",
            (bg_seconds + gg_seconds) * 1e3
        ),
    };
    eprintln!("corvus-bench: {line}");
    results.notes.push(line);
    Ok(())
}
