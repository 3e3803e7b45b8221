//! The host API: the Rust functions and plain values an embedder whitelists for plugins.
//!
//! Plugins see exactly what is registered here as `host.NAME(...)` (functions) or `host.NAME`
//! (values), and nothing else. Functions are type-erased to "`serde_json::Value` in, `Value` out" (the
//! op turns plain JS values into a `Value` directly, anything else through JSON text) so that one
//! generic pair of deno_core ops (sync and async) can dispatch every host function by index:
//! deno_core ops are static declarations, while a host API is built at run time.

use std::collections::BTreeMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::ErrorCode;

/// Names isola itself gives plugins under `host` (when their permission is granted). A host
/// item of the same name would be silently shadowed, so registering one is refused.
pub const RESERVED_NAMES: &[&str] = &["storage", "events", "plugins", "signal"];

thread_local! {
    static CURRENT_PLUGIN: std::cell::RefCell<Option<Arc<str>>> = const { std::cell::RefCell::new(None) };
    static CURRENT_DEADLINE: std::cell::Cell<Option<Instant>> = const { std::cell::Cell::new(None) };
}

/// Inside a host function: the id of the plugin that called it (`None` elsewhere).
///
/// Host functions run on the calling plugin's own thread (async ones on its runtime), and a
/// thread serves exactly one plugin, so this needs no extra argument.
///
/// ```
/// use isola::HostApi;
/// let host = HostApi::new().func("log", |(msg,): (String,)| {
///     let plugin = isola::current_plugin().unwrap_or_default();
///     println!("[{plugin}] {msg}");
///     Ok(())
/// });
/// assert_eq!(isola::current_plugin(), None);
/// # let _ = host;
/// ```
pub fn current_plugin() -> Option<String> {
    CURRENT_PLUGIN.with(|c| c.borrow().as_deref().map(str::to_owned))
}

/// Inside a host function: when the hook call that invoked it must end (`None` elsewhere).
///
/// A synchronous host function that waits for something (another process, a lock) should
/// wait no longer than this: nothing can interrupt it, so the plugin's time limit only takes
/// effect once it returns. An async host function needs it less (the plugin stops awaiting at
/// its deadline and the future is dropped), but may read it when it is called, before its
/// first `.await`.
///
/// ```
/// use std::time::Instant;
/// let host = isola::HostApi::new().func("wait", |(): ()| {
///     let deadline = isola::call_deadline().unwrap_or_else(Instant::now);
///     Ok(deadline.saturating_duration_since(Instant::now()).as_millis() as u64)
/// });
/// assert_eq!(isola::call_deadline(), None);
/// # let _ = host;
/// ```
pub fn call_deadline() -> Option<Instant> {
    CURRENT_DEADLINE.with(std::cell::Cell::get)
}

/// Runs `f` (a host function being invoked) with [`call_deadline`] answering `deadline`.
pub(crate) fn with_deadline<T>(deadline: Option<Instant>, f: impl FnOnce() -> T) -> T {
    struct Reset(Option<Instant>);
    impl Drop for Reset {
        fn drop(&mut self) {
            CURRENT_DEADLINE.with(|c| c.set(self.0));
        }
    }
    let _reset = Reset(CURRENT_DEADLINE.with(|c| c.replace(deadline)));
    f()
}

/// Marks the calling thread as serving `plugin` (done once by each plugin thread).
pub(crate) fn set_current_plugin(plugin: &str) {
    CURRENT_PLUGIN.with(|c| *c.borrow_mut() = Some(plugin.into()));
}

/// What a host function failed with, as the plugin will see it: a JS `Error` whose `message`
/// is this text (and `code` is `HOST_ERROR`, or `INVALID_ARGS` when the arguments did not fit).
#[derive(Debug, Clone)]
pub(crate) struct HostFnError {
    pub code: ErrorCode,
    pub message: String,
    /// What a [`HostError`] added: `{"hostCode": …, "data": …}`.
    pub detail: Option<Value>,
}

impl HostFnError {
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        HostFnError { code, message: message.into(), detail: None }
    }

    pub(crate) fn with_detail(mut self, detail: Option<Value>) -> Self {
        self.detail = detail;
        self
    }
}

/// An error a host function returns to tell the plugin more than a message: a code of the
/// host's own (`e.hostCode` in JS), data (`e.data`), or that it timed out (`e.code` is then
/// `TIMEOUT` instead of `HOST_ERROR`).
///
/// Return it from a host function as the `anyhow::Error` (`Err(HostError::new(..).into())`);
/// any other error reaches the plugin as its message alone. `e.code` stays isola's vocabulary
/// (`HOST_ERROR` or `TIMEOUT`), so that a plugin can always tell where an error came from.
///
/// ```
/// use isola::{HostApi, HostError};
/// let host = HostApi::new().func("user", |(id,): (u32,)| -> anyhow::Result<String> {
///     Err(HostError::new(format!("no user {id}")).code("NOT_FOUND").into())
/// });
/// // In the plugin: try { host.user(7) } catch (e) { e.code === "HOST_ERROR"; e.hostCode === "NOT_FOUND" }
/// # let _ = host;
/// ```
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct HostError {
    message: String,
    code: Option<Value>,
    data: Option<Value>,
    timeout: bool,
}

