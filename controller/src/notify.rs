//! Notifications: events (a run failed or succeeded, a server went offline or came back,
//! a certificate could not be renewed) sent to the notifiers subscribed to them — a
//! webhook (JSON, HMAC-signed when it has a secret), Slack or Discord (their incoming
//! webhook shapes), or e-mail over SMTP (`email`). Each event is queued once per notifier
//! and delivered with retries and backoff; the queue is the delivery log the API shows.

pub mod email;

use crate::changes::{Change, Kind};
use crate::crypto::MasterKey;
use crate::store::{DeliveryRow, NotifierRow, Store};
use hmac::Mac;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Events a notifier may subscribe to (`test` is sent by the test button only).
pub const EVENTS: &[&str] = &[
    "run.failed",
    "run.succeeded",
    "server.offline",
    "server.online",
    "certificate.renewal_failed",
    "agent.upgrade_rolled_back",
    "image.update_available",
];

pub const KINDS: &[&str] = &["webhook", "slack", "discord", "email"];

/// A server's status and its upgrade's, as last seen by the event watcher.
type Seen = (String, Option<String>);

/// Attempts before a delivery is given up.
const MAX_ATTEMPTS: i64 = 6;

pub fn url_context(id: i64) -> String {
    format!("notifiers.url:{id}")
}

pub fn secret_context(id: i64) -> String {
    format!("notifiers.secret:{id}")
}

/// A notifier URL: https, or plain http for loopback and `--insecure-registry` networks;
/// no credentials in it. Returns its host (what the API shows instead of the URL).
pub fn check_url(raw: &str, insecure: &crate::images::Insecure) -> Result<String, String> {
    let url = reqwest::Url::parse(raw).map_err(|_| "url: not a URL".to_owned())?;
    let host = url.host_str().ok_or("url: no host")?.to_owned();
    if !url.username().is_empty() || url.password().is_some() {
        return Err("url: credentials do not belong in the URL (use secret)".into());
    }
    match url.scheme() {
        "https" => Ok(host),
        "http" => {
            let port = url.port_or_known_default().unwrap_or(80);
            if insecure.allows(&format!("{host}:{port}")) {
                Ok(host)
            } else {
                Err(
                    "url: plain http only for loopback or a network named with --insecure-registry"
                        .into(),
                )
            }
        }
        _ => Err("url: https (or http for loopback)".into()),
    }
}

struct Inner {
    store: Store,
    key: Arc<MasterKey>,
    http: reqwest::Client,
    wake: tokio::sync::Notify,
}

/// The notification service.
#[derive(Clone)]
pub struct Notifier(Arc<Inner>);

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier").finish_non_exhaustive()
    }
}

/// One line saying what happened, for chat messages.
fn summary(event: &str, details: &Value) -> String {
    let s = |k: &str| {
        details
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_owned()
    };
    match event {
        "run.failed" => format!(
            "Run #{} of {} on {} failed: {}",
            details["run_id"],
            s("workflow"),
            s("server"),
            s("error")
        ),
        "run.succeeded" => format!(
            "Run #{} of {} on {} succeeded",
            details["run_id"],
            s("workflow"),
            s("server")
        ),
        "server.offline" => format!("Server {} is offline", s("server")),
        "server.online" => format!("Server {} is online again", s("server")),
        "agent.upgrade_rolled_back" => format!(
            "The agent upgrade of {} to {} was rolled back: {}",
            s("server"),
            s("to"),
            s("error")
        ),
        "certificate.renewal_failed" => format!(
            "The certificate of pool {} could not be renewed: {}",
            s("pool"),
            s("error")
        ),
        "image.update_available" => format!(
            "An update of {} is available for {}",
            s("image"),
            s("server")
        ),
        "test" => "A test message from Mezzanine".to_owned(),
        other => other.to_owned(),
    }
}

/// An e-mail's body: the summary, then the event's details one per line.
fn mail_text(line: &str, payload: &Value) -> String {
    let mut text = format!("{line}\n\n");
    if let Some(o) = payload.as_object() {
        for (k, v) in o {
            let v = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            text.push_str(&format!("{k}: {v}\n"));
        }
    }
    text.push_str("\n-- \nSent by Mezzanine\n");
    text
}

