//! One plugin's V8 isolate: creating it inside its memory budget, evaluating the plugin, and
//! calling hooks under a deadline.
//!
//! This file is the only place that talks to deno_core and V8 directly; everything above it
//! (worker thread, handle, manager) deals in JSON values and [`Error`]s.
//!
//! A hook call takes the fast path when it can: call the function, and if it returned a plain
//! value (or a promise already settled after one microtask checkpoint) convert it and return,
//! without touching tokio or deno_core's event loop. Only a promise that is still pending (the
//! hook awaits an async host function) drives the event loop, bounded by the call's deadline.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use deno_core::error::{CoreError, CoreErrorKind, JsError};
use deno_core::{JsRuntime, ModuleSpecifier, PollEventLoopOptions, RuntimeOptions, serde_v8, v8};
use serde_json::Value;

use super::loader::{LateLoader, PluginLoader, SourceCache};
use super::memory::{Breach, MemoryBudget};
use super::ops::{Current, Grant, HostTable};
use super::peers::Peers;
use super::snapshot::{PRELUDE_GLOBAL, extensions, snapshot};
use super::wasm::WasmBudget;
use super::watchdog::DeadlineSlot;
use super::web::BackgroundHint;
use crate::call::{CallContext, Inbox};
use crate::cancel::Abort;
use crate::config::PluginConfig;
use crate::engine::{InspectMode, capped};
use crate::error::{Error, ErrorCode, JsErrorInfo};
use crate::host::HostApi;
use crate::memory_guard::MemoryGuard;
use crate::source::{PluginSource, SourceKind};
use crate::stats::StatsCell;
use crate::storage::Storage;

/// The smallest memory budget an isolate can start in: deno_core's own bootstrap needs a few
/// MiB of heap, and V8 aborts the process (rather than failing) if it cannot even start.
pub(crate) const MIN_HEAP_BYTES: usize = 8 << 20;

/// Stack for a thread that runs an isolate (a plugin's, or a warm pool's): V8 stops JS
/// recursion at about 1 MiB of stack; the rest is for Rust frames and host functions.
pub(crate) const STACK_SIZE: usize = 4 << 20;

/// How long plugin code may run while an abandoned call's promises settle.
const ABANDON_LIMIT: Duration = Duration::from_millis(20);

/// What a caller needs to create an isolate.
pub(crate) struct IsolateConfig<'a> {
    /// The plugin version: its source, limits, permissions and storage quota.
    pub plugin: &'a PluginConfig,
    pub host: &'a HostApi,
    pub storage: &'a Storage,
    pub stats: Arc<StatsCell>,
    pub peers: Arc<dyn Peers>,
    /// This plugin version's files, as first read.
    pub sources: Arc<SourceCache>,
    /// The engine's limit on all plugins' memory together.
    pub guard: &'a Arc<MemoryGuard>,
    /// Whether the isolate gets V8's inspector, and where its session sender and entry URL go.
    pub inspect: InspectMode,
    pub on_inspector: &'a dyn Fn(InspectorSessions, String),
}

/// Where debugger sessions for an isolate are sent (see `runtime::inspector`).
pub(crate) type InspectorSessions =
    deno_core::futures::channel::mpsc::UnboundedSender<deno_core::InspectorSessionProxy>;

/// A loaded plugin: its runtime, its hooks, and its memory budget.
pub(crate) struct PluginIsolate {
    // Dropped first: the isolate must go before the budget its allocator points into (the
    // allocator holds its own reference, so this is belt and braces).
    runtime: JsRuntime,
    recv: v8::Global<v8::Value>,
    hooks: BTreeMap<String, v8::Global<v8::Function>>,
    budget: Arc<MemoryBudget>,
    /// How values and errors leave the isolate.
    conv: Converter,
    calls_since_heap_check: u32,
    /// What host functions see as "the call being run" (shared with the op state).
    current: Rc<RefCell<Current>>,
    /// The prelude's `settle` helper (see the end of `js/prelude.js`).
    settle: v8::Global<v8::Function>,
    /// The prelude's `abortCall` helper: aborts the running call's `host.signal`.
    abort_call: v8::Global<v8::Function>,
    /// The web globals' `restartTimers`: after a termination cut the timer pump off.
    restart_timers: v8::Global<v8::Function>,
    /// Set when the plugin may have work pending after a call (see [`Self::background`]).
    hint: BackgroundHint,
    /// The module loader (bound to this plugin's folder), for what it knows about a failed load.
    loader: Rc<LateLoader>,
    /// V8's inspector is on: a debugger may pause the plugin at any point, and its messages
    /// are served while the plugin is idle.
    inspect: bool,
    /// Wait for a debugger and pause before the plugin's first line (`--inspect-brk`).
    break_on_start: bool,
}

impl Drop for PluginIsolate {
    fn drop(&mut self) {
        // Before the isolate goes (fields drop after this): its wasm memories' stores are let
        // go while it still lives.
        self.budget.forget_wasm();
    }
}

/// What [`PluginIsolate::background`] ended with.
pub(crate) enum Background {
    /// Nothing is pending any more (or nothing was): wait for requests as usual.
    Idle,
    /// A request arrived; background work may still be pending.
    Request,
    /// One turn ran past the plugin's call time limit and was stopped (the plugin stays
    /// usable; what is left pending goes on).
    Stopped,
    /// The plugin broke its memory budget: the isolate must be replaced.
    Poisoned,
}

