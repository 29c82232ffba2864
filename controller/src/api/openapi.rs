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
        let params: Vec<Value> = r
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({ "name": name, "in": "path", "required": true, "schema": string() }))
            .collect();
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
                json!({ "required": true, "content": { "application/json": { "schema": req } } }),
            );
        }
        let mut responses = Map::new();
        responses.insert(
            "200".into(),
            json!({ "description": "success", "content": { "application/json": { "schema": r.doc.response } } }),
        );
        responses.insert("4XX".into(), error_response("client error"));
        if let Access::Role(_) = r.access {
            responses.insert("401".into(), error_response("no valid session"));
            responses.insert(
                "403".into(),
                json!({ "description": "INSUFFICIENT_ROLE", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/InsufficientRole" } } } }),
            );
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
            "description": "Every route of the controller. Mutations need `Content-Type: application/json`; `x-mezzanine-role` names the least role a route needs."
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
