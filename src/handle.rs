//! [`PluginHandle`]: how a host calls one plugin, from any thread, sync or async.
//!
//! A handle never touches the isolate. It puts a request in the plugin's bounded mailbox and
//! waits for the answer, so it is `Clone + Send + Sync` while the isolate stays on its own
//! thread. The mailbox sits behind a lock-protected slot that the manager can swap: a reload
//! (and, later, a plugin running in a child process) changes where requests go without
//! invalidating any handle a host holds.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::TrySendError;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::async_spin::{AsyncSpin, InFlight};
use crate::call::{CallContext, MailboxTx, Reply, Request, spin_for};
use crate::cancel::CancelToken;
use crate::cancel::{Abort, Interrupt};
use crate::engine::STUCK_GRACE;
use crate::error::{Error, ErrorCode, Result};
use crate::events::{EventBus, LifecycleEvent};
use crate::pace::{Pace, Paced};
use crate::permissions::Permissions;
use crate::runtime::inspector::{InspectorPort, InspectorSession};
use crate::stats::{PluginStats, StatsCell};

/// Where a plugin is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PluginStatus {
    /// Evaluating its code.
    Loading,
    /// Answering calls.
    Ready,
    /// Its isolate broke the memory limit and is being replaced.
    Restarting,
    /// It could not load (or could not come back after a restart); see its last error.
    Failed,
    /// Unloaded or shut down.
    Stopped,
    /// Its thread is stuck past a call's deadline where termination cannot reach (a host
    /// function that does not return); calls fail at once with `BUSY` until it comes back.
    Unresponsive,
}

impl PluginStatus {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => PluginStatus::Loading,
            1 => PluginStatus::Ready,
            2 => PluginStatus::Restarting,
            3 => PluginStatus::Failed,
            5 => PluginStatus::Unresponsive,
            _ => PluginStatus::Stopped,
        }
    }

    /// Lower-case name, as shown by `isola list`.
    pub fn as_str(self) -> &'static str {
        match self {
            PluginStatus::Loading => "loading",
            PluginStatus::Ready => "ready",
            PluginStatus::Restarting => "restarting",
            PluginStatus::Failed => "failed",
            PluginStatus::Stopped => "stopped",
            PluginStatus::Unresponsive => "unresponsive",
        }
    }
}

/// Per-call settings.
///
/// ```
/// use std::time::Duration;
/// let token = isola::CancelToken::new();
/// let opts = isola::CallOptions::default().timeout(Duration::from_millis(50)).cancel(&token);
/// assert_eq!(opts.timeout, Some(Duration::from_millis(50)));
/// assert_eq!(opts.cancel, Some(token));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CallOptions {
    /// Time limit for this call instead of the plugin's default.
    pub timeout: Option<Duration>,
    /// Aborts the call when cancelled (see [`CancelToken`]).
    pub cancel: Option<CancelToken>,
}

impl CallOptions {
    /// Sets this call's time limit.
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = Some(t);
        self
    }

    /// Lets `token` abort this call.
    pub fn cancel(mut self, token: &CancelToken) -> Self {
        self.cancel = Some(token.clone());
        self
    }
}

/// How often a waiting caller looks whether the plugin's thread is stuck.
const STUCK_CHECK: Duration = Duration::from_millis(100);
/// Status changes kept for a subscriber that has not read them yet.
const STATUS_BACKLOG: usize = 64;

/// Joins threads whose code has returned. Joined, not just dropped: such a thread may still be
/// running its thread-local destructors (V8's, tokio's), and must be gone before an unload
/// returns.
fn join_ended(ended: Vec<JoinHandle<()>>) {
    for t in ended {
        let _ = t.join();
    }
}

/// A started plugin thread that [`Shared::open`] refused: the caller must stop and join it.
pub(crate) type Refused = (MailboxTx, JoinHandle<()>);