impl HostError {
    /// An error with this message (and no code of its own).
    pub fn new(message: impl Into<String>) -> Self {
        HostError { message: message.into(), code: None, data: None, timeout: false }
    }

    /// An error the plugin sees with code `TIMEOUT`: what the host waited for took too long.
    pub fn timeout(message: impl Into<String>) -> Self {
        HostError { timeout: true, ..HostError::new(message) }
    }

    /// The host's own code for it (a string or a number), `e.hostCode` in the plugin.
    pub fn code(mut self, code: impl Into<Value>) -> Self {
        self.code = Some(code.into());
        self
    }

    /// Data for the plugin (`e.data`), e.g. which field was wrong.
    pub fn data(mut self, data: impl Into<Value>) -> Self {
        self.data = Some(data.into());
        self
    }

    fn into_fn_error(self) -> HostFnError {
        let code = if self.timeout { ErrorCode::Timeout } else { ErrorCode::HostError };
        let mut detail = serde_json::Map::new();
        if let Some(c) = self.code {
            detail.insert("hostCode".into(), c);
        }
        if let Some(d) = self.data {
            detail.insert("data".into(), d);
        }
        HostFnError::new(code, self.message).with_detail((!detail.is_empty()).then_some(Value::Object(detail)))
    }
}

pub(crate) type SyncFn = dyn Fn(Value) -> Result<Value, HostFnError> + Send + Sync;
pub(crate) type AsyncFut = Pin<Box<dyn Future<Output = Result<Value, HostFnError>>>>;
pub(crate) type AsyncFn = dyn Fn(Value) -> AsyncFut + Send + Sync;

/// One registered item.
#[derive(Clone)]
pub(crate) enum HostItem {
    Sync(Arc<SyncFn>),
    Async(Arc<AsyncFn>),
    Value(Value),
}

/// The set of functions and values plugins may use, built once and shared by every plugin of
/// an [`Engine`](crate::Engine).
///
/// Arguments arrive as the tuple of JS arguments: a function taking one string is written
/// `|(name,): (String,)|`, one taking two numbers `|(a, b): (f64, f64)|`. Anything that
/// implements `DeserializeOwned` works (`Vec<serde_json::Value>` accepts any argument list).
/// Results go back through `Serialize`. An `Err` becomes a JS `Error` the plugin can catch.
///
/// ```
/// use isola::HostApi;
/// let host = HostApi::new()
///     .value("config", serde_json::json!({ "version": "1.2.3" }))
///     .func("add", |(a, b): (f64, f64)| Ok(a + b))
///     .async_func("fetchUser", |(id,): (u32,)| async move {
///         Ok(serde_json::json!({ "id": id, "name": "Ada" }))
///     });
/// assert_eq!(host.names(), vec!["add", "config", "fetchUser"]);
/// ```
#[derive(Clone, Default)]
pub struct HostApi {
    items: BTreeMap<String, HostItem>,
    /// item name -> the permission a plugin needs to use it.
    permissions: BTreeMap<String, String>,
    /// item name -> its TypeScript type and a line of documentation (see [`HostApi::describe`]).
    descriptions: BTreeMap<String, Description>,
}

/// What [`HostApi::describe`] says about an item, for the generated `isola.d.ts`.
#[derive(Clone, Debug)]
pub(crate) struct Description {
    pub ts_type: String,
    pub doc: String,
}

impl std::fmt::Debug for HostApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostApi").field("names", &self.names()).finish()
    }
}

fn decode_args<A: DeserializeOwned>(args: Value) -> Result<A, HostFnError> {
    let no_args = args.as_array().is_some_and(|a| a.is_empty());
    serde_json::from_value(args)
        // `host.f()` fits a function declared `|(): ()|` too.
        .or_else(|e| if no_args { serde_json::from_value(Value::Null).map_err(|_| e) } else { Err(e) })
        .map_err(|e| HostFnError::new(ErrorCode::InvalidArgs, format!("invalid arguments: {e}")))
}

fn encode_result<R: Serialize>(r: anyhow::Result<R>) -> Result<Value, HostFnError> {
    match r {
        Ok(v) => serde_json::to_value(v).map_err(|e| {
            HostFnError::new(ErrorCode::InvalidArgs, format!("host function result is not serialisable: {e}"))
        }),
        Err(e) => Err(match e.downcast::<HostError>() {
            Ok(h) => h.into_fn_error(),
            Err(e) => HostFnError::new(ErrorCode::HostError, format!("{e:#}")),
        }),
    }
}

