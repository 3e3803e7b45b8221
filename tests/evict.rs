//! Idle eviction (`EngineBuilder::evict_idle_after`): a plugin idle for that long gives up its
//! thread and isolate, and its next call, event or plugin call brings it back transparently,
//! with the state its `onUnload` handed over. Plugins that are busy, have something pending,
//! or say `"evictable": false` stay; unloading, reloading and shutting down an evicted plugin
//! work without bringing it back first (reload hands over the state it kept).
//!
//! The tests count threads by name, so they run one at a time.

mod common;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{PluginDir, test_host};
use isola::events::{LifecycleEvent, LifecycleEvents};
use isola::{Engine, ErrorCode, Manager, PluginHandle};
use serde_json::{Value, json};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

const IDLE: Duration = Duration::from_millis(150);

fn evicting() -> isola::EngineBuilder {
    Engine::builder().host(test_host()).call_timeout(Duration::from_secs(5)).evict_idle_after(IDLE)
}

/// Threads of this process named `isola:ID` (Linux keeps 15 bytes of a name).
fn threads_of(id: &str) -> usize {
    let name: String = format!("isola:{id}").chars().take(15).collect();
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|n| n.trim_end() == name)
        .count()
}

fn manifest(id: &str, extra: Value) -> String {
    let mut m = json!({"id": id, "name": id, "version": "1.0.0", "apiVersion": 1});
    m.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    m.to_string()
}

/// Waits for `plugin`'s `Evicted` event (failing after `within`).
fn evicted(m: &LifecycleEvents, plugin: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match m.recv_timeout(left) {
            Some(LifecycleEvent::Evicted { plugin: p }) if p == plugin => return,
            Some(_) => continue,
            None => panic!("`{plugin}` was not evicted within {within:?}"),
        }
    }
}

/// No `Evicted` event for `plugin` during `wait`.
fn not_evicted(m: &LifecycleEvents, plugin: &str, wait: Duration) {
    let deadline = Instant::now() + wait;
    while let Some(e) = m.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        assert!(!matches!(&e, LifecycleEvent::Evicted { plugin: p } if p == plugin), "`{plugin}` was evicted");
    }
}

/// Waits until `plugin` has no thread (its thread ends just after the event).
fn until_no_thread(id: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while threads_of(id) > 0 {
        assert!(Instant::now() < deadline, "`{id}`'s thread is still there");
        std::thread::sleep(Duration::from_millis(2));
    }
}

const COUNTER: &str = r#"
    let n = 0;
    let loads = [];
    export default {
        onLoad(state) { loads.push(state); if (state) n = state.n; },
        onUnload() { return { n }; },
        inc() { return ++n; },
        loads() { return loads; },
    };
"#;

/// `threads` threads each calling `inc` `calls` times, pausing `pause(thread, call)` µs after
/// each; each returns the counts it saw.
fn count_from_threads(
    h: &PluginHandle,
    threads: u64,
    calls: u64,
    pause: fn(u64, u64) -> u64,
) -> Vec<std::thread::JoinHandle<Vec<i64>>> {
    (0..threads)
        .map(|i| {
            let h = h.clone();
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                for k in 0..calls {
                    match h.call_blocking::<_, i64>("inc", ()) {
                        Ok(v) => seen.push(v),
                        Err(e) => panic!("call {k} of caller {i} failed: {e}"),
                    }
                    std::thread::sleep(Duration::from_micros(pause(i, k)));
                }
                seen
            })
        })
        .collect()
}

fn counter(m: &Manager, dir: &PluginDir, id: &str) -> PluginHandle {
    let path = dir.module_with_manifest(id, &manifest(id, json!({})), COUNTER);
    m.load(path).unwrap()
}

