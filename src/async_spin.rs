//! A brief spin for an async caller's answer, before its task goes to sleep.
//!
//! Why: an async call that waits the usual way puts its task to sleep, and the answer then
//! has to wake the executor's thread (a futex wake and a reschedule: measured 50–64 µs per
//! call on the 2-core VM one day, against 4 µs for `call_blocking`, which spins for its
//! answer; 1.5–1.8 µs with this watch). Most
//! hooks answer within a few microseconds, so watching for the answer a little first is
//! cheaper than sleeping. But it blocks the executor's thread meanwhile, so it is done only
//! while it is likely to pay off:
//! - only for a plugin with one async call in flight (a task with many calls in flight has
//!   better things to do than spin on one: it is pipelining);
//! - only when the plugin's thread is awake (busy, or still watching for the next call): one
//!   parked must be woken first, which on a VM can take longer than the watch lasts (measured,
//!   calls 2 ms apart: watching anyway made the median answer 2–9 µs later in 3 runs of 4);
//! - only while the answers come within [`SPIN_FOR`]: after one that did not, the next
//!   [`SKIP_AFTER_SLOW`] calls sleep at once, then one tries again;
//! - at most [`SPIN_FOR`] (well below the 100 µs tokio's docs give as the longest a task
//!   should run between awaits).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::Value;

use crate::call::spin_for;
use crate::error::Result;

/// The longest an async caller watches for its answer before it sleeps.
const SPIN_FOR: Duration = Duration::from_micros(25);

/// How many calls sleep at once after an answer that took longer than [`SPIN_FOR`].
const SKIP_AFTER_SLOW: u32 = 16;

/// One plugin's async calls in flight and how fast they answered lately (shared by every
/// handle of the plugin).
#[derive(Default)]
pub(crate) struct AsyncSpin {
    in_flight: AtomicUsize,
    /// Calls left that sleep at once (see [`SKIP_AFTER_SLOW`]).
    skip: AtomicU32,
}

/// An async call in flight, counted until it is answered or dropped.
pub(crate) struct InFlight {
    spin: Arc<AsyncSpin>,
    /// Whether this call may spin for its answer.
    may_spin: bool,
}

impl AsyncSpin {
    /// Counts a call about to be sent, deciding whether it may spin for its answer:
    /// `parked` says the plugin's thread is parked (the call will have to wake it).
    pub(crate) fn enter(self: &Arc<Self>, parked: bool) -> InFlight {
        let alone = self.in_flight.fetch_add(1, Ordering::Relaxed) == 0;
        let may_spin = alone && !parked && {
            let skip = self.skip.load(Ordering::Relaxed);
            skip == 0 || {
                self.skip.store(skip - 1, Ordering::Relaxed);
                false
            }
        };
        InFlight { spin: self.clone(), may_spin }
    }
}

impl InFlight {
    /// The answer, if it comes within [`SPIN_FOR`] and this call may spin for it; `None` to
    /// sleep on `rx` as usual. `Some(None)` if the plugin dropped the call unanswered.
    pub(crate) fn watch(
        &self,
        rx: &mut tokio::sync::oneshot::Receiver<Result<Value>>,
    ) -> Option<Option<Result<Value>>> {
        use tokio::sync::oneshot::error::TryRecvError;
        if !self.may_spin {
            return None;
        }
        let got = spin_for(SPIN_FOR, || match rx.try_recv() {
            Ok(r) => Some(Some(r)),
            Err(TryRecvError::Closed) => Some(None),
            Err(TryRecvError::Empty) => None,
        });
        if got.is_none() {
            // Slow this time: the next few calls sleep at once.
            self.spin.skip.store(SKIP_AFTER_SLOW, Ordering::Relaxed);
        }
        got
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.spin.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_call_alone_in_flight_may_spin() {
        let spin = Arc::new(AsyncSpin::default());
        let first = spin.enter(false);
        let second = spin.enter(false);
        assert!(first.may_spin);
        assert!(!second.may_spin, "a second call in flight is pipelining: it must not spin");
        drop((first, second));
        assert!(spin.enter(false).may_spin, "alone again once both were answered");
    }

    #[test]
    fn a_call_that_must_wake_a_parked_thread_does_not_spin() {
        let spin = Arc::new(AsyncSpin::default());
        assert!(!spin.enter(true).may_spin);
        assert!(spin.enter(false).may_spin, "a parked thread does not count as slow");
    }

    #[test]
    fn after_a_slow_answer_calls_sleep_at_once_for_a_while_then_try_again() {
        let spin = Arc::new(AsyncSpin::default());
        let call = spin.enter(false);
        let (tx, mut rx) = tokio::sync::oneshot::channel::<Result<Value>>();
        assert!(call.watch(&mut rx).is_none(), "no answer within the watch");
        drop((call, tx));
        for i in 0..SKIP_AFTER_SLOW {
            assert!(!spin.enter(false).may_spin, "call {i} after a slow one must not spin");
        }
        assert!(spin.enter(false).may_spin, "then one tries again");
    }

    #[test]
    fn a_watch_sees_an_answer_or_a_dropped_call() {
        let spin = Arc::new(AsyncSpin::default());
        let call = spin.enter(false);
        let (tx, mut rx) = tokio::sync::oneshot::channel::<Result<Value>>();
        tx.send(Ok(Value::from(7))).unwrap();
        assert_eq!(call.watch(&mut rx).unwrap().unwrap().unwrap(), Value::from(7));
        let (tx, mut rx) = tokio::sync::oneshot::channel::<Result<Value>>();
        drop(tx);
        assert!(call.watch(&mut rx).unwrap().is_none(), "a call dropped unanswered");
    }
}
