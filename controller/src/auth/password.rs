//! Password hashing with argon2id, run on the blocking pool behind a semaphore so that
//! a burst of logins cannot exhaust memory or starve the async runtime.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OnceCell, Semaphore};

pub const MIN_LEN: usize = 10;
pub const MAX_LEN: usize = 256;

/// How long a login may wait for a hashing slot before the server answers "busy".
const QUEUE_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("the server is busy hashing passwords; retry shortly")]
    Busy,
    #[error("password hashing failed: {0}")]
    Internal(String),
}

/// Checks length rules; the message says what is wrong.
pub fn validate(password: &str) -> Result<(), String> {
    let n = password.chars().count();
    if n < MIN_LEN {
        return Err(format!(
            "password is too short: {n} characters, at least {MIN_LEN} are required"
        ));
    }
    if n > MAX_LEN {
        return Err(format!(
            "password is too long: {n} characters, at most {MAX_LEN} are allowed"
        ));
    }
    Ok(())
}

#[derive(Clone)]
pub struct Hasher {
    slots: Arc<Semaphore>,
    params: Params,
    dummy: Arc<OnceCell<String>>,
}

impl std::fmt::Debug for Hasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hasher")
            .field("free_slots", &self.slots.available_permits())
            .finish()
    }
}

impl Hasher {
    /// OWASP's argon2id baseline: 19 MiB, 2 passes, 1 lane. `slots` bounds concurrent
    /// hashes, so peak memory is about `slots * 19 MiB`.
    pub fn new(slots: usize) -> Self {
        // These constants are within argon2's documented ranges.
        let params = Params::new(19 * 1024, 2, 1, None).unwrap_or_else(|_| unreachable!());
        Self {
            slots: Arc::new(Semaphore::new(slots.max(1))),
            params,
            dummy: Arc::new(OnceCell::new()),
        }
    }

    fn argon(&self) -> Argon2<'static> {
        Argon2::new(Algorithm::Argon2id, Version::V0x13, self.params.clone())
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(Argon2<'static>) -> T + Send + 'static,
    ) -> Result<T, HashError> {
        let _permit = tokio::time::timeout(QUEUE_WAIT, self.slots.clone().acquire_owned())
            .await
            .map_err(|_| HashError::Busy)?
            .map_err(|_| HashError::Busy)?;
        let argon = self.argon();
        tokio::task::spawn_blocking(move || work(argon))
            .await
            .map_err(|e| HashError::Internal(e.to_string()))
    }

    pub async fn hash(&self, password: &str) -> Result<String, HashError> {
        let password = password.to_owned();
        let salt_bytes: [u8; 16] =
            crate::crypto::random_bytes().map_err(|e| HashError::Internal(e.to_string()))?;
        self.blocking(move |argon| {
            let salt = SaltString::encode_b64(&salt_bytes)
                .map_err(|e| HashError::Internal(e.to_string()))?;
            argon
                .hash_password(password.as_bytes(), &salt)
                .map(|h| h.to_string())
                .map_err(|e| HashError::Internal(e.to_string()))
        })
        .await?
    }

    /// Verifies `password` against a stored PHC string. `None` as the stored hash runs
    /// a verification against a dummy hash, so unknown users cost the same time.
    pub async fn verify(&self, password: &str, stored: Option<&str>) -> Result<bool, HashError> {
        let stored = match stored {
            Some(s) => s.to_owned(),
            None => self
                .dummy
                .get_or_try_init(|| self.hash("mezzanine-dummy-password"))
                .await?
                .clone(),
        };
        let password = password.to_owned();
        self.blocking(move |argon| {
            PasswordHash::new(&stored)
                .map(|parsed| argon.verify_password(password.as_bytes(), &parsed).is_ok())
                .unwrap_or(false)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hash_and_verify() {
        let h = Hasher::new(2);
        let stored = h.hash("correct horse battery").await.expect("hash");
        assert!(stored.starts_with("$argon2id$"));
        assert!(h
            .verify("correct horse battery", Some(&stored))
            .await
            .expect("v"));
        assert!(!h
            .verify("wrong horse battery", Some(&stored))
            .await
            .expect("v"));
        assert!(!h.verify("anything at all", None).await.expect("v"));
    }

    #[test]
    fn length_rules() {
        assert!(validate("short").unwrap_err().contains("too short"));
        assert!(validate(&"x".repeat(300)).unwrap_err().contains("too long"));
        assert!(validate("long enough pw").is_ok());
    }
}
