//! The child process side: one plugin, run by the same worker thread and runtime as in thread
//! mode, with everything that belongs to the host reached over the channel.
//!
//! The worker needs an engine (host API, storage), the plugin's resolved configuration and its
//! peers. Here each of those forwards to the parent: a host function sends [`Ask::Host`] and
//! waits for the reply (sync functions block the plugin's thread, async ones await), storage
//! is a [`StorageBackend`] that asks, and [`Peers`] asks for plugin calls and emits. The
//! permission checks run here first, as in thread mode, and the parent checks again.

use std::collections::HashMap;
use std::os::unix::io::{AsRawFd, FromRawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::wire::{
    Ask, ChildPlugin, HostKind, MAX_FRAME, PROTOCOL_VERSION, ToChild, ToParent, monotonic_ns, read_frame, write_frame,
};
use crate::call::{CallContext, Inbox, Reply, Request};
use crate::cancel::Abort;
use crate::config::PluginConfig;
use crate::engine::{Engine, Isolation, Limits};
use crate::error::{Error, ErrorCode, Result};
use crate::events::EventBus;
use crate::handle::Shared;
use crate::host::{HostApi, HostFnError, HostItem};
use crate::permissions::Permissions;
use crate::runtime::loader::SourceCache;
use crate::runtime::peers::{Answer, Peers};
use crate::storage::{Storage, StorageBackend, StorageError, StorageQuota, Usage};

/// The child's ends of its two channels (see `wire.rs`): sends frames (from any thread),
/// reads the call channel on the plugin's thread, and matches replies to the requests that
/// wait for them.
struct Link {
    writer: Mutex<UnixStream>,
    /// The call channel's reading end: only the plugin's thread reads it, for the next call
    /// (as its [`Inbox`]) and for the reply to a blocking request.
    calls: Mutex<UnixStream>,
    /// A call (or stop) read while the plugin's thread waited for a reply: a restart inside
    /// this process re-runs the plugin's top-level code, which may ask the host for things
    /// while the parent already sends the next call. The inbox takes it from here first.
    early: Mutex<std::collections::VecDeque<ToChild>>,
    /// Async requests waiting for their reply (which comes on the control channel).
    pending: Mutex<HashMap<u64, tokio::sync::oneshot::Sender<Result<Value>>>>,
    /// Calls the parent may still cancel, by id.
    running: Mutex<HashMap<u64, Arc<Abort>>>,
    /// Cancellations of calls not read yet, by id.
    cancels: Mutex<HashMap<u64, ErrorCode>>,
    next: AtomicU64,
}

impl Link {
    fn send(&self, msg: &ToParent) -> Result<()> {
        write_frame(&mut *self.writer.lock().unwrap(), msg)
    }

    /// A request the plugin's thread waits for: the host answers it on the call channel,
    /// read right here (no other thread has to wake this one).
    fn ask_blocking(&self, ask: Ask) -> Result<Value> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.send(&ToParent::Ask { id, ask })?;
        let mut calls = self.calls.lock().unwrap();
        loop {
            match read_frame::<ToChild>(&mut *calls, MAX_FRAME) {
                Ok(Some(ToChild::Reply { id: got, result })) if got == id => return result,
                Ok(Some(msg @ (ToChild::Call { .. } | ToChild::Stop))) => self.early.lock().unwrap().push_back(msg),
                Ok(Some(other)) => self.handle(other),
                Ok(None) | Err(_) => return Err(host_gone()),
            }
        }
    }

    fn ask_async(&self, ask: Ask) -> impl std::future::Future<Output = Result<Value>> + Send + 'static {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.pending.lock().unwrap().insert(id, tx);
        if let Err(e) = self.send(&ToParent::Ask { id, ask }) {
            self.complete(id, Err(e));
        }
        async move { rx.await.unwrap_or_else(|_| Err(host_gone())) }
    }

    fn complete(&self, id: u64, result: Result<Value>) {
        if let Some(tx) = self.pending.lock().unwrap().remove(&id) {
            let _ = tx.send(result);
        }
    }

    /// What may come on either channel at any time: replies to async requests, cancellations.
    fn handle(&self, msg: ToChild) {
        match msg {
            ToChild::Reply { id, result } => self.complete(id, result),
            ToChild::Cancel { id, code } => {
                let abort = self.running.lock().unwrap().get(&id).cloned();
                match abort {
                    Some(abort) => abort.abort_with(code),
                    // Not read yet (the plugin's thread is busy with background work): kept
                    // for when it is.
                    None => {
                        let mut early = self.cancels.lock().unwrap();
                        if early.len() < 64 {
                            early.insert(id, code);
                        }
                    }
                }
            }
            // A call while another runs, or a second init: the parent never sends them.
            ToChild::Call { .. } | ToChild::Init { .. } | ToChild::Stop => {}
        }
    }

    /// A cancellation that came before call `id` was read; forgets older ones (ids only grow).
    fn take_early_cancel(&self, id: u64) -> Option<ErrorCode> {
        let mut early = self.cancels.lock().unwrap();
        let code = early.remove(&id);
        early.retain(|&other, _| other > id);
        code
    }

    /// The parent is gone: nothing pending will be answered.
    fn fail_all(&self) {
        for (_, tx) in self.pending.lock().unwrap().drain() {
            let _ = tx.send(Err(host_gone()));
        }
    }
}

