//! Contabo API v1: the OAuth password grant (token cached, refreshed before it expires),
//! instances (list, get, create, rename, power actions), snapshots and secrets. Every
//! request carries a fresh `x-request-id`; answers are `{data: [...], _pagination}`, with
//! `data` a list even for one object.

use super::check::{self, invalid};
use super::{Api, Credentials, ProviderError, Result, MAX_PAGES};
use reqwest::Method;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::time::{Duration, Instant};

/// Contabo's token endpoint (its Keycloak realm).
pub const AUTH_URL: &str =
    "https://auth.contabo.com/auth/realms/contabo/protocol/openid-connect/token";

/// Power actions on an instance.
pub const ACTIONS: &[&str] = &["start", "stop", "restart", "shutdown"];

/// Contabo's page size bound for our lists.
const PAGE_SIZE: usize = 100;

pub struct Contabo(pub(crate) Api);

/// An access token and the credentials it was issued for.
pub struct CachedToken {
    for_creds: [u8; 32],
    token: String,
    refresh_at: Instant,
}

fn fingerprint(c: &Credentials) -> [u8; 32] {
    let text = serde_json::to_vec(c).unwrap_or_default();
    crate::crypto::sha256(&text)
}

/// The access token for `creds`: the cached one until a minute before it expires, else
/// a new one from the password grant.
pub(crate) async fn token(
    http: &reqwest::Client,
    creds: &Credentials,
    timeout: Duration,
    cache: &mut Option<CachedToken>,
) -> Result<String> {
    let fp = fingerprint(creds);
    if let Some(c) = cache.as_ref() {
        if c.for_creds == fp && Instant::now() < c.refresh_at {
            return Ok(c.token.clone());
        }
    }
    let url = creds.auth_url.as_deref().unwrap_or(AUTH_URL);
    let form = [
        ("client_id", creds.client_id.as_deref().unwrap_or_default()),
        (
            "client_secret",
            creds.client_secret.as_deref().unwrap_or_default(),
        ),
        ("username", creds.username.as_deref().unwrap_or_default()),
        ("password", creds.password.as_deref().unwrap_or_default()),
        ("grant_type", "password"),
    ];
    let resp = http
        .post(url)
        .form(&form)
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| {
            if e.is_timeout() {
                ProviderError::Timeout {
                    provider: "Contabo",
                    secs: timeout.as_secs(),
                }
            } else {
                ProviderError::Upstream {
                    provider: "Contabo",
                    message: format!(
                        "cannot reach the token endpoint: {}",
                        super::error_chain(&e)
                    ),
                }
            }
        })?;
    let status = resp.status();
    let v: Value = resp.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        // OAuth errors: {"error": "invalid_grant", "error_description": "…"}.
        let why = v
            .get("error_description")
            .or_else(|| v.get("error"))
            .and_then(Value::as_str)
            .unwrap_or("no reason given")
            .chars()
            .filter(|c| !c.is_control())
            .take(300)
            .collect::<String>();
        return Err(if status.as_u16() == 400 || status.as_u16() == 401 {
            ProviderError::Refused {
                provider: "Contabo",
                message: why,
            }
        } else {
            ProviderError::Upstream {
                provider: "Contabo",
                message: format!("the token endpoint answered {status}: {why}"),
            }
        });
    }
    let access = v
        .get("access_token")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or(ProviderError::Upstream {
            provider: "Contabo",
            message: "the token endpoint answered no access_token".into(),
        })?
        .to_owned();
    let lifetime = v.get("expires_in").and_then(Value::as_u64).unwrap_or(300);
    *cache = Some(CachedToken {
        for_creds: fp,
        token: access.clone(),
        refresh_at: Instant::now() + Duration::from_secs(lifetime.saturating_sub(60)),
    });
    Ok(access)
}

