//! Small cryptographic helpers: randomness, digests, constant-time comparison and the
//! master-key AEAD that seals secrets at rest. Nothing here logs or formats a secret.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Length of the master key in bytes.
pub const MASTER_KEY_LEN: usize = 32;
const SEAL_VERSION: u8 = 1;
const NONCE_LEN: usize = 24;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("master key file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("master key file {path} is readable by group or others (mode {mode:o}); run `chmod 600 {path}`")]
    Permissive { path: String, mode: u32 },
    #[error("master key file {path} must hold exactly {MASTER_KEY_LEN} bytes, found {len}")]
    Length { path: String, len: usize },
    #[error("operating system random source failed: {0}")]
    Random(String),
}

/// Fills a fresh array with bytes from the operating system's CSPRNG.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], KeyError> {
    let mut buf = [0u8; N];
    getrandom::fill(&mut buf).map_err(|e| KeyError::Random(e.to_string()))?;
    Ok(buf)
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// Constant-time equality for secrets of possibly different lengths.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// The key that seals secrets stored in the database.
pub struct MasterKey {
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

#[derive(Debug, thiserror::Error)]
#[error("sealed value could not be opened (wrong master key or corrupted data)")]
pub struct OpenError;

impl MasterKey {
    pub fn from_bytes(key: &[u8; MASTER_KEY_LEN]) -> Self {
        Self {
            cipher: XChaCha20Poly1305::new(key.into()),
        }
    }

    /// Loads the key from `path`, creating it (mode 0600) when `create` is set and the
    /// file does not exist. A key readable by group or others is refused.
    pub fn load_or_create(path: &Path, create: bool) -> Result<Self, KeyError> {
        let shown = path.display().to_string();
        let io = |source| KeyError::Io {
            path: shown.clone(),
            source,
        };
        if create && !path.exists() {
            let key: [u8; MASTER_KEY_LEN] = random_bytes()?;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(io)?;
            file.write_all(&key).map_err(io)?;
            file.sync_all().map_err(io)?;
            return Ok(Self::from_bytes(&key));
        }
        let meta = std::fs::metadata(path).map_err(io)?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Permissive { path: shown, mode });
        }
        let bytes = std::fs::read(path).map_err(io)?;
        let key: [u8; MASTER_KEY_LEN] =
            bytes.as_slice().try_into().map_err(|_| KeyError::Length {
                path: shown.clone(),
                len: bytes.len(),
            })?;
        Ok(Self::from_bytes(&key))
    }

    /// Seals `plaintext`, binding it to `context` (for example `users.totp:12`) so a
    /// sealed value cannot be moved to another row or column.
    pub fn seal(&self, context: &str, plaintext: &[u8]) -> Result<Vec<u8>, KeyError> {
        let nonce: [u8; NONCE_LEN] = random_bytes()?;
        let ct = self
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: context.as_bytes(),
                },
            )
            // Encryption only fails for messages beyond the cipher's 256 GiB limit.
            .map_err(|_| KeyError::Random("encryption failed".into()))?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + ct.len());
        out.push(SEAL_VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    pub fn open(&self, context: &str, sealed: &[u8]) -> Result<Vec<u8>, OpenError> {
        if sealed.len() < 1 + NONCE_LEN || sealed[0] != SEAL_VERSION {
            return Err(OpenError);
        }
        let (nonce, ct) = sealed[1..].split_at(NONCE_LEN);
        self.cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| OpenError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_round_trip_and_context_binding() {
        let key = MasterKey::from_bytes(&[7u8; 32]);
        let sealed = key.seal("users.totp:1", b"hello").expect("seal");
        assert_eq!(key.open("users.totp:1", &sealed).expect("open"), b"hello");
        assert!(key.open("users.totp:2", &sealed).is_err());
        let mut tampered = sealed.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(key.open("users.totp:1", &tampered).is_err());
    }

    #[test]
    fn ct_eq_checks_length_and_content() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"abcd"));
    }
}
