//! The [`Manager`]: the set of plugins a host runs — loading, listing, reloading, unloading.
//!
//! Every plugin the manager has seen keeps an entry, including the ones that failed to load:
//! their error stays visible in [`Manager::list`] and a call to them answers with that error,
//! so one broken plugin never hides the others and never makes a caller guess why.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Instant;

use crossbeam_channel::Receiver;
use serde_json::Value;

use serde::Serialize;

use crate::engine::Engine;
use crate::error::{Error, ErrorCode, Result};
use crate::events::{EventBus, LifecycleEvent};
use crate::handle::{PluginHandle, PluginStatus, Request, Shared, call_mailbox};
use crate::manifest::{CommandSpec, Diagnostic, Severity, Subscription};
use crate::permissions::Permissions;
use crate::source::{PluginSource, guess_id, plugin_paths};
use crate::stats::PluginStats;
use crate::watch::Watcher;
use crate::worker;

/// Hook a plugin may export to receive state when it loads (`onLoad(state)`; `state` is what
/// the previous version's `onUnload()` returned, or `null`).
pub const ON_LOAD: &str = "onLoad";
/// Hook a plugin may export to hand state to its next version on reload.
pub const ON_UNLOAD: &str = "onUnload";

/// What [`Manager::list`] reports about one plugin.
#[derive(Debug, Clone, Serialize)]
pub struct PluginInfo {
    /// The plugin id.
    pub id: String,
    /// Its version (`0.0.0` for scripts and plugins whose manifest could not be read).
    pub version: String,
    /// Its folder or script file.
    pub location: PathBuf,
    /// Ready, failed, ...
    pub status: PluginStatus,
    /// Hook names, sorted.
    pub hooks: Vec<String>,
    /// Counters.
    pub stats: PluginStats,
    /// Why it is not running, if it is not (or why it last failed to restart).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<Error>,
    /// Manifest warnings (and, for an invalid manifest, its errors).
    pub diagnostics: Vec<Diagnostic>,
    /// Permissions asked for and granted.
    pub permissions: Permissions,
}

/// The outcome of [`Manager::load_dir`]: which plugins run and which did not (and why).
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Ids of the plugins that loaded.
    pub loaded: Vec<String>,
    /// One error per plugin that did not load, naming it.
    pub failed: Vec<Error>,
}

pub(crate) struct Entry {
    pub(crate) handle: PluginHandle,
    location: PathBuf,
    diagnostics: Vec<Diagnostic>,
    /// From the manifest: the events it subscribes to and the commands it offers.
    pub(crate) events: Vec<Subscription>,
    pub(crate) commands: Vec<CommandSpec>,
}

/// How a plugin's isolate reaches the manager (for `host.plugins.call` and
/// `host.events.emit`) without keeping it alive.
#[derive(Clone)]
pub(crate) struct Links(Weak<Inner>);

impl Links {
    fn inner(&self) -> Result<Arc<Inner>> {
        self.0.upgrade().ok_or_else(|| Error::new(ErrorCode::ShutDown, "the manager has shut down"))
    }

    pub(crate) fn handle(&self, id: &str) -> Result<PluginHandle> {
        self.inner()?.entry(id).map(|(shared, _)| PluginHandle::new(shared))
    }

    /// Records that plugin `from` waits on plugin `to` until the returned guard is dropped,
    /// unless `to` already waits (directly or through others) on `from`: then the path that
    /// would deadlock is returned instead.
    pub(crate) fn wait_on(&self, from: &str, to: &str) -> std::result::Result<WaitGuard, String> {
        let Ok(inner) = self.inner() else { return Ok(WaitGuard(None)) };
        let mut waits = inner.waits.lock().unwrap();
        // Follow `to`'s waits; reaching `from` means a cycle.
        let mut stack = vec![vec![to.to_owned()]];
        while let Some(path) = stack.pop() {
            let last = path.last().unwrap();
            if last == from {
                return Err(path.join(" → "));
            }
            if path.len() > 64 {
                continue;
            }
            for (_, b) in waits.iter().filter(|(a, _)| a == last) {
                let mut next = path.clone();
                next.push(b.clone());
                stack.push(next);
            }
        }
        waits.push((from.to_owned(), to.to_owned()));
        Ok(WaitGuard(Some((Arc::downgrade(&inner), from.to_owned(), to.to_owned()))))
    }

