//! Reading manifests: files, directories or stdin; multi-document YAML or JSON.

use std::io::Read;
use std::path::Path;

use anyhow::{Context, bail};
use serde_json::Value;

/// One document with where it came from, for error messages.
pub struct Document {
    pub origin: String,
    pub value: Value,
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
                });
            }
            continue;
        }
        docs.push(Document {
            origin: format!("{origin} (document {})", i + 1),
            value,
        });
    }
    Ok(docs)
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
                let text =
                    std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?;
                docs.extend(parse(&p.display().to_string(), &text)?);
            }
        } else {
            let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {source}"))?;
            docs.extend(parse(source, &text)?);
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
    fn json_list_and_scalar_documents() {
        assert_eq!(
            parse("j", r#"[{"kind":"A"},{"kind":"B"}]"#).expect("json").len(),
            2
        );
        assert!(parse("s", "just a string\n").is_err());
    }
}
