//! The warm pool: plugin threads made ready ahead of time (thread, tokio runtime, V8 isolate
//! from the startup snapshot), so that loading, reloading or restarting a plugin pays only for
//! the plugin's own code.
//!
//! Why: most of a cold start is V8 deserialising the snapshot into a new isolate and context
//! and the kernel handing out fresh pages (~3–5 ms); evaluating a small plugin is a fraction of
//! a millisecond. A pool thread does the expensive part in the background, then waits to be
//! given a plugin. One refill thread makes them one at a time (so the pool never takes more
//! than one core, and at most `size` isolates wait), off every caller's path.
//!
//! The pool belongs to a [`Manager`](crate::Manager) (its size comes from
//! [`EngineBuilder::warm_pool`](crate::EngineBuilder::warm_pool)); its isolates are counted
//! under the engine's total memory limit like any plugin's.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};

use crate::memory_guard::MemoryGuard;
use crate::runtime::isolate::BareIsolate;
use crate::stats::PoolStats;

/// What a pool thread runs once it is given a plugin: everything from then on happens on it.
pub(crate) type Assignment = Box<dyn FnOnce(tokio::runtime::Runtime, BareIsolate) + Send>;

/// Ready plugin threads (see the module's header).
pub(crate) struct WarmPool {
    inner: Arc<PoolInner>,
    /// The refill thread, joined when the pool goes (so that it cannot make an isolate after
    /// its manager is gone).
    refill: Option<JoinHandle<()>>,
}

struct PoolInner {
    /// The memory budget the waiting isolates were made with: a plugin whose manifest asks for
    /// another one starts cold.
    heap_limit: usize,
    ready: Mutex<VecDeque<WarmThread>>,
    /// One token per thread to make; the refill thread ends when this goes or `stopping` is set.
    want: Sender<()>,
    stopping: std::sync::atomic::AtomicBool,
    made: AtomicU64,
    taken: AtomicU64,
    /// Nanoseconds of thread CPU the refill thread's pool threads spent getting ready.
    cpu_ns: AtomicU64,
}

/// A thread waiting with a ready isolate: [`assign`](Self::assign) gives it its work.
pub(crate) struct WarmThread {
    work: Sender<Assignment>,
    /// The thread, to be joined by whoever the work belongs to.
    pub thread: JoinHandle<()>,
}

impl WarmThread {
    /// Hands the thread its work; it runs at once on that thread.
    pub(crate) fn assign(self, work: Assignment) -> JoinHandle<()> {
        // The thread waits on this channel until it gets work or its pool goes; it cannot
        // be gone while it waits, so the send cannot fail.
        let _ = self.work.send(work);
        self.thread
    }
}

impl WarmPool {
    /// A pool that keeps `size` threads ready, each with an isolate whose budget is
    /// `heap_limit` bytes, counted under `guard`. Refills in the background at once.
    pub(crate) fn new(size: usize, heap_limit: usize, guard: Arc<MemoryGuard>) -> WarmPool {
        let (want, wanted) = crossbeam_channel::unbounded();
        let inner = Arc::new(PoolInner {
            heap_limit,
            ready: Mutex::new(VecDeque::with_capacity(size)),
            want,
            stopping: Default::default(),
            made: AtomicU64::new(0),
            taken: AtomicU64::new(0),
            cpu_ns: AtomicU64::new(0),
        });
        for _ in 0..size {
            let _ = inner.want.send(());
        }
        let weak = Arc::downgrade(&inner);
        let refill = std::thread::Builder::new()
            .name("isola:pool".into())
            .spawn(move || refill(weak, wanted, heap_limit, guard));
        let refill = refill
            .inspect_err(|e| tracing::warn!("cannot start the warm pool's thread ({e}); plugins start cold"))
            .ok();
        WarmPool { inner, refill }
    }

