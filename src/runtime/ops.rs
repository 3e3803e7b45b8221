//! The only deno_core ops a plugin can reach: host-function dispatch (sync and async) and
//! console output.
//!
//! Why three generic ops instead of one op per host function: deno_core ops are declared at
//! compile time, while an embedder builds its [`HostApi`](crate::HostApi) at run time. So the
//! prelude (`js/prelude.js`) binds each `host.NAME` to one of these ops with the function's
//! index. Plain arguments and results (numbers, strings, booleans, null) cross as V8 values
//! (see [`values`](super::values)); anything else as JSON text, which also means a plugin
//! handing over a Symbol, BigInt or cyclic object gets a catchable JS error instead of
//! reaching serde.

use std::borrow::Cow;
use std::cell::RefCell;
use std::panic::AssertUnwindSafe;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use deno_core::{OpState, op2, v8};
use deno_error::{JsErrorClass, PropertyValue};

use super::peers::{NoPeers, Peers};
use super::throw::{failure_text, stop_here, throw};
use super::values;
use super::watchdog::DeadlineSlot;
use crate::call::CallContext;
use crate::cancel::CancelToken;
use crate::engine::{MAX_CALL_DEPTH, MAX_EVENT_DEPTH, MAX_MESSAGE_BYTES};
use crate::error::ErrorCode;
use crate::host::{AsyncFn, CatchUnwind, HostFnError, HostItem, SyncFn, panicked};
use crate::permissions::{CALL_PREFIX, EVENTS, STORAGE, may_call};
use crate::stats::StatsCell;
use crate::storage::{Storage, StorageError, StorageQuota, check_key};

/// A host function and, if the plugin may not call it, the permission it lacks.
struct Gated<F: ?Sized> {
    f: Arc<F>,
    missing: Option<String>,
    name: String,
}

fn check_size(what: &str, json: &str, max: usize) -> Result<(), HostOpError> {
    if json.len() > max {
        return Err(HostOpError::new(
            ErrorCode::InvalidArgs,
            format!("{what} is {} bytes as JSON; at most {max} are allowed", json.len()),
        ));
    }
    Ok(())
}

/// The call a plugin's thread is running now; host functions that call out read it.
pub(crate) struct Current {
    /// Plugins waiting up the chain (not including this one).
    pub callers: Vec<String>,
    pub event_depth: u32,
    pub deadline: Instant,
    /// Cancelled when this call ends early (timeout, abort, unload): the plugin calls and
    /// async host functions it started are abandoned with it.
    /// Made when the call first starts something (most calls never do).
    pub scope: Option<CancelToken>,
    /// Which call this is (counts up), so that `host.signal` is one per call.
    pub epoch: u32,
}

impl Current {
    /// This call's scope, made on first use.
    fn scope(&mut self) -> CancelToken {
        self.scope.get_or_insert_with(CancelToken::new).clone()
    }
}

/// Per-isolate op state: the host functions by index, who is calling, what it may do.
pub(crate) struct HostTable {
    plugin: Arc<str>,
    sync_fns: Vec<Gated<SyncFn>>,
    async_fns: Vec<Gated<AsyncFn>>,
    stats: Arc<StatsCell>,
    storage: Option<(Storage, StorageQuota)>,
    granted: Vec<String>,
    current: Rc<RefCell<Current>>,
    peers: Arc<dyn Peers>,
    /// Largest argument list (as JSON) a host function is given.
    max_args: usize,
    /// The isolate's deadline slot, to tell whether the running call has been stopped
    /// (`None` while the startup snapshot is built).
    slot: Option<Arc<DeadlineSlot>>,
}

