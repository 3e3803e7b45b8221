//! Criterion benchmarks of isola's hot paths: cold start, hook call, pipelined calls, host
//! function call, and how close to its deadline a runaway call is stopped.
//!
//! Run with `cargo bench --bench runtime`.

use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use isola::{CallOptions, Engine, HostApi, Manager};

fn host() -> HostApi {
    HostApi::new().func("add", |(a, b): (f64, f64)| Ok(a + b)).value("config", serde_json::json!({"v": 1}))
}

fn engine() -> Engine {
    Engine::new(host())
}

const PLUGIN: &str = "let n = 0;
export default {
    noop() {},
    inc() { return ++n; },
    hostLoop(count) { let s = 0; for (let i = 0; i < count; i++) s = host.add(s, 1); return s; },
    jsLoop(count) { let s = 0; const add = (a, b) => a + b; for (let i = 0; i < count; i++) s = add(s, 1); return s; },
    spin() { while (true) {} },
    fib(n) { const f = (k) => (k < 2 ? k : f(k - 1) + f(k - 2)); return f(n); },
    json(n) { const o = []; for (let i = 0; i < n; i++) o.push({ i, s: 'x' + i, a: [i, i + 1] }); return JSON.parse(JSON.stringify(o)).length; },
};";

fn plugin_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_plugin(dir.path(), "bench");
    dir
}

fn write_plugin(dir: &Path, id: &str) {
    let p = dir.join(id);
    std::fs::create_dir_all(&p).unwrap();
    std::fs::write(p.join("plugin.json"), format!(r#"{{"id":"{id}","name":"b","version":"1.0.0","apiVersion":1}}"#))
        .unwrap();
    std::fs::write(p.join("main.js"), PLUGIN).unwrap();
}

fn cold_start(c: &mut Criterion) {
    let dir = plugin_dir();
    let manager = Manager::new(engine());
    c.bench_function("cold_start (thread + isolate + evaluate + ready)", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let t = Instant::now();
                manager.load(dir.path().join("bench")).unwrap();
                total += t.elapsed();
                manager.unload("bench").unwrap();
            }
            total
        })
    });
}

/// Loading with a warm pool of ready isolates: the latency from `load` to ready, with a
/// thread waiting (the pool refills between loads, off the timed path). The CPU each pooled
/// isolate cost is printed after.
fn warm_start(c: &mut Criterion) {
    let dir = plugin_dir();
    let manager = Manager::new(Engine::builder().host(host()).warm_pool(2).build());
    let ready = |m: &Manager| {
        while m.pool_stats().unwrap().ready == 0 {
            std::thread::sleep(Duration::from_micros(200));
        }
    };
    c.bench_function("warm_start (load from a warm pool + evaluate + ready)", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                ready(&manager);
                let t = Instant::now();
                manager.load(dir.path().join("bench")).unwrap();
                total += t.elapsed();
                manager.unload("bench").unwrap();
            }
            total
        })
    });
    let stats = manager.pool_stats().unwrap();
    if stats.made > 2 {
        println!(
            "warm pool: {} isolates made, {} µs of CPU each (thread + tokio + isolate from the snapshot)",
            stats.made, stats.cpu_us_per_isolate
        );
    }
}

