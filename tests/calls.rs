//! Calling hooks: results, JS errors, missing hooks, argument types, host functions, async.

mod common;

use common::{PluginDir, engine, load_module};
use isola::{ErrorCode, Manager};
use serde_json::{Value, json};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

#[test]
fn arguments_and_results_cross_through_serde() {
    let (_d, _m, h) = load_module(
        "export default {
            echo(...args) { return args; },
            none() {},
            obj(o) { return { sum: o.a + o.b, tags: o.tags.map((t) => t.toUpperCase()) }; },
        };",
    );
    let v: Value = h.call_blocking("echo", (1, "two", [3], json!({"four": 4}), Value::Null, true)).unwrap();
    assert_eq!(v, json!([1, "two", [3], {"four": 4}, null, true]));
    let v: Value = h.call_blocking("none", ()).unwrap();
    assert_eq!(v, Value::Null);
    #[derive(serde::Deserialize, Debug, PartialEq)]
    struct Out {
        sum: i64,
        tags: Vec<String>,
    }
    let out: Out = h.call_blocking("obj", (json!({"a": 1, "b": 2, "tags": ["x", "y"]}),)).unwrap();
    assert_eq!(out, Out { sum: 3, tags: vec!["X".into(), "Y".into()] });
}

#[test]
fn a_throwing_hook_is_js_error_with_stack_and_location() {
    let (_d, _m, h) = load_module(
        "function inner(x) {\n  throw new TypeError(`bad value ${x}`);\n}\nexport default {\n  boom(x) { return inner(x); },\n};\n",
    );
    let e = h.call_blocking::<_, Value>("boom", (7,)).unwrap_err();
    assert_eq!(e.code, ErrorCode::JsError);
    assert_eq!((e.plugin.as_deref(), e.hook.as_deref()), (Some("p"), Some("boom")));
    let js = e.js.as_ref().unwrap();
    assert_eq!(js.name, "TypeError");
    assert_eq!(js.message, "bad value 7");
    assert_eq!((js.file.as_deref(), js.line, js.column), (Some("main.js"), Some(2), Some(9)));
    let stack = js.stack.as_deref().unwrap();
    assert!(stack.contains("main.js:2:9") && stack.contains("main.js:5"), "{stack}");
    assert!(!stack.contains("file://"), "paths are relative to the plugin: {stack}");
    assert!(e.to_string().contains("p.boom") && e.to_string().contains("main.js:2:9"), "{e}");
    // The plugin still answers.
    assert!(h.call_blocking::<_, Value>("boom", (1,)).is_err());
}

#[test]
fn throwing_a_non_error_value_is_still_reported() {
    let (_d, _m, h) =
        load_module("export default { s() { throw 'plain string'; }, rej() { return Promise.reject(42); } };");
    let e = h.call_blocking::<_, Value>("s", ()).unwrap_err();
    assert_eq!(e.code, ErrorCode::JsError);
    assert!(e.to_string().contains("plain string"), "{e}");
    let e = h.call_blocking::<_, Value>("rej", ()).unwrap_err();
    assert_eq!(e.code, ErrorCode::JsError);
    assert!(e.to_string().contains("42"), "{e}");
}

#[test]
fn a_missing_hook_is_hook_not_found_listing_the_hooks() {
    let (_d, _m, h) = load_module("export default { a() {}, b() {} };");
    let e = h.call_blocking::<_, Value>("nope", ()).unwrap_err();
    assert_eq!(e.code, ErrorCode::HookNotFound);
    assert_eq!(e.hook.as_deref(), Some("nope"));
    assert!(e.message.contains("a, b"), "{e}");
}

#[test]
fn a_result_of_the_wrong_type_is_invalid_args() {
    let (_d, _m, h) = load_module(
        "export default { s() { return 'text'; }, big() { return 10n; }, cyc() { const o = {}; o.o = o; return o; } };",
    );
    let e = h.call_blocking::<_, u32>("s", ()).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidArgs);
    assert!(e.message.contains("expected"), "{e}");
    let e = h.call_blocking::<_, Value>("big", ()).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidArgs, "{e}");
    let e = h.call_blocking::<_, Value>("cyc", ()).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidArgs, "{e}");
}

