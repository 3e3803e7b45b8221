//! The ops behind the web platform globals of `js/web.js` (`TextDecoder`, `URL`,
//! `URLSearchParams`, `crypto`, `performance`): the parts JavaScript cannot do well itself.
//!
//! Why ops over these crates instead of deno_web: `url` (WHATWG URL parsing, already linked
//! through deno_core) and `getrandom` (the OS's secure random source) are what deno_web uses
//! underneath too, and the JavaScript around them is small; deno_web would bring streams,
//! blobs, message ports and file APIs a plugin must not have, and its own timer and permission
//! plumbing. Everything here is pure: no op reaches files, network or other plugins.
//!
//! Memory: every buffer a plugin gets is allocated by the JavaScript side (`new Uint8Array`),
//! so its memory budget is charged as for any other buffer; the ops only fill them.

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use deno_core::{OpState, op2, v8};
use deno_error::JsErrorBox;

use super::throw::throw;

/// When this isolate started: `performance.timeOrigin` and the zero of `performance.now()`.
struct TimeOrigin {
    at: Instant,
    epoch_ms: f64,
}

/// Set when the plugin started something that may go on after the call that started it (a
/// timer, an async host function, a plugin call): the plugin's thread then runs the plugin's
/// event loop between calls until nothing is pending. Clear, a call costs nothing extra.
#[derive(Clone, Default)]
pub(crate) struct BackgroundHint(Rc<Cell<bool>>);

impl BackgroundHint {
    pub(crate) fn set(&self) {
        self.0.set(true);
    }

    /// Whether it was set since the last call; clears it.
    pub(crate) fn take(&self) -> bool {
        self.0.replace(false)
    }
}

/// Wakes the timer sleep early (a sooner timer was set, the last one was cleared, or the pump
/// was retired after a termination).
struct TimerWake {
    notify: Rc<tokio::sync::Notify>,
}

/// `performance.now()` is rounded to this many milliseconds: a plugin shares its process with
/// other plugins and the host, and a coarse clock makes timing side channels (cache timing,
/// Spectre-style reads) much slower to exploit. Browsers round to 5–100 µs.
const CLOCK_RESOLUTION_MS: f64 = 0.1;

/// Decodes UTF-8 (`TextDecoder`): with `fatal`, bad bytes are a `TypeError`; otherwise each
/// becomes U+FFFD. A leading byte order mark is dropped unless `ignore_bom`.
#[op2]
fn op_isola_utf8_decode<'s>(
    scope: &mut v8::PinScope<'s, '_>,
    #[buffer] bytes: &[u8],
    fatal: bool,
    ignore_bom: bool,
) -> v8::Local<'s, v8::Value> {
    let bytes = match bytes {
        [0xEF, 0xBB, 0xBF, rest @ ..] if !ignore_bom => rest,
        _ => bytes,
    };
    let text = if fatal {
        match std::str::from_utf8(bytes) {
            Ok(text) => Cow::Borrowed(text),
            // Thrown by `throw`, which keeps a termination under way (see there).
            Err(e) => {
                return throw(scope, &JsErrorBox::type_error(format!("The encoded data is not valid UTF-8: {e}")));
            }
        }
    } else {
        String::from_utf8_lossy(bytes)
    };
    match v8::String::new(scope, &text) {
        Some(s) => s.into(),
        None => throw(scope, &JsErrorBox::range_error("the decoded text is too long for a JS string")),
    }
}

/// The length of `text` in UTF-8 (lone surrogates count as U+FFFD, as they are encoded).
#[op2(fast)]
fn op_isola_utf8_length(#[string] text: &str) -> f64 {
    text.len() as f64
}

/// `TextEncoder.encodeInto`: writes as many whole characters of `text` as fit into `dest`;
/// returns `[UTF-16 units read, bytes written]` through `counts`.
#[op2(fast)]
fn op_isola_utf8_encode_into(#[string] text: &str, #[buffer] dest: &mut [u8], #[buffer] counts: &mut [u32]) {
    let (mut read, mut written) = (0usize, 0usize);
    for c in text.chars() {
        let n = c.len_utf8();
        if written + n > dest.len() {
            break;
        }
        c.encode_utf8(&mut dest[written..written + n]);
        written += n;
        read += c.len_utf16();
    }
    if counts.len() >= 2 {
        counts[0] = read as u32;
        counts[1] = written as u32;
    }
}

