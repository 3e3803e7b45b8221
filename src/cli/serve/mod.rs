//! `isola serve DIR`: JSON-RPC 2.0 so that any language can host isola's plugins as a sidecar
//! process, over stdin/stdout (one message per line) or WebSocket (`--listen ADDR`, one
//! message per text frame). The protocol is the same on both (the README has its reference):
//! `initialize` first, with the client's host API; then calls, events, commands and plugin
//! management; isola sends lifecycle `event` notifications and `host` requests for the
//! functions the client serves.
//!
//! Only protocol messages go to stdout (logs go to stderr); one writer owns stdout so that
//! every message is exactly one line.

mod client_host;
mod protocol;
mod session;
mod ws;

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::sync::Arc;

pub use session::Context;
use session::{AtEnd, Session};
use tokio::sync::mpsc;

/// Messages waiting to be written to one client. When it is full (the client stopped
/// reading), isola stops reading that client's requests.
pub const OUTBOX: usize = 32;
/// Messages read ahead of the session (a stdin line, a WebSocket message).
pub const INCOMING: usize = 16;
/// Queued after a session's last message: its writer stops there (an empty message is
/// never a protocol message), whoever else still holds a sender.
pub const END: &str = "";
/// The largest message isola reads (a line on stdin, a WebSocket message).
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// Serves `ctx.dir` on stdin/stdout, or on `listen` over WebSocket. `false` if it could not.
pub fn serve(ctx: Context, listen: Option<SocketAddr>) -> bool {
    if !ctx.dir.is_dir() {
        eprintln!("error: {} is not a directory of plugins", ctx.dir.display());
        return false;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime");
    let ctx = Arc::new(ctx);
    match listen {
        None => {
            stdio(ctx, &rt);
            true
        }
        Some(addr) => match rt.block_on(ws::listen(addr, ctx)) {
            Ok(()) => true,
            Err(e) => {
                eprintln!("error: {e}");
                false
            }
        },
    }
}

fn stdio(ctx: Arc<Context>, rt: &tokio::runtime::Runtime) {
    let (out, mut outbox) = mpsc::channel::<String>(OUTBOX);
    let writer = std::thread::spawn(move || {
        let mut stdout = std::io::BufWriter::new(std::io::stdout().lock());
        while let Some(msg) = outbox.blocking_recv() {
            if msg == END {
                break;
            }
            // Flushed when nothing more is queued: one write for a burst of answers.
            let ok = writeln!(stdout, "{msg}").is_ok() && (!outbox.is_empty() || stdout.flush().is_ok());
            if !ok {
                break; // the client went away
            }
        }
        let _ = stdout.flush();
    });
    // The reader stays at most INCOMING lines ahead of the session.
    let (lines, incoming) = mpsc::channel::<String>(INCOMING);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        while let Some(line) = read_line(&mut stdin) {
            if lines.blocking_send(line).is_err() {
                break;
            }
        }
    });
    rt.block_on(Session::new(ctx, out, true).run(incoming, AtEnd::Answer));
    let _ = writer.join();
}

/// The next line of `input`, at most [`MAX_MESSAGE_BYTES`]: a longer one is replaced by a
/// line that fails to parse (and so is answered with a parse error) and skipped.
fn read_line(input: &mut impl BufRead) -> Option<String> {
    let mut buf = Vec::new();
    let n = std::io::Read::take(&mut *input, MAX_MESSAGE_BYTES as u64 + 1).read_until(b'\n', &mut buf).ok()?;
    if n == 0 {
        return None;
    }
    if buf.len() > MAX_MESSAGE_BYTES && buf.last() != Some(&b'\n') {
        // Skip the rest of the line without keeping it.
        let mut rest = Vec::new();
        while std::io::Read::take(&mut *input, 1 << 16).read_until(b'\n', &mut rest).ok()? > 0 {
            if rest.last() == Some(&b'\n') {
                break;
            }
            rest.clear();
        }
        return Some(format!("message longer than {MAX_MESSAGE_BYTES} bytes"));
    }
    Some(String::from_utf8_lossy(&buf).trim_end().to_owned())
}
