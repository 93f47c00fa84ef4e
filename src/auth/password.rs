use anyhow::Context;
use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier, SaltString};
use argon2::{Argon2, Params};
use rand::rngs::OsRng;
use std::sync::Arc;
use tokio::sync::Semaphore;

use crate::domain::Password;

/// Argon2id hashing, run on the blocking pool because one hash costs tens of milliseconds.
#[derive(Clone)]
pub struct PasswordHasher {
    /// A real hash of a random password, verified when the user does not exist so that an
    /// unknown username costs the same time as a wrong password.
    dummy_hash: String,
    /// Each hash takes ~19 MiB and a core for tens of milliseconds: a burst of logins queues
    /// here instead of exhausting memory on the blocking pool.
    permits: Arc<Semaphore>,
}

impl PasswordHasher {
    pub fn new() -> anyhow::Result<Self> {
        let salt = SaltString::generate(&mut OsRng);
        let dummy_hash = Argon2::default()
            .hash_password(uuid::Uuid::new_v4().as_bytes(), &salt)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .context("cannot compute the dummy password hash")?
            .to_string();
        let cores = std::thread::available_parallelism().map_or(2, usize::from);
        Ok(Self {
            dummy_hash,
            permits: Arc::new(Semaphore::new(cores * 2)),
        })
    }

    pub async fn hash(&self, password: Password) -> anyhow::Result<String> {
        let _permit = self
            .permits
            .acquire()
            .await
            .context("the hasher is closed")?;
        tokio::task::spawn_blocking(move || {
            let salt = SaltString::generate(&mut OsRng);
            Argon2::default()
                .hash_password(password.expose().as_bytes(), &salt)
                .map(|hash| hash.to_string())
                .map_err(|e| anyhow::anyhow!("argon2 hashing failed: {e}"))
        })
        .await
        .context("the hashing task panicked")?
    }

    /// Checks `password` against `stored_hash`, or against the dummy hash when there is no
    /// user, and returns whether it matched (always false in the second case).
    pub async fn verify(
        &self,
        password: String,
        stored_hash: Option<String>,
    ) -> anyhow::Result<bool> {
        let _permit = self
            .permits
            .acquire()
            .await
            .context("the hasher is closed")?;
        let exists = stored_hash.is_some();
        let hash = stored_hash.unwrap_or_else(|| self.dummy_hash.clone());
        let matched = tokio::task::spawn_blocking(move || verify_or_burn(&password, &hash))
            .await
            .context("the verification task panicked")?;
        Ok(exists && matched)
    }
}

/// The most work a stored hash may ask of a login: its cost parameters are read from the hash
/// itself, and a corrupted or planted `m=4294967295` would otherwise allocate 4 TiB. Above the
/// defaults (19 MiB, 2 passes, 1 lane) and every setting OWASP recommends, so that hashes made
/// with stronger settings later still verify, while the logins verified at once (two per core)
/// hold 64 MiB each at most.
const MAX_M_COST_KIB: u32 = 64 * 1024;
const MAX_T_COST: u32 = 8;
const MAX_P_COST: u32 = 8;

/// Verifies a password against a PHC string; a malformed stored hash, or one asking for more
/// work than allowed, counts as a mismatch.
fn verify_or_burn(password: &str, hash: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    match Params::try_from(&parsed) {
        Ok(params)
            if params.m_cost() <= MAX_M_COST_KIB
                && params.t_cost() <= MAX_T_COST
                && params.p_cost() <= MAX_P_COST =>
        {
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        }
        _ => {
            tracing::warn!(
                "a stored password hash is malformed or asks for more work than allowed; login refused"
            );
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_hash_verifies_its_password_only() {
        let hasher = PasswordHasher::new().unwrap();
        let hash = hasher
            .hash(Password::parse("hunter2hunter2".into()).unwrap())
            .await
            .unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(
            hasher
                .verify("hunter2hunter2".into(), Some(hash.clone()))
                .await
                .unwrap()
        );
        assert!(
            !hasher
                .verify("hunter3hunter3".into(), Some(hash))
                .await
                .unwrap()
        );
        assert!(!hasher.verify("hunter2hunter2".into(), None).await.unwrap());
    }

    #[test]
    fn a_hash_asking_for_too_much_work_is_refused_without_doing_it() {
        let salt = SaltString::generate(&mut OsRng);
        let costly = Params::new(MAX_M_COST_KIB + 1024, 1, 1, None).unwrap();
        let hash = Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, costly)
            .hash_password(b"hunter2hunter2", &salt)
            .unwrap()
            .to_string();
        // Correct password, but the hash's cost is over the ceiling.
        assert!(!verify_or_burn("hunter2hunter2", &hash));
        // Planted costs that would not fit in memory are refused the same way.
        let planted = hash.replace(&format!("m={}", MAX_M_COST_KIB + 1024), "m=4294967295");
        assert!(planted.contains("m=4294967295"));
        assert!(!verify_or_burn("hunter2hunter2", &planted));
        let slow = hash
            .replace(&format!("m={}", MAX_M_COST_KIB + 1024), "m=19456")
            .replace("t=1", "t=4000000000");
        assert!(!verify_or_burn("hunter2hunter2", &slow));
    }
}
