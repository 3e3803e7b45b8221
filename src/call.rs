//! The messages a plugin's mailbox carries: what a [`PluginHandle`](crate::PluginHandle) sends
//! and the plugin's thread answers.
//!
//! Why a module of its own: both ends of the mailbox (the handle above, the worker thread and
//! the runtime below) speak this protocol, so it sits under both and neither imports the other
//! to learn it. Moving a plugin into another process later means carrying these messages over
//! a pipe instead of a channel.

use std::time::Duration;

use crossbeam_channel::Receiver;
use serde_json::Value;

use crate::error::Result;

/// Hook a plugin may export to receive state when it loads (`onLoad(state)`; `state` is what
/// the previous version's `onUnload()` returned, or `null`).
pub(crate) const ON_LOAD: &str = "onLoad";
/// Hook a plugin may export to hand state to its next version on reload.
pub(crate) const ON_UNLOAD: &str = "onUnload";

/// On whose behalf a call runs: the plugins waiting on it (for `host.plugins.call`) and how
/// many event hops led to it (for `host.events.emit`). Empty for calls from the host.
#[derive(Debug, Clone, Default)]
pub(crate) struct CallContext {
    /// Plugins up the call chain, outermost first.
    pub chain: Vec<String>,
    /// Events emitted by plugins that led here.
    pub event_depth: u32,
}

/// How an answer travels back to the caller.
pub(crate) enum Reply {
    Async(tokio::sync::oneshot::Sender<Result<Value>>),
    Blocking(crossbeam_channel::Sender<Result<Value>>),
    /// Run on the plugin's thread with the answer (a process worker writes it to its host
    /// from there, without waking another thread).
    Func(Box<dyn FnOnce(Result<Value>) + Send>),
}

impl Reply {
    pub(crate) fn send(self, r: Result<Value>) {
        // A caller that went away (dropped its future) no longer wants the answer.
        let _ = match self {
            Reply::Async(tx) => tx.send(r).map_err(drop),
            Reply::Blocking(tx) => tx.send(r).map_err(drop),
            Reply::Func(f) => {
                f(r);
                Ok(())
            }
        };
    }
}

/// A message to a plugin's thread.
pub(crate) enum Request {
    Call {
        hook: String,
        args: Value,
        timeout: Option<Duration>,
        ctx: CallContext,
        reply: Reply,
    },
    /// Run `onLoad(state)` before anything queued after this, waiting for the state to arrive
    /// (on reload it comes from the old version's `onUnload`, which may still be running). A
    /// failure is reported as a lifecycle event: nobody waits for the answer.
    Init {
        state: Receiver<Value>,
    },
    Stop,
}
