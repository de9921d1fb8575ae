//! Needs-based segments: k-means over each profile's standardised behavioural and
//! survey features, k chosen by the mean silhouette (of a seeded sample of up to
//! `SILHOUETTE_SAMPLE` profiles) among 2 to `MAX_K` unless given, each segment described
//! by the features whose mean in it is furthest from the workspace's (in standard
//! deviations) and named from the two furthest; a refit keeps the ids of the segments
//! it matches (the Hungarian pairing of old and new centres).

use serde::{Deserialize, Serialize};

use super::features::Features;
use super::kmeans::{self, Points};

pub const MAX_K: usize = 8;
pub const SILHOUETTE_SAMPLE: usize = 2000;
pub const DEFAULT_RESTARTS: usize = 4;
/// The least profiles segments are found among.
pub const MIN_PROFILES: usize = 20;
const SEED: u64 = 0x5E6_3E47;

/// The features segments are found over, by name.
pub const FEATURES: [&str; 14] = [
    "orders",
    "revenue",
    "order_value",
    "days_since_seen",
    "events",
    "email_click_rate",
    "sms_click_rate",
    "push_click_rate",
    "opens",
    "unsubscribed",
    "nps",
    "csat",
    "sentiment",
    "categories",
];

fn rate(f: &Features, channel: &str) -> f64 {
    f.channels.get(channel).map_or(0.0, |e| {
        let messages = e.sent.max(e.delivered).max(e.clicked);
        if messages == 0 {
            0.0
        } else {
            e.clicked as f64 / messages as f64
        }
    })
}

/// A profile's raw feature vector as of `as_of`: counts and money on a log scale, the
/// survey answers `NaN` where the person gave none (filled with the workspace's mean
/// when standardised, so that a missing answer puts a person nowhere in particular).
pub fn vector(f: &Features, as_of: chrono::DateTime<chrono::Utc>) -> Vec<f64> {
    let ln = |v: f64| v.max(0.0).ln_1p();
    let opens: u64 = f.channels.values().map(|e| e.opened).sum();
    let unsubscribed = f.channels.values().any(|e| e.unsubscribed > 0);
    vec![
        ln(f.orders as f64),
        ln(f.revenue),
        ln(if f.orders > 0 { f.revenue / f.orders as f64 } else { 0.0 }),
        f.last_seen.map_or(0.0, |t| (as_of - t).num_seconds() as f64 / 86_400.0),
        ln(f.events as f64),
        rate(f, "email"),
        rate(f, "sms"),
        rate(f, "push"),
        ln(opens as f64),
        f64::from(u8::from(unsubscribed)),
        f.nps.mean().unwrap_or(f64::NAN),
        f.csat.mean().unwrap_or(f64::NAN),
        f.sentiment.mean().unwrap_or(f64::NAN),
        ln(f.categories.len() as f64),
    ]
}

/// One segment: its id (kept across refits), name, size and centre (raw units).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Segment {
    pub id: u32,
    pub name: String,
    pub size: u64,
    pub centre: Vec<f64>,
    /// Per feature, the segment's mean less the workspace's, in standard deviations.
    pub distinction: Vec<f64>,
}

/// The segments of a workspace and how a profile's vector is standardised.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Segmentation {
    pub segments: Vec<Segment>,
    pub means: Vec<f64>,
    pub deviations: Vec<f64>,
    pub profiles: u64,
    pub inertia: f64,
    /// The mean silhouette of the chosen k, and of each k tried.
    pub silhouette: f64,
    pub tried: Vec<(usize, f64)>,
}

impl Segmentation {
    fn standardise(&self, raw: &[f64]) -> Vec<f64> {
        raw.iter()
            .zip(self.means.iter().zip(&self.deviations))
            .map(|(v, (m, s))| {
                let v = if v.is_nan() { *m } else { *v };
                if *s > 0.0 { (v - m) / s } else { 0.0 }
            })
            .collect()
    }

