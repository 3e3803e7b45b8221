//! The [`Engine`]: configuration shared by every plugin — default limits and the host API.
//!
//! Like wasmtime's `Engine`, it is cheap to clone (an `Arc`) and holds no plugin state; a
//! [`Manager`](crate::Manager) uses it to start plugins. What one plugin ends up with (its
//! limits lowered by its manifest, the permissions the policy grants it, its storage quota) is
//! worked out once per plugin version from the engine and the manifest, in `config.rs`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::host::HostApi;
pub use crate::isolation::Isolation;
use crate::memory_guard::MemoryGuard;
use crate::permissions::Policy;
use crate::storage::Storage;

/// How long past a call's deadline its plugin's thread may stay busy before the plugin is
/// `unresponsive` (stuck where termination cannot reach, such as a host function that never
/// returns): its callers get `TIMEOUT` then, and unload and shutdown stop waiting for it.
pub const STUCK_GRACE: Duration = Duration::from_secs(1);

/// Default memory budget per plugin: V8 heap plus ArrayBuffer bytes.
pub const DEFAULT_HEAP_LIMIT_MB: u64 = 64;
/// Default time limit for one hook call.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Default time limit for evaluating a plugin's code when it loads.
pub const DEFAULT_LOAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Default number of calls that may wait in one plugin's mailbox before callers get `BUSY`.
pub const DEFAULT_MAILBOX_CAPACITY: usize = 1024;
/// Default largest hook result, in bytes of JSON: what a hook returns is copied out of its
/// memory budget into the host, so it is bounded too.
pub const DEFAULT_MAX_RESULT_BYTES: usize = 16 << 20;
/// Longest message, name or stack of a plugin's error that isola keeps (longer ones are cut,
/// saying so).
pub const MAX_ERROR_TEXT_BYTES: usize = 64 << 10;
/// `text` cut to [`MAX_ERROR_TEXT_BYTES`], saying so: an error's message or stack is the
/// plugin's to choose, and a host keeps and logs errors.
pub(crate) fn capped(mut text: String) -> String {
    if text.len() > MAX_ERROR_TEXT_BYTES {
        let total = text.len();
        let mut cut = MAX_ERROR_TEXT_BYTES;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str(&format!("… (truncated: {total} bytes)"));
    }
    text
}

/// How deep `host.plugins.call` chains may go (A → B → C ... counts the plugins); deeper is
/// `CALL_DEPTH`.
pub const MAX_CALL_DEPTH: usize = 8;
/// How many times plugin-emitted events may lead to further emits; deeper is `EVENT_DEPTH`.
pub const MAX_EVENT_DEPTH: u32 = 8;
/// Largest event payload or argument list (as JSON) a plugin may send to other plugins: what
/// it sends is copied out of its memory budget and queued, so it must be bounded.
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;

/// Limits applied to a plugin. A manifest's `limits` may only lower them.
///
/// ```
/// let limits = isola::Limits::default();
/// assert_eq!(limits.heap_limit, (isola::engine::DEFAULT_HEAP_LIMIT_MB << 20) as usize);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Memory budget in bytes (V8 heap plus ArrayBuffer backing stores). At least 8 MiB is
    /// used whatever is asked, since V8 cannot start in less.
    pub heap_limit: usize,
    /// Time limit of one hook call (a call may override it).
    pub call_timeout: Duration,
    /// Time limit of the plugin's top-level evaluation.
    pub load_timeout: Duration,
    /// Calls that may be queued for one plugin.
    pub mailbox_capacity: usize,
    /// Largest hook result, in bytes of JSON; a larger one is `INVALID_ARGS`.
    pub max_result_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            heap_limit: (DEFAULT_HEAP_LIMIT_MB << 20) as usize,
            call_timeout: DEFAULT_CALL_TIMEOUT,
            load_timeout: DEFAULT_LOAD_TIMEOUT,
            mailbox_capacity: DEFAULT_MAILBOX_CAPACITY,
            max_result_bytes: DEFAULT_MAX_RESULT_BYTES,
        }
    }
}

/// Whether plugins can be debugged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InspectMode {
    /// No inspector: `debugger;` statements do nothing and cost nothing.
    #[default]
    Off,
    /// Every plugin's isolate has V8's inspector; sessions attach at any time.
    On,
    /// As `On`, and each plugin waits for a debugger before its first line runs (`isola dev
    /// --inspect-brk`), pausing there.
    BreakOnStart,
}

