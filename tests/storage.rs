//! `host.storage`: scoped, durable, with quotas.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;

use common::{PluginDir, test_host};
use isola::storage::{Storage, StorageQuota};
use isola::{Engine, ErrorCode, Manager, PluginHandle};
use serde_json::{Value, json};

const KV: &str = "export default {
    set(k, v) { host.storage.set(k, v); return true; },
    get(k) { return host.storage.get(k); },
    del(k) { return host.storage.delete(k); },
    list(p) { return host.storage.list(p); },
    trySet(k, v) { try { host.storage.set(k, v); return 'ok'; } catch (e) { return { code: e.code, message: e.message }; } },
    has() { return typeof host.storage; },
};";

fn manifest(id: &str, extra: Value) -> String {
    let mut m = json!({"id": id, "name": id, "version": "1.0.0", "apiVersion": 1, "permissions": ["storage"]});
    if let Value::Object(e) = extra {
        m.as_object_mut().unwrap().extend(e);
    }
    m.to_string()
}

fn engine(storage: Storage) -> Engine {
    common::builder().host(test_host()).storage(storage).build()
}

fn kv(m: &Manager, dir: &PluginDir, id: &str) -> PluginHandle {
    m.load(dir.module_with_manifest(id, &manifest(id, json!({})), KV)).unwrap()
}

/// Every behaviour test runs on both backends.
fn backends() -> Vec<(&'static str, Storage, Option<tempfile::TempDir>)> {
    let d = tempfile::tempdir().unwrap();
    vec![("memory", Storage::memory(), None), ("redb", Storage::in_dir(d.path()), Some(d))]
}

#[test]
fn get_set_delete_list() {
    for (name, storage, _keep) in backends() {
        let dir = PluginDir::new();
        let m = Manager::new(engine(storage));
        let h = kv(&m, &dir, "kv");
        assert_eq!(h.call_blocking::<_, Value>("get", ("missing",)).unwrap(), Value::Null, "{name}");
        h.call_blocking::<_, bool>("set", ("a:1", json!({"x": [1, 2]}))).unwrap();
        h.call_blocking::<_, bool>("set", ("a:2", "two")).unwrap();
        h.call_blocking::<_, bool>("set", ("b", 3)).unwrap();
        assert_eq!(h.call_blocking::<_, Value>("get", ("a:1",)).unwrap(), json!({"x": [1, 2]}), "{name}");
        assert_eq!(h.call_blocking::<_, Vec<String>>("list", ("a:",)).unwrap(), vec!["a:1", "a:2"], "{name}");
        assert_eq!(h.call_blocking::<_, Vec<String>>("list", ("",)).unwrap(), vec!["a:1", "a:2", "b"], "{name}");
        assert!(h.call_blocking::<_, bool>("del", ("a:1",)).unwrap());
        assert!(!h.call_blocking::<_, bool>("del", ("a:1",)).unwrap());
        assert_eq!(h.call_blocking::<_, Vec<String>>("list", ("a",)).unwrap(), vec!["a:2"], "{name}");
        let e = h.call_blocking::<_, Value>("set", ("", 1)).unwrap_err();
        assert!(e.message.contains("must not be empty"), "{name}: {e}");
        let e = h.call_blocking::<_, Value>("set", ("x".repeat(2000), 1)).unwrap_err();
        assert!(e.message.contains("at most 1024 bytes"), "{name}: {e}");
    }
}

#[test]
fn storage_needs_the_permission() {
    let dir = PluginDir::new();
    let m = Manager::new(engine(Storage::memory()));
    let h = m.load(dir.module("nostore", KV)).unwrap();
    assert_eq!(h.call_blocking::<_, String>("has", ()).unwrap(), "undefined");
    let h = kv(&m, &dir, "store");
    assert_eq!(h.call_blocking::<_, String>("has", ()).unwrap(), "object");
}

