//! The messages a plugin's mailbox carries: what a [`PluginHandle`](crate::PluginHandle) sends
//! and the plugin's thread answers.
//!
//! Why a module of its own: both ends of the mailbox (the handle above, the worker thread and
//! the runtime below) speak this protocol, so it sits under both and neither imports the other
//! to learn it. Moving a plugin into another process later means carrying these messages over
//! a pipe instead of a channel.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use serde_json::Value;

use crate::cancel::{Abort, CancelToken};
use crate::error::{Error, ErrorCode, Result};

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
    /// Cancelled when the caller's own call ends early (timeout, abort, unload): this call is
    /// then aborted too, transitively along a chain of plugin calls.
    pub cancel: Option<CancelToken>,
    /// When the caller stops waiting: a call still queued then is skipped.
    pub deadline: Option<Instant>,
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
        /// How the caller can abort it (`None`: it cannot).
        abort: Option<Arc<Abort>>,
    },
    /// Look at the isolate now: the engine's memory guard stopped it while it ran no JS, and
    /// its memory is only given back when the thread discards it.
    Recycle,
    /// Run `onLoad(state)` before anything queued after this, waiting for the state to arrive
    /// (on reload it comes from the old version's `onUnload`, which may still be running). A
    /// failure is reported as a lifecycle event: nobody waits for the answer.
    Init {
        state: Receiver<Value>,
    },
    Stop,
}

/// One hook to run, as whoever serves a mailbox (a plugin's thread, a process pump) sees it.
pub(crate) struct Job {
    pub hook: String,
    pub args: Value,
    pub timeout: Option<Duration>,
    pub ctx: CallContext,
    /// `None` for `onLoad`: nobody waits for its answer; a failure becomes a lifecycle event.
    pub reply: Option<Reply>,
    pub abort: Option<Arc<Abort>>,
}

impl Job {
    /// Why this job must not run at all: its caller aborted it, or the plugin was unloaded
    /// (`closed`) while it waited.
    pub(crate) fn refusal(&self, closed: bool) -> Option<Error> {
        if closed {
            return Some(Error::new(ErrorCode::ShutDown, "the plugin was unloaded or shut down before the call ran"));
        }
        if self.abort.as_ref().is_some_and(|a| a.is_aborted()) {
            return Some(Error::new(ErrorCode::Aborted, "the caller aborted the call before it ran"));
        }
        if self.ctx.deadline.is_some_and(|d| d <= Instant::now()) {
            return Some(Error::new(ErrorCode::Timeout, "the caller's deadline passed while the call waited its turn"));
        }
        None
    }

    /// Answers the job without running it (nobody hears about an `onLoad` that never ran).
    pub(crate) fn refuse(self, error: Error) {
        if let Some(reply) = self.reply {
            reply.send(Err(error));
        }
    }
}

/// Where a mailbox server (a plugin's thread, a process pump) takes its requests from: the
/// mailbox channel, or, in a plugin's process, the channel from the host itself (its thread
/// reads the socket directly, one hand-off fewer per call).
pub(crate) trait Inbox: Send {
    /// The next request, waiting for it; `None` once the sender is gone.
    fn recv(&mut self) -> Option<Request>;
    /// A request already waiting, if any.
    fn try_recv(&mut self) -> Option<Request>;
    /// Resolves when [`recv`](Self::recv) may have something (a request, or the end), so
    /// that a plugin's thread can run the plugin's background work (timers, promises) while
    /// it waits. May resolve spuriously; never resolves for inboxes nobody waits on that way.
    fn ready(&mut self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + '_>> {
        Box::pin(std::future::pending())
    }
}

/// The sending end of a plugin thread's mailbox: a bounded queue that also wakes the thread
/// when it waits asynchronously (running the plugin's background work meanwhile).
///
/// Bounded by a count, not by a fixed array: a bounded crossbeam channel allocates all its
/// slots up front (about 160 KiB for the default 1,024 calls, in every idle plugin); this
/// one grows with what is queued.
#[derive(Clone)]
pub(crate) struct MailboxTx {
    tx: crossbeam_channel::Sender<Request>,
    ready: Arc<tokio::sync::Notify>,
    /// Requests sent and not yet received.
    queued: Arc<AtomicUsize>,
    capacity: usize,
}

// The errors hand the request back, as crossbeam's do: large, but only on the failure path.
#[allow(clippy::result_large_err)]
impl MailboxTx {
    /// Queues `req` even when the mailbox is full: for isola's own requests (stop, recycle,
    /// `onLoad`, `onUnload`), which must not wait behind callers.
    pub(crate) fn send(&self, req: Request) -> Result<(), crossbeam_channel::SendError<Request>> {
        self.queued.fetch_add(1, Ordering::AcqRel);
        let r = self.tx.send(req);
        if r.is_err() {
            self.queued.fetch_sub(1, Ordering::AcqRel);
        }
        self.ready.notify_one();
        r
    }

    /// How many calls it holds at most.
    pub(crate) fn capacity(&self) -> Option<usize> {
        Some(self.capacity)
    }

