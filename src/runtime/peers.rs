//! [`Peers`]: what a plugin's isolate may ask of the plugins around it.
//!
//! Why a trait defined down here: `host.plugins.call` and `host.events.emit` reach other
//! plugins, which the runtime must not know how to find (that is the manager's business). The
//! runtime states what it needs in these two methods; the layer that owns the plugin table
//! implements them. So the runtime can be created, tested, or run in another process with any
//! implementation, the manager's or none ([`NoPeers`]).

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use serde_json::Value;

use crate::call::CallContext;
use crate::error::{Error, ErrorCode, Result};

/// The answer to a plugin call, once it comes.
pub(crate) type Answer = Pin<Box<dyn Future<Output = Result<Value>> + Send>>;

/// The plugins an isolate can reach.
pub(crate) trait Peers: Send + Sync {
    /// Queues `hook` of plugin `to` on behalf of plugin `from` (whose callers are in `ctx`),
    /// to finish within `timeout`. Refuses at once with `CALL_CYCLE` a call to a plugin that is
    /// itself waiting, through any request, on `from`. The waiting ends when the answer (or
    /// the future) is dropped.
    fn call(
        &self,
        from: &str,
        to: &str,
        hook: &str,
        args: Value,
        timeout: Duration,
        ctx: CallContext,
    ) -> Result<Answer>;

    /// Notifies `event`'s subscribers in the background, `depth` events deep; returns how many
    /// there are. Refuses with `BUSY` when too many deliveries are already in flight.
    fn emit(&self, event: &str, payload: Value, depth: u32) -> Result<usize>;
}

/// No other plugins: what an isolate built alone sees (the startup snapshot, tests).
pub(crate) struct NoPeers;

impl Peers for NoPeers {
    fn call(&self, _: &str, to: &str, _: &str, _: Value, _: Duration, _: CallContext) -> Result<Answer> {
        Err(Error::new(ErrorCode::PluginNotFound, format!("no plugin `{to}` is loaded")))
    }

    fn emit(&self, _: &str, _: Value, _: u32) -> Result<usize> {
        Ok(0)
    }
}
