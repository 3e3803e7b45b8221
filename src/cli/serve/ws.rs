//! `isola serve DIR --listen ADDR`: the same protocol over WebSocket, one session per
//! connection (each with its own host API and its own plugins, loaded at its `initialize`).
//!
//! A client proves the token (`--token`) in an `Authorization: Bearer TOKEN` header, which is
//! checked before the WebSocket handshake completes (a wrong one is refused with 401), or in
//! `initialize` (a wrong one closes the connection). Either way no plugin code runs for it.
//! A client that disconnects has its calls in flight cancelled and its plugins stopped.

use std::net::SocketAddr;
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::session::{AtEnd, Context, Session};
use super::{END, INCOMING, MAX_MESSAGE_BYTES, OUTBOX};

pub async fn listen(addr: SocketAddr, ctx: Arc<Context>) -> std::io::Result<()> {
    if !addr.ip().is_loopback() && ctx.token.is_none() {
        return Err(std::io::Error::other(format!(
            "refusing to listen on {addr} without --token: only loopback addresses may go without one"
        )));
    }
    let listener = TcpListener::bind(addr).await?;
    // On stderr, so that a script can wait for it (and learn the port of `--listen 127.0.0.1:0`).
    eprintln!("isola: listening on ws://{}", listener.local_addr()?);
    loop {
        let (stream, peer) = listener.accept().await?;
        let ctx = ctx.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(stream, ctx).await {
                tracing::info!("serve: connection from {peer}: {e}");
            }
        });
    }
}

/// What the `Authorization` header said about the token.
#[derive(Clone, Copy, PartialEq)]
enum Header {
    Absent,
    Right,
}

// The handshake callback's error type is tungstenite's (an HTTP response).
#[allow(clippy::result_large_err)]
async fn connection(stream: TcpStream, ctx: Arc<Context>) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    let mut header = Header::Absent;
    let check = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        let (Some(expected), Some(given)) = (&ctx.token, req.headers().get("authorization")) else {
            return Ok(resp);
        };
        let given = given.to_str().unwrap_or_default();
        if given.strip_prefix("Bearer ").is_some_and(|t| super::session::same_token(t.trim(), expected)) {
            header = Header::Right;
            Ok(resp)
        } else {
            let mut refusal = ErrorResponse::new(Some("wrong token".into()));
            *refusal.status_mut() = StatusCode::UNAUTHORIZED;
            Err(refusal)
        }
    };
    // Answers are small and latency matters: no Nagle delay.
    let _ = stream.set_nodelay(true);
    let config = WebSocketConfig::default().max_message_size(Some(MAX_MESSAGE_BYTES));
    let socket = tokio_tungstenite::accept_hdr_async_with_config(stream, check, Some(config)).await?;
    let (mut sink, mut source) = socket.split();

    let (out, mut outbox) = mpsc::channel::<String>(OUTBOX);
    let writer = tokio::spawn(async move {
        while let Some(msg) = outbox.recv().await {
            if msg == END {
                break;
            }
            // Flushed when nothing more is queued: one write for a burst of answers.
            let sent = sink.feed(Message::text(msg)).await;
            if sent.is_err() || (outbox.is_empty() && sink.flush().await.is_err()) {
                return;
            }
        }
        let _ = sink.close().await;
    });
    let (messages, incoming) = mpsc::channel::<String>(INCOMING);
    let reader = tokio::spawn(async move {
        while let Some(Ok(msg)) = source.next().await {
            let text = match msg {
                Message::Text(t) => t.as_str().to_owned(),
                Message::Binary(b) => String::from_utf8_lossy(&b).into_owned(),
                Message::Close(_) => break,
                _ => continue, // pings are answered by tungstenite itself
            };
            if messages.send(text).await.is_err() {
                break;
            }
        }
    });
    let authorized = ctx.token.is_none() || header == Header::Right;
    Session::new(ctx, out, authorized).run(incoming, AtEnd::Cancel).await;
    reader.abort();
    let _ = writer.await;
    Ok(())
}
