//! `isola serve DIR [--watch]`: JSON-RPC 2.0 over stdin/stdout, one message per line, so that
//! any language can drive isola as a sidecar process.
//!
//! Requests are answered as they finish, not in arrival order: calls to different plugins run
//! in parallel. Only protocol messages go to stdout (logs go to stderr); one writer thread
//! owns stdout so that every message is exactly one line.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use isola::{CallOptions, CancelToken, Error, Manager};
use serde_json::{Value, json};

const PARSE_ERROR: i64 = -32700;
const INVALID_REQUEST: i64 = -32600;
const METHOD_NOT_FOUND: i64 = -32601;
const INVALID_PARAMS: i64 = -32602;
/// JSON-RPC's range for implementation-defined server errors; isola's own code is in
/// `error.data.code`.
const ISOLA_ERROR: i64 = -32000;

pub fn serve(manager: Manager, dir: &std::path::Path, watch: bool) -> bool {
    let (out, lines_out) = crossbeam_channel::unbounded::<Value>();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        let mut stdout = std::io::stdout().lock();
        for msg in lines_out {
            let ok =
                serde_json::to_writer(&mut stdout, &msg).is_ok() && writeln!(stdout).is_ok() && stdout.flush().is_ok();
            if !ok {
                break; // the client went away
            }
        }
    });

    let events = manager.events();
    let ev_out = out.clone();
    std::thread::spawn(move || {
        for e in events {
            if ev_out.send(json!({"jsonrpc": "2.0", "method": "event", "params": e})).is_err() {
                break;
            }
        }
    });

    let ok = match manager.load_dir(dir) {
        Ok(report) => {
            for e in &report.failed {
                tracing::warn!("{e}");
            }
            true
        }
        Err(e) => {
            eprintln!("error: {e}");
            false
        }
    };
    if ok
        && watch
        && let Err(e) = manager.watch(dir)
    {
        eprintln!("error: {e}");
    }
    if ok {
        let rt =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime");
        let manager = Arc::new(Session { manager, calls: Mutex::default() });
        let mut in_flight = tokio::task::JoinSet::new();
        for line in super::dev::stdin_lines() {
            while in_flight.try_join_next().is_some() {}
            if line.trim().is_empty() {
                continue;
            }
            let manager = manager.clone();
            let out = out.clone();
            in_flight.spawn_on(
                async move {
                    if let Some(reply) = handle_line(&manager, &line).await {
                        let _ = out.send(reply);
                    }
                },
                rt.handle(),
            );
        }
        // End of input: answer what is in flight, then stop.
        rt.block_on(async { while in_flight.join_next().await.is_some() {} });
        if let Ok(s) = Arc::try_unwrap(manager) {
            s.manager.shutdown();
        }
    }
    drop(out);
    let _ = writer.join();
    ok
}

fn error(id: Value, code: i64, message: impl Into<String>, data: Option<Value>) -> Value {
    let mut err = json!({"code": code, "message": message.into()});
    if let Some(d) = data {
        err["data"] = d;
    }
    json!({"jsonrpc": "2.0", "id": id, "error": err})
}

fn isola_error(id: Value, e: &Error) -> Value {
    error(id, ISOLA_ERROR, e.to_string(), Some(e.to_json()))
}

/// The manager, and the calls in flight by request id so that `cancel` can reach them.
struct Session {
    manager: Manager,
    calls: Mutex<HashMap<String, CancelToken>>,
}

/// The key a request id is filed under (ids are numbers or strings in JSON-RPC).
fn id_key(id: &Value) -> String {
    id.to_string()
}

/// Answers one line; `None` for notifications (requests without an id).
async fn handle_line(manager: &Arc<Session>, line: &str) -> Option<Value> {
    let msg: Value = match serde_json::from_str(line) {
        Ok(v) => v,
        Err(e) => return Some(error(Value::Null, PARSE_ERROR, format!("parse error: {e}"), None)),
    };
    let id = msg.get("id").cloned();
    let reply_id = id.clone().unwrap_or(Value::Null);
    let (Some(obj), true) = (msg.as_object(), msg.get("jsonrpc") == Some(&json!("2.0"))) else {
        return Some(error(reply_id, INVALID_REQUEST, "invalid request: expected a JSON-RPC 2.0 object", None));
    };
    let Some(method) = obj.get("method").and_then(Value::as_str) else {
        return Some(error(reply_id, INVALID_REQUEST, "invalid request: `method` must be a string", None));
    };
    let params = obj.get("params").cloned().unwrap_or(Value::Null);
    let outcome = dispatch(manager, method, params, id.as_ref()).await;
    let id = id?;
    Some(match outcome {
        Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
        Err(Failure::Isola(e)) => isola_error(id, &e),
        Err(Failure::Protocol(code, msg)) => error(id, code, msg, None),
    })
}

