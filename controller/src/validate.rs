//! Grammar checks for user-supplied values that end up in commands, files or other
//! systems (hostnames, names, tags). Each returns a message naming what is wrong.

use std::net::IpAddr;

/// A DNS hostname (RFC 1123 labels) or an IPv4/IPv6 address.
pub fn host(value: &str) -> Result<(), String> {
    if value.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    if value.is_empty() || value.len() > 253 {
        return Err("must be a hostname of 1 to 253 characters or an IP address".into());
    }
    for label in value.trim_end_matches('.').split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(format!(
                "{value:?} is not a valid hostname or IP address (label {label:?})"
            ));
        }
    }
    Ok(())
}

/// A server name: 1–64 of `A–Z a–z 0–9 . _ -`, starting with a letter or digit.
pub fn name(value: &str) -> Result<(), String> {
    if value.is_empty() || value.len() > 64 {
        return Err("must be 1 to 64 characters".into());
    }
    if !value.as_bytes()[0].is_ascii_alphanumeric() {
        return Err("must start with a letter or digit".into());
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err("may contain only letters, digits, '.', '_' and '-'".into());
    }
    Ok(())
}

/// At most 32 tags of 1–40 characters from `a–z A–Z 0–9 . _ - : =`.
pub fn tags(values: &[String]) -> Result<(), String> {
    if values.len() > 32 {
        return Err("at most 32 tags".into());
    }
    for t in values {
        if t.is_empty() || t.len() > 40 {
            return Err(format!("tag {t:?} must be 1 to 40 characters"));
        }
        if !t
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':' | b'='))
        {
            return Err(format!(
                "tag {t:?} may contain only letters, digits and . _ - : ="
            ));
        }
    }
    Ok(())
}

/// A Unix user name for SSH: 1–32 of `a–z A–Z 0–9 . _ -`, not starting with `-`.
pub fn username(value: &str) -> Result<(), String> {
    if value.is_empty() || value.len() > 32 {
        return Err("must be 1 to 32 characters".into());
    }
    if value.starts_with('-') {
        return Err("must not start with '-'".into());
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err("may contain only letters, digits, '.', '_' and '-'".into());
    }
    Ok(())
}

/// Text from outside (a step's output, an agent's facts or error, an installer's output)
/// made storable: NUL becomes U+FFFD, as bytes that are not UTF-8 already do. PostgreSQL's
/// text cannot hold a NUL, and such text must not fail a write on one engine only. Text
/// without one (nearly all of it: this is on the run output path) is not copied.
pub fn storable(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains('\0') {
        text.replace('\0', "\u{FFFD}").into()
    } else {
        text.into()
    }
}

/// A string an agent sent (its version, say), made safe to log and show: control
/// characters and anything outside printable ASCII are escaped (`\n`, `\u{1b}`), so a
/// forged value cannot start a new log line or colour a terminal, and it is cut at `max`
/// characters.
pub fn agent_text(raw: &str, max: usize) -> String {
    let mut out = String::new();
    for c in raw.chars() {
        if out.chars().count() >= max {
            out.push('…');
            break;
        }
        if c == ' ' || c.is_ascii_graphic() {
            out.push(c);
        } else {
            out.extend(c.escape_default());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storable_text_has_no_nul_and_is_copied_only_when_it_had_one() {
        assert_eq!(storable("bin\0ary\0"), "bin\u{FFFD}ary\u{FFFD}");
        assert!(matches!(
            storable("plain ✓"),
            std::borrow::Cow::Borrowed("plain ✓")
        ));
    }

    #[test]
    fn hosts() {
        for ok in ["example.com", "10.0.0.5", "::1", "node-1", "a.b-c.d."] {
            assert!(host(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-a.com",
            "a..b",
            "a b",
            "x;rm -rf /",
            "a_b.com",
            &"a".repeat(64),
        ] {
            assert!(host(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_and_tags() {
        assert!(name("web-1").is_ok());
        assert!(name("-web").is_err());
        assert!(name("web 1").is_err());
        assert!(tags(&["env=prod".into(), "role:web".into()]).is_ok());
        assert!(tags(&["bad tag".into()]).is_err());
        assert!(username("root").is_ok());
        assert!(username("-oProxyCommand").is_err());
    }

    #[test]
    fn agent_text_cannot_forge_log_lines() {
        assert_eq!(agent_text("0.1.0", 64), "0.1.0");
        let forged = agent_text("1.0\n2026-11-30 INFO audit actor=admin\u{1b}[31m", 64);
        assert!(
            !forged.contains('\n') && !forged.contains('\u{1b}'),
            "{forged}"
        );
        assert!(forged.starts_with("1.0\\n2026"), "{forged}");
        assert_eq!(agent_text(&"v".repeat(100), 8), "vvvvvvvv…");
    }
}
