//! Hex text to bytes: a leaf helper (imports nothing of vigil) for the config's `key_id` and
//! the CLI.

/// Hex (`0a1B`, optional `:` separators) to bytes; `None` for empty, odd-length or non-hex text.
pub fn parse(s: &str) -> Option<Vec<u8>> {
    let s: String = s.chars().filter(|c| *c != ':').collect();
    if s.is_empty() || !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hex_with_or_without_colons() {
        assert_eq!(parse("01"), Some(vec![1]));
        assert_eq!(parse("0a:FF"), Some(vec![10, 255]));
        assert_eq!(parse("abc"), None);
        assert_eq!(parse("zz"), None);
        assert_eq!(parse(""), None);
        assert_eq!(parse("é0"), None);
    }
}
