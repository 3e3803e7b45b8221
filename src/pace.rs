//! A longer watch for a blocking caller's answer when the caller calls in a tight loop.
//!
//! Why: a plugin's thread and a blocking caller each spin briefly (crossbeam's backoff, a few
//! microseconds) before they sleep. A caller calling back to back keeps both awake, and a call
//! takes 2–3 µs. But one hiccup longer than that spin (a preempted thread, an interrupt) puts
//! one side to sleep, and on a VM a sleeping thread takes 50–100 µs to wake: long enough for
//! the other side to go to sleep too. From then on every call pays two wake-ups (the plugin's
//! thread for the call, the caller for the answer), and nothing brings the pair back, since
//! neither side's spin outlasts the other's wake-up (measured on the 2-core VM, `call_blocking`
//! back to back: the caller slept on 20–40 % of calls in some runs, p90 63–81 µs against a
//! 2.1–2.7 µs median).
//!
//! The caller is the side that can afford to wait awake: it is blocked anyway. So a caller
//! that sends its call within [`TIGHT`] of its plugin's previous `call_blocking` answer (to
//! whichever thread), while answers have been coming within [`WATCH_FOR`] and no other
//! `call_blocking` to the plugin is in flight (notifies and async calls are not counted; a
//! crowd of callers spinning on two cores would take the CPU the plugin's thread needs to
//! answer them), watches for its answer up to [`WATCH_FOR`] (long enough
//! to ride out the plugin thread's wake-up): it is then awake when the answer comes and sends
//! the next call at once, while the plugin's thread still spins, and the pair is back to
//! 2–3 µs calls. A caller that calls now and then (the plugin's thread has parked meanwhile:
//! the call must wake it) does not watch longer than before: it would only burn CPU for a
//! wake-up it cannot avoid. Only `call_blocking` is paced: a blocking notify waits on calls to
//! many plugins at once, and holding a core for one of them would slow the others.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// A call sent within this of the plugin's previous answer comes from a tight loop.
const TIGHT: Duration = Duration::from_micros(20);

/// The longest a blocking caller in a tight loop watches for its answer before it sleeps;
/// also the slowest previous answer after which it still does (a slow hook is worth
/// sleeping through).
const WATCH_FOR: Duration = Duration::from_micros(200);

/// The pace of one plugin's blocking calls: when the last answer came, and how long it took.
#[derive(Default)]
pub(crate) struct Pace {
    /// Nanoseconds since [`epoch`] when the last blocking answer was received (0: none yet).
    last_answer: AtomicU64,
    /// How long that call took, in nanoseconds.
    last_took: AtomicU64,
    /// Blocking calls sent and not yet answered (or given up on).
    in_flight: AtomicUsize,
}

/// A blocking call in flight, counted until it is answered or dropped.
pub(crate) struct Paced {
    pace: Arc<Pace>,
    sent: Instant,
    /// No other blocking call to the plugin was in flight when it was sent.
    alone: bool,
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn nanos(t: Instant) -> u64 {
    t.saturating_duration_since(epoch()).as_nanos() as u64 + 1
}

impl Pace {
    /// Counts a blocking call about to be sent.
    pub(crate) fn enter(self: &Arc<Self>) -> Paced {
        let alone = self.in_flight.fetch_add(1, Ordering::Relaxed) == 0;
        Paced { pace: self.clone(), sent: Instant::now(), alone }
    }
}

impl Paced {
    /// How long this call should watch for its answer before it sleeps (`None`: no longer
    /// than crossbeam's own brief spin).
    pub(crate) fn watch_for(&self) -> Option<Duration> {
        let last = self.pace.last_answer.load(Ordering::Relaxed);
        // (An answer stamped after this call was sent is another thread's: not a loop.)
        let tight = last != 0 && nanos(self.sent).checked_sub(last).is_some_and(|d| d <= TIGHT.as_nanos() as u64);
        let quick = self.pace.last_took.load(Ordering::Relaxed) <= WATCH_FOR.as_nanos() as u64;
        (self.alone && tight && quick).then_some(WATCH_FOR)
    }

    /// The answer came now.
    pub(crate) fn answered(self) {
        let now = Instant::now();
        let took = now.saturating_duration_since(self.sent).as_nanos() as u64;
        self.pace.last_took.store(took, Ordering::Relaxed);
        self.pace.last_answer.store(nanos(now), Ordering::Relaxed);
    }
}

impl Drop for Paced {
    fn drop(&mut self) {
        self.pace.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_caller_alone_in_a_tight_loop_of_quick_calls_watches_longer() {
        let pace = Arc::new(Pace::default());
        let first = pace.enter();
        assert_eq!(first.watch_for(), None, "no answer yet: nothing says the caller loops");
        first.answered();
        // Sent right after the previous answer, which was quick: a tight loop. (The answer's
        // time is set to the send's, so that a test thread preempted in between cannot fail.)
        let next = pace.enter();
        pace.last_answer.store(nanos(next.sent), Ordering::Relaxed);
        assert_eq!(next.watch_for(), Some(WATCH_FOR));
        // A second caller meanwhile: neither the one that came second...
        let other = pace.enter();
        assert_eq!(other.watch_for(), None, "a second call in flight must not spin");
        drop(other);
        next.answered();
        // ...nor one that comes after a pause.
        std::thread::sleep(TIGHT * 5);
        let later = pace.enter();
        assert_eq!(later.watch_for(), None, "a call after a pause sleeps as usual");
        drop(later);
    }

    #[test]
    fn after_a_slow_answer_a_tight_loop_sleeps_as_usual() {
        let pace = Arc::new(Pace::default());
        let call = pace.enter();
        std::thread::sleep(WATCH_FOR * 2);
        call.answered();
        let next = pace.enter();
        pace.last_answer.store(nanos(next.sent), Ordering::Relaxed);
        assert_eq!(next.watch_for(), None, "a slow hook is slept through");
    }
}