/// `POST /v1/compute/instances` as our API takes it: Contabo's field names.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NewInstance {
    #[serde(default, deserialize_with = "super::whole")]
    pub period: Option<i64>,
    #[serde(default, deserialize_with = "crate::api::present")]
    pub image_id: Option<String>,
    #[serde(default, deserialize_with = "crate::api::present")]
    pub product_id: Option<String>,
    #[serde(default, deserialize_with = "crate::api::present")]
    pub region: Option<String>,
    #[serde(default, deserialize_with = "crate::api::present")]
    pub ssh_keys: Option<Vec<Value>>,
    #[serde(default, deserialize_with = "super::whole")]
    pub root_password: Option<i64>,
    #[serde(default, deserialize_with = "crate::api::present")]
    pub user_data: Option<String>,
    #[serde(default, deserialize_with = "crate::api::present")]
    pub display_name: Option<String>,
    #[serde(default, deserialize_with = "crate::api::present")]
    pub default_user: Option<String>,
    /// Ours, never sent: see the API's create route.
    #[serde(default)]
    pub adopt: bool,
}

const REGIONS: &[&str] = &[
    "EU",
    "US-central",
    "US-east",
    "US-west",
    "SIN",
    "UK",
    "AUS",
    "JPN",
    "IND",
];

