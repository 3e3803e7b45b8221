//! The warm pool (`EngineBuilder::warm_pool`): plugin threads with isolates made ahead of time.
//! A plugin started from the pool is the same as one started cold — its own host table,
//! permissions, imports, budget — loading, reloading and restarting after `HEAP_LIMIT` take a
//! ready thread, the pool refills itself, and it never keeps more than its size.
//!
//! The tests here count threads by name, so they run one at a time.

mod common;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{PluginDir, test_host};
use isola::{Engine, ErrorCode, Manager};
use serde_json::{Value, json};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

fn pooled(size: usize) -> Engine {
    Engine::builder()
        .host(test_host().requires("add", "math"))
        .warm_pool(size)
        .heap_limit_mb(32)
        .call_timeout(Duration::from_secs(5))
        .build()
}

/// Waits until the pool holds `n` ready threads.
fn until_ready(m: &Manager, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while m.pool_stats().unwrap().ready < n {
        assert!(Instant::now() < deadline, "the pool did not refill: {:?}", m.pool_stats());
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Threads of this process whose name starts with `prefix`.
fn threads_named(prefix: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with(prefix))
        .count()
}

fn manifest(id: &str, extra: Value) -> String {
    let mut m = json!({"id": id, "name": id, "version": "1.0.0", "apiVersion": 1});
    m.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    m.to_string()
}

#[test]
fn plugins_started_from_the_pool_get_their_own_host_api_imports_and_permissions() {
    let _one = serial();
    let dir = PluginDir::new();
    let m = Manager::new(pooled(2));
    until_ready(&m, 2);
    let before = m.pool_stats().unwrap();
    assert!(before.made >= 2 && before.cpu_us_per_isolate > 0, "{before:?}");

    dir.write("mathy/lib.js", "export const twice = (x) => host.add(x, x);");
    let mathy = m
        .load(dir.module_with_manifest(
            "mathy",
            &manifest("mathy", json!({"permissions": ["math"]})),
            "import { twice } from './lib.js'; export default { run(x) { return twice(x); }, who() { return typeof host.add; } };",
        ))
        .unwrap();
    let plain = m
        .load(dir.module(
            "plain",
            "export default {
                who() { try { host.add(1, 2); return 'called'; } catch (e) { return e.code; } },
                grab() { return import('../mathy/lib.js'); },
            };",
        ))
        .unwrap();
    assert_eq!(mathy.call_blocking::<_, f64>("run", (21,)).unwrap(), 42.0);
    assert_eq!(mathy.call_blocking::<_, String>("who", ()).unwrap(), "function");
    // The table of the first plugin is not left behind for the next one.
    assert_eq!(plain.call_blocking::<_, String>("who", ()).unwrap(), "PERMISSION_DENIED");
    let e = plain.call_blocking::<_, Value>("grab", ()).unwrap_err();
    assert!(e.message.contains("only import files inside its own folder"), "{e}");
    assert_eq!(m.pool_stats().unwrap().taken, before.taken + 2, "both came from the pool");

    // The pool refills, and never keeps more than its size.
    until_ready(&m, 2);
    std::thread::sleep(Duration::from_millis(50));
    let after = m.pool_stats().unwrap();
    assert_eq!(after.ready, 2, "{after:?}");
    assert_eq!(threads_named("isola:warm"), 2, "two threads wait, no more");
    m.shutdown();
    assert_eq!(threads_named("isola:warm"), 0, "the pool's threads end with the manager");
    assert_eq!(threads_named("isola:pool"), 0, "so does its refill thread, joined at shutdown");
}

#[test]
fn a_plugin_with_another_budget_starts_cold_and_an_empty_pool_only_slows_loading() {
    let _one = serial();
    let dir = PluginDir::new();
    let m = Manager::new(pooled(1));
    until_ready(&m, 1);
    let small = m
        .load(dir.module_with_manifest(
            "small",
            &manifest("small", json!({"limits": {"heapMb": 16}})),
            "export default { limit() { return 1; } };",
        ))
        .unwrap();
    assert_eq!(small.call_blocking::<_, u64>("limit", ()).unwrap(), 1);
    assert_eq!(m.pool_stats().unwrap().taken, 0, "a 16 MiB plugin does not take a 32 MiB isolate");
    assert_eq!(small.stats().heap_limit, 16 << 20);

    // Five plugins at once from a pool of one: the rest start cold, all work.
    let handles: Vec<_> = (0..5)
        .map(|i| m.load(dir.module(&format!("p{i}"), &format!("export default {{ n() {{ return {i}; }} }};"))).unwrap())
        .collect();
    for (i, h) in handles.iter().enumerate() {
        assert_eq!(h.call_blocking::<_, usize>("n", ()).unwrap(), i);
    }
    assert!(m.pool_stats().unwrap().taken >= 1);
    m.shutdown();
}