/// What turning a plugin's values and errors into Rust needs.
struct Converter {
    /// The plugin folder's URL, stripped from file names in errors.
    root_url: String,
    /// The prelude's `codeOf`: the isola code of an error isola threw into the plugin.
    code_of: v8::Global<v8::Function>,
    /// Largest hook result, in bytes of JSON.
    max_result: usize,
    /// Checked before anything is copied out: a broken budget means the isolate is discarded.
    budget: Arc<MemoryBudget>,
}

/// Why an evaluation stopped, before it is turned into an [`Error`].
enum Failure {
    /// V8 was told to terminate (deadline or memory budget).
    Terminated,
    /// An error with its final code.
    Error(Error),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Error(e)
    }
}

/// A V8 isolate made from the startup snapshot inside its memory budget, not yet given to a
/// plugin: the part of a cold start that does not depend on the plugin (and so what a warm
/// pool makes ahead of time, see `pool.rs`). Must be used on the thread that made it.
pub(crate) struct BareIsolate {
    runtime: JsRuntime,
    budget: Arc<MemoryBudget>,
    /// Imports resolve nowhere until the plugin is known.
    loader: Rc<LateLoader>,
    heap_limit: usize,
}

impl BareIsolate {
    /// Creates an isolate whose memory budget is `heap_limit` bytes (at least
    /// [`MIN_HEAP_BYTES`]), counted under `guard`. Call inside a tokio context.
    pub(crate) fn new(heap_limit: usize, guard: &Arc<MemoryGuard>) -> BareIsolate {
        let heap_limit = heap_limit.max(MIN_HEAP_BYTES);
        let budget = MemoryBudget::new(heap_limit, guard);
        let loader = Rc::new(LateLoader::default());
        let params = v8::CreateParams::default().heap_limits(0, heap_limit).array_buffer_allocator(budget.allocator());
        let mut runtime = JsRuntime::new(RuntimeOptions {
            module_loader: Some(loader.clone()),
            // The host table is the plugin's: put in its place when the plugin is known.
            extensions: extensions(),
            create_params: Some(params),
            startup_snapshot: Some(snapshot()),
            ..Default::default()
        });
        runtime.op_state().borrow_mut().put(WasmBudget(budget.clone()));
        budget.set_isolate(runtime.v8_isolate().thread_safe_handle());
        let b = budget.clone();
        runtime.add_near_heap_limit_callback(move |current, _initial| b.heap_full(current));
        budget.watch_gc(runtime.v8_isolate());
        // Counted from the start: a waiting isolate holds memory too.
        budget.set_heap_used(runtime.v8_isolate().get_heap_statistics().used_heap_size(), false);
        BareIsolate { runtime, budget, loader, heap_limit }
    }
}

impl PluginIsolate {
    /// Creates the isolate, installs the prelude and evaluates the plugin, all within the
    /// load deadline and the memory budget. Starts from `bare` (made ahead of time by a warm
    /// pool) when it fits: made with this plugin's budget and not stopped meanwhile.
    pub(crate) fn new(
        bare: Option<BareIsolate>,
        cfg: &IsolateConfig,
        slot: &Arc<DeadlineSlot>,
        rt: &tokio::runtime::Runtime,
    ) -> Result<Self, Error> {
        let source = &cfg.plugin.source;
        let load_timeout = cfg.plugin.limits.load_timeout;
        let heap_limit = cfg.plugin.limits.heap_limit.max(MIN_HEAP_BYTES);
        let bare = bare
            .filter(|b| b.heap_limit == heap_limit && !b.budget.exceeded())
            .unwrap_or_else(|| BareIsolate::new(heap_limit, cfg.guard));
        let BareIsolate { mut runtime, budget, loader, .. } = bare;
        let current = Rc::new(RefCell::new(Current {
            callers: Vec::new(),
            event_depth: 0,
            deadline: Instant::now() + load_timeout,
            scope: None,
            epoch: 0,
        }));
        let (table, spec) = HostTable::build(Grant {
            plugin: &source.id,
            host: cfg.host,
            granted: &cfg.plugin.permissions.granted,
            stats: cfg.stats.clone(),
            storage: (cfg.storage.clone(), cfg.plugin.storage_quota),
            current: current.clone(),
            peers: cfg.peers.clone(),
            max_args: cfg.plugin.limits.max_result_bytes,
            slot: slot.clone(),
        });
        runtime.op_state().borrow_mut().put(table);
        let inspect = cfg.inspect != InspectMode::Off;
        loader.bind(PluginLoader::new(source.import_root(), cfg.sources.clone(), inspect));
        let handle = runtime.v8_isolate().thread_safe_handle();
        slot.set_isolate(handle, &budget);
        let helpers = runtime
            .execute_script("ext:isola/setup.js", format!("{PRELUDE_GLOBAL}({spec})"))
            .map_err(|e| Error::new(ErrorCode::LoadFailed, format!("isola prelude failed: {e}")))?;

        let root_url = ModuleSpecifier::from_directory_path(&source.root).map(|u| u.to_string()).unwrap_or_default();
        let (recv, code_of, settle, abort_call, restart_timers) = {
            deno_core::scope!(scope, &mut runtime);
            let undefined: v8::Local<v8::Value> = v8::undefined(scope).into();
            let helpers = v8::Local::new(scope, helpers);
            let missing = || Error::new(ErrorCode::LoadFailed, "isola prelude returned no helpers");
            let code_of = prelude_helper(scope, helpers, "codeOf").ok_or_else(missing)?;
            let settle = prelude_helper(scope, helpers, "settle").ok_or_else(missing)?;
            let abort_call = prelude_helper(scope, helpers, "abortCall").ok_or_else(missing)?;
            let restart_timers = prelude_helper(scope, helpers, "restartTimers").ok_or_else(missing)?;
            (v8::Global::new(scope, undefined), code_of, settle, abort_call, restart_timers)
        };
        let hint = runtime.op_state().borrow().borrow::<BackgroundHint>().clone();
        let max_result = cfg.plugin.limits.max_result_bytes;
        let conv = Converter { root_url, code_of, max_result, budget: budget.clone() };
        let mut this = PluginIsolate {
            runtime,
            recv,
            hooks: BTreeMap::new(),
            budget,
            conv,
            calls_since_heap_check: 0,
            current,
            settle,
            abort_call,
            restart_timers,
            hint,
            loader,
            inspect,
            break_on_start: false,
        };
        let mut port = None;
        if inspect {
            // After isola's own setup (its prelude has run; a debugger lists it as `ext:` scripts).
            this.runtime.maybe_init_inspector();
            let url = match &source.kind {
                SourceKind::Module { entry, .. } => ModuleSpecifier::from_file_path(entry),
                SourceKind::Script { path } => ModuleSpecifier::from_file_path(path),
            }
            .map(|u| u.to_string())
            .unwrap_or_default();
            this.break_on_start = cfg.inspect == InspectMode::BreakOnStart;
            let sessions = this.runtime.inspector().get_session_sender();
            if this.break_on_start {
                // The debugger must reach the plugin before its first line: now.
                (cfg.on_inspector)(sessions, url);
            } else {
                // Once it loaded: a failed reload leaves the running version debuggable.
                port = Some((sessions, url));
            }
        }
        let deadline = deadline_after(load_timeout);
        slot.arm(deadline);
        // Reading the hooks runs plugin code too (getters, Proxy traps): keep the deadline on.
        let loaded = this
            .evaluate(source, &cfg.sources, deadline, slot, rt)
            .and_then(|exports| this.collect_hooks(exports, source));
        let terminated = slot.disarm();
        this.settle(loaded, terminated, || format!("loading took longer than {} ms", load_timeout.as_millis()))
            .map_err(|e| match e.code {
                ErrorCode::JsError => Error { code: ErrorCode::LoadFailed, ..e },
                _ => e,
            })?;
        this.refresh_heap_used();
        if let Some((sessions, url)) = port {
            (cfg.on_inspector)(sessions, url);
        }
        Ok(this)
    }

