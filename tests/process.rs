//! Process isolation: a plugin in a child process behind the same handle. Calls, host
//! functions, storage, permissions, events and plugin calls work as in thread mode; a child
//! that dies or hangs costs only its own call and a restart.

mod common;

use std::time::{Duration, Instant};

use common::{PluginDir, test_host};
use isola::engine::Isolation;
use isola::events::LifecycleEvent;
use isola::{CallOptions, Engine, ErrorCode, HostApi, Manager, PluginStatus};
use serde_json::{Value, json};

fn process_engine(host: HostApi) -> Engine {
    Engine::builder()
        .host(host)
        .isolation(Isolation::Process)
        .worker_program(env!("CARGO_BIN_EXE_isola"))
        .call_timeout(Duration::from_secs(2))
        .build()
}

fn manifest(id: &str, extra: Value) -> String {
    let mut m = json!({"id": id, "name": id, "version": "1.0.0", "apiVersion": 1});
    m.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    m.to_string()
}

fn kill(pid: u32, signal: i32) {
    // SAFETY: signalling a child process this test started.
    assert_eq!(unsafe { libc::kill(pid as i32, signal) }, 0, "kill({pid}, {signal})");
}

fn alive(pid: u32) -> bool {
    // A zombie still has a /proc entry: look at its state, and at its other threads (the
    // leader can be a zombie while they are still exiting, and until they are gone its parent
    // cannot learn that it died).
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    let threads = std::fs::read_dir(format!("/proc/{pid}/task")).map(|d| d.count()).unwrap_or(0);
    !stat.contains(") Z ") || threads > 1
}

/// Stops `pid` and waits until every one of its threads has stopped. `kill` only queues
/// SIGSTOP: one thread is woken to take it and stops the others in turn, so on a loaded
/// machine a thread blocked reading its channel can still take a request and answer it in
/// the meantime (CI saw a "stopped" child answer "ok").
fn stop(pid: u32) {
    kill(pid, libc::SIGSTOP);
    let t = Instant::now();
    loop {
        let tasks: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("stat")).ok())
            .collect();
        // The state is the field after the command name, which is in parentheses.
        let stopped = |stat: &String| stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('T'));
        if !tasks.is_empty() && tasks.iter().all(stopped) {
            return;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "{pid} did not stop: {tasks:?}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn hooks_host_functions_and_storage_work_across_the_process_boundary() {
    let dir = PluginDir::new();
    let host = test_host().func("whoami", |(): ()| Ok(isola::current_plugin())).requires("fetchUser", "users");
    let engine = process_engine(host);
    let path = dir.module_with_manifest(
        "p",
        &manifest("p", json!({"permissions": ["users", "storage"]})),
        "let n = 0;
        export default {
            inc() { return ++n; },
            add(a, b) { return host.add(a, b); },
            async user(id) { return (await host.fetchUser(id)).name; },
            whoami() { return host.whoami(); },
            config() { return host.config.version; },
            fail() { try { host.fail('x'); } catch (e) { return [e.name, e.code, e.message]; } },
            store(k, v) { host.storage.set(k, v); return host.storage.get(k); },
            keys() { return host.storage.list(''); },
            log() { console.log('hello from the child'); return 'logged'; },
        };",
    );
    let m = Manager::new(engine.clone());
    let h = m.load(&path).unwrap();
    let pid = h.process_id().expect("runs in a child process");
    assert_ne!(pid, std::process::id());
    assert_eq!(h.call_blocking::<_, i64>("inc", ()).unwrap(), 1);
    assert_eq!(h.call_blocking::<_, i64>("inc", ()).unwrap(), 2, "state is kept between calls");
    assert_eq!(h.call_blocking::<_, f64>("add", (2, 3)).unwrap(), 5.0);
    assert_eq!(h.call_blocking::<_, String>("user", (7,)).unwrap(), "user7");
    assert_eq!(h.call_blocking::<_, String>("whoami", ()).unwrap(), "p", "host functions know their caller");
    assert_eq!(h.call_blocking::<_, String>("config", ()).unwrap(), "9.9.9");
    assert_eq!(h.call_blocking::<_, Value>("fail", ()).unwrap(), json!(["Error", "HOST_ERROR", "host says no: x"]));
    assert_eq!(h.call_blocking::<_, Value>("store", ("k", json!({"a": 1}))).unwrap(), json!({"a": 1}));
    assert_eq!(h.call_blocking::<_, Value>("keys", ()).unwrap(), json!(["k"]));
    assert_eq!(h.call_blocking::<_, String>("log", ()).unwrap(), "logged");
    // The data lives in the host's one store, keyed by the plugin id the host knows.
    assert_eq!(engine.storage().backend().get("p", "k").unwrap().as_deref(), Some(r#"{"a":1}"#));
    // Errors keep their codes and the plugin and hook they concern.
    let e = h.call_blocking::<_, Value>("nope", ()).unwrap_err();
    assert_eq!((e.code, e.plugin.as_deref(), e.hook.as_deref()), (ErrorCode::HookNotFound, Some("p"), Some("nope")));
    // Async calls from tokio, several in flight.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let answers = rt.block_on(async {
        let calls: Vec<_> = (0..20).map(|_| h.call::<_, i64>("inc", ())).collect();
        let mut out = Vec::new();
        for c in calls {
            out.push(c.await.unwrap());
        }
        out
    });
    assert_eq!(answers, (3..23).collect::<Vec<i64>>());
    assert!(h.stats().calls >= 31, "{:?}", h.stats());
}

