//! DigitalOcean API v2: droplets (list, get, create, delete, power actions), domains and
//! their records. Requests are checked here first and carry only fields the published
//! API defines; lists follow `links.pages.next` to the end (bounded).

use super::check::{self, invalid};
use super::{Api, ProviderError, Result, MAX_PAGES};
use reqwest::Method;
use serde::Deserialize;
use serde_json::{json, Map, Value};

/// The largest page DigitalOcean serves.
const PER_PAGE: usize = 200;

pub struct DigitalOcean(pub(crate) Api);

/// `POST /droplets` as our API takes it (DigitalOcean's field names). `adopt` is ours:
/// the caller makes a server record and writes the agent install into `user_data`; it is
/// never sent.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewDroplet {
    pub name: String,
    pub size: String,
    pub image: Value,
    #[serde(default, deserialize_with = "crate::api::present")]
    pub region: Option<String>,
    #[serde(default, deserialize_with = "crate::api::present")]
    pub ssh_keys: Option<Vec<Value>>,
    #[serde(default, deserialize_with = "crate::api::present")]
    pub user_data: Option<String>,
    #[serde(default, deserialize_with = "crate::api::present")]
    pub tags: Option<Vec<String>>,
    #[serde(default, deserialize_with = "crate::api::present")]
    pub backups: Option<bool>,
    #[serde(default, deserialize_with = "crate::api::present")]
    pub ipv6: Option<bool>,
    #[serde(default, deserialize_with = "crate::api::present")]
    pub monitoring: Option<bool>,
    #[serde(default)]
    pub adopt: bool,
}

/// DigitalOcean's user data limit.
const USER_DATA_MAX: usize = 64 * 1024;

impl NewDroplet {
    /// The body DigitalOcean gets: checked values only, `adopt` left out.
    pub fn body(&self) -> Result<Value> {
        // The API's own pattern for a droplet name (a host name, dots allowed).
        let n = &self.name;
        let name_ok = !n.is_empty()
            && n.len() <= 255
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
            && n.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric())
            && !n.starts_with(['.', '-']);
        if !name_ok {
            return Err(invalid(
                "name",
                "a host name: letters, digits, '.' and '-', ending in a letter or digit",
            ));
        }
        check::slug("size", &self.size)?;
        match &self.image {
            Value::String(s) => check::slug("image", s)?,
            Value::Number(n) if n.as_u64().is_some() => {}
            _ => return Err(invalid("image", "an image slug or a numeric image id")),
        }
        let mut body = Map::new();
        body.insert("name".into(), json!(n));
        body.insert("size".into(), json!(self.size));
        body.insert("image".into(), self.image.clone());
        if let Some(r) = &self.region {
            check::slug("region", r)?;
            body.insert("region".into(), json!(r));
        }
        if let Some(keys) = &self.ssh_keys {
            if keys.len() > 50 {
                return Err(invalid("ssh_keys", "at most 50 keys"));
            }
            for (i, k) in keys.iter().enumerate() {
                let ok = match k {
                    Value::Number(n) => n.as_u64().is_some(),
                    // A fingerprint `3b:16:…` (md5, hex pairs).
                    Value::String(s) => {
                        !s.is_empty()
                            && s.len() <= 100
                            && s.bytes().all(|b| b.is_ascii_hexdigit() || b == b':')
                    }
                    _ => false,
                };
                if !ok {
                    return Err(invalid(
                        &format!("ssh_keys[{i}]"),
                        "a key id or an md5 fingerprint",
                    ));
                }
            }
            body.insert("ssh_keys".into(), json!(keys));
        }
        if let Some(u) = &self.user_data {
            if u.len() > USER_DATA_MAX {
                return Err(invalid("user_data", "at most 64 KiB"));
            }
            body.insert("user_data".into(), json!(u));
        }
        if let Some(tags) = &self.tags {
            for (i, t) in tags.iter().enumerate() {
                let ok = !t.is_empty()
                    && t.len() <= 255
                    && t.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'-' | b'_'));
                if !ok {
                    return Err(invalid(
                        &format!("tags[{i}]"),
                        "letters, digits, ':', '-' and '_'",
                    ));
                }
            }
            body.insert("tags".into(), json!(tags));
        }
        for (k, v) in [
            ("backups", self.backups),
            ("ipv6", self.ipv6),
            ("monitoring", self.monitoring),
        ] {
            if let Some(v) = v {
                body.insert(k.into(), json!(v));
            }
        }
        Ok(Value::Object(body))
    }
}