    /// Turns the outcome of running JS into the final result, looking at whether the memory
    /// budget or the deadline stopped it. Cancels a pending termination so the isolate stays
    /// usable.
    ///
    /// A call the watchdog stopped (`terminated`) ends as stopped even when its JS came back
    /// with a value: the call outlived its deadline (or was interrupted), and the value may
    /// come from plugin code that ran on past that point. That happens when an error thrown
    /// by an op replaces a termination under way (see [`throw`](super::throw), which keeps
    /// isola's own ops from doing it; this catches any other).
    fn settle<T>(
        &mut self,
        r: Result<T, Failure>,
        terminated: bool,
        timeout_msg: impl FnOnce() -> String,
    ) -> Result<T, Error> {
        if self.budget.exceeded() {
            return Err(self.heap_limit_error());
        }
        if terminated {
            self.runtime.v8_isolate().cancel_terminate_execution();
            return Err(Error::new(ErrorCode::Timeout, timeout_msg()));
        }
        match r {
            Ok(v) => Ok(v),
            Err(Failure::Error(e)) => Err(e),
            // The deadline passed while the JS was idle (awaiting a host function), or V8
            // reported a termination the watchdog had not flagged yet.
            Err(Failure::Terminated) => {
                self.runtime.v8_isolate().cancel_terminate_execution();
                Err(Error::new(ErrorCode::Timeout, timeout_msg()))
            }
        }
    }

    /// Whether the memory budget was broken; the isolate must then be thrown away.
    pub(crate) fn poisoned(&self) -> bool {
        self.budget.exceeded()
    }

    /// The `HEAP_LIMIT` error that says how the budget broke.
    pub(crate) fn heap_limit_error(&self) -> Error {
        let message = match self.budget.breach() {
            Some(Breach::Total { limit, usage }) => format!(
                "the engine's total memory limit of {} MiB was reached and this plugin held the most ({} MiB); the plugin is restarted",
                limit >> 20,
                usage >> 20
            ),
            _ => format!(
                "memory limit of {} MiB exceeded (V8 heap and ArrayBuffers); the plugin is restarted",
                self.budget.limit() >> 20
            ),
        };
        Error::new(ErrorCode::HeapLimit, message)
    }

    /// What to run when the engine's memory guard stops this plugin while no JS runs.
    pub(crate) fn set_waker(&self, waker: Box<dyn Fn() + Send + Sync>) {
        self.budget.set_waker(waker);
    }

    /// Whether the plugin exports `hook`.
    pub(crate) fn has_hook(&self, hook: &str) -> bool {
        self.hooks.contains_key(hook)
    }

    /// The hook names, sorted.
    pub(crate) fn hook_names(&self) -> Vec<String> {
        self.hooks.keys().cloned().collect()
    }

    /// Bytes of V8 heap in use (as of the last check), of ArrayBuffers and wasm memories,
    /// and the budget.
    pub(crate) fn memory(&self) -> (usize, usize, usize) {
        let outside = self.budget.array_buffer_bytes().saturating_add(self.budget.wasm_bytes());
        (self.budget.heap_used(), outside, self.budget.limit())
    }

