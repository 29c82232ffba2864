//! HTTPS for pools with certificates from a real ACME server: Debian's `pebble` (RFC 8555
//! test CA) and `pebble-challtestsrv` (its DNS, which points the test names at the edge),
//! both on the fleet network's gateway; an edge with nginx and a member, adopted over SSH.

use mezzanine_tests::pebble::{https_client, Pebble};
use mezzanine_tests::{adopt, first_admin, fleet_controller_with, Client, Fleet};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const PW: &str = "https-node-pw-23";

async fn pool(admin: &mut Client, id: i64) -> Value {
    admin.get(&format!("/api/pools/{id}")).await.body
}

/// Waits until the pool's certificate satisfies `pred`.
async fn certificate(
    admin: &mut Client,
    id: i64,
    what: &str,
    within: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let p = pool(admin, id).await;
        if pred(&p["certificate"]) {
            return p["certificate"].clone();
        }
        assert!(
            Instant::now() < deadline,
            "the certificate never {what}: {p}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_domain_gets_a_certificate_and_keeps_it_renewed() {
    let fleet = Fleet::new();
    let (_edge_c, edge_ip) = fleet.node("tls-edge", 51, &[("ROOT_PASSWORD", PW)]);
    let (_m_c, m_ip) = fleet.node("tls-m1", 52, &[("ROOT_PASSWORD", PW)]);
    // Certificates live 90 s, so one renews (at two thirds) within the test.
    let pebble = Pebble::start(&fleet.gateway, 8088, &edge_ip, 90);
    let ca = pebble.ca_file.to_str().expect("utf8").to_owned();
    let ctl = fleet_controller_with(
        &fleet,
        false,
        &[
            "--acme-directory-url",
            &pebble.directory,
            "--acme-ca-file",
            &ca,
            "--acme-email",
            "ops@example.com",
            // The fake provider's records reach pebble's DNS within 100 ms.
            "--acme-dns-wait-secs",
            "2",
        ],
    );
    let mut admin = first_admin(&ctl.base).await;
    let (mut a1, mut a2) = (admin.clone(), admin.clone());
    let (edge, m1) = tokio::join!(
        adopt(&mut a1, "tls-edge", &edge_ip, PW),
        adopt(&mut a2, "tls-m1", &m_ip, PW),
    );
    let script = "mkdir -p /srv/app && echo \"member $(hostname)\" > /srv/app/index.html\n\
        printf 'server {\\n listen 8080;\\n root /srv/app;\\n}\\n' > /etc/nginx/sites-enabled/app\n\
        nginx -t && (nginx -s reload 2>/dev/null || nginx)";
    let r = admin
        .post(
            "/api/workflows",
            json!({ "name": "site", "server_id": m1, "definition": { "steps": [
            { "name": "serve", "uses": "shell", "with": { "script": script } }] } }),
        )
        .await;
    let wf = r.body["id"].as_i64().expect("workflow");
    let r = admin
        .post("/api/domains", json!({ "name": "shop.test" }))
        .await;
    let domain = r.body["id"].as_i64().expect("domain");
    let r = admin
        .post(
            "/api/pools",
            json!({ "name": "shop", "workflow_id": wf, "domain_id": domain }),
        )
        .await;
    let id = r.body["id"].as_i64().expect("pool");
    let r = admin
        .patch(
            &format!("/api/pools/{id}"),
            json!({ "edge_server_id": edge, "ports": { "listen": 8088, "target": 8080 },
            "health": { "interval_s": 1, "timeout_s": 1, "healthy_after": 1 } }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = admin
        .post(
            &format!("/api/pools/{id}/scale-out"),
            json!({ "server_id": m1 }),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.body);

    // Bad TLS settings are refused; renewing before TLS is on is a conflict.
    for (body, field) in [
        (
            json!({ "tls": { "challenge": "tls-alpn-01" } }),
            "tls.challenge",
        ),
        (json!({ "tls": { "port": 8088 } }), "tls.port"),
        (json!({ "tls": { "port": 0 } }), "tls.port"),
    ] {
        let r = admin.patch(&format!("/api/pools/{id}"), body.clone()).await;
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        assert!(r.error().starts_with(field), "{body}: {}", r.body);
    }
    let r = admin
        .post(&format!("/api/pools/{id}/certificate/renew"), json!({}))
        .await;
    assert_eq!(r.status, 409, "{}", r.body);

    // HTTPS on: issued over HTTP-01 through the edge, served on 8443.
    let asked = Instant::now();
    let r = admin
        .patch(
            &format!("/api/pools/{id}"),
            json!({ "tls": { "enabled": true, "port": 8443 } }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let first = certificate(&mut admin, id, "issued", Duration::from_secs(120), |c| {
        c["not_after"].is_string()
    })
    .await;
    println!(
        "certificate issued {:?} after HTTPS was turned on: {first}",
        asked.elapsed()
    );
    assert_eq!(first["names"], json!(["shop.test"]));
    assert!(first["error"].is_null(), "{first}");
    assert!(
        first["issuer"]
            .as_str()
            .is_some_and(|i| i.contains("Pebble")),
        "{first}"
    );
    let root = pebble.issuing_root().await;
    let client = https_client("shop.test", &edge_ip, 8443, root.clone());
    let deadline = Instant::now() + Duration::from_secs(30);
    let body = loop {
        match client.get("https://shop.test:8443/").send().await {
            Ok(r) if r.status() == 200 => break r.text().await.expect("body"),
            other => {
                assert!(Instant::now() < deadline, "no HTTPS answer: {other:?}");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    };
    println!(
        "first HTTPS answer {:?} after HTTPS was turned on",
        asked.elapsed()
    );
    assert_eq!(body.trim(), "member tls-m1");
    // Plain HTTP moves to HTTPS; the challenge path stays plain.
    let plain = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let r = plain
        .get(format!("http://{edge_ip}:8088/some/page?x=1"))
        .header("host", "shop.test")
        .send()
        .await
        .expect("plain");
    assert_eq!(r.status(), 308);
    assert_eq!(
        r.headers().get("location").and_then(|v| v.to_str().ok()),
        Some("https://shop.test:8443/some/page?x=1")
    );
    let r = plain
        .get(format!(
            "http://{edge_ip}:8088/.well-known/acme-challenge/none"
        ))
        .header("host", "shop.test")
        .send()
        .await
        .expect("plain");
    assert_eq!(r.status(), 404, "the challenge path is not redirected");

    // Renewal at two thirds of 90 s, while a client asks over HTTPS the whole time: no
    // failed request.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (stop, client) = (stop.clone(), client.clone());
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0u64, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match client.get("https://shop.test:8443/").send().await {
                    Ok(r) if r.status() == 200 => ok += 1,
                    Ok(r) => failed.push(format!("HTTP {}", r.status())),
                    Err(e) => failed.push(format!("{e:?}")),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (ok, failed)
        })
    };
    let renewed = certificate(&mut admin, id, "renewed", Duration::from_secs(150), |c| {
        c["not_after"].is_string() && c["not_after"] != first["not_after"]
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = load.await.expect("load");
    println!(
        "renewed: {renewed}; {ok} HTTPS requests during, {} failed",
        failed.len()
    );
    assert!(failed.is_empty(), "{failed:?}");
    assert!(ok > 50, "{ok}");

    // A challenge that cannot succeed (the name points elsewhere): the API says why, and
    // the edge keeps serving the certificate it has.
    pebble.point("shop.test", &m_ip).await;
    let r = admin
        .post(&format!("/api/pools/{id}/certificate/renew"), json!({}))
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let failed = certificate(
        &mut admin,
        id,
        "failed with a reason",
        Duration::from_secs(120),
        |c| c["error"].is_string(),
    )
    .await;
    println!("failed renewal: {failed}");
    assert_eq!(
        failed["not_after"], renewed["not_after"],
        "the certificate held is kept"
    );
    assert!(failed["next_attempt_at"].is_string(), "{failed}");
    let r = client
        .get("https://shop.test:8443/")
        .send()
        .await
        .expect("https");
    assert_eq!(r.status(), 200);

    // DNS-01 for a wildcard name, through the domain's DNS provider: Cloudflare (the fake)
    // gets the _acme-challenge TXT record, which "its nameservers" (pebble's DNS, fed by
    // the fake's records) then answer.
    let cf = crate::providers::Fake::start(crate::providers::cloudflare).await;
    let zone = cf.with(|s| {
        let id = crate::providers::hex_id(700);
        s.coll("zones").insert(
            id.clone(),
            json!({ "id": id, "name": "wild.test", "status": "active",
            "account": { "id": crate::providers::ACCOUNT } }),
        );
        id
    });
    let r = crate::providers::put(
        &mut admin,
        "/api/providers/cloudflare",
        json!({ "token": crate::providers::CF_TOKEN, "api_url": format!("{}/client/v4", cf.base) }),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = admin
        .post("/api/domains", json!({ "name": "*.wild.test" }))
        .await;
    let wild = r.body["id"].as_i64().expect("domain");
    let r = admin
        .post(
            "/api/pools",
            json!({ "name": "wild", "workflow_id": wf, "domain_id": wild }),
        )
        .await;
    let id2 = r.body["id"].as_i64().expect("pool");
    let r = admin
        .patch(
            &format!("/api/pools/{id2}"),
            json!({ "edge_server_id": edge, "ports": { "listen": 8089, "target": 8080 },
            "health": { "interval_s": 1, "timeout_s": 1, "healthy_after": 1 } }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = admin
        .post(
            &format!("/api/pools/{id2}/scale-out"),
            json!({ "server_id": m1 }),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    // HTTP-01 cannot prove a wildcard, and DNS-01 needs the domain linked to its zone.
    let r = admin
        .patch(
            &format!("/api/pools/{id2}"),
            json!({ "tls": { "enabled": true, "port": 8444 } }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let c = certificate(
        &mut admin,
        id2,
        "refused for http-01",
        Duration::from_secs(60),
        |c| c["error"].as_str().is_some_and(|e| e.contains("wildcard")),
    )
    .await;
    assert!(c["not_after"].is_null(), "{c}");
    let r = admin
        .patch(
            &format!("/api/pools/{id2}"),
            json!({ "tls": { "challenge": "dns-01" } }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = admin
        .post(&format!("/api/pools/{id2}/certificate/renew"), json!({}))
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    certificate(
        &mut admin,
        id2,
        "said the zone is missing",
        Duration::from_secs(60),
        |c| c["error"].as_str().is_some_and(|e| e.contains("linked")),
    )
    .await;
    let r = admin
        .patch(
            &format!("/api/domains/{wild}"),
            json!({ "provider": "cloudflare", "zone": zone }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    // The provider's nameservers: every TXT record at the fake, published to pebble's DNS.
    stop.store(false, std::sync::atomic::Ordering::Relaxed);
    let mirror = {
        let stop = stop.clone();
        let state = cf.clone_state();
        let pebble_dns = PebbleDns(pebble.dns_management.clone());
        tokio::spawn(async move {
            let mut published: std::collections::BTreeMap<String, String> = Default::default();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let now: std::collections::BTreeMap<String, String> = {
                    let mut s = state.lock().expect("fake");
                    s.coll("dns")
                        .values()
                        .filter(|r| r["type"] == "TXT")
                        .map(|r| {
                            (
                                r["name"].as_str().unwrap_or_default().to_owned(),
                                r["content"].as_str().unwrap_or_default().to_owned(),
                            )
                        })
                        .collect()
                };
                for (name, value) in &now {
                    if published.get(name) != Some(value) {
                        pebble_dns.txt(name, Some(value)).await;
                    }
                }
                for name in published.keys().filter(|n| !now.contains_key(*n)) {
                    pebble_dns.txt(name, None).await;
                }
                published = now;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let r = admin
        .post(&format!("/api/pools/{id2}/certificate/renew"), json!({}))
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let c = certificate(
        &mut admin,
        id2,
        "issued over dns-01",
        Duration::from_secs(120),
        |c| c["not_after"].is_string(),
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    mirror.await.expect("mirror");
    println!("wildcard certificate: {c}");
    assert_eq!(c["names"], json!(["*.wild.test"]));
    assert!(
        cf.with(|s| s.coll("dns").values().all(|r| r["type"] != "TXT")),
        "the challenge record was removed"
    );
    let client = https_client("anything.wild.test", &edge_ip, 8444, root);
    let r = client
        .get("https://anything.wild.test:8444/")
        .send()
        .await
        .expect("https");
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.expect("body").trim(), "member tls-m1");
}

/// pebble-challtestsrv's management API.
struct PebbleDns(String);

impl PebbleDns {
    async fn txt(&self, host: &str, value: Option<&str>) {
        let (path, body) = match value {
            Some(v) => ("set-txt", json!({ "host": format!("{host}."), "value": v })),
            None => ("clear-txt", json!({ "host": format!("{host}.") })),
        };
        let r = reqwest::Client::new()
            .post(format!("{}/{path}", self.0))
            .json(&body)
            .send()
            .await
            .expect("txt");
        assert!(r.status().is_success(), "{r:?}");
    }
}
