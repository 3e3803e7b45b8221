//! One-shot measurements criterion cannot express well: resident memory per idle plugin, the
//! time to shut many plugins down, idle and busy (each spinning in a 5 s call with a full
//! mailbox). Prints a small report.
//!
//! Run with `cargo bench --bench footprint`.

use std::path::Path;
use std::time::{Duration, Instant};

use isola::{Engine, HostApi, Manager};

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

fn write_plugins(dir: &Path, n: usize) {
    for i in 0..n {
        let p = dir.join(format!("p{i:04}"));
        std::fs::create_dir_all(&p).unwrap();
        std::fs::write(
            p.join("plugin.json"),
            format!(r#"{{"id":"p{i:04}","name":"p","version":"1.0.0","apiVersion":1}}"#),
        )
        .unwrap();
        std::fs::write(
            p.join("main.js"),
            "let n = 0; export default { inc() { return ++n; }, spin() { while (true) {} }, onUnload() { return n; } };",
        )
        .unwrap();
    }
}

fn main() {
    // `cargo bench` passes `--bench`; filters are not supported here.
    let engine = Engine::new(HostApi::new().func("add", |(a, b): (f64, f64)| Ok(a + b)));

    for n in [100usize, 1000] {
        let dir = tempfile::tempdir().unwrap();
        write_plugins(dir.path(), n);
        let manager = Manager::new(engine.clone());
        let before = rss_bytes();
        let t = Instant::now();
        let report = manager.load_dir(dir.path()).unwrap();
        let load = t.elapsed();
        assert_eq!(report.loaded.len(), n, "{:?}", report.failed.first());
        for id in manager.ids() {
            manager.handle(&id).unwrap().call_blocking::<_, i64>("inc", ()).unwrap();
        }
        let after = rss_bytes();
        let per = (after.saturating_sub(before)) as f64 / n as f64 / (1 << 20) as f64;
        let t = Instant::now();
        manager.shutdown();
        let down = t.elapsed();
        println!(
            "{n:>5} plugins: load_dir {load:>10.2?} ({:>6.2?}/plugin), RSS {per:.2} MiB per idle plugin, shutdown {down:.2?}",
            load / n as u32
        );
    }

    // Shutdown while every plugin is busy: a 5 s spin running and a full mailbox behind it.
    let busy = Engine::builder().call_timeout(Duration::from_secs(5)).mailbox_capacity(8).build();
    for n in [100usize, 1000] {
        let dir = tempfile::tempdir().unwrap();
        write_plugins(dir.path(), n);
        let manager = Manager::new(busy.clone());
        manager.load_dir(dir.path()).unwrap();
        let mut pending = Vec::new();
        for id in manager.ids() {
            let h = manager.handle(&id).unwrap();
            for _ in 0..9 {
                pending.push(h.call::<_, ()>("spin", ()));
            }
        }
        std::thread::sleep(Duration::from_millis(200));
        let t = Instant::now();
        manager.shutdown();
        let down = t.elapsed();
        drop(pending);
        println!("{n:>5} busy plugins (5 s spin each, full mailbox): shutdown {down:.2?}");
    }
}
