use std::time::Duration;

use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::Secret;
use crate::domain::UserId;

/// What an access token says.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// The user id (24 hex digits).
    pub sub: String,
    /// The username at the time of login, for display.
    pub name: String,
    /// Unique token id: the handle used to revoke it.
    pub jti: String,
    pub iat: i64,
    pub exp: i64,
}

pub struct IssuedToken {
    pub token: String,
    pub claims: Claims,
}

impl IssuedToken {
    pub fn expires_at(&self) -> DateTime<Utc> {
        DateTime::from_timestamp(self.claims.exp, 0).unwrap_or_default()
    }
}

/// HS256 keys and the token lifetime.
#[derive(Clone)]
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl: Duration,
}

impl JwtKeys {
    pub fn new(secret: &Secret, ttl: Duration) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        // `jti` is not a claim jsonwebtoken checks; it is required because `Claims::jti` is
        // not optional, so a token without one fails to decode.
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self {
            encoding: EncodingKey::from_secret(secret.expose().as_bytes()),
            decoding: DecodingKey::from_secret(secret.expose().as_bytes()),
            validation,
            ttl,
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    pub fn issue(
        &self,
        user_id: UserId,
        username: &str,
    ) -> jsonwebtoken::errors::Result<IssuedToken> {
        let now = Utc::now().timestamp();
        let claims = Claims {
            sub: user_id.to_string(),
            name: username.to_owned(),
            jti: uuid::Uuid::new_v4().simple().to_string(),
            iat: now,
            exp: now + i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX / 2),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)?;
        Ok(IssuedToken { token, claims })
    }

    /// Checks signature, algorithm and expiry. Revocation is checked separately, in Redis.
    pub fn verify(&self, token: &str) -> Option<Claims> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .ok()
            .map(|data| data.claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(secret: &str) -> JwtKeys {
        JwtKeys::new(&Secret::new(secret), Duration::from_secs(60))
    }

    #[test]
    fn an_issued_token_verifies_with_the_same_secret_only() {
        let id = UserId::new();
        let issued = keys(&"a".repeat(32)).issue(id, "alice").unwrap();
        let claims = keys(&"a".repeat(32)).verify(&issued.token).unwrap();
        assert_eq!(claims.sub, id.to_string());
        assert_eq!(claims.jti.len(), 32);
        assert!(keys(&"b".repeat(32)).verify(&issued.token).is_none());
    }

    #[test]
    fn every_token_has_its_own_jti() {
        let k = keys(&"a".repeat(32));
        let id = UserId::new();
        assert_ne!(
            k.issue(id, "a").unwrap().claims.jti,
            k.issue(id, "a").unwrap().claims.jti
        );
    }

    #[test]
    fn an_expired_token_is_refused() {
        let k = keys(&"a".repeat(32));
        let claims = Claims {
            sub: UserId::new().to_string(),
            name: "a".into(),
            jti: "x".into(),
            iat: 0,
            exp: Utc::now().timestamp() - 1,
        };
        let token = jsonwebtoken::encode(&Header::default(), &claims, &k.encoding).unwrap();
        assert!(k.verify(&token).is_none());
    }

    #[test]
    fn the_none_algorithm_is_refused() {
        // header {"alg":"none"} with an empty signature
        let token = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4IiwianRpIjoieCIsImV4cCI6OTk5OTk5OTk5OX0.";
        assert!(keys(&"a".repeat(32)).verify(token).is_none());
    }
}