    /// Queues `req` unless the mailbox holds its capacity already.
    pub(crate) fn try_send(&self, req: Request) -> Result<(), crossbeam_channel::TrySendError<Request>> {
        if self.queued.fetch_add(1, Ordering::AcqRel) >= self.capacity {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(crossbeam_channel::TrySendError::Full(req));
        }
        let r = self.tx.try_send(req);
        if r.is_err() {
            self.queued.fetch_sub(1, Ordering::AcqRel);
        }
        self.ready.notify_one();
        r
    }
}

impl Drop for MailboxTx {
    fn drop(&mut self) {
        // The last sender going closes the mailbox: a thread waiting for it must look.
        self.ready.notify_one();
    }
}

/// The receiving end of a plugin thread's mailbox.
pub(crate) struct MailboxRx {
    rx: Receiver<Request>,
    ready: Arc<tokio::sync::Notify>,
    queued: Arc<AtomicUsize>,
}

/// A mailbox for `capacity` queued calls.
pub(crate) fn mailbox(capacity: usize) -> (MailboxTx, MailboxRx) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let ready = Arc::new(tokio::sync::Notify::new());
    let queued = Arc::new(AtomicUsize::new(0));
    (MailboxTx { tx, ready: ready.clone(), queued: queued.clone(), capacity }, MailboxRx { rx, ready, queued })
}

impl Drop for MailboxRx {
    fn drop(&mut self) {
        // What is still queued is dropped with it (its callers hear the plugin is gone): count
        // it out, or a mailbox left full would answer BUSY for good.
        while self.rx.try_recv().is_ok() {
            self.took();
        }
    }
}

impl MailboxRx {
    /// The next request, waiting at most `timeout`.
    pub(crate) fn recv_timeout(
        &self,
        timeout: std::time::Duration,
    ) -> Result<Request, crossbeam_channel::RecvTimeoutError> {
        self.rx.recv_timeout(timeout).inspect(|_| self.took())
    }

    fn took(&self) {
        self.queued.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Inbox for MailboxRx {
    fn recv(&mut self) -> Option<Request> {
        self.rx.recv().ok().inspect(|_| self.took())
    }

    fn try_recv(&mut self) -> Option<Request> {
        self.rx.try_recv().ok().inspect(|_| self.took())
    }

    fn ready(&mut self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + '_>> {
        Box::pin(async move {
            // The last sender's drop notifies too, so a closed mailbox wakes this as well.
            if !self.rx.is_empty() {
                return;
            }
            self.ready.notified().await;
        })
    }
}

/// Waits for the next hook to run: `None` once the mailbox is stopped or gone. `Recycle`
/// requests on the way run `recycle`.
pub(crate) fn next_job(inbox: &mut (impl Inbox + ?Sized), mut recycle: impl FnMut()) -> Option<Job> {
    loop {
        match inbox.recv()? {
            Request::Recycle => recycle(),
            req => return req.into_job(),
        }
    }
}

/// [`next_job`] without waiting: `None` if nothing is queued, `Some(None)` once the mailbox is
/// stopped or gone.
pub(crate) fn try_next_job(inbox: &mut (impl Inbox + ?Sized), mut recycle: impl FnMut()) -> Option<Option<Job>> {
    loop {
        match inbox.try_recv()? {
            Request::Recycle => recycle(),
            req => return Some(req.into_job()),
        }
    }
}

/// Answers everything still queued with `SHUT_DOWN`: it will not run.
pub(crate) fn refuse_queued(inbox: &mut (impl Inbox + ?Sized)) {
    while let Some(req) = inbox.try_recv() {
        if let Request::Call { reply, .. } = req {
            reply.send(Err(Error::new(ErrorCode::ShutDown, "the plugin was stopped")));
        }
    }
}

impl Request {
    /// The hook this request runs, or `None` for `Stop` (and `Recycle`, which
    /// [`next_job`] handles). For `Init`, waits for the state `onLoad` receives.
    fn into_job(self) -> Option<Job> {
        match self {
            Request::Stop | Request::Recycle => None,
            Request::Call { hook, args, timeout, ctx, reply, abort } => {
                Some(Job { hook, args, timeout, ctx, reply: Some(reply), abort })
            }
            Request::Init { state } => {
                let state = state.recv().unwrap_or(Value::Null);
                let args = Value::Array(vec![state]);
                let ctx = CallContext::default();
                Some(Job { hook: ON_LOAD.to_owned(), args, timeout: None, ctx, reply: None, abort: None })
            }
        }
    }
}

/// A plugin's `console.*` line in the host's log: `tracing`, target `isola::plugin`, with the
/// plugin id as a field, at the level the plugin chose (0 trace … 4 error).
pub(crate) fn log_line(plugin: &str, level: u32, msg: &str) {
    match level {
        0 => tracing::trace!(target: "isola::plugin", plugin, "{msg}"),
        1 => tracing::debug!(target: "isola::plugin", plugin, "{msg}"),
        2 => tracing::info!(target: "isola::plugin", plugin, "{msg}"),
        3 => tracing::warn!(target: "isola::plugin", plugin, "{msg}"),
        _ => tracing::error!(target: "isola::plugin", plugin, "{msg}"),
    }
}
