//! Events (notify and chains), commands, and plugin-to-plugin calls.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{PluginDir, test_host};
use isola::dispatch::Outcome;
use isola::{Engine, ErrorCode, Manager};
use serde_json::{Value, json};

/// A host with `host.mark(label)`, recording labels in order.
fn marking_engine() -> (Engine, Arc<Mutex<Vec<String>>>) {
    let marks = Arc::new(Mutex::new(Vec::new()));
    let m = marks.clone();
    let host = test_host().func("mark", move |(label,): (String,)| {
        m.lock().unwrap().push(label);
        Ok(())
    });
    (common::builder().host(host).build(), marks)
}

fn plugin(dir: &PluginDir, id: &str, extra: Value, code: &str) {
    let mut m = json!({"id": id, "name": id, "version": "1.0.0", "apiVersion": 1});
    m.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    dir.module_with_manifest(id, &m.to_string(), code);
}

/// A chain subscriber that appends its id to `payload.trail`.
fn appender(dir: &PluginDir, id: &str, priority: i64) {
    plugin(
        dir,
        id,
        json!({"events": {"chat": {"hook": "onChat", "priority": priority}}}),
        &format!(
            "export default {{ onChat(p) {{ return {{ payload: {{ ...p, trail: [...p.trail, '{id}'] }} }}; }} }};"
        ),
    );
}

#[test]
fn chains_run_by_priority_then_id_and_see_each_others_changes() {
    let dir = PluginDir::new();
    appender(&dir, "b", 0);
    appender(&dir, "a", 0);
    appender(&dir, "first", 10);
    appender(&dir, "last", -5);
    plugin(&dir, "quiet", json!({"events": {"chat": "onChat"}}), "export default { onChat(p) { } };");
    plugin(
        &dir,
        "other",
        json!({"events": {"other": "onChat"}}),
        "export default { onChat(p) { return { cancel: true }; } };",
    );
    let m = Manager::new(common::engine_with(test_host()));
    m.load_dir(dir.path()).unwrap();
    let r = m.dispatch_blocking("chat", json!({"text": "hi", "trail": []})).unwrap();
    assert_eq!(r.payload, json!({"text": "hi", "trail": ["first", "a", "b", "last"]}));
    assert!(!r.cancelled);
    let order: Vec<(&str, Outcome)> = r.deliveries.iter().map(|d| (d.plugin.as_str(), d.outcome)).collect();
    assert_eq!(
        order,
        vec![
            ("first", Outcome::Changed),
            ("a", Outcome::Changed),
            ("b", Outcome::Changed),
            ("quiet", Outcome::Unchanged),
            ("last", Outcome::Changed)
        ]
    );
    let r = m.dispatch_blocking("nobody-listens", json!(1)).unwrap();
    assert_eq!((r.payload, r.deliveries.len()), (json!(1), 0));
}

#[test]
fn cancel_stops_the_chain_and_names_who_cancelled() {
    let dir = PluginDir::new();
    appender(&dir, "early", 10);
    plugin(
        &dir,
        "censor",
        json!({"events": {"chat": {"hook": "onChat", "priority": 5}}}),
        "export default { onChat(p) { if (p.text.includes('spam')) return { cancel: true }; } };",
    );
    appender(&dir, "late", 0);
    let m = Manager::new(common::engine_with(test_host()));
    m.load_dir(dir.path()).unwrap();
    let r = m.dispatch_blocking("chat", json!({"text": "buy spam", "trail": []})).unwrap();
    assert!(r.cancelled);
    assert_eq!(r.cancelled_by.as_deref(), Some("censor"));
    assert_eq!(r.deliveries.len(), 2, "`late` never ran");
    assert_eq!(r.payload["trail"], json!(["early"]));
    let r = m.dispatch_blocking("chat", json!({"text": "hello", "trail": []})).unwrap();
    assert!(!r.cancelled);
    assert_eq!(r.payload["trail"], json!(["early", "late"]));
}

