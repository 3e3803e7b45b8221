//! Cancellation and prompt unloading: aborted calls never run or stop at once, unload and
//! shutdown interrupt whatever a plugin does, and `onUnload` still gets a bounded chance to
//! flush. (Thread mode: a call already sent to a child process runs to its deadline.)

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{PluginDir, load_module_with, test_host};
use isola::{CallOptions, CancelToken, Engine, ErrorCode, HostApi, Manager};
use serde_json::Value;

const PLUGIN: &str = "let calls = 0;
export default {
    spin() { calls++; while (true) {} },
    count() { return ++calls; },
    peek() { return calls; },
    async awaitHost(ms) { calls++; await host.sleep(ms); calls += 1000; return 'slept'; },
};";

fn engine() -> Engine {
    Engine::builder().host(test_host()).call_timeout(Duration::from_secs(10)).build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_future_of_a_running_call_stops_it_and_keeps_the_state() {
    let (_d, _m, h) = load_module_with(engine(), PLUGIN);
    let spin = h.call::<_, Value>("spin", ());
    assert!(tokio::time::timeout(Duration::from_millis(100), spin).await.is_err(), "spin answered");
    // The spin is stopped at once, not at its 10 s deadline; the state it changed is kept.
    let started = Instant::now();
    assert_eq!(h.call::<_, u64>("count", ()).await.unwrap(), 2);
    assert!(started.elapsed() < Duration::from_secs(2), "next call waited {:?}", started.elapsed());
    assert_eq!(h.stats().restarts, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_call_whose_future_was_dropped_never_runs() {
    let (_d, _m, h) = load_module_with(engine(), PLUGIN);
    let busy = h.call_with::<_, Value>("spin", (), CallOptions::default().timeout(Duration::from_millis(300)));
    // Queued behind the spin, then given up on: `count` must never run.
    drop(h.call::<_, u64>("count", ()));
    assert_eq!(busy.await.unwrap_err().code, ErrorCode::Timeout);
    assert_eq!(h.call::<_, u64>("peek", ()).await.unwrap(), 1, "the dropped call ran");
}

#[test]
fn a_cancelled_token_aborts_before_and_during_a_call() {
    let (_d, _m, h) = load_module_with(engine(), PLUGIN);
    let before = CancelToken::new();
    before.cancel();
    let e = h.call_blocking_with::<_, u64>("count", (), CallOptions::default().cancel(&before)).unwrap_err();
    assert_eq!(e.code, ErrorCode::Aborted, "{e}");
    assert_eq!(h.call_blocking::<_, u64>("peek", ()).unwrap(), 0, "an aborted call ran");

    let during = CancelToken::new();
    let t = during.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        t.cancel();
    });
    let started = Instant::now();
    let e = h.call_blocking_with::<_, Value>("spin", (), CallOptions::default().cancel(&during)).unwrap_err();
    assert_eq!(e.code, ErrorCode::Aborted, "{e}");
    assert_eq!(e.hook.as_deref(), Some("spin"));
    assert!(started.elapsed() < Duration::from_secs(2), "abort took {:?}", started.elapsed());
    // Stopped like a timeout: the isolate stays, with its state.
    assert_eq!(h.call_blocking::<_, u64>("count", ()).unwrap(), 2);
    assert_eq!(h.stats().restarts, 0);
}

#[test]
fn one_token_aborts_every_call_made_with_it() {
    let (_d, _m, h) = load_module_with(engine(), PLUGIN);
    let token = CancelToken::new();
    let opts = CallOptions::default().cancel(&token);
    let running = {
        let (h, opts) = (h.clone(), opts.clone());
        std::thread::spawn(move || h.call_blocking_with::<_, Value>("spin", (), opts))
    };
    std::thread::sleep(Duration::from_millis(50));
    let queued = {
        let h = h.clone();
        std::thread::spawn(move || h.call_blocking_with::<_, u64>("count", (), opts))
    };
    std::thread::sleep(Duration::from_millis(50));
    token.cancel();
    assert_eq!(running.join().unwrap().unwrap_err().code, ErrorCode::Aborted);
    assert_eq!(queued.join().unwrap().unwrap_err().code, ErrorCode::Aborted);
    assert_eq!(h.call_blocking::<_, u64>("peek", ()).unwrap(), 1, "only the spin ran");
}

#[test]
fn aborting_an_async_hook_that_awaits_the_host_answers_at_once() {
    let (_d, _m, h) = load_module_with(engine(), PLUGIN);
    let token = CancelToken::new();
    let t = token.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        t.cancel();
    });
    let started = Instant::now();
    let e = h.call_blocking_with::<_, Value>("awaitHost", (5_000,), CallOptions::default().cancel(&token)).unwrap_err();
    assert_eq!(e.code, ErrorCode::Aborted, "{e}");
    assert!(started.elapsed() < Duration::from_secs(2), "abort took {:?}", started.elapsed());
    assert_eq!(h.call_blocking::<_, u64>("count", ()).unwrap(), 2);
}

