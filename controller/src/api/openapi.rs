//! The OpenAPI 3.1 document, generated from the route registry, plus the small schema
//! vocabulary routes use to describe their bodies.

use super::{Access, RouteInfo};
use serde_json::{json, Map, Value};

pub fn string() -> Value {
    json!({ "type": "string" })
}
pub fn integer() -> Value {
    json!({ "type": "integer" })
}
pub fn boolean() -> Value {
    json!({ "type": "boolean" })
}
pub fn array(items: Value) -> Value {
    json!({ "type": "array", "items": items })
}
pub fn nullable(schema: Value) -> Value {
    json!({ "oneOf": [schema, { "type": "null" }] })
}
pub fn role() -> Value {
    json!({ "type": "string", "enum": ["viewer", "moderator", "admin"] })
}

/// An object schema with the given properties, of which `required` must be present.
pub fn obj(props: &[(&str, Value)], required: &[&str]) -> Value {
    let properties: Map<String, Value> = props
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    json!({ "type": "object", "properties": properties, "required": required })
}

/// `{ ok: true, ...props }`, the shape of every mutation's answer.
pub fn ok_with(props: &[(&str, Value)]) -> Value {
    let mut all = vec![("ok", json!({ "const": true }))];
    all.extend(props.iter().cloned());
    let required: Vec<&str> = all.iter().map(|(k, _)| *k).collect();
    obj(&all, &required)
}

pub fn user() -> Value {
    obj(
        &[
            ("id", integer()),
            ("username", string()),
            ("role", role()),
            ("totp_enabled", boolean()),
        ],
        &["id", "username", "role", "totp_enabled"],
    )
}

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } }
    })
}

/// A path id: a positive 64-bit integer.
pub fn id() -> Value {
    json!({ "type": "integer", "minimum": 1, "maximum": i64::MAX })
}

fn status_text(code: u16) -> &'static str {
    match code {
        400 => "bad input: the message names the field, parameter or rule",
        401 => "no valid session (or, where the route checks them, wrong credentials)",
        403 => "refused: `INSUFFICIENT_ROLE` with `required` and `role`, a cross-site request, or a wrong password",
        404 => "no such resource",
        409 => "the request conflicts with the resource's state (the message says what is in the way)",
        413 => "the body is larger than --max-body-bytes",
        415 => "a body was sent without Content-Type: application/json",
        429 => "too many attempts; retry after the Retry-After header's seconds",
        502 => "the server's agent or Docker engine failed",
        504 => "the server's agent did not answer in time",
        _ => "error",
    }
}

/// A request body schema closed to unknown fields (the API refuses them, naming the
/// field), at its top level and in nested objects that list their properties.
fn closed(schema: &Value) -> Value {
    let mut s = schema.clone();
    if let Value::Object(m) = &mut s {
        if m.get("type") == Some(&json!("object")) && m.contains_key("properties") {
            m.entry("additionalProperties").or_insert(json!(false));
        }
        if let Some(Value::Object(props)) = m.get_mut("properties") {
            for (_, p) in props.iter_mut() {
                *p = closed(p);
            }
        }
        if let Some(items) = m.get_mut("items") {
            *items = closed(items);
        }
        for key in ["oneOf", "anyOf", "allOf"] {
            if let Some(Value::Array(alts)) = m.get_mut(key) {
                for alt in alts.iter_mut() {
                    *alt = closed(alt);
                }
            }
        }
    }
    s
}

pub fn document(routes: &[RouteInfo]) -> Value {
    let mut paths = Map::new();
    for r in routes {
        let mut op = Map::new();
        op.insert("summary".into(), json!(r.doc.summary));
        op.insert(
            "operationId".into(),
            json!(format!(
                "{}_{}",
                r.method.as_str().to_ascii_lowercase(),
                r.path
                    .trim_start_matches("/api/")
                    .replace(['/', '-'], "_")
                    .replace(['{', '}'], "")
            )),
        );
        op.insert("tags".into(), json!([r.tag]));
        op.insert("x-mezzanine-role".into(), json!(r.access.label()));
        let mut params: Vec<Value> = r
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| {
                let schema = r
                    .doc
                    .path
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map_or_else(id, |(_, s)| s.clone());
                json!({ "name": name, "in": "path", "required": true, "schema": schema })
            })
            .collect();
        let has_path = !params.is_empty();
        params.extend(r.doc.query.iter().map(|(name, schema, description)| {
            json!({ "name": name, "in": "query", "required": false, "schema": schema, "description": description })
        }));
        if !params.is_empty() {
            op.insert("parameters".into(), Value::Array(params));
        }
        match r.access {
            Access::Public => {
                op.insert("security".into(), json!([]));
            }
            Access::Role(_) => {
                op.insert("security".into(), json!([{ "cookieAuth": [] }]));
            }
        }
        if let Some(req) = &r.doc.request {
            op.insert(
                "requestBody".into(),
                json!({ "required": !r.doc.optional_body, "content": { "application/json": { "schema": closed(req) } } }),
            );
        }
        let mut responses = Map::new();
        let json_body = json!({ "application/json": { "schema": r.doc.response } });
        let events = json!({ "text/event-stream": { "schema": string() } });
        let content = match r.doc.body {
            super::BodyKind::Json => json_body,
            super::BodyKind::EventStream => events,
            super::BodyKind::JsonOrEventStream => {
                let mut both = json_body;
                if let (Value::Object(b), Value::Object(e)) = (&mut both, events) {
                    b.extend(e);
                }
                both
            }
        };
        let description = match r.doc.status {
            201 => "created",
            202 => "accepted: the work goes on in the background",
            _ => "success",
        };
        for code in std::iter::once(r.doc.status).chain(r.doc.also.iter().copied()) {
            let description = if code == r.doc.status {
                description
            } else {
                "success"
            };
            responses.insert(
                code.to_string(),
                json!({ "description": description, "content": content.clone() }),
            );
        }
        let mut codes: Vec<u16> = vec![400];
        if let Access::Role(_) = r.access {
            codes.extend([401, 403]);
        }
        if r.method != axum::http::Method::GET {
            // Cross-site refusals; a body of the wrong type or size.
            codes.push(403);
            if r.doc.request.is_some() {
                codes.extend([413, 415]);
            }
        }
        if has_path {
            codes.push(404);
        }
        codes.extend(r.doc.errors.iter().copied());
        codes.sort_unstable();
        codes.dedup();
        for code in codes {
            responses.insert(code.to_string(), error_response(status_text(code)));
        }
        op.insert("responses".into(), Value::Object(responses));
        let entry = paths
            .entry(r.path.to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(methods) = entry {
            methods.insert(r.method.as_str().to_ascii_lowercase(), Value::Object(op));
        }
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Mezzanine API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Every route of the controller. Mutations need `Content-Type: application/json`; `x-mezzanine-role` names the least role a route needs. Lengths (`maxLength`) count characters. No string may hold NUL (U+0000), in the path, the query or the body: 400 (webhook payloads excepted)."
        },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "cookieAuth": { "type": "apiKey", "in": "cookie", "name": super::session::COOKIE }
            },
            "schemas": {
                "Error": obj(&[("error", string())], &["error"]),
                "InsufficientRole": obj(
                    &[("error", json!({ "const": "INSUFFICIENT_ROLE" })), ("required", role()), ("role", role())],
                    &["error", "required", "role"],
                ),
            }
        }
    })
}

