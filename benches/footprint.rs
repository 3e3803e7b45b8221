//! One-shot measurements criterion cannot express well: resident memory per idle plugin, the
//! time to shut many plugins down, idle and busy (each spinning in a 5 s call with a full
//! mailbox). Prints a small report, with where an idle plugin's memory goes: V8's heap pages,
//! malloc (V8's isolate structures first of all), its thread's stack.
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

/// Resident memory by kind, in bytes, from `/proc/self/smaps` and glibc's `mallinfo2`: what
/// the "where it goes" line splits a plugin's memory into.
#[derive(Clone, Copy, Default)]
struct Split {
    /// Anonymous mappings of 256 KiB: V8's heap pages (its regular page size).
    v8_pages: u64,
    /// Anonymous mappings of 4 MiB: plugin threads' stacks (isola's `STACK_SIZE`).
    stacks: u64,
    /// Bytes malloc has handed out and not had back (V8's isolate, deno_core, tokio, isola).
    malloc: u64,
}

fn split() -> Split {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let mut out = Split::default();
    let mut kind: Option<bool> = None; // Some(true): V8 page, Some(false): stack
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or("");
        if let Some((lo, hi)) = first.split_once('-').filter(|_| !first.ends_with(':')) {
            let size = u64::from_str_radix(hi, 16).unwrap_or(0) - u64::from_str_radix(lo, 16).unwrap_or(0);
            let anonymous = words.nth(4).is_none();
            kind = match size {
                _ if !anonymous => None,
                0x40000 => Some(true),
                0x400000 => Some(false),
                _ => None,
            };
        } else if first == "Rss:" {
            let bytes = words.next().unwrap().parse::<u64>().unwrap() * 1024;
            match kind {
                Some(true) => out.v8_pages += bytes,
                Some(false) => out.stacks += bytes,
                None => {}
            }
        }
    }
    // SAFETY: mallinfo2 only reads glibc's counters.
    out.malloc = unsafe { libc::mallinfo2() }.uordblks as u64;
    out
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
        let split_before = split();
        let t = Instant::now();
        let report = manager.load_dir(dir.path()).unwrap();
        let load = t.elapsed();
        assert_eq!(report.loaded.len(), n, "{:?}", report.failed.first());
        for id in manager.ids() {
            manager.handle(&id).unwrap().call_blocking::<_, i64>("inc", ()).unwrap();
        }
        let after = rss_bytes();
        let split_after = split();
        let per = (after.saturating_sub(before)) as f64 / n as f64 / (1 << 20) as f64;
        let kib = |a: u64, b: u64| a.saturating_sub(b) as f64 / n as f64 / 1024.0;
        let (pages, stacks, malloc) = (
            kib(split_after.v8_pages, split_before.v8_pages),
            kib(split_after.stacks, split_before.stacks),
            kib(split_after.malloc, split_before.malloc),
        );
        let t = Instant::now();
        manager.shutdown();
        let down = t.elapsed();
        println!(
            "{n:>5} plugins: load_dir {load:>10.2?} ({:>6.2?}/plugin), RSS {per:.2} MiB per idle plugin, shutdown {down:.2?}",
            load / n as u32
        );
        println!(
            "       where it goes, per plugin: V8 heap pages {pages:.0} KiB, malloc {malloc:.0} KiB, thread stack {stacks:.0} KiB, the rest {:.0} KiB",
            per * 1024.0 - pages - malloc - stacks
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