#[test]
fn plugins_cannot_reach_each_others_data_whatever_the_key() {
    for (name, storage, _keep) in backends() {
        let dir = PluginDir::new();
        let m = Manager::new(engine(storage));
        let a = kv(&m, &dir, "a");
        let ab = kv(&m, &dir, "ab");
        let evil = kv(&m, &dir, "evil");
        a.call_blocking::<_, bool>("set", ("secret", "a's secret")).unwrap();
        a.call_blocking::<_, bool>("set", ("bx", "a's bx")).unwrap();
        ab.call_blocking::<_, bool>("set", ("x", "ab's x")).unwrap();
        let tricks = [
            "secret",
            "../a/secret",
            "a/secret",
            "a:secret",
            "a\0secret",
            "a\u{1}secret",
            "/a/secret",
            "..",
            "a",
            "ab",
            "\u{202e}terces",
            "a%2Fsecret",
            "%00",
        ];
        for key in tricks {
            assert_eq!(evil.call_blocking::<_, Value>("get", (key,)).unwrap(), Value::Null, "{name}: {key:?}");
            evil.call_blocking::<_, bool>("set", (key, "evil")).unwrap();
        }
        // Nothing the evil plugin wrote landed in a's or ab's space, and lists stay scoped.
        assert_eq!(a.call_blocking::<_, Value>("get", ("secret",)).unwrap(), "a's secret", "{name}");
        assert_eq!(a.call_blocking::<_, Vec<String>>("list", ("",)).unwrap(), vec!["bx", "secret"], "{name}");
        assert_eq!(ab.call_blocking::<_, Vec<String>>("list", ("",)).unwrap(), vec!["x"], "{name}");
        assert_eq!(evil.call_blocking::<_, Vec<String>>("list", ("",)).unwrap().len(), tricks.len(), "{name}");
        // A prefix of another plugin's id lists nothing of it.
        assert_eq!(a.call_blocking::<_, Vec<String>>("list", ("x",)).unwrap(), Vec::<String>::new(), "{name}");
    }
}

fn quota_error(h: &PluginHandle, key: &str, value: Value) -> String {
    let v: Value = h.call_blocking("trySet", (key, value)).unwrap();
    assert_eq!(v["code"], "QUOTA_EXCEEDED", "{v}");
    v["message"].as_str().unwrap().to_owned()
}

#[test]
fn quotas_at_and_over_each_limit() {
    for (name, storage, _keep) in backends() {
        // Bytes are key + JSON text: key "k1" (2) + "\"…\"" (value + 2 quotes).
        let storage = storage.with_quota(StorageQuota { total_bytes: 100, value_bytes: 40, keys: 3 });
        let dir = PluginDir::new();
        let m = Manager::new(engine(storage));
        let h = kv(&m, &dir, "q");

        // Largest value: exactly 40 bytes of JSON is fine, 41 is not.
        assert_eq!(h.call_blocking::<_, Value>("trySet", ("k1", "x".repeat(38))).unwrap(), "ok", "{name}");
        let msg = quota_error(&h, "k1", json!("x".repeat(39)));
        assert!(msg.contains("value quota") && msg.contains("40"), "{name}: {msg}");
        assert_eq!(h.call_blocking::<_, String>("get", ("k1",)).unwrap().len(), 38, "{name}: nothing partial");

        // Number of keys: 3 fit, a 4th does not; overwriting an existing key still works.
        h.call_blocking::<_, bool>("set", ("k2", 1)).unwrap();
        h.call_blocking::<_, bool>("set", ("k3", 1)).unwrap();
        let msg = quota_error(&h, "k4", json!(1));
        assert!(msg.contains("key quota") && msg.contains('3'), "{name}: {msg}");
        assert_eq!(h.call_blocking::<_, Value>("get", ("k4",)).unwrap(), Value::Null, "{name}");
        h.call_blocking::<_, bool>("set", ("k2", 2)).unwrap();

        // Total bytes: k1 uses 42, k2 3, k3 3 = 48; growing k2 to 40 bytes of JSON makes 88
        // (fits), then k3 to 40 would make 125 (does not).
        h.call_blocking::<_, bool>("set", ("k2", "y".repeat(38))).unwrap();
        let msg = quota_error(&h, "k3", json!("z".repeat(38)));
        assert!(msg.contains("total storage quota") && msg.contains("100"), "{name}: {msg}");
        assert_eq!(h.call_blocking::<_, i64>("get", ("k3",)).unwrap(), 1, "{name}: nothing partial");
        // Deleting frees room.
        h.call_blocking::<_, bool>("del", ("k1",)).unwrap();
        h.call_blocking::<_, bool>("set", ("k3", "z".repeat(38))).unwrap();
        assert_eq!(h.stats().errors_of(ErrorCode::QuotaExceeded), 3, "{name}");
    }
}

#[test]
fn a_manifest_can_lower_the_quota() {
    let dir = PluginDir::new();
    let m = Manager::new(engine(Storage::memory()));
    let path = dir.module_with_manifest("small", &manifest("small", json!({"limits": {"storageKeys": 1}})), KV);
    let h = m.load(path).unwrap();
    h.call_blocking::<_, bool>("set", ("one", 1)).unwrap();
    assert!(quota_error(&h, "two", json!(2)).contains("at most 1 keys"));
}