/// What a plugin's isolate is given.
pub(crate) struct Grant<'a> {
    pub plugin: &'a str,
    pub host: &'a crate::HostApi,
    pub granted: &'a [String],
    pub stats: Arc<StatsCell>,
    /// The engine's storage and this plugin's quota.
    pub storage: (Storage, StorageQuota),
    /// The call being run, updated by the isolate before each call.
    pub current: Rc<RefCell<Current>>,
    /// The other plugins, for plugin-to-plugin calls and events.
    pub peers: Arc<dyn Peers>,
    /// Largest argument list (as JSON) a host function is given.
    pub max_args: usize,
    /// The slot the watchdog stops this isolate's calls through.
    pub slot: Arc<DeadlineSlot>,
}

impl HostTable {
    /// No host functions (used to build the startup snapshot).
    pub(crate) fn empty() -> HostTable {
        HostTable {
            plugin: "".into(),
            sync_fns: Vec::new(),
            async_fns: Vec::new(),
            stats: Arc::default(),
            storage: None,
            granted: Vec::new(),
            current: Rc::new(RefCell::new(Current {
                callers: Vec::new(),
                event_depth: 0,
                deadline: Instant::now(),
                scope: None,
                epoch: 0,
            })),
            peers: Arc::new(NoPeers),
            max_args: 0,
            slot: None,
        }
    }

    /// Splits a host API into index tables and the JSON spec the prelude builds `host` from.
    /// Gated values the plugin may not read are left out; gated functions stay (so that calling
    /// one explains itself) but refuse with `PERMISSION_DENIED`.
    pub(crate) fn build(g: Grant) -> (HostTable, serde_json::Value) {
        let holds = |name: &str| g.host.permission_of(name).filter(|p| !g.granted.iter().any(|q| q == p));
        let storage = g.granted.iter().any(|p| p == STORAGE).then_some(g.storage);
        let mut table = HostTable {
            plugin: g.plugin.into(),
            sync_fns: Vec::new(),
            async_fns: Vec::new(),
            stats: g.stats,
            storage,
            granted: g.granted.to_vec(),
            current: g.current,
            peers: g.peers,
            max_args: g.max_args,
            slot: Some(g.slot),
        };
        let mut spec = Vec::new();
        for (name, item) in g.host.items() {
            let missing = holds(name).map(str::to_owned);
            spec.push(match item {
                HostItem::Sync(f) => {
                    table.sync_fns.push(Gated { f: f.clone(), missing, name: name.to_owned() });
                    serde_json::json!({"name": name, "kind": "sync", "id": table.sync_fns.len() - 1})
                }
                HostItem::Async(f) => {
                    table.async_fns.push(Gated { f: f.clone(), missing, name: name.to_owned() });
                    serde_json::json!({"name": name, "kind": "async", "id": table.async_fns.len() - 1})
                }
                HostItem::Value(_) if missing.is_some() => continue,
                HostItem::Value(v) => serde_json::json!({"name": name, "kind": "value", "value": v}),
            });
        }
        if table.storage.is_some() {
            spec.push(serde_json::json!({"name": "storage", "kind": "storage"}));
        }
        if table.granted.iter().any(|p| p == EVENTS) {
            spec.push(serde_json::json!({"name": "events", "kind": "events"}));
        }
        if table.granted.iter().any(|p| p.starts_with(CALL_PREFIX)) {
            spec.push(serde_json::json!({"name": "plugins", "kind": "plugins"}));
        }
        (table, serde_json::Value::Array(spec))
    }

    /// Every error an op gives the plugin goes through here, so each is counted in the
    /// plugin's stats once, by its code.
    fn fail(&self, code: ErrorCode, message: String) -> HostOpError {
        self.stats.record_error(code);
        HostOpError::new(code, message)
    }

    /// Whether the running call has been stopped (its deadline passed, it was cancelled or
    /// its plugin unloaded) and the op must [`stop_here`] instead of answering.
    fn stopped(&self) -> bool {
        self.slot.as_ref().is_some_and(|s| s.fired())
    }

