//! One plugin version's resolved configuration: everything isola decided about it, worked out
//! once from the [`Engine`] and the plugin's manifest.
//!
//! Why one place: the limits a plugin runs under, the permissions it holds, its storage quota
//! and the warnings about its manifest all depend on the same two inputs. Computing them once
//! per version and handing the result down (to the plugin's thread, to every restart of its
//! isolate, to the plugin table and `list`) means they cannot disagree, and a restart cannot
//! pick up a policy or quota the version was not loaded with.

use std::time::Duration;

use crate::engine::{Engine, Isolation, Limits};
use crate::error::{Diagnostic, Severity};
use crate::manifest::{CommandSpec, Manifest, Subscription};
use crate::permissions::{self, Permissions};
use crate::source::PluginSource;
use crate::storage::StorageQuota;

/// Everything isola decided about one plugin version.
#[derive(Debug, Clone)]
pub(crate) struct PluginConfig {
    /// Where its code is and how it is shaped.
    pub source: PluginSource,
    /// The engine's limits, lowered by the manifest.
    pub limits: Limits,
    /// The engine's storage quota, lowered by the manifest.
    pub storage_quota: StorageQuota,
    /// Asked for by the manifest, granted by the policy.
    pub permissions: Permissions,
    /// Manifest warnings, plus one per requested permission nothing declares.
    pub diagnostics: Vec<Diagnostic>,
    /// Events it subscribes to (manifest `events`).
    pub events: Vec<Subscription>,
    /// Commands it offers (manifest `commands`).
    pub commands: Vec<CommandSpec>,
    /// Thread or process: the engine's, or more if the manifest asks.
    pub isolation: Isolation,
    /// A fresh instance for every call (manifest `stateless`).
    pub stateless: bool,
    /// Evicted after this long idle: the engine's [`evict_idle_after`](Engine::evict_idle_after),
    /// unless the manifest says `"evictable": false` or the plugin runs in a process.
    pub evict_after: Option<Duration>,
}

impl PluginConfig {
    /// Resolves `source` against `engine`.
    pub(crate) fn resolve(engine: &Engine, source: PluginSource) -> PluginConfig {
        let manifest = source.manifest();
        let requested = manifest.map(|m| m.permissions.clone()).unwrap_or_default();
        let granted = engine.policy().effective(&source.id, &requested);
        let base_quota = engine.storage().quota();
        let isolation = engine.isolation().max(manifest.and_then(|m| m.isolation).unwrap_or_default());
        let evictable = isolation == Isolation::Thread && manifest.is_none_or(|m| m.evictable);
        PluginConfig {
            limits: lowered(*engine.limits(), manifest),
            storage_quota: manifest.map_or(base_quota, |m| base_quota.for_plugin(&m.limits)),
            diagnostics: diagnostics(engine, &source, &requested),
            permissions: Permissions { requested, granted },
            events: manifest.map(|m| m.events.clone()).unwrap_or_default(),
            commands: manifest.map(|m| m.commands.clone()).unwrap_or_default(),
            isolation,
            stateless: manifest.is_some_and(|m| m.stateless),
            evict_after: engine.evict_idle_after().filter(|_| evictable),
            source,
        }
    }

    /// The plugin id.
    pub(crate) fn id(&self) -> &str {
        &self.source.id
    }
}

/// `limits` lowered by what the manifest asks for (a manifest never raises a limit).
fn lowered(mut l: Limits, manifest: Option<&Manifest>) -> Limits {
    if let Some(m) = manifest {
        if let Some(mb) = m.limits.heap_mb {
            l.heap_limit = l.heap_limit.min((mb as usize).saturating_mul(1 << 20));
        }
        if let Some(ms) = m.limits.call_timeout_ms {
            l.call_timeout = l.call_timeout.min(Duration::from_millis(ms));
        }
    }
    l
}

/// The source's manifest warnings, plus one per requested permission nothing declares.
fn diagnostics(engine: &Engine, source: &PluginSource, requested: &[String]) -> Vec<Diagnostic> {
    let mut diags = source.diagnostics.clone();
    let declared = engine.host().declared_permissions();
    for (i, p) in requested.iter().enumerate() {
        if !declared.contains(p.as_str()) && !permissions::is_builtin(p) {
            let mut known: Vec<&str> = declared.iter().copied().collect();
            known.extend(["storage", "events", "call:PLUGIN"]);
            diags.push(Diagnostic {
                severity: Severity::Warning,
                path: format!("$.permissions[{i}]"),
                code: "unknown_permission".into(),
                message: format!(
                    "no host function or value declares the permission `{p}` (known: {})",
                    known.join(", ")
                ),
            });
        }
    }
    diags
}
