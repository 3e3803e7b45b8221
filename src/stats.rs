//! Per-plugin counters: what a host (or `isola list`) reads to see how a plugin behaves.
//!
//! The worker thread updates plain atomics after each call; readers take a [`PluginStats`]
//! snapshot at any time from any thread without stopping the plugin.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::ErrorCode;

/// A snapshot of one plugin's counters.
///
/// ```no_run
/// # fn demo(handle: isola::PluginHandle) {
/// let s = handle.stats();
/// println!("{} calls, {} timeouts, {:?} CPU", s.calls, s.errors_of(isola::ErrorCode::Timeout), s.cpu_time);
/// # }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PluginStats {
    /// Hook calls answered (successfully or not) by the plugin's thread.
    pub calls: u64,
    /// Failed calls by error code (only codes that occurred).
    pub errors: BTreeMap<ErrorCode, u64>,
    /// Times the isolate was replaced after breaking its memory limit.
    pub restarts: u64,
    /// V8 heap in use, bytes (refreshed every few dozen calls and at load).
    pub heap_used: u64,
    /// Bytes held by ArrayBuffer backing stores, WebAssembly memories included (a wasm
    /// memory is the backing store of its `memory.buffer`).
    pub array_buffer_bytes: u64,
    /// The memory budget (heap + ArrayBuffers + wasm memories), bytes.
    pub heap_limit: u64,
    /// CPU time the plugin's thread has used (thread CPU clock), including loading.
    #[serde(with = "duration_micros")]
    pub cpu_time: Duration,
    /// Wall time spent inside hook calls.
    #[serde(with = "duration_micros")]
    pub wall_time: Duration,
    /// Turns of background work run between calls (timer callbacks, promise continuations).
    #[serde(default)]
    pub background_runs: u64,
    /// Of those, turns stopped for running past the call time limit.
    #[serde(default)]
    pub background_timeouts: u64,
    /// Times the plugin was evicted while idle (and brought back by its next call).
    #[serde(default)]
    pub evictions: u64,
}

impl PluginStats {
    /// How many calls failed with `code`.
    pub fn errors_of(&self, code: ErrorCode) -> u64 {
        self.errors.get(&code).copied().unwrap_or(0)
    }
}

mod duration_micros {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_micros() as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_micros(u64::deserialize(d)?))
    }
}

/// The live counters behind [`PluginStats`].
#[derive(Default)]
pub(crate) struct StatsCell {
    calls: AtomicU64,
    errors: [AtomicU64; ErrorCode::ALL.len()],
    restarts: AtomicU64,
    heap_used: AtomicU64,
    array_buffer_bytes: AtomicU64,
    heap_limit: AtomicU64,
    cpu: Mutex<CpuClocks>,
    wall_nanos: AtomicU64,
    background_runs: AtomicU64,
    background_timeouts: AtomicU64,
    evictions: AtomicU64,
    /// For a plugin in a child process: what its processes counted (see [`Remote`]).
    remote: Mutex<Remote>,
}

/// A process-isolated plugin's counters live in its child; the parent keeps the latest
/// snapshot of the running child and the sum of the children that ended.
#[derive(Default)]
struct Remote {
    ended: PluginStats,
    /// The running children's latest counters, by the version (generation) each runs: during
    /// a reload the old version's child still answers its queued calls.
    live: std::collections::BTreeMap<u64, PluginStats>,
}

/// `a + b`, counter by counter; memory figures are `b`'s (the newer).
fn add(a: &PluginStats, b: &PluginStats) -> PluginStats {
    let mut errors = a.errors.clone();
    for (code, n) in &b.errors {
        *errors.entry(*code).or_default() += n;
    }
    PluginStats {
        calls: a.calls + b.calls,
        errors,
        restarts: a.restarts + b.restarts,
        heap_used: b.heap_used,
        array_buffer_bytes: b.array_buffer_bytes,
        heap_limit: b.heap_limit,
        cpu_time: a.cpu_time + b.cpu_time,
        wall_time: a.wall_time + b.wall_time,
        background_runs: a.background_runs + b.background_runs,
        background_timeouts: a.background_timeouts + b.background_timeouts,
        evictions: a.evictions + b.evictions,
    }
}

/// CPU time is read on demand from the running threads' CPU clocks, so calls pay nothing for
/// it. A thread registers its clock when it starts and, before it exits, folds its total into
/// `finished` and deregisters (under the lock, so no reader uses a dead thread's clock).
#[derive(Default)]
struct CpuClocks {
    finished: Duration,
    running: Vec<libc::clockid_t>,
}

impl StatsCell {
    pub(crate) fn record_call(&self, error: Option<ErrorCode>, wall: Duration) {
        self.calls.fetch_add(1, Relaxed);
        if let Some(code) = error {
            self.record_error(code);
        }
        self.wall_nanos.fetch_add(wall.as_nanos() as u64, Relaxed);
    }

