//! One process-wide watchdog thread that enforces call deadlines for every isolate.
//!
//! Why one thread and atomics: a hook call must stay in the microseconds, so arming a deadline
//! cannot cost a thread wake-up. Each isolate owns a [`DeadlineSlot`] (one atomic); arming it is
//! a store plus a load. The watchdog sleeps until the earliest deadline it knows of and is only
//! woken when a call arms a deadline *earlier* than that, which in steady state (same timeout
//! for every call) is almost never. When a deadline passes it calls V8's thread-safe
//! `TerminateExecution` on that isolate.
//!
//! The slot's state machine keeps a late termination from hitting the *next* call:
//! `armed(deadline)` -> `TERMINATING` (watchdog is calling V8) -> `TERMINATED`; the isolate's
//! thread disarms with a compare-and-swap and waits out `TERMINATING`, so once `disarm` returns
//! the caller knows exactly whether a termination was requested and can cancel it.
//!
//! Termination keeps winning until the slot is disarmed: V8 ends a termination once no JS is
//! left on the stack, so after one `TerminateExecution` isola's own code could call plugin code
//! again (a getter on a thrown error, `Error.prepareStackTrace`, `toJSON`) and that would run
//! unbounded. So while a slot stays `TERMINATED`, the watchdog requests termination again every
//! [`REFIRE`]: whatever plugin code runs past its deadline, however it was entered, is stopped
//! within that.
//!
//! The watchdog also reads the WebAssembly memories of a plugin whose call runs, every
//! [`WASM_POLL`]: wasm code grows its memory where no callback sees it (see
//! `MemoryBudget::poll_wasm`). A plugin without memories costs nothing here.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use deno_core::v8;

use super::memory::{MemoryBudget, WASM_POLL};
use crate::cancel::Interrupt;
use crate::engine::STUCK_GRACE;
use crate::error::ErrorCode;

/// How often termination is requested again while a call is past its deadline.
pub(crate) const REFIRE: Duration = Duration::from_millis(5);

const IDLE: u64 = 0;
const TERMINATING: u64 = u64::MAX - 1;
const TERMINATED: u64 = u64::MAX;
/// Armed, but paused by a debugger: a deadline that never comes until it is resumed.
const PAUSED: u64 = u64::MAX - 2;

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Nanoseconds since the process-wide epoch; never 0 so that 0 can mean "idle". A deadline
/// too far away for a u64 of nanoseconds (~584 years) is "never", not a wrapped-around "now".
fn ticks(at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(epoch()).as_nanos()).unwrap_or(u64::MAX).clamp(1, PAUSED - 1)
}

/// No early stop: the call ends at its deadline, as `TIMEOUT`.
const NO_REASON: u8 = u8::MAX;

/// The deadline of whatever an isolate is running now, and how to stop it.
pub(crate) struct DeadlineSlot {
    state: AtomicU64,
    isolate: Mutex<Option<v8::IsolateHandle>>,
    /// Why the running call was stopped before its deadline (an [`ErrorCode`] index), or
    /// [`NO_REASON`].
    reason: AtomicU8,
    /// Wakes a call that awaits something when it is interrupted (no JS runs to terminate).
    woken: tokio::sync::Notify,
    /// When the running call was first terminated (ticks), to tell a thread that cannot be
    /// stopped (stuck in a host function) from one that is unwinding.
    terminated_at: AtomicU64,
    /// `on_stuck` was called for the running call.
    stuck: AtomicBool,
    /// What to do when the thread stays busy [`STUCK_GRACE`] past a termination.
    on_stuck: OnceLock<Box<dyn Fn() + Send + Sync>>,
    /// The running isolate's memory budget, whose wasm memories are read while a call runs.
    budget: Mutex<Weak<MemoryBudget>>,
    /// While a debugger holds the plugin paused: how much of the deadline was left (ns) when
    /// the pause began (see [`pause`](Self::pause)); 0 when not paused.
    paused_left: AtomicU64,
}

impl DeadlineSlot {
    /// A slot registered with the process-wide watchdog.
    pub(crate) fn new() -> Arc<Self> {
        let slot = Arc::new(DeadlineSlot {
            state: AtomicU64::new(IDLE),
            isolate: Mutex::new(None),
            reason: AtomicU8::new(NO_REASON),
            woken: tokio::sync::Notify::new(),
            terminated_at: AtomicU64::new(0),
            stuck: AtomicBool::new(false),
            on_stuck: OnceLock::new(),
            budget: Mutex::new(Weak::new()),
            paused_left: AtomicU64::new(0),
        });
        watchdog().register(&slot);
        slot
    }