/// `crypto.getRandomValues`: fills `dest` from the operating system's secure random source.
#[op2(fast)]
fn op_isola_random_fill(#[buffer] dest: &mut [u8]) -> Result<(), JsErrorBox> {
    getrandom::fill(dest).map_err(|e| JsErrorBox::generic(format!("the secure random source failed: {e}")))
}

/// Runs `f` with the hash function named `alg` (`SHA-1`, `SHA-256`, `SHA-384`, `SHA-512`), as
/// a type: the digests and HMACs below share it.
macro_rules! with_hash {
    ($alg:expr, $h:ident => $body:expr) => {
        match $alg {
            "SHA-1" => {
                type $h = sha1::Sha1;
                $body
            }
            "SHA-256" => {
                type $h = sha2::Sha256;
                $body
            }
            "SHA-384" => {
                type $h = sha2::Sha384;
                $body
            }
            "SHA-512" => {
                type $h = sha2::Sha512;
                $body
            }
            other => Err(JsErrorBox::type_error(format!("unsupported hash `{other}`"))),
        }
    };
}

/// `crypto.subtle.digest`: writes the digest of `data` into `out` (sized by the caller).
#[op2(fast)]
fn op_isola_digest(#[string] alg: &str, #[buffer] data: &[u8], #[buffer] out: &mut [u8]) -> Result<(), JsErrorBox> {
    use sha2::Digest;
    with_hash!(alg, H => {
        let d = H::digest(data);
        copy_exact(&d, out)
    })
}

/// HMAC of `data` under `key` with hash `alg`, into `out`.
#[op2(fast)]
fn op_isola_hmac_sign(
    #[string] alg: &str,
    #[buffer] key: &[u8],
    #[buffer] data: &[u8],
    #[buffer] out: &mut [u8],
) -> Result<(), JsErrorBox> {
    use hmac::Mac;
    with_hash!(alg, H => {
        let mut mac = hmac::Hmac::<H>::new_from_slice(key).map_err(|e| JsErrorBox::type_error(e.to_string()))?;
        mac.update(data);
        copy_exact(&mac.finalize().into_bytes(), out)
    })
}

/// Whether `signature` is the HMAC of `data` under `key` (compared in constant time).
#[op2(fast)]
fn op_isola_hmac_verify(
    #[string] alg: &str,
    #[buffer] key: &[u8],
    #[buffer] data: &[u8],
    #[buffer] signature: &[u8],
) -> Result<bool, JsErrorBox> {
    use hmac::Mac;
    with_hash!(alg, H => {
        let mut mac = hmac::Hmac::<H>::new_from_slice(key).map_err(|e| JsErrorBox::type_error(e.to_string()))?;
        mac.update(data);
        Ok(mac.verify_slice(signature).is_ok())
    })
}

fn copy_exact(from: &[u8], out: &mut [u8]) -> Result<(), JsErrorBox> {
    if from.len() != out.len() {
        return Err(JsErrorBox::type_error("isola: a digest buffer of the wrong size"));
    }
    out.copy_from_slice(from);
    Ok(())
}

/// The parts of a URL, in the order `js/web.js` reads them.
fn parts(url: &url::Url) -> Vec<String> {
    use url::quirks as q;
    vec![
        q::href(url).to_owned(),
        q::origin(url),
        q::protocol(url).to_owned(),
        q::username(url).to_owned(),
        q::password(url).to_owned(),
        q::host(url).to_owned(),
        q::hostname(url).to_owned(),
        q::port(url).to_owned(),
        q::pathname(url).to_owned(),
        q::search(url).to_owned(),
        q::hash(url).to_owned(),
    ]
}

/// Parses `href` (against `base` when `has_base`) by the WHATWG URL standard: its parts, or
/// `None` if it is not a valid URL.
#[op2]
#[serde]
fn op_isola_url_parse(#[string] href: &str, #[string] base: &str, has_base: bool) -> Option<Vec<String>> {
    let url = if has_base { url::Url::parse(base).ok()?.join(href).ok()? } else { url::Url::parse(href).ok()? };
    Some(parts(&url))
}

