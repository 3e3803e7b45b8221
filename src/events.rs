//! Lifecycle events: what a host (or `isola dev` / `isola serve`) hears about plugins coming,
//! going, reloading and crashing.
//!
//! Each subscriber gets its own bounded queue; a subscriber that stops reading loses events
//! (with a warning in the log) rather than growing memory without
//! bound or slowing plugins down.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// How many events one subscriber may have unread before new ones are dropped for it.
pub const SUBSCRIBER_CAPACITY: usize = 4096;

/// Something that happened to a plugin.
///
/// ```
/// let e = isola::events::LifecycleEvent::Unloaded { plugin: "greeter".into() };
/// assert_eq!(serde_json::to_value(&e).unwrap(), serde_json::json!({"event": "unloaded", "plugin": "greeter"}));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    /// A process-isolated plugin's process died (or was killed for not answering); it is
    /// restarted on its next call.
    Crashed {
        /// Plugin id.
        plugin: String,
        /// What the call in flight got.
        error: Error,
    },
    /// A lifecycle hook (`onLoad`, `onUnload`) failed; the plugin keeps running.
    HookFailed {
        /// Plugin id.
        plugin: String,
        /// What the hook threw.
        error: Error,
    },
    /// A plugin could not come back after a restart (its isolate broke its memory limit and
    /// the fresh one failed to load); it is `failed` now.
    RestartFailed {
        /// Plugin id.
        plugin: String,
        /// Why the fresh isolate failed.
        error: Error,
    },
    /// A plugin's thread has been busy past its call's deadline plus a grace period: it is
    /// stuck where termination cannot reach (a host function that does not return). Callers
    /// got `TIMEOUT`; later calls fail at once with `BUSY` until the thread comes back.
    Unresponsive {
        /// Plugin id.
        plugin: String,
    },
    /// An unresponsive plugin's thread came back; it answers calls again.
    Responsive {
        /// Plugin id.
        plugin: String,
    },
    /// A plugin idle for the engine's `evict_idle_after` gave up its thread and isolate; its
    /// next call brings it back (see
    /// [`EngineBuilder::evict_idle_after`](crate::EngineBuilder::evict_idle_after)).
    Evicted {
        /// Plugin id.
        plugin: String,
    },
}

impl LifecycleEvent {
    /// The event plugins subscribe to for this one (`plugin:loaded`, `plugin:reloaded`,
    /// `plugin:unloaded`, `plugin:errored`), or `None` for those that are no news to other
    /// plugins: an eviction (nothing went wrong, and the plugin answers as before) and a
    /// recovery from `Unresponsive`.
    ///
    /// Why the list is spelled out: an eviction used to fall under `plugin:errored`, so every
    /// eviction woke (and so revived) each evicted subscriber of `plugin:errored`, and such a
    /// subscriber's own eviction woke it again.
    ///
    /// ```
    /// use isola::events::LifecycleEvent;
    /// let e = LifecycleEvent::Evicted { plugin: "idle".into() };
    /// assert_eq!(e.plugin_event(), None);
    /// let e = LifecycleEvent::Unloaded { plugin: "gone".into() };
    /// assert_eq!(e.plugin_event(), Some("plugin:unloaded"));
    /// ```
    pub fn plugin_event(&self) -> Option<&'static str> {
        match self {
            LifecycleEvent::Loaded { .. } => Some("plugin:loaded"),
            LifecycleEvent::Reloaded { .. } => Some("plugin:reloaded"),
            LifecycleEvent::Unloaded { .. } => Some("plugin:unloaded"),
            LifecycleEvent::LoadFailed { .. }
            | LifecycleEvent::ReloadFailed { .. }
            | LifecycleEvent::Restarted { .. }
            | LifecycleEvent::Crashed { .. }
            | LifecycleEvent::HookFailed { .. }
            | LifecycleEvent::RestartFailed { .. }
            | LifecycleEvent::Unresponsive { .. } => Some("plugin:errored"),
            LifecycleEvent::Evicted { .. } | LifecycleEvent::Responsive { .. } => None,
        }
    }

    /// The plugin the event is about.
    pub fn plugin(&self) -> &str {
        match self {
            LifecycleEvent::Loaded { plugin, .. }
            | LifecycleEvent::LoadFailed { plugin, .. }
            | LifecycleEvent::Reloaded { plugin, .. }
            | LifecycleEvent::ReloadFailed { plugin, .. }
            | LifecycleEvent::Unloaded { plugin }
            | LifecycleEvent::Restarted { plugin, .. }
            | LifecycleEvent::Crashed { plugin, .. }
            | LifecycleEvent::HookFailed { plugin, .. }
            | LifecycleEvent::RestartFailed { plugin, .. }
            | LifecycleEvent::Unresponsive { plugin }
            | LifecycleEvent::Responsive { plugin }
            | LifecycleEvent::Evicted { plugin } => plugin,
        }
    }
}

type Forward = Box<dyn Fn(&LifecycleEvent) + Send + Sync>;

/// One subscriber's queue: bounded, woken by a condition variable (blocking readers) and a
/// tokio `Notify` (async readers).
#[derive(Default)]
struct Queue {
    state: Mutex<QueueState>,
    ready: Condvar,
    notify: tokio::sync::Notify,
}

