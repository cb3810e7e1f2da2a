//! Reading manifests: files, directories or stdin; multi-document YAML or JSON.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde_json::Value;

/// One document with where it came from, for error messages.
pub struct Document {
    pub origin: String,
    pub value: Value,
    /// Directory that relative paths in the document (component files) are relative to.
    pub base: PathBuf,
}

fn parse(origin: &str, text: &str) -> anyhow::Result<Vec<Document>> {
    let trimmed = text.trim_start();
    let values: Vec<Value> = if trimmed.starts_with('{') || trimmed.starts_with('[') {
        let v: Value = serde_json::from_str(text).with_context(|| format!("{origin}: invalid JSON"))?;
        match v {
            Value::Array(items) => items,
            other => vec![other],
        }
    } else {
        serde_saphyr::from_multiple::<Value>(text).with_context(|| format!("{origin}: invalid YAML"))?
    };
    let mut docs = Vec::new();
    for (i, value) in values.into_iter().enumerate() {
        if value.is_null() {
            continue; // an empty document between `---` separators
        }
        if !value.is_object() {
            bail!(
                "{origin}: document {} is not a mapping (an object with apiVersion, kind, metadata)",
                i + 1
            );
        }
        // `kind: List` documents carry their objects in `items`.
        if value.get("kind").and_then(Value::as_str) == Some("List") {
            for (j, item) in value
                .get("items")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .enumerate()
            {
                docs.push(Document {
                    origin: format!("{origin} (document {}, item {})", i + 1, j + 1),
                    value: item,
                    base: PathBuf::from("."),
                });
            }
            continue;
        }
        docs.push(Document {
            origin: format!("{origin} (document {})", i + 1),
            value,
            base: PathBuf::from("."),
        });
    }
    Ok(docs)
}

/// The documents of the file at `path`, relative paths in them resolved from its directory.
fn parse_file(path: &Path) -> anyhow::Result<Vec<Document>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let base = path
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let mut docs = parse(&path.display().to_string(), &text)?;
    for d in &mut docs {
        d.base.clone_from(&base);
    }
    Ok(docs)
}

/// Every `wasm:` value of `value` that names a component file (`*.wasm`, not a `sha256:`
/// digest), as a mutable reference, for `apply` to upload and replace by its digest.
pub fn component_files(value: &mut Value) -> Vec<&mut Value> {
    let mut out = Vec::new();
    match value {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                match v {
                    Value::String(s) if k == "wasm" && !s.starts_with("sha256:") && s.ends_with(".wasm") => {
                        out.push(v);
                    }
                    _ => out.extend(component_files(v)),
                }
            }
        }
        Value::Array(items) => {
            for v in items {
                out.extend(component_files(v));
            }
        }
        _ => {}
    }
    out
}

/// Read every document named by `-f` arguments.
pub fn read_all(sources: &[String]) -> anyhow::Result<Vec<Document>> {
    let mut docs = Vec::new();
    for source in sources {
        if source == "-" {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("cannot read standard input")?;
            docs.extend(parse("<stdin>", &text)?);
            continue;
        }
        let path = Path::new(source);
        if path.is_dir() {
            let mut entries: Vec<_> = std::fs::read_dir(path)
                .with_context(|| format!("cannot read directory {source}"))?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.extension()
                        .is_some_and(|x| x == "yaml" || x == "yml" || x == "json")
                })
                .collect();
            entries.sort();
            for p in entries {
                docs.extend(parse_file(&p)?);
            }
        } else {
            docs.extend(parse_file(path)?);
        }
    }
    Ok(docs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_document_yaml_and_empty_documents() {
        let docs = parse("t", "---\napiVersion: wisp.dev/v1\nkind: Namespace\nmetadata: {name: a}\n---\n---\nkind: Namespace\nmetadata:\n  name: b\n")
            .expect("parses");
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1].value["metadata"]["name"], "b");
    }

    #[test]
    fn malformed_yaml_names_the_file() {
        let err = parse("bad.yaml", "kind: [unclosed\n").err().expect("must fail");
        assert!(format!("{err:#}").contains("bad.yaml"), "{err:#}");
    }

    #[test]
    fn component_files_are_found_at_any_depth_and_digests_are_left_alone() {
        let mut v: Value = serde_json::json!({"spec": {"template": {"spec": {"containers": [
            {"name": "a", "wasm": "./a.wasm"},
            {"name": "b", "wasm": "sha256:00"},
            {"name": "c", "image": "x.wasm"}
        ]}}}});
        let found: Vec<String> = component_files(&mut v)
            .into_iter()
            .map(|v| v.as_str().unwrap_or_default().to_owned())
            .collect();
        assert_eq!(found, ["./a.wasm"]);
    }

    #[test]
    fn json_list_and_scalar_documents() {
        assert_eq!(
            parse("j", r#"[{"kind":"A"},{"kind":"B"}]"#).expect("json").len(),
            2
        );
        assert!(parse("s", "just a string\n").is_err());
    }
}
