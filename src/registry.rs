//! The plugin table: every plugin a manager knows, by id and by location, with what its
//! manifest subscribes to and offers.
//!
//! Why its own module: lookups (by id for calls, by location for the directory watcher, by
//! event for deliveries, by command name) are needed by event dispatch, the watcher and the
//! plugins' own isolates, while changing the table is the lifecycle's job alone (in
//! `manager.rs`). Keeping the table here lets each of them depend on it without depending on
//! each other.
//!
//! The table lock is only ever held for a lookup or an update, never while waiting on a plugin
//! (its thread may itself be looking something up). Loads, reloads and unloads of one plugin
//! are serialised by that plugin's own lifecycle lock ([`Registry::lifecycle`]), so a slow
//! reload of one plugin never holds up another.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, RwLock};

use serde::Serialize;

use crate::config::PluginConfig;
use crate::error::{Diagnostic, Error, ErrorCode, Result};
use crate::handle::{PluginHandle, PluginStatus};
use crate::manifest::{CommandSpec, Subscription};
use crate::permissions::Permissions;
use crate::stats::PluginStats;

/// What [`Manager::list`](crate::Manager::list) reports about one plugin.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
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

/// One plugin in the table.
#[derive(Clone)]
pub(crate) struct Entry {
    pub handle: PluginHandle,
    /// Its folder or script; what the watcher reports changes for.
    pub location: PathBuf,
    /// The version running (or last tried); `None` when not even its files could be read.
    pub config: Option<Arc<PluginConfig>>,
    /// Why its files could not be read (manifest errors), when `config` is `None`.
    pub read_errors: Vec<Diagnostic>,
}

impl Entry {
    fn subscriptions(&self) -> &[Subscription] {
        self.config.as_ref().map(|c| c.events.as_slice()).unwrap_or_default()
    }

    fn commands(&self) -> &[CommandSpec] {
        self.config.as_ref().map(|c| c.commands.as_slice()).unwrap_or_default()
    }

    fn info(&self, id: &str) -> PluginInfo {
        let info = self.handle.shared().info();
        PluginInfo {
            id: id.to_owned(),
            version: info.version,
            location: self.location.clone(),
            status: self.handle.status(),
            hooks: info.hooks,
            stats: self.handle.stats(),
            error: info.last_error,
            diagnostics: self.config.as_ref().map_or_else(|| self.read_errors.clone(), |c| c.diagnostics.clone()),
            permissions: info.permissions,
        }
    }
}

/// Plugin `id`'s lifecycle lock, held (see [`Registry::lifecycle`]).
pub(crate) struct LifecycleGuard<'a> {
    registry: &'a Registry,
    id: String,
}

impl Drop for LifecycleGuard<'_> {
    fn drop(&mut self) {
        let (busy, freed) = &self.registry.lifecycle;
        busy.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.id);
        // Waiters for other ids wake too and wait again: a handful at most (loads run a few
        // at a time).
        freed.notify_all();
    }
}

/// One subscriber of an event.
pub(crate) struct Subscriber {
    pub plugin: String,
    pub hook: String,
    pub handle: PluginHandle,
}

/// A command and the plugin that offers it.
pub(crate) struct Command {
    pub plugin: String,
    pub spec: CommandSpec,
    pub handle: PluginHandle,
}

/// The plugin table.
#[derive(Default)]
pub(crate) struct Registry {
    plugins: RwLock<Table>,
    /// The ids in a load, reload or unload now (see [`Registry::lifecycle`]), and where the
    /// next one for the same id waits.
    lifecycle: (Mutex<HashSet<String>>, Condvar),
}

