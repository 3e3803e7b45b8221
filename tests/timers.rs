//! Timers (`setTimeout`, `setInterval`, `AbortSignal.timeout`) and background work: what a hook
//! sets going keeps running after it returns, on the plugin's own thread between calls, under
//! the plugin's time limit; and nothing of it outlives the plugin. Runs in both isolation modes.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{PluginDir, load_module, test_host};
use isola::{HostApi, Manager};
use serde_json::{Value, json};

/// The test host plus `tick()`, which counts its calls in the returned counter: a side effect
/// the test can watch without calling the plugin.
fn ticking_host() -> (HostApi, Arc<AtomicU64>) {
    let ticks = Arc::new(AtomicU64::new(0));
    let t = ticks.clone();
    let host = test_host().func("tick", move |(): ()| Ok(t.fetch_add(1, Ordering::SeqCst) + 1));
    (host, ticks)
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let t = Instant::now();
    while !ok() {
        assert!(t.elapsed() < Duration::from_secs(5), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn timers_fire_in_order_with_their_arguments_and_can_be_cancelled() {
    let (_d, _m, h) = load_module(
        "export default { async t() {
            const order = [];
            setTimeout((x) => order.push(x), 30, 'c');
            setTimeout((x) => order.push(x), 10, 'a');
            const cancelled = setTimeout(() => order.push('never'), 15);
            setTimeout((x, y) => order.push(x + y), 20, 'b', '!');
            clearTimeout(cancelled);
            setTimeout(() => setTimeout(() => order.push('nested'), 0), 35);
            let n = 0;
            await new Promise((resolve) => {
                const id = setInterval(() => { order.push('tick' + ++n); if (n === 3) { clearInterval(id); resolve(); } }, 5);
            });
            await new Promise((r) => setTimeout(r, 60));
            const ids = [setTimeout(() => {}, 1), setInterval(() => {}, 1)];
            ids.forEach(clearTimeout);
            return { order, distinct: ids[0] !== ids[1] && typeof ids[0] === 'number' };
        } };",
    );
    let v: Value = h.call_blocking("t", ()).unwrap();
    let order: Vec<String> = serde_json::from_value(v["order"].clone()).unwrap();
    let pos = |s: &str| order.iter().position(|o| o == s).unwrap_or_else(|| panic!("{s} missing from {order:?}"));
    assert!(pos("a") < pos("b!") && pos("b!") < pos("c") && pos("c") < pos("nested"), "{order:?}");
    assert!(!order.contains(&"never".to_owned()), "{order:?}");
    assert!(pos("tick1") < pos("tick2") && pos("tick2") < pos("tick3"), "{order:?}");
    assert!(!order.contains(&"tick4".to_owned()), "a cleared interval stops: {order:?}");
    assert_eq!(v["distinct"], true);
}

#[test]
fn a_timer_set_by_a_hook_runs_after_the_hook_returned_without_any_call() {
    let (host, ticks) = ticking_host();
    let (_d, _m, h) = common::load_module_with(
        common::builder().host(host).build(),
        "let fired = 0; export default {
            start() { setTimeout(() => { fired++; host.tick(); }, 30); setInterval(() => host.tick(), 20); return 'started'; },
            fired() { return fired; },
            async later() { host.sleep(20).then(() => host.tick()); return 'not awaited'; },
        };",
    );
    assert_eq!(h.call_blocking::<_, String>("start", ()).unwrap(), "started");
    // Nobody calls the plugin: its thread runs the timers on its own.
    wait_for("the timers to tick 4 times", || ticks.load(Ordering::SeqCst) >= 4);
    assert_eq!(h.call_blocking::<_, u64>("fired", ()).unwrap(), 1);
    let stats = h.stats();
    assert!(stats.background_runs > 0, "{stats:?}");
    assert_eq!(stats.calls, 2, "background work is not counted as calls: {stats:?}");

    // An async host function a hook did not await completes, and its continuation runs.
    let before = ticks.load(Ordering::SeqCst);
    let (host, ticks2) = ticking_host();
    let (_d2, _m2, h2) = common::load_module_with(
        common::builder().host(host).build(),
        "export default { later() { host.sleep(20).then(() => host.tick()); return 'not awaited'; } };",
    );
    assert_eq!(h2.call_blocking::<_, String>("later", ()).unwrap(), "not awaited");
    wait_for("the continuation to run", || ticks2.load(Ordering::SeqCst) == 1);
    assert!(ticks.load(Ordering::SeqCst) >= before);
}

