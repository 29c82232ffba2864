//! `/api/providers`, `/api/digitalocean/*` and `/api/cloudflare/*`: HTTP only; the
//! provider service and its clients own the checks and the provider calls.

use super::audit::Target;
use super::openapi::{array, integer, nullable, obj, ok_with, string};
use super::{ok, Access, ApiError, ApiResult, BaseUrl, Doc, Registry};
use crate::auth::Role;
use crate::providers::{
    cloudflare, contabo, digitalocean, hostinger, Credentials, Provider, ProviderError,
};
use crate::state::AppState;
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};

impl From<ProviderError> for ApiError {
    fn from(e: ProviderError) -> Self {
        let msg = e.to_string();
        match e {
            ProviderError::Invalid(_) | ProviderError::Rejected { .. } => ApiError::BadRequest(msg),
            ProviderError::NotConfigured(..) => ApiError::Conflict(msg),
            ProviderError::NotFound { .. } => ApiError::NotFound(msg),
            // The provider refusing our stored token is not the caller's credentials
            // failing: a gateway error, never a 401 that would read as "log in again".
            ProviderError::Refused { .. } | ProviderError::Upstream { .. } => {
                ApiError::BadGateway(msg)
            }
            ProviderError::RateLimited { retry_after, .. } => ApiError::RateLimited {
                message: msg,
                retry_after,
            },
            ProviderError::Timeout { .. } => ApiError::Timeout(msg),
            ProviderError::Store(e) => e.into(),
            ProviderError::Sealed(_) | ProviderError::Seal(_) => ApiError::Internal(msg),
        }
    }
}

fn provider(raw: &str) -> ApiResult<Provider> {
    Provider::parse(raw).ok_or_else(|| {
        ApiError::NotFound(format!(
            "provider {raw:?}: one of {}",
            Provider::ALL.map(Provider::as_str).join(", ")
        ))
    })
}

fn with_target(mut resp: Response, target: String) -> Response {
    resp.extensions_mut().insert(Target(target));
    resp
}

// ---- Credentials -------------------------------------------------------------------

async fn list(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    let configured = state.providers().list().await?;
    Ok(Json(Value::Array(
        Provider::ALL
            .iter()
            .map(|p| {
                let c = configured.iter().find(|c| c.provider == *p);
                json!({
                    "provider": p.as_str(),
                    "name": p.label(),
                    "configured": c.is_some(),
                    "account": c.and_then(|c| c.account.clone()),
                    "api_url": c.and_then(|c| c.api_url.clone()),
                    "updated_at": c.map(|c| crate::time::rfc3339(c.updated_at)),
                })
            })
            .collect(),
    )))
}

async fn put(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    Json(creds): Json<Credentials>,
) -> ApiResult<Response> {
    let p = provider(&raw)?;
    let c = match state.providers().configure(p, creds).await {
        Ok(c) => c,
        // Here a refusal is about the token the caller just gave: say so as a 400.
        Err(ProviderError::Refused { provider, message }) => {
            return Err(ApiError::BadRequest(if p == Provider::Contabo {
                format!("credentials: {provider} refused them: {message}")
            } else {
                format!("token: {provider} refused it: {message}")
            }));
        }
        Err(e) => return Err(e.into()),
    };
    Ok(with_target(
        ok(json!({ "provider": p.as_str(), "account": c.account })).into_response(),
        format!("provider {}", p.as_str()),
    ))
}

async fn remove(State(state): State<AppState>, Path(raw): Path<String>) -> ApiResult<Response> {
    let p = provider(&raw)?;
    if !state.providers().remove(p).await? {
        return Err(ApiError::NotFound(format!(
            "{} is not configured",
            p.label()
        )));
    }
    Ok(with_target(
        ok(json!({})).into_response(),
        format!("provider {}", p.as_str()),
    ))
}

// ---- DigitalOcean --------------------------------------------------------------------

async fn droplets(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    let list = state.providers().digitalocean().await?.droplets().await?;
    Ok(Json(Value::Array(list)))
}

async fn droplet(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    Ok(Json(
        state.providers().digitalocean().await?.droplet(&id).await?,
    ))
}

/// A server record for a machine about to be created, and the cloud-init user data that
/// installs its agent (which then dials back by itself). Checked before anything exists.
async fn adoption(state: &AppState, base: &str, name: &str, tag: &str) -> ApiResult<(i64, String)> {
    for r in [crate::validate::name(name), crate::validate::host(name)] {
        r.map_err(|m| ApiError::BadRequest(format!("name: {m}")))?;
    }
    // Fail before creating anything if no agent binary can be served.
    state
        .installs()
        .script(base)
        .await
        .map_err(|e| ApiError::Conflict(e.to_string()))?;
    let tags = vec![tag.to_owned()];
    // The machine's address is not known yet; its name stands for it until the agent
    // reports in.
    let new = crate::store::NewServer {
        name,
        host: name,
        port: 22,
        username: None,
        auth_type: "manual",
        tags: &tags,
    };
    let s = state
        .store()
        .create_server(&new, crate::time::now_secs())
        .await?
        .ok_or_else(|| ApiError::Conflict(format!("a server named {name:?} exists")))?;
    state.deploy_keys().create(s.id, false).await?;
    let minted = state.installs().mint(s.id, base).await?;
    // cloud-init runs user data that starts with `#!` as a script, once, as root.
    let user_data = format!(
        "#!/bin/sh\n# Mezzanine: install the agent, which dials back to the controller.\n{}\n",
        minted.command
    );
    Ok((s.id, user_data))
}

/// Removes the server record of a machine the provider did not create.
async fn abandon(state: &AppState, server: Option<i64>) {
    if let Some(id) = server {
        if let Err(e) = state
            .store()
            .delete_server(id, crate::time::now_secs())
            .await
        {
            tracing::warn!(server = id, error = %e, "cannot remove the server of a machine that was not created");
        }
    }
}