#[test]
fn reload_and_restart_after_heap_limit_take_a_ready_thread() {
    let _one = serial();
    let dir = PluginDir::new();
    let m = Manager::new(pooled(2));
    let events = m.events();
    until_ready(&m, 2);
    let path = dir.module(
        "bomb",
        "let calls = 0; export default {
            count() { return ++calls; },
            bomb() { const a = []; while (true) a.push(new Array(1e5).fill(1)); },
            buffers() { const a = []; while (true) a.push(new ArrayBuffer(1 << 20)); },
        };",
    );
    let h = m.load(&path).unwrap();
    assert_eq!(h.call_blocking::<_, u64>("count", ()).unwrap(), 1);
    until_ready(&m, 2);
    let taken = m.pool_stats().unwrap().taken;

    // An allocation bomb: HEAP_LIMIT, then a fresh plugin on a pool thread, calls queued
    // meanwhile answered by it.
    let queued: Vec<_> = {
        let bomb = {
            let h = h.clone();
            std::thread::spawn(move || h.call_blocking::<_, Value>("bomb", ()))
        };
        std::thread::sleep(Duration::from_millis(5));
        let q: Vec<_> = (0..3)
            .map(|_| {
                let h = h.clone();
                std::thread::spawn(move || h.call_blocking::<_, u64>("count", ()))
            })
            .collect();
        let e = bomb.join().unwrap().unwrap_err();
        assert_eq!(e.code, ErrorCode::HeapLimit, "{e}");
        q.into_iter().map(|t| t.join().unwrap().unwrap()).collect()
    };
    let mut queued = queued;
    queued.sort();
    assert!(queued.iter().all(|n| *n >= 1) && queued.len() == 3, "{queued:?}");
    assert_eq!(h.stats().restarts, 1);
    assert_eq!(m.pool_stats().unwrap().taken, taken + 1, "the restart took a ready thread");
    let restarted = events.try_iter().any(|e| matches!(e, isola::events::LifecycleEvent::Restarted { .. }));
    assert!(restarted, "a Restarted event");

    // Again with ArrayBuffers, right away (the pool may be empty: then it restarts cold).
    let e = h.call_blocking::<_, Value>("buffers", ()).unwrap_err();
    assert_eq!(e.code, ErrorCode::HeapLimit, "{e}");
    assert_eq!(h.call_blocking::<_, u64>("count", ()).unwrap(), 1, "fresh after the second restart");
    assert_eq!(h.stats().restarts, 2);

    // Reload: a new version from the pool.
    until_ready(&m, 2);
    let taken = m.pool_stats().unwrap().taken;
    std::fs::write(path.join("main.js"), "export default { count() { return 'v2'; } };").unwrap();
    m.reload("bomb").unwrap();
    assert_eq!(h.call_blocking::<_, String>("count", ()).unwrap(), "v2");
    assert_eq!(m.pool_stats().unwrap().taken, taken + 1);

    // Unload waits for every thread the plugin ran on, the restarted ones too.
    m.unload("bomb").unwrap();
    assert_eq!(threads_named("isola:bomb"), 0);
    m.shutdown();
}

#[test]
fn pooled_isolates_count_under_the_total_memory_limit() {
    let _one = serial();
    let engine = Engine::builder().warm_pool(3).total_memory_limit_mb(1024).build();
    let m = Manager::new(engine.clone());
    until_ready(&m, 3);
    let held = engine.memory_in_use();
    assert!(held > 3 * (256 << 10), "three ready isolates hold {held} bytes");
    m.shutdown();
    assert!(engine.memory_in_use() < (256 << 10), "given back at shutdown: {} bytes", engine.memory_in_use());
    assert!(Manager::new(Engine::default()).pool_stats().is_none(), "no pool unless asked");
}

#[test]
fn a_stateless_plugin_takes_a_fresh_instance_from_the_pool_after_every_call() {
    let _one = serial();
    let dir = PluginDir::new();
    let m = Manager::new(pooled(2));
    until_ready(&m, 2);
    let path = dir.module_with_manifest(
        "fresh",
        &manifest("fresh", json!({"stateless": true})),
        "let n = 0; export default { inc() { return ++n; } };",
    );
    let h = m.load(path).unwrap();
    let taken = m.pool_stats().unwrap().taken;
    for i in 1..=20 {
        // Two ready: enough for this call's successor and, should the last call's successor
        // not be taken yet, for that one too.
        until_ready(&m, 2);
        assert_eq!(h.call_blocking::<_, u64>("inc", ()).unwrap(), 1, "call {i}");
    }
    // The instance for the next call was taken as soon as each call was answered.
    // (The last one may still be taking its successor.)
    assert!(m.pool_stats().unwrap().taken >= taken + 19, "{:?}", m.pool_stats());
    // Threads that handed over are gone, not piled up.
    std::thread::sleep(Duration::from_millis(20));
    assert!(threads_named("isola:fresh") <= 2, "{} threads", threads_named("isola:fresh"));
    m.unload("fresh").unwrap();
    assert_eq!(threads_named("isola:fresh"), 0);
    m.shutdown();
}

#[test]
fn stateless_must_be_a_boolean() {
    let _one = serial();
    let dir = PluginDir::new();
    let m = Manager::new(pooled(0));
    let path = dir.module_with_manifest("bad", &manifest("bad", json!({"stateless": "yes"})), "export default {};");
    let e = m.load(path).unwrap_err();
    assert_eq!(e.code, ErrorCode::ManifestInvalid, "{e}");
    assert!(
        e.diagnostics.iter().any(|d| d.path == "$.stateless" && d.message.contains("true or false")),
        "{:?}",
        e.diagnostics
    );
}
