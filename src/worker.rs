//! The plugin's own OS thread: it owns the isolate and answers the mailbox, one call at a time.
//!
//! Why a thread per plugin: a V8 isolate is single-threaded and a plugin may block for its
//! whole time limit; a thread each keeps one slow plugin from delaying any other, and lets the
//! OS spread plugins over cores. The thread drives a current-thread tokio runtime only while a
//! hook awaits something, so async hooks and async host functions work.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};
use serde_json::Value;

use crate::call::{
    Inbox, Job, MailboxTx, ON_LOAD, ON_UNLOAD, Reply, next_job, next_job_within, refuse_queued, try_next_job,
};
use crate::cancel::Interrupt;
use crate::config::PluginConfig;
use crate::engine::Engine;
use crate::error::{Error, ErrorCode};
use crate::events::LifecycleEvent;
use crate::handle::{PluginStatus, Shared};
use crate::pool::{WarmPool, WarmThread};
use crate::runtime::inspector::InspectorPort;
use crate::runtime::isolate::{Background, BareIsolate, IsolateConfig, MIN_HEAP_BYTES, PluginIsolate, STACK_SIZE};
use crate::runtime::loader::SourceCache;
use crate::runtime::peers::Peers;
use crate::runtime::watchdog::DeadlineSlot;

/// Time limit for `onUnload` when a plugin is unloaded or shut down: enough to flush state to
/// the host, short enough that unloading stays prompt whatever the plugin does.
pub(crate) const ON_UNLOAD_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(100);

/// A plugin thread that is starting: wait for it with [`Starting::wait`].
pub(crate) struct Starting {
    pub tx: MailboxTx,
    pub thread: JoinHandle<()>,
    /// This version's number (see `Shared::next_generation`).
    pub generation: u64,
    ready: Receiver<Result<Vec<String>, Error>>,
}

impl Starting {
    /// A plugin being started by something other than a thread of this module (a child
    /// process's pump): the same mailbox, thread to join, and load outcome.
    pub(crate) fn new(
        tx: MailboxTx,
        thread: JoinHandle<()>,
        generation: u64,
        ready: Receiver<Result<Vec<String>, Error>>,
    ) -> Self {
        Starting { tx, thread, generation, ready }
    }

    /// Blocks until the plugin has evaluated (or failed to); returns its hook names.
    pub(crate) fn wait(&self) -> Result<Vec<String>, Error> {
        self.ready
            .recv()
            .unwrap_or_else(|_| Err(Error::new(ErrorCode::PluginCrashed, "the plugin's thread died while loading")))
    }
}

/// Starts a thread that loads the plugin version `config` describes and then serves its
/// mailbox. Statistics and status go to `shared`; whether loading worked comes back through
/// [`Starting::wait`]. `peers` is how the plugin reaches other plugins.
pub(crate) fn spawn(
    engine: &Engine,
    config: Arc<PluginConfig>,
    shared: Arc<Shared>,
    peers: Arc<dyn Peers>,
    pool: Option<&Arc<WarmPool>>,
) -> Result<Starting, Error> {
    spawn_with(engine, config, shared, peers, Arc::default(), None, pool)
}

/// [`spawn`], loading the plugin from `sources` where they hold a file (and recording there
/// what it reads from disk), and serving `inbox` instead of the mailbox if one is given (the
/// returned [`Starting::tx`] then reaches nobody). A thread from `pool` is used when one is
/// ready for this plugin's budget.
pub(crate) fn spawn_with(
    engine: &Engine,
    config: Arc<PluginConfig>,
    shared: Arc<Shared>,
    peers: Arc<dyn Peers>,
    sources: Arc<SourceCache>,
    inbox: Option<Box<dyn Inbox>>,
    pool: Option<&Arc<WarmPool>>,
) -> Result<Starting, Error> {
    let (tx, rx) = crate::call::mailbox(config.limits.mailbox_capacity);
    let rx: Box<dyn Inbox> = inbox.unwrap_or_else(|| Box::new(rx));
    let (ready_tx, ready) = crossbeam_channel::bounded(1);
    let engine = engine.clone();
    let id = config.id().to_owned();
    let generation = shared.next_generation();
    let heap_limit = config.limits.heap_limit.max(MIN_HEAP_BYTES);
    let worker = Worker { engine, config, shared, peers, sources, generation, pool: pool.map(Arc::downgrade) };
    let warm = pool.and_then(|p| p.take(heap_limit));
    let thread = start_thread(&id, warm, move |warm| worker.run(rx, ready_tx, warm))
        .map_err(|e| Error::new(ErrorCode::LoadFailed, format!("cannot start a thread: {e}")))?;
    Ok(Starting { tx, thread, generation, ready })
}

