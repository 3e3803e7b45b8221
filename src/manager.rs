//! The [`Manager`]: the set of plugins a host runs — loading, listing, reloading, unloading.
//!
//! Every plugin the manager has seen keeps an entry, including the ones that failed to load:
//! their error stays visible in [`Manager::list`] and a call to them answers with that error,
//! so one broken plugin never hides the others and never makes a caller guess why.
//!
//! This file is the plugins' lifecycle and nothing else. The table it keeps is in
//! `registry.rs`, event delivery in `dispatch.rs`, the directory watcher in `watch.rs`, how
//! plugins reach each other in `links.rs`; a plugin's thread (`worker.rs`) and isolate
//! (`runtime/`) know none of them.

use std::path::Path;
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use serde::Serialize;
use serde_json::Value;

use crate::call::{ON_LOAD, ON_UNLOAD, Request};
use crate::config::PluginConfig;
use crate::dispatch::{
    self, AsyncCaller, Background, BlockingCaller, ChainReport, CommandInfo, EmitReport, notify_in_background,
    payload_of, run_blocking,
};
use crate::engine::{Engine, Isolation};
use crate::error::{Error, ErrorCode, Result};
use crate::events::{EventBus, LifecycleEvent, LifecycleEvents};
use crate::handle::{PluginHandle, PluginStatus, Shared, call_mailbox};
use crate::pool::WarmPool;
pub use crate::registry::PluginInfo;
use crate::registry::{Entry, Registry};
use crate::runtime::isolate::MIN_HEAP_BYTES;
use crate::source::{PluginSource, guess_id, is_plugin_path, plugin_paths};
use crate::stats::PoolStats;
use crate::waits::WaitGraph;
use crate::watch::Watcher;
use crate::{links::Links, worker};

/// The outcome of [`Manager::load_dir`]: which plugins run and which did not (and why).
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct LoadReport {
    /// Ids of the plugins that loaded.
    pub loaded: Vec<String>,
    /// One error per plugin that did not load, naming it.
    pub failed: Vec<Error>,
}

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
struct Inner {
    engine: Engine,
    registry: Arc<Registry>,
    bus: Arc<EventBus>,
    /// Owned here: plugins' links and the lifecycle forward hold it weakly, so deliveries stop
    /// with the manager.
    _background: Arc<Background>,
    /// What plugins' isolates use to reach each other.
    links: Arc<Links>,
    watcher: Mutex<Option<Watcher>>,
    /// Ready isolates for plugins to start on (see `pool.rs`); gone at shutdown.
    pool: Mutex<Option<Arc<WarmPool>>>,
}