impl NewInstance {
    pub fn body(&self) -> Result<Value> {
        let period = self
            .period
            .ok_or_else(|| invalid("period", "required (months: 1, 3, 6 or 12)"))?;
        if ![1, 3, 6, 12].contains(&period) {
            return Err(invalid("period", "1, 3, 6 or 12 (months)"));
        }
        let mut b = Map::new();
        b.insert("period".into(), json!(period));
        if let Some(i) = &self.image_id {
            check::text("imageId", i, 64)?;
            if i.is_empty() || !i.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-') {
                return Err(invalid("imageId", "an image id"));
            }
            b.insert("imageId".into(), json!(i));
        }
        if let Some(p) = &self.product_id {
            check::slug("productId", p)?;
            b.insert("productId".into(), json!(p));
        }
        if let Some(r) = &self.region {
            if !REGIONS.contains(&r.as_str()) {
                return Err(invalid("region", &format!("one of {}", REGIONS.join(", "))));
            }
            b.insert("region".into(), json!(r));
        }
        if let Some(k) = &self.ssh_keys {
            // Secret ids; JSON may write 5 as 5.0.
            let ids: Option<Vec<i64>> = k
                .iter()
                .map(|v| {
                    v.as_i64()
                        .or_else(|| v.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64))
                        .filter(|id| (1..=i64::from(i32::MAX)).contains(id))
                })
                .collect();
            match ids {
                Some(ids) if ids.len() <= 20 => {
                    b.insert("sshKeys".into(), json!(ids));
                }
                _ => return Err(invalid("sshKeys", "at most 20 secret ids")),
            }
        }
        if let Some(p) = self.root_password {
            if p < 1 {
                return Err(invalid("rootPassword", "a secret id"));
            }
            b.insert("rootPassword".into(), json!(p));
        }
        if let Some(u) = &self.user_data {
            if u.chars().count() > 64 * 1024 {
                return Err(invalid("userData", "at most 65536 characters"));
            }
            b.insert("userData".into(), json!(u));
        }
        if let Some(n) = &self.display_name {
            check::text("displayName", n, 255)?;
            b.insert("displayName".into(), json!(n));
        }
        if let Some(u) = &self.default_user {
            if !matches!(u.as_str(), "root" | "admin" | "administrator") {
                return Err(invalid("defaultUser", "root, admin or administrator"));
            }
            b.insert("defaultUser".into(), json!(u));
        }
        Ok(Value::Object(b))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct InstancePatch {
    pub display_name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewSnapshot {
    pub name: String,
    #[serde(default, deserialize_with = "crate::api::present")]
    pub description: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewSecret {
    pub name: String,
    pub value: String,
    #[serde(rename = "type")]
    pub kind: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretPatch {
    #[serde(default, deserialize_with = "crate::api::present")]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "crate::api::present")]
    pub value: Option<String>,
}

fn secret_value(v: &str) -> Result<()> {
    if !(8..=4096).contains(&v.chars().count()) {
        return Err(invalid("value", "8 to 4096 characters"));
    }
    Ok(())
}

fn num_id(field: &str, raw: &str) -> Result<u64> {
    raw.parse::<u64>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| invalid(field, "a number"))
}

fn snapshot_id(raw: &str) -> Result<&str> {
    let ok = !raw.is_empty()
        && raw.len() <= 64
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'));
    if !ok {
        return Err(invalid("snapshot_id", "a snapshot id"));
    }
    Ok(raw)
}

/// A secret as our API shows it: without its value (the password or key it holds).
fn hide_value(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.remove("value");
    }
    v
}

/// The one object of a `{data: [x]}` answer.
fn one(v: Value) -> Result<Value> {
    match v
        .get("data")
        .and_then(Value::as_array)
        .and_then(|d| d.first())
    {
        Some(x) => Ok(x.clone()),
        None => Err(ProviderError::Upstream {
            provider: "Contabo",
            message: "the answer has no data".into(),
        }),
    }
}

impl Contabo {
    /// `GET /v1/users/client`: proves the token works. Its answer holds the client
    /// secret, so nothing of it is kept or passed on.
    pub async fn verify(&self) -> Result<()> {
        self.0
            .call(Method::GET, "/v1/users/client", &[], None)
            .await
            .map(drop)
    }

    async fn list(&self, path: &str) -> Result<Vec<Value>> {
        let mut out = Vec::new();
        for page in 1..=MAX_PAGES {
            let q = [("page", page.to_string()), ("size", PAGE_SIZE.to_string())];
            let mut v = self.0.call(Method::GET, path, &q, None).await?;
            let pages = v.pointer("/_pagination/totalPages").and_then(Value::as_u64);
            let items = match v.get_mut("data").map(Value::take) {
                Some(Value::Array(items)) => items,
                _ => {
                    return Err(ProviderError::Upstream {
                        provider: "Contabo",
                        message: format!("{path} did not answer a data list"),
                    })
                }
            };
            let short = items.len() < PAGE_SIZE;
            out.extend(items);
            if short || pages.is_some_and(|p| page as u64 >= p) {
                return Ok(out);
            }
        }
        Err(ProviderError::Upstream {
            provider: "Contabo",
            message: format!("more than {} items in {path}", MAX_PAGES * PAGE_SIZE),
        })
    }

    pub async fn instances(&self) -> Result<Vec<Value>> {
        self.list("/v1/compute/instances").await
    }

    pub async fn instance(&self, id: &str) -> Result<Value> {
        let path = format!("/v1/compute/instances/{}", num_id("id", id)?);
        one(self.0.call(Method::GET, &path, &[], None).await?)
    }

    pub async fn create_instance(&self, b: &NewInstance) -> Result<Value> {
        let body = b.body()?;
        one(self
            .0
            .call(Method::POST, "/v1/compute/instances", &[], Some(&body))
            .await?)
    }

    pub async fn rename_instance(&self, id: &str, p: &InstancePatch) -> Result<Value> {
        check::text("displayName", &p.display_name, 255)?;
        let path = format!("/v1/compute/instances/{}", num_id("id", id)?);
        let body = json!({ "displayName": p.display_name });
        one(self.0.call(Method::PATCH, &path, &[], Some(&body)).await?)
    }

    pub async fn instance_action(&self, id: &str, action: &str) -> Result<Value> {
        if !ACTIONS.contains(&action) {
            return Err(invalid("action", "start, stop, restart or shutdown"));
        }
        let path = format!(
            "/v1/compute/instances/{}/actions/{action}",
            num_id("id", id)?
        );
        one(self.0.call(Method::POST, &path, &[], None).await?)
    }

    pub async fn snapshots(&self, id: &str) -> Result<Vec<Value>> {
        let path = format!("/v1/compute/instances/{}/snapshots", num_id("id", id)?);
        self.list(&path).await
    }

    pub async fn create_snapshot(&self, id: &str, s: &NewSnapshot) -> Result<Value> {
        if s.name.is_empty() {
            return Err(invalid("name", "required"));
        }
        check::text("name", &s.name, 30)?;
        let mut body = json!({ "name": s.name });
        if let Some(d) = &s.description {
            if d.is_empty() {
                return Err(invalid("description", "1–255 characters"));
            }
            check::text("description", d, 255)?;
            body["description"] = json!(d);
        }
        let path = format!("/v1/compute/instances/{}/snapshots", num_id("id", id)?);
        one(self.0.call(Method::POST, &path, &[], Some(&body)).await?)
    }

    pub async fn delete_snapshot(&self, id: &str, snap: &str) -> Result<()> {
        let path = format!(
            "/v1/compute/instances/{}/snapshots/{}",
            num_id("id", id)?,
            snapshot_id(snap)?
        );
        self.0
            .call(Method::DELETE, &path, &[], None)
            .await
            .map(drop)
    }

    pub async fn rollback_snapshot(&self, id: &str, snap: &str) -> Result<Value> {
        let path = format!(
            "/v1/compute/instances/{}/snapshots/{}/rollback",
            num_id("id", id)?,
            snapshot_id(snap)?
        );
        one(self
            .0
            .call(Method::POST, &path, &[], Some(&json!({})))
            .await?)
    }

    pub async fn secrets(&self) -> Result<Vec<Value>> {
        Ok(self
            .list("/v1/secrets")
            .await?
            .into_iter()
            .map(hide_value)
            .collect())
    }

    pub async fn create_secret(&self, s: &NewSecret) -> Result<Value> {
        if s.name.is_empty() {
            return Err(invalid("name", "required"));
        }
        check::text("name", &s.name, 255)?;
        secret_value(&s.value)?;
        if !matches!(s.kind.as_str(), "password" | "ssh") {
            return Err(invalid("type", "password or ssh"));
        }
        let body = json!({ "name": s.name, "value": s.value, "type": s.kind });
        Ok(hide_value(one(self
            .0
            .call(Method::POST, "/v1/secrets", &[], Some(&body))
            .await?)?))
    }

    pub async fn update_secret(&self, id: &str, p: &SecretPatch) -> Result<Value> {
        let mut body = json!({});
        if let Some(n) = &p.name {
            if n.is_empty() {
                return Err(invalid("name", "1–255 characters"));
            }
            check::text("name", n, 255)?;
            body["name"] = json!(n);
        }
        if let Some(v) = &p.value {
            secret_value(v)?;
            body["value"] = json!(v);
        }
        if body.as_object().is_some_and(Map::is_empty) {
            return Err(invalid("name", "name or value to change"));
        }
        let path = format!("/v1/secrets/{}", num_id("id", id)?);
        Ok(hide_value(one(self
            .0
            .call(Method::PATCH, &path, &[], Some(&body))
            .await?)?))
    }

    pub async fn delete_secret(&self, id: &str) -> Result<()> {
        let path = format!("/v1/secrets/{}", num_id("id", id)?);
        self.0
            .call(Method::DELETE, &path, &[], None)
            .await
            .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_bodies_use_contabos_names_and_need_a_period() {
        let b: NewInstance = serde_json::from_value(
            json!({ "period": 1, "productId": "V45", "region": "EU", "displayName": "web" }),
        )
        .expect("instance");
        assert_eq!(
            b.body().expect("body"),
            json!({ "period": 1, "productId": "V45", "region": "EU", "displayName": "web" })
        );
        for (bad, field) in [
            (json!({}), "period"),
            (json!({ "period": 2 }), "period"),
            (json!({ "period": 1, "region": "Mars" }), "region"),
            (json!({ "period": 1, "defaultUser": "bob" }), "defaultUser"),
        ] {
            let b: NewInstance = serde_json::from_value(bad.clone()).expect("shape");
            assert!(
                b.body()
                    .expect_err("refused")
                    .to_string()
                    .starts_with(field),
                "{bad}"
            );
        }
        assert_eq!(
            hide_value(json!({ "secretId": 1, "value": "hunter22" })),
            json!({ "secretId": 1 })
        );
    }
}
