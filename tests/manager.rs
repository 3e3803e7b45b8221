//! The manager: many plugins, unload, reload, shutdown, stats.

mod common;

use std::time::{Duration, Instant};

use common::{PluginDir, engine};
use isola::{ErrorCode, Manager, PluginStatus};
use serde_json::Value;

#[test]
fn two_hundred_plugins_load_answer_concurrently_and_shut_down() {
    let dir = PluginDir::new();
    for i in 0..200 {
        if i % 2 == 0 {
            dir.module(
                &format!("m{i:03}"),
                &format!("let n = 0; export default {{ id() {{ n++; return {i}; }}, n() {{ return n; }} }};"),
            );
        } else {
            dir.script(
                &format!("s{i:03}"),
                &format!("var n = 0; var plugin = {{ id() {{ n++; return {i}; }}, n() {{ return n; }} }};"),
            );
        }
    }
    let m = Manager::new(engine());
    let report = m.load_dir(dir.path()).unwrap();
    assert_eq!(report.loaded.len(), 200, "{:?}", report.failed);
    let handles: Vec<_> = m.ids().iter().map(|id| m.handle(id).unwrap()).collect();

    // Eight threads call every plugin five times each, interleaved.
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                for _ in 0..5 {
                    for h in &handles {
                        let want: i64 = h.id()[1..].parse().unwrap();
                        assert_eq!(h.call_blocking::<_, i64>("id", ()).unwrap(), want);
                    }
                }
            });
        }
    });
    for h in &handles {
        assert_eq!(h.call_blocking::<_, i64>("n", ()).unwrap(), 40, "{}", h.id());
        assert_eq!(h.stats().calls, 41);
    }

    let t = Instant::now();
    m.shutdown();
    assert!(t.elapsed() < Duration::from_secs(5), "shutdown took {:?}", t.elapsed());
    let e = handles[0].call_blocking::<_, i64>("id", ()).unwrap_err();
    assert_eq!(e.code, ErrorCode::ShutDown);
    assert!(m.list().is_empty());
}

#[test]
fn a_busy_plugin_does_not_delay_another() {
    let dir = PluginDir::new();
    let spin = "export default { busy(ms) { const end = Date.now() + ms; while (Date.now() < end) {} return ms; }, hi() { return 'hi'; } };";
    dir.module("a", spin);
    dir.module("b", spin);
    let m = Manager::new(engine());
    m.load_dir(dir.path()).unwrap();
    let (a, b) = (m.handle("a").unwrap(), m.handle("b").unwrap());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut slow = tokio::spawn(a.call::<_, u64>("busy", (3_000,)));
        tokio::time::sleep(Duration::from_millis(20)).await;
        // b answers while a is still busy: they run on different threads.
        assert_eq!(b.call::<_, String>("hi", ()).await.unwrap(), "hi");
        assert!(tokio::time::timeout(Duration::from_millis(1), &mut slow).await.is_err(), "a finished early");
        assert_eq!(slow.await.unwrap().unwrap(), 3_000);
    });
}

#[test]
fn plugin_threads_are_named_after_the_plugin() {
    let dir = PluginDir::new();
    let m = Manager::new(engine());
    m.load(dir.module("named", "export default { x() { return 1; } };")).unwrap();
    let names: Vec<String> = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|s| s.trim().to_owned())
        .collect();
    assert!(names.iter().any(|n| n == "isola:named"), "{names:?}");
}

#[test]
fn unload_stops_the_plugin_and_keeps_the_others() {
    let dir = PluginDir::new();
    dir.module("a", "export default { x() { return 'a'; } };");
    dir.module("b", "export default { x() { return 'b'; } };");
    let m = Manager::new(engine());
    m.load_dir(dir.path()).unwrap();
    let a = m.handle("a").unwrap();
    m.unload("a").unwrap();
    assert_eq!(a.call_blocking::<_, String>("x", ()).unwrap_err().code, ErrorCode::ShutDown);
    assert_eq!(a.status(), PluginStatus::Stopped);
    assert_eq!(m.handle("a").unwrap_err().code, ErrorCode::PluginNotFound);
    assert_eq!(m.unload("a").unwrap_err().code, ErrorCode::PluginNotFound);
    assert_eq!(m.handle("b").unwrap().call_blocking::<_, String>("x", ()).unwrap(), "b");
}

