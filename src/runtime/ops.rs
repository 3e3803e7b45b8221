//! The only deno_core ops a plugin can reach: host-function dispatch (sync and async) and
//! console output.
//!
//! Why three generic ops instead of one op per host function: deno_core ops are declared at
//! compile time, while an embedder builds its [`HostApi`](crate::HostApi) at run time. So the
//! prelude (`js/prelude.js`) binds each `host.NAME` to one of these ops with the function's
//! index, and the arguments and result cross as JSON text (which also means a plugin handing
//! over a Symbol, BigInt or cyclic object gets a catchable JS error instead of reaching serde).

use std::borrow::Cow;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use deno_core::{OpState, op2};
use deno_error::{JsErrorClass, PropertyValue};

use crate::host::{AsyncFn, HostFnError, HostItem, SyncFn};

/// Per-isolate op state: the host functions by index, and who is calling.
pub(crate) struct HostTable {
    pub plugin: Arc<str>,
    pub sync_fns: Vec<Arc<SyncFn>>,
    pub async_fns: Vec<Arc<AsyncFn>>,
}

impl HostTable {
    /// No host functions (used to build the startup snapshot).
    pub(crate) fn empty() -> HostTable {
        HostTable { plugin: "".into(), sync_fns: Vec::new(), async_fns: Vec::new() }
    }

    /// Splits a host API into index tables and the JSON spec the prelude builds `host` from.
    pub(crate) fn build(plugin: &str, host: &crate::HostApi) -> (HostTable, serde_json::Value) {
        let mut table = HostTable { plugin: plugin.into(), sync_fns: Vec::new(), async_fns: Vec::new() };
        let mut spec = Vec::new();
        for (name, item) in host.items() {
            spec.push(match item {
                HostItem::Sync(f) => {
                    table.sync_fns.push(f.clone());
                    serde_json::json!({"name": name, "kind": "sync", "id": table.sync_fns.len() - 1})
                }
                HostItem::Async(f) => {
                    table.async_fns.push(f.clone());
                    serde_json::json!({"name": name, "kind": "async", "id": table.async_fns.len() - 1})
                }
                HostItem::Value(v) => serde_json::json!({"name": name, "kind": "value", "value": v}),
            });
        }
        (table, serde_json::Value::Array(spec))
    }
}

/// A host function's failure as JS sees it: an `Error` (a `TypeError` for bad arguments) with
/// a `code` property.
#[derive(Debug)]
pub(crate) struct HostOpError(HostFnError);

impl std::fmt::Display for HostOpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.message)
    }
}

impl std::error::Error for HostOpError {}

impl JsErrorClass for HostOpError {
    fn get_class(&self) -> Cow<'static, str> {
        Cow::Borrowed(if self.0.code == "INVALID_ARGS" { "TypeError" } else { "Error" })
    }

    fn get_message(&self) -> Cow<'static, str> {
        Cow::Owned(self.0.message.clone())
    }

    fn get_additional_properties(&self) -> deno_error::AdditionalProperties {
        Box::new(std::iter::once((Cow::Borrowed("code"), PropertyValue::String(Cow::Borrowed(self.0.code)))))
    }

    fn get_ref(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self
    }
}

fn parse_args(args: &str) -> Result<serde_json::Value, HostOpError> {
    serde_json::from_str(args)
        .map_err(|e| HostOpError(HostFnError { code: "INVALID_ARGS", message: format!("invalid arguments: {e}") }))
}

fn unknown(id: u32) -> HostOpError {
    HostOpError(HostFnError { code: "HOST_ERROR", message: format!("no host function #{id}") })
}

#[op2]
#[string]
fn op_isola_host_sync(state: &mut OpState, #[smi] id: u32, #[string] args: &str) -> Result<String, HostOpError> {
    let f = state.borrow::<HostTable>().sync_fns.get(id as usize).cloned().ok_or_else(|| unknown(id))?;
    let out = f(parse_args(args)?).map_err(HostOpError)?;
    Ok(out.to_string())
}

#[op2]
#[string]
async fn op_isola_host_async(
    state: Rc<RefCell<OpState>>,
    #[smi] id: u32,
    #[string] args: String,
) -> Result<String, HostOpError> {
    let f = state.borrow().borrow::<HostTable>().async_fns.get(id as usize).cloned().ok_or_else(|| unknown(id))?;
    let out = f(parse_args(&args)?).await.map_err(HostOpError)?;
    Ok(out.to_string())
}

/// `console.*` → `tracing`, target `isola::plugin`, with the plugin id as a field.
#[op2(fast)]
fn op_isola_log(state: &mut OpState, #[smi] level: u32, #[string] msg: &str) {
    let plugin: &str = &state.borrow::<HostTable>().plugin;
    match level {
        0 => tracing::trace!(target: "isola::plugin", plugin, "{msg}"),
        1 => tracing::debug!(target: "isola::plugin", plugin, "{msg}"),
        2 => tracing::info!(target: "isola::plugin", plugin, "{msg}"),
        3 => tracing::warn!(target: "isola::plugin", plugin, "{msg}"),
        _ => tracing::error!(target: "isola::plugin", plugin, "{msg}"),
    }
}

deno_core::extension!(
    isola_ops,
    ops = [op_isola_host_sync, op_isola_host_async, op_isola_log],
    options = { table: HostTable },
    middleware = |op| match op.name {
        // Everything deno_core itself would expose stays unreachable: the prelude deletes
        // `Deno`, and these are disabled outright because they touch the process.
        "op_print" | "op_panic" => op.disable(),
        _ => op,
    },
    state = |state, options| {
        state.put(options.table);
    },
);