// ---- the request grammars the handlers enforce, as JSON Schema ---------------------------
// Each mirrors a check in `validate`, `auth` or a handler; the contract test (schemathesis
// over the whole document) fails when one drifts from the code.

/// An object schema that needs at least one of its properties (a PATCH of nothing is
/// refused).
pub fn at_least_one(mut schema: Value) -> Value {
    schema["minProperties"] = json!(1);
    schema
}

/// `validate::name` (servers, workflows) and `auth::validate_username` (users): 1–64 of
/// `A–Z a–z 0–9 . _ -`, starting with a letter or digit.
pub fn name() -> Value {
    json!({ "type": "string", "minLength": 1, "maxLength": 64, "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]*$" })
}

/// `validate::username`: an SSH user, 1–32 of `A–Z a–z 0–9 . _ -`, not starting with `-`.
pub fn ssh_username() -> Value {
    json!({ "type": "string", "minLength": 1, "maxLength": 32, "pattern": "^[A-Za-z0-9._][A-Za-z0-9._-]*$" })
}

/// `validate::host`: an IP address, or a hostname of RFC 1123 labels (a trailing dot
/// allowed), at most 253 characters.
pub fn host() -> Value {
    json!({ "anyOf": [
        { "type": "string", "format": "ipv4" },
        { "type": "string", "format": "ipv6" },
        { "type": "string", "maxLength": 253,
          "pattern": "^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\\.?$" }
    ] })
}

/// `validate::tags`: at most 32 of 1–40 characters from `A–Z a–z 0–9 . _ - : =`.
pub fn tags() -> Value {
    json!({ "type": "array", "maxItems": 32,
            "items": { "type": "string", "minLength": 1, "maxLength": 40, "pattern": "^[A-Za-z0-9._:=-]+$" } })
}

/// A TCP port.
pub fn port() -> Value {
    json!({ "type": "integer", "minimum": 1, "maximum": 65535 })
}

/// `auth::password::validate`: 10–256 characters.
pub fn password() -> Value {
    json!({ "type": "string", "minLength": 10, "maxLength": 256 })
}

/// A password as typed at login or re-authentication: anything up to 256 characters
/// (a wrong one is 401/403, never 400).
pub fn typed_password() -> Value {
    json!({ "type": "string", "maxLength": 256 })
}

/// `SHA256:` and 43 base64 characters, as `ssh-keygen -lf` prints a host key.
pub fn fingerprint() -> Value {
    json!({ "type": "string", "pattern": "^SHA256:[A-Za-z0-9+/]{43}$" })
}

/// A Docker container id or name (one path segment the engine accepts).
pub fn container() -> Value {
    json!({ "type": "string", "minLength": 1, "maxLength": 128, "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]*$" })
}

/// A paged answer: `{ items: [item], page, per_page, total }`.
pub fn paged(item: Value) -> Value {
    obj(
        &[
            ("items", array(item)),
            ("page", integer()),
            ("per_page", integer()),
            ("total", integer()),
        ],
        &["items", "page", "per_page", "total"],
    )
}

/// The `page` and `per_page` query parameters of a paged list of `what`.
pub fn page_params(what: &'static str) -> Vec<(&'static str, Value, &'static str)> {
    vec![
        (
            "page",
            json!({ "type": "integer", "minimum": 1, "maximum": i64::MAX }),
            "page number, from 1",
        ),
        (
            "per_page",
            json!({ "type": "integer", "minimum": 1, "maximum": 500 }),
            what,
        ),
    ]
}
