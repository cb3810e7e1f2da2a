//! The OpenAPI 3 description of every endpoint and kind, generated from the Rust types
//! (schemars) at startup: nothing here is written by hand but the path layout.

use serde_json::{Map, Value, json};
use wisp_api::{KINDS, KindInfo};

fn status_ref() -> Value {
    json!({ "$ref": "#/components/schemas/Status" })
}

fn responses(ok_code: &str, ok: Value) -> Value {
    let mut r = Map::new();
    r.insert(
        ok_code.into(),
        json!({ "description": "OK", "content": { "application/json": { "schema": ok } } }),
    );
    for (code, text) in [
        ("400", "malformed request"),
        ("401", "missing, invalid or expired token"),
        (
            "403",
            "this principal may not do this (the message names the verb, resource and scope), or a quota is exceeded",
        ),
        ("404", "not found"),
        ("405", "method not supported here"),
        ("408", "the request body was not received in time"),
        ("409", "already exists or stale resourceVersion"),
        ("413", "body over the limit"),
        ("422", "validation failed; causes name each field"),
        ("429", "over this token's request budget; see Retry-After"),
    ] {
        r.insert(
            code.into(),
            json!({ "description": text, "content": { "application/json": { "schema": status_ref() } } }),
        );
    }
    Value::Object(r)
}

fn param(name: &str, location: &str, description: &str) -> Value {
    json!({ "name": name, "in": location, "required": location == "path", "description": description, "schema": { "type": "string" } })
}

fn kind_paths(kind: &KindInfo, paths: &mut Map<String, Value>) {
    let schema = json!({ "$ref": format!("#/components/schemas/{}", kind.kind) });
    let list_schema = json!({
        "type": "object",
        "properties": {
            "apiVersion": { "type": "string" }, "kind": { "type": "string" },
            "metadata": { "type": "object", "properties": { "resourceVersion": { "type": "string" } } },
            "items": { "type": "array", "items": schema }
        }
    });
    let body = json!({ "required": true, "content": { "application/json": { "schema": schema } } });
    let (collection, mut base_params) = if kind.namespaced {
        (
            format!("/apis/wisp.dev/v1/namespaces/{{namespace}}/{}", kind.plural),
            vec![param("namespace", "path", "namespace of the objects")],
        )
    } else {
        (format!("/apis/wisp.dev/v1/{}", kind.plural), vec![])
    };
    let mut list_params = base_params.clone();
    list_params.extend([
        param(
            "labelSelector",
            "query",
            "label selector, e.g. app=web,tier in (a,b)",
        ),
        param("fieldSelector", "query", "field selector, e.g. spec.nodeName=n1"),
        param("watch", "query", "true: stream newline-delimited watch events"),
        param("resourceVersion", "query", "watch changes after this revision"),
        param("timeoutSeconds", "query", "end a watch after this many seconds"),
        param(
            "limit",
            "query",
            "at most this many items; metadata.continue then names the next page",
        ),
        param("continue", "query", "the metadata.continue of the previous page"),
    ]);
    paths.insert(
        collection.clone(),
        json!({
            "get": { "operationId": format!("list{}", kind.kind), "parameters": list_params, "responses": responses("200", list_schema.clone()) },
            "post": { "operationId": format!("create{}", kind.kind), "parameters": base_params, "requestBody": body, "responses": responses("201", schema.clone()) }
        }),
    );
    base_params.push(param("name", "path", "object name"));
    let mut delete_params = base_params.clone();
    delete_params.push(param("resourceVersion", "query", "delete only at this revision"));
    paths.insert(
        format!("{collection}/{{name}}"),
        json!({
            "get": { "operationId": format!("read{}", kind.kind), "parameters": base_params, "responses": responses("200", schema.clone()) },
            "put": { "operationId": format!("replace{}", kind.kind), "parameters": base_params, "requestBody": body, "responses": responses("200", schema.clone()) },
            "delete": { "operationId": format!("delete{}", kind.kind), "parameters": delete_params, "responses": responses("200", schema.clone()) }
        }),
    );
    paths.insert(
        format!("{collection}/{{name}}/status"),
        json!({
            "put": { "operationId": format!("replace{}Status", kind.kind), "parameters": base_params, "requestBody": body, "responses": responses("200", schema) }
        }),
    );
    if kind.namespaced {
        paths.insert(
            format!("/apis/wisp.dev/v1/{}", kind.plural),
            json!({ "get": { "operationId": format!("list{}AllNamespaces", kind.kind), "parameters": list_params[1..].to_vec(), "responses": responses("200", list_schema) } }),
        );
    }
}