#[test]
fn an_idle_plugin_is_evicted_and_its_next_call_brings_it_back_with_its_state() {
    let _one = serial();
    let dir = PluginDir::new();
    let m = Manager::new(evicting().build());
    let events = m.events();
    let h = counter(&m, &dir, "count");
    assert_eq!(h.call_blocking::<_, i64>("inc", ()).unwrap(), 1);
    assert_eq!(h.call_blocking::<_, i64>("inc", ()).unwrap(), 2);
    assert_eq!(threads_of("count"), 1);

    evicted(&events, "count", IDLE * 20);
    until_no_thread("count");
    let stats = h.stats();
    assert_eq!(stats.evictions, 1);
    assert_eq!(stats.heap_used, 0, "an evicted plugin holds no heap");
    // Still listed as ready: it answers calls.
    assert_eq!(h.status(), isola::PluginStatus::Ready);

    // The call brings it back; onLoad got what onUnload gave.
    assert_eq!(h.call_blocking::<_, i64>("inc", ()).unwrap(), 3);
    assert_eq!(threads_of("count"), 1);
    let loads: Value = h.call_blocking("loads", ()).unwrap();
    assert_eq!(loads, json!([{"n": 2}]), "the first load gets no onLoad state; the revival gets the count");
    assert!(h.stats().heap_used > 0);

    // And again: evicted a second time, back a second time, the count goes on.
    evicted(&events, "count", IDLE * 20);
    assert_eq!(h.call_blocking::<_, i64>("inc", ()).unwrap(), 4);
    assert_eq!(h.stats().evictions, 2);
}

#[test]
fn a_plugin_without_on_unload_comes_back_fresh() {
    let _one = serial();
    let dir = PluginDir::new();
    let m = Manager::new(evicting().build());
    let events = m.events();
    let path = dir.module("plain", "let n = 0; export default { inc() { return ++n; } };");
    let h = m.load(path).unwrap();
    assert_eq!(h.call_blocking::<_, i64>("inc", ()).unwrap(), 1);
    assert_eq!(h.call_blocking::<_, i64>("inc", ()).unwrap(), 2);
    evicted(&events, "plain", IDLE * 20);
    assert_eq!(h.call_blocking::<_, i64>("inc", ()).unwrap(), 1, "module state is not kept without onUnload");
}

#[test]
fn plugins_that_say_so_or_are_busy_or_have_timers_pending_are_not_evicted() {
    let _one = serial();
    let dir = PluginDir::new();
    let m = Manager::new(evicting().build());
    let events = m.events();
    let kept = dir.module_with_manifest(
        "kept",
        &manifest("kept", json!({"evictable": false})),
        "let n = 0; export default { inc() { return ++n; } };",
    );
    let kept = m.load(kept).unwrap();
    let timer = dir.module(
        "timer",
        "let fired = 0; export default { arm(ms) { setTimeout(() => fired++, ms); }, fired() { return fired; } };",
    );
    let timer = m.load(timer).unwrap();
    let slow = dir.module("slow", "export default { async nap(ms) { return await host.sleep(ms); } };");
    let slow = m.load(slow).unwrap();

    assert_eq!(kept.call_blocking::<_, i64>("inc", ()).unwrap(), 1);
    timer.call_blocking::<_, Value>("arm", (IDLE.as_millis() as u64 * 4,)).unwrap();
    // A call longer than the idle time is not idleness.
    let napping = {
        let slow = slow.clone();
        std::thread::spawn(move || slow.call_blocking::<_, u64>("nap", (IDLE.as_millis() as u64 * 4,)))
    };
    let t = Instant::now();
    while t.elapsed() < IDLE * 3 {
        let e = events.recv_timeout(IDLE * 3 - t.elapsed());
        if let Some(LifecycleEvent::Evicted { plugin }) = e {
            panic!("`{plugin}` was evicted while it was not idle");
        }
    }
    assert_eq!(napping.join().unwrap().unwrap(), IDLE.as_millis() as u64 * 4);
    // The timer fired, then the plugin was idle: now it goes.
    evicted(&events, "timer", IDLE * 20);
    assert_eq!(timer.call_blocking::<_, i64>("fired", ()).unwrap(), 0, "fresh after eviction (no onUnload)");
    not_evicted(&events, "kept", IDLE * 3);
    assert_eq!(kept.call_blocking::<_, i64>("inc", ()).unwrap(), 2, "kept resident, state and all");
    assert_eq!(kept.stats().evictions, 0);
    assert_eq!(threads_of("kept"), 1);
}