    /// Notifies `event`'s subscribers without waiting; returns how many there are. Refuses
    /// with `BUSY` when too many such deliveries are already in flight.
    pub(crate) fn emit_background(&self, event: &str, payload: Value, depth: u32) -> Result<usize> {
        let inner = self.inner()?;
        let n = inner.subscribers(event).len();
        if n > 0 {
            if inner.background.fetch_add(1, std::sync::atomic::Ordering::AcqRel) >= MAX_BACKGROUND_EMITS {
                inner.background.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
                return Err(Error::new(
                    ErrorCode::Busy,
                    format!("event `{event}` not emitted: {MAX_BACKGROUND_EMITS} events are already being delivered"),
                ));
            }
            let event = event.to_owned();
            let weak = self.0.clone();
            inner.events_rt.spawn(async move {
                let Some(inner) = weak.upgrade() else { return };
                let report = inner.emit_with(&event, payload, depth, crate::dispatch::AsyncCaller).await;
                inner.background.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
                drop(inner);
                for d in report.deliveries.iter().filter(|d| d.error.is_some()) {
                    tracing::warn!(plugin = %d.plugin, "event `{event}`: {}", d.error.as_ref().unwrap());
                }
            });
        }
        Ok(n)
    }
}

/// An edge of the "plugin A waits on plugin B" graph; removed when dropped.
pub(crate) struct WaitGuard(Option<(Weak<Inner>, String, String)>);

impl Drop for WaitGuard {
    fn drop(&mut self) {
        if let Some((inner, from, to)) = self.0.take()
            && let Some(inner) = inner.upgrade()
        {
            let mut waits = inner.waits.lock().unwrap();
            if let Some(i) = waits.iter().position(|(a, b)| *a == from && *b == to) {
                waits.swap_remove(i);
            }
        }
    }
}

/// How many plugin-emitted (and lifecycle) events may be in delivery at once, per manager.
pub const MAX_BACKGROUND_EMITS: usize = 256;

/// Runs a set of plugins, each in its own isolate and thread.
///
/// Dropping the manager shuts every plugin down (handles then answer `SHUT_DOWN`), so keep it
/// alive as long as its plugins are used.
///
/// ```no_run
/// use isola::{Engine, HostApi, Manager};
/// let manager = Manager::new(Engine::new(HostApi::new().func("log", |(msg,): (String,)| {
///     println!("{msg}");
///     Ok(())
/// })));
/// let report = manager.load_dir("plugins")?;
/// for err in &report.failed {
///     eprintln!("{err}");
/// }
/// let greeting: String = manager.handle("greeter")?.call_blocking("greet", ("Ada",))?;
/// manager.shutdown();
/// # Ok::<(), isola::Error>(())
/// ```
pub struct Manager {
    inner: Arc<Inner>,
    /// Runs event deliveries that nobody waits for (plugin-emitted and lifecycle events).
    /// Owned here, not by `Inner`, so that it is never dropped from one of its own threads.
    events_rt: Mutex<Option<tokio::runtime::Runtime>>,
}

/// The manager's state, shared with its directory watcher.
pub(crate) struct Inner {
    engine: Engine,
    plugins: RwLock<BTreeMap<String, Entry>>,
    pub(crate) bus: Arc<EventBus>,
    /// One reload at a time (a file save and an explicit reload may race).
    reloading: Mutex<()>,
    watcher: Mutex<Option<Watcher>>,
    /// Itself, for handing to plugins' isolates.
    me: Weak<Inner>,
    pub(crate) events_rt: tokio::runtime::Handle,
    /// Background event deliveries in flight.
    background: std::sync::atomic::AtomicUsize,
    /// Plugin-to-plugin calls in progress, as (caller, callee) edges.
    waits: Mutex<Vec<(String, String)>>,
}

impl Manager {
    /// A manager with no plugins yet.
    pub fn new(engine: Engine) -> Manager {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("isola:events")
            .enable_all()
            .build()
            .expect("cannot start the event delivery runtime");
        let inner = Arc::new_cyclic(|me| Inner {
            engine,
            plugins: RwLock::new(BTreeMap::new()),
            bus: Arc::new(EventBus::default()),
            reloading: Mutex::new(()),
            watcher: Mutex::new(None),
            me: me.clone(),
            events_rt: rt.handle().clone(),
            background: Default::default(),
            waits: Mutex::new(Vec::new()),
        });
        // Plugins may subscribe to lifecycle events as `plugin:loaded`, `plugin:reloaded`,
        // `plugin:unloaded` and `plugin:errored`.
        let links = Links(Arc::downgrade(&inner));
        inner.bus.set_forward(move |e| {
            let name = match e {
                LifecycleEvent::Loaded { .. } => "plugin:loaded",
                LifecycleEvent::Reloaded { .. } => "plugin:reloaded",
                LifecycleEvent::Unloaded { .. } => "plugin:unloaded",
                _ => "plugin:errored",
            };
            if let Err(err) = links.emit_background(name, serde_json::to_value(e).unwrap_or_default(), 1) {
                tracing::warn!("{err}");
            }
        });
        Manager { inner, events_rt: Mutex::new(Some(rt)) }
    }

