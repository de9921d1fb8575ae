//! RFM: each customer's recency, frequency and monetary value scored 1 to 5 by the
//! workspace's quintiles, and the customer's cell named from the recency and frequency
//! scores by the usual map (champions, loyal customers, at risk, …).

use serde::{Deserialize, Serialize};

/// One customer's recency (days since the last purchase), frequency (orders) and
/// monetary value (revenue).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rfm {
    pub recency_days: f64,
    pub frequency: f64,
    pub monetary: f64,
}

/// The workspace's quintile boundaries (the 20th, 40th, 60th and 80th percentiles) of
/// each measure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RfmModel {
    pub recency: [f64; 4],
    pub frequency: [f64; 4],
    pub monetary: [f64; 4],
    pub customers: u64,
}

/// A customer's scores and cell.
#[derive(Debug, Clone, PartialEq)]
pub struct RfmScore {
    pub recency: u8,
    pub frequency: u8,
    pub monetary: u8,
    pub cell: &'static str,
}

/// The cells, by recency score then frequency score, as the widely used RFM segment
/// map names them.
pub fn cell(recency: u8, frequency: u8) -> &'static str {
    match (recency, frequency) {
        (5, 4..=5) => "champions",
        (3..=4, 4..=5) => "loyal_customers",
        (4..=5, 2..=3) => "potential_loyalists",
        (5, 1) => "new_customers",
        (4, 1) => "promising",
        (3, 3) => "need_attention",
        (3, 1..=2) => "about_to_sleep",
        (1..=2, 5) => "cant_lose_them",
        (1..=2, 3..=4) => "at_risk",
        _ => "hibernating",
    }
}

/// The value below which `share` of `sorted` lies, interpolated linearly between
/// neighbours (numpy's default percentile).
fn percentile(sorted: &[f64], share: f64) -> f64 {
    let position = share * (sorted.len() - 1) as f64;
    let (low, high) = (position.floor() as usize, position.ceil() as usize);
    sorted[low] + (sorted[high] - sorted[low]) * (position - low as f64)
}

fn quintiles(mut values: Vec<f64>) -> [f64; 4] {
    values.sort_by(f64::total_cmp);
    [0.2, 0.4, 0.6, 0.8].map(|q| percentile(&values, q))
}

/// 1 to 5: one more than the boundaries the value is above.
fn score(value: f64, bounds: &[f64; 4]) -> u8 {
    1 + bounds.iter().filter(|b| value > **b).count() as u8
}

impl RfmModel {
    /// The quintiles of the customers' measures; `None` without customers.
    pub fn fit(customers: &[Rfm]) -> Option<Self> {
        if customers.is_empty() {
            return None;
        }
        Some(Self {
            recency: quintiles(customers.iter().map(|c| c.recency_days).collect()),
            frequency: quintiles(customers.iter().map(|c| c.frequency).collect()),
            monetary: quintiles(customers.iter().map(|c| c.monetary).collect()),
            customers: customers.len() as u64,
        })
    }

    /// A customer's scores: 5 is the most recent, the most frequent, the most spent.
    pub fn score(&self, c: &Rfm) -> RfmScore {
        let recency = 6 - score(c.recency_days, &self.recency);
        let frequency = score(c.frequency, &self.frequency);
        RfmScore {
            recency,
            frequency,
            monetary: score(c.monetary, &self.monetary),
            cell: cell(recency, frequency),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quintiles_score_and_name_the_customers() {
        // 10 customers: recency 1..10 days, frequency 1..10 orders, spend 10..100.
        let customers: Vec<Rfm> = (1..=10)
            .map(|i| Rfm {
                recency_days: f64::from(i),
                frequency: f64::from(i),
                monetary: f64::from(i) * 10.0,
            })
            .collect();
        let model = RfmModel::fit(&customers).unwrap();
        // numpy.percentile([1..10], [20, 40, 60, 80]) = 2.8, 4.6, 6.4, 8.2
        for (got, expected) in model.recency.iter().zip([2.8, 4.6, 6.4, 8.2]) {
            assert!((got - expected).abs() < 1e-12, "{:?}", model.recency);
        }
        let best = model.score(&Rfm {
            recency_days: 1.0,
            frequency: 10.0,
            monetary: 100.0,
        });
        assert_eq!(
            (best.recency, best.frequency, best.monetary, best.cell),
            (5, 5, 5, "champions")
        );
        let lapsed = model.score(&customers[9]);
        assert_eq!((lapsed.recency, lapsed.frequency), (1, 5));
        assert_eq!(lapsed.cell, "cant_lose_them", "frequent, but long ago");
        assert_eq!(cell(5, 1), "new_customers");
        assert_eq!(cell(1, 1), "hibernating");
        assert_eq!(cell(2, 3), "at_risk");
    }
}