    /// Re-reads V8's heap statistics. Costs about a microsecond, so calls do it now and then
    /// rather than every time.
    pub(crate) fn refresh_heap_used(&mut self) {
        let used = self.runtime.v8_isolate().get_heap_statistics().used_heap_size();
        self.budget.set_heap_used(used, false);
        self.calls_since_heap_check = 0;
    }

    /// After a call ended early (`why`): nobody waits for what it started. Its scope is
    /// cancelled (the plugin calls it made are aborted, down the chain), its `host.signal`
    /// aborts, and the event loop is polled once so that the async host functions it awaited
    /// are dropped now, not at some later call. The plugin code that runs meanwhile (abort
    /// listeners, promises settling) is held to [`ABANDON_LIMIT`].
    fn abandon(&mut self, why: &Error, slot: &DeadlineSlot, rt: &tokio::runtime::Runtime) {
        let scope = self.current.borrow_mut().scope.take();
        if let Some(scope) = &scope {
            scope.cancel();
        }
        if self.budget.exceeded() {
            return; // the isolate is discarded anyway
        }
        slot.arm(Instant::now() + ABANDON_LIMIT);
        {
            deno_core::scope!(scope, &mut self.runtime);
            v8::tc_scope!(let tc, scope);
            let abort_call = v8::Local::new(tc, &self.abort_call);
            let undefined = v8::undefined(tc).into();
            if let (Some(code), Some(message)) =
                (v8::String::new(tc, why.code.as_str()), v8::String::new(tc, &why.message))
            {
                // A listener that throws is logged by the prelude; a termination just ends it.
                let _ = abort_call.call(tc, undefined, &[code.into(), message.into()]);
            }
        }
        let runtime = &mut self.runtime;
        rt.block_on(async {
            // Ops run as tasks on this thread's runtime: let the woken ones finish first.
            tokio::task::yield_now().await;
            std::future::poll_fn(|cx| {
                let _ = runtime.poll_event_loop(cx, PollEventLoopOptions::default());
                std::task::Poll::Ready(())
            })
            .await;
        });
        if slot.disarm() {
            self.runtime.v8_isolate().cancel_terminate_execution();
        }
        // What was terminated (the call, or a timer callback in the turn above) may have cut
        // the timer pump off mid-run: the timers left go on. Last, so that nothing after it
        // can cut it off again; it runs no plugin code (the pump's first step is a sleep).
        slot.arm(Instant::now() + ABANDON_LIMIT);
        {
            deno_core::scope!(scope, &mut self.runtime);
            v8::tc_scope!(let tc, scope);
            let restart = v8::Local::new(tc, &self.restart_timers);
            let undefined = v8::undefined(tc).into();
            let _ = restart.call(tc, undefined, &[]);
        }
        if slot.disarm() {
            self.runtime.v8_isolate().cancel_terminate_execution();
        }
    }

    /// Heap and ArrayBuffers share one budget, but V8 only reports its heap exactly after a
    /// full GC. When buffers hold a large part of the budget (a quarter or more) and the live
    /// heap figure says the two together are over it, a full GC runs now, and its count
    /// breaks the budget if they really are (garbage never does). Plugins with few buffers
    /// skip this (one atomic load).
    fn check_shared_budget(&mut self) {
        self.budget.settle_wasm(self.runtime.v8_isolate());
        let buffers = self.budget.array_buffer_bytes();
        if buffers < self.budget.limit() / 4 || self.budget.exceeded() {
            return;
        }
        let isolate = self.runtime.v8_isolate();
        let heap = isolate.get_heap_statistics().used_heap_size();
        self.budget.set_heap_used(heap, false);
        if heap.saturating_add(buffers) > self.budget.limit() {
            // On the isolate's own thread this is a full GC, now; its epilogue decides.
            isolate.memory_pressure_notification(v8::MemoryPressureLevel::Critical);
        }
    }

