//! How isola's V8 startup snapshot is made. Shared, as source, by the build script (which
//! makes the snapshot that ships in the binary) and by [`super::snapshot`] (which checks it
//! fits and, if it ever does not, makes one at run time instead).
//!
//! Why a separate file: `build.rs` cannot depend on the crate it builds, so it includes this
//! file with `#[path]`. It may therefore use nothing but `deno_core` and the JavaScript in
//! `js/`.
//!
//! One rule for the JavaScript the snapshot holds: a function that every plugin load calls is
//! written in parentheses, `(function f() {...})` or `((x) => ...)`. Why: V8 compiles a
//! function lazily, on its first call, unless it is parenthesized (V8 takes that as a sign it
//! runs soon and compiles it with its script); the snapshot keeps the bytecode of what was
//! compiled when it was made, and what was not is compiled again in every isolate. The
//! prelude is parenthesized whole. Before the wasm wrappers' `isolaWasm` was, every load spent
//! 0.69 M instructions compiling functions lazily, 0.05 M after (callgrind over 40 loads from
//! the warm pool: 1.36 -> 0.72 M instructions per load in all). `--log-function-events` lists
//! what a load still compiles. (V8's `//# allFunctionsCalledOnLoad` comment would say the
//! same per file, but deno_core does not compile with the option that honours it: measured,
//! no effect.)

use deno_core::{Extension, JsRuntime, JsRuntimeForSnapshot, RuntimeOptions};

const PRELUDE: &str = include_str!("../../js/prelude.js");
/// The web platform globals, evaluated into the snapshot itself (see the file's header).
const WEB: &str = include_str!("../../js/web.js");
/// The `WebAssembly` wrappers that keep wasm memories inside the budget (see its header).
const WASM: &str = include_str!("../../js/wasm.js");

/// The global the snapshot parks the prelude in; the prelude deletes it when it runs.
pub(crate) const PRELUDE_GLOBAL: &str = "__isolaPrelude";

/// V8 flags for every isolate in the process, set before V8 starts, and the same when the
/// snapshot is made.
///
/// No JIT compilation on background threads. Why: a plugin that drives its heap past its
/// budget makes V8 collect garbage at the limit while background compile jobs (Maglev,
/// Turbofan) allocate code objects; when two of them ask the main thread for a GC at once,
/// V8 150 fails an internal check in its collection barrier (`Check failed:
/// GetTimerForCollectionRequest(kind).IsStarted()` in `collection-barrier.cc`: the second
/// request finds the first one's flag set but no timer of its own) and aborts the whole
/// host. Seen in 2 of 120 runs of the heap-overshoot containment tests, in none of 240 with
/// these flags. The cost, measured (`cargo bench --bench runtime -- compute`): warm code runs
/// as fast and cold start is unchanged; code that gets hot on a fresh plugin is compiled on
/// the plugin's own thread (fib(27) on a fresh plugin 4.5 -> 5.2 ms, a 1 MB JSON round trip
/// 11.1 -> 12.5 ms).
pub(crate) const V8_FLAGS: &str = "--no-concurrent-recompilation --no-concurrent-sparkplug";

/// Starts V8 with [`V8_FLAGS`], once per process.
///
/// Why before deno_core does: deno_core starts V8 itself on first use, and when that first use
/// makes a snapshot it also turns on snapshot-only flags (`--predictable`) for the whole
/// process. Starting it here keeps the flags the same when the snapshot is made and when it is
/// used.
pub(crate) fn init_v8() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        deno_core::v8::V8::set_flags_from_string(V8_FLAGS);
        JsRuntime::init_platform(None);
    });
}

/// Makes the snapshot from `extensions` (isola's three, in their order: `isola_ops`,
/// `isola_web`, `isola_wasm`). It holds deno_core's bootstrap, the web globals, the wasm
/// wrappers and the prelude *function*, not yet run: what the prelude installs depends on the
/// engine's host API.
pub(crate) fn make(extensions: Vec<Extension>, version: &str) -> Box<[u8]> {
    init_v8();
    let mut runtime = JsRuntimeForSnapshot::new(RuntimeOptions { extensions, ..Default::default() });
    runtime
        .execute_script("ext:isola/web.js", WEB.replace("__ISOLA_VERSION__", version))
        .expect("isola's web globals must evaluate");
    runtime.execute_script("ext:isola/wasm.js", WASM).expect("isola's WebAssembly wrappers must evaluate");
    runtime
        .execute_script("ext:isola/prelude.js", format!("globalThis.{PRELUDE_GLOBAL} = ({PRELUDE});"))
        .expect("isola's prelude must compile");
    runtime.snapshot()
}

/// The ops a snapshot was made with, one line each (`extension op sync|async arguments`): what the
/// isolates that load it must register, in the same order. A snapshot refers to ops by
/// position, so the build script writes this next to the snapshot and the runtime compares it
/// with its own extensions before using the snapshot.
pub(crate) fn op_manifest(extensions: &[Extension]) -> String {
    let mut out = String::new();
    for ext in extensions {
        for op in ext.ops.iter() {
            let kind = if op.is_async { "async" } else { "sync" };
            out.push_str(&format!("{} {} {kind} {}\n", ext.name, op.name, op.arg_count));
        }
    }
    out
}
