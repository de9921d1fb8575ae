//! k-means: greedy k-means++ seeding (as scikit-learn seeds: 2 + ln k candidates a
//! step, the one that lowers the potential most kept), then Lloyd's iterations with
//! Hamerly's bounds (a point whose distance to its centre is below half the distance
//! from that centre to the next, and below its bound on every other centre, is not
//! measured again), over the cores, restarted from several seeds; the lowest inertia
//! wins. Convergence as scikit-learn's: the centres' total squared shift below
//! `1e-4` × the mean variance of the features.

use serde::{Deserialize, Serialize};

/// Points, row-major: `n` rows of `d` features.
#[derive(Debug, Clone, PartialEq)]
pub struct Points<'a> {
    pub data: &'a [f64],
    pub d: usize,
}

impl Points<'_> {
    pub fn len(&self) -> usize {
        self.data.len() / self.d
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    fn row(&self, i: usize) -> &[f64] {
        &self.data[i * self.d..(i + 1) * self.d]
    }
}

/// A clustering: `k` centres (row-major), each point's centre, the inertia (the sum of
/// squared distances of the points to their centres).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Clustering {
    pub centres: Vec<f64>,
    pub k: usize,
    pub d: usize,
    pub labels: Vec<u32>,
    pub inertia: f64,
    pub iterations: u32,
}

const MAX_ITERATIONS: u32 = 300;
/// Points the seeds are drawn among, at most.
pub const SEEDING_SAMPLE: usize = 100_000;
const TOLERANCE: f64 = 1e-4;

/// The squared distance, summed in four independent lanes so that the compiler can
/// keep them in vector registers (one running sum would chain every addition).
#[inline]
fn squared(a: &[f64], b: &[f64]) -> f64 {
    let mut lanes = [0.0; 4];
    let (ca, cb) = (a.chunks_exact(4), b.chunks_exact(4));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..4 {
            let diff = x[l] - y[l];
            lanes[l] += diff * diff;
        }
    }
    let mut tail = 0.0;
    for (x, y) in ra.iter().zip(rb) {
        tail += (x - y) * (x - y);
    }
    (lanes[0] + lanes[2]) + (lanes[1] + lanes[3]) + tail
}

/// A small, seeded generator (SplitMix64): the same seed, the same clustering.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The threads to spread work over.
fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()).min(16)
}

/// Runs `work` over `n` items split into one contiguous chunk per thread, with each
/// chunk's slice of `out` (`per` values an item), and returns the chunks' results.
fn over_chunks<T: Send, R: Send>(
    n: usize,
    out: &mut [T],
    per: usize,
    work: impl Fn(std::ops::Range<usize>, &mut [T]) -> R + Sync,
) -> Vec<R> {
    let chunks = threads().min(n.max(1));
    let size = n.div_ceil(chunks);
    std::thread::scope(|scope| {
        let mut handles = Vec::new();
        let mut rest = out;
        for c in 0..chunks {
            let range = (c * size).min(n)..((c + 1) * size).min(n);
            let (mine, others) = rest.split_at_mut((range.end - range.start) * per);
            rest = others;
            let work = &work;
            handles.push(scope.spawn(move || work(range, mine)));
        }
        handles
            .into_iter()
            .map(|h| h.join().expect("a k-means thread"))
            .collect()
    })
}