    fn evaluate(
        &mut self,
        source: &PluginSource,
        cfg_sources: &SourceCache,
        deadline: Instant,
        slot: &DeadlineSlot,
        rt: &tokio::runtime::Runtime,
    ) -> Result<v8::Global<v8::Value>, Failure> {
        match &source.kind {
            SourceKind::Module { entry, .. } => {
                let url = ModuleSpecifier::from_file_path(entry)
                    .map_err(|_| Error::new(ErrorCode::LoadFailed, format!("bad entry path {}", entry.display())))?;
                let inspect = self.inspect;
                // Fetching and compiling the modules runs none of their code.
                let compiled = rt.block_on(async {
                    tokio::select! {
                        r = self.runtime.load_main_es_module(&url) => Some(r),
                        () = expired(slot, deadline, inspect) => None,
                    }
                });
                let id = compiled.ok_or(Failure::Terminated)?.map_err(|e| self.load_failure(e))?;
                self.wait_for_debugger(&source.id, slot);
                let runtime = &mut self.runtime;
                let load = async {
                    let evaluated = runtime.mod_evaluate(id);
                    runtime.run_event_loop(PollEventLoopOptions::default()).await?;
                    evaluated.await?;
                    runtime.get_module_namespace(id)
                };
                let evaluated = rt.block_on(async {
                    tokio::select! {
                        r = load => Some(r),
                        () = expired(slot, deadline, inspect) => None,
                    }
                });
                let ns = evaluated.ok_or(Failure::Terminated)?.map_err(|e| self.load_failure(e))?;
                deno_core::scope!(scope, &mut self.runtime);
                let ns = v8::Local::new(scope, ns);
                let key = v8::String::new(scope, "default").unwrap();
                let default = ns.get(scope, key.into()).filter(|v| !v.is_undefined()).ok_or_else(|| {
                    let file = entry.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
                    Error::new(
                        ErrorCode::LoadFailed,
                        format!("{file} has no default export; write `export default {{ hookName(args) {{ ... }} }}`"),
                    )
                })?;
                Ok(v8::Global::new(scope, default))
            }
            SourceKind::Script { path } => {
                let code = cfg_sources
                    .read(path, path)
                    .map(|t| t.to_string())
                    .map_err(|e| Error::new(ErrorCode::LoadFailed, format!("cannot read {}: {e}", path.display())))?;
                let url = ModuleSpecifier::from_file_path(path).map(|u| u.to_string()).unwrap_or_default();
                self.wait_for_debugger(&source.id, slot);
                self.runtime.execute_script(url, code).map_err(|e| self.js_failure(&e))?;
                deno_core::scope!(scope, &mut self.runtime);
                let global = scope.get_current_context().global(scope);
                let key = v8::String::new(scope, "plugin").unwrap();
                let plugin = global.get(scope, key.into()).filter(|v| !v.is_undefined()).ok_or_else(|| {
                    Error::new(
                        ErrorCode::LoadFailed,
                        "the script defines no global `plugin`; write `var plugin = { hookName(args) { ... } };`",
                    )
                })?;
                Ok(v8::Global::new(scope, plugin))
            }
        }
    }

    /// With `--inspect-brk`: blocks until a debugger attaches and says to run, then has V8
    /// pause at the next statement, which is the plugin's first.
    /// Waiting does not count against the load's time limit.
    fn wait_for_debugger(&mut self, plugin: &str, slot: &DeadlineSlot) {
        if std::mem::take(&mut self.break_on_start) {
            tracing::info!(plugin, "waiting for a debugger before the first line runs");
            slot.pause();
            self.runtime.inspector().wait_for_session_and_break_on_next_statement();
            slot.resume();
        }
    }

    fn collect_hooks(&mut self, exports: v8::Global<v8::Value>, source: &PluginSource) -> Result<(), Failure> {
        deno_core::scope!(scope, &mut self.runtime);
        v8::tc_scope!(let scope, scope);
        let value = v8::Local::new(scope, &exports);
        let what = match source.kind {
            SourceKind::Module { .. } => "the default export",
            SourceKind::Script { .. } => "the global `plugin`",
        };
        let obj = value
            .to_object(scope)
            .filter(|_| value.is_object())
            .ok_or_else(|| Error::new(ErrorCode::LoadFailed, format!("{what} must be an object of hook functions")))?;
        let names = obj.get_own_property_names(scope, Default::default()).map(|a| {
            (0..a.length())
                .filter_map(|i| a.get_index(scope, i))
                .map(|k| k.to_rust_string_lossy(scope))
                .collect::<Vec<_>>()
        });
        if scope.has_caught() || scope.has_terminated() {
            return Err(caught(scope, &self.conv));
        }
        for name in names.unwrap_or_default() {
            let key = v8::String::new(scope, &name).unwrap();
            let v = obj.get(scope, key.into());
            if scope.has_caught() || scope.has_terminated() {
                return Err(caught(scope, &self.conv));
            }
            if let Some(f) = v.and_then(|v| v8::Local::<v8::Function>::try_from(v).ok()) {
                self.hooks.insert(name, v8::Global::new(scope, f));
            }
        }
        self.recv = v8::Global::new(scope, value);
        Ok(())
    }

