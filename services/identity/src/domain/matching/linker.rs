//! The linkage pipeline, end to end and step by step.

use super::model::{self, Fit, TermFrequencies};
use super::random::SplitMix64;
use super::{
    BlockingRule, Comparison, ComparisonVectors, MatchingError, Model, Pair, Prepared, Record, Schema, ScoredPair,
    blocking, cluster,
};

/// How m, u and λ are estimated.
#[derive(Debug, Clone, PartialEq)]
pub struct Training {
    /// Random pairs compared to initialise u (nearly all are non-matches).
    pub random_pairs: usize,
    pub seed: u64,
    pub max_iterations: usize,
    /// EM stops when no parameter moves by more than this.
    pub tolerance: f64,
    /// Keep u at its random-pair estimate instead of re-estimating it by EM.
    pub fix_u: bool,
    /// Starting prior that a candidate pair matches.
    pub initial_lambda: f64,
}

impl Default for Training {
    fn default() -> Training {
        Training {
            random_pairs: 20_000,
            seed: 0x00C0_FFEE,
            max_iterations: 100,
            tolerance: 1e-6,
            fix_u: false,
            initial_lambda: 0.1,
        }
    }
}

/// Match probabilities at or above `match_probability` are links; between
/// `review_probability` and it, a person should look.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    pub match_probability: f64,
    pub review_probability: f64,
}