/// Sets one part of the URL `href` (numbered as in [`parts`], 0 = href) as the standard's
/// setters do: invalid values are ignored, except for `href` (then `None`).
#[op2]
#[serde]
fn op_isola_url_set(#[string] href: &str, #[smi] part: u32, #[string] value: &str) -> Option<Vec<String>> {
    use url::quirks as q;
    let mut url = url::Url::parse(href).ok()?;
    match part {
        0 => q::set_href(&mut url, value).ok()?,
        2 => drop(q::set_protocol(&mut url, value)),
        3 => drop(q::set_username(&mut url, value)),
        4 => drop(q::set_password(&mut url, value)),
        5 => drop(q::set_host(&mut url, value)),
        6 => drop(q::set_hostname(&mut url, value)),
        7 => drop(q::set_port(&mut url, value)),
        8 => q::set_pathname(&mut url, value),
        9 => q::set_search(&mut url, value),
        10 => q::set_hash(&mut url, value),
        _ => {}
    }
    Some(parts(&url))
}

/// Parses `application/x-www-form-urlencoded` text into name/value pairs.
#[op2]
#[serde]
fn op_isola_form_parse(#[string] text: &str) -> Vec<(String, String)> {
    url::form_urlencoded::parse(text.as_bytes()).into_owned().collect()
}

/// Serialises name/value pairs as `application/x-www-form-urlencoded`.
#[op2]
#[string]
fn op_isola_form_serialize(#[serde] pairs: Vec<(String, String)>) -> String {
    url::form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish()
}

/// Milliseconds since this isolate started, rounded to [`CLOCK_RESOLUTION_MS`].
#[op2(fast)]
fn op_isola_now(state: &mut OpState) -> f64 {
    let ms = state.borrow::<TimeOrigin>().at.elapsed().as_secs_f64() * 1000.0;
    (ms / CLOCK_RESOLUTION_MS).floor() * CLOCK_RESOLUTION_MS
}

/// When this isolate started, in milliseconds since the Unix epoch.
#[op2(fast)]
fn op_isola_time_origin(state: &mut OpState) -> f64 {
    state.borrow::<TimeOrigin>().epoch_ms
}

/// Sleeps until the next timer is due (`ms` from now), or until [`op_isola_timer_wake`].
#[op2]
async fn op_isola_timer_sleep(state: Rc<RefCell<OpState>>, ms: f64) {
    let wake = {
        let state = state.borrow();
        state.borrow::<BackgroundHint>().set();
        state.borrow::<TimerWake>().notify.clone()
    };
    let wait = Duration::from_secs_f64(ms.clamp(0.0, 1e12) / 1000.0);
    tokio::select! {
        () = tokio::time::sleep(wait) => {}
        () = wake.notified() => {}
    }
}

/// The plugin started something that may outlive its call (see [`BackgroundHint`]).
#[op2(fast)]
fn op_isola_background(state: &mut OpState) {
    state.borrow::<BackgroundHint>().set();
}

/// Ends the current timer sleep now (the JavaScript side then looks at its timers again).
#[op2(fast)]
fn op_isola_timer_wake(state: &mut OpState) {
    state.borrow::<TimerWake>().notify.notify_one();
}

deno_core::extension!(
    isola_web,
    ops = [
        op_isola_utf8_decode,
        op_isola_utf8_length,
        op_isola_utf8_encode_into,
        op_isola_random_fill,
        op_isola_url_parse,
        op_isola_url_set,
        op_isola_form_parse,
        op_isola_form_serialize,
        op_isola_now,
        op_isola_time_origin,
        op_isola_timer_sleep,
        op_isola_timer_wake,
        op_isola_background,
        op_isola_digest,
        op_isola_hmac_sign,
        op_isola_hmac_verify
    ],
    state = |state| {
        let epoch_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64() * 1000.0);
        state.put(TimeOrigin { at: Instant::now(), epoch_ms });
        state.put(BackgroundHint::default());
        state.put(TimerWake { notify: Rc::new(tokio::sync::Notify::new()) });
    },
);