#[test]
fn failing_subscribers_are_skipped_and_reported() {
    let dir = PluginDir::new();
    appender(&dir, "a", 50);
    plugin(
        &dir,
        "thrower",
        json!({"events": {"chat": {"hook": "onChat", "priority": 40}}}),
        "export default { onChat() { throw new Error('broken'); } };",
    );
    plugin(
        &dir,
        "spinner",
        json!({"events": {"chat": {"hook": "onChat", "priority": 30}}, "limits": {"callTimeoutMs": 50}}),
        "export default { onChat() { while (true) {} } };",
    );
    plugin(
        &dir,
        "hog",
        json!({"events": {"chat": {"hook": "onChat", "priority": 20}}, "limits": {"heapMb": 16}}),
        "export default { onChat() { const k = []; while (true) k.push(new ArrayBuffer(1 << 20)); } };",
    );
    plugin(
        &dir,
        "weird",
        json!({"events": {"chat": {"hook": "onChat", "priority": 15}}}),
        "export default { onChat() { return 42; } };",
    );
    appender(&dir, "z", 10);
    let m = Manager::new(common::engine_with(test_host()));
    m.load_dir(dir.path()).unwrap();
    let r = m.dispatch_blocking("chat", json!({"trail": []})).unwrap();
    assert_eq!(r.payload["trail"], json!(["a", "z"]), "the failures changed nothing and stopped nothing");
    let failures: Vec<(&str, ErrorCode)> =
        r.deliveries.iter().filter_map(|d| d.error.as_ref().map(|e| (d.plugin.as_str(), e.code))).collect();
    assert_eq!(
        failures,
        vec![
            ("thrower", ErrorCode::JsError),
            ("spinner", ErrorCode::Timeout),
            ("hog", ErrorCode::HeapLimit),
            ("weird", ErrorCode::InvalidArgs)
        ]
    );
    // Notify reports the same way (results are not interpreted there, so `weird` is fine).
    let r = m.emit_blocking("chat", json!({"trail": []})).unwrap();
    assert_eq!(r.deliveries.len(), 6);
    let failed: Vec<&str> =
        r.deliveries.iter().filter(|d| d.outcome == Outcome::Failed).map(|d| d.plugin.as_str()).collect();
    assert_eq!(failed, vec!["thrower", "spinner", "hog"]);
}

#[test]
fn notify_runs_subscribers_in_parallel() {
    let (engine, marks) = marking_engine();
    let dir = PluginDir::new();
    let code = |id: &str| {
        format!(
            "export default {{ onTick(p, meta) {{ host.mark('{id}-start'); const end = Date.now() + 400; while (Date.now() < end) {{}} host.mark('{id}-end'); return meta.event; }} }};"
        )
    };
    plugin(&dir, "x", json!({"events": {"tick": "onTick"}}), &code("x"));
    plugin(&dir, "y", json!({"events": {"tick": "onTick"}}), &code("y"));
    let m = Manager::new(engine);
    m.load_dir(dir.path()).unwrap();
    let r = m.emit_blocking("tick", json!(null)).unwrap();
    assert!(r.deliveries.iter().all(|d| d.result == Some(json!("tick"))), "{r:?}");
    let marks = marks.lock().unwrap().clone();
    let pos = |l: &str| marks.iter().position(|m| m == l).unwrap();
    // Both started before either finished: they overlapped.
    assert!(pos("x-start") < pos("y-end") && pos("y-start") < pos("x-end"), "{marks:?}");
}

#[test]
fn plugins_echoing_events_stop_at_the_depth_limit() {
    let (engine, marks) = marking_engine();
    let dir = PluginDir::new();
    let echo = |me: &str, emits: &str| {
        format!(
            "export default {{ on(p) {{ host.mark('{me}'); try {{ host.events.emit('{emits}', p + 1); }} catch (e) {{ host.mark(e.code); }} }} }};"
        )
    };
    plugin(&dir, "ping", json!({"events": {"ping": "on"}, "permissions": ["events"]}), &echo("ping", "pong"));
    plugin(&dir, "pong", json!({"events": {"pong": "on"}, "permissions": ["events"]}), &echo("pong", "ping"));
    let m = Manager::new(engine);
    m.load_dir(dir.path()).unwrap();
    m.emit_blocking("ping", 0).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !marks.lock().unwrap().iter().any(|m| m == "EVENT_DEPTH") {
        assert!(Instant::now() < deadline, "the echo never hit the limit: {:?}", marks.lock().unwrap());
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(200));
    let marks = marks.lock().unwrap().clone();
    let hops = marks.iter().filter(|m| *m == "ping" || *m == "pong").count();
    assert_eq!(hops, 9, "one host emit plus 8 nested: {marks:?}");
}

