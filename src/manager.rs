//! The [`Manager`]: the set of plugins a host runs — loading, listing, reloading, unloading.
//!
//! Every plugin the manager has seen keeps an entry, including the ones that failed to load:
//! their error stays visible in [`Manager::list`] and a call to them answers with that error,
//! so one broken plugin never hides the others and never makes a caller guess why.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use serde::Serialize;

use crate::engine::Engine;
use crate::error::{Error, ErrorCode, Result};
use crate::handle::{PluginHandle, PluginStatus, Shared};
use crate::manifest::Diagnostic;
use crate::source::{PluginSource, discover, guess_id};
use crate::stats::PluginStats;
use crate::worker;

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
}

/// The outcome of [`Manager::load_dir`]: which plugins run and which did not (and why).
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Ids of the plugins that loaded.
    pub loaded: Vec<String>,
    /// One error per plugin that did not load, naming it.
    pub failed: Vec<Error>,
}

struct Entry {
    handle: PluginHandle,
    location: PathBuf,
    diagnostics: Vec<Diagnostic>,
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
    engine: Engine,
    plugins: RwLock<BTreeMap<String, Entry>>,
}

impl Manager {
    /// A manager with no plugins yet.
    pub fn new(engine: Engine) -> Manager {
        Manager { engine, plugins: RwLock::new(BTreeMap::new()) }
    }

    /// The engine plugins are started with.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Loads every plugin in `dir`, in parallel. Fails only if the directory cannot be read;
    /// broken plugins are reported in the [`LoadReport`] and kept (as failed) in the list.
    pub fn load_dir(&self, dir: impl AsRef<Path>) -> Result<LoadReport> {
        let found = discover(dir.as_ref())?;
        let mut report = LoadReport::default();
        let mut starting = Vec::new();
        for item in found {
            match item {
                Ok(source) => match self.start(source) {
                    Ok(s) => starting.push(s),
                    Err(e) => report.failed.push(e),
                },
                Err(e) => {
                    self.record_failure(&e, None);
                    report.failed.push(e);
                }
            }
        }
        for (shared, s) in starting {
            match finish_start(&shared, s) {
                Ok(()) => report.loaded.push(shared.id.clone()),
                Err(e) => report.failed.push(e),
            }
        }
        Ok(report)
    }

    /// Loads one plugin (a folder with `plugin.json`, or a `.js` script) and returns its handle.
    pub fn load(&self, path: impl AsRef<Path>) -> Result<PluginHandle> {
        let source =
            PluginSource::from_path(path.as_ref()).inspect_err(|e| self.record_failure(e, Some(path.as_ref())))?;
        let (shared, s) = self.start(source)?;
        finish_start(&shared, s)?;
        Ok(PluginHandle::new(shared))
    }

    /// Registers `source` and starts its thread (without waiting for it to load).
    fn start(&self, source: PluginSource) -> Result<(Arc<Shared>, worker::Starting)> {
        let mut plugins = self.plugins.write().unwrap();
        if let Some(existing) = plugins.get(&source.id) {
            if existing.handle.status() != PluginStatus::Failed && existing.handle.status() != PluginStatus::Stopped {
                return Err(Error::new(
                    ErrorCode::LoadFailed,
                    format!(
                        "another plugin with id `{}` is already loaded (from {}); ids must be unique",
                        source.id,
                        existing.location.display()
                    ),
                )
                .plugin(&source.id));
            }
        }
        let shared = Shared::new(&source.id);
        shared.update_info(|i| i.version = source.version().to_owned());
        plugins.insert(
            source.id.clone(),
            Entry {
                handle: PluginHandle::new(shared.clone()),
                location: source.location.clone(),
                diagnostics: source.diagnostics.clone(),
            },
        );
        drop(plugins);
        let s = worker::spawn(&self.engine, source, shared.clone()).inspect_err(|e| {
            shared.update_info(|i| i.last_error = Some(e.clone()));
            shared.set_status(PluginStatus::Failed);
        })?;
        Ok((shared, s))
    }

    /// Keeps a plugin that could not even be read in the list, as failed.
    fn record_failure(&self, e: &Error, path: Option<&Path>) {
        let id = e.plugin.clone().unwrap_or_else(|| path.map(guess_id).unwrap_or_default());
        let shared = Shared::new(&id);
        shared.update_info(|i| {
            i.version = "0.0.0".into();
            i.last_error = Some(e.clone());
        });
        shared.set_status(PluginStatus::Failed);
        let mut plugins = self.plugins.write().unwrap();
        if plugins.get(&id).is_some_and(|p| p.handle.status() == PluginStatus::Ready) {
            return; // never shadow a running plugin with a broken namesake
        }
        plugins.insert(
            id,
            Entry {
                handle: PluginHandle::new(shared),
                location: path.map(Path::to_path_buf).unwrap_or_default(),
                diagnostics: e.diagnostics.clone(),
            },
        );
    }

