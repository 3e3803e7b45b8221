//! The host's side of a process-isolated plugin: the same mailbox and [`Starting`] as a plugin
//! thread, served by a *pump* thread that hands calls to a child process one at a time.
//!
//! Three threads per plugin, all cheap and mostly asleep:
//! - the pump: takes requests from the mailbox, sends each call to the child and waits for its
//!   answer; starts the child, restarts it after a crash (with backoff), kills it when it does
//!   not answer within the call's deadline plus [`GRACE`];
//! - the reader: reads what the child sends, hands answers to the pump and requests to the
//!   host thread;
//! - the host thread: runs what the child asks of the host (host functions, storage, other
//!   plugins) on a current-thread runtime, like a plugin thread would, so host functions see
//!   the same world in both modes (`current_plugin()`, non-`Send` async functions). Requests
//!   that cannot wait (sync host functions, storage, emits) are answered on the reader thread
//!   itself, one hand-off fewer.
//!
//! Where a call's time goes (67 µs measured, against 2.4 µs on a thread): the caller wakes the
//! pump, the pump writes to the socket and wakes the child's reader, which wakes the plugin's
//! thread, which writes the answer and wakes the host's reader, which wakes the pump, which
//! wakes the caller. Getting under 25 µs means cutting hand-offs, not bytes: the caller writing
//! the frame itself and the plugin's thread reading its socket directly.

use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use serde_json::Value;

use super::wire::{Ask, ChildPlugin, HostDecl, HostKind, PROTOCOL_VERSION, ToChild, ToParent, read_frame, write_frame};
use super::{PARENT_PID_ENV, WORKER_FD_ENV};
use crate::call::{CallContext, ON_LOAD, Request};
use crate::config::PluginConfig;
use crate::engine::Engine;
use crate::error::{Error, ErrorCode, Result};
use crate::events::LifecycleEvent;
use crate::handle::{PluginStatus, Shared};
use crate::host::{CatchUnwind, HostItem, panicked};
use crate::permissions::{EVENTS, STORAGE, may_call};
use crate::runtime::peers::Peers;
use crate::storage::{StorageError, check_key};
use crate::worker::Starting;

/// How long past a call's deadline the child may take to answer before it is killed. The
/// child's own watchdog stops a call at its deadline; this is the backstop for a child that
/// cannot (a builtin that ignores termination, a hung host of its own).
pub const GRACE: Duration = Duration::from_secs(1);
/// Longest wait between restarts of a child that keeps crashing.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Starts the pump for a process-isolated plugin; like `worker::spawn`.
pub(crate) fn spawn(
    engine: &Engine,
    config: Arc<PluginConfig>,
    shared: Arc<Shared>,
    peers: Arc<dyn Peers>,
) -> Result<Starting> {
    let (tx, rx) = crossbeam_channel::bounded(config.limits.mailbox_capacity);
    let (ready_tx, ready) = crossbeam_channel::bounded(1);
    let pump = Pump { engine: engine.clone(), config, shared, peers, crashes: 0, last_crash: None, sources: Vec::new() };
    let id = pump.config.id().to_owned();
    let thread = std::thread::Builder::new()
        .name(format!("isola:{id}:pump"))
        .spawn(move || pump.run(rx, ready_tx))
        .map_err(|e| Error::new(ErrorCode::LoadFailed, format!("cannot start a thread: {e}")))?;
    Ok(Starting::new(tx, thread, ready))
}

/// A running child, as the parent sees it.
struct ChildProc {
    process: Child,
    writer: Arc<Mutex<UnixStream>>,
    /// Answers (and the end of the stream, as `None`) from the reader thread.
    answers: Receiver<Option<ToParent>>,
    reader: Option<JoinHandle<()>>,
    host: Option<JoinHandle<()>>,
    next_id: u64,
}

impl ChildProc {
    fn send(&self, msg: &ToChild) -> Result<()> {
        write_frame(&mut *self.writer.lock().unwrap(), msg)
    }