#[test]
fn host_functions_with_wrong_argument_types_throw_a_catchable_type_error() {
    let (_d, _m, h) = load_module(
        "export default {
            ok() { return host.add(2, 3); },
            wrong() { try { host.add('two', {}); return 'no error'; } catch (e) { return [e.name, e.code, e.message]; } },
            symbol() { try { host.add(Symbol('s')); return 'no error'; } catch (e) { return e.name; } },
            bigint() { try { host.add(1n, 2n); return 'no error'; } catch (e) { return e.name; } },
        };",
    );
    assert_eq!(h.call_blocking::<_, f64>("ok", ()).unwrap(), 5.0);
    let v: Value = h.call_blocking("wrong", ()).unwrap();
    assert_eq!(v[0], "TypeError");
    assert_eq!(v[1], "INVALID_ARGS");
    assert!(v[2].as_str().unwrap().contains("invalid arguments"), "{v}");
    // Values JSON cannot carry never reach Rust: the plugin gets a TypeError, the host lives.
    assert_eq!(h.call_blocking::<_, String>("bigint", ()).unwrap(), "TypeError");
    let v: String = h.call_blocking("symbol", ()).unwrap();
    assert!(v == "TypeError" || v == "no error", "{v}");
}

/// Plain arguments (numbers, strings, booleans, null) cross to a sync host function as values,
/// anything else as JSON text. The host must not be able to tell which: it sees the same
/// `serde_json::Value`s, numbers included (integers as integers), and the plugin gets the same
/// results, objects made as `JSON.parse` makes them.
/// A hook returning a primitive skips `JSON.stringify` (`src/runtime/values.rs`): the host
/// must get exactly what the JSON path gives (the same value wrapped in an array always takes
/// that path), errors and the result size limit included.
#[test]
fn hook_results_are_the_same_on_the_plain_path_and_the_json_path() {
    let (_d, _m, h) = common::load_module_with(
        common::builder().max_result_bytes(1000).build(),
        r#"const values = [0, -0, 7, -7, 2.5, NaN, Infinity, -Infinity, 1e21, 2 ** 53, 2 ** 64, 2 ** 63,
                         -(2 ** 63), 2 ** 53 + 2, 1e-7, 'plain', 'é\n"\\', '✓ 𝄞', '', true, false, null, undefined,
                         '\ud800', new Number(3), new String('boxed'), 10n, Symbol('s')];
        export default {
            count() { return values.length; },
            one(i) { return values[i]; },
            wrapped(i) { return [values[i]]; },
            text(n, c) { return c.repeat(n); },
        };"#,
    );
    let n: usize = h.call_blocking("count", ()).unwrap();
    for i in 0..n {
        let one = h.call_blocking::<_, Value>("one", (i,));
        let wrapped = h.call_blocking::<_, Value>("wrapped", (i,));
        match (one, wrapped) {
            (Ok(v), Ok(w)) => assert_eq!(json!([v]), w, "value {i}"),
            (Err(e), Err(f)) => assert_eq!(e.code, f.code, "value {i}: {e} / {f}"),
            (one, wrapped) => panic!("value {i}: {one:?} against {wrapped:?}"),
        }
    }
    assert_eq!(h.call_blocking::<_, Value>("one", (1,)).unwrap(), json!(0));
    assert_eq!(h.call_blocking::<_, Value>("one", (16,)).unwrap(), json!("é\n\"\\"));
    assert_eq!(h.call_blocking::<_, Value>("one", (22,)).unwrap(), Value::Null);
    // The result limit counts JSON bytes on either path: 998 characters and quotes fit in
    // 1,000, 999 do not; escapes count as JSON spells them.
    assert_eq!(h.call_blocking::<_, String>("text", (998, "x")).unwrap().len(), 998);
    let e = h.call_blocking::<_, Value>("text", (999, "x")).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidArgs, "{e}");
    assert!(e.message.contains("1001 bytes as JSON; at most 1000"), "{e}");
    assert_eq!(h.call_blocking::<_, String>("text", (100, "\n")).unwrap(), "\n".repeat(100));
    let e = h.call_blocking::<_, Value>("text", (500, "\n")).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidArgs, "{e}");
}