enum Failure {
    Isola(Error),
    Protocol(i64, String),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Isola(e)
    }
}

fn bad_params(msg: &str) -> Failure {
    Failure::Protocol(INVALID_PARAMS, format!("invalid params: {msg}"))
}

fn str_param<'a>(params: &'a Value, name: &str) -> Result<&'a str, Failure> {
    params.get(name).and_then(Value::as_str).ok_or_else(|| bad_params(&format!("`{name}` (a string) is required")))
}

async fn dispatch(session: &Arc<Session>, method: &str, params: Value, id: Option<&Value>) -> Result<Value, Failure> {
    let manager = &session.manager;
    match method {
        "call" => {
            let plugin = str_param(&params, "plugin")?;
            let hook = str_param(&params, "hook")?;
            let args = match params.get("args") {
                None | Some(Value::Null) => Value::Array(vec![]),
                Some(Value::Array(a)) => Value::Array(a.clone()),
                Some(_) => return Err(bad_params("`args` must be an array of arguments")),
            };
            let mut opts = CallOptions::default();
            match params.get("timeoutMs") {
                None | Some(Value::Null) => {}
                Some(v) => {
                    let ms = v.as_u64().ok_or_else(|| bad_params("`timeoutMs` must be a positive integer"))?;
                    opts = opts.timeout(Duration::from_millis(ms));
                }
            }
            let handle = manager.handle(plugin)?;
            // A call with an id can be aborted by a `cancel` naming it.
            let token = CancelToken::new();
            let key = id.map(id_key);
            if let Some(k) = &key {
                session.calls.lock().unwrap().insert(k.clone(), token.clone());
            }
            let r = handle.call_with::<_, Value>(hook, args, opts.cancel(&token)).await;
            if let Some(k) = &key {
                session.calls.lock().unwrap().remove(k);
            }
            Ok(r?)
        }
        "cancel" => {
            // Usually a notification; the aborted call itself answers with `ABORTED`.
            let target = params.get("id").ok_or_else(|| bad_params("`id` (the request to cancel) is required"))?;
            let token = session.calls.lock().unwrap().get(&id_key(target)).cloned();
            Ok(Value::Bool(token.inspect(CancelToken::cancel).is_some()))
        }
        "unload" => on_plugin(session, &params, "unload", |m, p| m.unload(p)).await,
        "list" => Ok(serde_json::to_value(manager.list()).unwrap_or_default()),
        "stats" => {
            let stats: serde_json::Map<String, Value> =
                manager.list().into_iter().map(|p| (p.id, serde_json::to_value(p.stats).unwrap_or_default())).collect();
            Ok(Value::Object(stats))
        }
        "reload" => on_plugin(session, &params, "reload", |m, p| m.reload(p)).await,
        other => Err(Failure::Protocol(
            METHOD_NOT_FOUND,
            format!("method not found: `{other}` (methods: call, cancel, list, stats, reload, unload)"),
        )),
    }
}

/// Runs a blocking manager operation on the plugin named in `params` (`reload`, `unload`) off
/// the async threads; answers `true`.
async fn on_plugin(
    session: &Arc<Session>,
    params: &Value,
    what: &str,
    op: impl FnOnce(&Manager, &str) -> isola::Result<()> + Send + 'static,
) -> Result<Value, Failure> {
    let plugin = str_param(params, "plugin")?.to_owned();
    let s = session.clone();
    tokio::task::spawn_blocking(move || op(&s.manager, &plugin))
        .await
        .map_err(|e| Failure::Protocol(ISOLA_ERROR, format!("{what} panicked: {e}")))??;
    Ok(Value::Bool(true))
}
