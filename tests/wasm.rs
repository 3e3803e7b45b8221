//! WebAssembly inside the sandbox: real modules run, and every wasm memory counts against the
//! plugin's budget however it is made or grown (from JavaScript, from wasm code, by a start
//! function, by an instance nobody sees). Memory bombs run in a child process (see
//! `common::in_child`), so that if one crashed its host the test fails instead of the runner.

mod common;

use std::time::{Duration, Instant};

use common::{PluginDir, in_child, load_module_with, peak_rss_mib, process_mode, test_host};
use isola::{Engine, ErrorCode, Manager};
use serde_json::{Value, json};

fn engine(heap_mb: u64, timeout_ms: u64) -> Engine {
    common::builder().host(test_host()).heap_limit_mb(heap_mb).call_timeout(Duration::from_millis(timeout_ms)).build()
}

/// A JavaScript expression for the module `text` (WebAssembly text format) as bytes.
fn bytes(text: &str) -> String {
    let wasm = wat::parse_str(text).unwrap();
    let list: Vec<String> = wasm.iter().map(u8::to_string).collect();
    format!("new Uint8Array([{}])", list.join(","))
}

/// A module whose own memory (not exported) grows 1 MiB at a time and has each new page
/// written, until it cannot grow, and then spins: only counting the memory can stop it
/// before its deadline.
fn filler(start: bool) -> String {
    let start = if start { "(start $fill)" } else { "" };
    bytes(&format!(
        r#"(module
          (memory 1)
          (func $fill
            (local $at i32) (local $end i32)
            (loop $grow
              (local.set $at (i32.mul (memory.grow (i32.const 16)) (i32.const 65536)))
              (if (i32.lt_s (local.get $at) (i32.const 0)) (then (loop $spin (br $spin))))
              (local.set $end (i32.add (local.get $at) (i32.const 1048576)))
              (loop $touch
                (i32.store (local.get $at) (i32.const 1))
                (local.set $at (i32.add (local.get $at) (i32.const 4096)))
                (br_if $touch (i32.lt_u (local.get $at) (local.get $end))))
              (br $grow)))
          (export "fill" (func $fill))
          {start})"#
    ))
}

