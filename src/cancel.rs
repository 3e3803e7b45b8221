//! [`CancelToken`]: how a host aborts calls it no longer wants.
//!
//! Why a token and not only "drop the future": a blocking call has no future to drop, and a
//! host often wants to cancel a group of calls at once (everything a closed panel started).
//! The token is the Extism `CancelHandle` / tokio `CancellationToken` shape: clone it, hand it
//! to calls through [`CallOptions::cancel`](crate::CallOptions::cancel), call
//! [`cancel`](CancelToken::cancel) from any thread. Async calls are also aborted when their
//! future is dropped, with or without a token.

use std::sync::{Arc, Mutex, Weak};

use crate::error::ErrorCode;

/// Aborts every call made with it, now and later: a queued call is skipped without running, a
/// running one is stopped like a timeout (the plugin keeps its state), and both answer
/// `ABORTED`. Calls made with a token that is already cancelled fail at once.
///
/// ```no_run
/// # fn demo(plugin: isola::PluginHandle) {
/// use isola::{CallOptions, CancelToken, ErrorCode};
///
/// let token = CancelToken::new();
/// let t = token.clone();
/// std::thread::spawn(move || { std::thread::sleep(std::time::Duration::from_millis(10)); t.cancel() });
/// let e = plugin.call_blocking_with::<_, ()>("slow", (), CallOptions::default().cancel(&token)).unwrap_err();
/// assert_eq!(e.code, ErrorCode::Aborted);
/// # }
/// ```
#[derive(Clone, Default)]
pub struct CancelToken {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    state: Mutex<State>,
    /// Wakes what awaits [`CancelToken::cancelled`].
    woken: tokio::sync::Notify,
}

#[derive(Default)]
struct State {
    cancelled: bool,
    /// The calls made with this token that may still be queued or running.
    calls: Vec<Weak<Abort>>,
}

impl CancelToken {
    /// A token that is not cancelled.
    pub fn new() -> Self {
        CancelToken::default()
    }

    /// Aborts every call made with this token (and every later one).
    pub fn cancel(&self) {
        let calls = {
            let mut s = self.inner.state.lock().unwrap();
            s.cancelled = true;
            std::mem::take(&mut s.calls)
        };
        for call in calls.iter().filter_map(Weak::upgrade) {
            call.abort();
        }
        self.inner.woken.notify_waiters();
    }

    /// Completes once the token is cancelled.
    pub(crate) async fn cancelled(&self) {
        loop {
            let woken = self.inner.woken.notified();
            if self.is_cancelled() {
                return;
            }
            woken.await;
        }
    }

    /// Whether [`cancel`](Self::cancel) was called.
    pub fn is_cancelled(&self) -> bool {
        self.inner.state.lock().unwrap().cancelled
    }

    /// Ties a call to this token (aborting it at once if the token is cancelled already).
    pub(crate) fn watch(&self, call: &Arc<Abort>) {
        let mut s = self.inner.state.lock().unwrap();
        if s.cancelled {
            drop(s);
            call.abort();
            return;
        }
        // Calls that ended are only weak entries: sweep them now and then.
        if s.calls.len() >= 64 && s.calls.len().is_power_of_two() {
            s.calls.retain(|w| w.strong_count() > 0);
        }
        s.calls.push(Arc::downgrade(call));
    }
}

impl std::fmt::Debug for CancelToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CancelToken").field("cancelled", &self.is_cancelled()).finish()
    }
}

impl PartialEq for CancelToken {
    /// Two tokens are equal when they are clones of one another.
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

impl Eq for CancelToken {}

/// What can stop the call running on a plugin's thread at once: the thread's deadline slot,
/// which terminates the JS as if its deadline had passed.
pub(crate) trait Interrupt: Send + Sync {
    /// Stops the running call now, to be answered with `code`; false if no call runs.
    fn interrupt(&self, code: ErrorCode) -> bool;
}

/// One call's cancellation, shared by its caller (who aborts) and the plugin's thread (which
/// skips the call if it has not started, or stops it if it runs).
///
/// Why a lock and not a flag: aborting must reach the call that is running *now*, never the
/// next one on the same thread. The thread registers itself under the lock before running the
/// call and unregisters before it disarms the deadline, so an abort either finds the call
/// running (and interrupts it) or finds it not started (and it is skipped) or finished.
#[derive(Default)]
pub(crate) struct Abort {
    state: Mutex<AbortState>,
}

#[derive(Default)]
struct AbortState {
    aborted: bool,
    running: Option<Arc<dyn Interrupt>>,
}

impl Abort {
    /// Aborts the call: skipped if queued, stopped if running (answered `ABORTED`).
    pub(crate) fn abort(&self) {
        self.abort_with(ErrorCode::Aborted);
    }

    /// [`abort`](Self::abort), answered with `code` (`SHUT_DOWN` for an unload).
    pub(crate) fn abort_with(&self, code: ErrorCode) {
        let mut s = self.state.lock().unwrap();
        if s.aborted {
            return;
        }
        s.aborted = true;
        if let Some(running) = s.running.as_ref() {
            running.interrupt(code);
        }
    }

    pub(crate) fn is_aborted(&self) -> bool {
        self.state.lock().unwrap().aborted
    }

    /// The plugin's thread is about to run the call on `on`; false if it was aborted already
    /// (then it must not run).
    pub(crate) fn start(&self, on: Arc<dyn Interrupt>) -> bool {
        let mut s = self.state.lock().unwrap();
        if s.aborted {
            return false;
        }
        s.running = Some(on);
        true
    }

    /// The call stopped running (called before the thread disarms its deadline).
    pub(crate) fn finish(&self) {
        self.state.lock().unwrap().running = None;
    }
}
