//! DNS for pools: a domain linked to a zone at a provider gets an A (or AAAA) record
//! there pointing at the edge of the pools that serve it, rewritten when that changes.
//! One record per name, found by name and type and updated in place, so a re-sync never
//! duplicates it.

use super::check::invalid;
use super::{cloudflare, digitalocean, hostinger, Provider, ProviderError, Providers, Result};
use crate::store::{DomainRow, Store};
use serde_json::Value;
use std::net::IpAddr;

/// Providers that hold DNS zones.
pub const DNS_PROVIDERS: &[Provider] = &[
    Provider::Cloudflare,
    Provider::DigitalOcean,
    Provider::Hostinger,
];

/// Checks a link `{provider, zone}` for `domain`: a Cloudflare zone id, or the zone's
/// domain name (the domain itself or one it is under) at DigitalOcean and Hostinger.
pub fn check_link(domain: &str, provider: &str, zone: &str) -> Result<(Provider, String)> {
    let p = Provider::parse(provider)
        .filter(|p| DNS_PROVIDERS.contains(p))
        .ok_or_else(|| invalid("provider", "cloudflare, digitalocean or hostinger"))?;
    let zone = zone.trim_end_matches('.').to_ascii_lowercase();
    if p == Provider::Cloudflare {
        if zone.is_empty() || zone.len() > 32 || !zone.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(invalid(
                "zone",
                "a Cloudflare zone id (32 hexadecimal characters)",
            ));
        }
    } else {
        super::check::dns_name("zone", &zone)?;
        if relative(domain, &zone).is_none() {
            return Err(invalid(
                "zone",
                &format!("{domain} is not in the zone {zone}"),
            ));
        }
    }
    Ok((p, zone))
}

/// The record name relative to its zone (`@` for the apex), as DigitalOcean and
/// Hostinger name records.
fn relative(domain: &str, zone: &str) -> Option<String> {
    if domain == zone {
        return Some("@".into());
    }
    domain
        .strip_suffix(zone)
        .and_then(|rest| rest.strip_suffix('.'))
        .filter(|r| !r.is_empty())
        .map(str::to_owned)
}

