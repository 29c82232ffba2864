//! Authentication domain: roles, password hashing, TOTP, session tokens and login
//! throttling. It knows nothing about HTTP; `api::auth` turns it into routes.

pub mod limiter;
pub mod password;
pub mod totp;

use std::fmt;

/// Roles in increasing order of privilege; comparisons use this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Viewer,
    Moderator,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Moderator => "moderator",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "viewer" => Some(Role::Viewer),
            "moderator" => Some(Role::Moderator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Validates a username: 1–64 characters from `A–Z a–z 0–9 . _ -`, starting with a
/// letter or digit. The message names what is wrong.
pub fn validate_username(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err("username must be 1 to 64 characters".into());
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err("username may contain only letters, digits, '.', '_' and '-'".into());
    }
    if !name.as_bytes()[0].is_ascii_alphanumeric() {
        return Err("username must start with a letter or digit".into());
    }
    Ok(())
}

/// A new session token: 256 random bits, hex-encoded for the cookie. Only its SHA-256
/// is stored.
pub fn new_session_token() -> Result<(String, [u8; 32]), crate::crypto::KeyError> {
    let raw: [u8; 32] = crate::crypto::random_bytes()?;
    let token = hex::encode(raw);
    let hash = crate::crypto::sha256(token.as_bytes());
    Ok((token, hash))
}

/// What every API token starts with (so secret scanners and people recognise one).
pub const TOKEN_PREFIX: &str = "mz_";

pub fn session_hash(token: &str) -> [u8; 32] {
    crate::crypto::sha256(token.as_bytes())
}