#[test]
fn real_modules_run_and_share_memory_with_javascript() {
    let calc = bytes(
        r#"(module
          (import "env" "twice" (func $twice (param i32) (result i32)))
          (memory (export "memory") 1)
          (data (i32.const 16) "hello from wasm")
          (func (export "add") (param i32 i32) (result i32) (i32.add (local.get 0) (local.get 1)))
          (func (export "viaHost") (param i32) (result i32) (call $twice (local.get 0)))
          (func (export "fib") (param i32) (result i32)
            (if (result i32) (i32.lt_s (local.get 0) (i32.const 2))
              (then (local.get 0))
              (else (i32.add (call 3 (i32.sub (local.get 0) (i32.const 1)))
                             (call 3 (i32.sub (local.get 0) (i32.const 2))))))))"#,
    );
    let hidden = bytes(
        r#"(module
          (global $started (mut i32) (i32.const 0))
          (memory 2)
          (func $init (global.set $started (i32.add (global.get $started) (i32.const 1))))
          (start $init)
          (func (export "started") (result i32) (global.get $started))
          (func (export "pages") (result i32) (memory.size)))"#,
    );
    let src = format!(
        "const calc = {calc};
         const hidden = {hidden};
         export default {{
           sync() {{
             const m = new WebAssembly.Module(calc);
             const i = new WebAssembly.Instance(m, {{ env: {{ twice: (x) => x * 2 }} }});
             const text = new TextDecoder().decode(new Uint8Array(i.exports.memory.buffer, 16, 15));
             return [i.exports.add(2, 40), i.exports.viaHost(21), i.exports.fib(20), text,
                     i instanceof WebAssembly.Instance, m instanceof WebAssembly.Module,
                     i.exports.memory instanceof WebAssembly.Memory];
           }},
           async promised() {{
             const {{ module, instance }} = await WebAssembly.instantiate(calc, {{ env: {{ twice: (x) => x }} }});
             const again = await WebAssembly.instantiate(module, {{ env: {{ twice: (x) => x + 1 }} }});
             const compiled = await WebAssembly.compile(hidden);
             return [instance.exports.add(1, 2), again.exports.viaHost(1), WebAssembly.validate(calc),
                     WebAssembly.Module.exports(compiled).map((e) => e.name)];
           }},
           internals() {{
             const i = new WebAssembly.Instance(new WebAssembly.Module(hidden));
             return [Object.keys(i.exports), i.exports.started(), i.exports.pages()];
           }},
           originals() {{
             return [WebAssembly.Module.prototype.constructor === WebAssembly.Module,
                     WebAssembly.Instance.prototype.constructor === WebAssembly.Instance,
                     WebAssembly.Memory.prototype.constructor === WebAssembly.Memory,
                     typeof WebAssembly.compileStreaming, typeof WebAssembly.instantiateStreaming];
           }},
         }};"
    );
    let (_d, _m, h) = load_module_with(engine(64, 5_000), &src);
    assert_eq!(
        h.call_blocking::<_, Value>("sync", ()).unwrap(),
        json!([42, 42, 6765, "hello from wasm", true, true, true])
    );
    assert_eq!(h.call_blocking::<_, Value>("promised", ()).unwrap(), json!([3, 2, true, ["started", "pages"]]));
    // The memory isola exports to count it, and the start function it runs itself, are not
    // the plugin's to see; the start function ran once.
    assert_eq!(h.call_blocking::<_, Value>("internals", ()).unwrap(), json!([["started", "pages"], 1, 2]));
    assert_eq!(
        h.call_blocking::<_, Value>("originals", ()).unwrap(),
        json!([true, true, true, "undefined", "undefined"])
    );
}

#[test]
fn a_memory_counts_in_the_plugins_stats_and_its_maximum_is_capped_at_the_budget() {
    let src = "let keep;
        export default {
          make() { keep = new WebAssembly.Memory({ initial: 64 }); return keep.buffer.byteLength; },
          grow() { try { keep.grow(1000); return 'grew'; } catch (e) { return e.name; } },
        };";
    let (_d, _m, h) = load_module_with(engine(32, 5_000), src);
    assert_eq!(h.call_blocking::<_, u64>("make", ()).unwrap(), 4 << 20);
    let stats = h.stats();
    assert!(stats.array_buffer_bytes >= 4 << 20, "{stats:?}");
    // 64 + 1000 pages is more than the 32 MiB budget: the memory cannot grow that far.
    assert_eq!(h.call_blocking::<_, String>("grow", ()).unwrap(), "RangeError");
}

/// Runs `hook` of a plugin made of `src` under a 32 MiB budget and a 10 s limit; it must end
/// with `HEAP_LIMIT` well before the deadline, within a bounded peak, and the plugin must work
/// afterwards.
fn bomb(src: &str, hook: &str) {
    let src = src.replacen("export default {", "export default { ok: () => 'ok',", 1);
    let (_d, _m, h) = load_module_with(engine(32, 10_000), &src);
    let t = Instant::now();
    let e = h.call_blocking::<_, Value>(hook, ()).unwrap_err();
    let took = t.elapsed();
    assert_eq!(e.code, ErrorCode::HeapLimit, "{e}");
    eprintln!("{hook}: {} after {took:?}, peak RSS {} MiB", e.code, peak_rss_mib());
    assert!(took < Duration::from_secs(3), "stopped after {took:?}");
    assert_eq!(h.call_blocking::<_, String>("ok", ()).unwrap(), "ok");
    if !process_mode() {
        let peak = peak_rss_mib();
        assert!(peak < 400, "peak RSS {peak} MiB");
    }
}