    /// What a sync op's host-side work `r` came to, unless the call was stopped while it ran
    /// (see [`finish`]).
    fn unless_stopped<T>(&self, r: Result<T, HostOpError>) -> Outcome<T> {
        if self.stopped() { Ok(None) } else { r.map(Some) }
    }

    /// Refuses a call the plugin holds no permission for, counting it.
    fn check<F: ?Sized>(&self, g: &Gated<F>) -> Result<(), HostOpError> {
        match &g.missing {
            None => Ok(()),
            Some(p) => Err(self.fail(
                ErrorCode::PermissionDenied,
                format!(
                    "plugin `{}` lacks the permission `{p}` that host.{} requires (add it to \"permissions\" in plugin.json)",
                    self.plugin, g.name
                ),
            )),
        }
    }
}

/// A failure as JS sees it: an `Error` (a `TypeError` for bad arguments) with a `code`
/// property naming an [`ErrorCode`].
#[derive(Debug)]
pub(crate) struct HostOpError(HostFnError);

impl HostOpError {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        HostOpError(HostFnError::new(code, message))
    }
}

impl From<crate::Error> for HostOpError {
    fn from(e: crate::Error) -> Self {
        HostOpError::new(e.code, e.to_string())
    }
}

/// A [`HostError`](crate::HostError)'s code as a JS property value: strings and numbers as
/// they are, anything else as its JSON text.
fn property(v: &serde_json::Value) -> PropertyValue {
    match v {
        serde_json::Value::String(s) => PropertyValue::String(Cow::Owned(s.clone())),
        serde_json::Value::Number(n) => PropertyValue::Number(n.as_f64().unwrap_or(f64::NAN)),
        other => PropertyValue::String(Cow::Owned(other.to_string())),
    }
}

impl std::fmt::Display for HostOpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.message)
    }
}

impl std::error::Error for HostOpError {}

impl JsErrorClass for HostOpError {
    fn get_class(&self) -> Cow<'static, str> {
        Cow::Borrowed(if self.0.code == ErrorCode::InvalidArgs { "TypeError" } else { "Error" })
    }

    fn get_message(&self) -> Cow<'static, str> {
        Cow::Owned(self.0.message.clone())
    }

    fn get_additional_properties(&self) -> deno_error::AdditionalProperties {
        let code = PropertyValue::String(Cow::Borrowed(self.0.code.as_str()));
        let mut props = vec![(Cow::Borrowed("code"), code)];
        // A host's own code and data (`HostError`); the prelude parses `hostData` into `data`.
        if let Some(d) = &self.0.detail {
            if let Some(c) = d.get("hostCode") {
                props.push((Cow::Borrowed("hostCode"), property(c)));
            }
            if let Some(data) = d.get("data") {
                props.push((Cow::Borrowed("hostData"), PropertyValue::String(Cow::Owned(data.to_string()))));
            }
        }
        Box::new(props.into_iter())
    }

    fn get_ref(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self
    }
}

/// Runs an op's host-side body, turning a panic into a `HOST_ERROR` for the plugin. Why: ops
/// are called from V8, and a panic unwinding into V8 aborts the whole process; host-side code
/// (a storage backend, a tracing subscriber, isola itself) must never be able to do that.
fn guarded<T>(body: impl FnOnce() -> Result<T, HostOpError>) -> Result<T, HostOpError> {
    std::panic::catch_unwind(AssertUnwindSafe(body)).unwrap_or_else(|p| Err(HostOpError(panicked(p))))
}

/// [`guarded`] for an async op: a panic while the future is polled becomes a `HOST_ERROR`.
async fn guarded_async<T>(body: impl Future<Output = Result<T, HostOpError>>) -> Result<T, HostOpError> {
    CatchUnwind(Box::pin(body)).await.unwrap_or_else(|p| Err(HostOpError(panicked(p))))
}

fn parse_args(args: &str) -> Result<serde_json::Value, HostOpError> {
    serde_json::from_str(args).map_err(|e| HostOpError::new(ErrorCode::InvalidArgs, format!("invalid arguments: {e}")))
}

