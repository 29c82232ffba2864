//! Cloud providers through our API against local fakes of DigitalOcean and Cloudflare
//! that follow the providers' published shapes (paths, bearer auth, envelopes, pagination,
//! error bodies, rate-limit headers) and refuse what the real APIs refuse — fields the
//! spec does not define, missing required fields, out-of-range page sizes.

use mezzanine_tests::{fleet_controller_process, Client, ControllerProcess, Fleet};
use reqwest::Method;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const DO_TOKEN: &str = "dop_v1_4f1e0c0ffee0c0ffee0c0ffee0c0ffee0c0ffee0c0ffee0c0ffee0c0ffee0c0f";
pub(crate) const CF_TOKEN: &str = "cf-Zm9vYmFyYmF6cXV4cXV1eGNvcmdlZ3JhdWx0MTIzNDU2";

/// What a fake answers next instead of its normal answer, and how slowly.
#[derive(Default)]
struct Faults {
    /// Answers of 429 with these headers, one per request, before normal service.
    throttle: Vec<Vec<(&'static str, String)>>,
    /// Delay before every answer.
    delay: Duration,
}

/// A fake provider: shared state, a request log, and the faults to inject.
#[derive(Default)]
pub(crate) struct FakeState {
    /// (method, path with query) of every request received.
    seen: Vec<(String, String)>,
    faults: Faults,
    next_id: u64,
    /// Objects by collection name, each keyed by id.
    objects: BTreeMap<String, BTreeMap<String, Value>>,
    /// The `x-request-id` of the request being answered.
    request_id: Option<String>,
    /// Every `x-request-id` received (Contabo).
    request_ids: Vec<String>,
    /// Access tokens issued (Contabo), and the lifetime they are given.
    tokens: Vec<String>,
    token_lifetime: u64,
}

pub(crate) type Shared = Arc<Mutex<FakeState>>;

/// A fake's answer: status, extra headers, JSON body (`Null`: no body).
pub(crate) type Answer = (u16, Vec<(&'static str, String)>, Value);

/// A fake's routes: (state, method, path segments, query, Authorization, body) → answer.
pub(crate) type Route =
    fn(&mut FakeState, &str, &[&str], &BTreeMap<String, String>, Option<&str>, Value) -> Answer;

pub(crate) struct Fake {
    pub(crate) base: String,
    state: Shared,
    _server: tokio::task::JoinHandle<()>,
}

impl Fake {
    /// Serves `route(state, method, path, query, authorization, body)` on loopback.
    pub(crate) async fn start(route: Route) -> Fake {
        let state: Shared = Arc::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let st = state.clone();
        let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
            let st = st.clone();
            async move {
                let (parts, body) = req.into_parts();
                let bytes = axum::body::to_bytes(body, 1 << 20)
                    .await
                    .unwrap_or_default();
                let json: Value = if bytes.is_empty() {
                    Value::Null
                } else {
                    // A form (Contabo's token request) arrives as its text.
                    serde_json::from_slice(&bytes)
                        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
                };
                let query: BTreeMap<String, String> = parts
                    .uri
                    .query()
                    .map(|q| {
                        q.split('&')
                            .filter_map(|kv| kv.split_once('='))
                            .map(|(k, v)| (k.to_owned(), v.to_owned()))
                            .collect()
                    })
                    .unwrap_or_default();
                let auth = parts
                    .headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let request_id = parts
                    .headers
                    .get("x-request-id")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let (delay, throttled) = {
                    let mut s = st.lock().expect("fake");
                    s.request_id = request_id;
                    s.seen
                        .push((parts.method.to_string(), parts.uri.to_string()));
                    let t = if s.faults.throttle.is_empty() {
                        None
                    } else {
                        Some(s.faults.throttle.remove(0))
                    };
                    (s.faults.delay, t)
                };
                tokio::time::sleep(delay).await;
                let (status, headers, body) = match throttled {
                    Some(h) => (429, h, json!({ "id": "too_many_requests", "message": "API Rate limit exceeded.", "success": false, "errors": [{ "code": 971, "message": "Please wait and consider throttling your request speed" }] })),
                    None => {
                        let segs: Vec<&str> =
                            parts.uri.path().split('/').filter(|s| !s.is_empty()).collect();
                        let mut s = st.lock().expect("fake");
                        route(&mut s, parts.method.as_str(), &segs, &query, auth.as_deref(), json)
                    }
                };
                let mut resp = axum::response::Response::builder().status(status);
                for (k, v) in headers {
                    resp = resp.header(k, v);
                }
                if body.is_null() {
                    resp.body(axum::body::Body::empty()).expect("response")
                } else {
                    resp.header("content-type", "application/json")
                        .body(axum::body::Body::from(body.to_string()))
                        .expect("response")
                }
            }
        });
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Fake {
            base,
            state,
            _server: server,
        }
    }

    fn requests(&self) -> usize {
        self.state.lock().expect("fake").seen.len()
    }

    fn seen(&self) -> Vec<(String, String)> {
        self.state.lock().expect("fake").seen.clone()
    }

    /// The fake's state, for a task that watches it.
    pub(crate) fn clone_state(&self) -> Shared {
        self.state.clone()
    }

    pub(crate) fn with<T>(&self, f: impl FnOnce(&mut FakeState) -> T) -> T {
        f(&mut self.state.lock().expect("fake"))
    }
}

impl FakeState {
    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    pub(crate) fn coll(&mut self, name: &str) -> &mut BTreeMap<String, Value> {
        self.objects.entry(name.to_owned()).or_default()
    }
}

fn ok(v: Value) -> Answer {
    (200, Vec::new(), v)
}

// ---- DigitalOcean (v2), after its published OpenAPI ----------------------------------

fn do_error(status: u16, id: &str, message: &str) -> Answer {
    (
        status,
        Vec::new(),
        json!({ "id": id, "message": message, "request_id": "4d9d8375-3c56-4925-a3e7-eb137fed17e9" }),
    )
}

/// A page of `items` as DigitalOcean pages lists: `page` from 1, `per_page` 1–200.
fn do_page(key: &str, items: Vec<Value>, q: &BTreeMap<String, String>, path: &str) -> Answer {
    let page: usize = q.get("page").and_then(|p| p.parse().ok()).unwrap_or(1);
    let per: usize = match q.get("per_page").map(|p| p.parse::<usize>()) {
        None => 20,
        Some(Ok(n)) if (1..=200).contains(&n) => n,
        _ => return do_error(400, "bad_request", "per_page must be between 1 and 200"),
    };
    if page == 0 {
        return do_error(400, "bad_request", "page must be at least 1");
    }
    let total = items.len();
    let chunk: Vec<Value> = items.into_iter().skip((page - 1) * per).take(per).collect();
    let last = total.div_ceil(per).max(1);
    let mut pages = Map::new();
    let url = |p: usize| {
        json!(format!(
            "https://api.digitalocean.com/v2/{path}?page={p}&per_page={per}"
        ))
    };
    if page > 1 {
        pages.insert("first".into(), url(1));
        pages.insert("prev".into(), url(page - 1));
    }
    if page < last {
        pages.insert("next".into(), url(page + 1));
        pages.insert("last".into(), url(last));
    }
    ok(json!({ key: chunk, "links": { "pages": pages }, "meta": { "total": total } }))
}

/// Refuses a body with fields the operation does not define (the real API ignores
/// some, but a client that sends them is not following the spec).
fn unknown_fields(body: &Value, allowed: &[&str]) -> Option<String> {
    body.as_object()?
        .keys()
        .find(|k| !allowed.contains(&k.as_str()))
        .cloned()
}

fn digitalocean(
    s: &mut FakeState,
    method: &str,
    segs: &[&str],
    q: &BTreeMap<String, String>,
    auth: Option<&str>,
    body: Value,
) -> Answer {
    if auth != Some(&format!("Bearer {DO_TOKEN}")) {
        return do_error(401, "Unauthorized", "Unable to authenticate you");
    }
    let Some(("v2", rest)) = segs.split_first().map(|(a, b)| (*a, b)) else {
        return do_error(
            404,
            "not_found",
            "The resource you were accessing could not be found.",
        );
    };
    let not_found = || {
        do_error(
            404,
            "not_found",
            "The resource you were accessing could not be found.",
        )
    };
    match (method, rest) {
        ("GET", ["account"]) => ok(json!({ "account": {
            "droplet_limit": 25, "floating_ip_limit": 5, "email": "ops@example.com",
            "uuid": "b6fr89dbf6d9156cace5f3c78dc9851d957381ef", "email_verified": true,
            "status": "active", "status_message": "" } })),
        ("GET", ["droplets"]) => {
            let items = s.coll("droplets").values().cloned().collect();
            do_page("droplets", items, q, "droplets")
        }
        ("POST", ["droplets"]) => {
            let allowed = [
                "name",
                "region",
                "size",
                "image",
                "ssh_keys",
                "backups",
                "backup_policy",
                "ipv6",
                "monitoring",
                "tags",
                "user_data",
                "private_networking",
                "volumes",
                "vpc_uuid",
                "with_droplet_agent",
                "public_networking",
            ];
            if let Some(k) = unknown_fields(&body, &allowed) {
                return do_error(
                    422,
                    "unprocessable_entity",
                    &format!("{k} is not a permitted field"),
                );
            }
            for k in ["name", "size", "image"] {
                if body.get(k).is_none() {
                    return do_error(422, "unprocessable_entity", &format!("{k} is required"));
                }
            }
            if body["size"] == "s-999vcpu" {
                return do_error(
                    422,
                    "unprocessable_entity",
                    "Size is not available in this region.",
                );
            }
            let id = s.id();
            let d = json!({ "id": id, "name": body["name"], "status": "new", "memory": 1024,
                "vcpus": 1, "disk": 25, "locked": false, "created_at": "2026-12-03T17:00:00Z",
                "image": { "slug": body["image"] }, "size_slug": body["size"],
                "region": { "slug": body.get("region").cloned().unwrap_or(json!("nyc3")) },
                "networks": { "v4": [{ "ip_address": format!("203.0.113.{}", id % 250), "type": "public" }], "v6": [] },
                "tags": body.get("tags").cloned().unwrap_or(json!([])) });
            s.coll("droplets").insert(id.to_string(), d.clone());
            if let Some(u) = body.get("user_data") {
                s.coll("user_data").insert(id.to_string(), u.clone());
            }
            (
                202,
                Vec::new(),
                json!({ "droplet": d, "links": { "actions": [] } }),
            )
        }
        ("GET", ["droplets", id]) => match s.coll("droplets").get(*id) {
            Some(d) => ok(json!({ "droplet": d })),
            None => not_found(),
        },
        ("DELETE", ["droplets", id]) => match s.coll("droplets").remove(*id) {
            Some(_) => (204, Vec::new(), Value::Null),
            None => not_found(),
        },
        ("POST", ["droplets", id, "actions"]) => {
            let kinds = [
                "enable_backups",
                "disable_backups",
                "reboot",
                "power_cycle",
                "shutdown",
                "power_off",
                "power_on",
                "restore",
                "password_reset",
                "resize",
                "rebuild",
                "rename",
                "change_kernel",
                "enable_ipv6",
                "snapshot",
            ];
            let Some(kind) = body["type"].as_str().filter(|k| kinds.contains(k)) else {
                return do_error(422, "unprocessable_entity", "type is invalid");
            };
            let action_id = s.id();
            let Some(d) = s.coll("droplets").get_mut(*id) else {
                return not_found();
            };
            d["status"] = json!(match kind {
                "power_off" | "shutdown" => "off",
                _ => "active",
            });
            (
                201,
                Vec::new(),
                json!({ "action": { "id": action_id, "status": "in-progress",
                "type": kind, "resource_id": id.parse::<u64>().unwrap_or(0), "resource_type": "droplet" } }),
            )
        }
        ("GET", ["domains"]) => {
            let items = s.coll("domains").values().cloned().collect();
            do_page("domains", items, q, "domains")
        }
        ("POST", ["domains"]) => {
            if let Some(k) = unknown_fields(&body, &["name", "ip_address"]) {
                return do_error(
                    422,
                    "unprocessable_entity",
                    &format!("{k} is not a permitted field"),
                );
            }
            let Some(name) = body["name"].as_str().map(str::to_owned) else {
                return do_error(422, "unprocessable_entity", "name is required");
            };
            let d = json!({ "name": name, "ttl": 1800, "zone_file": "" });
            s.coll("domains").insert(name, d.clone());
            (201, Vec::new(), json!({ "domain": d }))
        }
        ("GET", ["domains", d, "records"]) => {
            if !s.coll("domains").contains_key(*d) {
                return not_found();
            }
            let items = s
                .coll("records")
                .values()
                .filter(|r| r["_domain"] == *d)
                .map(|r| {
                    let mut r = r.clone();
                    r.as_object_mut().map(|o| o.remove("_domain"));
                    r
                })
                .collect();
            do_page("domain_records", items, q, &format!("domains/{d}/records"))
        }
        ("POST", ["domains", d, "records"]) | ("PATCH", ["domains", d, "records", _]) => {
            if !s.coll("domains").contains_key(*d) {
                return not_found();
            }
            let allowed = [
                "type", "name", "data", "priority", "port", "ttl", "weight", "flags", "tag",
            ];
            if let Some(k) = unknown_fields(&body, &allowed) {
                return do_error(
                    422,
                    "unprocessable_entity",
                    &format!("{k} is not a permitted field"),
                );
            }
            // The spec requires `type` on create and update alike.
            if body.get("type").is_none() {
                return do_error(422, "unprocessable_entity", "type is required");
            }
            if body["type"] == "A"
                && body.get("data").is_some()
                && body["data"]
                    .as_str()
                    .and_then(|d| d.parse::<std::net::Ipv4Addr>().ok())
                    .is_none()
            {
                return do_error(
                    422,
                    "unprocessable_entity",
                    "Data needs to be a valid IP address.",
                );
            }
            let id = match rest {
                [_, _, _, id] => id.to_string(),
                _ => s.id().to_string(),
            };
            let mut r = match s.coll("records").get(&id) {
                Some(r) if method == "PATCH" => r.clone(),
                None if method == "PATCH" => return not_found(),
                _ => json!({ "id": id.parse::<u64>().unwrap_or(0), "ttl": 1800, "priority": null,
                    "port": null, "weight": null, "flags": null, "tag": null, "_domain": d }),
            };
            for (k, v) in body.as_object().into_iter().flatten() {
                r[k] = v.clone();
            }
            s.coll("records").insert(id, r.clone());
            r.as_object_mut().map(|o| o.remove("_domain"));
            (
                if method == "POST" { 201 } else { 200 },
                Vec::new(),
                json!({ "domain_record": r }),
            )
        }
        ("DELETE", ["domains", _, "records", id]) => match s.coll("records").remove(*id) {
            Some(_) => (204, Vec::new(), Value::Null),
            None => not_found(),
        },
        _ => not_found(),
    }
}

// ---- Cloudflare (v4), after its published OpenAPI ------------------------------------

fn cf_error(status: u16, code: i64, message: &str) -> Answer {
    (
        status,
        Vec::new(),
        json!({ "success": false, "errors": [{ "code": code, "message": message }], "messages": [], "result": null }),
    )
}

fn cf_ok(result: Value) -> Answer {
    ok(json!({ "success": true, "errors": [], "messages": [], "result": result }))
}

fn cf_page(items: Vec<Value>, q: &BTreeMap<String, String>, per_range: (usize, usize)) -> Answer {
    let page: usize = q
        .get("page")
        .and_then(|p| p.parse().ok())
        .unwrap_or(1)
        .max(1);
    let per: usize = match q.get("per_page").map(|p| p.parse::<usize>()) {
        None => 20,
        Some(Ok(n)) if (per_range.0..=per_range.1).contains(&n) => n,
        _ => return cf_error(400, 1001, "per_page must be within its bounds"),
    };
    let total = items.len();
    let chunk: Vec<Value> = items.into_iter().skip((page - 1) * per).take(per).collect();
    ok(
        json!({ "success": true, "errors": [], "messages": [], "result": chunk,
        "result_info": { "page": page, "per_page": per, "count": chunk.len(), "total_count": total } }),
    )
}

/// The Cloudflare account every fake zone belongs to.
pub(crate) const ACCOUNT: &str = "01a7362d577a6c3019a474fd6f485823";

/// An object without the fake's own bookkeeping fields (`_zone`).
fn strip(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        o.retain(|k, _| !k.starts_with('_'));
    }
    v
}

