//! Label selectors: structured form, matching, and the kubectl string syntax
//! (`a=b,c==d,e!=f,g in (x,y),h notin (z),i,!j`).

use std::collections::BTreeMap;
use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::validation::{
    FieldError, child, index, label_key_problem, label_value_problem, validate_label_key,
    validate_label_value, validate_labels,
};

/// Selects objects by labels. All `matchLabels` and all `matchExpressions` must hold; an
/// empty selector matches everything.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelectorRequirement {
    #[serde(default)]
    pub key: String,
    #[serde(default)]
    pub operator: SelectorOperator,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum SelectorOperator {
    /// The label is present and its value is one of `values`.
    #[default]
    In,
    /// The label is absent, or its value is none of `values`.
    NotIn,
    Exists,
    DoesNotExist,
}

/// A selector string that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid label selector {selector:?}: {message}")]
pub struct SelectorError {
    pub selector: String,
    pub message: String,
}

impl LabelSelectorRequirement {
    pub fn new(key: impl Into<String>, operator: SelectorOperator, values: Vec<String>) -> Self {
        Self {
            key: key.into(),
            operator,
            values,
        }
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        match self.operator {
            SelectorOperator::In => value.is_some_and(|v| self.values.contains(v)),
            SelectorOperator::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            SelectorOperator::Exists => value.is_some(),
            SelectorOperator::DoesNotExist => value.is_none(),
        }
    }
}

impl LabelSelector {
    /// A selector of equality requirements only.
    pub fn from_labels(labels: BTreeMap<String, String>) -> Self {
        Self {
            match_labels: labels,
            match_expressions: Vec::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| r.matches(labels))
    }

    /// Field errors of this selector; `path` is where it sits (`spec.selector`).
    pub fn validate(&self, path: &str) -> Vec<FieldError> {
        let mut errs = validate_labels(&self.match_labels, &child(path, "matchLabels"));
        let exprs = child(path, "matchExpressions");
        for (i, r) in self.match_expressions.iter().enumerate() {
            let p = index(&exprs, i);
            if r.key.is_empty() {
                errs.push(FieldError::required(child(&p, "key")));
            } else {
                errs.extend(validate_label_key(&r.key, &child(&p, "key")));
            }
            let vp = child(&p, "values");
            match r.operator {
                SelectorOperator::In | SelectorOperator::NotIn => {
                    if r.values.is_empty() {
                        errs.push(FieldError::new(
                            &vp,
                            "must be non-empty when operator is In or NotIn",
                        ));
                    }
                    for (j, v) in r.values.iter().enumerate() {
                        errs.extend(validate_label_value(v, &index(&vp, j)));
                    }
                }
                SelectorOperator::Exists | SelectorOperator::DoesNotExist => {
                    if !r.values.is_empty() {
                        errs.push(FieldError::new(
                            &vp,
                            "must be empty when operator is Exists or DoesNotExist",
                        ));
                    }
                }
            }
        }
        errs
    }