    /// Every plugin the manager knows, sorted by id.
    pub fn list(&self) -> Vec<PluginInfo> {
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
                }
            })
            .collect()
    }

    /// The ids of every plugin the manager knows.
    pub fn ids(&self) -> Vec<String> {
        self.plugins.read().unwrap().keys().cloned().collect()
    }

    /// A handle to plugin `id` (also for a failed plugin: its calls answer with its error).
    pub fn handle(&self, id: &str) -> Result<PluginHandle> {
        self.plugins
            .read()
            .unwrap()
            .get(id)
            .map(|e| e.handle.clone())
            .ok_or_else(|| Error::new(ErrorCode::PluginNotFound, format!("no plugin `{id}` is loaded")).plugin(id))
    }

    /// Stops plugin `id` (waiting for its thread) and forgets it. Handles to it answer
    /// `SHUT_DOWN` from now on.
    pub fn unload(&self, id: &str) -> Result<()> {
        let entry =
            self.plugins.write().unwrap().remove(id).ok_or_else(|| {
                Error::new(ErrorCode::PluginNotFound, format!("no plugin `{id}` is loaded")).plugin(id)
            })?;
        let shared = entry.handle.shared();
        shared.close();
        shared.join();
        Ok(())
    }

    /// Reads plugin `id` from disk again and starts it in a fresh isolate. Handles keep
    /// working and now reach the new version; calls already queued finish on the old one.
    /// If the new version fails to load, the old one (if it was running) keeps serving and
    /// the error is returned and kept as the plugin's last error.
    pub fn reload(&self, id: &str) -> Result<()> {
        let (shared, location) = {
            let plugins = self.plugins.read().unwrap();
            let e = plugins.get(id).ok_or_else(|| {
                Error::new(ErrorCode::PluginNotFound, format!("no plugin `{id}` is loaded")).plugin(id)
            })?;
            (e.handle.shared().clone(), e.location.clone())
        };
        let fail = |e: Error| {
            shared.update_info(|i| i.last_error = Some(e.clone()));
            if shared.status() != PluginStatus::Ready {
                shared.set_status(PluginStatus::Failed);
            }
            Err(e)
        };
        let source = match PluginSource::from_path(&location) {
            Ok(s) if s.id == id => s,
            Ok(s) => {
                return fail(
                    Error::new(ErrorCode::LoadFailed, format!("its id changed to `{}`; load it as a new plugin", s.id))
                        .plugin(id),
                );
            }
            Err(e) => return fail(e),
        };
        let diagnostics = source.diagnostics.clone();
        let version = source.version().to_owned();
        let s = match worker::spawn(&self.engine, source, shared.clone()) {
            Ok(s) => s,
            Err(e) => return fail(e),
        };
        match s.wait() {
            Ok(hooks) => {
                shared.update_info(|i| {
                    i.hooks = hooks;
                    i.version = version;
                    i.last_error = None;
                });
                shared.add_thread(s.thread);
                if let Some(old) = shared.swap_mailbox(Some(s.tx)) {
                    let _ = old.send(crate::handle::Request::Stop);
                }
                shared.set_status(PluginStatus::Ready);
                if let Some(e) = self.plugins.write().unwrap().get_mut(id) {
                    e.diagnostics = diagnostics;
                }
                Ok(())
            }
            Err(e) => {
                let _ = s.thread.join();
                fail(e.in_context(id, None))
            }
        }
    }

    /// Stops every plugin and waits for all their threads. Handles answer `SHUT_DOWN` after.
    pub fn shutdown(&self) {
        let entries = std::mem::take(&mut *self.plugins.write().unwrap());
        // Tell every thread first, then wait: the threads wind down in parallel.
        for e in entries.values() {
            e.handle.shared().close();
        }
        for e in entries.values() {
            e.handle.shared().join();
        }
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Waits for a starting plugin and records the outcome on its shared state.
fn finish_start(shared: &Arc<Shared>, s: worker::Starting) -> Result<()> {
    let r = s.wait();
    match r {
        Ok(hooks) => {
            shared.update_info(|i| i.hooks = hooks);
            shared.add_thread(s.thread);
            shared.swap_mailbox(Some(s.tx));
            Ok(())
        }
        Err(e) => {
            let _ = s.thread.join();
            shared.update_info(|i| i.last_error = Some(e.clone()));
            shared.set_status(PluginStatus::Failed);
            Err(e)
        }
    }
}
