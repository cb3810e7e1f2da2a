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
        ("401", "missing or invalid token"),
        ("403", "token may not access this namespace"),
        ("404", "not found"),
        ("409", "already exists or stale resourceVersion"),
        ("413", "body over the limit"),
        ("422", "validation failed; causes name each field"),
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
    paths.insert(
        "/blobs/{digest}".into(),
        json!({
            "get": { "operationId": "getBlob", "parameters": [param("digest", "path", "sha256:<hex>")],
                     "responses": { "200": { "description": "the blob", "content": { "application/octet-stream": {} } }, "404": { "description": "no such blob" } } },
            "put": { "operationId": "putBlob", "parameters": [param("digest", "path", "sha256:<hex>")],
                     "requestBody": { "content": { "application/octet-stream": {} } },
                     "responses": { "201": { "description": "stored" }, "200": { "description": "already present" }, "400": { "description": "digest mismatch" } } }
        }),
    );
    paths.insert(
        "/apis/wisp.dev/v1/tokens".into(),
        json!({ "post": { "operationId": "createToken",
            "requestBody": { "content": { "application/json": { "schema": { "type": "object", "properties": { "namespace": { "type": "string" } } } } } },
            "responses": { "201": { "description": "the new token", "content": { "application/json": { "schema": { "type": "object", "properties": { "token": { "type": "string" }, "namespace": { "type": "string" } } } } } } } } }),
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
