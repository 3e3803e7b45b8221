//! Hot reload and `isola serve` benchmarks: how long from saving a file to the new version
//! answering, and what a JSON-RPC round trip through the sidecar costs.
//!
//! Run with `cargo bench --bench reload`.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use isola::{Engine, HostApi, Manager};

fn write_version(dir: &std::path::Path, v: u64) {
    std::fs::write(dir.join("live/main.js"), format!("export default {{ v() {{ return {v}; }} }};")).unwrap();
}

fn setup() -> (tempfile::TempDir, Manager) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("live")).unwrap();
    std::fs::write(dir.path().join("live/plugin.json"), r#"{"id":"live","name":"l","version":"1.0.0","apiVersion":1}"#)
        .unwrap();
    write_version(dir.path(), 0);
    let manager = Manager::new(Engine::new(HostApi::new()));
    manager.load_dir(dir.path()).unwrap();
    (dir, manager)
}

fn reload_latency(c: &mut Criterion) {
    let (dir, manager) = setup();
    let h = manager.handle("live").unwrap();
    let mut version = 0;
    let mut g = c.benchmark_group("reload");
    g.sample_size(20);
    g.bench_function("Manager::reload (no watcher, no debounce)", |b| {
        b.iter(|| {
            version += 1;
            write_version(dir.path(), version);
            manager.reload("live").unwrap();
            assert_eq!(h.call_blocking::<_, u64>("v", ()).unwrap(), version);
        })
    });
    manager.watch(dir.path()).unwrap();
    g.bench_function(format!("file write -> new version answering (watcher, {} ms debounce)", 40), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                version += 1;
                let t = Instant::now();
                write_version(dir.path(), version);
                while h.call_blocking::<_, u64>("v", ()).unwrap() != version {
                    std::thread::sleep(Duration::from_micros(200));
                }
                total += t.elapsed();
                // Let the watcher settle so one edit's events do not bleed into the next.
                std::thread::sleep(Duration::from_millis(60));
            }
            total
        })
    });
    g.finish();
}

fn serve_round_trip(c: &mut Criterion) {
    let (dir, _manager) = setup();
    let mut child = Command::new(env!("CARGO_BIN_EXE_isola"))
        .args(["serve", dir.path().to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let mut next_reply = |stdout: &mut BufReader<_>| loop {
        line.clear();
        stdout.read_line(&mut line).unwrap();
        if !line.contains("\"method\":\"event\"") {
            return;
        }
    };
    let req = r#"{"jsonrpc":"2.0","id":1,"method":"call","params":{"plugin":"live","hook":"v"}}"#;
    let mut g = c.benchmark_group("serve");
    g.bench_function("JSON-RPC call round trip, one at a time", |b| {
        b.iter(|| {
            writeln!(stdin, "{req}").unwrap();
            stdin.flush().unwrap();
            next_reply(&mut stdout);
        })
    });
    const N: u64 = 1000;
    g.throughput(Throughput::Elements(N));
    g.bench_function("1000 JSON-RPC calls in flight", |b| {
        let batch: String = (0..N).map(|_| format!("{req}\n")).collect();
        b.iter(|| {
            stdin.write_all(batch.as_bytes()).unwrap();
            stdin.flush().unwrap();
            for _ in 0..N {
                next_reply(&mut stdout);
            }
        })
    });
    g.finish();
    drop(stdin);
    child.wait().unwrap();
}

fn chain_of_ten(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..10 {
        let p = dir.path().join(format!("link{i}"));
        std::fs::create_dir_all(&p).unwrap();
        std::fs::write(
            p.join("plugin.json"),
            format!(r#"{{"id":"link{i}","name":"l","version":"1.0.0","apiVersion":1,"events":{{"msg":"on"}}}}"#),
        )
        .unwrap();
        std::fs::write(
            p.join("main.js"),
            "export default { on(m) { return { payload: { ...m, hops: m.hops + 1 } }; } };",
        )
        .unwrap();
    }
    let manager = Manager::new(Engine::new(HostApi::new()));
    manager.load_dir(dir.path()).unwrap();
    let mut g = c.benchmark_group("events");
    g.bench_function("dispatch through a chain of 10 plugins", |b| {
        b.iter(|| {
            let r = manager.dispatch_blocking("msg", serde_json::json!({"text": "hi", "hops": 0})).unwrap();
            assert_eq!(r.payload["hops"], 10);
        })
    });
    g.bench_function("emit (notify) to 10 plugins", |b| {
        b.iter(|| {
            assert_eq!(manager.emit_blocking("msg", serde_json::json!({"hops": 0})).unwrap().deliveries.len(), 10)
        })
    });
    g.finish();
}

criterion_group!(benches, reload_latency, serve_round_trip, chain_of_ten);
criterion_main!(benches);
