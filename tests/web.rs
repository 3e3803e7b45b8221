//! The web platform globals inside plugins (`js/web.js`): what plugin code and the npm
//! libraries bundled into it rely on, edge cases included. Runs in both isolation modes.

mod common;

use common::{PluginDir, isola_command, load_module};
use serde_json::{Value, json};

/// Loads a plugin whose hook `t` returns what `body` (a function body) returns.
fn eval(body: &str) -> Value {
    let (_d, _m, h) = load_module(&format!("export default {{ t() {{ {body} }} }};"));
    h.call_blocking("t", ()).unwrap_or_else(|e| panic!("{body}: {e}"))
}

/// The `name` and `message` of what `body` throws (or `"no throw"`).
fn thrown(body: &str) -> Value {
    eval(&format!(
        "try {{ {body}; return 'no throw'; }} catch (e) {{ return {{ name: e.name, message: e.message, isDom: e instanceof DOMException, isType: e instanceof TypeError, code: e.code }}; }}"
    ))
}

#[test]
fn the_globals_exist_and_nothing_that_reaches_outside_does() {
    let v = eval(
        "const names = ['TextEncoder', 'TextDecoder', 'atob', 'btoa', 'URL', 'URLSearchParams', 'structuredClone',
            'crypto', 'Crypto', 'CryptoKey', 'performance', 'navigator', 'Event', 'EventTarget', 'CustomEvent', 'AbortController',
            'AbortSignal', 'DOMException', 'reportError', 'queueMicrotask', 'self',
            'setTimeout', 'setInterval', 'clearTimeout', 'clearInterval',
            'fetch', 'XMLHttpRequest', 'WebSocket', 'BroadcastChannel', 'Deno', 'process', 'require', '__isolaWeb', '__isolaPrelude'];
         return Object.fromEntries(names.map((n) => [n, typeof globalThis[n]]));",
    );
    for present in [
        "TextEncoder",
        "TextDecoder",
        "atob",
        "btoa",
        "URL",
        "URLSearchParams",
        "structuredClone",
        "Crypto",
        "Event",
        "EventTarget",
        "CustomEvent",
        "AbortController",
        "AbortSignal",
        "DOMException",
        "reportError",
        "queueMicrotask",
        "setTimeout",
        "setInterval",
        "clearTimeout",
        "clearInterval",
    ] {
        assert_eq!(v[present], "function", "{present}: {v}");
    }
    for object in ["crypto", "performance", "navigator", "self"] {
        assert_eq!(v[object], "object", "{object}: {v}");
    }
    for absent in [
        "fetch",
        "XMLHttpRequest",
        "WebSocket",
        "BroadcastChannel",
        "Deno",
        "process",
        "require",
        "__isolaWeb",
        "__isolaPrelude",
    ] {
        assert_eq!(v[absent], "undefined", "{absent} must not exist: {v}");
    }
    assert_eq!(eval("return self === globalThis && navigator.userAgent.startsWith('isola/');"), json!(true));
}

