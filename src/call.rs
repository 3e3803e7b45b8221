//! The messages a plugin's mailbox carries: what a [`PluginHandle`](crate::PluginHandle) sends
//! and the plugin's thread answers.
//!
//! Why a module of its own: both ends of the mailbox (the handle above, the worker thread and
//! the runtime below) speak this protocol, so it sits under both and neither imports the other
//! to learn it. Moving a plugin into another process later means carrying these messages over
//! a pipe instead of a channel.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
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
                // Runs isola's code for the caller (a chain's next hop) on this plugin's
                // thread: a panic there is not this plugin's failure. (What `f` held is
                // dropped while unwinding: a chain reports that hop as lost.)
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(r))).is_err() {
                    tracing::error!("handing on an answer panicked");
                }
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
    /// `onLoad(state)`: nobody waits for its answer; a failure is reported as an event.
    pub(crate) fn on_load(state: Value) -> Job {
        let args = Value::Array(vec![state]);
        Job { hook: ON_LOAD.to_owned(), args, timeout: None, ctx: CallContext::default(), reply: None, abort: None }
    }

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
    /// [`recv`](Self::recv), giving up after `timeout` (inboxes that cannot time out wait).
    fn recv_within(&mut self, timeout: Duration) -> Received {
        let _ = timeout;
        self.recv().map_or(Received::Closed, Received::Request)
    }
    /// How to put this inbox to sleep while its plugin is evicted; `None` for inboxes that
    /// cannot sleep (a process's call channel).
    fn dormancy(&self) -> Option<Dormancy> {
        None
    }
}

/// The sending end of a plugin thread's mailbox: a bounded queue that also wakes the thread
/// when it waits asynchronously (running the plugin's background work meanwhile), and brings
/// back a plugin that was evicted while idle (see [`Dormancy`]).
///
/// Bounded by a count, not by a fixed array: a bounded crossbeam channel allocates all its
/// slots up front (about 160 KiB for the default 1,024 calls, in every idle plugin); this
/// one grows with what is queued.
pub(crate) struct MailboxTx {
    /// Dropped first in `drop`, so that a receiver woken there sees the end.
    tx: std::mem::ManuallyDrop<crossbeam_channel::Sender<Request>>,
    state: Arc<MailboxState>,
    capacity: usize,
}

/// How a sleeping mailbox's plugin comes back, given the state it kept (see [`Dormancy`]).
pub(crate) type Wake = Box<dyn FnOnce(Value) + Send>;

/// What both ends of a mailbox share.
#[derive(Default)]
struct MailboxState {
    /// Wakes a thread waiting asynchronously.
    ready: tokio::sync::Notify,
    /// Requests sent and not yet received.
    queued: AtomicUsize,
    /// Set while the mailbox sleeps (nobody serves it) and `wake` holds the way back. Read on
    /// every send: one load.
    asleep: AtomicBool,
    wake: Mutex<Option<(Value, Wake)>>,
    /// Set while the receiver is parked on `parked` instead of in the channel (see
    /// [`MailboxRx::recv`]); senders then notify it.
    blocked: AtomicBool,
    parked: (Mutex<()>, std::sync::Condvar),
    /// A request is expected soon (see [`MailboxTx::expect`]): a parked receiver woken with
    /// this set watches for it a while before it parks again.
    expected: AtomicBool,
    /// Live senders, and whether the last one went: then nothing can wake a sleeping mailbox
    /// and its way back is dropped (it holds the receiver: a cycle otherwise).
    senders: AtomicUsize,
    disconnected: AtomicBool,
}