/// The plugin thread's inbox: the calls the parent sends, read from the call channel.
struct CallChannel {
    link: Arc<Link>,
    shared: Arc<Shared>,
    /// The host said stop, or the channel ended: nothing more will come.
    ended: bool,
}

impl Inbox for CallChannel {
    fn recv(&mut self) -> Option<Request> {
        if self.ended {
            return None;
        }
        loop {
            let early = self.link.early.lock().unwrap().pop_front();
            let msg = match early {
                Some(msg) => Ok(Some(msg)),
                None => read_frame::<ToChild>(&mut *self.link.calls.lock().unwrap(), MAX_FRAME),
            };
            match msg {
                Ok(Some(ToChild::Call { id, hook, args, timeout_ms, deadline_ns, chain, event_depth })) => {
                    let timeout = timeout_ms.map(Duration::from_millis);
                    // The host's deadline, as an instant here: the time this call waited to be
                    // read counts (it is refused if the deadline passed meanwhile).
                    let deadline =
                        deadline_ns.map(|d| Instant::now() + Duration::from_nanos(d.saturating_sub(monotonic_ns())));
                    let ctx = CallContext { chain, event_depth, deadline, ..Default::default() };
                    let (link, shared) = (self.link.clone(), self.shared.clone());
                    let abort = Arc::new(Abort::default());
                    // Cancelled before it was read: it is answered at once, without running.
                    if let Some(code) = link.take_early_cancel(id) {
                        abort.abort_with(code);
                    }
                    link.running.lock().unwrap().insert(id, abort.clone());
                    // The plugin's thread writes the answer itself.
                    let reply = Reply::Func(Box::new(move |result| {
                        link.running.lock().unwrap().remove(&id);
                        let stats = Box::new(shared.stats.snapshot());
                        let _ = link.send(&ToParent::Answer { id, result, stats, status: shared.status() });
                    }));
                    return Some(Request::Call { hook, args, timeout, ctx, reply, abort: Some(abort) });
                }
                Ok(Some(ToChild::Stop)) | Ok(None) | Err(_) => {
                    self.ended = true;
                    return None;
                }
                Ok(Some(other)) => self.link.handle(other),
            }
        }
    }

    fn try_recv(&mut self) -> Option<Request> {
        // Something to read (a frame, or the end): read it, it arrives whole promptly.
        if self.ended
            || self.link.early.lock().unwrap().is_empty() && !readable(self.link.calls.lock().unwrap().as_raw_fd())
        {
            return None;
        }
        Some(self.recv().unwrap_or(Request::Stop))
    }