impl Notifier {
    pub fn new(store: Store, key: Arc<MasterKey>) -> Notifier {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("mezzanine/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        Notifier(Arc::new(Inner {
            store,
            key,
            http,
            wake: tokio::sync::Notify::new(),
        }))
    }

    /// Queues `event` about `subject` for every notifier subscribed to it (once each).
    pub async fn emit(&self, event: &str, subject: &str, details: Value) {
        let notifiers = match self.0.store.notifiers().await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(event, error = %e, "cannot read notifiers");
                return;
            }
        };
        for n in notifiers
            .iter()
            .filter(|n| n.events.iter().any(|e| e == event))
        {
            self.queue(n.id, event, subject, &details).await;
        }
    }

    async fn queue(&self, notifier: i64, event: &str, subject: &str, details: &Value) {
        let now = crate::time::now_secs();
        let mut payload = json!({ "event": event, "at": crate::time::rfc3339(now) });
        if let (Some(p), Some(d)) = (payload.as_object_mut(), details.as_object()) {
            for (k, v) in d {
                p.insert(k.clone(), v.clone());
            }
        }
        match self
            .0
            .store
            .queue_delivery(notifier, event, subject, &payload.to_string(), now)
            .await
        {
            Ok(true) => self.0.wake.notify_one(),
            Ok(false) => {}
            Err(e) => tracing::warn!(event, error = %e, "cannot queue a notification"),
        }
    }

    /// Queues a `test` event for one notifier.
    pub async fn test(&self, notifier: i64) {
        let subject = format!("test:{}", crate::time::now_ms());
        self.queue(
            notifier,
            "test",
            &subject,
            &json!({ "message": "a test from Mezzanine" }),
        )
        .await;
    }

    /// Follows the change feed (runs ending, servers going offline and back) and delivers
    /// what is due, until `closing`.
    pub async fn run(self, closing: tokio_util::sync::CancellationToken) {
        let watcher = {
            let me = self.clone();
            let closing = closing.clone();
            tokio::spawn(async move { me.watch(closing).await })
        };
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                () = closing.cancelled() => break,
                _ = tick.tick() => {}
                () = self.0.wake.notified() => {}
            }
            self.deliver_due().await;
        }
        let _ = watcher.await;
    }

    async fn watch(&self, closing: tokio_util::sync::CancellationToken) {
        use tokio::sync::broadcast::error::RecvError;
        let (mut live, _) = self.0.store.changes().subscribe(None);
        // The last state each server was seen in: only a change of it is an event.
        let mut seen: HashMap<i64, Seen> = match self.0.store.servers().await {
            Ok(s) => s
                .into_iter()
                .map(|s| (s.id, (s.status, s.upgrade.map(|u| u.status))))
                .collect(),
            Err(_) => HashMap::new(),
        };
        loop {
            let change = tokio::select! {
                () = closing.cancelled() => return,
                got = live.recv() => match got {
                    Ok(c) => c,
                    Err(RecvError::Lagged(_)) => continue,
                    Err(RecvError::Closed) => return,
                },
            };
            let Change::Entity { kind, id, .. } = change else {
                continue;
            };
            match kind {
                Kind::Run => self.run_changed(id).await,
                Kind::Server => self.server_changed(id, &mut seen).await,
                _ => {}
            }
        }
    }

    async fn run_changed(&self, id: i64) {
        let Ok(Some(run)) = self.0.store.run(id).await else {
            return;
        };
        let event = match run.status.as_str() {
            "failed" => "run.failed",
            "succeeded" => "run.succeeded",
            _ => return,
        };
        let workflow = self
            .0
            .store
            .workflow(run.workflow_id)
            .await
            .ok()
            .flatten()
            .map(|w| w.name)
            .unwrap_or_default();
        let server_id = run.server_id;
        let server = match server_id {
            Some(s) => self.0.store.server(s).await.ok().flatten().map(|s| s.name),
            None => None,
        };
        self.emit(
            event,
            &format!("run:{id}"),
            json!({ "run_id": id, "workflow_id": run.workflow_id, "workflow": workflow,
                    "server_id": server_id, "server": server, "status": run.status,
                    "error": run.error, "trigger": run.trigger }),
        )
        .await;
    }

    async fn server_changed(&self, id: i64, seen: &mut HashMap<i64, Seen>) {
        let Ok(Some(s)) = self.0.store.server(id).await else {
            seen.remove(&id);
            return;
        };
        let upgrade = s.upgrade.as_ref().map(|u| u.status.clone());
        let upgrading = upgrade.as_deref() == Some("upgrading");
        let (before, before_upgrade) = seen.remove(&id).unzip();
        let before_upgrade = before_upgrade.flatten();
        // An agent restarting into its upgrade is not news: its server stays "online"
        // here, so coming back is not news either.
        let status = if upgrading && s.status == "offline" {
            before.clone().unwrap_or_else(|| s.status.clone())
        } else {
            s.status.clone()
        };
        seen.insert(id, (status.clone(), upgrade.clone()));
        if let (Some("upgrading"), Some("rolled_back"), Some(u)) =
            (before_upgrade.as_deref(), upgrade.as_deref(), &s.upgrade)
        {
            self.emit(
                "agent.upgrade_rolled_back",
                &format!("server:{id}:upgrade:{}", u.started_at),
                json!({ "server_id": id, "server": s.name, "from": u.from, "to": u.to,
                        "error": u.error }),
            )
            .await;
        }
        let event = match (before.as_deref(), status.as_str()) {
            (Some("online"), "offline") => "server.offline",
            // Back after being offline (a new server's first attach is not news).
            (Some("offline"), "online") => "server.online",
            _ => return,
        };
        self.emit(
            event,
            &format!("server:{id}:{}", crate::time::now_ms()),
            json!({ "server_id": id, "server": s.name, "status": s.status }),
        )
        .await;
    }

    async fn deliver_due(&self) {
        let now = crate::time::now_secs();
        let due = match self.0.store.due_deliveries(now, 20).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read due notifications");
                return;
            }
        };
        for d in due {
            let outcome = match self.0.store.notifier(d.notifier_id).await {
                Ok(Some(n)) => self.send(&n, &d).await,
                Ok(None) => continue,
                Err(e) => Err(e.to_string()),
            };
            let now = crate::time::now_secs();
            let recorded = match &outcome {
                Ok(()) => self.0.store.delivery_attempted(d.id, Ok(()), now).await,
                Err(e) => {
                    let next = (d.attempts + 1 < MAX_ATTEMPTS)
                        .then(|| now + (5_i64 << d.attempts.clamp(0, 10)));
                    tracing::info!(notifier = d.notifier_id, event = %d.event, error = %e, "notification not delivered");
                    self.0
                        .store
                        .delivery_attempted(d.id, Err((e.as_str(), next)), now)
                        .await
                }
            };
            if let Err(e) = recorded {
                tracing::warn!(error = %e, "cannot record a notification attempt");
            }
        }
    }

    async fn send(&self, n: &NotifierRow, d: &DeliveryRow) -> Result<(), String> {
        let url = self
            .0
            .key
            .open(&url_context(n.id), &n.url_sealed)
            .map_err(|_| "the notifier's URL does not open with this master key".to_owned())?;
        let payload: Value = serde_json::from_str(&d.payload).unwrap_or_default();
        if n.kind == "email" {
            // An e-mail notifier's sealed destination is its SMTP configuration.
            let smtp: email::Smtp = serde_json::from_slice(&url)
                .map_err(|_| "the notifier's SMTP settings do not read".to_owned())?;
            let line = summary(&d.event, &payload);
            return smtp.send(&line, mail_text(&line, &payload)).await;
        }
        let url =
            String::from_utf8(url).map_err(|_| "the notifier's URL is not text".to_owned())?;
        let body = match n.kind.as_str() {
            "slack" => json!({ "text": summary(&d.event, &payload) }).to_string(),
            "discord" => json!({ "content": summary(&d.event, &payload) }).to_string(),
            _ => d.payload.clone(),
        };
        let mut req = self
            .0
            .http
            .post(&url)
            .header("content-type", "application/json")
            .header("x-mezzanine-event", &d.event)
            .header("x-mezzanine-delivery", d.id.to_string());
        if let Some(sealed) = &n.secret_sealed {
            let secret = self
                .0
                .key
                .open(&secret_context(n.id), sealed)
                .map_err(|_| {
                    "the notifier's secret does not open with this master key".to_owned()
                })?;
            let mut mac =
                hmac::Hmac::<sha2::Sha256>::new_from_slice(&secret).map_err(|e| e.to_string())?;
            mac.update(body.as_bytes());
            req = req.header(
                "x-mezzanine-signature-256",
                format!("sha256={}", hex::encode(mac.finalize().into_bytes())),
            );
        }
        let resp = req.body(body).send().await.map_err(|e| {
            if e.is_timeout() {
                "no answer within 10 s".to_owned()
            } else {
                // The URL may hold a secret (Slack's, Discord's): name only its host.
                format!("cannot reach {}", n.url_host)
            }
        })?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(format!("{} answered {}", n.url_host, resp.status()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_https_or_loopback_and_carry_no_credentials() {
        let none = crate::images::Insecure::default();
        assert_eq!(
            check_url("https://hooks.slack.com/services/T/B/X", &none).as_deref(),
            Ok("hooks.slack.com")
        );
        assert!(check_url("http://127.0.0.1:9000/hook", &none).is_ok());
        assert!(check_url("http://hooks.example.com/", &none).is_err());
        assert!(check_url("https://u:p@hooks.example.com/", &none).is_err());
        assert!(check_url("ftp://127.0.0.1/", &none).is_err());
    }

    #[test]
    fn chat_messages_say_what_happened() {
        let d = json!({ "run_id": 7, "workflow": "site", "server": "web-1", "error": "step 1 exited 3" });
        assert_eq!(
            summary("run.failed", &d),
            "Run #7 of site on web-1 failed: step 1 exited 3"
        );
        assert_eq!(
            summary("server.offline", &json!({ "server": "db" })),
            "Server db is offline"
        );
    }
}
