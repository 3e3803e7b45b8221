//! Everything that touches V8: the isolate, its memory budget, the deadline watchdog, the
//! module loader and the ops plugins can call.

pub(crate) mod isolate;
pub(crate) mod loader;
pub(crate) mod memory;
pub(crate) mod ops;
pub(crate) mod snapshot;
pub(crate) mod watchdog;