impl MailboxState {
    /// Wakes a receiver parked without spinning. The request (or the end) was published
    /// first; the fence pairs with the one in [`MailboxRx::park`], so either the receiver sees
    /// it or this sees the receiver blocked.
    ///
    /// The lock is taken only to order this with the receiver's check-then-wait (once it is
    /// released, the receiver either waits already or has yet to look), and released before
    /// the notification: a receiver woken while it is held would wake only to block on it
    /// again (measured on calls spaced 200 µs apart: about 9 % of the plugin thread's CPU went
    /// to that second wait; context switches per call 3.17–3.47 before, 3.00–3.01 after).
    fn unpark(&self) {
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.blocked.load(Ordering::SeqCst) {
            drop(self.parked.0.lock().unwrap());
            self.parked.1.notify_one();
        }
    }

    /// Takes the way back if the mailbox sleeps: exactly one caller gets it.
    fn take_wake(&self) -> Option<(Value, Wake)> {
        if !self.asleep.load(Ordering::SeqCst) || !self.asleep.swap(false, Ordering::SeqCst) {
            return None;
        }
        self.wake.lock().unwrap().take()
    }
}

/// Runs a sleeping mailbox's way back on the sender's thread: a panic there (isola's own code)
/// must not unwind into whoever sent the call. The mailbox goes with it; its callers hear the
/// plugin is gone.
fn run_wake((state, wake): (Value, Wake)) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| wake(state))).is_err() {
        tracing::error!("bringing an evicted plugin back panicked");
    }
}

/// What a request does to a sleeping mailbox.
enum OnSleeping {
    /// A call (or `onLoad`): bring the plugin back to answer it.
    Wake,
    /// The plugin is being stopped: it stays gone, and what kept it is dropped.
    Discard,
    /// Nothing to do without an isolate (`Recycle`): not even queued.
    Ignore,
}

impl Request {
    fn on_sleeping(&self) -> OnSleeping {
        match self {
            Request::Call { .. } | Request::Init { .. } => OnSleeping::Wake,
            Request::Stop => OnSleeping::Discard,
            Request::Recycle => OnSleeping::Ignore,
        }
    }
}

// The errors hand the request back, as crossbeam's do: large, but only on the failure path.
#[allow(clippy::result_large_err)]
impl MailboxTx {
    /// Queues `req` even when the mailbox is full: for isola's own requests (stop, recycle,
    /// `onLoad`, `onUnload`), which must not wait behind callers.
    pub(crate) fn send(&self, req: Request) -> Result<(), crossbeam_channel::SendError<Request>> {
        let on_sleeping = req.on_sleeping();
        if self.skipped(&on_sleeping) {
            return Ok(());
        }
        self.state.queued.fetch_add(1, Ordering::SeqCst);
        let r = self.tx.send(req);
        if r.is_err() {
            self.state.queued.fetch_sub(1, Ordering::SeqCst);
        }
        self.sent(on_sleeping);
        r
    }

    /// Wakes a receiver parked idle to watch for a request about to come, for at most
    /// [`EXPECT_WITHIN`]. No-op for one that is not parked (it is busy, or spinning already).
    pub(crate) fn expect(&self) {
        if self.state.blocked.load(Ordering::SeqCst) {
            self.state.expected.store(true, Ordering::SeqCst);
            drop(self.state.parked.0.lock().unwrap());
            self.state.parked.1.notify_one();
        }
    }

    /// If the mailbox sleeps (its plugin evicted), ends it for good and returns the state the
    /// plugin kept, without bringing the plugin back: what a reload would otherwise wake it
    /// for (its `onUnload`, which gave that state already). `None` if it does not sleep.
    pub(crate) fn take_kept(&self) -> Option<Value> {
        self.state.take_wake().map(|(state, _wake)| state)
    }

    /// Whether the receiver is parked (neither busy nor watching for a request): a request
    /// sent now has to wake its thread first.
    pub(crate) fn receiver_parked(&self) -> bool {
        self.state.blocked.load(Ordering::SeqCst)
    }

    /// How many calls it holds at most.
    pub(crate) fn capacity(&self) -> Option<usize> {
        Some(self.capacity)
    }

