//! Hot reload: a watched directory keeps the manager in sync, and a bad edit never replaces a
//! working version.

mod common;

use std::time::{Duration, Instant};

use common::{PluginDir, engine};
use isola::events::{LifecycleEvent, LifecycleEvents};
use isola::{ErrorCode, Manager};
use serde_json::Value;

/// Waits for the first event matching `pred` (skipping others).
fn wait_for(events: &LifecycleEvents, what: &str, pred: impl Fn(&LifecycleEvent) -> bool) -> LifecycleEvent {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match events.recv_timeout(left) {
            Some(e) if pred(&e) => return e,
            Some(_) => continue,
            None => panic!("no {what} event within 10 s"),
        }
    }
}

fn reloaded(e: &LifecycleEvent) -> bool {
    matches!(e, LifecycleEvent::Reloaded { .. })
}

fn watched(dir: &PluginDir) -> (Manager, LifecycleEvents) {
    let m = Manager::new(engine());
    m.load_dir(dir.path()).unwrap();
    let events = m.events();
    m.watch(dir.path()).unwrap();
    (m, events)
}

#[test]
fn an_edit_is_picked_up_by_the_next_call() {
    let dir = PluginDir::new();
    let path = dir.module("live", "export default { v() { return 1; } };");
    let (m, events) = watched(&dir);
    let h = m.handle("live").unwrap();
    assert_eq!(h.call_blocking::<_, i64>("v", ()).unwrap(), 1);

    std::fs::write(path.join("main.js"), "export default { v() { return 2; } };").unwrap();
    let e = wait_for(&events, "reloaded", reloaded);
    assert_eq!(e.plugin(), "live");
    assert_eq!(h.call_blocking::<_, i64>("v", ()).unwrap(), 2);

    // An editor's atomic save: write a temp file, rename it over the original.
    std::fs::write(path.join("main.js.tmp"), "export default { v() { return 3; } };").unwrap();
    std::fs::rename(path.join("main.js.tmp"), path.join("main.js")).unwrap();
    wait_for(&events, "reloaded", reloaded);
    assert_eq!(h.call_blocking::<_, i64>("v", ()).unwrap(), 3);
}