#[test]
fn host_functions_see_the_same_values_on_the_plain_path_and_the_json_path() {
    let host = isola::HostApi::new()
        .func("text", |args: Vec<Value>| Ok(serde_json::to_string(&args)?))
        .func("count", |(n,): (u32,)| Ok(n + 1))
        .func("proto", |(): ()| Ok(json!({"__proto__": {"polluted": true}, "list": [1, "two", null], "big": u64::MAX})))
        .func("say", |(s,): (String,)| Ok(format!("{s}!")));
    let (_d, _m, h) = common::load_module_with(
        common::builder().host(host).max_result_bytes(1000).build(),
        r#"const values = [0, -0, 7, -7, 2.5, NaN, Infinity, -Infinity, 1e21, 2 ** 53, 2 ** 64, 2 ** 70,
                         2 ** 63, -(2 ** 63), -(2 ** 64), 2 ** 53 + 2, 1e-7, 'é ✓ 𝄞 "\\\n', '', true, false, null, undefined];
        export default {
            plain() { return values.map((v) => host.text(v)); },
            // A trailing object sends the whole list as JSON text.
            json() { return values.map((v) => host.text(v, {})); },
            count(v) { try { return host.count(v); } catch (e) { return [e.name, e.code]; } },
            proto() {
                const r = host.proto();
                return [Object.keys(r), Object.getPrototypeOf(r) === Object.prototype, r.big, {}.polluted ?? 'clean'];
            },
            say(s) { try { return host.say(s); } catch (e) { return [e.code, e.message]; } },
            lone() { try { return host.say('\ud800'); } catch (e) { return [e.name, e.code]; } },
        };"#,
    );
    let plain: Vec<String> = h.call_blocking("plain", ()).unwrap();
    let via_json: Vec<String> = h.call_blocking("json", ()).unwrap();
    let expected = [
        "[0]",
        "[0]",
        "[7]",
        "[-7]",
        "[2.5]",
        "[null]",
        "[null]",
        "[null]",
        "[1e+21]",
        "[9007199254740992]",
        "[1.8446744073709552e+19]",
        "[1.1805916207174113e+21]",
        "[9223372036854776000]",
        "[-9.223372036854776e+18]",
        "[-1.8446744073709552e+19]",
        "[9007199254740994]",
        "[1e-7]",
        "[\"é ✓ 𝄞 \\\"\\\\\\n\"]",
        "[\"\"]",
        "[true]",
        "[false]",
        "[null]",
        "[null]",
    ];
    assert_eq!(plain, expected);
    let stripped: Vec<String> = via_json.iter().map(|t| t.replace(",{}]", "]")).collect();
    assert_eq!(stripped, plain, "the JSON path gives the host the same values");
    // An integer fits a `u32` parameter on the plain path as it does through JSON.
    assert_eq!(h.call_blocking::<_, u32>("count", (41,)).unwrap(), 42);
    assert_eq!(h.call_blocking::<_, Value>("count", (4.5,)).unwrap(), json!(["TypeError", "INVALID_ARGS"]));
    assert_eq!(h.call_blocking::<_, Value>("count", (-1,)).unwrap(), json!(["TypeError", "INVALID_ARGS"]));
    // Objects come back as JSON.parse makes them: `__proto__` an own key, no prototype set.
    let v: Value = h.call_blocking("proto", ()).unwrap();
    assert_eq!(v, json!([["__proto__", "list", "big"], true, 18446744073709552000.0, "clean"]));
    // The argument size limit holds on the plain path too (1,000 bytes here, as JSON).
    assert_eq!(h.call_blocking::<_, String>("say", ("x".repeat(996),)).unwrap(), format!("{}!", "x".repeat(996)));
    let v: Value = h.call_blocking("say", ("x".repeat(997),)).unwrap();
    assert_eq!(v[0], "INVALID_ARGS");
    assert!(
        v[1].as_str().unwrap().contains("the argument list of host.say is 1001 bytes as JSON; at most 1000"),
        "{v}"
    );
    // Escapes count as JSON spells them: 499 newlines are 998 bytes of `\n`.
    let v: Value = h.call_blocking("say", ("\n".repeat(499),)).unwrap();
    assert_eq!(v[0], "INVALID_ARGS", "{v}");
    // A lone surrogate has no UTF-8 form: refused, as through JSON, not silently replaced.
    assert_eq!(h.call_blocking::<_, Value>("lone", ()).unwrap(), json!(["TypeError", "INVALID_ARGS"]));
}

#[test]
fn host_function_errors_are_catchable_js_errors() {
    let (_d, _m, h) = load_module(
        "export default {
            caught() { try { host.fail('x'); } catch (e) { return { name: e.name, code: e.code, message: e.message, isError: e instanceof Error }; } },
            uncaught() { host.fail('y'); },
            async asyncCaught() { try { await host.fetchUser(0); } catch (e) { return e.message; } },
        };",
    );
    let v: Value = h.call_blocking("caught", ()).unwrap();
    assert_eq!(v, json!({"name": "Error", "code": "HOST_ERROR", "message": "host says no: x", "isError": true}));
    // Let escape, it reaches the host with the code isola gave it, JS details kept.
    let e = h.call_blocking::<_, Value>("uncaught", ()).unwrap_err();
    assert_eq!(e.code, ErrorCode::HostError);
    assert!(e.message.contains("host says no: y"), "{e}");
    assert_eq!(e.js.as_ref().map(|js| js.name.as_str()), Some("Error"), "{e:?}");
    let msg: String = h.call_blocking("asyncCaught", ()).unwrap();
    assert_eq!(msg, "no user with id 0");
}

