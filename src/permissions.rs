//! Permissions: which gated host functions and values a plugin may use.
//!
//! A plugin asks in its manifest (`"permissions": ["users", "storage"]`); the host declares
//! which items are gated ([`HostApi::requires`](crate::HostApi::requires)); an admin
//! [`Policy`] may grant more or refuse some, per plugin or for all (`"*"`), and wins over the
//! manifest.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

/// The permission that gives a plugin `host.storage`.
pub const STORAGE: &str = "storage";
/// The permission that gives a plugin `host.events.emit`.
pub const EVENTS: &str = "events";
/// Prefix of the permissions that let a plugin call another: `call:OTHER` (or `call:*`).
pub const CALL_PREFIX: &str = "call:";

/// Whether `granted` lets a plugin call plugin `target`.
pub(crate) fn may_call(granted: &[String], target: &str) -> bool {
    granted.iter().any(|p| p.strip_prefix(CALL_PREFIX).is_some_and(|t| t == "*" || t == target))
}

/// Permissions isola itself understands, whatever the host API declares.
pub(crate) fn is_builtin(permission: &str) -> bool {
    permission == STORAGE || permission == EVENTS || permission.starts_with(CALL_PREFIX)
}

/// Grants and refusals that win over what manifests ask for.
///
/// ```
/// use isola::permissions::Policy;
/// let policy = Policy::default().deny("*", "storage").grant("trusted", "storage");
/// let requested = vec!["storage".to_string(), "users".to_string()];
/// assert_eq!(policy.effective("random", &requested), vec!["users".to_string()]);
/// assert_eq!(policy.effective("trusted", &requested), vec!["storage".to_string(), "users".to_string()]);
/// ```
#[derive(Debug, Clone, Default)]
pub struct Policy {
    grants: BTreeMap<String, BTreeSet<String>>,
    denials: BTreeMap<String, BTreeSet<String>>,
}

impl Policy {
    /// Grants `permission` to `plugin` (`"*"`: every plugin) whether it asks or not.
    pub fn grant(mut self, plugin: &str, permission: &str) -> Self {
        self.grants.entry(plugin.to_owned()).or_default().insert(permission.to_owned());
        self
    }

    /// Refuses `permission` to `plugin` (`"*"`: every plugin) even if it asks. A grant to a
    /// specific plugin wins over a refusal for `"*"`; otherwise refusals win.
    pub fn deny(mut self, plugin: &str, permission: &str) -> Self {
        self.denials.entry(plugin.to_owned()).or_default().insert(permission.to_owned());
        self
    }

    /// What `plugin` holds, given what it `requested`, sorted.
    pub fn effective(&self, plugin: &str, requested: &[String]) -> Vec<String> {
        let get = |m: &BTreeMap<String, BTreeSet<String>>, k: &str| m.get(k).cloned().unwrap_or_default();
        let (granted_here, granted_all) = (get(&self.grants, plugin), get(&self.grants, "*"));
        let (denied_here, denied_all) = (get(&self.denials, plugin), get(&self.denials, "*"));
        let mut out: BTreeSet<String> = requested.iter().cloned().collect();
        out.extend(granted_all);
        out.retain(|p| !denied_all.contains(p));
        out.extend(granted_here);
        out.retain(|p| !denied_here.contains(p));
        out.into_iter().collect()
    }
}

/// What a plugin asked for and what it holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Permissions {
    /// From the manifest.
    pub requested: Vec<String>,
    /// After the host's policy.
    pub granted: Vec<String>,
}