/// The state every clone of a handle shares.
pub(crate) struct Shared {
    pub id: String,
    /// Where requests go; `None` when the plugin is not running (failed or stopped).
    mailbox: RwLock<Option<MailboxTx>>,
    pub stats: Arc<StatsCell>,
    status: AtomicU8,
    closed: AtomicBool,
    info: RwLock<Info>,
    /// Threads that ran (or run) this plugin, joined on unload/shutdown.
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// Where lifecycle events (restarts) go.
    bus: Arc<EventBus>,
    /// Each started version of the plugin gets a number; `current` is the one the mailbox
    /// points at. A version being replaced (still answering its queued calls) must not
    /// overwrite what the new one reports.
    generations: AtomicU64,
    current: AtomicU64,
    /// The child process of each version running in one.
    pids: Mutex<std::collections::BTreeMap<u64, u32>>,
    /// How to stop the call each running version is in (its thread's deadline slot), for a
    /// prompt unload.
    interrupts: Mutex<Vec<Weak<dyn Interrupt>>>,
    /// The plugin's thread is stuck past a call's deadline and [`STUCK_GRACE`] (the watchdog
    /// says so); waiting callers give up.
    stuck: AtomicBool,
    /// Wakes async callers when the thread gets stuck.
    stuck_wake: tokio::sync::Notify,
    /// Whether an async caller spins for its answer a little before sleeping.
    async_spin: Arc<AsyncSpin>,
    /// How this plugin's blocking callers call: a caller in a tight loop watches longer for
    /// its answer (see `src/pace.rs`).
    pace: Arc<Pace>,
    /// Run once when the thread gets stuck (a chain waiting on this plugin moves on), by key.
    stuck_watchers: Mutex<Vec<(u64, StuckWatcher)>>,
    next_watcher: AtomicU64,
    /// Every status change, for [`PluginHandle::status_changes`].
    changes: tokio::sync::broadcast::Sender<PluginStatus>,
    /// Where debugger sessions reach the running isolate (engines with an inspector only).
    inspector: Mutex<Option<InspectorPort>>,
}

/// What [`Shared::watch_stuck`] runs.
type StuckWatcher = Box<dyn FnOnce() + Send>;

/// Runs the watchers in `list` (those not run already).
fn run_watchers(list: &Mutex<Vec<(u64, StuckWatcher)>>) {
    let watchers = std::mem::take(&mut *list.lock().unwrap());
    for (_, f) in watchers {
        f();
    }
}

/// What changes on (re)load.
#[derive(Clone, Default)]
pub(crate) struct Info {
    pub version: String,
    pub hooks: Vec<String>,
    pub last_error: Option<Error>,
    pub permissions: Permissions,
}

impl Shared {
    pub(crate) fn new(id: &str, bus: Arc<EventBus>) -> Arc<Shared> {
        Arc::new(Shared {
            id: id.to_owned(),
            mailbox: RwLock::new(None),
            stats: Arc::default(),
            status: AtomicU8::new(PluginStatus::Loading as u8),
            closed: AtomicBool::new(false),
            info: RwLock::new(Info::default()),
            threads: Mutex::new(Vec::new()),
            bus,
            generations: AtomicU64::new(0),
            current: AtomicU64::new(0),
            pids: Mutex::new(std::collections::BTreeMap::new()),
            interrupts: Mutex::new(Vec::new()),
            stuck: AtomicBool::new(false),
            stuck_wake: tokio::sync::Notify::new(),
            async_spin: Arc::default(),
            pace: Arc::default(),
            stuck_watchers: Mutex::new(Vec::new()),
            next_watcher: AtomicU64::new(0),
            changes: tokio::sync::broadcast::channel(STATUS_BACKLOG).0,
            inspector: Mutex::new(None),
        })
    }

    /// The isolate now running the plugin takes debugger sessions at `port`.
    pub(crate) fn set_inspector(&self, port: InspectorPort) {
        *self.inspector.lock().unwrap() = Some(port);
    }

    /// A number for a version about to start.
    pub(crate) fn next_generation(&self) -> u64 {
        self.generations.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Records (or, with `None`, forgets) the process running version `generation`.
    pub(crate) fn set_pid(&self, generation: u64, pid: Option<u32>) {
        let mut pids = self.pids.lock().unwrap();
        match pid {
            Some(p) => pids.insert(generation, p),
            None => pids.remove(&generation),
        };
    }

    /// The process running the current version, if it runs in one.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.pids.lock().unwrap().get(&self.current.load(Ordering::Acquire)).copied()
    }

    /// Whether version `generation` is the one the handle reaches.
    /// Makes `generation` the current version without a mailbox to open: a plugin's process
    /// runs one version, which reads its calls itself.
    pub(crate) fn mark_current(&self, generation: u64) {
        self.current.store(generation, Ordering::Release);
    }

    pub(crate) fn is_current(&self, generation: u64) -> bool {
        self.current.load(Ordering::Acquire) == generation
    }

    pub(crate) fn emit(&self, event: LifecycleEvent) {
        self.bus.emit(event);
    }

    pub(crate) fn set_status(&self, s: PluginStatus) {
        // Once stopped, always stopped (a thread finishing its load late must not revive it).
        let s = if self.closed.load(Ordering::Acquire) { PluginStatus::Stopped } else { s };
        let old = self.status.swap(s as u8, Ordering::AcqRel);
        if old != s as u8 {
            let _ = self.changes.send(s);
        }
    }

