//! Cloudflare API v4: token verification, zones, and a zone's DNS records. Every answer
//! is the `{success, errors, messages, result, result_info}` envelope; lists are paged
//! until a page comes back short or empty (as the official SDK does), bounded.

use super::check::{self, invalid};
use super::{Api, ProviderError, Result, MAX_PAGES};
use reqwest::Method;
use serde::Deserialize;
use serde_json::{json, Map, Value};

pub struct Cloudflare {
    api: Api,
    account_id: Option<String>,
}

/// Zones pages hold 5–50 items; DNS record pages up to far more, 100 is plenty.
const ZONES_PER_PAGE: usize = 50;
const RECORDS_PER_PAGE: usize = 100;

/// A DNS record as created or patched through our API (Cloudflare's field names).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordBody {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub name: Option<String>,
    pub content: Option<String>,
    pub ttl: Option<i64>,
    pub proxied: Option<bool>,
    pub comment: Option<String>,
    pub priority: Option<i64>,
}

impl RecordBody {
    /// The body Cloudflare gets. The published spec requires `type`, `name` and `ttl` on
    /// create and on PATCH, so a PATCH must name the type and name too; `ttl` defaults to
    /// 1 (automatic) when the user gave none.
    pub fn body(&self) -> Result<Value> {
        let kind = self
            .kind
            .as_deref()
            .ok_or_else(|| invalid("type", "required"))?;
        check::record_type("type", kind)?;
        let name = self
            .name
            .as_deref()
            .ok_or_else(|| invalid("name", "required"))?;
        check::dns_name("name", name)?;
        let ttl = self.ttl.unwrap_or(1);
        if ttl != 1 && !(30..=86400).contains(&ttl) {
            return Err(invalid("ttl", "1 (automatic) or 30–86400"));
        }
        let mut b = Map::new();
        b.insert("type".into(), json!(kind));
        b.insert("name".into(), json!(name));
        b.insert("ttl".into(), json!(ttl));
        if let Some(c) = &self.content {
            let ok = match kind {
                "A" => c.parse::<std::net::Ipv4Addr>().is_ok(),
                "AAAA" => c.parse::<std::net::Ipv6Addr>().is_ok(),
                "CNAME" | "NS" | "MX" => check::dns_name("content", c).is_ok() && c != "@",
                _ => check::text("content", c, 2048).is_ok() && !c.is_empty(),
            };
            if !ok {
                return Err(invalid(
                    "content",
                    &format!("not a valid {kind} record value"),
                ));
            }
            b.insert("content".into(), json!(c));
        }
        if let Some(p) = self.proxied {
            if p && !matches!(kind, "A" | "AAAA" | "CNAME") {
                return Err(invalid(
                    "proxied",
                    "only A, AAAA and CNAME records can be proxied",
                ));
            }
            b.insert("proxied".into(), json!(p));
        }
        if let Some(c) = &self.comment {
            check::text("comment", c, 100)?;
            b.insert("comment".into(), json!(c));
        }
        if let Some(p) = self.priority {
            if !(0..=65535).contains(&p) {
                return Err(invalid("priority", "0–65535"));
            }
            b.insert("priority".into(), json!(p));
        }
        Ok(Value::Object(b))
    }
}

/// Cloudflare ids are 32 hexadecimal characters.
fn cf_id(field: &str, v: &str) -> Result<()> {
    if v.is_empty() || v.len() > 32 || !v.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(invalid(
            field,
            "a Cloudflare id (32 hexadecimal characters)",
        ));
    }
    Ok(())
}

fn result(mut v: Value) -> Result<Value> {
    match v.get_mut("result").map(Value::take) {
        Some(r) if !r.is_null() => Ok(r),
        _ => Err(ProviderError::Upstream {
            provider: "Cloudflare",
            message: "the answer has no `result`".into(),
        }),
    }
}

impl Cloudflare {
    pub(crate) fn new(api: Api, account_id: Option<String>) -> Cloudflare {
        Cloudflare { api, account_id }
    }

    /// Verifies the token (the account token route when an account is configured) and
    /// returns what it belongs to: the account id, if any.
    pub async fn verify(&self) -> Result<Option<String>> {
        let path = match &self.account_id {
            Some(a) => format!("/accounts/{a}/tokens/verify"),
            None => "/user/tokens/verify".to_owned(),
        };
        let r = result(self.api.call(Method::GET, &path, &[], None).await?)?;
        match r.get("status").and_then(Value::as_str) {
            Some("active") => Ok(self.account_id.clone()),
            other => Err(ProviderError::Refused {
                provider: "Cloudflare",
                message: format!("the token is {}", other.unwrap_or("not active")),
            }),
        }
    }

