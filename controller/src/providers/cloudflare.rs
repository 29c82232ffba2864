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
    #[serde(default, deserialize_with = "crate::api::present")]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "crate::api::present")]
    pub content: Option<String>,
    #[serde(default, deserialize_with = "super::whole")]
    pub ttl: Option<i64>,
    #[serde(default, deserialize_with = "crate::api::present")]
    pub proxied: Option<bool>,
    #[serde(default, deserialize_with = "crate::api::present")]
    pub comment: Option<String>,
    #[serde(default, deserialize_with = "super::whole")]
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

/// An Email Routing rule (or the catch-all) as our API takes it: Cloudflare's fields.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleBody {
    pub actions: Vec<RuleAction>,
    pub matchers: Vec<RuleMatcher>,
    #[serde(default, deserialize_with = "crate::api::present")]
    pub enabled: Option<bool>,
    #[serde(default, deserialize_with = "crate::api::present")]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "super::whole")]
    pub priority: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleAction {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, deserialize_with = "crate::api::present")]
    pub value: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleMatcher {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, deserialize_with = "crate::api::present")]
    pub field: Option<String>,
    #[serde(default, deserialize_with = "crate::api::present")]
    pub value: Option<String>,
}

/// An e-mail address as Email Routing takes it (at most 90 characters).
pub fn check_email(field: &str, v: &str) -> Result<()> {
    let ok = v.len() <= 90
        && v.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && local.bytes().all(|b| {
                    b.is_ascii_graphic() && !matches!(b, b'@' | b'"' | b'<' | b'>' | b',' | b';')
                })
                && domain.contains('.')
                && check::dns_name(field, domain).is_ok()
        });
    if !ok {
        return Err(invalid(field, "an e-mail address (at most 90 characters)"));
    }
    Ok(())
}