/// Creates a droplet; with `adopt: true` it also makes a server record whose agent
/// install goes into the droplet's `user_data`, so the machine comes online by itself.
async fn create_droplet(
    State(state): State<AppState>,
    Extension(BaseUrl(base)): Extension<BaseUrl>,
    Json(b): Json<digitalocean::NewDroplet>,
) -> ApiResult<Response> {
    // Not configured is said first; then what is wrong with the request.
    let client = state.providers().digitalocean().await?;
    let mut body = b.body()?;
    let mut server = None;
    if b.adopt {
        if b.user_data.is_some() {
            return Err(ApiError::BadRequest(
                "user_data: adopt writes the machine's user data itself (the agent install); leave user_data out".into(),
            ));
        }
        let (id, user_data) = adoption(&state, &base, &b.name, "digitalocean").await?;
        body["user_data"] = json!(user_data);
        server = Some(id);
    }
    let mut d = match client.create_droplet(&body).await {
        Ok(d) => d,
        Err(e) => {
            abandon(&state, server).await;
            return Err(e.into());
        }
    };
    let target = format!(
        "droplet {} ({})",
        d.get("id").map(Value::to_string).unwrap_or_default(),
        b.name
    );
    if let Some(id) = server {
        d["server_id"] = json!(id);
    }
    Ok(with_target(
        (StatusCode::ACCEPTED, Json(d)).into_response(),
        target,
    ))
}