#[test]
fn a_broken_edit_keeps_the_old_version_and_a_fix_recovers() {
    let dir = PluginDir::new();
    let path = dir.module("fragile", "export default { v() { return 'good'; } };");
    let (m, events) = watched(&dir);
    let h = m.handle("fragile").unwrap();

    std::fs::write(path.join("main.js"), "export default {\n  v() { return 'bad' \n};\n").unwrap();
    let e = wait_for(&events, "reload failed", |e| matches!(e, LifecycleEvent::ReloadFailed { .. }));
    let LifecycleEvent::ReloadFailed { plugin, error } = e else { unreachable!() };
    assert_eq!(plugin, "fragile");
    assert_eq!(error.code, ErrorCode::LoadFailed);
    let js = error.js.expect("syntax error details");
    assert_eq!(js.file.as_deref(), Some("main.js"));
    assert!(js.line.is_some());
    assert_eq!(h.call_blocking::<_, String>("v", ()).unwrap(), "good", "the last good version serves");

    // Invalid manifest and top-level throw: same story.
    std::fs::write(path.join("plugin.json"), r#"{"id": "fragile", "apiVersion": 9}"#).unwrap();
    let e = wait_for(&events, "reload failed", |e| matches!(e, LifecycleEvent::ReloadFailed { .. }));
    let LifecycleEvent::ReloadFailed { error, .. } = e else { unreachable!() };
    assert_eq!(error.code, ErrorCode::ManifestInvalid);
    assert_eq!(h.call_blocking::<_, String>("v", ()).unwrap(), "good");

    std::fs::write(path.join("plugin.json"), r#"{"id": "fragile", "name": "f", "version": "2.0.0", "apiVersion": 1}"#)
        .unwrap();
    std::fs::write(path.join("main.js"), "export default { v() { return 'fixed'; } };").unwrap();
    wait_for(&events, "reloaded", reloaded);
    assert_eq!(h.call_blocking::<_, String>("v", ()).unwrap(), "fixed");
    assert!(h.last_error().is_none());
    assert_eq!(m.list()[0].version, "2.0.0");
}

#[test]
fn state_is_handed_from_on_unload_to_on_load() {
    let dir = PluginDir::new();
    let code = |version: u32| {
        format!(
            "let count = 0; let loadedWith = 'nothing';
            export default {{
                onLoad(state) {{ loadedWith = state; if (state) count = state.count; }},
                onUnload() {{ return {{ count }}; }},
                inc() {{ return ++count; }},
                info() {{ return {{ version: {version}, loadedWith }}; }},
            }};"
        )
    };
    let path = dir.module("stateful", &code(1));
    let (m, events) = watched(&dir);
    let h = m.handle("stateful").unwrap();
    assert_eq!(h.call_blocking::<_, Value>("info", ()).unwrap(), serde_json::json!({"version": 1, "loadedWith": null}));
    for _ in 0..3 {
        h.call_blocking::<_, i64>("inc", ()).unwrap();
    }
    std::fs::write(path.join("main.js"), code(2)).unwrap();
    wait_for(&events, "reloaded", reloaded);
    assert_eq!(
        h.call_blocking::<_, Value>("info", ()).unwrap(),
        serde_json::json!({"version": 2, "loadedWith": {"count": 3}})
    );
    assert_eq!(h.call_blocking::<_, i64>("inc", ()).unwrap(), 4);
}

#[test]
fn a_failing_on_load_is_reported_not_fatal() {
    let dir = PluginDir::new();
    let m = Manager::new(engine());
    let events = m.events();
    let h = m
        .load(dir.module("grumpy", "export default { onLoad() { throw new Error('meh'); }, ok() { return 1; } };"))
        .unwrap();
    let e = wait_for(&events, "hook failed", |e| matches!(e, LifecycleEvent::HookFailed { .. }));
    let LifecycleEvent::HookFailed { error, .. } = e else { unreachable!() };
    assert_eq!(error.hook.as_deref(), Some("onLoad"));
    assert!(error.message.contains("meh"));
    assert_eq!(h.call_blocking::<_, i64>("ok", ()).unwrap(), 1);
}

#[test]
fn rapid_writes_end_with_the_final_content_in_few_reloads() {
    let dir = PluginDir::new();
    let path = dir.module("rapid", "export default { v() { return 0; } };");
    let (m, events) = watched(&dir);
    for i in 1..=10 {
        std::fs::write(path.join("main.js"), format!("export default {{ v() {{ return {i}; }} }};")).unwrap();
    }
    wait_for(&events, "reloaded", reloaded);
    // Let any straggling reload finish, then count.
    std::thread::sleep(Duration::from_millis(300));
    let more = events.try_iter().filter(reloaded).count();
    assert!(more <= 2, "10 writes caused {} reloads", more + 1);
    assert_eq!(m.handle("rapid").unwrap().call_blocking::<_, i64>("v", ()).unwrap(), 10);
}

#[test]
fn plugins_added_and_removed_are_loaded_and_unloaded() {
    let dir = PluginDir::new();
    dir.module("first", "export default { v() { return 'first'; } };");
    let (m, events) = watched(&dir);

    dir.module("second", "export default { v() { return 'second'; } };");
    let e = wait_for(&events, "loaded", |e| matches!(e, LifecycleEvent::Loaded { .. }));
    assert_eq!(e.plugin(), "second");
    assert_eq!(m.handle("second").unwrap().call_blocking::<_, String>("v", ()).unwrap(), "second");

    dir.script("third", "var plugin = { v() { return 'third'; } };");
    let e = wait_for(&events, "loaded", |e| matches!(e, LifecycleEvent::Loaded { .. }));
    assert_eq!(e.plugin(), "third");

    let first = m.handle("first").unwrap();
    std::fs::remove_dir_all(dir.path().join("first")).unwrap();
    let e = wait_for(&events, "unloaded", |e| matches!(e, LifecycleEvent::Unloaded { .. }));
    assert_eq!(e.plugin(), "first");
    assert_eq!(m.handle("first").unwrap_err().code, ErrorCode::PluginNotFound);
    assert_eq!(first.call_blocking::<_, String>("v", ()).unwrap_err().code, ErrorCode::ShutDown);

    std::fs::remove_file(dir.path().join("third.js")).unwrap();
    let e = wait_for(&events, "unloaded", |e| matches!(e, LifecycleEvent::Unloaded { .. }));
    assert_eq!(e.plugin(), "third");
    assert_eq!(m.ids(), vec!["second"]);
}

#[test]
fn no_call_is_lost_while_reloading() {
    let dir = PluginDir::new();
    let path = dir.module("busy", "export default { v() { return 1; } };");
    let (m, events) = watched(&dir);
    let h = m.handle("busy").unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let answers = std::thread::scope(|s| {
        let callers: Vec<_> = (0..3)
            .map(|_| {
                s.spawn(|| {
                    let mut seen = Vec::new();
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        seen.push(h.call_blocking::<_, i64>("v", ()).expect("no call may fail during a reload"));
                    }
                    seen
                })
            })
            .collect();
        for v in 2..=4 {
            std::fs::write(path.join("main.js"), format!("export default {{ v() {{ return {v}; }} }};")).unwrap();
            wait_for(&events, "reloaded", reloaded);
        }
        std::thread::sleep(Duration::from_millis(20));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        callers.into_iter().flat_map(|c| c.join().unwrap()).collect::<Vec<_>>()
    });
    assert!(answers.contains(&1) && answers.contains(&4), "{:?}", &answers[answers.len().saturating_sub(5)..]);
    assert_eq!(h.call_blocking::<_, i64>("v", ()).unwrap(), 4);
}

#[test]
fn a_heap_limit_restart_is_an_event() {
    let dir = PluginDir::new();
    let m = Manager::new(common::builder().host(common::test_host()).heap_limit_mb(16).build());
    let events = m.events();
    let h = m
        .load(
            dir.script(
                "hog",
                "var plugin = { hog() { const a = []; while (true) a.push(new ArrayBuffer(1 << 20)); } };",
            ),
        )
        .unwrap();
    assert_eq!(h.call_blocking::<_, Value>("hog", ()).unwrap_err().code, ErrorCode::HeapLimit);
    let e = wait_for(&events, "restarted", |e| matches!(e, LifecycleEvent::Restarted { .. }));
    let LifecycleEvent::Restarted { plugin, error } = e else { unreachable!() };
    assert_eq!((plugin.as_str(), error.code), ("hog", ErrorCode::HeapLimit));
}

#[test]
fn no_update_is_lost_across_a_state_hand_off() {
    let dir = PluginDir::new();
    let code = "let n = 0;
        export default {
            onLoad(state) { if (state) n = state.n; },
            onUnload() { return { n }; },
            inc() { return ++n; },
            get() { return n; },
        };";
    let path = dir.module("tally", code);
    let m = Manager::new(engine());
    let h = m.load(&path).unwrap();
    let done = std::sync::atomic::AtomicBool::new(false);
    let total = std::thread::scope(|s| {
        let callers: Vec<_> = (0..3)
            .map(|_| {
                s.spawn(|| {
                    let mut n = 0u64;
                    while !done.load(std::sync::atomic::Ordering::Relaxed) {
                        h.call_blocking::<_, i64>("inc", ()).unwrap();
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        for _ in 0..5 {
            std::thread::sleep(Duration::from_millis(20));
            m.reload("tally").unwrap();
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        callers.into_iter().map(|c| c.join().unwrap()).sum::<u64>()
    });
    assert_eq!(h.call_blocking::<_, u64>("get", ()).unwrap(), total, "every increment survived 5 reloads");
}

#[test]
fn unload_racing_reload_leaves_the_plugin_unloaded() {
    let dir = PluginDir::new();
    let path = dir.module("racer", "export default { v() { return 1; } };");
    for _ in 0..5 {
        let m = Manager::new(engine());
        let h = m.load(&path).unwrap();
        std::thread::scope(|s| {
            s.spawn(|| {
                let _ = m.reload("racer");
            });
            s.spawn(|| {
                let _ = m.unload("racer");
            });
        });
        if m.handle("racer").is_err() {
            assert_eq!(h.call_blocking::<_, i64>("v", ()).unwrap_err().code, ErrorCode::ShutDown);
            assert_eq!(h.status(), isola::PluginStatus::Stopped);
        }
    }
}

#[test]
fn a_plugin_broken_at_start_up_recovers_when_fixed() {
    let dir = PluginDir::new();
    let path =
        dir.module_with_manifest("late", r#"{"id": "late", "apiVersion": 1"#, "export default { v() { return 1; ");
    let (m, events) = watched(&dir);
    let h = m.handle("late").unwrap();
    assert_eq!(h.call_blocking::<_, i64>("v", ()).unwrap_err().code, ErrorCode::ManifestInvalid);
    std::fs::write(path.join("main.js"), "export default { v() { return 1; } };").unwrap();
    std::fs::write(path.join("plugin.json"), r#"{"id": "late", "name": "l", "version": "1.0.0", "apiVersion": 1}"#)
        .unwrap();
    wait_for(&events, "reloaded", reloaded);
    assert_eq!(h.call_blocking::<_, i64>("v", ()).unwrap(), 1, "the handle taken while broken works now");
    // And removing it unloads it.
    std::fs::remove_dir_all(&path).unwrap();
    wait_for(&events, "unloaded", |e| matches!(e, LifecycleEvent::Unloaded { .. }));
    assert!(m.ids().is_empty());
}
