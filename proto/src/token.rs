//! The join token format, written by the controller and read by the agent:
//! `MZ1.<endpoints, base64url>.<CA public-key SHA-256, hex>.<id, 32 hex>.<secret, 64 hex>`.
//! The endpoints (one, or several separated by commas: controllers sharing one database,
//! or one controller reachable at several addresses) and the pin tell a fresh agent where
//! to dial and whom to trust; the controller stores only the secret's hash.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

pub const PREFIX: &str = "MZ1";

/// Endpoints one token (and one agent) may carry.
pub const MAX_ENDPOINTS: usize = 8;

/// A well-formed join token, taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinToken<'a> {
    /// In the order to try them; at least one.
    pub endpoints: Vec<String>,
    pub pin: [u8; 32],
    pub id: &'a str,
    pub secret: &'a str,
}

pub fn format(endpoints: &[String], pin_hex: &str, id: &str, secret: &str) -> String {
    format!(
        "{PREFIX}.{}.{pin_hex}.{id}.{secret}",
        URL_SAFE_NO_PAD.encode(endpoints.join(","))
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
    let endpoints: Vec<String> = URL_SAFE_NO_PAD
        .decode(endpoint)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(bad)?
        .split(',')
        .map(|e| e.trim().to_owned())
        .collect();
    if endpoints.iter().any(String::is_empty) || endpoints.len() > MAX_ENDPOINTS {
        return Err(bad());
    }
    let pin: [u8; 32] = hex::decode(pin)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(bad)?;
    Ok(JoinToken {
        endpoints,
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
        let t = format(&["https://10.0.0.5:7443".into()], &pin, &id, &secret);
        let pasted = format!("  {t}\n");
        let p = parse(&pasted).expect("parse");
        assert_eq!(p.endpoints, ["https://10.0.0.5:7443"]);
        let two = [
            "https://10.0.0.5:7443".to_owned(),
            "https://[fd00::2]:7443".to_owned(),
        ];
        let t = format(&two, &pin, &id, &secret);
        assert_eq!(parse(&t).expect("parse").endpoints, two);
        assert_eq!(p.pin, [0xab; 32]);
        assert_eq!((p.id, p.secret), (id.as_str(), secret.as_str()));
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let good = format(
            &["https://h:1".into()],
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
            format(
                &["https://h:1".into()],
                "abcd",
                &"0f".repeat(16),
                &"9c".repeat(32),
            ),
            format(
                &["https://h:1".into(), String::new()],
                &"ab".repeat(32),
                &"0f".repeat(16),
                &"9c".repeat(32),
            ),
            format(
                &vec!["https://h:1".to_owned(); 9],
                &"ab".repeat(32),
                &"0f".repeat(16),
                &"9c".repeat(32),
            ),
        ] {
            assert!(parse(&bad).is_err(), "{bad}");
        }
    }
}
