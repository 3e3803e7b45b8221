//! `isola dev --inspect[=ADDR]`: each plugin as a Chrome DevTools Protocol target.
//!
//! What debuggers expect (Chrome's `chrome://inspect`, VS Code's "attach"): an HTTP endpoint
//! `/json/list` naming the targets, each with a `webSocketDebuggerUrl` that speaks CDP. Here a
//! target is a plugin (`ws://ADDR/ws/PLUGIN`), and the WebSocket is bridged to the plugin's
//! [`isola::InspectorSession`]. Loopback only, and the `Host` header must be a loopback name
//! too, so that a web page cannot reach the debugger through DNS rebinding. The WebSocket path
//! carries a random token made at start (`/ws/TOKEN/PLUGIN`), which only `/json/list` tells:
//! a web page may open a WebSocket to loopback, but it cannot read that list (no CORS), so it
//! cannot guess where to connect.

use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use isola::{Manager, PluginHandle};
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

/// The largest request head read.
const MAX_HEAD: usize = 16 << 10;

/// Runs `body` while serving the manager's plugins to debuggers on `addr`.
pub fn serve_while<R>(manager: &Manager, addr: SocketAddr, body: impl FnOnce() -> R) -> Result<R, String> {
    if !addr.ip().is_loopback() {
        return Err(format!("the debugger only listens on loopback addresses, not {addr}"));
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    let listener = rt.block_on(TcpListener::bind(addr)).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    println!("debugger listening on http://{local}/json/list (open chrome://inspect, or attach VS Code)");
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| format!("no random source for the debugger's token: {e}"))?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    Ok(std::thread::scope(|s| {
        s.spawn(move || {
            rt.block_on(async {
                tokio::select! {
                    _ = stopped => {}
                    () = accept(listener, local, &token, manager) => {}
                }
            })
        });
        let r = body();
        let _ = stop.send(());
        r
    }))
}

async fn accept(listener: TcpListener, local: SocketAddr, token: &str, manager: &Manager) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of file descriptors, say: not a reason to spin.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        // One request at a time (the manager is borrowed, not shared with tasks): a client
        // that sends nothing holds the others up for at most a second.
        let Some((head, len)) = read_head(&stream).await else { continue };
        if let Err(e) = answer(stream, &head, len, local, token, manager).await {
            tracing::info!("inspector: {e}");
        }
    }
}

/// The request head and its length in bytes (with the blank line), peeked, not consumed: a
/// WebSocket handshake reads it again.
async fn read_head(stream: &TcpStream) -> Option<(String, usize)> {
    let mut buf = vec![0u8; MAX_HEAD];
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(1);
    loop {
        let n = tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await.ok()?.ok()?;
        if n == 0 {
            return None;
        }
        if let Some(end) = buf[..n].windows(4).position(|w| w == b"\r\n\r\n") {
            return Some((String::from_utf8_lossy(&buf[..end]).into_owned(), end + 4));
        }
        if n == MAX_HEAD || tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Whether `host` (a `Host` header) names this machine's loopback.
fn loopback_host(host: &str) -> bool {
    let name = if host.starts_with('[') { host.split(']').next().map(|h| &h[1..]) } else { host.split(':').next() };
    matches!(name, Some("localhost" | "127.0.0.1" | "::1"))
}

async fn answer(
    mut stream: TcpStream,
    head: &str,
    len: usize,
    local: SocketAddr,
    token: &str,
    manager: &Manager,
) -> Result<(), String> {
    let target = head.lines().next().and_then(|l| l.split(' ').nth(1)).unwrap_or("/");
    let path = target.split('?').next().unwrap_or("/").to_owned();
    let upgrade = header(head, "upgrade").is_some_and(|u| u.eq_ignore_ascii_case("websocket"));
    let plugin = path.strip_prefix("/ws/").and_then(|rest| rest.strip_prefix(token)).and_then(|r| r.strip_prefix('/'));
    if !(upgrade && plugin.is_some()) {
        // Consumed only now: a WebSocket handshake reads the head itself. (Closing a socket
        // with the request unread would reset the connection before the answer arrives.)
        let mut consumed = vec![0u8; len];
        let _ = tokio::io::AsyncReadExt::read_exact(&mut stream, &mut consumed).await;
    }
    if !header(head, "host").is_some_and(loopback_host) {
        return respond(&mut stream, "403 Forbidden", "text/plain", "the Host header must name a loopback address")
            .await;
    }
    if upgrade {
        let Some(id) = plugin else {
            return respond(&mut stream, "404 Not Found", "text/plain", "no such target").await;
        };
        let handle = match manager.handle(id) {
            Ok(h) => h,
            Err(e) => return respond(&mut stream, "404 Not Found", "text/plain", &e.to_string()).await,
        };
        tokio::spawn(bridge(stream, handle));
        return Ok(());
    }
    match path.trim_end_matches('/') {
        "/json" | "/json/list" => {
            let targets: Vec<_> = manager
                .ids()
                .into_iter()
                .filter_map(|id| {
                    let url = manager.handle(&id).ok()?.inspect_url()?;
                    let ws = format!("{local}/ws/{token}/{id}");
                    Some(json!({
                        "description": "isola plugin",
                        "devtoolsFrontendUrl": format!("devtools://devtools/bundled/js_app.html?experiments=true&v8only=true&ws={ws}"),
                        "id": id,
                        "title": format!("isola: {id}"),
                        "type": "node",
                        "url": url,
                        "webSocketDebuggerUrl": format!("ws://{ws}"),
                    }))
                })
                .collect();
            respond(&mut stream, "200 OK", "application/json", &serde_json::to_string_pretty(&targets).unwrap()).await
        }
        "/json/version" => {
            let v = json!({ "Browser": format!("isola/{}", env!("CARGO_PKG_VERSION")), "Protocol-Version": "1.3" });
            respond(&mut stream, "200 OK", "application/json", &v.to_string()).await
        }
        _ => respond(&mut stream, "404 Not Found", "text/plain", "try /json/list").await,
    }
}

async fn respond(stream: &mut TcpStream, status: &str, kind: &str, body: &str) -> Result<(), String> {
    let text = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}; charset=UTF-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(text.as_bytes()).await.map_err(|e| e.to_string())
}

/// Carries CDP messages between one WebSocket and the plugin's inspector session.
async fn bridge(stream: TcpStream, handle: PluginHandle) {
    let Ok(socket) = tokio_tungstenite::accept_async(stream).await else { return };
    let (mut sink, mut source) = socket.split();
    let mut session = match handle.inspect() {
        Ok(s) => s,
        Err(e) => {
            let _ = sink.send(Message::Close(None)).await;
            tracing::warn!("inspector: {e}");
            return;
        }
    };
    tracing::info!(plugin = handle.id(), "debugger attached");
    loop {
        tokio::select! {
            from_client = source.next() => match from_client {
                Some(Ok(Message::Text(t))) => {
                    if !session.send(t.as_str()) {
                        break;
                    }
                }
                Some(Ok(Message::Binary(b))) => {
                    if !session.send(String::from_utf8_lossy(&b).into_owned()) {
                        break;
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
            from_v8 = session.recv() => match from_v8 {
                Some(text) => {
                    if sink.send(Message::text(text)).await.is_err() {
                        break;
                    }
                }
                None => break,
            },
        }
    }
    let _ = sink.send(Message::Close(None)).await;
    tracing::info!(plugin = handle.id(), "debugger detached");
}