    /// Calls `hook` with positional `args` (a JSON array; `null` means none), stopping it
    /// `timeout` from now or at the caller's deadline (`ctx.deadline`) if that comes first, or
    /// as soon as `abort` says so (or the slot is interrupted). A `TIMEOUT` names `timeout`,
    /// the limit the caller stated, not the few microseconds less that were left of it when
    /// the call was read.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn call(
        &mut self,
        hook: &str,
        args: &Value,
        timeout: Duration,
        ctx: CallContext,
        abort: Option<&Arc<Abort>>,
        slot: &Arc<DeadlineSlot>,
        rt: &tokio::runtime::Runtime,
    ) -> Result<Value, Error> {
        let Some(func) = self.hooks.get(hook) else {
            let known = self.hook_names().join(", ");
            return Err(Error::new(
                ErrorCode::HookNotFound,
                format!("the plugin has no hook `{hook}` (its hooks: {known})"),
            ));
        };
        let deadline = ctx.deadline.map_or(deadline_after(timeout), |d| d.min(deadline_after(timeout)));
        // Each call gets its own scope: what it starts is abandoned if it ends early, while
        // work an earlier call left running is not.
        let epoch = self.current.borrow().epoch.wrapping_add(1);
        *self.current.borrow_mut() =
            Current { callers: ctx.chain, event_depth: ctx.event_depth, deadline, scope: None, epoch };
        slot.arm(deadline);
        if let Some(a) = abort
            && !a.start(slot.clone())
        {
            slot.disarm();
            return Err(aborted());
        }
        let r = match invoke(&mut self.runtime, func, &self.recv, args, &self.conv) {
            Ok(Step::Done(v)) => Ok(v),
            Ok(Step::Pending(p)) => {
                // What an async hook awaited may leave more behind it.
                self.hint.set();
                self.await_promise(p, deadline, slot, rt)
            }
            Err(f) => Err(f),
        };
        if let Some(a) = abort {
            a.finish();
        }
        let terminated = slot.disarm();
        self.check_shared_budget();
        let r = self
            .settle(r, terminated, || format!("the call took longer than {} ms", timeout.as_micros().div_ceil(1000)));
        self.calls_since_heap_check += 1;
        if self.calls_since_heap_check >= 64 {
            self.refresh_heap_used();
        }
        let r = match (r, slot.reason()) {
            // Stopped early, by the caller or by an unload: say so rather than `TIMEOUT`.
            (Err(e), Some(code)) if e.code == ErrorCode::Timeout => Err(stopped_early(code)),
            (r, _) => r,
        };
        if let Err(e) = &r
            && matches!(e.code, ErrorCode::Timeout | ErrorCode::Aborted | ErrorCode::ShutDown | ErrorCode::HeapLimit)
        {
            self.abandon(e, slot, rt);
        }
        r
    }

    /// Runs the plugin's background work between calls: due timers, and the continuations of
    /// what a hook left pending (an async host function it did not await, say). Drives the
    /// event loop until `inbox` has a request or nothing is pending any more; each turn of the
    /// loop runs under `limit` (the plugin's call time limit) and its memory budget, as a call
    /// would. Costs nothing when the plugin started nothing that outlives its calls.
    pub(crate) fn background(
        &mut self,
        inbox: &mut dyn Inbox,
        limit: Duration,
        slot: &DeadlineSlot,
        rt: &tokio::runtime::Runtime,
        stats: &StatsCell,
    ) -> Background {
        // With a debugger possibly attached, the idle plugin keeps serving its messages here
        // (the event loop polls the inspector's sessions) until a request comes.
        if !self.hint.take() && !self.inspect {
            return Background::Idle;
        }
        let inspect = self.inspect;
        let (runtime, current, budget) = (&mut self.runtime, &self.current, &self.budget);
        enum Turn {
            Idle,
            Request,
            Stopped,
            Failed(CoreError),
        }
        let turn = rt.block_on(async {
            loop {
                let deadline = deadline_after(limit);
                {
                    let epoch = current.borrow().epoch.wrapping_add(1);
                    *current.borrow_mut() =
                        Current { callers: Vec::new(), event_depth: 0, deadline, scope: None, epoch };
                }
                slot.arm(deadline);
                let polled = std::future::poll_fn(|cx| {
                    Poll::Ready(runtime.poll_event_loop(cx, PollEventLoopOptions::default()))
                })
                .await;
                let terminated = slot.disarm();
                stats.record_background(terminated);
                if terminated || budget.exceeded() {
                    return Turn::Stopped;
                }
                match polled {
                    Poll::Ready(Ok(())) if !inspect => return Turn::Idle,
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(e)) => return Turn::Failed(e),
                    Poll::Pending => {}
                }
                // Wait for a request, or for the event loop to have something to do (its
                // wakers wake this task, which polls `woken` again).
                let mut first = true;
                let woken =
                    std::future::poll_fn(|_| if std::mem::take(&mut first) { Poll::Pending } else { Poll::Ready(()) });
                tokio::select! {
                    biased;
                    () = inbox.ready() => return Turn::Request,
                    () = woken => {}
                }
            }
        });
        match turn {
            Turn::Idle => Background::Idle,
            Turn::Request => {
                self.hint.set();
                Background::Request
            }
            Turn::Failed(e) => {
                // An error nothing caught (the prelude logs rejected promises itself): log it,
                // and look again after the next request.
                tracing::warn!(target: "isola::plugin", "background work failed: {e}");
                self.hint.set();
                // Not at once (it may fail the same way): wait for a request as usual.
                Background::Idle
            }
            Turn::Stopped if self.budget.exceeded() => Background::Poisoned,
            Turn::Stopped => {
                self.runtime.v8_isolate().cancel_terminate_execution();
                let why = Error::new(
                    ErrorCode::Timeout,
                    format!("background work (a timer callback, say) ran longer than {} ms", limit.as_millis()),
                );
                self.abandon(&why, slot, rt);
                self.hint.set();
                Background::Stopped
            }
        }
    }

    /// Drives the event loop until the hook's promise settles or the deadline passes.
    fn await_promise(
        &mut self,
        promise: v8::Global<v8::Value>,
        deadline: Instant,
        slot: &DeadlineSlot,
        rt: &tokio::runtime::Runtime,
    ) -> Result<Value, Failure> {
        // Wait on `settle(promise)`, which always fulfils with [ok, value]: a rejection then
        // reaches us as the thrown value itself, so its isola code can be read (see `thrown`).
        let settled = {
            deno_core::scope!(scope, &mut self.runtime);
            v8::tc_scope!(let tc, scope);
            let settle = v8::Local::new(tc, &self.settle);
            let p = v8::Local::new(tc, promise);
            let undefined = v8::undefined(tc).into();
            match settle.call(tc, undefined, &[p]) {
                Some(s) => v8::Global::new(tc, s),
                None => return Err(caught(tc, &self.conv)),
            }
        };
        let resolved = self.runtime.resolve(settled);
        let runtime = &mut self.runtime;
        // An abort or unload while the hook awaits: no JS runs to terminate, so stop waiting.
        let interrupted = slot.interrupted();
        let inspect = self.inspect;
        let r = rt.block_on(async {
            tokio::select! {
                r = runtime.with_event_loop_promise(resolved, PollEventLoopOptions::default()) => Some(r),
                () = expired(slot, deadline, inspect) => None,
                // What the hook awaits is left where it is: no JS runs until the next call.
                () = interrupted => None,
            }
        });
        let pair = match r {
            None => return Err(Failure::Terminated),
            Some(Err(e)) => return Err(self.core_failure(e)),
            Some(Ok(v)) => v,
        };
        deno_core::scope!(scope, &mut self.runtime);
        v8::tc_scope!(let tc, scope);
        let pair = v8::Local::new(tc, pair);
        let pair = v8::Local::<v8::Array>::try_from(pair)
            .map_err(|_| Error::new(ErrorCode::JsError, "isola's settle helper returned no pair"))?;
        let (ok, v) = match (pair.get_index(tc, 0), pair.get_index(tc, 1)) {
            (Some(ok), Some(v)) => (ok.is_true(), v),
            _ => return Err(caught(tc, &self.conv)),
        };
        if ok { to_json(tc, v, &self.conv) } else { Err(thrown(tc, v, &self.conv)) }
    }

    /// A failed load: a TypeScript syntax error the loader recorded (typed, at its `.ts`
    /// position), or whatever deno_core reported.
    fn load_failure(&self, e: CoreError) -> Failure {
        match self.loader.take_failure() {
            Some(info) => Failure::Error(typescript_error(info)),
            None => self.core_failure(e),
        }
    }

    fn core_failure(&self, e: CoreError) -> Failure {
        match e.into_kind() {
            CoreErrorKind::Js(js) => self.js_failure(&js),
            CoreErrorKind::PendingPromiseResolution => Failure::Error(Error::new(
                ErrorCode::JsError,
                "the hook returned a promise that can never settle (nothing it waits on is pending)",
            )),
            other => Failure::Error(Error::new(ErrorCode::LoadFailed, other.to_string())),
        }
    }

    /// A JS error as a failure. Whether it was really a termination (deadline, memory) is
    /// decided by `settle` from the watchdog and the budget, never from the message, which a
    /// plugin could fake with `throw "execution terminated"`.
    fn js_failure(&self, e: &JsError) -> Failure {
        Failure::Error(js_error(e, &self.conv.root_url))
    }
}