#[test]
fn text_encoder_and_decoder_speak_utf8_with_fatal_bom_and_streaming() {
    let v = eval(
        "const e = new TextEncoder();
         const bytes = e.encode('héllo €𝄞');
         const into = new Uint8Array(3);
         const r = e.encodeInto('a€b', into);
         const d = new TextDecoder();
         const bom = new Uint8Array([0xEF, 0xBB, 0xBF, 0x68, 0x69]);
         const euro = e.encode('€');
         const s = new TextDecoder();
         const streamed = s.decode(euro.subarray(0, 1), { stream: true }) + s.decode(euro.subarray(1), { stream: true }) + s.decode();
         return {
             bytes: Array.from(bytes), roundTrip: d.decode(bytes), encoding: e.encoding,
             into: [r.read, r.written, Array.from(into)],
             bom: d.decode(bom).length, keptBom: new TextDecoder('utf-8', { ignoreBOM: true }).decode(bom).length,
             lossy: d.decode(new Uint8Array([0x61, 0xFF, 0x62])), streamed,
             fromBuffer: d.decode(bytes.buffer.slice(0, 1)), lone: Array.from(e.encode('\\ud800')),
             label: new TextDecoder('UTF8').encoding, empty: e.encode().length,
         };",
    );
    assert_eq!(v["bytes"], json!([104, 195, 169, 108, 108, 111, 32, 226, 130, 172, 240, 157, 132, 158]));
    assert_eq!(v["roundTrip"], "héllo €𝄞");
    assert_eq!(v["encoding"], "utf-8");
    assert_eq!(v["into"], json!([1, 1, [97, 0, 0]]), "only whole characters fit");
    assert_eq!(v["bom"], 2);
    assert_eq!(v["keptBom"], 3);
    assert_eq!(v["lossy"], "a\u{FFFD}b");
    assert_eq!(v["streamed"], "€", "a character split across chunks");
    assert_eq!(v["fromBuffer"], "h");
    assert_eq!(v["lone"], json!([0xEF, 0xBF, 0xBD]), "a lone surrogate encodes as U+FFFD");
    assert_eq!(v["label"], "utf-8");
    assert_eq!(v["empty"], 0);

    let e = thrown("new TextDecoder('utf-8', { fatal: true }).decode(new Uint8Array([0x61, 0xC3]))");
    assert_eq!(e["isType"], true, "{e}");
    let e = thrown("new TextDecoder('latin2')");
    assert_eq!(e["name"], "RangeError", "{e}");
    let e = thrown("new TextDecoder().decode('not bytes')");
    assert_eq!(e["isType"], true, "{e}");
}

#[test]
fn atob_and_btoa_follow_the_forgiving_base64_rules() {
    let v = eval(
        "return { b: btoa('hello'), b1: btoa('a'), b2: btoa('ab'), latin1: btoa('\\xff\\xfe'),
                  a: atob('aGVsbG8='), spaces: atob(' aGVs bG8 '), noPad: atob('YWI'), bin: atob('//4=').charCodeAt(0) };",
    );
    assert_eq!(
        v,
        json!({"b": "aGVsbG8=", "b1": "YQ==", "b2": "YWI=", "latin1": "//4=", "a": "hello", "spaces": "hello", "noPad": "ab", "bin": 255})
    );
    for bad in ["atob('a')", "atob('ab$c')", "atob('a===')", "btoa('€')"] {
        let e = thrown(bad);
        assert_eq!(e["name"], "InvalidCharacterError", "{bad}: {e}");
        assert_eq!(e["isDom"], true, "{bad}: {e}");
    }
}

