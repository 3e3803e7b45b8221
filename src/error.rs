//! One error type for everything a host can see go wrong, with stable codes.
//!
//! Why one type: a host that embeds isola (or drives `isola serve` from another language) needs
//! to branch on *what kind* of failure happened without parsing messages. [`ErrorCode`] is that
//! stable, serialisable kind; [`Error`] adds who (plugin, hook), where (file:line for JS errors)
//! and a human message. The type is `Clone + Serialize` so it can cross threads and, later,
//! process boundaries unchanged.
//!
//! This module is the bottom of the crate: it imports nothing from the rest of isola, so every
//! other module can speak this one vocabulary. That is also why [`Diagnostic`] (a manifest
//! problem, carried by `MANIFEST_INVALID` errors) lives here.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The stable kind of an [`Error`]. Its `Display` and serde form is the SCREAMING_CASE name
/// (`"TIMEOUT"`, `"HEAP_LIMIT"`, ...), which is part of isola's public contract.
///
/// Every code a host or a plugin can see is here: JavaScript errors that isola throws inside a
/// plugin (a refused permission, a broken quota, a refused plugin call) carry the same name in
/// their `code` property, and a hook that lets one escape gives the host that code.
///
/// ```
/// use isola::ErrorCode;
/// assert_eq!(ErrorCode::HeapLimit.as_str(), "HEAP_LIMIT");
/// assert_eq!(serde_json::to_string(&ErrorCode::Timeout).unwrap(), "\"TIMEOUT\"");
/// assert_eq!(ErrorCode::parse("CALL_CYCLE"), Some(ErrorCode::CallCycle));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[non_exhaustive]
#[repr(u8)]
pub enum ErrorCode {
    /// A call (or a plugin's top-level evaluation) ran past its deadline and was terminated.
    /// The plugin stays loaded with its state.
    Timeout,
    /// The plugin's isolate ran out of its memory budget (V8 heap or ArrayBuffer bytes). The
    /// isolate was discarded and the plugin restarted fresh.
    HeapLimit,
    /// The plugin has no hook of that name.
    HookNotFound,
    /// No plugin of that id is loaded.
    PluginNotFound,
    /// The plugin's JavaScript threw (or rejected); [`Error::js`] has the details.
    JsError,
    /// The plugin could not be loaded: syntax error, top-level throw, missing file, forbidden
    /// import, ...
    LoadFailed,
    /// The plugin's `plugin.json` is malformed; [`Error::diagnostics`] lists every problem.
    ManifestInvalid,
    /// Arguments or a result could not be converted between Rust and JavaScript.
    InvalidArgs,
    /// The plugin's mailbox is full: too many calls are queued for it.
    Busy,
    /// The plugin's thread died or the plugin failed to come back after a restart.
    PluginCrashed,
    /// The plugin (or the whole manager) has been shut down.
    ShutDown,
    /// A plugin called a host function it holds no permission for.
    PermissionDenied,
    /// A storage write would break one of the plugin's storage quotas; nothing was written.
    QuotaExceeded,
    /// No command of that name; the message lists close matches.
    CommandNotFound,
    /// A plugin call would close a cycle (A → B → A, directly or across requests) and was
    /// refused instead of deadlocking.
    CallCycle,
    /// A chain of plugin calls grew longer than isola allows.
    CallDepth,
    /// Events emitted by event handlers nested deeper than isola allows.
    EventDepth,
    /// A host function failed (returned an error or panicked), or isola's own host-side code
    /// (a storage backend, say) did.
    HostError,
    /// The caller aborted the call (a [`CancelToken`](crate::CancelToken), or it dropped the
    /// call's future): a queued call never ran, a running one was stopped. The plugin stays
    /// loaded with its state.
    Aborted,
}

