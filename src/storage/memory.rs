//! In-memory storage backend.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::{StorageBackend, StorageError, StorageQuota, Usage};

/// Keeps plugin data in a map in memory; for tests and hosts that want nothing on disk.
#[derive(Default)]
pub struct MemoryStorage {
    /// (plugin, key) -> JSON text.
    data: Mutex<BTreeMap<(String, String), String>>,
}

impl MemoryStorage {
    fn usage_of(data: &BTreeMap<(String, String), String>, plugin: &str) -> Usage {
        let mut u = Usage::default();
        for ((_, k), v) in data.range((plugin.to_owned(), String::new())..).take_while(|((p, _), _)| p == plugin) {
            u.keys += 1;
            u.bytes += (k.len() + v.len()) as u64;
        }
        u
    }
}

impl StorageBackend for MemoryStorage {
    fn get(&self, plugin: &str, key: &str) -> Result<Option<String>, StorageError> {
        Ok(self.data.lock().unwrap().get(&(plugin.to_owned(), key.to_owned())).cloned())
    }

    fn set(&self, plugin: &str, key: &str, value: &str, quota: &StorageQuota) -> Result<(), StorageError> {
        let mut data = self.data.lock().unwrap();
        let k = (plugin.to_owned(), key.to_owned());
        quota.check(Self::usage_of(&data, plugin), key, value, data.get(&k).map(String::len))?;
        data.insert(k, value.to_owned());
        Ok(())
    }

    fn delete(&self, plugin: &str, key: &str) -> Result<bool, StorageError> {
        Ok(self.data.lock().unwrap().remove(&(plugin.to_owned(), key.to_owned())).is_some())
    }

    fn list(&self, plugin: &str, prefix: &str) -> Result<Vec<String>, StorageError> {
        let data = self.data.lock().unwrap();
        Ok(data
            .range((plugin.to_owned(), prefix.to_owned())..)
            .take_while(|((p, k), _)| p == plugin && k.starts_with(prefix))
            .map(|((_, k), _)| k.clone())
            .collect())
    }

    fn usage(&self, plugin: &str) -> Result<Usage, StorageError> {
        Ok(Self::usage_of(&self.data.lock().unwrap(), plugin))
    }

    fn remove_plugin(&self, plugin: &str) -> Result<(), StorageError> {
        self.data.lock().unwrap().retain(|(p, _), _| p != plugin);
        Ok(())
    }
}
