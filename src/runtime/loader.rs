//! The module loader: a plugin's `import`s may only reach files inside its own folder.
//!
//! Why a custom loader: deno_core's `FsModuleLoader` reads any path on disk. isola resolves
//! every specifier against the importing module, then refuses anything that is not a `file:`
//! URL under the plugin's (canonicalised) root — absolute paths elsewhere, `..` escapes,
//! symlinks pointing out, `http:`, `node:`, `npm:`, bare names.
//!
//! TypeScript files (`.ts`, `.mts`) are transpiled here as they load (see
//! [`crate::typescript`]); their source maps stay with the loader, where deno_core looks for
//! them when it maps an error's frames back to the `.ts` lines.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use deno_core::{
    ModuleLoadOptions, ModuleLoadReferrer, ModuleLoadResponse, ModuleLoader, ModuleSource, ModuleSourceCode,
    ModuleSpecifier, ModuleType, ResolutionKind,
};
use deno_error::JsErrorBox;

use crate::error::JsErrorInfo;
use crate::typescript;

pub(crate) struct PluginLoader {
    /// What imports may reach: the plugin's folder, or for a script plugin the script itself
    /// (a script lives among the other plugins, whose files are not its to read).
    root: PathBuf,
    sources: Arc<SourceCache>,
    /// Source maps of the TypeScript modules loaded so far, by module URL.
    maps: RefCell<HashMap<String, Arc<str>>>,
    /// Whether transpiled code carries its source map inline (`//# sourceMappingURL=data:`),
    /// which a debugger needs to show the `.ts` text; otherwise the map costs no heap.
    inline_maps: bool,
    /// The TypeScript syntax error that stopped the last load, with its position in the `.ts`
    /// file: deno_core reports a loader's error as text, and isola's error wants it typed.
    failure: RefCell<Option<JsErrorInfo>>,
}

/// The source text of every file a plugin version has loaded, kept for the life of that
/// version. Why: when the isolate is restarted after breaking its memory limit, it must come
/// back as the *same* version, even if the files on disk have since been edited, broken or
/// deleted; new files on disk only arrive through a reload. So a file this version has read is
/// never looked up on disk again, not even to resolve its real path.
#[derive(Default)]
pub(crate) struct SourceCache(Mutex<HashMap<PathBuf, Cached>>);

/// A file as first read: where it really was (after symlinks) and its text.
#[derive(Clone)]
pub(crate) struct Cached {
    pub real: PathBuf,
    pub text: Arc<str>,
}

impl SourceCache {
    /// A cache that already holds `files` (as imported, real path, text): a plugin version
    /// brought back in a new process starts from the files its first process read.
    pub(crate) fn with_files(files: Vec<(PathBuf, PathBuf, String)>) -> SourceCache {
        let map = files.into_iter().map(|(path, real, text)| (path, Cached { real, text: text.into() })).collect();
        SourceCache(Mutex::new(map))
    }

    /// Every file read so far: (as imported, real path, text).
    pub(crate) fn files(&self) -> Vec<(PathBuf, PathBuf, String)> {
        self.0.lock().unwrap().iter().map(|(p, c)| (p.clone(), c.real.clone(), c.text.to_string())).collect()
    }

    /// What this version read at `path` (as imported, before symlinks), if it read it.
    fn get(&self, path: &Path) -> Option<Cached> {
        self.0.lock().unwrap().get(path).cloned()
    }

    /// The text at `path` (whose real location is `real`) as first read by this version.
    pub(crate) fn read(&self, path: &Path, real: &Path) -> std::io::Result<Arc<str>> {
        if let Some(c) = self.get(path) {
            return Ok(c.text);
        }
        let text: Arc<str> = std::fs::read_to_string(real)?.into();
        let cached = Cached { real: real.to_path_buf(), text };
        Ok(self.0.lock().unwrap().entry(path.to_path_buf()).or_insert(cached).text.clone())
    }
}

impl PluginLoader {
    pub(crate) fn new(root: &Path, sources: Arc<SourceCache>, inline_maps: bool) -> Self {
        PluginLoader {
            root: root.to_path_buf(),
            sources,
            maps: RefCell::default(),
            inline_maps,
            failure: RefCell::default(),
        }
    }

    /// The TypeScript module `spec` (text `code`) as JavaScript, keeping its source map.
    fn transpile(&self, spec: &ModuleSpecifier, path: &Path, code: &str) -> Result<String, JsErrorBox> {
        match typescript::transpile(spec.as_str(), code) {
            Ok(out) => {
                self.maps.borrow_mut().insert(spec.to_string(), out.map.clone());
                Ok(if self.inline_maps {
                    format!(
                        "{}\n//# sourceMappingURL=data:application/json;base64,{}",
                        out.code,
                        base64::engine::general_purpose::STANDARD.encode(out.map.as_bytes())
                    )
                } else {
                    out.code.to_string()
                })
            }
            Err(e) => {
                let file = self.rel(path);
                let text = format!("{file}:{}:{}: {}", e.line, e.column, e.message);
                *self.failure.borrow_mut() = Some(JsErrorInfo {
                    name: "SyntaxError".into(),
                    message: e.message,
                    stack: Some(format!("SyntaxError: {text}")),
                    file: Some(file),
                    line: Some(e.line),
                    column: Some(e.column),
                });
                Err(JsErrorBox::new("SyntaxError", text))
            }
        }
    }

    /// The TypeScript syntax error that stopped the last load, if that is what stopped it.
    pub(crate) fn take_failure(&self) -> Option<JsErrorInfo> {
        self.failure.borrow_mut().take()
    }

