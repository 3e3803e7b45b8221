//! `plugin.json`: the declarative description of a folder plugin, and its validation.
//!
//! Why hand-written validation instead of `#[derive(Deserialize)]`: serde stops at the first
//! problem, while a plugin author wants to see *every* problem at once, each with the JSON path
//! it is about. So the manifest is read as a `serde_json::Value` and checked field by field.
//! Unknown fields are warnings (a newer manifest may carry fields this isola does not know);
//! missing or ill-typed required fields are errors.

use serde::{Deserialize, Serialize};

pub use crate::error::{Diagnostic, Severity};
use crate::error::{Error, ErrorCode};
use crate::isolation::Isolation;

/// The manifest API version this isola understands.
pub const SUPPORTED_API_VERSION: u64 = 1;

/// Limits a manifest may ask for. They can only *lower* the host's limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManifestLimits {
    /// Memory budget in MiB (V8 heap plus ArrayBuffer bytes).
    pub heap_mb: Option<u64>,
    /// Per-call time limit in milliseconds.
    pub call_timeout_ms: Option<u64>,
    /// Storage quota: total bytes of keys and values.
    pub storage_bytes: Option<u64>,
    /// Storage quota: bytes of the largest value.
    pub storage_value_bytes: Option<u64>,
    /// Storage quota: number of keys.
    pub storage_keys: Option<u64>,
}

/// A plugin's subscription to a named event (manifest `events`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscription {
    /// The event name, e.g. `chat`.
    pub event: String,
    /// The hook that receives it.
    pub hook: String,
    /// Chains run higher priorities first (default 0); ties go by plugin id.
    pub priority: i64,
}

/// A command a plugin offers (manifest `commands`), run as `PLUGIN:ID`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandSpec {
    /// The command id, unique within the plugin.
    pub id: String,
    /// Human-readable title.
    pub title: String,
    /// The hook that runs it.
    pub hook: String,
}

/// A validated `plugin.json`.
///
/// ```
/// use isola::manifest::Manifest;
/// let (m, warnings) = Manifest::parse(r#"{
///     "id": "greeter", "name": "Greeter", "version": "1.0.0", "apiVersion": 1
/// }"#).unwrap();
/// assert_eq!(m.main, "main.js");
/// assert!(warnings.is_empty());
///
/// let problems = Manifest::parse(r#"{"id": 7, "apiVersion": 2}"#).unwrap_err();
/// assert!(problems.len() >= 4); // id type, name, version, apiVersion: all reported at once
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Unique id: letters, digits, `-` and `_`, at most 64 characters.
    pub id: String,
    /// Display name.
    pub name: String,
    /// The plugin's own version string.
    pub version: String,
    /// Optional one-line description.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub description: Option<String>,
    /// Entry module, relative to the plugin folder (default `main.js`; `main.ts` for TypeScript).
    pub main: String,
    /// The manifest format version; only [`SUPPORTED_API_VERSION`] is accepted.
    pub api_version: u64,
    /// Limits the plugin asks for (lower than the host's, or ignored with a warning).
    #[serde(default)]
    pub limits: ManifestLimits,
    /// Permissions the plugin asks for: names of gated host functions/values, or `storage`.
    #[serde(default)]
    pub permissions: Vec<String>,
    /// Events the plugin subscribes to.
    #[serde(default)]
    pub events: Vec<Subscription>,
    /// Commands the plugin offers.
    #[serde(default)]
    pub commands: Vec<CommandSpec>,
    /// Process isolation, if the plugin asks for it (`"isolation": "process"`); a manifest can
    /// ask for more isolation than the host's default, never less.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolation: Option<Isolation>,
    /// Every call runs on a fresh instance of the plugin (`"stateless": true`): nothing a call
    /// leaves behind (module state, timers, pending promises) reaches the next one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stateless: bool,
    /// Whether the host may evict the plugin while it is idle (default true; see
    /// [`EngineBuilder::evict_idle_after`](crate::EngineBuilder::evict_idle_after)).
    /// `"evictable": false` keeps it resident: for a plugin whose state cannot be handed over
    /// through `onUnload`/`onLoad`.
    #[serde(default = "yes", skip_serializing_if = "Clone::clone")]
    pub evictable: bool,
}

fn yes() -> bool {
    true
}

const KNOWN_FIELDS: &[&str] = &[
    "id",
    "name",
    "version",
    "description",
    "main",
    "apiVersion",
    "limits",
    "permissions",
    "events",
    "commands",
    "isolation",
    "stateless",
    "evictable",
];
const KNOWN_LIMITS: &[&str] = &["heapMb", "callTimeoutMs", "storageBytes", "storageValueBytes", "storageKeys"];

