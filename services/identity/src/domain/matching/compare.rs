//! Comparators (string, date, numeric) and the mapping of a field comparison to an
//! agreement level.
//!
//! Levels are small integers: `0` is "else" (disagreement), the highest level is exact
//! agreement, and [`NULL_LEVEL`] means at least one side is missing. A missing value is
//! evidence of nothing, so the model gives it a Bayes factor of one.

/// Level of a comparison where either value is missing.
pub const NULL_LEVEL: u8 = u8::MAX;

/// Up to this many characters the edit distance keeps its rows on the stack; names,
/// addresses and identifiers are shorter, and a heap allocation per pair would cost more
/// than the comparison itself. Small, because the array is cleared on every call.
const STACK_CHARS: usize = 32;

/// How one field is compared. Every kind orders its levels from disagreement (0) to exact
/// agreement (`levels() - 1`).
#[derive(Debug, Clone, PartialEq)]
pub enum Comparison {
    /// Exact agreement or not: two levels.
    Exact,
    /// Exact, then Jaro–Winkler similarity at or above each threshold (given in
    /// descending order), then else.
    JaroWinkler { thresholds: Vec<f64> },
    /// Exact, then Damerau–Levenshtein (optimal string alignment) distance at or below
    /// each bound (ascending), then else.
    Levenshtein { max_distances: Vec<usize> },
    /// Dates as `YYYYMMDD` (separators ignored): exact; day and month transposed or one
    /// typing error; same year; else.
    Date,
    /// Numbers: exact, then absolute difference within each tolerance (ascending), else.
    Numeric { tolerances: Vec<f64> },
}

impl Comparison {
    /// Number of non-null levels.
    pub fn levels(&self) -> usize {
        match self {
            Comparison::Exact => 2,
            Comparison::JaroWinkler { thresholds } => thresholds.len() + 2,
            Comparison::Levenshtein { max_distances } => max_distances.len() + 2,
            Comparison::Date => 4,
            Comparison::Numeric { tolerances } => tolerances.len() + 2,
        }
    }

    /// The agreement level of two values; [`NULL_LEVEL`] if either is missing.
    pub fn level(&self, a: Option<&Value>, b: Option<&Value>) -> u8 {
        let (Some(a), Some(b)) = (a, b) else {
            return NULL_LEVEL;
        };
        let exact = (self.levels() - 1) as u8;
        if a.text == b.text {
            return exact;
        }
        match self {
            Comparison::Exact => 0,
            Comparison::JaroWinkler { thresholds } => {
                let similarity = jaro_winkler(&a.chars, &b.chars);
                graded(thresholds.iter().map(|&t| similarity >= t), exact)
            }
            Comparison::Levenshtein { max_distances } => {
                // The largest bound caps the work: beyond it every distance is "else".
                let cap = max_distances.last().copied().unwrap_or(0);
                let distance = damerau_levenshtein_bounded(&a.chars, &b.chars, cap);
                graded(max_distances.iter().map(|&d| distance <= d), exact)
            }
            Comparison::Date => match (a.date, b.date) {
                (Some(x), Some(y)) => date_level(x, y, &a.chars, &b.chars),
                // Unparseable dates still agree or not as text (checked above).
                _ => 0,
            },
            Comparison::Numeric { tolerances } => match (a.number, b.number) {
                (Some(x), Some(y)) => {
                    let diff = (x - y).abs();
                    if diff == 0.0 {
                        exact
                    } else {
                        graded(tolerances.iter().map(|&t| diff <= t), exact)
                    }
                }
                _ => 0,
            },
        }
    }
}

/// Maps "passes threshold k" (strictest first) to a level below `exact`.
fn graded(passes: impl Iterator<Item = bool>, exact: u8) -> u8 {
    for (k, pass) in passes.enumerate() {
        if pass {
            return exact - 1 - k as u8;
        }
    }
    0
}

/// Date levels: 3 exact (handled by the caller), 2 day/month transposed or one edit,
/// 1 same year, 0 else.
fn date_level(a: Date, b: Date, a_chars: &[char], b_chars: &[char]) -> u8 {
    let transposed = a.year == b.year && a.month == b.day && a.day == b.month;
    if transposed || damerau_levenshtein_bounded(a_chars, b_chars, 1) <= 1 {
        2
    } else if a.year == b.year {
        1
    } else {
        0
    }
}

