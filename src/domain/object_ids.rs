//! Ids of rooms and messages: MongoDB ObjectIds shown as 24 hex digits.

use std::fmt;

use mongodb::bson::oid::ObjectId;

use super::DomainError;
use super::ErrorCode;

macro_rules! object_id_newtype {
    ($name:ident, $code:expr, $what:literal) => {
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(ObjectId);

        impl $name {
            pub fn parse(raw: &str) -> Result<Self, DomainError> {
                ObjectId::parse_str(raw)
                    .map(Self)
                    .map_err(|_| DomainError::new($code, concat!($what, " must be 24 hex digits")))
            }

            pub fn new() -> Self {
                Self(ObjectId::new())
            }

            pub fn object_id(&self) -> ObjectId {
                self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl From<ObjectId> for $name {
            fn from(id: ObjectId) -> Self {
                Self(id)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0.to_hex())
            }
        }
    };
}

object_id_newtype!(UserId, ErrorCode::InvalidUserId, "a user id");
object_id_newtype!(RoomId, ErrorCode::InvalidRoomId, "a room id");
object_id_newtype!(MessageId, ErrorCode::InvalidMessageId, "a message id");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_hex() {
        let id = RoomId::new();
        assert_eq!(RoomId::parse(&id.to_string()).unwrap(), id);
    }

    #[test]
    fn malformed_ids_are_rejected_with_their_own_code() {
        assert_eq!(
            UserId::parse("nope").unwrap_err().code,
            ErrorCode::InvalidUserId
        );
        assert_eq!(
            RoomId::parse("{\"$ne\":null}").unwrap_err().code,
            ErrorCode::InvalidRoomId
        );
        assert_eq!(
            MessageId::parse("zzzzzzzzzzzzzzzzzzzzzzzz")
                .unwrap_err()
                .code,
            ErrorCode::InvalidMessageId
        );
    }
}