impl Default for Thresholds {
    fn default() -> Thresholds {
        Thresholds {
            match_probability: 0.5,
            review_probability: 0.5,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub schema: Schema,
    pub blocking: Vec<BlockingRule>,
    pub training: Training,
    pub thresholds: Thresholds,
}

/// Links two record sets or deduplicates one, under fixed [`Settings`]. The model is
/// estimated afresh for every call, from the records given, without labels.
#[derive(Debug, Clone)]
pub struct Linker {
    settings: Settings,
    /// Blocking rules as field indices.
    rules: Vec<Vec<usize>>,
    comparisons: Vec<Comparison>,
    levels: Vec<usize>,
}

impl Linker {
    pub fn new(settings: Settings) -> Result<Linker, MatchingError> {
        if settings.blocking.is_empty() {
            return Err(MatchingError::NoBlockingRules);
        }
        let mut rules = Vec::with_capacity(settings.blocking.len());
        for (r, rule) in settings.blocking.iter().enumerate() {
            if rule.fields.is_empty() {
                return Err(MatchingError::EmptyBlockingRule(r));
            }
            let fields = rule
                .fields
                .iter()
                .map(|name| {
                    settings
                        .schema
                        .index_of(name)
                        .ok_or_else(|| MatchingError::UnknownBlockingField(name.clone()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            rules.push(fields);
        }
        let t = settings.thresholds;
        for p in [t.match_probability, t.review_probability] {
            if !(0.0..=1.0).contains(&p) {
                return Err(MatchingError::Threshold(p.to_string()));
            }
        }
        let comparisons: Vec<Comparison> = settings.schema.fields.iter().map(|f| f.comparison.clone()).collect();
        let levels = comparisons.iter().map(Comparison::levels).collect();
        Ok(Linker {
            settings,
            rules,
            comparisons,
            levels,
        })
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Links `a` to `b`: each record of one side to at most one of the other, pairs with
    /// probability at or above the review threshold, best first.
    pub fn link(&self, a: &[Record], b: &[Record]) -> Result<Vec<ScoredPair>, MatchingError> {
        let (a, b) = (self.prepare(a)?, self.prepare(b)?);
        let pairs = self.candidates(&a, Some(&b));
        let vectors = self.compare(&a, Some(&b), &pairs);
        let (model, _) = self.train(&a, Some(&b), &vectors);
        let scored = self.score(&model, &a, Some(&b), &pairs, &vectors);
        Ok(cluster::one_to_one(
            &scored,
            self.settings.thresholds.review_probability,
        ))
    }

    /// Scored pairs within `records` (`a < b`) at or above the review threshold, best
    /// first; [`cluster::connected_components`] turns them into groups.
    pub fn dedupe(&self, records: &[Record]) -> Result<Vec<ScoredPair>, MatchingError> {
        let records = self.prepare(records)?;
        let pairs = self.candidates(&records, None);
        let vectors = self.compare(&records, None, &pairs);
        let (model, _) = self.train(&records, None, &vectors);
        let mut scored = self.score(&model, &records, None, &pairs, &vectors);
        scored.retain(|p| p.probability >= self.settings.thresholds.review_probability);
        scored.sort_unstable_by(|x, y| {
            y.probability
                .total_cmp(&x.probability)
                .then((x.a, x.b).cmp(&(y.a, y.b)))
        });
        Ok(scored)
    }

    /// Step 1: values trimmed, lowercased and parsed once.
    pub fn prepare(&self, records: &[Record]) -> Result<Prepared, MatchingError> {
        Prepared::new(&self.settings.schema, records)
    }

    /// Step 2: candidate pairs by blocking; `b: None` deduplicates `a`.
    pub fn candidates(&self, a: &Prepared, b: Option<&Prepared>) -> Vec<Pair> {
        match b {
            Some(b) => blocking::link_pairs(&self.rules, a, b),
            None => blocking::dedupe_pairs(&self.rules, a),
        }
    }

    /// Step 3: comparison vectors of the candidate pairs.
    pub fn compare(&self, a: &Prepared, b: Option<&Prepared>, pairs: &[Pair]) -> ComparisonVectors {
        model::compare_pairs(&self.comparisons, a, b.unwrap_or(a), pairs)
    }

    /// Step 4: u initialised from seeded random pairs, then EM over the candidates.
    pub fn train(&self, a: &Prepared, b: Option<&Prepared>, vectors: &ComparisonVectors) -> (Model, Fit) {
        let t = &self.settings.training;
        let random = self.random_pairs(a.len(), b.map_or(a.len(), Prepared::len), b.is_none());
        let random_vectors = self.compare(a, b, &random);
        let u = Model::u_from_random_pairs(&self.levels, &random_vectors);
        let mut model = Model::initial(&self.levels, Some(u), t.initial_lambda);
        let fit = model.fit(vectors, t.max_iterations, t.tolerance, t.fix_u);
        (model, fit)
    }

    /// Step 5: match weight and probability of every candidate pair.
    pub fn score(
        &self,
        model: &Model,
        a: &Prepared,
        b: Option<&Prepared>,
        pairs: &[Pair],
        vectors: &ComparisonVectors,
    ) -> Vec<ScoredPair> {
        let enabled: Vec<bool> = self.settings.schema.fields.iter().map(|f| f.term_frequency).collect();
        let sets: Vec<&Prepared> = std::iter::once(a).chain(b).collect();
        let tf = TermFrequencies::new(model, &enabled, &sets);
        model::score(model, &tf, pairs, vectors)
    }

    fn random_pairs(&self, left: usize, right: usize, dedupe: bool) -> Vec<Pair> {
        let t = &self.settings.training;
        if left == 0 || right == 0 || (dedupe && left < 2) {
            return Vec::new();
        }
        let mut rng = SplitMix64::new(t.seed);
        let mut pairs = Vec::with_capacity(t.random_pairs);
        while pairs.len() < t.random_pairs {
            let (a, b) = (rng.below(left), rng.below(right));
            if dedupe && a == b {
                continue;
            }
            pairs.push(Pair {
                a: a as u32,
                b: b as u32,
            });
        }
        pairs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::matching::Field;

    fn settings() -> Settings {
        Settings {
            schema: Schema::new(vec![
                Field::new("name", Comparison::JaroWinkler { thresholds: vec![0.9] }).with_term_frequency(),
                Field::new("city", Comparison::Exact),
                Field::new("born", Comparison::Date),
            ]),
            blocking: vec![BlockingRule::on(&["city"]), BlockingRule::on(&["born"])],
            training: Training {
                random_pairs: 200,
                ..Training::default()
            },
            thresholds: Thresholds::default(),
        }
    }

    fn record(id: &str, name: &str, city: &str, born: &str) -> Record {
        let field = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        Record {
            id: id.to_owned(),
            fields: vec![field(name), field(city), field(born)],
        }
    }

    #[test]
    fn settings_are_checked() {
        let mut s = settings();
        s.blocking.push(BlockingRule::on(&["nope"]));
        assert_eq!(
            Linker::new(s).unwrap_err(),
            MatchingError::UnknownBlockingField("nope".into())
        );
        let mut s = settings();
        s.blocking.clear();
        assert_eq!(Linker::new(s).unwrap_err(), MatchingError::NoBlockingRules);
        let mut s = settings();
        s.thresholds.match_probability = 1.5;
        assert!(matches!(Linker::new(s), Err(MatchingError::Threshold(_))));
        let linker = Linker::new(settings()).unwrap();
        let short = Record {
            id: "x".into(),
            fields: vec![None],
        };
        assert!(matches!(
            linker.link(&[short], &[]),
            Err(MatchingError::FieldCount { .. })
        ));
    }

    #[test]
    fn links_and_dedupes_a_small_example() {
        let names = [
            "anna", "boris", "carla", "dmitri", "elena", "farid", "greta", "hugo", "ines", "jonas",
        ];
        let cities = ["oslo", "rome", "lima", "kyiv", "riga"];
        let a: Vec<Record> = (0..40)
            .map(|i| {
                record(
                    &format!("a{i}"),
                    names[i % 10],
                    cities[i % 5],
                    &format!("19{:02}0{}1{}", 40 + i, i % 9 + 1, i % 10),
                )
            })
            .collect();
        // b: the same people in reverse order, some with a typo or a missing city.
        let b: Vec<Record> = a
            .iter()
            .rev()
            .enumerate()
            .map(|(k, r)| {
                let mut r = r.clone();
                r.id = format!("b{k}");
                if k % 3 == 0 {
                    r.fields[0] = r.fields[0].as_ref().map(|n| format!("{n}h"));
                }
                if k % 4 == 0 {
                    r.fields[1] = None;
                }
                r
            })
            .collect();
        let linker = Linker::new(settings()).unwrap();
        let links = linker.link(&a, &b).unwrap();
        assert_eq!(links.len(), 40, "{links:?}");
        assert!(links.iter().all(|p| a[p.a].fields[2] == b[p.b].fields[2]));

        let mut both = a.clone();
        both.extend(b);
        let pairs = linker.dedupe(&both).unwrap();
        let clusters = cluster::connected_components(both.len(), &pairs, 0.5);
        for i in 0..40 {
            assert_eq!(clusters[79 - i], clusters[i], "record {i}");
        }
        assert_eq!(clusters.iter().collect::<std::collections::HashSet<_>>().len(), 40);
    }
}