impl HostApi {
    /// An empty host API: plugins get an empty `host` object (and `console`).
    pub fn new() -> Self {
        Self::default()
    }

    fn insert(mut self, name: &str, item: HostItem) -> Self {
        if let Err(why) = check_name(name) {
            panic!("{why}");
        }
        self.items.insert(name.to_owned(), item);
        self
    }

    /// Registers a synchronous function as `host.NAME(...)`.
    ///
    /// # Panics
    /// If `name` is not a JavaScript identifier or is one of [`RESERVED_NAMES`] (`storage`,
    /// `events`, `plugins`, which isola provides itself): a host API is written once, by the
    /// embedder, so a bad name is a programming error reported where it is made. The same
    /// holds for [`async_func`](Self::async_func) and [`value`](Self::value).
    ///
    /// ```should_panic
    /// // `host.storage` is isola's own scoped storage.
    /// isola::HostApi::new().func("storage", |(): ()| Ok(()));
    /// ```
    pub fn func<A, R, F>(self, name: &str, f: F) -> Self
    where
        A: DeserializeOwned,
        R: Serialize,
        F: Fn(A) -> anyhow::Result<R> + Send + Sync + 'static,
    {
        let erased = move |args: Value| {
            let args = decode_args(args)?;
            // A panic must not unwind into V8 (that aborts the process): it becomes an error.
            match std::panic::catch_unwind(AssertUnwindSafe(|| f(args))) {
                Ok(r) => encode_result(r),
                Err(panic) => Err(panicked(panic)),
            }
        };
        self.insert(name, HostItem::Sync(Arc::new(erased)))
    }

    /// Registers an async function as `host.NAME(...)`, returning a `Promise` in JS. The future
    /// runs on the plugin's own thread (its current-thread tokio runtime), so it need not be
    /// `Send`, and tokio's timers and I/O work inside it.
    pub fn async_func<A, R, F, Fut>(self, name: &str, f: F) -> Self
    where
        A: DeserializeOwned,
        R: Serialize,
        F: Fn(A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = anyhow::Result<R>> + 'static,
    {
        let erased = move |args: Value| -> AsyncFut {
            // `f` itself runs now, on the calling plugin's thread (so that it can read
            // `call_deadline` and `current_plugin`); its future runs when polled.
            let fut =
                decode_args(args).and_then(|a| std::panic::catch_unwind(AssertUnwindSafe(|| f(a))).map_err(panicked));
            Box::pin(async move {
                match (CatchUnwind(Box::pin(fut?))).await {
                    Ok(r) => encode_result(r),
                    Err(panic) => Err(panicked(panic)),
                }
            })
        };
        self.insert(name, HostItem::Async(Arc::new(erased)))
    }

    /// Registers a plain value as `host.NAME` (a deep-frozen copy in every plugin).
    pub fn value(self, name: &str, value: impl Serialize) -> Self {
        let v = serde_json::to_value(value).expect("host API values must be serialisable to JSON");
        self.insert(name, HostItem::Value(v))
    }

    /// Gates `name` behind `permission`: only plugins granted it may call the function (others
    /// get a `PERMISSION_DENIED` error) or see the value (it is absent for others). Items not
    /// gated are open to every plugin.
    ///
    /// ```
    /// use isola::HostApi;
    /// let host = HostApi::new()
    ///     .async_func("fetchUser", |(id,): (u32,)| async move { Ok(id) })
    ///     .requires("fetchUser", "users");
    /// assert_eq!(host.permission_of("fetchUser"), Some("users"));
    /// ```
    pub fn requires(mut self, name: &str, permission: &str) -> Self {
        self.permissions.insert(name.to_owned(), permission.to_owned());
        self
    }

    /// Gives the async function `name` a time limit of its own: past it, the plugin's `await`
    /// throws a catchable error with code `TIMEOUT` and the host's future is dropped. (The
    /// calling hook's own deadline still applies.) Only async functions can be stopped this
    /// way: a sync function runs on the plugin's thread, where nothing can interrupt it, so
    /// asking for a timeout on one panics when the host API is built, as does a name that is
    /// not registered.
    ///
    /// ```
    /// use std::time::Duration;
    /// let host = isola::HostApi::new()
    ///     .async_func("lookup", |(key,): (String,)| async move { Ok(key) })
    ///     .timeout("lookup", Duration::from_millis(200));
    /// assert_eq!(host.names(), vec!["lookup"]);
    /// ```
    pub fn timeout(mut self, name: &str, limit: std::time::Duration) -> Self {
        let f = match self.items.get(name) {
            Some(HostItem::Async(f)) => f.clone(),
            Some(_) => panic!("host.{name} is not an async function: only async host functions can have a timeout"),
            None => panic!("no host function `{name}` to give a timeout (register it first)"),
        };
        let label = name.to_owned();
        let limited = move |args: Value| -> AsyncFut {
            let call = f(args);
            let label = label.clone();
            Box::pin(async move {
                tokio::time::timeout(limit, call).await.unwrap_or_else(|_| {
                    Err(HostFnError::new(
                        ErrorCode::Timeout,
                        format!("host.{label} took longer than its {} ms limit", limit.as_millis()),
                    ))
                })
            })
        };
        self.items.insert(name.to_owned(), HostItem::Async(Arc::new(limited)));
        self
    }

    /// Describes `name` for plugin authors: its TypeScript type as plugins see it and one line
    /// of documentation. [`crate::typings::declarations`] (and `isola types`) put both into the
    /// `isola.d.ts` that gives editors autocompletion for `host`. For a function, the type is
    /// a function type; for an async function its result is a `Promise`, as in JavaScript.
    /// Items left undescribed are typed loosely (`(...args: any[]) => unknown`; a value by its
    /// JSON shape).
    ///
    /// # Panics
    /// If `name` is not registered (describe it after registering it).
    ///
    /// ```
    /// let host = isola::HostApi::new()
    ///     .func("log", |(msg,): (String,)| Ok(()))
    ///     .describe("log", "(message: string) => void", "Writes a line to the host's log.");
    /// assert!(isola::typings::declarations(&host).contains("log: (message: string) => void;"));
    /// ```
    pub fn describe(mut self, name: &str, ts_type: &str, doc: &str) -> Self {
        assert!(self.items.contains_key(name), "no host item `{name}` to describe (register it first)");
        self.descriptions.insert(name.to_owned(), Description { ts_type: ts_type.to_owned(), doc: doc.to_owned() });
        self
    }

    pub(crate) fn description(&self, name: &str) -> Option<&Description> {
        self.descriptions.get(name)
    }

    /// The permission `name` needs, if it is gated.
    pub fn permission_of(&self, name: &str) -> Option<&str> {
        self.permissions.get(name).map(String::as_str)
    }

    /// Every permission name the host API declares (isola's own — `storage`, `events`,
    /// `call:PLUGIN` — come on top).
    pub fn declared_permissions(&self) -> std::collections::BTreeSet<&str> {
        self.permissions.values().map(String::as_str).collect()
    }

    /// Whether `name` may be registered (a JavaScript identifier, not one of
    /// [`RESERVED_NAMES`]); the reason if not. The builder methods panic on a bad name, so a
    /// host API built from input (a sidecar's client, a config file) checks here first.
    ///
    /// ```
    /// assert!(isola::HostApi::check_name("lookup").is_ok());
    /// assert!(isola::HostApi::check_name("storage").unwrap_err().contains("reserved"));
    /// ```
    pub fn check_name(name: &str) -> Result<(), String> {
        check_name(name)
    }

    /// The registered names, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.items.keys().map(String::as_str).collect()
    }