impl ErrorCode {
    /// Every code, in declaration order (handy for stats tables and docs).
    pub const ALL: &'static [ErrorCode] = &[
        ErrorCode::Timeout,
        ErrorCode::HeapLimit,
        ErrorCode::HookNotFound,
        ErrorCode::PluginNotFound,
        ErrorCode::JsError,
        ErrorCode::LoadFailed,
        ErrorCode::ManifestInvalid,
        ErrorCode::InvalidArgs,
        ErrorCode::Busy,
        ErrorCode::PluginCrashed,
        ErrorCode::ShutDown,
        ErrorCode::PermissionDenied,
        ErrorCode::QuotaExceeded,
        ErrorCode::CommandNotFound,
        ErrorCode::CallCycle,
        ErrorCode::CallDepth,
        ErrorCode::EventDepth,
        ErrorCode::HostError,
        ErrorCode::Aborted,
    ];

    /// The code named `s` (its stable string form), if there is one.
    pub fn parse(s: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.iter().copied().find(|c| c.as_str() == s)
    }

    /// Position in [`ErrorCode::ALL`] (the declaration order), for counters indexed by code.
    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// The stable string form, e.g. `"HOOK_NOT_FOUND"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Timeout => "TIMEOUT",
            ErrorCode::HeapLimit => "HEAP_LIMIT",
            ErrorCode::HookNotFound => "HOOK_NOT_FOUND",
            ErrorCode::PluginNotFound => "PLUGIN_NOT_FOUND",
            ErrorCode::JsError => "JS_ERROR",
            ErrorCode::LoadFailed => "LOAD_FAILED",
            ErrorCode::ManifestInvalid => "MANIFEST_INVALID",
            ErrorCode::InvalidArgs => "INVALID_ARGS",
            ErrorCode::Busy => "BUSY",
            ErrorCode::PluginCrashed => "PLUGIN_CRASHED",
            ErrorCode::ShutDown => "SHUT_DOWN",
            ErrorCode::PermissionDenied => "PERMISSION_DENIED",
            ErrorCode::QuotaExceeded => "QUOTA_EXCEEDED",
            ErrorCode::CommandNotFound => "COMMAND_NOT_FOUND",
            ErrorCode::CallCycle => "CALL_CYCLE",
            ErrorCode::CallDepth => "CALL_DEPTH",
            ErrorCode::EventDepth => "EVENT_DEPTH",
            ErrorCode::HostError => "HOST_ERROR",
            ErrorCode::Aborted => "ABORTED",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a JavaScript exception looked like: its class name, message, stack and the first
/// source position that belongs to the plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct JsErrorInfo {
    /// `e.name`, e.g. `"TypeError"`, `"RangeError"`, `"SyntaxError"`.
    pub name: String,
    /// `e.message`.
    pub message: String,
    /// The formatted stack (`    at fn (main.js:3:11)` lines), file names relative to the
    /// plugin's folder.
    pub stack: Option<String>,
    /// The file the error points at, relative to the plugin folder (e.g. `main.js`).
    pub file: Option<String>,
    /// 1-based line in [`JsErrorInfo::file`].
    pub line: Option<u32>,
    /// 1-based column in [`JsErrorInfo::file`].
    pub column: Option<u32>,
}

impl JsErrorInfo {
    /// `file:line:col` when known.
    pub fn location(&self) -> Option<String> {
        let file = self.file.as_ref()?;
        Some(match (self.line, self.column) {
            (Some(l), Some(c)) => format!("{file}:{l}:{c}"),
            (Some(l), None) => format!("{file}:{l}"),
            _ => file.clone(),
        })
    }
}