    /// The next answer, or `None` if the child is gone or `deadline` passed.
    fn answer(&self, deadline: Option<Instant>) -> std::result::Result<ToParent, Gone> {
        let r = match deadline {
            Some(d) => self.answers.recv_timeout(d.saturating_duration_since(Instant::now())),
            None => self.answers.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match r {
            Ok(Some(msg)) => Ok(msg),
            Ok(None) | Err(RecvTimeoutError::Disconnected) => Err(Gone::Exited),
            Err(RecvTimeoutError::Timeout) => Err(Gone::Unresponsive),
        }
    }

    /// Kills the child and waits for it and its threads; returns how it ended.
    fn kill(mut self) -> String {
        let _ = self.process.kill();
        self.reap()
    }

    fn reap(&mut self) -> String {
        let status = self.process.wait().map(|s| describe(&s)).unwrap_or_else(|e| e.to_string());
        // The reader ends with the stream; the host thread when the reader drops its queue.
        if let Some(t) = self.reader.take() {
            let _ = t.join();
        }
        if let Some(t) = self.host.take() {
            let _ = t.join();
        }
        status
    }
}

enum Gone {
    Exited,
    Unresponsive,
}

fn describe(status: &std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (_, Some(sig)) => format!("killed by signal {sig}"),
        (Some(code), _) => format!("exited with status {code}"),
        _ => status.to_string(),
    }
}

struct Pump {
    engine: Engine,
    config: Arc<PluginConfig>,
    shared: Arc<Shared>,
    peers: Arc<dyn Peers>,
    /// Crashes in a row (reset by a call that is answered), for the restart backoff.
    crashes: u32,
    last_crash: Option<Instant>,
    /// The files the first process of this version loaded; every restart starts from them.
    sources: Vec<(std::path::PathBuf, std::path::PathBuf, String)>,
}

impl Pump {
    fn id(&self) -> &str {
        self.config.id()
    }

