//! Finding plugins on disk: what a plugin directory contains and how each entry becomes a
//! [`PluginSource`].
//!
//! Two forms are recognised, so that both a structured plugin and a quick one-file script work:
//! - a **folder** with `plugin.json` and an ES-module entry whose default export is an object of
//!   hooks;
//! - a lone **`NAME.js`** classic script that defines a global `plugin` object of hooks
//!   (id = file stem).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Diagnostic, Error, ErrorCode};
use crate::manifest::{Manifest, validate_id};

/// How a plugin's code is shaped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum SourceKind {
    /// A folder with `plugin.json`; `entry` is its ES module.
    Module {
        /// The validated manifest.
        manifest: Box<Manifest>,
        /// Absolute path of the entry module.
        entry: PathBuf,
    },
    /// A classic script defining a global `plugin` object.
    Script {
        /// Absolute path of the script.
        path: PathBuf,
    },
}

/// A plugin found on disk, ready to be loaded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PluginSource {
    /// The plugin id (manifest `id`, or the script's file stem).
    pub id: String,
    /// The plugin's root: its folder, or the folder the script is in. Imports may not leave it.
    pub root: PathBuf,
    /// Where the plugin came from (the folder or the script file); what reload watches.
    pub location: PathBuf,
    /// Folder or script.
    #[serde(flatten)]
    pub kind: SourceKind,
    /// Manifest warnings (unknown fields, ignored limits).
    pub diagnostics: Vec<Diagnostic>,
}

impl PluginSource {
    /// What the plugin's imports may reach: its folder, or for a script only the script
    /// itself (it shares its directory with other plugins).
    pub fn import_root(&self) -> &Path {
        match &self.kind {
            SourceKind::Module { .. } => &self.root,
            SourceKind::Script { path } => path,
        }
    }

    /// The plugin's version (`"0.0.0"` for scripts, which have no manifest).
    pub fn version(&self) -> &str {
        match &self.kind {
            SourceKind::Module { manifest, .. } => &manifest.version,
            SourceKind::Script { .. } => "0.0.0",
        }
    }

    /// The manifest, for folder plugins.
    pub fn manifest(&self) -> Option<&Manifest> {
        match &self.kind {
            SourceKind::Module { manifest, .. } => Some(manifest),
            SourceKind::Script { .. } => None,
        }
    }

    /// Reads one plugin from a folder (with `plugin.json`) or a `.js` file.
    ///
    /// ```no_run
    /// let src = isola::source::PluginSource::from_path("plugins/greeter").unwrap();
    /// assert_eq!(src.id, "greeter");
    /// ```
    pub fn from_path(path: impl AsRef<Path>) -> Result<PluginSource, Error> {
        let path = path.as_ref();
        let abs = std::fs::canonicalize(path).map_err(|e| {
            Error::new(ErrorCode::LoadFailed, format!("cannot open {}: {e}", path.display())).plugin(guess_id(path))
        })?;
        if abs.is_dir() { from_folder(&abs) } else { from_script(&abs) }
    }
}

/// The id a path would have, used to name errors before a manifest could be read.
pub(crate) fn guess_id(path: &Path) -> String {
    path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| path.display().to_string())
}

fn from_folder(dir: &Path) -> Result<PluginSource, Error> {
    let manifest_path = dir.join("plugin.json");
    let folder_id = guess_id(dir);
    let text = std::fs::read_to_string(&manifest_path).map_err(|e| {
        Error::new(ErrorCode::LoadFailed, format!("cannot read {}: {e}", manifest_path.display())).plugin(&folder_id)
    })?;
    // A broken manifest is named after its folder, never after the id it claims: the id must
    // match the folder anyway, and a broken plugin must not be able to take another's place
    // in the plugin table by claiming its id.
    let (manifest, diagnostics) =
        Manifest::parse(&text).map_err(|diags| Manifest::invalid(&folder_id, &manifest_path, diags))?;
    // The id keys a plugin's storage and the host's permission policy, so a plugin must not be
    // able to claim another's: it has to be the folder's name.
    if manifest.id != folder_id {
        let diag = Diagnostic {
            severity: crate::error::Severity::Error,
            path: "$.id".into(),
            code: "invalid_value".into(),
            message: format!(
                "the id `{}` must match the plugin's folder name `{folder_id}` (rename one of them)",
                manifest.id
            ),
        };
        return Err(Manifest::invalid(&folder_id, &manifest_path, vec![diag]));
    }
    let entry = dir.join(&manifest.main);
    if !entry.is_file() {
        return Err(Error::new(
            ErrorCode::LoadFailed,
            format!("entry module {} (manifest `main`) does not exist", entry.display()),
        )
        .plugin(&manifest.id));
    }
    Ok(PluginSource {
        id: manifest.id.clone(),
        root: dir.to_path_buf(),
        location: dir.to_path_buf(),
        kind: SourceKind::Module { manifest: Box::new(manifest), entry },
        diagnostics,
    })
}

fn from_script(path: &Path) -> Result<PluginSource, Error> {
    let id = guess_id(path);
    if path.extension().and_then(|e| e.to_str()) != Some("js") {
        return Err(Error::new(
            ErrorCode::LoadFailed,
            format!("{} is neither a plugin folder nor a `.js` script", path.display()),
        )
        .plugin(id));
    }
    validate_id(&id).map_err(|msg| Error::new(ErrorCode::LoadFailed, msg).plugin(&id))?;
    Ok(PluginSource {
        id,
        root: path.parent().unwrap_or(Path::new("/")).to_path_buf(),
        location: path.to_path_buf(),
        kind: SourceKind::Script { path: path.to_path_buf() },
        diagnostics: Vec::new(),
    })
}

/// Every plugin in a directory, sorted by path. Entries that are plugins but broken come back
/// as errors (so one bad plugin never hides the others); entries that are not plugins at all
/// (hidden files, folders without `plugin.json`, non-`.js` files) are skipped.
pub fn discover(dir: impl AsRef<Path>) -> Result<Vec<Result<PluginSource, Error>>, Error> {
    Ok(plugin_paths(dir.as_ref())?.into_iter().map(PluginSource::from_path).collect())
}

/// The entries of `dir` that look like plugins, sorted.
pub(crate) fn plugin_paths(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        Error::new(ErrorCode::LoadFailed, format!("cannot read plugin directory {}: {e}", dir.display()))
    })?;
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    // Canonical, so that a plugin's location matches what the directory watcher reports.
    Ok(paths.into_iter().filter(|p| is_plugin_path(p)).map(|p| std::fs::canonicalize(&p).unwrap_or(p)).collect())
}

/// Whether a directory entry looks like a plugin (what [`discover`] considers).
pub fn is_plugin_path(p: &Path) -> bool {
    let hidden = p.file_name().and_then(|n| n.to_str()).is_none_or(|n| n.starts_with('.'));
    if hidden {
        return false;
    }
    if p.is_dir() {
        p.join("plugin.json").is_file()
    } else {
        p.is_file() && p.extension().and_then(|e| e.to_str()) == Some("js")
    }
}
