//! The [`Engine`]: configuration shared by every plugin — default limits and the host API.
//!
//! Like wasmtime's `Engine`, it is cheap to clone (an `Arc`) and holds no plugin state; a
//! [`Manager`](crate::Manager) uses it to start plugins.

use std::sync::Arc;
use std::time::Duration;

use crate::host::HostApi;
use crate::permissions::{Permissions, Policy};
use crate::source::PluginSource;
use crate::storage::{Storage, StorageQuota};

/// Default memory budget per plugin: V8 heap plus ArrayBuffer bytes.
pub const DEFAULT_HEAP_LIMIT_MB: u64 = 64;
/// Default time limit for one hook call.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Default time limit for evaluating a plugin's code when it loads.
pub const DEFAULT_LOAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Default number of calls that may wait in one plugin's mailbox before callers get `BUSY`.
pub const DEFAULT_MAILBOX_CAPACITY: usize = 1024;

/// Limits applied to a plugin. A manifest's `limits` may only lower them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            heap_limit: (DEFAULT_HEAP_LIMIT_MB << 20) as usize,
            call_timeout: DEFAULT_CALL_TIMEOUT,
            load_timeout: DEFAULT_LOAD_TIMEOUT,
            mailbox_capacity: DEFAULT_MAILBOX_CAPACITY,
        }
    }
}

impl Limits {
    /// These limits lowered by what a plugin's manifest asks for.
    pub fn for_plugin(&self, source: &PluginSource) -> Limits {
        let mut l = *self;
        if let Some(m) = source.manifest() {
            if let Some(mb) = m.limits.heap_mb {
                l.heap_limit = l.heap_limit.min((mb as usize).saturating_mul(1 << 20));
            }
            if let Some(ms) = m.limits.call_timeout_ms {
                l.call_timeout = l.call_timeout.min(Duration::from_millis(ms));
            }
        }
        l
    }
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
        EngineBuilder { host: HostApi::new(), limits: Limits::default(), policy: Policy::default(), storage: None }
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

    /// What `source` asks for and what it is granted.
    pub fn permissions_for(&self, source: &PluginSource) -> Permissions {
        let requested = source.manifest().map(|m| m.permissions.clone()).unwrap_or_default();
        let granted = self.inner.policy.effective(&source.id, &requested);
        Permissions { requested, granted }
    }

    /// `source`'s storage quota: the engine's, lowered by its manifest.
    pub fn storage_quota_for(&self, source: &PluginSource) -> StorageQuota {
        let q = self.inner.storage.quota();
        source.manifest().map_or(q, |m| q.for_plugin(&m.limits))
    }
}

/// Builds an [`Engine`]; see [`Engine::builder`].
#[derive(Debug)]
pub struct EngineBuilder {
    host: HostApi,
    limits: Limits,
    policy: Policy,
    storage: Option<Storage>,
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

    /// Finishes the engine.
    pub fn build(self) -> Engine {
        let storage = self.storage.unwrap_or_else(Storage::memory);
        Engine { inner: Arc::new(EngineInner { host: self.host, limits: self.limits, policy: self.policy, storage }) }
    }
}
