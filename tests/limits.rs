//! Limits are real: infinite loops, heap bombs, ArrayBuffer floods, recursion, full mailboxes.

mod common;

use std::time::{Duration, Instant};

use common::{PluginDir, load_module, load_module_with, test_host};
use isola::{CallOptions, Engine, ErrorCode, Manager, PluginStatus};
use serde_json::{Value, json};

fn engine_with(timeout_ms: u64, heap_mb: u64) -> Engine {
    common::builder().host(test_host()).call_timeout(Duration::from_millis(timeout_ms)).heap_limit_mb(heap_mb).build()
}

const STATEFUL_SPINNER: &str = "let calls = 0;
export default {
    spin() { calls++; while (true) {} },
    count() { return ++calls; },
    async spinAfterAwait() { await host.fetchUser(1); while (true) {} },
    async slowHost(ms) { return await host.sleep(ms); },
};";

#[test]
fn infinite_loop_times_out_near_the_deadline_and_state_is_kept() {
    let (_d, _m, h) = load_module_with(engine_with(100, 64), STATEFUL_SPINNER);
    let t = Instant::now();
    let e = h.call_blocking::<_, Value>("spin", ()).unwrap_err();
    let took = t.elapsed();
    assert_eq!(e.code, ErrorCode::Timeout);
    assert_eq!((e.plugin.as_deref(), e.hook.as_deref()), (Some("p"), Some("spin")));
    assert!(took >= Duration::from_millis(100), "{took:?}");
    // How close to the deadline it stops is measured by the `limits` benchmark; here only
    // that it does stop.
    assert!(took < Duration::from_millis(2_000), "terminated late: {took:?}");
    // The isolate survived with its state: `calls` was 1 after spin.
    assert_eq!(h.call_blocking::<_, i64>("count", ()).unwrap(), 2);
    assert_eq!(h.status(), PluginStatus::Ready);
    assert_eq!(h.stats().errors_of(ErrorCode::Timeout), 1);
    assert_eq!(h.stats().restarts, 0);
}

#[test]
fn a_per_call_timeout_overrides_the_default() {
    let (_d, _m, h) = load_module_with(engine_with(5_000, 64), STATEFUL_SPINNER);
    let t = Instant::now();
    let e = h
        .call_blocking_with::<_, Value>("spin", (), CallOptions::default().timeout(Duration::from_millis(30)))
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Timeout);
    assert!(t.elapsed() < Duration::from_millis(1000), "{:?}", t.elapsed());
    assert_eq!(h.call_blocking::<_, i64>("count", ()).unwrap(), 2);
}

#[test]
fn async_hooks_are_bounded_by_the_same_deadline() {
    let (_d, _m, h) = load_module_with(engine_with(100, 64), STATEFUL_SPINNER);
    // Spinning after an await: the watchdog stops it.
    let e = h.call_blocking::<_, Value>("spinAfterAwait", ()).unwrap_err();
    assert_eq!(e.code, ErrorCode::Timeout, "{e}");
    // Waiting on a slow host function: the deadline stops the wait.
    let t = Instant::now();
    let e = h.call_blocking::<_, Value>("slowHost", (10_000,)).unwrap_err();
    assert_eq!(e.code, ErrorCode::Timeout, "{e}");
    assert!(e.message.contains("100 ms"), "{e}");
    assert!(t.elapsed() < Duration::from_millis(1000), "{:?}", t.elapsed());
    assert_eq!(h.call_blocking::<_, u64>("slowHost", (1,)).unwrap(), 1);
}

#[test]
fn loading_has_a_time_limit_too() {
    let dir = PluginDir::new();
    let path = dir.module("stuck", "while (true) {}\nexport default {};");
    let m = Manager::new(common::builder().host(test_host()).load_timeout(Duration::from_millis(100)).build());
    let t = Instant::now();
    let e = m.load(path).unwrap_err();
    assert_eq!(e.code, ErrorCode::Timeout, "{e}");
    assert_eq!(e.plugin.as_deref(), Some("stuck"));
    assert!(t.elapsed() < Duration::from_secs(2));
}

