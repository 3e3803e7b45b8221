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

const PRELUDE: &str = include_str!("../../js/prelude.js");

/// The global the snapshot parks the prelude in; the prelude deletes it when it runs.
pub(crate) const PRELUDE_GLOBAL: &str = "__isolaPrelude";

/// The snapshot, built on first use.
pub(crate) fn snapshot() -> &'static [u8] {
    static SNAPSHOT: OnceLock<&'static [u8]> = OnceLock::new();
    SNAPSHOT.get_or_init(|| {
        // Initialise V8 for normal running first, so that building the snapshot does not turn
        // on deno_core's snapshot-only flags (`--predictable`) for the whole process.
        JsRuntime::init_platform(None);
        let mut runtime = JsRuntimeForSnapshot::new(RuntimeOptions {
            extensions: vec![isola_ops::init(HostTable::empty())],
            ..Default::default()
        });
        runtime
            .execute_script("ext:isola/prelude.js", format!("globalThis.{PRELUDE_GLOBAL} = ({PRELUDE});"))
            .expect("isola's prelude must compile");
        Box::leak(runtime.snapshot())
    })
}
