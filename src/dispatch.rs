//! Events, hook chains and commands: how the host (and plugins) reach *several* plugins by a
//! name instead of one plugin by id.
//!
//! - **Notify** ([`Manager::emit`]): every subscriber gets the event, in parallel; one that
//!   fails is reported and never stops the others.
//! - **Chain** ([`Manager::dispatch`]): subscribers run one after another, higher `priority`
//!   first, ties by plugin id. Each returns nothing (no change), `{cancel: true}` (stop; the
//!   host learns who cancelled) or `{payload: …}` (what later subscribers and the host see).
//!   A failing subscriber is skipped and reported.
//! - **Commands** ([`Manager::run_command`]): `PLUGIN:COMMAND` names for hooks a manifest
//!   declares under `commands`.

use serde::Serialize;
use serde_json::{Value, json};

use crate::error::{Error, ErrorCode, Result};
use crate::handle::{CallContext, PluginHandle, PluginStatus};
use crate::manager::{Inner, Manager};

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

/// The outcome of [`Manager::emit`].
#[derive(Debug, Clone, Serialize)]
pub struct EmitReport {
    /// The event name.
    pub event: String,
    /// One entry per subscriber, in chain order.
    pub deliveries: Vec<Delivery>,
}

/// The outcome of [`Manager::dispatch`].
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

/// A command a plugin offers, as [`Manager::commands`] lists it.
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
        Box::pin(handle.call_in(hook, args, None, ctx))
    }
}

struct BlockingCaller;

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
fn run_blocking<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut std::task::Context::from_waker(std::task::Waker::noop())) {
        std::task::Poll::Ready(v) => v,
        std::task::Poll::Pending => unreachable!("blocking event deliveries never return Pending"),
    }
}

/// One subscriber of an event.
pub(crate) struct Subscriber {
    plugin: String,
    hook: String,
    handle: PluginHandle,
}

impl Inner {
    /// The running plugins subscribed to `event`, in chain order: higher priority first, then
    /// plugin id.
    pub(crate) fn subscribers(&self, event: &str) -> Vec<Subscriber> {
        let plugins = self.plugins();
        let mut subs: Vec<(i64, Subscriber)> = plugins
            .iter()
            .filter(|(_, e)| matches!(e.handle.status(), PluginStatus::Ready | PluginStatus::Restarting))
            .flat_map(|(id, e)| {
                e.events.iter().filter(|s| s.event == event).map(|s| {
                    (s.priority, Subscriber { plugin: id.clone(), hook: s.hook.clone(), handle: e.handle.clone() })
                })
            })
            .collect();
        subs.sort_by(|(pa, a), (pb, b)| pb.cmp(pa).then_with(|| a.plugin.cmp(&b.plugin)));
        subs.into_iter().map(|(_, s)| s).collect()
    }

