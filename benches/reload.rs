//! Hot reload and `isola serve` benchmarks: how long from saving a file to the new version
//! answering, and what a JSON-RPC round trip through the sidecar costs.
//!
//! Run with `cargo bench --bench reload`.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use isola::{Engine, HostApi, Manager};

fn write_version(dir: &std::path::Path, v: u64) {
    std::fs::write(dir.join("live/main.js"), format!("export default {{ v() {{ return {v}; }} }};")).unwrap();
}

fn setup() -> (tempfile::TempDir, Manager) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("live")).unwrap();
    std::fs::write(dir.path().join("live/plugin.json"), r#"{"id":"live","name":"l","version":"1.0.0","apiVersion":1}"#)
        .unwrap();
    write_version(dir.path(), 0);
    let manager = Manager::new(Engine::new(HostApi::new()));
    manager.load_dir(dir.path()).unwrap();
    (dir, manager)
}

fn reload_latency(c: &mut Criterion) {
    let (dir, manager) = setup();
    let h = manager.handle("live").unwrap();
    let mut version = 0;
    let mut g = c.benchmark_group("reload");
    g.sample_size(20);
    g.bench_function("Manager::reload (no watcher, no debounce)", |b| {
        b.iter(|| {
            version += 1;
            write_version(dir.path(), version);
            manager.reload("live").unwrap();
            assert_eq!(h.call_blocking::<_, u64>("v", ()).unwrap(), version);
        })
    });
    manager.watch(dir.path()).unwrap();
    g.bench_function(format!("file write -> new version answering (watcher, {} ms debounce)", 40), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                version += 1;
                let t = Instant::now();
                write_version(dir.path(), version);
                while h.call_blocking::<_, u64>("v", ()).unwrap() != version {
                    std::thread::sleep(Duration::from_micros(200));
                }
                total += t.elapsed();
                // Let the watcher settle so one edit's events do not bleed into the next.
                std::thread::sleep(Duration::from_millis(60));
            }
            total
        })
    });
    g.finish();
}

/// One connection to `isola serve`: a message out, the next message in.
trait Wire {
    fn send(&mut self, text: &str);
    fn recv(&mut self) -> String;
}

struct Pipes {
    stdin: std::process::ChildStdin,
    stdout: BufReader<std::process::ChildStdout>,
}

impl Wire for Pipes {
    fn send(&mut self, text: &str) {
        writeln!(self.stdin, "{text}").unwrap();
        self.stdin.flush().unwrap();
    }
    fn recv(&mut self) -> String {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        line
    }
}

impl Wire for tungstenite::WebSocket<std::net::TcpStream> {
    fn send(&mut self, text: &str) {
        tungstenite::WebSocket::send(self, tungstenite::Message::text(text)).unwrap();
    }
    fn recv(&mut self) -> String {
        loop {
            if let tungstenite::Message::Text(t) = self.read().unwrap() {
                return t.as_str().to_owned();
            }
        }
    }
}

/// The next reply: events skipped, `host` requests answered with their first argument.
fn next_reply(w: &mut dyn Wire) -> String {
    loop {
        let line = w.recv();
        if line.contains("\"method\":\"event\"") {
            continue;
        }
        if line.contains("\"method\":\"host\"") {
            let req: serde_json::Value = serde_json::from_str(&line).unwrap();
            let reply = serde_json::json!({"jsonrpc": "2.0", "id": req["id"], "result": req["params"]["args"][0]});
            w.send(&reply.to_string());
            continue;
        }
        return line;
    }
}

const INIT: &str = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":1,"host":{"functions":[{"name":"echo"}]}}}"#;
const CALL: &str = r#"{"jsonrpc":"2.0","id":1,"method":"call","params":{"plugin":"rt","hook":"v"}}"#;
const HOST_CALL: &str = r#"{"jsonrpc":"2.0","id":2,"method":"call","params":{"plugin":"rt","hook":"h"}}"#;