#[test]
fn permissions_are_checked_in_the_child_and_again_in_the_host() {
    let dir = PluginDir::new();
    let engine = process_engine(test_host().requires("add", "math"));
    let path = dir.module(
        "plain",
        "export default {
            add() { try { host.add(1, 2); return 'called'; } catch (e) { return e.code; } },
            storage() { return typeof host.storage; },
            uncaught() { return host.add(1, 2); },
        };",
    );
    let m = Manager::new(engine);
    let h = m.load(&path).unwrap();
    assert_eq!(h.call_blocking::<_, String>("add", ()).unwrap(), "PERMISSION_DENIED");
    assert_eq!(h.call_blocking::<_, String>("storage", ()).unwrap(), "undefined");
    assert_eq!(h.call_blocking::<_, Value>("uncaught", ()).unwrap_err().code, ErrorCode::PermissionDenied);
    assert_eq!(h.stats().errors_of(ErrorCode::PermissionDenied), 2, "{:?}", h.stats());
}

#[test]
fn a_killed_child_costs_its_call_and_a_restart_and_nothing_else() {
    let dir = PluginDir::new();
    let engine = process_engine(test_host());
    let victim = dir.module(
        "victim",
        "let n = 0; export default { inc() { return ++n; }, async slow(ms) { await host.sleep(ms); return 'done'; } };",
    );
    let neighbour = dir.module("neighbour", "let n = 0; export default { inc() { return ++n; } };");
    let m = Manager::new(engine);
    let events = m.events();
    let h = m.load(&victim).unwrap();
    let other = m.load(&neighbour).unwrap();
    assert_eq!(other.call_blocking::<_, i64>("inc", ()).unwrap(), 1);
    // SIGKILL (the OOM killer, an operator), SIGABRT (a Rust or C++ abort), SIGTRAP (how V8
    // ends the process on a fatal error, such as "Fatal JavaScript out of memory").
    for (round, signal) in [libc::SIGKILL, libc::SIGABRT, libc::SIGTRAP].into_iter().enumerate() {
        assert_eq!(h.call_blocking::<_, i64>("inc", ()).unwrap(), 1, "round {round}: a fresh process");
        let pid = h.process_id().unwrap();
        // One call in flight, two queued behind it.
        let in_flight = h.call::<_, String>("slow", (1500,));
        let queued: Vec<_> = (0..2).map(|_| h.call::<_, i64>("inc", ())).collect();
        std::thread::sleep(Duration::from_millis(200));
        kill(pid, signal);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let t = Instant::now();
        let (first, rest) = rt.block_on(async {
            let first = in_flight.await;
            let mut rest = Vec::new();
            for q in queued {
                rest.push(q.await);
            }
            (first, rest)
        });
        let e = first.unwrap_err();
        assert_eq!(e.code, ErrorCode::PluginCrashed, "round {round}: {e}");
        assert!(e.message.contains(&format!("signal {signal}")), "round {round}: {e}");
        // The queued calls ran on the restarted plugin (fresh state), in order.
        let rest: Vec<i64> = rest.into_iter().map(|r| r.unwrap()).collect();
        assert_eq!(rest, vec![1, 2], "round {round}");
        assert!(t.elapsed() < Duration::from_secs(5), "round {round}: recovered in {:?}", t.elapsed());
        assert!(!alive(pid), "round {round}: the old process is gone");
        assert_ne!(h.process_id(), Some(pid), "round {round}");
        assert_eq!(h.status(), PluginStatus::Ready);
        // Make the next round start from a fresh process too (a death while idle costs no call).
        let pid = h.process_id().unwrap();
        kill(pid, libc::SIGKILL);
        while alive(pid) {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    // The neighbour never noticed.
    assert_eq!(other.call_blocking::<_, i64>("inc", ()).unwrap(), 2);
    let crashed = events.try_iter().filter(|e| matches!(e, LifecycleEvent::Crashed { .. })).count();
    assert!(crashed >= 3, "a Crashed event per crash: {crashed}");
    assert!(h.stats().restarts >= 3, "{:?}", h.stats());
    assert!(h.stats().errors_of(ErrorCode::PluginCrashed) >= 3, "{:?}", h.stats());
}

#[test]
fn a_child_that_stops_answering_is_killed_after_its_deadline_and_grace() {
    let dir = PluginDir::new();
    let engine = Engine::builder()
        .host(test_host())
        .isolation(Isolation::Process)
        .worker_program(env!("CARGO_BIN_EXE_isola"))
        .call_timeout(Duration::from_millis(300))
        .build();
    let path = dir.module("frozen", "export default { ok() { return 'ok'; } };");
    let m = Manager::new(engine);
    let h = m.load(&path).unwrap();
    let pid = h.process_id().unwrap();
    // A stopped process cannot even run its own watchdog: only the host can end this.
    stop(pid);
    let t = Instant::now();
    let e = h.call_blocking::<_, String>("ok", ()).unwrap_err();
    let took = t.elapsed();
    assert_eq!(e.code, ErrorCode::Timeout, "{e}");
    assert!(took >= Duration::from_millis(300) + isola::process::GRACE, "{took:?}");
    assert!(took < Duration::from_millis(300) + isola::process::GRACE + Duration::from_secs(1), "{took:?}");
    assert!(!alive(pid), "the frozen process was killed");
    assert_eq!(h.call_blocking::<_, String>("ok", ()).unwrap(), "ok", "and the plugin restarted");
}

#[test]
fn events_chains_and_plugin_calls_cross_processes_and_threads() {
    let dir = PluginDir::new();
    dir.module_with_manifest(
        "caller",
        &manifest("caller", json!({"permissions": ["call:callee", "events"], "isolation": "process"})),
        "export default { async viaCallee(x) { return await host.plugins.call('callee', 'double', x); }, emit() { return host.events.emit('ping', 1); } };",
    );
    dir.module_with_manifest(
        "callee",
        &manifest("callee", json!({"events": {"chat": "onChat", "ping": "onPing"}})),
        "let pings = 0; export default { double(x) { return 2 * x; }, onChat(p) { return { payload: p + '!' }; }, onPing() { pings++; }, pings() { return pings; } };",
    );
    // The host's default is threads; `caller` asks for a process of its own.
    let m = Manager::new(Engine::builder().host(test_host()).worker_program(env!("CARGO_BIN_EXE_isola")).build());
    let report = m.load_dir(dir.path()).unwrap();
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    let caller = m.handle("caller").unwrap();
    let callee = m.handle("callee").unwrap();
    assert!(caller.process_id().is_some() && callee.process_id().is_none());
    assert_eq!(caller.call_blocking::<_, i64>("viaCallee", (21,)).unwrap(), 42);
    assert_eq!(caller.call_blocking::<_, i64>("emit", ()).unwrap(), 1);
    let t = Instant::now();
    while callee.call_blocking::<_, i64>("pings", ()).unwrap() == 0 {
        assert!(t.elapsed() < Duration::from_secs(5), "the emitted event arrives");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(m.dispatch_blocking("chat", "hi").unwrap().payload, json!("hi!"));
}

#[test]
fn reload_starts_a_new_process_and_hands_state_over() {
    let dir = PluginDir::new();
    let path = dir.module("r", "let n = 0; export default { inc() { return ++n; }, onUnload() { return n; }, onLoad(s) { n = s ?? 0; }, v() { return 1; } };");
    let m = Manager::new(process_engine(test_host()));
    let h = m.load(&path).unwrap();
    h.call_blocking::<_, i64>("inc", ()).unwrap();
    h.call_blocking::<_, i64>("inc", ()).unwrap();
    let old = h.process_id().unwrap();
    std::fs::write(path.join("main.js"), "let n = 0; export default { inc() { return ++n; }, onUnload() { return n; }, onLoad(s) { n = s ?? 0; }, v() { return 2; } };").unwrap();
    m.reload("r").unwrap();
    assert_eq!(h.call_blocking::<_, i64>("v", ()).unwrap(), 2);
    assert_eq!(h.call_blocking::<_, i64>("inc", ()).unwrap(), 3, "state handed over");
    assert_ne!(h.process_id(), Some(old));
    let t = Instant::now();
    while alive(old) {
        assert!(t.elapsed() < Duration::from_secs(5), "the old process exits");
        std::thread::sleep(Duration::from_millis(10));
    }
    // A broken version never replaces the running one.
    std::fs::write(path.join("main.js"), "export default {").unwrap();
    assert_eq!(m.reload("r").unwrap_err().code, ErrorCode::LoadFailed);
    assert_eq!(h.call_blocking::<_, i64>("v", ()).unwrap(), 2);
    let pid = h.process_id().unwrap();
    m.unload("r").unwrap();
    assert!(!alive(pid), "unload ends the process");
}

#[test]
fn a_worker_of_another_protocol_or_no_worker_at_all_is_refused_clearly() {
    let dir = PluginDir::new();
    let path = dir.module("p", "export default { ok() { return 1; } };");
    // A "worker" that says hello in protocol 999.
    let fake = dir.write(
        "fake-worker.py",
        "import json, os, struct\nfd = int(os.environ['ISOLA_WORKER_FD'])\n\
         body = json.dumps({'Hello': {'protocol': 999, 'pid': os.getpid()}}).encode()\n\
         os.write(fd, struct.pack('<I', len(body)) + body)\nos.read(fd, 1)\n",
    );
    let script = dir.write("fake-worker.sh", &format!("#!/bin/sh\nexec python3 {}\n", fake.display()));
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let engine = Engine::builder().isolation(Isolation::Process).worker_program(&script).build();
    let e = Manager::new(engine).load(&path).unwrap_err();
    assert_eq!(e.code, ErrorCode::LoadFailed, "{e}");
    assert!(
        e.message.contains("protocol 999") && e.message.contains(&format!("host {}", isola::process::PROTOCOL_VERSION)),
        "{e}"
    );
    // A program that is no isola worker at all.
    let engine = Engine::builder().isolation(Isolation::Process).worker_program("/bin/true").build();
    let e = Manager::new(engine).load(&path).unwrap_err();
    assert!(e.message.contains("did not start as an isola worker"), "{e}");
}

#[test]
fn children_die_with_their_host_and_inherit_only_their_channel() {
    let dir = PluginDir::new();
    dir.module("a", "export default { main() { return 'a'; } };");
    dir.module("b", "export default { main() { return 'b'; } };");
    // A host of its own (`isola dev` in process mode), killed without a chance to clean up.
    let mut host = common::isola_command()
        .args(["--isolation", "process", "dev"])
        .arg(dir.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let children = |ppid: u32| -> Vec<u32> {
        let mut out = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // pid (comm) state ppid ...
            let after = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
            if after.split(' ').nth(1).and_then(|p| p.parse::<u32>().ok()) == Some(ppid) && !after.starts_with('Z') {
                out.push(pid);
            }
        }
        out
    };
    // The workers are looked at once both plugins have loaded (`dev` then says it is
    // watching): while it starts, a worker opens files of its own for a moment (V8 reads
    // /dev/urandom to seed an isolate, glibc /proc/self/maps to find the main thread's
    // stack), and a scan landing then would see them.
    let (ready_tx, ready) = crossbeam_channel::bounded(1);
    let stdout = std::io::BufReader::new(host.stdout.take().unwrap());
    std::thread::spawn(move || {
        use std::io::BufRead;
        let mut lines = stdout.lines().map_while(Result::ok);
        let _ = ready_tx.send(lines.by_ref().find(|l| l.starts_with("watching ")));
        lines.for_each(drop);
    });
    let said = ready.recv_timeout(Duration::from_secs(20));
    assert!(matches!(said, Ok(Some(_))), "`isola dev` loaded both plugins: {said:?}");
    let workers = children(host.id());
    assert_eq!(workers.len(), 2, "one worker process per plugin: {workers:?}");
    for &w in &workers {
        let fds: Vec<String> = std::fs::read_dir(format!("/proc/{w}/fd"))
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read_link(e.path()).ok())
            .map(|l| l.display().to_string())
            .collect();
        // Its standard streams, its channel (a socket), and what the worker keeps open itself
        // (anonymous inodes: tokio's epoll and eventfd); never the host's files or pipes.
        for l in &fds {
            let ok =
                l == "/dev/null" || l.starts_with("socket:") || l.starts_with("anon_inode:") || l.starts_with("pipe:");
            assert!(ok, "worker {w} has {l}: {fds:?}");
        }
        let pipes = fds.iter().filter(|l| l.starts_with("pipe:")).count();
        assert!(pipes <= 1, "only stderr may be the host's pipe: {fds:?}");
        let limits = std::fs::read_to_string(format!("/proc/{w}/limits")).unwrap();
        let core = limits.lines().find(|l| l.starts_with("Max core file size")).unwrap();
        assert!(core.split_whitespace().nth(4) == Some("0"), "core dumps off: {core}");
    }
    host.kill().unwrap();
    host.wait().unwrap();
    let t = Instant::now();
    while workers.iter().any(|&w| alive(w)) {
        assert!(t.elapsed() < Duration::from_secs(5), "workers outlived their host: {workers:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_restarted_process_runs_the_same_version_whatever_the_disk_holds() {
    let dir = PluginDir::new();
    let path = dir.module("same", "import { v } from './lib/v.js';\nexport default { v() { return v; } };");
    dir.write("same/lib/v.js", "export const v = 1;");
    let m = Manager::new(process_engine(test_host()));
    let h = m.load(&path).unwrap();
    assert_eq!(h.call_blocking::<_, i64>("v", ()).unwrap(), 1);
    // Broken and deleted on disk, but not reloaded: a crash brings back the running version.
    std::fs::write(path.join("lib/v.js"), "export const v = ;").unwrap();
    std::fs::remove_file(path.join("main.js")).unwrap();
    let pid = h.process_id().unwrap();
    kill(pid, libc::SIGKILL);
    while alive(pid) {
        std::thread::sleep(Duration::from_millis(5));
    }
    // It died while idle: the next call is not lost, it runs on the restarted process.
    assert_eq!(h.call_blocking::<_, i64>("v", ()).unwrap(), 1, "restarted as the version that was running");
    assert_ne!(h.process_id(), Some(pid));
    assert_eq!(h.stats().restarts, 1);
    assert_eq!(h.status(), PluginStatus::Ready);
}

#[test]
fn process_isolation_needs_a_worker_program_it_can_trust() {
    // This test binary never calls run_worker_if_requested(): it cannot be its own worker, and
    // a manifest asking for process isolation must not make it start copies of itself.
    let dir = PluginDir::new();
    let path = dir.module_with_manifest("p", &manifest("p", json!({"isolation": "process"})), "export default {};");
    let e = Manager::new(Engine::builder().build()).load(&path).unwrap_err();
    assert_eq!(e.code, ErrorCode::LoadFailed, "{e}");
    assert!(e.message.contains("run_worker_if_requested"), "{e}");
}

/// A worker that speaks the protocol but lies: it loads, then answers a call with forged
/// lifecycle events about another plugin, a `Stopped` status and an answer to the wrong call.
const LYING_WORKER: &str = r#"
import json, os, struct
fd = int(os.environ['ISOLA_WORKER_FD'])
def send(msg):
    body = json.dumps(msg).encode()
    os.write(fd, struct.pack('<I', len(body)) + body)
def recv():
    head = b''
    while len(head) < 4:
        chunk = os.read(fd, 4 - len(head))
        if not chunk: raise SystemExit(0)
        head += chunk
    n = struct.unpack('<I', head)[0]
    body = b''
    while len(body) < n:
        body += os.read(fd, n - len(body))
    return json.loads(body)
send({'Hello': {'protocol': int(os.environ['PROTOCOL']), 'pid': os.getpid()}})
recv()
stats = {'calls': 0, 'errors': {}, 'restarts': 0, 'heap_used': 0, 'array_buffer_bytes': 0, 'heap_limit': 0, 'cpu_time': 0, 'wall_time': 0}
send({'Loaded': {'result': {'Ok': ['hi']}, 'stats': stats, 'sources': []}})
call = recv()['Call']
mode = os.environ.get('LIE', 'events')
if mode == 'events':
    send({'Event': {'event': 'unloaded', 'plugin': 'someone-else'}})
    send({'Event': {'event': 'restarted', 'plugin': 'someone-else', 'error': {'code': 'HEAP_LIMIT', 'message': 'forged'}}})
    send({'Answer': {'id': call['id'], 'result': {'Ok': 'fine'}, 'stats': stats, 'status': 'stopped'}})
    call = recv()['Call']
    send({'Answer': {'id': call['id'] + 7, 'result': {'Ok': 'not yours'}, 'stats': stats, 'status': 'ready'}})
else:
    os.write(fd, struct.pack('<I', 200 * 1024 * 1024))
recv()
"#;

#[test]
fn a_lying_worker_cannot_forge_events_status_or_answers() {
    let dir = PluginDir::new();
    let path = dir.module("liar", "export default { hi() { return 'hi'; } };");
    let script = dir.write("liar.py", LYING_WORKER);
    let wrapper = dir.write(
        "liar.sh",
        &format!("#!/bin/sh\nPROTOCOL={} exec python3 {}\n", isola::process::PROTOCOL_VERSION, script.display()),
    );
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let engine = Engine::builder().isolation(Isolation::Process).worker_program(&wrapper).build();
    let m = Manager::new(engine);
    let events = m.events();
    let h = m.load(&path).unwrap();
    assert_eq!(h.call_blocking::<_, String>("hi", ()).unwrap(), "fine");
    // (Its `restarted` event is a kind a child may send, about itself; `stopped` is not.)
    assert!(matches!(h.status(), PluginStatus::Ready | PluginStatus::Restarting), "{:?}", h.status());
    // The forged `unloaded` was dropped; the forged `restarted` is reported, but about `liar`.
    let seen: Vec<LifecycleEvent> = events.try_iter().collect();
    assert!(seen.iter().all(|e| e.plugin() == "liar"), "{seen:?}");
    assert!(!seen.iter().any(|e| matches!(e, LifecycleEvent::Unloaded { .. })), "{seen:?}");
    // An answer to another call is a protocol violation: the child is killed, the call fails.
    let e = h.call_blocking::<_, String>("hi", ()).unwrap_err();
    assert_eq!(e.code, ErrorCode::PluginCrashed, "{e}");
    assert!(e.message.contains("broke the protocol"), "{e}");

    // A frame announced larger than anything a call can return is refused, not allocated.
    let path = dir.module("big", "export default { hi() { return 'hi'; } };");
    let wrapper = dir.write(
        "big.sh",
        &format!(
            "#!/bin/sh\nPROTOCOL={} LIE=frame exec python3 {}\n",
            isola::process::PROTOCOL_VERSION,
            script.display()
        ),
    );
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let engine = Engine::builder().isolation(Isolation::Process).worker_program(&wrapper).build();
    let m = Manager::new(engine);
    let h = m.load(&path).unwrap();
    let e = h.call_blocking::<_, String>("hi", ()).unwrap_err();
    assert_eq!(e.code, ErrorCode::PluginCrashed, "{e}");
}

#[test]
fn under_seccomp_a_plugin_process_can_open_nothing() {
    let dir = PluginDir::new();
    let path = dir.module_with_manifest(
        "sealed",
        &manifest("sealed", json!({"permissions": ["storage"]})),
        "export default {
            async late() { try { return (await import('./late.js')).v; } catch (e) { return 'refused: ' + e.message; } },
            add(a, b) { return host.add(a, b); },
            async user(id) { return (await host.fetchUser(id)).name; },
            store() { host.storage.set('k', 1); return host.storage.get('k'); },
        };",
    );
    dir.write("sealed/late.js", "export const v = 'loaded late';");
    for seccomp in [false, true] {
        let engine = Engine::builder()
            .host(test_host())
            .isolation(Isolation::Process)
            .worker_program(env!("CARGO_BIN_EXE_isola"))
            .seccomp(seccomp)
            .build();
        let m = Manager::new(engine);
        let h = m.load(&path).unwrap();
        // Everything that goes through the host still works...
        assert_eq!(h.call_blocking::<_, f64>("add", (1, 2)).unwrap(), 3.0);
        assert_eq!(h.call_blocking::<_, String>("user", (3,)).unwrap(), "user3");
        assert_eq!(h.call_blocking::<_, i64>("store", ()).unwrap(), 1);
        // ...but the process itself opens nothing once loaded, and the kernel says so.
        let late: String = h.call_blocking("late", ()).unwrap();
        let status = std::fs::read_to_string(format!("/proc/{}/status", h.process_id().unwrap())).unwrap();
        let mode =
            status.lines().find(|l| l.starts_with("Seccomp:")).unwrap().split_whitespace().nth(1).unwrap().to_owned();
        if seccomp {
            assert!(late.starts_with("refused") && late.contains("not permitted"), "{late}");
            assert_eq!(mode, "2", "filter mode: {status}");
        } else {
            assert_eq!(late, "loaded late");
            assert_eq!(mode, "0");
        }
    }
}

#[test]
fn top_level_code_can_use_the_host_at_load_and_after_an_in_child_restart() {
    let dir = PluginDir::new();
    let path = dir.module_with_manifest(
        "eager",
        &manifest("eager", json!({"permissions": ["storage"]})),
        "const sum = host.add(1, 2);
         const user = (await host.fetchUser(4)).name;
         const loads = (host.storage.get('loads') ?? 0) + 1;
         host.storage.set('loads', loads);
         export default {
             info() { return [sum, user, loads]; },
             hog() { const k = []; while (true) k.push(new ArrayBuffer(1 << 20)); },
         };",
    );
    let engine = Engine::builder()
        .host(test_host())
        .isolation(Isolation::Process)
        .worker_program(env!("CARGO_BIN_EXE_isola"))
        .heap_limit_mb(16)
        .build();
    let m = Manager::new(engine);
    let h = m.load(&path).unwrap_or_else(|e| panic!("top-level host calls at load: {e}"));
    assert_eq!(h.call_blocking::<_, Value>("info", ()).unwrap(), json!([3, "user4", 1]));
    // HEAP_LIMIT: the child restarts the isolate itself, re-running the top-level code (with
    // no call of the host's running at that moment).
    assert_eq!(h.call_blocking::<_, Value>("hog", ()).unwrap_err().code, ErrorCode::HeapLimit);
    assert_eq!(h.call_blocking::<_, Value>("info", ()).unwrap(), json!([3, "user4", 2]));
    assert_eq!(h.status(), PluginStatus::Ready);
}

#[test]
fn aborting_a_call_stops_it_in_the_child_and_the_plugin_keeps_its_state() {
    let dir = PluginDir::new();
    let m = Manager::new(process_engine(test_host()));
    let h = m
        .load(dir.module(
            "p",
            "let calls = 0; export default { spin() { calls++; while (true) {} }, count() { return ++calls; } };",
        ))
        .unwrap();
    let token = isola::CancelToken::new();
    let t = token.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(150));
        t.cancel();
    });
    let pid = h.process_id().unwrap();
    let started = Instant::now();
    let e = h.call_blocking_with::<_, Value>("spin", (), isola::CallOptions::default().cancel(&token)).unwrap_err();
    assert_eq!(e.code, ErrorCode::Aborted, "{e}");
    assert!(started.elapsed() < Duration::from_secs(2), "abort took {:?}", started.elapsed());
    // Stopped inside the child, not by killing it: same process, state kept.
    assert_eq!(h.call_blocking::<_, u64>("count", ()).unwrap(), 2);
    assert_eq!(h.process_id(), Some(pid));
}