/// Build the whole document.
pub fn document() -> Value {
    let mut generator = schemars::generate::SchemaSettings::openapi3().into_generator();
    let mut schemas = Map::new();
    for kind in KINDS {
        let schema = (kind.schema)(&mut generator);
        schemas.insert(kind.kind.to_owned(), schema.to_value());
    }
    let status = generator.subschema_for::<wisp_api::Status>();
    for (name, def) in generator.take_definitions(true) {
        schemas.entry(name).or_insert(def);
    }
    schemas.entry("Status".to_owned()).or_insert(status.to_value());
    let mut paths = Map::new();
    for kind in KINDS {
        kind_paths(kind, &mut paths);
    }
    let status_responses = |ok: &str, description: &str, schema: Value| {
        let mut r = responses(ok, schema);
        if let Some(o) = r.get_mut(ok) {
            o["description"] = json!(description);
        }
        r
    };
    let blob_param = [param("digest", "path", "sha256:<64 hex digits>")];
    let mut blob_get = status_responses("200", "the blob", json!({}));
    blob_get["200"] = json!({ "description": "the blob", "content": { "application/octet-stream": {} } });
    let mut blob_put = status_responses("201", "stored", json!({ "type": "object" }));
    blob_put["200"] = json!({ "description": "already present", "content": { "application/json": { "schema": { "type": "object" } } } });
    paths.insert(
        "/blobs/{digest}".into(),
        json!({
            "get": { "operationId": "getBlob", "parameters": blob_param, "responses": blob_get },
            "head": { "operationId": "headBlob", "parameters": blob_param, "responses": blob_get },
            "put": { "operationId": "putBlob", "parameters": blob_param,
                     "requestBody": { "content": { "application/octet-stream": { "schema": { "type": "string", "format": "binary" } } } },
                     "responses": blob_put }
        }),
    );
    let token_info = json!({ "type": "object", "properties": {
        "id": { "type": "string" }, "kind": { "type": "string" }, "namespace": { "type": "string" },
        "node": { "type": "string" }, "createdAt": { "type": "string" }, "expiresAt": { "type": "string" } } });
    let mut issued = token_info.clone();
    issued["properties"]["token"] = json!({ "type": "string" });
    paths.insert(
        "/apis/wisp.dev/v1/tokens".into(),
        json!({
            "post": { "operationId": "createToken",
                "requestBody": { "required": true, "content": { "application/json": { "schema": { "type": "object", "additionalProperties": false, "properties": {
                    "namespace": { "type": "string", "description": "a token confined to this namespace" },
                    "node": { "type": "string", "description": "a node credential for this node" },
                    "ttlSeconds": { "type": "integer", "minimum": 1, "description": "expire after this many seconds" } } } } } },
                "responses": status_responses("201", "the new token (shown once)", issued) },
            "get": { "operationId": "listTokens",
                "responses": status_responses("200", "every stored token (never the tokens themselves)",
                    json!({ "type": "object", "properties": { "items": { "type": "array", "items": token_info } } })) }
        }),
    );
    paths.insert(
        "/apis/wisp.dev/v1/tokens/{id}".into(),
        json!({ "delete": { "operationId": "revokeToken",
            "parameters": [param("id", "path", "a token id from listTokens (at least 8 hex digits)")],
            "responses": status_responses("200", "revoked", token_info) } }),
    );
    paths.insert(
        "/apis/wisp.dev/v1/whoami".into(),
        json!({ "get": { "operationId": "whoAmI", "responses": status_responses("200", "who the token speaks for",
            json!({ "type": "object", "properties": { "kind": { "type": "string" }, "namespace": { "type": "string" }, "node": { "type": "string" } } })) } }),
    );
    json!({
        "openapi": "3.0.3",
        "info": { "title": "Wisp API", "version": wisp_api::VERSION },
        "components": {
            "schemas": schemas,
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } }
        },
        "security": [ { "bearer": [] } ],
        "paths": paths
    })
}
