//! `isola serve`: JSON-RPC 2.0 over stdio, driven as a child process.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use common::PluginDir;
use serde_json::{Value, json};

struct Server {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Server {
    fn start(dir: &std::path::Path, extra: &[&str]) -> Server {
        let mut child = common::isola_command()
            .arg("serve")
            .arg(dir)
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Server { child, stdin, stdout }
    }

    fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    fn request(&mut self, id: u64, method: &str, params: Value) {
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}).to_string());
    }

    /// The next message that is not an event notification.
    fn reply(&mut self) -> Value {
        loop {
            let msg = self.next_message();
            if msg.get("method") != Some(&json!("event")) {
                return msg;
            }
        }
    }

    fn next_message(&mut self) -> Value {
        let mut line = String::new();
        assert!(self.stdout.read_line(&mut line).unwrap() > 0, "server closed stdout");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("stdout carried a non-JSON line {line:?}: {e}"))
    }

    fn close_stdin_and_wait(mut self) -> (Vec<Value>, std::process::ExitStatus) {
        drop(self.stdin.take());
        let mut rest = Vec::new();
        let mut line = String::new();
        while self.stdout.read_line(&mut line).unwrap() > 0 {
            rest.push(serde_json::from_str(&line).unwrap());
            line.clear();
        }
        let status = self.child.wait().unwrap();
        (rest, status)
    }
}

fn plugins() -> PluginDir {
    let dir = PluginDir::new();
    dir.module_with_manifest(
        "slow",
        &json!({"id": "slow", "name": "slow", "version": "1.0.0", "apiVersion": 1, "permissions": ["users"]}).to_string(),
        "export default { async nap(ms) { await host.fetchUser(1); const end = Date.now() + ms; while (Date.now() < end) {} return ms; } };",
    );
    dir.module("fast", "export default { echo(x) { return x; }, boom() { throw new RangeError('nope'); } };");
    dir
}

#[test]
fn answers_calls_and_matches_out_of_order_replies_by_id() {
    let dir = plugins();
    let mut s = Server::start(dir.path(), &[]);
    // A slow call first, then fast ones on another plugin: the fast answers overtake it.
    s.request(1, "call", json!({"plugin": "slow", "hook": "nap", "args": [400]}));
    for id in 2..=6 {
        s.request(id, "call", json!({"plugin": "fast", "hook": "echo", "args": [id * 10]}));
    }
    let mut answers = HashMap::new();
    let mut order = Vec::new();
    for _ in 0..6 {
        let r = s.reply();
        let id = r["id"].as_u64().unwrap();
        order.push(id);
        answers.insert(id, r);
    }
    assert_eq!(answers[&1]["result"], 400);
    for id in 2..=6 {
        assert_eq!(answers[&id]["result"], id * 10);
        assert_eq!(answers[&id]["jsonrpc"], "2.0");
    }
    assert_ne!(order[0], 1, "the slow answer should not come first: {order:?}");
    let (_, status) = s.close_stdin_and_wait();
    assert!(status.success());
}

#[test]
fn isola_errors_carry_their_code_in_data() {
    let dir = plugins();
    let mut s = Server::start(dir.path(), &[]);
    s.request(1, "call", json!({"plugin": "fast", "hook": "boom"}));
    let r = s.reply();
    assert_eq!(r["id"], 1);
    assert_eq!(r["error"]["code"], -32000);
    assert_eq!(r["error"]["data"]["code"], "JS_ERROR");
    assert_eq!(r["error"]["data"]["js"]["name"], "RangeError");
    assert_eq!(r["error"]["data"]["js"]["file"], "main.js");
    s.request(2, "call", json!({"plugin": "ghost", "hook": "x"}));
    assert_eq!(s.reply()["error"]["data"]["code"], "PLUGIN_NOT_FOUND");
    s.request(3, "call", json!({"plugin": "slow", "hook": "nap", "args": [5000], "timeoutMs": 50}));
    assert_eq!(s.reply()["error"]["data"]["code"], "TIMEOUT");
}

