//! The join token format, written by the controller and read by the agent:
//! `MZ1.<endpoint, base64url>.<CA public-key SHA-256, hex>.<id, 32 hex>.<secret, 64 hex>`.
//! The endpoint and pin tell a fresh agent where to dial and whom to trust; the controller
//! stores only the secret's hash.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

pub const PREFIX: &str = "MZ1";

/// A well-formed join token, taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinToken<'a> {
    pub endpoint: String,
    pub pin: [u8; 32],
    pub id: &'a str,
    pub secret: &'a str,
}

pub fn format(endpoint: &str, pin_hex: &str, id: &str, secret: &str) -> String {
    format!(
        "{PREFIX}.{}.{pin_hex}.{id}.{secret}",
        URL_SAFE_NO_PAD.encode(endpoint)
    )
}

/// Reads a token; the error says what a token looks like.
pub fn parse(token: &str) -> Result<JoinToken<'_>, String> {
    let bad = || "malformed join token: expected MZ1.<endpoint>.<pin>.<id>.<secret>".to_owned();
    let parts: Vec<&str> = token.trim().split('.').collect();
    let [prefix, endpoint, pin, id, secret] = parts[..] else {
        return Err(bad());
    };
    let hex_of = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    if prefix != PREFIX || !hex_of(id, 32) || !hex_of(secret, 64) || !hex_of(pin, 64) {
        return Err(bad());
    }
    let endpoint = URL_SAFE_NO_PAD
        .decode(endpoint)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(bad)?;
    let pin: [u8; 32] = hex::decode(pin)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(bad)?;
    Ok(JoinToken {
        endpoint,
        pin,
        id,
        secret,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_reads_back_as_written() {
        let (pin, id, secret) = ("ab".repeat(32), "0f".repeat(16), "9c".repeat(32));
        let t = format("https://10.0.0.5:7443", &pin, &id, &secret);
        let pasted = format!("  {t}\n");
        let p = parse(&pasted).expect("parse");
        assert_eq!(p.endpoint, "https://10.0.0.5:7443");
        assert_eq!(p.pin, [0xab; 32]);
        assert_eq!((p.id, p.secret), (id.as_str(), secret.as_str()));
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let good = format(
            "https://h:1",
            &"ab".repeat(32),
            &"0f".repeat(16),
            &"9c".repeat(32),
        );
        for bad in [
            String::new(),
            "MZ1.garbage".into(),
            good.replacen("MZ1", "MZ2", 1),
            format!("{good}.extra"),
            good.replace(&"9c".repeat(32), "zz"),
            format("https://h:1", "abcd", &"0f".repeat(16), &"9c".repeat(32)),
        ] {
            assert!(parse(&bad).is_err(), "{bad}");
        }
    }
}