/// Completes when `deadline` has passed, for JavaScript that only waits (termination has
/// nothing to stop then). With a debugger, the deadline is the slot's, net of the time the
/// plugin was held paused; otherwise one timer.
async fn expired(slot: &DeadlineSlot, deadline: Instant, inspect: bool) {
    if inspect { slot.expired().await } else { tokio::time::sleep_until(deadline.into()).await }
}

/// The answer to a call its caller aborted before it ran.
fn aborted() -> Error {
    stopped_early(ErrorCode::Aborted)
}

/// The answer to a call stopped before its deadline, by its caller or by an unload.
fn stopped_early(code: ErrorCode) -> Error {
    let message = match code {
        ErrorCode::Aborted => "the caller aborted the call",
        ErrorCode::ShutDown => "the plugin was unloaded or shut down during the call",
        _ => "the call was stopped",
    };
    Error::new(code, message)
}

/// The synchronous part of a call.
fn invoke(
    runtime: &mut JsRuntime,
    func: &v8::Global<v8::Function>,
    recv: &v8::Global<v8::Value>,
    args: &Value,
    conv: &Converter,
) -> Result<Step, Failure> {
    deno_core::scope!(scope, runtime);
    v8::tc_scope!(let tc, scope);
    let recv = v8::Local::new(tc, recv);
    let f = v8::Local::new(tc, func);
    let mut argv: Vec<v8::Local<v8::Value>> = Vec::new();
    match args {
        Value::Null => {}
        Value::Array(items) => {
            for item in items {
                argv.push(
                    serde_v8::to_v8(tc, item)
                        .map_err(|e| Error::new(ErrorCode::InvalidArgs, format!("cannot pass argument: {e}")))?,
                );
            }
        }
        other => argv.push(
            serde_v8::to_v8(tc, other)
                .map_err(|e| Error::new(ErrorCode::InvalidArgs, format!("cannot pass argument: {e}")))?,
        ),
    }
    let Some(result) = f.call(tc, recv, &argv) else {
        return Err(caught(tc, conv));
    };
    if let Ok(promise) = v8::Local::<v8::Promise>::try_from(result) {
        tc.perform_microtask_checkpoint();
        if tc.has_terminated() {
            return Err(Failure::Terminated);
        }
        if promise.state() == v8::PromiseState::Fulfilled {
            let v = promise.result(tc);
            return to_json(tc, v, conv).map(Step::Done);
        }
        // Pending, or rejected: let deno_core's promise machinery take it from here (it
        // also marks a rejection as handled so it is not reported twice).
        return Ok(Step::Pending(v8::Global::new(tc, result)));
    }
    to_json(tc, result, conv).map(Step::Done)
}

/// One of the functions the prelude returned.
fn prelude_helper(
    scope: &mut v8::PinScope<'_, '_>,
    helpers: v8::Local<v8::Value>,
    name: &str,
) -> Option<v8::Global<v8::Function>> {
    let obj = helpers.to_object(scope)?;
    let key = v8::String::new(scope, name)?;
    let f = v8::Local::<v8::Function>::try_from(obj.get(scope, key.into())?).ok()?;
    Some(v8::Global::new(scope, f))
}

/// `now + timeout`, saturating: a "no limit" timeout such as `Duration::MAX` means a
/// deadline far in the future, not an overflow panic.
fn deadline_after(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout).unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600))
}