/// A calendar date as written; not validated beyond its shape, since a typing error can
/// produce day 31 in February and the comparison must still see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Date {
    pub year: u16,
    pub month: u8,
    pub day: u8,
}

impl Date {
    /// Parses `YYYYMMDD`, ignoring any non-digit separators (`1971-03-04`).
    pub fn parse(text: &str) -> Option<Date> {
        let digits: Vec<u32> = text.chars().filter_map(|c| c.to_digit(10)).collect();
        if digits.len() != 8 {
            return None;
        }
        let n = |r: std::ops::Range<usize>| digits[r].iter().fold(0u32, |acc, d| acc * 10 + d);
        Some(Date {
            year: n(0..4) as u16,
            month: n(4..6) as u8,
            day: n(6..8) as u8,
        })
    }
}

/// A field value prepared once per record, so comparing many pairs does not re-parse it.
#[derive(Debug, Clone, PartialEq)]
pub struct Value {
    pub text: Box<str>,
    pub chars: Box<[char]>,
    pub number: Option<f64>,
    pub date: Option<Date>,
}

impl Value {
    /// Trims and lowercases; an empty value is missing.
    pub fn prepare(raw: &str, comparison: &Comparison) -> Option<Value> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return None;
        }
        // Most values arrive lowercase already; skip the second copy for them.
        let mut text: Box<str> = if trimmed.chars().any(char::is_uppercase) {
            trimmed.to_lowercase().into()
        } else {
            trimmed.into()
        };
        let number = match comparison {
            Comparison::Numeric { .. } => text.parse().ok(),
            _ => None,
        };
        let date = match comparison {
            Comparison::Date => Date::parse(&text),
            _ => None,
        };
        // One spelling per date, so "1971-03-04" and "19710304" agree exactly, block
        // together and differ by edits only where the digits do.
        if let Some(d) = date {
            text = format!("{:04}{:02}{:02}", d.year, d.month, d.day).into();
        }
        let chars = text.chars().collect();
        Some(Value {
            text,
            chars,
            number,
            date,
        })
    }
}

/// Jaro similarity, as defined by Jaro (1989) and implemented by `strsim`: matching
/// characters within half the longer length, half the out-of-order matches counted as
/// transpositions.
pub fn jaro(a: &[char], b: &[char]) -> f64 {
    if a.is_empty() && b.is_empty() {
        return 1.0;
    }
    if a.is_empty() || b.is_empty() {
        return 0.0;
    }
    let (matches, transpositions) = if a.len() <= 64 && b.len() <= 64 {
        jaro_counts_short(a, b)
    } else {
        jaro_counts_long(a, b)
    };
    if matches == 0 {
        return 0.0;
    }
    let m = matches as f64;
    (m / a.len() as f64 + m / b.len() as f64 + (matches - transpositions) as f64 / m) / 3.0
}

fn window(a: &[char], b: &[char]) -> usize {
    (a.len().max(b.len()) / 2).saturating_sub(1)
}

/// Matches and transpositions with the matched positions as bits of a word: no flag
/// arrays to clear, which is most of the cost for short names compared millions of times.
fn jaro_counts_short(a: &[char], b: &[char]) -> (usize, usize) {
    let window = window(a, b);
    let (mut a_used, mut b_used) = (0u64, 0u64);
    for (i, &ca) in a.iter().enumerate() {
        let lo = i.saturating_sub(window);
        let hi = (i + window + 1).min(b.len());
        for (j, &cb) in b.iter().enumerate().take(hi).skip(lo) {
            if cb == ca && b_used & (1 << j) == 0 {
                a_used |= 1 << i;
                b_used |= 1 << j;
                break;
            }
        }
    }
    let matches = a_used.count_ones() as usize;
    let mut half = 0usize;
    while a_used != 0 {
        let (i, j) = (a_used.trailing_zeros() as usize, b_used.trailing_zeros() as usize);
        half += usize::from(a[i] != b[j]);
        a_used &= a_used - 1;
        b_used &= b_used - 1;
    }
    (matches, half / 2)
}

