//! One client of `isola serve` (stdio, or one WebSocket connection): its handshake, its
//! plugins and host API, its requests in flight.
//!
//! A session starts uninitialized; `initialize` gives it the client's host API and loads the
//! plugin directory with it, so every session has plugins of its own. Requests are answered
//! as they finish, not in arrival order (calls to different plugins run in parallel); those
//! read while `initialize` runs wait for it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use isola::permissions::Policy;
use isola::{CallOptions, CancelToken, Engine, HostApi, Manager};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;

use super::client_host::{ClientCalls, HostDecl};
use super::protocol::{
    Failure, INVALID_REQUEST, Incoming, METHOD_NOT_FOUND, METHODS, NOT_INITIALIZED, PARSE_ERROR, PROTOCOL_VERSION,
    UNAUTHORIZED, args_param, bad_params, error, str_param, success,
};

/// What every session of one `isola serve` shares.
pub struct Context {
    /// The plugin directory each session loads.
    pub dir: PathBuf,
    /// Reload plugins when their files change.
    pub watch: bool,
    /// The token a client must present (`--token`), if any.
    pub token: Option<String>,
    /// Makes a session's engine from its client's host API and policy (the CLI's limits,
    /// storage and isolation around them).
    pub engine: Box<dyn Fn(HostApi, Policy) -> Engine + Send + Sync>,
}

/// What happens to requests in flight when the client's input ends.
#[derive(Clone, Copy, PartialEq)]
pub enum AtEnd {
    /// They are answered, then the session ends (stdio: the client closed stdin but reads on).
    Answer,
    /// They are cancelled (a WebSocket client that disconnected cannot read answers).
    Cancel,
}

pub struct Session {
    ctx: Arc<Context>,
    out: mpsc::Sender<String>,
    manager: OnceLock<Arc<Manager>>,
    /// The lifecycle events of `manager`, until they are forwarded.
    events: Mutex<Option<isola::events::LifecycleEvents>>,
    /// Calls in flight by request id, so that `cancel` can reach them.
    calls: Mutex<HashMap<String, CancelToken>>,
    client: Arc<ClientCalls>,
    /// The connection already proved the token (an `Authorization` header).
    authorized: bool,
    /// Set when the session must end (a wrong token).
    closing: AtomicBool,
    /// `initialize` is running; requests wait until it is done (`initialized` says when).
    initializing: AtomicBool,
    initialized: tokio::sync::Notify,
}

/// The parameters of `initialize`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct InitParams {
    protocol_version: Value,
    #[serde(default)]
    client_info: Option<Value>,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    host: HostDecl,
    #[serde(default)]
    policy: PolicyDecl,
}

/// Grants and refusals by plugin id (`"*"`: every plugin), as [`Policy`].
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PolicyDecl {
    #[serde(default)]
    grant: HashMap<String, Vec<String>>,
    #[serde(default)]
    deny: HashMap<String, Vec<String>>,
}

impl PolicyDecl {
    fn policy(&self) -> Policy {
        let mut p = Policy::default();
        for (plugin, perms) in &self.grant {
            for perm in perms {
                p = p.grant(plugin, perm);
            }
        }
        for (plugin, perms) in &self.deny {
            for perm in perms {
                p = p.deny(plugin, perm);
            }
        }
        p
    }
}

/// Requests of one session running at once; more wait (see [`Session::run`]).
pub const MAX_IN_FLIGHT: usize = 256;
/// How many requests, and how much request text, may wait for a place before isola stops
/// reading the client.
pub const MAX_WAITING: usize = 1024;
pub const MAX_WAITING_BYTES: usize = 16 << 20;

/// A request (or a batch) read but not started.
enum Job {
    One { id: Option<Value>, method: String, params: Value },
    Batch(Vec<Value>),
}

/// The requests waiting for a place, in arrival order, and the size of their text.
#[derive(Default)]
struct Waiting {
    jobs: std::collections::VecDeque<(Job, usize)>,
    bytes: usize,
}

impl Waiting {
    fn push(&mut self, job: Job, size: usize) {
        self.bytes += size;
        self.jobs.push_back((job, size));
    }

