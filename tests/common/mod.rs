//! Helpers shared by the integration tests: throwaway plugin directories and a host API.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

pub mod dev;

use isola::engine::Isolation;
use isola::{Engine, EngineBuilder, HostApi, Manager, PluginHandle};
use serde_json::json;

/// A temporary plugin directory that is deleted when dropped.
pub struct PluginDir {
    pub dir: tempfile::TempDir,
}

impl PluginDir {
    pub fn new() -> Self {
        PluginDir { dir: tempfile::tempdir().unwrap() }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a folder plugin with a default manifest and `main.js`.
    pub fn module(&self, id: &str, main_js: &str) -> PathBuf {
        self.module_with_manifest(
            id,
            &json!({"id": id, "name": id, "version": "1.0.0", "apiVersion": 1}).to_string(),
            main_js,
        )
    }

    pub fn module_with_manifest(&self, id: &str, manifest: &str, main_js: &str) -> PathBuf {
        let dir = self.path().join(id);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("plugin.json"), manifest).unwrap();
        std::fs::write(dir.join("main.js"), main_js).unwrap();
        dir
    }

    /// Writes a classic-script plugin `ID.js`.
    pub fn script(&self, id: &str, code: &str) -> PathBuf {
        let p = self.path().join(format!("{id}.js"));
        std::fs::write(&p, code).unwrap();
        p
    }

    pub fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }
}

/// A data directory for child `isola` processes, so tests never write to the user's home.
pub fn data_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("isola-test-data-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The `isola` binary, with a throwaway data directory (a test may still pass `--data-dir`).
pub fn isola_command() -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_isola"));
    c.env("ISOLA_DATA_DIR", data_dir());
    c
}

/// A host API like the CLI's demo one, plus functions tests need.
pub fn test_host() -> HostApi {
    HostApi::new()
        .value("config", json!({"version": "9.9.9", "nested": {"list": [1, 2]}}))
        .func("log", |(_msg,): (String,)| Ok(()))
        .func("add", |(a, b): (f64, f64)| Ok(a + b))
        .func("fail", |(msg,): (String,)| -> anyhow::Result<()> { anyhow::bail!("host says no: {msg}") })
        .async_func("fetchUser", |(id,): (u64,)| async move {
            tokio::time::sleep(Duration::from_millis(2)).await;
            if id == 0 {
                anyhow::bail!("no user with id 0");
            }
            Ok(json!({"id": id, "name": format!("user{id}")}))
        })
        .async_func("sleep", |(ms,): (u64,)| async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(ms)
        })
}

/// An engine builder for the suites that run in both isolation modes: with
/// `ISOLA_TEST_ISOLATION=process` every plugin runs in a child process (the `isola` binary as
/// its worker), otherwise on a thread. `.ci/run` runs those suites both ways.
pub fn builder() -> EngineBuilder {
    let mut b = Engine::builder();
    // `ISOLA_TEST_WARM_POOL=N` starts thread plugins from a warm pool of N isolates.
    if let Some(n) = std::env::var("ISOLA_TEST_WARM_POOL").ok().and_then(|n| n.parse().ok()) {
        b = b.warm_pool(n);
    }
    if !process_mode() {
        return b;
    }
    // `ISOLA_TEST_SECCOMP=1` also puts every plugin process under the syscall filter.
    let seccomp = std::env::var("ISOLA_TEST_SECCOMP").as_deref() == Ok("1");
    b.isolation(Isolation::Process).worker_program(env!("CARGO_BIN_EXE_isola")).seccomp(seccomp)
}

/// Whether this run puts plugins in child processes (see [`builder`]).
pub fn process_mode() -> bool {
    std::env::var("ISOLA_TEST_ISOLATION").as_deref() == Ok("process")
}

pub fn engine() -> Engine {
    builder().host(test_host()).call_timeout(Duration::from_secs(5)).build()
}

/// Loads one folder plugin from `main_js` in a fresh directory.
pub fn load_module(main_js: &str) -> (PluginDir, Manager, PluginHandle) {
    load_module_with(engine(), main_js)
}

pub fn load_module_with(engine: Engine, main_js: &str) -> (PluginDir, Manager, PluginHandle) {
    let dir = PluginDir::new();
    let path = dir.module("p", main_js);
    let manager = Manager::new(engine);
    let handle = manager.load(path).unwrap_or_else(|e| panic!("plugin failed to load: {e}"));
    (dir, manager, handle)
}

/// Runs `body` in a child process: this test binary again, filtered to the test `name`, so that
/// a crash (a V8 fatal error, an abort from a panic that reached V8) fails the test instead of
/// killing the test runner. In the child, `body` runs directly.
///
/// ```ignore
/// #[test]
/// fn hostile() {
///     in_child("hostile", || { /* may crash */ });
/// }
/// ```
pub fn in_child(name: &str, body: impl FnOnce()) {
    const CHILD: &str = "ISOLA_TEST_IN_CHILD";
    if std::env::var(CHILD).as_deref() == Ok(name) {
        body();
        return;
    }
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, name)
        .env("RUST_BACKTRACE", "0")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A hang fails the test too (after a generous minute), instead of stalling the run.
    let started = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "`{name}` failed in its child process ({}):\n{stdout}\n{stderr}", out.status);
    assert!(stdout.contains("1 passed"), "`{name}` did not run in its child process:\n{stdout}\n{stderr}");
}

/// Peak resident memory of this process so far (`VmHWM`), in MiB.
pub fn peak_rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024)
}

/// [`builder`] with `host` and default limits: `Engine::new(host)` for both isolation modes.
pub fn engine_with(host: HostApi) -> Engine {
    builder().host(host).build()
}