#[test]
fn wasm_code_growing_its_own_hidden_memory_is_heap_limit() {
    in_child("wasm_code_growing_its_own_hidden_memory_is_heap_limit", || {
        let src = format!(
            "const m = new WebAssembly.Module({});
             export default {{ fill() {{ new WebAssembly.Instance(m).exports.fill(); }} }};",
            filler(false)
        );
        bomb(&src, "fill");
    });
}

#[test]
fn a_start_function_filling_memory_is_counted_too() {
    in_child("a_start_function_filling_memory_is_counted_too", || {
        // Were the start function run before isola saw the memory, it would spin uncounted
        // until its deadline (TIMEOUT).
        let src = format!(
            "const m = new WebAssembly.Module({});
             export default {{ start() {{ new WebAssembly.Instance(m); }} }};",
            filler(true)
        );
        bomb(&src, "start");
    });
}

#[test]
fn memories_made_in_a_loop_are_heap_limit() {
    in_child("memories_made_in_a_loop_are_heap_limit", || {
        bomb(
            "const keep = []; export default { flood() { for (;;) keep.push(new WebAssembly.Memory({ initial: 16 })); } };",
            "flood",
        );
    });
}

#[test]
fn instances_made_in_a_loop_are_heap_limit() {
    in_child("instances_made_in_a_loop_are_heap_limit", || {
        let m = bytes("(module (memory 32) (func (export \"f\")))");
        bomb(
            &format!(
                "const m = new WebAssembly.Module({m}); const keep = [];
                 export default {{ flood() {{ for (;;) keep.push(new WebAssembly.Instance(m)); }} }};"
            ),
            "flood",
        );
    });
}

#[test]
fn one_memory_larger_than_the_budget_is_heap_limit() {
    in_child("one_memory_larger_than_the_budget_is_heap_limit", || {
        bomb(
            "export default { big() { return new WebAssembly.Memory({ initial: 4096 }).buffer.byteLength; } };",
            "big",
        );
    });
}

#[test]
fn memories_that_are_garbage_do_not_stop_a_plugin() {
    // 200 memories of 4 MiB, 800 MiB in all, one alive at a time, under 32 MiB.
    let src = "export default { churn() {
        let sum = 0;
        for (let i = 0; i < 200; i++) { const m = new WebAssembly.Memory({ initial: 64 }); sum += m.buffer.byteLength >> 20; }
        return sum;
    } };";
    let (_d, _m, h) = load_module_with(engine(32, 10_000), src);
    assert_eq!(h.call_blocking::<_, u64>("churn", ()).unwrap(), 800);
    assert_eq!(h.stats().restarts, 0);
}

#[test]
fn a_wasm_loop_times_out_and_the_plugin_keeps_its_state() {
    let spin = bytes("(module (func (export \"spin\") (loop $l (br $l))))");
    let src = format!(
        "let calls = 0; const i = new WebAssembly.Instance(new WebAssembly.Module({spin}));
         export default {{ spin() {{ calls++; i.exports.spin(); }}, count() {{ return ++calls; }} }};"
    );
    let (_d, _m, h) = load_module_with(engine(64, 200), &src);
    let t = Instant::now();
    let e = h.call_blocking::<_, Value>("spin", ()).unwrap_err();
    assert_eq!(e.code, ErrorCode::Timeout, "{e}");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert_eq!(h.call_blocking::<_, i64>("count", ()).unwrap(), 2);
}

