//! Host-function arguments and results, and hooks' results, as V8 values, without JSON text
//! in between.
//!
//! Why: most host calls pass a few numbers or strings and get one back, and for those the
//! JSON round trip (stringify in JS, parse in Rust, print in Rust, parse in JS) was most of
//! the cost of a call. The same goes for a hook that returns a number or a short string
//! ([`plain_result`]). The prelude hands over the argument array itself when every argument
//! is a plain primitive (a number, a well-formed string, a boolean, `null` or `undefined`),
//! and JSON text otherwise, so Symbols, BigInts, cycles and `toJSON` keep going through
//! `JSON.stringify` and its errors. Either way the host function sees the `serde_json::Value`
//! it would have seen from the text: these conversions follow what `JSON.stringify` and
//! `serde_json` do together, so switching paths changes no result.

use deno_core::v8;
use serde_json::Value;

use crate::error::ErrorCode;
use crate::host::HostFnError;

/// The longest JSON text one primitive can print as, for the size check: a string is at most
/// six bytes per UTF-16 unit (`\u0001`) and its quotes; a number at most 24 characters.
const MAX_NUMBER_JSON: usize = 24;

/// Where the plain arguments start in the op's own argument list: after the host function's
/// index and the JSON text (`undefined` when the arguments follow as they are).
const FIRST_ARG: i32 = 2;

/// A host call's arguments, from what the prelude handed over: the argument array (all plain
/// primitives) or its JSON text. `max` is the largest argument list allowed, as JSON bytes,
/// and `what` names the list in the error that says it is too long.
pub(crate) fn arguments(
    scope: &mut v8::PinScope,
    json: v8::Local<v8::Value>,
    call: Option<&v8::FunctionCallbackArguments>,
    max: usize,
    what: impl Fn() -> String,
) -> Result<Value, HostFnError> {
    if let Ok(text) = v8::Local::<v8::String>::try_from(json) {
        let text = text.to_rust_string_lossy(scope);
        check_size(text.len(), max, &what)?;
        return serde_json::from_str(&text)
            .map_err(|e| HostFnError::new(ErrorCode::InvalidArgs, format!("invalid arguments: {e}")));
    }
    let Some(call) = call else {
        return Err(HostFnError::new(ErrorCode::InvalidArgs, "invalid arguments: no argument list"));
    };
    let n = call.length().max(FIRST_ARG) - FIRST_ARG;
    let mut out = Vec::with_capacity(n as usize);
    // Brackets and commas, then each value's longest form.
    let mut longest = 2 + (n as usize).saturating_sub(1);
    for i in FIRST_ARG..FIRST_ARG + n {
        let value = primitive(scope, call.get(i))?;
        longest += match &value {
            Value::String(s) => 2 + 6 * s.len(),
            _ => MAX_NUMBER_JSON,
        };
        out.push(value);
    }
    let out = Value::Array(out);
    // Only a list that might be too long is printed to measure it exactly.
    if longest > max {
        check_size(out.to_string().len(), max, &what)?;
    }
    Ok(out)
}

fn check_size(len: usize, max: usize, what: &impl Fn() -> String) -> Result<(), HostFnError> {
    if len > max {
        return Err(HostFnError::new(
            ErrorCode::InvalidArgs,
            format!("{} is {len} bytes as JSON; at most {max} are allowed", what()),
        ));
    }
    Ok(())
}

/// One plain argument as the JSON path would have given it (`undefined` is `null` there).
fn primitive(scope: &mut v8::PinScope, v: v8::Local<v8::Value>) -> Result<Value, HostFnError> {
    if v.is_null_or_undefined() {
        Ok(Value::Null)
    } else if v.is_boolean() {
        Ok(Value::Bool(v.is_true()))
    } else if let Ok(n) = v8::Local::<v8::Number>::try_from(v) {
        Ok(number(n.value()))
    } else if let Ok(s) = v8::Local::<v8::String>::try_from(v) {
        Ok(Value::String(s.to_rust_string_lossy(scope)))
    } else {
        // The prelude sends anything else as JSON text.
        Err(HostFnError::new(ErrorCode::InvalidArgs, "invalid arguments: not a plain value"))
    }
}

/// A hook's result without JSON text, when that changes nothing: `null`, a boolean, a number,
/// or a string stored one byte per character (so it holds no lone surrogate, which
/// `JSON.stringify` escapes and `serde_json` refuses) whose JSON form cannot be longer than
/// `max` bytes. `None` for anything else, which goes through `JSON.stringify` as before
/// (objects, `toJSON`, BigInts, cycles, other strings, and the exact size check).
pub(crate) fn plain_result(scope: &mut v8::PinScope, v: v8::Local<v8::Value>, max: usize) -> Option<Value> {
    // At most six bytes per character (`\u0001`, or two UTF-8 bytes unescaped), and quotes.
    let short_one_byte = |s: v8::Local<v8::String>| s.is_onebyte() && 2 + 6 * s.length() <= max;
    let plain = v.is_null()
        || v.is_boolean()
        || v.is_number()
        || v8::Local::<v8::String>::try_from(v).is_ok_and(short_one_byte);
    // The same conversion as a host function's plain arguments.
    plain.then(|| primitive(scope, v).ok()).flatten()
}

/// A JS number as `serde_json` reads the text `JSON.stringify` writes for it: an integer
/// below 1e21 is printed as digits, which read back as `u64`/`i64` when they fit (so that a
/// host function taking `u32` accepts `7`), anything else as `f64`; NaN and the infinities
/// are printed as `null`.
fn number(f: f64) -> Value {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    if f.fract() == 0.0 && f.abs() < EXACT {
        // -0 too: it prints as `0`.
        return if f >= 0.0 { Value::from(f as u64) } else { Value::from(f as i64) };
    }
    if f.fract() == 0.0 && f.abs() < 1e21 {
        // Past 2^53 JS prints the shortest digits that read back as `f`, padded with zeros
        // (2^63 is `9223372036854776000`), and so does Rust's `Display`: read those digits as
        // the JSON path would. Rare, so the detour costs nothing that matters.
        if let Ok(v) = serde_json::from_str(&f.to_string()) {
            return v;
        }
    }
    serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)
}

/// A host function's result as a JS value, equal to `JSON.parse` of its JSON text: primitives
/// are made directly, arrays and objects by V8's own JSON parser (which, unlike setting
/// properties one by one, makes `"__proto__"` an ordinary key, as `JSON.parse` does).
pub(crate) fn result<'s>(scope: &mut v8::PinScope<'s, '_>, v: Value) -> Result<v8::Local<'s, v8::Value>, HostFnError> {
    let too_long = || HostFnError::new(ErrorCode::HostError, "the host function's result is too large for a JS string");
    Ok(match v {
        Value::Null => v8::null(scope).into(),
        Value::Bool(b) => v8::Boolean::new(scope, b).into(),
        Value::Number(n) => v8::Number::new(scope, n.as_f64().unwrap_or(f64::NAN)).into(),
        Value::String(s) => v8::String::new(scope, &s).ok_or_else(too_long)?.into(),
        composite => {
            let text = v8::String::new(scope, &composite.to_string()).ok_or_else(too_long)?;
            v8::json::parse(scope, text).ok_or_else(too_long)?
        }
    })
}