    pub(crate) fn inner(&self) -> &Arc<Inner> {
        &self.inner
    }

    /// Subscribes to lifecycle events (loaded, reloaded, reload failed, unloaded, restarted).
    /// Each subscriber gets every event from now on.
    pub fn events(&self) -> Receiver<LifecycleEvent> {
        self.inner.bus.subscribe()
    }

    /// Watches `dir` and keeps the plugins in sync with it: a changed plugin is reloaded
    /// (debounced, so an editor's several writes make one reload), a new one is loaded, a
    /// removed one unloaded. A version that fails to load never replaces a working one.
    /// Usually called after [`load_dir`](Self::load_dir) on the same directory.
    pub fn watch(&self, dir: impl AsRef<Path>) -> Result<()> {
        let w = Watcher::start(self.inner.clone(), dir.as_ref())?;
        if let Some(old) = self.inner.watcher.lock().unwrap().replace(w) {
            old.stop();
        }
        Ok(())
    }

    /// The engine plugins are started with.
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// Loads every plugin in `dir`, in parallel. Fails only if the directory cannot be read;
    /// broken plugins are reported in the [`LoadReport`] and kept (as failed) in the list.
    pub fn load_dir(&self, dir: impl AsRef<Path>) -> Result<LoadReport> {
        self.inner.load_dir(dir.as_ref())
    }

    /// Loads one plugin (a folder with `plugin.json`, or a `.js` script) and returns its handle.
    pub fn load(&self, path: impl AsRef<Path>) -> Result<PluginHandle> {
        self.inner.load(path.as_ref())
    }

    /// Every plugin the manager knows, sorted by id.
    pub fn list(&self) -> Vec<PluginInfo> {
        self.inner.list()
    }

    /// The ids of every plugin the manager knows.
    pub fn ids(&self) -> Vec<String> {
        self.inner.plugins.read().unwrap().keys().cloned().collect()
    }

    /// A handle to plugin `id` (also for a failed plugin: its calls answer with its error).
    pub fn handle(&self, id: &str) -> Result<PluginHandle> {
        self.inner.entry(id).map(|(shared, _)| PluginHandle::new(shared))
    }

    /// Stops plugin `id` (waiting for its thread) and forgets it. Handles to it answer
    /// `SHUT_DOWN` from now on.
    pub fn unload(&self, id: &str) -> Result<()> {
        self.inner.unload(id)
    }

    /// Reads plugin `id` from disk again and starts it in a fresh isolate. Handles keep
    /// working and now reach the new version; calls already queued finish on the old one.
    /// If the new version fails to load, the old one (if it was running) keeps serving and
    /// the error is returned and kept as the plugin's last error.
    ///
    /// State hand-off: if the old version has an `onUnload()` hook, what it returns is passed
    /// to the new version's `onLoad(state)` before the new version takes calls.
    pub fn reload(&self, id: &str) -> Result<()> {
        self.inner.reload(id)
    }

    /// Deletes everything plugin `id` stored with `host.storage` (loaded or not). Unloading
    /// and reloading keep data; this is the explicit removal.
    pub fn remove_data(&self, id: &str) -> Result<()> {
        self.inner.remove_data(id)
    }