#[test]
fn shared_memories_and_bad_modules_are_refused_clearly() {
    let shared = bytes("(module (memory 1 2 shared))");
    let src = format!(
        "const attempt = (f) => {{ try {{ f(); return 'made'; }} catch (e) {{ return `${{e.name}}: ${{e.message}}`; }} }};
         export default {{
           sharedMemory: () => attempt(() => new WebAssembly.Memory({{ initial: 1, maximum: 2, shared: true }})),
           sharedModule: () => attempt(() => new WebAssembly.Module({shared})),
           garbage: () => attempt(() => new WebAssembly.Module(new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8]))),
           notBytes: () => attempt(() => new WebAssembly.Module('wasm')),
           async rejected() {{ try {{ await WebAssembly.instantiate(new Uint8Array(3)); return 'made'; }} catch (e) {{ return e.name; }} }},
         }};"
    );
    let (_d, _m, h) = load_module_with(engine(64, 5_000), &src);
    let said = |hook: &str| h.call_blocking::<_, String>(hook, ()).unwrap();
    assert!(
        said("sharedMemory").starts_with("TypeError:") && said("sharedMemory").contains("shared"),
        "{}",
        said("sharedMemory")
    );
    assert!(
        said("sharedModule").starts_with("CompileError:") && said("sharedModule").contains("shared"),
        "{}",
        said("sharedModule")
    );
    assert!(said("garbage").starts_with("CompileError:") && said("garbage").contains("\\0asm"), "{}", said("garbage"));
    assert!(said("notBytes").starts_with("TypeError:"), "{}", said("notBytes"));
    assert_eq!(said("rejected"), "CompileError");
}

#[test]
fn a_plugin_whose_module_fails_at_load_names_it() {
    let dir = PluginDir::new();
    let path = dir.module(
        "broken",
        "new WebAssembly.Module(new Uint8Array([0, 97, 115, 109, 1, 0, 0, 0, 99]));\nexport default {};",
    );
    let m = Manager::new(engine(64, 5_000));
    let e = m.load(path).unwrap_err();
    assert_eq!(e.code, ErrorCode::LoadFailed, "{e}");
    assert!(e.to_string().contains("CompileError"), "{e}");
    assert_eq!(e.plugin.as_deref(), Some("broken"));
}

#[test]
fn compiling_is_bounded_by_the_module_size_cap() {
    // Near the 32 MiB cap (4 functions of 7 MB, each `i32.const 0; drop` over and over): it
    // compiles, and one byte more than the cap is refused at once. V8 does not interrupt a
    // compile, so the cap is what bounds how far past its deadline a compile can run.
    let src = "const leb = (n) => { const out = []; do { let b = n & 127; n >>>= 7; if (n) b |= 128; out.push(b); } while (n); return out; };
        function big(functions, body) {
          const fn = [...leb(body + 2), 0]; // body size, no locals
          const size = functions * (fn.length + body + 1);
          const code = [10, ...leb(size + leb(functions).length), ...leb(functions)];
          const head = [0, 97, 115, 109, 1, 0, 0, 0, 1, 4, 1, 96, 0, 0, 3, ...leb(functions + 1), ...leb(functions), ...new Array(functions).fill(0), ...code];
          const out = new Uint8Array(head.length + size);
          out.set(head);
          let at = head.length;
          for (let f = 0; f < functions; f++) {
            out.set(fn, at); at += fn.length;
            for (let i = 0; i < body; i += 3) { out[at++] = 0x41; out[at++] = 0; out[at++] = 0x1a; }
            out[at++] = 0x0b;
          }
          return out;
        }
        export default {
          compile() { const bytes = big(4, 7_000_000 - 1); const t = Date.now(); new WebAssembly.Module(bytes); return [bytes.length >> 20, Date.now() - t]; },
          tooBig() { try { new WebAssembly.Module(new Uint8Array((32 << 20) + 1)); return 'made'; } catch (e) { return e.name + ': ' + e.message; } },
        };";
    let (_d, _m, h) = load_module_with(engine(512, 20_000), src);
    let [mib, ms] = h.call_blocking::<_, [u64; 2]>("compile", ()).unwrap();
    eprintln!("a {mib} MiB module compiled in {ms} ms");
    assert_eq!(mib, 26);
    let said = h.call_blocking::<_, String>("tooBig", ()).unwrap();
    assert!(said.starts_with("CompileError") && said.contains("at most 32 MiB"), "{said}");
}