#[test]
fn url_parses_by_the_whatwg_standard() {
    let v = eval(
        "const u = new URL('HTTPS://user:pw@EXAMPLE.com:443/a/./b/../c?x=1&y=2#frag');
         const rel = new URL('../d?q', 'https://example.com/a/b/c');
         const idn = new URL('https://münchen.de/');
         const parts = ['href', 'origin', 'protocol', 'username', 'password', 'host', 'hostname', 'port', 'pathname', 'search', 'hash'];
         const p = Object.fromEntries(parts.map((k) => [k, u[k]]));
         u.pathname = '/new path';
         u.port = '8443';
         u.hash = '';
         const file = new URL('file:///tmp/x.txt');
         return { p, rel: rel.href, idn: idn.hostname, changed: u.href, json: JSON.stringify({ u: rel }),
                  can: [URL.canParse('nope'), URL.canParse('/x', 'https://a.b'), URL.parse('::') === null],
                  file: [file.protocol, file.pathname, file.origin], str: String(rel) };",
    );
    assert_eq!(
        v["p"],
        json!({"href": "https://user:pw@example.com/a/c?x=1&y=2#frag", "origin": "https://example.com", "protocol": "https:",
               "username": "user", "password": "pw", "host": "example.com", "hostname": "example.com", "port": "",
               "pathname": "/a/c", "search": "?x=1&y=2", "hash": "#frag"})
    );
    assert_eq!(v["rel"], "https://example.com/a/d?q");
    assert_eq!(v["idn"], "xn--mnchen-3ya.de");
    assert_eq!(v["changed"], "https://user:pw@example.com:8443/new%20path?x=1&y=2");
    assert_eq!(v["json"], r#"{"u":"https://example.com/a/d?q"}"#);
    assert_eq!(v["can"], json!([false, true, true]));
    assert_eq!(v["file"], json!(["file:", "/tmp/x.txt", "null"]));
    assert_eq!(v["str"], "https://example.com/a/d?q");
    for bad in
        ["new URL('not a url')", "new URL('http://exa mple.com')", "new URL('/relative')", "new URL('https://[::1')"]
    {
        let e = thrown(bad);
        assert_eq!(e["isType"], true, "{bad} must throw a TypeError: {e}");
        assert!(e["message"].as_str().unwrap().contains("Invalid URL"), "{bad}: {e}");
    }
    let e = thrown("new URL('https://a.b').href = 'nope'");
    assert_eq!(e["isType"], true, "{e}");
}

#[test]
fn url_search_params_parse_serialise_and_stay_linked_to_their_url() {
    let v = eval(
        "const p = new URLSearchParams('?a=1&b=x+y&a=2&c=%E2%82%AC&d');
         const got = { a: p.get('a'), all: p.getAll('a'), b: p.get('b'), c: p.get('c'), d: p.get('d'), none: p.get('zz'),
                       has: [p.has('a'), p.has('a', '2'), p.has('a', '3')], size: p.size };
         p.append('e', 'a&b=c é');
         p.delete('a', '1');
         p.set('b', 'z');
         const s1 = p.toString();
         p.sort();
         const sorted = [...p.keys()];
         const fromPairs = new URLSearchParams([['x', '1'], ['y', '2']]).toString();
         const fromRecord = new URLSearchParams({ k: 'v', n: 3 }).toString();
         const u = new URL('https://h.example/p?q=1');
         u.searchParams.append('r', '2 3');
         const afterAppend = u.href;
         u.search = '?z=9';
         const reparsed = u.searchParams.get('z');
         u.searchParams.delete('z');
         const cleared = u.href;
         const entries = []; new URLSearchParams('a=1&b=2').forEach((v, k) => entries.push(k + v));
         return { got, s1, sorted, fromPairs, fromRecord, afterAppend, reparsed, cleared, entries, iter: [...new URLSearchParams('m=1')] };",
    );
    assert_eq!(
        v["got"],
        json!({"a": "1", "all": ["1", "2"], "b": "x y", "c": "€", "d": "", "none": null, "has": [true, true, false], "size": 5})
    );
    assert_eq!(v["s1"], "b=z&a=2&c=%E2%82%AC&d=&e=a%26b%3Dc+%C3%A9");
    assert_eq!(v["sorted"], json!(["a", "b", "c", "d", "e"]));
    assert_eq!(v["fromPairs"], "x=1&y=2");
    assert_eq!(v["fromRecord"], "k=v&n=3");
    assert_eq!(v["afterAppend"], "https://h.example/p?q=1&r=2+3");
    assert_eq!(v["reparsed"], "9");
    assert_eq!(v["cleared"], "https://h.example/p", "an emptied query goes away");
    assert_eq!(v["entries"], json!(["a1", "b2"]));
    assert_eq!(v["iter"], json!([["m", "1"]]));
    let e = thrown("new URLSearchParams([['only-one']])");
    assert_eq!(e["isType"], true, "{e}");
}

#[test]
fn structured_clone_copies_deeply_keeps_cycles_and_refuses_functions() {
    let v = eval(
        "const o = { d: new Date(0), m: new Map([[1, { x: 1 }]]), s: new Set([1, 2]), r: /a/g, b: new Uint8Array([1, 2]), n: 10n };
         o.self = o;
         const c = structuredClone(o);
         return { distinct: c !== o, cycle: c.self === c, date: c.d instanceof Date && c.d.getTime() === 0,
                  map: c.m.get(1).x, mapCopied: c.m.get(1) !== o.m.get(1), set: [...c.s], re: c.r.source + c.r.flags,
                  bytes: Array.from(c.b), big: c.n === 10n, prim: structuredClone('x') };",
    );
    assert_eq!(
        v,
        json!({"distinct": true, "cycle": true, "date": true, "map": 1, "mapCopied": true, "set": [1, 2], "re": "ag",
               "bytes": [1, 2], "big": true, "prim": "x"})
    );
    for bad in ["structuredClone(() => 1)", "structuredClone({ f() {} })", "structuredClone(Symbol('s'))"] {
        let e = thrown(bad);
        assert_eq!(e["name"], "DataCloneError", "{bad}: {e}");
        assert_eq!(e["isDom"], true, "{bad}: {e}");
    }
    let e = thrown("structuredClone()");
    assert_eq!(e["isType"], true, "{e}");
}

#[test]
fn structured_clone_is_charged_to_the_memory_budget() {
    let engine = common::builder()
        .host(common::test_host())
        .heap_limit_mb(16)
        .call_timeout(std::time::Duration::from_secs(10))
        .build();
    let (_d, _m, h) = common::load_module_with(
        engine,
        "export default { t() { const a = []; const big = new Array(100000).fill(0).map((_, i) => ({ i, s: 'v' + i }));
            for (;;) a.push(structuredClone(big)); }, ok() { return 'ok'; } };",
    );
    let e = h.call_blocking::<_, Value>("t", ()).unwrap_err();
    assert_eq!(e.code, isola::ErrorCode::HeapLimit, "{e}");
    assert_eq!(h.call_blocking::<_, String>("ok", ()).unwrap(), "ok");
}

