//! Process isolation against thread mode, in the same run: hook call round trip, host function
//! call from JS, cold start, crash-to-ready recovery, and resident memory per idle plugin
//! (the child processes' RSS, read from /proc).
//!
//! Run with `cargo bench --bench process`.

use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use isola::engine::Isolation;
use isola::{Engine, HostApi, Manager};

const PLUGIN: &str = "let n = 0;
export default {
    inc() { return ++n; },
    hostLoop(count) { let s = 0; for (let i = 0; i < count; i++) s = host.add(s, 1); return s; },
};";

fn engine(isolation: Isolation) -> Engine {
    Engine::builder()
        .host(HostApi::new().func("add", |(a, b): (f64, f64)| Ok(a + b)))
        .isolation(isolation)
        .worker_program(env!("CARGO_BIN_EXE_isola"))
        .build()
}

fn write_plugin(dir: &Path, id: &str) -> std::path::PathBuf {
    let p = dir.join(id);
    std::fs::create_dir_all(&p).unwrap();
    std::fs::write(p.join("plugin.json"), format!(r#"{{"id":"{id}","name":"b","version":"1.0.0","apiVersion":1}}"#))
        .unwrap();
    std::fs::write(p.join("main.js"), PLUGIN).unwrap();
    p
}

const MODES: [(&str, Isolation); 2] = [("thread", Isolation::Thread), ("process", Isolation::Process)];

fn calls(c: &mut Criterion) {
    for (name, mode) in MODES {
        let dir = tempfile::tempdir().unwrap();
        let path = write_plugin(dir.path(), "bench");
        let manager = Manager::new(engine(mode));
        let h = manager.load(&path).unwrap();
        let mut g = c.benchmark_group(format!("isolation/{name}"));
        g.bench_function("hook call (call_blocking, one at a time)", |b| {
            b.iter(|| h.call_blocking::<_, i64>("inc", ()).unwrap())
        });
        const N: u64 = 1000;
        g.throughput(Throughput::Elements(N));
        g.bench_function("host.add from JS (1k calls per hook)", |b| {
            b.iter(|| assert_eq!(h.call_blocking::<_, u64>("hostLoop", (N,)).unwrap(), N))
        });
        g.finish();
    }
}

fn lifecycle(c: &mut Criterion) {
    for (name, mode) in MODES {
        let dir = tempfile::tempdir().unwrap();
        let path = write_plugin(dir.path(), "bench");
        let manager = Manager::new(engine(mode));
        let mut g = c.benchmark_group(format!("isolation/{name}"));
        g.sample_size(20);
        g.bench_function("cold start (load, first answer)", |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let t = Instant::now();
                    manager.load(&path).unwrap().call_blocking::<_, i64>("inc", ()).unwrap();
                    total += t.elapsed();
                    manager.unload("bench").unwrap();
                }
                total
            })
        });
        g.finish();
    }
    // Crash to ready: SIGKILL the child, then the next call restarts it and answers.
    let dir = tempfile::tempdir().unwrap();
    let path = write_plugin(dir.path(), "bench");
    let manager = Manager::new(engine(Isolation::Process));
    let h = manager.load(&path).unwrap();
    let mut g = c.benchmark_group("isolation/process");
    g.sample_size(10);
    g.bench_function("crash to ready (SIGKILL, then the next call answers)", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                h.call_blocking::<_, i64>("inc", ()).unwrap();
                let pid = h.process_id().unwrap();
                let t = Instant::now();
                // SAFETY: a child process this benchmark started.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                while h.call_blocking::<_, i64>("inc", ()).is_err() {}
                total += t.elapsed();
            }
            total
        })
    });
    g.finish();
}

/// Resident memory of each idle process plugin (its child's RSS), printed once.
fn footprint(_: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let manager = Manager::new(engine(Isolation::Process));
    let n = 20;
    let mut rss = 0u64;
    for i in 0..n {
        let h = manager.load(write_plugin(dir.path(), &format!("p{i:02}"))).unwrap();
        h.call_blocking::<_, i64>("inc", ()).unwrap();
        let statm = std::fs::read_to_string(format!("/proc/{}/statm", h.process_id().unwrap())).unwrap();
        rss += statm.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 4096;
    }
    println!(
        "isolation/process: {:.1} MiB RSS per idle plugin process ({n} plugins)",
        rss as f64 / n as f64 / (1 << 20) as f64
    );
}

criterion_group!(benches, calls, lifecycle, footprint);
criterion_main!(benches);
