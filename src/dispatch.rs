//! Events, hook chains and commands: how the host (and plugins) reach *several* plugins by a
//! name instead of one plugin by id.
//!
//! - **Notify** ([`Manager::emit`](crate::Manager::emit)): every subscriber gets the event, in
//!   parallel; one that fails is reported and never stops the others.
//! - **Chain** ([`Manager::dispatch`](crate::Manager::dispatch)): subscribers run one after
//!   another, higher `priority` first, ties by plugin id. Each returns nothing (no change),
//!   `{cancel: true}` (stop; the host learns who cancelled) or `{payload: …}` (what later
//!   subscribers and the host see). A failing subscriber is skipped and reported.
//! - **Commands** ([`Manager::run_command`](crate::Manager::run_command)): `PLUGIN:COMMAND`
//!   names for hooks a manifest declares under `commands`.
//! - **Background** notify, for events nobody waits for (emitted by plugins, lifecycle events):
//!   bounded by the number of deliveries in flight, one per subscriber.
//!
//! Everything here works on the plugin table (`registry.rs`) alone, so the manager, the
//! plugins' own `host.events.emit` and the CLI all share one implementation.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::Serialize;
use serde_json::{Value, json};

use crate::call::{CallContext, Reply};
use crate::cancel::Abort;
use crate::error::{Error, ErrorCode, Result};
use crate::handle::PluginHandle;
use crate::registry::{Registry, Subscriber};

/// What happened when one subscriber got an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Outcome {
    /// Notify: the hook ran.
    Delivered,
    /// Chain: the hook returned nothing; the payload goes on unchanged.
    Unchanged,
    /// Chain: the hook replaced the payload.
    Changed,
    /// Chain: the hook cancelled the event; later subscribers did not run.
    Cancelled,
    /// The hook failed (threw, timed out, hit its memory limit, returned something invalid);
    /// it was skipped.
    Failed,
}

/// One subscriber's part in an event.
#[derive(Debug, Clone, Serialize)]
pub struct Delivery {
    /// The subscriber.
    pub plugin: String,
    /// Its hook.
    pub hook: String,
    /// How it went.
    pub outcome: Outcome,
    /// What the hook returned (notify).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<Error>,
}

/// The outcome of [`Manager::emit`](crate::Manager::emit).
#[derive(Debug, Clone, Serialize)]
pub struct EmitReport {
    /// The event name.
    pub event: String,
    /// One entry per subscriber, in chain order.
    pub deliveries: Vec<Delivery>,
}

/// The outcome of [`Manager::dispatch`](crate::Manager::dispatch).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChainReport {
    /// The event name.
    pub event: String,
    /// The payload after every change.
    pub payload: Value,
    /// Whether a subscriber cancelled the event.
    pub cancelled: bool,
    /// Which one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cancelled_by: Option<String>,
    /// One entry per subscriber that ran, in order.
    pub deliveries: Vec<Delivery>,
}

/// A command a plugin offers, as [`Manager::commands`](crate::Manager::commands) lists it.
#[derive(Debug, Clone, Serialize)]
pub struct CommandInfo {
    /// `PLUGIN:COMMAND`, the name to run it by.
    pub name: String,
    /// The plugin.
    pub plugin: String,
    /// The command id within the plugin.
    pub id: String,
    /// Human-readable title.
    pub title: String,
    /// The hook that runs it.
    pub hook: String,
}

/// How notify deliveries reach plugins: queue a call now, get its answer later. The async
/// flavour awaits a oneshot; the blocking one waits on the calling thread (no runtime to
/// create, no extra wake-ups), so both share one emit implementation. (Chains relay instead:
/// see [`chain`].)
pub(crate) trait Caller {
    type Answer: std::future::Future<Output = Result<Value>>;
    fn call(&self, handle: &PluginHandle, hook: &str, args: Value, ctx: CallContext) -> Self::Answer;
}

pub(crate) struct AsyncCaller;

impl Caller for AsyncCaller {
    type Answer = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Value>> + Send>>;
    fn call(&self, handle: &PluginHandle, hook: &str, args: Value, ctx: CallContext) -> Self::Answer {
        Box::pin(handle.call_in(hook, args, None, ctx, None))
    }
}

pub(crate) struct BlockingCaller;