    /// Adds an already type-erased item (a process worker's forwarding functions).
    pub(crate) fn with_item(self, name: &str, item: HostItem) -> Self {
        self.insert(name, item)
    }

    pub(crate) fn items(&self) -> impl Iterator<Item = (&str, &HostItem)> {
        self.items.iter().map(|(k, v)| (k.as_str(), v))
    }
}

/// Polls a future, turning a panic inside it into an `Err` instead of unwinding into V8.
pub(crate) struct CatchUnwind<F>(pub(crate) Pin<Box<F>>);

impl<F: Future> Future for CatchUnwind<F> {
    type Output = std::thread::Result<F::Output>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        match std::panic::catch_unwind(AssertUnwindSafe(|| self.0.as_mut().poll(cx))) {
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Ok(std::task::Poll::Ready(v)) => std::task::Poll::Ready(Ok(v)),
            Err(panic) => std::task::Poll::Ready(Err(panic)),
        }
    }
}

pub(crate) fn panicked(panic: Box<dyn std::any::Any + Send>) -> HostFnError {
    HostFnError::new(ErrorCode::HostError, format!("the host function panicked: {}", panic_message(&*panic)))
}

/// What a panic said (its `&str` or `String` payload).
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Whether `name` may be registered in a [`HostApi`]; the reason if not.
pub(crate) fn check_name(name: &str) -> Result<(), String> {
    if !is_identifier(name) {
        return Err(format!("host API name `{name}` must be a JavaScript identifier (letters, digits, `_`, `$`)"));
    }
    if RESERVED_NAMES.contains(&name) {
        return Err(format!(
            "host API name `{name}` is reserved: isola provides `host.{name}` itself (reserved: {})",
            RESERVED_NAMES.join(", ")
        ));
    }
    Ok(())
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == '$')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
}
