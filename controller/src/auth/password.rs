//! Password hashing with argon2id, run on the blocking pool behind a semaphore so that
//! a burst of logins cannot exhaust memory or starve the async runtime. Each hash gets
//! its working memory from a buffer that goes back to the operating system when the
//! hash is done (see `working_memory`), so the controller does not grow with logins.

use argon2::password_hash::{Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
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
            let internal = |e: &dyn std::fmt::Display| HashError::Internal(e.to_string());
            let salt = SaltString::encode_b64(&salt_bytes).map_err(|e| internal(&e))?;
            let params = argon.params().clone();
            let hash = raw_hash(&argon, password.as_bytes(), &salt_bytes)?;
            let phc = PasswordHash {
                algorithm: Algorithm::Argon2id.ident(),
                version: Some(Version::V0x13.into()),
                params: ParamsString::try_from(&params).map_err(|e| internal(&e))?,
                salt: Some(salt.as_salt()),
                hash: Some(hash),
            };
            Ok(phc.to_string())
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
        self.blocking(move |_| verify_phc(password.as_bytes(), &stored))
            .await
    }
}

/// Allocations at least this large are always served by their own `mmap` and returned
/// with `munmap` when freed (glibc's dynamic mmap threshold stops at 32 MiB on 64-bit).
/// Smaller ones, once the threshold has risen past them, come from a per-thread arena
/// that keeps them: with 19 MiB per hash on whichever blocking thread ran it, the
/// controller grew by ~19 MiB for each thread that ever hashed. Pages of the buffer past
/// what argon2 uses are never touched, so they cost no memory.
const RELEASED_ALLOCATION: usize = 33 * 1024 * 1024;

/// Working memory for one hash, released to the operating system on drop.
fn working_memory(blocks: usize) -> Vec<Block> {
    let floor = RELEASED_ALLOCATION / std::mem::size_of::<Block>();
    let mut memory = Vec::with_capacity(blocks.max(floor));
    memory.resize(blocks, Block::default());
    memory
}

/// The raw argon2 output for `password` and `salt` under `argon`'s parameters.
fn raw_hash(argon: &Argon2<'_>, password: &[u8], salt: &[u8]) -> Result<Output, HashError> {
    let params = argon.params();
    let len = params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN);
    let mut memory = working_memory(params.block_count());
    Output::init_with(len, |out| {
        argon
            .hash_password_into_with_memory(password, salt, out, &mut memory)
            .map_err(|_| argon2::password_hash::Error::Crypto)
    })
    .map_err(|e| HashError::Internal(e.to_string()))
}

/// Checks `password` against a PHC string with the parameters it records (so hashes made
/// with other costs still verify). `Output`'s comparison is constant-time.
fn verify_phc(password: &[u8], stored: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(stored) else {
        return false;
    };
    let (Ok(algorithm), Ok(params), Some(salt), Some(expected)) = (
        Algorithm::try_from(parsed.algorithm),
        Params::try_from(&parsed),
        parsed.salt,
        parsed.hash,
    ) else {
        return false;
    };
    let version = parsed
        .version
        .and_then(|v| Version::try_from(v).ok())
        .unwrap_or_default();
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let argon = Argon2::new(algorithm, version, params);
    raw_hash(&argon, password, salt).is_ok_and(|h| h == expected)
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
        assert!(!h.verify("x", Some("not a hash")).await.expect("v"));
    }

    /// Hashes made here are standard PHC strings that the argon2 crate's own verifier
    /// accepts, and hashes it made verify here.
    #[tokio::test]
    async fn hashes_interoperate_with_the_reference_implementation() {
        use argon2::password_hash::{PasswordHasher, PasswordVerifier};
        let h = Hasher::new(1);
        let ours = h.hash("interop password").await.expect("hash");
        let parsed = PasswordHash::new(&ours).expect("phc");
        assert!(h
            .argon()
            .verify_password(b"interop password", &parsed)
            .is_ok());
        let salt = SaltString::encode_b64(b"0123456789abcdef").expect("salt");
        let theirs = h
            .argon()
            .hash_password(b"interop password", &salt)
            .expect("hash")
            .to_string();
        assert_eq!(theirs, {
            // Same salt, same parameters: the same string.
            let argon = h.argon();
            let raw = raw_hash(&argon, b"interop password", b"0123456789abcdef").expect("raw");
            PasswordHash {
                algorithm: Algorithm::Argon2id.ident(),
                version: Some(Version::V0x13.into()),
                params: ParamsString::try_from(argon.params()).expect("params"),
                salt: Some(salt.as_salt()),
                hash: Some(raw),
            }
            .to_string()
        });
        assert!(h
            .verify("interop password", Some(&theirs))
            .await
            .expect("v"));
        assert!(!h
            .verify("interop passwore", Some(&theirs))
            .await
            .expect("v"));
    }

    #[test]
    fn length_rules() {
        assert!(validate("short").unwrap_err().contains("too short"));
        assert!(validate(&"x".repeat(300)).unwrap_err().contains("too long"));
        assert!(validate("long enough pw").is_ok());
    }
}