    /// What to run (on the watchdog's thread) when a call stays busy [`STUCK_GRACE`] past its
    /// termination: its thread is somewhere termination cannot reach.
    pub(crate) fn on_stuck(&self, f: Box<dyn Fn() + Send + Sync>) {
        let _ = self.on_stuck.set(f);
    }

    /// Whether the running call has been told to stop: the watchdog asked V8 to terminate it
    /// (its deadline passed, or it was interrupted) and it has not been disarmed since. One
    /// atomic load, so that ops can ask on every host call (see `throw::stop_here`).
    pub(crate) fn fired(&self) -> bool {
        matches!(self.state.load(Ordering::SeqCst), TERMINATING | TERMINATED)
    }

    /// Which isolate to terminate (changes when a plugin restarts), and its budget.
    pub(crate) fn set_isolate(&self, handle: v8::IsolateHandle, budget: &Arc<MemoryBudget>) {
        *self.isolate.lock().unwrap() = Some(handle);
        *self.budget.lock().unwrap() = Arc::downgrade(budget);
    }

    /// Starts enforcing `deadline`.
    pub(crate) fn arm(&self, deadline: Instant) {
        self.reason.store(NO_REASON, Ordering::SeqCst);
        let t = ticks(deadline);
        self.state.store(t, Ordering::SeqCst);
        Self::wake_for(t);
    }

    /// Makes sure the watchdog looks no later than `t`.
    fn wake_for(t: u64) {
        let w = watchdog();
        if t < w.next_wake.load(Ordering::SeqCst) {
            // Taking the lock orders us after a scan in progress; the watchdog re-scans.
            let _guard = w.state.lock().unwrap();
            w.wake.notify_one();
        }
    }

    /// Why the call that ran last was stopped early (`None`: it was not, or by its deadline).
    /// Read it after [`disarm`](Self::disarm).
    pub(crate) fn reason(&self) -> Option<ErrorCode> {
        let r = self.reason.load(Ordering::SeqCst);
        ErrorCode::ALL.get(r as usize).copied()
    }

    /// Completes once the running call is interrupted (see [`Interrupt`]).
    pub(crate) async fn interrupted(&self) {
        // A wake-up left from an earlier call finds no reason set and waits again.
        while self.reason().is_none() {
            self.woken.notified().await;
        }
    }

    /// A debugger paused the plugin: the clock of the running call stops until
    /// [`resume`](Self::resume), so that a time limit applies to running time only.
    pub(crate) fn pause(&self) {
        let cur = self.state.load(Ordering::SeqCst);
        if cur == IDLE || cur == TERMINATING || cur == TERMINATED || cur == PAUSED {
            return;
        }
        let left = cur.saturating_sub(ticks(Instant::now())).max(1);
        // Written first: a `resume` that sees PAUSED must find what was left.
        self.paused_left.store(left, Ordering::SeqCst);
        if self.state.compare_exchange(cur, PAUSED, Ordering::SeqCst, Ordering::SeqCst).is_err() {
            self.paused_left.store(0, Ordering::SeqCst);
        }
    }

    /// The debugger let the plugin run again: what was left of the deadline counts from now.
    pub(crate) fn resume(&self) {
        let left = self.paused_left.swap(0, Ordering::SeqCst);
        if left == 0 {
            return;
        }
        let t = ticks(Instant::now()).saturating_add(left).min(PAUSED - 1);
        if self.state.compare_exchange(PAUSED, t, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
            Self::wake_for(t);
        }
    }