#[test]
fn data_survives_reload_and_unload_and_is_removed_explicitly() {
    let d = tempfile::tempdir().unwrap();
    let dir = PluginDir::new();
    let m = Manager::new(engine(Storage::in_dir(d.path())));
    let h = kv(&m, &dir, "keep");
    h.call_blocking::<_, bool>("set", ("k", "v")).unwrap();
    m.reload("keep").unwrap();
    assert_eq!(h.call_blocking::<_, String>("get", ("k",)).unwrap(), "v");
    m.unload("keep").unwrap();
    let h = m.load(dir.path().join("keep")).unwrap();
    assert_eq!(h.call_blocking::<_, String>("get", ("k",)).unwrap(), "v");
    m.remove_data("keep").unwrap();
    assert_eq!(h.call_blocking::<_, Value>("get", ("k",)).unwrap(), Value::Null);
    assert_eq!(m.engine().storage().backend().usage("keep").unwrap().keys, 0);
}

#[test]
fn data_survives_a_process_restart() {
    let d = tempfile::tempdir().unwrap();
    let dir = PluginDir::new();
    dir.module_with_manifest("kv", &manifest("kv", json!({})), KV);
    {
        let m = Manager::new(engine(Storage::in_dir(d.path())));
        m.load_dir(dir.path()).unwrap();
        m.handle("kv").unwrap().call_blocking::<_, bool>("set", ("k", [1, 2, 3])).unwrap();
    }
    let m = Manager::new(engine(Storage::in_dir(d.path())));
    m.load_dir(dir.path()).unwrap();
    assert_eq!(m.handle("kv").unwrap().call_blocking::<_, Value>("get", ("k",)).unwrap(), json!([1, 2, 3]));
}