/// Greedy k-means++ seeding of every restart at once. A step measures every restart's
/// candidates in one pass over the points (points in the outer loop: on a large data set
/// reading the points is what a pass costs, so the restarts share it), keeping each
/// point's distance under each candidate (as f32: it only weighs the next draw) until
/// the best candidate of each restart is known.
fn seed_all(points: &Points<'_>, k: usize, rngs: &mut [Rng]) -> Vec<Vec<f64>> {
    let (n, d, runs) = (points.len(), points.d, rngs.len());
    let trials = 2 + (k as f64).ln() as usize;
    let mut centres: Vec<Vec<f64>> = rngs
        .iter_mut()
        .map(|rng| {
            let first = (rng.next_u64() % n as u64) as usize;
            let mut c = Vec::with_capacity(k * d);
            c.extend_from_slice(points.row(first));
            c
        })
        .collect();
    // closest[i * runs + r]: point i's squared distance to restart r's nearest centre.
    let mut closest = vec![0.0f64; n * runs];
    let firsts: Vec<&[f64]> = centres.iter().map(|c| &c[..d]).collect();
    let partial = over_chunks(n, &mut closest, runs, |range, out| {
        let mut sums = vec![0.0; runs];
        for (i, row) in range.zip(out.chunks_exact_mut(runs)) {
            let x = points.row(i);
            for r in 0..runs {
                row[r] = squared(x, firsts[r]);
                sums[r] += row[r];
            }
        }
        sums
    });
    let mut potential: Vec<f64> = (0..runs).map(|r| partial.iter().map(|p| p[r]).sum()).collect();
    let mut cumulative = vec![0.0; n];
    let mut measured = vec![0.0f32; n * runs * trials];
    for _ in 1..k {
        let mut candidates: Vec<Vec<f64>> = Vec::with_capacity(runs * trials);
        for r in 0..runs {
            let mut acc = 0.0;
            for (i, c) in cumulative.iter_mut().enumerate() {
                acc += closest[i * runs + r];
                *c = acc;
            }
            for _ in 0..trials {
                let target = rngs[r].uniform() * potential[r];
                let chosen = cumulative.partition_point(|c| *c <= target).min(n - 1);
                candidates.push(points.row(chosen).to_vec());
            }
        }
        // Each candidate's potential, were it added, and each point's distance under it.
        let closest_now = &closest;
        let sums: Vec<Vec<f64>> = over_chunks(n, &mut measured, runs * trials, |range, out| {
            let mut sums = vec![0.0; runs * trials];
            for (i, row) in range.zip(out.chunks_exact_mut(runs * trials)) {
                let x = points.row(i);
                for r in 0..runs {
                    let before = closest_now[i * runs + r];
                    for t in 0..trials {
                        let m = before.min(squared(x, &candidates[r * trials + t]));
                        row[r * trials + t] = m as f32;
                        sums[r * trials + t] += m;
                    }
                }
            }
            sums
        });
        for r in 0..runs {
            let (best, best_potential) = (0..trials)
                .map(|t| (t, sums.iter().map(|s| s[r * trials + t]).sum::<f64>()))
                .fold((0, f64::INFINITY), |b, c| if c.1 < b.1 { c } else { b });
            for (i, row) in measured.chunks_exact(runs * trials).enumerate() {
                closest[i * runs + r] = f64::from(row[r * trials + best]);
            }
            potential[r] = best_potential;
            centres[r].extend_from_slice(&candidates[r * trials + best]);
        }
    }
    centres
}

/// The mean variance of the features, which scales the convergence tolerance: the
/// features' sums and sums of squares, in one pass over the rows.
fn mean_variance(points: &Points<'_>) -> f64 {
    let (n, d) = (points.len(), points.d);
    let mut none: [f64; 0] = [];
    let parts = over_chunks(n, &mut none, 0, |range, _| {
        let (mut sums, mut squares) = (vec![0.0; d], vec![0.0; d]);
        for i in range {
            for (j, v) in points.row(i).iter().enumerate() {
                sums[j] += v;
                squares[j] += v * v;
            }
        }
        (sums, squares)
    });
    let n = n as f64;
    (0..d)
        .map(|j| {
            let sum: f64 = parts.iter().map(|p| p.0[j]).sum();
            let square: f64 = parts.iter().map(|p| p.1[j]).sum();
            (square / n - (sum / n).powi(2)).max(0.0)
        })
        .sum::<f64>()
        / d as f64
}

/// Per point: its centre, the upper bound on the distance to it, the lower bound on the
/// distance to any other.
#[derive(Debug, Clone, Copy, Default)]
struct Bound {
    label: u32,
    upper: f64,
    lower: f64,
}

/// x · y, summed in four lanes as `squared` is.
#[inline]
fn dot(a: &[f64], b: &[f64]) -> f64 {
    let mut lanes = [0.0; 4];
    let (ca, cb) = (a.chunks_exact(4), b.chunks_exact(4));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..4 {
            lanes[l] += x[l] * y[l];
        }
    }
    let tail: f64 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    (lanes[0] + lanes[2]) + (lanes[1] + lanes[3]) + tail
}

/// The most centres k-means takes: their dot products with a point are accumulated
/// side by side in a fixed array (`Centres::nearest`).
pub const WIDE: usize = 32;

/// The centres feature by feature (`columns[j * k + c]`) with their squared norms, for
/// `nearest`.
struct Centres {
    columns: Vec<f64>,
    norms: Vec<f64>,
    k: usize,
    d: usize,
}

