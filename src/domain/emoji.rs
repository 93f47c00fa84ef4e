use super::DomainError;
use super::ErrorCode;

/// One emoji, as a reaction: exactly one emoji of the Unicode emoji list (with its skin tone,
/// if any), stored in its fully qualified form so that `❤` and `❤️` are one reaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Emoji(&'static str);

impl Emoji {
    pub fn parse(raw: &str) -> Result<Self, DomainError> {
        emojis::get(raw).map(|e| Self(e.as_str())).ok_or_else(|| {
            DomainError::new(
                ErrorCode::InvalidEmoji,
                "a reaction is exactly one emoji, such as 👍",
            )
        })
    }

    pub fn as_str(&self) -> &'static str {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reaction_is_exactly_one_emoji_in_its_qualified_form() {
        assert_eq!(Emoji::parse("👍").unwrap().as_str(), "👍");
        assert_eq!(Emoji::parse("👍🏽").unwrap().as_str(), "👍🏽");
        assert_eq!(Emoji::parse("❤").unwrap(), Emoji::parse("❤️").unwrap());
        assert_eq!(Emoji::parse("👨‍👩‍👧").unwrap().as_str(), "👨‍👩‍👧");
        for bad in ["", "👍👍", "a", "👍 ", ":+1:", "ok"] {
            assert_eq!(
                Emoji::parse(bad).unwrap_err().code,
                ErrorCode::InvalidEmoji,
                "{bad:?}"
            );
        }
    }
}
