use std::fmt;

use mongodb::bson::oid::ObjectId;

use super::DomainError;

/// The id of a user: the `_id` of their MongoDB document, shown as 24 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(ObjectId);

impl UserId {
    pub fn parse(raw: &str) -> Result<Self, DomainError> {
        ObjectId::parse_str(raw)
            .map(Self)
            .map_err(|_| DomainError::new("invalid_user_id", "user id must be 24 hex digits"))
    }

    pub fn new() -> Self {
        Self(ObjectId::new())
    }

    pub fn object_id(&self) -> ObjectId {
        self.0
    }
}

impl Default for UserId {
    fn default() -> Self {
        Self::new()
    }
}

impl From<ObjectId> for UserId {
    fn from(id: ObjectId) -> Self {
        Self(id)
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.to_hex())
    }
}

impl fmt::Debug for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UserId({})", self.0.to_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_hex() {
        let id = UserId::new();
        assert_eq!(UserId::parse(&id.to_string()).unwrap(), id);
    }

    #[test]
    fn rejects_non_hex() {
        assert!(UserId::parse("nope").is_err());
        assert!(UserId::parse("{\"$ne\":null}").is_err());
    }
}