/// An isola error: a stable [`ErrorCode`], the plugin and hook it concerns, a message, and
/// details where they exist (the JS exception, manifest diagnostics).
///
/// ```
/// use isola::{Error, ErrorCode};
/// let e = Error::new(ErrorCode::HookNotFound, "no hook `greet`").plugin("greeter").hook("greet");
/// assert_eq!(e.code, ErrorCode::HookNotFound);
/// assert_eq!(e.to_string(), "HOOK_NOT_FOUND: greeter.greet: no hook `greet`");
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub struct Error {
    /// The stable kind of failure.
    pub code: ErrorCode,
    /// Human-readable explanation.
    pub message: String,
    /// The plugin concerned, when there is one.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub plugin: Option<String>,
    /// The hook concerned, when there is one.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub hook: Option<String>,
    /// The JavaScript exception, for `JS_ERROR` and most `LOAD_FAILED`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub js: Option<Box<JsErrorInfo>>,
    /// Every manifest problem, for `MANIFEST_INVALID`.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub diagnostics: Vec<Diagnostic>,
    /// What a host function's [`HostError`](crate::HostError) added for the plugin
    /// (`{"hostCode": …, "data": …}`), carried with a `HOST_ERROR` from a plugin's process to
    /// the host and back.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub detail: Option<Box<serde_json::Value>>,
    /// Whether isola threw this error into the plugin (and counted it in the plugin's stats
    /// there) before the hook let it escape; keeps it from being counted twice.
    #[serde(skip)]
    pub(crate) issued: bool,
}

impl Error {
    /// A new error with a code and message; add context with [`Error::plugin`] and
    /// [`Error::hook`].
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Error {
            code,
            message: message.into(),
            plugin: None,
            hook: None,
            js: None,
            diagnostics: Vec::new(),
            detail: None,
            issued: false,
        }
    }

    /// Names the plugin this error concerns.
    pub fn plugin(mut self, id: impl Into<String>) -> Self {
        self.plugin = Some(id.into());
        self
    }

    /// Names the hook this error concerns.
    pub fn hook(mut self, hook: impl Into<String>) -> Self {
        self.hook = Some(hook.into());
        self
    }

    /// Fills in plugin and hook where they are not set yet. isola calls it once, where an
    /// answer leaves a plugin's handle (and where a load or reload reports), so errors made
    /// deeper down carry only what they know.
    pub(crate) fn in_context(mut self, plugin: &str, hook: Option<&str>) -> Self {
        if self.plugin.is_none() {
            self.plugin = Some(plugin.to_owned());
        }
        if self.hook.is_none() {
            self.hook = hook.map(str::to_owned);
        }
        self
    }

    /// `{"error": {"code": ..., "message": ...}}`-ready form used by the CLI and `serve`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_else(|_| serde_json::json!({"code": self.code}))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.code)?;
        match (&self.plugin, &self.hook) {
            (Some(p), Some(h)) => write!(f, "{p}.{h}: ")?,
            (Some(p), None) => write!(f, "{p}: ")?,
            _ => {}
        }
        f.write_str(&self.message)?;
        if let Some(loc) = self.js.as_ref().and_then(|js| js.location())
            && !self.message.contains(&loc)
        {
            write!(f, " (at {loc})")?;
        }
        for d in &self.diagnostics {
            write!(f, "\n  {d}")?;
        }
        Ok(())
    }
}

/// `Result<T, isola::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How much a [`Diagnostic`] matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The plugin cannot load.
    Error,
    /// The plugin loads, but something looks wrong.
    Warning,
}

/// One problem found in a manifest: where (`$.limits.heapMb`), what kind (a stable snake_case
/// code such as `missing_field`), and an explanation.
///
/// ```
/// use isola::manifest::{Diagnostic, Severity};
/// let d = Diagnostic {
///     severity: Severity::Error,
///     path: "$.id".into(),
///     code: "missing_field".into(),
///     message: "required field `id` (a string) is missing".into(),
/// };
/// assert_eq!(d.to_string(), "error [missing_field] $.id: required field `id` (a string) is missing");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// JSON path of the offending value, `$` being the whole document.
    pub path: String,
    /// Stable code: `invalid_json`, `not_an_object`, `missing_field`, `wrong_type`,
    /// `invalid_value`, `unknown_field`, `unsupported_api_version`, `unknown_permission`.
    pub code: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{sev} [{}] {}: {}", self.code, self.path, self.message)
    }
}