#[test]
fn a_plugin_whose_on_unload_throws_stays_with_its_state() {
    let _one = serial();
    let dir = PluginDir::new();
    let m = Manager::new(evicting().build());
    let events = m.events();
    let path = dir.module(
        "stubborn",
        "let n = 0; export default { onUnload() { throw new Error('cannot save'); }, inc() { return ++n; } };",
    );
    let h = m.load(path).unwrap();
    assert_eq!(h.call_blocking::<_, i64>("inc", ()).unwrap(), 1);
    let deadline = Instant::now() + IDLE * 20;
    loop {
        match events.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Some(LifecycleEvent::HookFailed { plugin, error }) => {
                assert_eq!(plugin, "stubborn");
                assert_eq!(error.hook.as_deref(), Some("onUnload"));
                assert!(error.message.contains("cannot save"), "{error}");
                break;
            }
            Some(LifecycleEvent::Evicted { .. }) => panic!("evicted although onUnload failed"),
            Some(_) => {}
            None => panic!("no HookFailed event"),
        }
    }
    assert_eq!(h.call_blocking::<_, i64>("inc", ()).unwrap(), 2);
    assert_eq!(h.stats().evictions, 0);
}

#[test]
fn events_and_plugin_calls_reach_an_evicted_plugin() {
    let _one = serial();
    let dir = PluginDir::new();
    let m = Manager::new(evicting().build());
    let events = m.events();
    let listener = dir.module_with_manifest(
        "listener",
        &manifest("listener", json!({"events": {"ping": "onPing"}})),
        "let got = []; export default { onUnload() { return got; }, onLoad(s) { if (s) got = s; }, \
         onPing(p) { got.push(p.n); return got.length; }, got() { return got; } };",
    );
    let listener = m.load(listener).unwrap();
    let caller = dir.module_with_manifest(
        "caller",
        &manifest("caller", json!({"permissions": ["call:listener"]})),
        "export default { async ask() { return await host.plugins.call('listener', 'got'); } };",
    );
    let caller = m.load(caller).unwrap();
    m.emit_blocking("ping", json!({"n": 1})).unwrap();
    evicted(&events, "listener", IDLE * 20);
    until_no_thread("listener");

    let report = m.emit_blocking("ping", json!({"n": 2})).unwrap();
    assert_eq!(report.deliveries.len(), 1, "{report:?}");
    assert_eq!(report.deliveries[0].result, Some(json!(2)), "{report:?}");
    evicted(&events, "listener", IDLE * 20);
    // The caller may have been evicted too; both come back for the plugin call.
    assert_eq!(caller.call_blocking::<_, Value>("ask", ()).unwrap(), json!([1, 2]));
    assert_eq!(listener.stats().evictions, 2);
}