    /// Queues `req` unless the mailbox holds its capacity already.
    pub(crate) fn try_send(&self, req: Request) -> Result<(), crossbeam_channel::TrySendError<Request>> {
        let on_sleeping = req.on_sleeping();
        if self.skipped(&on_sleeping) {
            return Ok(());
        }
        if self.state.queued.fetch_add(1, Ordering::SeqCst) >= self.capacity {
            self.state.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(crossbeam_channel::TrySendError::Full(req));
        }
        let r = self.tx.try_send(req);
        if r.is_err() {
            self.state.queued.fetch_sub(1, Ordering::SeqCst);
        }
        self.sent(on_sleeping);
        r
    }

    /// Whether a request is not even queued: one that needs an isolate's attention only
    /// (`Recycle`) while there is none.
    fn skipped(&self, on_sleeping: &OnSleeping) -> bool {
        matches!(on_sleeping, OnSleeping::Ignore) && self.state.asleep.load(Ordering::SeqCst)
    }

    /// After queueing: wakes the thread, or the plugin if its mailbox sleeps. The queue count
    /// went up first (SeqCst, as [`Dormancy::sleep`] sets `asleep` before reading it), so
    /// either this sender sees the mailbox asleep or the sleeping side sees the request.
    fn sent(&self, on_sleeping: OnSleeping) {
        self.state.ready.notify_one();
        self.state.unpark();
        match on_sleeping {
            OnSleeping::Wake => {
                if let Some(wake) = self.state.take_wake() {
                    run_wake(wake);
                }
            }
            OnSleeping::Discard => drop(self.state.take_wake()),
            OnSleeping::Ignore => {}
        }
    }
}

impl Clone for MailboxTx {
    fn clone(&self) -> Self {
        self.state.senders.fetch_add(1, Ordering::SeqCst);
        MailboxTx { tx: self.tx.clone(), state: self.state.clone(), capacity: self.capacity }
    }
}

impl Drop for MailboxTx {
    fn drop(&mut self) {
        // SAFETY: dropped once, here, and never used after.
        unsafe { std::mem::ManuallyDrop::drop(&mut self.tx) };
        let last = self.state.senders.fetch_sub(1, Ordering::SeqCst) == 1;
        if last {
            // Set before the wake-up below: a thread waiting in `ready` looks at it.
            self.state.disconnected.store(true, Ordering::SeqCst);
        }
        // The last sender going closes the mailbox: a thread waiting for it must look.
        self.state.ready.notify_one();
        self.state.unpark();
        if last {
            // Nothing can wake a sleeping mailbox now: drop what it kept (see
            // `Dormancy::sleep` for the other order).
            drop(self.state.take_wake());
        }
    }
}

/// The receiving end of a plugin thread's mailbox.
pub(crate) struct MailboxRx {
    rx: Receiver<Request>,
    state: Arc<MailboxState>,
    /// The last wait for a request was long: the next one parks at once.
    slow: bool,
}

/// A wait for the next request longer than this makes the next wait park without spinning.
/// Why: crossbeam spins and yields for a while before it parks, which pays off when the next
/// call comes within microseconds (a caller in a loop) and only burns the plugin thread's CPU
/// when calls come now and then (measured: 15.9 µs of CPU per call spaced 200 µs apart, of
/// which 4 µs was the call).
const SPIN_PAYS_OFF: Duration = Duration::from_micros(50);

/// How long a receiver told to expect a request ([`MailboxTx::expect`]) watches for it before
/// it parks again: about a few chain hops.
const EXPECT_WITHIN: Duration = Duration::from_micros(100);

/// The longest a parked receiver sleeps before it looks again on its own (a safety net).
const PARK_AT_MOST: Duration = Duration::from_millis(50);

