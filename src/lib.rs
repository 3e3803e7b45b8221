//! # isola — a sandboxed JavaScript plugin runtime
//!
//! isola runs untrusted JavaScript plugins, each in its own V8 isolate on its own thread, with
//! a memory budget, a time limit per call, and nothing to reach but the host API the embedder
//! whitelisted.
//!
//! Three nouns, each with one job:
//! - [`Engine`]: shared configuration — the [`HostApi`] plugins see and default [`Limits`];
//! - [`PluginHandle`]: one running plugin, cheap to clone, callable from any thread;
//! - [`Manager`]: the set of plugins — discovery, listing, reload, unload, shutdown.
//!
//! ```no_run
//! use isola::{Engine, HostApi, Manager};
//!
//! let host = HostApi::new()
//!     .value("config", serde_json::json!({ "version": "1.0.0" }))
//!     .func("log", |(msg,): (String,)| { println!("{msg}"); Ok(()) });
//! let manager = Manager::new(Engine::new(host));
//! let greeter = manager.load("plugins/greeter")?;
//! let out: String = greeter.call_blocking("greet", ("Ada",))?;
//! assert_eq!(out, "Hello, Ada! App version: 1.0.0");
//! # Ok::<(), isola::Error>(())
//! ```
#![warn(missing_docs)]

mod dispatch;
mod engine;
mod error;
mod events;
mod handle;
mod host;
mod manager;
mod manifest;
mod permissions;
mod runtime;
mod source;
mod stats;
mod storage;
mod watch;
mod worker;

pub use dispatch::{ChainReport, CommandInfo, Delivery, EmitReport, Outcome};
pub use engine::{
    DEFAULT_CALL_TIMEOUT, DEFAULT_HEAP_LIMIT_MB, DEFAULT_LOAD_TIMEOUT, DEFAULT_MAILBOX_CAPACITY, Engine, EngineBuilder,
    Limits,
};
pub use error::{Error, ErrorCode, JsErrorInfo, Result};
pub use events::LifecycleEvent;
pub use handle::{CallOptions, PluginHandle, PluginStatus};
pub use host::{HostApi, current_plugin};
pub use manager::{LoadReport, Manager, PluginInfo};
pub use manifest::{
    CommandSpec, Diagnostic, Manifest, ManifestLimits, SUPPORTED_API_VERSION, Severity, Subscription, validate_id,
};
pub use permissions::{Permissions, Policy, STORAGE};
pub use source::{PluginSource, SourceKind, discover, is_plugin_path};
pub use stats::PluginStats;
pub use storage::{
    MAX_KEY_BYTES, MemoryStorage, RedbStorage, Storage, StorageBackend, StorageError, StorageQuota, Usage,
};
