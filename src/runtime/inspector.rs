//! Debugging plugins: V8's inspector, reached through Chrome DevTools Protocol sessions.
//!
//! Why sessions rather than a server here: the library stays free of HTTP and WebSocket (an
//! embedder may carry CDP over whatever it has); `isola dev --inspect` puts a WebSocket
//! server in front of these sessions (src/cli/inspect.rs).
//!
//! A session watches what the inspector sends for `Debugger.paused` and `Debugger.resumed`
//! and stops the running call's clock in between ([`DeadlineSlot::pause`]): a plugin held at
//! a breakpoint is not killed by its time limit, which applies to running time only.

use std::sync::Arc;

use deno_core::futures::StreamExt;
use deno_core::futures::channel::mpsc;
use deno_core::{InspectorMsg, InspectorSessionChannels, InspectorSessionKind, InspectorSessionProxy};

use super::watchdog::DeadlineSlot;

/// Where sessions reach one plugin's isolate.
#[derive(Clone)]
pub(crate) struct InspectorPort {
    sessions: mpsc::UnboundedSender<InspectorSessionProxy>,
    slot: Arc<DeadlineSlot>,
    /// The entry module's URL (what a debugger shows the target as).
    pub url: String,
}

impl InspectorPort {
    pub(crate) fn new(
        sessions: mpsc::UnboundedSender<InspectorSessionProxy>,
        slot: Arc<DeadlineSlot>,
        url: String,
    ) -> Self {
        InspectorPort { sessions, slot, url }
    }

    /// Whether the isolate still takes sessions.
    pub(crate) fn is_open(&self) -> bool {
        !self.sessions.is_closed()
    }

    pub(crate) fn connect(&self) -> Option<InspectorSession> {
        let (to_v8, from_client) = mpsc::unbounded::<String>();
        let (to_client, from_v8) = mpsc::unbounded::<InspectorMsg>();
        let proxy = InspectorSessionProxy {
            channels: InspectorSessionChannels::Regular { tx: to_client, rx: from_client },
            kind: InspectorSessionKind::NonBlocking { wait_for_disconnect: false },
        };
        self.sessions.unbounded_send(proxy).ok()?;
        Some(InspectorSession { to_v8, from_v8, slot: self.slot.clone(), paused: false })
    }
}

/// A Chrome DevTools Protocol session with one plugin's isolate: CDP messages (JSON text) in
/// both directions. Dropping it disconnects (a paused plugin then runs on).
///
/// ```no_run
/// # async fn f(plugin: isola::PluginHandle) {
/// let mut session = plugin.inspect().unwrap();
/// session.send(r#"{"id":1,"method":"Debugger.enable"}"#);
/// while let Some(msg) = session.recv().await {
///     println!("{msg}");
/// }
/// # }
/// ```
pub struct InspectorSession {
    to_v8: mpsc::UnboundedSender<String>,
    from_v8: mpsc::UnboundedReceiver<InspectorMsg>,
    slot: Arc<DeadlineSlot>,
    paused: bool,
}

impl InspectorSession {
    /// Sends one CDP message (a JSON object with `id`, `method` and `params`). Returns false
    /// once the isolate is gone (the plugin was unloaded, reloaded or restarted).
    pub fn send(&self, message: impl Into<String>) -> bool {
        self.to_v8.unbounded_send(message.into()).is_ok()
    }

    /// The next message from the inspector (a reply or an event); `None` once the isolate is
    /// gone.
    pub async fn recv(&mut self) -> Option<String> {
        let msg = self.from_v8.next().await?;
        self.observe(&msg.content);
        Some(msg.content)
    }

    /// Stops the running call's clock while the debugger holds the plugin paused.
    fn observe(&mut self, content: &str) {
        // Events start with their method; replies with their id. Only the two events matter.
        let Some(method) = method_of(content) else { return };
        if method == "Debugger.paused" && !self.paused {
            self.paused = true;
            self.slot.pause();
        } else if method == "Debugger.resumed" && self.paused {
            self.paused = false;
            self.slot.resume();
        }
    }
}

impl Drop for InspectorSession {
    fn drop(&mut self) {
        // V8 resumes a plugin whose debugger leaves.
        if self.paused {
            self.slot.resume();
        }
    }
}

/// The `method` of a CDP event, read without parsing the (possibly large) rest.
fn method_of(content: &str) -> Option<&str> {
    let at = content.find("\"method\":\"")? + "\"method\":\"".len();
    let rest = &content[at..];
    Some(&rest[..rest.find('"')?])
}