/// Power actions our API offers (a subset of DigitalOcean's action types).
pub const ACTIONS: &[&str] = &["power_on", "power_off", "reboot", "shutdown", "power_cycle"];

/// A record as created or patched through our API.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordBody {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    #[serde(default, deserialize_with = "crate::api::present")]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "crate::api::present")]
    pub data: Option<String>,
    #[serde(default, deserialize_with = "super::whole")]
    pub priority: Option<i64>,
    #[serde(default, deserialize_with = "super::whole")]
    pub port: Option<i64>,
    #[serde(default, deserialize_with = "super::whole")]
    pub ttl: Option<i64>,
    #[serde(default, deserialize_with = "super::whole")]
    pub weight: Option<i64>,
    #[serde(default, deserialize_with = "super::whole")]
    pub flags: Option<i64>,
    #[serde(default, deserialize_with = "crate::api::present")]
    pub tag: Option<String>,
}

impl RecordBody {
    /// The body DigitalOcean gets. Both create and update need `type` (the published
    /// spec requires it on PATCH too); create also needs `name` and `data`.
    pub fn body(&self, create: bool) -> Result<Value> {
        let kind = self
            .kind
            .as_deref()
            .ok_or_else(|| invalid("type", "required"))?;
        check::record_type("type", kind)?;
        let mut b = Map::new();
        b.insert("type".into(), json!(kind));
        match &self.name {
            Some(n) => {
                check::dns_name("name", n)?;
                b.insert("name".into(), json!(n));
            }
            None if create => return Err(invalid("name", "required")),
            None => {}
        }
        match &self.data {
            Some(d) => {
                if d.is_empty() {
                    return Err(invalid("data", "required"));
                }
                check::text("data", d, 4096)?;
                b.insert("data".into(), json!(d));
            }
            None if create => return Err(invalid("data", "required")),
            None => {}
        }
        for (field, v, lo, hi) in [
            ("priority", self.priority, 0, 65535),
            ("port", self.port, 0, 65535),
            ("ttl", self.ttl, 30, 2_147_483_647),
            ("weight", self.weight, 0, 65535),
            ("flags", self.flags, 0, 255),
        ] {
            if let Some(v) = v {
                if !(lo..=hi).contains(&v) {
                    return Err(invalid(field, &format!("{lo}–{hi}")));
                }
                b.insert(field.into(), json!(v));
            }
        }
        if let Some(t) = &self.tag {
            if !matches!(t.as_str(), "issue" | "issuewild" | "iodef") {
                return Err(invalid("tag", "issue, issuewild or iodef"));
            }
            b.insert("tag".into(), json!(t));
        }
        Ok(Value::Object(b))
    }
}

fn droplet_path(id: &str) -> Result<String> {
    match id.parse::<u64>() {
        Ok(n) if n > 0 => Ok(format!("/droplets/{n}")),
        _ => Err(invalid("id", "a droplet id (a number)")),
    }
}

fn domain_path(name: &str) -> Result<String> {
    check::dns_name("name", name)?;
    if name == "@" || name.starts_with('*') {
        return Err(invalid("name", "a domain name"));
    }
    Ok(format!("/domains/{}", name.to_ascii_lowercase()))
}

