//! The host's side of a process-isolated plugin: the same mailbox and [`Starting`] as a plugin
//! thread, served by a *pump* thread that hands calls to a child process one at a time.
//!
//! Three threads per plugin, all cheap and mostly asleep:
//! - the pump: takes requests from the mailbox, sends each call to the child and waits for its
//!   answer; starts the child, restarts it after a crash (with backoff), kills it when it does
//!   not answer within the call's deadline plus [`GRACE`];
//! - the reader: reads what the child sends, answers the caller of the running call directly
//!   (and tells the pump the call ended), hands requests to the host thread;
//! - the host thread: runs what the child asks of the host (host functions, storage, other
//!   plugins) on a current-thread runtime, like a plugin thread would, so host functions see
//!   the same world in both modes (`current_plugin()`, non-`Send` async functions). Requests
//!   that cannot wait (sync host functions, storage, emits) are answered on the reader thread
//!   itself, one hand-off fewer.
//!
//! Where a call's time goes (74 µs measured on a day thread mode took 7.6 µs, 128 µs before
//! the hand-offs below were cut): almost all of it is threads waking up, about 20 µs each on
//! these 2-core VMs; encoding is 1 µs. The caller hands the call to the pump (usually still
//! spinning from its last call, cheap), the pump writes it to the call channel, which wakes the
//! child's plugin thread reading it directly (1), which writes the answer and wakes the host's
//! reader (2), which answers the caller (3). Under 25 µs needs fewer sleeps, not fewer bytes:
//! busy-polling both ends for a short while, or a shared-memory ring between the processes.

use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use serde_json::Value;

use super::memory::ChildMemory;
use super::wire::{
    Ask, ChildPlugin, HostDecl, HostKind, MAX_FRAME, PROTOCOL_VERSION, ToChild, ToParent, monotonic_ns, read_frame,
    write_frame,
};
use super::{PARENT_PID_ENV, WORKER_CONTROL_FD_ENV, WORKER_FD_ENV};
use crate::call::{CallContext, Inbox, Job, MailboxRx, ON_LOAD, Reply, Request, next_job, refuse_queued};
use crate::cancel::Abort;
use crate::config::PluginConfig;
use crate::engine::{Engine, MAX_CALL_DEPTH, MAX_EVENT_DEPTH, MAX_MESSAGE_BYTES};
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
/// How often the pump looks, while a call runs in the child, whether it must be cancelled.
const CANCEL_CHECK: Duration = Duration::from_millis(10);
/// Longest wait between restarts of a child that keeps crashing.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long a write to the child may block (its socket buffer full) before the child is
/// taken for hung, at least: a child busy with background work reads its next call only when
/// that turn ends, up to a call time limit later (see `write_timeout`).
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// A call that ran at least this long is followed by a read of the child's resident memory
/// before its caller hears the answer.
const LONG_CALL: Duration = Duration::from_millis(1);
/// How often an idle pump reads its child's resident memory.
const IDLE_MEMORY_CHECK: Duration = Duration::from_secs(1);

/// The pump's mailbox while it waits for a call: every [`IDLE_MEMORY_CHECK`] it reports the
/// child's memory to the engine's guard.
struct IdleWatch<'a> {
    rx: &'a mut MailboxRx,
    memory: &'a ChildMemory,
}