#[test]
fn async_hooks_await_async_host_functions() {
    let (_d, _m, h) = load_module(
        "export default {
            async user(id) { const u = await host.fetchUser(id); return u.name; },
            async many() { const us = await Promise.all([1, 2, 3].map((i) => host.fetchUser(i))); return us.map((u) => u.id); },
            async quick() { return 'no await needed'; },
        };",
    );
    assert_eq!(h.call_blocking::<_, String>("user", (7,)).unwrap(), "user7");
    assert_eq!(h.call_blocking::<_, Vec<u64>>("many", ()).unwrap(), vec![1, 2, 3]);
    assert_eq!(h.call_blocking::<_, String>("quick", ()).unwrap(), "no await needed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_calls_from_a_tokio_runtime() {
    let (_d, _m, h) = load_module(
        "export default { async user(id) { return (await host.fetchUser(id)).name; }, add(a, b) { return a + b; } };",
    );
    // Several calls in flight before any is awaited; answers come in order.
    let futs: Vec<_> = (1..=20).map(|i| h.call::<_, String>("user", (i,))).collect();
    for (i, f) in futs.into_iter().enumerate() {
        assert_eq!(f.await.unwrap(), format!("user{}", i + 1));
    }
    let sum: i64 = h.call("add", (2, 3)).await.unwrap();
    assert_eq!(sum, 5);
}

/// Async calls made one at a time watch briefly for their answer before sleeping (see
/// `src/async_spin.rs`): each still gets its own answer, whether it came within that watch or
/// long after, from a hook that fails or one whose isolate is lost.
#[tokio::test(flavor = "current_thread")]
async fn async_calls_one_at_a_time_get_their_own_answers_quick_or_slow() {
    let (_d, _m, h) = load_module(
        "let n = 0;
        export default {
            inc() { return ++n; },
            slow(ms) { const end = Date.now() + ms; while (Date.now() < end) {} return ++n; },
            fail() { throw new Error('nope'); },
            bomb() { const a = []; while (true) a.push(new Array(1e5).fill(1)); },
        };",
    );
    let mut expected = 0;
    for round in 0..40 {
        // Quick answers, then one that comes long after the watch gave up (it sleeps), then
        // quick ones again (which sleep at once for a while, then watch again).
        let hook = if round % 10 == 9 { "slow" } else { "inc" };
        expected += 1;
        let got: i64 =
            if hook == "slow" { h.call("slow", (3,)).await.unwrap() } else { h.call("inc", ()).await.unwrap() };
        assert_eq!(got, expected, "call {round} ({hook})");
    }
    let e = h.call::<_, Value>("fail", ()).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::JsError, "{e}");
    assert!(e.message.contains("nope"), "{e}");
    let e = h.call::<_, Value>("bomb", ()).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::HeapLimit, "{e}");
    // The plugin was restarted fresh: its state starts over, and quick calls answer again.
    for i in 1..=5 {
        assert_eq!(h.call::<_, i64>("inc", ()).await.unwrap(), i);
    }
}

#[test]
fn host_values_are_visible_and_frozen() {
    let (_d, _m, h) = load_module(
        "export default {
            read() { return host.config.nested.list; },
            mutate() { 'use strict'; try { host.config.version = 'x'; } catch (e) { return e.name; } return 'mutated'; },
            replace() { try { host.add = () => 0; } catch (e) {} return host.add(1, 1); },
            names() { return Object.keys(host).sort(); },
        };",
    );
    assert_eq!(h.call_blocking::<_, Value>("read", ()).unwrap(), json!([1, 2]));
    assert_eq!(h.call_blocking::<_, String>("mutate", ()).unwrap(), "TypeError");
    assert_eq!(h.call_blocking::<_, f64>("replace", ()).unwrap(), 2.0);
    assert_eq!(
        h.call_blocking::<_, Vec<String>>("names", ()).unwrap(),
        vec!["add", "config", "fail", "fetchUser", "log", "sleep"]
    );
}

#[test]
fn plugins_with_the_same_globals_do_not_see_each_other() {
    let dir = PluginDir::new();
    let code = "globalThis.shared = globalThis.shared ?? [];\nexport default { push(v) { globalThis.shared.push(v); return globalThis.shared; } };";
    dir.module("a", code);
    dir.module("b", code);
    let m = Manager::new(engine());
    m.load_dir(dir.path()).unwrap();
    let a = m.handle("a").unwrap();
    let b = m.handle("b").unwrap();
    assert_eq!(a.call_blocking::<_, Vec<i64>>("push", (1,)).unwrap(), vec![1]);
    assert_eq!(a.call_blocking::<_, Vec<i64>>("push", (2,)).unwrap(), vec![1, 2]);
    assert_eq!(b.call_blocking::<_, Vec<i64>>("push", (3,)).unwrap(), vec![3]);
}