    fn run(mut self, rx: Receiver<Request>, ready: Sender<Result<Vec<String>>>) {
        let mut child = match self.start() {
            Ok((child, hooks)) => {
                self.shared.set_status(PluginStatus::Ready);
                let _ = ready.send(Ok(hooks));
                Some(child)
            }
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        while let Ok(req) = rx.recv() {
            let (hook, args, timeout, ctx, reply) = match req {
                Request::Stop => break,
                Request::Call { hook, args, timeout, ctx, reply } => (hook, args, timeout, ctx, Some(reply)),
                Request::Init { state } => {
                    let state = state.recv().unwrap_or(Value::Null);
                    (ON_LOAD.to_owned(), Value::Array(vec![state]), None, CallContext::default(), None)
                }
            };
            // A child that died while idle costs no call: notice it before sending, restart.
            if let Some(status) = child.as_mut().and_then(|c| c.process.try_wait().ok().flatten()) {
                let how = child.take().map(ChildProc::kill).unwrap_or_else(|| describe(&status));
                self.crashed(&Error::new(ErrorCode::PluginCrashed, format!("the plugin's process ended while idle ({how})")));
            }
            if child.is_none() {
                child = self.restart();
            }
            let r = match child.as_mut() {
                Some(c) => self.call(c, &hook, args, timeout, ctx),
                None => {
                    let why = self.shared.info().last_error.map(|e| e.message).unwrap_or_default();
                    Err(Call::Refused(Error::new(ErrorCode::PluginCrashed, format!("the plugin's process is not running: {why}"))))
                }
            };
            let r = match r {
                Ok(v) => {
                    self.crashes = 0;
                    Ok(v)
                }
                Err(Call::Failed(e)) => Err(e),
                Err(Call::Refused(e)) => Err(e),
                Err(Call::Lost(e)) => {
                    let how = child.take().map(ChildProc::kill).unwrap_or_default();
                    let e = Error { message: format!("{} ({how})", e.message), ..e };
                    self.crashed(&e);
                    Err(e)
                }
            };
            match reply {
                Some(reply) => reply.send(r),
                None => {
                    if let Err(error) = r {
                        let error = error.in_context(self.id(), Some(ON_LOAD));
                        self.shared.emit(LifecycleEvent::HookFailed { plugin: self.id().to_owned(), error });
                    }
                }
            }
        }
        if let Some(mut c) = child {
            let _ = c.send(&ToChild::Stop);
            // A child that does not stop promptly is killed.
            let deadline = Instant::now() + GRACE;
            while c.process.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
            c.kill();
        }
        self.shared.stats.fold_remote();
        while let Ok(req) = rx.try_recv() {
            if let Request::Call { reply, .. } = req {
                reply.send(Err(Error::new(ErrorCode::ShutDown, "the plugin was stopped")));
            }
        }
    }

    /// Sends one call and waits for its answer, the child's deadline plus [`GRACE`] at most.
    fn call(&self, c: &mut ChildProc, hook: &str, args: Value, timeout: Option<Duration>, ctx: CallContext) -> std::result::Result<Value, Call> {
        let started = Instant::now();
        let mut limit = timeout.unwrap_or(self.config.limits.call_timeout);
        if !ctx.chain.is_empty() {
            limit = limit.min(self.config.limits.call_timeout);
        }
        c.next_id += 1;
        let id = c.next_id;
        let msg = ToChild::Call {
            id,
            hook: hook.to_owned(),
            args,
            timeout_ms: Some(limit.as_millis().min(u64::MAX as u128) as u64),
            chain: ctx.chain,
            event_depth: ctx.event_depth,
        };
        if let Err(e) = c.send(&msg) {
            self.shared.stats.record_call(Some(ErrorCode::PluginCrashed), started.elapsed());
            return Err(Call::Lost(Error::new(ErrorCode::PluginCrashed, format!("the plugin's process is gone: {}", e.message))));
        }
        let deadline = started.checked_add(limit).and_then(|d| d.checked_add(GRACE));
        loop {
            match c.answer(deadline) {
                Ok(ToParent::Answer { id: got, result, stats, status }) if got == id => {
                    self.shared.stats.set_remote(*stats);
                    self.shared.set_status(status);
                    return result.map_err(Call::Failed);
                }
                Ok(_) => continue, // a stale answer (cannot happen with one call at a time)
                Err(Gone::Exited) => {
                    self.shared.stats.record_call(Some(ErrorCode::PluginCrashed), started.elapsed());
                    return Err(Call::Lost(Error::new(ErrorCode::PluginCrashed, "the plugin's process died during the call")));
                }
                Err(Gone::Unresponsive) => {
                    self.shared.stats.record_call(Some(ErrorCode::Timeout), started.elapsed());
                    let msg = format!(
                        "the call took longer than {} ms and the plugin's process did not stop it; the process was killed",
                        limit.as_millis()
                    );
                    return Err(Call::Lost(Error::new(ErrorCode::Timeout, msg)));
                }
            }
        }
    }

    /// Records a lost child: status, counters, an event. The next call restarts it.
    fn crashed(&mut self, e: &Error) {
        self.shared.update_info(|i| i.pid = None);
        self.crashes += 1;
        self.last_crash = Some(Instant::now());
        self.shared.stats.fold_remote();
        self.shared.stats.record_restart();
        self.shared.set_status(PluginStatus::Restarting);
        tracing::warn!(plugin = %self.id(), "the plugin's process ended: {e}");
        let error = e.clone().in_context(self.id(), None);
        self.shared.emit(LifecycleEvent::Crashed { plugin: self.id().to_owned(), error });
    }

    /// Starts a child again after a crash, once the backoff has passed.
    fn restart(&mut self) -> Option<ChildProc> {
        // The first restart is immediate; a plugin that keeps crashing waits 50 ms, 100 ms, ...
        let backoff = match self.crashes {
            0 | 1 => Duration::ZERO,
            n => Duration::from_millis(50u64 << (n - 2).min(7)).min(MAX_BACKOFF),
        };
        if let Some(at) = self.last_crash {
            std::thread::sleep((at + backoff).saturating_duration_since(Instant::now()));
        }
        match self.start() {
            Ok((c, hooks)) => {
                self.shared.update_info(|i| i.hooks = hooks);
                self.shared.set_status(PluginStatus::Ready);
                Some(c)
            }
            Err(e) => {
                let e = e.in_context(self.id(), None);
                tracing::error!(plugin = %self.id(), "restart failed: {e}");
                self.shared.update_info(|i| i.last_error = Some(e));
                self.shared.set_status(PluginStatus::Failed);
                self.last_crash = Some(Instant::now());
                self.crashes += 1;
                None
            }
        }
    }

    /// Starts a child, checks its hello, hands it the plugin and waits for it to load.
    fn start(&mut self) -> Result<(ChildProc, Vec<String>)> {
        let fail = |msg: String| Error::new(ErrorCode::LoadFailed, msg);
        let (mine, theirs) = UnixStream::pair().map_err(|e| fail(format!("cannot create a channel: {e}")))?;
        let program = match self.engine.worker_program() {
            Some(p) => p.to_path_buf(),
            None => std::env::current_exe().map_err(|e| fail(format!("cannot find this program: {e}")))?,
        };
        let fd = theirs.as_raw_fd();
        let mut cmd = Command::new(&program);
        cmd.arg("worker")
            .env(WORKER_FD_ENV, CHILD_FD.to_string())
            .env(PARENT_PID_ENV, std::process::id().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                // The channel becomes fd 3 (without close-on-exec); nothing else is inherited.
                if fd == CHILD_FD {
                    libc::fcntl(CHILD_FD, libc::F_SETFD, 0);
                } else if libc::dup2(fd, CHILD_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::syscall(libc::SYS_close_range, CHILD_FD as u32 + 1, u32::MAX, 0) != 0 {
                    for other in CHILD_FD + 1..4096 {
                        libc::close(other);
                    }
                }
                let none = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
                libc::setrlimit(libc::RLIMIT_CORE, &none);
                Ok(())
            });
        }
        let process = cmd.spawn().map_err(|e| fail(format!("cannot start {}: {e}", program.display())))?;
        drop(theirs);
        let writer = Arc::new(Mutex::new(mine.try_clone().map_err(|e| fail(e.to_string()))?));
        let (answers_tx, answers) = crossbeam_channel::unbounded();
        let (host_tx, host_rx) = tokio::sync::mpsc::unbounded_channel();
        let id = self.id().to_owned();
        let shared = self.shared.clone();
        let mut stream = mine;
        let host = HostSide { engine: self.engine.clone(), config: self.config.clone(), peers: self.peers.clone(), writer: writer.clone() };
        let inline = HostSide { engine: self.engine.clone(), config: self.config.clone(), peers: self.peers.clone(), writer: writer.clone() };
        let reader = std::thread::Builder::new()
            .name(format!("isola:{id}:rx"))
            .spawn(move || read_child(&mut stream, &id, &shared, answers_tx, host_tx, &inline))
            .map_err(|e| fail(format!("cannot start a thread: {e}")))?;
        let host = std::thread::Builder::new()
            .name(format!("isola:{}:host", self.id()))
            .spawn(move || host.run(host_rx))
            .map_err(|e| fail(format!("cannot start a thread: {e}")))?;
        let mut child = ChildProc { process, writer, answers, reader: Some(reader), host: Some(host), next_id: 0 };
        let deadline = Some(Instant::now() + self.config.limits.load_timeout + GRACE);
        let refuse = |child: ChildProc, msg: String| -> Result<(ChildProc, Vec<String>)> {
            let how = child.kill();
            Err(fail(format!("{msg} ({how})")))
        };
        match child.answer(deadline) {
            Ok(ToParent::Hello { protocol, .. }) if protocol == PROTOCOL_VERSION => {}
            Ok(ToParent::Hello { protocol, .. }) => {
                let msg = format!(
                    "{} speaks isola worker protocol {protocol}, this host {PROTOCOL_VERSION}; use the same isola version for both",
                    program.display()
                );
                return refuse(child, msg);
            }
            Ok(_) => return refuse(child, format!("{} did not start as an isola worker", program.display())),
            Err(_) => {
                let msg = format!(
                    "{} did not start as an isola worker (does its main call isola::process::run_worker_if_requested()?)",
                    program.display()
                );
                return refuse(child, msg);
            }
        }
        if let Err(e) = child.send(&ToChild::Init { protocol: PROTOCOL_VERSION, plugin: Box::new(self.child_plugin()) }) {
            return refuse(child, e.message);
        }
        match child.answer(deadline) {
            Ok(ToParent::Loaded { result: Ok(hooks), stats, sources }) => {
                self.shared.stats.set_remote(*stats);
                if self.sources.is_empty() {
                    self.sources = sources;
                }
                child.next_id = 0;
                let pid = child.process.id();
                self.shared.update_info(|i| i.pid = Some(pid));
                Ok((child, hooks))
            }
            Ok(ToParent::Loaded { result: Err(e), .. }) => {
                child.kill();
                Err(e)
            }
            Ok(_) => refuse(child, "the worker answered out of turn".into()),
            Err(Gone::Unresponsive) => {
                let ms = self.config.limits.load_timeout.as_millis();
                let how = child.kill();
                Err(Error::new(ErrorCode::Timeout, format!("loading took longer than {ms} ms; the process was killed ({how})")))
            }
            Err(Gone::Exited) => {
                let how = child.kill();
                Err(Error::new(ErrorCode::PluginCrashed, format!("the plugin's process died while loading ({how})")))
            }
        }
    }

