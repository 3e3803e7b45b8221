//! The host API a `serve` client offers its plugins. Each function it declares in
//! `initialize` becomes a host function that sends the client a `host` request and gives the
//! plugin the client's answer: its result, or its error as a catchable JS error (`e.message`
//! the client's message, `e.hostCode` its code, `e.data` its data).
//!
//! A plugin never waits past its hook's deadline ([`isola::call_deadline`]) or the function's
//! own `timeoutMs`: a client that does not answer in time gives the plugin a `TIMEOUT` error.
//! Permissions are isola's usual ones, checked before anything is sent.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use isola::{HostApi, HostError};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

/// How long a host function waits for the client when it knows no deadline (it always does
/// inside a hook; this is a backstop).
const FALLBACK_WAIT: Duration = Duration::from_secs(30);
/// How long before its hook's deadline a plugin stops waiting for the client (at most; a
/// tenth of the time left when that is less).
const HOOK_MARGIN: Duration = Duration::from_millis(20);

/// What `initialize` may declare under `host`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct HostDecl {
    #[serde(default)]
    functions: Vec<FnDecl>,
    #[serde(default)]
    values: Vec<ValueDecl>,
}

/// A function the client serves: `host.NAME(...)` in plugins.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FnDecl {
    name: String,
    /// From the plugin's point of view: `true` (default) returns a Promise; `false` blocks the
    /// plugin until the client answers and returns the value itself.
    #[serde(default = "yes", rename = "async")]
    is_async: bool,
    /// The permission a plugin needs to call it.
    permission: Option<String>,
    /// The longest the plugin waits for the client (the hook's deadline applies anyway).
    timeout_ms: Option<u64>,
}

/// A plain value: `host.NAME` in plugins.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ValueDecl {
    name: String,
    value: Value,
    permission: Option<String>,
}

fn yes() -> bool {
    true
}

/// An answer from the client: its `result`, or its `error` object.
type Answer = Result<Value, Value>;

enum Waiter {
    Blocking(crossbeam_channel::Sender<Answer>),
    Async(oneshot::Sender<Answer>),
}

/// isola's requests to one client that wait for an answer, by request id.
pub struct ClientCalls {
    out: mpsc::Sender<String>,
    next: AtomicU64,
    pending: Mutex<HashMap<String, Waiter>>,
    /// Set once the client can no longer answer (its input ended, it disconnected).
    gone: Mutex<Option<String>>,
}

impl ClientCalls {
    pub fn new(out: mpsc::Sender<String>) -> Arc<ClientCalls> {
        Arc::new(ClientCalls { out, next: AtomicU64::new(1), pending: Mutex::default(), gone: Mutex::default() })
    }

    /// The host API the declaration describes, every function answered by this client.
    pub fn host_api(self: &Arc<Self>, decl: HostDecl) -> Result<HostApi, String> {
        let mut host = HostApi::new();
        let mut seen = std::collections::BTreeSet::new();
        let names = decl.functions.iter().map(|f| &f.name).chain(decl.values.iter().map(|v| &v.name));
        for name in names {
            HostApi::check_name(name)?;
            if !seen.insert(name.clone()) {
                return Err(format!("host item `{name}` is declared twice"));
            }
        }
        for f in decl.functions {
            let limit = f.timeout_ms.map(Duration::from_millis);
            let name = f.name.clone();
            let calls = self.clone();
            host = if f.is_async {
                host.async_func(&f.name, move |args: Value| {
                    // Read on the plugin's thread, before the future first waits.
                    let ask = calls.ask(&name, args, limit);
                    let calls = calls.clone();
                    async move { calls.wait(ask?).await }
                })
            } else {
                host.func(&f.name, move |args: Value| {
                    let ask = calls.ask(&name, args, limit)?;
                    calls.wait_blocking(ask)
                })
            };
            if let Some(p) = &f.permission {
                host = host.requires(&f.name, p);
            }
        }
        for v in decl.values {
            host = host.value(&v.name, v.value);
            if let Some(p) = &v.permission {
                host = host.requires(&v.name, p);
            }
        }
        Ok(host)
    }

    /// A request for the client, not sent yet: its id, text and deadline.
    fn ask(&self, name: &str, args: Value, limit: Option<Duration>) -> anyhow::Result<Ask> {
        if let Some(why) = &*self.gone.lock().unwrap() {
            return Err(HostError::new(format!("host.{name}: {why}")).into());
        }
        let now = Instant::now();
        // Give up a little before the hook's deadline, so that the plugin gets a TIMEOUT it
        // can catch (at the deadline itself the watchdog stops the hook).
        let mut deadline = isola::call_deadline().map_or(now + FALLBACK_WAIT, |d| {
            let left = d.saturating_duration_since(now);
            d - (left / 10).min(HOOK_MARGIN)
        });
        if let Some(l) = limit {
            deadline = deadline.min(now + l);
        }
        let id = format!("host-{}", self.next.fetch_add(1, Ordering::Relaxed));
        let plugin = isola::current_plugin().unwrap_or_default();
        let text = json!({"jsonrpc": "2.0", "id": id, "method": "host", "params": {"plugin": plugin, "name": name, "args": args}})
            .to_string();
        Ok(Ask { id, name: name.to_owned(), text, deadline, started: now })
    }