/// Runs `work` for plugin `id` on `warm` (a pool thread, handing it its runtime and isolate)
/// if there is one, else on a new thread of its own.
fn start_thread(
    id: &str,
    warm: Option<WarmThread>,
    work: impl FnOnce(Option<(tokio::runtime::Runtime, BareIsolate)>) + Send + 'static,
) -> std::io::Result<JoinHandle<()>> {
    let name = format!("isola:{id}");
    match warm {
        Some(warm) => Ok(warm.assign(Box::new(move |rt, bare| {
            name_thread(&name);
            work(Some((rt, bare)));
        }))),
        None => std::thread::Builder::new().name(name).stack_size(STACK_SIZE).spawn(move || work(None)),
    }
}

/// Says that `shared`'s plugin could not be started again (after `HEAP_LIMIT`, or after an
/// eviction): it is failed, and calls are answered with `e` from now on.
fn restart_failed(shared: &Shared, e: Error) {
    let id = &shared.id;
    tracing::error!(plugin = %id, "restart failed: {e}");
    let error = e.in_context(id, None);
    shared.update_info(|info| info.last_error = Some(error.clone()));
    shared.set_status(PluginStatus::Failed);
    shared.emit(LifecycleEvent::RestartFailed { plugin: id.clone(), error });
}

/// Names the calling thread (a pool thread taking a plugin), as `ps` and debuggers show it;
/// Linux keeps the first 15 bytes.
fn name_thread(name: &str) {
    #[cfg(target_os = "linux")]
    {
        let mut bytes: Vec<u8> = name.bytes().filter(|b| *b != 0).take(15).collect();
        bytes.push(0);
        // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
        unsafe { libc::prctl(libc::PR_SET_NAME, bytes.as_ptr()) };
    }
    #[cfg(not(target_os = "linux"))]
    let _ = name;
}

/// What an evicted plugin's thread leaves behind: its mailbox and the state its `onUnload`
/// gave.
struct Evicted {
    rx: Box<dyn Inbox>,
    state: Value,
}

struct Worker {
    engine: Engine,
    config: Arc<PluginConfig>,
    shared: Arc<Shared>,
    peers: Arc<dyn Peers>,
    /// The files this version loaded, reused when the isolate is restarted.
    sources: Arc<SourceCache>,
    /// This version's number (see `Shared::next_generation`).
    generation: u64,
    /// Where a restart after `HEAP_LIMIT` may find a ready isolate. Weak: the pool ends with
    /// its manager, even while a stuck plugin thread lives on.
    pool: Option<std::sync::Weak<WarmPool>>,
}

impl Worker {
    /// Serves the plugin on this thread; `warm` is a pool thread's runtime and isolate.
    fn run(
        self,
        rx: Box<dyn Inbox>,
        ready: Sender<Result<Vec<String>, Error>>,
        warm: Option<(tokio::runtime::Runtime, BareIsolate)>,
    ) {
        self.run_with(rx, Some(ready), warm, None);
    }

