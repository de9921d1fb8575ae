//! k-means on a file of row-major little-endian f64 (as `tests/reference/kmeans_sklearn.py`
//! writes it), for profiling: `cargo run --release -p corvus-scoring --example kmeans_file
//! -- FILE D K RESTARTS`.

use corvus_scoring::domain::kmeans::{Points, kmeans};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let bytes = std::fs::read(&args[1]).expect("read the points");
    let data: Vec<f64> = bytes
        .chunks_exact(8)
        .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")))
        .collect();
    let (d, k, restarts) = (
        args[2].parse().unwrap(),
        args[3].parse().unwrap(),
        args[4].parse().unwrap(),
    );
    let started = std::time::Instant::now();
    let c = kmeans(&Points { data: &data, d }, k, restarts, 0);
    println!(
        "inertia {} iterations {} in {:?}",
        c.inertia,
        c.iterations,
        started.elapsed()
    );
}
