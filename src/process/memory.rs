//! A process-isolated plugin under the engine's total memory limit.
//!
//! Why: a plugin's own budget is enforced inside its process, but the host's machine pays
//! for every process together. The engine's memory guard (see `memory_guard.rs`) keeps the sum
//! over all plugins under the host's limit; a child process takes part as one more
//! [`Consumer`], counted by what it really costs the machine: its resident memory, read from
//! `/proc` (V8 heap, ArrayBuffers, code, and the ~25 MiB a V8 process holds at rest). Stopping
//! it is immediate and gives everything back at once: the process is killed, and the pump
//! restarts it as after a crash, with `HEAP_LIMIT` as the reason.
//!
//! When the figure is read: after loading, while a call runs (each time the pump looks
//! whether the call was cancelled, every 10 ms), after a call that ran for a millisecond or
//! more, and every second while the pump waits for calls (the child's background work, its
//! timers, may grow it meanwhile).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use crate::handle::Shared;
use crate::memory_guard::{Consumer, MemoryGuard};

/// One child process as the engine's memory guard sees it.
pub(super) struct ChildMemory {
    guard: Arc<MemoryGuard>,
    /// The running child's process id (0: none). Locked while signalling it, and cleared
    /// before the pump reaps the child, so that a stop can never hit a reused pid.
    pid: Mutex<u32>,
    /// Bytes last reported to the guard.
    reported: AtomicUsize,
    /// Set when the guard stopped this child: (limit, usage) in bytes, taken by the pump.
    stopped: Mutex<Option<(usize, usize)>>,
    stopping: AtomicBool,
    /// To wake the pump when its child was stopped while idle (the restart happens there).
    shared: Weak<Shared>,
    generation: u64,
}

impl ChildMemory {
    /// A consumer registered with `guard`, reporting nothing yet.
    pub(super) fn new(guard: &Arc<MemoryGuard>, shared: &Arc<Shared>, generation: u64) -> Arc<Self> {
        let me = Arc::new(ChildMemory {
            guard: guard.clone(),
            pid: Mutex::new(0),
            reported: AtomicUsize::new(0),
            stopped: Mutex::new(None),
            stopping: AtomicBool::new(false),
            shared: Arc::downgrade(shared),
            generation,
        });
        let weak: Weak<dyn Consumer> = Arc::downgrade(&(me.clone() as Arc<dyn Consumer>));
        guard.register(weak);
        me
    }

    /// A new child runs (`Some(pid)`), or none does any more (its memory is given back).
    pub(super) fn attach(&self, pid: Option<u32>) {
        *self.pid.lock().unwrap() = pid.unwrap_or(0);
        self.stopping.store(false, Ordering::Release);
        self.report(0);
        if pid.is_some() {
            self.refresh();
        }
    }

    /// Reads the child's resident memory and reports it; stops the largest consumer if the
    /// engine's total is now over its limit (which may be this child).
    pub(super) fn refresh(&self) {
        let pid = *self.pid.lock().unwrap();
        if pid == 0 {
            return;
        }
        if let Some(rss) = resident_bytes(pid) {
            self.report(rss);
        }
    }

    fn report(&self, bytes: usize) {
        let before = self.reported.swap(bytes, Ordering::AcqRel);
        if bytes > before {
            if self.guard.grow(bytes - before) {
                self.guard.enforce(self as *const Self as *const ());
            }
        } else {
            self.guard.shrink(before - bytes);
        }
    }

    /// Runs `wait` (a `try_wait` on the child) with the pid locked; if it says the child ended
    /// (and so was reaped), the pid is cleared before anything could signal it again.
    pub(super) fn reaping(&self, wait: impl FnOnce() -> bool) -> bool {
        let mut pid = self.pid.lock().unwrap();
        let ended = wait();
        if ended {
            *pid = 0;
        }
        ended
    }

    /// Whether the guard stopped this child (and [`take_stop`](Self::take_stop) has not
    /// been called since).
    pub(super) fn was_stopped(&self) -> bool {
        self.stopped.lock().unwrap().is_some()
    }

    /// Whether the guard stopped this child, and under what figures: (limit, usage) bytes.
    pub(super) fn take_stop(&self) -> Option<(usize, usize)> {
        self.stopped.lock().unwrap().take()
    }
}

impl Consumer for ChildMemory {
    fn usage(&self) -> usize {
        self.reported.load(Ordering::Acquire)
    }

    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    fn stop_for_total(&self, limit: usize, usage: usize) {
        {
            let pid = self.pid.lock().unwrap();
            if *pid == 0 {
                return;
            }
            self.stopping.store(true, Ordering::Release);
            *self.stopped.lock().unwrap() = Some((limit, usage));
            // The whole process group (the child leads it): its memory goes back at once.
            // SAFETY: signalling a process group the pump created and has not reaped (the
            // pid is cleared, under this lock, before the pump reaps it).
            unsafe { libc::kill(-(*pid as i32), libc::SIGKILL) };
        }
        // An idle pump notices only when asked: have it restart the plugin now.
        if let Some(shared) = self.shared.upgrade() {
            shared.nudge(self.generation);
        }
    }
}

impl Drop for ChildMemory {
    fn drop(&mut self) {
        self.guard.shrink(self.reported.load(Ordering::Acquire));
    }
}

/// A process's resident memory in bytes, from `/proc/PID/statm`.
fn resident_bytes(pid: u32) -> Option<usize> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: usize = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
    Some(pages.saturating_mul(page))
}
