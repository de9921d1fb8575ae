//! Identifier kinds and values, and how a raw value becomes the normal form that is
//! stored and looked up: two spellings of one identifier must meet in the index.

use std::fmt;

/// Longest normalised value accepted, in bytes: longer values are not identifiers but
/// payloads sent in the wrong field, and would bloat the identifier index.
pub const MAX_VALUE_LEN: usize = 512;

/// The kind of an identifier: `email`, `user_id`, or a kind the workspace adds. Checked as
/// `[a-z][a-z0-9_]{0,31}` so that it can be used as a stable key in storage and config.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdentifierKind(String);

/// A kind that does not match `[a-z][a-z0-9_]{0,31}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("identifier kind {0:?} must be 1 to 32 lowercase letters, digits or '_', starting with a letter")]
pub struct InvalidKind(pub String);

impl IdentifierKind {
    pub fn parse(kind: &str) -> Result<Self, InvalidKind> {
        let valid = (1..=32).contains(&kind.len())
            && kind.starts_with(|c: char| c.is_ascii_lowercase())
            && kind
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if valid {
            Ok(Self(kind.to_owned()))
        } else {
            Err(InvalidKind(kind.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    // The standard kinds, named as on the wire (Segment's `anonymousId`/`userId` and the
    // `Identifier.kind` strings of corvus.common.v1).
    pub fn anonymous_id() -> Self {
        Self("anonymous_id".to_owned())
    }
    pub fn user_id() -> Self {
        Self("user_id".to_owned())
    }
    pub fn email() -> Self {
        Self("email".to_owned())
    }
    pub fn phone() -> Self {
        Self("phone".to_owned())
    }
    pub fn device_id() -> Self {
        Self("device_id".to_owned())
    }
    pub fn loyalty_card() -> Self {
        Self("loyalty_card".to_owned())
    }
    pub fn crm_id() -> Self {
        Self("crm_id".to_owned())
    }
}

impl fmt::Display for IdentifierKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A normalised identifier. Only [`crate::domain::resolution::IdentityRules`] builds these
/// from raw input, so every `Identifier` is in the normal form of its kind's rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identifier {
    pub kind: IdentifierKind,
    pub value: String,
}

impl Identifier {
    /// An identifier whose value is already normal (read back from storage, or in tests).
    pub fn new(kind: IdentifierKind, value: impl Into<String>) -> Self {
        Self {
            kind,
            value: value.into(),
        }
    }
}

impl fmt::Display for Identifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.value)
    }
}

/// Why a raw value is not an identifier of its kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("empty")]
    Empty,
    #[error("longer than {MAX_VALUE_LEN} bytes")]
    TooLong,
    #[error("not an email address")]
    NotAnEmail,
    #[error("not a phone number")]
    NotAPhone,
}

/// How raw values of a kind are brought to normal form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Normalisation {
    /// Surrounding whitespace removed, nothing else: ids issued by a system are compared
    /// exactly, since `AB12` and `ab12` may well be two customers.
    Trim,
    /// Trimmed and lowercased, for ids whose case carries no meaning (hex device ids sent
    /// upper-case by one SDK and lower-case by another).
    Lowercase,
    /// Trimmed and lowercased (mail systems treat local parts case-insensitively in
    /// practice), with one `@` and a dotted domain.
    Email {
        /// For `gmail.com` and `googlemail.com` only: drop dots and a `+tag` from the local
        /// part and use `gmail.com`, since Gmail delivers all those spellings to one inbox.
        /// Off by default: other providers treat dots as significant, and a workspace that
        /// turns it on stores the canonical form, not what the person typed.
        canonical_gmail: bool,
    },
    /// Digits only, in E.164 form `+<country><number>` when the country is known: from a
    /// leading `+` or `00`, or from `default_country_code` (digits, e.g. `"44"`), in which
    /// case one national trunk `0` is dropped (`07700 900123` → `+447700900123`). Without a
    /// known country the national digits are kept as they are, without `+`: such numbers
    /// only match the same national spelling.
    Phone { default_country_code: Option<String> },
}

impl Normalisation {
    pub fn apply(&self, raw: &str) -> Result<String, Malformed> {
        let trimmed = raw.trim();
        let value = match self {
            Normalisation::Trim => trimmed.to_owned(),
            Normalisation::Lowercase => trimmed.to_lowercase(),
            Normalisation::Email { canonical_gmail } => email(trimmed, *canonical_gmail)?,
            Normalisation::Phone { default_country_code } => phone(trimmed, default_country_code.as_deref())?,
        };
        if value.is_empty() {
            Err(Malformed::Empty)
        } else if value.len() > MAX_VALUE_LEN {
            Err(Malformed::TooLong)
        } else {
            Ok(value)
        }
    }
}

fn email(trimmed: &str, canonical_gmail: bool) -> Result<String, Malformed> {
    if trimmed.is_empty() {
        return Err(Malformed::Empty);
    }
    let lower = trimmed.to_lowercase();
    let (local, domain) = lower.rsplit_once('@').ok_or(Malformed::NotAnEmail)?;
    let plausible = !local.is_empty()
        && !local.contains('@')
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !lower.chars().any(char::is_whitespace);
    if !plausible {
        return Err(Malformed::NotAnEmail);
    }
    if canonical_gmail && (domain == "gmail.com" || domain == "googlemail.com") {
        let local = local.split('+').next().unwrap_or(local).replace('.', "");
        if local.is_empty() {
            return Err(Malformed::NotAnEmail);
        }
        return Ok(format!("{local}@gmail.com"));
    }
    Ok(lower)
}