#[test]
fn unloading_reloading_and_shutting_down_evicted_plugins() {
    let _one = serial();
    let dir = PluginDir::new();
    let m = Manager::new(evicting().build());
    let events = m.events();
    let a = counter(&m, &dir, "ua");
    let b = counter(&m, &dir, "ub");
    let c = counter(&m, &dir, "uc");
    for h in [&a, &b, &c] {
        assert_eq!(h.call_blocking::<_, i64>("inc", ()).unwrap(), 1);
    }
    let mut gone = std::collections::BTreeSet::new();
    while gone.len() < 3 {
        match events.recv_timeout(IDLE * 20) {
            Some(LifecycleEvent::Evicted { plugin }) => drop(gone.insert(plugin)),
            Some(_) => {}
            None => panic!("only {gone:?} were evicted"),
        }
    }
    for id in ["ua", "ub", "uc"] {
        until_no_thread(id);
    }
    // Unload: no thread comes back for it, and calls answer SHUT_DOWN.
    m.unload("ua").unwrap();
    assert_eq!(threads_of("ua"), 0);
    assert_eq!(a.call_blocking::<_, i64>("inc", ()).unwrap_err().code, ErrorCode::ShutDown);

    // Reload: the state the evicted version kept goes to the new one, without waking the old
    // version to ask its `onUnload` again (it is not loaded; no hook of it runs).
    std::fs::write(dir.path().join("ub/main.js"), COUNTER.replace("++n", "n += 10")).unwrap();
    let calls = b.stats().calls;
    m.reload("ub").unwrap();
    assert_eq!(b.call_blocking::<_, i64>("inc", ()).unwrap(), 11);
    assert_eq!(b.stats().calls - calls, 2, "the new version's onLoad and inc, nothing of the old one");

    // Shutdown with an evicted plugin is prompt and brings nothing back.
    let t = Instant::now();
    m.shutdown();
    assert!(t.elapsed() < Duration::from_secs(2), "shutdown took {:?}", t.elapsed());
    assert_eq!(threads_of("uc"), 0);
    assert_eq!(c.call_blocking::<_, i64>("inc", ()).unwrap_err().code, ErrorCode::ShutDown);
}

#[test]
fn calls_racing_the_eviction_are_all_answered_in_order() {
    let _one = serial();
    let dir = PluginDir::new();
    // Evicted after 1 ms idle: callers pausing about that long keep landing while the
    // plugin is being evicted or just asleep. On a busy machine the calls can queue up so
    // that the plugin is never idle for 1 ms (about 1 run in 20 with a CPU taken): then the
    // round is run again, up to 5 times, for an eviction to race.
    let m = Manager::new(evicting().evict_idle_after(Duration::from_millis(1)).build());
    let h = counter(&m, &dir, "race");
    for round in 0..5i64 {
        let callers = count_from_threads(&h, 4, 60, |i, k| 200 + (k * 37 + i * 113) % 1500);
        let mut all: Vec<i64> = callers.into_iter().flat_map(|c| c.join().unwrap()).collect();
        all.sort();
        let expected: Vec<i64> = (round * 240 + 1..=round * 240 + 240).collect();
        assert_eq!(all, expected, "every call ran once, and the count survived every eviction");
        if h.stats().evictions > 0 {
            return;
        }
    }
    panic!("the test never raced an eviction");
}

#[test]
fn evicted_plugins_come_back_on_warm_pool_threads_and_an_inspector_turns_eviction_off() {
    let _one = serial();
    let dir = PluginDir::new();
    let m = Manager::new(evicting().warm_pool(1).build());
    let events = m.events();
    let h = counter(&m, &dir, "pooled");
    assert_eq!(h.call_blocking::<_, i64>("inc", ()).unwrap(), 1);
    evicted(&events, "pooled", IDLE * 20);
    let deadline = Instant::now() + Duration::from_secs(20);
    while m.pool_stats().unwrap().ready < 1 {
        assert!(Instant::now() < deadline, "the pool did not refill");
        std::thread::sleep(Duration::from_millis(2));
    }
    let taken = m.pool_stats().unwrap().taken;
    assert_eq!(h.call_blocking::<_, i64>("inc", ()).unwrap(), 2);
    assert_eq!(m.pool_stats().unwrap().taken, taken + 1, "the revival took the pool's ready thread");

    let inspecting = Engine::builder().evict_idle_after(IDLE).inspect(isola::engine::InspectMode::On).build();
    assert_eq!(inspecting.evict_idle_after(), None);
}