    /// The plugin's thread is stuck past its call's deadline and [`STUCK_GRACE`] (called by
    /// the watchdog): the plugin becomes unresponsive and waiting callers give up.
    pub(crate) fn set_stuck(&self) {
        if self.stuck.swap(true, Ordering::AcqRel) {
            return;
        }
        let ready = PluginStatus::Ready as u8;
        let unresponsive = PluginStatus::Unresponsive as u8;
        if self.status.compare_exchange(ready, unresponsive, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            let _ = self.changes.send(PluginStatus::Unresponsive);
        }
        tracing::warn!(plugin = %self.id, "the plugin's thread is stuck past its deadline (in a host function?)");
        self.emit(LifecycleEvent::Unresponsive { plugin: self.id.clone() });
        self.stuck_wake.notify_waiters();
        let watchers = std::mem::take(&mut *self.stuck_watchers.lock().unwrap());
        if !watchers.is_empty() {
            // Not on the caller's thread: that is the watchdog, holding the lock every
            // deadline waits on, and a watcher sends calls on (which may start threads).
            // (Here after all if no thread can be started: they run once either way.)
            let watchers = Arc::new(Mutex::new(watchers));
            let theirs = watchers.clone();
            let spawned = std::thread::Builder::new().name("isola:stuck".into()).spawn(move || run_watchers(&theirs));
            if spawned.is_err() {
                run_watchers(&watchers);
            }
        }
    }

    /// Runs `f` once if the plugin's thread gets stuck (at once if it is stuck now), for a
    /// waiter that is not a thread or task of its own (a chain relaying from plugin to
    /// plugin). Returns the key to [`unwatch_stuck`](Self::unwatch_stuck) with, `None` if `f`
    /// ran already.
    pub(crate) fn watch_stuck(&self, f: StuckWatcher) -> Option<u64> {
        let mut watchers = self.stuck_watchers.lock().unwrap();
        // Under the lock: `set_stuck` sets the flag before it takes the watchers.
        if self.is_stuck() {
            drop(watchers);
            f();
            return None;
        }
        let key = self.next_watcher.fetch_add(1, Ordering::Relaxed);
        watchers.push((key, f));
        Some(key)
    }

    /// Forgets a watcher that is no longer needed (its call answered).
    pub(crate) fn unwatch_stuck(&self, key: u64) {
        self.stuck_watchers.lock().unwrap().retain(|(k, _)| *k != key);
    }

    /// The plugin's thread finished its call: an unresponsive plugin is back.
    pub(crate) fn set_unstuck(&self) {
        if !self.stuck.swap(false, Ordering::AcqRel) {
            return;
        }
        if self.status() == PluginStatus::Unresponsive {
            self.set_status(PluginStatus::Ready);
        }
        self.emit(LifecycleEvent::Responsive { plugin: self.id.clone() });
    }

    fn is_stuck(&self) -> bool {
        self.stuck.load(Ordering::Acquire)
    }

    /// The answer for a caller that stopped waiting on a stuck thread.
    pub(crate) fn stuck_error(&self) -> Error {
        Error::new(
            ErrorCode::Timeout,
            format!(
                "the plugin's thread is stuck past the call's deadline (plus {} ms) where it cannot be stopped, such as in a host function that does not return",
                STUCK_GRACE.as_millis()
            ),
        )
    }

    pub(crate) fn status(&self) -> PluginStatus {
        PluginStatus::from_u8(self.status.load(Ordering::Acquire))
    }

    pub(crate) fn info(&self) -> Info {
        self.info.read().unwrap().clone()
    }

    pub(crate) fn update_info(&self, f: impl FnOnce(&mut Info)) {
        f(&mut self.info.write().unwrap());
    }

    /// Points the handle at a newly started thread and returns the previous mailbox (requests
    /// already in it stay there and are answered by the old thread). Refused if the plugin was
    /// closed meanwhile (an unload racing a reload): the caller must then stop that thread.
    #[allow(clippy::result_large_err)]
    pub(crate) fn open(
        &self,
        tx: MailboxTx,
        thread: JoinHandle<()>,
        generation: u64,
    ) -> Result<Option<MailboxTx>, Refused> {
        let mut mailbox = self.mailbox.write().unwrap();
        if self.closed.load(Ordering::Acquire) {
            return Err((tx, thread));
        }
        self.threads.lock().unwrap().push(thread);
        self.current.store(generation, Ordering::Release);
        Ok(mailbox.replace(tx))
    }