#[test]
fn state_persists_between_calls_of_a_script_plugin() {
    let dir = PluginDir::new();
    let m = Manager::new(engine());
    let h = m.load(dir.script("count", "var n = 0; var plugin = { inc() { return ++n; } };")).unwrap();
    for i in 1..=5 {
        assert_eq!(h.call_blocking::<_, i64>("inc", ()).unwrap(), i);
    }
}

#[test]
fn the_sandbox_offers_nothing_but_host_and_console() {
    let (_d, _m, h) = load_module(
        "export default {
            probe() {
                return {
                    Deno: typeof Deno,
                    bootstrap: typeof __bootstrap,
                    require: typeof require,
                    process: typeof process,
                    fetch: typeof fetch,
                    WebAssembly: typeof WebAssembly,
                    setTimeout: typeof setTimeout,
                    XMLHttpRequest: typeof XMLHttpRequest,
                    host: typeof host,
                    console: typeof console.log,
                    globals: Object.getOwnPropertyNames(globalThis).filter((n) => /deno|ops|core/i.test(n)),
                };
            },
            ops() {
                // Reaching deno_core's op table through any path must fail.
                const tries = [
                    () => Deno.core.ops.op_print('x'),
                    () => globalThis.__bootstrap.core.ops,
                    () => host.log.constructor('return Deno')(),
                    () => (0, eval)('Deno.core'),
                ];
                return tries.map((t) => { try { t(); return 'reached'; } catch (e) { return e.name; } });
            },
        };",
    );
    let v: Value = h.call_blocking("probe", ()).unwrap();
    assert_eq!(
        v,
        json!({
            "Deno": "undefined", "bootstrap": "undefined", "require": "undefined", "process": "undefined",
            "fetch": "undefined", "WebAssembly": "object", "setTimeout": "function",
            "XMLHttpRequest": "undefined", "host": "object", "console": "function", "globals": []
        })
    );
    let v: Vec<String> = h.call_blocking("ops", ()).unwrap();
    assert!(v.iter().all(|r| r != "reached"), "{v:?}");
}

#[test]
fn console_output_does_not_break_anything() {
    let (_d, _m, h) = load_module(
        "export default { talk() { console.log('a', 1, {b: 2}); console.error(new Error('e')); console.warn(Symbol('s'), 10n); const o = {}; o.o = o; console.info(o); return 'ok'; } };",
    );
    assert_eq!(h.call_blocking::<_, String>("talk", ()).unwrap(), "ok");
}

#[test]
fn calls_on_an_unknown_plugin_are_plugin_not_found() {
    let m = Manager::new(engine());
    let e = m.handle("ghost").unwrap_err();
    assert_eq!(e.code, ErrorCode::PluginNotFound);
    assert_eq!(e.plugin.as_deref(), Some("ghost"));
}

#[test]
fn a_dropped_promise_that_rejects_does_not_fail_later_calls() {
    let (_d, _m, h) = load_module(
        "export default {
            drop() { Promise.reject(new Error('dropped')); host.fetchUser(0); return 'returned'; },
            async later() { return (await host.fetchUser(1)).name; },
        };",
    );
    assert_eq!(h.call_blocking::<_, String>("drop", ()).unwrap(), "returned");
    assert_eq!(h.call_blocking::<_, String>("later", ()).unwrap(), "user1");
    assert_eq!(h.call_blocking::<_, String>("later", ()).unwrap(), "user1");
}

#[test]
fn a_panicking_host_function_is_a_catchable_error_not_a_crash() {
    let host = common::test_host()
        .func("boom", |(s,): (String,)| -> anyhow::Result<()> { panic!("host bug on {s}") })
        .async_func("asyncBoom", |(): ()| async move {
            if true {
                panic!("async host bug");
            }
            Ok(())
        });
    let (_d, _m, h) = common::load_module_with(
        common::engine_with(host),
        "export default {
            sync() { try { host.boom('x'); } catch (e) { return [e.code, e.message]; } },
            async later() { try { await host.asyncBoom(); } catch (e) { return [e.code, e.message]; } },
        };",
    );
    let v: Value = h.call_blocking("sync", ()).unwrap();
    assert_eq!(v[0], "HOST_ERROR");
    assert!(v[1].as_str().unwrap().contains("host bug on x"), "{v}");
    let v: Value = h.call_blocking("later", ()).unwrap();
    assert!(v[1].as_str().unwrap().contains("async host bug"), "{v}");
}