pub(crate) fn hex_id(n: u64) -> String {
    format!("{n:032x}")
}

pub(crate) fn cloudflare(
    s: &mut FakeState,
    method: &str,
    segs: &[&str],
    q: &BTreeMap<String, String>,
    auth: Option<&str>,
    body: Value,
) -> Answer {
    if auth != Some(&format!("Bearer {CF_TOKEN}")) {
        return cf_error(401, 1000, "Invalid API Token");
    }
    let Some(rest) = segs.strip_prefix(&["client", "v4"]) else {
        return cf_error(404, 7003, "Could not route to the path");
    };
    match (method, rest) {
        ("GET", ["user", "tokens", "verify"]) => {
            cf_ok(json!({ "id": hex_id(77), "status": "active" }))
        }
        ("GET", ["zones"]) => {
            let items = s.coll("zones").values().cloned().collect();
            cf_page(items, q, (5, 50))
        }
        ("GET", ["zones", z, "dns_records"]) => {
            if !s.coll("zones").contains_key(*z) {
                return cf_error(404, 7003, "Could not route to /zones/.../dns_records, perhaps your object identifier is invalid?");
            }
            let items = s
                .coll("dns")
                .values()
                .filter(|r| r["_zone"] == *z)
                .map(|r| {
                    let mut r = r.clone();
                    r.as_object_mut().map(|o| o.remove("_zone"));
                    r
                })
                .collect();
            cf_page(items, q, (5, 5_000_000))
        }
        ("POST", ["zones", z, "dns_records"]) | ("PATCH", ["zones", z, "dns_records", _]) => {
            if !s.coll("zones").contains_key(*z) {
                return cf_error(404, 7003, "Could not route to /zones/.../dns_records, perhaps your object identifier is invalid?");
            }
            let allowed = [
                "type", "name", "content", "ttl", "proxied", "comment", "priority", "tags",
                "settings", "data",
            ];
            if let Some(k) = unknown_fields(&body, &allowed) {
                return cf_error(400, 9000, &format!("{k}: unknown field"));
            }
            // The current spec requires type, name and ttl on create and on PATCH.
            for k in ["type", "name", "ttl"] {
                if body.get(k).is_none() {
                    return cf_error(400, 9000, &format!("DNS Validation Error: {k} is required"));
                }
            }
            let ttl = body["ttl"].as_i64().unwrap_or(0);
            if ttl != 1 && !(30..=86400).contains(&ttl) {
                return cf_error(
                    400,
                    9021,
                    "Invalid TTL. Must be between 30 and 86,400 seconds, or 1 for Automatic.",
                );
            }
            if body["name"] == "taken" {
                return cf_error(
                    400,
                    81053,
                    "An A, AAAA, or CNAME record with that host already exists.",
                );
            }
            let id = match rest {
                [_, _, _, id] => id.to_string(),
                _ => {
                    let n = s.id();
                    hex_id(n)
                }
            };
            let mut r = match s.coll("dns").get(&id) {
                Some(r) if method == "PATCH" => r.clone(),
                None if method == "PATCH" => return cf_error(404, 81044, "Record does not exist."),
                _ => {
                    json!({ "id": id, "proxied": false, "proxiable": true, "comment": null, "tags": [],
                    "created_on": "2026-12-03T17:00:00Z", "modified_on": "2026-12-03T17:00:00Z", "_zone": z })
                }
            };
            for (k, v) in body.as_object().into_iter().flatten() {
                r[k] = v.clone();
            }
            s.coll("dns").insert(id, r.clone());
            r.as_object_mut().map(|o| o.remove("_zone"));
            cf_ok(r)
        }
        ("GET", ["zones", z, "email", "routing", "rules"]) => {
            let items = s
                .coll("rules")
                .values()
                .filter(|r| r["_zone"] == *z)
                .map(strip)
                .collect();
            cf_page(items, q, (5, 50))
        }
        ("GET", ["zones", _, "email", "routing", "rules", "catch_all"]) => {
            let r = s
                .coll("catch_all")
                .values()
                .next()
                .cloned()
                .unwrap_or(json!({
                "id": hex_id(9), "tag": hex_id(9), "name": "", "enabled": false,
                "matchers": [{ "type": "all" }], "actions": [{ "type": "drop" }] }));
            cf_ok(r)
        }
        ("PUT", ["zones", _, "email", "routing", "rules", "catch_all"]) => {
            if let Some(k) = unknown_fields(&body, &["actions", "matchers", "enabled", "name"]) {
                return cf_error(400, 2020, &format!("{k}: unknown field"));
            }
            if body["matchers"] != json!([{ "type": "all" }]) || body.get("actions").is_none() {
                return cf_error(400, 2020, "Invalid rule operation");
            }
            let mut r = json!({ "id": hex_id(9), "tag": hex_id(9), "enabled": true, "name": "" });
            for (k, v) in body.as_object().into_iter().flatten() {
                r[k] = v.clone();
            }
            s.coll("catch_all").insert("one".into(), r.clone());
            cf_ok(r)
        }
        ("POST", ["zones", z, "email", "routing", "rules"])
        | ("PUT", ["zones", z, "email", "routing", "rules", _]) => {
            if let Some(k) = unknown_fields(
                &body,
                &["actions", "matchers", "enabled", "name", "priority"],
            ) {
                return cf_error(400, 2020, &format!("{k}: unknown field"));
            }
            if body.get("actions").is_none() || body.get("matchers").is_none() {
                return cf_error(400, 2020, "Invalid rule operation");
            }
            let id = match rest {
                [_, _, _, _, _, id] => id.to_string(),
                _ => {
                    let n = s.id();
                    hex_id(n)
                }
            };
            if method == "PUT" && !s.coll("rules").contains_key(&id) {
                return cf_error(404, 2020, "Rule not found");
            }
            let mut r = json!({ "id": id, "tag": id, "enabled": true, "name": "", "priority": 0, "_zone": z });
            for (k, v) in body.as_object().into_iter().flatten() {
                r[k] = v.clone();
            }
            s.coll("rules").insert(id, r.clone());
            cf_ok(strip(&r))
        }
        ("DELETE", ["zones", _, "email", "routing", "rules", id]) => {
            match s.coll("rules").remove(*id) {
                Some(r) => cf_ok(strip(&r)),
                None => cf_error(404, 2020, "Rule not found"),
            }
        }
        ("GET", ["accounts", a, "email", "routing", "addresses"]) => {
            if *a != ACCOUNT {
                return cf_error(403, 10000, "Authentication error");
            }
            let want_verified = q.get("verified").map(String::as_str) != Some("false");
            let items = s
                .coll("addresses")
                .values()
                .filter(|d| d["verified"].is_string() == want_verified)
                .cloned()
                .collect();
            cf_page(items, q, (5, 50))
        }
        ("POST", ["accounts", a, "email", "routing", "addresses"]) => {
            if *a != ACCOUNT {
                return cf_error(403, 10000, "Authentication error");
            }
            if unknown_fields(&body, &["email"]).is_some() || !body["email"].is_string() {
                return cf_error(400, 2020, "Invalid email");
            }
            let n = s.id();
            let d = json!({ "id": hex_id(n), "tag": hex_id(n), "email": body["email"], "verified": null,
                "created": "2026-12-03T17:00:00Z", "modified": "2026-12-03T17:00:00Z" });
            s.coll("addresses").insert(hex_id(n), d.clone());
            cf_ok(d)
        }
        ("DELETE", ["accounts", _, "email", "routing", "addresses", id]) => {
            match s.coll("addresses").remove(*id) {
                Some(d) => cf_ok(d),
                None => cf_error(404, 2020, "Address not found"),
            }
        }
        ("DELETE", ["zones", _, "dns_records", id]) => match s.coll("dns").remove(*id) {
            Some(_) => cf_ok(json!({ "id": id })),
            None => cf_error(404, 81044, "Record does not exist."),
        },
        _ => cf_error(404, 7003, "Could not route to the path"),
    }
}

