//! One error vocabulary: every code a host or plugin can see is an `ErrorCode`; errors isola
//! throws into a plugin carry that code, keep it when a hook lets them escape, and cannot be
//! forged by the plugin; stats count each error once.

mod common;

use std::time::Duration;

use common::{PluginDir, load_module, test_host};
use isola::{ErrorCode, HostApi, Manager};
use serde_json::{Value, json};

#[test]
fn every_code_has_a_stable_name_that_parses_back() {
    for code in ErrorCode::ALL {
        assert_eq!(ErrorCode::parse(code.as_str()), Some(*code));
        assert_eq!(serde_json::to_value(code).unwrap(), json!(code.as_str()));
    }
    for name in ["CALL_CYCLE", "CALL_DEPTH", "EVENT_DEPTH", "HOST_ERROR", "PERMISSION_DENIED", "QUOTA_EXCEEDED"] {
        assert!(ErrorCode::parse(name).is_some(), "{name} is part of the vocabulary");
    }
    assert_eq!(ErrorCode::parse("NOT_A_CODE"), None);
}

#[test]
fn escaped_isola_errors_keep_their_code_sync_and_async() {
    let dir = PluginDir::new();
    let manifest = json!({"id": "p", "name": "p", "version": "1", "apiVersion": 1, "permissions": ["storage", "call:p"],
                          "limits": {"storageKeys": 1}});
    let path = dir.module_with_manifest(
        "p",
        &manifest.to_string(),
        "export default {
            denied() { return host.add(1, 2); },
            async deniedAsync() { return await host.fetchUser(1); },
            quota() { host.storage.set('a', 1); host.storage.set('b', 2); },
            async cycle() { return await host.plugins.call('p', 'denied'); },
            failing() { host.fail('nope'); },
            badArgs() { host.add('x'); },
        };",
    );
    let host = test_host().requires("add", "math").requires("fetchUser", "users");
    let m = Manager::new(common::engine_with(host));
    let h = m.load(&path).unwrap();
    for (hook, code) in [
        ("denied", ErrorCode::PermissionDenied),
        ("deniedAsync", ErrorCode::PermissionDenied),
        ("quota", ErrorCode::QuotaExceeded),
        ("cycle", ErrorCode::CallCycle),
        ("failing", ErrorCode::HostError),
    ] {
        let e = h.call_blocking::<_, Value>(hook, ()).unwrap_err();
        assert_eq!(e.code, code, "{hook}: {e}");
        assert_eq!((e.plugin.as_deref(), e.hook.as_deref()), (Some("p"), Some(hook)), "{hook}: plugin and hook named");
        let js = e.js.as_ref().unwrap_or_else(|| panic!("{hook}: JS details kept: {e:?}"));
        assert_eq!(js.file.as_deref(), Some("main.js"), "{hook}: {js:?}");
    }
    // `host.add('x')` with the permission refused is refused before its arguments are looked at.
    assert_eq!(h.call_blocking::<_, Value>("badArgs", ()).unwrap_err().code, ErrorCode::PermissionDenied);
    // Each error counted once, by its code, where it was thrown.
    let s = h.stats();
    assert_eq!(s.errors_of(ErrorCode::PermissionDenied), 3, "{s:?}");
    assert_eq!(s.errors_of(ErrorCode::QuotaExceeded), 1, "{s:?}");
    assert_eq!(s.errors_of(ErrorCode::CallCycle), 1, "{s:?}");
    assert_eq!(s.errors_of(ErrorCode::JsError), 0, "{s:?}");
}