impl Centres {
    fn new(rows: &[f64], k: usize, d: usize) -> Self {
        let norms = (0..k)
            .map(|c| dot(&rows[c * d..(c + 1) * d], &rows[c * d..(c + 1) * d]))
            .collect();
        let mut columns = vec![0.0; k * d];
        for c in 0..k {
            for j in 0..d {
                columns[j * k + c] = rows[c * d + j];
            }
        }
        Self { columns, norms, k, d }
    }

    /// The nearest centre to `x`, its squared distance and the second nearest's, as
    /// |x|² + |c|² − 2 x·c, the dot products of every centre accumulated side by side
    /// (feature by feature, each feature's value multiplied into all the centres' at
    /// once: independent sums the compiler keeps in vector registers).
    fn nearest(&self, x: &[f64]) -> (usize, f64, f64) {
        let (k, d) = (self.k, self.d);
        let xx = dot(x, x);
        let mut products = [0.0; WIDE];
        for (j, xj) in x.iter().enumerate().take(d) {
            let column = &self.columns[j * k..(j + 1) * k];
            for (p, v) in products[..k].iter_mut().zip(column) {
                *p += xj * v;
            }
        }
        let (mut best, mut first, mut second) = (0, f64::INFINITY, f64::INFINITY);
        for (c, (norm, product)) in self.norms.iter().zip(&products[..k]).enumerate() {
            let dist = (xx + norm - 2.0 * product).max(0.0);
            if dist < first {
                (second, first, best) = (first, dist, c);
            } else if dist < second {
                second = dist;
            }
        }
        (best, first, second)
    }
}

/// What a pass moved: per centre, the sum of the points that joined less those that
/// left, and the change in their number.
struct Moves {
    sums: Vec<f64>,
    counts: Vec<i64>,
}

/// One run of Lloyd's iterations with Hamerly's bounds from `centres`. The centres'
/// sums are kept up to date as points change centre, so a point whose bounds show it
/// stays is not read at all.
fn lloyd(points: &Points<'_>, k: usize, mut centres: Vec<f64>, tolerance: f64) -> Clustering {
    let (n, d) = (points.len(), points.d);
    let mut bounds = vec![Bound::default(); n];
    // The first assignment measures everything.
    let table = Centres::new(&centres, k, d);
    let first = over_chunks(n, &mut bounds, 1, |range, out| {
        let mut moves = Moves {
            sums: vec![0.0; k * d],
            counts: vec![0; k],
        };
        for (i, b) in range.zip(out.iter_mut()) {
            let x = points.row(i);
            let (best, first, second) = table.nearest(x);
            *b = Bound {
                label: best as u32,
                upper: first.sqrt(),
                lower: second.sqrt(),
            };
            moves.counts[best] += 1;
            moves.sums[best * d..(best + 1) * d]
                .iter_mut()
                .zip(x)
                .for_each(|(s, v)| *s += v);
        }
        moves
    });
    let mut sums = vec![0.0; k * d];
    let mut counts = vec![0i64; k];
    let merge = |sums: &mut Vec<f64>, counts: &mut Vec<i64>, moves: &[Moves]| {
        for m in moves {
            sums.iter_mut().zip(&m.sums).for_each(|(a, b)| *a += b);
            counts.iter_mut().zip(&m.counts).for_each(|(a, b)| *a += b);
        }
    };
    merge(&mut sums, &mut counts, &first);
    let mut iterations = 0;
    loop {
        iterations += 1;
        // New centres: the means of their points (an empty one stays where it is).
        let mut moved = vec![0.0; k];
        let mut shift = 0.0;
        for c in 0..k {
            if counts[c] <= 0 {
                continue;
            }
            let old = centres[c * d..(c + 1) * d].to_vec();
            for j in 0..d {
                centres[c * d + j] = sums[c * d + j] / counts[c] as f64;
            }
            let s = squared(&old, &centres[c * d..(c + 1) * d]);
            shift += s;
            moved[c] = s.sqrt();
        }
        // Converged or not, the points are assigned to these centres once more: the
        // bounds spare most of the work, and the labels then match the centres.
        let converged = shift <= tolerance || iterations >= MAX_ITERATIONS;
        // Half the distance from each centre to the nearest other.
        let mut half = vec![f64::INFINITY; k];
        for a in 0..k {
            for b in 0..k {
                if a != b {
                    let dist = squared(&centres[a * d..(a + 1) * d], &centres[b * d..(b + 1) * d]).sqrt() / 2.0;
                    half[a] = half[a].min(dist);
                }
            }
        }
        let most = moved.iter().cloned().fold(0.0, f64::max);
        let centres_now = &centres;
        let table = Centres::new(&centres, k, d);
        let moves = over_chunks(n, &mut bounds, 1, |range, out| {
            let mut moves = Moves {
                sums: vec![0.0; k * d],
                counts: vec![0; k],
            };
            for (i, b) in range.zip(out.iter_mut()) {
                let c = b.label as usize;
                b.upper += moved[c];
                b.lower -= most;
                let limit = b.lower.max(half[c]);
                if b.upper <= limit {
                    continue;
                }
                let x = points.row(i);
                b.upper = squared(x, &centres_now[c * d..(c + 1) * d]).sqrt();
                if b.upper <= limit {
                    continue;
                }
                let (best, first, second) = table.nearest(x);
                *b = Bound {
                    label: best as u32,
                    upper: first.sqrt(),
                    lower: second.sqrt(),
                };
                if best != c {
                    moves.counts[c] -= 1;
                    moves.counts[best] += 1;
                    for (j, v) in x.iter().enumerate() {
                        moves.sums[c * d + j] -= v;
                        moves.sums[best * d + j] += v;
                    }
                }
            }
            moves
        });
        merge(&mut sums, &mut counts, &moves);
        if converged {
            break;
        }
    }
    // The inertia, measured exactly: each point against its centre.
    let mut labels: Vec<u32> = bounds.iter().map(|b| b.label).collect();
    let inertias = over_chunks(n, &mut labels, 1, |range, out| {
        range
            .zip(out.iter())
            .map(|(i, l)| squared(points.row(i), &centres[*l as usize * d..(*l as usize + 1) * d]))
            .sum::<f64>()
    });
    Clustering {
        centres,
        k,
        d,
        labels,
        inertia: inertias.iter().sum(),
        iterations,
    }
}