/// What an abandoned async host function or plugin call settles with (nobody waits for it).
fn abandoned() -> HostOpError {
    HostOpError::new(ErrorCode::Aborted, "the call that started this ended early (timeout, abort or unload)")
}

fn unknown(id: u32) -> HostOpError {
    HostOpError::new(ErrorCode::HostError, format!("no host function #{id}"))
}

/// What a sync op's host-side work came to: a value, an error, or `None` when the call was
/// stopped before or while it ran.
type Outcome<T> = Result<Option<T>, HostOpError>;

/// Ends a sync op: its value made into JS by `to_js`, its error thrown (see [`throw`]), or,
/// when its call was stopped, the call ended here (see [`stop_here`]).
fn finish<'s, T>(
    scope: &mut v8::PinScope<'s, '_>,
    out: Outcome<T>,
    to_js: impl FnOnce(&mut v8::PinScope<'s, '_>, T) -> Result<v8::Local<'s, v8::Value>, HostOpError>,
) -> v8::Local<'s, v8::Value> {
    match out.map(|v| v.map(|v| to_js(scope, v))) {
        Ok(Some(Ok(v))) => v,
        Ok(None) => stop_here(scope),
        Ok(Some(Err(e))) | Err(e) => throw(scope, &e),
    }
}

/// `host.NAME(...)` for a sync host function. `args` is the argument array itself when every
/// argument is a plain primitive, or its JSON text otherwise (the prelude decides); the result
/// comes back as a JS value (see [`values`](super::values)).
#[op2]
fn op_isola_host_sync<'s>(
    scope: &mut v8::PinScope<'s, '_>,
    #[smi] id: u32,
    json: v8::Local<'s, v8::Value>,
    #[varargs] call: Option<&v8::FunctionCallbackArguments<'s>>,
) -> v8::Local<'s, v8::Value> {
    let state = deno_core::JsRuntime::op_state_from(scope);
    let out = guarded(|| {
        let state = state.borrow();
        let table = state.borrow::<HostTable>();
        let g = table.sync_fns.get(id as usize).ok_or_else(|| unknown(id))?;
        table.check(g)?;
        let args =
            values::arguments(scope, json, call, table.max_args, || format!("the argument list of host.{}", g.name))
                .map_err(HostOpError)?;
        if table.stopped() {
            return Ok(None);
        }
        let deadline = table.current.borrow().deadline;
        table.unless_stopped(crate::host::with_deadline(Some(deadline), || (g.f)(args)).map_err(HostOpError))
    });
    finish(scope, out, |scope, v| values::result(scope, v).map_err(HostOpError))
}

/// `host.storage.get/set/delete/list`, scoped to the calling plugin.
#[op2]
fn op_isola_storage<'s>(
    scope: &mut v8::PinScope<'s, '_>,
    #[smi] op: u32,
    #[string] key: &str,
    #[string] value: &str,
) -> v8::Local<'s, v8::Value> {
    let state = deno_core::JsRuntime::op_state_from(scope);
    let out = guarded(|| {
        let state = state.borrow();
        let table = state.borrow::<HostTable>();
        if table.stopped() {
            return Ok(None);
        }
        let Some((storage, quota)) = &table.storage else {
            return Err(table.fail(ErrorCode::PermissionDenied, "no storage permission".into()));
        };
        let plugin = &*table.plugin;
        let backend = storage.backend();
        let r = match op {
            0 => check_key(key).and_then(|_| backend.get(plugin, key)).map(|v| v.unwrap_or_else(|| "null".into())),
            1 => check_key(key).and_then(|_| backend.set(plugin, key, value, quota)).map(|_| "null".into()),
            2 => check_key(key).and_then(|_| backend.delete(plugin, key)).map(|b| b.to_string()),
            _ => backend.list(plugin, key).map(|keys| serde_json::to_string(&keys).unwrap_or_default()),
        };
        table.unless_stopped(r.map_err(|e| {
            let code = match &e {
                StorageError::Quota(_) => ErrorCode::QuotaExceeded,
                StorageError::InvalidKey(_) => ErrorCode::InvalidArgs,
                StorageError::Backend(_) => ErrorCode::HostError,
            };
            table.fail(code, e.to_string())
        }))
    });
    // JSON text, which the prelude parses.
    finish(scope, out, |scope, text| {
        v8::String::new(scope, &text)
            .map(Into::into)
            .ok_or_else(|| HostOpError::new(ErrorCode::HostError, "the stored value is too large for a JS string"))
    })
}

