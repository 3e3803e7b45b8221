//! How an op gives the plugin an error, or ends its call, without losing a termination.
//!
//! Why isola's ops do not hand their errors to deno_core: deno_core builds an op's error by
//! calling a JS function, and V8 acts on a pending termination request (the watchdog's, at a
//! deadline or a cancel; the memory budget's) as soon as JS is entered. The builder then
//! fails, deno_core throws a fallback, and a throw *replaces* a termination under way. So a
//! plugin could catch that fallback and run on past its deadline, as often as the watchdog
//! asked again: a hook looping on a refused host call ran up to 36 ms past a 100 ms limit,
//! catching bare strings instead of errors with a `code`.
//!
//! An async op's error is no rejection either, for the same reason: deno_core makes it by
//! entering JS from its event loop, where the termination V8 then acts on is dropped (a hook
//! awaiting a failing host function in a loop ran up to 97 ms past a 100 ms limit). So async
//! ops resolve with [`failure_text`], and the prelude makes and throws the error in the
//! plugin's own code, where a termination lands as anywhere else.
//!
//! [`throw`] builds errors with V8's own constructors, which run no JS, so a request that is
//! pending stays pending through the throw and lands at the plugin's next step (the `catch`
//! block's first call or loop); and it never throws over a termination already under way.
//! [`stop_here`] ends the call from inside an op whose call was stopped while it ran.

use deno_core::v8;
use deno_error::{JsErrorClass, PropertyValue};

/// Throws `e` into the plugin (class, message and additional properties such as `code`, as
/// deno_core would), unless a termination is under way: then nothing is thrown and the
/// termination goes on. Returns the value the op returns (V8 ignores it once something is
/// thrown).
///
/// ```ignore
/// #[op2]
/// fn op_example<'s>(scope: &mut v8::PinScope<'s, '_>) -> v8::Local<'s, v8::Value> {
///     match work() {
///         Ok(n) => v8::Integer::new(scope, n).into(),
///         Err(e) => throw(scope, &e),
///     }
/// }
/// ```
pub(crate) fn throw<'s>(scope: &mut v8::PinScope<'s, '_>, e: &dyn JsErrorClass) -> v8::Local<'s, v8::Value> {
    if !scope.is_execution_terminating() {
        let error = build(scope, e);
        scope.throw_exception(error);
    }
    v8::undefined(scope).into()
}

/// What an async op resolves with when it fails: a NUL (no JSON text starts with one), then
/// the JSON `[class, message, [[key, value], ...]]` from which the prelude's `answer` makes
/// the error (the same class, message and additional properties as [`throw`]).
///
/// ```ignore
/// let text = failure_text(&HostOpError::new(ErrorCode::Timeout, "too slow"));
/// assert_eq!(text, "\0[\"Error\",\"too slow\",[[\"code\",\"TIMEOUT\"]]]");
/// ```
pub(crate) fn failure_text(e: &dyn JsErrorClass) -> String {
    let props: Vec<serde_json::Value> = e
        .get_additional_properties()
        .map(|(key, value)| {
            let value = match value {
                PropertyValue::String(s) => serde_json::Value::from(s.into_owned()),
                PropertyValue::Number(n) => serde_json::Value::from(n),
            };
            serde_json::json!([key, value])
        })
        .collect();
    format!("\0{}", serde_json::json!([e.get_class(), e.get_message(), props]))
}

/// `e` as a JS error object, made without running JS.
fn build<'s>(scope: &mut v8::PinScope<'s, '_>, e: &dyn JsErrorClass) -> v8::Local<'s, v8::Value> {
    let message = v8::String::new(scope, &e.get_message()).unwrap_or_else(|| v8::String::empty(scope));
    let error = match &*e.get_class() {
        "TypeError" => v8::Exception::type_error(scope, message),
        "RangeError" => v8::Exception::range_error(scope, message),
        "SyntaxError" => v8::Exception::syntax_error(scope, message),
        "ReferenceError" => v8::Exception::reference_error(scope, message),
        _ => v8::Exception::error(scope, message),
    };
    let Ok(object) = v8::Local::<v8::Object>::try_from(error) else { return error };
    let mut keys = Vec::new();
    for (key, value) in e.get_additional_properties() {
        let Some(key) = v8::String::new(scope, &key) else { continue };
        let value: v8::Local<v8::Value> = match value {
            PropertyValue::String(s) => match v8::String::new(scope, &s) {
                Some(s) => s.into(),
                None => continue,
            },
            PropertyValue::Number(n) => v8::Number::new(scope, n).into(),
        };
        object.create_data_property(scope, key.into(), value);
        keys.push(key.into());
    }
    // Where deno_core records the keys it added, so that `JsError` reads them back.
    if !keys.is_empty() {
        let name = v8::String::new(scope, "errorAdditionalPropertyKeys").unwrap();
        let symbol = v8::Symbol::for_key(scope, name);
        let keys = v8::Array::new_with_elements(scope, &keys);
        object.define_own_property(
            scope,
            symbol.into(),
            keys.into(),
            v8::PropertyAttribute::READ_ONLY | v8::PropertyAttribute::DONT_ENUM | v8::PropertyAttribute::DONT_DELETE,
        );
    }
    error
}

/// Ends the running hook from inside a sync op whose call was stopped (deadline, cancel,
/// unload) before or while its host-side work ran; the op returns this value, and no more of
/// the plugin's code runs.
///
/// Why an op cannot simply answer: V8 acts on the watchdog's termination request only when JS
/// next checks for interrupts, so the plugin would use the answer until then, past its
/// deadline. Entering a JS function makes V8 act on the request here, so the op returns into
/// the termination. Only stopped calls pay for it.
pub(crate) fn stop_here<'s>(scope: &mut v8::PinScope<'s, '_>) -> v8::Local<'s, v8::Value> {
    scope.terminate_execution();
    let code = v8::String::new(scope, "0").unwrap();
    if let Some(script) = v8::Script::compile(scope, code, None) {
        let _ = script.run(scope);
    }
    debug_assert!(scope.is_execution_terminating());
    v8::undefined(scope).into()
}