#[test]
fn heap_bomb_is_heap_limit_and_the_plugin_comes_back() {
    let (_d, _m, h) = load_module_with(
        engine_with(10_000, 16),
        "let calls = 0;
        export default {
            bomb() { const a = []; while (true) { a.push({ i: a.length, s: 'x'.repeat(64) + a.length }); } },
            count() { return ++calls; },
        };",
    );
    assert_eq!(h.call_blocking::<_, i64>("count", ()).unwrap(), 1);
    let e = h.call_blocking::<_, Value>("bomb", ()).unwrap_err();
    assert_eq!(e.code, ErrorCode::HeapLimit, "{e}");
    assert_eq!((e.plugin.as_deref(), e.hook.as_deref()), (Some("p"), Some("bomb")));
    // Restarted fresh: state is gone, the plugin answers.
    assert_eq!(h.call_blocking::<_, i64>("count", ()).unwrap(), 1);
    let stats = h.stats();
    assert_eq!(stats.restarts, 1);
    assert_eq!(stats.errors_of(ErrorCode::HeapLimit), 1);
    assert_eq!(stats.heap_limit, 16 << 20);
    assert_eq!(h.status(), PluginStatus::Ready);
}

#[test]
fn array_buffer_flood_is_heap_limit_too() {
    let (_d, _m, h) = load_module_with(
        engine_with(10_000, 32),
        "export default {
            flood() { const keep = []; while (true) keep.push(new ArrayBuffer(1 << 20)); },
            typed() { const keep = []; while (true) keep.push(new Uint8Array(4 << 20)); },
            huge() { return new ArrayBuffer(1 << 30).byteLength; },
            ok() { return new ArrayBuffer(1 << 20).byteLength; },
        };",
    );
    for hook in ["flood", "typed", "huge"] {
        let e = h.call_blocking::<_, Value>(hook, ()).unwrap_err();
        assert_eq!(e.code, ErrorCode::HeapLimit, "{hook}: {e}");
        assert_eq!(h.call_blocking::<_, u64>("ok", ()).unwrap(), 1 << 20, "after {hook}");
    }
    assert_eq!(h.stats().restarts, 3);
}

#[test]
fn unbounded_recursion_is_a_range_error() {
    let (_d, _m, h) = load_module(
        "function f(n) { return f(n + 1) + 1; }\nexport default { rec() { return f(0); }, ok() { return 'ok'; } };",
    );
    let e = h.call_blocking::<_, Value>("rec", ()).unwrap_err();
    assert_eq!(e.code, ErrorCode::JsError);
    assert_eq!(e.js.as_ref().unwrap().name, "RangeError");
    assert!(e.message.contains("call stack"), "{e}");
    assert_eq!(h.call_blocking::<_, String>("ok", ()).unwrap(), "ok");
}

#[test]
fn manifest_limits_can_only_lower_the_hosts() {
    let dir = PluginDir::new();
    let path = dir.module_with_manifest(
        "tight",
        &json!({"id": "tight", "name": "T", "version": "1.0.0", "apiVersion": 1,
                "limits": {"heapMb": 12, "callTimeoutMs": 50}})
        .to_string(),
        "export default { spin() { while (true) {} }, hi() { return 1; } };",
    );
    let m = Manager::new(engine_with(10_000, 64));
    let h = m.load(path).unwrap();
    let t = Instant::now();
    assert_eq!(h.call_blocking::<_, Value>("spin", ()).unwrap_err().code, ErrorCode::Timeout);
    assert!(t.elapsed() < Duration::from_millis(1000));
    assert_eq!(h.stats().heap_limit, 12 << 20);

    let path = dir.module_with_manifest(
        "greedy",
        &json!({"id": "greedy", "name": "G", "version": "1.0.0", "apiVersion": 1, "limits": {"heapMb": 4096}})
            .to_string(),
        "export default {};",
    );
    let h = m.load(path).unwrap();
    assert_eq!(h.stats().heap_limit, 64 << 20);
}

#[test]
fn a_full_mailbox_is_busy() {
    let dir = PluginDir::new();
    let path = dir.module("slow", "export default { async nap(ms) { return await host.sleep(ms); } };");
    let m = Manager::new(common::builder().host(test_host()).mailbox_capacity(2).build());
    let h = m.load(path).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        // One running + two queued fill it; the next is refused at once.
        let running = h.call::<_, u64>("nap", (300,));
        tokio::time::sleep(Duration::from_millis(50)).await;
        let q1 = h.call::<_, u64>("nap", (1,));
        let q2 = h.call::<_, u64>("nap", (1,));
        let t = Instant::now();
        let e = h.call::<_, u64>("nap", (1,)).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::Busy);
        assert!(t.elapsed() < Duration::from_millis(50));
        assert_eq!((e.plugin.as_deref(), e.hook.as_deref()), (Some("slow"), Some("nap")));
        assert_eq!(running.await.unwrap(), 300);
        assert_eq!(q1.await.unwrap(), 1);
        assert_eq!(q2.await.unwrap(), 1);
    });
    assert_eq!(h.stats().errors_of(ErrorCode::Busy), 1);
    // Drained: calls work again.
    assert_eq!(h.call_blocking::<_, u64>("nap", (1,)).unwrap(), 1);
}

