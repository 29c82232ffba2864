//! The HTTP layer: the route registry (each route declared once with its role and its
//! OpenAPI description), the cross-cutting middleware, and the handlers per `/api/<resource>`.
//! Handlers parse, authorize, call the store or domain, and shape JSON; they build no SQL.

pub(crate) mod audit;
mod auth;
mod docker;
pub mod error;
mod events;
mod install;
mod meta;
mod notifiers;
pub mod openapi;
mod pools;
mod providers;
mod servers;
mod session;
mod tokens;
mod users;
mod workflows;

use crate::auth::Role;
use crate::state::AppState;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::handler::Handler;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{from_fn, from_fn_with_state, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{on, MethodFilter};
use axum::{Json, Router};
use futures_util::FutureExt;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;

pub use error::{ApiError, ApiResult};
pub use session::{Session, SessionCtx};

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No session needed (login, setup, state, OpenAPI, webhooks).
    Public,
    /// A session whose role is at least this one.
    Role(Role),
}

impl Access {
    pub fn label(self) -> &'static str {
        match self {
            Access::Public => "public",
            Access::Role(r) => r.as_str(),
        }
    }
}

/// The OpenAPI description of one route. Statuses every route can answer (400 for bad
/// input, 401/403 for a role route, 403/413/415 for a mutation, 404 where a path names a
/// resource) are added by the generator; `errors` names the route's own.
#[derive(Debug, Clone)]
pub struct Doc {
    pub summary: &'static str,
    pub request: Option<Value>,
    pub response: Value,
    /// The success status (200 unless set: 201 for creation, 202 for work started).
    pub status: u16,
    /// Other success statuses answered with the same body schema.
    pub also: &'static [u16],
    /// The request body may be left out (`request` then describes it when sent).
    pub optional_body: bool,
    /// What the success answer is.
    pub body: BodyKind,
    /// Query parameters: `(name, schema, description)`.
    pub query: Vec<(&'static str, Value, &'static str)>,
    /// Schemas of path parameters other than `{id}` (a positive integer).
    pub path: Vec<(&'static str, Value)>,
    /// Further statuses this route answers, each with an `{ error }` body.
    pub errors: &'static [u16],
}

impl Default for Doc {
    fn default() -> Doc {
        Doc {
            summary: "",
            request: None,
            response: Value::Null,
            status: 200,
            also: &[],
            optional_body: false,
            body: BodyKind::Json,
            query: Vec::new(),
            path: Vec::new(),
            errors: &[],
        }
    }
}

/// The media type of a route's success answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    Json,
    /// `text/event-stream`.
    EventStream,
    /// JSON, or an event stream when the `follow` query parameter is true.
    JsonOrEventStream,
}

/// One registered route, as listed in the OpenAPI document and walked by the role test.
#[derive(Debug, Clone)]
pub struct RouteInfo {
    pub method: Method,
    pub path: &'static str,
    pub access: Access,
    pub tag: &'static str,
    pub doc: Doc,
}

/// Builds the API router; the only way to add an `/api` route is `add`, which requires
/// an access rule and a description.
pub struct Registry {
    state: AppState,
    router: Router<AppState>,
    routes: Vec<RouteInfo>,
    tag: &'static str,
}

impl Registry {
    fn new(state: AppState) -> Self {
        Self {
            state,
            router: Router::new(),
            routes: Vec::new(),
            tag: "",
        }
    }

    fn tag(&mut self, tag: &'static str) -> &mut Self {
        self.tag = tag;
        self
    }

    fn add<H, T>(
        &mut self,
        method: Method,
        path: &'static str,
        access: Access,
        doc: Doc,
        handler: H,
    ) -> &mut Self
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        let filter = MethodFilter::try_from(method.clone())
            .unwrap_or_else(|_| panic!("route {method} {path}: unsupported method"));
        // Authorization first (outermost), then the body shape.
        let endpoint = on(filter, handler)
            .route_layer(from_fn_with_state(self.state.clone(), object_bodies))
            .route_layer(from_fn_with_state(
                (self.state.clone(), access),
                session::authorize,
            ));
        let router = std::mem::take(&mut self.router);
        self.router = router.route(path, endpoint);
        self.routes.push(RouteInfo {
            method,
            path,
            access,
            tag: self.tag,
            doc,
        });
        self
    }
}