#[test]
fn crypto_gives_secure_random_values_and_uuids() {
    let v = eval(
        "const a = crypto.getRandomValues(new Uint8Array(65536));
         const counts = new Array(256).fill(0); for (const b of a) counts[b]++;
         const u32 = crypto.getRandomValues(new Uint32Array(4));
         const big = crypto.getRandomValues(new BigUint64Array(2));
         const ids = Array.from({ length: 100 }, () => crypto.randomUUID());
         const same = crypto.getRandomValues(a) === a;
         return { spread: Math.min(...counts) > 150 && Math.max(...counts) < 380, u32: u32.some((x) => x !== 0),
                  big: typeof big[0], same, unique: new Set(ids).size,
                  shape: ids.every((id) => /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/.test(id)) };",
    );
    assert_eq!(v, json!({"spread": true, "u32": true, "big": "bigint", "same": true, "unique": 100, "shape": true}));
    let e = thrown("crypto.getRandomValues(new Uint8Array(65537))");
    assert_eq!(e["name"], "QuotaExceededError", "{e}");
    assert_eq!(e["isDom"], true, "{e}");
    assert_eq!(e["code"], 22, "{e}");
    let e = thrown("crypto.getRandomValues(new Float64Array(2))");
    assert_eq!(e["name"], "TypeMismatchError", "{e}");
    let e = thrown("new Crypto()");
    assert_eq!(e["isType"], true, "{e}");
}

