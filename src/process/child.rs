//! The child process side: one plugin, run by the same worker thread and runtime as in thread
//! mode, with everything that belongs to the host reached over the channel.
//!
//! The worker needs an engine (host API, storage), the plugin's resolved configuration and its
//! peers. Here each of those forwards to the parent: a host function sends [`Ask::Host`] and
//! waits for the reply (sync functions block the plugin's thread, async ones await), storage
//! is a [`StorageBackend`] that asks, and [`Peers`] asks for plugin calls and emits. The
//! permission checks run here first, as in thread mode, and the parent checks again.

use std::collections::HashMap;
use std::os::unix::io::FromRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use super::wire::{
    Ask, ChildPlugin, HostKind, MAX_FRAME, PROTOCOL_VERSION, ToChild, ToParent, read_frame, write_frame,
};
use crate::call::{CallContext, Reply, Request};
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

/// A request in flight to the parent, waiting for its reply.
enum Waiter {
    Blocking(crossbeam_channel::Sender<Result<Value>>),
    Async(tokio::sync::oneshot::Sender<Result<Value>>),
}

/// The child's end of the channel: sends frames (from any thread) and matches replies to the
/// requests that wait for them.
struct Link {
    writer: Mutex<UnixStream>,
    pending: Mutex<HashMap<u64, Waiter>>,
    next: AtomicU64,
}

impl Link {
    fn send(&self, msg: &ToParent) -> Result<()> {
        write_frame(&mut *self.writer.lock().unwrap(), msg)
    }

    fn ask(&self, ask: Ask, waiter: Waiter) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.pending.lock().unwrap().insert(id, waiter);
        if let Err(e) = self.send(&ToParent::Ask { id, ask }) {
            self.complete(id, Err(e));
        }
    }

    fn ask_blocking(&self, ask: Ask) -> Result<Value> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.ask(ask, Waiter::Blocking(tx));
        rx.recv().unwrap_or_else(|_| Err(host_gone()))
    }

    fn ask_async(&self, ask: Ask) -> impl std::future::Future<Output = Result<Value>> + Send + 'static {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.ask(ask, Waiter::Async(tx));
        async move { rx.await.unwrap_or_else(|_| Err(host_gone())) }
    }

    fn complete(&self, id: u64, result: Result<Value>) {
        match self.pending.lock().unwrap().remove(&id) {
            Some(Waiter::Blocking(tx)) => drop(tx.send(result)),
            Some(Waiter::Async(tx)) => drop(tx.send(result)),
            None => {}
        }
    }

    /// The parent is gone: nothing pending will be answered.
    fn fail_all(&self) {
        for (_, w) in self.pending.lock().unwrap().drain() {
            match w {
                Waiter::Blocking(tx) => drop(tx.send(Err(host_gone()))),
                Waiter::Async(tx) => drop(tx.send(Err(host_gone()))),
            }
        }
    }
}

fn host_gone() -> Error {
    Error::new(ErrorCode::ShutDown, "the host process is gone")
}

fn to_host_fn_error(e: Error) -> HostFnError {
    HostFnError::new(e.code, e.message)
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

/// Runs one plugin for the parent on the channel `fd`; returns the exit status.
pub(crate) fn run(fd: i32, parent: Option<u32>) -> i32 {
    harden(parent);
    // A worker runs no embedder code: a panic here is a bug in isola or below it. End the
    // process, so that the host answers the call with PLUGIN_CRASHED at once, instead of
    // leaving a thread dead and the call waiting for its deadline.
    std::panic::set_hook(Box::new(|info| {
        eprintln!("isola worker: {info}");
        std::process::abort();
    }));
    // The descriptor must be the socket the host passed, not whatever a stray variable names.
    // SAFETY: fstat on a descriptor number only reads its metadata.
    let is_socket = unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        libc::fstat(fd, &mut st) == 0 && (st.st_mode & libc::S_IFMT) == libc::S_IFSOCK
    };
    if !is_socket {
        eprintln!("isola worker: descriptor {fd} is not the channel to a host");
        return 2;
    }
    // SAFETY: the parent passed us this descriptor for exactly this purpose; nothing else owns it.
    let stream = unsafe { UnixStream::from_raw_fd(fd) };
    let Ok(writer) = stream.try_clone() else { return 2 };
    let link =
        Arc::new(Link { writer: Mutex::new(writer), pending: Mutex::new(HashMap::new()), next: AtomicU64::new(1) });
    let mut reader = stream;
    if link.send(&ToParent::Hello { protocol: PROTOCOL_VERSION, pid: std::process::id() }).is_err() {
        return 2;
    }
    let plugin = match read_frame::<ToChild>(&mut reader, MAX_FRAME) {
        Ok(Some(ToChild::Init { protocol, plugin })) if protocol == PROTOCOL_VERSION => plugin,
        Ok(Some(ToChild::Init { protocol, .. })) => {
            eprintln!("isola worker: the host speaks protocol {protocol}, this worker {PROTOCOL_VERSION}");
            return 3;
        }
        _ => return 2,
    };
    serve(link, reader, *plugin)
}

