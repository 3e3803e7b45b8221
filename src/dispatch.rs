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

use crate::call::CallContext;
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

/// How event deliveries reach plugins: queue a call now, get its answer later. The async
/// flavour awaits a oneshot; the blocking one waits on the calling thread (no runtime to
/// create, no extra wake-ups), so both share one emit/dispatch implementation.
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
pub(crate) async fn chain<C: Caller>(registry: &Registry, event: &str, mut payload: Value, call: C) -> ChainReport {
    let mut deliveries = Vec::new();
    let mut cancelled_by = None;
    for s in registry.subscribers(event) {
        let args = json!([payload, { "event": event }]);
        let r = call.call(&s.handle, &s.hook, args, CallContext::default()).await;
        let (outcome, error) = match r {
            Err(e) => (Outcome::Failed, Some(e)),
            Ok(Value::Null) => (Outcome::Unchanged, None),
            Ok(Value::Object(o)) if o.get("cancel") == Some(&Value::Bool(true)) => (Outcome::Cancelled, None),
            Ok(Value::Object(mut o)) if o.contains_key("payload") => {
                payload = o.remove("payload").unwrap_or_default();
                (Outcome::Changed, None)
            }
            Ok(other) => {
                let msg = format!(
                    "a chain hook must return nothing, {{cancel: true}} or {{payload: …}}; it returned {other}"
                );
                (Outcome::Failed, Some(Error::new(ErrorCode::InvalidArgs, msg).plugin(&s.plugin).hook(&s.hook)))
            }
        };
        let cancelled = outcome == Outcome::Cancelled;
        if cancelled {
            cancelled_by = Some(s.plugin.clone());
        }
        deliveries.push(Delivery { plugin: s.plugin, hook: s.hook, outcome, result: None, error });
        if cancelled {
            break;
        }
    }
    ChainReport { event: event.to_owned(), payload, cancelled: cancelled_by.is_some(), cancelled_by, deliveries }
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