    /// A thread that took over serving this plugin (a restart on a warm pool thread), to be
    /// joined with the others. Joined at once if the plugin was closed meanwhile (it then
    /// finds its mailbox stopped and ends).
    pub(crate) fn adopt_thread(&self, thread: JoinHandle<()>) {
        let _mailbox = self.mailbox.read().unwrap();
        if self.closed.load(Ordering::Acquire) {
            drop(_mailbox);
            let _ = thread.join();
            return;
        }
        // A stateless plugin hands over after every call: join the threads that ended, once
        // the mailbox lock is released.
        let ended = self.push_thread(thread);
        drop(_mailbox);
        join_ended(ended);
    }

    /// A thread that brought an evicted plugin back, to be joined with the others. Takes
    /// only the thread list's lock: it is started from inside a send, under the mailbox's.
    pub(crate) fn add_thread(&self, thread: JoinHandle<()>) {
        join_ended(self.push_thread(thread));
    }

    /// Adds `thread` to the list and takes out the threads that ended, for [`join_ended`].
    fn push_thread(&self, thread: JoinHandle<()>) -> Vec<JoinHandle<()>> {
        let mut threads = self.threads.lock().unwrap();
        let (ended, running) = std::mem::take(&mut *threads).into_iter().partition(|t| t.is_finished());
        *threads = running;
        threads.push(thread);
        ended
    }

    /// Lets go of the calling thread's handle (it is about to end: an evicted plugin's). Why:
    /// a thread that ended but was never joined or detached keeps its stack, tens of KiB that
    /// V8 touched, for as long as its handle lives; an evicted plugin must not.
    pub(crate) fn forget_current_thread(&self) {
        let me = std::thread::current().id();
        self.threads.lock().unwrap().retain(|t| t.thread().id() != me);
    }

    /// A thread serving this plugin can be interrupted through `on` (see [`close`](Self::close)).
    pub(crate) fn add_interrupt(&self, on: Weak<dyn Interrupt>) {
        let mut all = self.interrupts.lock().unwrap();
        all.retain(|w| w.strong_count() > 0);
        all.push(on);
    }

    /// Stops the plugin for good, promptly: the running call is interrupted and answered
    /// `SHUT_DOWN`, queued calls fail at once without running, and later calls fail with
    /// `SHUT_DOWN` too. Does not wait for the thread.
    pub(crate) fn close(&self) {
        let old = {
            let mut mailbox = self.mailbox.write().unwrap();
            self.closed.store(true, Ordering::Release);
            mailbox.take()
        };
        for on in self.interrupts.lock().unwrap().iter().filter_map(Weak::upgrade) {
            on.interrupt(ErrorCode::ShutDown);
        }
        if let Some(old) = old {
            // If the mailbox is full, dropping `old` (the last sender) is enough: once closed,
            // the thread answers what is queued without running it and then finds the mailbox
            // gone. A blocking send could wait forever on a stuck thread.
            let _ = old.try_send(Request::Stop);
        }
        self.set_status(PluginStatus::Stopped);
    }

    /// Whether the plugin was stopped for good ([`close`](Self::close)).
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Stops the thread serving this plugin, if any, without closing the plugin: later calls
    /// answer with its last error until a new version is opened. Does not wait.
    pub(crate) fn stop_thread(&self) {
        // Take it first: the send may wait for room, and must not hold the lock meanwhile. The
        // stopped version no longer speaks for the plugin (no version has number 0).
        let old = self.mailbox.write().unwrap().take();
        self.current.store(0, Ordering::Release);
        if let Some(old) = old {
            let _ = old.send(Request::Stop);
        }
    }

    /// Asks version `generation`'s thread to look at its isolate now (the engine's memory
    /// guard stopped it while no JS ran). Skipped when the mailbox is full: the thread is busy
    /// then, and looks at the isolate before its next call anyway.
    pub(crate) fn nudge(&self, generation: u64) {
        if !self.is_current(generation) {
            return;
        }
        if let Some(tx) = self.mailbox.read().unwrap().as_ref() {
            let _ = tx.try_send(Request::Recycle);
        }
    }

    /// A call will come soon (a chain is one hop away): a thread parked idle wakes now and
    /// watches for it, so that its wake-up overlaps the hop before instead of following it.
    pub(crate) fn expect_call(&self) {
        if let Some(tx) = self.mailbox.read().unwrap().as_ref() {
            tx.expect();
        }
    }

    /// Waits for every thread of this plugin to finish, but not for a thread that is stuck
    /// where it cannot be stopped: one still busy past its deadline and [`STUCK_GRACE`] is
    /// left behind (it ends on its own if it ever comes back).
    pub(crate) fn join(&self) {
        // Until the list stays empty: a thread bringing an evicted plugin back may be added
        // while the others are joined (it then finds the plugin closed and ends).
        loop {
            let threads = std::mem::take(&mut *self.threads.lock().unwrap());
            if threads.is_empty() {
                return;
            }
            self.join_all(threads);
        }
    }