// ---- Hostinger, after its published OpenAPI ------------------------------------------

const HG_TOKEN: &str = "hg-7Tq2mZ0xWv9RkLpQ3sNfYbH8cJdE5aGu";

fn hg_error(status: u16, message: &str) -> Answer {
    (
        status,
        Vec::new(),
        json!({ "message": message, "correlation_id": "26a91bd9-f8c8-4a83-9df9-83e23d696fe3" }),
    )
}

fn hostinger(
    s: &mut FakeState,
    method: &str,
    segs: &[&str],
    q: &BTreeMap<String, String>,
    auth: Option<&str>,
    body: Value,
) -> Answer {
    if auth != Some(&format!("Bearer {HG_TOKEN}")) {
        return hg_error(401, "Unauthenticated.");
    }
    let types = [
        "A", "AAAA", "CNAME", "ALIAS", "MX", "TXT", "NS", "SOA", "SRV", "CAA",
    ];
    match (method, segs) {
        ("GET", ["api", "vps", "v1", "virtual-machines"]) => {
            ok(Value::Array(s.coll("vms").values().cloned().collect()))
        }
        ("GET", ["api", "vps", "v1", "virtual-machines", id]) => match s.coll("vms").get(*id) {
            Some(vm) => ok(vm.clone()),
            None => hg_error(404, "Virtual machine not found"),
        },
        ("POST", ["api", "vps", "v1", "virtual-machines", id, action]) => {
            if !body.is_null() {
                return hg_error(422, "This action takes no body");
            }
            let n = s.id();
            let Some(vm) = s.coll("vms").get_mut(*id) else {
                return hg_error(404, "Virtual machine not found");
            };
            vm["state"] = json!(if *action == "stop" {
                "stopped"
            } else {
                "running"
            });
            ok(
                json!({ "id": n, "name": format!("{action}_virtual_machine"), "state": "sent",
                "created_at": "2026-12-03T17:00:00Z", "updated_at": "2026-12-03T17:00:00Z" }),
            )
        }
        ("GET", ["api", "domains", "v1", "portfolio"]) => ok(json!([
            { "id": 1, "domain": "shop.example", "type": "domain", "status": "active",
              "created_at": "2025-01-01T00:00:00Z", "expires_at": "2027-01-01T00:00:00Z" }
        ])),
        ("GET", ["api", "dns", "v1", "zones", d]) => {
            if *d != "shop.example" {
                return hg_error(404, "Domain not found");
            }
            ok(Value::Array(s.coll("zone").values().cloned().collect()))
        }
        ("PUT", ["api", "dns", "v1", "zones", "shop.example"]) => {
            if unknown_fields(&body, &["overwrite", "zone"]).is_some() {
                return hg_error(422, "Unknown field");
            }
            let Some(zone) = body["zone"].as_array() else {
                return (
                    422,
                    Vec::new(),
                    json!({ "message": "The zone field is required.", "errors": { "zone": ["The zone field is required."] }, "correlation_id": "c" }),
                );
            };
            for e in zone {
                if !types.contains(&e["type"].as_str().unwrap_or("")) {
                    return (
                        422,
                        Vec::new(),
                        json!({ "message": "The selected zone.0.type is invalid.", "errors": { "zone.0.type": ["The selected zone.0.type is invalid."] }, "correlation_id": "c" }),
                    );
                }
                if e["type"] == "A" && e["records"][0]["content"] == "10.0.0.300" {
                    return (
                        422,
                        Vec::new(),
                        json!({ "message": "The zone.0.records.0.content must be a valid IPv4 address.", "errors": { "zone.0.records.0.content": ["The zone.0.records.0.content must be a valid IPv4 address."] }, "correlation_id": "c" }),
                    );
                }
                let key = format!(
                    "{} {}",
                    e["name"].as_str().unwrap_or(""),
                    e["type"].as_str().unwrap_or("")
                );
                let records: Vec<Value> = e["records"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|r| json!({ "content": r["content"], "is_disabled": false }))
                    .collect();
                let overwrite = body.get("overwrite") != Some(&json!(false));
                let entry = s.coll("zone").entry(key).or_insert(
                    json!({ "name": e["name"], "type": e["type"], "ttl": 14400, "records": [] }),
                );
                if let Some(t) = e.get("ttl") {
                    entry["ttl"] = t.clone();
                }
                if overwrite {
                    entry["records"] = json!(records);
                } else if let Some(a) = entry["records"].as_array_mut() {
                    a.extend(records);
                }
            }
            ok(json!({ "message": "Request accepted" }))
        }
        ("DELETE", ["api", "dns", "v1", "zones", "shop.example"]) => {
            let Some(filters) = body["filters"].as_array() else {
                return hg_error(422, "The filters field is required.");
            };
            for f in filters {
                let key = format!(
                    "{} {}",
                    f["name"].as_str().unwrap_or(""),
                    f["type"].as_str().unwrap_or("")
                );
                s.coll("zone").remove(&key);
            }
            ok(json!({ "message": "Request accepted" }))
        }
        ("GET", ["api", "mail", "v1", "orders"]) => {
            let page: usize = q
                .get("page")
                .and_then(|p| p.parse().ok())
                .unwrap_or(1)
                .max(1);
            let per: usize = match q.get("per_page").map(|p| p.parse::<usize>()) {
                None => 25,
                Some(Ok(n)) if (1..=100).contains(&n) => n,
                _ => return hg_error(422, "The per page field must not be greater than 100."),
            };
            let all: Vec<Value> = s.coll("mail").values().cloned().collect();
            let total = all.len();
            let data: Vec<Value> = all.into_iter().skip((page - 1) * per).take(per).collect();
            ok(
                json!({ "data": data, "meta": { "current_page": page, "per_page": per, "total": total } }),
            )
        }
        ("GET", ["api", "billing", "v1", "subscriptions"]) => ok(json!([
            { "id": "Azz353Uhl1xC54pR0", "name": "KVM 2", "status": "active", "billing_period": 1,
              "billing_period_unit": "month", "currency_code": "EUR", "total_price": 1299,
              "renewal_price": 1599, "is_auto_renewed": true, "created_at": "2025-01-01T00:00:00Z",
              "expires_at": "2027-01-01T00:00:00Z", "next_billing_at": "2026-12-31T00:00:00Z" }
        ])),
        _ => hg_error(404, "Not found"),
    }
}

// ---- Contabo, after its published OpenAPI and its OAuth token endpoint ----------------

const CB_CLIENT_SECRET: &str = "cb-client-secret-8f2d1c9a7e";
const CB_PASSWORD: &str = "Api user pass 7!";

fn cb_error(status: u16, message: &str) -> Answer {
    (
        status,
        Vec::new(),
        json!({ "statusCode": status, "message": message }),
    )
}

fn cb_data(status: u16, items: Vec<Value>) -> Answer {
    (
        status,
        Vec::new(),
        json!({ "data": items, "_links": { "self": "/v1" } }),
    )
}