#[test]
fn reload_picks_up_changes_and_keeps_handles_working() {
    let dir = PluginDir::new();
    let path = dir.module("r", "export default { v() { return 1; } };");
    let m = Manager::new(engine());
    let h = m.load(&path).unwrap();
    assert_eq!(h.call_blocking::<_, i64>("v", ()).unwrap(), 1);

    std::fs::write(path.join("main.js"), "export default { v() { return 2; }, extra() {} };").unwrap();
    m.reload("r").unwrap();
    assert_eq!(h.call_blocking::<_, i64>("v", ()).unwrap(), 2, "the old handle reaches the new version");
    assert_eq!(h.hooks(), vec!["extra", "v"]);

    // A broken edit: the last good version keeps serving, the error is kept.
    std::fs::write(path.join("main.js"), "export default { v() { return 3; ").unwrap();
    let e = m.reload("r").unwrap_err();
    assert_eq!(e.code, ErrorCode::LoadFailed);
    assert_eq!(e.js.as_ref().unwrap().file.as_deref(), Some("main.js"));
    assert_eq!(h.call_blocking::<_, i64>("v", ()).unwrap(), 2);
    assert_eq!(h.status(), PluginStatus::Ready);
    assert_eq!(h.last_error().unwrap().code, ErrorCode::LoadFailed);

    // Fixing it recovers.
    std::fs::write(path.join("main.js"), "export default { v() { return 4; } };").unwrap();
    m.reload("r").unwrap();
    assert_eq!(h.call_blocking::<_, i64>("v", ()).unwrap(), 4);
    assert!(h.last_error().is_none());
}

#[test]
fn reload_of_a_failed_plugin_recovers_it() {
    let dir = PluginDir::new();
    let path = dir.module("f", "export default { v( };");
    let m = Manager::new(engine());
    m.load_dir(dir.path()).unwrap();
    assert_eq!(m.list()[0].status, PluginStatus::Failed);
    std::fs::write(path.join("main.js"), "export default { v() { return 'fixed'; } };").unwrap();
    m.reload("f").unwrap();
    assert_eq!(m.handle("f").unwrap().call_blocking::<_, String>("v", ()).unwrap(), "fixed");
    assert_eq!(m.list()[0].status, PluginStatus::Ready);
}

#[test]
fn calls_queued_during_a_reload_are_all_answered() {
    let dir = PluginDir::new();
    let path = dir.module("q", "export default { async v(ms) { await host.sleep(ms); return 1; } };");
    let m = Manager::new(engine());
    let h = m.load(&path).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let pending: Vec<_> = (0..20).map(|_| h.call::<_, i64>("v", (5,))).collect();
    std::fs::write(path.join("main.js"), "export default { async v(ms) { await host.sleep(ms); return 2; } };")
        .unwrap();
    m.reload("q").unwrap();
    let after = h.call::<_, i64>("v", (1,));
    rt.block_on(async {
        for p in pending {
            assert_eq!(p.await.unwrap(), 1, "queued before the reload: answered by the old version");
        }
        assert_eq!(after.await.unwrap(), 2);
    });
}