    /// A ready thread for a plugin whose budget is `heap_limit` bytes, if one waits; the pool
    /// makes another in its place. `None` (start cold) if the pool is empty or its isolates
    /// have another budget.
    pub(crate) fn take(&self, heap_limit: usize) -> Option<WarmThread> {
        if heap_limit != self.inner.heap_limit {
            return None;
        }
        let warm = self.inner.ready.lock().unwrap().pop_front()?;
        self.inner.taken.fetch_add(1, Ordering::Relaxed);
        let _ = self.inner.want.send(());
        Some(warm)
    }

    /// What the pool has done so far.
    pub(crate) fn stats(&self) -> PoolStats {
        let made = self.inner.made.load(Ordering::Relaxed);
        PoolStats {
            ready: self.inner.ready.lock().unwrap().len(),
            made,
            taken: self.inner.taken.load(Ordering::Relaxed),
            cpu_us_per_isolate: (self.inner.cpu_ns.load(Ordering::Relaxed) / made.max(1)) / 1000,
        }
    }
}

impl Drop for WarmPool {
    fn drop(&mut self) {
        // The refill thread first (it may be making an isolate: at most one to wait for), so
        // that nothing joins the ready list after it is emptied.
        self.inner.stopping.store(true, Ordering::Release);
        let _ = self.inner.want.send(());
        if let Some(refill) = self.refill.take() {
            let _ = refill.join();
        }
        // The waiting threads see their work channel close and end, dropping their isolates;
        // they are joined so that none outlives the manager that owned it.
        let waiting: Vec<WarmThread> = self.inner.ready.lock().unwrap().drain(..).collect();
        for w in waiting {
            drop(w.work);
            let _ = w.thread.join();
        }
    }
}

/// The refill thread: makes one ready thread per token, until the pool goes.
fn refill(pool: Weak<PoolInner>, wanted: Receiver<()>, heap_limit: usize, guard: Arc<MemoryGuard>) {
    let stopping = |p: &PoolInner| p.stopping.load(Ordering::Acquire);
    while wanted.recv().is_ok() {
        if pool.upgrade().is_none_or(|p| stopping(&p)) {
            return;
        }
        let Some(warm) = make(heap_limit, &guard) else { continue };
        let (warm, cpu) = warm;
        match pool.upgrade().filter(|p| !stopping(p)) {
            Some(p) => {
                p.made.fetch_add(1, Ordering::Relaxed);
                p.cpu_ns.fetch_add(cpu, Ordering::Relaxed);
                p.ready.lock().unwrap().push_back(warm);
            }
            None => {
                drop(warm.work);
                let _ = warm.thread.join();
                return;
            }
        }
    }
}

/// Starts a pool thread and waits until its isolate is ready: the thread and the CPU
/// nanoseconds it took. `None` if the thread could not start or V8 failed.
fn make(heap_limit: usize, guard: &Arc<MemoryGuard>) -> Option<(WarmThread, u64)> {
    let (work, assigned) = crossbeam_channel::bounded::<Assignment>(1);
    let (ready_tx, ready) = crossbeam_channel::bounded::<u64>(1);
    let guard = guard.clone();
    let thread = std::thread::Builder::new()
        .name("isola:warm".into())
        .stack_size(crate::runtime::isolate::STACK_SIZE)
        .spawn(move || {
            let started = thread_cpu_ns();
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            let bare = {
                let _context = rt.enter();
                BareIsolate::new(heap_limit, &guard)
            };
            let _ = ready_tx.send(thread_cpu_ns().saturating_sub(started));
            match assigned.recv() {
                Ok(work) => work(rt, bare),
                // The pool went first: the isolate goes unused.
                Err(_) => {
                    let _context = rt.enter();
                    drop(bare);
                }
            }
        })
        .ok()?;
    match ready.recv() {
        Ok(cpu) => Some((WarmThread { work, thread }, cpu)),
        Err(_) => {
            let _ = thread.join();
            None
        }
    }
}

/// CPU time the calling thread has used, in nanoseconds.
fn thread_cpu_ns() -> u64 {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    (t.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(t.tv_nsec as u64)
}