#[test]
fn events_abort_controllers_and_dom_exceptions_behave_as_in_browsers() {
    let v = eval(
        "const t = new EventTarget();
         const seen = [];
         const once = () => seen.push('once');
         t.addEventListener('ping', once, { once: true });
         t.addEventListener('ping', (e) => seen.push('a:' + e.type + ':' + (e.target === t) + ':' + e.eventPhase));
         t.addEventListener('ping', { handleEvent: (e) => seen.push('obj:' + (e instanceof Event)) });
         t.addEventListener('ping', once, { once: true });
         t.dispatchEvent(new Event('ping'));
         t.dispatchEvent(new Event('ping'));
         const stopper = new EventTarget();
         stopper.addEventListener('x', (e) => { seen.push('first'); e.stopImmediatePropagation(); });
         stopper.addEventListener('x', () => seen.push('never'));
         stopper.dispatchEvent(new Event('x'));
         const c = new EventTarget();
         c.addEventListener('c', (e) => e.preventDefault());
         const notCancelable = c.dispatchEvent(new Event('c'));
         const cancelled = !c.dispatchEvent(new Event('c', { cancelable: true }));
         const custom = new CustomEvent('k', { detail: { n: 1 } }).detail.n;

         const ac = new AbortController();
         const order = [];
         ac.signal.onabort = () => order.push('onabort');
         ac.signal.addEventListener('abort', (e) => order.push('listener:' + e.type));
         const removable = new EventTarget(); let hits = 0;
         removable.addEventListener('h', () => hits++, { signal: ac.signal });
         removable.dispatchEvent(new Event('h'));
         ac.abort();
         ac.abort('again');
         removable.dispatchEvent(new Event('h'));
         let threw; try { ac.signal.throwIfAborted(); } catch (e) { threw = e.name; }
         const custom2 = new AbortController(); custom2.abort('why');
         const pre = AbortSignal.abort();
         const any = AbortSignal.any([new AbortController().signal, custom2.signal]);
         const later = new AbortController(); const anyLater = AbortSignal.any([later.signal]); later.abort(7);
         const dom = new DOMException('m', 'NotFoundError');
         let illegal; try { new AbortSignal(); } catch (e) { illegal = e instanceof TypeError; }
         return { seen, notCancelable, cancelled, custom, order, hits, aborted: ac.signal.aborted, reason: ac.signal.reason.name,
                  threw, why: custom2.signal.reason, pre: pre.aborted && pre.reason instanceof DOMException,
                  any: any.reason, anyLater: anyLater.reason, illegal,
                  dom: [dom.name, dom.message, dom.code, dom instanceof Error, DOMException.NOT_FOUND_ERR, String(dom)] };",
    );
    assert_eq!(v["seen"], json!(["once", "a:ping:true:2", "obj:true", "a:ping:true:2", "obj:true", "first"]));
    assert_eq!(v["notCancelable"], true);
    assert_eq!(v["cancelled"], true);
    assert_eq!(v["custom"], 1);
    assert_eq!(v["order"], json!(["onabort", "listener:abort"]), "aborting twice fires once");
    assert_eq!(v["hits"], 1, "a listener added with a signal goes when it aborts");
    assert_eq!(v["aborted"], true);
    assert_eq!(v["reason"], "AbortError");
    assert_eq!(v["threw"], "AbortError");
    assert_eq!(v["why"], "why");
    assert_eq!(v["pre"], true);
    assert_eq!(v["any"], "why");
    assert_eq!(v["anyLater"], 7);
    assert_eq!(v["illegal"], true);
    assert_eq!(v["dom"], json!(["NotFoundError", "m", 8, true, 8, "NotFoundError: m"]));
}

#[test]
fn host_signal_is_a_real_abort_signal() {
    let v =
        eval("return [host.signal instanceof AbortSignal, host.signal instanceof EventTarget, host.signal.aborted];");
    assert_eq!(v, json!([true, true, false]));
}

#[test]
fn performance_now_is_monotonic_coarse_and_relative_to_time_origin() {
    let v = eval(
        "const a = performance.now(); let x = 0; for (let i = 0; i < 1e6; i++) x += i; const b = performance.now();
         const drift = Math.abs(performance.timeOrigin + performance.now() - Date.now());
         return { ordered: b >= a, small: a >= 0 && a < 60000, coarse: Math.abs(b * 10 - Math.round(b * 10)) < 1e-6,
                  drift: drift < 50, json: Object.keys(performance.toJSON()) };",
    );
    assert_eq!(v, json!({"ordered": true, "small": true, "coarse": true, "drift": true, "json": ["timeOrigin"]}));
}

