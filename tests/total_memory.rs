//! The engine's total memory limit: when all plugins together pass it, the largest one is
//! stopped with `HEAP_LIMIT` and restarted, whether it is running or idle, and nobody else is
//! touched. A process-isolated plugin takes part with its process's resident memory.

mod common;

use std::time::{Duration, Instant};

use common::{PluginDir, test_host};
use isola::events::LifecycleEvent;
use isola::{Engine, ErrorCode, Manager};
use serde_json::Value;

/// A plugin that keeps `hold(mb)` MiB of ArrayBuffers, counts its calls, and can flood.
const HOLDER: &str = "let kept = []; let calls = 0;
export default {
    hold(mb) { for (let i = 0; i < mb; i++) kept.push(new ArrayBuffer(1 << 20)); return kept.length; },
    count() { return ++calls; },
    flood() { while (true) kept.push(new ArrayBuffer(1 << 20)); },
};";

fn engine(total_mb: u64) -> Engine {
    Engine::builder()
        .host(test_host())
        .heap_limit_mb(64)
        .total_memory_limit_mb(total_mb)
        .call_timeout(Duration::from_secs(10))
        .build()
}

const MIB: usize = 1 << 20;

/// The error of the `Restarted` event for `big` (within 10 s); any other plugin restarted, or
/// any plugin reported crashed, fails the test.
fn restart_of_big(events: &isola::events::LifecycleEvents) -> isola::Error {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match events.recv_timeout(left).expect("no Restarted event for `big`") {
            LifecycleEvent::Restarted { plugin, error } if plugin == "big" => return error,
            LifecycleEvent::Restarted { plugin, error } => panic!("{plugin} was restarted: {error}"),
            LifecycleEvent::Crashed { plugin, error } => panic!("{plugin} was reported crashed: {error}"),
            _ => {}
        }
    }
}

#[test]
fn an_idle_plugin_holding_the_most_is_restarted_when_the_total_is_reached() {
    let engine = engine(80);
    let dir = PluginDir::new();
    let m = Manager::new(engine.clone());
    let big = m.load(dir.module("big", HOLDER)).unwrap();
    let small = m.load(dir.module("small", HOLDER)).unwrap();
    let events = m.events();
    assert_eq!(big.call_blocking::<_, u64>("count", ()).unwrap(), 1);
    assert_eq!(small.call_blocking::<_, u64>("count", ()).unwrap(), 1);
    assert_eq!(big.call_blocking::<_, usize>("hold", (50,)).unwrap(), 50);
    let before = engine.memory_in_use();
    assert!((50 * MIB..80 * MIB).contains(&before), "in use: {} MiB", before / MIB);

    // `small` now takes the total over 80 MiB: `big`, idle but holding the most, goes.
    assert_eq!(small.call_blocking::<_, usize>("hold", (35,)).unwrap(), 35);
    let error = restart_of_big(&events);
    assert_eq!(error.code, ErrorCode::HeapLimit);
    assert!(error.message.contains("total memory limit of 80 MiB"), "{error}");
    assert_eq!(engine.total_memory_stops(), 1);

    // `big` starts fresh (its state is gone) and its memory was given back; `small` kept its.
    assert_eq!(big.call_blocking::<_, u64>("count", ()).unwrap(), 1);
    assert_eq!(big.stats().restarts, 1);
    assert_eq!(small.call_blocking::<_, u64>("count", ()).unwrap(), 2);
    assert_eq!(small.stats().restarts, 0);
    let after = engine.memory_in_use();
    assert!(after < 50 * MIB, "in use after the restart: {} MiB", after / MIB);
    m.shutdown();
}