#[test]
fn a_hook_that_never_settles_is_reported() {
    let (_d, _m, h) = load_module("export default { forever() { return new Promise(() => {}); } };");
    let e = h.call_blocking::<_, Value>("forever", ()).unwrap_err();
    assert_eq!(e.code, ErrorCode::JsError, "{e}");
    assert!(e.message.contains("never settle"), "{e}");
}

#[test]
fn hook_collection_at_load_is_under_the_deadline_too() {
    let dir = PluginDir::new();
    let m = Manager::new(common::builder().host(test_host()).load_timeout(Duration::from_millis(100)).build());
    for (id, code) in [
        ("proxy", "export default new Proxy({}, { ownKeys() { for (;;) {} } });"),
        ("getter", "export default { get greet() { for (;;) {} } };"),
    ] {
        let t = Instant::now();
        let e = m.load(dir.module(id, code)).unwrap_err();
        assert_eq!(e.code, ErrorCode::Timeout, "{id}: {e}");
        assert!(t.elapsed() < Duration::from_secs(3), "{id}: {:?}", t.elapsed());
    }
    let e = m
        .load(dir.module("thrower", "export default { get greet() { throw new Error('getter says no'); } };"))
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::LoadFailed);
    assert!(e.message.contains("getter says no"), "{e}");
}

#[test]
fn an_unlimited_timeout_does_not_overflow() {
    let (_d, _m, h) = load_module("export default { ok() { return 1; } };");
    let v: i64 = h.call_blocking_with("ok", (), CallOptions::default().timeout(Duration::MAX)).unwrap();
    assert_eq!(v, 1);
    assert_eq!(h.call_blocking::<_, i64>("ok", ()).unwrap(), 1);
    // Far, but not so far that adding it to now fails: the deadline must not wrap around to
    // "now" when counted in nanoseconds.
    let (_d, _m, h) = load_module(
        "export default { busy() { const end = Date.now() + 100; while (Date.now() < end) {} return 1; } };",
    );
    for far in [Duration::from_millis(u64::MAX), Duration::from_secs(1000 * 365 * 24 * 3600)] {
        let v: i64 = h.call_blocking_with("busy", (), CallOptions::default().timeout(far)).unwrap();
        assert_eq!(v, 1, "{far:?}");
    }
}

#[test]
fn a_restart_after_heap_limit_brings_back_the_same_version() {
    let dir = PluginDir::new();
    let path = dir.module(
        "same",
        "import { v } from './v.js';\nexport default { v() { return v; }, hog() { const k = []; while (true) k.push(new ArrayBuffer(1 << 20)); } };",
    );
    std::fs::write(path.join("v.js"), "export const v = 1;").unwrap();
    let m = Manager::new(engine_with(5_000, 16));
    let h = m.load(&path).unwrap();
    // Edited (and broken) on disk, but not reloaded: the running version is still 1.
    std::fs::write(path.join("v.js"), "export const v = ;").unwrap();
    assert_eq!(h.call_blocking::<_, Value>("hog", ()).unwrap_err().code, ErrorCode::HeapLimit);
    assert_eq!(h.call_blocking::<_, i64>("v", ()).unwrap(), 1, "restarted as the version that was running");
    assert_eq!(h.status(), PluginStatus::Ready);
}