    fn join_all(&self, threads: Vec<JoinHandle<()>>) {
        for t in threads {
            while !t.is_finished() {
                if self.is_stuck() {
                    tracing::warn!(plugin = %self.id, "not waiting for the plugin's stuck thread");
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }

    /// Puts a call in the mailbox. Errors carry no plugin or hook yet ([`answer`] adds them),
    /// and give the reply back: it was never sent, so its caller answers it (a
    /// [`Reply::Func`] that is dropped means a lost answer).
    // The error hands the reply back, as crossbeam's do: large, but only on the failure path.
    #[allow(clippy::result_large_err)]
    pub(crate) fn submit(
        &self,
        hook: &str,
        args: Value,
        timeout: Option<Duration>,
        ctx: CallContext,
        reply: Reply,
        abort: Option<Arc<Abort>>,
    ) -> std::result::Result<(), (Error, Reply)> {
        let fail = |code: ErrorCode, msg: String, reply: Reply| {
            self.stats.record_error(code);
            Err((Error::new(code, msg), reply))
        };
        let mailbox = self.mailbox.read().unwrap();
        let Some(tx) = mailbox.as_ref() else {
            if self.closed.load(Ordering::Acquire) {
                return fail(ErrorCode::ShutDown, "the plugin has been unloaded or shut down".into(), reply);
            }
            // Not running: answer with why it is not (its load error), so the caller learns
            // the real cause.
            let last = self.info().last_error;
            let e = last.unwrap_or_else(|| Error::new(ErrorCode::PluginCrashed, "the plugin is not running"));
            return Err((e, reply));
        };
        if abort.as_ref().is_some_and(|a| a.is_aborted()) {
            return fail(ErrorCode::Aborted, "the call was aborted before it was sent".into(), reply);
        }
        if self.status() == PluginStatus::Unresponsive {
            return fail(
                ErrorCode::Busy,
                "the plugin is unresponsive: its thread is stuck in a call it cannot be stopped in; try again later"
                    .into(),
                reply,
            );
        }
        let req = Request::Call { hook: hook.to_owned(), args, timeout, ctx, reply, abort };
        let reply_of = |req: Request| match req {
            Request::Call { reply, .. } => reply,
            _ => unreachable!("a call was sent"),
        };
        match tx.try_send(req) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(req)) => fail(
                ErrorCode::Busy,
                format!("the plugin's mailbox is full ({} calls waiting); try again later", tx.capacity().unwrap_or(0)),
                reply_of(req),
            ),
            Err(TrySendError::Disconnected(req)) => {
                fail(ErrorCode::PluginCrashed, "the plugin's thread has stopped".into(), reply_of(req))
            }
        }
    }

    /// Whether the plugin's thread is parked waiting for a request (a call now must wake it).
    fn receiver_parked(&self) -> bool {
        self.mailbox.read().unwrap().as_ref().is_some_and(MailboxTx::receiver_parked)
    }

    /// Waits for an answer, giving up with `TIMEOUT` if the plugin's thread gets stuck.
    /// A caller of `call_blocking` in a tight loop first watches for the answer a while
    /// (`paced`, see `src/pace.rs`).
    fn wait_blocking(&self, rx: &crossbeam_channel::Receiver<Result<Value>>, paced: Option<Paced>) -> Result<Value> {
        let r = self.wait_blocking_paced(rx, paced.as_ref());
        if let Some(paced) = paced {
            paced.answered();
        }
        r
    }

    fn wait_blocking_paced(
        &self,
        rx: &crossbeam_channel::Receiver<Result<Value>>,
        paced: Option<&Paced>,
    ) -> Result<Value> {
        if let Some(within) = paced.and_then(Paced::watch_for) {
            let got = spin_for(within, || match rx.try_recv() {
                Ok(r) => Some(Some(r)),
                Err(crossbeam_channel::TryRecvError::Disconnected) => Some(None),
                Err(crossbeam_channel::TryRecvError::Empty) => None,
            });
            match got {
                Some(Some(r)) => return r,
                Some(None) => return Err(self.lost()),
                None => {}
            }
        }
        // crossbeam spins briefly before parking, which keeps a fast answer from paying a full
        // thread wake-up.
        loop {
            match rx.recv_timeout(STUCK_CHECK) {
                Ok(r) => return r,
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return Err(self.lost()),
                Err(crossbeam_channel::RecvTimeoutError::Timeout) if self.is_stuck() => return Err(self.stuck_error()),
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            }
        }
    }

    /// [`wait_blocking`](Self::wait_blocking) for async callers.
    /// (No timer: the watchdog wakes it, so any async runtime will do.)
    /// It first watches for the answer briefly when that is likely to pay (see
    /// [`crate::async_spin`]).
    async fn wait_async(
        &self,
        mut rx: tokio::sync::oneshot::Receiver<Result<Value>>,
        in_flight: InFlight,
    ) -> Result<Value> {
        match in_flight.watch(&mut rx) {
            Some(Some(r)) => return r,
            Some(None) => return Err(self.lost()),
            None => {}
        }
        loop {
            let stuck = self.stuck_wake.notified();
            if self.is_stuck() {
                return Err(self.stuck_error());
            }
            tokio::select! {
                r = &mut rx => return r.unwrap_or_else(|_| Err(self.lost())),
                () = stuck => {}
            }
        }
    }

    /// The answer for a caller whose call the plugin dropped without answering.
    pub(crate) fn lost(&self) -> Error {
        let code = if self.closed.load(Ordering::Acquire) { ErrorCode::ShutDown } else { ErrorCode::PluginCrashed };
        Error::new(code, "the plugin stopped before answering")
    }
}

/// The one place a call's outcome gets its plugin and hook: every answer a caller sees, from
/// the mailbox, the plugin's thread or the isolate, passes here.
fn answer(r: Result<Value>, id: &str, hook: &str) -> Result<Value> {
    r.map_err(|e| e.in_context(id, Some(hook)))
}

/// Calls a hook through a mailbox that no handle points at yet (a plugin being loaded or
/// reloaded), blocking until it answers.
pub(crate) fn call_mailbox(tx: &MailboxTx, id: &str, hook: &str, args: Value) -> Result<Value> {
    let (rtx, rrx) = crossbeam_channel::bounded(1);
    let req = Request::Call {
        hook: hook.to_owned(),
        args,
        timeout: None,
        ctx: CallContext::default(),
        reply: Reply::Blocking(rtx),
        abort: None,
    };
    let lost = || Error::new(ErrorCode::PluginCrashed, "the plugin stopped before answering");
    let r = match tx.send(req) {
        Ok(()) => rrx.recv().unwrap_or_else(|_| Err(lost())),
        Err(_) => Err(lost()),
    };
    answer(r, id, hook)
}

/// Turns call arguments into the positional-argument JSON the plugin's thread expects:
/// a tuple or array is the argument list, `()` means no arguments, anything else is the one
/// argument.
fn encode_args<A: Serialize>(args: A) -> Result<Value> {
    serde_json::to_value(args)
        .map_err(|e| Error::new(ErrorCode::InvalidArgs, format!("arguments cannot be serialised: {e}")))
}

fn decode<R: DeserializeOwned>(v: Value, id: &str, hook: &str) -> Result<R> {
    serde_json::from_value(v).map_err(|e| {
        Error::new(ErrorCode::InvalidArgs, format!("the hook's result does not fit the expected type: {e}"))
            .in_context(id, Some(hook))
    })
}

/// A cheap, cloneable reference to one loaded plugin.
///
/// Calls to one plugin run one at a time, in the order they were made; calls to different
/// plugins run in parallel. Arguments are the hook's positional arguments: pass a tuple
/// (`("Ada",)`, `(1, 2)`), `()` for none, or a `Vec`.
///
/// ```no_run
/// # async fn demo() -> isola::Result<()> {
/// let manager = isola::Manager::new(isola::Engine::default());
/// let greeter = manager.load("plugins/greeter")?;
/// let hello: String = greeter.call("greet", ("Ada",)).await?;
/// let bye: String = greeter.call_blocking("farewell", ("Ada",))?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PluginHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for PluginHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginHandle").field("id", &self.shared.id).field("status", &self.status()).finish()
    }
}