impl Caller for BlockingCaller {
    type Answer = BlockingAnswer;
    fn call(&self, handle: &PluginHandle, hook: &str, args: Value, ctx: CallContext) -> Self::Answer {
        BlockingAnswer(Some(Box::new(handle.call_in_blocking(hook, args, None, ctx))))
    }
}

/// A future that, when polled, blocks the thread until the answer is there. Only ever driven
/// by [`run_blocking`].
pub(crate) struct BlockingAnswer(Option<Box<dyn FnOnce() -> Result<Value> + Send>>);

impl std::future::Future for BlockingAnswer {
    type Output = Result<Value>;
    fn poll(mut self: std::pin::Pin<&mut Self>, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<Value>> {
        let wait = self.0.take().expect("polled after completion");
        std::task::Poll::Ready(wait())
    }
}

/// Drives a future whose every await is a [`BlockingAnswer`]: it completes in one poll.
pub(crate) fn run_blocking<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut std::task::Context::from_waker(std::task::Waker::noop())) {
        std::task::Poll::Ready(v) => v,
        std::task::Poll::Pending => unreachable!("blocking event deliveries never return Pending"),
    }
}

/// Notify: every subscriber in parallel (calls are all queued first, then awaited).
/// `call` queues one call and returns its answer-to-be; see [`Caller`].
pub(crate) async fn notify<C: Caller>(
    subs: Vec<Subscriber>,
    event: &str,
    payload: Value,
    depth: u32,
    call: C,
) -> EmitReport {
    let pending: Vec<_> = subs
        .iter()
        .map(|s| {
            let ctx = CallContext { event_depth: depth, ..Default::default() };
            call.call(&s.handle, &s.hook, json!([payload, { "event": event }]), ctx)
        })
        .collect();
    let mut deliveries = Vec::with_capacity(subs.len());
    for (s, answer) in subs.into_iter().zip(pending) {
        let (outcome, result, error) = match answer.await {
            Ok(v) => (Outcome::Delivered, Some(v), None),
            Err(e) => (Outcome::Failed, None, Some(e)),
        };
        deliveries.push(Delivery { plugin: s.plugin, hook: s.hook, outcome, result, error });
    }
    EmitReport { event: event.to_owned(), deliveries }
}

/// Chain: one subscriber after another, each seeing the payload as the previous left it.
///
/// Each hop's answer is handled on the thread that gives it (the subscriber's own), which
/// sends the next hop at once and wakes the subscriber after it a hop early: a parked
/// thread's wake-up (~10 µs here) then overlaps the hop before instead of following it
/// (10 plugins: 162 → 113–129 µs an event; relaying without the early wake gained nothing).
/// The caller wakes once, for the report. See [`Relay`].
pub(crate) async fn chain(registry: &Registry, event: &str, payload: Value) -> ChainReport {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let relay = Relay::new(registry, event, payload, Box::new(move |r| drop(tx.send(r))));
    // A caller that stops waiting (its future dropped) ends the chain where it is.
    let mut abandon = Abandon(Some(&relay));
    relay.start();
    let report = rx.await;
    abandon.0 = None;
    report.unwrap_or_else(|_| relay.report_so_far())
}

/// [`chain`] for non-async callers: waits on the calling thread.
pub(crate) fn chain_blocking(registry: &Registry, event: &str, payload: Value) -> ChainReport {
    let (tx, rx) = crossbeam_channel::bounded(1);
    let relay = Relay::new(registry, event, payload, Box::new(move |r| drop(tx.send(r))));
    relay.start();
    rx.recv().unwrap_or_else(|_| relay.report_so_far())
}

/// How many hops ahead a chain wakes its subscribers' threads: a parked thread takes longer
/// to wake (~10 µs here) than a short hook takes to run. (Two ahead was slower on 2 cores:
/// three threads spinning for two CPUs.)
const EXPECT_AHEAD: usize = 1;

/// Ends a chain whose caller went away: no further hop is sent, the running one is aborted.
struct Abandon<'a>(Option<&'a Relay>);

impl Drop for Abandon<'_> {
    fn drop(&mut self) {
        let Some(relay) = self.0 else { return };
        let abort = {
            let mut leg = relay.lock();
            leg.done = None;
            relay.unwatch(&mut leg);
            leg.abort.take()
        };
        if let Some(abort) = abort {
            abort.abort();
        }
    }
}

