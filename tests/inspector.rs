//! The debugger: `isola dev --inspect` driven by a real Chrome DevTools Protocol client over
//! WebSocket, as Chrome DevTools or VS Code would drive it.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::PluginDir;
use common::dev::DevProcess;
use isola::{ErrorCode, Manager};
use serde_json::{Value, json};

/// `isola dev DIR --inspect=127.0.0.1:0` (or `--inspect-brk`), and the address it serves.
struct Dev {
    dev: DevProcess,
    addr: String,
}

impl std::ops::Deref for Dev {
    type Target = DevProcess;
    fn deref(&self) -> &DevProcess {
        &self.dev
    }
}

impl std::ops::DerefMut for Dev {
    fn deref_mut(&mut self) -> &mut DevProcess {
        &mut self.dev
    }
}

impl Dev {
    fn start(dir: &std::path::Path, flag: &str, extra: &[&str]) -> Dev {
        let flag = format!("{flag}=127.0.0.1:0");
        let mut args = vec![flag.as_str()];
        args.extend(extra);
        let dev = DevProcess::start(dir, &args);
        let line = dev.wait_for("debugger listening on http://");
        let addr = line.split("http://").nth(1).unwrap().split('/').next().unwrap().to_owned();
        Dev { dev, addr }
    }

    fn get(&self, path: &str, host: &str) -> (String, String) {
        let mut s = TcpStream::connect(&self.addr).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        (head.lines().next().unwrap().to_owned(), body.to_owned())
    }

    /// The `/json/list` entry of `plugin`.
    fn target(&self, plugin: &str) -> Value {
        let (status, body) = self.get("/json/list", &self.addr);
        assert!(status.contains("200"), "{status}");
        let list: Vec<Value> = serde_json::from_str(&body).unwrap();
        list.into_iter().find(|t| t["id"] == plugin).unwrap_or_else(|| panic!("no target {plugin}: {body}"))
    }
}

/// A minimal CDP client: numbered requests, events kept until asked for.
struct Cdp {
    ws: tungstenite::WebSocket<TcpStream>,
    next: u64,
    events: Vec<Value>,
}

impl Cdp {
    fn connect(url: &str) -> Cdp {
        let hostport = url.trim_start_matches("ws://").split('/').next().unwrap();
        let stream = TcpStream::connect(hostport).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let (ws, _) = tungstenite::client(url, stream).unwrap();
        Cdp { ws, next: 1, events: Vec::new() }
    }

    /// Connected to `target` (a `/json/list` entry), with the runtime and debugger enabled.
    fn attach(target: &Value) -> Cdp {
        let mut cdp = Cdp::connect(target["webSocketDebuggerUrl"].as_str().unwrap());
        cdp.call("Runtime.enable", json!({}));
        cdp.call("Debugger.enable", json!({}));
        cdp
    }

    fn read(&mut self) -> Value {
        loop {
            match self.ws.read().expect("the inspector stopped answering") {
                tungstenite::Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
                tungstenite::Message::Close(_) => panic!("the inspector closed the connection"),
                _ => {}
            }
        }
    }

    fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next;
        self.next += 1;
        let msg = json!({"id": id, "method": method, "params": params});
        self.ws.send(tungstenite::Message::text(msg.to_string())).unwrap();
        loop {
            let m = self.read();
            if m["id"] == id {
                assert!(m.get("error").is_none(), "{method} failed: {m}");
                return m["result"].clone();
            }
            self.events.push(m);
        }
    }

    fn event(&mut self, method: &str) -> Value {
        if let Some(i) = self.events.iter().position(|e| e["method"] == method) {
            return self.events.remove(i)["params"].clone();
        }
        loop {
            let m = self.read();
            if m["method"] == method {
                return m["params"].clone();
            }
            self.events.push(m);
        }
    }
}

#[test]
fn a_breakpoint_pauses_a_hook_and_locals_can_be_read_past_the_time_limit() {
    let dir = PluginDir::new();
    let path = dir.module(
        "p",
        "export default {\n  sum(n) {\n    let total = 0;\n    for (let i = 1; i <= n; i++) total += i;\n    const doubled = total * 2;\n    return doubled;\n  },\n};\n",
    );
    // A 300 ms time limit: the pause below lasts longer, and must not count.
    let mut dev = Dev::start(dir.path(), "--inspect", &["--timeout", "300"]);
    dev.wait_for("watching");
    let target = dev.target("p");
    let url = format!("file://{}", path.canonicalize().unwrap().join("main.js").display());
    assert_eq!(target["url"], url.as_str());
    assert_eq!(target["type"], "node");
    let mut cdp = Cdp::attach(&target);
    // Line 5 (0-based 4): `const doubled = total * 2;`
    let bp = cdp.call("Debugger.setBreakpointByUrl", json!({"url": url, "lineNumber": 4}));
    assert!(bp["breakpointId"].is_string(), "{bp}");
    dev.type_line("p.sum(4)");
    let paused = cdp.event("Debugger.paused");
    let frame = &paused["callFrames"][0];
    assert_eq!(frame["location"]["lineNumber"], 4, "{paused}");
    assert_eq!(frame["functionName"], "sum");
    let total = cdp.call(
        "Debugger.evaluateOnCallFrame",
        json!({"callFrameId": frame["callFrameId"], "expression": "total + ':' + n"}),
    );
    assert_eq!(total["result"]["value"], "10:4", "{total}");
    std::thread::sleep(Duration::from_millis(700));
    cdp.call("Debugger.resume", json!({}));
    cdp.event("Debugger.resumed");
    dev.wait_line("20");

    // Once resumed, the time limit is back: a loop is still stopped at 300 ms.
    std::fs::write(path.join("main.js"), "export default { spin() { while (true) {} } };\n").unwrap();
    dev.wait_for("[reloaded] p");
    dev.type_line("p.spin()");
    dev.wait_for("TIMEOUT");
}