#[test]
fn a_timer_callback_that_spins_is_stopped_and_the_plugin_and_its_other_timers_go_on() {
    let (host, ticks) = ticking_host();
    let (_d, _m, h) = common::load_module_with(
        common::builder().host(host).call_timeout(Duration::from_millis(200)).build(),
        "export default {
            start() { setTimeout(() => { for (;;) {} }, 10); setTimeout(() => host.tick(), 400); return 1; },
            ok() { return 'ok'; },
        };",
    );
    h.call_blocking::<_, i64>("start", ()).unwrap();
    wait_for("the later timer to run after the spinning one was stopped", || ticks.load(Ordering::SeqCst) == 1);
    assert_eq!(h.call_blocking::<_, String>("ok", ()).unwrap(), "ok");
    let stats = h.stats();
    assert_eq!(stats.background_timeouts, 1, "{stats:?}");
    assert_eq!(stats.restarts, 0, "{stats:?}");
}

#[test]
fn a_timer_callback_breaking_the_memory_budget_restarts_the_plugin() {
    let (_d, m, h) = common::load_module_with(
        common::builder().host(test_host()).heap_limit_mb(16).call_timeout(Duration::from_secs(5)).build(),
        "let n = 0; export default {
            start() { n = 1; setTimeout(() => { const a = []; for (;;) a.push(new Array(1000).fill(n)); }, 5); return n; },
            n() { return n; },
        };",
    );
    let events = m.events();
    assert_eq!(h.call_blocking::<_, i64>("start", ()).unwrap(), 1);
    let t = Instant::now();
    loop {
        match events.recv_timeout(Duration::from_secs(5)) {
            Some(isola::events::LifecycleEvent::Restarted { error, .. }) => {
                assert_eq!(error.code, isola::ErrorCode::HeapLimit, "{error}");
                break;
            }
            Some(_) => {}
            None => panic!("no restart after {:?}", t.elapsed()),
        }
    }
    wait_for("the restarted plugin", || h.call_blocking::<_, i64>("n", ()).is_ok_and(|n| n == 0));
}

#[test]
fn timers_are_capped_and_refuse_code_strings() {
    let v: Value = load_module(
        "export default { t() {
            const out = {};
            try { for (let i = 0; i < 20000; i++) setTimeout(() => {}, 100000); } catch (e) { out.cap = e.name; }
            try { setTimeout('1 + 1', 1); } catch (e) { out.string = e instanceof TypeError; }
            return out;
        } };",
    )
    .2
    .call_blocking("t", ())
    .unwrap();
    assert_eq!(v, json!({"cap": "QuotaExceededError", "string": true}));
}

#[test]
fn abort_signal_timeout_aborts_with_a_timeout_error() {
    let (_d, _m, h) = load_module(
        "export default { async t() {
            const s = AbortSignal.timeout(30);
            const started = performance.now();
            await new Promise((r) => s.addEventListener('abort', r));
            return { name: s.reason.name, aborted: s.aborted, waited: performance.now() - started >= 25 };
        } };",
    );
    assert_eq!(
        h.call_blocking::<_, Value>("t", ()).unwrap(),
        json!({"name": "TimeoutError", "aborted": true, "waited": true})
    );
}

#[test]
fn pending_timers_neither_outlive_an_unload_nor_delay_a_shutdown() {
    let (host, ticks) = ticking_host();
    let dir = PluginDir::new();
    let path = dir.module(
        "p",
        "export default { start() { setInterval(() => host.tick(), 5); setTimeout(() => {}, 600000); return 1; } };",
    );
    let m = Manager::new(common::builder().host(host.clone()).build());
    m.load(&path).unwrap().call_blocking::<_, i64>("start", ()).unwrap();
    wait_for("the interval to run", || ticks.load(Ordering::SeqCst) >= 2);
    let t = Instant::now();
    m.unload("p").unwrap();
    assert!(t.elapsed() < Duration::from_secs(1), "unload took {:?}", t.elapsed());
    let after = ticks.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(60));
    assert!(ticks.load(Ordering::SeqCst) <= after + 1, "the interval outlived the unload");

    // A reload starts the new version without the old one's timers.
    let h = m.load(&path).unwrap();
    h.call_blocking::<_, i64>("start", ()).unwrap();
    m.reload("p").unwrap();
    let at_reload = ticks.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(60));
    assert!(ticks.load(Ordering::SeqCst) <= at_reload + 1, "the old version's interval kept running");

    // Many plugins with pending timers shut down promptly.
    for i in 0..20 {
        m.load(dir.module(
            &format!("q{i}"),
            "export default { start() { setInterval(() => {}, 1); setTimeout(() => {}, 600000); return 1; } };",
        ))
        .unwrap()
        .call_blocking::<_, i64>("start", ())
        .unwrap();
    }
    let t = Instant::now();
    m.shutdown();
    assert!(t.elapsed() < Duration::from_secs(2), "shutdown took {:?}", t.elapsed());
}