/// A mailbox for `capacity` queued calls.
pub(crate) fn mailbox(capacity: usize) -> (MailboxTx, MailboxRx) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let state = Arc::new(MailboxState { senders: AtomicUsize::new(1), ..Default::default() });
    let tx = std::mem::ManuallyDrop::new(tx);
    (MailboxTx { tx, state: state.clone(), capacity }, MailboxRx { rx, state, slow: false })
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
    /// The next request, waiting at most `timeout` (a process pump's wait, which reads the
    /// child's memory between requests).
    pub(crate) fn recv_timeout(
        &self,
        timeout: std::time::Duration,
    ) -> Result<Request, crossbeam_channel::RecvTimeoutError> {
        self.rx.recv_timeout(timeout).inspect(|_| self.took())
    }

    fn took(&self) {
        self.state.queued.fetch_sub(1, Ordering::SeqCst);
    }

    /// Waits for the next request on a condition variable, without spinning first, until
    /// `until` if given. Wakes every 50 ms regardless, so that a missed notification could
    /// only ever delay a call, never strand it.
    fn park(&self, until: Option<Instant>) -> Result<Request, crossbeam_channel::RecvTimeoutError> {
        use crossbeam_channel::RecvTimeoutError;
        let (lock, ready) = &self.state.parked;
        let mut locked = lock.lock().unwrap();
        loop {
            self.state.blocked.store(true, Ordering::SeqCst);
            std::sync::atomic::fence(Ordering::SeqCst);
            let left = until.map(|u| u.saturating_duration_since(Instant::now()));
            match self.rx.try_recv() {
                Ok(req) => {
                    self.state.blocked.store(false, Ordering::SeqCst);
                    // A call expected just as this one came is this one.
                    self.state.expected.store(false, Ordering::SeqCst);
                    return Ok(req);
                }
                Err(crossbeam_channel::TryRecvError::Disconnected) => {
                    self.state.blocked.store(false, Ordering::SeqCst);
                    return Err(RecvTimeoutError::Disconnected);
                }
                Err(crossbeam_channel::TryRecvError::Empty) if left == Some(Duration::ZERO) => {
                    self.state.blocked.store(false, Ordering::SeqCst);
                    return Err(RecvTimeoutError::Timeout);
                }
                Err(crossbeam_channel::TryRecvError::Empty) => {}
            }
            let wait = left.map_or(PARK_AT_MOST, |l| l.min(PARK_AT_MOST));
            locked = ready.wait_timeout(locked, wait).unwrap().0;
            if self.state.expected.swap(false, Ordering::SeqCst) {
                self.state.blocked.store(false, Ordering::SeqCst);
                drop(locked);
                match self.watch(EXPECT_WITHIN) {
                    Some(Some(req)) => return Ok(req),
                    Some(None) => return Err(RecvTimeoutError::Disconnected),
                    None => {}
                }
                locked = lock.lock().unwrap();
            }
        }
    }

    /// Spins for a request for at most `within` (see [`spin_for`]). `None` if none came,
    /// `Some(None)` once every sender is gone.
    fn watch(&self, within: Duration) -> Option<Option<Request>> {
        spin_for(within, || match self.rx.try_recv() {
            Ok(req) => Some(Some(req)),
            Err(crossbeam_channel::TryRecvError::Disconnected) => Some(None),
            Err(crossbeam_channel::TryRecvError::Empty) => None,
        })
    }
}