#[test]
fn emitting_needs_the_events_permission() {
    let dir = PluginDir::new();
    plugin(&dir, "mute", json!({}), "export default { go() { return typeof host.events; } };");
    let m = Manager::new(common::engine_with(test_host()));
    m.load_dir(dir.path()).unwrap();
    assert_eq!(m.handle("mute").unwrap().call_blocking::<_, String>("go", ()).unwrap(), "undefined");
}

#[test]
fn plugins_hear_lifecycle_events() {
    let (engine, marks) = marking_engine();
    let dir = PluginDir::new();
    plugin(
        &dir,
        "watcher",
        json!({"events": {"plugin:loaded": "seen", "plugin:unloaded": "seen", "plugin:errored": "seen"}}),
        "export default { seen(e) { host.mark(`${e.event}:${e.plugin}`); } };",
    );
    let m = Manager::new(engine);
    m.load_dir(dir.path()).unwrap();
    m.load(dir.module("newcomer", "export default {};")).unwrap();
    m.load(dir.module("broken", "export default {")).unwrap_err();
    m.unload("newcomer").unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let got = marks.lock().unwrap().clone();
        if got.contains(&"loaded:newcomer".into())
            && got.contains(&"unloaded:newcomer".into())
            && got.contains(&"loadFailed:broken".into())
        {
            break;
        }
        assert!(Instant::now() < deadline, "{got:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn commands_are_listed_and_run_by_name() {
    let dir = PluginDir::new();
    plugin(
        &dir,
        "tools",
        json!({"commands": [{"id": "upper", "title": "Upper-case", "hook": "up"}, {"id": "count", "title": "Count", "hook": "n"}]}),
        "let n = 0; export default { up(s) { n++; return s.toUpperCase(); }, n() { return n; } };",
    );
    let m = Manager::new(common::engine_with(test_host()));
    m.load_dir(dir.path()).unwrap();
    let names: Vec<String> = m.commands().into_iter().map(|c| c.name).collect();
    assert_eq!(names, vec!["tools:upper", "tools:count"]);
    assert_eq!(m.run_command("tools:upper", ("shout",)).unwrap(), json!("SHOUT"));
    assert_eq!(m.run_command("tools:count", ()).unwrap(), json!(1));
    let e = m.run_command("tools:uper", ("x",)).unwrap_err();
    assert_eq!(e.code, ErrorCode::CommandNotFound);
    assert!(e.message.contains("did you mean tools:upper"), "{e}");
    let e = m.run_command("zzz:qqq", ()).unwrap_err();
    assert!(e.message.contains("tools:upper, tools:count"), "{e}");
}

#[test]
fn bad_event_and_command_declarations_are_manifest_errors() {
    let dir = PluginDir::new();
    plugin(
        &dir,
        "bad",
        json!({"events": {"ok": "fine", "x": {"priority": "high"}, "y": 7}, "commands": [{"id": "a:b", "title": "t", "hook": "h"}, {"title": "t"}]}),
        "export default {};",
    );
    let e = Manager::new(common::engine_with(test_host())).load(dir.path().join("bad")).unwrap_err();
    assert_eq!(e.code, ErrorCode::ManifestInvalid);
    let paths: Vec<&str> = e.diagnostics.iter().map(|d| d.path.as_str()).collect();
    for p in [
        "$.events.x.hook",
        "$.events.x.priority",
        "$.events.y",
        "$.commands[0].id",
        "$.commands[1].id",
        "$.commands[1].hook",
    ] {
        assert!(paths.contains(&p), "missing {p}: {paths:?}");
    }
}

fn caller_plugins(dir: &PluginDir) {
    plugin(
        dir,
        "a",
        json!({"permissions": ["call:b"], "limits": {"callTimeoutMs": 300}}),
        "export default {
            async viaB(x) { return await host.plugins.call('b', 'double', x); },
            async slow() { return await host.plugins.call('b', 'spin'); },
            async cycle() { return await host.plugins.call('b', 'backToA'); },
            async denied() { try { await host.plugins.call('c', 'x'); } catch (e) { return e.code; } },
            async missing() { try { await host.plugins.call('b', 'nope'); } catch (e) { return e.code; } },
            ping() { return 'pong from a'; },
        };",
    );
    plugin(
        dir,
        "b",
        json!({"permissions": ["call:*"]}),
        "export default {
            double(x) { return x * 2; },
            spin() { while (true) {} },
            async backToA() { try { return await host.plugins.call('a', 'ping'); } catch (e) { return { code: e.code, message: e.message }; } },
        };",
    );
    plugin(dir, "c", json!({}), "export default { x() { return 1; } };");
}