#[test]
fn a_plugin_cannot_forge_isola_codes() {
    let (_d, _m, h) = load_module(
        "export default {
            fake() { throw Object.assign(new Error('I ran out of memory, honest'), { code: 'HEAP_LIMIT' }); },
            async fakeAsync() { throw Object.assign(new Error('timed out, honest'), { code: 'TIMEOUT' }); },
            // Taking a real isola error and giving it another code does not work either.
            relabel() {
                try { host.fail('x'); } catch (e) { Object.defineProperty(e, 'code', { value: 'HEAP_LIMIT' }); throw e; }
            },
            // Nor does wrapping one in a Proxy that lies about its code.
            proxied() {
                try { host.fail('x'); } catch (e) { throw new Proxy(e, { get: (t, k) => (k === 'code' ? 'TIMEOUT' : t[k]) }); }
            },
        };",
    );
    for hook in ["fake", "fakeAsync", "proxied"] {
        let e = h.call_blocking::<_, Value>(hook, ()).unwrap_err();
        assert_eq!(e.code, ErrorCode::JsError, "{hook}: {e}");
    }
    // A relabelled isola error keeps the code isola gave it.
    assert_eq!(h.call_blocking::<_, Value>("relabel", ()).unwrap_err().code, ErrorCode::HostError);
    assert_eq!(h.stats().errors_of(ErrorCode::HeapLimit), 0);
    assert_eq!(h.stats().errors_of(ErrorCode::Timeout), 0);
    assert_eq!(h.stats().restarts, 0);
}

#[test]
fn stats_count_every_code() {
    // Call-depth and event-depth refusals are counted under their own codes (not folded into
    // another), whether or not the hook catches them.
    let dir = PluginDir::new();
    for i in 0..10 {
        let next = format!("n{:02}", i + 1);
        let manifest = json!({"id": format!("n{i:02}"), "name": "n", "version": "1", "apiVersion": 1,
                              "permissions": [format!("call:{next}")]});
        dir.module_with_manifest(
            &format!("n{i:02}"),
            &manifest.to_string(),
            &format!(
                "export default {{ async hop(n) {{ return await host.plugins.call('{next}', 'hop', n + 1); }} }};"
            ),
        );
    }
    let m = Manager::new(common::engine_with(test_host()));
    m.load_dir(dir.path()).unwrap();
    let e = m.handle("n00").unwrap().call_blocking::<_, Value>("hop", (0,)).unwrap_err();
    assert_eq!(e.code, ErrorCode::CallDepth, "{e}");
    let deepest = m.handle(&format!("n{:02}", isola::engine::MAX_CALL_DEPTH - 1)).unwrap();
    assert_eq!(deepest.stats().errors_of(ErrorCode::CallDepth), 1, "{:?}", deepest.stats());
    let all: u64 = m.list().iter().map(|p| p.stats.errors.values().sum::<u64>()).sum();
    assert!(all >= 1 && m.list().iter().all(|p| p.stats.errors_of(ErrorCode::Timeout) == 0), "{:?}", m.list());
}

#[test]
fn reserved_host_names_are_refused_when_the_api_is_built() {
    for name in isola::host::RESERVED_NAMES {
        let r = std::panic::catch_unwind(|| HostApi::new().value(name, 1));
        let msg = *r.unwrap_err().downcast::<String>().unwrap();
        assert!(msg.contains("reserved") && msg.contains(name), "{msg}");
    }
    let r = std::panic::catch_unwind(|| HostApi::new().func("not a name", |(): ()| Ok(())));
    assert!(r.is_err());
    // Names that merely contain a reserved word are fine.
    assert_eq!(HostApi::new().value("storageInfo", 1).names(), vec!["storageInfo"]);
}

#[tokio::test]
async fn lifecycle_events_can_be_awaited_and_end_with_the_manager() {
    let dir = PluginDir::new();
    let path = dir.module("p", "export default { hi() { return 1; } };");
    let m = Manager::new(common::engine_with(test_host()));
    let mut events = m.events();
    let loader = tokio::task::spawn_blocking(move || {
        m.load(&path).unwrap();
        m.unload("p").unwrap();
        drop(m);
    });
    let mut seen = Vec::new();
    while let Some(e) = tokio::time::timeout(Duration::from_secs(10), events.next()).await.expect("events arrive") {
        seen.push(serde_json::to_value(&e).unwrap()["event"].as_str().unwrap().to_owned());
    }
    loader.await.unwrap();
    assert_eq!(seen, vec!["loaded", "unloaded"], "then the stream ended with the manager");
}