    /// Parses the kubectl selector syntax. An empty string is the empty selector.
    /// `k!=v` becomes `NotIn [v]` (it also matches objects without the label).
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        let err = |message: String| SelectorError {
            selector: s.to_owned(),
            message,
        };
        let mut sel = Self::default();
        if s.trim().is_empty() {
            return Ok(sel);
        }
        let mut terms = Vec::new();
        let (mut depth, mut start) = (0u32, 0usize);
        for (i, c) in s.char_indices() {
            match c {
                '(' if depth == 0 => depth = 1,
                '(' => return Err(err("nested '('".into())),
                ')' if depth == 1 => depth = 0,
                ')' => return Err(err("unbalanced ')'".into())),
                ',' if depth == 0 => {
                    terms.push(&s[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        if depth != 0 {
            return Err(err("missing ')'".into()));
        }
        terms.push(&s[start..]);
        for term in terms {
            parse_term(term.trim(), &mut sel).map_err(err)?;
        }
        Ok(sel)
    }
}

fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("missing label key".into());
    }
    label_key_problem(key).map_or(Ok(()), Err)
}

fn check_value(value: &str) -> Result<String, String> {
    label_value_problem(value).map_or(Ok(value.to_owned()), Err)
}

fn parse_term(term: &str, sel: &mut LabelSelector) -> Result<(), String> {
    if term.is_empty() {
        return Err("empty requirement".into());
    }
    if let Some(key) = term.strip_prefix('!') {
        let key = key.trim();
        check_key(key)?;
        sel.match_expressions.push(LabelSelectorRequirement::new(
            key,
            SelectorOperator::DoesNotExist,
            vec![],
        ));
        return Ok(());
    }
    let key_len = term
        .find(|c: char| c.is_whitespace() || matches!(c, '=' | '!' | '(' | ')'))
        .unwrap_or(term.len());
    let (key, rest) = term.split_at(key_len);
    check_key(key)?;
    let rest = rest.trim_start();
    if rest.is_empty() {
        sel.match_expressions.push(LabelSelectorRequirement::new(
            key,
            SelectorOperator::Exists,
            vec![],
        ));
        return Ok(());
    }
    if let Some(value) = rest.strip_prefix("!=") {
        let value = check_value(value.trim())?;
        sel.match_expressions.push(LabelSelectorRequirement::new(
            key,
            SelectorOperator::NotIn,
            vec![value],
        ));
        return Ok(());
    }
    if let Some(value) = rest.strip_prefix("==").or_else(|| rest.strip_prefix('=')) {
        let value = check_value(value.trim())?;
        match sel.match_labels.get(key) {
            Some(existing) if *existing != value => {
                sel.match_expressions.push(LabelSelectorRequirement::new(
                    key,
                    SelectorOperator::In,
                    vec![value],
                ));
            }
            _ => {
                sel.match_labels.insert(key.to_owned(), value);
            }
        }
        return Ok(());
    }
    let word_len = rest
        .find(|c: char| !c.is_ascii_alphabetic())
        .unwrap_or(rest.len());
    let (word, list) = rest.split_at(word_len);
    let operator = match word {
        "in" => SelectorOperator::In,
        "notin" => SelectorOperator::NotIn,
        _ => {
            return Err(format!(
                "after key {key:?} expected one of '=', '==', '!=', 'in', 'notin' or ',' but found {rest:?}"
            ));
        }
    };
    let inner = list
        .trim()
        .strip_prefix('(')
        .and_then(|l| l.strip_suffix(')'))
        .ok_or_else(|| format!("expected a parenthesised value list after {word:?}"))?;
    if inner.trim().is_empty() {
        return Err(format!("{word:?} needs at least one value"));
    }
    let values = inner
        .split(',')
        .map(|v| check_value(v.trim()))
        .collect::<Result<Vec<_>, _>>()?;
    sel.match_expressions
        .push(LabelSelectorRequirement::new(key, operator, values));
    Ok(())
}

/// The kubectl string form; `LabelSelector::parse` reads it back to an equivalent selector.
impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sep = "";
        for (k, v) in &self.match_labels {
            write!(f, "{sep}{k}={v}")?;
            sep = ",";
        }
        for r in &self.match_expressions {
            let k = &r.key;
            match (r.operator, r.values.as_slice()) {
                (SelectorOperator::In, [v]) => write!(f, "{sep}{k}={v}")?,
                (SelectorOperator::NotIn, [v]) => write!(f, "{sep}{k}!={v}")?,
                (SelectorOperator::In, vs) => write!(f, "{sep}{k} in ({})", vs.join(","))?,
                (SelectorOperator::NotIn, vs) => write!(f, "{sep}{k} notin ({})", vs.join(","))?,
                (SelectorOperator::Exists, _) => write!(f, "{sep}{k}")?,
                (SelectorOperator::DoesNotExist, _) => write!(f, "{sep}!{k}")?,
            }
            sep = ",";
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use SelectorOperator::*;
    use proptest::prelude::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn req(key: &str, op: SelectorOperator, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement::new(key, op, values.iter().map(|v| (*v).to_owned()).collect())
    }

    #[test]
    fn parses_full_syntax() {
        let sel = LabelSelector::parse("a=b, c==d,e!=f,g in (x, y),h notin (z),i,!j").ok();
        let want = LabelSelector {
            match_labels: labels(&[("a", "b"), ("c", "d")]),
            match_expressions: vec![
                req("e", NotIn, &["f"]),
                req("g", In, &["x", "y"]),
                req("h", NotIn, &["z"]),
                req("i", Exists, &[]),
                req("j", DoesNotExist, &[]),
            ],
        };
        assert_eq!(sel, Some(want));
        assert_eq!(LabelSelector::parse("  ").ok(), Some(LabelSelector::default()));
        assert_eq!(
            LabelSelector::parse("wisp.dev/fn=hello,app=")
                .ok()
                .map(|s| s.match_labels),
            Some(labels(&[("app", ""), ("wisp.dev/fn", "hello")]))
        );
    }

    #[test]
    fn not_equal_matches_absent_key() {
        let sel = LabelSelector::parse("e!=f").ok().unwrap_or_default();
        assert!(sel.matches(&labels(&[])));
        assert!(sel.matches(&labels(&[("e", "g")])));
        assert!(!sel.matches(&labels(&[("e", "f")])));
    }

    #[test]
    fn parser_errors() {
        for bad in [
            "a=b,",
            ",a",
            "a b",
            "a in x",
            "a in ()",
            "a in (x",
            "a in (x))",
            "a notin (x,(y))",
            "=b",
            "Bad Key=x",
            "a=b c",
            "a=has space",
            "!",
            "a in (x) y",
            "a ~ b",
        ] {
            assert!(LabelSelector::parse(bad).is_err(), "{bad:?} should fail");
        }
        let msg = LabelSelector::parse("a ~ b")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(msg.contains("expected one of"), "{msg}");
    }

    #[test]
    fn validate_reports_paths() {
        let sel = LabelSelector {
            match_labels: labels(&[("ok", "bad value")]),
            match_expressions: vec![req("k", In, &[]), req("", Exists, &["x"])],
        };
        let paths: Vec<String> = sel
            .validate("spec.selector")
            .into_iter()
            .map(|e| e.path)
            .collect();
        assert_eq!(
            paths,
            [
                "spec.selector.matchLabels.ok",
                "spec.selector.matchExpressions[0].values",
                "spec.selector.matchExpressions[1].key",
                "spec.selector.matchExpressions[1].values",
            ]
        );
    }

    const KEYS: &[&str] = &["a", "b", "c", "wisp.dev/x"];
    const VALUES: &[&str] = &["", "1", "2", "v.x"];

    fn key() -> impl Strategy<Value = String> {
        prop::sample::select(KEYS).prop_map(str::to_owned)
    }
    fn value() -> impl Strategy<Value = String> {
        prop::sample::select(VALUES).prop_map(str::to_owned)
    }
    fn label_set() -> impl Strategy<Value = BTreeMap<String, String>> {
        prop::collection::btree_map(key(), value(), 0..4)
    }
    fn requirement() -> impl Strategy<Value = LabelSelectorRequirement> {
        let op = prop::sample::select(&[In, NotIn, Exists, DoesNotExist][..]);
        (key(), op, prop::collection::vec(value(), 1..3)).prop_map(|(k, op, vs)| match op {
            In | NotIn => LabelSelectorRequirement::new(k, op, vs),
            _ => LabelSelectorRequirement::new(k, op, vec![]),
        })
    }
    fn selector() -> impl Strategy<Value = LabelSelector> {
        (label_set(), prop::collection::vec(requirement(), 0..4)).prop_map(
            |(match_labels, match_expressions)| LabelSelector {
                match_labels,
                match_expressions,
            },
        )
    }

    proptest! {
        #[test]
        fn string_form_round_trips(sel in selector(), sets in prop::collection::vec(label_set(), 1..8)) {
            prop_assert!(sel.validate("s").is_empty());
            let text = sel.to_string();
            let parsed = LabelSelector::parse(&text);
            prop_assert!(parsed.is_ok(), "{}: {:?}", text, parsed);
            let parsed = parsed.unwrap_or_default();
            for l in &sets {
                prop_assert_eq!(sel.matches(l), parsed.matches(l), "{} on {:?}", text, l);
            }
        }

        #[test]
        fn in_and_notin_are_complements_when_key_present(
            k in key(), vs in prop::collection::vec(value(), 1..3), l in label_set(), v in value()
        ) {
            let mut l = l;
            l.insert(k.clone(), v);
            let inn = req(&k, In, &vs.iter().map(String::as_str).collect::<Vec<_>>());
            let notin = LabelSelectorRequirement { operator: NotIn, ..inn.clone() };
            prop_assert_ne!(inn.matches(&l), notin.matches(&l));
        }

        #[test]
        fn empty_selector_matches_everything(l in label_set()) {
            prop_assert!(LabelSelector::default().matches(&l));
        }

        #[test]
        fn parse_never_panics(s in "[a-z!=(), ]{0,20}") {
            let _ = LabelSelector::parse(&s);
        }
    }
}