#[test]
fn plugins_call_each_other_with_permission() {
    let dir = PluginDir::new();
    caller_plugins(&dir);
    let m = Manager::new(common::engine_with(test_host()));
    m.load_dir(dir.path()).unwrap();
    let a = m.handle("a").unwrap();
    assert_eq!(a.call_blocking::<_, i64>("viaB", (21,)).unwrap(), 42);
    assert_eq!(a.call_blocking::<_, String>("denied", ()).unwrap(), "PERMISSION_DENIED");
    assert_eq!(a.call_blocking::<_, String>("missing", ()).unwrap(), "HOOK_NOT_FOUND");
}

#[test]
fn the_callers_deadline_bounds_the_callee() {
    let dir = PluginDir::new();
    caller_plugins(&dir);
    let m = Manager::new(common::engine_with(test_host()));
    m.load_dir(dir.path()).unwrap();
    let t = Instant::now();
    let e = m.handle("a").unwrap().call_blocking::<_, Value>("slow", ()).unwrap_err();
    // Caller and callee share one deadline: whichever notices first, it is a timeout.
    assert!(e.code == ErrorCode::Timeout || e.message.contains("TIMEOUT"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(2), "bounded by a's 300 ms: {:?}", t.elapsed());
    // b's spin was stopped by that deadline (not by b's own 5 s limit), and b is fine after.
    let b = m.handle("b").unwrap();
    assert_eq!(b.call_blocking::<_, i64>("double", (2,)).unwrap(), 4);
    assert!(t.elapsed() < Duration::from_secs(2), "b was busy until {:?}", t.elapsed());
    assert_eq!(b.stats().errors_of(ErrorCode::Timeout), 1);
}

#[test]
fn a_calling_b_calling_a_is_refused_not_deadlocked() {
    let dir = PluginDir::new();
    caller_plugins(&dir);
    let m = Manager::new(common::engine_with(test_host()));
    m.load_dir(dir.path()).unwrap();
    let t = Instant::now();
    let v: Value = m.handle("a").unwrap().call_blocking("cycle", ()).unwrap();
    assert_eq!(v["code"], "CALL_CYCLE", "{v}");
    assert!(v["message"].as_str().unwrap().contains("a → b → a"), "{v}");
    assert!(t.elapsed() < Duration::from_millis(250), "refused at once, not by a timeout: {:?}", t.elapsed());
}

#[test]
fn deep_call_chains_are_bounded() {
    let dir = PluginDir::new();
    for i in 0..12 {
        plugin(
            &dir,
            &format!("n{i:02}"),
            json!({"permissions": ["call:*"]}),
            &format!(
                "export default {{ async hop(d) {{ try {{ return await host.plugins.call('n{:02}', 'hop', d + 1); }} catch (e) {{ return {{ depth: d, code: e.code }}; }} }} }};",
                i + 1
            ),
        );
    }
    let m = Manager::new(common::engine_with(test_host()));
    m.load_dir(dir.path()).unwrap();
    let v: Value = m.handle("n00").unwrap().call_blocking("hop", (0,)).unwrap();
    assert_eq!(v, json!({"depth": 7, "code": "CALL_DEPTH"}));
}

#[test]
fn cli_emit_commands_and_command_calls() {
    let run = |args: &[&str]| common::isola_command().args(args).output().unwrap();
    let plugins = concat!(env!("CARGO_MANIFEST_DIR"), "/plugins");
    let o = run(&["emit", plugins, "chat", r#"{"user":"ada","text":"hello :)"}"#, "--chain"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("moderator.onChat: unchanged") && out.contains("rewriter.onChat: changed"), "{out}");
    assert!(out.contains("hello 🙂"), "{out}");
    let o = run(&["emit", plugins, "chat", r#"{"user":"bob","text":"cheap SPAM here"}"#, "--chain"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("cancelled by moderator") && !out.contains("chatlog"), "{out}");
    let o = run(&["emit", plugins, "chat", r#"{"user":"bob","text":"hi"}"#, "--json"]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["deliveries"].as_array().unwrap().len(), 3);

    let o = run(&["commands", plugins]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("greeter:hello") && out.contains("rewriter:preview") && out.contains("chatlog:count"),
        "{out}"
    );
    let o = run(&["call", plugins, "rewriter:preview", "I LOVE IT <3"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "\"i love it ❤️\"");
    let o = run(&["call", plugins, "rewriter:previw", "x", "--json"]);
    assert_eq!(o.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["error"]["code"], "COMMAND_NOT_FOUND");
}

#[test]
fn what_a_plugin_sends_to_others_is_bounded() {
    let dir = PluginDir::new();
    plugin(
        &dir,
        "flood",
        json!({"permissions": ["events", "call:*"]}),
        "export default {
            big() { try { host.events.emit('sink', 'x'.repeat(2 << 20)); return 'sent'; } catch (e) { return [e.code, e.message]; } },
            async bigCall() { try { await host.plugins.call('sink', 'on', 'x'.repeat(2 << 20)); return 'sent'; } catch (e) { return [e.code, e.message]; } },
            many() { try { for (let i = 0; i < 100000; i++) host.events.emit('sink', i); return 'all sent'; } catch (e) { return [e.code, e.message]; } },
        };",
    );
    plugin(
        &dir,
        "sink",
        json!({"events": {"sink": "on"}}),
        "export default { on() { const end = Date.now() + 5; while (Date.now() < end) {} } };",
    );
    let m = Manager::new(common::engine_with(test_host()));
    m.load_dir(dir.path()).unwrap();
    let h = m.handle("flood").unwrap();
    for hook in ["big", "bigCall"] {
        let v: Value = h.call_blocking(hook, ()).unwrap();
        assert_eq!(v[0], "INVALID_ARGS", "{hook}: {v}");
        assert!(v[1].as_str().unwrap().contains("at most 1048576"), "{v}");
    }
    let v: Value = h.call_blocking("many", ()).unwrap();
    assert_eq!(v[0], "BUSY", "{v}");
    assert!(v[1].as_str().unwrap().contains("already being delivered"), "{v}");
}

#[test]
fn cycles_across_separate_requests_are_refused_too() {
    // X → a → b while Y → b → a: each plugin's thread would wait on the other's.
    let dir = PluginDir::new();
    plugin(
        &dir,
        "a",
        json!({"permissions": ["call:b"]}),
        "export default { async start() { return await host.plugins.call('b', 'work'); }, async work() { await host.sleep(10); return 'a worked'; } };",
    );
    plugin(
        &dir,
        "b",
        json!({"permissions": ["call:a"]}),
        "export default {
            async start() { await host.sleep(100); try { return await host.plugins.call('a', 'work'); } catch (e) { return e.code; } },
            async work() { return 'b worked'; },
        };",
    );
    let m = Manager::new(common::engine_with(test_host()));
    m.load_dir(dir.path()).unwrap();
    let (a, b) = (m.handle("a").unwrap(), m.handle("b").unwrap());
    let t = Instant::now();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (from_b, from_a) = rt.block_on(async {
        let b_start = b.call::<_, String>("start", ());
        tokio::time::sleep(Duration::from_millis(20)).await;
        let a_start = a.call::<_, String>("start", ());
        (b_start.await.unwrap(), a_start.await.unwrap())
    });
    assert_eq!(from_b, "CALL_CYCLE");
    assert_eq!(from_a, "b worked");
    assert!(t.elapsed() < Duration::from_secs(2), "no one waited for a timeout: {:?}", t.elapsed());
}

#[test]
fn a_payload_that_cannot_be_serialised_fails_the_emit() {
    let (engine, marks) = marking_engine();
    let dir = PluginDir::new();
    plugin(&dir, "ear", json!({"events": {"e": "on"}}), "export default { on(p) { host.mark(JSON.stringify(p)); } };");
    let m = Manager::new(engine);
    m.load_dir(dir.path()).unwrap();
    // JSON object keys must be strings: this map has no JSON form.
    let bad: std::collections::HashMap<(i32, i32), i32> = [((1, 2), 3)].into_iter().collect();
    assert_eq!(m.emit_blocking("e", &bad).unwrap_err().code, ErrorCode::InvalidArgs);
    assert_eq!(m.dispatch_blocking("e", &bad).unwrap_err().code, ErrorCode::InvalidArgs);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let e = rt.block_on(m.emit("e", &bad)).unwrap_err();
    assert!(e.message.contains("cannot be serialised"), "{e}");
    assert!(marks.lock().unwrap().is_empty(), "nothing was delivered (not even a null): {:?}", marks.lock().unwrap());
    // A good payload still goes through.
    assert_eq!(m.emit_blocking("e", json!({"ok": 1})).unwrap().deliveries.len(), 1);
    assert_eq!(*marks.lock().unwrap(), vec![r#"{"ok":1}"#.to_string()]);
}

#[test]
fn background_deliveries_are_counted_per_subscriber() {
    // 100 subscribers: one emit is 100 deliveries, so the third emit in a row would pass the
    // bound of 256 deliveries in flight and is refused (counting emits, all 64 went out).
    let dir = PluginDir::new();
    plugin(
        &dir,
        "flood",
        json!({"permissions": ["events"]}),
        "export default { many() { let sent = 0; try { for (let i = 0; i < 64; i++) { host.events.emit('sink', i); sent++; } } catch (e) { return [sent, e.code]; } return [sent, null]; } };",
    );
    for i in 0..100 {
        plugin(
            &dir,
            &format!("s{i:03}"),
            json!({"events": {"sink": "on"}}),
            "export default { on() { const end = Date.now() + 20; while (Date.now() < end) {} } };",
        );
    }
    let m = Manager::new(common::engine_with(test_host()));
    let report = m.load_dir(dir.path()).unwrap();
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    let v: Value = m.handle("flood").unwrap().call_blocking("many", ()).unwrap();
    assert_eq!(v, json!([2, "BUSY"]), "{v}");
}

/// A chain hands each hop on from the subscriber that answered, so the cases where no answer
/// comes are its own: a subscriber stuck where it cannot be stopped (the watchdog settles its
/// hop), one unloaded before its turn (refused when the hop is sent), and a caller that stops
/// waiting (the chain ends where it is).
#[test]
fn a_chain_goes_past_a_subscriber_stuck_in_a_host_function() {
    // Blocks until the test is done with it, or 20 s (2 s in a plugin process, whose host
    // function runs in the host, where killing the process does not end it).
    let release = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let r2 = release.clone();
    let limit = Duration::from_secs(if common::process_mode() { 2 } else { 20 });
    let host = test_host().func("block", move |(): ()| {
        let t = Instant::now();
        while !r2.load(std::sync::atomic::Ordering::SeqCst) && t.elapsed() < limit {
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    });
    let dir = PluginDir::new();
    appender(&dir, "a", 50);
    plugin(
        &dir,
        "stuck",
        json!({"events": {"chat": {"hook": "onChat", "priority": 40}}, "limits": {"callTimeoutMs": 50}}),
        "export default { onChat() { host.block(); } };",
    );
    appender(&dir, "z", 10);
    let m = Manager::new(common::engine_with(host));
    m.load_dir(dir.path()).unwrap();
    let r = m.dispatch_blocking("chat", json!({"trail": []})).unwrap();
    assert_eq!(r.payload["trail"], json!(["a", "z"]), "{r:?}");
    let d = &r.deliveries[1];
    assert_eq!((d.plugin.as_str(), d.outcome), ("stuck", Outcome::Failed));
    let e = d.error.as_ref().unwrap();
    assert_eq!(e.code, ErrorCode::Timeout, "{e}");
    assert_eq!(e.plugin.as_deref(), Some("stuck"));
    if !common::process_mode() {
        // Settled by the watchdog while the host function still blocks, not by its answer.
        assert!(e.message.contains("stuck past the call's deadline"), "{e}");
    }
    // Stuck still (unresponsive): the next chain leaves it out. (A plugin process is killed
    // and started again instead, and is stuck again.)
    let r = m.dispatch_blocking("chat", json!({"trail": []})).unwrap();
    assert_eq!(r.payload["trail"], json!(["a", "z"]), "{r:?}");
    if !common::process_mode() {
        let ran: Vec<&str> = r.deliveries.iter().map(|d| d.plugin.as_str()).collect();
        assert_eq!(ran, ["a", "z"], "{r:?}");
    }
    release.store(true, std::sync::atomic::Ordering::SeqCst);
}

#[test]
fn a_subscriber_unloaded_before_its_turn_is_reported_and_the_chain_goes_on() {
    let dir = PluginDir::new();
    plugin(
        &dir,
        "slow",
        json!({"events": {"chat": {"hook": "onChat", "priority": 50}}}),
        "export default { onChat() { const end = Date.now() + 300; while (Date.now() < end) {} } };",
    );
    appender(&dir, "gone", 40);
    appender(&dir, "z", 10);
    let m = Arc::new(Manager::new(common::engine_with(test_host())));
    m.load_dir(dir.path()).unwrap();
    let unload = {
        let m = m.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            m.unload("gone").unwrap();
        })
    };
    let r = m.dispatch_blocking("chat", json!({"trail": []})).unwrap();
    unload.join().unwrap();
    assert_eq!(r.payload["trail"], json!(["z"]), "{r:?}");
    let outcomes: Vec<(&str, Outcome)> = r.deliveries.iter().map(|d| (d.plugin.as_str(), d.outcome)).collect();
    assert_eq!(outcomes, [("slow", Outcome::Unchanged), ("gone", Outcome::Failed), ("z", Outcome::Changed)]);
    let e = r.deliveries[1].error.as_ref().unwrap();
    assert_eq!(e.code, ErrorCode::ShutDown, "{e}");
    assert_eq!(e.plugin.as_deref(), Some("gone"));
}

#[test]
fn dropping_an_async_dispatch_ends_the_chain_where_it_is() {
    let (engine, marks) = marking_engine();
    let dir = PluginDir::new();
    plugin(
        &dir,
        "first",
        json!({"events": {"chat": {"hook": "onChat", "priority": 50}}}),
        "export default { onChat() { host.mark('first'); const end = Date.now() + 300; while (Date.now() < end) {} host.mark('first done'); } };",
    );
    plugin(
        &dir,
        "second",
        json!({"events": {"chat": {"hook": "onChat", "priority": 40}}}),
        "export default { onChat() { host.mark('second'); } };",
    );
    let m = Manager::new(engine);
    m.load_dir(dir.path()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let gave_up = rt.block_on(async {
        tokio::time::timeout(Duration::from_millis(100), m.dispatch("chat", json!({}))).await.is_err()
    });
    assert!(gave_up);
    // The running hook was aborted with its caller, and the next one never ran.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(*marks.lock().unwrap(), ["first"]);
    // The plugins are fine: a chain that is waited for runs them both.
    let r = m.dispatch_blocking("chat", json!({})).unwrap();
    assert_eq!(r.deliveries.len(), 2);
    assert_eq!(*marks.lock().unwrap(), ["first", "first", "first done", "second"]);
}

#[test]
fn a_hop_queued_behind_a_busy_subscriber_that_is_unloaded_is_reported_and_the_chain_goes_on() {
    let dir = PluginDir::new();
    appender(&dir, "a", 50);
    plugin(
        &dir,
        "busy",
        json!({"events": {"chat": {"hook": "onChat", "priority": 40}}}),
        "export default { spin() { const end = Date.now() + 400; while (Date.now() < end) {} return 'spun'; }, \
         onChat(p) { return { payload: { ...p, trail: [...p.trail, 'busy'] } }; } };",
    );
    appender(&dir, "z", 10);
    let m = Arc::new(Manager::new(common::engine_with(test_host())));
    m.load_dir(dir.path()).unwrap();
    // `busy` is in a long call when the chain reaches it: the hop waits in its mailbox.
    let busy = m.handle("busy").unwrap();
    let spinning = std::thread::spawn(move || busy.call_blocking::<_, String>("spin", ()));
    std::thread::sleep(Duration::from_millis(50));
    let chain = {
        let m = m.clone();
        std::thread::spawn(move || m.dispatch_blocking("chat", json!({"trail": []})).unwrap())
    };
    // Unloaded with the hop still queued (the chain went past `a` long before).
    std::thread::sleep(Duration::from_millis(100));
    m.unload("busy").unwrap();
    let r = chain.join().unwrap();
    assert_eq!(r.payload["trail"], json!(["a", "z"]), "{r:?}");
    let outcomes: Vec<(&str, Outcome)> = r.deliveries.iter().map(|d| (d.plugin.as_str(), d.outcome)).collect();
    assert_eq!(outcomes, [("a", Outcome::Changed), ("busy", Outcome::Failed), ("z", Outcome::Changed)]);
    let e = r.deliveries[1].error.as_ref().unwrap();
    assert_eq!(e.code, ErrorCode::ShutDown, "{e}");
    assert_eq!(e.plugin.as_deref(), Some("busy"));
    // The call it was busy with was interrupted by the unload.
    assert_eq!(spinning.join().unwrap().unwrap_err().code, ErrorCode::ShutDown);
}

#[test]
fn a_reload_moves_a_plugins_subscriptions_and_an_unload_ends_them() {
    let dir = PluginDir::new();
    appender(&dir, "a", 50);
    appender(&dir, "mover", 10);
    let m = Manager::new(common::engine_with(test_host()));
    m.load_dir(dir.path()).unwrap();
    let trail =
        |m: &Manager, event: &str| m.dispatch_blocking(event, json!({"trail": []})).unwrap().payload["trail"].clone();
    assert_eq!(trail(&m, "chat"), json!(["a", "mover"]));
    assert_eq!(trail(&m, "news"), json!([]));

    // The new version subscribes to `news` instead of `chat`.
    let manifest = json!({"id": "mover", "name": "mover", "version": "1.0.1", "apiVersion": 1,
        "events": {"news": {"hook": "onChat"}}});
    std::fs::write(dir.path().join("mover/plugin.json"), manifest.to_string()).unwrap();
    m.reload("mover").unwrap();
    assert_eq!(trail(&m, "chat"), json!(["a"]));
    assert_eq!(trail(&m, "news"), json!(["mover"]));

    // A failed reload keeps the running version and what it subscribes to.
    std::fs::write(dir.path().join("mover/main.js"), "export default {").unwrap();
    m.reload("mover").unwrap_err();
    assert_eq!(trail(&m, "news"), json!(["mover"]));

    m.unload("mover").unwrap();
    assert_eq!(trail(&m, "news"), json!([]));
    assert_eq!(trail(&m, "chat"), json!(["a"]));
}
