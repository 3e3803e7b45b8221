//! How a plugin's isolate reaches the other plugins of its manager: the implementation of the
//! runtime's [`Peers`] over the plugin table, the wait-for graph and background delivery.
//!
//! It holds the table weakly: plugin threads keep their `Peers` for as long as they run, and a
//! plugin thread must never be what keeps a dropped manager's table alive.

use std::sync::{Arc, Weak};
use std::time::Duration;

use serde_json::Value;

use crate::call::CallContext;
use crate::dispatch::{Background, notify_in_background};
use crate::error::{Error, ErrorCode, Result};
use crate::registry::Registry;
use crate::runtime::peers::{Answer, Peers};
use crate::waits::WaitGraph;

/// The other plugins, as one plugin's isolate sees them.
pub(crate) struct Links {
    pub registry: Weak<Registry>,
    pub waits: Arc<WaitGraph>,
    pub background: Weak<Background>,
}

fn gone() -> Error {
    Error::new(ErrorCode::ShutDown, "the manager has shut down")
}

impl Peers for Links {
    fn call(
        &self,
        from: &str,
        to: &str,
        hook: &str,
        args: Value,
        timeout: Duration,
        ctx: CallContext,
    ) -> Result<Answer> {
        let registry = self.registry.upgrade().ok_or_else(gone)?;
        let handle = registry.handle(to)?;
        // Chains from other requests can close a cycle too (X→A→B while Y→B→A): refuse a call
        // to a plugin that is itself, through any request, waiting on this one.
        let waiting = self.waits.wait_on(from, to).map_err(|path| {
            Error::new(
                ErrorCode::CallCycle,
                format!("{from} → {to} would deadlock: {path} is already waiting; re-entrant calls are refused"),
            )
        })?;
        let cancel = ctx.cancel.clone();
        let answer = handle.call_in(hook, args, Some(timeout), ctx, cancel);
        Ok(Box::pin(async move {
            let r = answer.await;
            drop(waiting);
            r
        }))
    }

    fn emit(&self, event: &str, payload: Value, depth: u32) -> Result<usize> {
        let registry = self.registry.upgrade().ok_or_else(gone)?;
        let background = self.background.upgrade().ok_or_else(gone)?;
        notify_in_background(&registry, &background, event, payload, depth)
    }
}