    /// Stops watching, stops every plugin and waits for all their threads. Handles answer
    /// `SHUT_DOWN` after.
    pub fn shutdown(&self) {
        if let Some(w) = self.inner.watcher.lock().unwrap().take() {
            w.stop();
        }
        let entries = std::mem::take(&mut *self.inner.plugins.write().unwrap());
        // Tell every thread first, then wait: the threads wind down in parallel.
        for e in entries.values() {
            e.handle.shared().close();
        }
        for e in entries.values() {
            e.handle.shared().join();
        }
        if let Some(rt) = self.events_rt.lock().unwrap().take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Inner {
    fn links(&self) -> Links {
        Links(self.me.clone())
    }

    /// Reads the plugin table.
    pub(crate) fn plugins(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Entry>> {
        self.plugins.read().unwrap()
    }

    pub(crate) fn load_dir(&self, dir: &Path) -> Result<LoadReport> {
        let mut report = LoadReport::default();
        let mut starting = Vec::new();
        for path in plugin_paths(dir)? {
            match PluginSource::from_path(&path) {
                Ok(source) => match self.start(source) {
                    Ok(s) => starting.push(s),
                    Err(e) => report.failed.push(e),
                },
                Err(e) => {
                    // Keep where it is, so that fixing the files (or a watcher) can reload it.
                    self.record_failure(&e, Some(&path));
                    report.failed.push(e);
                }
            }
        }
        for (shared, version, t0, s) in starting {
            match self.finish_start(&shared, &version, t0, s) {
                Ok(()) => report.loaded.push(shared.id.clone()),
                Err(e) => report.failed.push(e),
            }
        }
        Ok(report)
    }

    pub(crate) fn load(&self, path: &Path) -> Result<PluginHandle> {
        let source = PluginSource::from_path(path).inspect_err(|e| self.record_failure(e, Some(path)))?;
        let (shared, version, t0, s) = self.start(source)?;
        self.finish_start(&shared, &version, t0, s)?;
        Ok(PluginHandle::new(shared))
    }

    /// Registers `source` and starts its thread (without waiting for it to load).
    fn start(&self, source: PluginSource) -> Result<(Arc<Shared>, String, Instant, worker::Starting)> {
        let t0 = Instant::now();
        let mut plugins = self.plugins.write().unwrap();
        if let Some(existing) = plugins.get(&source.id)
            && matches!(existing.handle.status(), PluginStatus::Failed | PluginStatus::Stopped)
        {
            // Replacing a failed entry: make sure no thread of it is left behind.
            let old = existing.handle.shared().clone();
            old.close();
            old.join();
        }
        if let Some(existing) = plugins.get(&source.id)
            && !matches!(existing.handle.status(), PluginStatus::Failed | PluginStatus::Stopped)
        {
            let e = Error::new(
                ErrorCode::LoadFailed,
                format!(
                    "another plugin with id `{}` is already loaded (from {}); ids must be unique",
                    source.id,
                    existing.location.display()
                ),
            )
            .plugin(&source.id);
            return Err(e);
        }
        let shared = Shared::new(&source.id, self.bus.clone());
        let version = source.version().to_owned();
        let permissions = self.engine.permissions_for(&source);
        shared.update_info(|i| {
            i.version = version.clone();
            i.permissions = permissions;
        });
        plugins.insert(
            source.id.clone(),
            Entry {
                handle: PluginHandle::new(shared.clone()),
                location: source.location.clone(),
                diagnostics: self.diagnostics_for(&source),
                events: source.manifest().map(|m| m.events.clone()).unwrap_or_default(),
                commands: source.manifest().map(|m| m.commands.clone()).unwrap_or_default(),
            },
        );
        drop(plugins);
        let s = worker::spawn(&self.engine, source, shared.clone(), self.links())
            .inspect_err(|e| self.failed(&shared, e))?;
        Ok((shared, version, t0, s))
    }

    /// Waits for a starting plugin, runs its `onLoad`, and opens its mailbox.
    fn finish_start(&self, shared: &Arc<Shared>, version: &str, t0: Instant, s: worker::Starting) -> Result<()> {
        match s.wait() {
            Ok(hooks) => {
                shared.update_info(|i| i.hooks = hooks.clone());
                let (_, state) = self.open(shared, s, &hooks)?;
                if let Some(state) = state {
                    let _ = state.send(Value::Null); // a first load has no state to receive
                }
                self.bus.emit(LifecycleEvent::Loaded {
                    plugin: shared.id.clone(),
                    version: version.to_owned(),
                    took_ms: millis(t0),
                });
                Ok(())
            }
            Err(e) => {
                let _ = s.thread.join();
                self.failed(shared, &e);
                Err(e)
            }
        }
    }

    /// The source's manifest warnings, plus one per requested permission nothing declares.
    fn diagnostics_for(&self, source: &PluginSource) -> Vec<Diagnostic> {
        let mut diags = source.diagnostics.clone();
        let declared = self.engine.host().declared_permissions();
        let requested = source.manifest().map(|m| m.permissions.as_slice()).unwrap_or_default();
        for (i, p) in requested.iter().enumerate() {
            if !declared.contains(p.as_str()) && !crate::permissions::is_builtin(p) {
                let mut known: Vec<&str> = declared.iter().copied().collect();
                known.extend(["storage", "events", "call:PLUGIN"]);
                diags.push(Diagnostic {
                    severity: Severity::Warning,
                    path: format!("$.permissions[{i}]"),
                    code: "unknown_permission".into(),
                    message: format!(
                        "no host function or value declares the permission `{p}` (known: {})",
                        known.join(", ")
                    ),
                });
            }
        }
        diags
    }

    /// Deletes everything plugin `id` stored (whether or not it is loaded).
    pub(crate) fn remove_data(&self, id: &str) -> Result<()> {
        self.engine
            .storage()
            .backend()
            .remove_plugin(id)
            .map_err(|e| Error::new(ErrorCode::LoadFailed, e.to_string()).plugin(id))
    }

    fn failed(&self, shared: &Shared, e: &Error) {
        shared.update_info(|i| i.last_error = Some(e.clone()));
        shared.set_status(PluginStatus::Failed);
        self.bus.emit(LifecycleEvent::LoadFailed { plugin: shared.id.clone(), error: e.clone() });
    }

    /// Points `shared` at a plugin thread that has loaded. If the plugin has `onLoad`, it is
    /// queued as the thread's first request, waiting for the state sent through the returned
    /// sender; a failure there is reported as an event, never fatal. Returns the previous
    /// mailbox. Fails with `SHUT_DOWN` if the plugin was unloaded meanwhile (and stops the
    /// thread).
    #[allow(clippy::type_complexity)]
    fn open(
        &self,
        shared: &Shared,
        s: worker::Starting,
        hooks: &[String],
    ) -> Result<(Option<crossbeam_channel::Sender<Request>>, Option<crossbeam_channel::Sender<Value>>)> {
        let state = hooks.iter().any(|h| h == ON_LOAD).then(|| {
            let (tx, rx) = crossbeam_channel::bounded(1);
            let _ = s.tx.send(Request::Init { state: rx });
            tx
        });
        match shared.open(s.tx, s.thread) {
            Ok(old) => Ok((old, state)),
            Err((tx, thread)) => {
                drop(state);
                let _ = tx.send(Request::Stop);
                let _ = thread.join();
                Err(Error::new(ErrorCode::ShutDown, "the plugin was unloaded while it was loading").plugin(&shared.id))
            }
        }
    }

    /// Keeps a plugin that could not even be read in the list, as failed.
    fn record_failure(&self, e: &Error, path: Option<&Path>) {
        let id = e.plugin.clone().unwrap_or_else(|| path.map(guess_id).unwrap_or_default());
        let shared = Shared::new(&id, self.bus.clone());
        shared.update_info(|i| {
            i.version = "0.0.0".into();
            i.last_error = Some(e.clone());
        });
        shared.set_status(PluginStatus::Failed);
        {
            let mut plugins = self.plugins.write().unwrap();
            if let Some(existing) = plugins.get(&id) {
                if existing.handle.status() == PluginStatus::Ready {
                    return; // never shadow a running plugin with a broken namesake
                }
                existing.handle.shared().close();
                existing.handle.shared().join();
            }
            let canonical = path.map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf()));
            let location = canonical.or_else(|| plugins.get(&id).map(|p| p.location.clone()));
            plugins.insert(
                id.clone(),
                Entry {
                    handle: PluginHandle::new(shared),
                    location: location.unwrap_or_default(),
                    diagnostics: e.diagnostics.clone(),
                    events: Vec::new(),
                    commands: Vec::new(),
                },
            );
        }
        self.bus.emit(LifecycleEvent::LoadFailed { plugin: id, error: e.clone() });
    }

    pub(crate) fn list(&self) -> Vec<PluginInfo> {
        let plugins = self.plugins.read().unwrap();
        plugins
            .iter()
            .map(|(id, e)| {
                let info = e.handle.shared().info();
                PluginInfo {
                    id: id.clone(),
                    version: info.version,
                    location: e.location.clone(),
                    status: e.handle.status(),
                    hooks: info.hooks,
                    stats: e.handle.stats(),
                    error: info.last_error,
                    diagnostics: e.diagnostics.clone(),
                    permissions: info.permissions,
                }
            })
            .collect()
    }

    /// The shared state and location of plugin `id`.
    fn entry(&self, id: &str) -> Result<(Arc<Shared>, PathBuf)> {
        let plugins = self.plugins.read().unwrap();
        let e = plugins
            .get(id)
            .ok_or_else(|| Error::new(ErrorCode::PluginNotFound, format!("no plugin `{id}` is loaded")).plugin(id))?;
        Ok((e.handle.shared().clone(), e.location.clone()))
    }

    /// The id of the plugin loaded from `location`, if any.
    pub(crate) fn id_at(&self, location: &Path) -> Option<String> {
        self.plugins.read().unwrap().iter().find(|(_, e)| e.location == location).map(|(id, _)| id.clone())
    }

    pub(crate) fn unload(&self, id: &str) -> Result<()> {
        let entry =
            self.plugins.write().unwrap().remove(id).ok_or_else(|| {
                Error::new(ErrorCode::PluginNotFound, format!("no plugin `{id}` is loaded")).plugin(id)
            })?;
        let shared = entry.handle.shared();
        shared.close();
        shared.join();
        self.bus.emit(LifecycleEvent::Unloaded { plugin: id.to_owned() });
        Ok(())
    }

    pub(crate) fn reload(&self, id: &str) -> Result<()> {
        let _one_at_a_time = self.reloading.lock().unwrap();
        let t0 = Instant::now();
        let (shared, location) = self.entry(id)?;
        let fail = |e: Error| {
            shared.update_info(|i| i.last_error = Some(e.clone()));
            if shared.status() != PluginStatus::Ready {
                shared.set_status(PluginStatus::Failed);
            }
            self.bus.emit(LifecycleEvent::ReloadFailed { plugin: id.to_owned(), error: e.clone() });
            Err(e)
        };
        let source = match PluginSource::from_path(&location) {
            Ok(s) if s.id == id => s,
            Ok(s) => {
                let msg = format!("its id changed to `{}`; unload it and load it as a new plugin", s.id);
                return fail(Error::new(ErrorCode::LoadFailed, msg).plugin(id));
            }
            Err(e) => return fail(e),
        };
        let diagnostics = self.diagnostics_for(&source);
        let permissions = self.engine.permissions_for(&source);
        let version = source.version().to_owned();
        // (Read before the new thread starts: it marks the plugin ready once it has loaded.)
        let was_running = shared.status() == PluginStatus::Ready;
        let events = source.manifest().map(|m| m.events.clone()).unwrap_or_default();
        let commands = source.manifest().map(|m| m.commands.clone()).unwrap_or_default();
        let s = match worker::spawn(&self.engine, source, shared.clone(), self.links()) {
            Ok(s) => s,
            Err(e) => return fail(e),
        };
        let hooks = match s.wait() {
            Ok(hooks) => hooks,
            Err(e) => {
                let _ = s.thread.join();
                return fail(e.in_context(id, None));
            }
        };
        let old_hooks = shared.info().hooks;
        // From here new calls go to the new version, queued behind its onLoad (if any), which
        // waits for the old version's state. The old version first answers everything already
        // queued for it, then onUnload, so no update is lost between the two.
        let (old, state_tx) = self.open(&shared, s, &hooks)?;
        shared.update_info(|i| {
            i.hooks = hooks;
            i.version = version.clone();
            i.last_error = None;
            i.permissions = permissions;
        });
        let state = match &old {
            Some(old) if was_running && old_hooks.iter().any(|h| h == ON_UNLOAD) => {
                call_mailbox(old, id, ON_UNLOAD, Value::Null).unwrap_or_else(|e| {
                    self.bus.emit(LifecycleEvent::HookFailed { plugin: id.to_owned(), error: e });
                    Value::Null
                })
            }
            _ => Value::Null,
        };
        if let Some(tx) = state_tx {
            let _ = tx.send(state);
        }
        if let Some(old) = old {
            let _ = old.send(Request::Stop);
        }
        shared.set_status(PluginStatus::Ready);
        if let Some(e) = self.plugins.write().unwrap().get_mut(id) {
            e.diagnostics = diagnostics;
            e.events = events;
            e.commands = commands;
        }
        self.bus.emit(LifecycleEvent::Reloaded { plugin: id.to_owned(), version, took_ms: millis(t0) });
        Ok(())
    }
}

fn millis(since: Instant) -> f64 {
    (since.elapsed().as_secs_f64() * 1e5).round() / 100.0
}
