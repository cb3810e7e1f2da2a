//! `docs/wisp-toml.md` against the parser: its examples parse, and its table lists exactly the
//! keys the parser knows (read from the parser's own "expected one of" for each section).

use std::collections::BTreeSet;

use super::*;

fn doc() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/wisp-toml.md"))
        .expect("docs/wisp-toml.md")
}

fn toml_blocks(text: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        match (&mut current, line.trim_start().strip_prefix("```")) {
            (None, Some("toml")) => current = Some(String::new()),
            (Some(_), Some(_)) => blocks.extend(current.take()),
            (Some(b), None) => {
                b.push_str(line);
                b.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

/// The keys in the first column of the table (`function.name`, `env.<NAME>`, `files[].path`).
fn documented(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split_once('`').map(|(k, _)| k.to_owned()))
        .collect()
}

/// The keys the parser accepts in a section: what it says it expected for an unknown one.
fn known(prefix: &str, mut text: String, at: &str) -> BTreeSet<String> {
    text = text.replacen(at, &format!("{at}\nzzz-unknown = 1"), 1);
    let err = parse("wisp.toml", &text).expect_err("an unknown key is refused");
    let message = &err.problems[0].message;
    let list = message
        .split_once("expected one of ")
        .or_else(|| message.split_once("expected "))
        .map_or("", |(_, l)| l);
    list.split(", ")
        .flat_map(|k| k.split(" or "))
        .map(|k| k.trim_matches(|c| c == '`' || c == ' '))
        .filter(|k| !k.is_empty())
        .map(|k| format!("{prefix}{k}"))
        .collect()
}

#[test]
fn the_examples_parse_and_the_table_lists_every_key_the_parser_knows() {
    let text = doc();
    let blocks = toml_blocks(&text);
    assert!(blocks.len() >= 2, "the examples are gone");
    for b in &blocks {
        parse("docs/wisp-toml.md", b).unwrap_or_else(|e| panic!("a documented example is refused: {e}\n{b}"));
    }
    let full = blocks[0].clone();
    let mut keys = BTreeSet::new();
    // Top level: the unknown key before the first section.
    keys.extend(known("", full.clone(), "version = 1").into_iter().filter(|k| {
        !matches!(
            k.as_str(),
            "function" | "build" | "route" | "scaling" | "job" | "resources" | "env" | "files"
        )
    }));
    for (section, header) in [
        ("function.", "[function]"),
        ("build.", "[build]"),
        ("route.", "[route]"),
        ("scaling.", "[scaling]"),
        ("resources.", "[resources]"),
        ("files[].", "[[files]]"),
    ] {
        keys.extend(known(section, full.clone(), header));
    }
    keys.extend(known("job.", blocks[1].clone(), "[job]"));
    keys.insert("env.<NAME>".into());
    assert_eq!(
        documented(&text),
        keys,
        "docs/wisp-toml.md's table and the parser disagree"
    );
}