#[derive(Default)]
struct QueueState {
    events: VecDeque<LifecycleEvent>,
    /// The bus is gone: nothing more will arrive.
    closed: bool,
}

impl Queue {
    fn wake(&self) {
        self.ready.notify_all();
        self.notify.notify_waiters();
    }
}

/// A subscription to a [`Manager`](crate::Manager)'s lifecycle events, from
/// [`Manager::events`](crate::Manager::events): every event from the moment of subscribing, in
/// order.
///
/// Read it blocking ([`recv`](Self::recv), [`recv_timeout`](Self::recv_timeout), or as an
/// [`Iterator`]), or from async code with [`next`](Self::next). Each subscription has its own
/// queue of [`SUBSCRIBER_CAPACITY`] events; a subscriber that stops reading loses the newest
/// events (with a warning in the log) instead of growing memory or slowing plugins down. The
/// stream ends when the manager is dropped.
///
/// ```no_run
/// # async fn demo(manager: isola::Manager) {
/// let mut events = manager.events();
/// while let Some(e) = events.next().await {
///     println!("{}: {e:?}", e.plugin());
/// }
/// # }
/// ```
pub struct LifecycleEvents {
    queue: Arc<Queue>,
}

impl std::fmt::Debug for LifecycleEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.queue.state.lock().unwrap();
        f.debug_struct("LifecycleEvents").field("queued", &state.events.len()).field("closed", &state.closed).finish()
    }
}

impl LifecycleEvents {
    /// The next event if one is queued, without waiting.
    pub fn try_recv(&self) -> Option<LifecycleEvent> {
        self.queue.state.lock().unwrap().events.pop_front()
    }

    /// The events queued now, without waiting for more.
    pub fn try_iter(&self) -> impl Iterator<Item = LifecycleEvent> + '_ {
        std::iter::from_fn(|| self.try_recv())
    }

    /// Waits for the next event; `None` once the manager is gone and the queue is empty.
    pub fn recv(&self) -> Option<LifecycleEvent> {
        let mut state = self.queue.state.lock().unwrap();
        loop {
            if let Some(e) = state.events.pop_front() {
                return Some(e);
            }
            if state.closed {
                return None;
            }
            state = self.queue.ready.wait(state).unwrap();
        }
    }

    /// Waits at most `timeout` for the next event.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<LifecycleEvent> {
        let deadline = Instant::now() + timeout;
        let mut state = self.queue.state.lock().unwrap();
        loop {
            if let Some(e) = state.events.pop_front() {
                return Some(e);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if state.closed || left.is_zero() {
                return None;
            }
            state = self.queue.ready.wait_timeout(state, left).unwrap().0;
        }
    }

    /// Waits for the next event without blocking the async runtime; `None` once the manager
    /// is gone and the queue is empty.
    pub async fn next(&mut self) -> Option<LifecycleEvent> {
        loop {
            let notified = self.queue.notify.notified();
            let mut notified = std::pin::pin!(notified);
            // Register before looking, so that an event pushed in between still wakes us.
            notified.as_mut().enable();
            {
                let mut state = self.queue.state.lock().unwrap();
                if let Some(e) = state.events.pop_front() {
                    return Some(e);
                }
                if state.closed {
                    return None;
                }
            }
            notified.await;
        }
    }
}

impl Iterator for LifecycleEvents {
    type Item = LifecycleEvent;
    /// Blocks until the next event (see [`LifecycleEvents::recv`]).
    fn next(&mut self) -> Option<LifecycleEvent> {
        self.recv()
    }
}

/// Fans events out to every subscriber (and to plugins subscribed to `plugin:*` events).
#[derive(Default)]
pub(crate) struct EventBus {
    subscribers: Mutex<Vec<Arc<Queue>>>,
    /// Closed by the manager's shutdown: later subscriptions start (and stay) ended.
    closed: std::sync::atomic::AtomicBool,
    forward: Mutex<Option<Forward>>,
}

impl EventBus {
    pub(crate) fn subscribe(&self) -> LifecycleEvents {
        let queue = Arc::new(Queue::default());
        let mut subscribers = self.subscribers.lock().unwrap();
        if self.closed.load(std::sync::atomic::Ordering::Acquire) {
            queue.state.lock().unwrap().closed = true;
        } else {
            subscribers.push(queue.clone());
        }
        LifecycleEvents { queue }
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
        // A queue only the bus still holds has no reader left.
        self.subscribers.lock().unwrap().retain(|q| {
            if Arc::strong_count(q) == 1 {
                return false;
            }
            let mut state = q.state.lock().unwrap();
            if state.events.len() >= SUBSCRIBER_CAPACITY {
                tracing::warn!("a lifecycle event subscriber is not reading; event dropped");
            } else {
                state.events.push_back(event.clone());
                drop(state);
                q.wake();
            }
            true
        });
    }
}

impl EventBus {
    /// Ends every subscription: readers get what is queued, then the end of the stream.
    pub(crate) fn close(&self) {
        let mut subscribers = self.subscribers.lock().unwrap();
        self.closed.store(true, std::sync::atomic::Ordering::Release);
        for q in subscribers.drain(..) {
            q.state.lock().unwrap().closed = true;
            q.wake();
        }
    }
}

impl Drop for EventBus {
    fn drop(&mut self) {
        self.close();
    }
}