fn record_path(domain: &str, id: &str) -> Result<String> {
    match id.parse::<u64>() {
        Ok(n) if n > 0 => Ok(format!("{}/records/{n}", domain_path(domain)?)),
        _ => Err(invalid("record_id", "a record id (a number)")),
    }
}

/// The object under `key`, or a 502 saying the answer was not the documented shape.
fn field(mut v: Value, key: &str) -> Result<Value> {
    match v.get_mut(key).map(Value::take) {
        Some(x) if !x.is_null() => Ok(x),
        _ => Err(ProviderError::Upstream {
            provider: "DigitalOcean",
            message: format!("the answer has no `{key}`"),
        }),
    }
}

impl DigitalOcean {
    /// `GET /account`: the e-mail (or uuid) the token belongs to.
    pub async fn account(&self) -> Result<Option<String>> {
        let v = self.0.call(Method::GET, "/account", &[], None).await?;
        let a = field(v, "account")?;
        Ok(a.get("email")
            .or_else(|| a.get("uuid"))
            .and_then(Value::as_str)
            .map(str::to_owned))
    }

    /// Every item of a paginated list under `key`.
    async fn list(&self, path: &str, key: &str) -> Result<Vec<Value>> {
        let mut out = Vec::new();
        for page in 1..=MAX_PAGES {
            let q = [
                ("page", page.to_string()),
                ("per_page", PER_PAGE.to_string()),
            ];
            let mut v = self.0.call(Method::GET, path, &q, None).await?;
            let items = match v.get_mut(key).map(Value::take) {
                Some(Value::Array(items)) => items,
                _ => {
                    return Err(ProviderError::Upstream {
                        provider: "DigitalOcean",
                        message: format!("the answer has no `{key}` list"),
                    })
                }
            };
            let short = items.len() < PER_PAGE;
            out.extend(items);
            let next = v.pointer("/links/pages/next").is_some_and(|n| !n.is_null());
            if !next || short {
                return Ok(out);
            }
        }
        Err(ProviderError::Upstream {
            provider: "DigitalOcean",
            message: format!("more than {} items in {path}", MAX_PAGES * PER_PAGE),
        })
    }

    pub async fn droplets(&self) -> Result<Vec<Value>> {
        self.list("/droplets", "droplets").await
    }

    pub async fn droplet(&self, id: &str) -> Result<Value> {
        let v = self
            .0
            .call(Method::GET, &droplet_path(id)?, &[], None)
            .await?;
        field(v, "droplet")
    }

    /// `POST /droplets` with a body from `NewDroplet::body`.
    pub async fn create_droplet(&self, body: &Value) -> Result<Value> {
        let v = self
            .0
            .call(Method::POST, "/droplets", &[], Some(body))
            .await?;
        field(v, "droplet")
    }

    pub async fn delete_droplet(&self, id: &str) -> Result<()> {
        self.0
            .call(Method::DELETE, &droplet_path(id)?, &[], None)
            .await?;
        Ok(())
    }

    pub async fn droplet_action(&self, id: &str, kind: &str) -> Result<Value> {
        if !ACTIONS.contains(&kind) {
            return Err(invalid("type", &format!("one of {}", ACTIONS.join(", "))));
        }
        let path = format!("{}/actions", droplet_path(id)?);
        let v = self
            .0
            .call(Method::POST, &path, &[], Some(&json!({ "type": kind })))
            .await?;
        field(v, "action")
    }

    pub async fn domains(&self) -> Result<Vec<Value>> {
        self.list("/domains", "domains").await
    }

    /// `POST /domains {name, ip_address?}`.
    pub async fn create_domain(&self, name: &str, ip: Option<&str>) -> Result<Value> {
        domain_path(name)?;
        let mut body = json!({ "name": name.to_ascii_lowercase() });
        if let Some(ip) = ip {
            ip.parse::<std::net::IpAddr>()
                .map_err(|_| invalid("ip_address", "an IP address"))?;
            body["ip_address"] = json!(ip);
        }
        let v = self
            .0
            .call(Method::POST, "/domains", &[], Some(&body))
            .await?;
        field(v, "domain")
    }