    /// Completes once the running call's deadline has passed, counting only the time it was
    /// not paused by a debugger. For a call that only awaits (no JS runs, so termination has
    /// nothing to stop), this is what ends it; the wall-clock timeout would count pauses.
    pub(crate) async fn expired(&self) {
        loop {
            let now = Instant::now();
            let wait = match self.state.load(Ordering::SeqCst) {
                IDLE | TERMINATING | TERMINATED => return,
                PAUSED => Duration::from_millis(20),
                t => {
                    let left = Duration::from_nanos(t.saturating_sub(ticks(now)));
                    if left.is_zero() {
                        return;
                    }
                    // Looked at again now and then: a pause and resume moves the deadline.
                    left.min(Duration::from_millis(50))
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// Stops enforcing; returns true if the deadline passed and the isolate was (or is being)
    /// told to terminate. The caller must then cancel the termination on the isolate's thread.
    pub(crate) fn disarm(&self) -> bool {
        loop {
            let cur = self.state.load(Ordering::SeqCst);
            if cur == TERMINATING {
                std::hint::spin_loop();
                continue;
            }
            if self.state.compare_exchange(cur, IDLE, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
                self.paused_left.store(0, Ordering::SeqCst);
                return cur == TERMINATED;
            }
        }
    }

    /// Terminates the isolate if its deadline has passed (again, if it already had); returns
    /// when to look next.
    fn check(&self, now: u64) -> Option<u64> {
        let d = self.state.load(Ordering::SeqCst);
        if d == IDLE || d == TERMINATING || d == PAUSED {
            return None;
        }
        if d != TERMINATED && d > now {
            if let Some(b) = self.budget.lock().unwrap().upgrade()
                && b.poll_wasm()
            {
                return Some(d.min(now.saturating_add(WASM_POLL.as_nanos() as u64)));
            }
            return Some(d);
        }
        if self.state.compare_exchange(d, TERMINATING, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
            // Holding TERMINATING keeps the isolate's thread in `disarm` until we are done, so
            // "stuck" is only ever reported while the call is really still running.
            if d != TERMINATED {
                self.terminated_at.store(now, Ordering::SeqCst);
                self.stuck.store(false, Ordering::SeqCst);
            } else if now.saturating_sub(self.terminated_at.load(Ordering::SeqCst)) > STUCK_GRACE.as_nanos() as u64
                && !self.stuck.swap(true, Ordering::SeqCst)
                && let Some(f) = self.on_stuck.get()
            {
                f();
            }
            if let Some(h) = self.isolate.lock().unwrap().as_ref() {
                h.terminate_execution();
            }
            self.state.store(TERMINATED, Ordering::SeqCst);
            return Some(now.saturating_add(REFIRE.as_nanos() as u64));
        }
        None
    }
}

/// Makes the watchdog look again within `within`: a plugin whose call is running just made
/// its first wasm memory, which the watchdog must start reading before the call's deadline.
pub(crate) fn look_again_within(within: Duration) {
    DeadlineSlot::wake_for(ticks(Instant::now() + within));
}

impl Interrupt for DeadlineSlot {
    /// Moves the running call's deadline to now: the watchdog terminates it at once, by the
    /// same path as a deadline (so a late termination can never hit the next call), and the
    /// call is answered with `code`. Only an armed deadline moves.
    fn interrupt(&self, code: ErrorCode) -> bool {
        loop {
            let cur = self.state.load(Ordering::SeqCst);
            if cur == IDLE || cur == TERMINATING || cur == TERMINATED {
                return false;
            }
            self.reason.store(code as u8, Ordering::SeqCst);
            if self.state.compare_exchange(cur, 1, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
                Self::wake_for(1);
                self.woken.notify_one();
                return true;
            }
        }
    }
}

struct Watchdog {
    state: Mutex<Vec<Weak<DeadlineSlot>>>,
    wake: Condvar,
    /// When the watchdog will next look, in ticks (`u64::MAX`: not before it is woken).
    next_wake: AtomicU64,
}

fn watchdog() -> &'static Watchdog {
    static WATCHDOG: OnceLock<&'static Watchdog> = OnceLock::new();
    WATCHDOG.get_or_init(|| {
        let w: &'static Watchdog = Box::leak(Box::new(Watchdog {
            state: Mutex::new(Vec::new()),
            wake: Condvar::new(),
            next_wake: AtomicU64::new(u64::MAX),
        }));
        std::thread::Builder::new()
            .name("isola-watchdog".into())
            .spawn(move || w.run())
            .expect("cannot start the isola watchdog thread");
        w
    })
}

impl Watchdog {
    fn register(&self, slot: &Arc<DeadlineSlot>) {
        self.state.lock().unwrap().push(Arc::downgrade(slot));
    }

    fn run(&self) {
        let mut slots = self.state.lock().unwrap();
        loop {
            // While scanning, any `arm` must wake us again: it cannot know whether the scan has
            // already passed its slot, so advertise "no deadline known" until the scan is done.
            self.next_wake.store(u64::MAX, Ordering::SeqCst);
            let now = ticks(Instant::now());
            let mut earliest = u64::MAX;
            slots.retain(|w| match w.upgrade() {
                Some(slot) => {
                    if let Some(d) = slot.check(now) {
                        earliest = earliest.min(d);
                    }
                    true
                }
                None => false,
            });
            self.next_wake.store(earliest, Ordering::SeqCst);
            slots = if earliest == u64::MAX {
                self.wake.wait(slots).unwrap()
            } else {
                let wait = Duration::from_nanos(earliest - now);
                self.wake.wait_timeout(slots, wait).unwrap().0
            };
        }
    }
}
