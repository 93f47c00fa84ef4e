use std::fmt;

use super::DomainError;
use super::ErrorCode;

pub const MIN_LEN: usize = 3;
pub const MAX_LEN: usize = 32;
/// Names that are words of the API's paths (`/users/online`, `/users/me`).
const RESERVED: &[&str] = &["me", "online"];

/// A user name: 3 to 32 ASCII letters, digits, `_`, `-` or `.`. Unique case-insensitively,
/// through [`Username::normalized`].
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Username(String);

impl Username {
    pub fn parse(raw: &str) -> Result<Self, DomainError> {
        let len = raw.chars().count();
        if !(MIN_LEN..=MAX_LEN).contains(&len) {
            return Err(DomainError::new(
                ErrorCode::InvalidUsername,
                format!("username must be {MIN_LEN} to {MAX_LEN} characters long"),
            ));
        }
        if !raw
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        {
            return Err(DomainError::new(
                ErrorCode::InvalidUsername,
                "username may only contain letters, digits, `_`, `-` and `.`",
            ));
        }
        if RESERVED.contains(&raw.to_ascii_lowercase().as_str()) {
            return Err(DomainError::new(
                ErrorCode::InvalidUsername,
                format!("`{raw}` is reserved; pick another name"),
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The form used for uniqueness and look-ups: `Alice` and `alice` are the same account.
    pub fn normalized(&self) -> String {
        self.0.to_ascii_lowercase()
    }
}

impl fmt::Display for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Username({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_allowed_alphabet() {
        for ok in ["bob", "Alice_01", "a.b-c", &"x".repeat(32)] {
            assert!(Username::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_bad_lengths_and_characters() {
        for bad in [
            "",
            "ab",
            &"x".repeat(33),
            "has space",
            "émile",
            "a/b",
            "$ne",
            "a\0b",
            "<b>x</b>",
        ] {
            assert!(Username::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn normalization_folds_case() {
        assert_eq!(Username::parse("MiXeD").unwrap().normalized(), "mixed");
    }
}
