//! Keeping a manager in sync with its plugin directory: the file watcher behind
//! [`Manager::watch`](crate::Manager::watch).
//!
//! Why a debounce: editors save in several steps (write a temp file and rename it; truncate,
//! then write), and a reload in between would load half a file. Changes are grouped per plugin
//! (its folder, or its script file) and a plugin is synced once no change has touched it for
//! [`DEBOUNCE`]. What "syncing" a plugin means (gone → unload, known → reload, new → load) is
//! the manager's business: the watcher only says which plugin location changed, through the
//! function it is started with, and knows nothing else about plugins.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, select};
use notify::{RecursiveMode, Watcher as _};

use crate::error::{Error, ErrorCode, Result};

/// How long a plugin's files must stay quiet before it is reloaded.
pub const DEBOUNCE: Duration = Duration::from_millis(40);

/// A running directory watcher; dropped with the manager.
pub(crate) struct Watcher {
    _notify: notify::RecommendedWatcher,
    stop: Sender<()>,
    thread: JoinHandle<()>,
}

impl Watcher {
    /// Watches `dir`; calls `sync` with a plugin's location (a folder or script directly
    /// under `dir`) once its files have been quiet for [`DEBOUNCE`].
    pub(crate) fn start(dir: &Path, sync: impl Fn(&Path) + Send + 'static) -> Result<Watcher> {
        let dir = std::fs::canonicalize(dir)
            .map_err(|e| Error::new(ErrorCode::LoadFailed, format!("cannot watch {}: {e}", dir.display())))?;
        let (tx, rx) = crossbeam_channel::unbounded();
        let mut notify = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
            // Reading a file is not changing it (and loading a plugin reads its files, so
            // counting reads would make every reload trigger the next).
            if let Some(ev) = ev.ok().filter(|ev| !matches!(ev.kind, notify::EventKind::Access(_))) {
                let _ = tx.send(ev.paths);
            }
        })
        .map_err(|e| Error::new(ErrorCode::LoadFailed, format!("cannot watch {}: {e}", dir.display())))?;
        notify
            .watch(&dir, RecursiveMode::Recursive)
            .map_err(|e| Error::new(ErrorCode::LoadFailed, format!("cannot watch {}: {e}", dir.display())))?;
        let (stop, stopped) = crossbeam_channel::bounded(1);
        let thread = std::thread::Builder::new()
            .name("isola:watch".into())
            .spawn(move || run(sync, dir, rx, stopped))
            .map_err(|e| Error::new(ErrorCode::LoadFailed, format!("cannot start the watcher thread: {e}")))?;
        Ok(Watcher { _notify: notify, stop, thread })
    }

    pub(crate) fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

fn run(sync: impl Fn(&Path), dir: PathBuf, changes: Receiver<Vec<PathBuf>>, stop: Receiver<()>) {
    // Plugin location -> when it last changed.
    let mut pending: HashMap<PathBuf, Instant> = HashMap::new();
    loop {
        let next_due = pending.values().min().map(|t| *t + DEBOUNCE);
        let timeout =
            next_due.map(|d| d.saturating_duration_since(Instant::now())).unwrap_or(Duration::from_secs(3600));
        select! {
            recv(stop) -> _ => return,
            recv(changes) -> paths => {
                let Ok(paths) = paths else { return };
                let now = Instant::now();
                for p in paths {
                    if let Some(loc) = plugin_location(&dir, &p) {
                        pending.insert(loc, now);
                    }
                }
            }
            default(timeout) => {}
        }
        let now = Instant::now();
        let due: Vec<PathBuf> = pending.iter().filter(|(_, t)| now >= **t + DEBOUNCE).map(|(p, _)| p.clone()).collect();
        for loc in due {
            pending.remove(&loc);
            sync(&loc);
        }
    }
}

/// The plugin a changed path belongs to: the first path component under the directory.
/// Hidden files (editor swap files, `.git`) belong to nothing.
fn plugin_location(dir: &Path, changed: &Path) -> Option<PathBuf> {
    let rel = changed.strip_prefix(dir).ok()?;
    let mut components = rel.components();
    let first = match components.next()? {
        Component::Normal(c) => c,
        _ => return None,
    };
    let hidden = |c: &std::ffi::OsStr| c.to_str().is_none_or(|s| s.starts_with('.') || s.ends_with('~'));
    if hidden(first) || rel.components().any(|c| matches!(c, Component::Normal(n) if hidden(n))) {
        return None;
    }
    Some(dir.join(first))
}