    /// Serves the plugin on this thread, loading it with `state` handed to its `onLoad`.
    /// `resume` is set when the plugin comes back after an eviction: it then gets the state
    /// its `onUnload` gave then.
    fn run_with(
        self,
        rx: Box<dyn Inbox>,
        ready: Option<Sender<Result<Vec<String>, Error>>>,
        warm: Option<(tokio::runtime::Runtime, BareIsolate)>,
        resume: Option<Value>,
    ) {
        crate::host::set_current_plugin(self.config.id());
        self.shared.stats.register_thread();
        // Every host-side panic isola knows of is caught where it happens; should isola's own
        // code here still panic, the plugin is reported crashed instead of vanishing silently
        // (its callers get PLUGIN_CRASHED as the mailbox closes).
        let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.serve(rx, ready, warm, resume)));
        if let Ok(Some(Evicted { rx, state })) = served {
            self.shared.stats.unregister_thread();
            self.sleep(rx, state);
            return;
        }
        if let Err(panic) = served {
            let what = crate::host::panic_message(&*panic);
            let error = Error::new(ErrorCode::PluginCrashed, format!("the plugin's thread panicked: {what}"))
                .in_context(self.config.id(), None);
            self.shared.update_info(|info| info.last_error = Some(error.clone()));
            self.shared.set_status(PluginStatus::Failed);
            self.shared.emit(LifecycleEvent::Crashed { plugin: self.config.id().to_owned(), error });
        }
        self.shared.stats.unregister_thread();
    }

    /// Loads the plugin and answers its mailbox until it stops. `ready` hears how loading
    /// went; without it this thread is a restart, taken over from a thread whose isolate broke
    /// its budget (see [`hand_off`](Self::hand_off)).
    ///
    /// Returns the mailbox when the plugin was evicted after being idle for its
    /// `evict_after`: the thread then ends, and [`sleep`](Self::sleep) arranges the way back.
    fn serve(
        &self,
        mut rx: Box<dyn Inbox>,
        ready: Option<Sender<Result<Vec<String>, Error>>>,
        warm: Option<(tokio::runtime::Runtime, BareIsolate)>,
        resume: Option<Value>,
    ) -> Option<Evicted> {
        let id = self.config.id();
        let (rt, bare) = match warm {
            Some((rt, bare)) => (rt, Some(bare)),
            None => match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => (rt, None),
                Err(e) => {
                    let e = Error::new(ErrorCode::LoadFailed, format!("cannot start tokio: {e}"));
                    match ready {
                        Some(ready) => drop(ready.send(Err(e))),
                        None => self.restart_failed(e),
                    }
                    return None;
                }
            },
        };
        // deno_core expects to be created and polled inside a tokio context.
        let _guard = rt.enter();
        let slot = DeadlineSlot::new();
        let interrupt: Arc<dyn Interrupt> = slot.clone();
        self.shared.add_interrupt(Arc::downgrade(&interrupt));
        let shared = Arc::downgrade(&self.shared);
        slot.on_stuck(Box::new(move || {
            if let Some(shared) = shared.upgrade() {
                shared.set_stuck();
            }
        }));
        // Back after an eviction: only for a request that needs the plugin (what woke it may
        // have been a `Stop` or a `Recycle` that came in as it went to sleep), and not once
        // it is closed (checked after the interrupt is registered, so that a `close` from now
        // on interrupts the load).
        let mut first = None;
        if resume.is_some() {
            first = next_job(&mut *rx, || {});
            if first.is_none() || self.shared.is_closed() {
                if let Some(job) = first {
                    job.refuse(Error::new(ErrorCode::ShutDown, "the plugin was stopped"));
                }
                refuse_queued(&mut *rx);
                return None;
            }
        }
        let mut isolate = match (self.load(bare, &slot, &rt), ready) {
            (Ok(i), ready) => {
                if let Some(ready) = ready {
                    let _ = ready.send(Ok(i.hook_names()));
                }
                Some(i)
            }
            (Err(e), Some(ready)) => {
                let _ = ready.send(Err(e));
                return None;
            }
            // A restart that failed: calls are answered with why, as on the same thread.
            (Err(e), None) => {
                self.restart_failed(e);
                None
            }
        };
        // Back after an eviction: `onLoad` gets what `onUnload` gave then, before the call that
        // brought the plugin back, as on a reload.
        // (Taken from the end.)
        let mut first: Vec<Job> = first.into_iter().collect();
        if let Some(state) = resume.filter(|_| isolate.as_ref().is_some_and(|i| i.has_hook(ON_LOAD))) {
            first.push(Job::on_load(state));
        }
        // How long it may idle before it is evicted: never if its mailbox cannot sleep.
        let evict_after = self.config.evict_after.filter(|_| rx.dormancy().is_some());
        // A ready isolate from the pool to restart on, when this one breaks its budget.
        let mut hand_off = None;
        // Set when the plugin was idle for its `evict_after` and gave its state up.
        let mut evicted = None;

        loop {
            // An isolate the engine's memory guard stopped while idle is discarded before it
            // runs anything, whether a `Recycle` request or a call comes first.
            // Background work (timers, what hooks left pending) runs while no request waits.
            let mut job = first.pop().map(Some);
            if job.is_none()
                && let Some(iso) = isolate.as_mut()
                && !self.shared.is_closed()
            {
                let limit = self.config.limits.call_timeout;
                match iso.background(&mut *rx, limit, &slot, &rt, &self.shared.stats) {
                    Background::Idle => {}
                    Background::Request => {
                        // It may have been a stale wake-up: only take what is really there.
                        match try_next_job(&mut *rx, || self.recycle_if_poisoned(&mut isolate, &slot, &rt)) {
                            Some(j) => job = Some(j),
                            None => continue,
                        }
                    }
                    Background::Stopped => {
                        tracing::warn!(plugin = %id, "background work ran longer than {} ms and was stopped", limit.as_millis());
                        continue;
                    }
                    Background::Poisoned => {
                        self.recycle_if_poisoned(&mut isolate, &slot, &rt);
                        continue;
                    }
                }
            }
            let job = match (job, evict_after) {
                (Some(j), _) => j,
                // Only the version the handles point at, once they do (its `onLoad` is queued
                // by then): not one being replaced, nor one that has not opened yet.
                (None, Some(idle)) if isolate.is_some() && self.shared.is_current(self.generation) => {
                    match next_job_within(&mut *rx, idle, || self.recycle_if_poisoned(&mut isolate, &slot, &rt)) {
                        Ok(job) => job,
                        Err(()) => match self.evict(isolate.as_mut(), &slot, &rt) {
                            Some(state) => {
                                evicted = Some(state);
                                break;
                            }
                            None => continue,
                        },
                    }
                }
                (None, _) => next_job(&mut *rx, || self.recycle_if_poisoned(&mut isolate, &slot, &rt)),
            };
            let Some(job) = job else { break };
            if let Some(e) = job.refusal(self.shared.is_closed()) {
                job.refuse(e);
                continue;
            }
            let Job { hook, args, timeout, ctx, reply, abort } = job;
            self.recycle_if_poisoned(&mut isolate, &slot, &rt);
            // No instance: a restart or a fresh instance failed to load (try again: what failed
            // may have been passing), or a replaced stateless version left it to the call that
            // needs one.
            let iso = match isolate {
                Some(ref mut i) => i,
                None => match self.load(None, &slot, &rt) {
                    Ok(i) => isolate.insert(i),
                    Err(e) => {
                        let e = Error::new(
                            ErrorCode::PluginCrashed,
                            format!("the plugin failed to restart: {}", e.message),
                        );
                        self.answer(reply, Err(e));
                        continue;
                    }
                },
            };
            let started = Instant::now();
            let mut timeout = timeout.unwrap_or(self.config.limits.call_timeout);
            if !ctx.chain.is_empty() {
                // A call from another plugin gets what is left of the caller's deadline, but
                // never more than this plugin's own limit.
                timeout = timeout.min(self.config.limits.call_timeout);
            }
            let r = iso.call(&hook, &args, timeout, ctx, abort.as_ref(), &slot, &rt);
            self.shared.set_unstuck();
            // An error isola threw into the plugin was counted when it was thrown.
            let code = r.as_ref().err().filter(|e| !e.issued).map(|e| e.code);
            self.shared.stats.record_call(code, started.elapsed());
            let poisoned = iso.poisoned();
            if !poisoned {
                let (heap, ab, limit) = iso.memory();
                self.shared.stats.set_memory(heap, ab, limit);
            }
            let heap_error = poisoned.then(|| r.as_ref().err().cloned().unwrap_or_else(|| iso.heap_limit_error()));
            self.answer(reply, r);
            if let Some(error) = heap_error {
                let error = error.in_context(id, Some(&hook));
                if let Some(warm) = self.warm_thread() {
                    self.announce_restart(error);
                    drop(isolate.take());
                    hand_off = Some(warm);
                    break;
                }
                self.restart(&mut isolate, error, &slot, &rt);
            } else if self.config.stateless && !self.shared.is_current(self.generation) {
                // A version being replaced makes no instance of itself ahead of time: a call
                // still queued for it makes one when it comes (above).
                drop(isolate.take());
            } else if self.config.stateless && !self.shared.is_closed() {
                // The next call gets a fresh instance, made now rather than when it comes:
                // on a ready pool thread if there is one (which starts on it before this
                // thread disposes of the old one), else here.
                if let Some(warm) = self.warm_thread() {
                    hand_off = Some(warm);
                    break;
                }
                drop(isolate.take());
                match self.load(None, &slot, &rt) {
                    Ok(i) => isolate = Some(i),
                    Err(e) => self.restart_failed(e),
                }
            }
        }
        if let Some(warm) = hand_off {
            self.hand_off(warm, rx);
            drop(isolate);
            return None;
        }
        if let Some(state) = evicted {
            drop(isolate);
            return Some(Evicted { rx, state });
        }
        if self.shared.is_closed() {
            // Unloaded or shut down: `onUnload` may flush state, briefly.
            if let Some(iso) = isolate.as_mut().filter(|i| i.has_hook(ON_UNLOAD)) {
                let r = iso.call(ON_UNLOAD, &Value::Null, ON_UNLOAD_TIMEOUT, Default::default(), None, &slot, &rt);
                if let Err(error) = r {
                    let error = error.in_context(id, Some(ON_UNLOAD));
                    self.shared.emit(LifecycleEvent::HookFailed { plugin: id.to_owned(), error });
                }
            }
        }
        // Whatever is still queued will not run.
        refuse_queued(&mut *rx);
        None
    }

    /// Gives the plugin's state up for an eviction: runs `onUnload` (if it has one) and
    /// returns what it gave. `None` keeps the plugin where it is: it is closing (the mailbox
    /// has its `Stop`), or `onUnload` failed (its state would be lost; it is tried again after
    /// the next idle period).
    fn evict(
        &self,
        isolate: Option<&mut PluginIsolate>,
        slot: &Arc<DeadlineSlot>,
        rt: &tokio::runtime::Runtime,
    ) -> Option<Value> {
        let iso = isolate?;
        if self.shared.is_closed() {
            return None;
        }
        if !iso.has_hook(ON_UNLOAD) {
            return Some(Value::Null);
        }
        match iso.call(ON_UNLOAD, &Value::Null, self.config.limits.call_timeout, Default::default(), None, slot, rt) {
            Ok(state) => Some(state),
            Err(error) => {
                let id = self.config.id();
                let error = error.in_context(id, Some(ON_UNLOAD));
                tracing::warn!(plugin = %id, "not evicted: {error}");
                self.shared.emit(LifecycleEvent::HookFailed { plugin: id.to_owned(), error });
                None
            }
        }
    }

    /// After an eviction (the isolate is gone): puts the mailbox to sleep, so that the next
    /// call starts the plugin again, from the files this version loaded, on a thread of its
    /// own (from the warm pool if one is ready), handing `state` to its `onLoad`.
    fn sleep(self, rx: Box<dyn Inbox>, state: Value) {
        let Some(dormancy) = rx.dormancy() else { return };
        let id = self.config.id().to_owned();
        self.shared.stats.record_eviction();
        self.shared.stats.set_memory(0, 0, self.config.limits.heap_limit);
        self.shared.emit(LifecycleEvent::Evicted { plugin: id.clone() });
        tracing::debug!(plugin = %id, "evicted after {} ms idle", self.config.evict_after.unwrap_or_default().as_millis());
        let shared = self.shared.clone();
        shared.forget_current_thread();
        dormancy.sleep(
            state,
            Box::new(move |state| {
                let mut rx = rx;
                if self.shared.is_closed() {
                    // Unloaded meanwhile (its `Stop` came in as it went to sleep): nothing to
                    // bring back.
                    return refuse_queued(&mut *rx);
                }
                let warm = self.warm_thread();
                let thread = match start_thread(&id, warm, move |warm| self.run_with(rx, None, warm, Some(state))) {
                    Ok(thread) => thread,
                    // The mailbox goes with the closure: its callers hear the plugin is gone.
                    Err(e) => {
                        let msg = format!("cannot start a thread to bring the plugin back: {e}");
                        return restart_failed(&shared, Error::new(ErrorCode::PluginCrashed, msg));
                    }
                };
                shared.add_thread(thread);
            }),
        );
    }

    /// Restarts the plugin if its isolate broke its memory budget while no call ran (the
    /// engine's memory guard stopped it to keep all plugins under the total limit).
    fn recycle_if_poisoned(
        &self,
        isolate: &mut Option<PluginIsolate>,
        slot: &Arc<DeadlineSlot>,
        rt: &tokio::runtime::Runtime,
    ) {
        if let Some(iso) = isolate.as_ref().filter(|i| i.poisoned()) {
            let error = iso.heap_limit_error().in_context(self.config.id(), None);
            self.restart(isolate, error, slot, rt);
        }
    }

    /// Discards an isolate that broke its memory budget and starts the plugin fresh; `error`
    /// says why, in the `Restarted` event.
    fn restart(
        &self,
        isolate: &mut Option<PluginIsolate>,
        error: Error,
        slot: &Arc<DeadlineSlot>,
        rt: &tokio::runtime::Runtime,
    ) {
        self.announce_restart(error);
        // Drop first: V8 wants isolates on one thread disposed in reverse order.
        drop(isolate.take());
        match self.load(None, slot, rt) {
            Ok(i) => *isolate = Some(i),
            Err(e) => self.restart_failed(e),
        }
    }

    /// A ready pool thread for this plugin's budget, unless the plugin is closing.
    fn warm_thread(&self) -> Option<WarmThread> {
        let heap_limit = self.config.limits.heap_limit.max(MIN_HEAP_BYTES);
        self.pool.as_ref().filter(|_| !self.shared.is_closed()).and_then(|p| p.upgrade()?.take(heap_limit))
    }

    /// Says that the plugin is being restarted, and why.
    fn announce_restart(&self, error: Error) {
        let id = self.config.id();
        self.shared.set_status(PluginStatus::Restarting);
        self.shared.emit(LifecycleEvent::Restarted { plugin: id.to_owned(), error });
        self.shared.stats.record_restart();
        tracing::warn!(plugin = %id, "memory limit exceeded; restarting the plugin");
    }

    /// Says that a restart failed: calls are answered with `error` from now on.
    fn restart_failed(&self, e: Error) {
        restart_failed(&self.shared, e);
    }

    /// Restarts the plugin on `warm`, a pool thread with a ready isolate: it takes over this
    /// thread's mailbox (calls queued meanwhile wait there) and this thread ends. Why not on
    /// this thread: an isolate belongs to the thread that made it, and making one here would
    /// cost the plugin's callers a cold start.
    fn hand_off(&self, warm: WarmThread, rx: Box<dyn Inbox>) {
        let next = Worker {
            engine: self.engine.clone(),
            config: self.config.clone(),
            shared: self.shared.clone(),
            peers: self.peers.clone(),
            sources: self.sources.clone(),
            generation: self.generation,
            pool: self.pool.clone(),
        };
        // A pool thread cannot fail to start: it is running already.
        if let Ok(thread) = start_thread(self.config.id(), Some(warm), move |warm| next.run_with(rx, None, warm, None))
        {
            self.shared.adopt_thread(thread);
        }
    }

    /// Sends a call's answer, or, for `onLoad` (no caller), reports a failure as an event.
    fn answer(&self, reply: Option<Reply>, r: Result<Value, Error>) {
        match reply {
            Some(reply) => reply.send(r),
            None => {
                if let Err(error) = r {
                    let error = error.in_context(self.config.id(), Some(ON_LOAD));
                    self.shared.emit(LifecycleEvent::HookFailed { plugin: self.config.id().to_owned(), error });
                }
            }
        }
    }

    fn load(
        &self,
        bare: Option<BareIsolate>,
        slot: &Arc<DeadlineSlot>,
        rt: &tokio::runtime::Runtime,
    ) -> Result<PluginIsolate, Error> {
        let cfg = IsolateConfig {
            plugin: &self.config,
            host: self.engine.host(),
            storage: self.engine.storage(),
            stats: self.shared.stats.clone(),
            peers: self.peers.clone(),
            sources: self.sources.clone(),
            guard: self.engine.memory_guard(),
            inspect: self.engine.inspect_mode(),
            on_inspector: &|sessions, url| self.shared.set_inspector(InspectorPort::new(sessions, slot.clone(), url)),
        };
        let loaded = PluginIsolate::new(bare, &cfg, slot, rt);
        self.shared.set_unstuck();
        let iso = loaded?;
        let shared = Arc::downgrade(&self.shared);
        let generation = self.generation;
        iso.set_waker(Box::new(move || {
            if let Some(shared) = shared.upgrade() {
                shared.nudge(generation);
            }
        }));
        let (heap, ab, limit) = iso.memory();
        self.shared.stats.set_memory(heap, ab, limit);
        self.shared.set_status(PluginStatus::Ready);
        Ok(iso)
    }
}
