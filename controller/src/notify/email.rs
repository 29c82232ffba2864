//! E-mail notifiers: one plain-text message per event over SMTP (lettre), STARTTLS by
//! default, implicit TLS, or — only towards loopback and `--insecure-registry` networks —
//! plain. The whole configuration is sealed (it may hold a password); the API shows only
//! the host.

use crate::images::Insecure;
use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Recipients one notifier may have.
const MAX_RECIPIENTS: usize = 20;

#[derive(Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Security {
    /// Plain connection upgraded with STARTTLS, which must succeed (submission, 587).
    Starttls,
    /// TLS from the first byte (submissions, 465).
    Tls,
    /// No TLS: only for loopback and networks named with `--insecure-registry`.
    None,
}

fn starttls() -> Security {
    Security::Starttls
}

/// An e-mail notifier's `smtp`, as the API takes it and as it is sealed. No `Debug`: it
/// may carry a password.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Smtp {
    pub host: String,
    #[serde(default)]
    pub port: Option<i64>,
    #[serde(default = "starttls")]
    pub security: Security,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    pub from: String,
    pub to: Vec<String>,
}

/// A mailbox (`a@b.example` or `Name <a@b.example>`) with no control characters, so no
/// value can start a header of its own.
fn mailbox(field: &str, raw: &str) -> Result<Mailbox, String> {
    if raw.chars().any(char::is_control) || raw.len() > 320 {
        return Err(format!("{field}: not an e-mail address"));
    }
    raw.parse::<Mailbox>()
        .map_err(|_| format!("{field}: {raw:?} is not an e-mail address"))
}

impl Smtp {
    fn port_or_default(&self) -> u16 {
        let default = match self.security {
            Security::Starttls => 587,
            Security::Tls => 465,
            Security::None => 25,
        };
        self.port
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or(default)
    }

    /// Checks every field (errors name it, under `smtp.`); returns the host the API shows.
    pub fn check(&self, insecure: &Insecure) -> Result<String, String> {
        crate::validate::host(&self.host).map_err(|e| format!("smtp.host: {e}"))?;
        if let Some(p) = self.port {
            if !(1..=65535).contains(&p) {
                return Err("smtp.port: 1 to 65535".into());
            }
        }
        let port = self.port_or_default();
        if self.security == Security::None {
            let addr = if self.host.contains(':') {
                format!("[{}]:{port}", self.host)
            } else {
                format!("{}:{port}", self.host)
            };
            if !insecure.allows(&addr) {
                return Err("smtp.security: none (no TLS) only for loopback or a network named with --insecure-registry".into());
            }
            if self.username.is_some() || self.password.is_some() {
                return Err("smtp.password: not sent without TLS (security none)".into());
            }
        }
        match (&self.username, &self.password) {
            (Some(_), None) => return Err("smtp.password: required with a username".into()),
            (None, Some(_)) => return Err("smtp.username: required with a password".into()),
            _ => {}
        }
        for (field, v) in [("username", &self.username), ("password", &self.password)] {
            if let Some(v) = v {
                if v.is_empty() || v.chars().count() > 256 || v.chars().any(char::is_control) {
                    return Err(format!(
                        "smtp.{field}: 1 to 256 characters, no control characters"
                    ));
                }
            }
        }
        mailbox("smtp.from", &self.from)?;
        if self.to.is_empty() || self.to.len() > MAX_RECIPIENTS {
            return Err(format!("smtp.to: 1 to {MAX_RECIPIENTS} addresses"));
        }
        for (i, t) in self.to.iter().enumerate() {
            mailbox(&format!("smtp.to[{i}]"), t)?;
        }
        Ok(self.host.clone())
    }

    /// Sends one message; the error names the server and what it said, never the
    /// credentials.
    pub async fn send(&self, subject: &str, text: String) -> Result<(), String> {
        let mut msg = Message::builder()
            .from(mailbox("from", &self.from)?)
            // Names and error texts in the summary come from users and agents.
            .subject(subject.replace(|c: char| c.is_control(), " "));
        for t in &self.to {
            msg = msg.to(mailbox("to", t)?);
        }
        let msg = msg
            .header(ContentType::TEXT_PLAIN)
            .body(text)
            .map_err(|e| format!("cannot build the message: {e}"))?;
        let builder = match self.security {
            Security::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&self.host),
            Security::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&self.host),
            Security::None => Ok(AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(
                &self.host,
            )),
        }
        .map_err(|e| format!("{}: {e}", self.host))?;
        let mut builder = builder
            .port(self.port_or_default())
            .timeout(Some(Duration::from_secs(10)));
        if let (Some(u), Some(p)) = (&self.username, &self.password) {
            builder = builder.credentials(Credentials::new(u.clone(), p.clone()));
        }
        builder
            .build()
            .send(msg)
            .await
            .map(|_| ())
            .map_err(|e| format!("{}:{}: {e}", self.host, self.port_or_default()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smtp(v: serde_json::Value) -> Result<Smtp, String> {
        serde_json::from_value(v).map_err(|e| e.to_string())
    }

    #[test]
    fn a_configuration_is_checked_field_by_field() {
        let none = Insecure::default();
        let ok = smtp(serde_json::json!({
            "host": "smtp.example.com", "username": "ops", "password": "pw",
            "from": "Mezzanine <mz@example.com>", "to": ["ops@example.com"]
        }))
        .expect("parses");
        assert_eq!(ok.check(&none).as_deref(), Ok("smtp.example.com"));
        assert_eq!(ok.port_or_default(), 587);
        let refused =
            |v: serde_json::Value| smtp(v).expect("parses").check(&none).expect_err("refused");
        assert!(refused(serde_json::json!({
            "host": "smtp.example.com", "from": "mz@example.com", "to": ["a@b.example\r\nBcc: x@y.example"]
        }))
        .starts_with("smtp.to[0]"));
        assert!(refused(serde_json::json!({
            "host": "smtp.example.com", "security": "none", "from": "mz@example.com", "to": ["a@b.example"]
        }))
        .starts_with("smtp.security"));
        assert!(refused(serde_json::json!({
            "host": "127.0.0.1", "security": "none", "username": "u", "password": "p",
            "from": "mz@example.com", "to": ["a@b.example"]
        }))
        .starts_with("smtp.password"));
        assert!(refused(serde_json::json!({
            "host": "smtp.example.com", "port": 70000, "from": "mz@example.com", "to": ["a@b.example"]
        }))
        .starts_with("smtp.port"));
        assert!(refused(serde_json::json!({
            "host": "bad host", "from": "mz@example.com", "to": ["a@b.example"]
        }))
        .starts_with("smtp.host"));
        assert!(refused(serde_json::json!({
            "host": "smtp.example.com", "from": "nobody", "to": ["a@b.example"]
        }))
        .starts_with("smtp.from"));
        assert!(refused(serde_json::json!({
            "host": "smtp.example.com", "from": "mz@example.com", "to": []
        }))
        .starts_with("smtp.to"));
        assert!(smtp(serde_json::json!({
            "host": "h", "from": "a@b.example", "to": [], "cc": []
        }))
        .is_err());
    }
}
