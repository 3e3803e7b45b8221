//! Lifecycle events: what a host (or `isola dev` / `isola serve`) hears about plugins coming,
//! going, reloading and crashing.
//!
//! Each subscriber gets its own bounded queue; a subscriber that stops reading loses events
//! (they are counted in [`EventBus`]'s log as a warning) rather than growing memory without
//! bound or slowing plugins down.

use std::sync::Mutex;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use serde::Serialize;

use crate::error::Error;

/// How many events one subscriber may have unread before new ones are dropped for it.
const SUBSCRIBER_CAPACITY: usize = 4096;

/// Something that happened to a plugin.
///
/// ```
/// let e = isola::LifecycleEvent::Unloaded { plugin: "greeter".into() };
/// assert_eq!(serde_json::to_value(&e).unwrap(), serde_json::json!({"event": "unloaded", "plugin": "greeter"}));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "camelCase")]
#[non_exhaustive]
pub enum LifecycleEvent {
    /// A plugin loaded for the first time (or was added to a watched directory).
    #[serde(rename_all = "camelCase")]
    Loaded {
        /// Plugin id.
        plugin: String,
        /// Its version.
        version: String,
        /// How long loading took, in milliseconds.
        took_ms: f64,
    },
    /// A plugin failed to load (it is kept in the list as failed).
    LoadFailed {
        /// Plugin id.
        plugin: String,
        /// Why, with file and line where known.
        error: Error,
    },
    /// A new version replaced the running one.
    #[serde(rename_all = "camelCase")]
    Reloaded {
        /// Plugin id.
        plugin: String,
        /// The new version.
        version: String,
        /// From starting the reload to the new version serving, in milliseconds.
        took_ms: f64,
    },
    /// A new version failed to load; the previous one (if any) keeps serving.
    ReloadFailed {
        /// Plugin id.
        plugin: String,
        /// Why, with file and line where known.
        error: Error,
    },
    /// A plugin was unloaded (or its files removed from a watched directory).
    Unloaded {
        /// Plugin id.
        plugin: String,
    },
    /// A plugin broke its memory limit; its isolate was replaced by a fresh one.
    Restarted {
        /// Plugin id.
        plugin: String,
        /// The error the failing call got.
        error: Error,
    },
    /// A lifecycle hook (`onLoad`, `onUnload`) failed; the plugin keeps running.
    HookFailed {
        /// Plugin id.
        plugin: String,
        /// What the hook threw.
        error: Error,
    },
}

impl LifecycleEvent {
    /// The plugin the event is about.
    pub fn plugin(&self) -> &str {
        match self {
            LifecycleEvent::Loaded { plugin, .. }
            | LifecycleEvent::LoadFailed { plugin, .. }
            | LifecycleEvent::Reloaded { plugin, .. }
            | LifecycleEvent::ReloadFailed { plugin, .. }
            | LifecycleEvent::Unloaded { plugin }
            | LifecycleEvent::Restarted { plugin, .. }
            | LifecycleEvent::HookFailed { plugin, .. } => plugin,
        }
    }
}

type Forward = Box<dyn Fn(&LifecycleEvent) + Send + Sync>;

/// Fans events out to every subscriber (and to plugins subscribed to `plugin:*` events).
#[derive(Default)]
pub(crate) struct EventBus {
    subscribers: Mutex<Vec<Sender<LifecycleEvent>>>,
    forward: Mutex<Option<Forward>>,
}

impl EventBus {
    pub(crate) fn subscribe(&self) -> Receiver<LifecycleEvent> {
        let (tx, rx) = crossbeam_channel::bounded(SUBSCRIBER_CAPACITY);
        self.subscribers.lock().unwrap().push(tx);
        rx
    }

    /// Also hands every event to `f` (the manager uses it to notify plugins).
    pub(crate) fn set_forward(&self, f: impl Fn(&LifecycleEvent) + Send + Sync + 'static) {
        *self.forward.lock().unwrap() = Some(Box::new(f));
    }

    pub(crate) fn emit(&self, event: LifecycleEvent) {
        tracing::debug!(plugin = event.plugin(), "{event:?}");
        if let Some(f) = self.forward.lock().unwrap().as_ref() {
            f(&event);
        }
        self.subscribers.lock().unwrap().retain(|tx| match tx.try_send(event.clone()) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                tracing::warn!("a lifecycle event subscriber is not reading; event dropped");
                true
            }
            Err(TrySendError::Disconnected(_)) => false,
        });
    }
}