/// Checks a plugin id: 1–64 characters from `[A-Za-z0-9_-]`, starting with a letter or digit.
///
/// Why so strict: ids name threads, log fields, and appear in `PLUGIN.HOOK` command syntax.
pub fn validate_id(id: &str) -> Result<(), String> {
    let ok_len = !id.is_empty() && id.len() <= 64;
    let ok_first = id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    let ok_chars = id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok_len && ok_first && ok_chars {
        Ok(())
    } else {
        Err(format!(
            "`{id}` is not a valid plugin id: use 1-64 letters, digits, `-` or `_`, starting with a letter or digit"
        ))
    }
}

struct Checker {
    diags: Vec<Diagnostic>,
}

impl Checker {
    fn push(&mut self, severity: Severity, path: &str, code: &str, message: String) {
        self.diags.push(Diagnostic { severity, path: path.to_owned(), code: code.to_owned(), message });
    }
    fn error(&mut self, path: &str, code: &str, message: String) {
        self.push(Severity::Error, path, code, message);
    }
    fn warn(&mut self, path: &str, code: &str, message: String) {
        self.push(Severity::Warning, path, code, message);
    }

    /// The boolean field `name` of `obj`, `default` if it is absent (or not a boolean, which
    /// is an error).
    fn flag(&mut self, obj: &serde_json::Map<String, serde_json::Value>, name: &str, default: bool) -> bool {
        match obj.get(name) {
            None => default,
            Some(serde_json::Value::Bool(b)) => *b,
            Some(other) => {
                let msg = format!("`{name}` must be true or false, found {}", type_name(other));
                self.error(&format!("$.{name}"), "wrong_type", msg);
                default
            }
        }
    }

    fn string(
        &mut self,
        obj: &serde_json::Map<String, serde_json::Value>,
        key: &str,
        required: bool,
    ) -> Option<String> {
        let path = format!("$.{key}");
        match obj.get(key) {
            None if required => {
                self.error(&path, "missing_field", format!("required field `{key}` (a string) is missing"));
                None
            }
            None => None,
            Some(serde_json::Value::String(s)) if s.trim().is_empty() => {
                self.error(&path, "invalid_value", format!("`{key}` must not be empty"));
                None
            }
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(other) => {
                self.error(&path, "wrong_type", format!("`{key}` must be a string, found {}", type_name(other)));
                None
            }
        }
    }

    fn positive_int(&mut self, value: &serde_json::Value, path: &str, what: &str) -> Option<u64> {
        match value.as_u64() {
            Some(n) if n > 0 => Some(n),
            _ => {
                let found = type_name(value);
                self.error(path, "wrong_type", format!("{what} must be a positive integer, found {found} `{value}`"));
                None
            }
        }
    }
}

fn is_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && s.chars().all(|c| c.is_ascii_alphanumeric() || "_-.:$/".contains(c))
}

fn is_hook(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == '$')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
}

impl Checker {
    /// `"events": {"chat": "onChat", "join": {"hook": "onJoin", "priority": 10}}`
    fn events(&mut self, v: Option<&serde_json::Value>) -> Vec<Subscription> {
        let mut out = Vec::new();
        let Some(v) = v else { return out };
        let Some(map) = v.as_object() else {
            self.error(
                "$.events",
                "wrong_type",
                format!("`events` must be an object of event name to hook, found {}", type_name(v)),
            );
            return out;
        };
        for (event, spec) in map {
            let path = format!("$.events.{event}");
            if !is_name(event) {
                self.error(
                    &path,
                    "invalid_value",
                    format!("`{event}` is not a valid event name (letters, digits, `_-.:/`)"),
                );
                continue;
            }
            let (hook, priority) = match spec {
                serde_json::Value::String(h) => (Some(h.clone()), 0),
                serde_json::Value::Object(o) => {
                    let hook = o.get("hook").and_then(|h| h.as_str()).map(str::to_owned);
                    if hook.is_none() {
                        self.error(
                            &format!("{path}.hook"),
                            "missing_field",
                            "an event subscription needs a `hook` (a string)".into(),
                        );
                    }
                    let priority = match o.get("priority") {
                        None => 0,
                        Some(p) => p.as_i64().unwrap_or_else(|| {
                            self.error(
                                &format!("{path}.priority"),
                                "wrong_type",
                                format!("`priority` must be an integer, found {}", type_name(p)),
                            );
                            0
                        }),
                    };
                    (hook, priority)
                }
                other => {
                    self.error(
                        &path,
                        "wrong_type",
                        format!(
                            "a subscription is a hook name or {{\"hook\", \"priority\"}}, found {}",
                            type_name(other)
                        ),
                    );
                    (None, 0)
                }
            };
            if let Some(hook) = hook {
                if is_hook(&hook) {
                    out.push(Subscription { event: event.clone(), hook, priority });
                } else {
                    self.error(&path, "invalid_value", format!("`{hook}` is not a valid hook name"));
                }
            }
        }
        out
    }