fn jaro_counts_long(a: &[char], b: &[char]) -> (usize, usize) {
    let window = window(a, b);
    let mut a_flags = vec![false; a.len()];
    let mut b_flags = vec![false; b.len()];
    let mut matches = 0usize;
    for (i, &ca) in a.iter().enumerate() {
        let lo = i.saturating_sub(window);
        let hi = (i + window + 1).min(b.len());
        for j in lo..hi {
            if !b_flags[j] && b[j] == ca {
                a_flags[i] = true;
                b_flags[j] = true;
                matches += 1;
                break;
            }
        }
    }
    let mut half = 0usize;
    let mut matched_b = b.iter().zip(&b_flags).filter(|(_, f)| **f).map(|(c, _)| c);
    for (ca, _) in a.iter().zip(&a_flags).filter(|(_, f)| **f) {
        if matched_b.next() != Some(ca) {
            half += 1;
        }
    }
    (matches, half / 2)
}

/// Jaro–Winkler: Jaro boosted by a common prefix of up to four characters (scale 0.1),
/// only above Jaro 0.7 as in Winkler (1990) and `strsim`.
pub fn jaro_winkler(a: &[char], b: &[char]) -> f64 {
    let sim = jaro(a, b);
    if sim <= 0.7 {
        return sim;
    }
    let prefix = a.iter().zip(b).take(4).take_while(|(x, y)| x == y).count();
    sim + 0.1 * prefix as f64 * (1.0 - sim)
}

/// Convenience for `&str` callers.
pub fn jaro_winkler_str(a: &str, b: &str) -> f64 {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    jaro_winkler(&a, &b)
}

/// Levenshtein distance (insertions, deletions, substitutions).
pub fn levenshtein(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    edit_distance(&a, &b, false, usize::MAX)
}

/// Damerau–Levenshtein distance in its optimal-string-alignment form: adjacent
/// transpositions count as one edit, which is the typing error record linkage cares about.
pub fn damerau_levenshtein(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    edit_distance(&a, &b, true, usize::MAX)
}

/// Optimal-string-alignment distance, exact up to `cap` and some value above `cap`
/// otherwise (callers only ask "within `cap`?", so the rest is not worth computing).
pub fn damerau_levenshtein_bounded(a: &[char], b: &[char], cap: usize) -> usize {
    edit_distance(a, b, true, cap)
}