#[test]
fn an_acknowledged_write_survives_sigkill() {
    let data = tempfile::tempdir().unwrap();
    let dir = PluginDir::new();
    dir.module_with_manifest("kv", &manifest("kv", json!({})), KV);
    let serve = || {
        let mut child = common::isola_command()
            .args(["serve", dir.path().to_str().unwrap(), "--data-dir", data.path().to_str().unwrap()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let init = json!({"jsonrpc": "2.0", "id": "init", "method": "initialize", "params": {"protocolVersion": 1}});
        writeln!(child.stdin.as_mut().unwrap(), "{init}").unwrap();
        child
    };
    let call = |child: &mut std::process::Child,
                out: &mut BufReader<std::process::ChildStdout>,
                id: u64,
                args: Value,
                hook: &str| {
        let req = json!({"jsonrpc": "2.0", "id": id, "method": "call", "params": {"plugin": "kv", "hook": hook, "args": args}});
        writeln!(child.stdin.as_mut().unwrap(), "{req}").unwrap();
        loop {
            let mut line = String::new();
            assert!(out.read_line(&mut line).unwrap() > 0);
            let v: Value = serde_json::from_str(&line).unwrap();
            if v["id"] == id {
                return v;
            }
        }
    };
    let mut child = serve();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    for i in 0..20 {
        let r = call(&mut child, &mut out, i, json!([format!("k{i}"), i]), "set");
        assert_eq!(r["result"], true, "{r}");
    }
    child.kill().unwrap(); // SIGKILL: no chance to flush anything
    child.wait().unwrap();

    let mut child = serve();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    for i in 0..20 {
        let r = call(&mut child, &mut out, 100 + i, json!([format!("k{i}")]), "get");
        assert_eq!(r["result"], i, "write {i} was acknowledged, so it must survive");
    }
    drop(child.stdin.take());
    child.wait().unwrap();
}

#[test]
fn fifty_plugins_writing_at_once_do_not_corrupt_each_other() {
    let d = tempfile::tempdir().unwrap();
    let dir = PluginDir::new();
    for i in 0..50 {
        dir.module_with_manifest(&format!("w{i:02}"), &manifest(&format!("w{i:02}"), json!({})), KV);
    }
    let m = Manager::new(engine(Storage::in_dir(d.path())));
    assert_eq!(m.load_dir(dir.path()).unwrap().loaded.len(), 50);
    let handles: Vec<_> = m.ids().iter().map(|id| m.handle(id).unwrap()).collect();
    std::thread::scope(|s| {
        for h in &handles {
            s.spawn(move || {
                for k in 0..10 {
                    h.call_blocking::<_, bool>("set", (format!("k{k}"), format!("{}:{k}", h.id()))).unwrap();
                }
            });
        }
    });
    for h in &handles {
        let keys: Vec<String> = h.call_blocking("list", ("",)).unwrap();
        assert_eq!(keys.len(), 10, "{}", h.id());
        for k in 0..10 {
            assert_eq!(h.call_blocking::<_, String>("get", (format!("k{k}"),)).unwrap(), format!("{}:{k}", h.id()));
        }
        let usage = m.engine().storage().backend().usage(h.id()).unwrap();
        assert_eq!(usage.keys, 10);
    }
}

#[test]
fn cli_data_remove_deletes_a_plugins_data() {
    let data = tempfile::tempdir().unwrap();
    let dir = PluginDir::new();
    dir.module_with_manifest("kv", &manifest("kv", json!({})), KV);
    let isola = |args: &[&str]| common::isola_command().args(args).arg("--data-dir").arg(data.path()).output().unwrap();
    let d = dir.path().to_str().unwrap();
    assert!(isola(&["call", d, "kv", "set", "k", "\"v\""]).status.success());
    assert_eq!(String::from_utf8_lossy(&isola(&["call", d, "kv", "get", "k"]).stdout).trim(), "\"v\"");
    let out = isola(&["data", "remove", "kv"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&isola(&["call", d, "kv", "get", "k"]).stdout).trim(), "null");
}

/// A backend whose every write panics (a bug in someone's storage implementation).
struct PanickingBackend;

impl isola::storage::StorageBackend for PanickingBackend {
    fn get(&self, _: &str, _: &str) -> Result<Option<String>, isola::storage::StorageError> {
        Ok(None)
    }
    fn set(&self, _: &str, _: &str, _: &str, _: &StorageQuota) -> Result<(), isola::storage::StorageError> {
        panic!("the disk is on fire")
    }
    fn delete(&self, _: &str, _: &str) -> Result<bool, isola::storage::StorageError> {
        Ok(false)
    }
    fn list(&self, _: &str, _: &str) -> Result<Vec<String>, isola::storage::StorageError> {
        Ok(Vec::new())
    }
    fn usage(&self, _: &str) -> Result<isola::storage::Usage, isola::storage::StorageError> {
        Ok(Default::default())
    }
    fn remove_plugin(&self, _: &str) -> Result<(), isola::storage::StorageError> {
        Ok(())
    }
}

#[test]
fn a_panicking_backend_is_a_host_error_not_a_crash() {
    // Before the fix the panic unwound into V8, which aborts the process: run it in a child.
    common::in_child("a_panicking_backend_is_a_host_error_not_a_crash", || {
        let dir = PluginDir::new();
        let m = Manager::new(engine(Storage::new(PanickingBackend)));
        let h = kv(&m, &dir, "burnt");
        let v: Value = h.call_blocking("trySet", ("k", 1)).unwrap();
        assert_eq!(v["code"], "HOST_ERROR", "{v}");
        assert!(v["message"].as_str().unwrap().contains("the disk is on fire"), "{v}");
        // Uncaught, the hook fails with the same code; the plugin and the process live on.
        assert_eq!(h.call_blocking::<_, Value>("set", ("k", 1)).unwrap_err().code, ErrorCode::HostError);
        assert_eq!(h.call_blocking::<_, Value>("get", ("k",)).unwrap(), Value::Null);
    });
}

#[test]
fn keys_with_lone_surrogates_are_refused_never_merged() {
    for (name, storage, _keep) in backends() {
        let dir = PluginDir::new();
        let m = Manager::new(engine(storage));
        let plugin = dir.module_with_manifest(
            "s",
            &manifest("s", json!({})),
            "export default {
                refuse(k) { try { host.storage.set(k, 1); return 'stored'; } catch (e) { return [e.name, e.message]; } },
                pair() {
                    const out = [];
                    for (const k of ['\\ud800', '\\udc00', 'a\\udfffb']) {
                        try { host.storage.set(k, k.length); out.push('stored'); } catch (e) { out.push(e.name); }
                    }
                    host.storage.set('\\ufffd', 'replacement char');
                    return [out, host.storage.list(), host.storage.get('\\ufffd')];
                },
                get(k) { try { return host.storage.get(k); } catch (e) { return e.name; } },
            };",
        );
        let s = m.load(&plugin).unwrap();
        let v: Value = s.call_blocking("pair", ()).unwrap();
        assert_eq!(v[0], json!(["TypeError", "TypeError", "TypeError"]), "{name}: {v}");
        assert_eq!(v[1], json!(["\u{fffd}"]), "{name}: only the well-formed key was stored: {v}");
        assert_eq!(v[2], "replacement char", "{name}: {v}");
        let v: Value = s.call_blocking("refuse", ("\u{1F600}",)).unwrap();
        assert_eq!(v, "stored", "{name}: well-formed astral characters are fine");
        assert_eq!(s.call_blocking::<_, Value>("get", ()).unwrap(), "TypeError", "{name}: undefined key");
    }
}