impl Registry {
    /// The lock that serialises loading, reloading and unloading plugin `id`.
    ///
    /// Held until the guard drops. Only ids in a lifecycle step are kept, so the set stays as
    /// small as the steps running (a lock per id ever loaded, as before, was never given
    /// back: a slow leak for hosts that load plugins under fresh ids).
    pub(crate) fn lifecycle(&self, id: &str) -> LifecycleGuard<'_> {
        let (busy, freed) = &self.lifecycle;
        let mut ids = busy.lock().unwrap_or_else(|e| e.into_inner());
        while ids.contains(id) {
            ids = freed.wait(ids).unwrap_or_else(|e| e.into_inner());
        }
        ids.insert(id.to_owned());
        LifecycleGuard { registry: self, id: id.to_owned() }
    }

    /// Plugin `id`'s entry.
    pub(crate) fn get(&self, id: &str) -> Option<Entry> {
        self.plugins.read().unwrap().entries.get(id).cloned()
    }

    /// A handle to plugin `id`, or `PLUGIN_NOT_FOUND`.
    pub(crate) fn handle(&self, id: &str) -> Result<PluginHandle> {
        self.get(id)
            .map(|e| e.handle)
            .ok_or_else(|| Error::new(ErrorCode::PluginNotFound, format!("no plugin `{id}` is loaded")).plugin(id))
    }

    /// The id of the plugin loaded from `location`, if any.
    pub(crate) fn id_at(&self, location: &Path) -> Option<String> {
        let table = self.plugins.read().unwrap();
        table.entries.iter().find(|(_, e)| e.location == location).map(|(id, _)| id.clone())
    }

    /// Every id, sorted.
    pub(crate) fn ids(&self) -> Vec<String> {
        self.plugins.read().unwrap().entries.keys().cloned().collect()
    }

    /// Adds or replaces plugin `id`'s entry; returns the one it replaced.
    pub(crate) fn insert(&self, id: &str, entry: Entry) -> Option<Entry> {
        let mut table = self.plugins.write().unwrap();
        let old = table.take(id);
        table.put(id, entry);
        old
    }

    /// Changes plugin `id`'s entry, if it is there.
    pub(crate) fn update(&self, id: &str, f: impl FnOnce(&mut Entry)) {
        let mut table = self.plugins.write().unwrap();
        if let Some(mut e) = table.take(id) {
            f(&mut e);
            table.put(id, e);
        }
    }

    /// Removes plugin `id`.
    pub(crate) fn remove(&self, id: &str) -> Option<Entry> {
        self.plugins.write().unwrap().take(id)
    }

    /// Empties the table.
    pub(crate) fn take_all(&self) -> Vec<Entry> {
        std::mem::take(&mut *self.plugins.write().unwrap()).entries.into_values().collect()
    }

    /// What `list` shows, sorted by id.
    pub(crate) fn list(&self) -> Vec<PluginInfo> {
        self.plugins.read().unwrap().entries.iter().map(|(id, e)| e.info(id)).collect()
    }

    /// The running plugins subscribed to `event`, in chain order: higher priority first, then
    /// plugin id.
    pub(crate) fn subscribers(&self, event: &str) -> Vec<Subscriber> {
        let table = self.plugins.read().unwrap();
        let Some(ids) = table.subscribed.get(event) else { return Vec::new() };
        let mut subs: Vec<(i64, Subscriber)> = ids
            .iter()
            .filter_map(|id| table.entries.get_key_value(id))
            .filter(|(_, e)| matches!(e.handle.status(), PluginStatus::Ready | PluginStatus::Restarting))
            .flat_map(|(id, e)| {
                e.subscriptions().iter().filter(|s| s.event == event).map(|s| {
                    (s.priority, Subscriber { plugin: id.clone(), hook: s.hook.clone(), handle: e.handle.clone() })
                })
            })
            .collect();
        subs.sort_by(|(pa, a), (pb, b)| pb.cmp(pa).then_with(|| a.plugin.cmp(&b.plugin)));
        subs.into_iter().map(|(_, s)| s).collect()
    }

    /// Every command the plugins declare, by plugin id.
    pub(crate) fn commands(&self) -> Vec<Command> {
        let table = self.plugins.read().unwrap();
        table
            .entries
            .iter()
            .flat_map(|(id, e)| {
                e.commands().iter().map(|c| Command { plugin: id.clone(), spec: c.clone(), handle: e.handle.clone() })
            })
            .collect()
    }
}

/// The entries, and which of them subscribe to each event.
///
/// Why the index: every load, reload and unload notifies its lifecycle event (`plugin:loaded`,
/// ...), which almost no plugin subscribes to; finding that out by going through every entry
/// made loading n plugins O(n²) (a visible share of `load_dir`'s CPU at 1,000 plugins, most
/// of it at 10,000). Kept here, where every change to the entries is made, so it cannot drift.
#[derive(Default)]
struct Table {
    entries: BTreeMap<String, Entry>,
    /// Event name -> ids of the entries whose manifest subscribes to it (whatever their status;
    /// [`Registry::subscribers`] checks that).
    subscribed: HashMap<String, BTreeSet<String>>,
}

/// Every change to the entries is a [`take`](Table::take) and/or a [`put`](Table::put), which
/// keep the index in step.
impl Table {
    /// Removes plugin `id`'s entry and its subscriptions.
    fn take(&mut self, id: &str) -> Option<Entry> {
        let old = self.entries.remove(id)?;
        for s in old.subscriptions() {
            if let Some(ids) = self.subscribed.get_mut(&s.event) {
                ids.remove(id);
                if ids.is_empty() {
                    self.subscribed.remove(&s.event);
                }
            }
        }
        Some(old)
    }

    /// Adds plugin `id`'s entry (there is none: [`take`](Table::take) it first) and its
    /// subscriptions.
    fn put(&mut self, id: &str, entry: Entry) {
        for s in entry.subscriptions() {
            self.subscribed.entry(s.event.clone()).or_default().insert(id.to_owned());
        }
        self.entries.insert(id.to_owned(), entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[test]
    fn lifecycle_steps_of_one_id_run_one_at_a_time_and_leave_nothing_behind() {
        let registry = Arc::new(Registry::default());
        let inside = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (registry, inside, most) = (registry.clone(), inside.clone(), most.clone());
                std::thread::spawn(move || {
                    for _ in 0..20 {
                        let _step = registry.lifecycle("same");
                        let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_micros(200));
                        inside.fetch_sub(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(most.load(Ordering::SeqCst), 1, "two steps of one id overlapped");
        // Other ids do not wait for it.
        let _a = registry.lifecycle("a");
        let _b = registry.lifecycle("b");
        drop((_a, _b));
        assert!(registry.lifecycle.0.lock().unwrap().is_empty(), "ids are given back");
    }
}