#[test]
fn queue_microtask_and_report_error_work() {
    let (_d, _m, h) = load_module(
        "export default { async t() { const order = []; queueMicrotask(() => order.push('micro')); order.push('sync');
            await null; reportError(new Error('reported, not thrown')); return order; } };",
    );
    assert_eq!(h.call_blocking::<_, Value>("t", ()).unwrap(), json!(["sync", "micro"]));
}

/// The whole console API reaches the host's log (`isola -v` prints it on stderr).
#[test]
fn the_whole_console_api_reaches_the_host_log() {
    let dir = PluginDir::new();
    dir.script(
        "talk",
        "var plugin = { main() {
            console.table([{ a: 1, b: 'x' }, { a: 2 }]);
            console.count(); console.count(); console.count('other'); console.countReset(); console.count();
            console.group('outer'); console.log('inside'); console.groupEnd(); console.log('outside');
            console.time('t'); console.timeLog('t', 'midway'); console.timeEnd('t'); console.timeEnd('t');
            console.assert(1 === 1, 'never'); console.assert(false, 'the check', 42);
            console.dir({ d: 1 }); console.dirxml('xml'); console.debug('dbg');
            reportError(new Error('reported'));
            return 0; } };",
    );
    let o = isola_command().args(["-v", "run", dir.path().to_str().unwrap()]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    for needle in [
        "│ (index) │ a │ b │",
        "│ 0       │ 1 │ x │",
        "default: 1",
        "default: 2",
        "other: 1",
        "  inside",
        "outside",
        "t: ",
        "midway",
        "Timer 't' does not exist",
        "Assertion failed: the check 42",
        "{\"d\":1}",
        "xml",
        "uncaught error:",
        "reported",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
    assert!(!err.contains("never"), "{err}");
    // After countReset, the default counter starts again.
    assert_eq!(err.matches("default: 1").count(), 2, "{err}");
}

/// `plugins/signup` bundles real npm libraries (zod, uuid; see its `src/` and `build.sh`) that
/// need `URL`, `crypto.getRandomValues` and `TextEncoder`: before the web globals, zod's URL
/// check rejected every URL and uuid failed to load.
#[test]
fn a_plugin_bundling_npm_libraries_runs() {
    let m = isola::Manager::new(common::engine());
    let h = m.load(concat!(env!("CARGO_MANIFEST_DIR"), "/plugins/signup")).unwrap();
    let ok: Value = h
        .call_blocking(
            "signup",
            (json!({"name": "Zoë", "email": "zoe@example.com", "homepage": "https://zoe.example/"}),),
        )
        .unwrap();
    assert_eq!(ok["ok"], true, "{ok}");
    assert_eq!(ok["validId"], true, "{ok}");
    assert_eq!(ok["id"].as_str().unwrap().len(), 36, "{ok}");
    assert_eq!(ok["bytes"], 75, "UTF-8 bytes of the accepted record: {ok}");
    let again: Value = h.call_blocking("signup", (json!({"name": "Ada", "email": "ada@example.com"}),)).unwrap();
    assert_ne!(again["id"], ok["id"], "fresh random ids");
    let bad: Value =
        h.call_blocking("signup", (json!({"name": "", "email": "nope", "homepage": "not a url"}),)).unwrap();
    assert_eq!(bad["ok"], false, "{bad}");
    let errors: Vec<String> = serde_json::from_value(bad["errors"].clone()).unwrap();
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert!(errors.iter().any(|e| e.starts_with("homepage:")), "{errors:?}");
    assert!(errors.iter().any(|e| e.starts_with("email:")), "{errors:?}");
}

#[test]
fn crypto_subtle_digests_and_hmac_match_the_published_vectors() {
    let (_d, _m, h) = load_module(
        "const hex = (b) => [...new Uint8Array(b)].map((x) => x.toString(16).padStart(2, '0')).join('');
         const enc = (s) => new TextEncoder().encode(s);
         export default { async t() {
            const out = {};
            for (const alg of ['SHA-1', 'SHA-256', 'SHA-384', 'SHA-512']) out[alg] = hex(await crypto.subtle.digest(alg, enc('abc')));
            out.objectForm = hex(await crypto.subtle.digest({ name: 'sha-256' }, enc('abc').buffer));
            const fox = enc('The quick brown fox jumps over the lazy dog');
            const key = await crypto.subtle.importKey('raw', enc('key'), { name: 'HMAC', hash: 'SHA-256' }, true, ['sign', 'verify']);
            out.hmac256 = hex(await crypto.subtle.sign('HMAC', key, fox));
            const key1 = await crypto.subtle.importKey('raw', enc('key'), { name: 'HMAC', hash: { name: 'SHA-1' } }, false, ['sign']);
            out.hmac1 = hex(await crypto.subtle.sign({ name: 'HMAC' }, key1, fox));
            out.verified = await crypto.subtle.verify('HMAC', key, await crypto.subtle.sign('HMAC', key, fox), fox);
            out.forged = await crypto.subtle.verify('HMAC', key, new Uint8Array(32), fox);
            out.key = [key instanceof CryptoKey, key.type, key.algorithm.name, key.algorithm.hash.name, key.algorithm.length, key.usages];
            out.raw = new TextDecoder().decode(await crypto.subtle.exportKey('raw', key));
            const jwk = await crypto.subtle.exportKey('jwk', key);
            const back = await crypto.subtle.importKey('jwk', jwk, { name: 'HMAC', hash: 'SHA-256' }, false, ['sign']);
            out.jwk = [jwk.kty, jwk.alg, hex(await crypto.subtle.sign('HMAC', back, fox)) === out.hmac256];
            const gen = await crypto.subtle.generateKey({ name: 'HMAC', hash: 'SHA-512' }, true, ['sign']);
            out.generated = (await crypto.subtle.exportKey('raw', gen)).byteLength;
            const fail = async (f) => { try { await f(); return 'no error'; } catch (e) { return e.name; } };
            out.errors = [
                await fail(() => crypto.subtle.digest('MD5', enc('x'))),
                await fail(() => crypto.subtle.exportKey('raw', key1)),
                await fail(() => crypto.subtle.verify('HMAC', key1, new Uint8Array(20), fox)),
                await fail(() => crypto.subtle.importKey('raw', enc('k'), { name: 'AES-GCM' }, false, ['encrypt'])),
                await fail(() => crypto.subtle.digest('SHA-256', 'not bytes')),
            ];
            return out;
         } };",
    );
    let v: Value = h.call_blocking("t", ()).unwrap();
    assert_eq!(v["SHA-1"], "a9993e364706816aba3e25717850c26c9cd0d89d");
    assert_eq!(v["SHA-256"], "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    assert_eq!(
        v["SHA-384"],
        "cb00753f45a35e8bb5a03d699ac65007272c32ab0eded1631a8b605a43ff5bed8086072ba1e7cc2358baeca134c825a7"
    );
    assert_eq!(
        v["SHA-512"],
        "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f"
    );
    assert_eq!(v["objectForm"], v["SHA-256"]);
    assert_eq!(v["hmac256"], "f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8");
    assert_eq!(v["hmac1"], "de7c9b85b8b78aa6bc8a7a36f70a90701c9db4d9");
    assert_eq!(v["verified"], true);
    assert_eq!(v["forged"], false);
    assert_eq!(v["key"], json!([true, "secret", "HMAC", "SHA-256", 24, ["sign", "verify"]]));
    assert_eq!(v["raw"], "key");
    assert_eq!(v["jwk"], json!(["oct", "HS256", true]));
    assert_eq!(v["generated"], 128);
    assert_eq!(
        v["errors"],
        json!(["NotSupportedError", "InvalidAccessError", "InvalidAccessError", "NotSupportedError", "TypeError"])
    );
}
