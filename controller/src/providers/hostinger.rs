//! Hostinger API: VPS (list, get, start/stop/restart), the domain portfolio, DNS zones
//! (read, overwrite or append records, delete by name and type), mail orders and billing
//! subscriptions. Plain JSON arrays except mail orders (`{data, meta}` pages).

use super::check::{self, invalid};
use super::{Api, ProviderError, Result, MAX_PAGES};
use reqwest::Method;
use serde::Deserialize;
use serde_json::{json, Value};

pub struct Hostinger(pub(crate) Api);

/// Power actions on a VPS.
pub const ACTIONS: &[&str] = &["start", "stop", "restart"];

/// Record types Hostinger's DNS takes.
const TYPES: &[&str] = &[
    "A", "AAAA", "CNAME", "ALIAS", "MX", "TXT", "NS", "SOA", "SRV", "CAA",
];

/// `PUT …/dns` as our API takes it: Hostinger's own body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZoneUpdate {
    #[serde(default, deserialize_with = "crate::api::present")]
    pub overwrite: Option<bool>,
    pub zone: Vec<ZoneEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZoneEntry {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, deserialize_with = "super::whole")]
    pub ttl: Option<i64>,
    pub records: Vec<ZoneRecord>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZoneRecord {
    pub content: String,
}

/// `DELETE …/dns` as our API takes it: `{filters: [{name, type}]}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZoneDelete {
    pub filters: Vec<ZoneFilter>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZoneFilter {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
}

fn record_type(field: &str, v: &str) -> Result<()> {
    if !TYPES.contains(&v) {
        return Err(invalid(field, &format!("one of {}", TYPES.join(", "))));
    }
    Ok(())
}

impl ZoneUpdate {
    pub fn body(&self) -> Result<Value> {
        if self.zone.is_empty() || self.zone.len() > 100 {
            return Err(invalid("zone", "1–100 entries"));
        }
        let mut zone = Vec::new();
        for (i, e) in self.zone.iter().enumerate() {
            let at = format!("zone[{i}]");
            // Names are kept as the API gives them (`@` included), never rewritten.
            check::dns_name(&format!("{at}.name"), &e.name)?;
            record_type(&format!("{at}.type"), &e.kind)?;
            if e.records.is_empty() || e.records.len() > 50 {
                return Err(invalid(&format!("{at}.records"), "1–50 records"));
            }
            for (j, r) in e.records.iter().enumerate() {
                let f = format!("{at}.records[{j}].content");
                if r.content.is_empty() {
                    return Err(invalid(&f, "required"));
                }
                check::text(&f, &r.content, 2048)?;
            }
            let mut o = json!({ "name": e.name, "type": e.kind,
                "records": e.records.iter().map(|r| json!({ "content": r.content })).collect::<Vec<_>>() });
            if let Some(t) = e.ttl {
                if !(60..=2_592_000).contains(&t) {
                    return Err(invalid(&format!("{at}.ttl"), "60–2592000 seconds"));
                }
                o["ttl"] = json!(t);
            }
            zone.push(o);
        }
        Ok(json!({ "overwrite": self.overwrite.unwrap_or(true), "zone": zone }))
    }
}

impl ZoneDelete {
    pub fn body(&self) -> Result<Value> {
        if self.filters.is_empty() || self.filters.len() > 100 {
            return Err(invalid("filters", "1–100 filters"));
        }
        let mut filters = Vec::new();
        for (i, f) in self.filters.iter().enumerate() {
            check::dns_name(&format!("filters[{i}].name"), &f.name)?;
            record_type(&format!("filters[{i}].type"), &f.kind)?;
            filters.push(json!({ "name": f.name, "type": f.kind }));
        }
        Ok(json!({ "filters": filters }))
    }
}

fn vm_path(id: &str) -> Result<String> {
    match id.parse::<u64>() {
        Ok(n) if n > 0 => Ok(format!("/api/vps/v1/virtual-machines/{n}")),
        _ => Err(invalid("id", "a virtual machine id (a number)")),
    }
}

fn zone_path(domain: &str) -> Result<String> {
    check::dns_name("domain", domain)?;
    if !domain.contains('.') || domain.starts_with('*') {
        return Err(invalid("domain", "a domain name"));
    }
    Ok(format!("/api/dns/v1/zones/{}", domain.to_ascii_lowercase()))
}

fn array(v: Value, what: &str) -> Result<Vec<Value>> {
    match v {
        Value::Array(items) => Ok(items),
        _ => Err(ProviderError::Upstream {
            provider: "Hostinger",
            message: format!("{what} is not a list"),
        }),
    }
}