    /// Resolves once the call channel has something to read (or was closed), so the plugin's
    /// background work can run while this process waits for its next call.
    fn ready(&mut self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + '_>> {
        Box::pin(async move {
            if self.ended || !self.link.early.lock().unwrap().is_empty() {
                return;
            }
            let fd = self.link.calls.lock().unwrap().as_raw_fd();
            if readable(fd) {
                return;
            }
            // SAFETY: the descriptor stays open while this waits (the link owns it and outlives
            // the wait), and it is deregistered when `afd` goes, before anything closes it.
            let registered =
                unsafe { tokio::io::unix::AsyncFd::register_with_interest(Fd(fd), tokio::io::Interest::READABLE) };
            let Ok(afd) = registered else {
                return; // cannot wait for it: look (a blocking read) instead
            };
            loop {
                let Ok(mut guard) = afd.readable().await else { return };
                if readable(fd) {
                    return;
                }
                guard.clear_ready();
            }
        })
    }
}

/// Whether `fd` has something to read (or its end) right now.
fn readable(fd: i32) -> bool {
    let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd, no waiting.
    unsafe { libc::poll(&mut p, 1, 0) > 0 }
}

/// A descriptor to wait on, owned elsewhere (it is not closed when this goes).
struct Fd(i32);

impl std::os::unix::io::AsRawFd for Fd {
    fn as_raw_fd(&self) -> i32 {
        self.0
    }
}

fn host_gone() -> Error {
    Error::new(ErrorCode::ShutDown, "the host process is gone")
}

fn to_host_fn_error(e: Error) -> HostFnError {
    HostFnError::new(e.code, e.message).with_detail(e.detail.map(|d| *d))
}

/// Storage that lives in the parent (its one database, its quota).
struct RemoteStorage(Arc<Link>);

impl RemoteStorage {
    fn op(&self, op: u32, key: &str, value: &str) -> std::result::Result<Value, StorageError> {
        let ask = Ask::Storage { op, key: key.to_owned(), value: value.to_owned() };
        self.0.ask_blocking(ask).map_err(|e| match e.code {
            ErrorCode::QuotaExceeded => StorageError::Quota(e.message),
            ErrorCode::InvalidArgs => StorageError::InvalidKey(e.message),
            _ => StorageError::Backend(e.message),
        })
    }
}

impl StorageBackend for RemoteStorage {
    fn get(&self, _: &str, key: &str) -> std::result::Result<Option<String>, StorageError> {
        Ok(self.op(0, key, "")?.as_str().map(str::to_owned))
    }
    fn set(&self, _: &str, key: &str, value: &str, quota: &StorageQuota) -> std::result::Result<(), StorageError> {
        // A value over the quota is refused here, as the host would, without sending it.
        if value.len() as u64 > quota.value_bytes {
            return Err(StorageError::Quota(format!(
                "value quota exceeded: the value is {} bytes, the largest allowed is {} bytes",
                value.len(),
                quota.value_bytes
            )));
        }
        self.op(1, key, value).map(drop)
    }
    fn delete(&self, _: &str, key: &str) -> std::result::Result<bool, StorageError> {
        Ok(self.op(2, key, "")?.as_bool().unwrap_or(false))
    }
    fn list(&self, _: &str, prefix: &str) -> std::result::Result<Vec<String>, StorageError> {
        Ok(serde_json::from_value(self.op(3, prefix, "")?).unwrap_or_default())
    }
    fn usage(&self, _: &str) -> std::result::Result<Usage, StorageError> {
        Err(StorageError::Backend("usage is not available inside a plugin's process".into()))
    }
    fn remove_plugin(&self, _: &str) -> std::result::Result<(), StorageError> {
        Err(StorageError::Backend("removing data is not available inside a plugin's process".into()))
    }
}

/// The other plugins, through the parent.
struct RemotePeers(Arc<Link>);

impl Peers for RemotePeers {
    fn call(
        &self,
        _from: &str,
        to: &str,
        hook: &str,
        args: Value,
        timeout: Duration,
        ctx: CallContext,
    ) -> Result<Answer> {
        let ask = Ask::CallPlugin {
            to: to.to_owned(),
            hook: hook.to_owned(),
            args,
            timeout_ms: timeout.as_millis().min(u64::MAX as u128) as u64,
            chain: ctx.chain,
            event_depth: ctx.event_depth,
        };
        Ok(Box::pin(self.0.ask_async(ask)))
    }