#[test]
fn stats_count_calls_errors_and_time() {
    let (_d, _m, h) = common::load_module(
        "export default { ok() { let s = 0; for (let i = 0; i < 1e5; i++) s += i; return s; }, bad() { throw new Error('x'); } };",
    );
    for _ in 0..3 {
        h.call_blocking::<_, Value>("ok", ()).unwrap();
    }
    h.call_blocking::<_, Value>("bad", ()).unwrap_err();
    h.call_blocking::<_, Value>("missing", ()).unwrap_err();
    let s = h.stats();
    assert_eq!(s.calls, 5);
    assert_eq!(s.errors_of(ErrorCode::JsError), 1);
    assert_eq!(s.errors_of(ErrorCode::HookNotFound), 1);
    assert_eq!(s.errors.values().sum::<u64>(), 2);
    assert!(s.heap_used > 0 && s.heap_used < s.heap_limit, "{s:?}");
    assert!(s.cpu_time > Duration::ZERO);
    assert!(s.wall_time > Duration::ZERO);
    let json = serde_json::to_value(&s).unwrap();
    assert_eq!(json["errors"]["JS_ERROR"], 1);
}

#[test]
fn handles_work_from_many_threads() {
    let (_d, _m, h) = common::load_module("let n = 0; export default { inc() { return ++n; } };");
    std::thread::scope(|s| {
        for _ in 0..4 {
            let h = h.clone();
            s.spawn(move || {
                for _ in 0..250 {
                    h.call_blocking::<_, i64>("inc", ()).unwrap();
                }
            });
        }
    });
    assert_eq!(h.call_blocking::<_, i64>("inc", ()).unwrap(), 1001);
}

#[test]
fn a_broken_namesake_never_waits_on_a_restarting_plugin() {
    // `a`'s top-level code calls `b` twice; after HEAP_LIMIT it runs again while restarting.
    // A broken namesake arriving meanwhile must neither replace `a` nor wait on its thread
    // while holding the plugin table (`a`'s second call needs the table: a deadlock).
    let dir = PluginDir::new();
    let b = dir.module(
        "b",
        "export default { slow() { const end = Date.now() + 300; while (Date.now() < end) {} return 1; } };",
    );
    let a = dir.module_with_manifest(
        "a",
        r#"{"id": "a", "name": "a", "version": "1.0.0", "apiVersion": 1, "permissions": ["call:b"]}"#,
        "const first = await host.plugins.call('b', 'slow');
         const second = await host.plugins.call('b', 'slow');
         export default { sum() { return first + second; }, hog() { const k = []; while (true) k.push(new ArrayBuffer(1 << 20)); } };",
    );
    let other = tempfile::tempdir().unwrap();
    let namesake = other.path().join("a"); // a folder without plugin.json: cannot be read
    std::fs::create_dir_all(&namesake).unwrap();

    let m = Manager::new(isola::Engine::builder().host(common::test_host()).heap_limit_mb(16).build());
    m.load(&b).unwrap();
    let h = m.load(&a).unwrap();
    assert_eq!(h.call_blocking::<_, i64>("sum", ()).unwrap(), 2);
    assert_eq!(h.call_blocking::<_, Value>("hog", ()).unwrap_err().code, ErrorCode::HeapLimit);
    let t = Instant::now();
    while h.status() != PluginStatus::Restarting {
        assert!(t.elapsed() < Duration::from_secs(5), "a never started restarting");
        std::thread::yield_now();
    }
    let m = std::sync::Arc::new(m);
    let (tx, rx) = std::sync::mpsc::channel();
    let m2 = m.clone();
    std::thread::spawn(move || tx.send(m2.load(&namesake).map(drop)).unwrap());
    match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(r) => assert_eq!(r.unwrap_err().code, ErrorCode::LoadFailed),
        Err(_) => {
            // Deadlocked: dropping the manager would hang too, so leak it and fail.
            std::mem::forget(m);
            panic!("loading a broken namesake deadlocked the manager");
        }
    }
    // `a` came back as itself, from its own folder.
    assert_eq!(h.call_blocking::<_, i64>("sum", ()).unwrap(), 2);
    let info = m.list().into_iter().find(|p| p.id == "a").unwrap();
    assert_eq!(info.location, std::fs::canonicalize(&a).unwrap());
}
