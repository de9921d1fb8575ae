//! Links FEBRL4 file a against file b with unsupervised EM and reports quality against
//! the true pairs and time per phase.
//!
//! `cargo run --release -p corvus-identity --example febrl4`

#[path = "../tests/identity/febrl4_data.rs"]
mod febrl4_data;

use std::time::{Duration, Instant};

use corvus_identity::domain::matching::{Linker, cluster};

fn ms(d: Duration) -> String {
    format!("{:8.1} ms", d.as_secs_f64() * 1e3)
}

fn main() {
    let started = Instant::now();
    let data = febrl4_data::load();
    let linker = Linker::new(febrl4_data::settings()).expect("valid settings");
    let loading = started.elapsed();

    let t = Instant::now();
    let a = linker.prepare(&data.a).expect("records match the schema");
    let b = linker.prepare(&data.b).expect("records match the schema");
    let preparing = t.elapsed();

    let t = Instant::now();
    let pairs = linker.candidates(&a, Some(&b));
    let blocking = t.elapsed();

    let t = Instant::now();
    let vectors = linker.compare(&a, Some(&b), &pairs);
    let comparing = t.elapsed();

    let t = Instant::now();
    let (model, fit) = linker.train(&a, Some(&b), &vectors);
    let training = t.elapsed();

    let t = Instant::now();
    let scored = linker.score(&model, &a, Some(&b), &pairs, &vectors);
    let scoring = t.elapsed();

    let t = Instant::now();
    let threshold = linker.settings().thresholds.match_probability;
    // Assign over all scored pairs so the table below can cut at any threshold. Greedy
    // best-first assignment takes the same pairs above 0.5 as it would with a 0.5 cut,
    // since every pair below comes later in the order.
    let links = cluster::one_to_one(&scored, 0.0);
    let clustering = t.elapsed();

    let total = preparing + blocking + comparing + training + scoring + clustering;
    let lost = febrl4_data::lost_by_blocking(&data, &pairs);
    let q = febrl4_data::evaluate(&data, &links, threshold);

    println!(
        "febrl4: {} records in a, {} in b, {} true links",
        data.a.len(),
        data.b.len(),
        data.truth.len()
    );
    println!(
        "candidate pairs {} (of {}), true links lost by blocking {lost}",
        pairs.len(),
        data.a.len() * data.b.len()
    );
    println!(
        "em: {} iterations (last change {:.1e}), lambda {:.5}",
        fit.iterations, fit.change, model.lambda
    );
    println!();
    println!("at match probability >= {threshold} (one-to-one):");
    println!(
        "  precision {:.4}  recall {:.4}  f1 {:.4}  (tp {}, fp {}, fn {})",
        q.precision, q.recall, q.f1, q.true_positives, q.false_positives, q.false_negatives
    );
    println!();
    println!("time (csv loading excluded: {})", ms(loading).trim());
    println!("  preparing   {}", ms(preparing));
    println!("  blocking    {}", ms(blocking));
    println!("  comparison  {}", ms(comparing));
    println!(
        "  em          {}  (includes {} random pairs for u)",
        ms(training),
        linker.settings().training.random_pairs
    );
    println!("  scoring     {}", ms(scoring));
    println!("  clustering  {}", ms(clustering));
    println!("  total       {}", ms(total));
    println!();
    println!("threshold  precision  recall     f1      tp    fp    fn");
    for threshold in [0.1, 0.3, 0.5, 0.7, 0.9, 0.99] {
        let q = febrl4_data::evaluate(&data, &links, threshold);
        println!(
            "{threshold:>9}  {:.4}     {:.4}     {:.4}  {:>5} {:>5} {:>5}",
            q.precision, q.recall, q.f1, q.true_positives, q.false_positives, q.false_negatives
        );
    }
}