/// A chain in flight: its subscribers, what they made of the payload so far, and who hears
/// the report. Whoever learns how the hop in flight went settles it and sends the next one:
/// the subscriber's thread as it answers (a [`Reply::Func`]), the watchdog if the subscriber
/// gets stuck ([`Shared::watch_stuck`](crate::handle::Shared::watch_stuck)), the thread that
/// drops an unanswered call (a [`Hop`] token), or the sender when the call cannot be queued.
/// The hop number makes sure each hop is settled once.
///
/// Lock discipline: the leg's lock is never held while a `Hop` is dropped, a plugin is sent
/// to, or the report is handed over (each of those may come back here).
struct Relay {
    event: String,
    subs: Vec<Subscriber>,
    leg: std::sync::Mutex<Leg>,
}

struct Leg {
    /// The hop in flight (its index in `subs`).
    hop: usize,
    payload: Value,
    deliveries: Vec<Delivery>,
    cancelled_by: Option<String>,
    /// Hears the report; `None` once it has, or once the caller went away.
    done: Option<Box<dyn FnOnce(ChainReport) + Send>>,
    /// Aborts the hop in flight (for a caller that goes away).
    abort: Option<Arc<Abort>>,
    /// The stuck watcher of the hop in flight.
    watcher: Option<u64>,
}

/// What settling a hop leads to.
enum Step {
    Send(usize),
    Report(Box<dyn FnOnce(ChainReport) + Send>, ChainReport),
    /// Settled already, or the caller went away.
    Stop,
}

/// Settles its hop as lost when the call is dropped without an answer (the subscriber's
/// thread ended with it queued, or the answer's handling panicked).
struct Hop {
    /// `None` once answered.
    relay: Option<Arc<Relay>>,
    hop: usize,
}

impl Hop {
    /// The answer came. (Let go of only after it is settled: a panic while settling leaves
    /// the hop to `drop`, as lost.)
    fn answer(mut self, r: Result<Value>) {
        if let Some(relay) = &self.relay {
            relay.settle(self.hop, r);
        }
        self.relay = None;
    }
}

impl Drop for Hop {
    fn drop(&mut self) {
        if let Some(relay) = self.relay.take() {
            let lost = relay.subs[self.hop].handle.shared().lost();
            relay.settle(self.hop, Err(lost));
        }
    }
}

impl Relay {
    fn new(registry: &Registry, event: &str, payload: Value, done: Box<dyn FnOnce(ChainReport) + Send>) -> Arc<Relay> {
        Arc::new(Relay {
            event: event.to_owned(),
            subs: registry.subscribers(event),
            leg: std::sync::Mutex::new(Leg {
                hop: 0,
                payload,
                deliveries: Vec::new(),
                cancelled_by: None,
                done: Some(done),
                abort: None,
                watcher: None,
            }),
        })
    }

    /// The leg, also after a panic elsewhere (the hop numbers keep it consistent).
    fn lock(&self) -> std::sync::MutexGuard<'_, Leg> {
        self.leg.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn start(self: &Arc<Self>) {
        if self.subs.is_empty() {
            let step = self.finish(&mut self.lock());
            self.take(step);
        } else {
            self.send(0);
        }
    }

    /// Sends hop `hop`; one that cannot be queued is settled here, and the next one sent.
    fn send(self: &Arc<Self>, mut hop: usize) {
        loop {
            let s = &self.subs[hop];
            let abort = Arc::new(Abort::default());
            let args = {
                let mut leg = self.lock();
                if leg.done.is_none() {
                    return; // the caller went away
                }
                leg.abort = Some(abort.clone());
                json!([leg.payload, { "event": self.event }])
            };
            let token = Hop { relay: Some(self.clone()), hop };
            let reply = Reply::Func(Box::new(move |r| token.answer(r)));
            let shared = s.handle.shared();
            match shared.submit(&s.hook, args, None, CallContext::default(), reply, Some(abort)) {
                Ok(()) => {
                    for next in self.subs.iter().skip(hop + 1).take(EXPECT_AHEAD) {
                        next.handle.shared().expect_call();
                    }
                    // Stuck: the watchdog settles it (at once if the plugin is stuck now).
                    let relay = self.clone();
                    let stuck = Box::new(move || {
                        let e = relay.subs[hop].handle.shared().stuck_error();
                        relay.settle(hop, Err(e));
                    });
                    if let Some(key) = shared.watch_stuck(stuck) {
                        let mut leg = self.lock();
                        if leg.hop == hop && leg.done.is_some() {
                            // Still in flight: the watcher goes when it is settled.
                            leg.watcher = Some(key);
                        } else {
                            drop(leg);
                            shared.unwatch_stuck(key);
                        }
                    }
                    return;
                }
                Err((e, reply)) => {
                    // Settled here first, so that dropping the reply (its `Hop` token) after
                    // finds the hop settled instead of reporting it lost.
                    let step = self.record(hop, Err(e));
                    drop(reply);
                    match step {
                        Step::Send(next) => hop = next,
                        step => return self.take(step),
                    }
                }
            }
        }
    }