    /// The file `spec` names, as imported and as it really is, if the plugin may read it.
    fn inside(&self, spec: &ModuleSpecifier) -> Result<(PathBuf, PathBuf), JsErrorBox> {
        let refuse = |why: &str| {
            JsErrorBox::type_error(format!(
                "import of \"{spec}\" refused: {why}; a plugin may only import files inside its own folder"
            ))
        };
        if spec.scheme() != "file" {
            return Err(refuse(&format!("the `{}:` scheme is not available", spec.scheme())));
        }
        let path = spec.to_file_path().map_err(|_| refuse("not a local file"))?;
        // First lexically, before touching the disk, so that the answer for a path outside
        // never depends on whether that file exists (no probing of the host's files).
        let path = lexically_normal(&path);
        if !path.starts_with(&self.root) {
            return Err(refuse("it is outside the plugin folder"));
        }
        // A file this version already read was checked then; the disk may have changed since.
        if let Some(c) = self.sources.get(&path) {
            return Ok((path, c.real));
        }
        // Then for real, so that symlinks cannot step outside either.
        let real = std::fs::canonicalize(&path)
            .map_err(|e| JsErrorBox::type_error(format!("cannot load \"{}\": {e}", self.rel(&path))))?;
        if !real.starts_with(&self.root) {
            return Err(refuse("it is outside the plugin folder"));
        }
        Ok((path, real))
    }

    fn rel(&self, p: &Path) -> String {
        p.strip_prefix(&self.root).map(|r| r.display().to_string()).unwrap_or_else(|_| p.display().to_string())
    }
}

/// `path` with `.` and `..` resolved without looking at the file system.
fn lexically_normal(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

impl ModuleLoader for PluginLoader {
    fn resolve(&self, specifier: &str, referrer: &str, _kind: ResolutionKind) -> Result<ModuleSpecifier, JsErrorBox> {
        let bare = !(specifier.starts_with("./")
            || specifier.starts_with("../")
            || specifier.starts_with('/')
            || specifier.contains(':'));
        if bare {
            return Err(JsErrorBox::type_error(format!(
                "import of \"{specifier}\" refused: bare module names are not available; \
                 a plugin may only import files inside its own folder (\"./file.js\")"
            )));
        }
        let spec = deno_core::resolve_import(specifier, referrer).map_err(JsErrorBox::from_err)?;
        self.inside(&spec)?;
        Ok(spec)
    }

    fn load(
        &self,
        spec: &ModuleSpecifier,
        _referrer: Option<&ModuleLoadReferrer>,
        _options: ModuleLoadOptions,
    ) -> ModuleLoadResponse {
        let load = || {
            let (path, real) = self.inside(spec)?;
            let code = self
                .sources
                .read(&path, &real)
                .map_err(|e| JsErrorBox::type_error(format!("cannot read \"{}\": {e}", self.rel(&path))))?;
            let module_type =
                if real.extension().is_some_and(|e| e == "json") { ModuleType::Json } else { ModuleType::JavaScript };
            let code =
                if typescript::is_typescript(&path) { self.transpile(spec, &path, &code)? } else { code.to_string() };
            Ok(ModuleSource::new(module_type, ModuleSourceCode::String(code.into()), spec, None))
        };
        ModuleLoadResponse::Sync(load())
    }

    fn get_source_map(&self, file_name: &str) -> Option<Cow<'_, [u8]>> {
        self.maps.borrow().get(file_name).map(|m| Cow::Owned(m.as_bytes().to_vec()))
    }
}

/// The module loader of an isolate made before its plugin was known (see `BareIsolate`): it
/// refuses every import until [`bind`](Self::bind) gives it the plugin's [`PluginLoader`].
#[derive(Default)]
pub(crate) struct LateLoader(std::cell::RefCell<Option<std::rc::Rc<PluginLoader>>>);

impl LateLoader {
    /// From now on, imports are the plugin's.
    pub(crate) fn bind(&self, loader: PluginLoader) {
        *self.0.borrow_mut() = Some(std::rc::Rc::new(loader));
    }

    /// The TypeScript syntax error that stopped the last load, if any.
    pub(crate) fn take_failure(&self) -> Option<JsErrorInfo> {
        self.0.borrow().as_ref().and_then(|l| l.take_failure())
    }

    fn bound(&self) -> Result<std::rc::Rc<PluginLoader>, JsErrorBox> {
        self.0
            .borrow()
            .clone()
            .ok_or_else(|| JsErrorBox::type_error("imports are not available before the plugin is loaded"))
    }
}

impl ModuleLoader for LateLoader {
    fn resolve(&self, specifier: &str, referrer: &str, kind: ResolutionKind) -> Result<ModuleSpecifier, JsErrorBox> {
        self.bound()?.resolve(specifier, referrer, kind)
    }

    fn load(
        &self,
        spec: &ModuleSpecifier,
        referrer: Option<&ModuleLoadReferrer>,
        options: ModuleLoadOptions,
    ) -> ModuleLoadResponse {
        match self.bound() {
            Ok(loader) => loader.load(spec, referrer, options),
            Err(e) => ModuleLoadResponse::Sync(Err(e)),
        }
    }

    fn get_source_map(&self, file_name: &str) -> Option<Cow<'_, [u8]>> {
        let loader = self.0.borrow().clone()?;
        loader.get_source_map(file_name).map(|m| Cow::Owned(m.into_owned()))
    }
}
