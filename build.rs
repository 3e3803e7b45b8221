//! Makes isola's V8 startup snapshot when the crate is compiled, so that no process has to
//! make it at run time (see `src/runtime/snapshot.rs` for how it is checked and used).
//!
//! A build script cannot link the crate it builds, so isola's ops are stood in for here by
//! ops of the same names and kinds, in the same order as the `deno_core::extension!` lists in
//! `src/runtime/{ops,web,wasm}.rs`. The snapshot refers to ops only by position and is made
//! without fast calls, so each isolate binds the real ops in their places. The list below must
//! follow the source; a unit test (`the_embedded_snapshot_fits_the_ops_isola_registers`) and a
//! check at run time catch it when it does not.

use deno_core::op2;

#[allow(dead_code)]
#[path = "src/runtime/snapshot_build.rs"]
mod snapshot_build;

/// A stand-in op, taking as many arguments as the real one, counting its `OpState` or scope
/// (deno_core counts them too): the JavaScript wrapper deno_core bakes into the snapshot for
/// an async op depends on that count. The snapshot only evaluates isola's JavaScript, which takes the ops but calls
/// none of them while it is made; one that did would bake a build-time value into every
/// isolate, so a call fails the build instead. Each body names its op, so that no two
/// stand-ins can be merged into one function: the snapshot tells ops apart by address.
macro_rules! stand_in {
    (sync $name:ident($($arg:ident),*)) => {
        #[op2(fast)]
        fn $name($($arg: f64),*) {
            called(stringify!($name), &[$($arg),*])
        }
    };
    (async $name:ident($($arg:ident),*)) => {
        #[op2]
        async fn $name($($arg: f64),*) {
            called(stringify!($name), &[$($arg),*])
        }
    };
}

fn called(op: &str, _args: &[f64]) {
    panic!("{op} was called while the startup snapshot was made; isola's JavaScript must not call ops at load");
}

/// Stand-ins for one extension, and the extension itself under the real one's name.
macro_rules! stand_in_extension {
    ($ext:ident: $($kind:ident $op:ident $args:tt),* $(,)?) => {
        $(stand_in!($kind $op $args);)*
        deno_core::extension!($ext, ops = [$($op),*]);
    };
}

stand_in_extension!(isola_ops:
    sync op_isola_host_sync(scope, id, json, call),
    async op_isola_host_async(state, id, args),
    sync op_isola_log(state, level, msg),
    sync op_isola_storage(scope, op, key, value),
    async op_isola_call(state, plugin, hook, args),
    sync op_isola_emit(scope, event, payload),
    sync op_isola_call_epoch(state),
);

stand_in_extension!(isola_web:
    sync op_isola_utf8_decode(scope, bytes, fatal, ignore_bom),
    sync op_isola_utf8_length(text),
    sync op_isola_utf8_encode_into(text, dest, counts),
    sync op_isola_random_fill(dest),
    sync op_isola_url_parse(href, base, has_base),
    sync op_isola_url_set(href, part, value),
    sync op_isola_form_parse(text),
    sync op_isola_form_serialize(pairs),
    sync op_isola_now(state),
    sync op_isola_time_origin(state),
    async op_isola_timer_sleep(state, ms),
    sync op_isola_timer_wake(state),
    sync op_isola_background(state),
    sync op_isola_digest(alg, data, out),
    sync op_isola_hmac_sign(alg, key, data, out),
    sync op_isola_hmac_verify(alg, key, data, signature),
);

stand_in_extension!(isola_wasm:
    sync op_isola_wasm_prepare(scope, bytes),
    sync op_isola_wasm_take(state, out),
    sync op_isola_wasm_page_limit(state),
    sync op_isola_wasm_track(scope, value),
);

fn main() {
    for path in ["build.rs", "src/runtime/snapshot_build.rs", "js/prelude.js", "js/web.js", "js/wasm.js"] {
        println!("cargo:rerun-if-changed={path}");
    }
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let extensions = || vec![isola_ops::init(), isola_web::init(), isola_wasm::init()];
    let ops = snapshot_build::op_manifest(&extensions());
    let version = std::env::var("CARGO_PKG_VERSION").expect("cargo sets CARGO_PKG_VERSION");
    let snapshot = snapshot_build::make(extensions(), &version);
    std::fs::write(out.join("isola_snapshot.bin"), &snapshot).expect("write the snapshot");
    std::fs::write(out.join("isola_snapshot_ops.txt"), ops).expect("write the snapshot's op list");
}