impl PluginHandle {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        PluginHandle { shared }
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The plugin's id.
    pub fn id(&self) -> &str {
        &self.shared.id
    }

    /// The plugin's hooks, sorted.
    pub fn hooks(&self) -> Vec<String> {
        self.shared.info().hooks
    }

    /// Whether it is ready, restarting, failed, ...
    pub fn status(&self) -> PluginStatus {
        self.shared.status()
    }

    /// The id of the child process running the plugin, if it runs in one (see
    /// [`Isolation::Process`](crate::engine::Isolation)); `None` for a plugin on a thread, or
    /// between a crash and its restart.
    pub fn process_id(&self) -> Option<u32> {
        self.shared.pid()
    }

    /// The last load or restart failure, if any.
    pub fn last_error(&self) -> Option<Error> {
        self.shared.info().last_error
    }

    /// Every status change from now on, as it happens: `loading`, `ready`, `restarting`,
    /// `failed`, `unresponsive`, `stopped`. For hosts that react to a plugin's life instead of
    /// polling [`status`](Self::status).
    ///
    /// ```no_run
    /// # async fn demo(plugin: isola::PluginHandle) {
    /// let mut changes = plugin.status_changes();
    /// while let Some(status) = changes.next().await {
    ///     println!("{} is {}", plugin.id(), status.as_str());
    /// }
    /// # }
    /// ```
    pub fn status_changes(&self) -> StatusChanges {
        StatusChanges { rx: self.shared.changes.subscribe(), done: self.status() == PluginStatus::Stopped }
    }

