//! The seventeen kinds and their spec/status types, each with field-path validation.

use std::borrow::Cow;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::validation::FieldError;

pub mod cluster;
pub mod config;
pub mod container;
pub mod events;
pub mod function;
pub mod networking;
pub mod pod;
pub mod policy;
pub mod workloads;

pub use cluster::*;
pub use config::*;
pub use container::*;
pub use events::*;
pub use function::*;
pub use networking::*;
pub use pod::*;
pub use policy::*;
pub use workloads::*;

/// Transport protocol of a port.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

/// A count or a percentage string (`3`, `"25%"`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
#[serde(untagged)]
pub enum IntOrString {
    Int(i32),
    String(String),
}

impl Default for IntOrString {
    fn default() -> Self {
        Self::Int(0)
    }
}

impl IntOrString {
    /// Resolves against `total`: a count as is, a percentage of `total` rounded up when
    /// `round_up`, down otherwise. `None` for a malformed string.
    pub fn resolve(&self, total: i32, round_up: bool) -> Option<i32> {
        match self {
            Self::Int(n) => Some(*n),
            Self::String(s) => {
                let pct: i64 = s.strip_suffix('%')?.parse().ok()?;
                let scaled = pct * i64::from(total);
                let v = if round_up {
                    (scaled + 99).div_euclid(100)
                } else {
                    scaled.div_euclid(100)
                };
                i32::try_from(v).ok()
            }
        }
    }

    fn is_zero(&self) -> bool {
        match self {
            Self::Int(n) => *n == 0,
            Self::String(s) => s.strip_suffix('%').and_then(|n| n.parse::<i64>().ok()) == Some(0),
        }
    }

    fn validate_non_negative(&self, path: &str) -> Option<FieldError> {
        match self {
            Self::Int(n) if *n < 0 => Some(FieldError::new(path, "must be non-negative")),
            Self::Int(_) => None,
            Self::String(s) => match s.strip_suffix('%').map(str::parse::<u32>) {
                Some(Ok(_)) => None,
                _ => Some(FieldError::new(
                    path,
                    format!("invalid value {s:?}: must be an integer or a percentage like \"25%\""),
                )),
            },
        }
    }
}

impl JsonSchema for IntOrString {
    fn schema_name() -> Cow<'static, str> {
        "IntOrString".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "An integer or a percentage string such as \"25%\".",
            "anyOf": [{"type": "integer", "format": "int32"}, {"type": "string"}]
        })
    }
}
