//! `wisp-runtime`: the machinery every Wisp control loop is built from.
//!
//! Owns the path from a watch to a reconcile: [`watcher_stream`] (a resumable watch from
//! `wisp-client` as a stream) → [`reflector()`] (a read-only, watch-fed cache of objects;
//! [`Informers`] share one per kind per process) →
//! [`Controller`] (a level-triggered reconcile loop with per-object exclusivity, coalescing,
//! bounded concurrency, per-object exponential backoff and periodic resync). The serving
//! loop every Wisp HTTP server shares is `wisp-http`'s.
//!
//! It must not talk to the store: everything goes through the Wisp API via `wisp-client`.
//! Every task it starts honours a `CancellationToken` and lives in a `JoinSet`.

pub mod controller;
pub mod events;
pub mod reflector;
pub mod runner;
pub mod shared;

pub use controller::{Config, Controller};
pub use events::{Recorder, RecorderConfig, RecorderTask, recording};
pub use reflector::{ObjectRef, Store, Writer, reflector, watcher_stream};
pub use runner::{Action, Outcome, RunnerConfig};
pub use shared::{Informers, Shared};