    fn emit(&self, event: &str, payload: Value, depth: u32) -> Result<usize> {
        let n = self.0.ask_blocking(Ask::Emit { event: event.to_owned(), payload, depth })?;
        Ok(n.as_u64().unwrap_or(0) as usize)
    }
}

/// The host API as the parent declared it, each function forwarding to the parent.
fn host_api(link: &Arc<Link>, plugin: &ChildPlugin) -> HostApi {
    let mut host = HostApi::new();
    for d in &plugin.host {
        let name = d.name.clone();
        let item = match &d.kind {
            HostKind::Value(v) => HostItem::Value(v.clone()),
            HostKind::Sync => {
                let link = link.clone();
                HostItem::Sync(Arc::new(move |args: Value| {
                    link.ask_blocking(Ask::Host { name: name.clone(), args }).map_err(to_host_fn_error)
                }))
            }
            HostKind::Async => {
                let link = link.clone();
                HostItem::Async(Arc::new(move |args: Value| {
                    let answer = link.ask_async(Ask::Host { name: name.clone(), args });
                    Box::pin(async move { answer.await.map_err(to_host_fn_error) })
                }))
            }
        };
        host = host.with_item(&d.name, item);
        if let Some(p) = &d.permission {
            host = host.requires(&d.name, p);
        }
    }
    host
}

/// Makes this process die with its parent and leave no core dump.
fn harden(parent: Option<u32>) {
    // SAFETY: plain syscalls with constant arguments.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        let none = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        libc::setrlimit(libc::RLIMIT_CORE, &none);
    }
    // The parent may have died before the line above: then nobody would kill us.
    if let Some(p) = parent
        // SAFETY: getppid cannot fail.
        && unsafe { libc::getppid() } as u32 != p
    {
        std::process::exit(0);
    }
}

/// Runs one plugin for the parent on the call channel `fd` and the control channel `control`;
/// returns the exit status.
pub(crate) fn run(fd: i32, control: Option<i32>, parent: Option<u32>) -> i32 {
    harden(parent);
    // A worker runs no embedder code: a panic here is a bug in isola or below it. End the
    // process, so that the host answers the call with PLUGIN_CRASHED at once, instead of
    // leaving a thread dead and the call waiting for its deadline.
    std::panic::set_hook(Box::new(|info| {
        eprintln!("isola worker: {info}");
        std::process::abort();
    }));
    // The descriptors must be the sockets the host passed, not whatever a stray variable names.
    let is_socket = |fd: i32| {
        // SAFETY: fstat on a descriptor number only reads its metadata.
        unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            libc::fstat(fd, &mut st) == 0 && (st.st_mode & libc::S_IFMT) == libc::S_IFSOCK
        }
    };
    if !is_socket(fd) {
        eprintln!("isola worker: descriptor {fd} is not the channel to a host");
        return 2;
    }
    // SAFETY: the parent passed us this descriptor for exactly this purpose; nothing else owns it.
    let stream = unsafe { UnixStream::from_raw_fd(fd) };
    let Ok(writer) = stream.try_clone() else { return 2 };
    let link = Arc::new(Link {
        writer: Mutex::new(writer),
        calls: Mutex::new(stream),
        early: Mutex::default(),
        pending: Mutex::new(HashMap::new()),
        running: Mutex::new(HashMap::new()),
        cancels: Mutex::new(HashMap::new()),
        next: AtomicU64::new(1),
    });
    // Hello first, on the call channel alone: a host of another protocol version learns it
    // even if it passed no control channel.
    if link.send(&ToParent::Hello { protocol: PROTOCOL_VERSION, pid: std::process::id() }).is_err() {
        return 2;
    }
    let plugin = match read_frame::<ToChild>(&mut *link.calls.lock().unwrap(), MAX_FRAME) {
        Ok(Some(ToChild::Init { protocol, plugin })) if protocol == PROTOCOL_VERSION => plugin,
        Ok(Some(ToChild::Init { protocol, .. })) => {
            eprintln!("isola worker: the host speaks protocol {protocol}, this worker {PROTOCOL_VERSION}");
            return 3;
        }
        _ => return 2,
    };
    let Some(control) = control.filter(|&c| is_socket(c)) else {
        eprintln!("isola worker: the host passed no control channel");
        return 2;
    };
    // SAFETY: as above, the parent's second descriptor.
    let control = unsafe { UnixStream::from_raw_fd(control) };
    serve(link, control, *plugin)
}

