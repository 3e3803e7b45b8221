//! Containment: no plugin can take the host down. Every hostile plugin here runs in a child
//! process (see `common::in_child`), so that if it did crash its host, the test fails instead
//! of killing the test runner; each asserts the error code, the time the call took and a
//! bound on the child's peak memory.

mod common;

use std::time::{Duration, Instant};

use common::{PluginDir, in_child, peak_rss_mib, test_host};
use isola::{Engine, ErrorCode, Manager};
use serde_json::Value;

const MIB: u64 = 1024 * 1024;

/// A manager with a `budget` MiB memory budget and a 1 s call limit, and one plugin whose
/// `bomb` hook evaluates `expr`.
fn bomb(budget: u64, expr: &str) -> (PluginDir, Manager, isola::PluginHandle) {
    let dir = PluginDir::new();
    let path = dir.module("bomb", &format!("export default {{ bomb() {{ const x = {expr}; return typeof x === 'string' ? x.length + x.charCodeAt(x.length - 1) : typeof x; }}, ok() {{ return 'ok'; }} }};"));
    let engine = Engine::builder().host(test_host()).heap_limit_mb(budget).call_timeout(Duration::from_secs(1)).build();
    let m = Manager::new(engine);
    let h = m.load(path).unwrap();
    (dir, m, h)
}

/// Like [`bomb`], but `bomb` returns what `expr` evaluates to, for isola to convert.
fn returning(expr: &str) -> (PluginDir, Manager, isola::PluginHandle) {
    let dir = PluginDir::new();
    let path =
        dir.module("bomb", &format!("export default {{ bomb() {{ return {expr}; }}, ok() {{ return 'ok'; }} }};"));
    let engine = Engine::builder().host(test_host()).call_timeout(Duration::from_secs(1)).build();
    let m = Manager::new(engine);
    let h = m.load(path).unwrap();
    (dir, m, h)
}

/// What one hostile call did.
#[derive(Debug)]
struct Outcome {
    code: Option<ErrorCode>,
    took: Duration,
    peak_mib: u64,
}

fn detonate(budget: u64, expr: &str) -> Outcome {
    let (_dir, _m, h) = bomb(budget, expr);
    let t = Instant::now();
    let r = h.call_blocking::<_, Value>("bomb", ());
    let took = t.elapsed();
    let code = r.err().map(|e| e.code);
    // Whatever happened, the plugin answers again (restarted or not). A builtin that ignores
    // termination past the deadline plus `STUCK_GRACE` leaves the plugin `unresponsive`
    // (calls fail at once with `BUSY`) until it comes back.
    let back = Instant::now() + Duration::from_secs(10);
    loop {
        match h.call_blocking::<_, String>("ok", ()) {
            Err(e) if e.code == ErrorCode::Busy && Instant::now() < back => {
                std::thread::sleep(Duration::from_millis(20))
            }
            r => break assert_eq!(r.unwrap(), "ok"),
        }
    }
    Outcome { code, took, peak_mib: peak_rss_mib() }
}

/// Runs `expr` under each budget, expecting a limit to stop it (`HEAP_LIMIT`, or `TIMEOUT` when
/// the 1 s deadline comes first) within the call's time limit plus slack for a debug build,
/// with the child's peak memory under `peak_bound_mib`.
fn expect_limit(expr: &str, peak_bound_mib: u64) {
    expect_limit_within(expr, peak_bound_mib, Duration::from_secs(3));
}

/// The budgets the heap-overshoot classes run at.
const HEAP_BUDGETS: &[u64] = &[8, 32, 256];
/// Budgets for what is charged when allocated (ArrayBuffers), where no GC is involved.
const ALL_BUDGETS: &[u64] = &[8, 32, 256];

/// [`expect_limit`] with a time bound of its own, for builtins that do not check for
/// termination while they run.
fn expect_limit_within(expr: &str, peak_bound_mib: u64, max_time: Duration) {
    expect_limit_at(HEAP_BUDGETS, expr, peak_bound_mib, max_time);
}