/// Shared configuration for plugins: the host API they see and their default limits.
///
/// ```
/// use std::time::Duration;
/// use isola::{Engine, HostApi};
/// let engine = Engine::builder()
///     .host(HostApi::new().value("config", serde_json::json!({"version": "1.0"})))
///     .heap_limit_mb(32)
///     .call_timeout(Duration::from_millis(200))
///     .build();
/// assert_eq!(engine.limits().heap_limit, 32 << 20);
/// ```
#[derive(Clone, Debug)]
pub struct Engine {
    inner: Arc<EngineInner>,
}

#[derive(Debug)]
struct EngineInner {
    host: HostApi,
    limits: Limits,
    policy: Policy,
    storage: Storage,
    isolation: Isolation,
    worker_program: Option<PathBuf>,
    seccomp: bool,
    warm_pool: usize,
    inspect: InspectMode,
    evict_idle_after: Option<Duration>,
    guard: Arc<MemoryGuard>,
}

impl Default for Engine {
    fn default() -> Self {
        Engine::builder().build()
    }
}

impl Engine {
    /// An engine with default limits and this host API.
    pub fn new(host: HostApi) -> Engine {
        Engine::builder().host(host).build()
    }

    /// Starts configuring an engine.
    pub fn builder() -> EngineBuilder {
        EngineBuilder {
            host: HostApi::new(),
            limits: Limits::default(),
            policy: Policy::default(),
            storage: None,
            isolation: Isolation::Thread,
            worker_program: None,
            seccomp: false,
            total_memory_limit: None,
            warm_pool: 0,
            inspect: InspectMode::Off,
            evict_idle_after: None,
        }
    }

    /// The host API every plugin sees.
    pub fn host(&self) -> &HostApi {
        &self.inner.host
    }

    /// The default limits.
    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// Where plugins with the `storage` permission keep their data.
    pub fn storage(&self) -> &Storage {
        &self.inner.storage
    }

    /// The admin permission policy.
    pub fn policy(&self) -> &Policy {
        &self.inner.policy
    }

    /// Where plugins run unless their manifest asks for more isolation.
    pub fn isolation(&self) -> Isolation {
        self.inner.isolation
    }

    /// Whether process-isolated plugins run under a syscall filter (see
    /// [`EngineBuilder::seccomp`]).
    pub fn seccomp(&self) -> bool {
        self.inner.seccomp
    }

    /// How many ready isolates each [`Manager`](crate::Manager) keeps (see
    /// [`EngineBuilder::warm_pool`]).
    pub fn warm_pool(&self) -> usize {
        if self.inner.inspect == InspectMode::Off { self.inner.warm_pool } else { 0 }
    }

    /// How long a plugin may sit idle before it is evicted (see
    /// [`EngineBuilder::evict_idle_after`]); `None` when plugins are never evicted.
    pub fn evict_idle_after(&self) -> Option<Duration> {
        self.inner.evict_idle_after.filter(|_| self.inner.inspect == InspectMode::Off)
    }

    /// Whether plugins can be debugged (see [`EngineBuilder::inspect`]).
    pub fn inspect_mode(&self) -> InspectMode {
        self.inner.inspect
    }

    /// The program started for process-isolated plugins (`None`: this very executable).
    pub fn worker_program(&self) -> Option<&std::path::Path> {
        self.inner.worker_program.as_deref()
    }

    /// The limit on all this engine's plugins' memory together, in bytes (see
    /// [`EngineBuilder::total_memory_limit_mb`]).
    pub fn total_memory_limit(&self) -> Option<usize> {
        self.inner.guard.limit()
    }

    /// Bytes this engine's plugins hold together: for a plugin on a thread, its V8 heap (as of
    /// its last garbage collection) plus ArrayBuffers; for a plugin in a process of its own,
    /// that process's resident memory. What the total limit is checked against.
    ///
    /// ```
    /// let engine = isola::Engine::builder().total_memory_limit_mb(512).build();
    /// assert_eq!(engine.memory_in_use(), 0); // no plugin loaded yet
    /// ```
    pub fn memory_in_use(&self) -> usize {
        self.inner.guard.total()
    }