#[test]
fn a_restart_after_heap_limit_needs_no_file_on_disk() {
    let dir = PluginDir::new();
    let path = dir.module(
        "gone",
        "import { v } from './lib/v.js';\nexport default { v() { return v; }, hog() { const k = []; while (true) k.push(new ArrayBuffer(1 << 20)); } };",
    );
    dir.write("gone/lib/v.js", "export const v = 7;");
    let m = Manager::new(engine_with(5_000, 16));
    let h = m.load(&path).unwrap();
    // Every file of the running version deleted, not reloaded: the restart comes from memory.
    std::fs::remove_dir_all(path.join("lib")).unwrap();
    std::fs::remove_file(path.join("main.js")).unwrap();
    assert_eq!(h.call_blocking::<_, Value>("hog", ()).unwrap_err().code, ErrorCode::HeapLimit);
    assert_eq!(h.call_blocking::<_, i64>("v", ()).unwrap(), 7, "restarted from the sources in memory");
    assert_eq!(h.status(), PluginStatus::Ready);
    assert_eq!(h.stats().restarts, 1);
}

#[test]
fn garbage_array_buffers_do_not_break_the_budget() {
    // Many short-lived buffers: far more than the budget in all, never more than a few alive.
    let (_d, _m, h) = load_module_with(
        engine_with(10_000, 16),
        "export default {
            churn(n) { let sum = 0; for (let i = 0; i < n; i++) sum += new ArrayBuffer(1 << 20).byteLength; return sum; },
            typed(n) { let sum = 0; for (let i = 0; i < n; i++) sum += new Float64Array(1 << 17).length; return sum; },
        };",
    );
    assert_eq!(h.call_blocking::<_, u64>("churn", 400).unwrap(), 400 << 20);
    assert_eq!(h.call_blocking::<_, u64>("typed", 400).unwrap(), 400 << 17);
    assert_eq!(h.stats().restarts, 0);
}

#[test]
fn heap_and_array_buffers_share_one_budget() {
    // 20 MiB of strings and 20 MiB of buffers under a 32 MiB budget, in either order, is over;
    // 10 + 10 is not.
    let (_d, _m, h) = load_module_with(
        engine_with(10_000, 32),
        "const heap = (mb) => { const k = []; for (let i = 0; i < mb; i++) k.push(new Array(1 << 17).fill(i + 0.5)); return k; };
        const buffers = (mb) => { const k = []; for (let i = 0; i < mb; i++) k.push(new ArrayBuffer(1 << 20)); return k; };
        let kept = [];
        export default {
            heapThenBuffers() { kept = [heap(20), buffers(20)]; return 'kept'; },
            buffersThenHeap() { kept = [buffers(20), heap(20)]; return 'kept'; },
            both() { kept = [heap(10), buffers(10)]; return 'kept'; },
            release() { kept = []; return 'released'; },
        };",
    );
    assert_eq!(h.call_blocking::<_, String>("both", ()).unwrap(), "kept");
    assert_eq!(h.call_blocking::<_, String>("release", ()).unwrap(), "released");
    for hook in ["heapThenBuffers", "buffersThenHeap"] {
        let e = h.call_blocking::<_, Value>(hook, ()).unwrap_err();
        assert_eq!(e.code, ErrorCode::HeapLimit, "{hook}: {e}");
        assert_eq!(h.call_blocking::<_, String>("both", ()).unwrap(), "kept", "after {hook}");
        assert_eq!(h.call_blocking::<_, String>("release", ()).unwrap(), "released");
    }
    assert_eq!(h.stats().restarts, 2);
}

/// A plugin blocked in a sync host function cannot be terminated (V8 cannot stop Rust code).
/// When the host function comes back after the call's deadline, the call ends right there as
/// `TIMEOUT`: its answer or error is not given to the plugin, whose code never runs on. (An
/// error thrown at that moment used to replace V8's termination: the plugin caught an error
/// without `code` or `message` and its hook ran on past its deadline, answering `null`.)
#[test]
fn a_sync_host_function_that_returns_past_the_deadline_ends_the_call_there() {
    use isola::{HostApi, HostError};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};
    let ran_on = Arc::new(AtomicU32::new(0));
    let seen = ran_on.clone();
    let host = HostApi::new()
        .func("late", |(fail,): (bool,)| -> anyhow::Result<Value> {
            let deadline = isola::call_deadline().expect("a deadline inside a hook");
            std::thread::sleep(deadline.saturating_duration_since(Instant::now()) + Duration::from_millis(30));
            if fail { Err(HostError::new("the backend gave up").code("GAVE_UP").into()) } else { Ok(json!("late")) }
        })
        .func("ranOn", move |(what,): (String,)| {
            seen.fetch_add(1, Ordering::SeqCst);
            Ok(what)
        });
    let engine = common::builder().host(host).call_timeout(Duration::from_millis(150)).build();
    let (_d, _m, h) = load_module_with(
        engine,
        "let calls = 0;
        export default {
            late(fail) {
                calls++;
                try { const v = host.late(fail); host.ranOn('after an answer'); return v; }
                catch (e) { host.ranOn('in catch'); return { code: e.code ?? null, message: e.message ?? null }; }
            },
            count() { return calls; },
        };",
    );
    for (round, fail) in [false, true, false, true].into_iter().enumerate() {
        let e = h.call_blocking::<_, Value>("late", (fail,)).unwrap_err();
        assert_eq!(e.code, ErrorCode::Timeout, "fail={fail}: {e}");
        assert_eq!(ran_on.load(Ordering::SeqCst), 0, "the hook ran on past its deadline (fail={fail})");
        // The plugin is fine and kept its state.
        assert_eq!(h.call_blocking::<_, u64>("count", ()).unwrap(), round as u64 + 1);
    }
    assert_eq!(h.stats().restarts, 0);
}