#[test]
fn unloading_a_busy_process_plugin_is_prompt() {
    let dir = PluginDir::new();
    let m = Manager::new(process_engine(test_host()));
    let h = m.load(dir.module("p", "export default { spin() { while (true) {} } };")).unwrap();
    let busy = {
        let h = h.clone();
        std::thread::spawn(move || h.call_blocking::<_, Value>("spin", ()))
    };
    std::thread::sleep(Duration::from_millis(150));
    let started = Instant::now();
    m.unload("p").unwrap();
    assert!(started.elapsed() < Duration::from_secs(2), "unload took {:?}", started.elapsed());
    assert_eq!(busy.join().unwrap().unwrap_err().code, ErrorCode::ShutDown);
}

#[test]
fn the_kernel_out_of_memory_killer_prefers_a_plugin_process_to_the_host() {
    let dir = PluginDir::new();
    let m = Manager::new(process_engine(test_host()));
    let h = m.load(dir.module("p", "export default { ok() { return 'ok'; } };")).unwrap();
    let pid = h.process_id().unwrap();
    let adj = std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj")).unwrap();
    assert_eq!(adj.trim(), "500");
    let mine = std::fs::read_to_string("/proc/self/oom_score_adj").unwrap();
    assert!(mine.trim().parse::<i32>().unwrap() < 500, "the host keeps its own score: {mine}");
}

