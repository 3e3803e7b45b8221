//! Scoped, durable key-value storage for plugins (`host.storage`), with quotas.
//!
//! Every entry is keyed by *(plugin id, key)* as two separate fields, never by a joined string,
//! so no key a plugin can write (`../other`, `other\0x`, a prefix of another plugin's id, ...)
//! can reach another plugin's entries. Quotas are checked inside the same transaction as the
//! write, so a write that would break one is refused whole.
//!
//! Backends implement [`StorageBackend`]: [`RedbStorage`] (durable, the default for the CLI)
//! and [`MemoryStorage`] (tests, and hosts that want nothing on disk).

mod memory;
mod redb;

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use self::memory::MemoryStorage;
pub use self::redb::RedbStorage;
use crate::manifest::ManifestLimits;

/// Longest key a plugin may use, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;

/// Storage limits for one plugin. Bytes count keys plus values (values as JSON text).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StorageQuota {
    /// Total bytes of all keys and values.
    pub total_bytes: u64,
    /// Bytes of the largest single value.
    pub value_bytes: u64,
    /// Number of keys.
    pub keys: u64,
}

impl Default for StorageQuota {
    fn default() -> Self {
        StorageQuota { total_bytes: 10 << 20, value_bytes: 1 << 20, keys: 10_000 }
    }
}

impl StorageQuota {
    /// This quota lowered by what a manifest asks for.
    pub fn for_plugin(&self, limits: &ManifestLimits) -> StorageQuota {
        StorageQuota {
            total_bytes: limits.storage_bytes.map_or(self.total_bytes, |b| b.min(self.total_bytes)),
            value_bytes: limits.storage_value_bytes.map_or(self.value_bytes, |b| b.min(self.value_bytes)),
            keys: limits.storage_keys.map_or(self.keys, |k| k.min(self.keys)),
        }
    }

    /// Checks a write of `key` = `value` against this quota, given the plugin's usage before
    /// it and the size of the value it replaces (if any). Backends call this inside their
    /// write transaction.
    pub fn check(&self, before: Usage, key: &str, value: &str, replaced: Option<usize>) -> Result<Usage, StorageError> {
        let value_len = value.len() as u64;
        if value_len > self.value_bytes {
            return Err(StorageError::Quota(format!(
                "value quota exceeded: the value is {value_len} bytes, the largest allowed is {} bytes",
                self.value_bytes
            )));
        }
        let entry = (key.len() + value.len()) as u64;
        let (keys, bytes) = match replaced {
            Some(old) => (before.keys, before.bytes - (key.len() + old) as u64 + entry),
            None => (before.keys + 1, before.bytes + entry),
        };
        if keys > self.keys {
            return Err(StorageError::Quota(format!("key quota exceeded: at most {} keys are allowed", self.keys)));
        }
        if bytes > self.total_bytes {
            return Err(StorageError::Quota(format!(
                "total storage quota exceeded: {bytes} bytes would be used, {} bytes are allowed",
                self.total_bytes
            )));
        }
        Ok(Usage { keys, bytes })
    }
}

/// How much a plugin stores.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Number of keys.
    pub keys: u64,
    /// Bytes of keys plus values.
    pub bytes: u64,
}

/// Why a storage operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageError {
    /// A quota would be broken; the message names which.
    Quota(String),
    /// The key is not acceptable (empty or too long).
    InvalidKey(String),
    /// The backend failed (I/O, corruption, ...).
    Backend(String),
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageError::Quota(m) | StorageError::InvalidKey(m) => f.write_str(m),
            StorageError::Backend(m) => write!(f, "storage failed: {m}"),
        }
    }
}

impl std::error::Error for StorageError {}

/// Where plugin data lives. Implement it to bring your own store; every method is scoped to
/// one plugin id, and `set` must check `quota` (with [`StorageQuota::check`]) atomically with
/// the write.
pub trait StorageBackend: Send + Sync + 'static {
    /// The value of `key` (JSON text), if set.
    fn get(&self, plugin: &str, key: &str) -> Result<Option<String>, StorageError>;
    /// Sets `key` to `value` (JSON text) if the quota allows; all or nothing, durable when it
    /// returns.
    fn set(&self, plugin: &str, key: &str, value: &str, quota: &StorageQuota) -> Result<(), StorageError>;
    /// Removes `key`; whether it existed.
    fn delete(&self, plugin: &str, key: &str) -> Result<bool, StorageError>;
    /// The plugin's keys starting with `prefix`, sorted.
    fn list(&self, plugin: &str, prefix: &str) -> Result<Vec<String>, StorageError>;
    /// How much the plugin stores.
    fn usage(&self, plugin: &str) -> Result<Usage, StorageError>;
    /// Deletes everything the plugin stored.
    fn remove_plugin(&self, plugin: &str) -> Result<(), StorageError>;
}

/// The storage an [`Engine`](crate::Engine) gives plugins that hold the `storage` permission:
/// a backend plus the default quota.
///
/// ```
/// use isola::storage::{Storage, StorageQuota};
/// let storage = Storage::memory().with_quota(StorageQuota { total_bytes: 4096, value_bytes: 1024, keys: 100 });
/// storage.backend().set("notes", "greeting", "\"hi\"", &storage.quota()).unwrap();
/// assert_eq!(storage.backend().get("notes", "greeting").unwrap().as_deref(), Some("\"hi\""));
/// assert_eq!(storage.backend().get("other", "greeting").unwrap(), None);
/// ```
#[derive(Clone)]
pub struct Storage {
    backend: Arc<dyn StorageBackend>,
    quota: StorageQuota,
}

impl fmt::Debug for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Storage").field("quota", &self.quota).finish_non_exhaustive()
    }
}

impl Storage {
    /// Storage on any backend, with the default quota.
    pub fn new(backend: impl StorageBackend) -> Storage {
        Storage { backend: Arc::new(backend), quota: StorageQuota::default() }
    }

    /// In-memory storage (lost when the process ends).
    pub fn memory() -> Storage {
        Storage::new(MemoryStorage::default())
    }

    /// Durable storage in `dir` (created if missing); the database file is opened on first use.
    pub fn in_dir(dir: impl Into<std::path::PathBuf>) -> Storage {
        Storage::new(RedbStorage::new(dir.into().join("storage.redb")))
    }

    /// Sets the default quota (a manifest may ask for less).
    pub fn with_quota(mut self, quota: StorageQuota) -> Storage {
        self.quota = quota;
        self
    }

    /// The default quota.
    pub fn quota(&self) -> StorageQuota {
        self.quota
    }

    /// The backend.
    pub fn backend(&self) -> &dyn StorageBackend {
        &*self.backend
    }
}

pub(crate) fn check_key(key: &str) -> Result<(), StorageError> {
    if key.is_empty() {
        return Err(StorageError::InvalidKey("storage keys must not be empty".into()));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(StorageError::InvalidKey(format!(
            "storage keys are at most {MAX_KEY_BYTES} bytes, this one is {}",
            key.len()
        )));
    }
    Ok(())
}
