//! A JSON-RPC client for `isola serve`, over stdio or WebSocket, for the serve tests and
//! benchmark: sends requests, skips (and keeps) `event` notifications, and answers isola's
//! `host` requests with a handler the test sets.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use serde_json::{Value, json};

/// How long a test waits for any one message before failing (never hangs).
pub const PATIENCE: Duration = Duration::from_secs(20);

/// What a test does with a `host` request: `Some(reply)` to answer it now (a full JSON-RPC
/// response built with [`result_for`]/[`error_for`]), `None` to leave it unanswered.
pub type HostHandler = Box<dyn FnMut(&Value) -> Option<Value> + Send>;

pub struct Client {
    out: Sender<String>,
    incoming: Receiver<Value>,
    pub events: Vec<Value>,
    /// `host` requests seen, in order.
    pub host_requests: Vec<Value>,
    pub host: HostHandler,
    next_id: u64,
}

pub fn result_for(request: &Value, result: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": request["id"], "result": result})
}

pub fn error_for(request: &Value, code: Value, message: &str, data: Option<Value>) -> Value {
    let mut err = json!({"code": code, "message": message});
    if let Some(d) = data {
        err["data"] = d;
    }
    json!({"jsonrpc": "2.0", "id": request["id"], "error": err})
}

/// The default host handler: `fetchUser(id)` answers a user; everything else is left alone.
pub fn users_host() -> HostHandler {
    Box::new(|req| {
        (req["params"]["name"] == "fetchUser")
            .then(|| result_for(req, json!({"id": req["params"]["args"][0], "name": "Ada"})))
    })
}

impl Client {
    fn with(out: Sender<String>, incoming: Receiver<Value>) -> Client {
        Client { out, incoming, events: Vec::new(), host_requests: Vec::new(), host: users_host(), next_id: 1000 }
    }

    /// Speaks to `child`'s stdin/stdout.
    pub fn stdio(child: &mut Child) -> Client {
        let mut stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let (out, to_write) = crossbeam_channel::unbounded::<String>();
        std::thread::spawn(move || {
            for line in to_write {
                if writeln!(stdin, "{line}").and_then(|()| stdin.flush()).is_err() {
                    break;
                }
            }
        });
        let (tx, incoming) = crossbeam_channel::unbounded();
        std::thread::spawn(move || {
            for line in stdout.lines() {
                let Ok(line) = line else { break };
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("stdout carried a non-JSON line {line:?}: {e}"));
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        Client::with(out, incoming)
    }

    /// Connects to `ws://ADDR`, with `Authorization: Bearer TOKEN` if given.
    pub fn websocket(addr: &str, token: Option<&str>) -> Result<Client, tungstenite::Error> {
        let stream = TcpStream::connect(addr).map_err(tungstenite::Error::Io)?;
        let mut req = tungstenite::client::IntoClientRequest::into_client_request(format!("ws://{addr}/"))?;
        if let Some(t) = token {
            req.headers_mut().insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        let (mut socket, _) = tungstenite::client(req, stream).map_err(|e| match e {
            tungstenite::HandshakeError::Failure(e) => e,
            tungstenite::HandshakeError::Interrupted(_) => tungstenite::Error::ConnectionClosed,
        })?;
        socket.get_ref().set_read_timeout(Some(Duration::from_millis(5))).unwrap();
        let (out, to_write) = crossbeam_channel::unbounded::<String>();
        let (tx, incoming) = crossbeam_channel::unbounded();
        // One thread owns the socket: it writes what is queued, then reads for a moment.
        std::thread::spawn(move || {
            loop {
                loop {
                    match to_write.try_recv() {
                        Ok(text) => {
                            if socket.send(tungstenite::Message::text(text)).is_err() {
                                return;
                            }
                        }
                        Err(crossbeam_channel::TryRecvError::Empty) => break,
                        Err(crossbeam_channel::TryRecvError::Disconnected) => {
                            let _ = socket.close(None);
                            let _ = socket.flush();
                            return;
                        }
                    }
                }
                match socket.read() {
                    Ok(tungstenite::Message::Text(t)) => {
                        if tx.send(serde_json::from_str(t.as_str()).unwrap()).is_err() {
                            return;
                        }
                    }
                    Ok(tungstenite::Message::Close(_)) => return,
                    Ok(_) => {}
                    Err(tungstenite::Error::Io(e))
                        if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                    Err(_) => return,
                }
            }
        });
        Ok(Client::with(out, incoming))
    }

    pub fn send(&self, text: &str) {
        let _ = self.out.send(text.to_owned());
    }

    /// Sends a request with this id.
    pub fn request(&self, id: u64, method: &str, params: Value) {
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}).to_string());
    }