#[test]
fn a_plugin_cannot_fake_a_timeout() {
    let (_d, _m, h) = load_module(
        "export default { fake() { throw 'execution terminated'; }, async fakeAsync() { await host.sleep(1); throw new Error('execution terminated'); } };",
    );
    for hook in ["fake", "fakeAsync"] {
        let e = h.call_blocking::<_, Value>(hook, ()).unwrap_err();
        assert_eq!(e.code, ErrorCode::JsError, "{hook}: {e}");
    }
}

#[test]
fn host_functions_know_which_plugin_called() {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (s1, s2) = (seen.clone(), seen.clone());
    let host = isola::HostApi::new()
        .func("whoami", move |(): ()| {
            let me = isola::current_plugin();
            s1.lock().unwrap().push(me.clone());
            Ok(me)
        })
        .async_func("whoamiLater", move |(): ()| {
            let s2 = s2.clone();
            async move {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                let me = isola::current_plugin();
                s2.lock().unwrap().push(me.clone());
                Ok(me)
            }
        });
    let dir = PluginDir::new();
    dir.module(
        "alpha",
        "export default { who() { return host.whoami(); }, async later() { return await host.whoamiLater(); } };",
    );
    dir.module(
        "beta",
        "export default { who() { return host.whoami(); }, async later() { return await host.whoamiLater(); } };",
    );
    let m = Manager::new(common::engine_with(host));
    m.load_dir(dir.path()).unwrap();
    for id in ["alpha", "beta"] {
        let h = m.handle(id).unwrap();
        assert_eq!(h.call_blocking::<_, String>("who", ()).unwrap(), id);
        assert_eq!(h.call_blocking::<_, String>("later", ()).unwrap(), id);
    }
    assert_eq!(isola::current_plugin(), None, "not inside a host function");
    assert_eq!(seen.lock().unwrap().len(), 4);
}

#[test]
fn an_async_host_function_with_a_timeout_throws_a_catchable_timeout() {
    let host = common::test_host()
        .async_func("hang", |(): ()| async move {
            std::future::pending::<()>().await;
            Ok(())
        })
        .timeout("hang", std::time::Duration::from_millis(100));
    let engine = common::builder().host(host).call_timeout(std::time::Duration::from_secs(10)).build();
    let (_d, _m, h) = common::load_module_with(
        engine,
        "export default { async ask() { try { await host.hang(); return 'answered'; } catch (e) { return [e.code, e.message]; } } };",
    );
    let started = std::time::Instant::now();
    let v: Value = h.call_blocking("ask", ()).unwrap();
    assert_eq!(v[0], "TIMEOUT", "{v}");
    assert!(v[1].as_str().unwrap().contains("host.hang took longer than its 100 ms limit"), "{v}");
    assert!(started.elapsed() < std::time::Duration::from_secs(3), "took {:?}", started.elapsed());
}

#[test]
#[should_panic(expected = "only async host functions can have a timeout")]
fn a_sync_host_function_cannot_have_a_timeout() {
    let _ = isola::HostApi::new().func("f", |(): ()| Ok(())).timeout("f", std::time::Duration::from_millis(1));
}