/// The rendered OpenAPI document of this router.
#[derive(Debug, Clone)]
pub struct OpenApiDoc(pub Arc<String>);

/// Assembles the whole HTTP application for `state`.
pub fn router(state: AppState) -> Router {
    let mut reg = Registry::new(state.clone());
    auth::routes(reg.tag("auth"));
    users::routes(reg.tag("users"));
    audit::routes(reg.tag("audit"));
    servers::routes(reg.tag("servers"));
    docker::routes(reg.tag("docker"));
    workflows::routes(reg.tag("workflows"));
    pools::routes(reg.tag("pools"));
    events::routes(reg.tag("events"));
    providers::routes(reg.tag("providers"));
    tokens::routes(reg.tag("tokens"));
    notifiers::routes(reg.tag("notifiers"));
    meta::routes(reg.tag("meta"));
    let Registry { router, routes, .. } = reg;
    // The document is rendered once and handed to its route as an extension: it belongs
    // to the HTTP layer, not to the application state.
    let doc = OpenApiDoc(Arc::new(openapi::document(&routes).to_string()));

    // `json_errors` runs inside the audit too, so a record says what the client got (a
    // malformed body is 400 in both, not serde's 422 in the log).
    let api = router
        .layer(axum::Extension(doc))
        .layer(from_fn(json_errors))
        .layer(from_fn_with_state(state.clone(), audit::record));
    Router::new()
        .merge(api)
        .route("/healthz", axum::routing::get(meta::healthz))
        .route("/metrics", axum::routing::get(metrics))
        .merge(crate::panel::routes())
        .merge(install::routes())
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(state.config().max_body_bytes))
        .layer(from_fn(json_errors))
        .layer(from_fn_with_state(state.clone(), count_request))
        .layer(from_fn_with_state(state.clone(), client_addr))
        .layer(from_fn(catch_panic))
        .with_state(state)
}

/// Counts every answered request by its route template (metrics).
async fn count_request(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    let method = req.method().as_str().to_owned();
    let started = std::time::Instant::now();
    let resp = next.run(req).await;
    state.metrics().request(
        &route,
        &method,
        resp.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    resp
}

/// `GET /metrics`: for a request carrying an API token (any role). Also served without
/// one on `--metrics-listen`, an address of the operator's choosing.
async fn metrics(State(state): State<AppState>, headers: axum::http::HeaderMap) -> Response {
    match session::resolve(&state, &headers).await {
        Ok(Some(s)) if s.token.is_some() => metrics_text(&state).await,
        Ok(_) => ApiError::Unauthorized(
            "metrics need an API token: Authorization: Bearer mz_… (or --metrics-listen)".into(),
        )
        .into_response(),
        Err(e) => e.into_response(),
    }
}

pub(crate) async fn metrics_text(state: &AppState) -> Response {
    match state.metrics().render(state).await {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            )],
            text,
        )
            .into_response(),
        Err(e) => ApiError::Internal(format!("metrics: {e}")).into_response(),
    }
}

/// Serves only `/metrics`, without authentication, on the operator's `--metrics-listen`.
pub fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route(
            "/metrics",
            axum::routing::get(|State(s): State<AppState>| async move { metrics_text(&s).await }),
        )
        .fallback(not_found)
        .with_state(state)
}

async fn not_found(method: Method, uri: axum::http::Uri) -> Response {
    let segments: Vec<&str> = uri.path().split('/').collect();
    if let ["", "api", "servers", _, "docker", "containers", _, action] = segments.as_slice() {
        return ApiError::NotFound(format!(
            "no container action {action:?}: the actions are start, stop, restart, remove"
        ))
        .into_response();
    }
    if uri.path().starts_with("/api") {
        return ApiError::NotFound(format!("no route for {method} {}", uri.path())).into_response();
    }
    (StatusCode::NOT_FOUND, "not found").into_response()
}

fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Cross-site protection for mutations: a JSON content type is required and a present
/// `Origin` must be the public URL's. Webhooks are exempt (they carry an HMAC instead).
pub(crate) fn check_mutation(state: &AppState, req: &Request) -> Result<(), ApiError> {
    if is_safe(req.method()) || req.uri().path().starts_with("/api/webhooks/") {
        return Ok(());
    }
    same_site(state, req)?;
    // A form or a `no-cors` fetch cannot send this type cross-site without a preflight;
    // a request without a body (DELETE, a bare POST) has no type to send.
    let has_body = req.headers().contains_key(header::TRANSFER_ENCODING)
        || req
            .headers()
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    let json_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"));
    if has_body && !json_type {
        return Err(ApiError::UnsupportedMediaType(
            "a request body must be sent with the header Content-Type: application/json".into(),
        ));
    }
    Ok(())
}

/// Refuses mutations another site's page makes with the user's cookie. Browsers say where
/// a request comes from: `Sec-Fetch-Site` (modern browsers), else `Origin`. Same-origin is
/// judged by the public URL, or by the request's own `Host` when that names this machine
/// by address or as `localhost` — so the panel works whatever address the browser used,
/// while a DNS name the operator did not configure (how DNS rebinding reaches a server)
/// still has to be the public URL's. Clients that send neither (curl, scripts) pass.
fn same_site(state: &AppState, req: &Request) -> Result<(), ApiError> {
    let headers = req.headers();
    let expected = &state.config().public_origin;
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        if matches!(site, "same-origin" | "none") {
            return Ok(());
        }
        let from = headers
            .get(header::ORIGIN)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("another site");
        return Err(ApiError::Forbidden(format!(
            "cross-site request refused: it came from {from} ({site}); this API accepts changes from its own pages only"
        )));
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = String::from_utf8_lossy(origin.as_bytes()).into_owned();
    if origin == *expected {
        return Ok(());
    }
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let authority = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    if let (Some(host), Some(authority)) = (host, authority) {
        if host.eq_ignore_ascii_case(authority) && is_machine_address(host) {
            return Ok(());
        }
    }
    Err(ApiError::Forbidden(format!(
        "cross-origin request refused: Origin {origin:?} is not this controller's public URL ({expected}); if you open the panel at {origin}, start the controller with --public-url {origin}"
    )))
}

/// `host[:port]` naming a machine by IP address or as `localhost`.
fn is_machine_address(authority: &str) -> bool {
    let host = match authority.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok()
}

/// Gives every error under `/api` and `/healthz` the `{ "error": … }` shape, including
/// axum's own rejections (malformed JSON, 405, 413) which come as plain text.
async fn json_errors(req: Request, next: Next) -> Response {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let resp = next.run(req).await;
    let mut status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if is_json || !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    if !(path.starts_with("/api") || path == "/healthz") {
        return resp;
    }
    // serde's "missing field" and type errors arrive as 422; the API calls all malformed
    // bodies 400.
    if status == StatusCode::UNPROCESSABLE_ENTITY {
        status = StatusCode::BAD_REQUEST;
    }
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 16 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let message = match status {
        StatusCode::METHOD_NOT_ALLOWED => format!("method {method} is not allowed on {path}"),
        StatusCode::PAYLOAD_TOO_LARGE => "request body is too large".to_owned(),
        _ if !text.is_empty() => rejection_message(&text),
        _ => status
            .canonical_reason()
            .unwrap_or("request failed")
            .to_ascii_lowercase(),
    };
    let mut out = (status, Json(json!({ "error": &message }))).into_response();
    // Who asked stays attached (the audit record names them), with the reason said.
    *out.extensions_mut() = parts.extensions.clone();
    out.extensions_mut().insert(audit::Reason(message));
    for name in [header::ALLOW, header::RETRY_AFTER] {
        if let Some(v) = parts.headers.get(&name) {
            out.headers_mut().insert(name, v.clone());
        }
    }
    out
}