impl Inbox for IdleWatch<'_> {
    fn recv(&mut self) -> Option<Request> {
        loop {
            match self.rx.recv_timeout(IDLE_MEMORY_CHECK) {
                Ok(req) => return Some(req),
                Err(RecvTimeoutError::Timeout) => self.memory.refresh(),
                Err(RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    fn try_recv(&mut self) -> Option<Request> {
        self.rx.try_recv()
    }
}

/// The call the child is running now, as the host knows it: what the child asks on its behalf
/// is checked against this, never against what the child claims.
#[derive(Clone)]
struct InFlight {
    /// Plugins waiting up the chain (not including this one).
    chain: Vec<String>,
    event_depth: u32,
    deadline: Option<Instant>,
}

type Running = Arc<Mutex<Option<InFlight>>>;

/// Where the answer to the call the child is running goes: the reader thread answers the
/// caller itself as the answer arrives (one hand-off fewer than through the pump), and the
/// pump takes it back for every other outcome (a crash, a kill, a refused send).
struct Pending {
    id: u64,
    reply: Reply,
    /// When the call was sent: one that ran a while may have grown the process, which the
    /// engine's total must know before the caller hears (see [`Reader::run`]).
    sent: Instant,
}

type Replies = Arc<Mutex<Option<Pending>>>;

/// Starts the pump for a process-isolated plugin; like `worker::spawn`.
pub(crate) fn spawn(
    engine: &Engine,
    config: Arc<PluginConfig>,
    shared: Arc<Shared>,
    peers: Arc<dyn Peers>,
) -> Result<Starting> {
    let program = super::worker_program(engine)?;
    let (tx, rx) = crate::call::mailbox(config.limits.mailbox_capacity);
    let (ready_tx, ready) = crossbeam_channel::bounded(1);
    let generation = shared.next_generation();
    let memory = ChildMemory::new(engine.memory_guard(), &shared, generation);
    let pump = Pump {
        engine: engine.clone(),
        config,
        shared,
        peers,
        program,
        generation,
        crashes: 0,
        last_crash: None,
        sources: Vec::new(),
        in_flight: Arc::default(),
        replies: Arc::default(),
        memory,
    };
    let id = pump.config.id().to_owned();
    let thread = std::thread::Builder::new()
        .name(format!("isola:{id}:pump"))
        .spawn(move || pump.run(rx, ready_tx))
        .map_err(|e| Error::new(ErrorCode::LoadFailed, format!("cannot start a thread: {e}")))?;
    Ok(Starting::new(tx, thread, generation, ready))
}

/// A running child, as the parent sees it.
struct ChildProc {
    process: Child,
    /// The call channel (calls, answers to the child's blocking requests).
    writer: Arc<Mutex<UnixStream>>,
    /// The control channel (cancellations; answers to async requests are written there by
    /// the host thread).
    control: Arc<Mutex<UnixStream>>,
    /// Answers (and the end of the stream, as `None`) from the reader thread.
    answers: Receiver<Option<ToParent>>,
    reader: Option<JoinHandle<()>>,
    host: Option<JoinHandle<()>>,
    next_id: u64,
    /// Its place under the engine's total memory limit.
    memory: Arc<ChildMemory>,
}

impl ChildProc {
    fn send(&self, msg: &ToChild) -> Result<()> {
        write_frame(&mut *self.writer.lock().unwrap(), msg)
    }

    fn send_control(&self, msg: &ToChild) -> Result<()> {
        write_frame(&mut *self.control.lock().unwrap(), msg)
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

    /// Whether the child is known to have ended (exited, or its channel closed) before a call
    /// was sent to it. Anything else waiting in the answer queue is a protocol violation,
    /// treated the same.
    fn ended(&mut self) -> bool {
        if self.exited() {
            return true;
        }
        self.answers.try_recv().is_ok()
    }

    /// Whether the process has exited (reaping it, with its pid taken off the memory guard).
    fn exited(&mut self) -> bool {
        let process = &mut self.process;
        self.memory.reaping(|| process.try_wait().ok().flatten().is_some())
    }

    /// Kills the child and waits for it and its threads; returns how it ended.
    fn kill(mut self) -> String {
        self.memory.attach(None);
        // The whole process group (the child is its leader): nothing it started survives it.
        // SAFETY: signalling a process group this pump created.
        unsafe { libc::kill(-(self.process.id() as i32), libc::SIGKILL) };
        let _ = self.process.kill();
        // Nobody reads answers any more: a reader blocked on a full queue must not keep the
        // join below waiting.
        self.answers = crossbeam_channel::never();
        self.reap()
    }

    fn reap(&mut self) -> String {
        // No longer counted, and no longer signalled by the memory guard, once reaped.
        self.memory.attach(None);
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
    program: std::path::PathBuf,
    /// This version's number: only the current version reports status and errors.
    generation: u64,
    in_flight: Running,
    replies: Replies,
    /// Crashes in a row (reset by a call that is answered), for the restart backoff.
    crashes: u32,
    last_crash: Option<Instant>,
    /// The files the first process of this version loaded; every restart starts from them.
    sources: Vec<(std::path::PathBuf, std::path::PathBuf, String)>,
    /// The child under the engine's total memory limit.
    memory: Arc<ChildMemory>,
}

/// How a child was lost (see [`Pump::lost`]), with the error its call gets.
enum Lost {
    Crashed(Error),
    Stopped(Error),
}

impl Pump {
    fn id(&self) -> &str {
        self.config.id()
    }

    /// Whether this version is the one the handle reaches (a version being replaced keeps
    /// answering its queued calls, but no longer speaks for the plugin).
    fn current(&self) -> bool {
        self.shared.is_current(self.generation)
    }

    fn set_status(&self, status: PluginStatus) {
        if self.current() {
            self.shared.set_status(status);
        }
    }

    fn run(mut self, mut rx: MailboxRx, ready: Sender<Result<Vec<String>>>) {
        let mut child = match self.start() {
            Ok((child, hooks)) => {
                let _ = ready.send(Ok(hooks));
                Some(child)
            }
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        // `Recycle`: the engine's memory guard stopped the child while it was idle. While the
        // pump waits, the child's memory is looked at now and then: its background work
        // (timers) may grow it between calls.
        let memory = self.memory.clone();
        while let Some(job) =
            next_job(&mut IdleWatch { rx: &mut rx, memory: &memory }, || self.after_total_stop(&mut child))
        {
            if let Some(e) = job.refusal(self.shared.is_closed()) {
                job.refuse(e);
                continue;
            }
            let Job { hook, args, timeout, ctx, reply, abort } = job;
            // A child that died while idle costs no call: notice it before sending, restart.
            if child.as_mut().is_some_and(ChildProc::ended) {
                self.replace_dead(&mut child);
            }
            if child.is_none() {
                match self.restart() {
                    Ok(c) => child = Some(c),
                    Err(e) => {
                        let r = Err(e);
                        match reply {
                            Some(reply) => reply.send(r),
                            None => drop(r),
                        }
                        continue;
                    }
                }
            }
            let wanted = reply.is_some();
            let (r, reply) = match child.as_mut() {
                Some(c) => self.call(c, &hook, args, timeout, ctx, abort.as_deref(), reply),
                None => unreachable!("started above"),
            };
            let r = match r {
                Ok(v) => {
                    self.crashes = 0;
                    Ok(v)
                }
                Err(Call::Failed(e)) => Err(e),
                Err(Call::Lost(e)) => {
                    let how = child.take().map(ChildProc::kill).unwrap_or_default();
                    let e = Error { message: format!("{} ({how})", e.message), ..e };
                    match self.lost(e) {
                        Lost::Crashed(e) => Err(e),
                        Lost::Stopped(e) => {
                            // Stopped for the engine's total: restarted at once, as in thread mode.
                            child = self.restart().ok();
                            Err(e)
                        }
                    }
                }
            };
            match reply {
                Some(reply) => reply.send(r),
                // The reader answered the caller as the answer arrived.
                None if wanted => {}
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
            while !c.exited() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
            c.kill();
        }
        self.shared.set_pid(self.generation, None);
        self.shared.stats.fold_remote(self.generation);
        refuse_queued(&mut rx);
    }

    /// Waits for the answer to call `id`, telling the child to stop it as soon as its caller
    /// aborts it or the plugin is unloaded (checked every [`CANCEL_CHECK`] while it runs).
    fn await_answer(
        &self,
        c: &ChildProc,
        id: u64,
        deadline: Option<Instant>,
        abort: Option<&Abort>,
    ) -> std::result::Result<ToParent, Gone> {
        let mut told = false;
        loop {
            let tick = Instant::now() + CANCEL_CHECK;
            let until = deadline.map_or(tick, |d| d.min(tick));
            match c.answer(Some(until)) {
                Err(Gone::Unresponsive) if deadline.is_none_or(|d| Instant::now() < d) => {}
                r => return r,
            }
            // Still running: how much memory it holds now, under the engine's total.
            c.memory.refresh();
            if told {
                continue;
            }
            let code = if self.shared.is_closed() {
                ErrorCode::ShutDown
            } else if abort.is_some_and(Abort::is_aborted) {
                ErrorCode::Aborted
            } else {
                continue;
            };
            told = true;
            let _ = c.send_control(&ToChild::Cancel { id, code });
        }
    }

    /// Sends one call and waits for its answer, the child's deadline plus [`GRACE`] at most.
    /// Returns `reply` if it is still to be sent (the reader sends it when the answer comes).
    #[allow(clippy::too_many_arguments)]
    fn call(
        &self,
        c: &mut ChildProc,
        hook: &str,
        args: Value,
        timeout: Option<Duration>,
        ctx: CallContext,
        abort: Option<&Abort>,
        reply: Option<Reply>,
    ) -> (std::result::Result<Value, Call>, Option<Reply>) {
        let started = Instant::now();
        let mut limit = timeout.unwrap_or(self.config.limits.call_timeout);
        if !ctx.chain.is_empty() {
            limit = limit.min(self.config.limits.call_timeout);
        }
        c.next_id += 1;
        let id = c.next_id;
        let deadline = started.checked_add(limit);
        *self.in_flight.lock().unwrap() =
            Some(InFlight { chain: ctx.chain.clone(), event_depth: ctx.event_depth, deadline });
        let msg = ToChild::Call {
            id,
            hook: hook.to_owned(),
            args,
            timeout_ms: Some(limit.as_millis().min(u64::MAX as u128) as u64),
            deadline_ns: u64::try_from(limit.as_nanos()).ok().map(|n| monotonic_ns().saturating_add(n)),
            chain: ctx.chain,
            event_depth: ctx.event_depth,
        };
        *self.replies.lock().unwrap() = reply.map(|reply| Pending { id, reply, sent: started });
        let r = self.exchange(c, id, &msg, deadline.and_then(|d| d.checked_add(GRACE)), limit, started, abort);
        *self.in_flight.lock().unwrap() = None;
        let reply = self.replies.lock().unwrap().take().map(|p| p.reply);
        (r, reply)
    }

    /// Sends `msg` (call `id`) and waits for its answer until `deadline`.
    #[allow(clippy::too_many_arguments)]
    fn exchange(
        &self,
        c: &mut ChildProc,
        id: u64,
        msg: &ToChild,
        deadline: Option<Instant>,
        limit: Duration,
        started: Instant,
        abort: Option<&Abort>,
    ) -> std::result::Result<Value, Call> {
        if let Err(e) = c.send(msg) {
            // Too large to send is the caller's error; anything else, the channel's.
            if e.code == ErrorCode::InvalidArgs {
                self.shared.stats.record_call(Some(ErrorCode::InvalidArgs), started.elapsed());
                return Err(Call::Failed(e));
            }
            self.shared.stats.record_call(Some(ErrorCode::PluginCrashed), started.elapsed());
            return Err(Call::Lost(Error::new(
                ErrorCode::PluginCrashed,
                format!("the plugin's process is gone: {}", e.message),
            )));
        }
        let answer = match self.await_answer(c, id, deadline, abort) {
            // The reader may have taken the answer just as the deadline passed: then it is on
            // its way here, and the child is fine.
            Err(Gone::Unresponsive) => c.answer(Some(Instant::now() + Duration::from_millis(20))),
            r => r,
        };
        match answer {
            Ok(ToParent::Answer { id: got, result, stats, status }) if got == id => {
                self.shared.stats.set_remote(self.generation, *stats);
                // A call that ran a while may have grown the process (one that ran longer
                // than a tick was read meanwhile too).
                if started.elapsed() >= LONG_CALL {
                    c.memory.refresh();
                }
                if reportable(&status) {
                    self.set_status(status);
                }
                result.map_err(Call::Failed)
            }
            Ok(other) => {
                self.shared.stats.record_call(Some(ErrorCode::PluginCrashed), started.elapsed());
                let what = match other {
                    ToParent::Answer { id: got, .. } => format!("an answer to call {got} while call {id} runs"),
                    _ => "a message out of turn".to_owned(),
                };
                Err(Call::Lost(Error::new(
                    ErrorCode::PluginCrashed,
                    format!("the plugin's process broke the protocol: {what}"),
                )))
            }
            Err(Gone::Exited) => {
                self.shared.stats.record_call(Some(ErrorCode::PluginCrashed), started.elapsed());
                Err(Call::Lost(Error::new(ErrorCode::PluginCrashed, "the plugin's process died during the call")))
            }
            Err(Gone::Unresponsive) => {
                self.shared.stats.record_call(Some(ErrorCode::Timeout), started.elapsed());
                let msg = format!(
                    "the call took longer than {} ms and the plugin's process did not stop it; the process was killed",
                    limit.as_millis()
                );
                Err(Call::Lost(Error::new(ErrorCode::Timeout, msg)))
            }
        }
    }

    /// Records a lost child: a crash (restarted by the next call, with backoff), or a stop by
    /// the engine's memory guard (for the caller to restart at once), with the error to give.
    fn lost(&mut self, e: Error) -> Lost {
        let Some((limit, usage)) = self.memory.take_stop() else {
            self.crashed(&e);
            return Lost::Crashed(e);
        };
        let error = Error::new(
            ErrorCode::HeapLimit,
            format!(
                "the engine's total memory limit of {} MiB was reached and this plugin's process held the most ({} MiB); the process was stopped and the plugin is restarted",
                limit >> 20,
                usage >> 20
            ),
        );
        self.shared.set_pid(self.generation, None);
        self.shared.stats.fold_remote(self.generation);
        self.shared.stats.record_restart();
        self.set_status(PluginStatus::Restarting);
        tracing::warn!(plugin = %self.id(), "{}", error.message);
        let event = error.clone().in_context(self.id(), None);
        self.shared.emit(LifecycleEvent::Restarted { plugin: self.id().to_owned(), error: event });
        Lost::Stopped(error)
    }

    /// Replaces a child found dead while idle: a crash is restarted by the next call, a stop
    /// by the memory guard at once.
    fn replace_dead(&mut self, child: &mut Option<ChildProc>) {
        let how = child.take().map(ChildProc::kill).unwrap_or_default();
        let e = Error::new(ErrorCode::PluginCrashed, format!("the plugin's process ended while idle ({how})"));
        if let Lost::Stopped(_) = self.lost(e) {
            *child = self.restart().ok();
        }
    }

    /// A `Recycle` request: if the memory guard stopped the idle child, restart it now.
    fn after_total_stop(&mut self, child: &mut Option<ChildProc>) {
        if self.memory.was_stopped() && child.is_some() {
            self.replace_dead(child);
        }
    }

    /// Records a crashed child: status, counters, an event. The next call restarts it.
    fn crashed(&mut self, e: &Error) {
        self.shared.set_pid(self.generation, None);
        self.crashes += 1;
        self.last_crash = Some(Instant::now());
        self.shared.stats.fold_remote(self.generation);
        self.shared.stats.record_restart();
        self.set_status(PluginStatus::Restarting);
        tracing::warn!(plugin = %self.id(), "the plugin's process ended: {e}");
        let error = e.clone().in_context(self.id(), None);
        self.shared.emit(LifecycleEvent::Crashed { plugin: self.id().to_owned(), error });
    }

    /// Starts a child again after a crash, unless the plugin is still backing off (calls
    /// then fail at once, never wait: a crash-looping plugin must not hold up an unload) or
    /// was stopped meanwhile.
    fn restart(&mut self) -> Result<ChildProc> {
        if self.shared.is_closed() {
            return Err(Error::new(ErrorCode::ShutDown, "the plugin was stopped"));
        }
        // The first restart is immediate; a plugin that keeps crashing waits 50 ms, 100 ms, ...
        let backoff = match self.crashes {
            0 | 1 => Duration::ZERO,
            n => Duration::from_millis(50u64 << (n - 2).min(7)).min(MAX_BACKOFF),
        };
        if let Some(at) = self.last_crash {
            let left = (at + backoff).saturating_duration_since(Instant::now());
            if !left.is_zero() {
                let msg = format!(
                    "the plugin's process crashed {} times in a row; it is restarted in {} ms",
                    self.crashes,
                    left.as_millis()
                );
                return Err(Error::new(ErrorCode::PluginCrashed, msg));
            }
        }
        match self.start() {
            Ok((c, _hooks)) => {
                self.set_status(PluginStatus::Ready);
                Ok(c)
            }
            Err(e) => {
                let e = e.in_context(self.id(), None);
                tracing::error!(plugin = %self.id(), "restart failed: {e}");
                if self.current() {
                    self.shared.update_info(|i| i.last_error = Some(e.clone()));
                }
                self.set_status(PluginStatus::Failed);
                self.last_crash = Some(Instant::now());
                self.crashes += 1;
                Err(e)
            }
        }
    }

    /// Starts a child, checks its hello, hands it the plugin and waits for it to load.
    fn start(&mut self) -> Result<(ChildProc, Vec<String>)> {
        let fail = |msg: String| Error::new(ErrorCode::LoadFailed, msg);
        let (mine, theirs) = UnixStream::pair().map_err(|e| fail(format!("cannot create a channel: {e}")))?;
        // A child that stops reading must not block the host's writes for good.
        let write_timeout = WRITE_TIMEOUT.max(self.config.limits.call_timeout.saturating_add(GRACE));
        mine.set_write_timeout(Some(write_timeout)).map_err(|e| fail(e.to_string()))?;
        let writer = Arc::new(Mutex::new(mine.try_clone().map_err(|e| fail(e.to_string()))?));
        // The second channel carries what must reach the child while its plugin's thread runs
        // (cancellations, answers to async requests); the first, read by that thread itself,
        // what it waits for (calls, answers to its blocking requests).
        let (control, theirs_control) =
            UnixStream::pair().map_err(|e| fail(format!("cannot create a channel: {e}")))?;
        control.set_write_timeout(Some(write_timeout)).map_err(|e| fail(e.to_string()))?;
        let control = Arc::new(Mutex::new(control));
        // The threads come first: if the process cannot start, dropping its end of the channel
        // ends them, and nothing is left behind.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| fail(format!("cannot start tokio: {e}")))?;
        let (answers_tx, answers) = crossbeam_channel::bounded(16);
        let (host_tx, host_rx) = tokio::sync::mpsc::unbounded_channel();
        // Once loaded, the child only sends answers and requests, capped like them.
        let l = &self.config.limits;
        let cap = l.max_result_bytes.max(MAX_MESSAGE_BYTES).max(self.config.storage_quota.value_bytes as usize);
        let after_load = cap.saturating_add(1 << 20).min(MAX_FRAME);
        let side = |writer: &Arc<Mutex<UnixStream>>| HostSide {
            engine: self.engine.clone(),
            config: self.config.clone(),
            peers: self.peers.clone(),
            writer: writer.clone(),
            in_flight: self.in_flight.clone(),
        };
        let reader = Reader {
            id: self.id().to_owned(),
            shared: self.shared.clone(),
            generation: self.generation,
            answers: answers_tx,
            replies: self.replies.clone(),
            memory: self.memory.clone(),
            host: host_tx,
            inline: side(&writer),
            runtime: rt.handle().clone(),
            limit: MAX_FRAME,
            after_load,
        };
        let mut stream = mine;
        let reader = std::thread::Builder::new()
            .name(format!("isola:{}:rx", self.id()))
            .spawn(move || reader.run(&mut stream))
            .map_err(|e| fail(format!("cannot start a thread: {e}")))?;
        let host = side(&control);
        let host = std::thread::Builder::new()
            .name(format!("isola:{}:host", self.id()))
            .spawn(move || host.run(rt, host_rx))
            .map_err(|e| fail(format!("cannot start a thread: {e}")))?;
        let process = match self.command(&theirs, &theirs_control).spawn() {
            Ok(p) => p,
            Err(e) => {
                drop((theirs, theirs_control));
                drop((writer, control));
                let _ = reader.join();
                let _ = host.join();
                return Err(fail(format!("cannot start {}: {e}", self.program.display())));
            }
        };
        drop((theirs, theirs_control));
        let mut child = ChildProc {
            process,
            writer,
            control,
            answers,
            reader: Some(reader),
            host: Some(host),
            next_id: 0,
            memory: self.memory.clone(),
        };
        let deadline = Instant::now().checked_add(self.config.limits.load_timeout).and_then(|d| d.checked_add(GRACE));
        let program = self.program.display().to_string();
        let refuse = |child: ChildProc, msg: String| -> Result<(ChildProc, Vec<String>)> {
            let how = child.kill();
            Err(fail(format!("{msg} ({how})")))
        };
        match child.answer(deadline) {
            Ok(ToParent::Hello { protocol, .. }) if protocol == PROTOCOL_VERSION => {}
            Ok(ToParent::Hello { protocol, .. }) => {
                let msg = format!(
                    "{program} speaks isola worker protocol {protocol}, this host {PROTOCOL_VERSION}; use the same isola version for both"
                );
                return refuse(child, msg);
            }
            Ok(_) => return refuse(child, format!("{program} did not start as an isola worker")),
            Err(_) => {
                let msg = format!(
                    "{program} did not start as an isola worker (does its main call isola::process::run_worker_if_requested()?)"
                );
                return refuse(child, msg);
            }
        }
        // Loading runs the plugin's top-level code, which may ask the host for things.
        *self.in_flight.lock().unwrap() =
            Some(InFlight { chain: Vec::new(), event_depth: 0, deadline: deadline.and_then(|d| d.checked_sub(GRACE)) });
        let init = ToChild::Init { protocol: PROTOCOL_VERSION, plugin: Box::new(self.child_plugin()) };
        let loaded = match child.send(&init) {
            Ok(()) => child.answer(deadline),
            Err(e) => return refuse(child, e.message),
        };
        *self.in_flight.lock().unwrap() = None;
        match loaded {
            Ok(ToParent::Loaded { result: Ok(hooks), stats, sources }) => {
                self.shared.stats.set_remote(self.generation, *stats);
                if self.sources.is_empty() {
                    self.sources = sources;
                }
                child.next_id = 0;
                self.shared.set_pid(self.generation, Some(child.process.id()));
                self.memory.attach(Some(child.process.id()));
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
                Err(Error::new(
                    ErrorCode::Timeout,
                    format!("loading took longer than {ms} ms; the process was killed ({how})"),
                ))
            }
            Err(Gone::Exited) => {
                let how = child.kill();
                Err(Error::new(ErrorCode::PluginCrashed, format!("the plugin's process died while loading ({how})")))
            }
        }
    }

    /// The worker's command line: the channel as fd 3 and nothing else inherited, in a process
    /// group of its own (a terminal's Ctrl-C is for the host, which stops its plugins itself),
    /// dying with the thread that starts it (the pump, which outlives it), no core dumps.
    fn command(&self, theirs: &UnixStream, control: &UnixStream) -> Command {
        let (fd, control) = (theirs.as_raw_fd(), control.as_raw_fd());
        let mut cmd = Command::new(&self.program);
        cmd.arg("worker")
            .env(WORKER_FD_ENV, CHILD_FD.to_string())
            .env(WORKER_CONTROL_FD_ENV, (CHILD_FD + 1).to_string())
            .env(PARENT_PID_ENV, std::process::id().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .process_group(0);
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                // Both channels go to fds 3 and 4, by way of fresh numbers above them so that
                // neither overwrites the other; the copies close at exec.
                let calls = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, CHILD_FD + 2);
                let ctl = libc::fcntl(control, libc::F_DUPFD_CLOEXEC, CHILD_FD + 2);
                if calls < 0 || ctl < 0 || libc::dup2(calls, CHILD_FD) < 0 || libc::dup2(ctl, CHILD_FD + 1) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // Everything above fd 4 closes at exec (marked, not closed: std still needs its
                // own pipe to report a failed exec).
                const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
                let first = CHILD_FD + 2;
                if libc::syscall(libc::SYS_close_range, first as u32, u32::MAX, CLOSE_RANGE_CLOEXEC) != 0 {
                    let max = libc::sysconf(libc::_SC_OPEN_MAX).clamp(1024, 1 << 20) as i32;
                    for other in first..max {
                        libc::fcntl(other, libc::F_SETFD, libc::FD_CLOEXEC);
                    }
                }
                let none = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
                libc::setrlimit(libc::RLIMIT_CORE, &none);
                // If the machine runs out of memory anyway, the kernel's OOM killer takes a
                // plugin's process (restarted by the pump) before the host.
                let adj = c"/proc/self/oom_score_adj";
                let f = libc::open(adj.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if f >= 0 {
                    libc::write(f, OOM_SCORE_ADJ.as_ptr().cast(), OOM_SCORE_ADJ.len());
                    libc::close(f);
                }
                Ok(())
            });
        }
        cmd
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
            seccomp: self.engine.seccomp(),
        }
    }
}

/// Why a call got no answer from the plugin.
enum Call {
    /// The plugin answered with an error (or the call could not be sent, the child is fine).
    Failed(Error),
    /// The process died, broke the protocol, or was killed.
    Lost(Error),
}

/// A plugin process's `oom_score_adj` (-1000..1000; a host's is usually 0): half the
/// machine's memory is added to its badness, so the OOM killer picks it over the host.
const OOM_SCORE_ADJ: &[u8] = b"500";

/// The fd number the child finds its channel on.
const CHILD_FD: i32 = 3;

/// Reads everything the child sends until its end.
struct Reader {
    id: String,
    shared: Arc<Shared>,
    generation: u64,
    answers: Sender<Option<ToParent>>,
    /// The caller of the running call, answered from here.
    replies: Replies,
    /// The child's memory under the engine's total, read again before a long call's caller
    /// hears its answer.
    memory: Arc<ChildMemory>,
    host: tokio::sync::mpsc::UnboundedSender<(u64, Ask)>,
    /// Answers the requests that need not wait, right here.
    inline: HostSide,
    /// The host thread's runtime, entered here too, so that a sync host function sees a tokio
    /// context as it does on a plugin's thread.
    runtime: tokio::runtime::Handle,
    /// The largest frame accepted now: any size while the child loads (its `Loaded` carries
    /// the plugin's files), `after_load` from then on.
    limit: usize,
    after_load: usize,
}

impl Reader {
    fn run(mut self, stream: &mut UnixStream) {
        crate::host::set_current_plugin(&self.id);
        let runtime = self.runtime.clone();
        let _context = runtime.enter();
        loop {
            match read_frame::<ToParent>(stream, self.limit) {
                // Requests that finish without waiting (sync host functions, storage, emits)
                // are answered right here: the child's plugin thread is blocked on them anyway,
                // and this saves a hand-off to the host thread. What may wait goes there.
                Ok(Some(ToParent::Ask { id, ask })) if self.inline.is_quick(&ask) => {
                    let inline = &self.inline;
                    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inline.answer_now(ask)))
                        .unwrap_or_else(|p| Err(Error::new(ErrorCode::HostError, panicked(p).message)));
                    let _ = write_frame(&mut *inline.writer.lock().unwrap(), &ToChild::Reply { id, result });
                }
                Ok(Some(ToParent::Ask { id, ask })) => {
                    let _ = self.host.send((id, ask));
                }
                Ok(Some(ToParent::Log { level, msg })) => crate::call::log_line(&self.id, level, &msg),
                Ok(Some(ToParent::Event(e))) => self.event(e),
                Ok(Some(ToParent::Answer { id, result, stats, status })) => {
                    // The caller hears at once; the pump only learns that the call ended.
                    let pending = {
                        let mut slot = self.replies.lock().unwrap();
                        if slot.as_ref().is_some_and(|p| p.id == id) { slot.take() } else { None }
                    };
                    let result = match pending {
                        Some(p) => {
                            self.shared.stats.set_remote(self.generation, (*stats).clone());
                            if self.shared.is_current(self.generation) && reportable(&status) {
                                self.shared.set_status(status);
                            }
                            // A call that ran a while may have grown the process: the caller
                            // must find it counted when it hears (a quick one is read at the
                            // next tick, sparing every short call a read of /proc).
                            if p.sent.elapsed() >= LONG_CALL {
                                self.memory.refresh();
                            }
                            let ended = result.as_ref().map(|_| Value::Null).map_err(Clone::clone);
                            p.reply.send(result);
                            ended
                        }
                        None => result,
                    };
                    if self.answers.send(Some(ToParent::Answer { id, result, stats, status })).is_err() {
                        return;
                    }
                }
                Ok(Some(msg)) => {
                    if matches!(msg, ToParent::Loaded { .. }) {
                        self.limit = self.after_load;
                    }
                    if self.answers.send(Some(msg)).is_err() {
                        return;
                    }
                }
                Ok(None) | Err(_) => {
                    let _ = self.answers.send(None);
                    return;
                }
            }
        }
    }

    /// A lifecycle event from inside the child. Only the kinds a child has to tell, and only
    /// about its own plugin, whatever it claims.
    fn event(&self, e: LifecycleEvent) {
        let plugin = self.id.clone();
        let e = match e {
            LifecycleEvent::Restarted { error, .. } => {
                if self.shared.is_current(self.generation) {
                    self.shared.set_status(PluginStatus::Restarting);
                }
                LifecycleEvent::Restarted { plugin, error }
            }
            // A fresh instance of a stateless plugin that failed to load (the next call tries
            // again, and its answer reports the plugin ready when that works).
            LifecycleEvent::RestartFailed { error, .. } => {
                if self.shared.is_current(self.generation) {
                    self.shared.set_status(PluginStatus::Failed);
                }
                LifecycleEvent::RestartFailed { plugin, error }
            }
            LifecycleEvent::HookFailed { error, .. } => LifecycleEvent::HookFailed { plugin, error },
            _ => return,
        };
        self.shared.emit(e);
    }
}

/// Answers the child's requests in the host.
struct HostSide {
    engine: Engine,
    config: Arc<PluginConfig>,
    peers: Arc<dyn Peers>,
    writer: Arc<Mutex<UnixStream>>,
    in_flight: Running,
}

impl HostSide {
    fn run(self, rt: tokio::runtime::Runtime, mut jobs: tokio::sync::mpsc::UnboundedReceiver<(u64, Ask)>) {
        crate::host::set_current_plugin(self.config.id());
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
            std::task::Poll::Pending => {
                Err(Error::new(ErrorCode::HostError, "a host request that should not wait did"))
            }
        }
    }

    /// Does what the child asked, checking again that its plugin may: the child is not trusted.
    /// Call chains, event depths and deadlines come from the call the host knows is running.
    async fn answer(&self, ask: Ask) -> Result<Value> {
        // Between calls (a restart inside the child re-running the plugin's top-level code),
        // the child asks as a plugin being loaded: no callers, within its load time limit.
        let running = self.in_flight.lock().unwrap().clone().unwrap_or_else(|| InFlight {
            chain: Vec::new(),
            event_depth: 0,
            deadline: Instant::now().checked_add(self.config.limits.load_timeout),
        });
        let granted = &self.config.permissions.granted;
        let holds = |p: &str| granted.iter().any(|g| g == p);
        let denied = |what: String| Error::new(ErrorCode::PermissionDenied, what);
        let plugin = self.config.id();
        match ask {
            Ask::Host { name, args } => {
                let host = self.engine.host();
                if let Some(p) = host.permission_of(&name).filter(|p| !holds(p)) {
                    return Err(denied(format!(
                        "plugin `{plugin}` lacks the permission `{p}` that host.{name} requires"
                    )));
                }
                let item = host.items().find(|(n, _)| *n == name).map(|(_, item)| item.clone());
                let deadline = running.deadline;
                let r = match item {
                    Some(HostItem::Sync(f)) => crate::host::with_deadline(deadline, || f(args)),
                    Some(HostItem::Async(f)) => crate::host::with_deadline(deadline, || f(args)).await,
                    _ => return Err(Error::new(ErrorCode::HostError, format!("no host function `{name}`"))),
                };
                r.map_err(|e| {
                    let mut out = Error::new(e.code, e.message);
                    out.detail = e.detail.map(Box::new);
                    out
                })
            }
            Ask::Storage { op, key, value } => {
                if !holds(STORAGE) {
                    return Err(denied(format!("plugin `{plugin}` lacks the permission `storage`")));
                }
                let backend = self.engine.storage().backend();
                let quota = &self.config.storage_quota;
                let r = match op {
                    0 => check_key(&key)
                        .and_then(|_| backend.get(plugin, &key))
                        .map(|v| v.map_or(Value::Null, Value::String)),
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
            Ask::CallPlugin { to, hook, args, timeout_ms, .. } => {
                if !may_call(granted, &to) {
                    return Err(denied(format!("plugin `{plugin}` lacks the permission `call:{to}`")));
                }
                let mut chain = running.chain;
                chain.push(plugin.to_owned());
                if chain.contains(&to) {
                    return Err(Error::new(
                        ErrorCode::CallCycle,
                        format!("{} → {to}: `{to}` is already waiting", chain.join(" → ")),
                    ));
                }
                if chain.len() >= MAX_CALL_DEPTH {
                    return Err(Error::new(
                        ErrorCode::CallDepth,
                        format!("plugin call chains are limited to {MAX_CALL_DEPTH} plugins"),
                    ));
                }
                check_size("the argument list", &args)?;
                let left = running.deadline.map_or(Duration::MAX, |d| d.saturating_duration_since(Instant::now()));
                let timeout = Duration::from_millis(timeout_ms).min(left);
                let ctx = CallContext { chain, event_depth: running.event_depth, ..Default::default() };
                self.peers.call(plugin, &to, &hook, args, timeout, ctx)?.await
            }
            Ask::Emit { event, payload, .. } => {
                if !holds(EVENTS) {
                    return Err(denied(format!("plugin `{plugin}` lacks the permission `events`")));
                }
                let depth = running.event_depth + 1;
                if depth > MAX_EVENT_DEPTH {
                    return Err(Error::new(
                        ErrorCode::EventDepth,
                        format!("events may nest at most {MAX_EVENT_DEPTH} deep"),
                    ));
                }
                check_size("the event payload", &payload)?;
                self.peers.emit(&event, payload, depth).map(|n| Value::from(n as u64))
            }
        }
    }
}

/// Whether a status a child reports may be taken over: a child only reports on itself, never
/// stopped or loading.
fn reportable(status: &PluginStatus) -> bool {
    matches!(status, PluginStatus::Ready | PluginStatus::Restarting | PluginStatus::Failed)
}

/// What a plugin sends other plugins is bounded as in thread mode.
fn check_size(what: &str, v: &Value) -> Result<()> {
    let len = serde_json::to_string(v).map(|t| t.len()).unwrap_or(usize::MAX);
    if len > MAX_MESSAGE_BYTES {
        return Err(Error::new(
            ErrorCode::InvalidArgs,
            format!("{what} is {len} bytes as JSON; at most {MAX_MESSAGE_BYTES} are allowed"),
        ));
    }
    Ok(())
}
