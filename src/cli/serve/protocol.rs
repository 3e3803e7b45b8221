//! The JSON-RPC 2.0 vocabulary of `isola serve`: what a message is, error codes, replies.
//!
//! Both sides send requests: the client calls hooks (`call`, `emit`, ...), isola asks the
//! client's host functions (`host`). A message without `method` is therefore an answer to one
//! of isola's requests, not a malformed request.

use isola::Error;
use serde_json::{Value, json};

/// The version of this protocol; `initialize` must name it. Bumped when a method changes
/// incompatibly (new methods and fields are not breaking).
pub const PROTOCOL_VERSION: u64 = 1;

pub const PARSE_ERROR: i64 = -32700;
pub const INVALID_REQUEST: i64 = -32600;
pub const METHOD_NOT_FOUND: i64 = -32601;
pub const INVALID_PARAMS: i64 = -32602;
/// JSON-RPC's range for implementation-defined server errors; isola's own code is in
/// `error.data.code`.
pub const ISOLA_ERROR: i64 = -32000;
/// The token in `initialize` (or the connection's header) is wrong or missing.
pub const UNAUTHORIZED: i64 = -32001;
/// A request came before `initialize` (the code LSP uses for the same thing).
pub const NOT_INITIALIZED: i64 = -32002;

/// Every method a client may call, for "method not found" and the README.
pub const METHODS: &[&str] = &[
    "initialize",
    "call",
    "cancel",
    "emit",
    "dispatch",
    "commands",
    "command",
    "list",
    "stats",
    "load",
    "reload",
    "unload",
];

/// One message from the client, sorted by what it asks of isola.
pub enum Incoming {
    /// A request (`id` set) or a notification (`id` absent).
    Request { id: Option<Value>, method: String, params: Value },
    /// The client's answer to one of isola's requests (a host function call).
    Answer { id: Value, outcome: Result<Value, Value> },
    /// Not a JSON-RPC message: the error reply to send.
    Invalid(Value),
}

impl Incoming {
    pub fn classify(msg: Value) -> Incoming {
        let id = msg.get("id").cloned();
        let reply_id = id.clone().unwrap_or(Value::Null);
        let (Some(obj), true) = (msg.as_object(), msg.get("jsonrpc") == Some(&json!("2.0"))) else {
            return Incoming::Invalid(error(
                reply_id,
                INVALID_REQUEST,
                "invalid request: expected a JSON-RPC 2.0 object",
            ));
        };
        match obj.get("method") {
            Some(Value::String(method)) => Incoming::Request {
                id,
                method: method.clone(),
                params: obj.get("params").cloned().unwrap_or(Value::Null),
            },
            Some(_) => {
                Incoming::Invalid(error(reply_id, INVALID_REQUEST, "invalid request: `method` must be a string"))
            }
            None => match (id, obj.get("result"), obj.get("error")) {
                (Some(id), Some(r), None) => Incoming::Answer { id, outcome: Ok(r.clone()) },
                (Some(id), None, Some(e)) => Incoming::Answer { id, outcome: Err(e.clone()) },
                _ => Incoming::Invalid(error(
                    reply_id,
                    INVALID_REQUEST,
                    "invalid request: a message needs `method` (a request) or `id` with `result` or `error` (an answer)",
                )),
            },
        }
    }
}

pub fn error(id: Value, code: i64, message: impl Into<String>) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message.into()}})
}

pub fn success(id: Value, result: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}

/// What a request failed with.
pub enum Failure {
    /// isola's own error: JSON-RPC code [`ISOLA_ERROR`], the error itself as `data`.
    Isola(Error),
    /// A protocol error: code, message, optional data.
    Protocol(i64, String, Option<Value>),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Isola(e)
    }
}

impl Failure {
    pub fn protocol(code: i64, message: impl Into<String>) -> Failure {
        Failure::Protocol(code, message.into(), None)
    }

    pub fn into_reply(self, id: Value) -> Value {
        let (code, message, data) = match self {
            Failure::Isola(e) => (ISOLA_ERROR, e.to_string(), Some(e.to_json())),
            Failure::Protocol(code, message, data) => (code, message, data),
        };
        let mut err = json!({"code": code, "message": message});
        if let Some(d) = data {
            err["data"] = d;
        }
        json!({"jsonrpc": "2.0", "id": id, "error": err})
    }
}

pub fn bad_params(msg: impl std::fmt::Display) -> Failure {
    Failure::protocol(INVALID_PARAMS, format!("invalid params: {msg}"))
}

pub fn str_param<'a>(params: &'a Value, name: &str) -> Result<&'a str, Failure> {
    params.get(name).and_then(Value::as_str).ok_or_else(|| bad_params(format!("`{name}` (a string) is required")))
}

/// `params.args`: absent or `null` is no arguments, else it must be an array.
pub fn args_param(params: &Value) -> Result<Value, Failure> {
    match params.get("args") {
        None | Some(Value::Null) => Ok(Value::Array(vec![])),
        Some(Value::Array(a)) => Ok(Value::Array(a.clone())),
        Some(_) => Err(bad_params("`args` must be an array of arguments")),
    }
}