/// k-means with `restarts` seeds from `seed`; the clustering of lowest inertia.
pub fn kmeans(points: &Points<'_>, k: usize, restarts: usize, seed_value: u64) -> Clustering {
    assert!(
        (1..=WIDE).contains(&k) && points.len() >= k,
        "k-means takes 1 to {WIDE} centres and at least k points"
    );
    let tolerance = TOLERANCE * mean_variance(points);
    let mut rngs: Vec<Rng> = (0..restarts.max(1) as u64)
        .map(|r| Rng::new(seed_value.wrapping_add(r.wrapping_mul(0x9E37_79B9))))
        .collect();
    let mut best: Option<Clustering> = None;
    // Seeds are drawn from a seeded sample of the points: k-means++ needs the spread of
    // the data, not every point of it, and Lloyd's iterations then run on all.
    let sample: Vec<f64>;
    let seeding = if points.len() > SEEDING_SAMPLE {
        let mut draw = Rng::new(seed_value ^ 0x5A17_5EED);
        sample = (0..SEEDING_SAMPLE)
            .flat_map(|_| points.row((draw.next_u64() % points.len() as u64) as usize).to_vec())
            .collect();
        Points {
            data: &sample,
            d: points.d,
        }
    } else {
        points.clone()
    };
    for centres in seed_all(&seeding, k, &mut rngs) {
        let run = lloyd(points, k, centres, tolerance);
        if best.as_ref().is_none_or(|b| run.inertia < b.inertia) {
            best = Some(run);
        }
    }
    best.expect("at least one run")
}

/// The mean silhouette of up to `sample` points (seeded), as scikit-learn's
/// `silhouette_score` computes it on them: for each, (b − a) / max(a, b), with a its
/// mean distance to the others of its cluster and b the least mean distance to another
/// cluster's.
pub fn silhouette(points: &Points<'_>, labels: &[u32], k: usize, sample: usize, seed_value: u64) -> f64 {
    let n = points.len();
    let mut rng = Rng::new(seed_value);
    let chosen: Vec<usize> = if n <= sample {
        (0..n).collect()
    } else {
        (0..sample).map(|_| (rng.next_u64() % n as u64) as usize).collect()
    };
    let mut total = 0.0;
    let mut counted = 0;
    for &i in &chosen {
        let mut sums = vec![0.0; k];
        let mut counts = vec![0usize; k];
        for &j in &chosen {
            if i != j {
                sums[labels[j] as usize] += squared(points.row(i), points.row(j)).sqrt();
                counts[labels[j] as usize] += 1;
            }
        }
        let own = labels[i] as usize;
        if counts[own] == 0 {
            counted += 1; // a singleton's silhouette is 0, and counts
            continue;
        }
        let a = sums[own] / counts[own] as f64;
        let b = (0..k)
            .filter(|c| *c != own && counts[*c] > 0)
            .map(|c| sums[c] / counts[c] as f64)
            .fold(f64::INFINITY, f64::min);
        if b.is_finite() {
            total += (b - a) / a.max(b);
        }
        counted += 1;
    }
    if counted == 0 { 0.0 } else { total / counted as f64 }
}