/// The same for a storage backend that takes longer than the call may, whether the write
/// succeeds (it completes, but the plugin does not run on) or fails (over its quota).
#[test]
fn a_storage_operation_that_returns_past_the_deadline_ends_the_call_there() {
    use isola::storage::{MemoryStorage, Storage, StorageBackend, StorageError, StorageQuota, Usage};
    /// Memory storage whose `set` takes 400 ms (a slow disk, a remote store), and refuses the
    /// key `full` as over quota.
    struct Slow(MemoryStorage);
    impl StorageBackend for Slow {
        fn get(&self, p: &str, k: &str) -> Result<Option<String>, StorageError> {
            self.0.get(p, k)
        }
        fn set(&self, p: &str, k: &str, v: &str, q: &StorageQuota) -> Result<(), StorageError> {
            std::thread::sleep(Duration::from_millis(400));
            if k == "full" {
                return Err(StorageError::Quota("no room left".into()));
            }
            self.0.set(p, k, v, q)
        }
        fn delete(&self, p: &str, k: &str) -> Result<bool, StorageError> {
            self.0.delete(p, k)
        }
        fn list(&self, p: &str, prefix: &str) -> Result<Vec<String>, StorageError> {
            self.0.list(p, prefix)
        }
        fn usage(&self, p: &str) -> Result<Usage, StorageError> {
            self.0.usage(p)
        }
        fn remove_plugin(&self, p: &str) -> Result<(), StorageError> {
            self.0.remove_plugin(p)
        }
    }
    let storage = Storage::new(Slow(MemoryStorage::default()));
    let engine =
        common::builder().host(test_host()).storage(storage.clone()).call_timeout(Duration::from_millis(150)).build();
    let dir = PluginDir::new();
    let manifest = r#"{"id":"p","name":"p","version":"1.0.0","apiVersion":1,"permissions":["storage"]}"#;
    let m = Manager::new(engine);
    let h = m
        .load(dir.module_with_manifest(
            "p",
            manifest,
            "export default {
                save(key) {
                    try { host.storage.set(key, 1); host.storage.set('after', 'ran on'); return 'saved'; }
                    catch (e) { host.storage.set('after', 'in catch'); return e.code ?? null; }
                },
                read(k) { return host.storage.get(k); },
            };",
        ))
        .unwrap();
    for key in ["k", "full"] {
        let e = h.call_blocking::<_, Value>("save", (key,)).unwrap_err();
        assert_eq!(e.code, ErrorCode::Timeout, "{key}: {e}");
        assert_eq!(h.call_blocking::<_, Value>("read", ("after",)).unwrap(), Value::Null, "the hook ran on ({key})");
    }
    assert_eq!(h.call_blocking::<_, Value>("read", ("k",)).unwrap(), json!(1), "the write itself completed");
}