    /// How many times a plugin was stopped because the total limit was reached.
    pub fn total_memory_stops(&self) -> usize {
        self.inner.guard.stops()
    }

    pub(crate) fn memory_guard(&self) -> &Arc<MemoryGuard> {
        &self.inner.guard
    }
}

/// Builds an [`Engine`]; see [`Engine::builder`].
#[derive(Debug)]
pub struct EngineBuilder {
    host: HostApi,
    limits: Limits,
    policy: Policy,
    storage: Option<Storage>,
    isolation: Isolation,
    worker_program: Option<PathBuf>,
    seccomp: bool,
    total_memory_limit: Option<usize>,
    warm_pool: usize,
    inspect: InspectMode,
    evict_idle_after: Option<Duration>,
}

impl EngineBuilder {
    /// The host API plugins see as `host`.
    pub fn host(mut self, host: HostApi) -> Self {
        self.host = host;
        self
    }

    /// Memory budget per plugin in MiB (V8 heap plus ArrayBuffers).
    pub fn heap_limit_mb(mut self, mb: u64) -> Self {
        self.limits.heap_limit = (mb as usize).saturating_mul(1 << 20);
        self
    }

    /// Default time limit per hook call.
    pub fn call_timeout(mut self, t: Duration) -> Self {
        self.limits.call_timeout = t;
        self
    }

    /// Time limit for a plugin's top-level evaluation.
    pub fn load_timeout(mut self, t: Duration) -> Self {
        self.limits.load_timeout = t;
        self
    }

    /// How many calls may wait for one plugin before callers get `BUSY` (at least 1).
    pub fn mailbox_capacity(mut self, n: usize) -> Self {
        self.limits.mailbox_capacity = n.max(1);
        self
    }

    /// Largest hook result, in bytes of JSON (default 16 MiB); a larger one fails the call
    /// with `INVALID_ARGS` before it is copied out of the plugin.
    pub fn max_result_bytes(mut self, n: usize) -> Self {
        self.limits.max_result_bytes = n;
        self
    }

    /// Grants and refusals of permissions that win over manifests.
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// Where `host.storage` keeps data: [`Storage::in_dir`] for durable storage,
    /// [`Storage::memory`] (the default) for data that dies with the process.
    pub fn storage(mut self, storage: Storage) -> Self {
        self.storage = Some(storage);
        self
    }

    /// Where plugins run (default [`Isolation::Thread`]); a manifest may ask for more.
    pub fn isolation(mut self, isolation: Isolation) -> Self {
        self.isolation = isolation;
        self
    }

    /// The program to start for process-isolated plugins. By default it is the running
    /// executable, which must then call [`isola::process::run_worker_if_requested`] first thing
    /// in `main` (the `isola` binary does).
    ///
    /// [`isola::process::run_worker_if_requested`]: crate::process::run_worker_if_requested
    pub fn worker_program(mut self, path: impl Into<PathBuf>) -> Self {
        self.worker_program = Some(path.into());
        self
    }

    /// Linux hardening for process-isolated plugins (off by default): once a plugin has loaded,
    /// its worker process installs a seccomp filter that refuses, with `EPERM`, the system
    /// calls that open files or sockets, run programs, or change the file system or
    /// credentials. The plugin keeps working (it only talks to its host over the channel it
    /// already has), but even code that escaped V8 has nothing to open. An `import()` of a
    /// file the plugin had not loaded yet fails then. No effect on thread-isolated plugins or
    /// on other systems.
    pub fn seccomp(mut self, on: bool) -> Self {
        self.seccomp = on;
        self
    }

    /// Keeps `n` plugin threads ready, each with a V8 isolate already made from the startup
    /// snapshot (default 0: every plugin starts cold). Loading, reloading and restarting a
    /// plugin after `HEAP_LIMIT` then pay only for evaluating the plugin's own code (well
    /// under a millisecond for a small plugin, against a few milliseconds cold). Each
    /// [`Manager`](crate::Manager) keeps its own pool, refilled by one background thread, one
    /// isolate at a time; each waiting isolate holds about 2 MiB and counts under
    /// [`total_memory_limit_mb`](Self::total_memory_limit_mb). Only thread-isolated plugins
    /// with the engine's default memory budget use the pool; others start cold.
    ///
    /// ```
    /// let engine = isola::Engine::builder().warm_pool(4).build();
    /// assert_eq!(engine.warm_pool(), 4);
    /// ```
    pub fn warm_pool(mut self, n: usize) -> Self {
        self.warm_pool = n;
        self
    }

