//! `wisp-api`: the Wisp resource model.
//!
//! Owns the types of every kind (`wisp.dev/v1`: Namespace, Node, Lease, Pod, ReplicaSet,
//! Deployment, Service, Endpoints, Route, Function, ConfigMap, Secret, Job, ResourceQuota,
//! LimitRange), their strict
//! decoding and validation with field paths (`spec.containers[0].image`), label selectors,
//! resource quantities, the `Status` error body, and the list / watch / dynamic-object
//! envelopes the API speaks.
//!
//! It must not do I/O of any kind (no network, files, clocks or randomness) and must not
//! depend on any other Wisp crate: every other crate depends on it.

pub mod envelope;
pub mod ingress;
pub mod kinds;
pub mod meta;
pub mod quantity;
pub mod resources;
pub mod selector;
pub mod status;
pub mod usage;
pub mod validation;

pub use envelope::{DynamicObject, EventType, List, WatchEvent};
pub use ingress::{IngressServiceStats, LATENCY_BOUNDS_MS, latency_bucket, latency_quantile};
pub use kinds::{KINDS, KindInfo, Resource, kind_by_name, kind_by_plural};
pub use meta::{Condition, ListMeta, ObjectMeta, OwnerReference, TRACEPARENT_ANNOTATION, is_traceparent};
pub use quantity::{Quantity, QuantityError, QuantityFormat};
pub use resources::*;
pub use selector::{LabelSelector, LabelSelectorRequirement, SelectorError, SelectorOperator};
pub use status::{Status, StatusCause, StatusDetails};
pub use validation::{FieldError, NOT_SUPPORTED, ValidationErrors};

pub const GROUP: &str = "wisp.dev";
pub const VERSION: &str = "v1";
pub const API_VERSION: &str = "wisp.dev/v1";