    /// The segment of a raw vector, and its distance to the centre (standardised).
    pub fn assign(&self, raw: &[f64]) -> Option<(&Segment, f64)> {
        let z = self.standardise(raw);
        self.segments
            .iter()
            .map(|s| {
                let centre = self.standardise(&s.centre);
                let d: f64 = z.iter().zip(&centre).map(|(a, b)| (a - b) * (a - b)).sum();
                (s, d.sqrt())
            })
            .min_by(|a, b| a.1.total_cmp(&b.1))
    }
}

/// Why segments could not be found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("segments need at least {needed} profiles; the data holds {held}")]
pub struct TooFew {
    pub needed: usize,
    pub held: usize,
}

/// The name from the two features that set the segment apart most.
fn name(distinction: &[f64]) -> String {
    let mut order: Vec<usize> = (0..distinction.len()).collect();
    order.sort_by(|a, b| distinction[*b].abs().total_cmp(&distinction[*a].abs()));
    let part = |j: usize| format!("{}_{}", if distinction[j] >= 0.0 { "high" } else { "low" }, FEATURES[j]);
    match order.as_slice() {
        [] => "everyone".to_owned(),
        [a] => part(*a),
        [a, b, ..] => format!("{}_{}", part(*a), part(*b)),
    }
}

/// Segments among `vectors` (raw, as `vector` makes them): `k` of them, or the k of
/// best silhouette when `None`; ids matched to `previous`' where a centre pairs with one.
pub fn segment(
    vectors: &[Vec<f64>],
    k: Option<usize>,
    restarts: usize,
    previous: Option<&Segmentation>,
) -> Result<Segmentation, TooFew> {
    let n = vectors.len();
    if n < MIN_PROFILES.max(k.unwrap_or(0) * 2) {
        return Err(TooFew {
            needed: MIN_PROFILES.max(k.unwrap_or(0) * 2),
            held: n,
        });
    }
    let d = FEATURES.len();
    // Means over the values present; answers missing are filled with them.
    let mut means = vec![0.0; d];
    let mut deviations = vec![0.0; d];
    for j in 0..d {
        let present: Vec<f64> = vectors.iter().map(|v| v[j]).filter(|v| !v.is_nan()).collect();
        if present.is_empty() {
            continue;
        }
        let mean = present.iter().sum::<f64>() / present.len() as f64;
        let filled = |v: f64| if v.is_nan() { mean } else { v };
        let variance = vectors.iter().map(|v| (filled(v[j]) - mean).powi(2)).sum::<f64>() / n as f64;
        means[j] = mean;
        // A feature everyone shares varies by rounding alone: it sets no one apart.
        let sd = variance.sqrt();
        deviations[j] = if sd > 1e-9 * mean.abs().max(1.0) { sd } else { 0.0 };
    }
    let mut shell = Segmentation {
        segments: Vec::new(),
        means,
        deviations,
        profiles: n as u64,
        inertia: 0.0,
        silhouette: 0.0,
        tried: Vec::new(),
    };
    let data: Vec<f64> = vectors.iter().flat_map(|v| shell.standardise(v)).collect();
    let points = Points { data: &data, d };
    let candidates: Vec<usize> = match k {
        Some(k) => vec![k],
        None => (2..=MAX_K.min(n - 1)).collect(),
    };
    let mut best: Option<(kmeans::Clustering, f64)> = None;
    for k in candidates {
        let clustering = kmeans::kmeans(&points, k, restarts, SEED);
        let score = kmeans::silhouette(&points, &clustering.labels, k, SILHOUETTE_SAMPLE, SEED);
        shell.tried.push((k, score));
        if best.as_ref().is_none_or(|(_, s)| score > *s) {
            best = Some((clustering, score));
        }
    }
    let (clustering, score) = best.expect("a k was tried");
    let k = clustering.k;
    // Back to raw units, for the description and the next refit.
    let raw_centre = |c: usize| -> Vec<f64> {
        (0..d)
            .map(|j| clustering.centres[c * d + j] * shell.deviations[j] + shell.means[j])
            .collect()
    };
    let ids: Vec<u32> = match previous {
        Some(old) if !old.segments.is_empty() => {
            let old_centres: Vec<f64> = old.segments.iter().flat_map(|s| shell.standardise(&s.centre)).collect();
            let pairs = kmeans::match_centres(&old_centres, &clustering.centres, d);
            let mut next = old.segments.iter().map(|s| s.id).max().unwrap_or(0) + 1;
            pairs
                .iter()
                .map(|p| match old.segments.get(*p) {
                    Some(s) => s.id,
                    None => {
                        next += 1;
                        next - 1
                    }
                })
                .collect()
        }
        _ => (1..=k as u32).collect(),
    };
    let mut sizes = vec![0u64; k];
    for l in &clustering.labels {
        sizes[*l as usize] += 1;
    }
    let mut segments: Vec<Segment> = (0..k)
        .map(|c| {
            let distinction: Vec<f64> = (0..d).map(|j| clustering.centres[c * d + j]).collect();
            Segment {
                id: ids[c],
                name: name(&distinction),
                size: sizes[c],
                centre: raw_centre(c),
                distinction,
            }
        })
        .collect();
    segments.sort_by_key(|s| s.id);
    shell.segments = segments;
    shell.inertia = clustering.inertia;
    shell.silhouette = score;
    Ok(shell)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two kinds of people: happy big spenders and unhappy non-buyers who stopped
    /// coming.
    fn people() -> Vec<Vec<f64>> {
        let mut rng = kmeans::Rng::new(3);
        (0..60)
            .map(|i| {
                let jitter = |rng: &mut kmeans::Rng| rng.uniform() * 0.2;
                let mut v = vec![0.0; FEATURES.len()];
                if i % 2 == 0 {
                    v[0] = 3.0 + jitter(&mut rng);
                    v[1] = 7.0 + jitter(&mut rng);
                    v[10] = 9.0 + jitter(&mut rng);
                } else {
                    v[10] = 2.0 + jitter(&mut rng);
                    v[3] = 100.0 + jitter(&mut rng);
                }
                // Nobody answered CSAT; one person nothing at all.
                v[11] = f64::NAN;
                if i == 59 {
                    v[10] = f64::NAN;
                }
                v
            })
            .collect()
    }

    #[test]
    fn two_kinds_of_people_make_two_named_segments_that_keep_their_ids() {
        let vectors = people();
        let s = segment(&vectors, None, 2, None).unwrap();
        assert_eq!(s.segments.len(), 2, "k by silhouette: {:?}", s.tried);
        assert_eq!(s.segments.iter().map(|x| x.size).sum::<u64>(), 60);
        let spenders = s.assign(&vectors[0]).unwrap().0;
        assert!(
            spenders.name.contains("high_orders") || spenders.name.contains("high_revenue"),
            "{}",
            spenders.name
        );
        let unhappy = s.assign(&vectors[1]).unwrap().0;
        assert_ne!(spenders.id, unhappy.id);
        assert!(
            unhappy.name.contains("low_nps") || unhappy.name.contains("high_days_since_seen"),
            "{}",
            unhappy.name
        );
        assert_eq!(
            s.assign(&vectors[59]).unwrap().0.id,
            unhappy.id,
            "a missing answer is no answer"
        );
        // A refit on the same people keeps each segment's id.
        let again = segment(&vectors, Some(2), 2, Some(&s)).unwrap();
        assert_eq!(again.assign(&vectors[0]).unwrap().0.id, spenders.id);
        assert_eq!(again.assign(&vectors[1]).unwrap().0.id, unhappy.id);
        assert_eq!(
            segment(&vectors[..5], None, 1, None).unwrap_err().to_string(),
            "segments need at least 20 profiles; the data holds 5"
        );
    }
}
