//! Statements over many rows, for both backends: numbered placeholders bound one by one.

/// `$first, $first+1, ...`: `n` placeholders.
pub fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `($first, ..., $first+width-1), ($first+width, ...), ...`: `n` rows of placeholders.
pub fn rows(first: usize, n: usize, width: usize) -> String {
    (0..n)
        .map(|r| format!("({})", placeholders(first + r * width, width)))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    #[test]
    fn rows_number_their_placeholders_in_order() {
        assert_eq!(super::placeholders(2, 3), "$2, $3, $4");
        assert_eq!(super::rows(1, 2, 3), "($1, $2, $3), ($4, $5, $6)");
    }
}
