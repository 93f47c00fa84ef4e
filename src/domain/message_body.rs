use super::DomainError;
use super::ErrorCode;

pub const MAX_CHARS: usize = 4000;

/// The text of a message: at most 4000 characters (Unicode scalar values), not empty once
/// surrounding whitespace is trimmed; stored trimmed. The bound is on what is sent, so that
/// the spec's `maxLength` says it exactly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageBody(String);

impl MessageBody {
    pub fn parse(raw: &str) -> Result<Self, DomainError> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(DomainError::new(
                ErrorCode::EmptyMessage,
                "the message body is empty",
            ));
        }
        if raw.chars().count() > MAX_CHARS {
            return Err(DomainError::new(
                ErrorCode::MessageTooLong,
                format!("the message body must be at most {MAX_CHARS} characters"),
            ));
        }
        Ok(Self(trimmed.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_and_bounds_by_characters_not_bytes() {
        assert_eq!(MessageBody::parse("  hi \n").unwrap().as_str(), "hi");
        assert_eq!(
            MessageBody::parse(" \n\t ").unwrap_err().code,
            ErrorCode::EmptyMessage
        );
        assert!(MessageBody::parse(&"é".repeat(MAX_CHARS)).is_ok());
        assert_eq!(
            MessageBody::parse(&"é".repeat(MAX_CHARS + 1))
                .unwrap_err()
                .code,
            ErrorCode::MessageTooLong
        );
        assert_eq!(
            MessageBody::parse(&format!("{} ", "é".repeat(MAX_CHARS)))
                .unwrap_err()
                .code,
            ErrorCode::MessageTooLong
        );
        assert!(MessageBody::parse("<img src=x onerror=alert(1)> 🙂").is_ok());
    }
}
