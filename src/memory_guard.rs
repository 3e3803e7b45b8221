//! The engine's memory guard: one limit on the memory of all its plugins together.
//!
//! Why: each plugin's budget bounds that plugin, but a host with 500 plugins of 64 MiB each
//! has promised 32 GiB it may not have. When the machine runs out, the operating system's OOM
//! killer ends the whole host, every plugin with it. The guard keeps the sum of what the
//! budgets count (V8 heap plus ArrayBuffers) under a limit the host chooses, by stopping the
//! *largest* consumer with `HEAP_LIMIT` (it is restarted fresh, as after breaking its own
//! budget) as soon as the sum goes over.
//!
//! How it stays cheap: budgets report growth as atomic adds to one total, so the common case
//! (under the limit) is one atomic add and a compare. Only when the total is over the limit
//! does a reporter take the lock, walk the consumers and pick the largest one that is not
//! already being stopped. A consumer being stopped still holds its memory until its isolate
//! is dropped, so it is left out of both the choice and the sum, which keeps one breach from
//! stopping plugin after plugin.
//!
//! The guard sits below the V8 layer: it knows consumers only through the [`Consumer`] trait
//! (the runtime's memory budget implements it), so the engine can hold it without knowing V8.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// Something whose memory the guard counts and may stop: one plugin isolate's budget.
pub(crate) trait Consumer: Send + Sync {
    /// Bytes it holds now, as its own budget counts them.
    fn usage(&self) -> usize;
    /// Whether it is already being stopped (its memory goes when it is discarded).
    fn stopping(&self) -> bool;
    /// Stops it because the guard's `limit` was reached while it held `usage` bytes, the
    /// most of any consumer.
    fn stop_for_total(&self, limit: usize, usage: usize);
}

/// The limit on all plugins' memory together, and the running sum.
pub(crate) struct MemoryGuard {
    limit: Option<usize>,
    /// Sum of what every live consumer reported (see [`MemoryGuard::grow`]).
    total: AtomicUsize,
    consumers: Mutex<Consumers>,
    /// How many consumers the guard stopped.
    stops: AtomicUsize,
}

struct Consumers {
    list: Vec<Weak<dyn Consumer>>,
    /// Length at which dead entries are next swept out.
    sweep_at: usize,
}

impl std::fmt::Debug for MemoryGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryGuard").field("limit", &self.limit).field("total", &self.total()).finish()
    }
}

impl MemoryGuard {
    /// A guard with this limit in bytes (`None`: count, never stop).
    pub(crate) fn new(limit: Option<usize>) -> Arc<Self> {
        Arc::new(MemoryGuard {
            limit,
            total: AtomicUsize::new(0),
            consumers: Mutex::new(Consumers { list: Vec::new(), sweep_at: 64 }),
            stops: AtomicUsize::new(0),
        })
    }

    pub(crate) fn limit(&self) -> Option<usize> {
        self.limit
    }

    /// Bytes all live consumers hold together, as last reported.
    pub(crate) fn total(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// How many consumers were stopped to keep the total under the limit.
    pub(crate) fn stops(&self) -> usize {
        self.stops.load(Ordering::Relaxed)
    }

    /// Starts counting a consumer. It reports its usage with [`grow`](Self::grow) and
    /// [`shrink`](Self::shrink), and gives back all it reported when it goes.
    pub(crate) fn register(&self, consumer: Weak<dyn Consumer>) {
        let mut c = self.consumers.lock().unwrap();
        if c.list.len() >= c.sweep_at {
            c.list.retain(|w| w.strong_count() > 0);
            c.sweep_at = (c.list.len() * 2).max(64);
        }
        c.list.push(consumer);
    }

    /// A consumer now holds `bytes` more; returns whether the total is over the limit (then
    /// call [`enforce`](Self::enforce)).
    pub(crate) fn grow(&self, bytes: usize) -> bool {
        let total = self.total.fetch_add(bytes, Ordering::Relaxed).saturating_add(bytes);
        self.limit.is_some_and(|limit| total > limit)
    }

    /// A consumer now holds `bytes` fewer.
    pub(crate) fn shrink(&self, bytes: usize) {
        self.total.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// If the consumers not already being stopped hold more than the limit together, stops
    /// the largest of them. Returns whether that was `me` (the caller's own consumer, by
    /// address), so that an allocation which broke the limit can be refused. When another
    /// thread is already deciding, returns at once: its decision covers this breach.
    pub(crate) fn enforce(&self, me: *const ()) -> bool {
        let Some(limit) = self.limit else { return false };
        let Ok(consumers) = self.consumers.try_lock() else { return false };
        let mut live = 0usize;
        let mut largest: Option<(usize, Arc<dyn Consumer>)> = None;
        for c in consumers.list.iter().filter_map(Weak::upgrade) {
            if c.stopping() {
                continue;
            }
            let usage = c.usage();
            live = live.saturating_add(usage);
            if largest.as_ref().is_none_or(|(most, _)| usage > *most) {
                largest = Some((usage, c));
            }
        }
        drop(consumers);
        match largest {
            Some((usage, victim)) if live > limit => {
                self.stops.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    "the plugins' memory together ({} MiB) passed the engine's total limit ({} MiB); stopping the largest ({} MiB)",
                    live >> 20,
                    limit >> 20,
                    usage >> 20
                );
                victim.stop_for_total(limit, usage);
                Arc::as_ptr(&victim) as *const () == me
            }
            _ => false,
        }
    }
}