/// A stateless plugin (`"stateless": true`): every call on a fresh instance. Measured two
/// ways: calls spaced so that the next instance is ready when the call comes (the pool
/// refilled meanwhile), and calls back to back (each waits for its instance to evaluate; the
/// pool runs dry past ~500 calls/s on two cores and instances are then made in place).
fn stateless_call(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("fresh");
    std::fs::create_dir_all(&p).unwrap();
    let manifest = r#"{"id":"fresh","name":"fresh","version":"1.0.0","apiVersion":1,"stateless":true}"#;
    std::fs::write(p.join("plugin.json"), manifest).unwrap();
    std::fs::write(p.join("main.js"), PLUGIN).unwrap();
    let manager = Manager::new(Engine::builder().host(host()).warm_pool(2).build());
    let h = manager.load(&p).unwrap();
    let mut g = c.benchmark_group("stateless");
    g.bench_function("hook call on a fresh instance, spaced (pool ready)", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                // Time for the last call's successor to evaluate, and for the pool to refill.
                std::thread::sleep(Duration::from_millis(3));
                while manager.pool_stats().unwrap().ready < 2 {
                    std::thread::sleep(Duration::from_micros(200));
                }
                let t = Instant::now();
                h.call_blocking::<_, u64>("inc", ()).unwrap();
                total += t.elapsed();
            }
            total
        })
    });
    g.bench_function("hook call on a fresh instance, back to back", |b| {
        b.iter(|| h.call_blocking::<_, u64>("inc", ()).unwrap())
    });
    g.finish();
}

/// The plugin thread's CPU time per call between two stats snapshots (the issue's "CPU per
/// call": work plus what the thread burns waiting for the next call).
fn print_cpu_per_call(what: &str, before: &isola::stats::PluginStats, after: &isola::stats::PluginStats) {
    let calls = after.calls - before.calls;
    let cpu = after.cpu_time.saturating_sub(before.cpu_time);
    let wall = after.wall_time.saturating_sub(before.wall_time);
    if calls > 0 {
        println!(
            "hook_call, {what}: plugin-thread CPU {:.2} µs per call ({:.2} µs of it inside the hook call), {calls} calls",
            cpu.as_secs_f64() * 1e6 / calls as f64,
            wall.as_secs_f64() * 1e6 / calls as f64,
        );
    }
}

/// Context switches of the whole process so far (every thread's, voluntary + involuntary,
/// from `/proc`; zero elsewhere). Why: on a shared VM the CPU and latency figures of spaced
/// calls swing by half from run to run; the number of thread switches a call costs does not,
/// and a hand-off that wakes a thread only to block it again shows up there first.
fn context_switches() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return 0 };
    let mut n = 0;
    for task in tasks.flatten() {
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        for line in status.lines() {
            if let Some(v) =
                line.strip_prefix("voluntary_ctxt_switches:").or(line.strip_prefix("nonvoluntary_ctxt_switches:"))
            {
                n += v.trim().parse::<u64>().unwrap_or(0);
            }
        }
    }
    n
}