/// E.164 allows at most 15 digits including the country code; fewer than 7 is a short code
/// or an extension, not a person's number.
const PHONE_DIGITS: std::ops::RangeInclusive<usize> = 7..=15;

fn phone(trimmed: &str, default_country_code: Option<&str>) -> Result<String, Malformed> {
    if trimmed.is_empty() {
        return Err(Malformed::Empty);
    }
    // "+44 (0)7700 …" marks the trunk prefix that is dialled only from inside the country.
    let unmarked = trimmed.replace("(0)", "");
    let (plus, rest) = match unmarked.strip_prefix('+') {
        Some(rest) => (true, rest),
        None => (false, unmarked.as_str()),
    };
    // Separators people type are ignored; anything else (letters, a second '+') means the
    // field holds something other than a number.
    if !rest
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, ' ' | '-' | '.' | '(' | ')' | '/'))
    {
        return Err(Malformed::NotAPhone);
    }
    let digits: String = rest.chars().filter(char::is_ascii_digit).collect();
    let international = if plus {
        Some(digits.clone())
    } else if let Some(after) = digits.strip_prefix("00") {
        Some(after.to_owned())
    } else {
        default_country_code.map(|cc| format!("{cc}{}", digits.strip_prefix('0').unwrap_or(&digits)))
    };
    match international {
        Some(number) if PHONE_DIGITS.contains(&number.len()) && !number.starts_with('0') => Ok(format!("+{number}")),
        Some(_) => Err(Malformed::NotAPhone),
        None if PHONE_DIGITS.contains(&digits.len()) => Ok(digits),
        None => Err(Malformed::NotAPhone),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_checked() {
        for good in ["email", "a", "loyalty_card", "kind2", &"k".repeat(32)] {
            assert!(IdentifierKind::parse(good).is_ok(), "{good:?}");
        }
        for bad in ["", "Email", "2fa", "_x", "e-mail", "e mail", "é", &"k".repeat(33)] {
            assert_eq!(IdentifierKind::parse(bad), Err(InvalidKind(bad.to_owned())), "{bad:?}");
        }
        assert_eq!(IdentifierKind::parse("email"), Ok(IdentifierKind::email()));
    }

    #[test]
    fn emails_are_trimmed_and_lowercased() {
        let plain = Normalisation::Email { canonical_gmail: false };
        assert_eq!(plain.apply(" Ada@Example.COM "), Ok("ada@example.com".to_owned()));
        assert_eq!(plain.apply("ada@example.com"), plain.apply(" ADA@example.com\t"));
        // Without the option, dots and tags are kept: they may be different mailboxes.
        assert_eq!(plain.apply("a.da+x@gmail.com"), Ok("a.da+x@gmail.com".to_owned()));
        for bad in [
            "ada",
            "ada@",
            "@example.com",
            "ada@example",
            "a da@example.com",
            "ada@.com",
        ] {
            assert_eq!(plain.apply(bad), Err(Malformed::NotAnEmail), "{bad:?}");
        }
        assert_eq!(plain.apply("   "), Err(Malformed::Empty));
    }

    #[test]
    fn gmail_canonical_form_is_an_option() {
        let gmail = Normalisation::Email { canonical_gmail: true };
        assert_eq!(gmail.apply("A.Da+news@GoogleMail.com"), Ok("ada@gmail.com".to_owned()));
        assert_eq!(gmail.apply("ada@gmail.com"), Ok("ada@gmail.com".to_owned()));
        // Other domains are left alone even with the option on.
        assert_eq!(gmail.apply("a.da+x@example.com"), Ok("a.da+x@example.com".to_owned()));
        assert_eq!(gmail.apply("+x@gmail.com"), Err(Malformed::NotAnEmail));
    }

    #[test]
    fn phones_become_e164_like() {
        let uk = Normalisation::Phone {
            default_country_code: Some("44".to_owned()),
        };
        assert_eq!(uk.apply("07700 900123"), Ok("+447700900123".to_owned()));
        assert_eq!(uk.apply("+44 (0)7700-900.123"), Ok("+447700900123".to_owned()));
        assert_eq!(uk.apply("+44 7700 900123"), Ok("+447700900123".to_owned()));
        assert_eq!(uk.apply("0044 7700 900123"), Ok("+447700900123".to_owned()));
        assert_eq!(uk.apply("+1 (415) 555-0100"), Ok("+14155550100".to_owned()));
        for bad in [
            "call me",
            "12",
            "+44 7700 900123 ext 4",
            "++447700900123",
            "+0123456789",
        ] {
            assert_eq!(uk.apply(bad), Err(Malformed::NotAPhone), "{bad:?}");
        }
        let unknown = Normalisation::Phone {
            default_country_code: None,
        };
        assert_eq!(unknown.apply("07700 900123"), Ok("07700900123".to_owned()));
        assert_eq!(unknown.apply("+44 7700 900123"), Ok("+447700900123".to_owned()));
    }

    #[test]
    fn other_kinds_are_trimmed_or_lowercased() {
        assert_eq!(Normalisation::Trim.apply("  AB-12 "), Ok("AB-12".to_owned()));
        assert_eq!(Normalisation::Lowercase.apply(" AB-12"), Ok("ab-12".to_owned()));
        assert_eq!(Normalisation::Trim.apply(" \n"), Err(Malformed::Empty));
        assert_eq!(
            Normalisation::Trim.apply(&"x".repeat(MAX_VALUE_LEN + 1)),
            Err(Malformed::TooLong)
        );
    }
}
