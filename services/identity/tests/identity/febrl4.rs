//! FEBRL4: 5,000 records linked against 5,000 noisy copies with unsupervised EM. The
//! labels are used only to score the result, never to fit. Speed is measured by
//! `cargo run --release -p corvus-identity --example febrl4`, not here.

use corvus_identity::domain::matching::{Linker, cluster};

use crate::febrl4_data;

#[test]
fn links_febrl4_without_labels() {
    let data = febrl4_data::load();
    let linker = Linker::new(febrl4_data::settings()).unwrap();

    let links = linker.link(&data.a, &data.b).unwrap();

    let q = febrl4_data::evaluate(&data, &links, linker.settings().thresholds.match_probability);
    // Reference: Splink 5.0, unsupervised EM: precision 1.0000, recall 0.9982, F1 0.9991.
    assert!(q.f1 >= 0.995, "f1 {:.4} below 0.995: {q:?}", q.f1);
    assert!(q.precision >= 0.995, "{q:?}");
}

#[test]
fn blocking_keeps_nearly_all_true_links() {
    let data = febrl4_data::load();
    let linker = Linker::new(febrl4_data::settings()).unwrap();
    let a = linker.prepare(&data.a).unwrap();
    let b = linker.prepare(&data.b).unwrap();
    let pairs = linker.candidates(&a, Some(&b));
    assert!(febrl4_data::lost_by_blocking(&data, &pairs) <= 5);
    // Far fewer than the 25 million pairs of the full product.
    assert!(pairs.len() < 100_000, "{} candidate pairs", pairs.len());
}

#[test]
fn linking_is_deterministic() {
    let data = febrl4_data::load();
    let linker = Linker::new(febrl4_data::settings()).unwrap();
    let a = linker.prepare(&data.a).unwrap();
    let b = linker.prepare(&data.b).unwrap();
    let pairs = linker.candidates(&a, Some(&b));
    let vectors = linker.compare(&a, Some(&b), &pairs);
    let (first, _) = linker.train(&a, Some(&b), &vectors);
    let (second, _) = linker.train(&a, Some(&b), &vectors);
    assert_eq!(first, second);
    let scored = linker.score(&first, &a, Some(&b), &pairs, &vectors);
    assert_eq!(
        cluster::one_to_one(&scored, 0.5),
        linker.link(&data.a, &data.b).unwrap()
    );
}