impl RuleBody {
    /// The body Cloudflare gets; the catch-all takes only an `all` matcher and no
    /// priority.
    pub fn body(&self, catch_all: bool) -> Result<Value> {
        if self.actions.is_empty() || self.actions.len() > 10 {
            return Err(invalid("actions", "1–10 actions"));
        }
        let mut actions = Vec::new();
        for (i, a) in self.actions.iter().enumerate() {
            let at = format!("actions[{i}]");
            let values = a.value.as_deref().unwrap_or_default();
            match a.kind.as_str() {
                "forward" => {
                    if values.is_empty() || values.len() > 10 {
                        return Err(invalid(
                            &format!("{at}.value"),
                            "1–10 destination addresses",
                        ));
                    }
                    for (j, v) in values.iter().enumerate() {
                        check_email(&format!("{at}.value[{j}]"), v)?;
                    }
                }
                "worker" => {
                    let ok = values.len() == 1
                        && !values[0].is_empty()
                        && values[0].len() <= 63
                        && values[0]
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'));
                    if !ok {
                        return Err(invalid(&format!("{at}.value"), "one Worker's name"));
                    }
                }
                "drop" => {
                    if !values.is_empty() {
                        return Err(invalid(&format!("{at}.value"), "drop takes no value"));
                    }
                }
                _ => return Err(invalid(&format!("{at}.type"), "forward, worker or drop")),
            }
            let mut o = json!({ "type": a.kind });
            if !values.is_empty() {
                o["value"] = json!(values);
            }
            actions.push(o);
        }
        if self.matchers.is_empty() || self.matchers.len() > 10 {
            return Err(invalid("matchers", "1–10 matchers"));
        }
        let mut matchers = Vec::new();
        for (i, m) in self.matchers.iter().enumerate() {
            let at = format!("matchers[{i}]");
            match (m.kind.as_str(), catch_all) {
                ("all", _) => {
                    if m.field.is_some() || m.value.is_some() {
                        return Err(invalid(&at, "an `all` matcher takes no field or value"));
                    }
                    matchers.push(json!({ "type": "all" }));
                }
                ("literal", false) => {
                    if m.field.as_deref().unwrap_or("to") != "to" {
                        return Err(invalid(&format!("{at}.field"), "to"));
                    }
                    let v = m
                        .value
                        .as_deref()
                        .ok_or_else(|| invalid(&format!("{at}.value"), "required"))?;
                    check_email(&format!("{at}.value"), v)?;
                    matchers.push(json!({ "type": "literal", "field": "to", "value": v }));
                }
                (_, true) => {
                    return Err(invalid(
                        &format!("{at}.type"),
                        "the catch-all matches `all`",
                    ))
                }
                _ => return Err(invalid(&format!("{at}.type"), "literal or all")),
            }
        }
        let mut b = json!({ "actions": actions, "matchers": matchers });
        if let Some(e) = self.enabled {
            b["enabled"] = json!(e);
        }
        if let Some(n) = &self.name {
            check::text("name", n, 256)?;
            b["name"] = json!(n);
        }
        if let Some(p) = self.priority {
            if catch_all {
                return Err(invalid("priority", "the catch-all has no priority"));
            }
            if !(0..=i64::from(i32::MAX)).contains(&p) {
                return Err(invalid("priority", "0 or more"));
            }
            b["priority"] = json!(p);
        }
        Ok(b)
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

    pub async fn rules(&self, zone: &str) -> Result<Vec<Value>> {
        cf_id("zone_id", zone)?;
        self.list(
            &format!("/zones/{zone}/email/routing/rules"),
            ZONES_PER_PAGE,
            &[],
        )
        .await
    }

    pub async fn create_rule(&self, zone: &str, r: &RuleBody) -> Result<Value> {
        cf_id("zone_id", zone)?;
        let body = r.body(false)?;
        let path = format!("/zones/{zone}/email/routing/rules");
        result(self.api.call(Method::POST, &path, &[], Some(&body)).await?)
    }

    pub async fn update_rule(&self, zone: &str, id: &str, r: &RuleBody) -> Result<Value> {
        cf_id("zone_id", zone)?;
        cf_id("rule_id", id)?;
        let body = r.body(false)?;
        let path = format!("/zones/{zone}/email/routing/rules/{id}");
        result(self.api.call(Method::PUT, &path, &[], Some(&body)).await?)
    }

    pub async fn delete_rule(&self, zone: &str, id: &str) -> Result<()> {
        cf_id("zone_id", zone)?;
        cf_id("rule_id", id)?;
        let path = format!("/zones/{zone}/email/routing/rules/{id}");
        self.api.call(Method::DELETE, &path, &[], None).await?;
        Ok(())
    }

    pub async fn catch_all(&self, zone: &str) -> Result<Value> {
        cf_id("zone_id", zone)?;
        let path = format!("/zones/{zone}/email/routing/rules/catch_all");
        result(self.api.call(Method::GET, &path, &[], None).await?)
    }

    pub async fn set_catch_all(&self, zone: &str, r: &RuleBody) -> Result<Value> {
        cf_id("zone_id", zone)?;
        let body = r.body(true)?;
        let path = format!("/zones/{zone}/email/routing/rules/catch_all");
        result(self.api.call(Method::PUT, &path, &[], Some(&body)).await?)
    }

    /// Destination addresses belong to the account: the configured one, else the
    /// account that owns the zone (from the zone list, the operation the token has).
    async fn account_of(&self, zone: &str) -> Result<String> {
        cf_id("zone_id", zone)?;
        if let Some(a) = &self.account_id {
            return Ok(a.clone());
        }
        let zones = self.zones().await?;
        let z = zones
            .iter()
            .find(|z| z.get("id").and_then(Value::as_str) == Some(zone))
            .ok_or_else(|| ProviderError::NotFound {
                provider: "Cloudflare",
                message: format!("no zone {zone} for this token"),
            })?;
        z.pointer("/account/id")
            .and_then(Value::as_str)
            .filter(|a| cf_id("account_id", a).is_ok())
            .map(str::to_owned)
            .ok_or_else(|| ProviderError::Upstream {
                provider: "Cloudflare",
                message: format!("zone {zone} names no account"),
            })
    }

    /// Every destination address, verified or not (the API lists one kind at a time).
    pub async fn destinations(&self, zone: &str) -> Result<Vec<Value>> {
        let account = self.account_of(zone).await?;
        let path = format!("/accounts/{account}/email/routing/addresses");
        let mut out = self
            .list(&path, ZONES_PER_PAGE, &[("verified", "true".into())])
            .await?;
        out.extend(
            self.list(&path, ZONES_PER_PAGE, &[("verified", "false".into())])
                .await?,
        );
        Ok(out)
    }

    pub async fn create_destination(&self, zone: &str, email: &str) -> Result<Value> {
        check_email("email", email)?;
        let account = self.account_of(zone).await?;
        let path = format!("/accounts/{account}/email/routing/addresses");
        let body = json!({ "email": email });
        result(self.api.call(Method::POST, &path, &[], Some(&body)).await?)
    }

    pub async fn delete_destination(&self, zone: &str, id: &str) -> Result<()> {
        cf_id("destination_id", id)?;
        let account = self.account_of(zone).await?;
        let path = format!("/accounts/{account}/email/routing/addresses/{id}");
        self.api.call(Method::DELETE, &path, &[], None).await?;
        Ok(())
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
        // JSON Schema's integers include 300.0; a huge integral number is not a type
        // error either: the range check names the field.
        assert_eq!(
            body(json!({ "type": "A", "name": "www", "content": "192.0.2.1", "ttl": 300.0 }))
                .expect("body")["ttl"],
            300
        );
        for (v, field) in [
            (json!(300.5), "ttl"),
            (json!(1.0e23), "ttl"),
            (Value::Null, "ttl"),
        ] {
            let e = body(json!({ "type": "A", "name": "www", "content": "192.0.2.1", "ttl": v }))
                .expect_err("refused")
                .to_string();
            assert!(
                e.contains(field) || e.contains("whole") || e.contains("null"),
                "{v}: {e}"
            );
        }
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
        let rule = |v: Value, catch_all: bool| {
            serde_json::from_value::<RuleBody>(v)
                .map_err(|e| ProviderError::Invalid(e.to_string()))
                .and_then(|r| r.body(catch_all))
        };
        assert_eq!(
            rule(
                json!({ "actions": [{ "type": "forward", "value": ["me@example.net"] }],
                "matchers": [{ "type": "literal", "value": "hi@example.com" }] }),
                false
            )
            .expect("rule"),
            json!({ "actions": [{ "type": "forward", "value": ["me@example.net"] }],
                "matchers": [{ "type": "literal", "field": "to", "value": "hi@example.com" }] })
        );
        for (bad, catch_all, field) in [
            (
                json!({ "actions": [], "matchers": [{ "type": "all" }] }),
                false,
                "actions",
            ),
            (
                json!({ "actions": [{ "type": "forward", "value": ["not an address"] }], "matchers": [{ "type": "all" }] }),
                false,
                "actions[0].value[0]",
            ),
            (
                json!({ "actions": [{ "type": "drop" }], "matchers": [{ "type": "literal", "value": "x@example.com" }] }),
                true,
                "matchers[0].type",
            ),
            (
                json!({ "actions": [{ "type": "drop" }], "matchers": [{ "type": "all" }], "priority": 1 }),
                true,
                "priority",
            ),
        ] {
            let e = rule(bad.clone(), catch_all)
                .expect_err("refused")
                .to_string();
            assert!(e.starts_with(field), "{bad}: {e}");
        }
        assert!(cf_id("zone_id", "../x").is_err());
    }
}