    /// Sends `ask` and waits for the answer on the plugin's thread (a sync host function).
    fn wait_blocking(&self, ask: Ask) -> anyhow::Result<Value> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.pending.lock().unwrap().insert(ask.id.clone(), Waiter::Blocking(tx));
        let _forget = Forget { calls: self, id: &ask.id };
        // Room in the output queue is waited for with the same deadline; `try_send` keeps
        // this thread off tokio (a plugin thread may be inside its own runtime).
        let mut text = ask.text.clone();
        loop {
            match self.out.try_send(text) {
                Ok(()) => break,
                Err(mpsc::error::TrySendError::Full(t)) if Instant::now() < ask.deadline => {
                    text = t;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(mpsc::error::TrySendError::Full(_)) => return Err(ask.timed_out()),
                Err(mpsc::error::TrySendError::Closed(_)) => return Err(gone(&ask.name)),
            }
        }
        match rx.recv_deadline(ask.deadline) {
            Ok(answer) => from_answer(answer),
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => Err(ask.timed_out()),
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => Err(self.gone_error(&ask.name)),
        }
    }

    /// Sends `ask` and waits for the answer (an async host function).
    async fn wait(self: Arc<Self>, ask: Ask) -> anyhow::Result<Value> {
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(ask.id.clone(), Waiter::Async(tx));
        // Dropped when the plugin stops waiting (its call ended early): forgotten, and the
        // client told to stop working on it.
        let _forget = Forget { calls: &self, id: &ask.id };
        let exchange = async {
            self.out.send(ask.text.clone()).await.map_err(|_| gone(&ask.name))?;
            match rx.await {
                Ok(answer) => from_answer(answer),
                Err(_) => Err(self.gone_error(&ask.name)),
            }
        };
        match tokio::time::timeout_at(ask.deadline.into(), exchange).await {
            Ok(r) => r,
            Err(_) => Err(ask.timed_out()),
        }
    }

    /// Hands the client's answer to the plugin waiting for it; `false` if none is (it gave up).
    pub fn resolve(&self, id: &Value, answer: Answer) -> bool {
        let Some(id) = id.as_str() else { return false };
        let Some(waiter) = self.pending.lock().unwrap().remove(id) else { return false };
        match waiter {
            Waiter::Blocking(tx) => tx.send(answer).is_ok(),
            Waiter::Async(tx) => tx.send(answer).is_ok(),
        }
    }

    /// The client can answer no more: every waiting plugin gets an error now, and later
    /// calls fail at once.
    pub fn close(&self, why: &str) {
        *self.gone.lock().unwrap() = Some(why.to_owned());
        // Dropping the senders wakes the waiters.
        self.pending.lock().unwrap().clear();
    }

    fn gone_error(&self, name: &str) -> anyhow::Error {
        match &*self.gone.lock().unwrap() {
            Some(why) => HostError::new(format!("host.{name}: {why}")).into(),
            None => gone(name),
        }
    }
}

fn gone(name: &str) -> anyhow::Error {
    HostError::new(format!("host.{name}: the client is gone")).into()
}

/// One request to the client.
struct Ask {
    id: String,
    name: String,
    text: String,
    deadline: Instant,
    started: Instant,
}

impl Ask {
    fn timed_out(&self) -> anyhow::Error {
        let ms = self.deadline.saturating_duration_since(self.started).as_millis();
        HostError::timeout(format!("the client did not answer host.{} within {ms} ms", self.name)).into()
    }
}

/// Removes a request from the pending set when its waiter goes; if it was still unanswered,
/// tells the client (a `cancel` notification naming it).
struct Forget<'a> {
    calls: &'a ClientCalls,
    id: &'a str,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        if self.calls.pending.lock().unwrap().remove(self.id).is_some() {
            let note = json!({"jsonrpc": "2.0", "method": "cancel", "params": {"id": self.id}});
            let _ = self.calls.out.try_send(note.to_string());
        }
    }
}

/// The client's answer as the plugin sees it.
fn from_answer(answer: Answer) -> anyhow::Result<Value> {
    match answer {
        Ok(v) => Ok(v),
        Err(e) => {
            let message = e.get("message").and_then(Value::as_str).map_or_else(|| e.to_string(), str::to_owned);
            let mut err = HostError::new(message);
            if let Some(code) = e.get("code") {
                err = err.code(code.clone());
            }
            if let Some(data) = e.get("data") {
                err = err.data(data.clone());
            }
            Err(err.into())
        }
    }
}
