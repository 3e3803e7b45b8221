//! # isola — a sandboxed JavaScript plugin runtime
//!
//! isola runs untrusted JavaScript plugins, each in its own V8 isolate on its own thread, with
//! a memory budget, a time limit per call, and nothing to reach but the host API the embedder
//! whitelisted.
//!
//! Three nouns, each with one job, at the crate root:
//! - [`Engine`]: shared configuration — the [`HostApi`] plugins see and default [`Limits`];
//! - [`PluginHandle`]: one running plugin, cheap to clone, callable from any thread;
//! - [`Manager`]: the set of plugins — discovery, listing, reload, unload, events, shutdown.
//!
//! Everything else lives in a module named for its concern: [`manifest`] (`plugin.json`),
//! [`permissions`], [`storage`], [`events`] (lifecycle events), [`dispatch`] (events, chains
//! and commands between plugins), [`source`] (finding plugins on disk), [`stats`], [`error`].
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
//!
//! ## Features
//! - `cli` (default): the `isola` command-line tool. A host that only embeds the library can
//!   turn it off (`isola = { version = "…", default-features = false }`) and skip compiling
//!   clap and tracing-subscriber.
//!
//! ## Layers
//! Modules depend downwards only (a test keeps it so): `error` at the bottom; the plugin's
//! description and configuration (`manifest`, `source`, `engine`, `config`); the V8 layer
//! (`runtime/`) and the plugin's thread (`worker`), which reach other plugins only through the
//! runtime's own `Peers` trait; the handle; and on top the manager with its table (`registry`),
//! event delivery (`dispatch`), wait-for graph (`waits`), watcher and `links` (its `Peers`).
#![warn(missing_docs)]

mod async_spin;
mod call;
mod cancel;
mod config;
pub mod dispatch;
pub mod engine;
pub mod error;
pub mod events;
mod handle;
pub mod host;
mod isolation;
mod links;
pub mod manager;
pub mod manifest;
mod memory_guard;
mod pace;
pub mod permissions;
mod pool;
pub mod process;
mod registry;
mod runtime;
pub mod source;
pub mod stats;
pub mod storage;
pub mod typescript;
pub mod typings;
mod waits;
mod watch;
mod worker;

pub use cancel::CancelToken;
pub use engine::{Engine, EngineBuilder, Limits};
pub use error::{Error, ErrorCode, Result};
pub use handle::{CallOptions, PluginHandle, PluginStatus, StatusChanges};
pub use host::{HostApi, HostError, call_deadline, current_plugin};
pub use manager::Manager;
pub use runtime::inspector::InspectorSession;