    /// Counts one turn of background work, and whether it was stopped at the time limit.
    pub(crate) fn record_background(&self, timed_out: bool) {
        self.background_runs.fetch_add(1, Relaxed);
        if timed_out {
            self.background_timeouts.fetch_add(1, Relaxed);
        }
    }

    /// Counts an error that did not reach the plugin's thread (BUSY, SHUT_DOWN, ...).
    pub(crate) fn record_error(&self, code: ErrorCode) {
        self.errors[code.index()].fetch_add(1, Relaxed);
    }

    /// The latest counters of the child running version `generation`.
    pub(crate) fn set_remote(&self, generation: u64, stats: PluginStats) {
        self.remote.lock().unwrap().live.insert(generation, stats);
    }

    /// The child running version `generation` ended: keep its counters.
    pub(crate) fn fold_remote(&self, generation: u64) {
        let mut r = self.remote.lock().unwrap();
        if let Some(live) = r.live.remove(&generation) {
            r.ended = add(&r.ended, &PluginStats { heap_used: 0, array_buffer_bytes: 0, heap_limit: 0, ..live });
        }
    }

    pub(crate) fn record_restart(&self) {
        self.restarts.fetch_add(1, Relaxed);
    }

    pub(crate) fn record_eviction(&self) {
        self.evictions.fetch_add(1, Relaxed);
    }

    pub(crate) fn set_memory(&self, heap_used: usize, array_buffers: usize, limit: usize) {
        self.heap_used.store(heap_used as u64, Relaxed);
        self.array_buffer_bytes.store(array_buffers as u64, Relaxed);
        self.heap_limit.store(limit as u64, Relaxed);
    }

    /// Starts counting the calling thread's CPU time towards this plugin.
    pub(crate) fn register_thread(&self) {
        let mut clock: libc::clockid_t = 0;
        // SAFETY: pthread_self is always valid for the calling thread.
        if unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut clock) } == 0 {
            self.cpu.lock().unwrap().running.push(clock);
        }
    }

    /// Stops counting the calling thread, keeping what it used. Call before the thread exits.
    pub(crate) fn unregister_thread(&self) {
        let mut clock: libc::clockid_t = 0;
        // SAFETY: as above.
        if unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut clock) } == 0 {
            let mut cpu = self.cpu.lock().unwrap();
            if let Some(i) = cpu.running.iter().position(|c| *c == clock) {
                cpu.running.swap_remove(i);
                cpu.finished += clock_time(clock);
            }
        }
    }

    fn cpu_time(&self) -> Duration {
        let cpu = self.cpu.lock().unwrap();
        cpu.finished + cpu.running.iter().map(|c| clock_time(*c)).sum::<Duration>()
    }

    pub(crate) fn snapshot(&self) -> PluginStats {
        let errors = ErrorCode::ALL
            .iter()
            .zip(&self.errors)
            .filter_map(|(c, n)| Some((*c, n.load(Relaxed))).filter(|(_, n)| *n > 0))
            .collect();
        let local = PluginStats {
            calls: self.calls.load(Relaxed),
            errors,
            restarts: self.restarts.load(Relaxed),
            heap_used: self.heap_used.load(Relaxed),
            array_buffer_bytes: self.array_buffer_bytes.load(Relaxed),
            heap_limit: self.heap_limit.load(Relaxed),
            cpu_time: self.cpu_time(),
            wall_time: Duration::from_nanos(self.wall_nanos.load(Relaxed)),
            background_runs: self.background_runs.load(Relaxed),
            background_timeouts: self.background_timeouts.load(Relaxed),
            evictions: self.evictions.load(Relaxed),
        };
        let remote = self.remote.lock().unwrap();
        if remote.live.is_empty() && remote.ended == PluginStats::default() {
            return local;
        }
        // Memory figures: the newest version's child.
        let newest = remote.live.values().next_back().cloned().unwrap_or_default();
        let mut all = add(&local, &remote.ended);
        for s in remote.live.values() {
            all = add(&all, s);
        }
        (all.heap_used, all.array_buffer_bytes, all.heap_limit) =
            (newest.heap_used, newest.array_buffer_bytes, newest.heap_limit);
        if newest.heap_limit == 0 {
            // Between children: the last memory figures known.
            (all.heap_used, all.array_buffer_bytes, all.heap_limit) =
                (local.heap_used, local.array_buffer_bytes, local.heap_limit);
        }
        all
    }
}

/// The time on a CPU clock (0 if it cannot be read).
fn clock_time(clock: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid pointer; the clock belongs to a live thread (see `CpuClocks`).
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// What a manager's warm pool has done (see
/// [`EngineBuilder::warm_pool`](crate::EngineBuilder::warm_pool) and
/// [`Manager::pool_stats`](crate::Manager::pool_stats)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Threads waiting with a ready isolate now.
    pub ready: usize,
    /// Threads made ready since the pool started.
    pub made: u64,
    /// Threads given a plugin.
    pub taken: u64,
    /// Mean CPU time one pool thread took to get ready, in microseconds.
    pub cpu_us_per_isolate: u64,
}