/// The address the domain's record should hold: the one edge of the pools using it.
/// `Ok(None)` when no pool with an edge uses it yet.
async fn wanted_address(store: &Store, d: &DomainRow) -> Result<Option<IpAddr>> {
    let pools = store.pool_rows().await?;
    let mut edges: Vec<i64> = pools
        .iter()
        .filter(|p| p.settings.domain_id == Some(d.id))
        .filter_map(|p| p.settings.edge_server_id)
        .collect();
    edges.sort_unstable();
    edges.dedup();
    let edge = match edges.as_slice() {
        [] => return Ok(None),
        [one] => *one,
        many => {
            return Err(ProviderError::Invalid(format!(
                "pools on different edges (servers {}) use {}: one name has one address",
                many.iter()
                    .map(i64::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
                d.name
            )))
        }
    };
    let server = store
        .server(edge)
        .await?
        .ok_or_else(|| ProviderError::Invalid(format!("the edge server {edge} is gone")))?;
    server.host.parse::<IpAddr>().map(Some).map_err(|_| {
        ProviderError::Invalid(format!(
            "the edge {} is reached as {:?}, not an IP address, so no A record can point at it",
            server.name, server.host
        ))
    })
}

impl Providers {
    /// Writes `name → ip` at the provider, updating the record of that name and type if
    /// there is one.
    async fn upsert_address(&self, p: Provider, zone: &str, name: &str, ip: IpAddr) -> Result<()> {
        let kind = if ip.is_ipv4() { "A" } else { "AAAA" };
        let ip = ip.to_string();
        match p {
            Provider::Cloudflare => {
                let cf = self.cloudflare().await?;
                let existing = cf.records(zone).await?.into_iter().find(|r| {
                    r.get("type").and_then(Value::as_str) == Some(kind)
                        && r.get("name").and_then(Value::as_str) == Some(name)
                });
                let body = cloudflare::RecordBody {
                    kind: Some(kind.into()),
                    name: Some(name.into()),
                    content: Some(ip.clone()),
                    ttl: Some(1),
                    proxied: None,
                    comment: Some("managed by Mezzanine".into()),
                    priority: None,
                };
                match existing.and_then(|r| r.get("id").and_then(Value::as_str).map(str::to_owned))
                {
                    Some(id) => cf.update_record(zone, &id, &body).await.map(drop),
                    None => cf.create_record(zone, &body).await.map(drop),
                }
            }
            Provider::DigitalOcean => {
                let rel = relative(name, zone)
                    .ok_or_else(|| invalid("zone", "does not hold the domain"))?;
                let dig = self.digitalocean().await?;
                let existing = dig.records(zone).await?.into_iter().find(|r| {
                    r.get("type").and_then(Value::as_str) == Some(kind)
                        && r.get("name").and_then(Value::as_str) == Some(rel.as_str())
                });
                let body = digitalocean::RecordBody {
                    kind: Some(kind.into()),
                    name: Some(rel),
                    data: Some(ip.clone()),
                    priority: None,
                    port: None,
                    ttl: Some(300),
                    weight: None,
                    flags: None,
                    tag: None,
                };
                match existing.and_then(|r| r.get("id").and_then(Value::as_u64)) {
                    Some(id) => dig
                        .update_record(zone, &id.to_string(), &body)
                        .await
                        .map(drop),
                    None => dig.create_record(zone, &body).await.map(drop),
                }
            }
            Provider::Hostinger => {
                let rel = relative(name, zone)
                    .ok_or_else(|| invalid("zone", "does not hold the domain"))?;
                // Overwrite replaces the records of that name and type only.
                let update = hostinger::ZoneUpdate {
                    overwrite: Some(true),
                    zone: vec![hostinger::ZoneEntry {
                        name: rel,
                        kind: kind.into(),
                        ttl: Some(300),
                        records: vec![hostinger::ZoneRecord { content: ip }],
                    }],
                };
                self.hostinger()
                    .await?
                    .update_zone(zone, &update)
                    .await
                    .map(drop)
            }
            Provider::Contabo => Err(invalid("provider", "Contabo holds no DNS zones")),
        }
    }

    /// Brings a linked domain's record in line with its pools' edge and records the
    /// outcome on the domain (the address and when, or the error). Unlinked domains and
    /// domains no pool with an edge uses are left alone.
    pub async fn sync_domain(&self, store: &Store, domain_id: i64) -> Result<()> {
        let Some(d) = store.domain(domain_id).await? else {
            return Ok(());
        };
        let Some((provider, zone)) = d.dns.clone() else {
            return Ok(());
        };
        let outcome: Result<Option<IpAddr>> = async {
            let p =
                Provider::parse(&provider).ok_or_else(|| invalid("provider", "no longer known"))?;
            let Some(ip) = wanted_address(store, &d).await? else {
                return Ok(None);
            };
            if d.dns_address.as_deref() == Some(ip.to_string().as_str()) && d.dns_error.is_none() {
                return Ok(Some(ip));
            }
            self.upsert_address(p, &zone, &d.name, ip).await?;
            Ok(Some(ip))
        }
        .await;
        match outcome {
            Ok(Some(ip)) => {
                let now = crate::time::now_secs();
                let same = d.dns_address.as_deref() == Some(ip.to_string().as_str());
                let at = if same && d.dns_error.is_none() {
                    d.dns_synced_at
                } else {
                    Some(now)
                };
                store
                    .set_domain_dns(d.id, Some(&ip.to_string()), at, None)
                    .await?;
                Ok(())
            }
            Ok(None) => {
                store
                    .set_domain_dns(d.id, d.dns_address.as_deref(), d.dns_synced_at, None)
                    .await?;
                Ok(())
            }
            Err(e) => {
                let msg = e.to_string();
                store
                    .set_domain_dns(d.id, d.dns_address.as_deref(), d.dns_synced_at, Some(&msg))
                    .await?;
                Err(e)
            }
        }
    }

    /// The DNS-01 record name for a domain (`_acme-challenge.` before it, wildcard
    /// dropped), its zone and provider; the domain must be linked to a zone.
    async fn acme_target(
        &self,
        store: &Store,
        domain_id: i64,
    ) -> Result<(Provider, String, String)> {
        let d = store
            .domain(domain_id)
            .await?
            .ok_or_else(|| invalid("domain_id", "the domain is gone"))?;
        let (provider, zone) = d.dns.clone().ok_or_else(|| {
            invalid(
                "tls.challenge",
                &format!(
                    "dns-01 needs {} linked to its DNS zone (PATCH /api/domains/{})",
                    d.name, d.id
                ),
            )
        })?;
        let p = Provider::parse(&provider).ok_or_else(|| invalid("provider", "no longer known"))?;
        let base = d.name.strip_prefix("*.").unwrap_or(&d.name);
        Ok((p, zone, format!("_acme-challenge.{base}")))
    }

    /// Adds the DNS-01 TXT record `value` for the domain at its provider.
    pub async fn put_acme_txt(&self, store: &Store, domain_id: i64, value: &str) -> Result<()> {
        let (p, zone, name) = self.acme_target(store, domain_id).await?;
        match p {
            Provider::Cloudflare => {
                let body = cloudflare::RecordBody {
                    kind: Some("TXT".into()),
                    name: Some(name),
                    content: Some(value.to_owned()),
                    ttl: Some(60),
                    proxied: None,
                    comment: Some("ACME challenge, removed by Mezzanine".into()),
                    priority: None,
                };
                self.cloudflare()
                    .await?
                    .create_record(&zone, &body)
                    .await
                    .map(drop)
            }
            Provider::DigitalOcean => {
                let rel = relative(&name, &zone)
                    .ok_or_else(|| invalid("zone", "does not hold the domain"))?;
                let body = digitalocean::RecordBody {
                    kind: Some("TXT".into()),
                    name: Some(rel),
                    data: Some(value.to_owned()),
                    priority: None,
                    port: None,
                    ttl: Some(30),
                    weight: None,
                    flags: None,
                    tag: None,
                };
                self.digitalocean()
                    .await?
                    .create_record(&zone, &body)
                    .await
                    .map(drop)
            }
            Provider::Hostinger => {
                let rel = relative(&name, &zone)
                    .ok_or_else(|| invalid("zone", "does not hold the domain"))?;
                let update = hostinger::ZoneUpdate {
                    overwrite: Some(false),
                    zone: vec![hostinger::ZoneEntry {
                        name: rel,
                        kind: "TXT".into(),
                        ttl: Some(60),
                        records: vec![hostinger::ZoneRecord {
                            content: value.to_owned(),
                        }],
                    }],
                };
                self.hostinger()
                    .await?
                    .update_zone(&zone, &update)
                    .await
                    .map(drop)
            }
            Provider::Contabo => Err(invalid("provider", "Contabo holds no DNS zones")),
        }
    }

    /// Removes the DNS-01 TXT record `value` again.
    pub async fn remove_acme_txt(&self, store: &Store, domain_id: i64, value: &str) -> Result<()> {
        let (p, zone, name) = self.acme_target(store, domain_id).await?;
        let is_it = |r: &Value, name_key: &str, name: &str, content_key: &str| {
            r.get("type").and_then(Value::as_str) == Some("TXT")
                && r.get(name_key).and_then(Value::as_str) == Some(name)
                && r.get(content_key)
                    .and_then(Value::as_str)
                    .is_some_and(|c| c.trim_matches('"') == value)
        };
        match p {
            Provider::Cloudflare => {
                let cf = self.cloudflare().await?;
                for r in cf.records(&zone).await? {
                    if is_it(&r, "name", &name, "content") {
                        if let Some(id) = r.get("id").and_then(Value::as_str) {
                            cf.delete_record(&zone, id).await?;
                        }
                    }
                }
                Ok(())
            }
            Provider::DigitalOcean => {
                let rel = relative(&name, &zone)
                    .ok_or_else(|| invalid("zone", "does not hold the domain"))?;
                let dig = self.digitalocean().await?;
                for r in dig.records(&zone).await? {
                    if is_it(&r, "name", &rel, "data") {
                        if let Some(id) = r.get("id").and_then(Value::as_u64) {
                            dig.delete_record(&zone, &id.to_string()).await?;
                        }
                    }
                }
                Ok(())
            }
            Provider::Hostinger => {
                let rel = relative(&name, &zone)
                    .ok_or_else(|| invalid("zone", "does not hold the domain"))?;
                let delete = hostinger::ZoneDelete {
                    filters: vec![hostinger::ZoneFilter {
                        name: rel,
                        kind: "TXT".into(),
                    }],
                };
                self.hostinger()
                    .await?
                    .delete_records(&zone, &delete)
                    .await
                    .map(drop)
            }
            Provider::Contabo => Ok(()),
        }
    }

    /// `sync_domain` for every domain in `ids` (a pool's old and new domain), logging
    /// failures — which the domain also shows — instead of failing the pool change.
    pub async fn sync_domains(&self, store: &Store, ids: &[Option<i64>]) {
        let mut seen = Vec::new();
        for id in ids.iter().flatten() {
            if seen.contains(id) {
                continue;
            }
            seen.push(*id);
            if let Err(e) = self.sync_domain(store, *id).await {
                tracing::warn!(domain = id, error = %e, "cannot update the domain's DNS record");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_name_a_zone_that_holds_the_domain() {
        assert_eq!(
            relative("app.example.com", "example.com").as_deref(),
            Some("app")
        );
        assert_eq!(relative("example.com", "example.com").as_deref(), Some("@"));
        assert_eq!(relative("badexample.com", "example.com"), None);
        assert!(check_link("app.example.com", "digitalocean", "example.com").is_ok());
        assert!(check_link("app.example.com", "digitalocean", "other.com").is_err());
        assert!(check_link(
            "app.example.com",
            "cloudflare",
            "023e105f4ecef8ad9ca31a8372d0c353"
        )
        .is_ok());
        assert!(check_link("app.example.com", "cloudflare", "example.com").is_err());
        assert!(check_link("app.example.com", "contabo", "example.com").is_err());
    }
}