#[test]
fn an_interval_slower_than_its_period_does_not_fill_every_turn() {
    let (host, ticks) = ticking_host();
    let (_d, _m, h) = common::load_module_with(
        common::builder().host(host).call_timeout(Duration::from_secs(1)).build(),
        "export default {
            start() { setInterval(() => { const t = Date.now(); while (Date.now() - t < 30) {} host.tick(); }, 5); return 1; },
            ok() { return 'ok'; },
        };",
    );
    h.call_blocking::<_, i64>("start", ()).unwrap();
    wait_for("the slow interval to run", || ticks.load(Ordering::SeqCst) >= 4);
    // Each callback is a turn of its own: a call waits for one callback at most, never for a
    // whole time limit of them back to back.
    for _ in 0..5 {
        let t = Instant::now();
        assert_eq!(h.call_blocking::<_, String>("ok", ()).unwrap(), "ok");
        assert!(t.elapsed() < Duration::from_millis(200), "the call waited {:?}", t.elapsed());
    }
    assert_eq!(h.stats().background_timeouts, 0, "{:?}", h.stats());
}

#[test]
fn calls_that_time_out_or_are_aborted_leave_the_timers_going() {
    let (host, ticks) = ticking_host();
    let (_d, _m, h) = common::load_module_with(
        common::builder().host(host).call_timeout(Duration::from_millis(100)).build(),
        "export default {
            start() { setInterval(() => host.tick(), 10); return 1; },
            spin() { for (;;) {} },
            async wait() { await new Promise((r) => setTimeout(r, 60000)); },
        };",
    );
    h.call_blocking::<_, i64>("start", ()).unwrap();
    for hook in ["spin", "wait", "spin", "wait"] {
        let e = h.call_blocking::<_, Value>(hook, ()).unwrap_err();
        assert_eq!(e.code, isola::ErrorCode::Timeout, "{hook}: {e}");
    }
    let before = ticks.load(Ordering::SeqCst);
    wait_for("the interval to keep ticking", || ticks.load(Ordering::SeqCst) >= before + 5);
    assert_eq!(h.stats().restarts, 0, "{:?}", h.stats());
}

/// A plugin with a timer pending runs one turn of background work between two bursts of
/// calls, not more: a call taken without waiting (it was queued behind another) leaves its
/// wake-up behind, which must not end the next idle wait at once (that cost such a plugin an
/// extra turn of its event loop per burst).
#[test]
fn a_pending_timer_costs_one_background_turn_per_burst_of_calls() {
    let (_d, _m, h) =
        load_module("export default { start() { setTimeout(() => {}, 600000); return 1; }, noop() { return 2; } };");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    h.call_blocking::<_, i64>("start", ()).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let before = h.stats().background_runs;
    const BURSTS: u64 = 40;
    for _ in 0..BURSTS {
        // Two calls queued at once: the second is taken without a wait.
        let (a, b) = rt.block_on(async { tokio::join!(h.call::<_, i64>("noop", ()), h.call::<_, i64>("noop", ())) });
        assert_eq!((a.unwrap(), b.unwrap()), (2, 2));
        // Spaced, so that each idle wait really waits.
        std::thread::sleep(Duration::from_millis(2));
    }
    let turns = h.stats().background_runs - before;
    assert!(turns <= 2 * BURSTS + 2, "{turns} background turns for {BURSTS} bursts");
}

/// Terminations land wherever the timer pump happens to be (here: calls cut off at their
/// deadline while their own timers and an interval keep the pump busy), also between a
/// sleep starting and the pump awaiting it. Whatever was cut off, the timers go on.
#[test]
fn timers_survive_terminations_landing_anywhere_in_the_pump() {
    let (host, ticks) = ticking_host();
    let (_d, _m, h) = common::load_module_with(
        common::builder().host(host).call_timeout(Duration::from_secs(5)).build(),
        "export default {
            start() { setInterval(() => host.tick(), 1); return 1; },
            async churn() { for (;;) { await new Promise((r) => setTimeout(r, 0)); const end = Date.now() + 1; while (Date.now() < end) {} } },
        };",
    );
    h.call_blocking::<_, i64>("start", ()).unwrap();
    for i in 0..150u64 {
        let limit = Duration::from_millis(3 + i % 5);
        let e =
            h.call_blocking_with::<_, Value>("churn", (), isola::CallOptions::default().timeout(limit)).unwrap_err();
        assert_eq!(e.code, isola::ErrorCode::Timeout, "{e}");
    }
    let before = ticks.load(Ordering::SeqCst);
    wait_for("the interval to keep ticking", || ticks.load(Ordering::SeqCst) >= before + 5);
}