/// A plugin whose thread was started and is evaluating its code.
struct Starting {
    shared: Arc<Shared>,
    config: Arc<PluginConfig>,
    since: Instant,
    thread: worker::Starting,
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
        let registry = Arc::new(Registry::default());
        let background = Background::new(rt.handle().clone());
        let links = Arc::new(Links {
            registry: Arc::downgrade(&registry),
            waits: Arc::new(WaitGraph::default()),
            background: Arc::downgrade(&background),
        });
        let bus = Arc::new(EventBus::default());
        // Plugins may subscribe to lifecycle events as `plugin:loaded`, `plugin:reloaded`,
        // `plugin:unloaded` and `plugin:errored` (`LifecycleEvent::plugin_event`).
        let (table, bg) = (Arc::downgrade(&registry), Arc::downgrade(&background));
        bus.set_forward(move |e| {
            let Some(name) = e.plugin_event() else { return };
            let (Some(table), Some(bg)) = (table.upgrade(), bg.upgrade()) else { return };
            let payload = serde_json::to_value(e).expect("lifecycle events serialise");
            if let Err(err) = notify_in_background(&table, &bg, name, payload, 1) {
                tracing::warn!("{err}");
            }
        });
        let pool = (engine.warm_pool() > 0).then(|| {
            let heap_limit = engine.limits().heap_limit.max(MIN_HEAP_BYTES);
            Arc::new(WarmPool::new(engine.warm_pool(), heap_limit, engine.memory_guard().clone()))
        });
        let inner = Arc::new(Inner {
            engine,
            registry,
            bus,
            _background: background,
            links,
            watcher: Mutex::new(None),
            pool: Mutex::new(pool),
        });
        Manager { inner, events_rt: Mutex::new(Some(rt)) }
    }

    /// Subscribes to lifecycle events (loaded, reloaded, reload failed, unloaded, restarted):
    /// every event from now on, to iterate or await.
    ///
    /// ```no_run
    /// # fn demo(manager: isola::Manager) {
    /// for event in manager.events() {
    ///     println!("{} {event:?}", event.plugin());
    /// }
    /// # }
    /// ```
    pub fn events(&self) -> LifecycleEvents {
        self.inner.bus.subscribe()
    }

    /// What the warm pool has done ([`EngineBuilder::warm_pool`](crate::EngineBuilder::warm_pool)):
    /// isolates ready now, made and taken so far, and CPU per isolate. `None` without a pool.
    ///
    /// ```no_run
    /// let manager = isola::Manager::new(isola::Engine::builder().warm_pool(2).build());
    /// let pool = manager.pool_stats().unwrap();
    /// println!("{} ready, {} µs of CPU each", pool.ready, pool.cpu_us_per_isolate);
    /// ```
    pub fn pool_stats(&self) -> Option<PoolStats> {
        self.inner.pool.lock().unwrap().as_ref().map(|p| p.stats())
    }

    /// Watches `dir` and keeps the plugins in sync with it: a changed plugin is reloaded
    /// (debounced, so an editor's several writes make one reload), a new one is loaded, a
    /// removed one unloaded. A version that fails to load never replaces a working one.
    /// Usually called after [`load_dir`](Self::load_dir) on the same directory.
    pub fn watch(&self, dir: impl AsRef<Path>) -> Result<()> {
        let inner = Arc::downgrade(&self.inner);
        let w = Watcher::start(dir.as_ref(), move |location| {
            if let Some(inner) = Weak::upgrade(&inner) {
                inner.sync(location);
            }
        })?;
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
        self.inner.registry.list()
    }

    /// The ids of every plugin the manager knows.
    pub fn ids(&self) -> Vec<String> {
        self.inner.registry.ids()
    }

    /// A handle to plugin `id` (also for a failed plugin: its calls answer with its error).
    pub fn handle(&self, id: &str) -> Result<PluginHandle> {
        self.inner.registry.handle(id)
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
        self.inner
            .engine
            .storage()
            .backend()
            .remove_plugin(id)
            .map_err(|e| Error::new(ErrorCode::HostError, e.to_string()).plugin(id))
    }

    /// Notifies every plugin subscribed to `event` (manifest `events`), in parallel, and
    /// reports each delivery. Subscribers get `(payload, {event})`. A payload that cannot be
    /// serialised is `INVALID_ARGS`, and nothing is delivered.
    ///
    /// ```no_run
    /// # async fn demo(manager: isola::Manager) -> isola::Result<()> {
    /// let report = manager.emit("user-joined", serde_json::json!({"name": "Ada"})).await?;
    /// for d in report.deliveries.iter().filter(|d| d.error.is_some()) {
    ///     eprintln!("{} failed: {}", d.plugin, d.error.as_ref().unwrap());
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn emit(&self, event: &str, payload: impl Serialize) -> Result<EmitReport> {
        let payload = payload_of(event, payload)?;
        let subs = self.inner.registry.subscribers(event);
        Ok(dispatch::notify(subs, event, payload, 0, AsyncCaller).await)
    }

    /// [`emit`](Self::emit) for non-async code: waits on the calling thread.
    pub fn emit_blocking(&self, event: &str, payload: impl Serialize) -> Result<EmitReport> {
        let payload = payload_of(event, payload)?;
        let subs = self.inner.registry.subscribers(event);
        Ok(run_blocking(dispatch::notify(subs, event, payload, 0, BlockingCaller)))
    }

    /// Runs `event` through its subscribers as a chain (see [`isola::dispatch`](crate::dispatch)):
    /// each may leave the payload, replace it, or cancel the event.
    ///
    /// ```no_run
    /// # async fn demo(manager: isola::Manager) -> isola::Result<()> {
    /// let r = manager.dispatch("chat", serde_json::json!({"user": "ada", "text": "hi :)"})).await?;
    /// if let Some(who) = &r.cancelled_by {
    ///     println!("blocked by {who}");
    /// } else {
    ///     println!("deliver {}", r.payload);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn dispatch(&self, event: &str, payload: impl Serialize) -> Result<ChainReport> {
        let payload = payload_of(event, payload)?;
        Ok(dispatch::chain(&self.inner.registry, event, payload).await)
    }

    /// [`dispatch`](Self::dispatch) for non-async code: waits on the calling thread.
    pub fn dispatch_blocking(&self, event: &str, payload: impl Serialize) -> Result<ChainReport> {
        let payload = payload_of(event, payload)?;
        Ok(dispatch::chain_blocking(&self.inner.registry, event, payload))
    }

    /// Every command the loaded plugins declare, as `PLUGIN:COMMAND`.
    pub fn commands(&self) -> Vec<CommandInfo> {
        dispatch::commands(&self.inner.registry)
    }

    /// Runs command `name` (`PLUGIN:COMMAND`) with `args` (as for
    /// [`PluginHandle::call_blocking`]). An unknown name is `COMMAND_NOT_FOUND`, listing close
    /// matches.
    pub fn run_command<A: Serialize>(&self, name: &str, args: A) -> Result<Value> {
        let (handle, hook) = dispatch::command(&self.inner.registry, name)?;
        handle.call_blocking(&hook, args)
    }

    /// Stops watching, stops every plugin and waits for all their threads. Handles answer
    /// `SHUT_DOWN` after.
    pub fn shutdown(&self) {
        if let Some(w) = self.inner.watcher.lock().unwrap().take() {
            w.stop();
        }
        let entries = self.inner.registry.take_all();
        // Tell every thread first, then wait: the threads wind down in parallel.
        for e in &entries {
            e.handle.shared().close();
        }
        for e in &entries {
            e.handle.shared().join();
        }
        // Its waiting threads end with it (a plugin thread may still hold it for a moment).
        drop(self.inner.pool.lock().unwrap().take());
        if let Some(rt) = self.events_rt.lock().unwrap().take() {
            rt.shutdown_background();
        }
        self.inner.bus.close();
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Whether a plugin in this state is (or is about to be) running: such a plugin is never
/// replaced by a namesake.
fn is_live(status: PluginStatus) -> bool {
    matches!(status, PluginStatus::Loading | PluginStatus::Ready | PluginStatus::Restarting)
}

impl Inner {
    /// Loads every plugin in `dir`, a few at a time: as many as there are cores (times two,
    /// so that one plugin's thread start overlaps another's evaluation), each finished in the
    /// order started. Why not all at once: a thousand isolates evaluating together on two
    /// cores finish no sooner, and the allocator keeps the memory of that peak long after
    /// (most of it when idle plugins are evicted right after loading).
    fn load_dir(&self, dir: &Path) -> Result<LoadReport> {
        let window = std::thread::available_parallelism().map_or(2, |n| n.get()) * 2;
        let mut report = LoadReport::default();
        let mut starting = std::collections::VecDeque::new();
        for path in plugin_paths(dir)? {
            if starting.len() >= window
                && let Some(s) = starting.pop_front()
            {
                self.finish_into(s, &mut report);
            }
            match PluginSource::from_path(&path) {
                Ok(source) => match self.start(source) {
                    Ok(s) => starting.push_back(s),
                    Err(e) => report.failed.push(e),
                },
                Err(e) => {
                    // Keep where it is, so that fixing the files (or a watcher) can reload it.
                    self.record_failure(&e, &path);
                    report.failed.push(e);
                }
            }
        }
        for s in starting {
            self.finish_into(s, &mut report);
        }
        Ok(report)
    }

    /// [`finish_start`](Self::finish_start), noting the outcome in `report`.
    fn finish_into(&self, s: Starting, report: &mut LoadReport) {
        let id = s.config.id().to_owned();
        match self.finish_start(s) {
            Ok(()) => report.loaded.push(id),
            Err(e) => report.failed.push(e),
        }
    }

    fn load(&self, path: &Path) -> Result<PluginHandle> {
        let source = PluginSource::from_path(path).inspect_err(|e| self.record_failure(e, path))?;
        let s = self.start(source)?;
        let shared = s.shared.clone();
        self.finish_start(s)?;
        Ok(PluginHandle::new(shared))
    }

    /// Registers `source` and starts its thread (without waiting for it to load). A plugin
    /// that is known but not running (it failed) keeps its shared state, so handles taken
    /// before reach the new version.
    fn start(&self, source: PluginSource) -> Result<Starting> {
        let since = Instant::now();
        let config = Arc::new(PluginConfig::resolve(&self.engine, source));
        let id = config.id().to_owned();
        let _one_at_a_time = self.registry.lifecycle(&id);
        let shared = match self.registry.get(&id) {
            Some(existing) if is_live(existing.handle.status()) => {
                let msg = format!(
                    "another plugin with id `{id}` is already loaded (from {}); ids must be unique",
                    existing.location.display()
                );
                return Err(Error::new(ErrorCode::LoadFailed, msg).plugin(&id));
            }
            Some(existing) if !existing.handle.shared().is_closed() => existing.handle.shared().clone(),
            _ => Shared::new(&id, self.bus.clone()),
        };
        shared.set_status(PluginStatus::Loading);
        shared.update_info(|i| {
            i.version = config.source.version().to_owned();
            i.permissions = config.permissions.clone();
        });
        self.registry.insert(
            &id,
            Entry {
                handle: PluginHandle::new(shared.clone()),
                location: config.source.location.clone(),
                config: Some(config.clone()),
                read_errors: Vec::new(),
            },
        );
        match self.spawn(config.clone(), shared.clone()) {
            Ok(thread) => Ok(Starting { shared, config, since, thread }),
            Err(e) => Err(self.failed(&shared, e)),
        }
    }

    /// Starts a plugin version where its configuration says: a thread, or a child process.
    fn spawn(&self, config: Arc<PluginConfig>, shared: Arc<Shared>) -> Result<worker::Starting> {
        match config.isolation {
            Isolation::Thread => {
                let pool = self.pool.lock().unwrap().clone();
                worker::spawn(&self.engine, config, shared, self.links.clone(), pool.as_ref())
            }
            Isolation::Process => crate::process::spawn(&self.engine, config, shared, self.links.clone()),
        }
    }

    /// Waits for a starting plugin, runs its `onLoad`, and opens its mailbox.
    fn finish_start(&self, s: Starting) -> Result<()> {
        let id = s.config.id().to_owned();
        let hooks = match s.thread.wait() {
            Ok(hooks) => hooks,
            Err(e) => {
                let _ = s.thread.thread.join();
                return Err(self.failed(&s.shared, e));
            }
        };
        let _one_at_a_time = self.registry.lifecycle(&id);
        s.shared.update_info(|i| {
            i.hooks = hooks.clone();
            i.last_error = None;
        });
        let (old, state) = open(&s.shared, s.thread, &hooks)?;
        s.shared.set_status(PluginStatus::Ready);
        if let Some(state) = state {
            let _ = state.send(Value::Null); // a first load has no state to receive
        }
        if let Some(old) = old {
            // A failed version that was still answering with its error.
            let _ = old.send(Request::Stop);
        }
        let version = s.config.source.version().to_owned();
        self.bus.emit(LifecycleEvent::Loaded { plugin: id, version, took_ms: millis(s.since) });
        Ok(())
    }

    /// Marks a plugin failed with `e` (given its plugin id here) and reports it.
    fn failed(&self, shared: &Shared, e: Error) -> Error {
        let e = e.in_context(&shared.id, None);
        shared.update_info(|i| i.last_error = Some(e.clone()));
        shared.set_status(PluginStatus::Failed);
        self.bus.emit(LifecycleEvent::LoadFailed { plugin: shared.id.clone(), error: e.clone() });
        e
    }

    /// Keeps a plugin whose files could not even be read in the list, as failed, at `path`.
    /// Never replaces a plugin that is running, loading or restarting, and never waits on a
    /// plugin's thread (which may itself be looking something up in the table).
    fn record_failure(&self, e: &Error, path: &Path) {
        let id = e.plugin.clone().unwrap_or_else(|| guess_id(path));
        let _one_at_a_time = self.registry.lifecycle(&id);
        let existing = self.registry.get(&id);
        if existing.as_ref().is_some_and(|x| is_live(x.handle.status())) {
            return;
        }
        // Keep the shared state (handles taken before stay valid); stop any thread that was
        // still answering for it.
        let shared = match &existing {
            Some(x) if !x.handle.shared().is_closed() => {
                x.handle.shared().stop_thread();
                x.handle.shared().clone()
            }
            _ => Shared::new(&id, self.bus.clone()),
        };
        shared.update_info(|i| {
            i.version = "0.0.0".into();
            i.hooks.clear();
            i.last_error = Some(e.clone());
        });
        shared.set_status(PluginStatus::Failed);
        let location = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        self.registry.insert(
            &id,
            Entry { handle: PluginHandle::new(shared), location, config: None, read_errors: e.diagnostics.clone() },
        );
        self.bus.emit(LifecycleEvent::LoadFailed { plugin: id, error: e.clone() });
    }

    fn unload(&self, id: &str) -> Result<()> {
        let _one_at_a_time = self.registry.lifecycle(id);
        let entry = self.registry.remove(id).ok_or_else(|| not_found(id))?;
        let shared = entry.handle.shared();
        shared.close();
        shared.join();
        self.bus.emit(LifecycleEvent::Unloaded { plugin: id.to_owned() });
        Ok(())
    }

    fn reload(&self, id: &str) -> Result<()> {
        let _one_at_a_time = self.registry.lifecycle(id);
        let t0 = Instant::now();
        let entry = self.registry.get(id).ok_or_else(|| not_found(id))?;
        let shared = entry.handle.shared().clone();
        let fail = |e: Error| {
            let e = e.in_context(id, None);
            shared.update_info(|i| i.last_error = Some(e.clone()));
            if shared.status() != PluginStatus::Ready {
                shared.set_status(PluginStatus::Failed);
            }
            self.bus.emit(LifecycleEvent::ReloadFailed { plugin: id.to_owned(), error: e.clone() });
            Err(e)
        };
        let source = match PluginSource::from_path(&entry.location) {
            Ok(s) if s.id == id => s,
            Ok(s) => {
                let msg = format!("its id changed to `{}`; unload it and load it as a new plugin", s.id);
                return fail(Error::new(ErrorCode::LoadFailed, msg));
            }
            Err(e) => return fail(e),
        };
        let config = Arc::new(PluginConfig::resolve(&self.engine, source));
        // (Read before the new thread starts: it marks the plugin ready once it has loaded.)
        let was_running = shared.status() == PluginStatus::Ready;
        let s = match self.spawn(config.clone(), shared.clone()) {
            Ok(s) => s,
            Err(e) => return fail(e),
        };
        let hooks = match s.wait() {
            Ok(hooks) => hooks,
            Err(e) => {
                let _ = s.thread.join();
                return fail(e);
            }
        };
        let old_hooks = shared.info().hooks;
        // From here new calls go to the new version, queued behind its onLoad (if any), which
        // waits for the old version's state. The old version first answers everything already
        // queued for it, then onUnload, so no update is lost between the two.
        let (old, state_tx) = open(&shared, s, &hooks)?;
        let version = config.source.version().to_owned();
        shared.update_info(|i| {
            i.hooks = hooks;
            i.version = version.clone();
            i.last_error = None;
            i.permissions = config.permissions.clone();
        });
        self.registry.update(id, |e| {
            e.config = Some(config.clone());
            e.read_errors.clear();
        });
        // An evicted old version kept what its `onUnload` gave: taken as it is, not woken up
        // to be asked again.
        let kept = old.as_ref().and_then(Mailbox::take_kept);
        let state = match &old {
            _ if kept.is_some() => kept.unwrap_or_default(),
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
        self.bus.emit(LifecycleEvent::Reloaded { plugin: id.to_owned(), version, took_ms: millis(t0) });
        Ok(())
    }

    /// Brings the plugin at `location` in line with the disk (for the directory watcher).
    fn sync(&self, location: &Path) {
        let known = self.registry.id_at(location);
        let present = is_plugin_path(location);
        let r = match (known, present) {
            (Some(id), false) => self.unload(&id),
            (Some(id), true) => self.reload(&id),
            (None, true) => self.load(location).map(drop),
            (None, false) => Ok(()),
        };
        if let Err(e) = r {
            tracing::warn!("{e}");
        }
    }
}

type Mailbox = crate::call::MailboxTx;

/// Points `shared` at a plugin thread that has loaded. If the plugin has `onLoad`, it is
/// queued as the thread's first request, waiting for the state sent through the returned
/// sender; a failure there is reported as an event, never fatal. Returns the previous mailbox.
/// Fails with `SHUT_DOWN` if the plugin was unloaded meanwhile (and stops the thread).
fn open(
    shared: &Shared,
    s: worker::Starting,
    hooks: &[String],
) -> Result<(Option<Mailbox>, Option<crossbeam_channel::Sender<Value>>)> {
    let state = hooks.iter().any(|h| h == ON_LOAD).then(|| {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let _ = s.tx.send(Request::Init { state: rx });
        tx
    });
    match shared.open(s.tx, s.thread, s.generation) {
        Ok(old) => Ok((old, state)),
        Err((tx, thread)) => {
            drop(state);
            let _ = tx.send(Request::Stop);
            let _ = thread.join();
            Err(Error::new(ErrorCode::ShutDown, "the plugin was unloaded while it was loading").plugin(&shared.id))
        }
    }
}

fn not_found(id: &str) -> Error {
    Error::new(ErrorCode::PluginNotFound, format!("no plugin `{id}` is loaded")).plugin(id)
}

fn millis(since: Instant) -> f64 {
    (since.elapsed().as_secs_f64() * 1e5).round() / 100.0
}
