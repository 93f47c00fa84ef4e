use std::fmt;

use super::DomainError;
use super::ErrorCode;

pub const MIN_LEN: usize = 2;
pub const MAX_LEN: usize = 32;

/// A room name: 2 to 32 ASCII letters, digits, `_`, `-` or `.`; unique regardless of case.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RoomName(String);

impl RoomName {
    pub fn parse(raw: &str) -> Result<Self, DomainError> {
        let len = raw.chars().count();
        if !(MIN_LEN..=MAX_LEN).contains(&len)
            || !raw
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        {
            return Err(DomainError::new(
                ErrorCode::InvalidRoomName,
                format!(
                    "room name must be {MIN_LEN} to {MAX_LEN} letters, digits, `_`, `-` or `.`"
                ),
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn normalized(&self) -> String {
        self.0.to_ascii_lowercase()
    }
}

impl fmt::Display for RoomName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RoomName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RoomName({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_rejects() {
        assert!(RoomName::parse("rust-fans").is_ok());
        for bad in ["a", "with space", &"x".repeat(33), "$where", "é"] {
            assert!(RoomName::parse(bad).is_err(), "{bad}");
        }
    }
}