impl Hostinger {
    /// A cheap list, since Hostinger has no identity call: the token works if it lists.
    pub async fn verify(&self) -> Result<Option<String>> {
        self.vms().await?;
        Ok(None)
    }

    pub async fn vms(&self) -> Result<Vec<Value>> {
        let v = self
            .0
            .call(Method::GET, "/api/vps/v1/virtual-machines", &[], None)
            .await?;
        array(v, "the VPS list")
    }

    pub async fn vm(&self, id: &str) -> Result<Value> {
        self.0.call(Method::GET, &vm_path(id)?, &[], None).await
    }

    pub async fn vm_action(&self, id: &str, action: &str) -> Result<Value> {
        if !ACTIONS.contains(&action) {
            return Err(invalid("action", "start, stop or restart"));
        }
        let path = format!("{}/{action}", vm_path(id)?);
        self.0.call(Method::POST, &path, &[], None).await
    }

    pub async fn domains(&self) -> Result<Vec<Value>> {
        let v = self
            .0
            .call(Method::GET, "/api/domains/v1/portfolio", &[], None)
            .await?;
        array(v, "the domain portfolio")
    }

    pub async fn zone(&self, domain: &str) -> Result<Vec<Value>> {
        let v = self
            .0
            .call(Method::GET, &zone_path(domain)?, &[], None)
            .await?;
        array(v, "the DNS zone")
    }

    pub async fn update_zone(&self, domain: &str, u: &ZoneUpdate) -> Result<Value> {
        let body = u.body()?;
        self.0
            .call(Method::PUT, &zone_path(domain)?, &[], Some(&body))
            .await
    }

    pub async fn delete_records(&self, domain: &str, d: &ZoneDelete) -> Result<Value> {
        let body = d.body()?;
        self.0
            .call(Method::DELETE, &zone_path(domain)?, &[], Some(&body))
            .await
    }

    /// Every mail order, following `meta` page by page.
    pub async fn mail_orders(&self) -> Result<Vec<Value>> {
        const PER_PAGE: usize = 100;
        let mut out = Vec::new();
        for page in 1..=MAX_PAGES {
            let q = [
                ("page", page.to_string()),
                ("per_page", PER_PAGE.to_string()),
            ];
            let mut v = self
                .0
                .call(Method::GET, "/api/mail/v1/orders", &q, None)
                .await?;
            let total = v.pointer("/meta/total").and_then(Value::as_u64);
            let items = array(
                v.get_mut("data").map(Value::take).unwrap_or_default(),
                "mail orders",
            )?;
            let short = items.len() < PER_PAGE;
            out.extend(items);
            if short || total.is_some_and(|t| out.len() as u64 >= t) {
                return Ok(out);
            }
        }
        Err(ProviderError::Upstream {
            provider: "Hostinger",
            message: "more mail orders than this controller pages through".into(),
        })
    }

    pub async fn subscriptions(&self) -> Result<Vec<Value>> {
        let v = self
            .0
            .call(Method::GET, "/api/billing/v1/subscriptions", &[], None)
            .await?;
        array(v, "the subscription list")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zone_updates_keep_names_and_check_values() {
        let u: ZoneUpdate =
            serde_json::from_value(json!({ "zone": [{ "name": "@", "type": "A", "ttl": 300,
            "records": [{ "content": "192.0.2.1" }] }] }))
            .expect("zone");
        assert_eq!(
            u.body().expect("body"),
            json!({ "overwrite": true, "zone": [{ "name": "@", "type": "A", "ttl": 300, "records": [{ "content": "192.0.2.1" }] }] })
        );
        for (bad, field) in [
            (json!({ "zone": [] }), "zone"),
            (
                json!({ "zone": [{ "name": "a b", "type": "A", "records": [{ "content": "x" }] }] }),
                "zone[0].name",
            ),
            (
                json!({ "zone": [{ "name": "www", "type": "PTR", "records": [{ "content": "x" }] }] }),
                "zone[0].type",
            ),
            (
                json!({ "zone": [{ "name": "www", "type": "A", "records": [] }] }),
                "zone[0].records",
            ),
            (
                json!({ "zone": [{ "name": "www", "type": "A", "ttl": 1, "records": [{ "content": "x" }] }] }),
                "zone[0].ttl",
            ),
        ] {
            let u: ZoneUpdate = serde_json::from_value(bad.clone()).expect("shape");
            let e = u.body().expect_err("refused").to_string();
            assert!(e.starts_with(field), "{bad}: {e}");
        }
        assert!(vm_path("12").is_ok() && vm_path("x").is_err() && zone_path("../x").is_err());
    }
}
