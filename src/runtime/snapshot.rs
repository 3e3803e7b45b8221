//! A V8 startup snapshot of everything every isolate evaluates before plugin code.
//!
//! Why: without it each isolate runs deno_core's bootstrap JavaScript (primordials, the op
//! layer, ...) from source, which is most of a cold start. The snapshot is built once per
//! process, the first time a plugin starts, and every isolate after that deserialises it. It
//! holds deno_core's bootstrap plus isola's prelude *function* (not yet run: what it installs
//! depends on the engine's host API).

use std::sync::OnceLock;

use deno_core::{JsRuntime, JsRuntimeForSnapshot, RuntimeOptions};

use super::ops::{HostTable, isola_ops};
use super::wasm::isola_wasm;
use super::web::isola_web;

const PRELUDE: &str = include_str!("../../js/prelude.js");
/// The web platform globals, evaluated into the snapshot itself (see the file's header).
const WEB: &str = include_str!("../../js/web.js");
/// The `WebAssembly` wrappers that keep wasm memories inside the budget (see its header).
const WASM: &str = include_str!("../../js/wasm.js");

/// V8 flags for every isolate in the process, set before V8 starts.
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
const V8_FLAGS: &str = "--no-concurrent-recompilation --no-concurrent-sparkplug";

/// The global the snapshot parks the prelude in; the prelude deletes it when it runs.
pub(crate) const PRELUDE_GLOBAL: &str = "__isolaPrelude";

/// The snapshot, built on first use.
pub(crate) fn snapshot() -> &'static [u8] {
    static SNAPSHOT: OnceLock<&'static [u8]> = OnceLock::new();
    SNAPSHOT.get_or_init(|| {
        // Initialise V8 for normal running first, so that building the snapshot does not turn
        // on deno_core's snapshot-only flags (`--predictable`) for the whole process.
        v8::V8::set_flags_from_string(V8_FLAGS);
        JsRuntime::init_platform(None);
        let mut runtime = JsRuntimeForSnapshot::new(RuntimeOptions {
            extensions: vec![isola_ops::init(HostTable::empty()), isola_web::init(), isola_wasm::init()],
            ..Default::default()
        });
        runtime
            .execute_script("ext:isola/web.js", WEB.replace("__ISOLA_VERSION__", env!("CARGO_PKG_VERSION")))
            .expect("isola's web globals must evaluate");
        runtime.execute_script("ext:isola/wasm.js", WASM).expect("isola's WebAssembly wrappers must evaluate");
        runtime
            .execute_script("ext:isola/prelude.js", format!("globalThis.{PRELUDE_GLOBAL} = ({PRELUDE});"))
            .expect("isola's prelude must compile");
        Box::leak(runtime.snapshot())
    })
}