    /// What the child is told about its plugin: the parent's resolved configuration.
    fn child_plugin(&self) -> ChildPlugin {
        let host = self.engine.host();
        let decls = host
            .items()
            .map(|(name, item)| HostDecl {
                name: name.to_owned(),
                kind: match item {
                    HostItem::Sync(_) => HostKind::Sync,
                    HostItem::Async(_) => HostKind::Async,
                    HostItem::Value(v) => HostKind::Value(v.clone()),
                },
                permission: host.permission_of(name).map(str::to_owned),
            })
            .collect();
        let l = &self.config.limits;
        ChildPlugin {
            source: self.config.source.clone(),
            heap_limit: l.heap_limit,
            call_timeout_ms: l.call_timeout.as_millis().min(u64::MAX as u128) as u64,
            load_timeout_ms: l.load_timeout.as_millis().min(u64::MAX as u128) as u64,
            max_result_bytes: l.max_result_bytes,
            granted: self.config.permissions.granted.clone(),
            storage_quota: self.config.storage_quota,
            host: decls,
            sources: self.sources.clone(),
        }
    }
}

/// Why a call got no answer from the plugin.
enum Call {
    /// The plugin answered with an error.
    Failed(Error),
    /// The call was not sent (no process).
    Refused(Error),
    /// The process died or was killed.
    Lost(Error),
}