#[test]
fn a_debugger_statement_in_typescript_pauses_with_a_source_map_for_the_ts_lines() {
    let dir = PluginDir::new();
    let manifest = json!({"id": "t", "name": "t", "version": "1.0.0", "apiVersion": 1, "main": "main.ts"});
    dir.write("t/plugin.json", &manifest.to_string());
    dir.write(
        "t/main.ts",
        "interface Input { a: number; b: number }\nexport default {\n  add({ a, b }: Input): number {\n    const sum: number = a + b;\n    debugger;\n    return sum;\n  },\n};\n",
    );
    let mut dev = Dev::start(dir.path(), "--inspect", &[]);
    dev.wait_for("watching");
    let target = dev.target("t");
    assert!(target["url"].as_str().unwrap().ends_with("/t/main.ts"), "{target}");
    let mut cdp = Cdp::attach(&target);
    // The script V8 runs is the transpiled one; its inline source map is what lets DevTools
    // show and break in the .ts text.
    let parsed = loop {
        let p = cdp.event("Debugger.scriptParsed");
        if p["url"].as_str().unwrap_or("").ends_with("main.ts") {
            break p;
        }
    };
    let map_url = parsed["sourceMapURL"].as_str().unwrap();
    let b64 = map_url.strip_prefix("data:application/json;base64,").unwrap_or_else(|| panic!("{map_url}"));
    let map = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b64).unwrap();
    let map: Value = serde_json::from_slice(&map).unwrap();
    assert!(map["sources"][0].as_str().unwrap().ends_with("main.ts"), "{map}");
    assert!(map["sourcesContent"][0].as_str().unwrap().contains("interface Input"), "{map}");
    dev.type_line("t.add({\"a\": 2, \"b\": 5})");
    let paused = cdp.event("Debugger.paused");
    let frame = &paused["callFrames"][0];
    let sum =
        cdp.call("Debugger.evaluateOnCallFrame", json!({"callFrameId": frame["callFrameId"], "expression": "sum"}));
    assert_eq!(sum["result"]["value"], 7);
    cdp.call("Debugger.resume", json!({}));
    dev.wait_line("7");
}

#[test]
fn a_pause_after_an_await_does_not_count_against_the_time_limit() {
    let dir = PluginDir::new();
    dir.module(
        "a",
        "export default {\n  async later(n) {\n    await new Promise((r) => setTimeout(r, 5));\n    const x = n * 2;\n    debugger;\n    await new Promise((r) => setTimeout(r, 5));\n    return x;\n  },\n  async forever() { await new Promise(() => setTimeout(() => {}, 60000)); },\n};\n",
    );
    let mut dev = Dev::start(dir.path(), "--inspect", &["--timeout", "300"]);
    dev.wait_for("watching");
    let target = dev.target("a");
    let mut cdp = Cdp::attach(&target);
    dev.type_line("a.later(21)");
    let paused = cdp.event("Debugger.paused");
    let frame = &paused["callFrames"][0];
    let x = cdp.call("Debugger.evaluateOnCallFrame", json!({"callFrameId": frame["callFrameId"], "expression": "x"}));
    assert_eq!(x["result"]["value"], 42);
    std::thread::sleep(Duration::from_millis(700));
    cdp.call("Debugger.resume", json!({}));
    dev.wait_line("42");
    // An await that never ends is still stopped at the limit.
    dev.type_line("a.forever()");
    dev.wait_for("TIMEOUT");
}

