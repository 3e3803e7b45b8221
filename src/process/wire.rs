//! The messages between the host and a plugin's child process, and how they are framed.
//!
//! Two channels (socketpairs the child inherits as fds 3 and 4). The *call* channel carries
//! everything the child sends, and from the parent what the child's plugin thread waits for:
//! calls, and the answers to its blocking requests (sync host functions, storage, emits); that
//! thread reads it itself, so no other thread has to wake it. The *control* channel carries
//! what must reach the child while its plugin's thread is busy: cancellations and the answers
//! to async requests (async host functions, plugin calls), read by a thread of their own.
//!
//! Framing: a 4-byte little-endian length, then that many bytes of JSON. Why JSON: every
//! payload that crosses (hook arguments and results, host-function arguments, storage values)
//! already is JSON text or a `serde_json::Value`, so a binary format would mostly wrap JSON in
//! another envelope; measured, a call and its answer cost 1.0 µs to encode and decode (bincode:
//! 0.17 µs), about 1 % of a round trip, which is all wake-ups. A frame is at most
//! [`MAX_FRAME`]: the payloads inside are capped well below it (results and arguments at
//! `max_result_bytes`, messages between plugins at 1 MiB).
//!
//! The conversation: the child says [`ToParent::Hello`] with its protocol version; the parent
//! answers [`ToChild::Init`] (refusing a child that speaks another version); the child loads the
//! plugin and says [`ToParent::Loaded`]; then the parent sends calls one at a time and answers
//! the child's requests (host functions, storage, other plugins) in between. Version 2 added
//! the control channel.

use std::io::{Read, Write};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, ErrorCode, Result};
use crate::events::LifecycleEvent;
use crate::handle::PluginStatus;
use crate::source::PluginSource;
use crate::stats::PluginStats;
use crate::storage::StorageQuota;

/// The version of this conversation; a child that speaks another is refused.
pub const PROTOCOL_VERSION: u32 = 2;

/// Largest frame either side accepts.
pub(crate) const MAX_FRAME: usize = 256 << 20;

/// One host item as the child declares it to its plugin.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct HostDecl {
    pub name: String,
    pub kind: HostKind,
    pub permission: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum HostKind {
    Sync,
    Async,
    Value(Value),
}

/// What the child needs to run one plugin version: the parent's resolved configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ChildPlugin {
    pub source: PluginSource,
    pub heap_limit: usize,
    pub call_timeout_ms: u64,
    pub load_timeout_ms: u64,
    pub max_result_bytes: usize,
    pub granted: Vec<String>,
    pub storage_quota: StorageQuota,
    pub host: Vec<HostDecl>,
    /// The files the plugin's first process loaded (as imported, real path, text), so that a
    /// restarted process runs the same version whatever the disk holds now; empty at first.
    pub sources: Vec<(PathBuf, PathBuf, String)>,
    /// Install the syscall filter once loaded.
    pub seccomp: bool,
}

/// From the parent to the child.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ToChild {
    Init {
        protocol: u32,
        plugin: Box<ChildPlugin>,
    },
    /// Run a hook; answered by [`ToParent::Answer`] with the same id.
    Call {
        id: u64,
        hook: String,
        args: Value,
        timeout_ms: Option<u64>,
        /// When the host stops waiting, on `CLOCK_MONOTONIC` (which both processes share), in
        /// nanoseconds: a call that waits in the child (behind the plugin's background work)
        /// gets only what is left, and is refused once it has passed.
        deadline_ns: Option<u64>,
        chain: Vec<String>,
        event_depth: u32,
    },
    /// Stop call `id` now (its caller aborted it, or the plugin is being unloaded); it is
    /// answered with `code`.
    Cancel {
        id: u64,
        code: ErrorCode,
    },
    /// The answer to one of the child's requests.
    Reply {
        id: u64,
        result: Result<Value>,
    },
    Stop,
}

/// A request the child makes of the host, on its plugin's behalf.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Ask {
    /// Call host function `name` (sync or async, as declared).
    Host { name: String, args: Value },
    /// `host.storage`: 0 get, 1 set, 2 delete, 3 list (as the op numbers them).
    Storage { op: u32, key: String, value: String },
    /// `host.plugins.call`.
    CallPlugin { to: String, hook: String, args: Value, timeout_ms: u64, chain: Vec<String>, event_depth: u32 },
    /// `host.events.emit`.
    Emit { event: String, payload: Value, depth: u32 },
}

/// From the child to the parent.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ToParent {
    Hello {
        protocol: u32,
        pid: u32,
    },
    /// The plugin evaluated (its hook names), or why not; its counters (memory) so far; the
    /// files it loaded.
    Loaded {
        result: Result<Vec<String>>,
        stats: Box<PluginStats>,
        sources: Vec<(PathBuf, PathBuf, String)>,
    },
    Answer {
        id: u64,
        result: Result<Value>,
        stats: Box<PluginStats>,
        status: PluginStatus,
    },
    /// A request; answered by [`ToChild::Reply`] with the same id.
    Ask {
        id: u64,
        ask: Ask,
    },
    /// A lifecycle event inside the child (a restart after `HEAP_LIMIT`, a failed `onLoad`).
    Event(LifecycleEvent),
    /// A `console.*` line.
    Log {
        level: u32,
        msg: String,
    },
}

/// Now on `CLOCK_MONOTONIC`, in nanoseconds: a clock both sides of the channel read alike.
pub(crate) fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid pointer; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(ts.tv_nsec as u64)
}

/// Writes one frame.
pub(crate) fn write_frame<T: Serialize>(w: &mut impl Write, msg: &T) -> Result<()> {
    let body = serde_json::to_vec(msg).map_err(|e| io_error(format!("cannot encode a message: {e}")))?;
    if body.len() > MAX_FRAME {
        return Err(Error::new(ErrorCode::InvalidArgs, format!("a message of {} bytes is too large", body.len())));
    }
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
    frame.extend_from_slice(&body);
    w.write_all(&frame).map_err(|e| io_error(format!("the plugin's channel is closed: {e}")))
}

/// Reads one frame of at most `limit` bytes; `None` at a clean end of the stream.
pub(crate) fn read_frame<T: for<'de> Deserialize<'de>>(r: &mut impl Read, limit: usize) -> Result<Option<T>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(io_error(format!("the plugin's channel failed: {e}"))),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > limit {
        return Err(io_error(format!("a frame of {len} bytes is larger than the {limit} allowed")));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).map_err(|e| io_error(format!("the plugin's channel broke mid-message: {e}")))?;
    serde_json::from_slice(&body).map(Some).map_err(|e| io_error(format!("a malformed message: {e}")))
}

fn io_error(msg: String) -> Error {
    Error::new(ErrorCode::PluginCrashed, msg)
}