fn expect_limit_at(budgets: &[u64], expr: &str, peak_bound_mib: u64, max_time: Duration) {
    for &budget in budgets {
        let o = detonate(budget, expr);
        let limit = matches!(o.code, Some(ErrorCode::HeapLimit | ErrorCode::Timeout));
        assert!(limit, "budget {budget} MiB: {expr}: {o:?}");
        assert!(o.took < max_time, "budget {budget} MiB: {expr}: {o:?}");
        assert!(o.peak_mib < peak_bound_mib, "budget {budget} MiB: {expr}: peak {} MiB: {o:?}", o.peak_mib);
        eprintln!("budget {budget} MiB: {o:?}");
    }
}

/// A flat string of a few hundred MiB in one step, kept alive while the heap grows: V8 lets a
/// large object overshoot the heap limit until a GC looks, and the GC then finds the heap far
/// over it. A near-heap-limit callback that gave only twice the limit made V8 abort the whole
/// process here ("Fatal JavaScript out of memory: Reached heap limit").
#[test]
fn a_huge_string_then_more_allocation_is_heap_limit_not_a_crash() {
    in_child("a_huge_string_then_more_allocation_is_heap_limit_not_a_crash", || {
        expect_limit(
            "(() => { const s = 'x'.repeat(300 * 1024 * 1024); s.charCodeAt(1); const a = []; \
             for (let i = 0; i < 1e7; i++) a.push({ i }); return s.length + a.length; })()",
            1536,
        );
    });
}

/// One builtin making one object larger than the whole budget.
#[test]
fn one_builtin_allocation_over_the_budget_is_heap_limit_not_a_crash() {
    in_child("one_builtin_allocation_over_the_budget_is_heap_limit_not_a_crash", || {
        expect_limit(
            "(() => { const s = 'ab'.repeat(150 * 1024 * 1024); s.charCodeAt(1); return s.toUpperCase().length; })()",
            1536,
        );
    });
}

/// The same through `padEnd`, `join` and `JSON.stringify`.
#[test]
fn strings_from_pad_join_and_stringify_are_heap_limit_not_a_crash() {
    in_child("strings_from_pad_join_and_stringify_are_heap_limit_not_a_crash", || {
        for make in [
            "''.padEnd(300 * 1024 * 1024, 'ab')",
            "new Array(300 * 1024).fill('x'.repeat(1024)).join('')",
            "JSON.stringify(new Array(300 * 1024).fill('x'.repeat(1000)))",
        ] {
            expect_limit(
                &format!(
                    "(() => {{ const s = {make}; s.charCodeAt(1); const a = []; for (let i = 0; i < 1e7; i++) a.push({{ i }}); return s.length + a.length; }})()"
                ),
                1536,
            );
        }
    });
}

/// Builtins that build large arrays or strings element by element: `Array.from`, spreading,
/// `concat`, a regular expression over a large input. V8's regular expression engine does not
/// check for termination while it runs, so that one may pass its 1 s limit (2.4 s measured in
/// a debug build); it still ends in a limit error with the host alive.
#[test]
fn element_by_element_builtins_end_in_a_limit_error() {
    in_child("element_by_element_builtins_end_in_a_limit_error", || {
        expect_limit("Array.from({ length: 60e6 }, () => 0).length", 1536);
        expect_limit("[...new Array(60e6)].length", 1536);
        expect_limit("new Array(30e6).fill(1).concat(new Array(30e6).fill(2)).length", 1536);
        expect_limit_within("('a'.repeat(20e6)).replace(/a/g, 'aaaa').length", 1536, Duration::from_secs(8));
    });
}

/// Typed arrays and ArrayBuffers are charged to the same budget when they are allocated.
#[test]
fn typed_arrays_and_array_buffers_over_the_budget_are_heap_limit() {
    in_child("typed_arrays_and_array_buffers_over_the_budget_are_heap_limit", || {
        let t = Duration::from_secs(3);
        expect_limit_at(ALL_BUDGETS, "new Float64Array(100e6)", 600, t);
        expect_limit_at(ALL_BUDGETS, "new ArrayBuffer(2 ** 31)", 600, t);
        expect_limit_at(
            ALL_BUDGETS,
            "(() => { const k = []; while (true) k.push(new ArrayBuffer(1 << 20)); })()",
            600,
            t,
        );
    });
}