#[test]
fn inspect_brk_waits_for_a_debugger_and_pauses_before_the_first_line() {
    let dir = PluginDir::new();
    dir.module("b", "globalThis.started = Date.now();\nexport default { v() { return globalThis.started > 0; } };\n");
    let dev = Dev::start(dir.path(), "--inspect-brk", &[]);
    // Nothing is loaded before a debugger comes.
    std::thread::sleep(Duration::from_millis(300));
    assert!(dev.lines.try_iter().all(|l| !l.contains("watching")), "loaded without waiting");
    let target = dev.target("b");
    let mut cdp = Cdp::attach(&target);
    cdp.call("Runtime.runIfWaitingForDebugger", json!({}));
    let paused = cdp.event("Debugger.paused");
    let frame = &paused["callFrames"][0];
    // A paused module frame names its script by id: the plugin's entry.
    let script = frame["location"]["scriptId"].clone();
    let parsed =
        cdp.events.iter().find(|e| e["method"] == "Debugger.scriptParsed" && e["params"]["scriptId"] == script);
    let url = parsed.map(|e| e["params"]["url"].as_str().unwrap_or("").to_owned()).unwrap_or_default();
    assert!(url.ends_with("/b/main.js"), "paused in script {script} ({url}): {paused}");
    assert_eq!(frame["location"]["lineNumber"], 0, "{paused}");
    // Not run yet: paused before the first statement.
    let started = cdp.call(
        "Debugger.evaluateOnCallFrame",
        json!({"callFrameId": frame["callFrameId"], "expression": "typeof globalThis.started"}),
    );
    assert_eq!(started["result"]["value"], "undefined");
    cdp.call("Debugger.resume", json!({}));
    dev.wait_for("watching");
}

#[test]
fn the_debugger_refuses_foreign_host_names() {
    let dir = PluginDir::new();
    dir.module("p", "export default { v() { return 1; } };");
    let dev = Dev::start(dir.path(), "--inspect", &[]);
    dev.wait_for("watching");
    let (status, _) = dev.get("/json/list", "evil.example.com");
    assert!(status.contains("403"), "{status}");
    let (status, body) = dev.get("/json/version", "localhost");
    assert!(status.contains("200") && body.contains("isola/"), "{status} {body}");
    // The WebSocket path holds a token only /json/list tells (which a web page cannot read):
    // the plugin id alone does not reach the debugger.
    let target = dev.target("p");
    let url = target["webSocketDebuggerUrl"].as_str().unwrap();
    assert!(url.len() > format!("ws://{}/ws/p", dev.addr).len() + 16, "{url}");
    let stream = TcpStream::connect(&dev.addr).unwrap();
    let guessed = tungstenite::client(format!("ws://{}/ws/p", dev.addr), stream);
    assert!(guessed.is_err(), "a guessed path reached the debugger");
}

#[test]
fn without_an_inspector_debugger_statements_do_nothing_and_sessions_are_refused() {
    let dir = PluginDir::new();
    let path = dir.module("p", "export default { v() { debugger; return 1; } };");
    let manager = Manager::new(isola::Engine::builder().call_timeout(Duration::from_secs(2)).build());
    let h = manager.load(path).unwrap();
    assert_eq!(h.call_blocking::<_, u32>("v", ()).unwrap(), 1);
    let e = h.inspect().err().expect("no inspector without InspectMode::On");
    assert_eq!(e.code, ErrorCode::InvalidArgs);
    assert!(h.inspect_url().is_none());
}

#[test]
fn library_sessions_reach_the_plugin_and_end_with_its_isolate() {
    let dir = PluginDir::new();
    let path = dir.module("p", "export const answer = 42;\nexport default { v() { return answer; } };");
    let engine = isola::Engine::builder().inspect(isola::engine::InspectMode::On).build();
    let manager = Manager::new(engine);
    let h = manager.load(&path).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut s = h.inspect().unwrap();
        assert!(s.send(r#"{"id":1,"method":"Runtime.evaluate","params":{"expression":"6 * 7","returnByValue":true}}"#));
        let reply: Value = serde_json::from_str(&s.recv().await.unwrap()).unwrap();
        assert_eq!(reply["result"]["result"]["value"], 42, "{reply}");
        // Calls go on while a session is attached.
        assert_eq!(h.call::<_, u32>("v", ()).await.unwrap(), 42);
        manager.reload("p").unwrap();
        // The old isolate is gone: its session ends; a new one reaches the new isolate.
        let ended = tokio::time::timeout(Duration::from_secs(10), async { while s.recv().await.is_some() {} }).await;
        assert!(ended.is_ok(), "the session outlived its isolate");
        let mut s = h.inspect().unwrap();
        s.send(r#"{"id":2,"method":"Runtime.evaluate","params":{"expression":"1 + 1","returnByValue":true}}"#);
        let reply: Value = serde_json::from_str(&s.recv().await.unwrap()).unwrap();
        assert_eq!(reply["result"]["result"]["value"], 2, "{reply}");
    });
}

#[test]
fn with_an_inspector_a_top_level_await_that_never_settles_still_times_out() {
    let dir = PluginDir::new();
    let path = dir.module("p", "await new Promise(() => setTimeout(() => {}, 60000));\nexport default {};\n");
    let engine = isola::Engine::builder()
        .inspect(isola::engine::InspectMode::On)
        .load_timeout(Duration::from_millis(300))
        .build();
    let e = Manager::new(engine).load(path).unwrap_err();
    assert_eq!(e.code, ErrorCode::Timeout, "{e}");
}