/// A host that counts `flushed()` calls, made by plugins' `onUnload`.
fn counting_host(flushed: &Arc<AtomicUsize>) -> HostApi {
    let f = flushed.clone();
    test_host().func("flushed", move |(): ()| {
        f.fetch_add(1, Ordering::SeqCst);
        Ok(())
    })
}

const SPINNER_WITH_UNLOAD: &str = "export default {
    spin() { while (true) {} },
    onUnload() { host.flushed(); },
};";

#[test]
fn unload_interrupts_the_running_call_fails_the_queue_and_runs_on_unload() {
    let flushed = Arc::new(AtomicUsize::new(0));
    let engine = Engine::builder()
        .host(counting_host(&flushed))
        .call_timeout(Duration::from_secs(10))
        .mailbox_capacity(8)
        .build();
    let dir = PluginDir::new();
    let m = Manager::new(engine);
    let h = m.load(dir.module("p", SPINNER_WITH_UNLOAD)).unwrap();
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let h = h.clone();
            std::thread::spawn(move || h.call_blocking::<_, Value>("spin", ()))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    m.unload("p").unwrap();
    let took = started.elapsed();
    for c in calls {
        let e = c.join().unwrap().unwrap_err();
        assert!(matches!(e.code, ErrorCode::ShutDown | ErrorCode::Busy), "{e}");
    }
    assert!(took < Duration::from_secs(1), "unload took {took:?}");
    assert_eq!(flushed.load(Ordering::SeqCst), 1, "onUnload did not run");
    assert_eq!(h.call_blocking::<_, Value>("spin", ()).unwrap_err().code, ErrorCode::ShutDown);
}

#[test]
fn shutdown_of_many_busy_plugins_is_prompt_and_each_flushes() {
    let flushed = Arc::new(AtomicUsize::new(0));
    let engine = Engine::builder()
        .host(counting_host(&flushed))
        .call_timeout(Duration::from_secs(10))
        .mailbox_capacity(4)
        .build();
    let dir = PluginDir::new();
    let m = Manager::new(engine);
    let n = 40;
    let mut pending = Vec::new();
    for i in 0..n {
        let h = m.load(dir.module(&format!("p{i}"), SPINNER_WITH_UNLOAD)).unwrap();
        for _ in 0..4 {
            pending.push(h.call::<_, Value>("spin", ()));
        }
    }
    std::thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    m.shutdown();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "shutdown of {n} busy plugins took {took:?}");
    assert_eq!(flushed.load(Ordering::SeqCst), n, "not every onUnload ran");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    for p in pending {
        let e = rt.block_on(p).unwrap_err();
        assert!(matches!(e.code, ErrorCode::ShutDown | ErrorCode::Busy), "{e}");
    }
}

fn manifest(id: &str, extra: serde_json::Value) -> String {
    let mut m = serde_json::json!({"id": id, "name": id, "version": "1.0.0", "apiVersion": 1});
    m.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    m.to_string()
}