#[test]
fn a_call_waiting_behind_background_work_gets_what_is_left_of_its_deadline_and_the_child_lives() {
    let dir = PluginDir::new();
    let m = Manager::new(process_engine(test_host()));
    let h = m
        .load(dir.module("p", "export default { start() { setTimeout(() => { for (;;) {} }, 1); return 1; }, ok() { return 'ok'; }, slow() { for (;;) {} } };"))
        .unwrap();
    h.call_blocking::<_, i64>("start", ()).unwrap();
    let pid = h.process_id().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    // The child reads this call only when the spinning timer is stopped, about 2 s from now;
    // the call then has almost none of its 2 s left, and is answered TIMEOUT at its deadline
    // instead of running 2 s more and getting the child killed as unresponsive.
    let t = Instant::now();
    let e = h.call_blocking::<_, Value>("slow", ()).unwrap_err();
    assert_eq!(e.code, ErrorCode::Timeout, "{e}");
    assert!(t.elapsed() < Duration::from_millis(2900), "answered after {:?}", t.elapsed());
    assert_eq!(h.process_id(), Some(pid), "the child was not killed");
    assert_eq!(h.call_blocking::<_, String>("ok", ()).unwrap(), "ok");
}

#[test]
fn a_timeout_names_the_limit_the_caller_set_even_after_waiting_in_the_child() {
    let dir = PluginDir::new();
    let m = Manager::new(process_engine(test_host()));
    let busy =
        "start() { setTimeout(() => { const end = Date.now() + 300; while (Date.now() < end) {} }, 1); return 1; }";
    let h = m.load(dir.module("p", &format!("export default {{ {busy}, slow() {{ for (;;) {{}} }} }};"))).unwrap();
    h.call_blocking::<_, i64>("start", ()).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    // Read by the child about 280 ms late, the call has less than its limit left: it stops
    // at the host's deadline, and says which limit it broke (not what was left of it).
    let t = Instant::now();
    let e = h
        .call_blocking_with::<_, Value>("slow", (), CallOptions::default().timeout(Duration::from_millis(600)))
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Timeout, "{e}");
    assert!(e.message.contains("longer than 600 ms"), "{e}");
    assert!(t.elapsed() < Duration::from_millis(1500), "answered after {:?}", t.elapsed());
}