/// The fd number the child finds its channel on.
const CHILD_FD: i32 = 3;

/// Reads everything the child sends until its end.
fn read_child(
    stream: &mut UnixStream,
    id: &str,
    shared: &Shared,
    answers: Sender<Option<ToParent>>,
    host: tokio::sync::mpsc::UnboundedSender<(u64, Ask)>,
    inline: &HostSide,
) {
    crate::host::set_current_plugin(id);
    loop {
        match read_frame::<ToParent>(stream) {
            // Requests that finish without waiting (sync host functions, storage, emits) are
            // answered right here: the child's plugin thread is blocked on them anyway, and
            // this saves a hand-off to the host thread. What may wait goes there.
            Ok(Some(ToParent::Ask { id: ask_id, ask })) if inline.is_quick(&ask) => {
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inline.answer_now(ask)))
                    .unwrap_or_else(|p| Err(Error::new(ErrorCode::HostError, panicked(p).message)));
                let _ = write_frame(&mut *inline.writer.lock().unwrap(), &ToChild::Reply { id: ask_id, result });
            }
            Ok(Some(ToParent::Ask { id: ask_id, ask })) => {
                let _ = host.send((ask_id, ask));
            }
            Ok(Some(ToParent::Log { level, msg })) => log(id, level, &msg),
            Ok(Some(ToParent::Event(e))) => {
                if matches!(e, LifecycleEvent::Restarted { .. }) {
                    shared.set_status(PluginStatus::Restarting);
                }
                shared.emit(e);
            }
            Ok(Some(msg)) => {
                let _ = answers.send(Some(msg));
            }
            Ok(None) | Err(_) => {
                let _ = answers.send(None);
                return;
            }
        }
    }
}

fn log(plugin: &str, level: u32, msg: &str) {
    match level {
        0 => tracing::trace!(target: "isola::plugin", plugin, "{msg}"),
        1 => tracing::debug!(target: "isola::plugin", plugin, "{msg}"),
        2 => tracing::info!(target: "isola::plugin", plugin, "{msg}"),
        3 => tracing::warn!(target: "isola::plugin", plugin, "{msg}"),
        _ => tracing::error!(target: "isola::plugin", plugin, "{msg}"),
    }
}

/// Answers the child's requests in the host.
struct HostSide {
    engine: Engine,
    config: Arc<PluginConfig>,
    peers: Arc<dyn Peers>,
    writer: Arc<Mutex<UnixStream>>,
}