/// Resolves with the answer's JSON text, or with its error as [`failure_text`] (never rejects).
#[op2]
#[string]
async fn op_isola_host_async(state: Rc<RefCell<OpState>>, #[smi] id: u32, #[string] args: String) -> String {
    let out = guarded_async(async move {
        let (f, scope, deadline) = {
            let state = state.borrow();
            let table = state.borrow::<HostTable>();
            let g = table.async_fns.get(id as usize).ok_or_else(|| unknown(id))?;
            table.check(g)?;
            check_size(&format!("the argument list of host.{}", g.name), &args, table.max_args)?;
            let mut current = table.current.borrow_mut();
            (g.f.clone(), current.scope(), current.deadline)
        };
        let args = parse_args(&args)?;
        let call = crate::host::with_deadline(Some(deadline), || f(args));
        let out = tokio::select! {
            out = call => out.map_err(HostOpError)?,
            // The call that started it ended early: drop the host's future.
            () = scope.cancelled() => return Err(abandoned()),
        };
        Ok(out.to_string())
    })
    .await;
    out.unwrap_or_else(|e| failure_text(&e))
}

/// Where `console.*` goes instead of `tracing`: set once in a process worker, whose lines
/// belong in its host's log.
type ConsoleSink = Box<dyn Fn(&str, u32, &str) + Send + Sync>;
static CONSOLE: std::sync::OnceLock<ConsoleSink> = std::sync::OnceLock::new();

/// Sends every plugin's console output in this process to `sink` (plugin, level, line).
pub(crate) fn set_console(sink: ConsoleSink) {
    let _ = CONSOLE.set(sink);
}

/// `console.*` → `tracing`, target `isola::plugin`, with the plugin id as a field.
#[op2(fast)]
fn op_isola_log(state: &mut OpState, #[smi] level: u32, #[string] msg: &str) {
    // A subscriber the host installed may panic; the plugin's log line is not worth the process.
    let _ = guarded(|| {
        let plugin: &str = &state.borrow::<HostTable>().plugin;
        match CONSOLE.get() {
            Some(sink) => sink(plugin, level, msg),
            None => crate::call::log_line(plugin, level, msg),
        }
        Ok(())
    });
}

/// Which call the plugin is in (for `host.signal`, one per call).
#[op2(fast)]
#[smi]
fn op_isola_call_epoch(state: &mut OpState) -> u32 {
    state.borrow::<HostTable>().current.borrow().epoch
}

