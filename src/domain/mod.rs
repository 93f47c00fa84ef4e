//! Domain newtypes. Each one can only be built through `parse`, so an invalid value cannot
//! exist past the HTTP edge ("parse, don't validate").

mod emoji;
mod error_code;
mod mentions;
mod message_body;
mod object_ids;
mod password;
mod room_name;
mod username;

pub use emoji::Emoji;
pub use error_code::ErrorCode;
pub use mentions::mentioned_names;
pub use message_body::MessageBody;
pub use object_ids::{MessageId, RoomId, UserId};
pub use password::Password;
pub use room_name::RoomName;
pub use username::Username;

/// Why a value was rejected; the HTTP layer turns it into a 422 with this code and message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DomainError {
    pub code: ErrorCode,
    pub message: String,
}

impl DomainError {
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}