async fn delete_droplet(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    state
        .providers()
        .digitalocean()
        .await?
        .delete_droplet(&id)
        .await?;
    Ok(with_target(
        ok(json!({})).into_response(),
        format!("droplet {id}"),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionBody {
    #[serde(rename = "type")]
    kind: String,
}

async fn droplet_action(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Json(b): Json<ActionBody>,
) -> ApiResult<Response> {
    let action = state
        .providers()
        .digitalocean()
        .await?
        .droplet_action(&id, &b.kind)
        .await?;
    Ok(with_target(
        (StatusCode::CREATED, Json(action)).into_response(),
        format!("droplet {id} {}", b.kind),
    ))
}

async fn do_domains(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    let list = state.providers().digitalocean().await?.domains().await?;
    Ok(Json(Value::Array(list)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DomainBody {
    name: String,
    ip_address: Option<String>,
}

async fn do_create_domain(
    State(state): State<AppState>,
    Json(b): Json<DomainBody>,
) -> ApiResult<Response> {
    let d = state
        .providers()
        .digitalocean()
        .await?
        .create_domain(&b.name, b.ip_address.as_deref())
        .await?;
    Ok(with_target(
        (StatusCode::CREATED, Json(d)).into_response(),
        format!("domain {} at DigitalOcean", b.name.to_ascii_lowercase()),
    ))
}

async fn do_records(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let list = state
        .providers()
        .digitalocean()
        .await?
        .records(&name)
        .await?;
    Ok(Json(Value::Array(list)))
}

async fn do_create_record(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Json(b): Json<digitalocean::RecordBody>,
) -> ApiResult<Response> {
    let r = state
        .providers()
        .digitalocean()
        .await?
        .create_record(&name, &b)
        .await?;
    let target = format!(
        "record {} of {name}",
        r.get("id").map(Value::to_string).unwrap_or_default()
    );
    Ok(with_target(
        (StatusCode::CREATED, Json(r)).into_response(),
        target,
    ))
}

async fn do_update_record(
    State(state): State<AppState>,
    Path((name, id)): Path<(String, String)>,
    Json(b): Json<digitalocean::RecordBody>,
) -> ApiResult<Response> {
    let r = state
        .providers()
        .digitalocean()
        .await?
        .update_record(&name, &id, &b)
        .await?;
    Ok(with_target(
        Json(r).into_response(),
        format!("record {id} of {name}"),
    ))
}

async fn do_delete_record(
    State(state): State<AppState>,
    Path((name, id)): Path<(String, String)>,
) -> ApiResult<Response> {
    state
        .providers()
        .digitalocean()
        .await?
        .delete_record(&name, &id)
        .await?;
    Ok(with_target(
        ok(json!({})).into_response(),
        format!("record {id} of {name}"),
    ))
}

// ---- Cloudflare ----------------------------------------------------------------------

async fn cf_zones(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    let list = state.providers().cloudflare().await?.zones().await?;
    Ok(Json(Value::Array(list)))
}

async fn cf_records(
    State(state): State<AppState>,
    Path(zone): Path<String>,
) -> ApiResult<Json<Value>> {
    let list = state.providers().cloudflare().await?.records(&zone).await?;
    Ok(Json(Value::Array(list)))
}

async fn cf_create_record(
    State(state): State<AppState>,
    Path(zone): Path<String>,
    Json(b): Json<cloudflare::RecordBody>,
) -> ApiResult<Response> {
    let r = state
        .providers()
        .cloudflare()
        .await?
        .create_record(&zone, &b)
        .await?;
    let target = format!(
        "DNS record {} of zone {zone}",
        r.get("id").and_then(Value::as_str).unwrap_or_default()
    );
    Ok(with_target(
        (StatusCode::CREATED, Json(r)).into_response(),
        target,
    ))
}

async fn cf_update_record(
    State(state): State<AppState>,
    Path((zone, id)): Path<(String, String)>,
    Json(b): Json<cloudflare::RecordBody>,
) -> ApiResult<Response> {
    let r = state
        .providers()
        .cloudflare()
        .await?
        .update_record(&zone, &id, &b)
        .await?;
    Ok(with_target(
        Json(r).into_response(),
        format!("DNS record {id} of zone {zone}"),
    ))
}

async fn cf_delete_record(
    State(state): State<AppState>,
    Path((zone, id)): Path<(String, String)>,
) -> ApiResult<Response> {
    state
        .providers()
        .cloudflare()
        .await?
        .delete_record(&zone, &id)
        .await?;
    Ok(with_target(
        ok(json!({})).into_response(),
        format!("DNS record {id} of zone {zone}"),
    ))
}

async fn cf_rules(
    State(state): State<AppState>,
    Path(zone): Path<String>,
) -> ApiResult<Json<Value>> {
    let list = state.providers().cloudflare().await?.rules(&zone).await?;
    Ok(Json(Value::Array(list)))
}

async fn cf_create_rule(
    State(state): State<AppState>,
    Path(zone): Path<String>,
    Json(b): Json<cloudflare::RuleBody>,
) -> ApiResult<Response> {
    let r = state
        .providers()
        .cloudflare()
        .await?
        .create_rule(&zone, &b)
        .await?;
    let target = format!(
        "email rule {} of zone {zone}",
        r.get("id").and_then(Value::as_str).unwrap_or_default()
    );
    Ok(with_target(
        (StatusCode::CREATED, Json(r)).into_response(),
        target,
    ))
}

async fn cf_update_rule(
    State(state): State<AppState>,
    Path((zone, id)): Path<(String, String)>,
    Json(b): Json<cloudflare::RuleBody>,
) -> ApiResult<Response> {
    let r = state
        .providers()
        .cloudflare()
        .await?
        .update_rule(&zone, &id, &b)
        .await?;
    Ok(with_target(
        Json(r).into_response(),
        format!("email rule {id} of zone {zone}"),
    ))
}

async fn cf_delete_rule(
    State(state): State<AppState>,
    Path((zone, id)): Path<(String, String)>,
) -> ApiResult<Response> {
    state
        .providers()
        .cloudflare()
        .await?
        .delete_rule(&zone, &id)
        .await?;
    Ok(with_target(
        ok(json!({})).into_response(),
        format!("email rule {id} of zone {zone}"),
    ))
}

async fn cf_catch_all(
    State(state): State<AppState>,
    Path(zone): Path<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(
        state
            .providers()
            .cloudflare()
            .await?
            .catch_all(&zone)
            .await?,
    ))
}

async fn cf_set_catch_all(
    State(state): State<AppState>,
    Path(zone): Path<String>,
    Json(b): Json<cloudflare::RuleBody>,
) -> ApiResult<Response> {
    let r = state
        .providers()
        .cloudflare()
        .await?
        .set_catch_all(&zone, &b)
        .await?;
    Ok(with_target(
        Json(r).into_response(),
        format!("email catch-all of zone {zone}"),
    ))
}

async fn cf_destinations(
    State(state): State<AppState>,
    Path(zone): Path<String>,
) -> ApiResult<Json<Value>> {
    let list = state
        .providers()
        .cloudflare()
        .await?
        .destinations(&zone)
        .await?;
    Ok(Json(Value::Array(list)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DestinationBody {
    email: String,
}

async fn cf_create_destination(
    State(state): State<AppState>,
    Path(zone): Path<String>,
    Json(b): Json<DestinationBody>,
) -> ApiResult<Response> {
    let r = state
        .providers()
        .cloudflare()
        .await?
        .create_destination(&zone, &b.email)
        .await?;
    let target = format!(
        "email destination {}",
        r.get("id").and_then(Value::as_str).unwrap_or_default()
    );
    Ok(with_target(
        (StatusCode::CREATED, Json(r)).into_response(),
        target,
    ))
}

async fn cf_delete_destination(
    State(state): State<AppState>,
    Path((zone, id)): Path<(String, String)>,
) -> ApiResult<Response> {
    state
        .providers()
        .cloudflare()
        .await?
        .delete_destination(&zone, &id)
        .await?;
    Ok(with_target(
        ok(json!({})).into_response(),
        format!("email destination {id}"),
    ))
}

// ---- Hostinger -----------------------------------------------------------------------

async fn hg_vms(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    let list = state.providers().hostinger().await?.vms().await?;
    Ok(Json(Value::Array(list)))
}

async fn hg_vm(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    Ok(Json(state.providers().hostinger().await?.vm(&id).await?))
}

async fn hg_vm_action(
    State(state): State<AppState>,
    Path((id, action)): Path<(String, String)>,
) -> ApiResult<Response> {
    let a = state
        .providers()
        .hostinger()
        .await?
        .vm_action(&id, &action)
        .await?;
    Ok(with_target(
        Json(a).into_response(),
        format!("Hostinger VPS {id} {action}"),
    ))
}

async fn hg_domains(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    let list = state.providers().hostinger().await?.domains().await?;
    Ok(Json(Value::Array(list)))
}

async fn hg_zone(
    State(state): State<AppState>,
    Path(domain): Path<String>,
) -> ApiResult<Json<Value>> {
    let list = state.providers().hostinger().await?.zone(&domain).await?;
    Ok(Json(Value::Array(list)))
}

async fn hg_update_zone(
    State(state): State<AppState>,
    Path(domain): Path<String>,
    Json(b): Json<hostinger::ZoneUpdate>,
) -> ApiResult<Response> {
    let r = state
        .providers()
        .hostinger()
        .await?
        .update_zone(&domain, &b)
        .await?;
    Ok(with_target(
        Json(r).into_response(),
        format!("DNS zone {domain} at Hostinger"),
    ))
}

async fn hg_delete_records(
    State(state): State<AppState>,
    Path(domain): Path<String>,
    Json(b): Json<hostinger::ZoneDelete>,
) -> ApiResult<Response> {
    let r = state
        .providers()
        .hostinger()
        .await?
        .delete_records(&domain, &b)
        .await?;
    Ok(with_target(
        Json(r).into_response(),
        format!("DNS zone {domain} at Hostinger"),
    ))
}

async fn hg_email(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    let list = state.providers().hostinger().await?.mail_orders().await?;
    Ok(Json(Value::Array(list)))
}

async fn hg_subscriptions(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    let list = state.providers().hostinger().await?.subscriptions().await?;
    Ok(Json(Value::Array(list)))
}

// ---- Contabo -------------------------------------------------------------------------

async fn cb_instances(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    let list = state.providers().contabo().await?.instances().await?;
    Ok(Json(Value::Array(list)))
}

async fn cb_instance(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(
        state.providers().contabo().await?.instance(&id).await?,
    ))
}

/// Creates an instance; with `adopt: true` (and a `displayName`, which names the server)
/// the agent install goes into its `userData`, as for droplets.
async fn cb_create_instance(
    State(state): State<AppState>,
    Extension(BaseUrl(base)): Extension<BaseUrl>,
    Json(mut b): Json<contabo::NewInstance>,
) -> ApiResult<Response> {
    let client = state.providers().contabo().await?;
    b.body()?;
    let mut server = None;
    if b.adopt {
        if b.user_data.is_some() {
            return Err(ApiError::BadRequest(
                "userData: adopt writes the machine's user data itself (the agent install); leave userData out".into(),
            ));
        }
        let name = b.display_name.clone().ok_or_else(|| {
            ApiError::BadRequest("displayName: required to adopt (it names the server)".into())
        })?;
        let (id, user_data) = adoption(&state, &base, &name, "contabo").await?;
        b.user_data = Some(user_data);
        server = Some(id);
    }
    let mut i = match client.create_instance(&b).await {
        Ok(i) => i,
        Err(e) => {
            abandon(&state, server).await;
            return Err(e.into());
        }
    };
    let target = format!(
        "Contabo instance {}",
        i.get("instanceId")
            .map(Value::to_string)
            .unwrap_or_default()
    );
    if let Some(id) = server {
        i["server_id"] = json!(id);
    }
    Ok(with_target(
        (StatusCode::CREATED, Json(i)).into_response(),
        target,
    ))
}

async fn cb_rename_instance(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Json(b): Json<contabo::InstancePatch>,
) -> ApiResult<Response> {
    let i = state
        .providers()
        .contabo()
        .await?
        .rename_instance(&id, &b)
        .await?;
    Ok(with_target(
        Json(i).into_response(),
        format!("Contabo instance {id}"),
    ))
}

async fn cb_instance_action(
    State(state): State<AppState>,
    Path((id, action)): Path<(String, String)>,
) -> ApiResult<Response> {
    let a = state
        .providers()
        .contabo()
        .await?
        .instance_action(&id, &action)
        .await?;
    Ok(with_target(
        (StatusCode::CREATED, Json(a)).into_response(),
        format!("Contabo instance {id} {action}"),
    ))
}

async fn cb_snapshots(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let list = state.providers().contabo().await?.snapshots(&id).await?;
    Ok(Json(Value::Array(list)))
}

async fn cb_create_snapshot(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Json(b): Json<contabo::NewSnapshot>,
) -> ApiResult<Response> {
    let snap = state
        .providers()
        .contabo()
        .await?
        .create_snapshot(&id, &b)
        .await?;
    Ok(with_target(
        (StatusCode::CREATED, Json(snap)).into_response(),
        format!("snapshot {} of Contabo instance {id}", b.name),
    ))
}

async fn cb_delete_snapshot(
    State(state): State<AppState>,
    Path((id, snap)): Path<(String, String)>,
) -> ApiResult<Response> {
    state
        .providers()
        .contabo()
        .await?
        .delete_snapshot(&id, &snap)
        .await?;
    Ok(with_target(
        ok(json!({})).into_response(),
        format!("snapshot {snap} of Contabo instance {id}"),
    ))
}

async fn cb_rollback_snapshot(
    State(state): State<AppState>,
    Path((id, snap)): Path<(String, String)>,
) -> ApiResult<Response> {
    let r = state
        .providers()
        .contabo()
        .await?
        .rollback_snapshot(&id, &snap)
        .await?;
    Ok(with_target(
        Json(r).into_response(),
        format!("Contabo instance {id} rolled back to snapshot {snap}"),
    ))
}

async fn cb_secrets(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    let list = state.providers().contabo().await?.secrets().await?;
    Ok(Json(Value::Array(list)))
}

async fn cb_create_secret(
    State(state): State<AppState>,
    Json(b): Json<contabo::NewSecret>,
) -> ApiResult<Response> {
    let r = state.providers().contabo().await?.create_secret(&b).await?;
    Ok(with_target(
        (StatusCode::CREATED, Json(r)).into_response(),
        format!("Contabo secret {}", b.name),
    ))
}

async fn cb_update_secret(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Json(b): Json<contabo::SecretPatch>,
) -> ApiResult<Response> {
    let r = state
        .providers()
        .contabo()
        .await?
        .update_secret(&id, &b)
        .await?;
    Ok(with_target(
        Json(r).into_response(),
        format!("Contabo secret {id}"),
    ))
}

async fn cb_delete_secret(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    state
        .providers()
        .contabo()
        .await?
        .delete_secret(&id)
        .await?;
    Ok(with_target(
        ok(json!({})).into_response(),
        format!("Contabo secret {id}"),
    ))
}

pub(super) fn routes(reg: &mut Registry) {
    let viewer = Access::Role(Role::Viewer);
    let moderator = Access::Role(Role::Moderator);
    let admin = Access::Role(Role::Admin);
    // Provider objects come back as the provider gives them.
    let any = json!({ "type": "object" });
    let provider_param = vec![(
        "provider",
        json!({ "type": "string", "enum": Provider::ALL.map(Provider::as_str) }),
    )];
    let slug = || json!({ "type": "string", "minLength": 1, "maxLength": 100, "pattern": "^[A-Za-z0-9._-]+$" });
    let domain_param = || {
        (
            "name",
            json!({ "type": "string", "minLength": 1, "maxLength": 253, "pattern": "^[A-Za-z0-9_-]+(\\.[A-Za-z0-9_-]+)+$" }),
        )
    };
    let num_id = || ("record_id", json!({ "type": "integer", "minimum": 1 }));
    let cf_id = |name: &'static str| {
        (
            name,
            json!({ "type": "string", "pattern": "^[0-9a-fA-F]{1,32}$" }),
        )
    };
    let upstream: &'static [u16] = &[400, 404, 409, 429, 502, 504];
    let do_record = obj(
        &[
            (
                "type",
                json!({ "enum": ["A", "AAAA", "CAA", "CNAME", "MX", "NS", "SRV", "TXT"] }),
            ),
            ("name", string()),
            ("data", string()),
            ("priority", nullable(integer())),
            ("port", nullable(integer())),
            ("ttl", integer()),
            ("weight", nullable(integer())),
            ("flags", nullable(integer())),
            ("tag", string()),
        ],
        &["type"],
    );
    let cf_record = obj(
        &[
            (
                "type",
                json!({ "enum": ["A", "AAAA", "CAA", "CNAME", "MX", "NS", "SRV", "TXT"] }),
            ),
            ("name", string()),
            ("content", string()),
            ("ttl", integer()),
            ("proxied", json!({ "type": "boolean" })),
            ("comment", string()),
            ("priority", integer()),
        ],
        &["type", "name"],
    );
    let rule = obj(
        &[
            (
                "actions",
                array(obj(
                    &[
                        ("type", json!({ "enum": ["forward", "worker", "drop"] })),
                        ("value", array(json!({ "type": "string", "maxLength": 90 }))),
                    ],
                    &["type"],
                )),
            ),
            (
                "matchers",
                array(obj(
                    &[
                        ("type", json!({ "enum": ["literal", "all"] })),
                        ("field", json!({ "enum": ["to"] })),
                        ("value", json!({ "type": "string", "maxLength": 90 })),
                    ],
                    &["type"],
                )),
            ),
            ("enabled", json!({ "type": "boolean" })),
            ("name", json!({ "type": "string", "maxLength": 256 })),
            ("priority", json!({ "type": "integer", "minimum": 0 })),
        ],
        &["actions", "matchers"],
    );
    let mut catch_all = rule.clone();
    if let Some(props) = catch_all["properties"].as_object_mut() {
        props.remove("priority");
    }
    reg.add(
        Method::GET,
        "/api/providers",
        viewer,
        Doc {
            summary: "Cloud providers: which are configured, the account their credentials belong to (never the credentials)",
            response: array(obj(
                &[
                    ("provider", string()),
                    ("name", string()),
                    ("configured", json!({ "type": "boolean" })),
                    ("account", nullable(string())),
                    ("api_url", nullable(string())),
                    ("updated_at", nullable(string())),
                ],
                &["provider", "configured"],
            )),
            ..Default::default()
        },
        list,
    )
    .add(
        Method::PUT,
        "/api/providers/{provider}",
        admin,
        Doc {
            summary: "Set a provider's credentials — { token, account_id? (Cloudflare), api_url? }, or for Contabo { client_id, client_secret, username, password, api_url?, auth_url? } — checked with the provider's identity call, then sealed",
            request: Some(obj(
                &[
                    ("token", json!({ "type": "string", "minLength": 1, "maxLength": 512, "pattern": "^[!-~]+$" })),
                    ("account_id", json!({ "type": "string", "pattern": "^[0-9a-fA-F]{1,64}$" })),
                    ("api_url", json!({ "type": "string", "format": "uri" })),
                    ("client_id", json!({ "type": "string", "minLength": 1, "maxLength": 512, "pattern": "^[!-~]+$" })),
                    ("client_secret", json!({ "type": "string", "minLength": 1, "maxLength": 512, "pattern": "^[!-~]+$" })),
                    ("username", json!({ "type": "string", "minLength": 1, "maxLength": 512, "pattern": "^[!-~]+$" })),
                    ("password", json!({ "type": "string", "minLength": 1, "maxLength": 512 })),
                    ("auth_url", json!({ "type": "string", "format": "uri" })),
                ],
                &[],
            )),
            response: ok_with(&[("provider", string()), ("account", nullable(string()))]),
            path: provider_param.clone(),
            errors: &[400, 404, 429, 502, 504],
            ..Default::default()
        },
        put,
    )
    .add(
        Method::DELETE,
        "/api/providers/{provider}",
        admin,
        Doc {
            summary: "Forget a provider's credentials",
            response: ok_with(&[]),
            path: provider_param,
            errors: &[404],
            ..Default::default()
        },
        remove,
    )
    .add(
        Method::GET,
        "/api/digitalocean/droplets",
        viewer,
        Doc {
            summary: "Every droplet (all pages), as DigitalOcean describes it",
            response: array(any.clone()),
            errors: upstream,
            ..Default::default()
        },
        droplets,
    )
    .add(
        Method::POST,
        "/api/digitalocean/droplets",
        moderator,
        Doc {
            summary: "Create a droplet { name, size, image, region?, ssh_keys?, user_data?, tags?, backups?, ipv6?, monitoring?, adopt? }; with adopt: true a server of the same name is made and the agent install goes into user_data (the answer adds server_id)",
            request: Some(obj(
                &[
                    ("name", json!({ "type": "string", "minLength": 1, "maxLength": 255 })),
                    ("size", slug()),
                    ("image", json!({ "oneOf": [slug(), { "type": "integer", "minimum": 1 }] })),
                    ("region", slug()),
                    ("ssh_keys", array(json!({ "oneOf": [{ "type": "integer", "minimum": 1 }, { "type": "string" }] }))),
                    ("user_data", json!({ "type": "string", "maxLength": 65536 })),
                    ("tags", array(string())),
                    ("backups", json!({ "type": "boolean" })),
                    ("ipv6", json!({ "type": "boolean" })),
                    ("monitoring", json!({ "type": "boolean" })),
                    ("adopt", json!({ "type": "boolean" })),
                ],
                &["name", "size", "image"],
            )),
            response: any.clone(),
            status: 202,
            errors: upstream,
            ..Default::default()
        },
        create_droplet,
    )
    .add(
        Method::GET,
        "/api/digitalocean/droplets/{id}",
        viewer,
        Doc {
            summary: "One droplet",
            response: any.clone(),
            errors: upstream,
            ..Default::default()
        },
        droplet,
    )
    .add(
        Method::DELETE,
        "/api/digitalocean/droplets/{id}",
        admin,
        Doc {
            summary: "Destroy a droplet",
            response: ok_with(&[]),
            errors: upstream,
            ..Default::default()
        },
        delete_droplet,
    )
    .add(
        Method::POST,
        "/api/digitalocean/droplets/{id}/actions",
        moderator,
        Doc {
            summary: "A power action { type: power_on | power_off | reboot | shutdown | power_cycle }; answers DigitalOcean's action",
            request: Some(obj(
                &[("type", json!({ "enum": digitalocean::ACTIONS }))],
                &["type"],
            )),
            response: any.clone(),
            status: 201,
            errors: upstream,
            ..Default::default()
        },
        droplet_action,
    )
    .add(
        Method::GET,
        "/api/digitalocean/domains",
        viewer,
        Doc {
            summary: "Every domain at DigitalOcean",
            response: array(any.clone()),
            errors: upstream,
            ..Default::default()
        },
        do_domains,
    )
    .add(
        Method::POST,
        "/api/digitalocean/domains",
        moderator,
        Doc {
            summary: "Add a domain { name, ip_address? (an A record at the apex) }",
            request: Some(obj(
                &[("name", domain_param().1), ("ip_address", string())],
                &["name"],
            )),
            response: any.clone(),
            status: 201,
            errors: upstream,
            ..Default::default()
        },
        do_create_domain,
    )
    .add(
        Method::GET,
        "/api/digitalocean/domains/{name}/records",
        viewer,
        Doc {
            summary: "Every record of a domain",
            response: array(any.clone()),
            path: vec![domain_param()],
            errors: upstream,
            ..Default::default()
        },
        do_records,
    )
    .add(
        Method::POST,
        "/api/digitalocean/domains/{name}/records",
        moderator,
        Doc {
            summary: "Add a record { type, name, data, priority?, port?, ttl?, weight?, flags?, tag? }",
            request: Some(do_record.clone()),
            response: any.clone(),
            status: 201,
            path: vec![domain_param()],
            errors: upstream,
            ..Default::default()
        },
        do_create_record,
    )
    .add(
        Method::PATCH,
        "/api/digitalocean/domains/{name}/records/{record_id}",
        moderator,
        Doc {
            summary: "Change a record (`type` is required, as DigitalOcean requires it)",
            request: Some(do_record),
            response: any.clone(),
            path: vec![domain_param(), num_id()],
            errors: upstream,
            ..Default::default()
        },
        do_update_record,
    )
    .add(
        Method::DELETE,
        "/api/digitalocean/domains/{name}/records/{record_id}",
        admin,
        Doc {
            summary: "Delete a record",
            response: ok_with(&[]),
            path: vec![domain_param(), num_id()],
            errors: upstream,
            ..Default::default()
        },
        do_delete_record,
    )
    .add(
        Method::GET,
        "/api/cloudflare/zones",
        viewer,
        Doc {
            summary: "Every zone the Cloudflare token can see",
            response: array(any.clone()),
            errors: upstream,
            ..Default::default()
        },
        cf_zones,
    )
    .add(
        Method::GET,
        "/api/cloudflare/zones/{zone_id}/dns",
        viewer,
        Doc {
            summary: "Every DNS record of a zone",
            response: array(any.clone()),
            path: vec![cf_id("zone_id")],
            errors: upstream,
            ..Default::default()
        },
        cf_records,
    )
    .add(
        Method::POST,
        "/api/cloudflare/zones/{zone_id}/dns",
        moderator,
        Doc {
            summary: "Add a DNS record { type, name, content, ttl? (1 = automatic), proxied?, comment?, priority? }",
            request: Some(cf_record.clone()),
            response: any.clone(),
            status: 201,
            path: vec![cf_id("zone_id")],
            errors: upstream,
            ..Default::default()
        },
        cf_create_record,
    )
    .add(
        Method::PATCH,
        "/api/cloudflare/zones/{zone_id}/dns/{record_id}",
        moderator,
        Doc {
            summary: "Change a DNS record (`type` and `name` are required, as Cloudflare requires them)",
            request: Some(cf_record),
            response: any.clone(),
            path: vec![cf_id("zone_id"), cf_id("record_id")],
            errors: upstream,
            ..Default::default()
        },
        cf_update_record,
    )
    .add(
        Method::DELETE,
        "/api/cloudflare/zones/{zone_id}/dns/{record_id}",
        admin,
        Doc {
            summary: "Delete a DNS record",
            response: ok_with(&[]),
            path: vec![cf_id("zone_id"), cf_id("record_id")],
            errors: upstream,
            ..Default::default()
        },
        cf_delete_record,
    )
    .add(
        Method::GET,
        "/api/cloudflare/zones/{zone_id}/email/rules",
        viewer,
        Doc {
            summary: "Every Email Routing rule of a zone",
            response: array(any.clone()),
            path: vec![cf_id("zone_id")],
            errors: upstream,
            ..Default::default()
        },
        cf_rules,
    )
    .add(
        Method::POST,
        "/api/cloudflare/zones/{zone_id}/email/rules",
        moderator,
        Doc {
            summary: "Add an Email Routing rule { actions: [{type: forward|worker|drop, value?}], matchers: [{type: literal|all, field?: to, value?}], enabled?, name?, priority? }",
            request: Some(rule.clone()),
            response: any.clone(),
            status: 201,
            path: vec![cf_id("zone_id")],
            errors: upstream,
            ..Default::default()
        },
        cf_create_rule,
    )
    .add(
        Method::PUT,
        "/api/cloudflare/zones/{zone_id}/email/rules/{rule_id}",
        moderator,
        Doc {
            summary: "Replace an Email Routing rule",
            request: Some(rule.clone()),
            response: any.clone(),
            path: vec![cf_id("zone_id"), cf_id("rule_id")],
            errors: upstream,
            ..Default::default()
        },
        cf_update_rule,
    )
    .add(
        Method::DELETE,
        "/api/cloudflare/zones/{zone_id}/email/rules/{rule_id}",
        admin,
        Doc {
            summary: "Delete an Email Routing rule",
            response: ok_with(&[]),
            path: vec![cf_id("zone_id"), cf_id("rule_id")],
            errors: upstream,
            ..Default::default()
        },
        cf_delete_rule,
    )
    .add(
        Method::GET,
        "/api/cloudflare/zones/{zone_id}/email/catch-all",
        viewer,
        Doc {
            summary: "The zone's catch-all rule",
            response: any.clone(),
            path: vec![cf_id("zone_id")],
            errors: upstream,
            ..Default::default()
        },
        cf_catch_all,
    )
    .add(
        Method::PUT,
        "/api/cloudflare/zones/{zone_id}/email/catch-all",
        moderator,
        Doc {
            summary: "Set the catch-all rule { actions, matchers: [{type: all}], enabled?, name? }",
            request: Some(catch_all),
            response: any.clone(),
            path: vec![cf_id("zone_id")],
            errors: upstream,
            ..Default::default()
        },
        cf_set_catch_all,
    )
    .add(
        Method::GET,
        "/api/cloudflare/zones/{zone_id}/email/destinations",
        viewer,
        Doc {
            summary: "Destination addresses of the zone's account (the configured account_id, else the zone's), verified or not",
            response: array(any.clone()),
            path: vec![cf_id("zone_id")],
            errors: upstream,
            ..Default::default()
        },
        cf_destinations,
    )
    .add(
        Method::POST,
        "/api/cloudflare/zones/{zone_id}/email/destinations",
        moderator,
        Doc {
            summary: "Add a destination address { email }; Cloudflare mails it a confirmation (verified stays null until then)",
            request: Some(obj(
                &[("email", json!({ "type": "string", "maxLength": 90 }))],
                &["email"],
            )),
            response: any.clone(),
            status: 201,
            path: vec![cf_id("zone_id")],
            errors: upstream,
            ..Default::default()
        },
        cf_create_destination,
    )
    .add(
        Method::DELETE,
        "/api/cloudflare/zones/{zone_id}/email/destinations/{destination_id}",
        admin,
        Doc {
            summary: "Delete a destination address",
            response: ok_with(&[]),
            path: vec![cf_id("zone_id"), cf_id("destination_id")],
            errors: upstream,
            ..Default::default()
        },
        cf_delete_destination,
    );
    hostinger_routes(reg, &any, upstream);
    contabo_routes(reg, &any, upstream);
}

fn contabo_routes(reg: &mut Registry, any: &Value, upstream: &'static [u16]) {
    let viewer = Access::Role(Role::Viewer);
    let moderator = Access::Role(Role::Moderator);
    let admin = Access::Role(Role::Admin);
    let snap_id = || {
        (
            "snapshot_id",
            json!({ "type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$" }),
        )
    };
    let one = |summary: &'static str| Doc {
        summary,
        response: any.clone(),
        errors: upstream,
        ..Default::default()
    };
    reg.add(
        Method::GET,
        "/api/contabo/instances",
        viewer,
        Doc {
            summary: "Every Contabo instance (all pages)",
            response: array(any.clone()),
            errors: upstream,
            ..Default::default()
        },
        cb_instances,
    )
    .add(
        Method::POST,
        "/api/contabo/instances",
        moderator,
        Doc {
            summary: "Create an instance { period (months), imageId?, productId?, region?, sshKeys?, rootPassword?, userData?, displayName?, defaultUser?, adopt? }; with adopt: true a server named displayName is made and the agent install goes into userData (the answer adds server_id)",
            request: Some(obj(
                &[
                    ("period", json!({ "enum": [1, 3, 6, 12] })),
                    ("imageId", string()),
                    ("productId", string()),
                    ("region", json!({ "enum": ["EU", "US-central", "US-east", "US-west", "SIN", "UK", "AUS", "JPN", "IND"] })),
                    ("sshKeys", array(json!({ "type": "integer", "minimum": 1 }))),
                    ("rootPassword", json!({ "type": "integer", "minimum": 1 })),
                    ("userData", json!({ "type": "string", "maxLength": 65536 })),
                    ("displayName", json!({ "type": "string", "maxLength": 255 })),
                    ("defaultUser", json!({ "enum": ["root", "admin", "administrator"] })),
                    ("adopt", json!({ "type": "boolean" })),
                ],
                &["period"],
            )),
            response: any.clone(),
            status: 201,
            errors: upstream,
            ..Default::default()
        },
        cb_create_instance,
    )
    .add(Method::GET, "/api/contabo/instances/{id}", viewer, one("One instance"), cb_instance)
    .add(
        Method::PATCH,
        "/api/contabo/instances/{id}",
        moderator,
        Doc {
            summary: "Rename an instance { displayName }",
            request: Some(obj(
                &[("displayName", json!({ "type": "string", "maxLength": 255 }))],
                &["displayName"],
            )),
            response: any.clone(),
            errors: upstream,
            ..Default::default()
        },
        cb_rename_instance,
    )
    .add(
        Method::POST,
        "/api/contabo/instances/{id}/actions/{action}",
        moderator,
        Doc {
            summary: "start, stop, restart or shutdown; answers Contabo's { instanceId, action }",
            optional_body: true,
            request: Some(obj(&[], &[])),
            response: any.clone(),
            status: 201,
            path: vec![("action", json!({ "enum": contabo::ACTIONS }))],
            errors: upstream,
            ..Default::default()
        },
        cb_instance_action,
    )
    .add(
        Method::GET,
        "/api/contabo/instances/{id}/snapshots",
        viewer,
        Doc {
            summary: "An instance's snapshots",
            response: array(any.clone()),
            errors: upstream,
            ..Default::default()
        },
        cb_snapshots,
    )
    .add(
        Method::POST,
        "/api/contabo/instances/{id}/snapshots",
        moderator,
        Doc {
            summary: "Take a snapshot { name (≤ 30), description? (≤ 255) }",
            request: Some(obj(
                &[
                    ("name", json!({ "type": "string", "minLength": 1, "maxLength": 30 })),
                    ("description", json!({ "type": "string", "minLength": 1, "maxLength": 255 })),
                ],
                &["name"],
            )),
            response: any.clone(),
            status: 201,
            errors: upstream,
            ..Default::default()
        },
        cb_create_snapshot,
    )
    .add(
        Method::DELETE,
        "/api/contabo/instances/{id}/snapshots/{snapshot_id}",
        admin,
        Doc {
            summary: "Delete a snapshot",
            response: ok_with(&[]),
            path: vec![snap_id()],
            errors: upstream,
            ..Default::default()
        },
        cb_delete_snapshot,
    )
    .add(
        Method::POST,
        "/api/contabo/instances/{id}/snapshots/{snapshot_id}/rollback",
        moderator,
        Doc {
            summary: "Roll the instance back to a snapshot",
            optional_body: true,
            request: Some(obj(&[], &[])),
            response: any.clone(),
            path: vec![snap_id()],
            errors: upstream,
            ..Default::default()
        },
        cb_rollback_snapshot,
    )
    .add(
        Method::GET,
        "/api/contabo/secrets",
        viewer,
        Doc {
            summary: "Contabo's stored secrets (passwords, SSH keys), without their values",
            response: array(any.clone()),
            errors: upstream,
            ..Default::default()
        },
        cb_secrets,
    )
    .add(
        Method::POST,
        "/api/contabo/secrets",
        moderator,
        Doc {
            summary: "Store a secret { name, value (≥ 8), type: password | ssh }; the answer leaves the value out",
            request: Some(obj(
                &[
                    ("name", json!({ "type": "string", "minLength": 1, "maxLength": 255 })),
                    ("value", json!({ "type": "string", "minLength": 8, "maxLength": 4096 })),
                    ("type", json!({ "enum": ["password", "ssh"] })),
                ],
                &["name", "value", "type"],
            )),
            response: any.clone(),
            status: 201,
            errors: upstream,
            ..Default::default()
        },
        cb_create_secret,
    )
    .add(
        Method::PATCH,
        "/api/contabo/secrets/{id}",
        moderator,
        Doc {
            summary: "Rename a secret or replace its value { name?, value? }",
            request: Some(obj(
                &[
                    ("name", json!({ "type": "string", "minLength": 1, "maxLength": 255 })),
                    ("value", json!({ "type": "string", "minLength": 8, "maxLength": 4096 })),
                ],
                &[],
            )),
            response: any.clone(),
            errors: upstream,
            ..Default::default()
        },
        cb_update_secret,
    )
    .add(
        Method::DELETE,
        "/api/contabo/secrets/{id}",
        admin,
        Doc {
            summary: "Delete a secret",
            response: ok_with(&[]),
            errors: upstream,
            ..Default::default()
        },
        cb_delete_secret,
    );
}

fn hostinger_routes(reg: &mut Registry, any: &Value, upstream: &'static [u16]) {
    let viewer = Access::Role(Role::Viewer);
    let moderator = Access::Role(Role::Moderator);
    let admin = Access::Role(Role::Admin);
    let domain = || {
        (
            "domain",
            json!({ "type": "string", "minLength": 3, "maxLength": 253, "pattern": "^[A-Za-z0-9_-]+(\\.[A-Za-z0-9_-]+)+$" }),
        )
    };
    let types =
        json!({ "enum": ["A", "AAAA", "CNAME", "ALIAS", "MX", "TXT", "NS", "SOA", "SRV", "CAA"] });
    let list = |summary: &'static str| Doc {
        summary,
        response: array(any.clone()),
        errors: upstream,
        ..Default::default()
    };
    reg.add(
        Method::GET,
        "/api/hostinger/vps",
        viewer,
        list("Every Hostinger VPS"),
        hg_vms,
    )
    .add(
        Method::GET,
        "/api/hostinger/vps/{id}",
        viewer,
        Doc {
            summary: "One Hostinger VPS",
            response: any.clone(),
            errors: upstream,
            ..Default::default()
        },
        hg_vm,
    )
    .add(
        Method::POST,
        "/api/hostinger/vps/{id}/{action}",
        moderator,
        Doc {
            summary: "Start, stop or restart a VPS; answers Hostinger's action { id, name, state, … }",
            optional_body: true,
            request: Some(obj(&[], &[])),
            response: any.clone(),
            path: vec![("action", json!({ "enum": hostinger::ACTIONS }))],
            errors: upstream,
            ..Default::default()
        },
        hg_vm_action,
    )
    .add(
        Method::GET,
        "/api/hostinger/domains",
        viewer,
        list("The domain portfolio"),
        hg_domains,
    )
    .add(
        Method::GET,
        "/api/hostinger/domains/{domain}/dns",
        viewer,
        Doc {
            summary: "A domain's DNS zone: [{ name, type, ttl, records: [{ content, is_disabled }] }] (`@` is the apex)",
            response: array(any.clone()),
            path: vec![domain()],
            errors: upstream,
            ..Default::default()
        },
        hg_zone,
    )
    .add(
        Method::PUT,
        "/api/hostinger/domains/{domain}/dns",
        moderator,
        Doc {
            summary: "Write records { overwrite? (default true: replace what matches name and type), zone: [{ name, type, ttl?, records: [{ content }] }] }",
            request: Some(obj(
                &[
                    ("overwrite", json!({ "type": "boolean" })),
                    (
                        "zone",
                        array(obj(
                            &[
                                ("name", string()),
                                ("type", types.clone()),
                                ("ttl", integer()),
                                ("records", array(obj(&[("content", string())], &["content"]))),
                            ],
                            &["name", "type", "records"],
                        )),
                    ),
                ],
                &["zone"],
            )),
            response: any.clone(),
            path: vec![domain()],
            errors: upstream,
            ..Default::default()
        },
        hg_update_zone,
    )
    .add(
        Method::DELETE,
        "/api/hostinger/domains/{domain}/dns",
        admin,
        Doc {
            summary: "Delete the records matching { filters: [{ name, type }] }",
            request: Some(obj(
                &[(
                    "filters",
                    array(obj(&[("name", string()), ("type", types)], &["name", "type"])),
                )],
                &["filters"],
            )),
            response: any.clone(),
            path: vec![domain()],
            errors: upstream,
            ..Default::default()
        },
        hg_delete_records,
    )
    .add(
        Method::GET,
        "/api/hostinger/email",
        viewer,
        list("Every mail order (all pages)"),
        hg_email,
    )
    .add(
        Method::GET,
        "/api/hostinger/billing/subscriptions",
        viewer,
        list("Billing subscriptions (prices in cents)"),
        hg_subscriptions,
    );
}
