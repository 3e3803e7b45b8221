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

use crate::engine::{Engine, Limits};
use crate::error::{Error, ErrorCode};
use crate::events::LifecycleEvent;
use crate::handle::{CallContext, PluginStatus, Reply, Request, Shared};
use crate::manager::Links;
use crate::manager::ON_LOAD;
use crate::runtime::isolate::{IsolateConfig, PluginIsolate};
use crate::runtime::loader::SourceCache;
use crate::runtime::watchdog::DeadlineSlot;
use crate::source::PluginSource;
use serde_json::Value;

/// Stack for plugin threads: V8 stops JS recursion at about 1 MiB of stack; the rest is for
/// Rust frames and host functions.
const STACK_SIZE: usize = 4 << 20;

/// A plugin thread that is starting: wait for it with [`Starting::wait`].
pub(crate) struct Starting {
    pub tx: Sender<Request>,
    pub thread: JoinHandle<()>,
    ready: Receiver<Result<Vec<String>, Error>>,
}

impl Starting {
    /// Blocks until the plugin has evaluated (or failed to); returns its hook names.
    pub(crate) fn wait(&self) -> Result<Vec<String>, Error> {
        self.ready
            .recv()
            .unwrap_or_else(|_| Err(Error::new(ErrorCode::PluginCrashed, "the plugin's thread died while loading")))
    }
}

/// Starts a thread that loads `source` and then serves its mailbox. Statistics and status go
/// to `shared`; whether loading worked comes back through [`Starting::wait`].
pub(crate) fn spawn(
    engine: &Engine,
    source: PluginSource,
    shared: Arc<Shared>,
    links: Links,
) -> Result<Starting, Error> {
    let limits = engine.limits().for_plugin(&source);
    let granted = engine.permissions_for(&source).granted;
    let (tx, rx) = crossbeam_channel::bounded(limits.mailbox_capacity);
    let (ready_tx, ready) = crossbeam_channel::bounded(1);
    let engine = engine.clone();
    let id = source.id.clone();
    let thread = std::thread::Builder::new()
        .name(format!("isola:{id}"))
        .stack_size(STACK_SIZE)
        .spawn(move || {
            let sources = Arc::default();
            Worker { engine, source, limits, granted, shared, links, sources }.run(rx, ready_tx)
        })
        .map_err(|e| Error::new(ErrorCode::LoadFailed, format!("cannot start a thread: {e}")).plugin(&id))?;
    Ok(Starting { tx, thread, ready })
}

struct Worker {
    engine: Engine,
    source: PluginSource,
    limits: Limits,
    granted: Vec<String>,
    shared: Arc<Shared>,
    links: Links,
    /// The files this version loaded, reused when the isolate is restarted.
    sources: Arc<SourceCache>,
}

impl Worker {
    fn run(self, rx: Receiver<Request>, ready: Sender<Result<Vec<String>, Error>>) {
        crate::host::set_current_plugin(&self.source.id);
        self.shared.stats.register_thread();
        self.serve(rx, ready);
        self.shared.stats.unregister_thread();
    }

    fn serve(&self, rx: Receiver<Request>, ready: Sender<Result<Vec<String>, Error>>) {
        let id = self.source.id.clone();
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                let _ =
                    ready.send(Err(Error::new(ErrorCode::LoadFailed, format!("cannot start tokio: {e}")).plugin(&id)));
                return;
            }
        };
        // deno_core expects to be created and polled inside a tokio context.
        let _guard = rt.enter();
        let slot = DeadlineSlot::new();
        let mut isolate = match self.load(&slot, &rt) {
            Ok(i) => {
                let _ = ready.send(Ok(i.hook_names()));
                Some(i)
            }
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };

        while let Ok(req) = rx.recv() {
            let (hook, args, timeout, ctx, reply) = match req {
                Request::Stop => break,
                Request::Call { hook, args, timeout, ctx, reply } => (hook, args, timeout, ctx, reply),
                Request::Init { state } => {
                    let state = state.recv().unwrap_or(Value::Null);
                    let reply = Reply::Lifecycle(self.shared.clone());
                    (ON_LOAD.to_owned(), Value::Array(vec![state]), None, CallContext::default(), reply)
                }
            };
            let Some(iso) = isolate.as_mut() else {
                let last = self.shared.info().last_error;
                let msg = last.map(|e| e.message).unwrap_or_default();
                reply.send(Err(Error::new(ErrorCode::PluginCrashed, format!("the plugin failed to restart: {msg}"))
                    .plugin(&id)
                    .hook(&hook)));
                continue;
            };
            let started = Instant::now();
            let mut timeout = timeout.unwrap_or(self.limits.call_timeout);
            if !ctx.chain.is_empty() {
                // A call from another plugin gets what is left of the caller's deadline, but
                // never more than this plugin's own limit.
                timeout = timeout.min(self.limits.call_timeout);
            }
            let r = iso.call(&hook, &args, timeout, ctx, &slot, &rt).map_err(|e| e.in_context(&id, Some(&hook)));
            self.shared.stats.record_call(r.as_ref().err().map(|e| e.code), started.elapsed());
            let poisoned = iso.poisoned();
            if !poisoned {
                let (heap, ab, limit) = iso.memory();
                self.shared.stats.set_memory(heap, ab, limit);
            }
            let heap_error = if poisoned { r.as_ref().err().cloned() } else { None };
            reply.send(r);
            if poisoned {
                // The isolate broke its memory budget: discard it and start the plugin fresh.
                // (Drop first: V8 wants isolates on one thread disposed in reverse order.)
                self.shared.set_status(PluginStatus::Restarting);
                if let Some(error) = heap_error {
                    self.shared.emit(LifecycleEvent::Restarted { plugin: id.clone(), error });
                }
                drop(isolate.take());
                self.shared.stats.record_restart();
                tracing::warn!(plugin = %id, "memory limit exceeded; restarting the plugin");
                match self.load(&slot, &rt) {
                    Ok(i) => isolate = Some(i),
                    Err(e) => {
                        tracing::error!(plugin = %id, "restart failed: {e}");
                        self.shared.update_info(|info| info.last_error = Some(e));
                        self.shared.set_status(PluginStatus::Failed);
                    }
                }
            }
        }
        // Whatever is still queued will not run.
        while let Ok(req) = rx.try_recv() {
            if let Request::Call { hook, reply, .. } = req {
                reply.send(Err(Error::new(ErrorCode::ShutDown, "the plugin was stopped").plugin(&id).hook(&hook)));
            }
        }
    }

    fn load(&self, slot: &DeadlineSlot, rt: &tokio::runtime::Runtime) -> Result<PluginIsolate, Error> {
        let cfg = IsolateConfig {
            source: &self.source,
            host: self.engine.host(),
            heap_limit: self.limits.heap_limit,
            load_timeout: self.limits.load_timeout,
            granted: &self.granted,
            stats: self.shared.stats.clone(),
            storage: (self.engine.storage().clone(), self.engine.storage_quota_for(&self.source)),
            links: self.links.clone(),
            sources: self.sources.clone(),
        };
        let iso = PluginIsolate::new(&cfg, slot, rt).map_err(|e| e.in_context(&self.source.id, None))?;
        let (heap, ab, limit) = iso.memory();
        self.shared.stats.set_memory(heap, ab, limit);
        self.shared.set_status(PluginStatus::Ready);
        Ok(iso)
    }
}