    /// A snapshot of the plugin's counters.
    pub fn stats(&self) -> PluginStats {
        self.shared.stats.snapshot()
    }

    /// Opens a Chrome DevTools Protocol session with the plugin's isolate, for an engine built
    /// with [`EngineBuilder::inspect`](crate::EngineBuilder::inspect). The session lasts as
    /// long as this isolate: after a reload or restart, open a new one.
    ///
    /// ```no_run
    /// # async fn f(plugin: isola::PluginHandle) {
    /// let mut session = plugin.inspect().unwrap();
    /// session.send(r#"{"id":1,"method":"Runtime.evaluate","params":{"expression":"1+1"}}"#);
    /// println!("{}", session.recv().await.unwrap());
    /// # }
    /// ```
    pub fn inspect(&self) -> Result<InspectorSession> {
        let port = self.shared.inspector.lock().unwrap().clone();
        let Some(port) = port else {
            return Err(Error::new(
                ErrorCode::InvalidArgs,
                "this plugin cannot be debugged: build the engine with `.inspect(InspectMode::On)` \
                 (`isola dev --inspect`) and thread isolation",
            )
            .plugin(&self.shared.id));
        };
        port.connect().ok_or_else(|| {
            Error::new(ErrorCode::PluginCrashed, "the plugin's isolate is gone (unloaded or restarting)")
                .plugin(&self.shared.id)
        })
    }

    /// The `file:` URL of the entry the running isolate was made from, when it can be debugged
    /// (what a debugger lists the plugin as).
    pub fn inspect_url(&self) -> Option<String> {
        self.shared.inspector.lock().unwrap().as_ref().filter(|p| p.is_open()).map(|p| p.url.clone())
    }