    async fn list(
        &self,
        path: &str,
        per_page: usize,
        extra: &[(&str, String)],
    ) -> Result<Vec<Value>> {
        let mut out = Vec::new();
        for page in 1..=MAX_PAGES {
            let mut q = vec![
                ("page", page.to_string()),
                ("per_page", per_page.to_string()),
            ];
            q.extend(extra.iter().cloned());
            let v = self.api.call(Method::GET, path, &q, None).await?;
            let total = v
                .pointer("/result_info/total_count")
                .and_then(Value::as_u64);
            let items = match result(v)? {
                Value::Array(items) => items,
                _ => {
                    return Err(ProviderError::Upstream {
                        provider: "Cloudflare",
                        message: format!("{path} did not answer a list"),
                    })
                }
            };
            let short = items.len() < per_page;
            out.extend(items);
            if short || total.is_some_and(|t| out.len() as u64 >= t) {
                return Ok(out);
            }
        }
        Err(ProviderError::Upstream {
            provider: "Cloudflare",
            message: format!("more than {} items in {path}", MAX_PAGES * per_page),
        })
    }

    pub async fn zones(&self) -> Result<Vec<Value>> {
        self.list("/zones", ZONES_PER_PAGE, &[]).await
    }

    pub async fn records(&self, zone: &str) -> Result<Vec<Value>> {
        cf_id("zone_id", zone)?;
        self.list(&format!("/zones/{zone}/dns_records"), RECORDS_PER_PAGE, &[])
            .await
    }

    pub async fn create_record(&self, zone: &str, r: &RecordBody) -> Result<Value> {
        cf_id("zone_id", zone)?;
        let body = r.body()?;
        if body.get("content").is_none() {
            return Err(invalid("content", "required"));
        }
        let path = format!("/zones/{zone}/dns_records");
        result(self.api.call(Method::POST, &path, &[], Some(&body)).await?)
    }

    pub async fn update_record(&self, zone: &str, id: &str, r: &RecordBody) -> Result<Value> {
        cf_id("zone_id", zone)?;
        cf_id("record_id", id)?;
        let body = r.body()?;
        let path = format!("/zones/{zone}/dns_records/{id}");
        result(
            self.api
                .call(Method::PATCH, &path, &[], Some(&body))
                .await?,
        )
    }

    pub async fn delete_record(&self, zone: &str, id: &str) -> Result<()> {
        cf_id("zone_id", zone)?;
        cf_id("record_id", id)?;
        let path = format!("/zones/{zone}/dns_records/{id}");
        self.api.call(Method::DELETE, &path, &[], None).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(v: Value) -> Result<Value> {
        serde_json::from_value::<RecordBody>(v)
            .map_err(|e| ProviderError::Invalid(e.to_string()))?
            .body()
    }

    #[test]
    fn records_get_a_ttl_and_checked_content() {
        assert_eq!(
            body(json!({ "type": "A", "name": "www", "content": "192.0.2.1" })).expect("body"),
            json!({ "type": "A", "name": "www", "content": "192.0.2.1", "ttl": 1 })
        );
        for (bad, field) in [
            (
                json!({ "type": "A", "name": "www", "content": "not-an-ip" }),
                "content",
            ),
            (
                json!({ "type": "AAAA", "name": "www", "content": "192.0.2.1" }),
                "content",
            ),
            (
                json!({ "type": "TXT", "name": "www", "content": "x", "proxied": true }),
                "proxied",
            ),
            (
                json!({ "type": "A", "name": "www", "content": "192.0.2.1", "ttl": 10 }),
                "ttl",
            ),
            (
                json!({ "type": "PTR", "name": "www", "content": "x" }),
                "type",
            ),
            (json!({ "name": "www", "content": "x" }), "type"),
            (json!({ "type": "A", "content": "192.0.2.1" }), "name"),
        ] {
            let e = body(bad.clone()).expect_err("refused").to_string();
            assert!(e.starts_with(field), "{bad}: {e}");
        }
        assert!(cf_id("zone_id", "023e105f4ecef8ad9ca31a8372d0c353").is_ok());
        assert!(cf_id("zone_id", "../x").is_err());
    }
}
