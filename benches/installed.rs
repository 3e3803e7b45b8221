//! 10,000 installed plugins in one process, 200 of them in use: what idle eviction
//! (`EngineBuilder::evict_idle_after`) buys. Prints a small report: time to load them all,
//! resident memory with every plugin evicted and with 200 active, and how long the first call
//! to an evicted plugin takes (cold, and from a warm pool).
//!
//! Run with `cargo bench --bench installed` (about a minute; needs ~2 GB of memory at its
//! peak, while a chunk of 1,000 plugins is loaded and not yet evicted).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use isola::events::LifecycleEvent;
use isola::{Engine, HostApi, Manager};

const INSTALLED: usize = 10_000;
const CHUNK: usize = 1_000;
const ACTIVE: usize = 200;
const IDLE: Duration = Duration::from_millis(200);

fn rss_mib() -> f64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    (pages * 4096) as f64 / (1 << 20) as f64
}

fn write_plugins(dir: &Path) {
    for i in 0..INSTALLED {
        let p = dir.join(format!("c{}", i / CHUNK)).join(format!("p{i:05}"));
        std::fs::create_dir_all(&p).unwrap();
        let manifest = format!(r#"{{"id":"p{i:05}","name":"p","version":"1.0.0","apiVersion":1}}"#);
        std::fs::write(p.join("plugin.json"), manifest).unwrap();
        std::fs::write(
            p.join("main.js"),
            "let n = 0; export default { onLoad(s) { if (s) n = s; }, onUnload() { return n; }, inc() { return ++n; } };",
        )
        .unwrap();
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn run(label: &str, engine: Engine, dir: &Path) {
    let base = rss_mib();
    let manager = Manager::new(engine);
    let events = manager.events();
    let mut evicted = 0usize;
    let t = Instant::now();
    for c in 0..INSTALLED / CHUNK {
        let report = manager.load_dir(dir.join(format!("c{c}"))).unwrap();
        assert_eq!(report.loaded.len(), CHUNK, "{:?}", report.failed.first());
        // Let the chunk go idle and be evicted before loading the next one.
        while evicted < (c + 1) * CHUNK {
            match events.recv_timeout(Duration::from_secs(30)) {
                Some(LifecycleEvent::Evicted { .. }) => evicted += 1,
                Some(_) => {}
                None => panic!("only {evicted} plugins were evicted"),
            }
        }
    }
    let load = t.elapsed();
    std::thread::sleep(Duration::from_millis(1100)); // the last eviction's memory goes back
    let all_evicted = rss_mib() - base;

    // 200 plugins in use: called more often than the idle time, so they stay.
    let ids = manager.ids();
    let active: Vec<_> = ids[..ACTIVE].iter().map(|id| manager.handle(id).unwrap()).collect();
    for h in &active {
        h.call_blocking::<_, i64>("inc", ()).unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let keep = {
        let (active, stop) = (active.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for h in &active {
                    h.call_blocking::<_, i64>("inc", ()).unwrap();
                }
                std::thread::sleep(IDLE / 4);
            }
        })
    };
    std::thread::sleep(IDLE * 2);
    let with_active = rss_mib() - base;

    // First calls to evicted plugins, one at a time, spaced so that a pool can refill.
    let mut firsts = Vec::new();
    for id in &ids[ACTIVE..ACTIVE + 200] {
        let h = manager.handle(id).unwrap();
        let t = Instant::now();
        assert_eq!(h.call_blocking::<_, i64>("inc", ()).unwrap(), 1);
        firsts.push(t.elapsed());
        std::thread::sleep(Duration::from_millis(5));
    }
    firsts.sort();
    stop.store(true, Ordering::Relaxed);
    keep.join().unwrap();
    let t = Instant::now();
    manager.shutdown();
    let down = t.elapsed();
    println!(
        "{label}: {INSTALLED} installed, loaded in {load:.2?} ({:.0} µs/plugin, in chunks of {CHUNK}, each evicted \
         before the next); RSS all evicted +{all_evicted:.0} MiB ({:.1} KiB/plugin), {ACTIVE} active +{with_active:.0} MiB \
         (process {:.0} MiB); first call to an evicted plugin p50 {:.2?} p99 {:.2?}; shutdown {down:.2?}",
        load.as_secs_f64() * 1e6 / INSTALLED as f64,
        all_evicted * 1024.0 / INSTALLED as f64,
        with_active + base,
        percentile(&firsts, 0.5),
        percentile(&firsts, 0.99),
    );
}

fn main() {
    // `cargo bench` passes `--bench`; filters are not supported here. Each configuration runs
    // in a process of its own, so that one's memory does not show in the other's figures.
    const CONFIG: &str = "ISOLA_BENCH_INSTALLED";
    let host = || HostApi::new().func("add", |(a, b): (f64, f64)| Ok(a + b));
    match std::env::var(CONFIG).ok().zip(std::env::var("ISOLA_BENCH_DIR").ok()) {
        Some((pool, dir)) => {
            let pool: usize = pool.parse().unwrap();
            let label = if pool == 0 { "cold".to_owned() } else { format!("warm pool of {pool}") };
            let engine = Engine::builder().host(host()).evict_idle_after(IDLE).warm_pool(pool).build();
            run(&label, engine, Path::new(&dir));
        }
        None => {
            let dir = tempfile::tempdir().unwrap();
            write_plugins(dir.path());
            for pool in ["0", "2"] {
                let status = std::process::Command::new(std::env::current_exe().unwrap())
                    .env(CONFIG, pool)
                    .env("ISOLA_BENCH_DIR", dir.path())
                    .status()
                    .unwrap();
                assert!(status.success());
            }
        }
    }
}