    /// Calls `hook` and waits for its result without blocking the async runtime.
    ///
    /// The call is queued as soon as this is invoked (so several calls can be in flight
    /// before any is awaited); the future resolves with the answer. A call that is the
    /// plugin's only one in flight, made while the plugin's thread is awake, watches for its
    /// answer for up to 25 µs before its task sleeps (see `src/async_spin.rs`): that long at
    /// most it holds the executor's thread.
    pub fn call<A: Serialize, R: DeserializeOwned>(
        &self,
        hook: &str,
        args: A,
    ) -> impl Future<Output = Result<R>> + Send + 'static {
        self.call_with(hook, args, CallOptions::default())
    }

    /// [`call`](Self::call) with per-call options such as a time limit.
    pub fn call_with<A: Serialize, R: DeserializeOwned>(
        &self,
        hook: &str,
        args: A,
        opts: CallOptions,
    ) -> impl Future<Output = Result<R>> + Send + 'static {
        let args = encode_args(args).map_err(|e| e.in_context(&self.shared.id, Some(hook)));
        let answer = args.map(|args| self.call_in(hook, args, opts.timeout, CallContext::default(), opts.cancel));
        let (id, hook) = (self.shared.id.clone(), hook.to_owned());
        async move { decode(answer?.await?, &id, &hook) }
    }

    /// Queues a call with JSON arguments on behalf of `ctx`; the future waits for the answer.
    /// Dropping the future before it answers aborts the call, as `cancel` does.
    pub(crate) fn call_in(
        &self,
        hook: &str,
        args: Value,
        timeout: Option<Duration>,
        ctx: CallContext,
        cancel: Option<CancelToken>,
    ) -> impl Future<Output = Result<Value>> + Send + 'static {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let abort = Arc::new(Abort::default());
        if let Some(token) = &cancel {
            token.watch(&abort);
        }
        let in_flight = self.shared.async_spin.enter(self.shared.receiver_parked());
        let sent =
            self.shared.submit(hook, args, timeout, ctx, Reply::Async(tx), Some(abort.clone())).map_err(|(e, _)| e);
        let shared = self.shared.clone();
        let hook = hook.to_owned();
        let on_drop = AbortOnDrop(Some(abort));
        async move {
            let r = match sent {
                Ok(()) => shared.wait_async(rx, in_flight).await,
                Err(e) => Err(e),
            };
            on_drop.disarm();
            answer(r, &shared.id, &hook)
        }
    }

    /// Calls `hook` and blocks the current thread until it answers. Do not use it inside an
    /// async task (use [`call`](Self::call)).
    ///
    /// A call sent within 20 µs of the plugin's previous `call_blocking` answer (to any
    /// thread), which came within 200 µs, with no other `call_blocking` to the plugin in
    /// flight (a thread calling back to back) watches for its answer for up to 200 µs before
    /// it sleeps, so that both threads stay awake and each
    /// call costs microseconds, not two thread wake-ups (see `src/pace.rs`).
    ///
    /// ```no_run
    /// # fn demo(h: isola::PluginHandle) -> isola::Result<()> {
    /// let n: i64 = h.call_blocking("inc", ())?;
    /// # Ok(()) }
    /// ```
    pub fn call_blocking<A: Serialize, R: DeserializeOwned>(&self, hook: &str, args: A) -> Result<R> {
        self.call_blocking_with(hook, args, CallOptions::default())
    }

    /// [`call_blocking`](Self::call_blocking) with per-call options.
    pub fn call_blocking_with<A: Serialize, R: DeserializeOwned>(
        &self,
        hook: &str,
        args: A,
        opts: CallOptions,
    ) -> Result<R> {
        let args = encode_args(args).map_err(|e| e.in_context(&self.shared.id, Some(hook)))?;
        let abort = opts.cancel.map(|token| {
            let abort = Arc::new(Abort::default());
            token.watch(&abort);
            abort
        });
        let v = self.call_in_blocking_abortable(hook, args, opts.timeout, CallContext::default(), abort, true)()?;
        decode(v, &self.shared.id, hook)
    }

    /// Queues a call now; the returned function blocks until the answer. (Queue several, then
    /// wait for each, and they run in parallel on their plugins.)
    pub(crate) fn call_in_blocking(
        &self,
        hook: &str,
        args: Value,
        timeout: Option<Duration>,
        ctx: CallContext,
    ) -> impl FnOnce() -> Result<Value> + use<> {
        self.call_in_blocking_abortable(hook, args, timeout, ctx, None, false)
    }

    fn call_in_blocking_abortable(
        &self,
        hook: &str,
        args: Value,
        timeout: Option<Duration>,
        ctx: CallContext,
        abort: Option<Arc<Abort>>,
        paced: bool,
    ) -> impl FnOnce() -> Result<Value> + use<> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        // Only a caller waiting for this one call may watch longer for it: one that queued
        // several (a notify to many plugins) would hold a core the plugins need.
        let paced = paced.then(|| self.shared.pace.enter());
        let sent = self.shared.submit(hook, args, timeout, ctx, Reply::Blocking(tx), abort).map_err(|(e, _)| e);
        let shared = self.shared.clone();
        let hook = hook.to_owned();
        move || {
            // crossbeam spins briefly before parking, which keeps a fast answer from paying a
            // full thread wake-up.
            let r = match sent {
                Ok(()) => shared.wait_blocking(&rx, paced),
                Err(e) => Err(e),
            };
            answer(r, &shared.id, &hook)
        }
    }
}

/// Aborts a call whose future was dropped before it answered.
struct AbortOnDrop(Option<Arc<Abort>>);

impl AbortOnDrop {
    /// The call answered: nothing to abort.
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(abort) = self.0.take() {
            abort.abort();
        }
    }
}

/// A plugin's status changes, in order (see [`PluginHandle::status_changes`]). Ends after
/// `stopped`, the last status a plugin has.
#[derive(Debug)]
pub struct StatusChanges {
    rx: tokio::sync::broadcast::Receiver<PluginStatus>,
    done: bool,
}

impl StatusChanges {
    /// Waits for the next change; `None` once the plugin has stopped.
    pub async fn next(&mut self) -> Option<PluginStatus> {
        use tokio::sync::broadcast::error::RecvError;
        if self.done {
            return None;
        }
        loop {
            match self.rx.recv().await {
                Ok(s) => return Some(self.seen(s)),
                // A subscriber that fell more than 64 changes behind misses the oldest.
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return None,
            }
        }
    }

    /// The next change if one happened, without waiting.
    pub fn try_next(&mut self) -> Option<PluginStatus> {
        use tokio::sync::broadcast::error::TryRecvError;
        if self.done {
            return None;
        }
        loop {
            match self.rx.try_recv() {
                Ok(s) => return Some(self.seen(s)),
                Err(TryRecvError::Lagged(_)) => continue,
                Err(_) => return None,
            }
        }
    }

    fn seen(&mut self, s: PluginStatus) -> PluginStatus {
        self.done = s == PluginStatus::Stopped;
        s
    }
}