fn serve(link: Arc<Link>, mut reader: UnixStream, plugin: ChildPlugin) -> i32 {
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
    let starting = match crate::worker::spawn_with(&engine, Arc::new(config), shared.clone(), peers, sources.clone()) {
        Ok(s) => s,
        Err(e) => {
            let _ = link.send(&ToParent::Loaded { result: Err(e), stats: Box::default(), sources: Vec::new() });
            return 0;
        }
    };
    // Reading starts before the plugin has loaded: its top-level code may already ask the
    // host for things, and the replies must be read while it waits. It goes on while calls
    // run (replies to the plugin's own requests arrive then); the plugin's thread writes each
    // answer itself.
    let mailbox = starting.tx.clone();
    let (in_link, in_shared) = (link.clone(), shared.clone());
    // Calls the parent may still cancel, by id.
    let running: Arc<Mutex<HashMap<u64, Arc<Abort>>>> = Arc::default();
    let reading = std::thread::Builder::new().name("isola:reader".into()).spawn(move || {
        let (link, shared) = (in_link, in_shared);
        loop {
            match read_frame::<ToChild>(&mut reader, MAX_FRAME) {
                Ok(Some(ToChild::Call { id, hook, args, timeout_ms, chain, event_depth })) => {
                    let timeout = timeout_ms.map(Duration::from_millis);
                    let ctx = CallContext { chain, event_depth, ..Default::default() };
                    let (out, shared, calls) = (link.clone(), shared.clone(), running.clone());
                    let abort = Arc::new(Abort::default());
                    calls.lock().unwrap().insert(id, abort.clone());
                    let reply = Reply::Func(Box::new(move |result| {
                        calls.lock().unwrap().remove(&id);
                        let stats = Box::new(shared.stats.snapshot());
                        let _ = out.send(&ToParent::Answer { id, result, stats, status: shared.status() });
                    }));
                    let _ = mailbox.send(Request::Call { hook, args, timeout, ctx, reply, abort: Some(abort) });
                }
                Ok(Some(ToChild::Cancel { id, code })) => {
                    let abort = running.lock().unwrap().get(&id).cloned();
                    if let Some(abort) = abort {
                        abort.abort_with(code);
                    }
                }
                Ok(Some(ToChild::Reply { id, result })) => link.complete(id, result),
                Ok(Some(ToChild::Stop)) | Ok(None) | Err(_) => break,
                Ok(Some(ToChild::Init { .. })) => {}
            }
        }
        link.fail_all();
        let _ = mailbox.send(Request::Stop);
    });
    let Ok(reading) = reading else { return 2 };
    let mut loaded = starting.wait();
    if loaded.is_ok() && seccomp {
        // Loaded: everything the plugin needs from the file system is in memory now.
        if let Err(e) = super::seccomp::install() {
            loaded = Err(Error::new(ErrorCode::LoadFailed, format!("cannot install the seccomp filter: {e}")));
        }
    }
    let failed = loaded.is_err();
    let stats = Box::new(shared.stats.snapshot());
    if link.send(&ToParent::Loaded { result: loaded, stats, sources: sources.files() }).is_err() || failed {
        return 0;
    }
    let _ = reading.join();
    let _ = starting.thread.join();
    0
}