/// Polls `poll` in a busy loop until it gives something, for at most `within`, yielding now
/// and then (on a machine with few cores the thread that will answer may need this one).
/// The one way isola watches for an answer about to come instead of sleeping on it.
pub(crate) fn spin_for<T>(within: Duration, mut poll: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    let mut spins = 0u32;
    loop {
        if let Some(v) = poll() {
            return Some(v);
        }
        spins += 1;
        if spins.is_multiple_of(64) {
            if start.elapsed() > within {
                return None;
            }
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }
}

/// How a mailbox's server goes away while the plugin is idle (an evicted plugin: its thread
/// and isolate freed) and comes back on the next call, without the handles noticing.
///
/// Why in the mailbox: every way a request reaches a plugin (calls, events, plugin calls,
/// `onLoad`) goes through [`MailboxTx`], so waking it there covers them all with one check.
pub(crate) struct Dormancy(Arc<MailboxState>);

impl Dormancy {
    /// Puts the mailbox to sleep, keeping `state` (what the plugin's `onUnload` gave): the
    /// next call or `onLoad` sent to it runs `wake(state)` (on the sender's thread, once),
    /// which must start serving the mailbox again. A `Stop`, or the last sender going away,
    /// drops `wake` instead; [`MailboxTx::take_kept`] takes the state without waking. If a
    /// request is already queued, `wake` runs now.
    pub(crate) fn sleep(self, state: Value, wake: Wake) {
        *self.0.wake.lock().unwrap() = Some((state, wake));
        self.0.asleep.store(true, Ordering::SeqCst);
        if self.0.queued.load(Ordering::SeqCst) > 0
            && let Some(wake) = self.0.take_wake()
        {
            run_wake(wake);
            return;
        }
        // The last sender may have gone while this went to sleep: it set `disconnected` before
        // looking for the way back, this set `asleep` before looking at `disconnected`.
        if self.0.disconnected.load(Ordering::SeqCst) {
            drop(self.0.take_wake());
        }
    }
}

impl Inbox for MailboxRx {
    fn recv(&mut self) -> Option<Request> {
        if let Ok(req) = self.rx.try_recv() {
            self.took();
            self.slow = false;
            return Some(req);
        }
        let since = Instant::now();
        let req = if self.slow { self.park(None).ok() } else { self.rx.recv().ok() };
        self.slow = since.elapsed() > SPIN_PAYS_OFF;
        req.inspect(|_| self.took())
    }

    fn try_recv(&mut self) -> Option<Request> {
        self.rx.try_recv().ok().inspect(|_| self.took())
    }

    fn recv_within(&mut self, timeout: Duration) -> Received {
        // Adaptive as `recv` is: a thread that waited long parks at once (with eviction on,
        // every idle wait of a plugin comes here).
        if let Ok(req) = self.rx.try_recv() {
            self.took();
            self.slow = false;
            return Received::Request(req);
        }
        let since = Instant::now();
        let r = if self.slow { self.park(Some(since + timeout)) } else { self.rx.recv_timeout(timeout) };
        self.slow = since.elapsed() > SPIN_PAYS_OFF;
        match r.inspect(|_| self.took()) {
            Ok(req) => Received::Request(req),
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => Received::Idle,
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => Received::Closed,
        }
    }

    fn dormancy(&self) -> Option<Dormancy> {
        Some(Dormancy(self.state.clone()))
    }

    fn ready(&mut self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + '_>> {
        Box::pin(async move {
            // Every send leaves a permit in `ready`, also the ones this thread took without
            // waiting: such a stale permit is used up here instead of ending the wait (which
            // cost a plugin with timers one idle turn of its event loop per call). The last
            // sender's drop notifies too, after setting `disconnected`.
            while self.rx.is_empty() && !self.state.disconnected.load(Ordering::SeqCst) {
                self.state.ready.notified().await;
            }
        })
    }
}

/// What [`Inbox::recv_within`] got.
pub(crate) enum Received {
    Request(Request),
    /// Nothing came in time.
    Idle,
    /// The sender is gone.
    Closed,
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

/// [`next_job`], waiting at most `idle`: `Err(())` if nothing came in that time.
pub(crate) fn next_job_within(
    inbox: &mut (impl Inbox + ?Sized),
    idle: Duration,
    mut recycle: impl FnMut(),
) -> Result<Option<Job>, ()> {
    let until = Instant::now() + idle;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match inbox.recv_within(left) {
            Received::Request(Request::Recycle) => recycle(),
            Received::Request(req) => return Ok(req.into_job()),
            Received::Closed => return Ok(None),
            Received::Idle => return Err(()),
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
            Request::Init { state } => Some(Job::on_load(state.recv().unwrap_or(Value::Null))),
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