#[test]
fn a_host_error_gives_the_plugin_its_code_and_data_and_host_functions_know_the_deadline() {
    use isola::{HostApi, HostError};
    use std::time::{Duration, Instant};
    let host = HostApi::new()
        .func("user", |(id,): (u32,)| -> anyhow::Result<Value> {
            Err(HostError::new(format!("no user {id}")).code("NOT_FOUND").data(json!({"id": id})).into())
        })
        .async_func("later", |(): ()| async {
            Err::<Value, _>(HostError::timeout("the backend took too long").code(504).into())
        })
        .func("plain", |(): ()| -> anyhow::Result<Value> { anyhow::bail!("just a message") })
        .func("left", |(): ()| {
            Ok(isola::call_deadline().map(|d| d.saturating_duration_since(Instant::now()).as_millis() as u64))
        })
        .async_func("leftLater", |(): ()| {
            let d = isola::call_deadline();
            async move { Ok(d.map(|d| d.saturating_duration_since(Instant::now()).as_millis() as u64)) }
        });
    let engine = common::builder().host(host).call_timeout(Duration::from_millis(800)).build();
    let (_dir, _m, h) = common::load_module_with(
        engine,
        "const show = (e) => ({ message: e.message, code: e.code, hostCode: e.hostCode ?? null, data: e.data ?? null });
         export default {
           user() { try { host.user(7); } catch (e) { return show(e); } },
           async later() { try { await host.later(); } catch (e) { return show(e); } },
           plain() { try { host.plain(); } catch (e) { return show(e); } },
           async left() { return [host.left(), await host.leftLater()]; },
           escapes() { host.user(1); },
         };",
    );
    let r: Value = h.call_blocking("user", ()).unwrap();
    assert_eq!(r, json!({"message": "no user 7", "code": "HOST_ERROR", "hostCode": "NOT_FOUND", "data": {"id": 7}}));
    let r: Value = h.call_blocking("later", ()).unwrap();
    assert_eq!(r, json!({"message": "the backend took too long", "code": "TIMEOUT", "hostCode": 504, "data": null}));
    let r: Value = h.call_blocking("plain", ()).unwrap();
    assert_eq!(r, json!({"message": "just a message", "code": "HOST_ERROR", "hostCode": null, "data": null}));
    // Inside a host function, the hook's deadline: at most the call's 800 ms (or its own limit).
    let left: Vec<Option<u64>> = h.call_blocking("left", ()).unwrap();
    for ms in &left {
        let ms = ms.expect("a deadline inside a host function");
        assert!(ms > 500 && ms <= 800, "{left:?}");
    }
    let opts = isola::CallOptions::default().timeout(Duration::from_millis(100));
    let left: Vec<Option<u64>> = h.call_blocking_with("left", (), opts).unwrap();
    assert!(left.iter().all(|ms| ms.is_some_and(|ms| ms <= 100)), "{left:?}");
    assert_eq!(isola::call_deadline(), None, "outside a host function there is none");
    // Escaping the hook, it is the host's HOST_ERROR, with the message.
    let e = h.call_blocking::<_, Value>("escapes", ()).unwrap_err();
    assert_eq!(e.code, ErrorCode::HostError, "{e}");
    assert!(e.message.contains("no user 1"), "{e}");
}

/// `"stateless": true`: every call runs on a fresh instance of the plugin, so module state,
/// timers and pending promises a call leaves behind never reach the next call (with or
/// without a warm pool, on a thread or in a process).
#[test]
fn a_stateless_plugin_runs_every_call_on_a_fresh_instance() {
    let dir = common::PluginDir::new();
    let manifest = r#"{"id":"fresh","name":"fresh","version":"1.0.0","apiVersion":1,"stateless":true}"#;
    let path = dir.module_with_manifest(
        "fresh",
        manifest,
        "let n = 0; globalThis.leak ??= 0;
        export default {
            inc() { globalThis.leak++; return [++n, globalThis.leak]; },
            later() { setTimeout(() => { n = 100; }, 1); return new Promise(() => {}).constructor.name; },
        };",
    );
    let m = Manager::new(common::engine());
    let h = m.load(path).unwrap();
    for _ in 0..5 {
        assert_eq!(h.call_blocking::<_, (u32, u32)>("inc", ()).unwrap(), (1, 1));
    }
    assert_eq!(h.call_blocking::<_, String>("later", ()).unwrap(), "Promise");
    std::thread::sleep(std::time::Duration::from_millis(20));
    assert_eq!(h.call_blocking::<_, (u32, u32)>("inc", ()).unwrap(), (1, 1), "the timer died with its instance");
    // Calls queued at once each get their own instance too.
    let calls: Vec<_> = (0..4)
        .map(|_| {
            let h = h.clone();
            std::thread::spawn(move || h.call_blocking::<_, (u32, u32)>("inc", ()).unwrap())
        })
        .collect();
    for c in calls {
        assert_eq!(c.join().unwrap(), (1, 1));
    }
    assert_eq!(h.stats().restarts, 0, "a fresh instance is not a restart");
    assert_eq!(h.status(), isola::PluginStatus::Ready);
    m.shutdown();
}

/// Counts the instances each version of a plugin made (its top-level code calls
/// `host.loaded(version)`), and fails loading while `fail` is set.
fn instance_counter() -> (isola::HostApi, Arc<Mutex<Vec<String>>>, Arc<AtomicBool>) {
    let loads = Arc::new(Mutex::new(Vec::new()));
    let fail = Arc::new(AtomicBool::new(false));
    let (l, f) = (loads.clone(), fail.clone());
    let host = isola::HostApi::new()
        .func("loaded", move |(v,): (String,)| {
            l.lock().unwrap().push(v);
            Ok(())
        })
        .func("failing", move |(): ()| Ok(f.load(Ordering::SeqCst)));
    (host, loads, fail)
}

const COUNTED: &str = r#"{"id":"counted","name":"c","version":"1.0.0","apiVersion":1,"stateless":true}"#;