    /// `"commands": [{"id": "hello", "title": "Say hello", "hook": "greet"}]`
    fn commands(&mut self, v: Option<&serde_json::Value>) -> Vec<CommandSpec> {
        let mut out: Vec<CommandSpec> = Vec::new();
        let Some(v) = v else { return out };
        let Some(items) = v.as_array() else {
            self.error("$.commands", "wrong_type", format!("`commands` must be an array, found {}", type_name(v)));
            return out;
        };
        for (i, item) in items.iter().enumerate() {
            let path = format!("$.commands[{i}]");
            let Some(o) = item.as_object() else {
                self.error(
                    &path,
                    "wrong_type",
                    format!("a command is an object {{id, title, hook}}, found {}", type_name(item)),
                );
                continue;
            };
            let before = self.diags.len();
            let id = self.string(o, "id", true).map(|s| (s, format!("{path}.id")));
            let title = self.string(o, "title", true);
            let hook = self.string(o, "hook", true);
            // `string` reports paths relative to `$`; make the ones it just added (and only
            // those: the manifest's own `$.id` problems stay where they are) point into the array.
            for d in &mut self.diags[before..] {
                d.path = format!("{path}{}", &d.path[1..]);
            }
            let (Some((id, id_path)), Some(title), Some(hook)) = (id, title, hook) else { continue };
            if !is_name(&id) || id.contains(':') {
                self.error(
                    &id_path,
                    "invalid_value",
                    format!("`{id}` is not a valid command id (letters, digits, `_-.`)"),
                );
            } else if !is_hook(&hook) {
                self.error(&format!("{path}.hook"), "invalid_value", format!("`{hook}` is not a valid hook name"));
            } else if out.iter().any(|c| c.id == id) {
                self.error(&id_path, "invalid_value", format!("command `{id}` is declared twice"));
            } else {
                out.push(CommandSpec { id, title, hook });
            }
        }
        out
    }
}

