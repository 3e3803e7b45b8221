//! Process isolation: a plugin in a child process of its own, behind the same
//! [`PluginHandle`](crate::PluginHandle).
//!
//! Why: V8 treats some faults as fatal to the whole process by design, and a bug in V8 or in
//! native host code is too; a host that runs untrusted plugins may want a boundary V8 cannot
//! break. With [`Isolation::Process`](crate::engine::Isolation) each such plugin runs the same
//! worker thread and runtime as in thread mode, in a child process; host functions and storage
//! stay in the host (a plugin's `host.fn(...)` is forwarded and answered there), so nothing
//! changes for the host's code or the plugin's.
//!
//! The child is the `isola` binary itself, or, for an embedder, the embedder's own binary: call
//! [`run_worker_if_requested`] first thing in `main`, as browsers do for their renderer
//! processes, and there is no second executable to ship. (Or point
//! [`EngineBuilder::worker_program`](crate::EngineBuilder::worker_program) at an `isola`
//! binary.)
//!
//! ```no_run
//! // First thing in `main`: returns at once unless this process was started as an isola worker.
//! isola::process::run_worker_if_requested();
//! // ... the host application as usual ...
//! ```
//!
//! What the boundary guarantees: a child that exits or is killed (SIGKILL, abort, a V8 fatal
//! error, a segfault) answers the call it was running with `PLUGIN_CRASHED`; calls queued
//! behind it run on the restarted plugin (the first restart is immediate; while a plugin keeps
//! crashing, calls that arrive during its backoff, 50 ms growing to 5 s, are refused with
//! `PLUGIN_CRASHED` at once rather than kept waiting); a
//! [`LifecycleEvent::Crashed`](crate::events::LifecycleEvent) says so; other plugins never
//! notice. A child that does not answer by its call's deadline plus [`GRACE`] is killed
//! (`TIMEOUT`). A child dies with its host (`PR_SET_PDEATHSIG`), inherits no file
//! descriptor but its two channels, writes no core dump, and is the kernel OOM killer's first
//! choice. It counts under the engine's total memory limit with its resident memory (see
//! `memory.rs`). See `wire.rs` for the protocol.

mod child;
mod memory;
mod parent;
mod seccomp;
mod wire;

pub use parent::GRACE;
pub(crate) use parent::spawn;
pub use wire::PROTOCOL_VERSION;

/// The environment variable that tells a started program it is an isola worker, and which
/// file descriptor its channel is.
const WORKER_FD_ENV: &str = "ISOLA_WORKER_FD";
/// Which file descriptor a worker's second (control) channel is.
const WORKER_CONTROL_FD_ENV: &str = "ISOLA_WORKER_CONTROL_FD";
/// The host's process id, so that a worker whose host died before it could arrange to die
/// with it exits at once.
const PARENT_PID_ENV: &str = "ISOLA_PARENT_PID";

/// Set once this program has called [`run_worker_if_requested`] and is not a worker: then
/// it can serve as its own worker program.
static HOOKED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// If this process was started as an isola worker (by a host running a plugin with process
/// isolation), runs that plugin and exits; otherwise returns at once. Call it first thing in
/// `main` of any program an [`Engine`](crate::Engine) may start as its worker program; a
/// program that calls it can start process-isolated plugins without setting
/// [`worker_program`](crate::EngineBuilder::worker_program).
pub fn run_worker_if_requested() {
    if let Some(code) = run_worker() {
        std::process::exit(code);
    }
    HOOKED.store(true, std::sync::atomic::Ordering::Release);
}

/// Runs the worker if this process is one; its exit status, or `None` if it is not a worker.
pub fn run_worker() -> Option<i32> {
    let fd: i32 = std::env::var(WORKER_FD_ENV).ok()?.parse().ok()?;
    let control = std::env::var(WORKER_CONTROL_FD_ENV).ok().and_then(|c| c.parse().ok());
    let parent = std::env::var(PARENT_PID_ENV).ok().and_then(|p| p.parse().ok());
    Some(child::run(fd, control, parent))
}

/// The program to start as a worker: the engine's, or this very program if it serves as one.
fn worker_program(engine: &crate::Engine) -> crate::Result<std::path::PathBuf> {
    use crate::error::{Error, ErrorCode};
    if std::env::var_os(WORKER_FD_ENV).is_some() {
        // Started as a worker, yet here: its `main` never called run_worker_if_requested, so
        // it is running as a second host. Starting workers from it would never end.
        return Err(Error::new(
            ErrorCode::LoadFailed,
            "this process was started as an isola worker but runs as a host: its main must call \
             isola::process::run_worker_if_requested() first",
        ));
    }
    match engine.worker_program() {
        Some(p) => Ok(p.to_path_buf()),
        None if HOOKED.load(std::sync::atomic::Ordering::Acquire) => std::env::current_exe()
            .map_err(|e| Error::new(ErrorCode::LoadFailed, format!("cannot find this program: {e}"))),
        None => Err(Error::new(
            ErrorCode::LoadFailed,
            "process isolation needs a worker program: call isola::process::run_worker_if_requested() \
             first thing in main, or set Engine::builder().worker_program(path to an isola binary)",
        )),
    }
}