fn edit_distance(a: &[char], b: &[char], transpose: bool, cap: usize) -> usize {
    if a.len().abs_diff(b.len()) > cap {
        return cap.saturating_add(1);
    }
    if a.is_empty() || b.is_empty() {
        return a.len().max(b.len());
    }
    let width = b.len() + 1;
    let mut stack = [0u32; 3 * (STACK_CHARS + 1)];
    let mut heap = Vec::new();
    let rows: &mut [u32] = if 3 * width <= stack.len() {
        &mut stack[..3 * width]
    } else {
        heap.resize(3 * width, 0);
        &mut heap
    };
    let (before, rest) = rows.split_at_mut(width);
    let (prev, cur) = rest.split_at_mut(width);
    let (mut before, mut prev, mut cur) = (before, prev, cur);
    for (j, cell) in prev.iter_mut().enumerate() {
        *cell = j as u32;
    }
    for i in 1..=a.len() {
        cur[0] = i as u32;
        let mut row_min = cur[0];
        for j in 1..width {
            let cost = u32::from(a[i - 1] != b[j - 1]);
            let mut d = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
            if transpose && i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d = d.min(before[j - 2] + 1);
            }
            cur[j] = d;
            row_min = row_min.min(d);
        }
        if row_min as usize > cap {
            return cap.saturating_add(1);
        }
        std::mem::swap(&mut before, &mut prev);
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()] as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chars(s: &str) -> Vec<char> {
        s.chars().collect()
    }

    fn close(actual: f64, expected: f64, tolerance: f64) {
        assert!(
            (actual - expected).abs() <= tolerance,
            "{actual} is not {expected} ± {tolerance}"
        );
    }

    #[test]
    fn jaro_winkler_matches_reference_values() {
        // Winkler (1990) and Wikipedia reference values, four decimals.
        close(jaro_winkler_str("MARTHA", "MARHTA"), 0.9611, 5e-5);
        close(jaro_winkler_str("DWAYNE", "DUANE"), 0.84, 5e-5);
        close(jaro_winkler_str("DIXON", "DICKSONX"), 0.8133, 5e-5);
        close(jaro(&chars("MARTHA"), &chars("MARHTA")), 0.9444, 5e-5);
        close(jaro(&chars("DWAYNE"), &chars("DUANE")), 0.8222, 5e-5);
        assert_eq!(jaro_winkler_str("", ""), 1.0);
        assert_eq!(jaro_winkler_str("abc", ""), 0.0);
        assert_eq!(jaro_winkler_str("abc", "xyz"), 0.0);
    }

    #[test]
    fn jaro_winkler_agrees_with_strsim() {
        let words = [
            "michaela",
            "micheala",
            "neumann",
            "newman",
            "courtney",
            "courntey",
            "painter",
            "paynter",
            "a",
            "ab",
            "ba",
            "stanley street",
            "stanley st",
            "winston hills",
            "winstonhills",
            "x",
            "",
            "jönsson",
            "jonsson",
            "a very long street name that exceeds the stack buffer of sixty four characters for sure",
            "a very long street name that exceeds the stack buffer of sixty four charactres for sure",
        ];
        for a in words {
            for b in words {
                close(jaro_winkler_str(a, b), strsim::jaro_winkler(a, b), 1e-12);
                assert_eq!(damerau_levenshtein(a, b), strsim::osa_distance(a, b), "{a} / {b}");
                assert_eq!(levenshtein(a, b), strsim::levenshtein(a, b), "{a} / {b}");
            }
        }
    }

    #[test]
    fn edit_distances_match_reference_values() {
        assert_eq!(levenshtein("kitten", "sitting"), 3);
        assert_eq!(levenshtein("flaw", "lawn"), 2);
        assert_eq!(levenshtein("ca", "ac"), 2);
        assert_eq!(damerau_levenshtein("ca", "ac"), 1);
        assert_eq!(damerau_levenshtein("19710304", "19710340"), 1);
        // Optimal string alignment does not edit a substring twice: "ca" -> "abc" is 3.
        assert_eq!(damerau_levenshtein("ca", "abc"), 3);
        // Bounded: beyond the cap it only promises "more than cap".
        assert!(damerau_levenshtein_bounded(&chars("kitten"), &chars("sitting"), 1) > 1);
        assert_eq!(damerau_levenshtein_bounded(&chars("kitten"), &chars("sitting"), 3), 3);
    }

    fn level(comparison: &Comparison, a: &str, b: &str) -> u8 {
        let a = Value::prepare(a, comparison);
        let b = Value::prepare(b, comparison);
        comparison.level(a.as_ref(), b.as_ref())
    }

    #[test]
    fn levels_run_from_else_to_exact() {
        let jw = Comparison::JaroWinkler {
            thresholds: vec![0.92, 0.8],
        };
        assert_eq!(level(&jw, "Martha", " martha "), 3);
        assert_eq!(level(&jw, "martha", "marhta"), 2); // 0.9611
        assert_eq!(level(&jw, "dwayne", "duane"), 1); // 0.84
        assert_eq!(level(&jw, "martha", "xavier"), 0);
        assert_eq!(level(&jw, "martha", ""), NULL_LEVEL);

        let lev = Comparison::Levenshtein {
            max_distances: vec![1, 2],
        };
        assert_eq!(level(&lev, "5304218", "5304218"), 3);
        assert_eq!(level(&lev, "5304218", "5302418"), 2);
        assert_eq!(level(&lev, "5304218", "5304299"), 1);
        assert_eq!(level(&lev, "5304218", "1234567"), 0);

        assert_eq!(level(&Comparison::Exact, "nsw", "NSW"), 1);
        assert_eq!(level(&Comparison::Exact, "nsw", "vic"), 0);

        let num = Comparison::Numeric {
            tolerances: vec![1.0, 5.0],
        };
        assert_eq!(level(&num, "12", "12.0"), 3);
        assert_eq!(level(&num, "12", "13"), 2);
        assert_eq!(level(&num, "12", "16"), 1);
        assert_eq!(level(&num, "12", "30"), 0);
        assert_eq!(level(&num, "12", "twelve"), 0);
    }

    #[test]
    fn dates_see_transpositions_typos_and_years() {
        let date = Comparison::Date;
        assert_eq!(level(&date, "19151111", "1915-11-11"), 3);
        assert_eq!(level(&date, "19710304", "19710403"), 2); // day and month swapped
        assert_eq!(level(&date, "19710304", "19710305"), 2); // one typing error
        assert_eq!(level(&date, "19710304", "19711225"), 1); // same year only
        assert_eq!(level(&date, "19710304", "19820611"), 0);
        assert_eq!(
            Date::parse("1971-03-04"),
            Some(Date {
                year: 1971,
                month: 3,
                day: 4
            })
        );
        assert_eq!(Date::parse("197103"), None);
    }
}