/// Plugin code that isola runs on the plugin's behalf after the hook itself ended (reading a
/// thrown value, formatting its stack) is under the same deadline: each of these used to hang
/// the plugin's thread for good.
#[test]
fn code_run_while_converting_an_error_is_under_the_deadline() {
    in_child("code_run_while_converting_an_error_is_under_the_deadline", || {
        for throw in [
            "throw { get message() { for (;;) {} }, get name() { for (;;) {} }, get stack() { for (;;) {} } }",
            "const e = new Error('x'); Object.defineProperty(e, 'message', { get() { for (;;) {} } }); \
             Object.defineProperty(e, 'name', { get() { for (;;) {} } }); throw e",
            "Error.prepareStackTrace = () => { for (;;) {} }; throw new Error('x')",
            "throw new Proxy({}, { get() { for (;;) {} }, getPrototypeOf() { for (;;) {} } })",
            // Converting a result runs plugin code too (`bomb` then returns it).
            "return { toJSON() { for (;;) {} } }",
            "return { get x() { for (;;) {} } }",
            "return new Proxy({}, { ownKeys() { for (;;) {} } })",
        ] {
            let (_dir, _m, h) = returning(&format!("(() => {{ {throw}; }})()"));
            let t = Instant::now();
            let e = h.call_blocking::<_, Value>("bomb", ()).unwrap_err();
            let took = t.elapsed();
            // Either isola reads the error without running the plugin's traps (`JS_ERROR`), or
            // they run into the deadline (`TIMEOUT`); either way the call is answered in time.
            assert!(matches!(e.code, ErrorCode::Timeout | ErrorCode::JsError), "{throw}: {e}");
            assert!(took < Duration::from_secs(3), "{throw}: answered after {took:?}");
            eprintln!("{throw}: {} after {took:?}", e.code);
            // The plugin is usable after.
            assert_eq!(h.call_blocking::<_, String>("ok", ()).unwrap(), "ok", "{throw}");
        }
    });
}

/// Results leave the plugin only up to a cap, checked before anything is copied out.
#[test]
fn results_over_the_cap_are_refused_before_leaving_the_plugin() {
    let dir = PluginDir::new();
    let path = dir.module("big", "export default { big(n) { return 'x'.repeat(n); }, small() { return 'ok'; } };");
    let engine = Engine::builder().host(test_host()).heap_limit_mb(256).max_result_bytes(4 * MIB as usize).build();
    let m = Manager::new(engine);
    let h = m.load(path).unwrap();
    assert_eq!(h.call_blocking::<_, String>("big", (1000,)).unwrap().len(), 1000);
    let e = h.call_blocking::<_, Value>("big", (5 * MIB,)).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidArgs, "{e}");
    assert!(e.message.contains("at most 4194304"), "{e}");
    assert_eq!(h.call_blocking::<_, String>("small", ()).unwrap(), "ok");
    assert_eq!(isola::Limits::default().max_result_bytes, isola::engine::DEFAULT_MAX_RESULT_BYTES);
}

/// A plugin's error message and stack are the plugin's to choose: isola keeps at most 64 KiB
/// of each, and says so.
#[test]
fn error_texts_are_cut_to_a_bound() {
    let dir = PluginDir::new();
    let path = dir.module(
        "loud",
        "export default { shout() { throw new Error('x'.repeat(4 << 20)); }, \
         deep() { Error.prepareStackTrace = () => 'y'.repeat(4 << 20); throw new Error('short'); } };",
    );
    let m = Manager::new(Engine::builder().host(test_host()).heap_limit_mb(256).build());
    let h = m.load(path).unwrap();
    let e = h.call_blocking::<_, Value>("shout", ()).unwrap_err();
    let js = e.js.as_ref().unwrap();
    assert!(js.message.len() <= isola::engine::MAX_ERROR_TEXT_BYTES + 64, "{}", js.message.len());
    assert!(js.message.ends_with("(truncated: 4194304 bytes)"), "{}", &js.message[js.message.len() - 40..]);
    assert!(e.message.len() <= isola::engine::MAX_ERROR_TEXT_BYTES + 100, "{}", e.message.len());
    let e = h.call_blocking::<_, Value>("deep", ()).unwrap_err();
    let stack = e.js.as_ref().unwrap().stack.clone().unwrap_or_default();
    assert!(stack.len() <= isola::engine::MAX_ERROR_TEXT_BYTES + 64, "{}", stack.len());
}