    fn has_room(&self) -> bool {
        self.jobs.len() < MAX_WAITING && self.bytes < MAX_WAITING_BYTES
    }

    fn front(&self) -> Option<&Job> {
        self.jobs.front().map(|(j, _)| j)
    }

    fn pop(&mut self) -> Option<Job> {
        let (job, size) = self.jobs.pop_front()?;
        self.bytes -= size;
        Some(job)
    }
}

/// The key a request id is filed under (ids are numbers or strings in JSON-RPC).
fn id_key(id: &Value) -> String {
    id.to_string()
}

/// Compares without stopping at the first difference, so that timing does not tell a client
/// how much of a guessed token was right.
pub fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Session {
    pub fn new(ctx: Arc<Context>, out: mpsc::Sender<String>, authorized: bool) -> Arc<Session> {
        let client = ClientCalls::new(out.clone());
        Arc::new(Session {
            ctx,
            out,
            manager: OnceLock::new(),
            events: Mutex::default(),
            calls: Mutex::default(),
            client,
            authorized,
            closing: AtomicBool::new(false),
            initializing: AtomicBool::new(false),
            initialized: tokio::sync::Notify::new(),
        })
    }

    /// Serves the client's messages until its input ends (or the session must close).
    ///
    /// Backpressure, so that a client that stops reading stops being read instead of growing
    /// isola's memory: a message is read only while the output queue has room; at most
    /// [`MAX_IN_FLIGHT`] requests run at once (each holds its place until its answer is
    /// queued), and requests beyond that wait, up to [`MAX_WAITING`] of them ([`MAX_WAITING_BYTES`] of text), before
    /// reading stops. Answers to isola's own requests are taken while requests wait, so a
    /// plugin waiting for the client's answer is never stuck behind a request waiting for it.
    pub async fn run(self: Arc<Self>, mut incoming: mpsc::Receiver<String>, at_end: AtEnd) {
        let mut tasks = JoinSet::new();
        let places = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        let mut waiting = Waiting::default();
        loop {
            if self.closing.load(Ordering::Relaxed) {
                break;
            }
            // While `initialize` runs, requests wait (answers to its host requests do not).
            let paused = self.initializing.load(Ordering::Acquire);
            while !paused && waiting.front().is_some() {
                let Ok(place) = places.clone().try_acquire_owned() else { break };
                let job = waiting.pop().expect("a job is waiting");
                self.start(job, place, &mut tasks);
            }
            let full = self.out.capacity() == 0;
            tokio::select! {
                () = self.initialized.notified(), if paused => {}
                place = places.clone().acquire_owned(), if !paused && waiting.front().is_some() => {
                    if let (Ok(place), Some(job)) = (place, waiting.pop()) {
                        self.start(job, place, &mut tasks);
                    }
                }
                room = self.out.reserve(), if full => {
                    if room.is_err() {
                        break; // nobody writes our output any more
                    }
                }
                text = incoming.recv(), if !full && waiting.has_room() => {
                    let Some(text) = text else { break };
                    while tasks.try_join_next().is_some() {}
                    self.receive(text, &mut waiting, &mut tasks).await;
                }
            }
        }
        self.client.close("the client can no longer answer (its input ended)");
        if at_end == AtEnd::Cancel {
            for token in self.calls.lock().unwrap().values() {
                token.cancel();
            }
        } else {
            // Everything read is answered.
            while self.initializing.load(Ordering::Acquire) {
                self.initialized.notified().await;
            }
            while let Some(job) = waiting.pop() {
                let place = places.clone().acquire_owned().await.expect("the semaphore is never closed");
                self.start(job, place, &mut tasks);
            }
        }
        while tasks.join_next().await.is_some() {}
        if let Some(m) = self.manager.get().cloned() {
            let _ = tokio::task::spawn_blocking(move || m.shutdown()).await;
        }
        // The writer stops here, after what was queued before (see `END`).
        let _ = self.out.send(String::from(super::END)).await;
    }

    fn start(self: &Arc<Self>, job: Job, place: OwnedSemaphorePermit, tasks: &mut JoinSet<()>) {
        let me = self.clone();
        tasks.spawn(async move {
            me.run_job(job).await;
            drop(place);
        });
    }

    async fn run_job(self: &Arc<Self>, job: Job) {
        let reply = match job {
            Job::One { id, method, params } => self.answer(id, &method, params).await,
            Job::Batch(items) => {
                let replies = self.batch(items).await;
                (!replies.is_empty()).then_some(Value::Array(replies))
            }
        };
        if let Some(reply) = reply {
            self.send(reply).await;
        }
    }

    /// Starts `initialize` (alone, or in a batch) at once. Requests read meanwhile wait for
    /// it; answers are still read, so that plugins may use the client's host functions while
    /// they load.
    async fn begin_initialize(self: &Arc<Self>, job: Job, tasks: &mut JoinSet<()>) {
        if self.initializing.swap(true, Ordering::AcqRel) {
            if let Job::One { id: Some(id), .. } = job {
                self.send(error(id, INVALID_REQUEST, "`initialize` is already in progress")).await;
            }
            return;
        }
        let me = self.clone();
        tasks.spawn(async move {
            me.run_job(job).await;
            me.forward_events();
            me.initializing.store(false, Ordering::Release);
            me.initialized.notify_one();
        });
    }

    async fn send(&self, msg: Value) {
        // Only the text waits for room in the queue, not the value as well.
        let text = msg.to_string();
        drop(msg);
        let _ = self.out.send(text).await;
    }

    /// Takes one message: answers at once, `initialize` started, requests into `waiting`.
    async fn receive(self: &Arc<Self>, text: String, waiting: &mut Waiting, tasks: &mut JoinSet<()>) {
        if text.trim().is_empty() {
            return;
        }
        let size = text.len();
        let msg: Value = match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(e) => return self.send(error(Value::Null, PARSE_ERROR, format!("parse error: {e}"))).await,
        };
        match msg {
            Value::Array(items) if items.is_empty() => {
                self.send(error(Value::Null, INVALID_REQUEST, "invalid request: an empty batch")).await;
            }
            Value::Array(items) if items.iter().any(|i| i.get("method") == Some(&json!("initialize"))) => {
                self.begin_initialize(Job::Batch(items), tasks).await;
            }
            Value::Array(items) => waiting.push(Job::Batch(items), size),
            msg => match Incoming::classify(msg) {
                Incoming::Request { id, method, params } if method == "initialize" => {
                    self.begin_initialize(Job::One { id, method, params }, tasks).await;
                }
                // Refused as it is read, so that no request before `initialize` slips through.
                Incoming::Request { id, .. }
                    if self.manager.get().is_none() && !self.initializing.load(Ordering::Acquire) =>
                {
                    if let (Some(id), Err(f)) = (id, self.manager()) {
                        self.send(f.into_reply(id)).await;
                    }
                }
                Incoming::Request { id, method, params } => waiting.push(Job::One { id, method, params }, size),
                Incoming::Answer { id, outcome } => {
                    if !self.client.resolve(&id, outcome) {
                        tracing::debug!("an answer to {id}, which nobody waits for (it timed out or was cancelled)");
                    }
                }
                Incoming::Invalid(reply) => self.send(reply).await,
            },
        }
    }

    /// A batch: its requests run in parallel (an `initialize` in it first), its answers to
    /// isola's requests are taken, and the replies come back together, in order.
    async fn batch(self: &Arc<Self>, items: Vec<Value>) -> Vec<Value> {
        let mut replies = Vec::new();
        let mut running = Vec::new();
        // `initialize` first, wherever it is in the batch: the other requests need it.
        let (first, items): (Vec<Value>, Vec<Value>) =
            items.into_iter().partition(|i| i.get("method").and_then(Value::as_str) == Some("initialize"));
        for item in first.into_iter().chain(items) {
            match Incoming::classify(item) {
                Incoming::Request { id, method, params } if method == "initialize" => {
                    replies.extend(self.answer(id, &method, params).await);
                    self.forward_events();
                }
                Incoming::Request { id, method, params } => {
                    let me = self.clone();
                    running.push(tokio::spawn(async move { me.answer(id, &method, params).await }));
                }
                Incoming::Answer { id, outcome } => {
                    self.client.resolve(&id, outcome);
                }
                Incoming::Invalid(reply) => replies.push(reply),
            }
        }
        for r in running {
            if let Ok(Some(reply)) = r.await {
                replies.push(reply);
            }
        }
        replies
    }

    /// Runs one request; the reply to send, `None` for a notification.
    async fn answer(self: &Arc<Self>, id: Option<Value>, method: &str, params: Value) -> Option<Value> {
        let outcome = self.run_method(method, params, id.as_ref()).await;
        let id = id?;
        Some(match outcome {
            Ok(result) => success(id, result),
            Err(f) => f.into_reply(id),
        })
    }

    fn manager(&self) -> Result<&Arc<Manager>, Failure> {
        self.manager.get().ok_or_else(|| {
            Failure::protocol(
                NOT_INITIALIZED,
                format!(
                    "the session is not initialized: send `initialize` first (isola speaks protocol version {PROTOCOL_VERSION})"
                ),
            )
        })
    }

    async fn run_method(self: &Arc<Self>, method: &str, params: Value, id: Option<&Value>) -> Result<Value, Failure> {
        if method == "initialize" {
            return self.initialize(params).await;
        }
        let manager = self.manager()?.clone();
        match method {
            "call" => {
                let plugin = str_param(&params, "plugin")?;
                let hook = str_param(&params, "hook")?;
                let args = args_param(&params)?;
                let mut opts = CallOptions::default();
                match params.get("timeoutMs") {
                    None | Some(Value::Null) => {}
                    Some(v) => {
                        let ms = v.as_u64().ok_or_else(|| bad_params("`timeoutMs` must be a positive integer"))?;
                        opts = opts.timeout(Duration::from_millis(ms));
                    }
                }
                let handle = manager.handle(plugin)?;
                // A call with an id can be aborted by a `cancel` naming it, and is when the
                // client disconnects.
                let token = CancelToken::new();
                let key = id.map(id_key).unwrap_or_else(|| format!("notification-{:p}", &token));
                self.calls.lock().unwrap().insert(key.clone(), token.clone());
                let r = handle.call_with::<_, Value>(hook, args, opts.cancel(&token)).await;
                self.calls.lock().unwrap().remove(&key);
                Ok(r?)
            }
            "cancel" => {
                // Usually a notification; the aborted call itself answers with `ABORTED`.
                let target = params.get("id").ok_or_else(|| bad_params("`id` (the request to cancel) is required"))?;
                let token = self.calls.lock().unwrap().get(&id_key(target)).cloned();
                Ok(Value::Bool(token.inspect(CancelToken::cancel).is_some()))
            }
            "emit" => {
                let event = str_param(&params, "event")?;
                let payload = params.get("payload").cloned().unwrap_or(Value::Null);
                Ok(to_json(manager.emit(event, payload).await?))
            }
            "dispatch" => {
                let event = str_param(&params, "event")?;
                let payload = params.get("payload").cloned().unwrap_or(Value::Null);
                Ok(to_json(manager.dispatch(event, payload).await?))
            }
            "commands" => Ok(to_json(manager.commands())),
            "command" => {
                let name = str_param(&params, "name")?.to_owned();
                let args = args_param(&params)?;
                blocking(move || manager.run_command(&name, args)).await
            }
            "list" => Ok(to_json(manager.list())),
            "stats" => {
                let stats: serde_json::Map<String, Value> =
                    manager.list().into_iter().map(|p| (p.id, to_json(p.stats))).collect();
                Ok(Value::Object(stats))
            }
            "load" => {
                let plugin = str_param(&params, "plugin")?.to_owned();
                let dir = self.ctx.dir.clone();
                blocking(move || {
                    let path = crate::cli::find_plugin(&dir, &plugin)?;
                    manager.load(path)?;
                    Ok(to_json(manager.list().into_iter().find(|p| p.id == plugin)))
                })
                .await
            }
            "reload" => {
                let plugin = str_param(&params, "plugin")?.to_owned();
                blocking(move || manager.reload(&plugin).map(|()| Value::Bool(true))).await
            }
            "unload" => {
                let plugin = str_param(&params, "plugin")?.to_owned();
                blocking(move || manager.unload(&plugin).map(|()| Value::Bool(true))).await
            }
            other => Err(Failure::protocol(
                METHOD_NOT_FOUND,
                format!("method not found: `{other}` (methods: {})", METHODS.join(", ")),
            )),
        }
    }

    /// The handshake: checks the protocol version and token, builds the client's host API,
    /// loads the plugins with it.
    async fn initialize(self: &Arc<Self>, params: Value) -> Result<Value, Failure> {
        if self.manager.get().is_some() {
            return Err(Failure::protocol(INVALID_REQUEST, "the session is already initialized"));
        }
        let p: InitParams = serde_json::from_value(params).map_err(bad_params)?;
        if p.protocol_version != json!(PROTOCOL_VERSION) {
            return Err(Failure::Protocol(
                super::protocol::INVALID_PARAMS,
                format!(
                    "protocol version {} is not supported: isola {} speaks protocol version {PROTOCOL_VERSION}",
                    p.protocol_version,
                    env!("CARGO_PKG_VERSION")
                ),
                Some(json!({"protocolVersion": PROTOCOL_VERSION})),
            ));
        }
        if let Some(expected) = &self.ctx.token
            && !self.authorized
            && !p.token.as_deref().is_some_and(|t| same_token(t, expected))
        {
            // No plugin code has run for this client, and none will.
            self.closing.store(true, Ordering::Relaxed);
            return Err(Failure::protocol(UNAUTHORIZED, "wrong or missing token: the connection is closed"));
        }
        let host = self.client.host_api(p.host).map_err(bad_params)?;
        let engine = (self.ctx.engine)(host, p.policy.policy());
        let (dir, watch) = (self.ctx.dir.clone(), self.ctx.watch);
        let name = p.client_info.as_ref().and_then(|c| c.get("name")).and_then(Value::as_str).unwrap_or("a client");
        tracing::info!("serve: {name} initialized the session");
        let (manager, events, report) = tokio::task::spawn_blocking(move || {
            let manager = Manager::new(engine);
            // Subscribed before loading, so that the client hears of every plugin loaded.
            let events = manager.events();
            let report = manager.load_dir(&dir);
            if report.is_ok()
                && watch
                && let Err(e) = manager.watch(&dir)
            {
                tracing::warn!("{e}");
            }
            (manager, events, report)
        })
        .await
        .map_err(|e| Failure::protocol(super::protocol::ISOLA_ERROR, format!("loading panicked: {e}")))?;
        let report = report?;
        for e in &report.failed {
            tracing::warn!("{e}");
        }
        let manager = Arc::new(manager);
        *self.events.lock().unwrap() = Some(events);
        let plugins = to_json(manager.list());
        let _ = self.manager.set(manager);
        Ok(json!({
            "protocolVersion": PROTOCOL_VERSION,
            "serverInfo": {"name": "isola", "version": env!("CARGO_PKG_VERSION")},
            "plugins": plugins,
            "failed": report.failed.iter().map(isola::Error::to_json).collect::<Vec<_>>(),
        }))
    }

    /// Lifecycle events (loaded, reloaded, restarted, ...) go to the client as `event`
    /// notifications, from when `initialize` has been answered. A client that stops reading
    /// holds this thread, not memory: the manager's queue for it is bounded and drops what
    /// does not fit.
    fn forward_events(&self) {
        let Some(events) = self.events.lock().unwrap().take() else { return };
        let out = self.out.clone();
        std::thread::spawn(move || {
            for e in events {
                let msg = json!({"jsonrpc": "2.0", "method": "event", "params": e});
                if out.blocking_send(msg.to_string()).is_err() {
                    break;
                }
            }
        });
    }
}

fn to_json(v: impl serde::Serialize) -> Value {
    serde_json::to_value(v).unwrap_or_default()
}

/// Runs a blocking manager operation (load, reload, unload, a command) off the async threads.
async fn blocking(op: impl FnOnce() -> isola::Result<Value> + Send + 'static) -> Result<Value, Failure> {
    tokio::task::spawn_blocking(op)
        .await
        .map_err(|e| Failure::protocol(super::protocol::ISOLA_ERROR, format!("the operation panicked: {e}")))?
        .map_err(Failure::Isola)
}