    /// Evicts a plugin that has been idle for `idle` (default: never): its thread and isolate
    /// are freed, and its next call (or event, or plugin call) starts it again, transparently,
    /// from the files this version loaded. That is how one process keeps thousands of
    /// installed plugins of which only some are in use: an evicted plugin costs a few
    /// kilobytes instead of its isolate's megabytes, and comes back in about a cold start
    /// (less from a [`warm_pool`](Self::warm_pool)).
    ///
    /// Idle means no call and nothing pending: a plugin with a timer set or a promise it left
    /// running is not idle. Module state does not survive an eviction by itself; a plugin that
    /// keeps state hands it over as on reload, `onUnload()` returning it and `onLoad(state)`
    /// receiving it when the plugin comes back (if `onUnload` throws, the plugin stays). A
    /// plugin whose manifest says `"evictable": false` is never evicted, nor are
    /// process-isolated plugins, nor any plugin while an inspector is on.
    ///
    /// ```
    /// use std::time::Duration;
    /// let engine = isola::Engine::builder().evict_idle_after(Duration::from_secs(300)).build();
    /// assert_eq!(engine.evict_idle_after(), Some(Duration::from_secs(300)));
    /// ```
    pub fn evict_idle_after(mut self, idle: Duration) -> Self {
        self.evict_idle_after = Some(idle);
        self
    }

    /// Makes plugins debuggable with V8's inspector (default [`InspectMode::Off`]): each
    /// thread-isolated plugin's isolate accepts Chrome DevTools Protocol sessions
    /// ([`PluginHandle::inspect`](crate::PluginHandle::inspect)), and its TypeScript carries
    /// inline source maps so that a debugger shows the `.ts` text. While a debugger holds a
    /// plugin paused, its call's time limit stops counting. Meant for development (`isola dev
    /// --inspect`): the warm pool is not used, and process-isolated plugins cannot be inspected.
    ///
    /// ```
    /// use isola::engine::InspectMode;
    /// let engine = isola::Engine::builder().inspect(InspectMode::On).build();
    /// assert_eq!(engine.inspect_mode(), InspectMode::On);
    /// ```
    pub fn inspect(mut self, mode: InspectMode) -> Self {
        self.inspect = mode;
        self
    }

    /// A limit on the memory of all plugins together, in MiB (default: none). Each plugin
    /// keeps its own budget; when the sum of what the budgets count (V8 heap plus
    /// ArrayBuffers) passes this limit, the plugin holding the most is stopped with
    /// `HEAP_LIMIT` and restarted fresh, as if it had broken its own budget, before the
    /// operating system's OOM killer can end the whole host. Set it below the memory the host
    /// may use, leaving room for the host itself and for what V8 keeps outside the budgets
    /// (about 1 MiB per plugin). A process-isolated plugin counts with its process's resident
    /// memory (about 25 MiB at rest); stopping it kills that process, which gives all of it
    /// back at once, and restarts the plugin.
    ///
    /// ```
    /// let engine = isola::Engine::builder().heap_limit_mb(64).total_memory_limit_mb(1024).build();
    /// assert_eq!(engine.total_memory_limit(), Some(1 << 30));
    /// ```
    pub fn total_memory_limit_mb(mut self, mb: u64) -> Self {
        self.total_memory_limit = Some((mb as usize).saturating_mul(1 << 20));
        self
    }

    /// Finishes the engine.
    pub fn build(self) -> Engine {
        let storage = self.storage.unwrap_or_else(Storage::memory);
        Engine {
            inner: Arc::new(EngineInner {
                host: self.host,
                limits: self.limits,
                policy: self.policy,
                storage,
                isolation: self.isolation,
                worker_program: self.worker_program,
                seccomp: self.seccomp,
                warm_pool: self.warm_pool,
                inspect: self.inspect,
                evict_idle_after: self.evict_idle_after,
                guard: MemoryGuard::new(self.total_memory_limit),
            }),
        }
    }
}