enum Step {
    Done(Value),
    Pending(v8::Global<v8::Value>),
}

/// The exception a `TryCatch` holds, or termination.
fn caught(tc: &mut v8::PinnedRef<'_, v8::TryCatch<v8::HandleScope>>, conv: &Converter) -> Failure {
    if tc.has_terminated() {
        return Failure::Terminated;
    }
    match tc.exception() {
        Some(exc) => thrown(tc, exc, conv),
        None => Failure::Terminated,
    }
}

/// A value the plugin threw (or rejected with) as an isola error: `JS_ERROR`, or, when it is
/// an error isola itself threw into the plugin and the hook let escape, that error's code
/// (with the JS details kept).
fn thrown(
    tc: &mut v8::PinnedRef<'_, v8::TryCatch<v8::HandleScope>>,
    exc: v8::Local<v8::Value>,
    conv: &Converter,
) -> Failure {
    // (Re-rooted in this scope so that it can be passed to calls made in it.)
    let exc = v8::Global::new(tc, exc);
    let exc = v8::Local::new(tc, &exc);
    let e = JsError::from_v8_exception(tc, exc);
    if tc.has_terminated() {
        return Failure::Terminated;
    }
    let mut err = js_error(&e, &conv.root_url);
    let f = v8::Local::new(tc, &conv.code_of);
    let undefined = v8::undefined(tc).into();
    let code = f.call(tc, undefined, &[exc]).filter(|c| c.is_string()).map(|c| c.to_rust_string_lossy(tc));
    if let Some(code) = code.as_deref().and_then(ErrorCode::parse) {
        err.code = code;
        err.issued = true;
    }
    Failure::Error(err)
}

/// A JS value as JSON: `undefined` (and functions, symbols) become `null`; values
/// `JSON.stringify` refuses (BigInt, cycles) are an `INVALID_ARGS` error.
fn to_json(
    tc: &mut v8::PinnedRef<'_, v8::TryCatch<v8::HandleScope>>,
    v: v8::Local<v8::Value>,
    conv: &Converter,
) -> Result<Value, Failure> {
    if v.is_undefined() || v.is_function() || v.is_symbol() {
        return Ok(Value::Null);
    }
    if let Some(plain) = super::values::plain_result(tc, v, conv.max_result) {
        return Ok(plain);
    }
    let Some(s) = v8::json::stringify(tc, v) else {
        return Err(match caught(tc, conv) {
            Failure::Error(e) => Failure::Error(Error {
                code: ErrorCode::InvalidArgs,
                message: format!("the hook's result is not JSON-serialisable: {}", e.message),
                ..e
            }),
            t => t,
        });
    };
    // The JSON text was built in the isolate's heap, inside its budget; only what fits the
    // result cap is copied out of it.
    if conv.budget.exceeded() {
        return Err(Failure::Terminated);
    }
    let len = s.utf8_length(tc);
    if len > conv.max_result {
        return Err(Failure::Error(Error::new(
            ErrorCode::InvalidArgs,
            format!("the hook's result is {len} bytes as JSON; at most {} may leave the plugin", conv.max_result),
        )));
    }
    let text = s.to_rust_string_lossy(tc);
    serde_json::from_str(&text)
        .map_err(|e| Failure::Error(Error::new(ErrorCode::InvalidArgs, format!("the hook's result is not JSON: {e}"))))
}

/// A JS exception as an isola error, with file names made relative to the plugin folder.
fn js_error(e: &JsError, root_url: &str) -> Error {
    let rel = |s: &str| if root_url.is_empty() { s.to_owned() } else { s.replace(root_url, "") };
    let frame = e
        .frames
        .iter()
        .find(|f| f.file_name.as_deref().is_some_and(|n| !root_url.is_empty() && n.starts_with(root_url)));
    let name = capped(e.name.clone().unwrap_or_else(|| "Error".into()));
    let message = capped(e.message.clone().unwrap_or_else(|| rel(&e.exception_message)));
    let mut info = JsErrorInfo {
        name: name.clone(),
        message: message.clone(),
        stack: e.stack.as_deref().map(rel).map(capped),
        file: frame.and_then(|f| f.file_name.as_deref()).map(rel),
        line: frame.and_then(|f| f.line_number).map(|n| n as u32),
        column: frame.and_then(|f| f.column_number).map(|n| n as u32),
    };
    if info.file.is_none() {
        // Syntax errors carry no frames; V8 puts the position in the stack's first line instead
        // (`file:///…/main.js:3`), so recover it from there.
        if let Some((file, line)) = info.stack.as_deref().and_then(position_in_stack) {
            info.file = Some(file);
            info.line = Some(line);
        }
    }
    let text = if message.is_empty() { name } else { format!("{name}: {message}") };
    let mut err = Error::new(ErrorCode::JsError, text);
    err.js = Some(Box::new(info));
    err
}

/// A TypeScript syntax error as an isola error, at its place in the `.ts` file.
fn typescript_error(info: JsErrorInfo) -> Error {
    let mut err = Error::new(ErrorCode::LoadFailed, format!("SyntaxError: {}", info.message));
    err.js = Some(Box::new(info));
    err
}

/// Finds `some/file.js:LINE` at the start of a stack (used for syntax errors).
fn position_in_stack(stack: &str) -> Option<(String, u32)> {
    let first = stack.lines().next()?;
    let (file, line) = first.trim().rsplit_once(':')?;
    let line = line.parse().ok()?;
    (!file.contains(' ')).then(|| (file.to_owned(), line))
}