/// `host.plugins.call(plugin, hook, ...args)`: runs a hook of another plugin, in that plugin's
/// isolate, within what is left of this call's deadline. A call back into a plugin already
/// waiting up the chain (A → B → A) is refused at once instead of deadlocking.
/// Resolves like [`op_isola_host_async`].
#[op2]
#[string]
async fn op_isola_call(
    state: Rc<RefCell<OpState>>,
    #[string] plugin: String,
    #[string] hook: String,
    #[string] args: String,
) -> String {
    let out = guarded_async(async move {
        let answer = {
            let state = state.borrow();
            let table = state.borrow::<HostTable>();
            if !may_call(&table.granted, &plugin) {
                return Err(table.fail(
                    ErrorCode::PermissionDenied,
                    format!(
                        "plugin `{}` lacks the permission `call:{plugin}` needed to call plugin `{plugin}`",
                        table.plugin
                    ),
                ));
            }
            let mut current = table.current.borrow_mut();
            let mut chain = current.callers.clone();
            chain.push(table.plugin.to_string());
            if chain.contains(&plugin) {
                let path = chain.join(" → ");
                return Err(table.fail(
                    ErrorCode::CallCycle,
                    format!(
                        "{path} → {plugin}: `{plugin}` is already waiting in this call chain; re-entrant calls are refused"
                    ),
                ));
            }
            if chain.len() >= MAX_CALL_DEPTH {
                return Err(table.fail(
                    ErrorCode::CallDepth,
                    format!("plugin call chains are limited to {MAX_CALL_DEPTH} plugins ({})", chain.join(" → ")),
                ));
            }
            check_size("the argument list", &args, MAX_MESSAGE_BYTES)?;
            let remaining = current.deadline.saturating_duration_since(Instant::now());
            let deadline = Some(current.deadline);
            let ctx = CallContext { chain, event_depth: current.event_depth, cancel: Some(current.scope()), deadline };
            table
                .peers
                .call(&table.plugin, &plugin, &hook, parse_args(&args)?, remaining, ctx)
                .map_err(|e| table.fail(e.code, e.to_string()))?
        };
        match answer.await {
            Ok(v) => Ok(v.to_string()),
            // The callee's failure is also this plugin's: counted here, where it arrives.
            Err(e) => Err(state.borrow().borrow::<HostTable>().fail(e.code, e.to_string())),
        }
    })
    .await;
    out.unwrap_or_else(|e| failure_text(&e))
}

/// `host.events.emit(event, payload)`: notifies the event's subscribers in the background and
/// returns how many there are. Emits caused by emits are limited in depth, so two plugins
/// echoing each other stop.
// Not a fast call: a fast op's errors are built by deno_core's JS builder when it runs unoptimised (see [`throw`]).
#[op2]
fn op_isola_emit<'s>(
    scope: &mut v8::PinScope<'s, '_>,
    #[string] event: &str,
    #[string] payload: &str,
) -> v8::Local<'s, v8::Value> {
    let state = deno_core::JsRuntime::op_state_from(scope);
    let out = guarded(|| {
        let state = state.borrow();
        let table = state.borrow::<HostTable>();
        if !table.granted.iter().any(|p| p == EVENTS) {
            return Err(table.fail(
                ErrorCode::PermissionDenied,
                format!("plugin `{}` lacks the permission `events`", table.plugin),
            ));
        }
        let depth = table.current.borrow().event_depth + 1;
        if depth > MAX_EVENT_DEPTH {
            return Err(table.fail(
                ErrorCode::EventDepth,
                format!(
                    "event `{event}` not emitted: events emitted by event handlers may nest at most {MAX_EVENT_DEPTH} deep"
                ),
            ));
        }
        check_size("the event payload", payload, MAX_MESSAGE_BYTES)?;
        let payload = parse_args(payload)?;
        let n = table.peers.emit(event, payload, depth).map_err(|e| table.fail(e.code, e.to_string()))?;
        Ok(Some(n))
    });
    finish(scope, out, |scope, n| Ok(v8::Integer::new_from_unsigned(scope, n as u32).into()))
}

deno_core::extension!(
    isola_ops,
    ops = [
        op_isola_host_sync,
        op_isola_host_async,
        op_isola_log,
        op_isola_storage,
        op_isola_call,
        op_isola_emit,
        op_isola_call_epoch
    ],
    options = { table: HostTable },
    middleware = |op| match op.name {
        // Everything deno_core itself would expose stays unreachable: the prelude deletes
        // `Deno`, and these are disabled outright because they touch the process.
        "op_print" | "op_panic" => op.disable(),
        _ => op,
    },
    state = |state, options| {
        state.put(options.table);
    },
);
