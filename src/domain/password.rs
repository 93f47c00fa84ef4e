use std::fmt;

use super::DomainError;
use super::ErrorCode;

pub const MIN_LEN: usize = 8;
/// Upper bound so nobody can make the server hash megabytes.
pub const MAX_LEN: usize = 1024;

/// A clear-text password on its way to the hasher. Never printed.
pub struct Password(String);

impl Password {
    pub fn parse(raw: String) -> Result<Self, DomainError> {
        let len = raw.chars().count();
        if len < MIN_LEN {
            return Err(DomainError::new(
                ErrorCode::WeakPassword,
                format!("password must be at least {MIN_LEN} characters long"),
            ));
        }
        if len > MAX_LEN {
            return Err(DomainError::new(
                ErrorCode::InvalidPassword,
                format!("password must be at most {MAX_LEN} characters long"),
            ));
        }
        Ok(Self(raw))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(***)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_passwords_are_weak() {
        assert_eq!(
            Password::parse("1234567".into()).unwrap_err().code,
            ErrorCode::WeakPassword
        );
        assert!(Password::parse("12345678".into()).is_ok());
    }

    #[test]
    fn debug_output_hides_the_password() {
        let p = Password::parse("correct horse".into()).unwrap();
        assert_eq!(format!("{p:?}"), "Password(***)");
    }
}