/// A hook that loops on errors isola throws into it (a refused host call, wrong argument
/// types, a bad storage key, an oversized event, undecodable text, a module that is no wasm)
/// is stopped at its deadline like any loop, and every error it catches is a real `Error`.
/// (deno_core builds an op's error by entering JS, where V8 acts on a pending termination;
/// its fallback then replaced the termination: the hook caught a bare string and ran on, up
/// to 36 ms past a 100 ms limit, until the watchdog asked again at a better moment.)
#[test]
fn a_hook_looping_on_thrown_errors_is_stopped_at_its_deadline() {
    use isola::HostApi;
    let host = HostApi::new()
        .func("refused", |(): ()| Ok(1))
        .requires("refused", "never-granted")
        .func("double", |(x,): (f64,)| Ok(x * 2.0));
    let engine = common::builder().host(host).call_timeout(Duration::from_millis(100)).build();
    let dir = PluginDir::new();
    let manifest = r#"{"id":"p","name":"p","version":"1.0.0","apiVersion":1,"permissions":["storage","events"]}"#;
    let m = Manager::new(engine);
    let h = m
        .load(dir.module_with_manifest(
            "p",
            manifest,
            "let caught = 0, bad = [];
            const big = 'x'.repeat(1 << 20);
            const fatal = new TextDecoder('utf-8', { fatal: true });
            const throwers = {
                refused: () => host.refused(),
                types: () => host.double('not a number'),
                storage: () => host.storage.get(''),
                emit: () => host.events.emit('e', big),
                decode: () => fatal.decode(new Uint8Array([0xff])),
                wasm: () => new WebAssembly.Module(new Uint8Array([0, 1, 2, 3])),
            };
            export default {
                loop(kind) {
                    caught = 0; bad = [];
                    const f = throwers[kind];
                    for (;;) {
                        try { f(); } catch (e) {
                            caught++;
                            if (!(e instanceof Error) || typeof e.message !== 'string' || e.message === '') bad.push(String(e));
                        }
                    }
                },
                report() { return { caught, bad: bad.slice(0, 3) }; },
            };",
        ))
        .unwrap();
    for kind in ["refused", "types", "storage", "emit", "decode", "wasm"] {
        for round in 0..5 {
            let e = h.call_blocking::<_, Value>("loop", (kind,)).unwrap_err();
            assert_eq!(e.code, ErrorCode::Timeout, "{kind}: {e}");
            let r: Value = h.call_blocking("report", ()).unwrap();
            assert!(r["caught"].as_u64().unwrap() > 0, "{kind}: the loop threw nothing: {r}");
            assert_eq!(r["bad"], json!([]), "{kind}, round {round}: caught something that is no error: {r}");
        }
    }
    assert_eq!(h.stats().restarts, 0);
}

/// The same for an async hook awaiting host functions that fail, in a loop: every error it
/// catches is the host's, with its code. (deno_core made each rejection's error by entering
/// JS from its event loop, where V8 acted on a pending termination that the event loop then
/// dropped: the hook caught an error without `code` for each one, and ran on, up to 97 ms
/// past a 100 ms limit.)
#[test]
fn an_async_hook_looping_on_failing_host_functions_is_stopped_at_its_deadline() {
    use isola::{HostApi, HostError};
    let host = HostApi::new()
        .async_func("fails", |(): ()| async { Err::<u32, _>(HostError::new("no").code("NOPE").into()) })
        .async_func("refused", |(): ()| async { Ok(1) })
        .requires("refused", "never-granted");
    let engine = common::builder().host(host).call_timeout(Duration::from_millis(100)).build();
    let (_d, _m, h) = load_module_with(
        engine,
        "let caught = 0, bad = [];
        export default {
            async loop(kind) {
                caught = 0; bad = [];
                for (;;) {
                    try { await host[kind](); } catch (e) {
                        caught++;
                        // ABORTED: an await the call's end abandoned (the loop goes on in
                        // the background turn that follows a timeout, briefly).
                        const want = [kind === 'fails' ? 'HOST_ERROR' : 'PERMISSION_DENIED', 'ABORTED'];
                        if (!(e instanceof Error) || !want.includes(e.code) || e.message === '') bad.push(`${e.code}: ${e.message}`);
                    }
                }
            },
            report() { return { caught, bad: bad.slice(0, 3) }; },
        };",
    );
    for kind in ["fails", "refused"] {
        for round in 0..8 {
            let e = h.call_blocking::<_, Value>("loop", (kind,)).unwrap_err();
            assert_eq!(e.code, ErrorCode::Timeout, "{kind}: {e}");
            let r: Value = h.call_blocking("report", ()).unwrap();
            assert!(r["caught"].as_u64().unwrap() > 0, "{kind}: the loop caught nothing: {r}");
            assert_eq!(r["bad"], json!([]), "{kind}, round {round}: an error without its code: {r}");
        }
    }
}