fn serve_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("rt")).unwrap();
    std::fs::write(dir.path().join("rt/plugin.json"), r#"{"id":"rt","name":"rt","version":"1.0.0","apiVersion":1}"#)
        .unwrap();
    std::fs::write(
        dir.path().join("rt/main.js"),
        "export default { v() { return 1; }, async h() { return await host.echo(2); } };",
    )
    .unwrap();
    dir
}

fn serve_round_trip(c: &mut Criterion) {
    let dir = serve_dir();
    let spawn = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_isola"))
            .arg("serve")
            .arg(dir.path())
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut child = spawn(&[]);
    let mut stdio = Pipes { stdin: child.stdin.take().unwrap(), stdout: BufReader::new(child.stdout.take().unwrap()) };
    let mut ws_child = spawn(&["--listen", "127.0.0.1:0"]);
    let mut err = BufReader::new(ws_child.stderr.take().unwrap());
    let addr = loop {
        let mut line = String::new();
        assert!(err.read_line(&mut line).unwrap() > 0, "isola serve --listen did not start");
        if let Some(a) = line.trim().strip_prefix("isola: listening on ws://") {
            break a.to_owned();
        }
    };
    let stream = std::net::TcpStream::connect(&addr).unwrap();
    stream.set_nodelay(true).unwrap();
    let (mut ws, _) = tungstenite::client(format!("ws://{addr}/"), stream).unwrap();

    let mut g = c.benchmark_group("serve");
    for (name, wire) in [("stdio", &mut stdio as &mut dyn Wire), ("websocket", &mut ws as &mut dyn Wire)] {
        wire.send(INIT);
        next_reply(wire);
        g.bench_function(format!("{name}: hook call round trip"), |b| {
            b.iter(|| {
                wire.send(CALL);
                next_reply(wire);
            })
        });
        g.bench_function(format!("{name}: hook calling a client host function, round trip"), |b| {
            b.iter(|| {
                wire.send(HOST_CALL);
                let r = next_reply(wire);
                debug_assert!(r.contains("\"result\":2"), "{r}");
            })
        });
    }
    const N: u64 = 1000;
    g.throughput(Throughput::Elements(N));
    g.bench_function("stdio: 1000 calls in flight", |b| {
        let batch: String = (0..N).map(|_| format!("{CALL}\n")).collect();
        b.iter(|| {
            stdio.stdin.write_all(batch.as_bytes()).unwrap();
            stdio.stdin.flush().unwrap();
            for _ in 0..N {
                next_reply(&mut stdio);
            }
        })
    });
    g.finish();
    drop(stdio);
    child.wait().unwrap();
    let _ = ws.close(None);
    ws_child.kill().unwrap();
    ws_child.wait().unwrap();
}

fn chain_of_ten(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..10 {
        let p = dir.path().join(format!("link{i}"));
        std::fs::create_dir_all(&p).unwrap();
        std::fs::write(
            p.join("plugin.json"),
            format!(r#"{{"id":"link{i}","name":"l","version":"1.0.0","apiVersion":1,"events":{{"msg":"on"}}}}"#),
        )
        .unwrap();
        std::fs::write(
            p.join("main.js"),
            "export default { on(m) { return { payload: { ...m, hops: m.hops + 1 } }; } };",
        )
        .unwrap();
    }
    let manager = Manager::new(Engine::new(HostApi::new()));
    manager.load_dir(dir.path()).unwrap();
    let mut g = c.benchmark_group("events");
    g.bench_function("dispatch through a chain of 10 plugins", |b| {
        b.iter(|| {
            let r = manager.dispatch_blocking("msg", serde_json::json!({"text": "hi", "hops": 0})).unwrap();
            assert_eq!(r.payload["hops"], 10);
        })
    });
    g.bench_function("emit (notify) to 10 plugins", |b| {
        b.iter(|| {
            assert_eq!(manager.emit_blocking("msg", serde_json::json!({"hops": 0})).unwrap().deliveries.len(), 10)
        })
    });
    g.finish();
}

criterion_group!(benches, reload_latency, serve_round_trip, chain_of_ten);
criterion_main!(benches);
