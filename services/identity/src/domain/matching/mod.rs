//! Probabilistic record linkage (Fellegi and Sunter, 1969) with unsupervised estimation of
//! the model by expectation–maximisation (Winkler, 1988; Jaro, 1989).
//!
//! The pipeline: records are prepared once ([`Prepared`]); blocking rules propose
//! candidate pairs ([`blocking`]); each pair gets a comparison vector of agreement levels
//! ([`compare`], [`model::compare_pairs`]); EM estimates m and u per level without labels
//! ([`model`]); every pair gets a match weight and probability, with a term-frequency
//! adjustment for common values; pairs become links by one-to-one assignment or clusters
//! by connected components ([`cluster`]). [`Linker`] runs the whole pipeline and exposes
//! each step, so callers can time or inspect them.

pub mod blocking;
pub mod cluster;
pub mod compare;
mod linker;
pub mod model;
mod random;

pub use blocking::{BlockingRule, Pair};
pub use compare::{Comparison, Value};
pub use linker::{Linker, Settings, Thresholds, Training};
pub use model::{ComparisonVectors, Model, ScoredPair};

/// A record to match: an identifier and one optional value per field of the [`Schema`],
/// in schema order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub id: String,
    pub fields: Vec<Option<String>>,
}

/// One compared field.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    pub name: String,
    pub comparison: Comparison,
    /// Adjust exact agreement by how common the value is: two records that share a rare
    /// surname are stronger evidence than two that share "smith".
    pub term_frequency: bool,
}

impl Field {
    pub fn new(name: &str, comparison: Comparison) -> Field {
        Field {
            name: name.to_owned(),
            comparison,
            term_frequency: false,
        }
    }

    pub fn with_term_frequency(mut self) -> Field {
        self.term_frequency = true;
        self
    }
}

/// The named fields of the records to match, each with how it is compared.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Schema {
    pub fields: Vec<Field>,
}

impl Schema {
    pub fn new(fields: Vec<Field>) -> Schema {
        Schema { fields }
    }

    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.fields.iter().position(|f| f.name == name)
    }

    pub fn len(&self) -> usize {
        self.fields.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }
}

/// Why records or settings cannot be matched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MatchingError {
    #[error("blocking rule refers to unknown field {0:?}")]
    UnknownBlockingField(String),
    #[error("blocking rule {0} has no fields")]
    EmptyBlockingRule(usize),
    #[error("no blocking rules: every pair would be compared")]
    NoBlockingRules,
    #[error("record {id:?} has {actual} fields, the schema {expected}")]
    FieldCount { id: String, expected: usize, actual: usize },
    #[error("threshold {0} is not a probability")]
    Threshold(String),
}

/// Records with every value trimmed, lowercased and parsed once, row by row.
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    fields: usize,
    values: Vec<Option<Value>>,
}

impl Prepared {
    pub fn new(schema: &Schema, records: &[Record]) -> Result<Prepared, MatchingError> {
        let mut values = Vec::with_capacity(records.len() * schema.len());
        for record in records {
            if record.fields.len() != schema.len() {
                return Err(MatchingError::FieldCount {
                    id: record.id.clone(),
                    expected: schema.len(),
                    actual: record.fields.len(),
                });
            }
            for (field, raw) in schema.fields.iter().zip(&record.fields) {
                values.push(raw.as_deref().and_then(|raw| Value::prepare(raw, &field.comparison)));
            }
        }
        Ok(Prepared {
            fields: schema.len(),
            values,
        })
    }

    pub fn len(&self) -> usize {
        self.values.len().checked_div(self.fields).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn value(&self, record: usize, field: usize) -> Option<&Value> {
        self.values[record * self.fields + field].as_ref()
    }
}
