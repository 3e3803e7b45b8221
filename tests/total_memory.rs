//! The engine's total memory limit: when all plugins together pass it, the largest one is
//! stopped with `HEAP_LIMIT` and restarted, whether it is running or idle, and nobody else is
//! touched. Thread mode only: a process-isolated plugin is bounded in its own process.

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
    let deadline = Instant::now() + Duration::from_secs(10);
    let error = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match events.recv_timeout(left).expect("no Restarted event for `big`") {
            LifecycleEvent::Restarted { plugin, error } if plugin == "big" => break error,
            LifecycleEvent::Restarted { plugin, error } => panic!("{plugin} was restarted: {error}"),
            _ => {}
        }
    };
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
