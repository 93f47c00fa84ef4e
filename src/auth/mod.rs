//! Passwords, access tokens and the extractor that authenticates a request.

mod extractor;
mod jwt;
mod password;

pub use extractor::{
    ACCESS_TOKEN_COOKIE, AuthUser, Budget, Limited, Signaller, Signals, Writer, Writes,
    authenticate, token_from,
};
pub use jwt::{Claims, IssuedToken, JwtKeys};
pub use password::PasswordHasher;