    /// Notify: every subscriber in parallel (calls are all queued first, then awaited).
    /// `call` queues one call and returns its answer-to-be; see [`Caller`].
    pub(crate) async fn emit_with<C: Caller>(&self, event: &str, payload: Value, depth: u32, call: C) -> EmitReport {
        let subs = self.subscribers(event);
        let pending: Vec<_> = subs
            .iter()
            .map(|s| {
                let ctx = CallContext { chain: Vec::new(), event_depth: depth };
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
    pub(crate) async fn dispatch_with<C: Caller>(&self, event: &str, mut payload: Value, call: C) -> ChainReport {
        let mut deliveries = Vec::new();
        let mut cancelled_by = None;
        for s in self.subscribers(event) {
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

    pub(crate) fn commands(&self) -> Vec<CommandInfo> {
        let plugins = self.plugins();
        plugins
            .iter()
            .flat_map(|(id, e)| {
                e.commands.iter().map(move |c| CommandInfo {
                    name: format!("{id}:{}", c.id),
                    plugin: id.clone(),
                    id: c.id.clone(),
                    title: c.title.clone(),
                    hook: c.hook.clone(),
                })
            })
            .collect()
    }

    /// The handle and hook behind a `PLUGIN:COMMAND` name.
    pub(crate) fn command(&self, name: &str) -> Result<(PluginHandle, String)> {
        let commands = self.commands();
        if let Some(c) = commands.iter().find(|c| c.name == name) {
            let handle = self.plugins().get(&c.plugin).map(|e| e.handle.clone());
            if let Some(h) = handle {
                return Ok((h, c.hook.clone()));
            }
        }
        let mut close: Vec<(usize, &str)> = commands
            .iter()
            .map(|c| (distance(&c.name, name), c.name.as_str()))
            .filter(|(d, c)| *d <= 3 || c.contains(name) || name.contains(c))
            .collect();
        close.sort();
        let hint = if close.is_empty() {
            let all: Vec<&str> = commands.iter().map(|c| c.name.as_str()).collect();
            if all.is_empty() {
                "no plugin declares commands".to_owned()
            } else {
                format!("commands: {}", all.join(", "))
            }
        } else {
            let names: Vec<&str> = close.iter().take(3).map(|(_, n)| *n).collect();
            format!("did you mean {}?", names.join(", "))
        };
        Err(Error::new(ErrorCode::CommandNotFound, format!("no command `{name}`; {hint}")))
    }
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

impl Manager {
    /// Notifies every plugin subscribed to `event` (manifest `events`), in parallel, and
    /// reports each delivery. Subscribers get `(payload, {event})`.
    ///
    /// ```no_run
    /// # async fn demo(manager: isola::Manager) {
    /// let report = manager.emit("user-joined", serde_json::json!({"name": "Ada"})).await;
    /// for d in report.deliveries.iter().filter(|d| d.error.is_some()) {
    ///     eprintln!("{} failed: {}", d.plugin, d.error.as_ref().unwrap());
    /// }
    /// # }
    /// ```
    pub async fn emit(&self, event: &str, payload: impl Serialize) -> EmitReport {
        let payload = serde_json::to_value(payload).unwrap_or_default();
        self.inner().emit_with(event, payload, 0, AsyncCaller).await
    }

    /// [`emit`](Self::emit) for non-async code: waits on the calling thread.
    pub fn emit_blocking(&self, event: &str, payload: impl Serialize) -> EmitReport {
        let payload = serde_json::to_value(payload).unwrap_or_default();
        run_blocking(self.inner().emit_with(event, payload, 0, BlockingCaller))
    }

    /// Runs `event` through its subscribers as a chain (see the module docs): each may leave
    /// the payload, replace it, or cancel the event.
    ///
    /// ```no_run
    /// # async fn demo(manager: isola::Manager) {
    /// let r = manager.dispatch("chat", serde_json::json!({"user": "ada", "text": "hi :)"})).await;
    /// if let Some(who) = &r.cancelled_by {
    ///     println!("blocked by {who}");
    /// } else {
    ///     println!("deliver {}", r.payload);
    /// }
    /// # }
    /// ```
    pub async fn dispatch(&self, event: &str, payload: impl Serialize) -> ChainReport {
        let payload = serde_json::to_value(payload).unwrap_or_default();
        self.inner().dispatch_with(event, payload, AsyncCaller).await
    }

    /// [`dispatch`](Self::dispatch) for non-async code: waits on the calling thread.
    pub fn dispatch_blocking(&self, event: &str, payload: impl Serialize) -> ChainReport {
        let payload = serde_json::to_value(payload).unwrap_or_default();
        run_blocking(self.inner().dispatch_with(event, payload, BlockingCaller))
    }

    /// Every command the loaded plugins declare, as `PLUGIN:COMMAND`.
    pub fn commands(&self) -> Vec<CommandInfo> {
        self.inner().commands()
    }

    /// Runs command `name` (`PLUGIN:COMMAND`) with `args` (as for
    /// [`PluginHandle::call_blocking`]). An unknown name is `COMMAND_NOT_FOUND`, listing close
    /// matches.
    pub fn run_command<A: Serialize>(&self, name: &str, args: A) -> Result<Value> {
        let (handle, hook) = self.inner().command(name)?;
        handle.call_blocking(&hook, args)
    }
}