fn type_name(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

impl Manifest {
    /// Parses and validates a manifest. On success returns the manifest and its warnings; on
    /// failure returns every diagnostic (errors and warnings), never just the first.
    pub fn parse(text: &str) -> Result<(Manifest, Vec<Diagnostic>), Vec<Diagnostic>> {
        let mut c = Checker { diags: Vec::new() };
        let doc: serde_json::Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                c.error("$", "invalid_json", format!("not valid JSON: {e} (line {}, column {})", e.line(), e.column()));
                return Err(c.diags);
            }
        };
        let Some(obj) = doc.as_object() else {
            c.error("$", "not_an_object", format!("a manifest must be a JSON object, found {}", type_name(&doc)));
            return Err(c.diags);
        };

        for key in obj.keys().filter(|k| !KNOWN_FIELDS.contains(&k.as_str())) {
            c.warn(&format!("$.{key}"), "unknown_field", format!("unknown field `{key}` is ignored"));
        }

        let id = c.string(obj, "id", true);
        if let Some(id) = &id
            && let Err(msg) = validate_id(id)
        {
            c.error("$.id", "invalid_value", msg);
        }
        let name = c.string(obj, "name", true);
        let version = c.string(obj, "version", true);
        let description = c.string(obj, "description", false);
        let main = c.string(obj, "main", false).unwrap_or_else(|| "main.js".to_owned());
        if let Err(msg) = check_main(&main) {
            c.error("$.main", "invalid_value", msg);
        }

        let api_version = match obj.get("apiVersion") {
            None => {
                c.error(
                    "$.apiVersion",
                    "missing_field",
                    format!(
                        "required field `apiVersion` is missing; this isola supports apiVersion {SUPPORTED_API_VERSION}"
                    ),
                );
                None
            }
            Some(v) => {
                match v.as_u64() {
                    Some(SUPPORTED_API_VERSION) => Some(SUPPORTED_API_VERSION),
                    Some(n) => {
                        c.error(
                        "$.apiVersion",
                        "unsupported_api_version",
                        format!("apiVersion {n} is not supported; this isola supports apiVersion {SUPPORTED_API_VERSION}"),
                    );
                        None
                    }
                    None => {
                        c.error(
                        "$.apiVersion",
                        "wrong_type",
                        format!(
                            "`apiVersion` must be an integer, found {} (this isola supports apiVersion {SUPPORTED_API_VERSION})",
                            type_name(v)
                        ),
                    );
                        None
                    }
                }
            }
        };

        let mut limits = ManifestLimits::default();
        match obj.get("limits") {
            None => {}
            Some(serde_json::Value::Object(l)) => {
                for key in l.keys().filter(|k| !KNOWN_LIMITS.contains(&k.as_str())) {
                    c.warn(&format!("$.limits.{key}"), "unknown_field", format!("unknown limit `{key}` is ignored"));
                }
                if let Some(v) = l.get("heapMb") {
                    limits.heap_mb = c.positive_int(v, "$.limits.heapMb", "`limits.heapMb`");
                }
                if let Some(v) = l.get("callTimeoutMs") {
                    limits.call_timeout_ms = c.positive_int(v, "$.limits.callTimeoutMs", "`limits.callTimeoutMs`");
                }
                if let Some(v) = l.get("storageBytes") {
                    limits.storage_bytes = c.positive_int(v, "$.limits.storageBytes", "`limits.storageBytes`");
                }
                if let Some(v) = l.get("storageValueBytes") {
                    limits.storage_value_bytes =
                        c.positive_int(v, "$.limits.storageValueBytes", "`limits.storageValueBytes`");
                }
                if let Some(v) = l.get("storageKeys") {
                    limits.storage_keys = c.positive_int(v, "$.limits.storageKeys", "`limits.storageKeys`");
                }
            }
            Some(other) => {
                c.error("$.limits", "wrong_type", format!("`limits` must be an object, found {}", type_name(other)))
            }
        }

        let mut permissions = Vec::new();
        match obj.get("permissions") {
            None => {}
            Some(serde_json::Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    match item.as_str() {
                        Some(p)
                            if !p.is_empty()
                                && p.chars().all(|ch| ch.is_ascii_alphanumeric() || "_-.:$*".contains(ch)) =>
                        {
                            if !permissions.iter().any(|q| q == p) {
                                permissions.push(p.to_owned());
                            }
                        }
                        _ => c.error(
                            &format!("$.permissions[{i}]"),
                            "invalid_value",
                            format!("a permission is a non-empty name such as \"storage\", found `{item}`"),
                        ),
                    }
                }
            }
            Some(other) => c.error(
                "$.permissions",
                "wrong_type",
                format!("`permissions` must be an array of names, found {}", type_name(other)),
            ),
        }

        let isolation = match obj.get("isolation") {
            None => None,
            Some(v) => match v.as_str() {
                Some("thread") => Some(Isolation::Thread),
                Some("process") => Some(Isolation::Process),
                _ => {
                    c.error(
                        "$.isolation",
                        "invalid_value",
                        format!("`isolation` is \"thread\" or \"process\", found `{v}`"),
                    );
                    None
                }
            },
        };
        let stateless = c.flag(obj, "stateless", false);
        let evictable = c.flag(obj, "evictable", true);
        let events = c.events(obj.get("events"));
        let commands = c.commands(obj.get("commands"));

        if c.diags.iter().any(|d| d.severity == Severity::Error) {
            return Err(c.diags);
        }
        let manifest = Manifest {
            id: id.expect("checked"),
            name: name.expect("checked"),
            version: version.expect("checked"),
            description,
            main,
            api_version: api_version.expect("checked"),
            limits,
            permissions,
            events,
            commands,
            isolation,
            stateless,
            evictable,
        };
        Ok((manifest, c.diags))
    }

    /// Turns a failed [`Manifest::parse`] into a `MANIFEST_INVALID` error naming the file.
    pub fn invalid(plugin: &str, file: &std::path::Path, diagnostics: Vec<Diagnostic>) -> Error {
        let errors = diagnostics.iter().filter(|d| d.severity == Severity::Error).count();
        let mut e =
            Error::new(ErrorCode::ManifestInvalid, format!("{} has {errors} error(s)", file.display())).plugin(plugin);
        e.diagnostics = diagnostics;
        e
    }
}

/// `main` must stay inside the plugin folder and be a JavaScript or TypeScript module.
fn check_main(main: &str) -> Result<(), String> {
    let p = std::path::Path::new(main);
    if p.is_absolute() || main.starts_with('/') || main.starts_with('\\') {
        return Err(format!("`main` must be a path relative to the plugin folder, found `{main}`"));
    }
    if p.components().any(|c| !matches!(c, std::path::Component::Normal(_) | std::path::Component::CurDir)) {
        return Err(format!("`main` must stay inside the plugin folder, found `{main}`"));
    }
    let typescript = crate::typescript::is_typescript(p);
    if !(main.ends_with(".js") || main.ends_with(".mjs") || typescript) {
        return Err(format!("`main` must be a `.js`, `.mjs`, `.ts` or `.mts` file, found `{main}`"));
    }
    Ok(())
}