/// Every request body of the API is a JSON object. serde would also read a struct from a
/// JSON array (`[]` filled every defaulted field), so the shape is checked here, once,
/// before any extractor sees the body. NUL characters are refused here too, in the path,
/// the query and the body alike: PostgreSQL's text cannot hold one (a NUL that reached it
/// failed the statement, a 500), no field of the API has a use for one, and refusing
/// them on both engines keeps SQLite's behaviour the same. Webhook payloads are the CI
/// system's and keep their NULs: the handler reads only a few fields from them, and
/// drops a NUL-holding one.
async fn object_bodies(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let uri = req.uri();
    // `%00` is the only way a URI carries a NUL (a raw one is not a URI byte).
    if uri.path().contains("%00") {
        return ApiError::BadRequest("path: NUL characters are not accepted".into())
            .into_response();
    }
    if uri.query().is_some_and(|q| q.contains("%00")) {
        return ApiError::BadRequest("query: NUL characters are not accepted".into())
            .into_response();
    }
    if is_safe(req.method()) {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, state.config().max_body_bytes).await {
        Ok(b) => b,
        Err(_) => {
            return (
                StatusCode::PAYLOAD_TOO_LARGE,
                Json(json!({ "error": "request body is too large" })),
            )
                .into_response()
        }
    };
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first.is_some_and(|b| *b != b'{') {
        return ApiError::BadRequest("body: expected a JSON object".into()).into_response();
    }
    if json_has_nul(&bytes) && !parts.uri.path().starts_with("/api/webhooks/") {
        return ApiError::BadRequest("body: NUL characters (\\u0000) are not accepted".into())
            .into_response();
    }
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

/// Whether JSON text holds a NUL inside a string: the escape `\u0000` (JSON has no other
/// way to write one), and not an escaped backslash followed by the letters `u0000`. Text
/// that is not JSON may answer either way: the extractor refuses it after.
fn json_has_nul(text: &[u8]) -> bool {
    let mut in_string = false;
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'"' => in_string = !in_string,
            b'\\' if in_string => {
                if text.get(i + 1) == Some(&b'u')
                    && text.get(i + 2..i + 6).is_some_and(|h| h == b"0000")
                {
                    return true;
                }
                // Skips the escaped character, so `\\` and `\"` are never read as
                // the start of another escape or the end of the string.
                i += 1;
            }
            _ => {}
        }
        i += 1;
    }
    false
}

/// For optional body fields: absent is `None` (with `#[serde(default)]`), but an explicit
/// `null` is refused like any other wrong type — the document does not allow it, and
/// "null" meaning "leave it" would be a second, undocumented way to say nothing.
pub(crate) fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

/// axum's extractor rejections, said plainly: which part of the request was wrong and
/// serde's reason (`unknown field `x`, expected one of …`), without the framework's
/// wording around it.
fn rejection_message(text: &str) -> String {
    const PREFIXES: &[(&str, &str)] = &[
        (
            "Failed to deserialize the JSON body into the target type: ",
            "body: ",
        ),
        (
            "Failed to parse the request body as JSON: ",
            "the body is not valid JSON: ",
        ),
        ("Failed to deserialize query string: ", "query: "),
        ("Invalid URL: ", "path: "),
        (
            "Expected request with `Content-Type: application/json`",
            "a request body must be sent with the header Content-Type: application/json",
        ),
    ];
    for (prefix, ours) in PREFIXES {
        if let Some(rest) = text.strip_prefix(prefix) {
            return format!("{ours}{rest}");
        }
    }
    text.to_owned()
}

