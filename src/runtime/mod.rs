//! Everything that touches V8: the isolate, its memory budget, the deadline watchdog, the
//! module loader and the ops plugins can call.
//!
//! The runtime knows nothing of the manager: what it needs from the world around an isolate
//! (other plugins, events) it asks through its own [`peers::Peers`] trait.

pub(crate) mod inspector;
pub(crate) mod isolate;
pub(crate) mod loader;
pub(crate) mod memory;
pub(crate) mod ops;
pub(crate) mod peers;
pub(crate) mod snapshot;
pub(crate) mod snapshot_build;
pub(crate) mod throw;
pub(crate) mod values;
pub(crate) mod wasm;
pub(crate) mod watchdog;
pub(crate) mod web;