#[test]
fn a_running_plugin_that_takes_the_total_over_gets_heap_limit_and_neighbours_are_untouched() {
    let engine = engine(48);
    let dir = PluginDir::new();
    let m = Manager::new(engine.clone());
    let hog = m.load(dir.module("hog", HOLDER)).unwrap();
    let calm = m.load(dir.module("calm", HOLDER)).unwrap();
    assert_eq!(calm.call_blocking::<_, usize>("hold", (20,)).unwrap(), 20);
    assert_eq!(calm.call_blocking::<_, u64>("count", ()).unwrap(), 1);

    // Its own budget is 64 MiB, but 48 MiB is all there is for both.
    let started = Instant::now();
    let e = hog.call_blocking::<_, Value>("flood", ()).unwrap_err();
    assert_eq!(e.code, ErrorCode::HeapLimit, "{e}");
    assert!(e.message.contains("total memory limit of 48 MiB"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());

    assert_eq!(calm.call_blocking::<_, u64>("count", ()).unwrap(), 2);
    assert_eq!(calm.stats().restarts, 0);
    // The answer goes out before the isolate is replaced; the next call waits for the new one.
    assert_eq!(hog.call_blocking::<_, usize>("hold", (1,)).unwrap(), 1);
    assert!(engine.memory_in_use() < 48 * MIB, "in use: {} MiB", engine.memory_in_use() / MIB);
    m.shutdown();
}

#[test]
fn without_a_total_limit_memory_is_counted_and_nobody_is_stopped() {
    let engine = Engine::builder().host(test_host()).heap_limit_mb(64).build();
    assert_eq!(engine.total_memory_limit(), None);
    let dir = PluginDir::new();
    let m = Manager::new(engine.clone());
    let a = m.load(dir.module("a", HOLDER)).unwrap();
    let b = m.load(dir.module("b", HOLDER)).unwrap();
    assert_eq!(a.call_blocking::<_, usize>("hold", (40,)).unwrap(), 40);
    assert_eq!(b.call_blocking::<_, usize>("hold", (40,)).unwrap(), 40);
    assert!(engine.memory_in_use() >= 80 * MIB, "in use: {} MiB", engine.memory_in_use() / MIB);
    assert_eq!(engine.total_memory_stops(), 0);
    m.unload("a").unwrap();
    m.unload("b").unwrap();
    // Unloaded plugins give back everything they were counted for.
    assert!(engine.memory_in_use() < MIB, "in use: {} bytes", engine.memory_in_use());
}

/// Like [`HOLDER`], but the memory it keeps is written to, so that it is resident (a process
/// plugin is counted by its resident memory; untouched pages cost the machine nothing).
const TOUCHING: &str = "let kept = []; let calls = 0;
export default {
    hold(mb) { for (let i = 0; i < mb; i++) kept.push(new Uint8Array(1 << 20).fill(1)); return kept.length; },
    count() { return ++calls; },
    flood() { while (true) kept.push(new Uint8Array(1 << 20).fill(1)); },
};";

/// An engine whose plugins run on threads unless their manifest asks for a process, with a
/// large per-plugin budget: only the total limit can stop them.
fn mixed_engine(total_mb: u64) -> Engine {
    Engine::builder()
        .host(test_host())
        .heap_limit_mb(512)
        .total_memory_limit_mb(total_mb)
        .call_timeout(Duration::from_secs(20))
        .worker_program(env!("CARGO_BIN_EXE_isola"))
        .build()
}

fn process_plugin(dir: &PluginDir, id: &str) -> std::path::PathBuf {
    let manifest = format!(r#"{{"id":"{id}","name":"{id}","version":"1.0.0","apiVersion":1,"isolation":"process"}}"#);
    dir.module_with_manifest(id, &manifest, TOUCHING)
}

#[test]
fn a_process_plugin_is_counted_by_its_resident_memory_and_stopped_when_it_floods() {
    let engine = mixed_engine(200);
    let dir = PluginDir::new();
    let m = Manager::new(engine.clone());
    let calm = m.load(dir.module("calm", TOUCHING)).unwrap();
    assert_eq!(calm.call_blocking::<_, usize>("hold", (20,)).unwrap(), 20);
    let threads_only = engine.memory_in_use();
    let hog = m.load(process_plugin(&dir, "hog")).unwrap();
    let pid = hog.process_id().expect("a process plugin");
    assert_eq!(hog.call_blocking::<_, u64>("count", ()).unwrap(), 1);
    // A V8 process holds many MiB at rest, all of it counted.
    let resting = engine.memory_in_use() - threads_only;
    assert!(resting > 8 * MIB, "a resting process is counted for {} KiB", resting >> 10);

    let started = Instant::now();
    let e = hog.call_blocking::<_, Value>("flood", ()).unwrap_err();
    assert_eq!(e.code, ErrorCode::HeapLimit, "{e}");
    assert!(e.message.contains("total memory limit of 200 MiB"), "{e}");
    assert!(e.message.contains("process"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    assert_eq!(engine.total_memory_stops(), 1);

    // Restarted at once in a new process, fresh; the neighbour kept its memory and state.
    assert_eq!(hog.call_blocking::<_, u64>("count", ()).unwrap(), 1);
    assert_ne!(hog.process_id(), Some(pid));
    assert_eq!(hog.stats().restarts, 1);
    assert_eq!(calm.call_blocking::<_, usize>("hold", (0,)).unwrap(), 20);
    assert_eq!(calm.stats().restarts, 0);
    assert!(engine.memory_in_use() < 120 * MIB, "in use: {} MiB", engine.memory_in_use() / MIB);
    m.shutdown();
    assert!(engine.memory_in_use() < MIB, "after shutdown: {} bytes", engine.memory_in_use());
}

#[test]
fn an_idle_process_plugin_holding_the_most_is_restarted_when_a_thread_plugin_takes_the_total_over() {
    let engine = mixed_engine(200);
    let dir = PluginDir::new();
    let m = Manager::new(engine.clone());
    let big = m.load(process_plugin(&dir, "big")).unwrap();
    let small = m.load(dir.module("small", TOUCHING)).unwrap();
    let events = m.events();
    assert_eq!(big.call_blocking::<_, usize>("hold", (100,)).unwrap(), 100);
    let pid = big.process_id().unwrap();
    assert!(engine.memory_in_use() >= 100 * MIB, "in use: {} MiB", engine.memory_in_use() / MIB);

    // `small`, on a thread, passes the total: `big`'s process, idle but holding the most, goes.
    assert_eq!(small.call_blocking::<_, usize>("hold", (90,)).unwrap(), 90);
    let error = restart_of_big(&events);
    assert_eq!(error.code, ErrorCode::HeapLimit);
    assert!(error.message.contains("total memory limit of 200 MiB"), "{error}");
    assert_eq!(engine.total_memory_stops(), 1);
    assert_eq!(big.call_blocking::<_, u64>("count", ()).unwrap(), 1, "restarted fresh");
    assert_ne!(big.process_id(), Some(pid));
    assert_eq!(small.call_blocking::<_, u64>("count", ()).unwrap(), 1);
    assert_eq!(small.stats().restarts, 0);
    m.shutdown();
}