#[test]
fn protocol_errors_get_standard_codes_and_the_server_keeps_serving() {
    let dir = plugins();
    let mut s = Server::start(dir.path(), &[]);
    s.send("this is not json");
    let r = s.reply();
    assert_eq!((r["id"].clone(), r["error"]["code"].clone()), (Value::Null, json!(-32700)));
    s.send(r#"{"id": 7, "method": "call"}"#);
    assert_eq!(s.reply()["error"]["code"], -32600, "missing jsonrpc version");
    s.send(r#"{"jsonrpc": "2.0", "id": 8, "method": 5}"#);
    assert_eq!(s.reply()["error"]["code"], -32600);
    s.request(9, "frobnicate", json!({}));
    let r = s.reply();
    assert_eq!((r["id"].clone(), r["error"]["code"].clone()), (json!(9), json!(-32601)));
    s.request(10, "call", json!({"plugin": "fast"}));
    assert_eq!(s.reply()["error"]["code"], -32602);
    s.request(11, "call", json!({"plugin": "fast", "hook": "echo", "args": "not an array"}));
    assert_eq!(s.reply()["error"]["code"], -32602);
    // A notification (no id) gets no answer; the next request does.
    s.send(r#"{"jsonrpc": "2.0", "method": "call", "params": {"plugin": "fast", "hook": "echo", "args": [1]}}"#);
    s.request(12, "call", json!({"plugin": "fast", "hook": "echo", "args": ["still here"]}));
    let r = s.reply();
    assert_eq!((r["id"].clone(), r["result"].clone()), (json!(12), json!("still here")));
}

#[test]
fn list_stats_and_reload() {
    let dir = plugins();
    let mut s = Server::start(dir.path(), &[]);
    s.request(1, "list", Value::Null);
    let r = s.reply();
    let ids: Vec<&str> = r["result"].as_array().unwrap().iter().map(|p| p["id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec!["fast", "slow"]);
    s.request(2, "call", json!({"plugin": "fast", "hook": "echo", "args": [1]}));
    s.reply();
    s.request(3, "stats", Value::Null);
    assert_eq!(s.reply()["result"]["fast"]["calls"], 1);
    std::fs::write(dir.path().join("fast/main.js"), "export default { echo(x) { return [x, 'v2']; } };").unwrap();
    s.request(4, "reload", json!({"plugin": "fast"}));
    assert_eq!(s.reply()["result"], true);
    s.request(5, "call", json!({"plugin": "fast", "hook": "echo", "args": [1]}));
    assert_eq!(s.reply()["result"], json!([1, "v2"]));
    s.request(6, "reload", json!({"plugin": "nope"}));
    assert_eq!(s.reply()["error"]["data"]["code"], "PLUGIN_NOT_FOUND");
}

#[test]
fn end_of_input_answers_what_is_in_flight_then_exits() {
    let dir = plugins();
    let mut s = Server::start(dir.path(), &[]);
    s.request(1, "call", json!({"plugin": "slow", "hook": "nap", "args": [200]}));
    let (rest, status) = s.close_stdin_and_wait();
    assert!(status.success());
    let answer = rest.iter().find(|m| m["id"] == 1).expect("in-flight call answered before exit");
    assert_eq!(answer["result"], 200);
}

#[test]
fn watch_sends_lifecycle_events_as_notifications() {
    let dir = plugins();
    let mut s = Server::start(dir.path(), &["--watch"]);
    s.request(1, "list", Value::Null);
    s.reply(); // loaded and watching
    std::thread::sleep(Duration::from_millis(100));
    std::fs::write(dir.path().join("fast/main.js"), "export default { echo(x) { return 'new'; } };").unwrap();
    let event = loop {
        let m = s.next_message();
        if m["method"] == "event" && m["params"]["event"] == "reloaded" {
            break m;
        }
    };
    assert_eq!(event["params"]["plugin"], "fast");
    assert!(event.get("id").is_none(), "notifications have no id");
    s.request(2, "call", json!({"plugin": "fast", "hook": "echo", "args": [1]}));
    assert_eq!(s.reply()["result"], "new");
}

#[test]
fn the_python_example_client_works() {
    let Ok(out) = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/python/isola_client.py"))
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/plugins"))
        .env("ISOLA", env!("CARGO_BIN_EXE_isola"))
        .output()
    else {
        eprintln!("python3 is not installed; skipping the Python client example");
        return;
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("Hello, Ada! App version:"), "{stdout}");
    assert!(stdout.contains("'Sunny in London', 'Sunny in Arlington', 'Sunny in Helsinki'"), "{stdout}");
    assert!(stdout.contains("error: HOOK_NOT_FOUND"), "{stdout}");
    assert!(stdout.contains("'event': 'loaded'"), "{stdout}");
}

#[test]
fn cancel_aborts_an_in_flight_call_and_unload_is_a_method() {
    let dir = plugins();
    let mut s = Server::start(dir.path(), &[]);
    s.request(1, "call", json!({"plugin": "slow", "hook": "nap", "args": [10_000]}));
    std::thread::sleep(Duration::from_millis(200));
    let started = std::time::Instant::now();
    // A notification (no id) naming the request to abort.
    s.send(&json!({"jsonrpc": "2.0", "method": "cancel", "params": {"id": 1}}).to_string());
    let r = s.reply();
    assert_eq!(r["id"], 1);
    assert_eq!(r["error"]["data"]["code"], "ABORTED", "{r}");
    assert!(started.elapsed() < Duration::from_secs(3), "cancel took {:?}", started.elapsed());
    // The plugin kept its isolate and answers again.
    s.request(2, "call", json!({"plugin": "slow", "hook": "nap", "args": [1]}));
    assert_eq!(s.reply()["result"], 1);
    // Cancelling something that is not in flight says so.
    s.request(3, "cancel", json!({"id": 99}));
    assert_eq!(s.reply()["result"], false);

    s.request(4, "unload", json!({"plugin": "fast"}));
    assert_eq!(s.reply()["result"], true);
    s.request(5, "call", json!({"plugin": "fast", "hook": "echo", "args": [1]}));
    let r = s.reply();
    assert_eq!(r["error"]["data"]["code"], "PLUGIN_NOT_FOUND", "{r}");
    let (_, status) = s.close_stdin_and_wait();
    assert!(status.success());
}