/// Turns a panic in any handler into a logged 500 with the usual JSON shape, so one bad
/// request never takes a connection task down silently.
async fn catch_panic(req: Request, next: Next) -> Response {
    let path = req.uri().path().to_owned();
    match std::panic::AssertUnwindSafe(next.run(req))
        .catch_unwind()
        .await
    {
        Ok(resp) => resp,
        Err(_) => {
            tracing::error!(%path, "handler panicked");
            let mut resp = Response::new(Body::from(r#"{"error":"internal error"}"#));
            *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            resp
        }
    }
}

/// The client's address, as `client_addr` resolved it (the peer, or behind a trusted
/// proxy the forwarded address).
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub std::net::IpAddr);

/// The URL servers reach this controller by, as this request shows it (see
/// `Config::base_url`): what install commands, install scripts and webhook URLs name.
#[derive(Debug, Clone)]
pub struct BaseUrl(pub String);

/// Resolves every request's client address (see `net::client_addr`) and base URL once.
async fn client_addr(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    // Every connection the controller accepts has a peer; "unspecified" only stands in
    // for a request built without one.
    let peer = req
        .extensions()
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
        .map_or(std::net::IpAddr::from([0, 0, 0, 0]), |c| c.0.ip());
    let forwarded = req
        .headers()
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok());
    let trusted = &state.config().trusted_proxies;
    let ip = crate::net::client_addr(peer, forwarded, trusted);
    let via_proxy = trusted.iter().any(|n| n.contains(peer));
    let https = via_proxy
        && req
            .headers()
            .get("x-forwarded-proto")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()));
    let base = BaseUrl(state.config().base_url(host, https));
    req.extensions_mut().insert(ClientAddr(ip));
    req.extensions_mut().insert(base);
    next.run(req).await
}

/// The client's address as text, for audit records and sessions.
pub fn client_ip(req_ext: &axum::http::Extensions) -> Option<String> {
    req_ext.get::<ClientAddr>().map(|c| c.0.to_string())
}

/// The route template a request matched, for audit records.
pub fn matched(req_ext: &axum::http::Extensions) -> Option<String> {
    req_ext.get::<MatchedPath>().map(|m| m.as_str().to_owned())
}

/// A `text/event-stream` response whose body is what the pump sends on `rx`; the pump
/// sees the client leave as a closed channel.
/// A `text/event-stream` response fed by `rx`; it ends when the controller begins to shut
/// down (`closing`), so a graceful stop never waits on a viewer.
pub(crate) fn event_stream(
    rx: tokio::sync::mpsc::Receiver<Result<axum::body::Bytes, std::io::Error>>,
    state: &AppState,
) -> Response {
    use futures_util::StreamExt;
    // Counted as an open stream (metrics) for as long as the body lives.
    let open = state.metrics().stream_opened();
    let body = tokio_stream::wrappers::ReceiverStream::new(rx)
        .take_until(state.closing().clone().cancelled_owned())
        .map(move |chunk| {
            let _counted = &open;
            chunk
        });
    let mut resp = Body::from_stream(body).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

/// A list page from `?page=&per_page=` (defaults 1 and 50, at most 500 a page):
/// `(page, per_page, offset)`.
pub(crate) fn page_bounds(
    page: Option<i64>,
    per_page: Option<i64>,
) -> Result<(i64, i64, i64), ApiError> {
    let page = page.unwrap_or(1);
    let per_page = per_page.unwrap_or(50);
    if page < 1 {
        return Err(ApiError::BadRequest("page must be 1 or more".into()));
    }
    if !(1..=500).contains(&per_page) {
        return Err(ApiError::BadRequest("per_page must be 1 to 500".into()));
    }
    Ok((page, per_page, (page - 1).saturating_mul(per_page)))
}

/// `{ "ok": true, ...fields }`.
pub fn ok(fields: Value) -> Json<Value> {
    let mut body = json!({ "ok": true });
    if let (Some(out), Value::Object(extra)) = (body.as_object_mut(), fields) {
        out.extend(extra);
    }
    Json(body)
}

#[cfg(test)]
mod tests {
    use super::json_has_nul;

    #[test]
    fn a_nul_escape_is_found_inside_strings_only() {
        assert!(json_has_nul(br#"{"name":"a\u0000b"}"#));
        assert!(json_has_nul(br#"{"a\u0000":1}"#));
        assert!(json_has_nul(br#"{"a":"\\\u0000"}"#));
        // An escaped backslash before `u0000` is the text "\u0000", not a NUL.
        assert!(!json_has_nul(br#"{"script":"printf '\\u0000'"}"#));
        assert!(!json_has_nul(br#"{"q":"say \"\\u0000\" please"}"#));
        assert!(!json_has_nul(br#"{"a":"\u0001","b":"\u1000"}"#));
        assert!(!json_has_nul(br#"{"name":"u0000","n":0}"#));
        assert!(!json_has_nul(b""));
    }
}