const CALLEE: &str = "let marks = 0;
export default {
    spin() { while (true) {} },
    mark() { return ++marks; },
    marks() { return marks; },
};";

const CALLER: &str = "export default {
    async spinB() { return await host.plugins.call('b', 'spin'); },
    async markB() { return await host.plugins.call('b', 'mark'); },
};";

#[test]
fn aborting_a_call_aborts_the_plugin_calls_it_made() {
    let dir = PluginDir::new();
    let m = Manager::new(engine());
    let a =
        m.load(dir.module_with_manifest("a", &manifest("a", serde_json::json!({"permissions": ["call:b"]})), CALLER));
    let a = a.unwrap();
    let b = m.load(dir.module("b", CALLEE)).unwrap();
    let token = CancelToken::new();
    let t = token.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(150));
        t.cancel();
    });
    let e = a.call_blocking_with::<_, Value>("spinB", (), CallOptions::default().cancel(&token)).unwrap_err();
    assert_eq!(e.code, ErrorCode::Aborted, "{e}");
    // `b` was spinning for `a` (10 s limit); it is free again at once.
    let started = Instant::now();
    assert_eq!(b.call_blocking::<_, u64>("mark", ()).unwrap(), 1);
    assert!(started.elapsed() < Duration::from_secs(2), "b stayed busy {:?}", started.elapsed());
}

#[test]
fn a_plugin_call_still_queued_when_its_caller_gives_up_never_runs() {
    let dir = PluginDir::new();
    let m = Manager::new(engine());
    let extra = serde_json::json!({"permissions": ["call:b"], "limits": {"callTimeoutMs": 200}});
    let a = m.load(dir.module_with_manifest("a", &manifest("a", extra), CALLER)).unwrap();
    let b = m.load(dir.module("b", CALLEE)).unwrap();
    // `b` is busy for 600 ms; `a` waits 200 ms for its `mark`, then gives up.
    let busy = {
        let b = b.clone();
        std::thread::spawn(move || {
            b.call_blocking_with::<_, Value>("spin", (), CallOptions::default().timeout(Duration::from_millis(600)))
        })
    };
    std::thread::sleep(Duration::from_millis(50));
    let e = a.call_blocking::<_, Value>("markB", ()).unwrap_err();
    assert_eq!(e.code, ErrorCode::Timeout, "{e}");
    assert_eq!(busy.join().unwrap().unwrap_err().code, ErrorCode::Timeout);
    assert_eq!(b.call_blocking::<_, u64>("marks", ()).unwrap(), 0, "the abandoned call ran");
}

#[test]
fn the_async_host_function_an_aborted_call_awaited_is_dropped() {
    struct Dropped(Arc<AtomicUsize>);
    impl Drop for Dropped {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let dropped = Arc::new(AtomicUsize::new(0));
    let d = dropped.clone();
    let host = test_host().async_func("forever", move |(): ()| {
        let guard = Dropped(d.clone());
        async move {
            let _guard = guard;
            std::future::pending::<()>().await;
            Ok(())
        }
    });
    let engine = Engine::builder().host(host).call_timeout(Duration::from_secs(10)).build();
    let (_d, _m, h) = load_module_with(engine, "export default { async wait() { await host.forever(); } };");
    let token = CancelToken::new();
    let t = token.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        t.cancel();
    });
    let e = h.call_blocking_with::<_, Value>("wait", (), CallOptions::default().cancel(&token)).unwrap_err();
    assert_eq!(e.code, ErrorCode::Aborted, "{e}");
    assert_eq!(dropped.load(Ordering::SeqCst), 1, "the host function's future is still alive");
}