/// `application/x-www-form-urlencoded` value decoding: `+` is a space, `%XX` a byte.
fn form_decode(v: &str) -> String {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A v4 UUID as Contabo's spec patterns it.
fn is_uuid(v: &str) -> bool {
    let parts: Vec<&str> = v.split('-').collect();
    parts.iter().map(|p| p.len()).collect::<Vec<_>>() == [8, 4, 4, 4, 12]
        && v.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

fn contabo(
    s: &mut FakeState,
    method: &str,
    segs: &[&str],
    q: &BTreeMap<String, String>,
    auth: Option<&str>,
    body: Value,
) -> Answer {
    if segs.first() == Some(&"auth") {
        // The OpenID Connect token endpoint: a form with the password grant.
        let form: BTreeMap<String, String> = body
            .as_str()
            .unwrap_or_default()
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), form_decode(v)))
            .collect();
        let get = |k: &str| form.get(k).map(String::as_str);
        if (
            get("grant_type"),
            get("client_id"),
            get("client_secret"),
            get("username"),
            get("password"),
        ) != (
            Some("password"),
            Some("cb-client"),
            Some(CB_CLIENT_SECRET),
            Some("ops@example.com"),
            Some(CB_PASSWORD),
        ) {
            return (
                401,
                Vec::new(),
                json!({ "error": "invalid_grant", "error_description": "Invalid user credentials" }),
            );
        }
        let token = format!("cb-access-{}", s.tokens.len() + 1);
        s.tokens.push(token.clone());
        return ok(
            json!({ "access_token": token, "expires_in": s.token_lifetime, "token_type": "Bearer" }),
        );
    }
    let Some(rid) = s.request_id.clone().filter(|r| is_uuid(r)) else {
        return cb_error(400, "x-request-id must be a UUID");
    };
    s.request_ids.push(rid);
    let valid = auth
        .and_then(|a| a.strip_prefix("Bearer "))
        .is_some_and(|t| s.tokens.last().map(String::as_str) == Some(t));
    if !valid {
        return cb_error(401, "Unauthorized");
    }
    let Some(rest) = segs.strip_prefix(&["v1"]) else {
        return cb_error(404, "Not Found");
    };
    let page = |items: Vec<Value>| {
        let page: usize = q
            .get("page")
            .and_then(|p| p.parse().ok())
            .unwrap_or(1)
            .max(1);
        let size: usize = q
            .get("size")
            .and_then(|p| p.parse().ok())
            .unwrap_or(10)
            .clamp(1, 1000);
        let total = items.len();
        let data: Vec<Value> = items
            .into_iter()
            .skip((page - 1) * size)
            .take(size)
            .collect();
        ok(
            json!({ "data": data, "_links": {}, "_pagination": { "page": page, "size": size,
            "totalElements": total, "totalPages": total.div_ceil(size) } }),
        )
    };
    match (method, rest) {
        ("GET", ["users", "client"]) => cb_data(
            200,
            vec![json!({ "id": "5f2d", "clientId": "cb-client", "secret": CB_CLIENT_SECRET })],
        ),
        ("GET", ["compute", "instances"]) => page(s.coll("instances").values().cloned().collect()),
        ("POST", ["compute", "instances"]) => {
            let allowed = [
                "imageId",
                "productId",
                "region",
                "sshKeys",
                "rootPassword",
                "userData",
                "license",
                "period",
                "displayName",
                "defaultUser",
                "addOns",
                "applicationId",
            ];
            if let Some(k) = unknown_fields(&body, &allowed) {
                return cb_error(400, &format!("property {k} should not exist"));
            }
            if body.get("period").is_none() {
                return cb_error(400, "period must be a number");
            }
            let id = 200_000 + s.id();
            let i = json!({ "instanceId": id, "name": format!("vmi{id}"), "displayName": body.get("displayName").cloned().unwrap_or(json!("")),
                "status": "provisioning", "region": body.get("region").cloned().unwrap_or(json!("EU")), "productId": body.get("productId").cloned().unwrap_or(json!("V45")),
                "ipConfig": { "v4": { "ip": "198.51.100.9" } }, "cpuCores": 4, "ramMb": 8192, "diskMb": 204800 });
            s.coll("instances").insert(id.to_string(), i.clone());
            if let Some(u) = body.get("userData") {
                s.coll("user_data").insert(id.to_string(), u.clone());
            }
            cb_data(201, vec![i])
        }
        ("GET", ["compute", "instances", id]) => match s.coll("instances").get(*id) {
            Some(i) => cb_data(200, vec![i.clone()]),
            None => cb_error(
                404,
                &format!("Entry Instances not found by instanceId {id}"),
            ),
        },
        ("PATCH", ["compute", "instances", id]) => {
            if unknown_fields(&body, &["displayName"]).is_some() {
                return cb_error(400, "only displayName can change");
            }
            match s.coll("instances").get_mut(*id) {
                Some(i) => {
                    i["displayName"] = body["displayName"].clone();
                    let i = i.clone();
                    cb_data(200, vec![i])
                }
                None => cb_error(
                    404,
                    &format!("Entry Instances not found by instanceId {id}"),
                ),
            }
        }
        ("POST", ["compute", "instances", id, "actions", action]) => match s
            .coll("instances")
            .get_mut(*id)
        {
            Some(i) => {
                i["status"] = json!(if matches!(*action, "stop" | "shutdown") {
                    "stopped"
                } else {
                    "running"
                });
                cb_data(
                    201,
                    vec![json!({ "instanceId": id.parse::<u64>().unwrap_or(0), "action": action })],
                )
            }
            None => cb_error(
                404,
                &format!("Entry Instances not found by instanceId {id}"),
            ),
        },
        ("GET", ["compute", "instances", id, "snapshots"]) => {
            let items = s
                .coll("snapshots")
                .values()
                .filter(|x| x["_instance"] == *id)
                .map(strip)
                .collect();
            page(items)
        }
        ("POST", ["compute", "instances", id, "snapshots"]) => {
            if unknown_fields(&body, &["name", "description"]).is_some() {
                return cb_error(400, "unknown property");
            }
            let name = body["name"].as_str().unwrap_or_default();
            if name.is_empty() || name.chars().count() > 30 {
                return cb_error(400, "name must be shorter than or equal to 30 characters");
            }
            let sid = format!("snap{}", s.id());
            let snap = json!({ "snapshotId": sid, "name": name, "description": body.get("description").cloned().unwrap_or(json!("")), "instanceId": id.parse::<u64>().unwrap_or(0), "_instance": id });
            s.coll("snapshots").insert(sid, snap.clone());
            cb_data(201, vec![strip(&snap)])
        }
        ("DELETE", ["compute", "instances", _, "snapshots", sid]) => {
            match s.coll("snapshots").remove(*sid) {
                Some(_) => (204, Vec::new(), Value::Null),
                None => cb_error(404, "Entry Snapshot not found"),
            }
        }
        ("POST", ["compute", "instances", id, "snapshots", sid, "rollback"]) => {
            if body != json!({}) {
                return cb_error(400, "rollback takes an empty object");
            }
            match s.coll("snapshots").get(*sid) {
                Some(_) => cb_data(
                    200,
                    vec![
                        json!({ "instanceId": id.parse::<u64>().unwrap_or(0), "snapshotId": sid }),
                    ],
                ),
                None => cb_error(404, "Entry Snapshot not found"),
            }
        }
        ("GET", ["secrets"]) => page(s.coll("secrets").values().cloned().collect()),
        ("POST", ["secrets"]) | ("PATCH", ["secrets", _]) => {
            if unknown_fields(&body, &["name", "value", "type"]).is_some() {
                return cb_error(400, "unknown property");
            }
            if body
                .get("value")
                .is_some_and(|v| v.as_str().is_none_or(|v| v.len() < 8))
            {
                return cb_error(400, "value must be longer than or equal to 8 characters");
            }
            let id = match rest {
                ["secrets", id] => id.to_string(),
                _ => s.id().to_string(),
            };
            let mut secret = match s.coll("secrets").get(&id) {
                Some(x) if method == "PATCH" => x.clone(),
                None if method == "PATCH" => return cb_error(404, "Entry Secret not found"),
                _ => {
                    json!({ "secretId": id.parse::<u64>().unwrap_or(0), "tenantId": "DE", "customerId": "54321", "createdAt": "2026-12-03T17:00:00Z" })
                }
            };
            for (k, v) in body.as_object().into_iter().flatten() {
                secret[k] = v.clone();
            }
            s.coll("secrets").insert(id, secret.clone());
            cb_data(if method == "POST" { 201 } else { 200 }, vec![secret])
        }
        ("DELETE", ["secrets", id]) => match s.coll("secrets").remove(*id) {
            Some(_) => (204, Vec::new(), Value::Null),
            None => cb_error(404, "Entry Secret not found"),
        },
        _ => cb_error(404, "Not Found"),
    }
}

/// A provider that rate-limits for long (429 passed on with its wait) and one that does
/// not answer in time (504 within the controller's bound, 2 s in these tests).
async fn limits_and_timeouts(admin: &mut Client, fake: &Fake, path: &str, label: &str) {
    fake.with(|s| s.faults.throttle = vec![vec![("retry-after", "90".into())]]);
    let r = admin.get(path).await;
    assert_eq!(r.status, 429, "{path}: {}", r.body);
    assert_eq!(r.header("retry-after"), Some("90"), "{path}");
    assert!(r.error().contains(label), "{}", r.body);
    fake.with(|s| s.faults.delay = Duration::from_secs(5));
    let t = Instant::now();
    let r = admin.get(path).await;
    assert_eq!(r.status, 504, "{path}: {}", r.body);
    assert!(
        r.error().contains(&format!("{label} did not answer")),
        "{}",
        r.body
    );
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    fake.with(|s| s.faults.delay = Duration::ZERO);
    assert_eq!(admin.get(path).await.status, 200, "{path} answers again");
}

pub(crate) async fn put(admin: &mut Client, path: &str, body: Value) -> mezzanine_tests::Resp {
    admin.send(Method::PUT, path, Some(body)).await
}