    pub async fn records(&self, domain: &str) -> Result<Vec<Value>> {
        let path = format!("{}/records", domain_path(domain)?);
        self.list(&path, "domain_records").await
    }

    pub async fn create_record(&self, domain: &str, r: &RecordBody) -> Result<Value> {
        let path = format!("{}/records", domain_path(domain)?);
        let body = r.body(true)?;
        let v = self.0.call(Method::POST, &path, &[], Some(&body)).await?;
        field(v, "domain_record")
    }

    pub async fn update_record(&self, domain: &str, id: &str, r: &RecordBody) -> Result<Value> {
        let path = record_path(domain, id)?;
        let body = r.body(false)?;
        let v = self.0.call(Method::PATCH, &path, &[], Some(&body)).await?;
        field(v, "domain_record")
    }

    pub async fn delete_record(&self, domain: &str, id: &str) -> Result<()> {
        let path = record_path(domain, id)?;
        self.0.call(Method::DELETE, &path, &[], None).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn droplet(v: Value) -> Result<Value> {
        serde_json::from_value::<NewDroplet>(v)
            .map_err(|e| ProviderError::Invalid(e.to_string()))?
            .body()
    }

    #[test]
    fn droplet_bodies_carry_only_checked_fields() {
        let b = droplet(
            json!({ "name": "web-1", "size": "s-1vcpu-1gb", "image": "debian-12-x64",
            "region": "ams3", "tags": ["env:prod"] }),
        )
        .expect("body");
        assert_eq!(
            b,
            json!({ "name": "web-1", "size": "s-1vcpu-1gb", "image": "debian-12-x64", "region": "ams3", "tags": ["env:prod"] })
        );
        for (bad, field) in [
            (
                json!({ "name": "web;1", "size": "s", "image": "x" }),
                "name",
            ),
            (json!({ "name": "-web", "size": "s", "image": "x" }), "name"),
            (
                json!({ "name": "web", "size": "s 1", "image": "x" }),
                "size",
            ),
            (
                json!({ "name": "web", "size": "s", "image": true }),
                "image",
            ),
            (
                json!({ "name": "web", "size": "s", "image": "x", "ssh_keys": ["zz"] }),
                "ssh_keys[0]",
            ),
            (
                json!({ "name": "web", "size": "s", "image": "x", "tags": ["a b"] }),
                "tags[0]",
            ),
        ] {
            let e = droplet(bad.clone()).expect_err("refused").to_string();
            assert!(e.starts_with(field), "{bad}: {e}");
        }
        assert!(droplet(json!({ "name": "web", "size": "s", "image": "x", "color": 1 })).is_err());
    }

    #[test]
    fn records_need_a_type_and_checked_values() {
        let r: RecordBody = serde_json::from_value(
            json!({ "type": "A", "name": "www", "data": "192.0.2.1", "ttl": 300 }),
        )
        .expect("record");
        assert_eq!(
            r.body(true).expect("body"),
            json!({ "type": "A", "name": "www", "data": "192.0.2.1", "ttl": 300 })
        );
        let r: RecordBody = serde_json::from_value(json!({ "data": "x" })).expect("record");
        assert!(r
            .body(false)
            .expect_err("no type")
            .to_string()
            .starts_with("type"));
        let r: RecordBody =
            serde_json::from_value(json!({ "type": "A", "name": "a\nb", "data": "x" }))
                .expect("record");
        assert!(r
            .body(true)
            .expect_err("name")
            .to_string()
            .starts_with("name"));
        let r: RecordBody =
            serde_json::from_value(json!({ "type": "A", "name": "a", "data": "x", "ttl": 5 }))
                .expect("record");
        assert!(r
            .body(true)
            .expect_err("ttl")
            .to_string()
            .starts_with("ttl"));
    }
}