    /// Hop `hop` went as `r`: records it and sends the next hop (or reports). A hop settled
    /// already (an answer after the watchdog gave up on it) is ignored.
    fn settle(self: &Arc<Self>, hop: usize, r: Result<Value>) {
        let step = self.record(hop, r);
        self.take(step);
    }

    fn take(self: &Arc<Self>, step: Step) {
        match step {
            Step::Send(next) => self.send(next),
            Step::Report(done, report) => done(report),
            Step::Stop => {}
        }
    }

    /// Records how hop `hop` went, and says what comes next.
    fn record(&self, hop: usize, r: Result<Value>) -> Step {
        let mut leg = self.lock();
        if leg.hop != hop {
            return Step::Stop;
        }
        let s = &self.subs[hop];
        // The watcher goes with its hop, also when the caller went away meanwhile.
        self.unwatch(&mut leg);
        leg.abort = None;
        if leg.done.is_none() {
            return Step::Stop;
        }
        let r = r.map_err(|e| e.in_context(&s.plugin, Some(&s.hook)));
        let (outcome, error) = judge(s, r, &mut leg.payload);
        if outcome == Outcome::Cancelled {
            leg.cancelled_by = Some(s.plugin.clone());
        }
        leg.deliveries.push(Delivery { plugin: s.plugin.clone(), hook: s.hook.clone(), outcome, result: None, error });
        leg.hop = hop + 1;
        if outcome == Outcome::Cancelled || leg.hop == self.subs.len() {
            return self.finish(&mut leg);
        }
        Step::Send(leg.hop)
    }

    /// Drops the stuck watcher of the hop in flight. (Under the leg's lock: the lock order is
    /// leg, then the plugin's watchers, never the other way.)
    fn unwatch(&self, leg: &mut Leg) {
        if let Some(key) = leg.watcher.take() {
            self.subs[leg.hop].handle.shared().unwatch_stuck(key);
        }
    }

    /// The report, for whoever hears it (once).
    fn finish(&self, leg: &mut Leg) -> Step {
        match leg.done.take() {
            Some(done) => Step::Report(done, self.report(leg)),
            None => Step::Stop,
        }
    }

    fn report(&self, leg: &mut Leg) -> ChainReport {
        ChainReport {
            event: self.event.clone(),
            payload: std::mem::take(&mut leg.payload),
            cancelled: leg.cancelled_by.is_some(),
            cancelled_by: leg.cancelled_by.clone(),
            deliveries: std::mem::take(&mut leg.deliveries),
        }
    }

    /// What the chain did so far (for a caller whose report never came).
    fn report_so_far(&self) -> ChainReport {
        self.report(&mut self.lock())
    }
}

/// What a chain hook's answer means, and the payload it leaves.
fn judge(s: &Subscriber, r: Result<Value>, payload: &mut Value) -> (Outcome, Option<Error>) {
    match r {
        Err(e) => (Outcome::Failed, Some(e)),
        Ok(Value::Null) => (Outcome::Unchanged, None),
        Ok(Value::Object(o)) if o.get("cancel") == Some(&Value::Bool(true)) => (Outcome::Cancelled, None),
        Ok(Value::Object(mut o)) if o.contains_key("payload") => {
            *payload = o.remove("payload").unwrap_or_default();
            (Outcome::Changed, None)
        }
        Ok(other) => {
            let msg =
                format!("a chain hook must return nothing, {{cancel: true}} or {{payload: …}}; it returned {other}");
            (Outcome::Failed, Some(Error::new(ErrorCode::InvalidArgs, msg).plugin(&s.plugin).hook(&s.hook)))
        }
    }
}