/// Everything a controller has said and stored: its log lines and its database file.
fn controller_traces(ctl: &ControllerProcess) -> Vec<u8> {
    let mut out = ctl
        .proc
        .lines
        .lock()
        .expect("lines")
        .join("\n")
        .into_bytes();
    out.extend(ctl.stored_bytes());
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digitalocean_through_our_api() {
    let fake = Fake::start(digitalocean).await;
    let ctl = ControllerProcess::start(false, &["--provider-timeout-secs", "2"]);
    let mut admin = mezzanine_tests::first_admin(&ctl.base).await;
    let api_url = format!("{}/v2", fake.base);

    // Not configured yet: a clear 409, nothing sent anywhere.
    let r = admin.get("/api/digitalocean/droplets").await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(
        r.error().contains("PUT /api/providers/digitalocean"),
        "{}",
        r.body
    );
    assert_eq!(fake.requests(), 0);

    // Credentials: checked with GET /account; a refused token is a 400 and not kept.
    let r = put(
        &mut admin,
        "/api/providers/digitalocean",
        json!({ "token": "dop_v1_wrong", "api_url": api_url }),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(
        r.error(),
        "token: DigitalOcean refused it: Unable to authenticate you"
    );
    for (body, field) in [
        (json!({ "token": "has space", "api_url": api_url }), "token"),
        (
            json!({ "token": DO_TOKEN, "api_url": "http://api.example.com/v2" }),
            "api_url",
        ),
        (
            json!({ "token": DO_TOKEN, "account_id": "abc" }),
            "account_id",
        ),
    ] {
        let r = put(&mut admin, "/api/providers/digitalocean", body.clone()).await;
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        assert!(r.error().starts_with(field), "{body}: {}", r.body);
    }
    // An unknown provider is a 404 before any request.
    let r = put(
        &mut admin,
        "/api/providers/linode",
        json!({ "token": DO_TOKEN, "api_url": api_url }),
    )
    .await;
    assert_eq!(r.status, 404, "{}", r.body);
    let r = put(
        &mut admin,
        "/api/providers/digitalocean",
        json!({ "token": DO_TOKEN, "api_url": api_url }),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["account"], "ops@example.com");
    let r = admin.get("/api/providers").await;
    let d = r
        .body
        .as_array()
        .and_then(|l| l.iter().find(|p| p["provider"] == "digitalocean"))
        .cloned()
        .expect("listed");
    assert_eq!(
        (d["configured"].as_bool(), d["account"].as_str()),
        (Some(true), Some("ops@example.com")),
        "{d}"
    );
    assert!(!r.body.to_string().contains(DO_TOKEN));

    // Lists come back whole: 450 droplets over three pages of 200.
    fake.with(|s| {
        for i in 0..450 {
            let id = s.id();
            s.coll("droplets").insert(
                id.to_string(),
                json!({ "id": id, "name": format!("d{i}"), "status": "active" }),
            );
        }
    });
    let before = fake.requests();
    let r = admin.get("/api/digitalocean/droplets").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body.as_array().map(Vec::len), Some(450));
    assert_eq!(fake.requests() - before, 3, "{:?}", fake.seen());

    // Create (only fields the spec defines), get, power off, destroy.
    let before = fake.requests();
    for (body, field) in [
        (
            json!({ "name": "web;1", "size": "s-1vcpu-1gb", "image": "debian-12-x64" }),
            "name",
        ),
        (json!({ "name": "web-1", "size": "s-1vcpu-1gb" }), "image"),
        (
            json!({ "name": "web-1", "size": "s-1vcpu-1gb", "image": "debian-12-x64", "colour": "red" }),
            "colour",
        ),
    ] {
        let r = admin.post("/api/digitalocean/droplets", body.clone()).await;
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        assert!(r.error().contains(field), "{body}: {}", r.body);
    }
    assert_eq!(
        fake.requests(),
        before,
        "refused before reaching DigitalOcean"
    );
    let r = admin
        .post(
            "/api/digitalocean/droplets",
            json!({ "name": "web-1", "size": "s-999vcpu", "image": "debian-12-x64" }),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(
        r.error(),
        "DigitalOcean rejected the request: Size is not available in this region."
    );
    let r = admin
        .post("/api/digitalocean/droplets", json!({ "name": "web-1", "size": "s-1vcpu-1gb", "image": "debian-12-x64", "region": "ams3", "tags": ["env:prod"] }))
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.body["id"].as_u64().expect("droplet id");
    assert_eq!(r.body["status"], "new");
    let r = admin.get(&format!("/api/digitalocean/droplets/{id}")).await;
    assert_eq!(
        (r.status, r.body["name"].as_str()),
        (200, Some("web-1")),
        "{}",
        r.body
    );
    let r = admin
        .post(
            &format!("/api/digitalocean/droplets/{id}/actions"),
            json!({ "type": "power_off" }),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(
        (r.body["type"].as_str(), r.body["status"].as_str()),
        (Some("power_off"), Some("in-progress"))
    );
    assert_eq!(
        admin
            .get(&format!("/api/digitalocean/droplets/{id}"))
            .await
            .body["status"],
        "off"
    );
    let r = admin
        .post(
            &format!("/api/digitalocean/droplets/{id}/actions"),
            json!({ "type": "rebuild" }),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    let r = admin
        .delete(&format!("/api/digitalocean/droplets/{id}"))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = admin.get(&format!("/api/digitalocean/droplets/{id}")).await;
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(
        r.error(),
        "DigitalOcean: The resource you were accessing could not be found."
    );
    assert_eq!(
        admin.get("/api/digitalocean/droplets/web-1").await.status,
        400
    );

    // Domains and records; PATCH needs the type, as the spec says.
    let r = admin
        .post(
            "/api/digitalocean/domains",
            json!({ "name": "Example.com" }),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(
        admin.get("/api/digitalocean/domains").await.body[0]["name"],
        "example.com"
    );
    let r = admin
        .post(
            "/api/digitalocean/domains/example.com/records",
            json!({ "type": "A", "name": "www", "data": "192.0.2.10", "ttl": 300 }),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let rec = r.body["id"].as_u64().expect("record id");
    let r = admin
        .post(
            "/api/digitalocean/domains/example.com/records",
            json!({ "type": "A", "name": "api", "data": "not-an-ip" }),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.error().contains("valid IP address"), "{}", r.body);
    let r = admin
        .patch(
            &format!("/api/digitalocean/domains/example.com/records/{rec}"),
            json!({ "data": "192.0.2.11" }),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.error().starts_with("type"), "{}", r.body);
    let r = admin
        .patch(
            &format!("/api/digitalocean/domains/example.com/records/{rec}"),
            json!({ "type": "A", "data": "192.0.2.11" }),
        )
        .await;
    assert_eq!(
        (r.status, r.body["data"].as_str()),
        (200, Some("192.0.2.11")),
        "{}",
        r.body
    );
    let r = admin
        .get("/api/digitalocean/domains/example.com/records")
        .await;
    assert_eq!(r.body.as_array().map(Vec::len), Some(1), "{}", r.body);
    let r = admin
        .delete(&format!(
            "/api/digitalocean/domains/example.com/records/{rec}"
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = admin
        .get("/api/digitalocean/domains/nope.example/records")
        .await;
    assert_eq!(r.status, 404, "{}", r.body);

    // 429: a short wait (ratelimit-reset) is waited out once; a long one is passed on
    // with Retry-After.
    let soon = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 1)
    .to_string();
    fake.with(|s| {
        s.faults.throttle = vec![vec![
            ("ratelimit-reset", soon.clone()),
            ("ratelimit-remaining", "0".into()),
        ]]
    });
    let before = fake.requests();
    let r = admin.get("/api/digitalocean/domains").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(fake.requests() - before, 2);
    let later = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 60)
        .to_string();
    fake.with(|s| s.faults.throttle = vec![vec![("ratelimit-reset", later.clone())]]);
    let r = admin.get("/api/digitalocean/domains").await;
    assert_eq!(r.status, 429, "{}", r.body);
    let wait: u64 = r
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("retry-after");
    assert!((55..=60).contains(&wait), "{wait}");
    assert!(r.error().contains("DigitalOcean"), "{}", r.body);

    // A provider that does not answer in time: 504 naming it, within the bound.
    fake.with(|s| s.faults.delay = Duration::from_secs(5));
    let t = Instant::now();
    let r = admin.get("/api/digitalocean/domains").await;
    assert_eq!(r.status, 504, "{}", r.body);
    assert!(
        r.error().contains("DigitalOcean did not answer"),
        "{}",
        r.body
    );
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    fake.with(|s| s.faults.delay = Duration::ZERO);

    // Mutations are audited with their object; the token is nowhere: not in any answer,
    // log line, audit record or the database file.
    let audit = admin.get("/api/audit?per_page=200").await.body.to_string();
    assert!(
        audit.contains("droplet") && audit.contains("provider digitalocean"),
        "{audit}"
    );
    assert!(!audit.contains(DO_TOKEN));
    let traces = controller_traces(&ctl);
    assert!(
        !traces
            .windows(DO_TOKEN.len())
            .any(|w| w == DO_TOKEN.as_bytes()),
        "the token is stored or logged in the clear"
    );

    // Forgetting the credentials.
    let r = admin.delete("/api/providers/digitalocean").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(admin.get("/api/digitalocean/droplets").await.status, 409);
    assert_eq!(
        admin.delete("/api/providers/digitalocean").await.status,
        404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudflare_dns_through_our_api() {
    let fake = Fake::start(cloudflare).await;
    let ctl = ControllerProcess::start(false, &["--provider-timeout-secs", "2"]);
    let mut admin = mezzanine_tests::first_admin(&ctl.base).await;
    let api_url = format!("{}/client/v4", fake.base);
    let r = put(
        &mut admin,
        "/api/providers/cloudflare",
        json!({ "token": "wrong", "api_url": api_url }),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(
        r.error(),
        "token: Cloudflare refused it: Invalid API Token (1000)"
    );
    let r = put(
        &mut admin,
        "/api/providers/cloudflare",
        json!({ "token": CF_TOKEN, "api_url": api_url }),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);

    // 120 zones over pages of 50.
    let zone = fake.with(|s| {
        for i in 0..120u64 {
            let id = hex_id(1000 + i);
            s.coll("zones").insert(
                id.clone(),
                json!({ "id": id, "name": format!("zone{i}.example"), "status": "active", "account": { "id": ACCOUNT, "name": "Ops" } }),
            );
        }
        hex_id(1000)
    });
    let before = fake.requests();
    let r = admin.get("/api/cloudflare/zones").await;
    assert_eq!(r.body.as_array().map(Vec::len), Some(120), "{}", r.body);
    assert_eq!(fake.requests() - before, 3);

    // Records: ttl sent even when not given (the spec requires it), checked content.
    let dns = format!("/api/cloudflare/zones/{zone}/dns");
    let r = admin
        .post(
            &dns,
            json!({ "type": "A", "name": "www", "content": "192.0.2.20", "proxied": true }),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["ttl"], 1);
    let rec = r.body["id"].as_str().expect("record id").to_owned();
    for (body, field) in [
        (
            json!({ "type": "A", "name": "www", "content": "nope" }),
            "content",
        ),
        (
            json!({ "type": "A", "name": "www;x", "content": "192.0.2.1" }),
            "name",
        ),
        (
            json!({ "type": "TXT", "name": "www", "content": "x", "ttl": 5 }),
            "ttl",
        ),
    ] {
        let r = admin.post(&dns, body.clone()).await;
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        assert!(r.error().starts_with(field), "{body}: {}", r.body);
    }
    let r = admin
        .post(
            &dns,
            json!({ "type": "A", "name": "taken", "content": "192.0.2.1" }),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.error(), "Cloudflare rejected the request: An A, AAAA, or CNAME record with that host already exists. (81053)");
    let r = admin
        .patch(
            &format!("{dns}/{rec}"),
            json!({ "type": "A", "name": "www", "content": "192.0.2.21", "ttl": 300 }),
        )
        .await;
    assert_eq!(
        (r.status, r.body["content"].as_str()),
        (200, Some("192.0.2.21")),
        "{}",
        r.body
    );
    let r = admin.get(&dns).await;
    assert_eq!(r.body.as_array().map(Vec::len), Some(1), "{}", r.body);
    let r = admin.delete(&format!("{dns}/{rec}")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = admin.delete(&format!("{dns}/{rec}")).await;
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(
        admin.get("/api/cloudflare/zones/not-hex/dns").await.status,
        400
    );
    let r = admin
        .get(&format!("/api/cloudflare/zones/{}/dns", hex_id(5)))
        .await;
    assert_eq!(r.status, 404, "{}", r.body);

    // Email Routing: rules, the catch-all, and the account's destination addresses
    // (the account found from the zone, since none is configured).
    let email = format!("/api/cloudflare/zones/{zone}/email");
    let r = admin
        .post(
            &format!("{email}/destinations"),
            json!({ "email": "ops@example.net" }),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert!(r.body["verified"].is_null(), "{}", r.body);
    let dest = r.body["id"].as_str().expect("destination").to_owned();
    fake.with(|s| {
        let n = s.id();
        s.coll("addresses").insert(hex_id(n), json!({ "id": hex_id(n), "email": "old@example.net", "verified": "2026-01-01T00:00:00Z" }));
    });
    let r = admin.get(&format!("{email}/destinations")).await;
    assert_eq!(
        r.body.as_array().map(Vec::len),
        Some(2),
        "verified and pending: {}",
        r.body
    );
    let r = admin
        .post(
            &format!("{email}/destinations"),
            json!({ "email": "not-an-address" }),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    let rule = json!({ "name": "hello", "actions": [{ "type": "forward", "value": ["ops@example.net"] }],
        "matchers": [{ "type": "literal", "field": "to", "value": "hello@zone0.example" }] });
    let r = admin.post(&format!("{email}/rules"), rule.clone()).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let rule_id = r.body["id"].as_str().expect("rule").to_owned();
    let r = admin
        .post(&format!("{email}/rules"), json!({ "actions": [{ "type": "forward", "value": ["x"] }], "matchers": [{ "type": "all" }] }))
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.error().starts_with("actions[0].value[0]"), "{}", r.body);
    let mut changed = rule.clone();
    changed["enabled"] = json!(false);
    let r = admin
        .send(
            Method::PUT,
            &format!("{email}/rules/{rule_id}"),
            Some(changed),
        )
        .await;
    assert_eq!(
        (r.status, r.body["enabled"].as_bool()),
        (200, Some(false)),
        "{}",
        r.body
    );
    assert_eq!(
        admin
            .get(&format!("{email}/rules"))
            .await
            .body
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    let r = admin.delete(&format!("{email}/rules/{rule_id}")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let catch_all = json!({ "actions": [{ "type": "forward", "value": ["ops@example.net"] }], "matchers": [{ "type": "all" }], "enabled": true });
    let r = admin
        .send(Method::PUT, &format!("{email}/catch-all"), Some(catch_all))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = admin.get(&format!("{email}/catch-all")).await;
    assert_eq!(
        r.body["actions"][0]["value"][0], "ops@example.net",
        "{}",
        r.body
    );
    let r = admin
        .send(Method::PUT, &format!("{email}/catch-all"), Some(json!({ "actions": [{ "type": "drop" }], "matchers": [{ "type": "literal", "value": "a@b.example" }] })))
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    let r = admin.delete(&format!("{email}/destinations/{dest}")).await;
    assert_eq!(r.status, 200, "{}", r.body);

    // A 429 with Retry-After: 1 is waited out once.
    fake.with(|s| s.faults.throttle = vec![vec![("retry-after", "1".into())]]);
    let r = admin.get("/api/cloudflare/zones").await;
    assert_eq!(r.status, 200, "{}", r.body);

    limits_and_timeouts(&mut admin, &fake, "/api/cloudflare/zones", "Cloudflare").await;
    let traces = controller_traces(&ctl);
    assert!(!traces
        .windows(CF_TOKEN.len())
        .any(|w| w == CF_TOKEN.as_bytes()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostinger_through_our_api() {
    let fake = Fake::start(hostinger).await;
    let ctl = ControllerProcess::start(false, &["--provider-timeout-secs", "2"]);
    let mut admin = mezzanine_tests::first_admin(&ctl.base).await;
    let r = put(
        &mut admin,
        "/api/providers/hostinger",
        json!({ "token": "nope", "api_url": fake.base }),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.error(), "token: Hostinger refused it: Unauthenticated.");
    let r = put(
        &mut admin,
        "/api/providers/hostinger",
        json!({ "token": HG_TOKEN, "api_url": fake.base }),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);

    // VPS: list, get, power.
    fake.with(|s| {
        for id in [1001u64, 1002] {
            s.coll("vms").insert(id.to_string(), json!({ "id": id, "hostname": format!("srv{id}.hstgr.cloud"),
                "state": "running", "cpus": 2, "memory": 8192, "disk": 102400, "bandwidth": 8192000,
                "ipv4": [{ "id": 1, "address": "203.0.113.7", "ptr": null }], "ipv6": null,
                "template": null, "actions_lock": "unlocked", "created_at": "2025-01-01T00:00:00Z" }));
        }
    });
    let r = admin.get("/api/hostinger/vps").await;
    assert_eq!(r.body.as_array().map(Vec::len), Some(2), "{}", r.body);
    let r = admin.post("/api/hostinger/vps/1001/stop", json!({})).await;
    assert_eq!(
        (r.status, r.body["state"].as_str()),
        (200, Some("sent")),
        "{}",
        r.body
    );
    assert_eq!(
        admin.get("/api/hostinger/vps/1001").await.body["state"],
        "stopped"
    );
    assert_eq!(
        admin
            .post("/api/hostinger/vps/1001/explode", json!({}))
            .await
            .status,
        400
    );
    let r = admin.get("/api/hostinger/vps/9");
    let r = r.await;
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(r.error(), "Hostinger: Virtual machine not found");

    // DNS: write, append, read, a value Hostinger refuses (its field errors passed on),
    // delete by name and type.
    let dns = "/api/hostinger/domains/shop.example/dns";
    let r = admin.get("/api/hostinger/domains").await;
    assert_eq!(r.body[0]["domain"], "shop.example", "{}", r.body);
    let write = |records: Value, overwrite: bool| json!({ "overwrite": overwrite, "zone": [{ "name": "@", "type": "A", "ttl": 300, "records": records }] });
    let r = admin
        .send(
            Method::PUT,
            dns,
            Some(write(json!([{ "content": "192.0.2.1" }]), true)),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = admin
        .send(
            Method::PUT,
            dns,
            Some(write(json!([{ "content": "192.0.2.2" }]), false)),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = admin.get(dns).await;
    assert_eq!(
        r.body[0]["records"].as_array().map(Vec::len),
        Some(2),
        "{}",
        r.body
    );
    assert_eq!(r.body[0]["name"], "@");
    let r = admin
        .send(
            Method::PUT,
            dns,
            Some(write(json!([{ "content": "10.0.0.300" }]), true)),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.error().contains(
            "zone.0.records.0.content: The zone.0.records.0.content must be a valid IPv4 address."
        ),
        "{}",
        r.body
    );
    let r = admin.send(Method::PUT, dns, Some(json!({ "zone": [{ "name": "www", "type": "PTR", "records": [{ "content": "x" }] }] }))).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.error().starts_with("zone[0].type"), "{}", r.body);
    let r = admin
        .send(
            Method::DELETE,
            dns,
            Some(json!({ "filters": [{ "name": "@", "type": "A" }] })),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(admin.get(dns).await.body, json!([]));
    assert_eq!(
        admin
            .get("/api/hostinger/domains/other.example/dns")
            .await
            .status,
        404
    );

    // Mail orders over pages of 100; subscriptions as they are.
    fake.with(|s| {
        for i in 0..130u64 {
            s.coll("mail").insert(format!("{i:04}"), json!({ "id": format!("OR{i}"), "status": "active", "is_trial": false, "seats": 5 }));
        }
    });
    let before = fake.requests();
    let r = admin.get("/api/hostinger/email").await;
    assert_eq!(r.body.as_array().map(Vec::len), Some(130), "{}", r.body);
    assert_eq!(fake.requests() - before, 2);
    let r = admin.get("/api/hostinger/billing/subscriptions").await;
    assert_eq!(r.body[0]["renewal_price"], 1599, "{}", r.body);

    limits_and_timeouts(&mut admin, &fake, "/api/hostinger/vps", "Hostinger").await;
    let traces = controller_traces(&ctl);
    assert!(!traces
        .windows(HG_TOKEN.len())
        .any(|w| w == HG_TOKEN.as_bytes()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contabo_through_our_api() {
    let fake = Fake::start(contabo).await;
    fake.with(|s| s.token_lifetime = 3600);
    let ctl = ControllerProcess::start(false, &["--provider-timeout-secs", "2"]);
    let mut admin = mezzanine_tests::first_admin(&ctl.base).await;
    let creds = |password: &str| {
        json!({ "client_id": "cb-client", "client_secret": CB_CLIENT_SECRET, "username": "ops@example.com",
            "password": password, "api_url": fake.base,
            "auth_url": format!("{}/auth/realms/contabo/protocol/openid-connect/token", fake.base) })
    };
    let r = put(
        &mut admin,
        "/api/providers/contabo",
        creds("wrong password"),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(
        r.error(),
        "credentials: Contabo refused them: Invalid user credentials"
    );
    let r = put(
        &mut admin,
        "/api/providers/contabo",
        json!({ "token": "x", "api_url": fake.base }),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.error().starts_with("token"), "{}", r.body);
    let r = put(&mut admin, "/api/providers/contabo", creds(CB_PASSWORD)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["account"], "ops@example.com");
    // /v1/users/client answered the client secret: it goes nowhere.
    let listed = admin.get("/api/providers").await.body.to_string();
    assert!(
        !listed.contains(CB_CLIENT_SECRET) && !listed.contains(CB_PASSWORD),
        "{listed}"
    );

    // Instances over pages of 100, one token for all of it.
    fake.with(|s| {
        for i in 0..150u64 {
            let id = 100_000 + i;
            s.coll("instances").insert(
                id.to_string(),
                json!({ "instanceId": id, "name": format!("vmi{id}"), "status": "running" }),
            );
        }
    });
    let r = admin.get("/api/contabo/instances").await;
    assert_eq!(r.body.as_array().map(Vec::len), Some(150), "{}", r.body);
    let r = admin.get("/api/contabo/instances/100007").await;
    assert_eq!(
        (r.status, r.body["name"].as_str()),
        (200, Some("vmi100007")),
        "{}",
        r.body
    );
    let r = admin
        .patch(
            "/api/contabo/instances/100007",
            json!({ "displayName": "web" }),
        )
        .await;
    assert_eq!(
        (r.status, r.body["displayName"].as_str()),
        (200, Some("web")),
        "{}",
        r.body
    );
    let r = admin
        .post("/api/contabo/instances/100007/actions/stop", json!({}))
        .await;
    assert_eq!(
        (r.status, r.body["action"].as_str()),
        (201, Some("stop")),
        "{}",
        r.body
    );
    assert_eq!(
        admin.get("/api/contabo/instances/100007").await.body["status"],
        "stopped"
    );
    let r = admin.get("/api/contabo/instances/999").await;
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(
        r.error(),
        "Contabo: Entry Instances not found by instanceId 999"
    );
    let r = admin
        .post("/api/contabo/instances", json!({ "productId": "V45" }))
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.error().starts_with("period"), "{}", r.body);
    let r = admin
        .post(
            "/api/contabo/instances",
            json!({ "period": 1, "productId": "V45", "region": "EU", "displayName": "new" }),
        )
        .await;
    assert_eq!(
        (r.status, r.body["status"].as_str()),
        (201, Some("provisioning")),
        "{}",
        r.body
    );
    assert_eq!(fake.with(|s| s.tokens.len()), 1, "the token is reused");
    // An instance that adopts itself: a server named after it, the install in userData.
    let r = admin
        .post(
            "/api/contabo/instances",
            json!({ "period": 1, "adopt": true }),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.error().starts_with("displayName"), "{}", r.body);
    let r = admin
        .post(
            "/api/contabo/instances",
            json!({ "period": 1, "displayName": "cb-web", "adopt": true }),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let server = r.body["server_id"].as_i64().expect("server_id");
    let id = r.body["instanceId"].to_string();
    let user_data = fake
        .with(|s| s.coll("user_data").get(&id).cloned())
        .unwrap_or_default();
    assert!(
        user_data
            .as_str()
            .is_some_and(|u| u.starts_with("#!/bin/sh") && u.contains("/install.sh")),
        "{user_data}"
    );
    let s = admin.get(&format!("/api/servers/{server}")).await.body;
    assert_eq!(s["name"], "cb-web", "{s}");

    // Snapshots: take, list, roll back, delete.
    let snaps = "/api/contabo/instances/100007/snapshots";
    let r = admin
        .post(
            snaps,
            json!({ "name": "a name longer than thirty characters" }),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    let r = admin
        .post(
            snaps,
            json!({ "name": "before-upgrade", "description": "pre 2.0" }),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let sid = r.body["snapshotId"].as_str().expect("snapshot").to_owned();
    assert_eq!(
        admin.get(snaps).await.body.as_array().map(Vec::len),
        Some(1)
    );
    let r = admin
        .post(&format!("{snaps}/{sid}/rollback"), json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = admin.delete(&format!("{snaps}/{sid}")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(admin.delete(&format!("{snaps}/{sid}")).await.status, 404);

    // Secrets: stored at Contabo, their values never shown by us.
    let r = admin
        .post(
            "/api/contabo/secrets",
            json!({ "name": "root", "value": "short", "type": "password" }),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    let r = admin
        .post(
            "/api/contabo/secrets",
            json!({ "name": "root", "value": "Hunter2-Hunter2", "type": "password" }),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert!(r.body.get("value").is_none(), "{}", r.body);
    let secret = r.body["secretId"].as_u64().expect("secret");
    let r = admin
        .patch(
            &format!("/api/contabo/secrets/{secret}"),
            json!({ "name": "root-2" }),
        )
        .await;
    assert_eq!(
        (r.status, r.body["name"].as_str()),
        (200, Some("root-2")),
        "{}",
        r.body
    );
    let list = admin.get("/api/contabo/secrets").await.body;
    assert_eq!(list.as_array().map(Vec::len), Some(1));
    assert!(!list.to_string().contains("Hunter2"), "{list}");
    let r = admin
        .delete(&format!("/api/contabo/secrets/{secret}"))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);

    // A token is refreshed before it expires: give the next one 62 s, so a minute's
    // margin leaves 2 s.
    fake.with(|s| s.token_lifetime = 62);
    let r = put(&mut admin, "/api/providers/contabo", json!({ "client_id": "cb-client", "client_secret": CB_CLIENT_SECRET,
        "username": "ops@example.com", "password": CB_PASSWORD, "api_url": format!("{}/", fake.base),
        "auth_url": format!("{}/auth/realms/contabo/protocol/openid-connect/token", fake.base) })).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let issued = fake.with(|s| s.tokens.len());
    assert_eq!(issued, 2, "new credentials, new token");
    assert_eq!(admin.get("/api/contabo/secrets").await.status, 200);
    assert_eq!(fake.with(|s| s.tokens.len()), issued, "still fresh");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(admin.get("/api/contabo/secrets").await.status, 200);
    assert_eq!(
        fake.with(|s| s.tokens.len()),
        issued + 1,
        "refreshed before expiry"
    );

    // A fresh x-request-id on every request.
    let ids = fake.with(|s| s.request_ids.clone());
    let distinct: std::collections::BTreeSet<&String> = ids.iter().collect();
    assert!(ids.len() > 20 && distinct.len() == ids.len(), "{ids:?}");

    limits_and_timeouts(&mut admin, &fake, "/api/contabo/secrets", "Contabo").await;
    let traces = controller_traces(&ctl);
    for secret in [CB_CLIENT_SECRET, CB_PASSWORD, "cb-access-1"] {
        assert!(
            !traces.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "{secret} leaked"
        );
    }
}

/// A droplet made with `adopt: true` comes online by itself: the fake "boots" it as a
/// harness node and runs the user data DigitalOcean would hand to cloud-init — no SSH,
/// nothing pasted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_droplet_made_to_adopt_itself_comes_online() {
    let fleet = Fleet::new();
    let fake = Fake::start(digitalocean).await;
    let ctl = fleet_controller_process(&fleet, false);
    let mut admin = mezzanine_tests::first_admin(&ctl.base).await;
    let r = put(
        &mut admin,
        "/api/providers/digitalocean",
        json!({ "token": DO_TOKEN, "api_url": format!("{}/v2", fake.base) }),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let droplet = json!({ "name": "cloud-1", "size": "s-1vcpu-1gb", "image": "debian-12-x64", "region": "ams3", "adopt": true });

    // Our own user data cannot ride along; a taken name creates nothing anywhere.
    let mut with_data = droplet.clone();
    with_data["user_data"] = json!("#!/bin/sh\necho hi");
    let r = admin.post("/api/digitalocean/droplets", with_data).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.error().starts_with("user_data"), "{}", r.body);
    let (taken, _, _) = mezzanine_tests::add_server(&mut admin, "cloud-0").await;
    let mut clash = droplet.clone();
    clash["name"] = json!("cloud-0");
    let before = fake.requests();
    let r = admin.post("/api/digitalocean/droplets", clash).await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(fake.requests(), before, "no droplet for a refused server");
    // A droplet DigitalOcean refuses leaves no server behind.
    let mut refused = droplet.clone();
    refused["size"] = json!("s-999vcpu");
    let r = admin.post("/api/digitalocean/droplets", refused).await;
    assert_eq!(r.status, 400, "{}", r.body);
    let servers = admin.get("/api/servers").await.body;
    assert_eq!(
        servers.as_array().map(Vec::len),
        Some(1),
        "only cloud-0: {servers}"
    );

    let r = admin.post("/api/digitalocean/droplets", droplet).await;
    assert_eq!(r.status, 202, "{}", r.body);
    let server = r.body["server_id"].as_i64().expect("server_id");
    assert_ne!(server, taken);
    let id = r.body["id"].as_u64().expect("droplet id");
    let user_data = fake.with(|s| s.coll("user_data").get(&id.to_string()).cloned());
    let user_data = user_data
        .and_then(|u| u.as_str().map(str::to_owned))
        .expect("user data sent");
    assert!(
        user_data.starts_with("#!/bin/sh\n") && user_data.contains("/install.sh"),
        "{user_data}"
    );

    // The "datacenter": a fresh node runs the user data, as cloud-init would at first boot.
    let (node, _ip) = fleet.node("cloud-1", 31, &[]);
    let booted = Instant::now();
    let (ok, out) = fleet.exec(&node, &user_data);
    assert!(ok, "{out}");
    let s = mezzanine_tests::wait_server(
        &mut admin,
        server,
        Duration::from_secs(120),
        "online",
        |v| v["status"] == "online",
    )
    .await;
    println!(
        "droplet online {:?} after its user data ran",
        booted.elapsed()
    );
    assert_eq!(s["name"], "cloud-1", "{s}");
    assert!(
        s["tags"]
            .as_array()
            .is_some_and(|t| t.contains(&json!("digitalocean"))),
        "{s}"
    );
}

/// The domain's record at `provider`'s fake: (type, name, address) of every A record.
fn a_records(fake: &Fake, coll: &str) -> Vec<(String, String)> {
    fake.with(|s| {
        s.coll(coll)
            .values()
            .filter(|r| r["type"] == "A")
            .map(|r| {
                let addr = r
                    .get("content")
                    .or_else(|| r.get("data"))
                    .cloned()
                    .unwrap_or_default();
                (
                    r["name"].as_str().unwrap_or_default().to_owned(),
                    addr.as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    })
}

/// Waits until the domain's DNS state satisfies `pred`.
async fn domain_dns(
    admin: &mut Client,
    id: i64,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let list = admin.get("/api/domains").await.body;
        let d = list
            .as_array()
            .and_then(|l| l.iter().find(|d| d["id"] == id).cloned())
            .unwrap_or_default();
        if pred(&d["dns"]) {
            return d;
        }
        assert!(Instant::now() < deadline, "domain {id} never {what}: {d}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Domains linked to a zone get an A record pointing at the edge of the pools using
/// them, kept in line when the edge changes — at Cloudflare and at DigitalOcean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_linked_domain_points_at_its_pools_edge() {
    const PW: &str = "dns-node-pw-17";
    let fleet = Fleet::new();
    let (_, e1_ip) = fleet.node("edge1", 41, &[("ROOT_PASSWORD", PW)]);
    let (_, e2_ip) = fleet.node("edge2", 42, &[("ROOT_PASSWORD", PW)]);
    let ctl = fleet_controller_process(&fleet, false);
    let mut admin = mezzanine_tests::first_admin(&ctl.base).await;
    let (mut a1, mut a2) = (admin.clone(), admin.clone());
    let (e1, e2) = tokio::join!(
        mezzanine_tests::adopt(&mut a1, "edge1", &e1_ip, PW),
        mezzanine_tests::adopt(&mut a2, "edge2", &e2_ip, PW),
    );
    let cf = Fake::start(cloudflare).await;
    let dig = Fake::start(digitalocean).await;
    let zone = cf.with(|s| {
        let id = hex_id(500);
        s.coll("zones").insert(id.clone(), json!({ "id": id, "name": "example.com", "status": "active", "account": { "id": ACCOUNT } }));
        id
    });
    let r = put(
        &mut admin,
        "/api/providers/cloudflare",
        json!({ "token": CF_TOKEN, "api_url": format!("{}/client/v4", cf.base) }),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);

    // Linking checks the zone; an unconfigured provider keeps nothing.
    let r = admin
        .post("/api/domains", json!({ "name": "app.example.com" }))
        .await;
    let d1 = r.body["id"].as_i64().expect("domain");
    for (body, status) in [
        (json!({ "provider": "cloudflare", "zone": "not-hex" }), 400),
        (
            json!({ "provider": "digitalocean", "zone": "other.com" }),
            400,
        ),
        (json!({ "provider": "contabo", "zone": "example.com" }), 400),
        (
            json!({ "provider": "digitalocean", "zone": "example.com" }),
            409,
        ),
    ] {
        let r = admin
            .patch(&format!("/api/domains/{d1}"), body.clone())
            .await;
        assert_eq!(r.status, status, "{body}: {}", r.body);
    }
    let r = admin
        .patch(
            &format!("/api/domains/{d1}"),
            json!({ "provider": "cloudflare", "zone": zone }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.body["dns"]["address"].is_null(),
        "no pool uses it yet: {}",
        r.body
    );

    // A pool with that domain on edge1: the record points there; moved to edge2, the
    // same record follows.
    let r = admin
        .post("/api/pools", json!({ "name": "web", "domain_id": d1 }))
        .await;
    let pool = r.body["id"].as_i64().expect("pool");
    let r = admin
        .patch(
            &format!("/api/pools/{pool}"),
            json!({ "edge_server_id": e1, "ports": { "listen": 8088, "target": 8080 } }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    domain_dns(&mut admin, d1, "pointed at edge1", |d| {
        d["address"] == e1_ip.as_str()
    })
    .await;
    assert_eq!(
        a_records(&cf, "dns"),
        [("app.example.com".to_owned(), e1_ip.clone())]
    );
    let r = admin
        .patch(
            &format!("/api/pools/{pool}"),
            json!({ "edge_server_id": e2 }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let d = domain_dns(&mut admin, d1, "followed edge2", |d| {
        d["address"] == e2_ip.as_str()
    })
    .await;
    assert!(
        d["dns"]["error"].is_null() && d["dns"]["synced_at"].is_string(),
        "{d}"
    );
    assert_eq!(
        a_records(&cf, "dns"),
        [("app.example.com".to_owned(), e2_ip.clone())]
    );

    // A provider that refuses for a while: the domain says why; re-linking retries.
    cf.with(|s| s.faults.throttle = vec![vec![("retry-after", "120".into())]; 4]);
    let r = admin
        .patch(
            &format!("/api/pools/{pool}"),
            json!({ "edge_server_id": e1 }),
        )
        .await;
    assert_eq!(r.status, 200, "the pool change stands: {}", r.body);
    let d = domain_dns(&mut admin, d1, "said why", |d| {
        d["error"]
            .as_str()
            .is_some_and(|e| e.contains("Cloudflare"))
    })
    .await;
    assert_eq!(
        d["dns"]["address"],
        e2_ip.as_str(),
        "the last written address: {d}"
    );
    cf.with(|s| s.faults.throttle.clear());
    let r = admin
        .patch(
            &format!("/api/domains/{d1}"),
            json!({ "provider": "cloudflare", "zone": zone }),
        )
        .await;
    assert_eq!(
        (r.status, r.body["dns"]["address"].as_str()),
        (200, Some(e1_ip.as_str())),
        "{}",
        r.body
    );
    assert_eq!(
        a_records(&cf, "dns"),
        [("app.example.com".to_owned(), e1_ip.clone())]
    );

    // At DigitalOcean the record is named relative to the zone.
    let r = put(
        &mut admin,
        "/api/providers/digitalocean",
        json!({ "token": DO_TOKEN, "api_url": format!("{}/v2", dig.base) }),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        admin
            .post(
                "/api/digitalocean/domains",
                json!({ "name": "shop.example" })
            )
            .await
            .status,
        201
    );
    let r = admin
        .post("/api/domains", json!({ "name": "api.shop.example" }))
        .await;
    let d2 = r.body["id"].as_i64().expect("domain");
    let r = admin
        .post("/api/pools", json!({ "name": "api", "domain_id": d2 }))
        .await;
    let pool2 = r.body["id"].as_i64().expect("pool");
    let r = admin
        .patch(
            &format!("/api/pools/{pool2}"),
            json!({ "edge_server_id": e2, "ports": { "listen": 8089, "target": 8080 } }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = admin
        .patch(
            &format!("/api/domains/{d2}"),
            json!({ "provider": "digitalocean", "zone": "shop.example" }),
        )
        .await;
    assert_eq!(
        (r.status, r.body["dns"]["address"].as_str()),
        (200, Some(e2_ip.as_str())),
        "{}",
        r.body
    );
    assert_eq!(
        a_records(&dig, "records"),
        [("api".to_owned(), e2_ip.clone())]
    );
    // Unlinking leaves the provider's records alone and stops following.
    let r = admin
        .patch(
            &format!("/api/domains/{d2}"),
            json!({ "provider": null, "zone": null }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.get("dns").is_none(), "{}", r.body);
}

/// The Providers and DNS pages in Chromium against the fakes: credentials set (a refused
/// token said next to its field), a droplet powered off, a DNS record and a mail rule
/// added — each page accessible (axe) and free of console errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn providers_and_dns_in_the_panel() {
    use mezzanine_tests::browser::Browser;
    let dig = Fake::start(digitalocean).await;
    let cf = Fake::start(cloudflare).await;
    dig.with(|s| {
        s.coll("droplets").insert(
            "7".into(),
            json!({ "id": 7, "name": "db-1", "status": "active",
            "networks": { "v4": [{ "ip_address": "203.0.113.70", "type": "public" }] } }),
        );
    });
    let zone = cf.with(|s| {
        let id = hex_id(600);
        s.coll("zones").insert(id.clone(), json!({ "id": id, "name": "example.org", "status": "active", "account": { "id": ACCOUNT } }));
        id
    });
    let ctl = ControllerProcess::start(false, &[]);
    let mut admin = mezzanine_tests::first_admin(&ctl.base).await;
    let r = admin
        .post("/api/domains", json!({ "name": "shop.example.org" }))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let axe_path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/axe/axe.min.js");
    let axe = std::fs::read_to_string(&axe_path).expect("axe-core (tests/run fetches it)");

    let b = Browser::start().await;
    b.log_in_as_admin(&ctl.base).await;
    b.until("the dashboard", "!!document.querySelector('#attention')")
        .await;
    b.click("#nav a[href='#/providers']").await;
    b.until(
        "the credentials table",
        "!!document.querySelector('#provider-table')",
    )
    .await;

    let set = |provider: &'static str, token: &'static str, url: String| {
        format!(
            "const f = document.querySelector('#provider-form'); f.elements.provider.value = {provider:?}; \
             f.elements.provider.dispatchEvent(new Event('change')); f.elements.token.value = {token:?}; \
             f.elements.api_url.value = {url:?}; return 1;"
        )
    };
    b.js(&set(
        "cloudflare",
        "wrong",
        format!("{}/client/v4", cf.base),
    ))
    .await;
    b.click("#provider-form button[type=submit]").await;
    b.until(
        "the refusal next to the token",
        "document.querySelector('#provider-form [name=token]').getAttribute('aria-invalid') === 'true' && document.querySelector('#provider-form .field-error').textContent.includes('Cloudflare refused it')",
    )
    .await;
    b.js(&set(
        "cloudflare",
        CF_TOKEN,
        format!("{}/client/v4", cf.base),
    ))
    .await;
    b.click("#provider-form button[type=submit]").await;
    b.until("the Cloudflare toast", "document.querySelector('#toasts').textContent.includes('Cloudflare credentials checked and saved')").await;
    // The toast comes before the page reloads its list and redraws the form: values set
    // in between would go with the old form.
    b.until(
        "Cloudflare configured in the table",
        "[...document.querySelectorAll('#provider-table tr')].some(r => r.textContent.includes('Cloudflare') && r.textContent.includes('Remove'))",
    )
    .await;
    b.js(&set("digitalocean", DO_TOKEN, format!("{}/v2", dig.base)))
        .await;
    b.click("#provider-form button[type=submit]").await;
    b.until("the droplet list", "!!document.querySelector('#digitalocean-machines') && document.querySelector('#digitalocean-machines').textContent.includes('db-1')").await;
    b.js("[...document.querySelectorAll('#digitalocean-machines button')].find(x => x.textContent === 'power off').click(); return 1;").await;
    b.until(
        "the power-off toast",
        "document.querySelector('#toasts').textContent.includes('db-1: power off sent')",
    )
    .await;
    assert_eq!(
        dig.with(|s| s.coll("droplets")["7"]["status"].clone()),
        "off"
    );
    let listed = admin.get("/api/providers").await.body.to_string();
    assert!(!listed.contains(CF_TOKEN) && !listed.contains(DO_TOKEN));
    b.console_errors().await;
    let violations = b.accessibility_violations(&axe).await;
    assert!(violations.is_empty(), "providers page: {violations:#?}");

    // DNS: the Cloudflare zone, a record added through the form, a mail rule, and the
    // pool domain in that zone linked.
    b.open(&format!("{}/#/dns?zone=cloudflare:{zone}", ctl.base))
        .await;
    b.until(
        "the records",
        "!!document.querySelector('#records-title') && !!document.querySelector('#email-title')",
    )
    .await;
    b.js("const f = document.querySelector('#record-form'); f.elements.type.value = 'A'; f.elements.name.value = 'www.example.org'; f.elements.value.value = '192.0.2.44'; return 1;").await;
    b.click("#record-form button[type=submit]").await;
    b.until("the new record", "!!document.querySelector('#records') && document.querySelector('#records').textContent.includes('192.0.2.44')").await;
    b.js("const f = document.querySelector('#rule-form'); f.elements.to.value = 'hello@example.org'; f.elements.dest.value = 'ops@example.net'; return 1;").await;
    b.click("#rule-form button[type=submit]").await;
    b.until("the new rule", "!!document.querySelector('#email-rules') && document.querySelector('#email-rules').textContent.includes('hello@example.org')").await;
    b.js("[...document.querySelectorAll('#pool-domain-table button')].find(x => x.textContent === 'Link').click(); return 1;").await;
    b.until(
        "the linked domain",
        "document.querySelector('#toasts').textContent.includes('shop.example.org linked')",
    )
    .await;
    let domains = admin.get("/api/domains").await.body;
    assert_eq!(domains[0]["dns"]["zone"], zone.as_str(), "{domains}");
    assert_eq!(
        a_records(&cf, "dns"),
        [("www.example.org".to_owned(), "192.0.2.44".to_owned())]
    );
    let errors = b.console_errors().await;
    assert!(errors.is_empty(), "{errors:?}");
    let violations = b.accessibility_violations(&axe).await;
    assert!(violations.is_empty(), "DNS page: {violations:#?}");
}