fn serve(link: Arc<Link>, mut control: UnixStream, plugin: ChildPlugin) -> i32 {
    let console = link.clone();
    crate::runtime::ops::set_console(Box::new(move |_plugin, level, msg| {
        // Cut like error texts: a log line must fit what the host reads from a worker.
        let _ = console.send(&ToParent::Log { level, msg: crate::engine::capped(msg.to_owned()) });
    }));
    let storage = Storage::new(RemoteStorage(link.clone())).with_quota(plugin.storage_quota);
    let engine = Engine::builder().host(host_api(&link, &plugin)).storage(storage).build();
    let id = plugin.source.id.clone();
    let files = plugin.sources;
    let seccomp = plugin.seccomp;
    let config = PluginConfig {
        limits: Limits {
            heap_limit: plugin.heap_limit,
            call_timeout: Duration::from_millis(plugin.call_timeout_ms),
            load_timeout: Duration::from_millis(plugin.load_timeout_ms),
            // The parent queues calls and sends them one at a time.
            mailbox_capacity: 16,
            max_result_bytes: plugin.max_result_bytes,
        },
        storage_quota: plugin.storage_quota,
        permissions: Permissions { requested: plugin.granted.clone(), granted: plugin.granted },
        diagnostics: Vec::new(),
        events: Vec::new(),
        commands: Vec::new(),
        isolation: Isolation::Thread,
        stateless: plugin.source.manifest().is_some_and(|m| m.stateless),
        evict_after: None,
        source: plugin.source,
    };
    // Lifecycle events inside the child (a restart after HEAP_LIMIT, a failed onLoad) go to
    // the parent, which tells the host.
    let bus = Arc::new(EventBus::default());
    let events = link.clone();
    bus.set_forward(move |e| {
        let _ = events.send(&ToParent::Event(e.clone()));
    });
    let shared = Shared::new(&id, bus);
    let peers: Arc<dyn Peers> = Arc::new(RemotePeers(link.clone()));
    let sources = Arc::new(SourceCache::with_files(files));
    // The plugin's thread reads its calls from the call channel itself.
    let inbox = Box::new(CallChannel { link: link.clone(), shared: shared.clone(), ended: false });
    let starting = match crate::worker::spawn_with(
        &engine,
        Arc::new(config),
        shared.clone(),
        peers,
        sources.clone(),
        Some(inbox),
        None,
    ) {
        Ok(s) => s,
        Err(e) => {
            let _ = link.send(&ToParent::Loaded { result: Err(e), stats: Box::default(), sources: Vec::new() });
            return 0;
        }
    };
    // The control channel is read from before the plugin has loaded: its top-level code may
    // already await the host, and the replies must be read while it waits. It goes on while
    // calls run (cancellations, replies to async requests).
    let control_link = link.clone();
    let reading = std::thread::Builder::new().name("isola:control".into()).spawn(move || {
        while let Ok(Some(msg)) = read_frame::<ToChild>(&mut control, MAX_FRAME) {
            control_link.handle(msg);
        }
        control_link.fail_all();
    });
    if reading.is_err() {
        return 2;
    }
    let mut loaded = starting.wait();
    if loaded.is_ok() && seccomp {
        // Loaded: everything the plugin needs from the file system is in memory now.
        if let Err(e) = super::seccomp::install() {
            loaded = Err(Error::new(ErrorCode::LoadFailed, format!("cannot install the seccomp filter: {e}")));
        }
    }
    let failed = loaded.is_err();
    if !failed {
        // Before the parent hears it loaded (and sends calls): what the plugin's thread does
        // after a call depends on it (a stateless plugin's next instance).
        shared.mark_current(starting.generation);
    }
    let stats = Box::new(shared.stats.snapshot());
    if link.send(&ToParent::Loaded { result: loaded, stats, sources: sources.files() }).is_err() || failed {
        return 0;
    }
    // The plugin's thread ends when the host says stop or goes away; the process with it.
    let _ = starting.thread.join();
    0
}