/// The pairing of old and new centres that moves them least in total (the Hungarian
/// method): `result[new] = old`, so that a refit keeps each segment's id.
pub fn match_centres(old: &[f64], new: &[f64], d: usize) -> Vec<usize> {
    let (m, k) = (old.len() / d, new.len() / d);
    // Rows: new centres; columns: old ones, padded to a square with zero cost.
    let size = m.max(k);
    let cost = |r: usize, c: usize| {
        if r < k && c < m {
            squared(&new[r * d..(r + 1) * d], &old[c * d..(c + 1) * d])
        } else {
            0.0
        }
    };
    // Potentials and the classic O(n³) shortest augmenting path form.
    let inf = f64::INFINITY;
    let (mut u, mut v) = (vec![0.0; size + 1], vec![0.0; size + 1]);
    let mut p = vec![0usize; size + 1]; // p[column] = row, 1-based; 0 = free
    let mut way = vec![0usize; size + 1];
    for row in 1..=size {
        p[0] = row;
        let mut column = 0;
        let mut minv = vec![inf; size + 1];
        let mut used = vec![false; size + 1];
        loop {
            used[column] = true;
            let r = p[column];
            let mut delta = inf;
            let mut next = 0;
            for j in 1..=size {
                if !used[j] {
                    let reduced = cost(r - 1, j - 1) - u[r] - v[j];
                    if reduced < minv[j] {
                        minv[j] = reduced;
                        way[j] = column;
                    }
                    if minv[j] < delta {
                        delta = minv[j];
                        next = j;
                    }
                }
            }
            for j in 0..=size {
                if used[j] {
                    u[p[j]] += delta;
                    v[j] -= delta;
                } else {
                    minv[j] -= delta;
                }
            }
            column = next;
            if p[column] == 0 {
                break;
            }
        }
        loop {
            let previous = way[column];
            p[column] = p[previous];
            column = previous;
            if column == 0 {
                break;
            }
        }
    }
    let mut result = vec![usize::MAX; k];
    for j in 1..=size {
        if p[j] >= 1 && p[j] <= k && j <= m {
            result[p[j] - 1] = j - 1;
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three blobs of 200 points in 2-d.
    fn blobs() -> Vec<f64> {
        let mut rng = Rng::new(1);
        let mut data = Vec::new();
        for (cx, cy) in [(0.0, 0.0), (10.0, 0.0), (0.0, 10.0)] {
            for _ in 0..200 {
                data.push(cx + rng.uniform() * 2.0 - 1.0);
                data.push(cy + rng.uniform() * 2.0 - 1.0);
            }
        }
        data
    }

    #[test]
    fn blobs_are_found_and_k_is_chosen_by_silhouette() {
        let data = blobs();
        let points = Points { data: &data, d: 2 };
        let c = kmeans(&points, 3, 3, 42);
        // Each blob one cluster.
        for blob in 0..3 {
            let labels = &c.labels[blob * 200..(blob + 1) * 200];
            assert!(labels.iter().all(|l| *l == labels[0]), "blob {blob}");
        }
        assert_eq!(c.labels.iter().collect::<std::collections::HashSet<_>>().len(), 3);
        let score = |k| silhouette(&points, &kmeans(&points, k, 2, 42).labels, k, 600, 7);
        let (s2, s3, s4) = (score(2), score(3), score(4));
        assert!(s3 > s2 && s3 > s4, "{s2} {s3} {s4}");
    }

    #[test]
    fn refitted_centres_are_matched_to_the_old_ones() {
        let old = [0.0, 0.0, 10.0, 0.0, 0.0, 10.0];
        let new = [0.1, 9.9, 0.2, 0.1, 9.8, 0.0];
        assert_eq!(match_centres(&old, &new, 2), vec![2, 0, 1]);
        // A new segment beyond the old ones gets no old id.
        let more = [0.0, 0.0, 50.0, 50.0, 10.0, 0.0];
        let matched = match_centres(&old[..4], &more, 2);
        assert_eq!(matched, vec![0, usize::MAX, 1]);
    }
}
