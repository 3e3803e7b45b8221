//! Durable storage backend on [redb](https://docs.rs/redb): an embedded, pure-Rust, ACID
//! key-value store. Chosen over SQLite because it needs no C toolchain, and every commit is
//! fsync'd by default, so a write that returned survives a SIGKILL.

use std::path::PathBuf;
use std::sync::OnceLock;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{StorageBackend, StorageError, StorageQuota, Usage};

/// (plugin, key) -> JSON text.
const DATA: TableDefinition<(&str, &str), &str> = TableDefinition::new("data");
/// plugin -> (keys, bytes), kept in step with DATA inside each write transaction.
const USAGE: TableDefinition<&str, (u64, u64)> = TableDefinition::new("usage");

/// Plugin data in one redb file. The file is created (with its directory) on first use, so a
/// host whose plugins never touch storage never creates it.
pub struct RedbStorage {
    path: PathBuf,
    db: OnceLock<Result<Database, String>>,
}

fn backend(e: impl std::fmt::Display) -> StorageError {
    StorageError::Backend(e.to_string())
}

impl RedbStorage {
    /// Storage in the database file at `path`.
    pub fn new(path: impl Into<PathBuf>) -> RedbStorage {
        RedbStorage { path: path.into(), db: OnceLock::new() }
    }

    fn db(&self) -> Result<&Database, StorageError> {
        self.db
            .get_or_init(|| {
                if let Some(dir) = self.path.parent() {
                    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
                }
                Database::create(&self.path).map_err(|e| format!("cannot open {}: {e}", self.path.display()))
            })
            .as_ref()
            .map_err(|e| StorageError::Backend(e.clone()))
    }
}

impl StorageBackend for RedbStorage {
    fn get(&self, plugin: &str, key: &str) -> Result<Option<String>, StorageError> {
        let tx = self.db()?.begin_read().map_err(backend)?;
        let table = match tx.open_table(DATA) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(backend(e)),
        };
        Ok(table.get((plugin, key)).map_err(backend)?.map(|v| v.value().to_owned()))
    }

    fn set(&self, plugin: &str, key: &str, value: &str, quota: &StorageQuota) -> Result<(), StorageError> {
        let tx = self.db()?.begin_write().map_err(backend)?;
        {
            let mut data = tx.open_table(DATA).map_err(backend)?;
            let mut usage = tx.open_table(USAGE).map_err(backend)?;
            let before = usage.get(plugin).map_err(backend)?.map(|u| u.value()).unwrap_or((0, 0));
            let replaced = data.get((plugin, key)).map_err(backend)?.map(|v| v.value().len());
            // On a quota error the transaction is dropped: nothing is written.
            let after = quota.check(Usage { keys: before.0, bytes: before.1 }, key, value, replaced)?;
            data.insert((plugin, key), value).map_err(backend)?;
            usage.insert(plugin, (after.keys, after.bytes)).map_err(backend)?;
        }
        tx.commit().map_err(backend)
    }

    fn delete(&self, plugin: &str, key: &str) -> Result<bool, StorageError> {
        let tx = self.db()?.begin_write().map_err(backend)?;
        let existed = {
            let mut data = tx.open_table(DATA).map_err(backend)?;
            let mut usage = tx.open_table(USAGE).map_err(backend)?;
            let removed = data.remove((plugin, key)).map_err(backend)?.map(|v| v.value().len());
            if let Some(len) = removed {
                let (keys, bytes) = usage.get(plugin).map_err(backend)?.map(|u| u.value()).unwrap_or((1, 0));
                let entry = (key.len() + len) as u64;
                usage.insert(plugin, (keys.saturating_sub(1), bytes.saturating_sub(entry))).map_err(backend)?;
            }
            removed.is_some()
        };
        tx.commit().map_err(backend)?;
        Ok(existed)
    }

    fn list(&self, plugin: &str, prefix: &str) -> Result<Vec<String>, StorageError> {
        let tx = self.db()?.begin_read().map_err(backend)?;
        let table = match tx.open_table(DATA) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(backend(e)),
        };
        let mut keys = Vec::new();
        for item in table.range((plugin, prefix)..).map_err(backend)? {
            let (k, _) = item.map_err(backend)?;
            let (p, key) = k.value();
            if p != plugin || !key.starts_with(prefix) {
                break;
            }
            keys.push(key.to_owned());
        }
        Ok(keys)
    }

    fn usage(&self, plugin: &str) -> Result<Usage, StorageError> {
        let tx = self.db()?.begin_read().map_err(backend)?;
        let table = match tx.open_table(USAGE) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Usage::default()),
            Err(e) => return Err(backend(e)),
        };
        let (keys, bytes) = table.get(plugin).map_err(backend)?.map(|u| u.value()).unwrap_or((0, 0));
        Ok(Usage { keys, bytes })
    }

    fn remove_plugin(&self, plugin: &str) -> Result<(), StorageError> {
        let tx = self.db()?.begin_write().map_err(backend)?;
        {
            let mut data = tx.open_table(DATA).map_err(backend)?;
            let keys = {
                let mut keys = Vec::new();
                for item in data.range((plugin, "")..).map_err(backend)? {
                    let (k, _) = item.map_err(backend)?;
                    let (p, key) = k.value();
                    if p != plugin {
                        break;
                    }
                    keys.push(key.to_owned());
                }
                keys
            };
            for k in &keys {
                data.remove((plugin, k.as_str())).map_err(backend)?;
            }
            tx.open_table(USAGE).map_err(backend)?.remove(plugin).map_err(backend)?;
        }
        tx.commit().map_err(backend)
    }
}