#[test]
fn evictable_must_be_a_boolean() {
    let dir = PluginDir::new();
    let m = Manager::new(evicting().build());
    let path = dir.module_with_manifest("bad", &manifest("bad", json!({"evictable": "no"})), "export default {};");
    let e = m.load(path).unwrap_err();
    assert_eq!(e.code, ErrorCode::ManifestInvalid);
    assert!(e.diagnostics.iter().any(|d| d.path == "$.evictable"), "{:?}", e.diagnostics);
}

#[test]
fn calls_racing_reloads_of_an_evicted_plugin_are_all_answered_and_the_state_goes_on() {
    let _one = serial();
    let dir = PluginDir::new();
    // Evicted after 1 ms idle, reloaded every few ms: calls land on a version that is asleep,
    // waking up, being replaced, or new; each must be answered once, by whichever version
    // holds the count at that moment.
    let m = Manager::new(evicting().evict_idle_after(Duration::from_millis(1)).build());
    let h = counter(&m, &dir, "rerace");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let callers = count_from_threads(&h, 3, 50, |i, k| 300 + (k * 41 + i * 97) % 1700);
    // The reloads run on a thread of their own until the callers are done.
    let (mut all, reloads) = std::thread::scope(|s| {
        let reloader = s.spawn(|| {
            let mut reloads = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                m.reload("rerace").unwrap();
                reloads += 1;
                std::thread::sleep(Duration::from_micros(700 + (reloads * 53) % 2100));
            }
            reloads
        });
        let all: Vec<i64> = callers.into_iter().flat_map(|c| c.join().unwrap()).collect();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (all, reloader.join().unwrap())
    });
    all.sort();
    assert_eq!(all, (1..=150).collect::<Vec<_>>(), "every call ran once and each version took the count over");
    assert!(reloads > 5, "only {reloads} reloads raced the calls");
    assert!(h.stats().evictions > 0, "the test never raced an eviction");
    m.shutdown();
}

#[test]
fn evictions_are_no_lifecycle_news_to_plugins() {
    let _one = serial();
    let dir = PluginDir::new();
    let m = Manager::new(evicting().build());
    let events = m.events();
    // Subscribed to every lifecycle event a plugin can hear.
    let watcher = dir.module_with_manifest(
        "watcher",
        &manifest(
            "watcher",
            json!({"events": {"plugin:loaded": "seen", "plugin:reloaded": "seen", "plugin:unloaded": "seen", "plugin:errored": "seen"}}),
        ),
        "let seen = []; export default { onLoad(s) { if (s) seen = s; }, onUnload() { return seen; }, \
         seen(e) { seen.push(`${e.event}:${e.plugin}`); }, log() { return seen; } };",
    );
    let w = m.load(watcher).unwrap();
    let other = counter(&m, &dir, "other");
    assert_eq!(other.call_blocking::<_, i64>("inc", ()).unwrap(), 1);
    let mut gone = std::collections::BTreeSet::new();
    while gone.len() < 2 {
        match events.recv_timeout(IDLE * 20) {
            Some(LifecycleEvent::Evicted { plugin }) => drop(gone.insert(plugin)),
            Some(_) => {}
            None => panic!("only {gone:?} were evicted"),
        }
    }
    // Nobody is woken by an eviction: neither the watcher by the other's, nor by its own.
    not_evicted(&events, "watcher", IDLE * 6);
    until_no_thread("watcher");
    assert_eq!(w.stats().evictions, 1);
    // Real news still reach it (and bring it back).
    m.load(dir.module("broken", "export default {")).unwrap_err();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log: Value = w.call_blocking("log", ()).unwrap();
        if log.as_array().unwrap().iter().any(|e| e == "loadFailed:broken") {
            assert!(!log.as_array().unwrap().iter().any(|e| e.as_str().unwrap().starts_with("evicted")), "{log}");
            break;
        }
        assert!(Instant::now() < deadline, "{log}");
        std::thread::sleep(Duration::from_millis(10));
    }
}