/// Times `calls` calls one by one and prints the distribution (criterion reports a mean and
/// its spread, not the tail: the issue asks for the median and p99), and how often the caller
/// went to sleep for an answer: on a VM, whose sleeping vCPU takes 50–100 µs to wake, that is
/// where the tail comes from (every slow call is a sleep of the caller, the plugin's thread,
/// or both).
fn print_latency(what: &str, calls: usize, mut call: impl FnMut()) {
    let slept = || {
        let status = std::fs::read_to_string("/proc/thread-self/status").unwrap_or_default();
        status.lines().find_map(|l| l.strip_prefix("voluntary_ctxt_switches:")?.trim().parse::<u64>().ok()).unwrap_or(0)
    };
    let slept_before = slept();
    let mut took: Vec<Duration> = (0..calls)
        .map(|_| {
            let t = Instant::now();
            call();
            t.elapsed()
        })
        .collect();
    let slept = slept() - slept_before;
    took.sort();
    let at = |p: f64| took[((took.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1e6;
    println!(
        "hook_call, {what}: p50 {:.2} µs, p90 {:.2} µs, p99 {:.2} µs, p99.9 {:.2} µs over {calls} calls; the caller slept on {:.1} % of them",
        at(0.5),
        at(0.9),
        at(0.99),
        at(0.999),
        slept as f64 * 100.0 / calls as f64
    );
}

/// `calls` calls spaced 200 µs apart, as a host calling now and then would; prints the plugin
/// thread's CPU and the process's context switches per call.
fn spaced_calls(what: &str, h: &isola::PluginHandle, calls: u64) {
    let before = h.stats();
    let switches = context_switches();
    for _ in 0..calls {
        h.call_blocking::<_, i64>("inc", ()).unwrap();
        std::thread::sleep(Duration::from_micros(200));
    }
    let switches = context_switches() - switches;
    print_cpu_per_call(what, &before, &h.stats());
    println!(
        "hook_call, {what}: {:.2} context switches per call (caller and plugin thread)",
        switches as f64 / calls as f64
    );
}

fn hook_call(c: &mut Criterion) {
    let dir = plugin_dir();
    let manager = Manager::new(engine());
    let h = manager.load(dir.path().join("bench")).unwrap();
    let before = h.stats();
    c.bench_function("hook_call (call_blocking, one at a time)", |b| {
        b.iter(|| h.call_blocking::<_, i64>("inc", ()).unwrap())
    });
    print_cpu_per_call("back to back", &before, &h.stats());
    print_latency("call_blocking back to back", 100_000, || {
        h.call_blocking::<_, i64>("inc", ()).unwrap();
    });
    // The same calls spaced apart: what the plugin's thread spends waiting between them
    // (spinning before it parks, waking) shows here.
    spaced_calls("spaced 200 µs", &h, 2000);
    // And with idle eviction on (not reached here): the thread's idle wait has a time limit.
    {
        let evicting = Manager::new(Engine::builder().host(host()).evict_idle_after(Duration::from_secs(60)).build());
        let h = evicting.load(dir.path().join("bench")).unwrap();
        spaced_calls("spaced 200 µs, idle eviction on", &h, 2000);
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    c.bench_function("hook_call (async call from tokio, one at a time)", |b| {
        b.iter(|| rt.block_on(h.call::<_, i64>("inc", ())).unwrap())
    });
    print_latency("async from tokio, one at a time", 100_000, || {
        rt.block_on(h.call::<_, i64>("inc", ())).unwrap();
    });
    const N: u64 = 1000;
    let mut g = c.benchmark_group("pipelined");
    g.throughput(Throughput::Elements(N));
    g.bench_function("1000 calls in flight on one plugin", |b| {
        b.iter(|| {
            rt.block_on(async {
                let futs: Vec<_> = (0..N).map(|_| h.call::<_, i64>("inc", ())).collect();
                for f in futs {
                    f.await.unwrap();
                }
            })
        })
    });
    g.finish();
}

fn host_function(c: &mut Criterion) {
    let dir = plugin_dir();
    let manager = Manager::new(engine());
    let h = manager.load(dir.path().join("bench")).unwrap();
    const N: u64 = 10_000;
    let mut g = c.benchmark_group("host_function");
    g.throughput(Throughput::Elements(N));
    g.bench_function("host.add from JS (10k calls per hook)", |b| {
        b.iter(|| assert_eq!(h.call_blocking::<_, u64>("hostLoop", (N,)).unwrap(), N))
    });
    g.bench_function("baseline: JS function (10k calls per hook)", |b| {
        b.iter(|| assert_eq!(h.call_blocking::<_, u64>("jsLoop", (N,)).unwrap(), N))
    });
    g.finish();
}

fn timeout_precision(c: &mut Criterion) {
    let dir = plugin_dir();
    let manager = Manager::new(engine());
    let h = manager.load(dir.path().join("bench")).unwrap();
    let limit = Duration::from_millis(20);
    let mut g = c.benchmark_group("limits");
    g.sample_size(20);
    g.bench_function("while(true) stopped after a 20 ms deadline (time past the deadline)", |b| {
        b.iter_custom(|iters| {
            let mut over = Duration::ZERO;
            for _ in 0..iters {
                let t = Instant::now();
                let e = h.call_blocking_with::<_, ()>("spin", (), CallOptions::default().timeout(limit)).unwrap_err();
                assert_eq!(e.code, isola::ErrorCode::Timeout);
                over += t.elapsed().saturating_sub(limit);
            }
            over
        })
    });
    g.finish();
}

const STORAGE_PLUGIN: &str = "export default {
    setLoop(n) { for (let i = 0; i < n; i++) host.storage.set(`k${i % 100}`, { i, text: 'hello' }); return n; },
    getLoop(n) { let found = 0; for (let i = 0; i < n; i++) if (host.storage.get(`k${i % 100}`) !== null) found++; return found; },
};";

/// A folder plugin `id` in `dir` holding one permission.
fn plugin_with_permission(dir: &std::path::Path, id: &str, permission: &str, main_js: &str) -> std::path::PathBuf {
    let p = dir.join(id);
    std::fs::create_dir_all(&p).unwrap();
    let manifest =
        serde_json::json!({"id": id, "name": id, "version": "1.0.0", "apiVersion": 1, "permissions": [permission]});
    std::fs::write(p.join("plugin.json"), manifest.to_string()).unwrap();
    std::fs::write(p.join("main.js"), main_js).unwrap();
    p
}

fn storage(c: &mut Criterion) {
    let data = tempfile::tempdir().unwrap();
    for (name, storage) in
        [("memory", isola::storage::Storage::memory()), ("redb", isola::storage::Storage::in_dir(data.path()))]
    {
        let dir = tempfile::tempdir().unwrap();
        let p = plugin_with_permission(dir.path(), "store", "storage", STORAGE_PLUGIN);
        let manager = Manager::new(Engine::builder().storage(storage).build());
        let h = manager.load(&p).unwrap();
        let mut g = c.benchmark_group(format!("storage/{name}"));
        g.sample_size(20);
        const N: u64 = 100;
        g.throughput(Throughput::Elements(N));
        g.bench_function("host.storage.set from JS (100 per hook)", |b| {
            b.iter(|| h.call_blocking::<_, u64>("setLoop", (N,)).unwrap())
        });
        g.bench_function("host.storage.get from JS (100 per hook)", |b| {
            b.iter(|| assert_eq!(h.call_blocking::<_, u64>("getLoop", (N,)).unwrap(), N))
        });
        g.finish();
    }
}

/// `host.events.emit` with no subscriber: what the op itself costs a plugin.
fn emit(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let p = plugin_with_permission(
        dir.path(),
        "emitter",
        "events",
        "export default { emitLoop(n) { let s = 0; for (let i = 0; i < n; i++) s += host.events.emit('tick', i); return s; } };",
    );
    let manager = Manager::new(Engine::builder().build());
    let h = manager.load(&p).unwrap();
    let mut g = c.benchmark_group("events");
    const N: u64 = 10_000;
    g.throughput(Throughput::Elements(N));
    g.bench_function("host.events.emit from JS, no subscriber (10k per hook)", |b| {
        b.iter(|| assert_eq!(h.call_blocking::<_, u64>("emitLoop", (N,)).unwrap(), 0))
    });
    g.finish();
}

/// Compute inside the sandbox: what V8's JIT gives a plugin, warm and on a fresh plugin (where
/// compiling the hot code is part of the time).
fn compute(c: &mut Criterion) {
    let dir = plugin_dir();
    let manager = Manager::new(engine());
    let h = manager.load(dir.path().join("bench")).unwrap();
    let mut g = c.benchmark_group("compute");
    g.sample_size(20);
    g.bench_function("fib(27), warm", |b| b.iter(|| h.call_blocking::<_, u64>("fib", (27,)).unwrap()));
    g.bench_function("JSON round trip of ~1 MB, warm", |b| {
        b.iter(|| h.call_blocking::<_, u64>("json", (25_000,)).unwrap())
    });
    drop(h);
    manager.unload("bench").unwrap();
    g.bench_function("fib(27) on a fresh plugin (load, compile, run)", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let t = Instant::now();
                let h = manager.load(dir.path().join("bench")).unwrap();
                h.call_blocking::<_, u64>("fib", (27,)).unwrap();
                total += t.elapsed();
                manager.unload("bench").unwrap();
            }
            total
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    cold_start,
    warm_start,
    stateless_call,
    hook_call,
    host_function,
    emit,
    timeout_precision,
    storage,
    compute
);
criterion_main!(benches);