#[test]
fn a_host_function_that_never_returns_costs_its_caller_a_timeout_not_a_hang() {
    let (release_tx, release_rx) = crossbeam_channel::bounded::<()>(1);
    let release_rx = Arc::new(std::sync::Mutex::new(release_rx));
    let host = test_host().func("block", move |(): ()| {
        // Termination cannot reach Rust code: this holds the plugin's thread until released.
        let _ = release_rx.lock().unwrap().recv();
        Ok(())
    });
    let engine = Engine::builder().host(host).call_timeout(Duration::from_millis(200)).build();
    let dir = PluginDir::new();
    let m = Manager::new(engine);
    let h = m.load(dir.module("p", "export default { block() { host.block(); }, ok() { return 1; } };")).unwrap();
    let events = m.events();
    let mut changes = h.status_changes();

    let started = Instant::now();
    let e = h.call_blocking::<_, Value>("block", ()).unwrap_err();
    assert_eq!(e.code, ErrorCode::Timeout, "{e}");
    assert!(e.message.contains("stuck"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(3), "the caller waited {:?}", started.elapsed());
    assert_eq!(h.status(), isola::PluginStatus::Unresponsive);
    assert_eq!(changes.try_next(), Some(isola::PluginStatus::Unresponsive));
    let unresponsive = events.try_iter().any(|e| matches!(e, isola::events::LifecycleEvent::Unresponsive { .. }));
    assert!(unresponsive, "no Unresponsive event");
    // Later calls fail at once instead of queueing behind the stuck thread.
    let started = Instant::now();
    assert_eq!(h.call_blocking::<_, u64>("ok", ()).unwrap_err().code, ErrorCode::Busy);
    assert!(started.elapsed() < Duration::from_millis(100));

    // Once the host function returns, the plugin is back.
    release_tx.send(()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while h.status() != isola::PluginStatus::Ready && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(h.call_blocking::<_, u64>("ok", ()).unwrap(), 1);
    assert_eq!(changes.try_next(), Some(isola::PluginStatus::Ready));
}

#[test]
fn shutdown_does_not_wait_for_a_thread_stuck_in_a_host_function() {
    let (_release_tx, release_rx) = crossbeam_channel::bounded::<()>(1);
    let release_rx = Arc::new(std::sync::Mutex::new(release_rx));
    let host = test_host().func("block", move |(): ()| {
        let _ = release_rx.lock().unwrap().recv();
        Ok(())
    });
    let engine = Engine::builder().host(host).call_timeout(Duration::from_millis(100)).build();
    let (_d, m, h) = load_module_with(engine, "export default { block() { host.block(); } };");
    let caller = std::thread::spawn(move || h.call_blocking::<_, Value>("block", ()));
    std::thread::sleep(Duration::from_millis(50));
    let started = Instant::now();
    m.shutdown();
    assert!(started.elapsed() < Duration::from_secs(3), "shutdown took {:?}", started.elapsed());
    let e = caller.join().unwrap().unwrap_err();
    assert!(matches!(e.code, ErrorCode::Timeout | ErrorCode::ShutDown), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_stream_sees_a_restart_a_reload_and_the_unload() {
    use isola::PluginStatus::*;
    let engine = Engine::builder().host(test_host()).heap_limit_mb(16).build();
    let dir = PluginDir::new();
    let m = Manager::new(engine);
    let path =
        dir.module("p", "export default { hog() { const k = []; while (true) k.push(new ArrayBuffer(1 << 20)); } };");
    let h = m.load(&path).unwrap();
    let mut changes = h.status_changes();
    assert_eq!(h.call::<_, Value>("hog", ()).await.unwrap_err().code, ErrorCode::HeapLimit);
    assert_eq!(changes.next().await, Some(Restarting));
    assert_eq!(changes.next().await, Some(Ready));
    m.reload("p").unwrap();
    m.unload("p").unwrap();
    let mut rest = Vec::new();
    while let Some(s) = changes.next().await {
        rest.push(s);
    }
    assert_eq!(rest.last(), Some(&Stopped), "{rest:?}");
    assert_eq!(changes.next().await, None);
}

/// A host whose `report(value)` keeps what plugins report, for the test to read.
fn reporting_host() -> (HostApi, Arc<std::sync::Mutex<Vec<Value>>>) {
    let seen = Arc::new(std::sync::Mutex::new(Vec::<Value>::new()));
    let s = seen.clone();
    let host = test_host().func("report", move |(v,): (Value,)| {
        s.lock().unwrap().push(v);
        Ok(())
    });
    (host, seen)
}

#[test]
fn host_signal_tells_an_async_hook_its_call_was_aborted() {
    // The hook records what its signal says when the call is aborted, in a host function the
    // test reads afterwards (the aborted call itself answers ABORTED).
    let (host, seen) = reporting_host();
    let engine = Engine::builder().host(host).call_timeout(Duration::from_secs(10)).build();
    let (_d, _m, h) = load_module_with(
        engine,
        "export default {
            async watch() {
                const signal = host.signal;
                signal.addEventListener('abort', (e) => host.report(['listener', e.type, signal.reason.name, signal.reason.code]));
                try {
                    await host.sleep(5000);
                } catch (e) {
                    host.report(['after', signal.aborted, e.code]);
                }
            },
            fresh() { return host.signal.aborted; },
        };",
    );
    let token = CancelToken::new();
    let t = token.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        t.cancel();
    });
    let e = h.call_blocking_with::<_, Value>("watch", (), CallOptions::default().cancel(&token)).unwrap_err();
    assert_eq!(e.code, ErrorCode::Aborted);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![
            serde_json::json!(["listener", "abort", "AbortError", "ABORTED"]),
            serde_json::json!(["after", true, "ABORTED"])
        ]
    );
    // Each call has its own signal.
    assert!(!h.call_blocking::<_, bool>("fresh", ()).unwrap());
}

