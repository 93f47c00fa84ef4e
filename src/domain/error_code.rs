//! The codes of error bodies: one enum, each code defined once (the HTTP layer's
//! `ApiError` and the domain's `DomainError` both carry one).

use std::fmt;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Defines [`ErrorCode`] and its wire names from one list.
macro_rules! error_codes {
    ($($variant:ident => $code:literal,)*) => {
        /// Every code an error body can carry, each defined once: programs match on these.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
        #[serde(rename_all = "snake_case")]
        pub enum ErrorCode {
            $($variant,)*
        }

        impl ErrorCode {
            #[cfg(test)]
            const ALL: &[ErrorCode] = &[$(Self::$variant,)*];

            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $code,)*
                }
            }
        }
    };
}

error_codes! {
    BadRequest => "bad_request",
    CacheUnavailable => "cache_unavailable",
    CannotLeaveDefaultRoom => "cannot_leave_default_room",
    CannotMessageSelf => "cannot_message_self",
    DatabaseUnavailable => "database_unavailable",
    EmptyMessage => "empty_message",
    EventsUnavailable => "events_unavailable",
    IdempotencyKeyReused => "idempotency_key_reused",
    InternalError => "internal_error",
    InvalidBody => "invalid_body",
    InvalidCredentials => "invalid_credentials",
    InvalidCursor => "invalid_cursor",
    InvalidEmoji => "invalid_emoji",
    InvalidIdempotencyKey => "invalid_idempotency_key",
    InvalidJson => "invalid_json",
    InvalidLastEventId => "invalid_last_event_id",
    InvalidLimit => "invalid_limit",
    InvalidMessageId => "invalid_message_id",
    InvalidPassword => "invalid_password",
    InvalidPath => "invalid_path",
    InvalidQuery => "invalid_query",
    InvalidRoomId => "invalid_room_id",
    InvalidRoomName => "invalid_room_name",
    InvalidSearch => "invalid_search",
    InvalidTarget => "invalid_target",
    InvalidToken => "invalid_token",
    InvalidUserId => "invalid_user_id",
    InvalidUsername => "invalid_username",
    InvalidWindow => "invalid_window",
    MessageDeleted => "message_deleted",
    MessageNotFound => "message_not_found",
    MessageTooLong => "message_too_long",
    MethodNotAllowed => "method_not_allowed",
    MissingToken => "missing_token",
    NotAMember => "not_a_member",
    NotFound => "not_found",
    NotTheSender => "not_the_sender",
    PayloadTooLarge => "payload_too_large",
    RateLimited => "rate_limited",
    RoomNameTaken => "room_name_taken",
    RoomNotFound => "room_not_found",
    TokenRevoked => "token_revoked",
    TooManyBuckets => "too_many_buckets",
    UnsupportedMediaType => "unsupported_media_type",
    UserNotFound => "user_not_found",
    UsernameTaken => "username_taken",
    WeakPassword => "weak_password",
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_code_is_sent_as_its_name() {
        for code in ErrorCode::ALL {
            assert_eq!(serde_json::to_value(code).unwrap(), code.as_str());
        }
        let mut names: Vec<_> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ErrorCode::ALL.len(), "two codes with one name");
    }
}