    /// A request and its reply (ids of its own).
    pub fn ask(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        self.request(id, method, params);
        let r = self.reply();
        assert_eq!(r["id"], id, "replies are matched by id: {r}");
        r
    }

    /// `initialize` with this host declaration; its reply.
    pub fn initialize(&mut self, host: Value) -> Value {
        self.ask("initialize", json!({"protocolVersion": 1, "clientInfo": {"name": "test"}, "host": host}))
    }

    /// The next message, `None` if the server closed the connection.
    pub fn next_message(&mut self) -> Option<Value> {
        match self.incoming.recv_timeout(PATIENCE) {
            Ok(v) => Some(v),
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => None,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => panic!("no message from isola within {PATIENCE:?}"),
        }
    }

    /// The next reply to one of our requests: events are kept, host requests answered.
    pub fn reply(&mut self) -> Value {
        loop {
            let msg = self.next_message().expect("the server closed the connection");
            if !self.take_other(&msg) {
                return msg;
            }
        }
    }

    /// Keeps an event, answers a host request: `true` if `msg` was one of those.
    fn take_other(&mut self, msg: &Value) -> bool {
        match msg.get("method").and_then(Value::as_str) {
            Some("event") | Some("cancel") => {
                self.events.push(msg.clone());
                true
            }
            Some("host") => {
                self.host_requests.push(msg.clone());
                if let Some(answer) = (self.host)(msg) {
                    self.send(&answer.to_string());
                }
                true
            }
            _ => false,
        }
    }

    /// [`take_other`](Self::take_other), for a test reading messages itself.
    pub fn take_other_for_test(&mut self, msg: &Value) -> bool {
        self.take_other(msg)
    }

    /// Replies (by id) until `n` have come, answering host requests meanwhile.
    pub fn replies(&mut self, n: usize) -> std::collections::HashMap<u64, Value> {
        let mut out = std::collections::HashMap::new();
        while out.len() < n {
            let r = self.reply();
            out.insert(r["id"].as_u64().unwrap_or(0), r);
        }
        out
    }

    /// Waits until the server closes the connection; the messages meanwhile.
    pub fn until_closed(&mut self) -> Vec<Value> {
        let mut rest = Vec::new();
        while let Some(m) = self.next_message() {
            rest.push(m);
        }
        rest
    }

    /// Closes our side (end of stdin, or a WebSocket close).
    pub fn close(self) -> Receiver<Value> {
        self.incoming
    }
}

/// `isola serve DIR ARGS` with piped stdio.
pub fn serve(dir: &std::path::Path, extra: &[&str]) -> Child {
    serve_command(dir, extra).spawn().unwrap()
}

/// The command [`serve`] spawns, for a test that needs to change it first.
pub fn serve_command(dir: &std::path::Path, extra: &[&str]) -> std::process::Command {
    let mut cmd = crate::common::isola_command();
    cmd.arg("serve").arg(dir).args(extra).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd
}

/// `isola serve DIR --listen 127.0.0.1:0 ARGS`, and the address it listens on (read from
/// its stderr).
pub fn listen(dir: &std::path::Path, extra: &[&str]) -> (Child, String) {
    let mut child = serve(dir, &[&["--listen", "127.0.0.1:0"], extra].concat());
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let (tx, rx) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        let mut sent = false;
        for line in stderr.lines().map_while(Result::ok) {
            if !sent && let Some(addr) = line.strip_prefix("isola: listening on ws://") {
                let _ = tx.send(addr.to_owned());
                sent = true;
            }
        }
    });
    let addr = rx.recv_timeout(PATIENCE).expect("isola serve --listen said where it listens");
    (child, addr)
}

/// Waits for `child` to exit, at most [`PATIENCE`].
pub fn wait(child: &mut Child) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(start.elapsed() < PATIENCE, "isola did not exit");
        std::thread::sleep(Duration::from_millis(10));
    }
}