#[test]
fn host_signal_aborts_on_timeout_with_a_timeout_error() {
    let (host, seen) = reporting_host();
    let engine = Engine::builder().host(host).call_timeout(Duration::from_millis(150)).build();
    let (_d, _m, h) = load_module_with(
        engine,
        "export default {
            async slow() {
                host.signal.onabort = () => host.report([host.signal.reason.name, host.signal.reason.code]);
                await host.sleep(5000);
            },
        };",
    );
    assert_eq!(h.call_blocking::<_, Value>("slow", ()).unwrap_err().code, ErrorCode::Timeout);
    assert_eq!(seen.lock().unwrap().clone(), vec![serde_json::json!(["TimeoutError", "TIMEOUT"])]);
}

/// A call cancelled while its plugin is blocked in a sync host function ends as `ABORTED`
/// when the host function comes back: what it returns or throws is not given to the plugin,
/// whose code does not run on.
#[test]
fn a_call_cancelled_inside_a_sync_host_function_does_not_run_on_after_it() {
    let ran_on = Arc::new(AtomicUsize::new(0));
    let seen = ran_on.clone();
    let host = HostApi::new()
        .func("slow", |(fail,): (bool,)| -> anyhow::Result<u32> {
            std::thread::sleep(Duration::from_millis(300));
            if fail { Err(isola::HostError::new("gave up").code("GAVE_UP").into()) } else { Ok(1) }
        })
        .func("ranOn", move |(): ()| {
            seen.fetch_add(1, Ordering::SeqCst);
            Ok(())
        });
    let (_d, _m, h) = load_module_with(
        Engine::builder().host(host).call_timeout(Duration::from_secs(10)).build(),
        "export default {
            slow(fail) { try { const v = host.slow(fail); host.ranOn(); return v; } catch (e) { host.ranOn(); return e.code ?? null; } },
            ok() { return 'ok'; },
        };",
    );
    for fail in [false, true] {
        let token = CancelToken::new();
        let t = token.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            t.cancel();
        });
        let e = h.call_blocking_with::<_, Value>("slow", (fail,), CallOptions::default().cancel(&token)).unwrap_err();
        assert_eq!(e.code, ErrorCode::Aborted, "fail={fail}: {e}");
        assert_eq!(ran_on.load(Ordering::SeqCst), 0, "the hook ran on after its call was cancelled (fail={fail})");
        assert_eq!(h.call_blocking::<_, String>("ok", ()).unwrap(), "ok");
    }
}