impl HostSide {
    fn run(self, mut jobs: tokio::sync::mpsc::UnboundedReceiver<(u64, Ask)>) {
        crate::host::set_current_plugin(self.config.id());
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
        let local = tokio::task::LocalSet::new();
        let me = Arc::new(self);
        local.block_on(&rt, async move {
            while let Some((id, ask)) = jobs.recv().await {
                let me = me.clone();
                tokio::task::spawn_local(async move {
                    // As in thread mode, a panic in host-side code (a storage backend, say) is a
                    // HOST_ERROR for the plugin, and the child still gets its reply.
                    let result = CatchUnwind(Box::pin(me.answer(ask)))
                        .await
                        .unwrap_or_else(|p| Err(Error::new(ErrorCode::HostError, panicked(p).message)));
                    let _ = write_frame(&mut *me.writer.lock().unwrap(), &ToChild::Reply { id, result });
                });
            }
        });
    }

    /// Whether `ask` is answered without waiting on anything: a sync host function, storage,
    /// an emit (a plugin call or an async host function may wait).
    fn is_quick(&self, ask: &Ask) -> bool {
        match ask {
            Ask::Host { name, .. } => {
                matches!(self.engine.host().items().find(|(n, _)| n == name), Some((_, HostItem::Sync(_))))
            }
            Ask::Storage { .. } | Ask::Emit { .. } => true,
            Ask::CallPlugin { .. } => false,
        }
    }

    /// [`answer`](Self::answer) for a quick request (see [`is_quick`](Self::is_quick)): it
    /// completes in one poll.
    fn answer_now(&self, ask: Ask) -> Result<Value> {
        let mut fut = std::pin::pin!(self.answer(ask));
        match fut.as_mut().poll(&mut std::task::Context::from_waker(std::task::Waker::noop())) {
            std::task::Poll::Ready(r) => r,
            std::task::Poll::Pending => Err(Error::new(ErrorCode::HostError, "a host request that should not wait did")),
        }
    }

    /// Does what the child asked, checking again that its plugin may: the child is not trusted.
    async fn answer(&self, ask: Ask) -> Result<Value> {
        let granted = &self.config.permissions.granted;
        let holds = |p: &str| granted.iter().any(|g| g == p);
        let denied = |what: String| Error::new(ErrorCode::PermissionDenied, what);
        let plugin = self.config.id();
        match ask {
            Ask::Host { name, args } => {
                let host = self.engine.host();
                if let Some(p) = host.permission_of(&name).filter(|p| !holds(p)) {
                    return Err(denied(format!("plugin `{plugin}` lacks the permission `{p}` that host.{name} requires")));
                }
                let item = host.items().find(|(n, _)| *n == name).map(|(_, item)| item.clone());
                let r = match item {
                    Some(HostItem::Sync(f)) => f(args),
                    Some(HostItem::Async(f)) => f(args).await,
                    _ => return Err(Error::new(ErrorCode::HostError, format!("no host function `{name}`"))),
                };
                r.map_err(|e| Error::new(e.code, e.message))
            }
            Ask::Storage { op, key, value } => {
                if !holds(STORAGE) {
                    return Err(denied(format!("plugin `{plugin}` lacks the permission `storage`")));
                }
                let backend = self.engine.storage().backend();
                let quota = &self.config.storage_quota;
                let r = match op {
                    0 => check_key(&key).and_then(|_| backend.get(plugin, &key)).map(|v| v.map_or(Value::Null, Value::String)),
                    1 => check_key(&key).and_then(|_| backend.set(plugin, &key, &value, quota)).map(|_| Value::Null),
                    2 => check_key(&key).and_then(|_| backend.delete(plugin, &key)).map(Value::Bool),
                    _ => backend.list(plugin, &key).map(|keys| serde_json::json!(keys)),
                };
                r.map_err(|e| match e {
                    StorageError::Quota(m) => Error::new(ErrorCode::QuotaExceeded, m),
                    StorageError::InvalidKey(m) => Error::new(ErrorCode::InvalidArgs, m),
                    StorageError::Backend(m) => Error::new(ErrorCode::HostError, m),
                })
            }
            Ask::CallPlugin { to, hook, args, timeout_ms, chain, event_depth } => {
                if !may_call(granted, &to) {
                    return Err(denied(format!("plugin `{plugin}` lacks the permission `call:{to}`")));
                }
                let ctx = CallContext { chain, event_depth };
                self.peers.call(plugin, &to, &hook, args, Duration::from_millis(timeout_ms), ctx)?.await
            }
            Ask::Emit { event, payload, depth } => {
                if !holds(EVENTS) {
                    return Err(denied(format!("plugin `{plugin}` lacks the permission `events`")));
                }
                self.peers.emit(&event, payload, depth).map(|n| Value::from(n as u64))
            }
        }
    }
}