#[test]
fn a_stateless_version_replaced_by_a_reload_makes_no_more_instances_of_itself() {
    let (host, loads, _) = instance_counter();
    let dir = common::PluginDir::new();
    let js = |v: &str| {
        format!(
            "host.loaded('{v}');
            export default {{ slow() {{ const end = Date.now() + 300; while (Date.now() < end) {{}} return '{v}'; }} }};"
        )
    };
    let path = dir.module_with_manifest("counted", COUNTED, &js("v1"));
    let m = Manager::new(common::engine_with(host));
    let h = m.load(&path).unwrap();
    let slow = {
        let h = h.clone();
        std::thread::spawn(move || h.call_blocking::<_, String>("slow", ()).unwrap())
    };
    // Reload while v1 runs its call: v1 answers it, and must then not make a fresh instance
    // of a version nobody calls any more.
    std::thread::sleep(std::time::Duration::from_millis(100));
    std::fs::write(path.join("main.js"), js("v2")).unwrap();
    m.reload("counted").unwrap();
    assert_eq!(slow.join().unwrap(), "v1");
    assert_eq!(h.call_blocking::<_, String>("slow", ()).unwrap(), "v2");
    m.shutdown();
    let loads = loads.lock().unwrap().clone();
    // (A plugin process learns it was replaced only from the stop that follows its last
    // answer, so there the old version may still make one instance, in a process that ends.)
    if !common::process_mode() {
        assert_eq!(loads.iter().filter(|v| *v == "v1").count(), 1, "{loads:?}");
    }
    // v2: the instance that answered, and perhaps the next one (a plugin process may be
    // stopped before it has made it).
    assert!(loads.iter().any(|v| v == "v2"), "{loads:?}");
}

#[test]
fn a_stateless_plugin_whose_next_instance_failed_to_load_tries_again_on_the_next_call() {
    let (host, loads, fail) = instance_counter();
    let dir = common::PluginDir::new();
    let path = dir.module_with_manifest(
        "counted",
        COUNTED,
        "if (host.failing()) throw new Error('not today'); host.loaded('v1');
        export default { hi() { return 'hi'; } };",
    );
    let m = Manager::new(common::engine_with(host));
    let events = m.events();
    let h = m.load(&path).unwrap();
    fail.store(true, Ordering::SeqCst);
    // This call runs on the instance made at load; the one made after it fails.
    assert_eq!(h.call_blocking::<_, String>("hi", ()).unwrap(), "hi");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match events.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now())) {
            Some(isola::events::LifecycleEvent::RestartFailed { error, .. }) => {
                assert!(error.message.contains("not today"), "{error}");
                break;
            }
            Some(_) => {}
            None => panic!("no RestartFailed event"),
        }
    }
    assert_eq!(h.status(), isola::PluginStatus::Failed);
    // Still failing: the call says why, and nothing crashes.
    let e = h.call_blocking::<_, String>("hi", ()).unwrap_err();
    assert_eq!(e.code, ErrorCode::PluginCrashed);
    assert!(e.message.contains("not today"), "{e}");
    // It passes: the next call loads an instance and is answered.
    fail.store(false, Ordering::SeqCst);
    assert_eq!(h.call_blocking::<_, String>("hi", ()).unwrap(), "hi");
    assert_eq!(h.status(), isola::PluginStatus::Ready);
    assert!(loads.lock().unwrap().len() >= 2);
    m.shutdown();
}

/// A plugin that puts `get` on `Object.prototype` (which would turn every descriptor object
/// that inherits it into an invalid one) still gets isola's errors whole: the prelude makes
/// their properties with descriptors that inherit nothing.
#[test]
fn a_polluted_object_prototype_does_not_break_the_errors_isola_gives() {
    use isola::{HostApi, HostError};
    let host = HostApi::new()
        .func("user", |(): ()| -> anyhow::Result<Value> {
            Err(HostError::new("no user").code("NOT_FOUND").data(json!({"id": 7})).into())
        })
        .async_func("later", |(): ()| async {
            Err::<Value, _>(HostError::new("not yet").code(503).data(json!([1])).into())
        });
    let (_d, _m, h) = common::load_module_with(
        common::builder().host(host).build(),
        "Object.prototype.get = function () { return 'polluted'; };
        const show = (e) => [e instanceof Error, e.message, e.code, e.hostCode, e.data];
        export default {
            user() { try { host.user(); } catch (e) { return show(e); } },
            async later() { try { await host.later(); } catch (e) { return show(e); } },
        };",
    );
    let r: Value = h.call_blocking("user", ()).unwrap();
    assert_eq!(r, json!([true, "no user", "HOST_ERROR", "NOT_FOUND", {"id": 7}]));
    let r: Value = h.call_blocking("later", ()).unwrap();
    assert_eq!(r, json!([true, "not yet", "HOST_ERROR", 503, [1]]));
}