/// A payload the host passed, as JSON; one that cannot be serialised fails the emit (it is
/// never sent as `null`).
pub(crate) fn payload_of(event: &str, payload: impl Serialize) -> Result<Value> {
    serde_json::to_value(payload).map_err(|e| {
        Error::new(ErrorCode::InvalidArgs, format!("the payload of event `{event}` cannot be serialised: {e}"))
    })
}

/// How many deliveries nobody waits for (plugin-emitted and lifecycle events) may be in flight
/// at once, per manager. Each subscriber of an event is one delivery.
pub const MAX_BACKGROUND_DELIVERIES: usize = 256;

/// Where deliveries nobody waits for run, and how many are in flight.
pub(crate) struct Background {
    rt: tokio::runtime::Handle,
    in_flight: AtomicUsize,
}

impl Background {
    pub(crate) fn new(rt: tokio::runtime::Handle) -> Arc<Background> {
        Arc::new(Background { rt, in_flight: AtomicUsize::new(0) })
    }

    /// Reserves `n` deliveries, or none if that would pass the bound. An event with more
    /// subscribers than the bound may still go out alone, when nothing else is in flight.
    fn reserve(&self, n: usize) -> std::result::Result<(), usize> {
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| {
                (cur == 0 || cur + n <= MAX_BACKGROUND_DELIVERIES).then_some(cur + n)
            })
            .map(drop)
    }
}

/// Notifies `event`'s subscribers without waiting; returns how many there are. Refuses with
/// `BUSY` when their deliveries would pass [`MAX_BACKGROUND_DELIVERIES`].
pub(crate) fn notify_in_background(
    registry: &Arc<Registry>,
    bg: &Arc<Background>,
    event: &str,
    payload: Value,
    depth: u32,
) -> Result<usize> {
    let subs = registry.subscribers(event);
    let n = subs.len();
    if n == 0 {
        return Ok(0);
    }
    if let Err(in_flight) = bg.reserve(n) {
        return Err(Error::new(
            ErrorCode::Busy,
            format!(
                "event `{event}` not emitted: {in_flight} of at most {MAX_BACKGROUND_DELIVERIES} deliveries are already being delivered ({n} more needed)"
            ),
        ));
    }
    let event = event.to_owned();
    let counter = bg.clone();
    bg.rt.spawn(async move {
        let report = notify(subs, &event, payload, depth, AsyncCaller).await;
        counter.in_flight.fetch_sub(n, Ordering::AcqRel);
        for d in report.deliveries.iter().filter(|d| d.error.is_some()) {
            tracing::warn!(plugin = %d.plugin, "event `{event}`: {}", d.error.as_ref().unwrap());
        }
    });
    Ok(n)
}

/// Every command the plugins declare, as `PLUGIN:COMMAND`.
pub(crate) fn commands(registry: &Registry) -> Vec<CommandInfo> {
    registry
        .commands()
        .into_iter()
        .map(|c| CommandInfo {
            name: format!("{}:{}", c.plugin, c.spec.id),
            plugin: c.plugin,
            id: c.spec.id,
            title: c.spec.title,
            hook: c.spec.hook,
        })
        .collect()
}

/// The handle and hook behind a `PLUGIN:COMMAND` name; `COMMAND_NOT_FOUND` with close matches.
pub(crate) fn command(registry: &Registry, name: &str) -> Result<(PluginHandle, String)> {
    let all = registry.commands();
    if let Some(c) = all.iter().find(|c| format!("{}:{}", c.plugin, c.spec.id) == name) {
        return Ok((c.handle.clone(), c.spec.hook.clone()));
    }
    let names: Vec<String> = all.iter().map(|c| format!("{}:{}", c.plugin, c.spec.id)).collect();
    let mut close: Vec<(usize, &str)> = names
        .iter()
        .map(|c| (distance(c, name), c.as_str()))
        .filter(|(d, c)| *d <= 3 || c.contains(name) || name.contains(c))
        .collect();
    close.sort();
    let hint = if close.is_empty() {
        if names.is_empty() {
            "no plugin declares commands".to_owned()
        } else {
            format!("commands: {}", names.join(", "))
        }
    } else {
        let names: Vec<&str> = close.iter().take(3).map(|(_, n)| *n).collect();
        format!("did you mean {}?", names.join(", "))
    };
    Err(Error::new(ErrorCode::CommandNotFound, format!("no command `{name}`; {hint}")))
}

/// Edit distance between two short names (for "did you mean").
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}
